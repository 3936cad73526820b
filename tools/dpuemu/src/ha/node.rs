//! One node of the pair: heartbeats, failure detection, takeover, orderly
//! handover, and the state file.
//!
//! Two threads per node: a sender that sends the node's state every
//! interval (also while a takeover fences and opens volumes, so the peer
//! never mistakes a slow takeover for a dead node), and a watcher that
//! receives the peer's heartbeats and decides. What serving means (opening
//! the volumes, starting the target, stopping) is the caller's, through
//! [`Hooks`].

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use log::{error, info, warn};

use super::config::{HaConfig, Role};
use super::fence::Fence;
use super::heartbeat::{Heartbeat, NodeState, HEARTBEAT_BYTES};
use super::media_heartbeat::MediaHeartbeat;

/// Becoming active: see [`Hooks::promote`].
pub type PromoteHook = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;
/// Stopping at once: see [`Hooks::demote`].
pub type DemoteHook = Box<dyn Fn(&str) + Send + Sync>;

/// What becoming active and stopping mean for the caller.
pub struct Hooks {
    /// Called once the fence is held: replay, open the volumes, serve.
    /// An error leaves the node fenced-in but not serving (see
    /// [`NodeState::Fenced`]); the caller decides whether to exit.
    pub promote: PromoteHook,
    /// Called when this node must stop serving at once (the media was
    /// fenced by the peer, or the peer reported a newer generation): fail
    /// I/O with a path error, drop the volumes.
    pub demote: DemoteHook,
}

/// The last failover this node made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failover {
    /// When it completed (serving again), ms since the Unix epoch.
    pub at_ms: u64,
    /// Why it happened.
    pub reason: String,
    /// How long from the decision to serving.
    pub took: Duration,
}

/// What the state file shows.
#[derive(Clone, Debug)]
pub struct Status {
    pub state: NodeState,
    pub generation: u64,
    pub peer: Option<(Heartbeat, Instant)>,
    pub last_failover: Option<Failover>,
    pub last_error: Option<String>,
}

struct Shared {
    config: HaConfig,
    fence: Arc<Fence>,
    ssds: Vec<PathBuf>,
    socket: UdpSocket,
    /// The tie-breaker when the UDP link is silent (`None` if the images
    /// could not be opened for it: then silence alone decides).
    media: Option<MediaHeartbeat>,
    /// Set while the peer is silent over UDP but alive on the media (said
    /// once per outage).
    link_down: AtomicBool,
    status: Mutex<Status>,
    hooks: Hooks,
    stop: AtomicBool,
    sequence: AtomicU64,
    /// Set when [`HaNode::handover`] asks to hand over.
    handover: AtomicBool,
    started: Instant,
}

/// A running node.
pub struct HaNode {
    shared: Arc<Shared>,
    /// Joined only by [`HaNode::stop`] (tests): a process simply exits.
    #[cfg_attr(not(test), expect(dead_code))]
    threads: Vec<JoinHandle<()>>,
}

fn lock(m: &Mutex<Status>) -> MutexGuard<'_, Status> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl HaNode {
    /// Binds `config.listen` and starts the node over the SSD images
    /// `ssds`, in `start` state (`Passive`, or `Active` after a fence when
    /// its role is active and no peer is heard owning the media).
    pub fn start(
        config: HaConfig,
        fence: Arc<Fence>,
        ssds: Vec<PathBuf>,
        hooks: Hooks,
    ) -> io::Result<Self> {
        let socket = UdpSocket::bind(config.listen)?;
        Self::start_on(config, socket, fence, ssds, hooks)
    }

    /// As [`HaNode::start`] on a socket bound already (tests bind port 0).
    pub fn start_on(
        config: HaConfig,
        socket: UdpSocket,
        fence: Arc<Fence>,
        ssds: Vec<PathBuf>,
        hooks: Hooks,
    ) -> io::Result<Self> {
        socket.set_read_timeout(Some(config.interval))?;
        let media = MediaHeartbeat::open(&config.node, &ssds, config.role)
            .inspect_err(|e| {
                warn!("ha: no media heartbeat ({e}): a silent heartbeat link means a takeover")
            })
            .ok();
        let shared = Arc::new(Shared {
            config,
            fence,
            ssds,
            socket,
            media,
            link_down: AtomicBool::new(false),
            status: Mutex::new(Status {
                state: NodeState::Passive,
                generation: 0,
                peer: None,
                last_failover: None,
                last_error: None,
            }),
            hooks,
            stop: AtomicBool::new(false),
            sequence: AtomicU64::new(0),
            handover: AtomicBool::new(false),
            started: Instant::now(),
        });
        let weak = Arc::downgrade(&shared);
        shared.fence.on_superseded(Box::new(move |generation| {
            if let Some(s) = weak.upgrade() {
                s.lose(&format!(
                    "a write found fence generation {generation} on the media"
                ));
            }
        }));
        shared.write_status();
        let mut threads = Vec::new();
        let s = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("ha-send".into())
                .spawn(move || s.send_loop())?,
        );
        let s = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("ha-watch".into())
                .spawn(move || s.watch_loop())?,
        );
        Ok(Self { shared, threads })
    }

    /// The current status.
    pub fn status(&self) -> Status {
        lock(&self.shared.status).clone()
    }

    /// Orderly handover (maintenance, failback): the caller has stopped
    /// serving and flushed; the fence is released and the peer told to
    /// take over at once.
    pub fn handover(&self) {
        self.shared.handover.store(true, Ordering::Release);
    }

    /// Stops both threads (tests; a process simply exits).
    #[cfg(test)]
    pub fn stop(mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Shared {
    fn set_state(&self, state: NodeState) {
        let mut s = lock(&self.status);
        if s.state != state {
            info!(
                "ha: node {}: {} -> {}",
                self.config.node,
                s.state.name(),
                state.name()
            );
            s.state = state;
        }
        drop(s);
        self.write_status();
    }

    fn heartbeat(&self) -> Heartbeat {
        let s = lock(&self.status);
        Heartbeat {
            state: s.state,
            generation: s.generation,
            sequence: self.sequence.fetch_add(1, Ordering::Relaxed),
            node: self.config.node.clone(),
        }
    }

    fn send_loop(&self) {
        let mut warned = false;
        let mut media_warned = false;
        while !self.stop.load(Ordering::Acquire) {
            let heartbeat = self.heartbeat();
            if let (Some(media), true) = (&self.media, heartbeat.state.owns_media()) {
                match media.beat() {
                    Err(e) if !media_warned => {
                        warn!("ha: media heartbeat: {e}");
                        media_warned = true;
                    }
                    Err(_) => {}
                    Ok(()) => media_warned = false,
                }
            }
            let h = heartbeat.encode();
            if let Err(e) = self.socket.send_to(&h, self.config.peer) {
                // The peer's host may be down: that is what the peer's
                // silence will tell the watcher. Say it once.
                if !warned {
                    warn!("ha: heartbeat to {}: {e}", self.config.peer);
                    warned = true;
                }
            } else {
                warned = false;
            }
            std::thread::sleep(self.config.interval);
        }
    }

    /// Receives what arrived within one interval; `None` on silence.
    fn receive(&self) -> Option<Heartbeat> {
        let mut buf = [0u8; HEARTBEAT_BYTES + 1];
        let mut last = None;
        while let Ok((n, from)) = self.socket.recv_from(&mut buf) {
            if let Some(h) = self.accept(&buf[..n], from) {
                last = Some(h);
                // Drain what queued, without waiting again.
                let _ = self.socket.set_nonblocking(true);
            }
        }
        let _ = self.socket.set_nonblocking(false);
        last
    }

    /// A heartbeat from the peer, or `None` for anything else.
    fn accept(&self, bytes: &[u8], from: SocketAddr) -> Option<Heartbeat> {
        let h = Heartbeat::decode(bytes)?;
        // Only the configured peer's address counts (a datagram from
        // elsewhere, or our own name echoed, is not the peer).
        if from.ip() != self.config.peer.ip() || h.node == self.config.node {
            return None;
        }
        Some(h)
    }

    fn watch_loop(&self) {
        if self.config.role == Role::Active && std::env::var_os(START_PASSIVE_ENV).is_none() {
            // Look for a peer that already serves (this node restarted
            // after a failover) before fencing it off.
            let deadline = Instant::now() + self.config.interval * 3;
            while Instant::now() < deadline && !self.stop.load(Ordering::Acquire) {
                if let Some(h) = self.receive() {
                    self.heard(h);
                }
                self.observe_media();
            }
            let peer_owns = lock(&self.status)
                .peer
                .as_ref()
                .is_some_and(|(h, _)| h.state.owns_media());
            if peer_owns || self.peer_alive_on_media() {
                info!("ha: the peer serves: starting passive");
            } else {
                self.take_over("start-up in the active role");
            }
        }
        while !self.stop.load(Ordering::Acquire) {
            if let Some(h) = self.receive() {
                self.heard(h);
            }
            self.observe_media();
            self.decide();
        }
    }

    fn observe_media(&self) {
        if let Some(media) = &self.media {
            media.observe();
        }
    }

    /// Whether the peer's media heartbeat moved within the timeout.
    fn peer_alive_on_media(&self) -> bool {
        self.media
            .as_ref()
            .is_some_and(|m| m.peer_alive(self.config.timeout))
    }

    fn heard(&self, h: Heartbeat) {
        if self.link_down.swap(false, Ordering::AcqRel) {
            info!("ha: heartbeats from {} again", h.node);
        }
        let mut s = lock(&self.status);
        let changed = s.peer.as_ref().is_none_or(|(p, _)| p.state != h.state);
        if changed {
            info!(
                "ha: peer {} is {} (generation {})",
                h.node,
                h.state.name(),
                h.generation
            );
        }
        s.peer = Some((h, Instant::now()));
        drop(s);
        if changed {
            self.write_status();
        }
    }

    fn decide(&self) {
        let (state, generation, peer) = {
            let s = lock(&self.status);
            (s.state, s.generation, s.peer.clone())
        };
        let timeout = self.config.timeout;
        match state {
            NodeState::Active if self.handover.swap(false, Ordering::AcqRel) => {
                self.fence.release();
                lock(&self.status).generation = 0;
                self.set_state(NodeState::HandingOver);
            }
            NodeState::Active => {
                if let Some((h, _)) = &peer {
                    if h.state.owns_media() && h.generation > generation {
                        self.lose(&format!(
                            "peer {} reports fence generation {} above {generation}",
                            h.node, h.generation
                        ));
                    }
                }
            }
            NodeState::HandingOver | NodeState::Fenced => {
                // Back to watching once the peer serves (or, when no peer
                // ever takes over, stay: the operator decides).
                if peer
                    .as_ref()
                    .is_some_and(|(h, _)| h.state == NodeState::Active)
                {
                    self.set_state(NodeState::Passive);
                }
            }
            NodeState::Passive => {
                let silent_since = peer.as_ref().map_or(self.started, |(_, at)| *at);
                match &peer {
                    Some((h, at))
                        if h.state == NodeState::HandingOver && at.elapsed() < timeout =>
                    {
                        self.take_over(&format!("handover from {}", h.node));
                    }
                    // Only the heartbeat link is down: the peer still
                    // writes its heartbeat on the media. Taking over would
                    // fence a healthy node (and be fenced back).
                    _ if silent_since.elapsed() >= timeout && self.peer_alive_on_media() => {
                        self.link_is_down(silent_since.elapsed());
                    }
                    _ if silent_since.elapsed() >= timeout => {
                        let who = peer
                            .as_ref()
                            .map_or("the peer".to_string(), |(h, _)| h.node.clone());
                        self.take_over(&format!(
                            "no heartbeat from {who} for {} ms",
                            silent_since.elapsed().as_millis()
                        ));
                    }
                    // Both passive (nobody serves): the node whose role is
                    // active takes over; the other waits for it.
                    Some((h, at))
                        if !h.state.owns_media()
                            && h.state != NodeState::HandingOver
                            && self.config.role == Role::Active
                            && self.started.elapsed() >= timeout
                            && at.elapsed() < timeout =>
                    {
                        self.take_over(&format!(
                            "peer {} is {}: nobody serves",
                            h.node,
                            h.state.name()
                        ));
                    }
                    _ => {}
                }
            }
            NodeState::TakingOver => {}
        }
    }

    /// The peer is silent over UDP but alive on the media: says so once
    /// per outage, in the log and the state file.
    fn link_is_down(&self, silent: Duration) {
        if self.link_down.swap(true, Ordering::AcqRel) {
            return;
        }
        let why = format!(
            "no heartbeat from the peer for {} ms, but its media heartbeat moves: \
             heartbeat link down? not taking over",
            silent.as_millis()
        );
        warn!("ha: {why}");
        lock(&self.status).last_error = Some(why);
        self.write_status();
    }

    /// Fences the SSDs (retrying while a frozen writer holds one), then
    /// promotes.
    fn take_over(&self, reason: &str) {
        let decided = Instant::now();
        info!("ha: node {} takes over: {reason}", self.config.node);
        self.set_state(NodeState::TakingOver);
        let generation = loop {
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            match self.fence.take(&self.ssds, self.config.fence_wait) {
                Ok(g) => break g,
                Err(e) => {
                    error!("ha: fence: {e}; trying again");
                    lock(&self.status).last_error = Some(format!("fence: {e}"));
                    self.write_status();
                    std::thread::sleep(self.config.interval);
                }
            }
        };
        lock(&self.status).generation = generation;
        match (self.hooks.promote)(reason) {
            Ok(()) => {
                let took = decided.elapsed();
                {
                    let mut s = lock(&self.status);
                    s.last_failover = Some(Failover {
                        at_ms: unix_ms(SystemTime::now()),
                        reason: reason.to_string(),
                        took,
                    });
                    s.last_error = None;
                }
                info!(
                    "ha: node {} active with fence generation {generation} after {} ms",
                    self.config.node,
                    took.as_millis()
                );
                self.set_state(NodeState::Active);
            }
            Err(e) => {
                error!(
                    "ha: node {} cannot serve after the fence: {e}",
                    self.config.node
                );
                self.fence.release();
                {
                    let mut s = lock(&self.status);
                    s.generation = 0;
                    s.last_error = Some(format!("promote: {e}"));
                }
                self.set_state(NodeState::Fenced);
            }
        }
    }

    /// This node lost the media: stop serving now.
    fn lose(&self, why: &str) {
        let state = lock(&self.status).state;
        if !matches!(state, NodeState::Active | NodeState::TakingOver) {
            return;
        }
        error!("ha: node {} fenced: {why}", self.config.node);
        self.fence.release();
        {
            let mut s = lock(&self.status);
            s.generation = 0;
            s.last_error = Some(format!("fenced: {why}"));
        }
        self.set_state(NodeState::Fenced);
        (self.hooks.demote)(why);
    }

    fn write_status(&self) {
        let Some(path) = &self.config.status else {
            return;
        };
        let text = render(&self.config, &lock(&self.status));
        if let Err(e) = write_atomically(path, &text) {
            warn!("ha: status file {}: {e}", path.display());
        }
    }
}

/// Set in the environment of a node that re-executes itself after losing
/// the media: it starts passive whatever its role.
pub const START_PASSIVE_ENV: &str = "DPUEMU_HA_START_PASSIVE";

/// The state file's text: `key value` lines.
pub fn render(config: &HaConfig, s: &Status) -> String {
    let mut out = format!(
        "node {}\nrole {}\nstate {}\nfence_generation {}\n",
        config.node,
        match config.role {
            Role::Active => "active",
            Role::Passive => "passive",
        },
        s.state.name(),
        s.generation
    );
    match &s.peer {
        Some((h, at)) => out.push_str(&format!(
            "peer {}\npeer_state {}\npeer_generation {}\npeer_heard_ms_ago {}\n",
            h.node,
            h.state.name(),
            h.generation,
            at.elapsed().as_millis()
        )),
        None => out.push_str("peer none\npeer_state unknown\n"),
    }
    match &s.last_failover {
        Some(f) => out.push_str(&format!(
            "last_failover_unix_ms {}\nlast_failover_took_ms {}\nlast_failover_reason {}\n",
            f.at_ms,
            f.took.as_millis(),
            f.reason
        )),
        None => out.push_str("last_failover_unix_ms none\n"),
    }
    if let Some(e) = &s.last_error {
        out.push_str(&format!("last_error {e}\n"));
    }
    out
}

fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
#[path = "node_tests.rs"]
mod tests;
