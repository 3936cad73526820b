// SPDX-License-Identifier: GPL-2.0

//! The management tree at `/sys/kernel/config/dpublk/`.
//!
//! See Documentation/configfs.rst for the ABI. The root carries read-only
//! facts about the driver; SSDs, volumes and fabric ports grow below it.

use kernel::{
    configfs::{self, AttributeOperations},
    configfs_attrs,
    fmt::Write as _,
    page::PAGE_SIZE,
    prelude::*,
};

/// Features this build of the driver implements, one word each.
const FEATURES: &str = "pci\n";

pub(crate) fn subsystem() -> impl PinInit<configfs::Subsystem<Root>, Error> {
    let item_type = configfs_attrs! {
        container: configfs::Subsystem<Root>,
        data: Root,
        attributes: [
            features: 0,
            version: 1,
        ],
    };
    configfs::Subsystem::new(c"dpublk", item_type, try_pin_init!(Root {}))
}

/// The root directory of the tree.
#[pin_data]
pub(crate) struct Root {}

#[vtable]
impl AttributeOperations<0> for Root {
    type Data = Root;

    fn show(_root: &Root, page: &mut [u8; PAGE_SIZE]) -> Result<usize> {
        let mut writer = kernel::str::Formatter::new(page);
        writer.write_str(FEATURES)?;
        Ok(writer.bytes_written())
    }
}

#[vtable]
impl AttributeOperations<1> for Root {
    type Data = Root;

    fn show(_root: &Root, page: &mut [u8; PAGE_SIZE]) -> Result<usize> {
        let mut writer = kernel::str::Formatter::new(page);
        writer.write_fmt(format_args!("{}\n", crate::DRIVER_VERSION))?;
        Ok(writer.bytes_written())
    }
}
