//! Identify Controller and Identify Namespace data structures.
//!
//! Only the fields dpublk reads or fills are named; everything else is kept
//! as reserved bytes so the structures stay exactly 4096 bytes.

use super::wire::{Le16, Le32, Le64, Wire};

/// Size of every Identify data structure.
pub const IDENTIFY_BYTES: usize = 4096;

/// Controller Type: I/O controller.
pub const CNTRLTYPE_IO: u8 = 1;
/// Optional Admin Command Support: Doorbell Buffer Config supported.
pub const OACS_DOORBELL_BUFFER_CONFIG: u16 = 1 << 8;
/// Optional NVM Command Support: Dataset Management.
pub const ONCS_DSM: u16 = 1 << 2;
/// Optional NVM Command Support: Write Zeroes.
pub const ONCS_WRITE_ZEROES: u16 = 1 << 3;
/// Volatile Write Cache present.
pub const VWC_PRESENT: u8 = 1 << 0;
/// SGL Support: SGLs supported, no alignment requirement.
pub const SGLS_SUPPORTED: u32 = 0x1;
/// SGL Support: the SGL Bit Bucket descriptor is supported.
pub const SGLS_BIT_BUCKET: u32 = 1 << 16;
/// Deallocated blocks read as zeroes (DLFEAT bits 2:0 = 001b).
pub const DLFEAT_READ_ZEROES: u8 = 0x1;

/// Identify Controller data structure (CNS 01h).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IdentifyController {
    /// PCI Vendor ID.
    pub vid: Le16,
    /// PCI Subsystem Vendor ID.
    pub ssvid: Le16,
    /// Serial number (ASCII, space padded).
    pub sn: [u8; 20],
    /// Model number (ASCII, space padded).
    pub mn: [u8; 40],
    /// Firmware revision (ASCII, space padded).
    pub fr: [u8; 8],
    /// Recommended Arbitration Burst.
    pub rab: u8,
    /// IEEE OUI.
    pub ieee: [u8; 3],
    /// Controller Multi-Path I/O and Namespace Sharing Capabilities.
    pub cmic: u8,
    /// Maximum Data Transfer Size, as a power of two in minimum pages.
    pub mdts: u8,
    /// Controller ID.
    pub cntlid: Le16,
    /// Version (same encoding as the VS register).
    pub ver: Le32,
    /// RTD3 Resume Latency.
    pub rtd3r: Le32,
    /// RTD3 Entry Latency.
    pub rtd3e: Le32,
    /// Optional Asynchronous Events Supported.
    pub oaes: Le32,
    /// Controller Attributes.
    pub ctratt: Le32,
    /// Reserved (RRLS and reserved bytes).
    pub rsvd100: [u8; 11],
    /// Controller Type (1 = I/O controller).
    pub cntrltype: u8,
    /// Reserved (FGUID, CRDT and reserved bytes).
    pub rsvd112: [u8; 144],
    /// Optional Admin Command Support.
    pub oacs: Le16,
    /// Abort Command Limit (0-based).
    pub acl: u8,
    /// Asynchronous Event Request Limit (0-based).
    pub aerl: u8,
    /// Firmware Updates.
    pub frmw: u8,
    /// Log Page Attributes.
    pub lpa: u8,
    /// Error Log Page Entries (0-based).
    pub elpe: u8,
    /// Number of Power States Support (0-based).
    pub npss: u8,
    /// Reserved (AVSCC .. PELS and reserved bytes).
    pub rsvd264: [u8; 248],
    /// Submission Queue Entry Size (required 3:0, maximum 7:4, log2).
    pub sqes: u8,
    /// Completion Queue Entry Size (required 3:0, maximum 7:4, log2).
    pub cqes: u8,
    /// Maximum Outstanding Commands.
    pub maxcmd: Le16,
    /// Number of Namespaces (highest valid NSID).
    pub nn: Le32,
    /// Optional NVM Command Support.
    pub oncs: Le16,
    /// Fused Operation Support.
    pub fuses: Le16,
    /// Format NVM Attributes.
    pub fna: u8,
    /// Volatile Write Cache.
    pub vwc: u8,
    /// Atomic Write Unit Normal.
    pub awun: Le16,
    /// Atomic Write Unit Power Fail.
    pub awupf: Le16,
    /// Reserved (NVSCC, NWPC, ACWU, reserved).
    pub rsvd530: [u8; 6],
    /// SGL Support.
    pub sgls: Le32,
    /// Maximum Number of Allowed Namespaces.
    pub mnan: Le32,
    /// Reserved.
    pub rsvd544: [u8; 224],
    /// NVM Subsystem NVMe Qualified Name (NUL terminated).
    pub subnqn: [u8; 256],
    /// Reserved (fabrics).
    pub rsvd1024: [u8; 1024],
    /// Power state descriptor 0: Maximum Power in centiwatts.
    pub psd0_mp: Le16,
    /// Remainder of the power state descriptors.
    pub psd_rest: [u8; 1022],
    /// Vendor specific.
    pub vs: [u8; 1024],
}

const _: () = assert!(core::mem::size_of::<IdentifyController>() == IDENTIFY_BYTES);
const _: () = assert!(core::mem::offset_of!(IdentifyController, cntlid) == 78);
const _: () = assert!(core::mem::offset_of!(IdentifyController, ctratt) == 96);
const _: () = assert!(core::mem::offset_of!(IdentifyController, cntrltype) == 111);
const _: () = assert!(core::mem::offset_of!(IdentifyController, oacs) == 256);
const _: () = assert!(core::mem::offset_of!(IdentifyController, sqes) == 512);
const _: () = assert!(core::mem::offset_of!(IdentifyController, oncs) == 520);
const _: () = assert!(core::mem::offset_of!(IdentifyController, vwc) == 525);
const _: () = assert!(core::mem::offset_of!(IdentifyController, sgls) == 536);
const _: () = assert!(core::mem::offset_of!(IdentifyController, subnqn) == 768);
const _: () = assert!(core::mem::offset_of!(IdentifyController, psd0_mp) == 2048);
const _: () = assert!(core::mem::offset_of!(IdentifyController, vs) == 3072);

// SAFETY: repr(C) of u8 arrays and Le types only: alignment 1, no padding
// (size asserted), any bit pattern valid.
unsafe impl Wire for IdentifyController {}

/// An LBA Format descriptor.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbaFormat {
    /// Metadata Size.
    pub ms: Le16,
    /// LBA Data Size, log2 bytes.
    pub lbads: u8,
    /// Relative Performance.
    pub rp: u8,
}

const _: () = assert!(core::mem::size_of::<LbaFormat>() == 4);

// SAFETY: repr(C) of Le16 and u8: no padding, any bit pattern valid.
unsafe impl Wire for LbaFormat {}

/// Identify Namespace data structure (CNS 00h).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IdentifyNamespace {
    /// Namespace Size in logical blocks.
    pub nsze: Le64,
    /// Namespace Capacity in logical blocks.
    pub ncap: Le64,
    /// Namespace Utilization in logical blocks.
    pub nuse: Le64,
    /// Namespace Features.
    pub nsfeat: u8,
    /// Number of LBA Formats (0-based).
    pub nlbaf: u8,
    /// Formatted LBA Size (bits 3:0 select the LBA format).
    pub flbas: u8,
    /// Metadata Capabilities.
    pub mc: u8,
    /// End-to-end Data Protection Capabilities.
    pub dpc: u8,
    /// End-to-end Data Protection Type Settings.
    pub dps: u8,
    /// Namespace Multi-path I/O and Namespace Sharing Capabilities.
    pub nmic: u8,
    /// Reservation Capabilities.
    pub rescap: u8,
    /// Format Progress Indicator.
    pub fpi: u8,
    /// Deallocate Logical Block Features.
    pub dlfeat: u8,
    /// Reserved (atomicity, boundaries, NVMCAP, alignment hints, ANA).
    pub rsvd34: [u8; 70],
    /// Namespace Globally Unique Identifier.
    pub nguid: [u8; 16],
    /// IEEE Extended Unique Identifier.
    pub eui64: [u8; 8],
    /// LBA Format Support.
    pub lbaf: [LbaFormat; 16],
    /// Reserved.
    pub rsvd192: [u8; 192],
    /// Vendor specific.
    pub vs: [u8; 3712],
}

const _: () = assert!(core::mem::size_of::<IdentifyNamespace>() == IDENTIFY_BYTES);
const _: () = assert!(core::mem::offset_of!(IdentifyNamespace, dlfeat) == 33);
const _: () = assert!(core::mem::offset_of!(IdentifyNamespace, nguid) == 104);
const _: () = assert!(core::mem::offset_of!(IdentifyNamespace, lbaf) == 128);
const _: () = assert!(core::mem::offset_of!(IdentifyNamespace, vs) == 384);

// SAFETY: repr(C) of u8 arrays, Le types and LbaFormat (itself Wire):
// alignment 1, no padding (size asserted), any bit pattern valid.
unsafe impl Wire for IdentifyNamespace {}

impl IdentifyNamespace {
    /// Log2 of the logical block size of the formatted LBA format.
    pub fn lba_shift(&self) -> u8 {
        let index = (self.flbas & 0xf) as usize;
        self.lbaf.get(index).map_or(0, |f| f.lbads)
    }
}

/// Namespace Identification Descriptor types (CNS 03h).
pub mod ns_descriptor {
    /// IEEE EUI-64 (8 bytes).
    pub const EUI64: u8 = 0x1;
    /// Namespace GUID (16 bytes).
    pub const NGUID: u8 = 0x2;
    /// Namespace UUID (16 bytes).
    pub const UUID: u8 = 0x3;
}

#[cfg(test)]
mod tests {
    use super::super::wire::ascii_field;
    use super::*;

    #[test]
    fn controller_bytes() {
        let mut id = IdentifyController::zeroed();
        id.vid.set(0x1af4);
        ascii_field(&mut id.sn, b"SN1");
        id.mdts = 8;
        id.cntrltype = CNTRLTYPE_IO;
        id.oacs.set(OACS_DOORBELL_BUFFER_CONFIG);
        id.sqes = 0x66;
        id.cqes = 0x44;
        id.nn.set(1);
        id.oncs.set(ONCS_DSM | ONCS_WRITE_ZEROES);
        id.vwc = VWC_PRESENT;
        id.sgls.set(SGLS_SUPPORTED);
        id.subnqn[0] = b'n';
        let b = id.as_bytes();
        assert_eq!(b.len(), 4096);
        assert_eq!(&b[0..2], &[0xf4, 0x1a]);
        assert_eq!(&b[4..8], b"SN1 ");
        assert_eq!(b[77], 8);
        assert_eq!(b[111], CNTRLTYPE_IO);
        assert_eq!(&b[256..258], &[0x00, 0x01]);
        assert_eq!((b[512], b[513]), (0x66, 0x44));
        assert_eq!(b[516], 1);
        assert_eq!(b[520], 0x0c);
        assert_eq!(b[525], 1);
        assert_eq!(b[536], 1);
        assert_eq!(b[768], b'n');
        let back = IdentifyController::read_from(b).unwrap();
        assert_eq!(back.oacs.get(), OACS_DOORBELL_BUFFER_CONFIG);
        assert_eq!(back.nn.get(), 1);
    }

    #[test]
    fn namespace_bytes() {
        let mut ns = IdentifyNamespace::zeroed();
        ns.nsze.set(1 << 21);
        ns.ncap.set(1 << 21);
        ns.flbas = 1;
        ns.nlbaf = 1;
        ns.lbaf[0].lbads = 9;
        ns.lbaf[1].lbads = 12;
        ns.dlfeat = DLFEAT_READ_ZEROES;
        assert_eq!(ns.lba_shift(), 12);
        ns.flbas = 0;
        assert_eq!(ns.lba_shift(), 9);
        let b = ns.as_bytes();
        assert_eq!(&b[0..8], &(1u64 << 21).to_le_bytes());
        assert_eq!(b[33], 1);
        assert_eq!(b[128 + 2], 9);
        assert_eq!(b[132 + 2], 12);
        ns.flbas = 0xf;
        assert_eq!(ns.lba_shift(), 0);
    }
}
