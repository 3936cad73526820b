//! Power-loss simulation: a volatile write cache in front of an SSD image.
//!
//! With `--power-loss-sim SEED` every SSD image sits behind a
//! [`VolatileNamespace`]. Writes, write zeroes and deallocates land in an
//! in-memory layer that stands for the drive's volatile write cache and the
//! host's page cache together; reads see it. Only [`Namespace::flush`] (an
//! NVMe Flush, a FUA write, the engine's own commits) moves the layer into
//! the image file and then fdatasyncs it.
//!
//! A crash (SIGUSR2, see `main.rs`) tears every layer: a seeded random
//! subset of its 512-byte sectors is written to the image, the rest is
//! dropped, and the process exits without flushing. That is what a power
//! cut leaves of the writes no completed flush covered, and `kill -9` alone
//! cannot show it: the host's page cache keeps every `pwrite` of a killed
//! process.
//!
//! The layer keeps one entry per sector: the newest content written to it.
//! A torn sector therefore holds either that newest content or whatever the
//! image held at the last flush; never a mix inside one sector.

use std::collections::BTreeMap;
use std::io;
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

use log::debug;

use crate::namespace::Namespace;

/// The unit a power cut tears at.
pub const SECTOR: u64 = 512;
const SECTOR_BYTES: usize = SECTOR as usize;

/// Zero and deallocate ranges longer than this bypass the layer: the drive
/// executes them at once (persisting more than was flushed is always
/// allowed), so a discard of a whole SSD does not cost an entry per sector.
const BYPASS_SECTORS: u64 = (16 << 20) / SECTOR;

/// Default bound of the layer: past it, the drive destages its whole cache
/// to the image (without fdatasync), as a full write cache does.
pub const DEFAULT_LIMIT_SECTORS: usize = (128 << 20) / SECTOR_BYTES;

/// What a sector of the layer holds.
enum Pending {
    Data(Box<[u8; SECTOR_BYTES]>),
    /// Write Zeroes.
    Zero,
    /// Deallocate (reads back as zeroes, punched on the image).
    Hole,
}

impl Pending {
    fn copy_to(&self, out: &mut [u8], from: usize) {
        let len = out.len();
        match self {
            Pending::Data(data) => out.copy_from_slice(&data[from..from + len]),
            Pending::Zero | Pending::Hole => out.fill(0),
        }
    }

    fn same_kind(&self, other: &Pending) -> bool {
        matches!(
            (self, other),
            (Pending::Data(_), Pending::Data(_))
                | (Pending::Zero, Pending::Zero)
                | (Pending::Hole, Pending::Hole)
        )
    }
}

struct Layer {
    /// Sector number → newest unflushed content.
    sectors: BTreeMap<u64, Pending>,
    /// Something reached the image since its last fdatasync.
    unsynced: bool,
    /// Torn by a crash: nothing may touch the image any more.
    crashed: bool,
}

impl Layer {
    /// The power goes: no later call reaches the image, and the unflushed
    /// sectors are handed over to be torn.
    fn power_off(&mut self) -> BTreeMap<u64, Pending> {
        self.crashed = true;
        std::mem::take(&mut self.sectors)
    }
}

/// What a crash did to one layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TearReport {
    /// Unflushed sectors the layer held.
    pub pending: usize,
    /// Sectors written to the image.
    pub written: usize,
    /// Keep probability used, in thousandths.
    pub keep_permille: u32,
    /// Sector ranges written, `(first, count)`.
    pub written_ranges: Vec<(u64, u64)>,
}

/// A namespace whose unflushed writes a crash can lose or tear.
pub struct VolatileNamespace {
    name: String,
    inner: Box<dyn Namespace>,
    limit_sectors: usize,
    layer: Mutex<Layer>,
}

fn crashed_error() -> io::Error {
    io::Error::other("power lost: the emulated drive is gone")
}

/// A small seeded generator (SplitMix64): tear decisions must be
/// reproducible from the seed the campaign logs.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0); the bias of the modulo is irrelevant here.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

impl VolatileNamespace {
    /// Puts a volatile layer of at most `limit_sectors` sectors in front of
    /// `inner`; `name` labels the crash report.
    pub fn new(name: &str, inner: Box<dyn Namespace>, limit_sectors: usize) -> Self {
        Self {
            name: name.to_string(),
            inner,
            limit_sectors: limit_sectors.max(1),
            layer: Mutex::new(Layer {
                sectors: BTreeMap::new(),
                unsynced: false,
                crashed: false,
            }),
        }
    }

    fn lock(&self) -> io::Result<MutexGuard<'_, Layer>> {
        // A worker that panicked while holding the lock left the map in a
        // consistent state (every update is a single insert or remove).
        let layer = self.layer.lock().unwrap_or_else(|p| p.into_inner());
        if layer.crashed {
            return Err(crashed_error());
        }
        Ok(layer)
    }

    /// Unflushed sectors held now.
    pub fn pending_sectors(&self) -> usize {
        self.layer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sectors
            .len()
    }

    /// The current content of sector `sector` (layer first, then image).
    fn sector_content(&self, layer: &Layer, sector: u64) -> io::Result<Box<[u8; SECTOR_BYTES]>> {
        let mut data = Box::new([0u8; SECTOR_BYTES]);
        match layer.sectors.get(&sector) {
            Some(pending) => pending.copy_to(&mut data[..], 0),
            None => self.inner.read_at(sector * SECTOR, &mut data[..])?,
        }
        Ok(data)
    }

    /// Writes every entry of the layer to the image and empties the layer.
    fn write_back(&self, layer: &mut Layer) -> io::Result<()> {
        let entries: Vec<(u64, Pending)> = std::mem::take(&mut layer.sectors).into_iter().collect();
        if entries.is_empty() {
            return Ok(());
        }
        layer.unsynced = true;
        self.write_entries(&entries)
    }

    /// Writes sorted entries to the image, one call per run of adjacent
    /// sectors of one kind.
    fn write_entries(&self, entries: &[(u64, Pending)]) -> io::Result<()> {
        let mut start = 0;
        while start < entries.len() {
            let mut end = start + 1;
            while end < entries.len()
                && entries[end].0 == entries[end - 1].0 + 1
                && entries[end].1.same_kind(&entries[start].1)
            {
                end += 1;
            }
            self.write_run(&entries[start..end])?;
            start = end;
        }
        Ok(())
    }

    /// Writes adjacent sectors of one kind to the image.
    fn write_run(&self, run: &[(u64, Pending)]) -> io::Result<()> {
        let Some((first, kind)) = run.first() else {
            return Ok(());
        };
        let offset = first * SECTOR;
        let len = run.len() as u64 * SECTOR;
        match kind {
            Pending::Data(_) => {
                let mut buf = Vec::with_capacity(run.len() * SECTOR_BYTES);
                for (_, pending) in run {
                    if let Pending::Data(data) = pending {
                        buf.extend_from_slice(&data[..]);
                    }
                }
                self.inner.write_at(offset, &buf)
            }
            Pending::Zero => self.inner.write_zeroes(offset, len),
            Pending::Hole => self.inner.deallocate(offset, len),
        }
    }

    /// Puts `pending` in the layer for sector `sector`.
    fn stage(&self, layer: &mut Layer, sector: u64, pending: Pending) {
        layer.sectors.insert(sector, pending);
    }

    /// Destages the whole layer when it grew past its bound.
    fn enforce_limit(&self, layer: &mut Layer) -> io::Result<()> {
        if layer.sectors.len() > self.limit_sectors {
            debug!(
                "{}: write cache full ({} sectors), destaged to the image",
                self.name,
                layer.sectors.len()
            );
            self.write_back(layer)?;
        }
        Ok(())
    }

    /// Zeroes or deallocates `offset..offset + len` in the layer.
    fn stage_zeroes(&self, offset: u64, len: u64, hole: bool) -> io::Result<()> {
        let mut layer = self.lock()?;
        let end = offset + len;
        let first = offset / SECTOR;
        let last = end.div_ceil(SECTOR);
        // Whole sectors inside the range.
        let whole_first = offset.div_ceil(SECTOR);
        let whole_last = end / SECTOR;
        if whole_last > whole_first && whole_last - whole_first > BYPASS_SECTORS {
            // Executed at once: the entries it covers are superseded.
            let covered: Vec<u64> = layer
                .sectors
                .range(whole_first..whole_last)
                .map(|(s, _)| *s)
                .collect();
            for sector in covered {
                layer.sectors.remove(&sector);
            }
            layer.unsynced = true;
            let (at, n) = (whole_first * SECTOR, (whole_last - whole_first) * SECTOR);
            if hole {
                self.inner.deallocate(at, n)?;
            } else {
                self.inner.write_zeroes(at, n)?;
            }
            // Partial sectors at either end go through the layer.
            drop(layer);
            if offset < at {
                self.stage_zeroes(offset, at - offset, hole)?;
            }
            if at + n < end {
                self.stage_zeroes(at + n, end - (at + n), hole)?;
            }
            return Ok(());
        }
        for sector in first..last {
            let start = sector * SECTOR;
            if start >= offset && start + SECTOR <= end {
                let pending = if hole { Pending::Hole } else { Pending::Zero };
                self.stage(&mut layer, sector, pending);
            } else {
                // A partial sector keeps its other bytes.
                let mut data = self.sector_content(&layer, sector)?;
                let from = offset.max(start) - start;
                let to = end.min(start + SECTOR) - start;
                data[from as usize..to as usize].fill(0);
                self.stage(&mut layer, sector, Pending::Data(data));
            }
        }
        self.enforce_limit(&mut layer)
    }

    /// The crash of this layer alone: it stops taking commands and its
    /// pending sectors are torn (see [`VolatileNamespace::write_torn`]).
    /// A power cut of several drives goes through [`crash`], which stops
    /// them all at once; this one is the tests' single-drive cut.
    #[cfg(test)]
    pub fn tear(&self, rng: &mut SplitMix64, keep_permille: u32) -> io::Result<TearReport> {
        let sectors = self
            .layer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .power_off();
        self.write_torn(sectors, rng, keep_permille)
    }

    /// Writes the survivors of a stopped layer's cache to the image: each
    /// pending sector with probability `keep_permille` / 1000, decided by
    /// `rng`. Every later call on the layer fails, so nothing else reaches
    /// the image afterwards.
    fn write_torn(
        &self,
        sectors: BTreeMap<u64, Pending>,
        rng: &mut SplitMix64,
        keep_permille: u32,
    ) -> io::Result<TearReport> {
        let pending = sectors.len();
        let mut kept: Vec<(u64, Pending)> = Vec::new();
        for (sector, content) in sectors {
            if rng.below(1000) < u64::from(keep_permille) {
                kept.push((sector, content));
            }
        }
        self.write_entries(&kept)?;
        let mut written_ranges: Vec<(u64, u64)> = Vec::new();
        for (sector, _) in &kept {
            match written_ranges.last_mut() {
                Some((first, count)) if *first + *count == *sector => *count += 1,
                _ => written_ranges.push((*sector, 1)),
            }
        }
        Ok(TearReport {
            pending,
            written: kept.len(),
            keep_permille,
            written_ranges,
        })
    }
}

impl Namespace for VolatileNamespace {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn used(&self) -> u64 {
        self.inner.used()
    }

    fn is_volume(&self) -> bool {
        self.inner.is_volume()
    }

    fn lba_shift(&self) -> u8 {
        self.inner.lba_shift()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let layer = self.lock()?;
        self.inner.read_at(offset, buf)?;
        let end = offset + buf.len() as u64;
        let first = offset / SECTOR;
        let last = end.div_ceil(SECTOR);
        let range = (Bound::Included(first), Bound::Excluded(last));
        for (sector, pending) in layer.sectors.range(range) {
            let start = sector * SECTOR;
            let from = offset.max(start);
            let to = end.min(start + SECTOR);
            let out = &mut buf[(from - offset) as usize..(to - offset) as usize];
            pending.copy_to(out, (from - start) as usize);
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut layer = self.lock()?;
        let end = offset + data.len() as u64;
        let first = offset / SECTOR;
        let last = end.div_ceil(SECTOR);
        for sector in first..last {
            let start = sector * SECTOR;
            let from = offset.max(start);
            let to = end.min(start + SECTOR);
            let src = &data[(from - offset) as usize..(to - offset) as usize];
            let content = if to - from == SECTOR {
                let mut whole = Box::new([0u8; SECTOR_BYTES]);
                whole.copy_from_slice(src);
                whole
            } else {
                // A partial sector: read-modify-write of its current content.
                let mut merged = self.sector_content(&layer, sector)?;
                merged[(from - start) as usize..(to - start) as usize].copy_from_slice(src);
                merged
            };
            self.stage(&mut layer, sector, Pending::Data(content));
        }
        self.enforce_limit(&mut layer)
    }

    fn flush(&self) -> io::Result<()> {
        let mut layer = self.lock()?;
        self.write_back(&mut layer)?;
        if layer.unsynced {
            // The lock stays held: a crash cannot tear between the write
            // back and the fdatasync that makes it stable.
            self.inner.flush()?;
            layer.unsynced = false;
        }
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.stage_zeroes(offset, len, false)
    }

    fn deallocate(&self, offset: u64, len: u64) -> io::Result<()> {
        self.stage_zeroes(offset, len, true)
    }
}

/// What a power cut did to all the layers.
pub struct CrashReport {
    /// Unflushed sectors that reached the images.
    pub written: usize,
    /// Unflushed sectors lost.
    pub dropped: usize,
    /// One line per layer, then one line per layer listing the sector
    /// ranges written (`first+count ...`), for the log and the report file.
    pub lines: Vec<String>,
}

/// The power cut: tears every layer with a generator seeded from `seed` and
/// the layer's position. The caller logs the report and exits at once.
pub fn crash(layers: &[std::sync::Arc<VolatileNamespace>], seed: u64) -> CrashReport {
    let mut out = CrashReport {
        written: 0,
        dropped: 0,
        lines: Vec::new(),
    };
    // Every drive loses power at the same instant: all layers stop taking
    // commands before any is torn. Stopping them one by one would let the
    // engine see the first drive fail and record that on a second one
    // that is still powered (a superblock marking a member failed, written
    // and flushed after the cut), which no real power cut can do.
    let caches: Vec<BTreeMap<u64, Pending>> = {
        let mut stopped: Vec<MutexGuard<'_, Layer>> = layers
            .iter()
            .map(|layer| layer.layer.lock().unwrap_or_else(|p| p.into_inner()))
            .collect();
        stopped.iter_mut().map(|layer| layer.power_off()).collect()
    };
    for (i, (layer, sectors)) in layers.iter().zip(caches).enumerate() {
        let mut rng = SplitMix64::new(seed ^ (i as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
        // Each crash picks how much of the cache made it out: from nothing
        // to everything, so both extremes and the torn middle occur.
        let keep_permille = match rng.below(8) {
            0 => 0,
            1 => 1000,
            _ => rng.below(1001) as u32,
        };
        match layer.write_torn(sectors, &mut rng, keep_permille) {
            Ok(report) => {
                out.written += report.written;
                out.dropped += report.pending - report.written;
                out.lines.push(format!(
                    "power loss: {}: {} of {} unflushed sectors written, {} dropped (keep {}/1000)",
                    layer.name,
                    report.written,
                    report.pending,
                    report.pending - report.written,
                    report.keep_permille
                ));
                if !report.written_ranges.is_empty() {
                    let ranges: Vec<String> = report
                        .written_ranges
                        .iter()
                        .map(|(first, count)| format!("{first}+{count}"))
                        .collect();
                    out.lines.push(format!(
                        "power loss: {}: written sectors {}",
                        layer.name,
                        ranges.join(" ")
                    ));
                }
            }
            Err(e) => out
                .lines
                .push(format!("power loss: {}: tearing failed: {e}", layer.name)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::namespace::FileNamespace;
    use std::os::unix::fs::FileExt;
    use std::path::PathBuf;

    /// A scratch image and a layer over it; the directory goes with drop.
    struct Scratch {
        dir: PathBuf,
        path: PathBuf,
    }

    impl Scratch {
        fn new(tag: &str, size: u64) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("dpuemu-power-loss-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("img");
            let _ = std::fs::remove_file(&path);
            FileNamespace::open(&path, Some(size)).unwrap();
            Self { dir, path }
        }

        fn layer(&self, limit: usize) -> VolatileNamespace {
            let inner = FileNamespace::open(&self.path, None).unwrap();
            VolatileNamespace::new("test", Box::new(inner), limit)
        }

        /// The image as a fresh process would see it.
        fn on_media(&self, offset: u64, len: usize) -> Vec<u8> {
            let file = std::fs::File::open(&self.path).unwrap();
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, offset).unwrap();
            buf
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn pattern(tag: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| tag ^ (i as u8).wrapping_mul(7)).collect()
    }

    #[test]
    fn reads_see_unflushed_writes_and_flush_persists_them() {
        let s = Scratch::new("flush", 1 << 20);
        let ns = s.layer(DEFAULT_LIMIT_SECTORS);
        let data = pattern(0x5a, 8192);
        ns.write_at(4096, &data).unwrap();
        let mut back = vec![0u8; 8192];
        ns.read_at(4096, &mut back).unwrap();
        assert_eq!(back, data, "reads see the layer");
        assert!(
            s.on_media(4096, 8192).iter().all(|&b| b == 0),
            "not on media before a flush"
        );
        assert_eq!(ns.pending_sectors(), 16);
        ns.flush().unwrap();
        assert_eq!(ns.pending_sectors(), 0);
        assert_eq!(s.on_media(4096, 8192), data, "on media after a flush");
        ns.read_at(4096, &mut back).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn unaligned_writes_and_zeroes_merge_with_the_sector() {
        let s = Scratch::new("unaligned", 1 << 20);
        let ns = s.layer(DEFAULT_LIMIT_SECTORS);
        ns.write_at(0, &pattern(1, 2048)).unwrap();
        ns.flush().unwrap();
        // Bytes 100..700 straddle sectors 0 and 1.
        ns.write_at(100, &[0xee; 600]).unwrap();
        let mut expect = pattern(1, 2048);
        expect[100..700].fill(0xee);
        let mut back = vec![0u8; 2048];
        ns.read_at(0, &mut back).unwrap();
        assert_eq!(back, expect);
        ns.write_zeroes(1000, 100).unwrap();
        expect[1000..1100].fill(0);
        ns.deallocate(1536, 512).unwrap();
        expect[1536..2048].fill(0);
        ns.read_at(0, &mut back).unwrap();
        assert_eq!(back, expect);
        // An unaligned read inside one sector.
        let mut small = [0u8; 10];
        ns.read_at(695, &mut small).unwrap();
        assert_eq!(&small[..], &expect[695..705]);
        assert_eq!(
            s.on_media(0, 2048),
            pattern(1, 2048),
            "nothing new on media yet"
        );
        ns.flush().unwrap();
        assert_eq!(s.on_media(0, 2048), expect);
    }

    #[test]
    fn crash_keeps_flushed_data_and_a_subset_of_unflushed_sectors() {
        let s = Scratch::new("crash", 4 << 20);
        let ns = s.layer(DEFAULT_LIMIT_SECTORS);
        let flushed = pattern(0x11, 256 << 10);
        ns.write_at(0, &flushed).unwrap();
        ns.flush().unwrap();
        // Unflushed: overwrite half the flushed range and write fresh space.
        let old_half = pattern(0x22, 128 << 10);
        let fresh = pattern(0x33, 512 << 10);
        ns.write_at(128 << 10, &old_half).unwrap();
        ns.write_at(1 << 20, &fresh).unwrap();
        ns.write_zeroes(2 << 20, 64 << 10).unwrap();
        let pending = ns.pending_sectors();
        assert_eq!(pending, (128 + 512 + 64) * 2);
        let mut rng = SplitMix64::new(42);
        let report = ns.tear(&mut rng, 500).unwrap();
        assert_eq!(report.pending, pending);
        assert!(
            report.written > pending / 4 && report.written < pending * 3 / 4,
            "about half kept: {} of {pending}",
            report.written
        );
        let listed: u64 = report.written_ranges.iter().map(|(_, n)| n).sum();
        assert_eq!(listed as usize, report.written);
        // Every later call fails: the drive is gone.
        let mut buf = [0u8; 512];
        assert!(ns.read_at(0, &mut buf).is_err());
        assert!(ns.write_at(0, &buf).is_err());
        assert!(ns.flush().is_err());

        // The untouched flushed half is intact; every other sector is
        // either what was on media or the unflushed content, all of it,
        // and the sectors that changed are exactly the ones reported.
        let media = s.on_media(0, 3 << 20);
        assert_eq!(&media[..128 << 10], &flushed[..128 << 10]);
        let written: std::collections::BTreeSet<u64> = report
            .written_ranges
            .iter()
            .flat_map(|&(first, n)| first..first + n)
            .collect();
        let mut changed = 0;
        let mut check = |at: usize, old: &[u8], new: &[u8]| {
            for (i, (o, n)) in old.chunks(512).zip(new.chunks(512)).enumerate() {
                let offset = at + i * 512;
                let got = &media[offset..offset + 512];
                let sector = (offset / 512) as u64;
                if written.contains(&sector) {
                    assert_eq!(got, n, "sector {sector}: reported written");
                    changed += 1;
                } else {
                    assert_eq!(got, o, "sector {sector}: dropped");
                }
            }
        };
        check(128 << 10, &flushed[128 << 10..], &old_half);
        check(1 << 20, &[0u8; 512 << 10], &fresh);
        // The zeroed range was zero on media already; the rest of the
        // written sectors are the ones checked above.
        let zero_range = (2 << 20) / 512..(2 << 20) / 512 + 128;
        let zeroed = written.iter().filter(|s| zero_range.contains(*s)).count();
        assert_eq!(changed + zeroed, report.written);
    }

    #[test]
    fn crash_extremes_keep_nothing_or_everything() {
        let s = Scratch::new("extremes", 1 << 20);
        let ns = s.layer(DEFAULT_LIMIT_SECTORS);
        ns.write_at(0, &pattern(7, 64 << 10)).unwrap();
        let report = ns.tear(&mut SplitMix64::new(1), 0).unwrap();
        assert_eq!((report.pending, report.written), (128, 0));
        assert!(s.on_media(0, 64 << 10).iter().all(|&b| b == 0));

        let s = Scratch::new("extremes-all", 1 << 20);
        let ns = s.layer(DEFAULT_LIMIT_SECTORS);
        ns.write_at(0, &pattern(7, 64 << 10)).unwrap();
        let report = ns.tear(&mut SplitMix64::new(1), 1000).unwrap();
        assert_eq!((report.pending, report.written), (128, 128));
        assert_eq!(report.written_ranges, vec![(0, 128)]);
        assert_eq!(s.on_media(0, 64 << 10), pattern(7, 64 << 10));
    }

    #[test]
    fn the_same_seed_tears_the_same_way() {
        let tear = |seed| {
            let s = Scratch::new(&format!("seed-{seed}"), 1 << 20);
            let ns = s.layer(DEFAULT_LIMIT_SECTORS);
            ns.write_at(0, &pattern(9, 256 << 10)).unwrap();
            ns.tear(&mut SplitMix64::new(seed), 300).unwrap()
        };
        assert_eq!(tear(5), tear(5));
        assert_ne!(tear(5).written_ranges, tear(6).written_ranges);
    }

    #[test]
    fn crash_reports_every_layer_and_adds_up() {
        let a = Scratch::new("report-a", 1 << 20);
        let b = Scratch::new("report-b", 1 << 20);
        let layers = vec![
            std::sync::Arc::new(a.layer(DEFAULT_LIMIT_SECTORS)),
            std::sync::Arc::new(b.layer(DEFAULT_LIMIT_SECTORS)),
        ];
        layers[0].write_at(0, &pattern(1, 64 << 10)).unwrap();
        layers[1].write_at(8192, &pattern(2, 32 << 10)).unwrap();
        let report = crash(&layers, 99);
        assert_eq!(report.written + report.dropped, 128 + 64);
        let summaries: Vec<&String> = report
            .lines
            .iter()
            .filter(|l| l.contains("unflushed sectors written"))
            .collect();
        assert_eq!(summaries.len(), 2, "{:?}", report.lines);
        assert!(
            layers.iter().all(|l| l.flush().is_err()),
            "the drives are gone"
        );
        // The same seed on the same content tears the same way.
        let c = Scratch::new("report-c", 1 << 20);
        let d = Scratch::new("report-d", 1 << 20);
        let again = vec![
            std::sync::Arc::new(c.layer(DEFAULT_LIMIT_SECTORS)),
            std::sync::Arc::new(d.layer(DEFAULT_LIMIT_SECTORS)),
        ];
        again[0].write_at(0, &pattern(1, 64 << 10)).unwrap();
        again[1].write_at(8192, &pattern(2, 32 << 10)).unwrap();
        assert_eq!(crash(&again, 99).lines, report.lines);
    }

    #[test]
    fn a_power_cut_stops_every_drive_before_any_is_torn() {
        // The engine answers a failed drive by recording the failure on
        // the others. A cut that stopped drives one by one let that record
        // reach a drive still powered, and a stripe over the two never
        // opened again (power-loss campaign, seed 812595268).
        use std::sync::atomic::{AtomicBool, Ordering};
        let a = Scratch::new("atomic-a", 32 << 20);
        let b = Scratch::new("atomic-b", 1 << 20);
        let layers = vec![
            std::sync::Arc::new(a.layer(DEFAULT_LIMIT_SECTORS)),
            std::sync::Arc::new(b.layer(DEFAULT_LIMIT_SECTORS)),
        ];
        // A large cache on the first drive makes its tear take a while.
        layers[0].write_at(0, &pattern(4, 16 << 20)).unwrap();
        let watching = AtomicBool::new(false);
        let recorded_after_cut = std::thread::scope(|scope| {
            let watcher = scope.spawn(|| {
                let mut probe = [0u8; 512];
                watching.store(true, Ordering::SeqCst);
                while layers[0].read_at(0, &mut probe).is_ok() {
                    std::hint::spin_loop();
                }
                // The first drive is gone: record it on the second.
                layers[1]
                    .write_at(0, &[0xfa; 512])
                    .and_then(|()| layers[1].flush())
                    .is_ok()
            });
            while !watching.load(Ordering::SeqCst) {
                std::hint::spin_loop();
            }
            crash(&layers, 7);
            watcher.join().unwrap()
        });
        assert!(!recorded_after_cut, "a drive took a write after the cut");
        assert_eq!(b.on_media(0, 512), vec![0u8; 512], "nothing reached it");
    }

    #[test]
    fn a_full_cache_destages_and_large_zero_ranges_bypass() {
        let s = Scratch::new("limit", 64 << 20);
        let ns = s.layer(64);
        ns.write_at(0, &pattern(3, 32 << 10)).unwrap();
        assert_eq!(ns.pending_sectors(), 64);
        ns.write_at(32 << 10, &[1u8; 512]).unwrap();
        assert_eq!(ns.pending_sectors(), 0, "destaged past the bound");
        assert_eq!(s.on_media(0, 32 << 10), pattern(3, 32 << 10));

        let ns = s.layer(DEFAULT_LIMIT_SECTORS);
        ns.write_at(0, &pattern(4, 4096)).unwrap();
        ns.write_at(40 << 20, &pattern(5, 4096)).unwrap();
        ns.deallocate(0, 32 << 20).unwrap();
        assert_eq!(ns.pending_sectors(), 8, "covered entries superseded");
        let mut back = vec![0xffu8; 4096];
        ns.read_at(0, &mut back).unwrap();
        assert!(back.iter().all(|&b| b == 0));
        ns.read_at(40 << 20, &mut back).unwrap();
        assert_eq!(back, pattern(5, 4096));
    }
}
