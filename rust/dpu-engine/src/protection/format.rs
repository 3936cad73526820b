//! On-media format of a protected array's metadata area.
//!
//! Every member starts with the same metadata area, laid out as:
//!
//! ```text
//! 0          superblock copy A (4 KiB)
//! 4096       superblock copy B (4 KiB)
//! 8192       journal slot 0: entry header (4 KiB) + payload (one chunk)
//! ...        journal slot 1 .. journal_slots-1
//! data_offset  row 0 chunk, row 1 chunk, ...
//! ```
//!
//! Superblock updates alternate between the two copies (by generation
//! parity), so a torn superblock write always leaves the previous generation
//! readable. Every structure ends with a CRC32C over the rest of its block;
//! integers are little endian.

use crate::media::{MediaError, MediaResult};

use super::codec::Layout;

/// Size of one metadata block (superblock copy, journal entry header).
pub const BLOCK: u64 = 4096;
/// Offsets of the two superblock copies.
pub const SUPERBLOCK_COPIES: [u64; 2] = [0, BLOCK];
/// Where journal slot 0 starts.
pub const JOURNAL_START: u64 = 2 * BLOCK;
/// Members an array may have: the journal's member masks are 64 bits wide
/// (and 64 members' states, positions and ids fit one superblock block).
pub const MAX_MEMBERS: usize = 64;

const SUPERBLOCK_MAGIC: [u8; 8] = *b"DPUPROT1";
const JOURNAL_MAGIC: [u8; 8] = *b"DPUJRNL1";
const FORMAT_VERSION: u32 = 1;
/// Largest chunk and journal accepted from media: a sealed but hostile
/// superblock must not make the engine allocate without bound.
pub const MAX_CHUNK: u64 = 16 << 20;
pub const MAX_JOURNAL_SLOTS: u64 = 4096;
/// The CRC sits in the last four bytes of each block.
const CRC_AT: usize = BLOCK as usize - 4;

/// What a member's state byte in the superblock means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// In sync, serving reads and writes.
    Online,
    /// Took a fatal error or was failed by the operator; never read again
    /// until replaced.
    Failed,
    /// Not present when the array was assembled.
    Missing,
    /// A replacement being reconstructed; rows below its rebuild position
    /// are in sync.
    Rebuilding,
}

impl MemberState {
    fn to_byte(self) -> u8 {
        match self {
            MemberState::Online => 0,
            MemberState::Failed => 1,
            MemberState::Missing => 2,
            MemberState::Rebuilding => 3,
        }
    }

    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(MemberState::Online),
            1 => Some(MemberState::Failed),
            2 => Some(MemberState::Missing),
            3 => Some(MemberState::Rebuilding),
            _ => None,
        }
    }
}

/// The fixed shape of an array, identical in every member's superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub uuid: [u8; 16],
    pub layout: Layout,
    pub chunk: u64,
    pub journal_slots: u64,
    pub data_offset: u64,
    pub rows: u64,
}

impl Geometry {
    /// Bytes one journal slot takes on each member.
    pub fn slot_bytes(chunk: u64) -> u64 {
        BLOCK + chunk
    }

    /// The first byte after the metadata area, rounded up to a whole chunk
    /// so data chunks stay chunk-aligned on the member.
    pub fn data_offset_for(chunk: u64, journal_slots: u64) -> u64 {
        let end = JOURNAL_START + journal_slots * Self::slot_bytes(chunk);
        end.div_ceil(chunk) * chunk
    }

    /// Where journal slot `slot` starts on every member.
    pub fn journal_slot_offset(&self, slot: u64) -> u64 {
        JOURNAL_START + slot * Self::slot_bytes(self.chunk)
    }

    /// Where row `row`'s chunk starts on every member.
    pub fn row_offset(&self, row: u64) -> u64 {
        self.data_offset + row * self.chunk
    }
}

/// One member's superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub geometry: Geometry,
    /// Which member of the array this media is (its identity: members may
    /// be handed to `open` in any order).
    pub member_index: usize,
    /// Bumped on every superblock update; the highest valid one wins.
    pub generation: u64,
    /// Every journal transaction up to this sequence number is durable in
    /// place, so replay ignores it and its slot may be reused.
    pub journal_checkpoint: u64,
    pub states: Vec<MemberState>,
    pub rebuilt_rows: Vec<u64>,
    /// A random identity per member incarnation, renewed when a member is
    /// replaced, so media that used to be member `i` is never mistaken for
    /// its replacement.
    pub member_ids: Vec<u64>,
}

/// Little-endian field writer over a metadata block.
struct Encoder<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Encoder<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }
    fn u8(&mut self, v: u8) {
        self.put(&[v]);
    }
    fn u16(&mut self, v: u16) {
        self.put(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.put(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.put(&v.to_le_bytes());
    }
}

/// Little-endian field reader; reads past the end yield `None`.
struct Decoder<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Decoder<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let bytes = self.buf.get(self.at..self.at + N)?;
        self.at += N;
        bytes.try_into().ok()
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }
}

fn seal(block: &mut [u8]) {
    let crc = crc32c::crc32c(&block[..CRC_AT]);
    block[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
}

fn sealed(block: &[u8]) -> bool {
    block.len() == BLOCK as usize
        && crc32c::crc32c(&block[..CRC_AT]).to_le_bytes() == block[CRC_AT..]
}

impl Superblock {
    /// Serializes into one metadata block.
    pub fn encode(&self) -> Vec<u8> {
        let mut block = vec![0u8; BLOCK as usize];
        let g = &self.geometry;
        let (kind, a, b, members) = g.layout.to_parts();
        let mut e = Encoder {
            buf: &mut block,
            at: 0,
        };
        e.put(&SUPERBLOCK_MAGIC);
        e.u32(FORMAT_VERSION);
        e.put(&g.uuid);
        e.u8(kind);
        e.u8(a);
        e.u8(b);
        e.u16(members);
        e.u16(self.member_index as u16);
        e.u64(g.chunk);
        e.u64(g.journal_slots);
        e.u64(g.data_offset);
        e.u64(g.rows);
        e.u64(self.generation);
        e.u64(self.journal_checkpoint);
        for state in &self.states {
            e.u8(state.to_byte());
        }
        for rows in &self.rebuilt_rows {
            e.u64(*rows);
        }
        for id in &self.member_ids {
            e.u64(*id);
        }
        seal(&mut block);
        block
    }

    /// Parses a block; `None` for anything that is not a valid superblock
    /// of this format (blank media, torn write, foreign data).
    pub fn decode(block: &[u8]) -> Option<Superblock> {
        if !sealed(block) {
            return None;
        }
        let mut d = Decoder { buf: block, at: 0 };
        if d.take::<8>()? != SUPERBLOCK_MAGIC || d.u32()? != FORMAT_VERSION {
            return None;
        }
        let uuid = d.take::<16>()?;
        let (kind, a, b) = (d.u8()?, d.u8()?, d.u8()?);
        let members = d.u16()?;
        let layout = Layout::from_parts(kind, a, b, members)?;
        let member_index = d.u16()? as usize;
        let chunk = d.u64()?;
        let journal_slots = d.u64()?;
        let data_offset = d.u64()?;
        let rows = d.u64()?;
        let generation = d.u64()?;
        let journal_checkpoint = d.u64()?;
        let count = layout.members();
        let shape_ok = chunk > 0
            && chunk.is_multiple_of(512)
            && chunk <= MAX_CHUNK
            && (2..=MAX_JOURNAL_SLOTS).contains(&journal_slots)
            && data_offset == Geometry::data_offset_for(chunk, journal_slots);
        if member_index >= count || !shape_ok {
            return None;
        }
        let mut states = Vec::with_capacity(count);
        for _ in 0..count {
            states.push(MemberState::from_byte(d.u8()?)?);
        }
        let mut rebuilt_rows = Vec::with_capacity(count);
        for _ in 0..count {
            rebuilt_rows.push(d.u64()?);
        }
        let mut member_ids = Vec::with_capacity(count);
        for _ in 0..count {
            member_ids.push(d.u64()?);
        }
        Some(Superblock {
            geometry: Geometry {
                uuid,
                layout,
                chunk,
                journal_slots,
                data_offset,
                rows,
            },
            member_index,
            generation,
            journal_checkpoint,
            states,
            rebuilt_rows,
            member_ids,
        })
    }
}

/// The header of one member's part of a journal transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalHeader {
    pub uuid: [u8; 16],
    pub seq: u64,
    pub row: u64,
    /// The byte range of the row's chunks this transaction rewrites.
    pub start: u64,
    pub len: u64,
    /// Every member that received an entry of this transaction.
    pub involved: u64,
    pub member_index: usize,
    pub payload_crc: u32,
    /// The journal checkpoint in force when this entry was written: every
    /// transaction up to it was durable in place by then. Replay takes the
    /// highest one it finds, so checkpoints need no superblock update.
    pub checkpoint: u64,
}

impl JournalHeader {
    /// Serializes the header block followed by the payload, so each member's
    /// entry is one write.
    pub fn encode_entry(&self, payload: &[u8]) -> Vec<u8> {
        let mut entry = vec![0u8; BLOCK as usize + payload.len()];
        let (block, rest) = entry.split_at_mut(BLOCK as usize);
        let mut e = Encoder { buf: block, at: 0 };
        e.put(&JOURNAL_MAGIC);
        e.put(&self.uuid);
        e.u64(self.seq);
        e.u64(self.row);
        e.u64(self.start);
        e.u64(self.len);
        e.u64(self.involved);
        e.u16(self.member_index as u16);
        e.u32(self.payload_crc);
        e.u64(self.checkpoint);
        seal(block);
        rest.copy_from_slice(payload);
        entry
    }

    /// Parses a header block; `None` unless it is a sealed journal header.
    pub fn decode(block: &[u8]) -> Option<JournalHeader> {
        if !sealed(block) {
            return None;
        }
        let mut d = Decoder { buf: block, at: 0 };
        if d.take::<8>()? != JOURNAL_MAGIC {
            return None;
        }
        Some(JournalHeader {
            uuid: d.take::<16>()?,
            seq: d.u64()?,
            row: d.u64()?,
            start: d.u64()?,
            len: d.u64()?,
            involved: d.u64()?,
            member_index: d.u16()? as usize,
            payload_crc: d.u32()?,
            checkpoint: d.u64()?,
        })
    }
}

/// A block that no decoder accepts, written over journal slots of a member
/// that joins the array so nothing it held before is ever replayed.
pub fn blank_block() -> Vec<u8> {
    vec![0u8; BLOCK as usize]
}

/// Rejects a geometry that does not fit the members or this format.
pub fn check_member_count(count: usize) -> MediaResult<()> {
    if count == 0 || count > MAX_MEMBERS {
        return Err(MediaError::Unrecoverable(format!(
            "{count} members: an array has 1 to {MAX_MEMBERS}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Superblock {
        Superblock {
            geometry: Geometry {
                uuid: [7; 16],
                layout: Layout::Raid6 { members: 5 },
                chunk: 4096,
                journal_slots: 16,
                data_offset: Geometry::data_offset_for(4096, 16),
                rows: 100,
            },
            member_index: 3,
            generation: 42,
            journal_checkpoint: 17,
            states: vec![
                MemberState::Online,
                MemberState::Failed,
                MemberState::Missing,
                MemberState::Rebuilding,
                MemberState::Online,
            ],
            rebuilt_rows: vec![0, 0, 0, 55, 0],
            member_ids: vec![11, 12, 13, 14, 15],
        }
    }

    #[test]
    fn superblock_round_trips_and_rejects_damage() {
        let sb = sample();
        let mut block = sb.encode();
        assert_eq!(Superblock::decode(&block), Some(sb));
        block[40] ^= 1;
        assert_eq!(Superblock::decode(&block), None);
        assert_eq!(Superblock::decode(&blank_block()), None);
    }

    #[test]
    fn journal_header_round_trips_and_rejects_damage() {
        let header = JournalHeader {
            uuid: [1; 16],
            seq: 9,
            row: 4,
            start: 512,
            len: 1024,
            involved: 0b1011,
            member_index: 1,
            payload_crc: 0xdead_beef,
            checkpoint: 3,
        };
        let entry = header.encode_entry(&[5u8; 1024]);
        assert_eq!(entry.len(), 4096 + 1024);
        assert_eq!(JournalHeader::decode(&entry[..4096]), Some(header));
        let mut damaged = entry[..4096].to_vec();
        damaged[20] ^= 0x80;
        assert_eq!(JournalHeader::decode(&damaged), None);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Media bytes are untrusted: parsing garbage, or a valid block with
        /// a byte changed, must reject it (or parse) without panicking.
        #[test]
        fn decoders_never_panic_and_reject_damage(
            garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..5000),
            at in 0usize..4092,
            flip in 1u8..=255,
        ) {
            let _ = Superblock::decode(&garbage);
            let _ = JournalHeader::decode(&garbage);
            let mut block = sample().encode();
            block[at] ^= flip;
            proptest::prop_assert_eq!(Superblock::decode(&block), None);
        }

        /// Valid CRC but nonsense fields (layout, index, counts) are refused
        /// rather than trusted.
        #[test]
        fn sealed_nonsense_is_refused_or_consistent(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 4092),
        ) {
            let mut block = body;
            block[..8].copy_from_slice(&SUPERBLOCK_MAGIC);
            block[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
            block.extend_from_slice(&[0; 4]);
            seal(&mut block);
            if let Some(sb) = Superblock::decode(&block) {
                proptest::prop_assert!(sb.geometry.layout.validate().is_ok());
                proptest::prop_assert!(sb.member_index < sb.geometry.layout.members());
                proptest::prop_assert_eq!(sb.states.len(), sb.geometry.layout.members());
            }
        }
    }

    #[test]
    fn data_offset_is_chunk_aligned_and_past_the_journal() {
        for chunk in [512u64, 4096, 65536, 3 * 512] {
            let offset = Geometry::data_offset_for(chunk, 16);
            assert_eq!(offset % chunk, 0);
            assert!(offset >= JOURNAL_START + 16 * (BLOCK + chunk));
        }
    }
}
