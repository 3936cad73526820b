//! Read repair: one copy read or rewritten on its own.
//!
//! The array has no checksums of its own; the layer above (the pool's
//! records) has. When the bytes a normal read returned fail that layer's
//! check, it reads each copy with [`ProtectedMedia::read_one_copy`], keeps
//! one that passes, and rewrites the others with it through
//! [`ProtectedMedia::repair_one_copy`].
//!
//! A mirror's copies are its members. A parity layout (RAID6, erasure
//! coding) with `m` parity chunks offers `1 + m` *views* of the same bytes
//! ([`parity_copies`]): view 0 reads the data members, view `1 + j`
//! reconstructs the data from the other data chunks of the row and parity
//! chunk `j` alone (the data chunks read and the other parity chunks
//! treated as lost). A damaged data chunk fails view 0 and passes the
//! others; a damaged parity chunk fails the views that use it. Either way
//! the repair is a normal write of the verified bytes, which rewrites the
//! data chunk and recomputes every parity chunk of the span from it and
//! the row's other data, through the journal like any write.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::media::{check_range, Media, MediaError, MediaResult};

use super::array::ProtectedMedia;
use super::codec::Layout;

/// The views of a layout's bytes [`ProtectedMedia::read_one_copy`] offers.
pub(super) fn parity_copies(layout: Layout) -> usize {
    match layout {
        Layout::Mirror { copies, .. } => copies,
        Layout::Raid6 { .. } | Layout::Erasure { .. } => 1 + layout.tolerance(),
        Layout::Stripe { .. } => 1,
    }
}

impl ProtectedMedia {
    /// The member and media holding copy `copy` of data chunk `data` of
    /// `row`, if that member serves the row. Call with the row lock held.
    fn copy_member(
        &self,
        row: u64,
        data: usize,
        copy: usize,
    ) -> MediaResult<(usize, Arc<dyn Media>)> {
        let layout = self.geometry.layout;
        let Layout::Mirror { copies, .. } = layout else {
            return Err(MediaError::Unrecoverable(
                "only mirrors keep copies to read one by one".into(),
            ));
        };
        if copy >= copies {
            return Err(MediaError::Unrecoverable(format!(
                "copy {copy} of a {copies}-copy mirror"
            )));
        }
        let slot = layout.slots_of_data(data).start + copy;
        let view = self.row_view(row);
        let media = view.slots[slot].clone().ok_or_else(|| {
            MediaError::Unrecoverable(format!("row {row}: copy {copy} is not in service"))
        })?;
        Ok((layout.member_of(row, slot), media))
    }

    /// Reads `buf.len()` bytes at `offset` from copy `copy` of every chunk
    /// they cover (pending bytes included, as a normal read sees them); on
    /// a parity layout, through view `copy` (see the module's description).
    pub(super) fn read_one_copy(
        &self,
        copy: usize,
        offset: u64,
        buf: &mut [u8],
    ) -> MediaResult<()> {
        check_range(offset, buf.len() as u64, self.size())?;
        let layout = self.geometry.layout;
        if copy >= parity_copies(layout) {
            return Err(MediaError::Unrecoverable(format!(
                "view {copy} of a {layout:?} array"
            )));
        }
        let parity = matches!(layout, Layout::Raid6 { .. } | Layout::Erasure { .. });
        for (row, pieces) in self.pieces(offset, buf.len()) {
            let _row = self.row_lock(row).read().unwrap_or_else(|e| e.into_inner());
            if parity && copy > 0 {
                self.read_through_parity(row, &pieces, copy - 1, buf)?;
                continue;
            }
            for p in pieces {
                let (member, media) = if parity {
                    let view = self.row_view(row);
                    let media = view.slots[p.data].clone().ok_or_else(|| {
                        MediaError::Unrecoverable(format!(
                            "row {row}: data chunk {} is not in service",
                            p.data
                        ))
                    })?;
                    (layout.member_of(row, p.data), media)
                } else {
                    self.copy_member(row, p.data, copy)?
                };
                let out = &mut buf[p.at..p.at + p.len as usize];
                self.read_member(row, member, media.as_ref(), p.offset, out)
                    .inspect_err(|e| self.note_read_error(member, e))?;
            }
        }
        Ok(())
    }

    /// Reconstructs the pieces of one row of a parity layout from the
    /// row's other data chunks and parity chunk `parity` only: the data
    /// chunks the pieces touch, and the other parity chunks, count as lost.
    /// Call with the row lock held.
    fn read_through_parity(
        &self,
        row: u64,
        pieces: &[super::array::Piece],
        parity: usize,
        buf: &mut [u8],
    ) -> MediaResult<()> {
        let layout = self.geometry.layout;
        let k = layout.data_slots();
        let sector = super::array::SECTOR;
        let start = pieces.iter().map(|p| p.offset).min().unwrap_or(0) / sector * sector;
        let end = pieces
            .iter()
            .map(|p| p.offset + p.len)
            .max()
            .unwrap_or(0)
            .div_ceil(sector)
            * sector;
        let view = self.row_view(row);
        let mut slots = self.read_row(row, &view, start, end);
        for p in pieces {
            slots[p.data] = None;
        }
        for (j, slot) in slots.iter_mut().enumerate().skip(k) {
            if j - k != parity {
                *slot = None;
            }
        }
        if slots[k + parity].is_none() {
            return Err(MediaError::Unrecoverable(format!(
                "row {row}: parity chunk {parity} is not readable"
            )));
        }
        let decoded = layout.decode(&slots)?;
        for p in pieces {
            let from = (p.offset - start) as usize;
            buf[p.at..p.at + p.len as usize]
                .copy_from_slice(&decoded[p.data][from..from + p.len as usize]);
        }
        Ok(())
    }

    /// Writes `good` at `offset` over copy `copy` alone. Pending bytes of
    /// each row are destaged first, under the row's lock, so the repair
    /// never puts bytes in place before their journal entry is durable,
    /// and no older pending bytes land on it afterwards. A member that
    /// cannot take the write is failed.
    pub(super) fn repair_one_copy(&self, copy: usize, offset: u64, good: &[u8]) -> MediaResult<()> {
        check_range(offset, good.len() as u64, self.size())?;
        if matches!(
            self.geometry.layout,
            Layout::Raid6 { .. } | Layout::Erasure { .. }
        ) {
            // Whichever view failed (a data chunk, or a parity chunk a
            // reconstruction used), a write of the verified bytes puts the
            // data back and recomputes every parity chunk of the span.
            self.write_at(offset, good)?;
            self.counters.read_repairs.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        for (row, pieces) in self.pieces(offset, good.len()) {
            let _row = self
                .row_lock(row)
                .write()
                .unwrap_or_else(|e| e.into_inner());
            if self.has_pending(row) {
                self.destage()?;
            }
            for p in pieces {
                let (member, media) = self.copy_member(row, p.data, copy)?;
                let at = self.geometry.row_offset(row) + p.offset;
                media
                    .write_at(at, &good[p.at..p.at + p.len as usize])
                    .inspect_err(|_| self.mark_failed(member))?;
            }
        }
        self.counters.read_repairs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}
