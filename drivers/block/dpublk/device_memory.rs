// SPDX-License-Identifier: GPL-2.0

//! DMA memory the device may write on its own, and when it may be freed.
//!
//! Rings, PRP list pages and command buffers are coherent DMA memory that
//! the device reads and writes whenever it likes while it runs. Freeing such
//! memory while the device may still write it would hand it pages the
//! kernel reuses for something else. So each piece is a [`DeviceMemory`],
//! freed only once the device is known to be done with it:
//!
//! - a command buffer whose command completed ([`DeviceMemory::give_back`]);
//! - anything, once the controller was confirmed stopped: CC.EN = 0
//!   answered by CSTS.RDY = 0 ([`DeviceAccess::confirm_stopped`]).
//!
//! Otherwise the memory is leaked on purpose and counted, and the
//! controller's release says so in dmesg: a leak is harmless, a device
//! writing into freed pages is not. (Bus mastering is cleared on every
//! failure too, so a device that honours it writes nothing anyway; this is
//! the second line for one that does not.)

use core::{
    mem::ManuallyDrop,
    ops::Deref,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
};
use kernel::{
    device,
    dma::Coherent,
    prelude::*,
    ptr::KnownSize,
    sync::{aref::ARef, Arc},
};

/// Whether the device may access host memory, shared by the controller
/// and every [`DeviceMemory`] of it.
pub(crate) struct DeviceAccess {
    /// The device, for the leak report.
    dev: ARef<device::Device>,
    /// Set once CC.EN = 0 was answered by CSTS.RDY = 0, cleared before
    /// CC.EN is set again.
    stopped: AtomicBool,
    /// Bytes leaked because the device was never confirmed stopped.
    leaked: AtomicUsize,
}

impl DeviceAccess {
    /// A device that may access memory (nothing is known about it yet).
    pub(crate) fn new(dev: &device::Device) -> Result<Arc<Self>> {
        Ok(Arc::new(
            Self {
                dev: dev.into(),
                stopped: AtomicBool::new(false),
                leaked: AtomicUsize::new(0),
            },
            GFP_KERNEL,
        )?)
    }

    /// The controller answered CC.EN = 0 with CSTS.RDY = 0: it dropped
    /// every queue and touches no host memory any more.
    pub(crate) fn confirm_stopped(&self) {
        self.stopped.store(true, Ordering::Release);
    }

    /// CC.EN is about to be set: the device may access memory again.
    pub(crate) fn allow(&self) {
        self.stopped.store(false, Ordering::Release);
    }

    /// Whether the device was confirmed stopped (and not enabled since).
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Bytes leaked on purpose so far.
    pub(crate) fn leaked_bytes(&self) -> usize {
        self.leaked.load(Ordering::Relaxed)
    }
}

impl Drop for DeviceAccess {
    fn drop(&mut self) {
        // Every ring and buffer holds a reference: they are all gone now.
        let leaked = self.leaked_bytes();
        if leaked > 0 {
            dev_warn!(
                self.dev,
                "leaked {leaked} bytes of DMA memory on purpose: the device never confirmed it stopped, so it might still write there\n"
            );
        }
    }
}

/// Coherent DMA memory the device may write; freed on drop only if the
/// device is done with it (module documentation), leaked otherwise.
///
/// # Invariants
///
/// `mem` is dropped at most once, in `Drop`, and only if `lent` is clear or
/// `access` says the device is stopped.
pub(crate) struct DeviceMemory<T: KnownSize + ?Sized> {
    mem: ManuallyDrop<Coherent<T>>,
    access: Arc<DeviceAccess>,
    /// The device may be using the memory: a ring, or a buffer whose
    /// command has not completed.
    lent: AtomicBool,
}

impl<T: KnownSize + ?Sized> DeviceMemory<T> {
    /// Memory the device uses for as long as it runs (rings, PRP lists).
    pub(crate) fn lent(mem: Coherent<T>, access: Arc<DeviceAccess>) -> Self {
        Self {
            mem: ManuallyDrop::new(mem),
            access,
            lent: AtomicBool::new(true),
        }
    }

    /// A command buffer: the device only uses it between
    /// [`Self::lend`] and [`Self::give_back`].
    pub(crate) fn buffer(mem: Coherent<T>, access: Arc<DeviceAccess>) -> Self {
        Self {
            mem: ManuallyDrop::new(mem),
            access,
            lent: AtomicBool::new(false),
        }
    }

    /// The buffer goes to the device with a command.
    pub(crate) fn lend(&self) {
        self.lent.store(true, Ordering::Release);
    }

    /// The command that used the buffer completed: the device is done.
    /// Not called when the command timed out (the device may still write).
    pub(crate) fn give_back(&self) {
        self.lent.store(false, Ordering::Release);
    }

    /// Whether the device may be using the memory (a ring, or a buffer
    /// whose command has not completed).
    pub(crate) fn is_lent(&self) -> bool {
        self.lent.load(Ordering::Acquire) && !self.access.is_stopped()
    }
}

impl<T: KnownSize + ?Sized> Deref for DeviceMemory<T> {
    type Target = Coherent<T>;

    fn deref(&self) -> &Coherent<T> {
        &self.mem
    }
}

impl<T: KnownSize + ?Sized> Drop for DeviceMemory<T> {
    fn drop(&mut self) {
        if self.lent.load(Ordering::Acquire) && !self.access.is_stopped() {
            // The device may still write here: keep the pages forever.
            self.access.leaked.fetch_add(self.mem.size(), Ordering::Relaxed);
            return;
        }
        // SAFETY: `mem` is dropped only here, once (type invariant), and
        // the device is done with it: its command completed, or the
        // controller was confirmed stopped and has not been enabled since.
        unsafe { ManuallyDrop::drop(&mut self.mem) };
    }
}
