//! The NVM command set on I/O queues: Read, Write, Flush, Write Zeroes and
//! Dataset Management, against the subsystem's namespaces.

use std::sync::Arc;

use log::warn;
use nvme_shim::opcode::io as op;
use nvme_shim::sqe::SubmissionEntry;
use nvme_shim::status::{sct, Status};

use super::connection::Reply;
use super::target::Subsystem;
use crate::namespace::{ana, Namespace};

/// Force Unit Access bit of Write's CDW12.
const FUA: u32 = 1 << 30;
/// Deallocate attribute of Dataset Management's CDW11.
const DSM_DEALLOCATE: u32 = 1 << 2;
/// Every namespace (Flush).
const ALL_NAMESPACES: u32 = 0xffff_ffff;

/// The byte range of `blocks` blocks at `slba`, if inside the namespace.
fn range(ns: &dyn Namespace, slba: u64, blocks: u64) -> Option<(u64, u64)> {
    let shift = ns.lba_shift();
    let end = slba.checked_add(blocks)?;
    if end > ns.size() >> shift {
        return None;
    }
    Some((slba << shift, blocks << shift))
}

/// ANA Inaccessible (Path Related Status 02h): the host's multipath
/// retries the command on another path.
pub const ANA_INACCESSIBLE: Status = Status::new(sct::PATH, 0x02);

/// Whether the command's namespace (every namespace for NSID FFFFFFFFh)
/// is reachable through this path ([`Namespace::ana_state`]).
fn path_accessible(s: &Subsystem, nsid: u32) -> bool {
    let ok = |ns: &Arc<dyn Namespace>| ns.ana_state() == ana::OPTIMIZED;
    let namespaces = s.namespaces();
    match namespaces.get(&nsid) {
        Some(ns) => ok(ns),
        None => nsid != ALL_NAMESPACES || namespaces.values().all(ok),
    }
}

/// An I/O command; `data` is a write's data, `transfer` a read's length.
/// On an inaccessible path (a high-availability node that does not own
/// the media) it runs nothing and completes with a path error, as does a
/// command that failed because the path became inaccessible meanwhile
/// (the node was fenced under it): never a media error the host would
/// hand to the application.
pub fn command(s: &Subsystem, sqe: &SubmissionEntry, data: &[u8], transfer: usize) -> Reply {
    let nsid = sqe.nsid.get();
    if !path_accessible(s, nsid) {
        return Reply::status(ANA_INACCESSIBLE);
    }
    let reply = execute(s, sqe, data, transfer);
    match reply {
        Reply::Done { status, .. } if !status.is_success() && !path_accessible(s, nsid) => {
            Reply::status(ANA_INACCESSIBLE)
        }
        reply => reply,
    }
}

fn execute(s: &Subsystem, sqe: &SubmissionEntry, data: &[u8], transfer: usize) -> Reply {
    let nsid = sqe.nsid.get();
    if sqe.opcode() == op::FLUSH && nsid == ALL_NAMESPACES {
        for ns in s.namespaces().values() {
            if let Err(e) = ns.flush() {
                warn!("nvmf {}: flush: {e}", s.nqn);
                return Reply::status(Status::WRITE_FAULT);
            }
        }
        return Reply::status(Status::SUCCESS);
    }
    let Some(ns) = s.namespaces().get(&nsid).map(Arc::clone) else {
        return Reply::status(Status::INVALID_NAMESPACE);
    };
    let ns = ns.as_ref();
    let slba = u64::from(sqe.cdw10.get()) | u64::from(sqe.cdw11.get()) << 32;
    let blocks = u64::from(sqe.cdw12.get() & 0xffff) + 1;
    match sqe.opcode() {
        op::READ => {
            let Some((offset, len)) = range(ns, slba, blocks) else {
                return Reply::status(Status::LBA_OUT_OF_RANGE);
            };
            if len != transfer as u64 {
                return Reply::status(Status::SGL_LENGTH_INVALID);
            }
            let mut buf = vec![0u8; transfer];
            match ns.read_at(offset, &mut buf) {
                Ok(()) => Reply::data(buf),
                Err(e) => {
                    warn!("nvmf {} namespace {nsid}: read at {offset}: {e}", s.nqn);
                    Reply::status(Status::UNRECOVERED_READ_ERROR)
                }
            }
        }
        op::WRITE => {
            let Some((offset, len)) = range(ns, slba, blocks) else {
                return Reply::status(Status::LBA_OUT_OF_RANGE);
            };
            if len != data.len() as u64 {
                return Reply::status(Status::SGL_LENGTH_INVALID);
            }
            let written = ns.write_at(offset, data).and_then(|()| {
                if sqe.cdw12.get() & FUA != 0 {
                    ns.flush()
                } else {
                    Ok(())
                }
            });
            match written {
                Ok(()) => Reply::status(Status::SUCCESS),
                Err(e) => {
                    warn!("nvmf {} namespace {nsid}: write at {offset}: {e}", s.nqn);
                    Reply::status(Status::WRITE_FAULT)
                }
            }
        }
        op::FLUSH => match ns.flush() {
            Ok(()) => Reply::status(Status::SUCCESS),
            Err(e) => {
                warn!("nvmf {} namespace {nsid}: flush: {e}", s.nqn);
                Reply::status(Status::WRITE_FAULT)
            }
        },
        op::WRITE_ZEROES => {
            let Some((offset, len)) = range(ns, slba, blocks) else {
                return Reply::status(Status::LBA_OUT_OF_RANGE);
            };
            match ns.write_zeroes(offset, len) {
                Ok(()) => Reply::status(Status::SUCCESS),
                Err(e) => {
                    warn!("nvmf {} namespace {nsid}: write zeroes: {e}", s.nqn);
                    Reply::status(Status::WRITE_FAULT)
                }
            }
        }
        op::DATASET_MANAGEMENT => dataset_management(s, nsid, ns, sqe, data),
        _ => Reply::status(Status::INVALID_OPCODE),
    }
}

fn dataset_management(
    s: &Subsystem,
    nsid: u32,
    ns: &dyn Namespace,
    sqe: &SubmissionEntry,
    data: &[u8],
) -> Reply {
    let count = (sqe.cdw10.get() & 0xff) as usize + 1;
    if data.len() < count * 16 {
        return Reply::status(Status::SGL_LENGTH_INVALID);
    }
    if sqe.cdw11.get() & DSM_DEALLOCATE == 0 {
        // Only hints: nothing to do.
        return Reply::status(Status::SUCCESS);
    }
    let mut ranges = Vec::with_capacity(count);
    for r in data.chunks_exact(16).take(count) {
        let blocks = u64::from(u32::from_le_bytes([r[4], r[5], r[6], r[7]]));
        let slba = u64::from_le_bytes([r[8], r[9], r[10], r[11], r[12], r[13], r[14], r[15]]);
        if blocks == 0 {
            continue;
        }
        match range(ns, slba, blocks) {
            Some(byte_range) => ranges.push(byte_range),
            None => return Reply::status(Status::LBA_OUT_OF_RANGE),
        }
    }
    for (offset, len) in ranges {
        if let Err(e) = ns.deallocate(offset, len) {
            warn!("nvmf {} namespace {nsid}: deallocate: {e}", s.nqn);
            return Reply::status(Status::WRITE_FAULT);
        }
    }
    Reply::status(Status::SUCCESS)
}
