// SPDX-License-Identifier: GPL-2.0

//! Waiting for a work item: what `kernel::workqueue` (7.3) does not offer.
//!
//! The in-tree abstraction queues work items but cannot wait for one, which
//! a driver needs before it tears down what the work item uses. Only
//! `flush_work` is wrapped, not `cancel_work_sync`: cancelling a queued
//! `Arc` work item would leak the reference the queue holds, whereas a
//! flushed item runs, sees that it has nothing to do, and drops it.

use kernel::{
    bindings,
    workqueue::{Work, WorkItem},
};

/// Waits until `work` is neither queued nor running (`flush_work`): if it
/// was queued, it runs first. Returns whether there was anything to wait
/// for.
///
/// Sleeps. Must not be called from `work` itself, and whoever might queue
/// `work` again must have been stopped first, or it may be queued again
/// right after.
pub(crate) fn flush<T: WorkItem<ID> + ?Sized, const ID: u64>(work: &Work<T, ID>) -> bool {
    // SAFETY: `work` is a live, initialized work item (`Work::new` ran, and
    // the reference keeps it alive for the call); `raw_get` only projects
    // the pointer.
    unsafe { bindings::flush_work(Work::raw_get(work)) }
}
