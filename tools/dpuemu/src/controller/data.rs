//! Data pointers: turning a command's PRPs or SGL into guest memory
//! segments, and copying between those segments and a buffer.
//!
//! Every address comes from the host and is untrusted: list pages and
//! segment descriptors are read through the checked [`GuestMemory`], walks
//! are bounded by the transfer length and a descriptor budget, and any
//! access outside guest memory fails the command with Data Transfer Error.

use nvme_shim::dptr::{self, Prp2Use, Psdt, SglDescriptor, SglKind, SGL_SUBTYPE_ADDRESS};
use nvme_shim::sqe::SubmissionEntry;
use nvme_shim::status::Status;
use nvme_shim::wire::Wire;

use crate::guest_memory::GuestMemory;

/// Memory page size (CC.MPS = 0 is the only one supported).
pub(super) const PAGE_SIZE: u64 = 4096;

/// Most SGL descriptors one command may make the controller read.
const MAX_SGL_DESCRIPTORS: usize = 1024;

/// One contiguous piece of a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Segment {
    /// Guest address, or `None` for an SGL bit bucket (data discarded).
    pub addr: Option<u64>,
    pub len: u64,
}

/// Direction of a data transfer, as seen from the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Direction {
    /// The controller writes guest memory (Read, Identify, logs).
    ToHost,
    /// The controller reads guest memory (Write, DSM ranges, payloads).
    FromHost,
}

fn push(segments: &mut Vec<Segment>, addr: Option<u64>, len: u64) {
    if len == 0 {
        return;
    }
    if let Some(last) = segments.last_mut() {
        match (last.addr, addr) {
            (Some(a), Some(b)) if a.checked_add(last.len) == Some(b) => {
                last.len += len;
                return;
            }
            (None, None) => {
                last.len += len;
                return;
            }
            _ => {}
        }
    }
    segments.push(Segment { addr, len });
}

/// Resolves the data pointer of `sqe` for a transfer of `len` bytes.
/// `allow_sgl` is false for admin commands, which must use PRPs.
pub(super) fn resolve(
    memory: &dyn GuestMemory,
    sqe: &SubmissionEntry,
    len: u64,
    direction: Direction,
    allow_sgl: bool,
) -> Result<Vec<Segment>, Status> {
    match sqe.psdt() {
        Psdt::Prp => resolve_prps(memory, sqe.prp1.get(), sqe.prp2.get(), len),
        Psdt::SglContiguousMetadata | Psdt::SglDescriptorMetadata if allow_sgl => {
            resolve_sgl(memory, sqe.sgl1(), len, direction)
        }
        _ => Err(Status::INVALID_FIELD),
    }
}

fn resolve_prps(
    memory: &dyn GuestMemory,
    prp1: u64,
    prp2: u64,
    len: u64,
) -> Result<Vec<Segment>, Status> {
    let mut segments = Vec::new();
    if len == 0 {
        return Ok(segments);
    }
    if !dptr::prp_offset_valid(prp1, true, PAGE_SIZE) {
        return Err(Status::PRP_OFFSET_INVALID);
    }
    let first = dptr::prp1_len(prp1, len, PAGE_SIZE);
    push(&mut segments, Some(prp1), first);
    let mut remaining = len - first;
    match dptr::prp2_use(prp1, len, PAGE_SIZE) {
        Prp2Use::Unused => {}
        Prp2Use::DataPage => {
            if !dptr::prp_offset_valid(prp2, false, PAGE_SIZE) {
                return Err(Status::PRP_OFFSET_INVALID);
            }
            push(&mut segments, Some(prp2), remaining);
        }
        Prp2Use::List => {
            // A PRP list pointer may carry an offset but must be qword
            // aligned.
            if prp2 & 0x7 != 0 {
                return Err(Status::PRP_OFFSET_INVALID);
            }
            let mut list = prp2;
            let mut page = [0u8; PAGE_SIZE as usize];
            while remaining > 0 {
                let in_list = dptr::prp_list_entries(list, PAGE_SIZE);
                let pages_left = remaining.div_ceil(PAGE_SIZE);
                // When more pages remain than this list page holds, its
                // last entry points to the next list page.
                let chained = pages_left > in_list;
                let data_entries = if chained { in_list - 1 } else { pages_left };
                let bytes = (if chained { in_list } else { data_entries } * 8) as usize;
                let buf = &mut page[..bytes];
                memory
                    .read(list, buf)
                    .map_err(|_| Status::DATA_TRANSFER_ERROR)?;
                for entry in buf.chunks_exact(8).take(data_entries as usize) {
                    let addr = u64::from_le_bytes(entry.try_into().unwrap_or([0xff; 8]));
                    if !dptr::prp_offset_valid(addr, false, PAGE_SIZE) {
                        return Err(Status::PRP_OFFSET_INVALID);
                    }
                    let n = remaining.min(PAGE_SIZE);
                    push(&mut segments, Some(addr), n);
                    remaining -= n;
                }
                if chained {
                    let next = &buf[bytes - 8..];
                    list = u64::from_le_bytes(next.try_into().unwrap_or([0xff; 8]));
                    if !dptr::prp_offset_valid(list, false, PAGE_SIZE) {
                        return Err(Status::PRP_OFFSET_INVALID);
                    }
                }
            }
        }
    }
    Ok(segments)
}

fn resolve_sgl(
    memory: &dyn GuestMemory,
    first: SglDescriptor,
    len: u64,
    direction: Direction,
) -> Result<Vec<Segment>, Status> {
    let mut segments = Vec::new();
    let mut total = 0u64;
    let mut budget = MAX_SGL_DESCRIPTORS;
    let mut take = |desc: &SglDescriptor, segments: &mut Vec<Segment>| -> Result<(), Status> {
        if desc.subtype() != SGL_SUBTYPE_ADDRESS {
            return Err(Status::SGL_TYPE_INVALID);
        }
        let n = u64::from(desc.length.get()).min(len - total);
        match desc.kind() {
            Some(SglKind::DataBlock) => push(segments, Some(desc.address.get()), n),
            Some(SglKind::BitBucket) if direction == Direction::ToHost => push(segments, None, n),
            _ => return Err(Status::SGL_TYPE_INVALID),
        }
        total += n;
        Ok(())
    };
    let mut next = match first.kind() {
        Some(SglKind::DataBlock) | Some(SglKind::BitBucket) => {
            take(&first, &mut segments)?;
            None
        }
        Some(SglKind::Segment) | Some(SglKind::LastSegment) => Some(first),
        _ => return Err(Status::SGL_TYPE_INVALID),
    };
    let mut list = [SglDescriptor::default(); 256];
    while let Some(segment) = next.take() {
        if segment.subtype() != SGL_SUBTYPE_ADDRESS {
            return Err(Status::SGL_TYPE_INVALID);
        }
        let count = segment
            .segment_descriptors()
            .ok_or(Status::INVALID_SGL_SEGMENT)? as usize;
        if count > list.len() || count > budget {
            return Err(Status::INVALID_SGL_COUNT);
        }
        budget -= count;
        let mut raw = vec![0u8; count * SglDescriptor::BYTES];
        memory
            .read(segment.address.get(), &mut raw)
            .map_err(|_| Status::DATA_TRANSFER_ERROR)?;
        for (slot, bytes) in list.iter_mut().zip(raw.chunks_exact(SglDescriptor::BYTES)) {
            *slot = SglDescriptor::read_from(bytes).unwrap_or_default();
        }
        let last_segment = segment.kind() == Some(SglKind::LastSegment);
        for (i, desc) in list[..count].iter().enumerate() {
            match desc.kind() {
                Some(SglKind::Segment) | Some(SglKind::LastSegment) => {
                    // Only the last descriptor of a (non-last) segment may
                    // chain to the next segment.
                    if last_segment || i + 1 != count {
                        return Err(Status::INVALID_SGL_SEGMENT);
                    }
                    next = Some(*desc);
                }
                _ => take(desc, &mut segments)?,
            }
        }
    }
    if total < len {
        return Err(Status::SGL_LENGTH_INVALID);
    }
    Ok(segments)
}

/// Copies `data` into the guest along `segments` (bit buckets skip).
pub(super) fn copy_to_guest(
    memory: &dyn GuestMemory,
    segments: &[Segment],
    data: &[u8],
) -> Result<(), Status> {
    let mut off = 0usize;
    for seg in segments {
        let n = usize::try_from(seg.len).map_err(|_| Status::DATA_TRANSFER_ERROR)?;
        let chunk = data.get(off..off + n).ok_or(Status::DATA_TRANSFER_ERROR)?;
        if let Some(addr) = seg.addr {
            memory
                .write(addr, chunk)
                .map_err(|_| Status::DATA_TRANSFER_ERROR)?;
        }
        off += n;
    }
    Ok(())
}

/// Fills `buf` from the guest along `segments`.
pub(super) fn copy_from_guest(
    memory: &dyn GuestMemory,
    segments: &[Segment],
    buf: &mut [u8],
) -> Result<(), Status> {
    let mut off = 0usize;
    for seg in segments {
        let n = usize::try_from(seg.len).map_err(|_| Status::DATA_TRANSFER_ERROR)?;
        let chunk = buf
            .get_mut(off..off + n)
            .ok_or(Status::DATA_TRANSFER_ERROR)?;
        match seg.addr {
            Some(addr) => memory
                .read(addr, chunk)
                .map_err(|_| Status::DATA_TRANSFER_ERROR)?,
            None => return Err(Status::SGL_TYPE_INVALID),
        }
        off += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest_memory::VecMemory;
    use nvme_shim::opcode::io;

    fn sqe_prp(prp1: u64, prp2: u64) -> SubmissionEntry {
        let mut sqe = SubmissionEntry::new(io::READ, 1);
        sqe.prp1.set(prp1);
        sqe.prp2.set(prp2);
        sqe
    }

    fn write_list(mem: &VecMemory, at: u64, entries: &[u64]) {
        for (i, e) in entries.iter().enumerate() {
            mem.write(at + 8 * i as u64, &e.to_le_bytes()).unwrap();
        }
    }

    #[test]
    fn prp_single_and_two_pages() {
        let mem = VecMemory::new(0, 1 << 20);
        let segs = resolve(&mem, &sqe_prp(0x1200, 0), 512, Direction::ToHost, true).unwrap();
        assert_eq!(
            segs,
            vec![Segment {
                addr: Some(0x1200),
                len: 512
            }]
        );
        let segs = resolve(
            &mem,
            &sqe_prp(0x1e00, 0x8000),
            4096,
            Direction::ToHost,
            true,
        )
        .unwrap();
        assert_eq!(
            segs,
            vec![
                Segment {
                    addr: Some(0x1e00),
                    len: 512
                },
                Segment {
                    addr: Some(0x8000),
                    len: 3584
                }
            ]
        );
        assert_eq!(
            resolve(&mem, &sqe_prp(0x1002, 0), 512, Direction::ToHost, true),
            Err(Status::PRP_OFFSET_INVALID)
        );
        assert_eq!(
            resolve(
                &mem,
                &sqe_prp(0x1000, 0x8010),
                8192,
                Direction::ToHost,
                true
            ),
            Err(Status::PRP_OFFSET_INVALID)
        );
    }

    #[test]
    fn prp_list_with_chaining() {
        let mem = VecMemory::new(0, 1 << 20);
        // A list that starts 16 bytes before the end of its page holds two
        // entries: one data page and the pointer to the next list page.
        write_list(&mem, 0x3ff0, &[0x10000, 0x5000]);
        write_list(&mem, 0x5000, &[0x30000, 0x20000]);
        let segs = resolve(
            &mem,
            &sqe_prp(0x9000, 0x3ff0),
            4 * 4096,
            Direction::ToHost,
            true,
        )
        .unwrap();
        assert_eq!(
            segs,
            vec![
                Segment {
                    addr: Some(0x9000),
                    len: 4096
                },
                Segment {
                    addr: Some(0x10000),
                    len: 4096
                },
                Segment {
                    addr: Some(0x30000),
                    len: 4096
                },
                Segment {
                    addr: Some(0x20000),
                    len: 4096
                },
            ]
        );
        // List outside guest memory.
        assert_eq!(
            resolve(
                &mem,
                &sqe_prp(0x9000, 0x1_0000_0000),
                3 * 4096,
                Direction::ToHost,
                true
            ),
            Err(Status::DATA_TRANSFER_ERROR)
        );
        // Misaligned data entry inside the list.
        write_list(&mem, 0x6000, &[0x10010, 0x11000]);
        assert_eq!(
            resolve(
                &mem,
                &sqe_prp(0x9000, 0x6000),
                3 * 4096,
                Direction::ToHost,
                true
            ),
            Err(Status::PRP_OFFSET_INVALID)
        );
    }

    #[test]
    fn sgl_segments() {
        let mem = VecMemory::new(0, 1 << 20);
        let descs = [
            SglDescriptor::data_block(0x10000, 1000),
            SglDescriptor::bit_bucket(24),
            SglDescriptor::segment(0x7000, 1, true),
        ];
        for (i, d) in descs.iter().enumerate() {
            mem.write(0x6000 + 16 * i as u64, &d.to_bytes()).unwrap();
        }
        mem.write(0x7000, &SglDescriptor::data_block(0x20000, 3072).to_bytes())
            .unwrap();
        let mut sqe = SubmissionEntry::new(io::READ, 1);
        sqe.set_sgl1(&SglDescriptor::segment(0x6000, 3, false));
        let segs = resolve(&mem, &sqe, 4096, Direction::ToHost, true).unwrap();
        assert_eq!(
            segs,
            vec![
                Segment {
                    addr: Some(0x10000),
                    len: 1000
                },
                Segment {
                    addr: None,
                    len: 24
                },
                Segment {
                    addr: Some(0x20000),
                    len: 3072
                },
            ]
        );
        // Bit buckets are for reads only.
        assert_eq!(
            resolve(&mem, &sqe, 4096, Direction::FromHost, true),
            Err(Status::SGL_TYPE_INVALID)
        );
        // Too short an SGL.
        assert_eq!(
            resolve(&mem, &sqe, 8192, Direction::ToHost, true),
            Err(Status::SGL_LENGTH_INVALID)
        );
        // Admin commands may not use SGLs.
        assert_eq!(
            resolve(&mem, &sqe, 4096, Direction::ToHost, false),
            Err(Status::INVALID_FIELD)
        );
        // A segment in the middle of a list is invalid.
        mem.write(0x7000, &SglDescriptor::segment(0x6000, 3, false).to_bytes())
            .unwrap();
        mem.write(0x7010, &SglDescriptor::data_block(0x20000, 3072).to_bytes())
            .unwrap();
        sqe.set_sgl1(&SglDescriptor::segment(0x7000, 2, false));
        assert_eq!(
            resolve(&mem, &sqe, 4096, Direction::ToHost, true),
            Err(Status::INVALID_SGL_SEGMENT)
        );
        // A self-referencing chain ends at the descriptor budget.
        mem.write(0x8000, &SglDescriptor::segment(0x8000, 1, false).to_bytes())
            .unwrap();
        sqe.set_sgl1(&SglDescriptor::segment(0x8000, 1, false));
        assert_eq!(
            resolve(&mem, &sqe, 4096, Direction::ToHost, true),
            Err(Status::INVALID_SGL_COUNT)
        );
        // Odd segment length.
        let mut odd = SglDescriptor::segment(0x6000, 1, true);
        odd.length.set(20);
        sqe.set_sgl1(&odd);
        assert_eq!(
            resolve(&mem, &sqe, 4096, Direction::ToHost, true),
            Err(Status::INVALID_SGL_SEGMENT)
        );
    }

    #[test]
    fn copies_follow_segments() {
        let mem = VecMemory::new(0, 1 << 16);
        let segs = [
            Segment {
                addr: Some(0x100),
                len: 2,
            },
            Segment { addr: None, len: 1 },
            Segment {
                addr: Some(0x200),
                len: 2,
            },
        ];
        copy_to_guest(&mem, &segs, &[1, 2, 3, 4, 5]).unwrap();
        let mut b = [0u8; 2];
        mem.read(0x200, &mut b).unwrap();
        assert_eq!(b, [4, 5]);
        let mut buf = [0u8; 4];
        let segs2 = [
            Segment {
                addr: Some(0x100),
                len: 2,
            },
            Segment {
                addr: Some(0x200),
                len: 2,
            },
        ];
        copy_from_guest(&mem, &segs2, &mut buf).unwrap();
        assert_eq!(buf, [1, 2, 4, 5]);
        assert_eq!(
            copy_to_guest(
                &mem,
                &[Segment {
                    addr: Some(0xfffe),
                    len: 4
                }],
                &[0; 4]
            ),
            Err(Status::DATA_TRANSFER_ERROR)
        );
        assert_eq!(
            copy_to_guest(&mem, &segs, &[0; 2]),
            Err(Status::DATA_TRANSFER_ERROR)
        );
    }
}
