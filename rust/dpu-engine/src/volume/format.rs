//! The pool's on-media format: superblocks, checkpoint chain, checkpoint
//! payload.
//!
//! Everything here is parsed from media that may be torn, stale or hostile,
//! so every decoder checks bounds and returns [`VolumeError::Corrupt`]
//! rather than trusting a length or count.

use std::collections::{BTreeMap, HashMap};

use super::crypt::CHECK_VALUE_LEN;
use super::reduce::{Compression, UNITS_PER_BLOCK};
use super::{VolumeError, BLOCK_SIZE};

/// Blocks 0 and 1 hold the superblock pair.
pub(crate) const SUPERBLOCKS: u64 = 2;

const SUPER_MAGIC: &[u8; 8] = b"DPUPOOL\x01";
const META_MAGIC: &[u8; 8] = b"DPUMETA\x01";
const CHECKPOINT_MAGIC: &[u8; 8] = b"DPUCKPT\x01";
const JOURNAL_MAGIC: &[u8; 8] = b"DPUJRNL\x01";
const FORMAT_VERSION: u32 = 1;

/// Bytes of a superblock that its checksum covers.
const SUPER_BODY: usize = 92;

/// Header of each checkpoint block: magic, generation, next block, length.
const META_HEADER: usize = 8 + 8 + 8 + 4;

/// Checkpoint payload bytes per block.
pub(crate) const META_PAYLOAD: usize = BLOCK_SIZE - META_HEADER;

/// Header of each journal block: magic, generation, sequence number, next
/// block, payload length, last-of-flush flag, hash of the flush's payload.
const JOURNAL_HEADER: usize = 8 + 8 + 8 + 8 + 4 + 1 + 32;

/// Journal payload bytes per block (the block ends with a checksum).
pub(crate) const JOURNAL_PAYLOAD: usize = BLOCK_SIZE - JOURNAL_HEADER - 32;

/// Map change of a journal delta that unmaps the block.
const UNMAPPED: u64 = u64::MAX - 1;

/// Map value of a logical block that was written with zeros and
/// zero-detected: it reads as zeros and takes no space, but it counts as
/// written data in the statistics.
pub(crate) const ZERO_ENTRY: u64 = u64::MAX;

/// No parent volume.
const NO_PARENT: u32 = u32::MAX;

/// Encoded sizes, used for exact space estimates before a checkpoint.
const RECORD_BYTES: usize = 8 + 8 + 2 + 2 + 1 + 2 + 4 + 4 + 1 + 32;
const ENTRY_BYTES: usize = 16;
const DOMAIN_BYTES: usize = 4 + 1 + CHECK_VALUE_LEN;
const VOLUME_BYTES: usize = 4 + 2 + 1 + 8 + 4 + 1 + 1 + 1 + 4 + 8;

/// One of the two superblocks: the root of a committed pool state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Superblock {
    pub generation: u64,
    pub total_blocks: u64,
    pub checkpoint_head: u64,
    pub checkpoint_len: u64,
    pub checkpoint_blocks: u32,
    pub checkpoint_hash: [u8; 32],
    /// First block of this generation's journal (reserved, maybe unwritten).
    pub journal_head: u64,
}

impl Superblock {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.bytes(SUPER_MAGIC);
        w.u32(FORMAT_VERSION);
        w.u32(BLOCK_SIZE as u32);
        w.u64(self.generation);
        w.u64(self.total_blocks);
        w.u64(self.checkpoint_head);
        w.u64(self.checkpoint_len);
        w.u32(self.checkpoint_blocks);
        w.bytes(&self.checkpoint_hash);
        w.u64(self.journal_head);
        debug_assert_eq!(w.buf.len(), SUPER_BODY);
        let sum = blake3::hash(&w.buf);
        w.bytes(sum.as_bytes());
        w.buf.resize(BLOCK_SIZE, 0);
        w.buf
    }

    /// Parses a superblock; `None` if it is absent, torn or foreign.
    pub(crate) fn decode(block: &[u8]) -> Option<Self> {
        if block.len() < SUPER_BODY + 32 {
            return None;
        }
        if blake3::hash(&block[..SUPER_BODY]).as_bytes() != &block[SUPER_BODY..SUPER_BODY + 32] {
            return None;
        }
        let mut r = Reader::new(&block[..SUPER_BODY]);
        if r.take(8).ok()? != SUPER_MAGIC
            || r.u32().ok()? != FORMAT_VERSION
            || r.u32().ok()? != BLOCK_SIZE as u32
        {
            return None;
        }
        Some(Superblock {
            generation: r.u64().ok()?,
            total_blocks: r.u64().ok()?,
            checkpoint_head: r.u64().ok()?,
            checkpoint_len: r.u64().ok()?,
            checkpoint_blocks: r.u32().ok()?,
            checkpoint_hash: r.array().ok()?,
            journal_head: r.u64().ok()?,
        })
    }
}

/// Builds checkpoint block `index`'s bytes: header plus its payload chunk.
pub(crate) fn meta_block(generation: u64, next: u64, chunk: &[u8]) -> Vec<u8> {
    let mut w = Writer::default();
    w.bytes(META_MAGIC);
    w.u64(generation);
    w.u64(next);
    w.u32(chunk.len() as u32);
    w.bytes(chunk);
    w.buf.resize(BLOCK_SIZE, 0);
    w.buf
}

/// Parses a checkpoint block into (next block, payload chunk).
pub(crate) fn parse_meta_block(block: &[u8], generation: u64) -> Result<(u64, &[u8]), VolumeError> {
    let mut r = Reader::new(block);
    if r.take(8)? != META_MAGIC || r.u64()? != generation {
        return Err(VolumeError::Corrupt(
            "checkpoint block of another generation".into(),
        ));
    }
    let next = r.u64()?;
    let len = r.u32()? as usize;
    if len > META_PAYLOAD {
        return Err(VolumeError::Corrupt("checkpoint block overfull".into()));
    }
    Ok((next, r.take(len)?))
}

/// A key domain: the volumes sharing one encryption key (or none), and so
/// the scope within which blocks may be deduplicated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Domain {
    pub encrypted: bool,
    pub check_value: [u8; CHECK_VALUE_LEN],
}

/// A stored block: where its bytes are and how to turn them back into data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub block: u64,
    /// First unit inside the block (0 for raw records).
    pub unit: u16,
    /// Units used (a whole block for raw records).
    pub units: u16,
    pub codec: Compression,
    /// Compressed length in bytes (the block size for raw records).
    pub len: u16,
    pub domain: u32,
    /// CRC32C of the stored bytes (as on media: compressed, encrypted,
    /// padded), checked on every read so that corrupted media gives an
    /// error rather than wrong data, and checkable without the key.
    pub crc: u32,
    /// Dedup fingerprint, when the record is in the dedup index.
    pub fingerprint: Option<[u8; 32]>,
    /// Map entries referring to this record; derived at open, not stored.
    pub refs: u32,
}

impl Record {
    pub(crate) fn stored_bytes(&self) -> u64 {
        u64::from(self.units) * super::reduce::UNIT as u64
    }
}

/// Whether a volume takes writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeKind {
    /// A thin volume or a clone: read-write.
    Writable,
    /// A snapshot: read-only, frozen at the time it was taken.
    Snapshot,
}

/// Per-volume data services (encryption is chosen by the key at creation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Services {
    /// Map all-zero blocks to "zero" instead of storing them.
    pub zero_detect: bool,
    /// Store identical blocks of the key domain once.
    pub dedup: bool,
    /// Compress blocks before storing them.
    pub compression: Compression,
}

/// A volume's metadata: identity, services and its logical → record map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VolumeMeta {
    pub name: String,
    pub kind: VolumeKind,
    pub size_blocks: u64,
    pub domain: u32,
    pub services: Services,
    pub parent: Option<u32>,
    /// Logical block → record id, or [`ZERO_ENTRY`]. Unmapped blocks read
    /// as zeros.
    pub map: BTreeMap<u64, u64>,
}

/// Everything a checkpoint holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Meta {
    pub next_volume: u32,
    pub next_record: u64,
    pub domains: BTreeMap<u32, Domain>,
    pub records: HashMap<u64, Record>,
    pub volumes: BTreeMap<u32, VolumeMeta>,
}

impl Meta {
    /// An upper bound of the encoded size (every record counted with a
    /// fingerprint), cheap enough to evaluate on every allocation.
    pub(crate) fn encoded_size_bound(&self) -> usize {
        let volumes: usize = self
            .volumes
            .values()
            .map(|v| VOLUME_BYTES + v.name.len() + v.map.len() * ENTRY_BYTES)
            .sum();
        8 + 4
            + 8
            + 4
            + self.domains.len() * DOMAIN_BYTES
            + 8
            + self.records.len() * RECORD_BYTES
            + 4
            + volumes
    }

    /// Extra bytes the checkpoint grows by for `entries` more map entries
    /// and `records` more records.
    pub(crate) fn growth(entries: usize, records: usize) -> usize {
        entries * ENTRY_BYTES + records * RECORD_BYTES
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.buf.reserve(self.encoded_size_bound());
        w.bytes(CHECKPOINT_MAGIC);
        w.u32(self.next_volume);
        w.u64(self.next_record);
        w.u32(self.domains.len() as u32);
        for (&id, domain) in &self.domains {
            w.domain(id, domain);
        }
        w.u64(self.records.len() as u64);
        for (&id, rec) in &self.records {
            w.u64(id);
            w.record(rec);
        }
        w.u32(self.volumes.len() as u32);
        for (&id, vol) in &self.volumes {
            w.u32(id);
            w.volume_header(vol);
            w.u64(vol.map.len() as u64);
            for (&lba, &rid) in &vol.map {
                w.u64(lba);
                w.u64(rid);
            }
        }
        w.buf
    }

    /// Parses a checkpoint payload. Cross-references (record ids, block
    /// numbers) are checked by the pool when it rebuilds its state.
    pub(crate) fn decode(payload: &[u8]) -> Result<Self, VolumeError> {
        let mut r = Reader::new(payload);
        if r.take(8)? != CHECKPOINT_MAGIC {
            return Err(VolumeError::Corrupt("bad checkpoint magic".into()));
        }
        let mut meta = Meta {
            next_volume: r.u32()?,
            next_record: r.u64()?,
            ..Meta::default()
        };
        let domains = r.u32()?;
        let domains = r.count(u64::from(domains), DOMAIN_BYTES)?;
        for _ in 0..domains {
            let (id, domain) = r.domain()?;
            if meta.domains.insert(id, domain).is_some() {
                return Err(VolumeError::Corrupt(format!("domain {id} twice")));
            }
        }
        let records = r.u64()?;
        let records = r.count(records, RECORD_BYTES - 32)?;
        meta.records.reserve(records);
        for _ in 0..records {
            let id = r.u64()?;
            let rec = r.record(id, meta.next_record)?;
            if meta.records.insert(id, rec).is_some() {
                return Err(VolumeError::Corrupt(format!("record {id} twice")));
            }
        }
        let volumes = r.u32()?;
        let volumes = r.count(u64::from(volumes), VOLUME_BYTES)?;
        for _ in 0..volumes {
            let id = r.u32()?;
            let mut vol = r.volume_header()?;
            let entries = r.u64()?;
            let entries = r.count(entries, ENTRY_BYTES)?;
            for _ in 0..entries {
                let lba = r.u64()?;
                let rid = r.u64()?;
                if lba >= vol.size_blocks || vol.map.insert(lba, rid).is_some() {
                    return Err(VolumeError::Corrupt(format!(
                        "volume {}: bad entry {lba}",
                        vol.name
                    )));
                }
            }
            if id >= meta.next_volume || !meta.domains.contains_key(&vol.domain) {
                return Err(VolumeError::Corrupt(format!(
                    "volume {} malformed",
                    vol.name
                )));
            }
            if meta.volumes.insert(id, vol).is_some() {
                return Err(VolumeError::Corrupt(format!("volume {id} twice")));
            }
        }
        if !r.is_empty() {
            return Err(VolumeError::Corrupt("trailing bytes in checkpoint".into()));
        }
        Ok(meta)
    }
}

/// Where a journal block sits in the journal of one generation.
pub(crate) struct JournalPosition {
    pub generation: u64,
    pub seq: u64,
    pub next: u64,
    /// The block ends the payload of one flush.
    pub last: bool,
    /// Hash of that flush's whole payload: blocks of a flush that never
    /// completed cannot be spliced with blocks of a later one.
    pub flush_hash: [u8; 32],
}

/// Builds a journal block.
pub(crate) fn journal_block(pos: &JournalPosition, chunk: &[u8]) -> Vec<u8> {
    let mut w = Writer::default();
    w.bytes(JOURNAL_MAGIC);
    w.u64(pos.generation);
    w.u64(pos.seq);
    w.u64(pos.next);
    w.u32(chunk.len() as u32);
    w.u8(u8::from(pos.last));
    w.bytes(&pos.flush_hash);
    w.bytes(chunk);
    w.buf.resize(BLOCK_SIZE - 32, 0);
    let sum = blake3::hash(&w.buf);
    w.bytes(sum.as_bytes());
    w.buf
}

/// Parses a journal block expected at `seq` of `generation`; `None` marks
/// the end of the journal (never written, torn, or stale).
pub(crate) fn parse_journal_block(
    block: &[u8],
    generation: u64,
    seq: u64,
) -> Option<(JournalPosition, &[u8])> {
    if block.len() != BLOCK_SIZE
        || blake3::hash(&block[..BLOCK_SIZE - 32]).as_bytes() != &block[BLOCK_SIZE - 32..]
    {
        return None;
    }
    let mut r = Reader::new(&block[..BLOCK_SIZE - 32]);
    if r.take(8).ok()? != JOURNAL_MAGIC {
        return None;
    }
    let pos = JournalPosition {
        generation: r.u64().ok()?,
        seq: r.u64().ok()?,
        next: r.u64().ok()?,
        last: false,
        flush_hash: [0; 32],
    };
    let len = r.u32().ok()? as usize;
    let last = r.flag().ok()?;
    let flush_hash = r.array().ok()?;
    if pos.generation != generation || pos.seq != seq || len > JOURNAL_PAYLOAD {
        return None;
    }
    let chunk = r.take(len).ok()?;
    Some((
        JournalPosition {
            last,
            flush_hash,
            ..pos
        },
        chunk,
    ))
}

/// A management operation, journaled as what it did rather than as the
/// metadata it produced, so that a snapshot of a large volume costs a few
/// bytes of journal instead of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum VolumeOp {
    /// A new, empty volume; `domain` is its key domain if that is new too.
    Create {
        id: u32,
        volume: VolumeMeta,
        domain: Option<(u32, Domain)>,
    },
    /// Snapshot or clone `source` as volume `id`.
    Copy {
        id: u32,
        source: u32,
        name: String,
        kind: VolumeKind,
    },
    Revert {
        volume: u32,
        snapshot: u32,
    },
    Delete {
        id: u32,
    },
    Resize {
        id: u32,
        size_blocks: u64,
    },
}

impl VolumeOp {
    /// Applies the operation to metadata the way the pool did in memory.
    /// Reference counts are derived afterwards, and records that died are
    /// in the delta's `removed` list.
    pub(crate) fn apply(self, meta: &mut Meta) -> Result<(), VolumeError> {
        let bad = |what: &str| VolumeError::Corrupt(format!("journal: {what}"));
        match self {
            VolumeOp::Create { id, volume, domain } => {
                if let Some((did, d)) = domain {
                    meta.domains.insert(did, d);
                }
                if meta.volumes.contains_key(&id) || !meta.domains.contains_key(&volume.domain) {
                    return Err(bad("volume created twice or without its domain"));
                }
                meta.volumes.insert(id, volume);
                meta.next_volume = meta.next_volume.max(id + 1);
            }
            VolumeOp::Copy {
                id,
                source,
                name,
                kind,
            } => {
                let src = meta
                    .volumes
                    .get(&source)
                    .ok_or_else(|| bad("copy of a missing volume"))?;
                let copy = VolumeMeta {
                    name,
                    kind,
                    parent: Some(source),
                    ..src.clone()
                };
                if meta.volumes.insert(id, copy).is_some() {
                    return Err(bad("copy over an existing volume"));
                }
                meta.next_volume = meta.next_volume.max(id + 1);
            }
            VolumeOp::Revert { volume, snapshot } => {
                let snap = meta
                    .volumes
                    .get(&snapshot)
                    .ok_or_else(|| bad("revert to a missing snapshot"))?;
                let (map, size_blocks) = (snap.map.clone(), snap.size_blocks);
                let vol = meta
                    .volumes
                    .get_mut(&volume)
                    .ok_or_else(|| bad("revert of a missing volume"))?;
                vol.map = map;
                vol.size_blocks = size_blocks;
            }
            VolumeOp::Delete { id } => {
                let vol = meta
                    .volumes
                    .remove(&id)
                    .ok_or_else(|| bad("delete of a missing volume"))?;
                if vol.domain != 0 && !meta.volumes.values().any(|v| v.domain == vol.domain) {
                    meta.domains.remove(&vol.domain);
                }
            }
            VolumeOp::Resize { id, size_blocks } => {
                let vol = meta
                    .volumes
                    .get_mut(&id)
                    .ok_or_else(|| bad("resize of a missing volume"))?;
                vol.map.retain(|&lba, _| lba < size_blocks);
                vol.size_blocks = size_blocks;
            }
        }
        Ok(())
    }

    fn encode(&self, w: &mut Writer) {
        match self {
            VolumeOp::Create { id, volume, domain } => {
                w.u8(0);
                w.u32(*id);
                w.volume_header(volume);
                match domain {
                    Some((did, d)) => {
                        w.u8(1);
                        w.domain(*did, d);
                    }
                    None => w.u8(0),
                }
            }
            VolumeOp::Copy {
                id,
                source,
                name,
                kind,
            } => {
                w.u8(1);
                w.u32(*id);
                w.u32(*source);
                w.name(name);
                w.kind(*kind);
            }
            VolumeOp::Revert { volume, snapshot } => {
                w.u8(2);
                w.u32(*volume);
                w.u32(*snapshot);
            }
            VolumeOp::Delete { id } => {
                w.u8(3);
                w.u32(*id);
            }
            VolumeOp::Resize { id, size_blocks } => {
                w.u8(4);
                w.u32(*id);
                w.u64(*size_blocks);
            }
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, VolumeError> {
        Ok(match r.u8()? {
            0 => VolumeOp::Create {
                id: r.u32()?,
                volume: r.volume_header()?,
                domain: if r.flag()? { Some(r.domain()?) } else { None },
            },
            1 => VolumeOp::Copy {
                id: r.u32()?,
                source: r.u32()?,
                name: r.name()?,
                kind: r.kind()?,
            },
            2 => VolumeOp::Revert {
                volume: r.u32()?,
                snapshot: r.u32()?,
            },
            3 => VolumeOp::Delete { id: r.u32()? },
            4 => VolumeOp::Resize {
                id: r.u32()?,
                size_blocks: r.u64()?,
            },
            tag => return Err(VolumeError::Corrupt(format!("journal op {tag}"))),
        })
    }
}

/// What changed between two durable points, as written to the journal:
/// records created and still live, records moved, records that died, the
/// final value of every map entry touched, and the management operations
/// done. Replay applies them in that order (removals last), which matches
/// the pool because an operation is journaled as soon as it is done.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Delta {
    pub next_record: u64,
    pub created: Vec<(u64, Record)>,
    /// Durable records moved by compaction, with their new location.
    pub moved: Vec<(u64, Record)>,
    pub removed: Vec<u64>,
    /// (volume, logical block, record id or [`ZERO_ENTRY`]; `None` unmaps).
    pub changes: Vec<(u32, u64, Option<u64>)>,
    pub ops: Vec<VolumeOp>,
}

impl Delta {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u64(self.next_record);
        w.u32(self.created.len() as u32);
        for (id, rec) in &self.created {
            w.u64(*id);
            w.record(rec);
        }
        w.u32(self.moved.len() as u32);
        for (id, rec) in &self.moved {
            w.u64(*id);
            w.record(rec);
        }
        w.u32(self.removed.len() as u32);
        for id in &self.removed {
            w.u64(*id);
        }
        w.u32(self.changes.len() as u32);
        for &(vol, lba, entry) in &self.changes {
            w.u32(vol);
            w.u64(lba);
            w.u64(entry.unwrap_or(UNMAPPED));
        }
        w.u32(self.ops.len() as u32);
        for op in &self.ops {
            op.encode(&mut w);
        }
        w.buf
    }

    pub(crate) fn decode(payload: &[u8]) -> Result<Self, VolumeError> {
        let mut r = Reader::new(payload);
        let mut delta = Delta {
            next_record: r.u64()?,
            ..Delta::default()
        };
        let created = r.u32()?;
        for _ in 0..r.count(u64::from(created), RECORD_BYTES - 32)? {
            let id = r.u64()?;
            delta.created.push((id, r.record(id, delta.next_record)?));
        }
        let moved = r.u32()?;
        for _ in 0..r.count(u64::from(moved), RECORD_BYTES - 32)? {
            let id = r.u64()?;
            delta.moved.push((id, r.record(id, delta.next_record)?));
        }
        let removed = r.u32()?;
        for _ in 0..r.count(u64::from(removed), 8)? {
            delta.removed.push(r.u64()?);
        }
        let changes = r.u32()?;
        for _ in 0..r.count(u64::from(changes), 20)? {
            let (vol, lba, rid) = (r.u32()?, r.u64()?, r.u64()?);
            delta
                .changes
                .push((vol, lba, Some(rid).filter(|&r| r != UNMAPPED)));
        }
        let ops = r.u32()?;
        for _ in 0..r.count(u64::from(ops), 5)? {
            delta.ops.push(VolumeOp::decode(&mut r)?);
        }
        if !r.is_empty() {
            return Err(VolumeError::Corrupt("trailing bytes in journal".into()));
        }
        Ok(delta)
    }

    /// Applies the delta to a checkpoint's metadata; reference counts and
    /// block usage are derived afterwards, as for a checkpoint alone.
    pub(crate) fn apply(self, meta: &mut Meta) -> Result<(), VolumeError> {
        meta.next_record = meta.next_record.max(self.next_record);
        for (id, rec) in self.created {
            if meta.records.insert(id, rec).is_some() {
                return Err(VolumeError::Corrupt(format!(
                    "journal recreates record {id}"
                )));
            }
        }
        for (id, rec) in self.moved {
            match meta.records.get_mut(&id) {
                Some(old) => *old = rec,
                None => {
                    return Err(VolumeError::Corrupt(format!(
                        "journal moves missing record {id}"
                    )))
                }
            }
        }
        for (vol, lba, entry) in self.changes {
            let v = meta
                .volumes
                .get_mut(&vol)
                .filter(|v| lba < v.size_blocks)
                .ok_or_else(|| VolumeError::Corrupt(format!("journal maps #{vol}:{lba}")))?;
            match entry {
                Some(rid) => v.map.insert(lba, rid),
                None => v.map.remove(&lba),
            };
        }
        for op in self.ops {
            op.apply(meta)?;
        }
        for id in self.removed {
            meta.records.remove(&id);
        }
        Ok(())
    }
}

/// Little-endian encoder.
#[derive(Default)]
struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }
    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.bytes(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    fn name(&mut self, name: &str) {
        self.u16(name.len() as u16);
        self.bytes(name.as_bytes());
    }
    fn kind(&mut self, kind: VolumeKind) {
        self.u8(match kind {
            VolumeKind::Writable => 0,
            VolumeKind::Snapshot => 1,
        });
    }
    /// A volume's fields but its map.
    fn volume_header(&mut self, vol: &VolumeMeta) {
        self.name(&vol.name);
        self.kind(vol.kind);
        self.u64(vol.size_blocks);
        self.u32(vol.domain);
        self.u8(u8::from(vol.services.zero_detect));
        self.u8(u8::from(vol.services.dedup));
        self.u8(vol.services.compression.code());
        self.u32(vol.parent.unwrap_or(NO_PARENT));
    }
    fn domain(&mut self, id: u32, domain: &Domain) {
        self.u32(id);
        self.u8(u8::from(domain.encrypted));
        self.bytes(&domain.check_value);
    }
    fn record(&mut self, rec: &Record) {
        self.u64(rec.block);
        self.u16(rec.unit);
        self.u16(rec.units);
        self.u8(rec.codec.code());
        self.u16(rec.len);
        self.u32(rec.domain);
        self.u32(rec.crc);
        match &rec.fingerprint {
            Some(fp) => {
                self.u8(1);
                self.bytes(fp);
            }
            None => self.u8(0),
        }
    }
}

/// Bounds-checked little-endian decoder.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn is_empty(&self) -> bool {
        self.pos == self.buf.len()
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], VolumeError> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|&end| end <= self.buf.len())
            .ok_or_else(|| VolumeError::Corrupt("metadata truncated".into()))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], VolumeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, VolumeError> {
        Ok(self.take(1)?[0])
    }
    fn flag(&mut self) -> Result<bool, VolumeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(VolumeError::Corrupt(format!("flag byte {v}"))),
        }
    }
    fn u16(&mut self) -> Result<u16, VolumeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, VolumeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, VolumeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn name(&mut self) -> Result<String, VolumeError> {
        let len = usize::from(self.u16()?);
        std::str::from_utf8(self.take(len)?)
            .map(str::to_string)
            .map_err(|_| VolumeError::Corrupt("volume name not UTF-8".into()))
    }
    fn kind(&mut self) -> Result<VolumeKind, VolumeError> {
        match self.u8()? {
            0 => Ok(VolumeKind::Writable),
            1 => Ok(VolumeKind::Snapshot),
            k => Err(VolumeError::Corrupt(format!("volume kind {k}"))),
        }
    }
    /// A volume's fields but its map (which is left empty).
    fn volume_header(&mut self) -> Result<VolumeMeta, VolumeError> {
        Ok(VolumeMeta {
            name: self.name()?,
            kind: self.kind()?,
            size_blocks: self.u64()?,
            domain: self.u32()?,
            services: Services {
                zero_detect: self.flag()?,
                dedup: self.flag()?,
                compression: Compression::from_code(self.u8()?)?,
            },
            parent: Some(self.u32()?).filter(|&p| p != NO_PARENT),
            map: BTreeMap::new(),
        })
    }
    fn domain(&mut self) -> Result<(u32, Domain), VolumeError> {
        Ok((
            self.u32()?,
            Domain {
                encrypted: self.flag()?,
                check_value: self.array()?,
            },
        ))
    }

    /// Parses record `id`'s fields, checking that they describe a possible
    /// location; `next_record` bounds the ids handed out so far.
    fn record(&mut self, id: u64, next_record: u64) -> Result<Record, VolumeError> {
        let rec = Record {
            block: self.u64()?,
            unit: self.u16()?,
            units: self.u16()?,
            codec: Compression::from_code(self.u8()?)?,
            len: self.u16()?,
            domain: self.u32()?,
            crc: self.u32()?,
            fingerprint: if self.flag()? {
                Some(self.array()?)
            } else {
                None
            },
            refs: 0,
        };
        let end = usize::from(rec.unit) + usize::from(rec.units);
        let raw = rec.codec == Compression::None;
        if rec.units == 0
            || end > UNITS_PER_BLOCK
            || usize::from(rec.len) > usize::from(rec.units) * super::reduce::UNIT
            || (raw && (rec.unit != 0 || usize::from(rec.units) != UNITS_PER_BLOCK))
            || id >= next_record
        {
            return Err(VolumeError::Corrupt(format!("record {id} malformed")));
        }
        Ok(rec)
    }

    /// Checks that `count` items of at least `min_size` bytes each can
    /// still be in the buffer, so a corrupt count cannot make us allocate.
    fn count(&self, count: u64, min_size: usize) -> Result<usize, VolumeError> {
        let left = (self.buf.len() - self.pos) as u64;
        match count.checked_mul(min_size as u64) {
            Some(bytes) if bytes <= left => Ok(count as usize),
            _ => Err(VolumeError::Corrupt(format!(
                "count {count} exceeds metadata"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Meta {
        let mut meta = Meta {
            next_volume: 3,
            next_record: 10,
            ..Meta::default()
        };
        meta.domains.insert(
            0,
            Domain {
                encrypted: false,
                check_value: [0; CHECK_VALUE_LEN],
            },
        );
        meta.domains.insert(
            1,
            Domain {
                encrypted: true,
                check_value: [7; CHECK_VALUE_LEN],
            },
        );
        meta.records.insert(
            4,
            Record {
                block: 9,
                unit: 3,
                units: 20,
                codec: Compression::Zstd,
                len: 311,
                domain: 1,
                crc: 0,
                fingerprint: Some([1; 32]),
                refs: 0,
            },
        );
        meta.records.insert(
            5,
            Record {
                block: 12,
                unit: 0,
                units: UNITS_PER_BLOCK as u16,
                codec: Compression::None,
                len: BLOCK_SIZE as u16,
                domain: 0,
                crc: 0,
                fingerprint: None,
                refs: 0,
            },
        );
        let mut map = BTreeMap::new();
        map.insert(0, 4);
        map.insert(7, ZERO_ENTRY);
        meta.volumes.insert(
            2,
            VolumeMeta {
                name: "vol".into(),
                kind: VolumeKind::Snapshot,
                size_blocks: 8,
                domain: 1,
                services: Services {
                    zero_detect: true,
                    dedup: true,
                    compression: Compression::Lz4,
                },
                parent: Some(1),
                map,
            },
        );
        meta
    }

    #[test]
    fn checkpoint_round_trips_and_size_bound_holds() {
        let meta = sample();
        let bytes = meta.encode();
        assert!(bytes.len() <= meta.encoded_size_bound());
        assert_eq!(Meta::decode(&bytes).unwrap(), meta);
        for cut in [0, 7, 30, bytes.len() - 1] {
            assert!(Meta::decode(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn journal_delta_round_trips_and_blocks_chain() {
        let meta = sample();
        let delta = Delta {
            next_record: 10,
            created: vec![(4, meta.records[&4].clone())],
            moved: vec![(
                5,
                Record {
                    block: 77,
                    ..meta.records[&5].clone()
                },
            )],
            removed: vec![5],
            changes: vec![(2, 1, Some(4)), (2, 3, None), (2, 5, Some(ZERO_ENTRY))],
            ops: vec![
                VolumeOp::Copy {
                    id: 3,
                    source: 2,
                    name: "copy".into(),
                    kind: VolumeKind::Writable,
                },
                VolumeOp::Resize {
                    id: 3,
                    size_blocks: 4,
                },
                VolumeOp::Delete { id: 2 },
            ],
        };
        let payload = delta.encode();
        assert_eq!(Delta::decode(&payload).unwrap(), delta);
        assert!(Delta::decode(&payload[..payload.len() - 1]).is_err());
        let pos = JournalPosition {
            generation: 7,
            seq: 3,
            next: 40,
            last: true,
            flush_hash: [9; 32],
        };
        let mut block = journal_block(&pos, &payload);
        let (parsed, chunk) = parse_journal_block(&block, 7, 3).unwrap();
        assert_eq!(
            (parsed.next, parsed.last, parsed.flush_hash, chunk),
            (40, true, [9; 32], &payload[..])
        );
        assert!(parse_journal_block(&block, 8, 3).is_none());
        assert!(parse_journal_block(&block, 7, 4).is_none());
        block[100] ^= 1;
        assert!(parse_journal_block(&block, 7, 3).is_none());
        let mut applied = meta.clone();
        applied.records.remove(&4);
        delta.apply(&mut applied).unwrap();
        assert!(!applied.records.contains_key(&5));
        assert!(!applied.volumes.contains_key(&2));
        // The copy saw the map changes (replayed before operations) and
        // lost what the resize cut off.
        let copy = &applied.volumes[&3];
        assert_eq!(
            (copy.size_blocks, copy.map.get(&1), copy.map.get(&5)),
            (4, Some(&4), None)
        );
        assert_eq!(applied.next_volume, 4);
    }

    #[test]
    fn superblock_round_trips_and_rejects_damage() {
        let sb = Superblock {
            generation: 42,
            total_blocks: 1000,
            checkpoint_head: 17,
            checkpoint_len: 5000,
            checkpoint_blocks: 2,
            checkpoint_hash: [3; 32],
            journal_head: 99,
        };
        let mut bytes = sb.encode();
        assert_eq!(Superblock::decode(&bytes), Some(sb));
        bytes[20] ^= 1;
        assert_eq!(Superblock::decode(&bytes), None);
        assert_eq!(Superblock::decode(&[0u8; BLOCK_SIZE]), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Random bytes and bit flips in a valid checkpoint never panic the
        /// decoder.
        #[test]
        fn decoder_survives_garbage(flips in proptest::collection::vec((0usize..4096, 0u8..8), 0..6),
                                    garbage in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut bytes = sample().encode();
            for (pos, bit) in flips {
                let len = bytes.len();
                bytes[pos % len] ^= 1 << bit;
            }
            let _ = Meta::decode(&bytes);
            let _ = Meta::decode(&garbage);
            let _ = Superblock::decode(&garbage);
        }
    }
}
