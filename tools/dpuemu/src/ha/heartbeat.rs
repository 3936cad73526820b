//! The heartbeat datagram the two nodes send each other over UDP. Every
//! byte is untrusted: a datagram that is not exactly one well-formed,
//! checksummed heartbeat is dropped.
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `DPUHA\0\0\x01` |
//! | 8 | 1 | state ([`NodeState`]) |
//! | 9 | 7 | reserved (0) |
//! | 16 | 8 | fence generation the sender holds (0: none) |
//! | 24 | 8 | sequence number |
//! | 32 | 24 | sender's node name (NUL padded) |
//! | 56 | 4 | reserved (0) |
//! | 60 | 4 | CRC32C of bytes 0..60 |

use super::config::MAX_NODE;

pub const HEARTBEAT_BYTES: usize = 64;
const MAGIC: &[u8; 8] = b"DPUHA\0\0\x01";
const NAME_AT: usize = 32;
const NAME_BYTES: usize = 24;
const CRC_AT: usize = HEARTBEAT_BYTES - 4;

/// A node's state, as the status file and the heartbeat name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// Not serving; watching the peer, ready to take over.
    Passive,
    /// Fencing the SSDs and opening the volumes.
    TakingOver,
    /// Holding the fence and serving.
    Active,
    /// Orderly handover: stopped serving, flushed, fence released; the
    /// peer takes over at once.
    HandingOver,
    /// Found the media fenced by the peer: stopped serving.
    Fenced,
}

impl NodeState {
    pub fn code(self) -> u8 {
        match self {
            Self::Passive => 0,
            Self::TakingOver => 1,
            Self::Active => 2,
            Self::HandingOver => 3,
            Self::Fenced => 4,
        }
    }

    pub fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            0 => Self::Passive,
            1 => Self::TakingOver,
            2 => Self::Active,
            3 => Self::HandingOver,
            4 => Self::Fenced,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Passive => "passive",
            Self::TakingOver => "taking-over",
            Self::Active => "active",
            Self::HandingOver => "handing-over",
            Self::Fenced => "fenced",
        }
    }

    /// Whether a node in this state owns (or is taking) the media: its
    /// peer must not take over while it hears it.
    pub fn owns_media(self) -> bool {
        matches!(self, Self::TakingOver | Self::Active)
    }
}

/// One heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    pub state: NodeState,
    pub generation: u64,
    pub sequence: u64,
    pub node: String,
}

impl Heartbeat {
    pub fn encode(&self) -> [u8; HEARTBEAT_BYTES] {
        let mut b = [0u8; HEARTBEAT_BYTES];
        b[0..8].copy_from_slice(MAGIC);
        b[8] = self.state.code();
        b[16..24].copy_from_slice(&self.generation.to_le_bytes());
        b[24..32].copy_from_slice(&self.sequence.to_le_bytes());
        let name = self.node.as_bytes();
        let n = name.len().min(MAX_NODE);
        b[NAME_AT..NAME_AT + n].copy_from_slice(&name[..n]);
        let crc = crc32c::crc32c(&b[..CRC_AT]);
        b[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a datagram; `None` unless it is exactly a valid heartbeat.
    pub fn decode(b: &[u8]) -> Option<Self> {
        let b: &[u8; HEARTBEAT_BYTES] = b.try_into().ok()?;
        let crc = u32::from_le_bytes([b[60], b[61], b[62], b[63]]);
        if &b[0..8] != MAGIC || crc != crc32c::crc32c(&b[..CRC_AT]) {
            return None;
        }
        if b[9..16].iter().chain(&b[56..60]).any(|&x| x != 0) {
            return None;
        }
        let state = NodeState::from_code(b[8])?;
        let le64 = |at: usize| {
            let mut v = [0u8; 8];
            v.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(v)
        };
        let name = &b[NAME_AT..NAME_AT + NAME_BYTES];
        let end = name.iter().position(|&c| c == 0)?;
        if end == 0 || name[end..].iter().any(|&c| c != 0) {
            return None;
        }
        let node = std::str::from_utf8(&name[..end]).ok()?.to_string();
        Some(Self {
            state,
            generation: le64(16),
            sequence: le64(24),
            node,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_damage_is_dropped() {
        let h = Heartbeat {
            state: NodeState::Active,
            generation: 9,
            sequence: 77,
            node: "dpu-b".into(),
        };
        let b = h.encode();
        assert_eq!(Heartbeat::decode(&b), Some(h));
        assert_eq!(Heartbeat::decode(&b[..63]), None);
        let mut long = b.to_vec();
        long.push(0);
        assert_eq!(Heartbeat::decode(&long), None);
        for at in 0..HEARTBEAT_BYTES {
            for bit in [0x01u8, 0x80] {
                let mut bad = b;
                bad[at] ^= bit;
                assert_eq!(Heartbeat::decode(&bad), None, "byte {at} bit {bit:#x}");
            }
        }
    }

    /// A checksum that matches does not make a malformed datagram valid.
    #[test]
    fn well_checksummed_garbage_is_dropped() {
        let mut b = [0u8; HEARTBEAT_BYTES];
        b[0..8].copy_from_slice(MAGIC);
        let seal = |b: &mut [u8; HEARTBEAT_BYTES]| {
            let crc = crc32c::crc32c(&b[..CRC_AT]);
            b[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        };
        // No name.
        seal(&mut b);
        assert_eq!(Heartbeat::decode(&b), None);
        // Unknown state.
        b[NAME_AT] = b'a';
        b[8] = 9;
        seal(&mut b);
        assert_eq!(Heartbeat::decode(&b), None);
        // Bytes after the name's NUL.
        b[8] = 0;
        b[NAME_AT + 5] = b'x';
        seal(&mut b);
        assert_eq!(Heartbeat::decode(&b), None);
        b[NAME_AT + 5] = 0;
        seal(&mut b);
        assert!(Heartbeat::decode(&b).is_some());
        // Invalid UTF-8 in the name.
        b[NAME_AT] = 0xff;
        seal(&mut b);
        assert_eq!(Heartbeat::decode(&b), None);
    }
}
