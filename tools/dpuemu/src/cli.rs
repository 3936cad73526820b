//! Command line.

use std::path::PathBuf;

use crate::controller::hostile::HostileSpec;
use crate::zoned::{ZoneConfig, DEFAULT_MAX_ZONES};

/// Usage text printed by `--help`.
pub const USAGE: &str = "\
dpuemu - the dpublk storage accelerator, emulated as vfio-user PCIe functions

Usage: dpuemu --socket-dir DIR [options]

Serves one accelerator function (DIR/accel.sock) and one local NVMe SSD
function per --ssd (DIR/ssd0.sock, DIR/ssd1.sock, ...) to QEMU's
vfio-user-pci devices. Prints 'dpuemu: ready' to stderr once every socket
listens. SIGTERM or SIGINT flushes the media and removes the sockets.
SIGUSR1 (a test hook) makes the accelerator lose its next I/O command.
SIGUSR2 is a power cut when --power-loss-sim is given (ignored otherwise).

Options:
  --socket-dir DIR       directory for the vfio-user sockets (created)
  --ssd PATH[:SIZE]      an SSD image; with SIZE (bytes, or K/M/G/T suffix)
                         the file is created or extended to SIZE; repeatable
  --zoned-ssd N[:ZONE_SIZE[:ZONE_CAP[:MAX_OPEN[:MAX_ACTIVE]]]]
                         SSD N's function is a Zoned Namespace SSD (NVMe
                         ZNS, Documentation/zns.rst): zones of ZONE_SIZE
                         (a power of two, K/M/G suffix, default 16M) with
                         ZONE_CAP writable bytes each (default ZONE_SIZE),
                         at most MAX_OPEN open (default 14) and MAX_ACTIVE
                         active zones (default the larger of 14 and
                         MAX_OPEN); an empty field takes its default; zone
                         states live at the end of the image; repeatable
  --passthrough-ssd N    expose SSD N's whole image as namespace 1 of the
                         accelerator; SSD N is owned by the accelerator from
                         startup, so its own NVMe function refuses to enable
  --io-queues N          I/O queue pairs per function (1-255, default 4)
  --workers N            I/O worker threads per function (1-64, default 2)
  --poll-us N            after its last command a worker keeps polling the
                         shadow doorbells for N microseconds before it sleeps
                         (0-10000, default 0: sleep at once)
  --log-level LEVEL      error, warn, info, debug or trace (default info)
  --power-loss-sim SEED  power-loss testing: every SSD image gets a volatile
                         write cache (drive cache and host page cache) that
                         reads see and only a flush (NVMe Flush, FUA write,
                         the engine's commits) writes to the image and
                         fdatasyncs; SIGUSR2 then cuts the power (once a
                         cache holds unflushed data, waiting at most 3 s):
                         a random subset of each cache's 512-byte sectors (seeded by
                         SEED, logged) reaches the image, the rest is lost,
                         and dpuemu exits (status 3) at once without
                         flushing
  --power-loss-report PATH  append each power cut's report (seed, sectors
                         kept and lost per SSD, the sectors written) to PATH
  --hostile RATE[:SEED[:KINDS]][@hook]
                         test mode: one accelerator I/O completion in RATE
                         breaks the protocol (seeded, SEED default 1), and
                         one admin payload in RATE/16 (at least 2) holds a
                         value the interface forbids; KINDS a comma list of
                         wrong-cid, stale-generation, duplicate, wrong-sqid,
                         sq-head, phase, status, irq-storm, never-complete,
                         identify, vendor-payload (default: all but
                         never-complete); @hook: off until the test-hook
                         register turns it on
  --nvmf-config FILE     serve NVMe/TCP from the subsystems, namespaces and
                         ports of FILE (Documentation/nvme-tcp.rst); listens only
                         on the addresses FILE names; its [remote-ssd]
                         sections add remote NVMe/TCP namespaces as SSDs
  --ha-config FILE       one node of an active/passive pair over the same
                         SSD images (Documentation/ha.rst); needs
                         --nvmf-config; SIGHUP hands over to the peer
  --metadata-cache SIZE  memory for each pool's metadata cache (bytes, or
                         K/M/G suffix; 256K to 64G, default 256M): new pools
                         keep their metadata on the SSDs, paged through it
  --scrub-rate SIZE      the most SSD bytes per second a scrub reads, over
                         all its members (M/G suffix, at least 1M; default
                         0: no limit)
  -h, --help             print this help
  -V, --version          print the version
";

/// One `--ssd` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SsdSpec {
    /// Image path.
    pub path: PathBuf,
    /// Size to create or extend the image to.
    pub size: Option<u64>,
}

/// Parsed options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub socket_dir: PathBuf,
    pub ssds: Vec<SsdSpec>,
    pub passthrough_ssd: Option<usize>,
    pub io_queues: u16,
    pub workers: usize,
    /// `--poll-us`: how long an idle worker keeps polling, in
    /// microseconds.
    pub poll_us: u32,
    pub log_level: log::LevelFilter,
    /// Seed of the power-loss simulation (`--power-loss-sim`), if on.
    pub power_loss_seed: Option<u64>,
    /// `--hostile`: the accelerator breaks the protocol on purpose.
    pub hostile: Option<HostileSpec>,
    /// File the power cut's report is appended to (`--power-loss-report`).
    pub power_loss_report: Option<PathBuf>,
    /// NVMe/TCP target configuration (`--nvmf-config`).
    pub nvmf_config: Option<PathBuf>,
    /// High-availability pair configuration (`--ha-config`).
    pub ha_config: Option<PathBuf>,
    /// Bytes of each pool's metadata cache (`--metadata-cache`).
    pub metadata_cache: u64,
    /// `--zoned-ssd`: SSD index and zone layout, one per zoned SSD.
    pub zoned_ssds: Vec<(usize, ZoneConfig)>,
    /// Member bytes per second a scrub may read, 0 for no limit
    /// (`--scrub-rate`).
    pub scrub_rate: u64,
}

/// Most open or active zones `--zoned-ssd` accepts.
const MAX_ZONE_RESOURCES: u32 = 65_536;

/// Parses `--zoned-ssd N[:ZONE_SIZE[:ZONE_CAP[:MAX_OPEN[:MAX_ACTIVE]]]]`.
fn parse_zoned_ssd(text: &str) -> Result<(usize, ZoneConfig), String> {
    let option = "--zoned-ssd";
    let mut fields = text.split(':');
    let index = parse_number(option, fields.next().unwrap_or(""), 0usize, 63)?;
    let field = |f: Option<&str>| f.filter(|v| !v.is_empty()).map(str::to_string);
    let (zone, cap, open, active) = (
        field(fields.next()),
        field(fields.next()),
        field(fields.next()),
        field(fields.next()),
    );
    if fields.next().is_some() {
        return Err(format!("{option} '{text}': too many fields"));
    }
    let mut config = ZoneConfig::default();
    if let Some(zone) = zone {
        config.zone_bytes = parse_size(&zone).map_err(|e| format!("{option}: {e}"))?;
    }
    config.capacity_bytes = match cap {
        Some(cap) => parse_size(&cap).map_err(|e| format!("{option}: {e}"))?,
        None => config.zone_bytes,
    };
    if let Some(open) = open {
        config.max_open = parse_number(option, &open, 1, MAX_ZONE_RESOURCES)?;
    }
    config.max_active = match active {
        Some(active) => parse_number(option, &active, 1, MAX_ZONE_RESOURCES)?,
        None => config.max_open.max(DEFAULT_MAX_ZONES),
    };
    config
        .validate()
        .map_err(|e| format!("{option} '{text}': {e}"))?;
    Ok((index, config))
}

/// Default and bounds of `--metadata-cache`.
pub const METADATA_CACHE_DEFAULT: u64 = 256 << 20;
const METADATA_CACHE_MAX: u64 = 64 << 30;

fn parse_metadata_cache(text: &str) -> Result<u64, String> {
    let bytes = parse_size(text).map_err(|e| format!("--metadata-cache: {e}"))?;
    let min = dpu_engine::volume::MIN_CACHE_BYTES as u64;
    if !(min..=METADATA_CACHE_MAX).contains(&bytes) {
        return Err(format!(
            "--metadata-cache {text}: outside {}K..={}G",
            min >> 10,
            METADATA_CACHE_MAX >> 30
        ));
    }
    Ok(bytes)
}

/// `--scrub-rate`: 0 (no limit) or at least 1M bytes per second.
fn parse_scrub_rate(text: &str) -> Result<u64, String> {
    if text.trim() == "0" {
        return Ok(0);
    }
    let rate = parse_size(text).map_err(|e| format!("--scrub-rate: {e}"))?;
    if rate < 1 << 20 {
        return Err(format!("--scrub-rate {text}: 0 (no limit) or at least 1M"));
    }
    Ok(rate)
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Boxed: the options are far larger than the other variants.
    Run(Box<Options>),
    Help,
    Version,
}

/// Parses a size with an optional binary suffix (K, M, G, T).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, shift) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("unknown size suffix in '{text}'")),
            };
            (&text[..i], shift)
        }
        _ => (text, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid size '{text}'"))?;
    n.checked_mul(1u64 << shift)
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("size '{text}' out of range"))
}

fn parse_ssd(text: &str) -> Result<SsdSpec, String> {
    // A size suffix is the part after the last ':' if it parses as a size,
    // so paths containing ':' still work without one.
    if let Some((path, size)) = text.rsplit_once(':') {
        if let Ok(size) = parse_size(size) {
            if path.is_empty() {
                return Err(format!("--ssd '{text}': empty path"));
            }
            return Ok(SsdSpec {
                path: PathBuf::from(path),
                size: Some(size),
            });
        }
    }
    if text.is_empty() {
        return Err("--ssd: empty path".into());
    }
    Ok(SsdSpec {
        path: PathBuf::from(text),
        size: None,
    })
}

fn parse_number<T: std::str::FromStr + PartialOrd + Copy + std::fmt::Display>(
    option: &str,
    text: &str,
    min: T,
    max: T,
) -> Result<T, String> {
    let v: T = text
        .parse()
        .map_err(|_| format!("{option}: '{text}' is not a number"))?;
    if v < min || v > max {
        return Err(format!("{option}: {v} not in {min}..={max}"));
    }
    Ok(v)
}

/// Parses the arguments (without the program name).
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Command, String> {
    let mut socket_dir = None;
    let mut ssds = Vec::new();
    let mut passthrough_ssd = None;
    let mut io_queues = 4u16;
    let mut workers = 2usize;
    let mut poll_us = crate::worker::DEFAULT_POLL_WINDOW.as_micros() as u32;
    let mut log_level = log::LevelFilter::Info;
    let mut power_loss_seed = None;
    let mut hostile = None;
    let mut power_loss_report = None;
    let mut nvmf_config = None;
    let mut ha_config = None;
    let mut metadata_cache = METADATA_CACHE_DEFAULT;
    let mut zoned_ssds: Vec<(usize, ZoneConfig)> = Vec::new();
    let mut scrub_rate = 0;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match name.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--socket-dir" => socket_dir = Some(PathBuf::from(value("--socket-dir")?)),
            "--ssd" => ssds.push(parse_ssd(&value("--ssd")?)?),
            "--zoned-ssd" => zoned_ssds.push(parse_zoned_ssd(&value("--zoned-ssd")?)?),
            "--passthrough-ssd" => {
                passthrough_ssd = Some(parse_number(
                    "--passthrough-ssd",
                    &value("--passthrough-ssd")?,
                    0,
                    63,
                )?)
            }
            "--io-queues" => {
                io_queues = parse_number("--io-queues", &value("--io-queues")?, 1, 255)?
            }
            "--workers" => workers = parse_number("--workers", &value("--workers")?, 1, 64)?,
            "--poll-us" => poll_us = parse_number("--poll-us", &value("--poll-us")?, 0, 10_000)?,
            "--log-level" => {
                let v = value("--log-level")?;
                log_level = v
                    .parse()
                    .map_err(|_| format!("--log-level: unknown level '{v}'"))?;
            }
            "--power-loss-sim" => {
                power_loss_seed = Some(parse_number(
                    "--power-loss-sim",
                    &value("--power-loss-sim")?,
                    0,
                    u64::MAX,
                )?)
            }
            "--hostile" => hostile = Some(HostileSpec::parse(&value("--hostile")?)?),
            "--power-loss-report" => {
                power_loss_report = Some(PathBuf::from(value("--power-loss-report")?))
            }
            "--nvmf-config" => nvmf_config = Some(PathBuf::from(value("--nvmf-config")?)),
            "--ha-config" => ha_config = Some(PathBuf::from(value("--ha-config")?)),
            "--metadata-cache" => {
                metadata_cache = parse_metadata_cache(&value("--metadata-cache")?)?
            }
            "--scrub-rate" => scrub_rate = parse_scrub_rate(&value("--scrub-rate")?)?,
            other => return Err(format!("unknown argument '{other}' (see --help)")),
        }
    }
    let socket_dir = socket_dir.ok_or("--socket-dir is required (see --help)")?;
    if power_loss_report.is_some() && power_loss_seed.is_none() {
        return Err("--power-loss-report needs --power-loss-sim".into());
    }
    if let Some(n) = passthrough_ssd {
        if n >= ssds.len() {
            return Err(format!(
                "--passthrough-ssd {n}: only {} SSD(s) given",
                ssds.len()
            ));
        }
    }
    for (i, (n, _)) in zoned_ssds.iter().enumerate() {
        if *n >= ssds.len() {
            return Err(format!("--zoned-ssd {n}: only {} SSD(s) given", ssds.len()));
        }
        if zoned_ssds[..i].iter().any(|(m, _)| m == n) {
            return Err(format!("--zoned-ssd {n}: given twice"));
        }
        if passthrough_ssd == Some(*n) {
            return Err(format!(
                "--zoned-ssd {n}: SSD {n} is the accelerator's passthrough namespace"
            ));
        }
    }
    Ok(Command::Run(Box::new(Options {
        socket_dir,
        ssds,
        passthrough_ssd,
        io_queues,
        workers,
        poll_us,
        log_level,
        power_loss_seed,
        hostile,
        power_loss_report,
        nvmf_config,
        ha_config,
        metadata_cache,
        zoned_ssds,
        scrub_rate,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert!(parse_size("0").is_err());
        assert!(parse_size("1X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn full_command_line() {
        let cmd = parse(args(&[
            "--socket-dir",
            "/tmp/d",
            "--ssd",
            "/img/a:1G",
            "--ssd=/img/b",
            "--ssd",
            "/x:y",
            "--passthrough-ssd",
            "1",
            "--io-queues",
            "8",
            "--workers=3",
            "--poll-us=50",
            "--log-level",
            "debug",
            "--power-loss-sim=18446744073709551615",
            "--power-loss-report",
            "/tmp/cut.log",
        ]))
        .unwrap();
        let Command::Run(o) = cmd else {
            panic!("not run")
        };
        assert_eq!(o.socket_dir, PathBuf::from("/tmp/d"));
        assert_eq!(
            o.ssds[0],
            SsdSpec {
                path: "/img/a".into(),
                size: Some(1 << 30)
            }
        );
        assert_eq!(
            o.ssds[1],
            SsdSpec {
                path: "/img/b".into(),
                size: None
            }
        );
        assert_eq!(
            o.ssds[2],
            SsdSpec {
                path: "/x:y".into(),
                size: None
            }
        );
        assert_eq!((o.passthrough_ssd, o.io_queues, o.workers), (Some(1), 8, 3));
        assert_eq!(o.poll_us, 50);
        assert_eq!(o.log_level, log::LevelFilter::Debug);
        assert_eq!(o.power_loss_seed, Some(u64::MAX));
        assert_eq!(o.power_loss_report, Some(PathBuf::from("/tmp/cut.log")));
        assert_eq!(o.nvmf_config, None);
        let Ok(Command::Run(o)) = parse(args(&["--socket-dir", "d", "--nvmf-config=/etc/t"]))
        else {
            panic!("--nvmf-config refused")
        };
        assert_eq!(o.nvmf_config, Some(PathBuf::from("/etc/t")));
        let Ok(Command::Run(o)) = parse(args(&["--socket-dir", "d"])) else {
            panic!("not run")
        };
        assert_eq!(o.power_loss_seed, None, "off unless asked for");
        assert_eq!(
            std::time::Duration::from_micros(o.poll_us.into()),
            crate::worker::DEFAULT_POLL_WINDOW
        );
    }

    #[test]
    fn errors_and_help() {
        assert_eq!(parse(args(&["--help"])), Ok(Command::Help));
        assert_eq!(parse(args(&["-V"])), Ok(Command::Version));
        assert!(parse(args(&[])).is_err());
        assert!(parse(args(&["--socket-dir"])).is_err());
        assert!(parse(args(&["--socket-dir", "d", "--io-queues", "0"])).is_err());
        assert!(parse(args(&["--socket-dir", "d", "--io-queues", "256"])).is_err());
        assert!(parse(args(&["--socket-dir", "d", "--passthrough-ssd", "0"])).is_err());
        assert!(parse(args(&["--socket-dir", "d", "--bogus"])).is_err());
        assert!(parse(args(&["--socket-dir", "d", "--poll-us", "10001"])).is_err());
        assert!(parse(args(&["--socket-dir", "d", "--poll-us", "-1"])).is_err());
        assert!(parse(args(&["--socket-dir", "d", "--log-level", "loud"])).is_err());
        assert!(parse(args(&["--socket-dir", "d", "--ssd", ":1G"])).is_err());
        assert!(parse(args(&["--socket-dir", "d", "--power-loss-sim"])).is_err());
        assert!(parse(args(&["--socket-dir", "d", "--power-loss-report", "r"])).is_err());
        assert!(parse(args(&["--socket-dir", "d", "--power-loss-sim", "-1"])).is_err());
        assert!(parse(args(&["--socket-dir", "d", "--power-loss-sim", "0x10"])).is_err());
        assert!(parse(args(&[
            "--socket-dir",
            "d",
            "--power-loss-sim",
            "18446744073709551616"
        ]))
        .is_err());
        assert!(parse(args(&["--socket-dir", "d", "--hostile", "0"])).is_err());
        let Ok(Command::Run(o)) = parse(args(&["--socket-dir", "d", "--hostile=50:3"])) else {
            panic!("--hostile refused")
        };
        assert_eq!(o.hostile.map(|h| (h.rate, h.seed)), Some((50, 3)));
    }

    #[test]
    fn zoned_ssds() {
        let zoned = |extra: &[&str]| {
            let mut list = vec!["--socket-dir", "d", "--ssd", "a", "--ssd", "b"];
            list.extend_from_slice(extra);
            match parse(args(&list)) {
                Ok(Command::Run(o)) => Ok(o.zoned_ssds),
                Ok(_) => Err("not run".to_string()),
                Err(e) => Err(e),
            }
        };
        let default = ZoneConfig::default();
        assert_eq!(zoned(&["--zoned-ssd", "1"]), Ok(vec![(1, default)]));
        assert_eq!(zoned(&[]), Ok(vec![]));
        let full = ZoneConfig {
            zone_bytes: 64 << 20,
            capacity_bytes: 48 << 20,
            max_open: 8,
            max_active: 12,
        };
        assert_eq!(
            zoned(&["--zoned-ssd=0:64M:48M:8:12", "--zoned-ssd", "1::::"]),
            Ok(vec![(0, full), (1, default)])
        );
        // The capacity defaults to the zone size, the active limit to the
        // larger of 14 and the open limit.
        let Ok(list) = zoned(&["--zoned-ssd", "0:1M::20"]) else {
            panic!("refused")
        };
        assert_eq!(
            list[0].1,
            ZoneConfig {
                zone_bytes: 1 << 20,
                capacity_bytes: 1 << 20,
                max_open: 20,
                max_active: 20,
            }
        );
        for bad in [
            "2",             // no such SSD
            "x",             // not a number
            "0:3M",          // zone size not a power of two
            "0:2K",          // below 4K
            "0:1M:2M",       // capacity above the zone size
            "0:1M:1000",     // capacity not a multiple of 4K
            "0:1M:1M:0",     // no open zone
            "0:1M:1M:9:8",   // more open than active
            "0:1M:1M:1:1:1", // too many fields
            "0:1M:1M:70000",
        ] {
            let e = zoned(&["--zoned-ssd", bad]).unwrap_err();
            assert!(e.starts_with("--zoned-ssd"), "{bad}: {e}");
        }
        assert!(zoned(&["--zoned-ssd", "0", "--zoned-ssd", "0"]).is_err());
        assert!(zoned(&["--zoned-ssd", "0", "--passthrough-ssd", "0"]).is_err());
    }

    #[test]
    fn scrub_rate() {
        let rate = |v: &str| match parse(args(&["--socket-dir", "d", "--scrub-rate", v])) {
            Ok(Command::Run(o)) => Ok(o.scrub_rate),
            Ok(_) => Err("not run".to_string()),
            Err(e) => Err(e),
        };
        assert_eq!(rate("64M"), Ok(64 << 20));
        assert_eq!(rate("0"), Ok(0));
        assert!(rate("fast").is_err_and(|e| e.starts_with("--scrub-rate")));
        assert!(rate("512K").is_err_and(|e| e.starts_with("--scrub-rate")));
        let Ok(Command::Run(o)) = parse(args(&["--socket-dir", "d"])) else {
            panic!("not run")
        };
        assert_eq!(o.scrub_rate, 0, "unlimited unless asked");
    }

    #[test]
    fn metadata_cache_sizes() {
        let cache = |v: &str| match parse(args(&["--socket-dir", "d", "--metadata-cache", v])) {
            Ok(Command::Run(o)) => Ok(o.metadata_cache),
            Ok(_) => Err("not run".to_string()),
            Err(e) => Err(e),
        };
        assert_eq!(cache("256M"), Ok(256 << 20));
        assert_eq!(cache("1G"), Ok(1 << 30));
        assert_eq!(cache("262144"), Ok(256 << 10));
        let Ok(Command::Run(o)) = parse(args(&["--socket-dir", "d"])) else {
            panic!("not run")
        };
        assert_eq!(o.metadata_cache, METADATA_CACHE_DEFAULT);
        for bad in ["100K", "65G", "lots", "0", "12Q", ""] {
            let e = cache(bad).unwrap_err();
            assert!(e.starts_with("--metadata-cache"), "{bad}: {e}");
        }
    }
}
