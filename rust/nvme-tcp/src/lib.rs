//! NVMe/TCP protocol data units (the NVMe over Fabrics TCP transport,
//! revision 1.0): the common header, every PDU type of the transport,
//! header and data digests, and the length rules that bind them.
//!
//! Every byte a peer sends is untrusted. [`Receiver::frame`] checks a
//! common header against the connection's stage and limits before the
//! caller reads the rest of a PDU, and [`Receiver::parse`] checks the whole
//! PDU (header length, data offset, PDU length, digest flags against what
//! was negotiated, the header digest, each type's own fields) and hands out
//! borrowed views of it. Parsing never allocates; errors carry the Fatal
//! Error Status and Fatal Error Information a termination request needs.
//!
//! The crate's code uses only `core`; the digest comes from the `crc32c`
//! crate, which links `std` on the hosts it runs on (a kernel user would
//! swap [`digest::crc32c`] for the kernel's).
#![no_std]

#[cfg(test)]
extern crate std;

pub mod digest;
pub mod encode;
pub mod error;
pub mod header;
pub mod pdu;
pub mod receiver;

pub use error::PduError;
pub use header::{CommonHeader, PduType};
pub use pdu::Pdu;
pub use receiver::{Negotiated, Received, Receiver, Side, Stage};

#[cfg(test)]
mod tests;
