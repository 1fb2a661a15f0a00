//! The audit record's byte encoding, shared by hashing and storage.
//!
//! Stored form: `version (1 byte, = 1) || fields || hash (32 bytes)`, where `fields` is exactly
//! what the hash covers after the domain tag (see the `audit` module documentation). Sharing one
//! encoder means the stored bytes are the hashed bytes: nothing is stored that the hash does not
//! protect. [`decode`] is fed untrusted bytes and never panics or over-allocates.

use super::AuditRecord;

const VERSION: u8 = 1;

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
}

/// Appends the hashed fields of `r` (everything but the domain tag, version and hash).
pub(super) fn put_fields(r: &AuditRecord, out: &mut Vec<u8>) {
    out.extend_from_slice(&r.prev);
    out.extend_from_slice(&r.chain.to_le_bytes());
    out.extend_from_slice(&r.seq.to_le_bytes());
    out.extend_from_slice(&r.at_ms.to_le_bytes());
    for s in [
        &r.actor,
        &r.action,
        &r.subject,
        &r.correlation_id,
        &r.detail,
    ] {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
}

/// The stored bytes of `r`.
pub fn encode(r: &AuditRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 64 + 32 + r.strings_len() + 18);
    out.push(VERSION);
    put_fields(r, &mut out);
    out.extend_from_slice(&r.hash);
    out
}

/// Parses stored bytes. Does not check the hash: that is [`super::verify`]'s job.
pub fn decode(bytes: &[u8]) -> Result<AuditRecord, AuditError> {
    let mut rd = Reader(bytes);
    let version = rd.array::<1>("version")?[0];
    if version != VERSION {
        return Err(AuditError::UnknownVersion(version));
    }
    let prev = rd.array::<32>("prev")?;
    let chain = u16::from_le_bytes(rd.array("chain")?);
    let seq = u64::from_le_bytes(rd.array("seq")?);
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
        chain,
        seq,
        at_ms,
        actor,
        action,
        subject,
        correlation_id,
        detail,
        prev,
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

    fn string(&mut self, field: &'static str) -> Result<String, AuditError> {
        let len = u64::from_le_bytes(self.array(field)?);
        let bytes = self.take(len, field)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| AuditError::NotUtf8(field))
    }
}
