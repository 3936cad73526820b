//! Worker threads: each services a fixed subset of a controller's I/O
//! submission queues (queue `q` belongs to worker `(q - 1) % workers`).
//!
//! A worker processes its queues while there is work, reading the shadow
//! doorbells when the host configured them. With `--poll-us`, after its
//! last command it keeps looking at them for a short polling window, first
//! yielding the CPU, then in short sleeps: a host that submits again within the window finds
//! the worker awake, so its shadow doorbell write is all it takes (no MMIO
//! doorbell, which on vfio-user is a synchronous socket message that stalls
//! the submitting vCPU). When the window passes without work, the worker
//! arms EventIdx (so the host's next doorbell update goes through MMIO,
//! which signals the worker), re-checks once, and then blocks on its
//! condition variable: an idle controller uses no CPU.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::{debug, error};

use crate::controller::Controller;

/// How long after its last command a worker keeps polling by default:
/// not at all. In the bench runs of 2026-12-04 (Documentation/
/// benchmarks.rst) a 200 µs window cost dpuemu 1.2 to 2.9 times the host
/// CPU per I/O and gained no row; `--poll-us` turns it on.
pub const DEFAULT_POLL_WINDOW: Duration = Duration::ZERO;

/// How long a polling worker only yields the CPU between looks, before it
/// switches to sleeping. Short: a guest under TCG takes tens of
/// microseconds to submit again, and yielding to nothing is spinning.
const YIELD_PHASE: Duration = Duration::from_micros(5);

/// Sleep between looks after the yield phase. Short enough for a host that
/// submits every few tens of microseconds (the guest under TCG), long
/// enough that a poll costs a small share of a core.
const POLL_SLEEP: Duration = Duration::from_micros(15);

/// Timer slack of worker threads, in nanoseconds: the default 50 µs would
/// stretch every polling sleep to several times its length.
const TIMER_SLACK_NS: libc::c_ulong = 5_000;

/// What a worker does between its last command and sleeping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Polling {
    /// How long it keeps looking at the doorbells (zero: it sleeps at
    /// once).
    pub window: Duration,
}

impl Default for Polling {
    fn default() -> Self {
        Self {
            window: DEFAULT_POLL_WINDOW,
        }
    }
}

/// Starts the worker threads of `controller` with the default polling.
#[cfg(test)]
pub fn spawn(controller: &Arc<Controller>) -> Vec<JoinHandle<()>> {
    spawn_with(controller, Polling::default())
}

/// Starts the worker threads of `controller`.
pub fn spawn_with(controller: &Arc<Controller>, polling: Polling) -> Vec<JoinHandle<()>> {
    (0..controller.workers())
        .filter_map(|index| {
            let ctrl = Arc::clone(controller);
            let name = format!("{}-io{index}", controller.config().name);
            thread::Builder::new()
                .name(name.clone())
                .spawn(move || run(&ctrl, index, polling))
                .inspect_err(|e| error!("cannot start worker {name}: {e}"))
                .ok()
        })
        .collect()
}

/// What a worker does after a pass over its queues found no work, `idle`
/// after its last command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pause {
    /// Give the CPU to anything runnable, then look again.
    Yield,
    /// Sleep briefly, then look again.
    Sleep(Duration),
    /// Arm EventIdx and sleep until signalled.
    Block,
}

fn pause(idle: Duration, polling: Polling) -> Pause {
    if idle >= polling.window {
        Pause::Block
    } else if idle < YIELD_PHASE {
        Pause::Yield
    } else {
        Pause::Sleep(POLL_SLEEP.min(polling.window - idle))
    }
}

fn run(controller: &Controller, index: usize, polling: Polling) {
    let Some(signal) = controller.signal(index) else {
        return;
    };
    // SAFETY: PR_SET_TIMERSLACK takes an integer and no pointer; it only
    // changes this thread's timer slack. A failure leaves the default.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, TIMER_SLACK_NS);
    }
    let stop = controller.stopping();
    debug!("{}: worker {index} running", controller.config().name);
    let mut last_work: Option<Instant> = None;
    while !stop.load(Ordering::Acquire) {
        if controller.service_queues(index) {
            last_work = Some(Instant::now());
            continue;
        }
        let idle = last_work.map_or(Duration::MAX, |t| t.elapsed());
        match pause(idle, polling) {
            Pause::Yield => thread::yield_now(),
            Pause::Sleep(d) => thread::sleep(d),
            Pause::Block => {
                last_work = None;
                if controller.arm_event_idx(index) {
                    continue;
                }
                signal.wait(stop);
            }
        }
    }
    debug!("{}: worker {index} stopped", controller.config().name);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_then_blocks() {
        let p = Polling {
            window: Duration::from_micros(200),
        };
        assert_eq!(pause(Duration::ZERO, p), Pause::Yield);
        assert_eq!(pause(Duration::from_micros(4), p), Pause::Yield);
        assert_eq!(pause(Duration::from_micros(5), p), Pause::Sleep(POLL_SLEEP));
        // The last sleep ends with the window.
        assert_eq!(
            pause(Duration::from_micros(195), p),
            Pause::Sleep(Duration::from_micros(5))
        );
        assert_eq!(pause(Duration::from_micros(200), p), Pause::Block);
        assert_eq!(pause(Duration::MAX, p), Pause::Block);
        // Without a window (the default) the worker sleeps as soon as it
        // runs dry.
        let off = Polling::default();
        assert_eq!(pause(Duration::ZERO, off), Pause::Block);
    }
}
