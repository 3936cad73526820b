//! Interrupt delivery: one MSI-X vector per completion queue.
//!
//! QEMU emulates the MSI-X table and pending bits itself; the device only
//! signals the per-vector eventfd it received through
//! `VFIO_USER_DEVICE_SET_IRQS`.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

/// Where a controller raises its interrupts.
pub trait InterruptSink: Send + Sync {
    /// Raises MSI-X `vector`. Vectors without a route are dropped.
    fn raise(&self, vector: u16);
}

/// MSI-X vectors routed to eventfds.
pub struct MsixEventFds {
    fds: RwLock<Vec<Option<File>>>,
    raised: AtomicU64,
}

impl MsixEventFds {
    /// Creates `vectors` unrouted vectors.
    pub fn new(vectors: u16) -> Self {
        Self {
            fds: RwLock::new((0..vectors).map(|_| None).collect()),
            raised: AtomicU64::new(0),
        }
    }

    /// Routes vectors `start..start+count` to `fds` in order; vectors past
    /// the end of `fds` are unrouted (a client disables a vector by sending
    /// no descriptor for it). Returns `false` if the range is out of bounds.
    pub fn set(&self, start: u32, count: u32, fds: Vec<File>) -> bool {
        let Ok(mut table) = self.fds.write() else {
            return false;
        };
        let Some(end) = start.checked_add(count) else {
            return false;
        };
        if end as usize > table.len() {
            return false;
        }
        let mut fds = fds.into_iter();
        for slot in &mut table[start as usize..end as usize] {
            *slot = fds.next();
        }
        true
    }

    /// Unroutes every vector.
    pub fn clear(&self) {
        if let Ok(mut table) = self.fds.write() {
            table.iter_mut().for_each(|slot| *slot = None);
        }
    }

    /// Number of interrupts raised so far.
    #[cfg(test)]
    pub fn raised(&self) -> u64 {
        self.raised.load(Ordering::Relaxed)
    }
}

impl InterruptSink for MsixEventFds {
    fn raise(&self, vector: u16) {
        let Ok(table) = self.fds.read() else {
            return;
        };
        if let Some(Some(fd)) = table.get(vector as usize) {
            // An eventfd write only fails when the counter would overflow,
            // in which case the interrupt is pending anyway.
            let mut fd: &File = fd;
            let _ = fd.write_all(&1u64.to_ne_bytes());
            self.raised.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::FromRawFd;

    fn eventfd() -> File {
        // SAFETY: eventfd has no memory-safety preconditions.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        assert!(fd >= 0);
        // SAFETY: `fd` is a fresh descriptor we own exclusively.
        unsafe { File::from_raw_fd(fd) }
    }

    #[test]
    fn routes_vectors_to_eventfds() {
        let msix = MsixEventFds::new(4);
        let efd = eventfd();
        let mut reader = efd.try_clone().unwrap();
        assert!(msix.set(2, 1, vec![efd]));
        msix.raise(2);
        msix.raise(2);
        msix.raise(1);
        msix.raise(99);
        let mut b = [0u8; 8];
        reader.read_exact(&mut b).unwrap();
        assert_eq!(u64::from_ne_bytes(b), 2);
        assert_eq!(msix.raised(), 2);
        assert!(!msix.set(3, 2, vec![]));
        assert!(msix.set(2, 1, vec![]));
        msix.raise(2);
        assert_eq!(msix.raised(), 2);
    }
}
