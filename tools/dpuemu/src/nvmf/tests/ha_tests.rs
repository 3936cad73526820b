//! ANA through the wire (Documentation/ha.rst): the two nodes of a pair
//! serve the same subsystem; the passive node's path and a path whose
//! node lost the media are inaccessible in the ANA log, and their I/O
//! completes with ANA Inaccessible (a path error) rather than running.

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
