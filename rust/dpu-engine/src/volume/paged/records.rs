//! The records tree of a paged pool: record id → where a stored block is
//! and how to read it, with its reference count; and the hook through
//! which the mapping trees take and drop those references.
//!
//! A record's count is the number of mapping tree leaf entries that name
//! it. Leaves are shared between volumes until written, so a snapshot
//! adds nothing here; copying a shared leaf (its first write) takes a
//! reference per entry, and dropping the last reference frees the record:
//! it leaves this tree and the dedup index, and its data block's count
//! (the live records the block holds) drops by one.
//!
//! The counts live apart from the records, in a counts map (root slot
//! [`super::slots::REFS`]): the space map structure of
//! [`crate::metadata::space_map`], one `u32` per record id, 1,016 to a
//! leaf. A copied map leaf takes a reference on each of its hundreds of
//! entries' records, whose ids are spread over the whole write history;
//! with the count inside the record, each of them dirtied a records leaf
//! of its own (about 90 metadata blocks per write after a snapshot), while
//! ids are handed out in order, so the counts map is dense and a
//! transaction dirties each of its few leaves once. Records themselves
//! are then written once, when stored, and removed when they die.

use super::super::reduce::{Compression, UNIT};
use super::super::{VolumeError, BLOCK_SIZE};
use super::slots::{INDEX, PACKED, RECORDS, REFS, STORED};
use crate::metadata::btree::{self, TreeInfo, ValueKind};
use crate::metadata::space_map;
use crate::metadata::transaction::TransactionManager;
use crate::metadata::{MetaError, MetaResult};

/// Map value of a block that was zero-detected: no record, no reference.
pub(crate) const ZERO_ENTRY: u64 = u64::MAX;

const RECORD_VALUE: usize = 40;

/// Record ids the counts map covers (its shape depends on it, so it is
/// fixed): three index levels over the leaves, about 1.3 * 10^11 ids, a
/// path of four blocks. A pool hands out one id per block it stores (and
/// loses at most a lease of 65,536 per crash): 500 PB of 4 KiB blocks
/// written; past that, writes of new blocks fail with an error.
pub(crate) const RID_SPACE: u64 = space_map::COUNTS_PER_LEAF
    * space_map::POINTERS_PER_NODE
    * space_map::POINTERS_PER_NODE
    * space_map::POINTERS_PER_NODE;

/// A stored block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordEntry {
    /// Data block (numbered from the start of the data area).
    pub block: u64,
    /// First unit inside the block (0 for raw records).
    pub unit: u16,
    /// Units used (a whole block for raw records).
    pub units: u16,
    pub codec: Compression,
    /// Compressed length in bytes (the block size for raw records).
    pub len: u16,
    pub domain: u32,
    /// CRC32C of the stored bytes, checked on every read.
    pub crc: u32,
    /// The dedup index key this record was indexed under, if it was.
    pub index_key: Option<u64>,
}

impl RecordEntry {
    pub(crate) fn stored_bytes(&self) -> u64 {
        u64::from(self.units) * UNIT as u64
    }

    pub(crate) fn packed(&self) -> bool {
        self.codec != Compression::None
    }

    fn encode(&self) -> [u8; RECORD_VALUE] {
        let mut out = [0u8; RECORD_VALUE];
        out[0..8].copy_from_slice(&self.block.to_le_bytes());
        out[8..10].copy_from_slice(&self.unit.to_le_bytes());
        out[10..12].copy_from_slice(&self.units.to_le_bytes());
        out[12] = self.codec.code();
        out[13] = u8::from(self.index_key.is_some());
        out[14..16].copy_from_slice(&self.len.to_le_bytes());
        out[16..20].copy_from_slice(&self.domain.to_le_bytes());
        out[20..24].copy_from_slice(&self.crc.to_le_bytes());
        // Bytes 24..28 are reserved (zero): the count is in the counts map.
        out[28..36].copy_from_slice(&self.index_key.unwrap_or(0).to_le_bytes());
        out
    }

    fn decode(rid: u64, data: &[u8]) -> MetaResult<RecordEntry> {
        let bad = |why: &str| MetaError::Corrupt(format!("record {rid}: {why}"));
        let bytes = |range: std::ops::Range<usize>| -> MetaResult<&[u8]> {
            data.get(range).ok_or_else(|| bad("short value"))
        };
        let u16_at = |at: usize| -> MetaResult<u16> {
            Ok(u16::from_le_bytes(
                bytes(at..at + 2)?.try_into().map_err(|_| bad("short"))?,
            ))
        };
        let u32_at = |at: usize| -> MetaResult<u32> {
            Ok(u32::from_le_bytes(
                bytes(at..at + 4)?.try_into().map_err(|_| bad("short"))?,
            ))
        };
        let u64_at = |at: usize| -> MetaResult<u64> {
            Ok(u64::from_le_bytes(
                bytes(at..at + 8)?.try_into().map_err(|_| bad("short"))?,
            ))
        };
        let codec = Compression::from_code(bytes(12..13)?[0]).map_err(|_| bad("unknown codec"))?;
        let rec = RecordEntry {
            block: u64_at(0)?,
            unit: u16_at(8)?,
            units: u16_at(10)?,
            codec,
            index_key: (bytes(13..14)?[0] != 0).then_some(u64_at(28)?),
            len: u16_at(14)?,
            domain: u32_at(16)?,
            crc: u32_at(20)?,
        };
        let units_per_block = (BLOCK_SIZE / UNIT) as u32;
        if u32::from(rec.unit) + u32::from(rec.units) > units_per_block
            || rec.units == 0
            || usize::from(rec.len) > rec.stored_bytes() as usize
            || (!rec.packed() && (rec.unit != 0 || u32::from(rec.units) != units_per_block))
        {
            return Err(bad("extent out of range"));
        }
        Ok(rec)
    }
}

pub(crate) fn records_info() -> MetaResult<TreeInfo> {
    TreeInfo::new(RECORD_VALUE, ValueKind::Plain)
}

/// The dedup index: key (fingerprint and key domain folded to 64 bits) →
/// record id. Two blocks under one key are told apart by comparing the
/// stored bytes, so a folded collision costs a missed match, never a
/// wrong one.
pub(crate) fn index_info() -> MetaResult<TreeInfo> {
    TreeInfo::new(8, ValueKind::Plain)
}

/// The mapping trees: logical block → record id (or [`ZERO_ENTRY`]).
pub(crate) fn mapping_info() -> MetaResult<TreeInfo> {
    TreeInfo::new(8, ValueKind::Counted)
}

/// The index key of fingerprint `fp` in key domain `domain`.
pub(crate) fn index_key(domain: u32, fp: &[u8; 32]) -> u64 {
    let mut head = [0u8; 8];
    head.copy_from_slice(&fp[..8]);
    u64::from_le_bytes(head) ^ u64::from(domain).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Record `rid`, if it exists.
pub(crate) fn get(tm: &mut TransactionManager, rid: u64) -> MetaResult<Option<RecordEntry>> {
    let root = tm.root(RECORDS);
    btree::lookup(tm, &records_info()?, root, rid)?
        .map(|v| RecordEntry::decode(rid, &v))
        .transpose()
}

/// Stores record `rid`.
fn put(tm: &mut TransactionManager, rid: u64, rec: &RecordEntry) -> MetaResult<()> {
    let root = tm.root(RECORDS);
    let root = btree::insert(tm, &records_info()?, root, rid, &rec.encode())?;
    tm.set_root(RECORDS, root)
}

/// Every record (checks and statistics walks).
pub(crate) fn all(tm: &mut TransactionManager) -> MetaResult<Vec<(u64, RecordEntry)>> {
    let mut raw = Vec::new();
    let root = tm.root(RECORDS);
    btree::range(tm, &records_info()?, root, 0, u64::MAX, &mut |k, v| {
        raw.push((k, v.to_vec()));
        true
    })?;
    raw.into_iter()
        .map(|(k, v)| Ok((k, RecordEntry::decode(k, &v)?)))
        .collect()
}

/// The record the dedup index holds under `key`.
pub(crate) fn indexed(tm: &mut TransactionManager, key: u64) -> MetaResult<Option<u64>> {
    let root = tm.root(INDEX);
    Ok(btree::lookup(tm, &index_info()?, root, key)?.map(|v| le(&v)))
}

/// Indexes record `rid` under `key`.
pub(crate) fn index(tm: &mut TransactionManager, key: u64, rid: u64) -> MetaResult<()> {
    let root = tm.root(INDEX);
    let root = btree::insert(tm, &index_info()?, root, key, &rid.to_le_bytes())?;
    tm.set_root(INDEX, root)
}

fn le(v: &[u8]) -> u64 {
    v.get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// Adds `by` to the counter in root slot `slot`.
pub(crate) fn add_counter(tm: &mut TransactionManager, slot: usize, by: i64) -> MetaResult<()> {
    let now = tm.root(slot).saturating_add_signed(by);
    tm.set_root(slot, now)
}

/// The reference count of record `rid` (0: no such record).
pub(crate) fn count(tm: &mut TransactionManager, rid: u64) -> MetaResult<u32> {
    if rid >= RID_SPACE {
        return Err(MetaError::Corrupt(format!("record id {rid} out of range")));
    }
    let root = tm.root(REFS);
    space_map::get(tm, root, RID_SPACE, rid)
}

fn set_count(tm: &mut TransactionManager, rid: u64, count: u32) -> MetaResult<()> {
    let root = tm.root(REFS);
    let root = space_map::set_pruning(tm, root, RID_SPACE, rid, count)?;
    tm.set_root(REFS, root)
}

/// Stores a new record `rid` with one reference (the caller's entry).
pub(crate) fn create(tm: &mut TransactionManager, rid: u64, rec: &RecordEntry) -> MetaResult<()> {
    if count(tm, rid)? != 0 {
        return Err(MetaError::Corrupt(format!("record id {rid} reused")));
    }
    put(tm, rid, rec)?;
    set_count(tm, rid, 1)
}

/// Every nonzero count of the counts map, in id order (checks).
pub(crate) fn all_counts(tm: &mut TransactionManager) -> MetaResult<Vec<(u64, u32)>> {
    let root = tm.root(REFS);
    let mut out = Vec::new();
    space_map::for_each_count(tm, root, RID_SPACE, &mut |rid, n| out.push((rid, n)))?;
    Ok(out)
}

/// The [`crate::metadata::transaction::ValueRefs`] hook of the mapping
/// trees. Only the counts map changes unless the last reference goes.
pub(crate) fn record_ref(tm: &mut TransactionManager, rid: u64, by: i64) -> MetaResult<()> {
    if rid == ZERO_ENTRY {
        return Ok(());
    }
    let now = count(tm, rid)?;
    // A live record has a count of at least one: zero means a map entry
    // names a record that does not exist.
    if now == 0 {
        return Err(MetaError::Corrupt(format!("record {rid} missing")));
    }
    if by > 0 {
        let next = now
            .checked_add(1)
            .ok_or(MetaError::TooManyReferences(rid))?;
        return set_count(tm, rid, next);
    }
    set_count(tm, rid, now - 1)?;
    if now > 1 {
        return Ok(());
    }
    // The last reference: the record dies.
    let rec = get(tm, rid)?.ok_or_else(|| MetaError::Corrupt(format!("record {rid} missing")))?;
    let root = tm.root(RECORDS);
    let (root, _) = btree::remove(tm, &records_info()?, root, rid)?;
    tm.set_root(RECORDS, root)?;
    if let Some(key) = rec.index_key {
        if indexed(tm, key)? == Some(rid) {
            let root = tm.root(INDEX);
            let (root, _) = btree::remove(tm, &index_info()?, root, key)?;
            tm.set_root(INDEX, root)?;
        }
    }
    add_counter(tm, STORED, -(rec.stored_bytes() as i64))?;
    if tm.dec_data(rec.block)? && rec.packed() {
        add_counter(tm, PACKED, -1)?;
    }
    Ok(())
}

impl From<MetaError> for VolumeError {
    fn from(e: MetaError) -> Self {
        match e {
            MetaError::Media(e) => VolumeError::from(e),
            MetaError::NoSpace => VolumeError::NoSpace,
            MetaError::Corrupt(why) => VolumeError::Corrupt(why),
            MetaError::TooManyReferences(what) => VolumeError::InvalidArgument(format!(
                "{what} already has {} references, the most it can have; \
                 delete snapshots or clones that share it",
                u32::MAX
            )),
            MetaError::Failed => VolumeError::Media(crate::media::MediaError::Unrecoverable(
                "a metadata commit failed; reopen the pool".into(),
            )),
            MetaError::InvalidArgument(why) => VolumeError::InvalidArgument(why),
        }
    }
}
