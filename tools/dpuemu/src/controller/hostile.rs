//! Hostile mode (`--hostile RATE[:SEED[:KINDS]]`, or bit 1 of the test-hook
//! register in configuration space, which turns it on and off at run time
//! with the command line's settings or, without them, one anomaly in
//! [`DEFAULT_RATE`] completions from seed 1): the accelerator breaks the
//! protocol on purpose, so the host driver's defences can be tested.
//!
//! When an I/O command's completion is posted, one in `RATE` gets an
//! anomaly, drawn from a seeded generator (the same seed gives the same
//! sequence of choices for the same command stream):
//!
//! - `wrong-cid`: an extra completion naming a tag that is not outstanding;
//! - `stale-generation`: an extra completion for the command's tag with the
//!   previous generation in its command ID;
//! - `duplicate`: the real completion posted twice;
//! - `wrong-sqid`: an extra completion naming another submission queue;
//! - `sq-head`: an extra completion with a submission queue head beyond the
//!   queue;
//! - `phase`: the next ring slot's phase tag flipped early over its stale
//!   contents;
//! - `status`: the real completion with a status code type the interface
//!   does not use;
//! - `irq-storm`: a burst of interrupts with nothing new posted;
//! - `never-complete`: the command is dropped and never completed.
//!
//! Admin data going to the host is corrupted too, one payload in
//! [`Hostile::payload_rate`] (admin payloads are far rarer than I/O
//! completions), with a value the interface does not allow, so a careful
//! host can tell (`payload.rs` says which field gets what):
//!
//! - `identify`: Identify Controller, Namespace or the active namespace
//!   list;
//! - `vendor-payload`: the SSD, volume and snapshot lists, Statistics,
//!   Service Get and the Maintenance log.
//!
//! Only the accelerator function is hostile; SSD functions are not.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

use nvme_shim::opcode::{admin, cns};
use nvme_shim::sqe::{GetLogPage, Identify, SubmissionEntry};
use nvme_shim::vendor::{self, maintenance, maintenance_state};

/// Anomaly rate when the test-hook register turns hostile mode on without
/// `--hostile`: one completion in this many.
pub const DEFAULT_RATE: u64 = 200;

/// One kind of anomaly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anomaly {
    WrongCid,
    StaleGeneration,
    Duplicate,
    WrongSqId,
    SqHead,
    Phase,
    Status,
    IrqStorm,
    NeverComplete,
    Identify,
    VendorPayload,
}

impl Anomaly {
    /// Every kind, in the order of their counters.
    pub const ALL: [Anomaly; 11] = [
        Anomaly::WrongCid,
        Anomaly::StaleGeneration,
        Anomaly::Duplicate,
        Anomaly::WrongSqId,
        Anomaly::SqHead,
        Anomaly::Phase,
        Anomaly::Status,
        Anomaly::IrqStorm,
        Anomaly::NeverComplete,
        Anomaly::Identify,
        Anomaly::VendorPayload,
    ];

    /// The name used on the command line and in the log.
    pub fn name(self) -> &'static str {
        match self {
            Anomaly::WrongCid => "wrong-cid",
            Anomaly::StaleGeneration => "stale-generation",
            Anomaly::Duplicate => "duplicate",
            Anomaly::WrongSqId => "wrong-sqid",
            Anomaly::SqHead => "sq-head",
            Anomaly::Phase => "phase",
            Anomaly::Status => "status",
            Anomaly::IrqStorm => "irq-storm",
            Anomaly::NeverComplete => "never-complete",
            Anomaly::Identify => "identify",
            Anomaly::VendorPayload => "vendor-payload",
        }
    }

    /// Whether the kind corrupts an admin payload rather than an I/O
    /// completion.
    pub fn is_payload(self) -> bool {
        matches!(self, Anomaly::Identify | Anomaly::VendorPayload)
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|&a| a == self).unwrap_or(0)
    }
}

/// The hostile mode's settings, from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostileSpec {
    /// One completion in `rate` gets an anomaly (at least 1).
    pub rate: u64,
    pub seed: u64,
    /// The kinds to draw from (never empty).
    pub kinds: Vec<Anomaly>,
    /// `@hook`: off until the test-hook register turns it on, so the host
    /// can bind and set up before the device turns hostile.
    pub by_hook: bool,
}

impl HostileSpec {
    /// Parses `RATE[:SEED[:KIND,KIND...]][@hook]`. Without KINDS every
    /// kind but `never-complete` is used (each costs the host two I/O
    /// timeouts).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (spec, by_hook) = match text.strip_suffix("@hook") {
            Some(spec) => (spec, true),
            None => (text, false),
        };
        let mut parts = spec.split(':');
        let rate: u64 = parts
            .next()
            .unwrap_or("")
            .parse()
            .ok()
            .filter(|&r| r > 0)
            .ok_or_else(|| format!("--hostile: rate must be a positive integer in '{text}'"))?;
        let seed: u64 = match parts.next() {
            Some(s) => s
                .parse()
                .map_err(|_| format!("--hostile: seed must be an integer in '{text}'"))?,
            None => 1,
        };
        let kinds = match parts.next() {
            Some(list) => list
                .split(',')
                .map(|name| {
                    Anomaly::ALL
                        .into_iter()
                        .find(|a| a.name() == name)
                        .ok_or_else(|| format!("--hostile: unknown anomaly '{name}'"))
                })
                .collect::<Result<Vec<_>, _>>()?,
            None => Anomaly::ALL
                .into_iter()
                .filter(|&a| a != Anomaly::NeverComplete)
                .collect(),
        };
        if parts.next().is_some() {
            return Err(format!("--hostile: too many fields in '{text}'"));
        }
        Ok(Self {
            rate,
            seed,
            kinds,
            by_hook,
        })
    }
}

/// The running hostile mode: settings, generator state and counters.
pub struct Hostile {
    spec: HostileSpec,
    state: AtomicU64,
    injected: [AtomicU64; 11],
}

impl Hostile {
    pub fn new(spec: HostileSpec) -> Self {
        Self {
            // xorshift needs a non-zero state.
            state: AtomicU64::new(spec.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1),
            spec,
            injected: Default::default(),
        }
    }

    fn next(&self) -> u64 {
        let mut x = self.state.load(Ordering::Relaxed);
        loop {
            let mut y = x;
            y ^= y << 13;
            y ^= y >> 7;
            y ^= y << 17;
            match self
                .state
                .compare_exchange_weak(x, y, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return y,
                Err(now) => x = now,
            }
        }
    }

    /// Whether this I/O completion gets an anomaly, and which; counts it.
    pub fn draw(&self) -> Option<Anomaly> {
        if !self.next().is_multiple_of(self.spec.rate) {
            return None;
        }
        self.pick(|k| !k.is_payload())
    }

    /// One admin payload in this many is corrupted: the I/O rate divided
    /// by 16 (admin payloads are rare), at least every second one.
    pub fn payload_rate(&self) -> u64 {
        (self.spec.rate / 16).max(2)
    }

    /// Whether an admin payload of kind `kind` (`identify` or
    /// `vendor-payload`) is corrupted this time; counts it.
    pub fn draw_payload(&self, kind: Anomaly) -> bool {
        if !self.spec.kinds.contains(&kind) || !self.next().is_multiple_of(self.payload_rate()) {
            return false;
        }
        self.count(kind);
        true
    }

    /// One of the enabled kinds that `class` accepts, counted.
    fn pick(&self, class: impl Fn(Anomaly) -> bool) -> Option<Anomaly> {
        let kinds: Vec<Anomaly> = self
            .spec
            .kinds
            .iter()
            .copied()
            .filter(|&k| class(k))
            .collect();
        if kinds.is_empty() {
            return None;
        }
        let kind = kinds[(self.next() % kinds.len() as u64) as usize];
        self.count(kind);
        Some(kind)
    }

    fn count(&self, kind: Anomaly) {
        let total = self.injected[kind.index()].fetch_add(1, Ordering::Relaxed) + 1;
        // One line each: tests count them in the log.
        log::info!("hostile: injected {} (#{total})", kind.name());
    }

    /// A random value for the anomaly's details.
    pub fn random(&self) -> u64 {
        self.next()
    }

    /// Anomalies injected so far, per kind.
    #[cfg(test)]
    pub fn injected(&self) -> Vec<(Anomaly, u64)> {
        Anomaly::ALL
            .into_iter()
            .map(|a| (a, self.injected[a.index()].load(Ordering::Relaxed)))
            .collect()
    }
}

impl Hostile {
    /// Corrupts `bytes`, the data of admin command `sqe` on its way to the
    /// host, if this payload draws an anomaly: returns the corrupted copy.
    /// Only payloads whose corruption the interface lets a host detect are
    /// chosen (see the module documentation); the corruption puts a value
    /// there that the interface does not allow.
    pub fn corrupt_payload(&self, sqe: &SubmissionEntry, bytes: &[u8]) -> Option<Vec<u8>> {
        let kind = payload_kind(sqe, bytes.len())?;
        if !self.draw_payload(kind) {
            return None;
        }
        let mut out = bytes.to_vec();
        corrupt(sqe, &mut out, self.random());
        Some(out)
    }
}

/// The anomaly kind that corrupts the payload of `sqe` (`len` bytes), if
/// it is one hostile mode corrupts.
fn payload_kind(sqe: &SubmissionEntry, len: usize) -> Option<Anomaly> {
    match sqe.opcode() {
        admin::IDENTIFY => match Identify::decode(sqe).cns {
            cns::CONTROLLER | cns::NAMESPACE | cns::ACTIVE_NAMESPACES => Some(Anomaly::Identify),
            _ => None,
        },
        admin::GET_LOG_PAGE => {
            let cmd = GetLogPage::decode(sqe);
            (cmd.lid == vendor::MAINTENANCE_LOG_ID
                && cmd.offset == 0
                && len == vendor::MAINTENANCE_LOG_BYTES)
                .then_some(Anomaly::VendorPayload)
        }
        vendor::opcode::SSD_LIST
        | vendor::opcode::VOLUME_LIST
        | vendor::opcode::SNAPSHOT_LIST
        | vendor::opcode::STATISTICS
        | vendor::opcode::SERVICE_GET => Some(Anomaly::VendorPayload),
        _ => None,
    }
}

/// Offsets in the payloads (`rust/nvme-shim`, Documentation/device-interface.rst).
const IDENTIFY_SQES: usize = 512;
const IDENTIFY_CQES: usize = 513;
const NS_NSZE: usize = 0;
const NS_FLBAS: usize = 26;
const NS_LBAF0: usize = 128;
const LIST_COUNT: usize = 0;
const LIST_ENTRY0: usize = 64;
const STATS_ARRAY_STATE: usize = 176;
const STATS_REBUILD_PERCENT: usize = 177;
const SERVICE_COMPRESSION: usize = 4;

/// Writes one value the interface does not allow into the payload of
/// `sqe`, chosen by `random`.
fn corrupt(sqe: &SubmissionEntry, out: &mut [u8], random: u64) {
    let choice = (random >> 8) % 4;
    match sqe.opcode() {
        admin::IDENTIFY => match Identify::decode(sqe).cns {
            // Required entry sizes larger than the interface's.
            cns::CONTROLLER if choice.is_multiple_of(2) => put(out, IDENTIFY_SQES, &[0x77]),
            cns::CONTROLLER => put(out, IDENTIFY_CQES, &[0x55]),
            cns::NAMESPACE => match choice {
                // A formatted format beyond NLBAF (0), metadata, extended
                // LBAs, or no blocks at all.
                0 => put(out, NS_FLBAS, &[1]),
                1 => put(out, NS_LBAF0, &8u16.to_le_bytes()),
                2 => put(out, NS_FLBAS, &[0x10]),
                _ => put(out, NS_NSZE, &0u64.to_le_bytes()),
            },
            // Not increasing: the first NSID again, or broadcast.
            _ => {
                let first = le_u32(out, 0);
                if first == 0 {
                    put(out, 0, &u32::MAX.to_le_bytes());
                } else {
                    put(out, 4, &first.to_le_bytes());
                }
            }
        },
        admin::GET_LOG_PAGE => match choice {
            // Scrub record: undefined state, progress past 100, more rows
            // done than exist; rebuild record: a scrub's action.
            0 => put(out, 5, &[9]),
            1 => put(out, 6, &[200]),
            2 => {
                let total = le_u64(out, 16);
                put(out, 8, &total.wrapping_add(1).to_le_bytes());
                put(out, 16, &total.to_le_bytes());
            }
            _ => {
                put(out, 64, &1u32.to_le_bytes());
                put(
                    out,
                    68,
                    &[maintenance::SCRUB_CHECK as u8, maintenance_state::DONE],
                );
            }
        },
        vendor::opcode::STATISTICS if choice.is_multiple_of(2) => put(out, STATS_ARRAY_STATE, &[9]),
        vendor::opcode::STATISTICS => put(out, STATS_REBUILD_PERCENT, &[200]),
        vendor::opcode::SERVICE_GET => put(out, SERVICE_COMPRESSION, &[7]),
        op => {
            let count = le_u32(out, LIST_COUNT);
            if count == 0 || choice == 0 {
                // More entries than a page holds.
                put(out, LIST_COUNT, &(64 + (random as u32 >> 16)).to_le_bytes());
                return;
            }
            let entry = LIST_ENTRY0;
            match op {
                // An undefined SSD state.
                vendor::opcode::SSD_LIST => put(out, entry + 2, &[7]),
                // An undefined layout, or a name without its NUL.
                vendor::opcode::VOLUME_LIST if choice == 1 => put(out, entry + 24, &[9]),
                vendor::opcode::VOLUME_LIST => put(out, entry + 32, &[b'Z'; 32]),
                // A name with a character names may not hold.
                _ => put(out, entry + 32, b"/"),
            }
        }
    }
}

/// Writes `value` at `at`, if the payload is that long.
fn put(out: &mut [u8], at: usize, value: &[u8]) {
    if let Some(dst) = out.get_mut(at..at + value.len()) {
        dst.copy_from_slice(value);
    }
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// The process's hostile mode settings and state.
static HOSTILE: OnceLock<Hostile> = OnceLock::new();
/// Hostile mode is on: from the command line, or through the test hook.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Turns the hostile mode on with `spec` (once, from the command line).
pub fn configure(spec: HostileSpec) {
    let active = !spec.by_hook;
    let _ = HOSTILE.set(Hostile::new(spec));
    ACTIVE.store(active, Ordering::Release);
}

/// Turns hostile mode on or off at run time (test-hook register); the
/// settings are the command line's, or the defaults.
pub fn set_active(active: bool) {
    if active {
        HOSTILE.get_or_init(|| {
            Hostile::new(HostileSpec {
                rate: DEFAULT_RATE,
                seed: 1,
                kinds: Anomaly::ALL
                    .into_iter()
                    .filter(|&a| a != Anomaly::NeverComplete)
                    .collect(),
                by_hook: true,
            })
        });
    }
    if ACTIVE.swap(active, Ordering::AcqRel) != active {
        log::warn!("hostile mode {}", if active { "on" } else { "off" });
    }
}

/// The hostile mode, if on.
pub fn hostile() -> Option<&'static Hostile> {
    if ACTIVE.load(Ordering::Acquire) {
        HOSTILE.get()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rate_seed_and_kinds() {
        let s = HostileSpec::parse("100").unwrap();
        assert_eq!((s.rate, s.seed, s.kinds.len()), (100, 1, 10));
        assert!(!s.kinds.contains(&Anomaly::NeverComplete));
        assert!(!s.by_hook);
        let s = HostileSpec::parse("5:42:duplicate,never-complete").unwrap();
        assert_eq!(s.seed, 42);
        assert_eq!(s.kinds, vec![Anomaly::Duplicate, Anomaly::NeverComplete]);
        let s = HostileSpec::parse("7:2:phase@hook").unwrap();
        assert_eq!(
            (s.rate, s.seed, s.kinds.clone(), s.by_hook),
            (7, 2, vec![Anomaly::Phase], true)
        );
        assert!(HostileSpec::parse("7@hook").unwrap().by_hook);
        for bad in [
            "",
            "0",
            "x",
            "5:y",
            "5:1:bogus",
            "5:1:duplicate:9",
            "5@hooks",
            "@hook",
        ] {
            assert!(HostileSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn same_seed_same_choices_and_rate_holds() {
        let spec = HostileSpec::parse("10:7").unwrap();
        let (a, b) = (Hostile::new(spec.clone()), Hostile::new(spec));
        let seq_a: Vec<_> = (0..10_000).map(|_| a.draw()).collect();
        let seq_b: Vec<_> = (0..10_000).map(|_| b.draw()).collect();
        assert_eq!(seq_a, seq_b);
        let hits = seq_a.iter().filter(|d| d.is_some()).count();
        assert!(
            (700..1300).contains(&hits),
            "{hits} anomalies in 10000 at 1/10"
        );
        let counted: u64 = a.injected().iter().map(|(_, n)| n).sum();
        assert_eq!(counted as usize, hits);
        // Every enabled completion kind shows up; payload kinds are drawn
        // only for payloads.
        assert!(a
            .injected()
            .iter()
            .all(|&(k, n)| (n > 0) != (k == Anomaly::NeverComplete || k.is_payload())));
    }

    #[test]
    fn payloads_are_drawn_at_their_own_rate() {
        let spec = HostileSpec::parse("64:3").unwrap();
        let h = Hostile::new(spec);
        assert_eq!(h.payload_rate(), 4);
        let hits = (0..4000)
            .filter(|_| h.draw_payload(Anomaly::VendorPayload))
            .count();
        assert!((800..1200).contains(&hits), "{hits} of 4000 at 1/4");
        let counted = h.injected();
        assert_eq!(
            counted[Anomaly::ALL.len() - 1],
            (Anomaly::VendorPayload, hits as u64)
        );
        // A kind left out of KINDS is never drawn.
        let h = Hostile::new(HostileSpec::parse("2:3:duplicate").unwrap());
        assert!((0..1000).all(|_| !h.draw_payload(Anomaly::Identify)));
        assert!(h.draw().is_none_or(|k| k == Anomaly::Duplicate));
    }

    #[test]
    fn every_payload_corruption_changes_something() {
        use nvme_shim::vendor::{maintenance_log_command, VolumeListEntry};
        use nvme_shim::wire::{c_string_field, Wire};
        let identify = |cns: u8| {
            Identify {
                cns,
                cntid: 0,
                nsid: 1,
                prp1: 0,
                prp2: 0,
            }
            .encode(0)
        };
        let mut ns = vec![0u8; 4096];
        ns[NS_NSZE] = 8;
        ns[NS_LBAF0 + 2] = 12;
        let mut list = vec![0u8; 4096];
        list[0] = 1;
        let mut entry = VolumeListEntry::zeroed();
        entry.lba_shift = 12;
        c_string_field(&mut entry.name, b"v");
        list[64..128].copy_from_slice(entry.as_bytes());
        let mut active = vec![0u8; 4096];
        active[0] = 1;
        let cases: Vec<(SubmissionEntry, Vec<u8>)> = vec![
            (identify(cns::CONTROLLER), vec![0x66; 4096]),
            (identify(cns::NAMESPACE), ns),
            (identify(cns::ACTIVE_NAMESPACES), active),
            (identify(cns::ACTIVE_NAMESPACES), vec![0; 4096]),
            (maintenance_log_command(1, 0), vec![0; 128]),
            (
                SubmissionEntry::new(vendor::opcode::STATISTICS, 0),
                vec![0; 512],
            ),
            (
                SubmissionEntry::new(vendor::opcode::SERVICE_GET, 0),
                vec![0; 64],
            ),
            (
                SubmissionEntry::new(vendor::opcode::VOLUME_LIST, 0),
                list.clone(),
            ),
            (
                SubmissionEntry::new(vendor::opcode::SSD_LIST, 0),
                list.clone(),
            ),
            (SubmissionEntry::new(vendor::opcode::SNAPSHOT_LIST, 0), list),
        ];
        for (sqe, payload) in cases {
            assert!(
                payload_kind(&sqe, payload.len()).is_some(),
                "{:#x}",
                sqe.opcode()
            );
            for choice in 0..4u64 {
                let mut out = payload.clone();
                corrupt(&sqe, &mut out, choice << 8);
                assert_ne!(out, payload, "opcode {:#x} choice {choice}", sqe.opcode());
            }
        }
        // Payloads the host could not check are left alone.
        let other = Identify {
            cns: cns::CONTROLLER_CSI,
            cntid: 0,
            nsid: 0,
            prp1: 0,
            prp2: 0,
        };
        assert!(payload_kind(&other.encode(0), 4096).is_none());
    }
}
