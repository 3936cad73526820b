//! The on-media format of a log-structured array: the member label, the
//! geometry it describes, the stripe summary and the write-buffer record.
//!
//! Every member is cut into four regions, in this order (offsets in
//! bytes, the same on every member):
//!
//! * the label, one 4 KiB block at 0;
//! * the metadata region: a journaled array of the same parity layout
//!   (`ProtectedMedia`) holding the page mapping table and the segment
//!   table in copy-on-write B-trees;
//! * the write buffer: `wb_slots` slots of one stripe's blocks each;
//! * the segments: segment `s` is `segment_stripes` consecutive chunks at
//!   `seg_off + s * seg_member_bytes` on every member.
//!
//! All integers are little-endian; every block ends with the CRC32C of its
//! first 4092 bytes.

use std::sync::Arc;

use crate::media::{check_range, Media, MediaError, MediaResult};
use crate::protection::Layout;

/// The unit of mapping: one logical block.
pub const BLOCK: u64 = 4096;
const BLOCK_USIZE: usize = BLOCK as usize;
const CRC_AT: usize = BLOCK_USIZE - 4;

pub const LABEL_MAGIC: &[u8; 8] = b"DPULRLB\x01";
pub const SUMMARY_MAGIC: &[u8; 8] = b"DPULRSS\x01";
pub const RECORD_MAGIC: &[u8; 8] = b"DPULRWB\x01";
const VERSION: u32 = 1;

/// An entry's LBA that says "no data here" (padding of a stripe written
/// before it filled).
pub const NO_LBA: u64 = u64::MAX;

/// Entries start here in a summary or record header.
const ENTRIES_AT: usize = 64;
const ENTRY_BYTES: usize = 12;
/// The most entries one header block holds.
pub const MAX_ENTRIES: usize = (CRC_AT - ENTRIES_AT) / ENTRY_BYTES;

/// Journal slots of the metadata region's array.
pub const META_JOURNAL_SLOTS: u64 = 8;
/// Chunk of the metadata region's array (one metadata block).
pub const META_CHUNK: u64 = BLOCK;

fn corrupt(why: impl Into<String>) -> MediaError {
    MediaError::Io(why.into())
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn seal(block: &mut [u8]) {
    let crc = crc32c::crc32c(&block[..CRC_AT]);
    put32(block, CRC_AT, crc);
}

fn sealed(block: &[u8]) -> bool {
    block.len() == BLOCK_USIZE && le32(block, CRC_AT) == crc32c::crc32c(&block[..CRC_AT])
}

/// The CRC32C a block's bytes are checked against (PMT values, summaries
/// and records all use it).
pub fn block_crc(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// The shape of an array, fixed at creation and recorded in every label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geometry {
    pub uuid: [u8; 16],
    pub layout: Layout,
    /// Bytes of one member's part of a stripe: a multiple of [`BLOCK`].
    pub chunk: u64,
    pub segment_stripes: u64,
    pub segments: u64,
    /// Bytes of the metadata region on each member.
    pub meta_len: u64,
    pub wb_slots: u64,
    /// Logical blocks exported.
    pub logical_blocks: u64,
    /// Segments host writes may not take (GC's working room).
    pub reserve: u64,
}

impl Geometry {
    pub fn members(&self) -> usize {
        self.layout.members()
    }

    /// Blocks per member per stripe.
    pub fn chunk_blocks(&self) -> u64 {
        self.chunk / BLOCK
    }

    /// Blocks of a stripe's data slots: the summary and the data blocks.
    pub fn stripe_blocks(&self) -> u64 {
        self.chunk_blocks() * self.layout.data_slots() as u64
    }

    /// Data blocks a stripe holds (all but the summary).
    pub fn stripe_data(&self) -> u64 {
        self.stripe_blocks().saturating_sub(1)
    }

    /// Data blocks a full segment holds.
    pub fn segment_data(&self) -> u64 {
        self.stripe_data() * self.segment_stripes
    }

    /// Location numbers per segment (summaries included).
    pub fn segment_locations(&self) -> u64 {
        self.stripe_blocks() * self.segment_stripes
    }

    pub fn meta_off(&self) -> u64 {
        BLOCK
    }

    pub fn wb_off(&self) -> u64 {
        self.meta_off() + self.meta_len
    }

    /// Bytes of one write-buffer slot: a header and a stripe's data.
    pub fn wb_slot_bytes(&self) -> u64 {
        self.stripe_blocks() * BLOCK
    }

    pub fn seg_off(&self) -> u64 {
        let end = self.wb_off() + self.wb_slots * self.wb_slot_bytes();
        end.div_ceil(self.chunk) * self.chunk
    }

    /// Bytes of one segment on one member.
    pub fn seg_member_bytes(&self) -> u64 {
        self.segment_stripes * self.chunk
    }

    /// Member bytes the array uses.
    pub fn member_bytes(&self) -> u64 {
        self.seg_off() + self.segments * self.seg_member_bytes()
    }

    /// The member offset of stripe `stripe` of segment `segment`.
    pub fn chunk_offset(&self, segment: u64, stripe: u64) -> u64 {
        self.seg_off() + segment * self.seg_member_bytes() + stripe * self.chunk
    }

    /// The row number that rotates a stripe's slots over the members.
    pub fn row(&self, segment: u64, stripe: u64) -> u64 {
        segment * self.segment_stripes + stripe
    }

    /// Splits a location into segment, stripe and block within the stripe.
    pub fn split(&self, location: u64) -> (u64, u64, u64) {
        let segment = location / self.segment_locations();
        let within = location % self.segment_locations();
        (
            segment,
            within / self.stripe_blocks(),
            within % self.stripe_blocks(),
        )
    }

    pub fn location(&self, segment: u64, stripe: u64, block: u64) -> u64 {
        segment * self.segment_locations() + stripe * self.stripe_blocks() + block
    }

    /// Checks everything a label may claim before it is trusted.
    pub fn validate(&self) -> MediaResult<()> {
        self.layout.validate()?;
        let parity = matches!(self.layout, Layout::Raid6 { .. } | Layout::Erasure { .. });
        let bad = if !parity {
            Some("lograid needs a raid6 or k+m parity layout".to_string())
        } else if self.chunk == 0 || !self.chunk.is_multiple_of(BLOCK) || self.chunk > 1 << 20 {
            Some(format!(
                "chunk {} is not a multiple of 4096 up to 1 MiB",
                self.chunk
            ))
        } else if self.stripe_blocks() < 2 || self.stripe_data() as usize > MAX_ENTRIES {
            Some(format!(
                "a stripe of {} blocks does not fit one summary (2 to {})",
                self.stripe_blocks(),
                MAX_ENTRIES + 1
            ))
        } else if self.segment_stripes == 0 || self.segment_stripes > 1 << 20 {
            Some(format!("{} stripes per segment", self.segment_stripes))
        } else if self.wb_slots < 2 || self.wb_slots > 1024 {
            Some(format!("{} write-buffer slots (2 to 1024)", self.wb_slots))
        } else if self.reserve == 0 {
            Some("the GC reserve must be at least one segment".into())
        } else if self.segments < self.reserve + 3 {
            Some(format!(
                "{} segments leave no room beside a reserve of {}",
                self.segments, self.reserve
            ))
        } else if self.logical_blocks == 0 || self.logical_blocks > self.max_logical_blocks() {
            Some(format!(
                "{} logical blocks: at most {} fit with the reserve and GC room",
                self.logical_blocks,
                self.max_logical_blocks()
            ))
        } else if self.meta_len < Self::meta_overhead() + 16 * BLOCK {
            Some("metadata region too small".into())
        } else {
            None
        };
        bad.map_or(Ok(()), |why| {
            Err(MediaError::Unrecoverable(format!(
                "lograid geometry: {why}"
            )))
        })
    }

    /// The most logical blocks: every segment but the reserve, the open
    /// one and one more, so that GC always finds a victim with free room.
    pub fn max_logical_blocks(&self) -> u64 {
        self.segments.saturating_sub(self.reserve + 2) * self.segment_data()
    }

    /// The metadata array's own superblocks and journal on each member.
    pub fn meta_overhead() -> u64 {
        super::super::format::Geometry::data_offset_for(META_CHUNK, META_JOURNAL_SLOTS)
    }

    /// The metadata region a pool of this size wants on each member: room
    /// for the mapping table and the segment table three times over (the
    /// committed copy, the transaction's shadows and slack), plus the
    /// metadata array's journal.
    pub fn meta_len_for(layout: Layout, logical_blocks: u64, segments: u64) -> u64 {
        // A leaf holds up to 169 16-byte values; count half-full leaves.
        let leaves = logical_blocks.div_ceil(80) + segments.div_ceil(60);
        let blocks = 3 * leaves + 256;
        let per_member = blocks.div_ceil(layout.data_slots() as u64);
        Self::meta_overhead() + per_member * META_CHUNK
    }

    /// The label of member `index`.
    pub fn label(&self, index: usize) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK_USIZE];
        b[..8].copy_from_slice(LABEL_MAGIC);
        put32(&mut b, 8, VERSION);
        put32(&mut b, 12, index as u32);
        b[16..32].copy_from_slice(&self.uuid);
        let (kind, a, c, members) = self.layout.to_parts();
        b[32] = kind;
        b[33] = a;
        b[34] = c;
        b[36..38].copy_from_slice(&members.to_le_bytes());
        put64(&mut b, 40, self.chunk);
        put64(&mut b, 48, self.segment_stripes);
        put64(&mut b, 56, self.segments);
        put64(&mut b, 64, self.meta_len);
        put64(&mut b, 72, self.wb_slots);
        put64(&mut b, 80, self.logical_blocks);
        put64(&mut b, 88, self.reserve);
        seal(&mut b);
        b
    }

    /// Parses a label: the geometry and the member index it names.
    pub fn from_label(b: &[u8]) -> MediaResult<(Geometry, usize)> {
        if !sealed(b) || &b[..8] != LABEL_MAGIC {
            return Err(corrupt("no lograid label"));
        }
        if le32(b, 8) != VERSION {
            return Err(corrupt(format!("lograid label version {}", le32(b, 8))));
        }
        let members = u16::from_le_bytes([b[36], b[37]]);
        let layout = Layout::from_parts(b[32], b[33], b[34], members)
            .ok_or_else(|| corrupt("lograid label names an unknown layout"))?;
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[16..32]);
        let geometry = Geometry {
            uuid,
            layout,
            chunk: le64(b, 40),
            segment_stripes: le64(b, 48),
            segments: le64(b, 56),
            meta_len: le64(b, 64),
            wb_slots: le64(b, 72),
            logical_blocks: le64(b, 80),
            reserve: le64(b, 88),
        };
        geometry.validate()?;
        let index = le32(b, 12) as usize;
        if index >= geometry.members() {
            return Err(corrupt(format!("lograid label names member {index}")));
        }
        Ok((geometry, index))
    }
}

/// One entry of a summary or record: the LBA a block holds and the CRC32C
/// of its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub lba: u64,
    pub crc: u32,
}

/// The header block of a stripe (its summary, data block 0) or of a
/// write-buffer record: whose it is and what the blocks after it hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub uuid: [u8; 16],
    /// The life of the segment the blocks belong to.
    pub epoch: u64,
    pub segment: u64,
    pub stripe: u64,
    /// Write-buffer records: their sequence number (0 in summaries).
    pub seq: u64,
    /// Entry `i` describes block `i + 1` of the stripe.
    pub entries: Vec<Entry>,
}

impl Header {
    pub fn encode(&self, magic: &[u8; 8]) -> MediaResult<Vec<u8>> {
        if self.entries.len() > MAX_ENTRIES {
            return Err(MediaError::Unrecoverable(format!(
                "{} entries in one header",
                self.entries.len()
            )));
        }
        let mut b = vec![0u8; BLOCK_USIZE];
        b[..8].copy_from_slice(magic);
        b[8..24].copy_from_slice(&self.uuid);
        put64(&mut b, 24, self.epoch);
        put64(&mut b, 32, self.segment);
        put64(&mut b, 40, self.stripe);
        put64(&mut b, 48, self.seq);
        put32(&mut b, 56, self.entries.len() as u32);
        for (i, e) in self.entries.iter().enumerate() {
            let at = ENTRIES_AT + i * ENTRY_BYTES;
            put64(&mut b, at, e.lba);
            put32(&mut b, at + 8, e.crc);
        }
        seal(&mut b);
        Ok(b)
    }

    /// Parses a header of type `magic`; `None` for anything else (a torn,
    /// stale, foreign or never written block).
    pub fn decode(b: &[u8], magic: &[u8; 8]) -> Option<Header> {
        if !sealed(b) || &b[..8] != magic {
            return None;
        }
        let count = le32(b, 56) as usize;
        if count > MAX_ENTRIES {
            return None;
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[8..24]);
        let entries = (0..count)
            .map(|i| {
                let at = ENTRIES_AT + i * ENTRY_BYTES;
                Entry {
                    lba: le64(b, at),
                    crc: le32(b, at + 8),
                }
            })
            .collect();
        Some(Header {
            uuid,
            epoch: le64(b, 24),
            segment: le64(b, 32),
            stripe: le64(b, 40),
            seq: le64(b, 48),
            entries,
        })
    }
}

/// A window `offset..offset + len` of a member, as a media of its own
/// (the metadata region is an array over these windows).
pub struct MemberRegion {
    member: Arc<dyn Media>,
    offset: u64,
    len: u64,
}

impl MemberRegion {
    pub fn new(member: Arc<dyn Media>, offset: u64, len: u64) -> MediaResult<Self> {
        check_range(offset, len, member.size())?;
        Ok(MemberRegion {
            member,
            offset,
            len,
        })
    }
}

impl Media for MemberRegion {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> MediaResult<()> {
        check_range(offset, buf.len() as u64, self.len)?;
        self.member.read_at(self.offset + offset, buf)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> MediaResult<()> {
        check_range(offset, data.len() as u64, self.len)?;
        self.member.write_at(self.offset + offset, data)
    }

    fn flush(&self) -> MediaResult<()> {
        self.member.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry() -> Geometry {
        Geometry {
            uuid: [7; 16],
            layout: Layout::Raid6 { members: 6 },
            chunk: 8192,
            segment_stripes: 4,
            segments: 20,
            meta_len: Geometry::meta_len_for(Layout::Raid6 { members: 6 }, 100, 20),
            wb_slots: 4,
            logical_blocks: 100,
            reserve: 2,
        }
    }

    #[test]
    fn label_round_trips_and_rejects_damage() {
        let g = geometry();
        g.validate().unwrap();
        let label = g.label(3);
        assert_eq!(Geometry::from_label(&label).unwrap(), (g.clone(), 3));
        for at in [0, 12, 40, 200, 4095] {
            let mut bad = label.clone();
            bad[at] ^= 1;
            assert!(Geometry::from_label(&bad).is_err(), "byte {at}");
        }
        assert!(Geometry::from_label(&g.label(6)).is_err());
    }

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let h = Header {
            uuid: [1; 16],
            epoch: 9,
            segment: 3,
            stripe: 2,
            seq: 77,
            entries: (0..MAX_ENTRIES as u64)
                .map(|i| Entry {
                    lba: i * 3,
                    crc: i as u32,
                })
                .collect(),
        };
        let b = h.encode(SUMMARY_MAGIC).unwrap();
        assert_eq!(Header::decode(&b, SUMMARY_MAGIC), Some(h.clone()));
        assert_eq!(Header::decode(&b, RECORD_MAGIC), None);
        let mut torn = b.clone();
        torn[2048..].fill(0);
        assert_eq!(Header::decode(&torn, SUMMARY_MAGIC), None);
        assert_eq!(Header::decode(&vec![0u8; 4096], SUMMARY_MAGIC), None);
    }

    #[test]
    fn locations_split_back() {
        let g = geometry();
        for loc in 0..g.segments * g.segment_locations() {
            let (s, t, b) = g.split(loc);
            assert_eq!(g.location(s, t, b), loc);
            assert!(s < g.segments && t < g.segment_stripes && b < g.stripe_blocks());
        }
    }

    #[test]
    fn invalid_geometries_are_refused() {
        let mut g = geometry();
        g.layout = Layout::Mirror {
            members: 6,
            copies: 2,
        };
        assert!(g.validate().is_err());
        let mut g = geometry();
        g.logical_blocks = g.max_logical_blocks() + 1;
        assert!(g.validate().is_err());
        let mut g = geometry();
        g.chunk = 1000;
        assert!(g.validate().is_err());
        let mut g = geometry();
        g.reserve = 0;
        assert!(g.validate().is_err());
    }
}
