//! The transaction manager: allocation, shadowing and reference counts of
//! metadata blocks, the data blocks' space map, and atomic commits.
//!
//! Between two commits everything happens in the running transaction:
//!
//! * A block allocated in it is writable in place; any other block is
//!   read-only and changes only through [`TransactionManager::shadow`],
//!   which copies it to a newly allocated block and drops a reference to
//!   the original.
//! * A block is allocatable when its reference count is zero and it was not
//!   freed in this transaction (the committed state may still use a block
//!   the transaction freed).
//! * Reference count changes of metadata blocks are buffered (they change
//!   the metadata space map, which allocates metadata blocks itself) and
//!   applied to the running transaction's map in bounded steps
//!   ([`TransactionManager::apply_counts`], which the owner calls as they
//!   accumulate) and at commit until no change is left; data block counts
//!   go straight to the data space map. A count is always the map's value
//!   plus the change still buffered, whichever part is applied.
//!
//! A commit writes the dirty blocks, flushes, writes the superblock slot
//! the last commit did not use and flushes again. The superblock holds the
//! generation, both space maps' roots and sizes, and the caller's roots.
//!
//! A commit can also run in two halves, so that its owner holds its lock
//! only for the first: [`TransactionManager::prepare_commit`] applies the
//! counts still buffered (what the steps before it left), takes the dirty
//! blocks out of the cache, seals the next superblock and starts the next
//! transaction at once;
//! [`PreparedCommit::write`] then does the I/O with no access to the
//! manager, and [`TransactionManager::finish_commit`] records the outcome.
//! Meanwhile the next transaction runs with one more rule: blocks (and
//! data blocks) the prepared commit freed stay unallocatable until it is
//! finished, because the durable superblock may still use them. Its
//! blocks are all new (allocated in its own transaction), so the writes
//! of the prepared commit never touch anything the durable superblock
//! reaches, and the next transaction's writes never touch anything either
//! superblock reaches. Only one commit is in flight at a time.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::block_cache::{seal, verify, Block, BlockCache, CacheStats};
use super::space_map;
use super::{blank_block, le_u64, put_u64, BlockSet, MetaError, MetaResult, META_BLOCK};
use crate::media::Media;

pub const SUPERBLOCK_MAGIC: u32 = u32::from_le_bytes(*b"DPMs");
/// Superblock slots: metadata blocks 0 and 1.
pub const SUPERBLOCKS: u64 = 2;
/// Roots a caller can keep in the superblock.
pub const ROOTS: usize = 16;
/// The smallest metadata area.
pub const MIN_META_BLOCKS: u64 = 16;
/// Version 2: sixteen root slots and the used-block counts.
const VERSION: u64 = 2;

// Superblock fields (after the 16-byte block header).
const SB_VERSION: usize = 16;
const SB_GENERATION: usize = 24;
const SB_META_BLOCKS: usize = 32;
const SB_DATA_BLOCKS: usize = 40;
const SB_META_SM: usize = 48;
const SB_DATA_SM: usize = 56;
const SB_ROOTS: usize = 64;
const SB_META_USED: usize = SB_ROOTS + 8 * ROOTS;
const SB_DATA_USED: usize = SB_META_USED + 8;

/// What a B-tree of [`super::btree::ValueKind::Counted`] values calls to
/// take (`by` = 1) or drop (`by` = -1) the reference an entry holds on
/// what its value names; the owner of such trees installs it with
/// [`TransactionManager::set_value_refs`].
pub type ValueRefs = fn(&mut TransactionManager, u64, i64) -> MetaResult<()>;

/// What the running transaction has changed, for memory accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TransactionStats {
    pub allocated: usize,
    pub freed: usize,
    pub pending_counts: usize,
    pub data_freed: usize,
    /// Buffered metadata count changes applied to the space map since the
    /// manager was opened, in steps and by commits.
    pub counts_applied: u64,
    /// The most of them the first half of one commit applied (the rest
    /// went in [`TransactionManager::apply_counts`] steps before it).
    pub largest_commit_counts: usize,
}

/// The I/O half of a commit (see the module's description): the blocks
/// the transaction dirtied and its sealed superblock.
pub struct PreparedCommit {
    media: Arc<dyn Media>,
    generation: u64,
    /// Sorted by block number.
    blocks: Vec<(u64, Block)>,
    superblock: Vec<u8>,
}

/// The most blocks one write of a commit carries (256 KiB).
pub const MAX_RUN_BLOCKS: usize = 64;

impl PreparedCommit {
    /// The commit's blocks in runs of consecutive numbers, each at most
    /// [`MAX_RUN_BLOCKS`] long, with the first block's number.
    fn runs(&self) -> impl Iterator<Item = (u64, &[(u64, Block)])> {
        let mut rest = self.blocks.as_slice();
        std::iter::from_fn(move || {
            let first = rest.first()?.0;
            let len = rest
                .iter()
                .take(MAX_RUN_BLOCKS)
                .enumerate()
                .take_while(|(i, (number, _))| *number == first + *i as u64)
                .count();
            let (run, tail) = rest.split_at(len);
            rest = tail;
            Some((first, run))
        })
    }

    /// The writes [`PreparedCommit::write`] issues before its first flush.
    pub fn writes(&self) -> usize {
        self.runs().count()
    }

    /// The generation this commit makes durable.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Metadata blocks it writes (besides the superblock).
    pub fn blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Writes the blocks, flushes, writes the superblock and flushes
    /// again. Needs no lock: every block written is new in this commit's
    /// transaction, and the superblock slot is the one the durable
    /// superblock does not use.
    ///
    /// Each run of consecutive blocks (allocation hands them out in order)
    /// goes as one write of up to [`MAX_RUN_BLOCKS`] blocks: on a parity
    /// array every write is a journaled read-modify-write, so one write
    /// per run instead of one per block is most of a commit's cost. The
    /// order of writes before the flush does not matter, and a crash that
    /// tears a run is the same as one that keeps some of its blocks.
    pub fn write(&self) -> MetaResult<()> {
        for (first, run) in self.runs() {
            let mut sealed = Vec::with_capacity(run.len() * META_BLOCK);
            for (i, (_, data)) in run.iter().enumerate() {
                let at = sealed.len();
                sealed.extend_from_slice(data);
                seal(first + i as u64, &mut sealed[at..]);
            }
            self.media.write_at(first * META_BLOCK as u64, &sealed)?;
        }
        self.media.flush()?;
        let slot = self.generation % SUPERBLOCKS;
        self.media
            .write_at(slot * META_BLOCK as u64, &self.superblock)?;
        self.media.flush()?;
        Ok(())
    }
}

pub struct TransactionManager {
    cache: BlockCache,
    /// The last generation prepared (committed or in flight).
    generation: u64,
    /// The last generation whose superblock is durable.
    durable: u64,
    /// A prepared commit is not finished yet.
    in_flight: bool,
    /// Blocks and data blocks freed by the commit in flight: the durable
    /// superblock may still use them.
    pending_freed: BlockSet,
    pending_data_freed: BlockSet,
    /// Data blocks taken by writes in progress outside the owner's lock
    /// ([`TransactionManager::reserve_data`]): free in every state, so no
    /// commit refers to them, and not allocatable meanwhile.
    reserved_data: BlockSet,
    meta_blocks: u64,
    data_blocks: u64,
    meta_sm: u64,
    data_sm: u64,
    roots: [u64; ROOTS],
    /// Metadata blocks allocated in this transaction: writable in place.
    allocated: BlockSet,
    /// Metadata blocks whose count fell to zero in this transaction.
    freed: BlockSet,
    /// Buffered count changes of metadata blocks.
    deltas: BTreeMap<u64, i64>,
    /// Blocks allocated in this transaction whose count the running
    /// space map holds (a change was applied to it): for the others the
    /// map still says zero and the buffered change is the whole count.
    counted: BlockSet,
    /// Metadata blocks with a nonzero count in the running space map
    /// (`meta_used` is the committed map's, until the commit).
    running_used: u64,
    /// Buffered changes applied since the manager was opened.
    counts_applied: u64,
    /// The most buffered changes the first half of one commit applied.
    largest_commit_counts: usize,
    /// Data blocks whose count fell to zero in this transaction.
    data_freed: BlockSet,
    meta_cursor: u64,
    data_cursor: u64,
    /// A flush or superblock write failed: the media's state is unknown.
    failed: bool,
    /// Metadata blocks with a nonzero committed count.
    meta_used: u64,
    /// Data blocks with a nonzero count (freed ones leave at once; they
    /// stay unusable until the commit through `data_freed`).
    data_used: u64,
    value_refs: Option<ValueRefs>,
}

impl TransactionManager {
    fn new(cache: BlockCache, meta_blocks: u64, data_blocks: u64) -> Self {
        TransactionManager {
            cache,
            generation: 0,
            durable: 0,
            in_flight: false,
            pending_freed: BlockSet::default(),
            pending_data_freed: BlockSet::default(),
            reserved_data: BlockSet::default(),
            meta_blocks,
            data_blocks,
            meta_sm: 0,
            data_sm: 0,
            roots: [0; ROOTS],
            allocated: BlockSet::default(),
            freed: BlockSet::default(),
            deltas: BTreeMap::new(),
            counted: BlockSet::default(),
            running_used: 0,
            counts_applied: 0,
            largest_commit_counts: 0,
            data_freed: BlockSet::default(),
            meta_cursor: SUPERBLOCKS,
            data_cursor: 0,
            failed: false,
            meta_used: 0,
            data_used: 0,
            value_refs: None,
        }
    }

    /// Formats `media` as empty metadata for `data_blocks` data blocks,
    /// with a cache of `cache_blocks`; committed when this returns.
    pub fn format(
        media: Arc<dyn Media>,
        cache_blocks: usize,
        data_blocks: u64,
    ) -> MetaResult<Self> {
        let meta_blocks = media.size() / META_BLOCK as u64;
        Self::format_area(media, cache_blocks, meta_blocks, data_blocks)
    }

    /// As [`TransactionManager::format`], with the metadata in the first
    /// `meta_blocks` blocks of `media` only (the rest is the owner's).
    pub fn format_area(
        media: Arc<dyn Media>,
        cache_blocks: usize,
        meta_blocks: u64,
        data_blocks: u64,
    ) -> MetaResult<Self> {
        let cache = BlockCache::new(media.clone(), cache_blocks)?;
        if meta_blocks > cache.blocks() {
            return Err(MetaError::InvalidArgument(format!(
                "a metadata area of {meta_blocks} blocks does not fit the media"
            )));
        }
        if meta_blocks < MIN_META_BLOCKS {
            return Err(MetaError::InvalidArgument(format!(
                "a metadata area needs at least {MIN_META_BLOCKS} blocks"
            )));
        }
        // Stale superblocks of an earlier format must not outrank ours.
        let zeros = vec![0u8; META_BLOCK];
        for slot in 0..SUPERBLOCKS {
            media.write_at(slot * META_BLOCK as u64, &zeros)?;
        }
        let mut tm = TransactionManager::new(cache, meta_blocks, data_blocks);
        for slot in 0..SUPERBLOCKS {
            tm.inc(slot)?;
        }
        tm.commit()?;
        Ok(tm)
    }

    /// Opens the metadata on `media` in its last committed state.
    pub fn open(media: Arc<dyn Media>, cache_blocks: usize) -> MetaResult<Self> {
        let mut newest: Option<Vec<u8>> = None;
        for slot in 0..SUPERBLOCKS {
            let mut data = vec![0u8; META_BLOCK];
            media.read_at(slot * META_BLOCK as u64, &mut data)?;
            if verify(slot, &data, SUPERBLOCK_MAGIC).is_err()
                || le_u64(&data, SB_VERSION) != VERSION
            {
                continue;
            }
            if newest
                .as_ref()
                .is_none_or(|n| le_u64(n, SB_GENERATION) < le_u64(&data, SB_GENERATION))
            {
                newest = Some(data);
            }
        }
        let sb = newest.ok_or_else(|| MetaError::Corrupt("no valid superblock".into()))?;
        let cache = BlockCache::new(media, cache_blocks)?;
        let meta_blocks = le_u64(&sb, SB_META_BLOCKS);
        if meta_blocks < MIN_META_BLOCKS || meta_blocks > cache.blocks() {
            return Err(MetaError::Corrupt(format!(
                "superblock says {meta_blocks} metadata blocks, the media holds {}",
                cache.blocks()
            )));
        }
        let mut tm = TransactionManager::new(cache, meta_blocks, le_u64(&sb, SB_DATA_BLOCKS));
        tm.generation = le_u64(&sb, SB_GENERATION);
        tm.durable = tm.generation;
        tm.meta_sm = le_u64(&sb, SB_META_SM);
        tm.data_sm = le_u64(&sb, SB_DATA_SM);
        tm.meta_used = le_u64(&sb, SB_META_USED);
        tm.running_used = tm.meta_used;
        tm.data_used = le_u64(&sb, SB_DATA_USED);
        if tm.meta_used > meta_blocks || tm.data_used > tm.data_blocks {
            return Err(MetaError::Corrupt(
                "superblock block counts out of range".into(),
            ));
        }
        for (i, root) in tm.roots.iter_mut().enumerate() {
            *root = le_u64(&sb, SB_ROOTS + 8 * i);
        }
        Ok(tm)
    }

    /// Gives up on the running transaction after an error left it half
    /// done: everything fails until the metadata is opened again, which
    /// goes back to the last commit.
    pub fn fail(&mut self) {
        self.failed = true;
    }

    fn usable(&self) -> MetaResult<()> {
        if self.failed {
            return Err(MetaError::Failed);
        }
        Ok(())
    }

    /// The last generation prepared (durable or in flight); the running
    /// transaction becomes the next one.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The last generation whose superblock is durable.
    pub fn durable_generation(&self) -> u64 {
        self.durable
    }

    /// Whether a prepared commit is not finished yet.
    pub fn commit_in_flight(&self) -> bool {
        self.in_flight
    }

    pub fn meta_blocks(&self) -> u64 {
        self.meta_blocks
    }

    pub fn data_blocks(&self) -> u64 {
        self.data_blocks
    }

    /// Root slot `slot` (0 when never set).
    pub fn root(&self, slot: usize) -> u64 {
        self.roots.get(slot).copied().unwrap_or(0)
    }

    /// Sets root slot `slot`; committed with the next commit. The slot
    /// holds a reference: the caller moves one in (a tree operation's
    /// result does this).
    pub fn set_root(&mut self, slot: usize, root: u64) -> MetaResult<()> {
        let r = self
            .roots
            .get_mut(slot)
            .ok_or_else(|| MetaError::InvalidArgument(format!("no root slot {slot}")))?;
        *r = root;
        Ok(())
    }

    /// Installs the hook [`super::btree::ValueKind::Counted`] trees call.
    pub fn set_value_refs(&mut self, hook: ValueRefs) {
        self.value_refs = Some(hook);
    }

    /// Takes (`by` = 1) or drops (`by` = -1) a counted value's reference
    /// through the installed hook.
    pub fn value_ref(&mut self, value: u64, by: i64) -> MetaResult<()> {
        let hook = self.value_refs.ok_or_else(|| {
            MetaError::InvalidArgument("a counted B-tree without a reference hook".into())
        })?;
        hook(self, value, by)
    }

    /// Metadata blocks that can be allocated now: neither used by the
    /// committed state nor allocated in this transaction (blocks freed in
    /// this transaction count as used until the commit).
    pub fn free_meta_blocks(&self) -> u64 {
        self.meta_blocks
            .saturating_sub(self.meta_used)
            .saturating_sub(self.allocated.len() as u64)
            .saturating_sub(self.pending_freed.len() as u64)
    }

    /// Metadata blocks in use by the committed state.
    pub fn meta_used(&self) -> u64 {
        self.meta_used
    }

    /// Data blocks that can be allocated now.
    pub fn free_data_blocks(&self) -> u64 {
        self.data_blocks
            .saturating_sub(self.data_used)
            .saturating_sub(self.data_freed.len() as u64)
            .saturating_sub(self.pending_data_freed.len() as u64)
            .saturating_sub(self.reserved_data.len() as u64)
    }

    /// Data blocks with a nonzero count.
    pub fn data_used(&self) -> u64 {
        self.data_used
    }

    /// Data blocks freed in this transaction or by the commit in flight,
    /// free after the commit.
    pub fn data_pending_free(&self) -> u64 {
        (self.data_freed.len() + self.pending_data_freed.len()) as u64
    }

    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    pub fn cache_resident(&self) -> usize {
        self.cache.resident()
    }

    pub fn cache_capacity(&self) -> usize {
        self.cache.capacity()
    }

    pub fn transaction_stats(&self) -> TransactionStats {
        TransactionStats {
            allocated: self.allocated.len(),
            freed: self.freed.len(),
            pending_counts: self.deltas.len(),
            counts_applied: self.counts_applied,
            largest_commit_counts: self.largest_commit_counts,
            data_freed: self.data_freed.len(),
        }
    }

    /// The metadata space map's root and the data space map's (checks).
    pub fn space_map_roots(&self) -> (u64, u64) {
        (self.meta_sm, self.data_sm)
    }

    /// Metadata block `block` of type `magic`.
    pub fn read(&mut self, block: u64, magic: u32) -> MetaResult<super::block_cache::Block> {
        if block >= self.meta_blocks {
            return Err(MetaError::Corrupt(format!(
                "block {block} outside the metadata area"
            )));
        }
        self.cache.read(block, magic)
    }

    /// Writes a block allocated in this transaction.
    pub fn write(&mut self, block: u64, data: Vec<u8>) -> MetaResult<()> {
        self.usable()?;
        if !self.allocated.contains(&block) {
            return Err(MetaError::InvalidArgument(format!(
                "block {block} is not writable in this transaction"
            )));
        }
        self.cache.write(block, data)
    }

    /// Changes a block allocated in this transaction in place.
    pub fn modify(
        &mut self,
        block: u64,
        magic: u32,
        change: impl FnOnce(&mut [u8]),
    ) -> MetaResult<()> {
        self.usable()?;
        if !self.allocated.contains(&block) {
            return Err(MetaError::InvalidArgument(format!(
                "block {block} is not writable in this transaction"
            )));
        }
        self.cache.modify(block, magic, change)
    }

    /// Current reference count of metadata block `block`.
    pub fn count(&mut self, block: u64) -> MetaResult<u32> {
        let stored = space_map::get(self, self.meta_sm, self.meta_blocks, block)?;
        let delta = self.deltas.get(&block).copied().unwrap_or(0);
        u32::try_from(i64::from(stored) + delta)
            .map_err(|_| MetaError::Corrupt(format!("block {block}: reference count out of range")))
    }

    fn add_delta(&mut self, block: u64, by: i64) -> MetaResult<u32> {
        let now = i64::from(self.count(block)?) + by;
        if now < 0 {
            return Err(MetaError::Corrupt(format!(
                "block {block}: reference count below zero"
            )));
        }
        if now > i64::from(u32::MAX) {
            return Err(MetaError::TooManyReferences(block));
        }
        let delta = self.deltas.entry(block).or_default();
        *delta += by;
        if *delta == 0 {
            self.deltas.remove(&block);
        }
        Ok(now as u32)
    }

    /// Takes a reference on metadata block `block`.
    pub fn inc(&mut self, block: u64) -> MetaResult<()> {
        self.usable()?;
        self.add_delta(block, 1).map(|_| ())
    }

    /// Drops a reference on `block`; true if that was the last one (the
    /// block is then free from the next transaction on).
    pub fn dec(&mut self, block: u64) -> MetaResult<bool> {
        self.usable()?;
        let now = self.add_delta(block, -1)?;
        if now == 0 {
            self.freed.insert(block);
        }
        Ok(now == 0)
    }

    /// Allocates a metadata block (count 1), writable in this transaction.
    pub fn new_block(&mut self) -> MetaResult<u64> {
        self.usable()?;
        let mut from = self.meta_cursor;
        let mut wrapped = false;
        loop {
            let found = space_map::next_zero(self, self.meta_sm, self.meta_blocks, from)?;
            let Some(block) = found else {
                if wrapped {
                    return Err(MetaError::NoSpace);
                }
                wrapped = true;
                from = SUPERBLOCKS;
                continue;
            };
            if wrapped && block >= self.meta_cursor {
                return Err(MetaError::NoSpace);
            }
            from = block + 1;
            if self.deltas.contains_key(&block)
                || self.freed.contains(&block)
                || self.pending_freed.contains(&block)
            {
                continue;
            }
            self.add_delta(block, 1)?;
            self.allocated.insert(block);
            self.meta_cursor = block + 1;
            return Ok(block);
        }
    }

    /// Makes `block` writable: itself if allocated in this transaction and
    /// not shared, else a copy in a new block, dropping a reference on the
    /// original.
    /// Returns the writable block and whether the original was shared (its
    /// count was above one), in which case the copy's children need a
    /// reference of their own, which the caller takes.
    pub fn shadow(&mut self, block: u64, magic: u32) -> MetaResult<(u64, bool)> {
        self.usable()?;
        // A block allocated in this transaction was free in the committed
        // space map, so its count is its buffered delta until a change of
        // it is applied to the map; only then is the map read.
        let quick = match self.deltas.get(&block) {
            Some(&delta) if self.allocated.contains(&block) && !self.counted.contains(&block) => {
                Some(delta > 1)
            }
            _ => None,
        };
        let shared = match quick {
            Some(shared) => shared,
            None => self.count(block)? > 1,
        };
        // A block allocated in this transaction is written in place unless
        // it was shared since (a snapshot taken in the same transaction).
        if self.allocated.contains(&block) && !shared {
            return Ok((block, false));
        }
        let data = self.read(block, magic)?;
        let copy = self.new_block()?;
        self.cache.write(copy, data.to_vec())?;
        self.dec(block)?;
        Ok((copy, shared))
    }

    /// A new, empty block of type `magic`, allocated and written.
    pub fn new_blank(&mut self, magic: u32) -> MetaResult<u64> {
        let block = self.new_block()?;
        self.write(block, blank_block(magic))?;
        Ok(block)
    }

    /// Current reference count of data block `block`.
    pub fn data_count(&mut self, block: u64) -> MetaResult<u32> {
        space_map::get(self, self.data_sm, self.data_blocks, block)
    }

    /// Sets a data block's count; `old` is its count before.
    fn set_data_count(&mut self, block: u64, old: u32, count: u32) -> MetaResult<()> {
        self.data_sm = space_map::set(self, self.data_sm, self.data_blocks, block, count)?;
        match (old, count) {
            (0, c) if c > 0 => self.data_used += 1,
            (o, 0) if o > 0 => self.data_used = self.data_used.saturating_sub(1),
            _ => {}
        }
        Ok(())
    }

    /// Allocates a data block (count 1).
    pub fn alloc_data(&mut self) -> MetaResult<u64> {
        let block = self.free_data_block()?;
        self.set_data_count(block, 0, 1)?;
        Ok(block)
    }

    /// The next allocatable data block from the cursor, which moves past it.
    fn free_data_block(&mut self) -> MetaResult<u64> {
        self.usable()?;
        let mut from = self.data_cursor;
        let mut wrapped = false;
        loop {
            let found = space_map::next_zero(self, self.data_sm, self.data_blocks, from)?;
            let Some(block) = found else {
                if wrapped || self.data_cursor == 0 {
                    return Err(MetaError::NoSpace);
                }
                wrapped = true;
                from = 0;
                continue;
            };
            if wrapped && block >= self.data_cursor {
                return Err(MetaError::NoSpace);
            }
            from = block + 1;
            if self.data_freed.contains(&block)
                || self.pending_data_freed.contains(&block)
                || self.reserved_data.contains(&block)
            {
                continue;
            }
            self.data_cursor = block + 1;
            return Ok(block);
        }
    }

    /// Takes a data block for a write that runs outside the owner's lock:
    /// its count stays zero (so a commit prepared meanwhile does not refer
    /// to it) until [`TransactionManager::claim_data`], and nothing else
    /// allocates it until then or [`TransactionManager::unreserve_data`].
    pub fn reserve_data(&mut self) -> MetaResult<u64> {
        let block = self.free_data_block()?;
        self.reserved_data.insert(block);
        Ok(block)
    }

    /// Gives a reserved data block back (its write failed or found no
    /// place to go).
    pub fn unreserve_data(&mut self, block: u64) {
        self.reserved_data.remove(&block);
    }

    /// Turns a reserved data block into an allocated one (count 1).
    pub fn claim_data(&mut self, block: u64) -> MetaResult<()> {
        self.usable()?;
        if !self.reserved_data.remove(&block) {
            return Err(MetaError::InvalidArgument(format!(
                "data block {block} is not reserved"
            )));
        }
        self.set_data_count(block, 0, 1)
    }

    /// Takes a reference on data block `block`.
    pub fn inc_data(&mut self, block: u64) -> MetaResult<()> {
        self.usable()?;
        let old = self.data_count(block)?;
        let count = old
            .checked_add(1)
            .ok_or(MetaError::TooManyReferences(block))?;
        self.set_data_count(block, old, count)
    }

    /// Drops a reference on data block `block`; true if it was the last.
    pub fn dec_data(&mut self, block: u64) -> MetaResult<bool> {
        self.usable()?;
        let old = self.data_count(block)?;
        let count = old.checked_sub(1).ok_or_else(|| {
            MetaError::Corrupt(format!("data block {block}: reference count below zero"))
        })?;
        self.set_data_count(block, old, count)?;
        if count == 0 {
            self.data_freed.insert(block);
        }
        Ok(count == 0)
    }

    /// Buffered metadata count changes not applied to the space map yet.
    pub fn pending_counts(&self) -> usize {
        self.deltas.len()
    }

    /// Applies buffered metadata count changes to the running
    /// transaction's space map: `least` of them (or all there are), then
    /// more until `until` has passed (none more without it); returns how
    /// many are left. The owner calls this as changes accumulate, so that
    /// the first half of a commit, which applies the rest, does a bounded
    /// amount of work; the count keeps the steps going on a machine so
    /// loaded that the time would let one apply next to nothing.
    ///
    /// Applying a change shadows space map nodes, which buffers more
    /// changes; each node is shadowed at most once per transaction, so
    /// applying until none is left ends. A change stays buffered until
    /// its leaf holds it, so a count read meanwhile (the map's value plus
    /// the buffered rest) stays right. Nothing the committed superblock
    /// reaches is written: the map's nodes are shadowed like any other
    /// metadata. Blocks allocated here whose count the map now holds are
    /// still not allocatable (their count is not zero), and blocks freed
    /// here stay out of reach through `freed` until the commit, so the
    /// rule of what is allocatable does not change. An error fails the
    /// manager, as it may stop a change half way.
    pub fn apply_counts(
        &mut self,
        least: usize,
        until: Option<std::time::Instant>,
    ) -> MetaResult<usize> {
        self.usable()?;
        let result = self.try_apply_counts(least, until);
        if result.is_err() {
            self.failed = true;
        }
        result.map(|_| self.deltas.len())
    }

    /// Applies as [`TransactionManager::apply_counts`] says; returns how
    /// many changes it applied.
    fn try_apply_counts(
        &mut self,
        least: usize,
        until: Option<std::time::Instant>,
    ) -> MetaResult<usize> {
        let mut applied = 0;
        while let Some((&block, &delta)) = self.deltas.first_key_value() {
            let more = || until.is_some_and(|t| std::time::Instant::now() < t);
            if applied >= least && !more() {
                break;
            }
            let stored = space_map::get(self, self.meta_sm, self.meta_blocks, block)?;
            let value = u32::try_from(i64::from(stored) + delta)
                .map_err(|_| MetaError::Corrupt(format!("block {block}: count out of range")))?;
            self.meta_sm = space_map::set(self, self.meta_sm, self.meta_blocks, block, value)?;
            match (stored, value) {
                (0, v) if v > 0 => self.running_used += 1,
                (s, 0) if s > 0 => self.running_used = self.running_used.saturating_sub(1),
                _ => {}
            }
            let left = self.deltas.entry(block).or_default();
            *left -= delta;
            if *left == 0 {
                self.deltas.remove(&block);
            }
            if self.allocated.contains(&block) {
                self.counted.insert(block);
            }
            applied += 1;
        }
        self.counts_applied += applied as u64;
        Ok(applied)
    }

    /// Makes the transaction durable and starts the next one. Any media
    /// failure fails the manager: the media's state is known again only
    /// after [`TransactionManager::open`].
    pub fn commit(&mut self) -> MetaResult<()> {
        let prepared = self.prepare_commit()?;
        let written = prepared.write();
        self.finish_commit(prepared.generation(), written)
    }

    /// The first half of a commit: applies the buffered counts, takes the
    /// dirty blocks and seals the next superblock, and starts the next
    /// transaction. The caller writes the result ([`PreparedCommit::write`],
    /// with no access to the manager needed) and hands the outcome to
    /// [`TransactionManager::finish_commit`] before preparing another.
    pub fn prepare_commit(&mut self) -> MetaResult<PreparedCommit> {
        self.usable()?;
        if self.in_flight {
            return Err(MetaError::InvalidArgument(
                "a commit is already in flight".into(),
            ));
        }
        let result = self.try_prepare();
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    /// Records how the writes of the prepared commit of `generation` went:
    /// on success the blocks and data blocks it freed become allocatable;
    /// a failure fails the manager.
    pub fn finish_commit(&mut self, generation: u64, written: MetaResult<()>) -> MetaResult<()> {
        self.in_flight = false;
        self.cache.end_in_flight();
        if let Err(e) = written {
            self.failed = true;
            return Err(e);
        }
        self.durable = generation;
        self.pending_freed.clear();
        self.pending_data_freed.clear();
        Ok(())
    }

    fn try_prepare(&mut self) -> MetaResult<PreparedCommit> {
        // Whatever the steps during the transaction left: the owner's
        // steps keep this few, as it is work under the owner's lock.
        let applied = self.try_apply_counts(usize::MAX, None)?;
        self.largest_commit_counts = self.largest_commit_counts.max(applied);
        self.meta_used = self.running_used;
        self.counted.clear();
        let generation = self.generation + 1;
        let mut sb = blank_block(SUPERBLOCK_MAGIC);
        put_u64(&mut sb, SB_VERSION, VERSION);
        put_u64(&mut sb, SB_GENERATION, generation);
        put_u64(&mut sb, SB_META_BLOCKS, self.meta_blocks);
        put_u64(&mut sb, SB_DATA_BLOCKS, self.data_blocks);
        put_u64(&mut sb, SB_META_SM, self.meta_sm);
        put_u64(&mut sb, SB_DATA_SM, self.data_sm);
        for (i, root) in self.roots.iter().enumerate() {
            put_u64(&mut sb, SB_ROOTS + 8 * i, *root);
        }
        put_u64(&mut sb, SB_META_USED, self.meta_used);
        put_u64(&mut sb, SB_DATA_USED, self.data_used);
        // The slot alternates: the other one keeps the previous commit
        // until this one is durable.
        seal(generation % SUPERBLOCKS, &mut sb);
        let mut blocks = self.cache.take_dirty();
        blocks.sort_unstable_by_key(|(number, _)| *number);
        self.generation = generation;
        self.in_flight = true;
        self.allocated.clear();
        self.pending_freed.extend(self.freed.drain());
        self.pending_data_freed.extend(self.data_freed.drain());
        Ok(PreparedCommit {
            media: self.cache.media().clone(),
            generation,
            blocks,
            superblock: sb,
        })
    }
}
