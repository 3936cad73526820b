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

use crate::{
    queue::{CompletionRing, SubmissionRing},
    regs::{Bar0, Registers, BAR0_SIZE},
    shim::{
        cqe::CompletionEntry,
        opcode::feature,
        registers::{Aqa, Cap, Cc, Csts, DoorbellKind},
        sqe::{self, Features, SubmissionEntry},
        status::{sct, Status},
    },
};
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use kernel::{
    device,
    devres::DevresLt,
    fmt,
    io::poll::read_poll_timeout,
    new_mutex, pci,
    prelude::*,
    sync::aref::ARef,
    sync::Mutex,
    time::{delay::fsleep, Delta, Instant, Monotonic},
};

/// Entries of each admin queue.
const ADMIN_ENTRIES: u16 = 32;
/// How long an admin command may take. Generous: the emulated device runs
/// under TCG in tests.
const ADMIN_TIMEOUT: Delta = Delta::from_secs(10);

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
struct AdminQueue {
    sq: SubmissionRing,
    cq: CompletionRing,
    next_cid: u16,
}

/// A controller.
#[pin_data]
pub(crate) struct Controller {
    pdev: ARef<pci::Device>,
    bar: DevresLt<Bar0>,
    caps: Capabilities,
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
    /// Protocol errors already logged (`ProtocolError` bits).
    reported: AtomicU32,
}

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
        let caps = Capabilities {
            max_queue_entries: cap.max_queue_entries(),
            dstrd: cap.dstrd(),
            // CAP.TO is in 500 ms units; zero would mean "no time at all",
            // which no controller can meet.
            ready_timeout: Delta::from_millis(500 * i64::from(cap.timeout().max(1))),
        };
        let pdev: ARef<pci::Device> = (&**pdev).into();
        Ok(try_pin_init!(Self {
            pdev,
            bar,
            caps,
            admin <- new_mutex!(None),
            broken: AtomicBool::new(false),
            disabled: AtomicBool::new(false),
            resetting: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            reported: AtomicU32::new(0),
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

    /// Whether the controller failed for good or was shut down.
    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// Whether a reset is scheduled or running.
    pub(crate) fn is_resetting(&self) -> bool {
        self.resetting.load(Ordering::Acquire)
    }

    /// Records a protocol violation: logs it the first time, and stops
    /// trusting the device.
    pub(crate) fn protocol_error(&self, kind: ProtocolError, detail: fmt::Arguments<'_>) {
        let bit = kind as u32;
        if self.reported.fetch_or(bit, Ordering::Relaxed) & bit == 0 {
            dev_err!(
                self.pdev,
                "device error ({kind:?}): {detail}; not trusting it any more\n"
            );
        }
        self.broken.store(true, Ordering::Release);
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
    /// (or reads all ones: gone).
    fn disable(&self) -> Result<Csts> {
        self.with_regs(|regs| {
            let cc = regs.cc()?;
            if cc.en() {
                regs.set_cc(Cc(cc.0 & !Cc::EN))?;
            }
            Ok(())
        })?;
        self.poll_csts(|csts| !csts.rdy() || csts.0 == u32::MAX)
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
        let sq = SubmissionRing::new(dev, entries)?;
        let cq = CompletionRing::new(dev, entries)?;
        self.with_regs(|regs| {
            regs.set_admin_queues(
                Aqa::new(entries, entries),
                sq.dma_address(),
                cq.dma_address(),
            )?;
            regs.set_cc(Cc::enable_default())
        })?;
        self.wait_ready()?;
        *self.admin.lock() = Some(AdminQueue {
            sq,
            cq,
            next_cid: 0,
        });
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
    pub(crate) fn disable_for_reset(&self) -> Result {
        if self.is_dead() {
            return Err(ENODEV);
        }
        self.disabled.store(true, Ordering::Release);
        let csts = self
            .disable()
            .inspect_err(|e| dev_err!(self.pdev, "controller does not disable: {e:?}\n"))?;
        if csts.0 == u32::MAX {
            dev_err!(self.pdev, "controller registers read all ones: device gone\n");
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
            // owns no entry of either ring.
            admin.sq.reset();
            admin.cq.reset();
            let (sq_addr, cq_addr) = (admin.sq.dma_address(), admin.cq.dma_address());
            let entries = admin.sq.entries();
            self.with_regs(|regs| {
                regs.set_admin_queues(Aqa::new(entries, entries), sq_addr, cq_addr)?;
                regs.set_cc(Cc::enable_default())
            })?;
        }
        if let Err(e) = self.wait_ready() {
            // Leave it disabled, as `disabled` says.
            let _ = self.disable();
            return Err(e);
        }
        // A new start: errors are logged again, once each.
        self.reported.store(0, Ordering::Relaxed);
        self.broken.store(false, Ordering::Release);
        self.disabled.store(false, Ordering::Release);
        Ok(())
    }

    /// Asks for `wanted` I/O queue pairs (Set Features, Number of Queues)
    /// and returns how many the controller grants, at most `wanted`.
    pub(crate) fn request_io_queues(&self, wanted: u32) -> Result<u32> {
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

    /// Ends a successful reset: I/O may flow again.
    pub(crate) fn finish_reset(&self) {
        self.resetting.store(false, Ordering::Release);
    }

    /// Sends an admin command and polls for its completion. Returns the
    /// completion's DW0.
    pub(crate) fn admin_command(&self, sqe: SubmissionEntry) -> Result<u32> {
        self.admin_command_within(sqe, ADMIN_TIMEOUT)
    }

    /// [`Controller::admin_command`] for a command that may take up to
    /// `timeout` (a scrub reads whole SSDs). Polling slows down to once a
    /// millisecond after the first 10 ms.
    pub(crate) fn admin_command_within(
        &self,
        mut sqe: SubmissionEntry,
        timeout: Delta,
    ) -> Result<u32> {
        if !self.admin_usable() {
            return Err(EIO);
        }
        let mut guard = self.admin.lock();
        let admin: &mut AdminQueue = match &mut *guard {
            Some(admin) => admin,
            None => return Err(EIO),
        };
        let cid = admin.next_cid;
        admin.next_cid = admin.next_cid.wrapping_add(1);
        sqe.set_cid(cid);
        admin.sq.push(&sqe)?;
        if let Some(tail) = admin.sq.take_unpublished() {
            self.with_regs(|r| r.ring(0, DoorbellKind::SubmissionTail, self.caps.dstrd, tail))?;
        }
        let start: Instant<Monotonic> = Instant::now();
        let cqe = loop {
            if let Some(cqe) = admin.cq.pop() {
                let head = admin.cq.head();
                self.with_regs(|r| r.ring(0, DoorbellKind::CompletionHead, self.caps.dstrd, head))?;
                break cqe;
            }
            let waited = start.elapsed();
            if waited > timeout {
                dev_err!(self.pdev, "admin command {:#x} timed out\n", sqe.opcode());
                self.protocol_error(ProtocolError::Fatal, format_args!("admin command timeout"));
                return Err(ETIMEDOUT);
            }
            fsleep(if waited > Delta::from_millis(10) {
                Delta::from_millis(1)
            } else {
                Delta::from_micros(200)
            });
        };
        self.check_admin_completion(admin, &cqe, cid)
    }

    fn check_admin_completion(
        &self,
        admin: &mut AdminQueue,
        cqe: &CompletionEntry,
        cid: u16,
    ) -> Result<u32> {
        if cqe.queue() != 0 {
            self.protocol_error(
                ProtocolError::BadSqId,
                format_args!("admin completion for SQ {}", cqe.queue()),
            );
            return Err(EIO);
        }
        if admin.sq.set_head(cqe.head()).is_err() {
            self.protocol_error(
                ProtocolError::BadSqHead,
                format_args!("admin SQ head {}", cqe.head()),
            );
            return Err(EIO);
        }
        if cqe.command_id() != cid {
            self.protocol_error(
                ProtocolError::UnknownCommand,
                format_args!(
                    "admin completion for command {} while {} is outstanding",
                    cqe.command_id(),
                    cid
                ),
            );
            return Err(EIO);
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
    /// works, then disable. Idempotent.
    pub(crate) fn shutdown(&self) {
        self.dead.store(true, Ordering::Release);
        if self.disabled.swap(true, Ordering::AcqRel) {
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
        *self.admin.lock() = None;
    }

    /// Fails the controller for good and disables it (unless it already
    /// is), so it stops touching host memory. Returns whether this call
    /// failed it (the first one does).
    pub(crate) fn fail(&self) -> bool {
        self.broken.store(true, Ordering::Release);
        let first = !self.dead.swap(true, Ordering::AcqRel);
        if !self.disabled.swap(true, Ordering::AcqRel) {
            if let Err(e) = self.disable() {
                dev_err!(self.pdev, "failed controller does not disable: {e:?}\n");
            }
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
        assert_eq!(errno(vendor::vendor_status(0x7f)), Some(EIO.to_errno()));
    }

    #[test]
    fn undefined_types_are_device_errors() {
        for sct in 4..7u8 {
            assert_eq!(errno(Status::new(sct, 1)), None);
        }
    }
}
