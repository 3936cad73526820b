//! The target against a host written with the nvme-tcp crate, over real
//! loopback sockets: sessions with and without digests, discovery, refused
//! hosts, protocol errors and their termination requests, keep-alive, and
//! hostile byte streams.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use nvme_shim::cqe::CompletionEntry;
use nvme_shim::sqe::SubmissionEntry;
use nvme_tcp::encode;
use nvme_tcp::error::fes;
use nvme_tcp::header::COMMON_HEADER_BYTES;
use nvme_tcp::pdu::IcReq;
use nvme_tcp::{Negotiated, Pdu, Receiver, Stage};

use super::config::{self, DISCOVERY_NQN};
use super::connection::{self, FABRICS_OPCODE};
use super::target::Target;
use crate::namespace::Namespace;

mod appliance_tests;
mod ha_tests;
mod initiator_hostile_tests;
mod keep_alive_tests;
mod remote_ssd_absent_tests;
mod remote_ssd_configure_tests;
mod remote_ssd_fault_tests;
mod remote_ssd_tests;
mod volume_tests;

/// An image file with 4 KiB logical blocks, as volumes are and as many
/// NVMe SSDs and nvmet's file namespaces on most file systems are.
struct FourKiB(crate::namespace::FileNamespace);

impl Namespace for FourKiB {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn lba_shift(&self) -> u8 {
        12
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.0.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.0.write_at(offset, data)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.0.flush()
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.0.write_zeroes(offset, len)
    }
    fn deallocate(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.0.deallocate(offset, len)
    }
}

const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-00000000aaaa";
const OTHER_HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-00000000bbbb";
const SUBSYSTEM: &str = "nqn.2026-12.org.dpublk:test";
const HIDDEN: &str = "nqn.2026-12.org.dpublk:hidden";

struct Fixture {
    target: Arc<Target>,
    addr: SocketAddr,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fixture(name: &str) -> Fixture {
    let dir = std::env::temp_dir().join(format!("dpuemu-nvmf-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let text = format!(
        "[port 1]\naddress 127.0.0.1\nservice 0\n\
         [subsystem {SUBSYSTEM}]\nports 1\nhost {HOST}\nnamespace 1 file {d}/a.img 4M\nnamespace 3 file {d}/b.img 1M\n\
         [subsystem {HIDDEN}]\nports 1\nhost {OTHER_HOST}\nnamespace 1 file {d}/c.img 1M\n",
        d = dir.display()
    );
    let config = config::parse(&text).expect("config");
    let target = Target::start(&config, &[]).expect("target");
    let addr = target.ports()[0].address;
    Fixture {
        target,
        addr,
        _dir: TempDir(dir),
    }
}

/// A minimal NVMe/TCP host.
struct Host {
    stream: TcpStream,
    rx: Receiver,
    negotiated: Negotiated,
    cid: u16,
}

/// What a command got back.
struct Completion {
    status: u16,
    result: u64,
    data: Vec<u8>,
}

impl Host {
    fn connect(addr: SocketAddr, header_digest: bool, data_digest: bool) -> Self {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut h = Self {
            stream,
            rx: Receiver::host(1 << 20),
            negotiated: Negotiated::default(),
            cid: 0,
        };
        let req = encode::ic_req(&IcReq {
            pfv: 0,
            hpda: 0,
            header_digest,
            data_digest,
            maxr2t: 0,
        });
        h.stream.write_all(req.as_bytes()).expect("ICReq");
        match h.read_pdu() {
            Some(Pdu::IcResp(resp)) => {
                assert_eq!(
                    (resp.header_digest, resp.data_digest),
                    (header_digest, data_digest)
                );
                assert_eq!(resp.maxh2cdata, connection::MAXH2CDATA);
                h.negotiated = Negotiated::for_host(&resp, 0);
                h.rx.stage = Stage::Ready(h.negotiated);
            }
            other => panic!("no ICResp: {other:?}"),
        }
        h
    }

    /// Reads one PDU and returns it owned (as the variant with copied
    /// fields the tests need), or `None` at end of stream.
    fn read_raw(&mut self) -> Option<Vec<u8>> {
        let mut ch = [0u8; COMMON_HEADER_BYTES];
        self.stream.read_exact(&mut ch).ok()?;
        let layout = self.rx.frame(&ch).expect("target sent a bad header");
        let mut pdu = vec![0u8; layout.plen()];
        pdu[..8].copy_from_slice(&ch);
        self.stream.read_exact(&mut pdu[8..]).expect("PDU body");
        Some(pdu)
    }

    fn read_pdu(&mut self) -> Option<Pdu<'static>> {
        let raw = self.read_raw()?;
        let leaked: &'static [u8] = Box::leak(raw.into_boxed_slice());
        let r = self.rx.parse(leaked).expect("target sent a bad PDU");
        Some(r.pdu)
    }

    fn send_capsule(&mut self, sqe: &SubmissionEntry, in_capsule: &[u8]) {
        let h = encode::capsule_cmd(&sqe.to_bytes(), in_capsule.len(), &self.negotiated)
            .expect("capsule");
        let mut out = vec![0u8; h.plen()];
        encode::assemble(&mut out, &h, in_capsule).expect("assemble");
        self.stream.write_all(&out).expect("send capsule");
    }

    /// Runs a command: `out` is sent in the capsule (`in_capsule`) or
    /// through R2T, `read` bytes are expected back.
    fn command(
        &mut self,
        mut sqe: SubmissionEntry,
        out: &[u8],
        in_capsule: bool,
        read: usize,
    ) -> Completion {
        self.cid = self.cid.wrapping_add(1);
        let cid = self.cid;
        sqe.set_cid(cid);
        let mut bytes = sqe.to_bytes();
        let len = if out.is_empty() { read } else { out.len() };
        bytes[32..36].copy_from_slice(&(len as u32).to_le_bytes());
        bytes[39] = if in_capsule && !out.is_empty() {
            0x01
        } else {
            0x5a
        };
        let sqe = SubmissionEntry::from_bytes(&bytes);
        self.send_capsule(&sqe, if in_capsule { out } else { &[] });
        let mut data = Vec::new();
        loop {
            match self.read_pdu() {
                Some(Pdu::R2T(r)) => {
                    assert_eq!(r.cccid, cid);
                    let chunk = &out[r.r2to as usize..(r.r2to + r.r2tl) as usize];
                    let h =
                        encode::h2c_data(cid, r.ttag, r.r2to, chunk.len(), true, &self.negotiated)
                            .expect("H2CData");
                    let mut pdu = vec![0u8; h.plen()];
                    encode::assemble(&mut pdu, &h, chunk).expect("assemble");
                    self.stream.write_all(&pdu).expect("send data");
                }
                Some(Pdu::C2HData(d)) => {
                    assert_eq!((d.cccid, d.datao as usize), (cid, data.len()));
                    data.extend_from_slice(d.data);
                }
                Some(Pdu::CapsuleResp(r)) => {
                    let cqe = CompletionEntry::from_bytes(r.cqe);
                    assert_eq!(cqe.command_id(), cid);
                    return Completion {
                        status: cqe.status().0,
                        result: u64::from(cqe.result.get()) | u64::from(cqe.dw1.get()) << 32,
                        data,
                    };
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    fn fabrics_connect(
        &mut self,
        qid: u16,
        cntlid: u16,
        subnqn: &str,
        hostnqn: &str,
    ) -> Completion {
        let mut sqe = SubmissionEntry::new(FABRICS_OPCODE, 0);
        sqe.nsid.set(0x01);
        sqe.cdw10.set(u32::from(qid) << 16);
        sqe.cdw11.set(if qid == 0 { 31 } else { 127 });
        sqe.cdw12.set(if qid == 0 { 15_000 } else { 0 });
        let mut data = vec![0u8; 1024];
        data[..16].copy_from_slice(&[7u8; 16]);
        data[16..18].copy_from_slice(&cntlid.to_le_bytes());
        data[256..256 + subnqn.len()].copy_from_slice(subnqn.as_bytes());
        data[512..512 + hostnqn.len()].copy_from_slice(hostnqn.as_bytes());
        self.command(sqe, &data, true, 0)
    }

    fn property(&mut self, set: bool, offset: u32, value: u64, eight: bool) -> Completion {
        let mut sqe = SubmissionEntry::new(FABRICS_OPCODE, 0);
        sqe.nsid.set(if set { 0x00 } else { 0x04 });
        sqe.cdw10.set(u32::from(eight));
        sqe.cdw11.set(offset);
        sqe.cdw12.set(value as u32);
        sqe.cdw13.set((value >> 32) as u32);
        self.command(sqe, &[], true, 0)
    }

    fn admin(&mut self, opcode: u8, nsid: u32, cdw10: u32, cdw11: u32, read: usize) -> Completion {
        let mut sqe = SubmissionEntry::new(opcode, 0);
        sqe.nsid.set(nsid);
        sqe.cdw10.set(cdw10);
        sqe.cdw11.set(cdw11);
        self.command(sqe, &[], true, read)
    }

    fn io(
        &mut self,
        opcode: u8,
        nsid: u32,
        lba: u64,
        data: &[u8],
        in_capsule: bool,
        read: usize,
    ) -> Completion {
        let mut sqe = SubmissionEntry::new(opcode, 0);
        sqe.nsid.set(nsid);
        sqe.cdw10.set(lba as u32);
        sqe.cdw11.set((lba >> 32) as u32);
        let blocks = (data.len().max(read) / 512).max(1) as u32;
        sqe.cdw12.set(blocks - 1);
        self.command(sqe, data, in_capsule, read)
    }

    /// Admin Connect plus CC.EN; returns the controller ID.
    fn enable(&mut self, subnqn: &str, hostnqn: &str) -> u16 {
        let c = self.fabrics_connect(0, 0xffff, subnqn, hostnqn);
        assert_eq!(c.status, 0, "admin Connect");
        let cntlid = c.result as u16;
        let cc = 1 | 6 << 16 | 4 << 20;
        assert_eq!(self.property(true, 0x14, cc, false).status, 0);
        assert_eq!(
            self.property(false, 0x1c, 0, false).result & 1,
            1,
            "CSTS.RDY"
        );
        cntlid
    }

    /// Waits for a C2HTermReq and the close after it.
    fn expect_termination(&mut self) -> (u16, u32) {
        let raw = self.read_raw().expect("a C2HTermReq before the close");
        assert_eq!(raw[0], 0x03, "C2HTermReq");
        let fes = u16::from_le_bytes([raw[8], raw[9]]);
        let fei = u32::from_le_bytes([raw[10], raw[11], raw[12], raw[13]]);
        let mut rest = Vec::new();
        let _ = self.stream.read_to_end(&mut rest);
        assert!(rest.is_empty(), "nothing after the termination request");
        (fes, fei)
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[test]
fn session_with_and_without_digests() {
    let f = fixture("session");
    for (hd, dd) in [(false, false), (true, true), (true, false), (false, true)] {
        let mut admin = Host::connect(f.addr, hd, dd);
        let cntlid = admin.enable(SUBSYSTEM, HOST);
        let cap = admin.property(false, 0, 0, true);
        assert_eq!((cap.status, cap.result & 0xffff), (0, 127));
        assert_eq!(admin.property(false, 0x08, 0, false).result, 0x0001_0400);
        // An 8-byte read of a 4-byte property is refused.
        assert_ne!(admin.property(false, 0x08, 0, true).status, 0);

        let id = admin.admin(0x06, 0, 1, 0, 4096);
        assert_eq!(id.status, 0);
        assert_eq!(u16::from_le_bytes([id.data[78], id.data[79]]), cntlid);
        assert_eq!(id.data[111], 1, "I/O controller");
        assert!(id.data[768..].starts_with(SUBSYSTEM.as_bytes()));
        assert_eq!(
            u32::from_le_bytes(id.data[1792..1796].try_into().unwrap()),
            516
        );
        assert_ne!(u16::from_le_bytes([id.data[320], id.data[321]]), 0, "KAS");
        // ANA: reported in CMIC, one group, and MNAN to size the log by.
        assert_eq!(id.data[76] & (1 << 3), 1 << 3);
        assert_eq!(u32::from_le_bytes(id.data[348..352].try_into().unwrap()), 1);
        assert_eq!(
            u32::from_le_bytes(id.data[540..544].try_into().unwrap()),
            1024
        );

        let ns = admin.admin(0x06, 1, 0, 0, 4096);
        assert_eq!(u64::from_le_bytes(ns.data[..8].try_into().unwrap()), 8192);
        let list = admin.admin(0x06, 0, 2, 0, 4096);
        assert_eq!(&list.data[..12], &[1, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0]);
        let desc = admin.admin(0x06, 3, 3, 0, 4096);
        assert_eq!((desc.data[0], desc.data[1], desc.data[20]), (2, 16, 4));
        assert_eq!(admin.admin(0x06, 9, 3, 0, 4096).status & 0xff, 0x0b);
        let q = admin.admin(0x09, 0, 0x07, 3 | 3 << 16, 0);
        assert_eq!((q.status, q.result), (0, 3 | 3 << 16));
        assert_eq!(admin.admin(0x18, 0, 0, 0, 0).status, 0, "keep alive");
        // ANA log: one optimized group with NSIDs 1 and 3.
        let ana = admin.admin(0x02, 0, 0x0c | ((56 / 4 - 1) << 16), 0, 56);
        assert_eq!(ana.status, 0);
        assert_eq!(u16::from_le_bytes([ana.data[8], ana.data[9]]), 1);
        assert_eq!(u32::from_le_bytes(ana.data[20..24].try_into().unwrap()), 2);
        assert_eq!(ana.data[32], 1, "optimized");
        assert_eq!(&ana.data[48..56], &[1, 0, 0, 0, 3, 0, 0, 0]);

        let mut io = Host::connect(f.addr, hd, dd);
        let c = io.fabrics_connect(1, cntlid, SUBSYSTEM, HOST);
        assert_eq!(c.status, 0, "I/O Connect");
        // The same queue twice, and a controller that does not exist.
        let mut again = Host::connect(f.addr, hd, dd);
        assert_ne!(again.fabrics_connect(1, cntlid, SUBSYSTEM, HOST).status, 0);
        assert_ne!(
            again
                .fabrics_connect(2, cntlid + 100, SUBSYSTEM, HOST)
                .status,
            0
        );

        let small = pattern(4096, 1);
        let big = pattern(96 << 10, 2);
        assert_eq!(
            io.io(0x01, 1, 8, &small, true, 0).status,
            0,
            "in-capsule write"
        );
        assert_eq!(io.io(0x01, 1, 100, &big, false, 0).status, 0, "R2T write");
        assert_eq!(io.io(0x02, 1, 8, &[], false, 4096).data, small);
        assert_eq!(io.io(0x02, 1, 100, &[], false, 96 << 10).data, big);
        assert_eq!(io.io(0x00, 1, 0, &[], false, 0).status, 0, "flush");
        // Out of range, no such namespace, more than MDTS.
        assert_eq!(io.io(0x02, 1, 8191, &[], false, 1024).status & 0xff, 0x80);
        assert_eq!(io.io(0x02, 2, 0, &[], false, 512).status & 0xff, 0x0b);
        assert_ne!(io.io(0x02, 1, 0, &[], false, 256 << 10).status, 0);
        // Namespace 3 is another image.
        assert_eq!(io.io(0x02, 3, 8, &[], false, 4096).data, vec![0u8; 4096]);
        // Once its connection closes, queue 1 may be connected again.
        drop(io);
        let mut reconnected = false;
        for _ in 0..100 {
            let mut io = Host::connect(f.addr, hd, dd);
            if io.fabrics_connect(1, cntlid, SUBSYSTEM, HOST).status == 0 {
                assert_eq!(io.io(0x02, 1, 8, &[], false, 4096).data, small);
                reconnected = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            reconnected,
            "queue 1 stayed taken after its connection closed"
        );
        drop(again);
        drop(admin);
    }
}

#[test]
fn discovery_lists_only_what_the_host_may_reach() {
    let f = fixture("discovery");
    let port = f.addr.port().to_string();
    let mut d = Host::connect(f.addr, false, false);
    d.enable(DISCOVERY_NQN, HOST);
    let id = d.admin(0x06, 0, 1, 0, 4096);
    assert_eq!(id.data[111], 2, "discovery controller");
    let log = d.admin(0x02, 0, 0x70 | ((2048 / 4 - 1) << 16), 0, 2048);
    assert_eq!(log.status, 0);
    assert_eq!(u64::from_le_bytes(log.data[8..16].try_into().unwrap()), 1);
    let e = &log.data[1024..];
    assert_eq!((e[0], e[1], e[2]), (3, 1, 2), "TCP, IPv4, NVM subsystem");
    assert!(e[256..].starts_with(SUBSYSTEM.as_bytes()));
    assert_eq!(&e[32..32 + port.len() + 1], format!("{port}\0").as_bytes());
    assert!(e[512..].starts_with(b"127.0.0.1\0"));
    // The discovery controller has no I/O command set.
    assert_ne!(d.admin(0x06, 1, 0, 0, 4096).status, 0);

    let mut other = Host::connect(f.addr, false, false);
    other.enable(DISCOVERY_NQN, OTHER_HOST);
    let log = other.admin(0x02, 0, 0x70 | ((2048 / 4 - 1) << 16), 0, 2048);
    assert_eq!(u64::from_le_bytes(log.data[8..16].try_into().unwrap()), 1);
    assert!(log.data[1024 + 256..].starts_with(HIDDEN.as_bytes()));
}

#[test]
fn hosts_not_on_the_list_are_refused() {
    let f = fixture("refused");
    let mut h = Host::connect(f.addr, false, false);
    let c = h.fabrics_connect(0, 0xffff, SUBSYSTEM, OTHER_HOST);
    assert_eq!(c.status, 0x4184, "Connect Invalid Host, DNR");
    assert_eq!(c.result, 1 << 16 | 512, "IATTR data, IPO host NQN");
    assert_eq!(f.target.controller_count(), 0);
    // Unknown subsystem, malformed NQN, commands before Connect.
    assert_eq!(
        h.fabrics_connect(0, 0xffff, "nqn.2026-12.none", HOST)
            .status,
        0x4182
    );
    assert_eq!(
        h.fabrics_connect(0, 0xffff, "bogus", HOST).result,
        1 << 16 | 256
    );
    assert_eq!(h.admin(0x06, 0, 1, 0, 4096).status & 0xff, 0x0c);
    // An I/O queue of a controller that is not enabled yet.
    let c = h.fabrics_connect(0, 0xffff, SUBSYSTEM, HOST);
    assert_eq!(c.status, 0);
    let mut io = Host::connect(f.addr, false, false);
    assert_eq!(
        io.fabrics_connect(1, c.result as u16, SUBSYSTEM, HOST)
            .status
            & 0xff,
        0x0c
    );
}

#[test]
fn transport_errors_end_the_connection_with_the_right_fes() {
    let f = fixture("termreq");
    // A capsule before ICReq: PDU sequence error.
    let mut raw = TcpStream::connect(f.addr).expect("connect");
    let n = Negotiated::default();
    let sqe = SubmissionEntry::new(0x06, 1).to_bytes();
    let h = encode::capsule_cmd(&sqe, 0, &n).expect("capsule");
    raw.write_all(h.as_bytes()).expect("send");
    let mut h = Host {
        stream: raw,
        rx: Receiver::host(4096),
        negotiated: n,
        cid: 0,
    };
    assert_eq!(h.expect_termination(), (fes::SEQUENCE_ERROR, 0));

    // A wrong HLEN after initialization: invalid header field, FEI 2.
    let mut h = Host::connect(f.addr, false, false);
    let mut bytes = encode::capsule_cmd(&sqe, 0, &h.negotiated)
        .expect("capsule")
        .as_bytes()
        .to_vec();
    bytes[2] = 80;
    h.stream.write_all(&bytes).expect("send");
    assert_eq!(h.expect_termination(), (fes::INVALID_HEADER_FIELD, 2));

    // A header digest error.
    let mut h = Host::connect(f.addr, true, true);
    let mut bytes = encode::capsule_cmd(&sqe, 0, &h.negotiated)
        .expect("capsule")
        .as_bytes()
        .to_vec();
    bytes[9] ^= 0x40;
    h.stream.write_all(&bytes).expect("send");
    assert_eq!(h.expect_termination(), (fes::HEADER_DIGEST_ERROR, 0));

    // H2CData that answers no R2T.
    let mut h = Host::connect(f.addr, false, false);
    let d = encode::h2c_data(1, 77, 0, 512, true, &h.negotiated).expect("H2CData");
    let mut pdu = vec![0u8; d.plen()];
    encode::assemble(&mut pdu, &d, &[0u8; 512]).expect("assemble");
    h.stream.write_all(&pdu).expect("send");
    assert_eq!(h.expect_termination(), (fes::INVALID_HEADER_FIELD, 10));

    // More in-capsule data than IOCCSZ allows.
    let mut h = Host::connect(f.addr, false, false);
    let c = encode::capsule_cmd(&sqe, 8704, &h.negotiated).expect("capsule");
    let mut pdu = vec![0u8; c.plen()];
    encode::assemble(&mut pdu, &c, &[0u8; 8704]).expect("assemble");
    h.stream.write_all(&pdu).expect("send");
    assert_eq!(h.expect_termination(), (fes::DATA_LIMIT_EXCEEDED, 0));
}

#[test]
fn a_data_digest_error_fails_the_write_and_writes_nothing() {
    let f = fixture("ddgst");
    let mut admin = Host::connect(f.addr, true, true);
    let cntlid = admin.enable(SUBSYSTEM, HOST);
    let mut io = Host::connect(f.addr, true, true);
    assert_eq!(io.fabrics_connect(1, cntlid, SUBSYSTEM, HOST).status, 0);
    let old = pattern(4096, 9);
    assert_eq!(io.io(0x01, 1, 0, &old, true, 0).status, 0);
    // The same write with new data and a corrupted data digest.
    let mut sqe = SubmissionEntry::new(0x01, 500);
    sqe.nsid.set(1);
    sqe.cdw12.set(7);
    let mut b = sqe.to_bytes();
    b[32..36].copy_from_slice(&4096u32.to_le_bytes());
    b[39] = 0x01;
    let new = pattern(4096, 10);
    let h = encode::capsule_cmd(&b, new.len(), &io.negotiated).expect("capsule");
    let mut pdu = vec![0u8; h.plen()];
    encode::assemble(&mut pdu, &h, &new).expect("assemble");
    let last = pdu.len() - 1;
    pdu[last] ^= 1;
    io.stream.write_all(&pdu).expect("send");
    match io.read_pdu() {
        Some(Pdu::CapsuleResp(r)) => {
            let cqe = CompletionEntry::from_bytes(r.cqe);
            assert_eq!((cqe.command_id(), cqe.status().0), (500, 0x22));
        }
        other => panic!("no response: {other:?}"),
    }
    assert_eq!(
        io.io(0x02, 1, 0, &[], false, 4096).data,
        old,
        "nothing written"
    );
}

#[test]
fn keep_alive_timeout_tears_the_controller_down() {
    let f = fixture("kato");
    let mut admin = Host::connect(f.addr, false, false);
    admin.enable(SUBSYSTEM, HOST);
    // KATO 300 ms and then silence.
    assert_eq!(admin.admin(0x09, 0, 0x0f, 300, 0).status, 0);
    assert_eq!(f.target.controller_count(), 1);
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = admin.stream.read_to_end(&mut rest);
    assert!(rest.is_empty());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(f.target.controller_count(), 0);
}

/// Splitmix64 for the hostile streams.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[test]
fn hostile_streams_never_panic_a_connection() {
    let f = fixture("hostile");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    // Valid openings to mutate: ICReq, then Connect, then a write.
    let mut seed_stream = Vec::new();
    seed_stream.extend_from_slice(
        encode::ic_req(&IcReq {
            pfv: 0,
            hpda: 0,
            header_digest: false,
            data_digest: false,
            maxr2t: 0,
        })
        .as_bytes(),
    );
    let n = Negotiated::default();
    let mut connect = SubmissionEntry::new(FABRICS_OPCODE, 1);
    connect.nsid.set(1);
    connect.cdw11.set(31);
    let mut cb = connect.to_bytes();
    cb[32..36].copy_from_slice(&1024u32.to_le_bytes());
    cb[39] = 0x01;
    let mut data = vec![0u8; 1024];
    data[16..18].copy_from_slice(&0xffffu16.to_le_bytes());
    data[256..256 + SUBSYSTEM.len()].copy_from_slice(SUBSYSTEM.as_bytes());
    data[512..512 + HOST.len()].copy_from_slice(HOST.as_bytes());
    let h = encode::capsule_cmd(&cb, 1024, &n).expect("connect");
    let mut pdu = vec![0u8; h.plen()];
    encode::assemble(&mut pdu, &h, &data).expect("assemble");
    seed_stream.extend_from_slice(&pdu);
    let mut w = SubmissionEntry::new(0x01, 2);
    w.nsid.set(1);
    let mut wb = w.to_bytes();
    wb[32..36].copy_from_slice(&4096u32.to_le_bytes());
    wb[39] = 0x5a;
    seed_stream.extend_from_slice(encode::capsule_cmd(&wb, 0, &n).expect("write").as_bytes());
    let d = encode::h2c_data(2, 0, 0, 4096, true, &n).expect("H2CData");
    let mut pdu = vec![0u8; d.plen()];
    encode::assemble(&mut pdu, &d, &[0x5a; 4096]).expect("assemble");
    seed_stream.extend_from_slice(&pdu);

    let mut state = 42u64;
    let rounds = 600;
    for round in 0..rounds {
        let mut input = seed_stream.clone();
        let cut = (next(&mut state) % input.len() as u64) as usize;
        match round % 4 {
            0 => input.truncate(cut),
            1 => {
                for _ in 0..1 + next(&mut state) % 8 {
                    let at = (next(&mut state) % input.len() as u64) as usize;
                    input[at] = next(&mut state) as u8;
                }
            }
            2 => {
                for b in &mut input[cut..] {
                    *b = next(&mut state) as u8;
                }
            }
            _ => {
                let at = (next(&mut state) % 200) as usize;
                if at + 8 <= input.len() {
                    input[at + 4..at + 8].copy_from_slice(&(next(&mut state) as u32).to_le_bytes());
                }
            }
        }
        let mut client = TcpStream::connect(addr).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        let target = Arc::clone(&f.target);
        let port = f.target.ports()[0].id;
        let serving = std::thread::spawn(move || {
            connection::serve(&target, port, server, "hostile");
        });
        let _ = client.write_all(&input);
        let _ = client.shutdown(Shutdown::Write);
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut sink = Vec::new();
        let _ = client.read_to_end(&mut sink);
        drop(client);
        assert!(
            serving.join().is_ok(),
            "round {round}: the connection panicked"
        );
    }
    // The target still serves a clean session afterwards, and holds what
    // it is given.
    let mut admin = Host::connect(f.addr, false, false);
    let cntlid = admin.enable(SUBSYSTEM, HOST);
    let mut io = Host::connect(f.addr, false, false);
    assert_eq!(io.fabrics_connect(1, cntlid, SUBSYSTEM, HOST).status, 0);
    let data = pattern(8192, 77);
    assert_eq!(io.io(0x01, 1, 2048, &data, false, 0).status, 0);
    assert_eq!(io.io(0x02, 1, 2048, &[], false, 8192).data, data);
    let mut direct = vec![0u8; 8192];
    let ns: Arc<dyn Namespace> = f.target.subsystems()[0].namespaces()[&1].clone();
    ns.read_at(2048 * 512, &mut direct).expect("image read");
    assert_eq!(direct, data, "the image holds what the host wrote");
}

#[test]
fn an_exported_ssd_belongs_to_the_target() {
    use crate::namespace::FileNamespace;
    use crate::ownership::SsdOwnership;

    let dir = std::env::temp_dir().join(format!("dpuemu-nvmf-ssd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let _cleanup = TempDir(dir.clone());
    let media: Arc<dyn Namespace> =
        Arc::new(FileNamespace::open(&dir.join("ssd0.img"), Some(2 << 20)).expect("image"));
    let ownership = Arc::new(SsdOwnership::new());
    let ssds = vec![(media.clone(), ownership.clone())];
    let text = format!(
        "[port 1]\nservice 0\n[subsystem {SUBSYSTEM}]\nports 1\nallow-any-host\nnamespace 1 ssd 0\n"
    );
    let config = config::parse(&text).expect("config");
    let target = Target::start(&config, &ssds).expect("target");
    assert!(ownership.is_attached(), "the SSD is the target's");
    assert!(
        !ownership.host_enable(),
        "its own NVMe function may not enable"
    );
    // A second claim on the same SSD, and an SSD that does not exist.
    assert!(Target::start(&config, &ssds).is_err());
    let missing = text.replace("ssd 0", "ssd 1");
    assert!(Target::start(&config::parse(&missing).expect("config"), &ssds).is_err());
    // I/O through the target reaches the SSD image.
    let mut admin = Host::connect(target.ports()[0].address, false, false);
    let cntlid = admin.enable(SUBSYSTEM, OTHER_HOST);
    let mut io = Host::connect(target.ports()[0].address, false, false);
    assert_eq!(
        io.fabrics_connect(1, cntlid, SUBSYSTEM, OTHER_HOST).status,
        0
    );
    let data = pattern(4096, 3);
    assert_eq!(io.io(0x01, 1, 10, &data, true, 0).status, 0);
    let mut direct = vec![0u8; 4096];
    media.read_at(10 * 512, &mut direct).expect("read");
    assert_eq!(direct, data);
}

#[test]
fn a_remote_namespace_is_re_exported_through_the_initiator() {
    // The backend lets any host in, the initiator among them.
    let dir = std::env::temp_dir().join(format!("dpuemu-nvmf-gw-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let _cleanup = TempDir(dir.clone());
    let text = format!(
        "[port 1]\nservice 0\n[subsystem {SUBSYSTEM}]\nports 1\nallow-any-host\n\
         namespace 1 file {}/back.img 2M\n",
        dir.display()
    );
    let back = Target::start(&config::parse(&text).expect("config"), &[]).expect("backend");
    let gateway_text = format!(
        "[port 1]\nservice 0\n[subsystem nqn.2026-12.org.dpublk:gateway]\nports 1\nallow-any-host\n\
         namespace 1 remote {} {SUBSYSTEM} 1\n",
        back.ports()[0].address
    );
    let gateway =
        Target::start(&config::parse(&gateway_text).expect("config"), &[]).expect("gateway");
    let gw_ns = gateway.subsystems()[0].namespaces()[&1].clone();
    assert_eq!(gw_ns.size(), 2 << 20, "geometry read from the remote");
    // A host writes through the gateway: small (in-capsule at the remote),
    // large (R2T at the remote, split at MAXH2CDATA), and reads back.
    let gnqn = "nqn.2026-12.org.dpublk:gateway";
    let mut admin = Host::connect(gateway.ports()[0].address, true, true);
    let cntlid = admin.enable(gnqn, HOST);
    let mut io = Host::connect(gateway.ports()[0].address, true, true);
    assert_eq!(io.fabrics_connect(1, cntlid, gnqn, HOST).status, 0);
    let small = pattern(4096, 21);
    let big = pattern(128 << 10, 22);
    assert_eq!(io.io(0x01, 1, 0, &small, true, 0).status, 0);
    assert_eq!(io.io(0x01, 1, 1024, &big, false, 0).status, 0);
    assert_eq!(io.io(0x02, 1, 1024, &[], false, 128 << 10).data, big);
    assert_eq!(io.io(0x00, 1, 0, &[], false, 0).status, 0, "flush");
    // The data is in the backend's image.
    let back_ns = back.subsystems()[0].namespaces()[&1].clone();
    let mut direct = vec![0u8; 4096];
    back_ns.read_at(0, &mut direct).expect("read");
    assert_eq!(direct, small);
    let mut direct = vec![0u8; 128 << 10];
    back_ns.read_at(1024 * 512, &mut direct).expect("read");
    assert_eq!(direct, big);
    // A remote failure is an I/O error, not a hang or a panic.
    assert!(
        gw_ns.read_at(3 << 20, &mut [0u8; 512]).is_err(),
        "beyond the end"
    );
    // The backend drops the initiator's association: the command in
    // progress fails, the next one connects again and sees the data.
    back.remove_all_controllers();
    let mut again = vec![0u8; 4096];
    if gw_ns.read_at(0, &mut again).is_err() {
        gw_ns.read_at(0, &mut again).expect("reconnected");
    }
    assert_eq!(again, small);
    assert_eq!(back.controller_count(), 1, "one new association");
}
