//! Round trips, GC under overwrites, degraded reads, the write buffer and
//! the write pattern members see.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::format::BLOCK;
use super::*;
use crate::fault::FaultyMedia;
use crate::media::MemMedia;

pub(super) const MEMBER_BYTES: usize = 1 << 20;

pub(super) fn raid6() -> LogRaidConfig {
    LogRaidConfig::new(Layout::Raid6 { members: 6 }, 4096, 4)
}

pub(super) fn mem_members(n: usize) -> Vec<Arc<MemMedia>> {
    (0..n)
        .map(|_| Arc::new(MemMedia::new(MEMBER_BYTES)))
        .collect()
}

pub(super) fn as_media<M: Media + 'static>(members: &[Arc<M>]) -> Vec<Arc<dyn Media>> {
    members
        .iter()
        .map(|m| m.clone() as Arc<dyn Media>)
        .collect()
}

pub(super) fn present(members: &[Arc<dyn Media>]) -> Vec<Option<Arc<dyn Media>>> {
    members.iter().cloned().map(Some).collect()
}

/// A block that says which LBA and version it is, everywhere.
pub(super) fn pattern(lba: u64, version: u64) -> Vec<u8> {
    let mut x =
        lba.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ version.wrapping_mul(0xd1b5_4a32_d192_ed03);
    let mut block = Vec::with_capacity(BLOCK as usize);
    block.extend_from_slice(&lba.to_le_bytes());
    block.extend_from_slice(&version.to_le_bytes());
    while block.len() < BLOCK as usize {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        block.extend_from_slice(&x.to_le_bytes());
    }
    block
}

/// A small deterministic generator (the tests need no crate for it).
pub(super) struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn verify(array: &LogRaid, model: &HashMap<u64, u64>) {
    let mut buf = vec![0u8; BLOCK as usize];
    for lba in 0..array.blocks() {
        array.read_blocks(lba, &mut buf).unwrap();
        match model.get(&lba) {
            Some(v) => assert!(buf == pattern(lba, *v), "lba {lba} is not version {v}"),
            None => assert!(buf.iter().all(|b| *b == 0), "lba {lba} never written"),
        }
    }
}

#[test]
fn data_round_trips_on_every_parity_layout_and_across_reopen() {
    for layout in [
        Layout::Raid6 { members: 6 },
        Layout::Raid6 { members: 4 },
        Layout::Erasure { data: 4, parity: 2 },
        Layout::Erasure { data: 3, parity: 1 },
    ] {
        let mems = mem_members(layout.members());
        let members = as_media(&mems);
        let config = LogRaidConfig::new(layout, 8192, 3);
        let array = LogRaid::create(config, members.clone()).unwrap();
        let mut model = HashMap::new();
        let mut rng = Rng(7);
        for version in 1..=300u64 {
            let lba = rng.below(array.blocks());
            array.write_blocks(lba, &pattern(lba, version)).unwrap();
            model.insert(lba, version);
        }
        verify(&array, &model);
        array.flush().unwrap();
        drop(array);
        let array = LogRaid::open(present(&members), 64).unwrap();
        verify(&array, &model);
        array.check().unwrap();
        let scrub = array.scrub().unwrap();
        assert_eq!((scrub.mismatches, scrub.unreadable), (0, 0), "{layout:?}");
        assert!(scrub.stripes > 0);
    }
}

#[test]
fn multi_block_and_partial_block_io_through_media() {
    let members = as_media(&mem_members(6));
    let array = LogRaid::create(raid6(), members).unwrap();
    let data: Vec<u8> = (0..5 * BLOCK as usize + 100)
        .map(|i| (i % 251) as u8)
        .collect();
    array.write_at(1000, &data).unwrap();
    let mut back = vec![0u8; data.len()];
    array.read_at(1000, &mut back).unwrap();
    assert_eq!(back, data);
    let mut head = vec![0xffu8; 1000];
    array.read_at(0, &mut head).unwrap();
    assert!(head.iter().all(|b| *b == 0));
    assert!(array.write_at(array.size() - 10, &[1u8; 20]).is_err());
    array.discard(0, 3 * BLOCK).unwrap();
    array.read_at(BLOCK, &mut back[..BLOCK as usize]).unwrap();
    assert!(back[..BLOCK as usize].iter().all(|b| *b == 0));
}

#[test]
fn a_flushed_partial_stripe_survives_reopen_through_the_write_buffer() {
    let mems = mem_members(6);
    let members = as_media(&mems);
    let array = LogRaid::create(raid6(), members.clone()).unwrap();
    // Two blocks: less than a stripe (three data blocks).
    array.write_blocks(5, &pattern(5, 1)).unwrap();
    array.write_blocks(9, &pattern(9, 1)).unwrap();
    array.flush().unwrap();
    assert_eq!(array.stats().wb_records, 1);
    // A flush with nothing new writes no record.
    array.flush().unwrap();
    assert_eq!(array.stats().wb_records, 1);
    drop(array);
    let array = LogRaid::open(present(&members), 64).unwrap();
    let model = HashMap::from([(5, 1), (9, 1)]);
    verify(&array, &model);
    array.check().unwrap();
}

#[test]
fn overwrites_fill_the_array_many_times_with_gc_and_verify() {
    let mems = mem_members(6);
    let members = as_media(&mems);
    let config = LogRaidConfig {
        segment_stripes: 8,
        ..raid6()
    };
    let array = LogRaid::create(config, members.clone()).unwrap();
    let blocks = array.blocks();
    let mut model = HashMap::new();
    let mut rng = Rng(99);
    let mut version = 0;
    // Fill, then overwrite five times the capacity, hot and cold LBAs.
    for lba in 0..blocks {
        version += 1;
        array.write_blocks(lba, &pattern(lba, version)).unwrap();
        model.insert(lba, version);
    }
    for i in 0..5 * blocks {
        let lba = if rng.below(4) == 0 {
            rng.below(blocks)
        } else {
            rng.below(blocks / 5)
        };
        version += 1;
        array.write_blocks(lba, &pattern(lba, version)).unwrap();
        model.insert(lba, version);
        if i % 97 == 0 {
            array.flush().unwrap();
        }
    }
    let stats = array.stats();
    assert!(
        stats.gc_bytes > 0 && stats.segments_cleaned > 0,
        "{stats:?}"
    );
    assert!(stats.free_segments >= 1, "{stats:?}");
    // Parity costs 1.5x; summaries, records and GC moves come on top.
    assert!(stats.write_amplification >= 1.5, "{stats:?}");
    verify(&array, &model);
    array.check().unwrap();
    array.flush().unwrap();
    drop(array);
    let array = LogRaid::open(present(&members), 32).unwrap();
    verify(&array, &model);
    array.check().unwrap();
    let scrub = array.scrub().unwrap();
    assert_eq!((scrub.mismatches, scrub.unreadable), (0, 0));
}

#[test]
fn reads_survive_two_lost_members_and_not_three() {
    let mems = mem_members(6);
    let inner = as_media(&mems);
    let mut controls = Vec::new();
    let members: Vec<Arc<dyn Media>> = inner
        .iter()
        .map(|m| {
            let (faulty, control) = FaultyMedia::new(m.clone());
            controls.push(control);
            Arc::new(faulty) as Arc<dyn Media>
        })
        .collect();
    let array = LogRaid::create(raid6(), members.clone()).unwrap();
    let mut model = HashMap::new();
    let mut rng = Rng(3);
    for version in 1..=200u64 {
        let lba = rng.below(array.blocks());
        array.write_blocks(lba, &pattern(lba, version)).unwrap();
        model.insert(lba, version);
    }
    array.flush().unwrap();
    // Two members vanish while the array runs: reads reconstruct, writes
    // go on without them.
    controls[1].disappear();
    controls[4].disappear();
    verify(&array, &model);
    assert!(array.stats().degraded_reads > 0);
    assert_eq!(
        array.stats().failed_members.iter().filter(|f| **f).count(),
        2
    );
    for version in 201..=400u64 {
        let lba = rng.below(array.blocks());
        array.write_blocks(lba, &pattern(lba, version)).unwrap();
        model.insert(lba, version);
    }
    array.flush().unwrap();
    verify(&array, &model);
    drop(array);
    // Reopened without them (and with them back: their failure was
    // committed, so their stale contents are never read).
    for with_stale in [false, true] {
        let mut set = present(&inner);
        if !with_stale {
            set[1] = None;
            set[4] = None;
        }
        let array = LogRaid::open(set, 64).unwrap();
        verify(&array, &model);
        array.check().unwrap();
        assert_eq!(
            array.stats().failed_members.iter().filter(|f| **f).count(),
            2
        );
        drop(array);
    }
    // A third member lost: reads of its blocks fail, never return garbage.
    let mut set = present(&inner);
    set[1] = None;
    set[4] = None;
    set[0] = None;
    assert!(LogRaid::open(set, 64).is_err());
}

#[test]
fn a_corrupted_block_is_rebuilt_from_parity_on_read() {
    let mems = mem_members(6);
    let members = as_media(&mems);
    let array = LogRaid::create(raid6(), members).unwrap();
    let mut model = HashMap::new();
    for lba in 0..30 {
        array.write_blocks(lba, &pattern(lba, 1)).unwrap();
        model.insert(lba, 1);
    }
    array.flush().unwrap();
    // Flip a byte of every segment block on one member.
    let (seg_off, seg_bytes, segments) = array.segment_area();
    let mut bytes = vec![0u8; (seg_bytes * segments) as usize];
    mems[2].read_at(seg_off, &mut bytes).unwrap();
    for b in bytes.iter_mut().step_by(BLOCK as usize) {
        *b ^= 0x5a;
    }
    mems[2].write_at(seg_off, &bytes).unwrap();
    verify(&array, &model);
    assert!(array.stats().degraded_reads > 0);
}

/// Checks that every write into the segment area continues where the last
/// write to the same segment ended, or starts the segment over (a zone
/// reset and rewrite).
struct SequentialCheck {
    inner: Arc<dyn Media>,
    area: Mutex<Option<(u64, u64, u64)>>,
    next: Mutex<HashMap<u64, u64>>,
    violations: Mutex<Vec<String>>,
}

impl Media for SequentialCheck {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> MediaResult<()> {
        self.inner.read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> MediaResult<()> {
        if let Some((start, per, count)) = *self.area.lock().unwrap() {
            if offset >= start && offset < start + per * count {
                let segment = (offset - start) / per;
                let segment_start = start + segment * per;
                let end = offset + data.len() as u64;
                let mut next = self.next.lock().unwrap();
                let expected = next.get(&segment).copied().unwrap_or(segment_start);
                if offset != expected && offset != segment_start || end > segment_start + per {
                    self.violations.lock().unwrap().push(format!(
                        "segment {segment}: write at {offset}, expected {expected}"
                    ));
                }
                next.insert(segment, end);
            }
        }
        self.inner.write_at(offset, data)
    }

    fn flush(&self) -> MediaResult<()> {
        self.inner.flush()
    }
}

#[test]
fn members_only_see_sequential_writes_within_a_segment() {
    let checks: Vec<Arc<SequentialCheck>> = mem_members(6)
        .into_iter()
        .map(|m| {
            Arc::new(SequentialCheck {
                inner: m,
                area: Mutex::new(None),
                next: Mutex::new(HashMap::new()),
                violations: Mutex::new(Vec::new()),
            })
        })
        .collect();
    let members = as_media(&checks);
    let array = LogRaid::create(raid6(), members).unwrap();
    for c in &checks {
        *c.area.lock().unwrap() = Some(array.segment_area());
    }
    let mut rng = Rng(5);
    let blocks = array.blocks();
    let mut resets = 0;
    let mut last_free = array.stats().free_segments;
    for i in 0..8 * blocks {
        let lba = rng.below(blocks);
        array.write_blocks(lba, &pattern(lba, i)).unwrap();
        if rng.below(10) == 0 {
            array.flush().unwrap();
        }
        let free = array.stats().free_segments;
        resets += u64::from(free > last_free);
        last_free = free;
    }
    let stats = array.stats();
    assert!(stats.segments_cleaned > 2 && resets > 0, "{stats:?}");
    for (i, c) in checks.iter().enumerate() {
        let v = c.violations.lock().unwrap();
        assert!(v.is_empty(), "member {i}: {:?}", &v[..v.len().min(5)]);
        assert!(!c.next.lock().unwrap().is_empty());
    }
}

#[test]
fn full_array_reports_no_space_only_when_gc_cannot_help() {
    let members = as_media(&mem_members(6));
    let array = LogRaid::create(raid6(), members).unwrap();
    // Writing every LBA many times never runs out: the logical size leaves
    // GC its room.
    for round in 0..6u64 {
        for lba in 0..array.blocks() {
            array.write_blocks(lba, &pattern(lba, round)).unwrap();
        }
    }
    let stats = array.stats();
    assert!(stats.free_segments >= 1, "{stats:?}");
    array.check().unwrap();
}

#[test]
fn create_refuses_bad_configurations() {
    let members = as_media(&mem_members(6));
    let mirror = Layout::Mirror {
        members: 6,
        copies: 2,
    };
    assert!(LogRaid::create(LogRaidConfig::new(mirror, 4096, 4), members.clone()).is_err());
    assert!(LogRaid::create(
        LogRaidConfig::new(Layout::Raid6 { members: 6 }, 1000, 4),
        members.clone()
    )
    .is_err());
    assert!(LogRaid::create(
        LogRaidConfig::new(Layout::Raid6 { members: 5 }, 4096, 4),
        members.clone()
    )
    .is_err());
    let huge = LogRaidConfig {
        logical_bytes: 1 << 30,
        ..raid6()
    };
    assert!(LogRaid::create(huge, members.clone()).is_err());
    let blank: Vec<Option<Arc<dyn Media>>> =
        as_media(&mem_members(6)).into_iter().map(Some).collect();
    assert!(LogRaid::open(blank, 64).is_err());
}
