//! Rebuild and scrub: the background work of a protected array.
//!
//! Both walk rows one at a time under the row's exclusive lock, so reads
//! and writes continue around them and never see a row mid-repair.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::media::{Media, MediaError, MediaResult};

use super::array::{ProtectedMedia, RowView, SECTOR};
use super::codec::{Layout, Locate};
use super::format::MemberState;

/// Where a rebuild stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildProgress {
    /// The member being rebuilt, `None` when nothing is rebuilding.
    pub member: Option<usize>,
    pub rows_done: u64,
    pub rows_total: u64,
}

impl RebuildProgress {
    pub fn is_complete(&self) -> bool {
        self.member.is_none()
    }
}

/// What a scrub found (counts of 512-byte sectors unless said otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScrubReport {
    pub rows: u64,
    /// Sectors whose slots disagree.
    pub mismatches: u64,
    /// Mismatches traced to one slot and rewritten from the others.
    pub repaired: u64,
    /// Mismatches no single slot explains (e.g. a 2-copy mirror): with
    /// repair on, redundancy is rewritten from the data chunks, as md does.
    pub unlocated: u64,
    /// Member reads that failed during the scrub.
    pub read_errors: u64,
    /// Rows with too few readable members to check at all.
    pub unreadable_rows: u64,
}

impl ScrubReport {
    /// Adds the counts of `other` (a later run of rows) to these.
    pub fn add(&mut self, other: &ScrubReport) {
        self.rows += other.rows;
        self.mismatches += other.mismatches;
        self.repaired += other.repaired;
        self.unlocated += other.unlocated;
        self.read_errors += other.read_errors;
        self.unreadable_rows += other.unreadable_rows;
    }
}

fn unrecoverable(why: impl Into<String>) -> MediaError {
    MediaError::Unrecoverable(why.into())
}

impl ProtectedMedia {
    /// Rebuilds up to `max_rows` rows of the (first) rebuilding member and
    /// records the new position on media; call until
    /// [`RebuildProgress::is_complete`]. Safe while reads and writes run.
    pub fn rebuild_step(&self, max_rows: u64) -> MediaResult<RebuildProgress> {
        let g = self.geometry;
        let target = self
            .members()
            .iter()
            .enumerate()
            .find(|(_, m)| m.state == MemberState::Rebuilding)
            .and_then(|(i, m)| m.media.clone().map(|media| (i, media, m.rebuilt_rows)));
        let Some((member, media, from)) = target else {
            return Ok(RebuildProgress {
                member: None,
                rows_done: g.rows,
                rows_total: g.rows,
            });
        };
        let end = from.saturating_add(max_rows.max(1)).min(g.rows);
        let left = || unrecoverable(format!("member {member} left the rebuild"));
        for row in from..end {
            let _row = self
                .row_lock(row)
                .write()
                .unwrap_or_else(|e| e.into_inner());
            // A member failed (and maybe re-added, a new incarnation with
            // its own rebuild) since this step began gets nothing more from
            // it: the handle held here is the old incarnation's.
            if !self.is_rebuilding_with(member, &media) {
                return Err(left());
            }
            let view = self.row_view(row);
            let slot = g.layout.slot_of(row, member);
            let content = self.slot_content(row, &view, slot)?;
            media
                .write_at(g.row_offset(row), &content)
                .inspect_err(|_| self.mark_failed(member))?;
            let mut members = self.members_mut();
            let m = &mut members[member];
            let same = m.media.as_ref().is_some_and(|x| Arc::ptr_eq(x, &media));
            if m.state != MemberState::Rebuilding || !same {
                return Err(left());
            }
            m.rebuilt_rows = row + 1;
            self.counters.rebuilt_rows.fetch_add(1, Ordering::Relaxed);
        }
        // The new position goes on media only once the rows it covers are
        // durable on the new member, and so is the journal: rebuilt rows
        // include pending writes, whose transactions must then survive a
        // crash too.
        media.flush().inspect_err(|_| self.mark_failed(member))?;
        self.destage()?;
        if end == g.rows {
            // The member joins only if it is still the incarnation this
            // step rebuilt, with every row copied. Between the last row and
            // here (the flushes above) it may have failed, or failed and
            // been re-added as a new incarnation whose rebuild starts at
            // row 0: marking either one online would make the array trust
            // a copy that missed the writes made while it was away.
            let mut members = self.members_mut();
            let m = &mut members[member];
            let same = m.media.as_ref().is_some_and(|x| Arc::ptr_eq(x, &media));
            if m.state != MemberState::Rebuilding || !same || m.rebuilt_rows != g.rows {
                return Err(left());
            }
            m.state = MemberState::Online;
        }
        self.persist()?;
        if end < g.rows {
            return Ok(RebuildProgress {
                member: Some(member),
                rows_done: end,
                rows_total: g.rows,
            });
        }
        // This member is done; report the next one waiting, if any.
        let next = self
            .members()
            .iter()
            .enumerate()
            .find(|(_, m)| m.state == MemberState::Rebuilding)
            .map(|(i, m)| (i, m.rebuilt_rows));
        Ok(RebuildProgress {
            member: next.map(|(i, _)| i),
            rows_done: next.map_or(g.rows, |(_, rows)| rows),
            rows_total: g.rows,
        })
    }

    /// Whether `member` is rebuilding onto `media` (this incarnation).
    fn is_rebuilding_with(&self, member: usize, media: &Arc<dyn Media>) -> bool {
        let members = self.members();
        let m = &members[member];
        m.state == MemberState::Rebuilding
            && m.media.as_ref().is_some_and(|x| Arc::ptr_eq(x, media))
    }

    /// Rebuilds every rebuilding member to completion.
    pub fn rebuild_all(&self, rows_per_step: u64) -> MediaResult<()> {
        while !self.rebuild_step(rows_per_step)?.is_complete() {}
        Ok(())
    }

    /// What slot `slot` of `row` must hold, from the other serving slots.
    fn slot_content(&self, row: u64, view: &RowView, slot: usize) -> MediaResult<Vec<u8>> {
        let g = self.geometry;
        let chunks = self.read_row(row, view, 0, g.chunk);
        match g.layout {
            Layout::Stripe { .. } => Err(unrecoverable("a stripe cannot rebuild a member")),
            Layout::Mirror { .. } => g
                .layout
                .data_of_slot(slot)
                .and_then(|d| g.layout.slots_of_data(d).find_map(|s| chunks[s].clone()))
                .ok_or_else(|| unrecoverable(format!("row {row}: no copy left to rebuild from"))),
            layout => {
                let row_slots = layout.encode(&layout.decode(&chunks)?)?;
                row_slots
                    .into_iter()
                    .nth(slot)
                    .ok_or_else(|| unrecoverable("slot out of range"))
            }
        }
    }

    /// Scrubs the whole array; see [`ProtectedMedia::scrub_rows`].
    pub fn scrub(&self, repair: bool) -> MediaResult<ScrubReport> {
        self.scrub_rows(0, self.geometry.rows, repair)
    }

    /// Re-reads `count` rows from `first`, checks parity or copies, and with
    /// `repair` rewrites what is wrong. A mismatch is traced per sector to
    /// the one slot whose removal makes the rest agree; with no redundancy
    /// to spare for that, it is counted as unlocated.
    pub fn scrub_rows(&self, first: u64, count: u64, repair: bool) -> MediaResult<ScrubReport> {
        let g = self.geometry;
        let mut total = ScrubReport::default();
        let end = first.saturating_add(count).min(g.rows);
        for row in first..end {
            let _row = self
                .row_lock(row)
                .write()
                .unwrap_or_else(|e| e.into_inner());
            let report = self.scrub_row(row, repair)?;
            total.add(&report);
        }
        Ok(total)
    }

    fn scrub_row(&self, row: u64, repair: bool) -> MediaResult<ScrubReport> {
        let g = self.geometry;
        let layout = g.layout;
        let mut report = ScrubReport {
            rows: 1,
            ..ScrubReport::default()
        };
        // A repair must not put bytes in place whose journal entries are not
        // durable yet, so pending writes of this row are destaged first.
        if self.has_pending(row) {
            self.destage()?;
        }
        let view = self.row_view(row);
        let chunks = self.read_row(row, &view, 0, g.chunk);
        report.read_errors = chunks
            .iter()
            .zip(&view.slots)
            .filter(|(c, v)| c.is_none() && v.is_some())
            .count() as u64;
        if !layout.is_redundant() {
            return Ok(report);
        }
        let missing: Vec<bool> = chunks.iter().map(Option::is_none).collect();
        if !layout.can_decode(&missing) {
            report.unreadable_rows = 1;
            return Ok(report);
        }
        // Zeroes are a codeword of every redundant layout (equal copies,
        // zero parity), so a row whose readable slots are all zero is clean
        // without decoding it: most rows of a young array, and the scrub's
        // cost is then only reading.
        let zero = |c: &Option<Vec<u8>>| c.as_ref().is_none_or(|c| c.iter().all(|&b| b == 0));
        if chunks.iter().all(zero) || layout.locate(&chunks)? == Locate::Clean {
            return Ok(report);
        }
        for sector in 0..g.chunk / SECTOR {
            let (a, b) = ((sector * SECTOR) as usize, ((sector + 1) * SECTOR) as usize);
            let sub: Vec<Option<Vec<u8>>> = chunks
                .iter()
                .map(|c| c.as_ref().map(|c| c[a..b].to_vec()))
                .collect();
            let at = g.row_offset(row) + a as u64;
            match layout.locate(&sub)? {
                Locate::Clean => {}
                Locate::Located { slot, content } => {
                    report.mismatches += 1;
                    if repair {
                        self.write_slot(row, &view, slot, at, &content);
                        report.repaired += 1;
                    }
                }
                Locate::Ambiguous => {
                    report.mismatches += 1;
                    report.unlocated += 1;
                    if repair {
                        let full = layout.encode(&layout.decode(&sub)?)?;
                        for (slot, have) in sub.iter().enumerate() {
                            if have.as_ref().is_some_and(|h| *h != full[slot]) {
                                self.write_slot(row, &view, slot, at, &full[slot]);
                            }
                        }
                    }
                }
            }
        }
        Ok(report)
    }

    /// A repair write; a member that cannot take it is failed.
    fn write_slot(&self, row: u64, view: &RowView, slot: usize, at: u64, bytes: &[u8]) {
        if let Some(media) = &view.slots[slot] {
            if media.write_at(at, bytes).is_err() {
                self.mark_failed(self.geometry.layout.member_of(row, slot));
            }
        }
    }
}
