//! A member that fails and comes back (a remote SSD whose connection drops
//! and returns): each return is a new incarnation of the member, a new
//! handle on the same device, rebuilt from row 0. These tests make the
//! races between an incarnation's rebuild or writes and the next
//! incarnation happen at a fixed point, through hooks in member media that
//! run the failure and the re-add from inside the array's own I/O.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::format::Geometry;
use super::*;
use crate::media::{Media, MediaError, MediaResult, MemMedia};

const CHUNK: u64 = 1024;
const ROWS: u64 = 8;
const SLOTS: u64 = 4;
const MIRROR: Layout = Layout::Mirror {
    members: 2,
    copies: 2,
};
/// The member that goes away and comes back.
const AWAY: usize = 1;

type Hook = Box<dyn FnOnce() + Send>;

/// One incarnation's handle on a member device: I/O goes to the device,
/// a hook can run (once) at the next flush or read, and the handle can be
/// cut off (the connection it belonged to is gone), while later handles
/// on the same device work.
struct Handle {
    device: Arc<MemMedia>,
    cut: AtomicBool,
    on_flush: Mutex<Option<Hook>>,
    on_read: Mutex<Option<Hook>>,
}

impl Handle {
    fn new(device: &Arc<MemMedia>) -> Arc<Self> {
        Arc::new(Handle {
            device: device.clone(),
            cut: AtomicBool::new(false),
            on_flush: Mutex::new(None),
            on_read: Mutex::new(None),
        })
    }

    fn at_next_flush(&self, hook: impl FnOnce() + Send + 'static) {
        *self.on_flush.lock().unwrap() = Some(Box::new(hook));
    }

    fn at_next_read(&self, hook: impl FnOnce() + Send + 'static) {
        *self.on_read.lock().unwrap() = Some(Box::new(hook));
    }

    fn reachable(&self) -> MediaResult<()> {
        if self.cut.load(Ordering::Acquire) {
            Err(MediaError::Gone)
        } else {
            Ok(())
        }
    }
}

impl Media for Handle {
    fn size(&self) -> u64 {
        self.device.size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> MediaResult<()> {
        let hook = self.on_read.lock().unwrap().take();
        if let Some(hook) = hook {
            hook();
        }
        self.reachable()?;
        self.device.read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> MediaResult<()> {
        self.reachable()?;
        self.device.write_at(offset, data)
    }

    fn flush(&self) -> MediaResult<()> {
        let hook = self.on_flush.lock().unwrap().take();
        if let Some(hook) = hook {
            hook();
        }
        self.reachable()?;
        self.device.flush()
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

struct Rig {
    array: Arc<ProtectedMedia>,
    /// Member 0's handle (it never goes away).
    stays: Arc<Handle>,
    /// The device of the member that goes away.
    away: Arc<MemMedia>,
}

fn rig() -> Rig {
    let bytes = (Geometry::data_offset_for(CHUNK, SLOTS) + ROWS * CHUNK) as usize;
    let stays = Handle::new(&Arc::new(MemMedia::new(bytes)));
    let away = Arc::new(MemMedia::new(bytes));
    let config = ProtectionConfig {
        journal_slots: SLOTS,
        assume_zeroed: true,
        ..ProtectionConfig::new(MIRROR, CHUNK)
    };
    let members: Vec<Arc<dyn Media>> = vec![stays.clone(), Handle::new(&away)];
    let array = Arc::new(ProtectedMedia::create(config, members).unwrap());
    Rig { array, stays, away }
}

fn read_all(array: &ProtectedMedia) -> Vec<u8> {
    let mut buf = vec![0u8; array.size() as usize];
    array.read_at(0, &mut buf).unwrap();
    buf
}

/// What the returning member alone holds: member 0 taken out, every byte
/// read from the other copy.
fn read_from_returned_member(rig: &Rig) -> Vec<u8> {
    rig.array.fail_member(0).unwrap();
    assert_eq!(rig.array.state(), ArrayState::Degraded);
    read_all(&rig.array)
}

/// The member goes away, misses `missed`, comes back as a new incarnation
/// and is rebuilt up to (not including) its last row.
fn away_and_back_rebuilt_but_the_last_row(rig: &Rig, missed: &[u8]) -> Arc<Handle> {
    rig.array.fail_member(AWAY).unwrap();
    rig.array.write_at(0, missed).unwrap();
    let back = Handle::new(&rig.away);
    rig.array.replace_member(AWAY, back.clone()).unwrap();
    let progress = rig.array.rebuild_step(ROWS - 1).unwrap();
    assert_eq!(progress.rows_done, ROWS - 1);
    back
}

/// The member fails again and is re-added (a new incarnation) after the
/// last row of its rebuild was copied, while that rebuild step flushes:
/// the step must not mark the new incarnation, which has copied nothing,
/// in sync.
#[test]
fn a_member_re_added_during_the_last_rebuild_step_is_rebuilt_again() {
    let rig = rig();
    let size = rig.array.size() as usize;
    rig.array.write_at(0, &pattern(1, size)).unwrap();
    let first_return = away_and_back_rebuilt_but_the_last_row(&rig, &pattern(2, size));

    // The second outage and return, at the step's flush of the member.
    let newest = pattern(3, size);
    let (array, away) = (Arc::downgrade(&rig.array), rig.away.clone());
    let missed_again = newest.clone();
    let cut = first_return.clone();
    first_return.at_next_flush(move || {
        let array = array.upgrade().unwrap();
        cut.cut.store(true, Ordering::Release);
        array.fail_member(AWAY).unwrap();
        array.write_at(0, &missed_again).unwrap();
        cut.cut.store(false, Ordering::Release);
        array.replace_member(AWAY, Handle::new(&away)).unwrap();
    });
    // The step ends either way; the new incarnation is what counts.
    let _ = rig.array.rebuild_step(ROWS);
    let status = rig.array.status();
    assert_eq!(
        status.members[AWAY].state,
        MemberState::Rebuilding,
        "the second incarnation was marked in sync without a rebuild"
    );
    assert_eq!(status.members[AWAY].rebuilt_rows, 0);
    assert_eq!(status.state, ArrayState::Rebuilding);

    rig.array.rebuild_all(3).unwrap();
    assert_eq!(rig.array.state(), ArrayState::Optimal);
    assert!(read_from_returned_member(&rig) == newest);
}

/// The member fails for good while the last rebuild step flushes: it
/// stays failed (so it can be re-added), the array says degraded.
#[test]
fn a_member_that_fails_during_the_last_rebuild_step_stays_failed() {
    let rig = rig();
    let size = rig.array.size() as usize;
    rig.array.write_at(0, &pattern(1, size)).unwrap();
    let first_return = away_and_back_rebuilt_but_the_last_row(&rig, &pattern(2, size));

    // The step's own flush of the member goes through; the connection
    // drops right after, so the flush in the step's destage fails it.
    let cut = first_return.clone();
    first_return.at_next_flush(move || {
        let again = cut.clone();
        cut.at_next_flush(move || again.cut.store(true, Ordering::Release));
    });
    let _ = rig.array.rebuild_step(ROWS);
    let status = rig.array.status();
    assert_eq!(
        status.members[AWAY].state,
        MemberState::Failed,
        "a member lost during its last rebuild step was marked in sync"
    );
    assert_eq!(status.state, ArrayState::Degraded);

    // It comes back once more and ends in sync.
    let newest = pattern(4, size);
    rig.array.write_at(0, &newest).unwrap();
    rig.array
        .replace_member(AWAY, Handle::new(&rig.away))
        .unwrap();
    rig.array.rebuild_all(3).unwrap();
    assert_eq!(rig.array.state(), ArrayState::Optimal);
    assert!(read_from_returned_member(&rig) == newest);
}

/// A write took its view of a row while the member served it; before its
/// transaction began, the member failed and came back (a new incarnation,
/// not rebuilt yet). The write's bytes must not reach the new incarnation:
/// a later write of the row, which rightly leaves the not yet rebuilt
/// member out, and the rebuild's copy of the row would otherwise be
/// overwritten by the older bytes when they are destaged.
#[test]
fn a_write_that_began_before_a_re_add_does_not_reach_the_new_incarnation() {
    let rig = rig();
    let size = rig.array.size() as usize;
    let mut model = pattern(1, size);
    rig.array.write_at(0, &model).unwrap();
    rig.array.flush().unwrap();

    // A partial-sector write reads the row's old bytes first (member 0's
    // copy): the member fails and comes back right then.
    let (array, away) = (Arc::downgrade(&rig.array), rig.away.clone());
    rig.stays.at_next_read(move || {
        let array = array.upgrade().unwrap();
        array.fail_member(AWAY).unwrap();
        array.replace_member(AWAY, Handle::new(&away)).unwrap();
    });
    let row = 3;
    let at = (row * CHUNK + 100) as usize;
    let older = pattern(5, 200);
    rig.array.write_at(at as u64, &older).unwrap();
    model[at..at + older.len()].copy_from_slice(&older);
    assert_eq!(rig.array.status().members[AWAY].rebuilt_rows, 0);

    // The same bytes again, newer; the member does not serve the row yet.
    let newer = pattern(6, 200);
    rig.array.write_at(at as u64, &newer).unwrap();
    model[at..at + newer.len()].copy_from_slice(&newer);

    rig.array.rebuild_all(ROWS).unwrap();
    rig.array.flush().unwrap();
    assert_eq!(rig.array.state(), ArrayState::Optimal);
    assert!(read_all(&rig.array) == model);
    let alone = read_from_returned_member(&rig);
    assert!(
        alone[at..at + newer.len()] == newer[..],
        "the returned member holds the older write's bytes"
    );
    assert!(alone == model);
}
