//! The Maintenance vendor command: scrub and member replacement on the
//! protected array of a volume's family.
//!
//! Both act on the family, not on the one volume named by the NSID: the
//! volume's snapshots and clones live in the same pool on the same array.
//! A scrub runs to completion inside the command (the host waits for its
//! result); a replacement only swaps the member and starts the rebuild,
//! which goes on in the background like the rebuild after a re-add.

use std::sync::Arc;

use dpu_engine::media::Media;
use dpu_engine::protection::{MemberState, ProtectedMedia};
use log::{info, warn};
use nvme_shim::status::Status;
use nvme_shim::vendor::{maintenance, status as vs};

use super::label::LABEL_AREA;
use super::media::SliceMedia;
use super::{spawn_rebuild, status, ScrubCounts, VolumeManager};

impl VolumeManager {
    /// Maintenance: `action` is CDW10 (`maintenance::*`), `argument`
    /// CDW11. Returns DW0.
    pub fn maintenance(&self, nsid: u32, action: u32, argument: u32) -> Result<u32, Status> {
        match action {
            maintenance::SCRUB_CHECK | maintenance::SCRUB_REPAIR => {
                // A scrub takes no argument; CDW11 is reserved.
                if argument != 0 {
                    return Err(Status::INVALID_FIELD);
                }
                self.scrub(nsid, action == maintenance::SCRUB_REPAIR)
            }
            maintenance::REPLACE_MEMBER => {
                let (old, new) = (argument as u16, (argument >> 16) as u16);
                self.replace_member(nsid, old, new)
            }
            _ => Err(Status::INVALID_FIELD),
        }
    }

    /// The redundant array under open volume `nsid`: its family's index
    /// and the array. Layouts without redundancy have nothing to check or
    /// rebuild from (*Invalid Layout*).
    fn redundant_array(
        state: &super::State,
        nsid: u32,
    ) -> Result<(usize, Arc<ProtectedMedia>), Status> {
        let (fi, _) = state.open_volume(nsid)?;
        let array = state.families[fi]
            .array
            .clone()
            .filter(|a| a.layout().is_redundant())
            .ok_or(status(vs::INVALID_LAYOUT))?;
        Ok((fi, array))
    }

    /// SCRUB_CHECK and SCRUB_REPAIR: every row of the array is read and
    /// checked; DW0 is the number of mismatching sectors (saturated).
    fn scrub(&self, nsid: u32, repair: bool) -> Result<u32, Status> {
        let mut state = self.lock();
        let (fi, array) = Self::redundant_array(&state, nsid)?;
        // The manager's lock stays held: the family cannot be deleted (and
        // its SSDs given back) under the scrub. I/O does not take it. The
        // family's rebuild waits meanwhile: both read every row.
        let alive = state.families[fi].alive.clone();
        let _rebuild = alive.lock().unwrap_or_else(|p| p.into_inner());
        let report = array.scrub(repair).map_err(|e| {
            warn!("accel: scrub of namespace {nsid}: {e}");
            Status::WRITE_FAULT
        })?;
        let counts = ScrubCounts {
            mismatches: report.mismatches,
            repaired: report.repaired,
        };
        state.families[fi].last_scrub = counts;
        info!(
            "accel: scrub ({}) of namespace {nsid}: {} rows, {} mismatching sectors, {} repaired, \
             {} unlocated, {} read errors, {} unreadable rows",
            if repair { "repair" } else { "check" },
            report.rows,
            report.mismatches,
            report.repaired,
            report.unlocated,
            report.read_errors,
            report.unreadable_rows
        );
        Ok(u32::try_from(report.mismatches).unwrap_or(u32::MAX))
    }

    /// REPLACE_MEMBER: SSD `new` takes the place of member SSD `old` and is
    /// rebuilt in the background.
    fn replace_member(&self, nsid: u32, old: u16, new: u16) -> Result<u32, Status> {
        let mut state = self.lock();
        let (fi, array) = Self::redundant_array(&state, nsid)?;
        let old_pos = self.ssd_position(old).ok_or(status(vs::SSD_NOT_FOUND))?;
        let new_pos = self.ssd_position(new).ok_or(status(vs::SSD_NOT_FOUND))?;
        if old_pos == new_pos {
            return Err(Status::INVALID_FIELD);
        }
        let family = &mut state.families[fi];
        let member = family
            .members
            .iter()
            .position(|m| *m == Some(old_pos))
            .ok_or(Status::INVALID_FIELD)?;
        let view = self.ssds[new_pos].ownership.view();
        if !view.attached {
            return Err(status(vs::SSD_NOT_ATTACHED));
        }
        if view.in_use {
            return Err(status(vs::SSD_IN_USE));
        }
        // The rebuild reads every row from the other members: they must
        // hold all the data without this one (a rebuilding member does not
        // count, its rows are not all in sync yet).
        let members = array.status().members;
        let mut lost: Vec<bool> = members
            .iter()
            .map(|m| m.state != MemberState::Online)
            .collect();
        lost[member] = true;
        if !array.layout().can_decode(&lost) {
            return Err(status(vs::VOLUME_BUSY));
        }
        // At least as large as the SSD it replaces, so it holds every row.
        let slice = SliceMedia::tail(self.ssds[new_pos].media.clone(), LABEL_AREA)
            .filter(|s| s.size() + LABEL_AREA >= self.ssds[old_pos].media.size())
            .ok_or(status(vs::NO_SPACE))?;
        let replacement = &self.ssds[new_pos];
        replacement.ownership.claim().map_err(status)?;
        // Labels and data of an earlier family must not survive on it.
        if let Err(e) = replacement.wipe() {
            warn!("accel: wiping SSD {new}: {e}");
            replacement.ownership.release();
            return Err(Status::WRITE_FAULT);
        }
        if matches!(
            members[member].state,
            MemberState::Online | MemberState::Rebuilding
        ) {
            // A healthy member leaves the array first: the engine rebuilds
            // only into a member slot that is out of service.
            if let Err(e) = array.fail_member(member) {
                warn!("accel: taking SSD {old} out of its array: {e}");
                replacement.ownership.release();
                return Err(Status::WRITE_FAULT);
            }
        }
        if let Err(e) = array.replace_member(member, Arc::new(slice)) {
            warn!("accel: SSD {new} cannot replace SSD {old}: {e}");
            replacement.ownership.release();
            return Err(Status::WRITE_FAULT);
        }
        family.members[member] = Some(new_pos);
        // The labels name the new member now, so a restart assembles the
        // array with it (and resumes the rebuild).
        let labelled = self.write_labels(family);
        // The old SSD's label goes, so it is never taken for a member
        // again; its data area is left alone, as reads that started
        // before the replacement may still be reading it.
        let gone = &self.ssds[old_pos];
        if let Err(e) = gone.raw.discard(0, LABEL_AREA) {
            warn!("accel: erasing the label of SSD {old}: {e}");
        }
        gone.ownership.release();
        spawn_rebuild(array, family.alive.clone());
        info!(
            "accel: SSD {new} replaces SSD {old} (member {member}) of namespace {nsid}, rebuilding"
        );
        labelled.map(|()| 0)
    }
}

#[cfg(test)]
impl VolumeManager {
    /// The gates of the families' background rebuilds and scrubs, for
    /// tests: while a test holds one, that family's rebuild makes no
    /// progress and a scrub of it does not start.
    pub(crate) fn rebuild_gates(&self) -> Vec<Arc<std::sync::Mutex<bool>>> {
        self.lock()
            .families
            .iter()
            .map(|f| f.alive.clone())
            .collect()
    }
}
