//! The pair's configuration file (`--ha-config`): `key value` lines, `#`
//! comments, checked whole before anything starts.
//!
//! ```text
//! node dpu-a                  # this accelerator (1-23 bytes of [A-Za-z0-9._-])
//! listen 127.0.0.1:7800       # where its heartbeats arrive (UDP)
//! peer 127.0.0.1:7801         # where the other one's arrive
//! role active                 # active or passive: who starts as active
//! interval 100                # ms between heartbeats (10-10000)
//! timeout 1000                # ms of silence before a takeover (3 intervals at least)
//! fence-wait 10000            # ms a takeover waits for a frozen writer (100-600000)
//! controller-ids 1            # first NVMe controller ID of this node's target
//! status /run/dpuemu/ha.status   # the state file, rewritten on every change
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Which role a node starts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Active,
    Passive,
}

/// A checked configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HaConfig {
    pub node: String,
    pub listen: SocketAddr,
    pub peer: SocketAddr,
    pub role: Role,
    pub interval: Duration,
    pub timeout: Duration,
    pub fence_wait: Duration,
    pub first_cntlid: u16,
    pub status: Option<PathBuf>,
}

/// Longest node name: it must fit the fence record's owner field.
pub const MAX_NODE: usize = 23;
/// Highest first controller ID (Linux reserves 0xFFF0 and above).
pub const MAX_FIRST_CNTLID: u16 = 0xffe0;

fn valid_node(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NODE
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

fn millis(key: &str, v: &str, min: u64, max: u64) -> Result<Duration, String> {
    match v.parse::<u64>() {
        Ok(ms) if (min..=max).contains(&ms) => Ok(Duration::from_millis(ms)),
        _ => Err(format!("{key} '{v}' is not {min}-{max} (milliseconds)")),
    }
}

/// Parses and checks the file's text.
pub fn parse(text: &str) -> Result<HaConfig, String> {
    let mut node = None;
    let mut listen = None;
    let mut peer = None;
    let mut role = None;
    let mut interval = Duration::from_millis(100);
    let mut timeout = Duration::from_millis(1000);
    let mut fence_wait = Duration::from_secs(10);
    let mut first_cntlid = None;
    let mut status = None;
    let mut seen: Vec<String> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let at = |e: String| format!("line {}: {e}", n + 1);
        let mut words = line.split_whitespace();
        let key = words.next().unwrap_or("");
        let value = words
            .next()
            .ok_or_else(|| at(format!("'{key}' needs a value")))?;
        if words.next().is_some() {
            return Err(at(format!("'{key}' takes one value")));
        }
        if seen.iter().any(|k| k == key) {
            return Err(at(format!("'{key}' given twice")));
        }
        seen.push(key.to_string());
        let addr = |v: &str| {
            v.parse::<SocketAddr>()
                .map_err(|_| at(format!("'{v}' is not ADDRESS:PORT")))
        };
        match key {
            "node" if valid_node(value) => node = Some(value.to_string()),
            "node" => {
                return Err(at(format!(
                    "node name '{value}' is not 1-{MAX_NODE} bytes of [A-Za-z0-9._-]"
                )))
            }
            "listen" => listen = Some(addr(value)?),
            "peer" => peer = Some(addr(value)?),
            "role" => {
                role = Some(match value {
                    "active" => Role::Active,
                    "passive" => Role::Passive,
                    _ => return Err(at(format!("role '{value}' is not active or passive"))),
                })
            }
            "interval" => interval = millis(key, value, 10, 10_000).map_err(at)?,
            "timeout" => timeout = millis(key, value, 30, 600_000).map_err(at)?,
            "fence-wait" => fence_wait = millis(key, value, 100, 600_000).map_err(at)?,
            "controller-ids" => match value.parse::<u16>() {
                Ok(id) if (1..=MAX_FIRST_CNTLID).contains(&id) => first_cntlid = Some(id),
                _ => return Err(at(format!("controller-ids '{value}' is not 1-65504"))),
            },
            "status" => status = Some(PathBuf::from(value)),
            _ => return Err(at(format!("unknown key '{key}'"))),
        }
    }
    let node = node.ok_or("no 'node'")?;
    let listen = listen.ok_or("no 'listen'")?;
    let peer = peer.ok_or("no 'peer'")?;
    let role = role.ok_or("no 'role'")?;
    if listen == peer {
        return Err("'listen' and 'peer' are the same address".into());
    }
    if timeout < interval * 3 {
        return Err(format!(
            "timeout {} ms is less than 3 intervals ({} ms): one lost datagram would fail over",
            timeout.as_millis(),
            interval.as_millis() * 3
        ));
    }
    // Two controllers of one subsystem with the same ID are refused by
    // Linux's host, so the two nodes number theirs apart.
    let first_cntlid = first_cntlid.unwrap_or(match role {
        Role::Active => 1,
        Role::Passive => 0x8000,
    });
    Ok(HaConfig {
        node,
        listen,
        peer,
        role,
        interval,
        timeout,
        fence_wait,
        first_cntlid,
        status,
    })
}

/// Reads and checks the file at `path`.
pub fn load(path: &std::path::Path) -> Result<HaConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--ha-config {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("--ha-config {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "node dpu-a\nlisten 127.0.0.1:7800 # here\npeer 127.0.0.1:7801\n\
                        role active\ninterval 50\ntimeout 500\nstatus /tmp/s\n";

    #[test]
    fn a_good_file() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.node, "dpu-a");
        assert_eq!(c.role, Role::Active);
        assert_eq!(c.timeout, Duration::from_millis(500));
        assert_eq!(c.first_cntlid, 1);
        assert_eq!(c.status, Some(PathBuf::from("/tmp/s")));
        let p = parse(&GOOD.replace("role active", "role passive")).unwrap();
        assert_eq!(p.first_cntlid, 0x8000);
    }

    #[test]
    fn mistakes_name_their_line() {
        for (bad, why) in [
            ("node a b\n", "line 1: 'node' takes one value"),
            ("node\n", "'node' needs a value"),
            ("node dpu/a\n", "node name"),
            ("node 012345678901234567890123\n", "node name"),
            ("bogus 1\n", "unknown key"),
            ("node a\nnode b\n", "line 2: 'node' given twice"),
            ("listen 127.0.0.1\n", "not ADDRESS:PORT"),
            ("role leader\n", "not active or passive"),
            ("interval 5\n", "interval '5'"),
            ("controller-ids 0\n", "controller-ids"),
            ("controller-ids 65535\n", "controller-ids"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        let e = parse(&GOOD.replace("timeout 500", "timeout 100")).unwrap_err();
        assert!(e.contains("3 intervals"), "{e}");
        let e = parse(&GOOD.replace("7801", "7800")).unwrap_err();
        assert!(e.contains("same address"), "{e}");
        assert!(parse("node a\n").unwrap_err().contains("no 'listen'"));
    }
}
