//! Identify data and log pages of the target's controllers, built as raw
//! pages with the byte offsets of the NVMe base and fabrics specifications
//! (the Identify Controller fields of fabrics, ANA and keep-alive are not
//! in nvme-shim's structures, which serve the PCIe device).

use std::hash::{DefaultHasher, Hash, Hasher};

use nvme_shim::opcode::cns;
use nvme_shim::pci;
use nvme_shim::sqe::SubmissionEntry;
use nvme_shim::status::Status;

use super::config::MAX_NSID;
use super::connection::AEN_ANA_CHANGE;
use super::connection::{IN_CAPSULE_DATA, MAX_PENDING};
use super::fabrics::{AERL, VERSION};
use super::target::{FabricsController, Subsystem, Target};

/// Bytes of an Identify page.
const PAGE: usize = 4096;
/// Controller type: I/O controller.
const CNTRLTYPE_IO: u8 = 1;
/// Controller type: discovery controller.
const CNTRLTYPE_DISCOVERY: u8 = 2;
/// MDTS: 2^5 pages of 4 KiB, the connection's transfer limit.
const MDTS: u8 = 5;
/// The one ANA group every namespace belongs to.
const ANA_GROUP: u32 = 1;
/// ANA state: optimized.
const ANA_OPTIMIZED: u8 = 1;

/// Log page identifiers.
mod lid {
    pub const ERROR: u8 = 0x01;
    pub const SMART: u8 = 0x02;
    pub const FIRMWARE_SLOT: u8 = 0x03;
    pub const ANA: u8 = 0x0c;
    pub const DISCOVERY: u8 = 0x70;
}

fn put16(p: &mut [u8], at: usize, v: u16) {
    p[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(p: &mut [u8], at: usize, v: u32) {
    p[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(p: &mut [u8], at: usize, v: u64) {
    p[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// `text` into a field padded with `pad`, cut to the field.
fn text(p: &mut [u8], at: usize, len: usize, text: &str, pad: u8) {
    let field = &mut p[at..at + len];
    field.fill(pad);
    let n = text.len().min(len);
    field[..n].copy_from_slice(&text.as_bytes()[..n]);
}

/// A stable 16-byte identifier of `parts` (NGUID): two hashes side by side.
fn guid(parts: &[&str]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, half) in out.chunks_exact_mut(8).enumerate() {
        let mut h = DefaultHasher::new();
        i.hash(&mut h);
        parts.hash(&mut h);
        half.copy_from_slice(&h.finish().to_le_bytes());
    }
    out
}

/// Identify, by CNS.
pub fn identify(ctrl: &FabricsController, sqe: &SubmissionEntry) -> Result<Vec<u8>, Status> {
    let cdw10 = sqe.cdw10.get();
    let csi = (sqe.cdw11.get() >> 24) as u8;
    let nsid = sqe.nsid.get();
    let subsystem = ctrl.subsystem.as_deref();
    match (cdw10 as u8, subsystem) {
        (cns::CONTROLLER, _) => Ok(controller(ctrl)),
        (cns::NAMESPACE, Some(s)) => namespace(s, nsid),
        (cns::ACTIVE_NAMESPACES, Some(s)) => {
            if nsid >= 0xffff_fffe {
                return Err(Status::INVALID_NAMESPACE);
            }
            let mut page = vec![0u8; PAGE];
            for (slot, id) in s
                .namespaces()
                .keys()
                .filter(|&&id| id > nsid)
                .take(PAGE / 4)
                .enumerate()
            {
                put32(&mut page, slot * 4, *id);
            }
            Ok(page)
        }
        (cns::NAMESPACE_DESCRIPTORS, Some(s)) => {
            if !s.namespaces().contains_key(&nsid) {
                return Err(Status::INVALID_NAMESPACE);
            }
            let mut page = vec![0u8; PAGE];
            // NGUID descriptor, then the command set identifier (NVM).
            page[0] = 0x02;
            page[1] = 16;
            page[4..20].copy_from_slice(&guid(&[&s.nqn, &nsid.to_string()]));
            page[20] = 0x04;
            page[21] = 1;
            Ok(page)
        }
        // I/O command set specific controller data of the NVM command set:
        // no limits beyond the common ones.
        (cns::CONTROLLER_CSI, Some(_)) if csi == 0 => Ok(vec![0u8; PAGE]),
        _ => Err(Status::INVALID_FIELD),
    }
}

fn controller(ctrl: &FabricsController) -> Vec<u8> {
    let mut p = vec![0u8; PAGE];
    let (serial, nqn, io) = match &ctrl.subsystem {
        Some(s) => (s.serial.as_str(), s.nqn.as_str(), true),
        None => ("DPUEMU-DISCOVERY", super::config::DISCOVERY_NQN, false),
    };
    put16(&mut p, 0, pci::VENDOR_ID);
    put16(&mut p, 2, pci::VENDOR_ID);
    text(&mut p, 4, 20, serial, b' ');
    text(&mut p, 24, 40, "dpuemu NVMe/TCP target", b' ');
    text(&mut p, 64, 8, env!("CARGO_PKG_VERSION"), b' ');
    // CMIC: the subsystem may have several controllers, and reports ANA.
    p[76] = if io { (1 << 1) | (1 << 3) } else { 0 };
    p[77] = MDTS;
    put16(&mut p, 78, ctrl.cntlid);
    put32(&mut p, 80, VERSION);
    // OAES: ANA change notices (I/O controllers).
    let oaes = if io { AEN_ANA_CHANGE } else { 0 };
    put32(&mut p, 92, oaes);
    p[111] = if io {
        CNTRLTYPE_IO
    } else {
        CNTRLTYPE_DISCOVERY
    };
    p[259] = AERL;
    // LPA: extended data for Get Log Page (64-bit offsets).
    p[261] = 1 << 2;
    // KAS: keep-alive granularity in 100 ms units.
    put16(&mut p, 320, 1);
    if io {
        // ANATT 10 s; ANACAP: optimized and inaccessible states reported,
        // group ID does not change while a namespace is attached; one
        // group.
        p[342] = 10;
        p[343] = 1 | (1 << 3) | (1 << 7);
        put32(&mut p, 344, ANA_GROUP);
        put32(&mut p, 348, ANA_GROUP);
    }
    p[512] = 0x66; // SQES: 64-byte entries.
    p[513] = 0x44; // CQES: 16-byte entries.
    put16(&mut p, 514, MAX_PENDING as u16);
    if io {
        put32(&mut p, 516, MAX_NSID);
        // ONCS: Dataset Management and Write Zeroes.
        put16(&mut p, 520, (1 << 2) | (1 << 3));
        p[525] = 1; // VWC present: Flush means something.
    }
    if io {
        // MNAN: hosts size the ANA log's NSID lists from it.
        put32(&mut p, 540, MAX_NSID);
    }
    // SGLS: SGLs supported (no alignment), offset subtype in data blocks,
    // transport SGL data blocks.
    put32(&mut p, 536, 1 | (1 << 20));
    text(&mut p, 768, 256, nqn, 0);
    // Fabrics: IOCCSZ and IORCSZ in 16-byte units, ICDOFF 0, dynamic
    // controller model, one SGL descriptor.
    put32(&mut p, 1792, (64 + IN_CAPSULE_DATA) / 16);
    put32(&mut p, 1796, 1);
    put16(&mut p, 1800, 0);
    p[1802] = 0;
    p[1803] = 1;
    p
}

fn namespace(s: &Subsystem, nsid: u32) -> Result<Vec<u8>, Status> {
    if nsid == 0 || nsid > MAX_NSID {
        return Err(Status::INVALID_NAMESPACE);
    }
    let mut p = vec![0u8; PAGE];
    let Some(ns) = s.namespaces().get(&nsid).cloned() else {
        // An inactive NSID of the valid range: a zeroed page.
        return Ok(p);
    };
    let shift = ns.lba_shift();
    let blocks = ns.size() >> shift;
    put64(&mut p, 0, blocks);
    put64(&mut p, 8, blocks);
    put64(&mut p, 16, ns.used() >> shift);
    p[24] = 0; // NSFEAT
    p[25] = 0; // NLBAF: one format
    p[26] = 0; // FLBAS
    p[30] = 1; // NMIC: may be attached to several controllers.
    p[33] = 1; // DLFEAT: deallocated blocks read as zeroes.
    put32(&mut p, 92, ANA_GROUP);
    p[104..120].copy_from_slice(&guid(&[&s.nqn, &nsid.to_string()]));
    // LBA format 0: no metadata, 2^shift bytes, best performance.
    p[128 + 2] = shift;
    Ok(p)
}

/// A log page's whole content (the caller applies offset and length).
pub fn log_page(
    target: &Target,
    ctrl: &FabricsController,
    id: u8,
    only_groups: bool,
) -> Option<Vec<u8>> {
    match (id, ctrl.subsystem.as_deref()) {
        (lid::ERROR, _) => Some(vec![0u8; 64]),
        (lid::SMART, Some(_)) => {
            let mut p = vec![0u8; 512];
            // Composite temperature 300 K, 100 % spare, threshold 10 %.
            put16(&mut p, 1, 300);
            p[3] = 100;
            p[4] = 10;
            Some(p)
        }
        (lid::FIRMWARE_SLOT, _) => {
            let mut p = vec![0u8; 512];
            p[0] = 1;
            text(&mut p, 8, 8, env!("CARGO_PKG_VERSION"), b' ');
            Some(p)
        }
        (lid::ANA, Some(s)) => Some(ana(s, only_groups)),
        (lid::DISCOVERY, None) => Some(discovery(target, ctrl)),
        _ => None,
    }
}

/// The ANA log: one group, optimized, holding every namespace.
fn ana(s: &Subsystem, only_groups: bool) -> Vec<u8> {
    let nsids: Vec<u32> = if only_groups {
        Vec::new()
    } else {
        s.namespaces().keys().copied().collect()
    };
    let mut p = vec![0u8; 16 + 32 + 4 * nsids.len()];
    put64(&mut p, 0, 1); // change count
    put16(&mut p, 8, 1); // one group descriptor
    put32(&mut p, 16, ANA_GROUP);
    put32(&mut p, 20, nsids.len() as u32);
    put64(&mut p, 24, 1);
    // The group's state is its namespaces' (a high-availability node makes
    // them all inaccessible together).
    p[32] = s
        .namespaces()
        .values()
        .next()
        .map_or(ANA_OPTIMIZED, |ns| ns.ana_state());
    for (i, id) in nsids.iter().enumerate() {
        put32(&mut p, 48 + 4 * i, *id);
    }
    p
}

/// The discovery log: every subsystem reachable through the controller's
/// port that lets its host in.
fn discovery(target: &Target, ctrl: &FabricsController) -> Vec<u8> {
    const HEADER: usize = 1024;
    const ENTRY: usize = 1024;
    let Some(port) = target.port(ctrl.port) else {
        return vec![0u8; HEADER];
    };
    let subsystems = target.subsystems();
    let visible: Vec<&Subsystem> = subsystems
        .iter()
        .map(|s| s.as_ref())
        .filter(|s| s.on_port(port.id) && s.allows(&ctrl.hostnqn))
        .collect();
    let mut p = vec![0u8; HEADER + ENTRY * visible.len()];
    put64(&mut p, 0, target.generation());
    put64(&mut p, 8, visible.len() as u64);
    put16(&mut p, 16, 0);
    for (i, s) in visible.iter().enumerate() {
        let e = HEADER + ENTRY * i;
        p[e] = 3; // TRTYPE: TCP
        p[e + 1] = if port.address.is_ipv4() { 1 } else { 2 };
        p[e + 2] = 2; // SUBTYPE: NVM subsystem
        p[e + 3] = 0x2; // TREQ: secure channel not required
        put16(&mut p, e + 4, port.id);
        put16(&mut p, e + 6, 0xffff); // dynamic controllers
        put16(&mut p, e + 8, 32); // ASQSZ
                                  // NUL-padded strings, as Linux's nvmet fills them and its
                                  // initiators read them.
        text(&mut p, e + 32, 32, &port.address.port().to_string(), 0);
        text(&mut p, e + 256, 256, &s.nqn, 0);
        text(&mut p, e + 512, 256, &port.address.ip().to_string(), 0);
        p[e + 768] = 0; // TSAS: no security
    }
    p
}
