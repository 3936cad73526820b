//! High availability: two accelerators over the same (dual-ported) SSDs,
//! one active and one passive, with a fenced takeover. See
//! Documentation/ha.rst.
//!
//! - `fence.rs`: the ownership generation on every SSD, checked with
//!   every write;
//! - `heartbeat.rs`, `node.rs`: the pair's heartbeats, failure detection,
//!   takeover, handover and the state file;
//! - `path.rs`: the NVMe/TCP side (ANA state of this node's path);
//! - this file: dpuemu's start-up in a pair ([`HaRuntime`]).

pub mod config;
pub mod fence;
pub mod heartbeat;
pub mod media_heartbeat;
pub mod node;
pub mod path;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::{error, info, warn};

use crate::namespace::Namespace;
use crate::nvmf::config::TargetConfig;
use crate::nvmf::{ClaimedSsds, Target, VolumeLookup};
use config::HaConfig;
use fence::{Fence, FencedSsd};
use heartbeat::NodeState;
use node::{HaNode, Hooks, START_PASSIVE_ENV};
use path::{PathGate, ServingVolumes, StandbyVolumes};

/// What the node's watcher thread asks of the main thread.
enum Request {
    /// The fence is held: start serving, and answer.
    Promote(String),
}

/// dpuemu's side of the pair: wraps the SSDs, runs the passive phase,
/// starts the active target behind the path gate, hands over.
pub struct HaRuntime {
    pub config: HaConfig,
    fence: Arc<Fence>,
    gate: Arc<PathGate>,
    ssds: Vec<PathBuf>,
    node: Option<HaNode>,
    /// The passive phase's target and its stand-ins, which become the
    /// serving target at the takeover (the hosts' connections stay).
    standby: Option<(Arc<Target>, StandbyVolumes)>,
    /// Kept so that the promote hook's channel stays open.
    _requests: Option<Receiver<Request>>,
    answers: Option<SyncSender<Result<(), String>>>,
}

impl HaRuntime {
    /// Reads `--ha-config` and checks the rest of the command line against
    /// it.
    pub fn new(path: &Path, nvmf: Option<&TargetConfig>, power_loss: bool) -> Result<Self, String> {
        let config = config::load(path)?;
        let nvmf = nvmf.ok_or("--ha-config needs --nvmf-config (the pair serves NVMe/TCP)")?;
        path::check_config(nvmf).map_err(|e| format!("--ha-config with --nvmf-config: {e}"))?;
        if power_loss {
            // The simulated write cache holds writes past the fence check
            // and lets them reach the image later: ghost writes.
            return Err("--ha-config cannot be combined with --power-loss-sim".into());
        }
        crate::nvmf::FIRST_CNTLID.store(config.first_cntlid, std::sync::atomic::Ordering::Relaxed);
        Ok(Self {
            fence: Fence::new(&config.node),
            config,
            gate: PathGate::new(false),
            ssds: Vec::new(),
            node: None,
            standby: None,
            _requests: None,
            answers: None,
        })
    }

    /// SSD `index`, the image at `path`, with every write fenced.
    pub fn wrap_ssd(
        &mut self,
        inner: Arc<dyn Namespace>,
        path: &Path,
        index: usize,
    ) -> Result<Arc<dyn Namespace>, String> {
        self.ssds.push(path.to_path_buf());
        let ssd = FencedSsd::new(inner, path, index, self.fence.clone())
            .map_err(|e| format!("SSD image {}: {e}", path.display()))?;
        Ok(Arc::new(ssd))
    }

    /// The passive phase: serves the configuration's subsystems with
    /// inaccessible stand-ins (hosts add this path) and runs the node
    /// until it holds the fence. Returns with the SSDs fenced for this
    /// node, the stand-ins still served (inaccessible); the caller opens
    /// the volumes and calls [`HaRuntime::serve`]. `pending_exit` is
    /// polled for a signal that ends the process meanwhile.
    pub fn wait_for_media(
        &mut self,
        nvmf: &TargetConfig,
        mut pending_exit: impl FnMut() -> bool,
    ) -> Result<(), String> {
        let claimed = crate::nvmf::claim_ssds(nvmf, &[])?;
        let standins = StandbyVolumes::new(nvmf, self.gate.clone());
        let standby = Target::start_with(nvmf, &claimed, &standins)?;
        info!(
            "ha: node {}: passive path served (ANA inaccessible)",
            self.config.node
        );
        let (request_tx, requests) = mpsc::sync_channel(1);
        let (answer_tx, answers) = mpsc::sync_channel(1);
        let answers = Mutex::new(answers);
        let gate = self.gate.clone();
        let hooks = Hooks {
            promote: Box::new(move |why| {
                request_tx
                    .send(Request::Promote(why.to_string()))
                    .map_err(|_| "the main thread is gone".to_string())?;
                let answers = answers.lock().map_err(|_| "poisoned".to_string())?;
                answers
                    .recv()
                    .map_err(|_| "the main thread is gone".to_string())?
            }),
            demote: Box::new(move |why| {
                // Fail every command with a path error at once, then come
                // back as a clean passive node: the volumes' state in this
                // process is stale from now on.
                gate.close();
                warn!("ha: lost the media ({why}); restarting as passive");
                std::thread::spawn(|| {
                    std::thread::sleep(Duration::from_millis(100));
                    restart_passive();
                });
            }),
        };
        let node = HaNode::start(
            self.config.clone(),
            self.fence.clone(),
            self.ssds.clone(),
            hooks,
        )
        .map_err(|e| format!("ha: heartbeat socket {}: {e}", self.config.listen))?;
        self.node = Some(node);
        self.answers = Some(answer_tx);
        let why = loop {
            match requests.recv_timeout(Duration::from_millis(50)) {
                Ok(Request::Promote(why)) => break why,
                Err(RecvTimeoutError::Timeout) => {
                    if pending_exit() {
                        info!("ha: signal while passive: exiting");
                        std::process::exit(0);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return Err("ha: the node stopped".into()),
            }
        };
        self._requests = Some(requests);
        info!("ha: taking over ({why}): opening the volumes");
        self.standby = Some((standby, standins));
        Ok(())
    }

    /// Serves `volumes` behind the path gate and tells the node it
    /// serves (on error too). After a passive phase, the stand-ins become
    /// the volumes in place and every host that enabled it gets an ANA
    /// change notice, upon which it reads the ANA log (optimized now) and
    /// sends its queued I/O here at once; a node that started active
    /// starts its target.
    pub fn serve(
        &self,
        nvmf: &TargetConfig,
        claimed: &ClaimedSsds,
        volumes: &dyn VolumeLookup,
    ) -> Result<Arc<Target>, String> {
        let served = match &self.standby {
            Some((target, standins)) => standins.promote(volumes).map(|()| Arc::clone(target)),
            None => Target::start_with(
                nvmf,
                claimed,
                &ServingVolumes {
                    inner: volumes,
                    gate: self.gate.clone(),
                },
            ),
        };
        if let Ok(target) = &served {
            self.gate.open();
            if self.standby.is_some() {
                info!("ha: path optimized: ANA change notices to the hosts");
                notify_ana_change(target);
            }
        }
        if let Some(answers) = &self.answers {
            let _ = answers.send(served.as_ref().map(|_| ()).map_err(|e| e.clone()));
        }
        served
    }

    /// Stops the node's threads and the target (tests; a process simply
    /// exits).
    #[cfg(test)]
    pub fn stop(self) {
        if let Some(node) = self.node {
            node.stop();
        }
        if let Some((target, _)) = self.standby {
            target.shut_down();
        }
    }

    /// Tells the node that start-up failed after the fence.
    pub fn failed(&self, why: &str) {
        if let Some(answers) = &self.answers {
            let _ = answers.send(Err(why.to_string()));
        }
    }

    /// Orderly handover (SIGHUP): closes the path, lets `flush` make every
    /// acknowledged write durable, releases the fence, waits for the peer
    /// to serve, then restarts this process as the passive node. Refused
    /// (the node goes on serving) unless this node is active and a passive
    /// peer was heard within the timeout: nobody would take over.
    pub fn handover(&self, target: Option<&Target>, flush: impl FnOnce()) {
        if let Some(node) = &self.node {
            let s = node.status();
            let peer_ready = s.peer.as_ref().is_some_and(|(h, at)| {
                h.state == NodeState::Passive && at.elapsed() < self.config.timeout
            });
            if s.state != NodeState::Active || !peer_ready {
                warn!(
                    "ha: handover refused: this node is {} and no passive peer was heard \
                     within the timeout",
                    s.state.name()
                );
                return;
            }
        }
        info!("ha: handover requested");
        self.gate.close();
        if let Some(t) = target {
            t.shut_down();
        }
        flush();
        if let Some(node) = &self.node {
            node.handover();
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                let s = node.status();
                if s.state == NodeState::Passive
                    && s.peer.is_some_and(|(h, _)| h.state == NodeState::Active)
                {
                    info!("ha: the peer serves: restarting as passive");
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        restart_passive()
    }
}

/// Sends the ANA change notices from a thread of their own: a host that
/// does not read its socket must not hold the takeover up.
fn notify_ana_change(target: &Arc<Target>) {
    let t = Arc::clone(target);
    let spawned = std::thread::Builder::new()
        .name("ha-ana-notice".into())
        .spawn(move || t.notify_ana_change());
    if let Err(e) = spawned {
        warn!("ha: no thread for the ANA change notices ({e}): sending them here");
        target.notify_ana_change();
    }
}

/// Replaces the process with a fresh dpuemu of the same command line that
/// starts passive: nothing of the old volumes' state survives, the
/// sockets close (they are close-on-exec) and the fence locks go with
/// their files.
pub fn restart_passive() -> ! {
    use std::os::unix::process::CommandExt;
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let e = std::process::Command::new("/proc/self/exe")
        .args(args)
        .env(START_PASSIVE_ENV, "1")
        .exec();
    error!("ha: cannot restart: {e}");
    eprintln!("dpuemu: ha: cannot restart: {e}");
    // SAFETY: _exit takes an integer and ends the process without running
    // destructors: a node that lost the media must not flush anything.
    unsafe { libc::_exit(1) }
}
