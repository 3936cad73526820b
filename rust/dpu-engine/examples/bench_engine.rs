//! `make bench-engine`: the engine's metadata at card scale, natively (no
//! VM), on sparse image files.
//!
//! A thin pool on RAID6 over six sparse member images (4 TiB by default)
//! takes random 4 KiB writes, about half of them duplicates, into one
//! volume with dedup and zero-detect, with snapshots taken while writing;
//! then commits after 1 to 10,000 writes (commit time against the
//! metadata blocks it wrote), deletes half the snapshots and frees them in
//! bounded steps, reopens after a clean shutdown and after a crash (the
//! process dropping everything unflushed), and reads back what it wrote.
//! Each run is repeated, each in a process of its own (so that its RSS is
//! its own); the table shows the median and the spread (min–max). A paged pool (format 2) is compared with the in-memory pool
//! (format 1) at a size the latter can handle.
//!
//! Settings (environment), defaulting to issue 12's scale:
//! `BENCH_ENGINE_DIR` (default `$DPUBLK_CACHE/bench-engine`, `DPUBLK_CACHE`
//! defaulting to `/var/cache/dpublk`), `BENCH_ENGINE_POOL_GIB` (4096),
//! `BENCH_ENGINE_WRITES` (2000000), `BENCH_ENGINE_SNAPSHOTS` (1000, half of
//! them deleted), `BENCH_ENGINE_REPS` (1), `BENCH_ENGINE_CACHE_MIB` (256),
//! `BENCH_ENGINE_COMPARE_WRITES` (100000, the in-memory pool's share; 0
//! skips it), `BENCH_ENGINE_COMPARE_SNAPSHOTS` (100: format 1 copies the
//! whole map per snapshot). Each run reports its progress on stderr.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use dpu_engine::media::{FileMedia, Media};
use dpu_engine::protection::{Layout, ProtectedMedia, ProtectionConfig};
use dpu_engine::volume::{
    Compression, PagedOptions, Pool, PoolFormat, Services, Volume, VolumeOptions, BLOCK_SIZE,
};

const MEMBERS: usize = 6;
const CHUNK: u64 = 64 << 10;
const BS: u64 = BLOCK_SIZE as u64;

struct Config {
    dir: PathBuf,
    pool_bytes: u64,
    writes: u64,
    snapshots: u64,
    compare_snapshots: u64,
    reps: usize,
    cache_bytes: usize,
    compare_writes: u64,
}

fn env_u64(name: &str, default: u64) -> Result<u64, String> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("{name}={v}: not a number")),
        Err(_) => Ok(default),
    }
}

impl Config {
    fn from_env() -> Result<Config, String> {
        let cache = std::env::var("DPUBLK_CACHE").unwrap_or_else(|_| "/var/cache/dpublk".into());
        let dir = std::env::var("BENCH_ENGINE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| Path::new(&cache).join("bench-engine"));
        let config = Config {
            dir,
            pool_bytes: env_u64("BENCH_ENGINE_POOL_GIB", 4096)? << 30,
            writes: env_u64("BENCH_ENGINE_WRITES", 2_000_000)?,
            snapshots: env_u64("BENCH_ENGINE_SNAPSHOTS", 1000)?,
            compare_snapshots: env_u64("BENCH_ENGINE_COMPARE_SNAPSHOTS", 100)?,
            reps: env_u64("BENCH_ENGINE_REPS", 1)? as usize,
            cache_bytes: (env_u64("BENCH_ENGINE_CACHE_MIB", 256)? << 20) as usize,
            compare_writes: env_u64("BENCH_ENGINE_COMPARE_WRITES", 100_000)?,
        };
        if config.writes < 1000 || config.reps == 0 || config.pool_bytes < (1 << 30) {
            return Err("need at least 1000 writes, 1 repetition and a 1 GiB pool".into());
        }
        Ok(config)
    }
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The content of seed `seed`: incompressible, distinct per seed.
fn block(seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    (0..BLOCK_SIZE / 8)
        .flat_map(|_| rng.next().to_le_bytes())
        .collect()
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn members(dir: &Path, member_bytes: u64, create: bool) -> Result<Vec<Arc<dyn Media>>, String> {
    (0..MEMBERS)
        .map(|i| {
            let path = dir.join(format!("member{i}.img"));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(create)
                .truncate(create)
                .open(&path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let media = FileMedia::new(file, member_bytes).map_err(|e| e.to_string())?;
            // Random 4 KiB I/O: readahead would only read (zero-fill, in
            // the sparse images' holes) pages nobody asked for.
            media.advise_random();
            Ok(Arc::new(media) as Arc<dyn Media>)
        })
        .collect()
}

fn array(dir: &Path, member_bytes: u64, create: bool) -> Result<Arc<dyn Media>, String> {
    let members = members(dir, member_bytes, create)?;
    let array = if create {
        let config = ProtectionConfig {
            assume_zeroed: true,
            ..ProtectionConfig::new(Layout::Raid6 { members: MEMBERS }, CHUNK)
        };
        ProtectedMedia::create(config, members)
    } else {
        ProtectedMedia::open(members.into_iter().map(Some).collect())
    }
    .map_err(|e| format!("raid6: {e}"))?;
    Ok(Arc::new(array))
}

/// What one run measured.
#[derive(Default)]
struct Run {
    writes: u64,
    write_s: f64,
    rss_base_mib: f64,
    rss_mib: f64,
    snap_ms: Vec<f64>,
    /// (writes before the commit, metadata blocks it wrote, ms)
    commits: Vec<(u64, Option<u64>, f64)>,
    delete_ms: f64,
    release_s: f64,
    max_lock_ms: f64,
    /// The most CPU time the holding thread used in one hold.
    max_lock_cpu_ms: f64,
    /// Lock holds of 50 ms or more (of `lock_holds`).
    long_holds: f64,
    lock_holds: f64,
    open_clean_s: f64,
    open_crash_s: f64,
    metadata_mib: f64,
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn open_pool(config: &Config, member_bytes: u64) -> Result<Pool, String> {
    let media = array(&config.dir, member_bytes, false)?;
    let options = PagedOptions {
        cache_bytes: config.cache_bytes,
        ..PagedOptions::default()
    };
    Pool::open_with(media, &options).map_err(err)
}

fn cache_written(pool: &Pool) -> Option<u64> {
    pool.cache_report().ok().flatten().map(|c| c.blocks_written)
}

fn run(config: &Config, format: PoolFormat, writes: u64, seed: u64) -> Result<Run, String> {
    std::fs::create_dir_all(&config.dir).map_err(err)?;
    let data_members = (MEMBERS - 2) as u64;
    let member_bytes = (config.pool_bytes / data_members).div_ceil(CHUNK) * CHUNK + (64 << 20);
    let media = array(&config.dir, member_bytes, true)?;
    let pool = match format {
        PoolFormat::Paged => {
            let options = PagedOptions {
                cache_bytes: config.cache_bytes,
                ..PagedOptions::default()
            };
            Pool::format_paged(media, &options)
        }
        PoolFormat::InMemory => Pool::format(media),
    }
    .map_err(err)?;
    let volume_blocks = pool.stats().map_err(err)?.free_blocks * 9 / 10;
    let services = Services {
        zero_detect: true,
        dedup: true,
        compression: Compression::None,
    };
    let options = VolumeOptions {
        size_bytes: volume_blocks * BS,
        services,
        key: None,
    };
    pool.create_volume("v", &options).map_err(err)?;
    let v = pool.open_volume("v", None).map_err(err)?;
    let mut out = Run {
        writes,
        rss_base_mib: rss_kib() as f64 / 1024.0,
        ..Run::default()
    };
    pool.reset_lock_stats();

    // Random writes, half of them duplicates, snapshots while writing. The
    // last content of each block is remembered for a sample of blocks.
    let mut rng = Rng(seed | 1);
    let mut expected: HashMap<u64, u64> = HashMap::new();
    // Format 1 copies a volume's whole map per snapshot, so it takes its
    // own (smaller) number.
    let snapshots = match format {
        PoolFormat::Paged => config.snapshots,
        PoolFormat::InMemory => config.compare_snapshots,
    };
    let every = (writes / snapshots.max(1)).max(1);
    let tenth = (writes / 10).max(1);
    let start = Instant::now();
    for i in 0..writes {
        if i > 0 && i % tenth == 0 {
            let s = start.elapsed().as_secs_f64();
            eprintln!(
                "bench-engine: {format:?} {i} of {writes} writes in {s:.0} s ({:.0}/s), {} snapshots, RSS {} MiB",
                i as f64 / s,
                out.snap_ms.len(),
                rss_kib() / 1024
            );
        }
        let lba = rng.next() % volume_blocks;
        let content = rng.next() % (writes / 2).max(1);
        v.write_blocks(lba, &block(content)).map_err(err)?;
        if lba.is_multiple_of(64) {
            expected.insert(lba, content);
        }
        if (i + 1) % every == 0 && (out.snap_ms.len() as u64) < snapshots {
            let t = Instant::now();
            pool.snapshot("v", &format!("v@{}", out.snap_ms.len()))
                .map_err(err)?;
            out.snap_ms.push(ms(t));
        }
    }
    v.flush().map_err(err)?;
    out.write_s = start.elapsed().as_secs_f64();
    out.rss_mib = rss_kib() as f64 / 1024.0;

    eprintln!(
        "bench-engine: {format:?} {writes} writes in {:.0} s; commits after N writes",
        out.write_s
    );
    // Commit cost against the writes (and metadata blocks) it covers.
    for batch in [1u64, 10, 100, 1000, 10_000] {
        if batch > writes / 2 {
            break;
        }
        for _ in 0..batch {
            let lba = rng.next() % volume_blocks;
            let content = writes + rng.next() % batch;
            v.write_blocks(lba, &block(content)).map_err(err)?;
            if lba.is_multiple_of(64) {
                expected.insert(lba, content);
            }
        }
        let before = cache_written(&pool);
        let t = Instant::now();
        v.flush().map_err(err)?;
        let elapsed = ms(t);
        let blocks = cache_written(&pool).zip(before).map(|(a, b)| a - b);
        out.commits.push((batch, blocks, elapsed));
    }

    // Delete half the snapshots; their space is freed in bounded steps.
    let deletes = out.snap_ms.len() / 2;
    eprintln!("bench-engine: {format:?} deleting {deletes} snapshots");
    let t = Instant::now();
    for i in 0..deletes {
        pool.delete(&format!("v@{i}")).map_err(err)?;
    }
    out.delete_ms = ms(t) / deletes.max(1) as f64;
    let t = Instant::now();
    while !pool.release_step(16).map_err(err)? {}
    v.flush().map_err(err)?;
    out.release_s = t.elapsed().as_secs_f64();
    let locks = pool.lock_stats();
    for site in pool.lock_sites().iter().take(6) {
        eprintln!(
            "bench-engine: {format:?} lock taken at {}: {} holds, longest {:.1} ms ({:.1} ms of CPU at most), {} of 50 ms or more",
            site.site,
            site.holds,
            site.max_hold_ns as f64 / 1e6,
            site.max_hold_cpu_ns as f64 / 1e6,
            site.long_holds
        );
    }
    out.max_lock_ms = locks.max_hold_ns as f64 / 1e6;
    out.max_lock_cpu_ms = locks.max_hold_cpu_ns as f64 / 1e6;
    out.long_holds = locks.long_holds as f64;
    out.lock_holds = locks.holds as f64;
    let stats = pool.stats().map_err(err)?;
    out.metadata_mib = (stats.metadata_blocks * BS) as f64 / (1 << 20) as f64;

    // Reopen after a clean shutdown, then after a crash with writes and a
    // snapshot in flight, and check what was written.
    eprintln!(
        "bench-engine: {format:?} released in {:.0} s; reopening",
        out.release_s
    );
    drop(v);
    drop(pool);
    let t = Instant::now();
    let pool = open_pool(config, member_bytes)?;
    out.open_clean_s = t.elapsed().as_secs_f64();
    let v = pool.open_volume("v", None).map_err(err)?;
    for _ in 0..1000 {
        let lba = rng.next() % volume_blocks;
        v.write_blocks(lba, &block(rng.next())).map_err(err)?;
        expected.remove(&lba);
    }
    drop(v);
    drop(pool);
    let t = Instant::now();
    let pool = open_pool(config, member_bytes)?;
    out.open_crash_s = t.elapsed().as_secs_f64();
    check_reads(&pool, &expected)?;
    let snapshots = pool.volumes().map_err(err)?.len() as u64 - 1;
    if snapshots != out.snap_ms.len() as u64 - deletes as u64 {
        return Err(format!("{snapshots} snapshots after reopening"));
    }
    Ok(out)
}

fn check_reads(pool: &Pool, expected: &HashMap<u64, u64>) -> Result<(), String> {
    let v: Volume = pool.open_volume("v", None).map_err(err)?;
    let mut buf = vec![0u8; BLOCK_SIZE];
    for (&lba, &content) in expected {
        v.read_blocks(lba, &mut buf).map_err(err)?;
        if buf != block(content) {
            return Err(format!("block {lba} read back wrong"));
        }
    }
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let i = ((values.len() as f64 - 1.0) * p).round() as usize;
    values.get(i).copied().unwrap_or(0.0)
}

/// "median (min–max)" of one figure over the runs.
fn spread(runs: &[Run], figure: impl Fn(&Run) -> f64) -> String {
    let mut v: Vec<f64> = runs.iter().map(figure).collect();
    let m = median(&mut v);
    let (lo, hi) = (
        v.first().copied().unwrap_or(0.0),
        v.last().copied().unwrap_or(0.0),
    );
    format!("{m:.2} ({lo:.2}–{hi:.2})")
}

fn tib(writes: u64) -> f64 {
    (writes * BS) as f64 / (1u64 << 40) as f64
}

fn snap_figure(run: &Run, p: f64) -> f64 {
    let mut v = run.snap_ms.clone();
    percentile(&mut v, p)
}

fn print_table(config: &Config, paged: &[Run], memory: &[Run]) {
    let columns: Vec<(&str, &[Run])> = [
        ("paged (format 2)", paged),
        ("in memory (format 1)", memory),
    ]
    .into_iter()
    .filter(|(_, r)| !r.is_empty())
    .collect();
    print!("{:<34}", "figure, median (min–max)");
    for (name, runs) in &columns {
        print!(" | {:<28}", format!("{name}, {} writes", runs[0].writes));
    }
    println!();
    type Figure = Box<dyn Fn(&Run) -> f64>;
    let rows: Vec<(&str, Figure)> = vec![
        ("write s", Box::new(|r: &Run| r.write_s)),
        (
            "writes per s (with snapshots)",
            Box::new(|r: &Run| r.writes as f64 / r.write_s),
        ),
        ("RSS MiB after writes", Box::new(|r: &Run| r.rss_mib)),
        (
            "RSS growth MiB per TiB written",
            Box::new(|r: &Run| (r.rss_mib - r.rss_base_mib) / tib(r.writes)),
        ),
        ("snapshot ms p50", Box::new(|r: &Run| snap_figure(r, 0.5))),
        ("snapshot ms p99", Box::new(|r: &Run| snap_figure(r, 0.99))),
        ("delete ms (each)", Box::new(|r: &Run| r.delete_ms)),
        ("release s (all deletes)", Box::new(|r: &Run| r.release_s)),
        ("lock hold max ms", Box::new(|r: &Run| r.max_lock_ms)),
        (
            "lock hold max CPU ms",
            Box::new(|r: &Run| r.max_lock_cpu_ms),
        ),
        ("lock holds (all)", Box::new(|r: &Run| r.lock_holds)),
        (
            "lock holds of 50 ms or more",
            Box::new(|r: &Run| r.long_holds),
        ),
        ("open clean s", Box::new(|r: &Run| r.open_clean_s)),
        ("open after crash s", Box::new(|r: &Run| r.open_crash_s)),
        ("metadata MiB on media", Box::new(|r: &Run| r.metadata_mib)),
    ];
    for (name, figure) in &rows {
        print!("{name:<34}");
        for (_, runs) in &columns {
            print!(" | {:<28}", spread(runs, figure));
        }
        println!();
    }
    println!();
    println!("commit after N writes: metadata blocks written, ms (median over runs)");
    for (name, runs) in &columns {
        let batches = runs[0].commits.len();
        for b in 0..batches {
            let mut times: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.commits.get(b))
                .map(|c| c.2)
                .collect();
            let mut blocks: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.commits.get(b).and_then(|c| c.1))
                .map(|n| n as f64)
                .collect();
            let n = runs[0].commits[b].0;
            let blocks = if blocks.is_empty() {
                "n/a".to_string()
            } else {
                format!("{:.0}", median(&mut blocks))
            };
            println!(
                "  {name:<22} N={n:<6} blocks={blocks:<6} ms={:.2}",
                median(&mut times)
            );
        }
    }
    let mut snaps: Vec<f64> = paged.iter().flat_map(|r| r.snap_ms.clone()).collect();
    let mut rss: Vec<f64> = paged.iter().map(|r| r.rss_mib).collect();
    let mut clean: Vec<f64> = paged.iter().map(|r| r.open_clean_s).collect();
    let mut crash: Vec<f64> = paged.iter().map(|r| r.open_crash_s).collect();
    let max_lock = paged.iter().map(|r| r.max_lock_ms).fold(0.0, f64::max);
    let max_lock_cpu = paged.iter().map(|r| r.max_lock_cpu_ms).fold(0.0, f64::max);
    println!();
    println!(
        "engine-scale: rss_mib={:.0} cache_mib={} snap_median_ms={:.1} snap_p99_ms={:.1} open_clean_s={:.2} open_crash_s={:.2} max_lock_ms={:.0} max_lock_cpu_ms={:.0}",
        median(&mut rss),
        config.cache_bytes >> 20,
        percentile(&mut snaps.clone(), 0.5),
        percentile(&mut snaps, 0.99),
        median(&mut clean),
        median(&mut crash),
        max_lock,
        max_lock_cpu,
    );
}

impl Run {
    /// One line the parent process parses back ([`Run::parse`]).
    fn encode(&self) -> String {
        let list = |v: Vec<String>| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.join(",")
            }
        };
        let snaps = list(self.snap_ms.iter().map(|v| v.to_string()).collect());
        let commits = list(
            self.commits
                .iter()
                .map(|(n, b, t)| {
                    let blocks = b.map_or("-".to_string(), |b| b.to_string());
                    format!("{n}:{blocks}:{t}")
                })
                .collect(),
        );
        format!(
            "RUN {} {} {} {} {} {} {} {} {} {} {snaps} {commits} {} {} {}",
            self.writes,
            self.write_s,
            self.rss_base_mib,
            self.rss_mib,
            self.delete_ms,
            self.release_s,
            self.max_lock_ms,
            self.open_clean_s,
            self.open_crash_s,
            self.metadata_mib,
            self.long_holds,
            self.lock_holds,
            self.max_lock_cpu_ms,
        )
    }

    fn parse(line: &str) -> Option<Run> {
        let f: Vec<&str> = line.strip_prefix("RUN ")?.split(' ').collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
        let list = |i: usize| -> Option<Vec<&str>> {
            let v = *f.get(i)?;
            Some(if v == "-" {
                Vec::new()
            } else {
                v.split(',').collect()
            })
        };
        let commits = list(11)?
            .into_iter()
            .map(|c| {
                let p: Vec<&str> = c.split(':').collect();
                Some((
                    p.first()?.parse().ok()?,
                    p.get(1)?.parse().ok(),
                    p.get(2)?.parse().ok()?,
                ))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Run {
            writes: f.first()?.parse().ok()?,
            write_s: num(1)?,
            rss_base_mib: num(2)?,
            rss_mib: num(3)?,
            delete_ms: num(4)?,
            release_s: num(5)?,
            max_lock_ms: num(6)?,
            open_clean_s: num(7)?,
            open_crash_s: num(8)?,
            metadata_mib: num(9)?,
            long_holds: num(12)?,
            lock_holds: num(13)?,
            max_lock_cpu_ms: num(14)?,
            snap_ms: list(10)?
                .into_iter()
                .map(|v| v.parse().ok())
                .collect::<Option<_>>()?,
            commits,
        })
    }
}

/// Runs one measurement in a child process of its own, so that its RSS
/// is its own.
fn run_in_child(format: PoolFormat, writes: u64, seed: u64) -> Result<Run, String> {
    let exe = std::env::current_exe().map_err(err)?;
    let mode = match format {
        PoolFormat::Paged => "paged",
        PoolFormat::InMemory => "memory",
    };
    let output = std::process::Command::new(exe)
        .env("BENCH_ENGINE_CHILD", format!("{mode}:{writes}:{seed}"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(err)?;
    if !output.status.success() {
        return Err(format!("{mode} run failed (its error is above)"));
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(Run::parse)
        .ok_or_else(|| format!("{mode} run printed no result"))
}

/// The child's side: one run, printed as one line.
fn child(config: &Config, spec: &str) -> Result<(), String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (Some(mode), Some(writes), Some(seed)) = (parts.first(), parts.get(1), parts.get(2)) else {
        return Err(format!("bad child spec {spec}"));
    };
    let format = if *mode == "paged" {
        PoolFormat::Paged
    } else {
        PoolFormat::InMemory
    };
    let writes = writes.parse().map_err(err)?;
    let seed = seed.parse().map_err(err)?;
    let result = run(config, format, writes, seed).map(|r| println!("{}", r.encode()));
    let _ = std::fs::remove_dir_all(&config.dir);
    result
}

fn main() {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bench-engine: {e}");
            std::process::exit(2);
        }
    };
    if let Ok(spec) = std::env::var("BENCH_ENGINE_CHILD") {
        if let Err(e) = child(&config, &spec) {
            eprintln!("bench-engine: {e}");
            std::process::exit(1);
        }
        return;
    }
    println!(
        "bench-engine: {} GiB raid6 pool on {MEMBERS} sparse images in {}, {} random 4 KiB writes \
         (about half duplicates, dedup on), {} snapshots while writing, half deleted, \
         metadata cache {} MiB, {} repetitions; format 1 alongside: {} writes, {} snapshots",
        config.pool_bytes >> 30,
        config.dir.display(),
        config.writes,
        config.snapshots,
        config.cache_bytes >> 20,
        config.reps,
        config.compare_writes,
        config.compare_snapshots,
    );
    let mut paged = Vec::new();
    let mut memory = Vec::new();
    let result = (|| -> Result<(), String> {
        for rep in 0..config.reps {
            paged.push(run_in_child(
                PoolFormat::Paged,
                config.writes,
                rep as u64 + 1,
            )?);
            if config.compare_writes > 0 {
                memory.push(run_in_child(
                    PoolFormat::InMemory,
                    config.compare_writes,
                    rep as u64 + 101,
                )?);
            }
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&config.dir);
    if let Err(e) = result {
        eprintln!("bench-engine: {e}");
        std::process::exit(1);
    }
    print_table(&config, &paged, &memory);
}
