// SPDX-License-Identifier: GPL-2.0

//! PCI device IDs for vendors the kernel's `pci::Vendor` list does not name.
//!
//! `kernel::pci::Vendor` can only be built from the constants in the kernel's
//! own vendor list, and the accelerator's emulated vendor ID is not among
//! them. The C side has no such restriction (`PCI_DEVICE(v, d)`), so this
//! builds the same `pci_device_id` that macro would and wraps it.

use kernel::{bindings, pci};

/// Equivalent of C's `PCI_DEVICE(vendor, device)`.
pub(crate) const fn device_id(vendor: u16, device: u16) -> pci::DeviceId {
    const ANY: u32 = !0;
    let raw = bindings::pci_device_id {
        vendor: vendor as u32,
        device: device as u32,
        subvendor: ANY,
        subdevice: ANY,
        class: 0,
        class_mask: 0,
        driver_data: 0,
        override_only: 0,
    };
    // SAFETY: `pci::DeviceId` is a `#[repr(transparent)]` wrapper around
    // `bindings::pci_device_id` that adds no invariant of its own (its
    // `RawDeviceId` implementation states exactly this), so every value of
    // the raw type is a valid `pci::DeviceId`.
    unsafe { core::mem::transmute::<bindings::pci_device_id, pci::DeviceId>(raw) }
}
