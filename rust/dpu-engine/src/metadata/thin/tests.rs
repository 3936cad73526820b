//! Thin metadata against a model, and at the scale of the bench
//! (scaled down): snapshots while writing, deletes freed in the background,
//! a bounded cache.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::media::MemMedia;
use crate::metadata::tests::{check_references, config};
use crate::metadata::META_BLOCK;

/// Recounts every reference the thin metadata holds.
fn check(thin: &mut ThinMetadata) {
    let (volumes, plain, mapping) = (thin.volumes, thin.plain, thin.mapping);
    let mut trees: Vec<(u64, TreeInfo)> = vec![
        (thin.tm.root(VOLUMES), volumes),
        (thin.tm.root(DEFERRED), plain),
        (thin.tm.root(COUNTERS), plain),
    ];
    for id in thin.volume_ids().unwrap() {
        trees.push((thin.volume(id).unwrap().mapping_root, mapping));
    }
    for node in thin.deferred().unwrap() {
        trees.push((node, mapping));
    }
    check_references(&mut thin.tm, &trees);
}

#[derive(Debug, Clone)]
enum Op {
    Create,
    Write(u8, u8),
    Unmap(u8, u8),
    Snapshot(u8),
    Delete(u8),
    Release(u8),
    CommitAndReopen,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => Just(Op::Create),
        10 => (any::<u8>(), any::<u8>()).prop_map(|(v, l)| Op::Write(v, l)),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(v, l)| Op::Unmap(v, l)),
        2 => any::<u8>().prop_map(Op::Snapshot),
        1 => any::<u8>().prop_map(Op::Delete),
        2 => (1u8..8).prop_map(Op::Release),
        1 => Just(Op::CommitAndReopen),
    ]
}

const SIZE: u64 = 200;

proptest! {
    #![proptest_config(config(24))]

    /// Volumes, writes, unmaps, snapshots, deletes and background release
    /// match a model through commits and reopens; once released, every
    /// reference count equals a recount and no data block is left over.
    #[test]
    fn thin_metadata_matches_the_model(ops in proptest::collection::vec(op_strategy(), 1..200)) {
        let media = Arc::new(MemMedia::new(2048 * META_BLOCK));
        let mut thin = ThinMetadata::format(media.clone(), 16, 1 << 16).unwrap();
        // id → (snapshot, lba → data block)
        let mut model: BTreeMap<u64, (bool, BTreeMap<u64, u64>)> = BTreeMap::new();
        let pick = |model: &BTreeMap<u64, (bool, BTreeMap<u64, u64>)>, i: u8| {
            (!model.is_empty()).then(|| *model.keys().nth(usize::from(i) % model.len()).unwrap())
        };
        for op in &ops {
            match op {
                Op::Create if model.len() < 8 => {
                    let id = thin.create_volume(SIZE).unwrap();
                    model.insert(id, (false, BTreeMap::new()));
                }
                Op::Write(v, lba) => {
                    let Some(id) = pick(&model, *v) else { continue };
                    let lba = u64::from(*lba) % (SIZE + 10);
                    let result = thin.map_new_block(id, lba);
                    let (snapshot, map) = model.get_mut(&id).unwrap();
                    if *snapshot || lba >= SIZE {
                        prop_assert!(matches!(result, Err(MetaError::InvalidArgument(_))));
                    } else {
                        map.insert(lba, result.unwrap());
                    }
                }
                Op::Unmap(v, lba) => {
                    let Some(id) = pick(&model, *v) else { continue };
                    let lba = u64::from(*lba) % SIZE;
                    let (snapshot, map) = model.get_mut(&id).unwrap();
                    let result = thin.unmap(id, lba);
                    if *snapshot {
                        prop_assert!(result.is_err());
                    } else {
                        prop_assert_eq!(result.unwrap(), map.remove(&lba).is_some());
                    }
                }
                Op::Snapshot(v) if model.len() < 8 => {
                    let Some(origin) = pick(&model, *v) else { continue };
                    let id = thin.snapshot(origin).unwrap();
                    let map = model[&origin].1.clone();
                    model.insert(id, (true, map));
                }
                Op::Delete(v) => {
                    let Some(id) = pick(&model, *v) else { continue };
                    thin.delete_volume(id).unwrap();
                    model.remove(&id);
                }
                Op::Release(budget) => {
                    thin.release_step(usize::from(*budget)).unwrap();
                }
                Op::CommitAndReopen => {
                    thin.commit().unwrap();
                    thin = ThinMetadata::open(media.clone(), 16).unwrap();
                }
                _ => {}
            }
        }
        prop_assert_eq!(thin.volume_ids().unwrap(), model.keys().copied().collect::<Vec<_>>());
        for (id, (_, map)) in &model {
            for lba in 0..SIZE {
                prop_assert_eq!(thin.lookup(*id, lba).unwrap(), map.get(&lba).copied());
            }
        }
        check(&mut thin);
        while !thin.release_step(16).unwrap() {}
        check(&mut thin);
        // Every data block in use is one a volume maps (blocks are handed
        // out from 0 up, and fewer than 4,096 writes ran).
        let mapped: std::collections::BTreeSet<u64> =
            model.values().flat_map(|(_, m)| m.values().copied()).collect();
        let tm = thin.transaction_manager();
        for block in 0..4096 {
            prop_assert_eq!(tm.data_count(block).unwrap() > 0, mapped.contains(&block));
        }
    }
}

/// The bench in miniature: writes to one volume with a snapshot
/// every 20 writes (1,000 snapshots), then half the snapshots deleted and
/// freed in the background, all through a 64-block cache. Snapshots cost a
/// few blocks each whatever the volume's size, and the cache never grows.
#[test]
fn a_thousand_snapshots_while_writing_then_background_deletes() {
    const CACHE: usize = 64;
    // A sparse file: every snapshot keeps the nodes the writes after it
    // copied, tens of MiB in all.
    let path = std::env::temp_dir().join(format!("dpu-engine-thin-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let media: Arc<dyn Media> =
        Arc::new(crate::media::FileMedia::new(file, 65536 * META_BLOCK as u64).unwrap());
    let mut thin = ThinMetadata::format(media.clone(), CACHE, 1 << 16).unwrap();
    let size = 1u64 << 16;
    let v = thin.create_volume(size).unwrap();
    let mut snaps = Vec::new();
    let mut snapshot_blocks = Vec::new();
    let mut model = BTreeMap::new();
    for i in 0..20_000u64 {
        let lba = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) % size;
        let block = thin.map_new_block(v, lba).unwrap();
        model.insert(lba, block);
        if i % 20 == 19 {
            thin.commit().unwrap();
            let before = thin.transaction_manager().transaction_stats();
            snaps.push((thin.snapshot(v).unwrap(), model.clone().len()));
            let after = thin.transaction_manager().transaction_stats();
            snapshot_blocks.push(after.allocated - before.allocated);
        }
        assert!(thin.transaction_manager().cache_resident() <= CACHE);
    }
    thin.commit().unwrap();
    assert_eq!(snaps.len(), 1000);
    // A snapshot touches the volumes and counters trees only: a handful of
    // blocks, never a copy of the mapping.
    let worst = snapshot_blocks.iter().max().copied().unwrap_or(0);
    assert!(worst <= 12, "a snapshot allocated {worst} blocks");
    let tm = thin.transaction_manager();
    assert!(tm.cache_stats().peak_resident <= CACHE);
    // Delete every other snapshot; free their exclusive nodes in steps.
    for (id, _) in snaps.iter().step_by(2) {
        thin.delete_volume(*id).unwrap();
    }
    let mut steps = 0;
    while !thin.release_step(64).unwrap() {
        steps += 1;
        if steps % 16 == 0 {
            thin.commit().unwrap();
        }
        assert!(thin.transaction_manager().cache_resident() <= CACHE);
    }
    thin.commit().unwrap();
    let mut reopened = ThinMetadata::open(media, CACHE).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(reopened.volume_ids().unwrap().len(), 501);
    for (lba, block) in model.iter().step_by(101) {
        assert_eq!(reopened.lookup(v, *lba).unwrap(), Some(*block));
    }
    // A kept snapshot still sees its own version of a block.
    let (kept, _) = snaps[1];
    let first_lba = 0u64.wrapping_mul(0x9e37_79b9_7f4a_7c15) % size;
    assert!(reopened.lookup(kept, first_lba).unwrap().is_some());
    check(&mut reopened);
}

/// Crash points tried by the thin crash test (printed with
/// `DPU_ENGINE_CRASH_POINTS=1`).
static THIN_CRASH_POINTS: AtomicU64 = AtomicU64::new(0);

/// Volume id → (snapshot, lba → data block): what a thin state holds.
type ThinModel = BTreeMap<u64, (bool, BTreeMap<u64, u64>)>;

/// Runs `ops` (commits for `CommitAndReopen`); stops at the first error
/// (after a power cut reads may fail). Returns the model after each commit
/// with the media writes issued by then.
fn run_thin(
    thin: &mut ThinMetadata,
    ops: &[Op],
    writes: &dyn Fn() -> u64,
) -> Vec<(u64, ThinModel)> {
    let mut model = ThinModel::new();
    let mut commits = vec![(writes(), model.clone())];
    let pick = |model: &ThinModel, i: u8| {
        (!model.is_empty()).then(|| *model.keys().nth(usize::from(i) % model.len()).unwrap())
    };
    for op in ops {
        let done: MetaResult<()> = (|| {
            match op {
                Op::Create if model.len() < 6 => {
                    let id = thin.create_volume(SIZE)?;
                    model.insert(id, (false, BTreeMap::new()));
                }
                Op::Write(v, lba) => {
                    if let Some(id) = pick(&model, *v).filter(|id| !model[id].0) {
                        let lba = u64::from(*lba) % SIZE;
                        let block = thin.map_new_block(id, lba)?;
                        model.get_mut(&id).unwrap().1.insert(lba, block);
                    }
                }
                Op::Unmap(v, lba) => {
                    if let Some(id) = pick(&model, *v).filter(|id| !model[id].0) {
                        let lba = u64::from(*lba) % SIZE;
                        thin.unmap(id, lba)?;
                        model.get_mut(&id).unwrap().1.remove(&lba);
                    }
                }
                Op::Snapshot(v) if model.len() < 6 => {
                    if let Some(origin) = pick(&model, *v) {
                        let id = thin.snapshot(origin)?;
                        let map = model[&origin].1.clone();
                        model.insert(id, (true, map));
                    }
                }
                Op::Delete(v) => {
                    if let Some(id) = pick(&model, *v) {
                        thin.delete_volume(id)?;
                        model.remove(&id);
                    }
                }
                Op::Release(budget) => {
                    thin.release_step(usize::from(*budget))?;
                }
                Op::CommitAndReopen => {
                    thin.commit()?;
                    commits.push((writes(), model.clone()));
                }
                _ => {}
            }
            Ok(())
        })();
        if done.is_err() {
            break;
        }
    }
    commits
}

fn thin_state(thin: &mut ThinMetadata) -> ThinModel {
    let mut state = ThinModel::new();
    for id in thin.volume_ids().unwrap() {
        let details = thin.volume(id).unwrap();
        let mut map = BTreeMap::new();
        for lba in 0..SIZE {
            if let Some(block) = thin.lookup(id, lba).unwrap() {
                map.insert(lba, block);
            }
        }
        state.insert(id, (details.snapshot, map));
    }
    state
}

proptest! {
    #![proptest_config(config(24))]

    /// A crash after any media write (unflushed writes lost or torn into
    /// any subset of sectors) reopens thin metadata to a committed state
    /// with exact reference counts, and a background release interrupted
    /// by the crash finishes cleanly afterwards.
    #[test]
    fn thin_metadata_survives_a_crash_at_every_write(
        ops in proptest::collection::vec(
            prop_oneof![6 => op_strategy(), 1 => Just(Op::CommitAndReopen)],
            1..150,
        ),
        seed in any::<u64>(),
    ) {
        use crate::fault::{torn_sectors, FaultyMedia, PowerCut};
        let ops: Vec<Op> = ops.into_iter().chain([Op::CommitAndReopen]).collect();
        let blocks = 1024 * META_BLOCK;
        let counter = PowerCut::never();
        let (first, commits) = {
            let mem = Arc::new(MemMedia::new(blocks));
            let (faulty, control) = FaultyMedia::new(mem);
            control.attach_power_cut(counter.clone());
            let mut thin = ThinMetadata::format(Arc::new(faulty), 16, 4096).unwrap();
            let first = counter.attempted();
            let commits = run_thin(&mut thin, &ops, &|| counter.attempted());
            (first, commits)
        };
        let total = counter.attempted();
        let points = THIN_CRASH_POINTS.fetch_add(total - first, Ordering::Relaxed);
        if std::env::var_os("DPU_ENGINE_CRASH_POINTS").is_some() {
            eprintln!("thin crash points so far: {}", points + total - first);
        }
        for cut in first + 1..=total {
            let mem = Arc::new(MemMedia::new(blocks));
            let (faulty, control) = FaultyMedia::new(mem.clone());
            let power = PowerCut::after_writes(cut);
            control.attach_power_cut(power.clone());
            control.enable_write_cache();
            let mut thin = ThinMetadata::format(Arc::new(faulty), 16, 4096).unwrap();
            run_thin(&mut thin, &ops, &|| power.attempted());
            control.crash(mem.as_ref(), &mut torn_sectors(seed ^ cut)).unwrap();
            let mut thin = ThinMetadata::open(mem, 16).unwrap();
            let seen = thin_state(&mut thin);
            let done = commits.iter().rposition(|(w, _)| *w < cut).unwrap_or(0);
            prop_assert!(
                commits[done..].iter().take(2).any(|(_, s)| *s == seen),
                "crash after {} of {} writes recovered a state never committed", cut, total
            );
            check(&mut thin);
            while !thin.release_step(32).unwrap() {}
            check(&mut thin);
        }
    }
}

/// Resident memory of this process in MiB (Linux), 0 if unknown.
fn rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}

/// Not a test but a probe of the metadata at scale (it still checks what
/// it reads): a 4 TiB thin volume (2^30 blocks of 4 KiB) on sparse
/// metadata, `DPU_SCALE_WRITES` (default 50,000) random block writes with a
/// snapshot (committed) after every 1/1000th of them, then 500 snapshots
/// deleted and freed in background steps of 64 nodes, through a
/// `DPU_SCALE_CACHE_MIB` (default 16) cache. Run it with
/// `cargo test -p dpu-engine metadata_scale_probe -- --ignored --nocapture`.
#[test]
#[ignore = "a scale probe that runs for minutes: run it by hand (see above)"]
fn metadata_scale_probe() {
    let var = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let writes = var("DPU_SCALE_WRITES", 50_000);
    let cache_mib = var("DPU_SCALE_CACHE_MIB", 16);
    let cache = (cache_mib << 20) as usize / META_BLOCK;
    let dir = std::env::var_os("DPU_SCALE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!("dpu-engine-scale-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let meta_bytes = 64u64 << 30;
    let media: Arc<dyn Media> = Arc::new(crate::media::FileMedia::new(file, meta_bytes).unwrap());
    let size = 1u64 << 30;
    let mut thin = ThinMetadata::format(media.clone(), cache, size).unwrap();
    let v = thin.create_volume(size).unwrap();
    let every = (writes / 1000).max(1);
    let (mut snap_ms, mut max_ms, mut snaps) = (Vec::new(), 0f64, Vec::new());
    let timed = |f: &mut dyn FnMut(), max: &mut f64| {
        let t = std::time::Instant::now();
        f();
        let ms = t.elapsed().as_secs_f64() * 1e3;
        *max = max.max(ms);
        ms
    };
    let start = std::time::Instant::now();
    let mut last = (0, 0);
    for i in 0..writes {
        let lba = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) % size;
        let mut block = 0;
        timed(
            &mut || block = thin.map_new_block(v, lba).unwrap(),
            &mut max_ms,
        );
        last = (lba, block);
        if i % every == every - 1 && snaps.len() < 1000 {
            let mut id = 0;
            let ms = timed(
                &mut || {
                    id = thin.snapshot(v).unwrap();
                    thin.commit().unwrap();
                },
                &mut max_ms,
            );
            snap_ms.push(ms);
            snaps.push(id);
        }
    }
    timed(&mut || thin.commit().unwrap(), &mut max_ms);
    let write_s = start.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    for id in snaps.iter().step_by(2) {
        timed(&mut || thin.delete_volume(*id).unwrap(), &mut max_ms);
    }
    let mut steps = 0u64;
    loop {
        let mut done = false;
        timed(&mut || done = thin.release_step(64).unwrap(), &mut max_ms);
        steps += 1;
        if steps.is_multiple_of(64) || done {
            timed(&mut || thin.commit().unwrap(), &mut max_ms);
        }
        if done {
            break;
        }
    }
    let delete_s = t.elapsed().as_secs_f64();
    let tm = thin.transaction_manager();
    let resident = tm.cache_stats().peak_resident;
    let rss = rss_mib();
    drop(thin);
    let t = std::time::Instant::now();
    let mut reopened = ThinMetadata::open(media, cache).unwrap();
    assert_eq!(reopened.lookup(v, last.0).unwrap(), Some(last.1));
    let open_s = t.elapsed().as_secs_f64();
    assert_eq!(reopened.volume_ids().unwrap().len(), 1 + snaps.len() / 2);
    // Bytes the sparse file really holds: the metadata written.
    let used = std::fs::metadata(&path)
        .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
        .unwrap_or(0);
    let _ = std::fs::remove_file(&path);
    snap_ms.sort_by(f64::total_cmp);
    let pct = |p: f64| snap_ms[((snap_ms.len() - 1) as f64 * p) as usize];
    eprintln!(
        "metadata-scale: writes={writes} snapshots={} deleted={} write_s={write_s:.1} delete_s={delete_s:.1} \
         cache_mib={cache_mib} peak_cache_blocks={resident} rss_mib={rss} snap_median_ms={:.2} \
         snap_p99_ms={:.2} max_op_ms={max_ms:.1} open_clean_s={open_s:.3} meta_file_mib={}",
        snaps.len(),
        snaps.len().div_ceil(2),
        pct(0.5),
        pct(0.99),
        used >> 20,
    );
    assert!(resident <= cache);
}
