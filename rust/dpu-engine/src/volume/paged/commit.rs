//! What a commit written outside the pool lock hands between threads: the
//! prepared commit to write, and its outcome for those that wait for it.

use std::sync::{Arc, Condvar, Mutex};

use super::super::VolumeError;
use crate::metadata::transaction::PreparedCommit;

/// The outcome of a commit being written outside the pool lock, for the
/// threads that wait for it.
pub(crate) struct CommitDone {
    outcome: Mutex<Option<Result<(), VolumeError>>>,
    changed: Condvar,
}

impl CommitDone {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(CommitDone {
            outcome: Mutex::new(None),
            changed: Condvar::new(),
        })
    }

    /// Records the writer's outcome and wakes the waiters.
    pub(crate) fn set(&self, outcome: Result<(), VolumeError>) {
        let mut slot = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
        *slot = Some(outcome);
        self.changed.notify_all();
    }

    /// Waits until the writer recorded an outcome, and returns it.
    pub(crate) fn wait(&self) -> Result<(), VolumeError> {
        let mut slot = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(outcome) = slot.as_ref() {
                return outcome.clone();
            }
            slot = self.changed.wait(slot).unwrap_or_else(|e| e.into_inner());
        }
    }

    pub(super) fn peek(&self) -> Option<Result<(), VolumeError>> {
        self.outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A commit prepared under the pool lock, to be written without it.
pub(crate) struct CommitWrite {
    pub(crate) prepared: PreparedCommit,
    pub(crate) done: Arc<CommitDone>,
}

/// What the pool does next to make generation `needed` durable.
pub(crate) enum CommitStep {
    /// It is durable.
    Done,
    /// Another thread is writing a commit: wait for it, then ask again.
    Wait(Arc<CommitDone>),
    /// Write this commit (without the pool lock), record the outcome in
    /// its `done`, then ask again.
    Write(CommitWrite),
    /// A step of work towards the commit was done under the lock (buffered
    /// count changes applied): release the lock and ask again.
    Again,
}
