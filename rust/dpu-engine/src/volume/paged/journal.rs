//! The snapshot journal of a paged pool: a snapshot is durable once a
//! one-block record naming it is, without waiting for a commit of
//! everything dirty; the next regular commit carries the snapshot itself
//! (its catalog entry and the reference on the shared root).
//!
//! Two metadata blocks (root slots [`super::slots::JOURNAL_A`] and
//! [`super::slots::JOURNAL_B`]) hold records, written in turn, one at a
//! time, each holding every snapshot not yet in the durable superblock.
//! A snapshot gets a number; root slot [`super::slots::JOURNALED`] holds
//! the highest number whose snapshot the committed state contains.
//!
//! Crash argument (see also Documentation/engine-volumes.rst): a record
//! is written whole or not at all as far as open is concerned (its seal
//! covers the block, and a torn record fails it); because the writes take
//! turns between the two blocks and each holds everything the one before
//! held but not yet committed, a torn write leaves the other block with
//! every snapshot acknowledged before it started. At open, every entry of
//! either block numbered above the superblock's [`super::slots::JOURNALED`]
//! is replayed in number order against the recovered state: the snapshot
//! shares the origin's root as that state has it, so a snapshot replayed
//! holds exactly what its origin holds after the crash. The pool journals
//! a snapshot only when no change other than writes, discards and
//! journaled snapshots is pending in any generation after the durable
//! one, so the recovered catalog is the one the snapshot was taken
//! against, apart from those snapshots, which replay before it.

use std::sync::{Arc, Mutex, MutexGuard};

use super::catalog::VolumeEntry;
use super::slots::{JOURNALED, JOURNAL_A, JOURNAL_B, NEXT_VOLUME};
use super::PagedState;
use crate::media::{Media, MediaError};
use crate::metadata::block_cache::{seal, verify};
use crate::metadata::btree;
use crate::metadata::transaction::TransactionManager;
use crate::metadata::{blank_block, le_u64, put_u64, MetaResult, META_BLOCK};
use crate::volume::{VolumeError, VolumeKind};

pub(crate) const JOURNAL_MAGIC: u32 = u32::from_le_bytes(*b"DPMj");

/// Record layout after the 16-byte block header: the entry count, then the
/// entries (number, id, origin, name length, name).
const COUNT: usize = 16;
const ENTRIES: usize = 24;
const ENTRY_FIXED: usize = 8 + 4 + 4 + 2;

/// One journaled snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JournalEntry {
    pub number: u64,
    pub id: u32,
    pub origin: u32,
    pub name: String,
}

fn encoded_len(entries: &[JournalEntry]) -> usize {
    ENTRIES
        + entries
            .iter()
            .map(|e| ENTRY_FIXED + e.name.len())
            .sum::<usize>()
}

/// Whether `entries` fit one record.
pub(crate) fn fits(entries: &[JournalEntry]) -> bool {
    encoded_len(entries) <= META_BLOCK
}

/// The sealed record of `entries` for metadata block `block`.
fn encode(block: u64, entries: &[JournalEntry]) -> Result<Vec<u8>, VolumeError> {
    if !fits(entries) {
        return Err(VolumeError::InvalidArgument(
            "snapshot journal record overflows its block".into(),
        ));
    }
    let mut out = blank_block(JOURNAL_MAGIC);
    put_u64(&mut out, COUNT, entries.len() as u64);
    let mut at = ENTRIES;
    for e in entries {
        out[at..at + 8].copy_from_slice(&e.number.to_le_bytes());
        out[at + 8..at + 12].copy_from_slice(&e.id.to_le_bytes());
        out[at + 12..at + 16].copy_from_slice(&e.origin.to_le_bytes());
        out[at + 16..at + 18].copy_from_slice(&(e.name.len() as u16).to_le_bytes());
        at += ENTRY_FIXED;
        out[at..at + e.name.len()].copy_from_slice(e.name.as_bytes());
        at += e.name.len();
    }
    seal(block, &mut out);
    Ok(out)
}

/// The entries of the record in `data` (metadata block `block`); none if
/// the block holds no valid record (never written, or torn).
fn decode(block: u64, data: &[u8]) -> Result<Vec<JournalEntry>, VolumeError> {
    if verify(block, data, JOURNAL_MAGIC).is_err() {
        return Ok(Vec::new());
    }
    let bad = |why: &str| VolumeError::Corrupt(format!("snapshot journal block {block}: {why}"));
    let count = le_u64(data, COUNT);
    let mut entries = Vec::new();
    let mut at = ENTRIES;
    for _ in 0..count {
        if at + ENTRY_FIXED > data.len() {
            return Err(bad("entries past the block"));
        }
        let u32_at = |at: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&data[at..at + 4]);
            u32::from_le_bytes(b)
        };
        let len = usize::from(u16::from_le_bytes([data[at + 16], data[at + 17]]));
        let start = at + ENTRY_FIXED;
        if len == 0 || start + len > data.len() {
            return Err(bad("bad name length"));
        }
        let name = std::str::from_utf8(&data[start..start + len])
            .map_err(|_| bad("name is not UTF-8"))?
            .to_string();
        entries.push(JournalEntry {
            number: le_u64(data, at),
            id: u32_at(at + 8),
            origin: u32_at(at + 12),
            name,
        });
        at = start + len;
    }
    Ok(entries)
}

/// Every entry of both blocks numbered above `journaled`, in number order,
/// each once.
pub(crate) fn read(
    media: &dyn Media,
    blocks: [u64; 2],
    journaled: u64,
) -> Result<Vec<JournalEntry>, VolumeError> {
    let mut all: Vec<JournalEntry> = Vec::new();
    for block in blocks {
        let mut data = vec![0u8; META_BLOCK];
        media.read_at(block * META_BLOCK as u64, &mut data)?;
        all.extend(decode(block, &data)?);
    }
    all.retain(|e| e.number > journaled);
    all.sort_by_key(|e| e.number);
    all.dedup();
    if all.windows(2).any(|w| w[0].number == w[1].number) {
        return Err(VolumeError::Corrupt(
            "snapshot journal: two snapshots under one number".into(),
        ));
    }
    Ok(all)
}

struct Writer {
    /// The block the next record goes to (index into `blocks`).
    next: usize,
    /// Every entry numbered up to this is in a record on the media.
    written: u64,
    /// A record write or flush failed: the media's state is unknown.
    failed: bool,
}

/// The journal of an open pool: the entries not yet in the durable
/// superblock, and the writer of records, which runs without the pool
/// lock.
pub(crate) struct Journal {
    media: Arc<dyn Media>,
    blocks: [u64; 2],
    pending: Mutex<Vec<JournalEntry>>,
    writer: Mutex<Writer>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data: a panic elsewhere leaves it consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Journal {
    pub(crate) fn new(media: Arc<dyn Media>, blocks: [u64; 2], written: u64) -> Arc<Self> {
        Arc::new(Journal {
            media,
            blocks,
            pending: Mutex::new(Vec::new()),
            writer: Mutex::new(Writer {
                next: 0,
                written,
                failed: false,
            }),
        })
    }

    pub(crate) fn blocks(&self) -> [u64; 2] {
        self.blocks
    }

    /// Whether one more entry named `name` fits the next record.
    pub(crate) fn has_room(&self, name: &str) -> bool {
        let pending = lock(&self.pending);
        encoded_len(&pending) + ENTRY_FIXED + name.len() <= META_BLOCK
    }

    /// Adds an entry (under the pool lock, in number order).
    pub(crate) fn push(&self, entry: JournalEntry) {
        lock(&self.pending).push(entry);
    }

    /// The durable superblock now holds every snapshot numbered up to
    /// `journaled`: their entries need not be written again.
    pub(crate) fn committed(&self, journaled: u64) {
        lock(&self.pending).retain(|e| e.number > journaled);
    }

    /// Makes entry `number` durable: writes a record of every pending
    /// entry to the block not written last, and flushes. Records are
    /// written one at a time; one write covers every entry added before
    /// it started, so a caller whose entry an earlier write covered
    /// returns at once. Call without the pool lock.
    pub(crate) fn make_durable(&self, number: u64) -> Result<(), VolumeError> {
        let mut writer = lock(&self.writer);
        if writer.failed {
            return Err(VolumeError::Media(MediaError::Unrecoverable(
                "the snapshot journal failed or was closed; reopen the pool".into(),
            )));
        }
        if writer.written >= number {
            return Ok(());
        }
        let entries = lock(&self.pending).clone();
        // Pushed before this call, so gone only if a durable commit holds
        // it.
        if !entries.iter().any(|e| e.number == number) {
            return Ok(());
        }
        let upto = entries.iter().map(|e| e.number).max().unwrap_or(0);
        let block = self.blocks[writer.next];
        let written = encode(block, &entries).and_then(|record| {
            self.media.write_at(block * META_BLOCK as u64, &record)?;
            self.media.flush()?;
            Ok(())
        });
        if let Err(e) = written {
            writer.failed = true;
            return Err(e);
        }
        writer.next ^= 1;
        writer.written = writer.written.max(upto);
        Ok(())
    }

    /// No record is written from now on (the pool is closed); waits for
    /// one being written.
    pub(crate) fn close(&self) {
        lock(&self.writer).failed = true;
    }
}

/// Allocates the journal's two blocks in the running transaction (held by
/// their root slots, one reference each).
pub(crate) fn allocate(tm: &mut TransactionManager) -> MetaResult<()> {
    for slot in [JOURNAL_A, JOURNAL_B] {
        let block = tm.new_block()?;
        tm.set_root(slot, block)?;
    }
    Ok(())
}

impl PagedState {
    /// The journal's blocks, if the pool has them.
    pub(super) fn journal_blocks(&self) -> Option<[u64; 2]> {
        let blocks = [self.tm.root(JOURNAL_A), self.tm.root(JOURNAL_B)];
        (blocks[0] != 0 && blocks[1] != 0).then_some(blocks)
    }

    /// At open: replays the snapshots journaled after the recovered
    /// state's commit, in number order, and commits them; a pool formatted
    /// before the journal gets its blocks (durable with the next commit,
    /// and used only from then on).
    pub(super) fn replay_journal(&mut self) -> Result<(), VolumeError> {
        let Some(blocks) = self.journal.as_ref().map(|j| j.blocks()) else {
            if self.tm.free_meta_blocks() > self.reserve {
                let result = allocate(&mut self.tm).map_err(VolumeError::from);
                self.changing(result)?;
                self.mark_structural();
                let blocks = self.journal_blocks().ok_or_else(|| {
                    VolumeError::Corrupt("snapshot journal blocks not allocated".into())
                })?;
                self.journal = Some(Journal::new(self.media.clone(), blocks, 0));
            }
            return Ok(());
        };
        if blocks.iter().any(|&b| b >= self.tm.meta_blocks()) || blocks[0] == blocks[1] {
            return Err(VolumeError::Corrupt(format!(
                "snapshot journal blocks {blocks:?} outside the metadata area"
            )));
        }
        let journaled = self.tm.root(JOURNALED);
        let entries = read(self.media.as_ref(), blocks, journaled)?;
        self.journal_number = journaled;
        for entry in &entries {
            self.replay(entry)?;
            self.journal_number = entry.number;
        }
        if !entries.is_empty() {
            self.commit()?;
        }
        Ok(())
    }

    /// Adds journaled snapshot `entry` to the recovered state: it shares
    /// its origin's root as this state has it.
    fn replay(&mut self, entry: &JournalEntry) -> Result<(), VolumeError> {
        let bad = |why: String| {
            VolumeError::Corrupt(format!(
                "snapshot journal entry {} ({}): {why}",
                entry.number, entry.name
            ))
        };
        let origin = self
            .volumes
            .get(&entry.origin)
            .cloned()
            .ok_or_else(|| bad(format!("origin #{} missing", entry.origin)))?;
        if self.volumes.contains_key(&entry.id) {
            return Err(bad(format!("volume #{} exists", entry.id)));
        }
        if self.volumes.values().any(|v| v.name == entry.name) {
            return Err(bad("name in use".into()));
        }
        let result = (|| {
            let root = btree::share(&mut self.tm, origin.root)?;
            let next = self.tm.root(NEXT_VOLUME).max(u64::from(entry.id) + 1);
            self.tm.set_root(NEXT_VOLUME, next)?;
            self.volumes.insert(
                entry.id,
                VolumeEntry {
                    name: entry.name.clone(),
                    kind: VolumeKind::Snapshot,
                    parent: Some(entry.origin),
                    root,
                    ..origin
                },
            );
            self.dirty_volumes.insert(entry.id);
            Ok(())
        })();
        self.changing(result)
    }

    /// Records that the running transaction holds a change a journaled
    /// snapshot cannot be replayed across.
    pub(super) fn mark_structural(&mut self) {
        self.structural = self.tm.generation() + 1;
    }

    /// Journals snapshot `id` of `origin` just added to the running
    /// transaction, if it can be (else the caller commits): the pool has a
    /// journal, the record has room, and nothing a replay cannot cross is
    /// pending (see the module's description).
    pub(super) fn journal_snapshot(&mut self, id: u32, origin: u32, name: &str) -> bool {
        let Some(journal) = &self.journal else {
            return false;
        };
        if self.structural > self.tm.durable_generation() || !journal.has_room(name) {
            return false;
        }
        self.journal_number += 1;
        journal.push(JournalEntry {
            number: self.journal_number,
            id,
            origin,
            name: name.to_string(),
        });
        self.journal_requested = Some(self.journal_number);
        self.journaled_snapshots += 1;
        true
    }

    /// The journal record the operation just run needs durable before it
    /// is acknowledged, and the journal to write it with (without the pool
    /// lock: [`Journal::make_durable`]).
    pub(crate) fn take_journal_request(&mut self) -> Option<(Arc<Journal>, u64)> {
        let number = self.journal_requested.take()?;
        Some((self.journal.clone()?, number))
    }

    /// A journal record could not be written: the media's state is
    /// unknown until the pool is reopened.
    pub(crate) fn journal_failed(&mut self) {
        self.failed = true;
        self.tm.fail();
    }

    /// A commit holding every snapshot numbered up to `journaled` is
    /// durable.
    pub(super) fn journal_committed(&mut self, journaled: u64) {
        if let Some(journal) = &self.journal {
            journal.committed(journaled);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(number: u64, name: &str) -> JournalEntry {
        JournalEntry {
            number,
            id: number as u32 + 7,
            origin: 3,
            name: name.to_string(),
        }
    }

    #[test]
    fn records_round_trip_and_torn_ones_read_as_empty() {
        let entries = vec![entry(4, "a"), entry(5, "snapshot-with-a-longer-name")];
        let mut record = encode(9, &entries).unwrap();
        assert_eq!(decode(9, &record).unwrap(), entries);
        // Read at another block: not this block's record.
        assert!(decode(10, &record).unwrap().is_empty());
        // A torn write (its second sector lost) fails the seal.
        record[600] ^= 0xff;
        assert!(decode(9, &record).unwrap().is_empty());
        // A record too full for its block is refused, not truncated.
        let many: Vec<JournalEntry> = (0..200).map(|i| entry(i, "0123456789abcdef")).collect();
        assert!(!fits(&many));
        assert!(encode(9, &many).is_err());
    }
}
