//! Media: where the engine's bytes finally live.
//!
//! Every layer of a volume stack (mapping, reduction, encryption, protection)
//! ends on something that implements [`Media`]: a file today, a zoned or a
//! remote (NVMe/TCP) namespace tomorrow. Protection layouts are themselves
//! [`Media`] built from several member media, so the layers compose.

use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Mutex, RwLock};

/// Why a media operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaError {
    /// The range lies (partly) outside the media.
    OutOfRange { offset: u64, len: u64, size: u64 },
    /// The device reported an I/O error for this range.
    Io(String),
    /// The device is gone (removed, failed completely).
    Gone,
    /// The operation cannot be done at all (e.g. too many failed members).
    Unrecoverable(String),
    /// No space left to allocate (thin pools).
    NoSpace,
}

impl fmt::Display for MediaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MediaError::OutOfRange { offset, len, size } => {
                write!(f, "range {offset}+{len} outside media of {size} bytes")
            }
            MediaError::Io(why) => write!(f, "I/O error: {why}"),
            MediaError::Gone => write!(f, "media is gone"),
            MediaError::Unrecoverable(why) => write!(f, "unrecoverable: {why}"),
            MediaError::NoSpace => write!(f, "no space left"),
        }
    }
}

impl std::error::Error for MediaError {}

pub type MediaResult<T> = Result<T, MediaError>;

/// A byte-addressed store with explicit durability.
///
/// Writes may be cached until [`Media::flush`] returns; after a crash, every
/// write that completed before a completed flush must read back.
pub trait Media: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Reads `buf.len()` bytes at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> MediaResult<()>;
    /// Writes `data` at `offset`.
    fn write_at(&self, offset: u64, data: &[u8]) -> MediaResult<()>;
    /// Makes every completed write durable.
    fn flush(&self) -> MediaResult<()>;
    /// Tells the media a range no longer holds data (a hint: contents after
    /// discard are unspecified unless a layer above defines them).
    fn discard(&self, offset: u64, len: u64) -> MediaResult<()> {
        check_range(offset, len, self.size())
    }
    /// How many copies of every byte the media keeps that can be read one
    /// by one with [`Media::read_copy_at`]: the copies of a mirror, 1 for
    /// anything else.
    fn copies(&self) -> usize {
        1
    }
    /// Reads `buf.len()` bytes at `offset` from copy `copy` (below
    /// [`Media::copies`]) alone, for a layer above that checks its own
    /// checksums and wants another copy when the one it got fails them.
    fn read_copy_at(&self, copy: usize, offset: u64, buf: &mut [u8]) -> MediaResult<()> {
        if copy == 0 {
            self.read_at(offset, buf)
        } else {
            Err(MediaError::Unrecoverable(format!(
                "copy {copy} of a media with one copy"
            )))
        }
    }
    /// Writes `good` at `offset` over copy `copy` alone (read repair):
    /// `good` are bytes another copy returned and the caller verified. The
    /// caller guarantees nothing else writes that range meanwhile.
    fn repair_copy_at(&self, copy: usize, offset: u64, good: &[u8]) -> MediaResult<()> {
        let _ = (offset, good);
        Err(MediaError::Unrecoverable(format!(
            "copy {copy} of a media with one copy cannot be repaired"
        )))
    }
}

/// Returns `OutOfRange` unless `offset..offset+len` lies inside `size`.
pub fn check_range(offset: u64, len: u64, size: u64) -> MediaResult<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(MediaError::OutOfRange { offset, len, size }),
    }
}

/// Media in RAM, for tests and for building stacks without files.
pub struct MemMedia {
    bytes: RwLock<Vec<u8>>,
}

impl MemMedia {
    pub fn new(size: usize) -> Self {
        MemMedia {
            bytes: RwLock::new(vec![0; size]),
        }
    }

    /// A copy of the whole content (tests compare raw media with it).
    pub fn snapshot(&self) -> Vec<u8> {
        self.bytes.read().map(|b| b.clone()).unwrap_or_default()
    }
}

impl Media for MemMedia {
    fn size(&self) -> u64 {
        self.bytes.read().map(|b| b.len() as u64).unwrap_or(0)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> MediaResult<()> {
        let bytes = self.bytes.read().map_err(|_| MediaError::Gone)?;
        check_range(offset, buf.len() as u64, bytes.len() as u64)?;
        let start = offset as usize;
        buf.copy_from_slice(&bytes[start..start + buf.len()]);
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> MediaResult<()> {
        let mut bytes = self.bytes.write().map_err(|_| MediaError::Gone)?;
        check_range(offset, data.len() as u64, bytes.len() as u64)?;
        let start = offset as usize;
        bytes[start..start + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn flush(&self) -> MediaResult<()> {
        Ok(())
    }
}

/// Media backed by a regular file (an emulated SSD's image).
///
/// A failed `fdatasync` fails the media for good: Linux reports a
/// writeback error to one `fdatasync` only and may have dropped the dirty
/// pages, so a later flush that succeeds would claim durability for writes
/// that are gone. Every later write and flush fails with the first error.
pub struct FileMedia {
    file: File,
    size: u64,
    flush_error: Mutex<Option<String>>,
}

impl FileMedia {
    /// Uses `file` as media of `size` bytes (the file is extended if shorter).
    pub fn new(file: File, size: u64) -> std::io::Result<Self> {
        if file.metadata()?.len() < size {
            file.set_len(size)?;
        }
        Ok(FileMedia {
            file,
            size,
            flush_error: Mutex::new(None),
        })
    }

    /// Tells the kernel that I/O to the file is random: no readahead.
    /// For images whose reads are scattered blocks (a parity array's
    /// read-modify-writes, metadata lookups), where readahead only reads
    /// pages nobody asked for, and over a sparse image's holes zero-fills
    /// them (measured at a twentieth of the engine bench's CPU time).
    /// Sequential readers keep the default. Advice only: a failure
    /// changes nothing but speed, so it is not reported.
    pub fn advise_random(&self) {
        use std::os::fd::AsRawFd;
        // SAFETY: posix_fadvise takes a descriptor and a range and touches
        // no memory of ours; `self.file` keeps the descriptor open for the
        // duration of the call.
        unsafe {
            libc::posix_fadvise(self.file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM);
        }
    }

    /// The error a failed flush left, if any.
    fn failed(&self) -> MediaResult<()> {
        let error = self.flush_error.lock().map_err(|_| MediaError::Gone)?;
        match error.as_deref() {
            Some(why) => Err(MediaError::Io(format!(
                "an earlier flush failed ({why}): writes since the last good flush may be lost"
            ))),
            None => Ok(()),
        }
    }

    /// Records the outcome of a flush; the first failure sticks.
    fn record_flush(&self, result: std::io::Result<()>) -> MediaResult<()> {
        self.failed()?;
        result.map_err(|e| {
            let why = e.to_string();
            if let Ok(mut error) = self.flush_error.lock() {
                *error = Some(why.clone());
            }
            MediaError::Io(why)
        })
    }
}

fn io_error(err: std::io::Error) -> MediaError {
    MediaError::Io(err.to_string())
}

impl Media for FileMedia {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> MediaResult<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        self.file.read_exact_at(buf, offset).map_err(io_error)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> MediaResult<()> {
        check_range(offset, data.len() as u64, self.size)?;
        self.failed()?;
        self.file.write_all_at(data, offset).map_err(io_error)
    }

    fn flush(&self) -> MediaResult<()> {
        self.failed()?;
        self.record_flush(self.file.sync_data())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_media_round_trip_and_bounds() {
        let media = MemMedia::new(4096);
        media.write_at(100, b"hello").unwrap();
        let mut buf = [0u8; 5];
        media.read_at(100, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        assert!(matches!(
            media.write_at(4094, b"abc"),
            Err(MediaError::OutOfRange { .. })
        ));
        assert!(matches!(
            media.read_at(u64::MAX, &mut buf),
            Err(MediaError::OutOfRange { .. })
        ));
    }

    #[test]
    fn file_media_round_trip_and_bounds() {
        let path = std::env::temp_dir().join(format!("dpu-engine-media-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let media = FileMedia::new(file, 8192).unwrap();
        media.write_at(4096, &[7u8; 4096]).unwrap();
        media.flush().unwrap();
        let mut buf = vec![0u8; 4096];
        media.read_at(4096, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 7));
        assert!(media.write_at(8000, &[0u8; 200]).is_err());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn file_media_fails_for_good_after_a_failed_flush() {
        let path = std::env::temp_dir().join(format!("dpu-engine-flush-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let media = FileMedia::new(file, 8192).unwrap();
        media.write_at(0, &[1u8; 512]).unwrap();
        // What fdatasync returns when writeback failed (a real EIO cannot
        // be provoked on a regular file here).
        let eio = std::io::Error::from_raw_os_error(5); // EIO
        assert!(media.record_flush(Err(eio)).is_err());
        // The file system would now report success; the media does not.
        assert!(matches!(media.flush(), Err(MediaError::Io(_))));
        assert!(media.write_at(0, &[2u8; 512]).is_err());
        let mut buf = [0u8; 512];
        media.read_at(0, &mut buf).unwrap();
        assert_eq!(buf, [1u8; 512]);
        std::fs::remove_file(&path).unwrap();
    }
}
