// SPDX-License-Identifier: GPL-2.0

//! Bus mastering of the bound function, off as well as on.
//!
//! `kernel::pci::Device` can set bus mastering (`set_master`) but not clear
//! it. The driver's failure, reset and teardown paths clear it, as the NVMe
//! PCI driver does through `pci_disable_device()`: once Bus Master Enable
//! is clear, the function may not start a memory access, so pages the
//! driver hands back to the kernel afterwards are safe from a device that
//! did not confirm it stopped.

use kernel::{bindings, device, pci};

/// Clears Bus Master Enable in the function's Command register.
pub(crate) fn clear_master<Ctx: device::DeviceContext>(pdev: &pci::Device<Ctx>) {
    // `pci::Device` is a `#[repr(transparent)]` wrapper of
    // `Opaque<bindings::pci_dev>`, itself transparent over the C struct.
    let raw: *mut bindings::pci_dev = core::ptr::from_ref(pdev).cast_mut().cast();
    // SAFETY: `raw` points to the `struct pci_dev` behind `pdev`, valid for
    // as long as the reference. `pci_clear_master()` only updates the
    // Command register through the config accessors (which serialize on
    // the PCI config lock themselves) and the `is_busmaster` flag; it has
    // no other precondition.
    unsafe { bindings::pci_clear_master(raw) };
}

/// Sets Bus Master Enable again, after a reset cleared it, from a context
/// that is not the driver's probe (`kernel::pci::Device::set_master` needs
/// the bound `Core` context).
pub(crate) fn set_master<Ctx: device::DeviceContext>(pdev: &pci::Device<Ctx>) {
    let raw: *mut bindings::pci_dev = core::ptr::from_ref(pdev).cast_mut().cast();
    // SAFETY: `raw` points to the `struct pci_dev` behind `pdev`, valid for
    // as long as the reference. `pci_set_master()` updates the Command
    // register through the locked config accessors and records the state
    // in `is_busmaster`; the driver calls it only while bound (from its
    // reset work, which unbind waits for), as the NVMe PCI driver's reset
    // work does through `nvme_pci_enable()`.
    unsafe { bindings::pci_set_master(raw) };
}
