// SPDX-License-Identifier: GPL-2.0

//! Management of a bound accelerator: vendor admin commands with their
//! payloads, and the disks of its namespaces, which come and go as volumes
//! are enabled and disabled through configfs.
//!
//! configfs reaches the accelerator through [`current`]. A management
//! request that moves a payload or changes the disks holds the
//! [`Management`] state lock for its whole duration, and unbinding takes
//! the same lock to mark the accelerator gone, so such a request either
//! finishes before the device is released or sees it gone and fails with
//! `ENODEV`. While the lock is held and the accelerator is not gone, the PCI
//! function is bound.
//!
//! A command without a payload only checks under the lock that the
//! accelerator is not gone, and waits for its completion without it. It
//! reaches the device only through the controller, whose registers are
//! revoked at unbind and which fails a waiting command at once when it is
//! reset or shut down.
//!
//! Long operations (scrub, rebuild after a member replacement) run on the
//! accelerator in the background: the Maintenance command that starts one
//! completes at once, and the host polls the Maintenance log page
//! ([`Management::maintenance_log`]) for progress and result. So no admin
//! command waits for one, and nothing a reset, an Abort or unbind needs is
//! held while it runs.

use crate::{
    blk_mq::{Disk, Limits, TagSet},
    controller::{Controller, ADMIN_TIMEOUT},
    device_memory::DeviceMemory,
    disk::BlockOps,
    io_queue::NamespaceFormat,
    shim::{
        identify::IdentifyNamespace,
        opcode::cns,
        sqe::{Identify, SubmissionEntry},
        vendor::{self, VendorCommand},
        wire::Wire,
    },
};
use core::sync::atomic::{AtomicU64, Ordering};
use kernel::{
    device,
    dma::Coherent,
    fmt,
    new_mutex,
    prelude::*,
    sync::{Arc, Mutex},
    time::Delta,
};

/// Size of the management payload buffer: the largest vendor payload.
const PAYLOAD_BYTES: usize = 4096;
/// How long the accelerator has to answer Remote SSD Add: it connects to
/// the remote subsystem before it answers, and gives up on a remote that
/// does not answer after its own connection timeout (10 s in dpuemu), so
/// the command must not be declared lost before that.
pub(crate) const REMOTE_SSD_ADD_TIMEOUT: Delta = Delta::from_secs(30);
/// Most namespaces turned into disks per controller.
pub(crate) const MAX_NAMESPACES: usize = 64;

/// Disk numbers (`/dev/dpublkN`) in use, one bit each.
static DISK_NUMBERS: AtomicU64 = AtomicU64::new(0);

/// A disk number, taken from [`DISK_NUMBERS`] and given back on drop, so a
/// function that is unbound and bound again gets its old names back.
pub(crate) struct DiskNumber(pub(crate) u32);

impl DiskNumber {
    /// Takes the lowest free number, if any of the 64 is free.
    fn take() -> Option<Self> {
        let mut used = DISK_NUMBERS.load(Ordering::Relaxed);
        loop {
            let free = (!used).trailing_zeros();
            if free >= 64 {
                return None;
            }
            match DISK_NUMBERS.compare_exchange_weak(
                used,
                used | 1 << free,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(Self(free)),
                Err(now) => used = now,
            }
        }
    }
}

impl Drop for DiskNumber {
    fn drop(&mut self) {
        DISK_NUMBERS.fetch_and(!(1 << self.0), Ordering::AcqRel);
    }
}

/// A namespace's disk and the number in its name.
///
/// Field order is drop order: the disk is deleted before its number is
/// given back.
struct NamespaceDisk {
    disk: Disk<BlockOps>,
    number: DiskNumber,
    nsid: u32,
}

/// What changes under the management lock.
struct ManagementState {
    /// Set when the accelerator is being unbound: nothing may touch it.
    gone: bool,
    /// DMA buffer for vendor payloads (freed when the function unbinds,
    /// unless a command that used it never completed: then it is freed
    /// only once the device was confirmed stopped, see `device_memory.rs`).
    payload: Option<DeviceMemory<[u8]>>,
    /// Disks of the namespaces, in the order they were added.
    disks: KVec<NamespaceDisk>,
}

/// The management side of one bound accelerator.
#[pin_data]
pub(crate) struct Management {
    ctrl: Arc<Controller>,
    tagset: Arc<TagSet<BlockOps>>,
    /// Queue limits of the controller; the block size is per namespace.
    limits: Limits,
    /// Highest namespace ID the controller reported (0: no limit given).
    max_nsid: u32,
    /// Device payloads refused so far (see [`Management::refuse_payload`]).
    refused_payloads: AtomicU64,
    #[pin]
    state: Mutex<ManagementState>,
}

kernel::sync::global_lock! {
    // SAFETY: Initialized in the module initializer before the PCI driver
    // and configfs are registered.
    unsafe(uninit) static CURRENT: Mutex<Option<Arc<Management>>> = None;
}

/// Prepares the registry; called once from the module initializer.
pub(crate) fn init_registry() {
    // SAFETY: Called exactly once, before anything uses `CURRENT`.
    unsafe { CURRENT.init() };
}

/// The accelerator configfs manages: the first one bound. (The device model
/// allows several; configfs drives one until fabrics need more.)
pub(crate) fn current() -> Result<Arc<Management>> {
    CURRENT.lock().clone().ok_or_else(|| {
        pr_err!("no accelerator is bound to dpublk\n");
        ENODEV
    })
}

/// A payload of a vendor command: data to the device, or room for its answer.
pub(crate) enum Payload<'a> {
    None,
    ToDevice(&'a [u8]),
    FromDevice(&'a mut [u8]),
}

impl Management {
    pub(crate) fn new(
        ctrl: Arc<Controller>,
        dev: &device::Device<device::Bound>,
        tagset: Arc<TagSet<BlockOps>>,
        limits: Limits,
        max_nsid: u32,
    ) -> Result<Arc<Self>> {
        let payload = DeviceMemory::buffer(
            Coherent::zeroed_slice(dev, PAYLOAD_BYTES, GFP_KERNEL)?,
            ctrl.access().clone(),
        );
        Arc::pin_init(
            try_pin_init!(Self {
                ctrl,
                tagset,
                limits,
                max_nsid,
                refused_payloads: AtomicU64::new(0),
                state <- new_mutex!(ManagementState {
                    gone: false,
                    payload: Some(payload),
                    disks: KVec::new(),
                }),
            }),
            GFP_KERNEL,
        )
    }

    /// Makes this accelerator the one configfs manages (if none is).
    pub(crate) fn publish(self: &Arc<Self>) {
        let mut current = CURRENT.lock();
        if current.is_none() {
            *current = Some(self.clone());
        }
    }

    /// Unbinding: waits for management requests in progress, then stops
    /// new ones, takes the disks down and frees the payload buffer. Returns
    /// whether the disks were marked dead first (a failed controller).
    pub(crate) fn retire(self: &Arc<Self>, fail_io: impl FnOnce()) {
        {
            let mut current = CURRENT.lock();
            if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, self)) {
                *current = None;
            }
        }
        let mut state = self.state.lock();
        state.gone = true;
        if !self.ctrl.check_alive() || !self.ctrl.is_usable() {
            fail_io();
            for ns in state.disks.iter() {
                ns.disk.mark_dead();
            }
        }
        // `del_gendisk` waits for the disks' I/O to finish (or to time out,
        // which fails the controller).
        state.disks.clear();
        state.payload = None;
    }

    /// The controller failed for good: makes every disk fail new I/O at
    /// once. The disks stay until unbind removes them.
    pub(crate) fn mark_disks_dead(&self) {
        let state = self.state.lock();
        for ns in state.disks.iter() {
            ns.disk.mark_dead();
        }
    }

    /// Sends vendor command `sqe` with `payload`. The payload buffer is
    /// wiped afterwards (it may have carried a key).
    pub(crate) fn vendor_command(&self, sqe: SubmissionEntry, payload: Payload<'_>) -> Result<u32> {
        self.vendor_command_within(sqe, payload, ADMIN_TIMEOUT)
    }

    /// [`Management::vendor_command`] for a command the accelerator may
    /// take up to `timeout` to answer (Remote SSD Add connects to another
    /// machine first: [`REMOTE_SSD_ADD_TIMEOUT`]).
    pub(crate) fn vendor_command_within(
        &self,
        sqe: SubmissionEntry,
        payload: Payload<'_>,
        timeout: Delta,
    ) -> Result<u32> {
        let state = self.state.lock();
        if state.gone {
            return Err(ENODEV);
        }
        let expected = VendorCommand::from_opcode(sqe.opcode())
            .map(|c| c.payload_bytes())
            .unwrap_or(0);
        let len = match &payload {
            Payload::None => 0,
            Payload::ToDevice(data) => data.len(),
            Payload::FromDevice(room) => room.len(),
        };
        if len != expected {
            return Err(EINVAL);
        }
        if len == 0 {
            // No buffer to guard: wait without the state lock (module
            // documentation).
            drop(state);
            return self.ctrl.admin_command_within(sqe, timeout, None);
        }
        Self::transfer_within(&self.ctrl, &state, sqe, payload, timeout)
    }

    /// Sends `sqe` with `payload` in the payload buffer, under the state
    /// lock (`state`), and wipes the buffer afterwards.
    fn transfer(
        ctrl: &Controller,
        state: &ManagementState,
        sqe: SubmissionEntry,
        payload: Payload<'_>,
    ) -> Result<u32> {
        Self::transfer_within(ctrl, state, sqe, payload, ADMIN_TIMEOUT)
    }

    /// [`Management::transfer`] for a command that may take up to
    /// `timeout`.
    fn transfer_within(
        ctrl: &Controller,
        state: &ManagementState,
        mut sqe: SubmissionEntry,
        payload: Payload<'_>,
        timeout: Delta,
    ) -> Result<u32> {
        let len = match &payload {
            Payload::None => 0,
            Payload::ToDevice(data) => data.len(),
            Payload::FromDevice(room) => room.len(),
        };
        if len > PAYLOAD_BYTES {
            return Err(EINVAL);
        }
        let buffer = state.payload.as_ref().ok_or(ENODEV)?;
        if buffer.is_lent() {
            // An earlier command with this buffer never completed: the
            // device may still write it, so the host does not touch it.
            dev_err!(
                ctrl.pdev(),
                "payload buffer still held by the device after a lost command\n"
            );
            return Err(EIO);
        }
        if let Payload::ToDevice(data) = &payload {
            // SAFETY: The buffer is the host's: it is not lent (checked just
            // above: every command that used it completed), the device only
            // reads or writes it during a command, and commands with it are
            // serialized by the state lock, which this thread holds.
            unsafe { buffer.as_mut()[..data.len()].copy_from_slice(data) };
        }
        // The buffer is one page-aligned page: PRP1 covers any payload.
        sqe.prp1.set(buffer.dma_address());
        sqe.prp2.set(0);
        let result = ctrl.admin_command_within(sqe, timeout, Some(buffer));
        if let (Ok(_), Payload::FromDevice(room)) = (&result, payload) {
            let n = room.len();
            // SAFETY: The command's own completion came back (`Ok`), so the
            // device is done writing the buffer, and the state lock keeps
            // other commands away from it.
            room.copy_from_slice(unsafe { &buffer.as_ref()[..n] });
        }
        // Wipe whatever the payload carried (keys included), through a raw
        // pointer: if the command never completed the device may still
        // access the buffer, so no reference to it is made.
        let base = buffer.as_mut_ptr().cast::<u8>();
        for offset in 0..len {
            // SAFETY: `offset < len <= PAYLOAD_BYTES`, the buffer's size, so
            // the byte is inside the allocation; a volatile store is not
            // elided, and creates no reference the device could race with.
            unsafe { core::ptr::write_volatile(base.add(offset), 0) };
        }
        result
    }

    /// A payload from the device (Identify data, a vendor payload, a log
    /// page) contradicts the interface: the command that carried it fails
    /// with the returned `EIO` and nothing of the payload is used. Logged
    /// at the 1st, 2nd, 4th, 8th ... refusal, so a hostile device cannot
    /// flood the log.
    pub(crate) fn refuse_payload(&self, what: fmt::Arguments<'_>) -> Error {
        let seen = self.refused_payloads.fetch_add(1, Ordering::Relaxed) + 1;
        if seen.is_power_of_two() {
            dev_err!(
                self.ctrl.pdev(),
                "device payload refused ({seen} so far): {what}\n"
            );
        }
        EIO
    }

    /// Reads the Statistics of namespace `nsid` (0: the controller),
    /// checked like every device payload.
    pub(crate) fn statistics(&self, nsid: u32) -> Result<KBox<vendor::Statistics>> {
        let mut stats = KBox::new(vendor::Statistics::zeroed(), GFP_KERNEL)?;
        let mut sqe = SubmissionEntry::new(vendor::opcode::STATISTICS, 0);
        sqe.nsid.set(nsid);
        self.vendor_command(sqe, Payload::FromDevice(stats.as_bytes_mut()))?;
        if let Err(why) = check_statistics(&stats) {
            return Err(self.refuse_payload(format_args!(
                "namespace {nsid}: Statistics: {why}"
            )));
        }
        Ok(stats)
    }

    /// Reads the Maintenance log of volume `nsid`: where the background
    /// scrub and rebuild of its family stand. The page comes from the
    /// device, so every field the driver shows is checked first; a page
    /// that contradicts itself is refused (`EIO`, one log line naming the
    /// field).
    pub(crate) fn maintenance_log(&self, nsid: u32) -> Result<vendor::MaintenanceLog> {
        let state = self.state.lock();
        if state.gone {
            return Err(ENODEV);
        }
        let mut log = vendor::MaintenanceLog::zeroed();
        Self::transfer(
            &self.ctrl,
            &state,
            vendor::maintenance_log_command(nsid, 0),
            Payload::FromDevice(log.as_bytes_mut()),
        )?;
        drop(state);
        for (which, record, rebuild) in [
            ("scrub", &log.scrub, false),
            ("rebuild", &log.rebuild, true),
        ] {
            if let Err(why) = check_maintenance_record(record, rebuild) {
                return Err(self.refuse_payload(format_args!(
                    "namespace {nsid}: Maintenance log: {which} record: {why}"
                )));
            }
        }
        Ok(log)
    }

    /// Reads the namespace's size and block size.
    fn identify_namespace(&self, buffer: &DeviceMemory<[u8]>, nsid: u32) -> Result<(u64, u32)> {
        let cmd = Identify {
            cns: cns::NAMESPACE,
            cntid: 0,
            nsid,
            prp1: buffer.dma_address(),
            prp2: 0,
        };
        self.ctrl.admin_command_with(cmd.encode(0), buffer)?;
        // SAFETY: The command's own completion came back (`admin_command_with`
        // succeeded), so the device is done writing the buffer; the state
        // lock (held by the caller, who lent us the buffer) keeps other
        // commands away from it.
        let bytes = unsafe { buffer.as_ref() };
        if bytes.len() < core::mem::size_of::<IdentifyNamespace>() {
            return Err(EIO);
        }
        // SAFETY: `bytes` holds a whole `IdentifyNamespace`, a `Wire` type
        // (alignment 1, any bit pattern valid); borrowed in place because
        // it is too big for the kernel stack.
        let ns = unsafe { &*bytes.as_ptr().cast::<IdentifyNamespace>() };
        check_identify_namespace(ns).map_err(|why| {
            self.refuse_payload(format_args!("namespace {nsid}: Identify Namespace: {why}"))
        })?;
        Ok((ns.nsze.get(), u32::from(ns.lba_shift())))
    }

    /// Lists the active namespaces.
    fn active_namespaces(&self, buffer: &DeviceMemory<[u8]>) -> Result<KVec<u32>> {
        let cmd = Identify {
            cns: cns::ACTIVE_NAMESPACES,
            cntid: 0,
            nsid: 0,
            prp1: buffer.dma_address(),
            prp2: 0,
        };
        self.ctrl.admin_command_with(cmd.encode(0), buffer)?;
        let mut nsids = KVec::with_capacity(MAX_NAMESPACES, GFP_KERNEL)?;
        // SAFETY: The command's own completion came back, so the device is
        // done writing the buffer; the caller holds the state lock, which
        // keeps other commands away from it.
        let list = unsafe { buffer.as_ref() };
        for chunk in list.chunks_exact(4).take(MAX_NAMESPACES) {
            let nsid = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            if nsid == 0 {
                break;
            }
            // The list holds active NSIDs in increasing order (NVMe, CNS
            // 02h), none of them broadcast: anything else is not a list.
            let last = nsids.last().copied().unwrap_or(0);
            if nsid <= last || nsid == u32::MAX {
                return Err(self.refuse_payload(format_args!(
                    "active namespace list: NSID {nsid:#x} after {last:#x}"
                )));
            }
            nsids.push(nsid, GFP_KERNEL)?;
        }
        Ok(nsids)
    }

    /// Adds a disk for every active namespace that has none (at probe, and
    /// after a clone appeared).
    pub(crate) fn add_active_namespaces(&self) -> Result<usize> {
        let mut state = self.state.lock();
        if state.gone {
            return Err(ENODEV);
        }
        let nsids = {
            let buffer = state.payload.as_ref().ok_or(ENODEV)?;
            self.active_namespaces(buffer)?
        };
        let mut added = 0;
        for nsid in nsids {
            if state.disks.iter().any(|d| d.nsid == nsid) {
                continue;
            }
            match self.add_disk_locked(&mut state, nsid, false) {
                Ok(_) => added += 1,
                Err(e) => dev_warn!(self.ctrl.pdev(), "namespace {nsid}: no disk: {e:?}\n"),
            }
        }
        Ok(added)
    }

    /// The disk number of namespace `nsid`, adding its disk if it has none.
    pub(crate) fn expose(&self, nsid: u32) -> Result<u32> {
        self.expose_as(nsid, false)
    }

    /// [`Management::expose`], read-only when `read_only` (snapshots).
    pub(crate) fn expose_as(&self, nsid: u32, read_only: bool) -> Result<u32> {
        let mut state = self.state.lock();
        if state.gone {
            return Err(ENODEV);
        }
        if let Some(d) = state.disks.iter().find(|d| d.nsid == nsid) {
            return Ok(d.number.0);
        }
        self.add_disk_locked(&mut state, nsid, read_only)
    }

    /// The disk number of namespace `nsid`, if it has a disk.
    pub(crate) fn disk_of(&self, nsid: u32) -> Option<u32> {
        let state = self.state.lock();
        state
            .disks
            .iter()
            .find(|d| d.nsid == nsid)
            .map(|d| d.number.0)
    }

    /// Removes the disk of namespace `nsid` (waits for its I/O). Fails with
    /// `EBUSY` while the disk is open.
    pub(crate) fn hide(&self, nsid: u32) -> Result {
        let mut state = self.state.lock();
        let Some(pos) = state.disks.iter().position(|d| d.nsid == nsid) else {
            return Ok(());
        };
        if state.disks[pos].disk.is_open() {
            return Err(EBUSY);
        }
        let ns = state.disks.remove(pos).map_err(|_| EINVAL)?;
        drop(ns);
        Ok(())
    }

    fn add_disk_locked(
        &self,
        state: &mut ManagementState,
        nsid: u32,
        read_only: bool,
    ) -> Result<u32> {
        let pdev = self.ctrl.pdev();
        if state.disks.len() >= MAX_NAMESPACES {
            return Err(ENOSPC);
        }
        if nsid == 0 || (self.max_nsid != 0 && nsid > self.max_nsid) {
            dev_warn!(
                pdev,
                "namespace {nsid} beyond the reported {}\n",
                self.max_nsid
            );
            return Err(EINVAL);
        }
        let buffer = state.payload.as_ref().ok_or(ENODEV)?;
        let (blocks, shift) = self.identify_namespace(buffer, nsid)?;
        if !(9..=12).contains(&shift) {
            dev_warn!(pdev, "namespace {nsid}: block size 2^{shift} unsupported\n");
            return Err(EINVAL);
        }
        let Some(sectors) = blocks
            .checked_shl(shift - 9)
            .filter(|s| s >> (shift - 9) == blocks)
        else {
            dev_warn!(
                pdev,
                "namespace {nsid}: size {blocks} blocks out of range\n"
            );
            return Err(EINVAL);
        };
        let mut limits = self.limits;
        limits.logical_block_size = 1 << shift;
        limits.physical_block_size = 1 << shift;
        if limits.max_write_zeroes_sectors != 0 {
            limits.max_write_zeroes_sectors = 0x1_0000 << (shift - 9);
        }
        if limits.max_discard_sectors != 0 {
            limits.max_discard_sectors = u32::MAX >> 3 << 3;
        }
        let number = DiskNumber::take().ok_or(ENOSPC)?;
        let index = number.0;
        let parent: &device::Device = pdev.as_ref();
        let disk = Disk::new(
            self.tagset.clone(),
            parent,
            format_args!("dpublk{index}"),
            &limits,
            sectors,
            read_only,
            Arc::new(
                NamespaceFormat {
                    nsid,
                    lba_shift: shift,
                },
                GFP_KERNEL,
            )?,
        )
        .inspect_err(|e| dev_err!(pdev, "cannot add disk for namespace {nsid}: {e:?}\n"))?;
        dev_info!(
            pdev,
            "dpublk{index}: namespace {nsid}, {sectors} sectors of 512 bytes, block size {}\n",
            1u32 << shift
        );
        state
            .disks
            .push(NamespaceDisk { disk, number, nsid }, GFP_KERNEL)?;
        Ok(index)
    }

    /// Runs a vendor command that returns a list payload (SSD, volume or
    /// snapshot list) and hands back its valid entries' bytes, 64 each. The
    /// count is clamped to the 63 entries a list page holds.
    pub(crate) fn read_list(&self, sqe: SubmissionEntry) -> Result<KVec<u8>> {
        self.read_list_page(sqe).map(|(entries, _)| entries)
    }

    /// Every snapshot of volume `nsid`: Snapshot List page after page (63
    /// entries each, CDW10 the index of the first), the entries' bytes, 64
    /// each. The device's totals are checked, not trusted: beyond
    /// `MAX_SNAPSHOTS_PER_VOLUME`, or a page reaching past its own total, is
    /// a refused payload, and the index only moves forward, so the loop
    /// ends. A list that shrinks between pages (a snapshot deleted
    /// meanwhile) ends early with what was read.
    pub(crate) fn read_snapshot_list(&self, nsid: u32) -> Result<KVec<u8>> {
        let mut all = KVec::new();
        let mut first = 0u32;
        loop {
            let (entries, total) =
                self.read_list_page(vendor::snapshot_list_command(nsid, first, 0))?;
            let count = (entries.len() / LIST_ENTRY_BYTES) as u32;
            // A device from before paging leaves the total 0 (reserved
            // then): its one page is the whole list.
            let total = if first == 0 && total == 0 { count } else { total };
            if total > vendor::MAX_SNAPSHOTS_PER_VOLUME {
                return Err(self.refuse_payload(format_args!(
                    "snapshot list: {total} snapshots, a volume has at most {}",
                    vendor::MAX_SNAPSHOTS_PER_VOLUME
                )));
            }
            if first + count > total {
                return Err(self.refuse_payload(format_args!(
                    "snapshot list: entries {first}..{} of {total}",
                    first + count
                )));
            }
            all.extend_from_slice(&entries, GFP_KERNEL)?;
            first += count;
            if count == 0 || first >= total {
                return Ok(all);
            }
        }
    }

    /// One page of a list command: its valid entries' bytes, and the
    /// header's second word (Snapshot List: the total).
    fn read_list_page(&self, sqe: SubmissionEntry) -> Result<(KVec<u8>, u32)> {
        let mut page = KVec::from_elem(0u8, PAYLOAD_BYTES, GFP_KERNEL)?;
        self.vendor_command(sqe, Payload::FromDevice(&mut page))?;
        let count = u32::from_le_bytes([page[0], page[1], page[2], page[3]]) as usize;
        let second = u32::from_le_bytes([page[4], page[5], page[6], page[7]]);
        if count > LIST_ENTRIES {
            return Err(self.refuse_payload(format_args!(
                "list of command {:#x}: {count} entries, a page holds {LIST_ENTRIES}",
                sqe.opcode()
            )));
        }
        let bytes = &page[LIST_HEADER_BYTES..LIST_HEADER_BYTES + count * LIST_ENTRY_BYTES];
        for (i, entry) in bytes.chunks_exact(LIST_ENTRY_BYTES).enumerate() {
            if let Err(why) = check_list_entry(sqe.opcode(), entry) {
                return Err(self.refuse_payload(format_args!(
                    "list of command {:#x}: entry {i}: {why}",
                    sqe.opcode()
                )));
            }
        }
        let mut entries = KVec::with_capacity(count * LIST_ENTRY_BYTES, GFP_KERNEL)?;
        entries.extend_from_slice(
            &page[LIST_HEADER_BYTES..LIST_HEADER_BYTES + count * LIST_ENTRY_BYTES],
            GFP_KERNEL,
        )?;
        Ok((entries, second))
    }
}

/// Checks the fields of Identify Namespace the driver uses: a formatted LBA
/// format that exists, has no metadata (the driver transfers none) and a
/// nonzero size. The block size itself is checked where it is used.
pub(crate) fn check_identify_namespace(
    ns: &IdentifyNamespace,
) -> core::result::Result<(), &'static str> {
    if ns.flbas & 0xf > ns.nlbaf {
        return Err("formatted LBA format beyond the number of formats");
    }
    let format = ns
        .lbaf
        .get(usize::from(ns.flbas & 0xf))
        .ok_or("formatted LBA format beyond the table")?;
    if format.ms.get() != 0 || ns.flbas & 0x10 != 0 {
        return Err("metadata in the LBA format");
    }
    if ns.nsze.get() == 0 {
        return Err("zero size");
    }
    Ok(())
}

/// Whether `field` holds an object name as the interface defines it: 1 to
/// 31 bytes of letters, digits, `.`, `_` and `-`, NUL terminated.
fn is_object_name(field: &[u8]) -> bool {
    let name = crate::shim::wire::c_string_bytes(field);
    !name.is_empty()
        && name.len() < field.len()
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Checks one 64-byte entry of the list payload of vendor command `opcode`
/// (SSD, volume or snapshot list): every field configfs uses holds a value
/// the interface defines. Returns what is wrong.
pub(crate) fn check_list_entry(
    opcode: u8,
    entry: &[u8],
) -> core::result::Result<(), &'static str> {
    use vendor::opcode as op;
    match opcode {
        op::SSD_LIST => {
            let e = vendor::SsdListEntry::read_from(entry).ok_or("short entry")?;
            if e.state != vendor::SSD_STATE_HOST && e.state != vendor::SSD_STATE_ATTACHED {
                return Err("undefined SSD state");
            }
            if e.flags & !(vendor::SSD_FLAG_HOST_ENABLED | vendor::SSD_FLAG_IN_USE) != 0 {
                return Err("undefined SSD flags");
            }
            if !(9..=12).contains(&e.lba_shift) {
                return Err("block size out of range");
            }
            if e.serial.iter().any(|&b| b != 0 && !(0x20..0x7f).contains(&b)) {
                return Err("serial number not printable ASCII");
            }
        }
        op::VOLUME_LIST => {
            let e = vendor::VolumeListEntry::read_from(entry).ok_or("short entry")?;
            let flags = e.flags.get();
            let all = vendor::VOLUME_FLAG_CLONE
                | vendor::VOLUME_FLAG_DEGRADED
                | vendor::VOLUME_FLAG_REBUILDING
                | vendor::VOLUME_FLAG_LOCKED
                | vendor::VOLUME_FLAG_FAILED;
            if flags & !all != 0 {
                return Err("undefined volume flags");
            }
            if flags & vendor::VOLUME_FLAG_LOCKED != 0 && e.nsid.get() != 0 {
                return Err("a locked volume with a namespace");
            }
            if e.layout > vendor::layout::LOG_RAID {
                return Err("undefined layout");
            }
            if e.lba_shift != 9 && e.lba_shift != 12 {
                return Err("block size out of range");
            }
            if e.services.get() & !vendor::service::ALL != 0 {
                return Err("undefined services");
            }
            if !is_object_name(&e.name) {
                return Err("name not an object name");
            }
        }
        op::SNAPSHOT_LIST => {
            let e = vendor::SnapshotListEntry::read_from(entry).ok_or("short entry")?;
            if !is_object_name(&e.name) {
                return Err("name not an object name");
            }
        }
        _ => {}
    }
    Ok(())
}

/// Checks the fields of volume Statistics configfs shows as words.
pub(crate) fn check_statistics(
    s: &vendor::Statistics,
) -> core::result::Result<(), &'static str> {
    if s.array_state > vendor::ARRAY_STATE_FAILED {
        return Err("undefined array state");
    }
    if s.rebuild_percent > 100 {
        return Err("rebuild progress beyond 100 percent");
    }
    Ok(())
}

/// Checks a Maintenance log record from the device: every value the
/// driver shows must be one the interface defines, and the counts must not
/// contradict each other. Returns what is wrong.
pub(crate) fn check_maintenance_record(
    r: &vendor::MaintenanceRecord,
    rebuild: bool,
) -> core::result::Result<(), &'static str> {
    use vendor::{maintenance, maintenance_state as st};
    if r.state > st::LAST {
        return Err("undefined state");
    }
    if r.percent > 100 {
        return Err("progress beyond 100 percent");
    }
    if r.rows_done.get() > r.rows_total.get() {
        return Err("more rows done than the array has");
    }
    if r.id.get() == 0 {
        // No operation yet: nothing may be reported about it.
        if r.state != st::NONE || r.action != 0 {
            return Err("a state or action without an operation ID");
        }
        return Ok(());
    }
    let action = u32::from(r.action);
    let known = if rebuild {
        action == maintenance::REPLACE_MEMBER
    } else {
        action == maintenance::SCRUB_CHECK || action == maintenance::SCRUB_REPAIR
    };
    if !known {
        return Err("undefined action");
    }
    if !rebuild && r.state == st::NONE {
        return Err("a scrub with an ID and no state");
    }
    if r.state == st::DONE && r.rows_done.get() != r.rows_total.get() {
        return Err("done with rows left");
    }
    if r.repaired.get() > r.mismatches.get() {
        return Err("more sectors repaired than found");
    }
    if action == maintenance::SCRUB_CHECK && r.repaired.get() != 0 {
        return Err("a check that repaired sectors");
    }
    Ok(())
}

/// Layout shared by the SSD, volume and snapshot list payloads.
pub(crate) const LIST_HEADER_BYTES: usize = 64;
pub(crate) const LIST_ENTRY_BYTES: usize = 64;
const LIST_ENTRIES: usize = 63;

const _: () = assert!(core::mem::size_of::<vendor::SsdListEntry>() == LIST_ENTRY_BYTES);
const _: () = assert!(core::mem::size_of::<vendor::VolumeListEntry>() == LIST_ENTRY_BYTES);
const _: () = assert!(core::mem::size_of::<vendor::SnapshotListEntry>() == LIST_ENTRY_BYTES);
const _: () = assert!(LIST_HEADER_BYTES + LIST_ENTRIES * LIST_ENTRY_BYTES == PAYLOAD_BYTES);

#[kunit_tests(dpublk_device_payloads)]
mod tests {
    use super::*;
    use crate::shim::vendor::{maintenance, maintenance_state as st, MaintenanceRecord};

    fn scrub(action: u32, state: u8, done: u64, total: u64) -> MaintenanceRecord {
        let mut r = MaintenanceRecord::zeroed();
        r.id.set(3);
        r.action = action as u8;
        r.state = state;
        r.rows_done.set(done);
        r.rows_total.set(total);
        r.percent = if total == 0 {
            0
        } else {
            (done * 100 / total) as u8
        };
        r
    }

    #[test]
    fn sound_records_pass() {
        assert_eq!(check_maintenance_record(&MaintenanceRecord::zeroed(), false), Ok(()));
        let mut r = scrub(maintenance::SCRUB_REPAIR, st::DONE, 8, 8);
        r.mismatches.set(5);
        r.repaired.set(5);
        assert_eq!(check_maintenance_record(&r, false), Ok(()));
        let r = scrub(maintenance::SCRUB_CHECK, st::RUNNING, 2, 8);
        assert_eq!(check_maintenance_record(&r, false), Ok(()));
        let r = scrub(maintenance::REPLACE_MEMBER, st::NONE, 0, 8);
        assert_eq!(check_maintenance_record(&r, true), Ok(()));
    }

    #[test]
    fn contradictions_are_refused() {
        let mut r = scrub(maintenance::SCRUB_CHECK, st::LAST + 1, 0, 8);
        assert!(check_maintenance_record(&r, false).is_err());
        r = scrub(maintenance::SCRUB_CHECK, st::RUNNING, 9, 8);
        assert!(check_maintenance_record(&r, false).is_err());
        r = scrub(maintenance::SCRUB_CHECK, st::RUNNING, 1, 8);
        r.percent = 101;
        assert!(check_maintenance_record(&r, false).is_err());
        r = scrub(maintenance::SCRUB_CHECK, st::DONE, 7, 8);
        assert!(check_maintenance_record(&r, false).is_err());
        r = scrub(maintenance::SCRUB_CHECK, st::DONE, 8, 8);
        r.mismatches.set(1);
        r.repaired.set(1);
        assert!(check_maintenance_record(&r, false).is_err());
        r = scrub(maintenance::SCRUB_REPAIR, st::DONE, 8, 8);
        r.repaired.set(2);
        assert!(check_maintenance_record(&r, false).is_err());
        // Actions of the other record, or none, with an ID.
        r = scrub(maintenance::REPLACE_MEMBER, st::DONE, 8, 8);
        assert!(check_maintenance_record(&r, false).is_err());
        r = scrub(maintenance::SCRUB_CHECK, st::DONE, 8, 8);
        assert!(check_maintenance_record(&r, true).is_err());
        r = scrub(0, st::DONE, 8, 8);
        assert!(check_maintenance_record(&r, false).is_err());
        // A state without an operation.
        r = scrub(maintenance::SCRUB_CHECK, st::RUNNING, 0, 8);
        r.id.set(0);
        assert!(check_maintenance_record(&r, false).is_err());
    }

    #[test]
    fn identify_namespace_checked() {
        let mut ns = IdentifyNamespace::zeroed();
        ns.nsze.set(8);
        ns.lbaf[0].lbads = 12;
        assert_eq!(check_identify_namespace(&ns), Ok(()));
        ns.flbas = 1;
        assert!(check_identify_namespace(&ns).is_err());
        ns.flbas = 0x10;
        assert!(check_identify_namespace(&ns).is_err());
        ns.flbas = 0;
        ns.lbaf[0].ms.set(8);
        assert!(check_identify_namespace(&ns).is_err());
        ns.lbaf[0].ms.set(0);
        ns.nsze.set(0);
        assert!(check_identify_namespace(&ns).is_err());
    }

    #[test]
    fn list_entries_checked() {
        use crate::shim::wire::c_string_field;
        let mut v = vendor::VolumeListEntry::zeroed();
        v.nsid.set(2);
        v.lba_shift = 12;
        v.layout = vendor::layout::RAID6;
        c_string_field(&mut v.name, b"vol-1.a_b");
        let op = vendor::opcode::VOLUME_LIST;
        assert_eq!(check_list_entry(op, v.as_bytes()), Ok(()));
        let mut bad = v;
        bad.name = [b'a'; 32];
        assert!(check_list_entry(op, bad.as_bytes()).is_err());
        bad = v;
        c_string_field(&mut bad.name, b"a/b");
        assert!(check_list_entry(op, bad.as_bytes()).is_err());
        bad = v;
        bad.name = [0; 32];
        assert!(check_list_entry(op, bad.as_bytes()).is_err());
        bad = v;
        bad.layout = 6;
        assert!(check_list_entry(op, bad.as_bytes()).is_err());
        bad = v;
        bad.flags.set(vendor::VOLUME_FLAG_LOCKED);
        assert!(check_list_entry(op, bad.as_bytes()).is_err());
        bad.nsid.set(0);
        assert_eq!(check_list_entry(op, bad.as_bytes()), Ok(()));
        bad = v;
        bad.services.set(1 << 6);
        assert!(check_list_entry(op, bad.as_bytes()).is_err());
        let mut ssd = vendor::SsdListEntry::zeroed();
        ssd.lba_shift = 9;
        let op = vendor::opcode::SSD_LIST;
        assert_eq!(check_list_entry(op, ssd.as_bytes()), Ok(()));
        ssd.state = 2;
        assert!(check_list_entry(op, ssd.as_bytes()).is_err());
        ssd.state = 0;
        ssd.serial[0] = 0x80;
        assert!(check_list_entry(op, ssd.as_bytes()).is_err());
        let snap = vendor::SnapshotListEntry::zeroed();
        assert!(check_list_entry(vendor::opcode::SNAPSHOT_LIST, snap.as_bytes()).is_err());
    }

    #[test]
    fn statistics_checked() {
        let mut st = vendor::Statistics::zeroed();
        assert_eq!(check_statistics(&st), Ok(()));
        st.array_state = 4;
        assert!(check_statistics(&st).is_err());
        st.array_state = 0;
        st.rebuild_percent = 101;
        assert!(check_statistics(&st).is_err());
    }
}
