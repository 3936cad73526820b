//! Thin volumes, snapshots and clones with zero-detect, dedup, compression
//! and AES-XTS encryption, in a pool over one [`Media`].
//!
//! A [`Pool`] owns a media (an SSD image, or a protection layout built from
//! several) and stores in it a superblock pair, a checkpoint of all
//! metadata, and data. Volumes are thin: a block takes space when first
//! written and gives it back on discard. Snapshots and clones share blocks
//! with their origin through reference counts, and so do deduplicated
//! blocks. The per-block write path is the stack the engine is built
//! around: mapping → zero-detect → dedup → compression → encryption →
//! media. `Documentation/engine-volumes.rst` describes the format and the
//! crash-consistency argument.
//!
//! ```
//! use std::sync::Arc;
//! use dpu_engine::media::MemMedia;
//! use dpu_engine::volume::{Compression, Pool, Services, VolumeKey, VolumeOptions};
//!
//! let pool = Pool::format(Arc::new(MemMedia::new(4 << 20)))?;
//! let key = VolumeKey::from_slice(&[[1u8; 32], [2u8; 32]].concat())?;
//! let services = Services { zero_detect: true, dedup: true, compression: Compression::Lz4 };
//! pool.create_volume("db", &VolumeOptions { size_bytes: 64 << 20, services, key: Some(&key) })?;
//! let db = pool.open_volume("db", Some(&key))?;
//! db.write_blocks(0, &[7u8; 4096])?;
//! db.flush()?;
//! pool.snapshot("db", "db@1")?;
//! let mut block = [0u8; 4096];
//! pool.open_volume("db@1", Some(&key))?.read_blocks(0, &mut block)?;
//! assert_eq!(block, [7u8; 4096]);
//! # Ok::<(), dpu_engine::volume::VolumeError>(())
//! ```

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::media::{check_range, Media, MediaError, MediaResult};

mod alloc;
mod common;
mod cputime;
mod crypt;
mod engine;
mod format;
mod paged;
mod reduce;
mod state;

pub use crypt::{VolumeKey, KEY_LEN};
pub use format::{Services, VolumeKind};
pub use paged::{PagedOptions, MIN_CACHE_BYTES};
pub use reduce::Compression;

use crypt::Cipher;
use engine::Engine;
use paged::{CommitStep, Dedup, PagedState, ReadStep, WriteStep};
use state::{PoolState, Prepared};

/// The pool's block size: the unit of mapping, dedup and allocation.
pub const BLOCK_SIZE: usize = 4096;

const BS: u64 = BLOCK_SIZE as u64;

/// Why a pool or volume operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeError {
    /// The media below failed.
    Media(MediaError),
    /// The pool is full; reads still work, and freeing space (discard,
    /// delete, then flush) or growing the pool lets writes resume.
    NoSpace,
    /// No such volume.
    NotFound(String),
    /// A volume of that name exists.
    Exists(String),
    /// The volume is a snapshot.
    ReadOnly,
    /// The volume is encrypted and no key was given.
    KeyRequired,
    /// The key does not match the volume's key check value.
    WrongKey,
    /// A key was given for a volume that is not encrypted.
    NotEncrypted,
    /// The key is unusable.
    InvalidKey(&'static str),
    /// A bad argument (name, size, volume kinds).
    InvalidArgument(String),
    /// The media holds no pool.
    NotFormatted,
    /// The pool's metadata is inconsistent.
    Corrupt(String),
}

impl fmt::Display for VolumeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VolumeError::Media(e) => write!(f, "media: {e}"),
            VolumeError::NoSpace => f.write_str("no space left in the pool"),
            VolumeError::NotFound(name) => write!(f, "no volume {name}"),
            VolumeError::Exists(name) => write!(f, "volume {name} exists"),
            VolumeError::ReadOnly => f.write_str("snapshots are read-only"),
            VolumeError::KeyRequired => f.write_str("volume is encrypted: a key is required"),
            VolumeError::WrongKey => {
                f.write_str("wrong key: it does not match the volume's key check value")
            }
            VolumeError::NotEncrypted => f.write_str("volume is not encrypted but a key was given"),
            VolumeError::InvalidKey(why) => write!(f, "invalid key: {why}"),
            VolumeError::InvalidArgument(why) => f.write_str(why),
            VolumeError::NotFormatted => f.write_str("no pool on this media"),
            VolumeError::Corrupt(why) => write!(f, "pool metadata corrupt: {why}"),
        }
    }
}

impl std::error::Error for VolumeError {}

impl From<MediaError> for VolumeError {
    fn from(e: MediaError) -> Self {
        match e {
            MediaError::NoSpace => VolumeError::NoSpace,
            e => VolumeError::Media(e),
        }
    }
}

impl From<VolumeError> for MediaError {
    fn from(e: VolumeError) -> Self {
        match e {
            VolumeError::Media(e) => e,
            VolumeError::NoSpace => MediaError::NoSpace,
            e => MediaError::Unrecoverable(e.to_string()),
        }
    }
}

pub type VolumeResult<T> = Result<T, VolumeError>;

/// Lookups a block read makes at most when the records it finds fail
/// their check (see [`Volume::read_blocks`]).
const READ_ATTEMPTS: u32 = 4;

/// Deferred nodes the background releaser frees per lock hold.
const RELEASE_STEP: usize = 16;
/// How long the releaser sleeps when nothing is deferred.
const RELEASE_IDLE: std::time::Duration = std::time::Duration::from_millis(50);

/// How to create a volume.
#[derive(Debug, Default)]
pub struct VolumeOptions<'a> {
    /// Logical size, a multiple of [`BLOCK_SIZE`]; may exceed the pool
    /// (thin provisioning over-commits).
    pub size_bytes: u64,
    pub services: Services,
    /// Encrypts the volume with this key (AES-XTS-256). Snapshots and
    /// clones of it use the same key.
    pub key: Option<&'a VolumeKey>,
}

/// Pool-wide space accounting.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolStats {
    pub block_size: u64,
    pub total_blocks: u64,
    pub free_blocks: u64,
    /// Blocks holding data (raw or packed), including the packed block
    /// being filled.
    pub data_blocks: u64,
    /// Blocks holding compressed slots.
    pub packed_blocks: u64,
    /// Blocks of the committed metadata checkpoint.
    pub metadata_blocks: u64,
    /// Blocks freed since the last commit, reusable after the next flush.
    pub pending_free_blocks: u64,
    /// Mapped logical bytes of all volumes, snapshots and clones.
    pub logical_bytes: u64,
    /// Bytes the stored records take (compressed sizes rounded to units).
    pub stored_bytes: u64,
    /// Bytes of the data blocks.
    pub physical_bytes: u64,
    /// `logical_bytes / physical_bytes`.
    pub reduction_ratio: f64,
    /// Generation of the last committed checkpoint.
    pub generation: u64,
    /// Unreferenced records dropped when the pool was opened.
    pub reclaimed_at_open: u64,
    /// Snapshots made durable by a journal record rather than a commit
    /// since the pool was opened (format 2; format 1 journals them all).
    pub journaled_snapshots: u64,
}

/// Per-volume space accounting.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeStats {
    pub size_bytes: u64,
    /// Logical bytes written and not discarded (zero-detected included).
    pub mapped_bytes: u64,
    /// Logical bytes that were zero-detected and take no space.
    pub zero_bytes: u64,
    /// One block per distinct record this volume maps: what it would
    /// store without compression. `mapped_bytes - zero_bytes -
    /// unique_bytes` is what dedup saves it, `unique_bytes -
    /// allocated_bytes` what compression saves it.
    pub unique_bytes: u64,
    /// Stored bytes of the records this volume maps (each counted once).
    pub allocated_bytes: u64,
    /// Part of `allocated_bytes` no other volume maps.
    pub exclusive_bytes: u64,
    /// Part of `allocated_bytes` shared with snapshots, clones or other
    /// volumes of the dedup domain.
    pub shared_bytes: u64,
    /// `mapped_bytes / allocated_bytes`.
    pub reduction_ratio: f64,
}

/// A volume as listed by [`Pool::volumes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    pub name: String,
    pub kind: VolumeKind,
    pub size_bytes: u64,
    /// The volume it was snapshotted or cloned from, if that still exists.
    pub parent: Option<String>,
    pub services: Services,
    /// Opening it needs its key.
    pub encrypted: bool,
}

/// How a pool keeps its metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolFormat {
    /// Format 1: every map, reference count and the dedup index in
    /// memory, checkpointed whole (with a journal between checkpoints).
    /// Kept for pools made before format 2; memory grows with the data.
    InMemory,
    /// Format 2: metadata in copy-on-write B-trees on the media, paged
    /// through a bounded cache; O(1) snapshots.
    Paged,
}

/// What the metadata cache of a paged pool holds and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheReport {
    pub capacity_blocks: usize,
    pub resident_blocks: usize,
    pub peak_resident_blocks: usize,
    /// Metadata blocks read from and written to the media so far.
    pub blocks_read: u64,
    pub blocks_written: u64,
}

/// How long the pool lock was held: the longest hold and the count, since
/// the pool was opened or [`Pool::reset_lock_stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LockStats {
    pub holds: u64,
    pub max_hold_ns: u64,
    /// The most CPU time the holding thread used in one hold: what the
    /// work under the lock costs, without the time the scheduler kept the
    /// thread off a core while it held the lock (which `max_hold_ns`, wall
    /// time, includes).
    pub max_hold_cpu_ns: u64,
    /// Holds of [`LONG_HOLD_NS`] or more.
    pub long_holds: u64,
}

/// What [`LockStats::long_holds`] counts: holds of 50 ms or more.
pub const LONG_HOLD_NS: u64 = 50_000_000;

/// The pool lock's holds taken at one place in the source (the public
/// operation, or the step of one, that took it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LockSite {
    /// `file:line` of the code that took the lock.
    pub site: String,
    pub holds: u64,
    pub max_hold_ns: u64,
    /// The most CPU time of one hold (see [`LockStats::max_hold_cpu_ns`]).
    pub max_hold_cpu_ns: u64,
    /// Holds of [`LONG_HOLD_NS`] or more.
    pub long_holds: u64,
}

type Site = &'static std::panic::Location<'static>;

#[derive(Default)]
struct LockHolds {
    holds: AtomicU64,
    max_hold_ns: AtomicU64,
    max_hold_cpu_ns: AtomicU64,
    long_holds: AtomicU64,
    /// Per site: holds, longest, longest in CPU time, long holds.
    sites: Mutex<std::collections::HashMap<Site, [u64; 4]>>,
}

impl LockHolds {
    /// A hold that began at `since` (and `cpu_since` on the thread's CPU
    /// clock) ends.
    fn record(&self, since: Instant, cpu_since: u64, site: Site) {
        let ns = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let cpu = cputime::thread_cpu_ns().saturating_sub(cpu_since);
        self.holds.fetch_add(1, Ordering::Relaxed);
        self.max_hold_ns.fetch_max(ns, Ordering::Relaxed);
        self.max_hold_cpu_ns.fetch_max(cpu, Ordering::Relaxed);
        let long = u64::from(ns >= LONG_HOLD_NS);
        self.long_holds.fetch_add(long, Ordering::Relaxed);
        let mut sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
        let entry = sites.entry(site).or_default();
        entry[0] += 1;
        entry[1] = entry[1].max(ns);
        entry[2] = entry[2].max(cpu);
        entry[3] += long;
    }
}

thread_local! {
    /// How many pool locks this thread holds (a pool can sit on a volume
    /// of another), for the tests that check that no media write or flush
    /// happens under one.
    static HOLDING: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Whether the calling thread holds a pool lock now.
#[cfg(test)]
pub(crate) fn pool_lock_held() -> bool {
    HOLDING.with(|h| h.get() > 0)
}

/// Counts the thread as holding a pool lock while it lives.
struct HoldMark;

impl HoldMark {
    fn new() -> HoldMark {
        HOLDING.with(|h| h.set(h.get() + 1));
        HoldMark
    }
}

impl Drop for HoldMark {
    fn drop(&mut self) {
        HOLDING.with(|h| h.set(h.get().saturating_sub(1)));
    }
}

/// The pool lock, held: records how long, and where it was taken, when
/// released.
struct Held<'a> {
    guard: MutexGuard<'a, Engine>,
    since: Instant,
    cpu_since: u64,
    site: Site,
    holds: &'a LockHolds,
    _mark: HoldMark,
}

impl Deref for Held<'_> {
    type Target = Engine;

    fn deref(&self) -> &Engine {
        &self.guard
    }
}

impl DerefMut for Held<'_> {
    fn deref_mut(&mut self) -> &mut Engine {
        &mut self.guard
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.holds.record(self.since, self.cpu_since, self.site);
    }
}

/// A thin pool over one media. Cloning the handle shares the pool.
#[derive(Clone)]
pub struct Pool {
    state: Arc<Mutex<Engine>>,
    holds: Arc<LockHolds>,
}

impl Pool {
    /// Formats `media` as an empty pool of format 1 ([`PoolFormat::InMemory`]),
    /// destroying what it held.
    pub fn format(media: Arc<dyn Media>) -> VolumeResult<Pool> {
        Ok(Pool::wrap(Engine::InMemory(Box::new(PoolState::format(
            media,
        )?))))
    }

    /// Formats `media` as an empty paged pool ([`PoolFormat::Paged`]).
    pub fn format_paged(media: Arc<dyn Media>, options: &PagedOptions) -> VolumeResult<Pool> {
        Ok(Pool::wrap(Engine::Paged(Box::new(PagedState::format(
            media, options,
        )?))))
    }

    /// Opens the pool on `media` in its last committed state, whichever
    /// its format; a paged pool gets a cache of the default size. Space
    /// that was allocated but never committed (a crash) is free again.
    pub fn open(media: Arc<dyn Media>) -> VolumeResult<Pool> {
        Pool::open_with(media, &PagedOptions::default())
    }

    /// As [`Pool::open`], with `options` for a paged pool.
    pub fn open_with(media: Arc<dyn Media>, options: &PagedOptions) -> VolumeResult<Pool> {
        Ok(Pool::wrap(Engine::open(media, options)?))
    }

    fn wrap(state: Engine) -> Pool {
        Pool {
            state: Arc::new(Mutex::new(state)),
            holds: Arc::new(LockHolds::default()),
        }
    }

    /// How long the pool lock was held (the bench's `max_lock_ms`).
    pub fn lock_stats(&self) -> LockStats {
        LockStats {
            holds: self.holds.holds.load(Ordering::Relaxed),
            max_hold_ns: self.holds.max_hold_ns.load(Ordering::Relaxed),
            max_hold_cpu_ns: self.holds.max_hold_cpu_ns.load(Ordering::Relaxed),
            long_holds: self.holds.long_holds.load(Ordering::Relaxed),
        }
    }

    pub fn reset_lock_stats(&self) {
        self.holds.holds.store(0, Ordering::Relaxed);
        self.holds.max_hold_ns.store(0, Ordering::Relaxed);
        self.holds.max_hold_cpu_ns.store(0, Ordering::Relaxed);
        self.holds.long_holds.store(0, Ordering::Relaxed);
        self.holds
            .sites
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Where the pool lock was taken and how long it was held there, the
    /// longest holds first (what to move out of the lock next).
    pub fn lock_sites(&self) -> Vec<LockSite> {
        let sites = self.holds.sites.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<LockSite> = sites
            .iter()
            .map(
                |(site, &[holds, max_hold_ns, max_hold_cpu_ns, long_holds])| LockSite {
                    site: format!("{}:{}", site.file(), site.line()),
                    holds,
                    max_hold_ns,
                    max_hold_cpu_ns,
                    long_holds,
                },
            )
            .collect();
        out.sort_by_key(|s| std::cmp::Reverse(s.max_hold_ns));
        out
    }

    /// The pool's metadata format.
    pub fn format_kind(&self) -> VolumeResult<PoolFormat> {
        Ok(match &*self.lock()? {
            Engine::InMemory(_) => PoolFormat::InMemory,
            Engine::Paged(_) => PoolFormat::Paged,
        })
    }

    /// The metadata cache of a paged pool (`None` for format 1).
    pub fn cache_report(&self) -> VolumeResult<Option<CacheReport>> {
        Ok(match &*self.lock()? {
            Engine::InMemory(_) => None,
            Engine::Paged(p) => Some(p.cache_report()),
        })
    }

    /// Frees up to `budget` nodes of deleted volumes' metadata (and the
    /// data only they held); true when nothing is left. The space is
    /// reusable after the next flush. Each call holds the pool lock for
    /// its budget only: a background thread calls it in a loop
    /// ([`Pool::spawn_releaser`]), and flushes run a bounded step too.
    pub fn release_step(&self, budget: usize) -> VolumeResult<bool> {
        self.run(|engine| match engine {
            Engine::InMemory(_) => Ok(true),
            Engine::Paged(p) => p.release_step(budget),
        })
    }

    /// Ends all work on the pool because its media is about to be reused:
    /// every later operation fails with [`MediaError::Gone`] and the
    /// background releaser stops, so nothing writes to the media after
    /// this returns. Unflushed writes are dropped.
    pub fn close(&self) {
        if let Ok(mut engine) = self.lock() {
            if let Engine::Paged(p) = &mut *engine {
                p.close();
            }
        }
    }

    /// Starts a thread that frees deleted volumes' space in bounded steps
    /// while there is some to free, and ends when the last handle of the
    /// pool is dropped.
    pub fn spawn_releaser(&self) -> std::thread::JoinHandle<()> {
        let weak = Arc::downgrade(&self.state);
        let holds = self.holds.clone();
        std::thread::spawn(move || loop {
            let Some(state) = weak.upgrade() else {
                return;
            };
            let Ok(mut engine) = state.lock() else {
                return;
            };
            let mark = HoldMark::new();
            let since = Instant::now();
            let cpu_since = cputime::thread_cpu_ns();
            let pending = match &mut *engine {
                Engine::InMemory(_) => return,
                Engine::Paged(p) => match p.usable().and_then(|()| p.has_deferred()) {
                    Ok(true) => p.release_step(RELEASE_STEP).map(|done| !done),
                    Ok(false) => Ok(false),
                    Err(e) => Err(e),
                },
            };
            let needed = engine.take_commit_request();
            drop(engine);
            drop(mark);
            holds.record(since, cpu_since, std::panic::Location::caller());
            // A step that grew the transaction large commits it, written
            // without the lock as every operation's commit is.
            let committed = match needed {
                Some(generation) => Pool {
                    state: state.clone(),
                    holds: holds.clone(),
                }
                .commit_through(generation),
                None => Ok(()),
            };
            drop(state);
            match pending.and_then(|more| committed.map(|()| more)) {
                Ok(true) => std::thread::yield_now(),
                Ok(false) => std::thread::sleep(RELEASE_IDLE),
                // A failed pool stays failed until reopened: nothing to do.
                Err(_) => return,
            }
        })
    }

    /// Runs `op` under the pool lock, then, if it asked for a commit,
    /// makes that commit durable without holding the lock across its I/O.
    /// A journaled snapshot instead needs its journal record durable, and
    /// a flush with nothing to commit a media flush, both also written
    /// without the lock.
    #[track_caller]
    fn run<T>(&self, op: impl FnOnce(&mut Engine) -> VolumeResult<T>) -> VolumeResult<T> {
        let (value, needed, journal, media_flush) = {
            let mut engine = self.lock()?;
            let value = op(&mut engine);
            (
                value,
                engine.take_commit_request(),
                engine.take_journal_request(),
                engine.take_media_flush(),
            )
        };
        let value = value?;
        if let Some((journal, number)) = journal {
            if let Err(e) = journal.make_durable(number) {
                self.lock()?.journal_failed();
                return Err(e);
            }
        }
        if let Some(media) = media_flush {
            if let Err(e) = media.flush() {
                self.lock()?.media_flush_failed();
                return Err(e.into());
            }
        }
        if let Some(generation) = needed {
            self.commit_through(generation)?;
        }
        Ok(value)
    }

    /// Makes generation `needed` durable: the lock is held to prepare a
    /// commit and to record its outcome, never across the commit's writes
    /// and flushes, nor while waiting for another thread's commit.
    fn commit_through(&self, needed: u64) -> VolumeResult<()> {
        loop {
            let step = self.lock()?.commit_step(needed)?;
            match step {
                CommitStep::Done => return Ok(()),
                // Others may take the lock before the next step.
                CommitStep::Again => std::thread::yield_now(),
                CommitStep::Wait(done) => {
                    done.wait()?;
                }
                CommitStep::Write(write) => {
                    // The next step records the outcome under the lock: a
                    // failure fails the pool there and is returned.
                    let written = write.prepared.write().map_err(VolumeError::from);
                    write.done.set(written);
                }
            }
        }
    }

    #[track_caller]
    fn lock(&self) -> VolumeResult<Held<'_>> {
        let site = std::panic::Location::caller();
        // A panic while holding the lock leaves the in-memory state
        // suspect; the committed state on media is still fine, so the pool
        // refuses further work until it is reopened.
        let guard = self.state.lock().map_err(|_| {
            VolumeError::Media(MediaError::Unrecoverable("pool state poisoned".into()))
        })?;
        Ok(Held {
            guard,
            since: Instant::now(),
            cpu_since: cputime::thread_cpu_ns(),
            site,
            holds: &self.holds,
            _mark: HoldMark::new(),
        })
    }

    /// Creates a thin volume; durable when this returns.
    pub fn create_volume(&self, name: &str, options: &VolumeOptions<'_>) -> VolumeResult<()> {
        self.run(|e| e.create_volume(name, options.size_bytes, options.services, options.key))
    }

    /// Opens a volume (or snapshot) for I/O. An encrypted volume needs its
    /// key and refuses any other with [`VolumeError::WrongKey`].
    pub fn open_volume(&self, name: &str, key: Option<&VolumeKey>) -> VolumeResult<Volume> {
        let opened = self.lock()?.open_volume(name, key)?;
        Ok(Volume {
            pool: self.clone(),
            name: name.to_string(),
            id: opened.id,
            kind: opened.kind,
            services: opened.services,
            cipher: opened.cipher,
        })
    }

    /// Takes a read-only snapshot `name` of `origin` (instant: blocks are
    /// shared, not copied); durable when this returns.
    pub fn snapshot(&self, origin: &str, name: &str) -> VolumeResult<()> {
        self.run(|e| e.snapshot(origin, name))
    }

    /// Creates writable clone `name` of `snapshot`; durable when this
    /// returns.
    pub fn clone_snapshot(&self, snapshot: &str, name: &str) -> VolumeResult<()> {
        self.run(|e| e.clone_snapshot(snapshot, name))
    }

    /// Reverts writable `volume` to the content of `snapshot`; durable when
    /// this returns. Open handles of `volume` see the reverted content.
    pub fn revert(&self, volume: &str, snapshot: &str) -> VolumeResult<()> {
        self.run(|e| e.revert(volume, snapshot))
    }

    /// Changes writable `volume`'s size; blocks past a smaller end are
    /// unmapped. Durable when this returns.
    pub fn resize(&self, volume: &str, size_bytes: u64) -> VolumeResult<()> {
        self.run(|e| e.resize(volume, size_bytes))
    }

    /// Deletes a volume, snapshot or clone, in any order: blocks that others
    /// still map are kept. Durable when this returns.
    pub fn delete(&self, name: &str) -> VolumeResult<()> {
        self.run(|e| e.delete(name))
    }

    /// Takes in space the media gained (a grown file, a protection layout
    /// with a new member); returns the pool's size in blocks.
    pub fn grow(&self) -> VolumeResult<u64> {
        self.lock()?.grow()
    }

    /// Makes every completed write of every volume durable.
    pub fn flush(&self) -> VolumeResult<()> {
        self.run(|e| e.flush())
    }

    /// Turns the pool's volatile write cache on (the default: writes are
    /// durable after the next flush) or off (every write and discard is
    /// durable before it returns, at the price of a metadata commit
    /// each). Turning it off first makes everything written so far durable.
    pub fn set_write_cache(&self, enabled: bool) -> VolumeResult<()> {
        self.run(|state| {
            if !enabled {
                state.flush()?;
            }
            state.set_write_cache(enabled);
            Ok(())
        })
    }

    /// Whether the volatile write cache is on.
    pub fn write_cache(&self) -> VolumeResult<bool> {
        Ok(self.lock()?.write_cache())
    }

    /// Mapped bytes of volume `name`, without the walk
    /// [`Pool::volume_stats`] may need.
    pub fn mapped_bytes(&self, name: &str) -> VolumeResult<u64> {
        self.lock()?.mapped_bytes(name)
    }

    pub fn volumes(&self) -> VolumeResult<Vec<VolumeInfo>> {
        Ok(self.lock()?.volume_infos())
    }

    pub fn stats(&self) -> VolumeResult<PoolStats> {
        Ok(self.lock()?.stats())
    }

    pub fn volume_stats(&self, name: &str) -> VolumeResult<VolumeStats> {
        self.lock()?.volume_stats(name)
    }

    /// Checks the in-memory metadata's invariants: reference counts, block
    /// usage, dedup index, and that every used block is accounted for.
    pub fn check(&self) -> VolumeResult<()> {
        self.lock()?.check()
    }
}

/// An open volume, snapshot or clone. Dropping it wipes its key schedule.
pub struct Volume {
    pool: Pool,
    name: String,
    id: u32,
    kind: VolumeKind,
    services: Services,
    cipher: Option<Arc<Cipher>>,
}

impl fmt::Debug for Volume {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Volume")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("services", &self.services)
            .field("encrypted", &self.cipher.is_some())
            .finish()
    }
}

impl Volume {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> VolumeKind {
        self.kind
    }

    /// Current size in blocks (0 once the volume is deleted).
    pub fn size_blocks(&self) -> u64 {
        self.pool
            .lock()
            .and_then(|state| state.size_blocks(self.id))
            .unwrap_or(0)
    }

    /// Writes whole blocks from block `lba`. A full pool fails with
    /// [`VolumeError::NoSpace`]; blocks before the failing one are written.
    pub fn write_blocks(&self, lba: u64, data: &[u8]) -> VolumeResult<()> {
        if !data.len().is_multiple_of(BLOCK_SIZE) {
            return Err(VolumeError::InvalidArgument(
                "write is not whole blocks".into(),
            ));
        }
        // Zero-detect, hashing and compression run before the pool lock is
        // taken, so that writers to different volumes (or queues) overlap.
        let cipher = self.cipher.as_deref();
        let prepared: Vec<Prepared<'_>> = data
            .chunks_exact(BLOCK_SIZE)
            .map(|block| Prepared::new(block, self.services, cipher))
            .collect();
        // No media I/O under the pool lock: a new block's bytes are
        // written, and a dedup candidate's read back and compared, between
        // two holds; only the lookups, the allocation and the mapping hold
        // it.
        for (i, block) in prepared.iter().enumerate() {
            let at = lba.saturating_add(i as u64);
            let mut dedup = Dedup::Look;
            loop {
                let step = self
                    .pool
                    .run(|state| state.write_block_begin(self.id, at, block, cipher, dedup))?;
                match step {
                    WriteStep::Done => break,
                    WriteStep::Place(mut placement) => {
                        let written = placement.write();
                        self.pool
                            .run(|state| state.write_block_end(self.id, at, placement, written))?;
                        break;
                    }
                    WriteStep::Verify(check) => {
                        dedup = if check.matches(block.data, cipher) {
                            Dedup::Matched(check)
                        } else {
                            Dedup::Skip
                        };
                    }
                }
            }
        }
        self.pool.run(|state| state.complete_write())
    }

    /// Reads whole blocks from block `lba`; unwritten blocks read as zeros.
    /// Each block is looked up under the pool lock and read without it.
    pub fn read_blocks(&self, lba: u64, buf: &mut [u8]) -> VolumeResult<()> {
        if !buf.len().is_multiple_of(BLOCK_SIZE) {
            return Err(VolumeError::InvalidArgument(
                "read is not whole blocks".into(),
            ));
        }
        let cipher = self.cipher.as_deref();
        for (i, block) in buf.chunks_exact_mut(BLOCK_SIZE).enumerate() {
            let at = lba.saturating_add(i as u64);
            let mut last_failed: Option<u64> = None;
            for attempt in 1.. {
                let step = self.pool.lock()?.read_begin(self.id, at, block, cipher)?;
                let ReadStep::Record(record) = step else {
                    break;
                };
                match record.read(block, cipher) {
                    Ok(()) => break,
                    // The record may have died and its block been reused
                    // between the lookup and the read (an overwrite and a
                    // commit meanwhile): look again. The same record
                    // failing twice is a real error, and so is a block
                    // that keeps changing under a failing read.
                    Err(e) if last_failed == Some(record.rid()) || attempt >= READ_ATTEMPTS => {
                        return Err(e)
                    }
                    Err(_) => last_failed = Some(record.rid()),
                }
            }
        }
        Ok(())
    }

    /// Unmaps `count` blocks from `lba`: they read as zeros and their space
    /// returns to the pool with the next flush.
    pub fn discard_blocks(&self, lba: u64, count: u64) -> VolumeResult<()> {
        self.pool.run(|state| {
            state.discard(self.id, lba, count)?;
            state.complete_write()
        })
    }

    /// Makes completed writes durable (commits the pool).
    pub fn flush(&self) -> VolumeResult<()> {
        self.pool.flush()
    }

    pub fn stats(&self) -> VolumeResult<VolumeStats> {
        self.pool.volume_stats(&self.name)
    }
}

/// A volume is itself a [`Media`], so anything built over media can be
/// built over a volume. Partial blocks are read-modify-written; discard
/// unmaps the whole blocks inside the range and leaves partial ends alone.
impl Media for Volume {
    fn size(&self) -> u64 {
        self.size_blocks() * BS
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> MediaResult<()> {
        check_range(offset, buf.len() as u64, self.size())?;
        let mut block = vec![0u8; BLOCK_SIZE];
        let mut done = 0;
        while done < buf.len() {
            let pos = offset + done as u64;
            let within = (pos % BS) as usize;
            let n = (BLOCK_SIZE - within).min(buf.len() - done);
            self.read_blocks(pos / BS, &mut block)?;
            buf[done..done + n].copy_from_slice(&block[within..within + n]);
            done += n;
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> MediaResult<()> {
        check_range(offset, data.len() as u64, self.size())?;
        let mut block = vec![0u8; BLOCK_SIZE];
        let mut done = 0;
        while done < data.len() {
            let pos = offset + done as u64;
            let within = (pos % BS) as usize;
            let n = (BLOCK_SIZE - within).min(data.len() - done);
            if n == BLOCK_SIZE {
                self.write_blocks(pos / BS, &data[done..done + n])?;
            } else {
                self.read_blocks(pos / BS, &mut block)?;
                block[within..within + n].copy_from_slice(&data[done..done + n]);
                self.write_blocks(pos / BS, &block)?;
            }
            done += n;
        }
        Ok(())
    }

    fn flush(&self) -> MediaResult<()> {
        Ok(Volume::flush(self)?)
    }

    fn discard(&self, offset: u64, len: u64) -> MediaResult<()> {
        check_range(offset, len, self.size())?;
        let first = offset.div_ceil(BS);
        let end = (offset + len) / BS;
        if end > first {
            self.discard_blocks(first, end - first)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
