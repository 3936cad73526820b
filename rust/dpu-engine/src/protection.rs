//! Protection: member media combined into one [`Media`] that survives
//! member failures.
//!
//! [`ProtectedMedia`] stripes a byte range over N member media in rows of
//! one chunk per member, with a [`Layout`]: stripe (RAID0), mirror (RAID10,
//! 2 or 3 copies), RAID6 (P + Q over GF(2^8)) or k + m Reed-Solomon erasure
//! coding. It is itself a [`Media`], so layers stack on it and it can even
//! stack on itself.
//!
//! What it guarantees:
//! - No write hole: every write to a redundant layout goes through a small
//!   per-member journal before it touches the row in place, and mounting
//!   replays complete journal transactions, so a crash at any point leaves
//!   each row either old or new, and always consistent.
//! - Degraded mode: reads reconstruct from survivors, writes continue, up
//!   to the layout's tolerance; past it, [`MediaError::Unrecoverable`],
//!   never wrong data.
//! - Rebuild onto a replacement member in steps while I/O continues, and
//!   scrub that checks (and repairs) every row.
//!
//! Documentation/engine-protection.rst describes the on-media format and
//! the trade-offs.
//!
//! [`Media`]: crate::media::Media
//! [`MediaError::Unrecoverable`]: crate::media::MediaError::Unrecoverable

mod array;
mod codec;
mod format;
mod gf256;
pub mod lograid;
mod maintenance;
mod repair;

#[cfg(test)]
mod readd_tests;
#[cfg(test)]
mod tests;

pub use array::{ProtectedMedia, ProtectionConfig};
pub use codec::Layout;
pub use format::MemberState;
pub use lograid::{GcState, LogRaid, LogRaidConfig, LogRaidStats, LogScrubReport};
pub use maintenance::{RebuildProgress, ScrubReport};

/// The health of a whole array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArrayState {
    /// Every member online.
    Optimal,
    /// Some members failed or missing, still within tolerance.
    Degraded,
    /// A replacement member is being rebuilt.
    Rebuilding,
    /// More members lost than the layout tolerates: I/O fails.
    Failed,
}

/// One member as the array sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberStatus {
    pub state: MemberState,
    /// For a rebuilding member, rows already in sync.
    pub rebuilt_rows: u64,
    /// Read errors this member returned (each one served by reconstruction).
    pub read_errors: u64,
}

/// A snapshot of an array's state and counters (the volume statistics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectionStatus {
    pub state: ArrayState,
    pub layout: Layout,
    pub chunk: u64,
    pub rows: u64,
    pub members: Vec<MemberStatus>,
    /// Logical reads and writes served.
    pub reads: u64,
    pub writes: u64,
    /// Reads that needed reconstruction from survivors.
    pub degraded_reads: u64,
    /// Journal transactions committed, and replayed at mount.
    pub journal_commits: u64,
    pub journal_replays: u64,
    /// Rows rebuilt since the array was opened.
    pub rebuilt_rows: u64,
    /// Copies rewritten by read repair: a layer above found bytes that
    /// failed its checksum, and another copy that passed it.
    pub read_repairs: u64,
    /// The rebuild under way, if any.
    pub rebuild: Option<RebuildProgress>,
}
