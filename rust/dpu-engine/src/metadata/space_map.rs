//! Space maps: a reference count (`u32`) per block, stored in metadata
//! blocks as a radix tree of fixed shape.
//!
//! Leaves hold [`COUNTS_PER_LEAF`] counts, index nodes
//! [`POINTERS_PER_NODE`] pointers; the tree has as many index levels as the
//! number of blocks needs (three cover 2^37 blocks, half an exbibyte of
//! 4 KiB blocks). A null pointer stands for a subtree of zero counts, so a
//! fresh map of any size is one null root and the map grows with the
//! blocks in use. Every change shadows the path from the root through the
//! transaction manager, like any other metadata: the committed map is
//! never written in place.
//!
//! The same structure serves the metadata blocks (whose changes the
//! transaction manager buffers and applies in steps and at commit, since
//! changing the map allocates metadata blocks itself) and the data blocks.

use super::transaction::TransactionManager;
use super::{blank_block, le_u32, le_u64, put_u32, put_u64, MetaError, MetaResult, META_BLOCK};

pub const SM_NODE_MAGIC: u32 = u32::from_le_bytes(*b"SMnd");
pub const SM_LEAF_MAGIC: u32 = u32::from_le_bytes(*b"SMlf");
const BODY: usize = 32;
pub const COUNTS_PER_LEAF: u64 = ((META_BLOCK - BODY) / 4) as u64;
pub const POINTERS_PER_NODE: u64 = ((META_BLOCK - BODY) / 8) as u64;

/// Index levels above the leaves for a map of `entries` counts.
pub fn levels(entries: u64) -> u32 {
    let mut span = COUNTS_PER_LEAF;
    let mut levels = 0;
    while span < entries {
        span = span.saturating_mul(POINTERS_PER_NODE);
        levels += 1;
    }
    levels
}

/// Counts under one subtree whose root is at `level` (0: a leaf).
fn span(level: u32) -> u64 {
    (0..level).fold(COUNTS_PER_LEAF, |s, _| s.saturating_mul(POINTERS_PER_NODE))
}

fn out_of_range(index: u64, entries: u64) -> MetaError {
    MetaError::InvalidArgument(format!("block {index} outside a space map of {entries}"))
}

/// The count of `index` in the map rooted at `root`.
pub fn get(tm: &mut TransactionManager, root: u64, entries: u64, index: u64) -> MetaResult<u32> {
    if index >= entries {
        return Err(out_of_range(index, entries));
    }
    let mut block = root;
    let mut level = levels(entries);
    let mut rest = index;
    while level > 0 {
        if block == 0 {
            return Ok(0);
        }
        let node = tm.read(block, SM_NODE_MAGIC)?;
        let child = span(level - 1);
        block = le_u64(&node, BODY + 8 * (rest / child) as usize);
        rest %= child;
        level -= 1;
    }
    if block == 0 {
        return Ok(0);
    }
    let leaf = tm.read(block, SM_LEAF_MAGIC)?;
    Ok(le_u32(&leaf, BODY + 4 * rest as usize))
}

/// Sets the count of `index` to `value`; returns the map's new root.
pub fn set(
    tm: &mut TransactionManager,
    root: u64,
    entries: u64,
    index: u64,
    value: u32,
) -> MetaResult<u64> {
    if index >= entries {
        return Err(out_of_range(index, entries));
    }
    set_in(tm, root, levels(entries), index, value, false)
}

/// As [`set`], and a node left holding only zeros is freed (its parent
/// then holds a null pointer): for maps whose indexes are used once, in
/// order (record ids), so that the map stays as large as the live part.
/// Not for the space maps the transaction manager itself keeps, whose
/// updates must not free blocks while it applies them.
pub fn set_pruning(
    tm: &mut TransactionManager,
    root: u64,
    entries: u64,
    index: u64,
    value: u32,
) -> MetaResult<u64> {
    if index >= entries {
        return Err(out_of_range(index, entries));
    }
    set_in(tm, root, levels(entries), index, value, true)
}

fn set_in(
    tm: &mut TransactionManager,
    block: u64,
    level: u32,
    index: u64,
    value: u32,
    prune: bool,
) -> MetaResult<u64> {
    let magic = if level == 0 {
        SM_LEAF_MAGIC
    } else {
        SM_NODE_MAGIC
    };
    if block == 0 && value == 0 {
        return Ok(0);
    }
    let at = if block == 0 {
        let at = tm.new_block()?;
        tm.write(at, blank_block(magic))?;
        at
    } else {
        // Space map nodes are never shared: shadowing moves them (or
        // keeps them where they are, once moved in this transaction).
        tm.shadow(block, magic)?.0
    };
    // Changed in place: a path already moved in this transaction costs
    // no copy, and an index node whose child stayed put no write at all.
    let stored = if level == 0 {
        tm.modify(at, magic, |data| {
            put_u32(data, BODY + 4 * index as usize, value)
        })?;
        u64::from(value)
    } else {
        let child_span = span(level - 1);
        let slot = BODY + 8 * (index / child_span) as usize;
        let child = le_u64(&tm.read(at, magic)?, slot);
        let moved = set_in(tm, child, level - 1, index % child_span, value, prune)?;
        if moved != child {
            tm.modify(at, magic, |data| put_u64(data, slot, moved))?;
        }
        moved
    };
    // Only a change to zero can empty a node; then every slot is checked.
    if prune && stored == 0 && tm.read(at, magic)?[BODY..].iter().all(|&b| b == 0) {
        tm.dec(at)?;
        return Ok(0);
    }
    Ok(at)
}

/// The first index at or after `from` whose count is zero.
pub fn next_zero(
    tm: &mut TransactionManager,
    root: u64,
    entries: u64,
    from: u64,
) -> MetaResult<Option<u64>> {
    if from >= entries {
        return Ok(None);
    }
    scan(tm, root, levels(entries), 0, from, entries)
}

fn scan(
    tm: &mut TransactionManager,
    block: u64,
    level: u32,
    base: u64,
    from: u64,
    entries: u64,
) -> MetaResult<Option<u64>> {
    let end = base.saturating_add(span(level)).min(entries);
    let start = from.max(base);
    if start >= end {
        return Ok(None);
    }
    if block == 0 {
        return Ok(Some(start));
    }
    if level == 0 {
        let leaf = tm.read(block, SM_LEAF_MAGIC)?;
        return Ok((start..end).find(|i| le_u32(&leaf, BODY + 4 * (i - base) as usize) == 0));
    }
    let node = tm.read(block, SM_NODE_MAGIC)?;
    let child_span = span(level - 1);
    let first = (start - base) / child_span;
    for slot in first..POINTERS_PER_NODE {
        let child_base = base + slot * child_span;
        if child_base >= end {
            break;
        }
        let child = le_u64(&node, BODY + 8 * slot as usize);
        if let Some(found) = scan(tm, child, level - 1, child_base, from, entries)? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// Calls `visit` with every block of the map's tree (for checks).
pub fn for_each_node(
    tm: &mut TransactionManager,
    root: u64,
    entries: u64,
    visit: &mut dyn FnMut(u64),
) -> MetaResult<()> {
    walk(tm, root, levels(entries), visit)
}

fn walk(
    tm: &mut TransactionManager,
    block: u64,
    level: u32,
    visit: &mut dyn FnMut(u64),
) -> MetaResult<()> {
    if block == 0 {
        return Ok(());
    }
    visit(block);
    if level == 0 {
        tm.read(block, SM_LEAF_MAGIC)?;
        return Ok(());
    }
    let node = tm.read(block, SM_NODE_MAGIC)?;
    for slot in 0..POINTERS_PER_NODE as usize {
        let child = le_u64(&node, BODY + 8 * slot);
        walk(tm, child, level - 1, visit)?;
    }
    Ok(())
}

/// Calls `visit` with every nonzero count, in index order (for checks).
pub fn for_each_count(
    tm: &mut TransactionManager,
    root: u64,
    entries: u64,
    visit: &mut dyn FnMut(u64, u32),
) -> MetaResult<()> {
    visit_counts(tm, root, levels(entries), 0, visit)
}

fn visit_counts(
    tm: &mut TransactionManager,
    block: u64,
    level: u32,
    base: u64,
    visit: &mut dyn FnMut(u64, u32),
) -> MetaResult<()> {
    if block == 0 {
        return Ok(());
    }
    if level == 0 {
        let leaf = tm.read(block, SM_LEAF_MAGIC)?;
        for i in 0..COUNTS_PER_LEAF {
            let count = le_u32(&leaf, BODY + 4 * i as usize);
            if count != 0 {
                visit(base + i, count);
            }
        }
        return Ok(());
    }
    let node = tm.read(block, SM_NODE_MAGIC)?;
    let child_span = span(level - 1);
    for slot in 0..POINTERS_PER_NODE {
        let child = le_u64(&node, BODY + 8 * slot as usize);
        visit_counts(tm, child, level - 1, base + slot * child_span, visit)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_grow_with_the_map() {
        assert_eq!(levels(1), 0);
        assert_eq!(levels(COUNTS_PER_LEAF), 0);
        assert_eq!(levels(COUNTS_PER_LEAF + 1), 1);
        assert_eq!(levels(COUNTS_PER_LEAF * POINTERS_PER_NODE), 1);
        assert_eq!(levels(COUNTS_PER_LEAF * POINTERS_PER_NODE + 1), 2);
        // 4 TiB of 4 KiB blocks.
        assert_eq!(levels(1 << 30), 3);
        assert!(levels(u64::MAX) < 8);
    }
}
