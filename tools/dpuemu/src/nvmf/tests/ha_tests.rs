//! ANA through the wire (Documentation/ha.rst): the two nodes of a pair
//! serve the same subsystem; the passive node's path and a path whose
//! node lost the media are inaccessible in the ANA log, and their I/O
//! completes with ANA Inaccessible (a path error) rather than running; a
//! takeover tells the connected hosts with an ANA change notice.

use std::io::ErrorKind;

use super::*;
use crate::ha::path::{PathGate, ServingVolumes, StandbyVolumes};
use crate::namespace::FileNamespace;
use crate::nvmf::target::{claim_ssds, VolumeLookup};

/// Status field of ANA Inaccessible: SCT 3h, SC 02h, no DNR.
const ANA_INACCESSIBLE: u16 = 0x302;
/// Status bits without More and DNR.
const CODE: u16 = 0x7ff;
const DNR: u16 = 1 << 14;

fn pair_config() -> config::TargetConfig {
    let text = format!(
        "[port 1]\naddress 127.0.0.1\nservice 0\n\
         [volume db0]\nlayout single\nssds 0\nsize 1M\n\
         [subsystem {SUBSYSTEM}]\nports 1\nhost {HOST}\nnamespace 1 volume db0\n"
    );
    config::parse(&text).expect("config")
}

/// The one volume, a plain image here.
struct OneVolume(Arc<dyn Namespace>);

impl VolumeLookup for OneVolume {
    fn volume(&self, name: &str) -> Option<Arc<dyn Namespace>> {
        (name == "db0").then(|| self.0.clone())
    }
}

fn ana_state(admin: &mut Host) -> u8 {
    let log = admin.admin(0x02, 0, 0x0c | ((52 / 4 - 1) << 16), 0, 52);
    assert_eq!(log.status, 0, "ANA log");
    assert_eq!(u32::from_le_bytes(log.data[20..24].try_into().unwrap()), 1);
    assert_eq!(&log.data[48..52], &[1, 0, 0, 0]);
    log.data[32]
}

fn session(addr: SocketAddr) -> (Host, Host) {
    let mut admin = Host::connect(addr, false, false);
    let cntlid = admin.enable(SUBSYSTEM, HOST);
    let mut io = Host::connect(addr, false, false);
    assert_eq!(io.fabrics_connect(1, cntlid, SUBSYSTEM, HOST).status, 0);
    (admin, io)
}

#[test]
fn the_passive_path_is_inaccessible_and_runs_nothing() {
    let config = pair_config();
    let claimed = claim_ssds(&config, &[]).expect("claim");
    let gate = PathGate::new(true);
    let target = Target::start_with(&config, &claimed, &StandbyVolumes::new(&config, gate))
        .expect("standby target");
    let (mut admin, mut io) = session(target.ports()[0].address);
    assert_eq!(ana_state(&mut admin), 3, "inaccessible");
    // Identify Namespace still describes it: 1 MiB of 4 KiB blocks.
    let ns = admin.admin(0x06, 1, 0, 0, 4096);
    assert_eq!(u64::from_le_bytes(ns.data[..8].try_into().unwrap()), 256);
    assert_eq!(ns.data[128 + 2], 12);
    for opcode in [0x01u8, 0x02, 0x00, 0x08] {
        let (data, read) = if opcode == 0x01 {
            (vec![5u8; 4096], 0)
        } else if opcode == 0x02 {
            (Vec::new(), 4096)
        } else {
            (Vec::new(), 0)
        };
        let mut sqe = SubmissionEntry::new(opcode, 0);
        sqe.nsid.set(1);
        let c = io.command(sqe, &data, true, read);
        assert_eq!(c.status & CODE, ANA_INACCESSIBLE, "opcode {opcode:#x}");
        assert_eq!(c.status & DNR, 0, "the host must retry elsewhere");
    }
    target.shut_down();
}

#[test]
fn a_node_that_loses_the_media_turns_its_path_inaccessible() {
    let dir = std::env::temp_dir().join(format!("dpuemu-nvmf-ha-active-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let image = dir.join("db0.img");
    let volume: Arc<dyn Namespace> =
        Arc::new(FileNamespace::open(&image, Some(1 << 20)).expect("image"));
    let config = pair_config();
    let claimed = claim_ssds(&config, &[]).expect("claim");
    let gate = PathGate::new(true);
    let lookup = OneVolume(volume);
    let serving = ServingVolumes {
        inner: &lookup,
        gate: gate.clone(),
    };
    let target = Target::start_with(&config, &claimed, &serving).expect("target");
    let (mut admin, mut io) = session(target.ports()[0].address);
    assert_eq!(ana_state(&mut admin), 1, "optimized");
    let data = pattern(4096, 9);
    assert_eq!(io.io(0x01, 1, 8, &data, true, 0).status, 0);
    assert_eq!(io.io(0x02, 1, 8, &[], false, 4096).data, data);
    // Fenced: the gate closes, and nothing more runs on this path.
    gate.close();
    assert_eq!(ana_state(&mut admin), 3, "inaccessible");
    let w = io.io(0x01, 1, 8, &pattern(4096, 1), true, 0);
    assert_eq!(w.status & CODE, ANA_INACCESSIBLE);
    assert_eq!(
        io.io(0x02, 1, 8, &[], false, 4096).status & CODE,
        ANA_INACCESSIBLE
    );
    let mut back = vec![0u8; 4096];
    FileNamespace::open(&image, None)
        .expect("image")
        .read_at(8 * 512, &mut back)
        .expect("read");
    assert_eq!(back, data, "a write on the inaccessible path landed");
    target.shut_down();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Asynchronous Event Configuration (Set and Get Features 0Bh) and its
/// ANA change bit.
const FEATURE_ASYNC_EVENT: u32 = 0x0b;
const ANA_CHANGE_ENABLED: u32 = 1 << 11;
/// Completion dword 0 of an ANA change notice: Notice, ANA change, log 0Ch.
const ANA_CHANGE_NOTICE: u32 = 0x000c_0302;
/// How long a test waits to be sure that nothing arrives.
const QUIET: Duration = Duration::from_millis(300);

/// What arrived on an admin queue that had nothing to wait for.
#[derive(Debug, PartialEq, Eq)]
enum Arrived {
    /// A completion: CID, status, dword 0.
    Completion(u16, u16, u32),
    /// Nothing within the wait.
    Nothing,
    /// The target closed the connection.
    Closed,
}

impl Host {
    /// Sends an Asynchronous Event Request without waiting for it;
    /// returns its CID.
    fn event_request(&mut self) -> u16 {
        self.cid = self.cid.wrapping_add(1);
        let mut sqe = SubmissionEntry::new(0x0c, 0);
        sqe.set_cid(self.cid);
        self.send_capsule(&sqe, &[]);
        self.cid
    }

    /// What arrives within `wait` when no command waits for its answer.
    fn arrived(&mut self, wait: Duration) -> Arrived {
        self.stream.set_read_timeout(Some(wait)).expect("timeout");
        let mut ch = [0u8; COMMON_HEADER_BYTES];
        let got = self.stream.read(&mut ch[..1]);
        self.stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        match got {
            Ok(0) => return Arrived::Closed,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Arrived::Nothing
            }
            Err(_) => return Arrived::Closed,
        }
        self.stream.read_exact(&mut ch[1..]).expect("header");
        let layout = self.rx.frame(&ch).expect("target sent a bad header");
        let mut pdu = vec![0u8; layout.plen()];
        pdu[..8].copy_from_slice(&ch);
        self.stream.read_exact(&mut pdu[8..]).expect("PDU body");
        match self.rx.parse(&pdu).expect("target sent a bad PDU").pdu {
            Pdu::CapsuleResp(r) => {
                let cqe = CompletionEntry::from_bytes(r.cqe);
                Arrived::Completion(cqe.command_id(), cqe.status().0, cqe.result.get())
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Enables ANA change notices (`enable`) or only what Linux never
    /// asks of this target (SMART warnings), and checks Get Features.
    fn configure_events(&mut self, enable: bool) {
        let value = if enable { ANA_CHANGE_ENABLED } else { 0xff };
        let set = self.admin(0x09, 0, FEATURE_ASYNC_EVENT, value, 0);
        assert_eq!(set.status, 0, "Set Features 0Bh");
        let get = self.admin(0x0a, 0, FEATURE_ASYNC_EVENT, 0, 0);
        assert_eq!(get.status, 0, "Get Features 0Bh");
        assert_eq!(
            get.result as u32,
            if enable { ANA_CHANGE_ENABLED } else { 0 }
        );
    }
}

/// One 4 KiB block of I/O at `lba` (Read or Write).
fn io_4k(io: &mut Host, opcode: u8, lba: u64, data: &[u8]) -> Completion {
    let mut sqe = SubmissionEntry::new(opcode, 0);
    sqe.nsid.set(1);
    sqe.cdw10.set(lba as u32);
    sqe.cdw11.set((lba >> 32) as u32);
    io.command(sqe, data, true, if data.is_empty() { 4096 } else { 0 })
}

/// A passive node's path over a stand-in, with the volume to put behind
/// it at the takeover.
struct StandbyPath {
    target: Arc<Target>,
    gate: Arc<PathGate>,
    standins: StandbyVolumes,
    volume: Arc<dyn Namespace>,
    dir: std::path::PathBuf,
}

impl StandbyPath {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("dpuemu-nvmf-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let volume: Arc<dyn Namespace> = Arc::new(super::FourKiB(
            FileNamespace::open(&dir.join("db0.img"), Some(1 << 20)).expect("image"),
        ));
        let config = pair_config();
        let claimed = claim_ssds(&config, &[]).expect("claim");
        let gate = PathGate::new(false);
        let standins = StandbyVolumes::new(&config, gate.clone());
        let target = Target::start_with(&config, &claimed, &standins).expect("standby target");
        Self {
            target,
            gate,
            standins,
            volume,
            dir,
        }
    }

    /// What [`crate::ha::HaRuntime::serve`] does at a takeover.
    fn take_over(&self) {
        self.standins
            .promote(&OneVolume(self.volume.clone()))
            .expect("promote");
        self.gate.open();
        self.target.notify_ana_change();
    }
}

impl Drop for StandbyPath {
    fn drop(&mut self) {
        self.target.shut_down();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn an_ana_change_completes_one_held_event_request_per_change() {
    let path = StandbyPath::new("aen");
    let (mut admin, mut io) = session(path.target.ports()[0].address);
    // OAES announces ANA change notices: Linux enables only what it says.
    let id = admin.admin(0x06, 0, 1, 0, 4096);
    let oaes = u32::from_le_bytes(id.data[92..96].try_into().unwrap());
    assert_eq!(oaes & ANA_CHANGE_ENABLED, ANA_CHANGE_ENABLED);
    admin.configure_events(true);
    let first = admin.event_request();
    assert_eq!(admin.arrived(QUIET), Arrived::Nothing, "before any change");
    assert_eq!(ana_state(&mut admin), 3, "inaccessible");

    // The takeover: the same connection is told, once.
    path.take_over();
    assert_eq!(
        admin.arrived(Duration::from_secs(5)),
        Arrived::Completion(first, 0, ANA_CHANGE_NOTICE)
    );
    let second = admin.event_request();
    assert_eq!(
        admin.arrived(QUIET),
        Arrived::Nothing,
        "one notice per change"
    );
    // Another change before the host read the log: masked (the log the
    // host reads next shows the newest state anyway).
    path.target.notify_ana_change();
    assert_eq!(admin.arrived(QUIET), Arrived::Nothing, "masked until read");
    // The host reads the log as Linux does (RAE cleared) and sends I/O on
    // the connection it had: optimized now, and the data lands.
    assert_eq!(ana_state(&mut admin), 1, "optimized");
    let data = pattern(4096, 5);
    assert_eq!(io_4k(&mut io, 0x01, 16, &data).status, 0);
    assert_eq!(io_4k(&mut io, 0x02, 16, &[]).data, data);
    let mut back = vec![0u8; 4096];
    path.volume.read_at(16 * 4096, &mut back).expect("read");
    assert_eq!(back, data);

    // The next change (the node loses the media) completes the request
    // held meanwhile.
    path.gate.close();
    path.target.notify_ana_change();
    assert_eq!(
        admin.arrived(Duration::from_secs(5)),
        Arrived::Completion(second, 0, ANA_CHANGE_NOTICE)
    );
    assert_eq!(ana_state(&mut admin), 3);
    // A change while no request is held waits for the next request.
    path.gate.open();
    path.target.notify_ana_change();
    assert_eq!(admin.arrived(QUIET), Arrived::Nothing);
    let third = admin.event_request();
    assert_eq!(
        admin.arrived(Duration::from_secs(5)),
        Arrived::Completion(third, 0, ANA_CHANGE_NOTICE)
    );
    assert_eq!(ana_state(&mut admin), 1);
}

#[test]
fn a_host_that_did_not_enable_notices_gets_none_and_is_reconnected() {
    let path = StandbyPath::new("aen-off");
    let (mut admin, mut io) = session(path.target.ports()[0].address);
    admin.configure_events(false);
    admin.event_request();
    assert_eq!(admin.arrived(QUIET), Arrived::Nothing);
    assert_eq!(path.target.controller_count(), 1);
    // No notice: the controller is closed instead, so the host connects
    // again and reads the new state at connect.
    path.take_over();
    assert_eq!(admin.arrived(Duration::from_secs(5)), Arrived::Closed);
    assert_eq!(io.arrived(Duration::from_secs(5)), Arrived::Closed);
    assert_eq!(path.target.controller_count(), 0);
    let (mut admin, _io) = session(path.target.ports()[0].address);
    assert_eq!(ana_state(&mut admin), 1, "optimized at reconnect");
}

#[test]
fn event_requests_past_the_limit_are_refused() {
    let path = StandbyPath::new("aen-limit");
    let (mut admin, _io) = session(path.target.ports()[0].address);
    admin.configure_events(true);
    // AERL is 3 (0-based): four are held, the fifth refused.
    let held: Vec<u16> = (0..4).map(|_| admin.event_request()).collect();
    assert_eq!(admin.arrived(QUIET), Arrived::Nothing);
    let fifth = admin.event_request();
    assert_eq!(
        admin.arrived(Duration::from_secs(5)),
        Arrived::Completion(fifth, 0x105 | DNR, 0),
        "Asynchronous Event Request Limit Exceeded"
    );
    // One change completes the oldest held request, and only it.
    path.take_over();
    assert_eq!(
        admin.arrived(Duration::from_secs(5)),
        Arrived::Completion(held[0], 0, ANA_CHANGE_NOTICE)
    );
    assert_eq!(admin.arrived(QUIET), Arrived::Nothing);
}

/// A free port on the loopback for `bind` (TCP or UDP), released again.
fn free_port(udp: bool) -> u16 {
    if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("udp port")
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("tcp port")
            .port()
    }
}

/// The whole runtime of a passive node (crate::ha::HaRuntime): a host
/// connected to its inaccessible path is told of the takeover on the same
/// connection, finds the path optimized and writes through it.
#[test]
fn a_node_that_takes_over_tells_its_connected_hosts() {
    let dir = std::env::temp_dir().join(format!("dpuemu-nvmf-ha-runtime-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let service = free_port(false);
    let nvmf = config::parse(&format!(
        "[port 1]\naddress 127.0.0.1\nservice {service}\n\
         [volume db0]\nlayout single\nssds 0\nsize 1M\n\
         [subsystem {SUBSYSTEM}]\nports 1\nhost {HOST}\nnamespace 1 volume db0\n"
    ))
    .expect("config");
    // The peer never answers: the node takes over after the timeout,
    // long enough for the host to connect first.
    let ha = dir.join("node.ha");
    std::fs::write(
        &ha,
        format!(
            "node dpu-t\nlisten 127.0.0.1:{}\npeer 127.0.0.1:{}\nrole passive\n\
             interval 20\ntimeout 1500\ncontroller-ids 1\n",
            free_port(true),
            free_port(true)
        ),
    )
    .expect("ha config");
    let volume: Arc<dyn Namespace> = Arc::new(super::FourKiB(
        FileNamespace::open(&dir.join("db0.img"), Some(1 << 20)).expect("image"),
    ));
    let mut runtime = crate::ha::HaRuntime::new(&ha, Some(&nvmf), false).expect("runtime");
    let node = std::thread::spawn(move || {
        runtime.wait_for_media(&nvmf, || false)?;
        let claimed = claim_ssds(&nvmf, &[])?;
        runtime.serve(&nvmf, &claimed, &OneVolume(volume))?;
        Ok::<_, String>(runtime)
    });
    let addr: SocketAddr = format!("127.0.0.1:{service}").parse().expect("addr");
    let started = std::time::Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no passive path"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (mut admin, mut io) = session(addr);
    admin.configure_events(true);
    assert_eq!(ana_state(&mut admin), 3, "passive: inaccessible");
    let aer = admin.event_request();
    assert_eq!(
        admin.arrived(Duration::from_secs(10)),
        Arrived::Completion(aer, 0, ANA_CHANGE_NOTICE)
    );
    assert_eq!(ana_state(&mut admin), 1, "active: optimized");
    let data = pattern(4096, 11);
    assert_eq!(io_4k(&mut io, 0x01, 3, &data).status, 0);
    assert_eq!(io_4k(&mut io, 0x02, 3, &[]).data, data);
    let runtime = node.join().expect("node thread").expect("takeover");
    runtime.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
