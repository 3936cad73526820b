//! Members that come and go: an SSD re-added to the arrays that failed it
//! (a Fault Injection CLEAR, a remote SSD that reconnected), and a remote
//! SSD that was absent when the families were opened, which takes its
//! missing member slot back once it answers and its label says it is
//! that member.

use std::sync::Arc;

use dpu_engine::protection::MemberState;
use log::{info, warn};
use nvme_shim::vendor::status as vs;

use super::label::{self, LABEL_AREA};
use super::media::SliceMedia;
use super::{spawn_rebuild, State, VolumeManager};

impl VolumeManager {
    /// One line for each family found on the SSDs whose pool could not be
    /// opened (more members missing or failed than its layout tolerates).
    pub fn unopened_families(&self) -> Vec<String> {
        let state = self.lock();
        state
            .families
            .iter()
            .filter(|f| f.pool.is_none())
            .map(|f| {
                let present = f.members.iter().flatten().count();
                let index = |m: &Option<usize>| m.map(|pos| self.ssds[pos].index);
                format!(
                    "the volume family on SSDs {:?} cannot open with {present} of its {} members",
                    f.members.iter().map(index).collect::<Vec<_>>(),
                    f.members.len()
                )
            })
            .collect()
    }

    /// SSD `index` is back (after a Fault Injection CLEAR, or a remote SSD
    /// that reconnected): in every array that failed it, it comes back as
    /// a replacement of itself and is rebuilt in the background, as md
    /// re-adds a member. Arrays where it is in service are left alone, and
    /// faults injected on it stay (only CLEAR ends them). An SSD that is
    /// no family's member may be one that was absent when the families
    /// were opened (a remote SSD whose target answered later): see
    /// [`VolumeManager::join_missing_member`]. Returns how many arrays
    /// took it back.
    pub fn readd_ssd(&self, index: u16) -> usize {
        let Some(pos) = self.ssd_position(index) else {
            return 0;
        };
        let mut readded = 0;
        let mut state = self.lock();
        if !state
            .families
            .iter()
            .any(|f| f.members.contains(&Some(pos)))
        {
            return usize::from(self.join_missing_member(&mut state, pos));
        }
        for family in &state.families {
            let Some(array) = &family.array else {
                continue;
            };
            let Some(member) = family.members.iter().position(|m| *m == Some(pos)) else {
                continue;
            };
            let failed = array
                .status()
                .members
                .get(member)
                .is_some_and(|m| m.state == MemberState::Failed);
            let slice = SliceMedia::tail(self.ssds[pos].media.clone(), LABEL_AREA);
            if let (true, Some(slice)) = (failed, slice) {
                match array.replace_member(member, Arc::new(slice)) {
                    Ok(()) => {
                        info!("accel: SSD {index} re-added to its array, rebuilding");
                        spawn_rebuild(array.clone(), family.alive.clone());
                        readded += 1;
                    }
                    Err(e) => warn!("accel: SSD {index} cannot be re-added: {e}"),
                }
            }
        }
        readded
    }

    /// A remote SSD the host added while dpuemu runs (Remote SSD Add):
    /// if it carries a volume family's label, it rejoins its family's
    /// missing member slot as a remote SSD absent at start-up does when it
    /// answers ([`VolumeManager::join_missing_member`]); a blank disk is
    /// left alone without a word. Returns whether it joined.
    pub fn join_by_label(&self, index: u16) -> bool {
        let Some(pos) = self.ssd_position(index) else {
            return false;
        };
        if label::read_label(self.ssds[pos].media.as_ref()).is_none() {
            return false;
        }
        let mut state = self.lock();
        self.join_missing_member(&mut state, pos)
    }

    /// SSD `pos` answers for the first time since the families were
    /// opened. If its label says it is the member of an open family whose
    /// slot is missing, it takes that slot back: it is claimed, put in the
    /// array in the member's place ([`dpu_engine::protection::ProtectedMedia::replace_member`]),
    /// labelled with the family's current generation and rebuilt in the
    /// background. Anything else (no label, another family's label, a
    /// slot that is not missing, an SSD the host or another family uses)
    /// is refused with a log line and not written to: the family stays
    /// degraded. Returns whether it joined.
    fn join_missing_member(&self, state: &mut State, pos: usize) -> bool {
        let ssd = &self.ssds[pos];
        let refuse = |why: &str| {
            warn!(
                "accel: SSD {} answers but is not taken into any array: {why}; left untouched",
                ssd.index
            );
            false
        };
        if ssd.ownership.view().in_use {
            return refuse("it is in use");
        }
        let Some(label) = label::read_label(ssd.media.as_ref()) else {
            return refuse("it carries no volume family label (a blank or foreign disk)");
        };
        let Some(family) = state.families.iter_mut().find(|f| f.uuid == label.uuid) else {
            return refuse("its label names a volume family that is not open here");
        };
        let slot = usize::from(label.member_index);
        if usize::from(label.member_count) != family.members.len()
            || family.members.get(slot) != Some(&None)
        {
            return refuse(&format!(
                "its family's member {slot} of {} is not missing",
                label.member_count
            ));
        }
        let Some(array) = family.array.clone().filter(|_| family.pool.is_some()) else {
            return refuse("its family has no open redundant array");
        };
        let Some(slice) = SliceMedia::tail(ssd.media.clone(), LABEL_AREA) else {
            return refuse("it is smaller than a label area");
        };
        let attached_here = match ssd.ownership.attach() {
            Ok(()) => true,
            Err(vs::SSD_ALREADY_ATTACHED) => false,
            Err(_) => return refuse("the host uses it"),
        };
        if ssd.ownership.claim().is_err() {
            if attached_here {
                let _ = ssd.ownership.detach();
            }
            return refuse("it is in use");
        }
        if let Err(e) = array.replace_member(slot, Arc::new(slice)) {
            ssd.ownership.release();
            if attached_here {
                let _ = ssd.ownership.detach();
            }
            warn!(
                "accel: SSD {} cannot take back member {slot} of its family: {e}",
                ssd.index
            );
            return false;
        }
        family.members[slot] = Some(pos);
        if self.write_labels(family).is_err() {
            warn!(
                "accel: SSD {}: the family's labels were not updated",
                ssd.index
            );
        }
        info!(
            "accel: SSD {} is member {slot} of the volume family on SSDs {:?}, missing at start-up: rebuilding",
            ssd.index, family.members
        );
        spawn_rebuild(array, family.alive.clone());
        true
    }
}
