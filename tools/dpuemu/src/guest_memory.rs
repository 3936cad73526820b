//! Guest memory: the only way the emulator touches host (VM) memory.
//!
//! Every address the driver hands the device (queue bases, PRP entries, SGL
//! descriptors, shadow doorbells) is untrusted. All accesses go through
//! [`GuestMemory`], whose implementations range-check the whole access
//! against the regions the client has mapped before copying a single byte.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::{RwLock, RwLockReadGuard};

/// An access touched memory outside every mapped region (or wrote to a
/// read-only region).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryError {
    /// First address of the failed access.
    pub addr: u64,
    /// Length of the failed access.
    pub len: u64,
}

impl std::fmt::Display for MemoryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "guest memory access {:#x}+{:#x} out of range",
            self.addr, self.len
        )
    }
}

/// Device-side view of guest memory (DMA addresses, i.e. IOVAs when the
/// guest uses an IOMMU).
pub trait GuestMemory: Send + Sync {
    /// Copies `buf.len()` bytes from `addr`.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError>;
    /// Copies `data` to `addr`.
    fn write(&self, addr: u64, data: &[u8]) -> Result<(), MemoryError>;
    /// Loads a naturally aligned little-endian `u32` with one access (used
    /// for shadow doorbells, which the host updates concurrently).
    fn read_u32(&self, addr: u64) -> Result<u32, MemoryError>;
    /// Stores a naturally aligned little-endian `u32` with one access (used
    /// for EventIdx entries and the last dword of completion entries).
    fn write_u32(&self, addr: u64, value: u32) -> Result<(), MemoryError>;
    /// The host addresses of the guest ranges `pieces` (address, length),
    /// for a transfer the kernel makes straight into or out of guest pages
    /// (`preadv`/`pwritev`). `device_writes` asks for ranges the device may
    /// write (a Read's data). The ranges stay mapped until the result is
    /// dropped. `None` when some range is not in a host mapping (or not
    /// writable): the caller then copies through [`GuestMemory::read`] and
    /// [`GuestMemory::write`], which report the error. Memory without host
    /// mappings (the tests' vector) always answers `None`.
    fn host_iovecs(
        &self,
        pieces: &mut dyn Iterator<Item = (u64, u64)>,
        device_writes: bool,
    ) -> Option<HostIovecs<'_>> {
        let _ = (pieces, device_writes);
        None
    }
}

/// A guest buffer as host virtual address ranges, for one vectored system
/// call.
///
/// The memory is the guest's and the guest may change it at any time, so
/// no Rust reference to it is ever made: the ranges are raw `iovec`s,
/// handed to the kernel or copied with raw copies.
///
/// INVARIANT: every `iovec` lies inside a mapping of [`DmaRegions`] (one the
/// device may write if `device_writes`), and `_regions`, the read side of
/// the region table's lock, keeps each such mapping in place until this
/// value is dropped. Only [`DmaRegions::host_iovecs`] creates one.
pub struct HostIovecs<'a> {
    iovecs: Ranges,
    len: usize,
    device_writes: bool,
    /// Keeps the regions mapped (unmapping takes the write side).
    _regions: RwLockReadGuard<'a, BTreeMap<u64, MappedRegion>>,
    /// A wrapper's lock that must stay held while the transfer runs (Bus
    /// Master Enable's), dropped after `_regions`.
    _wrapper: Option<RwLockReadGuard<'a, bool>>,
}

/// Ranges held inline up to [`Ranges::INLINE`] of them (a 4 KiB command
/// has one or two), on the heap beyond: the direct path exists to save
/// work per command, and an allocation is a good part of a small one.
struct Ranges {
    inline: [libc::iovec; Ranges::INLINE],
    count: usize,
    spilled: Vec<libc::iovec>,
}

impl Ranges {
    const INLINE: usize = 4;
    const EMPTY: libc::iovec = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };

    fn new() -> Self {
        Self {
            inline: [Self::EMPTY; Self::INLINE],
            count: 0,
            spilled: Vec::new(),
        }
    }

    fn as_slice(&self) -> &[libc::iovec] {
        if self.spilled.is_empty() {
            &self.inline[..self.count]
        } else {
            &self.spilled
        }
    }

    fn last_mut(&mut self) -> Option<&mut libc::iovec> {
        if self.spilled.is_empty() {
            self.inline[..self.count].last_mut()
        } else {
            self.spilled.last_mut()
        }
    }

    fn push(&mut self, iov: libc::iovec) {
        if self.spilled.is_empty() && self.count < Self::INLINE {
            self.inline[self.count] = iov;
            self.count += 1;
        } else {
            if self.spilled.is_empty() {
                self.spilled.extend_from_slice(&self.inline[..self.count]);
            }
            self.spilled.push(iov);
        }
    }
}

impl<'a> HostIovecs<'a> {
    /// Total bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the device may write these ranges (a Read's data).
    pub fn device_writes(&self) -> bool {
        self.device_writes
    }

    /// The ranges, valid for as long as `self` lives (for the system call).
    pub fn iovecs(&self) -> &[libc::iovec] {
        self.iovecs.as_slice()
    }

    /// Keeps `guard` until `self` is dropped: a wrapper's lock that must
    /// stay held while the transfer runs.
    pub fn hold(mut self, guard: RwLockReadGuard<'a, bool>) -> Self {
        self._wrapper = Some(guard);
        self
    }

    /// Copies `data` (exactly [`HostIovecs::len`] bytes) into the ranges.
    pub fn scatter(&self, data: &[u8]) -> io::Result<()> {
        if !self.device_writes || data.len() != self.len {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let mut done = 0usize;
        for iov in self.iovecs() {
            // SAFETY: By the type's invariant `iov` lies in a writable
            // mapping that `_regions` keeps in place; `done + iov_len <= len ==
            // data.len()` since the ranges add up to `len`; `data` is our
            // own memory, so it cannot overlap the guest's. A raw copy
            // makes no reference to the guest memory.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    data.as_ptr().add(done),
                    iov.iov_base.cast::<u8>(),
                    iov.iov_len,
                );
            }
            done += iov.iov_len;
        }
        Ok(())
    }

    /// Copies the ranges into `buf` (exactly [`HostIovecs::len`] bytes).
    pub fn gather(&self, buf: &mut [u8]) -> io::Result<()> {
        if buf.len() != self.len {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let mut done = 0usize;
        for iov in self.iovecs() {
            // SAFETY: As in `scatter`, with the roles swapped: the source
            // lies in a mapping `_regions` keeps in place, the destination in
            // `buf`. The guest may change the source meanwhile; the bytes
            // are then whatever it left, as with a real device's DMA.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    iov.iov_base.cast::<u8>().cast_const(),
                    buf.as_mut_ptr().add(done),
                    iov.iov_len,
                );
            }
            done += iov.iov_len;
        }
        Ok(())
    }
}

/// Returns `addr..addr+len` as a checked range, or the error for it.
fn checked_end(addr: u64, len: u64) -> Result<u64, MemoryError> {
    addr.checked_add(len).ok_or(MemoryError { addr, len })
}

/// One DMA region mapped from a file descriptor the client passed.
struct MappedRegion {
    /// First DMA address of the region.
    iova: u64,
    /// Length of the region in bytes.
    len: u64,
    /// Host address of `iova` inside the mapping.
    host: *mut u8,
    /// Start of the whole `mmap` (page aligned) and its length, for `munmap`.
    map_base: *mut libc::c_void,
    map_len: usize,
    /// Whether the device may write the region.
    writable: bool,
}

// SAFETY: The region owns its mapping (only `Drop` unmaps it) and is only
// reached through `DmaRegions`, whose lock orders unmapping after every
// access that might use the pointer. The pointer is never turned into a
// reference; accesses are raw copies, which are sound to issue from any
// thread.
unsafe impl Send for MappedRegion {}
// SAFETY: See `Send`: shared access only performs raw copies within the
// checked bounds, never creating references to the shared memory.
unsafe impl Sync for MappedRegion {}

impl Drop for MappedRegion {
    fn drop(&mut self) {
        // SAFETY: `map_base`/`map_len` describe a mapping this region created
        // with `mmap` and nobody else unmaps; `DmaRegions` drops a region
        // only while holding the write lock, so no access is in flight.
        unsafe {
            libc::munmap(self.map_base, self.map_len);
        }
    }
}

/// Guest memory built from vfio-user DMA map messages: each region is the
/// client's memory file (guest RAM memfd) mapped `MAP_SHARED`.
///
/// Accesses hold the read lock for the duration of one copy; unmapping
/// takes the write lock, so a region can never disappear under a copy.
///
/// Regions are keyed by their first IOVA. With a vIOMMU in the guest there
/// may be many small regions (one per mapped buffer), so lookups are
/// logarithmic and an access may span any number of adjacent regions.
#[derive(Default)]
pub struct DmaRegions {
    regions: RwLock<BTreeMap<u64, MappedRegion>>,
}

/// Finds the region containing `addr`.
fn region_at(regions: &BTreeMap<u64, MappedRegion>, addr: u64) -> Option<&MappedRegion> {
    regions
        .range(..=addr)
        .next_back()
        .map(|(_, r)| r)
        .filter(|r| addr - r.iova < r.len)
}

/// Removes every region overlapping `start..end`; returns how many.
fn remove_overlapping(regions: &mut BTreeMap<u64, MappedRegion>, start: u64, end: u64) -> usize {
    let doomed: Vec<u64> = regions
        .range(..end)
        .filter(|(_, r)| r.iova.saturating_add(r.len) > start)
        .map(|(&k, _)| k)
        .collect();
    for key in &doomed {
        regions.remove(key);
    }
    doomed.len()
}

impl DmaRegions {
    /// Creates an empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `len` bytes of `fd` at `offset` as DMA addresses `iova..`.
    pub fn map(
        &self,
        iova: u64,
        len: u64,
        fd: &File,
        offset: u64,
        writable: bool,
    ) -> io::Result<()> {
        let invalid = || io::Error::from_raw_os_error(libc::EINVAL);
        checked_end(iova, len).map_err(|_| invalid())?;
        // SAFETY: sysconf has no memory-safety preconditions.
        let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            p if p > 0 => p as u64,
            _ => 4096,
        };
        let delta = offset % page;
        let map_offset = offset - delta;
        let map_len =
            usize::try_from(len.checked_add(delta).ok_or_else(invalid)?).map_err(|_| invalid())?;
        if len == 0 {
            return Err(invalid());
        }
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        let off = libc::off_t::try_from(map_offset).map_err(|_| invalid())?;
        // SAFETY: A fresh shared mapping of a file descriptor we hold; the
        // kernel chooses the address, so no existing memory is affected.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                off,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `delta < page <= map_len`, so the result stays inside the
        // mapping just created.
        let host = unsafe { base.cast::<u8>().add(delta as usize) };
        let region = MappedRegion {
            iova,
            len,
            host,
            map_base: base,
            map_len,
            writable,
        };
        let mut regions = self.regions.write().map_err(|_| invalid())?;
        // A new map replaces any overlapping old one (the client remapped).
        remove_overlapping(&mut regions, iova, iova + len);
        regions.insert(iova, region);
        Ok(())
    }

    /// Removes every region inside `iova..iova+len`. Returns how many.
    pub fn unmap(&self, iova: u64, len: u64) -> usize {
        let end = iova.saturating_add(len);
        match self.regions.write() {
            Ok(mut regions) => remove_overlapping(&mut regions, iova, end),
            Err(_) => 0,
        }
    }

    /// Removes every region (client disconnected).
    pub fn clear(&self) {
        if let Ok(mut regions) = self.regions.write() {
            regions.clear();
        }
    }

    /// Host addresses of `pieces`, checked like [`DmaRegions::access`]
    /// checks one range; see [`GuestMemory::host_iovecs`].
    fn iovecs_of(
        &self,
        pieces: &mut dyn Iterator<Item = (u64, u64)>,
        device_writes: bool,
    ) -> Option<HostIovecs<'_>> {
        let regions = self.regions.read().ok()?;
        let mut iovecs = Ranges::new();
        let mut total = 0usize;
        for (addr, len) in pieces {
            let end = checked_end(addr, len).ok()?;
            let mut cur = addr;
            while cur < end {
                let r = region_at(&regions, cur)?;
                if device_writes && !r.writable {
                    return None;
                }
                let chunk = usize::try_from((r.iova + r.len).min(end) - cur).ok()?;
                // SAFETY: `cur - r.iova + chunk <= r.len`, so the pointer
                // stays inside the live mapping, which the read lock (moved
                // into the result below) keeps from being unmapped.
                let host = unsafe { r.host.add((cur - r.iova) as usize) };
                match iovecs.last_mut() {
                    // Pieces adjacent in the host's address space are one
                    // range: fewer ranges for the system call.
                    Some(last) if last.iov_base.cast::<u8>().wrapping_add(last.iov_len) == host => {
                        last.iov_len += chunk;
                    }
                    _ => iovecs.push(libc::iovec {
                        iov_base: host.cast(),
                        iov_len: chunk,
                    }),
                }
                total = total.checked_add(chunk)?;
                cur += chunk as u64;
            }
        }
        // INVARIANT: every range was found inside a mapped region (a
        // writable one if `device_writes`) while holding the read lock,
        // which the result keeps, so no region is unmapped before it is
        // dropped (unmapping takes the write lock).
        Some(HostIovecs {
            iovecs,
            len: total,
            device_writes,
            _regions: regions,
            _wrapper: None,
        })
    }

    /// The one checked accessor: runs `copy(host_ptr, buffer_offset,
    /// chunk_len)` for each piece of `addr..addr+len`, after checking that
    /// the whole range is mapped (and writable if `write`).
    fn access(
        &self,
        addr: u64,
        len: u64,
        write: bool,
        mut copy: impl FnMut(*mut u8, usize, usize),
    ) -> Result<(), MemoryError> {
        let err = MemoryError { addr, len };
        let end = checked_end(addr, len)?;
        let regions = self.regions.read().map_err(|_| err)?;
        // First pass: check the whole range, so a failed access copies
        // nothing.
        let mut cur = addr;
        while cur < end {
            let r = region_at(&regions, cur).ok_or(err)?;
            if write && !r.writable {
                return Err(err);
            }
            cur += (r.iova + r.len).min(end) - cur;
        }
        // Second pass: copy, piece by piece.
        let mut cur = addr;
        let mut done = 0usize;
        while cur < end {
            let r = region_at(&regions, cur).ok_or(err)?;
            let chunk = (r.iova + r.len).min(end) - cur;
            // SAFETY: `cur - r.iova + chunk <= r.len` by construction, so the
            // pointer stays inside the live mapping, which the read lock
            // keeps from being unmapped.
            let ptr = unsafe { r.host.add((cur - r.iova) as usize) };
            copy(ptr, done, chunk as usize);
            done += chunk as usize;
            cur += chunk;
        }
        Ok(())
    }
}

impl GuestMemory for DmaRegions {
    fn host_iovecs(
        &self,
        pieces: &mut dyn Iterator<Item = (u64, u64)>,
        device_writes: bool,
    ) -> Option<HostIovecs<'_>> {
        self.iovecs_of(pieces, device_writes)
    }

    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let dst = buf.as_mut_ptr();
        self.access(addr, buf.len() as u64, false, |src, off, n| {
            // SAFETY: `src..src+n` lies in a live mapping (checked by
            // `access`), `dst+off..dst+off+n` lies in `buf` (the pieces add
            // up to `buf.len()`), and the two cannot overlap because `buf`
            // is our own memory. The guest may change the source
            // concurrently; the bytes are validated after the copy.
            unsafe { std::ptr::copy_nonoverlapping(src, dst.add(off), n) }
        })
    }

    fn write(&self, addr: u64, data: &[u8]) -> Result<(), MemoryError> {
        let src = data.as_ptr();
        self.access(addr, data.len() as u64, true, |dst, off, n| {
            // SAFETY: As in `read`, with the roles swapped; the destination
            // was checked to be a writable mapping.
            unsafe { std::ptr::copy_nonoverlapping(src.add(off), dst, n) }
        })
    }

    fn read_u32(&self, addr: u64) -> Result<u32, MemoryError> {
        if addr & 3 != 0 {
            return Err(MemoryError { addr, len: 4 });
        }
        let mut value = 0u32;
        self.access(addr, 4, false, |src, _, n| {
            if n == 4 {
                let src = src.cast::<u32>();
                value = if src.is_aligned() {
                    // SAFETY: `src` points to 4 mapped bytes (checked by
                    // `access`) and is aligned, so this is one load.
                    unsafe { std::ptr::read_volatile(src) }
                } else {
                    // SAFETY: As above, without the alignment; only
                    // reachable if the client mapped a misaligned region.
                    unsafe { std::ptr::read_unaligned(src) }
                };
            }
        })?;
        Ok(u32::from_le(value))
    }

    fn write_u32(&self, addr: u64, value: u32) -> Result<(), MemoryError> {
        if addr & 3 != 0 {
            return Err(MemoryError { addr, len: 4 });
        }
        self.access(addr, 4, true, |dst, _, n| {
            if n == 4 {
                let dst = dst.cast::<u32>();
                if dst.is_aligned() {
                    // SAFETY: `dst` points to 4 mapped, writable bytes
                    // (checked by `access`) and is aligned: one store.
                    unsafe { std::ptr::write_volatile(dst, value.to_le()) }
                } else {
                    // SAFETY: As above, without the alignment.
                    unsafe { std::ptr::write_unaligned(dst, value.to_le()) }
                }
            }
        })
    }
}

/// Guest memory in a vector at a fixed base address: the fake guest of the
/// controller tests, and a model of the checks the real one makes.
#[cfg(test)]
pub struct VecMemory {
    base: u64,
    bytes: std::sync::Mutex<Vec<u8>>,
}

#[cfg(test)]
impl VecMemory {
    /// Creates `len` bytes of zeroed memory at DMA address `base`.
    pub fn new(base: u64, len: usize) -> Self {
        Self {
            base,
            bytes: std::sync::Mutex::new(vec![0; len]),
        }
    }

    fn range(
        &self,
        addr: u64,
        len: usize,
        total: usize,
    ) -> Result<std::ops::Range<usize>, MemoryError> {
        let err = MemoryError {
            addr,
            len: len as u64,
        };
        let start = addr.checked_sub(self.base).ok_or(err)?;
        let start = usize::try_from(start).map_err(|_| err)?;
        let end = start.checked_add(len).ok_or(err)?;
        if end > total {
            return Err(err);
        }
        Ok(start..end)
    }
}

#[cfg(test)]
impl GuestMemory for VecMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let bytes = self
            .bytes
            .lock()
            .map_err(|_| MemoryError { addr, len: 0 })?;
        let r = self.range(addr, buf.len(), bytes.len())?;
        buf.copy_from_slice(&bytes[r]);
        Ok(())
    }

    fn write(&self, addr: u64, data: &[u8]) -> Result<(), MemoryError> {
        let mut bytes = self
            .bytes
            .lock()
            .map_err(|_| MemoryError { addr, len: 0 })?;
        let total = bytes.len();
        let r = self.range(addr, data.len(), total)?;
        bytes[r].copy_from_slice(data);
        Ok(())
    }

    fn read_u32(&self, addr: u64) -> Result<u32, MemoryError> {
        let mut b = [0u8; 4];
        self.read(addr, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn write_u32(&self, addr: u64, value: u32) -> Result<(), MemoryError> {
        self.write(addr, &value.to_le_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn vec_memory_checks_ranges() {
        let mem = VecMemory::new(0x1000, 0x100);
        mem.write(0x1000, &[1, 2, 3]).unwrap();
        let mut b = [0u8; 3];
        mem.read(0x1000, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3]);
        assert!(mem.read(0xfff, &mut b).is_err());
        assert!(mem.read(0x10fe, &mut b).is_err());
        assert!(mem.write(u64::MAX - 1, &[0; 4]).is_err());
        mem.write_u32(0x1010, 0xdead_beef).unwrap();
        assert_eq!(mem.read_u32(0x1010).unwrap(), 0xdead_beef);
    }

    #[test]
    fn dma_regions_map_memfd_and_check() {
        let mut file = tempfile();
        file.write_all(&[0u8; 8192]).unwrap();
        let regions = DmaRegions::new();
        regions.map(0x10_0000, 4096, &file, 4096, true).unwrap();
        regions.map(0x10_1000, 4096, &file, 0, false).unwrap();
        regions.write(0x10_0ffe, &[7, 8]).unwrap();
        let mut b = [0u8; 4];
        // A read spanning both regions works.
        regions.read(0x10_0ffe, &mut b).unwrap();
        assert_eq!(&b[..2], &[7, 8]);
        // Writes into the read-only region fail as a whole.
        assert!(regions.write(0x10_0ffe, &[1, 1, 1, 1]).is_err());
        regions.read(0x10_0ffe, &mut b).unwrap();
        assert_eq!(&b[..2], &[7, 8]);
        assert!(regions.read(0x10_2000, &mut b).is_err());
        assert!(regions.read(u64::MAX - 1, &mut b).is_err());
        regions.write_u32(0x10_0010, 42).unwrap();
        assert_eq!(regions.read_u32(0x10_0010).unwrap(), 42);
        assert!(regions.read_u32(0x10_0011).is_err());
        assert_eq!(regions.unmap(0x10_0000, 0x1000), 1);
        assert!(regions.read(0x10_0010, &mut b).is_err());
        regions.clear();
        assert!(regions.read(0x10_1000, &mut b).is_err());
    }

    #[test]
    fn access_spans_many_small_regions() {
        // As with a vIOMMU: one 4 KiB map per page, in reverse order.
        let file = tempfile();
        file.set_len(32 * 4096).unwrap();
        let regions = DmaRegions::new();
        for i in (0..32u64).rev() {
            regions
                .map(0x20_0000 + i * 4096, 4096, &file, i * 4096, true)
                .unwrap();
        }
        let data: Vec<u8> = (0..32 * 4096).map(|i| (i % 251) as u8).collect();
        regions.write(0x20_0000, &data).unwrap();
        let mut back = vec![0u8; data.len()];
        regions.read(0x20_0000, &mut back).unwrap();
        assert_eq!(back, data);
        // A hole in the middle fails the whole access.
        assert_eq!(regions.unmap(0x20_0000 + 7 * 4096, 4096), 1);
        assert!(regions.read(0x20_0000, &mut back).is_err());
        // Remapping over an existing range replaces it.
        regions.map(0x20_0000, 8 * 4096, &file, 0, true).unwrap();
        regions.read(0x20_0000, &mut back).unwrap();
        assert_eq!(back, data);
    }

    fn tempfile() -> File {
        let path = std::env::temp_dir().join(format!("dpuemu-mem-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let _ = std::fs::remove_file(&path);
        file
    }
}
