//! Garbage collection: choose a victim segment by cost-benefit, move its
//! live blocks to the log head, and let the segment go free once nothing
//! maps into it.
//!
//! GC works in steps of at most one victim stripe per call of
//! [`Inner::gc_step`] beyond its budget, under the array's lock, so a
//! foreground write that has to help never waits for more than a few
//! stripes' worth of moves. A moved block is appended exactly as a host
//! write of the same LBA would be, after checking (under the same lock)
//! that the PMT still points at the victim's copy and that no newer copy
//! waits in the stripe buffer: the log's order is the order of the
//! mapping changes, which is what roll-forward relies on.

use super::format::{Header, BLOCK, NO_LBA, SUMMARY_MAGIC};
use super::state::{Cleaning, Inner, SegState};
use crate::media::MediaResult;

/// Cost-benefit score of a sealed segment (Rosenblum and Ousterhout's
/// LFS cleaner): the free space cleaning gains, weighted by how long the
/// data has stayed put, over the cost of reading the segment and writing
/// its live part. `u` is the live fraction.
pub(super) fn score(live: u64, capacity: u64, age: u64) -> f64 {
    if capacity == 0 {
        return f64::MAX;
    }
    let u = live as f64 / capacity as f64;
    (1.0 - u) * (age as f64 + 1.0) / (1.0 + u)
}

impl Inner {
    /// The sealed segment with the best cost-benefit score that has
    /// something to gain, if any.
    pub(super) fn choose_victim(&self) -> Option<u64> {
        let per_stripe = self.g.stripe_data();
        (0..self.g.segments)
            .filter(|s| !self.pending_free.contains(s))
            .filter_map(|s| {
                let seg = self.segs[s as usize];
                let capacity = seg.stripes * per_stripe;
                (seg.state == SegState::Sealed && seg.live > 0 && seg.live < capacity).then(|| {
                    let age = self.clock.saturating_sub(seg.sealed_at);
                    (s, score(seg.live, capacity, age))
                })
            })
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(s, _)| s)
    }

    /// One GC step: picks a victim if none is being cleaned, then moves
    /// the live blocks of its next stripes until about `budget` blocks
    /// have been moved or the victim is done. Returns whether it did any
    /// work (false: nothing worth cleaning).
    pub(super) fn gc_step(&mut self, budget: u64) -> MediaResult<bool> {
        let cleaning = match self.cleaning {
            Some(c) => c,
            None => match self.choose_victim() {
                Some(victim) => Cleaning { victim, stripe: 0 },
                None => return Ok(false),
            },
        };
        self.cleaning = Some(cleaning);
        let Cleaning { victim, mut stripe } = cleaning;
        let stripes = self.segs[victim as usize].stripes;
        let mut moved = 0;
        while stripe < stripes && moved < budget.max(1) {
            moved += self.move_stripe(victim, stripe)?;
            stripe += 1;
            // Appends may have sealed segments and committed: a victim
            // emptied meanwhile is done.
            if self.segs[victim as usize].state != SegState::Sealed {
                break;
            }
        }
        let done = stripe >= stripes || self.segs[victim as usize].state != SegState::Sealed;
        if done {
            self.cleaning = None;
            self.counters.segments_cleaned += 1;
        } else {
            self.cleaning = Some(Cleaning { victim, stripe });
        }
        Ok(true)
    }

    /// Moves the live blocks of one stripe of `victim`; returns how many.
    fn move_stripe(&mut self, victim: u64, stripe: u64) -> MediaResult<u64> {
        let g = self.g.clone();
        // The summary says which LBA each block held; the PMT says whether
        // it still does. A summary that cannot be read leaves the stripe's
        // blocks where they are: their live count keeps the segment from
        // being freed.
        let summary_location = g.location(victim, stripe, 0);
        let (segment, _, _) = g.split(summary_location);
        let Some(bytes) = self.read_stripe(segment, stripe, false)? else {
            return Ok(0);
        };
        let Some(header) = Header::decode(&bytes[..BLOCK as usize], SUMMARY_MAGIC) else {
            return Ok(0);
        };
        let epoch = self.segs[victim as usize].epoch;
        if header.uuid != g.uuid
            || header.epoch != epoch
            || header.segment != victim
            || header.stripe != stripe
        {
            return Ok(0);
        }
        let mut moved = 0;
        for (i, entry) in header.entries.iter().enumerate() {
            if entry.lba == NO_LBA || self.buffered.contains_key(&entry.lba) {
                continue;
            }
            let location = g.location(victim, stripe, i as u64 + 1);
            let live = self
                .pmt_lookup(entry.lba)?
                .is_some_and(|(at, crc)| at == location && crc == entry.crc);
            if !live {
                continue;
            }
            let at = (i + 1) * BLOCK as usize;
            let data = bytes[at..at + BLOCK as usize].to_vec();
            let data = if super::format::block_crc(&data) == entry.crc {
                data
            } else {
                self.read_location(location, entry.crc)?
            };
            self.counters.gc_bytes += BLOCK;
            self.append(entry.lba, data)?;
            moved += 1;
        }
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::score;

    #[test]
    fn cost_benefit_prefers_empty_and_old_segments() {
        assert!(score(10, 100, 5) > score(50, 100, 5));
        assert!(score(50, 100, 500) > score(50, 100, 5));
        // Cold segments are cleaned at higher utilisation than hot ones.
        assert!(score(70, 100, 10_000) > score(30, 100, 10));
    }
}
