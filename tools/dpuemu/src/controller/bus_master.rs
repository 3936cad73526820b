//! Bus Master Enable: the function reaches guest memory only while the host
//! allows it (PCI Command register bit 2).
//!
//! Every guest-memory access of a controller (queue fetches, PRP lists,
//! data, completion entries, shadow doorbells) goes through a
//! [`BusMaster`]. An access holds the read side of its lock for the length
//! of one copy; clearing Bus Master Enable takes the write side, so once the
//! configuration write that cleared it returns, no access is in progress and
//! none starts until the host sets the bit again. That is the promise a
//! host driver relies on after `pci_clear_master()`: pages it frees
//! afterwards are never written by the device.
//!
//! A controller without a PCI transport (unit tests) starts with bus
//! mastering enabled; the vfio-user transport follows the Command register.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use crate::guest_memory::{GuestMemory, HostIovecs, MemoryError};

/// Guest memory behind the function's Bus Master Enable bit.
pub struct BusMaster {
    inner: Arc<dyn GuestMemory>,
    enabled: RwLock<bool>,
    /// Accesses refused because bus mastering was off.
    refused: AtomicU64,
}

impl BusMaster {
    /// Wraps `inner`, with bus mastering `enabled` or not.
    pub fn new(inner: Arc<dyn GuestMemory>, enabled: bool) -> Self {
        Self {
            inner,
            enabled: RwLock::new(enabled),
            refused: AtomicU64::new(0),
        }
    }

    /// Sets Bus Master Enable. Clearing it waits for accesses in progress,
    /// so none is left once this returns. Returns the previous value.
    pub fn set(&self, enabled: bool) -> bool {
        let mut guard = self.enabled.write().unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *guard, enabled)
    }

    /// Whether bus mastering is enabled.
    pub fn is_enabled(&self) -> bool {
        *self.enabled.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Accesses refused so far because bus mastering was off.
    #[cfg(test)]
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The read side of the lock if bus mastering is enabled; held for the
    /// access so that clearing the bit waits for it.
    fn admit(&self, addr: u64, len: u64) -> Result<RwLockReadGuard<'_, bool>, MemoryError> {
        let guard = self.enabled.read().unwrap_or_else(|p| p.into_inner());
        if *guard {
            Ok(guard)
        } else {
            self.refused.fetch_add(1, Ordering::Relaxed);
            Err(MemoryError { addr, len })
        }
    }
}

impl GuestMemory for BusMaster {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let _admitted = self.admit(addr, buf.len() as u64)?;
        self.inner.read(addr, buf)
    }

    fn write(&self, addr: u64, data: &[u8]) -> Result<(), MemoryError> {
        let _admitted = self.admit(addr, data.len() as u64)?;
        self.inner.write(addr, data)
    }

    fn read_u32(&self, addr: u64) -> Result<u32, MemoryError> {
        let _admitted = self.admit(addr, 4)?;
        self.inner.read_u32(addr)
    }

    fn write_u32(&self, addr: u64, value: u32) -> Result<(), MemoryError> {
        let _admitted = self.admit(addr, 4)?;
        self.inner.write_u32(addr, value)
    }

    /// The ranges keep the read side of the lock with them, so clearing
    /// Bus Master Enable waits for a transfer into them to end. With bus
    /// mastering off there are none (the caller's copy is then refused).
    fn host_iovecs(
        &self,
        pieces: &mut dyn Iterator<Item = (u64, u64)>,
        device_writes: bool,
    ) -> Option<HostIovecs<'_>> {
        let admitted = self.enabled.read().unwrap_or_else(|p| p.into_inner());
        if !*admitted {
            return None;
        }
        let buffer = self.inner.host_iovecs(pieces, device_writes)?;
        Some(buffer.hold(admitted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest_memory::VecMemory;

    #[test]
    fn no_access_while_bus_mastering_is_off() {
        let ram = Arc::new(VecMemory::new(0x1000, 0x1000));
        let bus = BusMaster::new(ram.clone(), false);
        assert!(bus.write(0x1000, &[1, 2, 3]).is_err());
        assert!(bus.write_u32(0x1004, 7).is_err());
        let mut b = [0u8; 4];
        assert!(bus.read(0x1000, &mut b).is_err());
        assert!(bus.read_u32(0x1000).is_err());
        assert_eq!(bus.refused(), 4);
        // Nothing reached the memory.
        ram.read(0x1000, &mut b).unwrap();
        assert_eq!(b, [0; 4]);
        assert!(!bus.set(true));
        bus.write(0x1000, &[9, 8, 7, 6]).unwrap();
        assert_eq!(
            bus.read_u32(0x1000).unwrap(),
            u32::from_le_bytes([9, 8, 7, 6])
        );
        assert!(bus.set(false));
        assert!(bus.write_u32(0x1000, 0).is_err());
        ram.read(0x1000, &mut b).unwrap();
        assert_eq!(b, [9, 8, 7, 6]);
    }
}
