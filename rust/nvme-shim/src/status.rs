//! Completion status codes.
//!
//! A [`Status`] is the 15-bit Status Field of a completion queue entry:
//! Status Code (bits 7:0), Status Code Type (10:8), Command Retry Delay
//! (12:11), More (13) and Do Not Retry (14). The phase tag is not part of it.

/// Status Code Type values.
pub mod sct {
    /// Generic Command Status.
    pub const GENERIC: u8 = 0x0;
    /// Command Specific Status.
    pub const COMMAND_SPECIFIC: u8 = 0x1;
    /// Media and Data Integrity Errors.
    pub const MEDIA: u8 = 0x2;
    /// Path Related Status.
    pub const PATH: u8 = 0x3;
    /// Vendor Specific (the dpublk vendor statuses, see `super::super::vendor`).
    pub const VENDOR: u8 = 0x7;
}

/// A completion status field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Status(pub u16);

impl Status {
    /// Do Not Retry bit.
    pub const DNR: u16 = 1 << 14;
    /// More bit.
    pub const MORE: u16 = 1 << 13;

    /// Builds a status from its type and code, without DNR.
    pub const fn new(sct: u8, sc: u8) -> Self {
        Self(((sct as u16 & 0x7) << 8) | sc as u16)
    }

    /// Builds a status from its type and code with Do Not Retry set.
    pub const fn dnr(sct: u8, sc: u8) -> Self {
        Self(Self::new(sct, sc).0 | Self::DNR)
    }

    /// Returns this status with Do Not Retry set.
    pub const fn with_dnr(self) -> Self {
        Self(self.0 | Self::DNR)
    }

    /// Status Code.
    pub const fn sc(self) -> u8 {
        self.0 as u8
    }

    /// Status Code Type.
    pub const fn sct(self) -> u8 {
        ((self.0 >> 8) & 0x7) as u8
    }

    /// Command Retry Delay index.
    pub const fn crd(self) -> u8 {
        ((self.0 >> 11) & 0x3) as u8
    }

    /// Whether the host must not retry the command.
    pub const fn do_not_retry(self) -> bool {
        self.0 & Self::DNR != 0
    }

    /// Whether the status reports success (type and code zero).
    pub const fn is_success(self) -> bool {
        self.0 & 0x7ff == 0
    }

    /// Whether two statuses have the same type and code (ignoring DNR,
    /// More and CRD).
    pub const fn same_code(self, other: Status) -> bool {
        self.0 & 0x7ff == other.0 & 0x7ff
    }

    /// Successful Completion.
    pub const SUCCESS: Status = Status(0);
    /// Invalid Command Opcode.
    pub const INVALID_OPCODE: Status = Status::dnr(sct::GENERIC, 0x01);
    /// Invalid Field in Command.
    pub const INVALID_FIELD: Status = Status::dnr(sct::GENERIC, 0x02);
    /// Command ID Conflict.
    pub const COMMAND_ID_CONFLICT: Status = Status::dnr(sct::GENERIC, 0x03);
    /// Data Transfer Error (also: a data pointer outside host memory).
    pub const DATA_TRANSFER_ERROR: Status = Status::new(sct::GENERIC, 0x04);
    /// Internal Error.
    pub const INTERNAL_ERROR: Status = Status::new(sct::GENERIC, 0x06);
    /// Command Abort Requested.
    pub const ABORT_REQUESTED: Status = Status::new(sct::GENERIC, 0x07);
    /// Command Aborted due to SQ Deletion.
    pub const ABORTED_SQ_DELETION: Status = Status::new(sct::GENERIC, 0x08);
    /// Invalid Namespace or Format.
    pub const INVALID_NAMESPACE: Status = Status::dnr(sct::GENERIC, 0x0b);
    /// Command Sequence Error.
    pub const COMMAND_SEQUENCE_ERROR: Status = Status::dnr(sct::GENERIC, 0x0c);
    /// Invalid SGL Segment Descriptor.
    pub const INVALID_SGL_SEGMENT: Status = Status::dnr(sct::GENERIC, 0x0d);
    /// Invalid Number of SGL Descriptors.
    pub const INVALID_SGL_COUNT: Status = Status::dnr(sct::GENERIC, 0x0e);
    /// Data SGL Length Invalid.
    pub const SGL_LENGTH_INVALID: Status = Status::dnr(sct::GENERIC, 0x0f);
    /// SGL Descriptor Type Invalid.
    pub const SGL_TYPE_INVALID: Status = Status::dnr(sct::GENERIC, 0x11);
    /// PRP Offset Invalid.
    pub const PRP_OFFSET_INVALID: Status = Status::dnr(sct::GENERIC, 0x13);
    /// LBA Out of Range.
    pub const LBA_OUT_OF_RANGE: Status = Status::dnr(sct::GENERIC, 0x80);
    /// Capacity Exceeded: the namespace has no space left for the write
    /// (a thin pool is full); Linux maps it to `-ENOSPC`.
    pub const CAPACITY_EXCEEDED: Status = Status::dnr(sct::GENERIC, 0x81);
    /// Namespace Not Ready.
    pub const NAMESPACE_NOT_READY: Status = Status::new(sct::GENERIC, 0x82);

    /// Completion Queue Invalid.
    pub const CQ_INVALID: Status = Status::dnr(sct::COMMAND_SPECIFIC, 0x00);
    /// Invalid Queue Identifier.
    pub const INVALID_QUEUE_ID: Status = Status::dnr(sct::COMMAND_SPECIFIC, 0x01);
    /// Invalid Queue Size.
    pub const INVALID_QUEUE_SIZE: Status = Status::dnr(sct::COMMAND_SPECIFIC, 0x02);
    /// Asynchronous Event Request Limit Exceeded.
    pub const AER_LIMIT_EXCEEDED: Status = Status::dnr(sct::COMMAND_SPECIFIC, 0x05);
    /// Invalid Interrupt Vector.
    pub const INVALID_INTERRUPT_VECTOR: Status = Status::dnr(sct::COMMAND_SPECIFIC, 0x08);
    /// Invalid Log Page.
    pub const INVALID_LOG_PAGE: Status = Status::dnr(sct::COMMAND_SPECIFIC, 0x09);
    /// Invalid Queue Deletion.
    pub const INVALID_QUEUE_DELETION: Status = Status::dnr(sct::COMMAND_SPECIFIC, 0x0c);
    /// Feature Identifier Not Saveable.
    pub const FEATURE_NOT_SAVEABLE: Status = Status::dnr(sct::COMMAND_SPECIFIC, 0x0d);

    /// Write Fault (media).
    pub const WRITE_FAULT: Status = Status::new(sct::MEDIA, 0x80);
    /// Unrecovered Read Error (media).
    pub const UNRECOVERED_READ_ERROR: Status = Status::new(sct::MEDIA, 0x81);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields() {
        let s = Status::INVALID_QUEUE_ID;
        assert_eq!((s.sct(), s.sc()), (1, 1));
        assert!(s.do_not_retry());
        assert!(!s.is_success());
        assert!(Status::SUCCESS.is_success());
        assert!(Status(Status::DNR).is_success());
        assert!(!Status::DATA_TRANSFER_ERROR.do_not_retry());
        assert_eq!(Status::DATA_TRANSFER_ERROR.with_dnr().0, 0x4004);
        assert!(Status::DATA_TRANSFER_ERROR.same_code(Status::DATA_TRANSFER_ERROR.with_dnr()));
        assert_eq!(Status::WRITE_FAULT.0, 0x0280);
        assert_eq!(Status(3 << 11).crd(), 3);
        assert_eq!(Status::new(sct::VENDOR, 0x30).0, 0x0730);
    }
}
