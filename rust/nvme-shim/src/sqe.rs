//! The 64-byte submission queue entry and typed views of the commands
//! dpublk uses.
//!
//! Every `decode` accepts any entry: fields are extracted, not validated.
//! Range checks (queue sizes, LBA ranges, data pointers) are the receiver's
//! job, because only it knows its limits.

use super::dptr::{Psdt, SglDescriptor};
use super::opcode::{admin, io};
use super::wire::{Le32, Le64, Wire};

/// A submission queue entry as it sits in a submission queue.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubmissionEntry {
    /// Opcode (7:0), fused operation (9:8), PSDT (15:14), command ID (31:16).
    pub cdw0: Le32,
    /// Namespace identifier.
    pub nsid: Le32,
    /// Command dword 2.
    pub cdw2: Le32,
    /// Command dword 3.
    pub cdw3: Le32,
    /// Metadata pointer.
    pub mptr: Le64,
    /// Data pointer: PRP entry 1, or the first half of SGL descriptor 1.
    pub prp1: Le64,
    /// Data pointer: PRP entry 2, or the second half of SGL descriptor 1.
    pub prp2: Le64,
    /// Command dword 10.
    pub cdw10: Le32,
    /// Command dword 11.
    pub cdw11: Le32,
    /// Command dword 12.
    pub cdw12: Le32,
    /// Command dword 13.
    pub cdw13: Le32,
    /// Command dword 14.
    pub cdw14: Le32,
    /// Command dword 15.
    pub cdw15: Le32,
}

const _: () = assert!(core::mem::size_of::<SubmissionEntry>() == 64);

// SAFETY: repr(C) of Le32/Le64 fields only: alignment 1, no padding
// (size asserted above), every bit pattern valid.
unsafe impl Wire for SubmissionEntry {}

impl SubmissionEntry {
    /// Size of a submission queue entry in bytes.
    pub const BYTES: usize = 64;
    /// log2 of the entry size, as CC.IOSQES and Identify SQES use it.
    pub const SIZE_SHIFT: u8 = 6;

    /// Builds an entry with `opcode` and command ID `cid`, all else zero.
    pub fn new(opcode: u8, cid: u16) -> Self {
        Self {
            cdw0: Le32::new(opcode as u32 | (cid as u32) << 16),
            ..Self::default()
        }
    }

    /// Decodes an entry from its 64 wire bytes.
    pub fn from_bytes(bytes: &[u8; 64]) -> Self {
        Self::read_from(bytes).unwrap_or_default()
    }

    /// Encodes the entry into its 64 wire bytes.
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        self.write_to(&mut out);
        out
    }

    /// Opcode.
    pub const fn opcode(&self) -> u8 {
        self.cdw0.get() as u8
    }

    /// Fused operation field (0 = normal).
    pub const fn fuse(&self) -> u8 {
        ((self.cdw0.get() >> 8) & 0x3) as u8
    }

    /// PRP or SGL for Data Transfer.
    pub const fn psdt(&self) -> Psdt {
        Psdt::from_bits((self.cdw0.get() >> 14) as u8)
    }

    /// Sets the PSDT field.
    pub fn set_psdt(&mut self, psdt: Psdt) {
        let v = self.cdw0.get() & !(0x3 << 14) | (psdt.bits() as u32) << 14;
        self.cdw0.set(v);
    }

    /// Command identifier.
    pub const fn cid(&self) -> u16 {
        (self.cdw0.get() >> 16) as u16
    }

    /// Sets the command identifier.
    pub fn set_cid(&mut self, cid: u16) {
        let v = self.cdw0.get() & 0xffff | (cid as u32) << 16;
        self.cdw0.set(v);
    }

    /// SGL descriptor 1 (the data pointer read as an SGL).
    pub fn sgl1(&self) -> SglDescriptor {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.prp1.get().to_le_bytes());
        bytes[8..].copy_from_slice(&self.prp2.get().to_le_bytes());
        SglDescriptor::from_bytes(&bytes)
    }

    /// Stores `desc` as SGL descriptor 1 and selects SGLs in PSDT.
    pub fn set_sgl1(&mut self, desc: &SglDescriptor) {
        let bytes = desc.to_bytes();
        let mut lo = [0u8; 8];
        let mut hi = [0u8; 8];
        lo.copy_from_slice(&bytes[..8]);
        hi.copy_from_slice(&bytes[8..]);
        self.prp1.set(u64::from_le_bytes(lo));
        self.prp2.set(u64::from_le_bytes(hi));
        self.set_psdt(Psdt::SglContiguousMetadata);
    }
}

/// Create I/O Completion Queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreateIoCq {
    /// Queue identifier (1-based for I/O queues).
    pub qid: u16,
    /// Number of entries (QSIZE + 1).
    pub entries: u32,
    /// Base address (PRP entry 1; the queue is physically contiguous).
    pub base: u64,
    /// Physically contiguous flag.
    pub contiguous: bool,
    /// Interrupts enabled.
    pub interrupts: bool,
    /// MSI-X vector.
    pub vector: u16,
}

impl CreateIoCq {
    /// Extracts the command's fields.
    pub const fn decode(sqe: &SubmissionEntry) -> Self {
        let cdw10 = sqe.cdw10.get();
        let cdw11 = sqe.cdw11.get();
        Self {
            qid: cdw10 as u16,
            entries: (cdw10 >> 16) + 1,
            base: sqe.prp1.get(),
            contiguous: cdw11 & 1 != 0,
            interrupts: cdw11 & 2 != 0,
            vector: (cdw11 >> 16) as u16,
        }
    }

    /// Builds the command with command ID `cid`.
    pub fn encode(&self, cid: u16) -> SubmissionEntry {
        let mut sqe = SubmissionEntry::new(admin::CREATE_IO_CQ, cid);
        sqe.prp1.set(self.base);
        sqe.cdw10
            .set(self.qid as u32 | (self.entries.wrapping_sub(1) & 0xffff) << 16);
        sqe.cdw11.set(
            self.contiguous as u32 | (self.interrupts as u32) << 1 | (self.vector as u32) << 16,
        );
        sqe
    }
}

/// Create I/O Submission Queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreateIoSq {
    /// Queue identifier.
    pub qid: u16,
    /// Number of entries (QSIZE + 1).
    pub entries: u32,
    /// Base address.
    pub base: u64,
    /// Physically contiguous flag.
    pub contiguous: bool,
    /// Queue priority (weighted round robin only; ignored by dpuemu).
    pub priority: u8,
    /// Completion queue this submission queue posts to.
    pub cqid: u16,
}

impl CreateIoSq {
    /// Extracts the command's fields.
    pub const fn decode(sqe: &SubmissionEntry) -> Self {
        let cdw10 = sqe.cdw10.get();
        let cdw11 = sqe.cdw11.get();
        Self {
            qid: cdw10 as u16,
            entries: (cdw10 >> 16) + 1,
            base: sqe.prp1.get(),
            contiguous: cdw11 & 1 != 0,
            priority: ((cdw11 >> 1) & 0x3) as u8,
            cqid: (cdw11 >> 16) as u16,
        }
    }

    /// Builds the command with command ID `cid`.
    pub fn encode(&self, cid: u16) -> SubmissionEntry {
        let mut sqe = SubmissionEntry::new(admin::CREATE_IO_SQ, cid);
        sqe.prp1.set(self.base);
        sqe.cdw10
            .set(self.qid as u32 | (self.entries.wrapping_sub(1) & 0xffff) << 16);
        sqe.cdw11.set(
            self.contiguous as u32 | ((self.priority as u32) & 0x3) << 1 | (self.cqid as u32) << 16,
        );
        sqe
    }
}

/// Delete I/O Submission Queue or Delete I/O Completion Queue: the queue ID
/// in CDW10 bits 15:0.
pub const fn delete_queue_qid(sqe: &SubmissionEntry) -> u16 {
    sqe.cdw10.get() as u16
}

/// Builds Delete I/O SQ (`completion == false`) or Delete I/O CQ.
pub fn delete_queue(qid: u16, completion: bool, cid: u16) -> SubmissionEntry {
    let opcode = if completion {
        admin::DELETE_IO_CQ
    } else {
        admin::DELETE_IO_SQ
    };
    let mut sqe = SubmissionEntry::new(opcode, cid);
    sqe.cdw10.set(qid as u32);
    sqe
}

/// Identify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identify {
    /// Controller or Namespace Structure selector.
    pub cns: u8,
    /// Controller identifier (CNS-dependent).
    pub cntid: u16,
    /// Namespace identifier.
    pub nsid: u32,
    /// Data buffer (PRP entry 1; entry 2 follows in the command).
    pub prp1: u64,
    /// PRP entry 2.
    pub prp2: u64,
}

impl Identify {
    /// Extracts the command's fields.
    pub const fn decode(sqe: &SubmissionEntry) -> Self {
        let cdw10 = sqe.cdw10.get();
        Self {
            cns: cdw10 as u8,
            cntid: (cdw10 >> 16) as u16,
            nsid: sqe.nsid.get(),
            prp1: sqe.prp1.get(),
            prp2: sqe.prp2.get(),
        }
    }

    /// Builds the command with command ID `cid`.
    pub fn encode(&self, cid: u16) -> SubmissionEntry {
        let mut sqe = SubmissionEntry::new(admin::IDENTIFY, cid);
        sqe.nsid.set(self.nsid);
        sqe.prp1.set(self.prp1);
        sqe.prp2.set(self.prp2);
        sqe.cdw10.set(self.cns as u32 | (self.cntid as u32) << 16);
        sqe
    }
}

/// The Command Set Identifier of an Identify command (CDW11 bits 31:24).
pub const fn identify_csi(sqe: &SubmissionEntry) -> u8 {
    (sqe.cdw11.get() >> 24) as u8
}

/// Get Log Page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GetLogPage {
    /// Log page identifier.
    pub lid: u8,
    /// Log specific field.
    pub lsp: u8,
    /// Retain Asynchronous Event.
    pub rae: bool,
    /// Number of dwords to transfer (NUMD + 1).
    pub dwords: u32,
    /// Byte offset into the log page.
    pub offset: u64,
    /// Namespace identifier.
    pub nsid: u32,
}

impl GetLogPage {
    /// Extracts the command's fields.
    pub const fn decode(sqe: &SubmissionEntry) -> Self {
        let cdw10 = sqe.cdw10.get();
        let cdw11 = sqe.cdw11.get();
        let numd = (cdw10 >> 16) | (cdw11 & 0xffff) << 16;
        Self {
            lid: cdw10 as u8,
            lsp: ((cdw10 >> 8) & 0xf) as u8,
            rae: cdw10 & (1 << 15) != 0,
            dwords: numd.wrapping_add(1),
            offset: sqe.cdw12.get() as u64 | (sqe.cdw13.get() as u64) << 32,
            nsid: sqe.nsid.get(),
        }
    }

    /// Number of bytes to transfer (0 when the dword count wrapped).
    pub const fn bytes(&self) -> u64 {
        self.dwords as u64 * 4
    }

    /// Builds the command with command ID `cid`; the data buffer goes into
    /// PRP entries 1 and 2 afterwards.
    pub fn encode(&self, cid: u16) -> SubmissionEntry {
        let mut sqe = SubmissionEntry::new(admin::GET_LOG_PAGE, cid);
        let numd = self.dwords.wrapping_sub(1);
        sqe.nsid.set(self.nsid);
        sqe.cdw10.set(
            self.lid as u32
                | ((self.lsp as u32) & 0xf) << 8
                | (self.rae as u32) << 15
                | (numd & 0xffff) << 16,
        );
        sqe.cdw11.set(numd >> 16);
        sqe.cdw12.set(self.offset as u32);
        sqe.cdw13.set((self.offset >> 32) as u32);
        sqe
    }
}

/// Set Features or Get Features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// Feature identifier.
    pub fid: u8,
    /// Set Features: save across power cycles. Get Features: unused.
    pub save: bool,
    /// Get Features: select (0 current, 1 default, 2 saved, 3 capabilities).
    pub select: u8,
    /// Feature-specific value (CDW11).
    pub value: u32,
}

impl Features {
    /// Extracts the command's fields.
    pub const fn decode(sqe: &SubmissionEntry) -> Self {
        let cdw10 = sqe.cdw10.get();
        Self {
            fid: cdw10 as u8,
            save: cdw10 & (1 << 31) != 0,
            select: ((cdw10 >> 8) & 0x7) as u8,
            value: sqe.cdw11.get(),
        }
    }

    /// Builds Set Features (`set`) or Get Features with command ID `cid`.
    pub fn encode(&self, set: bool, cid: u16) -> SubmissionEntry {
        let opcode = if set {
            admin::SET_FEATURES
        } else {
            admin::GET_FEATURES
        };
        let mut sqe = SubmissionEntry::new(opcode, cid);
        sqe.cdw10
            .set(self.fid as u32 | ((self.select as u32) & 0x7) << 8 | (self.save as u32) << 31);
        sqe.cdw11.set(self.value);
        sqe
    }
}

/// Encodes a Number of Queues feature value from queue counts (1-based).
pub const fn number_of_queues(sq: u16, cq: u16) -> u32 {
    (sq.saturating_sub(1) as u32) | (cq.saturating_sub(1) as u32) << 16
}

/// Decodes a Number of Queues value into (submission, completion) queue
/// counts (1-based). 0xffff in either field is reserved and decodes to
/// 0x10000.
pub const fn decode_number_of_queues(value: u32) -> (u32, u32) {
    ((value & 0xffff) + 1, (value >> 16) + 1)
}

/// Doorbell Buffer Config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DoorbellBufferConfig {
    /// Shadow doorbell buffer (one memory page, PRP entry 1).
    pub shadow: u64,
    /// EventIdx buffer (one memory page, PRP entry 2).
    pub event_idx: u64,
}

impl DoorbellBufferConfig {
    /// Extracts the command's fields.
    pub const fn decode(sqe: &SubmissionEntry) -> Self {
        Self {
            shadow: sqe.prp1.get(),
            event_idx: sqe.prp2.get(),
        }
    }

    /// Builds the command with command ID `cid`.
    pub fn encode(&self, cid: u16) -> SubmissionEntry {
        let mut sqe = SubmissionEntry::new(admin::DOORBELL_BUFFER_CONFIG, cid);
        sqe.prp1.set(self.shadow);
        sqe.prp2.set(self.event_idx);
        sqe
    }
}

/// Abort.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Abort {
    /// Submission queue of the command to abort.
    pub sqid: u16,
    /// Command identifier of the command to abort.
    pub cid: u16,
}

impl Abort {
    /// Extracts the command's fields.
    pub const fn decode(sqe: &SubmissionEntry) -> Self {
        let cdw10 = sqe.cdw10.get();
        Self {
            sqid: cdw10 as u16,
            cid: (cdw10 >> 16) as u16,
        }
    }

    /// Builds the command with command ID `cid`.
    pub fn encode(&self, cid: u16) -> SubmissionEntry {
        let mut sqe = SubmissionEntry::new(admin::ABORT, cid);
        sqe.cdw10.set(self.sqid as u32 | (self.cid as u32) << 16);
        sqe
    }
}

/// Read, Write and Write Zeroes: a logical block range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRange {
    /// Namespace identifier.
    pub nsid: u32,
    /// Starting LBA.
    pub slba: u64,
    /// Number of logical blocks (NLB + 1).
    pub blocks: u32,
    /// Force Unit Access.
    pub fua: bool,
    /// Write Zeroes: deallocate the blocks if possible.
    pub deallocate: bool,
}

impl BlockRange {
    /// Force Unit Access bit in CDW12.
    pub const FUA: u32 = 1 << 30;
    /// Deallocate bit in CDW12 (Write Zeroes).
    pub const DEAC: u32 = 1 << 25;

    /// Extracts the command's fields.
    pub const fn decode(sqe: &SubmissionEntry) -> Self {
        let cdw12 = sqe.cdw12.get();
        Self {
            nsid: sqe.nsid.get(),
            slba: sqe.cdw10.get() as u64 | (sqe.cdw11.get() as u64) << 32,
            blocks: (cdw12 & 0xffff) + 1,
            fua: cdw12 & Self::FUA != 0,
            deallocate: cdw12 & Self::DEAC != 0,
        }
    }

    /// Builds a Read, Write or Write Zeroes command with command ID `cid`.
    pub fn encode(&self, opcode: u8, cid: u16) -> SubmissionEntry {
        let mut sqe = SubmissionEntry::new(opcode, cid);
        sqe.nsid.set(self.nsid);
        sqe.cdw10.set(self.slba as u32);
        sqe.cdw11.set((self.slba >> 32) as u32);
        sqe.cdw12.set(
            (self.blocks.wrapping_sub(1) & 0xffff)
                | if self.fua { Self::FUA } else { 0 }
                | if self.deallocate { Self::DEAC } else { 0 },
        );
        sqe
    }
}

/// Builds a Flush for namespace `nsid`.
pub fn flush(nsid: u32, cid: u16) -> SubmissionEntry {
    let mut sqe = SubmissionEntry::new(io::FLUSH, cid);
    sqe.nsid.set(nsid);
    sqe
}

/// Dataset Management.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DatasetManagement {
    /// Namespace identifier.
    pub nsid: u32,
    /// Number of ranges in the data buffer (NR + 1, at most 256).
    pub ranges: u16,
    /// Attribute - Deallocate.
    pub deallocate: bool,
}

impl DatasetManagement {
    /// Extracts the command's fields.
    pub const fn decode(sqe: &SubmissionEntry) -> Self {
        Self {
            nsid: sqe.nsid.get(),
            ranges: (sqe.cdw10.get() & 0xff) as u16 + 1,
            deallocate: sqe.cdw11.get() & (1 << 2) != 0,
        }
    }

    /// Builds the command with command ID `cid`; the range list goes into
    /// the data pointer afterwards.
    pub fn encode(&self, cid: u16) -> SubmissionEntry {
        let mut sqe = SubmissionEntry::new(io::DATASET_MANAGEMENT, cid);
        sqe.nsid.set(self.nsid);
        sqe.cdw10.set((self.ranges.wrapping_sub(1) & 0xff) as u32);
        sqe.cdw11.set((self.deallocate as u32) << 2);
        sqe
    }
}

/// One range of a Dataset Management command.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DsmRange {
    /// Context attributes.
    pub attributes: Le32,
    /// Length in logical blocks.
    pub blocks: Le32,
    /// Starting LBA.
    pub slba: Le64,
}

const _: () = assert!(core::mem::size_of::<DsmRange>() == 16);

// SAFETY: repr(C) of Le32/Le64 fields only: no padding, any bit pattern valid.
unsafe impl Wire for DsmRange {}

#[cfg(test)]
mod tests {
    use super::super::dptr::SglKind;
    use super::*;

    #[test]
    fn header_fields() {
        let mut sqe = SubmissionEntry::new(io::READ, 0xbeef);
        assert_eq!(sqe.opcode(), io::READ);
        assert_eq!(sqe.cid(), 0xbeef);
        assert_eq!(sqe.psdt(), Psdt::Prp);
        assert_eq!(sqe.fuse(), 0);
        sqe.set_psdt(Psdt::SglDescriptorMetadata);
        assert_eq!(sqe.psdt(), Psdt::SglDescriptorMetadata);
        sqe.set_cid(7);
        assert_eq!((sqe.cid(), sqe.opcode()), (7, io::READ));
        sqe.cdw0.set(sqe.cdw0.get() | 1 << 8);
        assert_eq!(sqe.fuse(), 1);
        let bytes = sqe.to_bytes();
        assert_eq!(bytes[0], io::READ);
        assert_eq!(u16::from_le_bytes([bytes[2], bytes[3]]), 7);
        assert_eq!(SubmissionEntry::from_bytes(&bytes), sqe);
    }

    #[test]
    fn byte_layout() {
        let mut bytes = [0u8; 64];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = i as u8;
        }
        let sqe = SubmissionEntry::from_bytes(&bytes);
        assert_eq!(sqe.nsid.get(), 0x0706_0504);
        assert_eq!(sqe.mptr.get(), 0x1716_1514_1312_1110);
        assert_eq!(sqe.prp1.get(), 0x1f1e_1d1c_1b1a_1918);
        assert_eq!(sqe.prp2.get(), 0x2726_2524_2322_2120);
        assert_eq!(sqe.cdw10.get(), 0x2b2a_2928);
        assert_eq!(sqe.cdw15.get(), 0x3f3e_3d3c);
        assert_eq!(sqe.to_bytes(), bytes);
    }

    #[test]
    fn sgl1_round_trip() {
        let mut sqe = SubmissionEntry::new(io::WRITE, 1);
        let desc = SglDescriptor::data_block(0x1234_5000, 8192);
        sqe.set_sgl1(&desc);
        assert_eq!(sqe.psdt(), Psdt::SglContiguousMetadata);
        assert_eq!(sqe.sgl1(), desc);
        assert_eq!(sqe.sgl1().kind(), Some(SglKind::DataBlock));
        assert_eq!(sqe.prp1.get(), 0x1234_5000);
    }

    #[test]
    fn queue_commands() {
        let cq = CreateIoCq {
            qid: 3,
            entries: 1024,
            base: 0x8000_0000,
            contiguous: true,
            interrupts: true,
            vector: 3,
        };
        let sqe = cq.encode(9);
        assert_eq!(sqe.opcode(), admin::CREATE_IO_CQ);
        assert_eq!(sqe.cdw10.get(), 3 | 1023 << 16);
        assert_eq!(sqe.cdw11.get(), 0b11 | 3 << 16);
        assert_eq!(CreateIoCq::decode(&sqe), cq);

        let sq = CreateIoSq {
            qid: 3,
            entries: 2,
            base: 0x9000_0000,
            contiguous: true,
            priority: 2,
            cqid: 3,
        };
        let sqe = sq.encode(10);
        assert_eq!(sqe.opcode(), admin::CREATE_IO_SQ);
        assert_eq!(sqe.cdw11.get(), 1 | 2 << 1 | 3 << 16);
        assert_eq!(CreateIoSq::decode(&sqe), sq);

        let del = delete_queue(5, true, 1);
        assert_eq!(del.opcode(), admin::DELETE_IO_CQ);
        assert_eq!(delete_queue_qid(&del), 5);
        assert_eq!(delete_queue(5, false, 1).opcode(), admin::DELETE_IO_SQ);
    }

    #[test]
    fn admin_commands() {
        let id = Identify {
            cns: 1,
            cntid: 2,
            nsid: 3,
            prp1: 0x1000,
            prp2: 0,
        };
        assert_eq!(Identify::decode(&id.encode(4)), id);
        let mut csi = id.encode(4);
        assert_eq!(identify_csi(&csi), 0);
        csi.cdw11.set(2 << 24);
        assert_eq!(identify_csi(&csi), 2);

        let log = GetLogPage {
            lid: 1,
            lsp: 0,
            rae: true,
            dwords: 0x1_0010,
            offset: 0x1_0000_0040,
            nsid: 0xffff_ffff,
        };
        let sqe = log.encode(5);
        assert_eq!(sqe.cdw10.get() >> 16, 0x000f);
        assert_eq!(sqe.cdw11.get(), 1);
        assert_eq!(GetLogPage::decode(&sqe), log);
        assert_eq!(log.bytes(), 0x1_0010 * 4);

        let feat = Features {
            fid: 7,
            save: false,
            select: 0,
            value: number_of_queues(4, 4),
        };
        let sqe = feat.encode(true, 6);
        assert_eq!(sqe.opcode(), admin::SET_FEATURES);
        assert_eq!(Features::decode(&sqe), feat);
        assert_eq!(feat.encode(false, 6).opcode(), admin::GET_FEATURES);
        assert_eq!(decode_number_of_queues(feat.value), (4, 4));
        assert_eq!(decode_number_of_queues(0xffff_ffff), (0x10000, 0x10000));

        let db = DoorbellBufferConfig {
            shadow: 0x1000,
            event_idx: 0x2000,
        };
        assert_eq!(DoorbellBufferConfig::decode(&db.encode(1)), db);
        assert_eq!(db.encode(1).opcode(), 0x7c);

        let ab = Abort { sqid: 2, cid: 77 };
        assert_eq!(Abort::decode(&ab.encode(1)), ab);
    }

    #[test]
    fn io_commands() {
        let rw = BlockRange {
            nsid: 1,
            slba: 0x1_2345_6789,
            blocks: 256,
            fua: true,
            deallocate: false,
        };
        let sqe = rw.encode(io::WRITE, 11);
        assert_eq!(sqe.cdw12.get(), 255 | BlockRange::FUA);
        assert_eq!(BlockRange::decode(&sqe), rw);
        let wz = BlockRange {
            deallocate: true,
            fua: false,
            ..rw
        };
        assert_eq!(BlockRange::decode(&wz.encode(io::WRITE_ZEROES, 1)), wz);
        assert_eq!(BlockRange::decode(&SubmissionEntry::default()).blocks, 1);

        let fl = flush(1, 2);
        assert_eq!((fl.opcode(), fl.nsid.get()), (io::FLUSH, 1));

        let dsm = DatasetManagement {
            nsid: 1,
            ranges: 256,
            deallocate: true,
        };
        let sqe = dsm.encode(3);
        assert_eq!(sqe.cdw10.get(), 255);
        assert_eq!(DatasetManagement::decode(&sqe), dsm);

        let range = DsmRange {
            attributes: Le32::new(0),
            blocks: Le32::new(8),
            slba: Le64::new(64),
        };
        let mut buf = [0u8; 16];
        assert!(range.write_to(&mut buf));
        assert_eq!(buf[4], 8);
        assert_eq!(buf[8], 64);
        assert_eq!(DsmRange::read_from(&buf), Some(range));
    }
}
