//! Arithmetic in GF(2^8) and the RAID6 P + Q syndromes built on it.
//!
//! The field is the one Linux md uses for RAID6: polynomial
//! x^8 + x^4 + x^3 + x^2 + 1 (0x11d) with generator 2, so `Q = Σ 2^i · D_i`.
//! Keeping md's field means an on-media RAID6 stripe has the same parity
//! bytes md would compute, which makes cross-checking with md possible.

/// The reduction polynomial, without the x^8 term folded in by the shift.
const POLY: u16 = 0x11d;

/// `EXP[i] = 2^i`, doubled in length so `EXP[log a + log b]` needs no modulo.
static EXP: [u8; 512] = build_exp();
/// `LOG[a] = i` with `2^i = a`; `LOG[0]` is unused because 0 has no log.
static LOG: [u8; 256] = build_log();

const fn build_exp() -> [u8; 512] {
    let mut table = [0u8; 512];
    let mut value: u16 = 1;
    let mut i = 0;
    while i < 512 {
        table[i] = value as u8;
        value <<= 1;
        if value & 0x100 != 0 {
            value ^= POLY;
        }
        i += 1;
    }
    table
}

const fn build_log() -> [u8; 256] {
    let exp = build_exp();
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 255 {
        table[exp[i] as usize] = i as u8;
        i += 1;
    }
    table
}

/// Multiplies two field elements.
pub fn mul(a: u8, b: u8) -> u8 {
    if a == 0 || b == 0 {
        return 0;
    }
    EXP[LOG[a as usize] as usize + LOG[b as usize] as usize]
}

/// Returns `2^power`, the Q coefficient of data slot `power`.
pub fn pow2(power: usize) -> u8 {
    EXP[power % 255]
}

/// The multiplicative inverse; `a` must not be 0 (callers divide only by
/// differences of distinct powers of 2, which are never 0).
pub fn inv(a: u8) -> u8 {
    if a == 0 {
        return 0;
    }
    EXP[255 - LOG[a as usize] as usize]
}

/// A 256-entry table for multiplying many bytes by the same constant: one
/// lookup per byte instead of two log lookups and a branch.
fn mul_table(c: u8) -> [u8; 256] {
    let mut table = [0u8; 256];
    for (x, entry) in table.iter_mut().enumerate() {
        *entry = mul(c, x as u8);
    }
    table
}

/// `dst ^= src`, a machine word at a time.
pub fn xor_into(dst: &mut [u8], src: &[u8]) {
    let mut d_words = dst.chunks_exact_mut(8);
    let mut s_words = src.chunks_exact(8);
    for (d, s) in (&mut d_words).zip(&mut s_words) {
        let x = word(d) ^ word(s);
        d.copy_from_slice(&x.to_ne_bytes());
    }
    for (d, s) in d_words.into_remainder().iter_mut().zip(s_words.remainder()) {
        *d ^= s;
    }
}

/// Eight bytes as one word; the slice is always exactly 8 bytes long.
fn word(bytes: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(bytes);
    u64::from_ne_bytes(w)
}

/// Multiplies each of the eight bytes packed in `w` by 2: shift every byte
/// left and reduce the bytes whose top bit fell out by 0x1d (the low byte
/// of the polynomial), as Linux's int64 RAID6 code does.
fn mul2_word(w: u64) -> u64 {
    let high = w & 0x8080_8080_8080_8080;
    let reduce = (high >> 7).wrapping_mul(0x1d);
    ((w << 1) & 0xfefe_fefe_fefe_fefe) ^ reduce
}

/// `dst ^= c · src`.
pub fn mul_xor_into(dst: &mut [u8], src: &[u8], c: u8) {
    let table = mul_table(c);
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= table[*s as usize];
    }
}

/// `buf = c · buf`.
pub fn scale(buf: &mut [u8], c: u8) {
    let table = mul_table(c);
    for b in buf.iter_mut() {
        *b = table[*b as usize];
    }
}

/// Computes P and Q over `data` (every slice the same length).
///
/// Q is evaluated by Horner's rule from the last data chunk down,
/// `Q = (((D_{k-1})·2 ^ D_{k-2})·2 ^ ...)·2 ^ D_0`, so the only
/// multiplication is by 2, done eight bytes at a time.
pub fn raid6_syndromes(data: &[&[u8]], p: &mut [u8], q: &mut [u8]) {
    p.fill(0);
    q.fill(0);
    let len = p.len();
    let words = len / 8 * 8;
    for at in (0..words).step_by(8) {
        let (mut pw, mut qw) = (0u64, 0u64);
        for d in data.iter().rev() {
            let dw = word(&d[at..at + 8]);
            pw ^= dw;
            qw = mul2_word(qw) ^ dw;
        }
        p[at..at + 8].copy_from_slice(&pw.to_ne_bytes());
        q[at..at + 8].copy_from_slice(&qw.to_ne_bytes());
    }
    for (i, d) in data.iter().enumerate() {
        xor_into(&mut p[words..], &d[words..]);
        mul_xor_into(&mut q[words..], &d[words..], pow2(i));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_axioms_hold_for_every_pair() {
        for a in 0..=255u8 {
            assert_eq!(mul(a, 1), a);
            assert_eq!(mul(a, 0), 0);
            if a != 0 {
                assert_eq!(mul(a, inv(a)), 1, "inverse of {a}");
            }
            for b in 0..=255u8 {
                assert_eq!(mul(a, b), mul(b, a));
            }
        }
    }

    #[test]
    fn multiplication_matches_carryless_reference() {
        // A bit-by-bit multiply, independent of the tables.
        fn slow(mut a: u8, mut b: u8) -> u8 {
            let mut r = 0u8;
            while b != 0 {
                if b & 1 != 0 {
                    r ^= a;
                }
                let carry = a & 0x80 != 0;
                a <<= 1;
                if carry {
                    a ^= (POLY & 0xff) as u8;
                }
                b >>= 1;
            }
            r
        }
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                assert_eq!(mul(a, b), slow(a, b));
            }
        }
    }

    #[test]
    fn word_syndromes_match_bytewise_definition() {
        // 3 data chunks of 21 bytes: two whole words and a ragged tail.
        let data: Vec<Vec<u8>> = (0..3u8)
            .map(|d| {
                (0..21u8)
                    .map(|i| i.wrapping_mul(37) ^ d.wrapping_mul(101))
                    .collect()
            })
            .collect();
        let slices: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        let mut p = vec![0u8; 21];
        let mut q = vec![0u8; 21];
        raid6_syndromes(&slices, &mut p, &mut q);
        for at in 0..21 {
            let want_p = data.iter().fold(0, |acc, d| acc ^ d[at]);
            let want_q = data
                .iter()
                .enumerate()
                .fold(0, |acc, (i, d)| acc ^ mul(pow2(i), d[at]));
            assert_eq!((p[at], q[at]), (want_p, want_q), "byte {at}");
        }
        for w in [0u64, u64::MAX, 0x8001_7f80_ff00_1234] {
            let bytes = w.to_ne_bytes().map(|b| mul(2, b));
            assert_eq!(mul2_word(w), u64::from_ne_bytes(bytes));
        }
    }

    #[test]
    fn syndromes_of_known_vector() {
        let d0 = [1u8, 0, 0xff];
        let d1 = [1u8, 2, 0x01];
        let mut p = [0u8; 3];
        let mut q = [0u8; 3];
        raid6_syndromes(&[&d0, &d1], &mut p, &mut q);
        assert_eq!(p, [0, 2, 0xfe]);
        // Q = d0 + 2·d1; 2·0x01 = 0x02, 2·2 = 4.
        assert_eq!(q, [1 ^ 2, 4, 0xff ^ 2]);
    }
}
