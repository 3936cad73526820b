//! The catalog of a paged pool: volumes and key domains, small enough to
//! keep in memory whole (a few hundred bytes per volume), loaded at open
//! and written back at each commit.

use std::collections::BTreeMap;

use super::super::crypt::CHECK_VALUE_LEN;
use super::super::reduce::Compression;
use super::super::{Services, VolumeError, VolumeKind};
use super::slots::{CATALOG, DOMAINS};
use crate::metadata::btree::{self, TreeInfo, ValueKind};
use crate::metadata::transaction::TransactionManager;
use crate::metadata::MetaResult;

/// Longest volume name (bytes).
use super::super::common::MAX_NAME;
const VOLUME_VALUE: usize = 48 + MAX_NAME + 1;
const DOMAIN_VALUE: usize = 8 + CHECK_VALUE_LEN;
const NO_PARENT: u32 = u32::MAX;

/// A volume, snapshot or clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VolumeEntry {
    pub name: String,
    pub kind: VolumeKind,
    pub size_blocks: u64,
    pub domain: u32,
    pub services: Services,
    pub parent: Option<u32>,
    /// Root of the mapping tree; the entry holds one reference on it.
    pub root: u64,
    /// Mapped blocks, zero-detected ones included.
    pub mapped: u64,
    /// Mapped blocks that were zero-detected.
    pub zeros: u64,
}

impl VolumeEntry {
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; VOLUME_VALUE];
        out[0..8].copy_from_slice(&self.root.to_le_bytes());
        out[8..16].copy_from_slice(&self.size_blocks.to_le_bytes());
        out[16..24].copy_from_slice(&self.mapped.to_le_bytes());
        out[24..32].copy_from_slice(&self.zeros.to_le_bytes());
        out[32..36].copy_from_slice(&self.domain.to_le_bytes());
        out[36..40].copy_from_slice(&self.parent.unwrap_or(NO_PARENT).to_le_bytes());
        out[40] = u8::from(self.kind == VolumeKind::Snapshot);
        out[41] = u8::from(self.services.zero_detect);
        out[42] = u8::from(self.services.dedup);
        out[43] = self.services.compression.code();
        let name = self.name.as_bytes();
        out[44..46].copy_from_slice(&(name.len() as u16).to_le_bytes());
        out[48..48 + name.len()].copy_from_slice(name);
        out
    }

    fn decode(id: u32, data: &[u8]) -> Result<VolumeEntry, VolumeError> {
        let bad = |why: &str| VolumeError::Corrupt(format!("catalog entry {id}: {why}"));
        if data.len() != VOLUME_VALUE {
            return Err(bad("wrong size"));
        }
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&data[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let u32_at = |at: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&data[at..at + 4]);
            u32::from_le_bytes(b)
        };
        let name_len = usize::from(u16::from_le_bytes([data[44], data[45]]));
        if name_len == 0 || name_len > MAX_NAME {
            return Err(bad("bad name length"));
        }
        let name = std::str::from_utf8(&data[48..48 + name_len])
            .map_err(|_| bad("name is not UTF-8"))?
            .to_string();
        let parent = u32_at(36);
        let entry = VolumeEntry {
            name,
            kind: if data[40] != 0 {
                VolumeKind::Snapshot
            } else {
                VolumeKind::Writable
            },
            size_blocks: u64_at(8),
            domain: u32_at(32),
            services: Services {
                zero_detect: data[41] != 0,
                dedup: data[42] != 0,
                compression: Compression::from_code(data[43])?,
            },
            parent: (parent != NO_PARENT).then_some(parent),
            root: u64_at(0),
            mapped: u64_at(16),
            zeros: u64_at(24),
        };
        if entry.zeros > entry.mapped || entry.mapped > entry.size_blocks {
            return Err(bad("counts out of range"));
        }
        Ok(entry)
    }
}

/// A key domain: the volumes sharing one key (or none), the scope of
/// dedup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DomainEntry {
    pub encrypted: bool,
    pub check_value: [u8; CHECK_VALUE_LEN],
}

fn volumes_info() -> MetaResult<TreeInfo> {
    TreeInfo::new(VOLUME_VALUE, ValueKind::Plain)
}

fn domains_info() -> MetaResult<TreeInfo> {
    TreeInfo::new(DOMAIN_VALUE, ValueKind::Plain)
}

/// Empty catalog and domain trees (format).
pub(crate) fn format(tm: &mut TransactionManager) -> MetaResult<()> {
    let root = btree::empty(tm, &volumes_info()?)?;
    tm.set_root(CATALOG, root)?;
    let root = btree::empty(tm, &domains_info()?)?;
    tm.set_root(DOMAINS, root)
}

/// Every entry of the tree in root slot `slot`, keyed by a `u32` id.
fn entries(
    tm: &mut TransactionManager,
    slot: usize,
    info: &TreeInfo,
) -> Result<Vec<(u32, Vec<u8>)>, VolumeError> {
    let mut raw = Vec::new();
    let root = tm.root(slot);
    btree::range(tm, info, root, 0, u64::MAX, &mut |k, v| {
        raw.push((k, v.to_vec()));
        true
    })?;
    raw.into_iter()
        .map(|(k, v)| {
            let id = u32::try_from(k)
                .map_err(|_| VolumeError::Corrupt(format!("slot {slot}: key {k} out of range")))?;
            Ok((id, v))
        })
        .collect()
}

/// Reads every volume entry.
pub(crate) fn load_volumes(
    tm: &mut TransactionManager,
) -> Result<BTreeMap<u32, VolumeEntry>, VolumeError> {
    entries(tm, CATALOG, &volumes_info()?)?
        .into_iter()
        .map(|(id, v)| Ok((id, VolumeEntry::decode(id, &v)?)))
        .collect()
}

/// Reads every key domain.
pub(crate) fn load_domains(
    tm: &mut TransactionManager,
) -> Result<BTreeMap<u32, DomainEntry>, VolumeError> {
    entries(tm, DOMAINS, &domains_info()?)?
        .into_iter()
        .map(|(id, v)| {
            let mut check_value = [0u8; CHECK_VALUE_LEN];
            check_value.copy_from_slice(&v[8..8 + CHECK_VALUE_LEN]);
            Ok((
                id,
                DomainEntry {
                    encrypted: v[0] != 0,
                    check_value,
                },
            ))
        })
        .collect()
}

/// Writes volume `id`'s entry.
pub(crate) fn put_volume(tm: &mut TransactionManager, id: u32, v: &VolumeEntry) -> MetaResult<()> {
    let root = tm.root(CATALOG);
    let root = btree::insert(tm, &volumes_info()?, root, u64::from(id), &v.encode())?;
    tm.set_root(CATALOG, root)
}

/// Removes volume `id`'s entry.
pub(crate) fn remove_volume(tm: &mut TransactionManager, id: u32) -> MetaResult<()> {
    let root = tm.root(CATALOG);
    let (root, _) = btree::remove(tm, &volumes_info()?, root, u64::from(id))?;
    tm.set_root(CATALOG, root)
}

/// Writes domain `id`.
pub(crate) fn put_domain(tm: &mut TransactionManager, id: u32, d: &DomainEntry) -> MetaResult<()> {
    let mut value = [0u8; DOMAIN_VALUE];
    value[0] = u8::from(d.encrypted);
    value[8..].copy_from_slice(&d.check_value);
    let root = tm.root(DOMAINS);
    let root = btree::insert(tm, &domains_info()?, root, u64::from(id), &value)?;
    tm.set_root(DOMAINS, root)
}

/// Removes domain `id`.
pub(crate) fn remove_domain(tm: &mut TransactionManager, id: u32) -> MetaResult<()> {
    let root = tm.root(DOMAINS);
    let (root, _) = btree::remove(tm, &domains_info()?, root, u64::from(id))?;
    tm.set_root(DOMAINS, root)
}

/// The trees' shapes, for checks.
pub(crate) fn tree_infos() -> MetaResult<[(usize, TreeInfo); 2]> {
    Ok([(CATALOG, volumes_info()?), (DOMAINS, domains_info()?)])
}
