//! Lowercase hex for 32-byte hashes, and the serde adapter that writes them as hex strings.
//!
//! Hashes appear in JSON exports (tokens, audit records) that people read and diff, so they
//! are written as 64 lowercase hex characters rather than arrays of 32 numbers.

use std::fmt::Write as _;

/// Lowercase hex of `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Parses exactly 64 hex characters (either case) into 32 bytes; `None` otherwise.
pub fn decode32(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let (hi, lo) = (nibble(pair[0])?, nibble(pair[1])?);
        *o = (hi << 4) | lo;
    }
    Some(out)
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// `#[serde(with = "crate::hex::array32")]`: a `[u8; 32]` as a 64-character hex string.
pub mod array32 {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        super::decode32(&text).ok_or_else(|| D::Error::custom("expected 64 hex characters"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_rejects() {
        let h: [u8; 32] = core::array::from_fn(|i| (i * 37) as u8);
        let text = encode(&h);
        assert_eq!(text.len(), 64);
        assert_eq!(decode32(&text), Some(h));
        assert_eq!(decode32(&text.to_uppercase()), Some(h));
        assert_eq!(decode32(&text[..63]), None);
        assert_eq!(decode32(&format!("{}g", &text[..63])), None);
        // Multi-byte characters must not be split or accepted.
        assert_eq!(decode32(&format!("{}é", &text[..62])), None);
    }
}
