//! Two dpuemu processes as an HA pair over the same SSD images
//! (Documentation/ha.rst): start-up, a SIGKILLed active, a restarted node
//! coming back passive, a frozen (SIGSTOPped) active that finds itself
//! fenced when thawed, and an orderly handover (SIGHUP). What the nodes
//! say is read from their state files.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Node {
    name: &'static str,
    dir: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn start(name: &'static str, dir: &Path) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{name}.log")))
            .expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_dpuemu"))
            .arg("--socket-dir")
            .arg(dir.join(format!("sockets-{name}")))
            .arg("--ssd")
            .arg(format!("{}:64M", dir.join("ssd0.img").display()))
            .arg("--ssd")
            .arg(format!("{}:64M", dir.join("ssd1.img").display()))
            .arg("--nvmf-config")
            .arg(dir.join(format!("{name}.nvmf")))
            .arg("--ha-config")
            .arg(dir.join(format!("{name}.ha")))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn dpuemu");
        Self {
            name,
            dir: dir.to_path_buf(),
            child: Some(child),
        }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill only sends a signal to our own child process.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn status(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("{}.status", self.name))).unwrap_or_default()
    }

    fn field(&self, key: &str) -> Option<String> {
        self.status()
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ').map(str::to_string))
    }

    /// Waits until the state file says `state`; returns how long it took.
    fn wait(&self, state: &str, limit: Duration) -> Duration {
        self.wait_for("state", state, limit)
    }

    /// Waits until the state file says `value` for `key`.
    fn wait_for(&self, key: &str, value: &str, limit: Duration) -> Duration {
        let started = Instant::now();
        while self.field(key).as_deref() != Some(value) {
            if started.elapsed() > limit {
                let log = std::fs::read_to_string(self.dir.join(format!("{}.log", self.name)))
                    .unwrap_or_default();
                panic!(
                    "node {}: {key} not {value} within {limit:?}:\n{}\n--- log tail:\n{}",
                    self.name,
                    self.status(),
                    log.lines().rev().take(30).collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        started.elapsed()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_udp_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("udp");
    s.local_addr().expect("addr").port()
}

fn write_configs(dir: &Path) {
    let (ua, ub) = (free_udp_port(), free_udp_port());
    for (name, me, peer, role) in [("a", ua, ub, "active"), ("b", ub, ua, "passive")] {
        std::fs::write(
            dir.join(format!("{name}.nvmf")),
            "[port 1]\naddress 127.0.0.1\nservice 0\n\
             [volume db0]\nlayout raid10\nssds 0 1\nsize 16M\n\
             [subsystem nqn.2026-12.org.dpublk:ha-pair-test]\nports 1\nallow-any-host\n\
             namespace 1 volume db0\n",
        )
        .expect("nvmf config");
        std::fs::write(
            dir.join(format!("{name}.ha")),
            format!(
                "node dpu-{name}\nlisten 127.0.0.1:{me}\npeer 127.0.0.1:{peer}\nrole {role}\n\
                 interval 50\ntimeout 600\nstatus {}\n",
                dir.join(format!("{name}.status")).display()
            ),
        )
        .expect("ha config");
    }
}

#[test]
fn a_pair_of_processes_fails_over_fences_and_hands_over() {
    let dir = std::env::temp_dir().join(format!("dpuemu-ha-pair-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    write_configs(&dir);
    let long = Duration::from_secs(60);

    let mut a = Node::start("a", &dir);
    a.wait("active", long);
    let b = Node::start("b", &dir);
    b.wait("passive", long);
    b.wait_for("peer_state", "active", long);
    assert_eq!(a.field("fence_generation").as_deref(), Some("1"));

    // The active dies: the passive takes over after the timeout.
    a.kill();
    let took = b.wait("active", Duration::from_secs(10));
    eprintln!("takeover after SIGKILL: {took:?}");
    assert_eq!(b.field("fence_generation").as_deref(), Some("2"));
    let reason = b.field("last_failover_reason").unwrap_or_default();
    assert!(reason.starts_with("no heartbeat from dpu-a"), "{reason}");

    // Restarted, the old active sees the peer serving and stays passive.
    let a = Node::start("a", &dir);
    a.wait("passive", long);
    a.wait_for("peer_state", "active", long);
    assert_eq!(b.field("state").as_deref(), Some("active"));

    // The active is frozen: the passive fences it and serves; thawed, it
    // finds itself fenced and restarts (same process ID) as the passive.
    b.signal(libc::SIGSTOP);
    a.wait("active", Duration::from_secs(10));
    assert_eq!(a.field("fence_generation").as_deref(), Some("3"));
    b.signal(libc::SIGCONT);
    let b_pid = b.pid();
    std::thread::sleep(Duration::from_millis(300));
    b.wait("passive", long);
    b.wait_for("peer_state", "active", long);
    assert_eq!(b.pid(), b_pid);
    let b_log = std::fs::read_to_string(dir.join("b.log")).unwrap_or_default();
    assert!(
        b_log.contains("lost the media"),
        "the thawed node did not notice the fence"
    );
    assert_eq!(a.field("state").as_deref(), Some("active"));

    // Orderly handover back to b, at once (well under the timeout's
    // worth of missed heartbeats would be needed otherwise).
    a.signal(libc::SIGHUP);
    let took = b.wait("active", Duration::from_secs(10));
    eprintln!("handover: {took:?}");
    let reason = b.field("last_failover_reason").unwrap_or_default();
    assert!(reason.starts_with("handover from dpu-a"), "{reason}");
    assert_eq!(b.field("fence_generation").as_deref(), Some("4"));
    a.wait("passive", long);
    for n in ["a", "b"] {
        let log = std::fs::read_to_string(dir.join(format!("{n}.log"))).unwrap_or_default();
        assert!(!log.contains("panicked"), "node {n} panicked");
    }
    drop(a);
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}
