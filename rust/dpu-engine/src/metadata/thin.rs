//! Thin volume metadata on the copy-on-write B-trees: the layout `Pool`
//! moves to when its in-RAM maps are replaced (issue 12).
//!
//! Three trees hang off the superblock's root slots:
//!
//! * slot 0, *volumes*: volume id → details (32 bytes: mapping tree root,
//!   size in blocks, parent id + 1 or 0, flags with bit 0 = snapshot);
//! * slot 1, *deferred*: sequence number → a mapping tree node that still
//!   holds a reference to drop (deleted volumes, freed in the background);
//! * slot 2, *counters*: 0 → next volume id, 1 → next deferred sequence.
//!
//! Each volume's *mapping tree* maps a logical block to a data block and
//! holds a reference on it. A snapshot shares its origin's mapping root
//! (one reference count increment, whatever the volume's size); the first
//! write through either copies only the path it changes. Deleting a volume
//! moves its root to the deferred tree in O(1); [`ThinMetadata::release_step`]
//! frees a bounded number of nodes per call, so deleting a large volume or
//! snapshot never holds the caller for long.

use std::sync::Arc;

use super::btree::{self, TreeInfo, ValueKind};
use super::transaction::TransactionManager;
use super::{le_u64, put_u64, MetaError, MetaResult};
use crate::media::Media;

const VOLUMES: usize = 0;
const DEFERRED: usize = 1;
const COUNTERS: usize = 2;
const NEXT_VOLUME: u64 = 0;
const NEXT_DEFERRED: u64 = 1;
const SNAPSHOT: u64 = 1;

fn volumes_info() -> MetaResult<TreeInfo> {
    TreeInfo::new(32, ValueKind::Plain)
}

fn plain_info() -> MetaResult<TreeInfo> {
    TreeInfo::new(8, ValueKind::Plain)
}

/// The tree shape of every volume's mapping.
pub fn mapping_info() -> MetaResult<TreeInfo> {
    TreeInfo::new(8, ValueKind::DataBlock)
}

/// One volume's entry in the volumes tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolumeDetails {
    pub mapping_root: u64,
    pub size_blocks: u64,
    /// The volume this one was snapshotted from, if any.
    pub parent: Option<u64>,
    pub snapshot: bool,
}

impl VolumeDetails {
    fn encode(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        put_u64(&mut out, 0, self.mapping_root);
        put_u64(&mut out, 8, self.size_blocks);
        put_u64(&mut out, 16, self.parent.map_or(0, |p| p + 1));
        put_u64(&mut out, 24, if self.snapshot { SNAPSHOT } else { 0 });
        out
    }

    fn decode(data: &[u8]) -> VolumeDetails {
        VolumeDetails {
            mapping_root: le_u64(data, 0),
            size_blocks: le_u64(data, 8),
            parent: le_u64(data, 16).checked_sub(1),
            snapshot: le_u64(data, 24) & SNAPSHOT != 0,
        }
    }
}

/// Thin volumes' metadata over a [`TransactionManager`].
pub struct ThinMetadata {
    tm: TransactionManager,
    volumes: TreeInfo,
    plain: TreeInfo,
    mapping: TreeInfo,
}

impl ThinMetadata {
    /// Formats `media` for `data_blocks` data blocks; durable on return.
    pub fn format(
        media: Arc<dyn Media>,
        cache_blocks: usize,
        data_blocks: u64,
    ) -> MetaResult<Self> {
        let mut tm = TransactionManager::format(media, cache_blocks, data_blocks)?;
        let (volumes, plain, mapping) = (volumes_info()?, plain_info()?, mapping_info()?);
        for (slot, info) in [(VOLUMES, &volumes), (DEFERRED, &plain), (COUNTERS, &plain)] {
            let root = btree::empty(&mut tm, info)?;
            tm.set_root(slot, root)?;
        }
        tm.commit()?;
        Ok(ThinMetadata {
            tm,
            volumes,
            plain,
            mapping,
        })
    }

    /// Opens the last committed state.
    pub fn open(media: Arc<dyn Media>, cache_blocks: usize) -> MetaResult<Self> {
        let tm = TransactionManager::open(media, cache_blocks)?;
        if [VOLUMES, DEFERRED, COUNTERS]
            .iter()
            .any(|s| tm.root(*s) == 0)
        {
            return Err(MetaError::Corrupt("thin metadata roots missing".into()));
        }
        Ok(ThinMetadata {
            tm,
            volumes: volumes_info()?,
            plain: plain_info()?,
            mapping: mapping_info()?,
        })
    }

    /// The transaction manager below (statistics, checks).
    pub fn transaction_manager(&mut self) -> &mut TransactionManager {
        &mut self.tm
    }

    fn counter(&mut self, key: u64) -> MetaResult<u64> {
        let root = self.tm.root(COUNTERS);
        Ok(btree::lookup(&mut self.tm, &self.plain, root, key)?.map_or(0, |v| le_u64(&v, 0)))
    }

    fn take_counter(&mut self, key: u64) -> MetaResult<u64> {
        let value = self.counter(key)?;
        let root = self.tm.root(COUNTERS);
        let root = btree::insert(
            &mut self.tm,
            &self.plain,
            root,
            key,
            &(value + 1).to_le_bytes(),
        )?;
        self.tm.set_root(COUNTERS, root)?;
        Ok(value)
    }

    /// Volume `id`'s details.
    pub fn volume(&mut self, id: u64) -> MetaResult<VolumeDetails> {
        let root = self.tm.root(VOLUMES);
        btree::lookup(&mut self.tm, &self.volumes, root, id)?
            .map(|v| VolumeDetails::decode(&v))
            .ok_or_else(|| MetaError::InvalidArgument(format!("no volume {id}")))
    }

    fn put_volume(&mut self, id: u64, details: &VolumeDetails) -> MetaResult<()> {
        let root = self.tm.root(VOLUMES);
        let root = btree::insert(&mut self.tm, &self.volumes, root, id, &details.encode())?;
        self.tm.set_root(VOLUMES, root)
    }

    /// Every volume id, in order.
    pub fn volume_ids(&mut self) -> MetaResult<Vec<u64>> {
        let mut ids = Vec::new();
        let root = self.tm.root(VOLUMES);
        btree::range(
            &mut self.tm,
            &self.volumes,
            root,
            0,
            u64::MAX,
            &mut |k, _| {
                ids.push(k);
                true
            },
        )?;
        Ok(ids)
    }

    /// Creates an empty thin volume; returns its id.
    pub fn create_volume(&mut self, size_blocks: u64) -> MetaResult<u64> {
        let result = self.create_volume_inner(size_blocks);
        self.changed(result)
    }

    fn create_volume_inner(&mut self, size_blocks: u64) -> MetaResult<u64> {
        let id = self.take_counter(NEXT_VOLUME)?;
        let mapping_root = btree::empty(&mut self.tm, &self.mapping)?;
        let details = VolumeDetails {
            mapping_root,
            size_blocks,
            parent: None,
            snapshot: false,
        };
        self.put_volume(id, &details)?;
        Ok(id)
    }

    /// Snapshots volume `origin` in O(1); returns the snapshot's id.
    pub fn snapshot(&mut self, origin: u64) -> MetaResult<u64> {
        let result = self.snapshot_inner(origin);
        self.changed(result)
    }

    fn snapshot_inner(&mut self, origin: u64) -> MetaResult<u64> {
        let source = self.volume(origin)?;
        let id = self.take_counter(NEXT_VOLUME)?;
        let mapping_root = btree::share(&mut self.tm, source.mapping_root)?;
        let details = VolumeDetails {
            mapping_root,
            parent: Some(origin),
            snapshot: true,
            ..source
        };
        self.put_volume(id, &details)?;
        Ok(id)
    }

    /// The data block `lba` of volume `id` maps to.
    pub fn lookup(&mut self, id: u64, lba: u64) -> MetaResult<Option<u64>> {
        let details = self.volume(id)?;
        Ok(
            btree::lookup(&mut self.tm, &self.mapping, details.mapping_root, lba)?
                .map(|v| le_u64(&v, 0)),
        )
    }

    fn writable(&mut self, id: u64, lba: u64) -> MetaResult<VolumeDetails> {
        let details = self.volume(id)?;
        if details.snapshot {
            return Err(MetaError::InvalidArgument(format!(
                "volume {id} is a snapshot"
            )));
        }
        if lba >= details.size_blocks {
            return Err(MetaError::InvalidArgument(format!(
                "block {lba} outside volume {id} of {} blocks",
                details.size_blocks
            )));
        }
        Ok(details)
    }

    /// Allocates a data block for a write of `lba` to volume `id` and maps
    /// it there (the previous block, if no snapshot shares it, is freed
    /// at the next commit); returns the new block for the data.
    pub fn map_new_block(&mut self, id: u64, lba: u64) -> MetaResult<u64> {
        let result = self.map_new_block_inner(id, lba);
        self.changed(result)
    }

    fn map_new_block_inner(&mut self, id: u64, lba: u64) -> MetaResult<u64> {
        let mut details = self.writable(id, lba)?;
        let block = self.tm.alloc_data()?;
        let root = btree::insert(
            &mut self.tm,
            &self.mapping,
            details.mapping_root,
            lba,
            &block.to_le_bytes(),
        )?;
        if root != details.mapping_root {
            details.mapping_root = root;
            self.put_volume(id, &details)?;
        }
        Ok(block)
    }

    /// Unmaps `lba` of volume `id`; true if it was mapped.
    pub fn unmap(&mut self, id: u64, lba: u64) -> MetaResult<bool> {
        let result = self.unmap_inner(id, lba);
        self.changed(result)
    }

    fn unmap_inner(&mut self, id: u64, lba: u64) -> MetaResult<bool> {
        let mut details = self.writable(id, lba)?;
        let (root, old) = btree::remove(&mut self.tm, &self.mapping, details.mapping_root, lba)?;
        if root != details.mapping_root {
            details.mapping_root = root;
            self.put_volume(id, &details)?;
        }
        Ok(old.is_some())
    }

    /// Deletes volume `id` in O(1): its mapping goes to the deferred tree,
    /// freed by [`ThinMetadata::release_step`].
    pub fn delete_volume(&mut self, id: u64) -> MetaResult<()> {
        let result = self.delete_volume_inner(id);
        self.changed(result)
    }

    fn delete_volume_inner(&mut self, id: u64) -> MetaResult<()> {
        let details = self.volume(id)?;
        let root = self.tm.root(VOLUMES);
        let (root, _) = btree::remove(&mut self.tm, &self.volumes, root, id)?;
        self.tm.set_root(VOLUMES, root)?;
        self.defer(details.mapping_root)
    }

    fn defer(&mut self, node: u64) -> MetaResult<()> {
        let seq = self.take_counter(NEXT_DEFERRED)?;
        let root = self.tm.root(DEFERRED);
        let root = btree::insert(&mut self.tm, &self.plain, root, seq, &node.to_le_bytes())?;
        self.tm.set_root(DEFERRED, root)
    }

    /// Mapping nodes still holding a reference to drop (checks).
    pub fn deferred(&mut self) -> MetaResult<Vec<u64>> {
        let mut nodes = Vec::new();
        let root = self.tm.root(DEFERRED);
        btree::range(&mut self.tm, &self.plain, root, 0, u64::MAX, &mut |_, v| {
            nodes.push(le_u64(v, 0));
            true
        })?;
        Ok(nodes)
    }

    /// Drops up to `budget` deferred node references; true when nothing is
    /// left to release.
    pub fn release_step(&mut self, budget: usize) -> MetaResult<bool> {
        let result = self.release_step_inner(budget);
        self.changed(result)
    }

    fn release_step_inner(&mut self, budget: usize) -> MetaResult<bool> {
        for _ in 0..budget {
            let root = self.tm.root(DEFERRED);
            let mut first = None;
            btree::range(&mut self.tm, &self.plain, root, 0, u64::MAX, &mut |k, v| {
                first = Some((k, le_u64(v, 0)));
                false
            })?;
            let Some((seq, node)) = first else {
                return Ok(true);
            };
            let (root, _) = btree::remove(&mut self.tm, &self.plain, root, seq)?;
            self.tm.set_root(DEFERRED, root)?;
            for child in btree::release_node(&mut self.tm, &self.mapping, node)? {
                self.defer(child)?;
            }
        }
        let root = self.tm.root(DEFERRED);
        let mut empty = true;
        btree::range(&mut self.tm, &self.plain, root, 0, u64::MAX, &mut |_, _| {
            empty = false;
            false
        })?;
        Ok(empty)
    }

    /// Makes everything so far durable.
    pub fn commit(&mut self) -> MetaResult<()> {
        self.tm.commit()
    }

    /// Passes `result` on. Bad arguments are refused before anything
    /// changes; any other error may have stopped a change half way, so it
    /// fails the transaction (see [`TransactionManager::fail`]) rather than
    /// let a later commit make the half change durable.
    fn changed<T>(&mut self, result: MetaResult<T>) -> MetaResult<T> {
        if matches!(&result, Err(e) if !matches!(e, MetaError::InvalidArgument(_))) {
            self.tm.fail();
        }
        result
    }
}

#[cfg(test)]
mod tests;
