//! Building PDUs. Each function returns the PDU's header part (common
//! header, PDU-specific header, header digest, padding up to PDO) in a
//! [`HeaderBuf`]; the sender follows it with the data and, when the
//! connection negotiated data digests and there is data, with
//! [`data_digest`] of the data. [`assemble`] does all three into one
//! buffer.

use super::digest::{self, DIGEST_BYTES};
use super::error::PduError;
use super::header::{
    pda_alignment, CommonHeader, PduType, FLAG_DDGST, FLAG_HDGST, FLAG_LAST_PDU, FLAG_SUCCESS,
};
use super::pdu::{IcReq, IcResp};
use super::receiver::{Negotiated, IC_PLEN, TERM_REQ_MAX_PLEN};

/// Room for the largest header part: 128 header bytes, a digest and up to
/// 128 bytes of padding (the largest PDA).
pub const MAX_HEADER_PART: usize = 128 + DIGEST_BYTES + 128;

/// The header part of a PDU.
#[derive(Clone, Copy, Debug)]
pub struct HeaderBuf {
    bytes: [u8; MAX_HEADER_PART],
    len: usize,
    data_len: usize,
    data_digest: bool,
}

impl HeaderBuf {
    /// The bytes to send before the data.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Data bytes that must follow.
    pub const fn data_len(&self) -> usize {
        self.data_len
    }

    /// Whether a data digest must follow the data.
    pub const fn data_digest(&self) -> bool {
        self.data_digest
    }

    /// Total PDU length.
    pub const fn plen(&self) -> usize {
        self.len + self.data_len + if self.data_digest { DIGEST_BYTES } else { 0 }
    }
}

/// The 4 bytes of a data digest over `data`.
pub fn data_digest(data: &[u8]) -> [u8; DIGEST_BYTES] {
    digest::crc32c(data).to_le_bytes()
}

/// Writes a whole PDU (`header`, `data`, the data digest if due) into
/// `out`; returns its length, or `None` if `out` is too small or `data` is
/// not the length the header announced.
pub fn assemble(out: &mut [u8], header: &HeaderBuf, data: &[u8]) -> Option<usize> {
    if data.len() != header.data_len {
        return None;
    }
    let total = header.plen();
    let out = out.get_mut(..total)?;
    let (head, rest) = out.split_at_mut(header.len);
    head.copy_from_slice(header.as_bytes());
    let (body, trailer) = rest.split_at_mut(data.len());
    body.copy_from_slice(data);
    if header.data_digest {
        trailer.copy_from_slice(&data_digest(data));
    }
    Some(total)
}

/// Lays out a PDU of type `t` with PDU-specific header `psh` (bytes 8..HLEN)
/// and `data_len` data bytes.
fn build(
    t: PduType,
    flags: u8,
    psh: &[u8],
    data_len: usize,
    negotiated: Option<&Negotiated>,
) -> Result<HeaderBuf, PduError> {
    let hlen = t.header_len();
    let digested = t.digested() && negotiated.is_some();
    let header_digest = digested && negotiated.is_some_and(|n| n.header_digest);
    let data_digest = digested && data_len > 0 && negotiated.is_some_and(|n| n.data_digest);
    let header_end = hlen + if header_digest { DIGEST_BYTES } else { 0 };
    let pdo = if data_len > 0 {
        let align = pda_alignment(negotiated.map_or(0, |n| n.send_pda));
        header_end.div_ceil(align) * align
    } else {
        0
    };
    let head_len = if data_len > 0 { pdo } else { header_end };
    let too_long = PduError::PduLength {
        pdu_type: t,
        plen: u32::MAX,
    };
    let plen = head_len
        .checked_add(data_len)
        .and_then(|n| n.checked_add(if data_digest { DIGEST_BYTES } else { 0 }))
        .and_then(|n| u32::try_from(n).ok())
        .ok_or(too_long)?;
    let mut flags = flags;
    if header_digest {
        flags |= FLAG_HDGST;
    }
    if data_digest {
        flags |= FLAG_DDGST;
    }
    let ch = CommonHeader {
        pdu_type: t,
        flags,
        hlen: hlen as u8,
        pdo: u8::try_from(pdo).map_err(|_| PduError::DataOffset {
            pdu_type: t,
            pdo: u8::MAX,
        })?,
        plen,
    };
    let mut buf = HeaderBuf {
        bytes: [0; MAX_HEADER_PART],
        len: head_len,
        data_len,
        data_digest,
    };
    buf.bytes[..8].copy_from_slice(&ch.encode());
    let n = psh.len().min(hlen - 8);
    buf.bytes[8..8 + n].copy_from_slice(&psh[..n]);
    if header_digest {
        let d = digest::crc32c(&buf.bytes[..hlen]);
        buf.bytes[hlen..hlen + DIGEST_BYTES].copy_from_slice(&d.to_le_bytes());
    }
    Ok(buf)
}

fn ic(t: PduType, pda: u8, hd: bool, dd: bool, value: u32) -> HeaderBuf {
    let mut psh = [0u8; 120];
    psh[2] = pda;
    psh[3] = u8::from(hd) | u8::from(dd) << 1;
    psh[4..8].copy_from_slice(&value.to_le_bytes());
    let mut buf = HeaderBuf {
        bytes: [0; MAX_HEADER_PART],
        len: IC_PLEN as usize,
        data_len: 0,
        data_digest: false,
    };
    let ch = CommonHeader {
        pdu_type: t,
        flags: 0,
        hlen: 128,
        pdo: 0,
        plen: IC_PLEN,
    };
    buf.bytes[..8].copy_from_slice(&ch.encode());
    buf.bytes[8..128].copy_from_slice(&psh);
    buf
}

/// ICReq (PFV 0).
pub fn ic_req(req: &IcReq) -> HeaderBuf {
    ic(
        PduType::IcReq,
        req.hpda,
        req.header_digest,
        req.data_digest,
        req.maxr2t,
    )
}

/// ICResp (PFV 0).
pub fn ic_resp(resp: &IcResp) -> HeaderBuf {
    ic(
        PduType::IcResp,
        resp.cpda,
        resp.header_digest,
        resp.data_digest,
        resp.maxh2cdata,
    )
}

/// A termination request: `from_host` picks H2CTermReq over C2HTermReq;
/// up to 128 bytes of `header_in_error` are carried.
pub fn term_req(from_host: bool, fes: u16, fei: u32, header_in_error: &[u8]) -> HeaderBuf {
    let t = if from_host {
        PduType::H2CTermReq
    } else {
        PduType::C2HTermReq
    };
    let carried = header_in_error.len().min((TERM_REQ_MAX_PLEN - 24) as usize);
    let mut buf = HeaderBuf {
        bytes: [0; MAX_HEADER_PART],
        len: 24 + carried,
        data_len: 0,
        data_digest: false,
    };
    let ch = CommonHeader {
        pdu_type: t,
        flags: 0,
        hlen: 24,
        pdo: 0,
        plen: (24 + carried) as u32,
    };
    buf.bytes[..8].copy_from_slice(&ch.encode());
    buf.bytes[8..10].copy_from_slice(&fes.to_le_bytes());
    buf.bytes[10..14].copy_from_slice(&fei.to_le_bytes());
    buf.bytes[24..24 + carried].copy_from_slice(&header_in_error[..carried]);
    buf
}

/// A command capsule with `data_len` bytes of in-capsule data.
pub fn capsule_cmd(
    sqe: &[u8; 64],
    data_len: usize,
    negotiated: &Negotiated,
) -> Result<HeaderBuf, PduError> {
    build(PduType::CapsuleCmd, 0, sqe, data_len, Some(negotiated))
}

/// A response capsule.
pub fn capsule_resp(cqe: &[u8; 16], negotiated: &Negotiated) -> HeaderBuf {
    // A response has no data, so its length cannot overflow.
    build(PduType::CapsuleResp, 0, cqe, 0, Some(negotiated)).unwrap_or(HeaderBuf {
        bytes: [0; MAX_HEADER_PART],
        len: 0,
        data_len: 0,
        data_digest: false,
    })
}

fn data_psh(cccid: u16, ttag: u16, offset: u32, len: u32) -> [u8; 16] {
    let mut psh = [0u8; 16];
    psh[0..2].copy_from_slice(&cccid.to_le_bytes());
    psh[2..4].copy_from_slice(&ttag.to_le_bytes());
    psh[4..8].copy_from_slice(&offset.to_le_bytes());
    psh[8..12].copy_from_slice(&len.to_le_bytes());
    psh
}

fn data_len_u32(t: PduType, len: usize) -> Result<u32, PduError> {
    u32::try_from(len)
        .ok()
        .filter(|&n| n > 0)
        .ok_or(PduError::PduLength {
            pdu_type: t,
            plen: 0,
        })
}

/// H2CData answering R2T `ttag` of command `cccid`.
pub fn h2c_data(
    cccid: u16,
    ttag: u16,
    datao: u32,
    data_len: usize,
    last: bool,
    negotiated: &Negotiated,
) -> Result<HeaderBuf, PduError> {
    let t = PduType::H2CData;
    let len = data_len_u32(t, data_len)?;
    let flags = if last { FLAG_LAST_PDU } else { 0 };
    build(
        t,
        flags,
        &data_psh(cccid, ttag, datao, len),
        data_len,
        Some(negotiated),
    )
}

/// C2HData of command `cccid`; `success` (only with `last`) stands in for
/// the response capsule.
pub fn c2h_data(
    cccid: u16,
    datao: u32,
    data_len: usize,
    last: bool,
    success: bool,
    negotiated: &Negotiated,
) -> Result<HeaderBuf, PduError> {
    let t = PduType::C2HData;
    let len = data_len_u32(t, data_len)?;
    let mut flags = if last { FLAG_LAST_PDU } else { 0 };
    if success {
        if !last {
            return Err(PduError::Flags {
                pdu_type: t,
                flags: FLAG_SUCCESS,
            });
        }
        flags |= FLAG_SUCCESS;
    }
    build(
        t,
        flags,
        &data_psh(cccid, 0, datao, len),
        data_len,
        Some(negotiated),
    )
}

/// R2T for `r2tl` bytes at `r2to` of command `cccid`.
pub fn r2t(cccid: u16, ttag: u16, r2to: u32, r2tl: u32, negotiated: &Negotiated) -> HeaderBuf {
    // An R2T has no data, so its length cannot overflow.
    build(
        PduType::R2T,
        0,
        &data_psh(cccid, ttag, r2to, r2tl),
        0,
        Some(negotiated),
    )
    .unwrap_or(HeaderBuf {
        bytes: [0; MAX_HEADER_PART],
        len: 0,
        data_len: 0,
        data_digest: false,
    })
}
