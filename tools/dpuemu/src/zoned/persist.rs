//! The zone state area: where zone states and write pointers live on the
//! media, so that they outlast a dpuemu restart.
//!
//! The area sits at the end of the SSD image, after the last zone: two
//! slots of the same size, each a whole copy of the table. A commit writes
//! the slot the newest valid copy is not in, with a generation one higher,
//! so a commit torn by a crash damages only the copy being written and the
//! previous one still holds. A slot is:
//!
//! ```text
//! 0   magic "DPUZNS\0\x01"
//! 8   generation (u64)
//! 16  zone size, blocks (u64)      24  zone capacity, blocks (u64)
//! 32  zones (u64)                  40  checksum (u64, FNV-1a 64 of the
//!                                      slot with this field zero)
//! 48  reserved (16 bytes)
//! 64  one 16-byte record per zone: state code (u8), 7 reserved bytes,
//!     blocks written (u64)
//! ```
//!
//! All integers little-endian; the slot is padded to 4 KiB.
//!
//! The image's last 4 KiB hold the zone label, written once when the
//! image becomes zoned (after the first slot): magic "DPUZNSL\x01", zone
//! size, zone capacity and zone count (u64 each) and an FNV-1a 64 of
//! those 32 bytes. Its place does not depend on the layout, so a restart
//! with another zone size finds it and refuses, instead of reading slots
//! where the other layout never put them.

use super::state::{Geometry, Zone, ZoneState};

/// First bytes of a slot.
pub const MAGIC: [u8; 8] = *b"DPUZNS\x00\x01";
const HEADER_BYTES: u64 = 64;
const RECORD_BYTES: u64 = 16;
const SLOT_ALIGN: u64 = 4096;
const CHECKSUM_AT: usize = 40;

/// First bytes of the zone label.
pub const LABEL_MAGIC: [u8; 8] = *b"DPUZNSL\x01";
/// Bytes of the zone label at the image's end.
pub const LABEL_BYTES: u64 = 4096;

/// What the zone label says.
#[derive(Debug, PartialEq, Eq)]
pub enum Label {
    /// No label: the image is not zoned yet.
    Blank,
    /// Zone size, capacity (blocks) and count of the image.
    Layout {
        zone_blocks: u64,
        capacity_blocks: u64,
        zones: u64,
    },
    Damaged,
}

/// Encodes the label of `geometry`.
pub fn encode_label(geometry: &Geometry) -> Vec<u8> {
    let mut label = vec![0u8; LABEL_BYTES as usize];
    label[..8].copy_from_slice(&LABEL_MAGIC);
    label[8..16].copy_from_slice(&geometry.zone_blocks.to_le_bytes());
    label[16..24].copy_from_slice(&geometry.capacity_blocks.to_le_bytes());
    label[24..32].copy_from_slice(&geometry.zones.to_le_bytes());
    let sum = fnv1a(&label[..32]);
    label[32..40].copy_from_slice(&sum.to_le_bytes());
    label
}

/// Decodes a label read from the media.
pub fn decode_label(label: &[u8]) -> Label {
    if label.get(..8) != Some(&LABEL_MAGIC[..]) {
        return Label::Blank;
    }
    match (
        u64_at(label, 8),
        u64_at(label, 16),
        u64_at(label, 24),
        u64_at(label, 32),
        label.get(..32),
    ) {
        (Some(zone_blocks), Some(capacity_blocks), Some(zones), Some(sum), Some(covered))
            if fnv1a(covered) == sum =>
        {
            Label::Layout {
                zone_blocks,
                capacity_blocks,
                zones,
            }
        }
        _ => Label::Damaged,
    }
}

/// Bytes of one slot for `zones` zones.
pub const fn slot_bytes(zones: u64) -> u64 {
    (HEADER_BYTES + zones * RECORD_BYTES).div_ceil(SLOT_ALIGN) * SLOT_ALIGN
}

/// What a slot holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Slot {
    /// Never written (no magic).
    Blank,
    /// A whole copy of the table.
    Valid { generation: u64, zones: Vec<Zone> },
    /// A valid copy written for another zone layout.
    OtherGeometry {
        zone_blocks: u64,
        capacity_blocks: u64,
        zones: u64,
    },
    /// The magic is there but the rest does not check out (a torn or
    /// damaged commit).
    Damaged(&'static str),
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn checksum(slot: &[u8]) -> u64 {
    let mut copy = slot.to_vec();
    if let Some(field) = copy.get_mut(CHECKSUM_AT..CHECKSUM_AT + 8) {
        field.fill(0);
    }
    fnv1a(&copy)
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    let field = bytes.get(at..at + 8)?;
    Some(u64::from_le_bytes(field.try_into().ok()?))
}

/// Encodes a slot of generation `generation` holding `zones`.
pub fn encode(geometry: &Geometry, generation: u64, zones: &[Zone]) -> Vec<u8> {
    let mut slot = vec![0u8; slot_bytes(geometry.zones) as usize];
    slot[..8].copy_from_slice(&MAGIC);
    slot[8..16].copy_from_slice(&generation.to_le_bytes());
    slot[16..24].copy_from_slice(&geometry.zone_blocks.to_le_bytes());
    slot[24..32].copy_from_slice(&geometry.capacity_blocks.to_le_bytes());
    slot[32..40].copy_from_slice(&geometry.zones.to_le_bytes());
    let records = slot[HEADER_BYTES as usize..].chunks_exact_mut(RECORD_BYTES as usize);
    for (record, zone) in records.zip(zones) {
        record[0] = zone.state.code();
        record[8..16].copy_from_slice(&zone.written.to_le_bytes());
    }
    let sum = checksum(&slot);
    slot[CHECKSUM_AT..CHECKSUM_AT + 8].copy_from_slice(&sum.to_le_bytes());
    slot
}

/// Decodes a slot read from the media for `geometry`.
pub fn decode(geometry: &Geometry, slot: &[u8]) -> Slot {
    if slot.get(..8) != Some(&MAGIC[..]) {
        return Slot::Blank;
    }
    let (Some(generation), Some(zone_blocks), Some(capacity_blocks), Some(zones), Some(sum)) = (
        u64_at(slot, 8),
        u64_at(slot, 16),
        u64_at(slot, 24),
        u64_at(slot, 32),
        u64_at(slot, CHECKSUM_AT),
    ) else {
        return Slot::Damaged("short slot");
    };
    if (zone_blocks, capacity_blocks, zones)
        != (
            geometry.zone_blocks,
            geometry.capacity_blocks,
            geometry.zones,
        )
    {
        // The checksum covers a slot of the size its own header names,
        // which may not be the size read: only report the header.
        return Slot::OtherGeometry {
            zone_blocks,
            capacity_blocks,
            zones,
        };
    }
    if slot.len() as u64 != slot_bytes(zones) || checksum(slot) != sum {
        return Slot::Damaged("checksum mismatch");
    }
    let mut table = Vec::with_capacity(zones as usize);
    for record in slot[HEADER_BYTES as usize..]
        .chunks_exact(RECORD_BYTES as usize)
        .take(zones as usize)
    {
        let Some(state) = ZoneState::from_code(record[0]) else {
            return Slot::Damaged("unknown zone state");
        };
        let Some(written) = u64_at(record, 8) else {
            return Slot::Damaged("short record");
        };
        if written > capacity_blocks || (state == ZoneState::Empty && written != 0) {
            return Slot::Damaged("write pointer outside its zone");
        }
        table.push(Zone { state, written });
    }
    Slot::Valid {
        generation,
        zones: table,
    }
}
