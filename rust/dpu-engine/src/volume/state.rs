//! The pool's in-memory state and every operation on it.
//!
//! Crash consistency comes from two rules. First, nothing the durable state
//! refers to is ever overwritten: new data always goes to free space
//! (redirect-on-write), space freed since the last durable point is held
//! back in `pending_free` until the next one, a checkpoint is written while
//! the previous one is held, and journal appends go to blocks reserved in
//! advance. Second, durable points are ordered by flushes: data, then the
//! journal blocks (or the checkpoint chain, then the superblock that points
//! to it). A crash at any point therefore leaves the last durable state
//! complete, and at most one newer one that is complete too.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use super::alloc::SpaceMap;
use super::crypt::{Cipher, VolumeKey};
use super::format::{
    journal_block, meta_block, parse_journal_block, parse_meta_block, Delta, Domain,
    JournalPosition, Meta, Record, Services, Superblock, VolumeKind, VolumeMeta, VolumeOp,
    JOURNAL_PAYLOAD, META_PAYLOAD, SUPERBLOCKS, ZERO_ENTRY,
};
use super::reduce::{
    compress, decompress, fingerprint, is_zero, Compression, UNIT, UNITS_PER_BLOCK,
};
use super::{common, PoolStats, VolumeError, VolumeInfo, VolumeStats, BLOCK_SIZE};
use crate::media::{Media, MediaError};

const BS: u64 = BLOCK_SIZE as u64;
/// Record ids leased per metadata commit (see `PoolState::next_rid`): one
/// extra commit per this many stored records, and at most this many ids
/// skipped per crash or reopen, out of 2^64.
const RECORD_LEASE: u64 = 1 << 16;

/// Smallest pool: two superblocks, a checkpoint and a few data blocks.
const MIN_BLOCKS: u64 = 8;

/// The journal may grow to this many blocks, or to the size of the
/// checkpoint if that is larger, before a new checkpoint replaces both: this
/// bounds what an open has to replay.
const JOURNAL_MIN_LIMIT: usize = 8;

/// Most packed blocks one compaction pass empties.
const COMPACT_MAX_BLOCKS: usize = 256;

/// The packed block currently being filled with compressed slots.
struct PackCursor {
    block: u64,
    next_unit: usize,
}

/// A block's content with the CPU-heavy part of the write path done:
/// zero-detect, fingerprint and compression. Volume handles prepare blocks
/// before taking the pool lock, so that several writers compress and hash
/// in parallel.
pub(crate) struct Prepared<'a> {
    pub(super) data: &'a [u8],
    pub(super) services: Services,
    pub(super) keyed: bool,
    pub(super) zero: bool,
    pub(super) fingerprint: Option<[u8; 32]>,
    pub(super) compressed: Option<Vec<u8>>,
}

impl<'a> Prepared<'a> {
    pub(crate) fn new(data: &'a [u8], services: Services, cipher: Option<&Cipher>) -> Self {
        let zero = services.zero_detect && is_zero(data);
        Prepared {
            data,
            services,
            keyed: cipher.is_some(),
            zero,
            fingerprint: (services.dedup && !zero).then(|| match cipher {
                Some(c) => c.fingerprint(data),
                None => fingerprint(data),
            }),
            compressed: if zero {
                None
            } else {
                compress(services.compression, data)
            },
        }
    }
}

/// What an opened volume needs to know about itself.
pub(crate) struct OpenedVolume {
    pub id: u32,
    pub kind: VolumeKind,
    pub services: Services,
    pub cipher: Option<Arc<Cipher>>,
}

pub(crate) struct PoolState {
    media: Arc<dyn Media>,
    /// Generation of the committed superblock.
    generation: u64,
    meta: Meta,
    space: SpaceMap,
    /// Live records stored in each block.
    live: Vec<u32>,
    pack: Option<PackCursor>,
    /// Blocks freed since the last commit: the committed checkpoint may
    /// still refer to them, so they are reusable only after the next one.
    pending_free: Vec<u64>,
    /// Blocks of the committed checkpoint chain.
    checkpoint: Vec<u64>,
    /// Journal blocks written since the checkpoint.
    journal: Vec<u64>,
    /// Block reserved for the next journal write (the superblock or the
    /// last journal block points to it).
    journal_next: Option<u64>,
    /// Changes since the last durable point, for the next journal write:
    /// map entries touched, records created (and still live), records of
    /// the durable state that died.
    touched: HashSet<(u32, u64)>,
    created: HashSet<u64>,
    died: Vec<u64>,
    /// Durable records compaction moved since the last durable point.
    moved: HashSet<u64>,
    /// Management operations done since the last durable point.
    ops: Vec<VolumeOp>,
    /// Map entries changed after an operation in `ops`: the journal replays
    /// map changes before operations, so such a state is checkpointed.
    changed_after_op: bool,
    /// Live units of each packed block, to find sparse ones.
    packed_units: HashMap<u64, u32>,
    /// Dedup index: (key domain, fingerprint) → record.
    index: HashMap<(u32, [u8; 32]), u64>,
    /// The state differs from the committed checkpoint.
    dirty: bool,
    /// A commit failed after the superblock write started: which state the
    /// media holds is unknown until the pool is opened again.
    failed: bool,
    /// Records found unreferenced (leaked) and dropped at open.
    reclaimed_at_open: u64,
    /// The next record id to hand out. Ids are the records' XTS tweaks,
    /// so none may be handed out twice, even across a crash: ids are
    /// leased, `meta.next_record` (what the metadata on media stores) is
    /// the end of the lease, made durable before any id under it is used,
    /// and an opened pool starts handing out ids at the durable lease end.
    next_rid: u64,
    /// Writes may stay volatile until the next flush (see
    /// [`super::Pool::set_write_cache`]); not persistent.
    write_cache: bool,
}

impl PoolState {
    /// Formats `media` as an empty pool.
    pub(crate) fn format(media: Arc<dyn Media>) -> Result<Self, VolumeError> {
        let blocks = media.size() / BS;
        if blocks < MIN_BLOCKS {
            return Err(VolumeError::InvalidArgument(format!(
                "media of {} bytes is too small for a pool",
                media.size()
            )));
        }
        // A stale superblock of an earlier pool must not outrank ours.
        let zeros = vec![0u8; BLOCK_SIZE];
        for slot in 0..SUPERBLOCKS {
            media.write_at(slot * BS, &zeros)?;
        }
        media.flush()?;
        let mut meta = Meta::default();
        meta.domains.insert(
            0,
            Domain {
                encrypted: false,
                check_value: [0; super::crypt::CHECK_VALUE_LEN],
            },
        );
        let mut state = PoolState::empty(media, blocks, meta, 0);
        state.meta.next_record = RECORD_LEASE;
        state.dirty = true;
        state.commit()?;
        Ok(state)
    }

    fn empty(media: Arc<dyn Media>, blocks: u64, meta: Meta, generation: u64) -> Self {
        let meta_next_record = meta.next_record;
        let mut space = SpaceMap::new(blocks);
        for slot in 0..SUPERBLOCKS {
            space.claim(slot);
        }
        PoolState {
            media,
            generation,
            meta,
            space,
            live: vec![0; blocks as usize],
            pack: None,
            pending_free: Vec::new(),
            checkpoint: Vec::new(),
            journal: Vec::new(),
            journal_next: None,
            touched: HashSet::new(),
            created: HashSet::new(),
            died: Vec::new(),
            moved: HashSet::new(),
            ops: Vec::new(),
            changed_after_op: false,
            packed_units: HashMap::new(),
            index: HashMap::new(),
            dirty: false,
            failed: false,
            reclaimed_at_open: 0,
            next_rid: meta_next_record,
            write_cache: true,
        }
    }

    /// Opens the pool on `media` from its newest intact committed state.
    pub(crate) fn open(media: Arc<dyn Media>) -> Result<Self, VolumeError> {
        let mut supers = Vec::new();
        for slot in 0..SUPERBLOCKS {
            let mut block = vec![0u8; BLOCK_SIZE];
            media.read_at(slot * BS, &mut block)?;
            supers.extend(Superblock::decode(&block));
        }
        if supers.is_empty() {
            return Err(VolumeError::NotFormatted);
        }
        // A torn superblock write fails its checksum and was skipped above,
        // so the newest valid superblock is the last commit. Its checkpoint
        // was durable before it was written; if it does not load, the media
        // is damaged, and the pool refuses to open rather than fall back to
        // the older superblock, which would silently drop acknowledged
        // writes.
        let newest = supers
            .into_iter()
            .max_by_key(|sb| sb.generation)
            .ok_or(VolumeError::NotFormatted)?;
        PoolState::load(media, &newest).map_err(|e| match e {
            VolumeError::Corrupt(why) => {
                VolumeError::Corrupt(format!("generation {}: {why}", newest.generation))
            }
            e => e,
        })
    }

    fn load(media: Arc<dyn Media>, sb: &Superblock) -> Result<Self, VolumeError> {
        if sb.total_blocks < MIN_BLOCKS || sb.total_blocks > media.size() / BS {
            return Err(VolumeError::Corrupt(format!(
                "pool of {} blocks does not fit the media",
                sb.total_blocks
            )));
        }
        // Read and verify the checkpoint chain.
        let mut payload = Vec::new();
        let mut chain = Vec::new();
        let mut next = sb.checkpoint_head;
        let mut block = vec![0u8; BLOCK_SIZE];
        for _ in 0..sb.checkpoint_blocks {
            if !(SUPERBLOCKS..sb.total_blocks).contains(&next) || chain.contains(&next) {
                return Err(VolumeError::Corrupt("checkpoint chain broken".into()));
            }
            media.read_at(next * BS, &mut block)?;
            let (following, chunk) = parse_meta_block(&block, sb.generation)?;
            payload.extend_from_slice(chunk);
            chain.push(next);
            next = following;
        }
        if payload.len() as u64 != sb.checkpoint_len
            || blake3::hash(&payload).as_bytes() != &sb.checkpoint_hash
        {
            return Err(VolumeError::Corrupt(
                "checkpoint does not match its superblock".into(),
            ));
        }
        let mut meta = Meta::decode(&payload)?;
        let (journal, journal_next) = replay(media.as_ref(), sb, &chain, &mut meta)?;
        let mut state = PoolState::empty(media, sb.total_blocks, meta, sb.generation);
        for &b in chain.iter().chain(&journal).chain([&journal_next]) {
            state.space.claim(b);
        }
        state.checkpoint = chain;
        state.journal = journal;
        state.journal_next = Some(journal_next);
        state.rebuild()?;
        Ok(state)
    }

    /// Derives reference counts, block usage and the dedup index from the
    /// checkpoint, validating every cross-reference on the way. Records no
    /// map refers to are dropped: this is where a leak, if one ever got
    /// committed, is reclaimed.
    fn rebuild(&mut self) -> Result<(), VolumeError> {
        if self.meta.domains.get(&0).is_none_or(|d| d.encrypted) {
            return Err(VolumeError::Corrupt("plaintext domain missing".into()));
        }
        for vol in self.meta.volumes.values() {
            for (&lba, &rid) in &vol.map {
                if rid == ZERO_ENTRY {
                    continue;
                }
                let rec = self.meta.records.get_mut(&rid).ok_or_else(|| {
                    VolumeError::Corrupt(format!(
                        "{}: block {lba} maps to missing record",
                        vol.name
                    ))
                })?;
                if rec.domain != vol.domain {
                    return Err(VolumeError::Corrupt(format!(
                        "{}: block {lba} maps to another key domain",
                        vol.name
                    )));
                }
                rec.refs = rec.refs.checked_add(1).ok_or_else(|| {
                    VolumeError::Corrupt(format!(
                        "record {rid} is mapped more than {} times",
                        u32::MAX
                    ))
                })?;
            }
        }
        let before = self.meta.records.len();
        self.meta.records.retain(|_, rec| rec.refs > 0);
        self.reclaimed_at_open = (before - self.meta.records.len()) as u64;

        // Each raw record owns its block; packed records own disjoint unit
        // ranges of blocks that hold only packed records.
        let mut packed: HashMap<u64, [u64; UNITS_PER_BLOCK / 64]> = HashMap::new();
        let mut raw: HashSet<u64> = HashSet::new();
        let metadata: HashSet<u64> = self
            .checkpoint
            .iter()
            .chain(&self.journal)
            .chain(&self.journal_next)
            .copied()
            .collect();
        for (&rid, rec) in &self.meta.records {
            if !self.meta.domains.contains_key(&rec.domain) {
                return Err(VolumeError::Corrupt(format!(
                    "record {rid}: unknown domain"
                )));
            }
            let bad = || VolumeError::Corrupt(format!("record {rid} overlaps other data"));
            if rec.block < SUPERBLOCKS
                || rec.block >= self.space.blocks()
                || metadata.contains(&rec.block)
            {
                return Err(bad());
            }
            if rec.codec == Compression::None {
                if packed.contains_key(&rec.block) || !raw.insert(rec.block) {
                    return Err(bad());
                }
            } else {
                if raw.contains(&rec.block) {
                    return Err(bad());
                }
                let bits = packed.entry(rec.block).or_default();
                for unit in usize::from(rec.unit)..usize::from(rec.unit) + usize::from(rec.units) {
                    if bits[unit / 64] & (1 << (unit % 64)) != 0 {
                        return Err(bad());
                    }
                    bits[unit / 64] |= 1 << (unit % 64);
                }
                *self.packed_units.entry(rec.block).or_default() += u32::from(rec.units);
            }
            self.live[rec.block as usize] += 1;
            self.space.claim(rec.block);
            if let Some(fp) = rec.fingerprint {
                self.index.entry((rec.domain, fp)).or_insert(rid);
            }
        }
        Ok(())
    }

    fn usable(&self) -> Result<(), VolumeError> {
        if self.failed {
            return Err(VolumeError::Media(MediaError::Unrecoverable(
                "a metadata commit failed; reopen the pool".into(),
            )));
        }
        Ok(())
    }

    /// Flushes the media. A failed flush fails the pool for good: the
    /// media may have dropped any write since the last durable point (Linux
    /// reports a writeback error to one fdatasync only, so a retry would
    /// succeed over lost data), and only reopening the pool, which goes
    /// back to the last durable state, tells what the media holds.
    fn flush_media(&mut self) -> Result<(), VolumeError> {
        self.media.flush().map_err(|e| {
            self.failed = true;
            VolumeError::from(e)
        })
    }

    /// Makes the current state durable: flush data, write a new checkpoint
    /// into free blocks, flush, write the other superblock, flush.
    pub(crate) fn commit(&mut self) -> Result<(), VolumeError> {
        self.usable()?;
        self.flush_media()?;
        let payload = self.meta.encode();
        // One more block than the chain: the new generation's journal head.
        let needed = payload.len().div_ceil(META_PAYLOAD).max(1) + 1;
        let mut chain = Vec::with_capacity(needed);
        for _ in 0..needed {
            match self.space.alloc() {
                Some(b) => chain.push(b),
                None => {
                    for &b in &chain {
                        self.space.release(b);
                    }
                    return Err(VolumeError::NoSpace);
                }
            }
        }
        let generation = self.generation + 1;
        let written = chain[..needed - 1]
            .iter()
            .enumerate()
            .try_for_each(|(i, &b)| {
                let next = if i + 2 < needed { chain[i + 1] } else { 0 };
                let start = (i * META_PAYLOAD).min(payload.len());
                let end = ((i + 1) * META_PAYLOAD).min(payload.len());
                self.media
                    .write_at(b * BS, &meta_block(generation, next, &payload[start..end]))
            });
        if let Err(e) = written {
            // Nothing points to the new chain yet, so its blocks are free.
            for &b in &chain {
                self.space.release(b);
            }
            return Err(e.into());
        }
        if let Err(e) = self.flush_media() {
            for &b in &chain {
                self.space.release(b);
            }
            return Err(e);
        }
        let journal_head = chain.pop().unwrap_or_default();
        let sb = Superblock {
            generation,
            total_blocks: self.space.blocks(),
            checkpoint_head: chain[0],
            checkpoint_len: payload.len() as u64,
            checkpoint_blocks: chain.len() as u32,
            checkpoint_hash: *blake3::hash(&payload).as_bytes(),
            journal_head,
        };
        // The slot alternates, so the other slot keeps the previous
        // generation, whose checkpoint is still intact, until this write
        // is durable.
        let slot = generation % SUPERBLOCKS;
        if let Err(e) = self
            .media
            .write_at(slot * BS, &sb.encode())
            .and_then(|()| self.media.flush())
        {
            self.failed = true;
            return Err(e.into());
        }
        self.generation = generation;
        let old_journal = std::mem::take(&mut self.journal);
        let old_next = self.journal_next.replace(journal_head);
        let old_chain = std::mem::replace(&mut self.checkpoint, chain);
        for b in old_chain.into_iter().chain(old_journal).chain(old_next) {
            self.space.release(b);
        }
        self.durable();
        Ok(())
    }

    /// Bookkeeping once the current state is durable.
    fn durable(&mut self) {
        for b in std::mem::take(&mut self.pending_free) {
            self.space.release(b);
        }
        self.touched.clear();
        self.created.clear();
        self.died.clear();
        self.moved.clear();
        self.ops.clear();
        self.changed_after_op = false;
        self.dirty = false;
    }

    /// Appends the changes since the last durable point to the journal;
    /// false if a checkpoint should be written instead (journal long
    /// enough, or space short).
    fn append_journal(&mut self) -> Result<bool, VolumeError> {
        let Some(head) = self.journal_next else {
            return Ok(false);
        };
        if self.changed_after_op || self.ops.len() > 1 {
            return Ok(false);
        }
        let mut created: Vec<u64> = self.created.iter().copied().collect();
        created.sort_unstable();
        let delta = Delta {
            next_record: self.meta.next_record,
            created: created
                .into_iter()
                .filter_map(|id| self.meta.records.get(&id).map(|r| (id, r.clone())))
                .collect(),
            moved: self
                .moved
                .iter()
                .filter_map(|&id| self.meta.records.get(&id).map(|r| (id, r.clone())))
                .collect(),
            removed: self.died.clone(),
            ops: self.ops.clone(),
            changes: self
                .touched
                .iter()
                .filter_map(|&(vol, lba)| {
                    let v = self.meta.volumes.get(&vol)?;
                    Some((vol, lba, v.map.get(&lba).copied()))
                })
                .collect(),
        };
        let payload = delta.encode();
        let blocks = payload.len().div_ceil(JOURNAL_PAYLOAD).max(1);
        let limit = self.checkpoint.len().max(JOURNAL_MIN_LIMIT);
        // The checkpoint that eventually replaces the journal must still
        // find room after this append.
        let room = self.space.free() >= blocks as u64 + self.checkpoint_blocks_needed(0, 0);
        if self.journal.len() + blocks > limit || !room {
            return Ok(false);
        }
        self.flush_media()?;
        let mut chain = vec![head];
        for _ in 0..blocks {
            match self.space.alloc() {
                Some(b) => chain.push(b),
                None => {
                    for &b in &chain[1..] {
                        self.space.release(b);
                    }
                    return Ok(false);
                }
            }
        }
        let flush_hash = *blake3::hash(&payload).as_bytes();
        let seq = self.journal.len() as u64;
        let written = (0..blocks).try_for_each(|i| {
            let pos = JournalPosition {
                generation: self.generation,
                seq: seq + i as u64,
                next: chain[i + 1],
                last: i + 1 == blocks,
                flush_hash,
            };
            let start = (i * JOURNAL_PAYLOAD).min(payload.len());
            let end = ((i + 1) * JOURNAL_PAYLOAD).min(payload.len());
            self.media
                .write_at(chain[i] * BS, &journal_block(&pos, &payload[start..end]))
        });
        if let Err(e) = written.and_then(|()| self.media.flush()) {
            // Whether part of the append is on media is unknown.
            self.failed = true;
            return Err(e.into());
        }
        self.journal_next = chain.pop();
        self.journal.extend(chain);
        self.durable();
        Ok(true)
    }

    /// Makes the current state durable the cheap way when possible.
    fn persist(&mut self) -> Result<(), VolumeError> {
        if self.append_journal()? {
            Ok(())
        } else {
            self.commit()
        }
    }

    /// Makes every completed write durable: compacts if due, then appends
    /// to the journal or writes a checkpoint if anything changed, else just
    /// flushes the media.
    pub(crate) fn flush(&mut self) -> Result<(), VolumeError> {
        self.usable()?;
        if self.dirty {
            self.compact()?;
        }
        if self.dirty || !self.pending_free.is_empty() {
            self.persist()
        } else {
            self.flush_media()
        }
    }

    pub(crate) fn set_write_cache(&mut self, enabled: bool) {
        self.write_cache = enabled;
    }

    pub(crate) fn write_cache(&self) -> bool {
        self.write_cache
    }

    /// Ends a write or discard: with the write cache off, it is made
    /// durable before it completes.
    pub(crate) fn complete_write(&mut self) -> Result<(), VolumeError> {
        if self.write_cache {
            Ok(())
        } else {
            self.flush()
        }
    }

    /// Blocks the next checkpoint needs if the metadata grows by `entries`
    /// map entries and `records` records.
    fn checkpoint_blocks_needed(&self, entries: usize, records: usize) -> u64 {
        let bytes = self.meta.encoded_size_bound() + Meta::growth(entries, records);
        // The chain plus the new generation's journal head.
        bytes.div_ceil(META_PAYLOAD) as u64 + 1
    }

    /// Makes sure that, after taking `blocks` data blocks, the next
    /// checkpoint (grown by `entries` and `records`) still fits. Makes the
    /// state durable to release pending frees and the journal when that
    /// helps; fails with `NoSpace` otherwise, before anything has changed.
    fn ensure_room(
        &mut self,
        blocks: u64,
        entries: usize,
        records: usize,
    ) -> Result<(), VolumeError> {
        let fits =
            |s: &Self| s.space.free() >= blocks + s.checkpoint_blocks_needed(entries, records);
        if fits(self) {
            return Ok(());
        }
        if !self.pending_free.is_empty() {
            self.persist()?;
            if fits(self) {
                return Ok(());
            }
        }
        // A checkpoint also frees the journal's blocks.
        if !self.journal.is_empty() {
            self.commit()?;
            if fits(self) {
                return Ok(());
            }
        }
        Err(VolumeError::NoSpace)
    }

    fn alloc_block(&mut self) -> Result<u64, VolumeError> {
        self.ensure_room(1, 1, 1)?;
        self.space.alloc().ok_or(VolumeError::NoSpace)
    }

    /// Finds room for `units` units of a packed block.
    fn alloc_slot(&mut self, units: usize) -> Result<(u64, usize), VolumeError> {
        if let Some(cursor) = &mut self.pack {
            if cursor.next_unit + units <= UNITS_PER_BLOCK {
                let slot = (cursor.block, cursor.next_unit);
                cursor.next_unit += units;
                return Ok(slot);
            }
        }
        let block = self.alloc_block()?;
        if let Some(old) = self.pack.take() {
            if self.live[old.block as usize] == 0 {
                self.pending_free.push(old.block);
            }
        }
        self.pack = Some(PackCursor {
            block,
            next_unit: units,
        });
        Ok((block, 0))
    }

    fn volume(&self, id: u32) -> Result<&VolumeMeta, VolumeError> {
        self.meta
            .volumes
            .get(&id)
            .ok_or_else(|| VolumeError::NotFound(format!("volume #{id}")))
    }

    fn find(&self, name: &str) -> Result<u32, VolumeError> {
        self.meta
            .volumes
            .iter()
            .find(|(_, v)| v.name == name)
            .map(|(&id, _)| id)
            .ok_or_else(|| VolumeError::NotFound(name.to_string()))
    }

    /// The cipher for `domain`: the caller's, which must exist exactly when
    /// the domain is encrypted.
    fn domain_cipher<'c>(
        &self,
        domain: u32,
        cipher: Option<&'c Cipher>,
    ) -> Result<Option<&'c Cipher>, VolumeError> {
        let encrypted = self.meta.domains.get(&domain).is_some_and(|d| d.encrypted);
        common::domain_cipher(encrypted, cipher)
    }

    /// Writes one block of `vol`.
    pub(crate) fn write_block(
        &mut self,
        vol: u32,
        lba: u64,
        block: &Prepared<'_>,
        cipher: Option<&Cipher>,
    ) -> Result<(), VolumeError> {
        self.usable()?;
        let data = block.data;
        let v = self.volume(vol)?;
        if v.kind == VolumeKind::Snapshot {
            return Err(VolumeError::ReadOnly);
        }
        if lba >= v.size_blocks || data.len() != BLOCK_SIZE {
            return Err(common::out_of_range(lba, data.len() as u64, v.size_blocks));
        }
        let (domain, services, new_entry) = (v.domain, v.services, !v.map.contains_key(&lba));
        let cipher = self.domain_cipher(domain, cipher)?;
        // A block prepared for other services (or another key) is prepared
        // again; handles prepare for their volume's, so this is rare.
        let reprepared;
        let block = if block.services == services && block.keyed == cipher.is_some() {
            block
        } else {
            reprepared = Prepared::new(data, services, cipher);
            &reprepared
        };
        let entry = if block.zero {
            self.ensure_room(0, usize::from(new_entry), 0)?;
            ZERO_ENTRY
        } else {
            let fp = block.fingerprint;
            match fp.and_then(|fp| self.index.get(&(domain, fp)).copied()) {
                // Equal fingerprints are not enough: the stored block is
                // read back and compared, so a collision never shares. A
                // record with all the references it can count is not
                // shared either: dedup then stores a copy, it never fails
                // the write.
                Some(rid)
                    if self.can_reference(rid, 1) && self.record_equals(rid, data, cipher)? =>
                {
                    self.ensure_room(0, usize::from(new_entry), 0)?;
                    rid
                }
                _ => self.store(domain, block, cipher)?,
            }
        };
        self.set_entry(vol, lba, Some(entry))
    }

    /// Stores `data` as a new record (refs 0) and returns its id.
    fn store(
        &mut self,
        domain: u32,
        prepared: &Prepared<'_>,
        cipher: Option<&Cipher>,
    ) -> Result<u64, VolumeError> {
        self.lease_record_id()?;
        let (data, fp) = (prepared.data, prepared.fingerprint);
        let (block, unit, units, codec, mut bytes) = match &prepared.compressed {
            Some(packed) => {
                let units = packed.len().div_ceil(UNIT).max(1);
                let (block, unit) = self.alloc_slot(units)?;
                let mut bytes = packed.clone();
                bytes.resize(units * UNIT, 0);
                let codec = prepared.services.compression;
                (block, unit, units, codec, (bytes, packed.len()))
            }
            None => {
                let block = self.alloc_block()?;
                (
                    block,
                    0,
                    UNITS_PER_BLOCK,
                    Compression::None,
                    (data.to_vec(), BLOCK_SIZE),
                )
            }
        };
        let mut rec = Record {
            block,
            unit: unit as u16,
            units: units as u16,
            codec,
            len: bytes.1 as u16,
            domain,
            crc: 0,
            // A fingerprint already indexed (a collision, since the compare
            // failed) stays with the record that has it; this one is stored
            // unindexed.
            fingerprint: fp.filter(|fp| !self.index.contains_key(&(domain, *fp))),
            refs: 0,
        };
        // The id is taken before the write and never handed out again, even
        // if the write fails: it is the record's XTS tweak, and a tweak must
        // not encrypt two different plaintexts.
        let rid = self.next_rid;
        self.next_rid += 1;
        if let Some(c) = cipher {
            c.encrypt(&mut bytes.0, rid);
        }
        rec.crc = crc32c::crc32c(&bytes.0);
        if let Err(e) = self
            .media
            .write_at(block * BS + (unit * UNIT) as u64, &bytes.0)
        {
            if codec == Compression::None {
                // Nothing refers to the block: it can be reused at once.
                self.space.release(block);
            }
            return Err(e.into());
        }
        self.created.insert(rid);
        self.live[block as usize] += 1;
        if codec != Compression::None {
            *self.packed_units.entry(block).or_default() += units as u32;
        }
        if let Some(fp) = rec.fingerprint {
            self.index.insert((domain, fp), rid);
        }
        self.meta.records.insert(rid, rec);
        Ok(rid)
    }

    /// Makes sure the next record id lies inside a durable lease: when the
    /// lease is used up, a longer one is committed first. A crash can then
    /// lose ids (the rest of the lease) but never hand one out again.
    fn lease_record_id(&mut self) -> Result<(), VolumeError> {
        if self.next_rid < self.meta.next_record {
            return Ok(());
        }
        let granted = self.meta.next_record;
        self.meta.next_record = self
            .next_rid
            .checked_add(RECORD_LEASE)
            .ok_or_else(|| VolumeError::Corrupt("record ids exhausted".into()))?;
        self.dirty = true;
        self.persist().inspect_err(|_| {
            // Not durable (or unknown, and then the pool is failed): ids
            // past the old lease must not be used.
            self.meta.next_record = granted;
        })
    }

    /// Maps (or with `None` unmaps) `lba`, taking the new reference before
    /// dropping the old one so that rewriting a block with its own content
    /// never frees it.
    fn set_entry(&mut self, vol: u32, lba: u64, entry: Option<u64>) -> Result<(), VolumeError> {
        if let Some((rid, rec)) =
            entry.and_then(|rid| Some((rid, self.meta.records.get_mut(&rid)?)))
        {
            rec.refs = rec
                .refs
                .checked_add(1)
                .ok_or_else(|| too_many_references(rid))?;
        }
        let old = self.meta.volumes.get_mut(&vol).and_then(|v| match entry {
            Some(e) => v.map.insert(lba, e),
            None => v.map.remove(&lba),
        });
        self.touched.insert((vol, lba));
        self.changed_after_op |= !self.ops.is_empty();
        if let Some(rid) = old {
            self.unref(rid);
        }
        self.dirty = true;
        Ok(())
    }

    /// Whether `rid` can take `more` references (true for ids that are
    /// not records, such as [`ZERO_ENTRY`], which are not counted).
    fn can_reference(&self, rid: u64, more: u64) -> bool {
        self.meta
            .records
            .get(&rid)
            .is_none_or(|rec| u64::from(rec.refs) + more <= u64::from(u32::MAX))
    }

    /// Takes one more reference on every record `map` maps, or, when one of
    /// them cannot count that many, none and an error.
    fn reference_all(&mut self, map: &BTreeMap<u64, u64>) -> Result<(), VolumeError> {
        let mut wanted: HashMap<u64, u64> = HashMap::new();
        for &rid in map.values() {
            *wanted.entry(rid).or_default() += 1;
        }
        if let Some((&rid, _)) = wanted.iter().find(|(&rid, &n)| !self.can_reference(rid, n)) {
            return Err(too_many_references(rid));
        }
        for (rid, n) in wanted {
            if let Some(rec) = self.meta.records.get_mut(&rid) {
                // In range: checked just above.
                rec.refs += n as u32;
            }
        }
        Ok(())
    }

    /// Drops one reference to `rid`, freeing the record with the last one.
    fn unref(&mut self, rid: u64) {
        let Some(rec) = self.meta.records.get_mut(&rid) else {
            return;
        };
        rec.refs = rec.refs.saturating_sub(1);
        if rec.refs > 0 {
            return;
        }
        let Some(rec) = self.meta.records.remove(&rid) else {
            return;
        };
        if !self.created.remove(&rid) {
            self.died.push(rid);
        }
        self.moved.remove(&rid);
        self.release_units(&rec);
        if let Some(fp) = rec.fingerprint {
            if self.index.get(&(rec.domain, fp)) == Some(&rid) {
                self.index.remove(&(rec.domain, fp));
            }
        }
        let live = &mut self.live[rec.block as usize];
        *live = live.saturating_sub(1);
        let open_pack = self.pack.as_ref().is_some_and(|c| c.block == rec.block);
        if *live == 0 && !open_pack {
            self.pending_free.push(rec.block);
        }
    }

    /// Drops `rec`'s units from its packed block's count.
    fn release_units(&mut self, rec: &Record) {
        if rec.codec == Compression::None {
            return;
        }
        if let Some(units) = self.packed_units.get_mut(&rec.block) {
            *units = units.saturating_sub(u32::from(rec.units));
            if *units == 0 {
                self.packed_units.remove(&rec.block);
            }
        }
    }

    /// Moves the live records out of sparse packed blocks (half empty or
    /// worse) so that those blocks free up. It runs once sparse blocks are
    /// an eighth of all packed blocks, on the sparsest first, a bounded
    /// number per flush. The stored bytes are copied as they are, still
    /// compressed and encrypted: the XTS tweak is the record id, not its
    /// place, so no key is needed.
    fn compact(&mut self) -> Result<(), VolumeError> {
        let cursor = self.pack.as_ref().map(|c| c.block);
        let mut sparse: Vec<(u32, u64)> = self
            .packed_units
            .iter()
            .filter(|&(&b, &u)| Some(b) != cursor && u as usize <= UNITS_PER_BLOCK / 2)
            .map(|(&b, &u)| (u, b))
            .collect();
        if sparse.is_empty() || sparse.len() * 8 < self.packed_units.len() {
            return Ok(());
        }
        sparse.sort_unstable();
        sparse.truncate(COMPACT_MAX_BLOCKS);
        let chosen: HashSet<u64> = sparse.iter().map(|&(_, b)| b).collect();
        let mut moves: Vec<u64> = self
            .meta
            .records
            .iter()
            .filter(|(_, r)| r.codec != Compression::None && chosen.contains(&r.block))
            .map(|(&id, _)| id)
            .collect();
        moves.sort_unstable();
        for rid in moves {
            let Some(rec) = self.meta.records.get(&rid).cloned() else {
                continue;
            };
            let mut bytes = vec![0u8; rec.stored_bytes() as usize];
            let from = rec.block * BS + u64::from(rec.unit) * UNIT as u64;
            self.media.read_at(from, &mut bytes)?;
            // A corrupted record stays where it is (and keeps failing its
            // reads) rather than being copied as if it were good.
            if verify(rid, &rec, &bytes).is_err() {
                continue;
            }
            // New slots come from the cursor or from free blocks, never
            // from a block being emptied. Compaction is an optimisation:
            // a full pool just stops it.
            let (block, unit) = match self.alloc_slot(usize::from(rec.units)) {
                Ok(slot) => slot,
                Err(VolumeError::NoSpace) => break,
                Err(e) => return Err(e),
            };
            self.media
                .write_at(block * BS + (unit * UNIT) as u64, &bytes)?;
            self.release_units(&rec);
            let live = &mut self.live[rec.block as usize];
            *live = live.saturating_sub(1);
            if *live == 0 {
                self.pending_free.push(rec.block);
            }
            self.live[block as usize] += 1;
            *self.packed_units.entry(block).or_default() += u32::from(rec.units);
            if let Some(r) = self.meta.records.get_mut(&rid) {
                r.block = block;
                r.unit = unit as u16;
            }
            if !self.created.contains(&rid) {
                self.moved.insert(rid);
            }
            self.dirty = true;
        }
        Ok(())
    }

    /// Reads one block of `vol` into `out`.
    pub(crate) fn read_block(
        &self,
        vol: u32,
        lba: u64,
        out: &mut [u8],
        cipher: Option<&Cipher>,
    ) -> Result<(), VolumeError> {
        let v = self.volume(vol)?;
        if lba >= v.size_blocks || out.len() != BLOCK_SIZE {
            return Err(common::out_of_range(lba, out.len() as u64, v.size_blocks));
        }
        let cipher = self.domain_cipher(v.domain, cipher)?;
        match v.map.get(&lba) {
            None | Some(&ZERO_ENTRY) => {
                out.fill(0);
                Ok(())
            }
            Some(&rid) => self.read_record(rid, out, cipher),
        }
    }

    fn read_record(
        &self,
        rid: u64,
        out: &mut [u8],
        cipher: Option<&Cipher>,
    ) -> Result<(), VolumeError> {
        let rec = self
            .meta
            .records
            .get(&rid)
            .ok_or_else(|| VolumeError::Corrupt(format!("record {rid} missing")))?;
        let offset = rec.block * BS + u64::from(rec.unit) * UNIT as u64;
        let what = || format!("record {rid} in block {}", rec.block);
        if rec.codec == Compression::None {
            common::read_checked(&*self.media, offset, out, rec.crc, what)?;
            if let Some(c) = cipher {
                c.decrypt(out, rid);
            }
            return Ok(());
        }
        let mut bytes = vec![0u8; rec.stored_bytes() as usize];
        common::read_checked(&*self.media, offset, &mut bytes, rec.crc, what)?;
        if let Some(c) = cipher {
            c.decrypt(&mut bytes, rid);
        }
        decompress(rec.codec, &bytes[..usize::from(rec.len)], out)
    }

    fn record_equals(
        &self,
        rid: u64,
        data: &[u8],
        cipher: Option<&Cipher>,
    ) -> Result<bool, VolumeError> {
        let mut stored = vec![0u8; BLOCK_SIZE];
        self.read_record(rid, &mut stored, cipher)?;
        Ok(stored == data)
    }

    /// Unmaps `count` blocks of `vol` from `lba`: they read as zeros and
    /// their space is freed with the last reference.
    pub(crate) fn discard(&mut self, vol: u32, lba: u64, count: u64) -> Result<(), VolumeError> {
        self.usable()?;
        let v = self.volume(vol)?;
        if v.kind == VolumeKind::Snapshot {
            return Err(VolumeError::ReadOnly);
        }
        let end = lba
            .checked_add(count)
            .filter(|&e| e <= v.size_blocks)
            .ok_or_else(|| common::out_of_range(lba, count.saturating_mul(BS), v.size_blocks))?;
        let mapped: Vec<u64> = v.map.range(lba..end).map(|(&l, _)| l).collect();
        for l in mapped {
            self.set_entry(vol, l, None)?;
        }
        Ok(())
    }

    fn check_new_name(&self, name: &str) -> Result<(), VolumeError> {
        common::check_new_name(name, self.meta.volumes.values().any(|v| v.name == name))
    }

    /// Creates an empty thin volume and commits.
    pub(crate) fn create_volume(
        &mut self,
        name: &str,
        size_bytes: u64,
        services: Services,
        key: Option<&VolumeKey>,
    ) -> Result<(), VolumeError> {
        self.usable()?;
        self.check_new_name(name)?;
        common::size_blocks(size_bytes)?;
        self.ensure_room(0, 1, 1)?;
        // Volumes with the same key share a key domain, and so can share
        // deduplicated blocks.
        let mut new_domain = None;
        let domain = match key {
            None => 0,
            Some(key) => {
                let check_value = key.check_value();
                let existing = self
                    .meta
                    .domains
                    .iter()
                    .find(|(_, d)| d.encrypted && d.check_value == check_value)
                    .map(|(&id, _)| id);
                match existing {
                    Some(id) => id,
                    None => {
                        let id = self
                            .meta
                            .domains
                            .keys()
                            .next_back()
                            .map_or(1, |&last| last + 1);
                        let domain = Domain {
                            encrypted: true,
                            check_value,
                        };
                        self.meta.domains.insert(id, domain.clone());
                        new_domain = Some((id, domain));
                        id
                    }
                }
            }
        };
        let id = self.meta.next_volume;
        self.meta.next_volume += 1;
        let volume = VolumeMeta {
            name: name.to_string(),
            kind: VolumeKind::Writable,
            size_blocks: size_bytes / BS,
            domain,
            services,
            parent: None,
            map: BTreeMap::new(),
        };
        self.meta.volumes.insert(id, volume.clone());
        self.done(VolumeOp::Create {
            id,
            volume,
            domain: new_domain,
        })
    }

    /// Records a management operation and makes it durable (a journal
    /// entry of a few bytes, or a checkpoint when the journal is due).
    fn done(&mut self, op: VolumeOp) -> Result<(), VolumeError> {
        self.ops.push(op);
        self.dirty = true;
        self.persist()
    }

    /// Checks `key` against `name`'s key domain and returns what a handle
    /// needs.
    pub(crate) fn open_volume(
        &self,
        name: &str,
        key: Option<&VolumeKey>,
    ) -> Result<OpenedVolume, VolumeError> {
        self.usable()?;
        let id = self.find(name)?;
        let v = self.volume(id)?;
        let domain = self
            .meta
            .domains
            .get(&v.domain)
            .ok_or_else(|| VolumeError::Corrupt(format!("{name}: key domain missing")))?;
        let cipher = common::handle_cipher(domain.encrypted, &domain.check_value, key)?;
        Ok(OpenedVolume {
            id,
            kind: v.kind,
            services: v.services,
            cipher,
        })
    }

    /// Adds a volume sharing `source`'s blocks and commits.
    fn add_copy(&mut self, source: &str, name: &str, kind: VolumeKind) -> Result<(), VolumeError> {
        self.usable()?;
        self.check_new_name(name)?;
        let source_id = self.find(source)?;
        let src = self.volume(source_id)?;
        if kind == VolumeKind::Writable && src.kind != VolumeKind::Snapshot {
            return Err(VolumeError::InvalidArgument(format!(
                "{source} is not a snapshot"
            )));
        }
        let copy = VolumeMeta {
            name: name.to_string(),
            kind,
            parent: Some(source_id),
            ..src.clone()
        };
        self.ensure_room(0, copy.map.len(), 0)?;
        self.reference_all(&copy.map)?;
        let id = self.meta.next_volume;
        self.meta.next_volume += 1;
        let name = copy.name.clone();
        self.meta.volumes.insert(id, copy);
        self.done(VolumeOp::Copy {
            id,
            source: source_id,
            name,
            kind,
        })
    }

    /// Takes a read-only snapshot of `origin`.
    pub(crate) fn snapshot(&mut self, origin: &str, name: &str) -> Result<(), VolumeError> {
        self.add_copy(origin, name, VolumeKind::Snapshot)
    }

    /// Creates a writable clone of `snapshot`.
    pub(crate) fn clone_snapshot(&mut self, snapshot: &str, name: &str) -> Result<(), VolumeError> {
        self.add_copy(snapshot, name, VolumeKind::Writable)
    }

    /// Makes writable `volume` an exact copy of `snapshot` again.
    pub(crate) fn revert(&mut self, volume: &str, snapshot: &str) -> Result<(), VolumeError> {
        self.usable()?;
        let vol_id = self.find(volume)?;
        let snap_id = self.find(snapshot)?;
        let (vol, snap) = (self.volume(vol_id)?, self.volume(snap_id)?);
        if vol.kind != VolumeKind::Writable || snap.kind != VolumeKind::Snapshot {
            return Err(VolumeError::InvalidArgument(format!(
                "revert needs a writable volume and a snapshot, not {volume} and {snapshot}"
            )));
        }
        if vol.domain != snap.domain {
            return Err(VolumeError::InvalidArgument(format!(
                "{volume} and {snapshot} use different keys"
            )));
        }
        let map = snap.map.clone();
        let size_blocks = snap.size_blocks;
        self.ensure_room(0, map.len().saturating_sub(vol.map.len()), 0)?;
        self.reference_all(&map)?;
        let old = match self.meta.volumes.get_mut(&vol_id) {
            Some(v) => {
                v.size_blocks = size_blocks;
                std::mem::replace(&mut v.map, map)
            }
            None => BTreeMap::new(),
        };
        for rid in old.into_values() {
            self.unref(rid);
        }
        self.done(VolumeOp::Revert {
            volume: vol_id,
            snapshot: snap_id,
        })
    }

    /// Changes a writable volume's logical size; blocks past a new, smaller
    /// end are unmapped.
    pub(crate) fn resize(&mut self, name: &str, size_bytes: u64) -> Result<(), VolumeError> {
        self.usable()?;
        let id = self.find(name)?;
        let v = self.volume(id)?;
        if v.kind == VolumeKind::Snapshot {
            return Err(VolumeError::ReadOnly);
        }
        common::size_blocks(size_bytes)?;
        let size_blocks = size_bytes / BS;
        let beyond: Vec<u64> = v.map.range(size_blocks..).map(|(&l, _)| l).collect();
        for lba in beyond {
            self.set_entry(id, lba, None)?;
        }
        if let Some(v) = self.meta.volumes.get_mut(&id) {
            v.size_blocks = size_blocks;
        }
        self.done(VolumeOp::Resize { id, size_blocks })
    }

    /// The metadata, for tests that commit deliberately broken states.
    #[cfg(test)]
    pub(crate) fn meta_mut(&mut self) -> &mut Meta {
        &mut self.meta
    }

    /// Size in blocks of volume `id`.
    pub(crate) fn size_blocks(&self, id: u32) -> Result<u64, VolumeError> {
        Ok(self.volume(id)?.size_blocks)
    }

    /// Deletes a volume, snapshot or clone; blocks others still map stay.
    pub(crate) fn delete(&mut self, name: &str) -> Result<(), VolumeError> {
        self.usable()?;
        let id = self.find(name)?;
        let Some(vol) = self.meta.volumes.remove(&id) else {
            return Err(VolumeError::NotFound(name.to_string()));
        };
        for rid in vol.map.into_values() {
            self.unref(rid);
        }
        // A key domain without volumes has no records left either; its
        // check value is forgotten with it.
        if vol.domain != 0 && !self.meta.volumes.values().any(|v| v.domain == vol.domain) {
            self.meta.domains.remove(&vol.domain);
        }
        self.done(VolumeOp::Delete { id })
    }

    /// Takes in media that grew since the pool was formatted or last grown.
    pub(crate) fn grow(&mut self) -> Result<u64, VolumeError> {
        self.usable()?;
        let blocks = self.media.size() / BS;
        if blocks > self.space.blocks() {
            self.space.grow(blocks);
            self.live.resize(blocks as usize, 0);
            self.dirty = true;
            self.commit()?;
        }
        Ok(self.space.blocks())
    }

    pub(crate) fn volume_infos(&self) -> Vec<VolumeInfo> {
        self.meta
            .volumes
            .values()
            .map(|v| VolumeInfo {
                name: v.name.clone(),
                kind: v.kind,
                size_bytes: v.size_blocks * BS,
                parent: v
                    .parent
                    .and_then(|p| self.meta.volumes.get(&p))
                    .map(|p| p.name.clone()),
                services: v.services,
                encrypted: self
                    .meta
                    .domains
                    .get(&v.domain)
                    .is_some_and(|d| d.encrypted),
            })
            .collect()
    }

    pub(crate) fn stats(&self) -> PoolStats {
        let metadata_blocks = (self.checkpoint.len() + self.journal.len()) as u64
            + u64::from(self.journal_next.is_some());
        let pending = self.pending_free.len() as u64;
        let data_blocks =
            self.space.blocks() - self.space.free() - SUPERBLOCKS - metadata_blocks - pending;
        let packed: HashSet<u64> = self
            .meta
            .records
            .values()
            .filter(|r| r.codec != Compression::None)
            .map(|r| r.block)
            .collect();
        let logical_bytes: u64 = self
            .meta
            .volumes
            .values()
            .map(|v| v.map.len() as u64 * BS)
            .sum();
        let physical_bytes = data_blocks * BS;
        PoolStats {
            block_size: BS,
            total_blocks: self.space.blocks(),
            free_blocks: self.space.free(),
            data_blocks,
            packed_blocks: packed.len() as u64,
            metadata_blocks,
            pending_free_blocks: pending,
            logical_bytes,
            stored_bytes: self.meta.records.values().map(Record::stored_bytes).sum(),
            physical_bytes,
            reduction_ratio: ratio(logical_bytes, physical_bytes),
            generation: self.generation,
            reclaimed_at_open: self.reclaimed_at_open,
            journaled_snapshots: 0,
        }
    }

    pub(crate) fn volume_stats(&self, name: &str) -> Result<VolumeStats, VolumeError> {
        let id = self.find(name)?;
        // A record is shared when more than one volume maps it; dedup
        // within one volume still makes it exclusive to that volume.
        let mut owners: HashMap<u64, u32> = HashMap::new();
        for v in self.meta.volumes.values() {
            let distinct: HashSet<u64> = v
                .map
                .values()
                .copied()
                .filter(|&r| r != ZERO_ENTRY)
                .collect();
            for rid in distinct {
                *owners.entry(rid).or_default() += 1;
            }
        }
        let v = self.volume(id)?;
        let distinct: HashSet<u64> = v
            .map
            .values()
            .copied()
            .filter(|&r| r != ZERO_ENTRY)
            .collect();
        let unique = distinct.len() as u64 * BS;
        let (mut exclusive, mut shared) = (0, 0);
        for rid in distinct {
            let bytes = self.meta.records.get(&rid).map_or(0, Record::stored_bytes);
            if owners.get(&rid).copied().unwrap_or(0) > 1 {
                shared += bytes;
            } else {
                exclusive += bytes;
            }
        }
        let mapped = v.map.len() as u64 * BS;
        Ok(VolumeStats {
            size_bytes: v.size_blocks * BS,
            mapped_bytes: mapped,
            zero_bytes: v.map.values().filter(|&&r| r == ZERO_ENTRY).count() as u64 * BS,
            unique_bytes: unique,
            allocated_bytes: exclusive + shared,
            exclusive_bytes: exclusive,
            shared_bytes: shared,
            reduction_ratio: ratio(mapped, exclusive + shared),
        })
    }

    /// Verifies every invariant of the in-memory state against itself; the
    /// property tests run it after each step.
    pub(crate) fn check(&self) -> Result<(), VolumeError> {
        let fail = |what: String| Err(VolumeError::Corrupt(what));
        let mut refs: HashMap<u64, u32> = HashMap::new();
        for v in self.meta.volumes.values() {
            for (&lba, &rid) in &v.map {
                if lba >= v.size_blocks {
                    return fail(format!("{}: entry {lba} past the end", v.name));
                }
                if rid == ZERO_ENTRY {
                    continue;
                }
                match self.meta.records.get(&rid) {
                    Some(rec) if rec.domain == v.domain => *refs.entry(rid).or_default() += 1,
                    _ => return fail(format!("{}: entry {lba} → bad record {rid}", v.name)),
                }
            }
        }
        let mut live: HashMap<u64, u32> = HashMap::new();
        let mut units: HashMap<u64, u32> = HashMap::new();
        for (&rid, rec) in &self.meta.records {
            if rec.codec != Compression::None {
                *units.entry(rec.block).or_default() += u32::from(rec.units);
            }
            if refs.get(&rid).copied().unwrap_or(0) != rec.refs || rec.refs == 0 {
                return fail(format!("record {rid}: refs {} wrong", rec.refs));
            }
            if !self.space.is_used(rec.block) {
                return fail(format!("record {rid} in a free block"));
            }
            *live.entry(rec.block).or_default() += 1;
        }
        if units != self.packed_units {
            return fail("packed unit counts wrong".into());
        }
        for (b, &n) in self.live.iter().enumerate() {
            if live.get(&(b as u64)).copied().unwrap_or(0) != n {
                return fail(format!("block {b}: live count {n} wrong"));
            }
        }
        for (&(domain, fp), &rid) in &self.index {
            if !self
                .meta
                .records
                .get(&rid)
                .is_some_and(|r| r.domain == domain && r.fingerprint == Some(fp))
            {
                return fail(format!("dedup index entry for record {rid} stale"));
            }
        }
        // Every used block is accounted for exactly once: that is the
        // statement that no space leaks.
        let mut accounted: HashSet<u64> = (0..SUPERBLOCKS).collect();
        let holders = self
            .checkpoint
            .iter()
            .chain(&self.journal)
            .chain(&self.journal_next)
            .chain(&self.pending_free)
            .chain(live.keys())
            .chain(self.pack.as_ref().map(|c| &c.block));
        for &b in holders {
            let duplicate = !accounted.insert(b);
            let pack_with_data =
                self.pack.as_ref().is_some_and(|c| c.block == b) && live.contains_key(&b);
            if duplicate && !pack_with_data {
                return fail(format!("block {b} accounted twice"));
            }
        }
        for &b in &accounted {
            if !self.space.is_used(b) {
                return fail(format!("block {b} in use but free"));
            }
        }
        let used = self.space.blocks() - self.space.free();
        if used != accounted.len() as u64 {
            return fail(format!(
                "{used} blocks used, {} accounted: leak",
                accounted.len()
            ));
        }
        Ok(())
    }
}

/// Checks stored bytes read from media against the record's CRC32C.
fn verify(rid: u64, rec: &Record, stored: &[u8]) -> Result<(), VolumeError> {
    if crc32c::crc32c(stored) == rec.crc {
        Ok(())
    } else {
        Err(VolumeError::Media(MediaError::Io(format!(
            "record {rid} in block {} fails its checksum",
            rec.block
        ))))
    }
}

/// Replays the journal of `sb`'s generation into `meta`, one complete flush
/// at a time, stopping at the first block that is missing, torn, stale or
/// part of a flush that never completed. Returns the journal blocks applied
/// and the block reserved for the next append.
fn replay(
    media: &dyn Media,
    sb: &Superblock,
    chain: &[u64],
    meta: &mut Meta,
) -> Result<(Vec<u64>, u64), VolumeError> {
    let in_pool = |b: u64| (SUPERBLOCKS..sb.total_blocks).contains(&b);
    let mut applied = Vec::new();
    let mut visited: HashSet<u64> = chain.iter().copied().collect();
    let mut flush_blocks = Vec::new();
    let mut payload = Vec::new();
    let mut flush_hash = None;
    let mut next = sb.journal_head;
    let mut after_applied = next;
    let mut block = vec![0u8; BLOCK_SIZE];
    while in_pool(next) && visited.insert(next) {
        media.read_at(next * BS, &mut block)?;
        let seq = (applied.len() + flush_blocks.len()) as u64;
        let Some((pos, chunk)) = parse_journal_block(&block, sb.generation, seq) else {
            break;
        };
        if flush_hash.is_some_and(|h| h != pos.flush_hash) {
            break;
        }
        flush_hash = Some(pos.flush_hash);
        payload.extend_from_slice(chunk);
        flush_blocks.push(next);
        next = pos.next;
        if pos.last {
            if blake3::hash(&payload).as_bytes() != &pos.flush_hash {
                break;
            }
            Delta::decode(&payload)?.apply(meta)?;
            applied.append(&mut flush_blocks);
            payload.clear();
            flush_hash = None;
            after_applied = next;
        }
    }
    if !in_pool(after_applied) || chain.contains(&after_applied) || applied.contains(&after_applied)
    {
        return Err(VolumeError::Corrupt("journal chain broken".into()));
    }
    Ok((applied, after_applied))
}

/// The error for a record that cannot take one more reference.
fn too_many_references(rid: u64) -> VolumeError {
    VolumeError::InvalidArgument(format!(
        "record {rid} already has {} references, the most one block can have; \
         delete snapshots or clones that share it",
        u32::MAX
    ))
}

pub(super) fn ratio(logical: u64, physical: u64) -> f64 {
    if physical == 0 {
        if logical == 0 {
            1.0
        } else {
            f64::INFINITY
        }
    } else {
        logical as f64 / physical as f64
    }
}
