//! Zoned namespaces: an SSD function's namespace under the NVMe Zoned
//! Namespace Command Set (CSI 02h), `--zoned-ssd`.
//!
//! A [`ZonedNamespace`] lies over an SSD image: zones of `zone_blocks`
//! blocks from LBA 0, of which the first `capacity_blocks` are writable,
//! then the zone state area (`persist.rs`) in the image's last bytes. The
//! zone rules live in `state.rs`; this file keeps them in step with the
//! media. The NVMe commands are decoded in `controller/zoned.rs`.
//!
//! Durability: zone states and write pointers are committed to the state
//! area by [`Namespace::flush`] (an NVMe Flush, a FUA write, every write
//! while the volatile write cache is off, and shutdown): the commit takes
//! a snapshot of the table, flushes the data every counted write put on
//! the media, writes the snapshot to a slot and flushes again. Resets,
//! finishes and offlines commit before they complete. After a crash the
//! table comes back as of the last completed commit, so every write a
//! completed flush covered lies below its zone's write pointer; writes
//! that no commit counted lie at or past it, read as zeroes and are
//! overwritten by the next writes. Opened zones come back Closed (Empty
//! when nothing was written in them).
//!
//! Locks: a zone's `zone_locks` entry is held across a write's media
//! access and a management action, then `commit`, then `table`; never the
//! other way round.

mod persist;
mod state;
#[cfg(test)]
mod tests;

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use log::{info, warn};
use nvme_shim::status::Status;

use crate::namespace::Namespace;
use state::ZoneTable;
pub use state::{Geometry, Zone, ZoneAction, ZoneState};

/// Status codes of the Zoned Namespace Command Set (Command Specific
/// Status, SCT 1h).
pub mod status {
    use nvme_shim::status::{sct, Status};

    /// Zone Boundary Error: the blocks cross the zone's writable capacity.
    pub const ZONE_BOUNDARY_ERROR: Status = Status::dnr(sct::COMMAND_SPECIFIC, 0xb8);
    /// Zone Is Full.
    pub const ZONE_IS_FULL: Status = Status::dnr(sct::COMMAND_SPECIFIC, 0xb9);
    /// Zone Is Read Only.
    pub const ZONE_IS_READ_ONLY: Status = Status::dnr(sct::COMMAND_SPECIFIC, 0xba);
    /// Zone Is Offline.
    pub const ZONE_IS_OFFLINE: Status = Status::dnr(sct::COMMAND_SPECIFIC, 0xbb);
    /// Zone Invalid Write: a write not at the write pointer.
    pub const ZONE_INVALID_WRITE: Status = Status::dnr(sct::COMMAND_SPECIFIC, 0xbc);
    /// Too Many Active Zones.
    pub const TOO_MANY_ACTIVE_ZONES: Status = Status::dnr(sct::COMMAND_SPECIFIC, 0xbd);
    /// Too Many Open Zones.
    pub const TOO_MANY_OPEN_ZONES: Status = Status::dnr(sct::COMMAND_SPECIFIC, 0xbe);
    /// Invalid Zone State Transition.
    pub const INVALID_ZONE_STATE_TRANSITION: Status = Status::dnr(sct::COMMAND_SPECIFIC, 0xbf);
}

/// Default zone size of `--zoned-ssd`.
pub const DEFAULT_ZONE_BYTES: u64 = 16 << 20;
/// Default maximum open and active zones (a WD ZN540 has 14).
pub const DEFAULT_MAX_ZONES: u32 = 14;
/// Bytes of a Zone Descriptor and of the Zone Report header.
pub const DESCRIPTOR_BYTES: usize = 64;

/// What `--zoned-ssd` asks for, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZoneConfig {
    /// Zone size: a power of two, at least 4 KiB.
    pub zone_bytes: u64,
    /// Zone capacity: a multiple of 4 KiB, at most the zone size.
    pub capacity_bytes: u64,
    pub max_open: u32,
    pub max_active: u32,
}

impl Default for ZoneConfig {
    fn default() -> Self {
        Self {
            zone_bytes: DEFAULT_ZONE_BYTES,
            capacity_bytes: DEFAULT_ZONE_BYTES,
            max_open: DEFAULT_MAX_ZONES,
            max_active: DEFAULT_MAX_ZONES,
        }
    }
}

impl ZoneConfig {
    /// Checks the values against each other (the image size is checked
    /// by [`ZonedNamespace::open`]).
    pub fn validate(&self) -> Result<(), String> {
        if self.zone_bytes < 4096 || !self.zone_bytes.is_power_of_two() {
            return Err(format!(
                "zone size {} is not a power of two of at least 4K",
                self.zone_bytes
            ));
        }
        if self.capacity_bytes == 0
            || !self.capacity_bytes.is_multiple_of(4096)
            || self.capacity_bytes > self.zone_bytes
        {
            return Err(format!(
                "zone capacity {} is not a multiple of 4K between 4K and the zone size",
                self.capacity_bytes
            ));
        }
        if self.max_open == 0 || self.max_open > self.max_active {
            return Err(format!(
                "max open zones {} not in 1..=max active zones ({})",
                self.max_open, self.max_active
            ));
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A media access failed: the command fails with a Write Fault.
fn media_error(_: io::Error) -> Status {
    Status::WRITE_FAULT
}

/// A zoned namespace over an SSD image.
pub struct ZonedNamespace {
    name: String,
    media: Arc<dyn Namespace>,
    geometry: Geometry,
    lba_shift: u8,
    table: Mutex<ZoneTable>,
    /// One per zone: held across a write's media access and across a
    /// management action, so a zone's writes and actions run one at a time.
    zone_locks: Vec<Mutex<()>>,
    /// Generation of the newest valid slot; held across a commit.
    commit: Mutex<u64>,
}

impl ZonedNamespace {
    /// Lays zones of `config` over `media`, reads the zone state area and
    /// recovers the table (an image without one starts with every zone
    /// Empty). Fails when the image holds no zone or a state area for
    /// another zone layout, or a damaged one.
    pub fn open(
        name: &str,
        media: Arc<dyn Namespace>,
        config: &ZoneConfig,
    ) -> Result<Self, String> {
        config.validate()?;
        let lba_shift = media.lba_shift();
        let zone_bytes = config.zone_bytes;
        let mut zones = media.size() / zone_bytes;
        let area = |zones: u64| 2 * persist::slot_bytes(zones) + persist::LABEL_BYTES;
        while zones > 0 && zones * zone_bytes + area(zones) > media.size() {
            zones -= 1;
        }
        if zones == 0 {
            return Err(format!(
                "{name}: the image ({} bytes) holds no zone of {zone_bytes} bytes and the zone state area",
                media.size()
            ));
        }
        let geometry = Geometry {
            zone_blocks: zone_bytes >> lba_shift,
            capacity_blocks: config.capacity_bytes >> lba_shift,
            zones,
            max_open: config.max_open,
            max_active: config.max_active,
        };
        let this = Self {
            name: name.to_string(),
            media,
            geometry,
            lba_shift,
            table: Mutex::new(ZoneTable::new(geometry, Vec::new())),
            zone_locks: (0..zones).map(|_| Mutex::new(())).collect(),
            commit: Mutex::new(0),
        };
        let (generation, recovered) = this.recover()?;
        let fresh = recovered.is_none();
        let zones_table = recovered.unwrap_or_else(|| vec![Zone::EMPTY; zones as usize]);
        let mut table = ZoneTable::new(geometry, zones_table);
        if fresh {
            table.mark_dirty();
        }
        let (open, active) = table.counts();
        if active > geometry.max_active {
            warn!(
                "{name}: {active} zones are active, more than the {} allowed: no zone opens until some are finished or reset",
                geometry.max_active
            );
        }
        debug_assert_eq!(open, 0);
        *lock(&this.table) = table;
        *lock(&this.commit) = generation;
        if fresh {
            // A first commit, then the label: a label always has a whole
            // slot behind it, and a later torn commit is never taken for
            // a blank image.
            this.commit()
                .and_then(|()| {
                    let label = persist::encode_label(&geometry);
                    this.media.write_at(this.label_offset(), &label)?;
                    this.media.flush()
                })
                .map_err(|e| format!("{name}: writing the zone state area: {e}"))?;
        }
        info!(
            "{name}: zoned, {zones} zones of {} blocks (capacity {}), max open {}, max active {}{}",
            geometry.zone_blocks,
            geometry.capacity_blocks,
            geometry.max_open,
            geometry.max_active,
            if fresh { ", new zone state area" } else { "" }
        );
        Ok(this)
    }

    fn slot_offset(&self, generation: u64) -> u64 {
        let first = self.geometry.zones * (self.geometry.zone_blocks << self.lba_shift);
        first + (generation % 2) * persist::slot_bytes(self.geometry.zones)
    }

    fn label_offset(&self) -> u64 {
        self.media.size() - persist::LABEL_BYTES
    }

    /// Reads the label and both slots: the newest valid copy, `None` for
    /// an image that is not zoned yet.
    fn recover(&self) -> Result<(u64, Option<Vec<Zone>>), String> {
        let name = &self.name;
        let mut label = vec![0u8; persist::LABEL_BYTES as usize];
        self.media
            .read_at(self.label_offset(), &mut label)
            .map_err(|e| format!("{name}: reading the zone label: {e}"))?;
        let g = &self.geometry;
        match persist::decode_label(&label) {
            // Not zoned yet (or the first commit never completed).
            persist::Label::Blank => return Ok((0, None)),
            persist::Label::Damaged => {
                return Err(format!("{name}: the zone label is damaged"));
            }
            persist::Label::Layout {
                zone_blocks,
                capacity_blocks,
                zones,
            } if (zone_blocks, capacity_blocks, zones)
                != (g.zone_blocks, g.capacity_blocks, g.zones) =>
            {
                return Err(format!(
                    "{name}: the image holds {zones} zones of {zone_blocks} blocks (capacity {capacity_blocks}); --zoned-ssd now asks for {} of {} (capacity {}): give the same zone size and capacity and image size, or a new image",
                    g.zones, g.zone_blocks, g.capacity_blocks
                ));
            }
            persist::Label::Layout { .. } => {}
        }
        let mut slots = Vec::new();
        for which in 0..2u64 {
            let mut bytes = vec![0u8; persist::slot_bytes(self.geometry.zones) as usize];
            self.media
                .read_at(self.slot_offset(which), &mut bytes)
                .map_err(|e| format!("{name}: reading the zone state area: {e}"))?;
            slots.push(persist::decode(&self.geometry, &bytes));
        }
        let mut newest: Option<(u64, Vec<Zone>)> = None;
        for slot in &slots {
            if let persist::Slot::Valid { generation, zones } = slot {
                if newest.as_ref().is_none_or(|(g, _)| generation > g) {
                    newest = Some((*generation, zones.clone()));
                }
            }
        }
        if let Some((generation, zones)) = newest {
            for slot in &slots {
                if let persist::Slot::Damaged(why) = slot {
                    warn!("{name}: a zone state copy was not whole ({why}): a commit was torn; the one before it holds");
                }
            }
            return Ok((generation, Some(zones)));
        }
        for slot in &slots {
            match slot {
                persist::Slot::OtherGeometry {
                    zone_blocks,
                    capacity_blocks,
                    zones,
                } => {
                    return Err(format!(
                        "{name}: the image holds {zones} zones of {zone_blocks} blocks (capacity {capacity_blocks}); --zoned-ssd now asks for {} of {} (capacity {}): give the same zone size and capacity, or a new image",
                        self.geometry.zones, self.geometry.zone_blocks, self.geometry.capacity_blocks
                    ))
                }
                persist::Slot::Damaged(why) => {
                    return Err(format!("{name}: the zone state area is damaged ({why})"))
                }
                _ => {}
            }
        }
        Err(format!(
            "{name}: the zone label is there but no zone state copy is"
        ))
    }

    /// Makes every counted write and the zone table durable (see the
    /// module comment for the order).
    fn commit(&self) -> io::Result<()> {
        let mut generation = lock(&self.commit);
        let snapshot = {
            let mut table = lock(&self.table);
            table.take_dirty().then(|| table.zones().to_vec())
        };
        let result = self.media.flush().and_then(|()| {
            let Some(zones) = &snapshot else {
                return Ok(());
            };
            let next = *generation + 1;
            let slot = persist::encode(&self.geometry, next, zones);
            self.media.write_at(self.slot_offset(next), &slot)?;
            self.media.flush()?;
            *generation = next;
            Ok(())
        });
        if result.is_err() && snapshot.is_some() {
            lock(&self.table).mark_dirty();
        }
        result
    }

    /// The zone layout and limits.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// Zone `zone` now.
    #[cfg(test)]
    pub fn zone(&self, zone: usize) -> Option<Zone> {
        lock(&self.table).zone(zone)
    }

    /// (open, active) zone counts.
    #[cfg(test)]
    pub fn counts(&self) -> (u32, u32) {
        lock(&self.table).counts()
    }

    /// Writes `blocks` blocks at `slba` (at the zone's write pointer for a
    /// Zone Append, whose `slba` is the zone start) with `write`, given
    /// the byte offset. Returns the first LBA written.
    fn write_with(
        &self,
        slba: u64,
        blocks: u64,
        append: bool,
        write: impl FnOnce(u64) -> io::Result<()>,
    ) -> Result<u64, Status> {
        let end = slba.checked_add(blocks).ok_or(Status::LBA_OUT_OF_RANGE)?;
        if end > self.geometry.blocks() {
            return Err(Status::LBA_OUT_OF_RANGE);
        }
        let zone = self
            .geometry
            .zone_of(slba)
            .ok_or(Status::LBA_OUT_OF_RANGE)?;
        let _serial = lock(self.zone_locks.get(zone).ok_or(Status::LBA_OUT_OF_RANGE)?);
        let lba = lock(&self.table).begin_write(zone, slba, blocks, append)?;
        let result = write(lba << self.lba_shift);
        lock(&self.table).end_write(zone, blocks, result.is_ok());
        result.map_err(media_error)?;
        Ok(lba)
    }

    /// Write (`append` false) or Zone Append (`append` true) of `data`, a
    /// whole number of blocks.
    pub fn write(&self, slba: u64, data: &[u8], append: bool) -> Result<u64, Status> {
        let blocks = (data.len() as u64) >> self.lba_shift;
        self.write_with(slba, blocks, append, |offset| {
            self.media.write_at(offset, data)
        })
    }

    /// Write Zeroes of `blocks` blocks at `slba` (a write at the pointer).
    pub fn write_zeroes(&self, slba: u64, blocks: u64) -> Result<u64, Status> {
        self.write_with(slba, blocks, false, |offset| {
            self.media.write_zeroes(offset, blocks << self.lba_shift)
        })
    }

    /// Reads `buf.len()` bytes at `slba`; blocks at or past their zone's
    /// write pointer read as zeroes. Reads may cross zone boundaries
    /// (OZCS.RAZB) but not into an offline zone.
    pub fn read(&self, slba: u64, buf: &mut [u8]) -> Result<(), Status> {
        let blocks = (buf.len() as u64) >> self.lba_shift;
        let end = slba.checked_add(blocks).ok_or(Status::LBA_OUT_OF_RANGE)?;
        if end > self.geometry.blocks() {
            return Err(Status::LBA_OUT_OF_RANGE);
        }
        // The write pointers are taken before the media is read: a write
        // that completes meanwhile is not returned, never half of one.
        let mut visible = Vec::new();
        {
            let table = lock(&self.table);
            let mut lba = slba;
            while lba < end {
                let zone = self.geometry.zone_of(lba).ok_or(Status::LBA_OUT_OF_RANGE)?;
                let z = table.zone(zone).ok_or(Status::LBA_OUT_OF_RANGE)?;
                if z.state == ZoneState::Offline {
                    return Err(status::ZONE_IS_OFFLINE);
                }
                let start = self.geometry.zone_start(zone);
                visible.push((start + z.written, start + self.geometry.zone_blocks));
                lba = start + self.geometry.zone_blocks;
            }
        }
        self.media
            .read_at(slba << self.lba_shift, buf)
            .map_err(|_| Status::UNRECOVERED_READ_ERROR)?;
        for (data_end, zone_end) in visible {
            let from = data_end.max(slba);
            let to = zone_end.min(end);
            if from < to {
                let a = ((from - slba) << self.lba_shift) as usize;
                let b = ((to - slba) << self.lba_shift) as usize;
                if let Some(tail) = buf.get_mut(a..b) {
                    tail.fill(0);
                }
            }
        }
        Ok(())
    }

    /// Zone Management Send: `action` on the zone starting at `slba`, or on
    /// every zone it applies to with `select_all` (`slba` ignored).
    pub fn manage(&self, slba: u64, action: ZoneAction, select_all: bool) -> Result<(), Status> {
        let (guards, reset) = if select_all {
            let guards: Vec<_> = self.zone_locks.iter().map(lock).collect();
            let reset = lock(&self.table).manage_all(action)?;
            (guards, reset)
        } else {
            let zone = self
                .geometry
                .zone_of(slba)
                .ok_or(Status::LBA_OUT_OF_RANGE)?;
            if slba != self.geometry.zone_start(zone) {
                return Err(Status::INVALID_FIELD);
            }
            let guard = lock(self.zone_locks.get(zone).ok_or(Status::LBA_OUT_OF_RANGE)?);
            let reset = lock(&self.table).manage(zone, action)?;
            (vec![guard], if reset { vec![zone] } else { Vec::new() })
        };
        if action.is_durable() {
            self.commit().map_err(media_error)?;
        }
        // The reset zones' old data is unreachable now (reads past the
        // pointer are zeroes); give its space back to the image.
        let zone_bytes = self.geometry.zone_blocks << self.lba_shift;
        for zone in reset {
            let offset = self.geometry.zone_start(zone) << self.lba_shift;
            if let Err(e) = self.media.deallocate(offset, zone_bytes) {
                warn!("{}: zone {zone}: deallocate after reset: {e}", self.name);
            }
        }
        drop(guards);
        Ok(())
    }

    /// Zone Management Receive, Report Zones: the report of `bytes` bytes
    /// from the zone holding `slba`, the zones in state `filter` only (all
    /// when `None`); with `partial`, the header counts the descriptors
    /// returned, else every zone that matches from there on.
    pub fn report(
        &self,
        slba: u64,
        filter: Option<ZoneState>,
        partial: bool,
        bytes: usize,
    ) -> Result<Vec<u8>, Status> {
        let first = self
            .geometry
            .zone_of(slba)
            .ok_or(Status::LBA_OUT_OF_RANGE)?;
        let room = bytes.saturating_sub(DESCRIPTOR_BYTES) / DESCRIPTOR_BYTES;
        let mut out = vec![0u8; bytes.max(DESCRIPTOR_BYTES)];
        let table = lock(&self.table);
        let mut matching = 0u64;
        let mut returned = 0usize;
        for (index, zone) in table.zones().iter().enumerate().skip(first) {
            if filter.is_some_and(|f| f != zone.state) {
                continue;
            }
            matching += 1;
            if returned < room {
                let at = DESCRIPTOR_BYTES * (returned + 1);
                self.describe(index, zone, &mut out[at..at + DESCRIPTOR_BYTES]);
                returned += 1;
            } else if partial {
                break;
            }
        }
        let count = if partial { returned as u64 } else { matching };
        out[..8].copy_from_slice(&count.to_le_bytes());
        out.truncate(bytes);
        Ok(out)
    }

    /// Fills a Zone Descriptor for zone `index`.
    fn describe(&self, index: usize, zone: &Zone, out: &mut [u8]) {
        /// Zone Type: Sequential Write Required.
        const SEQUENTIAL_WRITE_REQUIRED: u8 = 0x2;
        let start = self.geometry.zone_start(index);
        let wp = match zone.state {
            ZoneState::Full => start + self.geometry.capacity_blocks,
            // Not valid in these states.
            ZoneState::ReadOnly | ZoneState::Offline => u64::MAX,
            _ => start + zone.written,
        };
        out[0] = SEQUENTIAL_WRITE_REQUIRED;
        out[1] = zone.state.code() << 4;
        out[8..16].copy_from_slice(&self.geometry.capacity_blocks.to_le_bytes());
        out[16..24].copy_from_slice(&start.to_le_bytes());
        out[24..32].copy_from_slice(&wp.to_le_bytes());
    }

    /// A controller reset closes the opened zones.
    pub fn controller_reset(&self) {
        lock(&self.table).close_opened();
    }

    /// Marks zone `zone` Read Only, as worn-out media would (there is no
    /// command for it; tests use it).
    #[cfg(test)]
    pub fn set_read_only(&self, zone: usize) -> bool {
        lock(&self.table).set_read_only(zone)
    }

    /// The kept (open, active) counts and the counts recomputed from the
    /// zones, which must agree.
    #[cfg(test)]
    pub fn counts_and_recount(&self) -> ((u32, u32), (u32, u32)) {
        let table = lock(&self.table);
        (table.counts(), table.recount())
    }
}

impl Namespace for ZonedNamespace {
    fn size(&self) -> u64 {
        self.geometry.blocks() << self.lba_shift
    }

    fn used(&self) -> u64 {
        let table = lock(&self.table);
        let blocks: u64 = table.zones().iter().map(|z| z.written).sum();
        blocks << self.lba_shift
    }

    fn lba_shift(&self) -> u8 {
        self.lba_shift
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let block = 1u64 << self.lba_shift;
        if !offset.is_multiple_of(block) || !(buf.len() as u64).is_multiple_of(block) {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        self.read(offset >> self.lba_shift, buf)
            .map_err(|s| io::Error::other(format!("zoned read: status {:#x}", s.0)))
    }

    /// Writes go through [`ZonedNamespace::write`], which keeps the zone
    /// rules; a plain write would bypass them.
    fn write_at(&self, _offset: u64, _data: &[u8]) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    fn flush(&self) -> io::Result<()> {
        self.commit()
    }

    fn write_zeroes(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    fn deallocate(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    fn zoned(&self) -> Option<&ZonedNamespace> {
        Some(self)
    }
}
