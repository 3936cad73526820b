//! The Zoned Namespace Command Set (CSI 02h) of an SSD function whose
//! namespace is zoned (`--zoned-ssd`, `crate::zoned`): the I/O commands on
//! a zoned namespace, the command-set Identify structures, the Commands
//! Supported and Effects log, and CAP.CSS / CC.CSS: with CC.CSS = 000b (the
//! NVM command set alone) a zoned namespace is inactive.
//!
//! Every field comes from the host: a reserved action, filter or option, a
//! start LBA that is not a zone start, a range that leaves the namespace or
//! a transfer over MDTS fail the command with a status and change nothing.

use nvme_shim::identify::IDENTIFY_BYTES;
use nvme_shim::opcode::{admin, io};
use nvme_shim::sqe::{self, BlockRange, DatasetManagement, DsmRange, Identify, SubmissionEntry};
use nvme_shim::status::Status;
use nvme_shim::wire::Wire;

use super::data::{self, Direction};
use super::{Controller, MAX_TRANSFER, MDTS};
use crate::namespace::Namespace;
use crate::zoned::{ZoneAction, ZoneState, ZonedNamespace};

/// Zoned Namespace Command Set opcodes.
pub mod opcode {
    /// Zone Management Send.
    pub const ZONE_MANAGEMENT_SEND: u8 = 0x79;
    /// Zone Management Receive.
    pub const ZONE_MANAGEMENT_RECEIVE: u8 = 0x7a;
    /// Zone Append.
    pub const ZONE_APPEND: u8 = 0x7d;
}

/// Command Set Identifiers.
pub mod csi {
    /// NVM Command Set.
    pub const NVM: u8 = 0x0;
    /// Zoned Namespace Command Set.
    pub const ZONED: u8 = 0x2;
}

/// Identify CNS values of the command-set structures.
pub mod cns {
    /// I/O Command Set specific Identify Namespace.
    pub const NAMESPACE_CSI: u8 = 0x05;
    /// I/O Command Set specific Identify Controller.
    pub const CONTROLLER_CSI: u8 = 0x06;
    /// Identify I/O Command Set data structure (command set vectors).
    pub const IO_COMMAND_SETS: u8 = 0x1c;
}

/// CAP.CSS bit 6 (register bit 43): one or more I/O command sets.
pub const CAP_CSS_IO_COMMAND_SETS: u64 = 1 << 43;
/// CC.CSS value selecting all supported I/O command sets.
pub const CC_CSS_ALL_IO_COMMAND_SETS: u8 = 0b110;
/// Namespace Identification Descriptor type: Command Set Identifier.
pub const NIDT_CSI: u8 = 0x4;
/// Log page: Commands Supported and Effects.
pub const LID_COMMANDS_SUPPORTED: u8 = 0x05;
/// Identify Controller LPA bit 1: Commands Supported and Effects log.
const LPA_COMMANDS_SUPPORTED: u8 = 1 << 1;
/// Commands Supported and Effects: Command Supported.
const CSUPP: u32 = 1 << 0;
/// Commands Supported and Effects: Logical Block Content Change.
const LBCC: u32 = 1 << 1;
/// Zone Append Size Limit, in the unit of the minimum page size: MDTS.
pub const ZASL: u8 = MDTS;
/// OZCS bit 0: Read Across Zone Boundaries.
const OZCS_READ_ACROSS_ZONE_BOUNDARIES: u16 = 1 << 0;

/// The fields of a Zone Management Send.
struct ManagementSend {
    slba: u64,
    action: u8,
    select_all: bool,
    /// Zone Send Action Specific Option (zone random write areas).
    specific_option: bool,
}

impl ManagementSend {
    fn decode(sqe: &SubmissionEntry) -> Self {
        let cdw13 = sqe.cdw13.get();
        Self {
            slba: u64::from(sqe.cdw10.get()) | u64::from(sqe.cdw11.get()) << 32,
            action: cdw13 as u8,
            select_all: cdw13 & (1 << 8) != 0,
            specific_option: cdw13 & (1 << 9) != 0,
        }
    }
}

/// The fields of a Zone Management Receive.
struct ManagementReceive {
    slba: u64,
    /// Bytes of the report buffer (NUMD + 1 dwords).
    bytes: u64,
    action: u8,
    filter: u8,
    partial: bool,
}

impl ManagementReceive {
    fn decode(sqe: &SubmissionEntry) -> Self {
        let cdw13 = sqe.cdw13.get();
        Self {
            slba: u64::from(sqe.cdw10.get()) | u64::from(sqe.cdw11.get()) << 32,
            bytes: (u64::from(sqe.cdw12.get()) + 1) * 4,
            action: cdw13 as u8,
            filter: (cdw13 >> 8) as u8,
            partial: cdw13 & (1 << 16) != 0,
        }
    }
}

impl Controller {
    /// Whether `css` (CC.CSS) is a command set selection this controller
    /// supports: NVM only, or all I/O command sets on a function with a
    /// zoned namespace.
    pub(super) fn supports_command_sets(&self, css: u8) -> bool {
        css == 0 || (self.io_command_sets && css == CC_CSS_ALL_IO_COMMAND_SETS)
    }

    /// Records the command sets the host enabled (CC.CSS at enable).
    pub(super) fn select_command_sets(&self, css: u8) {
        self.all_command_sets.store(
            css == CC_CSS_ALL_IO_COMMAND_SETS,
            std::sync::atomic::Ordering::Release,
        );
    }

    /// Whether a namespace over `backend` is active under the command
    /// sets the host enabled: a zoned one only with all I/O command sets
    /// (a host that selected the NVM command set alone must not see it).
    pub(super) fn command_set_enabled(&self, backend: &dyn Namespace) -> bool {
        backend.zoned().is_none()
            || self
                .all_command_sets
                .load(std::sync::atomic::Ordering::Acquire)
    }

    /// CAP bits of the I/O command sets this controller offers.
    pub(super) fn command_set_capability(&self) -> u64 {
        if self.io_command_sets {
            CAP_CSS_IO_COMMAND_SETS
        } else {
            0
        }
    }

    /// Identify Controller LPA bits of a function with I/O command sets.
    pub(super) fn command_set_log_attributes(&self) -> u8 {
        if self.io_command_sets {
            LPA_COMMANDS_SUPPORTED
        } else {
            0
        }
    }

    /// A controller reset closes every zoned namespace's opened zones.
    pub(super) fn reset_zones(&self) {
        let namespaces = self.namespaces.read().unwrap_or_else(|p| p.into_inner());
        for slot in namespaces.values() {
            if let Some(zoned) = slot.backend.zoned() {
                zoned.controller_reset();
            }
        }
    }

    /// The Command Set Identifier of namespace `nsid`.
    fn namespace_csi(&self, nsid: u32) -> Option<u8> {
        let backend = self.namespace(nsid)?;
        Some(if backend.zoned().is_some() {
            csi::ZONED
        } else {
            csi::NVM
        })
    }

    /// Appends the Command Set Identifier descriptor of `nsid` to a
    /// Namespace Identification Descriptor list whose next free byte is
    /// `at` (functions with I/O command sets only: Linux then requires
    /// one for every namespace).
    pub(super) fn csi_descriptor(&self, nsid: u32, page: &mut [u8], at: usize) {
        if !self.io_command_sets {
            return;
        }
        if let (Some(csi), Some(out)) = (self.namespace_csi(nsid), page.get_mut(at..at + 5)) {
            out[0] = NIDT_CSI;
            out[1] = 1;
            out[4] = csi;
        }
    }

    /// Whether Identify `cns` is one of the command-set structures this
    /// file answers.
    pub(super) fn is_command_set_identify(&self, cns: u8) -> bool {
        self.io_command_sets
            && matches!(
                cns,
                cns::NAMESPACE_CSI | cns::CONTROLLER_CSI | cns::IO_COMMAND_SETS
            )
    }

    /// Identify CNS 05h and 06h for the Zoned Namespace Command Set, and
    /// CNS 1Ch (the command set combinations: NVM and Zoned Namespace).
    pub(super) fn identify_command_set(
        &self,
        sqe: &SubmissionEntry,
        page: &mut [u8; IDENTIFY_BYTES],
    ) -> Result<(), Status> {
        let cmd = Identify::decode(sqe);
        let set = sqe::identify_csi(sqe);
        match (cmd.cns, set) {
            (cns::NAMESPACE_CSI, csi::ZONED) => {
                let backend = self.namespace(cmd.nsid).ok_or(Status::INVALID_NAMESPACE)?;
                let zoned = backend.zoned().ok_or(Status::INVALID_FIELD)?;
                let g = zoned.geometry();
                // ZOC 0: fixed zone capacity, no zone active excursions.
                page[2..4].copy_from_slice(&OZCS_READ_ACROSS_ZONE_BOUNDARIES.to_le_bytes());
                page[4..8].copy_from_slice(&(g.max_active - 1).to_le_bytes());
                page[8..12].copy_from_slice(&(g.max_open - 1).to_le_bytes());
                // LBA Format Extension 0 (the only format): ZSZE, ZDES 0.
                page[2816..2824].copy_from_slice(&g.zone_blocks.to_le_bytes());
            }
            (cns::CONTROLLER_CSI, csi::ZONED) => page[0] = ZASL,
            (cns::IO_COMMAND_SETS, _) => {
                // Vector 0, the one in use: bit n is command set CSI n.
                let vector = 1u64 << csi::NVM | 1u64 << csi::ZONED;
                page[..8].copy_from_slice(&vector.to_le_bytes());
            }
            _ => return Err(Status::INVALID_FIELD),
        }
        Ok(())
    }

    /// The Commands Supported and Effects log of command set CSI (CDW14
    /// bits 31:24): NVM or Zoned Namespace.
    pub(super) fn commands_supported_log(&self, sqe: &SubmissionEntry) -> Result<Vec<u8>, Status> {
        let set = (sqe.cdw14.get() >> 24) as u8;
        if !self.io_command_sets || !matches!(set, csi::NVM | csi::ZONED) {
            return Err(Status::INVALID_FIELD);
        }
        let mut log = vec![0u8; 4096];
        let mut mark = |index: usize, effects: u32| {
            if let Some(slot) = log.get_mut(index * 4..index * 4 + 4) {
                slot.copy_from_slice(&effects.to_le_bytes());
            }
        };
        for op in [
            admin::DELETE_IO_SQ,
            admin::CREATE_IO_SQ,
            admin::GET_LOG_PAGE,
            admin::DELETE_IO_CQ,
            admin::CREATE_IO_CQ,
            admin::IDENTIFY,
            admin::ABORT,
            admin::SET_FEATURES,
            admin::GET_FEATURES,
            admin::ASYNC_EVENT_REQUEST,
            admin::KEEP_ALIVE,
            admin::DOORBELL_BUFFER_CONFIG,
        ] {
            mark(usize::from(op), CSUPP);
        }
        // I/O Command Supported entries follow the 256 admin ones.
        let io_entry = |op: u8| 256 + usize::from(op);
        mark(io_entry(io::FLUSH), CSUPP);
        mark(io_entry(io::READ), CSUPP);
        mark(io_entry(io::WRITE), CSUPP | LBCC);
        mark(io_entry(io::WRITE_ZEROES), CSUPP | LBCC);
        mark(io_entry(io::DATASET_MANAGEMENT), CSUPP);
        if set == csi::ZONED {
            mark(io_entry(opcode::ZONE_MANAGEMENT_SEND), CSUPP | LBCC);
            mark(io_entry(opcode::ZONE_MANAGEMENT_RECEIVE), CSUPP);
            mark(io_entry(opcode::ZONE_APPEND), CSUPP | LBCC);
        }
        Ok(log)
    }

    /// Executes I/O command `sqe` on zoned namespace `nsid`. Returns the
    /// completion's DW0 and DW1 (the LBA a Zone Append wrote at).
    pub(super) fn zoned_command(
        &self,
        sqe: &SubmissionEntry,
        zoned: &ZonedNamespace,
        nsid: u32,
    ) -> Result<u64, Status> {
        match sqe.opcode() {
            io::READ => self.zoned_read(sqe, zoned, nsid).map(|()| 0),
            io::WRITE => self.zoned_write(sqe, zoned, nsid, false).map(|_| 0),
            opcode::ZONE_APPEND => self.zoned_write(sqe, zoned, nsid, true),
            io::WRITE_ZEROES => {
                let cmd = BlockRange::decode(sqe);
                let (_, _) = Self::byte_range(zoned, cmd.slba, u64::from(cmd.blocks))?;
                zoned.write_zeroes(cmd.slba, u64::from(cmd.blocks))?;
                if cmd.fua || !self.write_cache_enabled() {
                    Namespace::flush(zoned).map_err(super::io::write_status)?;
                }
                self.count(nsid, |s| &s.write_zeroes, 1);
                Ok(0)
            }
            io::FLUSH => {
                Namespace::flush(zoned).map_err(super::io::write_status)?;
                self.count(nsid, |s| &s.flushes, 1);
                Ok(0)
            }
            io::DATASET_MANAGEMENT => self.zoned_dataset_management(sqe, zoned).map(|()| 0),
            opcode::ZONE_MANAGEMENT_SEND => {
                let cmd = ManagementSend::decode(sqe);
                let action = ZoneAction::from_code(cmd.action).ok_or(Status::INVALID_FIELD)?;
                if cmd.specific_option {
                    return Err(Status::INVALID_FIELD);
                }
                if !cmd.select_all && cmd.slba >= zoned.geometry().blocks() {
                    return Err(Status::LBA_OUT_OF_RANGE);
                }
                zoned.manage(cmd.slba, action, cmd.select_all)?;
                Ok(0)
            }
            opcode::ZONE_MANAGEMENT_RECEIVE => self.zone_report(sqe, zoned).map(|()| 0),
            _ => Err(Status::INVALID_OPCODE),
        }
    }

    fn zoned_read(
        &self,
        sqe: &SubmissionEntry,
        zoned: &ZonedNamespace,
        nsid: u32,
    ) -> Result<(), Status> {
        let cmd = BlockRange::decode(sqe);
        let (_, len) = Self::byte_range(zoned, cmd.slba, u64::from(cmd.blocks))?;
        self.read_into_guest(sqe, len, |buf| zoned.read(cmd.slba, buf))?;
        self.count_read(nsid, len);
        Ok(())
    }

    /// Write or Zone Append: the data is fetched before the zone is
    /// touched, so a bad data pointer changes nothing. Returns the LBA
    /// written at.
    fn zoned_write(
        &self,
        sqe: &SubmissionEntry,
        zoned: &ZonedNamespace,
        nsid: u32,
        append: bool,
    ) -> Result<u64, Status> {
        let cmd = BlockRange::decode(sqe);
        let (_, len) = Self::byte_range(zoned, cmd.slba, u64::from(cmd.blocks))?;
        // ZASL equals MDTS: one limit for both.
        let lba = self.with_data_from_guest(sqe, len, |buf| zoned.write(cmd.slba, buf, append))?;
        self.finish_write(nsid, len, cmd.fua, || {
            Namespace::flush(zoned).map_err(super::io::write_status)
        })?;
        Ok(lba)
    }

    /// Dataset Management on a zoned namespace: the ranges are checked;
    /// deallocation is advisory and not done (a zone reset frees blocks).
    fn zoned_dataset_management(
        &self,
        sqe: &SubmissionEntry,
        zoned: &ZonedNamespace,
    ) -> Result<(), Status> {
        let cmd = DatasetManagement::decode(sqe);
        let len = usize::from(cmd.ranges) * DsmRange::SIZE;
        // At most 256 ranges of 16 bytes: within MAX_TRANSFER.
        self.with_data_from_guest(sqe, len as u64, |raw| {
            for bytes in raw.chunks_exact(DsmRange::SIZE) {
                let range = DsmRange::read_from(bytes).ok_or(Status::INVALID_FIELD)?;
                Self::byte_range(zoned, range.slba.get(), u64::from(range.blocks.get()))?;
            }
            Ok(())
        })
    }

    /// Zone Management Receive: Report Zones (the extended report needs
    /// zone descriptor extensions, which dpuemu has none of).
    fn zone_report(&self, sqe: &SubmissionEntry, zoned: &ZonedNamespace) -> Result<(), Status> {
        /// Zone Receive Action: Report Zones.
        const REPORT_ZONES: u8 = 0x0;
        let cmd = ManagementReceive::decode(sqe);
        if cmd.action != REPORT_ZONES || cmd.bytes > MAX_TRANSFER {
            return Err(Status::INVALID_FIELD);
        }
        let filter = match cmd.filter {
            0 => None,
            // Empty, Implicitly Opened, Explicitly Opened, Closed: the
            // filter values are the state codes.
            code @ 1..=4 => ZoneState::from_code(code),
            5 => Some(ZoneState::Full),
            6 => Some(ZoneState::ReadOnly),
            7 => Some(ZoneState::Offline),
            _ => return Err(Status::INVALID_FIELD),
        };
        if cmd.slba >= zoned.geometry().blocks() {
            return Err(Status::LBA_OUT_OF_RANGE);
        }
        let segments = data::resolve(&*self.memory, sqe, cmd.bytes, Direction::ToHost, true)?;
        let report = zoned.report(cmd.slba, filter, cmd.partial, cmd.bytes as usize)?;
        data::copy_to_guest(&*self.memory, &segments, &report)
    }
}
