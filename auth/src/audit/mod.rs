//! The tamper-evident audit log: a hash chain of records.
//!
//! Each record's hash covers its own fields and the previous record's hash, so editing,
//! deleting or reordering any record breaks the chain at a point [`verify`] reports. Each
//! server shard keeps its own chain (`chain` is the shard index) so appends need no lock.
//!
//! What the chain cannot show by itself: an attacker who rewrites a record *and every record
//! after it* yields a valid chain. Keeping the chain's [`AuditChain::head`] somewhere the
//! attacker cannot also rewrite (another file, a log line, a printout) and passing it to
//! [`verify`] closes that gap, and also catches a truncated tail.
//!
//! # The hash
//!
//! `hash = SHA-256(DOMAIN || prev || chain || seq || at_ms || actor || action || subject ||
//! correlation_id || detail)`, where [`DOMAIN`] is the 16 bytes `hodei-audit/v1\0\0`, `prev` is 32
//! raw bytes, integers are little-endian (`chain` 2 bytes, `seq` and `at_ms` 8 bytes), and each
//! string is its UTF-8 length as a u64 little-endian followed by its bytes. Length prefixes make
//! the encoding unambiguous: no two different records hash the same bytes.
//!
//! # Storage and JSON
//!
//! [`encode`]/[`decode`] store a compact form that leaves out what the record's place gives
//! (chain, seq, prev) and is read back with that place (see [`codec`]). With serde (for JSON
//! exports) `prev` and `hash` are 64-character lowercase hex strings.

mod codec;
mod verify;

pub use codec::{AuditError, Position, decode, encode, encode_into};
pub use verify::{ChainBreak, verify, verify_from, verify_keyed, verify_keyed_from};

use serde::{Deserialize, Serialize};

/// Domain separation: these hashes can never be confused with SHA-256 of anything else.
pub const DOMAIN: &[u8; 16] = b"hodei-audit/v1\0\0";

/// One audited action.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    /// Which chain (shard) this record belongs to.
    pub chain: u16,
    /// Position in its chain, from 0 without gaps.
    pub seq: u64,
    pub at_ms: u64,
    /// Who: a token name, `agent:<worker>`, `system`.
    pub actor: String,
    /// What, e.g. `job.submit`, `token.revoke`, `secret.read`.
    pub action: String,
    /// On what, e.g. a job id or a secret name (never a secret value).
    pub subject: String,
    pub correlation_id: String,
    /// Free text or JSON with anything else worth keeping.
    pub detail: String,
    /// The previous record's hash; all zeros for the first record of a chain.
    #[serde(with = "crate::hex::array32")]
    pub prev: [u8; 32],
    /// This record's hash (see the module documentation).
    #[serde(with = "crate::hex::array32")]
    pub hash: [u8; 32],
}

impl AuditRecord {
    /// The hash this record's fields call for; equals `self.hash` unless it was tampered with.
    pub fn compute_hash(&self) -> [u8; 32] {
        self.compute_hash_with(None)
    }

    /// The hash of a keyed chain: HMAC-SHA256 under `key` over the same bytes, so that
    /// without the key nobody can recompute the chain after an edit. `None`: plain SHA-256.
    pub fn compute_hash_with(&self, key: Option<&AuditKey>) -> [u8; 32] {
        let mut fields = Vec::with_capacity(64 + self.strings_len());
        codec::put_fields(self, &mut fields);
        let mut out = [0u8; 32];
        match key {
            Some(k) => {
                let mut ctx = ring::hmac::Context::with_key(&k.0);
                ctx.update(DOMAIN);
                ctx.update(&fields);
                out.copy_from_slice(ctx.sign().as_ref());
            }
            None => {
                let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
                ctx.update(DOMAIN);
                ctx.update(&fields);
                out.copy_from_slice(ctx.finish().as_ref());
            }
        }
        out
    }

    /// The string fields, in their encoding order.
    fn strings(&self) -> [&str; 5] {
        [
            &self.actor,
            &self.action,
            &self.subject,
            &self.correlation_id,
            &self.detail,
        ]
    }

    fn strings_len(&self) -> usize {
        self.strings().iter().map(|s| 8 + s.len()).sum()
    }
}

/// The key of a keyed audit log (HMAC-SHA256). Kept outside the store, so a copy or an
/// editor of the store alone cannot forge a consistent chain.
#[derive(Clone)]
pub struct AuditKey(ring::hmac::Key);

impl AuditKey {
    /// From 32 secret bytes (e.g. [`crate::seal::SealKey::derive`]).
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        Self(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, bytes))
    }
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey(<secret>)")
    }
}

/// The writer's end of one chain: where the next record goes and what it links to.
#[derive(Clone, Debug)]
pub struct AuditChain {
    chain: u16,
    next_seq: u64,
    last: [u8; 32],
    key: Option<AuditKey>,
}

impl PartialEq for AuditChain {
    fn eq(&self, other: &Self) -> bool {
        (self.chain, self.next_seq, self.last) == (other.chain, other.next_seq, other.last)
    }
}

impl Eq for AuditChain {}

impl AuditChain {
    /// A chain with no records yet.
    pub fn new(chain: u16) -> Self {
        AuditChain {
            chain,
            next_seq: 0,
            last: [0; 32],
            key: None,
        }
    }

    /// The same chain, hashed with HMAC under `key` from now on (use it from the first
    /// record: a chain is keyed or not).
    #[must_use]
    pub fn keyed(mut self, key: AuditKey) -> Self {
        self.key = Some(key);
        self
    }

    /// Continues a chain after a restart, from the head of its stored records.
    pub fn resume(chain: u16, next_seq: u64, last_hash: [u8; 32]) -> Self {
        AuditChain {
            chain,
            next_seq,
            last: last_hash,
            key: None,
        }
    }

    /// The chain index.
    pub fn chain(&self) -> u16 {
        self.chain
    }

    /// `(next seq, hash of the last record)`: persist it apart from the records and give it
    /// to [`verify`] to detect truncation and wholesale rewrites.
    pub fn head(&self) -> (u64, [u8; 32]) {
        (self.next_seq, self.last)
    }

    /// Builds the next record and advances the head. The caller persists the record.
    pub fn append(
        &mut self,
        at_ms: u64,
        actor: impl Into<String>,
        action: impl Into<String>,
        subject: impl Into<String>,
        correlation_id: impl Into<String>,
        detail: impl Into<String>,
    ) -> AuditRecord {
        let mut r = AuditRecord {
            chain: self.chain,
            seq: self.next_seq,
            at_ms,
            actor: actor.into(),
            action: action.into(),
            subject: subject.into(),
            correlation_id: correlation_id.into(),
            detail: detail.into(),
            prev: self.last,
            hash: [0; 32],
        };
        r.hash = r.compute_hash_with(self.key.as_ref());
        // 2^64 records will not be written; wrapping only avoids a debug-build panic path.
        self.next_seq = self.next_seq.wrapping_add(1);
        self.last = r.hash;
        r
    }
}

#[cfg(test)]
mod tests;
