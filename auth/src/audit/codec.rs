//! The audit record's byte encodings: the hashed form and the stored form.
//!
//! Hashed form (`fields`): what [`put_fields`] writes, covered by the hash after the domain
//! tag (see the `audit` module documentation).
//!
//! Stored form: `2 || at_ms (8 bytes LE) || 5 × (LEB128 length || UTF-8 bytes) || hash (32
//! bytes)`, where `2` is the encoding version and each length is in its shortest form.
//! `chain` and `seq` come from the record's place in the store (its key, and its index in a
//! block of records) and `prev` is the hash of the record before it, so they are not stored:
//! a reader supplies them ([`Position`]) and the hash, which covers them, still catches a
//! record moved, removed or edited. A typical record takes ~125 bytes. [`decode`] accepts
//! exactly what [`encode`] writes, refuses any other version byte with
//! [`AuditError::UnknownVersion`], and, being fed untrusted bytes, never panics or
//! over-allocates.

use super::AuditRecord;

/// The encoding version: the first byte [`encode`] writes and the only one [`decode`] accepts.
const VERSION: u8 = 2;

/// Where a stored record sits, which the stored form leaves out: its chain and seq
/// (from its place in the store) and the previous record's hash (all zeros before a
/// chain's first record).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub chain: u16,
    pub seq: u64,
    pub prev: [u8; 32],
}

/// Why bytes are not an audit record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    #[error("audit record truncated: needed {needed} more bytes for {field}")]
    Truncated { field: &'static str, needed: u64 },
    #[error("audit record has unknown encoding version {0}")]
    UnknownVersion(u8),
    #[error("audit record field {0} is not UTF-8")]
    NotUtf8(&'static str),
    #[error("audit record has {0} trailing bytes")]
    TrailingBytes(usize),
    #[error("audit record field {0} has a malformed length")]
    BadLength(&'static str),
}

/// Appends the hashed fields of `r` (everything but the domain tag, version and hash).
pub(super) fn put_fields(r: &AuditRecord, out: &mut Vec<u8>) {
    out.extend_from_slice(&r.prev);
    out.extend_from_slice(&r.chain.to_le_bytes());
    out.extend_from_slice(&r.seq.to_le_bytes());
    out.extend_from_slice(&r.at_ms.to_le_bytes());
    for s in r.strings() {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
}

/// The stored bytes of `r`.
pub fn encode(r: &AuditRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 8 + 32 + r.strings_len());
    encode_into(r, &mut out);
    out
}

/// Appends the stored bytes of `r` to `out`.
pub fn encode_into(r: &AuditRecord, out: &mut Vec<u8>) {
    out.push(VERSION);
    out.extend_from_slice(&r.at_ms.to_le_bytes());
    for s in r.strings() {
        let mut len = s.len() as u64;
        while len >= 0x80 {
            #[allow(clippy::cast_possible_truncation)] // the low 7 bits
            out.push((len as u8) | 0x80);
            len >>= 7;
        }
        #[allow(clippy::cast_possible_truncation)] // below 0x80
        out.push(len as u8);
        out.extend_from_slice(s.as_bytes());
    }
    out.extend_from_slice(&r.hash);
}

/// Parses stored bytes found at `at`, which gives the record its chain, seq and prev. Does
/// not check the hash: that is [`super::verify()`]'s job.
pub fn decode(bytes: &[u8], at: &Position) -> Result<AuditRecord, AuditError> {
    let mut rd = Reader(bytes);
    let version = rd.array::<1>("version")?[0];
    if version != VERSION {
        return Err(AuditError::UnknownVersion(version));
    }
    let at_ms = u64::from_le_bytes(rd.array("at_ms")?);
    let actor = rd.string("actor")?;
    let action = rd.string("action")?;
    let subject = rd.string("subject")?;
    let correlation_id = rd.string("correlation_id")?;
    let detail = rd.string("detail")?;
    let hash = rd.array::<32>("hash")?;
    if !rd.0.is_empty() {
        return Err(AuditError::TrailingBytes(rd.0.len()));
    }
    Ok(AuditRecord {
        chain: at.chain,
        seq: at.seq,
        at_ms,
        actor,
        action,
        subject,
        correlation_id,
        detail,
        prev: at.prev,
        hash,
    })
}

/// A cursor that only ever hands out bytes it has.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64, field: &'static str) -> Result<&'a [u8], AuditError> {
        let have = self.0.len() as u64;
        if n > have {
            return Err(AuditError::Truncated {
                field,
                needed: n - have,
            });
        }
        // n <= len, so it fits in usize and the split is in bounds.
        let (head, tail) = self.0.split_at(n as usize);
        self.0 = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], AuditError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, field)?);
        Ok(out)
    }

    /// A LEB128 length in its shortest form: at most 10 bytes, no bits beyond 64.
    fn varint(&mut self, field: &'static str) -> Result<u64, AuditError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.array::<1>(field)?[0];
            if shift == 63 && b > 1 {
                return Err(AuditError::BadLength(field));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                // A trailing zero byte would be a second spelling of the same length.
                if shift > 0 && b == 0 {
                    return Err(AuditError::BadLength(field));
                }
                return Ok(v);
            }
        }
        Err(AuditError::BadLength(field))
    }

    /// A string: its LEB128 length, then that many bytes of UTF-8.
    fn string(&mut self, field: &'static str) -> Result<String, AuditError> {
        let len = self.varint(field)?;
        let bytes = self.take(len, field)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| AuditError::NotUtf8(field))
    }
}
