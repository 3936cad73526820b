//! Fault injection: a [`Media`] wrapper whose failures are switched at run
//! time through a shared [`FaultControl`] handle.
//!
//! Protection layers are only as good as their behaviour when members
//! misbehave, so tests (and later dpuemu's control socket) wrap each member
//! in a [`FaultyMedia`] and keep its handle: the member can then fail every
//! I/O, fail a range, disappear, or corrupt data silently. A [`PowerCut`]
//! shared by several wrappers models a crash: after a given number of
//! member writes, later writes and flushes are silently lost, exactly as if
//! the machine had stopped between two of them. A volatile write cache can be turned
//! on as well: writes then only reach the media on flush, and
//! [`FaultControl::crash`] keeps an arbitrary subset of the unflushed ones,
//! each whole or torn into any subset of its 512-byte sectors, the way a
//! drive's cache may lose any of them on power loss.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::media::{Media, MediaError, MediaResult};

/// Which operations a range fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOps {
    Read,
    Write,
    Both,
}

impl FaultOps {
    fn hits(self, write: bool) -> bool {
        match self {
            FaultOps::Read => !write,
            FaultOps::Write => write,
            FaultOps::Both => true,
        }
    }
}

#[derive(Debug, Default)]
struct FaultState {
    fail_all: bool,
    gone: bool,
    error_ranges: Vec<(Range<u64>, FaultOps)>,
    /// Ranges whose next write lands with flipped bits (one shot each).
    corrupt_next_write: Vec<Range<u64>>,
    /// Ranges that read back with flipped bits until cleared.
    corrupt_reads: Vec<Range<u64>>,
    power_cut: Option<Arc<PowerCut>>,
    /// Writes not flushed yet, in order, when the volatile cache is on.
    cache: Option<Vec<(u64, Vec<u8>)>>,
    reads: u64,
    writes: u64,
    injected: u64,
}

/// The run-time switchboard of one [`FaultyMedia`]; clones share it.
#[derive(Debug, Clone, Default)]
pub struct FaultControl {
    state: Arc<Mutex<FaultState>>,
}

/// Counters of what went through a [`FaultyMedia`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultCounters {
    pub reads: u64,
    pub writes: u64,
    /// Operations that an injected fault failed or corrupted.
    pub injected: u64,
}

impl FaultControl {
    fn lock(&self) -> MutexGuard<'_, FaultState> {
        // A panic while holding this lock can only come from a test
        // assertion; the state is plain data, so keep using it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes every operation fail with an I/O error (or stop failing).
    pub fn fail_all(&self, on: bool) {
        self.lock().fail_all = on;
    }

    /// Makes the media vanish: every operation returns `Gone` until
    /// [`FaultControl::reappear`].
    pub fn disappear(&self) {
        self.lock().gone = true;
    }

    pub fn reappear(&self) {
        self.lock().gone = false;
    }

    /// Fails `ops` that touch `range` with an I/O error.
    pub fn error_range(&self, range: Range<u64>, ops: FaultOps) {
        self.lock().error_ranges.push((range, ops));
    }

    /// The next write touching `range` silently stores flipped bits there.
    pub fn corrupt_next_write(&self, range: Range<u64>) {
        self.lock().corrupt_next_write.push(range);
    }

    /// Reads touching `range` silently return flipped bits there.
    pub fn corrupt_reads(&self, range: Range<u64>) {
        self.lock().corrupt_reads.push(range);
    }

    /// Makes this media part of `cut`: its writes count against the cut's
    /// budget and are dropped once the budget is spent.
    pub fn attach_power_cut(&self, cut: Arc<PowerCut>) {
        self.lock().power_cut = Some(cut);
    }

    /// Turns on a volatile write cache: writes are held (and read back)
    /// until a flush, and a [`FaultControl::crash`] may lose them.
    pub fn enable_write_cache(&self) {
        let mut state = self.lock();
        if state.cache.is_none() {
            state.cache = Some(Vec::new());
        }
    }

    /// Power loss for the cache: for each unflushed write (in write order)
    /// `keep` gets the media ranges of the 512-byte sectors the write
    /// touches and answers, sector by sector, which of them reach the media; the rest
    /// are lost. A write can so survive whole, vanish, or be torn into any
    /// subset of its sectors, the way a drive's volatile cache may lose any
    /// of its contents on power loss. The cache is then off again.
    pub fn crash(
        &self,
        inner: &dyn Media,
        keep: &mut dyn FnMut(&[Range<u64>]) -> Vec<bool>,
    ) -> MediaResult<()> {
        let pending = self.lock().cache.take().unwrap_or_default();
        for (offset, data) in pending {
            let pieces = sector_pieces(offset, data.len());
            let kept = keep(&pieces);
            for (range, _) in pieces.iter().zip(&kept).filter(|(_, k)| **k) {
                let at = (range.start - offset) as usize..(range.end - offset) as usize;
                inner.write_at(range.start, &data[at])?;
            }
        }
        Ok(())
    }

    /// Removes every fault (counters are kept).
    pub fn clear(&self) {
        let mut state = self.lock();
        state.fail_all = false;
        state.gone = false;
        state.error_ranges.clear();
        state.corrupt_next_write.clear();
        state.corrupt_reads.clear();
        state.power_cut = None;
    }

    pub fn counters(&self) -> FaultCounters {
        let state = self.lock();
        FaultCounters {
            reads: state.reads,
            writes: state.writes,
            injected: state.injected,
        }
    }
}

/// A crash point shared by several media: the first `budget` writes (over
/// all attached media together) persist, later ones are silently dropped.
#[derive(Debug)]
pub struct PowerCut {
    remaining: AtomicU64,
    attempted: AtomicU64,
}

impl PowerCut {
    /// Power fails after `writes` more member writes.
    pub fn after_writes(writes: u64) -> Arc<Self> {
        Arc::new(PowerCut {
            remaining: AtomicU64::new(writes),
            attempted: AtomicU64::new(0),
        })
    }

    /// A cut that never fires, for counting the writes of an operation.
    pub fn never() -> Arc<Self> {
        Self::after_writes(u64::MAX)
    }

    /// Writes seen so far, persisted or not.
    pub fn attempted(&self) -> u64 {
        self.attempted.load(Ordering::SeqCst)
    }

    /// Whether the power is off: the budget is spent, so no later write or
    /// flush reaches the media.
    pub fn spent(&self) -> bool {
        self.remaining.load(Ordering::SeqCst) == 0
    }

    /// Whether the next write still reaches the media.
    fn admit(&self) -> bool {
        self.attempted.fetch_add(1, Ordering::SeqCst);
        self.remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| r.checked_sub(1))
            .is_ok()
    }
}

/// Sector size of the crash model: the unit a power loss may keep or lose.
pub const CRASH_SECTOR: u64 = 512;

/// The pieces of `offset..offset + len` that fall into distinct
/// [`CRASH_SECTOR`]-aligned sectors of the media.
pub fn sector_pieces(offset: u64, len: usize) -> Vec<Range<u64>> {
    let end = offset + len as u64;
    let mut pieces = Vec::new();
    let mut at = offset;
    while at < end {
        let next = ((at / CRASH_SECTOR) + 1) * CRASH_SECTOR;
        pieces.push(at..next.min(end));
        at = next.min(end);
    }
    pieces
}

/// A seeded chooser for [`FaultControl::crash`]: write by write, a third
/// survive whole, a third are lost and a third are torn into a random
/// subset of their sectors.
pub fn torn_sectors(seed: u64) -> impl FnMut(&[Range<u64>]) -> Vec<bool> {
    let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    move |sectors| match next() % 3 {
        0 => vec![true; sectors.len()],
        1 => vec![false; sectors.len()],
        _ => sectors.iter().map(|_| next() & 1 == 1).collect(),
    }
}

/// A [`Media`] that misbehaves on command.
pub struct FaultyMedia {
    inner: Arc<dyn Media>,
    control: FaultControl,
}

fn overlap(a: &Range<u64>, b: &Range<u64>) -> Option<Range<u64>> {
    let start = a.start.max(b.start);
    let end = a.end.min(b.end);
    (start < end).then_some(start..end)
}

/// Flips every bit of `buf` (which starts at media offset `base`) inside
/// `range`; a flip of all bits guarantees the data really changes.
fn flip(buf: &mut [u8], base: u64, range: &Range<u64>) {
    let end = base + buf.len() as u64;
    if let Some(hit) = overlap(&(base..end), range) {
        for b in &mut buf[(hit.start - base) as usize..(hit.end - base) as usize] {
            *b = !*b;
        }
    }
}

impl FaultyMedia {
    /// Wraps `inner`; the returned handle controls the faults.
    pub fn new(inner: Arc<dyn Media>) -> (Self, FaultControl) {
        let control = FaultControl::default();
        (
            FaultyMedia {
                inner,
                control: control.clone(),
            },
            control,
        )
    }

    /// Fails the operation if a fault says so.
    fn check(&self, state: &mut FaultState, range: &Range<u64>, write: bool) -> MediaResult<()> {
        if state.gone {
            state.injected += 1;
            return Err(MediaError::Gone);
        }
        let ranged = state
            .error_ranges
            .iter()
            .any(|(r, ops)| ops.hits(write) && overlap(r, range).is_some());
        if state.fail_all || ranged {
            state.injected += 1;
            return Err(MediaError::Io(format!(
                "injected {} error at {}..{}",
                if write { "write" } else { "read" },
                range.start,
                range.end
            )));
        }
        Ok(())
    }
}

impl Media for FaultyMedia {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> MediaResult<()> {
        let range = offset..offset.saturating_add(buf.len() as u64);
        let corrupt = {
            let mut state = self.control.lock();
            state.reads += 1;
            self.check(&mut state, &range, false)?;
            state.corrupt_reads.clone()
        };
        self.inner.read_at(offset, buf)?;
        // The cache is read in place (not copied): reads are frequent and
        // the cache of a long crash run holds many writes.
        let state = self.control.lock();
        for (at, data) in state.cache.iter().flatten() {
            let written = *at..*at + data.len() as u64;
            if let Some(hit) = overlap(&written, &range) {
                buf[(hit.start - offset) as usize..(hit.end - offset) as usize]
                    .copy_from_slice(&data[(hit.start - at) as usize..(hit.end - at) as usize]);
            }
        }
        drop(state);
        if corrupt.iter().any(|r| overlap(r, &range).is_some()) {
            self.control.lock().injected += 1;
            for r in &corrupt {
                flip(buf, offset, r);
            }
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> MediaResult<()> {
        let range = offset..offset.saturating_add(data.len() as u64);
        let (corrupt, cut) = {
            let mut state = self.control.lock();
            state.writes += 1;
            self.check(&mut state, &range, true)?;
            let (hit, kept): (Vec<_>, Vec<_>) = state
                .corrupt_next_write
                .drain(..)
                .partition(|r| overlap(r, &range).is_some());
            state.corrupt_next_write = kept;
            if !hit.is_empty() {
                state.injected += 1;
            }
            (hit, state.power_cut.clone())
        };
        if cut.is_some_and(|c| !c.admit()) {
            return Ok(());
        }
        let mut stored = data.to_vec();
        for r in &corrupt {
            flip(&mut stored, offset, r);
        }
        crate::media::check_range(offset, data.len() as u64, self.inner.size())?;
        if let Some(cache) = self.control.lock().cache.as_mut() {
            cache.push((offset, stored));
            return Ok(());
        }
        self.inner.write_at(offset, &stored)
    }

    fn flush(&self) -> MediaResult<()> {
        let mut state = self.control.lock();
        self.check(&mut state, &(0..0), true)?;
        // Once the power is cut, a flush moves nothing: what the volatile
        // cache holds at the cut is what a crash may lose or tear.
        if state.power_cut.as_ref().is_some_and(|c| c.spent()) {
            return Ok(());
        }
        let pending = state.cache.as_mut().map(std::mem::take).unwrap_or_default();
        drop(state);
        for (offset, data) in pending {
            self.inner.write_at(offset, &data)?;
        }
        self.inner.flush()
    }

    fn discard(&self, offset: u64, len: u64) -> MediaResult<()> {
        let range = offset..offset.saturating_add(len);
        let mut state = self.control.lock();
        self.check(&mut state, &range, true)?;
        drop(state);
        self.inner.discard(offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::MemMedia;

    fn faulty() -> (Arc<MemMedia>, FaultyMedia, FaultControl) {
        let mem = Arc::new(MemMedia::new(8192));
        let (media, control) = FaultyMedia::new(mem.clone());
        (mem, media, control)
    }

    #[test]
    fn fail_all_and_gone_fail_every_operation_until_cleared() {
        let (_, media, control) = faulty();
        let mut buf = [0u8; 16];
        control.fail_all(true);
        assert!(matches!(media.read_at(0, &mut buf), Err(MediaError::Io(_))));
        assert!(matches!(media.write_at(0, &buf), Err(MediaError::Io(_))));
        assert!(media.flush().is_err());
        control.fail_all(false);
        control.disappear();
        assert_eq!(media.read_at(0, &mut buf), Err(MediaError::Gone));
        control.clear();
        media.write_at(0, b"0123456789abcdef").unwrap();
        media.read_at(0, &mut buf).unwrap();
        assert_eq!(&buf, b"0123456789abcdef");
        assert_eq!(control.counters().injected, 4);
    }

    #[test]
    fn range_errors_hit_only_their_range_and_ops() {
        let (_, media, control) = faulty();
        control.error_range(1000..1100, FaultOps::Read);
        let mut buf = [0u8; 100];
        assert!(media.read_at(1050, &mut buf).is_err());
        assert!(media.read_at(900, &mut buf).is_ok());
        assert!(media.read_at(1100, &mut buf).is_ok());
        assert!(media.write_at(1000, &buf).is_ok());
    }

    #[test]
    fn corruption_on_write_persists_and_on_read_does_not() {
        let (mem, media, control) = faulty();
        control.corrupt_next_write(10..12);
        media.write_at(8, &[0u8; 8]).unwrap();
        let stored = mem.snapshot();
        assert_eq!(&stored[8..16], &[0, 0, 0xff, 0xff, 0, 0, 0, 0]);
        // One shot: the next write is stored as given.
        media.write_at(8, &[0u8; 8]).unwrap();
        assert_eq!(&mem.snapshot()[8..16], &[0u8; 8]);

        control.corrupt_reads(4096..4097);
        let mut buf = [0u8; 4];
        media.read_at(4095, &mut buf).unwrap();
        assert_eq!(buf, [0, 0xff, 0, 0]);
        assert_eq!(mem.snapshot()[4096], 0);
    }

    #[test]
    fn write_cache_holds_writes_until_flush_and_crash_keeps_a_subset() {
        let (mem, media, control) = faulty();
        control.enable_write_cache();
        media.write_at(0, &[1, 1]).unwrap();
        let mut buf = [0u8; 3];
        media.read_at(0, &mut buf).unwrap();
        assert_eq!(buf, [1, 1, 0]);
        assert_eq!(&mem.snapshot()[..2], &[0, 0]);
        media.flush().unwrap();
        assert_eq!(&mem.snapshot()[..2], &[1, 1]);
        media.write_at(10, &[2]).unwrap();
        media.write_at(11, &[3]).unwrap();
        let mut first = true;
        control
            .crash(mem.as_ref(), &mut |s| {
                vec![std::mem::replace(&mut first, false); s.len()]
            })
            .unwrap();
        assert_eq!(&mem.snapshot()[10..12], &[2, 0]);
    }

    #[test]
    fn crash_tears_a_write_into_any_subset_of_its_sectors() {
        let (mem, media, control) = faulty();
        control.enable_write_cache();
        // 100..1636 touches sectors 0, 1, 2 and 3 (partly the first and last).
        media.write_at(100, &[9u8; 1536]).unwrap();
        let mut seen = Vec::new();
        control
            .crash(mem.as_ref(), &mut |s| {
                seen.push(s.to_vec());
                vec![true, false, false, true]
            })
            .unwrap();
        assert_eq!(seen, [vec![100..512, 512..1024, 1024..1536, 1536..1636]]);
        let image = mem.snapshot();
        assert!(image[..100].iter().all(|&b| b == 0));
        assert!(image[100..512].iter().all(|&b| b == 9));
        assert!(image[512..1536].iter().all(|&b| b == 0));
        assert!(image[1536..1636].iter().all(|&b| b == 9));
        assert!(image[1636..].iter().all(|&b| b == 0));
    }

    #[test]
    fn sector_pieces_split_at_absolute_sector_boundaries() {
        assert_eq!(sector_pieces(0, 1024), vec![0..512, 512..1024]);
        assert_eq!(sector_pieces(510, 4), vec![510..512, 512..514]);
        assert_eq!(sector_pieces(7, 3), vec![7..10]);
        assert!(sector_pieces(7, 0).is_empty());
        // Whole, lost and torn writes all show up, and masks have the
        // asked length.
        let mut modes = std::collections::BTreeSet::new();
        let mut keep = torn_sectors(5);
        for _ in 0..64 {
            let mask = keep(&sector_pieces(0, 4096));
            assert_eq!(mask.len(), 8);
            modes.insert(match mask.iter().filter(|k| **k).count() {
                0 => 0,
                8 => 2,
                _ => 1,
            });
        }
        assert_eq!(modes.len(), 3, "{modes:?}");
    }

    #[test]
    fn power_cut_drops_writes_after_the_budget_across_media() {
        let a = Arc::new(MemMedia::new(64));
        let b = Arc::new(MemMedia::new(64));
        let (fa, ca) = FaultyMedia::new(a.clone());
        let (fb, cb) = FaultyMedia::new(b.clone());
        let cut = PowerCut::after_writes(2);
        ca.attach_power_cut(cut.clone());
        cb.attach_power_cut(cut.clone());
        fa.write_at(0, &[1]).unwrap();
        fb.write_at(0, &[2]).unwrap();
        fa.write_at(1, &[3]).unwrap();
        fb.write_at(1, &[4]).unwrap();
        assert_eq!(&a.snapshot()[..2], &[1, 0]);
        assert_eq!(&b.snapshot()[..2], &[2, 0]);
        assert_eq!(cut.attempted(), 4);
    }

    #[test]
    fn flushes_after_the_cut_leave_the_cache_to_the_crash() {
        let mem = Arc::new(MemMedia::new(64));
        let (media, control) = FaultyMedia::new(mem.clone());
        control.enable_write_cache();
        control.attach_power_cut(PowerCut::after_writes(2));
        media.write_at(0, &[1]).unwrap();
        media.flush().unwrap();
        media.write_at(1, &[2]).unwrap();
        // The power is off from here: neither this write nor the flush
        // reaches the media, and the write before them is still volatile.
        media.write_at(2, &[3]).unwrap();
        media.flush().unwrap();
        assert_eq!(&mem.snapshot()[..3], &[1, 0, 0]);
        control
            .crash(mem.as_ref(), &mut |s| vec![false; s.len()])
            .unwrap();
        assert_eq!(&mem.snapshot()[..3], &[1, 0, 0]);
    }
}
