//! Log pages: identifiers and the entries dpublk produces.

use super::wire::{Le16, Le32, Le64, Wire};

/// Log page identifiers.
pub mod lid {
    /// Error Information.
    pub const ERROR_INFORMATION: u8 = 0x01;
    /// SMART / Health Information.
    pub const SMART_HEALTH: u8 = 0x02;
    /// Firmware Slot Information.
    pub const FIRMWARE_SLOT: u8 = 0x03;
}

/// Size of the SMART / Health and Firmware Slot log pages.
pub const SMART_LOG_BYTES: usize = 512;
/// Size of the Firmware Slot log page.
pub const FIRMWARE_SLOT_LOG_BYTES: usize = 512;

/// One Error Information log entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErrorLogEntry {
    /// Error count: unique, increasing identifier of this error (0 = empty).
    pub error_count: Le64,
    /// Submission queue of the failed command.
    pub sqid: Le16,
    /// Command identifier of the failed command.
    pub cid: Le16,
    /// Status field of the completion (with the phase tag bit cleared).
    pub status: Le16,
    /// Parameter Error Location: byte (7:0) and bit (10:8) in the command.
    pub parameter_location: Le16,
    /// First LBA that experienced the error.
    pub lba: Le64,
    /// Namespace of the failed command.
    pub nsid: Le32,
    /// Vendor Specific Information Available.
    pub vendor_info: u8,
    /// Transport type.
    pub trtype: u8,
    /// Reserved.
    pub rsvd30: [u8; 2],
    /// Command Specific Information.
    pub command_info: Le64,
    /// Transport Type Specific Information.
    pub transport_info: Le16,
    /// Reserved.
    pub rsvd42: [u8; 22],
}

const _: () = assert!(core::mem::size_of::<ErrorLogEntry>() == 64);

// SAFETY: repr(C) of Le types and u8 arrays: no padding, any bit pattern valid.
unsafe impl Wire for ErrorLogEntry {}

impl ErrorLogEntry {
    /// Parameter Error Location value for "not specific to one field".
    pub const LOCATION_UNKNOWN: u16 = 0xffff;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_entry_layout() {
        let e = ErrorLogEntry {
            error_count: Le64::new(5),
            sqid: Le16::new(1),
            cid: Le16::new(0x22),
            status: Le16::new(0x4002 << 1),
            parameter_location: Le16::new(ErrorLogEntry::LOCATION_UNKNOWN),
            lba: Le64::new(0x99),
            nsid: Le32::new(1),
            ..ErrorLogEntry::default()
        };
        let b = e.as_bytes();
        assert_eq!(b[0], 5);
        assert_eq!(b[8], 1);
        assert_eq!(b[10], 0x22);
        assert_eq!(&b[14..16], &[0xff, 0xff]);
        assert_eq!(b[16], 0x99);
        assert_eq!(b[24], 1);
        assert_eq!(ErrorLogEntry::read_from(b), Some(e));
    }
}
