// SPDX-License-Identifier: GPL-2.0

//! Namespaces as blk-mq disks: `/dev/dpublk0`, `/dev/dpublk1`, ...
//!
//! All namespaces of a controller share one tag set whose hardware queues
//! are the controller's I/O queue pairs.

use crate::{
    blk_mq::{self, OwnedRequest, Request, TimeoutAction},
    controller::Controller,
    io_queue::{IoQueue, NamespaceFormat},
    reset::{ControllerReset, Scheduled},
    shim::sqe::Abort,
};
use kernel::{prelude::*, sync::Arc};

/// The I/O queue pairs of one controller: the tag set's data.
pub(crate) struct IoQueues {
    pub(crate) ctrl: Arc<Controller>,
    pub(crate) queues: KVec<Arc<IoQueue>>,
    /// Resets the controller when a command is lost.
    pub(crate) reset: Arc<ControllerReset>,
}

/// Fails the controller for good and everything it had in flight, in the
/// NVMe PCI driver's order: disable it and clear bus mastering (so it
/// starts no memory access whether or not it confirms it stopped), reap the
/// completions it posted, then cancel what is left.
pub(crate) fn fail_controller(ctrl: &Controller, queues: &[Arc<IoQueue>]) {
    if ctrl.fail() {
        dev_err!(
            ctrl.pdev(),
            "controller disabled after a failure; failing outstanding I/O\n"
        );
    }
    let reaped: usize = queues.iter().map(|q| q.reap_posted()).sum();
    if reaped > 0 {
        dev_info!(ctrl.pdev(), "{reaped} requests completed by the device before it stopped\n");
    }
    let cancelled: usize = queues.iter().map(|q| q.cancel_all(EIO)).sum();
    if cancelled > 0 {
        dev_err!(ctrl.pdev(), "failed {cancelled} outstanding requests\n");
    }
}

impl IoQueues {
    /// Disables a failed controller and fails everything it had in flight.
    pub(crate) fn fail_all(&self) {
        fail_controller(&self.ctrl, &self.queues);
    }
}

/// The blk-mq operations of dpublk disks.
pub(crate) struct BlockOps;

impl blk_mq::Operations for BlockOps {
    type TagSetData = IoQueues;
    type HwQueue = IoQueue;
    type DiskData = NamespaceFormat;

    fn hw_queue(set: &IoQueues, index: u32) -> Result<&IoQueue> {
        set.queues.get(index as usize).map(|q| &**q).ok_or(EINVAL)
    }

    fn queue_rq(
        hwq: &IoQueue,
        ns: &NamespaceFormat,
        rq: OwnedRequest,
        is_last: bool,
    ) -> Result<(), (OwnedRequest, Error)> {
        hwq.submit(ns, rq, is_last)
    }

    fn commit_rqs(hwq: &IoQueue) {
        hwq.commit();
    }

    fn timeout(set: &IoQueues, hwq: &IoQueue, rq: &Request) -> TimeoutAction {
        // A lost interrupt looks like a timeout: look at the ring first.
        hwq.process_completions();
        if !hwq.is_outstanding(rq) {
            return TimeoutAction::Done;
        }
        let pdev = set.ctrl.pdev();
        // A reset is coming: it requeues this request with the others.
        if set.reset.is_busy() {
            return TimeoutAction::ResetTimer;
        }
        // A controller that reports a fatal status (CSTS.CFS) or vanished
        // is not asked to abort anything: `check_alive` records it as a
        // protocol error, which schedules a reset at once.
        // Otherwise, first try to abort just this command: the device then
        // completes it with "abort requested", and everything else keeps
        // running.
        if set.ctrl.check_alive() && set.ctrl.is_usable() {
            if let Some(cid) = hwq.abort_once(rq) {
                dev_warn!(
                    pdev,
                    "command {cid:#x} on queue {} timed out, aborting it\n",
                    hwq.qid()
                );
                let abort = Abort {
                    sqid: hwq.qid(),
                    cid,
                };
                match set.ctrl.admin_command(abort.encode(0)) {
                    Ok(_) => return TimeoutAction::ResetTimer,
                    Err(e) => dev_warn!(pdev, "abort failed: {e:?}\n"),
                }
            }
        }
        dev_warn!(
            pdev,
            "command (tag {}) on queue {} timed out again or cannot be aborted\n",
            rq.tag(),
            hwq.qid()
        );
        // Reset the controller: the request goes out again afterwards. Only
        // if that is not possible any more, fail the controller for good.
        match set.reset.schedule() {
            Scheduled::Queued | Scheduled::Pending => TimeoutAction::ResetTimer,
            Scheduled::Refused => {
                set.fail_all();
                TimeoutAction::Done
            }
        }
    }
}
