// SPDX-License-Identifier: GPL-2.0

//! `volumes/<name>/`: a volume on the accelerator.
//!
//! The directory is the host's handle; the volume itself lives on the
//! accelerator's SSDs. `enable` creates it there (the first time) and
//! exposes it as a disk; `enable` 0 takes the disk away and keeps the data;
//! `destroy` deletes the volume and its data. `rmdir` forgets the handle
//! only (refused with `EBUSY` while enabled), so volumes survive module
//! reloads and accelerator restarts; `mkdir` of an existing volume's name
//! adopts it.

use super::{bstr, parse, refuse, report, snapshot::SnapshotsDir, Registry};
use crate::{
    configfs_ext::{self, DefaultGroup, GroupAddress},
    management::{self, Payload, LIST_ENTRY_BYTES},
    shim::{
        sqe::SubmissionEntry,
        vendor::{self, layout, service, VolumeCreate, VolumeListEntry},
        wire::{c_string_bytes, c_string_field, Wire},
    },
};
use kernel::{
    configfs::{self, AttributeOperations},
    configfs_attrs,
    fmt::Write as _,
    new_mutex,
    page::PAGE_SIZE,
    prelude::*,
    str::{CStr, Formatter},
    sync::{Arc, Mutex},
};

/// The `volumes/` directory.
#[pin_data]
pub(crate) struct VolumesDir {}

impl VolumesDir {
    pub(crate) fn new() -> Result<impl PinInit<configfs::Group<VolumesDir>, Error>> {
        let item_type = configfs_attrs! {
            container: configfs::Group<VolumesDir>,
            data: VolumesDir,
            child: Volume,
            attributes: [],
        };
        Ok(configfs::Group::new(
            c"volumes".try_into()?,
            item_type,
            try_pin_init!(VolumesDir {}),
        ))
    }
}

/// Layout names, in `layout::*` order.
const LAYOUTS: [&str; 6] = ["linear", "stripe", "raid10", "raid6", "ec", "lograid"];
const COMPRESSIONS: [&str; 3] = ["none", "lz4", "zstd"];
const ENCRYPTIONS: [&str; 2] = ["none", "aes-xts-256"];
/// Most SSDs a volume may span (the device's SSD mask has 64 bits; the
/// host keeps the list short).
const MAX_VOLUME_SSDS: usize = 16;

/// The volume's settings and where it stands.
pub(crate) struct VolumeConfig {
    pub(crate) ssds: KVec<u16>,
    pub(crate) size: u64,
    pub(crate) layout: u8,
    pub(crate) copies: u8,
    pub(crate) ec_k: u8,
    pub(crate) ec_m: u8,
    pub(crate) chunk: u32,
    pub(crate) thin: bool,
    /// 0 none, 1 lz4, 2 zstd.
    pub(crate) compression: u8,
    pub(crate) dedup: bool,
    pub(crate) zero_detect: bool,
    pub(crate) encrypted: bool,
    /// The key, until the volume is created or unlocked (then wiped).
    pub(crate) key: Option<KBox<[u8; vendor::VOLUME_KEY_BYTES]>>,
    /// The volume exists on the accelerator.
    pub(crate) exists: bool,
    /// Its namespace while it has one (0: locked).
    pub(crate) nsid: u32,
    /// Exposed as a disk through this handle, which is then depended on.
    pub(crate) enabled: bool,
    /// Exposed as a disk before this handle existed (not depended on).
    pub(crate) adopted_disk: bool,
}

impl VolumeConfig {
    fn wipe_key(&mut self) {
        if let Some(key) = self.key.as_mut() {
            for byte in key.iter_mut() {
                // SAFETY: `byte` is a valid, exclusive reference; volatile so
                // the wipe is not optimized away.
                unsafe { core::ptr::write_volatile(byte, 0) };
            }
        }
        self.key = None;
    }

    fn services(&self) -> u32 {
        let mut s = 0;
        if self.thin {
            s |= service::THIN;
        }
        if self.zero_detect {
            s |= service::ZERO_DETECT;
        }
        if self.dedup {
            s |= service::DEDUP;
        }
        if self.compression != 0 {
            s |= service::COMPRESSION;
        }
        if self.encrypted {
            s |= service::ENCRYPTION;
        }
        s
    }
}

/// A volume handle's state, shared with its snapshots directory.
#[pin_data]
pub(crate) struct VolumeState {
    pub(crate) name: KVec<u8>,
    /// This handle's configfs group, for dependencies.
    address: GroupAddress,
    #[pin]
    pub(crate) config: Mutex<VolumeConfig>,
}

/// The data of `volumes/<name>/`.
///
/// `snapshots` is the `snapshots/` default group; it is released with the
/// volume's directory.
#[pin_data(PinnedDrop)]
pub(crate) struct Volume {
    state: Arc<VolumeState>,
    _snapshots: DefaultGroup,
}

#[pinned_drop]
impl PinnedDrop for Volume {
    fn drop(self: Pin<&mut Self>) {
        self.state.config.lock().wipe_key();
    }
}

/// The device's entry for the volume called `name`, if it has one.
pub(crate) fn find_on_device(name: &[u8]) -> Result<Option<VolumeListEntry>> {
    let mgmt = management::current()?;
    let entries = mgmt.read_list(SubmissionEntry::new(vendor::opcode::VOLUME_LIST, 0))?;
    Ok(entries
        .chunks_exact(LIST_ENTRY_BYTES)
        .filter_map(VolumeListEntry::read_from)
        .find(|e| c_string_bytes(&e.name) == name))
}

#[vtable]
impl configfs::GroupOperations for VolumesDir {
    type Child = Volume;

    fn make_group(&self, name: &CStr) -> Result<impl PinInit<configfs::Group<Volume>, Error>> {
        let bytes = parse::name(name.to_bytes()).map_err(|why| {
            pr_err!("volumes: cannot create '{name}': {why} (EINVAL)\n");
            EINVAL
        })?;
        let mut config = VolumeConfig {
            ssds: KVec::new(),
            size: 0,
            layout: layout::SINGLE,
            copies: 2,
            ec_k: 4,
            ec_m: 2,
            chunk: 0,
            thin: true,
            compression: 0,
            dedup: false,
            zero_detect: false,
            encrypted: false,
            key: None,
            exists: false,
            nsid: 0,
            enabled: false,
            adopted_disk: false,
        };
        // Adopt the volume if the accelerator already has it.
        if let Ok(mgmt) = management::current() {
            let found = find_on_device(bytes).map_err(|e| {
                pr_err!("volumes: cannot create '{name}': cannot read the accelerator's volume list ({e:?})\n");
                e
            })?;
            if let Some(entry) = found {
                let services = entry.services.get();
                config.exists = true;
                config.nsid = entry.nsid.get();
                config.size = entry.size_bytes.get();
                config.layout = entry.layout;
                config.copies = entry.data_shards.max(2);
                config.ec_k = entry.data_shards;
                config.ec_m = entry.parity_shards;
                config.thin = services & service::THIN != 0;
                config.dedup = services & service::DEDUP != 0;
                config.zero_detect = services & service::ZERO_DETECT != 0;
                config.encrypted = services & service::ENCRYPTION != 0;
                config.compression = if services & service::COMPRESSION != 0 {
                    service_compression(&mgmt, config.nsid).unwrap_or(1)
                } else {
                    0
                };
                config.adopted_disk = config.nsid != 0 && mgmt.disk_of(config.nsid).is_some();
                pr_info!(
                    "volumes/{}: adopted the accelerator's volume (namespace {})\n",
                    bstr(bytes),
                    config.nsid
                );
            }
        }
        let mut owned = KVec::new();
        owned.extend_from_slice(bytes, GFP_KERNEL)?;
        let state = Arc::pin_init(
            try_pin_init!(VolumeState {
                name: owned,
                address: GroupAddress::new(),
                config <- new_mutex!(config),
            }),
            GFP_KERNEL,
        )?;
        // The snapshots directory exists before its parent is linked and
        // becomes its default group once the parent is initialized.
        let snapshots = DefaultGroup::new(SnapshotsDir::new(state.clone())?)?;
        let snapshots_raw = snapshots.raw();
        let item_type = configfs_attrs! {
            container: configfs::Group<Volume>,
            data: Volume,
            attributes: [
                ssds: 0,
                size: 1,
                layout: 2,
                copies: 3,
                ec_k: 4,
                ec_m: 5,
                chunk_size: 6,
                thin: 7,
                compression: 8,
                dedup: 9,
                zero_detect: 10,
                encryption: 11,
                key: 12,
                enable: 13,
                destroy: 14,
                device: 15,
                state: 16,
                stats: 17,
                nsid: 18,
                scrub: 19,
                replace: 20,
                snapshot_list: 21,
            ],
        };
        let recorder = state.clone();
        let init = configfs::Group::new(
            name.try_into()?,
            item_type,
            try_pin_init!(Volume {
                state,
                _snapshots: snapshots,
            }),
        )
        .pin_chain(move |group| {
            recorder.address.record(&*group);
            Ok(())
        });
        // SAFETY: The snapshots group is owned by the `Volume` data of the
        // group `init` makes, and linked nowhere else.
        Ok(unsafe { configfs_ext::with_default_groups(init, [snapshots_raw]) })
    }
}

/// The compression of a volume as the device reports it (1 lz4, 2 zstd).
fn service_compression(mgmt: &management::Management, nsid: u32) -> Option<u8> {
    let mut settings = vendor::ServiceSettings::zeroed();
    let mut sqe = SubmissionEntry::new(vendor::opcode::SERVICE_GET, 0);
    sqe.nsid.set(nsid);
    mgmt.vendor_command(sqe, Payload::FromDevice(settings.as_bytes_mut()))
        .ok()?;
    if settings.compression > vendor::compression::ZSTD {
        let _ = mgmt.refuse_payload(format_args!(
            "namespace {nsid}: Service Get: undefined compression {}",
            settings.compression
        ));
        return None;
    }
    Some(if settings.compression == vendor::compression::ZSTD {
        2
    } else {
        1
    })
}

const DIR: &str = "volumes";

impl VolumeState {
    fn refuse(&self, attr: &str, why: &str, err: Error) -> Error {
        refuse(DIR, &self.name, attr, why, err)
    }

    /// Checks that a setting may change now; returns whether the volume
    /// already exists on the accelerator (then the change is a command).
    fn may_change(&self, config: &VolumeConfig, attr: &str, changeable: bool) -> Result<bool> {
        if config.enabled || config.adopted_disk {
            return Err(self.refuse(attr, "disable the volume first", EBUSY));
        }
        if config.exists && !changeable {
            return Err(self.refuse(
                attr,
                "the volume exists on the accelerator; this setting is fixed at creation",
                EBUSY,
            ));
        }
        if config.exists && config.nsid == 0 {
            return Err(self.refuse(
                attr,
                "the volume is locked: unlock it with its key first",
                ENOKEY,
            ));
        }
        Ok(config.exists)
    }

    fn parse<T>(&self, attr: &str, parsed: Result<T, parse::Refusal>) -> Result<T> {
        parsed.map_err(|why| self.refuse(attr, why, EINVAL))
    }

    /// Sends Service Set with the services in `config`.
    fn set_services(&self, config: &VolumeConfig, attr: &str) -> Result {
        let mgmt = management::current()?;
        let mut settings = vendor::ServiceSettings::zeroed();
        settings.services.set(config.services());
        settings.compression = if config.compression == 2 {
            vendor::compression::ZSTD
        } else {
            vendor::compression::LZ4
        };
        let mut sqe = SubmissionEntry::new(vendor::opcode::SERVICE_SET, 0);
        sqe.nsid.set(config.nsid);
        mgmt.vendor_command(sqe, Payload::ToDevice(settings.as_bytes()))
            .map(|_| ())
            .map_err(|e| self.refuse(attr, "the accelerator refused the change", e))
    }

    /// Checks the settings before Volume Create; the device checks again.
    fn validate(&self, c: &VolumeConfig) -> Result {
        let n = c.ssds.len();
        let refuse = |why| Err(self.refuse("enable", why, EINVAL));
        if n == 0 {
            return refuse("no SSDs: write SSD handle names to 'ssds'");
        }
        if c.size == 0 {
            return refuse("no size: write the size to 'size'");
        }
        if c.size % 4096 != 0 {
            return refuse("size must be a multiple of 4096 bytes");
        }
        match c.layout {
            layout::RAID0 if n < 2 => return refuse("stripe needs at least 2 SSDs"),
            layout::RAID10 if n < usize::from(c.copies) => {
                return refuse("raid10 needs at least as many SSDs as copies")
            }
            layout::RAID6 if n < 4 => return refuse("raid6 needs at least 4 SSDs"),
            layout::ERASURE if n != usize::from(c.ec_k) + usize::from(c.ec_m) => {
                return refuse("ec needs exactly ec_k + ec_m SSDs")
            }
            layout::LOG_RAID if n != usize::from(c.ec_k) + usize::from(c.ec_m) => {
                return refuse("lograid needs exactly ec_k + ec_m SSDs")
            }
            _ => {}
        }
        if c.encrypted && c.key.is_none() {
            return Err(self.refuse(
                "enable",
                "encryption needs a key: write it to 'key'",
                ENOKEY,
            ));
        }
        for &index in c.ssds.iter() {
            if index >= super::ssd::MAX_SSD_INDEX {
                return refuse("an SSD's index is beyond the 64 a volume's SSD mask holds");
            }
            let attached = Registry::ssd_name(index)
                .and_then(|name| Registry::ssd_by_name(&name))
                .is_some_and(|(_, attached)| attached);
            if !attached {
                return refuse("an SSD of the volume is not attached to the accelerator");
            }
        }
        Ok(())
    }

    fn create(&self, c: &mut VolumeConfig) -> Result {
        self.validate(c)?;
        let mgmt = management::current()?;
        let mut payload = KBox::new(VolumeCreate::zeroed(), GFP_KERNEL)?;
        payload.size_bytes.set(c.size);
        payload.lba_shift = 12;
        payload.layout = c.layout;
        let (data, parity) = match c.layout {
            layout::RAID10 => (c.copies, 0),
            layout::RAID6 => (c.ssds.len() as u8 - 2, 2),
            layout::ERASURE | layout::LOG_RAID => (c.ec_k, c.ec_m),
            _ => (c.ssds.len() as u8, 0),
        };
        payload.data_shards = data;
        payload.parity_shards = parity;
        payload.services.set(c.services());
        // `validate` refused indexes the mask cannot hold; checked anyway,
        // since a shift past 63 would wrap (or panic with overflow checks).
        let mask = c.ssds.iter().try_fold(0u64, |mask, &index| {
            1u64.checked_shl(u32::from(index)).map(|bit| mask | bit)
        });
        let Some(mask) = mask else {
            return Err(self.refuse(
                "enable",
                "an SSD's index is beyond the 64 a volume's SSD mask holds",
                EINVAL,
            ));
        };
        payload.ssd_mask.set(mask);
        payload.stripe_bytes.set(c.chunk);
        payload.compression = if c.compression == 2 {
            vendor::compression::ZSTD
        } else {
            vendor::compression::LZ4
        };
        c_string_field(&mut payload.name, &self.name);
        if let Some(key) = &c.key {
            payload.key.copy_from_slice(&key[..]);
        }
        let result = mgmt.vendor_command(
            SubmissionEntry::new(vendor::opcode::VOLUME_CREATE, 0),
            Payload::ToDevice(payload.as_bytes()),
        );
        wipe(&mut payload.key);
        let nsid = result.map_err(|e| {
            let why = match e {
                e if e == EBUSY => "an SSD is already used by another volume",
                e if e == ENOSPC => "not enough space on the SSDs",
                e if e == EEXIST => "a volume or snapshot of that name exists",
                e if e == EOPNOTSUPP => "the accelerator does not implement these settings",
                _ => "the accelerator refused to create the volume",
            };
            self.refuse("enable", why, e)
        })?;
        c.exists = true;
        c.nsid = nsid;
        c.wipe_key();
        pr_info!(
            "volumes/{}: created on the accelerator as namespace {nsid}\n",
            bstr(&self.name)
        );
        Ok(())
    }

    fn unlock(&self, c: &mut VolumeConfig) -> Result {
        let Some(key) = &c.key else {
            return Err(self.refuse(
                "enable",
                "the volume is locked: write its key to 'key'",
                ENOKEY,
            ));
        };
        let mgmt = management::current()?;
        let mut payload = KBox::new(VolumeCreate::zeroed(), GFP_KERNEL)?;
        payload.flags = vendor::VOLUME_CREATE_OPEN_EXISTING;
        c_string_field(&mut payload.name, &self.name);
        payload.key.copy_from_slice(&key[..]);
        let result = mgmt.vendor_command(
            SubmissionEntry::new(vendor::opcode::VOLUME_CREATE, 0),
            Payload::ToDevice(payload.as_bytes()),
        );
        wipe(&mut payload.key);
        c.wipe_key();
        let nsid = result.map_err(|e| {
            let why = if e == EKEYREJECTED {
                "wrong key: it does not match the volume's key check value"
            } else {
                "the accelerator refused to open the volume"
            };
            self.refuse("enable", why, e)
        })?;
        c.nsid = nsid;
        Ok(())
    }

    fn enable(&self, c: &mut VolumeConfig) -> Result {
        if c.enabled {
            return Ok(());
        }
        if !c.exists {
            self.create(c)?;
        } else if c.nsid == 0 {
            self.unlock(c)?;
        }
        let mgmt = management::current()?;
        let group = self.address.get().ok_or(EINVAL)?;
        // Pinned before the disk exists: if an rmdir is under way this
        // fails first, and no disk is left behind without a handle (one
        // made first could be held open by udev and not go away again).
        // SAFETY: We run in a store callback of this volume's group, which
        // is registered.
        unsafe { configfs_ext::depend_unlocked(group) }
            .map_err(|e| self.refuse("enable", "cannot pin the directory (being removed?)", e))?;
        let index = mgmt.expose(c.nsid).map_err(|e| {
            // SAFETY: Depended on just above, not undepended since.
            unsafe { configfs_ext::undepend(group) };
            self.refuse("enable", "cannot add the disk", e)
        })?;
        c.enabled = true;
        c.adopted_disk = false;
        pr_info!("volumes/{}: enabled as dpublk{index}\n", bstr(&self.name));
        Ok(())
    }

    fn disable(&self, c: &mut VolumeConfig) -> Result {
        if !c.enabled && !c.adopted_disk {
            return Ok(());
        }
        let mgmt = management::current()?;
        mgmt.hide(c.nsid)
            .map_err(|e| self.refuse("enable", "the disk is open (mounted or in use)", e))?;
        if c.enabled {
            if let Some(group) = self.address.get() {
                // SAFETY: `enabled` means `enable` depended on the group.
                unsafe { configfs_ext::undepend(group) };
            }
        }
        c.enabled = false;
        c.adopted_disk = false;
        pr_info!("volumes/{}: disabled\n", bstr(&self.name));
        Ok(())
    }

    fn destroy(&self, c: &mut VolumeConfig) -> Result {
        if c.enabled || c.adopted_disk {
            return Err(self.refuse("destroy", "disable the volume first", EBUSY));
        }
        if !c.exists {
            return Err(self.refuse(
                "destroy",
                "the volume does not exist on the accelerator",
                ENOENT,
            ));
        }
        if c.nsid == 0 {
            return Err(self.refuse(
                "destroy",
                "the volume is locked: unlock it with its key first",
                ENOKEY,
            ));
        }
        let mgmt = management::current()?;
        let mut sqe = SubmissionEntry::new(vendor::opcode::VOLUME_DELETE, 0);
        sqe.nsid.set(c.nsid);
        mgmt.vendor_command(sqe, Payload::None).map_err(|e| {
            // Volume Busy has two causes: snapshots (and the clones made
            // of them) depend on the volume, or the NVMe/TCP target
            // exports it. The snapshot list tells them apart.
            let why = if e != EBUSY {
                "the accelerator refused to delete the volume"
            } else {
                match mgmt.read_snapshot_list(c.nsid) {
                    Ok(list) if list.len() >= LIST_ENTRY_BYTES => {
                        "snapshots or clones depend on the volume"
                    }
                    Ok(_) => {
                        "the NVMe/TCP target exports the volume (disable its namespace in nvmf/subsystems/ first)"
                    }
                    Err(_) => "snapshots depend on the volume or the NVMe/TCP target exports it",
                }
            };
            self.refuse("destroy", why, e)
        })?;
        c.exists = false;
        c.nsid = 0;
        pr_info!(
            "volumes/{}: destroyed on the accelerator\n",
            bstr(&self.name)
        );
        Ok(())
    }

    /// The device's list entry, for state and statistics.
    fn entry(&self) -> Option<VolumeListEntry> {
        find_on_device(&self.name).ok().flatten()
    }
}

impl VolumeState {
    /// Stores a small number setting that is fixed once the volume exists.
    fn store_number(
        &self,
        page: &[u8],
        attr: &str,
        allowed: core::ops::RangeInclusive<u64>,
        why: &str,
        field: fn(&mut VolumeConfig) -> &mut u8,
    ) -> Result {
        let n = self.parse(attr, parse::number(page))?;
        if !allowed.contains(&n) {
            return report(DIR, &self.name, attr, why, EINVAL);
        }
        let mut c = self.config.lock();
        self.may_change(&c, attr, false)?;
        *field(&mut c) = n as u8;
        Ok(())
    }

    /// Stores an on/off data service that Service Set can change once the
    /// volume exists (the old value stays if the accelerator refuses).
    fn store_service_flag(
        &self,
        page: &[u8],
        attr: &str,
        field: fn(&mut VolumeConfig) -> &mut bool,
    ) -> Result {
        let on = self.parse(attr, parse::boolean(page))?;
        let mut c = self.config.lock();
        let exists = self.may_change(&c, attr, true)?;
        let old = core::mem::replace(field(&mut c), on);
        if exists {
            if let Err(e) = self.set_services(&c, attr) {
                *field(&mut c) = old;
                return Err(e);
            }
        }
        Ok(())
    }
}

/// Wipes key bytes with volatile writes.
fn wipe(bytes: &mut [u8]) {
    for byte in bytes.iter_mut() {
        // SAFETY: `byte` is a valid, exclusive reference.
        unsafe { core::ptr::write_volatile(byte, 0) };
    }
}

macro_rules! volume_attribute {
    ($id:literal, show: $show:expr $(, store: $store:expr)?) => {
        #[vtable]
        impl AttributeOperations<$id> for Volume {
            type Data = Volume;

            fn show(volume: &Volume, page: &mut [u8; PAGE_SIZE]) -> Result<usize> {
                let mut w = Formatter::new(page);
                let f: fn(&VolumeState, &mut Formatter<'_>) -> Result = $show;
                f(&volume.state, &mut w)?;
                Ok(w.bytes_written())
            }

            $(
            fn store(volume: &Volume, page: &[u8]) -> Result {
                let f: fn(&VolumeState, &[u8]) -> Result = $store;
                f(&volume.state, page)
            }
            )?
        }
    };
}

volume_attribute!(0,
    show: |v, w| {
        let c = v.config.lock();
        for (i, &index) in c.ssds.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            match Registry::ssd_name(index) {
                Some(name) => write!(w, "{sep}{}", bstr(&name))?,
                None => write!(w, "{sep}#{index}")?,
            }
        }
        writeln!(w)?;
        Ok(())
    },
    store: |v, page| {
        let text = v.parse("ssds", parse::value(page))?;
        let mut indexes = KVec::new();
        for name in text.split(|&b| b == b',') {
            let name = v.parse("ssds", parse::name(name))?;
            let Some((index, _)) = Registry::ssd_by_name(name) else {
                return report(DIR, &v.name, "ssds", "no such SSD handle in ssds/", ENOENT);
            };
            let Some(index) = index else {
                return report(DIR, &v.name, "ssds", "an SSD handle has no device yet", EINVAL);
            };
            if indexes.contains(&index) {
                return report(DIR, &v.name, "ssds", "an SSD is named twice", EINVAL);
            }
            if indexes.len() >= MAX_VOLUME_SSDS {
                return report(DIR, &v.name, "ssds", "too many SSDs", EINVAL);
            }
            indexes.push(index, GFP_KERNEL)?;
        }
        let mut c = v.config.lock();
        v.may_change(&c, "ssds", false)?;
        c.ssds = indexes;
        Ok(())
    }
);

volume_attribute!(1,
    show: |v, w| {
        writeln!(w, "{}", v.config.lock().size)?;
        Ok(())
    },
    store: |v, page| {
        let size = v.parse("size", parse::size(page))?;
        if size == 0 || size % 4096 != 0 {
            return report(DIR, &v.name, "size", "size must be a nonzero multiple of 4096", EINVAL);
        }
        let mut c = v.config.lock();
        if v.may_change(&c, "size", true)? {
            let mgmt = management::current()?;
            let mut sqe = vendor::volume_resize(c.nsid, size, 0);
            sqe.nsid.set(c.nsid);
            mgmt.vendor_command(sqe, Payload::None)
                .map_err(|e| v.refuse("size", "the accelerator refused the resize", e))?;
        }
        c.size = size;
        Ok(())
    }
);

volume_attribute!(2,
    show: |v, w| {
        let layout = v.config.lock().layout;
        writeln!(w, "{}", LAYOUTS.get(usize::from(layout)).copied().unwrap_or("unknown"))?;
        Ok(())
    },
    store: |v, page| {
        let layout = v.parse("layout", parse::choice(page, &LAYOUTS))? as u8;
        let mut c = v.config.lock();
        v.may_change(&c, "layout", false)?;
        c.layout = layout;
        Ok(())
    }
);

volume_attribute!(3,
    show: |v, w| {
        writeln!(w, "{}", v.config.lock().copies)?;
        Ok(())
    },
    store: |v, page| v.store_number(page, "copies", 2..=3, "raid10 keeps 2 or 3 copies", |c| &mut c.copies)
);

volume_attribute!(4,
    show: |v, w| {
        writeln!(w, "{}", v.config.lock().ec_k)?;
        Ok(())
    },
    store: |v, page| v.store_number(page, "ec_k", 1..=16, "ec_k must be 1 to 16", |c| &mut c.ec_k)
);

volume_attribute!(5,
    show: |v, w| {
        writeln!(w, "{}", v.config.lock().ec_m)?;
        Ok(())
    },
    store: |v, page| v.store_number(page, "ec_m", 1..=4, "ec_m must be 1 to 4", |c| &mut c.ec_m)
);

volume_attribute!(6,
    show: |v, w| {
        writeln!(w, "{}", v.config.lock().chunk)?;
        Ok(())
    },
    store: |v, page| {
        let n = v.parse("chunk_size", parse::size(page))?;
        if n != 0 && (!n.is_power_of_two() || !(4096..=1 << 20).contains(&n)) {
            return report(DIR, &v.name, "chunk_size", "chunk_size must be 0 or a power of two from 4K to 1M", EINVAL);
        }
        let mut c = v.config.lock();
        v.may_change(&c, "chunk_size", false)?;
        c.chunk = n as u32;
        Ok(())
    }
);

volume_attribute!(7,
    show: |v, w| {
        writeln!(w, "{}", u8::from(v.config.lock().thin))?;
        Ok(())
    },
    store: |v, page| {
        let on = v.parse("thin", parse::boolean(page))?;
        let mut c = v.config.lock();
        v.may_change(&c, "thin", false)?;
        c.thin = on;
        Ok(())
    }
);

volume_attribute!(8,
    show: |v, w| {
        let c = v.config.lock();
        writeln!(w, "{}", COMPRESSIONS[usize::from(c.compression.min(2))])?;
        Ok(())
    },
    store: |v, page| {
        let choice = v.parse("compression", parse::choice(page, &COMPRESSIONS))? as u8;
        let mut c = v.config.lock();
        let exists = v.may_change(&c, "compression", true)?;
        let old = c.compression;
        c.compression = choice;
        if exists {
            if let Err(e) = v.set_services(&c, "compression") {
                c.compression = old;
                return Err(e);
            }
        }
        Ok(())
    }
);

volume_attribute!(9,
    show: |v, w| {
        writeln!(w, "{}", u8::from(v.config.lock().dedup))?;
        Ok(())
    },
    store: |v, page| v.store_service_flag(page, "dedup", |c| &mut c.dedup)
);

volume_attribute!(10,
    show: |v, w| {
        writeln!(w, "{}", u8::from(v.config.lock().zero_detect))?;
        Ok(())
    },
    store: |v, page| v.store_service_flag(page, "zero_detect", |c| &mut c.zero_detect)
);

volume_attribute!(11,
    show: |v, w| {
        writeln!(w, "{}", ENCRYPTIONS[usize::from(v.config.lock().encrypted)])?;
        Ok(())
    },
    store: |v, page| {
        let choice = v.parse("encryption", parse::choice(page, &ENCRYPTIONS))?;
        let mut c = v.config.lock();
        v.may_change(&c, "encryption", false)?;
        c.encrypted = choice == 1;
        Ok(())
    }
);

volume_attribute!(12,
    show: |v, _w| {
        // The key is write-only: it never leaves the kernel again.
        Err(v.refuse("key", "the key is write-only", EACCES))
    },
    store: |v, page| {
        let mut key = KBox::new([0u8; vendor::VOLUME_KEY_BYTES], GFP_KERNEL)?;
        if let Err(why) = parse::xts_key(page, &mut key) {
            wipe(&mut key[..]);
            return report(DIR, &v.name, "key", why, EINVAL);
        }
        let mut c = v.config.lock();
        if !c.encrypted {
            wipe(&mut key[..]);
            return report(DIR, &v.name, "key", "the volume is not encrypted", EINVAL);
        }
        if c.enabled {
            wipe(&mut key[..]);
            return report(DIR, &v.name, "key", "disable the volume first", EBUSY);
        }
        c.wipe_key();
        c.key = Some(key);
        Ok(())
    }
);

volume_attribute!(13,
    show: |v, w| {
        let c = v.config.lock();
        writeln!(w, "{}", u8::from(c.enabled || c.adopted_disk))?;
        Ok(())
    },
    store: |v, page| {
        let on = v.parse("enable", parse::boolean(page))?;
        let mut c = v.config.lock();
        if on {
            v.enable(&mut c)
        } else {
            v.disable(&mut c)
        }
    }
);

volume_attribute!(14,
    show: |_v, w| {
        writeln!(w, "0")?;
        Ok(())
    },
    store: |v, page| {
        if !v.parse("destroy", parse::boolean(page))? {
            return report(DIR, &v.name, "destroy", "write 1 to destroy the volume", EINVAL);
        }
        let mut c = v.config.lock();
        v.destroy(&mut c)
    }
);

volume_attribute!(15, show: |v, w| {
    // The lock is held until the disk is found, so a namespace ID that a
    // concurrent destroy gives back (and another volume gets) is never
    // looked up.
    let c = v.config.lock();
    let nsid = c.nsid;
    match management::current().ok().and_then(|m| (nsid != 0).then(|| m.disk_of(nsid)).flatten()) {
        Some(index) => writeln!(w, "dpublk{index}")?,
        None => writeln!(w)?,
    }
    Ok(())
});

/// The `state` word of a volume the accelerator lists with `flags`.
pub(crate) fn state_word(flags: u32) -> &'static str {
    if flags & vendor::VOLUME_FLAG_LOCKED != 0 {
        "locked"
    } else if flags & vendor::VOLUME_FLAG_FAILED != 0 {
        "failed"
    } else if flags & vendor::VOLUME_FLAG_REBUILDING != 0 {
        "rebuilding"
    } else if flags & vendor::VOLUME_FLAG_DEGRADED != 0 {
        "degraded"
    } else {
        "optimal"
    }
}

volume_attribute!(16, show: |v, w| {
    let exists = v.config.lock().exists;
    let text = match (exists, v.entry()) {
        (_, Some(e)) => state_word(e.flags.get()),
        (false, None) => "absent",
        (true, None) => "missing",
    };
    writeln!(w, "{text}")?;
    Ok(())
});

volume_attribute!(17, show: |v, w| {
    // Held across Statistics, as for `device`.
    let c = v.config.lock();
    let nsid = c.nsid;
    if nsid == 0 {
        return Ok(());
    }
    // Checked: the array state is one of the four, the progress a percent.
    let stats = management::current()?.statistics(nsid)?;
    let s = &*stats;
    let state = ["optimal", "degraded", "rebuilding", "failed"]
        .get(usize::from(s.array_state))
        .copied()
        .unwrap_or("unknown");
    writeln!(w, "state {state}")?;
    writeln!(w, "rebuild_percent {}", s.rebuild_percent)?;
    for (name, value) in [
        ("logical_bytes", &s.logical_bytes),
        ("physical_bytes", &s.physical_bytes),
        ("shared_bytes", &s.shared_bytes),
        ("exclusive_bytes", &s.exclusive_bytes),
        ("pool_capacity_bytes", &s.pool_capacity_bytes),
        ("pool_free_bytes", &s.pool_free_bytes),
        ("read_commands", &s.read_commands),
        ("write_commands", &s.write_commands),
        ("flush_commands", &s.flush_commands),
        ("fua_writes", &s.fua_writes),
        ("write_zeroes_commands", &s.write_zeroes_commands),
        ("deallocate_commands", &s.deallocate_commands),
        ("read_bytes", &s.read_bytes),
        ("write_bytes", &s.write_bytes),
        ("error_completions", &s.error_completions),
        ("media_read_bytes", &s.media_read_bytes),
        ("media_write_bytes", &s.media_write_bytes),
        ("zero_detect_saved_bytes", &s.zero_detect_saved_bytes),
        ("dedup_saved_bytes", &s.dedup_saved_bytes),
        ("compression_saved_bytes", &s.compression_saved_bytes),
        ("degraded_reads", &s.degraded_reads),
        ("scrub_mismatches", &s.scrub_mismatches),
        ("scrub_repaired", &s.scrub_repaired),
    ] {
        writeln!(w, "{name} {}", value.get())?;
    }
    Ok(())
});

volume_attribute!(18, show: |v, w| {
    writeln!(w, "{}", v.config.lock().nsid)?;
    Ok(())
});

/// Writes a Maintenance log record (checked by `Management::maintenance_log`)
/// as `name value` lines: `state`, `action`, `progress` (percent), `rows`
/// (done and total), and for a scrub what it found so far.
fn write_maintenance(w: &mut Formatter<'_>, r: &vendor::MaintenanceRecord, scrub: bool) -> Result {
    use vendor::{maintenance, maintenance_state as st};
    let state = match r.state {
        st::RUNNING => "running",
        st::DONE => "done",
        st::FAILED => "failed",
        st::CANCELLED => "cancelled",
        _ => "none",
    };
    let action = match u32::from(r.action) {
        maintenance::SCRUB_CHECK => "check",
        maintenance::SCRUB_REPAIR => "repair",
        maintenance::REPLACE_MEMBER => "replace",
        _ => "none",
    };
    writeln!(w, "state {state}")?;
    writeln!(w, "action {action}")?;
    writeln!(w, "progress {}", r.percent)?;
    writeln!(w, "rows {} {}", r.rows_done.get(), r.rows_total.get())?;
    if r.state == st::FAILED {
        writeln!(w, "status {:#x}", r.status.get())?;
    }
    if scrub {
        writeln!(w, "mismatches {}", r.mismatches.get())?;
        writeln!(w, "repaired {}", r.repaired.get())?;
        writeln!(w, "unlocated {}", r.unlocated.get())?;
        writeln!(w, "read_errors {}", r.read_errors.get())?;
        writeln!(w, "unreadable_rows {}", r.unreadable_rows.get())?;
    } else if r.member != 0xff {
        writeln!(w, "member {}", r.member)?;
    }
    Ok(())
}

/// The Maintenance log of the volume's family (nothing while the volume is
/// absent or locked). The volume's lock is held across the command, as for
/// `device`.
fn maintenance_log(v: &VolumeState) -> Result<Option<vendor::MaintenanceLog>> {
    let c = v.config.lock();
    if c.nsid == 0 {
        return Ok(None);
    }
    Ok(Some(management::current()?.maintenance_log(c.nsid)?))
}

volume_attribute!(19,
    show: |v, w| {
        if let Some(log) = maintenance_log(v)? {
            write_maintenance(w, &log.scrub, true)?;
        }
        Ok(())
    },
    store: |v, page| {
        let choice = v.parse("scrub", parse::choice(page, &["check", "repair", "cancel"]))?;
        let (action, what) = match choice {
            0 => (vendor::maintenance::SCRUB_CHECK, "check"),
            1 => (vendor::maintenance::SCRUB_REPAIR, "repair"),
            _ => (vendor::maintenance::SCRUB_CANCEL, "cancel"),
        };
        let (exists, nsid) = {
            let c = v.config.lock();
            (c.exists, c.nsid)
        };
        if exists && nsid == 0 {
            return report(DIR, &v.name, "scrub", "the volume is locked: unlock it with its key first", ENOKEY);
        }
        if nsid == 0 {
            return report(DIR, &v.name, "scrub", "the volume is not open on the accelerator", ENOENT);
        }
        let mgmt = management::current()?;
        // Starts the scrub on the accelerator and returns at once; reading
        // the attribute shows its progress.
        let id = mgmt
            .vendor_command(vendor::maintenance_command(nsid, action, 0, 0), Payload::None)
            .map_err(|e| {
                let why = if e == EBUSY {
                    "a scrub or a rebuild of the volume's family is running"
                } else {
                    "the accelerator refused the scrub"
                };
                v.refuse("scrub", why, e)
            })?;
        if action == vendor::maintenance::SCRUB_CANCEL {
            pr_info!("volumes/{}: scrub cancel requested\n", bstr(&v.name));
        } else {
            pr_info!("volumes/{}: scrub #{id} ({what}) started\n", bstr(&v.name));
        }
        Ok(())
    }
);

volume_attribute!(20,
    show: |v, w| {
        if let Some(log) = maintenance_log(v)? {
            write_maintenance(w, &log.rebuild, false)?;
        }
        Ok(())
    },
    store: |v, page| {
        let text = v.parse("replace", parse::value(page))?;
        let mut names = text.split(|&b| b == b' ');
        let (Some(old), Some(new), None) = (names.next(), names.next(), names.next()) else {
            return report(DIR, &v.name, "replace", "expected OLD NEW (two SSD handle names)", EINVAL);
        };
        let index_of = |name: &[u8]| -> Result<u16> {
            let name = v.parse("replace", parse::name(name))?;
            match Registry::ssd_by_name(name) {
                Some((Some(index), _)) => Ok(index),
                Some((None, _)) => report(DIR, &v.name, "replace", "an SSD handle has no device yet", EINVAL),
                None => report(DIR, &v.name, "replace", "no such SSD handle in ssds/", ENOENT),
            }
        };
        let (old, new) = (index_of(old)?, index_of(new)?);
        if old == new {
            return report(DIR, &v.name, "replace", "an SSD cannot replace itself", EINVAL);
        }
        let mut c = v.config.lock();
        if c.exists && c.nsid == 0 {
            return report(DIR, &v.name, "replace", "the volume is locked: unlock it with its key first", ENOKEY);
        }
        if c.nsid == 0 {
            return report(DIR, &v.name, "replace", "the volume is not open on the accelerator", ENOENT);
        }
        // An adopted volume's members are known to the accelerator only; it
        // checks them itself.
        let pos = c.ssds.iter().position(|&i| i == old);
        if pos.is_none() && !c.ssds.is_empty() {
            return report(DIR, &v.name, "replace", "the old SSD is not a member of the volume", EINVAL);
        }
        let mgmt = management::current()?;
        let argument = u32::from(old) | u32::from(new) << 16;
        mgmt.vendor_command(
            vendor::maintenance_command(c.nsid, vendor::maintenance::REPLACE_MEMBER, argument, 0),
            Payload::None,
        )
        .map_err(|e| v.refuse("replace", "the accelerator refused the replacement", e))?;
        if let Some(pos) = pos {
            c.ssds[pos] = new;
        }
        pr_info!("volumes/{}: replacing SSD {old} with SSD {new}; rebuild started\n", bstr(&v.name));
        Ok(())
    }
);

/// One line of a list attribute at most this long; a page ends with a
/// `more N` line instead of a line that might not fit.
pub(crate) const LIST_LINE_MAX: usize = 96;

volume_attribute!(21, show: |v, w| {
    // The accelerator's snapshots of the volume, one `NAME ID` line each.
    // The lock is held across Snapshot List, as for `device`.
    let c = v.config.lock();
    let nsid = c.nsid;
    if nsid == 0 {
        return Ok(());
    }
    let mgmt = management::current()?;
    let entries = mgmt.read_snapshot_list(nsid)?;
    let mut listed = entries
        .chunks_exact(LIST_ENTRY_BYTES)
        .filter_map(vendor::SnapshotListEntry::read_from)
        .peekable();
    let mut left = entries.len() / LIST_ENTRY_BYTES;
    while let Some(e) = listed.next() {
        if PAGE_SIZE - w.bytes_written() < 2 * LIST_LINE_MAX && listed.peek().is_some() {
            writeln!(w, "more {left}")?;
            break;
        }
        writeln!(w, "{} {}", bstr(c_string_bytes(&e.name)), e.id.get())?;
        left -= 1;
    }
    Ok(())
});
