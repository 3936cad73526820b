// SPDX-License-Identifier: GPL-2.0

//! Physical Region Page lists: how the device finds a request's data.
//!
//! PRP entry 1 may start anywhere (dword aligned) in a memory page; every
//! further entry addresses a whole memory page. Two pages fit in the command
//! itself; more go to a PRP list page whose address is PRP entry 2. The
//! driver's queue limits (`virt_boundary_mask`, `max_hw_sectors`) make every
//! request fit one list page, so lists are never chained; a request that
//! breaks the rules anyway is refused here, never sent.

use kernel::prelude::*;

/// Memory page size of the device (CC.MPS = 0).
pub(crate) const PAGE: u64 = 4096;

/// Entries in one PRP list page.
pub(crate) const LIST_ENTRIES: usize = (PAGE / 8) as usize;

/// The data pointer of a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Prps {
    /// PRP entry 1.
    pub(crate) prp1: u64,
    /// PRP entry 2: unused (0), the second page, or the list's address.
    pub(crate) prp2: u64,
    /// Entries written to the list page.
    pub(crate) list_len: usize,
}

/// Builds the PRPs for DMA `segments` (address, length) that must cover
/// `total` bytes, writing list entries (little-endian) into `list`, which
/// the device sees at `list_addr`.
///
/// Fails with `EINVAL` if a segment boundary is not page aligned where PRPs
/// need it, if the segments do not add up to `total`, or if the list page
/// would overflow.
pub(crate) fn build(
    segments: impl Iterator<Item = (u64, u32)>,
    total: u64,
    list: &mut [u64],
    list_addr: u64,
) -> Result<Prps> {
    let mut prp1 = 0u64;
    let mut second = 0u64;
    let mut count = 0usize;
    let mut covered = 0u64;
    let mut need_aligned_start = false;

    let mut push = |addr: u64, count: &mut usize| -> Result {
        match *count {
            0 => prp1 = addr,
            1 => second = addr,
            n => {
                // Entry n (n >= 2) goes to list slot n - 1; slot 0 holds the
                // second entry once a list is needed.
                let slot = list.get_mut(n - 1).ok_or(EINVAL)?;
                *slot = addr.to_le();
            }
        }
        *count += 1;
        Ok(())
    };

    for (addr, len) in segments {
        if len == 0 {
            return Err(EINVAL);
        }
        let end = addr.checked_add(u64::from(len)).ok_or(EINVAL)?;
        if count == 0 {
            if addr & 0x3 != 0 {
                return Err(EINVAL);
            }
        } else if need_aligned_start || addr % PAGE != 0 {
            return Err(EINVAL);
        }
        push(addr, &mut count)?;
        let mut page = (addr & !(PAGE - 1)) + PAGE;
        while page < end {
            push(page, &mut count)?;
            page += PAGE;
        }
        covered += u64::from(len);
        // The next segment may only follow if this one ends on a page.
        need_aligned_start = end % PAGE != 0;
    }

    if covered != total || count == 0 {
        return Err(EINVAL);
    }
    Ok(match count {
        1 => Prps {
            prp1,
            prp2: 0,
            list_len: 0,
        },
        2 => Prps {
            prp1,
            prp2: second,
            list_len: 0,
        },
        n => {
            let first = list.first_mut().ok_or(EINVAL)?;
            *first = second.to_le();
            Prps {
                prp1,
                prp2: list_addr,
                list_len: n - 1,
            }
        }
    })
}

#[kunit_tests(dpublk_prp)]
mod tests {
    use super::*;

    const LIST_ADDR: u64 = 0x7000_0000;

    fn run(segs: &[(u64, u32)], total: u64, list: &mut [u64]) -> Result<Prps> {
        build(segs.iter().copied(), total, list, LIST_ADDR)
    }

    #[test]
    fn one_page() {
        let mut list = [0u64; 8];
        let p = run(&[(0x1000, 4096)], 4096, &mut list).unwrap_or(Prps {
            prp1: 1,
            prp2: 1,
            list_len: 9,
        });
        assert_eq!(
            p,
            Prps {
                prp1: 0x1000,
                prp2: 0,
                list_len: 0
            }
        );
        let p = run(&[(0x1200, 512)], 512, &mut list).unwrap_or(Prps {
            prp1: 1,
            prp2: 1,
            list_len: 9,
        });
        assert_eq!(
            p,
            Prps {
                prp1: 0x1200,
                prp2: 0,
                list_len: 0
            }
        );
    }

    #[test]
    fn two_pages() {
        let mut list = [0u64; 8];
        // An unaligned 4 KiB buffer straddles two pages.
        let p = run(&[(0x1e00, 4096)], 4096, &mut list).unwrap_or(Prps {
            prp1: 1,
            prp2: 1,
            list_len: 9,
        });
        assert_eq!(
            p,
            Prps {
                prp1: 0x1e00,
                prp2: 0x2000,
                list_len: 0
            }
        );
        let p = run(&[(0x1000, 4096), (0x9000, 4096)], 8192, &mut list).unwrap_or(Prps {
            prp1: 1,
            prp2: 1,
            list_len: 9,
        });
        assert_eq!(
            p,
            Prps {
                prp1: 0x1000,
                prp2: 0x9000,
                list_len: 0
            }
        );
    }

    #[test]
    fn list() {
        let mut list = [0u64; 8];
        let p = run(
            &[(0x1800, 2048), (0x4000, 8192), (0x8000, 100)],
            2048 + 8192 + 100,
            &mut list,
        )
        .unwrap_or(Prps {
            prp1: 1,
            prp2: 1,
            list_len: 9,
        });
        assert_eq!(
            p,
            Prps {
                prp1: 0x1800,
                prp2: LIST_ADDR,
                list_len: 3
            }
        );
        assert_eq!(u64::from_le(list[0]), 0x4000);
        assert_eq!(u64::from_le(list[1]), 0x5000);
        assert_eq!(u64::from_le(list[2]), 0x8000);
    }

    #[test]
    fn refuses_bad_layouts() {
        let mut list = [0u64; 2];
        // A middle segment that does not start on a page.
        assert!(run(&[(0x1000, 4096), (0x9200, 512)], 4608, &mut list).is_err());
        // A segment that ends mid-page followed by another one.
        assert!(run(&[(0x1000, 512), (0x9000, 512)], 1024, &mut list).is_err());
        // Not dword aligned.
        assert!(run(&[(0x1001, 512)], 512, &mut list).is_err());
        // Length mismatch with the request.
        assert!(run(&[(0x1000, 4096)], 8192, &mut list).is_err());
        // Too many pages for the list.
        assert!(run(&[(0x1000, 5 * 4096)], 5 * 4096, &mut list).is_err());
        // Empty.
        assert!(run(&[], 0, &mut list).is_err());
        assert!(run(&[(0x1000, 0)], 0, &mut list).is_err());
    }
}
