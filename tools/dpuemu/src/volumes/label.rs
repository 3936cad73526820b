//! The family label: how dpuemu recognises an SSD image as a member of a
//! volume family, and the family's small catalog.
//!
//! Every member SSD of a family carries two copies of a 4 KiB label at
//! bytes 0 and 4096 (copy `generation % 2` is written, so a torn write
//! leaves the previous generation readable). The member's engine media
//! starts at [`LABEL_AREA`]. All fields are little-endian:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `DPUFAMLY` |
//! | 8 | 4 | version (1) |
//! | 12 | 4 | reserved |
//! | 16 | 16 | family UUID |
//! | 32 | 8 | generation |
//! | 40 | 2 | this member's index |
//! | 42 | 2 | member count |
//! | 44 | 1 | layout (`vendor::layout`) |
//! | 45 | 1 | data shards |
//! | 46 | 1 | parity shards |
//! | 47 | 1 | reserved |
//! | 48 | 4 | stripe bytes (chunk of protected layouts) |
//! | 52 | 4 | catalog entries |
//! | 56 | 72 | reserved |
//! | 128 | 48 × n | entries: name (32, NUL padded), NSID (4), flags (4), reserved (8) |
//! | 4092 | 4 | CRC32C of bytes 0..4092 |
//!
//! The catalog holds what the engine's pool does not store: each writable
//! volume's NSID (so it comes back under the same NSID) and whether it is
//! thin and a clone. Snapshots need no entry.

use dpu_engine::media::{Media, MediaResult};

/// Bytes reserved at the start of every member SSD for the label copies.
pub const LABEL_AREA: u64 = 64 << 10;
const LABEL_BYTES: usize = 4096;
const MAGIC: &[u8; 8] = b"DPUFAMLY";
const VERSION: u32 = 1;
const ENTRIES_AT: usize = 128;
const ENTRY_BYTES: usize = 48;
const CRC_AT: usize = LABEL_BYTES - 4;
/// Catalog entries a label can hold.
pub const MAX_ENTRIES: usize = (CRC_AT - ENTRIES_AT) / ENTRY_BYTES;

/// Catalog flag: the volume is thin (may over-commit the pool).
pub const ENTRY_THIN: u32 = 1 << 0;
/// Catalog flag: the volume is a clone of a snapshot.
pub const ENTRY_CLONE: u32 = 1 << 1;

/// One writable volume of the family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogEntry {
    pub name: String,
    pub nsid: u32,
    pub flags: u32,
}

/// A decoded label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyLabel {
    pub uuid: [u8; 16],
    pub generation: u64,
    pub member_index: u16,
    pub member_count: u16,
    pub layout: u8,
    pub data_shards: u8,
    pub parity_shards: u8,
    pub stripe_bytes: u32,
    pub entries: Vec<CatalogEntry>,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

impl FamilyLabel {
    /// The 4 KiB block; `None` if the catalog does not fit.
    pub fn encode(&self) -> Option<Vec<u8>> {
        if self.entries.len() > MAX_ENTRIES {
            return None;
        }
        let mut b = vec![0u8; LABEL_BYTES];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[16..32].copy_from_slice(&self.uuid);
        b[32..40].copy_from_slice(&self.generation.to_le_bytes());
        b[40..42].copy_from_slice(&self.member_index.to_le_bytes());
        b[42..44].copy_from_slice(&self.member_count.to_le_bytes());
        b[44] = self.layout;
        b[45] = self.data_shards;
        b[46] = self.parity_shards;
        b[48..52].copy_from_slice(&self.stripe_bytes.to_le_bytes());
        b[52..56].copy_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for (i, e) in self.entries.iter().enumerate() {
            let at = ENTRIES_AT + i * ENTRY_BYTES;
            let name = e.name.as_bytes();
            if name.is_empty() || name.len() > 31 {
                return None;
            }
            b[at..at + name.len()].copy_from_slice(name);
            b[at + 32..at + 36].copy_from_slice(&e.nsid.to_le_bytes());
            b[at + 36..at + 40].copy_from_slice(&e.flags.to_le_bytes());
        }
        let crc = crc32c::crc32c(&b[..CRC_AT]);
        b[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        Some(b)
    }

    /// Decodes a label block; `None` for anything that is not a valid one.
    pub fn decode(b: &[u8]) -> Option<FamilyLabel> {
        if b.len() != LABEL_BYTES || &b[0..8] != MAGIC || le32(b, 8) != VERSION {
            return None;
        }
        if crc32c::crc32c(&b[..CRC_AT]) != le32(b, CRC_AT) {
            return None;
        }
        let count = le32(b, 52) as usize;
        let member_index = le16(b, 40);
        let member_count = le16(b, 42);
        if count > MAX_ENTRIES || member_count == 0 || member_index >= member_count {
            return None;
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[16..32]);
        let mut entries = Vec::with_capacity(count);
        for i in 0..count {
            let at = ENTRIES_AT + i * ENTRY_BYTES;
            let raw = &b[at..at + 32];
            let len = raw.iter().position(|&c| c == 0)?;
            let name = std::str::from_utf8(&raw[..len]).ok()?.to_string();
            if name.is_empty() {
                return None;
            }
            entries.push(CatalogEntry {
                name,
                nsid: le32(b, at + 32),
                flags: le32(b, at + 36),
            });
        }
        Some(FamilyLabel {
            uuid,
            generation: le64(b, 32),
            member_index,
            member_count,
            layout: b[44],
            data_shards: b[45],
            parity_shards: b[46],
            stripe_bytes: le32(b, 48),
            entries,
        })
    }
}

/// The newest valid label copy on `ssd`, if any.
pub fn read_label(ssd: &dyn Media) -> Option<FamilyLabel> {
    [0u64, LABEL_BYTES as u64]
        .iter()
        .filter_map(|&at| {
            let mut b = vec![0u8; LABEL_BYTES];
            ssd.read_at(at, &mut b).ok()?;
            FamilyLabel::decode(&b)
        })
        .max_by_key(|l| l.generation)
}

/// Writes `label` into the copy its generation selects and flushes.
pub fn write_label(ssd: &dyn Media, label: &FamilyLabel) -> MediaResult<()> {
    let block = label.encode().ok_or_else(|| {
        dpu_engine::media::MediaError::Unrecoverable("catalog does not fit the label".into())
    })?;
    let at = (label.generation % 2) * LABEL_BYTES as u64;
    ssd.write_at(at, &block)?;
    ssd.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dpu_engine::media::MemMedia;

    fn label() -> FamilyLabel {
        FamilyLabel {
            uuid: [7; 16],
            generation: 3,
            member_index: 1,
            member_count: 4,
            layout: 3,
            data_shards: 2,
            parity_shards: 2,
            stripe_bytes: 65536,
            entries: vec![CatalogEntry {
                name: "db".into(),
                nsid: 2,
                flags: ENTRY_THIN,
            }],
        }
    }

    #[test]
    fn round_trip_newest_copy_and_damage() {
        let media = MemMedia::new(LABEL_AREA as usize);
        assert_eq!(read_label(&media), None);
        let mut l = label();
        write_label(&media, &l).unwrap();
        l.generation = 4;
        l.entries.push(CatalogEntry {
            name: "db-clone".into(),
            nsid: 3,
            flags: ENTRY_CLONE,
        });
        write_label(&media, &l).unwrap();
        assert_eq!(read_label(&media), Some(l.clone()));
        // A torn newest copy falls back to the previous generation.
        media.write_at(100, &[0xff; 4]).unwrap();
        assert_eq!(read_label(&media).map(|l| l.generation), Some(3));
        // Every single flipped byte is refused, never misread.
        let block = l.encode().unwrap();
        for at in (0..LABEL_BYTES).step_by(61) {
            let mut bad = block.clone();
            bad[at] ^= 0x10;
            assert_eq!(FamilyLabel::decode(&bad), None, "byte {at}");
        }
        let mut full = l;
        full.entries = (0..=MAX_ENTRIES)
            .map(|i| CatalogEntry {
                name: format!("v{i}"),
                nsid: i as u32,
                flags: 0,
            })
            .collect();
        assert!(full.encode().is_none());
        full.entries.pop();
        assert_eq!(FamilyLabel::decode(&full.encode().unwrap()), Some(full));
    }

    #[test]
    fn hostile_label_blocks_never_panic() {
        // A valid checksum over garbage must not panic the decoder either:
        // images are untrusted input.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let valid = label().encode().unwrap();
        for round in 0..3000 {
            let mut b = if round % 2 == 0 {
                valid.clone()
            } else {
                (0..LABEL_BYTES).map(|_| next() as u8).collect()
            };
            for _ in 0..1 + next() % 8 {
                let at = (next() % LABEL_BYTES as u64) as usize;
                b[at] = next() as u8;
            }
            b[..8].copy_from_slice(MAGIC);
            b[8..12].copy_from_slice(&VERSION.to_le_bytes());
            if round % 3 == 0 {
                b[52..56].copy_from_slice(&((next() % 100) as u32).to_le_bytes());
            }
            let crc = crc32c::crc32c(&b[..CRC_AT]);
            b[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
            if let Some(l) = FamilyLabel::decode(&b) {
                assert!(l.member_index < l.member_count);
                assert!(l.entries.len() <= MAX_ENTRIES);
            }
        }
    }
}
