//! The block I/O path of a paged pool: writes in two halves around the
//! data write (which runs without the pool lock), dedup matches checked
//! against the stored bytes without the lock, and reads whose data part
//! runs without it too. Under the lock: lookups, allocation and the
//! metadata changes; outside: every media read and write of data.

use std::sync::{Arc, Condvar, Mutex};

use super::super::crypt::Cipher;
use super::super::reduce::{decompress, Compression, UNIT, UNITS_PER_BLOCK};
use super::super::state::Prepared;
use super::super::{common, VolumeError, VolumeKind, BLOCK_SIZE};
use super::catalog::VolumeEntry;
use super::records::{self, index_key, mapping_info, RecordEntry, ZERO_ENTRY};
use super::slots::{LEASE, PACK, PACKED, STORED};
use super::{le, PagedState, BS, RECORD_LEASE};
use crate::media::{Media, MediaError};
use crate::metadata::btree;

/// Stored bytes written to the data area, not yet a record.
#[derive(Debug, Clone, Copy)]
pub(super) struct Placed {
    rid: u64,
    block: u64,
    unit: u16,
    units: u16,
    codec: Compression,
    len: u16,
    crc: u32,
}

/// The pack cursor: the packed block being filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Pack {
    pub(super) block: u64,
    pub(super) next_unit: usize,
}

/// The pack cursor of root slot [`slots::PACK`]; a damaged value names no
/// cursor (a block out of range then fails where it is used).
pub(super) fn decode_pack(slot: u64) -> Option<Pack> {
    Some(Pack {
        block: (slot >> 16).checked_sub(1)?,
        next_unit: (slot & 0xffff) as usize,
    })
}

fn encode_pack(pack: Option<Pack>) -> u64 {
    pack.map_or(0, |p| ((p.block + 1) << 16) | p.next_unit as u64)
}

/// Block writes between their two halves ([`PagedState::write_block_begin`]):
/// [`PagedState::close`] waits for their media writes.
#[derive(Default)]
pub(crate) struct Placements {
    writing: Mutex<usize>,
    changed: Condvar,
}

impl Placements {
    pub(super) fn wait_idle(&self) {
        let mut writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        while *writing > 0 {
            writing = self
                .changed
                .wait(writing)
                .unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// One block write counted in [`Placements`] until its media write ends.
pub(crate) struct PlacementGuard(Arc<Placements>);

impl PlacementGuard {
    fn enter(placements: &Arc<Placements>) -> Self {
        *placements.writing.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        PlacementGuard(placements.clone())
    }
}

impl Drop for PlacementGuard {
    fn drop(&mut self) {
        let mut writing = self.0.writing.lock().unwrap_or_else(|e| e.into_inner());
        *writing = writing.saturating_sub(1);
        self.0.changed.notify_all();
    }
}

/// A new block's stored bytes, written to the data area without the pool
/// lock between [`PagedState::write_block_begin`] and
/// [`PagedState::write_block_end`].
pub(crate) struct Placement {
    media: Arc<dyn Media>,
    offset: u64,
    bytes: Vec<u8>,
    placed: Placed,
    domain: u32,
    fingerprint: Option<[u8; 32]>,
    guard: Option<PlacementGuard>,
}

impl Placement {
    /// Writes the bytes to their data block (nothing committed refers to
    /// it yet). Call without the pool lock.
    pub(crate) fn write(&mut self) -> Result<(), MediaError> {
        let written = self.media.write_at(self.offset, &self.bytes);
        self.guard = None;
        written
    }
}

/// A stored record's bytes, to be read and checked without the pool lock.
/// Records never change once stored and their ids are never reused, so
/// what the lookup found stays right until the record dies; its data block
/// is reused only after the commit that freed it, and a read that races
/// with that fails the record's CRC instead of returning other bytes.
pub(crate) struct RecordRead {
    media: Arc<dyn Media>,
    rid: u64,
    rec: RecordEntry,
    /// Byte offset of the stored bytes on the media.
    offset: u64,
}

impl RecordRead {
    /// Reads, checks (and repairs, where the media keeps copies), decrypts
    /// and decompresses the record into `out`. Call without the pool lock.
    pub(crate) fn read(&self, out: &mut [u8], cipher: Option<&Cipher>) -> Result<(), VolumeError> {
        let mut bytes = vec![0u8; self.rec.stored_bytes() as usize];
        common::read_checked(&*self.media, self.offset, &mut bytes, self.rec.crc, || {
            format!("record {} at byte {}", self.rid, self.offset)
        })?;
        if let Some(c) = cipher {
            c.decrypt(&mut bytes, self.rid);
        }
        decompress(self.rec.codec, &bytes[..usize::from(self.rec.len)], out)
    }

    /// The record it reads.
    pub(crate) fn rid(&self) -> u64 {
        self.rid
    }
}

/// A dedup candidate found under the pool lock, whose stored bytes the
/// writer compares with its block without the lock.
pub(crate) struct DedupCheck(RecordRead);

impl DedupCheck {
    /// Whether the candidate holds exactly `data`. Equal fingerprints are
    /// not enough (the index folds them to 64 bits): only equal bytes
    /// share. A candidate that cannot be read (damaged, or freed and its
    /// block reused since the lookup) is no match, and the write stores
    /// its own copy.
    pub(crate) fn matches(&self, data: &[u8], cipher: Option<&Cipher>) -> bool {
        let mut stored = vec![0u8; BLOCK_SIZE];
        self.0.read(&mut stored, cipher).is_ok() && stored == data
    }
}

/// What a block write knows about dedup when it (re)starts.
pub(crate) enum Dedup {
    /// Look the block up in the dedup index.
    Look,
    /// The candidate held the same bytes: share it if it is still there.
    Matched(DedupCheck),
    /// No usable candidate: store the block.
    Skip,
}

/// What [`PagedState::write_block_begin`] left to do.
pub(crate) enum WriteStep {
    /// The block is written.
    Done,
    /// Write this placement without the pool lock, then finish with
    /// [`PagedState::write_block_end`].
    Place(Placement),
    /// Compare the block with this candidate without the pool lock, then
    /// start again with [`Dedup::Matched`] or [`Dedup::Skip`].
    Verify(DedupCheck),
}

/// What [`PagedState::read_begin`] left to do.
pub(crate) enum ReadStep {
    /// The block is read (zeros: unmapped or zero-detected).
    Done,
    /// Read this record without the pool lock.
    Record(RecordRead),
}

impl PagedState {
    /// Makes sure the next record id lies inside a durable lease. The
    /// lease is raised when half of it is used and made durable by a
    /// commit outside the pool lock; only if that has not happened by the
    /// time the durable lease runs out does this commit under the lock.
    fn lease_record_id(&mut self) -> Result<(), VolumeError> {
        let lease = self.tm.root(LEASE);
        if lease.saturating_sub(self.next_rid) <= RECORD_LEASE / 2 {
            let end = self
                .next_rid
                .checked_add(RECORD_LEASE)
                .filter(|&end| end <= records::RID_SPACE)
                .ok_or_else(|| VolumeError::InvalidArgument("record ids exhausted".into()))?;
            self.tm.set_root(LEASE, end)?;
            self.dirty = true;
            self.request_commit();
        }
        if self.next_rid < self.durable_lease {
            return Ok(());
        }
        self.commit()
    }

    /// Checks that block `lba` of `vol` can be written.
    fn check_writable(&self, vol: u32, lba: u64, len: usize) -> Result<&VolumeEntry, VolumeError> {
        let v = self.volume(vol)?;
        if v.kind == VolumeKind::Snapshot {
            return Err(VolumeError::ReadOnly);
        }
        if lba >= v.size_blocks || len != BLOCK_SIZE {
            return Err(common::out_of_range(lba, len as u64, v.size_blocks));
        }
        Ok(v)
    }

    /// The first half of a block write, under the pool lock. A block
    /// whose fingerprint the dedup index knows first goes back to the
    /// caller to be compared with the candidate without the lock
    /// ([`WriteStep::Verify`]), and comes back with `dedup` saying how
    /// that went. A zero block, a dedup match or a compressed block is
    /// written here ([`WriteStep::Done`]). A new raw block gets a data
    /// block free in every state (reserved, its count still zero, so a
    /// commit prepared meanwhile does not refer to it) and a record id,
    /// and is returned encrypted, for the caller to write without the lock
    /// and hand to [`PagedState::write_block_end`].
    pub(crate) fn write_block_begin(
        &mut self,
        vol: u32,
        lba: u64,
        block: &Prepared<'_>,
        cipher: Option<&Cipher>,
        dedup: Dedup,
    ) -> Result<WriteStep, VolumeError> {
        self.usable()?;
        let data = block.data;
        let v = self.check_writable(vol, lba, data.len())?;
        let (domain, services) = (v.domain, v.services);
        let cipher = self.domain_cipher(domain, cipher)?;
        let reprepared;
        let block = if block.services == services && block.keyed == cipher.is_some() {
            block
        } else {
            reprepared = Prepared::new(data, services, cipher);
            &reprepared
        };
        self.ensure_room(1)?;
        // Lookups and the lease (which may commit) come before any change.
        let shared = match (block.fingerprint.filter(|_| !block.zero), dedup) {
            (None, _) | (_, Dedup::Skip) => None,
            (Some(fp), Dedup::Look) => match self.dedup_candidate(domain, &fp)? {
                Some(read) => return Ok(WriteStep::Verify(DedupCheck(read))),
                None => None,
            },
            (Some(_), Dedup::Matched(check)) => self.still_shareable(domain, &check.0)?,
        };
        if shared.is_some() || block.zero || block.compressed.is_some() {
            let placed = if shared.is_none() && !block.zero {
                self.lease_record_id()?;
                Some(self.place(block, cipher)?)
            } else {
                None
            };
            let result = self.write_inner(vol, lba, block.fingerprint, domain, shared, placed);
            self.changing(result)?;
            self.after_change()?;
            return Ok(WriteStep::Done);
        }
        self.lease_record_id()?;
        let reserved = self.tm.reserve_data().map_err(VolumeError::from);
        let data_block = self.changing(reserved)?;
        // The id is the record's XTS tweak: taken now, never handed out
        // again, even if the write fails.
        let rid = self.next_rid;
        self.next_rid += 1;
        let mut bytes = data.to_vec();
        if let Some(c) = cipher {
            c.encrypt(&mut bytes, rid);
        }
        let crc = crc32c::crc32c(&bytes);
        Ok(WriteStep::Place(Placement {
            media: self.media.clone(),
            offset: (self.data_start + data_block) * BS,
            bytes,
            placed: Placed {
                rid,
                block: data_block,
                unit: 0,
                units: UNITS_PER_BLOCK as u16,
                codec: Compression::None,
                len: BLOCK_SIZE as u16,
                crc,
            },
            domain,
            fingerprint: block.fingerprint,
            guard: Some(PlacementGuard::enter(&self.placements)),
        }))
    }

    /// The second half of a block write, under the pool lock: records and
    /// maps the block the caller wrote (`written` is how that went). A
    /// failed write, or a volume that went away or shrank meanwhile,
    /// gives the data block back and leaves the pool usable.
    pub(crate) fn write_block_end(
        &mut self,
        vol: u32,
        lba: u64,
        placement: Placement,
        written: Result<(), MediaError>,
    ) -> Result<(), VolumeError> {
        let block = placement.placed.block;
        let ready = written
            .map_err(VolumeError::from)
            .and_then(|()| self.usable())
            .and_then(|()| self.check_writable(vol, lba, BLOCK_SIZE).map(|_| ()));
        if let Err(e) = ready {
            self.tm.unreserve_data(block);
            return Err(e);
        }
        let result = self
            .tm
            .claim_data(block)
            .map_err(VolumeError::from)
            .and_then(|()| {
                self.write_inner(
                    vol,
                    lba,
                    placement.fingerprint,
                    placement.domain,
                    None,
                    Some(placement.placed),
                )
            });
        self.changing(result)?;
        self.after_change()
    }

    /// The record the dedup index names for fingerprint `fp` in `domain`,
    /// if it can take one more reference, to be compared with the new
    /// block (by the caller, without the lock).
    fn dedup_candidate(
        &mut self,
        domain: u32,
        fp: &[u8; 32],
    ) -> Result<Option<RecordRead>, VolumeError> {
        let key = index_key(domain, fp);
        let Some(rid) = records::indexed(&mut self.tm, key)? else {
            return Ok(None);
        };
        let Some(rec) = records::get(&mut self.tm, rid)? else {
            return Ok(None);
        };
        // A record with all the references it can count is not shared.
        if rec.domain != domain || records::count(&mut self.tm, rid)? == u32::MAX {
            return Ok(None);
        }
        self.record_read(rid, rec).map(Some)
    }

    /// The id of the record `read` read, if it is still the same record
    /// (it did not die since) and can take one more reference.
    fn still_shareable(
        &mut self,
        domain: u32,
        read: &RecordRead,
    ) -> Result<Option<u64>, VolumeError> {
        let same = records::get(&mut self.tm, read.rid)? == Some(read.rec);
        let room = same && records::count(&mut self.tm, read.rid)? < u32::MAX;
        Ok((room && read.rec.domain == domain).then_some(read.rid))
    }

    /// How to read record `rid` without the pool lock.
    fn record_read(&self, rid: u64, rec: RecordEntry) -> Result<RecordRead, VolumeError> {
        if rec.block >= self.tm.data_blocks() {
            return Err(VolumeError::Corrupt(format!(
                "record {rid} outside the data area"
            )));
        }
        Ok(RecordRead {
            media: self.media.clone(),
            rid,
            rec,
            offset: (self.data_start + rec.block) * BS + u64::from(rec.unit) * UNIT as u64,
        })
    }

    fn write_inner(
        &mut self,
        vol: u32,
        lba: u64,
        fingerprint: Option<[u8; 32]>,
        domain: u32,
        shared: Option<u64>,
        placed: Option<Placed>,
    ) -> Result<(), VolumeError> {
        let entry = match (placed, shared) {
            (Some(placed), _) => self.add_record(domain, fingerprint, placed)?,
            (None, Some(rid)) => {
                records::record_ref(&mut self.tm, rid, 1)?;
                rid
            }
            (None, None) => ZERO_ENTRY,
        };
        self.set_entry(vol, lba, entry)
    }

    /// Maps `lba` of `vol` to `entry`, whose reference the caller took;
    /// the mapping tree drops the old entry's.
    fn set_entry(&mut self, vol: u32, lba: u64, entry: u64) -> Result<(), VolumeError> {
        let info = mapping_info()?;
        let root = self.volume(vol)?.root;
        let old = btree::lookup(&mut self.tm, &info, root, lba)?.map(|v| le(&v));
        let root = btree::insert(&mut self.tm, &info, root, lba, &entry.to_le_bytes())?;
        if let Some(v) = self.volumes.get_mut(&vol) {
            v.root = root;
            if old.is_none() {
                v.mapped += 1;
            }
            if old == Some(ZERO_ENTRY) {
                v.zeros = v.zeros.saturating_sub(1);
            }
            if entry == ZERO_ENTRY {
                v.zeros += 1;
            }
        }
        self.dirty_volumes.insert(vol);
        Ok(())
    }

    /// Finds room for `units` units of a packed block; the block's count
    /// takes one for the new record.
    fn alloc_slot(&mut self, units: usize) -> Result<(u64, usize), VolumeError> {
        let pack = decode_pack(self.tm.root(PACK));
        if let Some(mut p) = pack {
            if p.next_unit + units <= UNITS_PER_BLOCK {
                let slot = (p.block, p.next_unit);
                p.next_unit += units;
                self.tm.set_root(PACK, encode_pack(Some(p)))?;
                self.tm.inc_data(p.block)?;
                return Ok(slot);
            }
        }
        // The cursor holds one count on its block while it fills it.
        let block = self.tm.alloc_data()?;
        records::add_counter(&mut self.tm, PACKED, 1)?;
        if let Some(old) = pack {
            if self.tm.dec_data(old.block)? {
                records::add_counter(&mut self.tm, PACKED, -1)?;
            }
        }
        self.tm.set_root(
            PACK,
            encode_pack(Some(Pack {
                block,
                next_unit: units,
            })),
        )?;
        self.tm.inc_data(block)?;
        Ok((block, 0))
    }

    /// Allocates room for a block's stored bytes and writes them there.
    /// A failed media write gives the room back and leaves the pool
    /// usable: nothing refers to the bytes yet.
    fn place(
        &mut self,
        prepared: &Prepared<'_>,
        cipher: Option<&Cipher>,
    ) -> Result<Placed, VolumeError> {
        let room = match &prepared.compressed {
            Some(packed) => {
                let units = packed.len().div_ceil(UNIT).max(1);
                let codec = prepared.services.compression;
                self.alloc_slot(units).map(|(block, unit)| {
                    let mut bytes = packed.clone();
                    bytes.resize(units * UNIT, 0);
                    (block, unit, units, codec, bytes, packed.len())
                })
            }
            None => self
                .tm
                .alloc_data()
                .map_err(VolumeError::from)
                .map(|block| {
                    let data = prepared.data.to_vec();
                    (
                        block,
                        0,
                        UNITS_PER_BLOCK,
                        Compression::None,
                        data,
                        BLOCK_SIZE,
                    )
                }),
        };
        let (block, unit, units, codec, mut bytes, len) = self.changing(room)?;
        // The id is the record's XTS tweak: taken before the write, never
        // handed out again, even if the write fails.
        let rid = self.next_rid;
        self.next_rid += 1;
        if let Some(c) = cipher {
            c.encrypt(&mut bytes, rid);
        }
        let offset = (self.data_start + block) * BS + (unit * UNIT) as u64;
        if let Err(e) = self.media.write_at(offset, &bytes) {
            let undo = self
                .tm
                .dec_data(block)
                .map(|_| ())
                .map_err(VolumeError::from);
            self.changing(undo)?;
            return Err(e.into());
        }
        Ok(Placed {
            rid,
            block,
            unit: unit as u16,
            units: units as u16,
            codec,
            len: len as u16,
            crc: crc32c::crc32c(&bytes),
        })
    }

    /// Adds the record of placed bytes (count 1, for the entry the caller
    /// maps next) and returns its id.
    fn add_record(
        &mut self,
        domain: u32,
        fingerprint: Option<[u8; 32]>,
        placed: Placed,
    ) -> Result<u64, VolumeError> {
        let key = fingerprint.map(|fp| index_key(domain, &fp));
        // The index is bounded by the metadata area: when that runs short,
        // new records are stored unindexed (fewer dedup matches), and
        // writes never fail for the index's sake.
        let key = key.filter(|_| self.tm.free_meta_blocks() >= 2 * self.reserve);
        let rec = RecordEntry {
            block: placed.block,
            unit: placed.unit,
            units: placed.units,
            codec: placed.codec,
            len: placed.len,
            domain,
            crc: placed.crc,
            index_key: key,
        };
        records::create(&mut self.tm, placed.rid, &rec)?;
        records::add_counter(&mut self.tm, STORED, rec.stored_bytes() as i64)?;
        if let Some(key) = key {
            records::index(&mut self.tm, key, placed.rid)?;
        }
        Ok(placed.rid)
    }

    /// The first half of a block read, under the pool lock: zeros for an
    /// unmapped or zero-detected block ([`ReadStep::Done`]), else the
    /// record to read without the lock.
    pub(crate) fn read_begin(
        &mut self,
        vol: u32,
        lba: u64,
        out: &mut [u8],
        cipher: Option<&Cipher>,
    ) -> Result<ReadStep, VolumeError> {
        self.usable()?;
        let v = self.volume(vol)?;
        if lba >= v.size_blocks || out.len() != BLOCK_SIZE {
            return Err(common::out_of_range(lba, out.len() as u64, v.size_blocks));
        }
        let root = v.root;
        self.domain_cipher(v.domain, cipher)?;
        let entry = btree::lookup(&mut self.tm, &mapping_info()?, root, lba)?.map(|v| le(&v));
        match entry {
            None | Some(ZERO_ENTRY) => {
                out.fill(0);
                Ok(ReadStep::Done)
            }
            Some(rid) => {
                let rec = records::get(&mut self.tm, rid)?
                    .ok_or_else(|| VolumeError::Corrupt(format!("record {rid} missing")))?;
                self.record_read(rid, rec).map(ReadStep::Record)
            }
        }
    }
}
