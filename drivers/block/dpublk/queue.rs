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
    shim::{cqe::CompletionEntry, sqe::SubmissionEntry},
};
use kernel::{
    device,
    dma::{Coherent, DmaAddress},
    prelude::*,
    sync::{
        barrier::{dma_mb, Read},
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
        if entries < 2 {
            return Err(EINVAL);
        }
        let mem = Coherent::zeroed_slice(
            dev,
            usize::from(entries) * SubmissionEntry::BYTES,
            GFP_KERNEL,
        )?;
        Ok(Self {
            mem: DeviceMemory::lent(mem, access.clone()),
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

    /// Returns the tail to publish, if it moved since the last call.
    pub(crate) fn take_unpublished(&mut self) -> Option<u16> {
        if self.tail == self.published {
            return None;
        }
        self.published = self.tail;
        Some(self.tail)
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
        if entries < 2 {
            return Err(EINVAL);
        }
        let mem = Coherent::zeroed_slice(
            dev,
            usize::from(entries) * CompletionEntry::BYTES,
            GFP_KERNEL,
        )?;
        Ok(Self {
            mem: DeviceMemory::lent(mem, access.clone()),
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
