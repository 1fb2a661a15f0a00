//! The byte strings that give a secret away in a job's output.
//!
//! Besides the raw value, programs commonly print a secret base64-encoded (basic-auth headers,
//! Kubernetes manifests, JWT pieces) or percent-encoded (URLs, form bodies), and a value that
//! spans lines may come back with CRLF line endings. For each such form we produce the bytes
//! that appear in the output *whatever surrounds the secret*:
//!
//! - **Base64**, standard and URL-safe alphabets, without padding. Where the secret starts
//!   within a 3-byte group (alignment k = 0, 1, 2) changes its encoding, so each alignment is a
//!   pattern: encode k placeholder bytes followed by the value, then drop the leading
//!   characters that carry placeholder bits (⌈8k/6⌉ of them) and the trailing character that
//!   would carry bits of whatever byte follows the value (keep only the first ⌊8(k+n)/6⌋).
//!   Up to two characters at either end of an encoded secret thus stay visible; they carry at
//!   most 10 of its bits. With the length rule below, base64 forms are masked for values of
//!   at least 7 bytes (6 when the value starts a 3-byte group).
//! - **Percent-encoding**: every byte outside RFC 3986's unreserved set as `%XX`, with
//!   upper- and lowercase hex, and also with `+` for space (form encoding). Encoders that
//!   escape a different set of bytes are not covered.
//!
//! To keep false positives from shredding ordinary output: a raw value (or its CRLF form) is
//! masked only if it is at least [`MIN_RAW`] bytes long, and a derived form only if it is at
//! least [`MIN_DERIVED`] bytes long. Empty values are ignored.

use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use zeroize::Zeroizing;

/// Shortest raw value that is masked: one- and two-byte values occur everywhere by chance.
pub const MIN_RAW: usize = 3;
/// Shortest derived (encoded) form that is masked.
pub const MIN_DERIVED: usize = 8;

/// A pattern's bytes, wiped when dropped since they reveal the secret.
pub type Pattern = Zeroizing<Vec<u8>>;

/// Every pattern that reveals `value`, without duplicates, raw forms first.
pub fn patterns(value: &[u8]) -> Vec<Pattern> {
    let mut out: Vec<Pattern> = Vec::new();
    let mut add = |p: Pattern, min: usize| {
        if p.len() >= min && !out.contains(&p) {
            out.push(p);
        }
    };
    if value.is_empty() {
        return out;
    }
    let mut raws = vec![Zeroizing::new(value.to_vec())];
    if value.contains(&b'\n') {
        let crlf = to_crlf(value);
        if crlf[..] != *value {
            raws.push(crlf);
        }
    }
    for raw in &raws {
        add(raw.clone(), MIN_RAW);
    }
    for raw in &raws {
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            for k in 0..3 {
                add(base64_stable(engine, raw, k), MIN_DERIVED);
            }
        }
        for (upper, plus) in [(true, false), (false, false), (true, true), (false, true)] {
            let p = percent(raw, upper, plus);
            if p[..] != raw[..] {
                add(p, MIN_DERIVED);
            }
        }
    }
    out
}

/// `value` with every bare `\n` turned into `\r\n`.
fn to_crlf(value: &[u8]) -> Pattern {
    let mut out = Zeroizing::new(Vec::with_capacity(value.len() + 8));
    let mut prev = 0u8;
    for &b in value {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}

/// The characters of the encoding of `value` that do not depend on its surroundings, when it
/// starts `k` bytes into a 3-byte group.
fn base64_stable(engine: &impl base64::Engine, value: &[u8], k: usize) -> Pattern {
    let mut input = Zeroizing::new(vec![0u8; k]);
    input.extend_from_slice(value);
    let encoded = Zeroizing::new(engine.encode(&input[..]).into_bytes());
    let first = (8 * k).div_ceil(6);
    let end = 8 * (k + value.len()) / 6;
    Zeroizing::new(encoded.get(first..end).unwrap_or_default().to_vec())
}

/// Percent-encoding of everything but RFC 3986 unreserved bytes; `plus` writes space as `+`.
fn percent(value: &[u8], upper: bool, plus: bool) -> Pattern {
    let digits: &[u8; 16] = if upper {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    let mut out = Zeroizing::new(Vec::with_capacity(value.len() * 3));
    for &b in value {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => out.push(b),
            b' ' if plus => out.push(b'+'),
            _ => out.extend_from_slice(&[
                b'%',
                digits[usize::from(b >> 4)],
                digits[usize::from(b & 15)],
            ]),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    fn has(ps: &[Pattern], p: &[u8]) -> bool {
        ps.iter().any(|x| x[..] == *p)
    }

    #[test]
    fn short_and_empty_values() {
        assert!(patterns(b"").is_empty());
        assert!(patterns(b"ab").is_empty());
        assert_eq!(patterns(b"abc").len(), 1);
    }

    #[test]
    fn stable_base64_is_found_at_every_alignment_and_surrounding() {
        let value = b"correct horse battery staple";
        let ps = patterns(value);
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            for before in 0..6u8 {
                for after in 0..4u8 {
                    for fill in [0u8, 0xff, b'x'] {
                        let mut data = vec![fill; usize::from(before)];
                        data.extend_from_slice(value);
                        data.extend(vec![fill ^ 0x5a; usize::from(after)]);
                        let enc = engine.encode(&data);
                        assert!(
                            ps.iter()
                                .any(|p| enc.as_bytes().windows(p.len()).any(|w| w == &p[..])
                                    && p.len() >= (value.len() * 4 / 3) - 2),
                            "before {before} after {after} fill {fill}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn percent_forms() {
        let ps = patterns(b"p@ss word/x");
        assert!(has(&ps, b"p%40ss%20word%2Fx"));
        assert!(has(&ps, b"p%40ss%20word%2fx"));
        assert!(has(&ps, b"p%40ss+word%2Fx"));
        assert!(has(&ps, b"p%40ss+word%2fx"));
        // Nothing to escape: no percent form.
        let plain = patterns(b"abcdefghij");
        assert!(!plain.iter().any(|p| p.contains(&b'%')));
    }

    #[test]
    fn crlf_form_of_multiline_values() {
        let ps = patterns(b"line1\nline2\r\nline3");
        assert!(has(&ps, b"line1\nline2\r\nline3"));
        assert!(has(&ps, b"line1\r\nline2\r\nline3"));
        // Already CRLF: no `\r\r\n` form.
        let crlf = patterns(b"a\r\nb");
        assert_eq!(crlf.iter().filter(|p| p.contains(&b'\r')).count(), 1);
    }

    #[test]
    fn no_duplicates_and_minimum_lengths() {
        for v in [
            &b"abc"[..],
            b"abcdefgh",
            b"+/+/+/+/+/",
            b"\n\n\n\n",
            &[0u8; 40],
        ] {
            let ps = patterns(v);
            for (i, p) in ps.iter().enumerate() {
                assert!(!ps[..i].contains(p));
                assert!(p.len() >= MIN_RAW);
                if p[..] != *v {
                    assert!(p.len() >= MIN_DERIVED || p[..] == to_crlf(v)[..]);
                }
            }
        }
    }
}
