//! The paged pool (format 2): every volume's map, the records and their
//! reference counts, the dedup index and both space maps live on the
//! media in copy-on-write B-trees ([`crate::metadata`]), paged through a
//! cache of a fixed number of blocks. Only the catalog (volume names and
//! sizes, a few hundred bytes per volume) is kept in memory.
//!
//! Layout: the first blocks of the media are the metadata area (its
//! superblock pair at blocks 0 and 1), the rest is the data area. The
//! superblock's root slots (see [`slots`]) hold the trees' roots and a few
//! counters. A snapshot or clone shares its origin's mapping root (one
//! reference count increment); the first write through either copies the
//! path it changes. A deleted volume's root goes to the deferred tree in
//! O(1) and [`PagedState::release_step`] frees it a bounded number of
//! nodes at a time.
//!
//! Crash consistency is the transaction manager's: nothing the committed
//! state refers to is written before the next superblock is durable.
//! Operations that must be durable when they return ask for a commit
//! ([`PagedState::take_commit_request`]); the pool prepares it under its
//! lock and writes it without ([`PagedState::commit_step`]), so that a
//! commit's I/O never holds up other operations.
//! Data blocks and metadata blocks freed in the running transaction are
//! reusable only after its commit, new data goes to blocks free in the
//! committed state, and a commit writes the dirty metadata, flushes
//! (which also makes the data durable), writes the other superblock slot
//! and flushes again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::crypt::{Cipher, VolumeKey};
use super::state::OpenedVolume;
use super::{common, Services, VolumeError, VolumeInfo, VolumeKind, BLOCK_SIZE};
use crate::media::{Media, MediaError};
use crate::metadata::btree::{self, Released, TreeInfo, ValueKind};
use crate::metadata::transaction::{PreparedCommit, TransactionManager};
use crate::metadata::{MetaError, META_BLOCK};

mod blocks;
mod catalog;
mod check;
mod commit;
mod journal;
mod records;
mod stats;

pub(crate) use blocks::{Dedup, Placement, ReadStep, WriteStep};
pub(crate) use commit::{CommitDone, CommitStep, CommitWrite};

use blocks::{decode_pack, Placements};

pub(crate) use journal::Journal;

use catalog::{DomainEntry, VolumeEntry};
use records::{mapping_info, ZERO_ENTRY};

const BS: u64 = BLOCK_SIZE as u64;

/// Root slots of the superblock.
pub(crate) mod slots {
    /// Volume id → catalog entry.
    pub const CATALOG: usize = 0;
    /// Key domain id → encryption check value.
    pub const DOMAINS: usize = 1;
    /// Record id → record.
    pub const RECORDS: usize = 2;
    /// Folded fingerprint → record id.
    pub const INDEX: usize = 3;
    /// Mapping node → references still to drop (deleted volumes).
    pub const DEFERRED: usize = 4;
    /// End of the record id lease (a value, not a tree).
    pub const LEASE: usize = 5;
    /// The next volume id (a value).
    pub const NEXT_VOLUME: usize = 6;
    /// The packed block being filled: (block + 1) << 16 | next unit, or 0.
    pub const PACK: usize = 7;
    /// Stored bytes of all records (a value).
    pub const STORED: usize = 8;
    /// Data blocks holding packed records (a value).
    pub const PACKED: usize = 9;
    /// The snapshot journal's two blocks (0: none yet), see [`super::journal`].
    pub const JOURNAL_A: usize = 10;
    pub const JOURNAL_B: usize = 11;
    /// The highest journal number whose snapshot this state holds (a value).
    pub const JOURNALED: usize = 12;
    /// Record id → reference count (a space map; 0: empty), see [`super::records`].
    pub const REFS: usize = 13;
    /// The pool format tag (a value): [`super::FORMAT_TAG`].
    pub const FORMAT: usize = 15;
}

use slots::*;

/// Slot [`slots::FORMAT`] of a paged pool: "DPUPOOL" and 3, format 2 with
/// the record counts in a map of their own ([`slots::REFS`]). A pool of
/// another format (including format 2's first revision, tag 2, whose
/// records held their counts) is refused with a clear error.
pub(crate) const FORMAT_TAG: u64 = u64::from_le_bytes(*b"DPUPOOL\x03");

/// Record ids leased per commit (see the in-memory pool's lease).
const RECORD_LEASE: u64 = 1 << 16;
/// The smallest metadata area.
const MIN_META_BLOCKS: u64 = 64;
/// The smallest data area.
const MIN_DATA_BLOCKS: u64 = 8;
/// A transaction that allocated this many metadata blocks is committed
/// (at most; half the cache when that is smaller), which bounds its
/// bookkeeping and the dirty share of the cache.
const MAX_COMMIT_BLOCKS: usize = 4096;
/// Buffered metadata count changes an operation leaves: past this, it
/// applies some to the space map ([`PagedState::apply_counts_step`]).
/// A transaction buffers a change per block it allocates or frees
/// (thousands), and applied all at once in the first half of its commit
/// they held the pool lock for up to 249 ms of CPU in the full bench,
/// each change a space map leaf that the cache may have let go.
const PENDING_COUNTS: usize = 256;
/// Buffered changes the first half of a commit applies itself at most;
/// above this, [`PagedState::commit_step`] first applies them in steps
/// of their own, the pool lock released in between.
const PREPARE_COUNTS: usize = 64;
/// The longest one step applies buffered count changes once it applied
/// [`COUNT_STEP_LEAST`].
const COUNT_STEP_TIME: std::time::Duration = std::time::Duration::from_millis(1);
/// Buffered count changes one step applies whatever the time (all there
/// are, when fewer): about what a write adds, so that the steps keep up
/// when the machine is so loaded that the time allows next to none, and
/// few, as each may be a space map leaf read from the media (roughly
/// 100 µs of CPU each at the bench's 200,000 writes, judging by what
/// steps of 32 added to writes' holds).
const COUNT_STEP_LEAST: usize = 8;
/// Count steps a commit takes before it prepares with whatever is left,
/// so that writers adding changes as fast as the steps apply them cannot
/// hold it back for ever.
const MAX_COUNT_STEPS: u32 = 256;
/// The longest a release step keeps going (it always drops one
/// reference): checked between nodes and between a leaf's entries.
const RELEASE_STEP_TIME: std::time::Duration = std::time::Duration::from_millis(2);
/// Entries of a deleted volume's map leaf whose record references one
/// release step drops at most (a leaf holds up to 254). Each is a count
/// in the counts map, a few microseconds, unless the record dies with it
/// (a records, index and space map update each, their leaves perhaps
/// not cached): [`RELEASE_STEP_TIME`] bounds those.
const RELEASE_ENTRIES: usize = 128;
/// Deferred mapping nodes a flush releases on its way.
const FLUSH_RELEASE_BUDGET: usize = 64;

/// The smallest metadata cache: what one operation touches at once.
pub const MIN_CACHE_BYTES: usize = 64 * META_BLOCK;

/// How a paged pool is formatted and opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagedOptions {
    /// Bytes of metadata blocks kept in memory (the cache's bound).
    pub cache_bytes: usize,
    /// Percent of the media the metadata area takes when a pool is
    /// formatted (fixed from then on). About 150 bytes of metadata per
    /// distinct 4 KiB block written, so the default of 6 % fits raw data
    /// with room for snapshots' copied paths; compression packs more
    /// records per block and wants more.
    pub metadata_percent: u8,
}

impl Default for PagedOptions {
    fn default() -> Self {
        PagedOptions {
            cache_bytes: 256 << 20,
            metadata_percent: 6,
        }
    }
}

impl PagedOptions {
    fn cache_blocks(&self) -> Result<usize, VolumeError> {
        if self.cache_bytes < MIN_CACHE_BYTES {
            return Err(VolumeError::InvalidArgument(format!(
                "a metadata cache of {} bytes is below the minimum of {MIN_CACHE_BYTES}",
                self.cache_bytes
            )));
        }
        Ok(self.cache_bytes / META_BLOCK)
    }
}

/// The commit in flight and what it changes when it is durable.
struct InFlight {
    generation: u64,
    done: Arc<CommitDone>,
    /// The record id lease it makes durable.
    lease: u64,
    /// The highest journaled snapshot it holds.
    journaled: u64,
}

pub(crate) struct PagedState {
    media: Arc<dyn Media>,
    tm: TransactionManager,
    /// First block of the data area.
    data_start: u64,
    volumes: BTreeMap<u32, VolumeEntry>,
    domains: BTreeMap<u32, DomainEntry>,
    /// Catalog entries changed since the last commit.
    dirty_volumes: BTreeSet<u32>,
    removed_volumes: BTreeSet<u32>,
    /// Anything changed since the last commit.
    dirty: bool,
    /// An error stopped a change half way or a commit failed: which state
    /// the media holds is known again only after reopening.
    failed: bool,
    next_rid: u64,
    write_cache: bool,
    /// Metadata blocks an operation may need at most (checked before it
    /// starts, so that a full metadata area fails it cleanly).
    reserve: u64,
    /// A transaction that allocated this many metadata blocks is
    /// committed after the operation, which bounds its bookkeeping.
    commit_after: usize,
    /// [`PagedState::close`] was called.
    closed: bool,
    /// The generation an operation needs durable before it is
    /// acknowledged.
    commit_requested: Option<u64>,
    /// The commit being written outside the pool lock.
    in_flight: Option<InFlight>,
    /// The record id lease of the durable superblock: ids below it are
    /// never handed out again after a crash.
    durable_lease: u64,
    /// Block writes between their two halves.
    placements: Arc<Placements>,
    /// The snapshot journal (none until its blocks are allocated).
    journal: Option<Arc<Journal>>,
    /// The last journal number handed out.
    journal_number: u64,
    /// The journal number an operation needs durable before it is
    /// acknowledged (a journaled snapshot).
    journal_requested: Option<u64>,
    /// The last generation with a change a journaled snapshot cannot be
    /// replayed across (anything but writes, discards, releases and
    /// journaled snapshots): snapshots are journaled only once it is
    /// durable.
    structural: u64,
    /// Snapshots made durable by the journal since the pool was opened.
    journaled_snapshots: u64,
    /// The operation just run needs a media flush before it is
    /// acknowledged (a flush with nothing to commit), done without the
    /// pool lock.
    media_flush_requested: bool,
    /// Count steps taken for the commit about to be prepared (see
    /// [`MAX_COUNT_STEPS`]).
    count_steps: u32,
    /// [`RELEASE_STEP_TIME`] (tests shorten it).
    release_step_time: std::time::Duration,
    /// [`PENDING_COUNTS`] and [`PREPARE_COUNTS`] (tests lower them, to
    /// see the steps at work at a size a test runs quickly).
    count_limits: (usize, usize),
}

impl PagedState {
    /// Formats `media` as an empty paged pool.
    pub(crate) fn format(
        media: Arc<dyn Media>,
        options: &PagedOptions,
    ) -> Result<Self, VolumeError> {
        let cache = options.cache_blocks()?;
        if !(1..=90).contains(&options.metadata_percent) {
            return Err(VolumeError::InvalidArgument(format!(
                "a metadata area of {} % is outside 1..=90 %",
                options.metadata_percent
            )));
        }
        let blocks = media.size() / BS;
        let meta_blocks = (blocks * u64::from(options.metadata_percent) / 100).max(MIN_META_BLOCKS);
        if blocks < meta_blocks + MIN_DATA_BLOCKS {
            return Err(VolumeError::InvalidArgument(format!(
                "media of {} bytes is too small for a paged pool",
                media.size()
            )));
        }
        let mut tm = TransactionManager::format_area(
            media.clone(),
            cache,
            meta_blocks,
            blocks - meta_blocks,
        )?;
        tm.set_value_refs(records::record_ref);
        catalog::format(&mut tm)?;
        for (slot, info) in [
            (RECORDS, records::records_info()?),
            (INDEX, records::index_info()?),
            (DEFERRED, deferred_info()?),
        ] {
            let root = btree::empty(&mut tm, &info)?;
            tm.set_root(slot, root)?;
        }
        tm.set_root(LEASE, RECORD_LEASE)?;
        tm.set_root(REFS, 0)?;
        tm.set_root(NEXT_VOLUME, 0)?;
        tm.set_root(FORMAT, FORMAT_TAG)?;
        journal::allocate(&mut tm)?;
        tm.commit()?;
        let mut state = PagedState::from_tm(media, tm)?;
        // The first lease is durable with the format: ids start at 0.
        state.next_rid = 0;
        Ok(state)
    }

    /// Opens the paged pool on `media`: reads the superblock, the catalog
    /// and nothing else.
    pub(crate) fn open(media: Arc<dyn Media>, options: &PagedOptions) -> Result<Self, VolumeError> {
        let cache = options.cache_blocks()?;
        let mut tm = TransactionManager::open(media.clone(), cache)?;
        if tm.root(FORMAT) != FORMAT_TAG {
            return Err(VolumeError::Corrupt(format!(
                "metadata of unknown pool format {:#x}",
                tm.root(FORMAT)
            )));
        }
        tm.set_value_refs(records::record_ref);
        let mut state = PagedState::from_tm(media, tm)?;
        state.replay_journal()?;
        Ok(state)
    }

    fn from_tm(media: Arc<dyn Media>, mut tm: TransactionManager) -> Result<Self, VolumeError> {
        let data_start = tm.meta_blocks();
        if data_start.saturating_add(tm.data_blocks()) > media.size() / BS {
            return Err(VolumeError::Corrupt(
                "the pool's data area does not fit the media".into(),
            ));
        }
        let volumes = catalog::load_volumes(&mut tm)?;
        let domains = catalog::load_domains(&mut tm)?;
        // The plaintext domain 0 is implicit; the tree holds keyed ones.
        if domains.contains_key(&0) {
            return Err(VolumeError::Corrupt("plaintext domain damaged".into()));
        }
        let capacity = tm.cache_capacity();
        let reserve = (tm.meta_blocks() / 8).clamp(16, 4096);
        let next_rid = tm.root(LEASE);
        let mut state = PagedState {
            media,
            tm,
            data_start,
            volumes,
            domains,
            dirty_volumes: BTreeSet::new(),
            removed_volumes: BTreeSet::new(),
            dirty: false,
            failed: false,
            next_rid,
            write_cache: true,
            reserve,
            commit_after: (capacity / 2).clamp(16, MAX_COMMIT_BLOCKS),
            closed: false,
            commit_requested: None,
            in_flight: None,
            durable_lease: next_rid,
            placements: Arc::default(),
            journal: None,
            journal_number: 0,
            journal_requested: None,
            structural: 0,
            journaled_snapshots: 0,
            media_flush_requested: false,
            count_steps: 0,
            release_step_time: RELEASE_STEP_TIME,
            count_limits: (PENDING_COUNTS, PREPARE_COUNTS),
        };
        if let Some(blocks) = state.journal_blocks() {
            let journaled = state.tm.root(JOURNALED);
            state.journal = Some(Journal::new(state.media.clone(), blocks, journaled));
        }
        state.domains.entry(0).or_insert(DomainEntry {
            encrypted: false,
            check_value: [0; super::crypt::CHECK_VALUE_LEN],
        });
        Ok(state)
    }

    /// Ends all work on the pool (its media is about to be reused): every
    /// later operation fails, and the background releaser stops. A commit
    /// being written is waited for, so nothing writes to the media after
    /// this returns.
    pub(crate) fn close(&mut self) {
        self.closed = true;
        if let Some(flight) = &self.in_flight {
            let _ = flight.done.wait();
        }
        self.placements.wait_idle();
        if let Some(journal) = &self.journal {
            journal.close();
        }
    }

    pub(crate) fn usable(&self) -> Result<(), VolumeError> {
        if self.closed {
            return Err(VolumeError::Media(MediaError::Gone));
        }
        if self.failed {
            return Err(VolumeError::Media(MediaError::Unrecoverable(
                "a metadata update failed; reopen the pool".into(),
            )));
        }
        Ok(())
    }

    /// Passes `result` on; an error fails the pool, since it may have
    /// stopped a change half way (callers check what they can before).
    fn changing<T>(&mut self, result: Result<T, VolumeError>) -> Result<T, VolumeError> {
        if result.is_err() {
            self.failed = true;
            self.tm.fail();
        }
        self.dirty = true;
        result
    }

    /// The metadata cache's statistics and bound.
    pub(crate) fn cache_report(&self) -> super::CacheReport {
        let stats = self.tm.cache_stats();
        super::CacheReport {
            capacity_blocks: self.tm.cache_capacity(),
            resident_blocks: self.tm.cache_resident(),
            peak_resident_blocks: stats.peak_resident,
            blocks_read: stats.reads,
            blocks_written: stats.writes,
        }
    }

    /// Makes the current state durable: catalog entries, then the
    /// transaction manager's commit.
    /// Commits under the pool lock, waiting first for a commit in flight
    /// (operations that need space back before they can go on; the I/O
    /// path asks for commits instead, see [`PagedState::commit_step`]).
    pub(crate) fn commit(&mut self) -> Result<(), VolumeError> {
        self.usable()?;
        if let Some(flight) = &self.in_flight {
            let outcome = flight.done.wait();
            self.settle(outcome)?;
        }
        let result = self.prepare().and_then(|(prepared, lease)| {
            let written = prepared.write();
            self.tm.finish_commit(prepared.generation(), written)?;
            self.durable_lease = lease;
            self.journal_committed(self.tm.root(JOURNALED));
            Ok(())
        });
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    /// Writes the catalog's changes and prepares the transaction manager's
    /// commit; returns it with the record id lease it makes durable.
    fn prepare(&mut self) -> Result<(PreparedCommit, u64), VolumeError> {
        for id in std::mem::take(&mut self.removed_volumes) {
            catalog::remove_volume(&mut self.tm, id)?;
        }
        for id in std::mem::take(&mut self.dirty_volumes) {
            if let Some(v) = self.volumes.get(&id) {
                catalog::put_volume(&mut self.tm, id, v)?;
            }
        }
        self.tm.set_root(JOURNALED, self.journal_number)?;
        self.count_steps = 0;
        let prepared = self.tm.prepare_commit()?;
        self.dirty = false;
        Ok((prepared, self.tm.root(LEASE)))
    }

    /// Asks for a commit of the running transaction before the running
    /// operation is acknowledged.
    fn request_commit(&mut self) {
        self.need_durable(self.tm.generation() + 1);
    }

    fn need_durable(&mut self, generation: u64) {
        self.commit_requested = Some(self.commit_requested.unwrap_or(0).max(generation));
    }

    /// The generation that must be durable before the operation just run
    /// is acknowledged, if it asked for a commit.
    pub(crate) fn take_commit_request(&mut self) -> Option<u64> {
        self.commit_requested.take()
    }

    /// Records the outcome of the commit in flight.
    fn settle(&mut self, outcome: Result<(), VolumeError>) -> Result<(), VolumeError> {
        let Some(flight) = self.in_flight.take() else {
            return Ok(());
        };
        match outcome {
            Ok(()) => {
                self.tm.finish_commit(flight.generation, Ok(()))?;
                self.durable_lease = flight.lease;
                self.journal_committed(flight.journaled);
                Ok(())
            }
            Err(e) => {
                self.failed = true;
                let _ = self
                    .tm
                    .finish_commit(flight.generation, Err(MetaError::Failed));
                Err(e)
            }
        }
    }

    /// One step towards generation `needed` being durable, under the pool
    /// lock: records a finished commit, and either says it is done, names
    /// the commit to wait for, or prepares the next one for the caller to
    /// write without the lock.
    pub(crate) fn commit_step(&mut self, needed: u64) -> Result<CommitStep, VolumeError> {
        if let Some(outcome) = self.in_flight.as_ref().and_then(|f| f.done.peek()) {
            self.settle(outcome)?;
        }
        self.usable()?;
        if self.tm.durable_generation() >= needed {
            return Ok(CommitStep::Done);
        }
        if let Some(flight) = &self.in_flight {
            return Ok(CommitStep::Wait(flight.done.clone()));
        }
        if self.tm.pending_counts() > self.count_limits.1 && self.count_steps < MAX_COUNT_STEPS {
            self.count_steps += 1;
            self.apply_counts_step()?;
            return Ok(CommitStep::Again);
        }
        let (prepared, lease) = match self.prepare() {
            Ok(p) => p,
            Err(e) => {
                self.failed = true;
                return Err(e);
            }
        };
        let done = CommitDone::new();
        self.in_flight = Some(InFlight {
            generation: prepared.generation(),
            done: done.clone(),
            lease,
            journaled: self.tm.root(JOURNALED),
        });
        Ok(CommitStep::Write(CommitWrite { prepared, done }))
    }

    /// Whether the pool can start an operation that takes up to `data`
    /// data blocks: commits (which frees what this transaction freed) and
    /// releases deferred deletes when that helps, else `NoSpace` before
    /// anything changed.
    fn ensure_room(&mut self, data: u64) -> Result<(), VolumeError> {
        self.ensure_room_within(data, self.reserve)
    }

    /// As [`PagedState::ensure_room`] for operations that free space
    /// (discard, delete, shrinking): they may use half the reserve, which
    /// is what the reserve is kept for.
    fn ensure_room_to_free(&mut self) -> Result<(), VolumeError> {
        self.ensure_room_within(0, self.reserve / 2)
    }

    fn ensure_room_within(&mut self, data: u64, reserve: u64) -> Result<(), VolumeError> {
        let fits = |s: &Self| s.tm.free_meta_blocks() >= reserve && s.tm.free_data_blocks() >= data;
        if fits(self) {
            return Ok(());
        }
        if self.dirty {
            self.commit()?;
            if fits(self) {
                return Ok(());
            }
        }
        while self.has_deferred()? {
            self.release_step(FLUSH_RELEASE_BUDGET)?;
            self.commit()?;
            if fits(self) {
                return Ok(());
            }
        }
        Err(VolumeError::NoSpace)
    }

    /// Commits a transaction that grew large (bounding its bookkeeping and
    /// the dirty share of the cache), and applies buffered count changes
    /// once there are more than [`PENDING_COUNTS`], so that the first half
    /// of the commit finds few left.
    fn after_change(&mut self) -> Result<(), VolumeError> {
        if self.tm.pending_counts() > self.count_limits.0 {
            self.apply_counts_step()?;
        }
        if self.tm.transaction_stats().allocated >= self.commit_after {
            self.request_commit();
        }
        Ok(())
    }

    /// Applies [`COUNT_STEP_LEAST`] buffered count changes, and more for
    /// up to [`COUNT_STEP_TIME`].
    fn apply_counts_step(&mut self) -> Result<(), VolumeError> {
        let until = std::time::Instant::now() + COUNT_STEP_TIME;
        let result = self
            .tm
            .apply_counts(COUNT_STEP_LEAST, Some(until))
            .map(|_| ())
            .map_err(VolumeError::from);
        self.changing(result)
    }

    /// The media to flush, without the pool lock, before the operation
    /// just run is acknowledged.
    pub(crate) fn take_media_flush(&mut self) -> Option<Arc<dyn Media>> {
        std::mem::take(&mut self.media_flush_requested).then(|| self.media.clone())
    }

    /// A media flush failed: Linux reports a writeback error once, so
    /// what the media holds is known again only after reopening.
    pub(crate) fn media_flush_failed(&mut self) {
        self.failed = true;
        self.tm.fail();
    }

    /// Makes every completed write durable; also releases a bounded part of
    /// deferred deletes.
    pub(crate) fn flush(&mut self) -> Result<(), VolumeError> {
        self.usable()?;
        if self.has_deferred()? {
            self.release_step(FLUSH_RELEASE_BUDGET)?;
        }
        if self.dirty {
            self.request_commit();
            Ok(())
        } else if self.in_flight.is_some() {
            // Everything is in the commit being written.
            self.need_durable(self.tm.generation());
            Ok(())
        } else {
            // Completed writes of new blocks are on their way to the media
            // cache: a flush makes them durable, issued without the lock.
            self.media_flush_requested = true;
            Ok(())
        }
    }

    pub(crate) fn set_write_cache(&mut self, enabled: bool) {
        self.write_cache = enabled;
    }

    pub(crate) fn write_cache(&self) -> bool {
        self.write_cache
    }

    pub(crate) fn complete_write(&mut self) -> Result<(), VolumeError> {
        if self.write_cache {
            Ok(())
        } else {
            self.flush()
        }
    }

    fn volume(&self, id: u32) -> Result<&VolumeEntry, VolumeError> {
        self.volumes
            .get(&id)
            .ok_or_else(|| VolumeError::NotFound(format!("volume #{id}")))
    }

    fn find(&self, name: &str) -> Result<u32, VolumeError> {
        self.volumes
            .iter()
            .find(|(_, v)| v.name == name)
            .map(|(&id, _)| id)
            .ok_or_else(|| VolumeError::NotFound(name.to_string()))
    }

    fn check_new_name(&self, name: &str) -> Result<(), VolumeError> {
        common::check_new_name(name, self.volumes.values().any(|v| v.name == name))
    }

    fn domain_cipher<'c>(
        &self,
        domain: u32,
        cipher: Option<&'c Cipher>,
    ) -> Result<Option<&'c Cipher>, VolumeError> {
        let encrypted = self.domains.get(&domain).is_some_and(|d| d.encrypted);
        common::domain_cipher(encrypted, cipher)
    }

    fn take_volume_id(&mut self) -> Result<u32, VolumeError> {
        let id = self.tm.root(NEXT_VOLUME);
        let id32 = u32::try_from(id)
            .map_err(|_| VolumeError::InvalidArgument("volume ids exhausted".into()))?;
        self.tm.set_root(NEXT_VOLUME, id + 1)?;
        Ok(id32)
    }

    /// Creates an empty thin volume and commits.
    pub(crate) fn create_volume(
        &mut self,
        name: &str,
        size_bytes: u64,
        services: Services,
        key: Option<&VolumeKey>,
    ) -> Result<(), VolumeError> {
        self.usable()?;
        self.check_new_name(name)?;
        common::size_blocks(size_bytes)?;
        self.ensure_room(0)?;
        let result = self.create_inner(name, size_bytes / BS, services, key);
        self.changing(result)?;
        self.mark_structural();
        self.request_commit();
        Ok(())
    }

    fn create_inner(
        &mut self,
        name: &str,
        size_blocks: u64,
        services: Services,
        key: Option<&VolumeKey>,
    ) -> Result<(), VolumeError> {
        let domain = match key {
            None => 0,
            Some(key) => {
                let check_value = key.check_value();
                let existing = self
                    .domains
                    .iter()
                    .find(|(_, d)| d.encrypted && d.check_value == check_value)
                    .map(|(&id, _)| id);
                match existing {
                    Some(id) => id,
                    None => {
                        let id = self.domains.keys().next_back().map_or(1, |&last| last + 1);
                        let entry = DomainEntry {
                            encrypted: true,
                            check_value,
                        };
                        catalog::put_domain(&mut self.tm, id, &entry)?;
                        self.domains.insert(id, entry);
                        id
                    }
                }
            }
        };
        let id = self.take_volume_id()?;
        let root = btree::empty(&mut self.tm, &mapping_info()?)?;
        self.volumes.insert(
            id,
            VolumeEntry {
                name: name.to_string(),
                kind: VolumeKind::Writable,
                size_blocks,
                domain,
                services,
                parent: None,
                root,
                mapped: 0,
                zeros: 0,
            },
        );
        self.dirty_volumes.insert(id);
        Ok(())
    }

    pub(crate) fn open_volume(
        &self,
        name: &str,
        key: Option<&VolumeKey>,
    ) -> Result<OpenedVolume, VolumeError> {
        self.usable()?;
        let id = self.find(name)?;
        let v = self.volume(id)?;
        let domain = self
            .domains
            .get(&v.domain)
            .ok_or_else(|| VolumeError::Corrupt(format!("{name}: key domain missing")))?;
        let cipher = common::handle_cipher(domain.encrypted, &domain.check_value, key)?;
        Ok(OpenedVolume {
            id,
            kind: v.kind,
            services: v.services,
            cipher,
        })
    }

    /// Adds a volume sharing `source`'s mapping root (O(1)) and commits.
    fn add_copy(&mut self, source: &str, name: &str, kind: VolumeKind) -> Result<(), VolumeError> {
        self.usable()?;
        self.check_new_name(name)?;
        let source_id = self.find(source)?;
        let src = self.volume(source_id)?.clone();
        if kind == VolumeKind::Writable && src.kind != VolumeKind::Snapshot {
            return Err(VolumeError::InvalidArgument(format!(
                "{source} is not a snapshot"
            )));
        }
        if self.tm.count(src.root)? == u32::MAX {
            return Err(MetaError::TooManyReferences(src.root).into());
        }
        self.ensure_room(0)?;
        let result = (|| {
            let root = btree::share(&mut self.tm, src.root)?;
            let id = self.take_volume_id()?;
            let copy = VolumeEntry {
                name: name.to_string(),
                kind,
                parent: Some(source_id),
                root,
                ..src
            };
            self.volumes.insert(id, copy);
            self.dirty_volumes.insert(id);
            Ok(id)
        })();
        let id = self.changing(result)?;
        // A snapshot is durable with a journal record when it can be; the
        // next commit carries it (see [`journal`]).
        if kind == VolumeKind::Snapshot && self.journal_snapshot(id, source_id, name) {
            return Ok(());
        }
        self.mark_structural();
        self.request_commit();
        Ok(())
    }

    pub(crate) fn snapshot(&mut self, origin: &str, name: &str) -> Result<(), VolumeError> {
        self.add_copy(origin, name, VolumeKind::Snapshot)
    }

    pub(crate) fn clone_snapshot(&mut self, snapshot: &str, name: &str) -> Result<(), VolumeError> {
        self.add_copy(snapshot, name, VolumeKind::Writable)
    }

    /// Makes writable `volume` share `snapshot`'s root; its old map is
    /// released in the background.
    pub(crate) fn revert(&mut self, volume: &str, snapshot: &str) -> Result<(), VolumeError> {
        self.usable()?;
        let vol_id = self.find(volume)?;
        let snap_id = self.find(snapshot)?;
        let (vol, snap) = (self.volume(vol_id)?.clone(), self.volume(snap_id)?.clone());
        if vol.kind != VolumeKind::Writable || snap.kind != VolumeKind::Snapshot {
            return Err(VolumeError::InvalidArgument(format!(
                "revert needs a writable volume and a snapshot, not {volume} and {snapshot}"
            )));
        }
        if vol.domain != snap.domain {
            return Err(VolumeError::InvalidArgument(format!(
                "{volume} and {snapshot} use different keys"
            )));
        }
        if self.tm.count(snap.root)? == u32::MAX {
            return Err(MetaError::TooManyReferences(snap.root).into());
        }
        self.ensure_room(0)?;
        let result = (|| {
            let root = btree::share(&mut self.tm, snap.root)?;
            self.defer(vol.root, 1)?;
            if let Some(v) = self.volumes.get_mut(&vol_id) {
                v.root = root;
                v.size_blocks = snap.size_blocks;
                v.mapped = snap.mapped;
                v.zeros = snap.zeros;
            }
            self.dirty_volumes.insert(vol_id);
            Ok(())
        })();
        self.changing(result)?;
        self.mark_structural();
        self.request_commit();
        Ok(())
    }

    /// Changes a writable volume's size; entries past a smaller end go.
    pub(crate) fn resize(&mut self, name: &str, size_bytes: u64) -> Result<(), VolumeError> {
        self.usable()?;
        let id = self.find(name)?;
        let v = self.volume(id)?.clone();
        if v.kind == VolumeKind::Snapshot {
            return Err(VolumeError::ReadOnly);
        }
        common::size_blocks(size_bytes)?;
        let size_blocks = size_bytes / BS;
        self.ensure_room_to_free()?;
        let result = self.unmap_range(id, size_blocks, u64::MAX).map(|()| {
            if let Some(v) = self.volumes.get_mut(&id) {
                v.size_blocks = size_blocks;
            }
            self.dirty_volumes.insert(id);
        });
        self.changing(result)?;
        self.mark_structural();
        self.request_commit();
        Ok(())
    }

    /// Removes every entry of `id` in `start..end`. A long range commits
    /// on its way when the metadata area runs short (the blocks its
    /// removals copied are free again after a commit), so that it never
    /// runs out half way; the entries removed so far are then durable,
    /// which a discard allows.
    fn unmap_range(&mut self, id: u32, start: u64, end: u64) -> Result<(), VolumeError> {
        let info = mapping_info()?;
        let root = self.volume(id)?.root;
        let mut entries = Vec::new();
        btree::range(&mut self.tm, &info, root, start, end, &mut |k, v| {
            entries.push((k, le(v)));
            true
        })?;
        self.dirty_volumes.insert(id);
        for (lba, value) in entries {
            let root = self.volume(id)?.root;
            let root = btree::remove(&mut self.tm, &info, root, lba)?.0;
            if let Some(v) = self.volumes.get_mut(&id) {
                v.root = root;
                v.mapped = v.mapped.saturating_sub(1);
                if value == ZERO_ENTRY {
                    v.zeros = v.zeros.saturating_sub(1);
                }
            }
            if self.tm.free_meta_blocks() < self.reserve / 4 {
                self.commit()?;
            }
        }
        Ok(())
    }

    pub(crate) fn size_blocks(&self, id: u32) -> Result<u64, VolumeError> {
        Ok(self.volume(id)?.size_blocks)
    }

    /// Deletes a volume in O(1): its mapping root is released in the
    /// background ([`PagedState::release_step`]).
    pub(crate) fn delete(&mut self, name: &str) -> Result<(), VolumeError> {
        self.usable()?;
        let id = self.find(name)?;
        self.ensure_room_to_free()?;
        let result = (|| {
            let Some(vol) = self.volumes.remove(&id) else {
                return Err(VolumeError::NotFound(name.to_string()));
            };
            self.dirty_volumes.remove(&id);
            self.removed_volumes.insert(id);
            self.defer(vol.root, 1)?;
            if vol.domain != 0 && !self.volumes.values().any(|v| v.domain == vol.domain) {
                catalog::remove_domain(&mut self.tm, vol.domain)?;
                self.domains.remove(&vol.domain);
            }
            Ok(())
        })();
        self.changing(result)?;
        self.mark_structural();
        self.request_commit();
        Ok(())
    }

    /// Adds `count` references on mapping node `node` to drop later.
    fn defer(&mut self, node: u64, count: u64) -> Result<(), VolumeError> {
        let info = deferred_info()?;
        let root = self.tm.root(DEFERRED);
        let now = btree::lookup(&mut self.tm, &info, root, node)?.map_or(0, |v| le(&v));
        let root = btree::insert(
            &mut self.tm,
            &info,
            root,
            node,
            &(now + count).to_le_bytes(),
        )?;
        self.tm.set_root(DEFERRED, root)?;
        Ok(())
    }

    /// Whether deleted volumes still hold space.
    pub(crate) fn has_deferred(&mut self) -> Result<bool, VolumeError> {
        Ok(self.first_deferred()?.is_some())
    }

    fn first_deferred(&mut self) -> Result<Option<(u64, u64)>, VolumeError> {
        let info = deferred_info()?;
        let root = self.tm.root(DEFERRED);
        let mut first = None;
        btree::range(&mut self.tm, &info, root, 0, u64::MAX, &mut |k, v| {
            first = Some((k, le(v)));
            false
        })?;
        Ok(first)
    }

    /// Drops up to `budget` deferred node references (each frees at most
    /// one node, or drops at most [`RELEASE_ENTRIES`] of a freed leaf's
    /// record references and defers the rest of the leaf in a copy),
    /// stopping early once [`RELEASE_STEP_TIME`] has passed; true when
    /// nothing is left to release. The space is reusable after the next
    /// commit.
    pub(crate) fn release_step(&mut self, budget: usize) -> Result<bool, VolumeError> {
        self.usable()?;
        let until = std::time::Instant::now() + self.release_step_time;
        for done in 0..budget {
            if done > 0 && std::time::Instant::now() >= until {
                break;
            }
            let Some((node, count)) = self.first_deferred()? else {
                return Ok(true);
            };
            let result = (|| {
                let info = deferred_info()?;
                let released = btree::release_node_part(
                    &mut self.tm,
                    &mapping_info()?,
                    node,
                    RELEASE_ENTRIES,
                    Some(until),
                )?;
                let root = self.tm.root(DEFERRED);
                let root = if count > 1 {
                    btree::insert(&mut self.tm, &info, root, node, &(count - 1).to_le_bytes())?
                } else {
                    btree::remove(&mut self.tm, &info, root, node)?.0
                };
                self.tm.set_root(DEFERRED, root)?;
                match released {
                    Released::Node(children) => {
                        for child in children {
                            self.defer(child, 1)?;
                        }
                    }
                    // The reference moves to the copy of what is left.
                    Released::Part(rest) => self.defer(rest, 1)?,
                }
                Ok(())
            })();
            self.changing(result)?;
        }
        // Releasing a large map dirties much metadata: commit it (outside
        // the lock, by the caller) before the transaction, and the first
        // half of its commit under the lock, grow without bound.
        self.after_change()?;
        Ok(!self.has_deferred()?)
    }

    /// Takes in media that grew: not supported by this format yet.
    pub(crate) fn grow(&mut self) -> Result<u64, VolumeError> {
        self.usable()?;
        let total = self.data_start + self.tm.data_blocks();
        if self.media.size() / BS > total {
            return Err(VolumeError::InvalidArgument(
                "growing a paged pool is not supported yet".into(),
            ));
        }
        Ok(total)
    }

    /// Unmaps `count` blocks of `vol` from `lba`.
    pub(crate) fn discard(&mut self, vol: u32, lba: u64, count: u64) -> Result<(), VolumeError> {
        self.usable()?;
        let v = self.volume(vol)?;
        if v.kind == VolumeKind::Snapshot {
            return Err(VolumeError::ReadOnly);
        }
        let end = lba
            .checked_add(count)
            .filter(|&e| e <= v.size_blocks)
            .ok_or_else(|| common::out_of_range(lba, count.saturating_mul(BS), v.size_blocks))?;
        self.ensure_room_to_free()?;
        let result = self.unmap_range(vol, lba, end);
        self.changing(result)?;
        self.after_change()
    }

    pub(crate) fn volume_infos(&self) -> Vec<VolumeInfo> {
        self.volumes
            .values()
            .map(|v| VolumeInfo {
                name: v.name.clone(),
                kind: v.kind,
                size_bytes: v.size_blocks * BS,
                parent: v
                    .parent
                    .and_then(|p| self.volumes.get(&p))
                    .map(|p| p.name.clone()),
                services: v.services,
                encrypted: self.domains.get(&v.domain).is_some_and(|d| d.encrypted),
            })
            .collect()
    }

    /// Recounts every reference (see [`check`]).
    pub(crate) fn check(&mut self) -> Result<(), VolumeError> {
        check::check(self)
    }
}

fn deferred_info() -> Result<TreeInfo, MetaError> {
    TreeInfo::new(8, ValueKind::Plain)
}

fn le(v: &[u8]) -> u64 {
    v.get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

#[cfg(test)]
mod tests;
