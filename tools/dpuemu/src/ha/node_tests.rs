//! Two nodes in one process over UDP on loopback and the same image files.

use std::sync::atomic::AtomicUsize;

use super::*;
use crate::ha::fence::tests::{node as fenced_node, Images};
use crate::ha::fence::{read_record_at, FencedSsd};
use crate::namespace::Namespace;

const INTERVAL: Duration = Duration::from_millis(20);
const TIMEOUT: Duration = Duration::from_millis(300);

struct Pair {
    images: Images,
    a: Option<HaNode>,
    b: HaNode,
    a_ssds: Vec<Arc<FencedSsd>>,
    b_ssds: Vec<Arc<FencedSsd>>,
    promoted: Arc<Mutex<Vec<String>>>,
    demoted: Arc<AtomicUsize>,
}

fn config(
    node: &str,
    role: Role,
    listen: SocketAddr,
    peer: SocketAddr,
    status: PathBuf,
) -> HaConfig {
    HaConfig {
        node: node.into(),
        listen,
        peer,
        role,
        interval: INTERVAL,
        timeout: TIMEOUT,
        fence_wait: Duration::from_secs(2),
        first_cntlid: 1,
        status: Some(status),
    }
}

fn hooks(
    name: &'static str,
    promoted: &Arc<Mutex<Vec<String>>>,
    demoted: &Arc<AtomicUsize>,
) -> Hooks {
    let p = promoted.clone();
    let d = demoted.clone();
    Hooks {
        promote: Box::new(move |why| {
            p.lock().unwrap().push(format!("{name}: {why}"));
            Ok(())
        }),
        demote: Box::new(move |_| {
            d.fetch_add(1, Ordering::SeqCst);
        }),
    }
}

fn pair(name: &str) -> Pair {
    pair_sending_a_to(name, None)
}

/// A pair whose node A sends its heartbeats to `a_peer` instead of B (a
/// heartbeat link down in one direction).
fn pair_sending_a_to(name: &str, a_peer: Option<SocketAddr>) -> Pair {
    let images = Images::new(name, 2);
    let sa = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sb = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (la, lb) = (sa.local_addr().unwrap(), sb.local_addr().unwrap());
    let (fa, a_ssds) = fenced_node("dpu-a", &images);
    let (fb, b_ssds) = fenced_node("dpu-b", &images);
    let promoted = Arc::new(Mutex::new(Vec::new()));
    let demoted = Arc::new(AtomicUsize::new(0));
    let ca = config(
        "dpu-a",
        Role::Active,
        la,
        a_peer.unwrap_or(lb),
        images.dir.join("a.status"),
    );
    let cb = config("dpu-b", Role::Passive, lb, la, images.dir.join("b.status"));
    let a = HaNode::start_on(
        ca,
        sa,
        fa,
        images.paths.clone(),
        hooks("a", &promoted, &demoted),
    )
    .unwrap();
    let b = HaNode::start_on(
        cb,
        sb,
        fb,
        images.paths.clone(),
        hooks("b", &promoted, &demoted),
    )
    .unwrap();
    Pair {
        images,
        a: Some(a),
        b,
        a_ssds,
        b_ssds,
        promoted,
        demoted,
    }
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
    started.elapsed()
}

fn status_file(p: &Pair, which: &str) -> String {
    std::fs::read_to_string(p.images.dir.join(format!("{which}.status"))).unwrap()
}

#[test]
fn the_passive_takes_over_when_the_active_falls_silent() {
    let mut p = pair("silence");
    let a = p.a.take().unwrap();
    wait_for("a active", Duration::from_secs(5), || {
        a.status().state == NodeState::Active
    });
    wait_for("b hears a", Duration::from_secs(5), || {
        p.b.status()
            .peer
            .is_some_and(|(h, _)| h.state == NodeState::Active)
    });
    assert_eq!(a.status().generation, 1);
    p.a_ssds[0].write_at(1 << 20, &[7u8; 4096]).unwrap();
    assert_eq!(p.b.status().state, NodeState::Passive);
    // A dies (its threads stop: silence, as after SIGKILL).
    let killed = Instant::now();
    a.stop();
    wait_for("b active", TIMEOUT * 4, || {
        p.b.status().state == NodeState::Active
    });
    let resumed = killed.elapsed();
    assert!(
        resumed >= TIMEOUT - INTERVAL * 2,
        "took over after only {resumed:?}"
    );
    let s = p.b.status();
    assert_eq!(s.generation, 2);
    let f = s.last_failover.unwrap();
    assert!(f.reason.contains("no heartbeat from dpu-a"), "{}", f.reason);
    let text = status_file(&p, "b");
    for want in [
        "node dpu-b",
        "state active",
        "fence_generation 2",
        "last_failover_reason no heartbeat",
    ] {
        assert!(text.contains(want), "{want:?} not in\n{text}");
    }
    for path in &p.images.paths {
        assert_eq!(read_record_at(path).unwrap().unwrap().generation, 2);
    }
    // The dead node's media access is fenced; the new one's is not.
    assert!(p.a_ssds[0].write_at(1 << 20, &[9u8; 4096]).is_err());
    p.b_ssds[0].write_at(2 << 20, &[8u8; 4096]).unwrap();
    let mut back = [0u8; 4096];
    p.b_ssds[0].read_at(1 << 20, &mut back).unwrap();
    assert_eq!(back, [7u8; 4096]);
    let promoted = p.promoted.lock().unwrap().clone();
    assert_eq!(promoted.len(), 2, "{promoted:?}");
    assert_eq!(promoted[0], "a: start-up in the active role");
    assert!(
        promoted[1].starts_with("b: no heartbeat from dpu-a"),
        "{promoted:?}"
    );
    p.b.stop();
}

#[test]
fn handover_and_failback_are_prompt() {
    let mut p = pair("handover");
    let a = p.a.take().unwrap();
    wait_for("a active", Duration::from_secs(5), || {
        a.status().state == NodeState::Active
    });
    wait_for("b hears a", Duration::from_secs(5), || {
        p.b.status().peer.is_some()
    });
    a.handover();
    // Well within the failure timeout: B is told, not guessing.
    let took = wait_for("b active", TIMEOUT, || {
        p.b.status().state == NodeState::Active
    });
    assert!(took < TIMEOUT, "{took:?}");
    assert!(p
        .b
        .status()
        .last_failover
        .unwrap()
        .reason
        .contains("handover from dpu-a"));
    wait_for("a passive", Duration::from_secs(2), || {
        a.status().state == NodeState::Passive
    });
    assert!(p.a_ssds[1].write_at(1 << 20, &[1u8; 4096]).is_err());
    p.b_ssds[1].write_at(1 << 20, &[2u8; 4096]).unwrap();
    // Failback.
    p.b.handover();
    wait_for("a active again", TIMEOUT, || {
        a.status().state == NodeState::Active
    });
    assert_eq!(a.status().generation, 3);
    assert!(a
        .status()
        .last_failover
        .unwrap()
        .reason
        .contains("handover from dpu-b"));
    wait_for("b passive", Duration::from_secs(2), || {
        p.b.status().state == NodeState::Passive
    });
    p.a_ssds[1].write_at(1 << 20, &[3u8; 4096]).unwrap();
    assert!(p.b_ssds[1].write_at(1 << 20, &[4u8; 4096]).is_err());
    assert_eq!(
        p.demoted.load(Ordering::SeqCst),
        0,
        "an orderly handover is no fence"
    );
    a.stop();
    p.b.stop();
}

/// A node that finds the media fenced (its peer took over while it was
/// frozen) stops serving at its first write, and says why.
#[test]
fn a_fenced_active_stops_serving() {
    let mut p = pair("fenced");
    let a = p.a.take().unwrap();
    wait_for("a active", Duration::from_secs(5), || {
        a.status().state == NodeState::Active
    });
    // Someone else fences (as the peer would after missing heartbeats
    // that this node, frozen, did not send).
    let rogue = Fence::new("dpu-c");
    rogue.take(&p.images.paths, Duration::from_secs(1)).unwrap();
    assert!(p.a_ssds[0].write_at(1 << 20, &[1u8; 4096]).is_err());
    assert_eq!(a.status().state, NodeState::Fenced);
    assert_eq!(p.demoted.load(Ordering::SeqCst), 1);
    assert!(status_file(&p, "a").contains("last_error fenced: a write found fence generation 2"));
    a.stop();
    p.b.stop();
}

#[test]
fn stray_datagrams_change_nothing() {
    let mut p = pair("stray");
    let a = p.a.take().unwrap();
    wait_for("a active", Duration::from_secs(5), || {
        a.status().state == NodeState::Active
    });
    let target = p.b.shared.socket.local_addr().unwrap();
    let noise = UdpSocket::bind("127.0.0.1:0").unwrap();
    for junk in [
        &b""[..],
        &[0u8; 64][..],
        &[0xffu8; 65][..],
        b"DPUHA\0\0\x01",
    ] {
        noise.send_to(junk, target).unwrap();
    }
    // A forged "handing over" from dpu-a's name but a wrong checksum.
    let mut forged = Heartbeat {
        state: NodeState::HandingOver,
        generation: 1,
        sequence: 1,
        node: "dpu-a".into(),
    }
    .encode();
    forged[63] ^= 1;
    noise.send_to(&forged, target).unwrap();
    std::thread::sleep(INTERVAL * 5);
    assert_eq!(p.b.status().state, NodeState::Passive);
    assert_eq!(a.status().state, NodeState::Active);
    a.stop();
    p.b.stop();
}

/// The heartbeat link fails while both nodes run: the passive one hears
/// nothing, but the active one's media heartbeat moves, so it does not
/// take over (no alternating fences); once the active node really stops,
/// it does.
#[test]
fn a_lost_heartbeat_link_does_not_split_the_brain() {
    // A's heartbeats go to a socket nobody reads.
    let void = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut p = pair_sending_a_to("link-down", Some(void.local_addr().unwrap()));
    let a = p.a.take().unwrap();
    wait_for("a active", Duration::from_secs(5), || {
        a.status().state == NodeState::Active
    });
    wait_for("b sees the link down", TIMEOUT * 4, || {
        status_file(&p, "b").contains("media heartbeat moves")
    });
    std::thread::sleep(TIMEOUT * 2);
    assert!(p.b.status().peer.is_none(), "b heard a over UDP");
    assert_eq!(p.b.status().state, NodeState::Passive);
    assert_eq!(a.status().state, NodeState::Active);
    assert_eq!(a.status().generation, 1);
    p.a_ssds[0].write_at(1 << 20, &[5u8; 4096]).unwrap();
    assert_eq!(p.demoted.load(Ordering::SeqCst), 0);
    // A dies: both heartbeats stop, and B takes over.
    let killed = Instant::now();
    a.stop();
    wait_for("b active", TIMEOUT * 4, || {
        p.b.status().state == NodeState::Active
    });
    assert!(killed.elapsed() >= TIMEOUT - INTERVAL * 2);
    assert_eq!(p.b.status().generation, 2);
    let mut back = [0u8; 4096];
    p.b_ssds[0].read_at(1 << 20, &mut back).unwrap();
    assert_eq!(back, [5u8; 4096]);
    p.b.stop();
}
