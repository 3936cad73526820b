//! The whole appliance from its configuration file, as `main` starts it:
//! a remote SSD on another (in-process) dpuemu target, a RAID10 volume
//! made from a `[volume]` section over a local image and that remote SSD,
//! exported by the target to a host over TCP. The host's I/O goes on
//! while the remote target is shut down, restarted and the member rebuilt;
//! a restarted appliance finds the volume instead of making it again.

use std::collections::BTreeSet;

use super::remote_ssd_tests::{array_state, shelf, wait_for, wait_rebuilt, SHELF};
use super::volume_tests::{image_handles, temp_dir, volume_io, Activated};
use super::*;
use crate::controller::SsdHandle;
use crate::nvmf::{self as nvmf_api, Accelerator, RemoteSsd};
use crate::ownership::SsdOwnership;
use crate::volumes::VolumeManager;
use nvme_shim::vendor::{ARRAY_STATE_DEGRADED, ARRAY_STATE_OPTIMAL};

const APPLIANCE: &str = "nqn.2026-12.org.dpublk:appliance";
const SSD_BYTES: u64 = 16 << 20;
const VOLUME_BYTES: usize = 6 << 20;
const CHUNK: usize = 128 << 10;
const BLOCKS_PER_CHUNK: u64 = (CHUNK / 4096) as u64;

/// One start of the appliance: SSD handles (the image, then the remote
/// SSD), the volume manager, the re-add hook, the `[volume]` made if
/// missing, the target.
struct Appliance {
    manager: Arc<VolumeManager>,
    table: Activated,
    target: Arc<Target>,
}

fn start(
    config: &config::TargetConfig,
    local: &std::path::Path,
    remote: &Arc<RemoteSsd>,
) -> Appliance {
    let mut handles = image_handles(&[local.to_path_buf()], SSD_BYTES);
    handles.push(SsdHandle {
        index: 1,
        ownership: Arc::new(SsdOwnership::new()),
        media: remote.clone(),
        serial: "REMOTE1".into(),
    });
    let claimed = nvmf_api::claim_ssds(config, &[]).expect("claim");
    let manager = Arc::new(VolumeManager::open(&handles));
    remote.on_return(nvmf_api::readd_hook(Arc::downgrade(&manager), 1));
    let ownership: Vec<_> = handles.iter().map(|h| h.ownership.clone()).collect();
    let table = Activated::default();
    let reserved = BTreeSet::new();
    let accel = Accelerator {
        volumes: &manager,
        ownership: &ownership,
        images: 1,
        table: &table,
        reserved: &reserved,
        absent: &[],
    };
    let target = nvmf_api::start_appliance(config, &claimed, &accel)
        .expect("appliance")
        .expect("a target");
    Appliance {
        manager,
        table,
        target,
    }
}

/// A host's I/O queue on the appliance's subsystem.
fn connect(target: &Target) -> (Host, Host) {
    let addr = target.ports()[0].address;
    let mut admin = Host::connect(addr, false, false);
    let cntlid = admin.enable(APPLIANCE, HOST);
    let mut io = Host::connect(addr, false, false);
    assert_eq!(io.fabrics_connect(1, cntlid, APPLIANCE, HOST).status, 0);
    (admin, io)
}

fn write(io: &mut Host, chunks: std::ops::Range<usize>, seed: u8, expected: &mut [u8]) {
    for chunk in chunks {
        let data = pattern(CHUNK, seed.wrapping_add(chunk as u8));
        let lba = chunk as u64 * BLOCKS_PER_CHUNK;
        assert_eq!(
            volume_io(io, 0x01, lba, &data, false, 0).status,
            0,
            "write chunk {chunk}"
        );
        expected[chunk * CHUNK..(chunk + 1) * CHUNK].copy_from_slice(&data);
    }
}

fn verify(io: &mut Host, expected: &[u8], what: &str) {
    for (chunk, want) in expected.chunks(CHUNK).enumerate() {
        let c = volume_io(io, 0x02, chunk as u64 * BLOCKS_PER_CHUNK, &[], false, CHUNK);
        assert_eq!(c.status, 0, "{what}: read chunk {chunk}");
        assert!(c.data == want, "{what}: chunk {chunk} differs");
    }
}

#[test]
fn an_appliance_serves_a_mirror_with_a_remote_member_through_a_remote_outage() {
    let (_cleanup, dir) = temp_dir("appliance");
    let first = shelf(&dir, 0);
    let remote_at = first.ports()[0].address;
    let text = format!(
        "[remote-ssd shelf]\naddress {remote_at}\nsubsystem {SHELF}\n\
         [volume db0]\nlayout raid10\nssds 0 shelf\nsize {VOLUME_BYTES}\n\
         [port 1]\nservice 0\n\
         [subsystem {APPLIANCE}]\nports 1\nhost {HOST}\nnamespace 1 volume db0\n"
    );
    let config = config::parse(&text).expect("config");
    let mut remotes = nvmf_api::connect_remote_ssds(&config).expect("remote SSD");
    let remote = remotes.pop().expect("one remote SSD");
    let local = dir.join("local.img");

    let appliance = start(&config, &local, &remote);
    let made = appliance.table.0.lock().map(|t| t.len()).unwrap_or(0);
    assert_eq!(made, 1, "the [volume] was made at the first start");
    let nsid = appliance.table.0.lock().map(|t| t[0].0).unwrap_or(0);
    let (_admin, mut io) = connect(&appliance.target);
    let chunks = VOLUME_BYTES / CHUNK;
    let mut expected = vec![0u8; VOLUME_BYTES];
    write(&mut io, 0..chunks, 7, &mut expected);
    verify(&mut io, &expected, "optimal");
    assert_eq!(array_state(&appliance.manager, nsid), ARRAY_STATE_OPTIMAL);

    // The remote machine goes away under the host's I/O.
    first.shut_down();
    write(&mut io, 0..chunks / 2, 80, &mut expected);
    assert_eq!(
        volume_io(&mut io, 0x00, 0, &[], false, 0).status,
        0,
        "flush"
    );
    verify(&mut io, &expected, "degraded");
    assert_eq!(array_state(&appliance.manager, nsid), ARRAY_STATE_DEGRADED);

    // It returns; the member is rebuilt while the host goes on writing.
    let second = shelf(&dir, remote_at.port());
    wait_for("the reconnection", || remote.reconnections() >= 1);
    write(&mut io, chunks - 4..chunks, 160, &mut expected);
    wait_rebuilt(&appliance.manager, nsid);
    assert_eq!(
        volume_io(&mut io, 0x00, 0, &[], false, 0).status,
        0,
        "flush"
    );
    verify(&mut io, &expected, "rebuilt");

    // The appliance restarts: the volume is found on its SSDs, not made
    // again, and holds everything.
    drop(io);
    appliance.target.shut_down();
    drop(appliance);
    let again = start(&config, &local, &remote);
    let made = again.table.0.lock().map(|t| t.len()).unwrap_or(1);
    assert_eq!(made, 0, "the volume was found, not made again");
    let (_admin, mut io) = connect(&again.target);
    verify(&mut io, &expected, "after the restart");
    assert!(second.controller_count() >= 1);
}
