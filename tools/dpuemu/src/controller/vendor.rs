//! The dpublk vendor command set on the accelerator function.
//!
//! SSD Attach, Detach and List work on the SSD ownership; the volume,
//! snapshot, statistics and fault commands go to the [`VolumeManager`]
//! (`crate::volumes`), which runs the data services engine. Payloads from
//! the host are copied in whole and validated there.

use std::sync::atomic::Ordering;

use log::{info, warn};
use nvme_shim::sqe::SubmissionEntry;
use nvme_shim::status::Status;
use nvme_shim::vendor::{self, status as vs, vendor_status, VendorCommand};
use nvme_shim::wire::{ascii_field, c_string_field, Wire};

use zeroize::{Zeroize, Zeroizing};

use super::admin::CommandResult;
use super::data::{self, Direction};
use super::queues::Completion;
use super::{Controller, SsdHandle};
use crate::volumes::VolumeManager;

impl Controller {
    pub(super) fn execute_vendor(
        &self,
        sqe: &SubmissionEntry,
        ssds: &[SsdHandle],
        volumes: Option<&VolumeManager>,
    ) -> CommandResult {
        let Some(cmd) = VendorCommand::from_opcode(sqe.opcode()) else {
            return Err(Status::INVALID_OPCODE);
        };
        match cmd {
            VendorCommand::SsdAttach | VendorCommand::SsdDetach => {
                let index = vendor::ssd_index(sqe).ok_or(Status::INVALID_FIELD)?;
                let ssd = ssds
                    .iter()
                    .find(|s| s.index == index && !self.nvmf.is_empty_remote_slot(index))
                    .ok_or(vendor_status(vs::SSD_NOT_FOUND))?;
                if cmd == VendorCommand::SsdAttach && ssd.media.zoned().is_some() {
                    // A volume family's label and metadata would overwrite
                    // the zone state at the image's end; nothing places
                    // data by zones before Log-RAID (issue 13) does.
                    warn!(
                        "{}: SSD {index} is a zoned SSD: the accelerator cannot use one yet",
                        self.config.name
                    );
                    return Err(Status::INVALID_FIELD);
                }
                let result = if cmd == VendorCommand::SsdAttach {
                    ssd.ownership.attach()
                } else {
                    ssd.ownership.detach()
                };
                result.map_err(vendor_status)?;
                if cmd == VendorCommand::SsdDetach {
                    if let Some(volumes) = volumes {
                        volumes.ssd_detached(index);
                    }
                }
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
                // A reserved remote SSD index is an SSD once Remote SSD Add
                // filled it.
                let present = ssds
                    .iter()
                    .filter(|s| !self.nvmf.is_empty_remote_slot(s.index));
                for (entry, ssd) in list.entries.iter_mut().zip(present) {
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
                let mut count = 0usize;
                {
                    // Namespaces that are not volumes: the passthrough SSD.
                    let namespaces = self.namespaces.read().unwrap_or_else(|p| p.into_inner());
                    let plain = namespaces.iter().filter(|(_, s)| !s.backend.is_volume());
                    for (entry, (nsid, slot)) in list.entries.iter_mut().zip(plain) {
                        entry.nsid.set(*nsid);
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
                }
                if let Some(volumes) = volumes {
                    count += volumes.list(&mut list.entries[count..]);
                }
                list.count.set(count as u32);
                self.send_to_host(sqe, list.as_bytes())?;
                Ok(0)
            }
            VendorCommand::Statistics => {
                let nsid = sqe.nsid.get();
                let stats = if nsid == 0 || nsid == 0xffff_ffff {
                    self.stats.encode()
                } else {
                    let mut stats = {
                        let namespaces = self.namespaces.read().unwrap_or_else(|p| p.into_inner());
                        namespaces
                            .get(&nsid)
                            .map(|slot| slot.stats.encode())
                            .ok_or(vendor_status(vs::VOLUME_NOT_FOUND))?
                    };
                    if let Some(volumes) = volumes {
                        volumes.statistics(nsid, &mut stats);
                    }
                    stats
                };
                self.send_to_host(sqe, stats.as_bytes())?;
                Ok(0)
            }
            VendorCommand::VolumeCreate => {
                let volumes = volumes.ok_or(vendor_status(vs::NOT_IMPLEMENTED))?;
                let mut raw = Zeroizing::new(vec![0u8; cmd.payload_bytes()]);
                self.receive_from_host(sqe, &mut raw)?;
                let mut req = vendor::VolumeCreate::read_from(&raw)
                    .ok_or(vendor_status(vs::INVALID_PAYLOAD))?;
                let result = volumes.create(&req, self);
                req.key.zeroize();
                result
            }
            VendorCommand::VolumeDelete => {
                let volumes = self.volumes(volumes)?;
                // A volume the NVMe/TCP target exports stays until its
                // namespace there is removed (configfs disables it first).
                let backend = {
                    let namespaces = self.namespaces.read().unwrap_or_else(|p| p.into_inner());
                    namespaces.get(&sqe.nsid.get()).map(|s| s.backend.clone())
                };
                if backend.is_some_and(|b| self.nvmf.exports(&b)) {
                    warn!(
                        "{}: namespace {} is exported over NVMe/TCP: not deleted",
                        self.config.name,
                        sqe.nsid.get()
                    );
                    return Err(vendor_status(vs::VOLUME_BUSY));
                }
                volumes.delete(sqe.nsid.get(), self)
            }
            VendorCommand::VolumeResize => self
                .volumes(volumes)?
                .resize(sqe.nsid.get(), vendor::resize_bytes(sqe)),
            VendorCommand::ServiceGet => {
                let settings = self.volumes(volumes)?.service_get(sqe.nsid.get())?;
                self.send_to_host(sqe, settings.as_bytes())?;
                Ok(0)
            }
            VendorCommand::ServiceSet => {
                let volumes = self.volumes(volumes)?;
                let settings: vendor::ServiceSettings = self.payload(sqe, cmd)?;
                volumes.service_set(sqe.nsid.get(), &settings)
            }
            VendorCommand::SnapshotCreate => {
                let volumes = self.volumes(volumes)?;
                let name: vendor::ObjectName = self.payload(sqe, cmd)?;
                volumes.snapshot_create(sqe.nsid.get(), &name)
            }
            VendorCommand::SnapshotList => {
                let list = self
                    .volumes(volumes)?
                    .snapshot_list(sqe.nsid.get(), vendor::snapshot_list_first(sqe))?;
                self.send_to_host(sqe, list.as_bytes())?;
                Ok(0)
            }
            VendorCommand::SnapshotDelete => self
                .volumes(volumes)?
                .snapshot_delete(vendor::snapshot_id(sqe)),
            VendorCommand::SnapshotClone => {
                let volumes = self.volumes(volumes)?;
                let name: vendor::ObjectName = self.payload(sqe, cmd)?;
                volumes.snapshot_clone(vendor::snapshot_id(sqe), &name, self)
            }
            VendorCommand::SnapshotRevert => self
                .volumes(volumes)?
                .snapshot_revert(sqe.nsid.get(), vendor::snapshot_id(sqe)),
            VendorCommand::FaultInject => {
                let volumes = self.volumes(volumes)?;
                let fault: vendor::FaultInjection = self.payload(sqe, cmd)?;
                volumes.fault(&fault)
            }
            VendorCommand::Maintenance => {
                self.volumes(volumes)?
                    .maintenance(sqe.nsid.get(), sqe.cdw10.get(), sqe.cdw11.get())
            }
            VendorCommand::NvmfPortAdd => self.nvmf.port_add(&self.raw_payload(sqe, cmd)?),
            VendorCommand::NvmfPortRemove => self.nvmf.port_remove(sqe),
            VendorCommand::NvmfSubsystemSet => {
                self.nvmf.subsystem_set(&self.raw_payload(sqe, cmd)?)
            }
            VendorCommand::NvmfSubsystemRemove => {
                self.nvmf.subsystem_remove(&self.raw_payload(sqe, cmd)?)
            }
            VendorCommand::NvmfNamespaceAdd => {
                let raw = self.raw_payload(sqe, cmd)?;
                let lookup = OpenVolumes {
                    controller: self,
                    volumes: self.volumes(volumes)?,
                };
                self.nvmf.namespace_add(&raw, &lookup)
            }
            VendorCommand::NvmfNamespaceRemove => {
                self.nvmf.namespace_remove(&self.raw_payload(sqe, cmd)?)
            }
            // `execute_admin` starts it on its own thread.
            VendorCommand::RemoteSsdAdd => Err(Status::INTERNAL_ERROR),
            VendorCommand::RemoteSsdRemove => {
                if self.remote_ssd_add_running.load(Ordering::SeqCst) {
                    // The Add holds the slots while it connects; waiting
                    // for it here would stall the register thread.
                    warn!(
                        "{}: Remote SSD Remove refused: a Remote SSD Add is running",
                        self.config.name
                    );
                    return Err(vendor_status(vs::SSD_BUSY));
                }
                self.nvmf.remote_ssd_remove(sqe)
            }
        }
    }

    /// Remote SSD Add, started from the register thread: the payload is
    /// copied in here, then a thread of its own connects (up to the 10 s
    /// connection timeout), fills the slot and posts the completion
    /// (`post_late_admin`). `Ok` means the command stays outstanding. One
    /// Add runs at a time: a second one, or a Remove, meanwhile ends with
    /// SSD Busy (the host retries; `EBUSY` in configfs).
    pub(super) fn start_remote_ssd_add(&self, sqe: &SubmissionEntry) -> Result<(), Status> {
        let raw = self.raw_payload(sqe, VendorCommand::RemoteSsdAdd)?;
        let ctrl = self.this.upgrade().ok_or(Status::INTERNAL_ERROR)?;
        if self.remote_ssd_add_running.swap(true, Ordering::SeqCst) {
            warn!(
                "{}: Remote SSD Add refused: another one is running",
                self.config.name
            );
            return Err(vendor_status(vs::SSD_BUSY));
        }
        // Read on the register thread while the admin SQ is locked: a
        // reset that follows bumps it, whatever the thread below does.
        let epoch = self.admin_epoch.load(Ordering::SeqCst);
        let sqe = *sqe;
        let spawned = std::thread::Builder::new()
            .name(format!("{}-remote-ssd-add", self.config.name))
            .spawn(move || ctrl.finish_remote_ssd_add(epoch, &sqe, &raw));
        if let Err(e) = spawned {
            warn!(
                "{}: Remote SSD Add: no thread for it: {e}",
                self.config.name
            );
            self.remote_ssd_add_running.store(false, Ordering::SeqCst);
            return Err(Status::INTERNAL_ERROR);
        }
        Ok(())
    }

    /// The thread of a Remote SSD Add: adds the SSD and posts the
    /// completion (DW0 the new SSD's index, or the refusal's status). If
    /// the completion is dropped (a reset, Bus Master Enable off), the host
    /// never learns the index, so the SSD is removed again.
    fn finish_remote_ssd_add(&self, epoch: u64, sqe: &SubmissionEntry, raw: &[u8]) {
        let result = self.nvmf.remote_ssd_add(raw);
        let completion = match result {
            Ok(index) => Completion {
                cid: sqe.cid(),
                status: Status::SUCCESS,
                result: u64::from(index),
            },
            Err(status) => Completion {
                cid: sqe.cid(),
                status,
                result: 0,
            },
        };
        let posted = self.post_late_admin(epoch, sqe, completion);
        if let (false, Ok(index)) = (posted, result) {
            let mut remove = *sqe;
            remove.cdw10.set(index);
            match self.nvmf.remote_ssd_remove(&remove) {
                Ok(_) => info!(
                    "{}: SSD {index}: its Remote SSD Add was never completed: removed again",
                    self.config.name
                ),
                Err(status) => warn!(
                    "{}: SSD {index}: its Remote SSD Add was never completed and it \
                     cannot be removed ({status:?}): it stays added",
                    self.config.name
                ),
            }
        }
        self.remote_ssd_add_running.store(false, Ordering::SeqCst);
    }

    /// The payload of `cmd`, as the host sent it (checked by the caller).
    fn raw_payload(&self, sqe: &SubmissionEntry, cmd: VendorCommand) -> Result<Vec<u8>, Status> {
        let mut raw = vec![0u8; cmd.payload_bytes()];
        self.receive_from_host(sqe, &mut raw)?;
        Ok(raw)
    }

    fn volumes<'a>(&self, volumes: Option<&'a VolumeManager>) -> Result<&'a VolumeManager, Status> {
        volumes.ok_or(vendor_status(vs::NOT_IMPLEMENTED))
    }

    /// Copies the command's payload from the host (admin data in).
    fn receive_from_host(&self, sqe: &SubmissionEntry, buf: &mut [u8]) -> Result<(), Status> {
        let segments = data::resolve(
            &*self.memory,
            sqe,
            buf.len() as u64,
            Direction::FromHost,
            false,
        )?;
        data::copy_from_guest(&*self.memory, &segments, buf)
    }

    /// Reads the fixed-size payload of `cmd`.
    fn payload<T: Wire>(&self, sqe: &SubmissionEntry, cmd: VendorCommand) -> Result<T, Status> {
        let mut raw = vec![0u8; cmd.payload_bytes()];
        self.receive_from_host(sqe, &mut raw)?;
        T::read_from(&raw).ok_or(vendor_status(vs::INVALID_PAYLOAD))
    }
}

/// The accelerator's open volumes by name, as they are now (volumes made,
/// cloned or unlocked since start-up included): Volume List names them,
/// the controller's namespace table holds their namespaces. A locked
/// volume has no namespace and is not found.
struct OpenVolumes<'a> {
    controller: &'a Controller,
    volumes: &'a VolumeManager,
}

impl crate::nvmf::VolumeLookup for OpenVolumes<'_> {
    fn volume(&self, name: &str) -> Option<std::sync::Arc<dyn crate::namespace::Namespace>> {
        let mut entries =
            vec![vendor::VolumeListEntry::zeroed(); crate::volumes::MAX_NSID as usize];
        let count = self.volumes.list(&mut entries);
        let nsid = entries
            .iter()
            .take(count)
            .find(|e| {
                e.nsid.get() != 0 && nvme_shim::wire::c_string_bytes(&e.name) == name.as_bytes()
            })?
            .nsid
            .get();
        let namespaces = self
            .controller
            .namespaces
            .read()
            .unwrap_or_else(|p| p.into_inner());
        namespaces.get(&nsid).map(|slot| slot.backend.clone())
    }
}
