//! Keep-alive: the initiator's Keep Alive detects a remote that stops
//! answering without closing anything, and keeps an idle but healthy
//! association up; the target drops a host that goes silent.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use nvme_shim::vendor::{fault, ARRAY_STATE_DEGRADED};

use super::remote_ssd_tests::{
    array_state, fault_on, remote_mirror, shelf, shelf_spec, silenceable_proxy, verify, wait_for,
    wait_rebuilt, write_chunks, CHUNK, VOLUME_BYTES,
};
use super::volume_tests::temp_dir;
use super::*;
use crate::nvmf::{RemoteSsd, RemoteSsdPolicy};

const KATO: Duration = Duration::from_millis(200);

/// A remote that freezes (the network swallows everything, nothing is
/// closed) is declared dead by the Keep Alive within about KATO, far
/// before the 3 s PDU timeout: the write waiting for it fails, the member
/// fails, and it is rebuilt when the remote answers again.
#[test]
fn a_frozen_remote_is_lost_within_kato_and_comes_back() {
    let (_cleanup, dir) = temp_dir("keep-alive-frozen");
    let shelf_target = shelf(&dir, 0);
    let silent = Arc::new(AtomicBool::new(false));
    let address = silenceable_proxy(shelf_target.ports()[0].address, Arc::clone(&silent));
    let spec = shelf_spec(address);
    let policy = RemoteSsdPolicy {
        first: Duration::from_millis(20),
        max: Duration::from_millis(200),
        timeout: Duration::from_secs(3),
        quiesce: Duration::from_millis(100),
        kato: KATO,
    };
    let remote = RemoteSsd::connect("shelf", spec, policy).expect("remote SSD");
    let (manager, table, nsid) = remote_mirror(&dir, &remote);
    let ns = table.get(nsid);
    let chunks = VOLUME_BYTES as usize / CHUNK;
    let mut expected = vec![0u8; VOLUME_BYTES as usize];
    write_chunks(&*ns, 0..chunks / 2, 5, &mut expected);
    ns.flush().expect("flush");
    assert!(remote.is_connected());

    // Frozen while idle: the keep-alive alone notices.
    silent.store(true, Ordering::Release);
    let frozen = Instant::now();
    wait_for("the keep-alive to declare the remote dead", || {
        !remote.is_connected()
    });
    let noticed = frozen.elapsed();
    // Detection takes KATO/2 (the next Keep Alive) + KATO (its deadline);
    // the rest is slack for a loaded machine, still below the 3 s timeout.
    assert!(
        noticed >= KATO / 2 && noticed < Duration::from_millis(2500),
        "a frozen remote noticed after {noticed:?}, KATO {KATO:?}"
    );
    let started = Instant::now();
    write_chunks(&*ns, 0..4, 60, &mut expected);
    ns.flush().expect("flush with a frozen remote member");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "a frozen member held the volume for {took:?}"
    );
    assert_eq!(array_state(&manager, nsid), ARRAY_STATE_DEGRADED);
    write_chunks(&*ns, chunks / 2..chunks, 61, &mut expected);

    silent.store(false, Ordering::Release);
    wait_for("the reconnection", || remote.reconnections() >= 1);
    wait_rebuilt(&manager, nsid);
    let before = remote.keep_alives();
    wait_for("keep-alives on the new association", || {
        remote.keep_alives() >= before + 2
    });
    // The dead association's thread ended: one thread, the new one.
    assert_eq!(remote.keep_alive_threads(), 1);
    fault_on(&manager, fault::DISAPPEAR, 0);
    verify(&*ns, &expected, "remote member only, after the freeze");
    eprintln!("frozen remote: noticed after {noticed:?}, the next writes took {took:?}");
}

/// A write in flight when the remote freezes fails within about KATO, not
/// after the PDU timeout (30 s here).
#[test]
fn a_command_waiting_on_a_frozen_remote_fails_within_kato() {
    let (_cleanup, dir) = temp_dir("keep-alive-inflight");
    let shelf_target = shelf(&dir, 0);
    let silent = Arc::new(AtomicBool::new(false));
    let address = silenceable_proxy(shelf_target.ports()[0].address, Arc::clone(&silent));
    let spec = shelf_spec(address);
    let policy = RemoteSsdPolicy {
        first: Duration::from_secs(60),
        timeout: Duration::from_secs(30),
        kato: KATO,
        ..RemoteSsdPolicy::default()
    };
    let remote = RemoteSsd::connect("shelf", spec, policy).expect("remote SSD");
    let data = pattern(64 << 10, 9);
    remote.write_at(0, &data).expect("write before the freeze");
    silent.store(true, Ordering::Release);
    let started = Instant::now();
    let e = remote
        .write_at(0, &data)
        .expect_err("a write to a frozen remote");
    let took = started.elapsed();
    assert_eq!(e.kind(), std::io::ErrorKind::NotConnected, "{e}");
    assert!(
        took < Duration::from_millis(2500),
        "the write waited {took:?} with KATO {KATO:?}"
    );
    assert!(!remote.is_connected());
    wait_for("the dead association's keep-alive thread to end", || {
        remote.keep_alive_threads() == 0
    });
    let e = remote
        .read_at(0, &mut vec![0u8; 4096])
        .expect_err("a read after the loss");
    assert_eq!(e.kind(), std::io::ErrorKind::NotConnected, "{e}");
}

/// An idle, healthy association stays up over many KATO periods: Keep
/// Alives are answered, the target keeps the controller, nothing
/// reconnects, and a read afterwards works on the same association.
#[test]
fn an_idle_healthy_remote_stays_connected_over_many_kato_periods() {
    let (_cleanup, dir) = temp_dir("keep-alive-idle");
    let shelf_target = shelf(&dir, 0);
    let spec = shelf_spec(shelf_target.ports()[0].address);
    // KATO 200 ms: a Keep Alive every 100 ms, the target drops the
    // controller after 400 ms without one, margin for a loaded machine.
    let kato = KATO;
    let policy = RemoteSsdPolicy {
        first: Duration::from_millis(20),
        kato,
        ..RemoteSsdPolicy::default()
    };
    let remote = RemoteSsd::connect("shelf", spec, policy).expect("remote SSD");
    let data = pattern(8192, 3);
    remote.write_at(4096, &data).expect("write");
    std::thread::sleep(kato * 8);
    let answered = remote.keep_alives();
    assert!(
        answered >= 5,
        "{answered} Keep Alives answered in 8 KATO periods"
    );
    assert!(remote.is_connected());
    assert_eq!(remote.reconnections(), 0);
    assert_eq!(shelf_target.controller_count(), 1);
    assert_eq!(remote.keep_alive_threads(), 1);
    let mut back = vec![0u8; data.len()];
    remote.read_at(4096, &mut back).expect("read after idling");
    assert!(back == data, "data read back after idling differs");
    assert_eq!(remote.reconnections(), 0);
}

/// Keep-alive off (KATO 0): no Keep Alive is sent and the association
/// stays up.
#[test]
fn kato_zero_sends_no_keep_alive() {
    let (_cleanup, dir) = temp_dir("keep-alive-off");
    let shelf_target = shelf(&dir, 0);
    let spec = shelf_spec(shelf_target.ports()[0].address);
    let policy = RemoteSsdPolicy {
        kato: Duration::ZERO,
        ..RemoteSsdPolicy::default()
    };
    let remote = RemoteSsd::connect("shelf", spec, policy).expect("remote SSD");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(remote.keep_alives(), 0);
    assert_eq!(remote.keep_alive_threads(), 0);
    assert!(remote.is_connected());
    assert_eq!(shelf_target.controller_count(), 1);
}

/// Admin Connect asking for `kato_ms`, then CC.EN; returns the controller.
fn enable_with_kato(host: &mut Host, kato_ms: u32) -> u16 {
    let mut sqe = SubmissionEntry::new(FABRICS_OPCODE, 0);
    sqe.nsid.set(0x01);
    sqe.cdw11.set(31);
    sqe.cdw12.set(kato_ms);
    let mut data = vec![0u8; 1024];
    data[..16].copy_from_slice(&[7u8; 16]);
    data[16..18].copy_from_slice(&0xffffu16.to_le_bytes());
    data[256..256 + SUBSYSTEM.len()].copy_from_slice(SUBSYSTEM.as_bytes());
    data[512..512 + HOST.len()].copy_from_slice(HOST.as_bytes());
    let c = host.command(sqe, &data, true, 0);
    assert_eq!(c.status, 0, "admin Connect");
    let cc = 1 | 6 << 16 | 4 << 20;
    assert_eq!(host.property(true, 0x14, cc, false).status, 0);
    c.result as u16
}

/// The target keeps a host that sends commands (Keep Alive or any other)
/// and tears down, once, a host silent past the KATO of its Connect: not
/// before KATO, and within KATO plus the grace and a watchdog period.
#[test]
fn the_target_drops_a_host_silent_past_its_connect_kato() {
    let f = fixture("kato-connect");
    let mut admin = Host::connect(f.addr, false, false);
    enable_with_kato(&mut admin, 200);
    assert_eq!(admin.admin(0x06, 0, 1, 0, 4096).status, 0, "Identify");
    // 1 s of traffic, five KATO periods: Keep Alives, then Get Features
    // only (any command restarts the timer).
    for round in 0..10 {
        std::thread::sleep(Duration::from_millis(100));
        let c = if round < 5 {
            admin.admin(0x18, 0, 0, 0, 0)
        } else {
            admin.admin(0x0a, 0, 0x0f, 0, 0)
        };
        assert_eq!(c.status, 0, "round {round}");
    }
    assert_eq!(f.target.controller_count(), 1, "kept alive by traffic");
    let silent = Instant::now();
    let mut rest = Vec::new();
    let _ = admin.stream.read_to_end(&mut rest);
    let took = silent.elapsed();
    assert!(rest.is_empty(), "nothing but the close");
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_millis(2000),
        "a host silent for KATO 200 ms was dropped after {took:?}"
    );
    assert_eq!(f.target.controller_count(), 0);
}

/// A KATO beyond the target's maximum is granted as the maximum (Get
/// Features tells the host), from Connect and from Set Features; 0 is
/// honoured as off.
#[test]
fn a_kato_beyond_the_maximum_is_clamped() {
    use crate::nvmf::target::MAX_KATO_MS;

    let f = fixture("kato-clamp");
    let mut admin = Host::connect(f.addr, false, false);
    enable_with_kato(&mut admin, u32::MAX);
    let c = admin.admin(0x0a, 0, 0x0f, 0, 0);
    assert_eq!((c.status, c.result), (0, u64::from(MAX_KATO_MS)));
    assert_eq!(admin.admin(0x09, 0, 0x0f, MAX_KATO_MS + 1, 0).status, 0);
    let c = admin.admin(0x0a, 0, 0x0f, 0, 0);
    assert_eq!((c.status, c.result), (0, u64::from(MAX_KATO_MS)));
    assert_eq!(admin.admin(0x09, 0, 0x0f, 0, 0).status, 0);
    let c = admin.admin(0x0a, 0, 0x0f, 0, 0);
    assert_eq!((c.status, c.result), (0, 0));
    assert_eq!(admin.admin(0x18, 0, 0, 0, 0).status, 0, "Keep Alive");
}

/// Keep Alive with fields it cannot have gets an error status, and the
/// connection goes on: with data to read, with in-capsule data, on an I/O
/// queue, and before any Connect.
#[test]
fn a_malformed_keep_alive_gets_an_error_status() {
    use nvme_shim::status::Status;

    let f = fixture("kato-bad");
    let mut admin = Host::connect(f.addr, false, false);
    let cntlid = enable_with_kato(&mut admin, 0);
    let keep_alive = SubmissionEntry::new(0x18, 0);
    let c = admin.command(keep_alive, &[], true, 512);
    assert_eq!(
        c.status,
        Status::SGL_LENGTH_INVALID.0,
        "Keep Alive reading 512 bytes"
    );
    let c = admin.command(keep_alive, &[0x5a; 64], true, 0);
    // The connection refuses data carried for a command that moves none.
    assert_eq!(c.status, Status::SGL_TYPE_INVALID.0, "Keep Alive with data");
    assert_eq!(admin.admin(0x18, 0, 0, 0, 0).status, 0, "a good Keep Alive");

    let mut stranger = Host::connect(f.addr, false, false);
    let c = stranger.admin(0x18, 0, 0, 0, 0);
    assert_eq!(c.status, Status::COMMAND_SEQUENCE_ERROR.0, "before Connect");

    let mut io = Host::connect(f.addr, false, false);
    assert_eq!(
        io.fabrics_connect(1, cntlid, SUBSYSTEM, HOST).status,
        0,
        "I/O Connect"
    );
    // Opcode 0x18 is no I/O command: with NSID 0 the namespace is refused
    // first, with a real one the opcode.
    let c = io.command(keep_alive, &[], true, 0);
    assert_eq!(
        c.status,
        Status::INVALID_NAMESPACE.0,
        "Keep Alive, NSID 0, on an I/O queue"
    );
    let mut on_namespace = keep_alive;
    on_namespace.nsid.set(1);
    let c = io.command(on_namespace, &[], true, 0);
    assert_eq!(
        c.status,
        Status::INVALID_OPCODE.0,
        "Keep Alive on an I/O queue"
    );
    assert_eq!(
        admin.admin(0x18, 0, 0, 0, 0).status,
        0,
        "the admin queue lives on"
    );
}
