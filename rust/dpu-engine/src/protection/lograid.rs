//! Log-RAID: a log-structured array over parity-protected members.
//!
//! Host writes never update a stripe in place. Every block written is
//! appended to the stripe being filled in the open segment; a full stripe
//! (a summary block naming the LBA of every block, the blocks, and the
//! parity the existing RAID6 / Reed-Solomon codec computes for them) goes
//! to the members in one write per member, at the next position of the
//! segment, so each member only ever sees sequential writes within a
//! segment and no write needs a read-modify-write. The page mapping table
//! (PMT: LBA to location and checksum) and the segment table are
//! copy-on-write B-trees of the engine's metadata machinery, paged through
//! its bounded cache, in a small journaled array of the same layout at the
//! start of the members. A flush before a stripe fills writes the partial
//! stripe as a write-buffer record, mirrored on tolerance + 1 members. A
//! garbage collector picks victims by cost-benefit, moves their live
//! blocks to the log head and returns them to the free list through a
//! commit, keeping a reserve of segments for itself.
//!
//! `Documentation/lograid.rst` describes the format, the write buffer, GC
//! and the crash argument.

mod format;
mod gc;
mod state;

#[cfg(test)]
mod crash_tests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

pub use format::Geometry;

use format::{MemberRegion, BLOCK, META_CHUNK, META_JOURNAL_SLOTS, NO_LBA, SUMMARY_MAGIC};
use state::{meta_error, pmt_info, segment_info, Counters, Inner, SegState, Segment};

use super::array::new_uuid;
use super::{Layout, ProtectedMedia, ProtectionConfig};
use crate::media::{check_range, Media, MediaError, MediaResult};
use crate::metadata::btree;
use crate::metadata::transaction::TransactionManager;

/// How to create a log-structured array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRaidConfig {
    /// `Raid6` or `Erasure`: the parity of every stripe.
    pub layout: Layout,
    /// Bytes of one member's part of a stripe (a multiple of 4096).
    pub chunk: u64,
    /// Stripes per segment: a segment is `segment_stripes * chunk` bytes
    /// on each member (a zone, on ZNS SSDs).
    pub segment_stripes: u64,
    /// Logical bytes exported; 0 for the most the members allow.
    pub logical_bytes: u64,
    /// Segments kept for GC: host writes do not take them while GC can
    /// free others.
    pub reserve_segments: u64,
    /// Write-buffer slots per member.
    pub wb_slots: u64,
    /// Metadata blocks the cache holds.
    pub cache_blocks: usize,
}

impl LogRaidConfig {
    pub fn new(layout: Layout, chunk: u64, segment_stripes: u64) -> Self {
        LogRaidConfig {
            layout,
            chunk,
            segment_stripes,
            logical_bytes: 0,
            reserve_segments: 2,
            wb_slots: 4,
            cache_blocks: 1024,
        }
    }
}

/// What GC is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcState {
    Idle,
    Cleaning { victim: u64, stripe: u64 },
}

/// The array's counters (the volume statistics of issue 13, item 4).
#[derive(Debug, Clone, PartialEq)]
pub struct LogRaidStats {
    /// Bytes the host wrote.
    pub host_bytes: u64,
    /// Bytes written to members: stripes (data, summaries, parity) and
    /// write-buffer records (the metadata array's writes not included).
    pub media_bytes: u64,
    /// Bytes GC moved.
    pub gc_bytes: u64,
    /// `media_bytes / host_bytes` (0 before any write).
    pub write_amplification: f64,
    pub segments: u64,
    pub free_segments: u64,
    /// Sealed or open segments.
    pub used_segments: u64,
    /// Emptied segments waiting for the next commit.
    pub pending_free_segments: u64,
    pub reserve_segments: u64,
    pub gc: GcState,
    pub segments_cleaned: u64,
    pub commits: u64,
    pub wb_records: u64,
    /// Block reads served by reconstruction.
    pub degraded_reads: u64,
    pub failed_members: Vec<bool>,
}

/// What a scrub of the written stripes found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogScrubReport {
    pub stripes: u64,
    /// Stripes whose parity disagrees with their data.
    pub mismatches: u64,
    /// Stripes that could not be read (too many members unreadable).
    pub unreadable: u64,
}

/// A log-structured array: a [`Media`] of `logical_blocks * 4096` bytes.
pub struct LogRaid {
    geometry: Geometry,
    inner: Mutex<Inner>,
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(|e| e.into_inner())
}

fn meta_members(
    g: &Geometry,
    members: &[Option<Arc<dyn Media>>],
) -> MediaResult<Vec<Option<Arc<dyn Media>>>> {
    members
        .iter()
        .map(|m| {
            m.as_ref()
                .map(|m| {
                    MemberRegion::new(m.clone(), g.meta_off(), g.meta_len)
                        .map(|r| Arc::new(r) as Arc<dyn Media>)
                })
                .transpose()
        })
        .collect()
}

impl LogRaid {
    /// Formats `members` (in member order) as a new array.
    pub fn create(config: LogRaidConfig, members: Vec<Arc<dyn Media>>) -> MediaResult<Self> {
        let layout = config.layout;
        layout.validate()?;
        if members.len() != layout.members() {
            return Err(MediaError::Unrecoverable(format!(
                "{layout:?} needs {} members, got {}",
                layout.members(),
                members.len()
            )));
        }
        let smallest = members.iter().map(|m| m.size()).min().unwrap_or(0);
        let mut g = Geometry {
            uuid: new_uuid(),
            layout,
            chunk: config.chunk,
            segment_stripes: config.segment_stripes,
            segments: 0,
            meta_len: 0,
            wb_slots: config.wb_slots,
            logical_blocks: 1,
            reserve: config.reserve_segments,
        };
        if config.chunk < BLOCK
            || !config.chunk.is_multiple_of(BLOCK)
            || config.segment_stripes == 0
        {
            return Err(MediaError::Unrecoverable(
                "lograid: the chunk must be a multiple of 4096, a segment at least one stripe"
                    .into(),
            ));
        }
        // The metadata region is sized for the most this array could
        // ever hold (every member byte a data block), then the segments
        // take the rest.
        let bound_segments = smallest / g.seg_member_bytes().max(1);
        let bound_logical = if config.logical_bytes > 0 {
            config.logical_bytes / BLOCK
        } else {
            bound_segments * g.segment_data()
        };
        g.meta_len = Geometry::meta_len_for(layout, bound_logical, bound_segments.max(1));
        g.segments = smallest.saturating_sub(g.seg_off()) / g.seg_member_bytes();
        g.logical_blocks = if config.logical_bytes > 0 {
            config.logical_bytes / BLOCK
        } else {
            g.max_logical_blocks()
        };
        g.validate()?;
        let present: Vec<Option<Arc<dyn Media>>> = members.iter().cloned().map(Some).collect();
        let regions: Vec<Arc<dyn Media>> =
            meta_members(&g, &present)?.into_iter().flatten().collect();
        let meta_config = ProtectionConfig {
            journal_slots: META_JOURNAL_SLOTS,
            ..ProtectionConfig::new(layout, META_CHUNK)
        };
        let meta: Arc<dyn Media> = Arc::new(ProtectedMedia::create(meta_config, regions)?);
        let mut tm =
            TransactionManager::format(meta, config.cache_blocks.max(16), 0).map_err(meta_error)?;
        let (pmt, seg_tree) = (pmt_info()?, segment_info()?);
        for (slot, info) in [(state::R_PMT, &pmt), (state::R_SEGMENTS, &seg_tree)] {
            let root = btree::empty(&mut tm, info).map_err(meta_error)?;
            tm.set_root(slot, root).map_err(meta_error)?;
        }
        let n = layout.members();
        let mut inner = Inner {
            g: g.clone(),
            members: present,
            failed: vec![false; n],
            failure_unrecorded: false,
            tm,
            pmt,
            seg_tree,
            segs: vec![
                Segment {
                    state: SegState::Free,
                    stripes: 0,
                    live: 0,
                    epoch: 0,
                    sealed_at: 0
                };
                g.segments as usize
            ],
            dirty: BTreeSet::new(),
            free: (1..g.segments).collect(),
            pending_free: Vec::new(),
            open: 0,
            wp: 0,
            next_epoch: 2,
            clock: 0,
            buffer: Vec::new(),
            buffered: HashMap::new(),
            wb_seq: 1,
            wb_current: true,
            cleaning: None,
            counters: Counters::default(),
        };
        inner.segs[0] = Segment {
            state: SegState::Open,
            stripes: 0,
            live: 0,
            epoch: 1,
            sealed_at: 0,
        };
        inner.dirty.insert(0);
        // The labels go last: a member with a label always has metadata.
        inner.commit()?;
        for (i, m) in members.iter().enumerate() {
            m.write_at(0, &g.label(i))?;
            m.flush()?;
        }
        Ok(LogRaid {
            geometry: g,
            inner: Mutex::new(inner),
        })
    }

    /// Opens an array from whatever members are present, in any order,
    /// with a metadata cache of `cache_blocks`. Replays what the last
    /// commit does not cover: the stripes written to the open segment
    /// since, and the newest write-buffer record of the stripe after them.
    pub fn open(members: Vec<Option<Arc<dyn Media>>>, cache_blocks: usize) -> MediaResult<Self> {
        let mut labelled: Vec<(Geometry, usize, Arc<dyn Media>)> = Vec::new();
        for media in members.into_iter().flatten() {
            let mut label = vec![0u8; BLOCK as usize];
            if media.read_at(0, &mut label).is_err() {
                continue;
            }
            if let Ok((g, index)) = Geometry::from_label(&label) {
                labelled.push((g, index, media));
            }
        }
        // The array is the one most members belong to.
        let g = labelled
            .iter()
            .max_by_key(|(g, _, _)| labelled.iter().filter(|(o, _, _)| o == g).count())
            .map(|(g, _, _)| g.clone())
            .ok_or_else(|| MediaError::Unrecoverable("no lograid member found".into()))?;
        let n = g.members();
        let mut slots: Vec<Option<Arc<dyn Media>>> = vec![None; n];
        for (other, index, media) in labelled {
            if other == g && slots[index].is_none() {
                slots[index] = Some(media);
            }
        }
        let meta: Arc<dyn Media> = Arc::new(ProtectedMedia::open(meta_members(&g, &slots)?)?);
        let tm = TransactionManager::open(meta, cache_blocks.max(16)).map_err(meta_error)?;
        let failed = slots.iter().map(Option::is_none).collect();
        let mut inner = Inner {
            g: g.clone(),
            members: slots,
            failed,
            failure_unrecorded: false,
            tm,
            pmt: pmt_info()?,
            seg_tree: segment_info()?,
            segs: vec![
                Segment {
                    state: SegState::Free,
                    stripes: 0,
                    live: 0,
                    epoch: 0,
                    sealed_at: 0
                };
                g.segments as usize
            ],
            dirty: BTreeSet::new(),
            free: VecDeque::new(),
            pending_free: Vec::new(),
            open: 0,
            wp: 0,
            next_epoch: 0,
            clock: 0,
            buffer: Vec::new(),
            buffered: HashMap::new(),
            wb_seq: 1,
            wb_current: true,
            cleaning: None,
            counters: Counters::default(),
        };
        inner.load()?;
        // Members absent now are failed from here on; their absence is in
        // the commit below.
        inner.failure_unrecorded = false;
        recover(&mut inner)?;
        Ok(LogRaid {
            geometry: g,
            inner: Mutex::new(inner),
        })
    }

    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// Logical blocks exported.
    pub fn blocks(&self) -> u64 {
        self.geometry.logical_blocks
    }

    fn check_blocks(&self, lba: u64, count: u64) -> MediaResult<()> {
        check_range(lba, count, self.geometry.logical_blocks).map_err(|_| MediaError::OutOfRange {
            offset: lba * BLOCK,
            len: count * BLOCK,
            size: self.geometry.logical_blocks * BLOCK,
        })
    }

    /// Writes whole blocks at `lba`.
    pub fn write_blocks(&self, lba: u64, data: &[u8]) -> MediaResult<()> {
        if !(data.len() as u64).is_multiple_of(BLOCK) {
            return Err(MediaError::Unrecoverable("partial block write".into()));
        }
        self.check_blocks(lba, data.len() as u64 / BLOCK)?;
        let mut inner = lock(&self.inner);
        let result = data
            .chunks(BLOCK as usize)
            .enumerate()
            .try_for_each(|(i, block)| host_write(&mut inner, lba + i as u64, block.to_vec()));
        let settled = inner.settle();
        result.and(settled)
    }

    /// Reads whole blocks at `lba`.
    pub fn read_blocks(&self, lba: u64, buf: &mut [u8]) -> MediaResult<()> {
        if !(buf.len() as u64).is_multiple_of(BLOCK) {
            return Err(MediaError::Unrecoverable("partial block read".into()));
        }
        self.check_blocks(lba, buf.len() as u64 / BLOCK)?;
        let mut inner = lock(&self.inner);
        let result = buf
            .chunks_mut(BLOCK as usize)
            .enumerate()
            .try_for_each(|(i, out)| {
                let bytes = inner.read_lba(lba + i as u64)?;
                out.copy_from_slice(&bytes);
                Ok(())
            });
        let settled = inner.settle();
        result.and(settled)
    }

    /// Unmaps blocks: they read as zeroes (until a crash before the next
    /// commit, which may bring back what they held: discard is a hint).
    pub fn discard_blocks(&self, lba: u64, count: u64) -> MediaResult<()> {
        self.check_blocks(lba, count)?;
        let mut inner = lock(&self.inner);
        (lba..lba + count).try_for_each(|l| inner.pmt_remove(l))
    }

    /// One step of garbage collection, moving about `budget` blocks; for a
    /// background thread. Returns whether there was anything to do.
    pub fn gc_step(&self, budget: u64) -> MediaResult<bool> {
        let mut inner = lock(&self.inner);
        let result = inner.gc_step(budget);
        let settled = inner.settle();
        let worked = result?;
        settled?;
        Ok(worked)
    }

    /// Commits the metadata now (it is committed at every segment switch
    /// anyway): bounds the stripes the next open rolls forward.
    pub fn commit(&self) -> MediaResult<()> {
        lock(&self.inner).commit()
    }

    /// Fails a member on the operator's word: never read or written again.
    pub fn fail_member(&self, member: usize) -> MediaResult<()> {
        let mut inner = lock(&self.inner);
        if member >= self.geometry.members() {
            return Err(MediaError::Unrecoverable(format!("no member {member}")));
        }
        inner.mark_failed(member);
        inner.settle()
    }

    pub fn stats(&self) -> LogRaidStats {
        let inner = lock(&self.inner);
        let c = inner.counters;
        let free = inner.free.len() as u64;
        let pending = inner.pending_free.len() as u64;
        LogRaidStats {
            host_bytes: c.host_bytes,
            media_bytes: c.media_bytes,
            gc_bytes: c.gc_bytes,
            write_amplification: if c.host_bytes == 0 {
                0.0
            } else {
                c.media_bytes as f64 / c.host_bytes as f64
            },
            segments: self.geometry.segments,
            free_segments: free,
            used_segments: self.geometry.segments - free,
            pending_free_segments: pending,
            reserve_segments: self.geometry.reserve,
            gc: match inner.cleaning {
                None => GcState::Idle,
                Some(c) => GcState::Cleaning {
                    victim: c.victim,
                    stripe: c.stripe,
                },
            },
            segments_cleaned: c.segments_cleaned,
            commits: c.commits,
            wb_records: c.wb_records,
            degraded_reads: c.degraded_reads,
            failed_members: inner.failed.clone(),
        }
    }

    /// Checks the parity of every written stripe (sealed segments and the
    /// open one up to its write position).
    pub fn scrub(&self) -> MediaResult<LogScrubReport> {
        let mut report = LogScrubReport::default();
        let segments = self.geometry.segments;
        for segment in 0..segments {
            let mut inner = lock(&self.inner);
            let seg = inner.segs[segment as usize];
            let stripes = match seg.state {
                SegState::Free => 0,
                SegState::Sealed => seg.stripes,
                SegState::Open => inner.wp,
            };
            for stripe in 0..stripes {
                report.stripes += 1;
                match inner.read_stripe(segment, stripe, true) {
                    Ok(Some(_)) => {}
                    Ok(None) => report.mismatches += 1,
                    Err(_) => report.unreadable += 1,
                }
            }
            inner.settle()?;
        }
        Ok(report)
    }

    /// Where the segments lie on each member (for tests and tools that
    /// check the write pattern): offset, bytes per segment, segments.
    pub fn segment_area(&self) -> (u64, u64, u64) {
        let g = &self.geometry;
        (g.seg_off(), g.seg_member_bytes(), g.segments)
    }

    /// Checks every invariant the state keeps (tests): each segment's live
    /// count equals the PMT entries pointing into it, and every entry
    /// points at a data block of a written stripe.
    pub fn check(&self) -> MediaResult<()> {
        let mut inner = lock(&self.inner);
        let mut live = vec![0u64; self.geometry.segments as usize];
        let mut entries = Vec::new();
        let root = inner.tm.root(state::R_PMT);
        let info = inner.pmt;
        btree::range(&mut inner.tm, &info, root, 0, u64::MAX, &mut |lba, v| {
            let mut loc = [0u8; 8];
            loc.copy_from_slice(&v[..8]);
            entries.push((lba, u64::from_le_bytes(loc)));
            true
        })
        .map_err(meta_error)?;
        for (lba, location) in entries {
            let (segment, stripe, block) = self.geometry.split(location);
            let seg = inner.segs[segment as usize];
            let written = match seg.state {
                SegState::Open => inner.wp,
                SegState::Sealed => seg.stripes,
                SegState::Free => 0,
            };
            if block == 0 || stripe >= written || lba >= self.geometry.logical_blocks {
                return Err(MediaError::Io(format!(
                    "lba {lba} maps to location {location}, not a written data block"
                )));
            }
            live[segment as usize] += 1;
        }
        for (s, count) in live.iter().enumerate() {
            if inner.segs[s].live != *count {
                return Err(MediaError::Io(format!(
                    "segment {s} counts {} live blocks, the PMT {count}",
                    inner.segs[s].live
                )));
            }
        }
        Ok(())
    }
}

/// A host write of one block: helps GC first when free segments run low.
fn host_write(inner: &mut Inner, lba: u64, data: Vec<u8>) -> MediaResult<()> {
    let reserve = inner.g.reserve;
    let stripe = inner.g.stripe_data();
    if inner.free.len() as u64 <= reserve + 1 || inner.cleaning.is_some() {
        // Background-like help: one stripe's worth of moves per write.
        inner.gc_step(stripe)?;
    }
    // At the reserve, writes wait for GC, a bounded number of steps.
    let mut steps = 0;
    while inner.free.len() as u64 <= reserve && steps < 4 * inner.g.segments {
        if !inner.gc_step(stripe)? {
            break;
        }
        steps += 1;
    }
    inner.counters.host_bytes += BLOCK;
    inner.append(lba, data)
}

/// Brings the state of `inner` (just loaded from the last commit) up to
/// every flushed write, then seals the open segment and opens another in
/// one commit, so that nothing written before this open is mistaken for
/// later writes.
fn recover(inner: &mut Inner) -> MediaResult<()> {
    let g = inner.g.clone();
    let open = inner.open;
    let epoch = inner.segs[open as usize].epoch;
    // Roll forward: stripes written after the commit, up to the first one
    // that is not whole (summary, every block's checksum, parity).
    while inner.wp < g.segment_stripes {
        let stripe = inner.wp;
        let Some(bytes) = inner.read_stripe(open, stripe, true)? else {
            break;
        };
        let Some(header) = format::Header::decode(&bytes[..BLOCK as usize], SUMMARY_MAGIC) else {
            break;
        };
        let ours = header.uuid == g.uuid
            && header.epoch == epoch
            && header.segment == open
            && header.stripe == stripe
            && header.entries.len() as u64 <= g.stripe_data();
        let intact = ours
            && header.entries.iter().enumerate().all(|(i, e)| {
                let at = (i + 1) * BLOCK as usize;
                e.lba == NO_LBA || format::block_crc(&bytes[at..at + BLOCK as usize]) == e.crc
            });
        if !intact {
            break;
        }
        for (i, e) in header.entries.iter().enumerate() {
            if e.lba != NO_LBA && e.lba < g.logical_blocks {
                inner.pmt_set(e.lba, g.location(open, stripe, i as u64 + 1), e.crc)?;
            }
        }
        inner.wp += 1;
        inner.clock += 1;
    }
    // The write buffer: a flushed partial stripe goes where it was headed,
    // padded, so that the PMT can point at it like at any stripe.
    if inner.wp < g.segment_stripes {
        if let Some((header, blocks)) = inner.newest_record(inner.wp) {
            for (mut e, data) in header.entries.into_iter().zip(blocks) {
                if e.lba >= g.logical_blocks {
                    e.lba = NO_LBA;
                } else {
                    inner.buffered.insert(e.lba, inner.buffer.len());
                }
                inner.buffer.push((e, data));
            }
            inner.write_stripe()?;
        }
    } else {
        // A record can only be for a stripe inside the segment; still
        // move the sequence past every record seen.
        let _ = inner.newest_record(g.segment_stripes);
    }
    if inner.segs[inner.open as usize].state == SegState::Open && inner.open == open {
        inner.switch_segment()?;
    } else {
        inner.commit()?;
    }
    Ok(())
}

impl Media for LogRaid {
    fn size(&self) -> u64 {
        self.geometry.logical_blocks * BLOCK
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> MediaResult<()> {
        check_range(offset, buf.len() as u64, self.size())?;
        let first = offset / BLOCK;
        let end = (offset + buf.len() as u64).div_ceil(BLOCK);
        let mut blocks = vec![0u8; ((end - first) * BLOCK) as usize];
        self.read_blocks(first, &mut blocks)?;
        let skip = (offset - first * BLOCK) as usize;
        buf.copy_from_slice(&blocks[skip..skip + buf.len()]);
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> MediaResult<()> {
        check_range(offset, data.len() as u64, self.size())?;
        let first = offset / BLOCK;
        let end = (offset + data.len() as u64).div_ceil(BLOCK);
        let skip = (offset - first * BLOCK) as usize;
        if skip == 0 && data.len().is_multiple_of(BLOCK as usize) {
            return self.write_blocks(first, data);
        }
        // Partial blocks are read, patched and written whole.
        let mut blocks = vec![0u8; ((end - first) * BLOCK) as usize];
        self.read_blocks(first, &mut blocks)?;
        blocks[skip..skip + data.len()].copy_from_slice(data);
        self.write_blocks(first, &blocks)
    }

    fn flush(&self) -> MediaResult<()> {
        let mut inner = lock(&self.inner);
        inner.write_record()?;
        inner.flush_members()?;
        inner.settle()
    }

    fn discard(&self, offset: u64, len: u64) -> MediaResult<()> {
        check_range(offset, len, self.size())?;
        // Only whole blocks are unmapped; the rest keeps its bytes.
        let first = offset.div_ceil(BLOCK);
        let end = (offset + len) / BLOCK;
        if end > first {
            self.discard_blocks(first, end - first)?;
        }
        Ok(())
    }
}
