//! LEB128 unsigned integers, as the store's compact encodings write lengths and times:
//! seven bits per byte, low bits first, the high bit set on every byte but the last. A
//! padded form (more bytes than needed, still within 64 bits) is read too; nothing here
//! hashes these bytes, so it changes no meaning. (`hodei-auth`'s audit codec, which cannot
//! depend on this crate, has its own strict reader.)

/// Why bytes do not start with a LEB128 integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leb128Error {
    /// The bytes end before the integer's last byte.
    Truncated,
    /// More than 64 bits (no encoder writes that).
    Overlong,
}

/// Appends `v`.
pub fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        // Truncation intended: the low 7 bits, with the continuation bit.
        #[allow(clippy::cast_possible_truncation)]
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    #[allow(clippy::cast_possible_truncation)]
    out.push(v as u8);
}

/// Reads an integer from the front of `bytes` and moves past it.
pub fn take(bytes: &mut &[u8]) -> Result<u64, Leb128Error> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = bytes.split_first().ok_or(Leb128Error::Truncated)?;
        *bytes = rest;
        if shift == 63 && b > 1 {
            return Err(Leb128Error::Overlong);
        }
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(Leb128Error::Overlong)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(v: u64, tail in proptest::collection::vec(any::<u8>(), 0..4)) {
            let mut b = Vec::new();
            put(&mut b, v);
            let len = b.len();
            b.extend_from_slice(&tail);
            let mut rd = &b[..];
            prop_assert_eq!(take(&mut rd), Ok(v));
            prop_assert_eq!(rd.len(), tail.len());
            // Every cut inside the integer is refused.
            for cut in 0..len {
                prop_assert_eq!(take(&mut &b[..cut]), Err(Leb128Error::Truncated));
            }
        }
    }

    #[test]
    fn more_than_64_bits_is_refused() {
        let mut b = vec![0xff; 9];
        b.push(0x02);
        assert_eq!(take(&mut &b[..]), Err(Leb128Error::Overlong));
        let mut b = vec![0xff; 10];
        b.push(0x00);
        assert_eq!(take(&mut &b[..]), Err(Leb128Error::Overlong));
        let mut max = vec![0xff; 9];
        max.push(0x01);
        assert_eq!(take(&mut &max[..]), Ok(u64::MAX));
    }
}
