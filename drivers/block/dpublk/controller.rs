// SPDX-License-Identifier: GPL-2.0

//! The controller: reset and enable, the admin queue, and the state every
//! queue checks before it trusts the device.
//!
//! # States
//!
//! - live: I/O and admin commands flow ([`Controller::is_usable`]);
//! - broken: the device broke the protocol or an admin command timed out;
//!   nothing it says is trusted until a reset succeeds;
//! - resetting: a reset is scheduled or running (see `reset.rs`); new I/O
//!   waits (blk-mq retries it) and completions are left alone, since the
//!   reset requeues whatever is outstanding;
//! - dead: failed for good or shut down; new I/O fails at once and no
//!   reset is tried any more.
//!
//! # Stopping the device
//!
//! Failure, reset and teardown stop the device in the order the NVMe PCI
//! driver uses: CC.EN = 0 and wait (at most CAP.TO) for CSTS.RDY = 0, then
//! clear bus mastering, then reap the completions the device posted, and
//! only then cancel or requeue what is left. Only CSTS.RDY = 0 confirms the
//! device stopped ([`DeviceAccess`]); until then its rings, PRP lists and
//! command buffers stay allocated, and if it never confirms, they are
//! leaked on purpose (`device_memory.rs`).

use crate::{
    device_memory::{DeviceAccess, DeviceMemory},
    pci_bus_master,
    queue::{CompletionRing, ShadowDoorbells, SubmissionRing},
    reset::ControllerReset,
    regs::{Bar0, Registers, BAR0_SIZE},
    shim::{
        cqe::CompletionEntry,
        opcode::feature,
        registers::{Aqa, Cap, Cc, Csts, DoorbellKind},
        sqe::{self, DoorbellBufferConfig, Features, SubmissionEntry},
        status::{sct, Status},
    },
};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use kernel::{
    device,
    devres::DevresLt,
    fmt,
    io::poll::read_poll_timeout,
    new_mutex, new_spinlock_irq, pci,
    prelude::*,
    sync::aref::ARef,
    sync::{Arc, Mutex, SpinLockIrq},
    time::{delay::fsleep, Delta, Instant, Monotonic},
};

/// Entries of each admin queue.
const ADMIN_ENTRIES: u16 = 32;
/// How long an admin command may take. Generous: the emulated device runs
/// under TCG in tests.
pub(crate) const ADMIN_TIMEOUT: Delta = Delta::from_secs(10);

/// Ways a device can break the protocol. Each is logged once per
/// controller; after any of them the controller is not trusted any more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum ProtocolError {
    /// A completion names a command that is not outstanding.
    UnknownCommand = 1 << 0,
    /// A completion reports a submission queue head out of range.
    BadSqHead = 1 << 1,
    /// A completion names the wrong submission queue.
    BadSqId = 1 << 2,
    /// A completion carries a status code type the interface does not use.
    BadStatus = 1 << 3,
    /// The controller reported a fatal status or vanished from the bus.
    Fatal = 1 << 4,
}

/// Maps a completion status to the error the I/O failed with, or `Ok`.
/// Statuses the interface does not define come back as `Err(None)`.
pub(crate) fn status_to_result(status: Status) -> Result<(), Option<Error>> {
    if status.is_success() {
        return Ok(());
    }
    let sc = status.sc();
    let err = match status.sct() {
        sct::GENERIC => match sc {
            // Invalid opcode or field: the device cannot do this.
            0x01 | 0x02 => EOPNOTSUPP,
            // LBA out of range, invalid namespace: the target refuses the
            // request (BLK_STS_TARGET).
            0x80 | 0x0b => EREMOTEIO,
            // Capacity exceeded: a thin pool is full (BLK_STS_NOSPC).
            0x81 => ENOSPC,
            // Namespace not ready: transient.
            0x82 => EAGAIN,
            _ => EIO,
        },
        sct::COMMAND_SPECIFIC => EIO,
        // Media errors: unrecovered read, write fault (BLK_STS_MEDIUM).
        sct::MEDIA => ENODATA,
        // Path related: the transport to the media failed.
        sct::PATH => ENOLINK,
        sct::VENDOR => vendor_errno(sc),
        _ => return Err(None),
    };
    Err(Some(err))
}

/// The error a vendor status stands for (Documentation/device-interface.rst,
/// "Vendor statuses").
fn vendor_errno(sc: u8) -> Error {
    use crate::shim::vendor::status as vs;
    match sc {
        vs::SSD_NOT_FOUND => ENODEV,
        vs::SSD_BUSY | vs::SSD_IN_USE | vs::VOLUME_BUSY => EBUSY,
        vs::SSD_ALREADY_ATTACHED | vs::VOLUME_EXISTS => EEXIST,
        vs::SSD_NOT_ATTACHED | vs::VOLUME_NOT_FOUND | vs::SNAPSHOT_NOT_FOUND => ENOENT,
        vs::NO_SPACE | vs::SNAPSHOT_LIMIT => ENOSPC,
        vs::INVALID_LAYOUT | vs::INVALID_PAYLOAD => EINVAL,
        vs::NOT_IMPLEMENTED => EOPNOTSUPP,
        vs::KEY_MISMATCH => EKEYREJECTED,
        vs::KEY_REQUIRED => ENOKEY,
        vs::NVMF_EXISTS => EEXIST,
        vs::NVMF_NOT_FOUND => ENOENT,
        vs::NVMF_ADDRESS_IN_USE => EADDRINUSE,
        vs::NVMF_BUSY => EBUSY,
        // Remote SSD Add: nothing answers at the address (or the subsystem
        // or namespace is not there), or the namespace's size or block
        // size is not one the accelerator can use. configfs logs which,
        // naming the handle (configfs/ssd.rs).
        vs::REMOTE_UNREACHABLE => EHOSTUNREACH,
        vs::REMOTE_GEOMETRY => EINVAL,
        _ => EIO,
    }
}

/// Controller capabilities the driver works with.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Capabilities {
    /// Largest queue the controller accepts, in entries.
    pub(crate) max_queue_entries: u32,
    /// Doorbell stride exponent.
    pub(crate) dstrd: u8,
    /// How long enabling or disabling may take.
    pub(crate) ready_timeout: Delta,
}

/// The admin queue pair. Commands are polled: the admin queue carries only
/// setup and management traffic, so it needs no interrupt.
///
/// Several commands may be outstanding: the admin lock is held only to
/// submit and to collect completions, never while waiting, so a long
/// Maintenance command does not hold up an Abort, a reset's restart or
/// unbind. Whoever polls files every completion under its command ID in
/// `waiting`; each waiter picks up its own.
struct AdminQueue {
    sq: SubmissionRing,
    cq: CompletionRing,
    next_cid: u16,
    /// Bumped when a reset empties the rings: commands of an older
    /// generation died with the device's queue.
    generation: u64,
    /// Commands submitted and not yet picked up, with their completion
    /// once it came.
    waiting: KVec<AdminWait>,
}

/// An outstanding admin command.
struct AdminWait {
    cid: u16,
    cqe: Option<CompletionEntry>,
}

impl AdminQueue {
    fn new(sq: SubmissionRing, cq: CompletionRing) -> Self {
        Self {
            sq,
            cq,
            next_cid: 0,
            generation: 0,
            waiting: KVec::new(),
        }
    }
}

/// A controller.
#[pin_data]
pub(crate) struct Controller {
    pdev: ARef<pci::Device>,
    bar: DevresLt<Bar0>,
    caps: Capabilities,
    /// Whether the device was confirmed stopped; shared with every ring and
    /// buffer it may write.
    access: Arc<DeviceAccess>,
    /// Shadow doorbell and EventIdx pages of the I/O queues (`None`: they
    /// could not be allocated, every doorbell is an MMIO write).
    shadow: Option<ShadowDoorbells>,
    /// Where a protocol error asks for a reset: set while resets are armed
    /// (`reset.rs` breaks this reference cycle when it disarms).
    #[pin]
    recovery: SpinLockIrq<Option<Arc<ControllerReset>>>,
    #[pin]
    admin: Mutex<Option<AdminQueue>>,
    /// Set once the device broke the protocol or failed; nothing it says is
    /// trusted until a reset succeeds.
    broken: AtomicBool,
    /// Set while CC.EN is (being) cleared: teardown, failure, or the first
    /// half of a reset. The admin queue is unusable.
    disabled: AtomicBool,
    /// Set while a reset is scheduled or running: I/O waits for it.
    resetting: AtomicBool,
    /// Set once the controller failed for good or was shut down.
    dead: AtomicBool,
    /// Protocol errors seen, per kind (index: bit number of the
    /// `ProtocolError`); each kind is logged at its 1st, 2nd, 4th, 8th ...
    /// occurrence, so a hostile device cannot flood the log.
    errors: [AtomicU64; PROTOCOL_ERROR_KINDS],
    /// Set when a request completed successfully; taken by the reset
    /// machinery, which refills its budget when the device made progress
    /// since the last reset.
    progress: AtomicBool,
}

/// Number of [`ProtocolError`] kinds.
const PROTOCOL_ERROR_KINDS: usize = 5;

impl Controller {
    /// Maps nothing new: takes the mapped BAR, reads CAP and prepares the
    /// controller object. The controller is not touched yet.
    pub(crate) fn new(
        pdev: &pci::Device<device::Core<'_>>,
        bar: DevresLt<Bar0>,
    ) -> Result<impl PinInit<Self, Error>> {
        let cap = {
            let guard = bar.try_access().ok_or(ENXIO)?;
            Registers(&guard).cap()?
        };
        if cap.0 == u64::MAX {
            dev_err!(
                pdev,
                "controller registers read all ones: device not responding\n"
            );
            return Err(ENODEV);
        }
        if cap.0 & Cap::CSS_NVM == 0 || cap.mpsmin() != 0 {
            dev_err!(pdev, "unsupported controller capabilities {:#x}\n", cap.0);
            return Err(ENODEV);
        }
        // Doorbells farther apart than 4 bytes would lie beyond the part of
        // BAR0 the driver maps; the interface has none.
        if cap.dstrd() != 0 {
            dev_err!(
                pdev,
                "doorbell stride CAP.DSTRD {} unsupported: only 4-byte doorbells (CAP {:#x})\n",
                cap.dstrd(),
                cap.0
            );
            return Err(ENODEV);
        }
        let caps = Capabilities {
            max_queue_entries: cap.max_queue_entries(),
            dstrd: cap.dstrd(),
            // CAP.TO is in 500 ms units; zero would mean "no time at all",
            // which no controller can meet.
            ready_timeout: Delta::from_millis(500 * i64::from(cap.timeout().max(1))),
        };
        let dev: &device::Device<device::Core<'_>> = pdev.as_ref();
        let access = DeviceAccess::new(dev)?;
        let shadow = ShadowDoorbells::new(dev, &access)
            .inspect_err(|e| {
                dev_warn!(
                    pdev,
                    "no memory for shadow doorbells ({e:?}): every doorbell is an MMIO write\n"
                )
            })
            .ok();
        let pdev: ARef<pci::Device> = (&**pdev).into();
        Ok(try_pin_init!(Self {
            pdev,
            bar,
            caps,
            access,
            shadow,
            recovery <- new_spinlock_irq!(None),
            admin <- new_mutex!(None),
            broken: AtomicBool::new(false),
            disabled: AtomicBool::new(false),
            resetting: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            errors: [const { AtomicU64::new(0) }; PROTOCOL_ERROR_KINDS],
            progress: AtomicBool::new(false),
        }))
    }

    /// The PCI device, for logging and DMA.
    pub(crate) fn pdev(&self) -> &pci::Device {
        &self.pdev
    }

    /// The controller's capabilities.
    pub(crate) fn caps(&self) -> &Capabilities {
        &self.caps
    }

    /// Whether the device may access host memory; for the rings and
    /// buffers it may write.
    pub(crate) fn access(&self) -> &Arc<DeviceAccess> {
        &self.access
    }

    /// Writes the doorbell of I/O queue `qid`'s `kind`, moving from `old`
    /// to `new`: through the shadow page when the device accepted it, and
    /// as an MMIO write unless its EventIdx says the device is busy anyway.
    pub(crate) fn ring_io_doorbell(&self, qid: u16, kind: DoorbellKind, old: u16, new: u16) -> Result {
        if let Some(shadow) = self.shadow.as_ref().filter(|s| s.is_active()) {
            if !shadow.update(qid, kind, old, new) {
                return Ok(());
            }
        }
        self.with_regs(|r| r.ring(qid, kind, self.caps.dstrd, new))
    }

    /// From now on, protocol errors schedule a reset with `reset` (`None`:
    /// no more).
    pub(crate) fn set_recovery(&self, reset: Option<Arc<ControllerReset>>) {
        let old = core::mem::replace(&mut *self.recovery.lock(), reset);
        drop(old);
    }

    /// Runs `f` on the registers, unless the device is unbound.
    ///
    /// `f` runs in an RCU read-side critical section and must not sleep.
    pub(crate) fn with_regs<R>(
        &self,
        f: impl FnOnce(&Registers<'_, '_>) -> Result<R>,
    ) -> Result<R> {
        let guard = self.bar.try_access().ok_or(ENXIO)?;
        f(&Registers(&guard))
    }

    /// Whether I/O may be sent to the device and its completions trusted.
    pub(crate) fn is_usable(&self) -> bool {
        self.admin_usable() && !self.resetting.load(Ordering::Acquire)
    }

    /// Whether admin commands may be sent.
    fn admin_usable(&self) -> bool {
        !self.broken.load(Ordering::Acquire) && !self.disabled.load(Ordering::Acquire)
    }

    /// Whether the device broke the protocol since the last reset.
    pub(crate) fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    /// Whether the controller failed for good or was shut down.
    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// A request completed successfully: the device makes progress.
    pub(crate) fn note_progress(&self) {
        if !self.progress.load(Ordering::Relaxed) {
            self.progress.store(true, Ordering::Relaxed);
        }
    }

    /// Whether a request completed successfully since the last call.
    pub(crate) fn take_progress(&self) -> bool {
        self.progress.swap(false, Ordering::Relaxed)
    }

    /// Records a protocol violation: logs it at its 1st, 2nd, 4th, 8th ...
    /// occurrence per kind, stops trusting the device and schedules a
    /// reset at once. I/O submitted meanwhile waits for the reset (blk-mq
    /// requeues it); if the reset budget is spent, the reset work fails
    /// the controller instead. May be called in interrupt context.
    pub(crate) fn protocol_error(&self, kind: ProtocolError, detail: fmt::Arguments<'_>) {
        let index = (kind as u32).trailing_zeros() as usize;
        let seen = self
            .errors
            .get(index)
            .map_or(1, |n| n.fetch_add(1, Ordering::Relaxed) + 1);
        if seen.is_power_of_two() {
            dev_err!(
                self.pdev,
                "device error ({kind:?}, {seen} so far): {detail}; not trusting it any more, resetting it\n"
            );
        }
        self.broken.store(true, Ordering::Release);
        let reset = self.recovery.lock().clone();
        if let Some(reset) = reset {
            reset.schedule();
        }
    }

    /// Checks that the controller still answers and has not failed: a
    /// removed device reads all ones, a failed one sets CSTS.CFS. If not,
    /// records it as a fatal error.
    pub(crate) fn check_alive(&self) -> bool {
        let csts = self.with_regs(|regs| regs.csts());
        match csts {
            Ok(csts) if csts.0 != u32::MAX && !csts.cfs() => true,
            Ok(csts) => {
                self.protocol_error(ProtocolError::Fatal, format_args!("CSTS {:#x}", csts.0));
                false
            }
            Err(e) => {
                self.protocol_error(
                    ProtocolError::Fatal,
                    format_args!("registers unreachable: {e:?}"),
                );
                false
            }
        }
    }

    /// Disables the controller (CC.EN = 0) and waits until it is not ready
    /// (or reads all ones: gone). CSTS.RDY = 0 confirms the device stopped:
    /// it dropped every queue and accesses no host memory any more. All
    /// ones confirms nothing (a device that vanished from the bus may come
    /// back), so its memory stays where it is.
    fn disable(&self) -> Result<Csts> {
        self.with_regs(|regs| {
            let cc = regs.cc()?;
            if cc.en() {
                regs.set_cc(Cc(cc.0 & !Cc::EN))?;
            }
            Ok(())
        })?;
        let csts = self.poll_csts(|csts| !csts.rdy() || csts.0 == u32::MAX)?;
        if csts.0 != u32::MAX && !csts.rdy() {
            self.access.confirm_stopped();
        }
        Ok(csts)
    }

    /// Clears bus mastering: the device may not start another memory
    /// access, whether or not it confirmed it stopped.
    pub(crate) fn clear_bus_master(&self) {
        pci_bus_master::clear_master(&self.pdev);
    }

    /// Lets the device access memory again and enables it (CC.EN = 1 with
    /// the admin queue registers set).
    fn start(&self, aqa: Aqa, asq: u64, acq: u64) -> Result {
        pci_bus_master::set_master(&self.pdev);
        self.access.allow();
        self.with_regs(|regs| {
            regs.set_admin_queues(aqa, asq, acq)?;
            regs.set_cc(Cc::enable_default())
        })
    }

    /// Says in dmesg that the device did not confirm it stopped, so its
    /// memory stays allocated (and is leaked if it never does).
    fn report_unconfirmed(&self, why: fmt::Arguments<'_>) {
        dev_err!(
            self.pdev,
            "controller not confirmed stopped ({why}): bus mastering cleared; its rings, PRP lists and command buffers stay allocated until it stops, and are never freed if it does not\n"
        );
    }

    /// Polls CSTS until `done` holds, for at most CAP.TO.
    ///
    /// The BAR is accessed once per poll: access is an RCU read-side section,
    /// which must not span the sleeps in between.
    fn poll_csts(&self, done: impl Fn(&Csts) -> bool) -> Result<Csts> {
        read_poll_timeout(
            || self.with_regs(|regs| regs.csts()),
            done,
            Delta::from_millis(1),
            self.caps.ready_timeout,
        )
    }

    /// Resets and enables the controller with a fresh admin queue pair.
    pub(crate) fn enable(&self, dev: &device::Device<device::Bound>) -> Result {
        self.disable()
            .inspect_err(|e| dev_err!(self.pdev, "controller does not disable: {e:?}\n"))?;
        let entries = ADMIN_ENTRIES.min(self.caps.max_queue_entries.min(4096) as u16);
        let sq = SubmissionRing::new(dev, entries, &self.access)?;
        let cq = CompletionRing::new(dev, entries, &self.access)?;
        self.start(
            Aqa::new(entries, entries),
            sq.dma_address(),
            cq.dma_address(),
        )?;
        self.wait_ready()?;
        *self.admin.lock() = Some(AdminQueue::new(sq, cq));
        self.disabled.store(false, Ordering::Release);
        Ok(())
    }

    /// Waits for CSTS.RDY after CC.EN was set; fails if the controller
    /// reports a fatal status or reads all ones instead.
    fn wait_ready(&self) -> Result {
        let csts = self
            .poll_csts(|csts| csts.rdy() || csts.cfs() || csts.0 == u32::MAX)
            .inspect_err(|e| dev_err!(self.pdev, "controller does not become ready: {e:?}\n"))?;
        if !csts.rdy() || csts.cfs() || csts.0 == u32::MAX {
            dev_err!(
                self.pdev,
                "controller failed while enabling (CSTS {:#x})\n",
                csts.0
            );
            return Err(EIO);
        }
        Ok(())
    }

    /// Marks a reset as scheduled: from now on new I/O waits and
    /// completions are left for the reset. Fails if the controller is dead.
    pub(crate) fn begin_reset(&self) -> Result {
        if self.is_dead() {
            return Err(ENODEV);
        }
        self.resetting.store(true, Ordering::Release);
        Ok(())
    }

    /// First half of a reset: disables the controller (CC.EN = 0) and waits
    /// for CSTS.RDY = 0. Once this succeeded, the device has deleted every
    /// queue, finishing whatever command it was processing first
    /// (Documentation/device-interface.rst, "Enable, reset and shutdown"),
    /// so it no longer touches any request's memory. Fails if the device
    /// does not stop within CAP.TO or reads all ones (gone from the bus).
    ///
    /// Bus mastering is cleared either way, after the wait, as the NVMe
    /// PCI driver's `nvme_dev_disable()` does; [`Controller::restart`] sets
    /// it again.
    pub(crate) fn disable_for_reset(&self) -> Result {
        if self.is_dead() {
            return Err(ENODEV);
        }
        self.disabled.store(true, Ordering::Release);
        let result = self.disable();
        self.clear_bus_master();
        let csts = result.inspect_err(|e| {
            dev_err!(self.pdev, "controller does not disable: {e:?}\n");
            self.report_unconfirmed(format_args!("no CSTS.RDY = 0 within CAP.TO"));
        })?;
        if csts.0 == u32::MAX {
            dev_err!(self.pdev, "controller registers read all ones: device gone\n");
            self.report_unconfirmed(format_args!("registers read all ones"));
            return Err(ENODEV);
        }
        Ok(())
    }

    /// Second half of a reset: enables the controller again with the admin
    /// queue pair it had, emptied. The I/O queues are for the caller to
    /// create again. On success admin commands work again and the device is
    /// trusted afresh.
    pub(crate) fn restart(&self) -> Result {
        if self.is_dead() {
            return Err(ENODEV);
        }
        {
            let mut guard = self.admin.lock();
            let admin: &mut AdminQueue = match &mut *guard {
                Some(admin) => admin,
                None => return Err(ENODEV),
            };
            // The controller is disabled (`disable_for_reset`): the device
            // owns no entry of either ring. Commands still waiting died
            // with the device's queue; their waiters see the new
            // generation and give up.
            admin.sq.reset();
            admin.cq.reset();
            admin.generation = admin.generation.wrapping_add(1);
            admin.waiting.clear();
            let (sq_addr, cq_addr) = (admin.sq.dma_address(), admin.cq.dma_address());
            let entries = admin.sq.entries();
            self.start(Aqa::new(entries, entries), sq_addr, cq_addr)?;
        }
        if let Err(e) = self.wait_ready() {
            // Leave it disabled, as `disabled` says, and unable to reach
            // memory.
            let _ = self.disable();
            self.clear_bus_master();
            return Err(e);
        }
        self.broken.store(false, Ordering::Release);
        self.disabled.store(false, Ordering::Release);
        Ok(())
    }

    /// Asks for `wanted` I/O queue pairs (Set Features, Number of Queues)
    /// and returns how many the controller grants, at most `wanted`. Also
    /// hands the device the shadow doorbell pages for the queues about to
    /// be created (at probe, and again after each controller reset, which
    /// made the device forget them).
    pub(crate) fn request_io_queues(&self, wanted: u32) -> Result<u32> {
        self.setup_shadow_doorbells();
        let wanted = wanted.min(u32::from(u16::MAX));
        let granted = self.admin_command(
            Features {
                fid: feature::NUMBER_OF_QUEUES,
                save: false,
                select: 0,
                value: sqe::number_of_queues(wanted as u16, wanted as u16),
            }
            .encode(true, 0),
        )?;
        let (nsq, ncq) = sqe::decode_number_of_queues(granted);
        Ok(wanted.min(nsq).min(ncq))
    }

    /// Tells the device about the shadow doorbell pages (Doorbell Buffer
    /// Config), zeroed, before any I/O queue exists. A device that refuses
    /// gets MMIO doorbells only.
    fn setup_shadow_doorbells(&self) {
        let Some(shadow) = &self.shadow else { return };
        // No I/O queue exists now (probe, or a reset that deleted them):
        // nothing rings an I/O doorbell until the queues are created.
        shadow.set_active(false);
        shadow.clear();
        let (doorbells, event_idx) = shadow.dma_addresses();
        let command = DoorbellBufferConfig {
            shadow: doorbells,
            event_idx,
        };
        match self.admin_command(command.encode(0)) {
            Ok(_) => shadow.set_active(true),
            Err(e) => dev_info!(
                self.pdev,
                "shadow doorbells refused ({e:?}): every doorbell is an MMIO write\n"
            ),
        }
    }

    /// Ends a successful reset: I/O may flow again.
    pub(crate) fn finish_reset(&self) {
        self.resetting.store(false, Ordering::Release);
    }

    /// Sends an admin command and polls for its completion. Returns the
    /// completion's DW0.
    pub(crate) fn admin_command(&self, sqe: SubmissionEntry) -> Result<u32> {
        self.admin_command_within(sqe, ADMIN_TIMEOUT, None)
    }

    /// [`Controller::admin_command`] for a command that transfers data
    /// through `buffer`: the buffer is lent to the device until the
    /// command's own completion comes back, and stays lent (so it is never
    /// freed while the device may write it) if it does not.
    pub(crate) fn admin_command_with(
        &self,
        sqe: SubmissionEntry,
        buffer: &DeviceMemory<[u8]>,
    ) -> Result<u32> {
        self.admin_command_within(sqe, ADMIN_TIMEOUT, Some(buffer))
    }

    /// [`Controller::admin_command`] for a command that may take up to
    /// `timeout` (a scrub reads whole SSDs), with an optional data buffer
    /// (see [`Controller::admin_command_with`]). Polling slows down to once
    /// a millisecond after the first 10 ms.
    pub(crate) fn admin_command_within(
        &self,
        mut sqe: SubmissionEntry,
        timeout: Delta,
        buffer: Option<&DeviceMemory<[u8]>>,
    ) -> Result<u32> {
        if !self.admin_usable() {
            return Err(EIO);
        }
        let (cid, generation) = {
            let mut guard = self.admin.lock();
            let admin: &mut AdminQueue = match &mut *guard {
                Some(admin) => admin,
                None => return Err(EIO),
            };
            if admin.waiting.len() + 1 >= usize::from(admin.sq.entries()) {
                return Err(EBUSY);
            }
            let cid = admin.next_cid;
            admin.next_cid = admin.next_cid.wrapping_add(1);
            sqe.set_cid(cid);
            admin.waiting.push(AdminWait { cid, cqe: None }, GFP_KERNEL)?;
            if let Some(buffer) = buffer {
                buffer.lend();
            }
            if let Err(e) = admin.sq.push(&sqe) {
                admin.waiting.retain(|w| w.cid != cid);
                return Err(e);
            }
            if let Some((_, tail)) = admin.sq.take_unpublished() {
                self.with_regs(|r| r.ring(0, DoorbellKind::SubmissionTail, self.caps.dstrd, tail))?;
            }
            (cid, admin.generation)
        };
        let start: Instant<Monotonic> = Instant::now();
        loop {
            {
                let mut guard = self.admin.lock();
                let admin: &mut AdminQueue = match &mut *guard {
                    Some(admin) if admin.generation == generation => admin,
                    // Shut down, or reset: the command died with the queue.
                    _ => return Err(EIO),
                };
                self.collect_admin_completions(admin);
                let pos = admin
                    .waiting
                    .iter()
                    .position(|w| w.cid == cid && w.cqe.is_some());
                if let Some(pos) = pos {
                    let done = admin.waiting.remove(pos).map_err(|_| EIO)?;
                    if let Some(cqe) = done.cqe {
                        return self.check_admin_completion(&cqe, buffer);
                    }
                }
                let waited = start.elapsed();
                if waited > timeout {
                    admin.waiting.retain(|w| w.cid != cid);
                    drop(guard);
                    dev_err!(self.pdev, "admin command {:#x} timed out\n", sqe.opcode());
                    self.protocol_error(ProtocolError::Fatal, format_args!("admin command timeout"));
                    return Err(ETIMEDOUT);
                }
            }
            // A controller that is being reset, failed or shut down
            // completes nothing more on this queue: do not keep teardown
            // or a reset waiting for a long command.
            if self.disabled.load(Ordering::Acquire) || self.is_dead() {
                let mut guard = self.admin.lock();
                if let Some(admin) = &mut *guard {
                    admin.waiting.retain(|w| w.cid != cid);
                }
                return Err(EIO);
            }
            let waited = start.elapsed();
            fsleep(if waited > Delta::from_millis(10) {
                Delta::from_millis(1)
            } else {
                Delta::from_micros(200)
            });
        }
    }

    /// Moves every posted admin completion to its waiter, checking that it
    /// names the admin queue, a head in range and a waiting command.
    /// Stops at the first entry that does not (a protocol error).
    fn collect_admin_completions(&self, admin: &mut AdminQueue) {
        let mut any = false;
        while let Some(cqe) = admin.cq.pop() {
            any = true;
            if cqe.queue() != 0 {
                self.protocol_error(
                    ProtocolError::BadSqId,
                    format_args!("admin completion for SQ {}", cqe.queue()),
                );
                break;
            }
            if admin.sq.set_head(cqe.head()).is_err() {
                self.protocol_error(
                    ProtocolError::BadSqHead,
                    format_args!("admin SQ head {}", cqe.head()),
                );
                break;
            }
            let cid = cqe.command_id();
            match admin
                .waiting
                .iter_mut()
                .find(|w| w.cid == cid && w.cqe.is_none())
            {
                Some(wait) => wait.cqe = Some(cqe),
                None => {
                    self.protocol_error(
                        ProtocolError::UnknownCommand,
                        format_args!("admin completion for command {cid}, which is not outstanding"),
                    );
                    break;
                }
            }
        }
        if any {
            let head = admin.cq.head();
            let _ = self.with_regs(|r| r.ring(0, DoorbellKind::CompletionHead, self.caps.dstrd, head));
        }
    }

    /// Turns the command's own completion into its result.
    fn check_admin_completion(
        &self,
        cqe: &CompletionEntry,
        buffer: Option<&DeviceMemory<[u8]>>,
    ) -> Result<u32> {
        // The command's own completion: the device is done with its buffer.
        if let Some(buffer) = buffer {
            buffer.give_back();
        }
        match status_to_result(cqe.status()) {
            Ok(()) => Ok(cqe.result.get()),
            Err(Some(e)) => {
                dev_dbg!(
                    self.pdev,
                    "admin command failed, status {:#x}\n",
                    cqe.status().0
                );
                Err(e)
            }
            Err(None) => {
                self.protocol_error(
                    ProtocolError::BadStatus,
                    format_args!("admin status {:#x}", cqe.status().0),
                );
                Err(EIO)
            }
        }
    }

    /// Stops the controller for good: shutdown notification when it still
    /// works, then disable and clear bus mastering. A controller that
    /// failed earlier without confirming it stopped gets one more chance to
    /// confirm it (it may have come back); if it does not, its memory is
    /// leaked when the rings and buffers are dropped. Idempotent.
    pub(crate) fn shutdown(&self) {
        self.dead.store(true, Ordering::Release);
        if self.disabled.swap(true, Ordering::AcqRel) {
            if !self.access.is_stopped() {
                match self.disable() {
                    Ok(csts) if csts.0 != u32::MAX && !csts.rdy() => dev_info!(
                        self.pdev,
                        "failed controller confirmed stopped at release: its memory is freed\n"
                    ),
                    _ => self.report_unconfirmed(format_args!("at release")),
                }
            }
            self.clear_bus_master();
            *self.admin.lock() = None;
            return;
        }
        if !self.broken.load(Ordering::Acquire) {
            let _ = self
                .with_regs(|regs| {
                    let cc = regs.cc()?;
                    regs.set_cc(cc.with_shn(Cc::SHN_NORMAL))
                })
                .and_then(|()| self.poll_csts(|csts| csts.shst() == 2 || csts.0 == u32::MAX))
                .inspect_err(|e| dev_warn!(self.pdev, "shutdown did not complete: {e:?}\n"));
        }
        if let Err(e) = self.disable() {
            dev_warn!(self.pdev, "controller does not disable: {e:?}\n");
        }
        self.clear_bus_master();
        if !self.access.is_stopped() {
            self.report_unconfirmed(format_args!("at release"));
        }
        *self.admin.lock() = None;
    }

    /// Fails the controller for good: disables it (unless a reset already
    /// tried) and clears bus mastering, so it stops touching host memory
    /// whether or not it confirms it stopped. Returns whether this call
    /// failed it (the first one does).
    pub(crate) fn fail(&self) -> bool {
        self.broken.store(true, Ordering::Release);
        let first = !self.dead.swap(true, Ordering::AcqRel);
        if !self.disabled.swap(true, Ordering::AcqRel) {
            let result = self.disable();
            self.clear_bus_master();
            match result {
                Ok(csts) if csts.0 != u32::MAX => {}
                Ok(_) => self.report_unconfirmed(format_args!("registers read all ones")),
                Err(e) => {
                    dev_err!(self.pdev, "failed controller does not disable: {e:?}\n");
                    self.report_unconfirmed(format_args!("no CSTS.RDY = 0 within CAP.TO"));
                }
            }
        } else {
            self.clear_bus_master();
        }
        first
    }
}

/// BAR0 must cover at least the registers and doorbells the driver uses.
const _: () = assert!(BAR0_SIZE >= 0x1008);

#[kunit_tests(dpublk_status)]
mod tests {
    use super::*;
    use crate::shim::vendor;

    fn errno(status: Status) -> Option<i32> {
        match status_to_result(status) {
            Ok(()) => Some(0),
            Err(Some(e)) => Some(e.to_errno()),
            Err(None) => None,
        }
    }

    #[test]
    fn success_ignores_flags() {
        assert_eq!(errno(Status::SUCCESS), Some(0));
        assert_eq!(errno(Status(Status::DNR | Status::MORE)), Some(0));
    }

    #[test]
    fn mapped_statuses() {
        assert_eq!(errno(Status::INVALID_OPCODE), Some(EOPNOTSUPP.to_errno()));
        assert_eq!(errno(Status::INVALID_FIELD), Some(EOPNOTSUPP.to_errno()));
        assert_eq!(errno(Status::LBA_OUT_OF_RANGE), Some(EREMOTEIO.to_errno()));
        assert_eq!(errno(Status::DATA_TRANSFER_ERROR), Some(EIO.to_errno()));
        assert_eq!(
            errno(Status::UNRECOVERED_READ_ERROR),
            Some(ENODATA.to_errno())
        );
        assert_eq!(errno(Status::WRITE_FAULT), Some(ENODATA.to_errno()));
        assert_eq!(errno(Status::INVALID_QUEUE_ID), Some(EIO.to_errno()));
        assert_eq!(errno(Status::new(sct::PATH, 0)), Some(ENOLINK.to_errno()));
        assert_eq!(
            errno(vendor::vendor_status(vendor::status::NO_SPACE)),
            Some(ENOSPC.to_errno())
        );
        assert_eq!(
            errno(vendor::vendor_status(vendor::status::VOLUME_BUSY)),
            Some(EBUSY.to_errno())
        );
        assert_eq!(errno(Status::new(sct::GENERIC, 0x81)), Some(ENOSPC.to_errno()));
        assert_eq!(
            errno(vendor::vendor_status(vendor::status::NOT_IMPLEMENTED)),
            Some(EOPNOTSUPP.to_errno())
        );
        assert_eq!(
            errno(vendor::vendor_status(vendor::status::KEY_MISMATCH)),
            Some(EKEYREJECTED.to_errno())
        );
        assert_eq!(
            errno(vendor::vendor_status(vendor::status::REMOTE_UNREACHABLE)),
            Some(EHOSTUNREACH.to_errno())
        );
        assert_eq!(
            errno(vendor::vendor_status(vendor::status::REMOTE_GEOMETRY)),
            Some(EINVAL.to_errno())
        );
        assert_eq!(errno(vendor::vendor_status(0x7f)), Some(EIO.to_errno()));
    }

    #[test]
    fn undefined_types_are_device_errors() {
        for sct in 4..7u8 {
            assert_eq!(errno(Status::new(sct, 1)), None);
        }
    }
}
