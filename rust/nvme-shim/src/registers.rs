//! Controller registers in BAR0 and the doorbell layout.
//!
//! The layout follows NVMe 1.4: properties at 0x00..0x1000, doorbells from
//! [`DOORBELL_BASE`] with a stride of `4 << CAP.DSTRD` bytes, submission queue
//! tail doorbells at even and completion queue head doorbells at odd indexes.

/// Controller Capabilities (64-bit, read-only).
pub const CAP: usize = 0x00;
/// Version (32-bit, read-only).
pub const VS: usize = 0x08;
/// Interrupt Mask Set (ignored when MSI-X is in use).
pub const INTMS: usize = 0x0c;
/// Interrupt Mask Clear (ignored when MSI-X is in use).
pub const INTMC: usize = 0x10;
/// Controller Configuration.
pub const CC: usize = 0x14;
/// Controller Status.
pub const CSTS: usize = 0x1c;
/// NVM Subsystem Reset (not supported, reads zero).
pub const NSSR: usize = 0x20;
/// Admin Queue Attributes.
pub const AQA: usize = 0x24;
/// Admin Submission Queue Base Address (64-bit).
pub const ASQ: usize = 0x28;
/// Admin Completion Queue Base Address (64-bit).
pub const ACQ: usize = 0x30;
/// First doorbell register.
pub const DOORBELL_BASE: usize = 0x1000;
/// End (exclusive) of the doorbell area.
pub const DOORBELL_END: usize = 0x2000;

/// Controller Capabilities.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cap(pub u64);

impl Cap {
    /// Contiguous Queues Required.
    pub const CQR: u64 = 1 << 16;
    /// NVM command set supported (CSS bit 0, register bit 37).
    pub const CSS_NVM: u64 = 1 << 37;

    /// Builds CAP for a controller with `max_entries` entries per queue
    /// (at least 2), `timeout_500ms` ready timeout, doorbell stride
    /// `dstrd`, contiguous queues required, the NVM command set and 4 KiB
    /// memory pages only.
    pub const fn new(max_entries: u32, timeout_500ms: u8, dstrd: u8) -> Self {
        let mqes = if max_entries < 2 {
            1
        } else if max_entries > 0x1_0000 {
            0xffff
        } else {
            max_entries - 1
        };
        Self(
            mqes as u64
                | Self::CQR
                | (timeout_500ms as u64) << 24
                | ((dstrd & 0xf) as u64) << 32
                | Self::CSS_NVM,
        )
    }

    /// Maximum Queue Entries Supported, 0-based.
    pub const fn mqes(self) -> u16 {
        self.0 as u16
    }

    /// Maximum number of entries per queue (MQES + 1).
    pub const fn max_queue_entries(self) -> u32 {
        self.mqes() as u32 + 1
    }

    /// Ready timeout in 500 ms units.
    pub const fn timeout(self) -> u8 {
        (self.0 >> 24) as u8
    }

    /// Doorbell stride: doorbells are `4 << dstrd` bytes apart.
    pub const fn dstrd(self) -> u8 {
        ((self.0 >> 32) & 0xf) as u8
    }

    /// Minimum memory page size, as a power of two exponent minus 12.
    pub const fn mpsmin(self) -> u8 {
        ((self.0 >> 48) & 0xf) as u8
    }

    /// Maximum memory page size, as a power of two exponent minus 12.
    pub const fn mpsmax(self) -> u8 {
        ((self.0 >> 52) & 0xf) as u8
    }
}

/// Builds a Version register value.
pub const fn version(major: u16, minor: u8, tertiary: u8) -> u32 {
    (major as u32) << 16 | (minor as u32) << 8 | tertiary as u32
}

/// The version dpublk functions report: NVMe 1.4.
pub const VERSION_1_4: u32 = version(1, 4, 0);

/// Controller Configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cc(pub u32);

impl Cc {
    /// Enable.
    pub const EN: u32 = 1;
    /// Shutdown notification: normal.
    pub const SHN_NORMAL: u8 = 1;
    /// Shutdown notification: abrupt.
    pub const SHN_ABRUPT: u8 = 2;

    /// Enable bit.
    pub const fn en(self) -> bool {
        self.0 & Self::EN != 0
    }
    /// I/O Command Set Selected.
    pub const fn css(self) -> u8 {
        ((self.0 >> 4) & 0x7) as u8
    }
    /// Memory Page Size: pages are `1 << (12 + mps)` bytes.
    pub const fn mps(self) -> u8 {
        ((self.0 >> 7) & 0xf) as u8
    }
    /// Arbitration Mechanism Selected.
    pub const fn ams(self) -> u8 {
        ((self.0 >> 11) & 0x7) as u8
    }
    /// Shutdown Notification.
    pub const fn shn(self) -> u8 {
        ((self.0 >> 14) & 0x3) as u8
    }
    /// I/O Submission Queue Entry Size (log2 bytes).
    pub const fn iosqes(self) -> u8 {
        ((self.0 >> 16) & 0xf) as u8
    }
    /// I/O Completion Queue Entry Size (log2 bytes).
    pub const fn iocqes(self) -> u8 {
        ((self.0 >> 20) & 0xf) as u8
    }
    /// Memory page size in bytes.
    pub const fn page_size(self) -> u64 {
        1u64 << (12 + self.mps())
    }

    /// Builds CC as the host writes it to enable a controller with 4 KiB
    /// pages, the NVM command set, 64-byte SQEs and 16-byte CQEs.
    pub const fn enable_default() -> Self {
        Self(Self::EN | 6 << 16 | 4 << 20)
    }

    /// Returns CC with the shutdown notification field set to `shn`.
    pub const fn with_shn(self, shn: u8) -> Self {
        Self(self.0 & !(0x3 << 14) | ((shn as u32) & 0x3) << 14)
    }
}

/// Controller Status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Csts(pub u32);

impl Csts {
    /// Ready.
    pub const RDY: u32 = 1 << 0;
    /// Controller Fatal Status.
    pub const CFS: u32 = 1 << 1;
    /// Shutdown status field mask.
    pub const SHST_MASK: u32 = 0x3 << 2;
    /// Shutdown processing occurring.
    pub const SHST_OCCURRING: u32 = 1 << 2;
    /// Shutdown processing complete.
    pub const SHST_COMPLETE: u32 = 2 << 2;

    /// Ready bit.
    pub const fn rdy(self) -> bool {
        self.0 & Self::RDY != 0
    }
    /// Controller Fatal Status bit.
    pub const fn cfs(self) -> bool {
        self.0 & Self::CFS != 0
    }
    /// Shutdown status (0 normal, 1 occurring, 2 complete).
    pub const fn shst(self) -> u8 {
        ((self.0 & Self::SHST_MASK) >> 2) as u8
    }
}

/// Admin Queue Attributes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Aqa(pub u32);

impl Aqa {
    /// Builds AQA from the number of entries of each admin queue.
    pub const fn new(sq_entries: u16, cq_entries: u16) -> Self {
        Self(
            (sq_entries.saturating_sub(1) as u32 & 0xfff)
                | (cq_entries.saturating_sub(1) as u32 & 0xfff) << 16,
        )
    }
    /// Admin submission queue entries (ASQS + 1).
    pub const fn sq_entries(self) -> u16 {
        (self.0 & 0xfff) as u16 + 1
    }
    /// Admin completion queue entries (ACQS + 1).
    pub const fn cq_entries(self) -> u16 {
        ((self.0 >> 16) & 0xfff) as u16 + 1
    }
}

/// Which queue pointer a doorbell updates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DoorbellKind {
    /// Submission queue tail.
    SubmissionTail,
    /// Completion queue head.
    CompletionHead,
}

/// A decoded doorbell register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Doorbell {
    /// Queue identifier.
    pub qid: u16,
    /// Which pointer it updates.
    pub kind: DoorbellKind,
}

/// Index of a doorbell in the doorbell array (and in the shadow doorbell
/// and EventIdx buffers, which use the same layout).
pub const fn doorbell_index(qid: u16, kind: DoorbellKind) -> usize {
    let base = 2 * qid as usize;
    match kind {
        DoorbellKind::SubmissionTail => base,
        DoorbellKind::CompletionHead => base + 1,
    }
}

/// Byte offset of a doorbell relative to the start of the doorbell array
/// (or of the shadow doorbell and EventIdx buffers).
pub const fn doorbell_array_offset(qid: u16, kind: DoorbellKind, dstrd: u8) -> usize {
    doorbell_index(qid, kind) * (4usize << dstrd)
}

/// BAR0 offset of a doorbell register.
pub const fn doorbell_offset(qid: u16, kind: DoorbellKind, dstrd: u8) -> usize {
    DOORBELL_BASE + doorbell_array_offset(qid, kind, dstrd)
}

/// Decodes a BAR0 offset into a doorbell, or `None` if the offset is not the
/// start of a doorbell register.
pub const fn decode_doorbell(offset: usize, dstrd: u8) -> Option<Doorbell> {
    if offset < DOORBELL_BASE || offset >= DOORBELL_END {
        return None;
    }
    let stride = 4usize << dstrd;
    let rel = offset - DOORBELL_BASE;
    if rel & (stride - 1) != 0 {
        return None;
    }
    let index = rel / stride;
    let kind = if index & 1 == 0 {
        DoorbellKind::SubmissionTail
    } else {
        DoorbellKind::CompletionHead
    };
    Some(Doorbell {
        qid: (index / 2) as u16,
        kind,
    })
}

/// Returns whether the host must write the MMIO doorbell after moving a
/// shadow doorbell from `old` to `new`, given the controller's `event_idx`
/// (NVMe Doorbell Buffer Config semantics, wrapping 16-bit arithmetic).
pub const fn shadow_doorbell_needs_mmio(event_idx: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event_idx).wrapping_sub(1) < new.wrapping_sub(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_fields() {
        let cap = Cap::new(1024, 20, 0);
        assert_eq!(cap.mqes(), 1023);
        assert_eq!(cap.max_queue_entries(), 1024);
        assert_eq!(cap.timeout(), 20);
        assert_eq!(cap.dstrd(), 0);
        assert_eq!(cap.mpsmin(), 0);
        assert_eq!(cap.mpsmax(), 0);
        assert!(cap.0 & Cap::CQR != 0);
        assert!(cap.0 & Cap::CSS_NVM != 0);
        assert_eq!(Cap::new(0, 1, 3).mqes(), 1);
        assert_eq!(Cap::new(1 << 20, 1, 3).mqes(), 0xffff);
        assert_eq!(Cap::new(64, 1, 3).dstrd(), 3);
    }

    #[test]
    fn cc_csts_aqa() {
        let cc = Cc::enable_default();
        assert!(cc.en());
        assert_eq!((cc.iosqes(), cc.iocqes(), cc.mps(), cc.css()), (6, 4, 0, 0));
        assert_eq!(cc.page_size(), 4096);
        assert_eq!(cc.shn(), 0);
        let sh = cc.with_shn(Cc::SHN_NORMAL);
        assert_eq!(sh.shn(), 1);
        assert!(sh.en());
        assert_eq!(sh.with_shn(0), cc);
        assert_eq!(Cc(0x3 << 11).ams(), 3);
        assert_eq!(Cc(5 << 7).page_size(), 1 << 17);

        let csts = Csts(Csts::RDY | Csts::SHST_COMPLETE);
        assert!(csts.rdy());
        assert!(!csts.cfs());
        assert_eq!(csts.shst(), 2);
        assert!(Csts(Csts::CFS).cfs());

        let aqa = Aqa::new(32, 64);
        assert_eq!(aqa.0, 31 | 63 << 16);
        assert_eq!((aqa.sq_entries(), aqa.cq_entries()), (32, 64));
        assert_eq!(version(1, 4, 0), 0x0001_0400);
    }

    #[test]
    fn doorbells() {
        assert_eq!(doorbell_offset(0, DoorbellKind::SubmissionTail, 0), 0x1000);
        assert_eq!(doorbell_offset(0, DoorbellKind::CompletionHead, 0), 0x1004);
        assert_eq!(doorbell_offset(3, DoorbellKind::CompletionHead, 0), 0x101c);
        assert_eq!(doorbell_offset(1, DoorbellKind::SubmissionTail, 2), 0x1020);
        for dstrd in 0..3u8 {
            for qid in 0..64u16 {
                for kind in [DoorbellKind::SubmissionTail, DoorbellKind::CompletionHead] {
                    let off = doorbell_offset(qid, kind, dstrd);
                    assert_eq!(decode_doorbell(off, dstrd), Some(Doorbell { qid, kind }));
                }
            }
        }
        assert_eq!(decode_doorbell(0x1002, 0), None);
        assert_eq!(decode_doorbell(0x1004, 1), None);
        assert_eq!(decode_doorbell(0xffc, 0), None);
        assert_eq!(decode_doorbell(DOORBELL_END, 0), None);
        assert_eq!(
            decode_doorbell(DOORBELL_END - 4, 0),
            Some(Doorbell {
                qid: 511,
                kind: DoorbellKind::CompletionHead
            })
        );
    }

    #[test]
    fn event_idx() {
        // The controller asked to be told once the tail passes 5.
        assert!(shadow_doorbell_needs_mmio(5, 6, 5));
        assert!(shadow_doorbell_needs_mmio(5, 9, 3));
        assert!(!shadow_doorbell_needs_mmio(5, 5, 3));
        assert!(!shadow_doorbell_needs_mmio(10, 9, 3));
        // Wrapping around 16 bits.
        assert!(shadow_doorbell_needs_mmio(0xffff, 1, 0xfffe));
        assert!(!shadow_doorbell_needs_mmio(2, 1, 0xfffe));
    }
}
