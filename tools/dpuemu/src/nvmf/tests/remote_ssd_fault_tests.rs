//! A remote SSD's lost connection and injected faults as the volume layer
//! sees them: a reconnection re-adds the member but keeps the faults
//! injected on it, and a lost remote fails its member on a read too.

use nvme_shim::vendor::{fault, ARRAY_STATE_DEGRADED, ARRAY_STATE_OPTIMAL};

use super::remote_ssd_tests::{
    array_state, fault_on, remote_mirror, shelf, shelf_spec, verify, wait_for, wait_rebuilt,
    write_chunks, CHUNK, VOLUME_BYTES,
};
use super::volume_tests::{temp_dir, Activated};
use super::*;
use crate::nvmf::{RemoteSsd, RemoteSsdPolicy};
use crate::volumes::VolumeManager;

/// A RAID10 volume over a local image (SSD 0) and a remote SSD (SSD 1) on
/// an in-process target, written all over and flushed.
struct Mirror {
    target: Arc<Target>,
    address: SocketAddr,
    remote: Arc<RemoteSsd>,
    manager: Arc<VolumeManager>,
    _table: Activated,
    nsid: u32,
    ns: Arc<dyn Namespace>,
    expected: Vec<u8>,
}

fn mirror(dir: &std::path::Path) -> Mirror {
    let target = shelf(dir, 0);
    let address = target.ports()[0].address;
    let spec = shelf_spec(address);
    let policy = RemoteSsdPolicy {
        first: Duration::from_millis(20),
        max: Duration::from_millis(200),
        // shut_down() leaves no command running in the old target.
        quiesce: Duration::ZERO,
        ..RemoteSsdPolicy::default()
    };
    let remote = RemoteSsd::connect("shelf", spec, policy).expect("remote SSD");
    let (manager, table, nsid) = remote_mirror(dir, &remote);
    let ns = table.get(nsid);
    let mut expected = vec![0u8; VOLUME_BYTES as usize];
    write_chunks(&*ns, 0..expected.len() / CHUNK, 7, &mut expected);
    ns.flush().expect("flush");
    verify(&*ns, &expected, "optimal");
    assert_eq!(array_state(&manager, nsid), ARRAY_STATE_OPTIMAL);
    Mirror {
        target,
        address,
        remote,
        manager,
        _table: table,
        nsid,
        ns,
        expected,
    }
}

/// Fault Injection on the remote SSD (every read fails) outlives an
/// outage of the remote: the reconnection re-adds and rebuilds the member
/// (writes reach it) but does not clear the fault, so with the local SSD
/// gone the volume cannot be read until the operator's CLEAR, after which
/// every byte reads back from the remote member.
#[test]
fn an_injected_fault_on_a_remote_ssd_survives_its_reconnection() {
    let (_cleanup, dir) = temp_dir("remote-ssd-fault-kept");
    let mut m = mirror(&dir);
    fault_on(&m.manager, fault::FAIL_READS, 1);
    // Reads the remote fails are served by the local copy (and counted).
    verify(&*m.ns, &m.expected, "remote reads failing");
    assert_eq!(array_state(&m.manager, m.nsid), ARRAY_STATE_OPTIMAL);

    m.target.shut_down();
    let chunks = m.expected.len() / CHUNK;
    write_chunks(&*m.ns, chunks / 2..chunks, 70, &mut m.expected);
    m.ns.flush().expect("flush while degraded");
    assert_eq!(array_state(&m.manager, m.nsid), ARRAY_STATE_DEGRADED);

    let _back = shelf(&dir, m.address.port());
    wait_for("the reconnection", || m.remote.reconnections() >= 1);
    wait_rebuilt(&m.manager, m.nsid);
    m.ns.flush().expect("flush");

    fault_on(&m.manager, fault::DISAPPEAR, 0);
    let mut chunk = vec![0u8; CHUNK];
    for at in [0, m.expected.len() - CHUNK] {
        assert!(
            m.ns.read_at(at as u64, &mut chunk).is_err(),
            "read at {at} succeeded: the reconnection cleared the injected fault"
        );
    }
    fault_on(&m.manager, fault::CLEAR, 1);
    verify(&*m.ns, &m.expected, "remote member only, after CLEAR");
}

/// A read-only workload while the remote is away: the first reads the
/// remote member fails (connection lost, then not connected) fail the
/// member, so the volume shows degraded rather than optimal with read
/// errors counted; every read is served from the local copy, and when
/// the remote returns the member is re-added and rebuilt.
#[test]
fn a_lost_remote_fails_its_member_on_a_read() {
    let (_cleanup, dir) = temp_dir("remote-ssd-read-gone");
    let m = mirror(&dir);
    m.target.shut_down();
    verify(&*m.ns, &m.expected, "reads only, remote away");
    assert_eq!(
        array_state(&m.manager, m.nsid),
        ARRAY_STATE_DEGRADED,
        "reads of a remote that is away must fail its member"
    );
    assert_eq!(m.remote.reconnections(), 0);

    let _back = shelf(&dir, m.address.port());
    wait_for("the reconnection", || m.remote.reconnections() >= 1);
    wait_rebuilt(&m.manager, m.nsid);
    fault_on(&m.manager, fault::DISAPPEAR, 0);
    verify(&*m.ns, &m.expected, "remote member only, after the rebuild");
}
