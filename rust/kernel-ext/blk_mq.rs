// SPDX-License-Identifier: GPL-2.0

//! blk-mq for a hardware queue driver: what the in-tree `kernel::block::mq`
//! does not (yet) offer.
//!
//! The in-tree abstraction owns its `blk_mq_ops` table and exposes no
//! request fields, no error completion, no per-hardware-queue data, no
//! timeout callback and no queue mapping, and none of these can be added from
//! outside the `kernel` crate. So this layer owns the whole blk-mq surface the
//! driver uses, kept small:
//!
//! - [`Operations`]: the driver's callbacks (`queue_rq`, `commit_rqs`,
//!   `timeout`), each handed the hardware queue the request runs on;
//! - [`TagSet`]: a `struct blk_mq_tag_set` whose hardware queues map to the
//!   device's interrupt vectors (`blk_mq_map_hw_queues`), quiesced and
//!   unquiesced as a whole around a controller reset;
//! - [`Disk`]: a `struct gendisk` with queue [`Limits`], removed on drop;
//! - [`OwnedRequest`]: the driver's ownership of one started request, read
//!   accessors (sector, bytes, op, FUA, tag) and the only ways to end it or
//!   hand it back for requeueing;
//! - [`RequestSlot`]: an atomic cell where an in-flight request waits for its
//!   completion, so completion, timeout and teardown race safely for it;
//! - [`RequestSgl`]: the request's pages mapped for the device with the DMA
//!   API (`blk_rq_map_sg` + `dma_map_sg`), unmapped before the request ends.
//!
//! Static inline C accessors (`blk_rq_pos()`, `req_op()` ...) read plain
//! fields of `struct request`; they are mirrored here as field reads so no C
//! helper file is needed.

use core::{
    marker::PhantomData,
    ptr::NonNull,
    sync::atomic::{AtomicPtr, Ordering},
};
use kernel::{
    bindings, device,
    dma::DataDirection,
    error::{to_result, Error},
    fmt,
    prelude::*,
    new_mutex,
    sync::{aref::ARef, Arc, Mutex},
    types::Opaque,
};

/// Raw `struct device` of a device.
fn raw_device<Ctx: device::DeviceContext>(dev: &device::Device<Ctx>) -> *mut bindings::device {
    // `device::Device` is a `#[repr(transparent)]` wrapper of
    // `Opaque<bindings::device>`, itself transparent over the C struct.
    core::ptr::from_ref(dev).cast_mut().cast()
}

/// `BLK_FEAT_WRITE_CACHE` (include/linux/blkdev.h): the device has a volatile
/// write cache, so the block layer sends flushes.
const BLK_FEAT_WRITE_CACHE: u32 = 1 << 0;
/// `BLK_FEAT_FUA` (include/linux/blkdev.h): the device honours FUA writes.
const BLK_FEAT_FUA: u32 = 1 << 1;
/// `REQ_FUA` (include/linux/blk_types.h).
const REQ_FUA: u32 = 1 << bindings::req_flag_bits___REQ_FUA;
/// `REQ_OP_MASK` (include/linux/blk_types.h).
const REQ_OP_MASK: u32 = (1 << bindings::REQ_OP_BITS) - 1;

/// What a request asks the device to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// Read data from the device.
    Read,
    /// Write data to the device.
    Write,
    /// Make previously completed writes durable.
    Flush,
    /// The range is no longer needed.
    Discard,
    /// Write zeroes to the range.
    WriteZeroes,
    /// Anything else; the driver fails it as not supported.
    Other(u32),
}

/// The driver side of blk-mq.
///
/// Callbacks run concurrently on different hardware queues; `queue_rq` and
/// `commit_rqs` of one hardware queue may also run concurrently (blk-mq does
/// not serialize them), so `HwQueue` carries its own locking.
pub(crate) trait Operations: Sized + 'static {
    /// Data of the whole tag set: the device.
    type TagSetData: Send + Sync + 'static;
    /// Data of one hardware queue.
    type HwQueue: Send + Sync + 'static;
    /// Data of one disk (request queue).
    type DiskData: Send + Sync + 'static;

    /// Returns hardware queue `index`, which lives as long as `set`.
    fn hw_queue(set: &Self::TagSetData, index: u32) -> Result<&Self::HwQueue>;

    /// Starts `rq` on the device.
    ///
    /// On success the driver keeps the request (in a [`RequestSlot`]) until
    /// it ends it. On failure it hands it back with the error, and blk-mq
    /// ends it with that error, except [`EBUSY`] and [`EAGAIN`], which make
    /// blk-mq retry later.
    fn queue_rq(
        hwq: &Self::HwQueue,
        disk: &Self::DiskData,
        rq: OwnedRequest,
        is_last: bool,
    ) -> Result<(), (OwnedRequest, Error)>;

    /// Makes requests queued with `is_last == false` visible to the device.
    fn commit_rqs(hwq: &Self::HwQueue);

    /// Called when `rq`, owned by the driver, ran out of time.
    fn timeout(set: &Self::TagSetData, hwq: &Self::HwQueue, rq: &Request) -> TimeoutAction;
}

/// What the block layer should do after a timeout callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TimeoutAction {
    /// The driver ended the request or will end it soon.
    Done,
    /// Give the request another full timeout.
    ResetTimer,
}

/// A request the driver can look at but does not own (timeout callback).
///
/// # Invariants
///
/// `self.0` is a valid, started `struct request` for the lifetime of the
/// reference.
#[repr(transparent)]
pub(crate) struct Request(Opaque<bindings::request>);

impl Request {
    /// # Safety
    ///
    /// `ptr` must point to a started request that stays valid for `'a`.
    unsafe fn from_raw<'a>(ptr: *mut bindings::request) -> &'a Self {
        // SAFETY: `Request` is a transparent wrapper of `struct request` and
        // the caller guarantees validity for `'a`.
        unsafe { &*ptr.cast::<Self>() }
    }

    fn raw(&self) -> *mut bindings::request {
        self.0.get()
    }

    /// The tag: this request's index among its hardware queue's requests.
    pub(crate) fn tag(&self) -> u32 {
        // SAFETY: By the type invariant the request is valid; the tag of a
        // started request does not change until it ends (`rq->tag`, as
        // `blk_mq_unique_tag()` reads it).
        let tag = unsafe { (*self.raw()).tag };
        tag as u32
    }

    /// First sector (512 bytes) of the request (`blk_rq_pos()`).
    pub(crate) fn sector(&self) -> u64 {
        // SAFETY: By the type invariant the request is valid, and the driver
        // is the only one changing a started request's position (it never
        // does).
        unsafe { (*self.raw()).__sector }
    }

    /// Bytes the request transfers (`blk_rq_bytes()`).
    pub(crate) fn bytes(&self) -> u32 {
        // SAFETY: By the type invariant the request is valid; a started
        // request's length changes only when its driver completes part of
        // it, which this driver never does.
        unsafe { (*self.raw()).__data_len }
    }

    /// Number of physical segments (`blk_rq_nr_phys_segments()` for
    /// requests with data).
    pub(crate) fn phys_segments(&self) -> u32 {
        // SAFETY: By the type invariant the request is valid; its segment
        // count was fixed when the bios were merged, before it was started.
        u32::from(unsafe { (*self.raw()).nr_phys_segments })
    }

    fn flags(&self) -> u32 {
        // SAFETY: By the type invariant the request is valid, and
        // `cmd_flags` is fixed once the request is started.
        unsafe { (*self.raw()).cmd_flags }
    }

    /// The operation (`req_op()`).
    pub(crate) fn op(&self) -> Op {
        match self.flags() & REQ_OP_MASK {
            bindings::req_op_REQ_OP_READ => Op::Read,
            bindings::req_op_REQ_OP_WRITE => Op::Write,
            bindings::req_op_REQ_OP_FLUSH => Op::Flush,
            bindings::req_op_REQ_OP_DISCARD => Op::Discard,
            bindings::req_op_REQ_OP_WRITE_ZEROES => Op::WriteZeroes,
            other => Op::Other(other),
        }
    }

    /// Whether the write must be durable when it completes.
    pub(crate) fn is_fua(&self) -> bool {
        self.flags() & REQ_FUA != 0
    }
}

/// The driver's ownership of a started request.
///
/// Exactly one `OwnedRequest` exists for a request between `queue_rq` and
/// its end; it is not `Clone`. Dropping it without ending the request would
/// hang the request forever, so `Drop` ends it with an I/O error.
///
/// # Invariants
///
/// `self.0` points to a started request that the driver owns: blk-mq does
/// not end, free or reuse it until [`OwnedRequest::end`] runs.
pub(crate) struct OwnedRequest(NonNull<bindings::request>);

// SAFETY: A started request may be ended from any context and CPU
// (interrupt handlers do); the owner is unique (type invariant).
unsafe impl Send for OwnedRequest {}

impl core::ops::Deref for OwnedRequest {
    type Target = Request;

    fn deref(&self) -> &Request {
        // SAFETY: By the type invariant the request is valid while `self`
        // lives.
        unsafe { Request::from_raw(self.0.as_ptr()) }
    }
}

impl OwnedRequest {
    /// Ends the request: `Ok` for success or the error the I/O failed with
    /// (mapped to a block status by `errno_to_blk_status()`).
    pub(crate) fn end(self, result: Result) {
        let status = match result {
            Ok(()) => bindings::BLK_STS_OK as bindings::blk_status_t,
            // SAFETY: Pure conversion of an errno value.
            Err(e) => unsafe { bindings::errno_to_blk_status(e.to_errno()) },
        };
        let ptr = self.0.as_ptr();
        core::mem::forget(self);
        // SAFETY: The driver owned the started request (type invariant) and
        // gives it back exactly once: `self` is consumed and forgotten.
        unsafe { bindings::blk_mq_end_request(ptr, status) };
    }
}

impl OwnedRequest {
    /// Gives the request back to blk-mq to be issued again later, through
    /// the queue's requeue list (`blk_mq_requeue_request(rq, true)`): a
    /// controller reset hands back what the device lost. The driver must be
    /// done with the request's memory (data unmapped, the device stopped).
    ///
    /// While the queue is quiesced the request waits in blk-mq; it is
    /// dispatched again once the queue runs.
    pub(crate) fn requeue(self) {
        let ptr = self.0.as_ptr();
        core::mem::forget(self);
        // SAFETY: The driver owned the started request (type invariant) and
        // gives it back exactly once: `self` is consumed and forgotten.
        // Requeueing and kicking the list only take spinlocks, so any
        // context may do it.
        unsafe { bindings::blk_mq_requeue_request(ptr, true) };
    }
}

impl Drop for OwnedRequest {
    fn drop(&mut self) {
        // SAFETY: The driver owns the started request (type invariant) and
        // this is its only hand-back: `drop` runs once, and `end` and
        // `requeue` forget `self` instead of dropping it.
        unsafe {
            bindings::blk_mq_end_request(
                self.0.as_ptr(),
                bindings::errno_to_blk_status(EIO.to_errno()),
            )
        };
    }
}

/// Where an in-flight request waits for its completion.
///
/// Completion, timeout handling and teardown all end requests; whoever
/// [`take`](RequestSlot::take)s the request from the slot owns it, so a
/// request is ended exactly once even when they race.
pub(crate) struct RequestSlot(AtomicPtr<bindings::request>);

impl RequestSlot {
    /// An empty slot.
    pub(crate) const fn new() -> Self {
        Self(AtomicPtr::new(core::ptr::null_mut()))
    }

    /// Parks `rq` in the slot; gives it back if the slot is occupied.
    pub(crate) fn put(&self, rq: OwnedRequest) -> Result<(), OwnedRequest> {
        let ptr = rq.0.as_ptr();
        match self.0.compare_exchange(
            core::ptr::null_mut(),
            ptr,
            Ordering::Release,
            Ordering::Relaxed,
        ) {
            Ok(_) => {
                // The slot owns the request now.
                core::mem::forget(rq);
                Ok(())
            }
            Err(_) => Err(rq),
        }
    }

    /// Takes the request out of the slot, if there is one.
    pub(crate) fn take(&self) -> Option<OwnedRequest> {
        let ptr = self.0.swap(core::ptr::null_mut(), Ordering::Acquire);
        // INVARIANT: A non-null pointer was put there by `put` from an
        // `OwnedRequest` whose ownership the slot kept; the swap hands it to
        // exactly one caller.
        NonNull::new(ptr).map(OwnedRequest)
    }

    /// Whether the slot holds a request.
    ///
    /// Loads with Acquire, pairing with the Release of [`Self::put`]: a
    /// caller that sees the request also sees everything its submitter
    /// stored before parking it (the command ID the completion is checked
    /// against).
    pub(crate) fn is_occupied(&self) -> bool {
        !self.0.load(Ordering::Acquire).is_null()
    }

    /// Whether the slot holds exactly `rq` (Acquire, as
    /// [`Self::is_occupied`]).
    pub(crate) fn holds(&self, rq: &Request) -> bool {
        core::ptr::eq(self.0.load(Ordering::Acquire), rq.raw())
    }
}

impl Drop for RequestSlot {
    fn drop(&mut self) {
        // A request left behind is ended with an error rather than leaked.
        drop(self.take());
    }
}

/// One data segment of a mapped request, as the device must address it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DmaSegment {
    /// Bus address (IOVA under an IOMMU).
    pub(crate) addr: u64,
    /// Length in bytes.
    pub(crate) len: u32,
}

/// Scatterlist storage for one command slot and the DMA mapping of the
/// request currently using it.
///
/// A request whose data is one physical segment (most small I/O) is mapped
/// straight from its bio vector with `dma_map_page_attrs`, as the NVMe PCI
/// driver does: no scatterlist is filled or walked.
///
/// # Invariants
///
/// - `entries` points to `capacity` zero-initialized or blk-mq-filled
///   `struct scatterlist`, owned by `self`.
/// - When `single` is `Some`, it is a segment mapped with
///   `dma_map_page_attrs(dev, .., len, dir)` and `mapped` is 1; it must be
///   unmapped before the memory behind it is given back to the block layer.
/// - Otherwise, when `mapped > 0`, the first `in_sg` entries were mapped with
///   `dma_map_sg_attrs(dev, .., in_sg, dir)` and `mapped` entries hold the
///   resulting DMA segments; they must be unmapped before the memory behind
///   them is given back to the block layer.
pub(crate) struct RequestSgl {
    entries: KVec<bindings::scatterlist>,
    capacity: u32,
    in_sg: u32,
    mapped: u32,
    single: Option<DmaSegment>,
    dir: DataDirection,
}

/// `DMA_MAPPING_ERROR` (include/linux/dma-mapping.h): what a failed
/// `dma_map_page_attrs` returns. `dma_mapping_error()` is a static inline
/// that compares with it (plus a DMA-API-debug hook).
const DMA_MAPPING_ERROR: u64 = !0;

// SAFETY: The scatterlist holds page pointers and addresses owned by the
// request being mapped; it is only touched by whoever owns that request.
unsafe impl Send for RequestSgl {}

impl RequestSgl {
    /// Storage for requests of up to `capacity` physical segments.
    pub(crate) fn new(capacity: u32) -> Result<Self> {
        let entries = KVec::from_elem(
            bindings::scatterlist::default(),
            capacity as usize,
            GFP_KERNEL,
        )?;
        Ok(Self {
            entries,
            capacity,
            in_sg: 0,
            mapped: 0,
            single: None,
            dir: DataDirection::Bidirectional,
        })
    }

    /// Maps the data pages of `rq` for `dev` and returns the number of DMA
    /// segments. A request that has no data maps to zero segments.
    ///
    /// # Safety
    ///
    /// `dev` must be bound, and must stay bound until [`Self::unmap`]; the
    /// caller must own `rq` until then.
    pub(crate) unsafe fn map(&mut self, dev: &device::Device, rq: &Request) -> Result<u32> {
        if self.mapped != 0 {
            return Err(EBUSY);
        }
        let dir = match rq.op() {
            Op::Read => DataDirection::FromDevice,
            Op::Write => DataDirection::ToDevice,
            _ => return Ok(0),
        };
        if rq.bytes() == 0 {
            return Ok(0);
        }
        let segments = rq.phys_segments();
        if segments > self.capacity || segments == 0 {
            return Err(EINVAL);
        }
        if segments == 1 {
            // SAFETY: `dev` is bound and the caller owns the started
            // request (caller's guarantee).
            if let Some(done) = unsafe { self.map_single(dev, rq, dir) } {
                return done;
            }
        }
        let sgl = self.entries.as_mut_ptr();
        // Only the entries this request uses are (re)initialized.
        // SAFETY: `sgl` points to `capacity >= segments` entries (type
        // invariant).
        unsafe { bindings::sg_init_table(sgl, segments) };
        let mut last: *mut bindings::scatterlist = core::ptr::null_mut();
        // SAFETY: The caller owns the started request; `sgl` has the
        // request's `nr_phys_segments` entries initialized, and
        // `blk_rq_map_sg` never fills more.
        let nents = unsafe { bindings::__blk_rq_map_sg(rq.raw(), sgl, &mut last) };
        if nents <= 0 || nents as u32 > segments {
            return Err(EIO);
        }
        // SAFETY: The first `nents` entries describe the request's pages;
        // `dev` is bound (caller's guarantee).
        let mapped =
            unsafe { bindings::dma_map_sg_attrs(raw_device(dev), sgl, nents, dir.into(), 0) };
        if mapped == 0 {
            return Err(ENOMEM);
        }
        // INVARIANT: The mapping and its parameters are recorded for unmap.
        self.in_sg = nents as u32;
        self.mapped = mapped;
        self.dir = dir;
        Ok(mapped)
    }

    /// Maps a one-segment request straight from its first bio vector.
    /// Returns `None` (nothing mapped) if the vector does not cover the
    /// whole request, so the caller takes the scatterlist path.
    ///
    /// # Safety
    ///
    /// As for [`Self::map`]; `rq` has one physical segment and data in
    /// direction `dir`, and nothing is mapped.
    unsafe fn map_single(
        &mut self,
        dev: &device::Device,
        rq: &Request,
        dir: DataDirection,
    ) -> Option<Result<u32>> {
        let raw = rq.raw();
        // SAFETY: The caller owns the started request, so its fields and its
        // first bio (and that bio's vector array, indexed by its own
        // iterator) stay as they are until it ends; a read or write request
        // with data has a bio. Only plain fields are copied out.
        let (page, offset, len) = unsafe {
            if (*raw).rq_flags & (1 << bindings::rqf_flags___RQF_SPECIAL_PAYLOAD) != 0 {
                return None;
            }
            let bio = (*raw).bio;
            if bio.is_null() {
                return None;
            }
            let iter = (*bio).bi_iter;
            let bvec = *(*bio).bi_io_vec.add(iter.bi_idx as usize);
            // `mp_bvec_iter_bvec()`: the rest of the current multi-page
            // vector, bounded by what is left of the bio.
            let len = bvec.bv_len.checked_sub(iter.bi_offset)?.min(iter.bi_size);
            (bvec.bv_page, bvec.bv_offset + iter.bi_offset, len)
        };
        // Several bios can make one physical segment; then the first vector
        // is only part of the data.
        if len != rq.bytes() || len == 0 {
            return None;
        }
        // SAFETY: `page` and `offset..offset + len` describe the request's
        // data, owned by the caller's request until it ends; `dev` is bound
        // (caller's guarantee).
        let addr = unsafe {
            bindings::dma_map_page_attrs(
                raw_device(dev),
                page,
                offset as usize,
                len as usize,
                dir.into(),
                0,
            )
        };
        if addr == DMA_MAPPING_ERROR {
            return Some(Err(ENOMEM));
        }
        // INVARIANT: The mapping and its parameters are recorded for unmap.
        self.single = Some(DmaSegment { addr, len });
        self.mapped = 1;
        self.dir = dir;
        Some(Ok(1))
    }

    /// The DMA segments of the current mapping.
    pub(crate) fn segments(&self) -> impl Iterator<Item = DmaSegment> + '_ {
        let sg_entries = if self.single.is_some() {
            0
        } else {
            self.mapped as usize
        };
        Iterator::chain(self.single.into_iter(), self.sg_segments(sg_entries))
    }

    fn sg_segments(&self, count: usize) -> impl Iterator<Item = DmaSegment> + '_ {
        self.entries
            .iter()
            .take(count)
            .map(|sg| DmaSegment {
                // `sg_dma_address()` and `sg_dma_len()`: with
                // CONFIG_NEED_SG_DMA_LENGTH the mapped length has its own
                // field.
                addr: sg.dma_address,
                len: Self::dma_len(sg),
            })
    }

    #[cfg(CONFIG_NEED_SG_DMA_LENGTH)]
    fn dma_len(sg: &bindings::scatterlist) -> u32 {
        sg.dma_length
    }

    #[cfg(not(CONFIG_NEED_SG_DMA_LENGTH))]
    fn dma_len(sg: &bindings::scatterlist) -> u32 {
        sg.length
    }

    /// Unmaps the current mapping, if any.
    ///
    /// # Safety
    ///
    /// `dev` must be the device passed to [`Self::map`], still bound.
    pub(crate) unsafe fn unmap(&mut self, dev: &device::Device) {
        if self.mapped == 0 {
            return;
        }
        if let Some(segment) = self.single.take() {
            // SAFETY: By the type invariant `segment` was mapped for `dev`
            // in direction `dir` with this length.
            unsafe {
                bindings::dma_unmap_page_attrs(
                    raw_device(dev),
                    segment.addr,
                    segment.len as usize,
                    self.dir.into(),
                    0,
                )
            };
            self.mapped = 0;
            return;
        }
        // SAFETY: By the type invariant the first `in_sg` entries were
        // mapped for `dev` in direction `dir`; unmap takes the original
        // entry count, as `dma_unmap_sg()` requires.
        unsafe {
            bindings::dma_unmap_sg_attrs(
                raw_device(dev),
                self.entries.as_mut_ptr(),
                self.in_sg as i32,
                self.dir.into(),
                0,
            )
        };
        self.mapped = 0;
        self.in_sg = 0;
    }
}

/// Queue limits of a disk, as the device reports them.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Limits {
    /// Logical block size in bytes.
    pub(crate) logical_block_size: u32,
    /// Physical block size in bytes.
    pub(crate) physical_block_size: u32,
    /// Largest request in 512-byte sectors.
    pub(crate) max_hw_sectors: u32,
    /// Most data segments per request.
    pub(crate) max_segments: u16,
    /// Segments may not cross (mask + 1)-aligned boundaries inside a request
    /// (NVMe PRPs: every segment but the first starts on a page, every
    /// segment but the last ends on one).
    pub(crate) virt_boundary_mask: u64,
    /// Required alignment of data buffers (mask).
    pub(crate) dma_alignment: u32,
    /// The device has a volatile write cache.
    pub(crate) write_cache: bool,
    /// The device honours FUA.
    pub(crate) fua: bool,
    /// Largest discard in sectors (0: no discard).
    pub(crate) max_discard_sectors: u32,
    /// Largest write zeroes in sectors (0: none).
    pub(crate) max_write_zeroes_sectors: u32,
}

/// The tag set's `driver_data`: the driver's data plus what `map_queues`
/// needs.
struct SetShared<T: Operations> {
    data: Arc<T::TagSetData>,
    /// Device whose interrupt affinity places the hardware queues, and the
    /// first interrupt vector used by hardware queue 0.
    irq_dev: Option<ARef<device::Device>>,
    first_vector: u32,
}

/// A `struct blk_mq_tag_set`.
///
/// # Invariants
///
/// - `inner` was set up by `blk_mq_alloc_tag_set` and is freed in `drop`.
/// - `inner.driver_data` is a `KBox<SetShared<T>>` leaked by `new` and
///   reclaimed in `drop`.
/// - While `quiesced` holds `true`, every request queue of the set is
///   quiesced once on behalf of [`TagSet::quiesce`]: the queues there were
///   at the time, and every queue allocated since ([`Disk::new`] quiesces a
///   new queue under the same lock). So [`TagSet::unquiesce`] undoes
///   exactly one quiesce per queue.
#[pin_data(PinnedDrop)]
pub(crate) struct TagSet<T: Operations> {
    #[pin]
    inner: Opaque<bindings::blk_mq_tag_set>,
    #[pin]
    quiesced: Mutex<bool>,
    _p: PhantomData<T>,
}

// SAFETY: The tag set is used by blk-mq from any CPU; the driver data it
// carries is `Send + Sync` (trait bounds).
unsafe impl<T: Operations> Send for TagSet<T> {}
// SAFETY: `&TagSet` only reaches the `blk_mq_tag_set` through blk-mq calls
// that do their own locking, the `quiesced` flag through its mutex, and the
// driver data, which is `Send + Sync` (trait bounds); so sharing references
// across CPUs is sound.
unsafe impl<T: Operations> Sync for TagSet<T> {}

impl<T: Operations> TagSet<T> {
    /// Allocates a tag set of `nr_hw_queues` queues of `depth` tags each,
    /// with `timeout_ms` per request. With `irq_dev`, hardware queue `i` is
    /// placed on the CPUs of interrupt vector `first_vector + i`.
    pub(crate) fn new(
        data: Arc<T::TagSetData>,
        nr_hw_queues: u32,
        depth: u32,
        timeout_ms: u32,
        irq_dev: Option<ARef<device::Device>>,
        first_vector: u32,
    ) -> impl PinInit<Self, Error> {
        let shared = KBox::new(
            SetShared::<T> {
                data,
                irq_dev,
                first_vector,
            },
            GFP_KERNEL,
        );
        // SAFETY: Pure conversion.
        let timeout = unsafe { bindings::__msecs_to_jiffies(timeout_ms) } as u32;
        let init = move |raw: *mut bindings::blk_mq_tag_set| {
            let shared = KBox::into_raw(shared?);
            // SAFETY: `raw` is valid for writes (pin-init contract); all-zero is a valid
            // `blk_mq_tag_set` to start from.
            unsafe {
                raw.write(bindings::blk_mq_tag_set {
                    ops: OperationsVTable::<T>::vtable(),
                    nr_maps: 1,
                    nr_hw_queues,
                    queue_depth: depth,
                    cmd_size: 0,
                    numa_node: bindings::NUMA_NO_NODE,
                    timeout,
                    flags: 0,
                    driver_data: shared.cast(),
                    ..pin_init::zeroed()
                })
            };
            // SAFETY: `raw` is a fully set up tag set description at its final
            // address.
            let ret = to_result(unsafe { bindings::blk_mq_alloc_tag_set(raw) });
            if let Err(e) = ret {
                // SAFETY: `shared` came from `KBox::into_raw` above and blk-mq
                // did not keep it.
                drop(unsafe { KBox::from_raw(shared) });
                return Err(e);
            }
            Ok(())
        };
        // `quiesced` cannot fail to initialize, so a set allocated by `init`
        // is always dropped through `PinnedDrop`.
        try_pin_init!(Self {
            inner <- Opaque::try_ffi_init(init),
            quiesced <- new_mutex!(false),
            _p: PhantomData,
        })
    }

    fn raw(&self) -> *mut bindings::blk_mq_tag_set {
        self.inner.get()
    }

    /// Stops dispatch on every request queue of the set and waits until no
    /// `queue_rq` runs any more (`blk_mq_quiesce_tagset`). Requests keep
    /// arriving and wait in blk-mq until [`Self::unquiesce`].
    ///
    /// Disks added meanwhile start quiesced. Does nothing if the set is
    /// quiesced already. Sleeps; must not be called from a blk-mq callback.
    pub(crate) fn quiesce(&self) {
        let mut quiesced = self.quiesced.lock();
        if *quiesced {
            return;
        }
        // SAFETY: The set was allocated (type invariant); the call walks its
        // queue list under RCU and waits for dispatch to stop.
        unsafe { bindings::blk_mq_quiesce_tagset(self.raw()) };
        // INVARIANT: Every queue of the set is quiesced once; new ones are
        // quiesced by `Disk::new`, which takes this lock.
        *quiesced = true;
    }

    /// Lets dispatch run again on every request queue of the set, and runs
    /// the hardware queues (`blk_mq_unquiesce_tagset`). Does nothing if the
    /// set is not quiesced.
    pub(crate) fn unquiesce(&self) {
        let mut quiesced = self.quiesced.lock();
        if !*quiesced {
            return;
        }
        // SAFETY: The set was allocated; every queue on its list was
        // quiesced once by `quiesce` or `Disk::new` (type invariant), so
        // this undoes exactly that.
        unsafe { bindings::blk_mq_unquiesce_tagset(self.raw()) };
        // INVARIANT: No queue is quiesced on the set's behalf any more.
        *quiesced = false;
    }
}

#[pinned_drop]
impl<T: Operations> PinnedDrop for TagSet<T> {
    fn drop(self: Pin<&mut Self>) {
        let raw = self.raw();
        // SAFETY: By the type invariant the set was allocated and all disks
        // using it are gone (each `Disk` holds an `Arc` of the set).
        unsafe { bindings::blk_mq_free_tag_set(raw) };
        // SAFETY: `driver_data` is the leaked `KBox` (type invariant); blk-mq
        // no longer calls into the driver.
        drop(unsafe { KBox::from_raw((*raw).driver_data.cast::<SetShared<T>>()) });
    }
}

/// A disk (`struct gendisk`) on a tag set.
///
/// # Invariants
///
/// `gendisk` was added with `device_add_disk`; its queue's `queuedata` is an
/// `Arc<T::DiskData>` turned into a raw pointer, reclaimed in `drop`.
pub(crate) struct Disk<T: Operations> {
    gendisk: NonNull<bindings::gendisk>,
    _set: Arc<TagSet<T>>,
}

// SAFETY: The disk is a handle to kernel objects usable from any thread.
unsafe impl<T: Operations> Send for Disk<T> {}
// SAFETY: `&Disk` only allows thread-safe operations.
unsafe impl<T: Operations> Sync for Disk<T> {}

impl<T: Operations> Disk<T> {
    /// Creates and adds the disk `name` with `capacity` 512-byte sectors
    /// below `parent` in sysfs. A `read_only` disk (a snapshot) is made
    /// read-only before it is added, so no opener ever sees it writable.
    pub(crate) fn new(
        set: Arc<TagSet<T>>,
        parent: &device::Device,
        name: fmt::Arguments<'_>,
        limits: &Limits,
        capacity: u64,
        read_only: bool,
        data: Arc<T::DiskData>,
    ) -> Result<Self> {
        let mut lim: bindings::queue_limits = pin_init::zeroed();
        lim.logical_block_size = limits.logical_block_size;
        lim.physical_block_size = limits.physical_block_size;
        lim.max_hw_sectors = limits.max_hw_sectors;
        lim.max_segments = limits.max_segments;
        lim.virt_boundary_mask = limits.virt_boundary_mask as _;
        lim.dma_alignment = limits.dma_alignment;
        lim.max_hw_discard_sectors = limits.max_discard_sectors;
        lim.max_discard_segments = if limits.max_discard_sectors > 0 { 1 } else { 0 };
        lim.max_write_zeroes_sectors = limits.max_write_zeroes_sectors;
        if limits.write_cache {
            lim.features |= BLK_FEAT_WRITE_CACHE;
            if limits.fua {
                lim.features |= BLK_FEAT_FUA;
            }
        }

        let queuedata = Arc::into_raw(data).cast_mut().cast::<c_void>();
        // Joining the set and catching up with its quiesce state happen
        // under the set's quiesce lock (type invariant of `TagSet`).
        let quiesced = set.quiesced.lock();
        // SAFETY: The tag set is allocated; `lim` is a valid description;
        // the lock class key is static.
        let gendisk = kernel::error::from_err_ptr(unsafe {
            bindings::__blk_mq_alloc_disk(
                set.raw(),
                &mut lim,
                queuedata,
                kernel::static_lock_class!().as_ptr(),
            )
        });
        if let (Ok(g), true) = (&gendisk, *quiesced) {
            // SAFETY: `g` is a new disk with its queue; nothing dispatches
            // on it yet, so the quiesce needs no waiting.
            unsafe { bindings::blk_mq_quiesce_queue_nowait((**g).queue) };
        }
        drop(quiesced);
        let gendisk = match gendisk {
            Ok(g) => g,
            Err(e) => {
                // SAFETY: `queuedata` came from `Arc::into_raw` above and
                // blk-mq did not keep it.
                drop(unsafe { Arc::from_raw(queuedata.cast::<T::DiskData>()) });
                return Err(e);
            }
        };

        // Until `device_add_disk` the new disk is visible to nobody else.
        let result = (|| -> Result {
            // SAFETY: `gendisk` is valid, and access is exclusive before
            // `device_add_disk`.
            let disk_name = unsafe { &mut (*gendisk).disk_name };
            let mut writer = kernel::str::NullTerminatedFormatter::new(disk_name).ok_or(EINVAL)?;
            fmt::Write::write_fmt(&mut writer, name)?;
            // SAFETY: `gendisk` is valid; `fops` must point to a static table.
            unsafe { (*gendisk).fops = &DISK_OPS.0 };
            // SAFETY: `gendisk` is valid.
            unsafe { bindings::set_capacity(gendisk, capacity) };
            if read_only {
                // SAFETY: `gendisk` is valid and not added yet, and access
                // is exclusive. `set_disk_ro` sets its read-only flag; its
                // change uevent finds no sysfs path for an unnamed device and
                // is not sent (nvme marks a namespace's disk read-only at the
                // same point). `device_add_disk` below keeps the flag.
                unsafe { bindings::set_disk_ro(gendisk, true) };
            }
            // SAFETY: `gendisk` is valid and set up; `parent` is a live device.
            to_result(unsafe {
                bindings::device_add_disk(raw_device(parent), gendisk, core::ptr::null_mut())
            })
        })();
        if let Err(e) = result {
            // SAFETY: `gendisk` was never added; `put_disk` releases it, and
            // the queue data is reclaimed once.
            unsafe { bindings::put_disk(gendisk) };
            // SAFETY: `queuedata` came from `Arc::into_raw` above and the
            // disk that would have released it was never added (and is now
            // put), so this is the only reclaim of that reference.
            drop(unsafe { Arc::from_raw(queuedata.cast::<T::DiskData>()) });
            return Err(e);
        }
        Ok(Self {
            // SAFETY: `from_err_ptr` returned a non-error pointer, which blk-mq
            // guarantees is not null.
            gendisk: unsafe { NonNull::new_unchecked(gendisk) },
            _set: set,
        })
    }

    /// Whether the disk (or a partition of it) is open: mounted, held or
    /// opened by a program. Racy by nature; callers use it to refuse a
    /// removal with `EBUSY`, not to exclude openers.
    pub(crate) fn is_open(&self) -> bool {
        // SAFETY: The disk is added (type invariant), so `part0` is its
        // whole-disk block device; the counter is read atomically.
        unsafe {
            let part0 = (*self.gendisk.as_ptr()).part0;
            !part0.is_null() && core::ptr::read_volatile(&raw const (*part0).bd_openers.counter) > 0
        }
    }


    /// Fails all further I/O to the disk at once: the device is gone.
    pub(crate) fn mark_dead(&self) {
        // SAFETY: The disk is added (type invariant).
        unsafe { bindings::blk_mark_disk_dead(self.gendisk.as_ptr()) };
    }
}

impl<T: Operations> Drop for Disk<T> {
    fn drop(&mut self) {
        let gendisk = self.gendisk.as_ptr();
        // SAFETY: The disk was added (type invariant).
        let queuedata = unsafe { (*(*gendisk).queue).queuedata };
        // SAFETY: The disk was added; `del_gendisk` waits for its I/O to
        // drain and then no callback uses `queuedata` again.
        unsafe { bindings::del_gendisk(gendisk) };
        // SAFETY: Balances the allocation reference.
        unsafe { bindings::put_disk(gendisk) };
        // SAFETY: `queuedata` came from `Arc::into_raw` in `new`.
        drop(unsafe { Arc::from_raw(queuedata.cast::<T::DiskData>()) });
    }
}

/// Block device operations: none, but `owner` pins the module while a disk
/// is open, so the table (and the module) cannot go away under an open
/// block device.
static DISK_OPS: DiskOps = DiskOps(bindings::block_device_operations {
    submit_bio: None,
    open: None,
    release: None,
    ioctl: None,
    compat_ioctl: None,
    check_events: None,
    unlock_native_capacity: None,
    getgeo: None,
    set_read_only: None,
    swap_slot_free_notify: None,
    report_zones: None,
    devnode: None,
    alternative_gpt_sector: None,
    get_unique_id: None,
    // `__this_module` is constructed by the kernel at load time and lives
    // until the module is unloaded, which an open disk prevents.
    #[cfg(MODULE)]
    owner: &raw mut bindings::__this_module,
    #[cfg(not(MODULE))]
    owner: core::ptr::null_mut(),
    pr_ops: core::ptr::null(),
    free_disk: None,
    poll_bio: None,
});

/// A `block_device_operations` table in a `static`.
struct DiskOps(bindings::block_device_operations);

// SAFETY: The table is never written; its pointers are null.
unsafe impl Sync for DiskOps {}

struct OperationsVTable<T: Operations>(PhantomData<T>);

impl<T: Operations> OperationsVTable<T> {
    const VTABLE: bindings::blk_mq_ops = bindings::blk_mq_ops {
        queue_rq: Some(Self::queue_rq),
        commit_rqs: Some(Self::commit_rqs),
        timeout: Some(Self::timeout),
        init_hctx: Some(Self::init_hctx),
        map_queues: Some(Self::map_queues),
        ..pin_init::zeroed()
    };

    /// The table, promoted to a `'static` (a compile error if it could not
    /// be).
    const fn vtable() -> &'static bindings::blk_mq_ops {
        &Self::VTABLE
    }

    /// # Safety
    ///
    /// `hctx` must have been set up by `init_hctx`.
    unsafe fn hw_queue<'a>(hctx: *mut bindings::blk_mq_hw_ctx) -> &'a T::HwQueue {
        // SAFETY: `init_hctx` stored a `&T::HwQueue` that lives as long as
        // the tag set's data, which outlives every hardware context.
        unsafe { &*(*hctx).driver_data.cast::<T::HwQueue>() }
    }

    /// `blk_mq_ops.queue_rq`.
    ///
    /// # Safety
    ///
    /// Called by blk-mq only: `hctx` is a hardware context of this tag set
    /// set up by [`Self::init_hctx`], and `bd` points to queue data whose
    /// `rq` is a live, not yet started request of a disk made by
    /// [`Disk::new`] (so its `queuedata` is that disk's `T::DiskData`),
    /// valid for the call.
    unsafe extern "C" fn queue_rq(
        hctx: *mut bindings::blk_mq_hw_ctx,
        bd: *const bindings::blk_mq_queue_data,
    ) -> bindings::blk_status_t {
        // SAFETY: blk-mq passes a live, initialized hardware context.
        let hwq = unsafe { Self::hw_queue(hctx) };
        // SAFETY: `bd` is valid for the call; `rq` is a live request that
        // blk-mq hands to the driver.
        let (rq, last) = unsafe { ((*bd).rq, (*bd).last) };
        // SAFETY: `queuedata` was set from `Arc::into_raw` in `Disk::new` and
        // is released only after `del_gendisk`, which waits for this call.
        let disk = unsafe { &*(*(*rq).q).queuedata.cast::<T::DiskData>() };
        // SAFETY: The request belongs to the driver from here on; starting
        // it arms its timeout.
        unsafe { bindings::blk_mq_start_request(rq) };
        // INVARIANT: The driver owns the started request.
        // SAFETY: blk-mq never passes a null request.
        let owned = OwnedRequest(unsafe { NonNull::new_unchecked(rq) });
        match T::queue_rq(hwq, disk, owned, last) {
            Ok(()) => bindings::BLK_STS_OK as bindings::blk_status_t,
            Err((rq, e)) => {
                // blk-mq ends or requeues the request from the status.
                core::mem::forget(rq);
                let errno = if e == EBUSY || e == EAGAIN {
                    ENOMEM.to_errno() // BLK_STS_RESOURCE: retry later.
                } else {
                    e.to_errno()
                };
                // SAFETY: Pure conversion.
                unsafe { bindings::errno_to_blk_status(errno) }
            }
        }
    }

    /// `blk_mq_ops.commit_rqs`.
    ///
    /// # Safety
    ///
    /// Called by blk-mq only, with `hctx` a hardware context of this tag set
    /// set up by [`Self::init_hctx`].
    unsafe extern "C" fn commit_rqs(hctx: *mut bindings::blk_mq_hw_ctx) {
        // SAFETY: blk-mq passes a live, initialized hardware context.
        T::commit_rqs(unsafe { Self::hw_queue(hctx) });
    }

    /// `blk_mq_ops.timeout`.
    ///
    /// # Safety
    ///
    /// Called by blk-mq only, with `rq` a started request of this tag set
    /// that stays valid for the call (blk-mq holds a reference on it), whose
    /// `mq_hctx` was set up by [`Self::init_hctx`].
    unsafe extern "C" fn timeout(rq: *mut bindings::request) -> bindings::blk_eh_timer_return {
        // SAFETY: blk-mq passes an in-flight request, whose hardware context
        // is initialized.
        let hwq = unsafe { Self::hw_queue((*rq).mq_hctx) };
        // SAFETY: The request stays valid during the callback.
        let request = unsafe { Request::from_raw(rq) };
        // SAFETY: The request's queue belongs to our tag set, whose
        // `driver_data` is a live `SetShared<T>` (type invariant of `TagSet`).
        let shared = unsafe { &*(*(*(*rq).q).tag_set).driver_data.cast::<SetShared<T>>() };
        match T::timeout(&shared.data, hwq, request) {
            TimeoutAction::Done => bindings::blk_eh_timer_return_BLK_EH_DONE,
            TimeoutAction::ResetTimer => bindings::blk_eh_timer_return_BLK_EH_RESET_TIMER,
        }
    }

    /// `blk_mq_ops.init_hctx`.
    ///
    /// # Safety
    ///
    /// Called by blk-mq only, with `hctx` a live hardware context of this
    /// tag set that nobody else initializes concurrently, and `driver_data`
    /// the set's `driver_data` (the `SetShared<T>` of [`TagSet::new`]).
    unsafe extern "C" fn init_hctx(
        hctx: *mut bindings::blk_mq_hw_ctx,
        driver_data: *mut c_void,
        index: u32,
    ) -> i32 {
        // SAFETY: `driver_data` is the tag set's `SetShared<T>` (type
        // invariant of `TagSet`), alive while the set is.
        let shared = unsafe { &*driver_data.cast::<SetShared<T>>() };
        match T::hw_queue(&shared.data, index) {
            Ok(hwq) => {
                // SAFETY: `hctx` is live and its `driver_data` is ours to set.
                unsafe { (*hctx).driver_data = core::ptr::from_ref(hwq).cast_mut().cast() };
                0
            }
            Err(e) => e.to_errno(),
        }
    }

    /// `blk_mq_ops.map_queues`.
    ///
    /// # Safety
    ///
    /// Called by blk-mq only, with `set` this tag set (initialized by
    /// [`TagSet::new`], so its `driver_data` is our `SetShared<T>`), while
    /// it may update the set's queue maps.
    unsafe extern "C" fn map_queues(set: *mut bindings::blk_mq_tag_set) {
        // SAFETY: `set` is our tag set; `driver_data` as in `init_hctx`.
        let shared = unsafe { &*(*set).driver_data.cast::<SetShared<T>>() };
        // SAFETY: `set` is valid; map 0 is the default map.
        let map = unsafe { &raw mut (*set).map[bindings::hctx_type_HCTX_TYPE_DEFAULT as usize] };
        match &shared.irq_dev {
            // SAFETY: `map` is the set's default map and `dev` a live device
            // whose interrupt vectors are allocated while the set exists.
            Some(dev) => unsafe {
                bindings::blk_mq_map_hw_queues(map, raw_device(dev), shared.first_vector)
            },
            // SAFETY: `map` is the set's default map.
            None => unsafe { bindings::blk_mq_map_queues(map) },
        }
    }
}
