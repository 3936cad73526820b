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
//! a peer sends panics the process. See Documentation/nvme-tcp.rst.

pub mod config;
mod configure;
mod connection;
mod fabrics;
mod identify;
mod initiator;
mod io;
mod remote_slots;
mod remote_ssd;
#[cfg(test)]
mod stream_fuzz;
mod target;
#[cfg(test)]
mod tests;
mod volumes;

pub use configure::HostTarget;
#[cfg(test)]
pub use initiator::{RemoteNamespace, RemoteSpec, INITIATOR_NQN};
pub use remote_slots::{RemoteSlot, RemoteSlots, SlotHandle, REMOTE_SLOTS};
pub use remote_ssd::{readd_hook, RemoteSsd, RemoteSsdPolicy};
pub use target::{claim_ssds, ClaimedSsds, Target, VolumeLookup, FIRST_CNTLID};
pub use volumes::VolumeDirectory;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use log::info;

use crate::ownership::SsdOwnership;
use crate::volumes::{NamespaceTable, VolumeManager};
use config::TargetConfig;

/// What the appliance's start-up needs from the accelerator, once its
/// volume manager has opened the families on the SSDs and its function
/// has numbered their volumes.
pub struct Accelerator<'a> {
    /// The volume manager.
    pub volumes: &'a VolumeManager,
    /// Every SSD's ownership, by SSD number (images, then remote SSDs).
    pub ownership: &'a [Arc<SsdOwnership>],
    /// How many of them are `--ssd` images.
    pub images: usize,
    /// The accelerator's namespace table (its function's controller).
    pub table: &'a dyn NamespaceTable,
    /// The NSIDs its function keeps from volumes (passthrough).
    pub reserved: &'a BTreeSet<u32>,
    /// SSD numbers of the remote SSDs that did not answer at start-up: a
    /// `[volume]` not found on the SSDs is not made on them.
    pub absent: &'a [usize],
}

/// The appliance's start-up after the volume manager: makes the
/// `[volume]` sections missing from the SSDs, then starts the target (if
/// the file has ports) with the SSDs `claimed` earlier and the volumes.
pub fn start_appliance(
    config: &TargetConfig,
    claimed: &ClaimedSsds,
    accel: &Accelerator<'_>,
) -> Result<Option<Arc<Target>>, String> {
    let mut directory = VolumeDirectory::from_manager(accel.volumes, accel.reserved);
    let made = volumes::create_missing(
        config,
        accel.volumes,
        accel.ownership,
        accel.images,
        accel.absent,
        accel.table,
        &directory,
    )?;
    if made {
        directory = VolumeDirectory::from_manager(accel.volumes, accel.reserved);
    }
    info!("nvmf: open volumes: {:?}", directory.names());
    if config.ports.is_empty() {
        return Ok(None);
    }
    Target::start_with(config, claimed, &directory).map(Some)
}

/// Reads and checks the configuration file at `path`.
pub fn load(path: &Path) -> Result<TargetConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--nvmf-config {}: {e}", path.display()))?;
    config::parse(&text).map_err(|e| format!("--nvmf-config {}: {e}", path.display()))
}

/// Connects to the remote SSDs of `config`, in file order. Each must
/// answer now, unless its section gives its `size`: it then starts absent
/// and joins when its remote answers ([`RemoteSsd::start`]).
pub fn connect_remote_ssds(config: &TargetConfig) -> Result<Vec<Arc<RemoteSsd>>, String> {
    config
        .remote_ssds
        .iter()
        .map(|r| {
            let policy = RemoteSsdPolicy {
                timeout: std::time::Duration::from_secs(u64::from(r.timeout_secs)),
                kato: std::time::Duration::from_millis(u64::from(r.kato_ms)),
                ..RemoteSsdPolicy::default()
            };
            RemoteSsd::start(&r.name, r.spec.clone(), policy, r.geometry).map_err(|e| {
                let hint = if r.geometry.is_none() && e.kind() != std::io::ErrorKind::InvalidData {
                    " (with a 'size' setting it may be absent at start-up)"
                } else {
                    ""
                };
                format!(
                    "[remote-ssd {}] {} {} namespace {}: {e}{hint}",
                    r.name, r.spec.address, r.spec.subnqn, r.spec.nsid
                )
            })
        })
        .collect()
}
