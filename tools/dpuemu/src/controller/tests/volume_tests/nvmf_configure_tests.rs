//! The NVMe/TCP target configured the way dpublk's configfs does it:
//! vendor NVMe/TCP commands on the accelerator's admin queue (payloads
//! through guest memory, as the driver sends them), then a host over TCP
//! (dpuemu's own initiator) writing the exported volume, and the
//! accelerator's namespace reading what it wrote.

use std::net::{SocketAddr, TcpListener};

use nvme_shim::vendor::{
    status as vs, vendor_status, NvmfName, NvmfNamespace, NvmfPort, NvmfSubsystem,
    NVMF_ADRFAM_IPV4, NVMF_SUBSYSTEM_ALLOW_ANY_HOST, NVMF_SUBSYSTEM_CREATE, NVMF_TRTYPE_TCP,
};

use super::*;
use crate::nvmf::{RemoteNamespace, RemoteSpec, INITIATOR_NQN};

const NQN: &str = "nqn.2026-12.org.dpublk:configfs-test";
const OTHER_HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-0000000000ff";

/// A TCP port of 127.0.0.1 nothing listens on right now.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("address").port()
}

fn port_payload(id: u16, address: SocketAddr) -> NvmfPort {
    let mut p = NvmfPort::zeroed();
    p.port_id.set(id);
    p.trtype = NVMF_TRTYPE_TCP;
    p.adrfam = NVMF_ADRFAM_IPV4;
    p.trsvcid.set(address.port());
    c_string_field(&mut p.traddr, address.ip().to_string().as_bytes());
    p
}

fn subsystem_payload(nqn: &str, ports: &[u16], hosts: &[&str], any: bool) -> NvmfSubsystem {
    let mut s = NvmfSubsystem::zeroed();
    c_string_field(&mut s.nqn, nqn.as_bytes());
    s.port_count = ports.len() as u8;
    for (slot, &p) in s.ports.iter_mut().zip(ports) {
        slot.set(p);
    }
    s.host_count = hosts.len() as u8;
    for (slot, h) in s.hosts.iter_mut().zip(hosts) {
        c_string_field(slot, h.as_bytes());
    }
    s.flags = if any {
        NVMF_SUBSYSTEM_ALLOW_ANY_HOST
    } else {
        0
    };
    s
}

/// Subsystem Set that creates the subsystem.
fn creating(mut s: NvmfSubsystem) -> NvmfSubsystem {
    s.flags |= NVMF_SUBSYSTEM_CREATE;
    s
}

fn namespace_payload(nqn: &str, nsid: u32, volume: &str) -> NvmfNamespace {
    let mut n = NvmfNamespace::zeroed();
    c_string_field(&mut n.nqn, nqn.as_bytes());
    n.nsid.set(nsid);
    c_string_field(&mut n.volume, volume.as_bytes());
    n
}

impl Accel {
    fn nvmf(&mut self, op: u8, payload: &[u8]) -> Result<u32, Status> {
        let cqe = self.send(SubmissionEntry::new(op, 0), payload);
        Self::result(cqe)
    }

    fn port_remove(&mut self, id: u16) -> Result<u32, Status> {
        Self::result(self.host.admin(vendor::nvmf_port_remove(id, 0)))
    }
}

fn remote(address: SocketAddr, nsid: u32) -> std::io::Result<RemoteNamespace> {
    RemoteNamespace::connect(RemoteSpec {
        address,
        subnqn: NQN.to_string(),
        nsid,
    })
}

#[test]
fn a_volume_exported_through_vendor_commands_serves_a_tcp_host() {
    use crate::namespace::Namespace;
    use vendor::opcode as op;
    let images = Images::new("nvmf-configure", 1, SSD_BYTES);
    let mut a = Accel::start(&images);
    a.attach(&[0]);
    let mut req = request("db0", layout::SINGLE, 0b1, 2 << 20);
    req.services.set(service::THIN);
    let nsid = a.create(&req).expect("Volume Create");
    let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();

    // Port, subsystem allowing dpuemu's initiator, namespace over db0.
    a.nvmf(op::NVMF_PORT_ADD, port_payload(1, address).as_bytes())
        .expect("Port Add");
    let s = subsystem_payload(NQN, &[1], &[INITIATOR_NQN], false);
    assert_eq!(
        a.nvmf(op::NVMF_SUBSYSTEM_SET, s.as_bytes()),
        Err(vendor_status(vs::NVMF_NOT_FOUND)),
        "a change of a subsystem that does not exist"
    );
    a.nvmf(op::NVMF_SUBSYSTEM_SET, creating(s).as_bytes())
        .expect("Subsystem Set");
    let n = namespace_payload(NQN, 1, "db0");
    a.nvmf(op::NVMF_NAMESPACE_ADD, n.as_bytes())
        .expect("Namespace Add");

    // Refusals change nothing.
    let exists = Err(vendor_status(vs::NVMF_EXISTS));
    let invalid = Err(vendor_status(vs::INVALID_PAYLOAD));
    let busy = Err(vendor_status(vs::NVMF_BUSY));
    let not_found = Err(vendor_status(vs::NVMF_NOT_FOUND));
    assert_eq!(
        a.nvmf(op::NVMF_PORT_ADD, port_payload(1, address).as_bytes()),
        exists
    );
    assert_eq!(
        a.nvmf(op::NVMF_PORT_ADD, port_payload(2, address).as_bytes()),
        Err(vendor_status(vs::NVMF_ADDRESS_IN_USE)),
        "another port's address"
    );
    let mut bad = port_payload(3, address);
    bad.adrfam = 2;
    assert_eq!(a.nvmf(op::NVMF_PORT_ADD, bad.as_bytes()), invalid);
    assert_eq!(
        a.nvmf(op::NVMF_NAMESPACE_ADD, n.as_bytes()),
        busy,
        "db0 twice"
    );
    assert_eq!(
        a.nvmf(
            op::NVMF_NAMESPACE_ADD,
            namespace_payload(NQN, 2, "nope").as_bytes()
        ),
        Err(vendor_status(vs::VOLUME_NOT_FOUND))
    );
    assert_eq!(
        a.nvmf(
            op::NVMF_NAMESPACE_ADD,
            namespace_payload("nqn.2026-12.org.dpublk:none", 1, "db0").as_bytes()
        ),
        not_found
    );
    assert_eq!(
        a.nvmf(op::NVMF_SUBSYSTEM_SET, creating(s).as_bytes()),
        exists,
        "created twice"
    );
    let mut any_with_hosts = s;
    any_with_hosts.flags = NVMF_SUBSYSTEM_ALLOW_ANY_HOST;
    assert_eq!(
        a.nvmf(op::NVMF_SUBSYSTEM_SET, any_with_hosts.as_bytes()),
        invalid
    );
    let mut name = NvmfName::zeroed();
    c_string_field(&mut name.nqn, NQN.as_bytes());
    assert_eq!(a.nvmf(op::NVMF_SUBSYSTEM_REMOVE, name.as_bytes()), busy);
    assert_eq!(a.port_remove(9), not_found);
    assert_eq!(
        a.delete(nsid),
        Err(vendor_status(vs::VOLUME_BUSY)),
        "an exported volume is not deleted"
    );

    // The host writes over TCP (in the capsule and through R2T); the
    // accelerator's namespace reads it back, and the other way round.
    let host = remote(address, 1).expect("the allowed host connects");
    assert_eq!(host.size(), 2 << 20);
    let data = blocks_pattern(20, 0x5a);
    host.write_at(8 * BLOCK as u64, &data).expect("TCP write");
    host.flush().expect("TCP flush");
    assert_eq!(a.read(nsid, 8, 20).unwrap(), data, "the volume holds it");
    let back = blocks_pattern(2, 0xa5);
    assert_eq!(a.write(nsid, 100, &back), Status::SUCCESS);
    let mut got = vec![0u8; back.len()];
    host.read_at(100 * BLOCK as u64, &mut got)
        .expect("TCP read");
    assert_eq!(got, back);

    // Another host list: new Connects of dpuemu's initiator are refused;
    // the host already connected stays (as with nvmet).
    let s = subsystem_payload(NQN, &[1], &[OTHER_HOST], false);
    a.nvmf(op::NVMF_SUBSYSTEM_SET, s.as_bytes())
        .expect("Subsystem Set again");
    assert!(remote(address, 1).is_err(), "a host no longer allowed");
    host.read_at(8 * BLOCK as u64, &mut got)
        .expect("still connected");
    assert_eq!(got, data[..got.len()]);
    let any = subsystem_payload(NQN, &[1], &[], true);
    a.nvmf(op::NVMF_SUBSYSTEM_SET, any.as_bytes())
        .expect("allow any host");
    drop(remote(address, 1).expect("any host"));

    // Namespace Remove: the connected host's commands fail, the volume
    // stays; then the subsystem and the port go.
    a.nvmf(
        op::NVMF_NAMESPACE_REMOVE,
        namespace_payload(NQN, 1, "").as_bytes(),
    )
    .expect("Namespace Remove");
    assert!(host.read_at(0, &mut got).is_err(), "Invalid Namespace");
    assert_eq!(
        a.nvmf(
            op::NVMF_NAMESPACE_REMOVE,
            namespace_payload(NQN, 1, "").as_bytes()
        ),
        not_found
    );
    a.nvmf(op::NVMF_SUBSYSTEM_REMOVE, name.as_bytes())
        .expect("Subsystem Remove");
    a.port_remove(1).expect("Port Remove");
    assert!(
        std::net::TcpStream::connect(address).is_err(),
        "nothing listens"
    );
    assert_eq!(a.read(nsid, 8, 20).unwrap(), data, "the volume is intact");

    // The same again from scratch works (the address is free again).
    a.nvmf(op::NVMF_PORT_ADD, port_payload(1, address).as_bytes())
        .expect("Port Add again");
    a.nvmf(op::NVMF_SUBSYSTEM_SET, creating(any).as_bytes())
        .expect("Subsystem Set");
    a.nvmf(op::NVMF_NAMESPACE_ADD, n.as_bytes())
        .expect("Namespace Add again");
    let again = remote(address, 1).expect("connects again");
    again.read_at(8 * BLOCK as u64, &mut got).expect("read");
    assert_eq!(got, data[..got.len()]);
    // Port Remove with a host connected ends its association.
    a.port_remove(1).expect("Port Remove with a host connected");
    assert!(again.read_at(0, &mut got).is_err(), "association ended");
}
