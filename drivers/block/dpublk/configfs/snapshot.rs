// SPDX-License-Identifier: GPL-2.0

//! `volumes/<name>/snapshots/<snap>/`: snapshots of a volume.
//!
//! `mkdir` takes the snapshot on the accelerator (or adopts an existing
//! one of that name); `clone` makes a writable volume of it, `revert` rolls
//! the volume back to it, `destroy` deletes it, `expose` makes it a
//! read-only disk. `rmdir` forgets the handle only, like volume
//! directories, and is refused (`EBUSY`) while the snapshot is exposed: the
//! handle is the only way to take the disk away again.
//!
//! Lock order: a snapshot's `id`, then its `exposed`, then its volume's
//! configuration.

use super::{bstr, parse, refuse, report, volume::VolumeState};
use crate::{
    configfs_ext::{self, GroupAddress},
    management::{self, Payload, LIST_ENTRY_BYTES},
    shim::{
        sqe::SubmissionEntry,
        vendor::{self, ObjectName, SnapshotListEntry},
        wire::{c_string_bytes, c_string_field, Wire},
    },
};
use kernel::{
    configfs::{self, AttributeOperations},
    configfs_attrs, new_mutex,
    page::PAGE_SIZE,
    prelude::*,
    str::{CStr, Formatter},
    sync::{Arc, Mutex},
};

/// The `snapshots/` directory of a volume.
#[pin_data]
pub(crate) struct SnapshotsDir {
    volume: Arc<VolumeState>,
}

impl SnapshotsDir {
    pub(crate) fn new(
        volume: Arc<VolumeState>,
    ) -> Result<impl PinInit<configfs::Group<SnapshotsDir>, Error>> {
        let item_type = configfs_attrs! {
            container: configfs::Group<SnapshotsDir>,
            data: SnapshotsDir,
            child: Snapshot,
            attributes: [],
        };
        Ok(configfs::Group::new(
            c"snapshots".try_into()?,
            item_type,
            try_pin_init!(SnapshotsDir { volume }),
        ))
    }
}

/// The data of `snapshots/<snap>/`.
#[pin_data]
pub(crate) struct Snapshot {
    volume: Arc<VolumeState>,
    name: KVec<u8>,
    /// This handle's configfs group: depended on while exposed.
    address: Arc<GroupAddress>,
    /// The snapshot's ID on the accelerator; `None` once destroyed.
    #[pin]
    id: Mutex<Option<u32>>,
    /// The namespace it is exposed as through this handle (0: none);
    /// nonzero exactly while the handle's group is depended on.
    #[pin]
    exposed: Mutex<u32>,
}

const DIR: &str = "snapshots";

/// The snapshot of volume `nsid` called `name`, if the device has it.
fn find(nsid: u32, name: &[u8]) -> Result<Option<SnapshotListEntry>> {
    let mgmt = management::current()?;
    let entries = mgmt.read_snapshot_list(nsid)?;
    Ok(entries
        .chunks_exact(LIST_ENTRY_BYTES)
        .filter_map(SnapshotListEntry::read_from)
        .find(|e| c_string_bytes(&e.name) == name))
}

#[vtable]
impl configfs::GroupOperations for SnapshotsDir {
    type Child = Snapshot;

    fn make_group(&self, name: &CStr) -> Result<impl PinInit<configfs::Group<Snapshot>, Error>> {
        let volume = &self.volume;
        let bytes = parse::name(name.to_bytes())
            .map_err(|why| refuse(DIR, &volume.name, "mkdir", why, EINVAL))?;
        // The volume's lock is held until the snapshot exists, so the
        // volume cannot be destroyed (and its namespace ID reused by
        // another volume) between the lookup and Snapshot Create.
        let c = volume.config.lock();
        let nsid = {
            if !c.exists {
                return report(
                    DIR,
                    &volume.name,
                    "mkdir",
                    "the volume does not exist on the accelerator yet",
                    ENOENT,
                );
            }
            if c.nsid == 0 {
                return report(DIR, &volume.name, "mkdir", "the volume is locked", ENOKEY);
            }
            c.nsid
        };
        let id = match find(nsid, bytes).map_err(|e| {
            refuse(
                DIR,
                &volume.name,
                "mkdir",
                "cannot list the volume's snapshots",
                e,
            )
        })? {
            Some(entry) => entry.id.get(),
            None => {
                let mgmt = management::current()?;
                let mut object = ObjectName::zeroed();
                c_string_field(&mut object.name, bytes);
                let mut sqe = SubmissionEntry::new(vendor::opcode::SNAPSHOT_CREATE, 0);
                sqe.nsid.set(nsid);
                let id = mgmt
                    .vendor_command(sqe, Payload::ToDevice(object.as_bytes()))
                    .map_err(|e| {
                        let why = if e == EEXIST {
                            "a volume or snapshot of that name exists"
                        } else {
                            "the accelerator refused the snapshot"
                        };
                        refuse(DIR, &volume.name, "mkdir", why, e)
                    })?;
                pr_info!(
                    "volumes/{}: snapshot {} taken (id {id})\n",
                    bstr(&volume.name),
                    bstr(bytes)
                );
                id
            }
        };
        drop(c);
        let mut owned = KVec::new();
        owned.extend_from_slice(bytes, GFP_KERNEL)?;
        let item_type = configfs_attrs! {
            container: configfs::Group<Snapshot>,
            data: Snapshot,
            attributes: [
                id: 0,
                clone: 1,
                revert: 2,
                destroy: 3,
                expose: 4,
            ],
        };
        let address = Arc::new(GroupAddress::new(), GFP_KERNEL)?;
        let recorder = address.clone();
        Ok(configfs::Group::new(
            name.try_into()?,
            item_type,
            try_pin_init!(Snapshot {
                volume: volume.clone(),
                name: owned,
                address,
                id <- new_mutex!(Some(id)),
                exposed <- new_mutex!(0),
            }),
        )
        .pin_chain(move |group| {
            recorder.record(&*group);
            Ok(())
        }))
    }
}

impl Snapshot {
    fn refuse(&self, attr: &str, why: &str, err: Error) -> Error {
        pr_err!(
            "volumes/{}/snapshots/{}: {attr}: {why} ({err:?})\n",
            bstr(&self.volume.name),
            bstr(&self.name)
        );
        err
    }

    fn id(&self, attr: &str) -> Result<u32> {
        (*self.id.lock()).ok_or_else(|| self.refuse(attr, "the snapshot was destroyed", ENOENT))
    }
}

#[vtable]
impl AttributeOperations<0> for Snapshot {
    type Data = Snapshot;

    fn show(snap: &Snapshot, page: &mut [u8; PAGE_SIZE]) -> Result<usize> {
        let mut w = Formatter::new(page);
        match *snap.id.lock() {
            Some(id) => kernel::fmt::Write::write_fmt(&mut w, format_args!("{id}\n"))?,
            None => kernel::fmt::Write::write_str(&mut w, "-1\n")?,
        }
        Ok(w.bytes_written())
    }
}

#[vtable]
impl AttributeOperations<1> for Snapshot {
    type Data = Snapshot;

    fn show(_snap: &Snapshot, _page: &mut [u8; PAGE_SIZE]) -> Result<usize> {
        Ok(0)
    }

    /// Writing a name clones the snapshot into a new volume of that name,
    /// exposed as a disk at once (`mkdir volumes/<name>` adopts it).
    fn store(snap: &Snapshot, page: &[u8]) -> Result {
        let text = parse::value(page).map_err(|why| snap.refuse("clone", why, EINVAL))?;
        let clone_name = parse::name(text).map_err(|why| snap.refuse("clone", why, EINVAL))?;
        let id = snap.id("clone")?;
        let mgmt = management::current()?;
        let mut object = ObjectName::zeroed();
        c_string_field(&mut object.name, clone_name);
        let mut sqe = vendor::snapshot_command(vendor::opcode::SNAPSHOT_CLONE, 0, id, 0);
        sqe.nsid.set(snap.volume.config.lock().nsid);
        let nsid = mgmt
            .vendor_command(sqe, Payload::ToDevice(object.as_bytes()))
            .map_err(|e| {
                let why = if e == EEXIST {
                    "a volume or snapshot of that name exists"
                } else {
                    "the accelerator refused the clone"
                };
                snap.refuse("clone", why, e)
            })?;
        let index = mgmt
            .expose(nsid)
            .map_err(|e| snap.refuse("clone", "the clone exists but has no disk", e))?;
        pr_info!(
            "volumes/{}/snapshots/{}: cloned into volume {} (dpublk{index})\n",
            bstr(&snap.volume.name),
            bstr(&snap.name),
            bstr(clone_name)
        );
        Ok(())
    }
}

#[vtable]
impl AttributeOperations<2> for Snapshot {
    type Data = Snapshot;

    fn show(_snap: &Snapshot, _page: &mut [u8; PAGE_SIZE]) -> Result<usize> {
        Ok(0)
    }

    /// Writing 1 reverts the volume to the snapshot (the volume must be
    /// disabled: its disk would see its blocks change under it).
    fn store(snap: &Snapshot, page: &[u8]) -> Result {
        if !parse::boolean(page).map_err(|why| snap.refuse("revert", why, EINVAL))? {
            return Err(snap.refuse("revert", "write 1 to revert", EINVAL));
        }
        let id = snap.id("revert")?;
        let c = snap.volume.config.lock();
        if c.enabled || c.adopted_disk {
            return Err(snap.refuse("revert", "disable the volume first", EBUSY));
        }
        let mgmt = management::current()?;
        mgmt.vendor_command(
            vendor::snapshot_command(vendor::opcode::SNAPSHOT_REVERT, c.nsid, id, 0),
            Payload::None,
        )
        .map_err(|e| snap.refuse("revert", "the accelerator refused the revert", e))?;
        pr_info!(
            "volumes/{}: reverted to snapshot {}\n",
            bstr(&snap.volume.name),
            bstr(&snap.name)
        );
        Ok(())
    }
}

#[vtable]
impl AttributeOperations<3> for Snapshot {
    type Data = Snapshot;

    fn show(_snap: &Snapshot, _page: &mut [u8; PAGE_SIZE]) -> Result<usize> {
        Ok(0)
    }

    /// Writing 1 deletes the snapshot on the accelerator.
    fn store(snap: &Snapshot, page: &[u8]) -> Result {
        if !parse::boolean(page).map_err(|why| snap.refuse("destroy", why, EINVAL))? {
            return Err(snap.refuse("destroy", "write 1 to destroy", EINVAL));
        }
        let mut id = snap.id.lock();
        let Some(current) = *id else {
            return Err(snap.refuse("destroy", "the snapshot was destroyed", ENOENT));
        };
        if *snap.exposed.lock() != 0 {
            return Err(snap.refuse("destroy", "write 0 to 'expose' first", EBUSY));
        }
        let mgmt = management::current()?;
        let nsid = snap.volume.config.lock().nsid;
        mgmt.vendor_command(
            vendor::snapshot_command(vendor::opcode::SNAPSHOT_DELETE, nsid, current, 0),
            Payload::None,
        )
        .map_err(|e| {
            let why = if e == EBUSY {
                "clones depend on the snapshot"
            } else {
                "the accelerator refused to delete the snapshot"
            };
            snap.refuse("destroy", why, e)
        })?;
        *id = None;
        Ok(())
    }
}

#[vtable]
impl AttributeOperations<4> for Snapshot {
    type Data = Snapshot;

    fn show(snap: &Snapshot, page: &mut [u8; PAGE_SIZE]) -> Result<usize> {
        let mut w = Formatter::new(page);
        let nsid = *snap.exposed.lock();
        let disk = management::current()
            .ok()
            .and_then(|m| (nsid != 0).then(|| m.disk_of(nsid)).flatten());
        match disk {
            Some(index) => {
                kernel::fmt::Write::write_fmt(&mut w, format_args!("1 dpublk{index}\n"))?
            }
            None => kernel::fmt::Write::write_str(&mut w, "0\n")?,
        }
        Ok(w.bytes_written())
    }

    /// `1` exposes the snapshot as a read-only disk; `0` takes it away.
    /// While exposed, the handle's directory is depended on, so `rmdir`
    /// cannot leave the disk behind without a handle.
    fn store(snap: &Snapshot, page: &[u8]) -> Result {
        let on = parse::boolean(page).map_err(|why| snap.refuse("expose", why, EINVAL))?;
        // `id` stays locked so `destroy` cannot delete the snapshot while it
        // is being exposed.
        let id = snap.id.lock();
        if id.is_none() {
            return Err(snap.refuse("expose", "the snapshot was destroyed", ENOENT));
        }
        let mgmt = management::current()?;
        let mut exposed = snap.exposed.lock();
        if on {
            if *exposed != 0 {
                return Ok(());
            }
            let group = snap.address.get().ok_or(EINVAL)?;
            // Pinned first: if an rmdir is under way this fails before
            // anything exists that the handle would have to take back (a
            // disk made first could be held open by udev and stay behind
            // without a handle).
            // SAFETY: We run in a store callback of this snapshot's group,
            // which is registered.
            unsafe { configfs_ext::depend_unlocked(group) }.map_err(|e| {
                snap.refuse("expose", "cannot pin the directory (being removed?)", e)
            })?;
            let unpin = |why: &str, e: Error| {
                // SAFETY: Depended on just above, not undepended since.
                unsafe { configfs_ext::undepend(group) };
                snap.refuse("expose", why, e)
            };
            let mut payload = KBox::new(vendor::VolumeCreate::zeroed(), GFP_KERNEL)
                .map_err(|e| unpin("out of memory", e.into()))?;
            payload.flags = vendor::VOLUME_CREATE_OPEN_EXISTING;
            c_string_field(&mut payload.name, &snap.name);
            let nsid = mgmt
                .vendor_command(
                    SubmissionEntry::new(vendor::opcode::VOLUME_CREATE, 0),
                    Payload::ToDevice(payload.as_bytes()),
                )
                .map_err(|e| unpin("the accelerator refused to open the snapshot", e))?;
            let index = mgmt.expose_as(nsid, true).map_err(|e| {
                // No disk: close the namespace again.
                let mut sqe = SubmissionEntry::new(vendor::opcode::VOLUME_DELETE, 0);
                sqe.nsid.set(nsid);
                let _ = mgmt.vendor_command(sqe, Payload::None);
                unpin("cannot add the disk", e)
            })?;
            *exposed = nsid;
            pr_info!(
                "volumes/{}/snapshots/{}: exposed read-only as dpublk{index}\n",
                bstr(&snap.volume.name),
                bstr(&snap.name)
            );
        } else if *exposed != 0 {
            mgmt.hide(*exposed)
                .map_err(|e| snap.refuse("expose", "the disk is open (mounted or in use)", e))?;
            let mut sqe = SubmissionEntry::new(vendor::opcode::VOLUME_DELETE, 0);
            sqe.nsid.set(*exposed);
            mgmt.vendor_command(sqe, Payload::None).map_err(|e| {
                snap.refuse("expose", "the accelerator did not close the namespace", e)
            })?;
            *exposed = 0;
            if let Some(group) = snap.address.get() {
                // SAFETY: `exposed` was nonzero, so `expose 1` depended on
                // the group and nothing undepended it since.
                unsafe { configfs_ext::undepend(group) };
            }
        }
        Ok(())
    }
}
