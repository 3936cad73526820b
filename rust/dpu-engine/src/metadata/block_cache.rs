//! A bounded cache of checksummed metadata blocks.
//!
//! Every metadata block is [`META_BLOCK`] bytes: a 4-byte type magic (the
//! owner's), a CRC32C, the block's own number, then the owner's bytes. The
//! checksum covers everything but itself, so a torn, misdirected or stale
//! block fails [`verify`] instead of being parsed.
//!
//! The cache holds at most its capacity in blocks. Reads fill it, and the
//! least recently used *clean* block leaves it first: a dirty block stays
//! until a commit takes it ([`BlockCache::take_dirty`]) or writes it
//! ([`BlockCache::write_back`]), and is written back when it leaves only
//! if nothing clean is left to evict (a transaction that dirtied more than
//! the whole cache). The pool commits a transaction long before it dirties
//! half the cache, so evictions never write and the pool lock, under which
//! blocks are read and dirtied, is never held across a media write.
//! Writing a dirty block early is safe anyway because the transaction
//! manager only ever dirties blocks allocated in the running transaction,
//! which nothing durable refers to.
//!
//! A commit written outside the pool lock takes its dirty blocks with
//! [`BlockCache::take_dirty`]: they stay readable from the *in-flight*
//! set, even if evicted, until [`BlockCache::end_in_flight`] says they are
//! on the media.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::{le_u32, le_u64, BlockMap, MetaError, MetaResult, META_BLOCK};
use crate::media::Media;

/// The owner's bytes start here; bytes 0..4 are the owner's type magic.
pub const BLOCK_HEADER: usize = 16;
const CRC: std::ops::Range<usize> = 4..8;
const LOCATION: std::ops::Range<usize> = 8..16;
/// The smallest useful cache: a B-tree path, a space map path and their
/// shadows must fit at once.
pub const MIN_CAPACITY: usize = 16;

/// A block's bytes, shared between the cache and its readers.
pub type Block = Arc<Vec<u8>>;

fn checksum(data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&data[..CRC.start]), &data[CRC.end..])
}

/// Stamps `data` as block `number`: its location and checksum.
pub fn seal(number: u64, data: &mut [u8]) {
    data[LOCATION].copy_from_slice(&number.to_le_bytes());
    let crc = checksum(data);
    data[CRC].copy_from_slice(&crc.to_le_bytes());
}

/// Checks that `data` is an intact block `number` of type `magic`.
pub fn verify(number: u64, data: &[u8], magic: u32) -> MetaResult<()> {
    if data.len() != META_BLOCK {
        return Err(MetaError::Corrupt(format!("block {number}: wrong size")));
    }
    if le_u32(data, CRC.start) != checksum(data) {
        return Err(MetaError::Corrupt(format!("block {number}: bad checksum")));
    }
    let location = le_u64(data, LOCATION.start);
    if location != number {
        return Err(MetaError::Corrupt(format!(
            "block {number}: holds block {location}"
        )));
    }
    verify_type(number, data, magic)
}

/// What went through the cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    /// Blocks read from the media.
    pub reads: u64,
    /// Blocks written to the media (evictions and commits).
    pub writes: u64,
    pub evictions: u64,
    /// Evictions that had to write a dirty block (the cache held nothing
    /// clean).
    pub dirty_evictions: u64,
    /// The most blocks ever resident at once.
    pub peak_resident: usize,
}

struct Entry {
    data: Block,
    dirty: bool,
    tick: u64,
}

/// The cache over one media's metadata blocks.
pub struct BlockCache {
    media: Arc<dyn Media>,
    capacity: usize,
    entries: BlockMap<Entry>,
    /// Last use → block, oldest first, of the clean blocks only.
    lru: BTreeMap<u64, u64>,
    /// Dirty blocks, so that a write back costs what was dirtied.
    dirty: BTreeSet<u64>,
    /// Blocks of a commit being written without the cache: the only
    /// current copy until the commit's writes are done.
    in_flight: BlockMap<Block>,
    tick: u64,
    stats: CacheStats,
}

impl BlockCache {
    /// A cache of at most `capacity` blocks over `media`.
    pub fn new(media: Arc<dyn Media>, capacity: usize) -> MetaResult<Self> {
        if capacity < MIN_CAPACITY {
            return Err(MetaError::InvalidArgument(format!(
                "a metadata cache needs at least {MIN_CAPACITY} blocks"
            )));
        }
        Ok(BlockCache {
            media,
            capacity,
            entries: BlockMap::default(),
            lru: BTreeMap::new(),
            dirty: BTreeSet::new(),
            in_flight: BlockMap::default(),
            tick: 0,
            stats: CacheStats::default(),
        })
    }

    /// Metadata blocks the media holds.
    pub fn blocks(&self) -> u64 {
        self.media.size() / META_BLOCK as u64
    }

    pub fn media(&self) -> &Arc<dyn Media> {
        &self.media
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn resident(&self) -> usize {
        self.entries.len()
    }

    /// Dirty blocks resident (what the next write back writes).
    pub fn dirty(&self) -> usize {
        self.dirty.len()
    }

    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    fn touch(&mut self, number: u64) {
        self.tick += 1;
        if let Some(entry) = self.entries.get_mut(&number) {
            if !entry.dirty {
                self.lru.remove(&entry.tick);
                self.lru.insert(self.tick, number);
            }
            entry.tick = self.tick;
        }
    }

    /// Marks resident block `number` clean (it is on its way to the media).
    fn mark_clean(&mut self, number: u64) -> Option<Block> {
        let entry = self.entries.get_mut(&number)?;
        if entry.dirty {
            entry.dirty = false;
            self.lru.insert(entry.tick, number);
        }
        Some(entry.data.clone())
    }

    fn check_range(&self, number: u64) -> MetaResult<()> {
        if number >= self.blocks() {
            return Err(MetaError::Corrupt(format!(
                "block {number} is outside the metadata area of {} blocks",
                self.blocks()
            )));
        }
        Ok(())
    }

    /// Block `number`, which must be of type `magic`.
    pub fn read(&mut self, number: u64, magic: u32) -> MetaResult<Block> {
        if let Some(entry) = self.entries.get(&number) {
            let data = entry.data.clone();
            self.stats.hits += 1;
            self.touch(number);
            verify_type(number, &data, magic)?;
            return Ok(data);
        }
        let data = self.fetch(number, magic)?;
        self.insert(number, data.clone(), false)?;
        Ok(data)
    }

    /// Block `number` from the in-flight set or the media, not cached.
    fn fetch(&mut self, number: u64, magic: u32) -> MetaResult<Block> {
        self.check_range(number)?;
        if let Some(data) = self.in_flight.get(&number).cloned() {
            self.stats.hits += 1;
            verify_type(number, &data, magic)?;
            return Ok(data);
        }
        let mut data = vec![0u8; META_BLOCK];
        self.media.read_at(number * META_BLOCK as u64, &mut data)?;
        self.stats.reads += 1;
        verify(number, &data, magic)?;
        Ok(Arc::new(data))
    }

    /// Replaces block `number` with `data` (sealed on its way to the media).
    /// The caller guarantees nothing durable refers to the block.
    pub fn write(&mut self, number: u64, data: Vec<u8>) -> MetaResult<()> {
        self.check_range(number)?;
        if data.len() != META_BLOCK {
            return Err(MetaError::InvalidArgument(
                "metadata block of wrong size".into(),
            ));
        }
        self.insert(number, Arc::new(data), true)
    }

    /// Changes block `number` of type `magic` in place through `change`
    /// and marks it dirty (the caller guarantees nothing durable refers to
    /// it). Readers holding the old bytes keep them: the block is copied
    /// first if anyone else holds it.
    pub fn modify(
        &mut self,
        number: u64,
        magic: u32,
        change: impl FnOnce(&mut [u8]),
    ) -> MetaResult<()> {
        if !self.entries.contains_key(&number) {
            // Evicted since it was written (a dirty eviction): back in,
            // changed and dirty, in one insert.
            let mut data = self.fetch(number, magic)?.to_vec();
            change(&mut data);
            return self.insert(number, Arc::new(data), true);
        }
        self.touch(number);
        let Some(entry) = self.entries.get_mut(&number) else {
            return Err(MetaError::Corrupt(format!("block {number} left the cache")));
        };
        verify_type(number, &entry.data, magic)?;
        change(Arc::make_mut(&mut entry.data).as_mut_slice());
        if !entry.dirty {
            entry.dirty = true;
            self.lru.remove(&entry.tick);
            self.dirty.insert(number);
        }
        Ok(())
    }

    fn insert(&mut self, number: u64, data: Block, dirty: bool) -> MetaResult<()> {
        self.tick += 1;
        let entry = Entry {
            data,
            dirty,
            tick: self.tick,
        };
        if let Some(old) = self.entries.insert(number, entry) {
            self.lru.remove(&old.tick);
        }
        if dirty {
            self.dirty.insert(number);
        } else {
            self.dirty.remove(&number);
            self.lru.insert(self.tick, number);
        }
        let evicted = self.evict();
        self.stats.peak_resident = self.stats.peak_resident.max(self.entries.len());
        evicted
    }

    fn evict(&mut self) -> MetaResult<()> {
        while self.entries.len() > self.capacity {
            // The oldest clean block, else (everything resident is dirty)
            // a dirty one, written first.
            let number = match self.lru.pop_first() {
                Some((_, number)) => number,
                None => match self.dirty.pop_first() {
                    Some(number) => number,
                    None => break,
                },
            };
            let Some(entry) = self.entries.remove(&number) else {
                continue;
            };
            self.stats.evictions += 1;
            if entry.dirty {
                self.stats.dirty_evictions += 1;
                self.store(number, &entry.data)?;
            }
        }
        Ok(())
    }

    fn store(&mut self, number: u64, data: &[u8]) -> MetaResult<()> {
        let mut sealed = data.to_vec();
        seal(number, &mut sealed);
        self.media.write_at(number * META_BLOCK as u64, &sealed)?;
        self.stats.writes += 1;
        Ok(())
    }

    /// Writes every dirty block (in block order); does not flush.
    pub fn write_back(&mut self) -> MetaResult<()> {
        for number in std::mem::take(&mut self.dirty) {
            let Some(data) = self.mark_clean(number) else {
                continue;
            };
            self.store(number, &data)?;
        }
        Ok(())
    }

    /// Hands every dirty block (in block order) to a commit that writes
    /// them itself, outside the cache's owner's lock: they count as
    /// written, stay resident as clean blocks, and are served from the
    /// in-flight set if evicted before [`BlockCache::end_in_flight`].
    pub fn take_dirty(&mut self) -> Vec<(u64, Block)> {
        let mut taken = Vec::with_capacity(self.dirty.len());
        for number in std::mem::take(&mut self.dirty) {
            let Some(data) = self.mark_clean(number) else {
                continue;
            };
            self.in_flight.insert(number, data.clone());
            taken.push((number, data));
        }
        self.stats.writes += taken.len() as u64;
        taken
    }

    /// The blocks of the last [`BlockCache::take_dirty`] are on the media
    /// (or the commit failed and nothing will read them again).
    pub fn end_in_flight(&mut self) {
        self.in_flight.clear();
    }

    /// Blocks handed to a commit and not yet known to be written.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Forgets every cached block (dirty ones unwritten).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.lru.clear();
        self.dirty.clear();
        self.in_flight.clear();
    }
}

/// The type check of a cached block (its checksum was checked on the way
/// in, or it was written in this run).
fn verify_type(number: u64, data: &[u8], magic: u32) -> MetaResult<()> {
    let found = data
        .get(0..4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes);
    if found != Some(magic) {
        return Err(MetaError::Corrupt(format!(
            "block {number}: type {found:#x?}, expected {magic:#x}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::MemMedia;

    const MAGIC: u32 = 0x7465_7374;

    fn block(fill: u8) -> Vec<u8> {
        let mut data = vec![fill; META_BLOCK];
        data[..4].copy_from_slice(&MAGIC.to_le_bytes());
        data
    }

    #[test]
    fn blocks_round_trip_through_eviction_and_write_back() {
        let mem = Arc::new(MemMedia::new(64 * META_BLOCK));
        let mut cache = BlockCache::new(mem.clone(), MIN_CAPACITY).unwrap();
        for n in 0..40u64 {
            cache.write(n, block(n as u8)).unwrap();
            assert!(cache.resident() <= MIN_CAPACITY);
        }
        // The evicted ones went to the media already, the rest at write back.
        assert_eq!(cache.stats().writes, 40 - MIN_CAPACITY as u64);
        cache.write_back().unwrap();
        assert_eq!(cache.stats().writes, 40);
        let mut fresh = BlockCache::new(mem, MIN_CAPACITY).unwrap();
        for n in 0..40u64 {
            let data = fresh.read(n, MAGIC).unwrap();
            assert!(data[BLOCK_HEADER..].iter().all(|&b| b == n as u8));
            assert!(fresh.resident() <= MIN_CAPACITY);
        }
    }

    #[test]
    fn clean_blocks_leave_first_and_dirty_ones_wait_for_the_commit() {
        let mem = Arc::new(MemMedia::new(128 * META_BLOCK));
        let mut cache = BlockCache::new(mem.clone(), MIN_CAPACITY).unwrap();
        for n in 0..MIN_CAPACITY as u64 {
            cache.write(n, block(n as u8)).unwrap();
        }
        cache.write_back().unwrap();
        let written = cache.stats().writes;
        // Four dirty blocks, then many reads: the dirty ones, the oldest
        // of all, stay; only clean blocks are evicted, and nothing is
        // written until the commit takes the dirty ones.
        for n in 100..104u64 {
            cache.write(n, block(n as u8)).unwrap();
        }
        for round in 0..3 {
            for n in 0..MIN_CAPACITY as u64 {
                let data = cache.read(n, MAGIC).unwrap();
                assert_eq!(data[BLOCK_HEADER], n as u8, "round {round}");
                assert!(cache.resident() <= MIN_CAPACITY);
            }
        }
        assert_eq!(cache.stats().writes, written);
        assert_eq!(cache.stats().dirty_evictions, 0);
        assert_eq!(cache.dirty(), 4);
        let taken = cache.take_dirty();
        assert_eq!(
            taken.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            [100, 101, 102, 103]
        );
        // Taken blocks are clean now and may leave like any other.
        for n in 0..MIN_CAPACITY as u64 {
            cache.read(n, MAGIC).unwrap();
        }
        assert!(cache.resident() <= MIN_CAPACITY);
        assert_eq!(cache.dirty(), 0);
    }

    #[test]
    fn damaged_misplaced_and_mistyped_blocks_are_refused() {
        let mem = Arc::new(MemMedia::new(8 * META_BLOCK));
        let mut cache = BlockCache::new(mem.clone(), MIN_CAPACITY).unwrap();
        cache.write(1, block(9)).unwrap();
        cache.write_back().unwrap();
        let fresh = || BlockCache::new(mem.clone(), MIN_CAPACITY).unwrap();
        assert!(fresh().read(1, MAGIC).is_ok());
        assert!(matches!(
            fresh().read(1, MAGIC + 1),
            Err(MetaError::Corrupt(_))
        ));
        // Never written: zeros fail the checksum.
        assert!(matches!(fresh().read(2, MAGIC), Err(MetaError::Corrupt(_))));
        assert!(matches!(
            fresh().read(99, MAGIC),
            Err(MetaError::Corrupt(_))
        ));
        // Block 1's bytes at block 3's place: the location check catches it.
        let mut copy = vec![0u8; META_BLOCK];
        mem.read_at(META_BLOCK as u64, &mut copy).unwrap();
        mem.write_at(3 * META_BLOCK as u64, &copy).unwrap();
        assert!(matches!(fresh().read(3, MAGIC), Err(MetaError::Corrupt(_))));
        // A flipped bit.
        mem.write_at(META_BLOCK as u64 + 100, &[0x55]).unwrap();
        assert!(matches!(fresh().read(1, MAGIC), Err(MetaError::Corrupt(_))));
        assert!(BlockCache::new(mem, MIN_CAPACITY - 1).is_err());
    }
}
