//! dpuemu's data services engine.
//!
//! A volume is a stack of layers, each over the one below:
//! mapping (thin volumes, snapshots, clones) → reduction (zero-detect, dedup,
//! compression) → encryption (AES-XTS) → protection (stripe, RAID10, RAID6,
//! erasure coding) → [`media::Media`]. Every layer is pure logic over the
//! [`media::Media`] trait, so it is tested with cargo alone, without a VM.
//!
//! [`metadata`] holds copy-on-write B-trees on the media, paged through a
//! bounded cache, with O(1) snapshots: the metadata of the paged pool
//! format ([`volume::PoolFormat::Paged`]). Pools of the first format keep
//! their metadata in RAM and are still opened.

pub mod fault;
pub mod media;
pub mod metadata;
pub mod protection;
pub mod volume;
