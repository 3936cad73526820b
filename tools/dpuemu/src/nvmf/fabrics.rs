//! Fabrics commands (Connect, Property Get/Set, Disconnect) and the admin
//! command set of the target's controllers (Identify, Get Log Page,
//! features, Keep Alive, Asynchronous Event Request).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use log::{info, warn};
use nvme_shim::opcode::{admin, feature};
use nvme_shim::sqe::SubmissionEntry;
use nvme_shim::status::{sct, Status};

use super::config::{valid_nqn, DISCOVERY_NQN};
use super::connection::{Connection, Link, Queue, Reply};
use super::identify;
use super::target::{ConnectError, FabricsController};

/// Fabrics command types (FCTYPE).
mod fctype {
    pub const PROPERTY_SET: u8 = 0x00;
    pub const CONNECT: u8 = 0x01;
    pub const PROPERTY_GET: u8 = 0x04;
    pub const DISCONNECT: u8 = 0x08;
}

/// Property offsets.
mod property {
    pub const CAP: u32 = 0x00;
    pub const VS: u32 = 0x08;
    pub const CC: u32 = 0x14;
    pub const CSTS: u32 = 0x1c;
}

/// Connect status codes (command specific).
const CONNECT_INCOMPATIBLE_FORMAT: Status = Status::dnr(sct::COMMAND_SPECIFIC, 0x80);
const CONNECT_INVALID_PARAMETERS: Status = Status::dnr(sct::COMMAND_SPECIFIC, 0x82);
const CONNECT_INVALID_HOST: Status = Status::dnr(sct::COMMAND_SPECIFIC, 0x84);

/// Queue entries per queue, 0-based (CAP.MQES).
pub const MQES: u16 = 127;
/// I/O queues a controller grants at most.
pub const MAX_IO_QUEUES: u32 = 16;
/// Asynchronous Event Request Limit, 0-based.
pub const AERL: u8 = 3;
/// NVMe version the controllers report: 1.4.
pub const VERSION: u32 = 0x0001_0400;
/// Connect data bytes.
const CONNECT_DATA: usize = 1024;
/// The controller ID a host asks for to get any (dynamic model).
const DYNAMIC_CNTLID: u16 = 0xffff;

/// CAP: MQES, contiguous queues required, a 10 s ready timeout, the NVM
/// command set, 4 KiB pages only.
pub const fn cap() -> u64 {
    MQES as u64 | 1 << 16 | 20 << 24 | 1 << 37
}

/// The result of a refused Connect: IATTR (1: the parameter is in the
/// Connect data) and IPO (its byte offset).
fn invalid_parameter(in_data: bool, offset: u16) -> Reply {
    Reply::Done {
        status: CONNECT_INVALID_PARAMETERS,
        result: u64::from(u32::from(in_data) << 16 | u32::from(offset)),
        data: Vec::new(),
    }
}

/// A NUL-terminated NQN field of the Connect data.
fn nqn_field(field: &[u8]) -> Option<&str> {
    let end = field.iter().position(|&b| b == 0)?;
    let text = std::str::from_utf8(&field[..end]).ok()?;
    valid_nqn(text).then_some(text)
}

/// A Fabrics command (opcode 0x7f).
pub fn fabrics_command<L: Link>(
    c: &mut Connection<'_, L>,
    sqe: &SubmissionEntry,
    data: &[u8],
) -> Reply {
    let fctype = sqe.nsid.get() as u8;
    match fctype {
        fctype::CONNECT => connect(c, sqe, data),
        fctype::PROPERTY_GET | fctype::PROPERTY_SET => {
            let Some(q) = c.queue.as_ref().filter(|q| q.qid == 0) else {
                return Reply::status(Status::COMMAND_SEQUENCE_ERROR);
            };
            let controller = Arc::clone(&q.controller);
            if fctype == fctype::PROPERTY_GET {
                property_get(&controller, sqe)
            } else {
                property_set(&controller, sqe)
            }
        }
        fctype::DISCONNECT => match &c.queue {
            Some(q) if q.qid != 0 => Reply::Close,
            _ => Reply::status(Status::INVALID_FIELD),
        },
        _ => Reply::status(Status::INVALID_OPCODE),
    }
}

fn connect<L: Link>(c: &mut Connection<'_, L>, sqe: &SubmissionEntry, data: &[u8]) -> Reply {
    if c.queue.is_some() {
        return Reply::status(Status::COMMAND_SEQUENCE_ERROR);
    }
    let Ok(data) = <&[u8; CONNECT_DATA]>::try_from(data) else {
        return Reply::status(Status::SGL_LENGTH_INVALID);
    };
    let cdw10 = sqe.cdw10.get();
    if cdw10 & 0xffff != 0 {
        return Reply::status(CONNECT_INCOMPATIBLE_FORMAT);
    }
    let qid = (cdw10 >> 16) as u16;
    let sqsize = sqe.cdw11.get() as u16;
    let kato = sqe.cdw12.get();
    let mut hostid = [0u8; 16];
    hostid.copy_from_slice(&data[..16]);
    let cntlid = u16::from_le_bytes([data[16], data[17]]);
    let Some(subnqn) = nqn_field(&data[256..512]) else {
        return invalid_parameter(true, 256);
    };
    let Some(hostnqn) = nqn_field(&data[512..768]) else {
        return invalid_parameter(true, 512);
    };
    if sqsize == 0 || sqsize > MQES {
        return invalid_parameter(false, 44);
    }
    let peer = c.peer.clone();
    let target = c.target;
    let controller = if qid == 0 {
        let subsystem = if subnqn == DISCOVERY_NQN {
            None
        } else {
            let Some(s) = target.subsystem(subnqn, c.port) else {
                warn!(
                    "nvmf {peer}: Connect to unknown subsystem {subnqn} on port {}",
                    c.port
                );
                return invalid_parameter(true, 256);
            };
            if !s.allows(hostnqn) {
                warn!("nvmf {peer}: host {hostnqn} is not allowed on {subnqn}: Connect refused");
                return Reply::Done {
                    status: CONNECT_INVALID_HOST,
                    result: u64::from(1u32 << 16 | 512),
                    data: Vec::new(),
                };
            }
            Some(s)
        };
        if cntlid != DYNAMIC_CNTLID {
            return invalid_parameter(true, 16);
        }
        match target.create_controller(subsystem, hostnqn, hostid, c.port, kato) {
            Ok(ctrl) => ctrl,
            Err(_) => return Reply::status(Status::new(sct::COMMAND_SPECIFIC, 0x81)),
        }
    } else {
        let ctrl = match target.find_controller(cntlid, subnqn, hostnqn) {
            Ok(ctrl) => ctrl,
            Err(ConnectError::UnknownController | ConnectError::NoControllerId) => {
                warn!("nvmf {peer}: I/O queue {qid} Connect names no controller {cntlid} of {hostnqn} on {subnqn}");
                return invalid_parameter(true, 16);
            }
        };
        if ctrl.hostid != hostid {
            return invalid_parameter(true, 0);
        }
        if !ctrl.registers_enabled() {
            return Reply::status(Status::COMMAND_SEQUENCE_ERROR);
        }
        let granted = match ctrl.io_queues.load(Ordering::Acquire) {
            0 => MAX_IO_QUEUES,
            n => n,
        };
        let mut connected = ctrl.connected.lock().unwrap_or_else(|p| p.into_inner());
        if u32::from(qid) > granted || connected.contains(&qid) {
            return invalid_parameter(false, 42);
        }
        connected.push(qid);
        drop(connected);
        ctrl
    };
    let cntlid = controller.cntlid;
    let queue = Queue {
        controller: Arc::clone(&controller),
        qid,
        sqsize,
        sqhd: 0,
    };
    if let Err(e) = c.bind(queue) {
        warn!("nvmf {peer}: Connect of queue {qid}: {e}");
        if qid == 0 {
            target.remove_controller(cntlid);
        }
        return Reply::status(Status::INTERNAL_ERROR);
    }
    if qid == 0 {
        let granted = controller.kato_ms.load(Ordering::Relaxed);
        info!(
            "nvmf {peer}: host {hostnqn} connected to {subnqn}: controller {cntlid}, KATO {granted} ms (asked {kato})"
        );
    }
    Reply::result(u64::from(cntlid))
}

fn property_get(ctrl: &FabricsController, sqe: &SubmissionEntry) -> Reply {
    let eight = sqe.cdw10.get() & 0x7 == 1;
    let regs = ctrl.registers();
    let (value, is_eight) = match sqe.cdw11.get() {
        property::CAP => (cap(), true),
        property::VS => (u64::from(VERSION), false),
        property::CC => (u64::from(regs.cc), false),
        property::CSTS => (u64::from(regs.csts), false),
        _ => return Reply::status(Status::INVALID_FIELD),
    };
    if eight != is_eight {
        return Reply::status(Status::INVALID_FIELD);
    }
    Reply::result(value)
}

fn property_set(ctrl: &FabricsController, sqe: &SubmissionEntry) -> Reply {
    if sqe.cdw10.get() & 0x7 != 0 || sqe.cdw11.get() != property::CC {
        return Reply::status(Status::INVALID_FIELD);
    }
    let cc = sqe.cdw12.get();
    let shutdown = (cc >> 14) & 0x3 != 0;
    if shutdown {
        if let Some(s) = &ctrl.subsystem {
            for ns in s.namespaces().values() {
                if let Err(e) = ns.flush() {
                    warn!("nvmf: shutdown flush of {}: {e}", s.nqn);
                }
            }
        }
    }
    ctrl.set_cc(cc, shutdown);
    Reply::status(Status::SUCCESS)
}

/// An admin command of a connected admin queue.
pub fn admin_command<L: Link>(
    c: &mut Connection<'_, L>,
    ctrl: &FabricsController,
    sqe: &SubmissionEntry,
    data: &[u8],
    transfer: usize,
) -> Reply {
    let discovery = ctrl.subsystem.is_none();
    let cdw10 = sqe.cdw10.get();
    match sqe.opcode() {
        admin::IDENTIFY => {
            let page = identify::identify(ctrl, sqe);
            match page {
                Ok(page) => Reply::data(fit(page, transfer)),
                Err(status) => Reply::status(status),
            }
        }
        admin::GET_LOG_PAGE => {
            let lid = cdw10 as u8;
            let dwords = (u64::from(sqe.cdw11.get() & 0xffff) << 16 | u64::from(cdw10 >> 16)) + 1;
            let offset = u64::from(sqe.cdw12.get()) | u64::from(sqe.cdw13.get()) << 32;
            let only_groups = cdw10 & (1 << 8) != 0;
            // Reading the ANA log with Retain Asynchronous Event cleared
            // clears a reported ANA change.
            if lid == ANA_LOG && cdw10 & (1 << 15) == 0 {
                ctrl.events.ana_log_read();
            }
            let Some(log) = identify::log_page(c.target, ctrl, lid, only_groups) else {
                return Reply::status(Status::INVALID_LOG_PAGE);
            };
            if offset & 3 != 0 || offset > log.len() as u64 {
                return Reply::status(Status::INVALID_FIELD);
            }
            let want = (dwords * 4).min(transfer as u64) as usize;
            let start = offset as usize;
            let mut out = vec![0u8; want];
            let end = (start + want).min(log.len());
            out[..end - start].copy_from_slice(&log[start..end]);
            Reply::data(out)
        }
        admin::SET_FEATURES => set_features(ctrl, sqe, discovery),
        admin::GET_FEATURES => get_features(ctrl, sqe, discovery),
        // Keep Alive moves no data: one that names some (an SGL length, a
        // data direction, carried bytes) is malformed. It restarted the
        // Keep Alive Timer anyway, as any command does.
        admin::KEEP_ALIVE if sqe.sgl1().length.get() != 0 || !data.is_empty() || transfer != 0 => {
            Reply::status(Status::SGL_LENGTH_INVALID)
        }
        admin::KEEP_ALIVE => Reply::status(Status::SUCCESS),
        admin::ASYNC_EVENT_REQUEST => {
            if c.hold_event_request(sqe.cid()) {
                Reply::Held
            } else {
                Reply::status(Status::AER_LIMIT_EXCEEDED)
            }
        }
        _ => Reply::status(Status::INVALID_OPCODE),
    }
}

/// Pads or cuts `page` to the command's transfer length.
fn fit(mut page: Vec<u8>, transfer: usize) -> Vec<u8> {
    page.resize(transfer, 0);
    page
}

/// Log page identifier of the ANA log.
const ANA_LOG: u8 = 0x0c;

/// Feature identifiers the target keeps beyond nvme-shim's list.
const FEATURE_KEEP_ALIVE_TIMER: u8 = 0x0f;

fn set_features(ctrl: &FabricsController, sqe: &SubmissionEntry, discovery: bool) -> Reply {
    let value = sqe.cdw11.get();
    match sqe.cdw10.get() as u8 {
        feature::NUMBER_OF_QUEUES if !discovery => {
            let asked = (value & 0xffff).max(value >> 16) + 1;
            let granted = asked.min(MAX_IO_QUEUES);
            ctrl.io_queues.store(granted, Ordering::Release);
            let n = granted - 1;
            Reply::result(u64::from(n | n << 16))
        }
        FEATURE_KEEP_ALIVE_TIMER => {
            ctrl.set_kato(value);
            Reply::status(Status::SUCCESS)
        }
        feature::ASYNC_EVENT_CONFIG => {
            ctrl.events.configure(value);
            Reply::status(Status::SUCCESS)
        }
        feature::VOLATILE_WRITE_CACHE if !discovery => Reply::status(Status::SUCCESS),
        _ => Reply::status(Status::INVALID_FIELD),
    }
}

fn get_features(ctrl: &FabricsController, sqe: &SubmissionEntry, discovery: bool) -> Reply {
    match sqe.cdw10.get() as u8 {
        feature::NUMBER_OF_QUEUES if !discovery => {
            let n = match ctrl.io_queues.load(Ordering::Acquire) {
                0 => MAX_IO_QUEUES,
                n => n,
            } - 1;
            Reply::result(u64::from(n | n << 16))
        }
        FEATURE_KEEP_ALIVE_TIMER => Reply::result(u64::from(ctrl.kato_ms.load(Ordering::Relaxed))),
        feature::ASYNC_EVENT_CONFIG => Reply::result(u64::from(ctrl.events.configuration())),
        feature::VOLATILE_WRITE_CACHE if !discovery => Reply::result(1),
        _ => Reply::status(Status::INVALID_FIELD),
    }
}
