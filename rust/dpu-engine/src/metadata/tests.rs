//! Tests of the metadata layers together: B-trees against a model,
//! snapshots by shared roots, reference counts checked exactly, a cache
//! bounded while the tree grows far beyond it, and crashes at every write
//! under the torn-sector model.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use proptest::prelude::*;

use super::btree::{self, TreeInfo, ValueKind};
use super::space_map;
use super::transaction::{PreparedCommit, TransactionManager, MAX_RUN_BLOCKS, SUPERBLOCKS};
use super::{MetaError, META_BLOCK};
use crate::fault::{torn_sectors, FaultyMedia, PowerCut};
use crate::media::{Media, MemMedia};

const META_BLOCKS: usize = 1024;
const DATA_BLOCKS: u64 = 4096;

fn value(v: u64) -> [u8; 8] {
    v.to_le_bytes()
}

fn plain(fanout: usize) -> TreeInfo {
    TreeInfo::with_fanout(8, ValueKind::Plain, fanout).unwrap()
}

fn format(media: Arc<dyn Media>, cache: usize) -> TransactionManager {
    TransactionManager::format(media, cache, DATA_BLOCKS).unwrap()
}

/// Every entry of a tree.
fn contents(tm: &mut TransactionManager, info: &TreeInfo, root: u64) -> BTreeMap<u64, u64> {
    let mut seen = BTreeMap::new();
    btree::range(tm, info, root, 0, u64::MAX, &mut |k, v| {
        seen.insert(k, u64::from_le_bytes(v.try_into().unwrap()));
        true
    })
    .unwrap();
    seen
}

/// Recounts every reference from the roots (each tree `trees` lists holds
/// one reference on its root) and both space maps' own nodes, and checks
/// that the space maps hold exactly those counts: nothing leaked, nothing
/// freed while in use.
pub(crate) fn check_references(tm: &mut TransactionManager, trees: &[(u64, TreeInfo)]) {
    let mut meta: HashMap<u64, u32> = HashMap::new();
    let mut data: HashMap<u64, u32> = HashMap::new();
    for slot in 0..SUPERBLOCKS {
        *meta.entry(slot).or_default() += 1;
    }
    let mut visited = HashSet::new();
    for (root, info) in trees {
        *meta.entry(*root).or_default() += 1;
        btree::for_each_node(tm, info, *root, &mut |block, children, blocks| {
            if !visited.insert(block) {
                return false;
            }
            for c in children {
                *meta.entry(*c).or_default() += 1;
            }
            for d in blocks {
                *data.entry(*d).or_default() += 1;
            }
            true
        })
        .unwrap();
    }
    let (meta_sm, data_sm) = tm.space_map_roots();
    let (meta_blocks, data_blocks) = (tm.meta_blocks(), tm.data_blocks());
    for (root, entries) in [(meta_sm, meta_blocks), (data_sm, data_blocks)] {
        space_map::for_each_node(tm, root, entries, &mut |b| {
            *meta.entry(b).or_default() += 1;
        })
        .unwrap();
    }
    for b in 0..meta_blocks {
        let want = meta.get(&b).copied().unwrap_or(0);
        assert_eq!(tm.count(b).unwrap(), want, "metadata block {b}");
    }
    for b in 0..data_blocks {
        let want = data.get(&b).copied().unwrap_or(0);
        assert_eq!(tm.data_count(b).unwrap(), want, "data block {b}");
    }
}

#[test]
fn insert_lookup_remove_and_range_over_deep_trees() {
    let media = Arc::new(MemMedia::new(META_BLOCKS * META_BLOCK));
    let mut tm = format(media.clone(), 32);
    let info = plain(4);
    let mut root = btree::empty(&mut tm, &info).unwrap();
    let mut model = BTreeMap::new();
    // A pseudo-random order that covers inserts before the first key,
    // after the last and in between.
    for i in 0..600u64 {
        let key = (i * 7919) % 1000;
        root = btree::insert(&mut tm, &info, root, key, &value(key * 3)).unwrap();
        model.insert(key, key * 3);
    }
    assert_eq!(contents(&mut tm, &info, root), model);
    let mut seen = Vec::new();
    btree::range(&mut tm, &info, root, 100, 120, &mut |k, _| {
        seen.push(k);
        true
    })
    .unwrap();
    let want: Vec<u64> = model.range(100..120).map(|(k, _)| *k).collect();
    assert_eq!(seen, want);
    check_references(&mut tm, &[(root, info)]);
    tm.set_root(0, root).unwrap();
    tm.commit().unwrap();
    for i in 0..600u64 {
        let key = (i * 7919) % 1000;
        if key % 3 != 0 {
            let (r, old) = btree::remove(&mut tm, &info, root, key).unwrap();
            assert_eq!(old.as_deref(), Some(&value(key * 3)[..]));
            root = r;
            model.remove(&key);
        }
    }
    let (r, old) = btree::remove(&mut tm, &info, root, 5000).unwrap();
    assert_eq!(
        (r, old),
        (root, None),
        "removing a missing key changes nothing"
    );
    assert_eq!(contents(&mut tm, &info, root), model);
    for key in [0, 3, 999, 1000, 4] {
        let want = model.get(&key).map(|v| value(*v).to_vec());
        assert_eq!(btree::lookup(&mut tm, &info, root, key).unwrap(), want);
    }
    check_references(&mut tm, &[(root, info)]);
    tm.set_root(0, root).unwrap();
    tm.commit().unwrap();
    // Removing everything leaves an empty leaf and frees the rest.
    for key in model.keys().copied().collect::<Vec<_>>() {
        root = btree::remove(&mut tm, &info, root, key).unwrap().0;
    }
    assert!(contents(&mut tm, &info, root).is_empty());
    check_references(&mut tm, &[(root, info)]);
    tm.set_root(0, root).unwrap();
    tm.commit().unwrap();
    let mut reopened = TransactionManager::open(media, 32).unwrap();
    let root = reopened.root(0);
    assert!(contents(&mut reopened, &info, root).is_empty());
    check_references(&mut reopened, &[(root, info)]);
}

#[test]
fn snapshots_share_the_root_and_copy_nodes_on_first_write() {
    let media = Arc::new(MemMedia::new(META_BLOCKS * META_BLOCK));
    let mut tm = format(media.clone(), 64);
    let info = TreeInfo::with_fanout(8, ValueKind::DataBlock, 16).unwrap();
    let mut origin = btree::empty(&mut tm, &info).unwrap();
    let mut model = BTreeMap::new();
    for key in 0..500u64 {
        let block = tm.alloc_data().unwrap();
        origin = btree::insert(&mut tm, &info, origin, key, &value(block)).unwrap();
        model.insert(key, block);
    }
    tm.set_root(0, origin).unwrap();
    tm.commit().unwrap();
    let before = tm.transaction_stats();
    // The snapshot: one reference, no block allocated or copied.
    let snap = btree::share(&mut tm, origin).unwrap();
    assert_eq!(snap, origin);
    assert_eq!(tm.transaction_stats().allocated, before.allocated);
    tm.set_root(1, snap).unwrap();
    tm.commit().unwrap();
    // The first write through the origin copies its path only, and the
    // copy of each shared node takes references on the node's children.
    let block = tm.alloc_data().unwrap();
    let old = model[&250];
    origin = btree::insert(&mut tm, &info, origin, 250, &value(block)).unwrap();
    let copied = tm.transaction_stats().allocated;
    assert!((2..=6).contains(&copied), "{copied} blocks for one write");
    assert_eq!(tm.data_count(old).unwrap(), 1, "the snapshot still maps it");
    assert_eq!(tm.data_count(block).unwrap(), 1);
    let mut changed = model.clone();
    changed.insert(250, block);
    let (o, s) = (origin, snap);
    check_references(&mut tm, &[(o, info), (s, info)]);
    assert_eq!(contents(&mut tm, &info, origin), changed);
    assert_eq!(contents(&mut tm, &info, snap), model);
    tm.set_root(0, origin).unwrap();
    tm.commit().unwrap();
    // Deleting the snapshot frees what only it held: the replaced block.
    btree::release(&mut tm, &info, snap).unwrap();
    tm.set_root(1, 0).unwrap();
    assert_eq!(tm.data_count(old).unwrap(), 0);
    check_references(&mut tm, &[(o, info)]);
    tm.commit().unwrap();
    let mut reopened = TransactionManager::open(media, 64).unwrap();
    let root = reopened.root(0);
    assert_eq!(contents(&mut reopened, &info, root), changed);
    check_references(&mut reopened, &[(root, info)]);
}

#[test]
fn ten_thousand_snapshots_of_one_tree() {
    let media = Arc::new(MemMedia::new(META_BLOCKS * META_BLOCK));
    let mut tm = format(media, 64);
    let info = plain(usize::MAX);
    let mut root = btree::empty(&mut tm, &info).unwrap();
    for key in 0..2000u64 {
        root = btree::insert(&mut tm, &info, root, key, &value(key)).unwrap();
    }
    let mut snaps = Vec::new();
    for i in 0..10_000u64 {
        snaps.push(btree::share(&mut tm, root).unwrap());
        // Every hundredth snapshot is followed by a write to the origin (key
        // 0 last at i = 8000).
        if i % 100 == 0 {
            root = btree::insert(&mut tm, &info, root, i % 2000, &value(i + 1_000_000)).unwrap();
        }
    }
    let first = snaps[0];
    assert_eq!(
        btree::lookup(&mut tm, &info, first, 0).unwrap(),
        Some(value(0).to_vec())
    );
    assert_eq!(
        btree::lookup(&mut tm, &info, root, 0).unwrap(),
        Some(value(1_008_000).to_vec())
    );
    let mut trees: Vec<(u64, TreeInfo)> = snaps.iter().map(|s| (*s, info)).collect();
    trees.push((root, info));
    check_references(&mut tm, &trees);
    for s in snaps {
        btree::release(&mut tm, &info, s).unwrap();
    }
    check_references(&mut tm, &[(root, info)]);
    tm.set_root(0, root).unwrap();
    tm.commit().unwrap();
}

/// The cache stays within its capacity while the tree grows to many times
/// that, and a transaction's work and bookkeeping follow what it changed,
/// not the size of the tree.
#[test]
fn bounded_cache_while_the_tree_grows_far_beyond_it() {
    const CACHE: usize = 16;
    let media = Arc::new(MemMedia::new(4 * META_BLOCKS * META_BLOCK));
    let mut tm = format(media.clone(), CACHE);
    let info = plain(usize::MAX);
    let mut root = btree::empty(&mut tm, &info).unwrap();
    let keys = 60_000u64;
    let spread = |i: u64| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 24;
    for i in 0..keys {
        root = btree::insert(&mut tm, &info, root, spread(i), &value(i)).unwrap();
        assert!(tm.cache_resident() <= CACHE);
        if i % 2000 == 1999 {
            tm.set_root(0, root).unwrap();
            tm.commit().unwrap();
        }
    }
    tm.set_root(0, root).unwrap();
    tm.commit().unwrap();
    let mut nodes = 0;
    btree::for_each_node(&mut tm, &info, root, &mut |_, _, _| {
        nodes += 1;
        true
    })
    .unwrap();
    assert!(nodes > 10 * CACHE, "only {nodes} nodes");
    assert!(tm.cache_stats().peak_resident <= CACHE);
    // 2,000 appends past the last key dirty the right edge of the tree
    // and its space map leaves, a small part of it, and the commit writes
    // only those.
    let base = 1u64 << 50;
    for i in 0..2000u64 {
        root = btree::insert(&mut tm, &info, root, base + i, &value(i)).unwrap();
    }
    let dirtied = tm.transaction_stats().allocated;
    let before = tm.cache_stats().writes;
    tm.set_root(0, root).unwrap();
    tm.commit().unwrap();
    let written = tm.cache_stats().writes - before;
    assert!(dirtied < nodes / 4, "{dirtied} blocks dirtied of {nodes}");
    assert!(
        written <= dirtied as u64 + 16,
        "commit wrote {written} blocks"
    );
    let mut reopened = TransactionManager::open(media, CACHE).unwrap();
    let root = reopened.root(0);
    let all = contents(&mut reopened, &info, root);
    assert_eq!(all.len() as u64, keys + 2000);
    for i in (0..keys).step_by(997) {
        assert_eq!(all.get(&spread(i)), Some(&i));
    }
    assert!(reopened.cache_stats().peak_resident <= CACHE);
}

/// Buffered count changes applied to the space map in small steps while
/// the transaction goes on (as the pool does once they accumulate) leave
/// every count exact at every step, a commit applies only what the steps
/// left, and the reopened state is the committed one, counts exact. The
/// transaction copies a snapshotted tree's nodes, frees and allocates:
/// thousands of changes, which its commit used to apply all at once.
#[test]
fn counts_applied_in_steps_during_a_transaction_stay_exact() {
    const STEP: usize = 8;
    const PENDING: usize = 32;
    const KEYS: u64 = 4000;
    let media = Arc::new(MemMedia::new(4 * META_BLOCKS * META_BLOCK));
    let mut tm = TransactionManager::format(media.clone(), 64, 4 * DATA_BLOCKS).unwrap();
    let info = TreeInfo::with_fanout(8, ValueKind::DataBlock, 8).unwrap();
    // As the pool does: steps of a few changes once more are buffered.
    let steps = |tm: &mut TransactionManager| {
        while tm.pending_counts() > PENDING {
            let left = tm.apply_counts(STEP, None).unwrap();
            assert_eq!(left, tm.pending_counts());
        }
    };
    let mut root = btree::empty(&mut tm, &info).unwrap();
    let mut model = BTreeMap::new();
    for k in 0..KEYS {
        let block = tm.alloc_data().unwrap();
        root = btree::insert(&mut tm, &info, root, k, &value(block)).unwrap();
        model.insert(k, block);
        steps(&mut tm);
    }
    tm.set_root(0, root).unwrap();
    tm.commit().unwrap();
    let snap = btree::share(&mut tm, root).unwrap();
    let snap_model = model.clone();
    let applied_before = tm.transaction_stats().counts_applied;
    for i in 0..6000u64 {
        let k = (i * 7919) % KEYS;
        if i % 3 == 0 {
            root = btree::remove(&mut tm, &info, root, k).unwrap().0;
            model.remove(&k);
        } else {
            let block = tm.alloc_data().unwrap();
            root = btree::insert(&mut tm, &info, root, k, &value(block)).unwrap();
            model.insert(k, block);
        }
        steps(&mut tm);
        if i % 1000 == 0 {
            check_references(&mut tm, &[(root, info), (snap, info)]);
        }
    }
    check_references(&mut tm, &[(root, info), (snap, info)]);
    let stats = tm.transaction_stats();
    assert!(
        stats.counts_applied - applied_before > 1500,
        "{stats:?}: the steps applied too few changes to matter"
    );
    tm.set_root(0, root).unwrap();
    tm.set_root(1, snap).unwrap();
    tm.commit().unwrap();
    let stats = tm.transaction_stats();
    assert_eq!(stats.pending_counts, 0);
    assert!(
        stats.largest_commit_counts <= 2 * PENDING,
        "a commit applied {} changes itself",
        stats.largest_commit_counts
    );
    check_references(&mut tm, &[(root, info), (snap, info)]);
    let mut reopened = TransactionManager::open(media, 64).unwrap();
    let (root, snap) = (reopened.root(0), reopened.root(1));
    check_references(&mut reopened, &[(root, info), (snap, info)]);
    let got = |tm: &mut TransactionManager, r| contents(tm, &info, r);
    assert_eq!(got(&mut reopened, root), model);
    assert_eq!(got(&mut reopened, snap), snap_model);
    let used = (0..reopened.meta_blocks())
        .filter(|&b| reopened.count(b).unwrap() > 0)
        .count();
    assert_eq!(reopened.meta_used(), used as u64);
}

/// A commit writes each run of consecutive dirty blocks as one write of
/// at most 64 blocks, and what it wrote reads back after a reopen.
#[test]
fn a_commit_writes_runs_of_consecutive_blocks_at_once() {
    let mem = Arc::new(MemMedia::new(META_BLOCKS * META_BLOCK));
    let (faulty, control) = FaultyMedia::new(mem.clone());
    let mut tm = format(Arc::new(faulty), 512);
    let info = plain(usize::MAX);
    let mut root = btree::empty(&mut tm, &info).unwrap();
    // Appends fill new leaves in allocation order: mostly consecutive.
    for i in 0..60_000u64 {
        root = btree::insert(&mut tm, &info, root, i, &value(i * 3)).unwrap();
    }
    tm.set_root(0, root).unwrap();
    let prepared = tm.prepare_commit().unwrap();
    let blocks = prepared.blocks();
    let runs = prepared.writes();
    assert!(blocks > 200, "only {blocks} dirty blocks");
    assert!(runs >= blocks.div_ceil(MAX_RUN_BLOCKS), "{runs} writes");
    assert!(runs * 8 < blocks, "{blocks} blocks in {runs} writes");
    let before = control.counters().writes;
    let written = prepared.write();
    tm.finish_commit(prepared.generation(), written).unwrap();
    // The runs, then the superblock.
    assert_eq!(control.counters().writes - before, runs as u64 + 1);
    drop(tm);
    let mut reopened = TransactionManager::open(mem, 64).unwrap();
    let root = reopened.root(0);
    let all = contents(&mut reopened, &info, root);
    assert_eq!(all.len(), 60_000);
    assert!(all.iter().all(|(k, v)| *v == k * 3));
}

#[test]
fn full_metadata_area_fails_cleanly_and_errors_are_clear() {
    let media = Arc::new(MemMedia::new(20 * META_BLOCK));
    let mut tm = format(media.clone(), 16);
    let info = plain(4);
    let mut root = btree::empty(&mut tm, &info).unwrap();
    let mut err = None;
    for key in 0..1000u64 {
        match btree::insert(&mut tm, &info, root, key, &value(key)) {
            Ok(r) => root = r,
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    assert_eq!(err, Some(MetaError::NoSpace));
    assert!(btree::insert(&mut tm, &info, root, 1, &[0u8; 4]).is_err());
    assert!(TreeInfo::with_fanout(8, ValueKind::Plain, 3).is_err());
    assert!(TreeInfo::new(4, ValueKind::DataBlock).is_err());
    assert!(TransactionManager::format(Arc::new(MemMedia::new(8 * META_BLOCK)), 16, 1).is_err());
    assert!(TransactionManager::open(Arc::new(MemMedia::new(64 * META_BLOCK)), 16).is_err());
}

/// One step of the random sequences.
#[derive(Debug, Clone)]
enum Op {
    Insert(u16),
    Remove(u16),
    Snapshot,
    DropSnapshot(u8),
    Commit,
    /// A commit in two halves: prepared now, written after the next this
    /// many operations ran in the following transaction (as the pool does
    /// with the lock released).
    SplitCommit(u8),
    /// Buffered count changes applied to the space map in the middle of
    /// the transaction: this many (or all there are).
    ApplyCounts(u8),
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (0u16..400).prop_map(Op::Insert),
        4 => (0u16..400).prop_map(Op::Remove),
        1 => Just(Op::Snapshot),
        1 => any::<u8>().prop_map(Op::DropSnapshot),
        2 => Just(Op::Commit),
        1 => (0u8..8).prop_map(Op::SplitCommit),
        2 => any::<u8>().prop_map(Op::ApplyCounts),
    ]
}

/// A tree (root slot 0) with snapshots (slots 1..), run on a
/// [`TransactionManager`] and on a model side by side.
struct Run {
    tm: TransactionManager,
    info: TreeInfo,
    root: u64,
    model: BTreeMap<u64, u64>,
    snaps: Vec<(u64, BTreeMap<u64, u64>)>,
    /// A prepared commit, the state it holds, and the operations still to
    /// run before it is written.
    pending: Option<(PreparedCommit, State, u8)>,
}

/// A tree and its snapshots' contents.
type State = Vec<BTreeMap<u64, u64>>;

impl Run {
    fn new(media: Arc<dyn Media>, fanout: usize) -> Run {
        let mut tm = format(media, 16);
        let info = TreeInfo::with_fanout(8, ValueKind::DataBlock, fanout).unwrap();
        let root = btree::empty(&mut tm, &info).unwrap();
        tm.set_root(0, root).unwrap();
        tm.commit().unwrap();
        Run {
            tm,
            info,
            root,
            model: BTreeMap::new(),
            snaps: Vec::new(),
            pending: None,
        }
    }

    /// The committed state as the model sees it: the tree and snapshots.
    fn state(&self) -> Vec<BTreeMap<u64, u64>> {
        let mut all = vec![self.model.clone()];
        all.extend(self.snaps.iter().map(|(_, m)| m.clone()));
        all
    }

    /// Applies `op`; returns the states the commits it finished made
    /// durable, in order.
    fn apply(&mut self, op: &Op) -> Result<Vec<State>, MetaError> {
        let mut finished: Vec<State> = self.before(op)?.into_iter().collect();
        finished.extend(self.apply_op(op)?);
        Ok(finished)
    }

    /// Before `op`: writes the prepared commit if its time has come (or
    /// `op` is a commit itself, which must wait for it).
    fn before(&mut self, op: &Op) -> Result<Option<State>, MetaError> {
        let commit_op = matches!(op, Op::Commit | Op::SplitCommit(_));
        match self.pending.as_mut() {
            Some((_, _, 0)) => self.finish_pending(),
            Some(_) if commit_op => self.finish_pending(),
            Some((_, _, left)) => {
                *left -= 1;
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// Writes and finishes the prepared commit.
    fn finish_pending(&mut self) -> Result<Option<State>, MetaError> {
        let Some((prepared, state, _)) = self.pending.take() else {
            return Ok(None);
        };
        let written = prepared.write();
        self.tm.finish_commit(prepared.generation(), written)?;
        Ok(Some(state))
    }

    fn apply_op(&mut self, op: &Op) -> Result<Vec<State>, MetaError> {
        let (tm, info) = (&mut self.tm, &self.info);
        match op {
            Op::Insert(k) => {
                let block = tm.alloc_data()?;
                self.root = btree::insert(tm, info, self.root, u64::from(*k), &value(block))?;
                self.model.insert(u64::from(*k), block);
            }
            Op::Remove(k) => {
                self.root = btree::remove(tm, info, self.root, u64::from(*k))?.0;
                self.model.remove(&u64::from(*k));
            }
            Op::Snapshot if self.snaps.len() < 6 => {
                let s = btree::share(tm, self.root)?;
                self.snaps.push((s, self.model.clone()));
            }
            Op::Snapshot => {}
            Op::DropSnapshot(i) if !self.snaps.is_empty() => {
                let (s, _) = self.snaps.remove(usize::from(*i) % self.snaps.len());
                btree::release(tm, info, s)?;
            }
            Op::DropSnapshot(_) => {}
            Op::ApplyCounts(least) => {
                let left = tm.apply_counts(usize::from(*least), None)?;
                assert_eq!(left, tm.pending_counts());
            }
            Op::Commit => {
                let mut done: Vec<State> = self.finish_pending()?.into_iter().collect();
                self.set_roots()?;
                self.tm.commit()?;
                done.push(self.state());
                return Ok(done);
            }
            Op::SplitCommit(after) => {
                let done = self.finish_pending()?.into_iter().collect();
                self.set_roots()?;
                let prepared = self.tm.prepare_commit()?;
                self.pending = Some((prepared, self.state(), *after));
                return Ok(done);
            }
        }
        Ok(Vec::new())
    }

    fn set_roots(&mut self) -> Result<(), MetaError> {
        self.tm.set_root(0, self.root)?;
        for slot in 1..8 {
            let root = self.snaps.get(slot - 1).map_or(0, |(s, _)| *s);
            self.tm.set_root(slot, root)?;
        }
        Ok(())
    }

    fn check(&mut self) {
        let mut trees = vec![(self.root, self.info)];
        trees.extend(self.snaps.iter().map(|(s, _)| (*s, self.info)));
        check_references(&mut self.tm, &trees);
        let (root, info) = (self.root, self.info);
        assert_eq!(contents(&mut self.tm, &info, root), self.model);
        for i in 0..self.snaps.len() {
            let (s, want) = self.snaps[i].clone();
            assert_eq!(contents(&mut self.tm, &info, s), want);
        }
    }
}

/// What a reopened manager holds: the tree and the snapshots of its root
/// slots, and the reference check of all of them.
fn recovered_state(tm: &mut TransactionManager, info: &TreeInfo) -> Vec<BTreeMap<u64, u64>> {
    let roots: Vec<u64> = (0..8).map(|s| tm.root(s)).filter(|r| *r != 0).collect();
    let trees: Vec<(u64, TreeInfo)> = roots.iter().map(|r| (*r, *info)).collect();
    check_references(tm, &trees);
    let used = (0..tm.meta_blocks())
        .filter(|&b| tm.count(b).is_ok_and(|c| c > 0))
        .count();
    assert_eq!(tm.meta_used(), used as u64, "blocks in use");
    roots.iter().map(|r| contents(tm, info, *r)).collect()
}

/// Crash points tried by the crash property test (printed with
/// `DPU_ENGINE_CRASH_POINTS=1`).
static CRASH_POINTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub(crate) fn config(cases: u32) -> ProptestConfig {
    match std::env::var_os("PROPTEST_CASES") {
        Some(_) => ProptestConfig::default(),
        None => ProptestConfig::with_cases(cases),
    }
}

proptest! {
    #![proptest_config(config(24))]

    /// Random inserts, removes, snapshots, snapshot deletes and commits
    /// match a model, keep every reference count exact, and survive a
    /// reopen at every commit.
    #[test]
    fn btrees_with_snapshots_match_the_model(
        fanout in 4usize..12,
        ops in proptest::collection::vec(op_strategy(), 1..150),
    ) {
        let media = Arc::new(MemMedia::new(META_BLOCKS * META_BLOCK));
        let mut run = Run::new(media.clone(), fanout);
        for op in &ops {
            if let Some(durable) = run.apply(op).unwrap().pop() {
                let mut reopened = TransactionManager::open(media.clone(), 16).unwrap();
                prop_assert_eq!(recovered_state(&mut reopened, &run.info), durable);
            }
        }
        run.check();
    }
}

proptest! {
    #![proptest_config(config(112))]

    /// A crash after any number of media writes, with a volatile cache
    /// that loses any set of the unflushed writes and tears others into
    /// any subset of their 512-byte sectors, reopens to the last commit
    /// whose superblock write was issued or the one before, with every
    /// reference count exact.
    #[test]
    fn crash_at_every_write_reopens_a_committed_state(
        fanout in 4usize..10,
        ops in proptest::collection::vec(op_strategy(), 1..200),
        seed in any::<u64>(),
        tiny in any::<bool>(),
    ) {
        // A tiny metadata area fills up and makes allocation wrap around,
        // so blocks freed by one transaction are soon reused by the next
        // (and must not be by the same one, not even while it commits).
        let area = if tiny { 40 } else { META_BLOCKS };
        let mut ops: Vec<Op> = ops.into_iter().chain([Op::Commit]).collect();
        // Commits whose superblock write was issued, with the state each
        // made durable (a split commit writes while later operations run).
        // A clean run counts the writes and records the committed states;
        // when the area is full, the run ends before the failing step.
        let (counted, counter) = {
            let mem = Arc::new(MemMedia::new(area * META_BLOCK));
            let (faulty, control) = FaultyMedia::new(mem.clone());
            let counter = PowerCut::never();
            control.attach_power_cut(counter.clone());
            (Arc::new(faulty), counter)
        };
        let mut run = Run::new(counted, fanout);
        let mut commits = vec![(counter.attempted(), run.state())];
        let mut total = counter.attempted();
        for (i, op) in ops.iter().enumerate() {
            // A prepared commit is written before the operation, and
            // recorded on its own: each commit has its own crash window.
            match run.before(op) {
                Ok(Some(state)) => commits.push((counter.attempted(), state)),
                Ok(None) => {}
                Err(e) => panic!("{e}"),
            }
            match run.apply_op(op) {
                Ok(committed) => {
                    for state in committed {
                        commits.push((counter.attempted(), state));
                    }
                    total = counter.attempted();
                }
                Err(MetaError::NoSpace) => {
                    ops.truncate(i);
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        let first = commits[0].0;
        CRASH_POINTS.fetch_add(total - first, std::sync::atomic::Ordering::Relaxed);
        if std::env::var_os("DPU_ENGINE_CRASH_POINTS").is_some() {
            eprintln!(
                "crash points so far: {}",
                CRASH_POINTS.load(std::sync::atomic::Ordering::Relaxed)
            );
        }
        // From `first + 1` on, the flush that ends the initial commit ran.
        for cut in first + 1..=total {
            let mem = Arc::new(MemMedia::new(area * META_BLOCK));
            let (faulty, control) = FaultyMedia::new(mem.clone());
            control.attach_power_cut(PowerCut::after_writes(cut));
            control.enable_write_cache();
            // The format itself was counted before `first`.
            let mut run = Run::new(Arc::new(faulty), fanout);
            for op in &ops {
                // After the cut, reads of blocks whose writes were dropped
                // fail: the machine is down, the rest does not matter.
                if run.apply(op).is_err() {
                    break;
                }
            }
            control.crash(mem.as_ref(), &mut torn_sectors(seed ^ cut)).unwrap();
            let mut reopened = TransactionManager::open(mem, 16).unwrap();
            let seen = recovered_state(&mut reopened, &run.info);
            // The last commit whose closing flush ran (a write after it was
            // issued), or the next one if its superblock write was issued
            // and survived.
            let done = commits.iter().rposition(|(w, _)| *w < cut).unwrap_or(0);
            let allowed: Vec<&Vec<BTreeMap<u64, u64>>> =
                commits[done..].iter().take(2).map(|(_, s)| s).collect();
            prop_assert!(
                allowed.contains(&&seen),
                "crash after {} of {} writes recovered a state that was never committed",
                cut, total
            );
        }
    }
}

proptest! {
    #![proptest_config(config(32))]

    /// Damaged metadata never panics or loops: bit flips anywhere in a
    /// committed image either fail the open or leave trees whose reads,
    /// writes and commits return data or an error.
    #[test]
    fn damaged_metadata_gives_errors_not_panics(
        ops in proptest::collection::vec(op_strategy(), 1..120),
        flips in proptest::collection::vec((any::<usize>(), 0u8..8), 1..24),
    ) {
        let mem = Arc::new(MemMedia::new(META_BLOCKS * META_BLOCK));
        let mut run = Run::new(mem.clone(), 4);
        for op in ops.iter().chain([&Op::Commit]) {
            run.apply(op).unwrap();
        }
        let mut image = mem.snapshot();
        // Half the flips hit the first blocks: superblocks, space maps and
        // the tree's first nodes live there.
        for (i, (pos, bit)) in flips.iter().enumerate() {
            let range = if i % 2 == 0 { 32 * META_BLOCK } else { image.len() };
            image[pos % range] ^= 1 << bit;
        }
        let damaged = Arc::new(MemMedia::new(image.len()));
        damaged.write_at(0, &image).unwrap();
        if let Ok(mut tm) = TransactionManager::open(damaged, 16) {
            let info = run.info;
            for slot in 0..8 {
                let root = tm.root(slot);
                if root == 0 {
                    continue;
                }
                let _ = btree::lookup(&mut tm, &info, root, 7);
                let _ = btree::range(&mut tm, &info, root, 0, u64::MAX, &mut |_, _| true);
                if let Ok(block) = tm.alloc_data() {
                    if let Ok(root) = btree::insert(&mut tm, &info, root, 9, &value(block)) {
                        let _ = btree::remove(&mut tm, &info, root, 9);
                    }
                }
            }
            let _ = tm.commit();
        }
    }
}

/// Removing most keys merges underfull nodes (also siblings a snapshot
/// shares), so the tree shrinks with its contents and the snapshot keeps
/// its own.
#[test]
fn removes_merge_underfull_nodes_and_keep_snapshots_intact() {
    let media = Arc::new(MemMedia::new(META_BLOCKS * META_BLOCK));
    let mut tm = format(media, 32);
    let info = TreeInfo::with_fanout(8, ValueKind::DataBlock, 16).unwrap();
    let mut root = btree::empty(&mut tm, &info).unwrap();
    let mut model = BTreeMap::new();
    for i in 0..2000u64 {
        let key = (i * 7919) % 2000;
        let block = tm.alloc_data().unwrap();
        root = btree::insert(&mut tm, &info, root, key, &value(block)).unwrap();
        model.insert(key, block);
    }
    let snapshot = btree::share(&mut tm, root).unwrap();
    let before = model.clone();
    let count_nodes = |tm: &mut TransactionManager, root: u64| {
        let mut nodes = 0;
        btree::for_each_node(tm, &info, root, &mut |_, _, _| {
            nodes += 1;
            true
        })
        .unwrap();
        nodes
    };
    let full = count_nodes(&mut tm, root);
    for i in 0..2000u64 {
        let key = (i * 7919) % 2000;
        if key % 20 != 0 {
            root = btree::remove(&mut tm, &info, root, key).unwrap().0;
            model.remove(&key);
        }
    }
    let left = count_nodes(&mut tm, root);
    // 100 keys left: without merging, most of the ~200 leaves would stay.
    assert!(
        left <= 2 * model.len() / 4 + 8,
        "{left} nodes for {} keys (from {full})",
        model.len()
    );
    let contents_of = |tm: &mut TransactionManager, root: u64| {
        let mut seen = BTreeMap::new();
        btree::range(tm, &info, root, 0, u64::MAX, &mut |k, v| {
            seen.insert(k, u64::from_le_bytes(v.try_into().unwrap()));
            true
        })
        .unwrap();
        seen
    };
    assert_eq!(contents_of(&mut tm, root), model);
    assert_eq!(contents_of(&mut tm, snapshot), before);
    check_references(&mut tm, &[(root, info), (snapshot, info)]);
    btree::release(&mut tm, &info, snapshot).unwrap();
    check_references(&mut tm, &[(root, info)]);
    tm.set_root(0, root).unwrap();
    tm.commit().unwrap();
}
