// SPDX-License-Identifier: GPL-2.0

//! `nvmf/`: the accelerator's NVMe/TCP target, configured in the shape of
//! nvmet's configfs (Documentation/configfs.rst, "NVMe/TCP target"):
//!
//! ```text
//! nvmf/ports/<id>/                        a listening address
//! nvmf/subsystems/<nqn>/                  who may connect, on which ports
//! nvmf/subsystems/<nqn>/namespaces/<n>/   a volume exported as NSID n
//! ```
//!
//! The kernel's Rust configfs has no symbolic links, so where nvmet links
//! a subsystem into `ports/<id>/subsystems/` and a host into
//! `allowed_hosts/`, the subsystem has attributes: `ports` (port IDs) and
//! `allowed_hosts` (host NQNs). Each directory has `enable`: `1` sends the
//! object to the accelerator (NVMe/TCP vendor commands) and pins the
//! directory (`rmdir` gets `EBUSY`), `0` takes it back. A port's address
//! and a namespace's volume change only while disabled (`EBUSY`); a
//! subsystem's ports and hosts change while it is enabled, as in nvmet.
//!
//! Lock order: a namespace's configuration, then its subsystem's. A port's
//! configuration is never held with another lock.

use super::{bstr, parse, volume};
use crate::{
    configfs_ext::{self, DefaultGroup, GroupAddress},
    management::{self, Payload},
    shim::{
        sqe::SubmissionEntry,
        vendor::{self, NvmfName, NvmfNamespace, NvmfPort, NvmfSubsystem},
        wire::{c_string_field, Wire},
    },
};
use core::sync::atomic::{AtomicU64, Ordering};
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

/// The discovery subsystem's NQN, which no subsystem may take.
const DISCOVERY_NQN: &[u8] = b"nqn.2014-08.org.nvmexpress.discovery";
/// Longest NQN (NVMe Base Specification: 223 bytes).
const MAX_NQN: usize = 223;
/// Highest NSID a subsystem may export (the accelerator's limit).
const MAX_NSID: u64 = 1024;
/// The NVMe/TCP service port a new port handle starts with (IANA).
const DEFAULT_TRSVCID: u16 = 4420;

/// Port IDs with a handle in `ports/`, one bit each (IDs 0-65535), so a
/// subsystem's `ports` can name only existing handles. Set by `mkdir`,
/// cleared when the handle is released.
static PORT_HANDLES: [AtomicU64; 1024] = [const { AtomicU64::new(0) }; 1024];

fn port_handle_exists(id: u16) -> bool {
    PORT_HANDLES[usize::from(id / 64)].load(Ordering::Acquire) & 1 << (id % 64) != 0
}

/// A zeroed `T` on the heap (the 4 KiB payloads do not belong on the
/// kernel stack).
fn zeroed_box<T: Wire>() -> Result<KBox<T>> {
    let mut b = KBox::<T>::new_uninit(GFP_KERNEL)?;
    // SAFETY: `write_bytes` initializes all `size_of::<T>()` bytes of the
    // allocation, and all-zero bytes are a valid `T` (`Wire` contract), so
    // the value is initialized when `assume_init` is called.
    unsafe {
        b.as_mut_ptr().write_bytes(0, 1);
        Ok(b.assume_init())
    }
}

/// Sends NVMe/TCP vendor command `op` with `payload` (or none).
fn send(op: u8, cdw10: u32, payload: Option<&[u8]>) -> Result {
    let mgmt = management::current()?;
    let mut sqe = SubmissionEntry::new(op, 0);
    sqe.cdw10.set(cdw10);
    let payload = payload.map_or(Payload::None, Payload::ToDevice);
    mgmt.vendor_command(sqe, payload).map(|_| ())
}

// ---------------------------------------------------------------------
// Strict parsers (also exercised by the KUnit tests at the end).

/// A port directory name: a decimal port ID, 1 to 65535.
fn port_id(text: &[u8]) -> Result<u16, parse::Refusal> {
    let n = parse::number(text)?;
    u16::try_from(n)
        .ok()
        .filter(|&n| n != 0)
        .ok_or("a port ID is 1-65535")
}

/// A namespace directory name: an NSID, 1 to 1024.
fn nsid(text: &[u8]) -> Result<u32, parse::Refusal> {
    let n = parse::number(text)?;
    if !(1..=MAX_NSID).contains(&n) {
        return Err("an NSID is 1-1024");
    }
    Ok(n as u32)
}

/// An NQN as the accelerator's file and the specification take it:
/// `nqn.` then printable ASCII without spaces, 5 to 223 bytes.
fn nqn(text: &[u8]) -> Result<&[u8], parse::Refusal> {
    if text.len() > MAX_NQN {
        return Err("an NQN has at most 223 bytes");
    }
    if text.len() <= 4 || !text.starts_with(b"nqn.") {
        return Err("an NQN starts with 'nqn.' and has more after it");
    }
    if !text.iter().all(|b| b.is_ascii_graphic()) {
        return Err("an NQN is printable ASCII without spaces");
    }
    Ok(text)
}

/// A subsystem NQN: an NQN that is not the discovery subsystem's.
pub(super) fn subsystem_nqn(text: &[u8]) -> Result<&[u8], parse::Refusal> {
    let n = nqn(text)?;
    if n == DISCOVERY_NQN {
        return Err("the discovery NQN is not a subsystem of its own");
    }
    Ok(n)
}

/// An IPv4 literal: four decimal bytes, no leading zeros.
pub(super) fn ipv4(text: &[u8]) -> bool {
    let mut count = 0;
    for part in text.split(|&b| b == b'.') {
        count += 1;
        let ok = !part.is_empty()
            && part.len() <= 3
            && part.iter().all(u8::is_ascii_digit)
            && !(part.len() > 1 && part[0] == b'0')
            && part.iter().fold(0u32, |n, &b| n * 10 + u32::from(b - b'0')) <= 255;
        if !ok {
            return false;
        }
    }
    count == 4
}

/// An IPv6 literal: up to eight groups of 1-4 hex digits, at most one
/// `::`, optionally ending in an IPv4 literal (two groups' worth). No
/// zone (`%eth0`) and no brackets.
pub(super) fn ipv6(text: &[u8]) -> bool {
    if text.len() < 2 || text.len() > 45 {
        return false;
    }
    let (head, tail, compressed) = match text.windows(2).position(|w| w == b"::") {
        Some(i) => (&text[..i], &text[i + 2..], true),
        None => (text, &b""[..], false),
    };
    if compressed && tail.windows(2).any(|w| w == b"::") {
        return false;
    }
    fn groups(part: &[u8], last: bool) -> Option<usize> {
        if part.is_empty() {
            return Some(0);
        }
        let pieces: KVec<&[u8]> = part.split(|&b| b == b':').collect_vec()?;
        let mut n = 0;
        for (i, p) in pieces.iter().enumerate() {
            if last && i + 1 == pieces.len() && p.contains(&b'.') {
                if !ipv4(p) {
                    return None;
                }
                n += 2;
            } else if p.is_empty() || p.len() > 4 || !p.iter().all(u8::is_ascii_hexdigit) {
                return None;
            } else {
                n += 1;
            }
        }
        Some(n)
    }
    let Some(h) = groups(head, !compressed) else {
        return false;
    };
    let Some(t) = groups(tail, true) else {
        return false;
    };
    if compressed {
        h + t <= 7
    } else {
        h == 8
    }
}

/// `collect` into a `KVec` (allocation may fail).
trait CollectVec<T> {
    fn collect_vec(self) -> Option<KVec<T>>;
}

impl<T, I: Iterator<Item = T>> CollectVec<T> for I {
    fn collect_vec(self) -> Option<KVec<T>> {
        let mut v = KVec::new();
        for item in self {
            v.push(item, GFP_KERNEL).ok()?;
        }
        Some(v)
    }
}

/// A subsystem's `ports`: comma-separated port IDs, distinct, at most 16;
/// `none` for no port.
fn port_list(text: &[u8]) -> Result<KVec<u16>, parse::Refusal> {
    let mut ports = KVec::new();
    if text == b"none" {
        return Ok(ports);
    }
    for word in text.split(|&b| b == b',') {
        let id = port_id(word)?;
        if ports.contains(&id) {
            return Err("a port listed twice");
        }
        if ports.len() >= vendor::NVMF_MAX_SUBSYSTEM_PORTS {
            return Err("at most 16 ports");
        }
        ports.push(id, GFP_KERNEL).map_err(|_| "out of memory")?;
    }
    Ok(ports)
}

/// A write to `allowed_hosts`: `add NQN` or `remove NQN`.
fn host_change(text: &[u8]) -> Result<(bool, &[u8]), parse::Refusal> {
    let (add, rest) = if let Some(rest) = text.strip_prefix(b"add ") {
        (true, rest)
    } else if let Some(rest) = text.strip_prefix(b"remove ") {
        (false, rest)
    } else {
        return Err("write 'add NQN' or 'remove NQN'");
    };
    let host = nqn(rest)?;
    if host == DISCOVERY_NQN {
        return Err("the discovery NQN is not a host NQN");
    }
    Ok((add, host))
}

// ---------------------------------------------------------------------
// nvmf/

/// The `nvmf/` directory, with `ports/` and `subsystems/` as default
/// groups.
#[pin_data]
pub(crate) struct NvmfDir {
    _ports: DefaultGroup,
    _subsystems: DefaultGroup,
}

impl NvmfDir {
    pub(crate) fn new() -> Result<impl PinInit<configfs::Group<NvmfDir>, Error>> {
        let ports = DefaultGroup::new(PortsDir::new()?)?;
        let subsystems = DefaultGroup::new(SubsystemsDir::new()?)?;
        let (ports_raw, subsystems_raw) = (ports.raw(), subsystems.raw());
        let item_type = configfs_attrs! {
            container: configfs::Group<NvmfDir>,
            data: NvmfDir,
            attributes: [],
        };
        let init = configfs::Group::new(
            c"nvmf".try_into()?,
            item_type,
            try_pin_init!(NvmfDir {
                _ports: ports,
                _subsystems: subsystems,
            }),
        );
        // SAFETY: Both default groups are owned by the `NvmfDir` data of
        // the group `init` makes, and linked nowhere else.
        Ok(unsafe { configfs_ext::with_default_groups(init, [ports_raw, subsystems_raw]) })
    }
}

/// Pins `address`'s group: `rmdir` fails with `EBUSY` until [`unpin`].
fn pin(address: &GroupAddress) -> Result {
    let group = address.get().ok_or(EINVAL)?;
    // SAFETY: Called from a store callback of this group, which is
    // therefore registered.
    unsafe { configfs_ext::depend_unlocked(group) }
}

/// Undoes [`pin`].
fn unpin(address: &GroupAddress) {
    if let Some(group) = address.get() {
        // SAFETY: Callers unpin only what they pinned (their `enabled`
        // flag, set exactly while pinned).
        unsafe { configfs_ext::undepend(group) };
    }
}

// ---------------------------------------------------------------------
// nvmf/ports/<id>/

#[pin_data]
pub(crate) struct PortsDir {}

impl PortsDir {
    fn new() -> Result<impl PinInit<configfs::Group<PortsDir>, Error>> {
        let item_type = configfs_attrs! {
            container: configfs::Group<PortsDir>,
            data: PortsDir,
            child: Port,
            attributes: [],
        };
        Ok(configfs::Group::new(
            c"ports".try_into()?,
            item_type,
            try_pin_init!(PortsDir {}),
        ))
    }
}

struct PortConfig {
    ipv6: bool,
    /// The address literal, once written.
    traddr: Option<KVec<u8>>,
    trsvcid: u16,
    /// Listening on the accelerator (and the directory pinned).
    enabled: bool,
}

/// The data of `ports/<id>/`.
#[pin_data(PinnedDrop)]
pub(crate) struct Port {
    id: u16,
    address: Arc<GroupAddress>,
    #[pin]
    config: Mutex<PortConfig>,
}

#[pinned_drop]
impl PinnedDrop for Port {
    fn drop(self: Pin<&mut Self>) {
        PORT_HANDLES[usize::from(self.id / 64)].fetch_and(!(1 << (self.id % 64)), Ordering::AcqRel);
    }
}

#[vtable]
impl configfs::GroupOperations for PortsDir {
    type Child = Port;

    fn make_group(&self, name: &CStr) -> Result<impl PinInit<configfs::Group<Port>, Error>> {
        let id = port_id(name.to_bytes()).map_err(|why| {
            pr_err!("nvmf/ports: cannot create '{name}': {why} (EINVAL)\n");
            EINVAL
        })?;
        let address = Arc::new(GroupAddress::new(), GFP_KERNEL)?;
        let recorder = address.clone();
        let item_type = configfs_attrs! {
            container: configfs::Group<Port>,
            data: Port,
            attributes: [
                addr_trtype: 0,
                addr_adrfam: 1,
                addr_traddr: 2,
                addr_trsvcid: 3,
                enable: 4,
            ],
        };
        Ok(configfs::Group::new(
            name.try_into()?,
            item_type,
            try_pin_init!(Port {
                id,
                address,
                config <- new_mutex!(PortConfig {
                    ipv6: false,
                    traddr: None,
                    trsvcid: DEFAULT_TRSVCID,
                    enabled: false,
                }),
            }),
        )
        .pin_chain(move |group| {
            recorder.record(&*group);
            // configfs refuses a second directory of the same name, and
            // names are canonical (no leading zeros), so the bit is free;
            // the handle's release clears it.
            PORT_HANDLES[usize::from(id / 64)].fetch_or(1 << (id % 64), Ordering::AcqRel);
            Ok(())
        }))
    }
}

impl Port {
    fn refuse(&self, attr: &str, why: &str, err: Error) -> Error {
        pr_err!("nvmf/ports/{}: {attr}: {why} ({err:?})\n", self.id);
        err
    }

    /// Parses a value or refuses it with `EINVAL`.
    fn value<'a>(&self, attr: &str, page: &'a [u8]) -> Result<&'a [u8]> {
        parse::value(page).map_err(|why| self.refuse(attr, why, EINVAL))
    }

    /// Refuses a change of an enabled port.
    fn changeable(&self, c: &PortConfig, attr: &str) -> Result {
        if c.enabled {
            return Err(self.refuse(attr, "disable the port first", EBUSY));
        }
        Ok(())
    }

    fn enable(&self, c: &mut PortConfig) -> Result {
        if c.enabled {
            return Ok(());
        }
        let Some(traddr) = &c.traddr else {
            return Err(self.refuse("enable", "write addr_traddr first", EINVAL));
        };
        if ipv4(traddr) == c.ipv6 {
            return Err(self.refuse("enable", "addr_adrfam does not match addr_traddr", EINVAL));
        }
        let mut p = NvmfPort::zeroed();
        p.port_id.set(self.id);
        p.trtype = vendor::NVMF_TRTYPE_TCP;
        p.adrfam = if c.ipv6 {
            vendor::NVMF_ADRFAM_IPV6
        } else {
            vendor::NVMF_ADRFAM_IPV4
        };
        p.trsvcid.set(c.trsvcid);
        c_string_field(&mut p.traddr, traddr);
        // Pinned first: if an rmdir is under way this fails, and nothing
        // listens without a handle to stop it.
        pin(&self.address)
            .map_err(|e| self.refuse("enable", "cannot pin the directory (being removed?)", e))?;
        if let Err(e) = send(vendor::opcode::NVMF_PORT_ADD, 0, Some(p.as_bytes())) {
            unpin(&self.address);
            let why = match e {
                e if e == EADDRINUSE => "the address is in use or not local",
                e if e == EEXIST => "the accelerator has this port ID already",
                _ => "the accelerator refused the port",
            };
            return Err(self.refuse("enable", why, e));
        }
        c.enabled = true;
        pr_info!(
            "nvmf/ports/{}: listening on {}:{}\n",
            self.id,
            bstr(traddr),
            c.trsvcid
        );
        Ok(())
    }

    fn disable(&self, c: &mut PortConfig) -> Result {
        if !c.enabled {
            return Ok(());
        }
        match send(vendor::opcode::NVMF_PORT_REMOVE, u32::from(self.id), None) {
            Ok(()) => {}
            // Gone already (the accelerator restarted): nothing listens.
            Err(e) if e == ENOENT => {}
            Err(e) => return Err(self.refuse("enable", "the accelerator refused", e)),
        }
        c.enabled = false;
        unpin(&self.address);
        pr_info!("nvmf/ports/{}: disabled\n", self.id);
        Ok(())
    }
}

macro_rules! port_attribute {
    ($id:literal, show: $show:expr $(, store: $store:expr)?) => {
        #[vtable]
        impl AttributeOperations<$id> for Port {
            type Data = Port;

            fn show(port: &Port, page: &mut [u8; PAGE_SIZE]) -> Result<usize> {
                let mut w = Formatter::new(page);
                let f: fn(&Port, &mut Formatter<'_>) -> Result = $show;
                f(port, &mut w)?;
                Ok(w.bytes_written())
            }

            $(
            fn store(port: &Port, page: &[u8]) -> Result {
                let f: fn(&Port, &[u8]) -> Result = $store;
                f(port, page)
            }
            )?
        }
    };
}

port_attribute!(0,
    show: |_p, w| {
        writeln!(w, "tcp")?;
        Ok(())
    },
    store: |p, page| {
        let text = p.value("addr_trtype", page)?;
        let c = p.config.lock();
        p.changeable(&c, "addr_trtype")?;
        if text != b"tcp" {
            return Err(p.refuse("addr_trtype", "only 'tcp' is served", EINVAL));
        }
        Ok(())
    }
);

port_attribute!(1,
    show: |p, w| {
        writeln!(w, "{}", if p.config.lock().ipv6 { "ipv6" } else { "ipv4" })?;
        Ok(())
    },
    store: |p, page| {
        let choice = parse::choice(page, &["ipv4", "ipv6"])
            .map_err(|_| p.refuse("addr_adrfam", "expected ipv4 or ipv6", EINVAL))?;
        let mut c = p.config.lock();
        p.changeable(&c, "addr_adrfam")?;
        c.ipv6 = choice == 1;
        Ok(())
    }
);

port_attribute!(2,
    show: |p, w| {
        let c = p.config.lock();
        writeln!(w, "{}", c.traddr.as_deref().map_or("", bstr))?;
        Ok(())
    },
    store: |p, page| {
        let text = p.value("addr_traddr", page)?;
        if !ipv4(text) && !ipv6(text) {
            return Err(p.refuse(
                "addr_traddr",
                "not an IPv4 or IPv6 address literal (no names, zones or brackets)",
                EINVAL,
            ));
        }
        let mut owned = KVec::new();
        owned.extend_from_slice(text, GFP_KERNEL)?;
        let mut c = p.config.lock();
        p.changeable(&c, "addr_traddr")?;
        c.traddr = Some(owned);
        Ok(())
    }
);

port_attribute!(3,
    show: |p, w| {
        writeln!(w, "{}", p.config.lock().trsvcid)?;
        Ok(())
    },
    store: |p, page| {
        let port = parse::number(page)
            .map_err(|why| p.refuse("addr_trsvcid", why, EINVAL))?;
        let port = u16::try_from(port)
            .ok()
            .filter(|&n| n != 0)
            .ok_or_else(|| p.refuse("addr_trsvcid", "a TCP port is 1-65535", EINVAL))?;
        let mut c = p.config.lock();
        p.changeable(&c, "addr_trsvcid")?;
        c.trsvcid = port;
        Ok(())
    }
);

port_attribute!(4,
    show: |p, w| {
        writeln!(w, "{}", u8::from(p.config.lock().enabled))?;
        Ok(())
    },
    store: |p, page| {
        let want = parse::boolean(page).map_err(|why| p.refuse("enable", why, EINVAL))?;
        let mut c = p.config.lock();
        if want {
            p.enable(&mut c)
        } else {
            p.disable(&mut c)
        }
    }
);

// ---------------------------------------------------------------------
// nvmf/subsystems/<nqn>/

#[pin_data]
pub(crate) struct SubsystemsDir {}

impl SubsystemsDir {
    fn new() -> Result<impl PinInit<configfs::Group<SubsystemsDir>, Error>> {
        let item_type = configfs_attrs! {
            container: configfs::Group<SubsystemsDir>,
            data: SubsystemsDir,
            child: Subsystem,
            attributes: [],
        };
        Ok(configfs::Group::new(
            c"subsystems".try_into()?,
            item_type,
            try_pin_init!(SubsystemsDir {}),
        ))
    }
}

struct SubsystemConfig {
    allow_any_host: bool,
    hosts: KVec<KVec<u8>>,
    ports: KVec<u16>,
    /// Served by the accelerator (and the directory pinned).
    enabled: bool,
    /// Namespaces of it enabled: it cannot be disabled before they are.
    live_namespaces: u32,
}

/// A subsystem handle's state, shared with its `namespaces/` directory.
#[pin_data]
pub(crate) struct SubsystemState {
    nqn: KVec<u8>,
    address: GroupAddress,
    #[pin]
    config: Mutex<SubsystemConfig>,
}

/// The data of `subsystems/<nqn>/`.
#[pin_data]
pub(crate) struct Subsystem {
    state: Arc<SubsystemState>,
    _namespaces: DefaultGroup,
}

#[vtable]
impl configfs::GroupOperations for SubsystemsDir {
    type Child = Subsystem;

    fn make_group(&self, name: &CStr) -> Result<impl PinInit<configfs::Group<Subsystem>, Error>> {
        let bytes = subsystem_nqn(name.to_bytes()).map_err(|why| {
            pr_err!("nvmf/subsystems: cannot create '{name}': {why} (EINVAL)\n");
            EINVAL
        })?;
        let mut owned = KVec::new();
        owned.extend_from_slice(bytes, GFP_KERNEL)?;
        let state = Arc::pin_init(
            try_pin_init!(SubsystemState {
                nqn: owned,
                address: GroupAddress::new(),
                config <- new_mutex!(SubsystemConfig {
                    allow_any_host: false,
                    hosts: KVec::new(),
                    ports: KVec::new(),
                    enabled: false,
                    live_namespaces: 0,
                }),
            }),
            GFP_KERNEL,
        )?;
        let namespaces = DefaultGroup::new(NamespacesDir::new(state.clone())?)?;
        let namespaces_raw = namespaces.raw();
        let item_type = configfs_attrs! {
            container: configfs::Group<Subsystem>,
            data: Subsystem,
            attributes: [
                attr_allow_any_host: 0,
                allowed_hosts: 1,
                ports: 2,
                enable: 3,
            ],
        };
        let recorder = state.clone();
        let init = configfs::Group::new(
            name.try_into()?,
            item_type,
            try_pin_init!(Subsystem {
                state,
                _namespaces: namespaces,
            }),
        )
        .pin_chain(move |group| {
            recorder.address.record(&*group);
            Ok(())
        });
        // SAFETY: The namespaces group is owned by the `Subsystem` data of
        // the group `init` makes, and linked nowhere else.
        Ok(unsafe { configfs_ext::with_default_groups(init, [namespaces_raw]) })
    }
}

impl SubsystemState {
    fn refuse(&self, attr: &str, why: &str, err: Error) -> Error {
        pr_err!(
            "nvmf/subsystems/{}: {attr}: {why} ({err:?})\n",
            bstr(&self.nqn)
        );
        err
    }

    fn value<'a>(&self, attr: &str, page: &'a [u8]) -> Result<&'a [u8]> {
        parse::value(page).map_err(|why| self.refuse(attr, why, EINVAL))
    }

    /// Subsystem Set with `c`: creates the subsystem on the accelerator
    /// (`create`) or replaces its ports and hosts.
    fn push(&self, c: &SubsystemConfig, create: bool) -> Result {
        let mut s = zeroed_box::<NvmfSubsystem>()?;
        c_string_field(&mut s.nqn, &self.nqn);
        s.flags = if c.allow_any_host {
            vendor::NVMF_SUBSYSTEM_ALLOW_ANY_HOST
        } else {
            0
        };
        if create {
            s.flags |= vendor::NVMF_SUBSYSTEM_CREATE;
        }
        // Both lists are bounded by their stores (16 each).
        s.port_count = c.ports.len() as u8;
        for (slot, &id) in s.ports.iter_mut().zip(c.ports.iter()) {
            slot.set(id);
        }
        s.host_count = c.hosts.len() as u8;
        for (slot, host) in s.hosts.iter_mut().zip(c.hosts.iter()) {
            c_string_field(slot, host);
        }
        send(vendor::opcode::NVMF_SUBSYSTEM_SET, 0, Some(s.as_bytes()))
    }

    /// Applies `change` to a copy of the settings; an enabled subsystem
    /// gets the result at once (Subsystem Set), and keeps the old settings
    /// if the accelerator refuses them.
    fn change(&self, attr: &str, change: impl FnOnce(&mut SubsystemConfig) -> Result) -> Result {
        let mut c = self.config.lock();
        let mut next = SubsystemConfig {
            allow_any_host: c.allow_any_host,
            hosts: KVec::new(),
            ports: KVec::new(),
            enabled: c.enabled,
            live_namespaces: c.live_namespaces,
        };
        for h in c.hosts.iter() {
            let mut copy = KVec::new();
            copy.extend_from_slice(h, GFP_KERNEL)?;
            next.hosts.push(copy, GFP_KERNEL)?;
        }
        next.ports.extend_from_slice(&c.ports, GFP_KERNEL)?;
        change(&mut next)?;
        if c.enabled {
            self.push(&next, false)
                .map_err(|e| self.refuse(attr, "the accelerator refused the change", e))?;
        }
        *c = next;
        Ok(())
    }

    fn enable(&self, c: &mut SubsystemConfig) -> Result {
        if c.enabled {
            return Ok(());
        }
        pin(&self.address)
            .map_err(|e| self.refuse("enable", "cannot pin the directory (being removed?)", e))?;
        if let Err(e) = self.push(c, true) {
            unpin(&self.address);
            let why = if e == EEXIST {
                "the accelerator serves this NQN already"
            } else {
                "the accelerator refused the subsystem"
            };
            return Err(self.refuse("enable", why, e));
        }
        c.enabled = true;
        pr_info!("nvmf/subsystems/{}: enabled\n", bstr(&self.nqn));
        Ok(())
    }

    fn disable(&self, c: &mut SubsystemConfig) -> Result {
        if !c.enabled {
            return Ok(());
        }
        if c.live_namespaces != 0 {
            return Err(self.refuse("enable", "disable its namespaces first", EBUSY));
        }
        let mut name = zeroed_box::<NvmfName>()?;
        c_string_field(&mut name.nqn, &self.nqn);
        match send(
            vendor::opcode::NVMF_SUBSYSTEM_REMOVE,
            0,
            Some(name.as_bytes()),
        ) {
            Ok(()) => {}
            Err(e) if e == ENOENT => {}
            Err(e) => return Err(self.refuse("enable", "the accelerator refused", e)),
        }
        c.enabled = false;
        unpin(&self.address);
        pr_info!("nvmf/subsystems/{}: disabled\n", bstr(&self.nqn));
        Ok(())
    }
}

macro_rules! subsystem_attribute {
    ($id:literal, show: $show:expr $(, store: $store:expr)?) => {
        #[vtable]
        impl AttributeOperations<$id> for Subsystem {
            type Data = Subsystem;

            fn show(s: &Subsystem, page: &mut [u8; PAGE_SIZE]) -> Result<usize> {
                let mut w = Formatter::new(page);
                let f: fn(&SubsystemState, &mut Formatter<'_>) -> Result = $show;
                f(&s.state, &mut w)?;
                Ok(w.bytes_written())
            }

            $(
            fn store(s: &Subsystem, page: &[u8]) -> Result {
                let f: fn(&SubsystemState, &[u8]) -> Result = $store;
                f(&s.state, page)
            }
            )?
        }
    };
}

subsystem_attribute!(0,
    show: |s, w| {
        writeln!(w, "{}", u8::from(s.config.lock().allow_any_host))?;
        Ok(())
    },
    store: |s, page| {
        let any = parse::boolean(page)
            .map_err(|why| s.refuse("attr_allow_any_host", why, EINVAL))?;
        s.change("attr_allow_any_host", |c| {
            if any && !c.hosts.is_empty() {
                return Err(s.refuse(
                    "attr_allow_any_host",
                    "remove the allowed hosts first (the two exclude each other)",
                    EINVAL,
                ));
            }
            c.allow_any_host = any;
            Ok(())
        })
    }
);

subsystem_attribute!(1,
    show: |s, w| {
        for host in s.config.lock().hosts.iter() {
            writeln!(w, "{}", bstr(host))?;
        }
        Ok(())
    },
    store: |s, page| {
        let text = s.value("allowed_hosts", page)?;
        let (add, host) = host_change(text)
            .map_err(|why| s.refuse("allowed_hosts", why, EINVAL))?;
        s.change("allowed_hosts", |c| {
            let at = c.hosts.iter().position(|h| h[..] == *host);
            if add {
                if c.allow_any_host {
                    return Err(s.refuse(
                        "allowed_hosts",
                        "attr_allow_any_host is 1 (the two exclude each other)",
                        EINVAL,
                    ));
                }
                if at.is_some() {
                    return Err(s.refuse("allowed_hosts", "the host is on the list already", EEXIST));
                }
                if c.hosts.len() >= vendor::NVMF_MAX_HOSTS {
                    return Err(s.refuse("allowed_hosts", "at most 16 hosts", ENOSPC));
                }
                let mut owned = KVec::new();
                owned.extend_from_slice(host, GFP_KERNEL)?;
                c.hosts.push(owned, GFP_KERNEL)?;
            } else {
                let Some(i) = at else {
                    return Err(s.refuse("allowed_hosts", "the host is not on the list", ENOENT));
                };
                c.hosts.remove(i)?;
            }
            Ok(())
        })
    }
);

subsystem_attribute!(2,
    show: |s, w| {
        let c = s.config.lock();
        if c.ports.is_empty() {
            writeln!(w, "none")?;
        } else {
            for (i, id) in c.ports.iter().enumerate() {
                write!(w, "{}{id}", if i == 0 { "" } else { "," })?;
            }
            writeln!(w)?;
        }
        Ok(())
    },
    store: |s, page| {
        let text = s.value("ports", page)?;
        let ports = port_list(text).map_err(|why| s.refuse("ports", why, EINVAL))?;
        if let Some(missing) = ports.iter().find(|&&id| !port_handle_exists(id)) {
            pr_err!(
                "nvmf/subsystems/{}: ports: no directory nvmf/ports/{missing} (ENOENT)\n",
                bstr(&s.nqn)
            );
            return Err(ENOENT);
        }
        s.change("ports", move |c| {
            c.ports = ports;
            Ok(())
        })
    }
);

subsystem_attribute!(3,
    show: |s, w| {
        writeln!(w, "{}", u8::from(s.config.lock().enabled))?;
        Ok(())
    },
    store: |s, page| {
        let want = parse::boolean(page).map_err(|why| s.refuse("enable", why, EINVAL))?;
        let mut c = s.config.lock();
        if want {
            s.enable(&mut c)
        } else {
            s.disable(&mut c)
        }
    }
);

// ---------------------------------------------------------------------
// nvmf/subsystems/<nqn>/namespaces/<nsid>/

/// The `namespaces/` directory of a subsystem.
#[pin_data]
pub(crate) struct NamespacesDir {
    subsystem: Arc<SubsystemState>,
}

impl NamespacesDir {
    fn new(
        subsystem: Arc<SubsystemState>,
    ) -> Result<impl PinInit<configfs::Group<NamespacesDir>, Error>> {
        let item_type = configfs_attrs! {
            container: configfs::Group<NamespacesDir>,
            data: NamespacesDir,
            child: Namespace,
            attributes: [],
        };
        Ok(configfs::Group::new(
            c"namespaces".try_into()?,
            item_type,
            try_pin_init!(NamespacesDir { subsystem }),
        ))
    }
}

struct NamespaceConfig {
    volume: Option<KVec<u8>>,
    /// Exported by the accelerator (and the directory pinned).
    enabled: bool,
}

/// The data of `namespaces/<nsid>/`.
#[pin_data]
pub(crate) struct Namespace {
    subsystem: Arc<SubsystemState>,
    nsid: u32,
    address: Arc<GroupAddress>,
    #[pin]
    config: Mutex<NamespaceConfig>,
}

#[vtable]
impl configfs::GroupOperations for NamespacesDir {
    type Child = Namespace;

    fn make_group(&self, name: &CStr) -> Result<impl PinInit<configfs::Group<Namespace>, Error>> {
        let id = nsid(name.to_bytes()).map_err(|why| {
            pr_err!(
                "nvmf/subsystems/{}/namespaces: cannot create '{name}': {why} (EINVAL)\n",
                bstr(&self.subsystem.nqn)
            );
            EINVAL
        })?;
        let address = Arc::new(GroupAddress::new(), GFP_KERNEL)?;
        let recorder = address.clone();
        let item_type = configfs_attrs! {
            container: configfs::Group<Namespace>,
            data: Namespace,
            attributes: [
                volume: 0,
                enable: 1,
            ],
        };
        Ok(configfs::Group::new(
            name.try_into()?,
            item_type,
            try_pin_init!(Namespace {
                subsystem: self.subsystem.clone(),
                nsid: id,
                address,
                config <- new_mutex!(NamespaceConfig {
                    volume: None,
                    enabled: false,
                }),
            }),
        )
        .pin_chain(move |group| {
            recorder.record(&*group);
            Ok(())
        }))
    }
}

impl Namespace {
    fn refuse(&self, attr: &str, why: &str, err: Error) -> Error {
        pr_err!(
            "nvmf/subsystems/{}/namespaces/{}: {attr}: {why} ({err:?})\n",
            bstr(&self.subsystem.nqn),
            self.nsid
        );
        err
    }

    fn payload(&self, volume: &[u8]) -> NvmfNamespace {
        let mut n = NvmfNamespace::zeroed();
        c_string_field(&mut n.nqn, &self.subsystem.nqn);
        n.nsid.set(self.nsid);
        c_string_field(&mut n.volume, volume);
        n
    }

    fn enable(&self, c: &mut NamespaceConfig) -> Result {
        if c.enabled {
            return Ok(());
        }
        let Some(volume) = &c.volume else {
            return Err(self.refuse(
                "enable",
                "write the volume's name to 'volume' first",
                EINVAL,
            ));
        };
        // The subsystem's lock is held across the command, so it cannot
        // be disabled meanwhile (lock order: namespace, then subsystem).
        let mut s = self.subsystem.config.lock();
        if !s.enabled {
            return Err(self.refuse("enable", "enable the subsystem first", EINVAL));
        }
        match volume::find_on_device(volume) {
            Ok(Some(e)) if e.nsid.get() != 0 => {}
            Ok(Some(_)) => {
                return Err(self.refuse(
                    "enable",
                    "the volume is locked: write its key first",
                    ENOKEY,
                ))
            }
            Ok(None) => {
                return Err(self.refuse(
                    "enable",
                    "the accelerator has no volume of that name",
                    ENOENT,
                ))
            }
            Err(e) => {
                return Err(self.refuse("enable", "cannot read the accelerator's volume list", e))
            }
        }
        pin(&self.address)
            .map_err(|e| self.refuse("enable", "cannot pin the directory (being removed?)", e))?;
        let n = self.payload(volume);
        if let Err(e) = send(vendor::opcode::NVMF_NAMESPACE_ADD, 0, Some(n.as_bytes())) {
            unpin(&self.address);
            let why = match e {
                e if e == EBUSY => "the volume is exported by another namespace",
                e if e == EEXIST => "the accelerator has this NSID in the subsystem already",
                e if e == ENOENT => "the volume is not open, or the subsystem is gone",
                _ => "the accelerator refused the namespace",
            };
            return Err(self.refuse("enable", why, e));
        }
        s.live_namespaces += 1;
        c.enabled = true;
        pr_info!(
            "nvmf/subsystems/{}/namespaces/{}: volume {} exported\n",
            bstr(&self.subsystem.nqn),
            self.nsid,
            bstr(volume)
        );
        Ok(())
    }

    fn disable(&self, c: &mut NamespaceConfig) -> Result {
        if !c.enabled {
            return Ok(());
        }
        let mut s = self.subsystem.config.lock();
        let n = self.payload(b"");
        match send(vendor::opcode::NVMF_NAMESPACE_REMOVE, 0, Some(n.as_bytes())) {
            Ok(()) => {}
            Err(e) if e == ENOENT => {}
            Err(e) => return Err(self.refuse("enable", "the accelerator refused", e)),
        }
        s.live_namespaces = s.live_namespaces.saturating_sub(1);
        c.enabled = false;
        unpin(&self.address);
        pr_info!(
            "nvmf/subsystems/{}/namespaces/{}: disabled\n",
            bstr(&self.subsystem.nqn),
            self.nsid
        );
        Ok(())
    }
}

#[vtable]
impl AttributeOperations<0> for Namespace {
    type Data = Namespace;

    fn show(ns: &Namespace, page: &mut [u8; PAGE_SIZE]) -> Result<usize> {
        let mut w = Formatter::new(page);
        writeln!(w, "{}", ns.config.lock().volume.as_deref().map_or("", bstr))?;
        Ok(w.bytes_written())
    }

    fn store(ns: &Namespace, page: &[u8]) -> Result {
        let text = parse::value(page).map_err(|why| ns.refuse("volume", why, EINVAL))?;
        let name = parse::name(text).map_err(|why| ns.refuse("volume", why, EINVAL))?;
        let mut owned = KVec::new();
        owned.extend_from_slice(name, GFP_KERNEL)?;
        let mut c = ns.config.lock();
        if c.enabled {
            return Err(ns.refuse("volume", "disable the namespace first", EBUSY));
        }
        c.volume = Some(owned);
        Ok(())
    }
}

#[vtable]
impl AttributeOperations<1> for Namespace {
    type Data = Namespace;

    fn show(ns: &Namespace, page: &mut [u8; PAGE_SIZE]) -> Result<usize> {
        let mut w = Formatter::new(page);
        writeln!(w, "{}", u8::from(ns.config.lock().enabled))?;
        Ok(w.bytes_written())
    }

    fn store(ns: &Namespace, page: &[u8]) -> Result {
        let want = parse::boolean(page).map_err(|why| ns.refuse("enable", why, EINVAL))?;
        let mut c = ns.config.lock();
        if want {
            ns.enable(&mut c)
        } else {
            ns.disable(&mut c)
        }
    }
}

#[kunit_tests(dpublk_configfs_nvmf)]
mod tests {
    use super::*;

    #[test]
    fn port_ids_and_nsids() {
        assert_eq!(port_id(b"1"), Ok(1));
        assert_eq!(port_id(b"65535"), Ok(65535));
        for bad in [&b"0"[..], b"65536", b"01", b"-1", b"1 ", b"x"] {
            assert!(port_id(bad).is_err());
        }
        assert_eq!(nsid(b"1024"), Ok(1024));
        assert!(nsid(b"1025").is_err());
        assert!(nsid(b"0").is_err());
    }

    #[test]
    fn nqns() {
        assert!(subsystem_nqn(b"nqn.2026-12.org.dpublk:a").is_ok());
        assert!(subsystem_nqn(DISCOVERY_NQN).is_err());
        for bad in [&b"nqn."[..], b"iqn.2026", b"nqn.a b", b"nqn.\xc3\xa9", b""] {
            assert!(nqn(bad).is_err());
        }
        let mut long = KVec::new();
        long.extend_from_slice(b"nqn.", GFP_KERNEL).unwrap();
        while long.len() < MAX_NQN {
            long.push(b'a', GFP_KERNEL).unwrap();
        }
        assert!(nqn(&long).is_ok());
        long.push(b'a', GFP_KERNEL).unwrap();
        assert!(nqn(&long).is_err());
    }

    #[test]
    fn addresses() {
        for good in [
            &b"127.0.0.1"[..],
            b"0.0.0.0",
            b"255.255.255.255",
            b"10.0.2.15",
        ] {
            assert!(ipv4(good));
        }
        for bad in [
            &b"256.0.0.1"[..],
            b"1.2.3",
            b"1.2.3.4.5",
            b"01.2.3.4",
            b"1..3.4",
            b"a.b.c.d",
            b"",
        ] {
            assert!(!ipv4(bad));
        }
        for good in [
            &b"::1"[..],
            b"::",
            b"fe80::1",
            b"2001:db8:0:0:0:0:0:1",
            b"::ffff:192.0.2.1",
            b"2001:db8::8:800:200c:417a",
        ] {
            assert!(ipv6(good));
        }
        for bad in [
            &b":"[..],
            b":::",
            b"1::2::3",
            b"2001:db8:0:0:0:0:0:1:2",
            b"2001:db8:0:0:0:0:1",
            b"12345::",
            b"fe80::1%eth0",
            b"[::1]",
            b"g::1",
            b"::1.2.3",
            b"1:2:3:4:5:6:7::8",
        ] {
            assert!(!ipv6(bad));
        }
    }

    #[test]
    fn lists() {
        assert_eq!(&port_list(b"1,2,65535").unwrap()[..], &[1, 2, 65535]);
        assert!(port_list(b"none").unwrap().is_empty());
        for bad in [&b"1,1"[..], b"1,", b",1", b"0", b"1 2", b"1,,2"] {
            assert!(port_list(bad).is_err());
        }
        assert_eq!(host_change(b"add nqn.h"), Ok((true, &b"nqn.h"[..])));
        assert_eq!(host_change(b"remove nqn.h"), Ok((false, &b"nqn.h"[..])));
        for bad in [
            &b"nqn.h"[..],
            b"add",
            b"add  nqn.h",
            b"del nqn.h",
            b"add nqn.2014-08.org.nvmexpress.discovery",
        ] {
            assert!(host_change(bad).is_err());
        }
    }
}
