//! Fencing: an ownership generation stored on every SSD, checked
//! atomically with every write, so that once a new active accelerator has
//! raised it the old one cannot put another byte on the media.
//!
//! A real dual-ported drive arbitrates this itself (a reservation
//! preempted with abort). Here the two accelerators are two processes over
//! the same image files, with nothing between them, so the image carries
//! the arbiter: a 64-byte *fence record* at [`RECORD_OFFSET`] (inside the
//! family label area, after the two label copies, where nothing else
//! writes) and an open-file-description lock (`F_OFD_SETLK`) on those 64
//! bytes.
//!
//! - A write takes the lock shared, reads the record, and goes ahead only
//!   if the record's generation is the one this accelerator holds; it
//!   keeps the lock until its bytes are in the file.
//! - A takeover first writes the record with the new generation (no lock:
//!   from then on every write that reads it is refused, so holders drain
//!   quickly), then takes the lock exclusive once: that returns only when
//!   no write that read the old generation is still in progress. Only then
//!   may the new active write.
//!
//! So every write of the old active either completed before the takeover
//! finished (and the new active, which reads the media only afterwards,
//! sees it as any write made before a crash) or was refused: there is no
//! third case, and nothing written after the fence exists to be trusted
//! or distrusted. See Documentation/ha.rst.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::guest_memory::HostIovecs;
use crate::namespace::Namespace;

/// Where the fence record lives: the last 4 KiB of the family label area
/// (`volumes::label::LABEL_AREA`, 64 KiB), which the label copies (bytes
/// 0-8191) and the members' engine media (from 64 KiB on) leave alone.
pub const RECORD_OFFSET: u64 = 60 << 10;
/// Bytes of the record, and of the lock range.
pub const RECORD_BYTES: usize = 64;
const MAGIC: &[u8; 8] = b"DPUFENCE";
const VERSION: u32 = 1;
const OWNER_AT: usize = 24;
const OWNER_BYTES: usize = 24;
const CRC_AT: usize = RECORD_BYTES - 4;

/// The fence record of one SSD.
///
/// | offset | size | field |
/// | --- | --- | --- |
/// | 0 | 8 | magic `DPUFENCE` |
/// | 8 | 4 | version (1) |
/// | 12 | 4 | reserved |
/// | 16 | 8 | generation |
/// | 24 | 24 | owner node name (NUL padded) |
/// | 48 | 8 | when it was raised, ms since the Unix epoch |
/// | 56 | 4 | reserved |
/// | 60 | 4 | CRC32C of bytes 0..60 |
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FenceRecord {
    pub generation: u64,
    pub owner: String,
    pub raised_ms: u64,
}

impl FenceRecord {
    pub fn encode(&self) -> [u8; RECORD_BYTES] {
        let mut b = [0u8; RECORD_BYTES];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.generation.to_le_bytes());
        let owner = self.owner.as_bytes();
        let n = owner.len().min(OWNER_BYTES);
        b[OWNER_AT..OWNER_AT + n].copy_from_slice(&owner[..n]);
        b[48..56].copy_from_slice(&self.raised_ms.to_le_bytes());
        let crc = crc32c::crc32c(&b[..CRC_AT]);
        b[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a record. An all-zero area is a never-fenced SSD
    /// (generation 0, which no active holds); anything else that is not a
    /// valid record is `None`, and a writer treats it as fenced.
    pub fn decode(b: &[u8; RECORD_BYTES]) -> Option<Self> {
        if b.iter().all(|&x| x == 0) {
            return Some(Self::default());
        }
        let crc = u32::from_le_bytes([b[60], b[61], b[62], b[63]]);
        if &b[0..8] != MAGIC || crc != crc32c::crc32c(&b[..CRC_AT]) {
            return None;
        }
        if u32::from_le_bytes([b[8], b[9], b[10], b[11]]) != VERSION {
            return None;
        }
        let le64 = |at: usize| {
            let mut v = [0u8; 8];
            v.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(v)
        };
        let owner = &b[OWNER_AT..OWNER_AT + OWNER_BYTES];
        let end = owner.iter().position(|&c| c == 0).unwrap_or(OWNER_BYTES);
        Some(Self {
            generation: le64(16),
            owner: String::from_utf8_lossy(&owner[..end]).into_owned(),
            raised_ms: le64(48),
        })
    }
}

/// Opens the SSD images at `paths` for reading and writing, naming the
/// image in the error of one that cannot be opened.
pub(super) fn open_images(paths: &[PathBuf]) -> io::Result<Vec<File>> {
    paths
        .iter()
        .map(|p| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(p)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))
        })
        .collect()
}

fn read_record(file: &File) -> io::Result<Option<FenceRecord>> {
    let mut b = [0u8; RECORD_BYTES];
    file.read_exact_at(&mut b, RECORD_OFFSET)?;
    Ok(FenceRecord::decode(&b))
}

/// Reads the fence record of the image at `path`.
#[cfg(test)]
pub fn read_record_at(path: &Path) -> io::Result<Option<FenceRecord>> {
    read_record(&File::open(path)?)
}

/// Takes (`F_RDLCK`, `F_WRLCK`) or drops (`F_UNLCK`) the OFD lock on the
/// record. `wait` blocks until it is granted; otherwise a conflict is
/// `WouldBlock`.
fn ofd_lock(file: &File, kind: libc::c_int, wait: bool) -> io::Result<()> {
    // SAFETY: `flock` is plain data; all-zero is a valid value (l_pid must
    // be 0 for OFD locks), and the fields that matter are set below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = RECORD_OFFSET as libc::off_t;
    fl.l_len = RECORD_BYTES as libc::off_t;
    let cmd = if wait {
        libc::F_OFD_SETLKW
    } else {
        libc::F_OFD_SETLK
    };
    loop {
        // SAFETY: the descriptor is owned by `file` and open; `fl` is a
        // valid, initialized `flock` the kernel only reads.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), cmd, &fl) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) | Some(libc::EACCES) => {
                return Err(io::Error::new(io::ErrorKind::WouldBlock, e))
            }
            _ => return Err(e),
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What a node does when a write finds its generation superseded.
type SupersededHook = Box<dyn Fn(u64) + Send + Sync>;

/// This accelerator's claim on the media: the generation it holds (0: it
/// holds none, it is passive) and whether a write found it superseded.
/// Shared by every [`FencedSsd`] of the process.
pub struct Fence {
    node: String,
    held: AtomicU64,
    superseded: AtomicBool,
    /// Called once, from the write that first finds the media fenced.
    on_superseded: Mutex<Option<SupersededHook>>,
}

impl Fence {
    /// A fence for node `node` holding no generation (passive).
    pub fn new(node: &str) -> Arc<Self> {
        Arc::new(Self {
            node: node.to_string(),
            held: AtomicU64::new(0),
            superseded: AtomicBool::new(false),
            on_superseded: Mutex::new(None),
        })
    }

    /// The generation held, if this accelerator may write.
    pub fn held(&self) -> Option<u64> {
        if self.superseded.load(Ordering::Acquire) {
            return None;
        }
        match self.held.load(Ordering::Acquire) {
            0 => None,
            g => Some(g),
        }
    }

    /// Whether a write found a newer generation on the media.
    #[cfg(test)]
    pub fn is_superseded(&self) -> bool {
        self.superseded.load(Ordering::Acquire)
    }

    /// Registers what happens when a write finds this fence superseded
    /// (the HA state machine stops serving).
    pub fn on_superseded(&self, f: SupersededHook) {
        if let Ok(mut slot) = self.on_superseded.lock() {
            *slot = Some(f);
        }
    }

    /// Gives the generation up (orderly handover): every later write is
    /// refused, as after a fence.
    pub fn release(&self) {
        self.held.store(0, Ordering::Release);
    }

    fn supersede(&self, on_media: u64) {
        if !self.superseded.swap(true, Ordering::AcqRel) {
            log::error!(
                "ha: fenced: the media holds generation {on_media}, this node {} held {}; \
                 no more writes",
                self.node,
                self.held.load(Ordering::Acquire)
            );
            if let Ok(slot) = self.on_superseded.lock() {
                if let Some(f) = slot.as_ref() {
                    f(on_media);
                }
            }
        }
    }

    /// Fences every SSD at `paths`: raises their records to one more than
    /// the highest generation found, waits until no write of the previous
    /// holder is in progress, and makes this node the holder. `wait` bounds
    /// the wait for one SSD's lock (an old active frozen inside a write
    /// holds it); on `TimedOut` the records are already raised, so calling
    /// again later completes the fence. Returns the new generation.
    pub fn take(&self, paths: &[PathBuf], wait: Duration) -> io::Result<u64> {
        let files = open_images(paths)?;
        let mut highest = 0u64;
        for file in &files {
            // An undecodable record (a torn raise) counts as nothing: the
            // generation raised now is above every valid one.
            if let Some(r) = read_record(file)? {
                highest = highest.max(r.generation);
            }
        }
        let generation = highest.checked_add(1).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "fence generation exhausted")
        })?;
        let record = FenceRecord {
            generation,
            owner: self.node.clone(),
            raised_ms: now_ms(),
        }
        .encode();
        // First the records, so that every write that reads one from now
        // on is refused and the holders of the shared lock drain...
        for file in &files {
            file.write_all_at(&record, RECORD_OFFSET)?;
        }
        // ...then the lock exclusive once per SSD: granted only when no
        // write that read the old generation is still in progress.
        for (file, path) in files.iter().zip(paths) {
            let started = Instant::now();
            loop {
                match ofd_lock(file, libc::F_WRLCK as libc::c_int, false) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if started.elapsed() >= wait {
                            return Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                format!(
                                    "{}: a write of the previous holder is still in \
                                     progress (a frozen process?)",
                                    path.display()
                                ),
                            ));
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) => return Err(e),
                }
            }
            ofd_lock(file, libc::F_UNLCK as libc::c_int, false)?;
            file.sync_data()?;
        }
        self.superseded.store(false, Ordering::Release);
        self.held.store(generation, Ordering::Release);
        log::info!("ha: node {} holds fence generation {generation}", self.node);
        Ok(generation)
    }
}

/// Counts this process's writes in progress on one SSD: the first takes
/// the OFD lock shared, the last drops it (an OFD lock belongs to the open
/// file description, not to a thread, so one thread's unlock would drop
/// the others').
struct SharedHold {
    writers: Mutex<usize>,
}

/// An SSD image whose every write is checked against the fence.
pub struct FencedSsd {
    inner: Arc<dyn Namespace>,
    /// The image opened once more: its own open file description, whose
    /// OFD lock conflicts with the other accelerator's (and with this
    /// process's fencer, which opens the image again).
    file: File,
    index: usize,
    fence: Arc<Fence>,
    hold: SharedHold,
}

impl FencedSsd {
    /// Wraps SSD `index`, the image at `path` served by `inner`.
    pub fn new(
        inner: Arc<dyn Namespace>,
        path: &Path,
        index: usize,
        fence: Arc<Fence>,
    ) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).open(path)?;
        if file.metadata()?.len() < RECORD_OFFSET + RECORD_BYTES as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "image too small for the fence record",
            ));
        }
        Ok(Self {
            inner,
            file,
            index,
            fence,
            hold: SharedHold {
                writers: Mutex::new(0),
            },
        })
    }

    fn refused(&self, why: String) -> io::Error {
        // Not NotConnected: a fenced SSD is not gone, and the volume layer
        // must not start a rebuild for it; the write simply fails.
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("SSD {}: fenced: {why}", self.index),
        )
    }

    fn enter(&self) -> io::Result<()> {
        let mut n = self.hold.writers.lock().map_err(|_| io::ErrorKind::Other)?;
        if *n == 0 {
            ofd_lock(&self.file, libc::F_RDLCK as libc::c_int, true)?;
        }
        *n += 1;
        Ok(())
    }

    fn leave(&self) {
        let Ok(mut n) = self.hold.writers.lock() else {
            return;
        };
        *n = n.saturating_sub(1);
        if *n == 0 {
            if let Err(e) = ofd_lock(&self.file, libc::F_UNLCK as libc::c_int, false) {
                log::error!("ha: SSD {}: unlock of the fence record: {e}", self.index);
            }
        }
    }

    /// Runs `write` if this node holds the generation on the media, with
    /// the record locked shared until it returns.
    fn checked<T>(&self, write: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        let Some(mine) = self.fence.held() else {
            return Err(self.refused(format!("node {} holds no generation", self.fence.node)));
        };
        self.enter()?;
        let result = match read_record(&self.file) {
            Ok(Some(r)) if r.generation == mine => write(),
            Ok(Some(r)) => {
                self.fence.supersede(r.generation);
                Err(self.refused(format!(
                    "generation {} (node {}) superseded {mine}",
                    r.generation, r.owner
                )))
            }
            Ok(None) => {
                self.fence.supersede(u64::MAX);
                Err(self.refused("unreadable fence record".into()))
            }
            Err(e) => Err(e),
        };
        self.leave();
        result
    }
}

/// Whether `offset..offset + len` touches the fence record.
fn overlaps_record(offset: u64, len: u64) -> bool {
    let end = offset.saturating_add(len);
    offset < RECORD_OFFSET + RECORD_BYTES as u64 && end > RECORD_OFFSET
}

/// Runs a zeroing operation on `offset..offset + len` minus the fence
/// record: a member leaving its family has its whole label area
/// deallocated, which must not take the record (and with it this node's
/// generation) along.
fn around_record(
    offset: u64,
    len: u64,
    mut op: impl FnMut(u64, u64) -> io::Result<()>,
) -> io::Result<()> {
    if !overlaps_record(offset, len) {
        return op(offset, len);
    }
    let end = offset.saturating_add(len);
    let record_end = RECORD_OFFSET + RECORD_BYTES as u64;
    if offset < RECORD_OFFSET {
        op(offset, RECORD_OFFSET - offset)?;
    }
    if end > record_end {
        op(record_end, end - record_end)?;
    }
    Ok(())
}

impl Namespace for FencedSsd {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn lba_shift(&self) -> u8 {
        self.inner.lba_shift()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if overlaps_record(offset, data.len() as u64) {
            return Err(self.refused("a write over the fence record".into()));
        }
        self.checked(|| self.inner.write_at(offset, data))
    }
    fn direct_guest_io(&self) -> bool {
        self.inner.direct_guest_io()
    }
    fn read_to_guest(&self, offset: u64, dst: &HostIovecs<'_>) -> io::Result<()> {
        self.inner.read_to_guest(offset, dst)
    }
    fn write_from_guest(&self, offset: u64, src: &HostIovecs<'_>) -> io::Result<()> {
        if overlaps_record(offset, src.len() as u64) {
            return Err(self.refused("a write over the fence record".into()));
        }
        self.checked(|| self.inner.write_from_guest(offset, src))
    }
    fn flush(&self) -> io::Result<()> {
        // A flush moves nothing new to the media: what it makes durable was
        // written (and checked) before.
        self.inner.flush()
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.checked(|| around_record(offset, len, |o, l| self.inner.write_zeroes(o, l)))
    }
    fn deallocate(&self, offset: u64, len: u64) -> io::Result<()> {
        self.checked(|| around_record(offset, len, |o, l| self.inner.deallocate(o, l)))
    }
}

#[cfg(test)]
#[path = "fence_tests.rs"]
pub(crate) mod tests;
