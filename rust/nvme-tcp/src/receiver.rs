//! The receiving side of a connection: which PDUs may arrive now, how long
//! they may be, and the checks that turn bytes into a [`Pdu`].

use super::digest::{self, DIGEST_BYTES};
use super::error::PduError;
use super::header::{
    le16, le32, pda_alignment, CommonHeader, PduType, COMMON_HEADER_BYTES, FLAG_LAST_PDU,
    FLAG_SUCCESS,
};
use super::pdu::{C2HData, CapsuleCmd, CapsuleResp, H2CData, IcReq, IcResp, Pdu, TermReq, R2T};

/// Largest PLEN of a termination request: its header plus the 128-byte
/// header of the PDU in error.
pub const TERM_REQ_MAX_PLEN: u32 = 152;
/// PLEN of ICReq and ICResp.
pub const IC_PLEN: u32 = 128;
/// Smallest MAXH2CDATA a controller may announce.
pub const MIN_MAXH2CDATA: u32 = 4096;
/// Largest HPDA and CPDA.
pub const MAX_PDA: u8 = 31;

/// Which end of the connection receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The controller: receives host PDUs.
    Controller,
    /// The host: receives controller PDUs.
    Host,
}

/// What connection initialization settled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// Header digests on every capsule and data PDU.
    pub header_digest: bool,
    /// Data digests after every data area.
    pub data_digest: bool,
    /// PDA (0-based dwords) the peer aligns the data it sends to: the
    /// controller's CPDA for the host's PDUs, the host's HPDA for the
    /// controller's.
    pub receive_pda: u8,
    /// PDA the peer asked this side to align the data it sends to.
    pub send_pda: u8,
}

/// Where a connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Waiting for ICReq (controller) or ICResp (host).
    Initializing,
    /// Initialized: capsules and data flow.
    Ready(Negotiated),
}

/// Where the parts of a PDU are, from a checked common header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The common header.
    pub header: CommonHeader,
    /// A header digest follows the header.
    pub header_digest: bool,
    /// Offset and length of the data area (length 0 without data).
    pub data: (usize, usize),
    /// A data digest follows the data.
    pub data_digest: bool,
}

impl Layout {
    /// Total PDU length.
    pub const fn plen(&self) -> usize {
        self.header.plen as usize
    }
}

/// Result of the data digest check; a mismatch is not a framing error
/// (the command fails, the connection may go on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataDigest {
    /// No data digest on this PDU.
    Absent,
    /// The digest matched the data.
    Valid,
    /// The digest did not match.
    Invalid { expected: u32, received: u32 },
}

/// A PDU that passed every check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received<'a> {
    /// The PDU.
    pub pdu: Pdu<'a>,
    /// Its data digest.
    pub data_digest: DataDigest,
}

/// The receive rules of one connection end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receiver {
    /// Which end receives.
    pub side: Side,
    /// Where the connection is.
    pub stage: Stage,
    /// Most in-capsule data bytes accepted in a command capsule.
    pub max_capsule_data: u32,
    /// Most data bytes accepted in one H2CData (controller: MAXH2CDATA) or
    /// C2HData (host) PDU.
    pub max_data_pdu: u32,
}

impl Receiver {
    /// A controller's receiver before ICReq.
    pub const fn controller(max_capsule_data: u32, maxh2cdata: u32) -> Self {
        Self {
            side: Side::Controller,
            stage: Stage::Initializing,
            max_capsule_data,
            max_data_pdu: maxh2cdata,
        }
    }

    /// A host's receiver before ICResp.
    pub const fn host(max_c2h_data: u32) -> Self {
        Self {
            side: Side::Host,
            stage: Stage::Initializing,
            max_capsule_data: 0,
            max_data_pdu: max_c2h_data,
        }
    }

    /// The most bytes a PDU can have on this connection now: what a
    /// caller's receive buffer needs.
    pub fn max_plen(&self) -> usize {
        let data = self.max_capsule_data.max(self.max_data_pdu) as usize;
        // Header, header digest, alignment padding, data, data digest.
        128 + DIGEST_BYTES + 128 + data + DIGEST_BYTES
    }

    /// Checks a common header against the stage, the direction and the
    /// limits, before the caller reads the rest of the PDU. The returned
    /// layout's PLEN is bounded by [`Receiver::max_plen`].
    pub fn frame(&self, bytes: &[u8; COMMON_HEADER_BYTES]) -> Result<Layout, PduError> {
        let ch = CommonHeader::decode(bytes)?;
        let t = ch.pdu_type;
        if t.from_host() != (self.side == Side::Controller) {
            return Err(PduError::WrongDirection(t));
        }
        let init = matches!(t, PduType::IcReq | PduType::IcResp);
        let term = matches!(t, PduType::H2CTermReq | PduType::C2HTermReq);
        let negotiated = match self.stage {
            Stage::Initializing if init || term => Negotiated::default(),
            Stage::Ready(_) if init => return Err(PduError::Sequence(t)),
            Stage::Ready(n) => n,
            Stage::Initializing => return Err(PduError::Sequence(t)),
        };
        let hlen = t.header_len();
        if usize::from(ch.hlen) != hlen {
            return Err(PduError::HeaderLength {
                pdu_type: t,
                hlen: ch.hlen,
            });
        }
        let digested = t.digested();
        let header_digest = digested && negotiated.header_digest;
        if ch.header_digest() != header_digest {
            return Err(PduError::DigestFlags {
                pdu_type: t,
                flags: ch.flags,
            });
        }
        let header_end = hlen + if header_digest { DIGEST_BYTES } else { 0 };
        let plen = ch.plen as usize;
        let bad_plen = PduError::PduLength {
            pdu_type: t,
            plen: ch.plen,
        };
        let bad_pdo = PduError::DataOffset {
            pdu_type: t,
            pdo: ch.pdo,
        };
        let mut layout = Layout {
            header: ch,
            header_digest,
            data: (header_end, 0),
            data_digest: false,
        };
        if !t.may_carry_data() || plen == header_end {
            // No data area: the digest flag is clear and PDO is zero.
            let plen_ok = match t {
                PduType::IcReq | PduType::IcResp => ch.plen == IC_PLEN,
                PduType::H2CTermReq | PduType::C2HTermReq => {
                    (hlen..=TERM_REQ_MAX_PLEN as usize).contains(&plen)
                }
                // A data PDU without data says nothing.
                PduType::H2CData | PduType::C2HData => false,
                _ => plen == header_end,
            };
            if !plen_ok {
                return Err(bad_plen);
            }
            if ch.data_digest() {
                return Err(PduError::DigestFlags {
                    pdu_type: t,
                    flags: ch.flags,
                });
            }
            if ch.pdo != 0 {
                return Err(bad_pdo);
            }
            return Ok(layout);
        }
        if plen < header_end {
            return Err(bad_plen);
        }
        let data_digest = digested && negotiated.data_digest;
        if ch.data_digest() != data_digest {
            return Err(PduError::DigestFlags {
                pdu_type: t,
                flags: ch.flags,
            });
        }
        let align = pda_alignment(negotiated.receive_pda);
        let pdo = usize::from(ch.pdo);
        if pdo != header_end.div_ceil(align) * align {
            return Err(bad_pdo);
        }
        let trailer = if data_digest { DIGEST_BYTES } else { 0 };
        let data_len = plen
            .checked_sub(pdo + trailer)
            .filter(|&n| n > 0)
            .ok_or(bad_plen)?;
        let limit = match t {
            PduType::CapsuleCmd => self.max_capsule_data,
            _ => self.max_data_pdu,
        };
        if data_len > limit as usize {
            return Err(PduError::DataLimit {
                pdu_type: t,
                len: u32::try_from(data_len).unwrap_or(u32::MAX),
                limit,
            });
        }
        layout.data = (pdo, data_len);
        layout.data_digest = data_digest;
        Ok(layout)
    }

    /// Parses one whole PDU (exactly its PLEN bytes).
    pub fn parse<'a>(&self, bytes: &'a [u8]) -> Result<Received<'a>, PduError> {
        let ch: &[u8; COMMON_HEADER_BYTES] = bytes.first_chunk().ok_or(PduError::Truncated {
            plen: 0,
            len: bytes.len(),
        })?;
        let layout = self.frame(ch)?;
        if bytes.len() != layout.plen() {
            return Err(PduError::Truncated {
                plen: layout.header.plen,
                len: bytes.len(),
            });
        }
        let t = layout.header.pdu_type;
        let hlen = t.header_len();
        if layout.header_digest {
            let received = le32(bytes, hlen);
            let expected = digest::crc32c(&bytes[..hlen]);
            if received != expected {
                return Err(PduError::HeaderDigest { expected, received });
            }
        }
        let (start, len) = layout.data;
        let data = &bytes[start..start + len];
        let data_digest = if layout.data_digest {
            let received = le32(bytes, start + len);
            let expected = digest::crc32c(data);
            if received == expected {
                DataDigest::Valid
            } else {
                DataDigest::Invalid { expected, received }
            }
        } else {
            DataDigest::Absent
        };
        let pdu = specific(t, layout.header.flags, &bytes[..hlen], data, bytes)?;
        Ok(Received { pdu, data_digest })
    }
}

/// Decodes the PDU-specific header of type `t` (`h` is the whole header,
/// of the type's HLEN) and checks its fields.
fn specific<'a>(
    t: PduType,
    flags: u8,
    h: &'a [u8],
    data: &'a [u8],
    whole: &'a [u8],
) -> Result<Pdu<'a>, PduError> {
    let field = |offset: u32| PduError::Field {
        pdu_type: t,
        offset,
    };
    let data_len_field = |at: usize| {
        if le32(h, at) as usize == data.len() {
            Ok(())
        } else {
            Err(field(at as u32))
        }
    };
    Ok(match t {
        PduType::IcReq | PduType::IcResp => {
            let pfv = le16(h, 8);
            if pfv != 0 {
                return Err(PduError::Unsupported {
                    pdu_type: t,
                    offset: 8,
                });
            }
            let pda = h[10];
            if pda > MAX_PDA {
                return Err(field(10));
            }
            let (header_digest, data_digest) = (h[11] & 1 != 0, h[11] & 2 != 0);
            let value = le32(h, 12);
            if t == PduType::IcReq {
                Pdu::IcReq(IcReq {
                    pfv,
                    hpda: pda,
                    header_digest,
                    data_digest,
                    maxr2t: value,
                })
            } else {
                if value < MIN_MAXH2CDATA || value & 3 != 0 {
                    return Err(field(12));
                }
                Pdu::IcResp(IcResp {
                    pfv,
                    cpda: pda,
                    header_digest,
                    data_digest,
                    maxh2cdata: value,
                })
            }
        }
        PduType::H2CTermReq | PduType::C2HTermReq => {
            let fes = le16(h, 8);
            if !(1..=6).contains(&fes) {
                return Err(field(8));
            }
            let term = TermReq {
                fes,
                fei: le32(h, 10),
                header_in_error: &whole[h.len()..],
            };
            if t == PduType::H2CTermReq {
                Pdu::H2CTermReq(term)
            } else {
                Pdu::C2HTermReq(term)
            }
        }
        PduType::CapsuleCmd => {
            let sqe = h[8..72].try_into().map_err(|_| field(8))?;
            Pdu::CapsuleCmd(CapsuleCmd { sqe, data })
        }
        PduType::CapsuleResp => {
            let cqe = h[8..24].try_into().map_err(|_| field(8))?;
            Pdu::CapsuleResp(CapsuleResp { cqe })
        }
        PduType::H2CData => {
            data_len_field(16)?;
            Pdu::H2CData(H2CData {
                cccid: le16(h, 8),
                ttag: le16(h, 10),
                datao: le32(h, 12),
                last: flags & FLAG_LAST_PDU != 0,
                data,
            })
        }
        PduType::C2HData => {
            data_len_field(16)?;
            let last = flags & FLAG_LAST_PDU != 0;
            let success = flags & FLAG_SUCCESS != 0;
            if success && !last {
                return Err(PduError::Flags { pdu_type: t, flags });
            }
            Pdu::C2HData(C2HData {
                cccid: le16(h, 8),
                datao: le32(h, 12),
                last,
                success,
                data,
            })
        }
        PduType::R2T => {
            let r2tl = le32(h, 16);
            if r2tl == 0 {
                return Err(field(16));
            }
            Pdu::R2T(R2T {
                cccid: le16(h, 8),
                ttag: le16(h, 10),
                r2to: le32(h, 12),
                r2tl,
            })
        }
    })
}

impl Negotiated {
    /// What a controller settles on for `req`: the digests the host asked
    /// for (both are supported), the host's HPDA for sending, and the
    /// controller's own CPDA for receiving.
    pub const fn for_controller(req: &IcReq, cpda: u8) -> Self {
        Self {
            header_digest: req.header_digest,
            data_digest: req.data_digest,
            receive_pda: cpda,
            send_pda: req.hpda,
        }
    }

    /// What a host settles on from the controller's ICResp (`hpda` is the
    /// alignment the host asked for).
    pub const fn for_host(resp: &IcResp, hpda: u8) -> Self {
        Self {
            header_digest: resp.header_digest,
            data_digest: resp.data_digest,
            receive_pda: hpda,
            send_pda: resp.cpda,
        }
    }
}
