// SPDX-License-Identifier: GPL-2.0

//! `ssds/<name>/`: an SSD of the accelerator, local or remote.
//!
//! A local SSD is one of the accelerator's NVMe SSD functions. Attaching
//! unbinds it from the stock nvme driver (refused with `EBUSY` while one of
//! its block devices is open), keeps every driver off it with
//! `driver_override`, and tells the accelerator to take the media (SSD
//! Attach). Detaching reverses the three steps.
//!
//! A remote SSD is a namespace of an NVMe/TCP subsystem on another machine
//! (`device` is `tcp ADDRESS SERVICE SUBNQN [NSID]`), which the accelerator
//! reaches with its own initiator. Remote SSD Add connects to it and makes
//! it one more SSD, attached, under an index the accelerator picks; Remote
//! SSD Remove (detach, `rmdir`) disconnects it and frees the index. While
//! attached, a lost connection fails the member in its volumes, and the
//! accelerator reconnects and rebuilds it on its own.

use super::{bstr, parse, refuse, report, Registry};
use crate::{
    management::{self, Payload, LIST_ENTRY_BYTES, REMOTE_SSD_ADD_TIMEOUT},
    pci_function::{PciFunction, NO_DRIVER},
    shim::{
        pci,
        sqe::SubmissionEntry,
        vendor::{self, RemoteSsdAdd, SsdListEntry},
        wire::{c_string_bytes, c_string_field, Wire},
    },
};
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
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

/// The `ssds/` directory.
#[pin_data]
pub(crate) struct SsdsDir {}

impl SsdsDir {
    pub(crate) fn new() -> Result<impl PinInit<configfs::Group<SsdsDir>, Error>> {
        let item_type = configfs_attrs! {
            container: configfs::Group<SsdsDir>,
            data: SsdsDir,
            child: Ssd,
            attributes: [],
        };
        Ok(configfs::Group::new(
            c"ssds".try_into()?,
            item_type,
            try_pin_init!(SsdsDir {}),
        ))
    }
}

/// What an SSD handle's `device` names.
enum SsdDevice {
    /// One of the accelerator's local SSD functions.
    Local(PciFunction),
    /// A namespace of a remote NVMe/TCP subsystem: the Remote SSD Add that
    /// makes it an SSD (sent again by each attach).
    Remote(KBox<RemoteSsdAdd>),
}

/// What an SSD handle knows, under its lock. The lock is held across the
/// accelerator's commands about this SSD (attach, detach, fault).
pub(crate) struct SsdInner {
    /// The SSD, once `device` was written.
    device: Option<SsdDevice>,
    /// Attached to the accelerator (through this handle or before it).
    attached: bool,
}

/// No SSD: the accelerator's SSD indexes are below 64.
const NO_INDEX: u32 = u32::MAX;

/// One SSD handle, shared with the registry (volumes name SSDs by handle).
///
/// The registry reads `index`, `pending` and `attached` without the
/// handle's lock (it never waits for a handle whose lock is held across a
/// command). `index` and `attached` change only with `inner` held;
/// `pending` is set under the registry lock.
#[pin_data]
pub(crate) struct SsdState {
    pub(crate) name: KVec<u8>,
    /// The accelerator's index of the SSD this handle stands for
    /// (`NO_INDEX`: none yet).
    index: AtomicU32,
    /// The SSD a `device` write in progress claims (`NO_INDEX`: none), so
    /// no other handle can take it while the write asks the accelerator.
    pending: AtomicU32,
    /// Mirrors `inner.attached`.
    attached: AtomicBool,
    #[pin]
    inner: Mutex<SsdInner>,
}

impl SsdState {
    /// The accelerator's index of the SSD, once `device` was written.
    pub(crate) fn index(&self) -> Option<u16> {
        u16::try_from(self.index.load(Ordering::Acquire)).ok()
    }

    /// Whether the SSD is attached to the accelerator.
    pub(crate) fn is_attached(&self) -> bool {
        self.attached.load(Ordering::Acquire)
    }

    /// Whether this handle stands for SSD `index` or claims it. Called
    /// under the registry lock.
    pub(crate) fn claims(&self, index: u16) -> bool {
        // `pending` first: `publish` stores the index before it clears
        // `pending` (release), so a claim is never missed in between.
        self.pending.load(Ordering::Acquire) == u32::from(index)
            || self.index.load(Ordering::Acquire) == u32::from(index)
    }

    /// Starts a claim on `index`; false if another `device` write to this
    /// handle is in progress. Called under the registry lock.
    pub(crate) fn start_claim(&self, index: u16) -> bool {
        self.pending
            .compare_exchange(
                NO_INDEX,
                u32::from(index),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// Ends the claim of a `device` write (after `publish`, or when the
    /// write failed and the handle keeps its old SSD).
    pub(crate) fn end_claim(&self) {
        self.pending.store(NO_INDEX, Ordering::Release);
    }

    /// Makes the claimed SSD the handle's SSD. Called with `inner` held.
    fn publish(&self, inner: &mut SsdInner, device: SsdDevice, index: u16, attached: bool) {
        inner.device = Some(device);
        self.index.store(u32::from(index), Ordering::Release);
        self.set_attached(inner, attached);
    }

    /// Records that the handle's remote SSD left the accelerator: its
    /// index is free (the next Remote SSD Add may get another one). Called
    /// with `inner` held.
    fn forget_index(&self, inner: &mut SsdInner) {
        self.set_attached(inner, false);
        self.index.store(NO_INDEX, Ordering::Release);
    }

    /// Records whether the SSD is attached. Called with `inner` held.
    fn set_attached(&self, inner: &mut SsdInner, attached: bool) {
        inner.attached = attached;
        self.attached.store(attached, Ordering::Release);
    }
}

/// Ends a `device` write's claim however the write ends.
struct Claim<'a>(&'a SsdState);

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.0.end_claim();
    }
}

/// The data of `ssds/<name>/`.
#[pin_data(PinnedDrop)]
pub(crate) struct Ssd {
    state: Arc<SsdState>,
}

#[vtable]
impl configfs::GroupOperations for SsdsDir {
    type Child = Ssd;

    fn make_group(&self, name: &CStr) -> Result<impl PinInit<configfs::Group<Ssd>, Error>> {
        let bytes = parse::name(name.to_bytes()).map_err(|why| {
            pr_err!("ssds: cannot create '{name}': {why} (EINVAL)\n");
            EINVAL
        })?;
        let mut owned = KVec::new();
        owned.extend_from_slice(bytes, GFP_KERNEL)?;
        let state = Arc::pin_init(
            try_pin_init!(SsdState {
                name: owned,
                index: AtomicU32::new(NO_INDEX),
                pending: AtomicU32::new(NO_INDEX),
                attached: AtomicBool::new(false),
                inner <- new_mutex!(SsdInner {
                    device: None,
                    attached: false,
                }),
            }),
            GFP_KERNEL,
        )?;
        Registry::add_ssd(state.clone())?;
        let item_type = configfs_attrs! {
            container: configfs::Group<Ssd>,
            data: Ssd,
            attributes: [
                device: 0,
                attach: 1,
                state: 2,
                capacity: 3,
                serial: 4,
                index: 5,
                fault: 6,
            ],
        };
        Ok(configfs::Group::new(
            name.try_into()?,
            item_type,
            try_pin_init!(Ssd { state }),
        ))
    }
}

#[pinned_drop]
impl PinnedDrop for Ssd {
    fn drop(self: Pin<&mut Self>) {
        {
            let mut inner = self.state.inner.lock();
            if inner.attached {
                // Give the SSD back if the accelerator lets go of it; an SSD
                // that holds a volume stays with the accelerator (its media
                // is the volume's), and `driver_override` keeps nvme off it.
                if detach(&self.state, &mut inner).is_err() {
                    pr_info!(
                        "ssds/{}: handle removed; the SSD stays attached to the accelerator\n",
                        bstr(&self.state.name)
                    );
                }
            }
        }
        // Only now may another handle claim the SSD: it finds it as the
        // detach left it.
        Registry::forget_ssd(&self.state);
    }
}

/// The accelerator's list entry for SSD `index`.
fn list_entry(index: u16) -> Result<Option<SsdListEntry>> {
    let mgmt = management::current()?;
    let entries = mgmt.read_list(SubmissionEntry::new(vendor::opcode::SSD_LIST, 0))?;
    Ok(entries
        .chunks_exact(LIST_ENTRY_BYTES)
        .filter_map(SsdListEntry::read_from)
        .find(|e| e.index.get() == index))
}

/// Resolves what was written to `device`: a PCI address or a serial number.
fn resolve(text: &[u8]) -> Result<(PciFunction, u16), &'static str> {
    let function = if let Some((domain, bus, slot, func)) = parse::pci_address(text) {
        PciFunction::find(domain, bus, slot, func).ok_or("no PCI function at that address")?
    } else {
        // A serial number as the accelerator lists it.
        let mgmt = management::current().map_err(|_| "no accelerator bound")?;
        let entries = mgmt
            .read_list(SubmissionEntry::new(vendor::opcode::SSD_LIST, 0))
            .map_err(|_| "cannot read the accelerator's SSD list")?;
        let entry = entries
            .chunks_exact(LIST_ENTRY_BYTES)
            .filter_map(SsdListEntry::read_from)
            .find(|e| trim_serial(&e.serial) == text)
            .ok_or("no SSD of the accelerator has that serial number or PCI address")?;
        // The index comes from the device's list: an index whose
        // subsystem id would not fit is refused, not wrapped.
        let subsystem = pci::SSD_SUBSYSTEM_ID_BASE
            .checked_add(entry.index.get())
            .ok_or("the accelerator lists that SSD with an index out of range")?;
        PciFunction::find_by_ids(pci::VENDOR_ID, pci::SSD_DEVICE_ID, subsystem)
            .ok_or("the SSD's PCI function is not present")?
    };
    let (vendor_id, device_id, subsystem) = function.ids();
    if vendor_id != pci::VENDOR_ID
        || device_id != pci::SSD_DEVICE_ID
        || subsystem < pci::SSD_SUBSYSTEM_ID_BASE
    {
        return Err("not a local SSD function of the accelerator");
    }
    let index = subsystem - pci::SSD_SUBSYSTEM_ID_BASE;
    // A volume names its SSDs in a 64-bit mask (vendor VolumeCreate).
    if index >= MAX_SSD_INDEX {
        return Err("the SSD's index is beyond the 64 a volume's SSD mask holds");
    }
    Ok((function, index))
}

/// SSD indexes a volume can name: its SSD mask (`VolumeCreate::ssd_mask`)
/// has 64 bits.
pub(super) const MAX_SSD_INDEX: u16 = 64;

/// A serial number without its space padding.
fn trim_serial(serial: &[u8]) -> &[u8] {
    let end = serial
        .iter()
        .rposition(|&b| b != b' ' && b != 0)
        .map_or(0, |p| p + 1);
    &serial[..end]
}

fn attach(state: &SsdState, inner: &mut SsdInner) -> Result {
    let name = &state.name[..];
    if inner.attached {
        return report("ssds", name, "attach", "already attached", EBUSY);
    }
    if let Some(SsdDevice::Remote(add)) = &inner.device {
        // A remote SSD attaches by being added again (its index may
        // differ from the last one).
        let add = KBox::new(**add, GFP_KERNEL)?;
        return attach_remote(state, inner, add, "attach");
    }
    let (Some(SsdDevice::Local(function)), Some(index)) = (&inner.device, state.index()) else {
        return report(
            "ssds",
            name,
            "attach",
            "write the SSD to 'device' first",
            EINVAL,
        );
    };
    if function.has_open_block_devices() {
        return report(
            "ssds",
            name,
            "attach",
            "the SSD is in use on the host (mounted, held or open)",
            EBUSY,
        );
    }
    let mgmt = management::current()?;
    function.set_driver_override(Some(NO_DRIVER))?;
    function.release_driver();
    let result = mgmt.vendor_command(vendor::ssd_command(index, true, 0), Payload::None);
    if let Err(e) = result {
        // Hand it back to the host as it was.
        let _ = function.set_driver_override(None);
        let _ = function.attach_driver();
        return report("ssds", name, "attach", "the accelerator refused the SSD", e);
    }
    pr_info!(
        "ssds/{}: {} (SSD {index}) attached to the accelerator\n",
        bstr(name),
        function.name()
    );
    state.set_attached(inner, true);
    Ok(())
}

/// Why the accelerator refused Remote SSD Add, by the errno its status
/// maps to (controller.rs).
fn remote_refusal(e: Error) -> &'static str {
    if e == EHOSTUNREACH {
        "the accelerator cannot reach the remote namespace (nothing answers at that address and service, or the subsystem or namespace is not there)"
    } else if e == EINVAL {
        "the remote namespace's size or block size is not one the accelerator can use"
    } else if e == EEXIST {
        "that remote namespace is an SSD of the accelerator already"
    } else if e == ENOSPC {
        "every SSD index the accelerator keeps for remote SSDs is taken"
    } else if e == EOPNOTSUPP {
        "the accelerator has no NVMe/TCP initiator"
    } else if e == EBUSY {
        "the accelerator is adding another remote SSD; try again when that write returns"
    } else if e == ETIMEDOUT {
        "the accelerator did not answer Remote SSD Add in time"
    } else {
        "the accelerator refused the remote namespace"
    }
}

/// Sends Remote SSD Add for `add` and makes the SSD it returns the
/// handle's, attached (the accelerator attaches a remote SSD as it adds
/// it). `attr` is the attribute written, for the log. Called with `inner`
/// held; the registry lock is taken only for the claim, after the
/// command.
fn attach_remote(
    state: &SsdState,
    inner: &mut SsdInner,
    add: KBox<RemoteSsdAdd>,
    attr: &str,
) -> Result {
    let name = &state.name[..];
    let mgmt = management::current()?;
    let dw0 = mgmt
        .vendor_command_within(
            SubmissionEntry::new(vendor::opcode::REMOTE_SSD_ADD, 0),
            Payload::ToDevice(add.as_bytes()),
            REMOTE_SSD_ADD_TIMEOUT,
        )
        .map_err(|e| refuse("ssds", name, attr, remote_refusal(e), e))?;
    // The index comes from the device: one a volume's SSD mask cannot
    // hold is refused, and the SSD given back.
    let index = match u16::try_from(dw0) {
        Ok(index) if index < MAX_SSD_INDEX => index,
        _ => {
            give_back_remote(&mgmt, name, dw0);
            return Err(
                mgmt.refuse_payload(format_args!("Remote SSD Add returned SSD index {dw0}"))
            );
        }
    };
    // Remote SSD Add picked a free index, so no other handle stands for
    // it; a handle found claiming it means the accelerator and the tree
    // disagree, and the SSD goes back rather than be shared.
    match Registry::claim_ssd(state, index) {
        Ok(()) => {}
        Err(other) => {
            give_back_remote(&mgmt, name, dw0);
            return match other {
                Some(other) => {
                    pr_err!(
                        "ssds/{}: {attr}: SSD {index} is already ssds/{} (EEXIST)\n",
                        bstr(name),
                        bstr(&other)
                    );
                    Err(EEXIST)
                }
                None => report(
                    "ssds",
                    name,
                    attr,
                    "another write to 'device' is in progress",
                    EBUSY,
                ),
            };
        }
    }
    let _claim = Claim(state);
    pr_info!(
        "ssds/{}: tcp {} {} {} namespace {} is SSD {index}, attached to the accelerator\n",
        bstr(name),
        bstr(c_string_bytes(&add.traddr)),
        add.trsvcid.get(),
        bstr(c_string_bytes(&add.subnqn)),
        add.nsid.get()
    );
    state.publish(inner, SsdDevice::Remote(add), index, true);
    Ok(())
}

/// Sends Remote SSD Remove for an SSD the handle will not keep (best
/// effort: the add is being undone, and its error is the one reported).
fn give_back_remote(mgmt: &management::Management, name: &[u8], dw0: u32) {
    let Ok(index) = u16::try_from(dw0) else {
        return;
    };
    if let Err(e) = mgmt.vendor_command(vendor::remote_ssd_remove(index, 0), Payload::None) {
        pr_warn!(
            "ssds/{}: remote SSD {index} could not be given back: {e:?}\n",
            bstr(name)
        );
    }
}

fn detach(state: &SsdState, inner: &mut SsdInner) -> Result {
    let name = &state.name[..];
    if inner.device.is_none() {
        return Ok(());
    }
    // A detached remote SSD has no index any more: refused like a
    // detached local one.
    let (true, Some(index)) = (inner.attached, state.index()) else {
        return report("ssds", name, "attach", "not attached", EINVAL);
    };
    let mgmt = management::current()?;
    let remote = matches!(inner.device, Some(SsdDevice::Remote(_)));
    let sqe = if remote {
        vendor::remote_ssd_remove(index, 0)
    } else {
        vendor::ssd_command(index, false, 0)
    };
    if let Err(e) = mgmt.vendor_command(sqe, Payload::None) {
        let why = if e == EBUSY && remote {
            "a volume stores data on the SSD, or the accelerator is adding another remote SSD"
        } else if e == EBUSY {
            "a volume stores data on the SSD"
        } else {
            "the accelerator refused to detach the SSD"
        };
        return report("ssds", name, "attach", why, e);
    }
    if remote {
        state.forget_index(inner);
        pr_info!(
            "ssds/{}: remote SSD {index} removed from the accelerator and disconnected\n",
            bstr(name)
        );
        return Ok(());
    }
    state.set_attached(inner, false);
    if let Some(SsdDevice::Local(function)) = &inner.device {
        function.set_driver_override(None)?;
        if let Err(e) = function.attach_driver() {
            pr_warn!("ssds/{}: nvme did not bind again: {e:?}\n", bstr(name));
        }
        pr_info!(
            "ssds/{}: {} (SSD {index}) given back to the host\n",
            bstr(name),
            function.name()
        );
    }
    Ok(())
}

/// Builds Remote SSD Add for `remote`, under the handle's name (the
/// accelerator logs it).
fn remote_payload(name: &[u8], remote: &parse::RemoteNamespace<'_>) -> Result<KBox<RemoteSsdAdd>> {
    let mut add = KBox::new(RemoteSsdAdd::zeroed(), GFP_KERNEL)?;
    add.trtype = vendor::NVMF_TRTYPE_TCP;
    add.adrfam = if remote.ipv6 {
        vendor::NVMF_ADRFAM_IPV6
    } else {
        vendor::NVMF_ADRFAM_IPV4
    };
    add.trsvcid.set(remote.service);
    add.nsid.set(remote.nsid);
    // Size 0: the remote must answer now, and its size is the SSD's.
    c_string_field(&mut add.name, name);
    c_string_field(&mut add.traddr, remote.address);
    c_string_field(&mut add.subnqn, remote.subnqn);
    Ok(add)
}

/// `device` = `tcp ...`: Remote SSD Add, and the SSD it returns becomes
/// the handle's, attached.
fn store_remote(s: &SsdState, text: &[u8]) -> Result {
    let remote = parse::remote_namespace(text)
        .map_err(|why| refuse("ssds", &s.name, "device", why, EINVAL))?;
    let add = remote_payload(&s.name, &remote)?;
    let mut inner = s.inner.lock();
    if inner.attached {
        return report("ssds", &s.name, "device", "detach the SSD first", EBUSY);
    }
    attach_remote(s, &mut inner, add, "device")
}

macro_rules! ssd_attribute {
    ($id:literal, show: $show:expr $(, store: $store:expr)?) => {
        #[vtable]
        impl AttributeOperations<$id> for Ssd {
            type Data = Ssd;

            fn show(ssd: &Ssd, page: &mut [u8; PAGE_SIZE]) -> Result<usize> {
                let mut w = Formatter::new(page);
                let f: fn(&SsdState, &mut Formatter<'_>) -> Result = $show;
                f(&ssd.state, &mut w)?;
                Ok(w.bytes_written())
            }

            $(
            fn store(ssd: &Ssd, page: &[u8]) -> Result {
                let f: fn(&SsdState, &[u8]) -> Result = $store;
                f(&ssd.state, page)
            }
            )?
        }
    };
}

ssd_attribute!(0,
    show: |s, w| {
        match &s.inner.lock().device {
            Some(SsdDevice::Local(f)) => writeln!(w, "{}", f.name().to_str().unwrap_or("?"))?,
            Some(SsdDevice::Remote(add)) => writeln!(
                w,
                "tcp {} {} {} {}",
                bstr(c_string_bytes(&add.traddr)),
                add.trsvcid.get(),
                bstr(c_string_bytes(&add.subnqn)),
                add.nsid.get()
            )?,
            None => writeln!(w)?,
        }
        Ok(())
    },
    store: |s, page| {
        let text = parse::value_within(page, parse::MAX_DEVICE)
            .map_err(|why| refuse("ssds", &s.name, "device", why, EINVAL))?;
        let busy = || report("ssds", &s.name, "device", "detach the SSD first", EBUSY);
        if s.is_attached() {
            return busy();
        }
        if parse::is_remote(text) {
            return store_remote(s, text);
        }
        // A local SSD's PCI address or serial number is short; only a
        // remote namespace needs `MAX_DEVICE`.
        if text.len() > parse::MAX_VALUE {
            return report("ssds", &s.name, "device", "value too long", EINVAL);
        }
        // Finding the SSD may ask the accelerator (a serial number): no
        // lock is held meanwhile.
        let (function, index) = match resolve(text) {
            Ok(found) => found,
            Err(why) => return report("ssds", &s.name, "device", why, ENODEV),
        };
        // The claim keeps other handles off the SSD until this write ends,
        // without holding the registry lock across the commands below.
        match Registry::claim_ssd(s, index) {
            Ok(()) => {}
            Err(Some(other)) => {
                pr_err!(
                    "ssds/{}: device: SSD {index} is already ssds/{} (EEXIST)\n",
                    bstr(&s.name),
                    bstr(&other)
                );
                return Err(EEXIST);
            }
            Err(None) => {
                return report("ssds", &s.name, "device", "another write to 'device' is in progress", EBUSY)
            }
        }
        let _claim = Claim(s);
        let mut inner = s.inner.lock();
        if inner.attached {
            return busy();
        }
        // An SSD the accelerator already owns (attached before, or found
        // holding volumes when the accelerator started) is adopted as
        // attached; make sure no driver takes it.
        let attached = list_entry(index)
            .map_err(|e| refuse("ssds", &s.name, "device", "cannot read the accelerator's SSD list", e))?
            .is_some_and(|e| e.state == vendor::SSD_STATE_ATTACHED);
        if attached {
            function
                .set_driver_override(Some(NO_DRIVER))
                .map_err(|e| refuse("ssds", &s.name, "device", "cannot keep the host's drivers off the SSD", e))?;
        }
        s.publish(&mut inner, SsdDevice::Local(function), index, attached);
        Ok(())
    }
);

ssd_attribute!(1,
    show: |s, w| {
        writeln!(w, "{}", u8::from(s.inner.lock().attached))?;
        Ok(())
    },
    store: |s, page| {
        let want = parse::boolean(page)
            .map_err(|why| refuse("ssds", &s.name, "attach", why, EINVAL))?;
        let mut inner = s.inner.lock();
        if want {
            attach(s, &mut inner)
        } else {
            detach(s, &mut inner)
        }
    }
);

ssd_attribute!(2, show: |s, w| {
    let inner = s.inner.lock();
    let text = match (&inner.device, inner.attached) {
        (None, _) => "unconfigured",
        (Some(_), true) => "attached",
        (Some(SsdDevice::Remote(_)), false) => "detached",
        (Some(SsdDevice::Local(f)), false) => match f.bound_driver() {
            Some(_) => "host",
            None => "unbound",
        },
    };
    writeln!(w, "{text}")?;
    Ok(())
});

ssd_attribute!(3, show: |s, w| {
    let index = s.index();
    match index {
        Some(i) => writeln!(w, "{}", list_entry(i)?.map_or(0, |e| e.capacity_bytes.get()))?,
        None => writeln!(w, "0")?,
    }
    Ok(())
});

ssd_attribute!(4, show: |s, w| {
    let index = s.index();
    if let Some(entry) = index.map(list_entry).transpose()?.flatten() {
        writeln!(w, "{}", bstr(trim_serial(c_string_bytes(&entry.serial))))?;
    } else {
        writeln!(w)?;
    }
    Ok(())
});

ssd_attribute!(5, show: |s, w| {
    match s.index() {
        Some(i) => writeln!(w, "{i}")?,
        None => writeln!(w, "-1")?,
    }
    Ok(())
});

/// Fault kinds of `fault`, and whether they take a block range.
const FAULTS: [(&str, u8, bool); 7] = [
    ("clear", vendor::fault::CLEAR, false),
    ("fail_all", vendor::fault::FAIL_ALL, false),
    ("fail_reads", vendor::fault::FAIL_READS, true),
    ("fail_writes", vendor::fault::FAIL_WRITES, true),
    ("disappear", vendor::fault::DISAPPEAR, false),
    ("corrupt", vendor::fault::CORRUPT, true),
    ("rot", vendor::fault::ROT, true),
];

/// Parses `KIND [START BLOCKS]`.
fn parse_fault(text: &[u8]) -> Result<vendor::FaultInjection, parse::Refusal> {
    let mut words = text.split(|&b| b == b' ');
    let kind = words.next().ok_or("empty value")?;
    let &(_, code, ranged) = FAULTS
        .iter()
        .find(|(name, _, _)| name.as_bytes() == kind)
        .ok_or("unknown fault: clear, fail_all, fail_reads, fail_writes, disappear, corrupt or rot")?;
    let mut fault = vendor::FaultInjection::zeroed();
    fault.kind = code;
    if ranged {
        let start = words
            .next()
            .ok_or("expected START BLOCKS after the fault kind")?;
        let blocks = words
            .next()
            .ok_or("expected START BLOCKS after the fault kind")?;
        fault.slba.set(parse::number(start)?);
        fault.blocks.set(parse::number(blocks)?);
    }
    if words.next().is_some() {
        return Err("trailing words after the fault");
    }
    Ok(fault)
}

ssd_attribute!(6,
    show: |_s, w| {
        writeln!(w, "clear fail_all fail_reads fail_writes disappear corrupt rot")?;
        Ok(())
    },
    store: |s, page| {
        let text = parse::value(page).map_err(|why| refuse("ssds", &s.name, "fault", why, EINVAL))?;
        let mut fault = parse_fault(text).map_err(|why| refuse("ssds", &s.name, "fault", why, EINVAL))?;
        let inner = s.inner.lock();
        let (Some(index), true) = (s.index(), inner.attached) else {
            return report("ssds", &s.name, "fault", "faults apply to attached SSDs", EINVAL);
        };
        fault.ssd_index.set(index);
        let mgmt = management::current()?;
        mgmt.vendor_command(
            SubmissionEntry::new(vendor::opcode::FAULT_INJECT, 0),
            Payload::ToDevice(fault.as_bytes()),
        )
        .map_err(|e| refuse("ssds", &s.name, "fault", "the accelerator refused the fault", e))?;
        pr_info!("ssds/{}: fault '{}' injected\n", bstr(&s.name), bstr(text));
        Ok(())
    }
);
