//! dpuemu as an NVMe/TCP host: a namespace of a remote NVMe/TCP subsystem
//! (Linux's nvmet-tcp, another dpuemu) used as a dpuemu namespace. The
//! target re-exports it (`namespace N remote ...` in the configuration
//! file), and a remote SSD (`remote_ssd.rs`) puts volume members on it.
//!
//! One admin and one I/O connection per remote namespace, one command at a
//! time on the I/O queue (callers are serialized by a mutex). A broken
//! connection fails the command in progress; then either the next command
//! connects again (a re-exported namespace) or every command fails at once
//! until [`RemoteNamespace::reconnect`] succeeds (a remote SSD, whose
//! supervisor reconnects in the background).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use nvme_shim::cqe::CompletionEntry;
use nvme_shim::sqe::SubmissionEntry;
use nvme_tcp::encode;
use nvme_tcp::header::COMMON_HEADER_BYTES;
use nvme_tcp::pdu::IcReq;
use nvme_tcp::{Negotiated, Pdu, Receiver, Stage};

use super::connection::FABRICS_OPCODE;
use crate::namespace::Namespace;

/// The host NQN dpuemu connects with.
pub const INITIATOR_NQN: &str = "nqn.2026-12.org.dpublk:initiator";
/// How long a remote has to answer a PDU, unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The Keep Alive Timeout dpuemu asks for in Connect, unless told
/// otherwise (what Linux's hosts ask for too).
pub const DEFAULT_KATO: Duration = Duration::from_millis(super::config::DEFAULT_KATO_MS as u64);
/// Admin opcode of Keep Alive.
const KEEP_ALIVE: u8 = 0x18;
/// Largest transfer dpuemu asks for, whatever the remote's MDTS.
const MAX_TRANSFER: usize = 1 << 20;
/// Command flags: PSDT 01b (SGL data, contiguous metadata buffer).
const PSDT_SGL_METABUF: u8 = 1 << 6;
/// Most C2HData bytes accepted in one PDU.
const MAX_C2H_DATA: u32 = 1 << 21;

/// Where a remote namespace is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteSpec {
    /// The remote's address and port.
    pub address: SocketAddr,
    /// Its subsystem NQN.
    pub subnqn: String,
    /// The namespace in it.
    pub nsid: u32,
}

fn protocol(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// A remote namespace whose size or block size dpuemu cannot use (an
/// inactive NSID reads as 0 blocks), or not the one expected. Carried in an
/// [`io::Error`] of kind `InvalidData`, so a caller can tell it from a
/// remote that breaks the protocol ([`is_geometry_error`]): Remote SSD Add
/// answers the one REMOTE_GEOMETRY and the other REMOTE_UNREACHABLE.
#[derive(Debug)]
pub struct GeometryError(pub String);

impl std::fmt::Display for GeometryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GeometryError {}

/// A [`GeometryError`] as an `io::Error`.
pub fn geometry_error(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, GeometryError(what))
}

/// Whether `e` is a [`GeometryError`].
pub fn is_geometry_error(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<GeometryError>())
}

/// One queue's connection.
struct HostQueue {
    stream: TcpStream,
    rx: Receiver,
    negotiated: Negotiated,
    maxh2cdata: usize,
    cid: u16,
    qid: u16,
}

impl HostQueue {
    fn open(address: SocketAddr, timeout: Duration) -> io::Result<Self> {
        let stream = TcpStream::connect_timeout(&address, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut q = Self {
            stream,
            rx: Receiver::host(MAX_C2H_DATA),
            negotiated: Negotiated::default(),
            maxh2cdata: 4096,
            cid: 0,
            qid: 0,
        };
        let req = encode::ic_req(&IcReq {
            pfv: 0,
            hpda: 0,
            header_digest: false,
            data_digest: false,
            maxr2t: 0,
        });
        q.stream.write_all(req.as_bytes())?;
        let pdu = q.read_pdu()?;
        match q.rx.parse(&pdu).map_err(|e| protocol(e.to_string()))?.pdu {
            Pdu::IcResp(resp) => {
                q.negotiated = Negotiated::for_host(&resp, 0);
                q.maxh2cdata = resp.maxh2cdata as usize;
                q.rx.stage = Stage::Ready(q.negotiated);
                Ok(q)
            }
            other => Err(protocol(format!("{other:?} instead of ICResp"))),
        }
    }

    fn read_pdu(&mut self) -> io::Result<Vec<u8>> {
        let mut ch = [0u8; COMMON_HEADER_BYTES];
        self.stream.read_exact(&mut ch)?;
        let layout = self.rx.frame(&ch).map_err(|e| protocol(e.to_string()))?;
        let mut pdu = vec![0u8; layout.plen()];
        pdu[..8].copy_from_slice(&ch);
        self.stream.read_exact(&mut pdu[8..])?;
        Ok(pdu)
    }

    /// Runs one command: `out` is its data to the controller (in the
    /// capsule up to `in_capsule` bytes, else through R2T), `input` the
    /// buffer its data from the controller fills. Returns the result.
    fn command(
        &mut self,
        sqe: SubmissionEntry,
        out: &[u8],
        input: &mut [u8],
        in_capsule: usize,
    ) -> io::Result<u64> {
        self.cid = self.cid.wrapping_add(1);
        let cid = self.cid;
        let mut bytes = sqe.to_bytes();
        // PSDT 01b: the data pointer is an SGL and the metadata pointer one
        // contiguous buffer, which fabrics requires (nvmet refuses other
        // values with Invalid Field).
        bytes[1] = PSDT_SGL_METABUF;
        bytes[2..4].copy_from_slice(&cid.to_le_bytes());
        let inline = !out.is_empty() && out.len() <= in_capsule;
        let len = if out.is_empty() {
            input.len()
        } else {
            out.len()
        };
        bytes[24..32].fill(0);
        bytes[32..36].copy_from_slice(&(len as u32).to_le_bytes());
        bytes[36..39].fill(0);
        bytes[39] = if inline { 0x01 } else { 0x5a };
        let carried = if inline { out } else { &[] };
        let h = encode::capsule_cmd(&bytes, carried.len(), &self.negotiated)
            .map_err(|e| protocol(e.to_string()))?;
        let mut pdu = Vec::with_capacity(h.plen());
        pdu.extend_from_slice(h.as_bytes());
        pdu.extend_from_slice(carried);
        if h.data_digest() {
            pdu.extend_from_slice(&encode::data_digest(carried));
        }
        self.stream.write_all(&pdu)?;
        loop {
            let raw = self.read_pdu()?;
            let r = self.rx.parse(&raw).map_err(|e| protocol(e.to_string()))?;
            match r.pdu {
                Pdu::R2T(t) if t.cccid == cid => {
                    let start = t.r2to as usize;
                    let end = start
                        .checked_add(t.r2tl as usize)
                        .filter(|&e| e <= out.len())
                        .ok_or_else(|| protocol(format!("R2T beyond the data: {t:?}")))?;
                    let mut at = start;
                    while at < end {
                        let n = (end - at).min(self.maxh2cdata);
                        let last = at + n == end;
                        let h = encode::h2c_data(cid, t.ttag, at as u32, n, last, &self.negotiated)
                            .map_err(|e| protocol(e.to_string()))?;
                        let mut pdu = Vec::with_capacity(h.plen());
                        pdu.extend_from_slice(h.as_bytes());
                        pdu.extend_from_slice(&out[at..at + n]);
                        if h.data_digest() {
                            pdu.extend_from_slice(&encode::data_digest(&out[at..at + n]));
                        }
                        self.stream.write_all(&pdu)?;
                        at += n;
                    }
                }
                Pdu::C2HData(d) if d.cccid == cid => {
                    let start = d.datao as usize;
                    let dest = start
                        .checked_add(d.data.len())
                        .and_then(|end| input.get_mut(start..end))
                        .ok_or_else(|| protocol("C2HData beyond the buffer".into()))?;
                    dest.copy_from_slice(d.data);
                    if d.success {
                        return Ok(0);
                    }
                }
                Pdu::CapsuleResp(c) => {
                    let cqe = CompletionEntry::from_bytes(c.cqe);
                    if cqe.command_id() != cid {
                        return Err(protocol(format!("completion of CID {}", cqe.command_id())));
                    }
                    let status = cqe.status();
                    if !status.is_success() {
                        return Err(io::Error::other(format!(
                            "queue {}: opcode {:#04x} failed with status {:#06x}",
                            self.qid,
                            sqe.opcode(),
                            status.0
                        )));
                    }
                    return Ok(u64::from(cqe.result.get()) | u64::from(cqe.dw1.get()) << 32);
                }
                Pdu::C2HTermReq(t) => {
                    return Err(protocol(format!(
                        "the remote ended the connection: FES {:#x} FEI {}",
                        t.fes, t.fei
                    )))
                }
                other => return Err(protocol(format!("unexpected {other:?}"))),
            }
        }
    }
}

/// An established association: admin and I/O queue of one controller.
struct Session {
    /// The admin queue when keep-alive is off (with it on, the keep-alive
    /// thread owns it).
    _admin: Option<HostQueue>,
    _keep_alive: Option<KeepAlive>,
    /// Set by the keep-alive thread when the remote stopped answering.
    dead: Arc<AtomicBool>,
    io: HostQueue,
    in_capsule: usize,
    max_transfer: usize,
}

impl Session {
    fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }
}

/// The Keep Alive sender of one association: a thread that owns the
/// admin queue, which carries nothing else once the association is up.
struct KeepAlive {
    /// Dropping it stops the thread.
    stop: Option<mpsc::Sender<()>>,
    /// The admin socket, shut down to end a Keep Alive in flight at once.
    admin: TcpStream,
    thread: Option<JoinHandle<()>>,
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        drop(self.stop.take());
        let _ = self.admin.shutdown(Shutdown::Both);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Counters of a namespace's keep-alive, over all its associations.
#[derive(Default)]
struct KeepAliveCounters {
    /// Keep Alives the remote answered.
    answered: Arc<AtomicU64>,
    /// Keep-alive threads running.
    threads: Arc<AtomicUsize>,
}

/// What the keep-alive thread works with.
struct KeepAliveTask {
    admin: HostQueue,
    kato: Duration,
    stop: mpsc::Receiver<()>,
    dead: Arc<AtomicBool>,
    /// The I/O socket, shut down when the remote is declared dead so that
    /// a command waiting for it fails at once.
    io: TcpStream,
    answered: Arc<AtomicU64>,
    what: String,
}

impl KeepAliveTask {
    /// Sends Keep Alive every KATO/2 until stopped; a Keep Alive without an
    /// answer within KATO, or with an error status, declares the remote
    /// dead: the I/O socket is shut down, which fails the command in
    /// progress (if any) as a lost connection does, and the owner sees
    /// the session dead.
    fn run(mut self) {
        let interval = self.kato / 2;
        let stream = &self.admin.stream;
        if let Err(e) = stream
            .set_read_timeout(Some(self.kato))
            .and_then(|()| stream.set_write_timeout(Some(self.kato)))
        {
            warn!("nvmf initiator: {}: keep-alive socket: {e}", self.what);
        }
        loop {
            match self.stop.recv_timeout(interval) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
            let sent = Instant::now();
            let keep_alive = SubmissionEntry::new(KEEP_ALIVE, 0);
            match self.admin.command(keep_alive, &[], &mut [], 0) {
                Ok(_) => {
                    self.answered.fetch_add(1, Ordering::AcqRel);
                    debug!(
                        "nvmf initiator: {}: Keep Alive answered in {} us",
                        self.what,
                        sent.elapsed().as_micros()
                    );
                }
                Err(e) => {
                    if matches!(self.stop.try_recv(), Err(mpsc::TryRecvError::Disconnected)) {
                        // The session is being dropped: its shut-down
                        // socket failed the Keep Alive.
                        return;
                    }
                    warn!(
                        "nvmf initiator: {}: Keep Alive failed after {} ms ({e}), KATO {} ms: remote declared dead",
                        self.what,
                        sent.elapsed().as_millis(),
                        self.kato.as_millis()
                    );
                    self.dead.store(true, Ordering::Release);
                    let _ = self.io.shutdown(Shutdown::Both);
                    return;
                }
            }
        }
    }
}

fn fabrics(fctype: u8, cdw10: u32, cdw11: u32, cdw12: u32) -> SubmissionEntry {
    let mut s = SubmissionEntry::new(FABRICS_OPCODE, 0);
    s.nsid.set(u32::from(fctype));
    s.cdw10.set(cdw10);
    s.cdw11.set(cdw11);
    s.cdw12.set(cdw12);
    s
}

fn connect_data(spec: &RemoteSpec, cntlid: u16) -> [u8; 1024] {
    let mut d = [0u8; 1024];
    // A host identifier of dpuemu's own (the NQN's bytes, folded).
    for (i, b) in INITIATOR_NQN.bytes().enumerate() {
        d[i % 16] ^= b;
    }
    d[16..18].copy_from_slice(&cntlid.to_le_bytes());
    let n = spec.subnqn.len().min(255);
    d[256..256 + n].copy_from_slice(&spec.subnqn.as_bytes()[..n]);
    d[512..512 + INITIATOR_NQN.len()].copy_from_slice(INITIATOR_NQN.as_bytes());
    d
}

/// What Identify told about the namespace and controller.
struct Geometry {
    size: u64,
    shift: u8,
}

impl Session {
    /// Connects the admin and I/O queues; with a non-zero `kato` (at most
    /// `u32::MAX` ms), Connect asks the remote for it and a keep-alive
    /// thread starts, counting answered Keep Alives in `answered`.
    fn establish(
        spec: &RemoteSpec,
        timeout: Duration,
        kato: Duration,
        counters: &KeepAliveCounters,
    ) -> io::Result<(Self, Geometry)> {
        let kato_ms = u32::try_from(kato.as_millis()).unwrap_or(u32::MAX);
        let mut admin = HostQueue::open(spec.address, timeout)?;
        let data = connect_data(spec, 0xffff);
        let cntlid = admin.command(fabrics(0x01, 0, 31, kato_ms), &data, &mut [], 8192)? as u16;
        // CC: enabled, 64-byte SQ and 16-byte CQ entries.
        let cc = 1 | 6 << 16 | 4 << 20;
        admin.command(fabrics(0x00, 0, 0x14, cc), &[], &mut [], 0)?;
        let deadline = Instant::now() + timeout;
        while admin.command(fabrics(0x04, 0, 0x1c, 0), &[], &mut [], 0)? & 1 == 0 {
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "CSTS.RDY never set",
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let cap = admin.command(fabrics(0x04, 1, 0x00, 0), &[], &mut [], 0)?;
        let page = 4096usize << ((cap >> 48) & 0xf);
        let mut id = vec![0u8; 4096];
        let mut identify = SubmissionEntry::new(0x06, 0);
        identify.cdw10.set(1);
        admin.command(identify, &[], &mut id, 0)?;
        let max_transfer = match id[77] {
            0 => MAX_TRANSFER,
            mdts => (page << mdts.min(20)).min(MAX_TRANSFER),
        };
        let ioccsz = u32::from_le_bytes([id[1792], id[1793], id[1794], id[1795]]) as usize;
        let in_capsule = (ioccsz * 16).saturating_sub(64);
        let mut ns = vec![0u8; 4096];
        let mut identify = SubmissionEntry::new(0x06, 0);
        identify.nsid.set(spec.nsid);
        admin.command(identify, &[], &mut ns, 0)?;
        let blocks = u64::from_le_bytes(ns[..8].try_into().unwrap_or_default());
        let format = usize::from(ns[26] & 0xf);
        let shift = ns[128 + 4 * format + 2];
        // The remote's numbers are untrusted: a size must fit in 64 bits.
        let size = (9..=16)
            .contains(&shift)
            .then(|| blocks.checked_mul(1u64 << shift))
            .flatten()
            .filter(|&size| size > 0);
        let Some(size) = size else {
            return Err(geometry_error(format!(
                "{} namespace {}: {blocks} blocks of 2^{shift} bytes",
                spec.subnqn, spec.nsid
            )));
        };
        let mut queues = SubmissionEntry::new(0x09, 0);
        queues.cdw10.set(0x07);
        admin.command(queues, &[], &mut [], 0)?;
        let mut io = HostQueue::open(spec.address, timeout)?;
        io.qid = 1;
        let data = connect_data(spec, cntlid);
        io.command(fabrics(0x01, 1 << 16, 31, 0), &data, &mut [], 8192)?;
        info!(
            "nvmf initiator: {} namespace {} at {}: controller {cntlid}, {} MiB",
            spec.subnqn,
            spec.nsid,
            spec.address,
            size >> 20
        );
        let dead = Arc::new(AtomicBool::new(false));
        let (admin, keep_alive) = if kato_ms == 0 {
            (Some(admin), None)
        } else {
            let (stop, stopped) = mpsc::channel();
            let admin_socket = admin.stream.try_clone()?;
            let task = KeepAliveTask {
                admin,
                kato: Duration::from_millis(u64::from(kato_ms)),
                stop: stopped,
                dead: Arc::clone(&dead),
                io: io.stream.try_clone()?,
                answered: Arc::clone(&counters.answered),
                what: format!(
                    "{} namespace {} at {}",
                    spec.subnqn, spec.nsid, spec.address
                ),
            };
            let live = Arc::clone(&counters.threads);
            live.fetch_add(1, Ordering::AcqRel);
            let thread = thread::Builder::new()
                .name("nvmf-keepalive-host".into())
                .spawn(move || {
                    task.run();
                    live.fetch_sub(1, Ordering::AcqRel);
                })
                .inspect_err(|_| {
                    counters.threads.fetch_sub(1, Ordering::AcqRel);
                })?;
            let keep_alive = KeepAlive {
                stop: Some(stop),
                admin: admin_socket,
                thread: Some(thread),
            };
            (None, Some(keep_alive))
        };
        Ok((
            Self {
                _admin: admin,
                _keep_alive: keep_alive,
                dead,
                io,
                in_capsule,
                max_transfer: max_transfer.max(1 << shift),
            },
            Geometry { size, shift },
        ))
    }
}

/// What a command does when the association is broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reconnect {
    /// Connects again first (a re-exported namespace: the host's command
    /// waits for the remote).
    Inline,
    /// Fails at once with [`io::ErrorKind::NotConnected`]; the owner calls
    /// [`RemoteNamespace::reconnect`] (a volume member: the array serves
    /// from the other members meanwhile, instead of waiting for a remote
    /// that may not come back). The command whose failure broke the
    /// association fails with that kind too, so that every failure from a
    /// lost connection looks the same to the owner.
    ByOwner,
}

/// A namespace of a remote NVMe/TCP subsystem.
pub struct RemoteNamespace {
    spec: RemoteSpec,
    size: u64,
    shift: u8,
    reconnect: Reconnect,
    timeout: Duration,
    kato: Duration,
    keep_alives: KeepAliveCounters,
    session: Mutex<Option<Session>>,
}

impl RemoteNamespace {
    /// Connects to the remote and reads the namespace's geometry.
    pub fn connect(spec: RemoteSpec) -> io::Result<Self> {
        Self::connect_with(spec, Reconnect::Inline, DEFAULT_TIMEOUT, DEFAULT_KATO)
    }

    /// As [`RemoteNamespace::connect`], with the given reconnection policy,
    /// the time the remote has for each PDU (a silent remote fails the
    /// command in progress, and drops the association, after it) and the
    /// Keep Alive Timeout (zero: no keep-alive).
    pub fn connect_with(
        spec: RemoteSpec,
        reconnect: Reconnect,
        timeout: Duration,
        kato: Duration,
    ) -> io::Result<Self> {
        let keep_alives = KeepAliveCounters::default();
        let (session, g) = Session::establish(&spec, timeout, kato, &keep_alives)?;
        Ok(Self {
            spec,
            size: g.size,
            shift: g.shift,
            reconnect,
            timeout,
            kato,
            keep_alives,
            session: Mutex::new(Some(session)),
        })
    }

    /// A namespace that has not answered yet, of the size and block size
    /// the caller expects: commands fail as on a lost association until
    /// [`RemoteNamespace::reconnect`] reaches a remote with exactly that
    /// geometry.
    pub fn absent(
        spec: RemoteSpec,
        reconnect: Reconnect,
        timeout: Duration,
        kato: Duration,
        size: u64,
        shift: u8,
    ) -> Self {
        Self {
            spec,
            size,
            shift,
            reconnect,
            timeout,
            kato,
            keep_alives: KeepAliveCounters::default(),
            session: Mutex::new(None),
        }
    }

    /// Where the namespace is.
    pub fn spec(&self) -> &RemoteSpec {
        &self.spec
    }

    /// Whether an association is up (as far as the last command and the
    /// last Keep Alive know).
    pub fn is_connected(&self) -> bool {
        self.lock().as_ref().is_some_and(|s| !s.is_dead())
    }

    /// How many Keep Alives the remote answered so far.
    #[cfg(test)]
    pub fn keep_alives(&self) -> u64 {
        self.keep_alives.answered.load(Ordering::Acquire)
    }

    /// How many keep-alive threads of this namespace run (at most one:
    /// the current association's).
    #[cfg(test)]
    pub fn keep_alive_threads(&self) -> usize {
        self.keep_alives.threads.load(Ordering::Acquire)
    }

    /// Establishes a new association if there is none (or the keep-alive
    /// declared the last one dead). The remote must still have the
    /// namespace's size and block size. Commands are not held up while it
    /// connects.
    pub fn reconnect(&self) -> io::Result<()> {
        {
            let mut guard = self.lock();
            match guard.as_ref() {
                Some(s) if !s.is_dead() => return Ok(()),
                Some(_) => *guard = None,
                None => {}
            }
        }
        let session = self.establish()?;
        let mut guard = self.lock();
        if guard.is_none() {
            *guard = Some(session);
        }
        Ok(())
    }

    fn establish(&self) -> io::Result<Session> {
        let (session, g) =
            Session::establish(&self.spec, self.timeout, self.kato, &self.keep_alives)?;
        if g.size != self.size || g.shift != self.shift {
            return Err(geometry_error(format!(
                "{} namespace {} changed its geometry",
                self.spec.subnqn, self.spec.nsid
            )));
        }
        Ok(session)
    }

    fn lock(&self) -> MutexGuard<'_, Option<Session>> {
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on a live session (connecting again if the last one broke
    /// and the policy is [`Reconnect::Inline`]); a failure drops the
    /// session.
    fn with_session<T>(&self, f: impl FnOnce(&mut Session) -> io::Result<T>) -> io::Result<T> {
        let mut guard = self.lock();
        if guard.as_ref().is_some_and(Session::is_dead) {
            warn!(
                "nvmf initiator: {} namespace {}: no Keep Alive answer: connection dropped",
                self.spec.subnqn, self.spec.nsid
            );
            *guard = None;
        }
        if guard.is_none() {
            if self.reconnect == Reconnect::ByOwner {
                return Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    format!(
                        "{} namespace {} at {}: not connected",
                        self.spec.subnqn, self.spec.nsid, self.spec.address
                    ),
                ));
            }
            *guard = Some(self.establish()?);
        }
        let Some(session) = guard.as_mut() else {
            return Err(io::Error::other("no session"));
        };
        let result = f(session);
        match result {
            Err(e) if e.kind() != io::ErrorKind::Other => {
                warn!(
                    "nvmf initiator: {} namespace {}: {e}: connection dropped",
                    self.spec.subnqn, self.spec.nsid
                );
                *guard = None;
                Err(match self.reconnect {
                    Reconnect::Inline => e,
                    Reconnect::ByOwner => io::Error::new(
                        io::ErrorKind::NotConnected,
                        format!("{e}: connection dropped"),
                    ),
                })
            }
            other => other,
        }
    }

    fn blocks(&self, offset: u64, len: u64) -> io::Result<(u64, u64)> {
        let mask = (1u64 << self.shift) - 1;
        let inside = offset.checked_add(len).is_some_and(|end| end <= self.size);
        if offset & mask != 0 || len & mask != 0 || !inside {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        Ok((offset >> self.shift, len >> self.shift))
    }

    fn rw(&self, opcode: u8, offset: u64, out: &[u8], input: &mut [u8]) -> io::Result<()> {
        let len = out.len().max(input.len()) as u64;
        self.blocks(offset, len)?;
        self.with_session(|s| {
            let step = s.max_transfer;
            let mut done = 0usize;
            while (done as u64) < len {
                let n = (len as usize - done).min(step);
                let (slba, nlb) = self.blocks(offset + done as u64, n as u64)?;
                let mut sqe = SubmissionEntry::new(opcode, 0);
                sqe.nsid.set(self.spec.nsid);
                sqe.cdw10.set(slba as u32);
                sqe.cdw11.set((slba >> 32) as u32);
                sqe.cdw12.set((nlb - 1) as u32);
                let in_capsule = s.in_capsule;
                if out.is_empty() {
                    s.io.command(sqe, &[], &mut input[done..done + n], in_capsule)?;
                } else {
                    s.io.command(sqe, &out[done..done + n], &mut [], in_capsule)?;
                }
                done += n;
            }
            Ok(())
        })
    }
}

impl Namespace for RemoteNamespace {
    fn size(&self) -> u64 {
        self.size
    }

    fn lba_shift(&self) -> u8 {
        self.shift
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.rw(0x02, offset, &[], buf)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.rw(0x01, offset, data, &mut [])
    }

    fn flush(&self) -> io::Result<()> {
        self.with_session(|s| {
            let mut sqe = SubmissionEntry::new(0x00, 0);
            sqe.nsid.set(self.spec.nsid);
            s.io.command(sqe, &[], &mut [], 0).map(|_| ())
        })
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        let (mut slba, mut blocks) = self.blocks(offset, len)?;
        self.with_session(|s| {
            while blocks > 0 {
                let n = blocks.min(1 << 16);
                let mut sqe = SubmissionEntry::new(0x08, 0);
                sqe.nsid.set(self.spec.nsid);
                sqe.cdw10.set(slba as u32);
                sqe.cdw11.set((slba >> 32) as u32);
                sqe.cdw12.set((n - 1) as u32);
                s.io.command(sqe, &[], &mut [], 0)?;
                slba += n;
                blocks -= n;
            }
            Ok(())
        })
    }

    fn deallocate(&self, offset: u64, len: u64) -> io::Result<()> {
        let (mut slba, mut blocks) = self.blocks(offset, len)?;
        self.with_session(|s| {
            while blocks > 0 {
                let n = blocks.min(u64::from(u32::MAX));
                let mut range = [0u8; 16];
                range[4..8].copy_from_slice(&(n as u32).to_le_bytes());
                range[8..16].copy_from_slice(&slba.to_le_bytes());
                let mut sqe = SubmissionEntry::new(0x09, 0);
                sqe.nsid.set(self.spec.nsid);
                sqe.cdw11.set(1 << 2);
                let in_capsule = s.in_capsule;
                s.io.command(sqe, &range, &mut [], in_capsule)?;
                slba += n;
                blocks -= n;
            }
            Ok(())
        })
    }
}
