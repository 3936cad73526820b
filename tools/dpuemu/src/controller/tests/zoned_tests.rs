//! A zoned SSD function driven through its queues as Linux's nvme driver
//! drives it: capabilities and command set selection, the command-set
//! Identify structures and effects log, zone commands, Zone Append's
//! completion, and hostile fields.

use crate::zoned::status::*;
use crate::zoned::{ZoneConfig, ZoneState, ZonedNamespace};

use super::super::zoned::{cns as zcns, csi, opcode as zop};
use super::*;

/// CC with all I/O command sets selected.
fn cc_all_command_sets() -> Cc {
    Cc(Cc::enable_default().0 | 0b110 << 4)
}

fn zone_config() -> ZoneConfig {
    // 256 KiB zones (512 blocks), 192 KiB writable; 2 open, 3 active.
    ZoneConfig {
        zone_bytes: 256 << 10,
        capacity_bytes: 192 << 10,
        max_open: 2,
        max_active: 3,
    }
}

/// A host in front of an SSD function whose namespace is zoned, enabled
/// with CC.CSS = 110b and one I/O queue pair.
fn zoned_host() -> (Host, Arc<ZonedNamespace>) {
    let mem = Arc::new(VecMemory::new(0, MEM));
    let irqs = Arc::new(RecordingIrqs::default());
    let media = Arc::new(MemNamespace::new(NS_BYTES));
    let zoned = Arc::new(ZonedNamespace::open("t", media.clone(), &zone_config()).unwrap());
    let ctrl = Controller::new(
        config("zns", 4),
        Personality::Ssd {
            ownership: Arc::new(SsdOwnership::new()),
        },
        vec![NamespaceSlot {
            backend: zoned.clone(),
            ssd: None,
            stats: Stats::default(),
        }],
        mem.clone(),
        irqs.clone(),
    );
    let ring = |base| Ring {
        base,
        entries: ADMIN_ENTRIES.into(),
        index: 0,
        phase: true,
    };
    let mut host = Host {
        mem,
        ctrl,
        irqs,
        ns: media,
        asq: ring(ASQ),
        acq: ring(ACQ),
        io: Vec::new(),
        cid: 0,
        shadow: false,
    };
    host.write32(regs::AQA, Aqa::new(ADMIN_ENTRIES, ADMIN_ENTRIES).0);
    host.ctrl.mmio_write(regs::ASQ as u64, &ASQ.to_le_bytes());
    host.ctrl.mmio_write(regs::ACQ as u64, &ACQ.to_le_bytes());
    host.write32(regs::CC, cc_all_command_sets().0);
    assert_eq!(host.read32(regs::CSTS), Csts::RDY);
    host.create_pair(1, 16);
    (host, zoned)
}

fn cap(host: &Host) -> u64 {
    let mut b = [0u8; 8];
    host.ctrl.mmio_read(regs::CAP as u64, &mut b);
    u64::from_le_bytes(b)
}

fn identify(host: &mut Host, cns: u8, csi: u8, nsid: u32) -> (Status, Vec<u8>) {
    let mut sqe = Identify {
        cns,
        cntid: 0,
        nsid,
        prp1: DATA,
        prp2: 0,
    }
    .encode(0);
    sqe.cdw11.set(u32::from(csi) << 24);
    host.mem.write(DATA, &[0xa5; 4096]).unwrap();
    let status = host.admin_status(sqe);
    (status, host.read_mem(DATA, 4096))
}

fn effects_log(host: &mut Host, csi: u8) -> (Status, Vec<u8>) {
    let mut sqe = GetLogPage {
        lid: 0x05,
        lsp: 0,
        rae: false,
        dwords: 1024,
        offset: 0,
        nsid: 0,
    }
    .encode(0);
    sqe.prp1.set(DATA);
    sqe.cdw14.set(u32::from(csi) << 24);
    host.mem.write(DATA, &[0xa5; 4096]).unwrap();
    let status = host.admin_status(sqe);
    (status, host.read_mem(DATA, 4096))
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Zone Management Send.
fn zms(slba: u64, action: u8, select_all: bool) -> SubmissionEntry {
    let mut sqe = SubmissionEntry::new(zop::ZONE_MANAGEMENT_SEND, 0);
    sqe.nsid.set(1);
    sqe.cdw10.set(slba as u32);
    sqe.cdw11.set((slba >> 32) as u32);
    sqe.cdw13
        .set(u32::from(action) | u32::from(select_all) << 8);
    sqe
}

/// Zone Management Receive (Report Zones) into DATA.
fn zmr(slba: u64, bytes: u32, filter: u8, partial: bool) -> SubmissionEntry {
    let mut sqe = SubmissionEntry::new(zop::ZONE_MANAGEMENT_RECEIVE, 0);
    sqe.nsid.set(1);
    sqe.prp1.set(DATA);
    sqe.prp2.set(DATA + 4096);
    sqe.cdw10.set(slba as u32);
    sqe.cdw11.set((slba >> 32) as u32);
    sqe.cdw12.set(bytes / 4 - 1);
    sqe.cdw13
        .set(u32::from(filter) << 8 | u32::from(partial) << 16);
    sqe
}

#[test]
fn zoned_function_capabilities() {
    let (mut host, zoned) = zoned_host();
    // CAP.CSS: NVM and the I/O command sets.
    let c = cap(&host);
    assert_ne!(c & regs::Cap::CSS_NVM, 0);
    assert_ne!(c & 1 << 43, 0);
    // Identify Controller: the effects log is there (LPA bit 1).
    let (s, id) = identify(&mut host, cns::CONTROLLER, 0, 0);
    assert_eq!(s, Status::SUCCESS);
    let id = IdentifyController::read_from(&id).unwrap();
    assert_ne!(id.lpa & 2, 0);
    // The descriptor list names the command set: NGUID, then CSI 2.
    let (s, d) = identify(&mut host, cns::NAMESPACE_DESCRIPTORS, 0, 1);
    assert_eq!(s, Status::SUCCESS);
    assert_eq!((d[0], d[1]), (2, 16));
    assert_eq!((d[20], d[21], d[24]), (0x4, 1, csi::ZONED));
    assert_eq!(d[25], 0, "the list ends after the CSI descriptor");
    // Zoned Identify Namespace: ZOC 0, OZCS RAZB, MAR and MOR 0-based,
    // ZSZE of LBA format 0.
    let (s, ns) = identify(&mut host, zcns::NAMESPACE_CSI, csi::ZONED, 1);
    assert_eq!(s, Status::SUCCESS);
    assert_eq!((ns[0], ns[1], ns[2], ns[3]), (0, 0, 1, 0));
    assert_eq!((le32(&ns, 4), le32(&ns, 8)), (2, 1));
    assert_eq!(le64(&ns, 2816), 512);
    assert!(ns[2824..].iter().all(|&b| b == 0));
    // Zoned Identify Controller: ZASL = MDTS.
    let (s, ctrl) = identify(&mut host, zcns::CONTROLLER_CSI, csi::ZONED, 0);
    assert_eq!((s, ctrl[0]), (Status::SUCCESS, MDTS));
    // Command set vector 0: NVM and Zoned Namespace.
    let (s, sets) = identify(&mut host, zcns::IO_COMMAND_SETS, 0, 0);
    assert_eq!(
        (s, le64(&sets, 0), le64(&sets, 8)),
        (Status::SUCCESS, 0b101, 0)
    );
    // NVM-specific namespace structure of a zoned namespace, unknown sets,
    // an unknown namespace.
    assert_eq!(
        identify(&mut host, zcns::NAMESPACE_CSI, 0, 1).0,
        Status::INVALID_FIELD
    );
    assert_eq!(
        identify(&mut host, zcns::NAMESPACE_CSI, 1, 1).0,
        Status::INVALID_FIELD
    );
    assert_eq!(
        identify(&mut host, zcns::NAMESPACE_CSI, csi::ZONED, 2).0,
        Status::INVALID_NAMESPACE
    );
    // Identify Namespace sizes the namespace by its zones.
    let (_, ns) = identify(&mut host, cns::NAMESPACE, 0, 1);
    let ns = IdentifyNamespace::read_from(&ns).unwrap();
    assert_eq!(ns.nsze.get(), zoned.geometry().blocks());
    // Commands Supported and Effects: Zone Append is supported (Linux
    // makes the namespace read-only without it).
    let (s, log) = effects_log(&mut host, csi::ZONED);
    assert_eq!(s, Status::SUCCESS);
    let io = |op: u8| le32(&log, 1024 + 4 * usize::from(op));
    assert_eq!(io(zop::ZONE_APPEND), 0b11);
    assert_eq!(io(zop::ZONE_MANAGEMENT_SEND), 0b11);
    assert_eq!(io(zop::ZONE_MANAGEMENT_RECEIVE), 0b01);
    assert_eq!(io(io::WRITE), 0b11);
    assert_eq!(le32(&log, 4 * usize::from(admin::IDENTIFY)), 1);
    let (s, log) = effects_log(&mut host, csi::NVM);
    assert_eq!(s, Status::SUCCESS);
    assert_eq!(le32(&log, 1024 + 4 * usize::from(zop::ZONE_APPEND)), 0);
    assert_eq!(effects_log(&mut host, 1).0, Status::INVALID_FIELD);
    // A command set selection the function does not have is refused.
    host.write32(regs::CC, 0);
    host.write32(regs::CC, Cc(Cc::enable_default().0 | 0b111 << 4).0);
    assert_eq!(host.read32(regs::CSTS), Csts::CFS);
}

#[test]
fn conventional_function_is_unchanged() {
    let mut host = Host::new();
    assert_eq!(cap(&host) & 1 << 43, 0);
    let (_, d) = identify(&mut host, cns::NAMESPACE_DESCRIPTORS, 0, 1);
    assert_eq!((d[0], d[20]), (2, 0), "NGUID only");
    assert_eq!(
        identify(&mut host, zcns::NAMESPACE_CSI, csi::ZONED, 1).0,
        Status::INVALID_FIELD
    );
    assert_eq!(
        identify(&mut host, zcns::IO_COMMAND_SETS, 0, 0).0,
        Status::INVALID_FIELD
    );
    assert_eq!(
        effects_log(&mut host, csi::ZONED).0,
        Status::INVALID_LOG_PAGE
    );
    host.create_pair(1, 16);
    assert_eq!(host.io_status(1, zms(0, 4, false)), Status::INVALID_OPCODE);
    host.write32(regs::CC, 0);
    host.write32(regs::CC, cc_all_command_sets().0);
    assert_eq!(host.read32(regs::CSTS), Csts::CFS);
}

#[test]
fn zone_append_completion_carries_the_lba() {
    let (mut host, zoned) = zoned_host();
    let zone1 = 512;
    host.mem.write(DATA, &pattern(4096, 1)).unwrap();
    let mut lbas = Vec::new();
    for _ in 0..3 {
        let cqe = host.io(1, host.rw(zop::ZONE_APPEND, zone1, 8, DATA, 0));
        assert_eq!(cqe.status(), Status::SUCCESS);
        lbas.push(u64::from(cqe.result.get()) | u64::from(cqe.dw1.get()) << 32);
    }
    assert_eq!(lbas, [zone1, zone1 + 8, zone1 + 16]);
    assert_eq!(zoned.zone(1).unwrap().written, 24);
    // Read back through the queue: the data, then zeroes past the pointer.
    host.mem.write(DATA + 0x10000, &[0xff; 8192]).unwrap();
    let cqe = host.io(
        1,
        host.rw(io::READ, zone1 + 16, 16, DATA + 0x10000, DATA + 0x11000),
    );
    assert_eq!(cqe.status(), Status::SUCCESS);
    let got = host.read_mem(DATA + 0x10000, 8192);
    assert_eq!(&got[..4096], &pattern(4096, 1)[..]);
    assert!(got[4096..].iter().all(|&b| b == 0));
    // DW1 carries the high half of a 64-bit result.
    let mem = VecMemory::new(0, 0x10000);
    let mut cq = super::super::queues::CompletionQueue::new(1, 0x1000, 4, false, 0);
    let completion = super::super::queues::Completion {
        cid: 7,
        status: Status::SUCCESS,
        result: 0x0000_0012_3456_7890,
    };
    cq.post(&mem, &completion, 1, 0).unwrap();
    let mut raw = [0u8; 16];
    mem.read(0x1000, &mut raw).unwrap();
    let cqe = CompletionEntry::from_bytes(&raw);
    assert_eq!((cqe.result.get(), cqe.dw1.get()), (0x3456_7890, 0x12));
}

#[test]
fn zone_commands_through_the_queues() {
    let (mut host, zoned) = zoned_host();
    host.mem.write(DATA, &pattern(8192, 2)).unwrap();
    // A write not at the pointer: Zone Invalid Write (SCT 1h, SC BCh).
    let s = host.io_status(1, host.rw(io::WRITE, 8, 8, DATA, 0));
    assert_eq!((s.sct(), s.sc()), (1, 0xbc));
    assert_eq!(s, ZONE_INVALID_WRITE);
    assert_eq!(
        host.io_status(1, host.rw(io::WRITE, 0, 16, DATA, DATA + 4096)),
        Status::SUCCESS
    );
    assert_eq!(zoned.zone(0).unwrap().state, ZoneState::ImplicitlyOpened);
    // Across the zone capacity: Zone Boundary Error.
    assert_eq!(
        host.io_status(1, host.rw(io::WRITE, 16, 16, DATA, DATA + 4096)),
        Status::SUCCESS
    );
    let s = host.io_status(1, host.rw(zop::ZONE_APPEND, 0, 16, DATA, 0));
    assert_eq!(s, Status::SUCCESS);
    // Explicit open of zones 1 and 2: zone 0 holds one of 2 open resources
    // implicitly and is closed for zone 2.
    assert_eq!(host.io_status(1, zms(512, 3, false)), Status::SUCCESS);
    assert_eq!(host.io_status(1, zms(1024, 3, false)), Status::SUCCESS);
    assert_eq!(zoned.zone(0).unwrap().state, ZoneState::Closed);
    // Three zones active: a fourth cannot open.
    assert_eq!(
        host.io_status(1, zms(1536, 3, false)),
        TOO_MANY_ACTIVE_ZONES
    );
    assert_eq!(
        host.io_status(1, host.rw(io::WRITE, 1536, 1, DATA, 0)),
        TOO_MANY_ACTIVE_ZONES
    );
    // Both open resources are taken explicitly: the closed zone 0 cannot
    // be written.
    assert_eq!(
        host.io_status(1, host.rw(zop::ZONE_APPEND, 0, 1, DATA, 0)),
        TOO_MANY_OPEN_ZONES
    );
    // Report zones into guest memory (from an LBA inside zone 0).
    assert_eq!(host.io_status(1, zmr(100, 8192, 0, true)), Status::SUCCESS);
    let r = host.read_mem(DATA, 8192);
    let zones = zoned.geometry().zones;
    assert_eq!(le64(&r, 0), zones.min(127));
    let d = |i: usize| &r[64 * (i + 1)..64 * (i + 2)];
    assert_eq!(
        (d(0)[0], d(0)[1], le64(d(0), 8), le64(d(0), 24)),
        (2, 0x40, 384, 48)
    );
    assert_eq!((d(1)[1], le64(d(1), 16)), (0x30, 512));
    // Filter Explicitly Opened, not partial: two match.
    assert_eq!(host.io_status(1, zmr(0, 64, 3, false)), Status::SUCCESS);
    assert_eq!(le64(&host.read_mem(DATA, 8), 0), 2);
    // Finish zone 1, reset zone 0, close all, then reset all.
    assert_eq!(host.io_status(1, zms(512, 2, false)), Status::SUCCESS);
    assert_eq!(zoned.zone(1).unwrap().state, ZoneState::Full);
    assert_eq!(
        host.io_status(1, host.rw(io::WRITE, 512, 1, DATA, 0)),
        ZONE_IS_FULL
    );
    assert_eq!(host.io_status(1, zms(0, 4, false)), Status::SUCCESS);
    assert_eq!(zoned.zone(0).unwrap().written, 0);
    assert_eq!(host.io_status(1, zms(0, 1, true)), Status::SUCCESS);
    assert_eq!(zoned.zone(2).unwrap().state, ZoneState::Closed);
    // Closing an Empty zone is no transition.
    assert_eq!(
        host.io_status(1, zms(1536, 1, false)),
        INVALID_ZONE_STATE_TRANSITION
    );
    assert_eq!(host.io_status(1, zms(0, 4, true)), Status::SUCCESS);
    assert_eq!(zoned.counts(), (0, 0));
    // Flush commits; FUA writes too.
    let flushes = host.ns.flushes.load(Ordering::SeqCst);
    assert_eq!(host.io_status(1, sqe::flush(1, 0)), Status::SUCCESS);
    assert!(host.ns.flushes.load(Ordering::SeqCst) > flushes);
    let mut fua = host.rw(io::WRITE, 0, 1, DATA, 0);
    fua.cdw12.set(fua.cdw12.get() | BlockRange::FUA);
    let flushes = host.ns.flushes.load(Ordering::SeqCst);
    assert_eq!(host.io_status(1, fua), Status::SUCCESS);
    assert!(host.ns.flushes.load(Ordering::SeqCst) > flushes);
    // Write Zeroes is a write at the pointer.
    let wz = |slba| {
        BlockRange {
            nsid: 1,
            slba,
            blocks: 3,
            fua: false,
            deallocate: false,
        }
        .encode(io::WRITE_ZEROES, 0)
    };
    assert_eq!(host.io_status(1, wz(5)), ZONE_INVALID_WRITE);
    assert_eq!(host.io_status(1, wz(1)), Status::SUCCESS);
    assert_eq!(zoned.zone(0).unwrap().written, 4);
}

#[test]
fn hostile_zone_commands_change_nothing() {
    let (mut host, zoned) = zoned_host();
    host.mem.write(DATA, &pattern(4096, 3)).unwrap();
    assert_eq!(
        host.io_status(1, host.rw(io::WRITE, 0, 4, DATA, 0)),
        Status::SUCCESS
    );
    let before: Vec<_> = (0..4).map(|z| zoned.zone(z).unwrap()).collect();
    let end = zoned.geometry().blocks();
    let reserved_action = 0x6;
    let mut with_option = zms(0, 4, false);
    with_option.cdw13.set(with_option.cdw13.get() | 1 << 9);
    let mut extended_report = zmr(0, 4096, 0, false);
    extended_report.cdw13.set(extended_report.cdw13.get() | 1);
    let mut bad_pointer = host.rw(zop::ZONE_APPEND, 0, 4, 0xdead_0000_0000, 0);
    let cases: Vec<(&str, SubmissionEntry, Status)> = vec![
        (
            "reset not at a zone start",
            zms(1, 4, false),
            Status::INVALID_FIELD,
        ),
        (
            "reset past the namespace",
            zms(end, 4, false),
            Status::LBA_OUT_OF_RANGE,
        ),
        (
            "reset at u64::MAX",
            zms(u64::MAX, 4, false),
            Status::LBA_OUT_OF_RANGE,
        ),
        ("action 0", zms(0, 0, false), Status::INVALID_FIELD),
        (
            "reserved action",
            zms(0, reserved_action, false),
            Status::INVALID_FIELD,
        ),
        (
            "descriptor extension",
            zms(0, 0x10, false),
            Status::INVALID_FIELD,
        ),
        (
            "random write area option",
            with_option,
            Status::INVALID_FIELD,
        ),
        ("extended report", extended_report, Status::INVALID_FIELD),
        (
            "reserved filter",
            zmr(0, 4096, 8, false),
            Status::INVALID_FIELD,
        ),
        (
            "report past the namespace",
            zmr(end, 4096, 0, false),
            Status::LBA_OUT_OF_RANGE,
        ),
        (
            "append not at a zone start",
            host.rw(zop::ZONE_APPEND, 2, 1, DATA, 0),
            Status::INVALID_FIELD,
        ),
        (
            "append across two zones",
            host.rw(zop::ZONE_APPEND, 0, 509, DATA, 0),
            ZONE_BOUNDARY_ERROR,
        ),
        (
            "write past the namespace",
            host.rw(io::WRITE, end - 1, 2, DATA, 0),
            Status::LBA_OUT_OF_RANGE,
        ),
        (
            "read past the namespace",
            host.rw(io::READ, end, 1, DATA, 0),
            Status::LBA_OUT_OF_RANGE,
        ),
        (
            "append with a bad data pointer",
            bad_pointer,
            Status::DATA_TRANSFER_ERROR,
        ),
    ];
    for (what, sqe, want) in cases {
        let got = host.io_status(1, sqe);
        assert!(got.same_code(want), "{what}: {got:?}, want {want:?}");
        let now: Vec<_> = (0..4).map(|z| zoned.zone(z).unwrap()).collect();
        assert_eq!(now, before, "{what} changed a zone");
    }
    // A report larger than MDTS, and one whose length wraps.
    let mut huge = zmr(0, 4096, 0, false);
    huge.cdw12.set(u32::MAX);
    assert_eq!(host.io_status(1, huge), Status::INVALID_FIELD);
    huge.cdw12.set((2 << 20) / 4);
    assert_eq!(host.io_status(1, huge), Status::INVALID_FIELD);
    // An unknown opcode on the zoned namespace, and a bad one on a
    // command set the controller has.
    assert_eq!(
        host.io_status(1, SubmissionEntry::new(0x7e, 0)),
        Status::INVALID_NAMESPACE
    );
    let mut unknown = SubmissionEntry::new(0x7e, 0);
    unknown.nsid.set(1);
    assert_eq!(host.io_status(1, unknown), Status::INVALID_OPCODE);
    bad_pointer.nsid.set(7);
    assert_eq!(host.io_status(1, bad_pointer), Status::INVALID_NAMESPACE);
    assert_eq!(zoned.zone(0).unwrap().written, 4);
}

#[test]
fn controller_reset_closes_zones() {
    let (mut host, zoned) = zoned_host();
    host.mem.write(DATA, &pattern(512, 4)).unwrap();
    assert_eq!(
        host.io_status(1, host.rw(io::WRITE, 0, 1, DATA, 0)),
        Status::SUCCESS
    );
    assert_eq!(host.io_status(1, zms(512, 3, false)), Status::SUCCESS);
    assert_eq!(zoned.counts(), (2, 2));
    host.write32(regs::CC, 0);
    assert_eq!(zoned.zone(0).unwrap().state, ZoneState::Closed);
    assert_eq!(zoned.zone(1).unwrap().state, ZoneState::Empty);
    assert_eq!(zoned.counts(), (0, 1));
}

/// Random command dwords for every opcode a zoned namespace takes (and a
/// few it does not): each command completes, the open and active counts
/// stay within the limits and agree with the zones, and no write pointer
/// leaves its zone.
#[test]
fn random_zone_commands_never_break_the_rules() {
    let (mut host, zoned) = zoned_host();
    host.mem.write(DATA, &pattern(8192, 5)).unwrap();
    let mut rng = crate::power_loss::SplitMix64::new(13);
    let opcodes = [
        zop::ZONE_MANAGEMENT_SEND,
        zop::ZONE_MANAGEMENT_RECEIVE,
        zop::ZONE_APPEND,
        io::WRITE,
        io::READ,
        io::WRITE_ZEROES,
        io::DATASET_MANAGEMENT,
        io::FLUSH,
        0x7b,
        0x7c,
    ];
    let zone_blocks = zoned.geometry().zone_blocks;
    let zones = zoned.geometry().zones;
    let mut successes = 0;
    for _ in 0..3000 {
        let mut sqe = SubmissionEntry::new(opcodes[rng.below(opcodes.len() as u64) as usize], 0);
        sqe.nsid.set(if rng.below(20) == 0 {
            rng.next_u64() as u32
        } else {
            1
        });
        sqe.prp1.set(DATA);
        sqe.prp2.set(DATA + 4096);
        // Mostly near zone starts and small, sometimes anything.
        let slba = if rng.below(4) == 0 {
            rng.next_u64()
        } else {
            rng.below(zones + 1) * zone_blocks + rng.below(3) * rng.below(zone_blocks)
        };
        sqe.cdw10.set(slba as u32);
        sqe.cdw11.set((slba >> 32) as u32);
        sqe.cdw12.set(if rng.below(4) == 0 {
            rng.next_u64() as u32
        } else {
            rng.below(16) as u32
        });
        sqe.cdw13.set(if rng.below(4) == 0 {
            rng.next_u64() as u32
        } else {
            (rng.below(7) | rng.below(9) << 8 | rng.below(2) << 16) as u32
        });
        let status = host.io_status(1, sqe);
        successes += usize::from(status.is_success());
        let (kept, recount) = zoned.counts_and_recount();
        assert_eq!(kept, recount);
        assert!(kept.0 <= 2 && kept.1 <= 3, "{kept:?}");
        for zone in 0..zones as usize {
            assert!(zoned.zone(zone).unwrap().written <= 384);
        }
    }
    assert!(successes > 300, "only {successes} commands succeeded");
}

/// A host that enables the function with the NVM command set alone
/// (CC.CSS = 000b) finds no active namespace: the zoned one belongs to a
/// command set it did not enable. Enabled again with all I/O command sets,
/// the namespace is back.
#[test]
fn nvm_only_host_sees_no_zoned_namespace() {
    let (mut host, zoned) = zoned_host();
    host.write32(regs::CC, 0);
    host.enable();
    assert_eq!(host.read32(regs::CSTS), Csts::RDY);
    let (s, list) = identify(&mut host, cns::ACTIVE_NAMESPACES, 0, 0);
    assert_eq!(
        (s, le32(&list, 0)),
        (Status::SUCCESS, 0),
        "no active namespace"
    );
    assert_eq!(
        identify(&mut host, cns::NAMESPACE, 0, 1).0,
        Status::INVALID_NAMESPACE
    );
    assert_eq!(
        identify(&mut host, cns::NAMESPACE_DESCRIPTORS, 0, 1).0,
        Status::INVALID_NAMESPACE
    );
    host.create_pair(1, 16);
    host.mem.write(DATA, &pattern(512, 6)).unwrap();
    assert_eq!(
        host.io_status(1, host.rw(io::WRITE, 0, 1, DATA, 0)),
        Status::INVALID_NAMESPACE
    );
    assert_eq!(
        host.io_status(1, zms(0, 3, false)),
        Status::INVALID_NAMESPACE
    );
    assert_eq!(zoned.zone(0).unwrap().state, ZoneState::Empty);
    host.write32(regs::CC, 0);
    host.write32(regs::CC, 0);
    host.write32(regs::AQA, Aqa::new(ADMIN_ENTRIES, ADMIN_ENTRIES).0);
    host.write32(regs::CC, cc_all_command_sets().0);
    host.asq.index = 0;
    host.acq.index = 0;
    host.acq.phase = true;
    host.io.clear();
    assert_eq!(host.read32(regs::CSTS), Csts::RDY);
    let (_, list) = identify(&mut host, cns::ACTIVE_NAMESPACES, 0, 0);
    assert_eq!(le32(&list, 0), 1);
    host.create_pair(1, 16);
    assert_eq!(
        host.io_status(1, host.rw(io::WRITE, 0, 1, DATA, 0)),
        Status::SUCCESS
    );
}

#[test]
fn the_accelerator_refuses_a_zoned_ssd() {
    // A volume family over the zoned image would overwrite its zone state:
    // SSD Attach is refused (Invalid Field, EOPNOTSUPP on the host) and
    // the SSD stays the host's; a conventional SSD next to it attaches.
    let media = Arc::new(MemNamespace::new(NS_BYTES));
    let zoned = Arc::new(ZonedNamespace::open("z", media, &zone_config()).unwrap());
    let plain = Arc::new(MemNamespace::new(NS_BYTES));
    let handle = |index: u16, media: Arc<dyn Namespace>| SsdHandle {
        index,
        ownership: Arc::new(SsdOwnership::new()),
        media,
        serial: format!("SSD{index}"),
    };
    let ssds = vec![handle(0, zoned), handle(1, plain)];
    let owners: Vec<_> = ssds.iter().map(|s| s.ownership.clone()).collect();
    let volumes = Arc::new(VolumeManager::open(&ssds));
    let mut host = Host::with_personality(Personality::Accelerator { ssds, volumes });
    host.enable();
    assert_eq!(
        host.admin_status(vendor::ssd_command(0, true, 0)),
        Status::INVALID_FIELD
    );
    assert!(!owners[0].view().attached);
    assert_eq!(
        host.admin_status(vendor::ssd_command(1, true, 0)),
        Status::SUCCESS
    );
    assert!(owners[1].view().attached);
}
