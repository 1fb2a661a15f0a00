//! Which tails of the stream buffer could be the start of a pattern.
//!
//! A stream may only hold back bytes that could begin a match completed by the next chunk, so
//! it needs, for each suffix of its buffer shorter than the longest pattern, whether that suffix
//! is a proper prefix of some pattern. Comparing each suffix against the patterns costs
//! O(window²) per chunk in the worst case; instead every proper prefix of every pattern is
//! stored as a polynomial hash modulo 2⁶¹−1 (with its length), and the suffixes' hashes are
//! computed right to left in O(window). A hash collision can only make the stream hold back a
//! few bytes it did not need to (they are still emitted, redacted, with the next chunk or at
//! `finish`); it can never let a secret through.
//!
//! Memory is one set entry per distinct proper prefix: about 16 bytes per pattern byte.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

const MOD: u64 = (1 << 61) - 1;
const BASE: u64 = 0x0123_4567_89ab_cdef % MOD;

/// Hashes of every proper prefix of a set of patterns.
pub struct PrefixIndex {
    set: HashSet<(u64, u32), BuildHasherDefault<KeyHasher>>,
    /// `pow[i] = BASE^i`, for i below the length of the longest proper prefix (the longest
    /// pattern minus one): no longer suffix need be looked at.
    pow: Vec<u64>,
}

impl PrefixIndex {
    pub fn new<'a>(patterns: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut set = HashSet::default();
        let mut max_prefix = 0;
        for p in patterns {
            let proper = p.len().saturating_sub(1);
            max_prefix = max_prefix.max(proper);
            let mut h = 0;
            for (i, &b) in p.iter().take(proper).enumerate() {
                h = add(mul(h, BASE), u64::from(b) + 1);
                set.insert((h, len32(i + 1)));
            }
        }
        let mut pow = Vec::with_capacity(max_prefix);
        let mut x = 1;
        for _ in 0..max_prefix {
            pow.push(x);
            x = mul(x, BASE);
        }
        PrefixIndex { set, pow }
    }

    /// Pushes, in ascending order, every position `i` such that `buf[i..]` may be a proper
    /// prefix of a pattern (it certainly is, barring a hash collision).
    pub fn candidates(&self, buf: &[u8], out: &mut Vec<usize>) {
        let start = out.len();
        let mut h = 0;
        for (m, (&b, &pw)) in buf.iter().rev().zip(&self.pow).enumerate() {
            // `buf[i..]` with i = len - (m + 1): its first byte weighs BASE^m.
            h = add(mul(u64::from(b) + 1, pw), h);
            if self.set.contains(&(h, len32(m + 1))) {
                out.push(buf.len() - (m + 1));
            }
        }
        out[start..].reverse();
    }
}

/// Lengths beyond u32 are folded: it only risks a collision, which is harmless.
fn len32(n: usize) -> u32 {
    n as u32
}

fn mul(a: u64, b: u64) -> u64 {
    reduce(u128::from(a) * u128::from(b))
}

fn add(a: u64, b: u64) -> u64 {
    reduce(u128::from(a) + u128::from(b))
}

/// `x mod 2⁶¹−1` for any x < 2¹²².
fn reduce(x: u128) -> u64 {
    let m = u128::from(MOD);
    let folded = (x & m) + (x >> 61);
    let folded = (folded & m) + (folded >> 61);
    let r = folded as u64;
    if r >= MOD { r - MOD } else { r }
}

/// The keys are already uniformly spread hashes: mixing them again would only cost time.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = self
            .0
            .wrapping_add(u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(patterns: &[&[u8]], buf: &[u8]) -> Vec<usize> {
        (0..buf.len())
            .filter(|&i| {
                patterns
                    .iter()
                    .any(|p| p.len() > buf.len() - i && p.starts_with(&buf[i..]))
            })
            .collect()
    }

    #[test]
    fn agrees_with_naive_search() {
        let patterns: [&[u8]; 4] = [b"abcab", b"bca", b"zzzzzz", b"\0\0\x01"];
        let idx = PrefixIndex::new(patterns.iter().copied());
        assert_eq!(idx.pow.len(), 5);
        let bufs: [&[u8]; 8] = [
            b"",
            b"a",
            b"xxabca",
            b"zzzzzzzzz",
            b"abcab",
            b"qqbc",
            b"\0\0",
            b"yyab",
        ];
        for buf in bufs {
            let mut got = Vec::new();
            idx.candidates(buf, &mut got);
            assert_eq!(got, naive(&patterns, buf), "{buf:?}");
        }
    }

    #[test]
    fn reduce_is_modular() {
        for x in [
            0u128,
            1,
            MOD as u128,
            MOD as u128 + 5,
            u128::from(u64::MAX),
            (1u128 << 121) + 12345,
        ] {
            assert_eq!(u128::from(reduce(x)), x % u128::from(MOD));
        }
    }
}
