//! The Maintenance command end to end: scrub (check and repair) of
//! injected silent corruption and member replacement with a background
//! rebuild, with data read back through I/O commands.

use std::time::{Duration, Instant};

use nvme_shim::vendor::{maintenance, maintenance_state, MaintenanceLog, MaintenanceRecord};

use super::*;

const MAINT_SSD_BYTES: u64 = 8 << 20;
/// How much of the victim decays in the [`Damage::Rot`] tests.
const ROT_TEST_BYTES: u64 = 2 << 20;
/// Blocks per write command (the PRP list of `block_io` holds 512).
const CHUNK_BLOCKS: usize = 128;

impl Accel {
    fn maintenance(&mut self, nsid: u32, action: u32, argument: u32) -> Result<u32, Status> {
        Self::result(
            self.host
                .admin(vendor::maintenance_command(nsid, action, argument, 0)),
        )
    }

    /// The Maintenance log of volume `nsid`'s family.
    fn maintenance_log(&mut self, nsid: u32) -> Result<MaintenanceLog, Status> {
        let bytes = self.fetch(
            vendor::maintenance_log_command(nsid, 0),
            vendor::MAINTENANCE_LOG_BYTES,
        )?;
        Ok(MaintenanceLog::read_from(&bytes).unwrap())
    }

    /// Polls the log until the scrub `id` is no longer running.
    fn wait_scrub(&mut self, nsid: u32, id: u32) -> MaintenanceRecord {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let record = self.maintenance_log(nsid).unwrap().scrub;
            assert_eq!(record.id.get(), id, "the log names another scrub");
            assert!(record.rows_done.get() <= record.rows_total.get());
            assert!(record.percent <= 100);
            if record.state != maintenance_state::RUNNING {
                return record;
            }
            assert!(Instant::now() < deadline, "the scrub never finished");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Runs a scrub (`action`) to its end and returns the mismatches it
    /// found, checking that its record is complete and consistent.
    fn scrub(&mut self, nsid: u32, action: u32) -> Result<u32, Status> {
        let id = self.maintenance(nsid, action, 0)?;
        assert_ne!(id, 0, "a scrub's operation ID");
        let r = self.wait_scrub(nsid, id);
        assert_eq!(r.state, maintenance_state::DONE);
        assert_eq!(u32::from(r.action), action);
        assert_eq!(r.rows_done.get(), r.rows_total.get());
        assert!(r.rows_total.get() > 0);
        assert_eq!(r.percent, 100);
        let (found, repaired) = (r.mismatches.get(), r.repaired.get());
        if action == maintenance::SCRUB_CHECK {
            assert_eq!(repaired, 0, "a check repaired something");
        } else {
            assert!(repaired <= found);
        }
        Ok(u32::try_from(found).unwrap())
    }

    fn replace(&mut self, nsid: u32, old: u16, new: u16) -> Result<u32, Status> {
        let argument = u32::from(old) | u32::from(new) << 16;
        self.maintenance(nsid, maintenance::REPLACE_MEMBER, argument)
    }

    fn manager(&self) -> Arc<VolumeManager> {
        match &self.host.ctrl.personality {
            Personality::Accelerator { volumes, .. } => volumes.clone(),
            Personality::Ssd { .. } => unreachable!("the test host is an accelerator"),
        }
    }

    /// Writes `blocks` blocks of pattern `seed` from `lba`, in commands of
    /// [`CHUNK_BLOCKS`]; returns what was written.
    fn fill(&mut self, nsid: u32, lba: u64, blocks: usize, seed: u8) -> Vec<u8> {
        let data = blocks_pattern(blocks, seed);
        for (i, chunk) in data.chunks(CHUNK_BLOCKS * BLOCK).enumerate() {
            let at = lba + (i * CHUNK_BLOCKS) as u64;
            assert_eq!(
                self.write(nsid, at, chunk),
                Status::SUCCESS,
                "write at {at}"
            );
        }
        data
    }

    /// Reads `blocks` blocks from `lba` in commands of [`CHUNK_BLOCKS`].
    fn read_all(&mut self, nsid: u32, lba: u64, blocks: usize) -> Result<Vec<u8>, Status> {
        let mut out = Vec::with_capacity(blocks * BLOCK);
        let mut done = 0;
        while done < blocks {
            let n = CHUNK_BLOCKS.min(blocks - done);
            out.extend(self.read(nsid, lba + done as u64, n)?);
            done += n;
        }
        Ok(out)
    }

    fn wait_optimal(&mut self, nsid: u32) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.statistics(nsid).array_state != vendor::ARRAY_STATE_OPTIMAL {
            assert!(Instant::now() < deadline, "rebuild did not finish");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A protected volume of 4 MiB over `mask` with a 16 KiB chunk.
fn protected(name: &str, lay: u8, k: u8, m: u8, mask: u64) -> VolumeCreate {
    let mut req = request(name, lay, mask, 4 << 20);
    req.data_shards = k;
    req.parity_shards = m;
    req.stripe_bytes.set(16 << 10);
    req
}

#[test]
fn maintenance_validation() {
    let images = Images::new("maint-validate", 7, MAINT_SSD_BYTES);
    let mut a = Accel::start(&images);
    a.attach(&[0, 1, 2, 3, 4, 5]);
    // SSD 6 stays with the host.
    let r6 = a
        .create(&protected("r6", layout::RAID6, 0, 0, 0b1111))
        .unwrap();
    let stripe = a
        .create(&protected("stripe", layout::RAID0, 0, 0, 0b10000))
        .unwrap_err();
    assert_eq!(
        stripe,
        vendor_status(vs::INVALID_LAYOUT),
        "RAID0 on one SSD"
    );
    let stripe = a
        .create(&protected("stripe", layout::RAID0, 0, 0, 0b110000))
        .unwrap();
    let invalid_field = Status::INVALID_FIELD;
    let not_found = vendor_status(vs::VOLUME_NOT_FOUND);
    let check = maintenance::SCRUB_CHECK;
    let repair = maintenance::SCRUB_REPAIR;
    let cancel = maintenance::SCRUB_CANCEL;
    let cases: [(&str, u32, u32, u32, Status); 12] = [
        ("action 0", r6, 0, 0, invalid_field),
        ("action 5", r6, 5, 0, invalid_field),
        ("cancel with an argument", r6, cancel, 1, invalid_field),
        ("cancel on no volume", 77, cancel, 0, not_found),
        (
            "cancel on a stripe",
            stripe,
            cancel,
            0,
            vendor_status(vs::INVALID_LAYOUT),
        ),
        ("action ~0", r6, u32::MAX, 0, invalid_field),
        ("scrub with an argument", r6, check, 1, invalid_field),
        (
            "repair with an argument",
            r6,
            repair,
            1 << 16,
            invalid_field,
        ),
        ("no volume", 77, check, 0, not_found),
        ("NSID 0", 0, repair, 0, not_found),
        ("the plain namespace", 1, check, 0, not_found),
        (
            "a stripe has no redundancy",
            stripe,
            check,
            0,
            vendor_status(vs::INVALID_LAYOUT),
        ),
    ];
    for (what, nsid, action, argument, want) in cases {
        assert_eq!(a.maintenance(nsid, action, argument), Err(want), "{what}");
    }
    // Nothing started: the log is empty; a cancel with no scrub is fine.
    let log = a.maintenance_log(r6).unwrap();
    assert_eq!(log.scrub, MaintenanceRecord::zeroed());
    assert_eq!((log.rebuild.state, log.rebuild.id.get()), (0, 0));
    assert_eq!(a.maintenance(r6, cancel, 0), Ok(0));
    // A stripe has nothing to report; a missing volume is not found.
    let log = a.maintenance_log(stripe).unwrap();
    assert_eq!(log.scrub, MaintenanceRecord::zeroed());
    assert_eq!(a.maintenance_log(77), Err(not_found));
    let replace: [(&str, u32, u16, u16, Status); 8] = [
        ("no volume", 77, 0, 4, not_found),
        (
            "on a stripe",
            stripe,
            4,
            0,
            vendor_status(vs::INVALID_LAYOUT),
        ),
        (
            "no such old SSD",
            r6,
            40,
            4,
            vendor_status(vs::SSD_NOT_FOUND),
        ),
        (
            "no such new SSD",
            r6,
            0,
            40,
            vendor_status(vs::SSD_NOT_FOUND),
        ),
        ("old is not a member", r6, 4, 5, invalid_field),
        ("itself", r6, 2, 2, invalid_field),
        (
            "new is not attached",
            r6,
            0,
            6,
            vendor_status(vs::SSD_NOT_ATTACHED),
        ),
        (
            "new holds the stripe",
            r6,
            0,
            5,
            vendor_status(vs::SSD_IN_USE),
        ),
    ];
    for (what, nsid, old, new, want) in replace {
        assert_eq!(a.replace(nsid, old, new), Err(want), "{what}");
    }
    assert_eq!(
        a.replace(r6, 1, 3),
        Err(vendor_status(vs::SSD_IN_USE)),
        "new is a member"
    );
    // Two members lost: replacing a healthy third would leave nothing to
    // rebuild from.
    let data = a.fill(r6, 0, 64, 3);
    assert_eq!(a.fault(fault::FAIL_ALL, 0, 0, 0), Ok(0));
    assert_eq!(a.fault(fault::FAIL_ALL, 1, 0, 0), Ok(0));
    a.fill(r6, 64, 8, 4);
    assert_eq!(a.statistics(r6).array_state, vendor::ARRAY_STATE_DEGRADED);
    assert_eq!(a.delete(stripe), Ok(0));
    assert_eq!(a.replace(r6, 2, 4), Err(vendor_status(vs::VOLUME_BUSY)));
    // A refused command changed nothing.
    assert!(!a.ssd_in_use(4));
    assert!((0..4).all(|s| a.ssd_in_use(s)));
    assert_eq!(a.read_all(r6, 0, 64).unwrap(), data);
    // A scrub of a degraded array checks what redundancy is left.
    assert_eq!(a.scrub(r6, check), Ok(0));
    assert_eq!(a.read_all(r6, 0, 64).unwrap(), data);
}

#[test]
fn a_smaller_ssd_cannot_replace_a_member() {
    let images = Images::new("maint-small", 5, MAINT_SSD_BYTES);
    // SSD 4 is half the size of the members.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&images.paths[4])
        .unwrap()
        .set_len(MAINT_SSD_BYTES / 2)
        .unwrap();
    let mut a = Accel::start(&images);
    a.attach(&[0, 1, 2, 3, 4]);
    let nsid = a
        .create(&protected("r6", layout::RAID6, 0, 0, 0b1111))
        .unwrap();
    assert_eq!(a.replace(nsid, 1, 4), Err(vendor_status(vs::NO_SPACE)));
    assert!(!a.ssd_in_use(4));
    assert_eq!(a.statistics(nsid).array_state, vendor::ARRAY_STATE_OPTIMAL);
}

/// Replaces member SSD `old` of a volume over `mask` with `spare` while
/// the rebuild is held back, writes and reads during the rebuild, lets it
/// finish, and checks every byte with `lose` other SSDs failed.
fn replace_and_rebuild(
    tag: &str,
    name: &str,
    req: &VolumeCreate,
    old: u16,
    spare: u16,
    lose: &[u16],
) {
    let images = Images::new(tag, 7, MAINT_SSD_BYTES);
    let nsid;
    let mut want;
    {
        let mut a = Accel::start(&images);
        a.attach(&[0, 1, 2, 3, 4, 5, 6]);
        nsid = a.create(req).unwrap();
        want = a.fill(nsid, 0, 512, 51);
        assert_eq!(a.flush(nsid), Status::SUCCESS);
        let gates = a.manager().rebuild_gates();
        assert_eq!(gates.len(), 1);
        let held = gates[0].lock().unwrap();
        let id = a.replace(nsid, old, spare).unwrap();
        assert_ne!(id, 0, "the replacement's operation ID");
        // The log shows the rebuild: running, nothing done yet.
        let rebuild = a.maintenance_log(nsid).unwrap().rebuild;
        assert_eq!(
            (rebuild.id.get(), rebuild.state),
            (id, maintenance_state::RUNNING)
        );
        assert_eq!((rebuild.rows_done.get(), rebuild.percent), (0, 0));
        assert_eq!(u32::from(rebuild.action), maintenance::REPLACE_MEMBER);
        // No scrub while the array is out of sync.
        assert_eq!(
            a.maintenance(nsid, maintenance::SCRUB_CHECK, 0),
            Err(vendor_status(vs::VOLUME_BUSY))
        );
        // The rebuild waits for the gate: the array is rebuilding, I/O
        // goes on, reads of rows the new member does not hold yet are
        // served from the others.
        let stats = a.statistics(nsid);
        assert_eq!(stats.array_state, vendor::ARRAY_STATE_REBUILDING);
        assert_eq!(stats.rebuild_percent, 0);
        assert_eq!(a.volume(name).flags.get(), vendor::VOLUME_FLAG_REBUILDING);
        assert!(a.ssd_in_use(spare.into()));
        assert!(!a.ssd_in_use(old.into()), "the replaced SSD is released");
        let more = a.fill(nsid, 100, 200, 52);
        want[100 * BLOCK..300 * BLOCK].copy_from_slice(&more);
        assert_eq!(a.read_all(nsid, 0, 512).unwrap(), want);
        drop(held);
        // More writes while the rebuild runs.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seed = 53u8;
        let mut saw_progress = false;
        loop {
            let stats = a.statistics(nsid);
            if stats.array_state == vendor::ARRAY_STATE_OPTIMAL {
                break;
            }
            assert_eq!(stats.array_state, vendor::ARRAY_STATE_REBUILDING);
            saw_progress |= stats.rebuild_percent > 0;
            let lba = u64::from(seed % 32) * 16;
            let block = a.fill(nsid, lba, 16, seed);
            let at = lba as usize * BLOCK;
            want[at..at + 16 * BLOCK].copy_from_slice(&block);
            seed = seed.wrapping_add(1);
            assert!(Instant::now() < deadline, "rebuild did not finish");
        }
        assert!(saw_progress || a.statistics(nsid).rebuild_percent == 0);
        let rebuild = a.maintenance_log(nsid).unwrap().rebuild;
        assert_eq!(
            (rebuild.id.get(), rebuild.state),
            (id, maintenance_state::DONE)
        );
        assert_eq!(rebuild.percent, 100);
        assert_eq!(rebuild.rows_done.get(), rebuild.rows_total.get());
        assert_eq!(a.flush(nsid), Status::SUCCESS);
        assert_eq!(a.read_all(nsid, 0, 512).unwrap(), want);
        // The old SSD is free: it detaches, and its label is gone.
        assert_eq!(
            a.host.admin_status(vendor::ssd_command(old, false, 0)),
            Status::SUCCESS
        );
    }
    let image = std::fs::read(&images.paths[usize::from(old)]).unwrap();
    assert!(
        image[..64 << 10].iter().all(|&b| b == 0),
        "old label erased"
    );
    // After a restart the array has the new member: with `lose` SSDs
    // failed on top, every byte still reads back, so the rebuilt SSD
    // carries its share.
    let mut a = Accel::start(&images);
    assert!(!a.ownership[usize::from(old)].view().attached);
    assert!(a.ssd_in_use(spare.into()));
    assert_eq!(a.statistics(nsid).array_state, vendor::ARRAY_STATE_OPTIMAL);
    assert_eq!(a.read_all(nsid, 0, 512).unwrap(), want);
    for &s in lose {
        assert_eq!(a.fault(fault::FAIL_ALL, s, 0, 0), Ok(0));
    }
    assert_eq!(a.read_all(nsid, 0, 512).unwrap(), want);
}

#[test]
fn raid6_member_replaced_and_rebuilt_with_io_in_between() {
    // A healthy member replaced; then two others fail.
    let req = protected("r6", layout::RAID6, 0, 0, 0b1_1111);
    replace_and_rebuild("maint-r6", "r6", &req, 2, 6, &[0, 4]);
}

#[test]
fn erasure_failed_member_replaced_and_rebuilt() {
    // EC 4+2; the member is failed (it vanished) before it is replaced.
    let req = protected("ec", layout::ERASURE, 4, 2, 0b11_1111);
    let images = Images::new("maint-ec", 7, MAINT_SSD_BYTES);
    let mut a = Accel::start(&images);
    a.attach(&[0, 1, 2, 3, 4, 5, 6]);
    let nsid = a.create(&req).unwrap();
    let mut want = a.fill(nsid, 0, 256, 61);
    assert_eq!(a.fault(fault::DISAPPEAR, 3, 0, 0), Ok(0));
    let more = a.fill(nsid, 32, 64, 62);
    want[32 * BLOCK..96 * BLOCK].copy_from_slice(&more);
    assert_eq!(a.statistics(nsid).array_state, vendor::ARRAY_STATE_DEGRADED);
    assert!(a.replace(nsid, 3, 6).unwrap() > 0);
    let more = a.fill(nsid, 200, 56, 63);
    want[200 * BLOCK..256 * BLOCK].copy_from_slice(&more);
    a.wait_optimal(nsid);
    assert!(!a.ssd_in_use(3));
    // The vanished SSD coming back changes nothing: it is not a member.
    assert_eq!(a.fault(fault::CLEAR, 3, 0, 0), Ok(0));
    assert_eq!(a.statistics(nsid).array_state, vendor::ARRAY_STATE_OPTIMAL);
    assert!(!a.ssd_in_use(3));
    for s in [0, 5] {
        assert_eq!(a.fault(fault::FAIL_ALL, s, 0, 0), Ok(0));
    }
    assert_eq!(a.read_all(nsid, 0, 256).unwrap(), want);
}

#[test]
fn raid10_member_replaced_and_rebuilt() {
    // Two mirror pairs (0,1) and (2,3); SSD 1 replaced by 6, then its
    // partner 0 fails: only the rebuilt copy is left for that pair.
    let req = protected("r10", layout::RAID10, 2, 0, 0b1111);
    replace_and_rebuild("maint-r10", "r10", &req, 1, 6, &[0, 3]);
}

/// How the victim member's data goes bad.
#[derive(Clone, Copy, PartialEq)]
enum Damage {
    /// Its next write lands with flipped bits (`fault::CORRUPT`).
    CorruptWrite,
    /// What it holds decays after the data was written (`fault::ROT`).
    Rot,
    /// As `Rot`, in blocks of the victim that hold the test's own data
    /// (found by their content in the image), nowhere else.
    RotWrittenData,
}

/// Blocks of the test's data on SSD image `image`, past `from` bytes:
/// their byte offsets, at most `most` of them.
fn blocks_holding(image: &std::path::Path, from: usize, data: &[u8], most: usize) -> Vec<u64> {
    let bytes = std::fs::read(image).unwrap();
    let written: std::collections::HashSet<&[u8]> = data.chunks(BLOCK).collect();
    (from..bytes.len().saturating_sub(BLOCK - 1))
        .step_by(BLOCK)
        .filter(|&at| written.contains(&bytes[at..at + BLOCK]))
        .take(most)
        .map(|at| at as u64)
        .collect()
}

/// Silent corruption on one member, found and repaired by a scrub.
fn scrub_finds_and_repairs(
    tag: &str,
    req: &VolumeCreate,
    victim: u16,
    tolerance: usize,
    damage: Damage,
) {
    let images = Images::new(tag, 6, MAINT_SSD_BYTES);
    let mut a = Accel::start(&images);
    a.attach(&[0, 1, 2, 3, 4, 5]);
    let mut req = *req;
    req.size_bytes.set(8 << 20);
    req.services.set(service::THIN);
    let nsid = a.create(&req).unwrap();
    assert_eq!(a.scrub(nsid, maintenance::SCRUB_CHECK), Ok(0));
    // The next write to the victim past its first 1.5 MiB (label and
    // array journal are below) lands with flipped bits.
    let start = (3u64 << 19) / 512;
    let blocks = (MAINT_SSD_BYTES - (3 << 19)) / 512;
    if damage == Damage::CorruptWrite {
        assert_eq!(a.fault(fault::CORRUPT, victim, start, blocks), Ok(0));
    }
    let want = a.fill(nsid, 0, 1536, 71);
    assert_eq!(a.flush(nsid), Status::SUCCESS);
    if damage == Damage::Rot {
        // The first 2 MiB past the journal decay (rows of data, of thin
        // metadata and unwritten ones): a whole member's worth multiplied
        // the scrubs' work without reaching another kind of row. The
        // range holds some of the test's data.
        let blocks = blocks.min(ROT_TEST_BYTES / 512);
        let path = &images.paths[usize::from(victim)];
        let end = (start + blocks) * 512;
        let hits = blocks_holding(path, 3 << 19, &want, 1);
        assert!(
            hits.first().is_some_and(|&at| at + BLOCK as u64 <= end),
            "{tag}: none of the data in the decaying range of SSD {victim}"
        );
        // Past the limit, or no range at all: refused.
        assert!(a
            .fault(fault::ROT, victim, start, fault::ROT_MAX_BYTES / 512 + 1)
            .is_err());
        assert!(a.fault(fault::ROT, victim, 0, 0).is_err());
        assert_eq!(a.fault(fault::ROT, victim, start, blocks), Ok(0));
    }
    if damage == Damage::RotWrittenData {
        let path = &images.paths[usize::from(victim)];
        let hits = blocks_holding(path, 3 << 19, &want, 16);
        assert!(!hits.is_empty(), "{tag}: none of the data on SSD {victim}");
        for at in hits {
            let sectors = (BLOCK / 512) as u64;
            assert_eq!(a.fault(fault::ROT, victim, at / 512, sectors), Ok(0));
        }
    }
    // Check only: it counts, changes no byte of any SSD, and counts the
    // same again.
    let before: Vec<Vec<u8>> = images
        .paths
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let found = a.scrub(nsid, maintenance::SCRUB_CHECK).unwrap();
    assert!(found > 0, "{tag}: the scrub found nothing");
    let stats = a.statistics(nsid);
    assert_eq!(stats.scrub_mismatches.get(), u64::from(found));
    assert_eq!(stats.scrub_repaired.get(), 0);
    let after: Vec<Vec<u8>> = images
        .paths
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert!(before == after, "{tag}: a check changed the media");
    assert_eq!(a.scrub(nsid, maintenance::SCRUB_CHECK), Ok(found));
    // Repair: every mismatch is traced to the corrupted member and
    // rewritten; the data reads back and a new check is clean.
    assert_eq!(a.scrub(nsid, maintenance::SCRUB_REPAIR), Ok(found));
    let record = a.maintenance_log(nsid).unwrap().scrub;
    assert_eq!(
        record.repaired.get(),
        u64::from(found),
        "{tag}: all repaired"
    );
    let stats = a.statistics(nsid);
    assert_eq!(stats.scrub_mismatches.get(), u64::from(found));
    assert_eq!(stats.scrub_repaired.get(), u64::from(found));
    assert_eq!(a.read_all(nsid, 0, 1536).unwrap(), want, "{tag}");
    assert_eq!(a.scrub(nsid, maintenance::SCRUB_CHECK), Ok(0));
    let stats = a.statistics(nsid);
    assert_eq!(
        (stats.scrub_mismatches.get(), stats.scrub_repaired.get()),
        (0, 0)
    );
    // The repaired member holds correct data: with it as one of the
    // survivors of a degraded read, the data still reads back.
    let others: Vec<u16> = (0..6u16)
        .filter(|&s| s != victim && req.ssd_mask.get() & (1 << s) != 0)
        .take(tolerance)
        .collect();
    for &s in &others {
        assert_eq!(a.fault(fault::FAIL_ALL, s, 0, 0), Ok(0));
    }
    assert_eq!(a.read_all(nsid, 0, 1536).unwrap(), want, "{tag} degraded");
}

#[test]
fn scrub_repairs_silent_corruption_on_raid6() {
    let req = protected("r6", layout::RAID6, 0, 0, 0b11_1111);
    scrub_finds_and_repairs("maint-scrub-r6", &req, 2, 2, Damage::CorruptWrite);
}

#[test]
fn scrub_repairs_bit_rot_on_raid6() {
    let req = protected("r6", layout::RAID6, 0, 0, 0b11_1111);
    scrub_finds_and_repairs("maint-rot-r6", &req, 3, 2, Damage::Rot);
}

/// The corruption decays blocks of the test's data at rest after it was
/// written and flushed: a corrupted *next write* to the victim may be a
/// run of metadata that the volume's copy-on-write frees and rewrites
/// before the scrub reads it.
#[test]
fn scrub_repairs_silent_corruption_on_erasure() {
    let req = protected("ec", layout::ERASURE, 4, 2, 0b11_1111);
    scrub_finds_and_repairs("maint-scrub-ec", &req, 5, 2, Damage::RotWrittenData);
}

#[test]
fn scrub_repairs_silent_corruption_on_a_three_way_mirror() {
    let req = protected("m3", layout::RAID10, 3, 0, 0b111);
    scrub_finds_and_repairs("maint-scrub-m3", &req, 1, 2, Damage::Rot);
}

#[test]
fn a_scrub_runs_in_the_background_while_io_and_management_go_on() {
    let images = Images::new("maint-async", 6, MAINT_SSD_BYTES);
    let mut a = Accel::start(&images);
    a.attach(&[0, 1, 2, 3, 4, 5]);
    let nsid = a
        .create(&protected("r6", layout::RAID6, 0, 0, 0b11_1111))
        .unwrap();
    let mut want = a.fill(nsid, 0, 256, 81);
    let gates = a.manager().rebuild_gates();
    let held = gates[0].lock().unwrap();
    // The command completes at once, with the scrub waiting for the gate.
    let id = a.maintenance(nsid, maintenance::SCRUB_CHECK, 0).unwrap();
    assert_ne!(id, 0);
    let r = a.maintenance_log(nsid).unwrap().scrub;
    assert_eq!((r.id.get(), r.state), (id, maintenance_state::RUNNING));
    assert_eq!(u32::from(r.action), maintenance::SCRUB_CHECK);
    assert_eq!((r.rows_done.get(), r.percent), (0, 0));
    assert!(r.rows_total.get() > 0);
    // Meanwhile the volume reads and writes, and management commands are
    // served (the scrub holds no lock of the manager).
    assert_eq!(a.read_all(nsid, 0, 256).unwrap(), want);
    let more = a.fill(nsid, 64, 64, 82);
    want[64 * BLOCK..128 * BLOCK].copy_from_slice(&more);
    assert_eq!(a.statistics(nsid).array_state, vendor::ARRAY_STATE_OPTIMAL);
    assert_eq!(a.volume("r6").nsid.get(), nsid);
    // One scrub per family at a time.
    for action in [maintenance::SCRUB_CHECK, maintenance::SCRUB_REPAIR] {
        assert_eq!(
            a.maintenance(nsid, action, 0),
            Err(vendor_status(vs::VOLUME_BUSY))
        );
    }
    // A controller reset (CC.EN = 0, then enabled again) does not stop it:
    // the scrub belongs to the family, not to a queue.
    a.host.write32(regs::CC, 0);
    a.host.enable();
    a.host.create_pair(1, 16);
    assert_eq!(
        a.maintenance_log(nsid).unwrap().scrub.state,
        maintenance_state::RUNNING
    );
    drop(held);
    let r = a.wait_scrub(nsid, id);
    assert_eq!(r.state, maintenance_state::DONE);
    assert_eq!((r.mismatches.get(), r.percent), (0, 100));
    assert_eq!(r.rows_done.get(), r.rows_total.get());
    assert_eq!(a.read_all(nsid, 0, 256).unwrap(), want);
    // Failures to start answer the command itself.
    assert_eq!(
        a.maintenance(77, maintenance::SCRUB_REPAIR, 0),
        Err(vendor_status(vs::VOLUME_NOT_FOUND))
    );
}

#[test]
fn a_scrub_stops_when_cancelled_or_its_family_goes() {
    let images = Images::new("maint-cancel", 6, MAINT_SSD_BYTES);
    let mut a = Accel::start(&images);
    a.attach(&[0, 1, 2, 3, 4, 5]);
    let nsid = a
        .create(&protected("r6", layout::RAID6, 0, 0, 0b11_1111))
        .unwrap();
    a.fill(nsid, 0, 64, 91);
    let gates = a.manager().rebuild_gates();
    // Cancelled before its first step: nothing checked, no counts kept.
    let held = gates[0].lock().unwrap();
    let id = a.maintenance(nsid, maintenance::SCRUB_REPAIR, 0).unwrap();
    assert_eq!(a.maintenance(nsid, maintenance::SCRUB_CANCEL, 0), Ok(0));
    drop(held);
    let r = a.wait_scrub(nsid, id);
    assert_eq!(r.state, maintenance_state::CANCELLED);
    assert_eq!(r.rows_done.get(), 0);
    assert!(r.rows_total.get() > 0);
    // The next one runs to its end and gets a new ID.
    let next = a.maintenance(nsid, maintenance::SCRUB_CHECK, 0).unwrap();
    assert_ne!(next, id);
    assert_eq!(a.wait_scrub(nsid, next).state, maintenance_state::DONE);
    // Deleting the volume (its family) under a scrub waits for the step
    // it is in and stops it; the SSDs are given back and a new family on
    // them keeps its data.
    let last = a.maintenance(nsid, maintenance::SCRUB_REPAIR, 0).unwrap();
    assert!(last > next);
    assert_eq!(a.delete(nsid), Ok(0));
    assert!((0..6).all(|s| !a.ssd_in_use(s)));
    let again = a
        .create(&protected("r6b", layout::RAID6, 0, 0, 0b11_1111))
        .unwrap();
    let want = a.fill(again, 0, 64, 92);
    assert_eq!(a.read_all(again, 0, 64).unwrap(), want);
    assert_eq!(a.scrub(again, maintenance::SCRUB_CHECK), Ok(0));
}
