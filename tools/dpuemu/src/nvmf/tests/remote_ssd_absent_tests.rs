//! A RAID10 family with one local SSD and one remote SSD whose target
//! does not answer when the volume manager opens the family (dpuemu
//! starting while the remote machine is down): the volume serves I/O
//! degraded, and when the target answers the member joins again, or, if
//! what answers is not that member, is refused and left untouched.

use std::collections::BTreeSet;

use nvme_shim::vendor::{fault, layout, ARRAY_STATE_DEGRADED, ARRAY_STATE_OPTIMAL};

use super::remote_ssd_tests::{
    array_state, fault_on, remote_mirror, shelf, shelf_spec, verify, wait_for, wait_rebuilt,
    write_chunks, CHUNK, SHELF, SSD_BYTES, VOLUME_BYTES,
};
use super::volume_tests::{create_volume, image_handles, temp_dir, Activated};
use super::*;
use crate::controller::SsdHandle;
use crate::nvmf::config::RemoteGeometry;
use crate::nvmf::initiator::RemoteSpec;
use crate::nvmf::{readd_hook, RemoteSsd, RemoteSsdPolicy};
use crate::ownership::SsdOwnership;
use crate::volumes::{NamespaceTable, VolumeManager};

fn policy() -> RemoteSsdPolicy {
    RemoteSsdPolicy {
        first: Duration::from_millis(20),
        max: Duration::from_millis(100),
        quiesce: Duration::ZERO,
        ..RemoteSsdPolicy::default()
    }
}

/// What the first run left: the family made on `local.img` and the
/// remote's `remote.img` (its target now shut down), the remote's
/// address and geometry, the volume's NSID and the data written.
struct FirstRun {
    spec: RemoteSpec,
    geometry: RemoteGeometry,
    nsid: u32,
    expected: Vec<u8>,
}

/// Makes the mirror with both members present, writes the whole volume,
/// and stops everything: the volume manager, the remote SSD and its
/// target.
fn first_run(dir: &std::path::Path) -> FirstRun {
    let target = shelf(dir, 0);
    let spec = shelf_spec(target.ports()[0].address);
    let remote = RemoteSsd::connect("shelf", spec.clone(), policy()).expect("remote SSD");
    let geometry = RemoteGeometry {
        size: remote.size(),
        lba_shift: remote.lba_shift(),
    };
    assert_eq!(geometry.size, SSD_BYTES);
    let (manager, table, nsid) = remote_mirror(dir, &remote);
    let ns = table.get(nsid);
    let mut expected = vec![0u8; VOLUME_BYTES as usize];
    write_chunks(&*ns, 0..VOLUME_BYTES as usize / CHUNK, 1, &mut expected);
    ns.flush().expect("flush");
    assert_eq!(array_state(&manager, nsid), ARRAY_STATE_OPTIMAL);
    drop((ns, table, manager, remote));
    target.shut_down();
    FirstRun {
        spec,
        geometry,
        nsid,
        expected,
    }
}

/// `local.img` and a remote SSD as SSDs 0 and 1.
fn handles_with(dir: &std::path::Path, remote: &Arc<RemoteSsd>) -> Vec<SsdHandle> {
    let mut handles = image_handles(&[dir.join("local.img")], SSD_BYTES);
    handles.push(SsdHandle {
        index: 1,
        ownership: Arc::new(SsdOwnership::new()),
        media: remote.clone(),
        serial: "REMOTE1".into(),
    });
    handles
}

/// Opens the families again with the remote target down: the remote SSD
/// starts absent with the geometry of the configuration.
fn open_without_remote(
    dir: &std::path::Path,
    spec: &RemoteSpec,
    geometry: RemoteGeometry,
) -> (Arc<VolumeManager>, Arc<RemoteSsd>) {
    let remote = RemoteSsd::start("shelf", spec.clone(), policy(), Some(geometry))
        .expect("an absent remote SSD with a configured size");
    assert!(!remote.is_connected(), "the target is down");
    let manager = Arc::new(VolumeManager::open(&handles_with(dir, &remote)));
    (manager, remote)
}

/// As [`open_without_remote`], for the mirror of [`first_run`], which
/// opens degraded; returns its volume's namespace too.
fn start_without_remote(
    dir: &std::path::Path,
    first: &FirstRun,
) -> (Arc<VolumeManager>, Arc<RemoteSsd>, Arc<dyn Namespace>) {
    let (manager, remote) = open_without_remote(dir, &first.spec, first.geometry);
    assert!(
        manager.unopened_families().is_empty(),
        "the mirror opens from its local member"
    );
    remote.on_return(readd_hook(Arc::downgrade(&manager), 1));
    let table = Activated::default();
    for (nsid, ns) in manager.start(&BTreeSet::new()) {
        table.activate(nsid, ns);
    }
    let ns = table.get(first.nsid);
    (manager, remote, ns)
}

#[test]
fn a_remote_member_absent_at_start_up_joins_and_rebuilds_when_its_target_answers() {
    let (_cleanup, dir) = temp_dir("remote-ssd-absent");
    let mut first = first_run(&dir);
    let (manager, remote, ns) = start_without_remote(&dir, &first);
    let nsid = first.nsid;

    // Degraded from the start: the local member serves reads and writes.
    assert_eq!(array_state(&manager, nsid), ARRAY_STATE_DEGRADED);
    verify(&*ns, &first.expected, "degraded at start-up");
    write_chunks(&*ns, 8..24, 77, &mut first.expected);
    ns.flush().expect("flush while degraded");
    verify(&*ns, &first.expected, "written degraded");
    assert_eq!(array_state(&manager, nsid), ARRAY_STATE_DEGRADED);

    // The remote machine comes up with the member's (stale) image: the
    // member takes its slot back and is rebuilt.
    let target = shelf(&dir, first.spec.address.port());
    wait_for("the first connection", || remote.reconnections() >= 1);
    wait_rebuilt(&manager, nsid);
    verify(&*ns, &first.expected, "rebuilt");

    // Every byte now comes from the remote member alone.
    fault_on(&manager, fault::DISAPPEAR, 0);
    verify(&*ns, &first.expected, "remote member only");
    assert_eq!(array_state(&manager, nsid), ARRAY_STATE_DEGRADED);
    assert!(
        target.controller_count() >= 1,
        "the remote target served it"
    );
}

/// What answers at the remote's address is `image` instead of the member:
/// it is refused, not written to, and the volume stays degraded and
/// intact.
fn a_stranger_answers(name: &str, image: impl FnOnce(&std::path::Path) -> Vec<u8>) {
    let (_cleanup, dir) = temp_dir(name);
    let mut first = first_run(&dir);
    let stranger = image(&dir);
    assert_eq!(stranger.len() as u64, SSD_BYTES);
    std::fs::write(dir.join("remote.img"), &stranger).expect("the stranger's image");
    let (manager, remote, ns) = start_without_remote(&dir, &first);
    let nsid = first.nsid;
    write_chunks(&*ns, 0..4, 33, &mut first.expected);

    let _target = shelf(&dir, first.spec.address.port());
    wait_for("the first connection", || remote.reconnections() >= 1);
    // The supervisor counts the connection, then runs the hook, which
    // reads the label and would start a rebuild at once: give a wrong
    // decision time to show.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        array_state(&manager, nsid),
        ARRAY_STATE_DEGRADED,
        "the stranger is not taken in"
    );
    write_chunks(&*ns, 4..8, 34, &mut first.expected);
    ns.flush().expect("flush");
    verify(&*ns, &first.expected, "degraded after the refusal");
    let after = std::fs::read(dir.join("remote.img")).expect("remote image");
    assert!(after == stranger, "nothing was written to the stranger");
}

#[test]
fn a_blank_disk_answering_for_an_absent_member_is_refused_untouched() {
    a_stranger_answers("remote-ssd-blank", |_| vec![0u8; SSD_BYTES as usize]);
}

#[test]
fn another_familys_member_answering_for_an_absent_member_is_refused_untouched() {
    a_stranger_answers("remote-ssd-foreign", |dir| {
        // Another mirror, made on two images of its own: its second
        // member's image is the stranger.
        let paths = [dir.join("other0.img"), dir.join("other1.img")];
        let handles = image_handles(&paths, SSD_BYTES);
        let manager = VolumeManager::open(&handles);
        let table = Activated::default();
        let nsid = create_volume(
            &manager,
            &handles,
            &table,
            "other",
            (layout::RAID10, 2),
            0b11,
            VOLUME_BYTES,
        );
        let ns = table.get(nsid);
        let mut other = vec![0u8; VOLUME_BYTES as usize];
        write_chunks(&*ns, 0..4, 200, &mut other);
        ns.flush().expect("flush");
        drop((ns, table, manager, handles));
        std::fs::read(&paths[1]).expect("the other family's member")
    });
}

/// A stripe over the local SSD and the absent remote one cannot open: the
/// volume manager reports it, and dpuemu's start-up refuses to go on with
/// it (main.rs), as when a remote had to answer at start-up.
#[test]
fn a_family_beyond_its_tolerance_without_the_absent_remote_is_reported() {
    let (_cleanup, dir) = temp_dir("remote-ssd-absent-stripe");
    let target = shelf(&dir, 0);
    let spec = shelf_spec(target.ports()[0].address);
    let remote = RemoteSsd::connect("shelf", spec.clone(), policy()).expect("remote SSD");
    let geometry = RemoteGeometry {
        size: remote.size(),
        lba_shift: remote.lba_shift(),
    };
    let handles = handles_with(&dir, &remote);
    let manager = VolumeManager::open(&handles);
    let table = Activated::default();
    let nsid = create_volume(
        &manager,
        &handles,
        &table,
        "stripe",
        (layout::RAID0, 0),
        0b11,
        VOLUME_BYTES,
    );
    table.get(nsid).flush().expect("flush");
    assert!(manager.unopened_families().is_empty());
    drop((table, manager, handles, remote));
    target.shut_down();

    let (manager, _remote) = open_without_remote(&dir, &spec, geometry);
    let unopened = manager.unopened_families();
    assert_eq!(unopened.len(), 1, "{unopened:?}");
    assert!(
        unopened[0].contains("cannot open with 1 of its 2 members"),
        "{}",
        unopened[0]
    );
}

/// A `[volume]` of the configuration that is not on the SSDs that answer
/// is not made while one of its members is an absent remote SSD (it may
/// live there): start-up fails with the reason, and the local SSD is not
/// written to.
#[test]
fn a_configured_volume_is_not_made_without_its_absent_remote_member() {
    let (_cleanup, dir) = temp_dir("remote-ssd-absent-config");
    // A port nobody listens on: bound, then closed.
    let address = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let text = format!(
        "[remote-ssd shelf]\naddress {address}\nsubsystem {SHELF}\nsize 16M\n\
         [volume db]\nlayout raid10\nssds 0 shelf\nsize 6M\n"
    );
    let config = config::parse(&text).expect("config");
    let spec = config.remote_ssds[0].spec.clone();
    let geometry = config.remote_ssds[0].geometry.expect("size");
    let (manager, remote) = open_without_remote(&dir, &spec, geometry);
    let handles = handles_with(&dir, &remote);
    let ownership: Vec<_> = handles.iter().map(|h| h.ownership.clone()).collect();
    let reserved = BTreeSet::new();
    let existing = crate::nvmf::VolumeDirectory::from_manager(&manager, &reserved);
    let table = Activated::default();
    let made = crate::nvmf::volumes::create_missing(
        &config,
        &manager,
        &ownership,
        1,
        &[1],
        &table,
        &existing,
    );
    let e = made.expect_err("not made without the absent member");
    assert!(e.contains("does not answer"), "{e}");
    let local = std::fs::read(dir.join("local.img")).expect("local image");
    assert!(local.iter().all(|&b| b == 0), "the local SSD is untouched");
}
