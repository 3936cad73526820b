//! [`ProtectedMedia`]: assembling, reading and writing a protected array.
//!
//! Locking: every row has a reader-writer lock (hashed over a fixed table).
//! Reads hold it shared; writes, rebuild and scrub hold it exclusive, so a
//! reconstruction never sees a half-updated row. Writes to different rows
//! commit concurrently: the journal lock only guards sequence numbers and
//! the set of transactions in flight, and is held across I/O only for a
//! checkpoint. Superblock updates are serialized by the metadata lock. Lock
//! order: row → journal → destage → metadata → pending and member table;
//! the last two are only ever held for short bookkeeping, never across I/O.
//! A transaction only ever waits for transactions with smaller sequence
//! numbers, which already hold their (single) row lock, so waits cannot
//! form a cycle; destaging takes no row lock.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::media::{check_range, Media, MediaError, MediaResult};

use super::codec::Layout;
use super::format::{
    blank_block, Geometry, JournalHeader, MemberState, Superblock, BLOCK, MAX_CHUNK,
    MAX_JOURNAL_SLOTS, SUPERBLOCK_COPIES,
};
use super::{ArrayState, MemberStatus, ProtectionStatus};

/// Granularity of partial-chunk updates and of scrub's repair: the codec
/// only ever sees whole sectors (erasure coding needs even lengths).
pub(super) const SECTOR: u64 = 512;
/// Row locks are hashed into this many locks; enough that unrelated rows
/// rarely share one, small enough to allocate up front.
const ROW_LOCKS: usize = 64;
/// Zeroing buffer size used when creating an array on dirty media.
const ZERO_FILL: usize = 1 << 20;

/// How to create an array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtectionConfig {
    pub layout: Layout,
    /// Bytes per chunk: a multiple of 512.
    pub chunk_size: u64,
    /// Journal slots per member; a checkpoint (flush of every member plus a
    /// superblock update) happens once per this many journaled writes.
    pub journal_slots: u64,
    /// Skip zero-filling the data area because the members already read as
    /// zeros (fresh sparse files): all-zero rows are consistent for every
    /// layout, since every code here is linear.
    pub assume_zeroed: bool,
}

impl ProtectionConfig {
    pub fn new(layout: Layout, chunk_size: u64) -> Self {
        ProtectionConfig {
            layout,
            chunk_size,
            journal_slots: 64,
            assume_zeroed: false,
        }
    }
}

/// One member slot of the array.
pub(super) struct Member {
    pub media: Option<Arc<dyn Media>>,
    pub state: MemberState,
    pub rebuilt_rows: u64,
    pub read_errors: u64,
    /// This incarnation's identity (see `Superblock::member_ids`).
    pub id: u64,
}

impl Member {
    /// Whether this member holds valid data for `row`.
    fn serves(&self, row: u64) -> bool {
        self.media.is_some()
            && match self.state {
                MemberState::Online => true,
                MemberState::Rebuilding => row < self.rebuilt_rows,
                MemberState::Failed | MemberState::Missing => false,
            }
    }

    /// Whether this member must receive writes and metadata at all.
    fn is_live(&self) -> bool {
        self.media.is_some() && matches!(self.state, MemberState::Online | MemberState::Rebuilding)
    }
}

struct Meta {
    generation: u64,
    checkpoint: u64,
}

struct Journal {
    next_seq: u64,
    /// Transactions from sequence allocation until their bytes are pending
    /// (journaled and visible to reads).
    in_flight: BTreeSet<u64>,
    /// Set while a member replacement waits for the journal to drain; new
    /// transactions wait until it is done.
    draining: bool,
}

/// Journaled bytes not yet written in place (write-back): the new content
/// of `member`'s chunk at `start` in some row.
#[derive(Clone)]
struct PendingWrite {
    seq: u64,
    member: usize,
    /// The member's identity when the write committed: destaging skips a
    /// member that has been replaced since (its rebuild copies the row).
    incarnation: u64,
    start: u64,
    bytes: Arc<Vec<u8>>,
}

/// A transaction's hold on its sequence number and journal slot; dropping
/// it (on success or error) ends the transaction.
struct Ticket<'a> {
    array: &'a ProtectedMedia,
    seq: u64,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        lock(&self.array.journal).in_flight.remove(&self.seq);
        self.array.journal_changed.notify_all();
    }
}

#[derive(Default)]
pub(super) struct Counters {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub degraded_reads: AtomicU64,
    pub journal_commits: AtomicU64,
    pub journal_replays: AtomicU64,
    pub rebuilt_rows: AtomicU64,
    pub read_repairs: AtomicU64,
}

/// The members that hold valid data for one row, by slot; taken under the
/// row's lock so it stays true for the whole row operation.
pub(super) struct RowView {
    pub slots: Vec<Option<Arc<dyn Media>>>,
}

impl RowView {
    pub fn missing(&self) -> Vec<bool> {
        self.slots.iter().map(Option::is_none).collect()
    }
}

/// A [`Media`] striped and protected over member media.
pub struct ProtectedMedia {
    pub(super) geometry: Geometry,
    members: RwLock<Vec<Member>>,
    row_locks: Vec<RwLock<()>>,
    journal: Mutex<Journal>,
    /// Signalled whenever a transaction ends or draining stops.
    journal_changed: Condvar,
    /// Committed bytes waiting to be written in place, by row, in commit
    /// order. Every read of a member's data overlays them.
    pending: Mutex<BTreeMap<u64, Vec<PendingWrite>>>,
    /// Serializes destaging, so pending bytes reach the media in order.
    destage_lock: Mutex<()>,
    meta: Mutex<Meta>,
    pub(super) counters: Counters,
}

/// Locks a mutex, carrying on after a panic elsewhere: every structure
/// behind these locks stays consistent between statements.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn unrecoverable(why: impl Into<String>) -> MediaError {
    MediaError::Unrecoverable(why.into())
}

/// A random 64-bit value for identities.
fn random_u64() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    // RandomState is seeded from the OS per process and per instance, which
    // is all the uniqueness an identity needs; the clock and pid only guard
    // against a platform with weak seeding.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    hasher.finish()
}

pub(super) fn new_uuid() -> [u8; 16] {
    let mut uuid = [0u8; 16];
    uuid[..8].copy_from_slice(&random_u64().to_le_bytes());
    uuid[8..].copy_from_slice(&random_u64().to_le_bytes());
    uuid
}

/// Reads both superblock copies of `media` and returns the newest valid one.
fn read_superblock(media: &dyn Media) -> Option<Superblock> {
    SUPERBLOCK_COPIES
        .iter()
        .filter_map(|at| {
            let mut block = vec![0u8; BLOCK as usize];
            media.read_at(*at, &mut block).ok()?;
            Superblock::decode(&block)
        })
        .max_by_key(|sb| sb.generation)
}

/// One logical piece of an I/O: data chunk `data` of a row, bytes
/// `offset..offset + len` of that chunk, at `at` in the caller's buffer.
pub(super) struct Piece {
    pub data: usize,
    pub offset: u64,
    pub len: u64,
    pub at: usize,
}

impl ProtectedMedia {
    /// Formats `members` (in member order) as a new array.
    pub fn create(config: ProtectionConfig, members: Vec<Arc<dyn Media>>) -> MediaResult<Self> {
        let layout = config.layout;
        layout.validate()?;
        let chunk = config.chunk_size;
        if members.len() != layout.members() {
            return Err(unrecoverable(format!(
                "{layout:?} needs {} members, got {}",
                layout.members(),
                members.len()
            )));
        }
        let chunk_ok = chunk > 0 && chunk.is_multiple_of(SECTOR) && chunk <= MAX_CHUNK;
        if !chunk_ok || !(2..=MAX_JOURNAL_SLOTS).contains(&config.journal_slots) {
            return Err(unrecoverable(format!(
                "chunk size must be a multiple of 512 up to {MAX_CHUNK}, \
                 journal slots 2 to {MAX_JOURNAL_SLOTS}"
            )));
        }
        let data_offset = Geometry::data_offset_for(chunk, config.journal_slots);
        let smallest = members.iter().map(|m| m.size()).min().unwrap_or(0);
        let rows = smallest.saturating_sub(data_offset) / chunk;
        if rows == 0 {
            return Err(unrecoverable("members too small for metadata and one row"));
        }
        let geometry = Geometry {
            uuid: new_uuid(),
            layout,
            chunk,
            journal_slots: config.journal_slots,
            data_offset,
            rows,
        };
        let slot_table = members
            .into_iter()
            .map(|media| Member {
                media: Some(media),
                state: MemberState::Online,
                rebuilt_rows: 0,
                read_errors: 0,
                id: random_u64(),
            })
            .collect();
        let array = Self::assemble(geometry, slot_table, 0, 0);
        if !config.assume_zeroed {
            array.zero_data_area()?;
        }
        array.persist()?;
        if array.state() == ArrayState::Failed {
            return Err(unrecoverable("members failed while creating the array"));
        }
        Ok(array)
    }

    /// Assembles an existing array from whatever members are present, in
    /// any order (each superblock names its member index). Absent members
    /// are `None` or simply left out. Replays the journal, so an array
    /// closed by a crash comes back consistent.
    pub fn open(members: Vec<Option<Arc<dyn Media>>>) -> MediaResult<Self> {
        let found: Vec<(Arc<dyn Media>, Superblock)> = members
            .into_iter()
            .flatten()
            .filter_map(|media| read_superblock(media.as_ref()).map(|sb| (media, sb)))
            .collect();
        // Media of another array may be mixed in: the array is the one most
        // media belong to (ties broken by generation), and its newest
        // superblock is authoritative.
        let votes = |uuid: &[u8; 16]| {
            found
                .iter()
                .filter(|(_, sb)| sb.geometry.uuid == *uuid)
                .count()
        };
        let newest = found
            .iter()
            .map(|(_, sb)| sb)
            .max_by_key(|sb| (votes(&sb.geometry.uuid), sb.generation))
            .cloned()
            .ok_or_else(|| unrecoverable("no member carries a valid superblock"))?;
        let geometry = newest.geometry;
        let count = geometry.layout.members();
        let mut present: Vec<Option<(Arc<dyn Media>, u64)>> = vec![None; count];
        for (media, sb) in found {
            if sb.geometry != geometry {
                continue;
            }
            // Media that was once this member but has since been replaced
            // carries an old identity: it is not this member any more.
            let current = sb.member_ids[sb.member_index] == newest.member_ids[sb.member_index];
            let newer = present[sb.member_index]
                .as_ref()
                .is_none_or(|(_, generation)| sb.generation > *generation);
            if current && newer {
                present[sb.member_index] = Some((media, sb.generation));
            }
        }
        let table = present
            .into_iter()
            .enumerate()
            .map(|(index, media)| {
                let recorded = newest.states[index];
                let state = match (media.is_some(), recorded) {
                    (true, MemberState::Online) => MemberState::Online,
                    (true, MemberState::Rebuilding) => MemberState::Rebuilding,
                    // A member that missed updates while away holds stale
                    // data: it can only come back through a rebuild.
                    (true, _) => MemberState::Failed,
                    (false, MemberState::Failed) => MemberState::Failed,
                    (false, _) => MemberState::Missing,
                };
                let live = matches!(state, MemberState::Online | MemberState::Rebuilding);
                Member {
                    media: media.filter(|_| live).map(|(m, _)| m),
                    state,
                    rebuilt_rows: newest.rebuilt_rows[index],
                    read_errors: 0,
                    id: newest.member_ids[index],
                }
            })
            .collect();
        let array = Self::assemble(
            geometry,
            table,
            newest.generation,
            newest.journal_checkpoint,
        );
        array.replay_journal()?;
        Ok(array)
    }

    fn assemble(
        geometry: Geometry,
        members: Vec<Member>,
        generation: u64,
        checkpoint: u64,
    ) -> Self {
        ProtectedMedia {
            geometry,
            members: RwLock::new(members),
            row_locks: (0..ROW_LOCKS).map(|_| RwLock::new(())).collect(),
            journal: Mutex::new(Journal {
                next_seq: checkpoint + 1,
                in_flight: BTreeSet::new(),
                draining: false,
            }),
            journal_changed: Condvar::new(),
            pending: Mutex::new(BTreeMap::new()),
            destage_lock: Mutex::new(()),
            meta: Mutex::new(Meta {
                generation,
                checkpoint,
            }),
            counters: Counters::default(),
        }
    }

    pub(super) fn members(&self) -> RwLockReadGuard<'_, Vec<Member>> {
        self.members.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn members_mut(&self) -> RwLockWriteGuard<'_, Vec<Member>> {
        self.members.write().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn row_lock(&self, row: u64) -> &RwLock<()> {
        &self.row_locks[(row % ROW_LOCKS as u64) as usize]
    }

    pub fn layout(&self) -> Layout {
        self.geometry.layout
    }

    /// The array's health, from its members' states.
    pub fn state(&self) -> ArrayState {
        let members = self.members();
        let lost: Vec<bool> = members
            .iter()
            .map(|m| matches!(m.state, MemberState::Failed | MemberState::Missing))
            .collect();
        // Member flags stand for slot flags here: mirrors do not rotate,
        // and parity layouts only count how many are lost.
        if !self.geometry.layout.can_decode(&lost) {
            ArrayState::Failed
        } else if members.iter().any(|m| m.state == MemberState::Rebuilding) {
            ArrayState::Rebuilding
        } else if lost.iter().any(|l| *l) {
            ArrayState::Degraded
        } else {
            ArrayState::Optimal
        }
    }

    /// State and counters, for the volume statistics.
    pub fn status(&self) -> ProtectionStatus {
        let members = self
            .members()
            .iter()
            .map(|m| MemberStatus {
                state: m.state,
                rebuilt_rows: m.rebuilt_rows,
                read_errors: m.read_errors,
            })
            .collect();
        let c = &self.counters;
        let rebuild = self
            .members()
            .iter()
            .enumerate()
            .find(|(_, m)| m.state == MemberState::Rebuilding)
            .map(|(i, m)| super::RebuildProgress {
                member: Some(i),
                rows_done: m.rebuilt_rows,
                rows_total: self.geometry.rows,
            });
        ProtectionStatus {
            state: self.state(),
            layout: self.geometry.layout,
            chunk: self.geometry.chunk,
            rows: self.geometry.rows,
            members,
            reads: c.reads.load(Ordering::Relaxed),
            writes: c.writes.load(Ordering::Relaxed),
            degraded_reads: c.degraded_reads.load(Ordering::Relaxed),
            journal_commits: c.journal_commits.load(Ordering::Relaxed),
            journal_replays: c.journal_replays.load(Ordering::Relaxed),
            rebuilt_rows: c.rebuilt_rows.load(Ordering::Relaxed),
            read_repairs: c.read_repairs.load(Ordering::Relaxed),
            rebuild,
        }
    }

    /// Takes a member out of service (operator action, or a test).
    pub fn fail_member(&self, member: usize) -> MediaResult<()> {
        if member >= self.geometry.layout.members() {
            return Err(unrecoverable(format!("no member {member}")));
        }
        self.mark_failed(member);
        Ok(())
    }

    /// Puts `media` in the place of a failed or missing member and starts
    /// rebuilding it; drive the rebuild with [`ProtectedMedia::rebuild_step`].
    pub fn replace_member(&self, member: usize, media: Arc<dyn Media>) -> MediaResult<()> {
        let g = &self.geometry;
        if member >= g.layout.members() {
            return Err(unrecoverable(format!("no member {member}")));
        }
        if media.size() < g.row_offset(g.rows) {
            return Err(unrecoverable("replacement member is too small"));
        }
        if matches!(
            self.members()[member].state,
            MemberState::Online | MemberState::Rebuilding
        ) {
            return Err(unrecoverable(format!("member {member} is in service")));
        }
        // Every transaction so far must be durable and checkpointed before
        // the member joins: its blank journal would otherwise make an older
        // transaction that involved this slot look incomplete at replay.
        {
            let mut journal = lock(&self.journal);
            journal.draining = true;
            while !journal.in_flight.is_empty() {
                journal = self.wait_journal(journal);
            }
            let flushed = self.destage().and_then(|()| self.flush_members());
            if flushed.is_ok() {
                lock(&self.meta).checkpoint = journal.next_seq - 1;
            }
            journal.draining = false;
            self.journal_changed.notify_all();
            flushed?;
        }
        // Blank the journal first: entries left on reused media must never
        // be replayed over rows this member gets from the rebuild.
        for slot in 0..g.journal_slots {
            media.write_at(g.journal_slot_offset(slot), &blank_block())?;
        }
        media.flush()?;
        {
            let mut members = self.members_mut();
            let m = &mut members[member];
            m.media = Some(media);
            m.state = MemberState::Rebuilding;
            m.rebuilt_rows = 0;
            m.read_errors = 0;
            m.id = random_u64();
        }
        self.persist()
    }

    /// Marks a member failed after a fatal error and records it on the
    /// others, so a later mount does not trust it either.
    pub(super) fn mark_failed(&self, member: usize) {
        let changed = {
            let mut members = self.members_mut();
            let m = &mut members[member];
            let live = m.is_live();
            if live {
                m.state = MemberState::Failed;
                m.media = None;
            }
            live
        };
        if changed {
            // Failing to record it everywhere only marks more members
            // failed; the in-memory state already excludes this one.
            let _ = self.persist();
        }
    }

    /// Counts a read error; a member that is gone altogether is failed.
    pub(super) fn note_read_error(&self, member: usize, err: &MediaError) {
        match err {
            MediaError::Io(_) => self.members_mut()[member].read_errors += 1,
            _ => self.mark_failed(member),
        }
    }

    /// Writes the superblock to every live member, bumping the generation;
    /// members that fail the write are failed and the update is retried
    /// without them.
    pub(super) fn persist(&self) -> MediaResult<()> {
        let mut meta = lock(&self.meta);
        loop {
            meta.generation += 1;
            let (targets, states, rebuilt_rows, member_ids) = {
                let members = self.members();
                let targets: Vec<(usize, Arc<dyn Media>)> = members
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| m.is_live())
                    .filter_map(|(i, m)| m.media.clone().map(|media| (i, media)))
                    .collect();
                let states: Vec<MemberState> = members.iter().map(|m| m.state).collect();
                let rebuilt: Vec<u64> = members.iter().map(|m| m.rebuilt_rows).collect();
                let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
                (targets, states, rebuilt, ids)
            };
            let at = SUPERBLOCK_COPIES[(meta.generation % 2) as usize];
            let mut failed = Vec::new();
            for (index, media) in &targets {
                let block = Superblock {
                    geometry: self.geometry,
                    member_index: *index,
                    generation: meta.generation,
                    journal_checkpoint: meta.checkpoint,
                    states: states.clone(),
                    rebuilt_rows: rebuilt_rows.clone(),
                    member_ids: member_ids.clone(),
                }
                .encode();
                if media
                    .write_at(at, &block)
                    .and_then(|()| media.flush())
                    .is_err()
                {
                    failed.push(*index);
                }
            }
            if failed.is_empty() {
                return Ok(());
            }
            let mut members = self.members_mut();
            for index in failed {
                members[index].state = MemberState::Failed;
                members[index].media = None;
            }
        }
    }

    /// The members serving `row`, by slot. Call with the row lock held.
    pub(super) fn row_view(&self, row: u64) -> RowView {
        let members = self.members();
        let layout = self.geometry.layout;
        RowView {
            slots: (0..layout.members())
                .map(|slot| {
                    let m = &members[layout.member_of(row, slot)];
                    m.media.clone().filter(|_| m.serves(row))
                })
                .collect(),
        }
    }

    /// Reads `buf.len()` bytes of `member`'s chunk of `row` at `offset`, as
    /// committed: the media, overlaid with pending (not yet destaged) bytes.
    pub(super) fn read_member(
        &self,
        row: u64,
        member: usize,
        media: &dyn Media,
        offset: u64,
        buf: &mut [u8],
    ) -> MediaResult<()> {
        // Pending bytes are looked at before the media: destaging writes the
        // media first and forgets the bytes after, so each pending write is
        // either in this snapshot or already on the media.
        let overlay: Vec<(u64, Arc<Vec<u8>>)> = lock(&self.pending)
            .get(&row)
            .map(|writes| {
                writes
                    .iter()
                    .filter(|w| w.member == member)
                    .map(|w| (w.start, w.bytes.clone()))
                    .collect()
            })
            .unwrap_or_default();
        media.read_at(self.geometry.row_offset(row) + offset, buf)?;
        let end = offset + buf.len() as u64;
        for (start, bytes) in overlay {
            let from = start.max(offset);
            let to = (start + bytes.len() as u64).min(end);
            if from < to {
                buf[(from - offset) as usize..(to - offset) as usize]
                    .copy_from_slice(&bytes[(from - start) as usize..(to - start) as usize]);
            }
        }
        Ok(())
    }

    /// Reads bytes `start..end` of every serving slot of `row`; slots that
    /// fail the read come back `None` (and the error is accounted).
    pub(super) fn read_row(
        &self,
        row: u64,
        view: &RowView,
        start: u64,
        end: u64,
    ) -> Vec<Option<Vec<u8>>> {
        let layout = self.geometry.layout;
        view.slots
            .iter()
            .enumerate()
            .map(|(slot, media)| {
                let media = media.as_ref()?;
                let member = layout.member_of(row, slot);
                let mut buf = vec![0u8; (end - start) as usize];
                match self.read_member(row, member, media.as_ref(), start, &mut buf) {
                    Ok(()) => Some(buf),
                    Err(e) => {
                        self.note_read_error(member, &e);
                        None
                    }
                }
            })
            .collect()
    }

    /// Reads data chunk `data` of `row` at `offset` into `out` from a copy
    /// that answers; `false` if none does.
    fn read_copy(
        &self,
        row: u64,
        view: &RowView,
        data: usize,
        offset: u64,
        out: &mut [u8],
    ) -> bool {
        let layout = self.geometry.layout;
        // Mirrors start at a different copy on each row so reads spread over
        // every member instead of only the first copy.
        let copies = layout.slots_of_data(data);
        let first = (row % copies.len() as u64) as usize;
        let rotated = copies.clone().skip(first).chain(copies.take(first));
        for slot in rotated {
            if let Some(media) = &view.slots[slot] {
                let member = layout.member_of(row, slot);
                match self.read_member(row, member, media.as_ref(), offset, out) {
                    Ok(()) => return true,
                    Err(e) => self.note_read_error(member, &e),
                }
            }
        }
        false
    }

    /// Serves the pieces of one row into `buf`: directly where the data
    /// member answers, and with one reconstruction (over the union of the
    /// failed pieces) for the rest.
    fn read_pieces(&self, row: u64, pieces: &[Piece], buf: &mut [u8]) -> MediaResult<()> {
        let layout = self.geometry.layout;
        let view = self.row_view(row);
        let mut lost = Vec::new();
        for p in pieces {
            let out = &mut buf[p.at..p.at + p.len as usize];
            if !self.read_copy(row, &view, p.data, p.offset, out) {
                lost.push(p);
            }
        }
        if lost.is_empty() {
            return Ok(());
        }
        if matches!(layout, Layout::Stripe { .. } | Layout::Mirror { .. }) {
            return Err(unrecoverable(format!(
                "row {row}: no copy of a chunk is readable"
            )));
        }
        self.counters.degraded_reads.fetch_add(1, Ordering::Relaxed);
        let start = lost.iter().map(|p| p.offset).min().unwrap_or(0) / SECTOR * SECTOR;
        let end = lost
            .iter()
            .map(|p| p.offset + p.len)
            .max()
            .unwrap_or(0)
            .div_ceil(SECTOR)
            * SECTOR;
        let decoded = layout.decode(&self.read_row(row, &view, start, end))?;
        for p in lost {
            let from = (p.offset - start) as usize;
            buf[p.at..p.at + p.len as usize]
                .copy_from_slice(&decoded[p.data][from..from + p.len as usize]);
        }
        Ok(())
    }

    /// Splits a logical range into per-row pieces.
    pub(super) fn pieces(&self, offset: u64, len: usize) -> BTreeMap<u64, Vec<Piece>> {
        let chunk = self.geometry.chunk;
        let stripe = chunk * self.geometry.layout.data_slots() as u64;
        let mut rows: BTreeMap<u64, Vec<Piece>> = BTreeMap::new();
        let mut done = 0usize;
        while done < len {
            let pos = offset + done as u64;
            let within = pos % stripe;
            let piece_offset = within % chunk;
            let piece_len = (chunk - piece_offset).min((len - done) as u64);
            rows.entry(pos / stripe).or_default().push(Piece {
                data: (within / chunk) as usize,
                offset: piece_offset,
                len: piece_len,
                at: done,
            });
            done += piece_len as usize;
        }
        rows
    }

    /// Whether a write to `row` touching the data chunks flagged in
    /// `touched` can keep every one of them recoverable.
    fn can_write(&self, view: &RowView, touched: &[bool]) -> bool {
        let layout = self.geometry.layout;
        match layout {
            Layout::Stripe { .. } | Layout::Mirror { .. } => touched
                .iter()
                .enumerate()
                .filter(|(_, t)| **t)
                .all(|(d, _)| layout.slots_of_data(d).any(|s| view.slots[s].is_some())),
            _ => layout.can_decode(&view.missing()),
        }
    }

    fn write_row(&self, row: u64, pieces: &[Piece], data: &[u8]) -> MediaResult<()> {
        let layout = self.geometry.layout;
        let k = layout.data_slots();
        let _row = self
            .row_lock(row)
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let view = self.row_view(row);
        let mut touched = vec![false; k];
        for p in pieces {
            touched[p.data] = true;
        }
        if !self.can_write(&view, &touched) {
            return Err(unrecoverable(format!(
                "row {row}: too many members lost to write"
            )));
        }
        if let Layout::Stripe { .. } = layout {
            // Nothing to keep consistent: each chunk goes straight down.
            for p in pieces {
                let media = view.slots[p.data]
                    .as_ref()
                    .ok_or_else(|| unrecoverable("stripe member lost"))?;
                let at = self.geometry.row_offset(row) + p.offset;
                media
                    .write_at(at, &data[p.at..p.at + p.len as usize])
                    .inspect_err(|_| self.mark_failed(p.data))?;
            }
            return Ok(());
        }
        // The row range to rewrite: the union of the pieces, widened to
        // whole sectors. Bytes of it that the write does not cover keep
        // their old value, read (or reconstructed) first.
        let start = pieces.iter().map(|p| p.offset).min().unwrap_or(0) / SECTOR * SECTOR;
        let end = pieces
            .iter()
            .map(|p| p.offset + p.len)
            .max()
            .unwrap_or(0)
            .div_ceil(SECTOR)
            * SECTOR;
        let span = (end - start) as usize;
        let covers = |d: usize| {
            pieces
                .iter()
                .any(|p| p.data == d && p.offset == start && p.offset + p.len == end)
        };
        let parity = !matches!(layout, Layout::Mirror { .. });
        let need: Vec<bool> = (0..k)
            .map(|d| !covers(d) && (parity || touched[d]))
            .collect();
        let mut chunks = self.read_old_data(row, &view, start, end, &need)?;
        for p in pieces {
            let buf = chunks[p.data].get_or_insert_with(|| vec![0u8; span]);
            let from = (p.offset - start) as usize;
            buf[from..from + p.len as usize].copy_from_slice(&data[p.at..p.at + p.len as usize]);
        }
        let updates: Vec<(usize, Vec<u8>)> = if parity {
            let full: Vec<Vec<u8>> = chunks
                .into_iter()
                .map(|c| c.ok_or_else(|| unrecoverable("data chunk not read")))
                .collect::<MediaResult<_>>()?;
            layout
                .encode(&full)?
                .into_iter()
                .enumerate()
                .filter(|(slot, _)| layout.data_of_slot(*slot).is_none_or(|d| touched[d]))
                .collect()
        } else {
            (0..k)
                .filter(|d| touched[*d])
                .flat_map(|d| {
                    let chunk = chunks[d].clone().unwrap_or_default();
                    layout.slots_of_data(d).map(move |s| (s, chunk.clone()))
                })
                .collect()
        };
        let involved: Vec<(usize, Arc<dyn Media>, Vec<u8>)> = updates
            .into_iter()
            .filter_map(|(slot, bytes)| {
                let media = view.slots[slot].clone()?;
                Some((layout.member_of(row, slot), media, bytes))
            })
            .collect();
        self.commit(row, start, involved, &touched)
    }

    /// Old bytes `start..end` of the data chunks flagged in `need`.
    fn read_old_data(
        &self,
        row: u64,
        view: &RowView,
        start: u64,
        end: u64,
        need: &[bool],
    ) -> MediaResult<Vec<Option<Vec<u8>>>> {
        let mut chunks: Vec<Option<Vec<u8>>> = vec![None; need.len()];
        let mut all_read = true;
        for (d, chunk) in chunks.iter_mut().enumerate().filter(|(d, _)| need[*d]) {
            let mut buf = vec![0u8; (end - start) as usize];
            let layout = self.geometry.layout;
            let direct = layout.slots_of_data(d).any(|slot| {
                view.slots[slot].as_ref().is_some_and(|media| {
                    let member = layout.member_of(row, slot);
                    self.read_member(row, member, media.as_ref(), start, &mut buf)
                        .inspect_err(|e| self.note_read_error(member, e))
                        .is_ok()
                })
            });
            if direct {
                *chunk = Some(buf);
            } else {
                all_read = false;
            }
        }
        if all_read {
            return Ok(chunks);
        }
        if let Layout::Mirror { .. } = self.geometry.layout {
            return Err(unrecoverable(format!(
                "row {row}: a mirrored chunk is lost"
            )));
        }
        let decoded = self
            .geometry
            .layout
            .decode(&self.read_row(row, view, start, end))?;
        Ok(decoded
            .into_iter()
            .zip(need)
            .map(|(chunk, n)| n.then_some(chunk))
            .collect())
    }

    /// Commits new bytes for some members of a row: journal now, in place
    /// later (write-back).
    ///
    /// Each member's entry holds only that member's new bytes; a
    /// transaction is complete when every involved member that still
    /// serves has its entry. The bytes go in place only when destaged,
    /// after a flush made the journal durable, so at mount a complete
    /// transaction may be half applied (replay finishes it) and an
    /// incomplete one never started (replay drops it): each row ends up all
    /// old or all new, and consistent. Until destaged, reads see the bytes
    /// through [`ProtectedMedia::read_member`].
    fn commit(
        &self,
        row: u64,
        start: u64,
        mut involved: Vec<(usize, Arc<dyn Media>, Vec<u8>)>,
        touched: &[bool],
    ) -> MediaResult<()> {
        let g = self.geometry;
        let ticket = self.begin_transaction()?;
        let seq = ticket.seq;
        // The row's view was taken before the transaction began, and a
        // member may have failed and been re-added meanwhile (waiting for
        // a replacement's drain in begin_transaction, for one): that new
        // incarnation rebuilds from row 0 and does not serve this row yet,
        // so the bytes must not reach it, neither through the old handle
        // nor, destaged, through the new one (they would land after the
        // rebuild copied newer bytes). Holding the ticket keeps any further
        // replacement waiting, so what is checked here stays true until
        // the pending bytes are queued.
        {
            let members = self.members();
            involved.retain(|(index, media, _)| {
                members[*index]
                    .media
                    .as_ref()
                    .is_some_and(|current| Arc::ptr_eq(current, media))
            });
        }
        if !self.can_write(&self.row_view(row), touched) {
            return Err(unrecoverable(format!(
                "row {row}: members failed during the write"
            )));
        }
        let checkpoint = lock(&self.meta).checkpoint;
        let at = g.journal_slot_offset(seq % g.journal_slots);
        loop {
            let mask = involved.iter().fold(0u64, |m, (i, _, _)| m | 1 << i);
            let failed = involved
                .iter()
                .filter(|(index, media, bytes)| {
                    let entry = JournalHeader {
                        uuid: g.uuid,
                        seq,
                        row,
                        start,
                        len: bytes.len() as u64,
                        involved: mask,
                        member_index: *index,
                        payload_crc: crc32c::crc32c(bytes),
                        checkpoint,
                    }
                    .encode_entry(bytes);
                    media.write_at(at, &entry).is_err()
                })
                .map(|(index, _, _)| *index)
                .collect::<Vec<usize>>();
            if failed.is_empty() {
                break;
            }
            // Start over without the failed members. The sequence number is
            // kept: the survivors' entries are rewritten with the new member
            // mask, and the failed members' entries are never read again.
            for index in &failed {
                self.mark_failed(*index);
            }
            involved.retain(|(index, _, _)| !failed.contains(index));
            if !self.can_write(&self.row_view(row), touched) {
                return Err(unrecoverable(format!(
                    "row {row}: members failed during the write"
                )));
            }
        }
        // Still under the ticket: no member changed identity since the
        // check above.
        let incarnations: Vec<u64> = {
            let members = self.members();
            involved
                .iter()
                .map(|(index, _, _)| members[*index].id)
                .collect()
        };
        {
            let mut pending = lock(&self.pending);
            let writes = pending.entry(row).or_default();
            for ((member, _, bytes), incarnation) in involved.into_iter().zip(incarnations) {
                writes.push(PendingWrite {
                    seq,
                    member,
                    incarnation,
                    start,
                    bytes: Arc::new(bytes),
                });
            }
        }
        drop(ticket);
        self.counters
            .journal_commits
            .fetch_add(1, Ordering::Relaxed);
        if !self.can_write(&self.row_view(row), touched) {
            return Err(unrecoverable(format!(
                "row {row}: members failed during the write"
            )));
        }
        Ok(())
    }

    fn wait_journal<'a>(&self, guard: MutexGuard<'a, Journal>) -> MutexGuard<'a, Journal> {
        self.journal_changed
            .wait(guard)
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Allocates a sequence number and makes its journal slot reusable.
    fn begin_transaction(&self) -> MediaResult<Ticket<'_>> {
        let seq = {
            let mut journal = lock(&self.journal);
            while journal.draining {
                journal = self.wait_journal(journal);
            }
            let seq = journal.next_seq;
            journal.next_seq += 1;
            journal.in_flight.insert(seq);
            seq
        };
        // From here on, an early return ends the transaction through Drop.
        let ticket = Ticket { array: self, seq };
        self.make_slot_reusable(seq)?;
        Ok(ticket)
    }

    /// Before sequence `seq` takes its slot, the transaction that last used
    /// the slot must be durable in place: wait until every transaction up to
    /// it has finished, destage, flush every member and raise the checkpoint
    /// over everything finished, durably (a superblock update).
    fn make_slot_reusable(&self, seq: u64) -> MediaResult<()> {
        let slots = self.geometry.journal_slots;
        if seq <= slots {
            return Ok(());
        }
        let occupant = seq - slots;
        let mut journal = lock(&self.journal);
        while journal.in_flight.range(..=occupant).next().is_some() {
            journal = self.wait_journal(journal);
        }
        if occupant <= lock(&self.meta).checkpoint {
            return Ok(());
        }
        // Everything below the oldest transaction still in flight is pending
        // or already in place; the destage and flush below make all of it
        // durable in place, and holding the journal lock keeps the set of
        // finished transactions fixed meanwhile.
        let finished = journal
            .in_flight
            .first()
            .copied()
            .unwrap_or(journal.next_seq)
            - 1;
        self.destage()?;
        self.flush_members()?;
        // The new checkpoint must be durable before the slot is reused: if
        // it only travelled in the next journal entries, a crash that loses
        // their headers would leave older transactions whole in their slots
        // with nothing durable saying they are done, and replay would write
        // them over the newer data just flushed in place.
        lock(&self.meta).checkpoint = finished;
        self.persist()
    }

    /// Makes the journal durable, then writes every pending write (as of
    /// before that flush) in place. Does not flush the in-place writes: the
    /// journal still covers them until the next checkpoint.
    pub(super) fn destage(&self) -> MediaResult<()> {
        let _serial = lock(&self.destage_lock);
        let snapshot: Vec<(u64, PendingWrite)> = lock(&self.pending)
            .iter()
            .flat_map(|(row, writes)| writes.iter().map(|w| (*row, w.clone())))
            .collect();
        // Only what was pending before the flush is known to be journaled
        // durably, so only that may go in place now.
        self.flush_members()?;
        for (row, write) in &snapshot {
            let media = {
                let members = self.members();
                let m = &members[write.member];
                m.media
                    .clone()
                    .filter(|_| m.is_live() && m.id == write.incarnation)
            };
            if let Some(media) = media {
                let at = self.geometry.row_offset(*row) + write.start;
                if media.write_at(at, &write.bytes).is_err() {
                    self.mark_failed(write.member);
                }
            }
        }
        let mut pending = lock(&self.pending);
        for (row, write) in snapshot {
            if let Some(writes) = pending.get_mut(&row) {
                writes.retain(|w| (w.seq, w.member) != (write.seq, write.member));
                if writes.is_empty() {
                    pending.remove(&row);
                }
            }
        }
        Ok(())
    }

    /// Whether `row` has committed bytes not yet written in place.
    pub(super) fn has_pending(&self, row: u64) -> bool {
        lock(&self.pending).contains_key(&row)
    }

    /// Flushes every live member; failures fail the member, and the array
    /// errors only once it is beyond tolerance.
    fn flush_members(&self) -> MediaResult<()> {
        let live: Vec<(usize, Arc<dyn Media>)> = self
            .members()
            .iter()
            .enumerate()
            .filter(|(_, m)| m.is_live())
            .filter_map(|(i, m)| m.media.clone().map(|media| (i, media)))
            .collect();
        // Flushes are the slow part of a commit path (an fdatasync per file
        // for file media), so all members flush at once.
        let failed: Vec<usize> = std::thread::scope(|scope| {
            let flushes: Vec<_> = live
                .iter()
                .map(|(index, media)| (*index, scope.spawn(move || media.flush().is_ok())))
                .collect();
            flushes
                .into_iter()
                .filter_map(|(index, flush)| (!matches!(flush.join(), Ok(true))).then_some(index))
                .collect()
        });
        for index in failed {
            self.mark_failed(index);
        }
        if self.state() == ArrayState::Failed {
            return Err(unrecoverable("array failed"));
        }
        Ok(())
    }

    /// Finishes complete journal transactions left by a crash (see
    /// [`ProtectedMedia::commit`]), then checkpoints past everything found.
    fn replay_journal(&self) -> MediaResult<()> {
        struct Txn {
            row: u64,
            start: u64,
            involved: u64,
            entries: Vec<(usize, Vec<u8>)>,
        }
        let g = self.geometry;
        let mut live: Vec<(usize, Arc<dyn Media>)> = self
            .members()
            .iter()
            .enumerate()
            .filter(|(_, m)| m.is_live())
            .filter_map(|(i, m)| m.media.clone().map(|media| (i, media)))
            .collect();
        let mut txns: BTreeMap<u64, Txn> = BTreeMap::new();
        // A member whose journal cannot be read might hold the entry that
        // makes a transaction complete or incomplete; it cannot vote, so it
        // is failed, which makes its chunks come from the others.
        let mut unreadable = Vec::new();
        let mut headers: Vec<(usize, u64, JournalHeader)> = Vec::new();
        for slot in 0..g.journal_slots {
            let at = g.journal_slot_offset(slot);
            for (index, media) in &live {
                let mut block = vec![0u8; BLOCK as usize];
                if media.read_at(at, &mut block).is_err() {
                    unreadable.push(*index);
                    continue;
                }
                let Some(h) = JournalHeader::decode(&block) else {
                    continue;
                };
                let sane = h.uuid == g.uuid
                    && h.member_index == *index
                    && h.row < g.rows
                    && h.start.checked_add(h.len).is_some_and(|e| e <= g.chunk);
                if sane {
                    headers.push((*index, at, h));
                }
            }
        }
        // Every sealed header vouches for the checkpoint it was written
        // under, whether or not its own payload made it.
        let checkpoint = headers
            .iter()
            .map(|(_, _, h)| h.checkpoint)
            .fold(lock(&self.meta).checkpoint, u64::max);
        let newest = headers
            .iter()
            .map(|(_, _, h)| h.seq)
            .fold(checkpoint, u64::max);
        for (index, at, h) in headers {
            if h.seq <= checkpoint {
                continue;
            }
            let Some(media) = live.iter().find(|(i, _)| *i == index).map(|(_, m)| m) else {
                continue;
            };
            let mut payload = vec![0u8; h.len as usize];
            if media.read_at(at + BLOCK, &mut payload).is_err() {
                unreadable.push(index);
                continue;
            }
            // A torn entry (crash while journaling) does not count.
            if crc32c::crc32c(&payload) != h.payload_crc {
                continue;
            }
            let txn = txns.entry(h.seq).or_insert_with(|| Txn {
                row: h.row,
                start: h.start,
                involved: h.involved,
                entries: Vec::new(),
            });
            if (txn.row, txn.start, txn.involved) == (h.row, h.start, h.involved) {
                txn.entries.push((index, payload));
            }
        }
        for index in &unreadable {
            self.mark_failed(*index);
        }
        live.retain(|(index, _)| !unreadable.contains(index));
        for txn in txns.values() {
            let complete = live.iter().all(|(index, _)| {
                txn.involved & (1 << index) == 0 || txn.entries.iter().any(|(i, _)| i == index)
            });
            if !complete {
                continue;
            }
            for (index, payload) in &txn.entries {
                let media = live.iter().find(|(i, _)| i == index).map(|(_, m)| m);
                if let Some(media) = media {
                    if media
                        .write_at(g.row_offset(txn.row) + txn.start, payload)
                        .is_err()
                    {
                        self.mark_failed(*index);
                    }
                }
            }
            self.counters
                .journal_replays
                .fetch_add(1, Ordering::Relaxed);
        }
        self.flush_members()?;
        lock(&self.meta).checkpoint = newest;
        lock(&self.journal).next_seq = newest + 1;
        // Replay ran before any transaction could start, so nothing is in
        // flight and the checkpoint above covers every slot.
        self.persist()
    }

    fn zero_data_area(&self) -> MediaResult<()> {
        let g = self.geometry;
        let zeros = vec![0u8; ZERO_FILL];
        let end = g.row_offset(g.rows);
        let live: Vec<Arc<dyn Media>> = self
            .members()
            .iter()
            .filter_map(|m| m.media.clone())
            .collect();
        for media in live {
            let mut at = g.data_offset;
            while at < end {
                let n = (end - at).min(ZERO_FILL as u64) as usize;
                media.write_at(at, &zeros[..n])?;
                at += n as u64;
            }
        }
        Ok(())
    }
}

impl Media for ProtectedMedia {
    fn size(&self) -> u64 {
        let g = &self.geometry;
        g.rows * g.chunk * g.layout.data_slots() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> MediaResult<()> {
        check_range(offset, buf.len() as u64, self.size())?;
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        for (row, pieces) in self.pieces(offset, buf.len()) {
            let _row = self.row_lock(row).read().unwrap_or_else(|e| e.into_inner());
            self.read_pieces(row, &pieces, buf)?;
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> MediaResult<()> {
        check_range(offset, data.len() as u64, self.size())?;
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        for (row, pieces) in self.pieces(offset, data.len()) {
            self.write_row(row, &pieces, data)?;
        }
        Ok(())
    }

    fn copies(&self) -> usize {
        super::repair::parity_copies(self.geometry.layout)
    }

    fn read_copy_at(&self, copy: usize, offset: u64, buf: &mut [u8]) -> MediaResult<()> {
        self.read_one_copy(copy, offset, buf)
    }

    fn repair_copy_at(&self, copy: usize, offset: u64, good: &[u8]) -> MediaResult<()> {
        self.repair_one_copy(copy, offset, good)
    }

    fn flush(&self) -> MediaResult<()> {
        // Durability comes from the journal; destaging here bounds how long
        // bytes stay pending in memory.
        self.destage()?;
        if self.state() == ArrayState::Failed {
            return Err(unrecoverable("array failed"));
        }
        Ok(())
    }
}
