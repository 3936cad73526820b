//! Worker threads: each services a fixed subset of a controller's I/O
//! submission queues (queue `q` belongs to worker `(q - 1) % workers`).
//!
//! A worker processes its queues while there is work, reading the shadow
//! doorbells when the host configured them. When a pass finds nothing, it
//! arms EventIdx (so the host's next doorbell update goes through MMIO,
//! which signals the worker), re-checks once, and then blocks on its
//! condition variable: an idle controller uses no CPU.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use log::{debug, error};

use crate::controller::Controller;

/// Starts the worker threads of `controller`.
pub fn spawn(controller: &Arc<Controller>) -> Vec<JoinHandle<()>> {
    (0..controller.workers())
        .filter_map(|index| {
            let ctrl = Arc::clone(controller);
            let name = format!("{}-io{index}", controller.config().name);
            thread::Builder::new()
                .name(name.clone())
                .spawn(move || run(&ctrl, index))
                .inspect_err(|e| error!("cannot start worker {name}: {e}"))
                .ok()
        })
        .collect()
}

fn run(controller: &Controller, index: usize) {
    let Some(signal) = controller.signal(index) else {
        return;
    };
    let stop = controller.stopping();
    debug!("{}: worker {index} running", controller.config().name);
    while !stop.load(Ordering::Acquire) {
        if controller.service_queues(index) {
            continue;
        }
        if controller.arm_event_idx(index) {
            continue;
        }
        signal.wait(stop);
    }
    debug!("{}: worker {index} stopped", controller.config().name);
}
