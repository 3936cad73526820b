//! The dpublk vendor command set on the accelerator function.
//!
//! Implemented: SSD Attach, SSD Detach, SSD List, Volume List and
//! Statistics. The other commands are defined by `nvme_shim::vendor` and
//! answered with the vendor status Not Implemented until the data services
//! engine provides volumes and snapshots.

use log::info;
use nvme_shim::sqe::SubmissionEntry;
use nvme_shim::status::Status;
use nvme_shim::vendor::{self, status as vs, vendor_status, VendorCommand};
use nvme_shim::wire::{ascii_field, c_string_field, Wire};

use super::admin::CommandResult;
use super::{Controller, SsdHandle};

impl Controller {
    pub(super) fn execute_vendor(
        &self,
        sqe: &SubmissionEntry,
        ssds: &[SsdHandle],
    ) -> CommandResult {
        let Some(cmd) = VendorCommand::from_opcode(sqe.opcode()) else {
            return Err(Status::INVALID_OPCODE);
        };
        match cmd {
            VendorCommand::SsdAttach | VendorCommand::SsdDetach => {
                let index = vendor::ssd_index(sqe).ok_or(Status::INVALID_FIELD)?;
                let ssd = ssds
                    .iter()
                    .find(|s| s.index == index)
                    .ok_or(vendor_status(vs::SSD_NOT_FOUND))?;
                let result = if cmd == VendorCommand::SsdAttach {
                    ssd.ownership.attach()
                } else {
                    ssd.ownership.detach()
                };
                result.map_err(vendor_status)?;
                info!(
                    "{}: SSD {index} {}",
                    self.config.name,
                    if cmd == VendorCommand::SsdAttach {
                        "attached"
                    } else {
                        "detached"
                    }
                );
                Ok(0)
            }
            VendorCommand::SsdList => {
                let mut list = vendor::SsdList::zeroed();
                let mut count = 0u32;
                for (entry, ssd) in list.entries.iter_mut().zip(ssds) {
                    let view = ssd.ownership.view();
                    entry.index.set(ssd.index);
                    entry.state = if view.attached {
                        vendor::SSD_STATE_ATTACHED
                    } else {
                        vendor::SSD_STATE_HOST
                    };
                    entry.flags = if view.host_enabled {
                        vendor::SSD_FLAG_HOST_ENABLED
                    } else {
                        0
                    } | if view.in_use {
                        vendor::SSD_FLAG_IN_USE
                    } else {
                        0
                    };
                    entry.lba_shift = ssd.media.lba_shift();
                    entry.capacity_bytes.set(ssd.media.size());
                    ascii_field(&mut entry.serial, ssd.serial.as_bytes());
                    count += 1;
                }
                list.count.set(count);
                self.send_to_host(sqe, list.as_bytes())?;
                Ok(0)
            }
            VendorCommand::VolumeList => {
                let mut list = vendor::VolumeList::zeroed();
                let namespaces = self.namespaces.read().unwrap_or_else(|p| p.into_inner());
                let mut count = 0u32;
                for (i, (entry, slot)) in list.entries.iter_mut().zip(namespaces.iter()).enumerate()
                {
                    let nsid = i as u32 + 1;
                    entry.nsid.set(nsid);
                    entry.size_bytes.set(slot.backend.size());
                    entry.used_bytes.set(slot.backend.size());
                    entry.layout = vendor::layout::SINGLE;
                    entry.lba_shift = slot.backend.lba_shift();
                    entry.data_shards = 1;
                    let name = match slot.ssd {
                        Some(ssd) => format!("passthrough-ssd{ssd}"),
                        None => format!("ns{nsid}"),
                    };
                    c_string_field(&mut entry.name, name.as_bytes());
                    count += 1;
                }
                drop(namespaces);
                list.count.set(count);
                self.send_to_host(sqe, list.as_bytes())?;
                Ok(0)
            }
            VendorCommand::Statistics => {
                let nsid = sqe.nsid.get();
                let stats = if nsid == 0 || nsid == 0xffff_ffff {
                    self.stats.encode()
                } else {
                    let namespaces = self.namespaces.read().unwrap_or_else(|p| p.into_inner());
                    namespaces
                        .get(nsid as usize - 1)
                        .map(|slot| slot.stats.encode())
                        .ok_or(vendor_status(vs::VOLUME_NOT_FOUND))?
                };
                self.send_to_host(sqe, stats.as_bytes())?;
                Ok(0)
            }
            VendorCommand::VolumeCreate
            | VendorCommand::VolumeDelete
            | VendorCommand::VolumeResize
            | VendorCommand::ServiceSet
            | VendorCommand::ServiceGet
            | VendorCommand::SnapshotCreate
            | VendorCommand::SnapshotDelete
            | VendorCommand::SnapshotClone
            | VendorCommand::SnapshotRevert
            | VendorCommand::FaultInject => Err(vendor_status(vs::NOT_IMPLEMENTED)),
        }
    }
}
