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
//! Only the accelerator function is hostile; SSD functions are not. The
//! admin queue is left alone (Identify and vendor payloads are not
//! corrupted by this mode).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

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
}

impl Anomaly {
    /// Every kind, in the order of their counters.
    pub const ALL: [Anomaly; 9] = [
        Anomaly::WrongCid,
        Anomaly::StaleGeneration,
        Anomaly::Duplicate,
        Anomaly::WrongSqId,
        Anomaly::SqHead,
        Anomaly::Phase,
        Anomaly::Status,
        Anomaly::IrqStorm,
        Anomaly::NeverComplete,
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
        }
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
}

impl HostileSpec {
    /// Parses `RATE[:SEED[:KIND,KIND...]]`. Without KINDS every kind but
    /// `never-complete` is used (each costs the host two I/O timeouts).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = text.split(':');
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
        Ok(Self { rate, seed, kinds })
    }
}

/// The running hostile mode: settings, generator state and counters.
pub struct Hostile {
    spec: HostileSpec,
    state: AtomicU64,
    injected: [AtomicU64; 9],
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

    /// Whether this completion gets an anomaly, and which; counts it.
    pub fn draw(&self) -> Option<Anomaly> {
        if !self.next().is_multiple_of(self.spec.rate) {
            return None;
        }
        let kinds = &self.spec.kinds;
        let kind = *kinds.get((self.next() % kinds.len() as u64) as usize)?;
        let total = self.injected[kind.index()].fetch_add(1, Ordering::Relaxed) + 1;
        // One line each: tests count them in the log.
        log::info!("hostile: injected {} (#{total})", kind.name());
        Some(kind)
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

/// The process's hostile mode settings and state.
static HOSTILE: OnceLock<Hostile> = OnceLock::new();
/// Hostile mode is on: from the command line, or through the test hook.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Turns the hostile mode on with `spec` (once, from the command line).
pub fn configure(spec: HostileSpec) {
    let _ = HOSTILE.set(Hostile::new(spec));
    ACTIVE.store(true, Ordering::Release);
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
        assert_eq!((s.rate, s.seed, s.kinds.len()), (100, 1, 8));
        assert!(!s.kinds.contains(&Anomaly::NeverComplete));
        let s = HostileSpec::parse("5:42:duplicate,never-complete").unwrap();
        assert_eq!(s.seed, 42);
        assert_eq!(s.kinds, vec![Anomaly::Duplicate, Anomaly::NeverComplete]);
        for bad in ["", "0", "x", "5:y", "5:1:bogus", "5:1:duplicate:9"] {
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
        // Every enabled kind shows up.
        assert!(a
            .injected()
            .iter()
            .all(|&(k, n)| n > 0 || k == Anomaly::NeverComplete));
    }
}
