//! Read repair: a pool on a RAID10 array whose copy of a record is damaged
//! on the member's media reads the record from the other copy, returns the
//! right bytes and rewrites the damaged copy.

use std::sync::Arc;

use super::{opts, random_block};
use crate::media::{Media, MediaError, MemMedia};
use crate::protection::{Layout, ProtectedMedia, ProtectionConfig};
use crate::volume::{PagedOptions, Pool, Services, VolumeError, BLOCK_SIZE};

const CHUNK: u64 = 64 << 10;
const MEMBER_BYTES: usize = 8 << 20;

struct Mirror {
    members: Vec<Arc<MemMedia>>,
    array: Arc<ProtectedMedia>,
}

fn mirror() -> Mirror {
    let members: Vec<Arc<MemMedia>> = (0..2)
        .map(|_| Arc::new(MemMedia::new(MEMBER_BYTES)))
        .collect();
    let config = ProtectionConfig {
        assume_zeroed: true,
        ..ProtectionConfig::new(
            Layout::Mirror {
                members: 2,
                copies: 2,
            },
            CHUNK,
        )
    };
    let media: Vec<Arc<dyn Media>> = members.iter().map(|m| m.clone() as _).collect();
    let array = Arc::new(ProtectedMedia::create(config, media).unwrap());
    Mirror { members, array }
}

/// Where `block` is stored: its offset in the array and on the members (a
/// mirror puts every copy at the same member offset). The blocks are
/// incompressible and unencrypted, so stored bytes are the data. The last
/// match on a member is the data area's: the array's journal, before it,
/// may still hold the write's payload.
fn locate(m: &Mirror, block: &[u8]) -> (u64, u64) {
    let find = |image: &[u8]| {
        (0..=image.len() - BLOCK_SIZE)
            .step_by(512)
            .filter(|&at| image[at..at + BLOCK_SIZE] == *block)
            .last()
            .map(|at| at as u64)
            .expect("the block is stored")
    };
    let mut logical = vec![0u8; m.array.size() as usize];
    m.array.read_at(0, &mut logical).unwrap();
    (find(&logical), find(&m.members[0].snapshot()))
}

/// Flips bits of member `member`'s copy at `at`, under the array.
fn damage(m: &Mirror, member: usize, at: u64) {
    let mut bytes = [0u8; 64];
    m.members[member].read_at(at + 100, &mut bytes).unwrap();
    for b in &mut bytes {
        *b ^= 0x5a;
    }
    m.members[member].write_at(at + 100, &bytes).unwrap();
}

fn member_bytes(m: &Mirror, member: usize, at: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; BLOCK_SIZE];
    m.members[member].read_at(at, &mut bytes).unwrap();
    bytes
}

#[test]
fn a_damaged_mirror_copy_is_read_from_the_other_and_repaired() {
    for paged in [false, true] {
        let m = mirror();
        let media = m.array.clone() as Arc<dyn Media>;
        let pool = if paged {
            Pool::format_paged(media, &PagedOptions::default()).unwrap()
        } else {
            Pool::format(media).unwrap()
        };
        pool.create_volume("v", &opts(64, Services::default()))
            .unwrap();
        let v = pool.open_volume("v", None).unwrap();
        let blocks: Vec<Vec<u8>> = (0..8).map(|i| random_block(700 + i)).collect();
        for (lba, block) in blocks.iter().enumerate() {
            v.write_blocks(lba as u64, block).unwrap();
        }
        v.flush().unwrap();
        pool.flush().unwrap();
        m.array.flush().unwrap();

        // Damage the copy a normal read of block 3 goes to (mirrors start
        // at copy `row % copies`), so the read meets it first.
        let (logical, at) = locate(&m, &blocks[3]);
        let served = ((logical / CHUNK) % 2) as usize;
        damage(&m, served, at);
        assert!(member_bytes(&m, served, at) != blocks[3]);

        let mut got = vec![0u8; BLOCK_SIZE];
        v.read_blocks(3, &mut got).unwrap();
        assert!(got == blocks[3], "paged {paged}: wrong bytes returned");
        let status = m.array.status();
        assert_eq!(status.read_repairs, 1, "paged {paged}");
        assert!(
            member_bytes(&m, served, at) == blocks[3],
            "paged {paged}: the damaged copy was not rewritten"
        );
        assert!(member_bytes(&m, 1 - served, at) == blocks[3]);
        // Both copies verify now: the next read repairs nothing.
        v.read_blocks(3, &mut got).unwrap();
        assert_eq!(m.array.status().read_repairs, 1, "paged {paged}");

        // With both copies damaged there is nothing to repair from: an
        // error, never wrong bytes.
        let (_, at) = locate(&m, &blocks[5]);
        damage(&m, 0, at);
        damage(&m, 1, at);
        let err = v.read_blocks(5, &mut got).unwrap_err();
        assert!(
            matches!(&err, VolumeError::Media(MediaError::Io(why)) if why.contains("fails its checksum")),
            "paged {paged}: {err:?}"
        );
        assert_eq!(m.array.status().read_repairs, 1, "paged {paged}");
        for lba in [0u64, 1, 2, 4, 6, 7] {
            v.read_blocks(lba, &mut got).unwrap();
            assert!(got == blocks[lba as usize], "paged {paged}: block {lba}");
        }
    }
}

/// Every member's 4 KiB at member offset `at`.
fn chunks_at(members: &[Arc<MemMedia>], at: u64) -> Vec<Vec<u8>> {
    members
        .iter()
        .map(|m| {
            let mut bytes = vec![0u8; BLOCK_SIZE];
            m.read_at(at, &mut bytes).unwrap();
            bytes
        })
        .collect()
}

fn flip(member: &MemMedia, at: u64) {
    let mut bytes = [0u8; 64];
    member.read_at(at + 100, &mut bytes).unwrap();
    for b in &mut bytes {
        *b ^= 0x5a;
    }
    member.write_at(at + 100, &bytes).unwrap();
}

/// On RAID6 a record whose data chunk is damaged is reconstructed through
/// a parity chunk, returned and written back (data and parity recomputed);
/// with the data and one parity chunk damaged the other parity still
/// serves and both are repaired; with all three damaged the read fails.
#[test]
fn a_damaged_raid6_chunk_is_reconstructed_through_parity_and_repaired() {
    for paged in [false, true] {
        let members: Vec<Arc<MemMedia>> = (0..4)
            .map(|_| Arc::new(MemMedia::new(MEMBER_BYTES)))
            .collect();
        let config = ProtectionConfig {
            assume_zeroed: true,
            ..ProtectionConfig::new(Layout::Raid6 { members: 4 }, CHUNK)
        };
        let media: Vec<Arc<dyn Media>> = members.iter().map(|m| m.clone() as _).collect();
        let array = Arc::new(ProtectedMedia::create(config, media).unwrap());
        let pool = if paged {
            Pool::format_paged(array.clone(), &PagedOptions::default()).unwrap()
        } else {
            Pool::format(array.clone()).unwrap()
        };
        pool.create_volume("v", &opts(64, Services::default()))
            .unwrap();
        let v = pool.open_volume("v", None).unwrap();
        let blocks: Vec<Vec<u8>> = (0..8).map(|i| random_block(900 + i)).collect();
        let settle = || {
            v.flush().unwrap();
            pool.flush().unwrap();
            array.flush().unwrap();
        };
        for lba in [0u64, 1, 2, 3, 4, 6, 7] {
            v.write_blocks(lba, &blocks[lba as usize]).unwrap();
        }
        settle();
        let before: Vec<Vec<u8>> = members.iter().map(|m| m.snapshot()).collect();
        v.write_blocks(5, &blocks[5]).unwrap();
        settle();
        // Block 5 in the array, and the member offset of its row's chunks:
        // the last place a member holds its bytes (the array's journal,
        // before the data area, may hold them too). With the row's other
        // data chunk still zero, P and Q equal the data there, so the data
        // member is the one whose damage a direct read of the array sees
        // (a flip is undone by flipping again).
        let mut logical = vec![0u8; array.size() as usize];
        array.read_at(0, &mut logical).unwrap();
        let logical = (0..=logical.len() - BLOCK_SIZE)
            .step_by(512)
            .find(|&a| logical[a..a + BLOCK_SIZE] == *blocks[5])
            .expect("block 5 is stored") as u64;
        let at = members
            .iter()
            .filter_map(|m| {
                let image = m.snapshot();
                (0..=image.len() - BLOCK_SIZE)
                    .step_by(512)
                    .filter(|&at| image[at..at + BLOCK_SIZE] == *blocks[5])
                    .last()
                    .map(|at| at as u64)
            })
            .max()
            .expect("block 5 is stored");
        let data_member = (0..4)
            .find(|&i| {
                flip(&members[i], at);
                let mut direct = vec![0u8; BLOCK_SIZE];
                array.read_at(logical, &mut direct).unwrap();
                flip(&members[i], at);
                direct != blocks[5]
            })
            .expect("a member serves block 5");
        // Its parity chunks: the other members whose bytes at that offset
        // the write changed.
        let after = chunks_at(&members, at);
        let parity: Vec<usize> = (0..4)
            .filter(|&i| i != data_member)
            .filter(|&i| before[i][at as usize..at as usize + BLOCK_SIZE] != *after[i])
            .collect();
        assert_eq!(parity.len(), 2, "paged {paged}: P and Q of the row");

        let mut got = vec![0u8; BLOCK_SIZE];
        flip(&members[data_member], at);
        v.read_blocks(5, &mut got).unwrap();
        assert!(got == blocks[5], "paged {paged}: wrong bytes returned");
        assert_eq!(array.status().read_repairs, 1, "paged {paged}");
        array.flush().unwrap();
        assert_eq!(
            chunks_at(&members, at),
            after,
            "paged {paged}: the row is not back as written"
        );
        v.read_blocks(5, &mut got).unwrap();
        assert_eq!(array.status().read_repairs, 1, "paged {paged}");

        // The data chunk and one parity chunk: the other parity serves,
        // and both damaged chunks are rewritten (one repair per failed
        // view).
        flip(&members[data_member], at);
        flip(&members[parity[0]], at);
        v.read_blocks(5, &mut got).unwrap();
        assert!(got == blocks[5], "paged {paged}: wrong bytes returned");
        assert_eq!(array.status().read_repairs, 3, "paged {paged}");
        array.flush().unwrap();
        assert_eq!(chunks_at(&members, at), after, "paged {paged}");

        // Nothing left to reconstruct from: an error, never wrong bytes.
        for i in [data_member, parity[0], parity[1]] {
            flip(&members[i], at);
        }
        let err = v.read_blocks(5, &mut got).unwrap_err();
        assert!(
            matches!(&err, VolumeError::Media(MediaError::Io(why)) if why.contains("fails its checksum")),
            "paged {paged}: {err:?}"
        );
        for lba in [0u64, 1, 2, 3, 4, 6, 7] {
            v.read_blocks(lba, &mut got).unwrap();
            assert!(got == blocks[lba as usize], "paged {paged}: block {lba}");
        }
    }
}
