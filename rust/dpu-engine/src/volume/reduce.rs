//! Data reduction: zero-detect, content fingerprints for dedup, compression.

use super::{VolumeError, BLOCK_SIZE};

/// Granule of packed storage: compressed records are stored in whole units
/// of this many bytes, which is also the AES block size, so that every
/// stored unit is a valid XTS data unit.
pub const UNIT: usize = 16;

/// Units in one block.
pub const UNITS_PER_BLOCK: usize = BLOCK_SIZE / UNIT;

/// A compressed block is kept only if it saves at least this many bytes;
/// below that, the CPU spent decompressing on every read buys too little.
const MIN_SAVING: usize = 512;

/// zstd level: the fast end, since the engine compresses inline on the
/// write path.
const ZSTD_LEVEL: i32 = 1;

/// Per-volume compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Blocks are stored as they are.
    #[default]
    None,
    /// LZ4 block format (`lz4_flex`): cheap, modest ratio.
    Lz4,
    /// Zstandard (`zstd`): better ratio for more CPU.
    Zstd,
}

impl Compression {
    pub(crate) fn code(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Lz4 => 1,
            Compression::Zstd => 2,
        }
    }

    pub(crate) fn from_code(code: u8) -> Result<Self, VolumeError> {
        match code {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Lz4),
            2 => Ok(Compression::Zstd),
            _ => Err(VolumeError::Corrupt(format!("unknown codec {code}"))),
        }
    }
}

/// True if the block holds only zero bytes.
pub(crate) fn is_zero(block: &[u8]) -> bool {
    // An OR over the whole block has no early exit, but the compiler turns
    // it into wide vector operations, which beats a byte loop that exits
    // early on the typical (nonzero) block.
    block.iter().fold(0u8, |acc, &b| acc | b) == 0
}

/// The content fingerprint of a block in an unencrypted dedup domain.
pub(crate) fn fingerprint(block: &[u8]) -> [u8; 32] {
    *blake3::hash(block).as_bytes()
}

/// Compresses `block`; `None` when compression is off or does not save
/// enough to be worth storing compressed (the block is then stored raw).
pub(crate) fn compress(codec: Compression, block: &[u8]) -> Option<Vec<u8>> {
    let packed = match codec {
        Compression::None => return None,
        Compression::Lz4 => lz4_flex::block::compress(block),
        Compression::Zstd => zstd::bulk::compress(block, ZSTD_LEVEL).ok()?,
    };
    // The stored size is rounded up to whole units and must leave room for
    // the minimum saving; anything larger is treated as incompressible.
    let stored = packed.len().div_ceil(UNIT) * UNIT;
    (stored.max(UNIT) + MIN_SAVING <= BLOCK_SIZE).then_some(packed)
}

/// Decompresses `stored` into exactly one block.
pub(crate) fn decompress(
    codec: Compression,
    stored: &[u8],
    out: &mut [u8],
) -> Result<(), VolumeError> {
    let produced = match codec {
        Compression::None => {
            if stored.len() != out.len() {
                return Err(VolumeError::Corrupt("raw record of wrong size".into()));
            }
            out.copy_from_slice(stored);
            out.len()
        }
        Compression::Lz4 => lz4_flex::block::decompress_into(stored, out)
            .map_err(|e| VolumeError::Corrupt(format!("lz4: {e}")))?,
        Compression::Zstd => zstd::bulk::decompress_to_buffer(stored, out)
            .map_err(|e| VolumeError::Corrupt(format!("zstd: {e}")))?,
    };
    if produced != out.len() {
        return Err(VolumeError::Corrupt(format!(
            "record decompressed to {produced} bytes, not {}",
            out.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detect_sees_every_byte() {
        let mut block = vec![0u8; BLOCK_SIZE];
        assert!(is_zero(&block));
        for pos in [0, 7, 8, 2049, BLOCK_SIZE - 1] {
            block[pos] = 1;
            assert!(!is_zero(&block), "nonzero byte at {pos} missed");
            block[pos] = 0;
        }
        assert!(is_zero(&block[3..]));
    }

    #[test]
    fn codecs_round_trip_and_refuse_random_data() {
        let text: Vec<u8> = b"dpublk compresses this line. "
            .iter()
            .copied()
            .cycle()
            .take(BLOCK_SIZE)
            .collect();
        let mut state = 0x1234_5678_9abc_def0u64;
        let random: Vec<u8> = (0..BLOCK_SIZE)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        for codec in [Compression::Lz4, Compression::Zstd] {
            let packed = compress(codec, &text).unwrap();
            assert!(packed.len() < BLOCK_SIZE / 4);
            let mut out = vec![0u8; BLOCK_SIZE];
            decompress(codec, &packed, &mut out).unwrap();
            assert_eq!(out, text);
            assert!(compress(codec, &random).is_none());
            assert!(decompress(codec, &packed[..packed.len() / 2], &mut out).is_err());
        }
        assert!(compress(Compression::None, &text).is_none());
    }
}
