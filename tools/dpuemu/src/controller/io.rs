//! NVM I/O command set: Read, Write, Flush, Write Zeroes and Dataset
//! Management.
//!
//! Each command runs to its end in one thread (the worker, or an executor
//! thread beside it, `executor.rs`): a Write's completion is posted only
//! after `pwrite` returned, and FUA or Flush reach stable storage
//! (fdatasync) before completing.

use nvme_shim::opcode::io;
use nvme_shim::sqe::{BlockRange, DatasetManagement, DsmRange, SubmissionEntry};
use nvme_shim::status::Status;
use nvme_shim::wire::Wire;

use super::data::{self, Direction};
use super::queues::Completion;
use super::{Controller, Stats, MAX_TRANSFER};
use crate::namespace::Namespace;

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
        self.read_into_guest(sqe, len, |buf| {
            ns.read_at(offset, buf)
                .map_err(|_| Status::UNRECOVERED_READ_ERROR)
        })?;
        self.count_read(index, len);
        Ok(())
    }

    /// A read's data path: the host's data pointers are checked before
    /// `fill` reads the media into a buffer of `len` bytes, which is then
    /// copied to guest memory.
    pub(super) fn read_into_guest(
        &self,
        sqe: &SubmissionEntry,
        len: u64,
        fill: impl FnOnce(&mut [u8]) -> Result<(), Status>,
    ) -> Result<(), Status> {
        if len > MAX_TRANSFER {
            return Err(Status::INVALID_FIELD);
        }
        let segments = data::resolve(&*self.memory, sqe, len, Direction::ToHost, true)?;
        let mut buf = vec![0u8; len as usize];
        fill(&mut buf)?;
        data::copy_to_guest(&*self.memory, &segments, &buf)
    }

    /// A write's data, `len` bytes copied from guest memory, fetched before
    /// anything is changed so a bad data pointer changes nothing.
    pub(super) fn data_from_guest(
        &self,
        sqe: &SubmissionEntry,
        len: u64,
    ) -> Result<Vec<u8>, Status> {
        if len > MAX_TRANSFER {
            return Err(Status::INVALID_FIELD);
        }
        let segments = data::resolve(&*self.memory, sqe, len, Direction::FromHost, true)?;
        let mut buf = vec![0u8; len as usize];
        data::copy_from_guest(&*self.memory, &segments, &mut buf)?;
        Ok(buf)
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
        let buf = self.data_from_guest(sqe, len)?;
        ns.write_at(offset, &buf).map_err(write_status)?;
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
        // At most 256 ranges of 16 bytes: within MAX_TRANSFER.
        let raw = self.data_from_guest(sqe, len as u64)?;
        if !cmd.deallocate {
            // Other attributes are hints; nothing to do.
            return Ok(());
        }
        // Check every range before touching any.
        let mut ranges = Vec::with_capacity(usize::from(cmd.ranges));
        for bytes in raw.chunks_exact(DsmRange::SIZE) {
            let range = DsmRange::read_from(bytes).ok_or(Status::INVALID_FIELD)?;
            ranges.push(Self::byte_range(
                ns,
                range.slba.get(),
                u64::from(range.blocks.get()),
            )?);
        }
        for (offset, len) in ranges {
            if len > 0 {
                ns.deallocate(offset, len).map_err(write_status)?;
            }
        }
        self.count(index, |s| &s.deallocates, 1);
        Ok(())
    }
}
