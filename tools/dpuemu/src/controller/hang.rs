//! Test hook: the controller's firmware hangs, and later comes back.
//!
//! While hung, the function still answers on the bus (registers read and
//! write, configuration space works, Bus Master Enable is honoured), but the
//! controller completes nothing: admin doorbells and CC writes are recorded
//! and not processed, so CSTS.RDY stays set after the host clears CC.EN; an
//! I/O worker takes the next command from its queue and stops before
//! executing it. When
//! the hang ends, the controller catches up: it applies the last CC value
//! (a cleared CC.EN resets it), processes the doorbells, and the workers
//! finish the commands they held — without any guest-memory access if the
//! host cleared Bus Master Enable meanwhile.
//!
//! The host sets and clears the hang through a vendor-specific register in
//! configuration space (`pci_config.rs`), so a guest test can freeze the
//! device the way a firmware crash would, and thaw it after the driver gave
//! up on it.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Condvar, Mutex};

/// The hang state of one controller.
#[derive(Default)]
pub struct Hang {
    hung: Mutex<bool>,
    thawed: Condvar,
    /// Workers holding a taken command in the hang.
    holding: AtomicU32,
}

impl Hang {
    /// Sets or clears the hang. Returns the previous state.
    pub fn set(&self, hung: bool) -> bool {
        let mut guard = self.hung.lock().unwrap_or_else(|p| p.into_inner());
        let was = std::mem::replace(&mut *guard, hung);
        if !hung {
            self.thawed.notify_all();
        }
        was
    }

    /// Whether the controller is hung.
    pub fn is_hung(&self) -> bool {
        *self.hung.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Workers holding a taken command in the hang right now.
    #[cfg(test)]
    pub fn holding(&self) -> u32 {
        self.holding.load(Ordering::SeqCst)
    }

    /// Blocks while the controller is hung, unless `stop` is set (workers
    /// exiting). Returns whether it blocked.
    pub fn wait(&self, stop: &AtomicBool) -> bool {
        let mut guard = self.hung.lock().unwrap_or_else(|p| p.into_inner());
        let mut blocked = false;
        let held = *guard;
        if held {
            self.holding.fetch_add(1, Ordering::SeqCst);
        }
        while *guard && !stop.load(Ordering::Acquire) {
            blocked = true;
            // A timeout so a stop request is seen even without a notify.
            guard = self
                .thawed
                .wait_timeout(guard, std::time::Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        if held {
            self.holding.fetch_sub(1, Ordering::SeqCst);
        }
        blocked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[test]
    fn waiters_block_until_thawed() {
        let hang = Arc::new(Hang::default());
        let stop = Arc::new(AtomicBool::new(false));
        assert!(!hang.wait(&stop));
        assert!(!hang.set(true));
        let (h, s) = (hang.clone(), stop.clone());
        let start = Instant::now();
        let waiter = std::thread::spawn(move || h.wait(&s));
        std::thread::sleep(Duration::from_millis(150));
        assert!(!waiter.is_finished());
        assert!(hang.set(false));
        assert!(waiter.join().unwrap());
        assert!(start.elapsed() >= Duration::from_millis(150));
        // Stopping releases a waiter of a hung controller too.
        hang.set(true);
        stop.store(true, Ordering::Release);
        assert!(!hang.wait(&stop));
    }
}
