//! Read repair for mirrors: one copy read or rewritten on its own.
//!
//! The array has no checksums of its own; the layer above (the pool's
//! records) has. When the bytes a normal read returned fail that layer's
//! check, it reads each copy with [`ProtectedMedia::read_one_copy`], keeps
//! one that passes, and rewrites the others with it through
//! [`ProtectedMedia::repair_one_copy`]. Parity layouts would need a
//! reconstruction without each member in turn; they offer one copy only.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::media::{check_range, Media, MediaError, MediaResult};

use super::array::ProtectedMedia;
use super::codec::Layout;

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
    /// they cover (pending bytes included, as a normal read sees them).
    pub(super) fn read_one_copy(
        &self,
        copy: usize,
        offset: u64,
        buf: &mut [u8],
    ) -> MediaResult<()> {
        check_range(offset, buf.len() as u64, self.size())?;
        for (row, pieces) in self.pieces(offset, buf.len()) {
            let _row = self.row_lock(row).read().unwrap_or_else(|e| e.into_inner());
            for p in pieces {
                let (member, media) = self.copy_member(row, p.data, copy)?;
                let out = &mut buf[p.at..p.at + p.len as usize];
                self.read_member(row, member, media.as_ref(), p.offset, out)
                    .inspect_err(|e| self.note_read_error(member, e))?;
            }
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
