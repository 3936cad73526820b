//! The zone state machine and its resources (open and active zones),
//! independent of storage and of the NVMe transport.
//!
//! States and transitions follow the NVMe Zoned Namespace Command Set:
//! Empty, Implicitly Opened, Explicitly Opened and Closed zones can be
//! written; opened and closed zones are *active*, opened ones also *open*,
//! and the namespace limits both counts (MAR, MOR). Full, Read Only and
//! Offline zones take no writes. Every transition goes through
//! [`ZoneTable::set_state`], which keeps the two counts in step.

use nvme_shim::status::Status;

use super::status;

/// The state of a zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZoneState {
    Empty,
    ImplicitlyOpened,
    ExplicitlyOpened,
    Closed,
    ReadOnly,
    Full,
    Offline,
}

impl ZoneState {
    /// The Zone State value of a Zone Descriptor (ZS bits 7:4) and of the
    /// Zone Receive Action Specific Field filter.
    pub const fn code(self) -> u8 {
        match self {
            ZoneState::Empty => 0x1,
            ZoneState::ImplicitlyOpened => 0x2,
            ZoneState::ExplicitlyOpened => 0x3,
            ZoneState::Closed => 0x4,
            ZoneState::ReadOnly => 0xd,
            ZoneState::Full => 0xe,
            ZoneState::Offline => 0xf,
        }
    }

    /// The state a Zone State value names.
    pub const fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0x1 => ZoneState::Empty,
            0x2 => ZoneState::ImplicitlyOpened,
            0x3 => ZoneState::ExplicitlyOpened,
            0x4 => ZoneState::Closed,
            0xd => ZoneState::ReadOnly,
            0xe => ZoneState::Full,
            0xf => ZoneState::Offline,
            _ => return None,
        })
    }

    /// Whether the zone holds an open resource.
    pub const fn is_open(self) -> bool {
        matches!(
            self,
            ZoneState::ImplicitlyOpened | ZoneState::ExplicitlyOpened
        )
    }

    /// Whether the zone holds an active resource (open or closed).
    pub const fn is_active(self) -> bool {
        self.is_open() || matches!(self, ZoneState::Closed)
    }
}

/// A Zone Send Action of Zone Management Send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZoneAction {
    Close,
    Finish,
    Open,
    Reset,
    Offline,
}

impl ZoneAction {
    /// Decodes the Zone Send Action field; `None` for values dpuemu does
    /// not implement (Set Zone Descriptor Extension, reserved values).
    pub const fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0x1 => ZoneAction::Close,
            0x2 => ZoneAction::Finish,
            0x3 => ZoneAction::Open,
            0x4 => ZoneAction::Reset,
            0x5 => ZoneAction::Offline,
            _ => return None,
        })
    }

    /// Whether the action changes what reads return, so it is made durable
    /// before it completes (open and close are undone by a power cycle
    /// anyway).
    pub const fn is_durable(self) -> bool {
        matches!(
            self,
            ZoneAction::Finish | ZoneAction::Reset | ZoneAction::Offline
        )
    }
}

/// One zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Zone {
    pub state: ZoneState,
    /// Blocks written from the zone's start: the write pointer is the zone
    /// start plus this. A zone finished early keeps its value, so reads
    /// past the data still return zeroes.
    pub written: u64,
}

impl Zone {
    /// A zone in the Empty state.
    pub const EMPTY: Zone = Zone {
        state: ZoneState::Empty,
        written: 0,
    };
}

/// The zone layout and limits of a namespace, in logical blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Zone Size (ZSZE), a power of two.
    pub zone_blocks: u64,
    /// Zone Capacity (ZCAP): the writable blocks of each zone.
    pub capacity_blocks: u64,
    /// Number of zones.
    pub zones: u64,
    /// Maximum Open Resources (MOR + 1).
    pub max_open: u32,
    /// Maximum Active Resources (MAR + 1).
    pub max_active: u32,
}

impl Geometry {
    /// Blocks of the namespace.
    pub const fn blocks(&self) -> u64 {
        self.zones * self.zone_blocks
    }

    /// The zone that holds `lba`.
    pub fn zone_of(&self, lba: u64) -> Option<usize> {
        if lba >= self.blocks() {
            return None;
        }
        usize::try_from(lba / self.zone_blocks).ok()
    }

    /// The first block of zone `zone`.
    pub const fn zone_start(&self, zone: usize) -> u64 {
        zone as u64 * self.zone_blocks
    }
}

/// Every zone of a namespace with its resource counts.
pub struct ZoneTable {
    geometry: Geometry,
    zones: Vec<Zone>,
    /// A write to the zone is between `begin_write` and `end_write`; an
    /// implicit close never picks such a zone.
    writing: Vec<bool>,
    /// Zones in an opened state.
    open: u32,
    /// Zones in an opened or the closed state.
    active: u32,
    /// Something changed since the last [`ZoneTable::take_dirty`].
    dirty: bool,
}

impl ZoneTable {
    /// A table of `zones` (as recovered from the media; as many as the
    /// geometry says). Opened zones are closed, as after a power cycle:
    /// to Empty when nothing was written, else to Closed.
    pub fn new(geometry: Geometry, zones: Vec<Zone>) -> Self {
        let count = zones.len();
        let mut table = Self {
            geometry,
            zones,
            writing: vec![false; count],
            open: 0,
            active: 0,
            dirty: false,
        };
        for zone in &table.zones {
            table.open += u32::from(zone.state.is_open());
            table.active += u32::from(zone.state.is_active());
        }
        table.close_opened();
        table
    }

    /// Every zone, in order.
    pub fn zones(&self) -> &[Zone] {
        &self.zones
    }

    /// Zone `zone`.
    pub fn zone(&self, zone: usize) -> Option<Zone> {
        self.zones.get(zone).copied()
    }

    /// (open, active) zone counts.
    pub fn counts(&self) -> (u32, u32) {
        (self.open, self.active)
    }

    /// Whether anything changed since the last call, and clears it.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Marks the table changed (a commit of it failed).
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    fn set_state(&mut self, zone: usize, state: ZoneState) {
        let Some(z) = self.zones.get_mut(zone) else {
            return;
        };
        let old = z.state;
        z.state = state;
        self.open = self.open - u32::from(old.is_open()) + u32::from(state.is_open());
        self.active = self.active - u32::from(old.is_active()) + u32::from(state.is_active());
        self.dirty |= old != state;
    }

    /// Closes every opened zone (controller reset, power on): one with
    /// nothing written becomes Empty, the others Closed.
    pub fn close_opened(&mut self) {
        for zone in 0..self.zones.len() {
            let z = self.zones[zone];
            if z.state.is_open() {
                let to = if z.written == 0 {
                    ZoneState::Empty
                } else {
                    ZoneState::Closed
                };
                self.set_state(zone, to);
            }
        }
    }

    /// Marks zone `zone` Read Only, as a drive does with worn-out media.
    /// Returns false for a zone that does not exist or is offline.
    #[cfg(test)]
    pub fn set_read_only(&mut self, zone: usize) -> bool {
        match self.zone(zone) {
            Some(z) if z.state != ZoneState::Offline => {
                self.set_state(zone, ZoneState::ReadOnly);
                true
            }
            _ => false,
        }
    }

    /// Checks a write of `blocks` blocks at `slba` to zone `zone` (a Zone
    /// Append when `append`: then `slba` must be the zone start) and opens
    /// the zone implicitly if needed. Returns the LBA to write at (the
    /// write pointer). On success the caller writes and then calls
    /// [`ZoneTable::end_write`]; on error nothing changed.
    pub fn begin_write(
        &mut self,
        zone: usize,
        slba: u64,
        blocks: u64,
        append: bool,
    ) -> Result<u64, Status> {
        let z = self.zone(zone).ok_or(Status::LBA_OUT_OF_RANGE)?;
        match z.state {
            ZoneState::Full => return Err(status::ZONE_IS_FULL),
            ZoneState::ReadOnly => return Err(status::ZONE_IS_READ_ONLY),
            ZoneState::Offline => return Err(status::ZONE_IS_OFFLINE),
            _ => {}
        }
        let start = self.geometry.zone_start(zone);
        let wp = start + z.written;
        if append {
            if slba != start {
                return Err(Status::INVALID_FIELD);
            }
        } else if slba != wp {
            return Err(status::ZONE_INVALID_WRITE);
        }
        let end = wp.checked_add(blocks).ok_or(status::ZONE_BOUNDARY_ERROR)?;
        if blocks == 0 || end > start + self.geometry.capacity_blocks {
            return Err(status::ZONE_BOUNDARY_ERROR);
        }
        self.open_zone(zone, false)?;
        if let Some(w) = self.writing.get_mut(zone) {
            *w = true;
        }
        Ok(wp)
    }

    /// Ends a write [`ZoneTable::begin_write`] admitted: when it reached
    /// the media (`ok`), the write pointer moves past it, and a zone
    /// written to its capacity becomes Full.
    pub fn end_write(&mut self, zone: usize, blocks: u64, ok: bool) {
        if let Some(w) = self.writing.get_mut(zone) {
            *w = false;
        }
        if !ok {
            return;
        }
        let capacity = self.geometry.capacity_blocks;
        let Some(z) = self.zones.get_mut(zone) else {
            return;
        };
        z.written = (z.written + blocks).min(capacity);
        self.dirty = true;
        if z.written == capacity {
            self.set_state(zone, ZoneState::Full);
        }
    }

    /// Opens zone `zone` (explicitly or by a write), taking the resources
    /// it needs; an implicitly opened zone is closed to free an open
    /// resource when all are taken.
    fn open_zone(&mut self, zone: usize, explicit: bool) -> Result<(), Status> {
        let state = self.zone(zone).ok_or(Status::LBA_OUT_OF_RANGE)?.state;
        let opened = if explicit {
            ZoneState::ExplicitlyOpened
        } else {
            ZoneState::ImplicitlyOpened
        };
        match state {
            ZoneState::ExplicitlyOpened => return Ok(()),
            ZoneState::ImplicitlyOpened => {
                self.set_state(zone, opened);
                return Ok(());
            }
            ZoneState::Empty | ZoneState::Closed => {}
            _ => return Err(status::INVALID_ZONE_STATE_TRANSITION),
        }
        if state == ZoneState::Empty && self.active >= self.geometry.max_active {
            return Err(status::TOO_MANY_ACTIVE_ZONES);
        }
        if self.open >= self.geometry.max_open && !self.close_implicitly_opened(zone) {
            return Err(status::TOO_MANY_OPEN_ZONES);
        }
        self.set_state(zone, opened);
        Ok(())
    }

    /// Closes one implicitly opened zone other than `except` that no write
    /// is using. Returns whether one was closed.
    fn close_implicitly_opened(&mut self, except: usize) -> bool {
        let victim = (0..self.zones.len()).find(|&i| {
            i != except && self.zones[i].state == ZoneState::ImplicitlyOpened && !self.writing[i]
        });
        match victim {
            Some(i) => {
                self.set_state(i, ZoneState::Closed);
                true
            }
            None => false,
        }
    }

    /// Applies `action` to zone `zone`. Returns whether the zone's blocks
    /// were discarded (a reset of a zone that was not empty).
    pub fn manage(&mut self, zone: usize, action: ZoneAction) -> Result<bool, Status> {
        let z = self.zone(zone).ok_or(Status::LBA_OUT_OF_RANGE)?;
        use ZoneState::*;
        match (action, z.state) {
            (ZoneAction::Open, Empty | Closed | ImplicitlyOpened | ExplicitlyOpened) => {
                self.open_zone(zone, true)?
            }
            (ZoneAction::Close, ImplicitlyOpened | ExplicitlyOpened) => {
                self.set_state(zone, Closed)
            }
            (ZoneAction::Close, Closed) => {}
            (ZoneAction::Finish, Empty | ImplicitlyOpened | ExplicitlyOpened | Closed) => {
                self.set_state(zone, Full)
            }
            (ZoneAction::Finish, Full) => {}
            (ZoneAction::Reset, ImplicitlyOpened | ExplicitlyOpened | Closed | Full) => {
                self.zones[zone].written = 0;
                self.set_state(zone, Empty);
                self.dirty = true;
                return Ok(true);
            }
            (ZoneAction::Reset, Empty) => {}
            (ZoneAction::Offline, ReadOnly) => {
                self.set_state(zone, Offline);
            }
            (ZoneAction::Offline, Offline) => {}
            _ => return Err(status::INVALID_ZONE_STATE_TRANSITION),
        }
        Ok(false)
    }

    /// Applies `action` with Select All: to every zone in a state the
    /// action applies to (Open: Closed zones; Close: opened ones; Finish:
    /// opened and closed ones; Reset: opened, closed and full ones;
    /// Offline: read-only ones). Either all of them change or, when the
    /// open resources do not suffice, none. Returns the zones reset.
    pub fn manage_all(&mut self, action: ZoneAction) -> Result<Vec<usize>, Status> {
        use ZoneState::*;
        let applies = |state: ZoneState| match action {
            ZoneAction::Open => state == Closed,
            ZoneAction::Close => state.is_open(),
            ZoneAction::Finish => state.is_active(),
            ZoneAction::Reset => state.is_active() || state == Full,
            ZoneAction::Offline => state == ReadOnly,
        };
        let chosen: Vec<usize> = (0..self.zones.len())
            .filter(|&i| applies(self.zones[i].state))
            .collect();
        if action == ZoneAction::Open {
            let needed = u32::try_from(chosen.len()).unwrap_or(u32::MAX);
            if self.open.saturating_add(needed) > self.geometry.max_open {
                return Err(status::TOO_MANY_OPEN_ZONES);
            }
        }
        let mut reset = Vec::new();
        for &zone in &chosen {
            if self.manage(zone, action)? {
                reset.push(zone);
            }
        }
        Ok(reset)
    }

    /// Recounts the open and active zones (tests check the counts kept).
    #[cfg(test)]
    pub fn recount(&self) -> (u32, u32) {
        let open = self.zones.iter().filter(|z| z.state.is_open()).count();
        let active = self.zones.iter().filter(|z| z.state.is_active()).count();
        (open as u32, active as u32)
    }
}
