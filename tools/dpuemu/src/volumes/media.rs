//! Engine [`Media`] over the emulated SSDs: an SSD image as media, a byte
//! range of a media (the part of an SSD below the family label), and a
//! linear concatenation (the SINGLE layout over several SSDs).

use std::sync::Arc;

use dpu_engine::media::{check_range, Media, MediaError, MediaResult};

use crate::namespace::Namespace;

/// An SSD that is not connected (a remote SSD whose association is lost)
/// is gone, as a pulled SSD: its array fails the member at the first
/// failed command, a read included, instead of counting a read error and
/// keeping a member that answers nothing. Every other error is an I/O
/// error of that range.
fn io_error(e: std::io::Error) -> MediaError {
    match e.kind() {
        std::io::ErrorKind::NotConnected => MediaError::Gone,
        _ => MediaError::Io(e.to_string()),
    }
}

/// Bit rot for the fault injection: flips the lowest bit of the first byte
/// of every 512-byte sector in `range` on `raw` (the image below the fault
/// layer) and flushes, as if the media had decayed under stored data.
pub fn rot(raw: &dyn Media, range: std::ops::Range<u64>) -> MediaResult<()> {
    const SECTOR: u64 = 512;
    let len = usize::try_from(range.end.saturating_sub(range.start))
        .map_err(|_| MediaError::Io("rot range too large".into()))?;
    check_range(range.start, len as u64, raw.size())?;
    let mut bytes = vec![0u8; len];
    raw.read_at(range.start, &mut bytes)?;
    let first = range.start.next_multiple_of(SECTOR);
    let mut at = first;
    while at < range.end {
        bytes[(at - range.start) as usize] ^= 1;
        at += SECTOR;
    }
    raw.write_at(range.start, &bytes)?;
    raw.flush()
}

/// A whole SSD image (the same backend its own NVMe function uses) as
/// engine media. Discard punches holes, so the range reads as zeroes.
pub struct SsdMedia {
    ssd: Arc<dyn Namespace>,
}

impl SsdMedia {
    pub fn new(ssd: Arc<dyn Namespace>) -> Self {
        Self { ssd }
    }
}

impl Media for SsdMedia {
    fn size(&self) -> u64 {
        self.ssd.size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> MediaResult<()> {
        check_range(offset, buf.len() as u64, self.size())?;
        self.ssd.read_at(offset, buf).map_err(io_error)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> MediaResult<()> {
        check_range(offset, data.len() as u64, self.size())?;
        self.ssd.write_at(offset, data).map_err(io_error)
    }

    fn flush(&self) -> MediaResult<()> {
        self.ssd.flush().map_err(io_error)
    }

    fn discard(&self, offset: u64, len: u64) -> MediaResult<()> {
        check_range(offset, len, self.size())?;
        self.ssd.deallocate(offset, len).map_err(io_error)
    }
}

/// Bytes `offset..offset + size` of another media.
pub struct SliceMedia {
    inner: Arc<dyn Media>,
    offset: u64,
    size: u64,
}

impl SliceMedia {
    /// Everything of `inner` from `offset` on; `None` if nothing is left.
    pub fn tail(inner: Arc<dyn Media>, offset: u64) -> Option<Self> {
        let size = inner.size().checked_sub(offset).filter(|s| *s > 0)?;
        Some(Self {
            inner,
            offset,
            size,
        })
    }
}

impl Media for SliceMedia {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> MediaResult<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        self.inner.read_at(self.offset + offset, buf)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> MediaResult<()> {
        check_range(offset, data.len() as u64, self.size)?;
        self.inner.write_at(self.offset + offset, data)
    }

    fn flush(&self) -> MediaResult<()> {
        self.inner.flush()
    }

    fn discard(&self, offset: u64, len: u64) -> MediaResult<()> {
        check_range(offset, len, self.size)?;
        self.inner.discard(self.offset + offset, len)
    }
}

/// Several media one after the other. The engine has no linear layout
/// (its stripe interleaves chunks), and SINGLE over several SSDs is the
/// simplest way to use SSDs of different sizes.
pub struct ConcatMedia {
    parts: Vec<Arc<dyn Media>>,
    /// Start offset of each part; `starts[i + 1]` is the end of part `i`.
    starts: Vec<u64>,
}

impl ConcatMedia {
    pub fn new(parts: Vec<Arc<dyn Media>>) -> Self {
        let mut starts = Vec::with_capacity(parts.len() + 1);
        let mut at = 0u64;
        starts.push(0);
        for part in &parts {
            at = at.saturating_add(part.size());
            starts.push(at);
        }
        Self { parts, starts }
    }

    /// Calls `f(part, offset in part, range in the caller's buffer)` for
    /// every piece of `offset..offset + len`.
    fn split(
        &self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(&dyn Media, u64, std::ops::Range<usize>) -> MediaResult<()>,
    ) -> MediaResult<()> {
        check_range(offset, len, self.size())?;
        let end = offset + len;
        for (i, part) in self.parts.iter().enumerate() {
            let (start, stop) = (self.starts[i], self.starts[i + 1]);
            let from = offset.max(start);
            let to = end.min(stop);
            if from < to {
                let at = (from - offset) as usize..(to - offset) as usize;
                f(part.as_ref(), from - start, at)?;
            }
        }
        Ok(())
    }
}

impl Media for ConcatMedia {
    fn size(&self) -> u64 {
        self.starts.last().copied().unwrap_or(0)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> MediaResult<()> {
        self.split(offset, buf.len() as u64, |part, at, range| {
            part.read_at(at, &mut buf[range])
        })
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> MediaResult<()> {
        self.split(offset, data.len() as u64, |part, at, range| {
            part.write_at(at, &data[range])
        })
    }

    fn flush(&self) -> MediaResult<()> {
        self.parts.iter().try_for_each(|p| p.flush())
    }

    fn discard(&self, offset: u64, len: u64) -> MediaResult<()> {
        self.split(offset, len, |part, at, range| {
            part.discard(at, range.len() as u64)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dpu_engine::media::MemMedia;

    #[test]
    fn slice_and_concat_address_the_right_bytes() {
        let a = Arc::new(MemMedia::new(8192));
        let b = Arc::new(MemMedia::new(4096));
        let slice: Arc<dyn Media> = Arc::new(SliceMedia::tail(a.clone(), 1024).unwrap());
        assert_eq!(slice.size(), 7168);
        let concat = ConcatMedia::new(vec![slice, b.clone()]);
        assert_eq!(concat.size(), 7168 + 4096);
        let data: Vec<u8> = (0..2048).map(|i| i as u8).collect();
        // Straddles the boundary between the two parts.
        concat.write_at(7168 - 1024, &data).unwrap();
        assert_eq!(&a.snapshot()[8192 - 1024..], &data[..1024]);
        assert_eq!(&b.snapshot()[..1024], &data[1024..]);
        let mut back = vec![0u8; 2048];
        concat.read_at(7168 - 1024, &mut back).unwrap();
        assert_eq!(back, data);
        assert!(concat.read_at(7168 + 4000, &mut back).is_err());
        assert!(SliceMedia::tail(b, 4096).is_none());
    }

    /// An SSD that fails every command with one error kind.
    struct Failing(std::io::ErrorKind);

    impl Namespace for Failing {
        fn size(&self) -> u64 {
            1 << 20
        }
        fn read_at(&self, _: u64, _: &mut [u8]) -> std::io::Result<()> {
            Err(std::io::Error::new(self.0, "failing SSD"))
        }
        fn write_at(&self, _: u64, _: &[u8]) -> std::io::Result<()> {
            Err(std::io::Error::new(self.0, "failing SSD"))
        }
        fn flush(&self) -> std::io::Result<()> {
            Err(std::io::Error::new(self.0, "failing SSD"))
        }
        fn write_zeroes(&self, _: u64, _: u64) -> std::io::Result<()> {
            Err(std::io::Error::new(self.0, "failing SSD"))
        }
        fn deallocate(&self, _: u64, _: u64) -> std::io::Result<()> {
            Err(std::io::Error::new(self.0, "failing SSD"))
        }
    }

    #[test]
    fn a_not_connected_ssd_is_gone_and_other_errors_are_io() {
        let gone = SsdMedia::new(Arc::new(Failing(std::io::ErrorKind::NotConnected)));
        let mut buf = [0u8; 512];
        assert_eq!(gone.read_at(0, &mut buf), Err(MediaError::Gone));
        assert_eq!(gone.write_at(0, &buf), Err(MediaError::Gone));
        assert_eq!(gone.flush(), Err(MediaError::Gone));
        assert_eq!(gone.discard(0, 512), Err(MediaError::Gone));
        for kind in [
            std::io::ErrorKind::Other,
            std::io::ErrorKind::UnexpectedEof,
            std::io::ErrorKind::InvalidData,
        ] {
            let failing = SsdMedia::new(Arc::new(Failing(kind)));
            assert!(
                matches!(failing.read_at(0, &mut buf), Err(MediaError::Io(_))),
                "{kind:?}"
            );
            assert!(
                matches!(failing.write_at(0, &buf), Err(MediaError::Io(_))),
                "{kind:?}"
            );
        }
    }
}
