//! The target's configuration file (`dpuemu --nvmf-config FILE`), the
//! appliance mode's only input. Format (Documentation/nvme-tcp.rst):
//!
//! ```text
//! # A comment.
//! [port 1]
//! address 127.0.0.1
//! service 4420
//!
//! [subsystem nqn.2026-12.org.dpublk:appliance]
//! ports 1
//! host nqn.2014-08.org.nvmexpress:uuid:...
//! namespace 1 file /srv/images/a.img 1G
//! namespace 2 ssd 0
//! namespace 3 volume db0
//!
//! [remote-ssd shelf1]
//! address 192.0.2.7:4420
//! subsystem nqn.2026-12.org.example:backend
//! namespace 1
//!
//! [volume db0]
//! layout raid10
//! ssds 0 shelf1
//! size 1G
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use super::initiator::RemoteSpec;
use crate::cli::parse_size;

mod volume;

use volume::VolumeDraft;
pub use volume::{MemberRef, VolumeConfig};

/// The NQN of the discovery subsystem every port serves.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";
/// Default NVMe/TCP service (the IANA port of NVMe over TCP).
pub const DEFAULT_SERVICE: u16 = 4420;
/// Highest NSID a subsystem may use.
pub const MAX_NSID: u32 = 1024;
/// Longest NQN (the specification's 223 bytes).
pub const MAX_NQN: usize = 223;

/// One listening port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortConfig {
    /// Port ID (PORTID in the discovery log).
    pub id: u16,
    /// Where to listen.
    pub address: SocketAddr,
}

/// Where a namespace's blocks live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamespaceSource {
    /// An image file, created or extended to the size if one is given.
    File { path: PathBuf, size: Option<u64> },
    /// SSD image N of `--ssd` (its own NVMe function then refuses to
    /// enable: the target owns it).
    Ssd(usize),
    /// A namespace of a remote NVMe/TCP subsystem, reached with dpuemu's
    /// initiator.
    Remote(RemoteSpec),
    /// The accelerator's volume (or clone) of that name, opened from the
    /// SSDs at start-up.
    Volume(String),
}

/// A remote namespace that dpuemu uses as one more SSD of the accelerator
/// (`[remote-ssd NAME]`): volume families can place members on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteSsdConfig {
    /// The section's name, for the log.
    pub name: String,
    /// Where the namespace is.
    pub spec: RemoteSpec,
    /// Seconds the remote has to answer (`timeout`, default 10).
    pub timeout_secs: u32,
    /// Keep Alive Timeout in milliseconds asked for in Connect (`kato`,
    /// default 5000; 0 turns keep-alive off).
    pub kato_ms: u32,
    /// The namespace's size and block size when it does not answer at
    /// start-up (`size SIZE [BLOCK]`, block 512 or 4096, default 4096):
    /// with it the SSD starts absent (its member missing, the volume
    /// degraded) and joins when the remote answers with that geometry;
    /// without it dpuemu refuses to start. A remote that answers at
    /// start-up must have it too.
    pub geometry: Option<RemoteGeometry>,
}

/// The `kato` of a `[remote-ssd]` section: the default (Linux's hosts ask
/// for 5 s too), and the range: below 100 ms a Keep Alive every 50 ms would
/// be more traffic than watch; the top is the longest KATO dpuemu's target
/// grants ([`super::target::MAX_KATO_MS`]).
pub const DEFAULT_KATO_MS: u32 = 5_000;
const MIN_KATO_MS: u32 = 100;
const MAX_KATO_MS: u32 = super::target::MAX_KATO_MS;

/// A remote namespace's size in bytes and its block size as a shift.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteGeometry {
    pub size: u64,
    pub lba_shift: u8,
}

/// One I/O subsystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubsystemConfig {
    /// Subsystem NQN.
    pub nqn: String,
    /// Ports it is reachable through.
    pub ports: Vec<u16>,
    /// Host NQNs allowed to connect.
    pub hosts: Vec<String>,
    /// Any host may connect.
    pub allow_any_host: bool,
    /// Namespaces by NSID.
    pub namespaces: BTreeMap<u32, NamespaceSource>,
}

/// The whole configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetConfig {
    pub ports: Vec<PortConfig>,
    pub subsystems: Vec<SubsystemConfig>,
    /// Remote SSDs, in file order: they follow the `--ssd` images in the
    /// accelerator's SSD numbering.
    pub remote_ssds: Vec<RemoteSsdConfig>,
    /// Volumes made at start-up unless they exist.
    pub volumes: Vec<VolumeConfig>,
}

impl TargetConfig {
    /// The SSD number of `member` when dpuemu has `images` `--ssd`
    /// images (remote SSDs follow them in file order).
    pub fn ssd_number(&self, member: &MemberRef, images: usize) -> Option<usize> {
        match member {
            MemberRef::Number(n) => Some(*n),
            MemberRef::Remote(name) => self
                .remote_ssds
                .iter()
                .position(|r| &r.name == name)
                .map(|i| images + i),
        }
    }
}

/// Whether `name` can be a volume's name: 1 to 31 bytes of
/// `[A-Za-z0-9._-]`, as Volume Create accepts them.
pub fn valid_volume_name(name: &str) -> bool {
    (1..=31).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether `nqn` is a well-formed NQN: `nqn.` then printable ASCII without
/// spaces, at most 223 bytes.
pub fn valid_nqn(nqn: &str) -> bool {
    nqn.len() <= MAX_NQN
        && nqn.len() > 4
        && nqn.starts_with("nqn.")
        && nqn.bytes().all(|b| b.is_ascii_graphic())
}

enum Section {
    None,
    Port(usize),
    Subsystem(usize),
    RemoteSsd(usize),
    Volume(usize),
}

/// A `[remote-ssd]` section while it is read: its keys may come in any
/// order, so the spec is built at the end.
#[derive(Default)]
struct RemoteSsdDraft {
    name: String,
    line: usize,
    address: Option<SocketAddr>,
    subnqn: Option<String>,
    nsid: Option<u32>,
    timeout_secs: Option<u32>,
    kato_ms: Option<u32>,
    geometry: Option<RemoteGeometry>,
}

/// Parses the file's text. Errors name the line.
pub fn parse(text: &str) -> Result<TargetConfig, String> {
    let mut config = TargetConfig::default();
    let mut remote_ssds: Vec<RemoteSsdDraft> = Vec::new();
    let mut volumes: Vec<VolumeDraft> = Vec::new();
    let mut section = Section::None;
    for (index, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let at = |e: String| format!("line {}: {e}", index + 1);
        if let Some(header) = line.strip_prefix('[') {
            let header = header
                .strip_suffix(']')
                .ok_or_else(|| at("section header without ']'".into()))?;
            let header = header.trim();
            section = match header.strip_prefix("remote-ssd") {
                Some(name) if name.starts_with(char::is_whitespace) => {
                    let name = name.trim();
                    if !valid_volume_name(name) || remote_ssds.iter().any(|r| r.name == name) {
                        return Err(at(format!(
                            "remote SSD name '{name}' is not 1-31 of [A-Za-z0-9._-] or is used twice"
                        )));
                    }
                    remote_ssds.push(RemoteSsdDraft {
                        name: name.to_string(),
                        line: index + 1,
                        ..RemoteSsdDraft::default()
                    });
                    Section::RemoteSsd(remote_ssds.len() - 1)
                }
                _ => match header.strip_prefix("volume") {
                    Some(name) if name.starts_with(char::is_whitespace) => {
                        let draft = VolumeDraft::new(name.trim(), index + 1).map_err(at)?;
                        if volumes.iter().any(|v| v.name() == draft.name()) {
                            return Err(at(format!("volume {} defined twice", draft.name())));
                        }
                        volumes.push(draft);
                        Section::Volume(volumes.len() - 1)
                    }
                    _ => start_section(&mut config, header).map_err(at)?,
                },
            };
            continue;
        }
        let mut words = line.split_whitespace();
        let key = words.next().unwrap_or("");
        let values: Vec<&str> = words.collect();
        match section {
            Section::None => return Err(at(format!("'{key}' outside a section"))),
            Section::Volume(i) => volumes[i].line(key, &values).map_err(at)?,
            Section::RemoteSsd(i) => {
                remote_ssd_line(&mut remote_ssds[i], key, &values).map_err(at)?
            }
            Section::Port(i) => port_line(&mut config.ports[i], key, &values).map_err(at)?,
            Section::Subsystem(i) => {
                subsystem_line(&mut config.subsystems[i], key, &values).map_err(at)?
            }
        }
    }
    for draft in remote_ssds {
        config.remote_ssds.push(finish_remote_ssd(draft)?);
    }
    for draft in volumes {
        config.volumes.push(draft.finish()?);
    }
    check(&config)?;
    Ok(config)
}

/// `address`, `subsystem` and `namespace` of a `[remote-ssd]` section.
fn remote_ssd_line(r: &mut RemoteSsdDraft, key: &str, values: &[&str]) -> Result<(), String> {
    if key == "size" {
        r.geometry = Some(remote_geometry(values)?);
        return Ok(());
    }
    let v = one(key, values)?;
    match key {
        "address" => r.address = Some(remote_address(v)?),
        "subsystem" => {
            if !valid_nqn(v) || v == DISCOVERY_NQN {
                return Err(format!("'{v}' is not a subsystem NQN"));
            }
            r.subnqn = Some(v.to_string());
        }
        "namespace" => r.nsid = Some(remote_nsid(v)?),
        "timeout" => {
            r.timeout_secs = Some(
                v.parse()
                    .ok()
                    .filter(|s| (1..=600).contains(s))
                    .ok_or_else(|| format!("timeout '{v}' is not 1-600 seconds"))?,
            )
        }
        "kato" => {
            r.kato_ms = Some(
                v.parse()
                    .ok()
                    .filter(|ms| *ms == 0 || (MIN_KATO_MS..=MAX_KATO_MS).contains(ms))
                    .ok_or_else(|| {
                        format!("kato '{v}' is not 0 (off) or {MIN_KATO_MS}-{MAX_KATO_MS} ms")
                    })?,
            )
        }
        other => return Err(format!("unknown remote-ssd setting '{other}'")),
    }
    Ok(())
}

fn finish_remote_ssd(r: RemoteSsdDraft) -> Result<RemoteSsdConfig, String> {
    let missing = |what: &str| format!("line {}: [remote-ssd {}] needs '{what}'", r.line, r.name);
    let address = r.address.ok_or_else(|| missing("address"))?;
    let subnqn = r.subnqn.clone().ok_or_else(|| missing("subsystem"))?;
    Ok(RemoteSsdConfig {
        name: r.name,
        spec: RemoteSpec {
            address,
            subnqn,
            nsid: r.nsid.unwrap_or(1),
        },
        timeout_secs: r.timeout_secs.unwrap_or(10),
        kato_ms: r.kato_ms.unwrap_or(DEFAULT_KATO_MS),
        geometry: r.geometry,
    })
}

/// `size SIZE [BLOCK]` of a `[remote-ssd]` section: a whole number of
/// blocks of 512 or 4096 bytes (default 4096).
fn remote_geometry(values: &[&str]) -> Result<RemoteGeometry, String> {
    let (size, block) = match values {
        [size] => (*size, "4096"),
        [size, block] => (*size, *block),
        _ => return Err("'size' takes SIZE [BLOCK-SIZE]".into()),
    };
    let lba_shift = match block {
        "512" => 9,
        "4096" => 12,
        other => return Err(format!("block size '{other}' is not 512 or 4096")),
    };
    let size = parse_size(size)?;
    if size == 0 || size & ((1u64 << lba_shift) - 1) != 0 {
        return Err(format!(
            "size {size} is not a whole number of {block}-byte blocks"
        ));
    }
    Ok(RemoteGeometry { size, lba_shift })
}

fn remote_address(v: &str) -> Result<SocketAddr, String> {
    v.parse()
        .map_err(|_| format!("remote '{v}' is not ADDRESS:PORT ([IPv6]:PORT)"))
}

fn remote_nsid(v: &str) -> Result<u32, String> {
    v.parse()
        .ok()
        .filter(|&n: &u32| n > 0 && n < 0xffff_fffe)
        .ok_or_else(|| format!("remote NSID '{v}' is not valid"))
}

fn start_section(config: &mut TargetConfig, header: &str) -> Result<Section, String> {
    let (kind, name) = header.split_once(char::is_whitespace).ok_or_else(|| {
        format!(
            "'[{header}]': expected [port N], [subsystem NQN], [remote-ssd NAME] or [volume NAME]"
        )
    })?;
    let name = name.trim();
    match kind {
        "port" => {
            let id: u16 = name
                .parse()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("port ID '{name}' is not 1-65535"))?;
            if config.ports.iter().any(|p| p.id == id) {
                return Err(format!("port {id} defined twice"));
            }
            config.ports.push(PortConfig {
                id,
                address: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_SERVICE),
            });
            Ok(Section::Port(config.ports.len() - 1))
        }
        "subsystem" => {
            if !valid_nqn(name) || name == DISCOVERY_NQN {
                return Err(format!("'{name}' is not a subsystem NQN"));
            }
            if config.subsystems.iter().any(|s| s.nqn == name) {
                return Err(format!("subsystem {name} defined twice"));
            }
            config.subsystems.push(SubsystemConfig {
                nqn: name.to_string(),
                ports: Vec::new(),
                hosts: Vec::new(),
                allow_any_host: false,
                namespaces: BTreeMap::new(),
            });
            Ok(Section::Subsystem(config.subsystems.len() - 1))
        }
        other => Err(format!("unknown section '{other}'")),
    }
}

fn one<'a>(key: &str, values: &[&'a str]) -> Result<&'a str, String> {
    match values {
        [v] => Ok(v),
        _ => Err(format!("'{key}' takes one value")),
    }
}

fn port_line(port: &mut PortConfig, key: &str, values: &[&str]) -> Result<(), String> {
    match key {
        "address" => {
            let v = one(key, values)?;
            let ip: IpAddr = v
                .parse()
                .map_err(|_| format!("address '{v}' is not an IPv4 or IPv6 literal"))?;
            port.address.set_ip(ip);
        }
        "service" => {
            let v = one(key, values)?;
            let n: u16 = v
                .parse()
                .map_err(|_| format!("service '{v}' is not a TCP port number"))?;
            port.address.set_port(n);
        }
        other => return Err(format!("unknown port setting '{other}'")),
    }
    Ok(())
}

fn subsystem_line(s: &mut SubsystemConfig, key: &str, values: &[&str]) -> Result<(), String> {
    match key {
        "ports" => {
            if values.is_empty() {
                return Err("'ports' needs at least one port ID".into());
            }
            for v in values {
                let id: u16 = v
                    .parse()
                    .map_err(|_| format!("port ID '{v}' is not a number"))?;
                if !s.ports.contains(&id) {
                    s.ports.push(id);
                }
            }
        }
        "host" => {
            let v = one(key, values)?;
            if !valid_nqn(v) {
                return Err(format!("'{v}' is not a host NQN"));
            }
            if !s.hosts.iter().any(|h| h == v) {
                s.hosts.push(v.to_string());
            }
        }
        "allow-any-host" => {
            if !values.is_empty() {
                return Err("'allow-any-host' takes no value".into());
            }
            s.allow_any_host = true;
        }
        "namespace" => {
            let (nsid, source) = match values {
                [nsid, "file", path] => (
                    nsid,
                    NamespaceSource::File {
                        path: PathBuf::from(path),
                        size: None,
                    },
                ),
                [nsid, "file", path, size] => (
                    nsid,
                    NamespaceSource::File {
                        path: PathBuf::from(path),
                        size: Some(parse_size(size)?),
                    },
                ),
                [nsid, "ssd", index] => {
                    let i: usize = index
                        .parse()
                        .map_err(|_| format!("SSD index '{index}' is not a number"))?;
                    (nsid, NamespaceSource::Ssd(i))
                }
                [nsid, "volume", name] => {
                    if !valid_volume_name(name) {
                        return Err(format!(
                            "volume name '{name}' is not 1-31 of [A-Za-z0-9._-]"
                        ));
                    }
                    (nsid, NamespaceSource::Volume(name.to_string()))
                }
                [nsid, "remote", address, subnqn, rest @ ..] if rest.len() <= 1 => {
                    let address = remote_address(address)?;
                    if !valid_nqn(subnqn) {
                        return Err(format!("'{subnqn}' is not a subsystem NQN"));
                    }
                    let remote_nsid = match rest.first() {
                        Some(n) => remote_nsid(n)?,
                        None => 1,
                    };
                    (
                        nsid,
                        NamespaceSource::Remote(RemoteSpec {
                            address,
                            subnqn: subnqn.to_string(),
                            nsid: remote_nsid,
                        }),
                    )
                }
                _ => {
                    return Err(
                        "expected 'namespace NSID file PATH [SIZE]', 'namespace NSID ssd N', \
                         'namespace NSID volume NAME' or 'namespace NSID remote ADDRESS:PORT NQN [NSID]'"
                            .into(),
                    )
                }
            };
            let nsid: u32 = nsid
                .parse()
                .ok()
                .filter(|n| (1..=MAX_NSID).contains(n))
                .ok_or_else(|| format!("NSID '{nsid}' is not 1-{MAX_NSID}"))?;
            if s.namespaces.insert(nsid, source).is_some() {
                return Err(format!("NSID {nsid} defined twice"));
            }
        }
        other => return Err(format!("unknown subsystem setting '{other}'")),
    }
    Ok(())
}

/// Checks what only the whole file can tell.
fn check(config: &TargetConfig) -> Result<(), String> {
    if config.ports.is_empty() && config.remote_ssds.is_empty() && config.volumes.is_empty() {
        return Err("nothing to do: no [port], [remote-ssd] or [volume] section".into());
    }
    for v in &config.volumes {
        for m in &v.members {
            if let MemberRef::Remote(name) = m {
                if !config.remote_ssds.iter().any(|r| &r.name == name) {
                    return Err(format!("[volume {}]: no [remote-ssd {name}]", v.name));
                }
            }
        }
    }
    if config.ports.is_empty() && !config.subsystems.is_empty() {
        return Err("subsystems but no [port] section: the target would listen nowhere".into());
    }
    for (i, r) in config.remote_ssds.iter().enumerate() {
        if config.remote_ssds[..i].iter().any(|q| q.spec == r.spec) {
            return Err(format!(
                "[remote-ssd {}]: the same remote namespace as another remote SSD",
                r.name
            ));
        }
    }
    let mut volumes = BTreeMap::new();
    for (i, p) in config.ports.iter().enumerate() {
        if config.ports[..i].iter().any(|q| q.address == p.address) {
            return Err(format!("ports share the address {}", p.address));
        }
    }
    let mut ssds = BTreeMap::new();
    for s in &config.subsystems {
        if s.namespaces.is_empty() {
            return Err(format!("subsystem {} has no namespace", s.nqn));
        }
        if s.ports.is_empty() {
            return Err(format!("subsystem {} is on no port ('ports')", s.nqn));
        }
        if let Some(p) = s
            .ports
            .iter()
            .find(|&&p| !config.ports.iter().any(|q| q.id == p))
        {
            return Err(format!("subsystem {}: no [port {p}]", s.nqn));
        }
        if s.allow_any_host && !s.hosts.is_empty() {
            return Err(format!(
                "subsystem {}: 'allow-any-host' and a host list exclude each other",
                s.nqn
            ));
        }
        for source in s.namespaces.values() {
            if let NamespaceSource::Ssd(i) = source {
                if let Some(other) = ssds.insert(*i, &s.nqn) {
                    return Err(format!("SSD {i} exported twice (also by {other})"));
                }
            }
            if let NamespaceSource::Volume(name) = source {
                if let Some(other) = volumes.insert(name, &s.nqn) {
                    return Err(format!("volume {name} exported twice (also by {other})"));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# appliance
[port 1]
address 127.0.0.1
service 4421   # not the default
[port 2]
address ::1

[subsystem nqn.2026-12.org.dpublk:a]
ports 1 2
host nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000001
namespace 1 file /tmp/a.img 64M
namespace 7 ssd 0
namespace 8 remote 127.0.0.1:4421 nqn.2026-12.org.linux:nvmet 3
namespace 9 volume db-0.a
[remote-ssd shelf1]
namespace 2
subsystem nqn.2026-12.org.linux:shelf
address [::1]:4430
[remote-ssd shelf2]
address 127.0.0.1:4430
subsystem nqn.2026-12.org.linux:shelf
timeout 3
kato 250
size 64M 512
[subsystem nqn.2026-12.org.dpublk:b]
ports 2
allow-any-host
namespace 1 file /tmp/b.img
";

    #[test]
    fn sample_parses() {
        let c = parse(SAMPLE).expect("sample");
        assert_eq!(c.ports.len(), 2);
        assert_eq!(c.ports[0].address, "127.0.0.1:4421".parse().unwrap());
        assert_eq!(c.ports[1].address, "[::1]:4420".parse().unwrap());
        let a = &c.subsystems[0];
        assert_eq!(a.nqn, "nqn.2026-12.org.dpublk:a");
        assert_eq!(a.ports, vec![1, 2]);
        assert_eq!(a.hosts.len(), 1);
        assert!(!a.allow_any_host);
        assert_eq!(
            a.namespaces.get(&1),
            Some(&NamespaceSource::File {
                path: "/tmp/a.img".into(),
                size: Some(64 << 20)
            })
        );
        assert_eq!(a.namespaces.get(&7), Some(&NamespaceSource::Ssd(0)));
        assert_eq!(
            a.namespaces.get(&8),
            Some(&NamespaceSource::Remote(RemoteSpec {
                address: "127.0.0.1:4421".parse().unwrap(),
                subnqn: "nqn.2026-12.org.linux:nvmet".into(),
                nsid: 3
            }))
        );
        assert_eq!(
            a.namespaces.get(&9),
            Some(&NamespaceSource::Volume("db-0.a".into()))
        );
        assert!(c.subsystems[1].allow_any_host);
        assert_eq!(c.remote_ssds.len(), 2);
        assert_eq!(c.remote_ssds[0].name, "shelf1");
        assert_eq!(
            c.remote_ssds[0].spec,
            RemoteSpec {
                address: "[::1]:4430".parse().unwrap(),
                subnqn: "nqn.2026-12.org.linux:shelf".into(),
                nsid: 2
            }
        );
        assert_eq!(c.remote_ssds[1].spec.nsid, 1, "namespace 1 by default");
        assert_eq!(
            (c.remote_ssds[0].timeout_secs, c.remote_ssds[1].timeout_secs),
            (10, 3)
        );
        assert_eq!(
            (c.remote_ssds[0].kato_ms, c.remote_ssds[1].kato_ms),
            (DEFAULT_KATO_MS, 250)
        );
        assert_eq!(c.remote_ssds[0].geometry, None, "no size: must answer");
        assert_eq!(
            c.remote_ssds[1].geometry,
            Some(RemoteGeometry {
                size: 64 << 20,
                lba_shift: 9
            })
        );
        for bad in ["size 0", "size 1000", "size 8M 1024", "size 8M 512 x"] {
            let text =
                format!("[remote-ssd r]\naddress 127.0.0.1:4420\nsubsystem nqn.a.b\n{bad}\n");
            assert!(parse(&text).is_err(), "{bad}");
        }
        // Remote SSDs alone need no port: the target serves nothing.
        let only = parse(
            "[remote-ssd r]
address 127.0.0.1:4420
subsystem nqn.a.b
",
        )
        .expect("remote SSDs only");
        assert!(only.ports.is_empty() && only.subsystems.is_empty());
        // A [volume] names its SSDs by number or by remote SSD name.
        let made = parse(
            "[remote-ssd r]\naddress 127.0.0.1:4420\nsubsystem nqn.a.b\n\
             [volume v]\nlayout raid10\nssds 1 r\nsize 8M\n",
        )
        .expect("a volume on a remote SSD");
        let v = &made.volumes[0];
        assert_eq!(
            v.members,
            vec![MemberRef::Number(1), MemberRef::Remote("r".into())]
        );
        assert_eq!(made.ssd_number(&v.members[0], 2), Some(1));
        assert_eq!(
            made.ssd_number(&v.members[1], 2),
            Some(2),
            "after two images"
        );
    }

    #[test]
    fn the_appliance_sample_parses() {
        let c = parse(include_str!("../../../../samples/nvmf-appliance.conf")).expect("sample");
        assert_eq!(c.remote_ssds.len(), 1);
        assert_eq!(c.volumes.len(), 2);
        let db0 = &c.volumes[0];
        assert_eq!(c.ssd_number(&db0.members[1], 2), Some(2), "shelf1 is SSD 2");
        assert_eq!(
            c.subsystems[0].namespaces.get(&2),
            Some(&NamespaceSource::Volume("scratch".into()))
        );
    }

    #[test]
    fn mistakes_name_their_line() {
        let cases = [
            ("address 1.2.3.4\n", "line 1"),
            ("[port 0]\n", "not 1-65535"),
            ("[port 1]\n[port 1]\n", "twice"),
            ("[port 1]\naddress localhost\n", "literal"),
            ("[port 1]\nservice 70000\n", "TCP port"),
            ("[port 1]\n[subsystem nqn]\n", "not a subsystem NQN"),
            (
                "[port 1]\n[subsystem nqn.2014-08.org.nvmexpress.discovery]\n",
                "not a subsystem",
            ),
            ("[port 1]\n[subsystem nqn.x.y]\nnamespace 0 ssd 0\n", "NSID"),
            ("[port 1]\n[subsystem nqn.x.y]\nnamespace 1 disk /a\n", "expected"),
            ("[port 1]\n[subsystem nqn.x.y]\nhost bob\n", "host NQN"),
            ("[port 1]\n[subsystem nqn.x.y]\nnamespace 1 remote localhost:1 nqn.a.b\n", "ADDRESS:PORT"),
            ("[port 1]\n[subsystem nqn.x.y]\nnamespace 1 remote 1.2.3.4:1 bob\n", "not a subsystem NQN"),
            ("[port 1]\n[subsystem nqn.x.y]\nnamespace 1 remote 1.2.3.4:1 nqn.a.b 0\n", "remote NSID"),
            ("[port 1]\n[subsystem nqn.x.y]\nports 1\n", "no namespace"),
            ("[port 1]\n[subsystem nqn.x.y]\nnamespace 1 ssd 0\n", "no port"),
            ("[port 1]\n[subsystem nqn.x.y]\nports 2\nnamespace 1 ssd 0\n", "no [port 2]"),
            (
                "[port 1]\n[subsystem nqn.x.y]\nports 1\nallow-any-host\nhost nqn.h.1\nnamespace 1 ssd 0\n",
                "exclude",
            ),
            (
                "[port 1]\n[subsystem nqn.x.y]\nports 1\nnamespace 1 ssd 0\n[subsystem nqn.x.z]\nports 1\nnamespace 1 ssd 0\n",
                "twice",
            ),
            ("", "no [port]"),
            ("[port 1]\n[port 2]\n", "share"),
            ("[disk x]\n", "unknown section"),
            ("[volume x]\n", "needs 'layout'"),
            ("[volume x]\n[volume x]\n", "defined twice"),
            ("[volume x]\nlayout single\nsize 4M\nssds shelf\n", "no [remote-ssd shelf]"),
            ("[port 1]\n[subsystem nqn.x.y]\nnamespace 1 volume a/b\n", "volume name"),
            ("[port 1]\n[subsystem nqn.x.y]\nnamespace 1 volume\n", "expected"),
            (
                "[port 1]\n[subsystem nqn.x.y]\nports 1\nnamespace 1 volume v\nnamespace 2 volume v\n",
                "volume v exported twice",
            ),
            ("[remote-ssd]\n", "expected"),
            ("[remote-ssd a b]\n", "remote SSD name"),
            ("[remote-ssd a]\n[remote-ssd a]\n", "used twice"),
            ("[remote-ssd a]\naddress 1.2.3.4:1\n", "needs 'subsystem'"),
            ("[remote-ssd a]\nsubsystem nqn.a.b\n", "needs 'address'"),
            ("[remote-ssd a]\naddress 1.2.3.4\n", "ADDRESS:PORT"),
            ("[remote-ssd a]\nnamespace 0\n", "remote NSID"),
            ("[remote-ssd a]\nsubsystem nqn.2014-08.org.nvmexpress.discovery\n", "not a subsystem"),
            ("[remote-ssd a]\nhost nqn.a.b\n", "unknown remote-ssd setting"),
            ("[remote-ssd a]\ntimeout 0\n", "1-600 seconds"),
            ("[remote-ssd a]\ntimeout 601\n", "1-600 seconds"),
            ("[remote-ssd a]\nkato 99\n", "0 (off) or 100-300000 ms"),
            ("[remote-ssd a]\nkato 300001\n", "0 (off) or 100-300000 ms"),
            ("[remote-ssd a]\nkato -1\n", "0 (off) or 100-300000 ms"),
            ("[remote-ssd a]\naddress 1.2.3.4:1 1.2.3.4:2\n", "one value"),
            (
                "[remote-ssd a]\naddress 1.2.3.4:1\nsubsystem nqn.a.b\n\
                 [remote-ssd b]\naddress 1.2.3.4:1\nsubsystem nqn.a.b\nnamespace 1\n",
                "same remote namespace",
            ),
            ("[remote-ssd a]\naddress 1.2.3.4:1\nsubsystem nqn.a.b\n[subsystem nqn.x.y]\n", "no [port]"),
        ];
        for (text, want) in cases {
            match parse(text) {
                Ok(c) => panic!("{text:?} accepted: {c:?}"),
                Err(e) => assert!(e.contains(want), "{text:?}: '{e}' lacks '{want}'"),
            }
        }
        let long = format!("nqn.{}", "x".repeat(220));
        assert!(!valid_nqn(&long));
        assert!(valid_nqn(&long[..MAX_NQN]));
    }
}
