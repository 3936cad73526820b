//! dpuemu: the dpublk storage accelerator, emulated as vfio-user PCIe
//! functions.
//!
//! One process serves the accelerator function and the local SSD
//! functions; see `tools/dpuemu/README.md` for the threading model and
//! `Documentation/device-interface.rst` for the device interface.

mod cli;
mod controller;
mod guest_memory;
mod ha;
mod interrupts;
mod logger;
mod lost_command;
mod namespace;
mod nvmf;
mod ownership;
mod pci_config;
mod power_loss;
mod vfio;
mod volumes;
mod worker;
mod zoned;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;

use log::{debug, error, info, warn};
use nvme_shim::pci;

use cli::{Command, Options};
use controller::{Controller, ControllerConfig, NamespaceSlot, Personality, SsdHandle, Stats};
use guest_memory::DmaRegions;
use interrupts::MsixEventFds;
use namespace::{FileNamespace, Namespace};
use ownership::SsdOwnership;
use power_loss::VolatileNamespace;
use vfio::Function;
use volumes::VolumeManager;

fn main() -> ExitCode {
    match cli::parse(std::env::args().skip(1)) {
        Ok(Command::Help) => {
            print!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Ok(Command::Version) => {
            println!("dpuemu {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Ok(Command::Run(options)) => match run(&options) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!("{e}");
                eprintln!("dpuemu: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("dpuemu: {e}");
            ExitCode::from(2)
        }
    }
}

/// Blocks SIGTERM, SIGINT, SIGUSR1, SIGUSR2 and SIGHUP in this thread (and every
/// thread it starts afterwards), so only `wait_for_signal` receives them:
/// the main thread takes signals synchronously with sigwait, so no code
/// runs in signal-handler context.
fn block_signals() -> Result<libc::sigset_t, String> {
    // SAFETY: `sigset_t` is plain data; it is initialized by `sigemptyset`
    // before use, and the calls only access the set we pass.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::sigaddset(&mut set, libc::SIGUSR2);
        libc::sigaddset(&mut set, libc::SIGHUP);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(format!("pthread_sigmask: error {rc}"));
        }
        Ok(set)
    }
}

fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut signal = 0;
    // SAFETY: `set` is an initialized signal set and `signal` a valid
    // output location.
    let rc = unsafe { libc::sigwait(set, &mut signal) };
    if rc != 0 {
        error!("sigwait failed: error {rc}");
    }
    signal
}

/// Whether SIGTERM or SIGINT arrived (taken without waiting; other
/// pending signals are dropped): the passive phase of an HA node polls it.
fn exit_signal_pending(set: &libc::sigset_t) -> bool {
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `set` is an initialized signal set, the info pointer may be
    // null, and `zero` is a valid timespec.
    let signal = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &zero) };
    matches!(signal, libc::SIGTERM | libc::SIGINT)
}

#[expect(clippy::too_many_arguments)]
fn make_function(
    options: &Options,
    name: &str,
    model: &str,
    device_id: u16,
    subsystem_id: u16,
    class_code: u32,
    personality: Personality,
    namespaces: Vec<NamespaceSlot>,
) -> Function {
    let memory = Arc::new(DmaRegions::new());
    let vectors = options.io_queues + 1;
    let msix = Arc::new(MsixEventFds::new(vectors));
    let config = ControllerConfig {
        name: name.to_string(),
        serial: format!("DPUEMU-{}", name.to_uppercase()),
        model: model.to_string(),
        subnqn: format!("nqn.2026-11.org.dpublk:dpuemu:{name}"),
        io_queues: options.io_queues,
        vectors,
        workers: options.workers,
    };
    let controller = Controller::new(
        config,
        personality,
        namespaces,
        memory.clone(),
        msix.clone(),
    );
    Function {
        controller,
        memory,
        msix,
        device_id,
        subsystem_id,
        class_code,
        socket: options.socket_dir.join(format!("{name}.sock")),
    }
}

/// How long a power cut waits for a cache to hold unflushed data.
const UNFLUSHED_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Simulated power loss: tears every SSD's volatile write cache and leaves
/// at once, with no flush, no worker shutdown and no socket cleanup. The
/// tear report goes to the log and, with `--power-loss-report`, is
/// appended to that file (the log of a test VM's run goes with the run).
fn power_cut(volatile: &[Arc<VolatileNamespace>], options: &Options, seed: u64) -> ! {
    info!("SIGUSR2: power cut (seed {seed})");
    // A cut on empty caches tears nothing and tests nothing beyond the
    // flushed data; volumes commit often, so a cut at a random time often
    // lands there. Wait (while I/O goes on) until a cache holds unflushed
    // sectors, for at most UNFLUSHED_WAIT.
    let started = std::time::Instant::now();
    while volatile.iter().all(|layer| layer.pending_sectors() == 0)
        && started.elapsed() < UNFLUSHED_WAIT
    {
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    info!(
        "power cut after waiting {} ms for unflushed data ({} sectors pending)",
        started.elapsed().as_millis(),
        volatile.iter().map(|l| l.pending_sectors()).sum::<usize>()
    );
    let report = power_loss::crash(volatile, seed);
    let summary = format!(
        "power cut: {} unflushed sectors reached the images, {} lost; exiting",
        report.written, report.dropped
    );
    for line in &report.lines {
        if line.contains("written sectors") {
            debug!("{line}");
        } else {
            info!("{line}");
        }
    }
    info!("{summary}");
    if let Some(path) = &options.power_loss_report {
        let text = format!("seed {seed}\n{}\n{summary}\n", report.lines.join("\n"));
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(text.as_bytes()));
        if let Err(e) = written {
            error!("power cut report {}: {e}", path.display());
        }
    }
    // SAFETY: _exit ends the process without running atexit handlers or
    // destructors, which is the point: nothing may be flushed after the
    // cut. It takes only an integer. Status 3 tells a power cut from a
    // shutdown.
    unsafe { libc::_exit(3) }
}

fn run(options: &Options) -> Result<(), String> {
    logger::init(options.log_level);
    if let Some(spec) = options.hostile.clone() {
        warn!(
            "hostile mode: one I/O completion in {} gets an anomaly",
            spec.rate
        );
        controller::hostile::configure(spec);
    }
    let signals = block_signals()?;
    std::fs::create_dir_all(&options.socket_dir)
        .map_err(|e| format!("{}: {e}", options.socket_dir.display()))?;

    // --ha-config: one node of an active/passive pair (Documentation/ha.rst).
    let mut ha = match &options.ha_config {
        Some(path) => {
            if options.passthrough_ssd.is_some() || !options.zoned_ssds.is_empty() {
                return Err("--ha-config: no --passthrough-ssd or --zoned-ssd in a pair".into());
            }
            let nvmf_config = options.nvmf_config.as_deref().map(nvmf::load).transpose()?;
            Some(ha::HaRuntime::new(
                path,
                nvmf_config.as_ref(),
                options.power_loss_seed.is_some(),
            )?)
        }
        None => None,
    };
    let mut media: Vec<Arc<dyn Namespace>> = Vec::new();
    // The SSDs' volatile write caches when power loss is simulated.
    let mut volatile: Vec<Arc<VolatileNamespace>> = Vec::new();
    for spec in &options.ssds {
        let ns = FileNamespace::open(&spec.path, spec.size)
            .map_err(|e| format!("SSD image {}: {e}", spec.path.display()))?;
        info!(
            "SSD {}: {} ({} MiB)",
            media.len(),
            spec.path.display(),
            ns.size() >> 20
        );
        if let Some(ha) = &mut ha {
            let index = media.len();
            media.push(ha.wrap_ssd(Arc::new(ns), &spec.path, index)?);
        } else if options.power_loss_seed.is_some() {
            let layer = Arc::new(VolatileNamespace::new(
                &format!("ssd{}", media.len()),
                Box::new(ns),
                power_loss::DEFAULT_LIMIT_SECTORS,
            ));
            volatile.push(layer.clone());
            media.push(layer);
        } else {
            media.push(Arc::new(ns));
        }
    }
    if let Some(seed) = options.power_loss_seed {
        info!("power-loss simulation on (seed {seed}): SIGUSR2 cuts the power");
    }
    let ownership: Vec<Arc<SsdOwnership>> = media
        .iter()
        .map(|_| Arc::new(SsdOwnership::new()))
        .collect();

    let mut accel_namespaces = Vec::new();
    if let Some(n) = options.passthrough_ssd {
        if let (Some(m), Some(o)) = (media.get(n), ownership.get(n)) {
            o.attach_in_use();
            accel_namespaces.push(NamespaceSlot {
                backend: m.clone(),
                ssd: Some(n as u16),
                stats: Stats::default(),
            });
            info!("accel: namespace 1 passes through to SSD {n}, which the accelerator owns");
        }
    }
    let mut ssd_handles = media
        .iter()
        .zip(&ownership)
        .enumerate()
        .map(|(i, (m, o))| SsdHandle {
            index: i as u16,
            ownership: o.clone(),
            media: m.clone(),
            serial: format!("DPUEMU-SSD{i}"),
        })
        .collect::<Vec<_>>();
    // --nvmf-config: remote SSDs (NVMe/TCP namespaces) follow the images in
    // the SSD numbering, and the target takes the SSDs it exports before
    // the volume manager looks for families.
    let nvmf_config = options.nvmf_config.as_deref().map(nvmf::load).transpose()?;
    let mut remote_ssds = Vec::new();
    let mut nvmf_claimed = None;
    if let Some(config) = &nvmf_config {
        for remote in nvmf::connect_remote_ssds(config)? {
            let index = ssd_handles.len() as u16;
            let spec = remote.spec();
            info!(
                "SSD {index}: remote SSD {} ({} {} namespace {}, {} MiB){}",
                remote.name(),
                spec.address,
                spec.subnqn,
                spec.nsid,
                remote.size() >> 20,
                if remote.is_connected() {
                    ""
                } else {
                    ", absent: joins its family when it answers"
                }
            );
            ssd_handles.push(SsdHandle {
                index,
                ownership: Arc::new(SsdOwnership::new()),
                media: remote.clone(),
                serial: format!("DPUEMU-REMOTE{index}"),
            });
            remote_ssds.push((index, remote));
        }
        let ssds: Vec<_> = media
            .iter()
            .cloned()
            .zip(ownership.iter().cloned())
            .collect();
        nvmf_claimed = Some(nvmf::claim_ssds(config, &ssds)?);
    }
    // SSD indexes that the host's Remote SSD Add fills later (configfs
    // `ssds/<name>/remote`): empty until then, and hidden from SSD List.
    let remote_slots: Vec<nvmf::SlotHandle> = (ssd_handles.len()..64)
        .take(nvmf::REMOTE_SLOTS)
        .map(|i| nvmf::SlotHandle {
            index: i as u16,
            ownership: Arc::new(SsdOwnership::new()),
            slot: Arc::new(nvmf::RemoteSlot::default()),
        })
        .collect();
    for s in &remote_slots {
        ssd_handles.push(SsdHandle {
            index: s.index,
            ownership: s.ownership.clone(),
            media: s.slot.clone(),
            serial: format!("DPUEMU-REMOTE{}", s.index),
        });
    }
    // A pair's node opens nothing before it holds the fence: until then
    // it serves its hosts an inaccessible path.
    if let (Some(ha), Some(config)) = (&mut ha, &nvmf_config) {
        ha.wait_for_media(config, || exit_signal_pending(&signals))?;
    }
    volumes::maintenance::SCRUB_BYTES_PER_SEC
        .store(options.scrub_rate, std::sync::atomic::Ordering::Relaxed);
    // Families found on the SSDs' labels are attached and opened here.
    let paged = dpu_engine::volume::PagedOptions {
        cache_bytes: usize::try_from(options.metadata_cache).unwrap_or(usize::MAX),
        ..Default::default()
    };
    let volumes = Arc::new(VolumeManager::open_with(&ssd_handles, paged));
    // A remote SSD absent at start-up leaves its family degraded, which is
    // fine within the layout's tolerance; a family that cannot open
    // without it is an error, as the unreachable remote was before.
    let absent: Vec<(u16, &str)> = remote_ssds
        .iter()
        .filter(|(_, r)| !r.is_connected())
        .map(|(index, r)| (*index, r.name()))
        .collect();
    let unopened = volumes.unopened_families();
    if !absent.is_empty() && !unopened.is_empty() {
        return Err(format!(
            "{}; remote SSD(s) {} do not answer",
            unopened.join("; "),
            absent
                .iter()
                .map(|(_, name)| *name)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for (index, remote) in &remote_ssds {
        remote.on_return(nvmf::readd_hook(Arc::downgrade(&volumes), *index));
    }
    let remote_slots = nvmf::RemoteSlots::new(
        remote_slots,
        Arc::downgrade(&volumes),
        remote_ssds.iter().map(|(_, r)| r.spec().clone()).collect(),
        nvmf::RemoteSsdPolicy::default(),
    );
    // The NSIDs the accelerator's function keeps from its volumes.
    let reserved: BTreeSet<u32> = (1..=accel_namespaces.len() as u32).collect();
    let ssd_ownership: Vec<Arc<SsdOwnership>> =
        ssd_handles.iter().map(|h| h.ownership.clone()).collect();

    let mut functions = vec![make_function(
        options,
        "accel",
        "dpublk storage accelerator (dpuemu)",
        pci::ACCELERATOR_DEVICE_ID,
        pci::ACCELERATOR_DEVICE_ID,
        pci::ACCELERATOR_CLASS_CODE,
        Personality::Accelerator {
            ssds: ssd_handles,
            volumes: volumes.clone(),
        },
        accel_namespaces,
    )];
    let absent_ssds: Vec<usize> = absent.iter().map(|(i, _)| usize::from(*i)).collect();
    // Volumes are made and exported once the accelerator's function has
    // numbered those it found (the same namespaces serve both).
    let _nvmf = match (&nvmf_config, &nvmf_claimed) {
        (Some(config), Some(claimed)) => {
            let accel = nvmf::Accelerator {
                volumes: &volumes,
                ownership: &ssd_ownership,
                images: media.len(),
                table: &*functions[0].controller,
                reserved: &reserved,
                absent: &absent_ssds,
            };
            match &ha {
                // The node's target serves the volumes behind its path
                // gate: made here, exported by `serve`.
                Some(ha) => {
                    let volumes_only = nvmf::config::TargetConfig {
                        ports: Vec::new(),
                        ..config.clone()
                    };
                    nvmf::start_appliance(&volumes_only, claimed, &accel)
                        .inspect_err(|e| ha.failed(e))?;
                    let directory = nvmf::VolumeDirectory::from_manager(&volumes, &reserved);
                    Some(ha.serve(config, claimed, &directory)?)
                }
                None => nvmf::start_appliance(config, claimed, &accel)?,
            }
        }
        _ => None,
    };
    // The host's configfs (vendor NVMe/TCP commands) changes the file's
    // target, or makes one at its first command.
    if let Some(target) = &_nvmf {
        functions[0].controller.nvmf().install(Arc::clone(target));
    }
    functions[0]
        .controller
        .nvmf()
        .install_remote_slots(remote_slots);
    for (i, (m, o)) in media.iter().zip(&ownership).enumerate() {
        // A zoned SSD function's namespace keeps the zone rules; the
        // accelerator and the NVMe/TCP target still see the raw image.
        let backend: Arc<dyn Namespace> = match options.zoned_ssds.iter().find(|(n, _)| *n == i) {
            Some((_, config)) => Arc::new(zoned::ZonedNamespace::open(
                &format!("ssd{i}"),
                m.clone(),
                config,
            )?),
            None => m.clone(),
        };
        functions.push(make_function(
            options,
            &format!("ssd{i}"),
            "dpuemu local NVMe SSD",
            pci::SSD_DEVICE_ID,
            pci::SSD_SUBSYSTEM_ID_BASE + i as u16,
            pci::SSD_CLASS_CODE,
            Personality::Ssd {
                ownership: o.clone(),
            },
            vec![NamespaceSlot {
                backend,
                ssd: None,
                stats: Stats::default(),
            }],
        ));
    }

    let mut servers = Vec::new();
    for function in &functions {
        servers.push(vfio::listen(function).map_err(|e| format!("listen: {e}"))?);
    }
    let functions: Vec<Arc<Function>> = functions.into_iter().map(Arc::new).collect();
    let mut workers = Vec::new();
    for (function, server) in functions.iter().zip(servers) {
        workers.extend(worker::spawn_with(
            &function.controller,
            worker::Polling {
                window: std::time::Duration::from_micros(options.poll_us.into()),
            },
        ));
        let f = Arc::clone(function);
        thread::Builder::new()
            .name(format!("{}-vfio", function.controller.config().name))
            .spawn(move || vfio::serve(&f, server))
            .map_err(|e| format!("cannot start server thread: {e}"))?;
    }
    let sockets: Vec<String> = functions
        .iter()
        .map(|f| f.socket.display().to_string())
        .collect();
    info!("listening: {}", sockets.join(" "));
    eprintln!(
        "dpuemu: ready: {} function(s) listening in {}",
        functions.len(),
        options.socket_dir.display()
    );

    let signal = loop {
        match wait_for_signal(&signals) {
            libc::SIGUSR1 => {
                lost_command::LOST_COMMANDS.arm();
                info!("SIGUSR1: the accelerator loses its next I/O command");
            }
            libc::SIGHUP => match &ha {
                Some(ha) => ha.handover(_nvmf.as_deref(), || {
                    for function in &functions {
                        function.controller.flush_all();
                    }
                }),
                None => info!("SIGHUP ignored: no --ha-config"),
            },
            libc::SIGUSR2 => match options.power_loss_seed {
                Some(seed) => power_cut(&volatile, options, seed),
                None => info!("SIGUSR2 ignored: no --power-loss-sim"),
            },
            signal => break signal,
        }
    };
    info!("signal {signal}: shutting down");
    for function in &functions {
        function.controller.stop_workers();
    }
    for worker in workers {
        let _ = worker.join();
    }
    for function in &functions {
        function.controller.flush_all();
        if let Err(e) = std::fs::remove_file(&function.socket) {
            error!("{}: {e}", function.socket.display());
        }
    }
    info!("media flushed, sockets removed");
    // The server threads block in accept/recv; leaving the process ends them.
    std::process::exit(0)
}
