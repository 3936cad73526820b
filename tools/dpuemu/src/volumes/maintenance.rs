//! The Maintenance vendor command and the Maintenance log: scrub and member
//! replacement on the protected array of a volume's family, both run in
//! the background.
//!
//! Both act on the family, not on the one volume named by the NSID: the
//! volume's snapshots and clones live in the same pool on the same array.
//! The command only starts the work and completes at once with an
//! operation ID; the host polls the Maintenance log page for progress and
//! result, as NVMe hosts poll the Sanitize Status log. So no admin command
//! waits for a scrub, and a controller reset (which the scrub survives:
//! it belongs to the family, not to a queue) never does either.
//!
//! A scrub runs in a thread of its own, [`SCRUB_ROWS`] rows per step. It
//! never holds the manager's lock (management commands go on), and holds
//! the family's `alive` gate for one step at a time, as the rebuild does,
//! so deleting the family, cancelling it or replacing a member waits at
//! most for one step and the scrub then stops.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dpu_engine::media::Media;
use dpu_engine::protection::{ArrayState, MemberState, ProtectedMedia, ScrubReport};
use log::{info, warn};
use nvme_shim::status::Status;
use nvme_shim::vendor::{
    maintenance, maintenance_state, status as vs, MaintenanceLog, MaintenanceRecord,
};
use nvme_shim::wire::Wire;

use super::label::LABEL_AREA;
use super::media::SliceMedia;
use super::{spawn_rebuild, status, ScrubCounts, VolumeManager};

/// Rows one scrub step checks: each row is checked under its own lock, so
/// I/O goes on between rows; the family's gate is held per step.
const SCRUB_ROWS: u64 = 16;
/// The longest sleep of a rate-limited scrub between checks for a cancel.
const SCRUB_PAUSE_SLICE: Duration = Duration::from_millis(50);

/// The most member bytes per second a scrub reads (`--scrub-rate`), 0 for
/// no limit. Process-wide, as md's `speed_limit_max` is system-wide: it
/// keeps scrubs from taking the media away from foreground I/O.
pub static SCRUB_BYTES_PER_SEC: AtomicU64 = AtomicU64::new(0);

/// The longest pause between two steps of a rate-limited scrub.
const SCRUB_PAUSE_MAX: Duration = Duration::from_secs(60);

/// How long to sleep after `bytes` scrubbed in `elapsed` to stay within
/// `rate` bytes per second (zero when within it or unlimited; at most
/// [`SCRUB_PAUSE_MAX`]).
fn scrub_pause(bytes: u64, rate: u64, elapsed: Duration) -> Duration {
    if rate == 0 {
        return Duration::ZERO;
    }
    let due_ns = u128::from(bytes) * 1_000_000_000 / u128::from(rate);
    let due = Duration::from_nanos(u64::try_from(due_ns).unwrap_or(u64::MAX));
    due.saturating_sub(elapsed).min(SCRUB_PAUSE_MAX)
}

/// Operation IDs (DW0 of a Maintenance command that starts one); unique
/// while dpuemu runs, never 0.
static NEXT_OPERATION: AtomicU32 = AtomicU32::new(1);

fn next_operation_id() -> u32 {
    loop {
        let id = NEXT_OPERATION.fetch_add(1, Ordering::Relaxed);
        if id != 0 {
            return id;
        }
    }
}

/// Where a family's scrub stands.
#[derive(Clone, Copy, Debug, Default)]
struct ScrubProgress {
    id: u32,
    repair: bool,
    /// `maintenance_state::*`.
    state: u8,
    rows_done: u64,
    rows_total: u64,
    report: ScrubReport,
    /// The status field of the error, if the scrub failed.
    error: u16,
}

#[derive(Debug, Default)]
struct MaintenanceState {
    scrub: ScrubProgress,
    /// What the last scrub that ran to its end found (Statistics).
    last_finished: ScrubCounts,
    /// The operation ID of the last member replacement.
    replace_id: u32,
}

/// The background maintenance of one family: its scrub and its last
/// member replacement. Shared with the scrub thread, which outlives the
/// family if it is deleted under it.
#[derive(Debug, Default)]
pub(super) struct FamilyMaintenance {
    state: Mutex<MaintenanceState>,
    /// Asks the running scrub to stop before its next step.
    cancel: AtomicBool,
}

impl FamilyMaintenance {
    fn lock(&self) -> std::sync::MutexGuard<'_, MaintenanceState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the last scrub that ran to its end found.
    pub(super) fn last_scrub(&self) -> ScrubCounts {
        self.lock().last_finished
    }

    fn scrub_running(&self) -> bool {
        self.lock().scrub.state == maintenance_state::RUNNING
    }

    /// Asks a running scrub to stop before its next step. Returns whether
    /// one was running.
    fn request_stop(&self) -> bool {
        if !self.scrub_running() {
            return false;
        }
        self.cancel.store(true, Ordering::Release);
        true
    }

    /// [`Self::request_stop`], then waits (on the family's gate `alive`)
    /// until the step the scrub is in is over: it starts no other. The
    /// caller must not hold `alive`.
    fn stop_scrub(&self, alive: &Mutex<bool>) -> bool {
        if !self.request_stop() {
            return false;
        }
        drop(alive.lock().unwrap_or_else(|p| p.into_inner()));
        true
    }

    /// The scrub's record of the Maintenance log.
    fn scrub_record(&self) -> MaintenanceRecord {
        let s = self.lock().scrub;
        let mut r = MaintenanceRecord::zeroed();
        r.id.set(s.id);
        r.action = if s.id == 0 {
            0
        } else if s.repair {
            maintenance::SCRUB_REPAIR as u8
        } else {
            maintenance::SCRUB_CHECK as u8
        };
        r.state = s.state;
        r.percent = percent(s.rows_done, s.rows_total);
        r.rows_done.set(s.rows_done);
        r.rows_total.set(s.rows_total);
        r.mismatches.set(s.report.mismatches);
        r.repaired.set(s.report.repaired);
        r.unlocated.set(s.report.unlocated);
        r.read_errors.set(s.report.read_errors);
        r.unreadable_rows
            .set(u32::try_from(s.report.unreadable_rows).unwrap_or(u32::MAX));
        r.status.set(s.error);
        r
    }

    /// The rebuild's record: running while a member rebuilds.
    fn rebuild_record(&self, array: &ProtectedMedia) -> MaintenanceRecord {
        let replace_id = self.lock().replace_id;
        let status = array.status();
        let mut r = MaintenanceRecord::zeroed();
        r.id.set(replace_id);
        r.action = if replace_id == 0 {
            0
        } else {
            maintenance::REPLACE_MEMBER as u8
        };
        r.member = 0xff;
        r.rows_total.set(status.rows);
        if let Some(progress) = status.rebuild {
            r.state = maintenance_state::RUNNING;
            r.member = progress
                .member
                .and_then(|m| u8::try_from(m).ok())
                .unwrap_or(0xff);
            let done = progress.rows_done.min(status.rows);
            r.rows_done.set(done);
            r.percent = percent(done, status.rows);
        } else if replace_id != 0 {
            r.state = if status.state == ArrayState::Failed {
                maintenance_state::FAILED
            } else {
                maintenance_state::DONE
            };
            r.rows_done.set(status.rows);
            r.percent = 100;
        }
        r
    }
}

/// `done` of `total` in percent, 0 to 100.
fn percent(done: u64, total: u64) -> u8 {
    if total == 0 {
        return 0;
    }
    (u128::from(done.min(total)) * 100 / u128::from(total)) as u8
}

/// The scrub thread: steps through the rows until done, cancelled, the
/// family deleted (`alive` false) or a media error.
fn run_scrub(
    array: Arc<ProtectedMedia>,
    alive: Arc<Mutex<bool>>,
    tracker: Arc<FamilyMaintenance>,
    nsid: u32,
) {
    let (repair, rows) = {
        let s = tracker.lock().scrub;
        (s.repair, s.rows_total)
    };
    let geometry = array.status();
    let row_bytes = geometry.chunk.saturating_mul(geometry.members.len() as u64);
    let started = Instant::now();
    let mut first = 0;
    let end_state = loop {
        let guard = alive.lock().unwrap_or_else(|p| p.into_inner());
        if !*guard || tracker.cancel.load(Ordering::Acquire) {
            break maintenance_state::CANCELLED;
        }
        if first >= rows {
            break maintenance_state::DONE;
        }
        let count = SCRUB_ROWS.min(rows - first);
        let step = array.scrub_rows(first, count, repair);
        drop(guard);
        let mut state = tracker.lock();
        match step {
            Ok(report) => {
                state.scrub.report.add(&report);
                first += count;
                state.scrub.rows_done = first;
            }
            Err(e) => {
                warn!("accel: scrub of namespace {nsid} failed at row {first}: {e}");
                state.scrub.error = Status::WRITE_FAULT.0;
                state.scrub.state = maintenance_state::FAILED;
                return;
            }
        }
        drop(state);
        let rate = SCRUB_BYTES_PER_SEC.load(Ordering::Relaxed);
        let pause = scrub_pause(first.saturating_mul(row_bytes), rate, started.elapsed());
        // In slices, so a cancel or a deleted family is seen soon.
        let until = Instant::now() + pause;
        while Instant::now() < until && !tracker.cancel.load(Ordering::Acquire) {
            std::thread::sleep(
                until
                    .saturating_duration_since(Instant::now())
                    .min(SCRUB_PAUSE_SLICE),
            );
        }
        std::thread::yield_now();
    };
    let mut state = tracker.lock();
    state.scrub.state = end_state;
    let s = state.scrub;
    if end_state == maintenance_state::DONE {
        state.last_finished = ScrubCounts {
            mismatches: s.report.mismatches,
            repaired: s.report.repaired,
        };
    }
    drop(state);
    info!(
        "accel: scrub #{} ({}) of namespace {nsid} {}: {} of {} rows, {} mismatching sectors, \
         {} repaired, {} unlocated, {} read errors, {} unreadable rows",
        s.id,
        if repair { "repair" } else { "check" },
        if end_state == maintenance_state::DONE {
            "done"
        } else {
            "cancelled"
        },
        s.rows_done,
        s.rows_total,
        s.report.mismatches,
        s.report.repaired,
        s.report.unlocated,
        s.report.read_errors,
        s.report.unreadable_rows
    );
}

impl VolumeManager {
    /// Maintenance: `action` is CDW10 (`maintenance::*`), `argument`
    /// CDW11. Returns DW0: the ID of the operation started (0 for a cancel).
    pub fn maintenance(&self, nsid: u32, action: u32, argument: u32) -> Result<u32, Status> {
        match action {
            maintenance::SCRUB_CHECK | maintenance::SCRUB_REPAIR | maintenance::SCRUB_CANCEL => {
                // A scrub takes no argument; CDW11 is reserved.
                if argument != 0 {
                    return Err(Status::INVALID_FIELD);
                }
                if action == maintenance::SCRUB_CANCEL {
                    return self.cancel_scrub(nsid);
                }
                self.start_scrub(nsid, action == maintenance::SCRUB_REPAIR)
            }
            maintenance::REPLACE_MEMBER => {
                let (old, new) = (argument as u16, (argument >> 16) as u16);
                self.replace_member(nsid, old, new)
            }
            _ => Err(Status::INVALID_FIELD),
        }
    }

    /// The Maintenance log of open volume `nsid`'s family. A family without
    /// redundancy has nothing to scrub or rebuild: both records are empty.
    pub fn maintenance_log(&self, nsid: u32) -> Result<MaintenanceLog, Status> {
        let state = self.lock();
        let (fi, _) = state.open_volume(nsid)?;
        let family = &state.families[fi];
        let mut log = MaintenanceLog::zeroed();
        log.rebuild.member = 0xff;
        if let Some(array) = family.array.as_ref().filter(|a| a.layout().is_redundant()) {
            log.scrub = family.maintenance.scrub_record();
            log.rebuild = family.maintenance.rebuild_record(array);
        }
        Ok(log)
    }

    /// The redundant array under open volume `nsid`: its family's index
    /// and the array. Layouts without redundancy have nothing to check or
    /// rebuild from (*Invalid Layout*).
    fn redundant_array(
        state: &super::State,
        nsid: u32,
    ) -> Result<(usize, Arc<ProtectedMedia>), Status> {
        let (fi, _) = state.open_volume(nsid)?;
        let array = state.families[fi]
            .array
            .clone()
            .filter(|a| a.layout().is_redundant())
            .ok_or(status(vs::INVALID_LAYOUT))?;
        Ok((fi, array))
    }

    /// SCRUB_CHECK and SCRUB_REPAIR: starts checking every row of the
    /// array in the background; returns the scrub's operation ID. *Volume
    /// Busy* while a scrub or a rebuild of the family runs.
    fn start_scrub(&self, nsid: u32, repair: bool) -> Result<u32, Status> {
        let state = self.lock();
        let (fi, array) = Self::redundant_array(&state, nsid)?;
        let family = &state.families[fi];
        // A rebuild reads every row too and writes the rebuilt member;
        // like md, the array is checked once it is in sync again.
        if array.state() == ArrayState::Rebuilding {
            return Err(status(vs::VOLUME_BUSY));
        }
        let tracker = family.maintenance.clone();
        let id = {
            let mut m = tracker.lock();
            if m.scrub.state == maintenance_state::RUNNING {
                return Err(status(vs::VOLUME_BUSY));
            }
            let id = next_operation_id();
            m.scrub = ScrubProgress {
                id,
                repair,
                state: maintenance_state::RUNNING,
                rows_total: array.status().rows,
                ..ScrubProgress::default()
            };
            id
        };
        tracker.cancel.store(false, Ordering::Release);
        let alive = family.alive.clone();
        let thread_tracker = tracker.clone();
        let started = std::thread::Builder::new()
            .name(format!("accel-scrub-{id}"))
            .spawn(move || run_scrub(array, alive, thread_tracker, nsid));
        if let Err(e) = started {
            warn!("accel: cannot start a scrub: {e}");
            let mut m = tracker.lock();
            m.scrub.state = maintenance_state::FAILED;
            m.scrub.error = Status::INTERNAL_ERROR.0;
            return Err(Status::INTERNAL_ERROR);
        }
        info!(
            "accel: scrub #{id} ({}) of namespace {nsid} started",
            if repair { "repair" } else { "check" }
        );
        Ok(id)
    }

    /// SCRUB_CANCEL: the family's running scrub (if any) stops before its
    /// next step; the log shows it cancelled once it did.
    fn cancel_scrub(&self, nsid: u32) -> Result<u32, Status> {
        let state = self.lock();
        let (fi, _) = Self::redundant_array(&state, nsid)?;
        if state.families[fi].maintenance.request_stop() {
            info!("accel: scrub of namespace {nsid}: cancel requested");
        }
        Ok(0)
    }

    /// REPLACE_MEMBER: SSD `new` takes the place of member SSD `old` and is
    /// rebuilt in the background. A running scrub of the family is
    /// cancelled first (a rebuild has priority, as in md). Returns the
    /// replacement's operation ID.
    fn replace_member(&self, nsid: u32, old: u16, new: u16) -> Result<u32, Status> {
        let mut state = self.lock();
        let (fi, array) = Self::redundant_array(&state, nsid)?;
        let old_pos = self.ssd_position(old).ok_or(status(vs::SSD_NOT_FOUND))?;
        let new_pos = self.ssd_position(new).ok_or(status(vs::SSD_NOT_FOUND))?;
        if old_pos == new_pos {
            return Err(Status::INVALID_FIELD);
        }
        let family = &mut state.families[fi];
        let member = family
            .members
            .iter()
            .position(|m| *m == Some(old_pos))
            .ok_or(Status::INVALID_FIELD)?;
        let view = self.ssds[new_pos].ownership.view();
        if !view.attached {
            return Err(status(vs::SSD_NOT_ATTACHED));
        }
        if view.in_use {
            return Err(status(vs::SSD_IN_USE));
        }
        // The rebuild reads every row from the other members: they must
        // hold all the data without this one (a rebuilding member does not
        // count, its rows are not all in sync yet).
        let members = array.status().members;
        let mut lost: Vec<bool> = members
            .iter()
            .map(|m| m.state != MemberState::Online)
            .collect();
        lost[member] = true;
        if !array.layout().can_decode(&lost) {
            return Err(status(vs::VOLUME_BUSY));
        }
        // At least as large as the SSD it replaces, so it holds every row.
        let slice = SliceMedia::tail(self.ssds[new_pos].media.clone(), LABEL_AREA)
            .filter(|s| s.size() + LABEL_AREA >= self.ssds[old_pos].media.size())
            .ok_or(status(vs::NO_SPACE))?;
        // No scrub step may be between reading a row's members and
        // repairing one while the member changes under it.
        if family.maintenance.stop_scrub(&family.alive) {
            info!("accel: scrub of namespace {nsid} cancelled for a member replacement");
        }
        let replacement = &self.ssds[new_pos];
        replacement.ownership.claim().map_err(status)?;
        // Labels and data of an earlier family must not survive on it.
        if let Err(e) = replacement.wipe() {
            warn!("accel: wiping SSD {new}: {e}");
            replacement.ownership.release();
            return Err(Status::WRITE_FAULT);
        }
        if matches!(
            members[member].state,
            MemberState::Online | MemberState::Rebuilding
        ) {
            // A healthy member leaves the array first: the engine rebuilds
            // only into a member slot that is out of service.
            if let Err(e) = array.fail_member(member) {
                warn!("accel: taking SSD {old} out of its array: {e}");
                replacement.ownership.release();
                return Err(Status::WRITE_FAULT);
            }
        }
        if let Err(e) = array.replace_member(member, Arc::new(slice)) {
            warn!("accel: SSD {new} cannot replace SSD {old}: {e}");
            replacement.ownership.release();
            return Err(Status::WRITE_FAULT);
        }
        family.members[member] = Some(new_pos);
        // The labels name the new member now, so a restart assembles the
        // array with it (and resumes the rebuild).
        let labelled = self.write_labels(family);
        // The old SSD's label goes, so it is never taken for a member
        // again; its data area is left alone, as reads that started
        // before the replacement may still be reading it.
        let gone = &self.ssds[old_pos];
        if let Err(e) = gone.raw.discard(0, LABEL_AREA) {
            warn!("accel: erasing the label of SSD {old}: {e}");
        }
        gone.ownership.release();
        let id = next_operation_id();
        family.maintenance.lock().replace_id = id;
        spawn_rebuild(array, family.alive.clone());
        info!(
            "accel: SSD {new} replaces SSD {old} (member {member}) of namespace {nsid}, \
             rebuilding (#{id})"
        );
        labelled.map(|()| id)
    }
}

#[cfg(test)]
impl VolumeManager {
    /// The gates of the families' background rebuilds and scrubs, for
    /// tests: while a test holds one, that family's rebuild and scrub make
    /// no progress.
    pub(crate) fn rebuild_gates(&self) -> Vec<Arc<std::sync::Mutex<bool>>> {
        self.lock()
            .families
            .iter()
            .map(|f| f.alive.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::{percent, scrub_pause};
    use std::time::Duration;

    #[test]
    fn scrub_pause_keeps_to_the_rate() {
        let ms = Duration::from_millis;
        // Unlimited: never a pause.
        assert_eq!(scrub_pause(1 << 40, 0, ms(0)), Duration::ZERO);
        // 64 MiB at 32 MiB/s are due after 2 s: 1.5 s left after 500 ms.
        assert_eq!(scrub_pause(64 << 20, 32 << 20, ms(500)), ms(1500));
        // Behind the rate already: no pause.
        assert_eq!(scrub_pause(64 << 20, 32 << 20, ms(3000)), Duration::ZERO);
        // No overflow at the extremes, and never more than a minute.
        assert_eq!(scrub_pause(u64::MAX, 1, ms(0)), Duration::from_secs(60));
    }

    #[test]
    fn percent_is_bounded() {
        assert_eq!(percent(0, 0), 0);
        assert_eq!(percent(1, 3), 33);
        assert_eq!(percent(3, 3), 100);
        assert_eq!(percent(9, 3), 100);
        assert_eq!(percent(u64::MAX, u64::MAX), 100);
        assert_eq!(percent(u64::MAX / 2, u64::MAX), 49);
    }
}
