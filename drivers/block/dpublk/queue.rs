// SPDX-License-Identifier: GPL-2.0

//! Submission and completion rings in coherent DMA memory.
//!
//! # Ownership of ring memory
//!
//! A submission ring of `N` entries is shared with the device like this:
//! the entries from `head` up to (not including) `tail` belong to the device,
//! which reads them after the host wrote `tail` to the doorbell; all other
//! entries belong to the host, which fills entry `tail` and only then
//! publishes it with the doorbell write (MMIO writes are ordered after
//! earlier writes to coherent memory). The host learns the new `head` from
//! completion entries. At most `N - 1` entries are outstanding, so
//! `head == tail` always means empty.
//!
//! A completion ring belongs to the device from `head` onwards: the device
//! writes an entry with the current phase tag, then the host, having seen
//! the phase tag flip, reads the rest of the entry (after a DMA read
//! barrier) and returns the entry by writing the new `head` to the doorbell.
//! The host writes completion ring memory only in [`CompletionRing::reset`],
//! while the controller is disabled and the device owns no entry of any
//! ring.
//!
//! Nothing the device writes is trusted: completion entries are copied out
//! and validated by their consumer.
//!
//! Ring memory is a [`DeviceMemory`]: it is freed only once the controller
//! was confirmed stopped, and leaked on purpose otherwise.

use crate::{
    device_memory::{DeviceAccess, DeviceMemory},
    shim::{
        cqe::CompletionEntry,
        registers::{doorbell_index, shadow_doorbell_needs_mmio, DoorbellKind},
        sqe::SubmissionEntry,
    },
};
use core::sync::atomic::{AtomicBool, Ordering};
use kernel::{
    device,
    dma::{Coherent, DmaAddress},
    prelude::*,
    sync::{
        barrier::{dma_mb, mb, Full, Read, Write},
        Arc,
    },
};

/// Index of the entry after `index` in a ring of `entries` entries.
pub(crate) const fn ring_next(index: u16, entries: u16) -> u16 {
    if index + 1 >= entries {
        0
    } else {
        index + 1
    }
}

/// Number of entries in use between `head` and `tail`.
pub(crate) const fn ring_used(head: u16, tail: u16, entries: u16) -> u16 {
    if tail >= head {
        tail - head
    } else {
        entries - head + tail
    }
}

/// Whether `new_head`, reported by the device, is a head it can have
/// reached from `head` in a ring of `entries` whose tail is `tail`: inside
/// the ring and not past the tail.
pub(crate) const fn head_in_range(head: u16, new_head: u16, tail: u16, entries: u16) -> bool {
    new_head < entries && ring_used(head, new_head, entries) <= ring_used(head, tail, entries)
}

/// Whether a ring of `entries` entries cannot take another entry.
pub(crate) const fn ring_full(head: u16, tail: u16, entries: u16) -> bool {
    ring_next(tail, entries) == head
}

/// A completion ring position: index and the phase tag new entries carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CqPosition {
    /// Next entry to look at.
    pub(crate) head: u16,
    /// Phase tag that marks the entry at `head` as new.
    pub(crate) phase: bool,
}

impl CqPosition {
    /// The position of a freshly zeroed ring: entry 0, phase 1.
    pub(crate) const fn start() -> Self {
        Self {
            head: 0,
            phase: true,
        }
    }

    /// The position after consuming one entry; the phase flips on wrap.
    pub(crate) const fn advance(self, entries: u16) -> Self {
        let head = ring_next(self.head, entries);
        Self {
            head,
            phase: if head == 0 { !self.phase } else { self.phase },
        }
    }
}

/// Zeroed memory for a ring of `entries` (at least 2) entries of
/// `entry_bytes` each, lent to the device `access` describes.
fn ring_memory(
    dev: &device::Device<device::Bound>,
    entries: u16,
    entry_bytes: usize,
    access: &Arc<DeviceAccess>,
) -> Result<DeviceMemory<[u8]>> {
    if entries < 2 {
        return Err(EINVAL);
    }
    let mem = Coherent::zeroed_slice(dev, usize::from(entries) * entry_bytes, GFP_KERNEL)?;
    Ok(DeviceMemory::lent(mem, access.clone()))
}

/// A submission ring.
///
/// # Invariants
///
/// `mem` holds `entries` submission entries; `head` and `tail` are below
/// `entries`; entries in `head..tail` (modulo `entries`) are owned by the
/// device, all others by `self` (see the module documentation).
pub(crate) struct SubmissionRing {
    mem: DeviceMemory<[u8]>,
    entries: u16,
    head: u16,
    tail: u16,
    /// Tail value last written to the doorbell.
    published: u16,
}

impl SubmissionRing {
    /// Allocates a zeroed ring of `entries` (at least 2) entries for the
    /// device `access` describes.
    pub(crate) fn new(
        dev: &device::Device<device::Bound>,
        entries: u16,
        access: &Arc<DeviceAccess>,
    ) -> Result<Self> {
        Ok(Self {
            mem: ring_memory(dev, entries, SubmissionEntry::BYTES, access)?,
            entries,
            head: 0,
            tail: 0,
            published: 0,
        })
    }

    /// Bus address of the ring.
    pub(crate) fn dma_address(&self) -> DmaAddress {
        self.mem.dma_address()
    }

    /// Number of entries.
    pub(crate) fn entries(&self) -> u16 {
        self.entries
    }

    /// Writes `sqe` at the tail and advances it (not yet published).
    pub(crate) fn push(&mut self, sqe: &SubmissionEntry) -> Result {
        if ring_full(self.head, self.tail, self.entries) {
            return Err(EBUSY);
        }
        let offset = usize::from(self.tail) * SubmissionEntry::BYTES;
        // SAFETY: `tail < entries`, so the 64 bytes at `offset` are inside
        // `mem`; the entry at `tail` is owned by the host (type invariant:
        // the ring is not full, so `tail` is outside `head..tail`), and
        // `SubmissionEntry` has alignment 1.
        unsafe {
            let dst = self.mem.as_mut_ptr().cast::<u8>().add(offset);
            core::ptr::write_volatile(dst.cast::<SubmissionEntry>(), *sqe);
        }
        // INVARIANT: The written entry becomes the device's once published.
        self.tail = ring_next(self.tail, self.entries);
        Ok(())
    }

    /// Returns the tail to publish, if it moved since the last call, with
    /// the tail published before it.
    pub(crate) fn take_unpublished(&mut self) -> Option<(u16, u16)> {
        if self.tail == self.published {
            return None;
        }
        let old = self.published;
        self.published = self.tail;
        Some((old, self.tail))
    }

    /// Forgets every entry: the ring starts empty at entry 0 again, as the
    /// device expects after a controller reset.
    ///
    /// Only while the controller is disabled (CSTS.RDY = 0): the device has
    /// dropped the queue and owns no entry.
    pub(crate) fn reset(&mut self) {
        // INVARIANT: 0 is below `entries`; with `head == tail` every entry
        // is the host's.
        self.head = 0;
        self.tail = 0;
        self.published = 0;
    }

    /// Records the head the device reported; fails if it is out of range:
    /// beyond the ring, or outside the entries from the current head to
    /// the tail (the device cannot have fetched what was not submitted, nor
    /// give back what it gave back already).
    pub(crate) fn set_head(&mut self, head: u16) -> Result {
        if !head_in_range(self.head, head, self.tail, self.entries) {
            return Err(EPROTO);
        }
        // INVARIANT: `head < entries`; entries before it return to the host.
        self.head = head;
        Ok(())
    }
}

/// A completion ring.
///
/// # Invariants
///
/// `mem` holds `entries` completion entries; `pos.head < entries`. The host
/// only reads `mem` (see the module documentation).
pub(crate) struct CompletionRing {
    mem: DeviceMemory<[u8]>,
    entries: u16,
    pos: CqPosition,
}

impl CompletionRing {
    /// Allocates a zeroed ring of `entries` (at least 2) entries for the
    /// device `access` describes.
    pub(crate) fn new(
        dev: &device::Device<device::Bound>,
        entries: u16,
        access: &Arc<DeviceAccess>,
    ) -> Result<Self> {
        Ok(Self {
            mem: ring_memory(dev, entries, CompletionEntry::BYTES, access)?,
            entries,
            pos: CqPosition::start(),
        })
    }

    /// Bus address of the ring.
    pub(crate) fn dma_address(&self) -> DmaAddress {
        self.mem.dma_address()
    }

    /// Current head (the value for the head doorbell).
    pub(crate) fn head(&self) -> u16 {
        self.pos.head
    }

    /// Zeroes the ring and starts again at entry 0 with phase 1, as the
    /// device does after a controller reset. Without the zeroing, entries of
    /// the previous pass that carry phase 1 would look new.
    ///
    /// Only while the controller is disabled (CSTS.RDY = 0): the device has
    /// dropped the queue and writes no entry any more.
    pub(crate) fn reset(&mut self) {
        let bytes = usize::from(self.entries) * CompletionEntry::BYTES;
        let base = self.mem.as_mut_ptr().cast::<u8>();
        for offset in 0..bytes {
            // SAFETY: `offset < entries * 16`, the size of `mem`; the device
            // does not write the ring while the controller is disabled
            // (caller's guarantee), so the host may.
            unsafe { core::ptr::write_volatile(base.add(offset), 0) };
        }
        // INVARIANT: The start position is inside the ring.
        self.pos = CqPosition::start();
    }

    /// Copies out the entry at the head if the device has posted it, and
    /// consumes it.
    pub(crate) fn pop(&mut self) -> Option<CompletionEntry> {
        let offset = usize::from(self.pos.head) * CompletionEntry::BYTES;
        // SAFETY: `head < entries` (type invariant), so the 16 bytes at
        // `offset` are inside `mem`. The device may write them at any
        // time, so they are only read with volatile reads of plain bytes,
        // never referenced; `CompletionEntry` has alignment 1.
        let status = unsafe {
            let src = self.mem.as_ptr().cast::<u8>().add(offset + 14);
            u16::from_le_bytes([
                core::ptr::read_volatile(src),
                core::ptr::read_volatile(src.add(1)),
            ])
        };
        if (status & 1 != 0) != self.pos.phase {
            return None;
        }
        // The phase tag was written last; the rest of the entry must not be
        // read before it.
        dma_mb(Read);
        // SAFETY: The same 16 bytes inside `mem` as the status read above
        // (`head < entries`), read with one volatile copy into a local
        // value, never referenced, since the device may rewrite them at any
        // time; `CompletionEntry` has alignment 1 and any bit pattern is a
        // valid one (it is validated by the consumer).
        let cqe = unsafe {
            let src = self.mem.as_ptr().cast::<u8>().add(offset);
            core::ptr::read_volatile(src.cast::<CompletionEntry>())
        };
        // INVARIANT: `advance` keeps `head < entries`.
        self.pos = self.pos.advance(self.entries);
        Some(cqe)
    }
}

/// Entries of a shadow doorbell or EventIdx page (one `u32` per doorbell).
const SHADOW_ENTRIES: usize = 4096 / 4;

/// The shadow doorbell and EventIdx pages of NVMe's Doorbell Buffer Config.
///
/// The host writes each I/O queue's new SQ tail and CQ head to its entry of
/// the shadow page instead of the MMIO doorbell, and rings the MMIO
/// doorbell only when the device asked for it through the entry's EventIdx
/// (it does before it goes to sleep). On this project's transport every
/// MMIO write is a synchronous vfio-user message that stalls the vCPU, so
/// this takes the doorbell off the host's path while the device is busy.
///
/// Both pages are [`DeviceMemory`]: the device may read and write them
/// whenever it runs. Nothing read from them is trusted: an EventIdx only
/// decides whether an MMIO doorbell follows, and a device that lies about
/// it stalls only its own I/O, which then times out.
///
/// # Invariants
///
/// `doorbells` and `event_idx` hold [`SHADOW_ENTRIES`] entries each.
pub(crate) struct ShadowDoorbells {
    doorbells: DeviceMemory<[u32]>,
    event_idx: DeviceMemory<[u32]>,
    /// The device accepted the pages since it was last enabled: doorbells
    /// go through them.
    active: AtomicBool,
}

impl ShadowDoorbells {
    /// Allocates both pages, zeroed, for the device `access` describes;
    /// they are not in use until [`Self::set_active`].
    pub(crate) fn new(
        dev: &device::Device<device::Bound>,
        access: &Arc<DeviceAccess>,
    ) -> Result<Self> {
        let page = || Coherent::<u32>::zeroed_slice(dev, SHADOW_ENTRIES, GFP_KERNEL);
        let doorbells = DeviceMemory::lent(page()?, access.clone());
        let event_idx = DeviceMemory::lent(page()?, access.clone());
        // INVARIANT: Both pages were allocated with `SHADOW_ENTRIES` entries.
        Ok(Self {
            doorbells,
            event_idx,
            active: AtomicBool::new(false),
        })
    }

    /// Bus addresses of the shadow doorbell page and the EventIdx page.
    pub(crate) fn dma_addresses(&self) -> (DmaAddress, DmaAddress) {
        (self.doorbells.dma_address(), self.event_idx.dma_address())
    }

    /// Whether doorbells go through the pages.
    pub(crate) fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Starts or stops using the pages (the device accepted them, or was
    /// reset and forgot them).
    pub(crate) fn set_active(&self, active: bool) {
        self.active.store(active, Ordering::Release);
    }

    /// Zeroes both pages: queues created after the Doorbell Buffer Config
    /// command start with tail, head and EventIdx 0.
    ///
    /// Only while the pages are not active, before the device is told
    /// about them again: it then has no reason to use them (and if it does
    /// anyway, its writes only concern its own doorbells).
    pub(crate) fn clear(&self) {
        for page in [&self.doorbells, &self.event_idx] {
            let base = page.as_mut_ptr().cast::<u32>();
            for i in 0..SHADOW_ENTRIES {
                // SAFETY: `i < SHADOW_ENTRIES`, the length of the page (type
                // invariant); a volatile store of a plain integer into
                // coherent memory the device may also access.
                unsafe { core::ptr::write_volatile(base.add(i), 0) };
            }
        }
    }

    /// Publishes `new` (after `old`) as the doorbell of queue `qid`'s
    /// `kind` in the shadow page and returns whether the MMIO doorbell
    /// must be written too (EventIdx rule,
    /// Documentation/device-interface.rst, "Shadow doorbells").
    ///
    /// Each doorbell has a single writer: the caller holds the lock of the
    /// ring the doorbell belongs to.
    pub(crate) fn update(&self, qid: u16, kind: DoorbellKind, old: u16, new: u16) -> bool {
        let index = doorbell_index(qid, kind);
        if index >= SHADOW_ENTRIES {
            return true;
        }
        // The ring entries written before must be visible to the device
        // before the new doorbell value is.
        mb(Write);
        // SAFETY: `index < SHADOW_ENTRIES`, inside the page (type
        // invariant); the entry is written only by the holder of its ring's
        // lock (caller's guarantee), with a single aligned volatile store.
        unsafe {
            core::ptr::write_volatile(
                self.doorbells.as_mut_ptr().cast::<u32>().add(index),
                u32::from(new).to_le(),
            )
        };
        // The device writes EventIdx, then reads the shadow value; the host
        // writes the shadow value, then reads EventIdx. With a full barrier
        // on both sides one of them sees the other's write, so a device
        // going to sleep is always woken.
        mb(Full);
        // SAFETY: As above, inside the page; the device may write the entry
        // at any time, so it is read once with a volatile load into a plain
        // integer (any value is acceptable).
        let event_idx = unsafe {
            core::ptr::read_volatile(self.event_idx.as_ptr().cast::<u32>().add(index))
        };
        shadow_doorbell_needs_mmio(u32::from_le(event_idx) as u16, new, old)
    }
}

#[kunit_tests(dpublk_queue)]
mod tests {
    use super::*;

    #[test]
    fn next_wraps() {
        assert_eq!(ring_next(0, 4), 1);
        assert_eq!(ring_next(3, 4), 0);
        assert_eq!(ring_next(0, 2), 1);
        assert_eq!(ring_next(1, 2), 0);
        assert_eq!(ring_next(65534, 65535), 0);
    }

    #[test]
    fn used_and_full() {
        assert_eq!(ring_used(0, 0, 8), 0);
        assert_eq!(ring_used(2, 5, 8), 3);
        assert_eq!(ring_used(6, 1, 8), 3);
        assert!(!ring_full(0, 6, 8));
        assert!(ring_full(0, 7, 8));
        assert!(ring_full(3, 2, 8));
        assert!(!ring_full(3, 3, 8));
        // A ring holds at most entries - 1 outstanding entries.
        let (mut head, mut tail, n) = (5u16, 5u16, 8u16);
        let mut pushed = 0;
        while !ring_full(head, tail, n) {
            tail = ring_next(tail, n);
            pushed += 1;
        }
        assert_eq!(pushed, 7);
        assert_eq!(ring_used(head, tail, n), 7);
        head = ring_next(head, n);
        assert!(!ring_full(head, tail, n));
    }

    #[test]
    fn device_head_stays_between_head_and_tail() {
        // Head 2, tail 5 in 8 entries: 2..=5 are heads the device can report.
        for h in 2..=5 {
            assert!(head_in_range(2, h, 5, 8));
        }
        for h in [0, 1, 6, 7, 8, 0xffff] {
            assert!(!head_in_range(2, h, 5, 8));
        }
        // Wrapped: head 6, tail 1 in 8 entries: 6, 7, 0 and 1.
        for h in [6, 7, 0, 1] {
            assert!(head_in_range(6, h, 1, 8));
        }
        for h in 2..6 {
            assert!(!head_in_range(6, h, 1, 8));
        }
        // Empty ring: only the head itself.
        assert!(head_in_range(3, 3, 3, 8));
        assert!(!head_in_range(3, 4, 3, 8));
    }

    #[test]
    fn phase_flips_on_wrap() {
        let mut pos = CqPosition::start();
        assert!(pos.phase);
        for i in 1..4u16 {
            pos = pos.advance(4);
            assert_eq!(pos.head, i);
            assert!(pos.phase);
        }
        pos = pos.advance(4);
        assert_eq!(
            pos,
            CqPosition {
                head: 0,
                phase: false
            }
        );
        for _ in 0..4 {
            pos = pos.advance(4);
        }
        assert_eq!(
            pos,
            CqPosition {
                head: 0,
                phase: true
            }
        );
    }
}
