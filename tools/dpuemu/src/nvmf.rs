//! dpuemu as an NVMe/TCP target: a discovery subsystem and I/O subsystems
//! whose namespaces are images or dpuemu's SSDs, served to any NVMe/TCP
//! host (Linux's nvme-tcp, nvme-cli) on the configured ports.
//!
//! One thread listens per port and one thread serves each connection with
//! blocking socket I/O: a connection is one queue (admin or I/O) of one
//! controller, and its commands run in the order they arrive. Controllers
//! (created by an admin queue's Fabrics Connect, joined by I/O queues) are
//! shared by their connections through [`target::Target`]. Every byte a
//! peer sends is untrusted: a PDU that breaks the transport's rules ends
//! its connection with a C2HTermReq naming the error, a command that
//! breaks the command set's rules fails with its NVMe status, and nothing
//! a peer sends panics the process. See Documentation/nvmf.rst.

pub mod config;
mod connection;
mod fabrics;
mod identify;
mod initiator;
mod io;
#[cfg(test)]
mod stream_fuzz;
mod target;
#[cfg(test)]
mod tests;

pub use target::Target;

use std::path::Path;
use std::sync::Arc;

use crate::namespace::Namespace;
use crate::ownership::SsdOwnership;

/// Reads the configuration file at `path` and starts the target; `ssds`
/// are dpuemu's SSD images (`--ssd`) with their ownership.
pub fn start_from_file(
    path: &Path,
    ssds: &[(Arc<dyn Namespace>, Arc<SsdOwnership>)],
) -> Result<Arc<Target>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--nvmf-config {}: {e}", path.display()))?;
    let config =
        config::parse(&text).map_err(|e| format!("--nvmf-config {}: {e}", path.display()))?;
    Target::start(&config, ssds)
}
