//! Why a PDU was refused, and the termination request it calls for.

use super::header::PduType;

/// Fatal Error Status values of H2CTermReq and C2HTermReq.
pub mod fes {
    /// Invalid PDU Header Field.
    pub const INVALID_HEADER_FIELD: u16 = 0x01;
    /// PDU Sequence Error.
    pub const SEQUENCE_ERROR: u16 = 0x02;
    /// Header Digest Error.
    pub const HEADER_DIGEST_ERROR: u16 = 0x03;
    /// Data Transfer Out of Range.
    pub const DATA_OUT_OF_RANGE: u16 = 0x04;
    /// Data Transfer Limit Exceeded (or R2T Limit Exceeded).
    pub const DATA_LIMIT_EXCEEDED: u16 = 0x05;
    /// Unsupported Parameter.
    pub const UNSUPPORTED_PARAMETER: u16 = 0x06;
}

/// Byte offsets of common-header fields, used as Fatal Error Information.
pub mod field {
    /// PDU-Type.
    pub const TYPE: u32 = 0;
    /// FLAGS.
    pub const FLAGS: u32 = 1;
    /// HLEN.
    pub const HLEN: u32 = 2;
    /// PDO.
    pub const PDO: u32 = 3;
    /// PLEN.
    pub const PLEN: u32 = 4;
}

/// A PDU the receiver refuses. Each one ends the connection with a
/// termination request ([`PduError::fes`], [`PduError::fei`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PduError {
    /// The PDU-Type byte names no PDU type.
    UnknownType(u8),
    /// A PDU type the other side sends (a controller got a controller PDU).
    WrongDirection(PduType),
    /// A PDU that is not allowed at this point of the connection (a data
    /// PDU before the connection is initialized, a second ICReq).
    Sequence(PduType),
    /// HLEN is not the type's fixed header length.
    HeaderLength { pdu_type: PduType, hlen: u8 },
    /// PLEN is impossible for the type and flags (shorter than the header
    /// and digests, or longer than the type allows).
    PduLength { pdu_type: PduType, plen: u32 },
    /// The data area is larger than this receiver accepts.
    DataLimit {
        pdu_type: PduType,
        len: u32,
        limit: u32,
    },
    /// PDO is inconsistent with HLEN, PLEN, the digests or the alignment.
    DataOffset { pdu_type: PduType, pdo: u8 },
    /// A digest flag differs from what the connection negotiated.
    DigestFlags { pdu_type: PduType, flags: u8 },
    /// Another flag is invalid for the type (SUCCESS without LAST_PDU).
    Flags { pdu_type: PduType, flags: u8 },
    /// The header digest does not match the header.
    HeaderDigest { expected: u32, received: u32 },
    /// A PDU-specific field is invalid; `offset` is its byte offset.
    Field { pdu_type: PduType, offset: u32 },
    /// A PDU-specific field holds a value this implementation does not
    /// support (a PDU format version other than 0).
    Unsupported { pdu_type: PduType, offset: u32 },
    /// The buffer handed to the parser is not the PDU's PLEN bytes.
    Truncated { plen: u32, len: usize },
}

impl PduError {
    /// Fatal Error Status for the termination request.
    pub const fn fes(&self) -> u16 {
        match self {
            Self::Sequence(_) => fes::SEQUENCE_ERROR,
            Self::HeaderDigest { .. } => fes::HEADER_DIGEST_ERROR,
            Self::DataLimit { .. } => fes::DATA_LIMIT_EXCEEDED,
            Self::Unsupported { .. } => fes::UNSUPPORTED_PARAMETER,
            Self::UnknownType(_)
            | Self::WrongDirection(_)
            | Self::HeaderLength { .. }
            | Self::PduLength { .. }
            | Self::DataOffset { .. }
            | Self::DigestFlags { .. }
            | Self::Flags { .. }
            | Self::Field { .. }
            | Self::Truncated { .. } => fes::INVALID_HEADER_FIELD,
        }
    }

    /// Fatal Error Information: for an invalid header field, the byte
    /// offset of the field in the PDU header; otherwise 0 (reserved).
    pub const fn fei(&self) -> u32 {
        match self {
            Self::UnknownType(_) | Self::WrongDirection(_) => field::TYPE,
            Self::HeaderLength { .. } => field::HLEN,
            Self::PduLength { .. } | Self::Truncated { .. } => field::PLEN,
            Self::DataOffset { .. } => field::PDO,
            Self::DigestFlags { .. } | Self::Flags { .. } => field::FLAGS,
            Self::Field { offset, .. } | Self::Unsupported { offset, .. } => *offset,
            Self::Sequence(_) | Self::HeaderDigest { .. } | Self::DataLimit { .. } => 0,
        }
    }
}

impl core::fmt::Display for PduError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::UnknownType(t) => write!(f, "unknown PDU type {t:#04x}"),
            Self::WrongDirection(t) => write!(f, "{t:?} sent in the wrong direction"),
            Self::Sequence(t) => write!(f, "{t:?} out of sequence"),
            Self::HeaderLength { pdu_type, hlen } => write!(f, "{pdu_type:?}: HLEN {hlen}"),
            Self::PduLength { pdu_type, plen } => write!(f, "{pdu_type:?}: PLEN {plen}"),
            Self::DataLimit {
                pdu_type,
                len,
                limit,
            } => write!(f, "{pdu_type:?}: {len} data bytes, limit {limit}"),
            Self::DataOffset { pdu_type, pdo } => write!(f, "{pdu_type:?}: PDO {pdo}"),
            Self::DigestFlags { pdu_type, flags } => {
                write!(
                    f,
                    "{pdu_type:?}: digest flags {flags:#04x} differ from the negotiated ones"
                )
            }
            Self::Flags { pdu_type, flags } => write!(f, "{pdu_type:?}: flags {flags:#04x}"),
            Self::HeaderDigest { expected, received } => write!(
                f,
                "header digest {received:#010x}, expected {expected:#010x}"
            ),
            Self::Field { pdu_type, offset } => {
                write!(f, "{pdu_type:?}: invalid field at byte {offset}")
            }
            Self::Unsupported { pdu_type, offset } => {
                write!(f, "{pdu_type:?}: unsupported value at byte {offset}")
            }
            Self::Truncated { plen, len } => write!(f, "PDU of PLEN {plen} given as {len} bytes"),
        }
    }
}
