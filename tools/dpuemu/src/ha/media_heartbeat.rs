//! The heartbeat on the shared media: the tie-breaker of the UDP link.
//!
//! A node that owns the media also writes a small counter into its own
//! slot of every SSD, every interval. A passive node that hears nothing
//! over UDP for the timeout first looks at its peer's slot: if it moved
//! within the timeout, the peer is alive and serving and only the
//! heartbeat link is down, so it does not take over (which would fence a
//! healthy peer, then be fenced back: the nodes would alternate). A dead,
//! hung or frozen peer stops both heartbeats, and the takeover goes on.
//!
//! Each node reads the counter with its own clock (when it last saw it
//! change): the two nodes need no common time.
//!
//! The slots lie in the same 4 KiB as the fence record (see `fence.rs`),
//! which nothing but the pair writes: slot 0 (the node whose role is
//! active) at [`SLOT_OFFSET`], slot 1 (role passive) 512 bytes further.
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `DPUMEDHB` |
//! | 8 | 8 | counter |
//! | 16 | 24 | writer's node name (NUL padded) |
//! | 40 | 20 | reserved (0) |
//! | 60 | 4 | CRC32C of bytes 0..60 |

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::config::{Role, MAX_NODE};
use super::fence::{RECORD_BYTES, RECORD_OFFSET};

/// Slot 0, 1 KiB after the fence record.
pub const SLOT_OFFSET: u64 = RECORD_OFFSET + 1024;
/// Distance between the two slots.
const SLOT_STRIDE: u64 = 512;
pub const SLOT_BYTES: usize = 64;
const MAGIC: &[u8; 8] = b"DPUMEDHB";
const NAME_AT: usize = 16;
const CRC_AT: usize = SLOT_BYTES - 4;

const _: () = assert!(SLOT_OFFSET >= RECORD_OFFSET + RECORD_BYTES as u64);
const _: () = assert!(SLOT_OFFSET + SLOT_STRIDE + (SLOT_BYTES as u64) <= 64 << 10);
const _: () = assert!(NAME_AT + MAX_NODE < CRC_AT);

fn slot_offset(role: Role) -> u64 {
    match role {
        Role::Active => SLOT_OFFSET,
        Role::Passive => SLOT_OFFSET + SLOT_STRIDE,
    }
}

fn encode(counter: u64, node: &str) -> [u8; SLOT_BYTES] {
    let mut b = [0u8; SLOT_BYTES];
    b[0..8].copy_from_slice(MAGIC);
    b[8..16].copy_from_slice(&counter.to_le_bytes());
    let name = node.as_bytes();
    let n = name.len().min(MAX_NODE);
    b[NAME_AT..NAME_AT + n].copy_from_slice(&name[..n]);
    let crc = crc32c::crc32c(&b[..CRC_AT]);
    b[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
    b
}

/// The counter of a slot; `None` unless it is a valid slot.
fn decode(b: &[u8; SLOT_BYTES]) -> Option<u64> {
    let crc = u32::from_le_bytes([b[60], b[61], b[62], b[63]]);
    if &b[0..8] != MAGIC || crc != crc32c::crc32c(&b[..CRC_AT]) {
        return None;
    }
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[8..16]);
    Some(u64::from_le_bytes(v))
}

/// What a node last read of its peer's slots.
struct Seen {
    /// The counters (per SSD; `None`: not a valid slot).
    counters: Vec<Option<u64>>,
    /// When they were last seen to change.
    changed: Option<Instant>,
}

/// One node's side of the media heartbeat, over the pair's SSD images.
pub struct MediaHeartbeat {
    node: String,
    files: Vec<File>,
    own: u64,
    peer: u64,
    counter: AtomicU64,
    seen: Mutex<Seen>,
}

impl MediaHeartbeat {
    /// Opens the images at `paths` for a node whose role is `role` (which
    /// decides its slot; the peer's is the other one).
    pub fn open(node: &str, paths: &[PathBuf], role: Role) -> io::Result<Self> {
        let files = super::fence::open_images(paths)?;
        let own = slot_offset(role);
        let peer = slot_offset(match role {
            Role::Active => Role::Passive,
            Role::Passive => Role::Active,
        });
        Ok(Self {
            node: node.to_string(),
            files,
            own,
            peer,
            counter: AtomicU64::new(0),
            seen: Mutex::new(Seen {
                counters: Vec::new(),
                changed: None,
            }),
        })
    }

    /// Writes the next counter into this node's slot of every SSD. A
    /// failed write is logged by the caller at most once; the peer then
    /// sees this node as silent on that SSD, and on every SSD it could
    /// not write.
    pub fn beat(&self) -> io::Result<()> {
        let counter = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let slot = encode(counter, &self.node);
        let mut result = Ok(());
        for file in &self.files {
            if let Err(e) = file.write_all_at(&slot, self.own) {
                result = Err(e);
            }
        }
        result
    }

    /// Reads the peer's slots; call it every interval. Returns when they
    /// were last seen to change (a first look sees no change: it only
    /// sets what the next one compares with).
    pub fn observe(&self) -> Option<Instant> {
        let counters: Vec<Option<u64>> = self
            .files
            .iter()
            .map(|f| {
                let mut b = [0u8; SLOT_BYTES];
                f.read_exact_at(&mut b, self.peer).ok()?;
                decode(&b)
            })
            .collect();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if !seen.counters.is_empty() && seen.counters != counters {
            seen.changed = Some(Instant::now());
        }
        seen.counters = counters;
        seen.changed
    }

    /// Whether the peer's slots changed within `within`, as of the last
    /// [`MediaHeartbeat::observe`].
    pub fn peer_alive(&self, within: Duration) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.changed.is_some_and(|t| t.elapsed() < within)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::fence::tests::Images;

    #[test]
    fn slots_round_trip_and_damage_is_refused() {
        let b = encode(42, "dpu-a");
        assert_eq!(decode(&b), Some(42));
        for at in 0..SLOT_BYTES {
            let mut bad = b;
            bad[at] ^= 0x10;
            assert_eq!(decode(&bad), None, "byte {at}");
        }
        assert_eq!(decode(&[0u8; SLOT_BYTES]), None);
    }

    #[test]
    fn a_peer_is_alive_while_its_counter_moves() {
        let images = Images::new("media-heartbeat", 2);
        let a = MediaHeartbeat::open("dpu-a", &images.paths, Role::Active).unwrap();
        let b = MediaHeartbeat::open("dpu-b", &images.paths, Role::Passive).unwrap();
        let within = Duration::from_millis(200);
        // Nothing written yet, and a first look sees no change.
        assert_eq!(b.observe(), None);
        assert!(!b.peer_alive(within));
        a.beat().unwrap();
        assert!(b.observe().is_some());
        assert!(b.peer_alive(within));
        // A's slot is not B's: B's own beats do not make A look alive to
        // B, nor B alive to itself.
        assert_eq!(a.observe(), None);
        b.beat().unwrap();
        assert!(a.observe().is_some());
        // A stops: B sees the counter stand still and, after `within`,
        // the peer dead.
        std::thread::sleep(within);
        assert!(b.observe().is_some());
        assert!(!b.peer_alive(within));
        // The fence record is untouched by the slots.
        for path in &images.paths {
            let record = crate::ha::fence::read_record_at(path).unwrap();
            assert_eq!(record.map(|r| r.generation), Some(0));
        }
    }
}
