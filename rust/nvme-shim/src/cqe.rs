//! The 16-byte completion queue entry.

use super::status::Status;
use super::wire::{Le16, Le32, Wire};

/// A completion queue entry as it sits in a completion queue.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompletionEntry {
    /// Command-specific result (DW0).
    pub result: Le32,
    /// DW1 (reserved for most commands).
    pub dw1: Le32,
    /// Submission queue head pointer at the time of completion.
    pub sq_head: Le16,
    /// Submission queue the command came from.
    pub sq_id: Le16,
    /// Command identifier.
    pub cid: Le16,
    /// Phase tag (bit 0) and status field (bits 15:1).
    pub status_phase: Le16,
}

const _: () = assert!(core::mem::size_of::<CompletionEntry>() == 16);

// SAFETY: repr(C) of Le16/Le32 fields only: no padding, any bit pattern valid.
unsafe impl Wire for CompletionEntry {}

impl CompletionEntry {
    /// Size of a completion queue entry in bytes.
    pub const BYTES: usize = 16;
    /// log2 of the entry size, as CC.IOCQES and Identify CQES use it.
    pub const SIZE_SHIFT: u8 = 4;

    /// Builds a completion entry.
    pub fn new(
        cid: u16,
        sq_id: u16,
        sq_head: u16,
        status: Status,
        phase: bool,
        result: u32,
    ) -> Self {
        Self {
            result: Le32::new(result),
            dw1: Le32::new(0),
            sq_head: Le16::new(sq_head),
            sq_id: Le16::new(sq_id),
            cid: Le16::new(cid),
            status_phase: Le16::new((status.0 & 0x7fff) << 1 | phase as u16),
        }
    }

    /// Decodes an entry from its 16 wire bytes.
    pub fn from_bytes(bytes: &[u8; 16]) -> Self {
        Self::read_from(bytes).unwrap_or_default()
    }

    /// Encodes the entry into its 16 wire bytes.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        self.write_to(&mut out);
        out
    }

    /// Phase tag.
    pub const fn phase(&self) -> bool {
        self.status_phase.get() & 1 != 0
    }

    /// Status field.
    pub const fn status(&self) -> Status {
        Status(self.status_phase.get() >> 1)
    }

    /// Command identifier.
    pub const fn command_id(&self) -> u16 {
        self.cid.get()
    }

    /// Submission queue head pointer.
    pub const fn head(&self) -> u16 {
        self.sq_head.get()
    }

    /// Submission queue identifier.
    pub const fn queue(&self) -> u16 {
        self.sq_id.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let cqe = CompletionEntry::new(0x1234, 3, 17, Status::LBA_OUT_OF_RANGE, true, 0xdead_beef);
        assert!(cqe.phase());
        assert_eq!(cqe.status(), Status::LBA_OUT_OF_RANGE);
        assert_eq!(cqe.command_id(), 0x1234);
        assert_eq!(cqe.head(), 17);
        assert_eq!(cqe.queue(), 3);
        let bytes = cqe.to_bytes();
        assert_eq!(&bytes[..4], &0xdead_beefu32.to_le_bytes());
        assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), 17);
        assert_eq!(u16::from_le_bytes([bytes[10], bytes[11]]), 3);
        assert_eq!(u16::from_le_bytes([bytes[12], bytes[13]]), 0x1234);
        // DW3 bits 31:17 are the status field, bit 16 the phase tag.
        let dw3 = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
        assert_eq!(dw3 >> 16 & 1, 1);
        assert_eq!((dw3 >> 17) as u16, Status::LBA_OUT_OF_RANGE.0);
        assert_eq!(CompletionEntry::from_bytes(&bytes), cqe);

        let ok = CompletionEntry::new(1, 0, 0, Status::SUCCESS, false, 0);
        assert!(!ok.phase());
        assert!(ok.status().is_success());
    }
}
