//! Submission and completion queue state.
//!
//! A queue's ring lives in guest memory; the controller keeps only the
//! pointers. Each queue sits behind its own mutex: the worker servicing a
//! submission queue holds that mutex for one batch, so deleting the queue
//! (which takes the same mutex) waits for the batch to finish, and no
//! completion is ever posted for a deleted queue.

use nvme_shim::cqe::CompletionEntry;
use nvme_shim::status::Status;

use crate::guest_memory::{GuestMemory, MemoryError};

/// The outcome of one command, before it becomes a completion entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Completion {
    pub cid: u16,
    pub status: Status,
    /// DW0, and DW1 in the high half (the LBA of a Zone Append).
    pub result: u64,
}

/// A submission queue.
pub(super) struct SubmissionQueue {
    pub qid: u16,
    /// Guest address of entry 0.
    pub base: u64,
    /// Number of entries.
    pub size: u32,
    /// Next entry the controller fetches.
    pub head: u32,
    /// Last tail value the host published (doorbell or shadow).
    pub tail: u32,
    /// Completion queue of this submission queue.
    pub cqid: u16,
    /// Set once the queue is deleted; a worker holding a stale handle
    /// stops.
    pub deleted: bool,
    /// Last invalid tail value reported, to log each bad value once.
    pub bad_tail: Option<u32>,
}

impl SubmissionQueue {
    pub fn new(qid: u16, base: u64, size: u32, cqid: u16) -> Self {
        Self {
            qid,
            base,
            size,
            head: 0,
            tail: 0,
            cqid,
            deleted: false,
            bad_tail: None,
        }
    }

    /// Takes a new tail value from the host if it is inside the queue.
    /// Returns `false` for an out-of-range value (which is ignored).
    pub fn update_tail(&mut self, value: u32) -> bool {
        if value < self.size {
            self.tail = value;
            true
        } else {
            false
        }
    }

    /// Guest address of the entry at `head`.
    pub fn head_addr(&self) -> u64 {
        self.base + u64::from(self.head) * 64
    }

    pub fn is_empty(&self) -> bool {
        self.head == self.tail
    }

    pub fn advance(&mut self) {
        self.head = (self.head + 1) % self.size;
    }
}

/// A completion queue.
pub(super) struct CompletionQueue {
    pub qid: u16,
    pub base: u64,
    pub size: u32,
    /// Last head value the host published.
    pub head: u32,
    /// Next entry the controller writes.
    pub tail: u32,
    /// Phase tag of the current pass through the ring.
    pub phase: bool,
    pub interrupts: bool,
    pub vector: u16,
    /// Submission queues posting here (a CQ with users cannot be deleted).
    pub users: u32,
    pub deleted: bool,
}

impl CompletionQueue {
    pub fn new(qid: u16, base: u64, size: u32, interrupts: bool, vector: u16) -> Self {
        Self {
            qid,
            base,
            size,
            head: 0,
            tail: 0,
            phase: true,
            interrupts,
            vector,
            users: 0,
            deleted: false,
        }
    }

    /// Takes a new head value from the host if it is inside the queue.
    pub fn update_head(&mut self, value: u32) -> bool {
        if value < self.size {
            self.head = value;
            true
        } else {
            false
        }
    }

    /// Entries the controller may still write before the queue is full.
    pub fn free(&self) -> u32 {
        let used = (self.tail + self.size - self.head) % self.size;
        self.size - 1 - used
    }

    /// Hostile mode's phase glitch: sets the phase tag of the entry after
    /// the tail to the phase new entries carry, over whatever that entry
    /// held, so the host sees an entry that was never written as new.
    pub fn flip_next_phase(&self, memory: &dyn GuestMemory) -> Result<(), MemoryError> {
        let addr = self.base + u64::from(self.tail) * 16 + 12;
        let dw3 = memory.read_u32(addr)?;
        let phase_bit = 1 << 16;
        let dw3 = if self.phase {
            dw3 | phase_bit
        } else {
            dw3 & !phase_bit
        };
        memory.write_u32(addr, dw3)
    }

    /// Writes `entry` at the tail with the current phase and advances.
    /// The first 12 bytes go first; the dword holding the phase tag is
    /// written last, with one store, after a release fence, so the host
    /// never sees a new phase tag with stale contents.
    pub fn post(
        &mut self,
        memory: &dyn GuestMemory,
        completion: &Completion,
        sq_id: u16,
        sq_head: u16,
    ) -> Result<(), MemoryError> {
        let addr = self.base + u64::from(self.tail) * 16;
        let mut entry = CompletionEntry::new(
            completion.cid,
            sq_id,
            sq_head,
            completion.status,
            self.phase,
            completion.result as u32,
        );
        entry.dw1.set((completion.result >> 32) as u32);
        let bytes = entry.to_bytes();
        memory.write(addr, &bytes[..12])?;
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        let dw3 = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
        memory.write_u32(addr + 12, dw3)?;
        self.tail += 1;
        if self.tail == self.size {
            self.tail = 0;
            self.phase = !self.phase;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest_memory::VecMemory;

    #[test]
    fn completion_ring_wraps_and_flips_phase() {
        let mem = VecMemory::new(0, 4096);
        let mut cq = CompletionQueue::new(1, 0x100, 2, true, 1);
        let e = Completion {
            cid: 5,
            status: Status::SUCCESS,
            result: 0,
        };
        assert!(cq.free() > 0);
        cq.post(&mem, &e, 1, 0).unwrap();
        // Entry size 2 holds one completion until the host moves the head.
        assert_eq!(cq.free(), 0);
        let mut b = [0u8; 16];
        mem.read(0x100, &mut b).unwrap();
        let got = CompletionEntry::from_bytes(&b);
        assert_eq!(got.command_id(), 5);
        assert!(got.phase());
        assert!(cq.update_head(1));
        assert!(!cq.update_head(2));
        cq.post(&mem, &e, 1, 0).unwrap();
        assert_eq!((cq.tail, cq.phase), (0, false));
        let mut sq = SubmissionQueue::new(1, 0, 4, 1);
        assert!(!sq.update_tail(4));
        assert!(sq.update_tail(3));
        sq.advance();
        assert_eq!(sq.head_addr(), 64);
    }
}
