//! Test hook: the accelerator loses I/O commands on request.
//!
//! SIGUSR1 arms the hook once; the next I/O command the accelerator function
//! takes from a submission queue is then dropped: consumed, never executed,
//! never completed, as by a device that lost it. The host driver's timeout,
//! abort and controller reset handling is tested with it; a controller
//! reset (CC.EN 1 → 0) forgets the lost command with its queue. SSD
//! functions are not affected.

use std::sync::atomic::{AtomicU32, Ordering};

/// A count of commands still to lose.
#[derive(Default)]
pub struct LostCommands(AtomicU32);

impl LostCommands {
    pub const fn new() -> Self {
        Self(AtomicU32::new(0))
    }

    /// Arms the hook for one more command.
    pub fn arm(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    /// Whether the command being taken must be lost; consumes one arming.
    pub fn take(&self) -> bool {
        self.0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// The process's hook, armed by SIGUSR1 (`main.rs`).
pub static LOST_COMMANDS: LostCommands = LostCommands::new();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_arming_loses_one_command() {
        // A hook of its own: controller tests run in parallel and must
        // never see the process's hook armed.
        let hook = LostCommands::new();
        assert!(!hook.take());
        hook.arm();
        hook.arm();
        assert!(hook.take());
        assert!(hook.take());
        assert!(!hook.take());
    }
}
