// SPDX-License-Identifier: GPL-2.0

//! PCI glue: binds the accelerator function.

use crate::pci_id;
use kernel::{device::Core, io::Io, pci, prelude::*};

/// PCI vendor ID of the emulated accelerator (see
/// Documentation/device-interface.rst; real silicon binds through `new_id`).
pub(crate) const ACCEL_VENDOR_ID: u16 = 0x1df5;
/// PCI device ID of the accelerator function.
pub(crate) const ACCEL_DEVICE_ID: u16 = 0x0001;

/// Offset of the NVMe Version register in BAR0.
const REG_VS: usize = 0x08;
/// BAR0 must at least cover the controller registers and the first doorbells.
const BAR0_MIN_SIZE: usize = 0x2000;

pub(crate) struct AcceleratorDriver;

/// Per-device state while bound.
pub(crate) struct Accelerator<'bound> {
    pdev: &'bound pci::Device,
}

kernel::pci_device_table!(
    PCI_TABLE,
    <AcceleratorDriver as pci::Driver>::IdInfo,
    [(pci_id::device_id(ACCEL_VENDOR_ID, ACCEL_DEVICE_ID), ())]
);

impl pci::Driver for AcceleratorDriver {
    type IdInfo = ();
    type Data<'bound> = Accelerator<'bound>;

    const ID_TABLE: pci::IdTable<Self::IdInfo> = &PCI_TABLE;

    fn probe<'bound>(
        pdev: &'bound pci::Device<Core<'_>>,
        _info: Option<&'bound Self::IdInfo>,
    ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound {
        pdev.enable_device_mem()
            .inspect_err(|e| dev_err!(pdev, "cannot enable the function: {e:?}\n"))?;
        pdev.set_master();
        let bar = pdev
            .iomap_region_sized::<BAR0_MIN_SIZE>(0, c"dpublk")
            .inspect_err(|e| dev_err!(pdev, "cannot map BAR0: {e:?}\n"))?;
        let version = bar.read32(REG_VS);
        dev_info!(
            pdev,
            "accelerator found, interface version {}.{}.{}\n",
            version >> 16,
            (version >> 8) & 0xff,
            version & 0xff
        );
        Ok(Accelerator { pdev })
    }
}

impl Drop for Accelerator<'_> {
    fn drop(&mut self) {
        dev_info!(self.pdev, "accelerator released\n");
    }
}
