//! The NVMe/TCP target as the host configures it: the accelerator's
//! vendor commands NVMe/TCP Port Add and Remove, Subsystem Set and Remove,
//! Namespace Add and Remove (sent by dpublk's configfs, `nvmf/` in
//! Documentation/configfs.rst) change the running target.
//!
//! The payloads come from the host driver and are untrusted like any
//! guest data: every field is checked, reserved bytes included, with the
//! rules the configuration file follows (`config.rs`: NQNs, NSIDs, volume
//! names, addresses), so the file and configfs accept the same things. A
//! refused command changes nothing.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};

use log::{info, warn};
use nvme_shim::sqe::SubmissionEntry;
use nvme_shim::status::Status;
use nvme_shim::vendor::{
    self, status as vs, vendor_status, NvmfName, NvmfNamespace, NvmfPort, NvmfSubsystem,
};
use nvme_shim::wire::Wire;

use super::config::{valid_nqn, valid_volume_name, DISCOVERY_NQN, MAX_NSID};
use super::remote_slots::RemoteSlots;
use super::target::{Access, PortError, Target, VolumeLookup};
use crate::namespace::Namespace;

/// Why a payload was refused (for the log; the host sees
/// `INVALID_PAYLOAD`).
pub(super) type Refusal = &'static str;

/// The target the host configures: the one the configuration file
/// started (appliance mode with a host driver too), or one made at the
/// first command.
#[derive(Default)]
pub struct HostTarget {
    target: Mutex<Option<Arc<Target>>>,
    /// The SSD indexes Remote SSD Add fills (none: the command is not
    /// implemented, as in tests without them).
    remote: OnceLock<RemoteSlots>,
}

fn invalid(what: &str, why: Refusal) -> Status {
    warn!("nvmf configure: {what} refused: {why}");
    vendor_status(vs::INVALID_PAYLOAD)
}

impl HostTarget {
    /// Makes `target` (started from `--nvmf-config`) the one the host's
    /// commands change.
    pub fn install(&self, target: Arc<Target>) {
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = Some(target);
    }

    /// Gives the host's Remote SSD Add and Remove the SSD indexes reserved
    /// for them. Only the first call counts.
    pub fn install_remote_slots(&self, slots: RemoteSlots) {
        if self.remote.set(slots).is_err() {
            warn!("nvmf configure: remote SSD indexes installed twice");
        }
    }

    /// Whether SSD `index` is a reserved remote SSD index with nothing in
    /// it: SSD List, Attach and Detach do not see it.
    pub fn is_empty_remote_slot(&self, index: u16) -> bool {
        self.remote.get().is_some_and(|r| r.is_empty_slot(index))
    }

    /// Remote SSD Add (`remote_slots.rs`).
    pub fn remote_ssd_add(&self, raw: &[u8]) -> Result<u32, Status> {
        self.remote
            .get()
            .ok_or(vendor_status(vs::NOT_IMPLEMENTED))?
            .add(raw)
    }

    /// Remote SSD Remove (`remote_slots.rs`).
    pub fn remote_ssd_remove(&self, sqe: &SubmissionEntry) -> Result<u32, Status> {
        self.remote
            .get()
            .ok_or(vendor_status(vs::NOT_IMPLEMENTED))?
            .remove(sqe)
    }

    /// The target, made empty at the first use.
    fn target(&self) -> Result<Arc<Target>, Status> {
        let mut slot = self.target.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = &*slot {
            return Ok(Arc::clone(t));
        }
        let t = Target::empty().map_err(|e| {
            warn!("{e}");
            Status::INTERNAL_ERROR
        })?;
        *slot = Some(Arc::clone(&t));
        Ok(t)
    }

    /// The target if one exists (removals make none).
    fn existing(&self) -> Option<Arc<Target>> {
        self.target
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether a subsystem of the target exports `ns` (a volume's
    /// namespace): Volume Delete is refused for it.
    pub fn exports(&self, ns: &Arc<dyn Namespace>) -> bool {
        self.existing().is_some_and(|t| {
            t.subsystems()
                .iter()
                .any(|s| s.namespaces().values().any(|e| same_namespace(e, ns)))
        })
    }

    /// NVMe/TCP Port Add.
    pub fn port_add(&self, raw: &[u8]) -> Result<u32, Status> {
        let p = NvmfPort::read_from(raw).ok_or(vendor_status(vs::INVALID_PAYLOAD))?;
        let (id, address) = check_port(&p).map_err(|why| invalid("Port Add", why))?;
        match self.target()?.add_port(id, address) {
            Ok(_) => Ok(0),
            Err(PortError::Exists) => Err(vendor_status(vs::NVMF_EXISTS)),
            Err(PortError::AddressTaken) => {
                warn!("nvmf configure: port {id}: {address} is another port's address");
                Err(vendor_status(vs::NVMF_ADDRESS_IN_USE))
            }
            Err(PortError::Bind(e)) => {
                warn!("nvmf configure: port {id}: cannot listen on {address}: {e}");
                Err(vendor_status(vs::NVMF_ADDRESS_IN_USE))
            }
            Err(PortError::Thread(e)) => {
                warn!("nvmf configure: port {id}: no listener thread: {e}");
                Err(Status::INTERNAL_ERROR)
            }
        }
    }

    /// NVMe/TCP Port Remove.
    pub fn port_remove(&self, sqe: &SubmissionEntry) -> Result<u32, Status> {
        let id = vendor::nvmf_port_id(sqe).ok_or(Status::INVALID_FIELD)?;
        match self.existing() {
            Some(t) if t.remove_port(id) => Ok(0),
            _ => Err(vendor_status(vs::NVMF_NOT_FOUND)),
        }
    }

    /// NVMe/TCP Subsystem Set.
    pub fn subsystem_set(&self, raw: &[u8]) -> Result<u32, Status> {
        let s = NvmfSubsystem::read_from(raw).ok_or(vendor_status(vs::INVALID_PAYLOAD))?;
        let (nqn, access) = check_subsystem(&s).map_err(|why| invalid("Subsystem Set", why))?;
        let create = s.flags & vendor::NVMF_SUBSYSTEM_CREATE != 0;
        match self.target()?.set_subsystem(&nqn, access, create) {
            Ok(()) => Ok(0),
            Err(true) => Err(vendor_status(vs::NVMF_EXISTS)),
            Err(false) => Err(vendor_status(vs::NVMF_NOT_FOUND)),
        }
    }

    /// NVMe/TCP Subsystem Remove: refused while it has namespaces.
    pub fn subsystem_remove(&self, raw: &[u8]) -> Result<u32, Status> {
        let n = NvmfName::read_from(raw).ok_or(vendor_status(vs::INVALID_PAYLOAD))?;
        let nqn = subsystem_nqn(&n.nqn).map_err(|why| invalid("Subsystem Remove", why))?;
        let target = self.existing().ok_or(vendor_status(vs::NVMF_NOT_FOUND))?;
        let s = target
            .find_subsystem(nqn)
            .ok_or(vendor_status(vs::NVMF_NOT_FOUND))?;
        if !s.namespaces().is_empty() {
            warn!("nvmf configure: subsystem {nqn} still has namespaces: not removed");
            return Err(vendor_status(vs::NVMF_BUSY));
        }
        if target.remove_subsystem(nqn) {
            Ok(0)
        } else {
            Err(vendor_status(vs::NVMF_NOT_FOUND))
        }
    }

    /// NVMe/TCP Namespace Add: the volume `volumes` finds by name becomes
    /// namespace NSID of the subsystem. A volume is exported once at most
    /// (as in the file).
    pub fn namespace_add(&self, raw: &[u8], volumes: &dyn VolumeLookup) -> Result<u32, Status> {
        let n = NvmfNamespace::read_from(raw).ok_or(vendor_status(vs::INVALID_PAYLOAD))?;
        let (nqn, nsid, name) =
            check_namespace(&n, true).map_err(|why| invalid("Namespace Add", why))?;
        let target = self.existing().ok_or(vendor_status(vs::NVMF_NOT_FOUND))?;
        let s = target
            .find_subsystem(nqn)
            .ok_or(vendor_status(vs::NVMF_NOT_FOUND))?;
        let Some(ns) = volumes.volume(name) else {
            warn!("nvmf configure: {nqn} namespace {nsid}: no open volume '{name}'");
            return Err(vendor_status(vs::VOLUME_NOT_FOUND));
        };
        let exported = target
            .subsystems()
            .iter()
            .any(|other| other.namespaces().values().any(|e| same_namespace(e, &ns)));
        if exported {
            warn!("nvmf configure: {nqn} namespace {nsid}: volume '{name}' is exported already");
            return Err(vendor_status(vs::NVMF_BUSY));
        }
        s.change_namespaces(|map| {
            if map.contains_key(&nsid) {
                return Err(vendor_status(vs::NVMF_EXISTS));
            }
            map.insert(nsid, ns);
            Ok(())
        })?;
        info!("nvmf: {nqn} namespace {nsid}: volume {name}");
        Ok(0)
    }

    /// NVMe/TCP Namespace Remove. Commands of connected hosts to the NSID
    /// fail with Invalid Namespace from then on.
    pub fn namespace_remove(&self, raw: &[u8]) -> Result<u32, Status> {
        let n = NvmfNamespace::read_from(raw).ok_or(vendor_status(vs::INVALID_PAYLOAD))?;
        let (nqn, nsid, _) =
            check_namespace(&n, false).map_err(|why| invalid("Namespace Remove", why))?;
        let target = self.existing().ok_or(vendor_status(vs::NVMF_NOT_FOUND))?;
        let s = target
            .find_subsystem(nqn)
            .ok_or(vendor_status(vs::NVMF_NOT_FOUND))?;
        let removed = s.change_namespaces(|map| map.remove(&nsid));
        let Some(ns) = removed else {
            return Err(vendor_status(vs::NVMF_NOT_FOUND));
        };
        // What the host wrote through it is on stable media before the
        // namespace leaves the target.
        if let Err(e) = ns.flush() {
            warn!("nvmf: {nqn} namespace {nsid}: flush at removal: {e}");
        }
        info!("nvmf: {nqn} namespace {nsid} removed");
        Ok(0)
    }
}

/// Whether two namespace handles are the same object (a volume's
/// namespace is shared, not copied).
fn same_namespace(a: &Arc<dyn Namespace>, b: &Arc<dyn Namespace>) -> bool {
    std::ptr::eq(Arc::as_ptr(a).cast::<u8>(), Arc::as_ptr(b).cast::<u8>())
}

/// The text of a NUL-terminated field: ASCII up to the first NUL, and
/// nothing but NULs after it (a field without a NUL is refused).
pub(super) fn c_text(field: &[u8]) -> Result<&str, Refusal> {
    let end = field
        .iter()
        .position(|&b| b == 0)
        .ok_or("a text field without its NUL")?;
    if field[end..].iter().any(|&b| b != 0) {
        return Err("bytes after a text field's NUL");
    }
    std::str::from_utf8(&field[..end]).map_err(|_| "a text field that is not ASCII")
}

pub(super) fn zero(bytes: &[u8]) -> Result<(), Refusal> {
    if bytes.iter().all(|&b| b == 0) {
        Ok(())
    } else {
        Err("reserved bytes set")
    }
}

/// A subsystem NQN as the file accepts it: well-formed, not the
/// discovery NQN.
fn subsystem_nqn(field: &[u8]) -> Result<&str, Refusal> {
    let nqn = c_text(field)?;
    if !valid_nqn(nqn) || nqn == DISCOVERY_NQN {
        return Err("not a subsystem NQN");
    }
    Ok(nqn)
}

/// Checks Port Add: TCP, a port ID and service of 1-65535, an address
/// literal of the family named.
pub fn check_port(p: &NvmfPort) -> Result<(u16, SocketAddr), Refusal> {
    zero(&p.rsvd6)?;
    zero(&p.rsvd72)?;
    if p.trtype != vendor::NVMF_TRTYPE_TCP {
        return Err("transport type is not TCP");
    }
    let id = p.port_id.get();
    if id == 0 {
        return Err("port ID 0");
    }
    let service = p.trsvcid.get();
    if service == 0 {
        return Err("TCP port 0");
    }
    let text = c_text(&p.traddr)?;
    let ip: IpAddr = text.parse().map_err(|_| "address is not an IP literal")?;
    let family = if ip.is_ipv4() {
        vendor::NVMF_ADRFAM_IPV4
    } else {
        vendor::NVMF_ADRFAM_IPV6
    };
    if p.adrfam != family {
        return Err("address family does not match the address");
    }
    if ip.is_multicast() {
        return Err("a multicast address");
    }
    Ok((id, SocketAddr::new(ip, service)))
}

/// Checks Subsystem Set: the NQN, counts within their arrays, ports
/// nonzero and distinct, hosts well-formed and distinct, `allow any
/// host` without hosts (the two exclude each other, as in the file),
/// unused entries and reserved bytes zero.
pub fn check_subsystem(s: &NvmfSubsystem) -> Result<(String, Access), Refusal> {
    let nqn = subsystem_nqn(&s.nqn)?;
    zero(&s.rsvd259)?;
    zero(&s.rsvd320)?;
    zero(&s.rsvd3968)?;
    if s.flags & !(vendor::NVMF_SUBSYSTEM_ALLOW_ANY_HOST | vendor::NVMF_SUBSYSTEM_CREATE) != 0 {
        return Err("undefined flags");
    }
    let ports = usize::from(s.port_count);
    let hosts = usize::from(s.host_count);
    if ports > vendor::NVMF_MAX_SUBSYSTEM_PORTS || hosts > vendor::NVMF_MAX_HOSTS {
        return Err("more ports or hosts than the payload holds");
    }
    let mut access = Access {
        ports: Vec::new(),
        hosts: Vec::new(),
        allow_any_host: s.flags & vendor::NVMF_SUBSYSTEM_ALLOW_ANY_HOST != 0,
    };
    for (i, p) in s.ports.iter().enumerate() {
        let id = p.get();
        if i >= ports {
            if id != 0 {
                return Err("a port beyond the count");
            }
            continue;
        }
        if id == 0 {
            return Err("port ID 0");
        }
        if access.ports.contains(&id) {
            return Err("a port listed twice");
        }
        access.ports.push(id);
    }
    for (i, h) in s.hosts.iter().enumerate() {
        if i >= hosts {
            zero(h).map_err(|_| "a host beyond the count")?;
            continue;
        }
        let host = c_text(h)?;
        if !valid_nqn(host) || host == DISCOVERY_NQN {
            return Err("not a host NQN");
        }
        if access.hosts.iter().any(|x| x == host) {
            return Err("a host listed twice");
        }
        access.hosts.push(host.to_string());
    }
    if access.allow_any_host && !access.hosts.is_empty() {
        return Err("allow any host with a host list");
    }
    Ok((nqn.to_string(), access))
}

/// Checks Namespace Add (`add`) or Remove: the NQN, an NSID of 1-1024,
/// a volume name as Volume Create accepts it (Add) or none (Remove).
pub fn check_namespace(n: &NvmfNamespace, add: bool) -> Result<(&str, u32, &str), Refusal> {
    let nqn = subsystem_nqn(&n.nqn)?;
    zero(&n.rsvd260)?;
    zero(&n.rsvd320)?;
    let nsid = n.nsid.get();
    if !(1..=MAX_NSID).contains(&nsid) {
        return Err("NSID is not 1-1024");
    }
    let name = c_text(&n.volume)?;
    if add && !valid_volume_name(name) {
        return Err("not a volume name");
    }
    if !add && !name.is_empty() {
        return Err("a volume name in Namespace Remove");
    }
    Ok((nqn, nsid, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvme_shim::wire::c_string_field;

    fn port(addr: &str, family: u8) -> NvmfPort {
        let mut p = NvmfPort::zeroed();
        p.port_id.set(1);
        p.trtype = vendor::NVMF_TRTYPE_TCP;
        p.adrfam = family;
        p.trsvcid.set(4420);
        c_string_field(&mut p.traddr, addr.as_bytes());
        p
    }

    #[test]
    fn ports_are_checked_field_by_field() {
        let ok = port("127.0.0.1", vendor::NVMF_ADRFAM_IPV4);
        assert_eq!(check_port(&ok), Ok((1, "127.0.0.1:4420".parse().unwrap())));
        assert!(check_port(&port("::1", vendor::NVMF_ADRFAM_IPV6)).is_ok());
        assert!(check_port(&port("::1", vendor::NVMF_ADRFAM_IPV4)).is_err());
        assert!(check_port(&port("127.0.0.1", vendor::NVMF_ADRFAM_IPV6)).is_err());
        for bad in [
            "",
            "localhost",
            "127.0.0.1:4420",
            "1.2.3",
            " 127.0.0.1",
            "224.0.0.1",
        ] {
            assert!(
                check_port(&port(bad, vendor::NVMF_ADRFAM_IPV4)).is_err(),
                "{bad}"
            );
        }
        let mut p = ok;
        p.trtype = 1;
        assert!(check_port(&p).is_err());
        p = ok;
        p.port_id.set(0);
        assert!(check_port(&p).is_err());
        p = ok;
        p.trsvcid.set(0);
        assert!(check_port(&p).is_err());
        p = ok;
        p.rsvd72[55] = 1;
        assert!(check_port(&p).is_err());
        p = ok;
        p.traddr = [b'1'; 64];
        assert!(check_port(&p).is_err(), "no NUL");
        p = ok;
        p.traddr[40] = b'x';
        assert!(check_port(&p).is_err(), "garbage after the NUL");
    }

    fn subsystem(nqn: &str) -> NvmfSubsystem {
        let mut s = NvmfSubsystem::zeroed();
        c_string_field(&mut s.nqn, nqn.as_bytes());
        s.port_count = 1;
        s.ports[0].set(1);
        s.host_count = 1;
        c_string_field(&mut s.hosts[0], b"nqn.2014-08.org.nvmexpress:uuid:1");
        s
    }

    #[test]
    fn subsystems_follow_the_file_rules() {
        let ok = subsystem("nqn.2026-12.org.dpublk:a");
        let (nqn, access) = check_subsystem(&ok).unwrap();
        assert_eq!(nqn, "nqn.2026-12.org.dpublk:a");
        assert_eq!(access.ports, vec![1]);
        assert_eq!(access.hosts.len(), 1);
        for bad_nqn in ["", "nqn.", "iqn.x", "nqn.a b", DISCOVERY_NQN] {
            assert!(check_subsystem(&subsystem(bad_nqn)).is_err(), "{bad_nqn}");
        }
        let long = format!("nqn.{}", "a".repeat(220));
        assert!(check_subsystem(&subsystem(&long)).is_err(), "224 bytes");
        let mut s = ok;
        s.flags = vendor::NVMF_SUBSYSTEM_ALLOW_ANY_HOST;
        assert!(check_subsystem(&s).is_err(), "any host with hosts");
        s.host_count = 0;
        s.hosts[0] = [0; 224];
        assert!(check_subsystem(&s).unwrap().1.allow_any_host);
        s = ok;
        s.flags = 4;
        assert!(check_subsystem(&s).is_err());
        s.flags = vendor::NVMF_SUBSYSTEM_CREATE;
        assert!(check_subsystem(&s).is_ok());
        s = ok;
        s.port_count = 2;
        s.ports[1].set(1);
        assert!(check_subsystem(&s).is_err(), "a port twice");
        s.ports[1].set(0);
        assert!(check_subsystem(&s).is_err(), "port 0");
        s = ok;
        s.ports[5].set(3);
        assert!(check_subsystem(&s).is_err(), "beyond the count");
        s = ok;
        s.port_count = 17;
        assert!(check_subsystem(&s).is_err());
        s = ok;
        s.host_count = 2;
        s.hosts[1] = s.hosts[0];
        assert!(check_subsystem(&s).is_err(), "a host twice");
        s.hosts[1] = [0; 224];
        assert!(check_subsystem(&s).is_err(), "an empty host");
        s = ok;
        s.hosts[3][0] = b'n';
        assert!(check_subsystem(&s).is_err(), "a host beyond the count");
        s = ok;
        s.rsvd3968[0] = 1;
        assert!(check_subsystem(&s).is_err());
        s = ok;
        s.port_count = 0;
        s.ports[0].set(0);
        assert!(
            check_subsystem(&s).unwrap().1.ports.is_empty(),
            "no port yet"
        );
    }

    #[test]
    fn namespaces_follow_the_file_rules() {
        let mut n = NvmfNamespace::zeroed();
        c_string_field(&mut n.nqn, b"nqn.2026-12.org.dpublk:a");
        n.nsid.set(1024);
        c_string_field(&mut n.volume, b"db-0.x_y");
        assert_eq!(
            check_namespace(&n, true),
            Ok(("nqn.2026-12.org.dpublk:a", 1024, "db-0.x_y"))
        );
        assert!(check_namespace(&n, false).is_err(), "a name in Remove");
        let mut bad = n;
        bad.nsid.set(1025);
        assert!(check_namespace(&bad, true).is_err());
        bad.nsid.set(0);
        assert!(check_namespace(&bad, true).is_err());
        bad = n;
        c_string_field(&mut bad.volume, b"a/b");
        assert!(check_namespace(&bad, true).is_err());
        bad.volume = [0; 32];
        assert!(check_namespace(&bad, true).is_err(), "no name");
        assert!(check_namespace(&bad, false).is_ok());
        bad.volume = [b'a'; 32];
        assert!(check_namespace(&bad, true).is_err(), "no NUL");
        bad = n;
        bad.rsvd260[3] = 1;
        assert!(check_namespace(&bad, true).is_err());
    }

    /// One volume, a file namespace in a temporary directory.
    struct OneVolume(Arc<dyn Namespace>);

    impl VolumeLookup for OneVolume {
        fn volume(&self, name: &str) -> Option<Arc<dyn Namespace>> {
            (name == "db0").then(|| Arc::clone(&self.0))
        }
    }

    /// What a refused command must leave alone: every subsystem's access
    /// and NSIDs.
    fn state(h: &HostTarget) -> Vec<(String, Access, Vec<u32>)> {
        h.existing().map_or_else(Vec::new, |t| {
            t.subsystems()
                .iter()
                .map(|s| {
                    (
                        s.nqn.clone(),
                        s.access(),
                        s.namespaces().keys().copied().collect(),
                    )
                })
                .collect()
        })
    }

    fn next(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    /// Flips bits, sets bytes to boundary values or cuts text fields short
    /// at random places of `bytes`.
    fn mutate(bytes: &mut [u8], seed: &mut u64) {
        for _ in 0..1 + next(seed) % 4 {
            let at = (next(seed) % bytes.len() as u64) as usize;
            match next(seed) % 4 {
                0 => bytes[at] ^= 1 << (next(seed) % 8),
                1 => bytes[at] = [0, 0xff, b' ', b'.', b':', 0x7f][(next(seed) % 6) as usize],
                2 => bytes[at] = 0,
                _ => bytes[at] = b'a' + (next(seed) % 26) as u8,
            }
        }
    }

    /// Mutated Subsystem Set, Remove and Namespace Add and Remove
    /// payloads (the driver's commands are untrusted): none panics, what
    /// is accepted follows the rules, what is refused changes nothing.
    #[test]
    fn mutated_payloads_are_refused_whole_or_applied_sound() {
        let dir = std::env::temp_dir().join(format!("dpuemu-configure-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ns = crate::namespace::FileNamespace::open(&dir.join("v.img"), Some(1 << 20)).unwrap();
        let volumes = OneVolume(Arc::new(ns));
        let h = HostTarget::default();
        let mut good = subsystem("nqn.2026-12.org.dpublk:m");
        good.flags = vendor::NVMF_SUBSYSTEM_CREATE;
        h.subsystem_set(good.as_bytes()).unwrap();
        let mut n = NvmfNamespace::zeroed();
        c_string_field(&mut n.nqn, b"nqn.2026-12.org.dpublk:m");
        n.nsid.set(1);
        c_string_field(&mut n.volume, b"db0");
        let mut seed = 0x5eed_u64;
        let (mut applied, mut refused) = (0, 0);
        for round in 0..20_000 {
            let before = state(&h);
            let result = match round % 4 {
                0 => {
                    let mut s = good;
                    s.flags = 0;
                    mutate(s.as_bytes_mut(), &mut seed);
                    let r = h.subsystem_set(s.as_bytes());
                    if r.is_ok() {
                        let (nqn, access) = check_subsystem(&s).unwrap();
                        assert!(valid_nqn(&nqn));
                        assert!(!access.allow_any_host || access.hosts.is_empty());
                        assert!(access.hosts.iter().all(|x| valid_nqn(x)));
                        assert!(access.ports.iter().all(|&p| p != 0));
                    }
                    r
                }
                1 => {
                    let mut m = n;
                    mutate(m.as_bytes_mut(), &mut seed);
                    h.namespace_add(m.as_bytes(), &volumes)
                }
                2 => {
                    let mut m = n;
                    m.volume = [0; 32];
                    mutate(m.as_bytes_mut(), &mut seed);
                    h.namespace_remove(m.as_bytes())
                }
                _ => {
                    let mut m = NvmfName::zeroed();
                    c_string_field(&mut m.nqn, b"nqn.2026-12.org.dpublk:m");
                    mutate(m.as_bytes_mut(), &mut seed);
                    h.subsystem_remove(m.as_bytes())
                }
            };
            match result {
                Ok(_) => applied += 1,
                Err(_) => {
                    refused += 1;
                    assert_eq!(
                        state(&h),
                        before,
                        "round {round}: a refusal changed the target"
                    );
                }
            }
            // Keep a subsystem to work on, and the volume exported half
            // the time.
            if h.existing()
                .and_then(|t| t.find_subsystem("nqn.2026-12.org.dpublk:m"))
                .is_none()
            {
                h.subsystem_set(good.as_bytes()).unwrap();
            }
            if round % 8 == 7 {
                let _ = h.namespace_add(n.as_bytes(), &volumes);
            }
        }
        assert!(
            applied > 1000 && refused > 1000,
            "{applied} applied, {refused} refused"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
