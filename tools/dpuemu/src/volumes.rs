//! Volumes of the accelerator: the vendor volume commands over the data
//! services engine (`dpu-engine`).
//!
//! A *volume family* is a volume created by Volume Create together with its
//! snapshots and clones. Each family has one engine [`Pool`] on exactly the
//! SSDs of its `ssd_mask`, built as
//!
//! ```text
//! SSD image → SsdMedia → FaultyMedia (fault injection) → SliceMedia (below the label)
//!   → ProtectedMedia (RAID0/RAID10/RAID6/erasure) | ConcatMedia (SINGLE, several SSDs)
//!   → Pool → Volume → VolumeNamespace (an active namespace)
//! ```
//!
//! Every member SSD carries a family label (`label.rs`) with the family
//! UUID, its member index and a small catalog, so a restarted dpuemu finds
//! the families again. [`VolumeManager`] holds the families; one mutex
//! serialises the management commands (which arrive on the admin queue,
//! one at a time anyway), while I/O goes straight from the worker threads
//! to the volumes' namespaces.
//!
//! Lock order: the manager's state → a pool (engine) and the controller's
//! namespace table (through [`NamespaceTable`]). I/O never takes the
//! manager's lock.

mod label;
pub mod maintenance;
mod media;
mod members;
mod namespace;

use std::collections::BTreeSet;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use dpu_engine::fault::{FaultControl, FaultOps, FaultyMedia};
use dpu_engine::media::{Media, MediaError};
use dpu_engine::protection::{
    ArrayState, Layout, LogRaid, LogRaidConfig, ProtectedMedia, ProtectionConfig,
};
use dpu_engine::volume::{
    Compression, PagedOptions, Pool, Services, VolumeError, VolumeInfo, VolumeKey, VolumeKind,
    VolumeOptions, BLOCK_SIZE,
};
use log::{error, info, warn};
use nvme_shim::status::Status;
use nvme_shim::vendor::{
    self, compression, fault, layout, service, status as vs, vendor_status, FaultInjection,
    ObjectName, ServiceSettings, SnapshotList, Statistics, VolumeCreate, VolumeListEntry,
};
use nvme_shim::wire::{c_string_field, Le64, Wire};

use crate::controller::SsdHandle;
use crate::namespace::Namespace;
use crate::ownership::SsdOwnership;

use label::{CatalogEntry, FamilyLabel, ENTRY_CLONE, ENTRY_THIN, LABEL_AREA};
use media::{ConcatMedia, SliceMedia, SsdMedia};
pub use namespace::{VolumeNamespace, VOLUME_LBA_SHIFT};

/// Highest NSID the accelerator hands out (Identify Controller NN).
pub const MAX_NSID: u32 = 1024;
/// Stripe unit when Volume Create asks for the default.
pub const DEFAULT_STRIPE: u32 = 64 << 10;
/// Writable volumes (volumes and clones) per family: what one VolumeList
/// page can show. (Snapshot List pages; see MAX_SNAPSHOTS_PER_VOLUME.)
const MAX_PER_LIST: usize = 63;
const BS: u64 = BLOCK_SIZE as u64;

/// The controller's table of active namespaces, as the manager changes it.
pub trait NamespaceTable {
    /// Makes `backend` namespace `nsid` (Identify, I/O).
    fn activate(&self, nsid: u32, backend: Arc<dyn Namespace>);
    /// Removes namespace `nsid`; its I/O fails with Invalid Namespace.
    fn deactivate(&self, nsid: u32);
}

fn status(code: u8) -> Status {
    vendor_status(code)
}

/// How an engine failure of a management operation reaches the host.
fn engine_status(e: &VolumeError) -> Status {
    match e {
        VolumeError::NoSpace => status(vs::NO_SPACE),
        VolumeError::NotFound(_) => status(vs::VOLUME_NOT_FOUND),
        VolumeError::Exists(_) => status(vs::VOLUME_EXISTS),
        VolumeError::KeyRequired => status(vs::KEY_REQUIRED),
        VolumeError::WrongKey => status(vs::KEY_MISMATCH),
        VolumeError::ReadOnly
        | VolumeError::NotEncrypted
        | VolumeError::InvalidKey(_)
        | VolumeError::InvalidArgument(_) => status(vs::INVALID_PAYLOAD),
        VolumeError::Media(_) | VolumeError::NotFormatted | VolumeError::Corrupt(_) => {
            Status::WRITE_FAULT
        }
    }
}

fn log_engine(what: &str, e: &VolumeError) -> Status {
    warn!("accel: {what}: {e}");
    engine_status(e)
}

/// A volume or snapshot name: 1 to 31 bytes of `[A-Za-z0-9._-]`, NUL
/// terminated inside the 32-byte field.
fn parse_name(field: &[u8; 32]) -> Result<String, Status> {
    let invalid = status(vs::INVALID_PAYLOAD);
    let len = field.iter().position(|&b| b == 0).ok_or(invalid)?;
    let name = &field[..len];
    let ok = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
    if name.is_empty() || !name.iter().all(ok) {
        return Err(invalid);
    }
    Ok(String::from_utf8_lossy(name).into_owned())
}

/// A random 16-byte family UUID (the standard library's per-process random
/// hash keys, mixed with the clock; uniqueness is all it needs).
fn new_uuid() -> [u8; 16] {
    let mut uuid = [0u8; 16];
    for (i, half) in uuid.chunks_exact_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        h.write_u128(nanos);
        h.write_usize(i);
        h.write_u32(std::process::id());
        half.copy_from_slice(&h.finish().to_le_bytes());
    }
    uuid
}

/// An SSD as the volume layer sees it.
struct Ssd {
    index: u16,
    ownership: Arc<SsdOwnership>,
    lba_shift: u8,
    /// The image without faults: used to wipe a family's metadata, which
    /// must work even on an SSD with injected faults.
    raw: Arc<dyn Media>,
    /// The image under the engine, with fault injection.
    media: Arc<dyn Media>,
    faults: FaultControl,
}

impl Ssd {
    /// Punches the whole image: labels, engine metadata and data read as
    /// zeroes afterwards, so the SSD is not recognised any more.
    fn wipe(&self) -> Result<(), MediaError> {
        self.raw.discard(0, self.raw.size())?;
        self.raw.flush()
    }
}

/// An open volume: its namespace and, if encrypted, the key its clones use.
struct OpenVolume {
    namespace: Arc<VolumeNamespace>,
    key: Option<Arc<VolumeKey>>,
}

/// A writable volume (volume or clone) of a family.
struct VolumeRecord {
    name: String,
    /// Its NSID; kept while the volume is locked so it comes back under
    /// the same one (reported as 0 until then).
    nsid: u32,
    thin: bool,
    clone: bool,
    /// `None` while locked (encrypted, no key yet) or if the pool failed.
    open: Option<OpenVolume>,
}

struct SnapshotRecord {
    id: u32,
    name: String,
    /// The read-only namespace the snapshot is exposed as (0: none). Not
    /// persistent: a restart closes it.
    nsid: u32,
}

struct Family {
    uuid: [u8; 16],
    generation: u64,
    layout: u8,
    data_shards: u8,
    parity_shards: u8,
    stripe_bytes: u32,
    /// Per member index: the SSD (index into `VolumeManager::ssds`), or
    /// `None` if missing at startup.
    members: Vec<Option<usize>>,
    /// `None` if the family could not be opened (too many members lost).
    pool: Option<Pool>,
    array: Option<Arc<ProtectedMedia>>,
    volumes: Vec<VolumeRecord>,
    snapshots: Vec<SnapshotRecord>,
    /// `true` while the family exists. A background rebuild holds the lock
    /// for each step and stops once it is `false`, so it never writes to
    /// SSDs a deleted family gave back.
    alive: Arc<Mutex<bool>>,
    /// The family's background scrub and replacement (`maintenance.rs`).
    maintenance: Arc<maintenance::FamilyMaintenance>,
}

/// Mismatches of a scrub, in 512-byte sectors (the volume Statistics).
#[derive(Clone, Copy, Debug, Default)]
struct ScrubCounts {
    mismatches: u64,
    repaired: u64,
}

impl Family {
    fn label(&self, member_index: usize) -> FamilyLabel {
        FamilyLabel {
            uuid: self.uuid,
            generation: self.generation,
            member_index: member_index as u16,
            member_count: self.members.len() as u16,
            layout: self.layout,
            data_shards: self.data_shards,
            parity_shards: self.parity_shards,
            stripe_bytes: self.stripe_bytes,
            entries: self
                .volumes
                .iter()
                .map(|v| CatalogEntry {
                    name: v.name.clone(),
                    nsid: v.nsid,
                    flags: if v.thin { ENTRY_THIN } else { 0 }
                        | if v.clone { ENTRY_CLONE } else { 0 },
                })
                .collect(),
        }
    }

    fn array_state(&self) -> ArrayState {
        match (&self.pool, &self.array) {
            (None, _) => ArrayState::Failed,
            (Some(_), Some(array)) => array.state(),
            (Some(_), None) => ArrayState::Optimal,
        }
    }

    fn pool(&self) -> Result<&Pool, Status> {
        self.pool.as_ref().ok_or(Status::WRITE_FAULT)
    }
}

#[derive(Default)]
struct State {
    families: Vec<Family>,
    /// Set Features Volatile Write Cache = 0: every pool, including those
    /// formatted later, makes each write durable before it completes.
    write_cache_off: bool,
    next_snapshot_id: u32,
    /// NSIDs of namespaces that are not volumes (`--passthrough-ssd`).
    reserved: BTreeSet<u32>,
}

impl State {
    fn name_taken(&self, name: &str) -> bool {
        self.families.iter().any(|f| {
            f.volumes.iter().any(|v| v.name == name) || f.snapshots.iter().any(|s| s.name == name)
        })
    }

    fn nsid_taken(&self, nsid: u32) -> bool {
        self.reserved.contains(&nsid)
            || self.families.iter().any(|f| {
                f.volumes.iter().any(|v| v.nsid == nsid)
                    || f.snapshots.iter().any(|s| s.nsid == nsid)
            })
    }

    /// The family and index of the first snapshot that `matches`.
    fn find_snapshot(&self, matches: impl Fn(&SnapshotRecord) -> bool) -> Option<(usize, usize)> {
        self.families
            .iter()
            .enumerate()
            .find_map(|(fi, f)| f.snapshots.iter().position(&matches).map(|si| (fi, si)))
    }

    /// The family and index of the snapshot exposed as namespace `nsid`.
    fn exposed_snapshot(&self, nsid: u32) -> Option<(usize, usize)> {
        if nsid == 0 {
            return None;
        }
        self.find_snapshot(|s| s.nsid == nsid)
    }

    fn free_nsid(&self) -> Result<u32, Status> {
        (1..=MAX_NSID)
            .find(|&n| !self.nsid_taken(n))
            .ok_or(status(vs::NO_SPACE))
    }

    fn next_snapshot_id(&mut self) -> u32 {
        self.next_snapshot_id = self.next_snapshot_id.wrapping_add(1).max(1);
        self.next_snapshot_id
    }

    /// The family and index of the open volume with namespace `nsid`.
    fn open_volume(&self, nsid: u32) -> Result<(usize, usize), Status> {
        self.families
            .iter()
            .enumerate()
            .find_map(|(fi, f)| {
                f.volumes
                    .iter()
                    .position(|v| v.nsid == nsid && v.open.is_some())
                    .map(|vi| (fi, vi))
            })
            .filter(|_| nsid != 0)
            .ok_or(status(vs::VOLUME_NOT_FOUND))
    }

    fn snapshot(&self, id: u32) -> Result<(usize, usize), Status> {
        self.find_snapshot(|s| s.id == id)
            .ok_or(status(vs::SNAPSHOT_NOT_FOUND))
    }
}

/// What a layout request turns into.
struct Plan {
    /// `None`: SINGLE (one SSD, or a concatenation).
    protection: Option<Layout>,
    /// The protection is a log-structured array (Log-RAID) of that parity.
    log: bool,
    data_shards: u8,
    parity_shards: u8,
}

fn plan_layout(code: u8, k: u8, m: u8, n: usize) -> Result<Plan, Status> {
    let invalid = status(vs::INVALID_LAYOUT);
    let (protection, data_shards, parity_shards) = match code {
        layout::SINGLE => (None, 1, 0),
        layout::RAID0 if n >= 2 => (Some(Layout::Stripe { members: n }), n as u8, 0),
        layout::RAID10 => {
            let copies = usize::from(k);
            if !(2..=3).contains(&copies) || m != 0 {
                return Err(invalid);
            }
            (Some(Layout::Mirror { members: n, copies }), k, 0)
        }
        layout::RAID6 if n >= 4 => {
            if (m != 0 && m != 2) || (k != 0 && usize::from(k) + 2 != n) {
                return Err(invalid);
            }
            (Some(Layout::Raid6 { members: n }), (n - 2) as u8, 2)
        }
        layout::ERASURE => {
            if k == 0 || m == 0 || usize::from(k) + usize::from(m) != n {
                return Err(invalid);
            }
            let (data, parity) = (usize::from(k), usize::from(m));
            (Some(Layout::Erasure { data, parity }), k, m)
        }
        layout::LOG_RAID => {
            // RAID6 when k + 2 (or nothing) is asked for, else k + m.
            let (k, m) = match (usize::from(k), usize::from(m)) {
                (0, 0) | (0, 2) if n >= 4 => (n - 2, 2),
                (k, m) if k >= 1 && m >= 1 && k + m == n => (k, m),
                _ => return Err(invalid),
            };
            let parity = if m == 2 {
                Layout::Raid6 { members: n }
            } else {
                Layout::Erasure { data: k, parity: m }
            };
            (Some(parity), k as u8, m as u8)
        }
        _ => return Err(invalid),
    };
    if let Some(l) = &protection {
        l.validate().map_err(|_| invalid)?;
    }
    Ok(Plan {
        protection,
        log: code == layout::LOG_RAID,
        data_shards,
        parity_shards,
    })
}

/// Metadata blocks a Log-RAID array caches (its PMT and segment table).
const LOG_RAID_CACHE_BLOCKS: usize = 1024;

/// A Log-RAID array over `slices`: chunks of the family's stripe size,
/// segments of a thirty-second of the smallest member, between one chunk
/// and 4 MiB per member (Documentation/lograid.rst).
fn log_raid_config(layout: Layout, stripe: u32, slices: &[Arc<dyn Media>]) -> LogRaidConfig {
    let chunk = u64::from(stripe);
    let smallest = slices.iter().map(|s| s.size()).min().unwrap_or(0);
    let segment = (smallest / 32).clamp(chunk, 4 << 20);
    LogRaidConfig {
        cache_blocks: LOG_RAID_CACHE_BLOCKS,
        ..LogRaidConfig::new(layout, chunk, (segment / chunk).max(1))
    }
}

/// The SINGLE stack or the protected array over member slices.
type Stack = (Arc<dyn Media>, Option<Arc<ProtectedMedia>>);

fn services_bits(info_services: Services, encrypted: bool, thin: bool) -> u32 {
    let mut bits = 0;
    if thin {
        bits |= service::THIN;
    }
    if info_services.zero_detect {
        bits |= service::ZERO_DETECT;
    }
    if info_services.dedup {
        bits |= service::DEDUP;
    }
    if info_services.compression != Compression::None {
        bits |= service::COMPRESSION;
    }
    if encrypted {
        bits |= service::ENCRYPTION;
    }
    bits
}

fn compression_code(c: Compression) -> u8 {
    match c {
        Compression::Zstd => compression::ZSTD,
        Compression::None | Compression::Lz4 => compression::LZ4,
    }
}

/// Rows rebuilt per step: one step holds each row's lock briefly, so I/O
/// goes on between steps.
const REBUILD_ROWS: u64 = 16;

/// Rebuilds `array`'s rebuilding members in a background thread until done,
/// the array fails, or the family is deleted (`alive` turns false).
fn spawn_rebuild(array: Arc<ProtectedMedia>, alive: Arc<Mutex<bool>>) {
    let run = move || loop {
        let guard = alive.lock().unwrap_or_else(|p| p.into_inner());
        if !*guard {
            return;
        }
        match array.rebuild_step(REBUILD_ROWS) {
            Ok(progress) if progress.is_complete() => {
                info!("accel: rebuild complete");
                return;
            }
            Ok(_) => {}
            Err(e) => {
                error!("accel: rebuild stopped: {e}");
                return;
            }
        }
        drop(guard);
        std::thread::yield_now();
    };
    if let Err(e) = std::thread::Builder::new()
        .name("accel-rebuild".into())
        .spawn(run)
    {
        error!("accel: cannot start a rebuild: {e}");
    }
}

/// The volume families of the accelerator.
pub struct VolumeManager {
    ssds: Vec<Ssd>,
    state: Mutex<State>,
    /// New pools are paged (format 2) with this metadata cache, and paged
    /// pools found on the SSDs are opened with it (`--metadata-cache`).
    paged: PagedOptions,
}

impl VolumeManager {
    /// Takes the accelerator's SSDs and opens every family found on the
    /// SSDs that are not attached yet (an attached SSD is the passthrough
    /// namespace's). Members of a family are attached and in use from now
    /// on. NSIDs are assigned by [`VolumeManager::start`].
    #[cfg(test)]
    pub fn open(handles: &[SsdHandle]) -> Self {
        Self::open_with(handles, PagedOptions::default())
    }

    /// As [`VolumeManager::open`], with a metadata cache of
    /// `paged.cache_bytes` per pool.
    pub fn open_with(handles: &[SsdHandle], paged: PagedOptions) -> Self {
        let ssds: Vec<Ssd> = handles
            .iter()
            .map(|h| {
                let raw: Arc<dyn Media> = Arc::new(SsdMedia::new(h.media.clone()));
                let (faulty, faults) = FaultyMedia::new(raw.clone());
                Ssd {
                    index: h.index,
                    ownership: h.ownership.clone(),
                    lba_shift: h.media.lba_shift(),
                    raw,
                    media: Arc::new(faulty),
                    faults,
                }
            })
            .collect();
        let manager = Self {
            ssds,
            state: Mutex::new(State::default()),
            paged,
        };
        manager.scan();
        manager
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Finds the families on the SSDs' labels and opens their pools.
    fn scan(&self) {
        let mut found: Vec<(usize, FamilyLabel)> = Vec::new();
        for (i, ssd) in self.ssds.iter().enumerate() {
            if ssd.ownership.is_attached() {
                continue;
            }
            if let Some(l) = label::read_label(ssd.media.as_ref()) {
                found.push((i, l));
            }
        }
        let uuids: BTreeSet<[u8; 16]> = found.iter().map(|(_, l)| l.uuid).collect();
        let mut state = self.lock();
        for uuid in uuids {
            let labels: Vec<&(usize, FamilyLabel)> =
                found.iter().filter(|(_, l)| l.uuid == uuid).collect();
            let Some(newest) = labels.iter().map(|(_, l)| l).max_by_key(|l| l.generation) else {
                continue;
            };
            let count = usize::from(newest.member_count);
            let mut members: Vec<Option<(usize, u64)>> = vec![None; count];
            for (ssd, l) in &labels {
                let Some(slot) = members.get_mut(usize::from(l.member_index)) else {
                    continue;
                };
                if l.member_count == newest.member_count
                    && slot.is_none_or(|(_, generation)| l.generation > generation)
                {
                    *slot = Some((*ssd, l.generation));
                }
            }
            let members: Vec<Option<usize>> = members.iter().map(|m| m.map(|(s, _)| s)).collect();
            for ssd in members.iter().flatten() {
                self.ssds[*ssd].ownership.attach_in_use();
            }
            let mut family = Family {
                uuid,
                generation: newest.generation,
                layout: newest.layout,
                data_shards: newest.data_shards,
                parity_shards: newest.parity_shards,
                stripe_bytes: newest.stripe_bytes,
                members,
                pool: None,
                array: None,
                volumes: Vec::new(),
                snapshots: Vec::new(),
                alive: Arc::new(Mutex::new(true)),
                maintenance: Arc::default(),
            };
            self.open_family(&mut state, &mut family, &newest.entries);
            let empty = family.pool.is_some() && family.volumes.is_empty();
            if empty && family.snapshots.is_empty() {
                // A create that crashed before its volume existed.
                info!(
                    "accel: family without volumes on SSDs {:?}: wiped",
                    family.members
                );
                self.destroy(&family);
                continue;
            }
            state.families.push(family);
        }
    }

    /// Applies Set Features Volatile Write Cache: with the cache off, every
    /// pool makes each write durable before it completes (turning it off
    /// first makes everything written so far durable). Pools formatted or
    /// opened later inherit the setting.
    pub fn set_write_cache(&self, enabled: bool) -> Result<(), Status> {
        let mut state = self.lock();
        state.write_cache_off = !enabled;
        let mut result = Ok(());
        for pool in state.families.iter().filter_map(|f| f.pool.as_ref()) {
            if let Err(e) = pool.set_write_cache(enabled) {
                result = Err(log_engine("applying the volatile write cache setting", &e));
            }
        }
        result
    }

    /// Opens a found family's stack and pool and its volumes (locked ones
    /// stay closed). A family that cannot be opened keeps its catalog, so
    /// its volumes are listed as failed.
    fn open_family(&self, state: &mut State, family: &mut Family, catalog: &[CatalogEntry]) {
        let slices: Vec<Option<Arc<dyn Media>>> = family
            .members
            .iter()
            .map(|m| {
                let ssd = &self.ssds[(*m)?];
                SliceMedia::tail(ssd.media.clone(), LABEL_AREA).map(|s| Arc::new(s) as _)
            })
            .collect();
        let stack: Result<Stack, String> = if family.layout == layout::SINGLE {
            match slices.iter().cloned().collect::<Option<Vec<_>>>() {
                Some(mut parts) if parts.len() == 1 => Ok((parts.remove(0), None)),
                Some(parts) => Ok((Arc::new(ConcatMedia::new(parts)) as _, None)),
                None => Err("a member of a SINGLE family is missing".into()),
            }
        } else if family.layout == layout::LOG_RAID {
            LogRaid::open(slices, LOG_RAID_CACHE_BLOCKS)
                .map(|a| (Arc::new(a) as Arc<dyn Media>, None))
                .map_err(|e| e.to_string())
        } else {
            ProtectedMedia::open(slices)
                .map(|a| {
                    let a = Arc::new(a);
                    (a.clone() as Arc<dyn Media>, Some(a))
                })
                .map_err(|e| e.to_string())
        };
        let pool = stack.and_then(|(media, array)| {
            family.array = array;
            let pool = Pool::open_with(media, &self.paged).map_err(|e| e.to_string())?;
            pool.set_write_cache(!state.write_cache_off)
                .map_err(|e| e.to_string())?;
            // Deleted snapshots' space is freed in the background; the
            // thread ends with the pool.
            pool.spawn_releaser();
            Ok(pool)
        });
        let infos = pool.as_ref().ok().and_then(|p| p.volumes().ok());
        match (pool, infos) {
            (Ok(pool), Some(infos)) => {
                for info in infos {
                    match info.kind {
                        VolumeKind::Snapshot => {
                            let id = state.next_snapshot_id();
                            family.snapshots.push(SnapshotRecord {
                                id,
                                name: info.name,
                                nsid: 0,
                            });
                        }
                        VolumeKind::Writable => {
                            let entry = catalog.iter().find(|e| e.name == info.name);
                            let open = if info.encrypted {
                                None
                            } else {
                                match pool.open_volume(&info.name, None) {
                                    Ok(v) => Some(OpenVolume {
                                        namespace: Arc::new(VolumeNamespace::new(v)),
                                        key: None,
                                    }),
                                    Err(e) => {
                                        error!("accel: volume {}: {e}", info.name);
                                        None
                                    }
                                }
                            };
                            family.volumes.push(VolumeRecord {
                                nsid: entry.map_or(0, |e| e.nsid),
                                thin: entry.is_none_or(|e| e.flags & ENTRY_THIN != 0),
                                clone: entry.is_some_and(|e| e.flags & ENTRY_CLONE != 0),
                                name: info.name,
                                open,
                            });
                        }
                    }
                }
                if let Some(array) = &family.array {
                    if array.state() == ArrayState::Rebuilding {
                        spawn_rebuild(array.clone(), family.alive.clone());
                    }
                }
                info!(
                    "accel: opened volume family on SSDs {:?}: {} volume(s), {} snapshot(s)",
                    family.members,
                    family.volumes.len(),
                    family.snapshots.len()
                );
                family.pool = Some(pool);
            }
            (Err(e), _) => {
                error!(
                    "accel: volume family on SSDs {:?} cannot be opened: {e}",
                    family.members
                );
                family.volumes = catalog
                    .iter()
                    .map(|e| VolumeRecord {
                        name: e.name.clone(),
                        nsid: e.nsid,
                        thin: e.flags & ENTRY_THIN != 0,
                        clone: e.flags & ENTRY_CLONE != 0,
                        open: None,
                    })
                    .collect();
            }
            (Ok(_), None) => {
                error!(
                    "accel: volume family on SSDs {:?}: pool unusable",
                    family.members
                );
            }
        }
    }

    /// Assigns NSIDs (the catalog's where still free, `reserved` excluded)
    /// and returns the namespaces to activate.
    pub fn start(&self, reserved: &BTreeSet<u32>) -> Vec<(u32, Arc<dyn Namespace>)> {
        let mut state = self.lock();
        state.reserved = reserved.clone();
        let mut taken = reserved.clone();
        let mut active = Vec::new();
        for family in &mut state.families {
            for v in &mut family.volumes {
                if v.nsid == 0 || v.nsid > MAX_NSID || taken.contains(&v.nsid) {
                    v.nsid = (1..=MAX_NSID).find(|n| !taken.contains(n)).unwrap_or(0);
                }
                if v.nsid == 0 {
                    error!("accel: no NSID left for volume {}", v.name);
                    continue;
                }
                taken.insert(v.nsid);
                if let Some(open) = &v.open {
                    active.push((v.nsid, open.namespace.clone() as Arc<dyn Namespace>));
                }
            }
        }
        active
    }

    fn ssd_position(&self, index: u16) -> Option<usize> {
        self.ssds.iter().position(|s| s.index == index)
    }

    /// Writes the family's label to every member; succeeds if at least one
    /// member took it (the others failed and are out of the array anyway).
    fn write_labels(&self, family: &mut Family) -> Result<(), Status> {
        family.generation += 1;
        let mut written = 0;
        for (index, member) in family.members.iter().enumerate() {
            let Some(ssd) = member.map(|m| &self.ssds[m]) else {
                continue;
            };
            match label::write_label(ssd.media.as_ref(), &family.label(index)) {
                Ok(()) => written += 1,
                Err(e) => warn!("accel: label of SSD {}: {e}", ssd.index),
            }
        }
        if written == 0 {
            return Err(Status::WRITE_FAULT);
        }
        Ok(())
    }

    /// Wipes the family's SSDs and gives them back (attached, not in use).
    fn destroy(&self, family: &Family) {
        *family.alive.lock().unwrap_or_else(|p| p.into_inner()) = false;
        // The pool's background releaser must not write to the members
        // once they are wiped and handed back.
        if let Some(pool) = &family.pool {
            pool.close();
        }
        for ssd in family.members.iter().flatten().map(|m| &self.ssds[*m]) {
            if let Err(e) = ssd.wipe() {
                error!("accel: wiping SSD {}: {e}", ssd.index);
            }
            ssd.ownership.release();
        }
    }

    /// Removes family `fi` if nothing is left in it; otherwise records the
    /// catalog (best effort: the pool operation is already durable, and a
    /// stale catalog entry is dropped at the next start).
    fn after_removal(&self, state: &mut State, fi: usize) {
        let empty = {
            let f = &state.families[fi];
            f.volumes.is_empty() && f.snapshots.is_empty()
        };
        if empty {
            let family = state.families.remove(fi);
            info!(
                "accel: last volume of the family on SSDs {:?} deleted",
                family.members
            );
            self.destroy(&family);
        } else if let Err(e) = self.write_labels(&mut state.families[fi]) {
            warn!("accel: catalog update failed: {e:?}");
        }
    }

    /// Volume Create (new volume, or open an existing one).
    pub fn create(&self, req: &VolumeCreate, table: &dyn NamespaceTable) -> Result<u32, Status> {
        if req.flags & !vendor::VOLUME_CREATE_OPEN_EXISTING != 0 {
            return Err(status(vs::INVALID_PAYLOAD));
        }
        let mut state = self.lock();
        if req.flags & vendor::VOLUME_CREATE_OPEN_EXISTING != 0 {
            return self.open_existing(&mut state, req, table);
        }
        self.create_new(&mut state, req, table)
    }

    fn open_existing(
        &self,
        state: &mut State,
        req: &VolumeCreate,
        table: &dyn NamespaceTable,
    ) -> Result<u32, Status> {
        let name = parse_name(&req.name)?;
        if let Some(nsid) = self.expose_snapshot(state, &name, req, table)? {
            return Ok(nsid);
        }
        // A volume whose catalog NSID was taken at startup gets a new one.
        let spare = state.free_nsid();
        let (fi, vi) = state
            .families
            .iter()
            .enumerate()
            .find_map(|(fi, f)| {
                f.volumes
                    .iter()
                    .position(|v| v.name == name)
                    .map(|vi| (fi, vi))
            })
            .ok_or(status(vs::VOLUME_NOT_FOUND))?;
        let family = &mut state.families[fi];
        let record = &family.volumes[vi];
        if record.open.is_some() {
            return Ok(record.nsid);
        }
        let pool = family.pool()?.clone();
        if req.key.iter().all(|&b| b == 0) {
            return Err(status(vs::KEY_REQUIRED));
        }
        let key = VolumeKey::from_slice(&req.key).map_err(|_| status(vs::INVALID_PAYLOAD))?;
        let volume = pool
            .open_volume(&name, Some(&key))
            .map_err(|e| log_engine(&format!("opening {name}"), &e))?;
        let record = &mut family.volumes[vi];
        if record.nsid == 0 {
            record.nsid = spare?;
        }
        let namespace = Arc::new(VolumeNamespace::new(volume));
        record.open = Some(OpenVolume {
            namespace: namespace.clone(),
            key: Some(Arc::new(key)),
        });
        table.activate(record.nsid, namespace);
        info!("accel: volume {name} unlocked as namespace {}", record.nsid);
        Ok(record.nsid)
    }

    /// Volume Create with `VOLUME_CREATE_OPEN_EXISTING` naming a snapshot:
    /// exposes it as a read-only namespace (writes fail). `None` if no
    /// snapshot has that name.
    fn expose_snapshot(
        &self,
        state: &mut State,
        name: &str,
        req: &VolumeCreate,
        table: &dyn NamespaceTable,
    ) -> Result<Option<u32>, Status> {
        let Some((fi, si)) = state.find_snapshot(|s| s.name == name) else {
            return Ok(None);
        };
        if state.families[fi].snapshots[si].nsid != 0 {
            return Ok(Some(state.families[fi].snapshots[si].nsid));
        }
        let nsid = state.free_nsid()?;
        let family = &state.families[fi];
        let pool = family.pool()?.clone();
        // An encrypted snapshot opens with the key given, or with the key
        // of an open volume of its family (snapshots share their origin's).
        let given = if req.key.iter().all(|&b| b == 0) {
            None
        } else {
            Some(Arc::new(
                VolumeKey::from_slice(&req.key).map_err(|_| status(vs::INVALID_PAYLOAD))?,
            ))
        };
        let family_key = family
            .volumes
            .iter()
            .find_map(|v| v.open.as_ref().and_then(|o| o.key.clone()));
        let key = given.or(family_key);
        let volume = pool
            .open_volume(name, key.as_deref())
            .map_err(|e| log_engine(&format!("opening snapshot {name}"), &e))?;
        state.families[fi].snapshots[si].nsid = nsid;
        table.activate(nsid, Arc::new(VolumeNamespace::new(volume)));
        info!("accel: snapshot {name} exposed read-only as namespace {nsid}");
        Ok(Some(nsid))
    }

    fn create_new(
        &self,
        state: &mut State,
        req: &VolumeCreate,
        table: &dyn NamespaceTable,
    ) -> Result<u32, Status> {
        let invalid = status(vs::INVALID_PAYLOAD);
        let name = parse_name(&req.name)?;
        if req.lba_shift != 0 && req.lba_shift != VOLUME_LBA_SHIFT {
            return Err(invalid);
        }
        let size = req.size_bytes.get();
        if size == 0 || !size.is_multiple_of(BS) {
            return Err(invalid);
        }
        let bits = req.services.get();
        if bits & !service::ALL != 0 {
            return Err(invalid);
        }
        if bits & service::LOG_STRUCTURED != 0 {
            return Err(status(vs::NOT_IMPLEMENTED));
        }
        let stripe = match req.stripe_bytes.get() {
            0 => DEFAULT_STRIPE,
            s if s.is_power_of_two() && (4096..=1 << 20).contains(&s) => s,
            _ => return Err(invalid),
        };
        let codec = if bits & service::COMPRESSION != 0 {
            match req.compression {
                compression::LZ4 => Compression::Lz4,
                compression::ZSTD => Compression::Zstd,
                _ => return Err(invalid),
            }
        } else {
            Compression::None
        };
        let key = if bits & service::ENCRYPTION != 0 {
            if req.key.iter().all(|&b| b == 0) {
                return Err(invalid);
            }
            Some(VolumeKey::from_slice(&req.key).map_err(|_| invalid)?)
        } else {
            None
        };
        let thin = bits & service::THIN != 0;
        let services = Services {
            zero_detect: bits & service::ZERO_DETECT != 0,
            dedup: bits & service::DEDUP != 0,
            compression: codec,
        };
        let mask = req.ssd_mask.get();
        if mask == 0 {
            return Err(status(vs::INVALID_LAYOUT));
        }
        let mut members = Vec::new();
        for bit in 0..64u16 {
            if mask & (1 << bit) != 0 {
                members.push(self.ssd_position(bit).ok_or(status(vs::SSD_NOT_FOUND))?);
            }
        }
        for &m in &members {
            let view = self.ssds[m].ownership.view();
            if !view.attached {
                return Err(status(vs::SSD_NOT_ATTACHED));
            }
            if view.in_use {
                return Err(status(vs::SSD_IN_USE));
            }
        }
        let plan = plan_layout(
            req.layout,
            req.data_shards,
            req.parity_shards,
            members.len(),
        )?;
        if state.name_taken(&name) {
            return Err(status(vs::VOLUME_EXISTS));
        }
        let nsid = state.free_nsid()?;
        let mut claimed = Vec::new();
        for &m in &members {
            if let Err(code) = self.ssds[m].ownership.claim() {
                claimed
                    .iter()
                    .for_each(|&c: &usize| self.ssds[c].ownership.release());
                return Err(status(code));
            }
            claimed.push(m);
        }
        let mut family = Family {
            uuid: new_uuid(),
            generation: 0,
            layout: req.layout,
            data_shards: plan.data_shards,
            parity_shards: plan.parity_shards,
            stripe_bytes: if plan.protection.is_some() { stripe } else { 0 },
            members: members.iter().map(|&m| Some(m)).collect(),
            pool: None,
            array: None,
            volumes: Vec::new(),
            snapshots: Vec::new(),
            alive: Arc::new(Mutex::new(true)),
            maintenance: Arc::default(),
        };
        let options = VolumeOptions {
            size_bytes: size,
            services,
            key: key.as_ref(),
        };
        let built = self
            .build_family(&mut family, &plan, stripe, &name, nsid, thin, &options)
            .and_then(|volume| {
                let pool = family.pool()?;
                pool.set_write_cache(!state.write_cache_off)
                    .map_err(|e| log_engine("setting the write cache", &e))?;
                Ok(volume)
            });
        match built {
            Ok(volume) => {
                let namespace = Arc::new(VolumeNamespace::new(volume));
                if let Some(record) = family.volumes.first_mut() {
                    record.open = Some(OpenVolume {
                        namespace: namespace.clone(),
                        key: key.map(Arc::new),
                    });
                }
                table.activate(nsid, namespace);
                info!(
                    "accel: volume {name} ({size} bytes, layout {}) on SSDs {:?} is namespace {nsid}",
                    req.layout, family.members
                );
                state.families.push(family);
                Ok(nsid)
            }
            Err(e) => {
                self.destroy(&family);
                Err(e)
            }
        }
    }

    /// Formats the members, the pool and the first volume of a new family.
    #[expect(clippy::too_many_arguments)]
    fn build_family(
        &self,
        family: &mut Family,
        plan: &Plan,
        stripe: u32,
        name: &str,
        nsid: u32,
        thin: bool,
        options: &VolumeOptions<'_>,
    ) -> Result<dpu_engine::volume::Volume, Status> {
        let no_space = status(vs::NO_SPACE);
        let mut slices: Vec<Arc<dyn Media>> = Vec::new();
        for ssd in family.members.iter().flatten().map(|m| &self.ssds[*m]) {
            // Fresh members read as zeroes: old labels and data are gone
            // and the array needs no zero-fill.
            ssd.wipe().map_err(|_| Status::WRITE_FAULT)?;
            let slice = SliceMedia::tail(ssd.media.clone(), LABEL_AREA).ok_or(no_space)?;
            slices.push(Arc::new(slice));
        }
        let (media, array): Stack = match plan.protection {
            Some(layout) if plan.log => {
                let array = LogRaid::create(log_raid_config(layout, stripe, &slices), slices)
                    .map_err(|e| match e {
                        MediaError::Unrecoverable(_) | MediaError::OutOfRange { .. } => no_space,
                        _ => Status::WRITE_FAULT,
                    })?;
                (Arc::new(array) as Arc<dyn Media>, None)
            }
            None if slices.len() == 1 => (slices.remove(0), None),
            None => (Arc::new(ConcatMedia::new(slices)), None),
            Some(layout) => {
                let chunk = u64::from(stripe);
                let smallest = slices.iter().map(|s| s.size()).min().unwrap_or(0);
                // A checkpoint every J writes; J journal slots per member
                // take J × (4 KiB + chunk), at most an eighth of a member.
                let journal_slots = (smallest / 8 / (4096 + chunk)).clamp(2, 64);
                let config = ProtectionConfig {
                    journal_slots,
                    assume_zeroed: true,
                    ..ProtectionConfig::new(layout, chunk)
                };
                let array = ProtectedMedia::create(config, slices).map_err(|e| match e {
                    MediaError::Unrecoverable(_) | MediaError::OutOfRange { .. } => no_space,
                    _ => Status::WRITE_FAULT,
                })?;
                let array = Arc::new(array);
                (array.clone() as Arc<dyn Media>, Some(array))
            }
        };
        family.array = array;
        let pool = Pool::format_paged(media, &self.paged).map_err(|e| match e {
            VolumeError::NoSpace | VolumeError::InvalidArgument(_) => no_space,
            VolumeError::Media(MediaError::OutOfRange { .. }) => no_space,
            e => log_engine("formatting a pool", &e),
        })?;
        pool.spawn_releaser();
        let stats = pool.stats().map_err(|e| engine_status(&e))?;
        if !thin && options.size_bytes > stats.free_blocks * BS {
            return Err(no_space);
        }
        family.pool = Some(pool.clone());
        // The catalog entry goes first: a crash before the volume exists
        // leaves an entry the next start drops.
        family.volumes.push(VolumeRecord {
            name: name.to_string(),
            nsid,
            thin,
            clone: false,
            open: None,
        });
        self.write_labels(family)?;
        pool.create_volume(name, options)
            .map_err(|e| log_engine(&format!("creating {name}"), &e))?;
        pool.open_volume(name, options.key)
            .map_err(|e| log_engine(&format!("opening {name}"), &e))
    }

    /// Volume Delete.
    pub fn delete(&self, nsid: u32, table: &dyn NamespaceTable) -> Result<u32, Status> {
        let mut state = self.lock();
        // On a snapshot's namespace, Volume Delete closes the namespace; the
        // snapshot stays.
        if let Some((fi, si)) = state.exposed_snapshot(nsid) {
            table.deactivate(nsid);
            let snapshot = &mut state.families[fi].snapshots[si];
            snapshot.nsid = 0;
            info!(
                "accel: snapshot {} no longer exposed (namespace {nsid})",
                snapshot.name
            );
            return Ok(0);
        }
        let (fi, vi) = state.open_volume(nsid)?;
        let family = &mut state.families[fi];
        let pool = family.pool()?.clone();
        let name = family.volumes[vi].name.clone();
        let infos = pool.volumes().map_err(|e| engine_status(&e))?;
        if infos
            .iter()
            .any(|i| i.kind == VolumeKind::Snapshot && i.parent.as_deref() == Some(name.as_str()))
        {
            return Err(status(vs::VOLUME_BUSY));
        }
        table.deactivate(nsid);
        if let Err(e) = pool.delete(&name) {
            if let Some(open) = &family.volumes[vi].open {
                table.activate(nsid, open.namespace.clone());
            }
            return Err(log_engine(&format!("deleting {name}"), &e));
        }
        family.volumes.remove(vi);
        info!("accel: volume {name} (namespace {nsid}) deleted");
        self.after_removal(&mut state, fi);
        Ok(0)
    }

    /// Volume Resize.
    pub fn resize(&self, nsid: u32, size: u64) -> Result<u32, Status> {
        let state = self.lock();
        let (fi, vi) = state.open_volume(nsid)?;
        let family = &state.families[fi];
        let record = &family.volumes[vi];
        let pool = family.pool()?;
        if size == 0 || !size.is_multiple_of(BS) {
            return Err(status(vs::INVALID_PAYLOAD));
        }
        if !record.thin {
            let s = pool.stats().map_err(|e| engine_status(&e))?;
            if size > s.total_blocks.saturating_sub(s.metadata_blocks) * BS {
                return Err(status(vs::NO_SPACE));
            }
        }
        pool.resize(&record.name, size)
            .map_err(|e| log_engine(&format!("resizing {}", record.name), &e))?;
        Ok(0)
    }

    fn settings(family: &Family, record: &VolumeRecord) -> Result<ServiceSettings, Status> {
        let infos = family.pool()?.volumes().map_err(|e| engine_status(&e))?;
        let info = infos
            .iter()
            .find(|i| i.name == record.name)
            .ok_or(status(vs::VOLUME_NOT_FOUND))?;
        let mut s = ServiceSettings::zeroed();
        s.services
            .set(services_bits(info.services, info.encrypted, record.thin));
        s.compression = compression_code(info.services.compression);
        Ok(s)
    }

    /// Service Get.
    pub fn service_get(&self, nsid: u32) -> Result<ServiceSettings, Status> {
        let state = self.lock();
        let (fi, vi) = state.open_volume(nsid)?;
        let family = &state.families[fi];
        Self::settings(family, &family.volumes[vi])
    }

    /// Service Set: the engine fixes a volume's services at creation, so
    /// only settings equal to the current ones are accepted.
    pub fn service_set(&self, nsid: u32, new: &ServiceSettings) -> Result<u32, Status> {
        let state = self.lock();
        let (fi, vi) = state.open_volume(nsid)?;
        let family = &state.families[fi];
        let current = Self::settings(family, &family.volumes[vi])?;
        let (old, bits) = (current.services.get(), new.services.get());
        if bits & !service::ALL != 0 {
            return Err(status(vs::INVALID_PAYLOAD));
        }
        let fixed = service::THIN | service::ENCRYPTION | service::LOG_STRUCTURED;
        if (old ^ bits) & fixed != 0 {
            return Err(status(vs::INVALID_PAYLOAD));
        }
        if bits & service::COMPRESSION != 0
            && new.compression != compression::LZ4
            && new.compression != compression::ZSTD
        {
            return Err(status(vs::INVALID_PAYLOAD));
        }
        let changed = old != bits
            || (bits & service::COMPRESSION != 0 && new.compression != current.compression)
            || new.iops_limit.get() != 0
            || new.bandwidth_limit_mib.get() != 0;
        if changed {
            return Err(status(vs::NOT_IMPLEMENTED));
        }
        Ok(0)
    }

    /// Snapshot Create.
    pub fn snapshot_create(&self, nsid: u32, name: &ObjectName) -> Result<u32, Status> {
        let mut state = self.lock();
        let (fi, vi) = state.open_volume(nsid)?;
        let snap = parse_name(&name.name)?;
        if state.name_taken(&snap) {
            return Err(status(vs::VOLUME_EXISTS));
        }
        let family = &state.families[fi];
        let origin = family.volumes[vi].name.clone();
        let pool = family.pool()?.clone();
        let infos = pool.volumes().map_err(|e| engine_status(&e))?;
        let existing = infos
            .iter()
            .filter(|i| i.kind == VolumeKind::Snapshot && i.parent.as_deref() == Some(&origin))
            .count();
        if existing >= vendor::MAX_SNAPSHOTS_PER_VOLUME as usize {
            return Err(status(vs::SNAPSHOT_LIMIT));
        }
        pool.snapshot(&origin, &snap)
            .map_err(|e| log_engine(&format!("snapshot of {origin}"), &e))?;
        let id = state.next_snapshot_id();
        state.families[fi].snapshots.push(SnapshotRecord {
            id,
            name: snap.clone(),
            nsid: 0,
        });
        info!("accel: snapshot {snap} (ID {id}) of {origin}");
        Ok(id)
    }

    /// Snapshot List: the volume's snapshots from index `first` on (63 per
    /// page, in the pool's order), with how many there are in all.
    pub fn snapshot_list(&self, nsid: u32, first: u32) -> Result<SnapshotList, Status> {
        let state = self.lock();
        let (fi, vi) = state.open_volume(nsid)?;
        let family = &state.families[fi];
        let origin = &family.volumes[vi].name;
        let pool = family.pool()?;
        let infos = pool.volumes().map_err(|e| engine_status(&e))?;
        let mut list = SnapshotList::zeroed();
        let mut count = 0;
        // Only snapshots the family has a record of are listed, so the
        // total and the pages agree.
        let snapshots: Vec<(&VolumeInfo, u32)> = infos
            .iter()
            .filter(|i| i.kind == VolumeKind::Snapshot && i.parent.as_ref() == Some(origin))
            .filter_map(|info| {
                let record = family.snapshots.iter().find(|s| s.name == info.name)?;
                Some((info, record.id))
            })
            .collect();
        list.total
            .set(u32::try_from(snapshots.len()).unwrap_or(u32::MAX));
        let from = usize::try_from(first).unwrap_or(usize::MAX);
        for (entry, (info, id)) in list
            .entries
            .iter_mut()
            .zip(snapshots.into_iter().skip(from))
        {
            entry.id.set(id);
            let exclusive = pool
                .volume_stats(&info.name)
                .map_or(0, |s| s.exclusive_bytes);
            entry.exclusive_bytes.set(exclusive);
            c_string_field(&mut entry.name, info.name.as_bytes());
            count += 1;
        }
        list.count.set(count);
        Ok(list)
    }

    /// Snapshot Delete.
    pub fn snapshot_delete(&self, id: u32) -> Result<u32, Status> {
        let mut state = self.lock();
        let (fi, si) = state.snapshot(id)?;
        let family = &mut state.families[fi];
        if family.snapshots[si].nsid != 0 {
            return Err(status(vs::VOLUME_BUSY));
        }
        let name = family.snapshots[si].name.clone();
        family
            .pool()?
            .delete(&name)
            .map_err(|e| log_engine(&format!("deleting {name}"), &e))?;
        family.snapshots.remove(si);
        info!("accel: snapshot {name} (ID {id}) deleted");
        self.after_removal(&mut state, fi);
        Ok(0)
    }

    /// Snapshot Clone.
    pub fn snapshot_clone(
        &self,
        id: u32,
        name: &ObjectName,
        table: &dyn NamespaceTable,
    ) -> Result<u32, Status> {
        let mut state = self.lock();
        let (fi, si) = state.snapshot(id)?;
        let clone = parse_name(&name.name)?;
        if state.name_taken(&clone) {
            return Err(status(vs::VOLUME_EXISTS));
        }
        let nsid = state.free_nsid()?;
        let family = &mut state.families[fi];
        if family.volumes.len() >= MAX_PER_LIST {
            return Err(status(vs::NO_SPACE));
        }
        let snap = family.snapshots[si].name.clone();
        let pool = family.pool()?.clone();
        let infos = pool.volumes().map_err(|e| engine_status(&e))?;
        let info = infos
            .iter()
            .find(|i| i.name == snap)
            .ok_or(status(vs::SNAPSHOT_NOT_FOUND))?;
        let origin = info
            .parent
            .as_ref()
            .and_then(|p| family.volumes.iter().find(|v| &v.name == p));
        let key = origin
            .and_then(|o| o.open.as_ref())
            .and_then(|o| o.key.clone());
        if info.encrypted && key.is_none() {
            return Err(status(vs::KEY_REQUIRED));
        }
        let thin = origin.is_none_or(|o| o.thin);
        family.volumes.push(VolumeRecord {
            name: clone.clone(),
            nsid,
            thin,
            clone: true,
            open: None,
        });
        let made = self.write_labels(family).and_then(|()| {
            pool.clone_snapshot(&snap, &clone)
                .map_err(|e| log_engine(&format!("cloning {snap}"), &e))?;
            pool.open_volume(&clone, key.as_deref())
                .map_err(|e| log_engine(&format!("opening {clone}"), &e))
        });
        let family = &mut state.families[fi];
        match made {
            Ok(volume) => {
                let namespace = Arc::new(VolumeNamespace::new(volume));
                if let Some(record) = family.volumes.last_mut() {
                    record.open = Some(OpenVolume {
                        namespace: namespace.clone(),
                        key,
                    });
                }
                table.activate(nsid, namespace);
                info!("accel: clone {clone} of {snap} is namespace {nsid}");
                Ok(nsid)
            }
            Err(e) => {
                family.volumes.pop();
                let _ = pool.delete(&clone);
                if let Err(e) = self.write_labels(family) {
                    warn!("accel: catalog update failed: {e:?}");
                }
                Err(e)
            }
        }
    }

    /// Snapshot Revert.
    pub fn snapshot_revert(&self, nsid: u32, id: u32) -> Result<u32, Status> {
        let state = self.lock();
        let (fi, vi) = state.open_volume(nsid)?;
        let (sfi, si) = state.snapshot(id)?;
        if sfi != fi {
            return Err(status(vs::SNAPSHOT_NOT_FOUND));
        }
        let family = &state.families[fi];
        let (volume, snap) = (&family.volumes[vi].name, &family.snapshots[si].name);
        family
            .pool()?
            .revert(volume, snap)
            .map_err(|e| log_engine(&format!("reverting {volume} to {snap}"), &e))?;
        info!("accel: volume {volume} reverted to {snap}");
        Ok(0)
    }

    /// Volume List entries of every volume (open, locked, failed), in
    /// `entries` order; returns how many were filled.
    pub fn list(&self, entries: &mut [VolumeListEntry]) -> usize {
        let state = self.lock();
        let mut slots = entries.iter_mut();
        let mut count = 0;
        for family in &state.families {
            let infos = family.pool.as_ref().and_then(|p| p.volumes().ok());
            let array_state = family.array_state();
            for record in &family.volumes {
                let Some(entry) = slots.next() else {
                    return count;
                };
                let info = infos
                    .as_ref()
                    .and_then(|i| i.iter().find(|i| i.name == record.name));
                let mut flags = match array_state {
                    ArrayState::Optimal => 0,
                    ArrayState::Degraded => vendor::VOLUME_FLAG_DEGRADED,
                    ArrayState::Rebuilding => vendor::VOLUME_FLAG_REBUILDING,
                    ArrayState::Failed => vendor::VOLUME_FLAG_FAILED,
                };
                if record.clone {
                    flags |= vendor::VOLUME_FLAG_CLONE;
                }
                if record.open.is_none() && family.pool.is_some() {
                    flags |= vendor::VOLUME_FLAG_LOCKED;
                }
                entry.nsid.set(if record.open.is_some() {
                    record.nsid
                } else {
                    0
                });
                entry.flags.set(flags);
                if let Some(info) = info {
                    entry.size_bytes.set(info.size_bytes);
                    entry
                        .services
                        .set(services_bits(info.services, info.encrypted, record.thin));
                }
                let used = family
                    .pool
                    .as_ref()
                    .and_then(|p| p.volume_stats(&record.name).ok())
                    .map_or(0, |s| s.allocated_bytes);
                entry.used_bytes.set(used);
                entry.layout = family.layout;
                entry.lba_shift = VOLUME_LBA_SHIFT;
                entry.data_shards = family.data_shards;
                entry.parity_shards = family.parity_shards;
                c_string_field(&mut entry.name, record.name.as_bytes());
                count += 1;
            }
        }
        count
    }

    /// Fills the volume fields of Statistics for volume `nsid`; returns
    /// whether `nsid` is a volume.
    pub fn statistics(&self, nsid: u32, s: &mut Statistics) -> bool {
        let state = self.lock();
        let Ok((fi, vi)) = state.open_volume(nsid) else {
            return false;
        };
        let family = &state.families[fi];
        let name = &family.volumes[vi].name;
        let Some(pool) = &family.pool else {
            return true;
        };
        if let Ok(v) = pool.volume_stats(name) {
            s.logical_bytes.set(v.mapped_bytes);
            s.shared_bytes.set(v.shared_bytes);
            s.exclusive_bytes.set(v.exclusive_bytes);
            s.zero_detect_saved_bytes.set(v.zero_bytes);
            // Dedup saves the blocks that map a record another block of
            // the volume already maps; compression saves what the distinct
            // records take less than a block each.
            let deduplicated = v
                .mapped_bytes
                .saturating_sub(v.zero_bytes)
                .saturating_sub(v.unique_bytes);
            s.dedup_saved_bytes.set(deduplicated);
            s.compression_saved_bytes
                .set(v.unique_bytes.saturating_sub(v.allocated_bytes));
        }
        if let Ok(p) = pool.stats() {
            s.physical_bytes
                .set((p.data_blocks + p.metadata_blocks) * p.block_size);
            s.pool_capacity_bytes.set(p.total_blocks * p.block_size);
            s.pool_free_bytes.set(p.free_blocks * p.block_size);
        }
        s.array_state = match family.array_state() {
            ArrayState::Optimal => vendor::ARRAY_STATE_OPTIMAL,
            ArrayState::Degraded => vendor::ARRAY_STATE_DEGRADED,
            ArrayState::Rebuilding => vendor::ARRAY_STATE_REBUILDING,
            ArrayState::Failed => vendor::ARRAY_STATE_FAILED,
        };
        let last_scrub = family.maintenance.last_scrub();
        s.scrub_mismatches.set(last_scrub.mismatches);
        s.scrub_repaired.set(last_scrub.repaired);
        if let Some(array) = &family.array {
            let status = array.status();
            s.degraded_reads = Le64::new(status.degraded_reads);
            if let Some(r) = status.rebuild.filter(|r| r.rows_total > 0) {
                s.rebuild_percent = (r.rows_done.saturating_mul(100) / r.rows_total).min(100) as u8;
            }
        }
        true
    }

    /// SSD Detach succeeded: faults injected for the accelerator's use of
    /// the SSD end with it.
    pub fn ssd_detached(&self, index: u16) {
        if let Some(ssd) = self.ssd_position(index).map(|i| &self.ssds[i]) {
            ssd.faults.clear();
        }
    }

    /// Fault Injection on an attached SSD's media under the engine.
    pub fn fault(&self, f: &FaultInjection) -> Result<u32, Status> {
        let invalid = status(vs::INVALID_PAYLOAD);
        let ssd = self
            .ssd_position(f.ssd_index.get())
            .map(|i| &self.ssds[i])
            .ok_or(status(vs::SSD_NOT_FOUND))?;
        if !ssd.ownership.is_attached() {
            return Err(status(vs::SSD_NOT_ATTACHED));
        }
        let size = ssd.media.size();
        let range = || -> Result<std::ops::Range<u64>, Status> {
            let shift = u32::from(ssd.lba_shift);
            let (slba, blocks) = (f.slba.get(), f.blocks.get());
            if blocks == 0 {
                return if slba == 0 { Ok(0..size) } else { Err(invalid) };
            }
            let start = slba.checked_shl(shift).filter(|s| s >> shift == slba);
            let len = blocks.checked_shl(shift).filter(|l| l >> shift == blocks);
            match (start, len) {
                (Some(s), Some(l)) if s.checked_add(l).is_some_and(|e| e <= size) => Ok(s..s + l),
                _ => Err(invalid),
            }
        };
        if f.count.get() != 0 && f.kind != fault::CLEAR {
            // Faults last until cleared; counted faults are not offered.
            return Err(status(vs::NOT_IMPLEMENTED));
        }
        let c = &ssd.faults;
        match f.kind {
            fault::CLEAR => {
                c.clear();
                self.readd_ssd(f.ssd_index.get());
            }
            fault::FAIL_READS => c.error_range(range()?, FaultOps::Read),
            fault::FAIL_WRITES => c.error_range(range()?, FaultOps::Write),
            fault::FAIL_ALL if f.blocks.get() == 0 && f.slba.get() == 0 => c.fail_all(true),
            fault::FAIL_ALL => c.error_range(range()?, FaultOps::Both),
            fault::DISAPPEAR => c.disappear(),
            fault::CORRUPT => c.corrupt_next_write(range()?),
            fault::ROT => {
                let r = range()?;
                if f.blocks.get() == 0 || r.end - r.start > fault::ROT_MAX_BYTES {
                    return Err(invalid);
                }
                media::rot(&*ssd.raw, r).map_err(|e| {
                    warn!("accel: rot on SSD {}: {e}", ssd.index);
                    Status::WRITE_FAULT
                })?;
            }
            fault::DELAY => return Err(status(vs::NOT_IMPLEMENTED)),
            _ => return Err(invalid),
        }
        info!("accel: fault kind {} on SSD {}", f.kind, ssd.index);
        Ok(0)
    }
}
