// SPDX-License-Identifier: GPL-2.0

//! Controller reset: what follows a lost command, modelled on the NVMe PCI
//! driver's `nvme_dev_disable` and `nvme_reset_work`.
//!
//! A request that times out is aborted first (see `disk.rs`). If it times
//! out again, or the abort fails, the timeout handler schedules a reset on
//! a workqueue; so does any protocol error of the device or CSTS.CFS, at
//! once (`Controller::protocol_error`). The reset
//!
//! 1. quiesces the tag set, so nothing is submitted any more;
//! 2. disables the controller (CC.EN = 0) and waits for CSTS.RDY = 0: the
//!    device then has dropped every queue and finished the command it was
//!    processing, so it no longer touches any request's memory; then
//!    clears bus mastering;
//! 3. ends the requests whose completions the device posted before it
//!    stopped, then hands every other outstanding request back to blk-mq
//!    for reissue and empties the rings;
//! 4. sets bus mastering and enables the controller again with the same
//!    admin queue, asks for the
//!    same number of I/O queues and creates the same queue pairs on the same
//!    interrupt vectors;
//! 5. unquiesces the tag set: the requeued requests go out again.
//!
//! A request is issued again only after step 2, so a command the device
//! might still be working on never runs twice at the same time, and data
//! the device might still write into a read buffer is never overtaken.
//!
//! Resets are bounded ([`ResetBudget`]); the budget is refilled whenever a
//! request completed successfully since the last reset, so a device that
//! breaks the protocol now and then but keeps working is reset each time,
//! while one that gets nothing done between its resets is given up on. If
//! the budget is spent, or the
//! controller does not disable or enable again (gone from the bus, CSTS
//! all ones, or CFS), the controller is failed for good: outstanding I/O
//! ends with EIO, the disks are marked dead, and new I/O fails at once.

use crate::{
    blk_mq::TagSet,
    controller::Controller,
    disk::{fail_controller, BlockOps},
    io_queue::IoQueue,
    management::Management,
    workqueue_ext,
};
use kernel::{
    new_spinlock_irq,
    prelude::*,
    sync::{Arc, SpinLockIrq},
    time::{Instant, Monotonic},
    workqueue::{self, impl_has_work, new_work, Work, WorkItem},
};

/// Most resets within [`RESET_WINDOW_MS`].
pub(crate) const MAX_RESETS: usize = 3;
/// The window the reset budget looks back on, in milliseconds. A reset
/// follows two timeouts of one request (one before the abort, one after),
/// a minute apart with the default timeout, so a window of a single minute
/// would never fill up; ten minutes catch a device that keeps losing
/// commands.
pub(crate) const RESET_WINDOW_MS: u64 = 10 * 60 * 1000;

/// The resets the recent past allows: at most [`MAX_RESETS`] within any
/// [`RESET_WINDOW_MS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ResetBudget {
    /// When the last resets were taken (milliseconds on a monotonic clock).
    taken: [Option<u64>; MAX_RESETS],
}

impl ResetBudget {
    /// A budget with nothing taken.
    pub(crate) const fn new() -> Self {
        Self {
            taken: [None; MAX_RESETS],
        }
    }

    /// Takes a reset at `now_ms` if fewer than [`MAX_RESETS`] were taken in
    /// the window before it; returns whether it did.
    pub(crate) fn try_take(&mut self, now_ms: u64) -> bool {
        let free = self.taken.iter().position(|t| match t {
            Some(t) => now_ms.saturating_sub(*t) >= RESET_WINDOW_MS,
            None => true,
        });
        match free {
            Some(i) => {
                self.taken[i] = Some(now_ms);
                true
            }
            None => false,
        }
    }
}

/// What [`ControllerReset::schedule`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scheduled {
    /// A reset is queued now.
    Queued,
    /// A reset is queued or running already; it takes care of every
    /// outstanding request.
    Pending,
    /// No reset: the budget is spent, the controller is dead or the device
    /// is being torn down. The caller fails the controller.
    Refused,
}

/// What changes under the reset lock.
struct ResetState {
    /// A reset is queued or running.
    busy: bool,
    /// Resets scheduled so far.
    resets: u64,
    /// The budget is spent: the queued work fails the controller instead
    /// of resetting it (a refusal may come from interrupt context, which
    /// cannot wait for the device to disable).
    give_up: bool,
    /// Set between probe and teardown: resets may be scheduled.
    armed: bool,
    budget: ResetBudget,
    /// The tag set to quiesce, and the disks to mark dead if the controller
    /// fails. Held only while armed: they refer back to the queues that
    /// refer to this object, and teardown breaks the cycle in `disarm`.
    tagset: Option<Arc<TagSet<BlockOps>>>,
    management: Option<Arc<Management>>,
}

/// The reset machinery of one controller.
#[pin_data]
pub(crate) struct ControllerReset {
    ctrl: Arc<Controller>,
    /// The I/O queue pairs, in queue ID order.
    queues: KVec<Arc<IoQueue>>,
    /// Start of the budget's clock.
    epoch: Instant<Monotonic>,
    /// An interrupt-safe lock: protocol errors found in the completion
    /// interrupt schedule resets ([`Self::schedule`]).
    #[pin]
    state: SpinLockIrq<ResetState>,
    #[pin]
    work: Work<ControllerReset>,
}

impl_has_work! {
    impl HasWork<Self> for ControllerReset { self.work }
}

impl WorkItem for ControllerReset {
    type Pointer = Arc<Self>;

    fn run(this: Arc<Self>) {
        this.run_reset();
    }
}

/// What a reset does after the controller came back.
enum AfterReset {
    /// Done: I/O flows again.
    Done,
    /// The device broke the protocol again before the reset was over:
    /// reset once more (budget permitting).
    Again,
    /// Budget spent: fail the controller.
    GiveUp,
}

impl ControllerReset {
    /// The reset machinery for `ctrl` and its I/O queue pairs; it can do
    /// nothing until [`Self::arm`]ed.
    pub(crate) fn new(ctrl: Arc<Controller>, queues: &[Arc<IoQueue>]) -> Result<Arc<Self>> {
        let mut list = KVec::with_capacity(queues.len(), GFP_KERNEL)?;
        for q in queues {
            list.push(q.clone(), GFP_KERNEL)?;
        }
        Arc::pin_init(
            try_pin_init!(Self {
                ctrl,
                queues: list,
                epoch: Instant::now(),
                state <- new_spinlock_irq!(ResetState {
                    busy: false,
                    resets: 0,
                    give_up: false,
                    armed: false,
                    budget: ResetBudget::new(),
                    tagset: None,
                    management: None,
                }),
                work <- new_work!("dpublk::ControllerReset::work"),
            }),
            GFP_KERNEL,
        )
    }

    /// Allows resets from now on, of `tagset` and with `management`'s
    /// disks; the controller's protocol errors schedule them too.
    pub(crate) fn arm(self: &Arc<Self>, tagset: Arc<TagSet<BlockOps>>, management: Arc<Management>) {
        {
            let mut state = self.state.lock();
            state.tagset = Some(tagset);
            state.management = Some(management);
            state.armed = true;
        }
        self.ctrl.set_recovery(Some(self.clone()));
    }

    /// Teardown: stops new resets and waits for one that is queued or
    /// running. A timeout after this fails the controller instead.
    pub(crate) fn disarm(&self) {
        self.ctrl.set_recovery(None);
        let (tagset, management) = {
            let mut state = self.state.lock();
            state.armed = false;
            (state.tagset.take(), state.management.take())
        };
        // Nothing queues the work any more (`schedule` refuses while not
        // armed), so after the flush it is neither queued nor running.
        workqueue_ext::flush(&self.work);
        drop(tagset);
        drop(management);
    }

    /// Whether a reset is queued or running.
    pub(crate) fn is_busy(&self) -> bool {
        self.state.lock().busy
    }

    /// Schedules a reset, if none is pending and the budget allows one.
    /// Does not sleep: may be called in interrupt context.
    pub(crate) fn schedule(self: &Arc<Self>) -> Scheduled {
        let pdev = self.ctrl.pdev();
        let resets = {
            let mut state = self.state.lock();
            // A running reset is let finish even during teardown: failing
            // the controller under it would race with its re-enable.
            if state.busy {
                return Scheduled::Pending;
            }
            if !state.armed || self.ctrl.is_dead() {
                return Scheduled::Refused;
            }
            if self.ctrl.take_progress() {
                state.budget = ResetBudget::new();
            }
            let now = self.epoch.elapsed().as_millis().max(0) as u64;
            if !state.budget.try_take(now) {
                dev_err!(
                    pdev,
                    "{MAX_RESETS} controller resets within {} minutes: giving up\n",
                    RESET_WINDOW_MS / 60_000
                );
                // The work item fails the controller; callers that can
                // wait do it themselves too (it is idempotent).
                if self.ctrl.begin_reset().is_ok() {
                    state.give_up = true;
                    state.busy = true;
                    drop(state);
                    let _ = workqueue::system_unbound().enqueue(self.clone());
                }
                return Scheduled::Refused;
            }
            if self.ctrl.begin_reset().is_err() {
                return Scheduled::Refused;
            }
            state.busy = true;
            state.resets += 1;
            state.resets
        };
        // The first few resets and then every power of two are logged: a
        // hostile device must not flood the log.
        if resets <= 4 || resets.is_power_of_two() {
            dev_warn!(pdev, "scheduling a controller reset (#{resets})\n");
        }
        // Cannot be queued already: `busy` was clear.
        let _ = workqueue::system_unbound().enqueue(self.clone());
        Scheduled::Queued
    }

    /// The work item: resets the controller, or fails it if that does not
    /// work.
    fn run_reset(&self) {
        let (tagset, management, mut resets, give_up) = {
            let state = self.state.lock();
            (
                state.armed.then(|| state.tagset.clone()).flatten(),
                state.management.clone(),
                state.resets,
                state.give_up,
            )
        };
        let Some(tagset) = tagset else {
            // Disarmed before it ran: teardown fails what is outstanding.
            let mut state = self.state.lock();
            state.busy = false;
            state.give_up = false;
            return;
        };
        let pdev = self.ctrl.pdev();
        if give_up {
            self.give_up(&tagset, management.as_deref());
            return;
        }
        tagset.quiesce();
        loop {
            let verbose = resets <= 4 || resets.is_power_of_two();
            if verbose {
                dev_warn!(pdev, "resetting the controller\n");
            }
            let requeued = match self.reset_controller() {
                Ok(requeued) => requeued,
                Err(e) => {
                    dev_err!(pdev, "controller reset failed: {e:?}\n");
                    self.give_up(&tagset, management.as_deref());
                    return;
                }
            };
            self.ctrl.finish_reset();
            // A protocol error from here on either sees `busy` clear and
            // schedules a reset of its own, or finds it set, and then it
            // is seen here (`is_broken`) and handled by this work item.
            let next = {
                let mut state = self.state.lock();
                if !self.ctrl.is_broken() {
                    state.busy = false;
                    AfterReset::Done
                } else {
                    if self.ctrl.take_progress() {
                        state.budget = ResetBudget::new();
                    }
                    let now = self.epoch.elapsed().as_millis().max(0) as u64;
                    if state.budget.try_take(now) && self.ctrl.begin_reset().is_ok() {
                        state.resets += 1;
                        resets = state.resets;
                        AfterReset::Again
                    } else {
                        AfterReset::GiveUp
                    }
                }
            };
            match next {
                AfterReset::Done => {
                    tagset.unquiesce();
                    if verbose {
                        dev_info!(
                            pdev,
                            "controller reset done: {requeued} requests requeued (reset #{resets})\n"
                        );
                    }
                    return;
                }
                AfterReset::Again => continue,
                AfterReset::GiveUp => {
                    dev_err!(pdev, "the device keeps breaking the protocol: giving up\n");
                    self.give_up(&tagset, management.as_deref());
                    return;
                }
            }
        }
    }

    /// Fails the controller for good: outstanding requests end with EIO,
    /// requeued ones fail as they are dispatched again after the
    /// unquiesce, and the disks fail new I/O at once.
    fn give_up(&self, tagset: &TagSet<BlockOps>, management: Option<&Management>) {
        fail_controller(&self.ctrl, &self.queues);
        tagset.unquiesce();
        if let Some(management) = management {
            management.mark_disks_dead();
        }
        let mut state = self.state.lock();
        state.busy = false;
        state.give_up = false;
    }

    /// Steps 2 to 4 of the reset (module documentation). Returns how many
    /// requests went back to blk-mq.
    fn reset_controller(&self) -> Result<usize> {
        self.ctrl.disable_for_reset()?;
        // CSTS.RDY = 0: the device stopped. What it completed before stops
        // here with its own result; everything else is the host's again
        // and is issued anew.
        let reaped: usize = self.queues.iter().map(|q| q.reap_posted()).sum();
        if reaped > 0 {
            dev_dbg!(
                self.ctrl.pdev(),
                "{reaped} requests completed by the device before the reset\n"
            );
        }
        let requeued = self.queues.iter().map(|q| q.requeue_all()).sum();
        self.ctrl.restart()?;
        let wanted = self.queues.len() as u32;
        let granted = self.ctrl.request_io_queues(wanted)?;
        if granted < wanted {
            dev_err!(
                self.ctrl.pdev(),
                "{granted} I/O queue pairs after the reset, {wanted} before\n"
            );
            return Err(ENODEV);
        }
        for q in self.queues.iter() {
            q.create_on_device()?;
        }
        Ok(requeued)
    }
}

#[kunit_tests(dpublk_reset)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_max_resets_in_window() {
        let mut budget = ResetBudget::new();
        for i in 0..MAX_RESETS as u64 {
            assert!(budget.try_take(1000 + i));
        }
        assert!(!budget.try_take(2000));
        assert!(!budget.try_take(1000 + RESET_WINDOW_MS - 1));
    }

    #[test]
    fn budget_refills_as_resets_age() {
        let mut budget = ResetBudget::new();
        assert!(budget.try_take(0));
        assert!(budget.try_take(100));
        assert!(budget.try_take(200));
        assert!(!budget.try_take(300));
        // The first reset leaves the window: one more is allowed, not two.
        assert!(budget.try_take(RESET_WINDOW_MS));
        assert!(!budget.try_take(RESET_WINDOW_MS + 50));
        assert!(budget.try_take(RESET_WINDOW_MS + 100));
        // Long after all of them, the whole budget is back.
        let later = 10 * RESET_WINDOW_MS;
        for i in 0..MAX_RESETS as u64 {
            assert!(budget.try_take(later + i));
        }
        assert!(!budget.try_take(later + 10));
    }

    #[test]
    fn budget_refusal_does_not_spend() {
        let mut budget = ResetBudget::new();
        for _ in 0..MAX_RESETS {
            assert!(budget.try_take(5));
        }
        let before = budget;
        assert!(!budget.try_take(6));
        assert_eq!(budget, before);
    }
}
