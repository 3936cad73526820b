//! The NVMe/TCP side of a node: namespaces whose ANA state follows the
//! node (inaccessible while it does not own the media), and the checks an
//! HA appliance configuration must pass.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::namespace::{ana, Namespace};
use crate::nvmf::config::{NamespaceSource, TargetConfig};
use crate::nvmf::VolumeLookup;

/// Whether this node's path serves I/O: open only while it holds the
/// fence and its volumes are open. One per node, shared by every
/// namespace its target exports.
#[derive(Default)]
pub struct PathGate {
    open: AtomicBool,
}

impl PathGate {
    pub fn new(open: bool) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicBool::new(open),
        })
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Closes the path: every later command completes with ANA
    /// Inaccessible.
    pub fn close(&self) {
        self.open.store(false, Ordering::Release);
    }

    pub fn open(&self) {
        self.open.store(true, Ordering::Release);
    }
}

fn inaccessible() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "ANA inaccessible: this node does not own the media",
    )
}

/// A namespace as one node of the pair exports it: the volume while the
/// node serves, or only its geometry (the passive node has no volumes
/// open, yet its hosts must see the namespace to add the path).
pub struct PathNamespace {
    /// Set once, when the node takes over: the passive node's stand-in
    /// becomes the volume in place, so the hosts' connections to this
    /// path stay. Never unset: a node that loses the media restarts.
    volume: OnceLock<Arc<dyn Namespace>>,
    size: u64,
    lba_shift: u8,
    gate: Arc<PathGate>,
}

impl PathNamespace {
    /// The passive node's stand-in for a volume of `size` bytes.
    pub fn standby(size: u64, gate: Arc<PathGate>) -> Self {
        Self {
            volume: OnceLock::new(),
            size,
            // Volumes have 4 KiB logical blocks: both paths must agree.
            lba_shift: 12,
            gate,
        }
    }

    /// The active node's volume behind `gate`.
    pub fn serving(volume: Arc<dyn Namespace>, gate: Arc<PathGate>) -> Self {
        let s = Self::standby(volume.size(), gate);
        let lba_shift = volume.lba_shift();
        let _ = s.volume.set(volume);
        Self { lba_shift, ..s }
    }

    /// Puts the volume behind a stand-in (it serves once the gate opens).
    /// Refused if the volume's geometry is not the one the hosts were
    /// shown, or a volume is there already.
    pub fn install(&self, volume: Arc<dyn Namespace>) -> Result<(), String> {
        if volume.size() != self.size || volume.lba_shift() != self.lba_shift {
            return Err(format!(
                "the volume has {} bytes in blocks of 2^{}, the path showed {} in 2^{}",
                volume.size(),
                volume.lba_shift(),
                self.size,
                self.lba_shift
            ));
        }
        self.volume
            .set(volume)
            .map_err(|_| "a volume is installed already".to_string())
    }

    fn volume(&self) -> io::Result<&Arc<dyn Namespace>> {
        match self.volume.get() {
            Some(v) if self.gate.is_open() => Ok(v),
            _ => Err(inaccessible()),
        }
    }
}

impl Namespace for PathNamespace {
    fn size(&self) -> u64 {
        self.size
    }
    fn used(&self) -> u64 {
        self.volume.get().map_or(0, |v| v.used())
    }
    fn is_volume(&self) -> bool {
        self.volume.get().is_some_and(|v| v.is_volume())
    }
    fn lba_shift(&self) -> u8 {
        self.lba_shift
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.volume()?.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.volume()?.write_at(offset, data)
    }
    fn flush(&self) -> io::Result<()> {
        self.volume()?.flush()
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.volume()?.write_zeroes(offset, len)
    }
    fn deallocate(&self, offset: u64, len: u64) -> io::Result<()> {
        self.volume()?.deallocate(offset, len)
    }
    fn ana_state(&self) -> u8 {
        if self.volume.get().is_some() && self.gate.is_open() {
            ana::OPTIMIZED
        } else {
            ana::INACCESSIBLE
        }
    }
}

/// The volumes a passive node exports: stand-ins sized from the
/// configuration's `[volume]` sections, which become the volumes when the
/// node takes over ([`StandbyVolumes::promote`]).
pub struct StandbyVolumes {
    sizes: BTreeMap<String, u64>,
    gate: Arc<PathGate>,
    /// Every stand-in handed out, by volume name.
    made: Mutex<Vec<(String, Arc<PathNamespace>)>>,
}

impl StandbyVolumes {
    pub fn new(config: &TargetConfig, gate: Arc<PathGate>) -> Self {
        let sizes = config
            .volumes
            .iter()
            .map(|v| (v.name.clone(), v.size))
            .collect();
        Self {
            sizes,
            gate,
            made: Mutex::new(Vec::new()),
        }
    }

    /// Installs the open volumes behind the stand-ins (the gate stays as
    /// it is: the caller opens it). Fails if a volume is not open or its
    /// geometry is not the one shown.
    pub fn promote(&self, volumes: &dyn VolumeLookup) -> Result<(), String> {
        let made = self.made.lock().unwrap_or_else(|p| p.into_inner());
        for (name, standby) in made.iter() {
            let volume = volumes
                .volume(name)
                .ok_or_else(|| format!("volume '{name}' is not open"))?;
            standby
                .install(volume)
                .map_err(|e| format!("volume '{name}': {e}"))?;
        }
        Ok(())
    }
}

impl VolumeLookup for StandbyVolumes {
    fn volume(&self, name: &str) -> Option<Arc<dyn Namespace>> {
        let size = *self.sizes.get(name)?;
        let standby = Arc::new(PathNamespace::standby(size, self.gate.clone()));
        self.made
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name.to_string(), standby.clone()));
        Some(standby)
    }
}

/// The active node's volumes, each behind the node's gate.
pub struct ServingVolumes<'a> {
    pub inner: &'a dyn VolumeLookup,
    pub gate: Arc<PathGate>,
}

impl VolumeLookup for ServingVolumes<'_> {
    fn volume(&self, name: &str) -> Option<Arc<dyn Namespace>> {
        let v = self.inner.volume(name)?;
        Some(Arc::new(PathNamespace::serving(v, self.gate.clone())))
    }
}

/// What an HA pair's NVMe/TCP configuration must satisfy: it exports only
/// volumes, each made by a `[volume]` section (whose size the passive node
/// shows before it has the volumes open), and uses no remote SSDs (a
/// remote namespace has no fence record: two nodes could both write it).
pub fn check_config(config: &TargetConfig) -> Result<(), String> {
    if config.ports.is_empty() {
        return Err("an HA pair needs [port] and [subsystem] sections".into());
    }
    if let Some(r) = config.remote_ssds.first() {
        return Err(format!(
            "[remote-ssd {}]: an HA pair fences only its --ssd images",
            r.name
        ));
    }
    for s in &config.subsystems {
        for (nsid, source) in &s.namespaces {
            match source {
                NamespaceSource::Volume(name) => {
                    if !config.volumes.iter().any(|v| &v.name == name) {
                        return Err(format!(
                            "{} namespace {nsid}: volume '{name}' has no [volume] section \
                             (the passive node takes its size from it)",
                            s.nqn
                        ));
                    }
                }
                _ => {
                    return Err(format!(
                        "{} namespace {nsid}: an HA pair exports only volumes \
                         (namespace N volume NAME)",
                        s.nqn
                    ))
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dpu_engine::media::MemMedia;

    struct Mem(MemMedia);

    impl Namespace for Mem {
        fn size(&self) -> u64 {
            dpu_engine::media::Media::size(&self.0)
        }
        // As a volume's.
        fn lba_shift(&self) -> u8 {
            12
        }
        fn read_at(&self, o: u64, b: &mut [u8]) -> io::Result<()> {
            dpu_engine::media::Media::read_at(&self.0, o, b).map_err(io::Error::other)
        }
        fn write_at(&self, o: u64, d: &[u8]) -> io::Result<()> {
            dpu_engine::media::Media::write_at(&self.0, o, d).map_err(io::Error::other)
        }
        fn flush(&self) -> io::Result<()> {
            Ok(())
        }
        fn write_zeroes(&self, o: u64, l: u64) -> io::Result<()> {
            self.write_at(o, &vec![0; l as usize])
        }
        fn deallocate(&self, o: u64, l: u64) -> io::Result<()> {
            self.write_zeroes(o, l)
        }
    }

    #[test]
    fn the_gate_decides_the_ana_state_and_the_io() {
        let gate = PathGate::new(false);
        let standby = PathNamespace::standby(1 << 20, gate.clone());
        assert_eq!(standby.ana_state(), ana::INACCESSIBLE);
        assert!(standby.write_at(0, &[1; 512]).is_err());
        assert_eq!(standby.size(), 1 << 20);
        gate.open();
        // A stand-in never serves, even with the gate open.
        assert_eq!(standby.ana_state(), ana::INACCESSIBLE);
        let serving = PathNamespace::serving(Arc::new(Mem(MemMedia::new(1 << 20))), gate.clone());
        assert_eq!(serving.ana_state(), ana::OPTIMIZED);
        serving.write_at(4096, &[7; 4096]).unwrap();
        let mut back = [0u8; 4096];
        serving.read_at(4096, &mut back).unwrap();
        assert_eq!(back, [7; 4096]);
        gate.close();
        assert_eq!(serving.ana_state(), ana::INACCESSIBLE);
        assert!(serving.read_at(4096, &mut back).is_err());
    }

    #[test]
    fn a_stand_in_becomes_the_volume_in_place() {
        let text = "[port 1]\nservice 4420\n[volume db0]\nlayout single\nssds 0\nsize 1M\n\
                    [subsystem nqn.2026-12.org.dpublk:ha]\nports 1\nallow-any-host\n\
                    namespace 1 volume db0\n";
        let config = crate::nvmf::config::parse(text).unwrap();
        let gate = PathGate::new(false);
        let standby = StandbyVolumes::new(&config, gate.clone());
        let exported = standby.volume("db0").unwrap();
        assert!(standby.volume("db1").is_none());
        assert_eq!(exported.ana_state(), ana::INACCESSIBLE);

        struct One(Arc<dyn Namespace>);
        impl VolumeLookup for One {
            fn volume(&self, name: &str) -> Option<Arc<dyn Namespace>> {
                (name == "db0").then(|| self.0.clone())
            }
        }
        // A volume of another size than the hosts were shown is refused.
        let wrong = One(Arc::new(Mem(MemMedia::new(2 << 20))));
        assert!(standby.promote(&wrong).unwrap_err().contains("bytes"));
        let volume: Arc<dyn Namespace> = Arc::new(Mem(MemMedia::new(1 << 20)));
        volume.write_at(8192, &[3; 4096]).unwrap();
        standby.promote(&One(volume.clone())).unwrap();
        // Installed but not served until the gate opens.
        assert_eq!(exported.ana_state(), ana::INACCESSIBLE);
        let mut back = [0u8; 4096];
        assert!(exported.read_at(8192, &mut back).is_err());
        gate.open();
        assert_eq!(exported.ana_state(), ana::OPTIMIZED);
        exported.read_at(8192, &mut back).unwrap();
        assert_eq!(back, [3; 4096]);
        // Once only.
        assert!(standby
            .promote(&One(volume))
            .unwrap_err()
            .contains("already"));
    }

    #[test]
    fn only_volumes_with_sections_are_exported() {
        let base = "[port 1]\nservice 4420\n[volume db0]\nlayout single\nssds 0\nsize 16M\n\
                    [subsystem nqn.2026-12.org.dpublk:ha]\nports 1\nallow-any-host\n";
        let ok = crate::nvmf::config::parse(&format!("{base}namespace 1 volume db0\n")).unwrap();
        check_config(&ok).unwrap();
        let missing =
            crate::nvmf::config::parse(&format!("{base}namespace 1 volume db1\n")).unwrap();
        assert!(check_config(&missing)
            .unwrap_err()
            .contains("no [volume] section"));
        let ssd = crate::nvmf::config::parse(&format!("{base}namespace 1 ssd 1\n")).unwrap();
        assert!(check_config(&ssd).unwrap_err().contains("only volumes"));
    }
}
