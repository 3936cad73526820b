//! Log-RAID volumes (layout LOG_RAID) end to end: created over SSD images,
//! written and overwritten through I/O commands, read back after a
//! restart, and with two SSDs blank (Documentation/lograid.rst).

use super::*;

const LOG_SSD_BYTES: u64 = 8 << 20;

#[test]
fn a_lograid_volume_survives_restarts_and_two_lost_ssds() {
    let images = Images::new("lograid", 6, LOG_SSD_BYTES);
    let blocks = 96u64;
    let mut want = vec![0u8; blocks as usize * BLOCK];
    let nsid = {
        let mut a = Accel::start(&images);
        a.attach(&[0, 1, 2, 3, 4, 5]);
        let mut req = request("log", layout::LOG_RAID, 0b11_1111, 16 << 20);
        req.services.set(service::THIN | service::COMPRESSION);
        req.compression = compression::LZ4;
        req.stripe_bytes.set(16 << 10);
        let nsid = a.create(&req).unwrap();
        let entry = a.volume("log");
        assert_eq!(entry.layout, layout::LOG_RAID);
        assert_eq!((entry.data_shards, entry.parity_shards), (4, 2));
        // Write everything, then overwrite parts of it several times, with
        // flushes in between: the log wraps through its segments.
        for round in 0..4u8 {
            for start in (0..blocks).step_by(8).skip(usize::from(round)) {
                let data = blocks_pattern(8, round.wrapping_mul(16) ^ start as u8);
                assert_eq!(a.write(nsid, start, &data), Status::SUCCESS);
                let at = start as usize * BLOCK;
                want[at..at + data.len()].copy_from_slice(&data);
            }
            assert_eq!(a.flush(nsid), Status::SUCCESS);
        }
        assert_eq!(a.read(nsid, 0, blocks as usize).unwrap(), want);
        nsid
    };
    {
        let mut a = Accel::start(&images);
        assert!((0..6).all(|s| a.ssd_in_use(s)));
        assert_eq!(a.read(nsid, 0, blocks as usize).unwrap(), want);
        // Writes go on after the restart.
        let data = blocks_pattern(4, 0x77);
        assert_eq!(a.write(nsid, 10, &data), Status::SUCCESS);
        assert_eq!(a.flush(nsid), Status::SUCCESS);
        want[10 * BLOCK..14 * BLOCK].copy_from_slice(&data);
    }
    let blank = |i: usize| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&images.paths[i])
            .unwrap();
        f.set_len(0).unwrap();
        f.set_len(LOG_SSD_BYTES).unwrap();
    };
    // Two SSDs replaced by blank ones: the data is rebuilt from parity.
    blank(1);
    blank(4);
    {
        let mut a = Accel::start(&images);
        assert!([0, 2, 3, 5].iter().all(|&s| a.ssd_in_use(s)));
        assert_eq!(a.read(nsid, 0, blocks as usize).unwrap(), want);
    }
    // A third: beyond the layout, the volume is listed as failed.
    blank(0);
    let mut a = Accel::start(&images);
    let entry = a.volume("log");
    assert_eq!(entry.nsid.get(), 0);
    assert_eq!(entry.flags.get(), vendor::VOLUME_FLAG_FAILED);
}
