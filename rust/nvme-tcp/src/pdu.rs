//! Typed, borrowed views of the PDU types. They are built only by
//! [`super::Receiver::parse`], after every length and digest check.

/// Initialize Connection Request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcReq {
    /// PDU Format Version (0 is the only one defined).
    pub pfv: u16,
    /// Host PDU Data Alignment (0-based dwords, 0-31).
    pub hpda: u8,
    /// The host asks for header digests.
    pub header_digest: bool,
    /// The host asks for data digests.
    pub data_digest: bool,
    /// Maximum outstanding R2Ts per command, 0-based.
    pub maxr2t: u32,
}

/// Initialize Connection Response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcResp {
    /// PDU Format Version.
    pub pfv: u16,
    /// Controller PDU Data Alignment (0-based dwords, 0-31).
    pub cpda: u8,
    /// Header digests are on.
    pub header_digest: bool,
    /// Data digests are on.
    pub data_digest: bool,
    /// Maximum data bytes of one H2CData PDU (at least 4096, dword multiple).
    pub maxh2cdata: u32,
}

/// H2CTermReq or C2HTermReq.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TermReq<'a> {
    /// Fatal Error Status (`super::error::fes`).
    pub fes: u16,
    /// Fatal Error Information.
    pub fei: u32,
    /// The header of the PDU in error (up to 128 bytes).
    pub header_in_error: &'a [u8],
}

/// Command capsule: a submission queue entry and in-capsule data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapsuleCmd<'a> {
    /// The 64-byte submission queue entry.
    pub sqe: &'a [u8; 64],
    /// In-capsule data (empty without).
    pub data: &'a [u8],
}

/// Response capsule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapsuleResp<'a> {
    /// The 16-byte completion queue entry.
    pub cqe: &'a [u8; 16],
}

/// Host to Controller Data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct H2CData<'a> {
    /// Command Capsule CID of the command.
    pub cccid: u16,
    /// Transfer tag of the R2T this data answers.
    pub ttag: u16,
    /// Offset of `data` within the command's data.
    pub datao: u32,
    /// The last PDU of the R2T's data.
    pub last: bool,
    /// The data.
    pub data: &'a [u8],
}

/// Controller to Host Data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct C2HData<'a> {
    /// Command Capsule CID of the command.
    pub cccid: u16,
    /// Offset of `data` within the command's data.
    pub datao: u32,
    /// The last data PDU of the command.
    pub last: bool,
    /// The command succeeded; no response capsule follows.
    pub success: bool,
    /// The data.
    pub data: &'a [u8],
}

/// Ready to Transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct R2T {
    /// Command Capsule CID of the command.
    pub cccid: u16,
    /// Transfer tag the H2CData PDUs must carry.
    pub ttag: u16,
    /// Offset of the requested data within the command's data.
    pub r2to: u32,
    /// Length of the requested data (not zero).
    pub r2tl: u32,
}

/// A parsed PDU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pdu<'a> {
    IcReq(IcReq),
    IcResp(IcResp),
    H2CTermReq(TermReq<'a>),
    C2HTermReq(TermReq<'a>),
    CapsuleCmd(CapsuleCmd<'a>),
    CapsuleResp(CapsuleResp<'a>),
    H2CData(H2CData<'a>),
    C2HData(C2HData<'a>),
    R2T(R2T),
}
