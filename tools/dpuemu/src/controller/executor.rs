//! Threads that run a controller's I/O commands side by side.
//!
//! A worker that finds several commands in a submission queue hands all
//! but the last to these threads and runs the last itself, so one command
//! that blocks in the backing store (a write waiting for the host file
//! system's journal, a read of a cold page) does not hold up the others,
//! as the many in-flight commands of a real device would not. A lone
//! command runs in the worker, without a thread hop.
//!
//! Threads start with the first command handed over and exit once the
//! controller (which owns the [`Executor`]) is gone and their queue drains.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;

use log::error;

/// A command's work, run on one of the threads.
pub(super) type Job = Box<dyn FnOnce() + Send + 'static>;

/// Threads running jobs in the order they arrive.
pub(super) struct Executor {
    jobs: Sender<Job>,
}

impl Executor {
    /// Starts `threads` threads named after `name`; `None` if none started.
    pub(super) fn start(name: &str, threads: usize) -> Option<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let started = (0..threads)
            .filter(|i| {
                let queue = Arc::clone(&queue);
                thread::Builder::new()
                    .name(format!("{name}-exec{i}"))
                    .spawn(move || run(&queue))
                    .inspect_err(|e| error!("{name}: cannot start executor thread {i}: {e}"))
                    .is_ok()
            })
            .count();
        (started > 0).then_some(Self { jobs })
    }

    /// Queues `job`; gives it back if no thread is left to run it.
    pub(super) fn run(&self, job: Job) -> Result<(), Job> {
        self.jobs.send(job).map_err(|e| e.0)
    }
}

fn run(queue: &Mutex<Receiver<Job>>) {
    loop {
        let job = {
            let queue = queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.recv()
        };
        match job {
            Ok(job) => job(),
            // The executor is gone: nothing more will come.
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    #[test]
    fn runs_jobs_side_by_side() {
        let exec = Executor::start("test", 4).unwrap();
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (done_tx, done_rx) = mpsc::channel();
        for _ in 0..4 {
            let (running, peak, done) = (running.clone(), peak.clone(), done_tx.clone());
            let job: Job = Box::new(move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                // Each job blocks until all four run at once (or a
                // deadline passes, which the assertion below catches).
                let deadline = Instant::now() + Duration::from_secs(5);
                while peak.load(Ordering::SeqCst) < 4 && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(1));
                }
                running.fetch_sub(1, Ordering::SeqCst);
                done.send(()).unwrap();
            });
            assert!(exec.run(job).is_ok());
        }
        for _ in 0..4 {
            done_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 4, "jobs did not overlap");
    }
}
