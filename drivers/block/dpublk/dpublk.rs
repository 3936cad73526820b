// SPDX-License-Identifier: GPL-2.0

//! dpublk: block devices served by a storage accelerator (DPU).
//!
//! The accelerator owns the local NVMe SSDs and runs the data services; this
//! driver binds its PCIe function, speaks the NVMe-style queue interface
//! described in Documentation/device-interface.rst and exposes volumes as
//! blk-mq disks. Management goes through configfs at
//! `/sys/kernel/config/dpublk/`.

#[path = "../../../rust/kernel-ext/blk_mq.rs"]
mod blk_mq;
mod configfs;
#[path = "../../../rust/kernel-ext/configfs_ext.rs"]
mod configfs_ext;
mod controller;
mod device_memory;
mod disk;
mod driver;
mod io_queue;
mod management;
#[path = "../../../rust/kernel-ext/pci_bus_master.rs"]
mod pci_bus_master;
#[path = "../../../rust/kernel-ext/pci_function.rs"]
mod pci_function;
#[path = "../../../rust/kernel-ext/pci_id.rs"]
mod pci_id;
#[path = "../../../rust/kernel-ext/pci_irq.rs"]
mod pci_irq;
mod prp;
mod queue;
mod regs;
mod reset;
mod shim;
#[path = "../../../rust/kernel-ext/workqueue_ext.rs"]
mod workqueue_ext;

use kernel::{driver::Registration, pci, prelude::*};

module! {
    type: DpublkModule,
    name: "dpublk",
    authors: ["dpublk developers"],
    description: "Block devices served by a DPU storage accelerator",
    license: "GPL v2",
}

/// The driver's version, shown in configfs (`version`); it follows the
/// workspace version of the userspace crates.
pub(crate) const DRIVER_VERSION: &str = "0.1.0";

/// The loaded module.
///
/// Fields drop in declaration order: the configfs tree goes first, so no
/// management request can reach a device while the PCI driver unbinds it;
/// its fixed directories go before the subsystem they are registered in.
#[pin_data(PinnedDrop)]
struct DpublkModule {
    tree: configfs::Tree,
    #[pin]
    configfs: kernel::configfs::Subsystem<configfs::Root>,
    #[pin]
    pci_driver: Registration<pci::Adapter<driver::AcceleratorDriver>>,
}

impl kernel::InPlaceModule for DpublkModule {
    fn init(module: &'static ThisModule) -> impl PinInit<Self, Error> {
        pr_info!("loading: configfs root and PCI driver for the accelerator\n");
        management::init_registry();
        configfs::init_registry();
        try_pin_init!(Self {
            configfs <- configfs::subsystem(),
            tree: configfs::Tree::new(),
            pci_driver <- Registration::new(c"dpublk", module),
        })
        .pin_chain(|module| {
            let this = module.project();
            this.tree.populate(&this.configfs)
        })
    }
}

#[pinned_drop]
impl PinnedDrop for DpublkModule {
    fn drop(self: Pin<&mut Self>) {
        pr_info!("unloaded\n");
    }
}
