//! A namespace of a remote NVMe/TCP subsystem as one more SSD of the
//! accelerator (`[remote-ssd NAME]` in the configuration file), so that a
//! volume family can put members on another machine.
//!
//! The volume layer sees it like an SSD image: it carries the family
//! label, and the engine's array fails it when a write or flush to it
//! fails. A lost connection fails every command at once (the array serves
//! from the other members instead of waiting for the remote), and a
//! supervisor thread connects again with exponential backoff. When the
//! remote is back, the `on_return` hook re-adds the SSD to the arrays
//! that failed it, which rebuild it in the background, as md re-adds a
//! member that came back.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::Duration;

use log::{debug, info, warn};

use super::config::RemoteGeometry;
use super::initiator::{geometry_error, Reconnect, RemoteNamespace, RemoteSpec, DEFAULT_KATO};
use crate::namespace::Namespace;
use crate::volumes::VolumeManager;

/// How often and how patiently the supervisor connects again, and how
/// long the remote has to answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteSsdPolicy {
    /// The first retry's delay, and how often a live connection is
    /// checked.
    pub first: Duration,
    /// The longest delay between two attempts (each failure doubles it).
    pub max: Duration,
    /// How long the remote has for each PDU before the command fails and
    /// the association is dropped (a silent network, not only a closed
    /// one, fails the member).
    pub timeout: Duration,
    /// How long to wait after reconnecting before the member is re-added:
    /// a write sent on the lost association may still be running in the
    /// remote (its old controller is torn down on its own time; NVMe calls
    /// this the command quiesce time) and must not land on a row after the
    /// rebuild copied it.
    pub quiesce: Duration,
    /// The Keep Alive Timeout asked for in Connect (zero: none). A remote
    /// that leaves a Keep Alive unanswered for that long is lost, idle or
    /// not, as if its connection had closed.
    pub kato: Duration,
}

/// The default time a remote SSD has to answer: well below the 30 s
/// after which Linux's NVMe hosts give up on a command, so a silent remote
/// fails its member (and the volume answers from the others) before the
/// host above gives up on the volume.
pub const DEFAULT_REMOTE_SSD_TIMEOUT: Duration = Duration::from_secs(10);

impl Default for RemoteSsdPolicy {
    fn default() -> Self {
        Self {
            first: Duration::from_millis(200),
            max: Duration::from_secs(10),
            timeout: DEFAULT_REMOTE_SSD_TIMEOUT,
            quiesce: Duration::from_secs(2),
            kato: DEFAULT_KATO,
        }
    }
}

type Hook = Box<dyn Fn() + Send + Sync>;

/// A remote namespace used as an SSD.
pub struct RemoteSsd {
    name: String,
    namespace: RemoteNamespace,
    on_return: Mutex<Option<Hook>>,
    reconnections: AtomicU64,
    /// Serializes writes (see [`Namespace::write_at`] below).
    writes: Mutex<()>,
}

impl RemoteSsd {
    /// Connects to the remote namespace (it must answer now: its size
    /// becomes the SSD's) and starts the supervisor.
    #[cfg(test)]
    pub fn connect(name: &str, spec: RemoteSpec, policy: RemoteSsdPolicy) -> io::Result<Arc<Self>> {
        Self::start(name, spec, policy, None)
    }

    /// As [`RemoteSsd::connect`], but with `expected` a remote that does
    /// not answer now is no error: the SSD starts absent with that
    /// geometry (every command fails as on a lost connection, so a volume
    /// family finds the member missing) and the supervisor connects it
    /// once the remote answers with the same geometry, then runs the
    /// [`RemoteSsd::on_return`] hook as after any reconnection. A remote
    /// that answers now with another geometry is refused.
    pub fn start(
        name: &str,
        spec: RemoteSpec,
        policy: RemoteSsdPolicy,
        expected: Option<RemoteGeometry>,
    ) -> io::Result<Arc<Self>> {
        let mut absent = false;
        let namespace = match RemoteNamespace::connect_with(
            spec.clone(),
            Reconnect::ByOwner,
            policy.timeout,
            policy.kato,
        ) {
            Ok(namespace) => {
                let geometry = RemoteGeometry {
                    size: namespace.size(),
                    lba_shift: namespace.lba_shift(),
                };
                if let Some(want) = expected.filter(|want| *want != geometry) {
                    return Err(geometry_error(format!(
                        "the namespace has {} bytes in blocks of {}, the configuration says {} in blocks of {}",
                        geometry.size,
                        1u64 << geometry.lba_shift,
                        want.size,
                        1u64 << want.lba_shift
                    )));
                }
                namespace
            }
            Err(e) => {
                let Some(want) = expected else {
                    return Err(e);
                };
                warn!(
                    "nvmf remote SSD {name}: {} {} namespace {} does not answer ({e}): \
                         absent until it does ({} MiB in blocks of {} from the configuration)",
                    spec.address,
                    spec.subnqn,
                    spec.nsid,
                    want.size >> 20,
                    1u64 << want.lba_shift
                );
                absent = true;
                RemoteNamespace::absent(
                    spec,
                    Reconnect::ByOwner,
                    policy.timeout,
                    policy.kato,
                    want.size,
                    want.lba_shift,
                )
            }
        };
        let ssd = Arc::new(Self {
            name: name.to_string(),
            namespace,
            on_return: Mutex::new(None),
            reconnections: AtomicU64::new(0),
            writes: Mutex::new(()),
        });
        let weak = Arc::downgrade(&ssd);
        thread::Builder::new()
            .name(format!("nvmf-remote-{name}"))
            .spawn(move || supervise(&weak, policy, absent))?;
        Ok(ssd)
    }

    /// Whether the remote answers (as far as the last command knows).
    pub fn is_connected(&self) -> bool {
        self.namespace.is_connected()
    }

    /// The section's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the namespace is.
    pub fn spec(&self) -> &RemoteSpec {
        self.namespace.spec()
    }

    /// Sets what runs each time the remote is reached again after a loss.
    pub fn on_return(&self, hook: impl Fn() + Send + Sync + 'static) {
        *self.on_return.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(hook));
    }

    /// How many Keep Alives the remote answered.
    #[cfg(test)]
    pub fn keep_alives(&self) -> u64 {
        self.namespace.keep_alives()
    }

    /// How many keep-alive threads run for it.
    #[cfg(test)]
    pub fn keep_alive_threads(&self) -> usize {
        self.namespace.keep_alive_threads()
    }

    /// How many times the connection came back.
    #[cfg(test)]
    pub fn reconnections(&self) -> u64 {
        self.reconnections.load(Ordering::Acquire)
    }

    fn returned(&self) {
        self.reconnections.fetch_add(1, Ordering::AcqRel);
        let hook = self.on_return.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(hook) = hook.as_ref() {
            hook();
        }
    }
}

/// Connects `ssd` again whenever its association is lost, until the SSD
/// is dropped. An SSD that starts `absent` was logged as such already.
fn supervise(ssd: &Weak<RemoteSsd>, policy: RemoteSsdPolicy, absent: bool) {
    let mut delay = policy.first;
    let mut failures = u32::from(absent);
    loop {
        thread::sleep(delay);
        let Some(ssd) = ssd.upgrade() else {
            return;
        };
        if ssd.namespace.is_connected() {
            delay = policy.first;
            continue;
        }
        let spec = ssd.spec();
        match ssd.namespace.reconnect() {
            Ok(()) => {
                info!(
                    "nvmf remote SSD {}: {} {} namespace {} is back after {failures} failed attempt(s)",
                    ssd.name, spec.address, spec.subnqn, spec.nsid
                );
                failures = 0;
                delay = policy.first;
                thread::sleep(policy.quiesce);
                ssd.returned();
            }
            Err(e) => {
                if failures == 0 {
                    warn!(
                        "nvmf remote SSD {}: {} {} namespace {} lost ({e}); retrying up to every {} ms",
                        ssd.name,
                        spec.address,
                        spec.subnqn,
                        spec.nsid,
                        policy.max.as_millis()
                    );
                }
                failures = failures.saturating_add(1);
                delay = delay.saturating_mul(2).min(policy.max);
            }
        }
    }
}

/// A hook for [`RemoteSsd::on_return`]: SSD `index` of `manager` comes
/// back into the arrays that failed it and is rebuilt in the background
/// ([`VolumeManager::readd_ssd`]). Faults injected on that SSD stay: a
/// reconnection is not a Fault Injection CLEAR. An array where the SSD
/// never failed is left alone.
pub fn readd_hook(manager: Weak<VolumeManager>, index: u16) -> impl Fn() + Send + Sync {
    move || {
        let Some(manager) = manager.upgrade() else {
            return;
        };
        let arrays = manager.readd_ssd(index);
        debug!("nvmf remote SSD {index}: re-added to {arrays} array(s)");
    }
}

/// Byte ranges as the remote's blocks see them. The volume layer addresses
/// an SSD in bytes (an image takes any offset), while a remote namespace
/// takes whole blocks of its own size, often 4 KiB: reads are widened to
/// whole blocks and writes that cover part of a block read it first.
impl RemoteSsd {
    fn block(&self) -> u64 {
        1 << self.namespace.lba_shift()
    }

    fn aligned(&self, offset: u64, len: u64) -> bool {
        let mask = self.block() - 1;
        offset & mask == 0 && len & mask == 0
    }

    /// The whole blocks around `offset..offset + len`, inside the
    /// namespace.
    fn widen(&self, offset: u64, len: u64) -> io::Result<(u64, u64)> {
        let mask = self.block() - 1;
        let end = offset
            .checked_add(len)
            .filter(|&end| end <= self.size())
            .ok_or(io::ErrorKind::InvalidInput)?;
        // The size is a whole number of blocks, so the rounded end is too.
        Ok((offset & !mask, (end + mask) & !mask))
    }

    fn lock_writes(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Zeroes the partial blocks at the edges of `offset..offset + len`
    /// by read-modify-write and hands the whole blocks between them to
    /// `whole` (the caller holds the write lock).
    fn zero_range(
        &self,
        offset: u64,
        len: u64,
        whole: impl Fn(u64, u64) -> io::Result<()>,
    ) -> io::Result<()> {
        let mask = self.block() - 1;
        let end = offset.checked_add(len).ok_or(io::ErrorKind::InvalidInput)?;
        let inner_start = ((offset + mask) & !mask).min(end);
        let inner_end = (end & !mask).max(inner_start);
        for (from, to) in [(offset, inner_start), (inner_end, end)] {
            if to > from {
                let zeroes = vec![0u8; (to - from) as usize];
                self.write_unlocked(from, &zeroes)?;
            }
        }
        if inner_end > inner_start {
            whole(inner_start, inner_end - inner_start)?;
        }
        Ok(())
    }

    fn write_unlocked(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if self.aligned(offset, data.len() as u64) {
            return self.namespace.write_at(offset, data);
        }
        let (start, end) = self.widen(offset, data.len() as u64)?;
        let block = self.block() as usize;
        let mut whole = vec![0u8; (end - start) as usize];
        let head = (offset - start) as usize;
        let tail = head + data.len();
        if head != 0 {
            self.namespace.read_at(start, &mut whole[..block])?;
        }
        let last = whole.len() - block;
        if tail < whole.len() && (last != 0 || head == 0) {
            self.namespace
                .read_at(end - block as u64, &mut whole[last..])?;
        }
        whole[head..tail].copy_from_slice(data);
        self.namespace.write_at(start, &whole)
    }
}

impl Namespace for RemoteSsd {
    fn size(&self) -> u64 {
        self.namespace.size()
    }

    fn lba_shift(&self) -> u8 {
        self.namespace.lba_shift()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if self.aligned(offset, buf.len() as u64) {
            return self.namespace.read_at(offset, buf);
        }
        let (start, end) = self.widen(offset, buf.len() as u64)?;
        let mut whole = vec![0u8; (end - start) as usize];
        self.namespace.read_at(start, &mut whole)?;
        let head = (offset - start) as usize;
        buf.copy_from_slice(&whole[head..head + buf.len()]);
        Ok(())
    }

    /// Writes are serialized: a read-modify-write of a partial block must
    /// not lose another write to the same block.
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let _writes = self.lock_writes();
        self.write_unlocked(offset, data)
    }

    fn flush(&self) -> io::Result<()> {
        self.namespace.flush()
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.widen(offset, len)?;
        let _writes = self.lock_writes();
        self.zero_range(offset, len, |at, n| self.namespace.write_zeroes(at, n))
    }

    fn deallocate(&self, offset: u64, len: u64) -> io::Result<()> {
        self.widen(offset, len)?;
        let _writes = self.lock_writes();
        self.zero_range(offset, len, |at, n| self.namespace.deallocate(at, n))
    }
}
