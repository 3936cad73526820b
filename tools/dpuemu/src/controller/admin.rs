//! Admin command set.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use log::info;
use nvme_shim::identify::{self, IdentifyController, IdentifyNamespace};
use nvme_shim::log_page::{self, lid};
use nvme_shim::opcode::{admin, cns, feature};
use nvme_shim::pci;
use nvme_shim::registers::{DoorbellKind, VERSION_1_4};
use nvme_shim::sqe::{
    self, Abort, CreateIoCq, CreateIoSq, DoorbellBufferConfig, Features, GetLogPage, Identify,
    SubmissionEntry,
};
use nvme_shim::status::Status;
use nvme_shim::wire::{ascii_field, c_string_field, Wire};

use super::data::{self, Direction, PAGE_SIZE};
use super::queues::{Completion, CompletionQueue, SubmissionQueue};
use super::{lock, Controller, Personality, ShadowBuffers, AER_LIMIT, ERROR_LOG_ENTRIES, MDTS};

/// Result of a command handler: DW0 on success, or the failure status.
pub(super) type CommandResult = Result<u32, Status>;

/// Last byte address of a ring of `entries` entries of `size` bytes at
/// `base`, or Invalid Field if the ring would wrap the address space.
fn ring_end(base: u64, entries: u32, size: u64) -> Result<u64, Status> {
    base.checked_add(u64::from(entries) * size - 1)
        .ok_or(Status::INVALID_FIELD)
}

impl Controller {
    /// Executes one admin command. `None` means the command stays
    /// outstanding (Asynchronous Event Request, or a Remote SSD Add that
    /// completes from its own thread).
    pub(super) fn execute_admin(&self, sqe: &SubmissionEntry) -> Option<Completion> {
        let cid = sqe.cid();
        let result = if sqe.fuse() != 0 || sqe.psdt() != nvme_shim::dptr::Psdt::Prp {
            Err(Status::INVALID_FIELD)
        } else {
            match sqe.opcode() {
                admin::IDENTIFY => self.identify(sqe),
                admin::GET_LOG_PAGE => self.get_log_page(sqe),
                admin::SET_FEATURES => self.set_features(sqe),
                admin::GET_FEATURES => self.get_features(sqe),
                admin::CREATE_IO_CQ => self.create_io_cq(sqe),
                admin::CREATE_IO_SQ => self.create_io_sq(sqe),
                admin::DELETE_IO_SQ => self.delete_io_sq(sqe),
                admin::DELETE_IO_CQ => self.delete_io_cq(sqe),
                // The controller completes commands synchronously, so there
                // is never anything left to abort: "not aborted" (DW0 bit 0).
                admin::ABORT => {
                    let _ = Abort::decode(sqe);
                    Ok(1)
                }
                admin::KEEP_ALIVE => Ok(0),
                admin::DOORBELL_BUFFER_CONFIG => self.doorbell_buffer_config(sqe),
                admin::ASYNC_EVENT_REQUEST => {
                    let mut state = lock(&self.admin);
                    if state.aers.len() >= AER_LIMIT {
                        Err(Status::AER_LIMIT_EXCEEDED)
                    } else {
                        state.aers.push(cid);
                        return None;
                    }
                }
                op if op >= admin::VENDOR_FIRST => match &self.personality {
                    Personality::Accelerator { .. }
                        if op == nvme_shim::vendor::opcode::REMOTE_SSD_ADD =>
                    {
                        // It connects over the network: it runs on its own
                        // thread and completes from there (`vendor.rs`).
                        match self.start_remote_ssd_add(sqe) {
                            Ok(()) => return None,
                            Err(status) => Err(status),
                        }
                    }
                    Personality::Accelerator { ssds, volumes } => {
                        self.execute_vendor(sqe, ssds, Some(volumes))
                    }
                    Personality::Ssd { .. } => Err(Status::INVALID_OPCODE),
                },
                _ => Err(Status::INVALID_OPCODE),
            }
        };
        Some(match result {
            Ok(value) => Completion {
                cid,
                status: Status::SUCCESS,
                result: u64::from(value),
            },
            Err(status) => Completion {
                cid,
                status,
                result: 0,
            },
        })
    }

    /// Copies `bytes` to the command's PRPs (admin data out).
    pub(super) fn send_to_host(&self, sqe: &SubmissionEntry, bytes: &[u8]) -> Result<(), Status> {
        // Hostile mode (accelerator only) may corrupt what the host gets.
        let corrupted = match &self.personality {
            Personality::Accelerator { .. } => {
                super::hostile::hostile().and_then(|h| h.corrupt_payload(sqe, bytes))
            }
            Personality::Ssd { .. } => None,
        };
        let bytes = corrupted.as_deref().unwrap_or(bytes);
        let segments = data::resolve(
            &*self.memory,
            sqe,
            bytes.len() as u64,
            Direction::ToHost,
            false,
        )?;
        data::copy_to_guest(&*self.memory, &segments, bytes)
    }

    fn identify(&self, sqe: &SubmissionEntry) -> CommandResult {
        let cmd = Identify::decode(sqe);
        let mut page = [0u8; identify::IDENTIFY_BYTES];
        match cmd.cns {
            cns::CONTROLLER => {
                self.identify_controller().write_to(&mut page);
            }
            cns::NAMESPACE => {
                // Broadcast (0xffffffff) would describe common capabilities;
                // dpuemu has no namespace management. An inactive NSID of
                // the accelerator (a deleted or locked volume) is invalid.
                let id = self
                    .identify_namespace(cmd.nsid)
                    .ok_or(Status::INVALID_NAMESPACE)?;
                id.write_to(&mut page);
            }
            cns::ACTIVE_NAMESPACES => {
                if cmd.nsid >= 0xffff_fffe {
                    return Err(Status::INVALID_NAMESPACE);
                }
                let ids: Vec<u32> = {
                    let namespaces = self.namespaces.read().unwrap_or_else(|p| p.into_inner());
                    namespaces
                        .range(cmd.nsid + 1..)
                        .filter(|(_, slot)| self.command_set_enabled(&*slot.backend))
                        .map(|(nsid, _)| *nsid)
                        .take(1024)
                        .collect()
                };
                for (slot, id) in page.chunks_exact_mut(4).zip(ids) {
                    slot.copy_from_slice(&id.to_le_bytes());
                }
            }
            // Linux asks for the NVM command set's controller limits; all
            // zero means none beyond MDTS.
            cns::CONTROLLER_CSI if sqe::identify_csi(sqe) == 0 => {}
            cns::NAMESPACE_DESCRIPTORS => {
                if self.namespace(cmd.nsid).is_none() {
                    return Err(Status::INVALID_NAMESPACE);
                }
                // One NGUID descriptor, unique per function and namespace.
                page[0] = identify::ns_descriptor::NGUID;
                page[1] = 16;
                let nguid = self.nguid(cmd.nsid);
                page[4..20].copy_from_slice(&nguid);
                self.csi_descriptor(cmd.nsid, &mut page, 20);
            }
            other if self.is_command_set_identify(other) => {
                self.identify_command_set(sqe, &mut page)?
            }
            _ => return Err(Status::INVALID_FIELD),
        }
        self.send_to_host(sqe, &page)?;
        Ok(0)
    }

    fn nguid(&self, nsid: u32) -> [u8; 16] {
        let mut nguid = [0u8; 16];
        nguid[..2].copy_from_slice(&pci::VENDOR_ID.to_be_bytes());
        let serial = self.config.serial.as_bytes();
        for (dst, src) in nguid[2..12].iter_mut().zip(serial.iter().rev()) {
            *dst = *src;
        }
        nguid[12..].copy_from_slice(&nsid.to_be_bytes());
        nguid
    }

    fn identify_controller(&self) -> IdentifyController {
        let mut id = IdentifyController::zeroed();
        id.vid.set(pci::VENDOR_ID);
        id.ssvid.set(pci::VENDOR_ID);
        ascii_field(&mut id.sn, self.config.serial.as_bytes());
        ascii_field(&mut id.mn, self.config.model.as_bytes());
        ascii_field(&mut id.fr, env!("CARGO_PKG_VERSION").as_bytes());
        id.mdts = MDTS;
        id.cntlid.set(1);
        id.ver.set(VERSION_1_4);
        id.cntrltype = identify::CNTRLTYPE_IO;
        id.oacs.set(identify::OACS_DOORBELL_BUFFER_CONFIG);
        id.acl = 3;
        id.aerl = (AER_LIMIT - 1) as u8;
        id.frmw = 0x3; // Slot 1 read-only, one slot.
        id.elpe = (ERROR_LOG_ENTRIES - 1) as u8;
        id.lpa |= self.command_set_log_attributes();
        id.sqes = 0x66;
        id.cqes = 0x44;
        id.maxcmd.set(1024);
        id.nn.set(self.namespace_count());
        id.oncs
            .set(identify::ONCS_DSM | identify::ONCS_WRITE_ZEROES);
        id.vwc = identify::VWC_PRESENT;
        id.sgls
            .set(identify::SGLS_SUPPORTED | identify::SGLS_BIT_BUCKET);
        c_string_field(&mut id.subnqn, self.config.subnqn.as_bytes());
        id.psd0_mp.set(2500);
        id
    }

    /// Identify Namespace of an active namespace; sizes in its blocks
    /// (NUSE: the blocks a thin volume has mapped).
    fn identify_namespace(&self, nsid: u32) -> Option<IdentifyNamespace> {
        let backend = self.namespace(nsid)?;
        let mut id = IdentifyNamespace::zeroed();
        let shift = backend.lba_shift();
        let blocks = backend.size() >> shift;
        id.nsze.set(blocks);
        id.ncap.set(blocks);
        id.nuse.set((backend.used() >> shift).min(blocks));
        id.nlbaf = 0;
        id.flbas = 0;
        id.lbaf[0].lbads = shift;
        id.dlfeat = identify::DLFEAT_READ_ZEROES;
        id.nguid = self.nguid(nsid);
        Some(id)
    }

    fn get_log_page(&self, sqe: &SubmissionEntry) -> CommandResult {
        let cmd = GetLogPage::decode(sqe);
        let len = cmd.bytes();
        if len == 0 || len > super::MAX_TRANSFER {
            return Err(Status::INVALID_FIELD);
        }
        let page: Vec<u8> = match cmd.lid {
            lid::ERROR_INFORMATION => {
                let log = lock(&self.errors);
                let mut bytes = Vec::with_capacity(ERROR_LOG_ENTRIES * 64);
                for entry in log.entries.iter().rev() {
                    bytes.extend_from_slice(entry.as_bytes());
                }
                bytes.resize(ERROR_LOG_ENTRIES * 64, 0);
                bytes
            }
            lid::SMART_HEALTH => {
                let mut bytes = vec![0u8; log_page::SMART_LOG_BYTES];
                // Composite temperature 308 K, 100% spare, 10% threshold.
                bytes[1..3].copy_from_slice(&308u16.to_le_bytes());
                bytes[3] = 100;
                bytes[4] = 10;
                bytes
            }
            lid::FIRMWARE_SLOT => {
                let mut bytes = vec![0u8; log_page::FIRMWARE_SLOT_LOG_BYTES];
                bytes[0] = 1; // Active firmware in slot 1.
                ascii_field(&mut bytes[8..16], env!("CARGO_PKG_VERSION").as_bytes());
                bytes
            }
            // The accelerator's background maintenance of a volume's
            // family (scrub, rebuild), polled by the host.
            nvme_shim::vendor::MAINTENANCE_LOG_ID => match &self.personality {
                Personality::Accelerator { volumes, .. } => {
                    volumes.maintenance_log(cmd.nsid)?.as_bytes().to_vec()
                }
                Personality::Ssd { .. } => return Err(Status::INVALID_LOG_PAGE),
            },
            super::zoned::LID_COMMANDS_SUPPORTED if self.io_command_sets => {
                self.commands_supported_log(sqe)?
            }
            _ => return Err(Status::INVALID_LOG_PAGE),
        };
        if cmd.offset & 3 != 0 || cmd.offset > page.len() as u64 {
            return Err(Status::INVALID_FIELD);
        }
        let mut out = vec![0u8; len as usize];
        let src = &page[cmd.offset as usize..];
        let n = src.len().min(out.len());
        out[..n].copy_from_slice(&src[..n]);
        self.send_to_host(sqe, &out)?;
        Ok(0)
    }

    fn set_features(&self, sqe: &SubmissionEntry) -> CommandResult {
        let cmd = Features::decode(sqe);
        if cmd.save {
            return Err(Status::FEATURE_NOT_SAVEABLE);
        }
        let allocated = self.allocated_queues();
        if cmd.fid == feature::VOLATILE_WRITE_CACHE {
            // Applied, not only stored: with the cache off (WCE = 0) the
            // accelerator's pools make every write durable before it
            // completes.
            if let Personality::Accelerator { volumes, .. } = &self.personality {
                volumes.set_write_cache(cmd.value & 1 != 0)?;
            }
            // And by the I/O path of every personality: an SSD function
            // flushes each write before completing it (`io.rs`).
            self.volatile_write_cache
                .store(cmd.value & 1 != 0, Ordering::Release);
        }
        let mut state = lock(&self.admin);
        match cmd.fid {
            feature::NUMBER_OF_QUEUES => {
                if cmd.value & 0xffff == 0xffff || cmd.value >> 16 == 0xffff {
                    return Err(Status::INVALID_FIELD);
                }
                Ok(allocated)
            }
            feature::ARBITRATION
            | feature::POWER_MANAGEMENT
            | feature::TEMPERATURE_THRESHOLD
            | feature::ERROR_RECOVERY
            | feature::VOLATILE_WRITE_CACHE
            | feature::INTERRUPT_COALESCING
            | feature::INTERRUPT_VECTOR_CONFIG
            | feature::WRITE_ATOMICITY
            | feature::ASYNC_EVENT_CONFIG => {
                state.features[usize::from(cmd.fid)] = cmd.value;
                Ok(0)
            }
            _ => Err(Status::INVALID_FIELD),
        }
    }

    fn get_features(&self, sqe: &SubmissionEntry) -> CommandResult {
        let cmd = Features::decode(sqe);
        if cmd.select > 3 {
            return Err(Status::INVALID_FIELD);
        }
        let state = lock(&self.admin);
        match cmd.fid {
            feature::NUMBER_OF_QUEUES => Ok(self.allocated_queues()),
            _ if cmd.select == 3 => Ok(0x4), // Capabilities: changeable.
            feature::ARBITRATION
            | feature::POWER_MANAGEMENT
            | feature::TEMPERATURE_THRESHOLD
            | feature::ERROR_RECOVERY
            | feature::VOLATILE_WRITE_CACHE
            | feature::INTERRUPT_COALESCING
            | feature::INTERRUPT_VECTOR_CONFIG
            | feature::WRITE_ATOMICITY
            | feature::ASYNC_EVENT_CONFIG => Ok(state.features[usize::from(cmd.fid)]),
            _ => Err(Status::INVALID_FIELD),
        }
    }

    fn allocated_queues(&self) -> u32 {
        let n = self.config.io_queues.max(1);
        sqe::number_of_queues(n, n)
    }

    fn check_new_queue(
        &self,
        qid: u16,
        entries: u32,
        base: u64,
        contiguous: bool,
    ) -> Result<(), Status> {
        if qid == 0 || qid > self.config.io_queues {
            return Err(Status::INVALID_QUEUE_ID);
        }
        if !(2..=super::MAX_QUEUE_ENTRIES).contains(&entries) {
            return Err(Status::INVALID_QUEUE_SIZE);
        }
        // CAP.CQR: queues must be physically contiguous and page aligned.
        if !contiguous || base == 0 || base & (PAGE_SIZE - 1) != 0 {
            return Err(Status::INVALID_FIELD);
        }
        Ok(())
    }

    fn create_io_cq(&self, sqe: &SubmissionEntry) -> CommandResult {
        let cmd = CreateIoCq::decode(sqe);
        self.check_new_queue(cmd.qid, cmd.entries, cmd.base, cmd.contiguous)?;
        if cmd.interrupts && cmd.vector >= self.config.vectors {
            return Err(Status::INVALID_INTERRUPT_VECTOR);
        }
        if lock(&self.registers).cc.iocqes() != 4 {
            return Err(Status::INVALID_FIELD);
        }
        // The whole ring must be guest memory now (it is checked on every
        // access again, as mappings can change).
        let mut probe = [0u8; 1];
        let last = ring_end(cmd.base, cmd.entries, 16)?;
        if self.memory.read(cmd.base, &mut probe).is_err()
            || self.memory.read(last, &mut probe).is_err()
        {
            return Err(Status::INVALID_FIELD);
        }
        let mut table = self.queues.write().unwrap_or_else(|p| p.into_inner());
        let slot = table
            .cqs
            .get_mut(usize::from(cmd.qid))
            .ok_or(Status::INVALID_QUEUE_ID)?;
        if slot.is_some() {
            return Err(Status::INVALID_QUEUE_ID);
        }
        *slot = Some(Arc::new(Mutex::new(CompletionQueue::new(
            cmd.qid,
            cmd.base,
            cmd.entries,
            cmd.interrupts,
            cmd.vector,
        ))));
        self.reset_doorbell(cmd.qid, DoorbellKind::CompletionHead, table.shadow);
        info!(
            "{}: created CQ {} ({} entries, vector {})",
            self.config.name, cmd.qid, cmd.entries, cmd.vector
        );
        Ok(0)
    }

    fn create_io_sq(&self, sqe: &SubmissionEntry) -> CommandResult {
        let cmd = CreateIoSq::decode(sqe);
        self.check_new_queue(cmd.qid, cmd.entries, cmd.base, cmd.contiguous)?;
        if lock(&self.registers).cc.iosqes() != 6 {
            return Err(Status::INVALID_FIELD);
        }
        let mut probe = [0u8; 1];
        let last = ring_end(cmd.base, cmd.entries, 64)?;
        if self.memory.read(cmd.base, &mut probe).is_err()
            || self.memory.read(last, &mut probe).is_err()
        {
            return Err(Status::INVALID_FIELD);
        }
        let mut table = self.queues.write().unwrap_or_else(|p| p.into_inner());
        let cq = match table.cqs.get(usize::from(cmd.cqid)) {
            Some(Some(cq)) if cmd.cqid != 0 => cq.clone(),
            _ => return Err(Status::CQ_INVALID),
        };
        let slot = table
            .sqs
            .get_mut(usize::from(cmd.qid))
            .ok_or(Status::INVALID_QUEUE_ID)?;
        if slot.is_some() {
            return Err(Status::INVALID_QUEUE_ID);
        }
        *slot = Some(Arc::new(Mutex::new(SubmissionQueue::new(
            cmd.qid,
            cmd.base,
            cmd.entries,
            cmd.cqid,
        ))));
        lock(&cq).users += 1;
        self.reset_doorbell(cmd.qid, DoorbellKind::SubmissionTail, table.shadow);
        info!(
            "{}: created SQ {} ({} entries, CQ {})",
            self.config.name, cmd.qid, cmd.entries, cmd.cqid
        );
        Ok(0)
    }

    /// A new queue starts at 0: its MMIO doorbell value and, with shadow
    /// doorbells, its shadow and EventIdx entries.
    fn reset_doorbell(&self, qid: u16, kind: DoorbellKind, shadow: Option<ShadowBuffers>) {
        let index = nvme_shim::registers::doorbell_index(qid, kind);
        if let Some(d) = self.doorbells.get(index) {
            d.store(0, std::sync::atomic::Ordering::Release);
        }
        if let Some(s) = shadow {
            let _ = self.memory.write_u32(s.doorbell(qid, kind), 0);
            let _ = self.memory.write_u32(s.event_idx(qid, kind), 0);
        }
    }

    fn delete_io_sq(&self, sqe: &SubmissionEntry) -> CommandResult {
        let qid = sqe::delete_queue_qid(sqe);
        if qid == 0 || qid > self.config.io_queues {
            return Err(Status::INVALID_QUEUE_ID);
        }
        let (sq, cq) = {
            let mut table = self.queues.write().unwrap_or_else(|p| p.into_inner());
            let sq = table
                .sqs
                .get_mut(usize::from(qid))
                .and_then(Option::take)
                .ok_or(Status::INVALID_QUEUE_ID)?;
            let cqid = usize::from(lock(&sq).cqid);
            (sq, table.cqs.get(cqid).cloned().flatten())
        };
        // Waits for a worker's batch on this queue to finish.
        lock(&sq).deleted = true;
        if let Some(cq) = cq {
            let mut cq = lock(&cq);
            cq.users = cq.users.saturating_sub(1);
        }
        info!("{}: deleted SQ {qid}", self.config.name);
        Ok(0)
    }

    fn delete_io_cq(&self, sqe: &SubmissionEntry) -> CommandResult {
        let qid = sqe::delete_queue_qid(sqe);
        if qid == 0 || qid > self.config.io_queues {
            return Err(Status::INVALID_QUEUE_ID);
        }
        let mut table = self.queues.write().unwrap_or_else(|p| p.into_inner());
        let slot = table
            .cqs
            .get_mut(usize::from(qid))
            .ok_or(Status::INVALID_QUEUE_ID)?;
        let users = match slot {
            Some(cq) => lock(cq).users,
            None => return Err(Status::INVALID_QUEUE_ID),
        };
        if users > 0 {
            return Err(Status::INVALID_QUEUE_DELETION);
        }
        if let Some(cq) = slot.take() {
            lock(&cq).deleted = true;
        }
        info!("{}: deleted CQ {qid}", self.config.name);
        Ok(0)
    }

    fn doorbell_buffer_config(&self, sqe: &SubmissionEntry) -> CommandResult {
        let cmd = DoorbellBufferConfig::decode(sqe);
        let aligned = |a: u64| a != 0 && a & (PAGE_SIZE - 1) == 0;
        if !aligned(cmd.shadow) || !aligned(cmd.event_idx) || cmd.shadow == cmd.event_idx {
            return Err(Status::INVALID_FIELD);
        }
        let mut probe = [0u8; PAGE_SIZE as usize];
        if self.memory.read(cmd.shadow, &mut probe).is_err()
            || self.memory.read(cmd.event_idx, &mut probe).is_err()
        {
            return Err(Status::INVALID_FIELD);
        }
        let shadow = ShadowBuffers {
            doorbells: cmd.shadow,
            event_idx: cmd.event_idx,
        };
        let mut table = self.queues.write().unwrap_or_else(|p| p.into_inner());
        // Existing I/O queues continue from their current pointers: publish
        // them in the shadow buffer, as the host's copy starts from there.
        for sq in table.sqs.iter().skip(1).flatten() {
            let sq = lock(sq);
            let _ = self.memory.write_u32(
                shadow.doorbell(sq.qid, DoorbellKind::SubmissionTail),
                sq.tail,
            );
            let _ = self.memory.write_u32(
                shadow.event_idx(sq.qid, DoorbellKind::SubmissionTail),
                sq.tail,
            );
        }
        for cq in table.cqs.iter().skip(1).flatten() {
            let cq = lock(cq);
            let _ = self.memory.write_u32(
                shadow.doorbell(cq.qid, DoorbellKind::CompletionHead),
                cq.head,
            );
            let _ = self.memory.write_u32(
                shadow.event_idx(cq.qid, DoorbellKind::CompletionHead),
                cq.head,
            );
        }
        table.shadow = Some(shadow);
        info!(
            "{}: shadow doorbells at {:#x}, EventIdx at {:#x}",
            self.config.name, cmd.shadow, cmd.event_idx
        );
        Ok(0)
    }
}
