//! The dpublk device interface.
//!
//! This crate is the only definition of the wire format spoken between the
//! host driver (`dpublk.ko`) and the storage accelerator (`dpuemu`, or real
//! silicon implementing `Documentation/device-interface.rst`): PCI IDs,
//! NVMe-style controller registers, submission and completion queue entries,
//! admin and I/O opcodes, status codes, Identify structures, PRP and SGL data
//! pointers, log pages and the vendor-specific admin command set.
//!
//! The crate is `no_std`, allocation-free and dependency-free. The kernel
//! module compiles the individual module files with `#[path]` attributes, so
//! each module refers to its siblings only through `super::` paths, uses only
//! `core`, and carries no inner attributes.
//!
//! All multi-byte fields are little-endian on the wire. Structures that are
//! copied to or from device-visible memory consist only of `u8` and the
//! [`wire::Le16`]/[`wire::Le32`]/[`wire::Le64`] wrappers, so they have
//! alignment 1, no padding and the same layout on every host; their sizes
//! are checked at compile time.
#![no_std]

pub mod cqe;
pub mod dptr;
pub mod identify;
pub mod log_page;
pub mod opcode;
pub mod pci;
pub mod registers;
pub mod sqe;
pub mod status;
pub mod vendor;
pub mod wire;
