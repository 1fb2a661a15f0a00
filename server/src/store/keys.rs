//! Key formats of the keyspaces. Every number is big-endian, so a key range is a range of
//! numbers and a prefix scan reads in order:
//!
//! - `jobs`: job id (8 bytes).
//! - `output`: job id | attempt (4) | offset (8); the prefix of the first two is one attempt.
//! - `events`: shard (1) | seq (8), the seq of the first event of a block.
//! - `audit`: chain (2) | seq (8), the seq of the first record of a block.
//! - `tokens`: token id (8); `secrets`: name; `agents`: certificate fingerprint (32).
//! - `expired`: job id (8), an empty value: a job deleted by retention whose output is
//!   still to delete.

use anyhow::{Context, Result};
use hodei_core::ids::{Attempt, JobId};

pub(super) fn output_key(job: JobId, attempt: Attempt, offset: u64) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..8].copy_from_slice(&job.to_be_bytes());
    k[8..12].copy_from_slice(&attempt.0.to_be_bytes());
    k[12..].copy_from_slice(&offset.to_be_bytes());
    k
}

pub(super) fn output_prefix(job: JobId, attempt: Attempt) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&job.to_be_bytes());
    k[8..].copy_from_slice(&attempt.0.to_be_bytes());
    k
}

/// The offset in an output key.
pub(super) fn output_offset(k: &[u8]) -> Result<u64> {
    let off: [u8; 8] = k
        .get(12..20)
        .and_then(|s| s.try_into().ok())
        .context("corrupt output key")?;
    Ok(u64::from_be_bytes(off))
}

pub(super) fn event_key(shard: u8, seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = shard;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub(super) fn audit_key(chain: u16, seq: u64) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[..2].copy_from_slice(&chain.to_be_bytes());
    k[2..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The seq in an audit key (chain:u16 | seq:u64, nothing else).
pub(super) fn audit_seq(k: &[u8]) -> Result<u64> {
    let seq: [u8; 8] = k
        .get(2..)
        .and_then(|s| s.try_into().ok())
        .with_context(|| format!("corrupt audit key {}", hex(k)))?;
    Ok(u64::from_be_bytes(seq))
}

/// Bytes as hex, for error messages that name a key.
pub(super) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys sort as their numbers do: a scan of a prefix reads in order.
    #[test]
    fn keys_sort_by_number() -> Result<()> {
        let job = JobId::new(0, 1, 7);
        let a = output_key(job, Attempt(1), 255);
        let b = output_key(job, Attempt(1), 256);
        let c = output_key(job, Attempt(2), 0);
        assert!(a < b && b < c);
        assert!(a.starts_with(&output_prefix(job, Attempt(1))));
        assert_eq!(output_offset(&b)?, 256);
        assert!(output_offset(&b[..19]).is_err());
        assert!(event_key(0, u64::MAX) < event_key(1, 0));
        assert!(audit_key(0, u64::MAX) < audit_key(1, 0));
        assert_eq!(audit_seq(&audit_key(3, 42))?, 42);
        assert!(audit_seq(&[0, 1, 2]).is_err());
        Ok(())
    }
}
