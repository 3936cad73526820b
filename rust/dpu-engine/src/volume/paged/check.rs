//! The paged pool's consistency check: recounts every reference from the
//! roots and compares with what the space maps, the records and the
//! catalog hold. It reads all metadata, so it is a tool for tests and
//! repair, not for the I/O path.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::records::{self, index_info, mapping_info, ZERO_ENTRY};
use super::slots::{DEFERRED, INDEX, PACK, PACKED, RECORDS, REFS, STORED};
use super::{catalog, decode_pack, deferred_info, le, PagedState};
use crate::metadata::btree::{self, TreeInfo};
use crate::metadata::space_map;
use crate::metadata::transaction::SUPERBLOCKS;
use crate::volume::VolumeError;

fn corrupt(what: String) -> VolumeError {
    VolumeError::Corrupt(what)
}

/// Expected counts, built by walking every tree once.
#[derive(Default)]
struct Recount {
    meta: BTreeMap<u64, u64>,
    records: BTreeMap<u64, u64>,
    visited: HashSet<u64>,
}

impl Recount {
    fn walk(
        &mut self,
        state: &mut PagedState,
        info: &TreeInfo,
        root: u64,
        references: u64,
        counted: bool,
    ) -> Result<(), VolumeError> {
        *self.meta.entry(root).or_default() += references;
        let (meta, recs, visited) = (&mut self.meta, &mut self.records, &mut self.visited);
        btree::for_each_node(&mut state.tm, info, root, &mut |block, children, values| {
            if !visited.insert(block) {
                return false;
            }
            for &c in children {
                *meta.entry(c).or_default() += 1;
            }
            if counted {
                for &rid in values.iter().filter(|&&r| r != ZERO_ENTRY) {
                    *recs.entry(rid).or_default() += 1;
                }
            }
            true
        })?;
        Ok(())
    }
}

pub(super) fn check(state: &mut PagedState) -> Result<(), VolumeError> {
    let mut recount = Recount::default();
    for slot in 0..SUPERBLOCKS {
        recount.meta.insert(slot, 1);
    }
    for block in state.journal_blocks().into_iter().flatten() {
        *recount.meta.entry(block).or_default() += 1;
    }
    let mut plain: Vec<(usize, TreeInfo)> = catalog::tree_infos()?.to_vec();
    plain.push((RECORDS, records::records_info()?));
    plain.push((INDEX, index_info()?));
    plain.push((DEFERRED, deferred_info()?));
    for (slot, info) in &plain {
        let root = state.tm.root(*slot);
        recount.walk(state, info, root, 1, false)?;
    }
    let mapping = mapping_info()?;
    let roots: Vec<u64> = state.volumes.values().map(|v| v.root).collect();
    for root in roots {
        recount.walk(state, &mapping, root, 1, true)?;
    }
    let mut deferred = Vec::new();
    let root = state.tm.root(DEFERRED);
    btree::range(
        &mut state.tm,
        &deferred_info()?,
        root,
        0,
        u64::MAX,
        &mut |k, v| {
            deferred.push((k, le(v)));
            true
        },
    )?;
    for (node, count) in deferred {
        recount.walk(state, &mapping, node, count, true)?;
    }
    let (meta_sm, data_sm) = state.tm.space_map_roots();
    let (meta_blocks, data_blocks) = (state.tm.meta_blocks(), state.tm.data_blocks());
    let mut sm_nodes = Vec::new();
    space_map::for_each_node(&mut state.tm, meta_sm, meta_blocks, &mut |b| {
        sm_nodes.push(b)
    })?;
    space_map::for_each_node(&mut state.tm, data_sm, data_blocks, &mut |b| {
        sm_nodes.push(b)
    })?;
    let refs_root = state.tm.root(REFS);
    space_map::for_each_node(&mut state.tm, refs_root, records::RID_SPACE, &mut |b| {
        sm_nodes.push(b)
    })?;
    for b in sm_nodes {
        *recount.meta.entry(b).or_default() += 1;
    }
    for block in 0..meta_blocks {
        let expected = recount.meta.get(&block).copied().unwrap_or(0);
        let found = u64::from(state.tm.count(block)?);
        if found != expected {
            return Err(corrupt(format!(
                "metadata block {block}: count {found}, referenced {expected} times"
            )));
        }
    }

    // Records: counts equal the leaf entries naming them; blocks hold
    // exactly the live records (and the pack cursor's hold).
    let all = records::all(&mut state.tm)?;
    let counts: BTreeMap<u64, u32> = records::all_counts(&mut state.tm)?.into_iter().collect();
    let missing = |rid: &&u64| all.binary_search_by_key(*rid, |(r, _)| *r).is_err();
    if let Some(rid) = counts.keys().find(missing) {
        return Err(corrupt(format!("record {rid}: counted but missing")));
    }
    let mut data: BTreeMap<u64, u64> = BTreeMap::new();
    let mut packed_blocks: BTreeSet<u64> = BTreeSet::new();
    let mut stored = 0;
    for (rid, rec) in &all {
        let expected = recount.records.remove(rid).unwrap_or(0);
        let found = counts.get(rid).copied().unwrap_or(0);
        if u64::from(found) != expected || expected == 0 {
            return Err(corrupt(format!(
                "record {rid}: count {found}, referenced {expected} times"
            )));
        }
        *data.entry(rec.block).or_default() += 1;
        stored += rec.stored_bytes();
        if rec.packed() {
            packed_blocks.insert(rec.block);
        }
    }
    if let Some((rid, _)) = recount.records.first_key_value() {
        return Err(corrupt(format!("record {rid} mapped but missing")));
    }
    if let Some(pack) = decode_pack(state.tm.root(PACK)) {
        *data.entry(pack.block).or_default() += 1;
        packed_blocks.insert(pack.block);
    }
    let mut used = 0;
    for block in 0..data_blocks {
        let expected = data.get(&block).copied().unwrap_or(0);
        let found = u64::from(state.tm.data_count(block)?);
        if found != expected {
            return Err(corrupt(format!(
                "data block {block}: count {found}, holds {expected} records"
            )));
        }
        used += u64::from(found > 0);
    }
    if used != state.tm.data_used() {
        return Err(corrupt(format!(
            "{used} data blocks used, counter says {}",
            state.tm.data_used()
        )));
    }
    if stored != state.tm.root(STORED) || packed_blocks.len() as u64 != state.tm.root(PACKED) {
        return Err(corrupt(
            "stored bytes or packed block counters wrong".into(),
        ));
    }

    // The dedup index names live records indexed under its keys.
    let mut index = Vec::new();
    let root = state.tm.root(INDEX);
    btree::range(
        &mut state.tm,
        &index_info()?,
        root,
        0,
        u64::MAX,
        &mut |k, v| {
            index.push((k, le(v)));
            true
        },
    )?;
    let by_id: BTreeMap<u64, _> = all.iter().map(|(rid, rec)| (*rid, rec)).collect();
    for (key, rid) in index {
        if by_id.get(&rid).and_then(|r| r.index_key) != Some(key) {
            return Err(corrupt(format!("dedup index entry {key:#x} stale")));
        }
    }

    // The catalog's counters match the maps.
    let volumes: Vec<(u32, u64, u64, u64, u64)> = state
        .volumes
        .iter()
        .map(|(&id, v)| (id, v.root, v.size_blocks, v.mapped, v.zeros))
        .collect();
    for (id, root, size, mapped, zeros) in volumes {
        let (mut n, mut z, mut past) = (0u64, 0u64, false);
        btree::range(&mut state.tm, &mapping, root, 0, u64::MAX, &mut |k, v| {
            n += 1;
            z += u64::from(le(v) == ZERO_ENTRY);
            past |= k >= size;
            true
        })?;
        if n != mapped || z != zeros || past {
            return Err(corrupt(format!(
                "volume {id}: {n} entries ({z} zero), catalog says {mapped} ({zeros})"
            )));
        }
    }
    Ok(())
}
