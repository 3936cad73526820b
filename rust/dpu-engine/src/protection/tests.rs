//! Tests of whole arrays: model comparisons under every allowed failure
//! combination, crashes at every member write, scrub and rebuild.

use std::sync::Arc;

use proptest::prelude::*;

use super::format::Geometry;
use super::*;
use crate::fault::{torn_sectors, FaultControl, FaultyMedia, PowerCut};
use crate::media::{Media, MediaError, MemMedia};

const CHUNK: u64 = 1024;
const ROWS: u64 = 8;
const SLOTS: u64 = 4;

const REDUNDANT: [Layout; 6] = [
    Layout::Mirror {
        members: 4,
        copies: 2,
    },
    Layout::Mirror {
        members: 6,
        copies: 3,
    },
    Layout::Raid6 { members: 5 },
    Layout::Raid6 { members: 6 },
    Layout::Erasure { data: 3, parity: 2 },
    Layout::Erasure { data: 4, parity: 2 },
];

fn all_layouts() -> Vec<Layout> {
    let mut layouts = vec![Layout::Stripe { members: 3 }];
    layouts.extend(REDUNDANT);
    layouts
}

/// Deterministic bytes that differ per seed and position.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// An array over in-memory members, each behind a fault injector.
struct Rig {
    mems: Vec<Arc<MemMedia>>,
    controls: Vec<FaultControl>,
    array: ProtectedMedia,
}

fn member_bytes() -> u64 {
    Geometry::data_offset_for(CHUNK, SLOTS) + ROWS * CHUNK
}

fn config(layout: Layout) -> ProtectionConfig {
    ProtectionConfig {
        journal_slots: SLOTS,
        assume_zeroed: true,
        ..ProtectionConfig::new(layout, CHUNK)
    }
}

fn faulty(mems: &[Arc<MemMedia>]) -> (Vec<Arc<dyn Media>>, Vec<FaultControl>) {
    mems.iter()
        .map(|m| {
            let (media, control) = FaultyMedia::new(m.clone());
            (Arc::new(media) as Arc<dyn Media>, control)
        })
        .unzip()
}

fn rig(layout: Layout) -> Rig {
    let mems: Vec<Arc<MemMedia>> = (0..layout.members())
        .map(|_| Arc::new(MemMedia::new(member_bytes() as usize)))
        .collect();
    let (members, controls) = faulty(&mems);
    let array = ProtectedMedia::create(config(layout), members).unwrap();
    Rig {
        mems,
        controls,
        array,
    }
}

/// Reopens the members of `rig` (wrapped anew) as after a restart.
fn remount(mems: &[Arc<MemMedia>]) -> (ProtectedMedia, Vec<FaultControl>) {
    let (members, controls) = faulty(mems);
    let array = ProtectedMedia::open(members.into_iter().map(Some).collect()).unwrap();
    (array, controls)
}

fn copy_of(mem: &MemMedia) -> Arc<MemMedia> {
    let bytes = mem.snapshot();
    let copy = MemMedia::new(bytes.len());
    copy.write_at(0, &bytes).unwrap();
    Arc::new(copy)
}

/// Every subset of members, as flags.
fn subsets(n: usize) -> impl Iterator<Item = Vec<bool>> {
    (0u32..1 << n).map(move |m| (0..n).map(|i| m & (1 << i) != 0).collect())
}

/// Opens copies of `mems` without the members flagged in `absent`, and
/// reads everything: `Ok` with the bytes, or the error.
fn read_without(mems: &[Arc<MemMedia>], absent: &[bool]) -> Result<Vec<u8>, MediaError> {
    let members: Vec<Option<Arc<dyn Media>>> = mems
        .iter()
        .zip(absent)
        .map(|(m, a)| (!a).then(|| copy_of(m) as Arc<dyn Media>))
        .collect();
    let array = ProtectedMedia::open(members)?;
    let mut buf = vec![0u8; array.size() as usize];
    array.read_at(0, &mut buf)?;
    Ok(buf)
}

/// For every combination of absent members: tolerated ones read back
/// `model` exactly; the others fail with `Unrecoverable`, never wrong data.
fn check_every_failure_combination(layout: Layout, mems: &[Arc<MemMedia>], model: &[u8]) {
    check_failures_beyond(layout, mems, model, &vec![false; layout.members()]);
}

/// Like [`check_every_failure_combination`] for an array whose members
/// flagged in `lost` have already failed: they are absent from every
/// combination. (Handing over only stale members cannot be caught: their
/// superblocks never learnt they failed, just as with md.)
fn check_failures_beyond(layout: Layout, mems: &[Arc<MemMedia>], model: &[u8], lost: &[bool]) {
    for absent in subsets(layout.members()) {
        let gone: Vec<bool> = absent.iter().zip(lost).map(|(a, l)| *a || *l).collect();
        let result = read_without(mems, &gone);
        if layout.can_decode(&gone) {
            assert!(
                result.as_deref() == Ok(model),
                "{layout:?} without {absent:?}: data differs from the model"
            );
        } else {
            assert!(
                matches!(result, Err(MediaError::Unrecoverable(_))),
                "{layout:?} without {absent:?}: expected Unrecoverable"
            );
        }
    }
}

#[derive(Debug, Clone)]
struct Write {
    offset: u64,
    len: usize,
    seed: u64,
}

fn writes(max: usize) -> impl Strategy<Value = Vec<Write>> {
    prop::collection::vec(
        (0.0f64..1.0, 1usize..3 * 4 * CHUNK as usize, any::<u64>()).prop_map(|(at, len, seed)| {
            Write {
                offset: 0,
                len,
                seed,
            }
            .placed(at)
        }),
        1..max,
    )
}

impl Write {
    /// Positions the write at fraction `at` of the smallest array tested;
    /// `apply` clamps it to the real size.
    fn placed(mut self, at: f64) -> Self {
        self.offset = (at * (2 * ROWS * CHUNK) as f64) as u64;
        self
    }

    fn apply(&self, media: &dyn Media, model: &mut [u8]) -> Result<(), MediaError> {
        let size = model.len() as u64;
        let offset = self.offset.min(size - 1);
        let len = (self.len as u64).min(size - offset) as usize;
        let data = pattern(self.seed, len);
        media.write_at(offset, &data)?;
        model[offset as usize..offset as usize + len].copy_from_slice(&data);
        Ok(())
    }
}

fn run_writes(media: &dyn Media, model: &mut [u8], writes: &[Write]) {
    for w in writes {
        w.apply(media, model).unwrap();
    }
}

fn read_all(media: &dyn Media) -> Vec<u8> {
    let mut buf = vec![0u8; media.size() as usize];
    media.read_at(0, &mut buf).unwrap();
    buf
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Random writes read back exactly, with any allowed set of members
    /// gone, and leave every row's parity or copies verifying.
    #[test]
    fn reads_match_model_under_every_failure_combination(ops in writes(10)) {
        for layout in all_layouts() {
            let rig = rig(layout);
            let mut model = vec![0u8; rig.array.size() as usize];
            run_writes(&rig.array, &mut model, &ops);
            prop_assert_eq!(read_all(&rig.array), model.clone());
            let report = rig.array.scrub(false).unwrap();
            prop_assert_eq!(report.mismatches, 0);
            prop_assert_eq!(report.rows, ROWS);
            check_every_failure_combination(layout, &rig.mems, &model);
        }
    }

    /// Members fail mid-run (I/O errors or vanishing); writes go on
    /// degraded; after replacement and rebuild the array verifies again.
    #[test]
    fn degraded_writes_then_rebuild_restore_a_verifying_array(
        layout in prop::sample::select(REDUNDANT.to_vec()),
        before in writes(6),
        after in writes(6),
        pick in any::<prop::sample::Index>(),
        vanish in any::<bool>(),
    ) {
        let rig = rig(layout);
        let mut model = vec![0u8; rig.array.size() as usize];
        run_writes(&rig.array, &mut model, &before);
        let tolerated: Vec<Vec<bool>> = subsets(layout.members())
            .filter(|s| {
                let lost = s.iter().filter(|f| **f).count();
                lost > 0 && lost <= layout.tolerance()
            })
            .collect();
        let lost = pick.get(&tolerated).clone();
        for (member, _) in lost.iter().enumerate().filter(|(_, l)| **l) {
            if vanish {
                rig.controls[member].disappear();
            } else {
                rig.controls[member].fail_all(true);
            }
        }
        // One write over everything makes every faulty member fail (a
        // fault nothing touches is no failure), then the random ones.
        let everything = Write { offset: 0, len: model.len(), seed: 12 };
        everything.apply(&rig.array, &mut model).unwrap();
        run_writes(&rig.array, &mut model, &after);
        prop_assert_eq!(read_all(&rig.array), model.clone());
        prop_assert_eq!(rig.array.state(), ArrayState::Degraded);
        // Still degraded: losing any further members the layout tolerates
        // on top of the failed ones must not change a byte. (A faulty member
        // that no I/O touched yet is still online, and rightly trusted.)
        let failed: Vec<bool> = rig
            .array
            .status()
            .members
            .iter()
            .map(|m| m.state != MemberState::Online)
            .collect();
        check_failures_beyond(layout, &rig.mems, &model, &failed);
        let mut mems = rig.mems.clone();
        for (member, _) in lost.iter().enumerate().filter(|(_, l)| **l) {
            prop_assert_eq!(rig.array.status().members[member].state, MemberState::Failed);
            let fresh = Arc::new(MemMedia::new(member_bytes() as usize));
            rig.array.replace_member(member, fresh.clone()).unwrap();
            mems[member] = fresh;
        }
        prop_assert_eq!(rig.array.state(), ArrayState::Rebuilding);
        rig.array.rebuild_all(3).unwrap();
        prop_assert_eq!(rig.array.state(), ArrayState::Optimal);
        prop_assert_eq!(rig.array.scrub(false).unwrap().mismatches, 0);
        prop_assert_eq!(read_all(&rig.array), model.clone());
        drop(rig.array);
        check_every_failure_combination(layout, &mems, &model);
    }

    /// Power fails after every possible number of member writes during a
    /// write and the flush that destages it (degraded or not), and the
    /// members' volatile caches lose any set of the writes no completed
    /// flush covers, each whole or torn into any subset of its 512-byte
    /// sectors; after remount every row holds all old or all new data, and
    /// every allowed failure combination agrees on it.
    #[test]
    fn crash_at_every_member_write_never_reconstructs_wrong_data(
        layout in prop::sample::select(REDUNDANT.to_vec()),
        prefill in writes(5),
        at in 0.0f64..1.0,
        len in 1usize..2 * CHUNK as usize,
        degraded in any::<prop::sample::Index>(),
        seed in any::<u64>(),
        keep_seed in any::<u64>(),
    ) {
        let rig = rig(layout);
        let mut old = vec![0u8; rig.array.size() as usize];
        run_writes(&rig.array, &mut old, &prefill);
        // Optionally run degraded: the write hole bites hardest then.
        let victim = degraded.index(layout.members() + 1);
        if victim < layout.members() {
            rig.array.fail_member(victim).unwrap();
        }
        rig.array.flush().unwrap();
        let base: Vec<Arc<MemMedia>> = rig.mems.iter().map(|m| copy_of(m)).collect();
        let write = Write { offset: 0, len, seed }.placed(at);
        let mut new = old.clone();

        // Count the member writes one array write takes.
        let (array, controls) = remount(&base.iter().map(|m| copy_of(m)).collect::<Vec<_>>());
        let counter = PowerCut::never();
        for c in &controls {
            c.attach_power_cut(counter.clone());
        }
        write.apply(&array, &mut new).unwrap();
        array.flush().unwrap();
        let total = counter.attempted();
        prop_assert!(total > 0);

        let rows: Vec<std::ops::Range<usize>> = {
            let stripe = (CHUNK as usize) * layout.data_slots();
            (0..old.len()).step_by(stripe).map(|s| s..s + stripe).collect()
        };
        for cut_after in 0..=total {
            let mems: Vec<Arc<MemMedia>> = base.iter().map(|m| copy_of(m)).collect();
            let (array, controls) = remount(&mems);
            let cut = PowerCut::after_writes(cut_after);
            for c in &controls {
                c.attach_power_cut(cut.clone());
                c.enable_write_cache();
            }
            let mut scratch = old.clone();
            write.apply(&array, &mut scratch).unwrap();
            array.flush().unwrap();
            drop(array);
            let mut keep = torn_sectors(keep_seed ^ cut_after);
            for (c, m) in controls.iter().zip(&mems) {
                c.crash(m.as_ref(), &mut keep).unwrap();
            }

            let (recovered, _) = remount(&mems);
            let seen = read_all(&recovered);
            for row in &rows {
                prop_assert!(
                    seen[row.clone()] == old[row.clone()] || seen[row.clone()] == new[row.clone()],
                    "{:?}: cut after {} of {} writes left row {:?} neither old nor new",
                    layout, cut_after, total, row
                );
            }
            prop_assert_eq!(recovered.scrub(false).unwrap().mismatches, 0);
            drop(recovered);
            let lost: Vec<bool> = (0..layout.members()).map(|m| m == victim).collect();
            for absent in subsets(layout.members()) {
                let all_absent: Vec<bool> =
                    absent.iter().zip(&lost).map(|(a, l)| *a || *l).collect();
                if layout.can_decode(&all_absent) {
                    let read = read_without(&mems, &all_absent);
                    prop_assert!(
                        read.as_deref() == Ok(seen.as_slice()),
                        "{:?}: cut after {}, without {:?}: reconstruction differs",
                        layout, cut_after, all_absent
                    );
                }
            }
        }
    }

    /// Power fails at every member write of a rebuild, and the members'
    /// caches lose or tear any unflushed writes; after remount the data is
    /// intact, the rebuild
    /// resumes from its recorded position and ends with a verifying array.
    #[test]
    fn crash_during_rebuild_resumes_and_ends_consistent(
        layout in prop::sample::select(REDUNDANT.to_vec()),
        prefill in writes(5),
        victim in any::<prop::sample::Index>(),
        keep_seed in any::<u64>(),
    ) {
        let rig = rig(layout);
        let mut model = vec![0u8; rig.array.size() as usize];
        run_writes(&rig.array, &mut model, &prefill);
        let victim = victim.index(layout.members());
        rig.array.fail_member(victim).unwrap();
        let fresh = Arc::new(MemMedia::new(member_bytes() as usize));
        rig.array.replace_member(victim, fresh.clone()).unwrap();
        rig.array.flush().unwrap();
        let mut base = rig.mems.clone();
        base[victim] = fresh;

        let (array, controls) = remount(&base.iter().map(|m| copy_of(m)).collect::<Vec<_>>());
        let counter = PowerCut::never();
        for c in &controls {
            c.attach_power_cut(counter.clone());
        }
        array.rebuild_all(4).unwrap();
        let total = counter.attempted();

        for cut_after in 0..=total {
            let mems: Vec<Arc<MemMedia>> = base.iter().map(|m| copy_of(m)).collect();
            let (array, controls) = remount(&mems);
            let cut = PowerCut::after_writes(cut_after);
            for c in &controls {
                c.attach_power_cut(cut.clone());
                c.enable_write_cache();
            }
            array.rebuild_all(4).unwrap();
            drop(array);
            let mut keep = torn_sectors(keep_seed ^ cut_after);
            for (c, m) in controls.iter().zip(&mems) {
                c.crash(m.as_ref(), &mut keep).unwrap();
            }

            let (recovered, _) = remount(&mems);
            prop_assert_eq!(read_all(&recovered), model.clone());
            prop_assert_eq!(recovered.scrub(false).unwrap().mismatches, 0);
            recovered.rebuild_all(4).unwrap();
            prop_assert_eq!(recovered.state(), ArrayState::Optimal);
            prop_assert_eq!(recovered.scrub(false).unwrap().mismatches, 0);
        }
        // One full pass: every tolerated combination agrees with the model.
        let mems: Vec<Arc<MemMedia>> = base.iter().map(|m| copy_of(m)).collect();
        let (array, _) = remount(&mems);
        array.rebuild_all(4).unwrap();
        drop(array);
        check_every_failure_combination(layout, &mems, &model);
    }

    /// A silently corrupted sector on any member is found by scrub, traced
    /// to its member and rewritten with the original bytes.
    #[test]
    fn scrub_finds_and_repairs_silent_corruption(
        layout in prop::sample::select(vec![
            Layout::Mirror { members: 6, copies: 3 },
            Layout::Raid6 { members: 5 },
            Layout::Raid6 { members: 6 },
            Layout::Erasure { data: 4, parity: 2 },
            Layout::Erasure { data: 3, parity: 3 },
        ]),
        ops in writes(6),
        member in any::<prop::sample::Index>(),
        row in 0..ROWS,
        sector in 0..CHUNK / 512,
        byte in 0..512u64,
    ) {
        let rig = rig(layout);
        let mut model = vec![0u8; rig.array.size() as usize];
        run_writes(&rig.array, &mut model, &ops);
        rig.array.flush().unwrap();
        let member = member.index(layout.members());
        let before = rig.mems[member].snapshot();
        let at = rig.array.geometry.row_offset(row) + sector * 512 + byte;
        let mut damaged = [before[at as usize]];
        damaged[0] ^= 0x5a;
        rig.mems[member].write_at(at, &damaged).unwrap();

        let report = rig.array.scrub(true).unwrap();
        prop_assert_eq!(report.mismatches, 1);
        prop_assert_eq!(report.repaired, 1);
        prop_assert_eq!(report.unlocated, 0);
        prop_assert!(rig.mems[member].snapshot() == before, "member not restored");
        prop_assert_eq!(rig.array.scrub(false).unwrap().mismatches, 0);
        prop_assert_eq!(read_all(&rig.array), model);
    }
}

#[test]
fn members_are_found_by_identity_in_any_order() {
    let layout = Layout::Raid6 { members: 5 };
    let rig = rig(layout);
    let mut model = vec![0u8; rig.array.size() as usize];
    Write {
        offset: 100,
        len: 9000,
        seed: 1,
    }
    .apply(&rig.array, &mut model)
    .unwrap();
    drop(rig.array);
    let mut members: Vec<Option<Arc<dyn Media>>> = rig
        .mems
        .iter()
        .map(|m| Some(m.clone() as Arc<dyn Media>))
        .collect();
    members.reverse();
    let array = ProtectedMedia::open(members).unwrap();
    assert_eq!(array.state(), ArrayState::Optimal);
    assert_eq!(read_all(&array), model);
}

#[test]
fn a_foreign_member_does_not_take_over_the_array() {
    let ours = rig(Layout::Raid6 { members: 4 });
    let mut model = vec![0u8; ours.array.size() as usize];
    Write {
        offset: 0,
        len: 5000,
        seed: 10,
    }
    .apply(&ours.array, &mut model)
    .unwrap();
    // Another array whose superblocks have a higher generation.
    let theirs = rig(Layout::Raid6 { members: 4 });
    for _ in 0..5 {
        theirs.array.fail_member(0).unwrap();
        theirs
            .array
            .replace_member(0, Arc::new(MemMedia::new(member_bytes() as usize)))
            .unwrap();
    }
    drop(ours.array);
    let mut members: Vec<Option<Arc<dyn Media>>> = ours
        .mems
        .iter()
        .map(|m| Some(m.clone() as Arc<dyn Media>))
        .collect();
    members[1] = Some(theirs.mems[1].clone());
    let array = ProtectedMedia::open(members).unwrap();
    assert_eq!(array.status().members[1].state, MemberState::Missing);
    assert_eq!(read_all(&array), model);
}

#[test]
fn a_member_with_an_unreadable_journal_is_failed_at_mount() {
    let layout = Layout::Erasure { data: 3, parity: 2 };
    let rig = rig(layout);
    let mut model = vec![0u8; rig.array.size() as usize];
    Write {
        offset: 3000,
        len: 7000,
        seed: 11,
    }
    .apply(&rig.array, &mut model)
    .unwrap();
    drop(rig.array);
    let (members, controls) = faulty(&rig.mems);
    let journal = super::format::JOURNAL_START;
    controls[3].error_range(journal..journal + 4096, crate::fault::FaultOps::Read);
    let array = ProtectedMedia::open(members.into_iter().map(Some).collect()).unwrap();
    assert_eq!(array.status().members[3].state, MemberState::Failed);
    assert_eq!(array.state(), ArrayState::Degraded);
    assert_eq!(read_all(&array), model);
}

#[test]
fn status_reports_rebuild_progress() {
    let rig = rig(Layout::Mirror {
        members: 6,
        copies: 3,
    });
    rig.array.fail_member(4).unwrap();
    assert_eq!(rig.array.status().rebuild, None);
    rig.array
        .replace_member(4, Arc::new(MemMedia::new(member_bytes() as usize)))
        .unwrap();
    rig.array.rebuild_step(3).unwrap();
    let status = rig.array.status();
    assert_eq!(status.state, ArrayState::Rebuilding);
    assert_eq!(
        status.rebuild,
        Some(RebuildProgress {
            member: Some(4),
            rows_done: 3,
            rows_total: ROWS
        })
    );
    assert_eq!(status.rebuilt_rows, 3);
}

#[test]
fn beyond_tolerance_io_fails_and_the_array_says_failed() {
    let rig = rig(Layout::Raid6 { members: 5 });
    let mut model = vec![0u8; rig.array.size() as usize];
    Write {
        offset: 0,
        len: 20_000,
        seed: 2,
    }
    .apply(&rig.array, &mut model)
    .unwrap();
    for member in 0..3 {
        rig.controls[member].disappear();
    }
    let mut buf = vec![0u8; 4096];
    assert!(matches!(
        rig.array.read_at(0, &mut buf),
        Err(MediaError::Unrecoverable(_))
    ));
    assert!(matches!(
        rig.array.write_at(0, &buf),
        Err(MediaError::Unrecoverable(_))
    ));
    assert_eq!(rig.array.state(), ArrayState::Failed);
}

#[test]
fn range_errors_are_served_by_reconstruction_without_failing_the_member() {
    let rig = rig(Layout::Erasure { data: 4, parity: 2 });
    let mut model = vec![0u8; rig.array.size() as usize];
    Write {
        offset: 0,
        len: rig.array.size() as usize,
        seed: 3,
    }
    .apply(&rig.array, &mut model)
    .unwrap();
    let data_start = rig.array.geometry.data_offset;
    rig.controls[1].error_range(
        data_start..data_start + 3 * CHUNK,
        crate::fault::FaultOps::Read,
    );
    assert_eq!(read_all(&rig.array), model);
    let status = rig.array.status();
    assert_eq!(status.state, ArrayState::Optimal);
    assert!(status.members[1].read_errors > 0);
    assert!(status.degraded_reads > 0);
}

#[test]
fn a_member_that_missed_updates_comes_back_failed() {
    let layout = Layout::Mirror {
        members: 4,
        copies: 2,
    };
    let rig = rig(layout);
    drop(rig.array);
    let mut members: Vec<Option<Arc<dyn Media>>> = rig
        .mems
        .iter()
        .map(|m| Some(m.clone() as Arc<dyn Media>))
        .collect();
    members[2] = None;
    let array = ProtectedMedia::open(members).unwrap();
    assert_eq!(array.state(), ArrayState::Degraded);
    array.write_at(0, &pattern(4, 8192)).unwrap();
    drop(array);
    let all: Vec<Option<Arc<dyn Media>>> = rig
        .mems
        .iter()
        .map(|m| Some(m.clone() as Arc<dyn Media>))
        .collect();
    let array = ProtectedMedia::open(all).unwrap();
    assert_eq!(array.status().members[2].state, MemberState::Failed);
    assert_eq!(array.state(), ArrayState::Degraded);
}

#[test]
fn corruption_injected_on_write_is_repaired_by_scrub() {
    let rig = rig(Layout::Raid6 { members: 6 });
    let mut model = vec![0u8; rig.array.size() as usize];
    let g = rig.array.geometry;
    // Row 0's P lives on member 4 (no rotation in row 0): a write to data
    // chunk 0 rewrites it, and the injector damages it on the way.
    rig.controls[4].corrupt_next_write(g.row_offset(0)..g.row_offset(0) + 16);
    Write {
        offset: 0,
        len: 512,
        seed: 5,
    }
    .apply(&rig.array, &mut model)
    .unwrap();
    // Written in place (where the injector waits) when destaged.
    rig.array.flush().unwrap();
    assert_eq!(rig.controls[4].counters().injected, 1);
    let report = rig.array.scrub(true).unwrap();
    assert_eq!((report.mismatches, report.repaired), (1, 1));
    assert_eq!(rig.array.scrub(false).unwrap().mismatches, 0);
    rig.controls[0].fail_all(true);
    rig.controls[1].fail_all(true);
    assert_eq!(read_all(&rig.array), model);
}

#[test]
fn damage_in_a_row_of_zeroes_is_found_and_repaired() {
    // Rows never written read as zeroes on every member, which the scrub
    // accepts without decoding; one nonzero byte must still count.
    // Every member in turn, so data, copy and parity slots all get hit.
    for layout in REDUNDANT {
        for member in 0..layout.members() {
            let rig = rig(layout);
            let at = rig.array.geometry.row_offset(5) + 700;
            rig.mems[member].write_at(at, &[0x5a]).unwrap();
            let what = format!("{layout:?}, member {member}");
            assert_eq!(rig.array.scrub(false).unwrap().mismatches, 1, "{what}");
            assert_eq!(rig.array.scrub(true).unwrap().mismatches, 1, "{what}");
            assert_eq!(rig.array.scrub(false).unwrap().mismatches, 0, "{what}");
            if matches!(layout, Layout::Mirror { copies: 2, .. }) {
                // Two copies cannot tell which is right: consistent is all
                // a repair promises there.
                continue;
            }
            let mut back = [0xffu8; 1];
            rig.mems[member].read_at(at, &mut back).unwrap();
            assert_eq!(back, [0], "{what}: the damaged byte was rewritten");
            assert!(read_all(&rig.array).iter().all(|&b| b == 0), "{what}");
        }
    }
}

#[test]
fn two_copy_mirror_reports_unlocated_mismatch_and_resyncs() {
    let rig = rig(Layout::Mirror {
        members: 4,
        copies: 2,
    });
    let at = rig.array.geometry.row_offset(3);
    rig.mems[1].write_at(at, &[0xee; 8]).unwrap();
    let report = rig.array.scrub(true).unwrap();
    assert_eq!((report.mismatches, report.unlocated), (1, 1));
    assert_eq!(rig.array.scrub(false).unwrap().mismatches, 0);
}

#[test]
fn rebuild_and_scrub_with_concurrent_io_end_consistent() {
    for layout in [
        Layout::Mirror {
            members: 4,
            copies: 2,
        },
        Layout::Raid6 { members: 6 },
        Layout::Erasure { data: 4, parity: 2 },
    ] {
        let rig = rig(layout);
        let size = rig.array.size() as usize;
        let mut model = vec![0u8; size];
        Write {
            offset: 0,
            len: size,
            seed: 6,
        }
        .apply(&rig.array, &mut model)
        .unwrap();
        rig.controls[0].disappear();
        rig.array.fail_member(0).unwrap();
        let fresh = Arc::new(MemMedia::new(member_bytes() as usize));
        rig.array.replace_member(0, fresh.clone()).unwrap();
        let array = &rig.array;
        let model = std::thread::scope(|s| {
            let writer = s.spawn(move || {
                for i in 0..60u64 {
                    let w = Write {
                        offset: (i * 7919) % (size as u64),
                        len: 300 + (i as usize * 131) % 3000,
                        seed: 100 + i,
                    };
                    w.apply(array, &mut model).unwrap();
                }
                model
            });
            let reader = s.spawn(move || {
                for i in 0..60u64 {
                    let mut buf = vec![0u8; 2048];
                    array
                        .read_at((i * 4513) % (size as u64 - 2048), &mut buf)
                        .unwrap();
                }
            });
            // Rebuild and scrub rows while the writer and reader run: with
            // per-row locking, scrub must never see a half-written row.
            let mut row = 0;
            while !array.rebuild_step(1).unwrap().is_complete() {
                let report = array.scrub_rows(row % ROWS, 1, true).unwrap();
                assert_eq!(report.mismatches, 0, "{layout:?} row {row}");
                row += 1;
            }
            reader.join().unwrap();
            writer.join().unwrap()
        });
        assert_eq!(rig.array.state(), ArrayState::Optimal);
        assert_eq!(rig.array.status().rebuilt_rows, ROWS);
        assert_eq!(rig.array.scrub(false).unwrap().mismatches, 0);
        assert_eq!(read_all(&rig.array), model);
        drop(rig.array);
        let mut mems = rig.mems.clone();
        mems[0] = fresh;
        check_every_failure_combination(layout, &mems, &model);
        // The replaced media still claims to be member 0, but with an old
        // identity: assembling with it instead must not trust it.
        let (stale, _) = remount(&rig.mems);
        assert_eq!(stale.status().members[0].state, MemberState::Missing);
        assert_eq!(read_all(&stale), model);
    }
}

#[test]
fn concurrent_writers_commit_in_parallel_and_stay_consistent() {
    for layout in [
        Layout::Raid6 { members: 5 },
        Layout::Erasure { data: 3, parity: 2 },
        Layout::Mirror {
            members: 6,
            copies: 3,
        },
    ] {
        let rig = rig(layout);
        let size = rig.array.size() as usize;
        let writers = 3;
        // Regions that are not row-aligned, so writers share rows at the
        // edges and the row locks are exercised too.
        let region = size / writers;
        let array = &rig.array;
        let parts: Vec<Vec<u8>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..writers)
                .map(|w| {
                    s.spawn(move || {
                        let mut part = vec![0u8; region];
                        for i in 0..40u64 {
                            let at = (i * 2777 + w as u64 * 131) as usize % (region - 1);
                            let len = (300 + i as usize * 97 % 2500).min(region - at);
                            let data = pattern(w as u64 * 1000 + i, len);
                            array.write_at((w * region + at) as u64, &data).unwrap();
                            part[at..at + len].copy_from_slice(&data);
                        }
                        part
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut model = vec![0u8; size];
        for (w, part) in parts.iter().enumerate() {
            model[w * region..(w + 1) * region].copy_from_slice(part);
        }
        assert_eq!(read_all(&rig.array), model);
        assert_eq!(rig.array.scrub(false).unwrap().mismatches, 0);
        assert!(rig.array.status().journal_commits >= 3 * 40, "{layout:?}");
        drop(rig.array);
        check_every_failure_combination(layout, &rig.mems, &model);
    }
}

#[test]
fn rebuild_progress_is_persisted_and_resumes_after_remount() {
    let layout = Layout::Erasure { data: 3, parity: 2 };
    let rig = rig(layout);
    let mut model = vec![0u8; rig.array.size() as usize];
    Write {
        offset: 0,
        len: model.len(),
        seed: 7,
    }
    .apply(&rig.array, &mut model)
    .unwrap();
    rig.array.fail_member(2).unwrap();
    let fresh = Arc::new(MemMedia::new(member_bytes() as usize));
    rig.array.replace_member(2, fresh.clone()).unwrap();
    let progress = rig.array.rebuild_step(4).unwrap();
    assert_eq!((progress.member, progress.rows_done), (Some(2), 4));
    drop(rig.array);
    let mut mems = rig.mems.clone();
    mems[2] = fresh;
    let (array, _) = remount(&mems);
    assert_eq!(array.status().members[2].state, MemberState::Rebuilding);
    assert_eq!(array.status().members[2].rebuilt_rows, 4);
    array.rebuild_all(100).unwrap();
    assert_eq!(array.state(), ArrayState::Optimal);
    assert_eq!(read_all(&array), model);
    drop(array);
    check_every_failure_combination(layout, &mems, &model);
}

#[test]
fn layouts_stack_on_each_other() {
    // RAID0 over two RAID6 arrays (a RAID60), each over in-memory members.
    let inner: Vec<Arc<dyn Media>> = (0..2)
        .map(|_| {
            let layout = Layout::Raid6 { members: 4 };
            let members = (0..4)
                .map(|_| Arc::new(MemMedia::new(member_bytes() as usize * 4)) as Arc<dyn Media>)
                .collect();
            Arc::new(ProtectedMedia::create(config(layout), members).unwrap()) as Arc<dyn Media>
        })
        .collect();
    let cfg = ProtectionConfig {
        journal_slots: 2,
        ..ProtectionConfig::new(Layout::Stripe { members: 2 }, 512)
    };
    let outer = ProtectedMedia::create(cfg, inner).unwrap();
    let mut model = vec![0u8; outer.size() as usize];
    Write {
        offset: 77,
        len: 10_000,
        seed: 8,
    }
    .apply(&outer, &mut model)
    .unwrap();
    assert_eq!(read_all(&outer), model);
}

#[test]
fn raid6_over_files_rebuilds_and_scrubs() {
    let dir = std::env::temp_dir().join(format!("dpu-engine-raid6-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let open = |i: usize| -> Arc<dyn Media> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join(format!("ssd{i}")))
            .unwrap();
        Arc::new(crate::media::FileMedia::new(file, 4 << 20).unwrap())
    };
    let members: Vec<Arc<dyn Media>> = (0..6).map(open).collect();
    let cfg = ProtectionConfig {
        assume_zeroed: true,
        ..ProtectionConfig::new(Layout::Raid6 { members: 6 }, 16 * 1024)
    };
    let array = ProtectedMedia::create(cfg, members).unwrap();
    let data = pattern(9, 200_000);
    array.write_at(12_345, &data).unwrap();
    array.fail_member(3).unwrap();
    array.replace_member(3, open(6)).unwrap();
    array.rebuild_all(8).unwrap();
    assert_eq!(array.scrub(true).unwrap().mismatches, 0);
    let mut back = vec![0u8; data.len()];
    array.read_at(12_345, &mut back).unwrap();
    assert_eq!(back, data);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A journal slot is reused only after the checkpoint that retires its old
/// transaction is durable. Otherwise a crash that loses the new entries'
/// headers (but keeps part of a payload) leaves an older transaction of
/// the same row whole in its slot, vouched for by no durable checkpoint,
/// and replay writes it over newer data that was already flushed.
#[test]
fn reused_journal_slot_never_replays_an_older_transaction() {
    let layout = Layout::Mirror {
        members: 2,
        copies: 2,
    };
    let rig = rig(layout);
    let chunk = CHUNK as usize;
    let row_a = 5;
    // Sequence numbers start at 1 and take slot `seq % SLOTS`. T10 and
    // T11 write row A; the others write other rows.
    let row_of = |seq: u64| match seq {
        10 | 11 => row_a,
        s => s % 4,
    };
    for seq in 1..=12 {
        rig.array
            .write_at(row_of(seq) * CHUNK, &pattern(seq, chunk))
            .unwrap();
    }
    // From here every member write sits in a volatile cache until a flush.
    // T13 needs slot 1 back: it destages T9..T12 and flushes, which makes
    // T11's bytes durable in place. T13..T15 then overwrite slots 1..3.
    for c in &rig.controls {
        c.enable_write_cache();
    }
    for seq in 13..=15 {
        rig.array
            .write_at(row_of(seq) * CHUNK, &pattern(seq, chunk))
            .unwrap();
    }
    // Power fails: of the unflushed writes only the payload sectors of
    // T15's entry in slot 3 survive (its header and T13, T14 are lost), so
    // slot 3 no longer holds T11 and slot 2 still holds T10 whole.
    let slot_bytes = Geometry::slot_bytes(CHUNK);
    let payload = {
        let start = super::format::JOURNAL_START + 3 * slot_bytes + super::format::BLOCK;
        start..start + CHUNK
    };
    let mut keep = |sectors: &[std::ops::Range<u64>]| -> Vec<bool> {
        sectors
            .iter()
            .map(|s| s.start >= payload.start && s.end <= payload.end)
            .collect()
    };
    let Rig {
        mems,
        controls,
        array,
    } = rig;
    drop(array);
    for (c, m) in controls.iter().zip(&mems) {
        c.crash(m.as_ref(), &mut keep).unwrap();
    }
    let (recovered, _) = remount(&mems);
    let mut row = vec![0u8; chunk];
    recovered.read_at(row_a * CHUNK, &mut row).unwrap();
    assert!(
        row == pattern(11, chunk),
        "row {row_a} went back to {}",
        if row == pattern(10, chunk) {
            "the older transaction T10"
        } else {
            "unknown bytes"
        }
    );
}
