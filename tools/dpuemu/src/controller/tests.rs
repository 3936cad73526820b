//! Drives the controller core like a host driver would, with a fake guest
//! memory, fake doorbells (direct MMIO calls) and an in-memory namespace.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nvme_shim::cqe::CompletionEntry;
use nvme_shim::dptr::SglDescriptor;
use nvme_shim::identify::{IdentifyController, IdentifyNamespace, OACS_DOORBELL_BUFFER_CONFIG};
use nvme_shim::log_page::ErrorLogEntry;
use nvme_shim::opcode::{admin, cns, io};
use nvme_shim::registers::{self as regs, Aqa, Cc, Csts, DoorbellKind};
use nvme_shim::sqe::{
    self, BlockRange, CreateIoCq, CreateIoSq, DatasetManagement, DoorbellBufferConfig, DsmRange,
    GetLogPage, Identify, SubmissionEntry,
};
use nvme_shim::status::Status;
use nvme_shim::vendor::{self, status as vs, vendor_status};
use nvme_shim::wire::{Le32, Le64, Wire};

use super::*;
use crate::guest_memory::VecMemory;
use crate::interrupts::InterruptSink;
use crate::namespace::Namespace;
use crate::ownership::SsdOwnership;
use crate::volumes::VolumeManager;

const MEM: usize = 8 << 20;
const ASQ: u64 = 0x1000;
const ACQ: u64 = 0x2000;
const ADMIN_ENTRIES: u16 = 16;
const IO_SQ: u64 = 0x40000;
const IO_CQ: u64 = 0x60000;
const SHADOW: u64 = 0x3000;
const EVENT_IDX: u64 = 0x4000;
const DATA: u64 = 0x100000;
const LIST: u64 = 0x80000;
const NS_BYTES: u64 = 4 << 20;

/// A namespace in RAM that counts flushes.
struct MemNamespace {
    bytes: Mutex<Vec<u8>>,
    flushes: AtomicU64,
}

impl MemNamespace {
    fn new(len: u64) -> Self {
        Self {
            bytes: Mutex::new(vec![0; len as usize]),
            flushes: AtomicU64::new(0),
        }
    }
}

impl Namespace for MemNamespace {
    fn size(&self) -> u64 {
        self.bytes.lock().unwrap().len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let b = self.bytes.lock().unwrap();
        buf.copy_from_slice(&b[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let mut b = self.bytes.lock().unwrap();
        b[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.deallocate(offset, len)
    }
    fn deallocate(&self, offset: u64, len: u64) -> std::io::Result<()> {
        let mut b = self.bytes.lock().unwrap();
        b[offset as usize..(offset + len) as usize].fill(0);
        Ok(())
    }
}

#[derive(Default)]
struct RecordingIrqs {
    raised: Mutex<Vec<u16>>,
}

impl InterruptSink for RecordingIrqs {
    fn raise(&self, vector: u16) {
        self.raised.lock().unwrap().push(vector);
    }
}

struct Ring {
    base: u64,
    entries: u32,
    /// SQ: tail; CQ: head.
    index: u32,
    phase: bool,
}

struct Host {
    mem: Arc<VecMemory>,
    ctrl: Arc<Controller>,
    irqs: Arc<RecordingIrqs>,
    ns: Arc<MemNamespace>,
    asq: Ring,
    acq: Ring,
    io: Vec<(u16, Ring, Ring)>,
    cid: u16,
    shadow: bool,
}

fn config(name: &str, io_queues: u16) -> ControllerConfig {
    config_with_workers(name, io_queues, 1)
}

fn config_with_workers(name: &str, io_queues: u16, workers: usize) -> ControllerConfig {
    ControllerConfig {
        name: name.into(),
        serial: format!("DPU-{name}"),
        model: "dpuemu test".into(),
        subnqn: format!("nqn.2026-11.org.dpublk:{name}"),
        io_queues,
        vectors: io_queues + 1,
        workers,
    }
}

impl Host {
    fn with_personality(personality: Personality) -> Self {
        Self::with_workers(personality, 1)
    }

    fn with_workers(personality: Personality, workers: usize) -> Self {
        let mem = Arc::new(VecMemory::new(0, MEM));
        let irqs = Arc::new(RecordingIrqs::default());
        let ns = Arc::new(MemNamespace::new(NS_BYTES));
        let slot = NamespaceSlot {
            backend: ns.clone(),
            ssd: None,
            stats: Stats::default(),
        };
        let ctrl = Controller::new(
            config_with_workers("t", 4, workers),
            personality,
            vec![slot],
            mem.clone(),
            irqs.clone(),
        );
        Host {
            mem,
            ctrl,
            irqs,
            ns,
            asq: Ring {
                base: ASQ,
                entries: ADMIN_ENTRIES.into(),
                index: 0,
                phase: true,
            },
            acq: Ring {
                base: ACQ,
                entries: ADMIN_ENTRIES.into(),
                index: 0,
                phase: true,
            },
            io: Vec::new(),
            cid: 0,
            shadow: false,
        }
    }

    fn new() -> Self {
        let mut host = Self::with_personality(Personality::Ssd {
            ownership: Arc::new(SsdOwnership::new()),
        });
        host.enable();
        host
    }

    fn write32(&self, offset: usize, value: u32) {
        self.ctrl.mmio_write(offset as u64, &value.to_le_bytes());
    }

    fn read32(&self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        self.ctrl.mmio_read(offset as u64, &mut b);
        u32::from_le_bytes(b)
    }

    fn enable(&mut self) {
        self.write32(regs::AQA, Aqa::new(ADMIN_ENTRIES, ADMIN_ENTRIES).0);
        self.ctrl.mmio_write(regs::ASQ as u64, &ASQ.to_le_bytes());
        self.ctrl.mmio_write(regs::ACQ as u64, &ACQ.to_le_bytes());
        self.write32(regs::CC, Cc::enable_default().0);
        self.asq.index = 0;
        self.acq.index = 0;
        self.acq.phase = true;
        self.io.clear();
    }

    fn next_cid(&mut self) -> u16 {
        self.cid = self.cid.wrapping_add(1);
        self.cid
    }

    fn push(mem: &VecMemory, ring: &mut Ring, sqe: &SubmissionEntry) {
        mem.write(ring.base + u64::from(ring.index) * 64, &sqe.to_bytes())
            .unwrap();
        ring.index = (ring.index + 1) % ring.entries;
    }

    fn pop(mem: &VecMemory, ring: &mut Ring) -> Option<CompletionEntry> {
        let mut b = [0u8; 16];
        mem.read(ring.base + u64::from(ring.index) * 16, &mut b)
            .unwrap();
        let cqe = CompletionEntry::from_bytes(&b);
        if cqe.phase() != ring.phase {
            return None;
        }
        ring.index += 1;
        if ring.index == ring.entries {
            ring.index = 0;
            ring.phase = !ring.phase;
        }
        Some(cqe)
    }

    /// Submits an admin command and returns its completion.
    fn admin(&mut self, sqe: SubmissionEntry) -> CompletionEntry {
        let cid = self.submit_admin(sqe);
        // Most commands complete before the doorbell write returns; a
        // scrub completes from its own thread.
        let cqe = self.wait_admin(60);
        assert_eq!(cqe.command_id(), cid);
        assert_eq!(cqe.queue(), 0);
        cqe
    }

    /// Submits an admin command without waiting for its completion;
    /// returns its CID.
    fn submit_admin(&mut self, mut sqe: SubmissionEntry) -> u16 {
        let cid = self.next_cid();
        sqe.set_cid(cid);
        Self::push(&self.mem, &mut self.asq, &sqe);
        self.write32(
            regs::doorbell_offset(0, DoorbellKind::SubmissionTail, 0),
            self.asq.index,
        );
        cid
    }

    /// Waits up to `secs` for the next admin completion and consumes it:
    /// spinning first (most completions are there already), then polling
    /// every millisecond.
    fn wait_admin(&mut self, secs: u64) -> CompletionEntry {
        let start = std::time::Instant::now();
        let cqe = loop {
            if let Some(cqe) = Self::pop(&self.mem, &mut self.acq) {
                break cqe;
            }
            let waited = start.elapsed();
            assert!(
                waited < std::time::Duration::from_secs(secs),
                "admin completion"
            );
            if waited < std::time::Duration::from_millis(10) {
                std::thread::yield_now();
            } else {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        };
        self.write32(
            regs::doorbell_offset(0, DoorbellKind::CompletionHead, 0),
            self.acq.index,
        );
        cqe
    }

    fn admin_status(&mut self, sqe: SubmissionEntry) -> Status {
        self.admin(sqe).status()
    }

    fn create_pair(&mut self, qid: u16, entries: u32) {
        let sq_base = IO_SQ + u64::from(qid) * 0x4000;
        let cq_base = IO_CQ + u64::from(qid) * 0x4000;
        let cq = CreateIoCq {
            qid,
            entries,
            base: cq_base,
            contiguous: true,
            interrupts: true,
            vector: qid,
        };
        assert_eq!(self.admin_status(cq.encode(0)), Status::SUCCESS);
        let sq = CreateIoSq {
            qid,
            entries,
            base: sq_base,
            contiguous: true,
            priority: 0,
            cqid: qid,
        };
        assert_eq!(self.admin_status(sq.encode(0)), Status::SUCCESS);
        self.io.push((
            qid,
            Ring {
                base: sq_base,
                entries,
                index: 0,
                phase: true,
            },
            Ring {
                base: cq_base,
                entries,
                index: 0,
                phase: true,
            },
        ));
    }

    /// Submits an I/O command on queue `qid`, lets the worker run, and
    /// returns the completion.
    fn io(&mut self, qid: u16, mut sqe: SubmissionEntry) -> CompletionEntry {
        let cid = self.next_cid();
        sqe.set_cid(cid);
        let shadow = self.shadow;
        let (_, sq, _) = self.io.iter_mut().find(|(q, _, _)| *q == qid).unwrap();
        Self::push(&self.mem, sq, &sqe);
        let tail = sq.index;
        if shadow {
            let off = regs::doorbell_array_offset(qid, DoorbellKind::SubmissionTail, 0) as u64;
            self.mem.write_u32(SHADOW + off, tail).unwrap();
        } else {
            self.write32(
                regs::doorbell_offset(qid, DoorbellKind::SubmissionTail, 0),
                tail,
            );
        }
        assert!(self.ctrl.service_queues(0));
        let (_, _, cq) = self.io.iter_mut().find(|(q, _, _)| *q == qid).unwrap();
        let cqe = Self::pop(&self.mem, cq).expect("I/O completion");
        let head = cq.index;
        assert_eq!(cqe.command_id(), cid);
        assert_eq!(cqe.queue(), qid);
        if shadow {
            let off = regs::doorbell_array_offset(qid, DoorbellKind::CompletionHead, 0) as u64;
            self.mem.write_u32(SHADOW + off, head).unwrap();
        } else {
            self.write32(
                regs::doorbell_offset(qid, DoorbellKind::CompletionHead, 0),
                head,
            );
        }
        cqe
    }

    fn io_status(&mut self, qid: u16, sqe: SubmissionEntry) -> Status {
        self.io(qid, sqe).status()
    }

    fn rw(&self, opcode: u8, slba: u64, blocks: u32, prp1: u64, prp2: u64) -> SubmissionEntry {
        let mut sqe = BlockRange {
            nsid: 1,
            slba,
            blocks,
            fua: false,
            deallocate: false,
        }
        .encode(opcode, 0);
        sqe.prp1.set(prp1);
        sqe.prp2.set(prp2);
        sqe
    }

    fn read_mem(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read(addr, &mut v).unwrap();
        v
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn registers_and_enable() {
    let mut host = Host::with_personality(Personality::Ssd {
        ownership: Arc::new(SsdOwnership::new()),
    });
    let mut cap = [0u8; 8];
    host.ctrl.mmio_read(regs::CAP as u64, &mut cap);
    let cap = regs::Cap(u64::from_le_bytes(cap));
    assert_eq!(cap.max_queue_entries(), MAX_QUEUE_ENTRIES);
    assert_eq!(cap.dstrd(), 0);
    assert_eq!(host.read32(regs::VS), regs::VERSION_1_4);
    assert_eq!(host.read32(regs::CSTS), 0);
    host.enable();
    assert_eq!(host.read32(regs::CSTS), Csts::RDY);
    assert_eq!(host.read32(regs::CC), Cc::enable_default().0);
    // Admin queue registers are read back, and frozen while enabled.
    assert_eq!(host.read32(regs::ASQ), ASQ as u32);
    host.write32(regs::ASQ, 0x5000);
    assert_eq!(host.read32(regs::ASQ), ASQ as u32);
    // Byte-wise partial register access.
    let mut b = [0u8; 1];
    host.ctrl.mmio_read(regs::VS as u64 + 2, &mut b);
    assert_eq!(b[0], 1);
    // Shutdown notification flushes and reports completion.
    host.write32(regs::CC, Cc::enable_default().with_shn(Cc::SHN_NORMAL).0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while Csts(host.read32(regs::CSTS)).shst() != 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "shutdown never completed"
        );
        std::thread::yield_now();
    }
    assert!(host.ns.flushes.load(Ordering::SeqCst) >= 1);
    // Reset.
    host.write32(regs::CC, 0);
    assert_eq!(host.read32(regs::CSTS), 0);
    host.enable();
    assert_eq!(host.read32(regs::CSTS), Csts::RDY);
}

#[test]
fn bad_enable_sets_fatal_status() {
    let host = Host::with_personality(Personality::Ssd {
        ownership: Arc::new(SsdOwnership::new()),
    });
    // ASQ not page aligned.
    host.write32(regs::AQA, Aqa::new(4, 4).0);
    host.ctrl
        .mmio_write(regs::ASQ as u64, &0x1010u64.to_le_bytes());
    host.ctrl.mmio_write(regs::ACQ as u64, &ACQ.to_le_bytes());
    host.write32(regs::CC, Cc::enable_default().0);
    assert_eq!(host.read32(regs::CSTS), Csts::CFS);
    host.write32(regs::CC, 0);
    assert_eq!(host.read32(regs::CSTS), 0);
    // Admin queues that would wrap the address space.
    host.write32(regs::CC, 0);
    host.write32(regs::AQA, Aqa::new(4096, 4).0);
    host.ctrl
        .mmio_write(regs::ASQ as u64, &0xffff_ffff_ffff_f000u64.to_le_bytes());
    host.write32(regs::CC, Cc::enable_default().0);
    assert_eq!(host.read32(regs::CSTS), Csts::CFS);
    host.write32(regs::CC, 0);
    // 8 KiB pages are not supported.
    host.ctrl.mmio_write(regs::ASQ as u64, &ASQ.to_le_bytes());
    host.write32(regs::CC, Cc::enable_default().0 | 1 << 7);
    assert_eq!(host.read32(regs::CSTS), Csts::CFS);
}

#[test]
fn identify_controller_and_namespace() {
    let mut host = Host::new();
    let id = Identify {
        cns: cns::CONTROLLER,
        cntid: 0,
        nsid: 0,
        prp1: DATA + 0x200,
        prp2: DATA + 0x1000,
    };
    assert_eq!(host.admin_status(id.encode(0)), Status::SUCCESS);
    let page = host.read_mem(DATA + 0x200, 4096);
    let ctrl = IdentifyController::read_from(&page).unwrap();
    assert_eq!(ctrl.vid.get(), nvme_shim::pci::VENDOR_ID);
    assert_eq!(&ctrl.sn[..6], b"DPU-t ");
    assert_ne!(ctrl.oacs.get() & OACS_DOORBELL_BUFFER_CONFIG, 0);
    assert_eq!(
        (ctrl.sqes, ctrl.cqes, ctrl.nn.get(), ctrl.mdts),
        (0x66, 0x44, 1, MDTS)
    );
    assert_eq!(
        nvme_shim::wire::c_string_bytes(&ctrl.subnqn),
        b"nqn.2026-11.org.dpublk:t"
    );

    let id = Identify {
        cns: cns::NAMESPACE,
        cntid: 0,
        nsid: 1,
        prp1: DATA,
        prp2: 0,
    };
    assert_eq!(host.admin_status(id.encode(0)), Status::SUCCESS);
    let ns = IdentifyNamespace::read_from(&host.read_mem(DATA, 4096)).unwrap();
    assert_eq!(ns.nsze.get(), NS_BYTES / 512);
    assert_eq!(ns.lba_shift(), 9);

    let id = Identify {
        cns: cns::ACTIVE_NAMESPACES,
        cntid: 0,
        nsid: 0,
        prp1: DATA,
        prp2: 0,
    };
    assert_eq!(host.admin_status(id.encode(0)), Status::SUCCESS);
    assert_eq!(host.read_mem(DATA, 8), vec![1, 0, 0, 0, 0, 0, 0, 0]);

    host.mem.write(DATA, &[0xaa; 64]).unwrap();
    let id = Identify {
        cns: cns::CONTROLLER_CSI,
        cntid: 0,
        nsid: 0,
        prp1: DATA,
        prp2: 0,
    };
    assert_eq!(host.admin_status(id.encode(0)), Status::SUCCESS);
    assert_eq!(host.read_mem(DATA, 64), vec![0u8; 64]);
    let mut other_csi = id.encode(0);
    other_csi.cdw11.set(2 << 24);
    assert_eq!(host.admin_status(other_csi), Status::INVALID_FIELD);

    let id = Identify {
        cns: cns::NAMESPACE_DESCRIPTORS,
        cntid: 0,
        nsid: 1,
        prp1: DATA,
        prp2: 0,
    };
    assert_eq!(host.admin_status(id.encode(0)), Status::SUCCESS);
    assert_eq!(host.read_mem(DATA, 2), vec![2, 16]);

    for (cns, nsid, want) in [
        (cns::NAMESPACE, 2, Status::INVALID_NAMESPACE),
        (cns::NAMESPACE, 0, Status::INVALID_NAMESPACE),
        (0x55, 0, Status::INVALID_FIELD),
    ] {
        let id = Identify {
            cns,
            cntid: 0,
            nsid,
            prp1: DATA,
            prp2: 0,
        };
        assert_eq!(host.admin_status(id.encode(0)), want);
    }
    // Identify into memory that is not guest memory.
    let id = Identify {
        cns: cns::CONTROLLER,
        cntid: 0,
        nsid: 0,
        prp1: MEM as u64 - 0x800,
        prp2: MEM as u64,
    };
    assert_eq!(host.admin_status(id.encode(0)), Status::DATA_TRANSFER_ERROR);
}

#[test]
fn features_and_queue_lifecycle() {
    let mut host = Host::new();
    let nq = sqe::Features {
        fid: 7,
        save: false,
        select: 0,
        value: sqe::number_of_queues(64, 64),
    };
    let cqe = host.admin(nq.encode(true, 0));
    assert_eq!(cqe.status(), Status::SUCCESS);
    assert_eq!(sqe::decode_number_of_queues(cqe.result.get()), (4, 4));
    let vwc = sqe::Features {
        fid: 6,
        save: false,
        select: 0,
        value: 0,
    };
    assert_eq!(host.admin(vwc.encode(false, 0)).result.get(), 1);
    let unknown = sqe::Features {
        fid: 0x77,
        save: false,
        select: 0,
        value: 0,
    };
    assert_eq!(
        host.admin_status(unknown.encode(true, 0)),
        Status::INVALID_FIELD
    );

    host.create_pair(1, 64);
    // Duplicate and out-of-range queue IDs.
    let cq = CreateIoCq {
        qid: 1,
        entries: 64,
        base: IO_CQ,
        contiguous: true,
        interrupts: true,
        vector: 1,
    };
    assert_eq!(host.admin_status(cq.encode(0)), Status::INVALID_QUEUE_ID);
    for qid in [0u16, 5, 0xffff] {
        let cq = CreateIoCq { qid, ..cq };
        assert_eq!(host.admin_status(cq.encode(0)), Status::INVALID_QUEUE_ID);
        let sq = CreateIoSq {
            qid,
            entries: 64,
            base: IO_SQ,
            contiguous: true,
            priority: 0,
            cqid: 1,
        };
        assert_eq!(host.admin_status(sq.encode(0)), Status::INVALID_QUEUE_ID);
    }
    // Queue sizes, vectors, contiguity, memory.
    let cq2 = CreateIoCq {
        qid: 2,
        entries: 64,
        base: IO_CQ + 0x40000,
        contiguous: true,
        interrupts: true,
        vector: 2,
    };
    assert_eq!(
        host.admin_status(
            CreateIoCq {
                entries: 4096,
                ..cq2
            }
            .encode(0)
        ),
        Status::INVALID_QUEUE_SIZE
    );
    assert_eq!(
        host.admin_status(CreateIoCq { entries: 1, ..cq2 }.encode(0)),
        Status::INVALID_QUEUE_SIZE
    );
    assert_eq!(
        host.admin_status(CreateIoCq { vector: 9, ..cq2 }.encode(0)),
        Status::INVALID_INTERRUPT_VECTOR
    );
    assert_eq!(
        host.admin_status(
            CreateIoCq {
                contiguous: false,
                ..cq2
            }
            .encode(0)
        ),
        Status::INVALID_FIELD
    );
    assert_eq!(
        host.admin_status(
            CreateIoCq {
                base: 1 << 40,
                ..cq2
            }
            .encode(0)
        ),
        Status::INVALID_FIELD
    );
    let wrap = CreateIoCq {
        base: 0xffff_ffff_ffff_f000,
        entries: 1024,
        ..cq2
    };
    assert_eq!(host.admin_status(wrap.encode(0)), Status::INVALID_FIELD);
    let sq_wrap = CreateIoSq {
        qid: 2,
        entries: 1024,
        base: 0xffff_ffff_ffff_f000,
        contiguous: true,
        priority: 0,
        cqid: 1,
    };
    assert_eq!(host.admin_status(sq_wrap.encode(0)), Status::INVALID_FIELD);
    let sq2 = CreateIoSq {
        qid: 2,
        entries: 64,
        base: IO_SQ + 0x40000,
        contiguous: true,
        priority: 0,
        cqid: 3,
    };
    assert_eq!(host.admin_status(sq2.encode(0)), Status::CQ_INVALID);
    assert_eq!(
        host.admin_status(CreateIoSq { cqid: 0, ..sq2 }.encode(0)),
        Status::CQ_INVALID
    );
    // A CQ with an SQ on it cannot go first.
    assert_eq!(
        host.admin_status(sqe::delete_queue(1, true, 0)),
        Status::INVALID_QUEUE_DELETION
    );
    assert_eq!(
        host.admin_status(sqe::delete_queue(1, false, 0)),
        Status::SUCCESS
    );
    assert_eq!(
        host.admin_status(sqe::delete_queue(1, false, 0)),
        Status::INVALID_QUEUE_ID
    );
    assert_eq!(
        host.admin_status(sqe::delete_queue(1, true, 0)),
        Status::SUCCESS
    );
    assert_eq!(
        host.admin_status(sqe::delete_queue(0, true, 0)),
        Status::INVALID_QUEUE_ID
    );
    // The same queue IDs can be created again.
    host.io.clear();
    host.create_pair(1, 64);
    let data = pattern(512, 3);
    host.mem.write(DATA, &data).unwrap();
    assert_eq!(
        host.io_status(1, host.rw(io::WRITE, 0, 1, DATA, 0)),
        Status::SUCCESS
    );
    // Abort and Keep Alive answer; AERs stay outstanding up to the limit.
    assert_eq!(
        host.admin(nvme_shim::sqe::Abort { sqid: 1, cid: 9 }.encode(0))
            .result
            .get(),
        1
    );
    assert_eq!(
        host.admin_status(SubmissionEntry::new(admin::KEEP_ALIVE, 0)),
        Status::SUCCESS
    );
}

#[test]
fn async_event_requests_stay_outstanding() {
    let mut host = Host::new();
    for _ in 0..AER_LIMIT {
        let cid = host.next_cid();
        Host::push(
            &host.mem,
            &mut host.asq,
            &SubmissionEntry::new(admin::ASYNC_EVENT_REQUEST, cid),
        );
    }
    host.write32(
        regs::doorbell_offset(0, DoorbellKind::SubmissionTail, 0),
        host.asq.index,
    );
    assert!(Host::pop(&host.mem, &mut host.acq).is_none());
    assert_eq!(
        host.admin_status(SubmissionEntry::new(admin::ASYNC_EVENT_REQUEST, 0)),
        Status::AER_LIMIT_EXCEEDED
    );
}

#[test]
fn read_write_with_prps() {
    let mut host = Host::new();
    host.create_pair(1, 32);
    // 8 KiB write with PRP1 at an offset: three pages through a PRP list.
    let data = pattern(8192, 7);
    let buf = DATA + 0x10000 + 0x200;
    host.mem.write(buf, &data[..4096 - 0x200]).unwrap();
    host.mem
        .write(DATA + 0x20000, &data[4096 - 0x200..8192 - 0x200])
        .unwrap();
    host.mem
        .write(DATA + 0x30000, &data[8192 - 0x200..])
        .unwrap();
    host.mem
        .write(LIST, &(DATA + 0x20000).to_le_bytes())
        .unwrap();
    host.mem
        .write(LIST + 8, &(DATA + 0x30000).to_le_bytes())
        .unwrap();
    assert_eq!(
        host.io_status(1, host.rw(io::WRITE, 100, 16, buf, LIST)),
        Status::SUCCESS
    );
    assert_eq!(
        &host.ns.bytes.lock().unwrap()[100 * 512..100 * 512 + 8192],
        &data[..]
    );
    // Read it back into two whole pages (PRP2 is a data page).
    assert_eq!(
        host.io_status(
            1,
            host.rw(io::READ, 100, 16, DATA + 0x40000, DATA + 0x50000)
        ),
        Status::SUCCESS
    );
    assert_eq!(host.read_mem(DATA + 0x40000, 4096), &data[..4096]);
    assert_eq!(host.read_mem(DATA + 0x50000, 4096), &data[4096..]);
    // 128 KiB through a 32-entry list.
    let big = pattern(128 * 1024, 9);
    for i in 0..32u64 {
        let page = DATA + 0x100000 + i * 0x2000;
        host.mem
            .write(page, &big[i as usize * 4096..(i as usize + 1) * 4096])
            .unwrap();
        if i > 0 {
            host.mem
                .write(LIST + (i - 1) * 8, &page.to_le_bytes())
                .unwrap();
        }
    }
    assert_eq!(
        host.io_status(1, host.rw(io::WRITE, 1000, 256, DATA + 0x100000, LIST)),
        Status::SUCCESS
    );
    // Read it back through a different list of scattered pages.
    for i in 1..32u64 {
        host.mem
            .write(
                LIST + 0x1000 + (i - 1) * 8,
                &(DATA + 0x400000 + i * 0x3000).to_le_bytes(),
            )
            .unwrap();
    }
    assert_eq!(
        host.io_status(
            1,
            host.rw(io::READ, 1000, 256, DATA + 0x400000, LIST + 0x1000)
        ),
        Status::SUCCESS
    );
    for i in 0..32u64 {
        let got = host.read_mem(DATA + 0x400000 + i * 0x3000, 4096);
        assert_eq!(
            got,
            &big[i as usize * 4096..(i as usize + 1) * 4096],
            "page {i}"
        );
    }
}

#[test]
fn read_write_with_sgls() {
    let mut host = Host::new();
    host.create_pair(1, 32);
    let data = pattern(4096, 1);
    host.mem.write(DATA, &data[..1000]).unwrap();
    host.mem.write(DATA + 0x8000, &data[1000..]).unwrap();
    let list = [
        SglDescriptor::data_block(DATA, 1000),
        SglDescriptor::data_block(DATA + 0x8000, 3096),
    ];
    for (i, d) in list.iter().enumerate() {
        host.mem.write(LIST + 16 * i as u64, &d.to_bytes()).unwrap();
    }
    let mut sqe = host.rw(io::WRITE, 8, 8, 0, 0);
    sqe.set_sgl1(&SglDescriptor::segment(LIST, 2, true));
    assert_eq!(host.io_status(1, sqe), Status::SUCCESS);
    // Read with a single data block descriptor.
    let mut sqe = host.rw(io::READ, 8, 8, 0, 0);
    sqe.set_sgl1(&SglDescriptor::data_block(DATA + 0x20000, 4096));
    assert_eq!(host.io_status(1, sqe), Status::SUCCESS);
    assert_eq!(host.read_mem(DATA + 0x20000, 4096), data);
    // SGL pointing outside guest memory.
    let mut sqe = host.rw(io::READ, 8, 8, 0, 0);
    sqe.set_sgl1(&SglDescriptor::data_block(MEM as u64 - 100, 4096));
    assert_eq!(host.io_status(1, sqe), Status::DATA_TRANSFER_ERROR);
    // Reserved descriptor type.
    let mut sqe = host.rw(io::READ, 8, 8, 0, 0);
    let mut bad = SglDescriptor::data_block(DATA, 4096);
    bad.sgl_id = 0xe0;
    sqe.set_sgl1(&bad);
    assert_eq!(host.io_status(1, sqe), Status::SGL_TYPE_INVALID);
}

#[test]
fn flush_fua_write_zeroes_and_deallocate() {
    let mut host = Host::new();
    host.create_pair(1, 32);
    let data = pattern(8192, 5);
    host.mem.write(DATA, &data).unwrap();
    let before = host.ns.flushes.load(Ordering::SeqCst);
    let mut fua = BlockRange {
        nsid: 1,
        slba: 0,
        blocks: 16,
        fua: true,
        deallocate: false,
    }
    .encode(io::WRITE, 0);
    fua.prp1.set(DATA);
    fua.prp2.set(DATA + 4096);
    assert_eq!(host.io_status(1, fua), Status::SUCCESS);
    assert_eq!(host.ns.flushes.load(Ordering::SeqCst), before + 1);
    assert_eq!(host.io_status(1, sqe::flush(1, 0)), Status::SUCCESS);
    assert_eq!(host.ns.flushes.load(Ordering::SeqCst), before + 2);
    assert_eq!(
        host.io_status(1, sqe::flush(0xffff_ffff, 0)),
        Status::SUCCESS
    );
    assert_eq!(host.ns.flushes.load(Ordering::SeqCst), before + 3);

    // Write Zeroes over blocks 2..4, deallocate blocks 10..12.
    let wz = BlockRange {
        nsid: 1,
        slba: 2,
        blocks: 2,
        fua: false,
        deallocate: false,
    }
    .encode(io::WRITE_ZEROES, 0);
    assert_eq!(host.io_status(1, wz), Status::SUCCESS);
    let ranges = [DsmRange {
        attributes: Le32::new(0),
        blocks: Le32::new(2),
        slba: Le64::new(10),
    }];
    host.mem.write(LIST, ranges[0].as_bytes()).unwrap();
    let mut dsm = DatasetManagement {
        nsid: 1,
        ranges: 1,
        deallocate: true,
    }
    .encode(0);
    dsm.prp1.set(LIST);
    assert_eq!(host.io_status(1, dsm), Status::SUCCESS);
    let media = host.ns.bytes.lock().unwrap()[..8192].to_vec();
    for block in 0..16 {
        let got = &media[block * 512..(block + 1) * 512];
        if (2..4).contains(&block) || (10..12).contains(&block) {
            assert!(got.iter().all(|&b| b == 0), "block {block} not zero");
        } else {
            assert_eq!(got, &data[block * 512..(block + 1) * 512], "block {block}");
        }
    }
    // A DSM range past the end fails before anything is deallocated.
    let ranges = [
        DsmRange {
            attributes: Le32::new(0),
            blocks: Le32::new(1),
            slba: Le64::new(0),
        },
        DsmRange {
            attributes: Le32::new(0),
            blocks: Le32::new(8),
            slba: Le64::new(NS_BYTES / 512 - 4),
        },
    ];
    host.mem.write(LIST, ranges[0].as_bytes()).unwrap();
    host.mem.write(LIST + 16, ranges[1].as_bytes()).unwrap();
    let mut dsm = DatasetManagement {
        nsid: 1,
        ranges: 2,
        deallocate: true,
    }
    .encode(0);
    dsm.prp1.set(LIST);
    assert_eq!(host.io_status(1, dsm), Status::LBA_OUT_OF_RANGE);
    assert_eq!(&host.ns.bytes.lock().unwrap()[..512], &data[..512]);
}

#[test]
fn write_cache_off_makes_every_write_durable() {
    let mut host = Host::new();
    host.create_pair(1, 32);
    host.mem.write(DATA, &pattern(4096, 9)).unwrap();
    let write = |host: &Host| host.rw(io::WRITE, 0, 8, DATA, 0);
    let zeroes = BlockRange {
        nsid: 1,
        slba: 8,
        blocks: 8,
        fua: false,
        deallocate: false,
    }
    .encode(io::WRITE_ZEROES, 0);
    let flushes = |host: &Host| host.ns.flushes.load(Ordering::SeqCst);
    // Cache on (the default): a plain write is not flushed.
    let before = flushes(&host);
    assert_eq!(host.io_status(1, write(&host)), Status::SUCCESS);
    assert_eq!(host.io_status(1, zeroes), Status::SUCCESS);
    assert_eq!(flushes(&host), before);
    // Cache off: each write and Write Zeroes is flushed before it completes.
    let vwc = |value| sqe::Features {
        fid: 6,
        save: false,
        select: 0,
        value,
    };
    assert_eq!(host.admin_status(vwc(0).encode(true, 0)), Status::SUCCESS);
    assert_eq!(host.admin(vwc(0).encode(false, 0)).result.get(), 0);
    assert_eq!(host.io_status(1, write(&host)), Status::SUCCESS);
    assert_eq!(flushes(&host), before + 1);
    assert_eq!(host.io_status(1, zeroes), Status::SUCCESS);
    assert_eq!(flushes(&host), before + 2);
    // Back on: no flush again.
    assert_eq!(host.admin_status(vwc(1).encode(true, 0)), Status::SUCCESS);
    assert_eq!(host.io_status(1, write(&host)), Status::SUCCESS);
    assert_eq!(flushes(&host), before + 2);
}

#[test]
fn hostile_io_gets_errors_not_panics() {
    let mut host = Host::new();
    host.create_pair(1, 8);
    let blocks = NS_BYTES / 512;
    // PRP outside guest memory, for both directions.
    assert_eq!(
        host.io_status(1, host.rw(io::READ, 0, 1, MEM as u64, 0)),
        Status::DATA_TRANSFER_ERROR
    );
    assert_eq!(
        host.io_status(1, host.rw(io::WRITE, 0, 8, u64::MAX - 0xfff, 0)),
        Status::DATA_TRANSFER_ERROR
    );
    // PRP list outside guest memory.
    assert_eq!(
        host.io_status(1, host.rw(io::READ, 0, 24, DATA, 1 << 50)),
        Status::DATA_TRANSFER_ERROR
    );
    // Misaligned PRP.
    assert_eq!(
        host.io_status(1, host.rw(io::READ, 0, 1, DATA + 1, 0)),
        Status::PRP_OFFSET_INVALID
    );
    // LBA ranges past the end, and wrapping.
    assert_eq!(
        host.io_status(1, host.rw(io::READ, blocks, 1, DATA, 0)),
        Status::LBA_OUT_OF_RANGE
    );
    assert_eq!(
        host.io_status(1, host.rw(io::WRITE, blocks - 1, 2, DATA, 0)),
        Status::LBA_OUT_OF_RANGE
    );
    assert_eq!(
        host.io_status(1, host.rw(io::READ, u64::MAX, 2, DATA, 0)),
        Status::LBA_OUT_OF_RANGE
    );
    let wz = BlockRange {
        nsid: 1,
        slba: blocks - 1,
        blocks: 2,
        fua: false,
        deallocate: true,
    }
    .encode(io::WRITE_ZEROES, 0);
    assert_eq!(host.io_status(1, wz), Status::LBA_OUT_OF_RANGE);
    // Bad namespace IDs.
    for nsid in [0u32, 2, 0xffff_fffe] {
        let mut sqe = host.rw(io::READ, 0, 1, DATA, 0);
        sqe.nsid.set(nsid);
        assert_eq!(host.io_status(1, sqe), Status::INVALID_NAMESPACE);
    }
    // Unknown opcodes, fused commands, reserved PSDT.
    assert_eq!(
        host.io_status(1, host.rw(0x7f, 0, 1, DATA, 0)),
        Status::INVALID_OPCODE
    );
    let mut fused = host.rw(io::READ, 0, 1, DATA, 0);
    fused.cdw0.set(fused.cdw0.get() | 1 << 8);
    assert_eq!(host.io_status(1, fused), Status::INVALID_FIELD);
    let mut psdt = host.rw(io::READ, 0, 1, DATA, 0);
    psdt.cdw0.set(psdt.cdw0.get() | 3 << 14);
    assert_eq!(host.io_status(1, psdt), Status::INVALID_FIELD);
    // Transfers beyond MDTS.
    let mut sqe = host.rw(io::READ, 0, 0, DATA, LIST);
    sqe.cdw12.set(4095); // 2 MiB: inside the namespace, beyond MDTS.
    assert_eq!(host.io_status(1, sqe), Status::INVALID_FIELD);
    // Admin opcodes that do not exist, and vendor opcodes on an SSD.
    assert_eq!(
        host.admin_status(SubmissionEntry::new(0x7f, 0)),
        Status::INVALID_OPCODE
    );
    assert_eq!(
        host.admin_status(vendor::ssd_command(0, true, 0)),
        Status::INVALID_OPCODE
    );
    // Admin commands with SGLs.
    let mut id = Identify {
        cns: 1,
        cntid: 0,
        nsid: 0,
        prp1: DATA,
        prp2: 0,
    }
    .encode(0);
    id.set_sgl1(&SglDescriptor::data_block(DATA, 4096));
    assert_eq!(host.admin_status(id), Status::INVALID_FIELD);
    // Everything still works afterwards.
    host.mem.write(DATA, &pattern(512, 1)).unwrap();
    assert_eq!(
        host.io_status(1, host.rw(io::WRITE, 1, 1, DATA, 0)),
        Status::SUCCESS
    );
}

#[test]
fn hostile_doorbells_are_ignored() {
    let mut host = Host::new();
    host.create_pair(1, 8);
    let sq_db = regs::doorbell_offset(1, DoorbellKind::SubmissionTail, 0);
    // A tail past the queue size is ignored: nothing is fetched.
    host.write32(sq_db, 8);
    host.write32(sq_db, 0xffff_ffff);
    assert!(!host.ctrl.service_queues(0));
    // Doorbells of queues that do not exist, or beyond the table.
    host.write32(regs::doorbell_offset(3, DoorbellKind::SubmissionTail, 0), 1);
    host.write32(
        regs::doorbell_offset(500, DoorbellKind::CompletionHead, 0),
        1,
    );
    host.write32(
        regs::doorbell_offset(0, DoorbellKind::CompletionHead, 0),
        999,
    );
    // Partial doorbell writes are dropped.
    host.ctrl.mmio_write(sq_db as u64 + 1, &[1]);
    assert!(!host.ctrl.service_queues(0));
    // The queue still works.
    assert_eq!(
        host.io_status(1, host.rw(io::READ, 0, 1, DATA, 0)),
        Status::SUCCESS
    );
    // A bad admin tail is ignored too.
    host.write32(
        regs::doorbell_offset(0, DoorbellKind::SubmissionTail, 0),
        1000,
    );
    assert_eq!(host.read32(regs::CSTS), Csts::RDY);
    let id = Identify {
        cns: 1,
        cntid: 0,
        nsid: 0,
        prp1: DATA,
        prp2: 0,
    };
    assert_eq!(host.admin_status(id.encode(0)), Status::SUCCESS);
}

#[test]
fn submission_queue_outside_memory_is_fatal() {
    let mut host = Host::with_personality(Personality::Ssd {
        ownership: Arc::new(SsdOwnership::new()),
    });
    host.write32(regs::AQA, Aqa::new(4, 4).0);
    host.ctrl
        .mmio_write(regs::ASQ as u64, &(1u64 << 40).to_le_bytes());
    host.ctrl.mmio_write(regs::ACQ as u64, &ACQ.to_le_bytes());
    host.write32(regs::CC, Cc::enable_default().0);
    assert_eq!(host.read32(regs::CSTS), Csts::RDY);
    host.write32(regs::doorbell_offset(0, DoorbellKind::SubmissionTail, 0), 1);
    assert_ne!(host.read32(regs::CSTS) & Csts::CFS, 0);
    // A reset recovers.
    host.write32(regs::CC, 0);
    host.enable();
    assert_eq!(host.read32(regs::CSTS), Csts::RDY);
    let _ = &mut host;
}

#[test]
fn random_commands_never_panic() {
    let mut host = Host::new();
    host.create_pair(1, 64);
    let mut x = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..3000 {
        let mut bytes = [0u8; 64];
        for chunk in bytes.chunks_mut(8) {
            chunk.copy_from_slice(&next().to_le_bytes());
        }
        let mut sqe = SubmissionEntry::from_bytes(&bytes);
        // Keep namespace and opcode plausible half of the time, so the
        // deeper paths are reached too.
        if round % 2 == 0 {
            sqe.nsid.set(1);
            let ops = [
                io::READ,
                io::WRITE,
                io::FLUSH,
                io::WRITE_ZEROES,
                io::DATASET_MANAGEMENT,
            ];
            sqe.cdw0
                .set(sqe.cdw0.get() & !0xff | u32::from(ops[round / 2 % ops.len()]));
            sqe.cdw12.set(sqe.cdw12.get() & 0x4000_00ff);
            sqe.cdw10.set(sqe.cdw10.get() & 0xfff);
            sqe.cdw11.set(0);
        }
        let cqe = host.io(1, sqe);
        let _ = cqe.status();
    }
    // Random admin commands; skip the ones that reconfigure the queues the
    // harness uses or leave commands outstanding.
    for _ in 0..1000 {
        let mut bytes = [0u8; 64];
        for chunk in bytes.chunks_mut(8) {
            chunk.copy_from_slice(&next().to_le_bytes());
        }
        let sqe = SubmissionEntry::from_bytes(&bytes);
        if matches!(
            sqe.opcode(),
            admin::ASYNC_EVENT_REQUEST
                | admin::DELETE_IO_SQ
                | admin::DELETE_IO_CQ
                | admin::DOORBELL_BUFFER_CONFIG
        ) {
            continue;
        }
        let _ = host.admin(sqe);
    }
    assert_eq!(host.read32(regs::CSTS), Csts::RDY);
    host.mem.write(DATA, &pattern(512, 2)).unwrap();
    assert_eq!(
        host.io_status(1, host.rw(io::WRITE, 0, 1, DATA, 0)),
        Status::SUCCESS
    );
}

#[test]
fn error_log_records_failures() {
    let mut host = Host::new();
    host.create_pair(1, 8);
    let cqe = host.io(1, host.rw(io::READ, NS_BYTES, 1, DATA, 0));
    assert_eq!(cqe.status(), Status::LBA_OUT_OF_RANGE);
    let log = GetLogPage {
        lid: 1,
        lsp: 0,
        rae: false,
        dwords: 32,
        offset: 0,
        nsid: 0,
    };
    let mut sqe = log.encode(0);
    sqe.prp1.set(DATA + 0x100);
    assert_eq!(host.admin_status(sqe), Status::SUCCESS);
    let entry = ErrorLogEntry::read_from(&host.read_mem(DATA + 0x100, 64)).unwrap();
    assert_eq!(entry.error_count.get(), 1);
    assert_eq!(entry.sqid.get(), 1);
    assert_eq!(entry.cid.get(), cqe.command_id());
    assert_eq!(entry.status.get() >> 1, Status::LBA_OUT_OF_RANGE.0);
    assert_eq!(entry.lba.get(), NS_BYTES);
    // The failed Get Log Page below becomes the newest entry.
    let bad = GetLogPage { lid: 0x42, ..log };
    let mut sqe = bad.encode(0);
    sqe.prp1.set(DATA);
    assert_eq!(host.admin_status(sqe), Status::INVALID_LOG_PAGE);
    let mut sqe = log.encode(0);
    sqe.prp1.set(DATA);
    assert_eq!(host.admin_status(sqe), Status::SUCCESS);
    let newest = ErrorLogEntry::read_from(&host.read_mem(DATA, 64)).unwrap();
    assert_eq!(newest.error_count.get(), 2);
    assert_eq!(newest.sqid.get(), 0);
    // SMART and firmware slot pages exist; offsets past the page fail.
    for lid in [2u8, 3] {
        let mut sqe = GetLogPage { lid, ..log }.encode(0);
        sqe.prp1.set(DATA);
        assert_eq!(host.admin_status(sqe), Status::SUCCESS);
    }
    let mut sqe = GetLogPage {
        lid: 2,
        offset: 4096,
        ..log
    }
    .encode(0);
    sqe.prp1.set(DATA);
    assert_eq!(host.admin_status(sqe), Status::INVALID_FIELD);
}

#[test]
fn interrupts_follow_the_cq_vector() {
    let mut host = Host::new();
    host.create_pair(2, 8);
    host.irqs.raised.lock().unwrap().clear();
    assert_eq!(
        host.io_status(2, host.rw(io::READ, 0, 1, DATA, 0)),
        Status::SUCCESS
    );
    assert_eq!(*host.irqs.raised.lock().unwrap(), vec![2]);
    let _ = host.admin(
        Identify {
            cns: 1,
            cntid: 0,
            nsid: 0,
            prp1: DATA,
            prp2: 0,
        }
        .encode(0),
    );
    assert_eq!(*host.irqs.raised.lock().unwrap(), vec![2, 0]);
}

#[test]
fn full_completion_queue_holds_commands_back() {
    let mut host = Host::new();
    host.create_pair(1, 4);
    // Three commands fill a 4-entry CQ; a fourth waits for the host.
    let (_, sq, _) = &mut host.io[0];
    for i in 0..3u16 {
        let mut sqe = sqe::flush(1, i + 100);
        sqe.set_cid(i + 100);
        Host::push(&host.mem, sq, &sqe);
    }
    let tail = sq.index;
    host.write32(
        regs::doorbell_offset(1, DoorbellKind::SubmissionTail, 0),
        tail,
    );
    assert!(host.ctrl.service_queues(0));
    let (_, sq, _) = &mut host.io[0];
    let mut sqe = sqe::flush(1, 103);
    sqe.set_cid(103);
    Host::push(&host.mem, sq, &sqe);
    let tail = sq.index;
    host.write32(
        regs::doorbell_offset(1, DoorbellKind::SubmissionTail, 0),
        tail,
    );
    assert!(!host.ctrl.service_queues(0));
    let (_, _, cq) = &mut host.io[0];
    let mut cids = Vec::new();
    while let Some(cqe) = Host::pop(&host.mem, cq) {
        cids.push(cqe.command_id());
    }
    assert_eq!(cids, vec![100, 101, 102]);
    let head = cq.index;
    host.write32(
        regs::doorbell_offset(1, DoorbellKind::CompletionHead, 0),
        head,
    );
    assert!(host.ctrl.service_queues(0));
    let (_, _, cq) = &mut host.io[0];
    assert_eq!(Host::pop(&host.mem, cq).map(|c| c.command_id()), Some(103));
}

#[test]
fn shadow_doorbells_and_event_idx() {
    let mut host = Host::new();
    host.create_pair(1, 16);
    let cfg = DoorbellBufferConfig {
        shadow: SHADOW,
        event_idx: EVENT_IDX,
    };
    assert_eq!(host.admin_status(cfg.encode(0)), Status::SUCCESS);
    assert_eq!(
        host.admin_status(
            DoorbellBufferConfig {
                shadow: SHADOW + 8,
                ..cfg
            }
            .encode(0)
        ),
        Status::INVALID_FIELD
    );
    assert_eq!(
        host.admin_status(
            DoorbellBufferConfig {
                shadow: 1 << 40,
                ..cfg
            }
            .encode(0)
        ),
        Status::INVALID_FIELD
    );
    host.shadow = true;
    let mmio_before = host.ctrl.stats().mmio_doorbells.load(Ordering::Relaxed);
    host.mem.write(DATA, &pattern(512, 4)).unwrap();
    for i in 0..40u64 {
        assert_eq!(
            host.io_status(1, host.rw(io::WRITE, i, 1, DATA, 0)),
            Status::SUCCESS
        );
    }
    // No I/O doorbell went through MMIO.
    assert_eq!(
        host.ctrl.stats().mmio_doorbells.load(Ordering::Relaxed),
        mmio_before
    );
    // Before sleeping the worker publishes EventIdx = current tail, so the
    // host's next submission must ring the MMIO doorbell.
    assert!(!host.ctrl.arm_event_idx(0));
    let sq_off = regs::doorbell_array_offset(1, DoorbellKind::SubmissionTail, 0) as u64;
    let tail = host.mem.read_u32(SHADOW + sq_off).unwrap();
    let ei = host.mem.read_u32(EVENT_IDX + sq_off).unwrap();
    assert_eq!(ei, tail);
    assert!(regs::shadow_doorbell_needs_mmio(
        ei as u16,
        (tail + 1) as u16,
        tail as u16
    ));
    // Work that arrives between arming and sleeping is noticed.
    host.mem
        .write_u32(SHADOW + sq_off, (tail + 1) % 16)
        .unwrap();
    assert!(host.ctrl.arm_event_idx(0));
    // A bad shadow value is ignored like a bad MMIO value.
    host.mem.write_u32(SHADOW + sq_off, 77).unwrap();
    assert!(!host.ctrl.service_queues(0));
    assert!(!host.ctrl.arm_event_idx(0));
    host.mem.write_u32(SHADOW + sq_off, tail).unwrap();
    // Queues created after the config start at 0 in the shadow buffer.
    host.create_pair(2, 16);
    let off2 = regs::doorbell_array_offset(2, DoorbellKind::SubmissionTail, 0) as u64;
    assert_eq!(host.mem.read_u32(SHADOW + off2).unwrap(), 0);
    assert_eq!(
        host.io_status(2, host.rw(io::READ, 0, 1, DATA + 0x1000, 0)),
        Status::SUCCESS
    );
    assert_eq!(host.read_mem(DATA + 0x1000, 512), pattern(512, 4));
    // A reset forgets the shadow buffers: MMIO doorbells work again.
    host.write32(regs::CC, 0);
    host.enable();
    host.shadow = false;
    host.create_pair(1, 16);
    assert_eq!(
        host.io_status(1, host.rw(io::READ, 0, 1, DATA, 0)),
        Status::SUCCESS
    );
}

fn accelerator_with_ssd() -> (Host, Arc<SsdOwnership>, Arc<Controller>) {
    let ownership = Arc::new(SsdOwnership::new());
    let media: Arc<dyn Namespace> = Arc::new(MemNamespace::new(1 << 20));
    let ssd = SsdHandle {
        index: 0,
        ownership: ownership.clone(),
        media: media.clone(),
        serial: "SSD0".into(),
    };
    let volumes = Arc::new(VolumeManager::open(std::slice::from_ref(&ssd)));
    let mut host = Host::with_personality(Personality::Accelerator {
        ssds: vec![ssd],
        volumes,
    });
    host.enable();
    let ssd_mem = Arc::new(VecMemory::new(0, MEM));
    let ssd_ctrl = Controller::new(
        config("ssd0", 2),
        Personality::Ssd {
            ownership: ownership.clone(),
        },
        vec![NamespaceSlot {
            backend: media,
            ssd: None,
            stats: Stats::default(),
        }],
        ssd_mem,
        Arc::new(RecordingIrqs::default()),
    );
    (host, ownership, ssd_ctrl)
}

fn enable_other(ctrl: &Controller) -> u32 {
    ctrl.mmio_write(regs::AQA as u64, &Aqa::new(4, 4).0.to_le_bytes());
    ctrl.mmio_write(regs::ASQ as u64, &ASQ.to_le_bytes());
    ctrl.mmio_write(regs::ACQ as u64, &ACQ.to_le_bytes());
    ctrl.mmio_write(regs::CC as u64, &Cc::enable_default().0.to_le_bytes());
    ctrl.csts().0
}

#[test]
fn ssd_ownership_between_functions() {
    let (mut host, ownership, ssd) = accelerator_with_ssd();
    // The host's nvme driver has the SSD enabled: attach is refused.
    assert_eq!(enable_other(&ssd), Csts::RDY);
    assert_eq!(
        host.admin_status(vendor::ssd_command(0, true, 0)),
        vendor_status(vs::SSD_BUSY)
    );
    assert_eq!(
        host.admin_status(vendor::ssd_command(7, true, 0)),
        vendor_status(vs::SSD_NOT_FOUND)
    );
    let mut bad = vendor::ssd_command(0, true, 0);
    bad.cdw10.set(1 << 16);
    assert_eq!(host.admin_status(bad), Status::INVALID_FIELD);
    // The host disables it; attach succeeds; the SSD then refuses to become
    // ready.
    ssd.mmio_write(regs::CC as u64, &0u32.to_le_bytes());
    assert_eq!(
        host.admin_status(vendor::ssd_command(0, true, 0)),
        Status::SUCCESS
    );
    assert!(ownership.view().attached);
    assert_eq!(enable_other(&ssd), Csts::CFS);
    ssd.mmio_write(regs::CC as u64, &0u32.to_le_bytes());
    // The SSD list shows it attached.
    let mut list = SubmissionEntry::new(vendor::opcode::SSD_LIST, 0);
    list.prp1.set(DATA);
    list.prp2.set(0);
    assert_eq!(host.admin_status(list), Status::SUCCESS);
    let got = vendor::SsdList::read_from(&host.read_mem(DATA, 4096)).unwrap();
    assert_eq!(got.count.get(), 1);
    assert_eq!(got.entries[0].state, vendor::SSD_STATE_ATTACHED);
    assert_eq!(got.entries[0].capacity_bytes.get(), 1 << 20);
    assert_eq!(&got.entries[0].serial[..4], b"SSD0");
    // Detach gives it back.
    assert_eq!(
        host.admin_status(vendor::ssd_command(0, false, 0)),
        Status::SUCCESS
    );
    assert_eq!(
        host.admin_status(vendor::ssd_command(0, false, 0)),
        vendor_status(vs::SSD_NOT_ATTACHED)
    );
    assert_eq!(enable_other(&ssd), Csts::RDY);
}

#[test]
fn vendor_commands_on_the_accelerator() {
    let (mut host, _ownership, _ssd) = accelerator_with_ssd();
    host.create_pair(1, 8);
    host.mem.write(DATA, &pattern(4096, 8)).unwrap();
    assert_eq!(
        host.io_status(1, host.rw(io::WRITE, 0, 8, DATA, 0)),
        Status::SUCCESS
    );
    let mut stats = SubmissionEntry::new(vendor::opcode::STATISTICS, 0);
    stats.prp1.set(DATA + 0x1000);
    assert_eq!(host.admin_status(stats), Status::SUCCESS);
    let s = vendor::Statistics::read_from(&host.read_mem(DATA + 0x1000, 512)).unwrap();
    assert_eq!(s.write_commands.get(), 1);
    assert_eq!(s.write_bytes.get(), 4096);
    stats.nsid.set(1);
    assert_eq!(host.admin_status(stats), Status::SUCCESS);
    stats.nsid.set(9);
    assert_eq!(
        host.admin_status(stats),
        vendor_status(vs::VOLUME_NOT_FOUND)
    );
    let mut vl = SubmissionEntry::new(vendor::opcode::VOLUME_LIST, 0);
    vl.prp1.set(DATA + 0x2000);
    assert_eq!(host.admin_status(vl), Status::SUCCESS);
    let list = vendor::VolumeList::read_from(&host.read_mem(DATA + 0x2000, 4096)).unwrap();
    assert_eq!(list.count.get(), 1);
    assert_eq!(list.entries[0].size_bytes.get(), NS_BYTES);
    // The volume commands answer for objects that do not exist (the
    // volume tests in volume_tests.rs cover them in full).
    for (op, want) in [
        (vendor::opcode::VOLUME_DELETE, vs::VOLUME_NOT_FOUND),
        (vendor::opcode::VOLUME_RESIZE, vs::VOLUME_NOT_FOUND),
        (vendor::opcode::SNAPSHOT_DELETE, vs::SNAPSHOT_NOT_FOUND),
        (vendor::opcode::SNAPSHOT_REVERT, vs::VOLUME_NOT_FOUND),
    ] {
        let mut sqe = SubmissionEntry::new(op, 0);
        sqe.nsid.set(7);
        assert_eq!(host.admin_status(sqe), vendor_status(want), "{op:#x}");
    }
    assert_eq!(
        host.admin_status(SubmissionEntry::new(0xff, 0)),
        Status::INVALID_OPCODE
    );
}

/// One host CPU driving one I/O queue pair like Linux does: up to `depth`
/// writes in flight, shadow doorbells with the EventIdx check (or MMIO
/// doorbells), completions reaped by phase tag.
fn drive_queue(
    mem: &VecMemory,
    ctrl: &Controller,
    qid: u16,
    entries: u32,
    count: u32,
    depth: u32,
    shadow: bool,
) {
    let sq_base = IO_SQ + u64::from(qid) * 0x4000;
    let cq_base = IO_CQ + u64::from(qid) * 0x4000;
    let sq_off = regs::doorbell_array_offset(qid, DoorbellKind::SubmissionTail, 0) as u64;
    let cq_off = regs::doorbell_array_offset(qid, DoorbellKind::CompletionHead, 0) as u64;
    let ring = |kind: DoorbellKind, off: u64, old: u32, new: u32| {
        if shadow {
            mem.write_u32(SHADOW + off, new).unwrap();
            std::sync::atomic::fence(Ordering::SeqCst);
            let ei = mem.read_u32(EVENT_IDX + off).unwrap();
            if !regs::shadow_doorbell_needs_mmio(ei as u16, new as u16, old as u16) {
                return;
            }
        }
        ctrl.mmio_write(
            regs::doorbell_offset(qid, kind, 0) as u64,
            &new.to_le_bytes(),
        );
    };
    let (mut tail, mut head, mut phase) = (0u32, 0u32, true);
    let (mut submitted, mut completed) = (0u32, 0u32);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while completed < count {
        while submitted < count && submitted - completed < depth {
            let slot = u64::from(submitted % depth);
            let buf = DATA + u64::from(qid) * 0x100000 + slot * 4096;
            mem.write(buf, &pattern(512, (submitted as u8) ^ (qid as u8)))
                .unwrap();
            let lba = u64::from(qid) * 2000 + u64::from(submitted);
            let mut sqe = BlockRange {
                nsid: 1,
                slba: lba,
                blocks: 1,
                fua: false,
                deallocate: false,
            }
            .encode(io::WRITE, submitted as u16);
            sqe.prp1.set(buf);
            mem.write(sq_base + u64::from(tail) * 64, &sqe.to_bytes())
                .unwrap();
            let old = tail;
            tail = (tail + 1) % entries;
            ring(DoorbellKind::SubmissionTail, sq_off, old, tail);
            submitted += 1;
        }
        let mut b = [0u8; 16];
        mem.read(cq_base + u64::from(head) * 16, &mut b).unwrap();
        let cqe = CompletionEntry::from_bytes(&b);
        if cqe.phase() != phase {
            assert!(
                std::time::Instant::now() < deadline,
                "queue {qid} stalled at {completed}/{count}"
            );
            std::thread::yield_now();
            continue;
        }
        assert_eq!(cqe.status(), Status::SUCCESS);
        assert_eq!(cqe.command_id(), completed as u16);
        completed += 1;
        let old = head;
        head += 1;
        if head == entries {
            head = 0;
            phase = !phase;
        }
        ring(DoorbellKind::CompletionHead, cq_off, old, head);
    }
}

fn stress(shadow: bool) {
    let mut host = Host::with_workers(
        Personality::Ssd {
            ownership: Arc::new(SsdOwnership::new()),
        },
        2,
    );
    host.enable();
    let entries = 16;
    for qid in 1..=3 {
        host.create_pair(qid, entries);
    }
    if shadow {
        let cfg = DoorbellBufferConfig {
            shadow: SHADOW,
            event_idx: EVENT_IDX,
        };
        assert_eq!(host.admin_status(cfg.encode(0)), Status::SUCCESS);
    }
    let workers = crate::worker::spawn(&host.ctrl);
    let count = 1500;
    std::thread::scope(|scope| {
        for qid in 1..=3u16 {
            let (mem, ctrl) = (&*host.mem, &*host.ctrl);
            scope.spawn(move || drive_queue(mem, ctrl, qid, entries, count, 8, shadow));
        }
    });
    host.ctrl.stop_workers();
    for w in workers {
        w.join().unwrap();
    }
    let media = host.ns.bytes.lock().unwrap();
    for qid in 1..=3u32 {
        for i in 0..count {
            let lba = (qid * 2000 + i) as usize;
            assert_eq!(
                &media[lba * 512..(lba + 1) * 512],
                &pattern(512, (i as u8) ^ (qid as u8))[..],
                "queue {qid} write {i}"
            );
        }
    }
}

#[test]
fn worker_threads_with_shadow_doorbells_lose_no_wakeup() {
    stress(true);
}

#[test]
fn worker_threads_with_mmio_doorbells_lose_no_wakeup() {
    stress(false);
}

#[test]
fn random_register_writes_never_panic() {
    let mut host = Host::new();
    host.create_pair(1, 8);
    let mut x = 0x0123_4567_89ab_cdefu64;
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let offset = x % 0x4000;
        let len = 1 + (x >> 20) as usize % 8;
        let bytes = (x >> 24).to_le_bytes();
        if x & 1 == 0 {
            host.ctrl.mmio_write(offset, &bytes[..len]);
        } else {
            let mut out = [0u8; 8];
            host.ctrl.mmio_read(offset, &mut out[..len]);
        }
        let _ = host.ctrl.service_queues(0);
    }
    host.ctrl.mmio_write(u64::MAX - 2, &[1, 2, 3, 4]);
    let mut out = [0u8; 8];
    host.ctrl.mmio_read(u64::MAX - 2, &mut out);
}

#[test]
fn shutdown_releases_the_ssd_for_the_accelerator() {
    let ownership = Arc::new(SsdOwnership::new());
    let mut host = Host::with_personality(Personality::Ssd {
        ownership: ownership.clone(),
    });
    host.enable();
    host.create_pair(1, 8);
    host.mem.write(DATA, &pattern(512, 6)).unwrap();
    assert_eq!(
        host.io_status(1, host.rw(io::WRITE, 0, 1, DATA, 0)),
        Status::SUCCESS
    );
    assert!(ownership.view().host_enabled);
    assert_eq!(ownership.attach(), Err(vs::SSD_BUSY));
    // Unbinding Linux's nvme driver: shutdown notification, CC.EN stays 1.
    host.write32(regs::CC, Cc::enable_default().with_shn(Cc::SHN_NORMAL).0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while Csts(host.read32(regs::CSTS)).shst() != 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "shutdown never completed"
        );
        std::thread::yield_now();
    }
    assert_eq!(ownership.attach(), Ok(()));
    // A host that keeps going gets errors, and the media is untouched.
    host.mem.write(DATA, &pattern(512, 7)).unwrap();
    assert_eq!(
        host.io_status(1, host.rw(io::WRITE, 0, 1, DATA, 0)),
        Status::NAMESPACE_NOT_READY
    );
    assert_eq!(&host.ns.bytes.lock().unwrap()[..512], &pattern(512, 6)[..]);
    // Re-binding fails while attached, works after detach.
    host.write32(regs::CC, 0);
    host.enable();
    assert_eq!(host.read32(regs::CSTS), Csts::CFS);
    host.write32(regs::CC, 0);
    assert_eq!(ownership.detach(), Ok(()));
    host.enable();
    assert_eq!(host.read32(regs::CSTS), Csts::RDY);
}

mod bus_master_tests;
mod volume_tests;
mod zoned_tests;

/// An accelerator with SSD 0 in RAM and one reserved remote SSD index, 1,
/// that Remote SSD Add fills.
fn accelerator_with_remote_slot() -> (Host, Arc<SsdOwnership>) {
    use crate::nvmf::{RemoteSlot, RemoteSlots, RemoteSsdPolicy, SlotHandle};
    let local = SsdHandle {
        index: 0,
        ownership: Arc::new(SsdOwnership::new()),
        media: Arc::new(MemNamespace::new(1 << 20)),
        serial: "SSD0".into(),
    };
    let slot = SlotHandle {
        index: 1,
        ownership: Arc::new(SsdOwnership::new()),
        slot: Arc::new(RemoteSlot::default()),
    };
    let remote = SsdHandle {
        index: 1,
        ownership: slot.ownership.clone(),
        media: slot.slot.clone(),
        serial: "REMOTE1".into(),
    };
    let ownership = slot.ownership.clone();
    let ssds = vec![local, remote];
    let volumes = Arc::new(VolumeManager::open(&ssds));
    let weak = Arc::downgrade(&volumes);
    let mut host = Host::with_personality(Personality::Accelerator { ssds, volumes });
    host.ctrl.nvmf().install_remote_slots(RemoteSlots::new(
        vec![slot],
        weak,
        Vec::new(),
        RemoteSsdPolicy::default(),
    ));
    host.enable();
    (host, ownership)
}

/// Remote SSD Add of namespace 1 of `SHELF_NQN` at `address`, its payload
/// at `DATA + 0x3000`.
fn remote_ssd_add(host: &Host, address: std::net::SocketAddr) -> SubmissionEntry {
    let mut r = vendor::RemoteSsdAdd::zeroed();
    r.trtype = vendor::NVMF_TRTYPE_TCP;
    r.adrfam = vendor::NVMF_ADRFAM_IPV4;
    r.trsvcid.set(address.port());
    r.nsid.set(1);
    nvme_shim::wire::c_string_field(&mut r.name, b"shelf");
    nvme_shim::wire::c_string_field(&mut r.traddr, address.ip().to_string().as_bytes());
    nvme_shim::wire::c_string_field(&mut r.subnqn, SHELF_NQN.as_bytes());
    host.mem.write(DATA + 0x3000, r.as_bytes()).unwrap();
    let mut sqe = SubmissionEntry::new(vendor::opcode::REMOTE_SSD_ADD, 0);
    sqe.prp1.set(DATA + 0x3000);
    sqe
}

const SHELF_NQN: &str = "nqn.2026-12.org.dpublk:ctrl-shelf";

impl Host {
    /// Waits until no Remote SSD Add runs any more.
    fn wait_remote_ssd_add(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.ctrl.remote_ssd_add_running.load(Ordering::SeqCst) {
            assert!(std::time::Instant::now() < deadline, "Remote SSD Add ends");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

#[test]
fn remote_ssd_add_to_a_silent_remote_stalls_no_register_and_no_io() {
    let (mut host, ownership) = accelerator_with_remote_slot();
    host.create_pair(1, 8);
    // It accepts (the kernel's backlog) and never answers the ICReq.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = silent.local_addr().expect("address");
    let add = remote_ssd_add(&host, address);
    let started = std::time::Instant::now();
    let cid = host.submit_admin(add);
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    assert!(Host::pop(&host.mem, &mut host.acq).is_none(), "outstanding");

    // Registers, the other admin commands and I/O go on meanwhile.
    let started = std::time::Instant::now();
    assert_eq!(host.read32(regs::CSTS), Csts::RDY);
    host.mem.write(DATA, &pattern(4096, 3)).unwrap();
    assert_eq!(
        host.io_status(1, host.rw(io::WRITE, 0, 8, DATA, 0)),
        Status::SUCCESS
    );
    assert_eq!(
        host.io_status(1, host.rw(io::READ, 0, 8, DATA + 0x1000, 0)),
        Status::SUCCESS
    );
    assert_eq!(host.read_mem(DATA + 0x1000, 4096), pattern(4096, 3));
    let mut queues = SubmissionEntry::new(admin::GET_FEATURES, 0);
    queues
        .cdw10
        .set(u32::from(nvme_shim::opcode::feature::NUMBER_OF_QUEUES));
    assert_eq!(host.admin_status(queues), Status::SUCCESS);
    // One Add at a time, and no Remove while it runs.
    assert_eq!(
        host.admin_status(remote_ssd_add(&host, address)),
        vendor::vendor_status(vendor::status::SSD_BUSY)
    );
    let mut remove = SubmissionEntry::new(vendor::opcode::REMOTE_SSD_REMOVE, 0);
    remove.cdw10.set(1);
    assert_eq!(
        host.admin_status(remove),
        vendor::vendor_status(vendor::status::SSD_BUSY)
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(1));

    // The Add ends with the connection timeout, from its own thread.
    let vectors = host.irqs.raised.lock().unwrap().len();
    let cqe = host.wait_admin(30);
    assert_eq!(cqe.command_id(), cid);
    assert_eq!(cqe.queue(), 0);
    assert_eq!(cqe.status(), vendor_status(vs::REMOTE_UNREACHABLE));
    assert!(host.irqs.raised.lock().unwrap()[vectors..].contains(&0));
    host.wait_remote_ssd_add();
    assert!(host.ctrl.nvmf().is_empty_remote_slot(1));
    assert!(!ownership.view().attached);
    drop(silent);
}

/// Forwards one connection to `to` once `gate` says so: a remote that
/// answers late. The counter is the bytes the remote answered with.
fn late_forwarder(
    to: std::net::SocketAddr,
) -> (std::net::SocketAddr, mpsc::Sender<()>, Arc<AtomicU64>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    let (gate, open) = mpsc::channel::<()>();
    let answered = Arc::new(AtomicU64::new(0));
    let counter = answered.clone();
    std::thread::spawn(move || {
        let Ok((client, _)) = listener.accept() else {
            return;
        };
        if open.recv().is_err() {
            return;
        }
        let Ok(server) = std::net::TcpStream::connect(to) else {
            return;
        };
        let pipe = |mut from: std::net::TcpStream,
                    mut to: std::net::TcpStream,
                    count: Option<Arc<AtomicU64>>| {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = from.read(&mut buf) {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    if let Some(c) = &count {
                        c.fetch_add(n as u64, Ordering::SeqCst);
                    }
                }
                let _ = to.shutdown(std::net::Shutdown::Both);
            })
        };
        if let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) {
            pipe(c, server, None);
            pipe(s, client, Some(counter));
        }
    });
    (address, gate, answered)
}

#[test]
fn remote_ssd_add_completes_late_and_a_reset_drops_its_completion() {
    let dir = std::env::temp_dir().join(format!("dpuemu-ctrl-remote-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let text = format!(
        "[port 1]\nservice 0\n[subsystem {SHELF_NQN}]\nports 1\nallow-any-host\n\
         namespace 1 file {}/remote.img 16M\n",
        dir.display()
    );
    let shelf =
        crate::nvmf::Target::start(&crate::nvmf::config::parse(&text).expect("config"), &[])
            .expect("shelf target");
    let address = shelf.ports()[0].address;
    let (mut host, ownership) = accelerator_with_remote_slot();

    // A remote that answers: DW0 is the new SSD's index.
    let cid = host.submit_admin(remote_ssd_add(&host, address));
    let cqe = host.wait_admin(30);
    assert_eq!(cqe.command_id(), cid);
    assert_eq!(cqe.status(), Status::SUCCESS);
    assert_eq!(cqe.result.get(), 1);
    assert!(ownership.view().attached);
    assert!(!host.ctrl.nvmf().is_empty_remote_slot(1));
    host.wait_remote_ssd_add();
    let mut remove = SubmissionEntry::new(vendor::opcode::REMOTE_SSD_REMOVE, 0);
    remove.cdw10.set(1);
    assert_eq!(host.admin_status(remove), Status::SUCCESS);
    assert!(host.ctrl.nvmf().is_empty_remote_slot(1));

    // The host resets the controller while the Add connects; the remote
    // answers afterwards. The completion is not written to the new admin
    // queue, and the SSD is removed again.
    let (late, gate, answered) = late_forwarder(address);
    host.submit_admin(remote_ssd_add(&host, late));
    host.write32(regs::CC, 0);
    assert_eq!(host.read32(regs::CSTS) & Csts::RDY, 0);
    host.mem
        .write(ACQ, &[0u8; 16 * ADMIN_ENTRIES as usize])
        .unwrap();
    host.enable();
    assert_eq!(host.read32(regs::CSTS), Csts::RDY);
    gate.send(()).expect("the late remote");
    host.wait_remote_ssd_add();
    // The remote did answer: the Add succeeded and was undone.
    assert!(answered.load(Ordering::SeqCst) > 0);
    assert!(
        Host::pop(&host.mem, &mut host.acq).is_none(),
        "no late completion"
    );
    assert!(host.ctrl.nvmf().is_empty_remote_slot(1));
    assert!(!ownership.view().attached);
    // The new admin queue works, and the index can be added again.
    let cid = host.submit_admin(remote_ssd_add(&host, address));
    let cqe = host.wait_admin(30);
    assert_eq!(cqe.command_id(), cid);
    assert_eq!((cqe.status(), cqe.result.get()), (Status::SUCCESS, 1));
    host.wait_remote_ssd_add();
    assert_eq!(host.admin_status(remove), Status::SUCCESS);
    shelf.shut_down();
    let _ = std::fs::remove_dir_all(&dir);
}
