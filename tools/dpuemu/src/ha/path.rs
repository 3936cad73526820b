//! The NVMe/TCP side of a node: namespaces whose ANA state follows the
//! node (inaccessible while it does not own the media), and the checks an
//! HA appliance configuration must pass.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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
    volume: Option<Arc<dyn Namespace>>,
    size: u64,
    lba_shift: u8,
    gate: Arc<PathGate>,
}

impl PathNamespace {
    /// The passive node's stand-in for a volume of `size` bytes.
    pub fn standby(size: u64, gate: Arc<PathGate>) -> Self {
        Self {
            volume: None,
            size,
            // Volumes have 4 KiB logical blocks: both paths must agree.
            lba_shift: 12,
            gate,
        }
    }

    /// The active node's volume behind `gate`.
    pub fn serving(volume: Arc<dyn Namespace>, gate: Arc<PathGate>) -> Self {
        Self {
            size: volume.size(),
            lba_shift: volume.lba_shift(),
            volume: Some(volume),
            gate,
        }
    }

    fn volume(&self) -> io::Result<&Arc<dyn Namespace>> {
        match &self.volume {
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
        self.volume.as_ref().map_or(0, |v| v.used())
    }
    fn is_volume(&self) -> bool {
        self.volume.as_ref().is_some_and(|v| v.is_volume())
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
        if self.volume.is_some() && self.gate.is_open() {
            ana::OPTIMIZED
        } else {
            ana::INACCESSIBLE
        }
    }
}

/// The volumes a passive node exports: stand-ins sized from the
/// configuration's `[volume]` sections.
pub struct StandbyVolumes {
    sizes: BTreeMap<String, u64>,
    gate: Arc<PathGate>,
}

impl StandbyVolumes {
    pub fn new(config: &TargetConfig, gate: Arc<PathGate>) -> Self {
        let sizes = config
            .volumes
            .iter()
            .map(|v| (v.name.clone(), v.size))
            .collect();
        Self { sizes, gate }
    }
}

impl VolumeLookup for StandbyVolumes {
    fn volume(&self, name: &str) -> Option<Arc<dyn Namespace>> {
        let size = *self.sizes.get(name)?;
        Some(Arc::new(PathNamespace::standby(size, self.gate.clone())))
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
