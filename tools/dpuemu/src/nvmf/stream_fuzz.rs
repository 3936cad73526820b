//! Seeded mutation fuzzing of whole connections: valid sessions (admin,
//! I/O with in-capsule and R2T data, discovery; with and without digests)
//! are mutated and fed to the connection code through an in-memory link.
//! The checks: no panic, and everything the target sends back is a valid
//! stream of controller PDUs (ICResp first, a C2HTermReq only last, with a
//! defined FES). `NVMF_STREAM_FUZZ=N` sets the number of streams (`make
//! fuzz-nvmf` runs many more than the default).

use std::collections::BTreeMap;
use std::io::{self, Cursor, Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};

use nvme_shim::sqe::SubmissionEntry;
use nvme_tcp::encode;
use nvme_tcp::header::COMMON_HEADER_BYTES;
use nvme_tcp::pdu::IcReq;
use nvme_tcp::{digest, Negotiated, Pdu, Receiver, Stage};

use super::config;
use super::connection::{serve_link, Link, FABRICS_OPCODE};
use super::target::{Closer, Target};

const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-00000000f022";
const SUBSYSTEM: &str = "nqn.2026-12.org.dpublk:fuzz";

/// A connection whose bytes come from a buffer and go to another.
struct Replay {
    input: Cursor<Vec<u8>>,
    output: Vec<u8>,
}

impl Read for Replay {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Replay {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Link for &mut Replay {
    fn closer(&self) -> io::Result<Closer> {
        Ok(Closer::none())
    }

    fn connected(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn close(&mut self) {}
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A session as a list of PDUs.
type Session = Vec<Vec<u8>>;

fn pdu(h: &encode::HeaderBuf, data: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; h.plen()];
    let _ = encode::assemble(&mut out, h, data);
    out
}

fn capsule(n: &Negotiated, mut sqe: SubmissionEntry, data: &[u8], sgl: u8, len: u32) -> Vec<u8> {
    let mut b = sqe.to_bytes();
    b[32..36].copy_from_slice(&len.to_le_bytes());
    b[39] = sgl;
    sqe = SubmissionEntry::from_bytes(&b);
    match encode::capsule_cmd(&sqe.to_bytes(), data.len(), n) {
        Ok(h) => pdu(&h, data),
        Err(_) => Vec::new(),
    }
}

fn connect_data(subnqn: &str) -> Vec<u8> {
    let mut d = vec![0u8; 1024];
    d[..16].copy_from_slice(&[7u8; 16]);
    d[16..18].copy_from_slice(&0xffffu16.to_le_bytes());
    d[256..256 + subnqn.len()].copy_from_slice(subnqn.as_bytes());
    d[512..512 + HOST.len()].copy_from_slice(HOST.as_bytes());
    d
}

/// Valid sessions: admin, I/O (of controller `cntlid`), discovery; each
/// with no digests and with both.
fn sessions(cntlid: u16) -> Vec<Session> {
    let mut all = Vec::new();
    for (hd, dd) in [(false, false), (true, true)] {
        let n = Negotiated {
            header_digest: hd,
            data_digest: dd,
            receive_pda: 0,
            send_pda: 0,
        };
        let ic = pdu(
            &encode::ic_req(&IcReq {
                pfv: 0,
                hpda: 0,
                header_digest: hd,
                data_digest: dd,
                maxr2t: 0,
            }),
            &[],
        );
        let fabrics = |cid: u16, fctype: u32, cdw10: u32, cdw11: u32, cdw12: u32| {
            let mut s = SubmissionEntry::new(FABRICS_OPCODE, cid);
            s.nsid.set(fctype);
            s.cdw10.set(cdw10);
            s.cdw11.set(cdw11);
            s.cdw12.set(cdw12);
            s
        };
        let admin = |cid: u16, opcode: u8, nsid: u32, cdw10: u32| {
            let mut s = SubmissionEntry::new(opcode, cid);
            s.nsid.set(nsid);
            s.cdw10.set(cdw10);
            s
        };
        // Admin session.
        all.push(vec![
            ic.clone(),
            capsule(
                &n,
                fabrics(1, 1, 0, 31, 0),
                &connect_data(SUBSYSTEM),
                0x01,
                1024,
            ),
            capsule(
                &n,
                fabrics(2, 0, 0, 0x14, 1 | 6 << 16 | 4 << 20),
                &[],
                0x5a,
                0,
            ),
            capsule(&n, fabrics(3, 4, 1, 0, 0), &[], 0x5a, 0),
            capsule(&n, admin(4, 0x06, 0, 1), &[], 0x5a, 4096),
            capsule(&n, admin(5, 0x06, 1, 0), &[], 0x5a, 4096),
            capsule(&n, admin(6, 0x02, 0, 0x0c | 15 << 16), &[], 0x5a, 64),
            capsule(&n, admin(7, 0x09, 0, 0x07), &[], 0x5a, 0),
            capsule(&n, admin(8, 0x18, 0, 0), &[], 0x5a, 0),
            capsule(&n, admin(9, 0x0c, 0, 0), &[], 0x5a, 0),
        ]);
        // I/O session: in-capsule write, R2T write, read, flush.
        let mut io_connect = connect_data(SUBSYSTEM);
        io_connect[16..18].copy_from_slice(&cntlid.to_le_bytes());
        let write = |cid: u16, lba: u32, blocks: u32| {
            let mut s = SubmissionEntry::new(0x01, cid);
            s.nsid.set(1);
            s.cdw10.set(lba);
            s.cdw12.set(blocks - 1);
            s
        };
        let mut read = SubmissionEntry::new(0x02, 13);
        read.nsid.set(1);
        read.cdw10.set(16);
        read.cdw12.set(7);
        let mut flush = SubmissionEntry::new(0x00, 14);
        flush.nsid.set(1);
        let data: Vec<u8> = (0..8192u32).map(|i| (i * 7) as u8).collect();
        let h2c = encode::h2c_data(12, 0, 0, 8192, true, &n)
            .map(|h| pdu(&h, &data))
            .unwrap_or_default();
        all.push(vec![
            ic.clone(),
            capsule(&n, fabrics(10, 1, 1 << 16, 127, 0), &io_connect, 0x01, 1024),
            capsule(&n, write(11, 8, 8), &data[..4096], 0x01, 4096),
            capsule(&n, write(12, 16, 16), &[], 0x5a, 8192),
            h2c,
            capsule(&n, read, &[], 0x5a, 4096),
            capsule(&n, flush, &[], 0x5a, 0),
        ]);
        // Discovery session.
        all.push(vec![
            ic,
            capsule(
                &n,
                fabrics(20, 1, 0, 31, 0),
                &connect_data(config::DISCOVERY_NQN),
                0x01,
                1024,
            ),
            capsule(&n, fabrics(21, 0, 0, 0x14, 1), &[], 0x5a, 0),
            capsule(&n, admin(22, 0x02, 0, 0x70 | 511 << 16), &[], 0x5a, 2048),
        ]);
    }
    all
}

/// Recomputes the header digest of a PDU whose flags say it has one.
fn fix_header_digest(p: &mut [u8]) {
    if p.len() < 8 || p[1] & 1 == 0 {
        return;
    }
    let hlen = usize::from(p[2]);
    if hlen >= 8 && p.len() >= hlen + 4 {
        let d = digest::crc32c(&p[..hlen]).to_le_bytes();
        p[hlen..hlen + 4].copy_from_slice(&d);
    }
}

fn mutate(rng: &mut Rng, session: &Session) -> Vec<u8> {
    let mut pdus = session.clone();
    for _ in 0..1 + rng.below(3) {
        let i = rng.below(pdus.len());
        match rng.below(9) {
            0 => {
                let p = &mut pdus[i];
                if !p.is_empty() {
                    let at = rng.below(p.len());
                    p[at] ^= 1 << rng.below(8);
                }
            }
            1 => {
                let p = &mut pdus[i];
                if !p.is_empty() {
                    let at = rng.below(p.len().min(80));
                    p[at] = rng.next() as u8;
                }
            }
            2 => {
                let p = &mut pdus[i];
                if p.len() >= 8 {
                    let v = match rng.below(4) {
                        0 => rng.next() as u32,
                        1 => p.len() as u32 + 1 + rng.below(64) as u32,
                        2 => rng.below(200) as u32,
                        _ => u32::MAX,
                    };
                    p[4..8].copy_from_slice(&v.to_le_bytes());
                }
            }
            3 => {
                let p = &mut pdus[i];
                if p.len() >= 4 {
                    p[2 + rng.below(2)] = rng.next() as u8;
                }
            }
            4 => {
                let cut = rng.below(pdus[i].len() + 1);
                pdus[i].truncate(cut);
            }
            5 => {
                let copy = pdus[i].clone();
                pdus.insert(rng.below(pdus.len() + 1), copy);
            }
            6 if pdus.len() > 1 => {
                pdus.remove(i);
            }
            7 => {
                let j = rng.below(pdus.len());
                pdus.swap(i, j);
            }
            _ => {
                let tail: Vec<u8> = (0..rng.below(300)).map(|_| rng.next() as u8).collect();
                pdus.push(tail);
            }
        }
    }
    if rng.below(2) == 0 {
        for p in &mut pdus {
            fix_header_digest(p);
        }
    }
    pdus.concat()
}

/// The HPDA the stream's ICReq asked for, if it starts with a valid one.
fn requested_hpda(input: &[u8]) -> u8 {
    let rx = Receiver::controller(8192, 1 << 17);
    match input.get(..128).map(|b| rx.parse(b)) {
        Some(Ok(r)) => match r.pdu {
            Pdu::IcReq(req) => req.hpda,
            _ => 0,
        },
        _ => 0,
    }
}

/// What the target sent back, checked as a host that asked for `hpda`
/// would read it. Returns the FES of a termination request and the
/// completions seen.
fn check_output(out: &[u8], hpda: u8) -> Result<(Option<u16>, usize), String> {
    let mut rx = Receiver::host(1 << 20);
    let mut at = 0;
    let mut completions = 0;
    let mut first = true;
    while at < out.len() {
        let ch: &[u8; COMMON_HEADER_BYTES] = out
            .get(at..at + COMMON_HEADER_BYTES)
            .and_then(|s| s.try_into().ok())
            .ok_or("a partial common header")?;
        let layout = rx.frame(ch).map_err(|e| format!("target sent {e}"))?;
        let bytes = out.get(at..at + layout.plen()).ok_or("a partial PDU")?;
        let r = rx.parse(bytes).map_err(|e| format!("target sent {e}"))?;
        at += layout.plen();
        match r.pdu {
            Pdu::IcResp(resp) if first => {
                rx.stage = Stage::Ready(Negotiated::for_host(&resp, hpda))
            }
            Pdu::C2HTermReq(t) => {
                if at != out.len() {
                    return Err("PDUs after a C2HTermReq".into());
                }
                return Ok((Some(t.fes), completions));
            }
            Pdu::CapsuleResp(_) => completions += 1,
            Pdu::C2HData(_) | Pdu::R2T(_) => {}
            other if first => return Err(format!("first PDU {other:?}, not ICResp")),
            other => return Err(format!("unexpected {other:?}")),
        }
        first = false;
    }
    Ok((None, completions))
}

/// Runs `count` mutated streams; returns the tallies.
fn run(count: usize, seed: u64) -> BTreeMap<String, usize> {
    let dir = std::env::temp_dir().join(format!("dpuemu-nvmf-fuzz-{}-{seed}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let text = format!(
        "[port 1]\naddress 127.0.0.1\nservice 0\n[subsystem {SUBSYSTEM}]\nports 1\nhost {HOST}\nnamespace 1 file {}/ns.img 1M\n",
        dir.display()
    );
    let target = Target::start(&config::parse(&text).expect("config"), &[]).expect("target");
    let subsystem = target.subsystems()[0].clone();
    let ctrl = target
        .create_controller(Some(subsystem), HOST, [7u8; 16], 1, 0)
        .expect("controller");
    ctrl.set_cc(1, false);
    let sessions = sessions(ctrl.cntlid);
    let mut tally = BTreeMap::new();
    // The unmutated sessions complete every command they send.
    for s in &sessions {
        let mut link = Replay {
            input: Cursor::new(s.concat()),
            output: Vec::new(),
        };
        serve_link(&target, 1, &mut link, "fuzz");
        let (fes, done) = check_output(&link.output, 0).expect("clean session output");
        assert_eq!(fes, None, "a clean session was terminated");
        assert!(done >= 3, "a clean session completed only {done} commands");
    }
    let mut rng = Rng(seed);
    for i in 0..count {
        let session = &sessions[rng.below(sessions.len())];
        let input = mutate(&mut rng, session);
        let hpda = requested_hpda(&input);
        let mut link = Replay {
            input: Cursor::new(input),
            output: Vec::new(),
        };
        let served = catch_unwind(AssertUnwindSafe(|| {
            serve_link(&target, 1, &mut link, "fuzz")
        }));
        assert!(
            served.is_ok(),
            "stream {i} (seed {seed}) panicked the connection"
        );
        match check_output(&link.output, hpda) {
            Ok((Some(fes), _)) => *tally.entry(format!("terminated, FES {fes}")).or_default() += 1,
            Ok((None, done)) => {
                *tally.entry("closed by the host".into()).or_default() += 1;
                *tally.entry("commands completed".into()).or_default() += done;
            }
            Err(e) => panic!("stream {i} (seed {seed}): {e}"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    tally
}

#[test]
fn mutated_sessions_never_panic_and_get_valid_answers() {
    let count = std::env::var("NVMF_STREAM_FUZZ")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let seed = std::env::var("NVMF_STREAM_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let start = std::time::Instant::now();
    let tally = run(count, seed);
    println!(
        "{count} streams (seed {seed}) in {:.1} s: {tally:?}",
        start.elapsed().as_secs_f64()
    );
    for fes in [1, 2, 3] {
        assert!(
            tally.contains_key(&format!("terminated, FES {fes}")),
            "no stream reached FES {fes}: {tally:?}"
        );
    }
    assert!(tally.get("commands completed").copied().unwrap_or(0) > count);
}
