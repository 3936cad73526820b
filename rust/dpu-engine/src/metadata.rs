//! Metadata on media: copy-on-write B-trees with reference-counted shared
//! nodes, paged through a bounded cache (the shape of Linux's
//! dm-persistent-data library, written afresh for the engine).
//!
//! Layers, each over the one below:
//!
//! * [`block_cache::BlockCache`]: 4 KiB metadata blocks of a [`crate::media::Media`],
//!   checksummed and self-locating, cached up to a fixed number of blocks.
//!   Dirty blocks are written back when evicted or at commit.
//! * [`transaction::TransactionManager`]: allocation and shadowing
//!   (copy-on-write) of metadata blocks, reference counts kept in two
//!   [`space_map`]s (metadata blocks and data blocks), and atomic commits
//!   through a pair of superblocks.
//! * [`btree`]: a B-tree of `u64` keys and fixed-size values whose nodes are
//!   metadata blocks. A snapshot shares a root (one reference count
//!   increment); the first write through either copy shadows the path and,
//!   where a node was shared, takes references on its children then.
//!
//! The crash argument: a block reachable from the committed superblock is
//! never written before the next superblock is durable, because writes only
//! go to blocks allocated in the running transaction, and a block is only
//! allocatable when its committed reference count is zero and it was not
//! freed in the running transaction. A commit writes every dirty block,
//! flushes, writes the superblock slot the previous commit did not use, and
//! flushes again; a torn superblock fails its checksum and the other slot
//! (the previous commit) is used. A commit may be written while the next
//! transaction runs (its owner's lock released): the blocks and data
//! blocks it freed stay unallocatable until it is durable, so neither
//! transaction writes a block that either superblock refers to. `Documentation/engine-volumes.rst`
//! describes the format.

use std::fmt;

use crate::media::MediaError;

pub mod block_cache;
pub mod btree;
pub mod space_map;
pub mod thin;
pub mod transaction;

#[cfg(test)]
mod tests;

/// Size of a metadata block.
pub const META_BLOCK: usize = 4096;

/// Why a metadata operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaError {
    /// The media below failed.
    Media(MediaError),
    /// A block failed its checksum, its location or its type check.
    Corrupt(String),
    /// No free metadata (or data) block is left.
    NoSpace,
    /// A reference count would pass `u32::MAX`.
    TooManyReferences(u64),
    /// A media flush or superblock write failed earlier: what the media
    /// holds is only known after reopening.
    Failed,
    /// A bad argument.
    InvalidArgument(String),
}

impl fmt::Display for MetaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaError::Media(e) => write!(f, "media: {e}"),
            MetaError::Corrupt(why) => write!(f, "metadata corrupt: {why}"),
            MetaError::NoSpace => f.write_str("no free metadata block"),
            MetaError::TooManyReferences(b) => {
                write!(f, "block {b} already has {} references", u32::MAX)
            }
            MetaError::Failed => {
                f.write_str("an earlier commit failed: reopen the metadata to continue")
            }
            MetaError::InvalidArgument(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for MetaError {}

impl From<MediaError> for MetaError {
    fn from(e: MediaError) -> Self {
        MetaError::Media(e)
    }
}

pub type MetaResult<T> = Result<T, MetaError>;

/// The hash of the block-number-keyed maps and sets of the cache and the
/// transaction manager: one multiply per `u64` (the FxHash step). Block
/// numbers come from the engine's allocator, not from whoever sends I/O,
/// so the flooding a keyed hash (std's SipHash) defends against is not a
/// risk here, and SipHash was a fifth of the write path's CPU time.
#[derive(Default, Clone, Copy)]
pub struct BlockHasher(u64);

const HASH_MULTIPLIER: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl std::hash::Hasher for BlockHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(HASH_MULTIPLIER);
    }
}

/// A map keyed by block number.
pub type BlockMap<V> =
    std::collections::HashMap<u64, V, std::hash::BuildHasherDefault<BlockHasher>>;
/// A set of block numbers.
pub type BlockSet = std::collections::HashSet<u64, std::hash::BuildHasherDefault<BlockHasher>>;

/// A zeroed metadata block of type `magic` (sealed when written).
pub fn blank_block(magic: u32) -> Vec<u8> {
    let mut data = vec![0u8; META_BLOCK];
    data[..4].copy_from_slice(&magic.to_le_bytes());
    data
}

fn le_u32(data: &[u8], at: usize) -> u32 {
    data.get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .unwrap_or(0)
}

pub(crate) fn le_u64(data: &[u8], at: usize) -> u64 {
    data.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

fn put_u32(data: &mut [u8], at: usize, value: u32) {
    data[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

pub(crate) fn put_u64(data: &mut [u8], at: usize, value: u64) {
    data[at..at + 8].copy_from_slice(&value.to_le_bytes());
}
