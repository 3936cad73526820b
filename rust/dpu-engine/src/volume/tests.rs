//! Tests of the pool as a whole: unit tests of each service, property tests
//! against an in-memory model, and crash simulations.

use std::sync::Arc;

use super::*;
use crate::media::MemMedia;

mod crash_media;
mod model;
mod read_repair;

pub(crate) use crash_media::CrashMedia;

fn pool(blocks: usize) -> (Arc<MemMedia>, Pool) {
    let media = Arc::new(MemMedia::new(blocks * BLOCK_SIZE));
    let pool = Pool::format(media.clone()).unwrap();
    (media, pool)
}

fn opts(size_blocks: u64, services: Services) -> VolumeOptions<'static> {
    VolumeOptions {
        size_bytes: size_blocks * BS,
        services,
        key: None,
    }
}

/// A block whose every byte depends on `seed`, incompressible.
pub(crate) fn random_block(seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..BLOCK_SIZE)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// A block that compresses well but still depends on `seed`.
fn text_block(seed: u64) -> Vec<u8> {
    format!("block {seed:016x} of dpublk test text, repeated. ")
        .into_bytes()
        .into_iter()
        .cycle()
        .take(BLOCK_SIZE)
        .collect()
}

fn key(seed: u8) -> VolumeKey {
    let bytes: Vec<u8> = (0..KEY_LEN as u8)
        .map(|i| i.wrapping_mul(13).wrapping_add(seed))
        .collect();
    VolumeKey::from_slice(&bytes).unwrap()
}

fn read(vol: &Volume, lba: u64) -> Vec<u8> {
    let mut buf = vec![0u8; BLOCK_SIZE];
    vol.read_blocks(lba, &mut buf).unwrap();
    buf
}

#[test]
fn thin_volume_allocates_on_write_and_frees_on_discard() {
    let (media, pool) = pool(64);
    pool.create_volume("v", &opts(1000, Services::default()))
        .unwrap();
    let v = pool.open_volume("v", None).unwrap();
    assert_eq!(read(&v, 999), vec![0u8; BLOCK_SIZE]);
    let before = pool.stats().unwrap();
    assert!(v.write_blocks(u64::MAX, &random_block(1)).is_err());
    assert!(v
        .read_blocks(u64::MAX - 1, &mut [0u8; 2 * BLOCK_SIZE])
        .is_err());
    v.write_blocks(500, &random_block(1)).unwrap();
    v.write_blocks(3, &random_block(2)).unwrap();
    assert_eq!(read(&v, 500), random_block(1));
    assert_eq!(pool.stats().unwrap().data_blocks, before.data_blocks + 2);
    let vs = v.stats().unwrap();
    assert_eq!(
        (vs.mapped_bytes, vs.exclusive_bytes, vs.shared_bytes),
        (2 * BS, 2 * BS, 0)
    );
    v.discard_blocks(0, 501).unwrap();
    assert_eq!(read(&v, 500), vec![0u8; BLOCK_SIZE]);
    v.flush().unwrap();
    assert_eq!(pool.stats().unwrap().data_blocks, before.data_blocks);
    pool.check().unwrap();
    // Reopening finds the same (empty) state.
    let reopened = Pool::open(media).unwrap();
    reopened.check().unwrap();
    assert_eq!(reopened.stats().unwrap().data_blocks, 0);
}

#[test]
fn flush_appends_to_the_journal_until_a_checkpoint_is_due() {
    let (media, pool) = pool(256);
    pool.create_volume("v", &opts(64, Services::default()))
        .unwrap();
    let v = pool.open_volume("v", None).unwrap();
    let start = pool.stats().unwrap();
    let mut generations = std::collections::BTreeSet::new();
    for lba in 0..20 {
        v.write_blocks(lba, &random_block(lba)).unwrap();
        v.flush().unwrap();
        let stats = pool.stats().unwrap();
        generations.insert(stats.generation);
        // Each flush costs one journal block, not a rewrite of all metadata.
        if stats.generation == start.generation {
            assert_eq!(stats.metadata_blocks, start.metadata_blocks + lba + 1);
        }
    }
    // The journal is bounded: a checkpoint replaced it along the way.
    assert!(
        generations.len() > 1 && generations.len() < 10,
        "{generations:?}"
    );
    let reopened = Pool::open(media).unwrap();
    let v = reopened.open_volume("v", None).unwrap();
    for lba in 0..20 {
        assert_eq!(read(&v, lba), random_block(lba));
    }
    reopened.check().unwrap();
}

#[test]
fn snapshots_are_journaled_not_checkpointed() {
    let (media, pool) = pool(256);
    pool.create_volume("v", &opts(64, Services::default()))
        .unwrap();
    let v = pool.open_volume("v", None).unwrap();
    for lba in 0..64 {
        v.write_blocks(lba, &random_block(lba)).unwrap();
    }
    v.flush().unwrap();
    let before = pool.stats().unwrap();
    pool.snapshot("v", "v@1").unwrap();
    pool.clone_snapshot("v@1", "c").unwrap();
    let after = pool.stats().unwrap();
    // Two journal blocks, not a rewrite of the (now doubled) metadata.
    assert_eq!(after.generation, before.generation);
    assert_eq!(after.metadata_blocks, before.metadata_blocks + 2);
    v.write_blocks(0, &random_block(100)).unwrap();
    v.flush().unwrap();
    let reopened = Pool::open(media).unwrap();
    reopened.check().unwrap();
    let snap = reopened.open_volume("v@1", None).unwrap();
    let clone = reopened.open_volume("c", None).unwrap();
    assert_eq!(
        (read(&snap, 0), read(&clone, 63)),
        (random_block(0), random_block(63))
    );
    assert_eq!(
        read(&reopened.open_volume("v", None).unwrap(), 0),
        random_block(100)
    );
}

#[test]
fn full_pool_refuses_writes_keeps_data_and_recovers() {
    let media = Arc::new(CrashMedia::new(24 * BLOCK_SIZE));
    let pool = Pool::format(media.clone()).unwrap();
    pool.create_volume("v", &opts(1 << 20, Services::default()))
        .unwrap();
    let v = pool.open_volume("v", None).unwrap();
    let mut written = 0u64;
    let err = loop {
        match v.write_blocks(written, &random_block(written)) {
            Ok(()) => written += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(err, VolumeError::NoSpace);
    assert!(written > 10, "only {written} blocks fit");
    assert_eq!(MediaError::from(err), MediaError::NoSpace);
    for lba in 0..written {
        assert_eq!(read(&v, lba), random_block(lba));
    }
    v.flush().unwrap();
    // Freeing space lets writes resume, without an explicit flush: the
    // allocator commits to release the freed blocks.
    v.discard_blocks(0, 2).unwrap();
    v.write_blocks(written, &random_block(written)).unwrap();
    v.write_blocks(written + 1, &random_block(written + 1))
        .unwrap();
    assert_eq!(
        v.write_blocks(written + 2, &random_block(0)),
        Err(VolumeError::NoSpace)
    );
    // Growing the media lets them resume too.
    media.grow(40 * BLOCK_SIZE);
    assert_eq!(pool.grow().unwrap(), 40);
    v.write_blocks(written + 2, &random_block(written + 2))
        .unwrap();
    v.flush().unwrap();
    pool.check().unwrap();
    let reopened = Pool::open(media).unwrap();
    let v = reopened.open_volume("v", None).unwrap();
    for lba in 2..written + 3 {
        assert_eq!(read(&v, lba), random_block(lba));
    }
}

#[test]
fn snapshots_freeze_clones_diverge_revert_restores() {
    let (_media, pool) = pool(128);
    pool.create_volume("origin", &opts(16, Services::default()))
        .unwrap();
    let origin = pool.open_volume("origin", None).unwrap();
    origin
        .write_blocks(0, &[random_block(1), random_block(2)].concat())
        .unwrap();
    pool.snapshot("origin", "snap").unwrap();
    origin.write_blocks(0, &random_block(3)).unwrap();
    origin.discard_blocks(1, 1).unwrap();
    let snap = pool.open_volume("snap", None).unwrap();
    assert_eq!(read(&snap, 0), random_block(1));
    assert_eq!(read(&snap, 1), random_block(2));
    assert_eq!(
        snap.write_blocks(0, &random_block(9)),
        Err(VolumeError::ReadOnly)
    );
    assert!(pool.clone_snapshot("origin", "bad").is_err());

    pool.clone_snapshot("snap", "clone").unwrap();
    let clone = pool.open_volume("clone", None).unwrap();
    clone.write_blocks(1, &random_block(4)).unwrap();
    assert_eq!(read(&clone, 0), random_block(1));
    assert_eq!(read(&clone, 1), random_block(4));
    assert_eq!(read(&snap, 1), random_block(2));
    let cs = clone.stats().unwrap();
    assert_eq!((cs.shared_bytes, cs.exclusive_bytes), (BS, BS));

    pool.revert("origin", "snap").unwrap();
    assert_eq!(read(&origin, 0), random_block(1));
    assert_eq!(read(&origin, 1), random_block(2));

    // Deleting in any order keeps what others still map.
    pool.delete("snap").unwrap();
    assert_eq!(read(&clone, 0), random_block(1));
    pool.delete("origin").unwrap();
    assert_eq!(read(&clone, 0), random_block(1));
    assert_eq!(clone.stats().unwrap().shared_bytes, 0);
    assert!(matches!(
        origin.write_blocks(0, &random_block(1)),
        Err(VolumeError::NotFound(_))
    ));
    pool.delete("clone").unwrap();
    pool.flush().unwrap();
    assert_eq!(pool.stats().unwrap().data_blocks, 0);
    pool.check().unwrap();
}

#[test]
fn concurrent_writers_share_one_pool() {
    let (media, pool) = pool(1024);
    let services = Services {
        zero_detect: true,
        dedup: true,
        compression: Compression::Lz4,
    };
    for t in 0..4 {
        pool.create_volume(&format!("v{t}"), &opts(128, services))
            .unwrap();
    }
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            let pool = pool.clone();
            scope.spawn(move || {
                let v = pool.open_volume(&format!("v{t}"), None).unwrap();
                for lba in 0..128 {
                    // Every thread writes the same text blocks (dedup across
                    // volumes) and its own random ones.
                    let block = if lba % 2 == 0 {
                        text_block(lba)
                    } else {
                        random_block(t * 1000 + lba)
                    };
                    v.write_blocks(lba, &block).unwrap();
                    if lba % 32 == 0 {
                        v.flush().unwrap();
                    }
                }
            });
        }
    });
    pool.flush().unwrap();
    pool.check().unwrap();
    let reopened = Pool::open(media).unwrap();
    for t in 0..4u64 {
        let v = reopened.open_volume(&format!("v{t}"), None).unwrap();
        for lba in 0..128 {
            let block = if lba % 2 == 0 {
                text_block(lba)
            } else {
                random_block(t * 1000 + lba)
            };
            assert_eq!(read(&v, lba), block, "v{t} block {lba}");
        }
        assert!(v.stats().unwrap().shared_bytes > 0);
    }
}

#[test]
fn resize_unmaps_past_the_end_and_handles_follow() {
    let (media, pool) = pool(64);
    pool.create_volume("v", &opts(8, Services::default()))
        .unwrap();
    let v = pool.open_volume("v", None).unwrap();
    v.write_blocks(0, &[random_block(1), random_block(2)].concat())
        .unwrap();
    v.write_blocks(7, &random_block(3)).unwrap();
    pool.snapshot("v", "s").unwrap();
    assert_eq!(pool.resize("s", 16 * BS), Err(VolumeError::ReadOnly));
    pool.resize("v", 2 * BS).unwrap();
    assert_eq!(v.size_blocks(), 2);
    assert_eq!(Media::size(&v), 2 * BS);
    assert!(v.write_blocks(2, &random_block(4)).is_err());
    pool.resize("v", 16 * BS).unwrap();
    assert_eq!(read(&v, 7), vec![0u8; BLOCK_SIZE]);
    assert_eq!(read(&v, 1), random_block(2));
    v.write_blocks(15, &random_block(5)).unwrap();
    v.flush().unwrap();
    // The snapshot still has the block the shrink unmapped.
    let s = pool.open_volume("s", None).unwrap();
    assert_eq!(read(&s, 7), random_block(3));
    pool.delete("s").unwrap();
    assert_eq!(pool.stats().unwrap().data_blocks, 3);
    let reopened = Pool::open(media).unwrap();
    let v = reopened.open_volume("v", None).unwrap();
    assert_eq!((v.size_blocks(), read(&v, 15)), (16, random_block(5)));
    reopened.check().unwrap();
}

#[test]
fn zero_detect_and_dedup_save_space_and_read_back() {
    let (_media, pool) = pool(64);
    let services = Services {
        zero_detect: true,
        dedup: true,
        compression: Compression::None,
    };
    pool.create_volume("a", &opts(64, services)).unwrap();
    pool.create_volume("b", &opts(64, services)).unwrap();
    let (a, b) = (
        pool.open_volume("a", None).unwrap(),
        pool.open_volume("b", None).unwrap(),
    );
    for lba in 0..8 {
        a.write_blocks(lba, &random_block(lba % 2)).unwrap();
        b.write_blocks(lba, &random_block(lba % 2)).unwrap();
    }
    a.write_blocks(20, &vec![0u8; BLOCK_SIZE]).unwrap();
    let stats = pool.stats().unwrap();
    assert_eq!(stats.data_blocks, 2);
    assert_eq!(stats.logical_bytes, 17 * BS);
    let sa = a.stats().unwrap();
    assert_eq!(
        (sa.mapped_bytes, sa.zero_bytes, sa.shared_bytes),
        (9 * BS, BS, 2 * BS)
    );
    assert_eq!(read(&a, 20), vec![0u8; BLOCK_SIZE]);
    assert_eq!(read(&b, 5), random_block(1));
    // Overwrites drop references; the last one frees the block.
    for lba in 0..8 {
        a.write_blocks(lba, &random_block(7)).unwrap();
    }
    b.discard_blocks(0, 8).unwrap();
    pool.flush().unwrap();
    assert_eq!(pool.stats().unwrap().data_blocks, 1);
    pool.check().unwrap();
}

#[test]
fn compression_packs_small_blocks() {
    for codec in [Compression::Lz4, Compression::Zstd] {
        let (media, pool) = pool(64);
        let services = Services {
            compression: codec,
            ..Services::default()
        };
        pool.create_volume("v", &opts(256, services)).unwrap();
        let v = pool.open_volume("v", None).unwrap();
        for lba in 0..100 {
            v.write_blocks(lba, &text_block(lba)).unwrap();
        }
        v.write_blocks(100, &random_block(5)).unwrap();
        v.flush().unwrap();
        let stats = pool.stats().unwrap();
        assert!(stats.data_blocks < 12, "{codec:?}: {stats:?}");
        assert!(stats.reduction_ratio > 8.0, "{codec:?}: {stats:?}");
        let reopened = Pool::open(media).unwrap();
        let v = reopened.open_volume("v", None).unwrap();
        for lba in 0..100 {
            assert_eq!(read(&v, lba), text_block(lba));
        }
        assert_eq!(read(&v, 100), random_block(5));
    }
}

#[test]
fn compaction_empties_sparse_packed_blocks_without_the_key() {
    let media = Arc::new(MemMedia::new(256 * BLOCK_SIZE));
    let pool = Pool::format(media.clone()).unwrap();
    let k = key(4);
    let services = Services {
        compression: Compression::Lz4,
        ..Services::default()
    };
    let options = VolumeOptions {
        size_bytes: 512 * BS,
        services,
        key: Some(&k),
    };
    pool.create_volume("v", &options).unwrap();
    let v = pool.open_volume("v", Some(&k)).unwrap();
    for lba in 0..400 {
        v.write_blocks(lba, &text_block(lba)).unwrap();
    }
    v.flush().unwrap();
    let packed = pool.stats().unwrap().packed_blocks;
    assert!(packed > 4, "{packed} packed blocks");
    // Overwriting three blocks in four leaves every packed block sparse.
    for lba in (0..400).filter(|lba| lba % 4 != 0) {
        v.write_blocks(lba, &text_block(lba + 1000)).unwrap();
    }
    v.flush().unwrap();
    pool.check().unwrap();
    let stats = pool.stats().unwrap();
    assert!(stats.data_blocks <= packed + 2, "{stats:?} after {packed}");
    drop(v);
    // Reopened (the journal replayed the moves), every block reads back.
    let reopened = Pool::open(media).unwrap();
    reopened.check().unwrap();
    let v = reopened.open_volume("v", Some(&k)).unwrap();
    for lba in 0..400 {
        let seed = if lba % 4 == 0 { lba } else { lba + 1000 };
        assert_eq!(read(&v, lba), text_block(seed), "block {lba}");
    }
}

#[test]
fn encryption_hides_plaintext_and_refuses_wrong_keys() {
    let media = Arc::new(MemMedia::new(128 * BLOCK_SIZE));
    let pool = Pool::format(media.clone()).unwrap();
    let k = key(1);
    for (name, codec) in [("raw", Compression::None), ("lz4", Compression::Lz4)] {
        let services = Services {
            zero_detect: true,
            dedup: true,
            compression: codec,
        };
        pool.create_volume(
            name,
            &VolumeOptions {
                size_bytes: 64 * BS,
                services,
                key: Some(&k),
            },
        )
        .unwrap();
        let v = pool.open_volume(name, Some(&k)).unwrap();
        for lba in 0..16 {
            v.write_blocks(lba, &text_block(lba % 4)).unwrap();
        }
        v.flush().unwrap();
    }
    // Both volumes share the key, hence a dedup domain: four distinct
    // blocks are stored, raw in the first volume.
    assert_eq!(pool.stats().unwrap().stored_bytes, 4 * BS);
    let image = media.snapshot();
    let needle = b"of dpublk test text";
    assert!(
        !image.windows(needle.len()).any(|w| w == needle),
        "plaintext on media"
    );

    assert_eq!(
        pool.open_volume("raw", None).unwrap_err(),
        VolumeError::KeyRequired
    );
    assert_eq!(
        pool.open_volume("raw", Some(&key(2))).unwrap_err(),
        VolumeError::WrongKey
    );
    pool.create_volume("plain", &opts(8, Services::default()))
        .unwrap();
    assert_eq!(
        pool.open_volume("plain", Some(&k)).unwrap_err(),
        VolumeError::NotEncrypted
    );

    let reopened = Pool::open(media).unwrap();
    assert_eq!(
        reopened.open_volume("lz4", Some(&key(3))).unwrap_err(),
        VolumeError::WrongKey
    );
    reopened.snapshot("lz4", "lz4@1").unwrap();
    let snap = reopened.open_volume("lz4@1", Some(&k)).unwrap();
    for lba in 0..16 {
        assert_eq!(read(&snap, lba), text_block(lba % 4));
    }
}

/// True if any 16-byte aligned chunk of `blocks` appears anywhere in
/// `image`: a literal run of 31 bytes or more of a block contains one.
fn image_contains_plaintext(image: &[u8], blocks: &[Vec<u8>]) -> bool {
    let chunks: std::collections::HashSet<&[u8]> =
        blocks.iter().flat_map(|b| b.chunks_exact(16)).collect();
    image.windows(16).any(|w| chunks.contains(w))
}

#[test]
fn every_combination_of_services_round_trips() {
    let codecs = [Compression::None, Compression::Lz4, Compression::Zstd];
    for (zero_detect, dedup, compression, encrypted) in codecs.iter().flat_map(|&codec| {
        [false, true].into_iter().flat_map(move |z| {
            [false, true]
                .into_iter()
                .flat_map(move |d| [false, true].map(move |e| (z, d, codec, e)))
        })
    }) {
        let what =
            format!("zero {zero_detect} dedup {dedup} {compression:?} encrypted {encrypted}");
        let media = Arc::new(MemMedia::new(256 * BLOCK_SIZE));
        let pool = Pool::format(media.clone()).unwrap();
        let k = key(7);
        let key = encrypted.then_some(&k);
        let services = Services {
            zero_detect,
            dedup,
            compression,
        };
        pool.create_volume(
            "v",
            &VolumeOptions {
                size_bytes: 64 * BS,
                services,
                key,
            },
        )
        .unwrap();
        // Random, compressible, duplicate and zero blocks, in one request.
        let blocks: Vec<Vec<u8>> = (0..32u64)
            .map(|lba| match lba {
                0..8 => random_block(lba),
                8..16 => text_block(lba),
                16..24 => random_block(lba % 4),
                24..28 => text_block(8 + lba % 2),
                _ => vec![0u8; BLOCK_SIZE],
            })
            .collect();
        let v = pool.open_volume("v", key).unwrap();
        v.write_blocks(0, &blocks.concat()).unwrap();
        let mut back = vec![0u8; 32 * BLOCK_SIZE];
        v.read_blocks(0, &mut back).unwrap();
        assert!(back == blocks.concat(), "{what}: read before reopen");
        v.flush().unwrap();
        pool.check().unwrap();
        let stats = v.stats().unwrap();
        assert_eq!(stats.mapped_bytes, 32 * BS, "{what}");
        assert_eq!(
            stats.zero_bytes,
            if zero_detect { 4 * BS } else { 0 },
            "{what}"
        );
        let stored = match (dedup, zero_detect) {
            (true, true) => 16,
            (true, false) => 17,
            (false, true) => 28,
            (false, false) => 32,
        };
        assert_eq!(stats.unique_bytes, stored * BS, "{what}");
        if compression == Compression::None {
            assert_eq!(stats.allocated_bytes, stored * BS, "{what}");
        } else {
            assert!(
                stats.allocated_bytes < stored * BS * 6 / 10,
                "{what}: {stats:?}"
            );
        }
        drop(v);
        let image = media.snapshot();
        let plain: Vec<Vec<u8>> = blocks[..28].to_vec();
        assert_eq!(
            image_contains_plaintext(&image, &plain),
            !encrypted,
            "{what}: plaintext scan"
        );

        let reopened = Pool::open(media).unwrap();
        if encrypted {
            assert_eq!(
                reopened
                    .open_volume("v", Some(&super::tests::key(8)))
                    .unwrap_err(),
                VolumeError::WrongKey
            );
        }
        let v = reopened.open_volume("v", key).unwrap();
        let mut back = vec![0u8; 32 * BLOCK_SIZE];
        v.read_blocks(0, &mut back).unwrap();
        assert!(back == blocks.concat(), "{what}: read after reopen");
        reopened.check().unwrap();
    }
}

/// Commits `damage` done to a healthy pool's metadata and reopens it.
fn reopen_after(damage: impl FnOnce(&mut format::Meta)) -> VolumeResult<Pool> {
    let (media, pool) = pool(64);
    pool.create_volume("a", &opts(8, Services::default()))
        .unwrap();
    pool.create_volume("b", &opts(8, Services::default()))
        .unwrap();
    let a = pool.open_volume("a", None).unwrap();
    a.write_blocks(0, &[random_block(1), random_block(2)].concat())
        .unwrap();
    a.flush().unwrap();
    {
        let mut guard = pool.state.lock().unwrap();
        let state = guard.in_memory().unwrap();
        damage(state.meta_mut());
        state.commit().unwrap();
    }
    Pool::open(media)
}

#[test]
fn open_refuses_inconsistent_metadata_and_reclaims_leaks() {
    let corrupt = |r: VolumeResult<Pool>| matches!(r.err(), Some(VolumeError::Corrupt(_)));
    let first = |meta: &format::Meta| meta.records.keys().copied().min().unwrap();
    assert!(corrupt(reopen_after(|m| {
        let id = first(m);
        m.records.get_mut(&id).unwrap().block = 1000;
    })));
    assert!(corrupt(reopen_after(|m| {
        let block = m.records.values().map(|r| r.block).min().unwrap();
        for r in m.records.values_mut() {
            r.block = block;
        }
    })));
    assert!(corrupt(reopen_after(|m| {
        m.volumes.values_mut().next().unwrap().map.insert(5, 999);
    })));
    assert!(corrupt(reopen_after(|m| {
        let id = first(m);
        m.records.get_mut(&id).unwrap().domain = 7;
    })));
    // A record nothing maps is a leak: open drops it and says so.
    let pool = reopen_after(|m| {
        let id = first(m);
        let leaked = format::Record {
            block: 60,
            ..m.records[&id].clone()
        };
        m.records.insert(m.next_record, leaked);
        m.next_record += 1;
    })
    .unwrap();
    let stats = pool.stats().unwrap();
    assert_eq!((stats.reclaimed_at_open, stats.data_blocks), (1, 2));
    pool.check().unwrap();
    let a = pool.open_volume("a", None).unwrap();
    assert_eq!(read(&a, 1), random_block(2));
}

#[test]
fn corrupted_media_gives_errors_not_wrong_data() {
    for codec in [Compression::None, Compression::Lz4] {
        let media = Arc::new(MemMedia::new(64 * BLOCK_SIZE));
        let pool = Pool::format(media.clone()).unwrap();
        let services = Services {
            compression: codec,
            ..Services::default()
        };
        pool.create_volume("v", &opts(8, services)).unwrap();
        let v = pool.open_volume("v", None).unwrap();
        v.write_blocks(0, &text_block(1)).unwrap();
        v.flush().unwrap();
        // Flip one bit of the stored record.
        let block = {
            let mut guard = pool.state.lock().unwrap();
            let state = guard.in_memory().unwrap();
            state.meta_mut().records.values().next().unwrap().block
        };
        let mut byte = [0u8];
        media.read_at(block * BS + 5, &mut byte).unwrap();
        media.write_at(block * BS + 5, &[byte[0] ^ 0x10]).unwrap();
        let err = v.read_blocks(0, &mut vec![0u8; BLOCK_SIZE]).unwrap_err();
        assert!(
            matches!(err, VolumeError::Media(MediaError::Io(_))),
            "{codec:?}: {err:?}"
        );
    }
}

#[test]
fn key_domains_keep_data_apart() {
    let (_media, pool) = pool(64);
    let (k1, k2) = (key(1), key(2));
    let services = Services {
        dedup: true,
        ..Services::default()
    };
    for (name, k) in [("one", &k1), ("two", &k2)] {
        let options = VolumeOptions {
            size_bytes: 8 * BS,
            services,
            key: Some(k),
        };
        pool.create_volume(name, &options).unwrap();
        let v = pool.open_volume(name, Some(k)).unwrap();
        v.write_blocks(0, &text_block(1)).unwrap();
    }
    // Same content under two keys is stored twice: dedup never crosses a
    // key domain.
    assert_eq!(pool.stats().unwrap().data_blocks, 2);
    assert_eq!(
        pool.open_volume("two", Some(&k1)).unwrap_err(),
        VolumeError::WrongKey
    );
    pool.snapshot("one", "one@1").unwrap();
    assert!(matches!(
        pool.revert("two", "one@1"),
        Err(VolumeError::InvalidArgument(_))
    ));
    let infos = pool.volumes().unwrap();
    assert!(infos.iter().all(|i| i.encrypted && i.services == services));
    assert_eq!(
        infos
            .iter()
            .find(|i| i.name == "one@1")
            .map(|i| (i.kind, i.parent.clone())),
        Some((VolumeKind::Snapshot, Some("one".to_string())))
    );
    let two = pool.open_volume("two", Some(&k2)).unwrap();
    assert_eq!(read(&two, 0), text_block(1));
}

#[test]
fn volume_is_media_with_partial_blocks() {
    let (_media, pool) = pool(64);
    pool.create_volume("v", &opts(8, Services::default()))
        .unwrap();
    let v = pool.open_volume("v", None).unwrap();
    let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    v.write_at(1000, &data).unwrap();
    let mut back = vec![0u8; 10_000];
    v.read_at(1000, &mut back).unwrap();
    assert_eq!(back, data);
    let mut head = vec![1u8; 1000];
    v.read_at(0, &mut head).unwrap();
    assert!(head.iter().all(|&b| b == 0));
    assert!(v.write_at(8 * BS - 1, &[0, 0]).is_err());
    Media::discard(&v, 0, 3 * BS).unwrap();
    let mut block = vec![1u8; BLOCK_SIZE];
    v.read_at(BS, &mut block).unwrap();
    assert!(block.iter().all(|&b| b == 0));
}

#[test]
fn management_errors_are_reported() {
    let (media, pool) = pool(64);
    assert!(matches!(
        pool.create_volume("", &opts(8, Services::default())),
        Err(VolumeError::InvalidArgument(_))
    ));
    assert!(matches!(
        pool.create_volume("x", &opts(0, Services::default())),
        Err(VolumeError::InvalidArgument(_))
    ));
    pool.create_volume("x", &opts(8, Services::default()))
        .unwrap();
    assert_eq!(
        pool.create_volume("x", &opts(8, Services::default())),
        Err(VolumeError::Exists("x".into()))
    );
    assert!(matches!(
        pool.snapshot("nope", "s"),
        Err(VolumeError::NotFound(_))
    ));
    assert!(matches!(pool.delete("nope"), Err(VolumeError::NotFound(_))));
    assert_eq!(
        Pool::open(Arc::new(MemMedia::new(64 * BLOCK_SIZE))).err(),
        Some(VolumeError::NotFormatted)
    );
    // Management operations go to the journal until it is long enough to
    // be replaced by a checkpoint.
    let start = pool.stats().unwrap().generation;
    let mut created = 0;
    while pool.stats().unwrap().generation == start {
        created += 1;
        pool.create_volume(&format!("y{created}"), &opts(8, Services::default()))
            .unwrap();
    }
    assert!(created > 4, "a checkpoint after {created} creates");
    // A torn (here: damaged) newest superblock falls back to the older one.
    let generation = pool.stats().unwrap().generation;
    drop(pool);
    media.write_at((generation % 2) * BS + 20, &[0xff]).unwrap();
    let fallback = Pool::open(media).unwrap();
    assert_eq!(fallback.stats().unwrap().generation, generation - 1);
    fallback.check().unwrap();
}

mod properties {
    use std::sync::Arc;

    use super::crash_media::{CrashMedia, Loss};
    use super::model::{op_strategy, services_strategy, Harness, Op};
    use super::BLOCK_SIZE;
    use crate::volume::{Pool, PoolFormat, VolumeError};

    fn format_strategy() -> impl Strategy<Value = PoolFormat> {
        prop_oneof![Just(PoolFormat::InMemory), Just(PoolFormat::Paged)]
    }
    use proptest::prelude::*;

    /// `cases` cases, unless `PROPTEST_CASES` asks for a longer soak.
    fn config(cases: u32) -> ProptestConfig {
        match std::env::var_os("PROPTEST_CASES") {
            Some(_) => ProptestConfig::default(),
            None => ProptestConfig::with_cases(cases),
        }
    }

    proptest! {
        #![proptest_config(config(48))]

        /// Random operation sequences give the model's reads and space
        /// accounting, whatever the services.
        #[test]
        fn operations_match_the_model(
            format in format_strategy(),
            services in services_strategy(),
            encrypted in any::<bool>(),
            ops in proptest::collection::vec(op_strategy(), 1..60),
        ) {
            let mut harness = Harness::with_format(services, encrypted, format);
            for op in &ops {
                harness.apply(op);
                harness.verify();
            }
        }
    }

    proptest! {
        #![proptest_config(config(32))]

        /// Damaged media never makes the pool panic: bit flips anywhere in
        /// a pool image either fail the open or leave a pool whose
        /// invariants hold and whose reads return data or an error.
        #[test]
        fn damaged_media_never_panics(
            format in format_strategy(),
            services in services_strategy(),
            ops in proptest::collection::vec(op_strategy(), 1..30),
            flips in proptest::collection::vec((any::<usize>(), 0u8..8), 1..40),
        ) {
            let mut harness = Harness::with_format(services, false, format);
            for op in ops.iter().chain([&Op::Flush]) {
                harness.apply(op);
            }
            let mut image = harness.media.image();
            // Aim half of the flips at the first blocks, where the
            // superblocks and most metadata live.
            for (i, (pos, bit)) in flips.iter().enumerate() {
                let range = if i % 2 == 0 { 16 * BLOCK_SIZE } else { image.len() };
                image[pos % range] ^= 1 << bit;
            }
            let media = Arc::new(CrashMedia::from_image(image));
            if let Ok(pool) = Pool::open(media) {
                // A format 1 pool validates everything at open; a paged
                // one reads metadata when it is used, so its check may
                // find the damage, and must say so as an error.
                match pool.check() {
                    Ok(()) => {}
                    Err(VolumeError::Corrupt(_) | VolumeError::Media(_))
                        if format == PoolFormat::Paged => {}
                    Err(e) => panic!("{e}"),
                }
                let mut block = vec![0u8; BLOCK_SIZE];
                for info in pool.volumes().unwrap() {
                    if let Ok(v) = pool.open_volume(&info.name, None) {
                        for lba in 0..v.size_blocks() {
                            let _ = v.read_blocks(lba, &mut block);
                        }
                    }
                }
            }
        }
    }

    /// Journaled snapshots (a paged pool's snapshot durable by a record,
    /// not a commit) between unflushed writes, a snapshot of a snapshot,
    /// a commit in between: a crash after every media event, under every
    /// loss model, recovers a state the model allows, in which every
    /// snapshot acknowledged by then is there and holds what its origin
    /// holds in the recovered state.
    #[test]
    fn crashes_around_journaled_snapshots_recover_allowed_states() {
        let mut harness =
            Harness::with_format(crate::volume::Services::default(), false, PoolFormat::Paged);
        let write = |lba, seed| Op::Write {
            vol: 0,
            lba,
            seeds: vec![seed, seed + 1],
        };
        let ops = [
            write(0, 1),
            Op::Flush,
            write(1, 3),
            Op::Snapshot { vol: 0 },
            write(0, 5),
            Op::Snapshot { vol: 1 },
            Op::Snapshot { vol: 0 },
            Op::Flush,
            write(2, 2),
            Op::Snapshot { vol: 0 },
            write(3, 4),
        ];
        for op in &ops {
            harness.apply(op);
        }
        assert_eq!(harness.journaled_count(), 4, "every snapshot journaled");
        let events = harness.media.events();
        for point in 0..=events {
            for loss in [Loss::All, Loss::None, Loss::Random(point as u64)] {
                harness.crash_and_check(point, loss, point == events);
            }
        }
    }

    proptest! {
        #![proptest_config(config(48))]

        /// A crash after any media event recovers a state the model allows:
        /// nothing acknowledged is lost, nothing is half-applied, and no
        /// space leaks.
        #[test]
        fn crash_at_every_step_recovers_an_allowed_state(
            format in format_strategy(),
            services in services_strategy(),
            encrypted in any::<bool>(),
            ops in proptest::collection::vec(op_strategy(), 1..60),
            seed in any::<u64>(),
        ) {
            let mut harness = Harness::with_format(services, encrypted, format);
            for op in ops.iter().chain([&Op::Flush]) {
                harness.apply(op);
            }
            let events = harness.media.events();
            for point in 0..=events {
                let loss = match point % 3 {
                    0 => Loss::All,
                    1 => Loss::None,
                    _ => Loss::Random(seed ^ point as u64),
                };
                harness.crash_and_check(point, loss, point % 7 == 0 || point == events);
            }
        }
    }
}

/// Not a test but a probe of the write and read paths' speed per service
/// (it still checks what it reads): run it with
/// `cargo test --release -p dpu-engine throughput_probe -- --ignored --nocapture`.
#[test]
#[ignore = "a throughput probe, not a test: run it by hand (see above)"]
fn throughput_probe() {
    let n = 8192u64;
    for (name, services, enc) in [
        ("none", Services::default(), false),
        (
            "zero+dedup",
            Services {
                zero_detect: true,
                dedup: true,
                compression: Compression::None,
            },
            false,
        ),
        (
            "lz4",
            Services {
                compression: Compression::Lz4,
                ..Services::default()
            },
            false,
        ),
        (
            "zstd",
            Services {
                compression: Compression::Zstd,
                ..Services::default()
            },
            false,
        ),
        ("xts", Services::default(), true),
        (
            "all-lz4-xts",
            Services {
                zero_detect: true,
                dedup: true,
                compression: Compression::Lz4,
            },
            true,
        ),
    ] {
        let media = Arc::new(MemMedia::new((n as usize + 4096) * BLOCK_SIZE));
        let pool = Pool::format(media).unwrap();
        let k = key(1);
        let key = enc.then_some(&k);
        pool.create_volume(
            "v",
            &VolumeOptions {
                size_bytes: n * BS,
                services,
                key,
            },
        )
        .unwrap();
        let v = pool.open_volume("v", key).unwrap();
        let data: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                if i % 2 == 0 {
                    random_block(i)
                } else {
                    text_block(i)
                }
            })
            .collect();
        let t = std::time::Instant::now();
        for (i, d) in data.iter().enumerate() {
            v.write_blocks(i as u64, d).unwrap();
            if i % 256 == 255 {
                v.flush().unwrap();
            }
        }
        v.flush().unwrap();
        let w = t.elapsed();
        let t = std::time::Instant::now();
        let mut buf = vec![0u8; BLOCK_SIZE];
        for i in 0..n {
            v.read_blocks(i, &mut buf).unwrap();
            assert!(buf == data[i as usize]);
        }
        let r = t.elapsed();
        let mb = (n * BS) as f64 / 1e6;
        eprintln!(
            "{name:12} write {:7.1} MB/s read {:7.1} MB/s ratio {:.2}",
            mb / w.as_secs_f64(),
            mb / r.as_secs_f64(),
            pool.stats().unwrap().reduction_ratio
        );
    }
    // 4 KiB overwrites of a volume with 0 and with 10 snapshots (the
    // `make bench` case against dm-thin), then the time to open the pool.
    for snapshots in [0, 10] {
        let media = Arc::new(MemMedia::new((4 * n as usize + 4096) * BLOCK_SIZE));
        let pool = Pool::format(media.clone()).unwrap();
        pool.create_volume("v", &opts(n, Services::default()))
            .unwrap();
        let v = pool.open_volume("v", None).unwrap();
        for lba in 0..n {
            v.write_blocks(lba, &random_block(lba)).unwrap();
        }
        for s in 0..snapshots {
            pool.snapshot("v", &format!("v@{s}")).unwrap();
        }
        let t = std::time::Instant::now();
        for i in 0..n {
            let lba = (i * 7919) % n;
            v.write_blocks(lba, &random_block(lba + n)).unwrap();
            if i % 256 == 255 {
                v.flush().unwrap();
            }
        }
        v.flush().unwrap();
        let w = t.elapsed();
        let t = std::time::Instant::now();
        let reopened = Pool::open(media).unwrap();
        let open = t.elapsed();
        assert_eq!(reopened.volumes().unwrap().len(), 1 + snapshots);
        let mb = (n * BS) as f64 / 1e6;
        eprintln!(
            "{snapshots:2} snapshots: overwrite {:7.1} MB/s, open {:?}, metadata {} blocks",
            mb / w.as_secs_f64(),
            open,
            reopened.stats().unwrap().metadata_blocks
        );
    }
}

/// A failed media flush fails the pool: Linux reports a writeback error
/// to one fdatasync only, so a retry that succeeds says nothing about the
/// writes before it. Only a reopen (back to the last durable state) makes
/// the pool usable again.
#[test]
fn failed_media_flush_fails_the_pool_until_reopened() {
    let mem = Arc::new(MemMedia::new(64 * BLOCK_SIZE));
    let (faulty, control) = crate::fault::FaultyMedia::new(mem.clone());
    let pool = Pool::format(Arc::new(faulty)).unwrap();
    pool.create_volume("v", &opts(16, Services::default()))
        .unwrap();
    let v = pool.open_volume("v", None).unwrap();
    v.write_blocks(0, &random_block(1)).unwrap();
    v.flush().unwrap();
    v.write_blocks(1, &random_block(2)).unwrap();
    control.fail_all(true);
    assert!(v.flush().is_err());
    // The device "recovers": its next flush would succeed.
    control.fail_all(false);
    assert!(
        v.flush().is_err(),
        "a flush after a failed one reported success"
    );
    assert!(v.write_blocks(2, &random_block(3)).is_err());
    assert!(pool.flush().is_err());
    // Reopening goes back to the last durable state.
    let reopened = Pool::open(mem).unwrap();
    reopened.check().unwrap();
    let v = reopened.open_volume("v", None).unwrap();
    assert_eq!(read(&v, 0), random_block(1));
    v.write_blocks(1, &random_block(4)).unwrap();
    v.flush().unwrap();
    assert_eq!(read(&v, 1), random_block(4));
}

/// XTS tweaks (record ids) stay unique across a crash: a record written
/// but never committed used an id that the reopened pool must not hand out
/// again, or the media would, over time, show two plaintexts under one key
/// and tweak. With XTS, equal tweaks and equal first 16 plaintext bytes
/// give equal first 16 ciphertext bytes, which is what this looks for.
#[test]
fn record_ids_are_not_reissued_after_a_crash() {
    use crash_media::{crash_image, Loss};
    let media = Arc::new(CrashMedia::new(64 * BLOCK_SIZE));
    let pool = Pool::format(media.clone()).unwrap();
    let k = key(7);
    let options = VolumeOptions {
        size_bytes: 16 * BS,
        services: Services::default(),
        key: Some(&k),
    };
    pool.create_volume("v", &options).unwrap();
    let v = pool.open_volume("v", Some(&k)).unwrap();
    v.write_blocks(0, &random_block(1)).unwrap();
    v.flush().unwrap();
    let base = media.image();
    media.clear_log();
    let lost = random_block(2);
    let mut rewritten = random_block(3);
    rewritten[..16].copy_from_slice(&lost[..16]);
    // Written (the data reaches the media) but never flushed.
    v.write_blocks(1, &lost).unwrap();
    let crashed = crash_image(&base, &media.log(), media.events(), Loss::None);
    drop((v, pool));

    let media = Arc::new(CrashMedia::from_image(crashed.clone()));
    let pool = Pool::open(media.clone()).unwrap();
    let v = pool.open_volume("v", Some(&k)).unwrap();
    assert_eq!(read(&v, 0), random_block(1));
    assert_eq!(read(&v, 1), vec![0u8; BLOCK_SIZE]);
    v.write_blocks(1, &rewritten).unwrap();
    v.flush().unwrap();
    assert_eq!(read(&v, 1), rewritten);
    let after = media.image();

    let changed = |from: &[u8], to: &[u8]| -> Vec<Vec<u8>> {
        from.chunks(BLOCK_SIZE)
            .zip(to.chunks(BLOCK_SIZE))
            .filter(|(a, b)| a != b)
            .map(|(_, b)| b.to_vec())
            .collect()
    };
    let before_crash = changed(&base, &crashed);
    let since = changed(&crashed, &after);
    assert_eq!(before_crash.len(), 1, "the lost write's ciphertext");
    for old in &before_crash {
        for new in &since {
            assert_ne!(
                old[..16],
                new[..16],
                "two plaintexts were encrypted under one tweak"
            );
        }
    }
}

/// Reference counts are `u32`: a snapshot, clone or revert that would take
/// a record past that fails with a clear error and changes nothing, and
/// dedup stops sharing a record that is full (it stores a copy instead,
/// never failing the write).
#[test]
fn reference_counts_never_overflow() {
    let (_, pool) = pool(64);
    let services = Services {
        dedup: true,
        ..Services::default()
    };
    pool.create_volume("v", &opts(8, services)).unwrap();
    let v = pool.open_volume("v", None).unwrap();
    v.write_blocks(0, &random_block(1)).unwrap();
    pool.snapshot("v", "v@0").unwrap();
    let set_refs = |refs: u32| {
        let mut guard = pool.lock().unwrap();
        let state = guard.in_memory().unwrap();
        for rec in state.meta_mut().records.values_mut() {
            rec.refs = refs;
        }
    };
    // As if 2^32 - 1 maps shared the record already.
    set_refs(u32::MAX);
    for attempt in [
        pool.snapshot("v", "v@1"),
        pool.clone_snapshot("v@0", "c"),
        pool.revert("v", "v@0"),
    ] {
        match attempt {
            Err(VolumeError::InvalidArgument(why)) => {
                assert!(why.contains("references"), "{why}")
            }
            other => panic!("expected a reference-count error, got {other:?}"),
        }
    }
    assert_eq!(pool.volumes().unwrap().len(), 2);
    // Dedup would share the full record; it stores the block again.
    let before = pool.stats().unwrap().data_blocks;
    v.write_blocks(1, &random_block(1)).unwrap();
    assert_eq!(pool.stats().unwrap().data_blocks, before + 1);
    assert_eq!(read(&v, 1), random_block(1));
    {
        let mut guard = pool.lock().unwrap();
        let state = guard.in_memory().unwrap();
        let mut refs: Vec<u32> = state.meta_mut().records.values().map(|r| r.refs).collect();
        refs.sort_unstable();
        assert_eq!(refs, [1, u32::MAX], "nothing wrapped around");
    }
    // With the true counts back, everything checks and works.
    {
        let mut guard = pool.lock().unwrap();
        let state = guard.in_memory().unwrap();
        for rec in state.meta_mut().records.values_mut() {
            rec.refs = if rec.refs == u32::MAX { 2 } else { 1 };
        }
    }
    pool.check().unwrap();
    pool.snapshot("v", "v@1").unwrap();
    pool.check().unwrap();
}

/// With the volatile write cache off (NVMe Set Features Volatile Write
/// Cache = 0), every completed write and discard survives a crash that
/// loses everything unflushed; with it on, unflushed writes may be lost.
#[test]
fn write_cache_off_makes_every_write_durable_before_it_completes() {
    use crash_media::{crash_image, Loss};
    for cache in [true, false] {
        let media = Arc::new(CrashMedia::new(64 * BLOCK_SIZE));
        let pool = Pool::format(media.clone()).unwrap();
        pool.create_volume("v", &opts(16, Services::default()))
            .unwrap();
        let v = pool.open_volume("v", None).unwrap();
        v.write_blocks(0, &random_block(1)).unwrap();
        v.write_blocks(1, &random_block(2)).unwrap();
        pool.set_write_cache(cache).unwrap();
        assert_eq!(pool.write_cache().unwrap(), cache);
        let base = media.image();
        media.clear_log();
        v.write_blocks(2, &random_block(3)).unwrap();
        v.discard_blocks(1, 1).unwrap();
        // Turning the cache off made the earlier writes durable too.
        let crashed = crash_image(&base, &media.log(), media.events(), Loss::All);
        let reopened = Pool::open(Arc::new(CrashMedia::from_image(crashed))).unwrap();
        reopened.check().unwrap();
        let r = reopened.open_volume("v", None).unwrap();
        let seen = [read(&r, 0), read(&r, 1), read(&r, 2)];
        if cache {
            // The crash lost the unflushed write and discard.
            assert_eq!(seen[2], vec![0u8; BLOCK_SIZE]);
        } else {
            assert_eq!(
                seen,
                [random_block(1), vec![0u8; BLOCK_SIZE], random_block(3)]
            );
        }
    }
}
