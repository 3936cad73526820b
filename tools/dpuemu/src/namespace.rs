//! Namespace backends: where a controller's logical blocks live.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::guest_memory::HostIovecs;

/// Log2 of the logical block size every dpuemu namespace uses today.
pub const DEFAULT_LBA_SHIFT: u8 = 9;

/// A namespace's storage, addressed in bytes. Offsets and lengths have been
/// range-checked by the controller before any call.
pub trait Namespace: Send + Sync {
    /// Size in bytes (a multiple of the logical block size).
    fn size(&self) -> u64;
    /// Bytes that hold data (Identify Namespace NUSE); thin namespaces
    /// report less than their size.
    fn used(&self) -> u64 {
        self.size()
    }
    /// Whether this is a volume of the accelerator (listed by the volume
    /// manager, not as a plain namespace).
    fn is_volume(&self) -> bool {
        false
    }
    /// Log2 of the logical block size.
    fn lba_shift(&self) -> u8 {
        DEFAULT_LBA_SHIFT
    }
    /// Reads `buf.len()` bytes at `offset`, overwriting every byte of
    /// `buf` (the controller reuses its buffers, so a byte left alone would
    /// hand an earlier command's data to the host).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes `data` at `offset`; returns once the data is in the backing
    /// store (not necessarily stable).
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Whether the controller should hand this namespace the guest's pages
    /// ([`Namespace::read_to_guest`], [`Namespace::write_from_guest`])
    /// rather than a copy: true where the backend moves the data itself at
    /// no more cost than a copy and can do so while holding the guest's
    /// mappings in place (a plain file). Layers that keep data of their own
    /// (the power-loss cache, volumes) or that may block for long (remote
    /// SSDs, during which an unmap would wait) keep the default, false.
    fn direct_guest_io(&self) -> bool {
        false
    }
    /// Reads `dst.len()` bytes at `offset` straight into guest memory. The
    /// default goes through [`Namespace::read_at`] and a buffer.
    fn read_to_guest(&self, offset: u64, dst: &HostIovecs<'_>) -> io::Result<()> {
        let mut buf = vec![0u8; dst.len()];
        self.read_at(offset, &mut buf)?;
        dst.scatter(&buf)
    }
    /// Writes `src.len()` bytes of guest memory at `offset`, as
    /// [`Namespace::write_at`] would. The default copies them first.
    fn write_from_guest(&self, offset: u64, src: &HostIovecs<'_>) -> io::Result<()> {
        let mut buf = vec![0u8; src.len()];
        src.gather(&mut buf)?;
        self.write_at(offset, &buf)
    }
    /// Makes every completed write stable.
    fn flush(&self) -> io::Result<()>;
    /// Zeroes `len` bytes at `offset`.
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Deallocates `len` bytes at `offset`; they read back as zeroes.
    fn deallocate(&self, offset: u64, len: u64) -> io::Result<()>;
    /// The Asymmetric Namespace Access state of the path through this
    /// process ([`ana`]): optimized, unless a high-availability pair made
    /// it inaccessible (the passive node, or a node that lost the fence).
    fn ana_state(&self) -> u8 {
        ana::OPTIMIZED
    }
    /// The zoned namespace this is (`--zoned-ssd`), whose I/O commands
    /// follow the zone rules (`controller/zoned.rs`).
    fn zoned(&self) -> Option<&crate::zoned::ZonedNamespace> {
        None
    }
}

/// ANA states (NVMe base specification, Asymmetric Namespace Access).
pub mod ana {
    /// ANA Optimized.
    pub const OPTIMIZED: u8 = 0x01;
    /// ANA Inaccessible: no I/O through this path; the host uses another.
    pub const INACCESSIBLE: u8 = 0x03;
}

/// Most entries one `preadv`/`pwritev` takes (Linux's UIO_MAXIOV).
const IOV_MAX: usize = 1024;

/// A namespace over a regular file (an SSD image).
pub struct FileNamespace {
    file: File,
    size: u64,
}

impl FileNamespace {
    /// Opens (or, when `size` is given, creates and extends) the image at
    /// `path`. The namespace covers the file rounded down to whole blocks.
    pub fn open(path: &Path, size: Option<u64>) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(size.is_some())
            .truncate(false)
            .open(path)?;
        let mut len = file.metadata()?.len();
        if let Some(want) = size {
            if len < want {
                file.set_len(want)?;
                len = want;
            }
        }
        Self::from_file(file, len)
    }

    /// Wraps an open file of `len` bytes.
    pub fn from_file(file: File, len: u64) -> io::Result<Self> {
        let block = 1u64 << DEFAULT_LBA_SHIFT;
        let size = len / block * block;
        if size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "image is smaller than one logical block",
            ));
        }
        Ok(Self { file, size })
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let off = libc::off_t::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let len = libc::off_t::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: fallocate only reads its integer arguments; the descriptor
        // is owned by `self.file` and open.
        let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off, len) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Moves `buffer` to (`write`) or from the file at `offset` with as few
    /// `pwritev`/`preadv` calls as the kernel allows, resuming after short
    /// transfers.
    fn transfer_vectored(
        &self,
        offset: u64,
        buffer: &HostIovecs<'_>,
        write: bool,
    ) -> io::Result<()> {
        if !write && !buffer.device_writes() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // The buffer's ranges, or after a short transfer our own copy of
        // them, advanced past what each call moved.
        let mut iovecs = Cow::Borrowed(buffer.iovecs());
        let mut first = 0usize;
        let mut position = offset;
        while first < iovecs.len() {
            if iovecs[first].iov_len == 0 {
                first += 1;
                continue;
            }
            let batch = &iovecs[first..iovecs.len().min(first + IOV_MAX)];
            let at = libc::off_t::try_from(position).map_err(|_| io::ErrorKind::InvalidInput)?;
            // The batch holds at most IOV_MAX entries.
            let count = batch.len() as libc::c_int;
            let fd = self.file.as_raw_fd();
            let moved = if let [one] = batch {
                // One range (most small commands): the plain call, which
                // spares the kernel importing an iovec array.
                let base = one.iov_base;
                if write {
                    // SAFETY: As for `pwritev` below, for the one range.
                    unsafe { libc::pwrite(fd, base, one.iov_len, at) }
                } else {
                    // SAFETY: As for `preadv` below, for the one range.
                    unsafe { libc::pread(fd, base, one.iov_len, at) }
                }
            } else if write {
                // SAFETY: Every entry of `batch` describes guest memory that
                // `buffer` keeps mapped for as long as it lives (its type
                // invariant), which is past this call; entries advanced
                // below only shrink from the front. The kernel reads those
                // bytes without any Rust reference being made to them, so
                // the guest changing them meanwhile is no unsoundness (the
                // file gets whatever they held, as with DMA).
                unsafe { libc::pwritev(fd, batch.as_ptr(), count, at) }
            } else {
                // SAFETY: As for `pwritev`; `buffer.device_writes()` was
                // checked above, so each entry lies in a writable mapping
                // and the kernel may store into it.
                unsafe { libc::preadv(fd, batch.as_ptr(), count, at) }
            };
            let mut moved = match moved {
                n if n > 0 => n as usize,
                0 if write => return Err(io::ErrorKind::WriteZero.into()),
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(e);
                }
            };
            position += moved as u64;
            if position - offset == buffer.len() as u64 {
                // All of it, the usual case: no copy of the ranges needed.
                return Ok(());
            }
            let iovecs = iovecs.to_mut();
            while moved > 0 {
                let iov = &mut iovecs[first];
                if moved >= iov.iov_len {
                    moved -= iov.iov_len;
                    first += 1;
                } else {
                    // Stays inside the entry: `moved < iov_len`.
                    iov.iov_base = iov.iov_base.cast::<u8>().wrapping_add(moved).cast();
                    iov.iov_len -= moved;
                    moved = 0;
                }
            }
        }
        Ok(())
    }

    fn write_zero_buffers(&self, mut offset: u64, len: u64) -> io::Result<()> {
        let zeroes = vec![0u8; 1 << 20];
        let end = offset + len;
        while offset < end {
            let n = (end - offset).min(zeroes.len() as u64) as usize;
            self.file.write_all_at(&zeroes[..n], offset)?;
            offset += n as u64;
        }
        Ok(())
    }
}

impl Namespace for FileNamespace {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    fn direct_guest_io(&self) -> bool {
        true
    }

    fn read_to_guest(&self, offset: u64, dst: &HostIovecs<'_>) -> io::Result<()> {
        self.transfer_vectored(offset, dst, false)
    }

    fn write_from_guest(&self, offset: u64, src: &HostIovecs<'_>) -> io::Result<()> {
        self.transfer_vectored(offset, src, true)
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.fallocate(
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
        .or_else(|_| self.deallocate(offset, len))
    }

    fn deallocate(&self, offset: u64, len: u64) -> io::Result<()> {
        self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
        .or_else(|_| self.write_zero_buffers(offset, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_namespace_round_trip() {
        let dir = std::env::temp_dir().join(format!("dpuemu-ns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("img");
        let _ = std::fs::remove_file(&path);
        assert!(FileNamespace::open(&path, None).is_err());
        let ns = FileNamespace::open(&path, Some(1 << 20)).unwrap();
        assert_eq!(ns.size(), 1 << 20);
        ns.write_at(4096, &[0xab; 8192]).unwrap();
        ns.flush().unwrap();
        let mut buf = [0u8; 8192];
        ns.read_at(4096, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0xab));
        ns.write_zeroes(4096, 4096).unwrap();
        ns.deallocate(8192, 512).unwrap();
        ns.read_at(4096, &mut buf).unwrap();
        assert!(buf[..4096 + 512].iter().all(|&b| b == 0));
        assert!(buf[4096 + 512..].iter().all(|&b| b == 0xab));
        // Reopening keeps the size and the data.
        drop(ns);
        let ns = FileNamespace::open(&path, None).unwrap();
        assert_eq!(ns.size(), 1 << 20);
        ns.read_at(8192 + 512, &mut buf[..16]).unwrap();
        assert_eq!(buf[0], 0xab);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
