// SPDX-License-Identifier: GPL-2.0

//! The device interface, compiled from the same source files as `dpuemu`.
//!
//! `rust/nvme-shim` is the only definition of the wire format (see
//! Documentation/device-interface.rst). Kbuild cannot depend on a cargo
//! crate, so its module files are included here one by one; they refer to
//! each other only through `super::` paths, which resolve to this module.
//!
//! The shim is a library shared with userspace: the driver uses part of it,
//! and its items are `pub` for the emulator's sake. Both would warn here
//! (`dead_code`, `unreachable_pub`), and whether they do depends on what the
//! driver happens to use today, so the lints are allowed rather than expected.

#[allow(dead_code, unreachable_pub)]
#[path = "../../../rust/nvme-shim/src/wire.rs"]
pub(crate) mod wire;

#[allow(dead_code, unreachable_pub)]
#[path = "../../../rust/nvme-shim/src/registers.rs"]
pub(crate) mod registers;

#[allow(dead_code, unreachable_pub)]
#[path = "../../../rust/nvme-shim/src/opcode.rs"]
pub(crate) mod opcode;

#[allow(dead_code, unreachable_pub)]
#[path = "../../../rust/nvme-shim/src/status.rs"]
pub(crate) mod status;

#[allow(dead_code, unreachable_pub)]
#[path = "../../../rust/nvme-shim/src/dptr.rs"]
pub(crate) mod dptr;

#[allow(dead_code, unreachable_pub)]
#[path = "../../../rust/nvme-shim/src/sqe.rs"]
pub(crate) mod sqe;

#[allow(dead_code, unreachable_pub)]
#[path = "../../../rust/nvme-shim/src/cqe.rs"]
pub(crate) mod cqe;

#[allow(dead_code, unreachable_pub)]
#[path = "../../../rust/nvme-shim/src/identify.rs"]
pub(crate) mod identify;

#[allow(dead_code, unreachable_pub)]
#[path = "../../../rust/nvme-shim/src/log_page.rs"]
pub(crate) mod log_page;

#[allow(dead_code, unreachable_pub)]
#[path = "../../../rust/nvme-shim/src/pci.rs"]
pub(crate) mod pci;

#[allow(dead_code, unreachable_pub)]
#[path = "../../../rust/nvme-shim/src/vendor.rs"]
pub(crate) mod vendor;
