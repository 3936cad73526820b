// SPDX-License-Identifier: GPL-2.0

//! I/O queue pairs: one submission and one completion ring, the command
//! slots of their tags, and the completion interrupt.
//!
//! # Command slots
//!
//! Tag `t` of a hardware queue owns slot `t`: its PRP list page, its
//! scatterlist, and the request while the device works on it. Command IDs
//! are `t` plus a per-slot generation in the upper bits, so a completion
//! for a command that already completed (or never existed) is recognised.
//! A request leaves its slot exactly once, through
//! [`RequestSlot::take`](crate::blk_mq::RequestSlot::take), and only with
//! the completion ring lock held: by the completion path, by a controller
//! reset (which hands it back to blk-mq for reissue) or by the failure path,
//! the last two once the device was stopped or lost bus mastering, and
//! after they reaped the completions it had posted.
//!
//! # Ordering of a slot
//!
//! `queue_rq` stores the command ID in the slot and then parks the request
//! with a Release compare-exchange; the completion path loads the request
//! pointer with Acquire before it reads the command ID. So a completion that
//! sees a request in the slot also sees that request's command ID, and a
//! stale or duplicate completion (the previous generation's ID) cannot end
//! the new request while its data is still being transferred.

use crate::{
    blk_mq::{Op, OwnedRequest, Request, RequestSgl, RequestSlot},
    controller::{status_to_result, Controller, ProtocolError},
    device_memory::DeviceMemory,
    prp,
    queue::{CompletionRing, SubmissionRing},
    shim::{
        cqe::CompletionEntry,
        opcode::io,
        registers::DoorbellKind,
        sqe::{self, BlockRange, CreateIoCq, CreateIoSq, DatasetManagement, SubmissionEntry},
    },
};
use core::{
    cell::UnsafeCell,
    sync::atomic::{AtomicBool, AtomicU16, Ordering},
};
use kernel::{
    device,
    dma::Coherent,
    irq::{Handler, IrqReturn},
    new_spinlock_irq,
    prelude::*,
    sync::{Arc, SpinLockIrq},
};

/// Most data segments of one request.
pub(crate) const MAX_SEGMENTS: u32 = 128;
/// Largest transfer of one request: with page-aligned inner segments it
/// needs at most `MAX_TRANSFER / 4096 + 1` PRP entries, well within one list
/// page.
pub(crate) const MAX_TRANSFER: u32 = 512 * 1024;
/// Bits of a command ID that hold the tag.
const TAG_BITS: u32 = 10;
const TAG_MASK: u16 = (1 << TAG_BITS) - 1;
/// Most entries per I/O queue; queue depth is one less.
pub(crate) const MAX_QUEUE_ENTRIES: u16 = 1 << TAG_BITS;

const _: () = assert!((MAX_TRANSFER as u64 / prp::PAGE) as usize + 1 < prp::LIST_ENTRIES);

/// The command ID for `tag` in its slot's `generation`.
pub(crate) const fn command_id(tag: u16, generation: u16) -> u16 {
    (tag & TAG_MASK) | (generation << TAG_BITS)
}

/// The tag a command ID names.
pub(crate) const fn tag_of(cid: u16) -> u16 {
    cid & TAG_MASK
}

/// What a namespace needs to turn requests into commands.
pub(crate) struct NamespaceFormat {
    /// Namespace ID.
    pub(crate) nsid: u32,
    /// log2 of the logical block size (9..=12).
    pub(crate) lba_shift: u32,
}

/// The command slot of one tag.
struct CommandSlot {
    request: RequestSlot,
    /// Command ID of the command in flight from this slot.
    cid: AtomicU16,
    generation: AtomicU16,
    /// An Abort was sent for the command in flight.
    aborted: AtomicBool,
    /// Owned by the request that holds this slot's tag.
    sgl: UnsafeCell<RequestSgl>,
}

// SAFETY: `request`, `cid`, `generation` and `aborted` are atomics. `sgl`
// is only accessed by the owner of the slot's tag: the request in
// `queue_rq`, then whoever takes it out of `request` (see the module
// documentation), so no two threads reach it at once.
unsafe impl Sync for CommandSlot {}
// SAFETY: The atomics and the request pointer may move between threads;
// `RequestSgl` holds a scatterlist allocation and DMA mappings that are not
// tied to the thread that made them (they are unmapped from interrupt or
// work context as well).
unsafe impl Send for CommandSlot {}

/// An I/O queue pair.
#[pin_data]
pub(crate) struct IoQueue {
    qid: u16,
    depth: u16,
    ctrl: Arc<Controller>,
    #[pin]
    sq: SpinLockIrq<SubmissionRing>,
    #[pin]
    cq: SpinLockIrq<CompletionRing>,
    slots: KVec<CommandSlot>,
    /// One PRP list page per tag; the device reads it whenever it runs a
    /// command, so it lives as long as the rings (`device_memory.rs`).
    prp_lists: DeviceMemory<[u64]>,
}

impl IoQueue {
    /// Allocates queue pair `qid` with `entries` entries per ring (the
    /// device does not know about it yet).
    pub(crate) fn new(
        ctrl: Arc<Controller>,
        dev: &device::Device<device::Bound>,
        qid: u16,
        entries: u16,
    ) -> Result<Arc<Self>> {
        if !(2..=MAX_QUEUE_ENTRIES).contains(&entries) {
            return Err(EINVAL);
        }
        let depth = entries - 1;
        let mut slots = KVec::with_capacity(usize::from(depth), GFP_KERNEL)?;
        for _ in 0..depth {
            slots.push(
                CommandSlot {
                    request: RequestSlot::new(),
                    cid: AtomicU16::new(0),
                    generation: AtomicU16::new(0),
                    aborted: AtomicBool::new(false),
                    sgl: UnsafeCell::new(RequestSgl::new(MAX_SEGMENTS)?),
                },
                GFP_KERNEL,
            )?;
        }
        let access = ctrl.access();
        let prp_lists = DeviceMemory::lent(
            Coherent::zeroed_slice(dev, usize::from(depth) * prp::LIST_ENTRIES, GFP_KERNEL)?,
            access.clone(),
        );
        let sq = SubmissionRing::new(dev, entries, access)?;
        let cq = CompletionRing::new(dev, entries, access)?;
        Arc::pin_init(
            try_pin_init!(Self {
                qid,
                depth,
                ctrl,
                sq <- new_spinlock_irq!(sq),
                cq <- new_spinlock_irq!(cq),
                slots,
                prp_lists,
            }),
            GFP_KERNEL,
        )
    }

    /// Queue ID.
    pub(crate) fn qid(&self) -> u16 {
        self.qid
    }

    /// Bus addresses of the submission and completion rings.
    pub(crate) fn ring_addresses(&self) -> (u64, u64) {
        (self.sq.lock().dma_address(), self.cq.lock().dma_address())
    }

    /// Creates the queue pair on the device (Create I/O CQ with interrupt
    /// vector `qid`, then Create I/O SQ), at probe and again after a
    /// controller reset; the rings must be empty.
    pub(crate) fn create_on_device(&self) -> Result {
        let (sq_addr, cq_addr) = self.ring_addresses();
        let entries = u32::from(self.depth) + 1;
        let qid = self.qid;
        let pdev = self.ctrl.pdev();
        self.ctrl
            .admin_command(
                CreateIoCq {
                    qid,
                    entries,
                    base: cq_addr,
                    contiguous: true,
                    interrupts: true,
                    vector: qid,
                }
                .encode(0),
            )
            .inspect_err(|e| dev_err!(pdev, "Create I/O CQ {qid} failed: {e:?}\n"))?;
        self.ctrl
            .admin_command(
                CreateIoSq {
                    qid,
                    entries,
                    base: sq_addr,
                    contiguous: true,
                    priority: 0,
                    cqid: qid,
                }
                .encode(0),
            )
            .inspect_err(|e| dev_err!(pdev, "Create I/O SQ {qid} failed: {e:?}\n"))?;
        Ok(())
    }

    fn dma_dev(&self) -> &device::Device {
        self.ctrl.pdev().as_ref()
    }

    /// The PRP list page of `tag` and its bus address.
    ///
    /// # Safety
    ///
    /// The caller must own the request holding `tag`, and the device must
    /// not be working on a command that uses the page.
    #[expect(clippy::mut_from_ref)]
    unsafe fn prp_list(&self, tag: usize) -> (&mut [u64], u64) {
        let offset = tag * prp::LIST_ENTRIES;
        // SAFETY: `tag < depth`, so the page is inside `prp_lists`; the page
        // belongs to the tag's owner (caller's guarantee) and the device
        // only reads it while the command is outstanding, which is not the
        // case while the owner builds or reads it.
        let list = unsafe {
            core::slice::from_raw_parts_mut(
                self.prp_lists.as_mut_ptr().cast::<u64>().add(offset),
                prp::LIST_ENTRIES,
            )
        };
        let addr = self.prp_lists.dma_address() + (offset * 8) as u64;
        (list, addr)
    }

    /// Turns `rq` into a command, mapping its data for the device.
    fn build_command(
        &self,
        ns: &NamespaceFormat,
        rq: &Request,
        slot: &CommandSlot,
        tag: usize,
    ) -> Result<SubmissionEntry> {
        let shift = ns.lba_shift;
        let bytes = rq.bytes();
        let blocks = bytes >> shift;
        let slba = rq.sector() >> (shift - 9);
        let op = rq.op();
        let range = |deallocate: bool| BlockRange {
            nsid: ns.nsid,
            slba,
            blocks,
            fua: op == Op::Write && rq.is_fua(),
            deallocate,
        };
        let needs_blocks = matches!(op, Op::Read | Op::Write | Op::WriteZeroes | Op::Discard);
        if needs_blocks && (blocks == 0 || bytes & ((1 << shift) - 1) != 0) {
            return Err(EIO);
        }
        match op {
            Op::Read | Op::Write => {
                if blocks > 0x1_0000 {
                    return Err(EIO);
                }
                // SAFETY: This request owns the tag and so the slot's
                // scatterlist; the device is bound while disks exist.
                let sgl = unsafe { &mut *slot.sgl.get() };
                // SAFETY: The DMA device is bound while requests can be
                // queued (disks are removed before unbind completes), and the
                // request is owned until it ends, after `unmap`.
                unsafe { sgl.map(self.dma_dev(), rq)? };
                // SAFETY: This request owns the tag; the previous command of
                // the tag completed.
                let (list, list_addr) = unsafe { self.prp_list(tag) };
                let prps = prp::build(
                    sgl.segments().map(|s| (s.addr, s.len)),
                    u64::from(bytes),
                    list,
                    list_addr,
                );
                let prps = match prps {
                    Ok(p) => p,
                    Err(e) => {
                        // SAFETY: Mapped just above for the same device.
                        unsafe { sgl.unmap(self.dma_dev()) };
                        return Err(e);
                    }
                };
                let opcode = if op == Op::Read { io::READ } else { io::WRITE };
                let mut sqe = range(false).encode(opcode, 0);
                sqe.prp1.set(prps.prp1);
                sqe.prp2.set(prps.prp2);
                Ok(sqe)
            }
            Op::Flush => Ok(sqe::flush(ns.nsid, 0)),
            Op::WriteZeroes => {
                if blocks > 0x1_0000 {
                    return Err(EIO);
                }
                Ok(range(false).encode(io::WRITE_ZEROES, 0))
            }
            Op::Discard => {
                // One range, carried in the tag's PRP list page.
                // SAFETY: This request owns the tag, and the tag's previous
                // command completed before blk-mq could hand the tag out
                // again, so the device reads no command from this page now.
                let (list, list_addr) = unsafe { self.prp_list(tag) };
                list[0] = (u64::from(blocks) << 32).to_le();
                list[1] = slba.to_le();
                let mut sqe = DatasetManagement {
                    nsid: ns.nsid,
                    ranges: 1,
                    deallocate: true,
                }
                .encode(0);
                sqe.prp1.set(list_addr);
                Ok(sqe)
            }
            Op::Other(_) => Err(EOPNOTSUPP),
        }
    }

    /// Submits `rq` for namespace `ns`.
    pub(crate) fn submit(
        &self,
        ns: &NamespaceFormat,
        rq: OwnedRequest,
        last: bool,
    ) -> Result<(), (OwnedRequest, Error)> {
        if !self.ctrl.is_usable() {
            // During recovery (a protocol error or a lost command scheduled
            // a reset, or is about to) blk-mq keeps the request and tries
            // again later (BLK_STS_RESOURCE; the reset quiesces the queues
            // soon and unquiesces them when done); only a dead controller
            // fails it. (A broken controller is reset, or failed when the
            // reset budget is spent, which makes it dead.)
            let err = if !self.ctrl.is_dead() {
                EBUSY
            } else {
                EIO
            };
            return Err((rq, err));
        }
        let tag = rq.tag() as usize;
        let Some(slot) = self.slots.get(tag) else {
            return Err((rq, EIO));
        };
        let mut sqe = match self.build_command(ns, &rq, slot, tag) {
            Ok(sqe) => sqe,
            Err(e) => return Err((rq, e)),
        };
        let generation = slot
            .generation
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1);
        let cid = command_id(tag as u16, generation);
        sqe.set_cid(cid);
        slot.cid.store(cid, Ordering::Relaxed);
        slot.aborted.store(false, Ordering::Relaxed);
        if let Err(rq) = slot.request.put(rq) {
            // SAFETY: The request still owns its tag and the mapping.
            unsafe { (*slot.sgl.get()).unmap(self.dma_dev()) };
            return Err((rq, EIO));
        }
        let mut sq = self.sq.lock();
        if sq.push(&sqe).is_err() {
            drop(sq);
            // Cannot happen (at most `depth` commands are outstanding), but
            // if it did, take the request back under the completion lock.
            let _cq = self.cq.lock();
            return match slot.request.take() {
                Some(rq) => {
                    // SAFETY: This path took the request back and owns it.
                    unsafe { (*slot.sgl.get()).unmap(self.dma_dev()) };
                    Err((rq, EBUSY))
                }
                None => Ok(()),
            };
        }
        if last {
            self.publish(&mut sq);
        }
        Ok(())
    }

    fn publish(&self, sq: &mut SubmissionRing) {
        if let Some((old, tail)) = sq.take_unpublished() {
            if let Err(e) = self
                .ctrl
                .ring_io_doorbell(self.qid, DoorbellKind::SubmissionTail, old, tail)
            {
                // The registers are gone (unbind) or unreachable: stop
                // sending I/O; what is queued times out and is failed then.
                self.ctrl.protocol_error(
                    ProtocolError::Fatal,
                    format_args!("doorbell write failed: {e:?}"),
                );
            }
        }
    }

    /// Rings the doorbell for commands queued without it.
    pub(crate) fn commit(&self) {
        let mut sq = self.sq.lock();
        self.publish(&mut sq);
    }

    /// Handles posted completions. Returns whether there were any.
    pub(crate) fn process_completions(&self) -> bool {
        let mut cq = self.cq.lock();
        let old_head = cq.head();
        let mut any = false;
        let mut sq_head = None;
        while self.ctrl.is_usable() {
            let Some(cqe) = cq.pop() else { break };
            any = true;
            match self.complete_one(&cqe) {
                Ok(()) => sq_head = Some(cqe.head()),
                Err(()) => break,
            }
        }
        if any {
            let head = cq.head();
            let _ = self
                .ctrl
                .ring_io_doorbell(self.qid, DoorbellKind::CompletionHead, old_head, head);
        }
        drop(cq);
        if let Some(head) = sq_head {
            let mut sq = self.sq.lock();
            // A reset that began meanwhile empties the ring; a head from
            // before it must not land on the emptied ring.
            if self.ctrl.is_usable() && sq.set_head(head).is_err() {
                drop(sq);
                // A head outside the entries the device owns would let the
                // host overwrite commands the device has not fetched yet.
                self.ctrl.protocol_error(
                    ProtocolError::BadSqHead,
                    format_args!(
                        "SQ {} head {head} outside the submitted entries",
                        self.qid
                    ),
                );
            }
        }
        any
    }

    /// Validates one completion and ends its request. `Err` means the
    /// device broke the protocol; the entry is not trusted.
    fn complete_one(&self, cqe: &CompletionEntry) -> Result<(), ()> {
        if cqe.queue() != self.qid {
            self.ctrl.protocol_error(
                ProtocolError::BadSqId,
                format_args!("completion on queue {} names SQ {}", self.qid, cqe.queue()),
            );
            return Err(());
        }
        if cqe.head() > self.depth {
            self.ctrl.protocol_error(
                ProtocolError::BadSqHead,
                format_args!(
                    "SQ {} head {} beyond {} entries",
                    self.qid,
                    cqe.head(),
                    self.depth + 1
                ),
            );
            return Err(());
        }
        let cid = cqe.command_id();
        // A status the interface does not define is checked before the
        // request is taken: it stays in its slot, and the reset the
        // protocol error schedules issues it again, so the reader never
        // sees an error the device did not mean (or data it did not send).
        let result = match status_to_result(cqe.status()) {
            Ok(()) => Ok(()),
            Err(Some(e)) => Err(e),
            Err(None) => {
                self.ctrl.protocol_error(
                    ProtocolError::BadStatus,
                    format_args!("status {:#x} for command {cid:#x}", cqe.status().0),
                );
                return Err(());
            }
        };
        let slot = self.slots.get(usize::from(tag_of(cid)));
        let rq = slot.and_then(|slot| {
            // With the completion lock held nobody else takes from the
            // slot, so an occupied slot's `cid` belongs to its occupant;
            // `is_occupied` loads with Acquire, pairing with the Release of
            // `put`, so the `cid` read here is the occupant's (module
            // documentation).
            if slot.request.is_occupied() && slot.cid.load(Ordering::Relaxed) == cid {
                slot.request.take().map(|rq| (slot, rq))
            } else {
                None
            }
        });
        let Some((slot, rq)) = rq else {
            self.ctrl.protocol_error(
                ProtocolError::UnknownCommand,
                format_args!(
                    "completion for unknown command {cid:#x} on queue {} (stale, duplicate or made up)",
                    self.qid
                ),
            );
            return Err(());
        };
        // SAFETY: Taking the request from the slot made this path its owner,
        // and the device is done with its data: it posted this command's
        // completion (matched by tag and generation), which the interface
        // has it do only after the last data transfer of the command.
        unsafe { (*slot.sgl.get()).unmap(self.dma_dev()) };
        if result.is_ok() {
            self.ctrl.note_progress();
        }
        rq.end(result);
        Ok(())
    }

    /// Ends the requests whose completions the device posted before it was
    /// stopped (or lost bus mastering), as the NVMe PCI driver's
    /// `nvme_reap_pending_cqes()` does before requests are cancelled or
    /// requeued: those commands are done, so their results stand and their
    /// data is not transferred twice. Stops at the first entry that does not
    /// check out. Returns how many requests ended.
    ///
    /// The device must not be fetching commands any more (disabled or
    /// without bus mastering), and the tag set quiesced or failed, so the
    /// ring only shrinks here.
    pub(crate) fn reap_posted(&self) -> usize {
        let mut cq = self.cq.lock();
        let mut reaped = 0;
        while let Some(cqe) = cq.pop() {
            if self.complete_one(&cqe).is_err() {
                break;
            }
            reaped += 1;
        }
        reaped
    }

    /// Whether `rq` is waiting in its slot for the device.
    pub(crate) fn is_outstanding(&self, rq: &Request) -> bool {
        self.slots
            .get(rq.tag() as usize)
            .is_some_and(|slot| slot.request.holds(rq))
    }

    /// Returns the command ID to abort for `rq`, the first time only.
    pub(crate) fn abort_once(&self, rq: &Request) -> Option<u16> {
        let slot = self.slots.get(rq.tag() as usize)?;
        // `holds` loads with Acquire: the `cid` read below is `rq`'s.
        if !slot.request.holds(rq) || slot.aborted.swap(true, Ordering::Relaxed) {
            return None;
        }
        Some(slot.cid.load(Ordering::Relaxed))
    }

    /// Hands every outstanding request back to blk-mq to be issued again,
    /// and empties both rings, as the device's own queues are after a
    /// controller reset. Returns how many requests went back.
    ///
    /// The controller must be disabled (CSTS.RDY = 0), which stopped the
    /// device: it no longer reads or writes the requests' memory, so their
    /// data can be unmapped and sent again later. The tag set must be
    /// quiesced, so nothing is being submitted. Completions the device
    /// posted before it stopped must have been reaped
    /// ([`IoQueue::reap_posted`]): they are thrown away here.
    pub(crate) fn requeue_all(&self) -> usize {
        let mut cq = self.cq.lock();
        let mut requeued = 0;
        for slot in self.slots.iter() {
            if let Some(rq) = slot.request.take() {
                // SAFETY: Taking the request made this path its owner; the
                // controller answered CC.EN = 0 with CSTS.RDY = 0 (caller's
                // guarantee), so the device dropped the command with its
                // queue and accesses none of its pages any more.
                unsafe { (*slot.sgl.get()).unmap(self.dma_dev()) };
                rq.requeue();
                requeued += 1;
            }
        }
        // The device dropped the queue (controller disabled): it owns no
        // entry of either ring. A completion pass moves the SQ head only
        // if the controller is usable, checked under the SQ lock, and the
        // reset marked it unusable before disabling it; so no head from
        // before lands on the emptied ring.
        cq.reset();
        drop(cq);
        self.sq.lock().reset();
        requeued
    }

    /// Ends every outstanding request with `err`.
    ///
    /// The device must not be able to touch the requests' memory any more:
    /// it confirmed it stopped (CSTS.RDY = 0), or its bus mastering was
    /// cleared, which forbids it to start any memory access. (Only then may
    /// the pages go back to their owners; the rings and PRP lists stay
    /// allocated until the device is confirmed stopped, see
    /// `device_memory.rs`.)
    pub(crate) fn cancel_all(&self, err: Error) -> usize {
        let _cq = self.cq.lock();
        let mut cancelled = 0;
        for slot in self.slots.iter() {
            if let Some(rq) = slot.request.take() {
                // SAFETY: Taking the request made this path its owner; the
                // device confirmed it stopped or lost bus mastering
                // (caller's guarantee), so it starts no access to these
                // pages any more.
                unsafe { (*slot.sgl.get()).unmap(self.dma_dev()) };
                rq.end(Err(err));
                cancelled += 1;
            }
        }
        cancelled
    }
}

/// The completion interrupt of one queue pair.
pub(crate) struct QueueIrq(pub(crate) Arc<IoQueue>);

impl Handler for QueueIrq {
    fn handle(&self) -> IrqReturn {
        if self.0.process_completions() {
            IrqReturn::Handled
        } else {
            IrqReturn::None
        }
    }
}

#[kunit_tests(dpublk_command_id)]
mod tests {
    use super::*;

    #[test]
    fn tag_round_trip() {
        for tag in [0u16, 1, 254, 1023] {
            for generation in [0u16, 1, 2, 63, 64, 65535] {
                assert_eq!(tag_of(command_id(tag, generation)), tag);
            }
        }
    }

    #[test]
    fn generations_differ() {
        // Consecutive uses of a slot get different command IDs, so a late
        // completion for the previous use is not taken for the current one.
        for generation in 0..64u16 {
            assert_ne!(command_id(7, generation), command_id(7, generation + 1));
        }
        // The generation wraps after 64 uses of the slot.
        assert_eq!(command_id(7, 0), command_id(7, 64));
    }
}
