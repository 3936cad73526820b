//! Remote SSD Add and Remove as the host's configfs sends them: a remote
//! SSD added while dpuemu runs (into a reserved SSD index) carries a
//! RAID10 member next to a local image, fails with its target, is
//! re-added and rebuilt when the target returns, and, after a restart of
//! the accelerator, rejoins its family by label when the host adds it
//! again.

use std::net::TcpListener;

use nvme_shim::status::Status;
use nvme_shim::vendor::{
    self, fault, layout, status as vs, vendor_status, ARRAY_STATE_DEGRADED, ARRAY_STATE_OPTIMAL,
};
use nvme_shim::wire::Wire;

use super::remote_ssd_tests::{
    array_state, fault_on, shelf, verify, wait_for, wait_rebuilt, write_chunks, CHUNK, SHELF,
    SSD_BYTES, VOLUME_BYTES,
};
use super::volume_tests::{create_volume, image_handles, temp_dir, Activated};
use super::*;
use crate::controller::SsdHandle;
use crate::nvmf::remote_slots::tests::request;
use crate::nvmf::{HostTarget, RemoteSlot, RemoteSlots, RemoteSsdPolicy, SlotHandle};
use crate::ownership::SsdOwnership;
use crate::volumes::VolumeManager;

/// An accelerator as `main` makes it: the local image `local.img` as SSD 0
/// and one reserved remote SSD index, 1, which the host's commands fill.
fn accelerator(dir: &std::path::Path) -> (HostTarget, Arc<VolumeManager>, Vec<SsdHandle>) {
    let mut handles = image_handles(&[dir.join("local.img")], SSD_BYTES);
    let slot = SlotHandle {
        index: 1,
        ownership: Arc::new(SsdOwnership::new()),
        slot: Arc::new(RemoteSlot::default()),
    };
    handles.push(SsdHandle {
        index: 1,
        ownership: slot.ownership.clone(),
        media: slot.slot.clone(),
        serial: "DPUEMU-REMOTE1".into(),
    });
    let manager = Arc::new(VolumeManager::open(&handles));
    let policy = RemoteSsdPolicy {
        first: Duration::from_millis(20),
        max: Duration::from_millis(200),
        // shut_down() leaves no command running in the old target.
        quiesce: Duration::ZERO,
        ..RemoteSsdPolicy::default()
    };
    let host = HostTarget::default();
    host.install_remote_slots(RemoteSlots::new(
        vec![slot],
        Arc::downgrade(&manager),
        Vec::new(),
        policy,
    ));
    (host, manager, handles)
}

fn add(host: &HostTarget, address: std::net::SocketAddr, nsid: u32) -> Result<u32, Status> {
    let r = request(&address.ip().to_string(), address.port(), SHELF, nsid);
    host.remote_ssd_add(r.as_bytes())
}

#[test]
fn a_remote_ssd_added_by_the_host_mirrors_fails_resyncs_and_rejoins_by_label() {
    let (_cleanup, dir) = temp_dir("remote-ssd-add");
    let first = shelf(&dir, 0);
    let address = first.ports()[0].address;
    let (host, manager, handles) = accelerator(&dir);
    assert!(host.is_empty_remote_slot(1));

    // A remote that does not answer (and no size to wait with) is refused
    // and leaves the index free.
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
    let nowhere = closed.local_addr().expect("address");
    drop(closed);
    assert_eq!(
        add(&host, nowhere, 1),
        Err(vendor_status(vs::REMOTE_UNREACHABLE))
    );
    assert!(host.is_empty_remote_slot(1));
    // A malformed payload changes nothing either.
    let mut bad = request("127.0.0.1", address.port(), SHELF, 1);
    bad.rsvd17[0] = 1;
    assert_eq!(
        host.remote_ssd_add(bad.as_bytes()),
        Err(vendor_status(vs::INVALID_PAYLOAD))
    );
    // A size the remote does not have is refused when it answers.
    let mut wrong = request("127.0.0.1", address.port(), SHELF, 1);
    wrong.size_bytes.set(SSD_BYTES / 2);
    wrong.lba_shift = 9;
    assert_eq!(
        host.remote_ssd_add(wrong.as_bytes()),
        Err(vendor_status(vs::REMOTE_GEOMETRY))
    );
    assert!(host.is_empty_remote_slot(1));
    // An NSID the remote does not have reads as a namespace of 0 blocks:
    // a namespace the accelerator cannot use, not an unreachable remote.
    assert_eq!(
        add(&host, address, 7),
        Err(vendor_status(vs::REMOTE_GEOMETRY))
    );
    // A remote that breaks the protocol (here: garbage for an ICResp) is
    // unreachable, not a geometry refusal.
    let garbage = TcpListener::bind("127.0.0.1:0").expect("bind");
    let babbler = garbage.local_addr().expect("address");
    let talker = std::thread::spawn(move || {
        use std::io::Write;
        if let Ok((mut stream, _)) = garbage.accept() {
            let _ = stream.write_all(&[0xff; 128]);
        }
    });
    assert_eq!(
        add(&host, babbler, 1),
        Err(vendor_status(vs::REMOTE_UNREACHABLE))
    );
    talker.join().expect("the babbling remote");
    assert!(host.is_empty_remote_slot(1));

    assert_eq!(add(&host, address, 1), Ok(1));
    assert!(!host.is_empty_remote_slot(1));
    assert!(handles[1].ownership.is_attached());
    assert_eq!(handles[1].media.size(), SSD_BYTES);
    // The same namespace twice, or a second one with no index left.
    assert_eq!(add(&host, address, 1), Err(vendor_status(vs::NVMF_EXISTS)));
    assert_eq!(add(&host, address, 2), Err(vendor_status(vs::NO_SPACE)));

    let table = Activated::default();
    let nsid = create_volume(
        &manager,
        &handles,
        &table,
        "mirror",
        (layout::RAID10, 2),
        0b11,
        VOLUME_BYTES,
    );
    let ns = table.get(nsid);
    let chunks = VOLUME_BYTES as usize / CHUNK;
    let mut expected = vec![0u8; VOLUME_BYTES as usize];
    write_chunks(&*ns, 0..chunks, 1, &mut expected);
    ns.flush().expect("flush");
    verify(&*ns, &expected, "optimal");
    assert_eq!(array_state(&manager, nsid), ARRAY_STATE_OPTIMAL);
    // A member of a volume is not removed.
    assert_eq!(
        host.remote_ssd_remove(&vendor::remote_ssd_remove(1, 0)),
        Err(vendor_status(vs::SSD_IN_USE))
    );
    assert_eq!(
        host.remote_ssd_remove(&vendor::remote_ssd_remove(0, 0)),
        Err(vendor_status(vs::SSD_NOT_FOUND)),
        "a local SSD is no remote SSD"
    );

    // The remote goes away: the member fails, the volume keeps serving.
    first.shut_down();
    write_chunks(&*ns, chunks / 2..chunks, 60, &mut expected);
    ns.flush().expect("flush while degraded");
    verify(&*ns, &expected, "degraded");
    assert_eq!(array_state(&manager, nsid), ARRAY_STATE_DEGRADED);

    // It returns with its stale image: re-added and rebuilt.
    let second = shelf(&dir, address.port());
    write_chunks(&*ns, 0..4, 120, &mut expected);
    wait_for("the member's return", || {
        array_state(&manager, nsid) != ARRAY_STATE_DEGRADED
    });
    wait_rebuilt(&manager, nsid);
    ns.flush().expect("flush");
    verify(&*ns, &expected, "rebuilt");
    fault_on(&manager, fault::DISAPPEAR, 0);
    verify(&*ns, &expected, "remote member only");
    fault_on(&manager, fault::CLEAR, 0);
    wait_rebuilt(&manager, nsid);
    ns.flush().expect("flush");
    drop(ns);
    drop(table);
    drop(manager);
    drop(host);
    drop(handles);

    // The accelerator restarts: the family opens degraded from the local
    // image (index 1 is empty until the host adds the remote again), and
    // the remote rejoins its member slot by its label and is rebuilt.
    let (host, manager, _handles) = accelerator(&dir);
    let table = Activated::default();
    let nsids = manager.start(&Default::default());
    let (nsid, ns) = nsids.into_iter().next().expect("the mirror is found");
    crate::volumes::NamespaceTable::activate(&table, nsid, ns.clone());
    assert_eq!(array_state(&manager, nsid), ARRAY_STATE_DEGRADED);
    verify(&*ns, &expected, "restarted, degraded");
    assert_eq!(add(&host, address, 1), Ok(1));
    wait_rebuilt(&manager, nsid);
    fault_on(&manager, fault::DISAPPEAR, 0);
    verify(&*ns, &expected, "rejoined remote member only");
    assert!(second.controller_count() >= 1);
}
