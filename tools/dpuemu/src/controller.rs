//! The NVMe-style controller core, independent of the transport.
//!
//! A [`Controller`] is driven by BAR0 MMIO reads and writes (from the
//! vfio-user server, or directly from tests), reaches guest memory only
//! through a [`GuestMemory`] and raises interrupts through an
//! [`InterruptSink`]. The admin queue is processed synchronously inside the
//! MMIO write of its doorbell; I/O submission queues are processed by worker
//! threads calling [`Controller::service_queues`].
//!
//! Lock order (outer to inner): `registers` → `queues` → a submission queue
//! → a completion queue; `admin`, `errors` and the worker signals are
//! leaves. Workers never take `registers`, and never hold `queues` while
//! processing a queue.

mod admin;
mod bus_master;
mod data;
mod executor;
mod hang;
pub mod hostile;
mod io;
mod queues;
#[cfg(test)]
mod tests;
mod vendor;
mod zoned;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock, Weak};

use log::{debug, error, info, warn};
use nvme_shim::log_page::ErrorLogEntry;
use nvme_shim::registers::{self as regs, Aqa, Cap, Cc, Csts, DoorbellKind};
use nvme_shim::sqe::SubmissionEntry;
use nvme_shim::status::Status;
use nvme_shim::wire::{Le16, Le32, Le64};

use crate::guest_memory::GuestMemory;
use crate::interrupts::InterruptSink;
use crate::namespace::Namespace;
use crate::ownership::SsdOwnership;
use crate::volumes::{NamespaceTable, VolumeManager, MAX_NSID};

use bus_master::BusMaster;
use executor::Executor;
use hang::Hang;
use hostile::Anomaly;
use queues::{CompletionQueue, SubmissionQueue};

/// Entries per I/O queue the controller supports (CAP.MQES + 1).
pub const MAX_QUEUE_ENTRIES: u32 = 1024;
/// Maximum Data Transfer Size as a power of two of the page size: 1 MiB.
pub const MDTS: u8 = 8;
/// Largest data transfer of one command in bytes.
pub const MAX_TRANSFER: u64 = data::PAGE_SIZE << MDTS;
/// Outstanding Asynchronous Event Requests accepted (AERL + 1).
pub const AER_LIMIT: usize = 4;
/// Entries kept in the Error Information log (ELPE + 1).
pub const ERROR_LOG_ENTRIES: usize = 64;
/// Commands a worker takes from one submission queue before moving on.
const BATCH: usize = 64;
/// Threads of a controller's executor: I/O commands of one batch that run
/// side by side (`controller/executor.rs`).
const PARALLEL_COMMANDS: usize = 16;

/// A command that ran beside its worker: its number in the batch, the
/// command and its completion.
type Done = (usize, SubmissionEntry, queues::Completion);

/// The commands a worker took from a submission queue in one pass.
#[derive(Default)]
struct Batch {
    /// Commands taken that have a completion to post.
    taken: usize,
    /// Number of the next completion to post.
    next: usize,
    /// Completions that ended, by number, waiting for their turn.
    arrived: BTreeMap<usize, (SubmissionEntry, queues::Completion)>,
    /// The completion queue failed: the rest is dropped.
    stopped: bool,
}

impl Batch {
    /// Completions still to post (their CQ entries are reserved).
    fn unposted(&self) -> usize {
        self.taken - self.next
    }
}

/// What became of a command's completion.
enum Finish {
    /// Posted to the completion queue (an interrupt is due).
    Posted,
    /// Not posted (bus mastering off, or hostile mode kept it back).
    NotPosted,
    /// The completion queue cannot be written: stop processing the queue.
    Stop,
}
/// CAP.TO: ready timeout in 500 ms units.
const READY_TIMEOUT: u8 = 20;
/// CAP.DSTRD: doorbells are 4 bytes apart.
const DSTRD: u8 = 0;

/// An SSD as the accelerator sees it.
pub struct SsdHandle {
    /// SSD index (as vendor commands name it).
    pub index: u16,
    /// Shared ownership state with the SSD's own function.
    pub ownership: Arc<SsdOwnership>,
    /// The SSD's media.
    pub media: Arc<dyn Namespace>,
    /// Serial number of the SSD function.
    pub serial: String,
}

/// What kind of function a controller is.
pub enum Personality {
    /// A local SSD: a plain NVMe controller whose enablement is subject to
    /// the SSD's ownership.
    Ssd {
        /// Shared with the accelerator.
        ownership: Arc<SsdOwnership>,
    },
    /// The accelerator: vendor command set over the SSDs.
    Accelerator {
        /// Every SSD function of this dpuemu process.
        ssds: Vec<SsdHandle>,
        /// The volume families on those SSDs.
        volumes: Arc<VolumeManager>,
    },
}

/// Static configuration of a controller.
pub struct ControllerConfig {
    /// Short name for logs ("accel", "ssd0").
    pub name: String,
    /// Serial number (Identify Controller SN).
    pub serial: String,
    /// Model number (Identify Controller MN).
    pub model: String,
    /// NVM subsystem NQN.
    pub subnqn: String,
    /// I/O queue pairs offered to the host.
    pub io_queues: u16,
    /// MSI-X vectors of the function.
    pub vectors: u16,
    /// Worker threads servicing the I/O queues.
    pub workers: usize,
}

/// Command and byte counters.
#[derive(Default)]
pub struct Stats {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub flushes: AtomicU64,
    pub fua_writes: AtomicU64,
    pub write_zeroes: AtomicU64,
    pub deallocates: AtomicU64,
    pub read_bytes: AtomicU64,
    pub write_bytes: AtomicU64,
    pub errors: AtomicU64,
    pub interrupts: AtomicU64,
    pub mmio_doorbells: AtomicU64,
}

impl Stats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn encode(&self) -> nvme_shim::vendor::Statistics {
        use nvme_shim::wire::Wire;
        let get = |c: &AtomicU64| Le64::new(c.load(Ordering::Relaxed));
        let mut s = nvme_shim::vendor::Statistics::zeroed();
        s.read_commands = get(&self.reads);
        s.write_commands = get(&self.writes);
        s.flush_commands = get(&self.flushes);
        s.fua_writes = get(&self.fua_writes);
        s.write_zeroes_commands = get(&self.write_zeroes);
        s.deallocate_commands = get(&self.deallocates);
        s.read_bytes = get(&self.read_bytes);
        s.write_bytes = get(&self.write_bytes);
        s.error_completions = get(&self.errors);
        // Media bytes are reported as the host bytes: the engine does not
        // count its own media traffic yet.
        s.media_read_bytes = get(&self.read_bytes);
        s.media_write_bytes = get(&self.write_bytes);
        s.interrupts = get(&self.interrupts);
        s.mmio_doorbells = get(&self.mmio_doorbells);
        s
    }
}

/// A namespace of the controller.
pub struct NamespaceSlot {
    /// The storage.
    pub backend: Arc<dyn Namespace>,
    /// The SSD it stores data on, for the accelerator's passthrough
    /// namespace.
    pub ssd: Option<u16>,
    /// Per-namespace counters.
    pub stats: Stats,
}

struct Registers {
    cc: Cc,
    /// The CC value the controller last acted on; differs from `cc` only
    /// while the controller is hung (`hang.rs`).
    active_cc: Cc,
    csts: u32,
    aqa: u32,
    asq: u64,
    acq: u64,
    intms: u32,
}

/// Guest addresses of the shadow doorbell and EventIdx buffers.
#[derive(Clone, Copy, Debug)]
struct ShadowBuffers {
    doorbells: u64,
    event_idx: u64,
}

impl ShadowBuffers {
    fn doorbell(&self, qid: u16, kind: DoorbellKind) -> u64 {
        self.doorbells + regs::doorbell_array_offset(qid, kind, DSTRD) as u64
    }
    fn event_idx(&self, qid: u16, kind: DoorbellKind) -> u64 {
        self.event_idx + regs::doorbell_array_offset(qid, kind, DSTRD) as u64
    }
}

type SqHandle = Arc<Mutex<SubmissionQueue>>;
type CqHandle = Arc<Mutex<CompletionQueue>>;

struct QueueTable {
    /// Indexed by queue ID; entry 0 is the admin queue.
    sqs: Vec<Option<SqHandle>>,
    cqs: Vec<Option<CqHandle>>,
    shadow: Option<ShadowBuffers>,
}

struct AdminState {
    /// Current value of each feature (indexed by FID, 0..16).
    features: [u32; 16],
    /// Command IDs of outstanding Asynchronous Event Requests.
    aers: Vec<u16>,
}

struct ErrorLog {
    count: u64,
    /// Most recent last.
    entries: std::collections::VecDeque<ErrorLogEntry>,
}

/// Wakes one worker thread. `pending` is set under the mutex before
/// notifying, and the worker checks it under the same mutex before
/// sleeping, so no wakeup is lost.
#[derive(Default)]
pub struct WorkerSignal {
    pending: Mutex<bool>,
    cv: Condvar,
}

impl WorkerSignal {
    fn lock(&self) -> MutexGuard<'_, bool> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks work pending and wakes the worker.
    pub fn notify(&self) {
        *self.lock() = true;
        self.cv.notify_one();
    }

    /// Sleeps until notified (or `stop` is set); clears the pending flag.
    pub fn wait(&self, stop: &AtomicBool) {
        let mut pending = self.lock();
        while !*pending && !stop.load(Ordering::Acquire) {
            pending = self.cv.wait(pending).unwrap_or_else(|p| p.into_inner());
        }
        *pending = false;
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An NVMe-style controller.
pub struct Controller {
    /// The `Arc` this controller lives in, for work handed to other threads.
    this: Weak<Controller>,
    config: ControllerConfig,
    personality: Personality,
    /// Active namespaces by NSID. The accelerator's change as volumes come
    /// and go.
    namespaces: RwLock<BTreeMap<u32, NamespaceSlot>>,
    /// Guest memory, reached only through `bus` (Bus Master Enable).
    memory: Arc<dyn GuestMemory>,
    bus: Arc<BusMaster>,
    /// Test hook: the controller's firmware hangs (`hang.rs`).
    hang: Hang,
    /// Commands dropped without completion because bus mastering was off.
    dropped: AtomicU64,
    interrupts: Arc<dyn InterruptSink>,
    registers: Mutex<Registers>,
    queues: RwLock<QueueTable>,
    /// Last MMIO doorbell value per doorbell index (SQ tail / CQ head).
    doorbells: Vec<AtomicU32>,
    /// Per completion queue: a worker stopped because the queue was full.
    cq_stalled: Vec<AtomicBool>,
    admin: Mutex<AdminState>,
    /// Volatile Write Cache enabled (Set Features, WCE). With it off a
    /// write or Write Zeroes is durable before it completes.
    volatile_write_cache: AtomicBool,
    errors: Mutex<ErrorLog>,
    stats: Stats,
    signals: Vec<WorkerSignal>,
    stop: AtomicBool,
    /// Runs I/O commands side by side; started with the first batch of
    /// more than one command (`None`: no thread could be started).
    executor: OnceLock<Option<Executor>>,
    /// A namespace is zoned: CAP.CSS offers the I/O command sets
    /// (`controller/zoned.rs`).
    io_command_sets: bool,
    /// The host enabled all I/O command sets (CC.CSS = 110b); without
    /// them a zoned namespace is inactive.
    all_command_sets: AtomicBool,
    /// The accelerator's NVMe/TCP target as the host configures it
    /// (vendor NVMe/TCP commands, `nvmf/configure.rs`).
    nvmf: crate::nvmf::HostTarget,
    /// Bumped at every reset and enable: an admin command that ends on
    /// another thread (Remote SSD Add) posts its completion only if this
    /// is still the value it was taken under, so a late completion never
    /// lands in the admin queue of a later enable.
    admin_epoch: AtomicU64,
    /// A Remote SSD Add is running on its own thread (`vendor.rs`); a
    /// second Add or a Remove is refused meanwhile.
    remote_ssd_add_running: AtomicBool,
}

impl Controller {
    /// Creates a disabled controller. `namespaces` become NSIDs 1, 2, ...;
    /// an accelerator adds the volumes its manager opened.
    pub fn new(
        config: ControllerConfig,
        personality: Personality,
        namespaces: Vec<NamespaceSlot>,
        memory: Arc<dyn GuestMemory>,
        interrupts: Arc<dyn InterruptSink>,
    ) -> Arc<Self> {
        let mut table: BTreeMap<u32, NamespaceSlot> = namespaces
            .into_iter()
            .enumerate()
            .map(|(i, slot)| (i as u32 + 1, slot))
            .collect();
        if let Personality::Accelerator { volumes, .. } = &personality {
            let reserved: BTreeSet<u32> = table.keys().copied().collect();
            for (nsid, backend) in volumes.start(&reserved) {
                table.insert(
                    nsid,
                    NamespaceSlot {
                        backend,
                        ssd: None,
                        stats: Stats::default(),
                    },
                );
            }
        }
        let io_command_sets = table.values().any(|slot| slot.backend.zoned().is_some());
        let queues = usize::from(config.io_queues) + 1;
        let workers = config.workers.max(1);
        let mut features = [0u32; 16];
        features[usize::from(nvme_shim::opcode::feature::VOLATILE_WRITE_CACHE)] = 1;
        // Without a PCI transport nothing would ever set Bus Master Enable;
        // the vfio-user transport clears it until the host sets it.
        let bus = Arc::new(BusMaster::new(memory, true));
        Arc::new_cyclic(|this| Self {
            this: this.clone(),
            personality,
            namespaces: RwLock::new(table),
            memory: bus.clone(),
            bus,
            hang: Hang::default(),
            dropped: AtomicU64::new(0),
            interrupts,
            registers: Mutex::new(Registers {
                cc: Cc(0),
                active_cc: Cc(0),
                csts: 0,
                aqa: 0,
                asq: 0,
                acq: 0,
                intms: 0,
            }),
            queues: RwLock::new(QueueTable {
                sqs: (0..queues).map(|_| None).collect(),
                cqs: (0..queues).map(|_| None).collect(),
                shadow: None,
            }),
            doorbells: (0..2 * queues).map(|_| AtomicU32::new(0)).collect(),
            cq_stalled: (0..queues).map(|_| AtomicBool::new(false)).collect(),
            admin: Mutex::new(AdminState {
                features,
                aers: Vec::new(),
            }),
            volatile_write_cache: AtomicBool::new(true),
            errors: Mutex::new(ErrorLog {
                count: 0,
                entries: std::collections::VecDeque::new(),
            }),
            stats: Stats::default(),
            signals: (0..workers).map(|_| WorkerSignal::default()).collect(),
            stop: AtomicBool::new(false),
            executor: OnceLock::new(),
            io_command_sets,
            all_command_sets: AtomicBool::new(false),
            nvmf: crate::nvmf::HostTarget::default(),
            admin_epoch: AtomicU64::new(0),
            remote_ssd_add_running: AtomicBool::new(false),
            config,
        })
    }

    /// The controller's configuration.
    pub fn config(&self) -> &ControllerConfig {
        &self.config
    }

    /// The NVMe/TCP target the host's vendor commands configure.
    pub fn nvmf(&self) -> &crate::nvmf::HostTarget {
        &self.nvmf
    }

    /// Controller-wide counters.
    #[cfg(test)]
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The CAP register value.
    pub fn cap(&self) -> Cap {
        let cap = Cap::new(MAX_QUEUE_ENTRIES, READY_TIMEOUT, DSTRD);
        Cap(cap.0 | self.command_set_capability())
    }

    /// Current CSTS.
    #[cfg(test)]
    pub fn csts(&self) -> Csts {
        Csts(lock(&self.registers).csts)
    }

    /// Number of worker signals (worker threads the controller expects).
    pub fn workers(&self) -> usize {
        self.signals.len()
    }

    /// The signal worker `index` sleeps on.
    pub fn signal(&self, index: usize) -> Option<&WorkerSignal> {
        self.signals.get(index)
    }

    /// Follows the function's Bus Master Enable bit. Clearing it waits for
    /// guest-memory accesses in progress; from then on the controller
    /// touches no guest memory and raises no interrupt (an MSI-X message is
    /// a memory write), and commands it holds end without completion.
    pub fn set_bus_master(&self, enabled: bool) {
        let was = self.bus.set(enabled);
        if was != enabled {
            info!(
                "{}: bus mastering {}",
                self.config.name,
                if enabled { "enabled" } else { "disabled" }
            );
        }
        if enabled && !was {
            // Work held back while the device could not fetch commands.
            self.signals.iter().for_each(WorkerSignal::notify);
        }
    }

    /// Commands dropped without completion because bus mastering was off.
    #[cfg(test)]
    pub fn dropped_commands(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Guest-memory accesses refused because bus mastering was off.
    #[cfg(test)]
    pub fn refused_accesses(&self) -> u64 {
        self.bus.refused()
    }

    /// Whether this is the accelerator function.
    pub fn is_accelerator(&self) -> bool {
        matches!(self.personality, Personality::Accelerator { .. })
    }

    /// Test hook: hangs the controller's firmware, or lets it come back
    /// and catch up (see `hang.rs`).
    pub fn set_hung(&self, hung: bool) {
        let was = self.hang.set(hung);
        if was == hung {
            return;
        }
        if hung {
            warn!("{}: controller hung (test hook)", self.config.name);
            return;
        }
        warn!(
            "{}: controller back from its hang (test hook)",
            self.config.name
        );
        {
            let mut r = lock(&self.registers);
            let (old, new) = (r.active_cc, r.cc);
            self.apply_cc(&mut r, old, new);
        }
        self.process_admin();
        self.signals.iter().for_each(WorkerSignal::notify);
    }

    /// Asks every worker to exit.
    pub fn stop_workers(&self) {
        self.stop.store(true, Ordering::Release);
        self.signals.iter().for_each(WorkerSignal::notify);
    }

    /// Whether workers were asked to exit.
    pub fn stopping(&self) -> &AtomicBool {
        &self.stop
    }

    fn wake_worker_for(&self, qid: u16) {
        if qid == 0 {
            return;
        }
        let index = usize::from(qid - 1) % self.signals.len();
        if let Some(signal) = self.signals.get(index) {
            signal.notify();
        }
    }

    /// Reads BAR0. Unknown offsets and doorbells read as zero.
    pub fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        let r = lock(&self.registers);
        let cap = self.cap().0;
        for (i, byte) in data.iter_mut().enumerate() {
            let Some(at) = offset.checked_add(i as u64) else {
                *byte = 0;
                continue;
            };
            let dword = match (at & !3) as usize {
                regs::CAP => cap as u32,
                x if x == regs::CAP + 4 => (cap >> 32) as u32,
                regs::VS => regs::VERSION_1_4,
                regs::INTMS | regs::INTMC => r.intms,
                regs::CC => r.cc.0,
                regs::CSTS => r.csts,
                regs::AQA => r.aqa,
                regs::ASQ => r.asq as u32,
                x if x == regs::ASQ + 4 => (r.asq >> 32) as u32,
                regs::ACQ => r.acq as u32,
                x if x == regs::ACQ + 4 => (r.acq >> 32) as u32,
                _ => 0,
            };
            *byte = (dword >> ((at & 3) * 8)) as u8;
        }
    }

    /// Writes BAR0. Accesses are split into dwords; a partial dword is
    /// merged with the register's current value.
    pub fn mmio_write(&self, offset: u64, data: &[u8]) {
        if offset.checked_add(data.len() as u64).is_none() {
            return;
        }
        let mut at = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let base = at & !3;
            let skip = (at - base) as usize;
            let n = (4 - skip).min(rest.len());
            let mut bytes = [0u8; 4];
            if skip != 0 || n != 4 {
                if base >= regs::DOORBELL_BASE as u64 {
                    // Partial doorbell writes are meaningless; drop them.
                    at += n as u64;
                    rest = &rest[n..];
                    continue;
                }
                self.mmio_read(base, &mut bytes);
            }
            bytes[skip..skip + n].copy_from_slice(&rest[..n]);
            self.write_dword(base, u32::from_le_bytes(bytes));
            at += n as u64;
            rest = &rest[n..];
        }
    }

    fn write_dword(&self, offset: u64, value: u32) {
        let Ok(offset) = usize::try_from(offset) else {
            return;
        };
        if let Some(db) = regs::decode_doorbell(offset, DSTRD) {
            self.doorbell_write(db.qid, db.kind, value);
            return;
        }
        let mut r = lock(&self.registers);
        match offset {
            regs::INTMS => r.intms |= value,
            regs::INTMC => r.intms &= !value,
            regs::CC => self.write_cc(&mut r, Cc(value)),
            regs::AQA if !r.cc.en() => r.aqa = value & 0x0fff_0fff,
            regs::ASQ if !r.cc.en() => r.asq = r.asq & !0xffff_ffff | u64::from(value),
            x if x == regs::ASQ + 4 && !r.cc.en() => {
                r.asq = r.asq & 0xffff_ffff | u64::from(value) << 32
            }
            regs::ACQ if !r.cc.en() => r.acq = r.acq & !0xffff_ffff | u64::from(value),
            x if x == regs::ACQ + 4 && !r.cc.en() => {
                r.acq = r.acq & 0xffff_ffff | u64::from(value) << 32
            }
            _ => debug!(
                "{}: ignored write {value:#x} at {offset:#x}",
                self.config.name
            ),
        }
    }

    fn write_cc(&self, r: &mut Registers, new: Cc) {
        r.cc = new;
        if self.hang.is_hung() {
            // Recorded; acted upon when the hang ends.
            return;
        }
        let old = r.active_cc;
        self.apply_cc(r, old, new);
    }

    /// Acts on a CC change from `old` (the value last acted on) to `new`.
    fn apply_cc(&self, r: &mut Registers, old: Cc, new: Cc) {
        r.active_cc = new;
        if !old.en() && new.en() {
            self.enable(r);
        } else if old.en() && !new.en() {
            self.reset(r);
            return;
        }
        if new.en() && new.shn() != 0 && old.shn() == 0 {
            // Flushing can take long; the register write must not (the
            // client waits for it), so report "occurring" and flush in the
            // background. The host polls CSTS.SHST.
            r.csts = r.csts & !Csts::SHST_MASK | Csts::SHST_OCCURRING;
            let this = self.this.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{}-shutdown", self.config.name))
                .spawn(move || {
                    if let Some(ctrl) = this.upgrade() {
                        ctrl.finish_shutdown();
                    }
                });
            if spawned.is_err() {
                self.flush_all();
                self.release_after_shutdown();
                r.csts = r.csts & !Csts::SHST_MASK | Csts::SHST_COMPLETE;
            }
        } else if new.shn() == 0 && old.shn() != 0 {
            r.csts &= !Csts::SHST_MASK;
        }
    }

    fn finish_shutdown(&self) {
        self.flush_all();
        let mut r = lock(&self.registers);
        self.release_after_shutdown();
        if r.csts & Csts::SHST_MASK == Csts::SHST_OCCURRING {
            r.csts = r.csts & !Csts::SHST_MASK | Csts::SHST_COMPLETE;
            info!("{}: shutdown complete", self.config.name);
        }
    }

    /// A shut-down SSD function no longer holds its media: Linux's nvme
    /// driver shuts the controller down on unbind and leaves CC.EN set, and
    /// the accelerator must then be able to attach the SSD. Should the host
    /// keep submitting I/O anyway, it fails once the SSD is attached.
    fn release_after_shutdown(&self) {
        if let Personality::Ssd { ownership } = &self.personality {
            ownership.host_disable();
        }
    }

    fn enable(&self, r: &mut Registers) {
        let cc = r.cc;
        let aqa = Aqa(r.aqa);
        let name = &self.config.name;
        let fatal = |why: &str| {
            warn!("{name}: enable refused: {why}");
        };
        if let Personality::Ssd { ownership } = &self.personality {
            if !ownership.host_enable() {
                fatal("the SSD is attached to the accelerator");
                r.csts = Csts::CFS;
                return;
            }
        }
        let problem = if !self.supports_command_sets(cc.css()) {
            Some("unsupported command set")
        } else if cc.mps() != 0 {
            Some("unsupported memory page size")
        } else if aqa.sq_entries() < 2 || aqa.cq_entries() < 2 {
            Some("admin queues smaller than 2 entries")
        } else if r.asq & 0xfff != 0 || r.acq & 0xfff != 0 || r.asq == 0 || r.acq == 0 {
            Some("admin queue addresses not page aligned")
        } else if r
            .asq
            .checked_add(u64::from(aqa.sq_entries()) * 64)
            .is_none()
            || r.acq
                .checked_add(u64::from(aqa.cq_entries()) * 16)
                .is_none()
        {
            Some("admin queues wrap the address space")
        } else {
            None
        };
        if let Some(why) = problem {
            fatal(why);
            r.csts = Csts::CFS;
            if let Personality::Ssd { ownership } = &self.personality {
                ownership.host_disable();
            }
            return;
        }
        self.admin_epoch.fetch_add(1, Ordering::SeqCst);
        let mut table = self.queues.write().unwrap_or_else(|p| p.into_inner());
        table.sqs[0] = Some(Arc::new(Mutex::new(SubmissionQueue::new(
            0,
            r.asq,
            u32::from(aqa.sq_entries()),
            0,
        ))));
        let mut acq = CompletionQueue::new(0, r.acq, u32::from(aqa.cq_entries()), true, 0);
        acq.users = 1;
        table.cqs[0] = Some(Arc::new(Mutex::new(acq)));
        self.doorbells
            .iter()
            .for_each(|d| d.store(0, Ordering::Relaxed));
        self.select_command_sets(cc.css());
        r.csts = Csts::RDY;
        info!(
            "{name}: enabled (admin SQ {} entries, CQ {} entries)",
            aqa.sq_entries(),
            aqa.cq_entries()
        );
    }

    /// Controller reset (CC.EN 1 → 0, or a transport reset): deletes every
    /// queue after in-flight batches finish, forgets shadow doorbells and
    /// outstanding AERs.
    fn reset(&self, r: &mut Registers) {
        // Before the queues go: a late admin completion that sees the old
        // epoch is dropped (`post_late_admin`).
        self.admin_epoch.fetch_add(1, Ordering::SeqCst);
        self.delete_all_queues();
        self.reset_zones();
        lock(&self.admin).aers.clear();
        r.csts = 0;
        if let Personality::Ssd { ownership } = &self.personality {
            ownership.host_disable();
        }
        info!("{}: reset", self.config.name);
    }

    fn delete_all_queues(&self) {
        let (sqs, cqs) = {
            let mut table = self.queues.write().unwrap_or_else(|p| p.into_inner());
            table.shadow = None;
            let sqs: Vec<SqHandle> = table.sqs.iter_mut().filter_map(Option::take).collect();
            let cqs: Vec<CqHandle> = table.cqs.iter_mut().filter_map(Option::take).collect();
            (sqs, cqs)
        };
        // Taking each queue's lock waits for a worker's batch on it.
        for sq in sqs {
            lock(&sq).deleted = true;
        }
        for cq in cqs {
            lock(&cq).deleted = true;
        }
        self.cq_stalled
            .iter()
            .for_each(|s| s.store(false, Ordering::Relaxed));
    }

    /// Resets the controller as a transport-level reset does.
    pub fn transport_reset(&self) {
        self.hang.set(false);
        let mut r = lock(&self.registers);
        self.reset(&mut r);
        r.cc = Cc(0);
        r.active_cc = Cc(0);
    }

    /// Makes every namespace's completed writes stable.
    pub fn flush_all(&self) {
        let namespaces = self.namespaces.read().unwrap_or_else(|p| p.into_inner());
        for (nsid, ns) in namespaces.iter() {
            if let Err(e) = ns.backend.flush() {
                error!(
                    "{}: flush of namespace {nsid} failed: {e}",
                    self.config.name
                );
            }
        }
    }

    fn fatal(&self, why: &str) {
        error!("{}: controller fatal status: {why}", self.config.name);
        let mut r = lock(&self.registers);
        r.csts |= Csts::CFS;
    }

    fn doorbell_write(&self, qid: u16, kind: DoorbellKind, value: u32) {
        Stats::add(&self.stats.mmio_doorbells, 1);
        let index = regs::doorbell_index(qid, kind);
        let Some(slot) = self.doorbells.get(index) else {
            warn!(
                "{}: doorbell write for queue {qid} beyond the supported queues",
                self.config.name
            );
            return;
        };
        slot.store(value, Ordering::SeqCst);
        if self.hang.is_hung() && (qid == 0 || kind == DoorbellKind::CompletionHead) {
            // Recorded; processed when the hang ends. An I/O submission
            // doorbell still wakes a worker, which takes the command and
            // holds it in the hang, as a device whose firmware hung after
            // fetching would.
            return;
        }
        match kind {
            DoorbellKind::SubmissionTail if qid == 0 => self.process_admin(),
            DoorbellKind::SubmissionTail => self.wake_worker_for(qid),
            DoorbellKind::CompletionHead => {
                let stalled = self
                    .cq_stalled
                    .get(usize::from(qid))
                    .is_some_and(|s| s.swap(false, Ordering::SeqCst));
                if qid == 0 {
                    if stalled {
                        self.process_admin();
                    }
                } else if stalled {
                    self.signals.iter().for_each(WorkerSignal::notify);
                }
            }
        }
    }

    fn queue_pair(&self, qid: u16) -> Option<(SqHandle, CqHandle, Option<ShadowBuffers>)> {
        let table = self.queues.read().unwrap_or_else(|p| p.into_inner());
        let sq = table.sqs.get(usize::from(qid))?.as_ref()?.clone();
        let cqid = lock(&sq).cqid;
        let cq = table.cqs.get(usize::from(cqid))?.as_ref()?.clone();
        Some((sq, cq, table.shadow))
    }

    /// Processes the admin submission queue until it is empty or the admin
    /// completion queue is full.
    fn process_admin(&self) {
        // A hung controller processes no admin command; this runs on the
        // transport's thread, which must keep serving registers, so it
        // does not wait for the hang to end (`set_hung` catches up).
        if self.hang.is_hung() {
            return;
        }
        if let Some((sq, cq, _)) = self.queue_pair(0) {
            while self.process_queue(&sq, &cq, None, BATCH) {}
        }
    }

    /// Posts the `completion` of admin command `sqe`, which ended on another
    /// thread than the one that took it (Remote SSD Add), and raises the
    /// admin queue's interrupt. `epoch` is the `admin_epoch` the command was
    /// taken under: after a reset or a new enable the completion is dropped,
    /// so it never lands in a later admin queue. Bus Master Enable, the
    /// error log and a hang apply as in `finish`. Waits (on this thread,
    /// never the transport's) while the admin completion queue is full.
    /// Returns whether the completion was posted.
    fn post_late_admin(
        &self,
        epoch: u64,
        sqe: &SubmissionEntry,
        completion: queues::Completion,
    ) -> bool {
        // A hung controller posts nothing; the hang ends or the controller
        // stops (the epoch check below then sees any reset).
        self.hang.wait(&self.stop);
        loop {
            let current = self.admin_epoch.load(Ordering::SeqCst) == epoch;
            let Some((sq, cq, _)) = self.queue_pair(0).filter(|_| current) else {
                break;
            };
            // The admin SQ's lock first, then the CQ's: the order
            // `process_queue` takes them in. Holding the SQ lock keeps
            // `process_admin` from posting meanwhile and a reset from
            // deleting the queues under us.
            let sq = lock(&sq);
            if sq.deleted || self.admin_epoch.load(Ordering::SeqCst) != epoch {
                break;
            }
            if !self.cq_has_room(&cq, None, 0) {
                drop(sq);
                if lock(&cq).deleted || self.stop.load(Ordering::Acquire) {
                    break;
                }
                // The host frees entries soon; this thread may wait.
                std::thread::sleep(std::time::Duration::from_millis(5));
                continue;
            }
            let posted = matches!(self.finish(0, &sq, &cq, sqe, completion, 0), Finish::Posted);
            drop(sq);
            if posted {
                self.raise(&cq);
            }
            return posted;
        }
        info!(
            "{}: admin cid {} ended after a controller reset: completion dropped",
            self.config.name,
            sqe.cid()
        );
        false
    }

    /// Processes the I/O submission queues of worker `worker`. Returns
    /// whether any command was processed.
    pub fn service_queues(&self, worker: usize) -> bool {
        let workers = self.signals.len();
        let pairs: Vec<_> = {
            let table = self.queues.read().unwrap_or_else(|p| p.into_inner());
            (1..table.sqs.len())
                .filter(|qid| (qid - 1) % workers == worker)
                .filter_map(|qid| {
                    let sq = table.sqs[qid].as_ref()?.clone();
                    let cqid = usize::from(lock(&sq).cqid);
                    let cq = table.cqs.get(cqid)?.as_ref()?.clone();
                    Some((sq, cq, table.shadow))
                })
                .collect()
        };
        let mut progress = false;
        for (sq, cq, shadow) in pairs {
            progress |= self.process_queue(&sq, &cq, shadow, BATCH);
        }
        progress
    }

    /// Before worker `worker` sleeps: sets every EventIdx it serves to the
    /// current shadow value, so the host's next update rings the MMIO
    /// doorbell, then re-reads the shadow doorbells. Returns `true` if work
    /// arrived in between (the worker must not sleep).
    pub fn arm_event_idx(&self, worker: usize) -> bool {
        let workers = self.signals.len();
        let (sqs, shadow) = {
            let table = self.queues.read().unwrap_or_else(|p| p.into_inner());
            let Some(shadow) = table.shadow else {
                return false;
            };
            let sqs: Vec<SqHandle> = (1..table.sqs.len())
                .filter(|qid| (qid - 1) % workers == worker)
                .filter_map(|qid| table.sqs[qid].clone())
                .collect();
            (sqs, shadow)
        };
        let mut armed = Vec::with_capacity(sqs.len());
        for sq in &sqs {
            let sq = lock(sq);
            // A queue held back by a full completion queue is woken through
            // the completion queue's doorbell instead.
            let stalled = self
                .cq_stalled
                .get(usize::from(sq.cqid))
                .is_some_and(|s| s.load(Ordering::SeqCst));
            if sq.deleted || stalled {
                continue;
            }
            let addr = shadow.doorbell(sq.qid, DoorbellKind::SubmissionTail);
            let ei = shadow.event_idx(sq.qid, DoorbellKind::SubmissionTail);
            let Ok(tail) = self.memory.read_u32(addr) else {
                continue;
            };
            if self.memory.write_u32(ei, tail).is_ok() {
                armed.push((addr, sq.tail, sq.size));
            }
        }
        fence(Ordering::SeqCst);
        armed
            .iter()
            // Only a new, valid tail is work: a hostile out-of-range value
            // must not keep the worker spinning.
            .any(|&(addr, tail, size)| {
                self.memory
                    .read_u32(addr)
                    .is_ok_and(|t| t != tail && t < size)
            })
    }

    /// Takes up to `budget` commands from `sq`, executes them and posts
    /// their completions to `cq`. Returns whether anything was processed.
    fn process_queue(
        &self,
        sq: &SqHandle,
        cq: &CqHandle,
        shadow: Option<ShadowBuffers>,
        budget: usize,
    ) -> bool {
        if !self.bus.is_enabled() {
            // Without bus mastering the controller cannot fetch commands.
            return false;
        }
        let mut sq = lock(sq);
        if sq.deleted {
            return false;
        }
        let qid = sq.qid;
        let shadow = shadow.filter(|_| qid != 0);
        let tail = match shadow {
            Some(s) => self
                .memory
                .read_u32(s.doorbell(qid, DoorbellKind::SubmissionTail))
                .ok(),
            None => self
                .doorbells
                .get(regs::doorbell_index(qid, DoorbellKind::SubmissionTail))
                .map(|d| d.load(Ordering::Acquire)),
        };
        if let Some(tail) = tail {
            if tail != sq.tail && !sq.update_tail(tail) && sq.bad_tail != Some(tail) {
                warn!(
                    "{}: SQ {qid} tail {tail} past queue size {}, ignored",
                    self.config.name, sq.size
                );
                sq.bad_tail = Some(tail);
            }
        }
        let mut processed = 0;
        let mut posted = false;
        // Completions are posted in the order the commands were taken,
        // whether they ran here or beside (`executor.rs`). `taken` counts
        // the commands with a completion to come, `next` the one to post
        // next; the ones between have their CQ entries reserved.
        let mut batch = Batch::default();
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        while !sq.is_empty() && processed < budget {
            if !self.cq_has_room(cq, shadow, batch.unposted()) {
                break;
            }
            let mut raw = [0u8; 64];
            if self.memory.read(sq.head_addr(), &mut raw).is_err() {
                if !self.bus.is_enabled() {
                    // Bus mastering went off: no fetch, and not a fault.
                    break;
                }
                self.fatal(&format!(
                    "SQ {qid} entry at {:#x} is outside guest memory",
                    sq.head_addr()
                ));
                sq.deleted = true;
                break;
            }
            sq.advance();
            processed += 1;
            if qid != 0 {
                // The command is taken: a hang holds it here.
                self.hang.wait(&self.stop);
            }
            let sqe = SubmissionEntry::from_bytes(&raw);
            let outcome = if qid == 0 {
                self.execute_admin(&sqe)
            } else if self.loses_command() {
                warn!(
                    "{}: SQ {qid} cid {} lost (test hook)",
                    self.config.name,
                    sqe.cid()
                );
                None
            } else if !sq.is_empty()
                && processed < budget
                && self.dispatch(batch.taken, sqe, &done_tx)
            {
                // More commands follow: this one runs beside them.
                batch.taken += 1;
                continue;
            } else {
                Some(self.execute_io(&sqe))
            };
            let Some(completion) = outcome else {
                continue;
            };
            batch.arrived.insert(batch.taken, (sqe, completion));
            batch.taken += 1;
            if batch.unposted() == 1 {
                // Nothing runs beside: post at once, as a serial device.
                posted |= self.post_in_order(qid, &sq, cq, &mut batch);
                if batch.stopped {
                    break;
                }
            }
        }
        // Post the rest as the commands end; what is posted while others
        // still run is signalled at once. The queue stays locked until all
        // ended, so deleting it waits for them.
        while batch.unposted() > 0 {
            if !batch.arrived.contains_key(&batch.next) {
                let Ok((index, sqe, completion)) = done_rx.recv() else {
                    // An executor thread died with its commands: the
                    // host's timeout handles them.
                    break;
                };
                batch.arrived.insert(index, (sqe, completion));
                while let Ok((index, sqe, completion)) = done_rx.try_recv() {
                    batch.arrived.insert(index, (sqe, completion));
                }
            }
            posted |= self.post_in_order(qid, &sq, cq, &mut batch);
            if posted && batch.unposted() > 0 {
                self.raise(cq);
                posted = false;
            }
        }
        if posted {
            self.raise(cq);
        }
        processed > 0
    }

    /// Posts the completions of `batch` that are next in order and have
    /// arrived. Returns whether any was posted.
    fn post_in_order(
        &self,
        qid: u16,
        sq: &SubmissionQueue,
        cq: &CqHandle,
        batch: &mut Batch,
    ) -> bool {
        let mut posted = false;
        while let Some((sqe, completion)) = batch.arrived.remove(&batch.next) {
            batch.next += 1;
            if batch.stopped {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            match self.finish(qid, sq, cq, &sqe, completion, batch.unposted()) {
                Finish::Posted => posted = true,
                Finish::NotPosted => {}
                Finish::Stop => batch.stopped = true,
            }
        }
        posted
    }

    /// Whether `cq` has room for one more completion besides the `pending`
    /// ones reserved for commands still running. When it has none, records
    /// the stall so that the host's next head update wakes the workers.
    fn cq_has_room(&self, cq: &CqHandle, shadow: Option<ShadowBuffers>, pending: usize) -> bool {
        let mut cq = lock(cq);
        if cq.deleted {
            return false;
        }
        let full = |cq: &CompletionQueue| cq.free() as usize <= pending;
        self.refresh_cq_head(&mut cq, shadow);
        if !full(&cq) {
            return true;
        }
        if pending > 0 {
            // The running commands' completions will free the worker
            // soon enough; no need to involve the host.
            return false;
        }
        // Publish the stall before looking at the head again: either this
        // re-read sees the host's new head, or the host's doorbell write
        // sees the flag and wakes us.
        let flag = self.cq_stalled.get(usize::from(cq.qid));
        if let Some(flag) = flag {
            flag.store(true, Ordering::SeqCst);
        }
        if let Some(s) = shadow {
            // Ask for an MMIO doorbell once the host consumes.
            let ei = s.event_idx(cq.qid, DoorbellKind::CompletionHead);
            let _ = self.memory.write_u32(ei, cq.head);
        }
        fence(Ordering::SeqCst);
        self.refresh_cq_head(&mut cq, shadow);
        if full(&cq) {
            return false;
        }
        if let Some(flag) = flag {
            flag.store(false, Ordering::SeqCst);
        }
        true
    }

    /// Hands I/O command `sqe`, number `index` of its batch, to the
    /// executor; its completion comes back through `done`. Returns `false`
    /// if it must run here instead.
    fn dispatch(&self, index: usize, sqe: SubmissionEntry, done: &mpsc::Sender<Done>) -> bool {
        let Some(executor) = self
            .executor
            .get_or_init(|| Executor::start(&self.config.name, PARALLEL_COMMANDS))
        else {
            return false;
        };
        let Some(ctrl) = self.this.upgrade() else {
            return false;
        };
        let done = done.clone();
        executor
            .run(Box::new(move || {
                let completion = ctrl.execute_io(&sqe);
                // The worker waits for every command it handed over.
                let _ = done.send((index, sqe, completion));
            }))
            .is_ok()
    }

    /// Posts the `completion` of `sqe`, taken from `sq` (hang, Bus Master
    /// Enable, error log and hostile mode apply); `reserved` completion
    /// entries must stay free for commands still running.
    fn finish(
        &self,
        qid: u16,
        sq: &SubmissionQueue,
        cq: &CqHandle,
        sqe: &SubmissionEntry,
        completion: queues::Completion,
        reserved: usize,
    ) -> Finish {
        if qid != 0 {
            self.hang.wait(&self.stop);
        }
        if !self.bus.is_enabled() {
            // The host cleared Bus Master Enable while the command ran:
            // it ends here, without a completion (any data transfer
            // it still needed was refused too).
            self.dropped.fetch_add(1, Ordering::Relaxed);
            info!(
                "{}: SQ {qid} cid {} dropped without DMA: bus mastering is off",
                self.config.name,
                sqe.cid()
            );
            return Finish::NotPosted;
        }
        if !completion.status.is_success() {
            self.record_error(qid, sqe, completion.status);
        }
        let mut cq = lock(cq);
        let anomaly = if qid != 0 {
            self.hostile_anomaly(&cq, reserved)
        } else {
            None
        };
        let mut completion = completion;
        match anomaly {
            Some(Anomaly::NeverComplete) => return Finish::NotPosted,
            Some(kind) if !self.inject(kind, &mut cq, &mut completion, qid, sq.head, sq.size) => {
                return Finish::Posted;
            }
            _ => {}
        }
        if let Err(e) = cq.post(&*self.memory, &completion, qid, sq.head as u16) {
            if !self.bus.is_enabled() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return Finish::Stop;
            }
            self.fatal(&format!("CQ {}: {e}", cq.qid));
            cq.deleted = true;
            return Finish::Stop;
        }
        Finish::Posted
    }

    /// The anomaly hostile mode puts on this I/O completion, if any
    /// (accelerator only; only when the completion queue has room for an
    /// extra entry and the real one besides the `reserved` ones).
    fn hostile_anomaly(&self, cq: &CompletionQueue, reserved: usize) -> Option<Anomaly> {
        if !matches!(self.personality, Personality::Accelerator { .. })
            || (cq.free() as usize) < 2 + reserved
        {
            return None;
        }
        hostile::hostile()?.draw()
    }

    /// Applies hostile mode's anomaly `kind` around the real `completion`
    /// of a command from SQ `qid` (`hostile.rs` describes each kind).
    /// Returns whether the caller still posts `completion` (false: it was
    /// posted here).
    fn inject(
        &self,
        kind: Anomaly,
        cq: &mut CompletionQueue,
        completion: &mut queues::Completion,
        qid: u16,
        sq_head: u32,
        sq_size: u32,
    ) -> bool {
        let random = hostile::hostile().map_or(0, |h| h.random());
        let mem = &*self.memory;
        let head = sq_head as u16;
        let extra = |cq: &mut CompletionQueue, c: queues::Completion, sqid: u16, head: u16| {
            let _ = cq.post(mem, &c, sqid, head);
        };
        match kind {
            // Tag 1023 is never a host tag (at most 1023 entries per
            // queue leave tags 0..=1022).
            Anomaly::WrongCid => extra(
                cq,
                queues::Completion {
                    cid: 0x3ff | ((random as u16) << 10),
                    ..*completion
                },
                qid,
                head,
            ),
            Anomaly::StaleGeneration => extra(
                cq,
                queues::Completion {
                    cid: completion.cid.wrapping_sub(1 << 10),
                    ..*completion
                },
                qid,
                head,
            ),
            Anomaly::Duplicate => extra(cq, *completion, qid, head),
            Anomaly::WrongSqId => extra(
                cq,
                *completion,
                qid.wrapping_add(1 + (random as u16 % 7)),
                head,
            ),
            Anomaly::SqHead => extra(
                cq,
                *completion,
                qid,
                (sq_size as u16).wrapping_add(random as u16 % 100),
            ),
            Anomaly::Phase => {
                // The real completion goes first; the glitch follows it.
                let _ = cq.post(mem, completion, qid, head);
                let _ = cq.flip_next_phase(mem);
                return false;
            }
            Anomaly::Status => {
                completion.status = Status::new(5 + (random as u8 & 1), random as u8)
            }
            Anomaly::IrqStorm => {
                if cq.interrupts && self.bus.is_enabled() {
                    for _ in 0..32 {
                        self.interrupts.raise(cq.vector);
                    }
                }
            }
            // Never drawn for completions (`hostile.rs`).
            Anomaly::NeverComplete | Anomaly::Identify | Anomaly::VendorPayload => {}
        }
        true
    }

    /// Whether the accelerator drops the I/O command it is taking
    /// (`lost_command` test hook; SSD functions never do).
    fn loses_command(&self) -> bool {
        matches!(self.personality, Personality::Accelerator { .. })
            && crate::lost_command::LOST_COMMANDS.take()
    }

    /// Takes the host's latest head of `cq` (shadow or MMIO doorbell).
    fn refresh_cq_head(&self, cq: &mut CompletionQueue, shadow: Option<ShadowBuffers>) {
        let head = match shadow {
            Some(s) => self
                .memory
                .read_u32(s.doorbell(cq.qid, DoorbellKind::CompletionHead))
                .ok(),
            None => self
                .doorbells
                .get(regs::doorbell_index(cq.qid, DoorbellKind::CompletionHead))
                .map(|d| d.load(Ordering::SeqCst)),
        };
        if let Some(head) = head {
            if head != cq.head && !cq.update_head(head) {
                warn!(
                    "{}: CQ {} head {head} past queue size, ignored",
                    self.config.name, cq.qid
                );
            }
        }
    }

    fn raise(&self, cq: &CqHandle) {
        let cq = lock(cq);
        // An MSI-X message is a memory write: none without bus mastering.
        if cq.interrupts && !cq.deleted && self.bus.is_enabled() {
            self.interrupts.raise(cq.vector);
            Stats::add(&self.stats.interrupts, 1);
        }
    }

    fn record_error(&self, qid: u16, sqe: &SubmissionEntry, status: Status) {
        Stats::add(&self.stats.errors, 1);
        debug!(
            "{}: SQ {qid} cid {} opcode {:#x} failed: sct {} sc {:#x}",
            self.config.name,
            sqe.cid(),
            sqe.opcode(),
            status.sct(),
            status.sc()
        );
        let mut log = lock(&self.errors);
        log.count += 1;
        let entry = ErrorLogEntry {
            error_count: Le64::new(log.count),
            sqid: Le16::new(qid),
            cid: Le16::new(sqe.cid()),
            status: Le16::new(status.0 << 1),
            parameter_location: Le16::new(ErrorLogEntry::LOCATION_UNKNOWN),
            lba: Le64::new(u64::from(sqe.cdw10.get()) | u64::from(sqe.cdw11.get()) << 32),
            nsid: Le32::new(sqe.nsid.get()),
            ..ErrorLogEntry::default()
        };
        if log.entries.len() == ERROR_LOG_ENTRIES {
            log.entries.pop_front();
        }
        log.entries.push_back(entry);
    }

    /// Identify Controller NN: the highest NSID there can be. The
    /// accelerator's namespaces come and go, so it reports its limit.
    fn namespace_count(&self) -> u32 {
        match self.personality {
            Personality::Accelerator { .. } => MAX_NSID,
            Personality::Ssd { .. } => self
                .namespaces
                .read()
                .map_or(0, |n| n.keys().next_back().copied().unwrap_or(0)),
        }
    }

    /// The backend of active namespace `nsid`.
    fn namespace(&self, nsid: u32) -> Option<Arc<dyn Namespace>> {
        let namespaces = self.namespaces.read().unwrap_or_else(|p| p.into_inner());
        namespaces
            .get(&nsid)
            .filter(|slot| self.command_set_enabled(&*slot.backend))
            .map(|slot| Arc::clone(&slot.backend))
    }
}

impl NamespaceTable for Controller {
    fn activate(&self, nsid: u32, backend: Arc<dyn Namespace>) {
        let mut namespaces = self.namespaces.write().unwrap_or_else(|p| p.into_inner());
        namespaces.insert(
            nsid,
            NamespaceSlot {
                backend,
                ssd: None,
                stats: Stats::default(),
            },
        );
    }

    fn deactivate(&self, nsid: u32) {
        let mut namespaces = self.namespaces.write().unwrap_or_else(|p| p.into_inner());
        namespaces.remove(&nsid);
    }
}
