//! One NVMe/TCP connection: connection initialization, the PDU stream, and
//! the data movement of each command (in-capsule data, R2T and H2CData,
//! C2HData), around the command handlers of `fabrics` and `io`; and a
//! controller's asynchronous events ([`AsyncEvents`]), which another thread
//! completes on the admin queue's connection.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use log::{debug, info, warn};
use nvme_shim::cqe::CompletionEntry;
use nvme_shim::opcode::{data_direction, DataDirection};
use nvme_shim::sqe::SubmissionEntry;
use nvme_shim::status::{sct, Status};
use nvme_tcp::encode::{self, HeaderBuf};
use nvme_tcp::error::fes;
use nvme_tcp::header::COMMON_HEADER_BYTES;
use nvme_tcp::pdu::{CapsuleCmd, H2CData, IcReq, IcResp};
use nvme_tcp::receiver::DataDigest;
use nvme_tcp::{Negotiated, Pdu, PduError, Receiver, Stage};

use super::fabrics;
use super::io as nvm_io;
use super::target::{Closer, FabricsController, Target};

/// In-capsule data bytes a command capsule may carry (IOCCSZ is this plus
/// the 64-byte command, in 16-byte units).
pub const IN_CAPSULE_DATA: u32 = 8192;
/// Most data bytes of one command (MDTS 5 with 4 KiB pages).
pub const MAX_TRANSFER: u32 = 128 << 10;
/// MAXH2CDATA: most data bytes of one H2CData PDU.
pub const MAXH2CDATA: u32 = MAX_TRANSFER;
/// Commands a queue may have waiting for their data (MAXCMD).
pub const MAX_PENDING: usize = 128;
/// Time a connection has to send ICReq and Connect.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// SGL descriptor identifier of in-capsule data: Data Block, Offset.
const SGL_IN_CAPSULE: u8 = 0x01;
/// SGL descriptor identifier of data the transport moves: Transport SGL
/// Data Block, transport specific subtype A.
const SGL_TRANSPORT: u8 = 0x5a;
/// Fabrics command opcode.
pub const FABRICS_OPCODE: u8 = 0x7f;
/// Transient Transport Error: a data digest did not match.
pub const TRANSIENT_TRANSPORT_ERROR: Status = Status::new(sct::GENERIC, 0x22);
/// SGL Offset Invalid.
pub const SGL_OFFSET_INVALID: Status = Status::dnr(sct::GENERIC, 0x16);

/// Asynchronous Event Configuration (Set Features 0Bh) bit of ANA change
/// notices: the only event this target reports.
pub const AEN_ANA_CHANGE: u32 = 1 << 11;
/// Completion dword 0 of an ANA change notice: event type Notice (2h),
/// information Asymmetric Namespace Access Change (03h), log page 0Ch.
pub const ANA_CHANGE_NOTICE: u32 = 0x2 | 0x03 << 8 | 0x0c << 16;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The asynchronous events of one controller: the Asynchronous Event
/// Requests its admin queue holds, what the host enabled, and the way to
/// complete a held request from any thread (an HA node that changes its
/// ANA state is not the admin queue's thread).
///
/// An ANA change is reported once: the completion masks further ANA
/// change notices until the host reads the ANA log with RAE cleared, as
/// the NVMe base specification asks (the host then sees the newest state
/// in the log anyway). A change while no request is held waits for the
/// next one.
///
/// Lock order: `state`, then the connection's send lock.
#[derive(Default)]
pub struct AsyncEvents {
    state: Mutex<EventState>,
}

#[derive(Default)]
struct EventState {
    /// Asynchronous Event Configuration, as far as supported.
    enabled: u32,
    /// CIDs of the held requests, oldest first.
    held: VecDeque<u16>,
    /// An ANA change waits for a request.
    pending: bool,
    /// An ANA change was reported and the host has not read the log yet.
    masked: bool,
    /// The admin queue's connection, once it is bound.
    sink: Option<EventSink>,
}

/// Where a controller's events are sent: a second handle of its admin
/// queue's socket, written under the connection's send lock so that a
/// completion never lands inside another PDU.
struct EventSink {
    writer: Box<dyn Write + Send>,
    send_lock: Arc<Mutex<()>>,
    negotiated: Negotiated,
    sqhd: Arc<AtomicU16>,
}

impl EventSink {
    fn complete(&mut self, cid: u16, dw0: u32) -> io::Result<()> {
        let sqhd = self.sqhd.load(Ordering::Acquire);
        let cqe = CompletionEntry::new(cid, 0, sqhd, Status::SUCCESS, false, dw0);
        let h = encode::capsule_resp(&cqe.to_bytes(), &self.negotiated);
        let mut out = Vec::new();
        append(&mut out, &h, &[]);
        let _sending = lock(&self.send_lock);
        self.writer.write_all(&out)
    }
}

impl AsyncEvents {
    /// Set Features Asynchronous Event Configuration: keeps the bits of
    /// the events this target reports (others are accepted and ignored,
    /// as hosts enable SMART warnings everywhere).
    pub fn configure(&self, value: u32) {
        lock(&self.state).enabled = value & AEN_ANA_CHANGE;
    }

    /// Get Features Asynchronous Event Configuration.
    pub fn configuration(&self) -> u32 {
        lock(&self.state).enabled
    }

    /// Holds Asynchronous Event Request `cid`; false past the limit
    /// (AERL + 1 outstanding). A change waiting for a request completes
    /// this one at once.
    pub fn hold(&self, cid: u16, limit: usize) -> bool {
        let mut s = lock(&self.state);
        if s.held.len() >= limit {
            return false;
        }
        s.held.push_back(cid);
        Self::deliver(&mut s);
        true
    }

    /// The host read the ANA log with RAE cleared: ANA change notices are
    /// unmasked. Called before the log is built, so a change after it is
    /// either in that log or reported again.
    pub fn ana_log_read(&self) {
        lock(&self.state).masked = false;
    }

    /// This controller's ANA state changed: completes a held request with
    /// the ANA change notice if the host enabled it and the notice is not
    /// masked. False if the host did not enable it (it learns of the
    /// change only from its next I/O's status, or a new connection).
    pub fn ana_changed(&self) -> bool {
        let mut s = lock(&self.state);
        if s.enabled & AEN_ANA_CHANGE == 0 {
            return false;
        }
        if !s.masked {
            s.pending = true;
            Self::deliver(&mut s);
        }
        true
    }

    fn deliver(s: &mut EventState) {
        if !s.pending || s.sink.is_none() {
            return;
        }
        let Some(cid) = s.held.pop_front() else {
            return;
        };
        s.pending = false;
        s.masked = true;
        if let Some(sink) = &mut s.sink {
            // A failed send is a closed connection: its controller goes
            // with it, and the host's next one reads the ANA log at
            // connect.
            if let Err(e) = sink.complete(cid, ANA_CHANGE_NOTICE) {
                debug!("nvmf: ANA change notice (CID {cid}) not sent: {e}");
            }
        }
    }

    fn connect(&self, sink: EventSink) {
        let mut s = lock(&self.state);
        s.sink = Some(sink);
        Self::deliver(&mut s);
    }
}

/// The queue a connection carries, once Fabrics Connect succeeded.
pub struct Queue {
    /// Its controller.
    pub controller: Arc<FabricsController>,
    /// Queue ID: 0 for the admin queue.
    pub qid: u16,
    /// Submission queue size, 0-based.
    pub sqsize: u16,
    /// Submission queue head reported in each response.
    pub sqhd: u16,
}

/// What a command handler answers.
pub enum Reply {
    /// Complete with this status, result (dwords 0 and 1) and, for a
    /// controller-to-host command, data.
    Done {
        status: Status,
        result: u64,
        data: Vec<u8>,
    },
    /// Complete later or never (Asynchronous Event Request).
    Held,
    /// Complete, then close the connection (Disconnect).
    Close,
}

impl Reply {
    /// A completion without data.
    pub fn status(status: Status) -> Self {
        Self::Done {
            status,
            result: 0,
            data: Vec::new(),
        }
    }

    /// A successful completion with data.
    pub fn data(data: Vec<u8>) -> Self {
        Self::Done {
            status: Status::SUCCESS,
            result: 0,
            data,
        }
    }

    /// A successful completion with a result.
    pub fn result(result: u64) -> Self {
        Self::Done {
            status: Status::SUCCESS,
            result,
            data: Vec::new(),
        }
    }
}

/// A command whose data arrives through R2T.
struct PendingWrite {
    sqe: SubmissionEntry,
    data: Vec<u8>,
    received: usize,
    digest_failed: bool,
}

/// Why a connection ended.
enum End {
    /// The peer closed it, or the socket failed.
    Io(io::Error),
    /// The peer broke the transport: a C2HTermReq with this FES and FEI
    /// was sent.
    Protocol { reason: String, fes: u16, fei: u32 },
    /// The peer sent H2CTermReq.
    PeerTerminated(u16, u32),
    /// Disconnect, or the controller went away.
    Closed,
}

impl From<io::Error> for End {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// State of one connection.
pub struct Connection<'t, L: Link> {
    pub target: &'t Target,
    pub port: u16,
    pub peer: String,
    stream: L,
    receiver: Receiver,
    negotiated: Negotiated,
    pub queue: Option<Queue>,
    pending: BTreeMap<u16, PendingWrite>,
    next_ttag: u16,
    /// Taken around every write to the stream: an asynchronous event is
    /// sent from another thread through a second handle (see
    /// [`AsyncEvents`]).
    send_lock: Arc<Mutex<()>>,
    /// The submission queue head, for an event completed from elsewhere.
    sqhd: Arc<AtomicU16>,
    buffer: Vec<u8>,
    /// The header of the PDU being handled, for a termination request.
    last_header: [u8; 128],
    last_header_len: usize,
}

/// A connection's byte stream: a TCP socket, or in tests any reader and
/// writer.
pub trait Link: Read + Write {
    /// A handle the connection's controller uses to end it from another
    /// thread (teardown, keep-alive expiry).
    fn closer(&self) -> io::Result<Closer>;
    /// The queue is connected: no setup time limit from now on.
    fn connected(&mut self) -> io::Result<()>;
    /// Ends the connection.
    fn close(&mut self);
    /// A second handle that writes to the connection from another thread
    /// (asynchronous events), or `None` if the link has none: its events
    /// then wait forever.
    fn event_writer(&self) -> io::Result<Option<Box<dyn Write + Send>>> {
        Ok(None)
    }
}

impl Link for TcpStream {
    fn closer(&self) -> io::Result<Closer> {
        Ok(Closer::socket(self.try_clone()?))
    }

    fn event_writer(&self) -> io::Result<Option<Box<dyn Write + Send>>> {
        Ok(Some(Box::new(self.try_clone()?)))
    }

    fn connected(&mut self) -> io::Result<()> {
        self.set_read_timeout(None)
    }

    fn close(&mut self) {
        let _ = self.shutdown(Shutdown::Both);
    }
}

/// Serves one accepted socket until the connection ends.
pub fn serve(target: &Target, port: u16, stream: TcpStream, peer: &str) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(SETUP_TIMEOUT));
    serve_link(target, port, stream, peer);
}

/// Serves one connection over `stream` until it ends.
pub fn serve_link<L: Link>(target: &Target, port: u16, stream: L, peer: &str) {
    let mut c = Connection {
        target,
        port,
        peer: peer.to_string(),
        stream,
        receiver: Receiver::controller(IN_CAPSULE_DATA, MAXH2CDATA),
        negotiated: Negotiated::default(),
        queue: None,
        pending: BTreeMap::new(),
        next_ttag: 0,
        send_lock: Arc::new(Mutex::new(())),
        sqhd: Arc::new(AtomicU16::new(0)),
        buffer: Vec::new(),
        last_header: [0; 128],
        last_header_len: 0,
    };
    debug!("nvmf {peer}: connected on port {port}");
    let end = c.run();
    match end {
        Err(End::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
            debug!("nvmf {peer}: closed by the host")
        }
        Err(End::Io(e)) => info!("nvmf {peer}: connection ended: {e}"),
        Err(End::Protocol { reason, fes, fei }) => {
            warn!("nvmf {peer}: {reason}: C2HTermReq FES {fes:#x} FEI {fei}, connection closed");
        }
        Err(End::PeerTerminated(f, fei)) => {
            warn!("nvmf {peer}: host terminated the connection: H2CTermReq FES {f:#x} FEI {fei}")
        }
        Err(End::Closed) | Ok(()) => debug!("nvmf {peer}: closed"),
    }
    c.stream.close();
    if let Some(q) = &c.queue {
        if q.qid == 0 {
            target.remove_controller(q.controller.cntlid);
            info!(
                "nvmf {peer}: admin queue of controller {} closed: controller removed ({} left)",
                q.controller.cntlid,
                target.controller_count()
            );
        } else {
            q.controller.detach_queue(q.qid);
        }
    }
}

impl<L: Link> Connection<'_, L> {
    fn run(&mut self) -> Result<(), End> {
        loop {
            let mut ch = [0u8; COMMON_HEADER_BYTES];
            self.stream.read_exact(&mut ch)?;
            self.last_header[..8].copy_from_slice(&ch);
            self.last_header_len = 8;
            let layout = match self.receiver.frame(&ch) {
                Ok(l) => l,
                Err(e) => return Err(self.refuse(&e)),
            };
            let plen = layout.plen();
            // Bounded by the receiver: at most its largest PDU.
            self.buffer.resize(plen, 0);
            self.buffer[..8].copy_from_slice(&ch);
            self.stream.read_exact(&mut self.buffer[8..plen])?;
            let n = plen.min(layout.header.pdu_type.header_len());
            self.last_header[..n].copy_from_slice(&self.buffer[..n]);
            self.last_header_len = n;
            let buffer = std::mem::take(&mut self.buffer);
            let result = self.handle(&buffer);
            self.buffer = buffer;
            result?;
        }
    }

    /// Writes `bytes` (whole PDUs) to the stream, under the send lock.
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let _sending = lock(&self.send_lock);
        self.stream.write_all(bytes)
    }

    /// Sends C2HTermReq with `fes` and `fei` and ends the connection.
    fn terminate(&mut self, reason: String, fes: u16, fei: u32) -> End {
        let term = encode::term_req(false, fes, fei, &self.last_header[..self.last_header_len]);
        let _ = self.send(term.as_bytes());
        End::Protocol { reason, fes, fei }
    }

    /// Ends the connection over a PDU the parser refused.
    fn refuse(&mut self, e: &PduError) -> End {
        self.terminate(e.to_string(), e.fes(), e.fei())
    }

    fn handle(&mut self, bytes: &[u8]) -> Result<(), End> {
        let received = match self.receiver.parse(bytes) {
            Ok(r) => r,
            Err(e) => return Err(self.refuse(&e)),
        };
        let digest_ok = !matches!(received.data_digest, DataDigest::Invalid { .. });
        if let DataDigest::Invalid { expected, received } = received.data_digest {
            warn!(
                "nvmf {}: data digest {received:#010x}, expected {expected:#010x}",
                self.peer
            );
        }
        match received.pdu {
            Pdu::IcReq(req) => self.initialize(&req),
            Pdu::H2CTermReq(t) => Err(End::PeerTerminated(t.fes, t.fei)),
            Pdu::CapsuleCmd(c) => self.capsule(&c, digest_ok),
            Pdu::H2CData(d) => self.h2c_data(&d, digest_ok),
            // The receiver accepts only host PDUs.
            Pdu::IcResp(_)
            | Pdu::C2HTermReq(_)
            | Pdu::CapsuleResp(_)
            | Pdu::C2HData(_)
            | Pdu::R2T(_) => Err(self.terminate(
                "controller PDU from the host".into(),
                fes::INVALID_HEADER_FIELD,
                0,
            )),
        }
    }

    fn initialize(&mut self, req: &IcReq) -> Result<(), End> {
        self.negotiated = Negotiated::for_controller(req, 0);
        let resp = encode::ic_resp(&IcResp {
            pfv: 0,
            cpda: 0,
            header_digest: req.header_digest,
            data_digest: req.data_digest,
            maxh2cdata: MAXH2CDATA,
        });
        self.send(resp.as_bytes())?;
        self.receiver.stage = Stage::Ready(self.negotiated);
        info!(
            "nvmf {}: initialized (header digest {}, data digest {}, HPDA {})",
            self.peer, req.header_digest, req.data_digest, req.hpda
        );
        Ok(())
    }

    /// Direction of a command's data: Fabrics commands carry it in FCTYPE.
    fn direction(sqe: &[u8; 64]) -> DataDirection {
        if sqe[0] == FABRICS_OPCODE {
            data_direction(sqe[4])
        } else {
            data_direction(sqe[0])
        }
    }

    fn capsule(&mut self, c: &CapsuleCmd<'_>, digest_ok: bool) -> Result<(), End> {
        let sqe = SubmissionEntry::from_bytes(c.sqe);
        if let Some(q) = &mut self.queue {
            q.sqhd = if q.sqhd >= q.sqsize { 0 } else { q.sqhd + 1 };
            self.sqhd.store(q.sqhd, Ordering::Release);
        }
        if !digest_ok {
            return self.complete(&sqe, Reply::status(TRANSIENT_TRANSPORT_ERROR));
        }
        let sgl_len = u32::from_le_bytes([c.sqe[32], c.sqe[33], c.sqe[34], c.sqe[35]]);
        let sgl_offset = u64::from_le_bytes(c.sqe[24..32].try_into().unwrap_or([0xff; 8]));
        let sgl_id = c.sqe[39];
        let direction = Self::direction(c.sqe);
        match direction {
            // A command that moves no data, whatever its descriptor type.
            DataDirection::HostToController | DataDirection::ControllerToHost
                if sgl_len == 0 && c.data.is_empty() =>
            {
                let reply = self.execute(&sqe, &[], 0);
                self.complete(&sqe, reply)
            }
            DataDirection::HostToController if sgl_id == SGL_IN_CAPSULE => {
                if sgl_offset != 0 {
                    return self.complete(&sqe, Reply::status(SGL_OFFSET_INVALID));
                }
                if sgl_len as usize != c.data.len() {
                    return self.complete(&sqe, Reply::status(Status::SGL_LENGTH_INVALID));
                }
                let reply = self.execute(&sqe, c.data, 0);
                self.complete(&sqe, reply)
            }
            DataDirection::HostToController if sgl_id == SGL_TRANSPORT && c.data.is_empty() => {
                if sgl_len > MAX_TRANSFER {
                    return self.complete(&sqe, Reply::status(Status::SGL_LENGTH_INVALID));
                }
                if self.pending.len() >= MAX_PENDING {
                    return Err(self.terminate(
                        format!("more than {MAX_PENDING} commands wait for R2T data"),
                        fes::DATA_LIMIT_EXCEEDED,
                        0,
                    ));
                }
                if self.pending.values().any(|p| p.sqe.cid() == sqe.cid()) {
                    return self.complete(&sqe, Reply::status(Status::COMMAND_ID_CONFLICT));
                }
                let ttag = self.new_ttag();
                self.pending.insert(
                    ttag,
                    PendingWrite {
                        sqe,
                        data: vec![0; sgl_len as usize],
                        received: 0,
                        digest_failed: false,
                    },
                );
                let r2t = encode::r2t(sqe.cid(), ttag, 0, sgl_len, &self.negotiated);
                self.send(r2t.as_bytes())?;
                Ok(())
            }
            DataDirection::ControllerToHost if sgl_id == SGL_TRANSPORT && c.data.is_empty() => {
                if sgl_len > MAX_TRANSFER {
                    return self.complete(&sqe, Reply::status(Status::SGL_LENGTH_INVALID));
                }
                let reply = self.execute(&sqe, &[], sgl_len as usize);
                self.complete(&sqe, reply)
            }
            DataDirection::None if c.data.is_empty() => {
                let reply = self.execute(&sqe, &[], 0);
                self.complete(&sqe, reply)
            }
            DataDirection::Bidirectional => {
                self.complete(&sqe, Reply::status(Status::INVALID_OPCODE))
            }
            _ if !c.data.is_empty() && sgl_id != SGL_IN_CAPSULE => {
                self.complete(&sqe, Reply::status(Status::SGL_TYPE_INVALID))
            }
            _ => self.complete(&sqe, Reply::status(Status::SGL_TYPE_INVALID)),
        }
    }

    fn new_ttag(&mut self) -> u16 {
        loop {
            let t = self.next_ttag;
            self.next_ttag = self.next_ttag.wrapping_add(1);
            if !self.pending.contains_key(&t) {
                return t;
            }
        }
    }

    fn h2c_data(&mut self, d: &H2CData<'_>, digest_ok: bool) -> Result<(), End> {
        let Some(p) = self.pending.get_mut(&d.ttag) else {
            return Err(self.terminate(
                format!("H2CData for transfer tag {} that no R2T sent", d.ttag),
                fes::INVALID_HEADER_FIELD,
                10,
            ));
        };
        if p.sqe.cid() != d.cccid {
            let reason = format!(
                "H2CData of CID {} for the R2T of CID {}",
                d.cccid,
                p.sqe.cid()
            );
            return Err(self.terminate(reason, fes::INVALID_HEADER_FIELD, 8));
        }
        let offset = d.datao as usize;
        if offset != p.received || offset + d.data.len() > p.data.len() {
            let reason = format!(
                "H2CData of {} bytes at {offset}: expected offset {} of {}",
                d.data.len(),
                p.received,
                p.data.len()
            );
            return Err(self.terminate(reason, fes::DATA_OUT_OF_RANGE, 12));
        }
        p.data[offset..offset + d.data.len()].copy_from_slice(d.data);
        p.received += d.data.len();
        p.digest_failed |= !digest_ok;
        let complete = p.received == p.data.len();
        if complete != d.last {
            let reason = format!(
                "H2CData LAST_PDU {} with {} of {} bytes received",
                d.last,
                p.received,
                p.data.len()
            );
            return Err(self.terminate(reason, fes::SEQUENCE_ERROR, 0));
        }
        if !complete {
            return Ok(());
        }
        let Some(p) = self.pending.remove(&d.ttag) else {
            return Ok(());
        };
        let reply = if p.digest_failed {
            Reply::status(TRANSIENT_TRANSPORT_ERROR)
        } else {
            self.execute(&p.sqe, &p.data, 0)
        };
        self.complete(&p.sqe, reply)
    }

    /// Runs a command; `data` is its host-to-controller data, `transfer`
    /// the length of its controller-to-host data.
    fn execute(&mut self, sqe: &SubmissionEntry, data: &[u8], transfer: usize) -> Reply {
        if sqe.opcode() == FABRICS_OPCODE {
            return fabrics::fabrics_command(self, sqe, data);
        }
        let Some(q) = &self.queue else {
            return Reply::status(Status::COMMAND_SEQUENCE_ERROR);
        };
        if q.controller.dead.load(std::sync::atomic::Ordering::Acquire) {
            return Reply::Close;
        }
        q.controller.keep_alive();
        if q.qid == 0 {
            let controller = Arc::clone(&q.controller);
            fabrics::admin_command(self, &controller, sqe, data, transfer)
        } else {
            let enabled = q.controller.registers_enabled();
            match &q.controller.subsystem {
                Some(s) if enabled => nvm_io::command(s, sqe, data, transfer),
                _ => Reply::status(Status::COMMAND_SEQUENCE_ERROR),
            }
        }
    }

    /// Holds Asynchronous Event Request `cid` until its controller has an
    /// event; false past the limit.
    pub fn hold_event_request(&mut self, cid: u16) -> bool {
        let Some(q) = &self.queue else {
            return false;
        };
        q.controller
            .events
            .hold(cid, usize::from(fabrics::AERL) + 1)
    }

    /// Sends a command's data and response.
    fn complete(&mut self, sqe: &SubmissionEntry, reply: Reply) -> Result<(), End> {
        let (status, result, data, close) = match reply {
            Reply::Held => return Ok(()),
            Reply::Close => (Status::SUCCESS, 0, Vec::new(), true),
            Reply::Done {
                status,
                result,
                data,
            } => (status, result, data, false),
        };
        let mut out = Vec::new();
        if status.is_success() && !data.is_empty() {
            let mut offset = 0;
            while offset < data.len() {
                let end = (offset + MAX_TRANSFER as usize).min(data.len());
                let chunk = &data[offset..end];
                let last = end == data.len();
                let h = encode::c2h_data(
                    sqe.cid(),
                    offset as u32,
                    chunk.len(),
                    last,
                    false,
                    &self.negotiated,
                )
                .map_err(|e| io::Error::other(e.to_string()))?;
                append(&mut out, &h, chunk);
                offset = end;
            }
        }
        let (qid, sqhd) = self.queue.as_ref().map_or((0, 0), |q| (q.qid, q.sqhd));
        let mut cqe = CompletionEntry::new(sqe.cid(), qid, sqhd, status, false, result as u32);
        cqe.dw1.set((result >> 32) as u32);
        let h = encode::capsule_resp(&cqe.to_bytes(), &self.negotiated);
        append(&mut out, &h, &[]);
        self.send(&out)?;
        if close {
            return Err(End::Closed);
        }
        Ok(())
    }

    /// Binds the connection to its queue after a successful Connect; an
    /// admin queue's connection becomes where its controller's events go.
    pub fn bind(&mut self, queue: Queue) -> io::Result<()> {
        queue.controller.attach(queue.qid, self.stream.closer()?)?;
        self.stream.connected()?;
        if queue.qid == 0 {
            if let Some(writer) = self.stream.event_writer()? {
                self.sqhd.store(queue.sqhd, Ordering::Release);
                queue.controller.events.connect(EventSink {
                    writer,
                    send_lock: Arc::clone(&self.send_lock),
                    negotiated: self.negotiated,
                    sqhd: Arc::clone(&self.sqhd),
                });
            }
        }
        self.queue = Some(queue);
        Ok(())
    }
}

fn append(out: &mut Vec<u8>, h: &HeaderBuf, data: &[u8]) {
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    if h.data_digest() {
        out.extend_from_slice(&encode::data_digest(data));
    }
}
