//! Remote SSDs the host adds while dpuemu runs: Remote SSD Add and Remove,
//! sent by dpublk's configfs (`ssds/<name>/remote`, Documentation/configfs.rst).
//!
//! The volume layer and the accelerator's function take their SSD list at
//! start-up, so dpuemu reserves [`REMOTE_SLOTS`] SSD indexes after the
//! images and the file's `[remote-ssd]` sections: each is a
//! [`RemoteSlot`], an SSD with nothing behind it (SSD List does not show
//! it, SSD Attach does not find it) until Remote SSD Add puts a
//! [`RemoteSsd`] there. From then on it is the same machinery as a
//! `[remote-ssd]` section: the member fails when the connection is lost,
//! the supervisor connects again and the arrays that failed it re-add and
//! rebuild it, and a disk that carries a family's label takes its missing
//! member slot back.
//!
//! The payload comes from the host driver and is untrusted: every field is
//! checked, reserved bytes included, with the file's rules (`config.rs`).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock, Weak};

use log::{info, warn};
use nvme_shim::sqe::SubmissionEntry;
use nvme_shim::status::Status;
use nvme_shim::vendor::{self, status as vs, vendor_status, RemoteSsdAdd};
use nvme_shim::wire::Wire;

use super::config::{valid_nqn, valid_volume_name, RemoteGeometry, DISCOVERY_NQN};
use super::configure::{c_text, zero, Refusal};
use super::initiator::{is_geometry_error, RemoteSpec};
use super::remote_ssd::{readd_hook, RemoteSsd, RemoteSsdPolicy};
use crate::namespace::Namespace;
use crate::ownership::SsdOwnership;
use crate::volumes::VolumeManager;

/// SSD indexes reserved for remote SSDs added at run time.
pub const REMOTE_SLOTS: usize = 8;

/// An SSD index that a Remote SSD Add may fill. Empty, it is an SSD of
/// no bytes whose every command fails as on a lost connection.
#[derive(Default)]
pub struct RemoteSlot {
    ssd: RwLock<Option<Arc<RemoteSsd>>>,
}

impl RemoteSlot {
    /// The remote SSD in the slot. The clone keeps it alive for one
    /// command even if Remote SSD Remove empties the slot meanwhile.
    fn current(&self) -> Option<Arc<RemoteSsd>> {
        self.ssd.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn connected(&self) -> io::Result<Arc<RemoteSsd>> {
        self.current()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }

    /// Whether no remote SSD is in the slot.
    pub fn is_empty(&self) -> bool {
        self.current().is_none()
    }

    fn set(&self, ssd: Option<Arc<RemoteSsd>>) -> Option<Arc<RemoteSsd>> {
        std::mem::replace(
            &mut *self.ssd.write().unwrap_or_else(|p| p.into_inner()),
            ssd,
        )
    }
}

impl Namespace for RemoteSlot {
    fn size(&self) -> u64 {
        self.current().map_or(0, |s| s.size())
    }

    fn lba_shift(&self) -> u8 {
        self.current().map_or(12, |s| s.lba_shift())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.connected()?.read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.connected()?.write_at(offset, data)
    }

    fn flush(&self) -> io::Result<()> {
        self.connected()?.flush()
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.connected()?.write_zeroes(offset, len)
    }

    fn deallocate(&self, offset: u64, len: u64) -> io::Result<()> {
        self.connected()?.deallocate(offset, len)
    }
}

/// One reserved SSD index, as the accelerator's SSD list holds it.
pub struct SlotHandle {
    pub index: u16,
    pub ownership: Arc<SsdOwnership>,
    pub slot: Arc<RemoteSlot>,
}

/// The reserved SSD indexes and what they need to add a remote SSD.
pub struct RemoteSlots {
    slots: Vec<SlotHandle>,
    /// Re-adds and label joins go to it (weak: the manager outlives no
    /// one's command).
    volumes: Weak<VolumeManager>,
    /// The file's `[remote-ssd]` namespaces: not added a second time.
    fixed: Vec<RemoteSpec>,
    /// Timings of the added SSDs (the file's defaults; tests shorten them).
    policy: RemoteSsdPolicy,
    /// Serializes Add and Remove (a slot is chosen and filled as one step).
    changes: Mutex<()>,
}

impl RemoteSlots {
    pub fn new(
        slots: Vec<SlotHandle>,
        volumes: Weak<VolumeManager>,
        fixed: Vec<RemoteSpec>,
        policy: RemoteSsdPolicy,
    ) -> Self {
        Self {
            slots,
            volumes,
            fixed,
            policy,
            changes: Mutex::new(()),
        }
    }

    /// Whether SSD `index` is a reserved index with no remote SSD in it
    /// (the accelerator shows no SSD there).
    pub fn is_empty_slot(&self, index: u16) -> bool {
        self.slots
            .iter()
            .any(|s| s.index == index && s.slot.is_empty())
    }

    /// Remote SSD Add: connects (or, with a size, may start absent), fills
    /// the first free slot, attaches the SSD and returns its index. A disk
    /// whose label says it is the missing member of an open family takes
    /// that member back at once, as when it reconnects.
    pub fn add(&self, raw: &[u8]) -> Result<u32, Status> {
        let r = RemoteSsdAdd::read_from(raw).ok_or(vendor_status(vs::INVALID_PAYLOAD))?;
        let (name, spec, geometry) = check_remote_ssd(&r).map_err(|why| {
            warn!("nvmf configure: Remote SSD Add refused: {why}");
            vendor_status(vs::INVALID_PAYLOAD)
        })?;
        let _changes = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        let taken = self.fixed.contains(&spec)
            || self
                .slots
                .iter()
                .filter_map(|s| s.slot.current())
                .any(|s| *s.spec() == spec);
        if taken {
            warn!(
                "nvmf configure: remote SSD {name}: {} {} namespace {} is an SSD already",
                spec.address, spec.subnqn, spec.nsid
            );
            return Err(vendor_status(vs::NVMF_EXISTS));
        }
        let Some(handle) = self.slots.iter().find(|s| s.slot.is_empty()) else {
            warn!(
                "nvmf configure: remote SSD {name}: all {} remote SSD indexes are taken",
                self.slots.len()
            );
            return Err(vendor_status(vs::NO_SPACE));
        };
        let ssd = RemoteSsd::start(&name, spec.clone(), self.policy, geometry).map_err(|e| {
            warn!(
                "nvmf configure: remote SSD {name}: {} {} namespace {}: {e}",
                spec.address, spec.subnqn, spec.nsid
            );
            // A remote that breaks the protocol is as unusable as one that
            // does not answer; only a namespace it can read but not use
            // (size, block size) is a geometry refusal.
            if is_geometry_error(&e) {
                vendor_status(vs::REMOTE_GEOMETRY)
            } else {
                vendor_status(vs::REMOTE_UNREACHABLE)
            }
        })?;
        let index = handle.index;
        if let Err(code) = handle.ownership.attach() {
            warn!("nvmf configure: remote SSD {name}: SSD {index} cannot be attached ({code:#x})");
            return Err(vendor_status(code));
        }
        ssd.on_return(readd_hook(self.volumes.clone(), index));
        let connected = ssd.is_connected();
        handle.slot.set(Some(ssd));
        info!(
            "SSD {index}: remote SSD {name} ({} {} namespace {}){}",
            spec.address,
            spec.subnqn,
            spec.nsid,
            if connected {
                ""
            } else {
                ", absent: joins its family when it answers"
            }
        );
        if let (true, Some(volumes)) = (connected, self.volumes.upgrade()) {
            volumes.join_by_label(index);
        }
        Ok(u32::from(index))
    }

    /// Remote SSD Remove: refused while a volume stores data on the SSD;
    /// otherwise it is detached and disconnected, and its index is free.
    pub fn remove(&self, sqe: &SubmissionEntry) -> Result<u32, Status> {
        let index = vendor::ssd_index(sqe).ok_or(Status::INVALID_FIELD)?;
        let _changes = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        let handle = self
            .slots
            .iter()
            .find(|s| s.index == index && !s.slot.is_empty())
            .ok_or(vendor_status(vs::SSD_NOT_FOUND))?;
        let view = handle.ownership.view();
        if view.in_use {
            warn!("nvmf configure: SSD {index} holds a volume: not removed");
            return Err(vendor_status(vs::SSD_IN_USE));
        }
        if view.attached {
            handle.ownership.detach().map_err(vendor_status)?;
        }
        if let Some(volumes) = self.volumes.upgrade() {
            volumes.ssd_detached(index);
        }
        if let Some(ssd) = handle.slot.set(None) {
            info!(
                "SSD {index}: remote SSD {} removed ({} {} namespace {})",
                ssd.name(),
                ssd.spec().address,
                ssd.spec().subnqn,
                ssd.spec().nsid
            );
        }
        Ok(0)
    }
}

/// Checks Remote SSD Add with the rules of a `[remote-ssd]` section:
/// TCP, an address literal of the family named (not multicast, not
/// unspecified: it is connected to), a service of 1-65535, a subsystem NQN,
/// an NSID of 1 to FFFFFFFDh, a name of 1-31 of `[A-Za-z0-9._-]`, and
/// either no size (and no block size) or a nonzero whole number of 512 or
/// 4096-byte blocks; reserved bytes zero.
pub fn check_remote_ssd(
    r: &RemoteSsdAdd,
) -> Result<(String, RemoteSpec, Option<RemoteGeometry>), Refusal> {
    zero(&r.rsvd17)?;
    zero(&r.rsvd384)?;
    if r.trtype != vendor::NVMF_TRTYPE_TCP {
        return Err("transport type is not TCP");
    }
    let name = c_text(&r.name)?;
    if !valid_volume_name(name) {
        return Err("name is not 1-31 of [A-Za-z0-9._-]");
    }
    let ip: IpAddr = c_text(&r.traddr)?
        .parse()
        .map_err(|_| "address is not an IP literal")?;
    let family = if ip.is_ipv4() {
        vendor::NVMF_ADRFAM_IPV4
    } else {
        vendor::NVMF_ADRFAM_IPV6
    };
    if r.adrfam != family {
        return Err("address family does not match the address");
    }
    if ip.is_multicast() || ip.is_unspecified() {
        return Err("not an address to connect to");
    }
    let service = r.trsvcid.get();
    if service == 0 {
        return Err("TCP port 0");
    }
    let subnqn = c_text(&r.subnqn)?;
    if !valid_nqn(subnqn) || subnqn == DISCOVERY_NQN {
        return Err("not a subsystem NQN");
    }
    let nsid = r.nsid.get();
    if nsid == 0 || nsid >= 0xffff_fffe {
        return Err("NSID is not 1 to FFFFFFFDh");
    }
    let geometry = match (r.size_bytes.get(), r.lba_shift) {
        (0, 0) => None,
        (0, _) => return Err("a block size without a size"),
        (size, shift @ (9 | 12)) if size & ((1u64 << shift) - 1) == 0 => Some(RemoteGeometry {
            size,
            lba_shift: shift,
        }),
        (_, 9 | 12) => return Err("size is not a whole number of blocks"),
        _ => return Err("block size is not 512 or 4096"),
    };
    Ok((
        name.to_string(),
        RemoteSpec {
            address: SocketAddr::new(ip, service),
            subnqn: subnqn.to_string(),
            nsid,
        },
        geometry,
    ))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use nvme_shim::wire::c_string_field;

    pub(crate) fn request(traddr: &str, service: u16, subnqn: &str, nsid: u32) -> RemoteSsdAdd {
        let mut r = RemoteSsdAdd::zeroed();
        r.trtype = vendor::NVMF_TRTYPE_TCP;
        r.adrfam = if traddr.contains(':') {
            vendor::NVMF_ADRFAM_IPV6
        } else {
            vendor::NVMF_ADRFAM_IPV4
        };
        r.trsvcid.set(service);
        r.nsid.set(nsid);
        c_string_field(&mut r.name, b"shelf");
        c_string_field(&mut r.traddr, traddr.as_bytes());
        c_string_field(&mut r.subnqn, subnqn.as_bytes());
        r
    }

    #[test]
    fn every_field_of_remote_ssd_add_is_checked() {
        let nqn = "nqn.2026-12.org.example:shelf";
        let good = request("192.0.2.8", 4420, nqn, 1);
        let (name, spec, geometry) = check_remote_ssd(&good).expect("valid");
        assert_eq!(name, "shelf");
        assert_eq!(spec.address, "192.0.2.8:4420".parse().unwrap());
        assert_eq!((spec.subnqn.as_str(), spec.nsid), (nqn, 1));
        assert_eq!(geometry, None);
        let v6 = request("::1", 4420, nqn, 7);
        assert!(check_remote_ssd(&v6).is_ok());

        let mut sized = good;
        sized.size_bytes.set(1 << 30);
        sized.lba_shift = 9;
        assert_eq!(
            check_remote_ssd(&sized).unwrap().2,
            Some(RemoteGeometry {
                size: 1 << 30,
                lba_shift: 9
            })
        );

        let mut bad: Vec<(RemoteSsdAdd, &str)> = Vec::new();
        let mut b = good;
        b.trtype = 1;
        bad.push((b, "transport"));
        let mut b = good;
        b.adrfam = vendor::NVMF_ADRFAM_IPV6;
        bad.push((b, "family"));
        bad.push((request("0.0.0.0", 4420, nqn, 1), "unspecified"));
        bad.push((request("224.0.0.1", 4420, nqn, 1), "multicast"));
        bad.push((request("host.example", 4420, nqn, 1), "host name"));
        bad.push((request("192.0.2.8", 0, nqn, 1), "service 0"));
        bad.push((request("192.0.2.8", 4420, nqn, 0), "NSID 0"));
        bad.push((request("192.0.2.8", 4420, nqn, 0xffff_fffe), "NSID"));
        bad.push((request("192.0.2.8", 4420, "shelf", 1), "NQN"));
        bad.push((request("192.0.2.8", 4420, DISCOVERY_NQN, 1), "discovery"));
        let mut b = good;
        b.name = [0; 32];
        bad.push((b, "empty name"));
        let mut b = good;
        c_string_field(&mut b.name, b"a b");
        bad.push((b, "name with a space"));
        let mut b = good;
        b.traddr[63] = b'x';
        bad.push((b, "bytes after the NUL"));
        let mut b = good;
        b.subnqn = [b'n'; 256];
        bad.push((b, "NQN without a NUL"));
        let mut b = good;
        b.rsvd17[3] = 1;
        bad.push((b, "reserved"));
        let mut b = good;
        b.rsvd384[127] = 1;
        bad.push((b, "reserved at the end"));
        let mut b = good;
        b.lba_shift = 12;
        bad.push((b, "block size without size"));
        let mut b = sized;
        b.lba_shift = 10;
        bad.push((b, "block size 1024"));
        let mut b = sized;
        b.lba_shift = 12;
        b.size_bytes.set((1 << 30) + 512);
        bad.push((b, "partial block"));
        for (r, what) in bad {
            assert!(check_remote_ssd(&r).is_err(), "{what} was accepted");
        }
    }

    #[test]
    fn an_empty_slot_is_a_disconnected_ssd_of_no_bytes() {
        let slot = RemoteSlot::default();
        assert!(slot.is_empty());
        assert_eq!(slot.size(), 0);
        let mut buf = [0u8; 512];
        let e = slot.read_at(0, &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotConnected);
        assert_eq!(
            slot.write_at(0, &buf).unwrap_err().kind(),
            io::ErrorKind::NotConnected
        );
        assert_eq!(
            slot.flush().unwrap_err().kind(),
            io::ErrorKind::NotConnected
        );
    }
}
