//! A simple in-memory model of a pool, and a harness that runs the same
//! random operations on the model and on a real pool over [`CrashMedia`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use proptest::prelude::*;

use super::crash_media::{crash_image, CrashMedia, Loss};
use super::{key, random_block, text_block};
use crate::volume::*;

/// Blocks per volume in the model tests, when created (resize changes it,
/// up to twice this).
pub(crate) const VOLUME_BLOCKS: u64 = 8;
/// Pool size: small enough that long sequences fill it (writes, clones and
/// resizes then fail with `NoSpace`, which the model checks is genuine),
/// and that freed blocks are reused soon, which is where a commit that
/// released space too early would show.
const POOL_BLOCKS: usize = 22;
/// The metadata area of a paged test pool (its smallest).
const PAGED_META_BLOCKS: usize = 64;
/// At most this many volumes, snapshots and clones at once.
const MAX_VOLUMES: usize = 5;
/// Distinct contents: seed 0 is zeros, then incompressible, then
/// compressible blocks. Few seeds make duplicates common.
const SEEDS: u8 = 12;

/// The bytes of content `seed`.
pub(crate) fn content(seed: u8) -> Vec<u8> {
    match seed {
        0 => vec![0u8; BLOCK_SIZE],
        s if s < SEEDS / 2 => random_block(u64::from(s)),
        s => text_block(u64::from(s)),
    }
}

/// One random operation; indices are resolved against the model's
/// current volumes when it runs.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    Create,
    Write { vol: u8, lba: u8, seeds: Vec<u8> },
    Discard { vol: u8, lba: u8, count: u8 },
    Snapshot { vol: u8 },
    Clone { snap: u8 },
    Revert { vol: u8, snap: u8 },
    Delete { vol: u8 },
    Resize { vol: u8, blocks: u8 },
    Flush,
}

pub(crate) fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => Just(Op::Create),
        8 => (any::<u8>(), any::<u8>(), proptest::collection::vec(0..SEEDS, 1..4))
            .prop_map(|(vol, lba, seeds)| Op::Write { vol, lba, seeds }),
        2 => (any::<u8>(), any::<u8>(), 1u8..6).prop_map(|(vol, lba, count)| Op::Discard { vol, lba, count }),
        2 => any::<u8>().prop_map(|vol| Op::Snapshot { vol }),
        1 => any::<u8>().prop_map(|snap| Op::Clone { snap }),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(vol, snap)| Op::Revert { vol, snap }),
        1 => any::<u8>().prop_map(|vol| Op::Delete { vol }),
        1 => (any::<u8>(), 1..=2 * VOLUME_BLOCKS as u8).prop_map(|(vol, blocks)| Op::Resize { vol, blocks }),
        2 => Just(Op::Flush),
    ]
}

pub(crate) fn services_strategy() -> impl Strategy<Value = Services> {
    (
        any::<bool>(),
        any::<bool>(),
        prop_oneof![
            Just(Compression::None),
            Just(Compression::Lz4),
            Just(Compression::Zstd)
        ],
    )
        .prop_map(|(zero_detect, dedup, compression)| Services {
            zero_detect,
            dedup,
            compression,
        })
}

/// A model block: its content and the write that put it there.
#[derive(Debug, Clone, Copy)]
struct Block {
    seed: u8,
    token: u64,
}

#[derive(Debug, Clone)]
struct ModelVolume {
    snapshot: bool,
    size: u64,
    blocks: BTreeMap<u64, Block>,
}

/// What a reader can observe of a pool: each volume's kind and content.
pub(crate) type Summary = BTreeMap<String, (bool, Vec<u8>)>;

pub(crate) struct Harness {
    pub media: Arc<CrashMedia>,
    pool: Pool,
    services: Services,
    key: Option<VolumeKey>,
    volumes: BTreeMap<String, ModelVolume>,
    handles: BTreeMap<String, Volume>,
    next_name: u32,
    next_token: u64,
    /// Content seed of each block's bytes, to recognise what a recovered
    /// pool returns.
    seeds_by_hash: HashMap<[u8; 32], u8>,
    /// The pool's media content when `history` starts.
    pub base: Vec<u8>,
    /// Every state the model went through, the media event count when it
    /// was reached, and whether it was acknowledged durable.
    pub history: Vec<(Summary, usize, bool)>,
    /// Snapshots a paged pool made durable with a journal record rather
    /// than a commit: the index of the state they were taken in, their
    /// name and their origin's.
    journaled: Vec<(usize, String, String)>,
}

impl Harness {
    /// A harness over a pool of `format`: a paged pool gets the same data
    /// area as an in-memory one, behind its metadata area, and the
    /// smallest cache, so that the cache evicts all the time.
    pub(crate) fn with_format(services: Services, encrypted: bool, format: PoolFormat) -> Harness {
        let (media, pool) = match format {
            PoolFormat::InMemory => {
                let media = Arc::new(CrashMedia::new(POOL_BLOCKS * BLOCK_SIZE));
                let pool = Pool::format(media.clone()).unwrap();
                (media, pool)
            }
            PoolFormat::Paged => {
                let media = Arc::new(CrashMedia::new(
                    (PAGED_META_BLOCKS + POOL_BLOCKS) * BLOCK_SIZE,
                ));
                let options = PagedOptions {
                    cache_bytes: MIN_CACHE_BYTES,
                    ..PagedOptions::default()
                };
                let pool = Pool::format_paged(media.clone(), &options).unwrap();
                (media, pool)
            }
        };
        let mut harness = Harness {
            media,
            pool,
            services,
            key: encrypted.then(|| key(9)),
            volumes: BTreeMap::new(),
            handles: BTreeMap::new(),
            next_name: 0,
            next_token: 0,
            seeds_by_hash: (0..SEEDS)
                .map(|s| (*blake3::hash(&content(s)).as_bytes(), s))
                .collect(),
            base: Vec::new(),
            history: Vec::new(),
            journaled: Vec::new(),
        };
        harness.apply(&Op::Create);
        harness.base = harness.media.image();
        harness.media.clear_log();
        harness.history = vec![(harness.summary(), 0, true)];
        harness
    }

    fn names(&self, snapshots: bool) -> Vec<String> {
        self.volumes
            .iter()
            .filter(|(_, v)| v.snapshot == snapshots)
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn pick(names: &[String], index: u8) -> Option<String> {
        (!names.is_empty()).then(|| names[usize::from(index) % names.len()].clone())
    }

    fn new_name(&mut self, prefix: &str) -> String {
        self.next_name += 1;
        format!("{prefix}{}", self.next_name)
    }

    fn open(&mut self, name: &str) {
        let handle = self.pool.open_volume(name, self.key.as_ref()).unwrap();
        self.handles.insert(name.to_string(), handle);
    }

    fn record(&mut self, durable: bool) {
        let state = (self.summary(), self.media.events(), durable);
        self.history.push(state);
    }

    /// True if an operation succeeded; false if it failed because the pool
    /// is full, which leaves pool and model unchanged. Resizes and clones
    /// can over-commit the small test pool, so this is exercised too.
    fn accept(&self, result: VolumeResult<()>) -> bool {
        match result {
            Ok(()) => true,
            Err(VolumeError::NoSpace) => {
                let stats = self.pool.stats().unwrap();
                // A paged pool also refuses an operation when its metadata
                // area runs short; it commits (releasing what is pending)
                // before it does.
                if self.pool.format_kind().unwrap() == PoolFormat::InMemory {
                    assert!(stats.free_blocks <= 8, "NoSpace with room: {stats:?}");
                }
                assert_eq!(stats.pending_free_blocks, 0, "NoSpace with blocks pending");
                false
            }
            Err(e) => panic!("{e}"),
        }
    }

    /// Runs `op` on the pool and on the model.
    pub(crate) fn apply(&mut self, op: &Op) {
        let writable = self.names(false);
        let snapshots = self.names(true);
        let all: Vec<String> = self.volumes.keys().cloned().collect();
        let room = self.volumes.len() < MAX_VOLUMES;
        match op {
            Op::Create if room => {
                let name = self.new_name("v");
                let options = VolumeOptions {
                    size_bytes: VOLUME_BLOCKS * BLOCK_SIZE as u64,
                    services: self.services,
                    key: self.key.as_ref(),
                };
                if !self.accept(self.pool.create_volume(&name, &options)) {
                    return;
                }
                self.volumes.insert(
                    name.clone(),
                    ModelVolume {
                        snapshot: false,
                        size: VOLUME_BLOCKS,
                        blocks: BTreeMap::new(),
                    },
                );
                self.open(&name);
                self.record(true);
            }
            Op::Write { vol, lba, seeds } => {
                let Some(name) = Self::pick(&writable, *vol) else {
                    return;
                };
                let size = self.volumes[&name].size;
                for (i, &seed) in seeds.iter().enumerate() {
                    let lba = (u64::from(*lba) + i as u64) % size;
                    if !self.accept(self.handles[&name].write_blocks(lba, &content(seed))) {
                        return;
                    }
                    self.next_token += 1;
                    let block = Block {
                        seed,
                        token: self.next_token,
                    };
                    if let Some(v) = self.volumes.get_mut(&name) {
                        v.blocks.insert(lba, block);
                    }
                    // A commit may fall between the blocks of one request,
                    // so each block is a state of its own.
                    self.record(false);
                }
            }
            Op::Discard { vol, lba, count } => {
                let Some(name) = Self::pick(&writable, *vol) else {
                    return;
                };
                let size = self.volumes[&name].size;
                let lba = u64::from(*lba) % size;
                let count = u64::from(*count).min(size - lba);
                self.handles[&name].discard_blocks(lba, count).unwrap();
                if let Some(v) = self.volumes.get_mut(&name) {
                    v.blocks.retain(|&l, _| l < lba || l >= lba + count);
                }
                self.record(false);
            }
            Op::Snapshot { vol } if room => {
                let Some(origin) = Self::pick(&all, *vol) else {
                    return;
                };
                let name = self.new_name("s");
                let journaled = self.pool.stats().unwrap().journaled_snapshots;
                if !self.accept(self.pool.snapshot(&origin, &name)) {
                    return;
                }
                let mut copy = self.volumes[&origin].clone();
                copy.snapshot = true;
                self.volumes.insert(name.clone(), copy);
                self.open(&name);
                // A journaled snapshot is durable, the writes before it
                // are not (see `allowed`); else it was a commit.
                if self.pool.stats().unwrap().journaled_snapshots > journaled {
                    self.record(false);
                    let at = self.history.len() - 1;
                    self.journaled.push((at, name, origin));
                } else {
                    self.record(true);
                }
            }
            Op::Clone { snap } if room => {
                let Some(snapshot) = Self::pick(&snapshots, *snap) else {
                    return;
                };
                let name = self.new_name("c");
                if !self.accept(self.pool.clone_snapshot(&snapshot, &name)) {
                    return;
                }
                let mut copy = self.volumes[&snapshot].clone();
                copy.snapshot = false;
                self.volumes.insert(name.clone(), copy);
                self.open(&name);
                self.record(true);
            }
            Op::Revert { vol, snap } => {
                let (Some(volume), Some(snapshot)) =
                    (Self::pick(&writable, *vol), Self::pick(&snapshots, *snap))
                else {
                    return;
                };
                if !self.accept(self.pool.revert(&volume, &snapshot)) {
                    return;
                }
                let source = &self.volumes[&snapshot];
                let (blocks, size) = (source.blocks.clone(), source.size);
                if let Some(v) = self.volumes.get_mut(&volume) {
                    v.blocks = blocks;
                    v.size = size;
                }
                self.record(true);
            }
            Op::Delete { vol } => {
                let Some(name) = Self::pick(&all, *vol) else {
                    return;
                };
                self.pool.delete(&name).unwrap();
                self.volumes.remove(&name);
                self.handles.remove(&name);
                self.record(true);
            }
            Op::Resize { vol, blocks } => {
                let Some(name) = Self::pick(&writable, *vol) else {
                    return;
                };
                let size = u64::from(*blocks);
                if !self.accept(self.pool.resize(&name, size * BLOCK_SIZE as u64)) {
                    return;
                }
                if let Some(v) = self.volumes.get_mut(&name) {
                    v.size = size;
                    v.blocks.retain(|&lba, _| lba < size);
                }
                self.record(true);
            }
            Op::Flush => {
                self.pool.flush().unwrap();
                self.record(true);
            }
            _ => {}
        }
    }

    /// The model's current observable state.
    fn summary(&self) -> Summary {
        self.volumes
            .iter()
            .map(|(name, v)| {
                let seeds = (0..v.size)
                    .map(|lba| v.blocks.get(&lba).map_or(0, |b| b.seed))
                    .collect();
                (name.clone(), (v.snapshot, seeds))
            })
            .collect()
    }

    /// What `pool` shows a reader, in the model's terms.
    pub(crate) fn observe(&self, pool: &Pool) -> Summary {
        let mut out = Summary::new();
        for info in pool.volumes().unwrap() {
            let volume = pool.open_volume(&info.name, self.key.as_ref()).unwrap();
            let mut block = vec![0u8; BLOCK_SIZE];
            let seeds = (0..volume.size_blocks())
                .map(|lba| {
                    volume.read_blocks(lba, &mut block).unwrap();
                    // Content no write produced maps to a seed that no
                    // model state holds, and fails the comparison.
                    self.seeds_by_hash
                        .get(blake3::hash(&block).as_bytes())
                        .copied()
                        .unwrap_or(u8::MAX)
                })
                .collect();
            out.insert(info.name, (info.kind == VolumeKind::Snapshot, seeds));
        }
        out
    }

    /// Checks the pool against the model: reads, invariants, accounting.
    pub(crate) fn verify(&self) {
        self.pool.check().unwrap();
        assert_eq!(self.observe(&self.pool), self.summary());
        // A paged pool frees deleted volumes' space in the background:
        // the accounting below holds once that is done.
        while !self.pool.release_step(16).unwrap() {}
        self.pool.check().unwrap();
        let zero_detect = self.services.zero_detect;
        // The identity of what a block is stored as: nothing for a
        // zero-detected block, its content with dedup, else its write.
        let identity = |b: &Block| match (zero_detect && b.seed == 0, self.services.dedup) {
            (true, _) => None,
            (false, true) => Some(u64::from(b.seed)),
            (false, false) => Some(b.token + 1000),
        };
        let mut owners: HashMap<u64, usize> = HashMap::new();
        for v in self.volumes.values() {
            let ids: HashSet<u64> = v.blocks.values().filter_map(identity).collect();
            for id in ids {
                *owners.entry(id).or_default() += 1;
            }
        }
        let bs = BLOCK_SIZE as u64;
        let stats = self.pool.stats().unwrap();
        let mapped: u64 = self.volumes.values().map(|v| v.blocks.len() as u64).sum();
        assert_eq!(stats.logical_bytes, mapped * bs);
        let raw = self.services.compression == Compression::None;
        if raw {
            assert_eq!(stats.data_blocks, owners.len() as u64, "{stats:?}");
            assert_eq!(stats.stored_bytes, owners.len() as u64 * bs);
        } else {
            assert!(stats.stored_bytes <= owners.len() as u64 * bs);
        }
        for (name, v) in &self.volumes {
            let vs = self.pool.volume_stats(name).unwrap();
            assert_eq!(vs.mapped_bytes, v.blocks.len() as u64 * bs, "{name}");
            let zeros = v
                .blocks
                .values()
                .filter(|b| zero_detect && b.seed == 0)
                .count() as u64;
            assert_eq!(vs.zero_bytes, zeros * bs, "{name}");
            let ids: HashSet<u64> = v.blocks.values().filter_map(identity).collect();
            let shared = ids.iter().filter(|id| owners[id] > 1).count() as u64;
            assert_eq!(vs.unique_bytes, ids.len() as u64 * bs, "{name}");
            if raw {
                assert_eq!(vs.shared_bytes, shared * bs, "{name}");
                assert_eq!(
                    vs.exclusive_bytes,
                    (ids.len() as u64 - shared) * bs,
                    "{name}"
                );
            } else {
                assert_eq!(vs.shared_bytes == 0, shared == 0, "{name}");
                assert_eq!(
                    vs.exclusive_bytes == 0,
                    ids.len() as u64 == shared,
                    "{name}"
                );
            }
        }
    }

    /// Snapshots the pool journaled so far.
    pub(crate) fn journaled_count(&self) -> usize {
        self.journaled.len()
    }

    /// What a crash after `events` media events can recover when the
    /// pool's last durable commit holds state `i`: state `i` with every
    /// journaled snapshot taken after it and acknowledged by then replayed
    /// in order, each holding what its origin holds in that state; the
    /// snapshot in flight then (state `ceiling`), if journaled, may be
    /// there too.
    fn allowed(&self, i: usize, ceiling: usize, events: usize) -> Vec<Summary> {
        let mut state = self.history[i].0.clone();
        let replay = |state: &mut Summary, name: &str, origin: &str| -> bool {
            let Some((_, seeds)) = state.get(origin).cloned() else {
                return false;
            };
            state.insert(name.to_string(), (true, seeds));
            true
        };
        for (at, name, origin) in self.journaled.iter().filter(|(at, _, _)| *at > i) {
            if self.history[*at].1 > events {
                let mut with = state.clone();
                let mut out = vec![state];
                if *at == ceiling && replay(&mut with, name, origin) {
                    out.push(with);
                }
                return out;
            }
            if !replay(&mut state, name, origin) {
                return Vec::new();
            }
        }
        vec![state]
    }

    /// Rebuilds the media as a crash after `events` media events would have
    /// left it, opens the pool and checks it holds one of the states the
    /// model allows, and that no space leaked.
    pub(crate) fn crash_and_check(&self, events: usize, loss: Loss, reclaim: bool) {
        let log = self.media.log();
        let image = crash_image(&self.base, &log, events, loss);
        let media = Arc::new(CrashMedia::from_image(image));
        let pool = Pool::open(media)
            .unwrap_or_else(|e| panic!("open after crash at {events} ({loss:?}): {e}"));
        pool.check().unwrap();
        let stats = pool.stats().unwrap();
        assert_eq!(stats.reclaimed_at_open, 0, "a leak was committed");
        // The oldest allowed state is the last one acknowledged durable by
        // then; the newest is the first one not yet reached, whose commit
        // may have landed before it was acknowledged.
        let floor = self
            .history
            .iter()
            .rposition(|(_, mark, durable)| *durable && *mark <= events)
            .unwrap_or(0);
        let ceiling = self
            .history
            .iter()
            .position(|(_, mark, _)| *mark > events)
            .unwrap_or(self.history.len() - 1);
        let seen = self.observe(&pool);
        assert!(
            (floor..=ceiling.max(floor)).any(|i| self.allowed(i, ceiling, events).contains(&seen)),
            "crash at event {events} ({loss:?}) recovered a state outside {floor}..={ceiling}: {seen:?}"
        );
        if reclaim {
            for info in pool.volumes().unwrap() {
                pool.delete(&info.name).unwrap();
            }
            while !pool.release_step(64).unwrap() {}
            pool.flush().unwrap();
            pool.check().unwrap();
            let stats = pool.stats().unwrap();
            if pool.format_kind().unwrap() == PoolFormat::InMemory {
                assert_eq!(stats.data_blocks, 0, "space leaked: {stats:?}");
                assert_eq!(
                    stats.free_blocks,
                    stats.total_blocks - 2 - stats.metadata_blocks
                );
            } else {
                // The pack cursor may keep its block.
                assert!(stats.data_blocks <= 1, "space leaked: {stats:?}");
                assert_eq!(stats.stored_bytes, 0, "records leaked: {stats:?}");
                assert_eq!(stats.pending_free_blocks, 0);
                assert_eq!(stats.free_blocks + stats.data_blocks, POOL_BLOCKS as u64);
            }
        }
    }
}
