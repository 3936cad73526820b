//! Two accelerators in one process over the same image files: each
//! `FencedSsd` opens the image itself, so their OFD locks conflict as two
//! processes' would.

use std::sync::atomic::AtomicUsize;
use std::sync::mpsc;

use super::*;
use crate::namespace::FileNamespace;
use dpu_engine::media::{check_range, Media, MediaError, MediaResult};
use dpu_engine::volume::{PagedOptions, Pool, VolumeOptions};

const IMAGE: u64 = 64 << 20;

/// A directory of fresh images, removed at the end.
pub(crate) struct Images {
    pub dir: PathBuf,
    pub paths: Vec<PathBuf>,
}

impl Images {
    pub fn new(name: &str, count: usize) -> Self {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "dpuemu-ha-{name}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let paths = (0..count)
            .map(|i| {
                let p = dir.join(format!("ssd{i}.img"));
                FileNamespace::open(&p, Some(IMAGE)).unwrap();
                p
            })
            .collect();
        Self { dir, paths }
    }

    pub fn bytes(&self) -> Vec<Vec<u8>> {
        self.paths
            .iter()
            .map(|p| std::fs::read(p).unwrap())
            .collect()
    }
}

impl Drop for Images {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One accelerator's view of the images.
pub(crate) fn node(name: &str, images: &Images) -> (Arc<Fence>, Vec<Arc<FencedSsd>>) {
    let fence = Fence::new(name);
    let ssds = images
        .paths
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let inner: Arc<dyn Namespace> = Arc::new(FileNamespace::open(p, None).unwrap());
            Arc::new(FencedSsd::new(inner, p, i, fence.clone()).unwrap())
        })
        .collect();
    (fence, ssds)
}

fn pattern(tag: u64) -> Vec<u8> {
    (0..4096u64)
        .map(|i| (i.wrapping_mul(31) ^ tag.wrapping_mul(0x9e37)) as u8 | 1)
        .collect()
}

const WAIT: Duration = Duration::from_secs(5);

#[test]
fn record_round_trip_and_damage() {
    let r = FenceRecord {
        generation: 7,
        owner: "dpu-a".into(),
        raised_ms: 1234,
    };
    let b = r.encode();
    assert_eq!(FenceRecord::decode(&b), Some(r));
    assert_eq!(
        FenceRecord::decode(&[0u8; RECORD_BYTES]),
        Some(FenceRecord::default())
    );
    for at in [0, 9, 17, 30, 50, 61] {
        let mut bad = b;
        bad[at] ^= 0x40;
        assert_eq!(FenceRecord::decode(&bad), None, "byte {at}");
    }
}

#[test]
fn passive_writes_nothing_and_a_fence_stops_the_old_active() {
    let images = Images::new("basic", 2);
    let (a, a_ssds) = node("dpu-a", &images);
    let (b, b_ssds) = node("dpu-b", &images);
    let data = pattern(1);
    // Neither holds a generation yet: both are refused.
    assert!(a_ssds[0].write_at(1 << 20, &data).is_err());
    assert!(b_ssds[0].write_at(1 << 20, &data).is_err());
    assert_eq!(a.take(&images.paths, WAIT).unwrap(), 1);
    a_ssds[0].write_at(1 << 20, &data).unwrap();
    a_ssds[1].write_zeroes(2 << 20, 8192).unwrap();
    let fired = Arc::new(AtomicU64::new(0));
    let seen = fired.clone();
    a.on_superseded(Box::new(move |g| seen.store(g, Ordering::SeqCst)));

    assert_eq!(b.take(&images.paths, WAIT).unwrap(), 2);
    let before = images.bytes();
    for (i, ssd) in a_ssds.iter().enumerate() {
        let e = ssd.write_at(3 << 20, &pattern(2)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        assert!(ssd.deallocate(1 << 20, 4096).is_err(), "SSD {i}");
        assert!(ssd.write_zeroes(1 << 20, 4096).is_err(), "SSD {i}");
    }
    assert!(a.is_superseded());
    assert_eq!(fired.load(Ordering::SeqCst), 2);
    assert!(images.bytes() == before, "a fenced write reached an image");
    // The acknowledged write of the old active is there, and the new one
    // writes.
    let mut back = vec![0u8; 4096];
    b_ssds[0].read_at(1 << 20, &mut back).unwrap();
    assert_eq!(back, data);
    b_ssds[0].write_at(3 << 20, &pattern(3)).unwrap();
    for p in &images.paths {
        let r = read_record_at(p).unwrap().unwrap();
        assert_eq!((r.generation, r.owner.as_str()), (2, "dpu-b"));
    }
    // Failback: A takes the media again and B is refused.
    assert_eq!(a.take(&images.paths, WAIT).unwrap(), 3);
    assert!(!a.is_superseded());
    a_ssds[1].write_at(3 << 20, &pattern(4)).unwrap();
    assert!(b_ssds[1].write_at(3 << 20, &pattern(5)).is_err());
    assert!(b.is_superseded());
}

#[test]
fn a_departing_member_keeps_the_record() {
    let images = Images::new("label", 1);
    let (a, ssds) = node("dpu-a", &images);
    a.take(&images.paths, WAIT).unwrap();
    assert!(ssds[0].write_at(RECORD_OFFSET, &[0u8; 8]).is_err());
    // What maintenance does to an SSD leaving its family.
    ssds[0].deallocate(0, 64 << 10).unwrap();
    ssds[0].write_zeroes(0, 128 << 10).unwrap();
    let r = read_record_at(&images.paths[0]).unwrap().unwrap();
    assert_eq!(r.generation, 1);
    ssds[0].write_at(0, &pattern(1)).unwrap();
}

/// The old active writes block after block from several threads while the
/// new one fences: every write it was told succeeded is on the media, every
/// refused one is not, and nothing changes once the fence returned.
#[test]
fn racing_writers_lose_nothing_acknowledged_and_land_nothing_after() {
    const BLOCKS: u64 = 15_000;
    const THREADS: u64 = 4;
    let images = Images::new("race", 1);
    let (a, a_ssds) = node("dpu-a", &images);
    let (b, _) = node("dpu-b", &images);
    a.take(&images.paths, WAIT).unwrap();
    let ssd = a_ssds[0].clone();
    let (tx, rx) = mpsc::channel();
    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            let ssd = ssd.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for k in (t..BLOCKS).step_by(THREADS as usize) {
                    let ok = ssd.write_at((1 << 20) + k * 4096, &pattern(k)).is_ok();
                    if tx.send((k, ok)).is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    drop(tx);
    // Some writes go through first, then the fence lands among the others.
    let mut results: Vec<(u64, bool)> = rx.iter().take(200).collect();
    b.take(&images.paths, WAIT).unwrap();
    let after_fence = images.bytes();
    results.extend(rx.iter());
    for w in writers {
        w.join().unwrap();
    }
    assert_eq!(results.len() as u64, BLOCKS);
    let acked = results.iter().filter(|(_, ok)| *ok).count();
    assert!(acked >= 200 && acked < BLOCKS as usize, "acked {acked}");
    let media = images.bytes().remove(0);
    assert!(
        media == after_fence[0],
        "the old active wrote after the fence"
    );
    for (k, ok) in results {
        let at = ((1 << 20) + k * 4096) as usize;
        let block = &media[at..at + 4096];
        if ok {
            assert!(
                block == pattern(k).as_slice(),
                "acknowledged block {k} lost"
            );
        } else {
            assert!(block.iter().all(|&x| x == 0), "refused block {k} landed");
        }
    }
}

/// A namespace that parks its writes until released: the old active
/// frozen inside a write.
struct Parked {
    inner: Arc<dyn Namespace>,
    entered: mpsc::SyncSender<()>,
    release: Mutex<mpsc::Receiver<()>>,
}

impl Namespace for Parked {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let _ = self.entered.send(());
        if let Ok(rx) = self.release.lock() {
            let _ = rx.recv();
        }
        self.inner.write_at(offset, data)
    }
    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.write_zeroes(offset, len)
    }
    fn deallocate(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.deallocate(offset, len)
    }
}

/// Ghost writes: the old active is frozen inside a write when the new one
/// fences. The fence does not complete (the new active writes nothing)
/// until that write is over; after it, the new data wins and the old
/// active's next write is refused.
#[test]
fn a_write_frozen_inside_the_fence_lands_before_the_new_active_writes() {
    let images = Images::new("frozen", 1);
    let path = &images.paths[0];
    let a = Fence::new("dpu-a");
    let (entered_tx, entered) = mpsc::sync_channel(4);
    let (release, release_rx) = mpsc::channel();
    let parked: Arc<dyn Namespace> = Arc::new(Parked {
        inner: Arc::new(FileNamespace::open(path, None).unwrap()),
        entered: entered_tx,
        release: Mutex::new(release_rx),
    });
    let a_ssd = Arc::new(FencedSsd::new(parked, path, 0, a.clone()).unwrap());
    let (b, b_ssds) = node("dpu-b", &images);
    a.take(&images.paths, WAIT).unwrap();
    let at = 5u64 << 20;
    let stale = {
        let ssd = a_ssd.clone();
        std::thread::spawn(move || ssd.write_at(at, &pattern(1)))
    };
    entered.recv().unwrap();
    let e = b
        .take(&images.paths, Duration::from_millis(100))
        .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
    assert!(b.held().is_none());
    assert!(b_ssds[0].write_at(at, &pattern(2)).is_err());
    // Thaw: the frozen write was checked before the fence and lands now,
    // then the fence completes and the new data goes over it.
    release.send(()).unwrap();
    assert!(stale.join().unwrap().is_ok());
    b.take(&images.paths, WAIT).unwrap();
    b_ssds[0].write_at(at, &pattern(2)).unwrap();
    release.send(()).unwrap();
    assert!(a_ssd.write_at(at, &pattern(3)).is_err());
    let mut back = vec![0u8; 4096];
    b_ssds[0].read_at(at, &mut back).unwrap();
    assert_eq!(back, pattern(2));
}

/// The SSD from the end of the label area on, as engine media (what
/// `volumes::media` builds for a family member).
struct Member(Arc<FencedSsd>);

const MEMBER_AT: u64 = 64 << 10;

fn media_error(e: io::Error) -> MediaError {
    MediaError::Io(e.to_string())
}

impl Media for Member {
    fn size(&self) -> u64 {
        self.0.size() - MEMBER_AT
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> MediaResult<()> {
        check_range(offset, buf.len() as u64, self.size())?;
        self.0.read_at(MEMBER_AT + offset, buf).map_err(media_error)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> MediaResult<()> {
        check_range(offset, data.len() as u64, self.size())?;
        self.0
            .write_at(MEMBER_AT + offset, data)
            .map_err(media_error)
    }
    fn flush(&self) -> MediaResult<()> {
        self.0.flush().map_err(media_error)
    }
    fn discard(&self, offset: u64, len: u64) -> MediaResult<()> {
        check_range(offset, len, self.size())?;
        self.0
            .deallocate(MEMBER_AT + offset, len)
            .map_err(media_error)
    }
}

fn pool_media(ssd: &Arc<FencedSsd>) -> Arc<dyn Media> {
    Arc::new(Member(ssd.clone()))
}

/// The engine over a fenced SSD: the old active goes on writing and
/// committing after the fence; none of its data or metadata reaches the
/// image, and the new active opens the pool with every write acknowledged
/// (flushed) before the fence.
#[test]
fn the_engine_of_the_old_active_commits_nothing_after_the_fence() {
    let images = Images::new("engine", 1);
    let (a, a_ssds) = node("dpu-a", &images);
    let (b, b_ssds) = node("dpu-b", &images);
    a.take(&images.paths, WAIT).unwrap();
    let opts = PagedOptions {
        cache_bytes: 4 << 20,
        ..Default::default()
    };
    let pool = Pool::format_paged(pool_media(&a_ssds[0]), &opts).unwrap();
    pool.create_volume(
        "db",
        &VolumeOptions {
            size_bytes: 16 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    let vol = pool.open_volume("db", None).unwrap();
    for lba in 0..64 {
        vol.write_blocks(lba, &pattern(lba)).unwrap();
    }
    vol.flush().unwrap();
    b.take(&images.paths, WAIT).unwrap();
    let fenced = images.bytes();
    // The old active overwrites what it wrote, writes more, and commits.
    let mut failed = 0;
    for lba in 0..128 {
        if vol.write_blocks(lba, &pattern(1000 + lba)).is_err() {
            failed += 1;
        }
    }
    if vol.flush().is_err() {
        failed += 1;
    }
    let _ = pool.flush();
    assert!(failed > 0, "the old active's engine saw no error at all");
    assert!(images.bytes() == fenced, "the old active changed the media");
    drop(vol);
    pool.close();
    // The new active replays and finds every acknowledged block.
    let pool_b = Pool::open_with(pool_media(&b_ssds[0]), &opts).unwrap();
    let vol_b = pool_b.open_volume("db", None).unwrap();
    let mut back = vec![0u8; 4096];
    for lba in 0..64 {
        vol_b.read_blocks(lba, &mut back).unwrap();
        assert_eq!(back, pattern(lba), "block {lba}");
    }
    vol_b.write_blocks(3, &pattern(7)).unwrap();
    vol_b.flush().unwrap();
    vol_b.read_blocks(3, &mut back).unwrap();
    assert_eq!(back, pattern(7));
}
