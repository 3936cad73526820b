//! The pool's block allocator: one bit per physical block.
//!
//! The allocator's state is never stored: at open it is rebuilt from the
//! committed metadata (superblocks, checkpoint blocks, the locations of live
//! records), so a block that was allocated but never committed is free again
//! after a crash and space cannot leak across a restart.

/// One bit per block, set when the block is in use.
pub(crate) struct SpaceMap {
    bits: Vec<u64>,
    blocks: u64,
    free: u64,
    /// Next-fit cursor: allocation resumes where it stopped, which spreads
    /// writes and keeps allocation cheap on a mostly full pool.
    cursor: u64,
}

impl SpaceMap {
    /// A map of `blocks` free blocks.
    pub(crate) fn new(blocks: u64) -> Self {
        SpaceMap {
            bits: vec![0; blocks.div_ceil(64) as usize],
            blocks,
            free: blocks,
            cursor: 0,
        }
    }

    pub(crate) fn blocks(&self) -> u64 {
        self.blocks
    }

    pub(crate) fn free(&self) -> u64 {
        self.free
    }

    /// Adds blocks at the end (the media grew).
    pub(crate) fn grow(&mut self, blocks: u64) {
        if blocks > self.blocks {
            self.bits.resize(blocks.div_ceil(64) as usize, 0);
            self.free += blocks - self.blocks;
            self.blocks = blocks;
        }
    }

    pub(crate) fn is_used(&self, block: u64) -> bool {
        block >= self.blocks || self.bits[(block / 64) as usize] & (1 << (block % 64)) != 0
    }

    /// Marks `block` used; false if it already was (or lies outside).
    pub(crate) fn claim(&mut self, block: u64) -> bool {
        if self.is_used(block) {
            return false;
        }
        self.bits[(block / 64) as usize] |= 1 << (block % 64);
        self.free -= 1;
        true
    }

    /// Returns `block` to the free space.
    pub(crate) fn release(&mut self, block: u64) {
        if block < self.blocks && self.is_used(block) {
            self.bits[(block / 64) as usize] &= !(1 << (block % 64));
            self.free += 1;
        }
    }

    /// Allocates one block, or `None` when the map is full.
    pub(crate) fn alloc(&mut self) -> Option<u64> {
        if self.free == 0 {
            return None;
        }
        let words = self.bits.len() as u64;
        let start = self.cursor / 64;
        for step in 0..=words {
            let word = (start + step) % words;
            let bits = self.bits[word as usize];
            if bits == u64::MAX {
                continue;
            }
            // Within the cursor's word, the first pass takes only bits at or
            // after the cursor; the last pass (step == words) takes the rest.
            let mask = if step == 0 {
                !0u64 << (self.cursor % 64)
            } else {
                !0
            };
            let candidates = !bits & mask;
            if candidates == 0 {
                continue;
            }
            let block = word * 64 + u64::from(candidates.trailing_zeros());
            if block >= self.blocks {
                continue;
            }
            self.claim(block);
            self.cursor = block + 1;
            return Some(block);
        }
        // The last step revisited the cursor's word without the mask, so
        // every bit has been looked at: `free` was wrong, which cannot happen.
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_every_block_once_then_refuses() {
        let mut map = SpaceMap::new(130);
        assert!(map.claim(0));
        assert!(!map.claim(0));
        let mut seen = std::collections::HashSet::new();
        while let Some(b) = map.alloc() {
            assert!(b < 130 && b != 0);
            assert!(seen.insert(b), "block {b} handed out twice");
        }
        assert_eq!(seen.len(), 129);
        assert_eq!(map.free(), 0);
        map.release(5);
        map.release(5);
        assert_eq!(map.free(), 1);
        assert_eq!(map.alloc(), Some(5));
        map.grow(200);
        assert_eq!(map.free(), 70);
        assert!(map.alloc().is_some_and(|b| (130..200).contains(&b)));
    }
}
