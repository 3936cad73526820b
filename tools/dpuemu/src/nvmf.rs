//! dpuemu as an NVMe/TCP target: a discovery subsystem and I/O subsystems
//! whose namespaces are images, dpuemu's SSDs, the accelerator's volumes
//! or remote namespaces, served to any NVMe/TCP host (Linux's nvme-tcp,
//! nvme-cli) on the configured ports; and as an initiator whose remote
//! namespaces can be SSDs of the accelerator (`remote_ssd.rs`).
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
mod remote_ssd;
#[cfg(test)]
mod stream_fuzz;
mod target;
#[cfg(test)]
mod tests;
mod volumes;

pub use remote_ssd::{readd_hook, Backoff, RemoteSsd};
pub use target::{claim_ssds, Target};
pub use volumes::VolumeDirectory;

use std::path::Path;
use std::sync::Arc;

use config::TargetConfig;

/// Reads and checks the configuration file at `path`.
pub fn load(path: &Path) -> Result<TargetConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--nvmf-config {}: {e}", path.display()))?;
    config::parse(&text).map_err(|e| format!("--nvmf-config {}: {e}", path.display()))
}

/// Connects to the remote SSDs of `config`, in file order. Each must
/// answer now.
pub fn connect_remote_ssds(config: &TargetConfig) -> Result<Vec<Arc<RemoteSsd>>, String> {
    config
        .remote_ssds
        .iter()
        .map(|r| {
            RemoteSsd::connect(&r.name, r.spec.clone(), Backoff::default()).map_err(|e| {
                format!(
                    "[remote-ssd {}] {} {} namespace {}: {e}",
                    r.name, r.spec.address, r.spec.subnqn, r.spec.nsid
                )
            })
        })
        .collect()
}
