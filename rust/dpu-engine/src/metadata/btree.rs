//! Copy-on-write B-trees of `u64` keys and fixed-size values, whose nodes
//! are reference-counted metadata blocks.
//!
//! A tree is its root block. Every change shadows the path it walks
//! (through [`TransactionManager::shadow`]) and returns the new root, which
//! takes over the caller's reference; the old root stays intact for
//! whoever else holds it. Sharing a whole tree (a snapshot) is one
//! reference on the root ([`share`]). When a shadowed node was shared, its
//! copy takes a reference on each child (and, for [`ValueKind::DataBlock`]
//! leaves, on each data block) then and there: the increments are lazy,
//! proportional to the nodes a write touches, never to the tree.
//!
//! Node format (after the 16-byte block header): flags (`u32`, bit 0 leaf),
//! entry count, value size, capacity (`u32` each), then `capacity` keys
//! (`u64`) and `capacity` values. Internal nodes hold child block numbers
//! as values, each keyed by the smallest key of its subtree (the first key
//! of a node bounds from below only). Nodes split on the way down when
//! full, so an insert never walks back up; a remove drops nodes that become
//! empty, merges a node under a quarter full with a sibling when both fit
//! in one, and collapses a root with a single child.

use super::transaction::TransactionManager;
use super::{blank_block, le_u32, le_u64, put_u32, put_u64, MetaError, MetaResult, META_BLOCK};

pub const BTREE_MAGIC: u32 = u32::from_le_bytes(*b"BTnd");
const BODY: usize = 32;
const LEAF: u32 = 1;
/// No tree is deeper (a 4-entry fan-out over 2^64 keys is 32 levels): a
/// longer path means damaged metadata with a cycle.
const MAX_DEPTH: usize = 40;

fn too_deep() -> MetaError {
    MetaError::Corrupt("B-tree deeper than any valid one (a cycle?)".into())
}

/// What a tree's values refer to, for the references it holds on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// Plain bytes.
    Plain,
    /// The first 8 bytes are a data block number whose reference count
    /// (in the data space map) the tree holds one of per entry.
    DataBlock,
    /// The first 8 bytes name something the tree holds one reference on
    /// per entry, counted by the owner through
    /// [`TransactionManager::value_ref`].
    Counted,
}

impl ValueKind {
    fn counts(self) -> bool {
        self != ValueKind::Plain
    }
}

/// Takes (`by` = 1) or drops (`by` = -1) an entry's reference on what its
/// value names.
fn value_ref(
    tm: &mut TransactionManager,
    kind: ValueKind,
    value: &[u8],
    by: i64,
) -> MetaResult<()> {
    let named = le_u64(value, 0);
    match (kind, by > 0) {
        (ValueKind::Plain, _) => Ok(()),
        (ValueKind::DataBlock, true) => tm.inc_data(named),
        (ValueKind::DataBlock, false) => tm.dec_data(named).map(|_| ()),
        (ValueKind::Counted, _) => tm.value_ref(named, by),
    }
}

/// The shape of a tree: its value size and kind, and at most how many
/// entries a node takes (small ones make deep trees for tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeInfo {
    pub value_size: usize,
    pub kind: ValueKind,
    pub max_entries: usize,
}

impl TreeInfo {
    /// A tree of `value_size`-byte values with full-size nodes.
    pub fn new(value_size: usize, kind: ValueKind) -> MetaResult<Self> {
        Self::with_fanout(value_size, kind, usize::MAX)
    }

    /// As [`TreeInfo::new`], with at most `max_entries` per node.
    pub fn with_fanout(value_size: usize, kind: ValueKind, max_entries: usize) -> MetaResult<Self> {
        if value_size == 0 || (kind.counts() && value_size < 8) {
            return Err(MetaError::InvalidArgument(format!(
                "bad B-tree value size {value_size}"
            )));
        }
        let max_entries = max_entries.min(capacity(value_size.max(8)));
        if max_entries < 4 {
            return Err(MetaError::InvalidArgument(format!(
                "B-tree nodes of {max_entries} entries are too small"
            )));
        }
        Ok(TreeInfo {
            value_size,
            kind,
            max_entries,
        })
    }
}

fn capacity(value_size: usize) -> usize {
    (META_BLOCK - BODY) / (8 + value_size)
}

/// A decoded node.
#[derive(Debug, Clone)]
struct Node {
    leaf: bool,
    value_size: usize,
    capacity: usize,
    keys: Vec<u64>,
    /// `keys.len() * value_size` bytes.
    values: Vec<u8>,
}

impl Node {
    fn empty(leaf: bool, info: &TreeInfo) -> Node {
        Node {
            leaf,
            value_size: if leaf { info.value_size } else { 8 },
            capacity: info.max_entries,
            keys: Vec::new(),
            values: Vec::new(),
        }
    }

    fn decode(block: u64, data: &[u8], info: &TreeInfo) -> MetaResult<Node> {
        let bad = |why: &str| MetaError::Corrupt(format!("B-tree node {block}: {why}"));
        let flags = le_u32(data, 16);
        let count = le_u32(data, 20) as usize;
        let value_size = le_u32(data, 24) as usize;
        let capacity = le_u32(data, 28) as usize;
        let leaf = flags & LEAF != 0;
        let want = if leaf { info.value_size } else { 8 };
        if value_size != want || capacity > self::capacity(value_size) || count > capacity {
            return Err(bad("header does not match the tree"));
        }
        let keys: Vec<u64> = (0..count).map(|i| le_u64(data, BODY + 8 * i)).collect();
        if keys.windows(2).any(|w| w[0] >= w[1]) {
            return Err(bad("keys out of order"));
        }
        let at = BODY + 8 * capacity;
        Ok(Node {
            leaf,
            value_size,
            capacity,
            keys,
            values: data[at..at + count * value_size].to_vec(),
        })
    }

    fn encode(&self) -> Vec<u8> {
        let mut data = blank_block(BTREE_MAGIC);
        put_u32(&mut data, 16, if self.leaf { LEAF } else { 0 });
        put_u32(&mut data, 20, self.keys.len() as u32);
        put_u32(&mut data, 24, self.value_size as u32);
        put_u32(&mut data, 28, self.capacity as u32);
        for (i, key) in self.keys.iter().enumerate() {
            put_u64(&mut data, BODY + 8 * i, *key);
        }
        let at = BODY + 8 * self.capacity;
        data[at..at + self.values.len()].copy_from_slice(&self.values);
        data
    }

    fn len(&self) -> usize {
        self.keys.len()
    }

    fn full(&self) -> bool {
        self.len() >= self.capacity
    }

    fn value(&self, i: usize) -> &[u8] {
        &self.values[i * self.value_size..(i + 1) * self.value_size]
    }

    fn child(&self, i: usize) -> u64 {
        le_u64(self.value(i), 0)
    }

    fn set_value(&mut self, i: usize, value: &[u8]) {
        let size = self.value_size;
        self.values[i * size..(i + 1) * size].copy_from_slice(value);
    }

    fn insert_at(&mut self, i: usize, key: u64, value: &[u8]) {
        self.keys.insert(i, key);
        let at = i * self.value_size;
        self.values.splice(at..at, value.iter().copied());
    }

    fn remove_at(&mut self, i: usize) -> Vec<u8> {
        self.keys.remove(i);
        let at = i * self.value_size;
        self.values.drain(at..at + self.value_size).collect()
    }

    /// The entry whose subtree holds `key` (internal nodes).
    fn child_index(&self, key: u64) -> usize {
        self.keys.partition_point(|k| *k <= key).saturating_sub(1)
    }

    /// Moves the upper half into a new node; for a key past every key of
    /// the node (ascending ids, appends), only the last entry, so that
    /// trees filled in key order end up with full nodes, not half-full
    /// ones.
    fn split(&mut self, key: u64) -> Node {
        let appending = self.keys.last().is_some_and(|&last| key > last);
        let half = if appending {
            self.len() - 1
        } else {
            self.len() / 2
        };
        Node {
            leaf: self.leaf,
            value_size: self.value_size,
            capacity: self.capacity,
            keys: self.keys.split_off(half),
            values: self.values.split_off(half * self.value_size),
        }
    }
}

fn read_node(tm: &mut TransactionManager, info: &TreeInfo, block: u64) -> MetaResult<Node> {
    let data = tm.read(block, BTREE_MAGIC)?;
    Node::decode(block, &data, info)
}

fn write_node(tm: &mut TransactionManager, block: u64, node: &Node) -> MetaResult<()> {
    tm.write(block, node.encode())
}

/// Takes a reference on everything `node` refers to.
fn reference_children(tm: &mut TransactionManager, info: &TreeInfo, node: &Node) -> MetaResult<()> {
    for i in 0..node.len() {
        if !node.leaf {
            tm.inc(node.child(i))?;
        } else {
            value_ref(tm, info.kind, node.value(i), 1)?;
        }
    }
    Ok(())
}

/// Shadows `block`; a shared original makes the copy reference its
/// children itself.
fn shadow_node(
    tm: &mut TransactionManager,
    info: &TreeInfo,
    block: u64,
) -> MetaResult<(u64, Node)> {
    let (copy, shared) = tm.shadow(block, BTREE_MAGIC)?;
    let node = read_node(tm, info, copy)?;
    if shared {
        reference_children(tm, info, &node)?;
    }
    Ok((copy, node))
}

/// A new, empty tree (its root holds the caller's reference).
pub fn empty(tm: &mut TransactionManager, info: &TreeInfo) -> MetaResult<u64> {
    let block = tm.new_block()?;
    write_node(tm, block, &Node::empty(true, info))?;
    Ok(block)
}

/// Another reference to the whole tree: a snapshot, in O(1).
pub fn share(tm: &mut TransactionManager, root: u64) -> MetaResult<u64> {
    tm.inc(root)?;
    Ok(root)
}

fn check_value(info: &TreeInfo, value: &[u8]) -> MetaResult<()> {
    if value.len() != info.value_size {
        return Err(MetaError::InvalidArgument(format!(
            "value of {} bytes in a tree of {}-byte values",
            value.len(),
            info.value_size
        )));
    }
    Ok(())
}

/// A node read in place, without decoding it: what a lookup needs (one
/// binary search per level, no copy of the node's keys and values).
struct NodeView<'a> {
    data: &'a [u8],
    leaf: bool,
    count: usize,
    value_size: usize,
    capacity: usize,
}

impl<'a> NodeView<'a> {
    /// The same header checks as [`Node::decode`]; the key order is
    /// checked when a node is decoded to be changed.
    fn new(block: u64, data: &'a [u8], info: &TreeInfo) -> MetaResult<Self> {
        let leaf = le_u32(data, 16) & LEAF != 0;
        let count = le_u32(data, 20) as usize;
        let value_size = le_u32(data, 24) as usize;
        let capacity = le_u32(data, 28) as usize;
        let want = if leaf { info.value_size } else { 8 };
        if value_size != want || capacity > self::capacity(value_size) || count > capacity {
            return Err(MetaError::Corrupt(format!(
                "B-tree node {block}: header does not match the tree"
            )));
        }
        Ok(NodeView {
            data,
            leaf,
            count,
            value_size,
            capacity,
        })
    }

    fn key(&self, i: usize) -> u64 {
        le_u64(self.data, BODY + 8 * i)
    }

    /// Entries whose key is at most `key`.
    fn at_most(&self, key: u64) -> usize {
        let (mut lo, mut hi) = (0, self.count);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.key(mid) <= key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    fn value(&self, i: usize) -> &'a [u8] {
        // In bounds: the header check keeps `capacity` entries of
        // `value_size` bytes inside the block, and `i < count <= capacity`.
        let at = BODY + 8 * self.capacity + i * self.value_size;
        &self.data[at..at + self.value_size]
    }
}

/// The value of `key`.
pub fn lookup(
    tm: &mut TransactionManager,
    info: &TreeInfo,
    root: u64,
    key: u64,
) -> MetaResult<Option<Vec<u8>>> {
    let mut block = root;
    for _ in 0..MAX_DEPTH {
        let data = tm.read(block, BTREE_MAGIC)?;
        let node = NodeView::new(block, &data, info)?;
        let below = node.at_most(key);
        if node.leaf {
            let found = below > 0 && node.key(below - 1) == key;
            return Ok(found.then(|| node.value(below - 1).to_vec()));
        }
        if node.count == 0 {
            return Err(MetaError::Corrupt("empty internal B-tree node".into()));
        }
        block = le_u64(node.value(below.saturating_sub(1)), 0);
    }
    Err(too_deep())
}

/// Sets `key` to `value`; returns the new root. For
/// [`ValueKind::DataBlock`] trees the tree takes over the caller's
/// reference on the new data block and drops its reference on a replaced
/// one.
pub fn insert(
    tm: &mut TransactionManager,
    info: &TreeInfo,
    root: u64,
    key: u64,
    value: &[u8],
) -> MetaResult<u64> {
    check_value(info, value)?;
    let (root, mut node) = shadow_node(tm, info, root)?;
    if node.full() {
        // The root splits in place: its halves move to two new blocks.
        let right = node.split(key);
        let (left_block, right_block) = (tm.new_block()?, tm.new_block()?);
        write_node(tm, left_block, &node)?;
        write_node(tm, right_block, &right)?;
        let mut top = Node::empty(false, info);
        top.insert_at(0, node.keys[0], &left_block.to_le_bytes());
        top.insert_at(1, right.keys[0], &right_block.to_le_bytes());
        node = top;
    }
    let mut block = root;
    for _ in 0..MAX_DEPTH {
        if node.leaf {
            match node.keys.binary_search(&key) {
                Ok(i) => {
                    let old = node.value(i).to_vec();
                    node.set_value(i, value);
                    write_node(tm, block, &node)?;
                    value_ref(tm, info.kind, &old, -1)?;
                }
                Err(i) => {
                    node.insert_at(i, key, value);
                    write_node(tm, block, &node)?;
                }
            }
            return Ok(root);
        }
        let i = node.child_index(key);
        if key < node.keys[i] {
            node.keys[i] = key;
        }
        let (child_block, mut child) = shadow_node(tm, info, node.child(i))?;
        node.set_value(i, &child_block.to_le_bytes());
        let mut next_block = child_block;
        if child.full() {
            let right = child.split(key);
            let right_block = tm.new_block()?;
            write_node(tm, right_block, &right)?;
            node.insert_at(i + 1, right.keys[0], &right_block.to_le_bytes());
            if key >= right.keys[0] {
                write_node(tm, child_block, &child)?;
                child = right;
                next_block = right_block;
            }
        }
        write_node(tm, block, &node)?;
        block = next_block;
        node = child;
    }
    Err(too_deep())
}

/// Removes `key`; returns the new root and the removed value. For
/// [`ValueKind::DataBlock`] trees the tree's reference on the data block
/// is dropped.
pub fn remove(
    tm: &mut TransactionManager,
    info: &TreeInfo,
    root: u64,
    key: u64,
) -> MetaResult<(u64, Option<Vec<u8>>)> {
    if lookup(tm, info, root, key)?.is_none() {
        return Ok((root, None));
    }
    // Shadow the path, remembering each node and the entry taken.
    let mut path: Vec<(u64, Node, usize)> = Vec::new();
    let (mut block, mut node) = shadow_node(tm, info, root)?;
    while !node.leaf {
        if path.len() >= MAX_DEPTH {
            return Err(too_deep());
        }
        let i = node.child_index(key);
        let (child_block, child) = shadow_node(tm, info, node.child(i))?;
        node.set_value(i, &child_block.to_le_bytes());
        path.push((block, node, i));
        block = child_block;
        node = child;
    }
    let i = node
        .keys
        .binary_search(&key)
        .map_err(|_| MetaError::Corrupt("key vanished during remove".into()))?;
    let removed = node.remove_at(i);
    value_ref(tm, info.kind, &removed, -1)?;
    // Write back up the path: an empty node leaves its parent, and a node
    // under a quarter full merges with a sibling when both fit in one.
    let mut emptied = node.len() == 0;
    write_node(tm, block, &node)?;
    while let Some((parent_block, mut parent, i)) = path.pop() {
        if emptied {
            parent.remove_at(i);
            tm.dec(block)?;
        } else if node.len() < node.capacity / 4 && parent.len() > 1 {
            merge_with_sibling(tm, info, &mut parent, i, block, node)?;
        }
        emptied = parent.len() == 0;
        write_node(tm, parent_block, &parent)?;
        block = parent_block;
        node = parent;
    }
    let mut root = block;
    if emptied {
        // Everything went: the root becomes an empty leaf.
        write_node(tm, root, &Node::empty(true, info))?;
    }
    // A root with one child hands its place to it.
    for _ in 0..MAX_DEPTH {
        let top = read_node(tm, info, root)?;
        if top.leaf || top.len() != 1 {
            return Ok((root, Some(removed)));
        }
        let only = top.child(0);
        tm.dec(root)?;
        root = only;
    }
    Err(too_deep())
}

/// Merges `parent`'s child `i` (at `block`, holding `node`, both written)
/// with its right sibling, or its left one for the last child, if their
/// entries fit in one node: the right node's entries move into the left
/// one, and the right node leaves the parent and is freed. The moved
/// entries keep their references: the sibling's copy took its own when it
/// was shadowed from a shared original.
fn merge_with_sibling(
    tm: &mut TransactionManager,
    info: &TreeInfo,
    parent: &mut Node,
    i: usize,
    block: u64,
    node: Node,
) -> MetaResult<()> {
    let j = if i + 1 < parent.len() { i + 1 } else { i - 1 };
    let sibling = read_node(tm, info, parent.child(j))?;
    if node.len() + sibling.len() > node.capacity {
        return Ok(());
    }
    let (sibling_block, sibling) = shadow_node(tm, info, parent.child(j))?;
    let (left, left_block, mut merged, right, right_block) = if j > i {
        (i, block, node, sibling, sibling_block)
    } else {
        (j, sibling_block, sibling, node, block)
    };
    merged.keys.extend_from_slice(&right.keys);
    merged.values.extend_from_slice(&right.values);
    write_node(tm, left_block, &merged)?;
    parent.set_value(left, &left_block.to_le_bytes());
    parent.remove_at(left + 1);
    tm.dec(right_block)?;
    Ok(())
}

/// Calls `visit` with the entries of keys in `start..end`, in order, until
/// it returns false.
pub fn range(
    tm: &mut TransactionManager,
    info: &TreeInfo,
    root: u64,
    start: u64,
    end: u64,
    visit: &mut dyn FnMut(u64, &[u8]) -> bool,
) -> MetaResult<()> {
    walk_range(tm, info, root, start..end, 0, visit).map(|_| ())
}

fn walk_range(
    tm: &mut TransactionManager,
    info: &TreeInfo,
    block: u64,
    keys: std::ops::Range<u64>,
    depth: usize,
    visit: &mut dyn FnMut(u64, &[u8]) -> bool,
) -> MetaResult<bool> {
    if depth > MAX_DEPTH {
        return Err(too_deep());
    }
    let (start, end) = (keys.start, keys.end);
    let node = read_node(tm, info, block)?;
    for i in 0..node.len() {
        if node.leaf {
            let key = node.keys[i];
            if key >= end {
                return Ok(false);
            }
            if key >= start && !visit(key, node.value(i)) {
                return Ok(false);
            }
            continue;
        }
        let next = node.keys.get(i + 1).copied();
        if next.is_some_and(|n| n <= start) {
            continue;
        }
        if node.keys[i] >= end && i > 0 {
            return Ok(false);
        }
        if !walk_range(tm, info, node.child(i), start..end, depth + 1, visit)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Drops a reference to the tree at `root`; nodes (and, for
/// [`ValueKind::DataBlock`] trees, data blocks) no other tree shares are
/// freed. Work is proportional to what is freed.
pub fn release(tm: &mut TransactionManager, info: &TreeInfo, root: u64) -> MetaResult<()> {
    let mut pending = vec![root];
    while let Some(block) = pending.pop() {
        let node = read_node(tm, info, block)?;
        if !tm.dec(block)? {
            continue;
        }
        for i in 0..node.len() {
            if !node.leaf {
                pending.push(node.child(i));
            } else {
                value_ref(tm, info.kind, node.value(i), -1)?;
            }
        }
    }
    Ok(())
}

/// Drops one reference on node `block` only: if it was the last, the node
/// is freed, a leaf of a [`ValueKind::DataBlock`] tree drops its data
/// block references, and an internal node's children are returned, each
/// still holding the reference the node gave it, for the caller to drop
/// in turn. [`release`] in steps of bounded work, for background deletion.
pub fn release_node(
    tm: &mut TransactionManager,
    info: &TreeInfo,
    block: u64,
) -> MetaResult<Vec<u64>> {
    let node = read_node(tm, info, block)?;
    if !tm.dec(block)? {
        return Ok(Vec::new());
    }
    if node.leaf {
        for i in 0..node.len() {
            value_ref(tm, info.kind, node.value(i), -1)?;
        }
        return Ok(Vec::new());
    }
    Ok((0..node.len()).map(|i| node.child(i)).collect())
}

/// What [`release_node_part`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Released {
    /// As [`release_node`]: the children to drop next (none for a leaf).
    Node(Vec<u64>),
    /// Part of a leaf whose last reference this was: the first entries
    /// dropped their references and left it, and the rest is now in this
    /// block, which holds the caller's reference instead.
    Part(u64),
}

/// As [`release_node`], in smaller steps: a leaf whose last reference
/// this is drops its first entries' references, at most `most` of them
/// and none once `until` has passed (the first always), and keeps the
/// rest in a copy (a shadow, the original freed) that the caller releases
/// later; a copy left empty is freed too. A leaf drops a reference per
/// entry (hundreds, each a tree update, and more where what the entry
/// names dies with it), so this bounds the work of one call by count and
/// by time.
pub fn release_node_part(
    tm: &mut TransactionManager,
    info: &TreeInfo,
    block: u64,
    most: usize,
    until: Option<std::time::Instant>,
) -> MetaResult<Released> {
    let node = read_node(tm, info, block)?;
    if !node.leaf || !info.kind.counts() || node.len() <= 1 || tm.count(block)? > 1 {
        return release_node(tm, info, block).map(Released::Node);
    }
    let (copy, shared) = tm.shadow(block, BTREE_MAGIC)?;
    if shared {
        return Err(MetaError::Corrupt(format!(
            "B-tree node {block}: shared while its last reference is released"
        )));
    }
    let mut node = read_node(tm, info, copy)?;
    let mut dropped = 0;
    while node.len() > 0 {
        let late = || until.is_some_and(|t| std::time::Instant::now() >= t);
        if dropped >= most.max(1) || (dropped > 0 && late()) {
            break;
        }
        let value = node.remove_at(0);
        value_ref(tm, info.kind, &value, -1)?;
        dropped += 1;
    }
    if node.len() == 0 {
        // Everything went: the copy holds nothing to release later.
        tm.dec(copy)?;
        return Ok(Released::Node(Vec::new()));
    }
    write_node(tm, copy, &node)?;
    Ok(Released::Part(copy))
}

/// What [`for_each_node`] calls: a node's block, its children, its data
/// blocks; returns whether to descend.
pub type NodeVisitor<'a> = dyn FnMut(u64, &[u64], &[u64]) -> bool + 'a;

/// Walks the tree for checks: calls `visit` with each node's block, its
/// children and its data blocks, and descends into the children only when
/// `visit` returns true (a check that has seen a shared node stops there).
pub fn for_each_node(
    tm: &mut TransactionManager,
    info: &TreeInfo,
    root: u64,
    visit: &mut NodeVisitor<'_>,
) -> MetaResult<()> {
    let mut pending = vec![root];
    while let Some(block) = pending.pop() {
        let node = read_node(tm, info, block)?;
        let children: Vec<u64> = if node.leaf {
            Vec::new()
        } else {
            (0..node.len()).map(|i| node.child(i)).collect()
        };
        let data: Vec<u64> = if node.leaf && info.kind.counts() {
            (0..node.len()).map(|i| le_u64(node.value(i), 0)).collect()
        } else {
            Vec::new()
        };
        if visit(block, &children, &data) {
            pending.extend(children);
        }
    }
    Ok(())
}
