//! The array's state under its lock: the open segment and its stripe
//! buffer, the page mapping table, the segment table, member I/O, commits
//! and the write buffer.
//!
//! Invariants (kept by every method that returns `Ok`):
//!
//! * The PMT (in the running metadata transaction) maps an LBA only to a
//!   block of a stripe that was written whole to the members; the blocks
//!   of the stripe being filled live in `buffer` and are looked up there
//!   first.
//! * `segs[s].live` is the number of PMT entries pointing into segment `s`.
//! * A segment whose live count fell to zero after it was sealed is in
//!   `pending_free` until the next commit (the committed PMT may still
//!   point into it); only then is it free, and only free segments are
//!   opened and overwritten.
//! * Every commit records the open segment and the stripes written to it:
//!   the stripes after that point are found again at open by their
//!   summaries (roll-forward), and the open segment changes only through
//!   a commit, so roll-forward never scans more than one segment.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use super::format::{
    block_crc, Entry, Geometry, Header, BLOCK, NO_LBA, RECORD_MAGIC, SUMMARY_MAGIC,
};
use crate::media::{Media, MediaError, MediaResult};
use crate::metadata::btree::{self, TreeInfo, ValueKind};
use crate::metadata::transaction::TransactionManager;
use crate::metadata::MetaError;

// Root slots of the metadata superblock. Slots 0 and 1 hold trees; the
// others hold plain numbers (the transaction manager does not interpret
// them).
pub(super) const R_PMT: usize = 0;
pub(super) const R_SEGMENTS: usize = 1;
const R_OPEN: usize = 2;
const R_WRITTEN: usize = 3;
const R_NEXT_EPOCH: usize = 4;
const R_FAILED: usize = 5;
const R_CLOCK: usize = 6;
const R_HOST_BYTES: usize = 7;
const R_MEDIA_BYTES: usize = 8;
const R_GC_BYTES: usize = 9;
const R_MARKER: usize = 10;
/// Root slot 10 holds this, so that other metadata is not taken for ours.
pub(super) const MARKER: u64 = u64::from_le_bytes(*b"LRAIDmd1");

const PMT_VALUE: usize = 16;
const SEGMENT_VALUE: usize = 40;

pub(super) fn meta_error(e: MetaError) -> MediaError {
    match e {
        MetaError::Media(m) => m,
        MetaError::NoSpace => MediaError::Unrecoverable("lograid metadata area full".into()),
        other => MediaError::Unrecoverable(format!("lograid metadata: {other}")),
    }
}

pub(super) fn pmt_info() -> MediaResult<TreeInfo> {
    TreeInfo::new(PMT_VALUE, ValueKind::Plain).map_err(meta_error)
}

pub(super) fn segment_info() -> MediaResult<TreeInfo> {
    TreeInfo::new(SEGMENT_VALUE, ValueKind::Plain).map_err(meta_error)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SegState {
    Free,
    Open,
    Sealed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Segment {
    pub state: SegState,
    /// Stripes written (of a sealed segment: all it holds).
    pub stripes: u64,
    pub live: u64,
    /// The life of the segment: summaries and records carry it.
    pub epoch: u64,
    /// The stripe clock when it was sealed (its age for GC).
    pub sealed_at: u64,
}

impl Segment {
    const FREE: Segment = Segment {
        state: SegState::Free,
        stripes: 0,
        live: 0,
        epoch: 0,
        sealed_at: 0,
    };

    fn encode(&self) -> Vec<u8> {
        let state = match self.state {
            SegState::Free => 0u64,
            SegState::Open => 1,
            SegState::Sealed => 2,
        };
        [state, self.stripes, self.live, self.epoch, self.sealed_at]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()
    }

    fn decode(b: &[u8]) -> Option<Segment> {
        let v = |i: usize| -> Option<u64> {
            b.get(i * 8..i * 8 + 8)
                .and_then(|s| s.try_into().ok())
                .map(u64::from_le_bytes)
        };
        let state = match v(0)? {
            1 => SegState::Open,
            2 => SegState::Sealed,
            _ => return None,
        };
        Some(Segment {
            state,
            stripes: v(1)?,
            live: v(2)?,
            epoch: v(3)?,
            sealed_at: v(4)?,
        })
    }
}

/// Counters for the statistics (since the array was created; persisted
/// with each commit, so a crash loses at most what followed the last one).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Counters {
    pub host_bytes: u64,
    pub media_bytes: u64,
    pub gc_bytes: u64,
    pub segments_cleaned: u64,
    pub commits: u64,
    pub wb_records: u64,
    pub degraded_reads: u64,
    pub stripes_written: u64,
}

/// The segment GC is emptying and the next stripe of it to examine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cleaning {
    pub victim: u64,
    pub stripe: u64,
}

pub(super) struct Inner {
    pub g: Geometry,
    pub members: Vec<Option<Arc<dyn Media>>>,
    pub failed: Vec<bool>,
    /// A failure not yet recorded by a commit.
    pub failure_unrecorded: bool,
    pub tm: TransactionManager,
    pub pmt: TreeInfo,
    pub seg_tree: TreeInfo,
    pub segs: Vec<Segment>,
    /// Segment-table entries changed since the last commit.
    pub dirty: BTreeSet<u64>,
    pub free: VecDeque<u64>,
    pub pending_free: Vec<u64>,
    pub open: u64,
    /// Stripes written to the open segment.
    pub wp: u64,
    pub next_epoch: u64,
    /// Stripes written since creation: the age clock.
    pub clock: u64,
    /// The stripe being filled: entry `i` is block `i + 1` of stripe `wp`.
    pub buffer: Vec<(Entry, Vec<u8>)>,
    pub buffered: HashMap<u64, usize>,
    pub wb_seq: u64,
    /// The newest write-buffer record holds the buffer as it is.
    pub wb_current: bool,
    pub cleaning: Option<Cleaning>,
    pub counters: Counters,
}

impl Inner {
    pub fn tolerance(&self) -> usize {
        self.g.layout.tolerance()
    }

    fn serving(&self, member: usize) -> Option<&Arc<dyn Media>> {
        if self.failed.get(member).copied().unwrap_or(true) {
            None
        } else {
            self.members.get(member).and_then(Option::as_ref)
        }
    }

    pub fn failed_count(&self) -> usize {
        (0..self.g.members())
            .filter(|m| self.serving(*m).is_none())
            .count()
    }

    /// Marks a member failed; it is never read or written again. The
    /// failure is committed before the operation that saw it returns (see
    /// [`Inner::settle`]), so a member that missed writes cannot come back
    /// as if current after a crash.
    pub fn mark_failed(&mut self, member: usize) {
        if let Some(f) = self.failed.get_mut(member) {
            if !*f {
                *f = true;
                self.failure_unrecorded = true;
            }
        }
    }

    fn check_tolerance(&self) -> MediaResult<()> {
        let lost = self.failed_count();
        if lost > self.tolerance() {
            return Err(MediaError::Unrecoverable(format!(
                "{lost} of {} lograid members lost, the layout survives {}",
                self.g.members(),
                self.tolerance()
            )));
        }
        Ok(())
    }

    /// Commits a member failure seen by the operation that just ran.
    pub fn settle(&mut self) -> MediaResult<()> {
        if self.failure_unrecorded {
            self.commit()?;
        }
        Ok(())
    }

    fn failed_mask(&self) -> u64 {
        self.failed
            .iter()
            .enumerate()
            .filter(|(_, f)| **f)
            .fold(0, |mask, (i, _)| mask | 1 << i)
    }

    // ---- member I/O ----------------------------------------------------

    /// Writes to a member; an error fails the member (the data it missed
    /// is implied by the others while the array stays within tolerance).
    fn member_write(&mut self, member: usize, offset: u64, data: &[u8]) -> MediaResult<()> {
        let Some(media) = self.serving(member).cloned() else {
            return Ok(());
        };
        self.counters.media_bytes += data.len() as u64;
        if media.write_at(offset, data).is_err() {
            self.mark_failed(member);
        }
        self.check_tolerance()
    }

    /// Reads from a member; `None` when it is absent or fails (`Gone`
    /// fails the member, an I/O error only this read).
    fn member_read(&mut self, member: usize, offset: u64, len: usize) -> Option<Vec<u8>> {
        let media = self.serving(member)?.clone();
        let mut buf = vec![0u8; len];
        match media.read_at(offset, &mut buf) {
            Ok(()) => Some(buf),
            Err(MediaError::Gone) => {
                self.mark_failed(member);
                None
            }
            Err(_) => None,
        }
    }

    /// Flushes every serving member.
    pub fn flush_members(&mut self) -> MediaResult<()> {
        for m in 0..self.g.members() {
            if let Some(media) = self.serving(m).cloned() {
                if media.flush().is_err() {
                    self.mark_failed(m);
                }
            }
        }
        self.check_tolerance()
    }

    /// Reads bytes `within..within + len` of every slot of a stripe (by
    /// slot, `None` where the member is absent, fails, or is `skip`).
    fn read_slots(
        &mut self,
        segment: u64,
        stripe: u64,
        within: u64,
        len: usize,
        skip: Option<usize>,
    ) -> Vec<Option<Vec<u8>>> {
        let row = self.g.row(segment, stripe);
        let offset = self.g.chunk_offset(segment, stripe) + within;
        (0..self.g.members())
            .map(|slot| {
                let member = self.g.layout.member_of(row, slot);
                if Some(member) == skip {
                    None
                } else {
                    self.member_read(member, offset, len)
                }
            })
            .collect()
    }

    /// Reads the data slots of a whole stripe (summary first), decoding
    /// from parity where members are missing. With `check_parity`, every
    /// slot read must agree with the data (a stripe torn by a crash does
    /// not), else `None`.
    pub fn read_stripe(
        &mut self,
        segment: u64,
        stripe: u64,
        check_parity: bool,
    ) -> MediaResult<Option<Vec<u8>>> {
        let slots = self.read_slots(segment, stripe, 0, self.g.chunk as usize, None);
        let layout = self.g.layout;
        let missing: Vec<bool> = slots.iter().map(Option::is_none).collect();
        if !layout.can_decode(&missing) {
            return Err(MediaError::Unrecoverable(format!(
                "stripe {stripe} of segment {segment}: too many members unreadable"
            )));
        }
        let data = layout.decode(&slots)?;
        if check_parity {
            let full = layout.encode(&data)?;
            if slots
                .iter()
                .zip(&full)
                .any(|(have, want)| have.as_ref().is_some_and(|h| h != want))
            {
                return Ok(None);
            }
        }
        Ok(Some(data.concat()))
    }

    /// The bytes at `location`, checked against `crc`: read from the
    /// member that holds them, or reconstructed from the others when that
    /// member is missing, fails, or returns bytes that fail the check.
    pub fn read_location(&mut self, location: u64, crc: u32) -> MediaResult<Vec<u8>> {
        let (segment, stripe, block) = self.g.split(location);
        let cb = self.g.chunk_blocks();
        let slot = (block / cb) as usize;
        let within = (block % cb) * BLOCK;
        let row = self.g.row(segment, stripe);
        let member = self.g.layout.member_of(row, slot);
        let offset = self.g.chunk_offset(segment, stripe) + within;
        if let Some(bytes) = self.member_read(member, offset, BLOCK as usize) {
            if block_crc(&bytes) == crc {
                return Ok(bytes);
            }
        }
        self.counters.degraded_reads += 1;
        let slots = self.read_slots(segment, stripe, within, BLOCK as usize, Some(member));
        let mut data = self.g.layout.decode(&slots)?;
        let bytes = std::mem::take(&mut data[slot]);
        if block_crc(&bytes) != crc {
            return Err(MediaError::Io(format!(
                "block at location {location} fails its checksum, also when reconstructed"
            )));
        }
        Ok(bytes)
    }

    // ---- the mapping table and the segment table --------------------

    pub fn pmt_lookup(&mut self, lba: u64) -> MediaResult<Option<(u64, u32)>> {
        let root = self.tm.root(R_PMT);
        let value = btree::lookup(&mut self.tm, &self.pmt, root, lba).map_err(meta_error)?;
        Ok(value.map(|v| {
            let mut loc = [0u8; 8];
            loc.copy_from_slice(&v[..8]);
            let mut crc = [0u8; 4];
            crc.copy_from_slice(&v[8..12]);
            (u64::from_le_bytes(loc), u32::from_le_bytes(crc))
        }))
    }

    fn live_dec(&mut self, segment: u64) {
        let Some(s) = self.segs.get_mut(segment as usize) else {
            return;
        };
        s.live = s.live.saturating_sub(1);
        self.dirty.insert(segment);
        if s.live == 0 && s.state == SegState::Sealed && !self.pending_free.contains(&segment) {
            self.pending_free.push(segment);
        }
    }

    /// Points `lba` at `location`, moving the live counts.
    pub fn pmt_set(&mut self, lba: u64, location: u64, crc: u32) -> MediaResult<()> {
        if let Some((old, _)) = self.pmt_lookup(lba)? {
            self.live_dec(self.g.split(old).0);
        }
        let mut value = vec![0u8; PMT_VALUE];
        value[..8].copy_from_slice(&location.to_le_bytes());
        value[8..12].copy_from_slice(&crc.to_le_bytes());
        let root = self.tm.root(R_PMT);
        let root = btree::insert(&mut self.tm, &self.pmt, root, lba, &value).map_err(meta_error)?;
        self.tm.set_root(R_PMT, root).map_err(meta_error)?;
        let segment = self.g.split(location).0;
        if let Some(s) = self.segs.get_mut(segment as usize) {
            s.live += 1;
            self.dirty.insert(segment);
        }
        Ok(())
    }

    /// Unmaps `lba` (discard).
    pub fn pmt_remove(&mut self, lba: u64) -> MediaResult<()> {
        if let Some(i) = self.buffered.remove(&lba) {
            // The buffer keeps its positions: the entry becomes padding.
            self.buffer[i].0.lba = NO_LBA;
            self.wb_current = false;
        }
        let root = self.tm.root(R_PMT);
        let (root, old) = btree::remove(&mut self.tm, &self.pmt, root, lba).map_err(meta_error)?;
        self.tm.set_root(R_PMT, root).map_err(meta_error)?;
        if let Some(old) = old {
            let mut loc = [0u8; 8];
            loc.copy_from_slice(&old[..8]);
            self.live_dec(self.g.split(u64::from_le_bytes(loc)).0);
        }
        Ok(())
    }

    /// Loads the segment table and the scalars of the last commit.
    pub fn load(&mut self) -> MediaResult<()> {
        if self.tm.root(R_MARKER) != MARKER {
            return Err(MediaError::Io("not lograid metadata".into()));
        }
        let mut found = Vec::new();
        let root = self.tm.root(R_SEGMENTS);
        btree::range(
            &mut self.tm,
            &self.seg_tree,
            root,
            0,
            u64::MAX,
            &mut |key, value| {
                found.push((key, Segment::decode(value)));
                true
            },
        )
        .map_err(meta_error)?;
        for (key, segment) in found {
            let slot = self.segs.get_mut(key as usize);
            match (slot, segment) {
                (Some(slot), Some(segment)) => *slot = segment,
                _ => return Err(MediaError::Io(format!("bad segment table entry {key}"))),
            }
        }
        self.open = self.tm.root(R_OPEN);
        self.wp = self.tm.root(R_WRITTEN);
        self.next_epoch = self.tm.root(R_NEXT_EPOCH);
        self.clock = self.tm.root(R_CLOCK);
        self.counters.host_bytes = self.tm.root(R_HOST_BYTES);
        self.counters.media_bytes = self.tm.root(R_MEDIA_BYTES);
        self.counters.gc_bytes = self.tm.root(R_GC_BYTES);
        let mask = self.tm.root(R_FAILED);
        for (i, f) in self.failed.iter_mut().enumerate() {
            *f |= mask & (1 << i) != 0;
        }
        let open_ok = self
            .segs
            .get(self.open as usize)
            .is_some_and(|s| s.state == SegState::Open && self.wp <= self.g.segment_stripes);
        if !open_ok {
            return Err(MediaError::Io(
                "lograid metadata names no open segment".into(),
            ));
        }
        self.free = (0..self.g.segments)
            .filter(|s| self.segs[*s as usize].state == SegState::Free)
            .collect();
        for s in 0..self.g.segments {
            let seg = self.segs[s as usize];
            if seg.state == SegState::Sealed && seg.live == 0 {
                self.pending_free.push(s);
            }
        }
        self.wb_current = true;
        Ok(())
    }

    /// Makes everything written so far durable with the metadata: flushes
    /// the members (the stripes the PMT points at), writes the segment
    /// table's changes and commits the transaction. Segments pending free
    /// become free once the commit is durable.
    pub fn commit(&mut self) -> MediaResult<()> {
        self.flush_members()?;
        let released: Vec<u64> = std::mem::take(&mut self.pending_free);
        for s in &released {
            if let Some(seg) = self.segs.get_mut(*s as usize) {
                *seg = Segment::FREE;
                self.dirty.insert(*s);
            }
        }
        let dirty: Vec<u64> = std::mem::take(&mut self.dirty).into_iter().collect();
        let mut root = self.tm.root(R_SEGMENTS);
        for s in dirty {
            let seg = self.segs[s as usize];
            root = if seg.state == SegState::Free {
                btree::remove(&mut self.tm, &self.seg_tree, root, s)
                    .map_err(meta_error)?
                    .0
            } else {
                btree::insert(&mut self.tm, &self.seg_tree, root, s, &seg.encode())
                    .map_err(meta_error)?
            };
        }
        let scalars = [
            (R_SEGMENTS, root),
            (R_OPEN, self.open),
            (R_WRITTEN, self.wp),
            (R_NEXT_EPOCH, self.next_epoch),
            (R_FAILED, self.failed_mask()),
            (R_CLOCK, self.clock),
            (R_HOST_BYTES, self.counters.host_bytes),
            (R_MEDIA_BYTES, self.counters.media_bytes),
            (R_GC_BYTES, self.counters.gc_bytes),
            (R_MARKER, MARKER),
        ];
        for (slot, value) in scalars {
            self.tm.set_root(slot, value).map_err(meta_error)?;
        }
        self.tm.commit().map_err(meta_error)?;
        self.counters.commits += 1;
        self.failure_unrecorded = false;
        for s in released {
            // A segment that was emptied while open and then sealed may
            // already be queued; never queue one twice.
            if !self.free.contains(&s) {
                self.free.push_back(s);
            }
        }
        Ok(())
    }

    // ---- the log head ---------------------------------------------------

    /// Seals the open segment and opens a free one, in one commit.
    pub fn switch_segment(&mut self) -> MediaResult<()> {
        // Segments emptied since the last commit become free through one;
        // nothing changes before a free segment is known to exist.
        if self.free.is_empty() && !self.pending_free.is_empty() {
            self.commit()?;
        }
        if self.free.is_empty() {
            return Err(MediaError::NoSpace);
        }
        let old = self.open;
        let clock = self.clock;
        if let Some(seg) = self.segs.get_mut(old as usize) {
            seg.state = SegState::Sealed;
            seg.stripes = self.wp;
            seg.sealed_at = clock;
            if seg.live == 0 && !self.pending_free.contains(&old) {
                self.pending_free.push(old);
            }
        }
        self.dirty.insert(old);
        let next = self.free.pop_front().ok_or(MediaError::NoSpace)?;
        self.segs[next as usize] = Segment {
            state: SegState::Open,
            stripes: 0,
            live: 0,
            epoch: self.next_epoch,
            sealed_at: 0,
        };
        self.next_epoch += 1;
        self.dirty.insert(next);
        self.open = next;
        self.wp = 0;
        self.wb_current = true;
        self.commit()
    }

    /// Writes the buffer as stripe `wp` of the open segment (unfilled
    /// positions as padding), points the PMT at its blocks, and moves on.
    pub fn write_stripe(&mut self) -> MediaResult<()> {
        let g = self.g.clone();
        // A switch that found no free segment left the open one full: try
        // again before writing past its end.
        if self.wp >= g.segment_stripes {
            self.switch_segment()?;
        }
        let (segment, stripe) = (self.open, self.wp);
        let epoch = self.segs[segment as usize].epoch;
        let header = Header {
            uuid: g.uuid,
            epoch,
            segment,
            stripe,
            seq: 0,
            entries: self.buffer.iter().map(|(e, _)| *e).collect(),
        };
        let mut bytes = header.encode(SUMMARY_MAGIC)?;
        for (_, data) in &self.buffer {
            bytes.extend_from_slice(data);
        }
        bytes.resize((g.stripe_blocks() * BLOCK) as usize, 0);
        let chunks: Vec<Vec<u8>> = bytes.chunks(g.chunk as usize).map(<[u8]>::to_vec).collect();
        let row = g.row(segment, stripe);
        let slots = g.layout.encode(&chunks)?;
        let offset = g.chunk_offset(segment, stripe);
        for (slot, chunk) in slots.iter().enumerate() {
            self.member_write(g.layout.member_of(row, slot), offset, chunk)?;
        }
        let buffer = std::mem::take(&mut self.buffer);
        self.buffered.clear();
        for (i, (entry, _)) in buffer.iter().enumerate() {
            if entry.lba != NO_LBA {
                let location = g.location(segment, stripe, i as u64 + 1);
                self.pmt_set(entry.lba, location, entry.crc)?;
            }
        }
        self.wp += 1;
        self.clock += 1;
        self.counters.stripes_written += 1;
        self.wb_current = true;
        if self.wp == g.segment_stripes {
            self.switch_segment()?;
        }
        Ok(())
    }

    /// Appends a block to the log head. A block of an LBA the buffer
    /// already holds replaces it there (it never reached a stripe).
    pub fn append(&mut self, lba: u64, data: Vec<u8>) -> MediaResult<()> {
        let entry = Entry {
            lba,
            crc: block_crc(&data),
        };
        self.wb_current = false;
        if let Some(&i) = self.buffered.get(&lba) {
            self.buffer[i] = (entry, data);
            return Ok(());
        }
        self.buffered.insert(lba, self.buffer.len());
        self.buffer.push((entry, data));
        if self.buffer.len() as u64 == self.g.stripe_data() {
            self.write_stripe()?;
        }
        Ok(())
    }

    /// The current bytes of `lba`.
    pub fn read_lba(&mut self, lba: u64) -> MediaResult<Vec<u8>> {
        if let Some(&i) = self.buffered.get(&lba) {
            return Ok(self.buffer[i].1.clone());
        }
        match self.pmt_lookup(lba)? {
            None => Ok(vec![0u8; BLOCK as usize]),
            Some((location, crc)) => self.read_location(location, crc),
        }
    }

    // ---- the write buffer -------------------------------------------------

    /// Makes the buffer durable without filling the stripe: writes it as a
    /// record, with one copy more than the layout's tolerance, each on
    /// another member, into the next write-buffer slot.
    pub fn write_record(&mut self) -> MediaResult<()> {
        if self.wb_current || self.buffer.is_empty() {
            self.wb_current = true;
            return Ok(());
        }
        let g = self.g.clone();
        let seq = self.wb_seq;
        let header = Header {
            uuid: g.uuid,
            epoch: self.segs[self.open as usize].epoch,
            segment: self.open,
            stripe: self.wp,
            seq,
            entries: self.buffer.iter().map(|(e, _)| *e).collect(),
        };
        let mut bytes = header.encode(RECORD_MAGIC)?;
        for (_, data) in &self.buffer {
            bytes.extend_from_slice(data);
        }
        let offset = g.wb_off() + (seq % g.wb_slots) * g.wb_slot_bytes();
        let n = g.members();
        let mut copies = 0;
        for i in 0..n {
            if copies > self.tolerance() {
                break;
            }
            let member = (seq as usize + i) % n;
            if self.serving(member).is_some() {
                self.member_write(member, offset, &bytes)?;
                copies += usize::from(self.serving(member).is_some());
            }
        }
        self.wb_seq += 1;
        self.counters.wb_records += 1;
        self.wb_current = true;
        Ok(())
    }

    /// The newest valid record for stripe `stripe` of the open segment's
    /// life, over every copy on every member; also moves `wb_seq` past
    /// every record seen.
    pub fn newest_record(&mut self, stripe: u64) -> Option<(Header, Vec<Vec<u8>>)> {
        let g = self.g.clone();
        let epoch = self.segs.get(self.open as usize)?.epoch;
        let mut best: Option<(Header, Vec<Vec<u8>>)> = None;
        for member in 0..g.members() {
            for slot in 0..g.wb_slots {
                let offset = g.wb_off() + slot * g.wb_slot_bytes();
                let Some(head) = self.member_read(member, offset, BLOCK as usize) else {
                    continue;
                };
                let Some(header) = Header::decode(&head, RECORD_MAGIC) else {
                    continue;
                };
                if header.uuid != g.uuid || header.entries.len() as u64 > g.stripe_data() {
                    continue;
                }
                self.wb_seq = self.wb_seq.max(header.seq + 1);
                let wanted = header.epoch == epoch
                    && header.segment == self.open
                    && header.stripe == stripe
                    && best.as_ref().is_none_or(|(b, _)| b.seq < header.seq);
                if !wanted {
                    continue;
                }
                let len = header.entries.len() * BLOCK as usize;
                let Some(body) = self.member_read(member, offset + BLOCK, len) else {
                    continue;
                };
                let blocks: Vec<Vec<u8>> =
                    body.chunks(BLOCK as usize).map(<[u8]>::to_vec).collect();
                let intact = header
                    .entries
                    .iter()
                    .zip(&blocks)
                    .all(|(e, b)| e.lba == NO_LBA || block_crc(b) == e.crc);
                if intact {
                    best = Some((header, blocks));
                }
            }
        }
        best
    }
}
