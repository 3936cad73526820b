// SPDX-License-Identifier: GPL-2.0

//! Other PCI functions than the one the driver is bound to: the local SSD
//! functions dpublk hands to the accelerator.
//!
//! The in-tree `kernel::pci` abstraction covers the function a driver is
//! bound to. Handing an SSD to the accelerator needs a few operations on a
//! function that belongs to somebody else (the stock nvme driver): look it
//! up, see whether its block devices are open, keep drivers off it with
//! `driver_override`, unbind it and bind it again. They live here, in one
//! thin layer over the C API.

use core::ffi::{c_int, c_void};
use core::ptr::{self, NonNull};
use kernel::{bindings, prelude::*, str::CStr};

/// A counted reference to a PCI function (`pci_dev_get`/`pci_dev_put`).
///
/// # Invariants
///
/// `pdev` points to a `struct pci_dev` on which this value holds one
/// reference.
pub(crate) struct PciFunction {
    pdev: NonNull<bindings::pci_dev>,
}

// SAFETY: A reference to a `pci_dev` may be used and dropped on any thread.
unsafe impl Send for PciFunction {}
// SAFETY: The methods taking `&self` only read immutable identity fields or
// call driver core functions that do their own locking.
unsafe impl Sync for PciFunction {}

/// Driver name that matches no driver: while a function's
/// `driver_override` holds it, no driver (in particular nvme) binds it.
pub(crate) const NO_DRIVER: &CStr = c"dpublk-accelerator-owned";

impl PciFunction {
    /// Looks up the function at `domain:bus:device.function`.
    pub(crate) fn find(domain: u32, bus: u8, device: u8, function: u8) -> Option<Self> {
        if device > 31 || function > 7 {
            return None;
        }
        let devfn = u32::from(device) << 3 | u32::from(function);
        // SAFETY: Plain lookup; it returns a referenced device or null.
        let raw =
            unsafe { bindings::pci_get_domain_bus_and_slot(domain as c_int, bus.into(), devfn) };
        // INVARIANT: The lookup took a reference for us.
        NonNull::new(raw).map(|pdev| Self { pdev })
    }

    /// Looks up the first function with these IDs.
    pub(crate) fn find_by_ids(vendor: u16, device: u16, subsystem_device: u16) -> Option<Self> {
        // SAFETY: Plain lookup (PCI_ANY_ID for the subsystem vendor); it
        // returns a referenced device or null.
        let raw = unsafe {
            bindings::pci_get_subsys(
                vendor.into(),
                device.into(),
                !0u32,
                subsystem_device.into(),
                ptr::null_mut(),
            )
        };
        // INVARIANT: The lookup took a reference for us.
        NonNull::new(raw).map(|pdev| Self { pdev })
    }

    fn raw(&self) -> *mut bindings::pci_dev {
        self.pdev.as_ptr()
    }

    fn device(&self) -> *mut bindings::device {
        // SAFETY: `pdev` is valid (type invariant).
        unsafe { &raw mut (*self.raw()).dev }
    }

    /// Vendor, device and subsystem device ID.
    pub(crate) fn ids(&self) -> (u16, u16, u16) {
        // SAFETY: `pdev` is valid; the IDs never change after enumeration.
        unsafe {
            let p = self.raw();
            ((*p).vendor, (*p).device, (*p).subsystem_device)
        }
    }

    /// The function's name (`0000:01:00.0`).
    pub(crate) fn name(&self) -> &CStr {
        // SAFETY: A registered device always has a kobject name, a valid
        // NUL-terminated string that lives as long as the device.
        unsafe { CStr::from_char_ptr((*self.device()).kobj.name) }
    }

    /// Whether a driver is bound to the function, and which.
    pub(crate) fn bound_driver(&self) -> Option<&CStr> {
        // SAFETY: `dev` is valid; `driver` is read once and a bound
        // driver's name is a static string.
        unsafe {
            let driver = ptr::read_volatile(&raw const (*self.device()).driver);
            if driver.is_null() || (*driver).name.is_null() {
                None
            } else {
                Some(CStr::from_char_ptr((*driver).name))
            }
        }
    }

    /// Whether any block device below the function (its disks and their
    /// partitions) is open: mounted, held by another driver (md, dm) or
    /// opened by a program.
    pub(crate) fn has_open_block_devices(&self) -> bool {
        let mut open = false;
        // SAFETY: `dev` is a valid device; the callback only reads the
        // children it is handed while the driver core holds them.
        unsafe {
            bindings::device_for_each_child(
                self.device(),
                (&raw mut open).cast::<c_void>(),
                Some(visit_child),
            )
        };
        open
    }

    /// Sets (`Some`) or clears the function's `driver_override`.
    pub(crate) fn set_driver_override(&self, name: Option<&CStr>) -> Result {
        // An empty string clears the override (a null pointer is refused).
        let text = name.unwrap_or(c"");
        let (text, len) = (text.as_char_ptr(), text.to_bytes().len());
        // SAFETY: `dev` is valid and `text` is a NUL-terminated string of `len` bytes.
        let rc = unsafe { bindings::__device_set_driver_override(self.device(), text, len) };
        if rc == 0 {
            Ok(())
        } else {
            Err(Error::from_errno(rc))
        }
    }

    /// Unbinds the function's driver, if any (waits for its `remove`).
    pub(crate) fn release_driver(&self) {
        // SAFETY: `dev` is valid; the driver core takes the device lock.
        unsafe { bindings::device_release_driver(self.device()) };
    }

    /// Lets the driver core bind a matching driver to the function.
    pub(crate) fn attach_driver(&self) -> Result {
        // SAFETY: `dev` is valid; the driver core takes the device lock.
        let rc = unsafe { bindings::device_attach(self.device()) };
        if rc < 0 {
            Err(Error::from_errno(rc))
        } else {
            Ok(())
        }
    }
}

impl Drop for PciFunction {
    fn drop(&mut self) {
        // SAFETY: We hold one reference (type invariant).
        unsafe { bindings::pci_dev_put(self.raw()) };
    }
}

/// How deep below the PCI function block devices may sit: controller
/// device, disk, partition.
const MAX_DEPTH: usize = 4;

/// State of one walk over a device subtree.
struct Walk {
    open: *mut bool,
    depth: usize,
}

/// `device_for_each_child` callback of the top level: `data` is the
/// caller's `bool`.
///
/// # Safety
///
/// Called by `device_for_each_child` only, from
/// [`PciFunction::has_open_block_devices`]: `dev` is a live child the
/// driver core holds for the call, and `data` points to that caller's
/// writable `bool`, which outlives the walk.
unsafe extern "C" fn visit_child(dev: *mut bindings::device, data: *mut c_void) -> c_int {
    let mut walk = Walk {
        open: data.cast::<bool>(),
        depth: 1,
    };
    // SAFETY: `dev` is a live child held by the driver core for this call,
    // and `walk.open` is the caller's writable `bool` (function
    // requirements); `walk` itself lives on this stack frame for the call.
    unsafe { visit(dev, &mut walk) }
}

/// Checks `dev` and its descendants for open block devices; stops the walk
/// (returns 1) at the first one.
///
/// # Safety
///
/// `dev` is a live device held by the driver core during the call, and
/// `walk.open` points to a writable `bool`.
unsafe fn visit(dev: *mut bindings::device, walk: &mut Walk) -> c_int {
    // SAFETY: `dev` is live (function requirement); a class and its name
    // are static.
    let is_block = unsafe {
        let class = (*dev).class;
        !class.is_null()
            && !(*class).name.is_null()
            && CStr::from_char_ptr((*class).name).to_bytes() == b"block"
    };
    if is_block {
        // SAFETY: Every device of the block class is the `bd_device` of a
        // `struct block_device` (`dev_to_bdev()`); the counters are read
        // once each, racily but atomically, which is all a busy check can do.
        let (openers, holders) = unsafe {
            let bdev = kernel::container_of!(dev, bindings::block_device, bd_device);
            (
                ptr::read_volatile(&raw const (*bdev).bd_openers.counter),
                ptr::read_volatile(&raw const (*bdev).bd_holders),
            )
        };
        if openers > 0 || holders > 0 {
            // SAFETY: `walk.open` is writable (function requirement).
            unsafe { *walk.open = true };
            return 1;
        }
    }
    if walk.depth >= MAX_DEPTH {
        return 0;
    }
    walk.depth += 1;
    // SAFETY: `dev` is live; the callback gets `walk` back as `data`.
    let rc = unsafe {
        bindings::device_for_each_child(dev, (&raw mut *walk).cast::<c_void>(), Some(visit_nested))
    };
    walk.depth -= 1;
    rc
}

/// `device_for_each_child` callback below the top level: `data` is the
/// `Walk`.
///
/// # Safety
///
/// Called by `device_for_each_child` only, from [`visit`]: `dev` is a live
/// child the driver core holds for the call, and `data` points to the
/// `Walk` of that `visit`, alive and not otherwise borrowed for the call.
unsafe extern "C" fn visit_nested(dev: *mut bindings::device, data: *mut c_void) -> c_int {
    // SAFETY: `data` is the `Walk` passed by `visit`, alive for the call;
    // `dev` is a live child.
    unsafe { visit(dev, &mut *data.cast::<Walk>()) }
}
