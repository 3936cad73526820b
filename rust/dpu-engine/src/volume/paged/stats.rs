//! A paged pool's statistics: pool counters, and per-volume figures that
//! walk the maps.

use std::collections::{BTreeMap, BTreeSet};

use super::super::state::ratio;
use super::super::{PoolStats, VolumeError, VolumeStats};
use super::records::{self, mapping_info, ZERO_ENTRY};
use super::slots::{PACKED, STORED};
use super::{le, PagedState, BS};
use crate::metadata::btree;

impl PagedState {
    /// Pool statistics, from counters (no walk).
    pub(crate) fn stats(&self) -> PoolStats {
        let logical_bytes = self.volumes.values().map(|v| v.mapped * BS).sum();
        let data_blocks = self.tm.data_used();
        let physical_bytes = data_blocks * BS;
        PoolStats {
            block_size: BS,
            total_blocks: self.data_start + self.tm.data_blocks(),
            free_blocks: self.tm.free_data_blocks(),
            data_blocks,
            packed_blocks: self.tm.root(PACKED),
            metadata_blocks: self.tm.meta_used(),
            pending_free_blocks: self.tm.data_pending_free(),
            logical_bytes,
            stored_bytes: self.tm.root(STORED),
            physical_bytes,
            reduction_ratio: ratio(logical_bytes, physical_bytes),
            generation: self.tm.generation(),
            reclaimed_at_open: 0,
            journaled_snapshots: self.journaled_snapshots,
        }
    }

    /// Every distinct record each volume maps (a walk of every mapping
    /// tree: statistics and checks only).
    fn distinct_records(&mut self) -> Result<BTreeMap<u32, BTreeSet<u64>>, VolumeError> {
        let info = mapping_info()?;
        let roots: Vec<(u32, u64)> = self.volumes.iter().map(|(&id, v)| (id, v.root)).collect();
        let mut out = BTreeMap::new();
        for (id, root) in roots {
            let mut set = BTreeSet::new();
            btree::range(&mut self.tm, &info, root, 0, u64::MAX, &mut |_, v| {
                let rid = le(v);
                if rid != ZERO_ENTRY {
                    set.insert(rid);
                }
                true
            })?;
            out.insert(id, set);
        }
        Ok(out)
    }

    /// Per-volume statistics. `mapped_bytes` and `zero_bytes` come from
    /// counters; the rest walks every volume's map (costs a pass over the
    /// pool's metadata, as the in-memory format did over its maps).
    pub(crate) fn volume_stats(&mut self, name: &str) -> Result<VolumeStats, VolumeError> {
        let id = self.find(name)?;
        let distinct = self.distinct_records()?;
        let mut owners: BTreeMap<u64, u32> = BTreeMap::new();
        for set in distinct.values() {
            for &rid in set {
                *owners.entry(rid).or_default() += 1;
            }
        }
        let v = self.volume(id)?.clone();
        let mine = distinct.get(&id).cloned().unwrap_or_default();
        let (mut exclusive, mut shared) = (0, 0);
        for &rid in &mine {
            let bytes = records::get(&mut self.tm, rid)?.map_or(0, |r| r.stored_bytes());
            if owners.get(&rid).copied().unwrap_or(0) > 1 {
                shared += bytes;
            } else {
                exclusive += bytes;
            }
        }
        let mapped = v.mapped * BS;
        Ok(VolumeStats {
            size_bytes: v.size_blocks * BS,
            mapped_bytes: mapped,
            zero_bytes: v.zeros * BS,
            unique_bytes: mine.len() as u64 * BS,
            allocated_bytes: exclusive + shared,
            exclusive_bytes: exclusive,
            shared_bytes: shared,
            reduction_ratio: ratio(mapped, exclusive + shared),
        })
    }

    /// Mapped bytes of `name` (a counter, no walk).
    pub(crate) fn mapped_bytes(&self, name: &str) -> Result<u64, VolumeError> {
        Ok(self.volume(self.find(name)?)?.mapped * BS)
    }
}
