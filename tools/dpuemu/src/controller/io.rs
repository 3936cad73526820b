//! NVM I/O command set: Read, Write, Flush, Write Zeroes and Dataset
//! Management.
//!
//! Each command runs to its end in one thread (the worker, or an executor
//! thread beside it, `executor.rs`): a Write's completion is posted only
//! after the media write returned, and FUA or Flush reach stable storage
//! (fdatasync) before completing.
//!
//! Data moves straight between an image file and the guest's mapped pages
//! (`preadv`/`pwritev`, [`Controller::direct_buffer`]) where the namespace
//! allows it, and through the thread's reused buffer otherwise
//! (Documentation/benchmarks.rst, "dpuemu's data path").

use nvme_shim::opcode::io;
use nvme_shim::sqe::{BlockRange, DatasetManagement, DsmRange, SubmissionEntry};
use nvme_shim::status::Status;
use nvme_shim::wire::Wire;

use std::cell::RefCell;

use super::data::{self, Direction, Segment};
use super::queues::Completion;
use super::{Controller, Stats, MAX_TRANSFER};
use crate::guest_memory::HostIovecs;
use crate::namespace::Namespace;

thread_local! {
    /// The bounce buffer of the thread (worker or executor thread) running
    /// a command that cannot use the direct path: it grows to the largest
    /// transfer the thread has seen (at most MAX_TRANSFER) and is reused
    /// without being cleared. Every byte of the part a command uses is
    /// written before it is read (a media read fills it, or a copy from the
    /// guest does; `Namespace::read_at` must overwrite all of it), so no
    /// command sees another's data.
    static BOUNCE_BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on `len` bytes of the thread's bounce buffer (contents
/// unspecified), or on a fresh buffer if `f` is already using the thread's.
fn with_bounce_buffer<R>(len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    BOUNCE_BUFFER.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0);
            }
            f(&mut buf[..len])
        }
        Err(_) => f(&mut vec![0u8; len]),
    })
}

/// A failed write, flush or deallocate: a full thin pool is Capacity
/// Exceeded (the host sees ENOSPC), anything else a Write Fault.
pub(super) fn write_status(e: std::io::Error) -> Status {
    if e.kind() == std::io::ErrorKind::StorageFull {
        Status::CAPACITY_EXCEEDED
    } else {
        Status::WRITE_FAULT
    }
}

/// NSID that addresses every namespace (Flush only).
const BROADCAST_NSID: u32 = 0xffff_ffff;

impl Controller {
    pub(super) fn execute_io(&self, sqe: &SubmissionEntry) -> Completion {
        let cid = sqe.cid();
        let (status, result) = match self.io_command(sqe) {
            Ok(result) => (Status::SUCCESS, result),
            Err(status) => (status, 0),
        };
        Completion {
            cid,
            status,
            result,
        }
    }

    /// Executes one I/O command; returns the completion's DW0 and DW1.
    fn io_command(&self, sqe: &SubmissionEntry) -> Result<u64, Status> {
        if sqe.fuse() != 0 {
            return Err(Status::INVALID_FIELD);
        }
        if let super::Personality::Ssd { ownership } = &self.personality {
            // Two owners never write one SSD.
            if ownership.is_attached() {
                return Err(Status::NAMESPACE_NOT_READY);
            }
        }
        let nsid = sqe.nsid.get();
        if sqe.opcode() == io::FLUSH && nsid == BROADCAST_NSID {
            self.flush_all();
            Stats::add(&self.stats.flushes, 1);
            return Ok(0);
        }
        let backend = self.namespace(nsid).ok_or(Status::INVALID_NAMESPACE)?;
        let index = nsid;
        if let Some(zoned) = backend.zoned() {
            return self.zoned_command(sqe, zoned, index);
        }
        let ns: &dyn Namespace = &*backend;
        match sqe.opcode() {
            io::READ => self.read(sqe, ns, index),
            io::WRITE => self.write(sqe, ns, index),
            io::FLUSH => {
                ns.flush().map_err(write_status)?;
                self.count(index, |s| &s.flushes, 1);
                Ok(())
            }
            io::WRITE_ZEROES => self.write_zeroes(sqe, ns, index),
            io::DATASET_MANAGEMENT => self.dataset_management(sqe, ns, index),
            _ => Err(Status::INVALID_OPCODE),
        }
        .map(|()| 0)
    }

    /// Adds `n` to a counter of the controller and of namespace `nsid`.
    pub(super) fn count(
        &self,
        nsid: u32,
        counter: impl Fn(&Stats) -> &std::sync::atomic::AtomicU64,
        n: u64,
    ) {
        Stats::add(counter(&self.stats), n);
        let namespaces = self.namespaces.read().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = namespaces.get(&nsid) {
            Stats::add(counter(&slot.stats), n);
        }
    }

    /// Checks an LBA range against the namespace; returns (offset, length)
    /// in bytes.
    pub(super) fn byte_range(
        ns: &dyn Namespace,
        slba: u64,
        blocks: u64,
    ) -> Result<(u64, u64), Status> {
        let shift = ns.lba_shift();
        let total = ns.size() >> shift;
        let end = slba.checked_add(blocks).ok_or(Status::LBA_OUT_OF_RANGE)?;
        if end > total {
            return Err(Status::LBA_OUT_OF_RANGE);
        }
        Ok((slba << shift, blocks << shift))
    }

    fn read(&self, sqe: &SubmissionEntry, ns: &dyn Namespace, index: u32) -> Result<(), Status> {
        let cmd = BlockRange::decode(sqe);
        let (offset, len) = Self::byte_range(ns, cmd.slba, u64::from(cmd.blocks))?;
        let segments = self.data_segments(sqe, len, Direction::ToHost)?;
        if let Some(guest) = self.direct_buffer(ns, &segments, Direction::ToHost) {
            ns.read_to_guest(offset, &guest)
                .map_err(|_| Status::UNRECOVERED_READ_ERROR)?;
        } else {
            self.bounce_to_guest(&segments, len, |buf| {
                ns.read_at(offset, buf)
                    .map_err(|_| Status::UNRECOVERED_READ_ERROR)
            })?;
        }
        self.count_read(index, len);
        Ok(())
    }

    /// Checks the transfer length and resolves the data pointer of an I/O
    /// command. Resolving reads the PRP lists or SGL segments but checks
    /// no data page yet: the copy (or [`Self::direct_buffer`]) does.
    fn data_segments(
        &self,
        sqe: &SubmissionEntry,
        len: u64,
        direction: Direction,
    ) -> Result<Vec<Segment>, Status> {
        if len > MAX_TRANSFER {
            return Err(Status::INVALID_FIELD);
        }
        data::resolve(&*self.memory, sqe, len, direction, true)
    }

    /// The direct data path: the guest pages of `segments` as host ranges
    /// for a namespace that moves data itself (`preadv` into them,
    /// `pwritev` from them), every page checked to be mapped before any
    /// byte moves, and kept mapped until the result is dropped. `None` sends
    /// the command through a buffer instead: a namespace that wants a
    /// buffer, an SGL bit bucket (nowhere to put the bytes), or a page
    /// outside the mapped regions (the copy then fails the command as it
    /// always did, with nothing changed on a write).
    ///
    /// While the result lives the thread must not touch guest memory
    /// through `self.memory`: it holds read locks an unmap or a Bus Master
    /// Enable clear may be waiting behind.
    fn direct_buffer(
        &self,
        ns: &dyn Namespace,
        segments: &[Segment],
        direction: Direction,
    ) -> Option<HostIovecs<'_>> {
        if !ns.direct_guest_io() {
            return None;
        }
        if segments.iter().any(|s| s.addr.is_none()) {
            return None;
        }
        let mut pieces = segments
            .iter()
            .filter_map(|s| s.addr.map(|addr| (addr, s.len)));
        self.memory
            .host_iovecs(&mut pieces, direction == Direction::ToHost)
    }

    /// A read's data path through a buffer: the host's data pointers are
    /// resolved before `fill` reads the media into this thread's buffer of
    /// `len` bytes, which is then copied to guest memory.
    pub(super) fn read_into_guest(
        &self,
        sqe: &SubmissionEntry,
        len: u64,
        fill: impl FnOnce(&mut [u8]) -> Result<(), Status>,
    ) -> Result<(), Status> {
        let segments = self.data_segments(sqe, len, Direction::ToHost)?;
        self.bounce_to_guest(&segments, len, fill)
    }

    fn bounce_to_guest(
        &self,
        segments: &[Segment],
        len: u64,
        fill: impl FnOnce(&mut [u8]) -> Result<(), Status>,
    ) -> Result<(), Status> {
        with_bounce_buffer(len as usize, |buf| {
            fill(buf)?;
            data::copy_to_guest(&*self.memory, segments, buf)
        })
    }

    /// A write's data, `len` bytes copied from guest memory into this
    /// thread's buffer and handed to `use_data`; fetched before `use_data`
    /// runs, so a bad data pointer changes nothing.
    pub(super) fn with_data_from_guest<R>(
        &self,
        sqe: &SubmissionEntry,
        len: u64,
        use_data: impl FnOnce(&[u8]) -> Result<R, Status>,
    ) -> Result<R, Status> {
        let segments = self.data_segments(sqe, len, Direction::FromHost)?;
        self.bounce_from_guest(&segments, len, use_data)
    }

    fn bounce_from_guest<R>(
        &self,
        segments: &[Segment],
        len: u64,
        use_data: impl FnOnce(&[u8]) -> Result<R, Status>,
    ) -> Result<R, Status> {
        with_bounce_buffer(len as usize, |buf| {
            data::copy_from_guest(&*self.memory, segments, buf)?;
            use_data(buf)
        })
    }

    pub(super) fn count_read(&self, index: u32, len: u64) {
        self.count(index, |s| &s.reads, 1);
        self.count(index, |s| &s.read_bytes, len);
    }

    /// Counts a completed write; with FUA, or with the volatile write cache
    /// off, `flush` has made it durable first.
    pub(super) fn finish_write(
        &self,
        index: u32,
        len: u64,
        fua: bool,
        flush: impl FnOnce() -> Result<(), Status>,
    ) -> Result<(), Status> {
        if fua || !self.write_cache_enabled() {
            flush()?;
        }
        if fua {
            self.count(index, |s| &s.fua_writes, 1);
        }
        self.count(index, |s| &s.writes, 1);
        self.count(index, |s| &s.write_bytes, len);
        Ok(())
    }

    /// Volatile Write Cache (Set Features): with it off, writes are made
    /// durable before they complete, as a drive without a cache would.
    pub(super) fn write_cache_enabled(&self) -> bool {
        self.volatile_write_cache
            .load(std::sync::atomic::Ordering::Acquire)
    }

    fn write(&self, sqe: &SubmissionEntry, ns: &dyn Namespace, index: u32) -> Result<(), Status> {
        let cmd = BlockRange::decode(sqe);
        let (offset, len) = Self::byte_range(ns, cmd.slba, u64::from(cmd.blocks))?;
        let segments = self.data_segments(sqe, len, Direction::FromHost)?;
        if let Some(guest) = self.direct_buffer(ns, &segments, Direction::FromHost) {
            let written = ns.write_from_guest(offset, &guest);
            // The guest's pages are let go before a flush, which may take
            // long.
            drop(guest);
            written.map_err(write_status)?;
        } else {
            self.bounce_from_guest(&segments, len, |buf| {
                ns.write_at(offset, buf).map_err(write_status)
            })?;
        }
        self.finish_write(index, len, cmd.fua, || ns.flush().map_err(write_status))
    }

    fn write_zeroes(
        &self,
        sqe: &SubmissionEntry,
        ns: &dyn Namespace,
        index: u32,
    ) -> Result<(), Status> {
        let cmd = BlockRange::decode(sqe);
        let (offset, len) = Self::byte_range(ns, cmd.slba, u64::from(cmd.blocks))?;
        // Both paths leave the range reading as zeroes.
        if cmd.deallocate {
            ns.deallocate(offset, len)
        } else {
            ns.write_zeroes(offset, len)
        }
        .map_err(write_status)?;
        if cmd.fua || !self.write_cache_enabled() {
            ns.flush().map_err(write_status)?;
        }
        self.count(index, |s| &s.write_zeroes, 1);
        Ok(())
    }

    fn dataset_management(
        &self,
        sqe: &SubmissionEntry,
        ns: &dyn Namespace,
        index: u32,
    ) -> Result<(), Status> {
        let cmd = DatasetManagement::decode(sqe);
        let len = usize::from(cmd.ranges) * DsmRange::SIZE;
        // At most 256 ranges of 16 bytes: within MAX_TRANSFER. Check every
        // range before touching any.
        let ranges = self.with_data_from_guest(sqe, len as u64, |raw| {
            Ok(raw
                .chunks_exact(DsmRange::SIZE)
                .map(|bytes| {
                    let range = DsmRange::read_from(bytes).ok_or(Status::INVALID_FIELD)?;
                    Self::byte_range(ns, range.slba.get(), u64::from(range.blocks.get()))
                })
                .collect::<Result<Vec<_>, Status>>())
        })?;
        if !cmd.deallocate {
            // Other attributes are hints; nothing to do once the ranges
            // were fetched.
            return Ok(());
        }
        let ranges = ranges?;
        for (offset, len) in ranges {
            if len > 0 {
                ns.deallocate(offset, len).map_err(write_status)?;
            }
        }
        self.count(index, |s| &s.deallocates, 1);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
