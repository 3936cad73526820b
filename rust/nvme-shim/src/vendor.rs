//! The dpublk vendor-specific admin command set (opcodes 0xC0-0xFF).
//!
//! Opcodes follow the NVMe opcode convention: bits 1:0 give the data
//! direction (00 none, 01 host to controller, 10 controller to host) and
//! bits 7:2 the function. Payloads travel through PRP entries 1 and 2 of the
//! command and have the fixed size of their structure ([`payload_bytes`]).
//! Results that fit in 32 bits (a new NSID, a snapshot ID) come back in
//! completion DW0. Failures use Status Code Type 7 (vendor specific) with the
//! codes in [`status`].

use super::opcode::{data_direction, DataDirection};
use super::sqe::SubmissionEntry;
use super::status::{sct, Status};
use super::wire::{Le16, Le32, Le64, Wire};

/// Vendor admin opcodes.
pub mod opcode {
    /// Attach an SSD to the accelerator. CDW10: SSD index.
    pub const SSD_ATTACH: u8 = 0xc0;
    /// Detach an SSD from the accelerator. CDW10: SSD index.
    pub const SSD_DETACH: u8 = 0xc4;
    /// List SSDs. Data out: `SsdList`.
    pub const SSD_LIST: u8 = 0xca;
    /// Create a volume. Data in: `VolumeCreate`. DW0: new NSID.
    pub const VOLUME_CREATE: u8 = 0xcd;
    /// Delete a volume. NSID: the volume.
    pub const VOLUME_DELETE: u8 = 0xd0;
    /// Resize a volume. NSID: the volume; CDW10/11: new size in bytes.
    pub const VOLUME_RESIZE: u8 = 0xd4;
    /// List volumes. Data out: `VolumeList`.
    pub const VOLUME_LIST: u8 = 0xda;
    /// Change a volume's service settings. NSID: the volume.
    /// Data in: `ServiceSettings`.
    pub const SERVICE_SET: u8 = 0xdd;
    /// Create a snapshot. NSID: the volume. Data in: `ObjectName`.
    /// DW0: snapshot ID.
    pub const SNAPSHOT_CREATE: u8 = 0xe1;
    /// Delete a snapshot. CDW10: snapshot ID.
    pub const SNAPSHOT_DELETE: u8 = 0xe4;
    /// Clone a snapshot into a new volume. CDW10: snapshot ID.
    /// Data in: `ObjectName`. DW0: new NSID.
    pub const SNAPSHOT_CLONE: u8 = 0xe9;
    /// List the snapshots of a volume. NSID: the volume.
    /// Data out: `SnapshotList`.
    pub const SNAPSHOT_LIST: u8 = 0xe6;
    /// Revert a volume to a snapshot. NSID: the volume; CDW10: snapshot ID.
    pub const SNAPSHOT_REVERT: u8 = 0xec;
    /// Read statistics. NSID: 0 for the controller or a volume.
    /// Data out: `Statistics`.
    pub const STATISTICS: u8 = 0xf2;
    /// Inject or clear a fault. Data in: `FaultInjection`.
    pub const FAULT_INJECT: u8 = 0xf5;
    /// Volume maintenance. NSID: the volume; CDW10: `maintenance::*`
    /// action; CDW11: action argument. DW0: action result.
    pub const MAINTENANCE: u8 = 0xf8;
    /// Read a volume's service settings. NSID: the volume.
    /// Data out: `ServiceSettings`.
    pub const SERVICE_GET: u8 = 0xfa;
    /// NVMe/TCP target: listen on a port. Data in: `NvmfPort`.
    pub const NVMF_PORT_ADD: u8 = 0xc1;
    /// NVMe/TCP target: stop listening on a port and end every connection
    /// made through it. CDW10: port ID.
    pub const NVMF_PORT_REMOVE: u8 = 0xc8;
    /// NVMe/TCP target: create a subsystem (flag `NVMF_SUBSYSTEM_CREATE`),
    /// or replace the settings (ports, allowed hosts, allow any host) of an
    /// existing one; its namespaces stay. Data in: `NvmfSubsystem`.
    pub const NVMF_SUBSYSTEM_SET: u8 = 0xc5;
    /// NVMe/TCP target: remove a subsystem without namespaces and end its
    /// controllers. Data in: `NvmfName`.
    pub const NVMF_SUBSYSTEM_REMOVE: u8 = 0xc9;
    /// NVMe/TCP target: add a namespace (a volume) to a subsystem. Data in:
    /// `NvmfNamespace`.
    pub const NVMF_NAMESPACE_ADD: u8 = 0xd1;
    /// NVMe/TCP target: remove a namespace from a subsystem. Data in:
    /// `NvmfNamespace` (volume name empty).
    pub const NVMF_NAMESPACE_REMOVE: u8 = 0xd5;
    /// Make a namespace of a remote NVMe/TCP subsystem one more SSD of the
    /// accelerator and attach it. Data in: `RemoteSsdAdd`. DW0: the new
    /// SSD's index.
    pub const REMOTE_SSD_ADD: u8 = 0xd9;
    /// Detach a remote SSD made by Remote SSD Add and disconnect it; its
    /// index is free again. CDW10: SSD index.
    pub const REMOTE_SSD_REMOVE: u8 = 0xcc;
}

/// Vendor status codes (Status Code Type 7).
pub mod status {
    /// The SSD index does not name an SSD function.
    pub const SSD_NOT_FOUND: u8 = 0x01;
    /// The SSD's own NVMe controller is enabled by the host (CC.EN=1).
    pub const SSD_BUSY: u8 = 0x02;
    /// The SSD is already attached to the accelerator.
    pub const SSD_ALREADY_ATTACHED: u8 = 0x03;
    /// The SSD is not attached to the accelerator.
    pub const SSD_NOT_ATTACHED: u8 = 0x04;
    /// The SSD holds data of a namespace and cannot be detached.
    pub const SSD_IN_USE: u8 = 0x05;
    /// No volume with this NSID.
    pub const VOLUME_NOT_FOUND: u8 = 0x10;
    /// A volume with this name already exists.
    pub const VOLUME_EXISTS: u8 = 0x11;
    /// Not enough capacity on the attached SSDs.
    pub const NO_SPACE: u8 = 0x12;
    /// The volume is in use (snapshots or clones depend on it).
    pub const VOLUME_BUSY: u8 = 0x13;
    /// The requested layout is invalid for the attached SSDs.
    pub const INVALID_LAYOUT: u8 = 0x14;
    /// No snapshot with this ID.
    pub const SNAPSHOT_NOT_FOUND: u8 = 0x20;
    /// Too many snapshots.
    pub const SNAPSHOT_LIMIT: u8 = 0x21;
    /// The command is defined but not implemented by this device.
    pub const NOT_IMPLEMENTED: u8 = 0x30;
    /// A payload field is out of range or inconsistent.
    pub const INVALID_PAYLOAD: u8 = 0x31;
    /// The encryption key does not match the volume's key check value.
    pub const KEY_MISMATCH: u8 = 0x32;
    /// The volume is encrypted and no key was given (it stays locked).
    pub const KEY_REQUIRED: u8 = 0x33;
    /// NVMe/TCP target: the port ID, subsystem NQN or NSID exists already.
    pub const NVMF_EXISTS: u8 = 0x40;
    /// NVMe/TCP target: no such port, subsystem or namespace.
    pub const NVMF_NOT_FOUND: u8 = 0x41;
    /// NVMe/TCP target: the port's address cannot be bound (in use, or not
    /// an address of this machine).
    pub const NVMF_ADDRESS_IN_USE: u8 = 0x42;
    /// NVMe/TCP target: the subsystem still has namespaces, or the volume
    /// is exported by another namespace already.
    pub const NVMF_BUSY: u8 = 0x43;
    /// Remote SSD Add: the remote namespace does not answer (and no size
    /// was given to wait for it with).
    pub const REMOTE_UNREACHABLE: u8 = 0x44;
    /// Remote SSD Add: the remote namespace answers with another size or
    /// block size than the one given.
    pub const REMOTE_GEOMETRY: u8 = 0x45;
}

/// Builds a vendor status (SCT 7) with Do Not Retry.
pub const fn vendor_status(code: u8) -> Status {
    Status::dnr(sct::VENDOR, code)
}

/// The vendor commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VendorCommand {
    /// See [`opcode::SSD_ATTACH`].
    SsdAttach,
    /// See [`opcode::SSD_DETACH`].
    SsdDetach,
    /// See [`opcode::SSD_LIST`].
    SsdList,
    /// See [`opcode::VOLUME_CREATE`].
    VolumeCreate,
    /// See [`opcode::VOLUME_DELETE`].
    VolumeDelete,
    /// See [`opcode::VOLUME_RESIZE`].
    VolumeResize,
    /// See [`opcode::VOLUME_LIST`].
    VolumeList,
    /// See [`opcode::SERVICE_SET`].
    ServiceSet,
    /// See [`opcode::SERVICE_GET`].
    ServiceGet,
    /// See [`opcode::SNAPSHOT_CREATE`].
    SnapshotCreate,
    /// See [`opcode::SNAPSHOT_DELETE`].
    SnapshotDelete,
    /// See [`opcode::SNAPSHOT_CLONE`].
    SnapshotClone,
    /// See [`opcode::SNAPSHOT_LIST`].
    SnapshotList,
    /// See [`opcode::SNAPSHOT_REVERT`].
    SnapshotRevert,
    /// See [`opcode::STATISTICS`].
    Statistics,
    /// See [`opcode::FAULT_INJECT`].
    FaultInject,
    /// See [`opcode::MAINTENANCE`].
    Maintenance,
    /// See [`opcode::NVMF_PORT_ADD`].
    NvmfPortAdd,
    /// See [`opcode::NVMF_PORT_REMOVE`].
    NvmfPortRemove,
    /// See [`opcode::NVMF_SUBSYSTEM_SET`].
    NvmfSubsystemSet,
    /// See [`opcode::NVMF_SUBSYSTEM_REMOVE`].
    NvmfSubsystemRemove,
    /// See [`opcode::NVMF_NAMESPACE_ADD`].
    NvmfNamespaceAdd,
    /// See [`opcode::NVMF_NAMESPACE_REMOVE`].
    NvmfNamespaceRemove,
    /// See [`opcode::REMOTE_SSD_ADD`].
    RemoteSsdAdd,
    /// See [`opcode::REMOTE_SSD_REMOVE`].
    RemoteSsdRemove,
}

impl VendorCommand {
    /// Every vendor command, for tables and tests.
    pub const ALL: [VendorCommand; 25] = [
        VendorCommand::SsdAttach,
        VendorCommand::SsdDetach,
        VendorCommand::SsdList,
        VendorCommand::VolumeCreate,
        VendorCommand::VolumeDelete,
        VendorCommand::VolumeResize,
        VendorCommand::VolumeList,
        VendorCommand::ServiceSet,
        VendorCommand::ServiceGet,
        VendorCommand::SnapshotCreate,
        VendorCommand::SnapshotDelete,
        VendorCommand::SnapshotClone,
        VendorCommand::SnapshotList,
        VendorCommand::SnapshotRevert,
        VendorCommand::Statistics,
        VendorCommand::FaultInject,
        VendorCommand::Maintenance,
        VendorCommand::NvmfPortAdd,
        VendorCommand::NvmfPortRemove,
        VendorCommand::NvmfSubsystemSet,
        VendorCommand::NvmfSubsystemRemove,
        VendorCommand::NvmfNamespaceAdd,
        VendorCommand::NvmfNamespaceRemove,
        VendorCommand::RemoteSsdAdd,
        VendorCommand::RemoteSsdRemove,
    ];

    /// Decodes an opcode, or `None` if it is not a dpublk vendor command.
    pub const fn from_opcode(op: u8) -> Option<Self> {
        Some(match op {
            opcode::SSD_ATTACH => VendorCommand::SsdAttach,
            opcode::SSD_DETACH => VendorCommand::SsdDetach,
            opcode::SSD_LIST => VendorCommand::SsdList,
            opcode::VOLUME_CREATE => VendorCommand::VolumeCreate,
            opcode::VOLUME_DELETE => VendorCommand::VolumeDelete,
            opcode::VOLUME_RESIZE => VendorCommand::VolumeResize,
            opcode::VOLUME_LIST => VendorCommand::VolumeList,
            opcode::SERVICE_SET => VendorCommand::ServiceSet,
            opcode::SERVICE_GET => VendorCommand::ServiceGet,
            opcode::SNAPSHOT_CREATE => VendorCommand::SnapshotCreate,
            opcode::SNAPSHOT_DELETE => VendorCommand::SnapshotDelete,
            opcode::SNAPSHOT_CLONE => VendorCommand::SnapshotClone,
            opcode::SNAPSHOT_LIST => VendorCommand::SnapshotList,
            opcode::SNAPSHOT_REVERT => VendorCommand::SnapshotRevert,
            opcode::STATISTICS => VendorCommand::Statistics,
            opcode::FAULT_INJECT => VendorCommand::FaultInject,
            opcode::MAINTENANCE => VendorCommand::Maintenance,
            opcode::NVMF_PORT_ADD => VendorCommand::NvmfPortAdd,
            opcode::NVMF_PORT_REMOVE => VendorCommand::NvmfPortRemove,
            opcode::NVMF_SUBSYSTEM_SET => VendorCommand::NvmfSubsystemSet,
            opcode::NVMF_SUBSYSTEM_REMOVE => VendorCommand::NvmfSubsystemRemove,
            opcode::NVMF_NAMESPACE_ADD => VendorCommand::NvmfNamespaceAdd,
            opcode::NVMF_NAMESPACE_REMOVE => VendorCommand::NvmfNamespaceRemove,
            opcode::REMOTE_SSD_ADD => VendorCommand::RemoteSsdAdd,
            opcode::REMOTE_SSD_REMOVE => VendorCommand::RemoteSsdRemove,
            _ => return None,
        })
    }

    /// The command's opcode.
    pub const fn opcode(self) -> u8 {
        match self {
            VendorCommand::SsdAttach => opcode::SSD_ATTACH,
            VendorCommand::SsdDetach => opcode::SSD_DETACH,
            VendorCommand::SsdList => opcode::SSD_LIST,
            VendorCommand::VolumeCreate => opcode::VOLUME_CREATE,
            VendorCommand::VolumeDelete => opcode::VOLUME_DELETE,
            VendorCommand::VolumeResize => opcode::VOLUME_RESIZE,
            VendorCommand::VolumeList => opcode::VOLUME_LIST,
            VendorCommand::ServiceSet => opcode::SERVICE_SET,
            VendorCommand::ServiceGet => opcode::SERVICE_GET,
            VendorCommand::SnapshotCreate => opcode::SNAPSHOT_CREATE,
            VendorCommand::SnapshotDelete => opcode::SNAPSHOT_DELETE,
            VendorCommand::SnapshotClone => opcode::SNAPSHOT_CLONE,
            VendorCommand::SnapshotList => opcode::SNAPSHOT_LIST,
            VendorCommand::SnapshotRevert => opcode::SNAPSHOT_REVERT,
            VendorCommand::Statistics => opcode::STATISTICS,
            VendorCommand::FaultInject => opcode::FAULT_INJECT,
            VendorCommand::Maintenance => opcode::MAINTENANCE,
            VendorCommand::NvmfPortAdd => opcode::NVMF_PORT_ADD,
            VendorCommand::NvmfPortRemove => opcode::NVMF_PORT_REMOVE,
            VendorCommand::NvmfSubsystemSet => opcode::NVMF_SUBSYSTEM_SET,
            VendorCommand::NvmfSubsystemRemove => opcode::NVMF_SUBSYSTEM_REMOVE,
            VendorCommand::NvmfNamespaceAdd => opcode::NVMF_NAMESPACE_ADD,
            VendorCommand::NvmfNamespaceRemove => opcode::NVMF_NAMESPACE_REMOVE,
            VendorCommand::RemoteSsdAdd => opcode::REMOTE_SSD_ADD,
            VendorCommand::RemoteSsdRemove => opcode::REMOTE_SSD_REMOVE,
        }
    }

    /// Size in bytes of the command's payload (0 for commands without data).
    pub const fn payload_bytes(self) -> usize {
        match self {
            VendorCommand::SsdList => core::mem::size_of::<SsdList>(),
            VendorCommand::VolumeCreate => core::mem::size_of::<VolumeCreate>(),
            VendorCommand::VolumeList => core::mem::size_of::<VolumeList>(),
            VendorCommand::ServiceSet | VendorCommand::ServiceGet => {
                core::mem::size_of::<ServiceSettings>()
            }
            VendorCommand::SnapshotCreate | VendorCommand::SnapshotClone => {
                core::mem::size_of::<ObjectName>()
            }
            VendorCommand::SnapshotList => core::mem::size_of::<SnapshotList>(),
            VendorCommand::Statistics => core::mem::size_of::<Statistics>(),
            VendorCommand::FaultInject => core::mem::size_of::<FaultInjection>(),
            VendorCommand::NvmfPortAdd => core::mem::size_of::<NvmfPort>(),
            VendorCommand::NvmfSubsystemSet => core::mem::size_of::<NvmfSubsystem>(),
            VendorCommand::NvmfSubsystemRemove => core::mem::size_of::<NvmfName>(),
            VendorCommand::NvmfNamespaceAdd | VendorCommand::NvmfNamespaceRemove => {
                core::mem::size_of::<NvmfNamespace>()
            }
            VendorCommand::RemoteSsdAdd => core::mem::size_of::<RemoteSsdAdd>(),
            VendorCommand::NvmfPortRemove
            | VendorCommand::RemoteSsdRemove
            | VendorCommand::SsdAttach
            | VendorCommand::SsdDetach
            | VendorCommand::VolumeDelete
            | VendorCommand::VolumeResize
            | VendorCommand::SnapshotDelete
            | VendorCommand::SnapshotRevert
            | VendorCommand::Maintenance => 0,
        }
    }

    /// Data direction of the command.
    pub const fn direction(self) -> DataDirection {
        data_direction(self.opcode())
    }
}

/// Size in bytes of the payload of vendor opcode `op` (0 if none or unknown).
pub const fn payload_bytes(op: u8) -> usize {
    match VendorCommand::from_opcode(op) {
        Some(cmd) => cmd.payload_bytes(),
        None => 0,
    }
}

/// Builds SSD Attach (`attach`) or SSD Detach for SSD `index`.
pub fn ssd_command(index: u16, attach: bool, cid: u16) -> SubmissionEntry {
    let op = if attach {
        opcode::SSD_ATTACH
    } else {
        opcode::SSD_DETACH
    };
    let mut sqe = SubmissionEntry::new(op, cid);
    sqe.cdw10.set(index as u32);
    sqe
}

/// The SSD index of SSD Attach and SSD Detach (CDW10 bits 15:0). Bits
/// 31:16 are reserved; `None` if they are set.
pub const fn ssd_index(sqe: &SubmissionEntry) -> Option<u16> {
    let cdw10 = sqe.cdw10.get();
    if cdw10 >> 16 != 0 {
        None
    } else {
        Some(cdw10 as u16)
    }
}

/// Builds a Volume Resize for `nsid` to `size_bytes`.
pub fn volume_resize(nsid: u32, size_bytes: u64, cid: u16) -> SubmissionEntry {
    let mut sqe = SubmissionEntry::new(opcode::VOLUME_RESIZE, cid);
    sqe.nsid.set(nsid);
    sqe.cdw10.set(size_bytes as u32);
    sqe.cdw11.set((size_bytes >> 32) as u32);
    sqe
}

/// The new size in bytes of a Volume Resize (CDW10 low, CDW11 high).
pub const fn resize_bytes(sqe: &SubmissionEntry) -> u64 {
    sqe.cdw10.get() as u64 | (sqe.cdw11.get() as u64) << 32
}

/// Builds a snapshot command that names a snapshot ID in CDW10
/// (delete, clone, revert).
pub fn snapshot_command(op: u8, nsid: u32, snapshot_id: u32, cid: u16) -> SubmissionEntry {
    let mut sqe = SubmissionEntry::new(op, cid);
    sqe.nsid.set(nsid);
    sqe.cdw10.set(snapshot_id);
    sqe
}

/// The snapshot ID of Snapshot Delete, Clone and Revert.
pub const fn snapshot_id(sqe: &SubmissionEntry) -> u32 {
    sqe.cdw10.get()
}

/// Snapshots one volume may have. Snapshot List pages through them, 63 per
/// payload (CDW10: index of the first one asked for).
pub const MAX_SNAPSHOTS_PER_VOLUME: u32 = 10_000;

/// Snapshot List of volume `nsid` from its `first` snapshot on.
pub fn snapshot_list_command(nsid: u32, first: u32, cid: u16) -> SubmissionEntry {
    let mut sqe = SubmissionEntry::new(opcode::SNAPSHOT_LIST, cid);
    sqe.nsid.set(nsid);
    sqe.cdw10.set(first);
    sqe
}

/// The index of the first snapshot a Snapshot List asks for.
pub const fn snapshot_list_first(sqe: &SubmissionEntry) -> u32 {
    sqe.cdw10.get()
}

/// SSD state: owned by the host (its own NVMe function may be enabled).
pub const SSD_STATE_HOST: u8 = 0;
/// SSD state: attached to the accelerator.
pub const SSD_STATE_ATTACHED: u8 = 1;
/// SSD flag: the host has the SSD's own NVMe controller enabled (CC.EN=1).
pub const SSD_FLAG_HOST_ENABLED: u8 = 1 << 0;
/// SSD flag: a namespace of the accelerator stores data on the SSD.
pub const SSD_FLAG_IN_USE: u8 = 1 << 1;

/// One SSD in an [`SsdList`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SsdListEntry {
    /// SSD index (as used by attach and detach).
    pub index: Le16,
    /// `SSD_STATE_*`.
    pub state: u8,
    /// `SSD_FLAG_*`.
    pub flags: u8,
    /// log2 of the SSD's logical block size.
    pub lba_shift: u8,
    /// Reserved.
    pub rsvd5: [u8; 3],
    /// Capacity in bytes.
    pub capacity_bytes: Le64,
    /// Serial number of the SSD function (ASCII, space padded).
    pub serial: [u8; 20],
    /// Reserved.
    pub rsvd36: [u8; 28],
}

const _: () = assert!(core::mem::size_of::<SsdListEntry>() == 64);

// SAFETY: repr(C) of Le types and u8 arrays: no padding, any bit pattern valid.
unsafe impl Wire for SsdListEntry {}

/// Payload of SSD List.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SsdList {
    /// Number of valid entries.
    pub count: Le32,
    /// Reserved.
    pub rsvd4: [u8; 60],
    /// Entries; only the first `count` are valid.
    pub entries: [SsdListEntry; 63],
}

const _: () = assert!(core::mem::size_of::<SsdList>() == 4096);

// SAFETY: repr(C) of Le32, u8 arrays and Wire entries: no padding (size
// asserted), any bit pattern valid.
unsafe impl Wire for SsdList {}

/// Volume layouts.
pub mod layout {
    /// All data on one SSD.
    pub const SINGLE: u8 = 0;
    /// Striped over the SSDs.
    pub const RAID0: u8 = 1;
    /// Mirrored stripes.
    pub const RAID10: u8 = 2;
    /// Striped with P+Q parity.
    pub const RAID6: u8 = 3;
    /// k+m erasure coding (`data_shards` + `parity_shards`).
    pub const ERASURE: u8 = 4;
    /// Log-structured RAID over erasure-coded full-stripe segments.
    pub const LOG_RAID: u8 = 5;
}

/// Data service bits (`services` fields).
pub mod service {
    /// Thin provisioning.
    pub const THIN: u32 = 1 << 0;
    /// Zero-block detection.
    pub const ZERO_DETECT: u32 = 1 << 1;
    /// Deduplication.
    pub const DEDUP: u32 = 1 << 2;
    /// Compression.
    pub const COMPRESSION: u32 = 1 << 3;
    /// Encryption (AES-XTS).
    pub const ENCRYPTION: u32 = 1 << 4;
    /// Log-structured writes.
    pub const LOG_STRUCTURED: u32 = 1 << 5;
    /// Every defined service bit.
    pub const ALL: u32 = 0x3f;
}

/// `VolumeCreate::flags`: open (or unlock) the existing volume called
/// `name` instead of creating one. Only `key` (for an encrypted volume) is
/// used; the geometry fields are ignored. DW0 returns its NSID.
pub const VOLUME_CREATE_OPEN_EXISTING: u8 = 1 << 0;

/// Bytes of an AES-XTS-256 key (two 256-bit keys).
pub const VOLUME_KEY_BYTES: usize = 64;

/// Payload of Volume Create.
///
/// For `layout::RAID10`, `data_shards` is the number of copies (2 or 3);
/// for `layout::ERASURE`, `data_shards` and `parity_shards` are k and m;
/// RAID6 implies two parity shards. The key travels only in this payload:
/// the host wipes its buffer after the command completes, the device never
/// returns it.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct VolumeCreate {
    /// Size in bytes (a multiple of the logical block size).
    pub size_bytes: Le64,
    /// log2 of the logical block size (9 or 12).
    pub lba_shift: u8,
    /// `layout::*`.
    pub layout: u8,
    /// Data shards per stripe (RAID and erasure layouts).
    pub data_shards: u8,
    /// Parity shards per stripe.
    pub parity_shards: u8,
    /// `service::*` bits.
    pub services: Le32,
    /// Bit mask of the SSD indexes to place the volume on.
    pub ssd_mask: Le64,
    /// Stripe unit in bytes (0 = device default).
    pub stripe_bytes: Le32,
    /// Encryption key slot (meaningful with `service::ENCRYPTION`).
    pub key_id: Le32,
    /// Volume name (NUL padded, NUL terminated).
    pub name: [u8; 32],
    /// `compression::*` (meaningful with `service::COMPRESSION`).
    pub compression: u8,
    /// `VOLUME_CREATE_*` flags.
    pub flags: u8,
    /// Reserved.
    pub rsvd66: [u8; 30],
    /// AES-XTS-256 key (meaningful with `service::ENCRYPTION`).
    pub key: [u8; VOLUME_KEY_BYTES],
    /// Reserved.
    pub rsvd160: [u8; 96],
}

// Never print key material.
impl core::fmt::Debug for VolumeCreate {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VolumeCreate")
            .field("size_bytes", &self.size_bytes.get())
            .field("layout", &self.layout)
            .field("services", &self.services.get())
            .field("ssd_mask", &self.ssd_mask.get())
            .field("flags", &self.flags)
            .finish_non_exhaustive()
    }
}

const _: () = assert!(core::mem::size_of::<VolumeCreate>() == 256);

// SAFETY: repr(C) of Le types and u8 arrays: no padding, any bit pattern valid.
unsafe impl Wire for VolumeCreate {}

/// Volume flag: the volume is a clone of a snapshot.
pub const VOLUME_FLAG_CLONE: u32 = 1 << 0;
/// Volume flag: the volume runs degraded (a shard is missing).
pub const VOLUME_FLAG_DEGRADED: u32 = 1 << 1;
/// Volume flag: a rebuild is in progress.
pub const VOLUME_FLAG_REBUILDING: u32 = 1 << 2;
/// Volume flag: encrypted and no key loaded yet; it has no active
/// namespace (`nsid` is 0) until Volume Create with
/// `VOLUME_CREATE_OPEN_EXISTING` and the right key.
pub const VOLUME_FLAG_LOCKED: u32 = 1 << 3;
/// Volume flag: more members failed than the layout tolerates; I/O fails.
pub const VOLUME_FLAG_FAILED: u32 = 1 << 4;

/// One volume in a [`VolumeList`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VolumeListEntry {
    /// Namespace ID of the volume.
    pub nsid: Le32,
    /// `VOLUME_FLAG_*`.
    pub flags: Le32,
    /// Size in bytes.
    pub size_bytes: Le64,
    /// Bytes allocated on media.
    pub used_bytes: Le64,
    /// `layout::*`.
    pub layout: u8,
    /// log2 of the logical block size.
    pub lba_shift: u8,
    /// Data shards per stripe.
    pub data_shards: u8,
    /// Parity shards per stripe.
    pub parity_shards: u8,
    /// `service::*` bits.
    pub services: Le32,
    /// Volume name.
    pub name: [u8; 32],
}

const _: () = assert!(core::mem::size_of::<VolumeListEntry>() == 64);

// SAFETY: repr(C) of Le types and u8 arrays: no padding, any bit pattern valid.
unsafe impl Wire for VolumeListEntry {}

/// Payload of Volume List.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct VolumeList {
    /// Number of valid entries.
    pub count: Le32,
    /// Reserved.
    pub rsvd4: [u8; 60],
    /// Entries; only the first `count` are valid.
    pub entries: [VolumeListEntry; 63],
}

const _: () = assert!(core::mem::size_of::<VolumeList>() == 4096);

// SAFETY: repr(C) of Le32, u8 arrays and Wire entries: no padding (size
// asserted), any bit pattern valid.
unsafe impl Wire for VolumeList {}

/// Compression algorithms.
pub mod compression {
    /// LZ4.
    pub const LZ4: u8 = 0;
    /// Zstandard.
    pub const ZSTD: u8 = 1;
}

/// Payload of Service Set and Service Get.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceSettings {
    /// Enabled `service::*` bits.
    pub services: Le32,
    /// `compression::*`.
    pub compression: u8,
    /// Compression level (algorithm specific; 0 = default).
    pub compression_level: u8,
    /// Reserved.
    pub rsvd6: [u8; 2],
    /// Encryption key slot.
    pub key_id: Le32,
    /// Garbage collection starts below this free-space percentage.
    pub gc_low_percent: u8,
    /// Garbage collection stops above this free-space percentage.
    pub gc_high_percent: u8,
    /// Reserved.
    pub rsvd14: [u8; 2],
    /// I/O operations per second limit (0 = none).
    pub iops_limit: Le32,
    /// Bandwidth limit in MiB/s (0 = none).
    pub bandwidth_limit_mib: Le32,
    /// Reserved.
    pub rsvd24: [u8; 40],
}

const _: () = assert!(core::mem::size_of::<ServiceSettings>() == 64);

// SAFETY: repr(C) of Le types and u8 arrays: no padding, any bit pattern valid.
unsafe impl Wire for ServiceSettings {}

/// One snapshot in a [`SnapshotList`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotListEntry {
    /// Snapshot ID (for delete, clone and revert); stable while the device
    /// runs, not across restarts: look snapshots up by name.
    pub id: Le32,
    /// Reserved.
    pub rsvd4: [u8; 4],
    /// Bytes only this snapshot holds (freed when it is deleted).
    pub exclusive_bytes: Le64,
    /// Reserved.
    pub rsvd16: [u8; 16],
    /// Snapshot name.
    pub name: [u8; 32],
}

const _: () = assert!(core::mem::size_of::<SnapshotListEntry>() == 64);

// SAFETY: repr(C) of Le types and u8 arrays: no padding, any bit pattern valid.
unsafe impl Wire for SnapshotListEntry {}

/// Payload of Snapshot List.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SnapshotList {
    /// Number of valid entries in this page.
    pub count: Le32,
    /// Snapshots the volume has in all; the page holds those from the
    /// index the command asked for (CDW10) on.
    pub total: Le32,
    /// Reserved.
    pub rsvd8: [u8; 56],
    /// Entries; only the first `count` are valid.
    pub entries: [SnapshotListEntry; 63],
}

const _: () = assert!(core::mem::size_of::<SnapshotList>() == 4096);

// SAFETY: repr(C) of Le32, u8 arrays and Wire entries: no padding (size
// asserted), any bit pattern valid.
unsafe impl Wire for SnapshotList {}

/// Payload of Snapshot Create and Snapshot Clone: the new object's name.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectName {
    /// Name (NUL padded, NUL terminated).
    pub name: [u8; 32],
    /// Reserved.
    pub rsvd32: [u8; 32],
}

const _: () = assert!(core::mem::size_of::<ObjectName>() == 64);

// SAFETY: repr(C) of u8 arrays: no padding, any bit pattern valid.
unsafe impl Wire for ObjectName {}

/// Payload of Statistics: counters since the controller was enabled (for
/// NSID 0) or since the volume was created.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Statistics {
    /// Read commands completed.
    pub read_commands: Le64,
    /// Write commands completed.
    pub write_commands: Le64,
    /// Flush commands completed.
    pub flush_commands: Le64,
    /// Write Zeroes commands completed.
    pub write_zeroes_commands: Le64,
    /// Dataset Management (deallocate) commands completed.
    pub deallocate_commands: Le64,
    /// Bytes read by the host.
    pub read_bytes: Le64,
    /// Bytes written by the host.
    pub write_bytes: Le64,
    /// Commands completed with an error status.
    pub error_completions: Le64,
    /// Bytes read from media.
    pub media_read_bytes: Le64,
    /// Bytes written to media.
    pub media_write_bytes: Le64,
    /// Bytes not written thanks to zero detection.
    pub zero_detect_saved_bytes: Le64,
    /// Bytes not written thanks to deduplication.
    pub dedup_saved_bytes: Le64,
    /// Bytes not written thanks to compression.
    pub compression_saved_bytes: Le64,
    /// Bytes moved by garbage collection.
    pub gc_moved_bytes: Le64,
    /// Interrupts raised.
    pub interrupts: Le64,
    /// Doorbell writes received through MMIO (as opposed to shadow
    /// doorbells).
    pub mmio_doorbells: Le64,
    /// Volume only: logical bytes mapped (written and not discarded).
    pub logical_bytes: Le64,
    /// Volume only: bytes its pool stores on media for this volume family
    /// after reduction (data and metadata).
    pub physical_bytes: Le64,
    /// Volume only: mapped bytes shared with snapshots or clones.
    pub shared_bytes: Le64,
    /// Volume only: mapped bytes only this volume holds.
    pub exclusive_bytes: Le64,
    /// Volume only: capacity of the pool the volume lives in.
    pub pool_capacity_bytes: Le64,
    /// Volume only: free bytes left in that pool.
    pub pool_free_bytes: Le64,
    /// Volume only: `ARRAY_STATE_*`.
    pub array_state: u8,
    /// Volume only: rebuild progress in percent (valid while rebuilding).
    pub rebuild_percent: u8,
    /// Reserved.
    pub rsvd178: [u8; 6],
    /// Volume only: reads served by reconstruction from survivors.
    pub degraded_reads: Le64,
    /// Volume only: mismatches the last scrub found.
    pub scrub_mismatches: Le64,
    /// Volume only: mismatches the last scrub repaired.
    pub scrub_repaired: Le64,
    /// Write commands with Force Unit Access.
    pub fua_writes: Le64,
    /// Reserved.
    pub rsvd216: [u8; 296],
}

/// `Statistics::array_state`: every member online.
pub const ARRAY_STATE_OPTIMAL: u8 = 0;
/// Some members failed, still within the layout's tolerance.
pub const ARRAY_STATE_DEGRADED: u8 = 1;
/// A replacement member is being rebuilt.
pub const ARRAY_STATE_REBUILDING: u8 = 2;
/// Beyond tolerance: I/O fails.
pub const ARRAY_STATE_FAILED: u8 = 3;

const _: () = assert!(core::mem::size_of::<Statistics>() == 512);

// SAFETY: repr(C) of Le64 and u8 arrays: no padding, any bit pattern valid.
unsafe impl Wire for Statistics {}

/// Maintenance actions (CDW10 of [`opcode::MAINTENANCE`]).
pub mod maintenance {
    /// Scrub: re-read every stripe and check parity or copies; report only.
    /// A background operation: the command completes once the scrub has
    /// started, DW0 = its operation ID (never 0). Progress and result are
    /// in the Maintenance log ([`super::MAINTENANCE_LOG_ID`]); the
    /// volume's Statistics keep the last finished scrub's counts
    /// (`scrub_mismatches`).
    pub const SCRUB_CHECK: u32 = 1;
    /// Scrub and repair every mismatch from the redundancy, in the
    /// background as [`SCRUB_CHECK`]; `scrub_repaired` counts the repaired
    /// ones.
    pub const SCRUB_REPAIR: u32 = 2;
    /// Replace a member SSD: CDW11 bits 15:0 the SSD index to replace
    /// (failed, missing or healthy), bits 31:16 the replacement (attached,
    /// not in use). The rebuild runs in the background while I/O goes on;
    /// Statistics show `ARRAY_STATE_REBUILDING` and `rebuild_percent`. The
    /// replaced SSD is no longer in use afterwards.
    pub const REPLACE_MEMBER: u32 = 3;
    /// Stop the running scrub of the volume's family once the rows it is
    /// on are done (the Maintenance log then shows it cancelled); succeeds
    /// when no scrub runs. CDW11 must be 0.
    pub const SCRUB_CANCEL: u32 = 4;
}

/// Builds a Maintenance command for volume `nsid`.
pub fn maintenance_command(nsid: u32, action: u32, argument: u32, cid: u16) -> SubmissionEntry {
    let mut sqe = SubmissionEntry::new(opcode::MAINTENANCE, cid);
    sqe.nsid.set(nsid);
    sqe.cdw10.set(action);
    sqe.cdw11.set(argument);
    sqe
}

/// Fault kinds for [`FaultInjection`].
pub mod fault {
    /// Clear all injected faults of the target.
    pub const CLEAR: u8 = 0;
    /// Fail reads in the LBA range with an unrecovered read error.
    pub const FAIL_READS: u8 = 1;
    /// Fail writes in the LBA range with a write fault.
    pub const FAIL_WRITES: u8 = 2;
    /// Fail all I/O to the SSD (it appears dead).
    pub const FAIL_ALL: u8 = 3;
    /// Delay every I/O by `delay_us`.
    pub const DELAY: u8 = 4;
    /// The SSD disappears: all I/O fails and the accelerator reports it
    /// missing until the fault is cleared.
    pub const DISAPPEAR: u8 = 5;
    /// Silently corrupt the data of the LBA range: the next write to it
    /// stores flipped bits (the SSD does not notice).
    pub const CORRUPT: u8 = 6;
    /// Bit rot: flip one bit in every 512-byte sector the LBA range holds
    /// now (at most [`ROT_MAX_BYTES`]); found only by reading it.
    pub const ROT: u8 = 7;
    /// The largest range one [`ROT`] may cover.
    pub const ROT_MAX_BYTES: u64 = 16 << 20;
}

/// Payload of Fault Injection.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultInjection {
    /// `fault::*`.
    pub kind: u8,
    /// Reserved.
    pub rsvd1: u8,
    /// SSD index the fault applies to.
    pub ssd_index: Le16,
    /// Reserved.
    pub rsvd4: [u8; 4],
    /// First LBA of the range (SSD logical blocks).
    pub slba: Le64,
    /// Number of blocks in the range (0 = the whole SSD).
    pub blocks: Le64,
    /// How many I/Os to fail (0 = until cleared).
    pub count: Le32,
    /// Delay in microseconds for `fault::DELAY`.
    pub delay_us: Le32,
    /// Reserved.
    pub rsvd32: [u8; 32],
}

const _: () = assert!(core::mem::size_of::<FaultInjection>() == 64);

// SAFETY: repr(C) of Le types and u8 arrays: no padding, any bit pattern valid.
unsafe impl Wire for FaultInjection {}

/// Get Log Page identifier of the Maintenance log (vendor specific). NSID
/// names an open volume; the page ([`MaintenanceLog`]) describes the
/// background scrub and rebuild of its family.
pub const MAINTENANCE_LOG_ID: u8 = 0xc0;

/// Size of the Maintenance log page.
pub const MAINTENANCE_LOG_BYTES: usize = 128;

/// `MaintenanceRecord::state` values.
pub mod maintenance_state {
    /// No such operation since the accelerator started.
    pub const NONE: u8 = 0;
    /// Running: `rows_done` of `rows_total` so far.
    pub const RUNNING: u8 = 1;
    /// Finished; the counts are final.
    pub const DONE: u8 = 2;
    /// Stopped by an error (`status`); the counts cover the rows done.
    pub const FAILED: u8 = 3;
    /// Stopped by Maintenance SCRUB_CANCEL, a member replacement or the
    /// family's deletion; the counts cover the rows done.
    pub const CANCELLED: u8 = 4;
    /// Highest defined value.
    pub const LAST: u8 = CANCELLED;
}

/// One background operation in the Maintenance log.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaintenanceRecord {
    /// Operation ID: DW0 of the Maintenance command that started it (0:
    /// none).
    pub id: Le32,
    /// The `maintenance::*` action that started it.
    pub action: u8,
    /// `maintenance_state::*`.
    pub state: u8,
    /// Progress in percent, 0 to 100.
    pub percent: u8,
    /// Rebuild: the member being rebuilt (0xff: none). Scrub: reserved.
    pub member: u8,
    /// Rows done so far; never more than `rows_total`.
    pub rows_done: Le64,
    /// Rows of the array.
    pub rows_total: Le64,
    /// Scrub: 512-byte sectors whose slots disagree.
    pub mismatches: Le64,
    /// Scrub: mismatches repaired (never more than `mismatches`).
    pub repaired: Le64,
    /// Scrub: mismatches no single slot explains.
    pub unlocated: Le64,
    /// Scrub: member reads that failed.
    pub read_errors: Le64,
    /// Scrub: rows with too few readable members to check.
    pub unreadable_rows: Le32,
    /// State FAILED: the status field of the error (as in a completion).
    pub status: Le16,
    /// Reserved.
    pub rsvd62: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<MaintenanceRecord>() == 64);

// SAFETY: repr(C) of Le types and u8 arrays: no padding, any bit pattern valid.
unsafe impl Wire for MaintenanceRecord {}

/// The Maintenance log page.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaintenanceLog {
    /// The family's running or last scrub.
    pub scrub: MaintenanceRecord,
    /// The family's rebuild: running while a member is rebuilt (after a
    /// replacement or a re-add), else the last replacement's ID, state
    /// NONE.
    pub rebuild: MaintenanceRecord,
}

const _: () = assert!(core::mem::size_of::<MaintenanceLog>() == MAINTENANCE_LOG_BYTES);

// SAFETY: repr(C) of two Wire records: no padding, any bit pattern valid.
unsafe impl Wire for MaintenanceLog {}

/// Builds Get Log Page for the Maintenance log of volume `nsid`; the data
/// buffer goes into PRP entries 1 and 2 afterwards.
pub fn maintenance_log_command(nsid: u32, cid: u16) -> SubmissionEntry {
    super::sqe::GetLogPage {
        lid: MAINTENANCE_LOG_ID,
        lsp: 0,
        rae: false,
        dwords: (MAINTENANCE_LOG_BYTES / 4) as u32,
        offset: 0,
        nsid,
    }
    .encode(cid)
}

/// `NvmfPort::trtype`: TCP, the value of the discovery log's TRTYPE.
pub const NVMF_TRTYPE_TCP: u8 = 3;
/// `NvmfPort::adrfam`: IPv4, as the discovery log's ADRFAM.
pub const NVMF_ADRFAM_IPV4: u8 = 1;
/// `NvmfPort::adrfam`: IPv6.
pub const NVMF_ADRFAM_IPV6: u8 = 2;
/// Bytes of an NQN field: the specification's 223 bytes, a NUL and padding
/// (the size of SUBNQN and HOSTNQN in Fabrics Connect data).
pub const NVMF_NQN_FIELD: usize = 256;
/// Bytes of a host NQN in [`NvmfSubsystem`]: 223 and a NUL.
pub const NVMF_HOST_FIELD: usize = 224;
/// Ports one subsystem may be served on.
pub const NVMF_MAX_SUBSYSTEM_PORTS: usize = 16;
/// Hosts one subsystem may allow by NQN.
pub const NVMF_MAX_HOSTS: usize = 16;
/// `NvmfSubsystem::flags`: every host may connect (`hosts` must be empty).
pub const NVMF_SUBSYSTEM_ALLOW_ANY_HOST: u8 = 1 << 0;
/// `NvmfSubsystem::flags`: create the subsystem (`NVMF_EXISTS` if it
/// exists); without it Subsystem Set changes an existing one
/// (`NVMF_NOT_FOUND` if there is none).
pub const NVMF_SUBSYSTEM_CREATE: u8 = 1 << 1;

/// Payload of NVMe/TCP Port Add: where a port listens.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NvmfPort {
    /// Port ID (PORTID in the discovery log), 1 to 65535.
    pub port_id: Le16,
    /// `NVMF_TRTYPE_*` (TCP only).
    pub trtype: u8,
    /// `NVMF_ADRFAM_*`; must match `traddr`.
    pub adrfam: u8,
    /// The TCP port to listen on, 1 to 65535.
    pub trsvcid: Le16,
    /// Reserved.
    pub rsvd6: [u8; 2],
    /// The address to listen on: an IPv4 or IPv6 literal, ASCII, NUL
    /// terminated and padded.
    pub traddr: [u8; 64],
    /// Reserved.
    pub rsvd72: [u8; 56],
}

const _: () = assert!(core::mem::size_of::<NvmfPort>() == 128);

// SAFETY: repr(C) of Le types and u8 arrays: no padding, any bit pattern valid.
unsafe impl Wire for NvmfPort {}

/// Payload of NVMe/TCP Subsystem Set.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct NvmfSubsystem {
    /// Subsystem NQN, NUL terminated and padded.
    pub nqn: [u8; NVMF_NQN_FIELD],
    /// `NVMF_SUBSYSTEM_*`.
    pub flags: u8,
    /// Valid entries of `ports`.
    pub port_count: u8,
    /// Valid entries of `hosts`.
    pub host_count: u8,
    /// Reserved.
    pub rsvd259: [u8; 29],
    /// Port IDs the subsystem is served on (a port need not exist yet).
    pub ports: [Le16; NVMF_MAX_SUBSYSTEM_PORTS],
    /// Reserved.
    pub rsvd320: [u8; 64],
    /// Host NQNs allowed to connect, each NUL terminated and padded.
    pub hosts: [[u8; NVMF_HOST_FIELD]; NVMF_MAX_HOSTS],
    /// Reserved.
    pub rsvd3968: [u8; 128],
}

impl core::fmt::Debug for NvmfSubsystem {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NvmfSubsystem")
            .field("flags", &self.flags)
            .field("port_count", &self.port_count)
            .field("host_count", &self.host_count)
            .finish_non_exhaustive()
    }
}

const _: () = assert!(core::mem::size_of::<NvmfSubsystem>() == 4096);

// SAFETY: repr(C) of Le16 and u8 arrays (alignment 1): no padding (size
// asserted), any bit pattern valid.
unsafe impl Wire for NvmfSubsystem {}

/// Payload of NVMe/TCP Subsystem Remove: the subsystem's NQN.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NvmfName {
    /// Subsystem NQN, NUL terminated and padded.
    pub nqn: [u8; NVMF_NQN_FIELD],
}

const _: () = assert!(core::mem::size_of::<NvmfName>() == 256);

// SAFETY: repr(C) of a u8 array: no padding, any bit pattern valid.
unsafe impl Wire for NvmfName {}

/// Payload of NVMe/TCP Namespace Add and Remove.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NvmfNamespace {
    /// Subsystem NQN, NUL terminated and padded.
    pub nqn: [u8; NVMF_NQN_FIELD],
    /// NSID in the subsystem, 1 to 1024.
    pub nsid: Le32,
    /// Reserved.
    pub rsvd260: [u8; 28],
    /// Add: the accelerator's volume (or clone) exported, by name. Remove:
    /// all zero.
    pub volume: [u8; 32],
    /// Reserved.
    pub rsvd320: [u8; 192],
}

const _: () = assert!(core::mem::size_of::<NvmfNamespace>() == 512);

// SAFETY: repr(C) of Le32 and u8 arrays: no padding, any bit pattern valid.
unsafe impl Wire for NvmfNamespace {}

/// Builds NVMe/TCP Port Remove of port `port_id`.
pub fn nvmf_port_remove(port_id: u16, cid: u16) -> SubmissionEntry {
    let mut sqe = SubmissionEntry::new(opcode::NVMF_PORT_REMOVE, cid);
    sqe.cdw10.set(u32::from(port_id));
    sqe
}

/// The port ID of NVMe/TCP Port Remove (CDW10 bits 15:0, nonzero). Bits
/// 31:16 are reserved; `None` if they are set or the ID is 0.
pub const fn nvmf_port_id(sqe: &SubmissionEntry) -> Option<u16> {
    let cdw10 = sqe.cdw10.get();
    if cdw10 >> 16 != 0 || cdw10 == 0 {
        None
    } else {
        Some(cdw10 as u16)
    }
}

/// Payload of Remote SSD Add: a namespace of a remote NVMe/TCP subsystem
/// that the accelerator reaches with its initiator and uses as one more
/// SSD (the configuration file's `[remote-ssd NAME]`).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RemoteSsdAdd {
    /// `NVMF_TRTYPE_*` (TCP only).
    pub trtype: u8,
    /// `NVMF_ADRFAM_*`; must match `traddr`.
    pub adrfam: u8,
    /// The remote's TCP port, 1 to 65535.
    pub trsvcid: Le16,
    /// The namespace in the remote subsystem (1 to FFFFFFFDh).
    pub nsid: Le32,
    /// 0: the remote must answer now, and its size is the SSD's. Otherwise
    /// the namespace's size in bytes (whole blocks of `lba_shift`): a
    /// remote that does not answer yet is added absent and joins when it
    /// does, and one that answers must have this geometry.
    pub size_bytes: Le64,
    /// With `size_bytes`: log2 of the block size, 9 or 12; 0 otherwise.
    pub lba_shift: u8,
    /// Reserved.
    pub rsvd17: [u8; 15],
    /// A name for the accelerator's log (the host's handle name): 1 to 31
    /// of `[A-Za-z0-9._-]`, NUL terminated and padded.
    pub name: [u8; 32],
    /// The remote's address: an IPv4 or IPv6 literal, NUL terminated and
    /// padded.
    pub traddr: [u8; 64],
    /// The remote subsystem's NQN, NUL terminated and padded.
    pub subnqn: [u8; NVMF_NQN_FIELD],
    /// Reserved.
    pub rsvd384: [u8; 128],
}

impl core::fmt::Debug for RemoteSsdAdd {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RemoteSsdAdd")
            .field("trsvcid", &self.trsvcid.get())
            .field("nsid", &self.nsid.get())
            .field("size_bytes", &self.size_bytes.get())
            .finish_non_exhaustive()
    }
}

const _: () = assert!(core::mem::size_of::<RemoteSsdAdd>() == 512);

// SAFETY: repr(C) of Le types and u8 arrays, all of alignment 1: no
// padding (size asserted), and any bit pattern is a valid value.
unsafe impl Wire for RemoteSsdAdd {}

/// Builds Remote SSD Remove of SSD `index`.
pub fn remote_ssd_remove(index: u16, cid: u16) -> SubmissionEntry {
    let mut sqe = SubmissionEntry::new(opcode::REMOTE_SSD_REMOVE, cid);
    sqe.cdw10.set(u32::from(index));
    sqe
}

#[cfg(test)]
mod tests {
    use super::super::opcode::admin;
    use super::super::wire::{c_string_bytes, c_string_field};
    use super::*;

    #[test]
    fn opcodes_round_trip_and_follow_convention() {
        for cmd in VendorCommand::ALL {
            let op = cmd.opcode();
            assert!(op >= admin::VENDOR_FIRST);
            assert_eq!(VendorCommand::from_opcode(op), Some(cmd));
            let bytes = cmd.payload_bytes();
            match cmd.direction() {
                DataDirection::None => assert_eq!(bytes, 0, "{cmd:?}"),
                DataDirection::HostToController | DataDirection::ControllerToHost => {
                    assert!(bytes > 0 && bytes <= 4096, "{cmd:?}")
                }
                DataDirection::Bidirectional => panic!("{cmd:?} is bidirectional"),
            }
            assert_eq!(payload_bytes(op), bytes);
        }
        let mut seen = 0usize;
        for op in 0..=255u8 {
            if VendorCommand::from_opcode(op).is_some() {
                seen += 1;
            }
        }
        assert_eq!(seen, VendorCommand::ALL.len());
        assert_eq!(VendorCommand::from_opcode(0xff), None);
        assert_eq!(payload_bytes(0x06), 0);
        assert_eq!(
            VendorCommand::SsdList.direction(),
            DataDirection::ControllerToHost
        );
        assert_eq!(
            VendorCommand::VolumeCreate.direction(),
            DataDirection::HostToController
        );
    }

    #[test]
    fn command_encoders() {
        let sqe = ssd_command(3, true, 9);
        assert_eq!((sqe.opcode(), sqe.cid()), (opcode::SSD_ATTACH, 9));
        assert_eq!(ssd_index(&sqe), Some(3));
        assert_eq!(ssd_command(3, false, 9).opcode(), opcode::SSD_DETACH);
        let mut bad = sqe;
        bad.cdw10.set(0x1_0003);
        assert_eq!(ssd_index(&bad), None);

        let r = volume_resize(2, 0x3_0000_1000, 1);
        assert_eq!(r.nsid.get(), 2);
        assert_eq!(resize_bytes(&r), 0x3_0000_1000);

        let s = snapshot_command(opcode::SNAPSHOT_REVERT, 4, 17, 2);
        assert_eq!((s.opcode(), s.nsid.get(), snapshot_id(&s)), (0xec, 4, 17));

        let st = vendor_status(status::SSD_BUSY);
        assert_eq!((st.sct(), st.sc()), (7, 0x02));
        assert!(st.do_not_retry());
    }

    #[test]
    fn payload_layouts() {
        let mut list = SsdList::zeroed();
        list.count.set(2);
        list.entries[1].index.set(1);
        list.entries[1].state = SSD_STATE_ATTACHED;
        list.entries[1].flags = SSD_FLAG_IN_USE;
        list.entries[1].capacity_bytes.set(1 << 30);
        let b = list.as_bytes();
        assert_eq!(b[0], 2);
        assert_eq!(&b[128..132], &[1, 0, SSD_STATE_ATTACHED, SSD_FLAG_IN_USE]);
        assert_eq!(&b[136..144], &(1u64 << 30).to_le_bytes());
        let back = SsdList::read_from(b).unwrap();
        assert_eq!(back.entries[1], list.entries[1]);

        let mut vc = VolumeCreate::zeroed();
        vc.size_bytes.set(1 << 40);
        vc.layout = layout::RAID6;
        vc.data_shards = 4;
        vc.parity_shards = 2;
        vc.services.set(service::THIN | service::COMPRESSION);
        vc.ssd_mask.set(0x3f);
        c_string_field(&mut vc.name, b"vol0");
        let b = vc.as_bytes();
        assert_eq!(b[9], layout::RAID6);
        assert_eq!((b[10], b[11]), (4, 2));
        assert_eq!(b[12], 0x09);
        assert_eq!(b[16], 0x3f);
        assert_eq!(&b[32..36], b"vol0");
        let back = VolumeCreate::read_from(b).unwrap();
        assert_eq!(back, vc);
        assert_eq!(c_string_bytes(&back.name), b"vol0");

        let mut vl = VolumeList::zeroed();
        vl.count.set(1);
        vl.entries[0].nsid.set(1);
        vl.entries[0].flags.set(VOLUME_FLAG_CLONE);
        assert_eq!(vl.as_bytes()[64], 1);
        assert_eq!(vl.as_bytes()[68], 1);

        let mut ss = ServiceSettings::zeroed();
        ss.services.set(service::ALL);
        ss.compression = compression::ZSTD;
        ss.iops_limit.set(1000);
        let b = ss.as_bytes();
        assert_eq!((b[0], b[4]), (0x3f, 1));
        assert_eq!(&b[16..20], &1000u32.to_le_bytes());

        let mut st = Statistics::zeroed();
        st.write_bytes.set(4096);
        st.mmio_doorbells.set(3);
        assert_eq!(&st.as_bytes()[48..56], &4096u64.to_le_bytes());
        assert_eq!(st.as_bytes()[120], 3);

        let mut f = FaultInjection::zeroed();
        f.kind = fault::FAIL_WRITES;
        f.ssd_index.set(2);
        f.slba.set(100);
        f.count.set(1);
        let b = f.as_bytes();
        assert_eq!((b[0], b[2], b[8], b[24]), (2, 2, 100, 1));
        assert_eq!(FaultInjection::read_from(b), Some(f));

        let mut n = ObjectName::zeroed();
        c_string_field(&mut n.name, b"snap");
        assert_eq!(&n.as_bytes()[..5], b"snap\0");
    }

    #[test]
    fn nvmf_payload_layouts() {
        let mut p = NvmfPort::zeroed();
        p.port_id.set(7);
        p.trtype = NVMF_TRTYPE_TCP;
        p.adrfam = NVMF_ADRFAM_IPV4;
        p.trsvcid.set(4420);
        c_string_field(&mut p.traddr, b"127.0.0.1");
        let b = p.as_bytes();
        assert_eq!(&b[..6], &[7, 0, 3, 1, 0x44, 0x11]);
        assert_eq!(&b[8..18], b"127.0.0.1\0");
        assert_eq!(NvmfPort::read_from(b), Some(p));

        let mut s = NvmfSubsystem::zeroed();
        c_string_field(&mut s.nqn, b"nqn.2026-12.org.dpublk:a");
        s.flags = NVMF_SUBSYSTEM_ALLOW_ANY_HOST;
        s.port_count = 2;
        s.ports[1].set(0x0102);
        s.host_count = 1;
        c_string_field(&mut s.hosts[15], b"nqn.h");
        let b = s.as_bytes();
        assert_eq!(&b[..4], b"nqn.");
        assert_eq!((b[256], b[257], b[258]), (1, 2, 1));
        assert_eq!(&b[290..292], &[2, 1]);
        assert_eq!(&b[384 + 15 * 224..384 + 15 * 224 + 6], b"nqn.h\0");
        assert!(NvmfSubsystem::read_from(b) == Some(s));
        assert!(NvmfSubsystem::read_from(&b[..4095]).is_none());

        let mut n = NvmfNamespace::zeroed();
        n.nsid.set(3);
        c_string_field(&mut n.volume, b"db0");
        let b = n.as_bytes();
        assert_eq!(&b[256..260], &[3, 0, 0, 0]);
        assert_eq!(&b[288..292], b"db0\0");

        let sqe = nvmf_port_remove(9, 1);
        assert_eq!(
            (sqe.opcode(), nvmf_port_id(&sqe)),
            (opcode::NVMF_PORT_REMOVE, Some(9))
        );
        let mut bad = sqe;
        bad.cdw10.set(0x1_0009);
        assert_eq!(nvmf_port_id(&bad), None);
        bad.cdw10.set(0);
        assert_eq!(nvmf_port_id(&bad), None);
        assert_eq!(payload_bytes(opcode::NVMF_SUBSYSTEM_SET), 4096);
        assert_eq!(payload_bytes(opcode::NVMF_NAMESPACE_REMOVE), 512);
        assert_eq!(payload_bytes(opcode::NVMF_PORT_REMOVE), 0);
    }

    #[test]
    fn remote_ssd_payload_layout() {
        let mut r = RemoteSsdAdd::zeroed();
        r.trtype = NVMF_TRTYPE_TCP;
        r.adrfam = NVMF_ADRFAM_IPV6;
        r.trsvcid.set(4420);
        r.nsid.set(2);
        r.size_bytes.set(1 << 30);
        r.lba_shift = 12;
        c_string_field(&mut r.name, b"shelf1");
        c_string_field(&mut r.traddr, b"::1");
        c_string_field(&mut r.subnqn, b"nqn.2026-12.org.example:shelf");
        let b = r.as_bytes();
        assert_eq!(&b[..8], &[3, 2, 0x44, 0x11, 2, 0, 0, 0]);
        assert_eq!(&b[8..16], &(1u64 << 30).to_le_bytes());
        assert_eq!(b[16], 12);
        assert_eq!(&b[32..39], b"shelf1\0");
        assert_eq!(&b[64..68], b"::1\0");
        assert_eq!(&b[128..132], b"nqn.");
        assert!(RemoteSsdAdd::read_from(b) == Some(r));
        assert!(RemoteSsdAdd::read_from(&b[..511]).is_none());
        assert_eq!(payload_bytes(opcode::REMOTE_SSD_ADD), 512);
        assert_eq!(
            VendorCommand::RemoteSsdAdd.direction(),
            DataDirection::HostToController
        );

        let sqe = remote_ssd_remove(5, 3);
        assert_eq!((sqe.opcode(), sqe.cid()), (opcode::REMOTE_SSD_REMOVE, 3));
        assert_eq!(ssd_index(&sqe), Some(5));
        assert_eq!(payload_bytes(opcode::REMOTE_SSD_REMOVE), 0);
        assert_eq!(
            VendorCommand::RemoteSsdRemove.direction(),
            DataDirection::None
        );
        let st = vendor_status(status::REMOTE_UNREACHABLE);
        assert_eq!((st.sct(), st.sc()), (7, 0x44));
    }

    #[test]
    fn maintenance_log_layout() {
        let mut log = MaintenanceLog::zeroed();
        log.scrub.id.set(7);
        log.scrub.action = maintenance::SCRUB_REPAIR as u8;
        log.scrub.state = maintenance_state::RUNNING;
        log.scrub.percent = 40;
        log.scrub.rows_done.set(2);
        log.scrub.rows_total.set(5);
        log.scrub.repaired.set(3);
        log.scrub.status.set(0x281);
        log.rebuild.member = 0xff;
        let b = log.as_bytes();
        assert_eq!(&b[..8], &[7, 0, 0, 0, 2, 1, 40, 0]);
        assert_eq!(b[8], 2);
        assert_eq!(b[16], 5);
        assert_eq!(b[32], 3);
        assert_eq!(&b[60..62], &[0x81, 0x02]);
        assert_eq!(b[64 + 7], 0xff);
        assert_eq!(MaintenanceLog::read_from(b), Some(log));
        let sqe = maintenance_log_command(9, 4);
        assert_eq!(sqe.opcode(), admin::GET_LOG_PAGE);
        assert_eq!(sqe.nsid.get(), 9);
        let cmd = super::super::sqe::GetLogPage::decode(&sqe);
        assert_eq!(
            (cmd.lid, cmd.bytes(), cmd.offset),
            (MAINTENANCE_LOG_ID, 128, 0)
        );
    }
}
