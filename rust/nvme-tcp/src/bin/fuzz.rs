//! Deterministic mutation fuzzer of the NVMe/TCP PDU parser.
//!
//! `nvme-tcp-fuzz [--inputs N] [--seed S]` builds a corpus of valid PDUs of
//! every type (with and without digests, with PDU data alignment), mutates
//! them (bit flips, boundary values in the length fields, truncation,
//! extension, splices, header digests recomputed so deeper checks are
//! reached) and feeds each result to the parser both as one PDU and as a
//! byte stream a connection reads (frame, read PLEN bytes, parse, ICReq
//! moves the stage on). It checks what a parse returns (slices inside the
//! input, PLEN within the receive buffer bound, a Fatal Error Status the
//! specification defines) and counts outcomes; the run fails if a panic
//! happens (the release profile aborts) or if the mutations never reached
//! a header length beyond the PDU, a data PDU before connection setup, a
//! header digest error or a data digest error.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant;

use nvme_tcp::encode::{self, HeaderBuf};
use nvme_tcp::header::COMMON_HEADER_BYTES;
use nvme_tcp::pdu::{IcReq, IcResp};
use nvme_tcp::receiver::DataDigest;
use nvme_tcp::{digest, Negotiated, Pdu, PduError, Receiver, Side, Stage};

/// splitmix64: small, seeded, reproducible.
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

/// The negotiations the corpus and receivers use.
const NEGOTIATIONS: [Negotiated; 4] = [
    Negotiated {
        header_digest: false,
        data_digest: false,
        receive_pda: 0,
        send_pda: 0,
    },
    Negotiated {
        header_digest: true,
        data_digest: true,
        receive_pda: 0,
        send_pda: 0,
    },
    Negotiated {
        header_digest: true,
        data_digest: false,
        receive_pda: 0,
        send_pda: 0,
    },
    Negotiated {
        header_digest: false,
        data_digest: true,
        receive_pda: 3,
        send_pda: 3,
    },
];

fn whole(h: &HeaderBuf, data: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; h.plen()];
    match encode::assemble(&mut out, h, data) {
        Some(_) => out,
        None => Vec::new(),
    }
}

/// Valid PDUs of every type under every negotiation.
fn corpus() -> Vec<Vec<u8>> {
    let mut c = Vec::new();
    let data: Vec<u8> = (0..600u32).map(|i| (i * 13) as u8).collect();
    c.push(whole(
        &encode::ic_req(&IcReq {
            pfv: 0,
            hpda: 0,
            header_digest: true,
            data_digest: true,
            maxr2t: 0,
        }),
        &[],
    ));
    c.push(whole(
        &encode::ic_resp(&IcResp {
            pfv: 0,
            cpda: 0,
            header_digest: false,
            data_digest: false,
            maxh2cdata: 4096,
        }),
        &[],
    ));
    c.push(whole(&encode::term_req(true, 1, 2, &[0x04, 0, 72]), &[]));
    c.push(whole(&encode::term_req(false, 3, 0, &[0u8; 128]), &[]));
    let sqe: [u8; 64] = core::array::from_fn(|i| i as u8);
    let cqe: [u8; 16] = core::array::from_fn(|i| 0x80 | i as u8);
    for n in &NEGOTIATIONS {
        for len in [0, 1, 512] {
            if let Ok(h) = encode::capsule_cmd(&sqe, len, n) {
                c.push(whole(&h, &data[..len]));
            }
        }
        c.push(whole(&encode::capsule_resp(&cqe, n), &[]));
        c.push(whole(&encode::r2t(1, 2, 0, 4096, n), &[]));
        for len in [1, 600] {
            if let Ok(h) = encode::h2c_data(1, 2, 512, len, true, n) {
                c.push(whole(&h, &data[..len]));
            }
            if let Ok(h) = encode::c2h_data(1, 0, len, true, true, n) {
                c.push(whole(&h, &data[..len]));
            }
        }
    }
    c
}

/// Receivers of every side and stage.
fn receivers() -> Vec<Receiver> {
    let mut r = vec![Receiver::controller(1024, 4096), Receiver::host(4096)];
    for n in NEGOTIATIONS {
        r.push(Receiver {
            stage: Stage::Ready(n),
            ..Receiver::controller(1024, 4096)
        });
        r.push(Receiver {
            stage: Stage::Ready(n),
            ..Receiver::host(4096)
        });
    }
    r
}

/// Values that sit on the boundaries of the length fields.
const EDGES: [u32; 16] = [
    0,
    1,
    7,
    8,
    23,
    24,
    27,
    28,
    71,
    72,
    76,
    128,
    152,
    255,
    0x7fff_ffff,
    u32::MAX,
];

fn mutate(rng: &mut Rng, corpus: &[Vec<u8>], input: &mut Vec<u8>) {
    input.clear();
    input.extend_from_slice(&corpus[rng.below(corpus.len())]);
    let rounds = 1 + rng.below(3);
    for _ in 0..rounds {
        let len = input.len();
        match rng.below(11) {
            0 if len > 0 => {
                let at = rng.below(len);
                input[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let at = rng.below(len);
                input[at] = rng.next() as u8;
            }
            // HLEN beyond the PDU (or any other boundary value).
            2 if len > 3 => input[2] = EDGES[rng.below(EDGES.len())] as u8,
            3 if len > 3 => input[3] = EDGES[rng.below(EDGES.len())] as u8,
            4 if len >= 8 => {
                let v = EDGES[rng.below(EDGES.len())].wrapping_add(rng.below(5) as u32);
                input[4..8].copy_from_slice(&v.to_le_bytes());
            }
            5 => input.truncate(rng.below(len + 1)),
            6 => {
                for _ in 0..rng.below(64) {
                    input.push(rng.next() as u8);
                }
            }
            // A splice: this PDU's head and another's tail.
            7 => {
                let other = &corpus[rng.below(corpus.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            8 if len > 1 => input[1] = rng.next() as u8 & 0x0f,
            // PDU type changed, header otherwise intact.
            9 if len > 0 => input[0] = rng.below(11) as u8,
            _ if len > 0 => {
                let at = rng.below(len);
                input[at] = 0xff;
            }
            _ => {}
        }
    }
    // Half the time, make the header digest right again so the checks
    // behind it run.
    if rng.below(2) == 0 && input.len() > 8 {
        let hlen = usize::from(input[2]);
        if input[1] & 1 != 0 && input.len() >= hlen + 4 && hlen >= 8 {
            let d = digest::crc32c(&input[..hlen]).to_le_bytes();
            input[hlen..hlen + 4].copy_from_slice(&d);
        }
    }
}

/// Tallies of what the parser said.
#[derive(Default)]
struct Outcomes {
    counts: BTreeMap<&'static str, u64>,
}

impl Outcomes {
    fn add(&mut self, what: &'static str) {
        *self.counts.entry(what).or_default() += 1;
    }

    fn get(&self, what: &str) -> u64 {
        self.counts.get(what).copied().unwrap_or(0)
    }
}

fn kind(e: &PduError, rx: &Receiver) -> &'static str {
    match e {
        PduError::HeaderLength { .. } => "header length",
        PduError::Sequence(_) if rx.stage == Stage::Initializing => "data before setup",
        PduError::Sequence(_) => "sequence",
        PduError::HeaderDigest { .. } => "header digest",
        PduError::PduLength { .. } | PduError::Truncated { .. } => "pdu length",
        PduError::DataOffset { .. } => "data offset",
        PduError::DataLimit { .. } => "data limit",
        PduError::DigestFlags { .. } | PduError::Flags { .. } => "flags",
        PduError::UnknownType(_) | PduError::WrongDirection(_) => "type",
        PduError::Field { .. } | PduError::Unsupported { .. } => "field",
    }
}

/// Checks one parse result; returns a description of a broken invariant.
fn check(input: &[u8], rx: &Receiver, out: &mut Outcomes) -> Result<(), String> {
    let range = input.as_ptr_range();
    let inside = |s: &[u8]| s.is_empty() || (range.contains(&s.as_ptr()) && s.len() <= input.len());
    match rx.parse(input) {
        Ok(r) => {
            out.add("accepted");
            if r.pdu_data_len() > input.len() {
                return Err("data longer than the PDU".into());
            }
            let slices_ok = match r.pdu {
                Pdu::CapsuleCmd(c) => inside(c.data) && inside(c.sqe),
                Pdu::CapsuleResp(c) => inside(c.cqe),
                Pdu::H2CData(d) => inside(d.data),
                Pdu::C2HData(d) => inside(d.data),
                Pdu::H2CTermReq(t) | Pdu::C2HTermReq(t) => inside(t.header_in_error),
                Pdu::IcReq(_) | Pdu::IcResp(_) | Pdu::R2T(_) => true,
            };
            if !slices_ok {
                return Err("a slice outside the input".into());
            }
            if let DataDigest::Invalid { .. } = r.data_digest {
                out.add("data digest");
            }
        }
        Err(e) => {
            if !(1..=6).contains(&e.fes()) {
                return Err(format!("FES {} for {e}", e.fes()));
            }
            out.add(kind(&e, rx));
        }
    }
    Ok(())
}

/// The input as a stream, read the way a connection reads it.
fn stream(input: &[u8], side: Side, out: &mut Outcomes) -> Result<(), String> {
    let mut rx = match side {
        Side::Controller => Receiver::controller(1024, 4096),
        Side::Host => Receiver::host(4096),
    };
    let mut at = 0;
    while let Some(ch) = input
        .get(at..at + COMMON_HEADER_BYTES)
        .and_then(|s| <&[u8; COMMON_HEADER_BYTES]>::try_from(s).ok())
    {
        let layout = match rx.frame(ch) {
            Ok(l) => l,
            Err(_) => return Ok(()),
        };
        if layout.plen() > rx.max_plen() {
            return Err(format!("PLEN {} past the buffer bound", layout.plen()));
        }
        let Some(pdu) = input.get(at..at + layout.plen()) else {
            return Ok(());
        };
        match rx.parse(pdu) {
            Ok(r) => {
                out.add("stream pdu");
                match r.pdu {
                    Pdu::IcReq(req) => rx.stage = Stage::Ready(Negotiated::for_controller(&req, 0)),
                    Pdu::IcResp(resp) => rx.stage = Stage::Ready(Negotiated::for_host(&resp, 0)),
                    Pdu::H2CTermReq(_) | Pdu::C2HTermReq(_) => return Ok(()),
                    _ => {}
                }
            }
            Err(_) => return Ok(()),
        }
        at += layout.plen();
    }
    Ok(())
}

trait DataLen {
    fn pdu_data_len(&self) -> usize;
}

impl DataLen for nvme_tcp::Received<'_> {
    fn pdu_data_len(&self) -> usize {
        match self.pdu {
            Pdu::CapsuleCmd(c) => c.data.len(),
            Pdu::H2CData(d) => d.data.len(),
            Pdu::C2HData(d) => d.data.len(),
            _ => 0,
        }
    }
}

/// A receiver; three times in four one of the side the PDU type is for,
/// so most inputs get past the direction check.
fn pick_receiver<'a>(rng: &mut Rng, receivers: &'a [Receiver], input: &[u8]) -> &'a Receiver {
    let any = &receivers[rng.below(receivers.len())];
    let for_host = input
        .first()
        .and_then(|&t| nvme_tcp::PduType::from_u8(t))
        .map(|t| t.from_host());
    match for_host {
        Some(from_host) if rng.below(4) != 0 => {
            let side = if from_host {
                Side::Controller
            } else {
                Side::Host
            };
            let fitting: Vec<&Receiver> = receivers.iter().filter(|r| r.side == side).collect();
            fitting[rng.below(fitting.len())]
        }
        _ => any,
    }
}

/// Runs `inputs` mutated inputs from `seed`; returns the outcome tallies.
fn run(inputs: u64, seed: u64) -> Result<Outcomes, String> {
    let corpus = corpus();
    let receivers = receivers();
    let mut out = Outcomes::default();
    // The unmutated corpus parses somewhere: the fuzzer starts from valid
    // PDUs, not from noise.
    for pdu in &corpus {
        if !receivers.iter().any(|rx| rx.parse(pdu).is_ok()) {
            return Err(format!("corpus entry {:02x?} parses nowhere", &pdu[..8]));
        }
    }
    let mut rng = Rng(seed);
    let mut input = Vec::with_capacity(2048);
    let mut streamed = Vec::with_capacity(4096);
    for i in 0..inputs {
        mutate(&mut rng, &corpus, &mut input);
        let rx = pick_receiver(&mut rng, &receivers, &input);
        check(&input, rx, &mut out).map_err(|e| format!("input {i} (seed {seed}): {e}"))?;
        // Every 8th input also runs as a stream: a valid ICReq or ICResp,
        // then the mutated bytes, then another valid PDU.
        if i % 8 == 0 {
            streamed.clear();
            let side = if rng.below(2) == 0 {
                Side::Controller
            } else {
                Side::Host
            };
            if rng.below(2) == 0 {
                streamed.extend_from_slice(&corpus[usize::from(side == Side::Host)]);
            }
            streamed.extend_from_slice(&input);
            streamed.extend_from_slice(&corpus[rng.below(corpus.len())]);
            stream(&streamed, side, &mut out)
                .map_err(|e| format!("stream {i} (seed {seed}): {e}"))?;
        }
    }
    Ok(out)
}

fn main() -> ExitCode {
    let mut inputs = 10_000_000u64;
    let mut seed = 1u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = args.next().and_then(|v| v.parse::<u64>().ok());
        match (a.as_str(), value) {
            ("--inputs", Some(v)) => inputs = v,
            ("--seed", Some(v)) => seed = v,
            _ => {
                eprintln!("usage: nvme-tcp-fuzz [--inputs N] [--seed S]");
                return ExitCode::from(2);
            }
        }
    }
    let start = Instant::now();
    let out = match run(inputs, seed) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("nvme-tcp-fuzz: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "nvme-tcp-fuzz: {inputs} inputs, seed {seed}, {:.1} s, no panic",
        start.elapsed().as_secs_f64()
    );
    for (what, n) in &out.counts {
        println!("  {what:<18} {n}");
    }
    let missing = missing(&out);
    if !missing.is_empty() {
        eprintln!("nvme-tcp-fuzz: never reached: {}", missing.join(", "));
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// The cases the issue names that a run must reach.
fn missing(out: &Outcomes) -> Vec<&'static str> {
    [
        "header length",
        "data before setup",
        "header digest",
        "data digest",
        "accepted",
        "stream pdu",
    ]
    .into_iter()
    .filter(|k| out.get(k) == 0)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_run_reaches_every_named_case() {
        let out = run(200_000, 7).expect("no broken invariant");
        assert!(missing(&out).is_empty(), "missed {:?}", missing(&out));
        let total: u64 = out
            .counts
            .iter()
            .filter(|(k, _)| **k != "stream pdu" && **k != "data digest")
            .map(|(_, n)| n)
            .sum();
        assert_eq!(total, 200_000, "every input has one outcome");
    }

    #[test]
    fn runs_are_reproducible() {
        let a = run(20_000, 3).expect("run a");
        let b = run(20_000, 3).expect("run b");
        assert_eq!(a.counts, b.counts);
    }
}
