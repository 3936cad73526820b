//! Zoned namespace tests: the zone rules, the errors, the state area and
//! crashes, on RAM and on image files behind the power-loss layer.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use nvme_shim::status::Status;

use super::status::*;
use super::*;
use crate::namespace::FileNamespace;
use crate::power_loss::{SplitMix64, VolatileNamespace};

const BLOCK: usize = 512;

/// Media in RAM whose writes can be made to fail.
struct RamMedia {
    bytes: Mutex<Vec<u8>>,
    fail_writes: AtomicBool,
}

impl RamMedia {
    fn new(len: usize) -> Arc<Self> {
        Arc::new(Self {
            bytes: Mutex::new(vec![0; len]),
            fail_writes: AtomicBool::new(false),
        })
    }
}

impl Namespace for RamMedia {
    fn size(&self) -> u64 {
        self.bytes.lock().unwrap().len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let b = self.bytes.lock().unwrap();
        buf.copy_from_slice(&b[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected media failure"));
        }
        let mut b = self.bytes.lock().unwrap();
        b[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.deallocate(offset, len)
    }
    fn deallocate(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut b = self.bytes.lock().unwrap();
        b[offset as usize..(offset + len) as usize].fill(0);
        Ok(())
    }
}

/// 64 KiB zones (128 blocks) with 48 KiB (96 blocks) writable, 2 open and
/// 3 active at most.
fn small() -> ZoneConfig {
    ZoneConfig {
        zone_bytes: 64 << 10,
        capacity_bytes: 48 << 10,
        max_open: 2,
        max_active: 3,
    }
}

fn open_ram(config: &ZoneConfig) -> (Arc<RamMedia>, ZonedNamespace) {
    let media = RamMedia::new(1 << 20);
    let zoned = ZonedNamespace::open("t", media.clone(), config).unwrap();
    (media, zoned)
}

/// The content of block `lba` in these tests.
fn block(lba: u64, seed: u8) -> Vec<u8> {
    let mut b = vec![seed; BLOCK];
    b[..8].copy_from_slice(&lba.to_le_bytes());
    b
}

fn blocks(first: u64, count: u64, seed: u8) -> Vec<u8> {
    (first..first + count)
        .flat_map(|l| block(l, seed))
        .collect()
}

fn state(z: &ZonedNamespace, zone: usize) -> ZoneState {
    z.zone(zone).unwrap().state
}

fn written(z: &ZonedNamespace, zone: usize) -> u64 {
    z.zone(zone).unwrap().written
}

fn assert_counts_agree(z: &ZonedNamespace) {
    let (kept, recount) = z.counts_and_recount();
    assert_eq!(kept, recount, "open/active counts drifted");
}

#[test]
fn fresh_image_layout() {
    let (media, z) = open_ram(&small());
    let g = *z.geometry();
    // 16 zones of 64 KiB would leave no room for two 4 KiB state slots.
    assert_eq!(g.zones, 15);
    assert_eq!((g.zone_blocks, g.capacity_blocks), (128, 96));
    assert_eq!(z.size(), 15 * (64 << 10));
    assert!(z.zoned().is_some());
    for zone in 0..15 {
        assert_eq!(z.zone(zone), Some(Zone::EMPTY));
    }
    // The first commit is on the media already: slot 1 (generation 1),
    // and the label in the last 4 KiB.
    let b = media.bytes.lock().unwrap();
    let slot1 = 15 * (64 << 10) + 4096;
    assert_eq!(&b[slot1..slot1 + 8], &persist::MAGIC);
    let label = (1 << 20) - 4096;
    assert_eq!(&b[label..label + 8], &persist::LABEL_MAGIC);
    // Too small an image, bad layouts.
    drop(b);
    assert!(ZonedNamespace::open("t", RamMedia::new(64 << 10), &small()).is_err());
    let mut bad = small();
    bad.zone_bytes = 96 << 10;
    assert!(ZonedNamespace::open("t", RamMedia::new(1 << 20), &bad).is_err());
}

#[test]
fn writes_follow_the_write_pointer() {
    let (_, z) = open_ram(&small());
    // Not at the write pointer: refused, nothing changes.
    assert_eq!(z.write(1, &blocks(1, 1, 1), false), Err(ZONE_INVALID_WRITE));
    assert_eq!(z.zone(0), Some(Zone::EMPTY));
    // At it: the zone opens implicitly and the pointer moves.
    assert_eq!(z.write(0, &blocks(0, 4, 1), false), Ok(0));
    assert_eq!(state(&z, 0), ZoneState::ImplicitlyOpened);
    assert_eq!(written(&z, 0), 4);
    assert_eq!(z.write(4, &blocks(4, 2, 1), false), Ok(4));
    assert_eq!(z.write(4, &blocks(4, 1, 1), false), Err(ZONE_INVALID_WRITE));
    // Write Zeroes is a write at the pointer too.
    assert_eq!(z.write_zeroes(5, 1), Err(ZONE_INVALID_WRITE));
    assert_eq!(z.write_zeroes(6, 2), Ok(6));
    // Filling the capacity makes the zone Full and frees its resources.
    assert_eq!(z.write(8, &blocks(8, 88, 1), false), Ok(8));
    assert_eq!(state(&z, 0), ZoneState::Full);
    assert_eq!(z.counts(), (0, 0));
    assert_eq!(z.write(96, &blocks(96, 1, 1), false), Err(ZONE_IS_FULL));
    let mut buf = vec![0u8; 96 * BLOCK];
    z.read(0, &mut buf).unwrap();
    let mut want = blocks(0, 96, 1);
    want[6 * BLOCK..8 * BLOCK].fill(0);
    assert_eq!(buf, want);
    assert_counts_agree(&z);
}

#[test]
fn boundary_and_range_errors() {
    let (_, z) = open_ram(&small());
    // Past the zone capacity, and into the next zone.
    assert_eq!(
        z.write(0, &blocks(0, 97, 1), false),
        Err(ZONE_BOUNDARY_ERROR)
    );
    assert_eq!(
        z.write(0, &blocks(0, 129, 1), false),
        Err(ZONE_BOUNDARY_ERROR)
    );
    assert_eq!(z.write(0, &blocks(0, 96, 1), true), Ok(0));
    assert_eq!(z.write(128, &blocks(0, 90, 1), true), Ok(128));
    assert_eq!(
        z.write(128, &blocks(0, 7, 1), true),
        Err(ZONE_BOUNDARY_ERROR)
    );
    assert_eq!(written(&z, 1), 90);
    // Past the namespace.
    let end = z.geometry().blocks();
    assert_eq!(
        z.write(end, &blocks(0, 1, 1), false),
        Err(Status::LBA_OUT_OF_RANGE)
    );
    assert_eq!(
        z.write(u64::MAX, &blocks(0, 1, 1), true),
        Err(Status::LBA_OUT_OF_RANGE)
    );
    let mut buf = vec![0u8; BLOCK];
    assert_eq!(z.read(end, &mut buf), Err(Status::LBA_OUT_OF_RANGE));
    assert_eq!(z.read(u64::MAX, &mut buf), Err(Status::LBA_OUT_OF_RANGE));
    // Zone management: not a zone start, past the end, no such action.
    assert_eq!(
        z.manage(1, ZoneAction::Reset, false),
        Err(Status::INVALID_FIELD)
    );
    assert_eq!(
        z.manage(end, ZoneAction::Reset, false),
        Err(Status::LBA_OUT_OF_RANGE)
    );
    assert_eq!(
        z.report(end, None, true, 4096),
        Err(Status::LBA_OUT_OF_RANGE)
    );
    assert_eq!(written(&z, 1), 90);
    assert_counts_agree(&z);
}

#[test]
fn append_returns_the_lba_written() {
    let (_, z) = open_ram(&small());
    let zone2 = 2 * 128;
    assert_eq!(z.write(zone2, &blocks(0, 3, 7), true), Ok(zone2));
    assert_eq!(z.write(zone2, &blocks(0, 5, 8), true), Ok(zone2 + 3));
    assert_eq!(z.write(zone2, &blocks(0, 1, 9), true), Ok(zone2 + 8));
    // The start LBA of an append must be the zone start.
    assert_eq!(
        z.write(zone2 + 9, &blocks(0, 1, 9), true),
        Err(Status::INVALID_FIELD)
    );
    assert_eq!(written(&z, 2), 9);
    let mut buf = vec![0u8; 9 * BLOCK];
    z.read(zone2, &mut buf).unwrap();
    assert_eq!(&buf[..3 * BLOCK], &blocks(0, 3, 7)[..]);
    assert_eq!(&buf[3 * BLOCK..8 * BLOCK], &blocks(0, 5, 8)[..]);
    assert_eq!(&buf[8 * BLOCK..], &blocks(0, 1, 9)[..]);
}

#[test]
fn reads_past_the_write_pointer_are_zeroes() {
    let (media, z) = open_ram(&small());
    // Stale bytes on the media past the pointers (as a crash leaves
    // writes no commit counted) never show.
    media.bytes.lock().unwrap()[..(256 * BLOCK)].fill(0xee);
    z.write(0, &blocks(0, 10, 1), false).unwrap();
    z.write(128, &blocks(128, 3, 2), false).unwrap();
    // One read across zones 0 and 1 (reads may cross zone boundaries).
    let mut buf = vec![0xffu8; 256 * BLOCK];
    z.read(0, &mut buf).unwrap();
    assert_eq!(&buf[..10 * BLOCK], &blocks(0, 10, 1)[..]);
    assert!(buf[10 * BLOCK..128 * BLOCK].iter().all(|&b| b == 0));
    assert_eq!(&buf[128 * BLOCK..131 * BLOCK], &blocks(128, 3, 2)[..]);
    assert!(buf[131 * BLOCK..].iter().all(|&b| b == 0));
    // A zone finished early still reads zeroes past its data.
    z.manage(0, ZoneAction::Finish, false).unwrap();
    let mut buf = vec![0xffu8; 20 * BLOCK];
    z.read(0, &mut buf).unwrap();
    assert!(buf[10 * BLOCK..].iter().all(|&b| b == 0));
    // The trait's read path applies the same rule.
    let mut buf = vec![0xffu8; 20 * BLOCK];
    z.read_at(0, &mut buf).unwrap();
    assert!(buf[10 * BLOCK..].iter().all(|&b| b == 0));
    // Offline zones cannot be read.
    assert!(z.set_read_only(1));
    let mut buf = vec![0u8; 3 * BLOCK];
    z.read(128, &mut buf).unwrap();
    assert_eq!(buf, blocks(128, 3, 2));
    z.manage(128, ZoneAction::Offline, false).unwrap();
    assert_eq!(z.read(128, &mut buf), Err(ZONE_IS_OFFLINE));
    let mut across = vec![0u8; 2 * BLOCK];
    assert_eq!(z.read(127, &mut across), Err(ZONE_IS_OFFLINE));
}

#[test]
fn open_and_active_limits() {
    // max open 2, max active 3.
    let (_, z) = open_ram(&small());
    z.manage(0, ZoneAction::Open, false).unwrap();
    z.manage(128, ZoneAction::Open, false).unwrap();
    assert_eq!(z.counts(), (2, 2));
    // Both open resources are taken by explicitly opened zones: neither
    // an explicit nor an implicit open finds one.
    assert_eq!(
        z.manage(256, ZoneAction::Open, false),
        Err(TOO_MANY_OPEN_ZONES)
    );
    assert_eq!(
        z.write(256, &blocks(0, 1, 1), false),
        Err(TOO_MANY_OPEN_ZONES)
    );
    assert_eq!(state(&z, 2), ZoneState::Empty);
    // Closing one frees an open resource, not the active one.
    z.manage(128, ZoneAction::Close, false).unwrap();
    assert_eq!(z.counts(), (1, 2));
    z.write(256, &blocks(0, 1, 1), false).unwrap();
    assert_eq!(state(&z, 2), ZoneState::ImplicitlyOpened);
    assert_eq!(z.counts(), (2, 3));
    // All three active resources are used: an Empty zone cannot open.
    assert_eq!(
        z.write(384, &blocks(0, 1, 1), false),
        Err(TOO_MANY_ACTIVE_ZONES)
    );
    assert_eq!(
        z.manage(384, ZoneAction::Open, false),
        Err(TOO_MANY_ACTIVE_ZONES)
    );
    // A closed zone needs no new active resource: writing it implicitly
    // closes the implicitly opened zone 2 to get an open one.
    z.write(128, &blocks(0, 1, 1), true).unwrap();
    assert_eq!(state(&z, 1), ZoneState::ImplicitlyOpened);
    assert_eq!(state(&z, 2), ZoneState::Closed);
    assert_eq!(z.counts(), (2, 3));
    // Finishing zone 0 frees both of its resources.
    z.manage(0, ZoneAction::Finish, false).unwrap();
    assert_eq!(z.counts(), (1, 2));
    z.write(384, &blocks(0, 1, 1), true).unwrap();
    assert_eq!(z.counts(), (2, 3));
    assert_counts_agree(&z);
}

/// Puts zone `zone` (of `z`, with enough resources) into `target`.
fn make_state(z: &ZonedNamespace, zone: usize, target: ZoneState) {
    let start = zone as u64 * 128;
    match target {
        ZoneState::Empty => {}
        ZoneState::ImplicitlyOpened => {
            z.write(start, &blocks(0, 1, 1), true).unwrap();
        }
        ZoneState::ExplicitlyOpened => z.manage(start, ZoneAction::Open, false).unwrap(),
        ZoneState::Closed => {
            z.write(start, &blocks(0, 1, 1), true).unwrap();
            z.manage(start, ZoneAction::Close, false).unwrap();
        }
        ZoneState::Full => z.manage(start, ZoneAction::Finish, false).unwrap(),
        ZoneState::ReadOnly => assert!(z.set_read_only(zone)),
        ZoneState::Offline => {
            assert!(z.set_read_only(zone));
            z.manage(start, ZoneAction::Offline, false).unwrap();
        }
    }
    assert_eq!(state(z, zone), target);
}

#[test]
fn every_state_and_action() {
    use ZoneState::*;
    let states = [
        Empty,
        ImplicitlyOpened,
        ExplicitlyOpened,
        Closed,
        ReadOnly,
        Full,
        Offline,
    ];
    let actions = [
        ZoneAction::Open,
        ZoneAction::Close,
        ZoneAction::Finish,
        ZoneAction::Reset,
        ZoneAction::Offline,
    ];
    // The state each action leads to from each state, or None for an
    // Invalid Zone State Transition.
    let expect = |action: ZoneAction, from: ZoneState| -> Option<ZoneState> {
        match (action, from) {
            (ZoneAction::Open, Empty | ImplicitlyOpened | ExplicitlyOpened | Closed) => {
                Some(ExplicitlyOpened)
            }
            (ZoneAction::Close, ImplicitlyOpened | ExplicitlyOpened | Closed) => Some(Closed),
            (ZoneAction::Finish, Empty | ImplicitlyOpened | ExplicitlyOpened | Closed | Full) => {
                Some(Full)
            }
            (ZoneAction::Reset, Empty | ImplicitlyOpened | ExplicitlyOpened | Closed | Full) => {
                Some(Empty)
            }
            (ZoneAction::Offline, ReadOnly | Offline) => Some(Offline),
            _ => None,
        }
    };
    let config = ZoneConfig {
        max_open: 4,
        max_active: 4,
        ..small()
    };
    let mut checked = 0;
    for from in states {
        for action in actions {
            let (_, z) = open_ram(&config);
            make_state(&z, 0, from);
            let before = z.zone(0).unwrap();
            let result = z.manage(0, action, false);
            match expect(action, from) {
                Some(to) => {
                    assert_eq!(result, Ok(()), "{action:?} from {from:?}");
                    assert_eq!(state(&z, 0), to, "{action:?} from {from:?}");
                    if to == Empty {
                        assert_eq!(written(&z, 0), 0);
                    }
                }
                None => {
                    assert_eq!(
                        result,
                        Err(INVALID_ZONE_STATE_TRANSITION),
                        "{action:?} from {from:?}"
                    );
                    assert_eq!(z.zone(0).unwrap(), before, "{action:?} from {from:?}");
                }
            }
            assert_counts_agree(&z);
            // Writes to the zone in its new state.
            let now = state(&z, 0);
            let write = z.write(0, &blocks(0, 1, 1), true);
            match now {
                Full => assert_eq!(write, Err(ZONE_IS_FULL)),
                ReadOnly => assert_eq!(write, Err(ZONE_IS_READ_ONLY)),
                Offline => assert_eq!(write, Err(ZONE_IS_OFFLINE)),
                _ => assert!(write.is_ok(), "append in {now:?}: {write:?}"),
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 35);
}

#[test]
fn select_all() {
    let config = ZoneConfig {
        max_open: 3,
        max_active: 5,
        ..small()
    };
    let (_, z) = open_ram(&config);
    make_state(&z, 0, ZoneState::ImplicitlyOpened);
    make_state(&z, 1, ZoneState::ExplicitlyOpened);
    make_state(&z, 2, ZoneState::Closed);
    make_state(&z, 3, ZoneState::Full);
    make_state(&z, 4, ZoneState::ReadOnly);
    make_state(&z, 5, ZoneState::Closed);
    // Opening all closed zones needs 2 more open resources; 1 is left:
    // refused as a whole.
    assert_eq!(
        z.manage(0, ZoneAction::Open, true),
        Err(TOO_MANY_OPEN_ZONES)
    );
    assert_eq!(state(&z, 2), ZoneState::Closed);
    assert_eq!(state(&z, 5), ZoneState::Closed);
    z.manage(0, ZoneAction::Close, true).unwrap();
    assert_eq!(z.counts(), (0, 4));
    // Four closed zones, three open resources.
    assert_eq!(
        z.manage(0, ZoneAction::Open, true),
        Err(TOO_MANY_OPEN_ZONES)
    );
    z.manage(5 * 128, ZoneAction::Reset, false).unwrap();
    // The SLBA is ignored with Select All.
    z.manage(7, ZoneAction::Open, true).unwrap();
    assert_eq!(z.counts(), (3, 3));
    z.manage(0, ZoneAction::Close, true).unwrap();
    z.manage(0, ZoneAction::Finish, true).unwrap();
    for zone in 0..4 {
        assert_eq!(state(&z, zone), ZoneState::Full, "zone {zone}");
    }
    assert_eq!(state(&z, 5), ZoneState::Empty);
    z.manage(0, ZoneAction::Offline, true).unwrap();
    assert_eq!(state(&z, 4), ZoneState::Offline);
    z.manage(0, ZoneAction::Reset, true).unwrap();
    for zone in [0, 1, 2, 3, 5, 6] {
        assert_eq!(z.zone(zone), Some(Zone::EMPTY), "zone {zone}");
    }
    assert_eq!(state(&z, 4), ZoneState::Offline);
    assert_eq!(z.counts(), (0, 0));
    assert_counts_agree(&z);
}

#[test]
fn report_zones() {
    let (_, z) = open_ram(&small());
    make_state(&z, 1, ZoneState::Closed);
    make_state(&z, 2, ZoneState::Full);
    make_state(&z, 3, ZoneState::ReadOnly);
    z.write(0, &blocks(0, 5, 1), false).unwrap();
    let count = |r: &[u8]| u64::from_le_bytes(r[..8].try_into().unwrap());
    let desc = |r: &[u8], i: usize| r[64 * (i + 1)..64 * (i + 2)].to_vec();
    let u64_at = |d: &[u8], at: usize| u64::from_le_bytes(d[at..at + 8].try_into().unwrap());
    // Everything, from an LBA inside zone 0.
    let r = z.report(3, None, false, 64 * 16).unwrap();
    assert_eq!(r.len(), 64 * 16);
    assert_eq!(count(&r), 15);
    let d0 = desc(&r, 0);
    assert_eq!((d0[0], d0[1]), (0x2, 0x20), "type, implicitly opened");
    assert_eq!(
        (u64_at(&d0, 8), u64_at(&d0, 16), u64_at(&d0, 24)),
        (96, 0, 5)
    );
    let d1 = desc(&r, 1);
    assert_eq!((d1[1], u64_at(&d1, 16), u64_at(&d1, 24)), (0x40, 128, 129));
    let d2 = desc(&r, 2);
    assert_eq!((d2[1], u64_at(&d2, 24)), (0xe0, 256 + 96));
    assert_eq!(desc(&r, 3)[1], 0xd0);
    assert_eq!((desc(&r, 4)[1], u64_at(&desc(&r, 4), 24)), (0x10, 512));
    // A buffer for 2 descriptors: the full count without Partial Report,
    // the returned count with it.
    let r = z.report(128, None, false, 64 * 3).unwrap();
    assert_eq!((count(&r), u64_at(&desc(&r, 1), 16)), (14, 256));
    let r = z.report(128, None, true, 64 * 3).unwrap();
    assert_eq!(count(&r), 2);
    // Filters.
    let r = z.report(0, Some(ZoneState::Full), false, 4096).unwrap();
    assert_eq!((count(&r), u64_at(&desc(&r, 0), 16)), (1, 256));
    let r = z.report(0, Some(ZoneState::Empty), true, 64 * 4).unwrap();
    assert_eq!((count(&r), u64_at(&desc(&r, 0), 16)), (3, 512));
    let r = z
        .report(3 * 128, Some(ZoneState::Closed), false, 4096)
        .unwrap();
    assert_eq!(count(&r), 0);
    // A buffer shorter than the header gets the start of the header.
    let r = z.report(0, None, false, 4).unwrap();
    assert_eq!(r, 15u32.to_le_bytes());
}

#[test]
fn media_failure_changes_nothing() {
    let (media, z) = open_ram(&small());
    z.write(0, &blocks(0, 2, 1), false).unwrap();
    media.fail_writes.store(true, Ordering::SeqCst);
    assert_eq!(
        z.write(2, &blocks(2, 2, 1), false),
        Err(Status::WRITE_FAULT)
    );
    assert_eq!(z.write(0, &blocks(2, 2, 1), true), Err(Status::WRITE_FAULT));
    assert_eq!(written(&z, 0), 2);
    // A finish whose commit fails reports it.
    assert_eq!(
        z.manage(0, ZoneAction::Finish, false),
        Err(Status::WRITE_FAULT)
    );
    media.fail_writes.store(false, Ordering::SeqCst);
    assert_eq!(z.write(0, &blocks(0, 1, 1), true), Err(ZONE_IS_FULL));
    z.manage(0, ZoneAction::Reset, false).unwrap();
    assert_eq!(z.write(0, &blocks(0, 1, 1), true), Ok(0));
}

#[test]
fn controller_reset_closes_opened_zones() {
    let (_, z) = open_ram(&small());
    make_state(&z, 0, ZoneState::ImplicitlyOpened);
    make_state(&z, 1, ZoneState::ExplicitlyOpened);
    z.controller_reset();
    // Zone 1 had nothing written: it goes back to Empty.
    assert_eq!(state(&z, 0), ZoneState::Closed);
    assert_eq!(state(&z, 1), ZoneState::Empty);
    assert_eq!(z.counts(), (0, 1));
    assert_counts_agree(&z);
}

#[test]
fn states_persist_across_reopen() {
    let media = RamMedia::new(1 << 20);
    let config = ZoneConfig {
        max_open: 4,
        max_active: 6,
        ..small()
    };
    {
        let z = ZonedNamespace::open("t", media.clone(), &config).unwrap();
        z.write(0, &blocks(0, 7, 3), false).unwrap();
        make_state(&z, 1, ZoneState::ExplicitlyOpened);
        make_state(&z, 2, ZoneState::Closed);
        make_state(&z, 3, ZoneState::Full);
        z.write(4 * 128, &blocks(0, 96, 4), true).unwrap();
        z.flush().unwrap();
        // Not flushed: lost with the restart, conservatively.
        z.write(7, &blocks(7, 3, 3), false).unwrap();
        z.write(2 * 128, &blocks(0, 2, 3), true).unwrap();
    }
    let z = ZonedNamespace::open("t", media.clone(), &config).unwrap();
    assert_eq!(
        z.zone(0).unwrap(),
        Zone {
            state: ZoneState::Closed,
            written: 7
        }
    );
    assert_eq!(z.zone(1).unwrap(), Zone::EMPTY);
    assert_eq!(
        z.zone(2).unwrap(),
        Zone {
            state: ZoneState::Closed,
            written: 1
        }
    );
    assert_eq!(
        z.zone(3).unwrap(),
        Zone {
            state: ZoneState::Full,
            written: 0
        }
    );
    assert_eq!(
        z.zone(4).unwrap(),
        Zone {
            state: ZoneState::Full,
            written: 96
        }
    );
    assert_eq!(z.counts(), (0, 2));
    let mut buf = vec![0u8; 10 * BLOCK];
    z.read(0, &mut buf).unwrap();
    assert_eq!(&buf[..7 * BLOCK], &blocks(0, 7, 3)[..]);
    assert!(
        buf[7 * BLOCK..].iter().all(|&b| b == 0),
        "unflushed data shows"
    );
    // Writing goes on at the recovered pointer.
    assert_eq!(z.write(7, &blocks(7, 1, 5), false), Ok(7));
    // A reset is durable when it completes.
    z.manage(4 * 128, ZoneAction::Reset, false).unwrap();
    drop(z);
    let z = ZonedNamespace::open("t", media.clone(), &config).unwrap();
    assert_eq!(z.zone(4).unwrap(), Zone::EMPTY);
    assert_eq!(
        written(&z, 0),
        8,
        "the reset's commit counted the write before it"
    );
    // Other limits are fine; another zone layout is refused.
    let more = ZoneConfig {
        max_open: 5,
        max_active: 9,
        ..small()
    };
    assert!(ZonedNamespace::open("t", media.clone(), &more).is_ok());
    let other = ZoneConfig {
        capacity_bytes: 32 << 10,
        ..small()
    };
    let e = ZonedNamespace::open("t", media.clone(), &other)
        .err()
        .unwrap();
    assert!(e.contains("zone size and capacity"), "{e}");
    // Another zone size puts the slots elsewhere; the label at the
    // image's end still tells.
    let bigger = ZoneConfig {
        zone_bytes: 128 << 10,
        capacity_bytes: 128 << 10,
        ..config
    };
    let e = ZonedNamespace::open("t", media.clone(), &bigger)
        .err()
        .unwrap();
    assert!(e.contains("zone size and capacity"), "{e}");
    // Nothing was written by the refusals.
    let z = ZonedNamespace::open("t", media.clone(), &config).unwrap();
    assert_eq!(written(&z, 0), 8);
}

#[test]
fn torn_or_damaged_state_area() {
    let media = RamMedia::new(1 << 20);
    let slot = |generation: u64| 15 * (64 << 10) + (generation as usize % 2) * 4096;
    {
        let z = ZonedNamespace::open("t", media.clone(), &small()).unwrap();
        z.write(0, &blocks(0, 3, 1), false).unwrap();
        z.flush().unwrap(); // generation 2
        z.write(3, &blocks(3, 3, 1), false).unwrap();
        z.flush().unwrap(); // generation 3
    }
    // Tear the newest copy (a sector in its middle holds old bytes).
    media.bytes.lock().unwrap()[slot(3) + 40] ^= 0xff;
    let z = ZonedNamespace::open("t", media.clone(), &small()).unwrap();
    assert_eq!(written(&z, 0), 3, "the copy before the torn one holds");
    // Its next commit goes to the torn slot, which is valid again after.
    z.write(3, &blocks(3, 1, 1), false).unwrap();
    z.flush().unwrap();
    drop(z);
    let z = ZonedNamespace::open("t", media.clone(), &small()).unwrap();
    assert_eq!(written(&z, 0), 4);
    drop(z);
    // Both copies damaged: refused, not taken for a blank image.
    {
        let mut b = media.bytes.lock().unwrap();
        b[slot(0) + 100] ^= 1;
        b[slot(1) + 100] ^= 1;
    }
    let e = ZonedNamespace::open("t", media.clone(), &small())
        .err()
        .unwrap();
    assert!(e.contains("damaged"), "{e}");
    // Both copies gone, or the label damaged: refused too.
    {
        let mut b = media.bytes.lock().unwrap();
        b[slot(0)..slot(0) + 8].fill(0);
        b[slot(1)..slot(1) + 8].fill(0);
    }
    let e = ZonedNamespace::open("t", media.clone(), &small())
        .err()
        .unwrap();
    assert!(e.contains("no zone state copy"), "{e}");
    let end = (1 << 20) - 4096;
    media.bytes.lock().unwrap()[end + 20] ^= 1;
    let e = ZonedNamespace::open("t", media.clone(), &small())
        .err()
        .unwrap();
    assert!(e.contains("label is damaged"), "{e}");
}

/// Media that fails flush number `fail_at` (and everything after it), as
/// the power going out in the middle of a commit.
struct PowerCut {
    inner: Arc<VolatileNamespace>,
    flushes: AtomicU32,
    fail_at: u32,
}

impl PowerCut {
    fn dead(&self) -> bool {
        self.flushes.load(Ordering::SeqCst) >= self.fail_at
    }
}

impl Namespace for PowerCut {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if self.dead() {
            return Err(io::Error::other("power cut"));
        }
        self.inner.write_at(offset, data)
    }
    fn flush(&self) -> io::Result<()> {
        if self.flushes.fetch_add(1, Ordering::SeqCst) + 1 >= self.fail_at {
            return Err(io::Error::other("power cut"));
        }
        self.inner.flush()
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.write_zeroes(offset, len)
    }
    fn deallocate(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.deallocate(offset, len)
    }
}

/// Appends to random zones with flushes in between until the power goes
/// out (at a random flush, so sometimes between the data flush and the
/// state write of a commit, sometimes after the state write), tears the
/// volatile cache, and checks what comes back: every zone's pointer lies
/// between what the last completed flush covered and what was appended,
/// every block below it holds its data, the rest reads as zeroes.
#[test]
fn crash_in_the_middle_of_appends() {
    let dir = std::env::temp_dir().join(format!("dpuemu-zns-crash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = ZoneConfig {
        zone_bytes: 32 << 10,
        capacity_bytes: 32 << 10,
        max_open: 4,
        max_active: 6,
    };
    let mut torn_commits = 0;
    for seed in 0..40u64 {
        let path = dir.join(format!("img{seed}"));
        let _ = std::fs::remove_file(&path);
        let file = FileNamespace::open(&path, Some(512 << 10)).unwrap();
        let layer = Arc::new(VolatileNamespace::new("ssd", Box::new(file), 1 << 16));
        let mut rng = SplitMix64::new(seed);
        let cut = Arc::new(PowerCut {
            inner: layer.clone(),
            flushes: AtomicU32::new(0),
            // Flushes 1 to 3 are the first commit and the label, at open.
            fail_at: 4 + rng.below(24) as u32,
        });
        let z = ZonedNamespace::open("ssd", cut.clone(), &config).unwrap();
        let zones = z.geometry().zones as usize;
        let zone_blocks = z.geometry().zone_blocks;
        let mut appended = vec![0u64; zones];
        let mut durable = vec![0u64; zones];
        loop {
            let zone = rng.below(6) as usize;
            let n = 1 + rng.below(8);
            let start = zone as u64 * zone_blocks;
            let at = start + appended[zone];
            match z.write(start, &blocks(at, n, 0x5a), true) {
                Ok(lba) => {
                    assert_eq!(lba, at);
                    appended[zone] += n;
                }
                Err(s) if s == ZONE_BOUNDARY_ERROR || s == ZONE_IS_FULL => {}
                Err(s) if s == Status::WRITE_FAULT && cut.dead() => break,
                Err(s) => panic!("seed {seed}: append: {s:?}"),
            }
            if rng.below(4) == 0 {
                if z.flush().is_err() {
                    break;
                }
                durable.clone_from(&appended);
            }
        }
        let before = layer.pending_sectors();
        let keep = rng.below(1001) as u32;
        layer.tear(&mut rng, keep).unwrap();
        drop(z);
        let file = FileNamespace::open(&path, None).unwrap();
        let z = ZonedNamespace::open("ssd", Arc::new(file), &config)
            .unwrap_or_else(|e| panic!("seed {seed}: reopen: {e}"));
        let mut newer = false;
        for zone in 0..zones {
            let got = z.zone(zone).unwrap();
            assert!(
                durable[zone] <= got.written && got.written <= appended[zone],
                "seed {seed} zone {zone}: pointer {} outside {}..={}",
                got.written,
                durable[zone],
                appended[zone]
            );
            newer |= got.written > durable[zone];
            assert!(!got.state.is_open());
            let start = zone as u64 * zone_blocks;
            let mut buf = vec![0u8; (zone_blocks as usize) * BLOCK];
            z.read(start, &mut buf).unwrap();
            let cut_at = got.written as usize * BLOCK;
            assert_eq!(
                &buf[..cut_at],
                &blocks(start, got.written, 0x5a)[..],
                "seed {seed} zone {zone}: data below the pointer"
            );
            assert!(
                buf[cut_at..].iter().all(|&b| b == 0),
                "seed {seed} zone {zone}"
            );
        }
        // The commit the power cut interrupted made it whole (newer than
        // the last completed flush) or not at all.
        torn_commits += usize::from(newer);
        assert!(before > 0 || !newer);
        // And the namespace takes appends at the recovered pointers.
        let z0 = z.zone(0).unwrap();
        if z0.state != ZoneState::Full {
            assert_eq!(
                z.write(0, &blocks(z0.written, 1, 0x5a), true),
                Ok(z0.written)
            );
        }
        let _ = std::fs::remove_file(&path);
    }
    std::fs::remove_dir_all(&dir).unwrap();
    // Some cuts fell between a commit's state write and its flush, and
    // the torn layer kept that write whole.
    assert!(torn_commits > 0, "no cut kept an interrupted commit");
}

/// Appends to one zone from several threads at once (the executor runs
/// commands side by side): every append gets its own LBAs, together they
/// cover the zone without gap or overlap, and each one's data is where
/// its completion said.
#[test]
fn concurrent_appends_to_one_zone() {
    let config = ZoneConfig {
        zone_bytes: 256 << 10,
        capacity_bytes: 256 << 10,
        ..small()
    };
    let media = RamMedia::new(2 << 20);
    let z = Arc::new(ZonedNamespace::open("t", media, &config).unwrap());
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let z = z.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                for i in 0..8u8 {
                    // Thread t's i-th append: 1 + (t + i) % 4 blocks of a
                    // value naming it.
                    let n = 1 + u64::from((t + i) % 4);
                    let seed = t * 16 + i;
                    let lba = z.write(512, &blocks(0, n, seed), true).unwrap();
                    got.push((lba, n, seed));
                }
                got
            })
        })
        .collect();
    let mut all: Vec<(u64, u64, u8)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    all.sort();
    let mut next = 512;
    for &(lba, n, seed) in &all {
        assert_eq!(lba, next, "gap or overlap at {lba}");
        let mut buf = vec![0u8; n as usize * BLOCK];
        z.read(lba, &mut buf).unwrap();
        assert_eq!(buf, blocks(0, n, seed), "append {seed} at {lba}");
        next += n;
    }
    assert_eq!(written(&z, 1), next - 512);
}

/// Random operations, valid and not, against the zone rules' invariants:
/// the kept counts equal the recount, never more than MOR + 1 open or
/// MAR + 1 active zones, write pointers within capacity, an Empty zone
/// has nothing written, a failed operation changes nothing, and a reopen
/// after a flush gives back the same table with opened zones closed.
#[test]
fn random_operations_keep_the_invariants() {
    // Operations that succeeded and failed, so the test is known to reach
    // both sides of the rules.
    let (mut succeeded, mut failed) = (0, 0);
    for seed in 0..20u64 {
        let mut rng = SplitMix64::new(seed);
        let config = ZoneConfig {
            max_open: 1 + rng.below(4) as u32,
            max_active: 5,
            ..small()
        };
        let media = RamMedia::new(1 << 20);
        let z = ZonedNamespace::open("t", media.clone(), &config).unwrap();
        let zones = z.geometry().zones as usize;
        let snapshot =
            |z: &ZonedNamespace| (0..zones).map(|i| z.zone(i).unwrap()).collect::<Vec<_>>();
        for _ in 0..400 {
            let before = snapshot(&z);
            let zone = rng.below(zones as u64 + 1) as usize;
            let start = zone as u64 * 128;
            let lba = start + rng.below(3).saturating_sub(1) * rng.below(100);
            let n = 1 + rng.below(40);
            let result = match rng.below(10) {
                0..=3 => z.write(start, &blocks(0, n, 1), true).map(|_| ()),
                4 | 5 => {
                    let wp = before.get(zone).map_or(0, |s| start + s.written);
                    let at = if rng.below(2) == 0 { wp } else { lba };
                    z.write(at, &blocks(at, n, 2), false).map(|_| ())
                }
                6 => {
                    let actions = [
                        ZoneAction::Open,
                        ZoneAction::Close,
                        ZoneAction::Finish,
                        ZoneAction::Reset,
                        ZoneAction::Offline,
                    ];
                    let action = actions[rng.below(5) as usize];
                    z.manage(lba, action, rng.below(8) == 0)
                }
                7 => {
                    if zone < zones && rng.below(10) == 0 {
                        z.set_read_only(zone);
                    }
                    Ok(())
                }
                8 => z.flush().map_err(|_| Status::WRITE_FAULT),
                _ => {
                    let mut buf = vec![0u8; n as usize * BLOCK];
                    z.read(lba, &mut buf)
                }
            };
            let after = snapshot(&z);
            if result.is_ok() {
                succeeded += 1;
            } else {
                failed += 1;
            }
            if result.is_err() {
                assert_eq!(
                    before, after,
                    "seed {seed}: a failed operation changed zones"
                );
            }
            assert_counts_agree(&z);
            let (open, active) = z.counts();
            assert!(
                open <= config.max_open && active <= config.max_active,
                "seed {seed}"
            );
            for s in &after {
                assert!(s.written <= 96, "seed {seed}");
                assert!(s.state != ZoneState::Empty || s.written == 0, "seed {seed}");
            }
        }
        z.flush().unwrap();
        let kept = snapshot(&z);
        drop(z);
        let z = ZonedNamespace::open("t", media, &config).unwrap();
        for (i, (old, new)) in kept.iter().zip(snapshot(&z)).enumerate() {
            assert_eq!(old.written, new.written, "seed {seed} zone {i}");
            let want = match old.state {
                s if s.is_open() && old.written == 0 => ZoneState::Empty,
                s if s.is_open() => ZoneState::Closed,
                s => s,
            };
            assert_eq!(new.state, want, "seed {seed} zone {i}");
        }
    }
    assert!(
        succeeded > 2000 && failed > 1000,
        "{succeeded} ok, {failed} failed"
    );
}

/// The state area comes from the image, which the accelerator or an
/// earlier run may have filled with anything: mutated and truncated
/// slots and labels decode to Blank, Damaged or another layout (or, when
/// a byte was overwritten with its own value, to the table), and never
/// panic.
#[test]
fn mutated_state_area_never_panics() {
    let g = Geometry {
        zone_blocks: 128,
        capacity_blocks: 96,
        zones: 15,
        max_open: 2,
        max_active: 3,
    };
    let zones: Vec<Zone> = (0..15)
        .map(|i| Zone {
            state: [ZoneState::Empty, ZoneState::Closed, ZoneState::Full][i % 3],
            written: if i % 3 == 0 { 0 } else { 5 + i as u64 },
        })
        .collect();
    let slot = persist::encode(&g, 9, &zones);
    assert_eq!(
        persist::decode(&g, &slot),
        persist::Slot::Valid {
            generation: 9,
            zones: zones.clone()
        }
    );
    let label = persist::encode_label(&g);
    let mut rng = SplitMix64::new(99);
    let (mut valid, mut refused) = (0, 0);
    for _ in 0..5000 {
        let mut bytes = slot.clone();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(bytes.len() as u64) as usize;
            bytes[at] = rng.next_u64() as u8;
        }
        if rng.below(8) == 0 {
            bytes.truncate(rng.below(bytes.len() as u64) as usize);
        }
        match persist::decode(&g, &bytes) {
            persist::Slot::Valid { zones: got, .. } => {
                valid += 1;
                assert_eq!(got.len(), 15);
                assert!(got.iter().all(|z| z.written <= 96));
            }
            _ => refused += 1,
        }
        // The label's 40 meaningful bytes: magic, layout, checksum.
        let mut l = label.clone();
        let at = rng.below(40) as usize;
        l[at] ^= 1 + rng.below(255) as u8;
        if rng.below(4) == 0 {
            l.truncate(rng.below(40) as usize);
        }
        assert_ne!(
            persist::decode_label(&l),
            persist::decode_label(&label),
            "a changed label byte went unnoticed"
        );
    }
    // The checksum covers the whole slot, padding included: every real
    // change is refused (a byte overwritten with its own value is none).
    assert!(refused > 4500, "{valid} valid, {refused} refused");
}
