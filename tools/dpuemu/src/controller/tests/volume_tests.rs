//! The vendor volume commands end to end: an accelerator over SSD image
//! files, driven through its admin and I/O queues like the host driver
//! drives it, with data read back through I/O commands.

use std::path::PathBuf;

use nvme_shim::vendor::{
    compression, fault, layout, service, FaultInjection, ObjectName, ServiceSettings, SnapshotList,
    SsdList, Statistics, VolumeCreate, VolumeList, VOLUME_CREATE_OPEN_EXISTING, VOLUME_FLAG_CLONE,
    VOLUME_FLAG_DEGRADED, VOLUME_FLAG_LOCKED,
};
use nvme_shim::wire::c_string_field;

use super::*;
use crate::namespace::FileNamespace;

mod lograid_tests;
mod maintenance_tests;
mod nvmf_configure_tests;

const SSD_BYTES: u64 = 4 << 20;
const PAYLOAD: u64 = 0x300000;
const OUT: u64 = 0x310000;
const PRP_LIST: u64 = 0x320000;
const BLOCK: usize = 4096;

/// SSD image files in a fresh directory, removed at the end.
struct Images {
    dir: PathBuf,
    paths: Vec<PathBuf>,
}

impl Images {
    fn new(tag: &str, count: usize, bytes: u64) -> Self {
        let dir = std::env::temp_dir().join(format!("dpuemu-vol-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let paths: Vec<PathBuf> = (0..count).map(|i| dir.join(format!("ssd{i}"))).collect();
        for p in &paths {
            FileNamespace::open(p, Some(bytes)).unwrap();
        }
        Images { dir, paths }
    }
}

impl Drop for Images {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An accelerator over the images (as dpuemu starts it: the manager scans
/// the labels), with one I/O queue pair. Namespace 1 is the test's plain
/// in-memory namespace, as with `--passthrough-ssd`.
struct Accel {
    host: Host,
    ownership: Vec<Arc<SsdOwnership>>,
}

impl Accel {
    fn start(images: &Images) -> Self {
        let mut ownership = Vec::new();
        let ssds: Vec<SsdHandle> = images
            .paths
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let o = Arc::new(SsdOwnership::new());
                ownership.push(o.clone());
                SsdHandle {
                    index: i as u16,
                    ownership: o,
                    media: Arc::new(FileNamespace::open(p, None).unwrap()),
                    serial: format!("SSD{i}"),
                }
            })
            .collect();
        let volumes = Arc::new(VolumeManager::open(&ssds));
        let mut host = Host::with_personality(Personality::Accelerator { ssds, volumes });
        host.enable();
        host.create_pair(1, 16);
        Accel { host, ownership }
    }

    fn attach(&mut self, ssds: &[u16]) {
        for &i in ssds {
            assert_eq!(
                self.host.admin_status(vendor::ssd_command(i, true, 0)),
                Status::SUCCESS
            );
        }
    }

    /// A vendor command with a host-to-device payload.
    fn send(&mut self, mut sqe: SubmissionEntry, payload: &[u8]) -> CompletionEntry {
        self.host.mem.write(PAYLOAD, payload).unwrap();
        sqe.prp1.set(PAYLOAD);
        self.host.admin(sqe)
    }

    /// A vendor command with a device-to-host payload of `len` bytes.
    fn fetch(&mut self, mut sqe: SubmissionEntry, len: usize) -> Result<Vec<u8>, Status> {
        sqe.prp1.set(OUT);
        let status = self.host.admin_status(sqe);
        if status.is_success() {
            Ok(self.host.read_mem(OUT, len))
        } else {
            Err(status)
        }
    }

    fn result(cqe: CompletionEntry) -> Result<u32, Status> {
        if cqe.status().is_success() {
            Ok(cqe.result.get())
        } else {
            Err(cqe.status())
        }
    }

    fn create(&mut self, req: &VolumeCreate) -> Result<u32, Status> {
        let sqe = SubmissionEntry::new(vendor::opcode::VOLUME_CREATE, 0);
        let cqe = self.send(sqe, req.as_bytes());
        Self::result(cqe)
    }

    fn simple(&mut self, op: u8, nsid: u32, cdw10: u32) -> Result<u32, Status> {
        let mut sqe = SubmissionEntry::new(op, 0);
        sqe.nsid.set(nsid);
        sqe.cdw10.set(cdw10);
        Self::result(self.host.admin(sqe))
    }

    fn named(&mut self, op: u8, nsid: u32, cdw10: u32, name: &str) -> Result<u32, Status> {
        let mut sqe = SubmissionEntry::new(op, 0);
        sqe.nsid.set(nsid);
        sqe.cdw10.set(cdw10);
        let mut n = ObjectName::zeroed();
        c_string_field(&mut n.name, name.as_bytes());
        Self::result(self.send(sqe, n.as_bytes()))
    }

    fn delete(&mut self, nsid: u32) -> Result<u32, Status> {
        self.simple(vendor::opcode::VOLUME_DELETE, nsid, 0)
    }

    fn volumes(&mut self) -> Vec<vendor::VolumeListEntry> {
        let sqe = SubmissionEntry::new(vendor::opcode::VOLUME_LIST, 0);
        let list = VolumeList::read_from(&self.fetch(sqe, 4096).unwrap()).unwrap();
        list.entries[..list.count.get() as usize]
            .iter()
            .filter(|e| e.nsid.get() != 1)
            .copied()
            .collect()
    }

    fn volume(&mut self, name: &str) -> vendor::VolumeListEntry {
        self.volumes()
            .into_iter()
            .find(|e| nvme_shim::wire::c_string_bytes(&e.name) == name.as_bytes())
            .unwrap_or_else(|| panic!("volume {name} not listed"))
    }

    fn statistics(&mut self, nsid: u32) -> Statistics {
        let mut sqe = SubmissionEntry::new(vendor::opcode::STATISTICS, 0);
        sqe.nsid.set(nsid);
        Statistics::read_from(&self.fetch(sqe, 512).unwrap()).unwrap()
    }

    fn ssd_in_use(&mut self, index: usize) -> bool {
        let sqe = SubmissionEntry::new(vendor::opcode::SSD_LIST, 0);
        let list = SsdList::read_from(&self.fetch(sqe, 4096).unwrap()).unwrap();
        let flags = list.entries[index].flags;
        assert_eq!(
            flags & vendor::SSD_FLAG_IN_USE != 0,
            self.ownership[index].view().in_use
        );
        flags & vendor::SSD_FLAG_IN_USE != 0
    }

    fn fault(&mut self, kind: u8, ssd: u16, slba: u64, blocks: u64) -> Result<u32, Status> {
        let mut f = FaultInjection::zeroed();
        f.kind = kind;
        f.ssd_index.set(ssd);
        f.slba.set(slba);
        f.blocks.set(blocks);
        let sqe = SubmissionEntry::new(vendor::opcode::FAULT_INJECT, 0);
        Self::result(self.send(sqe, f.as_bytes()))
    }

    /// Read, Write or Write Zeroes of whole 4 KiB blocks through the I/O
    /// queue; data goes through a PRP list.
    fn block_io(&mut self, opcode: u8, nsid: u32, lba: u64, blocks: usize, fua: bool) -> Status {
        let mut sqe = BlockRange {
            nsid,
            slba: lba,
            blocks: blocks as u32,
            fua,
            deallocate: false,
        }
        .encode(opcode, 0);
        sqe.prp1.set(DATA);
        if blocks == 2 {
            sqe.prp2.set(DATA + BLOCK as u64);
        } else if blocks > 2 {
            for i in 1..blocks {
                let entry = DATA + (i * BLOCK) as u64;
                self.host
                    .mem
                    .write(PRP_LIST + (i as u64 - 1) * 8, &entry.to_le_bytes())
                    .unwrap();
            }
            sqe.prp2.set(PRP_LIST);
        }
        self.host.io_status(1, sqe)
    }

    fn write(&mut self, nsid: u32, lba: u64, data: &[u8]) -> Status {
        self.host.mem.write(DATA, data).unwrap();
        self.block_io(io::WRITE, nsid, lba, data.len() / BLOCK, false)
    }

    fn read(&mut self, nsid: u32, lba: u64, blocks: usize) -> Result<Vec<u8>, Status> {
        let status = self.block_io(io::READ, nsid, lba, blocks, false);
        if status.is_success() {
            Ok(self.host.read_mem(DATA, blocks * BLOCK))
        } else {
            Err(status)
        }
    }

    fn flush(&mut self, nsid: u32) -> Status {
        let mut sqe = SubmissionEntry::new(io::FLUSH, 0);
        sqe.nsid.set(nsid);
        self.host.io_status(1, sqe)
    }

    fn identify_namespace(&mut self, nsid: u32) -> Result<IdentifyNamespace, Status> {
        let sqe = Identify {
            cns: cns::NAMESPACE,
            nsid,
            cntid: 0,
            prp1: OUT,
            prp2: 0,
        }
        .encode(0);
        let status = self.host.admin_status(sqe);
        if !status.is_success() {
            return Err(status);
        }
        Ok(IdentifyNamespace::read_from(&self.host.read_mem(OUT, 4096)).unwrap())
    }

    fn active_nsids(&mut self) -> Vec<u32> {
        let sqe = Identify {
            cns: cns::ACTIVE_NAMESPACES,
            nsid: 0,
            cntid: 0,
            prp1: OUT,
            prp2: 0,
        }
        .encode(0);
        assert_eq!(self.host.admin_status(sqe), Status::SUCCESS);
        self.host
            .read_mem(OUT, 4096)
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .take_while(|&n| n != 0)
            .collect()
    }
}

fn request(name: &str, layout: u8, mask: u64, size: u64) -> VolumeCreate {
    let mut req = VolumeCreate::zeroed();
    req.size_bytes.set(size);
    req.lba_shift = 12;
    req.layout = layout;
    req.ssd_mask.set(mask);
    c_string_field(&mut req.name, name.as_bytes());
    req
}

fn key(seed: u8) -> [u8; 64] {
    let mut k = [0u8; 64];
    for (i, b) in k.iter_mut().enumerate() {
        *b = seed.wrapping_add(i as u8).wrapping_mul(7) | 1;
    }
    k
}

fn blocks_pattern(blocks: usize, seed: u8) -> Vec<u8> {
    pattern(blocks * BLOCK, seed)
}

#[test]
fn every_layout_is_created_and_verified_through_io() {
    let images = Images::new("layouts", 6, SSD_BYTES);
    let mut a = Accel::start(&images);
    a.attach(&[0, 1, 2, 3, 4, 5]);
    let cases: [(&str, u8, u8, u8, u64); 10] = [
        ("single", layout::SINGLE, 0, 0, 0b1),
        ("concat", layout::SINGLE, 0, 0, 0b11),
        ("stripe", layout::RAID0, 0, 0, 0b111),
        ("mirror", layout::RAID10, 2, 0, 0b1111),
        ("mirror3", layout::RAID10, 3, 0, 0b111),
        ("raid6", layout::RAID6, 0, 0, 0b1111),
        ("raid6x6", layout::RAID6, 4, 2, 0b111111),
        ("ec32", layout::ERASURE, 3, 2, 0b11111),
        ("lograid6", layout::LOG_RAID, 0, 0, 0b111111),
        ("lograid31", layout::LOG_RAID, 3, 1, 0b1111),
    ];
    for (i, &(name, lay, k, m, mask)) in cases.iter().enumerate() {
        let mut req = request(name, lay, mask, 64 << 20);
        req.data_shards = k;
        req.parity_shards = m;
        req.services.set(service::THIN);
        req.stripe_bytes.set(if i % 2 == 0 { 0 } else { 16 << 10 });
        let nsid = a.create(&req).unwrap_or_else(|s| panic!("{name}: {s:?}"));
        assert_eq!(nsid, 2, "{name}: the lowest free NSID");
        assert_eq!(a.active_nsids(), vec![1, 2]);
        let id = a.identify_namespace(nsid).unwrap();
        assert_eq!(id.nsze.get(), (64 << 20) / 4096, "{name}");
        assert_eq!(id.lbaf[0].lbads, 12);
        assert_eq!(id.nuse.get(), 0);
        // 24 blocks in one command, another one far away, a FUA write.
        let data = blocks_pattern(24, i as u8);
        assert_eq!(a.write(nsid, 5, &data), Status::SUCCESS, "{name}");
        let far = blocks_pattern(1, 0x80 + i as u8);
        assert_eq!(a.write(nsid, 16000, &far), Status::SUCCESS);
        a.host.mem.write(DATA, &far).unwrap();
        assert_eq!(a.block_io(io::WRITE, nsid, 7, 1, true), Status::SUCCESS);
        assert_eq!(a.flush(nsid), Status::SUCCESS);
        let mut want = data.clone();
        want[2 * BLOCK..3 * BLOCK].copy_from_slice(&far);
        assert_eq!(a.read(nsid, 5, 24).unwrap(), want, "{name}");
        assert_eq!(a.read(nsid, 16000, 1).unwrap(), far);
        assert_eq!(a.read(nsid, 100, 2).unwrap(), vec![0u8; 2 * BLOCK]);
        assert_eq!(a.identify_namespace(nsid).unwrap().nuse.get(), 25);
        // Write Zeroes unmaps.
        assert_eq!(
            a.block_io(io::WRITE_ZEROES, nsid, 5, 2, false),
            Status::SUCCESS
        );
        assert_eq!(
            a.read(nsid, 5, 3).unwrap()[..2 * BLOCK],
            vec![0u8; 2 * BLOCK]
        );
        // Past the end.
        assert_eq!(a.read(nsid, 16384, 1), Err(Status::LBA_OUT_OF_RANGE));
        let entry = a.volume(name);
        assert_eq!(entry.nsid.get(), nsid);
        assert_eq!(entry.layout, lay);
        assert_eq!(entry.lba_shift, 12);
        assert_eq!(entry.size_bytes.get(), 64 << 20);
        assert!(entry.used_bytes.get() >= 23 * 4096);
        assert_eq!(entry.services.get(), service::THIN);
        let (dk, pk) = match lay {
            layout::SINGLE => (1, 0),
            layout::RAID0 => (3, 0),
            _ if lay == layout::RAID6 => (mask.count_ones() as u8 - 2, 2),
            _ if lay == layout::LOG_RAID && k == 0 => (mask.count_ones() as u8 - 2, 2),
            _ => (k, m),
        };
        assert_eq!((entry.data_shards, entry.parity_shards), (dk, pk), "{name}");
        let stats = a.statistics(nsid);
        assert_eq!(stats.write_commands.get(), 3);
        assert_eq!(stats.logical_bytes.get(), 23 * 4096);
        assert!(stats.pool_capacity_bytes.get() > 0);
        assert!(stats.pool_free_bytes.get() < stats.pool_capacity_bytes.get());
        assert_eq!(stats.array_state, vendor::ARRAY_STATE_OPTIMAL);
        for ssd in 0..6 {
            assert_eq!(
                a.ssd_in_use(ssd),
                mask & (1 << ssd) != 0,
                "{name} SSD {ssd}"
            );
        }
        assert_eq!(
            a.host.admin_status(vendor::ssd_command(0, false, 0)),
            vendor_status(vs::SSD_IN_USE)
        );
        assert_eq!(a.delete(nsid), Ok(0));
        assert_eq!(a.read(nsid, 5, 1), Err(Status::INVALID_NAMESPACE));
        assert_eq!(
            a.identify_namespace(nsid).err(),
            Some(Status::INVALID_NAMESPACE)
        );
        assert_eq!(a.active_nsids(), vec![1]);
        assert!((0..6).all(|s| !a.ssd_in_use(s)), "{name}: SSDs released");
    }
    // Released SSDs detach and their images are blank again.
    assert_eq!(
        a.host.admin_status(vendor::ssd_command(0, false, 0)),
        Status::SUCCESS
    );
    let image = std::fs::read(&images.paths[0]).unwrap();
    assert!(image.iter().all(|&b| b == 0));
}

#[test]
fn volume_create_validation() {
    let images = Images::new("validate", 5, SSD_BYTES);
    let mut a = Accel::start(&images);
    a.attach(&[0, 1, 2, 3]);
    // SSD 4 stays host-owned.
    let base = request("v", layout::SINGLE, 0b1, 1 << 20);
    let invalid = vendor_status(vs::INVALID_PAYLOAD);
    let bad_layout = vendor_status(vs::INVALID_LAYOUT);
    let not_impl = vendor_status(vs::NOT_IMPLEMENTED);
    type Edit = fn(&mut VolumeCreate);
    let cases: Vec<(&str, Edit, Status)> = vec![
        ("empty name", |r| r.name = [0; 32], invalid),
        ("name without NUL", |r| r.name = [b'a'; 32], invalid),
        ("name with a space", |r| r.name[1] = b' ', invalid),
        ("name with a slash", |r| r.name[0] = b'/', invalid),
        ("512-byte blocks", |r| r.lba_shift = 9, invalid),
        ("lba shift 13", |r| r.lba_shift = 13, invalid),
        ("size 0", |r| r.size_bytes.set(0), invalid),
        ("size not 4 KiB", |r| r.size_bytes.set(6000), invalid),
        ("unknown service", |r| r.services.set(1 << 6), invalid),
        (
            "log-structured",
            |r| r.services.set(service::LOG_STRUCTURED),
            not_impl,
        ),
        (
            "Log-RAID on one SSD",
            |r| r.layout = layout::LOG_RAID,
            bad_layout,
        ),
        ("unknown layout", |r| r.layout = 9, bad_layout),
        ("stripe 3000", |r| r.stripe_bytes.set(3000), invalid),
        ("stripe 2 KiB", |r| r.stripe_bytes.set(2048), invalid),
        ("stripe 2 MiB", |r| r.stripe_bytes.set(2 << 20), invalid),
        (
            "unknown codec",
            |r| {
                r.services.set(service::COMPRESSION);
                r.compression = 7;
            },
            invalid,
        ),
        ("zero key", |r| r.services.set(service::ENCRYPTION), invalid),
        (
            "equal key halves",
            |r| {
                r.services.set(service::ENCRYPTION);
                r.key = [5; 64];
            },
            invalid,
        ),
        ("unknown flag", |r| r.flags = 1 << 3, invalid),
        ("no SSDs", |r| r.ssd_mask.set(0), bad_layout),
        (
            "no such SSD",
            |r| r.ssd_mask.set(1 << 9),
            vendor_status(vs::SSD_NOT_FOUND),
        ),
        (
            "host-owned SSD",
            |r| r.ssd_mask.set(0b10001),
            vendor_status(vs::SSD_NOT_ATTACHED),
        ),
        ("RAID0 on one", |r| r.layout = layout::RAID0, bad_layout),
        (
            "RAID6 on three",
            |r| {
                r.layout = layout::RAID6;
                r.ssd_mask.set(0b111);
            },
            bad_layout,
        ),
        (
            "RAID6 with one parity",
            |r| {
                r.layout = layout::RAID6;
                r.ssd_mask.set(0b1111);
                r.parity_shards = 1;
            },
            bad_layout,
        ),
        (
            "RAID10 with four copies",
            |r| {
                r.layout = layout::RAID10;
                r.ssd_mask.set(0b1111);
                r.data_shards = 4;
            },
            bad_layout,
        ),
        (
            "RAID10 three copies on four",
            |r| {
                r.layout = layout::RAID10;
                r.ssd_mask.set(0b1111);
                r.data_shards = 3;
            },
            bad_layout,
        ),
        (
            "erasure k+m != SSDs",
            |r| {
                r.layout = layout::ERASURE;
                r.ssd_mask.set(0b1111);
                r.data_shards = 2;
                r.parity_shards = 1;
            },
            bad_layout,
        ),
        (
            "erasure without parity",
            |r| {
                r.layout = layout::ERASURE;
                r.ssd_mask.set(0b11);
                r.data_shards = 2;
            },
            bad_layout,
        ),
        (
            "bigger than the pool",
            |r| r.size_bytes.set(64 << 20),
            vendor_status(vs::NO_SPACE),
        ),
        (
            "open a volume that does not exist",
            |r| r.flags = VOLUME_CREATE_OPEN_EXISTING,
            vendor_status(vs::VOLUME_NOT_FOUND),
        ),
    ];
    for (what, edit, want) in cases {
        let mut req = base;
        edit(&mut req);
        assert_eq!(a.create(&req), Err(want), "{what}");
        // Nothing half-created: no SSD in use, no namespace, no volume.
        assert!((0..5).all(|s| !a.ssd_in_use(s)), "{what}");
        assert_eq!(a.active_nsids(), vec![1], "{what}");
        assert!(a.volumes().is_empty(), "{what}");
    }
    // The base request is fine; its name and SSD are then taken.
    let nsid = a.create(&base).unwrap();
    let mut other = request("v", layout::SINGLE, 0b10, 1 << 20);
    assert_eq!(a.create(&other), Err(vendor_status(vs::VOLUME_EXISTS)));
    other = request("w", layout::SINGLE, 0b1, 1 << 20);
    assert_eq!(a.create(&other), Err(vendor_status(vs::SSD_IN_USE)));
    let snap = a
        .named(vendor::opcode::SNAPSHOT_CREATE, nsid, 0, "v")
        .unwrap_err();
    assert_eq!(snap, vendor_status(vs::VOLUME_EXISTS));
    let bad = a
        .named(vendor::opcode::SNAPSHOT_CREATE, nsid, 0, "a b")
        .unwrap_err();
    assert_eq!(bad, invalid);
    assert!(!a.ssd_in_use(1));

    // The other commands' errors.
    let op = vendor::opcode::VOLUME_RESIZE;
    let mut resize = vendor::volume_resize(nsid, 6000, 0);
    assert_eq!(a.host.admin_status(resize), invalid);
    resize = vendor::volume_resize(nsid, 0, 0);
    assert_eq!(a.host.admin_status(resize), invalid);
    resize = vendor::volume_resize(nsid, 1 << 30, 0);
    assert_eq!(a.host.admin_status(resize), vendor_status(vs::NO_SPACE));
    assert_eq!(
        a.simple(op, 77, 0),
        Err(vendor_status(vs::VOLUME_NOT_FOUND))
    );
    assert_eq!(a.delete(77), Err(vendor_status(vs::VOLUME_NOT_FOUND)));
    assert_eq!(a.delete(1), Err(vendor_status(vs::VOLUME_NOT_FOUND)));
    let sd = vendor::opcode::SNAPSHOT_DELETE;
    assert_eq!(
        a.simple(sd, 0, 99),
        Err(vendor_status(vs::SNAPSHOT_NOT_FOUND))
    );
    let sc = vendor::opcode::SNAPSHOT_CLONE;
    let clone = a.named(sc, 0, 99, "c");
    assert_eq!(clone, Err(vendor_status(vs::SNAPSHOT_NOT_FOUND)));
    let sr = vendor::opcode::SNAPSHOT_REVERT;
    assert_eq!(
        a.simple(sr, nsid, 99),
        Err(vendor_status(vs::SNAPSHOT_NOT_FOUND))
    );
    let mut list = SubmissionEntry::new(vendor::opcode::SNAPSHOT_LIST, 0);
    list.nsid.set(55);
    assert_eq!(
        a.fetch(list, 4096).err(),
        Some(vendor_status(vs::VOLUME_NOT_FOUND))
    );

    // Service Set: fixed services are invalid to change, the others are
    // not offered, the same settings are accepted.
    let mut get = SubmissionEntry::new(vendor::opcode::SERVICE_GET, 0);
    get.nsid.set(nsid);
    let current = ServiceSettings::read_from(&a.fetch(get, 64).unwrap()).unwrap();
    assert_eq!(current.services.get(), 0);
    let mut set = SubmissionEntry::new(vendor::opcode::SERVICE_SET, 0);
    set.nsid.set(nsid);
    for (bits, want) in [
        (service::THIN, invalid),
        (service::ENCRYPTION, invalid),
        (service::LOG_STRUCTURED, invalid),
        (1 << 9, invalid),
        (service::DEDUP, not_impl),
        (service::ZERO_DETECT | service::COMPRESSION, not_impl),
    ] {
        let mut s = current;
        s.services.set(bits);
        assert_eq!(
            Accel::result(a.send(set, s.as_bytes())),
            Err(want),
            "{bits:#x}"
        );
    }
    assert_eq!(Accel::result(a.send(set, current.as_bytes())), Ok(0));

    // Fault Injection.
    assert_eq!(
        a.fault(fault::FAIL_READS, 4, 0, 0),
        Err(vendor_status(vs::SSD_NOT_ATTACHED))
    );
    assert_eq!(
        a.fault(fault::FAIL_READS, 8, 0, 0),
        Err(vendor_status(vs::SSD_NOT_FOUND))
    );
    assert_eq!(a.fault(fault::DELAY, 0, 0, 0), Err(not_impl));
    assert_eq!(a.fault(42, 0, 0, 0), Err(invalid));
    let blocks = SSD_BYTES / 512;
    assert_eq!(a.fault(fault::FAIL_READS, 0, blocks - 1, 2), Err(invalid));
    assert_eq!(a.fault(fault::FAIL_READS, 0, u64::MAX, 1), Err(invalid));
    assert_eq!(a.fault(fault::FAIL_READS, 0, blocks - 1, 1), Ok(0));
    assert_eq!(a.fault(fault::CLEAR, 0, 0, 0), Ok(0));
    // Not a volume namespace.
    get.nsid.set(1);
    assert_eq!(
        a.fetch(get, 64).err(),
        Some(vendor_status(vs::VOLUME_NOT_FOUND))
    );
    assert_eq!(a.delete(nsid), Ok(0));
}

#[test]
fn snapshot_list_pages_past_63_snapshots() {
    // One list page holds 63 entries; a volume may have more snapshots
    // (the persistence test takes 100), listed page by page from CDW10.
    let images = Images::new("snap-pages", 1, SSD_BYTES);
    let mut a = Accel::start(&images);
    a.attach(&[0]);
    let vol = a
        .create(&request("paged", layout::SINGLE, 0b1, 1 << 20))
        .unwrap();
    const SNAPSHOTS: u32 = 150;
    let mut made = std::collections::BTreeMap::new();
    for i in 0..SNAPSHOTS {
        let name = format!("p{i}");
        let id = a
            .named(vendor::opcode::SNAPSHOT_CREATE, vol, 0, &name)
            .unwrap();
        made.insert(name, id);
    }
    let mut listed = std::collections::BTreeMap::new();
    let mut first = 0;
    let mut pages = 0;
    loop {
        let page = SnapshotList::read_from(
            &a.fetch(vendor::snapshot_list_command(vol, first, 0), 4096)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(page.total.get(), SNAPSHOTS);
        let count = page.count.get();
        assert!(count <= 63);
        for e in &page.entries[..count as usize] {
            let name =
                String::from_utf8(nvme_shim::wire::c_string_bytes(&e.name).to_vec()).unwrap();
            assert!(listed.insert(name, e.id.get()).is_none(), "listed twice");
        }
        pages += 1;
        first += count;
        if count == 0 || first >= page.total.get() {
            break;
        }
    }
    assert_eq!(pages, 3, "63 + 63 + 24");
    assert_eq!(listed, made, "every snapshot once, with its ID");
    // Past the end: an empty page that still tells the total.
    let past = SnapshotList::read_from(
        &a.fetch(vendor::snapshot_list_command(vol, SNAPSHOTS, 0), 4096)
            .unwrap(),
    )
    .unwrap();
    assert_eq!((past.count.get(), past.total.get()), (0, SNAPSHOTS));
}

#[test]
fn snapshots_clones_revert_and_services() {
    let images = Images::new("snap", 2, SSD_BYTES);
    let mut a = Accel::start(&images);
    a.attach(&[0, 1]);
    let mut req = request("db", layout::RAID10, 0b11, 32 << 20);
    req.data_shards = 2;
    let bits = service::THIN | service::ZERO_DETECT | service::DEDUP | service::COMPRESSION;
    req.services.set(bits);
    req.compression = compression::ZSTD;
    let db = a.create(&req).unwrap();
    let mut get = SubmissionEntry::new(vendor::opcode::SERVICE_GET, 0);
    get.nsid.set(db);
    let settings = ServiceSettings::read_from(&a.fetch(get, 64).unwrap()).unwrap();
    assert_eq!(settings.services.get(), bits);
    assert_eq!(settings.compression, compression::ZSTD);

    let old = blocks_pattern(8, 1);
    assert_eq!(a.write(db, 0, &old), Status::SUCCESS);
    let snap1 = a
        .named(vendor::opcode::SNAPSHOT_CREATE, db, 0, "db.1")
        .unwrap();
    let new = blocks_pattern(8, 2);
    assert_eq!(a.write(db, 0, &new), Status::SUCCESS);
    assert_eq!(a.write(db, 8, &vec![0u8; 4 * BLOCK]), Status::SUCCESS);
    let snap2 = a
        .named(vendor::opcode::SNAPSHOT_CREATE, db, 0, "db.2")
        .unwrap();
    assert_ne!(snap1, snap2);
    assert_eq!(a.read(db, 0, 8).unwrap(), new);

    let mut list = SubmissionEntry::new(vendor::opcode::SNAPSHOT_LIST, 0);
    list.nsid.set(db);
    let snaps = SnapshotList::read_from(&a.fetch(list, 4096).unwrap()).unwrap();
    assert_eq!(snaps.count.get(), 2);
    let names: Vec<(u32, &[u8])> = snaps.entries[..2]
        .iter()
        .map(|e| (e.id.get(), nvme_shim::wire::c_string_bytes(&e.name)))
        .collect();
    assert!(names.contains(&(snap1, b"db.1".as_slice())));
    assert!(names.contains(&(snap2, b"db.2".as_slice())));

    // A clone of the first snapshot is a namespace at once with the old data.
    let clone = a
        .named(vendor::opcode::SNAPSHOT_CLONE, 0, snap1, "db-test")
        .unwrap();
    assert_ne!(clone, db);
    assert_eq!(a.read(clone, 0, 8).unwrap(), old);
    let mine = blocks_pattern(2, 3);
    assert_eq!(a.write(clone, 1, &mine), Status::SUCCESS);
    assert_eq!(a.read(db, 0, 8).unwrap(), new, "the origin is untouched");
    let entry = a.volume("db-test");
    assert_eq!(entry.flags.get() & VOLUME_FLAG_CLONE, VOLUME_FLAG_CLONE);
    assert_eq!(entry.services.get(), bits);
    assert_eq!(a.volume("db").flags.get(), 0);

    // Statistics of the volume family.
    let stats = a.statistics(db);
    assert_eq!(stats.logical_bytes.get(), 12 * 4096);
    assert_eq!(stats.zero_detect_saved_bytes.get(), 4 * 4096);
    assert!(stats.shared_bytes.get() > 0, "shared with db.2");
    assert!(stats.compression_saved_bytes.get() > 0, "patterns compress");

    // Revert to the first snapshot.
    let revert = vendor::opcode::SNAPSHOT_REVERT;
    assert_eq!(a.simple(revert, db, snap1), Ok(0));
    assert_eq!(a.read(db, 0, 8).unwrap(), old);
    assert_eq!(a.read(db, 8, 1).unwrap(), vec![0u8; BLOCK]);

    // Snapshots keep the volume; the family lives while anything is left.
    assert_eq!(a.delete(db), Err(vendor_status(vs::VOLUME_BUSY)));
    let sd = vendor::opcode::SNAPSHOT_DELETE;
    assert_eq!(a.simple(sd, 0, snap1), Ok(0));
    assert_eq!(
        a.simple(sd, 0, snap1),
        Err(vendor_status(vs::SNAPSHOT_NOT_FOUND))
    );
    let mut want = old.clone();
    want[BLOCK..3 * BLOCK].copy_from_slice(&mine);
    assert_eq!(
        a.read(clone, 0, 8).unwrap(),
        want,
        "the clone outlives its snapshot"
    );
    assert_eq!(a.simple(sd, 0, snap2), Ok(0));
    assert_eq!(a.delete(db), Ok(0));
    assert!(
        a.ssd_in_use(0) && a.ssd_in_use(1),
        "the clone still uses them"
    );
    assert_eq!(a.read(clone, 0, 8).unwrap(), want);
    assert_eq!(a.delete(clone), Ok(0));
    assert!(!a.ssd_in_use(0) && !a.ssd_in_use(1));
    assert!(a.volumes().is_empty());
}

#[test]
fn volumes_survive_a_restart() {
    let images = Images::new("restart", 5, SSD_BYTES);
    let secret = key(9);
    let (plain, crypt, clone, snap_data, plain_data, crypt_data, clone_data);
    {
        let mut a = Accel::start(&images);
        a.attach(&[0, 1, 2, 3, 4]);
        let mut req = request("plain", layout::SINGLE, 0b1, 2 << 20);
        req.services.set(service::ZERO_DETECT);
        plain = a.create(&req).unwrap();
        let mut req = request("secret", layout::RAID6, 0b11110, 16 << 20);
        req.services
            .set(service::THIN | service::ENCRYPTION | service::COMPRESSION);
        req.compression = compression::LZ4;
        req.key = secret;
        crypt = a.create(&req).unwrap();
        snap_data = blocks_pattern(4, 10);
        assert_eq!(a.write(plain, 0, &snap_data), Status::SUCCESS);
        let snap = a
            .named(vendor::opcode::SNAPSHOT_CREATE, plain, 0, "plain.0")
            .unwrap();
        plain_data = blocks_pattern(4, 11);
        assert_eq!(a.write(plain, 0, &plain_data), Status::SUCCESS);
        clone = a
            .named(vendor::opcode::SNAPSHOT_CLONE, 0, snap, "plain-c")
            .unwrap();
        clone_data = blocks_pattern(2, 12);
        assert_eq!(a.write(clone, 3, &clone_data), Status::SUCCESS);
        crypt_data = blocks_pattern(16, 13);
        assert_eq!(a.write(crypt, 100, &crypt_data), Status::SUCCESS);
        // One flush for everything (FFFFFFFFh), as a shutdown does.
        assert_eq!(a.flush(0xffff_ffff), Status::SUCCESS);
        // The images carry no plaintext of the encrypted volume.
        for p in &images.paths[1..] {
            let image = std::fs::read(p).unwrap();
            assert!(!image.windows(64).any(|w| w == &crypt_data[4096..4160]));
        }
    }
    // A new dpuemu over the same images.
    let mut a = Accel::start(&images);
    assert!((0..5).all(|s| a.ownership[s].view().attached && a.ssd_in_use(s)));
    assert_eq!(a.active_nsids(), vec![1, plain, clone]);
    assert_eq!(a.read(plain, 0, 4).unwrap(), plain_data);
    let mut want = snap_data.clone();
    want[3 * BLOCK..].copy_from_slice(&clone_data[..BLOCK]);
    assert_eq!(a.read(clone, 0, 4).unwrap(), want);
    assert_eq!(a.read(clone, 4, 1).unwrap(), clone_data[BLOCK..]);
    let entry = a.volume("plain-c");
    assert_eq!(entry.flags.get(), VOLUME_FLAG_CLONE);
    assert_eq!(a.volume("plain").services.get(), service::ZERO_DETECT);
    let locked = a.volume("secret");
    assert_eq!(
        (locked.nsid.get(), locked.flags.get()),
        (0, VOLUME_FLAG_LOCKED)
    );
    assert_eq!(locked.layout, layout::RAID6);
    assert_eq!(a.read(crypt, 100, 1), Err(Status::INVALID_NAMESPACE));
    let mut list = SubmissionEntry::new(vendor::opcode::SNAPSHOT_LIST, 0);
    list.nsid.set(plain);
    let snaps = SnapshotList::read_from(&a.fetch(list, 4096).unwrap()).unwrap();
    assert_eq!(snaps.count.get(), 1);
    assert_eq!(
        nvme_shim::wire::c_string_bytes(&snaps.entries[0].name),
        b"plain.0"
    );

    // Unlocking: no key, a wrong key, then the right one.
    let mut open = request("secret", 0, 0, 0);
    open.flags = VOLUME_CREATE_OPEN_EXISTING;
    assert_eq!(a.create(&open), Err(vendor_status(vs::KEY_REQUIRED)));
    open.key = key(10);
    assert_eq!(a.create(&open), Err(vendor_status(vs::KEY_MISMATCH)));
    open.key = secret;
    assert_eq!(a.create(&open), Ok(crypt), "the same NSID as before");
    assert_eq!(a.create(&open), Ok(crypt), "already open");
    assert_eq!(a.read(crypt, 100, 16).unwrap(), crypt_data);
    assert_eq!(a.volume("secret").flags.get(), 0);
    let mut open_plain = request("plain", 0, 0, 0);
    open_plain.flags = VOLUME_CREATE_OPEN_EXISTING;
    assert_eq!(a.create(&open_plain), Ok(plain));

    // Deleting everything releases the SSDs and wipes the family.
    let snap = snaps.entries[0].id.get();
    assert_eq!(a.simple(vendor::opcode::SNAPSHOT_DELETE, 0, snap), Ok(0));
    for nsid in [plain, clone, crypt] {
        assert_eq!(a.delete(nsid), Ok(0));
    }
    assert!((0..5).all(|s| !a.ssd_in_use(s)));
    drop(a);
    let mut a = Accel::start(&images);
    assert!((0..5).all(|s| !a.ownership[s].view().attached));
    assert!(a.volumes().is_empty());
    assert_eq!(a.active_nsids(), vec![1]);
}

#[test]
fn a_full_thin_pool_answers_capacity_exceeded() {
    let images = Images::new("full", 1, 1 << 20);
    let mut a = Accel::start(&images);
    a.attach(&[0]);
    let mut req = request("thin", layout::SINGLE, 0b1, 64 << 20);
    req.services.set(service::THIN);
    let nsid = a.create(&req).unwrap();
    let mut lba = 0;
    let status = loop {
        let data: Vec<u8> = (0..8 * BLOCK)
            .map(|i| (i as u64 * 2654435761 + lba * 977) as u8 ^ (i >> 7) as u8)
            .collect();
        let s = a.write(nsid, lba, &data);
        if !s.is_success() {
            break s;
        }
        lba += 8;
        assert!(lba < 1024, "a 1 MiB pool cannot take 4 MiB");
    };
    assert_eq!(status, Status::CAPACITY_EXCEEDED);
    assert!(status.do_not_retry());
    // What was acknowledged reads back; discarding makes room again.
    assert_eq!(a.read(nsid, 0, 1).unwrap().len(), BLOCK);
    assert_eq!(
        a.block_io(io::WRITE_ZEROES, nsid, 0, 64, false),
        Status::SUCCESS
    );
    assert_eq!(a.flush(nsid), Status::SUCCESS);
    assert_eq!(a.write(nsid, lba, &blocks_pattern(8, 4)), Status::SUCCESS);
    assert_eq!(a.read(nsid, lba, 8).unwrap(), blocks_pattern(8, 4));
}

#[test]
fn faults_under_a_raid6_volume() {
    let images = Images::new("faults", 5, SSD_BYTES);
    let mut a = Accel::start(&images);
    a.attach(&[0, 1, 2, 3, 4]);
    let mut req = request("r6", layout::RAID6, 0b11110, 4 << 20);
    req.stripe_bytes.set(16 << 10);
    let nsid = a.create(&req).unwrap();
    let data = blocks_pattern(32, 21);
    assert_eq!(a.write(nsid, 0, &data), Status::SUCCESS);
    assert_eq!(a.flush(nsid), Status::SUCCESS);
    // Reads of SSD 2 fail: reconstruction serves them.
    assert_eq!(a.fault(fault::FAIL_READS, 2, 0, 0), Ok(0));
    assert_eq!(a.read(nsid, 0, 32).unwrap(), data);
    assert!(a.statistics(nsid).degraded_reads.get() > 0);
    // SSD 3 disappears: the array runs degraded, writes go on.
    assert_eq!(a.fault(fault::CLEAR, 2, 0, 0), Ok(0));
    assert_eq!(a.fault(fault::DISAPPEAR, 3, 0, 0), Ok(0));
    let more = blocks_pattern(16, 22);
    assert_eq!(a.write(nsid, 8, &more), Status::SUCCESS);
    assert_eq!(a.flush(nsid), Status::SUCCESS);
    let mut want = data.clone();
    want[8 * BLOCK..24 * BLOCK].copy_from_slice(&more);
    assert_eq!(a.read(nsid, 0, 32).unwrap(), want);
    let entry = a.volume("r6");
    assert_eq!(
        entry.flags.get() & VOLUME_FLAG_DEGRADED,
        VOLUME_FLAG_DEGRADED
    );
    assert_eq!(a.statistics(nsid).array_state, vendor::ARRAY_STATE_DEGRADED);
    // A second SSD fails completely: still within RAID6's tolerance.
    assert_eq!(a.fault(fault::FAIL_ALL, 1, 0, 0), Ok(0));
    assert_eq!(a.read(nsid, 0, 32).unwrap(), want);
    assert_eq!(a.fault(fault::CLEAR, 1, 0, 0), Ok(0));
    assert_eq!(a.fault(fault::CLEAR, 3, 0, 0), Ok(0));

    // A single SSD volume with a silently corrupted write: the engine's
    // checksums turn it into a read error, never wrong data.
    let single = a
        .create(&request("one", layout::SINGLE, 0b1, 1 << 20))
        .unwrap();
    assert_eq!(a.fault(fault::CORRUPT, 0, 0, 0), Ok(0));
    assert_eq!(a.write(single, 0, &blocks_pattern(1, 5)), Status::SUCCESS);
    assert_eq!(a.read(single, 0, 1), Err(Status::UNRECOVERED_READ_ERROR));
    assert_eq!(a.fault(fault::CLEAR, 0, 0, 0), Ok(0));
    // Write faults reach the host as Write Fault.
    assert_eq!(a.fault(fault::FAIL_WRITES, 0, 0, 0), Ok(0));
    assert_eq!(
        a.write(single, 1, &blocks_pattern(1, 6)),
        Status::WRITE_FAULT
    );
    assert_eq!(a.fault(fault::CLEAR, 0, 0, 0), Ok(0));
    assert_eq!(a.write(single, 1, &blocks_pattern(1, 6)), Status::SUCCESS);
    assert_eq!(a.read(single, 1, 1).unwrap(), blocks_pattern(1, 6));
}

#[test]
fn a_family_with_lost_members_opens_degraded_or_failed() {
    let images = Images::new("degraded", 5, SSD_BYTES);
    let data = blocks_pattern(16, 31);
    let nsid = {
        let mut a = Accel::start(&images);
        a.attach(&[0, 1, 2, 3, 4]);
        let mut req = request("r6", layout::RAID6, 0b11110, 4 << 20);
        req.stripe_bytes.set(8 << 10);
        let nsid = a.create(&req).unwrap();
        assert_eq!(a.write(nsid, 40, &data), Status::SUCCESS);
        assert_eq!(a.flush(nsid), Status::SUCCESS);
        nsid
    };
    let blank = |i: usize| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&images.paths[i])
            .unwrap();
        f.set_len(0).unwrap();
        f.set_len(SSD_BYTES).unwrap();
    };
    // SSD 2 was replaced by a blank one: the family opens degraded, the
    // blank SSD stays with the host.
    blank(2);
    {
        let mut a = Accel::start(&images);
        assert!(!a.ownership[2].view().attached);
        assert!([1, 3, 4].iter().all(|&s| a.ssd_in_use(s)));
        let entry = a.volume("r6");
        assert_eq!(entry.nsid.get(), nsid);
        assert_eq!(entry.flags.get(), VOLUME_FLAG_DEGRADED);
        assert_eq!(a.read(nsid, 40, 16).unwrap(), data);
        assert_eq!(a.statistics(nsid).array_state, vendor::ARRAY_STATE_DEGRADED);
    }
    // Two more gone: beyond RAID6's tolerance. The volume is listed as
    // failed from the catalog and has no namespace; nothing is lost that
    // could come back with the SSDs.
    blank(3);
    blank(4);
    let mut a = Accel::start(&images);
    let entry = a.volume("r6");
    assert_eq!(entry.nsid.get(), 0);
    assert_eq!(entry.flags.get(), vendor::VOLUME_FLAG_FAILED);
    assert_eq!(a.active_nsids(), vec![1]);
    assert!(a.ssd_in_use(1));
    let mut open = request("r6", 0, 0, 0);
    open.flags = VOLUME_CREATE_OPEN_EXISTING;
    assert_eq!(a.create(&open), Err(Status::WRITE_FAULT));
}

/// One host CPU writing and reading back blocks of volume `nsid` on queue
/// `qid`, one command at a time, while worker threads serve the queue.
fn verify_loop(mem: &VecMemory, ctrl: &Controller, qid: u16, nsid: u32, rounds: u32) {
    let entries = 16u32;
    let sq_base = IO_SQ + u64::from(qid) * 0x4000;
    let cq_base = IO_CQ + u64::from(qid) * 0x4000;
    let buf = DATA + u64::from(qid) * 0x40000;
    let (mut tail, mut head, mut phase) = (0u32, 0u32, true);
    let mut submit = |opcode: u8, lba: u64, cid: u16| -> Status {
        let mut sqe = BlockRange {
            nsid,
            slba: lba,
            blocks: 1,
            fua: false,
            deallocate: false,
        }
        .encode(opcode, cid);
        sqe.prp1.set(buf);
        mem.write(sq_base + u64::from(tail) * 64, &sqe.to_bytes())
            .unwrap();
        tail = (tail + 1) % entries;
        ctrl.mmio_write(
            regs::doorbell_offset(qid, DoorbellKind::SubmissionTail, 0) as u64,
            &tail.to_le_bytes(),
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let mut b = [0u8; 16];
            mem.read(cq_base + u64::from(head) * 16, &mut b).unwrap();
            let cqe = CompletionEntry::from_bytes(&b);
            if cqe.phase() == phase {
                assert_eq!(cqe.command_id(), cid);
                head += 1;
                if head == entries {
                    head = 0;
                    phase = !phase;
                }
                ctrl.mmio_write(
                    regs::doorbell_offset(qid, DoorbellKind::CompletionHead, 0) as u64,
                    &head.to_le_bytes(),
                );
                return cqe.status();
            }
            assert!(std::time::Instant::now() < deadline, "queue {qid} stalled");
            std::thread::yield_now();
        }
    };
    for i in 0..rounds {
        let data = pattern(BLOCK, i as u8 ^ qid as u8);
        let lba = u64::from(i % 64);
        mem.write(buf, &data).unwrap();
        assert_eq!(submit(io::WRITE, lba, (2 * i) as u16), Status::SUCCESS);
        mem.write(buf, &[0u8; BLOCK]).unwrap();
        assert_eq!(submit(io::READ, lba, (2 * i + 1) as u16), Status::SUCCESS);
        let mut back = vec![0u8; BLOCK];
        mem.read(buf, &mut back).unwrap();
        assert_eq!(back, data, "queue {qid} round {i}");
    }
}

#[test]
fn io_on_worker_threads_runs_beside_management_commands() {
    let images = Images::new("concurrent", 3, SSD_BYTES);
    let mut a = Accel::start(&images);
    a.attach(&[0, 1, 2]);
    let mut req = request("busy", layout::SINGLE, 0b1, 8 << 20);
    req.services.set(service::THIN | service::DEDUP);
    let busy = a.create(&req).unwrap();
    let mut req = request("mirror", layout::RAID10, 0b110, 2 << 20);
    req.data_shards = 2;
    let mirror = a.create(&req).unwrap();
    a.host.create_pair(2, 16);
    a.host.create_pair(3, 16);
    let (mem, ctrl) = (a.host.mem.clone(), a.host.ctrl.clone());
    let workers = crate::worker::spawn(&ctrl);
    std::thread::scope(|scope| {
        let (m, c) = (&*mem, &*ctrl);
        scope.spawn(move || verify_loop(m, c, 2, busy, 300));
        scope.spawn(move || verify_loop(m, c, 3, mirror, 300));
        // Meanwhile the admin queue snapshots, clones, lists and deletes.
        for round in 0..15 {
            let name = format!("busy.{round}");
            let snap = a
                .named(vendor::opcode::SNAPSHOT_CREATE, busy, 0, &name)
                .unwrap();
            let clone = a
                .named(
                    vendor::opcode::SNAPSHOT_CLONE,
                    0,
                    snap,
                    &format!("c{round}"),
                )
                .unwrap();
            assert_eq!(a.volumes().len(), 3);
            let _ = a.statistics(busy);
            let _ = a.statistics(mirror);
            assert_eq!(a.delete(clone), Ok(0));
            assert_eq!(a.simple(vendor::opcode::SNAPSHOT_DELETE, 0, snap), Ok(0));
        }
    });
    ctrl.stop_workers();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(a.volumes().len(), 2);
}

#[test]
fn a_cleared_ssd_is_rebuilt_into_its_array() {
    let images = Images::new("rebuild", 4, SSD_BYTES);
    let mut a = Accel::start(&images);
    a.attach(&[0, 1, 2, 3]);
    let mut req = request("r6", layout::RAID6, 0b1111, 4 << 20);
    req.stripe_bytes.set(8 << 10);
    let nsid = a.create(&req).unwrap();
    let data = blocks_pattern(32, 41);
    assert_eq!(a.write(nsid, 0, &data), Status::SUCCESS);
    assert_eq!(a.fault(fault::DISAPPEAR, 2, 0, 0), Ok(0));
    // Written while SSD 2 is gone: only a rebuild puts these on it.
    let more = blocks_pattern(32, 42);
    assert_eq!(a.write(nsid, 100, &more), Status::SUCCESS);
    assert_eq!(a.flush(nsid), Status::SUCCESS);
    assert_eq!(a.volume("r6").flags.get(), VOLUME_FLAG_DEGRADED);
    assert_eq!(a.fault(fault::CLEAR, 2, 0, 0), Ok(0));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while a.volume("r6").flags.get() != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "rebuild did not finish"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(a.statistics(nsid).array_state, vendor::ARRAY_STATE_OPTIMAL);
    // The rebuilt SSD carries its share: with two others failed the data
    // still reads back.
    assert_eq!(a.fault(fault::FAIL_ALL, 0, 0, 0), Ok(0));
    assert_eq!(a.fault(fault::FAIL_ALL, 3, 0, 0), Ok(0));
    assert_eq!(a.read(nsid, 0, 32).unwrap(), data);
    assert_eq!(a.read(nsid, 100, 32).unwrap(), more);
}

#[test]
fn random_vendor_payloads_never_panic_or_leak_ssds() {
    let images = Images::new("random", 4, 2 << 20);
    let mut a = Accel::start(&images);
    a.attach(&[0, 1, 2]);
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let ops = [
        vendor::opcode::VOLUME_CREATE,
        vendor::opcode::VOLUME_DELETE,
        vendor::opcode::VOLUME_RESIZE,
        vendor::opcode::SERVICE_SET,
        vendor::opcode::SNAPSHOT_CREATE,
        vendor::opcode::SNAPSHOT_DELETE,
        vendor::opcode::SNAPSHOT_CLONE,
        vendor::opcode::SNAPSHOT_REVERT,
        vendor::opcode::FAULT_INJECT,
        vendor::opcode::MAINTENANCE,
    ];
    let mut created = 0;
    for round in 0..600 {
        let op = if round % 3 == 0 {
            vendor::opcode::VOLUME_CREATE
        } else {
            ops[(next() % ops.len() as u64) as usize]
        };
        let mut payload: Vec<u8> = (0..256).map(|_| next() as u8).collect();
        if op == vendor::opcode::VOLUME_CREATE && round % 2 == 0 {
            // Mostly plausible requests, so the deeper checks run too.
            let (lay, k, m, mask) = [
                (layout::SINGLE, 0, 0, 0b1),
                (layout::SINGLE, 0, 0, 0b110),
                (layout::RAID0, 0, 0, 0b11),
                (layout::RAID10, 2, 0, 0b11),
                (layout::ERASURE, 2, 1, 0b111),
                (layout::RAID6, 0, 0, 0b1111),
            ][(next() % 6) as usize];
            let mut req = request(&format!("r{round}"), lay, mask, 0);
            req.size_bytes.set((next() % 8 + 1) << 20);
            req.data_shards = k;
            req.parity_shards = m;
            let services = (next() % 64) as u32 & !service::LOG_STRUCTURED;
            req.services.set(services | service::THIN);
            req.stripe_bytes
                .set([0, 4096, 65536, 12345][(next() % 4) as usize]);
            req.compression = (next() % 3) as u8;
            req.key = key(next() as u8);
            payload = req.as_bytes().to_vec();
        }
        let mut sqe = SubmissionEntry::new(op, 0);
        sqe.nsid.set((next() % 5) as u32);
        sqe.cdw10.set((next() % 4) as u32);
        sqe.cdw11
            .set(if next() % 2 == 0 { 0 } else { next() as u32 });
        let cqe = a.send(sqe, &payload);
        if op == vendor::opcode::VOLUME_CREATE && cqe.status().is_success() {
            created += 1;
        }
        if op == vendor::opcode::FAULT_INJECT && cqe.status().is_success() {
            assert_eq!(a.fault(fault::CLEAR, payload[2].into(), 0, 0), Ok(0));
        }
    }
    assert!(created > 5, "only {created} volumes created");
    // Whatever was created is consistent: every listed volume reads, and
    // deleting everything releases every SSD.
    let mut snaps = Vec::new();
    for v in a.volumes() {
        let nsid = v.nsid.get();
        assert_ne!(nsid, 0);
        assert!(a.read(nsid, 0, 1).is_ok());
        let mut list = SubmissionEntry::new(vendor::opcode::SNAPSHOT_LIST, 0);
        list.nsid.set(nsid);
        let l = SnapshotList::read_from(&a.fetch(list, 4096).unwrap()).unwrap();
        snaps.extend(
            l.entries[..l.count.get() as usize]
                .iter()
                .map(|e| e.id.get()),
        );
    }
    for id in snaps {
        assert_eq!(a.simple(vendor::opcode::SNAPSHOT_DELETE, 0, id), Ok(0));
    }
    for v in a.volumes() {
        assert_eq!(a.delete(v.nsid.get()), Ok(0));
    }
    assert!((0..4).all(|s| !a.ssd_in_use(s)));
}

/// A block of `random` pseudo-random bytes (incompressible) followed by
/// zeroes, as fio's `buffer_compress_percentage` writes them.
fn half_random_block(seed: u64, random: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut block = vec![0u8; BLOCK];
    for b in &mut block[..random] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    block
}

#[test]
fn statistics_tell_zero_detect_dedup_and_compression_apart() {
    let images = Images::new("reduce", 1, SSD_BYTES);
    let mut a = Accel::start(&images);
    a.attach(&[0]);
    let mut req = request("r", layout::SINGLE, 0b1, 8 << 20);
    let bits = service::THIN | service::ZERO_DETECT | service::DEDUP | service::COMPRESSION;
    req.services.set(bits);
    req.compression = compression::LZ4;
    let r = a.create(&req).unwrap();
    // 4 half-random blocks, each written twice, 2 zero blocks and 2
    // random blocks that do not compress.
    let unique: Vec<Vec<u8>> = (0..4).map(|i| half_random_block(i, BLOCK / 2)).collect();
    let data = [
        unique.concat(),
        unique.concat(),
        vec![0u8; 2 * BLOCK],
        half_random_block(9, BLOCK),
        half_random_block(10, BLOCK),
    ]
    .concat();
    assert_eq!(a.write(r, 0, &data), Status::SUCCESS);
    assert_eq!(a.read(r, 0, 12).unwrap(), data);
    let s = a.statistics(r);
    let bs = BLOCK as u64;
    assert_eq!(s.logical_bytes.get(), 12 * bs);
    assert_eq!(s.zero_detect_saved_bytes.get(), 2 * bs);
    assert_eq!(s.dedup_saved_bytes.get(), 4 * bs, "the repeated blocks");
    // Only the half-random blocks compress, each to a little more than
    // its random half; the random blocks are stored raw.
    let compressed = s.compression_saved_bytes.get();
    assert!(
        (4 * (bs / 2 - 64)..=4 * bs / 2).contains(&compressed),
        "compression saved {compressed}"
    );
    assert_eq!(s.exclusive_bytes.get(), 6 * bs - compressed);
    assert_eq!(s.shared_bytes.get(), 0);
    // Physical space is whole blocks: packed records do not span blocks,
    // so each compressed record (over half a block) takes one.
    assert!(s.physical_bytes.get() >= 6 * bs);

    // A volume without data services saves nothing.
    assert_eq!(a.delete(r), Ok(0));
    let mut req = request("p", layout::SINGLE, 0b1, 8 << 20);
    req.services.set(service::THIN);
    let plain = a.create(&req).unwrap();
    assert_eq!(a.write(plain, 0, &data), Status::SUCCESS);
    let s = a.statistics(plain);
    assert_eq!(s.logical_bytes.get(), 12 * bs);
    assert_eq!(s.exclusive_bytes.get(), 12 * bs);
    let saved = [
        s.zero_detect_saved_bytes.get(),
        s.dedup_saved_bytes.get(),
        s.compression_saved_bytes.get(),
    ];
    assert_eq!(saved, [0, 0, 0]);
    assert_eq!(a.delete(plain), Ok(0));
}

#[test]
fn snapshot_exposed_read_only_until_closed() {
    let images = Images::new("snapexpose", 1, SSD_BYTES);
    let mut a = Accel::start(&images);
    a.attach(&[0]);
    let mut req = request("base", layout::SINGLE, 0b1, 16 << 20);
    req.services.set(service::THIN);
    let base = a.create(&req).unwrap();
    let old = blocks_pattern(4, 9);
    assert_eq!(a.write(base, 0, &old), Status::SUCCESS);
    let snap = a
        .named(vendor::opcode::SNAPSHOT_CREATE, base, 0, "base.1")
        .unwrap();
    // Open-existing with the snapshot's name exposes it as a namespace.
    let mut open = VolumeCreate::zeroed();
    open.flags = vendor::VOLUME_CREATE_OPEN_EXISTING;
    c_string_field(&mut open.name, b"base.1");
    let exposed = a.create(&open).unwrap();
    assert_ne!(exposed, base);
    assert!(a.active_nsids().contains(&exposed));
    assert_eq!(
        a.create(&open).unwrap(),
        exposed,
        "opening twice is idempotent"
    );
    assert_eq!(a.write(base, 0, &blocks_pattern(4, 10)), Status::SUCCESS);
    assert_eq!(
        a.read(exposed, 0, 4).unwrap(),
        old,
        "the snapshot keeps its data"
    );
    assert_ne!(a.write(exposed, 0, &blocks_pattern(1, 11)), Status::SUCCESS);
    assert_eq!(
        a.read(exposed, 0, 4).unwrap(),
        old,
        "a refused write changed nothing"
    );
    // Exposed snapshots cannot be deleted; Volume Delete closes the namespace.
    assert_eq!(
        a.simple(vendor::opcode::SNAPSHOT_DELETE, 0, snap),
        Err(vendor_status(vs::VOLUME_BUSY))
    );
    assert_eq!(a.delete(exposed), Ok(0));
    assert!(!a.active_nsids().contains(&exposed));
    assert_eq!(a.simple(vendor::opcode::SNAPSHOT_DELETE, 0, snap), Ok(0));
    assert_eq!(a.read(base, 0, 4).unwrap(), blocks_pattern(4, 10));
}

/// Set Features Volatile Write Cache = 0 is applied, not only stored: a
/// write that completed is on the SSDs even if dpuemu dies before any flush.
#[test]
fn write_cache_off_makes_completed_writes_durable() {
    let images = Images::new("vwc", 1, SSD_BYTES);
    let cached = blocks_pattern(2, 21);
    let written = blocks_pattern(2, 22);
    let nsid;
    {
        let mut a = Accel::start(&images);
        a.attach(&[0]);
        nsid = a
            .create(&request("vwc", layout::SINGLE, 0b1, 2 << 20))
            .unwrap();
        // With the cache on, a write without a flush is lost at the crash.
        assert_eq!(a.write(nsid, 0, &cached), Status::SUCCESS);
        let vwc = sqe::Features {
            fid: nvme_shim::opcode::feature::VOLATILE_WRITE_CACHE,
            save: false,
            select: 0,
            value: 0,
        };
        assert_eq!(a.host.admin_status(vwc.encode(true, 0)), Status::SUCCESS);
        assert_eq!(a.host.admin(vwc.encode(false, 0)).result.get(), 0);
        assert_eq!(a.write(nsid, 2, &written), Status::SUCCESS);
        // dpuemu dies here, without a flush.
    }
    let mut a = Accel::start(&images);
    assert!(
        a.read(nsid, 2, 2).unwrap() == written,
        "a completed write was lost with the cache off"
    );
    // Turning the cache off made the earlier write durable as well.
    assert!(a.read(nsid, 0, 2).unwrap() == cached);
}
