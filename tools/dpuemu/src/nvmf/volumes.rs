//! The accelerator's volumes in appliance mode: `[volume]` sections made
//! with Volume Create when the SSDs do not hold them yet, and volumes as
//! namespaces of the NVMe/TCP target (`namespace N volume NAME`), the
//! same namespace objects the accelerator's own function serves, so both
//! paths see the same blocks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use log::info;
use nvme_shim::vendor::{service, VolumeCreate, VolumeListEntry};
use nvme_shim::wire::{c_string_bytes, c_string_field, Wire};

use super::config::{TargetConfig, VolumeConfig};
use super::target::VolumeLookup;
use crate::namespace::Namespace;
use crate::ownership::SsdOwnership;
use crate::volumes::{NamespaceTable, VolumeManager, MAX_NSID};

/// Makes volume `v` on the SSDs of `mask` as the host driver would: SSD
/// Attach of each (`ownership` by SSD number), then Volume Create, whose
/// namespace `table` (the accelerator's function) activates. Returns its
/// NSID.
pub fn create_volume(
    manager: &VolumeManager,
    ownership: &[Arc<SsdOwnership>],
    v: &VolumeConfig,
    mask: u64,
    table: &dyn NamespaceTable,
) -> Result<u32, String> {
    for (i, o) in ownership.iter().enumerate() {
        if mask & (1 << i) != 0 && !o.is_attached() {
            o.attach().map_err(|code| {
                format!("[volume {}]: SSD {i} cannot be attached (vendor status {code:#x}: its own function is in use)", v.name)
            })?;
        }
    }
    let mut req = VolumeCreate::zeroed();
    req.size_bytes.set(v.size);
    req.lba_shift = crate::volumes::VOLUME_LBA_SHIFT;
    req.layout = v.layout;
    req.data_shards = v.copies;
    req.parity_shards = v.parity;
    if v.parity > 0 {
        req.data_shards = (mask.count_ones() as u8).saturating_sub(v.parity);
    }
    req.ssd_mask.set(mask);
    req.stripe_bytes.set(v.stripe);
    req.services.set(if v.thin { service::THIN } else { 0 });
    c_string_field(&mut req.name, v.name.as_bytes());
    manager.create(&req, table).map_err(|status| {
        format!(
            "[volume {}]: Volume Create failed with status {:#x} (see dpuemu's log)",
            v.name, status.0
        )
    })
}

/// Makes the `[volume]` sections of `config` that `existing` does not
/// have. `images` is the number of `--ssd` images (remote SSDs follow).
/// A volume with a member on an `absent` SSD (a remote SSD that did not
/// answer at start-up) is an error: it may well exist on that SSD, and
/// making it anew would wipe its other members. Returns whether any was
/// made.
pub fn create_missing(
    config: &TargetConfig,
    manager: &VolumeManager,
    ownership: &[Arc<SsdOwnership>],
    images: usize,
    absent: &[usize],
    table: &dyn NamespaceTable,
    existing: &VolumeDirectory,
) -> Result<bool, String> {
    let mut made = false;
    for v in &config.volumes {
        if existing.volume(&v.name).is_some() {
            info!("nvmf: volume {} found on the SSDs", v.name);
            continue;
        }
        let mut mask = 0u64;
        for m in &v.members {
            let n = config
                .ssd_number(m, images)
                .filter(|&n| n < ownership.len() && n < 64)
                .ok_or_else(|| format!("[volume {}]: no SSD {m:?}", v.name))?;
            if absent.contains(&n) {
                return Err(format!(
                    "[volume {}] is not found on the SSDs that answer, and its member {m:?} \
                     (SSD {n}) does not answer: it is not made again without it",
                    v.name
                ));
            }
            mask |= 1 << n;
        }
        let nsid = create_volume(manager, ownership, v, mask, table)?;
        info!(
            "nvmf: volume {} made (namespace {nsid} of the accelerator)",
            v.name
        );
        made = true;
    }
    Ok(made)
}

/// Open volumes by name, as the volume manager opened them at start-up.
#[derive(Default)]
pub struct VolumeDirectory {
    by_name: BTreeMap<String, Arc<dyn Namespace>>,
}

impl VolumeDirectory {
    /// The volumes `manager` opened from the SSDs. `reserved` must be the
    /// set of NSIDs the accelerator's function passed to
    /// [`VolumeManager::start`] (its passthrough namespaces): with the same
    /// set, `start` assigns the same NSIDs again and hands out the same
    /// namespaces, which Volume List then names. Locked (encrypted) volumes
    /// and those of a failed family are not open and are not found.
    pub fn from_manager(manager: &VolumeManager, reserved: &BTreeSet<u32>) -> Self {
        let by_nsid: BTreeMap<u32, Arc<dyn Namespace>> =
            manager.start(reserved).into_iter().collect();
        let mut entries = vec![VolumeListEntry::zeroed(); MAX_NSID as usize];
        let count = manager.list(&mut entries);
        let by_name = entries
            .iter()
            .take(count)
            .filter_map(|e| {
                let ns = by_nsid.get(&e.nsid.get())?;
                let name = std::str::from_utf8(c_string_bytes(&e.name)).ok()?;
                Some((name.to_string(), Arc::clone(ns)))
            })
            .collect();
        Self { by_name }
    }

    /// The names found, for the log.
    pub fn names(&self) -> Vec<&str> {
        self.by_name.keys().map(String::as_str).collect()
    }
}

impl VolumeLookup for VolumeDirectory {
    fn volume(&self, name: &str) -> Option<Arc<dyn Namespace>> {
        self.by_name.get(name).cloned()
    }
}
