//! The direct data path (`preadv`/`pwritev` on the guest's pages) against
//! guest memory that is really mapped: a memfd mapped into [`DmaRegions`],
//! one region per page in reverse order, as with a vIOMMU, so that pages
//! adjacent in the guest are not adjacent in the host.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nvme_shim::dptr::SglDescriptor;
use nvme_shim::opcode::io;
use nvme_shim::sqe::{BlockRange, SubmissionEntry};
use nvme_shim::status::Status;

use super::super::{Controller, ControllerConfig, NamespaceSlot, Personality, Stats};
use crate::guest_memory::{DmaRegions, GuestMemory, HostIovecs, VecMemory};
use crate::interrupts::InterruptSink;
use crate::namespace::{FileNamespace, Namespace};
use crate::ownership::SsdOwnership;
use crate::power_loss::{SplitMix64, VolatileNamespace};

/// First DMA address of the guest.
const GUEST: u64 = 0x100_0000;
/// Guest pages mapped.
const GUEST_PAGES: u64 = 512;
const PAGE: u64 = 4096;
/// Where the tests put PRP lists and SGL segments.
const LISTS: u64 = GUEST + 0x10_0000;
/// The namespace image.
const IMAGE_BYTES: u64 = 8 << 20;
/// What guest memory holds before a test moves data.
const UNTOUCHED: u8 = 0xee;

struct NoInterrupts;

impl InterruptSink for NoInterrupts {
    fn raise(&self, _vector: u16) {}
}

/// A file namespace that counts which path the controller took.
struct Counting {
    inner: FileNamespace,
    direct: bool,
    direct_calls: AtomicU64,
    buffered_calls: AtomicU64,
}

impl Namespace for Counting {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.buffered_calls.fetch_add(1, Ordering::Relaxed);
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.buffered_calls.fetch_add(1, Ordering::Relaxed);
        self.inner.write_at(offset, data)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.inner.flush()
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.inner.write_zeroes(offset, len)
    }
    fn deallocate(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.inner.deallocate(offset, len)
    }
    fn direct_guest_io(&self) -> bool {
        self.direct
    }
    fn read_to_guest(&self, offset: u64, dst: &HostIovecs<'_>) -> std::io::Result<()> {
        self.direct_calls.fetch_add(1, Ordering::Relaxed);
        self.inner.read_to_guest(offset, dst)
    }
    fn write_from_guest(&self, offset: u64, src: &HostIovecs<'_>) -> std::io::Result<()> {
        self.direct_calls.fetch_add(1, Ordering::Relaxed);
        self.inner.write_from_guest(offset, src)
    }
}

/// A scratch image file, removed on drop.
struct Image {
    path: PathBuf,
}

impl Image {
    fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!("dpuemu-io-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        FileNamespace::open(&path, Some(IMAGE_BYTES)).unwrap();
        Self { path }
    }

    fn namespace(&self) -> FileNamespace {
        FileNamespace::open(&self.path, None).unwrap()
    }

    fn bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        File::open(&self.path)
            .unwrap()
            .read_exact_at(&mut out, offset)
            .unwrap();
        out
    }

    fn fill(&self, offset: u64, data: &[u8]) {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .unwrap()
            .write_all_at(data, offset)
            .unwrap();
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Guest RAM: a memfd, mapped into DMA regions one page each (`per_page`)
/// or as one region.
fn guest_memory(per_page: bool) -> (File, Arc<DmaRegions>) {
    // SAFETY: The name is a NUL-terminated string literal; memfd_create
    // reads it and returns a new descriptor (or -1).
    let fd = unsafe { libc::memfd_create(c"dpuemu-test-guest".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just created and is owned by nothing else.
    let ram = unsafe { File::from_raw_fd(fd) };
    ram.set_len(GUEST_PAGES * PAGE).unwrap();
    let regions = Arc::new(DmaRegions::new());
    if per_page {
        for page in (0..GUEST_PAGES).rev() {
            regions
                .map(GUEST + page * PAGE, PAGE, &ram, page * PAGE, true)
                .unwrap();
        }
    } else {
        regions
            .map(GUEST, GUEST_PAGES * PAGE, &ram, 0, true)
            .unwrap();
    }
    regions
        .write(GUEST, &vec![UNTOUCHED; (GUEST_PAGES * PAGE) as usize])
        .unwrap();
    (ram, regions)
}

fn controller(memory: Arc<dyn GuestMemory>, ns: Arc<dyn Namespace>) -> Arc<Controller> {
    let config = ControllerConfig {
        name: "direct".into(),
        serial: "DPU-direct".into(),
        model: "dpuemu test".into(),
        subnqn: "nqn.2026-11.org.dpublk:direct".into(),
        io_queues: 1,
        vectors: 2,
        workers: 1,
    };
    let slot = NamespaceSlot {
        backend: ns,
        ssd: None,
        stats: Stats::default(),
    };
    Controller::new(
        config,
        Personality::Ssd {
            ownership: Arc::new(SsdOwnership::new()),
        },
        vec![slot],
        memory,
        Arc::new(NoInterrupts),
    )
}

struct Rig {
    ram: File,
    regions: Arc<DmaRegions>,
    ns: Arc<Counting>,
    ctrl: Arc<Controller>,
    image: Image,
}

impl Rig {
    fn new(tag: &str, direct: bool, per_page: bool) -> Self {
        let image = Image::new(tag);
        let (ram, regions) = guest_memory(per_page);
        let ns = Arc::new(Counting {
            inner: image.namespace(),
            direct,
            direct_calls: AtomicU64::new(0),
            buffered_calls: AtomicU64::new(0),
        });
        let ctrl = controller(regions.clone(), ns.clone());
        Self {
            ram,
            regions,
            ns,
            ctrl,
            image,
        }
    }

    fn paths(&self) -> (u64, u64) {
        (
            self.ns.direct_calls.load(Ordering::Relaxed),
            self.ns.buffered_calls.load(Ordering::Relaxed),
        )
    }

    fn guest(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.regions.read(addr, &mut out).unwrap();
        out
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

fn command(opcode: u8, slba: u64, blocks: u32) -> SubmissionEntry {
    BlockRange {
        nsid: 1,
        slba,
        blocks,
        fua: false,
        deallocate: false,
    }
    .encode(opcode, 0)
}

fn prp_command(opcode: u8, slba: u64, blocks: u32, prp1: u64, prp2: u64) -> SubmissionEntry {
    let mut sqe = command(opcode, slba, blocks);
    sqe.prp1.set(prp1);
    sqe.prp2.set(prp2);
    sqe
}

fn flush_command() -> SubmissionEntry {
    let mut sqe = SubmissionEntry::new(io::FLUSH, 0);
    sqe.nsid.set(1);
    sqe
}

fn run(ctrl: &Controller, sqe: &SubmissionEntry) -> Status {
    ctrl.execute_io(sqe).status
}

fn write_prp_list(memory: &dyn GuestMemory, at: u64, entries: &[u64]) {
    let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
    memory.write(at, &bytes).unwrap();
}

/// The guest pieces of a 20 KiB transfer: the last 3,584 bytes of one
/// page, then five pages in scrambled order through a PRP list, the last
/// one used for 512 bytes.
const PRP1: u64 = GUEST + 0x3200;
const PRP_PAGES: [u64; 5] = [
    GUEST + 0x8000,
    GUEST + 0x5000,
    GUEST + 0x2_0000,
    GUEST + 0x7000,
    GUEST + 0x6000,
];
const PRP_BLOCKS: u32 = 40;

fn prp_pieces() -> Vec<(u64, usize)> {
    let mut pieces = vec![(PRP1, 3584usize)];
    let mut left = PRP_BLOCKS as usize * 512 - 3584;
    for page in PRP_PAGES {
        let n = left.min(PAGE as usize);
        pieces.push((page, n));
        left -= n;
    }
    pieces
}

#[test]
fn prp_reads_and_writes_move_the_right_bytes_straight_to_guest_pages() {
    let rig = Rig::new("prp", true, true);
    let len = PRP_BLOCKS as usize * 512;
    let on_media = pattern(7, len);
    rig.image.fill(16 * 512, &on_media);
    write_prp_list(&*rig.regions, LISTS, &PRP_PAGES);
    let read = prp_command(io::READ, 16, PRP_BLOCKS, PRP1, LISTS);
    assert_eq!(run(&rig.ctrl, &read), Status::SUCCESS);
    let mut at = 0;
    for (addr, n) in prp_pieces() {
        assert_eq!(
            rig.guest(addr, n),
            on_media[at..at + n],
            "piece at {addr:#x}"
        );
        at += n;
    }
    // Nothing around the pieces was written.
    assert!(rig
        .guest(GUEST + 0x3000, 0x200)
        .iter()
        .all(|&b| b == UNTOUCHED));
    assert!(rig
        .guest(GUEST + 0x6200, 0xe00)
        .iter()
        .all(|&b| b == UNTOUCHED));
    assert!(rig
        .guest(GUEST + 0x4000, 0x1000)
        .iter()
        .all(|&b| b == UNTOUCHED));

    // A write from the same pages after the guest changed them.
    let from_guest = pattern(99, len);
    let mut at = 0;
    for (addr, n) in prp_pieces() {
        rig.regions.write(addr, &from_guest[at..at + n]).unwrap();
        at += n;
    }
    let write = prp_command(io::WRITE, 200, PRP_BLOCKS, PRP1, LISTS);
    assert_eq!(run(&rig.ctrl, &write), Status::SUCCESS);
    assert_eq!(rig.image.bytes(200 * 512, len), from_guest);
    // The blocks around it are untouched.
    assert!(rig.image.bytes(199 * 512, 512).iter().all(|&b| b == 0));
    assert!(rig
        .image
        .bytes((200 + u64::from(PRP_BLOCKS)) * 512, 512)
        .iter()
        .all(|&b| b == 0));
    // Both commands took the direct path, neither a buffer.
    assert_eq!(rig.paths(), (2, 0));
}

#[test]
fn sgl_reads_and_writes_move_the_right_bytes_and_a_bit_bucket_takes_the_buffer() {
    let rig = Rig::new("sgl", true, true);
    // Two data blocks that start mid-page and cross pages, listed in a
    // last segment.
    let blocks = [(GUEST + 0x3_0123, 1000u32), (GUEST + 0x3_1f00, 3096)];
    let descs: Vec<u8> = blocks
        .iter()
        .flat_map(|&(a, n)| SglDescriptor::data_block(a, n).to_bytes())
        .collect();
    rig.regions.write(LISTS, &descs).unwrap();
    let on_media = pattern(3, 4096);
    rig.image.fill(64 * 512, &on_media);
    let mut read = command(io::READ, 64, 8);
    read.set_sgl1(&SglDescriptor::segment(LISTS, 2, true));
    assert_eq!(run(&rig.ctrl, &read), Status::SUCCESS);
    assert_eq!(rig.guest(blocks[0].0, 1000), on_media[..1000]);
    assert_eq!(rig.guest(blocks[1].0, 3096), on_media[1000..]);
    assert!(rig
        .guest(GUEST + 0x3_0123 + 1000, 0x1f00 - 0x123 - 1000)
        .iter()
        .all(|&b| b == UNTOUCHED));

    let from_guest = pattern(42, 4096);
    rig.regions.write(blocks[0].0, &from_guest[..1000]).unwrap();
    rig.regions.write(blocks[1].0, &from_guest[1000..]).unwrap();
    let mut write = command(io::WRITE, 300, 8);
    write.set_sgl1(&SglDescriptor::segment(LISTS, 2, true));
    assert_eq!(run(&rig.ctrl, &write), Status::SUCCESS);
    assert_eq!(rig.image.bytes(300 * 512, 4096), from_guest);
    assert_eq!(rig.paths(), (2, 0));

    // A bit bucket has no guest page to read into: the buffer path, which
    // skips its bytes.
    let descs: Vec<u8> = [
        SglDescriptor::data_block(GUEST + 0x4_0000, 1024),
        SglDescriptor::bit_bucket(2048),
        SglDescriptor::data_block(GUEST + 0x4_1000, 1024),
    ]
    .iter()
    .flat_map(|d| d.to_bytes())
    .collect();
    rig.regions.write(LISTS + 0x1000, &descs).unwrap();
    let mut bucket = command(io::READ, 64, 8);
    bucket.set_sgl1(&SglDescriptor::segment(LISTS + 0x1000, 3, true));
    assert_eq!(run(&rig.ctrl, &bucket), Status::SUCCESS);
    assert_eq!(rig.guest(GUEST + 0x4_0000, 1024), on_media[..1024]);
    assert_eq!(rig.guest(GUEST + 0x4_1000, 1024), on_media[3072..]);
    assert!(rig
        .guest(GUEST + 0x4_0000 + 1024, 3072)
        .iter()
        .all(|&b| b == UNTOUCHED));
    assert_eq!(rig.paths(), (2, 1));
}

#[test]
fn a_page_outside_the_mapped_regions_fails_as_before_and_changes_nothing() {
    let rig = Rig::new("outside", true, true);
    // The same guest in a vector: the buffer path the controller always
    // had, whose status the direct one must keep.
    let vec_memory = Arc::new(VecMemory::new(GUEST, (GUEST_PAGES * PAGE) as usize));
    let vec_image = Image::new("outside-vec");
    let vec_ctrl = controller(vec_memory.clone(), Arc::new(vec_image.namespace()));
    let unmapped = GUEST + GUEST_PAGES * PAGE + 0x1_0000;
    let old = pattern(5, 8192);
    rig.image.fill(0, &old);
    rig.regions
        .write(GUEST + 0x9000, &pattern(6, 4096))
        .unwrap();

    // A write whose second page is outside guest memory.
    let write = prp_command(io::WRITE, 0, 16, GUEST + 0x9000, unmapped);
    let status = run(&rig.ctrl, &write);
    assert_eq!(status, Status::DATA_TRANSFER_ERROR);
    assert_eq!(status, run(&vec_ctrl, &write));
    assert_eq!(rig.image.bytes(0, 8192), old);

    // The same through a PRP list entry.
    write_prp_list(&*rig.regions, LISTS, &[GUEST + 0xa000, unmapped]);
    write_prp_list(&*vec_memory, LISTS, &[GUEST + 0xa000, unmapped]);
    let listed = prp_command(io::WRITE, 0, 24, GUEST + 0x9000, LISTS);
    let status = run(&rig.ctrl, &listed);
    assert_eq!(status, Status::DATA_TRANSFER_ERROR);
    assert_eq!(status, run(&vec_ctrl, &listed));
    assert_eq!(rig.image.bytes(0, 8192), old);

    // A read into an unmapped page fails the same way.
    let read = prp_command(io::READ, 0, 16, unmapped, 0);
    let status = run(&rig.ctrl, &read);
    assert_eq!(status, Status::DATA_TRANSFER_ERROR);
    assert_eq!(status, run(&vec_ctrl, &read));
    assert_eq!(rig.image.bytes(0, 8192), old);

    // A read into a read-only region has no direct path; its copy is
    // refused and writes nothing.
    rig.regions
        .map(GUEST + 0xc000, PAGE, &rig.ram, 0xc000, false)
        .unwrap();
    let read_only = prp_command(io::READ, 0, 8, GUEST + 0xc000, 0);
    assert_eq!(run(&rig.ctrl, &read_only), Status::DATA_TRANSFER_ERROR);
    assert!(rig
        .guest(GUEST + 0xc000, 4096)
        .iter()
        .all(|&b| b == UNTOUCHED));
    // No command reached the media through the direct path.
    assert_eq!(rig.paths().0, 0);
}

#[test]
fn unmapping_waits_for_a_direct_transfer_and_later_commands_fail_cleanly() {
    let rig = Rig::new("unmap", true, true);
    let on_media = pattern(11, 8192);
    rig.image.fill(0, &on_media);
    let page = GUEST + 0x2_0000;
    let buffer = rig
        .regions
        .host_iovecs(&mut [(page, 2 * PAGE)].iter().copied(), true)
        .expect("mapped pages give host ranges");
    let unmapped = Arc::new(AtomicBool::new(false));
    let unmapper = {
        let regions = rig.regions.clone();
        let unmapped = unmapped.clone();
        std::thread::spawn(move || {
            let n = regions.unmap(page, PAGE);
            unmapped.store(true, Ordering::Release);
            n
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !unmapped.load(Ordering::Acquire),
        "the page was unmapped under a transfer"
    );
    rig.ns.inner.read_to_guest(0, &buffer).unwrap();
    drop(buffer);
    assert_eq!(unmapper.join().unwrap(), 1);
    // The transfer reached the guest's RAM (the memfd) before the unmap.
    let mut ram = vec![0u8; 8192];
    rig.ram.read_exact_at(&mut ram, page - GUEST).unwrap();
    assert_eq!(ram, on_media);
    // The page is gone: a read into it fails without touching the rest.
    let read = prp_command(io::READ, 0, 16, page + PAGE, page);
    assert_eq!(run(&rig.ctrl, &read), Status::DATA_TRANSFER_ERROR);

    // Clearing Bus Master Enable waits for a transfer too.
    let buffer = rig
        .ctrl
        .memory
        .host_iovecs(&mut [(GUEST, PAGE)].iter().copied(), true)
        .expect("bus mastering is on");
    let cleared = Arc::new(AtomicBool::new(false));
    let clearer = {
        let ctrl = rig.ctrl.clone();
        let cleared = cleared.clone();
        std::thread::spawn(move || {
            ctrl.bus.set(false);
            cleared.store(true, Ordering::Release);
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    assert!(!cleared.load(Ordering::Acquire));
    drop(buffer);
    clearer.join().unwrap();
    assert!(rig
        .ctrl
        .memory
        .host_iovecs(&mut [(GUEST, PAGE)].iter().copied(), true)
        .is_none());
    let read = prp_command(io::READ, 0, 8, GUEST, 0);
    assert_eq!(run(&rig.ctrl, &read), Status::DATA_TRANSFER_ERROR);
    assert!(rig.guest(GUEST, 4096).iter().all(|&b| b == UNTOUCHED));
}

#[test]
fn commands_racing_an_unmap_and_remap_succeed_or_fail_cleanly() {
    let rig = Rig::new("race", true, true);
    let on_media = pattern(17, 8192);
    rig.image.fill(0, &on_media);
    let page = GUEST + 0x5_0000;
    let stop = Arc::new(AtomicBool::new(false));
    let flaps = Arc::new(AtomicU64::new(0));
    let flapper = {
        let regions = rig.regions.clone();
        let ram = rig.ram.try_clone().unwrap();
        let (stop, flaps) = (stop.clone(), flaps.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                regions.unmap(page + PAGE, PAGE);
                std::thread::yield_now();
                regions
                    .map(page + PAGE, PAGE, &ram, page + PAGE - GUEST, true)
                    .unwrap();
                flaps.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let (mut ok, mut failed) = (0u32, 0u32);
    let read = prp_command(io::READ, 0, 16, page, page + PAGE);
    let deadline = Instant::now() + Duration::from_secs(30);
    // At least 300 reads, and on for as long as it takes the (possibly
    // late-starting) other thread to flap the page 100 times.
    while ok + failed < 300 || flaps.load(Ordering::Relaxed) < 100 {
        assert!(Instant::now() < deadline, "the unmapping thread stalled");
        match run(&rig.ctrl, &read) {
            Status::SUCCESS => {
                ok += 1;
                // Through the memfd: the page may be unmapped again by now.
                let mut ram = vec![0u8; 8192];
                rig.ram.read_exact_at(&mut ram, page - GUEST).unwrap();
                assert_eq!(ram, on_media);
            }
            Status::DATA_TRANSFER_ERROR => failed += 1,
            other => panic!("unexpected status {other:?}"),
        }
        rig.ram
            .write_all_at(&[UNTOUCHED; 8192], page - GUEST)
            .unwrap();
    }
    stop.store(true, Ordering::Release);
    flapper.join().unwrap();
    // Mapped again: the read succeeds.
    assert_eq!(run(&rig.ctrl, &read), Status::SUCCESS);
    assert_eq!(rig.guest(page, 8192), on_media);
}

#[test]
fn a_passthrough_ssd_under_power_loss_sim_takes_the_buffer_and_loses_unflushed_writes() {
    let image = Image::new("powerloss");
    let (_ram, regions) = guest_memory(false);
    let layer = Arc::new(VolatileNamespace::new(
        "ssd0",
        Box::new(image.namespace()),
        crate::power_loss::DEFAULT_LIMIT_SECTORS,
    ));
    // The direct path would write the image behind the cache's back.
    assert!(!layer.direct_guest_io());
    let ctrl = controller(regions.clone(), layer.clone());
    let flushed = pattern(1, 4096);
    let unflushed = pattern(2, 4096);
    regions.write(GUEST, &flushed).unwrap();
    regions.write(GUEST + 0x1000, &unflushed).unwrap();
    assert_eq!(
        run(&ctrl, &prp_command(io::WRITE, 0, 8, GUEST, 0)),
        Status::SUCCESS
    );
    assert_eq!(run(&ctrl, &flush_command()), Status::SUCCESS);
    assert_eq!(
        run(&ctrl, &prp_command(io::WRITE, 8, 8, GUEST + 0x1000, 0)),
        Status::SUCCESS
    );
    // Reads see the unflushed write, from the cache (the image lacks it).
    assert_eq!(
        run(&ctrl, &prp_command(io::READ, 8, 8, GUEST + 0x8000, 0)),
        Status::SUCCESS
    );
    let mut back = vec![0u8; 4096];
    regions.read(GUEST + 0x8000, &mut back).unwrap();
    assert_eq!(back, unflushed);
    assert!(image.bytes(8 * 512, 4096).iter().all(|&b| b == 0));
    // The cut keeps none of the unflushed sectors.
    layer.tear(&mut SplitMix64::new(15), 0).unwrap();
    assert_eq!(image.bytes(0, 4096), flushed);
    assert!(image.bytes(8 * 512, 4096).iter().all(|&b| b == 0));
}

#[test]
fn the_reused_buffer_never_hands_out_an_earlier_commands_data() {
    // A namespace without the direct path, a read of data, then a read of
    // never-written blocks: the second sees zeroes, not the first's bytes.
    let rig = Rig::new("reuse", false, false);
    rig.image.fill(0, &pattern(9, 128 << 10));
    write_prp_list(
        &*rig.regions,
        LISTS,
        &(1..32).map(|i| GUEST + i * PAGE).collect::<Vec<_>>(),
    );
    let big = prp_command(io::READ, 0, 256, GUEST, LISTS);
    assert_eq!(run(&rig.ctrl, &big), Status::SUCCESS);
    assert_eq!(rig.guest(GUEST, 128 << 10), pattern(9, 128 << 10));
    let small = prp_command(io::READ, 1024, 8, GUEST + 0x4_0000, 0);
    assert_eq!(run(&rig.ctrl, &small), Status::SUCCESS);
    assert!(rig.guest(GUEST + 0x4_0000, 4096).iter().all(|&b| b == 0));
    assert_eq!(rig.paths(), (0, 2));
}

/// CPU time this thread has used: what a command costs, unlike the wall
/// clock, hardly moves when other work shares the machine.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Runs `iterations` reads or writes of `len` bytes through `rig`;
/// returns the thread's CPU nanoseconds per command.
fn time_path(rig: &Rig, opcode: u8, len: u64, iterations: u32) -> u128 {
    let pages = len / PAGE;
    let prp2 = if pages <= 1 {
        0
    } else if pages == 2 {
        GUEST + PAGE
    } else {
        write_prp_list(
            &*rig.regions,
            LISTS,
            &(1..pages).map(|i| GUEST + i * PAGE).collect::<Vec<_>>(),
        );
        LISTS
    };
    let blocks = (len / 512) as u32;
    let slots = IMAGE_BYTES / len;
    let start = thread_cpu();
    for n in 0..u64::from(iterations) {
        let slba = (n * 7 % slots) * len / 512;
        let sqe = prp_command(opcode, slba, blocks, GUEST, prp2);
        assert_eq!(run(&rig.ctrl, &sqe), Status::SUCCESS);
    }
    (thread_cpu() - start).as_nanos() / u128::from(iterations)
}

/// Minimum, median and maximum.
fn spread(mut v: Vec<u128>) -> (u128, u128, u128) {
    v.sort_unstable();
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

#[test]
#[ignore = "a timing, not a check: run with --ignored --nocapture (release build) for the numbers in Documentation/benchmarks.rst"]
fn direct_and_buffered_paths_timed() {
    const ROUNDS: usize = 7;
    let direct = Rig::new("bench-direct", true, false);
    let buffered = Rig::new("bench-buffer", false, false);
    direct.image.fill(0, &pattern(1, IMAGE_BYTES as usize));
    buffered.image.fill(0, &pattern(1, IMAGE_BYTES as usize));
    for (len, iterations) in [(4096u64, 10_000u32), (128 << 10, 1_000)] {
        for (name, opcode) in [("read", io::READ), ("write", io::WRITE)] {
            // One untimed pass warms the page cache and the buffer.
            time_path(&direct, opcode, len, iterations / 10);
            time_path(&buffered, opcode, len, iterations / 10);
            // Rounds alternate, so both paths see the same machine.
            let (mut d, mut b) = (Vec::new(), Vec::new());
            for _ in 0..ROUNDS {
                d.push(time_path(&direct, opcode, len, iterations));
                b.push(time_path(&buffered, opcode, len, iterations));
            }
            let (d, b) = (spread(d), spread(b));
            println!(
                "{:>3} KiB {name:<5} CPU ns/command over {ROUNDS} rounds of {iterations}: \
                 direct {}/{}/{} buffered {}/{}/{} (min/median/max)",
                len >> 10,
                d.0,
                d.1,
                d.2,
                b.0,
                b.1,
                b.2
            );
        }
    }
    assert!(direct.paths().1 == 0 && buffered.paths().0 == 0);
    // What the buffer path cost more before it reused its buffer: a zeroed
    // vector per command.
    for (len, iterations) in [(4096usize, 10_000u32), (128 << 10, 1_000)] {
        let rounds = (0..ROUNDS)
            .map(|_| {
                let start = thread_cpu();
                for _ in 0..iterations {
                    drop(std::hint::black_box(vec![0u8; len]));
                }
                (thread_cpu() - start).as_nanos() / u128::from(iterations)
            })
            .collect();
        let v = spread(rounds);
        println!(
            "{:>3} KiB zeroed Vec per command, CPU ns: {}/{}/{} (min/median/max)",
            len >> 10,
            v.0,
            v.1,
            v.2
        );
    }
}

#[test]
fn host_ranges_merge_where_the_host_is_contiguous_and_split_past_iov_max() {
    let image = Image::new("iovmax");
    let ns = image.namespace();
    // One region: adjacent guest pieces are one host range.
    let (first_ram, one) = guest_memory(false);
    let pieces = [(GUEST, 100), (GUEST + 100, 4000), (GUEST + 8192, 10)];
    let buffer = one.host_iovecs(&mut pieces.iter().copied(), true).unwrap();
    assert_eq!(buffer.iovecs().len(), 2);
    assert_eq!(buffer.len(), 4110);
    drop(buffer);
    // Read-only or unmapped: no host ranges.
    one.map(GUEST, PAGE, &first_ram, 0, false).unwrap();
    assert!(one
        .host_iovecs(&mut [(GUEST, 16)].iter().copied(), true)
        .is_none());
    assert!(one
        .host_iovecs(&mut [(GUEST, 16)].iter().copied(), false)
        .is_some());
    assert!(one
        .host_iovecs(
            &mut [(GUEST + GUEST_PAGES * PAGE - 8, 16)].iter().copied(),
            false
        )
        .is_none());
    assert!(one
        .host_iovecs(&mut [(u64::MAX - 4, 16)].iter().copied(), false)
        .is_none());

    // 1,500 pieces of 512 bytes with gaps between them: more ranges than
    // one preadv takes, so the transfer is split, and every piece gets its
    // own slice of the media.
    let on_media = pattern(21, 1500 * 512);
    image.fill(0, &on_media);
    let (ram, regions) = guest_memory(false);
    let pieces: Vec<(u64, u64)> = (0..1500u64).map(|i| (GUEST + i * 1024, 512)).collect();
    let buffer = regions
        .host_iovecs(&mut pieces.iter().copied(), true)
        .unwrap();
    assert_eq!(buffer.iovecs().len(), 1500);
    ns.read_to_guest(0, &buffer).unwrap();
    drop(buffer);
    for (i, &(addr, _)) in pieces.iter().enumerate() {
        let mut got = vec![0u8; 1024];
        ram.read_exact_at(&mut got, addr - GUEST).unwrap();
        assert_eq!(got[..512], on_media[i * 512..(i + 1) * 512], "piece {i}");
        assert!(
            got[512..].iter().all(|&b| b == UNTOUCHED),
            "gap after piece {i}"
        );
    }
    // And back: the pieces written at another offset, in order.
    let buffer = regions
        .host_iovecs(&mut pieces.iter().copied(), false)
        .unwrap();
    ns.write_from_guest(1 << 20, &buffer).unwrap();
    drop(buffer);
    assert_eq!(image.bytes(1 << 20, on_media.len()), on_media);
    // A read past the end of the image fails instead of half-filling.
    let buffer = regions
        .host_iovecs(&mut [(GUEST, 4096)].iter().copied(), true)
        .unwrap();
    assert!(ns.read_to_guest(IMAGE_BYTES - 512, &buffer).is_err());
}
