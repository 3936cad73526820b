//! Layouts and the row codec: how one row of chunks (one chunk per member)
//! is computed from data and recovered from survivors.
//!
//! A row has one slot per member. Data slots come first, then redundancy
//! (copies or parity). RAID6 and erasure-coded rows rotate slots over
//! members by one per row, so parity writes spread over every member the way
//! md's left-symmetric layout spreads them.
//!
//! The codec is position-independent inside a chunk: the parity of bytes
//! `a..b` depends only on bytes `a..b` of the data slots. That holds bytewise
//! for GF(2^8) RAID6 and per 64-byte block for `reed-solomon-simd`, which is
//! why callers may encode any sector-aligned sub-range of a row.

use crate::media::{MediaError, MediaResult};

use super::gf256;

/// How member media are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// RAID0: every member holds data, nothing survives a failure.
    Stripe { members: usize },
    /// RAID10: `copies` (2 or 3) adjacent members mirror each data chunk.
    Mirror { members: usize, copies: usize },
    /// RAID6: `members - 2` data chunks plus P (XOR) and Q (GF(2^8)).
    Raid6 { members: usize },
    /// Reed-Solomon erasure coding with `data` + `parity` members.
    Erasure { data: usize, parity: usize },
}

/// What `Layout::decode` found out about a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Locate {
    /// Every present slot agrees with the others.
    Clean,
    /// Exactly one slot disagrees; here is what it should hold.
    Located { slot: usize, content: Vec<u8> },
    /// The slots disagree and no single slot explains it (or no redundancy
    /// is left to tell which one is wrong).
    Ambiguous,
}

fn unrecoverable(why: impl Into<String>) -> MediaError {
    MediaError::Unrecoverable(why.into())
}

impl Layout {
    /// Number of member media.
    pub fn members(&self) -> usize {
        match *self {
            Layout::Stripe { members } | Layout::Mirror { members, .. } => members,
            Layout::Raid6 { members } => members,
            Layout::Erasure { data, parity } => data + parity,
        }
    }

    /// Data chunks per row.
    pub fn data_slots(&self) -> usize {
        match *self {
            Layout::Stripe { members } => members,
            Layout::Mirror { members, copies } => members / copies,
            Layout::Raid6 { members } => members - 2,
            Layout::Erasure { data, .. } => data,
        }
    }

    /// Failed members the layout survives whichever they are.
    pub fn tolerance(&self) -> usize {
        match *self {
            Layout::Stripe { .. } => 0,
            Layout::Mirror { copies, .. } => copies - 1,
            Layout::Raid6 { .. } => 2,
            Layout::Erasure { parity, .. } => parity,
        }
    }

    /// Whether writes need the journal: only layouts with redundancy have a
    /// write hole.
    pub fn is_redundant(&self) -> bool {
        self.tolerance() > 0
    }

    /// Checks that the layout is one this engine can run.
    pub fn validate(&self) -> MediaResult<()> {
        let ok = match *self {
            Layout::Stripe { members } => members >= 1,
            Layout::Mirror { members, copies } => {
                (copies == 2 || copies == 3) && members >= copies && members.is_multiple_of(copies)
            }
            Layout::Raid6 { members } => members >= 4,
            Layout::Erasure { data, parity } => {
                data >= 1
                    && parity >= 1
                    && reed_solomon_simd::ReedSolomonEncoder::supports(data, parity)
            }
        };
        if !ok {
            return Err(unrecoverable(format!("unsupported layout {self:?}")));
        }
        super::format::check_member_count(self.members())
    }

    /// The superblock encoding: kind and two parameters.
    pub fn to_parts(&self) -> (u8, u8, u8, u16) {
        let members = self.members() as u16;
        match *self {
            Layout::Stripe { .. } => (0, 0, 0, members),
            Layout::Mirror { copies, .. } => (1, copies as u8, 0, members),
            Layout::Raid6 { .. } => (2, 0, 0, members),
            Layout::Erasure { data, parity } => (3, data as u8, parity as u8, members),
        }
    }

    /// Inverse of [`Layout::to_parts`]; `None` for unknown or invalid values.
    pub fn from_parts(kind: u8, a: u8, b: u8, members: u16) -> Option<Layout> {
        let members = members as usize;
        let layout = match kind {
            0 => Layout::Stripe { members },
            1 => Layout::Mirror {
                members,
                copies: a as usize,
            },
            2 => Layout::Raid6 { members },
            3 => Layout::Erasure {
                data: a as usize,
                parity: b as usize,
            },
            _ => return None,
        };
        (layout.validate().is_ok() && layout.members() == members).then_some(layout)
    }

    fn rotates(&self) -> bool {
        matches!(self, Layout::Raid6 { .. } | Layout::Erasure { .. })
    }

    /// The member holding slot `slot` of row `row`.
    pub fn member_of(&self, row: u64, slot: usize) -> usize {
        let n = self.members();
        if self.rotates() {
            (slot + (row % n as u64) as usize) % n
        } else {
            slot
        }
    }

    /// The slot member `member` holds in row `row`.
    pub fn slot_of(&self, row: u64, member: usize) -> usize {
        let n = self.members();
        if self.rotates() {
            (member + n - (row % n as u64) as usize) % n
        } else {
            member
        }
    }

    /// The slots holding data chunk `data` of a row (several for mirrors).
    pub fn slots_of_data(&self, data: usize) -> std::ops::Range<usize> {
        match *self {
            Layout::Mirror { copies, .. } => data * copies..(data + 1) * copies,
            _ => data..data + 1,
        }
    }

    /// The data chunk slot `slot` holds or protects: `Some` for data slots
    /// and mirror copies, `None` for parity.
    pub fn data_of_slot(&self, slot: usize) -> Option<usize> {
        match *self {
            Layout::Mirror { copies, .. } => Some(slot / copies),
            _ => (slot < self.data_slots()).then_some(slot),
        }
    }

    /// Whether every data chunk of a row can be recovered when the slots
    /// flagged in `missing` are unavailable.
    pub fn can_decode(&self, missing: &[bool]) -> bool {
        match *self {
            Layout::Mirror { .. } => {
                (0..self.data_slots()).all(|d| self.slots_of_data(d).any(|s| !missing[s]))
            }
            _ => missing.iter().filter(|m| **m).count() <= self.tolerance(),
        }
    }

    /// Computes every slot of a row from its data chunks.
    pub fn encode(&self, data: &[Vec<u8>]) -> MediaResult<Vec<Vec<u8>>> {
        let mut row = Vec::with_capacity(self.members());
        match *self {
            Layout::Stripe { .. } => row.extend(data.iter().cloned()),
            Layout::Mirror { copies, .. } => {
                for chunk in data {
                    for _ in 0..copies {
                        row.push(chunk.clone());
                    }
                }
            }
            Layout::Raid6 { .. } => {
                let len = data.first().map_or(0, Vec::len);
                let slices: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
                let mut p = vec![0u8; len];
                let mut q = vec![0u8; len];
                gf256::raid6_syndromes(&slices, &mut p, &mut q);
                row.extend(data.iter().cloned());
                row.push(p);
                row.push(q);
            }
            Layout::Erasure { data: k, parity } => {
                let recovery = reed_solomon_simd::encode(k, parity, data)
                    .map_err(|e| unrecoverable(format!("erasure encode: {e}")))?;
                row.extend(data.iter().cloned());
                row.extend(recovery);
            }
        }
        Ok(row)
    }

    /// Recovers the data chunks of a row from the slots present.
    pub fn decode(&self, row: &[Option<Vec<u8>>]) -> MediaResult<Vec<Vec<u8>>> {
        let k = self.data_slots();
        let missing: Vec<bool> = row.iter().map(Option::is_none).collect();
        if !self.can_decode(&missing) {
            return Err(unrecoverable(format!(
                "{} of {} members unavailable in a {self:?} row",
                missing.iter().filter(|m| **m).count(),
                row.len()
            )));
        }
        match *self {
            Layout::Stripe { .. } => Ok(row.iter().flatten().cloned().collect()),
            Layout::Mirror { .. } => (0..k)
                .map(|d| {
                    self.slots_of_data(d)
                        .find_map(|s| row[s].clone())
                        .ok_or_else(|| unrecoverable("no copy left"))
                })
                .collect(),
            Layout::Raid6 { .. } => decode_raid6(k, row),
            Layout::Erasure { data, parity } => decode_erasure(data, parity, row),
        }
    }

    /// Compares the present slots with what their data implies and, if they
    /// disagree, tries to find the single slot that is wrong: for each
    /// present slot, recompute the row without it; the slot is the culprit
    /// when every other slot then agrees. With no redundancy to spare (or
    /// several culprits) the answer is `Ambiguous`.
    pub fn locate(&self, row: &[Option<Vec<u8>>]) -> MediaResult<Locate> {
        let full = self.encode(&self.decode(row)?)?;
        if agrees(row, &full, None) {
            return Ok(Locate::Clean);
        }
        let mut found = None;
        for suspect in (0..row.len()).filter(|s| row[*s].is_some()) {
            let mut without: Vec<Option<Vec<u8>>> = row.to_vec();
            without[suspect] = None;
            let missing: Vec<bool> = without.iter().map(Option::is_none).collect();
            if !self.can_decode(&missing) {
                continue;
            }
            let candidate = self.encode(&self.decode(&without)?)?;
            // A suspect only counts if some other slot could have disagreed:
            // with nothing left to compare, every suspect would "explain" it.
            let witnesses = self.witnesses(&without, suspect);
            if witnesses && agrees(&without, &candidate, None) {
                if found.is_some() {
                    return Ok(Locate::Ambiguous);
                }
                found = Some((suspect, candidate[suspect].clone()));
            }
        }
        Ok(match found {
            Some((slot, content)) => Locate::Located { slot, content },
            None => Locate::Ambiguous,
        })
    }

    /// Whether, with `row` (missing `suspect`), a wrong value in `suspect`
    /// would have been caught by at least one remaining redundant slot.
    fn witnesses(&self, row: &[Option<Vec<u8>>], suspect: usize) -> bool {
        match *self {
            Layout::Mirror { .. } => self
                .data_of_slot(suspect)
                .is_some_and(|d| self.slots_of_data(d).filter(|s| row[*s].is_some()).count() >= 2),
            _ => row.iter().filter(|s| s.is_none()).count() < self.tolerance(),
        }
    }
}

/// Whether every present slot of `row` equals the same slot of `full`.
fn agrees(row: &[Option<Vec<u8>>], full: &[Vec<u8>], skip: Option<usize>) -> bool {
    row.iter()
        .zip(full)
        .enumerate()
        .all(|(i, (have, want))| Some(i) == skip || have.as_ref().is_none_or(|h| h == want))
}

fn decode_raid6(k: usize, row: &[Option<Vec<u8>>]) -> MediaResult<Vec<Vec<u8>>> {
    let len = row.iter().flatten().map(Vec::len).next().unwrap_or(0);
    let lost: Vec<usize> = (0..k).filter(|d| row[*d].is_none()).collect();
    let (p, q) = (&row[k], &row[k + 1]);
    let mut data: Vec<Vec<u8>> = (0..k)
        .map(|d| row[d].clone().unwrap_or_else(|| vec![0u8; len]))
        .collect();
    match (lost.as_slice(), p, q) {
        ([], _, _) => {}
        ([x], Some(p), _) => {
            // D_x = P ^ (every other data chunk).
            let mut out = p.clone();
            for (d, chunk) in data.iter().enumerate() {
                if d != *x {
                    gf256::xor_into(&mut out, chunk);
                }
            }
            data[*x] = out;
        }
        ([x], None, Some(q)) => {
            // D_x = (Q ^ Σ_{i≠x} 2^i·D_i) / 2^x.
            let mut out = q.clone();
            for (d, chunk) in data.iter().enumerate() {
                if d != *x {
                    gf256::mul_xor_into(&mut out, chunk, gf256::pow2(d));
                }
            }
            gf256::scale(&mut out, gf256::inv(gf256::pow2(*x)));
            data[*x] = out;
        }
        ([x, y], Some(p), Some(q)) => {
            // With Pxy = D_x ^ D_y and Qxy = 2^x·D_x ^ 2^y·D_y (the other
            // chunks folded out): D_x = (2^y·Pxy ^ Qxy) / (2^x ^ 2^y).
            let mut pxy = p.clone();
            let mut qxy = q.clone();
            for (d, chunk) in data.iter().enumerate() {
                if d != *x && d != *y {
                    gf256::xor_into(&mut pxy, chunk);
                    gf256::mul_xor_into(&mut qxy, chunk, gf256::pow2(d));
                }
            }
            let (gx, gy) = (gf256::pow2(*x), gf256::pow2(*y));
            let mut dx = qxy;
            gf256::mul_xor_into(&mut dx, &pxy, gy);
            gf256::scale(&mut dx, gf256::inv(gx ^ gy));
            let mut dy = pxy;
            gf256::xor_into(&mut dy, &dx);
            data[*x] = dx;
            data[*y] = dy;
        }
        _ => return Err(unrecoverable("RAID6 row lost more than P and Q cover")),
    }
    Ok(data)
}

fn decode_erasure(k: usize, m: usize, row: &[Option<Vec<u8>>]) -> MediaResult<Vec<Vec<u8>>> {
    if (0..k).all(|d| row[d].is_some()) {
        return Ok(row[..k].iter().flatten().cloned().collect());
    }
    let original = (0..k).filter_map(|d| row[d].as_ref().map(|c| (d, c)));
    let recovery = (0..m).filter_map(|p| row[k + p].as_ref().map(|c| (p, c)));
    let mut restored = reed_solomon_simd::decode(k, m, original, recovery)
        .map_err(|e| unrecoverable(format!("erasure decode: {e}")))?;
    (0..k)
        .map(|d| match &row[d] {
            Some(chunk) => Ok(chunk.clone()),
            None => restored
                .remove(&d)
                .ok_or_else(|| unrecoverable("erasure decoder did not restore a chunk")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layouts() -> Vec<Layout> {
        vec![
            Layout::Stripe { members: 3 },
            Layout::Mirror {
                members: 4,
                copies: 2,
            },
            Layout::Mirror {
                members: 6,
                copies: 3,
            },
            Layout::Raid6 { members: 4 },
            Layout::Raid6 { members: 7 },
            Layout::Erasure { data: 4, parity: 2 },
            Layout::Erasure { data: 3, parity: 3 },
        ]
    }

    fn pattern(k: usize, len: usize, seed: u8) -> Vec<Vec<u8>> {
        (0..k)
            .map(|d| {
                (0..len)
                    .map(|i| (i as u8).wrapping_mul(31) ^ (d as u8).wrapping_mul(17) ^ seed)
                    .collect()
            })
            .collect()
    }

    /// Every subset of `n` slots, as flags, with at most `max` set.
    fn subsets(n: usize, max: usize) -> Vec<Vec<bool>> {
        (0u32..1 << n)
            .filter(|m| m.count_ones() as usize <= max)
            .map(|m| (0..n).map(|i| m & (1 << i) != 0).collect())
            .collect()
    }

    #[test]
    fn every_decodable_loss_pattern_recovers_the_data() {
        for layout in layouts() {
            let data = pattern(layout.data_slots(), 1024, 0x5a);
            let row = layout.encode(&data).unwrap();
            for lost in subsets(layout.members(), layout.members()) {
                let partial: Vec<Option<Vec<u8>>> = row
                    .iter()
                    .zip(&lost)
                    .map(|(c, l)| (!l).then(|| c.clone()))
                    .collect();
                let result = layout.decode(&partial);
                if layout.can_decode(&lost) {
                    assert_eq!(result.unwrap(), data, "{layout:?} lost {lost:?}");
                } else {
                    assert!(
                        matches!(result, Err(MediaError::Unrecoverable(_))),
                        "{layout:?} lost {lost:?}"
                    );
                }
            }
            let tolerated = subsets(layout.members(), layout.tolerance());
            assert!(tolerated.iter().all(|l| layout.can_decode(l)));
        }
    }

    #[test]
    fn parity_of_a_sub_range_is_the_sub_range_of_the_parity() {
        for layout in layouts() {
            let data = pattern(layout.data_slots(), 4096, 3);
            let full = layout.encode(&data).unwrap();
            let part: Vec<Vec<u8>> = data.iter().map(|c| c[1024..2560].to_vec()).collect();
            let sub = layout.encode(&part).unwrap();
            for (s, f) in sub.iter().zip(&full) {
                assert_eq!(s.as_slice(), &f[1024..2560], "{layout:?}");
            }
        }
    }

    #[test]
    fn raid6_parity_is_md_compatible() {
        let layout = Layout::Raid6 { members: 5 };
        let data = vec![vec![0x01u8; 8], vec![0x02u8; 8], vec![0x80u8; 8]];
        let row = layout.encode(&data).unwrap();
        assert_eq!(row[3], vec![0x83u8; 8]);
        // Q = 1·1 + 2·2 + 4·0x80; 4·0x80 = 0x200 reduced = 0x1d ·2 = 0x3a.
        assert_eq!(row[4], vec![0x01 ^ 0x04 ^ 0x3a; 8]);
    }

    #[test]
    fn locate_finds_one_corrupted_slot_when_redundancy_allows() {
        for layout in layouts() {
            let data = pattern(layout.data_slots(), 512, 9);
            let row = layout.encode(&data).unwrap();
            for bad in 0..layout.members() {
                let mut damaged: Vec<Option<Vec<u8>>> = row.iter().cloned().map(Some).collect();
                if let Some(chunk) = damaged[bad].as_mut() {
                    chunk[100] ^= 0x44;
                }
                let found = layout.locate(&damaged).unwrap();
                let can_locate = match layout {
                    Layout::Stripe { .. } => false,
                    Layout::Mirror { copies, .. } => copies >= 3,
                    _ => layout.tolerance() >= 2,
                };
                if can_locate {
                    assert_eq!(
                        found,
                        Locate::Located {
                            slot: bad,
                            content: row[bad].clone()
                        },
                        "{layout:?} slot {bad}"
                    );
                } else if layout.is_redundant() {
                    assert_eq!(found, Locate::Ambiguous, "{layout:?} slot {bad}");
                }
            }
            let clean: Vec<Option<Vec<u8>>> = row.iter().cloned().map(Some).collect();
            assert_eq!(layout.locate(&clean).unwrap(), Locate::Clean);
        }
    }

    #[test]
    fn rotation_is_a_bijection_per_row() {
        for layout in layouts() {
            for row in 0..20u64 {
                for slot in 0..layout.members() {
                    let member = layout.member_of(row, slot);
                    assert_eq!(layout.slot_of(row, member), slot);
                }
            }
        }
    }

    #[test]
    fn invalid_layouts_are_rejected() {
        for layout in [
            Layout::Mirror {
                members: 5,
                copies: 2,
            },
            Layout::Mirror {
                members: 4,
                copies: 4,
            },
            Layout::Raid6 { members: 3 },
            Layout::Erasure { data: 0, parity: 2 },
            Layout::Erasure { data: 4, parity: 0 },
            Layout::Stripe { members: 65 },
        ] {
            assert!(layout.validate().is_err(), "{layout:?}");
        }
    }
}
