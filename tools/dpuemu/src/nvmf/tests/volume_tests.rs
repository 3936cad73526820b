//! The accelerator's volumes through the target: a volume family on SSD
//! images, written through the accelerator's namespace, dpuemu restarted
//! in appliance mode (the volume manager finds the family on the images),
//! the volume exported by name and read and written by a host over TCP,
//! with the accelerator's namespace seeing what the host wrote.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nvme_shim::vendor::layout;

use super::*;
use crate::controller::SsdHandle;
use crate::namespace::FileNamespace;
use crate::nvmf::config::VolumeConfig;
use crate::nvmf::target::{claim_ssds, VolumeLookup};
use crate::nvmf::VolumeDirectory;
use crate::ownership::SsdOwnership;
use crate::volumes::{NamespaceTable, VolumeManager};

/// Block size of volume namespaces.
const VOLUME_BLOCK: usize = 4096;

/// The accelerator's namespace table as Volume Create fills it.
#[derive(Default)]
pub(super) struct Activated(pub(super) Mutex<Vec<(u32, Arc<dyn Namespace>)>>);

impl NamespaceTable for Activated {
    fn activate(&self, nsid: u32, backend: Arc<dyn Namespace>) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((nsid, backend));
    }

    fn deactivate(&self, nsid: u32) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(n, _)| *n != nsid);
    }
}

impl Activated {
    pub(super) fn get(&self, nsid: u32) -> Arc<dyn Namespace> {
        let table = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (_, ns) = table
            .iter()
            .find(|(n, _)| *n == nsid)
            .expect("the volume's namespace was activated");
        Arc::clone(ns)
    }
}

/// A fresh directory, removed at the end.
pub(super) fn temp_dir(tag: &str) -> (TempDir, PathBuf) {
    let dir = std::env::temp_dir().join(format!("dpuemu-nvmf-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    (TempDir(dir.clone()), dir)
}

/// SSD handles over image files, as dpuemu makes them from `--ssd`.
pub(super) fn image_handles(paths: &[PathBuf], bytes: u64) -> Vec<SsdHandle> {
    paths
        .iter()
        .enumerate()
        .map(|(i, p)| SsdHandle {
            index: i as u16,
            ownership: Arc::new(SsdOwnership::new()),
            media: Arc::new(FileNamespace::open(p, Some(bytes)).expect("image")),
            serial: format!("SSD{i}"),
        })
        .collect()
}

/// Volume Create of a thick volume on the SSDs of `mask` (attached
/// first, as SSD Attach does); returns its NSID.
pub(super) fn create_volume(
    manager: &VolumeManager,
    handles: &[SsdHandle],
    table: &Activated,
    name: &str,
    (layout, copies): (u8, u8),
    mask: u64,
    size: u64,
) -> u32 {
    let ownership: Vec<_> = handles.iter().map(|h| h.ownership.clone()).collect();
    let v = VolumeConfig {
        name: name.into(),
        layout,
        members: Vec::new(),
        size,
        copies,
        parity: 0,
        stripe: 0,
        thin: false,
    };
    crate::nvmf::volumes::create_volume(manager, &ownership, &v, mask, table)
        .expect("Volume Create")
}

/// An NVM command on 4 KiB blocks.
pub(super) fn volume_io(
    host: &mut Host,
    opcode: u8,
    lba: u64,
    data: &[u8],
    in_capsule: bool,
    read: usize,
) -> Completion {
    let mut sqe = SubmissionEntry::new(opcode, 0);
    sqe.nsid.set(1);
    sqe.cdw10.set(lba as u32);
    sqe.cdw11.set((lba >> 32) as u32);
    let blocks = (data.len().max(read) / VOLUME_BLOCK).max(1) as u32;
    sqe.cdw12.set(blocks - 1);
    host.command(sqe, data, in_capsule, read)
}

fn read_volume(ns: &dyn Namespace, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    ns.read_at(offset, &mut buf).expect("volume read");
    buf
}

fn appliance_config(dir: &Path, volume: &str) -> config::TargetConfig {
    let text = format!(
        "[port 1]\nservice 0\n[subsystem {SUBSYSTEM}]\nports 1\nhost {HOST}\n\
         namespace 1 volume {volume}\nnamespace 2 file {}/plain.img 1M\n",
        dir.display()
    );
    config::parse(&text).expect("config")
}

#[test]
fn a_volume_is_a_namespace_of_the_target() {
    let (_cleanup, dir) = temp_dir("volume");
    let paths = vec![dir.join("ssd0.img")];
    const SSD_BYTES: u64 = 16 << 20;
    const VOLUME_BYTES: u64 = 4 << 20;
    let before = pattern(64 << 10, 41);
    {
        // The host driver's way: attach, Volume Create, I/O through the
        // accelerator's namespace.
        let handles = image_handles(&paths, SSD_BYTES);
        let manager = VolumeManager::open(&handles);
        let table = Activated::default();
        let nsid = create_volume(
            &manager,
            &handles,
            &table,
            "db0",
            (layout::SINGLE, 0),
            1,
            VOLUME_BYTES,
        );
        let ns = table.get(nsid);
        ns.write_at(0, &before)
            .expect("write through the accelerator");
        ns.flush().expect("flush");
    }
    // dpuemu starts again in appliance mode: the family is found on the
    // image and its volume exported by name.
    let handles = image_handles(&paths, SSD_BYTES);
    let manager = VolumeManager::open(&handles);
    let directory = VolumeDirectory::from_manager(&manager, &BTreeSet::new());
    assert_eq!(directory.names(), vec!["db0"]);
    let accel_ns = directory.volume("db0").expect("db0 is open");
    let missing = appliance_config(&dir, "nope");
    let refused = Target::start_with(
        &missing,
        &claim_ssds(&missing, &[]).expect("claim"),
        &directory,
    );
    let Err(e) = refused else {
        panic!("a missing volume was exported");
    };
    assert!(e.contains("no open volume 'nope'"), "{e}");
    let config = appliance_config(&dir, "db0");
    let target = Target::start_with(
        &config,
        &claim_ssds(&config, &[]).expect("claim"),
        &directory,
    )
    .expect("target");
    let addr = target.ports()[0].address;

    let mut admin = Host::connect(addr, true, true);
    let cntlid = admin.enable(SUBSYSTEM, HOST);
    let id = admin.admin(0x06, 1, 0, 0, 4096);
    assert_eq!(id.status, 0, "Identify Namespace");
    let nsze = u64::from_le_bytes(id.data[..8].try_into().expect("8 bytes"));
    assert_eq!(
        nsze,
        VOLUME_BYTES / VOLUME_BLOCK as u64,
        "NSZE in 4 KiB blocks"
    );
    let format = usize::from(id.data[26] & 0xf);
    assert_eq!(id.data[128 + 4 * format + 2], 12, "LBADS: 4 KiB blocks");
    let mut io = Host::connect(addr, true, true);
    assert_eq!(io.fabrics_connect(1, cntlid, SUBSYSTEM, HOST).status, 0);

    // What the accelerator wrote before the restart, read over TCP.
    let c = volume_io(&mut io, 0x02, 0, &[], false, before.len());
    assert_eq!(
        (c.status, c.data == before),
        (0, true),
        "data written through the accelerator"
    );
    // Written over TCP (in the capsule, and through R2T), read back over
    // TCP and through the accelerator's namespace.
    let small = pattern(VOLUME_BLOCK, 42);
    let big = pattern(128 << 10, 43);
    assert_eq!(volume_io(&mut io, 0x01, 100, &small, true, 0).status, 0);
    assert_eq!(volume_io(&mut io, 0x01, 200, &big, false, 0).status, 0);
    assert_eq!(
        volume_io(&mut io, 0x00, 0, &[], false, 0).status,
        0,
        "flush"
    );
    assert_eq!(
        volume_io(&mut io, 0x02, 100, &[], false, small.len()).data,
        small
    );
    assert_eq!(
        volume_io(&mut io, 0x02, 200, &[], false, big.len()).data,
        big
    );
    assert_eq!(read_volume(&*accel_ns, 100 * 4096, small.len()), small);
    assert_eq!(read_volume(&*accel_ns, 200 * 4096, big.len()), big);
    // And the other way: the accelerator writes, the host reads.
    let after = pattern(8192, 44);
    accel_ns
        .write_at(300 * 4096, &after)
        .expect("accelerator write");
    assert_eq!(
        volume_io(&mut io, 0x02, 300, &[], false, after.len()).data,
        after
    );
    // The volume's end is the namespace's end.
    let last = VOLUME_BYTES / VOLUME_BLOCK as u64;
    let c = volume_io(&mut io, 0x02, last, &[], false, VOLUME_BLOCK);
    assert_eq!(c.status & 0xff, 0x80, "LBA Out of Range past the volume");
    // Deallocated blocks of a volume read as zeroes.
    let mut dsm = SubmissionEntry::new(0x09, 0);
    dsm.nsid.set(1);
    dsm.cdw11.set(1 << 2);
    let mut range = [0u8; 16];
    range[4..8].copy_from_slice(&1u32.to_le_bytes());
    range[8..16].copy_from_slice(&100u64.to_le_bytes());
    assert_eq!(io.command(dsm, &range, true, 0).status, 0, "deallocate");
    assert_eq!(
        read_volume(&*accel_ns, 100 * 4096, VOLUME_BLOCK),
        vec![0u8; VOLUME_BLOCK]
    );
}
