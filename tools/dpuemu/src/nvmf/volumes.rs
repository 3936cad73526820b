//! The accelerator's volumes as namespaces of the NVMe/TCP target
//! (`namespace N volume NAME`): the same namespace objects the
//! accelerator's own function serves, so both paths see the same blocks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use nvme_shim::vendor::VolumeListEntry;
use nvme_shim::wire::{c_string_bytes, Wire};

use super::target::VolumeLookup;
use crate::namespace::Namespace;
use crate::volumes::{VolumeManager, MAX_NSID};

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
