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
//! A command without a payload (a Maintenance scrub, which may take
//! minutes) only checks under the lock that the accelerator is not gone,
//! and waits for its completion without it: unbinding does not wait behind
//! it. It reaches the device only through the controller, whose registers
//! are revoked at unbind and which fails a waiting command at once when it
//! is reset or shut down.

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
    },
};
use core::sync::atomic::{AtomicU64, Ordering};
use kernel::{
    device,
    dma::Coherent,
    time::Delta,
    new_mutex,
    prelude::*,
    sync::{Arc, Mutex},
};

/// Size of the management payload buffer: the largest vendor payload.
const PAYLOAD_BYTES: usize = 4096;
/// How long a Maintenance command (scrub) may take. Other admin commands
/// (Abort, a reset's queue creation, other management requests) go on
/// meanwhile: the admin queue holds several outstanding commands.
const MAINTENANCE_TIMEOUT: Delta = Delta::from_secs(600);
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
    pub(crate) fn vendor_command(
        &self,
        mut sqe: SubmissionEntry,
        payload: Payload<'_>,
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
        if len != expected || len > PAYLOAD_BYTES {
            return Err(EINVAL);
        }
        // A scrub reads every stripe of the volume before it completes.
        let timeout = if sqe.opcode() == vendor::opcode::MAINTENANCE {
            MAINTENANCE_TIMEOUT
        } else {
            ADMIN_TIMEOUT
        };
        if len == 0 {
            // No buffer to guard: wait without the state lock (module
            // documentation).
            drop(state);
            return self.ctrl.admin_command_within(sqe, timeout, None);
        }
        let buffer = state.payload.as_ref().ok_or(ENODEV)?;
        if buffer.is_lent() {
            // An earlier command with this buffer never completed: the
            // device may still write it, so the host does not touch it.
            dev_err!(
                self.ctrl.pdev(),
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
        let result = self.ctrl.admin_command_within(sqe, timeout, Some(buffer));
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
        let mut page = KVec::from_elem(0u8, PAYLOAD_BYTES, GFP_KERNEL)?;
        self.vendor_command(sqe, Payload::FromDevice(&mut page))?;
        let count = u32::from_le_bytes([page[0], page[1], page[2], page[3]]) as usize;
        let count = count.min(LIST_ENTRIES);
        let mut entries = KVec::with_capacity(count * LIST_ENTRY_BYTES, GFP_KERNEL)?;
        entries.extend_from_slice(
            &page[LIST_HEADER_BYTES..LIST_HEADER_BYTES + count * LIST_ENTRY_BYTES],
            GFP_KERNEL,
        )?;
        Ok(entries)
    }
}

/// Layout shared by the SSD, volume and snapshot list payloads.
pub(crate) const LIST_HEADER_BYTES: usize = 64;
pub(crate) const LIST_ENTRY_BYTES: usize = 64;
const LIST_ENTRIES: usize = 63;

const _: () = assert!(core::mem::size_of::<vendor::SsdListEntry>() == LIST_ENTRY_BYTES);
const _: () = assert!(core::mem::size_of::<vendor::VolumeListEntry>() == LIST_ENTRY_BYTES);
const _: () = assert!(core::mem::size_of::<vendor::SnapshotListEntry>() == LIST_ENTRY_BYTES);
const _: () = assert!(LIST_HEADER_BYTES + LIST_ENTRIES * LIST_ENTRY_BYTES == PAYLOAD_BYTES);
