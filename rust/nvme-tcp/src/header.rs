//! The 8-byte common header every PDU starts with, PDU types and flags.

use super::error::PduError;

/// Bytes of the common header.
pub const COMMON_HEADER_BYTES: usize = 8;

/// Flag: a header digest follows the PDU header.
pub const FLAG_HDGST: u8 = 1 << 0;
/// Flag: a data digest follows the PDU data.
pub const FLAG_DDGST: u8 = 1 << 1;
/// Flag of H2CData and C2HData: the last data PDU of the command (or R2T).
pub const FLAG_LAST_PDU: u8 = 1 << 2;
/// Flag of C2HData: the command succeeded and no response capsule follows.
pub const FLAG_SUCCESS: u8 = 1 << 3;

/// The PDU types of NVMe/TCP 1.0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PduType {
    /// Initialize Connection Request (host to controller).
    IcReq,
    /// Initialize Connection Response (controller to host).
    IcResp,
    /// Host to Controller Terminate Connection Request.
    H2CTermReq,
    /// Controller to Host Terminate Connection Request.
    C2HTermReq,
    /// Command capsule (host to controller).
    CapsuleCmd,
    /// Response capsule (controller to host).
    CapsuleResp,
    /// Host to Controller Data.
    H2CData,
    /// Controller to Host Data.
    C2HData,
    /// Ready to Transfer (controller to host).
    R2T,
}

impl PduType {
    /// Decodes the PDU-Type byte.
    pub const fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            0x00 => Self::IcReq,
            0x01 => Self::IcResp,
            0x02 => Self::H2CTermReq,
            0x03 => Self::C2HTermReq,
            0x04 => Self::CapsuleCmd,
            0x05 => Self::CapsuleResp,
            0x06 => Self::H2CData,
            0x07 => Self::C2HData,
            0x09 => Self::R2T,
            _ => return None,
        })
    }

    /// The PDU-Type byte.
    pub const fn as_u8(self) -> u8 {
        match self {
            Self::IcReq => 0x00,
            Self::IcResp => 0x01,
            Self::H2CTermReq => 0x02,
            Self::C2HTermReq => 0x03,
            Self::CapsuleCmd => 0x04,
            Self::CapsuleResp => 0x05,
            Self::H2CData => 0x06,
            Self::C2HData => 0x07,
            Self::R2T => 0x09,
        }
    }

    /// The header length (HLEN) the specification fixes for this type:
    /// common header plus PDU-specific header, digest not included.
    pub const fn header_len(self) -> usize {
        match self {
            Self::IcReq | Self::IcResp => 128,
            Self::CapsuleCmd => 72,
            Self::H2CTermReq
            | Self::C2HTermReq
            | Self::CapsuleResp
            | Self::H2CData
            | Self::C2HData
            | Self::R2T => 24,
        }
    }

    /// Whether this type is sent by the host (else by the controller).
    pub const fn from_host(self) -> bool {
        matches!(
            self,
            Self::IcReq | Self::H2CTermReq | Self::CapsuleCmd | Self::H2CData
        )
    }

    /// Whether a PDU of this type may carry a data area.
    pub const fn may_carry_data(self) -> bool {
        matches!(self, Self::CapsuleCmd | Self::H2CData | Self::C2HData)
    }

    /// Whether digests, once negotiated, apply to this type. Connection
    /// setup and termination PDUs never carry digests.
    pub const fn digested(self) -> bool {
        !matches!(
            self,
            Self::IcReq | Self::IcResp | Self::H2CTermReq | Self::C2HTermReq
        )
    }
}

/// A decoded common header. Only the type is checked by
/// [`CommonHeader::decode`]; the lengths are checked by the receiver,
/// which knows the connection's stage and limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommonHeader {
    /// PDU type.
    pub pdu_type: PduType,
    /// Flags (`FLAG_*`).
    pub flags: u8,
    /// Header length: common header plus PDU-specific header.
    pub hlen: u8,
    /// PDU data offset from the start of the PDU, 0 without data.
    pub pdo: u8,
    /// Total PDU length, digests and padding included.
    pub plen: u32,
}

impl CommonHeader {
    /// Decodes the first 8 bytes of a PDU.
    pub fn decode(bytes: &[u8; COMMON_HEADER_BYTES]) -> Result<Self, PduError> {
        let pdu_type = PduType::from_u8(bytes[0]).ok_or(PduError::UnknownType(bytes[0]))?;
        Ok(Self {
            pdu_type,
            flags: bytes[1],
            hlen: bytes[2],
            pdo: bytes[3],
            plen: u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        })
    }

    /// Encodes the common header.
    pub fn encode(&self) -> [u8; COMMON_HEADER_BYTES] {
        let p = self.plen.to_le_bytes();
        [
            self.pdu_type.as_u8(),
            self.flags,
            self.hlen,
            self.pdo,
            p[0],
            p[1],
            p[2],
            p[3],
        ]
    }

    /// Whether the header digest flag is set.
    pub const fn header_digest(&self) -> bool {
        self.flags & FLAG_HDGST != 0
    }

    /// Whether the data digest flag is set.
    pub const fn data_digest(&self) -> bool {
        self.flags & FLAG_DDGST != 0
    }
}

/// The byte alignment a PDA value (HPDA or CPDA, 0-based dwords) asks for.
pub const fn pda_alignment(pda: u8) -> usize {
    (pda as usize + 1) * 4
}

/// Reads a little-endian u16 at `at` (the caller has checked the length).
pub(crate) fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// Reads a little-endian u32 at `at` (the caller has checked the length).
pub(crate) fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_round_trip_and_reject_unknown() {
        for v in 0..=255u8 {
            match PduType::from_u8(v) {
                Some(t) => assert_eq!(t.as_u8(), v),
                None => assert!(v == 0x08 || v > 0x09, "type {v:#x}"),
            }
        }
        let ch = CommonHeader {
            pdu_type: PduType::R2T,
            flags: FLAG_HDGST,
            hlen: 24,
            pdo: 0,
            plen: 28,
        };
        assert_eq!(ch.encode(), [9, 1, 24, 0, 28, 0, 0, 0]);
        assert_eq!(CommonHeader::decode(&ch.encode()), Ok(ch));
        assert_eq!(
            CommonHeader::decode(&[0x08, 0, 24, 0, 24, 0, 0, 0]),
            Err(PduError::UnknownType(8))
        );
        assert_eq!(pda_alignment(0), 4);
        assert_eq!(pda_alignment(31), 128);
    }
}
