//! The target: its subsystems, listeners, and the controllers that
//! connections create and join.

use std::collections::BTreeMap;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use log::{info, warn};

use super::config::{NamespaceSource, TargetConfig};
use super::connection;
use super::initiator::RemoteNamespace;
use crate::namespace::{FileNamespace, Namespace};
use crate::ownership::SsdOwnership;

/// Most connections served at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 256;
/// Highest controller ID handed out (0xFFF0 and above are reserved).
const MAX_CNTLID: u16 = 0xffef;
/// The first controller ID a target hands out: the two nodes of a
/// high-availability pair number their controllers apart, since Linux's
/// host refuses two controllers of one subsystem with the same ID.
pub static FIRST_CNTLID: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(1);
/// The longest Keep Alive Timeout granted (5 minutes); a longer one asked
/// for in Connect or Set Features is clamped to it (and Get Features says
/// so). Clamped rather than refused: a host asking for a long KATO is
/// harmless and should connect, but a silent host must not hold a
/// controller, its ID and its connection threads for up to 49 days.
pub const MAX_KATO_MS: u32 = 300_000;
/// The most the Keep Alive Timer waits past KATO.
const KATO_GRACE_MS: u64 = 2_000;
/// How often the keep-alive watchdog looks at the most, and at the least.
const WATCHDOG_MAX_PERIOD: Duration = Duration::from_millis(500);
const WATCHDOG_MIN_PERIOD: Duration = Duration::from_millis(20);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The accelerator's open volumes by name, for `namespace N volume NAME`.
pub trait VolumeLookup {
    /// The volume's namespace, if it is open.
    fn volume(&self, name: &str) -> Option<Arc<dyn Namespace>>;
}

/// No volumes at all (a target without an accelerator).
#[cfg(test)]
pub struct NoVolumes;

#[cfg(test)]
impl VolumeLookup for NoVolumes {
    fn volume(&self, _name: &str) -> Option<Arc<dyn Namespace>> {
        None
    }
}

/// The SSD images a configuration exports, taken from the accelerator.
pub struct ClaimedSsds(BTreeMap<usize, Arc<dyn Namespace>>);

/// Takes the SSDs that `config` exports (`namespace N ssd I`) for the
/// target: they become in use, so neither their own NVMe function nor the
/// volume manager uses them. Done before the volume manager looks for
/// families. Nothing is taken if one of them cannot be.
pub fn claim_ssds(
    config: &TargetConfig,
    ssds: &[(Arc<dyn Namespace>, Arc<SsdOwnership>)],
) -> Result<ClaimedSsds, String> {
    let mut wanted = BTreeMap::new();
    for s in &config.subsystems {
        for (&nsid, source) in &s.namespaces {
            let NamespaceSource::Ssd(n) = source else {
                continue;
            };
            let (media, ownership) = ssds
                .get(*n)
                .ok_or_else(|| format!("{} namespace {nsid}: no SSD {n} (see --ssd)", s.nqn))?;
            if ownership.is_attached() {
                return Err(format!(
                    "{} namespace {nsid}: SSD {n} already belongs to the accelerator",
                    s.nqn
                ));
            }
            wanted.insert(*n, (media.clone(), ownership.clone()));
        }
    }
    for (_, ownership) in wanted.values() {
        ownership.attach_in_use();
    }
    Ok(ClaimedSsds(
        wanted.into_iter().map(|(n, (m, _))| (n, m)).collect(),
    ))
}

/// Who may reach a subsystem, and where: what Subsystem Set replaces.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Access {
    /// Ports it is reachable through.
    pub ports: Vec<u16>,
    /// Hosts allowed to connect (unless `allow_any_host`).
    pub hosts: Vec<String>,
    /// Any host may connect.
    pub allow_any_host: bool,
}

/// The namespaces of a subsystem by NSID.
pub type NamespaceMap = BTreeMap<u32, Arc<dyn Namespace>>;

/// An I/O subsystem. Its access and namespaces may change while
/// controllers use it (the host's configfs, `configure.rs`): a command
/// takes a snapshot of the namespaces ([`Subsystem::namespaces`]) and
/// works on that.
pub struct Subsystem {
    /// Subsystem NQN.
    pub nqn: String,
    /// Serial number reported by its controllers.
    pub serial: String,
    access: RwLock<Access>,
    namespaces: RwLock<Arc<NamespaceMap>>,
}

impl Subsystem {
    /// A subsystem reachable as `access` says, with `namespaces`.
    pub fn new(nqn: &str, serial: String, access: Access, namespaces: NamespaceMap) -> Self {
        Self {
            nqn: nqn.to_string(),
            serial,
            access: RwLock::new(access),
            namespaces: RwLock::new(Arc::new(namespaces)),
        }
    }

    /// Whether `host` may connect.
    pub fn allows(&self, host: &str) -> bool {
        let a = read(&self.access);
        a.allow_any_host || a.hosts.iter().any(|h| h == host)
    }

    /// Whether the subsystem is served on port `port`.
    pub fn on_port(&self, port: u16) -> bool {
        read(&self.access).ports.contains(&port)
    }

    /// Its ports, hosts and allow-any-host setting.
    pub fn access(&self) -> Access {
        read(&self.access).clone()
    }

    /// The namespaces now (a snapshot: later changes do not alter it).
    pub fn namespaces(&self) -> Arc<NamespaceMap> {
        Arc::clone(&read(&self.namespaces))
    }

    /// Replaces who may reach the subsystem and where.
    pub(super) fn set_access(&self, access: Access) {
        *self.access.write().unwrap_or_else(|p| p.into_inner()) = access;
    }

    /// Changes the namespaces with `change`, which sees a copy of them
    /// (so a command's snapshot never changes under it).
    pub(super) fn change_namespaces<R>(&self, change: impl FnOnce(&mut NamespaceMap) -> R) -> R {
        let mut guard = self.namespaces.write().unwrap_or_else(|p| p.into_inner());
        let mut copy: NamespaceMap = (**guard).clone();
        let result = change(&mut copy);
        *guard = Arc::new(copy);
        result
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

/// A listening port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Port {
    /// Port ID.
    pub id: u16,
    /// The address it listens on (the bound one, so port 0 is resolved).
    pub address: SocketAddr,
}

/// A port and its listener thread.
struct Listening {
    port: Port,
    /// Set to stop this listener alone (Port Remove).
    stop: Arc<AtomicBool>,
    /// The listening socket (a second handle), shut down to wake the
    /// thread blocked in accept().
    socket: Option<Arc<TcpListener>>,
    thread: Option<thread::JoinHandle<()>>,
}

/// Why a port could not be added.
#[derive(Debug)]
pub enum PortError {
    /// A port with that ID listens already.
    Exists,
    /// Another port of the target listens on that address.
    AddressTaken,
    /// The address cannot be bound.
    Bind(io::Error),
    /// No listener thread could be started.
    Thread(io::Error),
}

/// Ends a connection from another thread than the one serving it.
pub struct Closer(Option<TcpStream>);

impl Closer {
    /// Closes through a clone of the connection's socket.
    pub fn socket(stream: TcpStream) -> Self {
        Self(Some(stream))
    }

    /// A connection nothing else can end (a test's in-memory stream, which
    /// ends by itself).
    #[cfg(test)]
    pub fn none() -> Self {
        Self(None)
    }

    fn close(&self) {
        if let Some(s) = &self.0 {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// Controller registers a host reads and writes with Property Get/Set.
#[derive(Clone, Copy, Debug, Default)]
pub struct Registers {
    pub cc: u32,
    pub csts: u32,
}

/// A controller: created by an admin queue's Connect, joined by I/O
/// queues' Connects with its CNTLID, gone when its admin queue closes or
/// its keep-alive timer expires.
pub struct FabricsController {
    /// Controller ID.
    pub cntlid: u16,
    /// The I/O subsystem, or `None` for a discovery controller.
    pub subsystem: Option<Arc<Subsystem>>,
    /// The host that created it.
    pub hostnqn: String,
    /// Host identifier from the Connect data.
    pub hostid: [u8; 16],
    /// The port it was created through.
    pub port: u16,
    /// CC and CSTS.
    pub registers: Mutex<Registers>,
    /// Keep Alive Timeout in milliseconds (0: off), at most
    /// [`MAX_KATO_MS`].
    pub kato_ms: AtomicU32,
    /// When it was created: the origin of `last_command_ms`.
    created: Instant,
    /// When the last command (Keep Alive or any other, on any of its
    /// queues) arrived, in ms since `created`: the Keep Alive Timer.
    last_command_ms: AtomicU64,
    /// I/O queues granted by Set Features Number of Queues.
    pub io_queues: AtomicU32,
    /// I/O queue IDs with a connection.
    pub connected: Mutex<Vec<u16>>,
    /// The closers of its connections by queue ID, used when it goes.
    sockets: Mutex<Vec<(u16, Closer)>>,
    /// Set once it is torn down.
    pub dead: AtomicBool,
    /// Its Asynchronous Event Requests and what they may report.
    pub events: connection::AsyncEvents,
}

impl FabricsController {
    /// Registers the closer of queue `qid`'s connection for teardown;
    /// fails if the controller is already gone.
    pub fn attach(&self, qid: u16, closer: Closer) -> io::Result<()> {
        let mut sockets = lock(&self.sockets);
        if self.dead.load(Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "controller gone",
            ));
        }
        sockets.push((qid, closer));
        Ok(())
    }

    /// Forgets I/O queue `qid` when its connection ends: its socket and its
    /// queue ID, which a new Connect may then use again.
    pub fn detach_queue(&self, qid: u16) {
        lock(&self.sockets).retain(|(id, _)| *id != qid);
        lock(&self.connected).retain(|&id| id != qid);
    }

    /// Ends every connection of the controller.
    fn shut_down(&self) {
        let sockets = {
            let mut s = lock(&self.sockets);
            self.dead.store(true, Ordering::Release);
            std::mem::take(&mut *s)
        };
        for (_, closer) in sockets {
            closer.close();
        }
    }

    /// Whether the Keep Alive Timer expired: no command for KATO plus a
    /// grace of KATO (at most 2 s), since a host sends Keep Alive at about
    /// half of it and a guest under emulation can be late.
    fn keep_alive_expired(&self, now: Instant) -> bool {
        let kato = u64::from(self.kato_ms.load(Ordering::Relaxed));
        // A command may have arrived after `now` was read: no underflow.
        let silent = (now.duration_since(self.created).as_millis() as u64)
            .saturating_sub(self.last_command_ms.load(Ordering::Relaxed));
        kato != 0 && silent > kato + kato.min(KATO_GRACE_MS)
    }

    /// Restarts the Keep Alive Timer: the host sent a command. Any
    /// command does, as with Traffic Based Keep Alive, so a busy host
    /// needs no Keep Alive to stay connected.
    pub fn keep_alive(&self) {
        let now = self.created.elapsed().as_millis() as u64;
        self.last_command_ms.store(now, Ordering::Relaxed);
    }

    /// Sets the KATO (Connect or Set Features), clamped to
    /// [`MAX_KATO_MS`], and restarts the timer.
    pub fn set_kato(&self, kato_ms: u32) {
        self.kato_ms
            .store(kato_ms.min(MAX_KATO_MS), Ordering::Relaxed);
        self.keep_alive();
    }
}

/// Why a Connect was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectError {
    /// An I/O queue named a controller that does not exist, belongs to
    /// another host or subsystem, or is not enabled.
    UnknownController,
    /// No controller ID left.
    NoControllerId,
}

/// The whole target.
///
/// Lock order: `ports`, then `subsystems`, then `controllers`; no lock is
/// held while a listener thread is joined.
pub struct Target {
    /// I/O subsystems.
    subsystems: RwLock<Vec<Arc<Subsystem>>>,
    /// Listening ports with their listener threads.
    ports: Mutex<Vec<Listening>>,
    controllers: Mutex<BTreeMap<u16, Arc<FabricsController>>>,
    next_cntlid: Mutex<u16>,
    /// Serial numbers handed to subsystems so far.
    next_serial: AtomicU32,
    connections: AtomicU32,
    /// Bumped when the discovery log changes (GENCTR).
    generation: AtomicU64,
    /// Set by [`Target::shut_down`]: listeners and the watchdog end.
    stopping: AtomicBool,
    /// The watchdog thread, joined by [`Target::shut_down`].
    watchdog: Mutex<Option<thread::JoinHandle<()>>>,
}

impl Target {
    /// Opens the namespaces of `config` (`ssds` are dpuemu's SSD images
    /// with their ownership), binds every port and starts serving. A
    /// `volume` namespace is refused: see [`Target::start_with`].
    #[cfg(test)]
    pub fn start(
        config: &TargetConfig,
        ssds: &[(Arc<dyn Namespace>, Arc<SsdOwnership>)],
    ) -> Result<Arc<Self>, String> {
        let claimed = claim_ssds(config, ssds)?;
        Self::start_with(config, &claimed, &NoVolumes)
    }

    /// Opens the namespaces of `config` with the SSDs [`claim_ssds`] took
    /// and the volumes `volumes` finds, binds every port and starts
    /// serving.
    pub fn start_with(
        config: &TargetConfig,
        claimed: &ClaimedSsds,
        volumes: &dyn VolumeLookup,
    ) -> Result<Arc<Self>, String> {
        let mut subsystems = Vec::new();
        for (i, s) in config.subsystems.iter().enumerate() {
            let mut namespaces = BTreeMap::new();
            for (&nsid, source) in &s.namespaces {
                let ns: Arc<dyn Namespace> = match source {
                    NamespaceSource::File { path, size } => {
                        Arc::new(FileNamespace::open(path, *size).map_err(|e| {
                            format!("{} namespace {nsid}: {}: {e}", s.nqn, path.display())
                        })?)
                    }
                    NamespaceSource::Remote(spec) => {
                        Arc::new(RemoteNamespace::connect(spec.clone()).map_err(|e| {
                            format!(
                                "{} namespace {nsid}: remote {} {} namespace {}: {e}",
                                s.nqn, spec.address, spec.subnqn, spec.nsid
                            )
                        })?)
                    }
                    NamespaceSource::Ssd(n) => claimed.0.get(n).cloned().ok_or_else(|| {
                        format!("{} namespace {nsid}: SSD {n} was not claimed", s.nqn)
                    })?,
                    NamespaceSource::Volume(name) => volumes.volume(name).ok_or_else(|| {
                        format!(
                            "{} namespace {nsid}: no open volume '{name}' \
                             (not on the SSDs, locked by encryption, or its family failed)",
                            s.nqn
                        )
                    })?,
                };
                namespaces.insert(nsid, ns);
            }
            subsystems.push(Arc::new(Subsystem::new(
                &s.nqn,
                format!("DPUEMU-NVMF{i}"),
                Access {
                    ports: s.ports.clone(),
                    hosts: s.hosts.clone(),
                    allow_any_host: s.allow_any_host,
                },
                namespaces,
            )));
        }
        let target = Self::empty()?;
        target
            .next_serial
            .store(subsystems.len() as u32, Ordering::Relaxed);
        *target.subsystems.write().unwrap_or_else(|p| p.into_inner()) = subsystems;
        for p in &config.ports {
            if let Err(e) = target.add_port(p.id, p.address) {
                let why = match e {
                    PortError::Bind(e) | PortError::Thread(e) => e.to_string(),
                    PortError::Exists | PortError::AddressTaken => "defined twice".into(),
                };
                target.stop_everything();
                return Err(format!("nvmf port {}: {}: {why}", p.id, p.address));
            }
        }
        for s in read(&target.subsystems).iter() {
            let a = s.access();
            info!(
                "nvmf: subsystem {} on ports {:?}: namespaces {:?}, {}",
                s.nqn,
                a.ports,
                s.namespaces().keys().collect::<Vec<_>>(),
                if a.allow_any_host {
                    "any host".to_string()
                } else {
                    format!("hosts {:?}", a.hosts)
                }
            );
        }
        Ok(target)
    }

    /// A target with no port and no subsystem yet, its keep-alive
    /// watchdog running: what the host's configfs starts from.
    pub fn empty() -> Result<Arc<Self>, String> {
        let target = Arc::new(Self {
            subsystems: RwLock::new(Vec::new()),
            ports: Mutex::new(Vec::new()),
            controllers: Mutex::new(BTreeMap::new()),
            next_cntlid: Mutex::new(FIRST_CNTLID.load(Ordering::Relaxed)),
            next_serial: AtomicU32::new(0),
            connections: AtomicU32::new(0),
            generation: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
            watchdog: Mutex::new(None),
        });
        let t = Arc::clone(&target);
        let watchdog = thread::Builder::new()
            .name("nvmf-keepalive".into())
            .spawn(move || t.keep_alive_loop())
            .map_err(|e| format!("nvmf: cannot start the keep-alive watchdog: {e}"))?;
        *lock(&target.watchdog) = Some(watchdog);
        Ok(target)
    }

    /// Binds `address` as port `id` and starts listening.
    pub fn add_port(self: &Arc<Self>, id: u16, address: SocketAddr) -> Result<Port, PortError> {
        let mut ports = lock(&self.ports);
        if ports.iter().any(|l| l.port.id == id) {
            return Err(PortError::Exists);
        }
        if ports
            .iter()
            .any(|l| l.port.address == address && address.port() != 0)
        {
            return Err(PortError::AddressTaken);
        }
        let listener = TcpListener::bind(address).map_err(PortError::Bind)?;
        let address = listener.local_addr().map_err(PortError::Bind)?;
        // No second handle only if the process is out of descriptors; the
        // wake-up connection then has to do.
        let socket = listener.try_clone().ok().map(Arc::new);
        let stop = Arc::new(AtomicBool::new(false));
        let t = Arc::clone(self);
        let flag = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name(format!("nvmf-port{id}"))
            .spawn(move || t.accept_loop(id, listener, &flag))
            .map_err(PortError::Thread)?;
        let port = Port { id, address };
        ports.push(Listening {
            port,
            stop,
            socket,
            thread: Some(thread),
        });
        self.generation.fetch_add(1, Ordering::AcqRel);
        info!("nvmf: port {id} listening on {address}");
        Ok(port)
    }

    /// Stops listening on port `id` and tears down every controller made
    /// through it (their connections close). False if there is no such
    /// port. Connections through it that have no controller yet are
    /// refused at their Connect (the port is gone).
    pub fn remove_port(&self, id: u16) -> bool {
        let listening = {
            let mut ports = lock(&self.ports);
            let Some(i) = ports.iter().position(|l| l.port.id == id) else {
                return false;
            };
            ports.remove(i)
        };
        self.generation.fetch_add(1, Ordering::AcqRel);
        Self::stop_listener(listening);
        self.remove_controllers_where(|c| c.port == id);
        info!("nvmf: port {id} removed");
        true
    }

    /// Ends a listener thread: sets its flag, wakes its accept() (shutting
    /// the listening socket down makes Linux's accept() fail at once; a
    /// connection is the fallback), and waits for it.
    fn stop_listener(mut l: Listening) {
        l.stop.store(true, Ordering::Release);
        if let Some(socket) = &l.socket {
            use std::os::fd::AsRawFd;
            // SAFETY: `shutdown` only changes the state of the socket
            // behind the descriptor, which `socket` owns and keeps open for
            // the duration of the call; no memory is passed.
            unsafe { libc::shutdown(socket.as_raw_fd(), libc::SHUT_RDWR) };
        }
        let mut wake = l.port.address;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        if let Some(h) = l.thread.take() {
            if h.join().is_err() {
                warn!("nvmf: the listener of port {} panicked", l.port.id);
            }
        }
    }

    /// Tears down every controller `doomed` picks.
    fn remove_controllers_where(&self, doomed: impl Fn(&FabricsController) -> bool) {
        let ids: Vec<u16> = lock(&self.controllers)
            .values()
            .filter(|c| doomed(c))
            .map(|c| c.cntlid)
            .collect();
        for id in ids {
            self.remove_controller(id);
        }
    }

    /// The listening ports.
    #[cfg(test)]
    pub fn ports(&self) -> Vec<Port> {
        lock(&self.ports).iter().map(|l| l.port).collect()
    }

    /// Port `id`, if it listens.
    pub fn port(&self, id: u16) -> Option<Port> {
        lock(&self.ports)
            .iter()
            .find(|l| l.port.id == id)
            .map(|l| l.port)
    }

    /// The I/O subsystems.
    pub fn subsystems(&self) -> Vec<Arc<Subsystem>> {
        read(&self.subsystems).clone()
    }

    /// The discovery log's generation counter.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Creates subsystem `nqn` with `access` and no namespace (`create`),
    /// or replaces the access of the existing one (its namespaces stay).
    /// Controllers made through a port it is no longer on are torn down;
    /// hosts already connected stay connected when they leave the list (as
    /// with nvmet), new Connects see the new list. Fails with whether the
    /// subsystem exists when `create` says it should not, or the other way
    /// round.
    pub fn set_subsystem(&self, nqn: &str, access: Access, create: bool) -> Result<(), bool> {
        let created = {
            let mut subsystems = self.subsystems.write().unwrap_or_else(|p| p.into_inner());
            let existing = subsystems.iter().find(|s| s.nqn == nqn);
            if existing.is_some() == create {
                return Err(existing.is_some());
            }
            if let Some(s) = existing {
                s.set_access(access.clone());
                false
            } else {
                let n = self.next_serial.fetch_add(1, Ordering::Relaxed);
                subsystems.push(Arc::new(Subsystem::new(
                    nqn,
                    format!("DPUEMU-NVMF{n}"),
                    access.clone(),
                    NamespaceMap::new(),
                )));
                true
            }
        };
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.remove_controllers_where(|c| {
            c.subsystem.as_ref().is_some_and(|s| s.nqn == nqn) && !access.ports.contains(&c.port)
        });
        info!(
            "nvmf: subsystem {nqn} {}: ports {:?}, {}",
            if created { "created" } else { "changed" },
            access.ports,
            if access.allow_any_host {
                "any host".to_string()
            } else {
                format!("hosts {:?}", access.hosts)
            }
        );
        Ok(())
    }

    /// Subsystem `nqn`, reachable or not.
    pub fn find_subsystem(&self, nqn: &str) -> Option<Arc<Subsystem>> {
        read(&self.subsystems)
            .iter()
            .find(|s| s.nqn == nqn)
            .cloned()
    }

    /// Removes subsystem `nqn` and tears its controllers down.
    pub fn remove_subsystem(&self, nqn: &str) -> bool {
        let removed = {
            let mut subsystems = self.subsystems.write().unwrap_or_else(|p| p.into_inner());
            let before = subsystems.len();
            subsystems.retain(|s| s.nqn != nqn);
            subsystems.len() != before
        };
        if removed {
            self.generation.fetch_add(1, Ordering::AcqRel);
            self.remove_controllers_where(|c| c.subsystem.as_ref().is_some_and(|s| s.nqn == nqn));
            info!("nvmf: subsystem {nqn} removed");
        }
        removed
    }

    /// Stops the listeners and the watchdog (start-up failed half way).
    fn stop_everything(&self) {
        self.stopping.store(true, Ordering::Release);
        let ports = std::mem::take(&mut *lock(&self.ports));
        for l in ports {
            Self::stop_listener(l);
        }
    }

    fn accept_loop(self: Arc<Self>, port: u16, listener: TcpListener, stop: &AtomicBool) {
        for stream in listener.incoming() {
            if self.stopping.load(Ordering::Acquire) || stop.load(Ordering::Acquire) {
                return;
            }
            let stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    warn!("nvmf port {port}: accept: {e}");
                    thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            let peer = stream
                .peer_addr()
                .map_or_else(|_| "?".to_string(), |a| a.to_string());
            if self.connections.fetch_add(1, Ordering::AcqRel) as usize >= MAX_CONNECTIONS {
                self.connections.fetch_sub(1, Ordering::AcqRel);
                warn!("nvmf port {port}: {peer} refused: {MAX_CONNECTIONS} connections already");
                continue;
            }
            let t = Arc::clone(&self);
            let spawned = thread::Builder::new()
                .name(format!("nvmf-{peer}"))
                .spawn(move || {
                    connection::serve(&t, port, stream, &peer);
                    t.connections.fetch_sub(1, Ordering::AcqRel);
                });
            if let Err(e) = spawned {
                self.connections.fetch_sub(1, Ordering::AcqRel);
                warn!("nvmf port {port}: cannot start a connection thread: {e}");
            }
        }
    }

    fn keep_alive_loop(self: Arc<Self>) {
        while !self.stopping.load(Ordering::Acquire) {
            // A quarter of the shortest KATO, so that a short one is
            // noticed on time, and no wake-up every 20 ms without one.
            let period = lock(&self.controllers)
                .values()
                .map(|c| c.kato_ms.load(Ordering::Relaxed))
                .filter(|&kato| kato != 0)
                .min()
                .map_or(WATCHDOG_MAX_PERIOD, |kato| {
                    Duration::from_millis(u64::from(kato) / 4)
                })
                .clamp(WATCHDOG_MIN_PERIOD, WATCHDOG_MAX_PERIOD);
            thread::sleep(period);
            let now = Instant::now();
            let expired: Vec<Arc<FabricsController>> = lock(&self.controllers)
                .values()
                .filter(|c| c.keep_alive_expired(now))
                .cloned()
                .collect();
            for c in expired {
                warn!(
                    "nvmf: controller {} of {}: keep-alive timeout ({} ms): torn down",
                    c.cntlid,
                    c.hostnqn,
                    c.kato_ms.load(Ordering::Relaxed)
                );
                self.remove_controller(c.cntlid);
            }
        }
    }

    /// The I/O subsystem `nqn` if it is on `port` and the port listens.
    pub fn subsystem(&self, nqn: &str, port: u16) -> Option<Arc<Subsystem>> {
        self.port(port)?;
        read(&self.subsystems)
            .iter()
            .find(|s| s.nqn == nqn && s.on_port(port))
            .cloned()
    }

    /// Creates a controller for an admin queue's Connect.
    pub fn create_controller(
        &self,
        subsystem: Option<Arc<Subsystem>>,
        hostnqn: &str,
        hostid: [u8; 16],
        port: u16,
        kato_ms: u32,
    ) -> Result<Arc<FabricsController>, ConnectError> {
        let mut controllers = lock(&self.controllers);
        let mut next = lock(&self.next_cntlid);
        let start = *next;
        while controllers.contains_key(&*next) {
            *next = if *next >= MAX_CNTLID { 1 } else { *next + 1 };
            if *next == start {
                return Err(ConnectError::NoControllerId);
            }
        }
        let cntlid = *next;
        *next = if cntlid >= MAX_CNTLID { 1 } else { cntlid + 1 };
        let c = Arc::new(FabricsController {
            cntlid,
            subsystem,
            hostnqn: hostnqn.to_string(),
            hostid,
            port,
            registers: Mutex::new(Registers::default()),
            kato_ms: AtomicU32::new(kato_ms.min(MAX_KATO_MS)),
            created: Instant::now(),
            last_command_ms: AtomicU64::new(0),
            io_queues: AtomicU32::new(0),
            connected: Mutex::new(Vec::new()),
            sockets: Mutex::new(Vec::new()),
            dead: AtomicBool::new(false),
            events: connection::AsyncEvents::default(),
        });
        controllers.insert(cntlid, Arc::clone(&c));
        Ok(c)
    }

    /// Finds the controller an I/O queue's Connect joins.
    pub fn find_controller(
        &self,
        cntlid: u16,
        subnqn: &str,
        hostnqn: &str,
    ) -> Result<Arc<FabricsController>, ConnectError> {
        let controllers = lock(&self.controllers);
        let c = controllers
            .get(&cntlid)
            .ok_or(ConnectError::UnknownController)?;
        let same_subsystem = c.subsystem.as_ref().is_some_and(|s| s.nqn == subnqn);
        if !same_subsystem || c.hostnqn != hostnqn || c.dead.load(Ordering::Acquire) {
            return Err(ConnectError::UnknownController);
        }
        Ok(Arc::clone(c))
    }

    /// Tears controller `cntlid` down: every connection of it closes.
    pub fn remove_controller(&self, cntlid: u16) {
        let c = lock(&self.controllers).remove(&cntlid);
        if let Some(c) = c {
            c.shut_down();
        }
    }

    /// Stops the target as a killed process would look to its hosts: the
    /// ports stop listening (the addresses can be bound again once this
    /// returns) and every controller's connections close.
    pub fn shut_down(&self) {
        // The listeners end and their addresses are free again, but the
        // ports stay listed, so a test can start a target on the same one.
        self.stopping.store(true, Ordering::Release);
        let threads: Vec<Listening> = lock(&self.ports)
            .iter_mut()
            .map(|l| Listening {
                port: l.port,
                stop: Arc::clone(&l.stop),
                socket: l.socket.clone(),
                thread: l.thread.take(),
            })
            .collect();
        for l in threads {
            Self::stop_listener(l);
        }
        if let Some(h) = lock(&self.watchdog).take() {
            if h.join().is_err() {
                warn!("nvmf: the watchdog thread panicked");
            }
        }
        let ids: Vec<u16> = lock(&self.controllers).keys().copied().collect();
        for id in ids {
            self.remove_controller(id);
        }
        // As after a killed process, nothing may reach the namespaces once
        // this returns: a connection thread finishes the command it is
        // running (a write already received still lands) and then sees
        // its socket closed.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.connections.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        let left = self.connections.load(Ordering::Acquire);
        if left > 0 {
            warn!("nvmf: {left} connection(s) still open after the shut-down");
        }
        info!("nvmf: target shut down");
    }

    /// Tears every controller down, as a target restart would look to
    /// their hosts.
    #[cfg(test)]
    pub fn remove_all_controllers(&self) {
        let ids: Vec<u16> = lock(&self.controllers).keys().copied().collect();
        for id in ids {
            self.remove_controller(id);
        }
    }

    /// The ANA state of the target's namespaces changed (a node of a
    /// high-availability pair took over or lost the media): every I/O
    /// controller whose host enabled ANA change notices gets one; the
    /// others are torn down, so that their hosts reconnect and read the
    /// new state at connect (a host waiting for a path to become usable
    /// would otherwise wait forever). May block on a host that does not
    /// read its socket: call it from a thread of its own where that
    /// matters.
    pub fn notify_ana_change(&self) {
        let controllers: Vec<Arc<FabricsController>> =
            lock(&self.controllers).values().cloned().collect();
        for c in controllers {
            if c.subsystem.is_none() || c.dead.load(Ordering::Acquire) {
                continue;
            }
            if !c.events.ana_changed() {
                info!(
                    "nvmf: controller {} ({}) did not enable ANA change notices: \
                     closed so that its host reconnects",
                    c.cntlid, c.hostnqn
                );
                self.remove_controller(c.cntlid);
            }
        }
    }

    /// Number of live controllers (for tests and the log).
    pub fn controller_count(&self) -> usize {
        lock(&self.controllers).len()
    }
}

impl FabricsController {
    /// CC and CSTS.
    pub fn registers(&self) -> Registers {
        *lock(&self.registers)
    }

    /// Whether the host enabled the controller and it is ready.
    pub fn registers_enabled(&self) -> bool {
        self.registers().csts & 1 != 0
    }

    /// Applies a Property Set of CC: CSTS.RDY follows CC.EN, and a
    /// shutdown request (already carried out by the caller) completes at
    /// once (CSTS.SHST 2).
    pub fn set_cc(&self, cc: u32, shutdown: bool) {
        let mut r = lock(&self.registers);
        r.cc = cc;
        r.csts = cc & 1;
        if shutdown {
            r.csts |= 2 << 2;
        }
    }
}
