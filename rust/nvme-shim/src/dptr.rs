//! Data pointers: PRP entries and lists, and SGL descriptors.
//!
//! The helpers here do the arithmetic only. Walking a PRP list or an SGL
//! segment chain reads host memory and is left to the receiver, which must
//! bound the walk (see `Documentation/device-interface.rst`).

use super::wire::{Le32, Le64, Wire};

/// PRP or SGL for Data Transfer (CDW0 bits 15:14).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Psdt {
    /// PRPs.
    Prp,
    /// SGLs; the metadata pointer is a contiguous buffer.
    SglContiguousMetadata,
    /// SGLs; the metadata pointer is an SGL segment.
    SglDescriptorMetadata,
    /// Reserved encoding.
    Reserved,
}

impl Psdt {
    /// Decodes the two-bit field.
    pub const fn from_bits(bits: u8) -> Self {
        match bits & 0x3 {
            0 => Psdt::Prp,
            1 => Psdt::SglContiguousMetadata,
            2 => Psdt::SglDescriptorMetadata,
            _ => Psdt::Reserved,
        }
    }

    /// Encodes the two-bit field.
    pub const fn bits(self) -> u8 {
        match self {
            Psdt::Prp => 0,
            Psdt::SglContiguousMetadata => 1,
            Psdt::SglDescriptorMetadata => 2,
            Psdt::Reserved => 3,
        }
    }
}

/// Offset of `addr` within its memory page of `page_size` bytes (a power of
/// two).
pub const fn page_offset(addr: u64, page_size: u64) -> u64 {
    addr & (page_size - 1)
}

/// Whether a PRP entry has a valid offset: PRP entries must be dword
/// aligned, and all entries after the first must be page aligned.
pub const fn prp_offset_valid(addr: u64, first: bool, page_size: u64) -> bool {
    if first {
        addr & 0x3 == 0
    } else {
        page_offset(addr, page_size) == 0
    }
}

/// Bytes covered by PRP entry 1 for a transfer of `len` bytes.
pub const fn prp1_len(prp1: u64, len: u64, page_size: u64) -> u64 {
    let room = page_size - page_offset(prp1, page_size);
    if len < room {
        len
    } else {
        room
    }
}

/// Number of PRP entries (memory pages) a transfer of `len` bytes starting
/// at `prp1` touches.
pub const fn prp_count(prp1: u64, len: u64, page_size: u64) -> u64 {
    if len == 0 {
        return 0;
    }
    let first = prp1_len(prp1, len, page_size);
    1 + (len - first).div_ceil(page_size)
}

/// How PRP entry 2 is interpreted for a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prp2Use {
    /// PRP entry 1 covers the whole transfer.
    Unused,
    /// PRP entry 2 is the second (and last) data page.
    DataPage,
    /// PRP entry 2 points to a PRP list.
    List,
}

/// Returns how PRP entry 2 is used for a transfer of `len` bytes.
pub const fn prp2_use(prp1: u64, len: u64, page_size: u64) -> Prp2Use {
    match prp_count(prp1, len, page_size) {
        0 | 1 => Prp2Use::Unused,
        2 => Prp2Use::DataPage,
        _ => Prp2Use::List,
    }
}

/// Number of 8-byte entries in a PRP list page that starts at `list_addr`
/// (a list that does not start on a page boundary holds fewer).
pub const fn prp_list_entries(list_addr: u64, page_size: u64) -> u64 {
    (page_size - page_offset(list_addr, page_size)) / 8
}

/// SGL descriptor types (the high nibble of the SGL identifier).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SglKind {
    /// A data block.
    DataBlock,
    /// A bit bucket: read data is discarded.
    BitBucket,
    /// A segment: points to the next list of descriptors.
    Segment,
    /// The last segment: points to the final list of descriptors.
    LastSegment,
    /// Keyed data block (fabrics only).
    KeyedDataBlock,
    /// Transport data block (fabrics only).
    TransportDataBlock,
}

impl SglKind {
    /// Decodes the descriptor type nibble.
    pub const fn from_type(ty: u8) -> Option<Self> {
        match ty {
            0x0 => Some(SglKind::DataBlock),
            0x1 => Some(SglKind::BitBucket),
            0x2 => Some(SglKind::Segment),
            0x3 => Some(SglKind::LastSegment),
            0x4 => Some(SglKind::KeyedDataBlock),
            0x5 => Some(SglKind::TransportDataBlock),
            _ => None,
        }
    }

    /// Encodes the descriptor type nibble.
    pub const fn to_type(self) -> u8 {
        match self {
            SglKind::DataBlock => 0x0,
            SglKind::BitBucket => 0x1,
            SglKind::Segment => 0x2,
            SglKind::LastSegment => 0x3,
            SglKind::KeyedDataBlock => 0x4,
            SglKind::TransportDataBlock => 0x5,
        }
    }
}

/// SGL descriptor subtype: the address field is an address.
pub const SGL_SUBTYPE_ADDRESS: u8 = 0x0;
/// SGL descriptor subtype: the address field is an offset.
pub const SGL_SUBTYPE_OFFSET: u8 = 0x1;

/// A 16-byte SGL descriptor.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SglDescriptor {
    /// Address of the data block or of the next segment.
    pub address: Le64,
    /// Length in bytes of the data block or of the next segment.
    pub length: Le32,
    /// Reserved.
    pub reserved: [u8; 3],
    /// Descriptor type (7:4) and subtype (3:0).
    pub sgl_id: u8,
}

const _: () = assert!(core::mem::size_of::<SglDescriptor>() == 16);

// SAFETY: repr(C) of Le64, Le32 and u8 fields: no padding, any bit pattern
// valid.
unsafe impl Wire for SglDescriptor {}

impl SglDescriptor {
    /// Size of a descriptor in bytes.
    pub const BYTES: usize = 16;

    /// Builds a descriptor of `kind` with an address subtype.
    pub const fn new(kind: SglKind, address: u64, length: u32) -> Self {
        Self {
            address: Le64::new(address),
            length: Le32::new(length),
            reserved: [0; 3],
            sgl_id: kind.to_type() << 4 | SGL_SUBTYPE_ADDRESS,
        }
    }

    /// A data block descriptor.
    pub const fn data_block(address: u64, length: u32) -> Self {
        Self::new(SglKind::DataBlock, address, length)
    }

    /// A bit bucket descriptor.
    pub const fn bit_bucket(length: u32) -> Self {
        Self::new(SglKind::BitBucket, 0, length)
    }

    /// A segment descriptor pointing to `count` descriptors at `address`.
    pub const fn segment(address: u64, count: u32, last: bool) -> Self {
        let kind = if last {
            SglKind::LastSegment
        } else {
            SglKind::Segment
        };
        Self::new(kind, address, count.saturating_mul(Self::BYTES as u32))
    }

    /// Decodes a descriptor from its 16 wire bytes.
    pub fn from_bytes(bytes: &[u8; 16]) -> Self {
        Self::read_from(bytes).unwrap_or_default()
    }

    /// Encodes the descriptor into its 16 wire bytes.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        self.write_to(&mut out);
        out
    }

    /// Descriptor type, or `None` for a reserved type.
    pub const fn kind(&self) -> Option<SglKind> {
        SglKind::from_type(self.sgl_id >> 4)
    }

    /// Descriptor subtype.
    pub const fn subtype(&self) -> u8 {
        self.sgl_id & 0xf
    }

    /// Number of whole descriptors a segment descriptor points to, or
    /// `None` if the segment length is zero or not a multiple of 16.
    pub const fn segment_descriptors(&self) -> Option<u32> {
        let len = self.length.get();
        if len == 0 || len & (Self::BYTES as u32 - 1) != 0 {
            None
        } else {
            Some(len / Self::BYTES as u32)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 4096;

    #[test]
    fn psdt_round_trip() {
        for bits in 0..4u8 {
            assert_eq!(Psdt::from_bits(bits).bits(), bits);
        }
        assert_eq!(Psdt::from_bits(4), Psdt::Prp);
    }

    #[test]
    fn prp_math() {
        assert_eq!(page_offset(0x1234, PAGE), 0x234);
        assert!(prp_offset_valid(0x1004, true, PAGE));
        assert!(!prp_offset_valid(0x1002, true, PAGE));
        assert!(!prp_offset_valid(0x1004, false, PAGE));
        assert!(prp_offset_valid(0x2000, false, PAGE));

        assert_eq!(prp1_len(0x1000, 512, PAGE), 512);
        assert_eq!(prp1_len(0x1e00, 4096, PAGE), 512);
        assert_eq!(prp_count(0x1000, 0, PAGE), 0);
        assert_eq!(prp_count(0x1000, 4096, PAGE), 1);
        assert_eq!(prp_count(0x1e00, 4096, PAGE), 2);
        assert_eq!(prp_count(0x1000, 8192, PAGE), 2);
        assert_eq!(prp_count(0x1000, 8193, PAGE), 3);
        assert_eq!(prp_count(0x1000, 128 * 1024, PAGE), 32);
        assert_eq!(prp_count(0x1800, 128 * 1024, PAGE), 33);

        assert_eq!(prp2_use(0x1000, 4096, PAGE), Prp2Use::Unused);
        assert_eq!(prp2_use(0x1000, 8192, PAGE), Prp2Use::DataPage);
        assert_eq!(prp2_use(0x1e00, 4096, PAGE), Prp2Use::DataPage);
        assert_eq!(prp2_use(0x1000, 8193, PAGE), Prp2Use::List);

        assert_eq!(prp_list_entries(0x5000, PAGE), 512);
        assert_eq!(prp_list_entries(0x5ff8, PAGE), 1);
        assert_eq!(prp_list_entries(0x5800, PAGE), 256);
    }

    #[test]
    fn sgl_descriptors() {
        let d = SglDescriptor::data_block(0xabcd_0000, 4096);
        assert_eq!(d.kind(), Some(SglKind::DataBlock));
        assert_eq!(d.subtype(), SGL_SUBTYPE_ADDRESS);
        let bytes = d.to_bytes();
        assert_eq!(bytes[15], 0x00);
        assert_eq!(&bytes[8..12], &4096u32.to_le_bytes());
        assert_eq!(SglDescriptor::from_bytes(&bytes), d);

        let s = SglDescriptor::segment(0x1000, 4, false);
        assert_eq!(s.kind(), Some(SglKind::Segment));
        assert_eq!(s.to_bytes()[15], 0x20);
        assert_eq!(s.segment_descriptors(), Some(4));
        let l = SglDescriptor::segment(0x1000, 2, true);
        assert_eq!(l.to_bytes()[15], 0x30);
        assert_eq!(l.segment_descriptors(), Some(2));
        let b = SglDescriptor::bit_bucket(512);
        assert_eq!(b.kind(), Some(SglKind::BitBucket));
        assert_eq!(b.length.get(), 512);

        let mut odd = s;
        odd.length.set(17);
        assert_eq!(odd.segment_descriptors(), None);
        odd.length.set(0);
        assert_eq!(odd.segment_descriptors(), None);

        for ty in 0..16u8 {
            match SglKind::from_type(ty) {
                Some(kind) => assert_eq!(kind.to_type(), ty),
                None => assert!(ty > 5),
            }
        }
        let mut reserved = d;
        reserved.sgl_id = 0xf0;
        assert_eq!(reserved.kind(), None);
    }
}
