//! Checking a chain of audit records, and what a break looks like.
//!
//! Every break names the seq at which the chain stops being trustworthy: the position where a
//! record was expected, whatever (if anything) was found there instead.

use super::AuditRecord;

/// Where and how a chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    #[error("record {seq}: belongs to chain {found}, not chain {expected} (mixed in)")]
    OtherChain { seq: u64, expected: u16, found: u16 },
    #[error("record {seq}: missing, found record {found} in its place (deleted or reordered)")]
    Missing { seq: u64, found: u64 },
    #[error("record {seq}: found record {found} again, out of order (duplicated or reordered)")]
    OutOfOrder { seq: u64, found: u64 },
    #[error("record {seq}: hash mismatch (it, or its link to the record before it, was edited)")]
    HashMismatch { seq: u64 },
    #[error(
        "record {seq}: previous-hash link broken (a record before it was edited, deleted or reordered)"
    )]
    PrevMismatch { seq: u64 },
    #[error("record {seq}: missing, the log ends before the recorded head ({head}) (truncated)")]
    Truncated { seq: u64, head: u64 },
    #[error("record {seq}: hash differs from the recorded head (rewritten)")]
    HeadMismatch { seq: u64 },
    #[error("record {seq}: the recorded head ({head}) is before the first record checked")]
    HeadBeforeStart { seq: u64, head: u64 },
}

impl ChainBreak {
    /// The seq at which the chain breaks.
    pub fn seq(&self) -> u64 {
        match *self {
            ChainBreak::OtherChain { seq, .. }
            | ChainBreak::Missing { seq, .. }
            | ChainBreak::OutOfOrder { seq, .. }
            | ChainBreak::HashMismatch { seq }
            | ChainBreak::PrevMismatch { seq }
            | ChainBreak::Truncated { seq, .. }
            | ChainBreak::HeadMismatch { seq }
            | ChainBreak::HeadBeforeStart { seq, .. } => seq,
        }
    }
}

/// Verifies a whole chain from its first record, in order. With `head` (from
/// [`super::AuditChain::head`], stored apart from the records) it also detects a truncated tail
/// and a tail rewritten with fresh hashes. Records past the head are accepted: a head is a
/// checkpoint, and the log may have grown since it was taken.
///
/// Returns how many records were checked.
pub fn verify(
    chain: u16,
    records: impl IntoIterator<Item = AuditRecord>,
    head: Option<(u64, [u8; 32])>,
) -> Result<u64, ChainBreak> {
    verify_from(chain, (0, [0; 32]), records, head)
}

/// Like [`verify`], for a chain written with [`super::AuditChain::keyed`].
pub fn verify_keyed(
    chain: u16,
    records: impl IntoIterator<Item = AuditRecord>,
    head: Option<(u64, [u8; 32])>,
    key: &super::AuditKey,
) -> Result<u64, ChainBreak> {
    verify_inner(chain, (0, [0; 32]), records, head, Some(key))
}

/// Like [`verify`], for a chain whose records before `start.0` were archived or pruned:
/// `start` is `(seq of the first record, hash of the record before it)`.
pub fn verify_from(
    chain: u16,
    start: (u64, [u8; 32]),
    records: impl IntoIterator<Item = AuditRecord>,
    head: Option<(u64, [u8; 32])>,
) -> Result<u64, ChainBreak> {
    verify_inner(chain, start, records, head, None)
}

/// [`verify_from`] for a chain written with [`super::AuditChain::keyed`]: what is left of
/// it after retention cut its oldest records at a checkpoint.
pub fn verify_keyed_from(
    chain: u16,
    start: (u64, [u8; 32]),
    records: impl IntoIterator<Item = AuditRecord>,
    head: Option<(u64, [u8; 32])>,
    key: &super::AuditKey,
) -> Result<u64, ChainBreak> {
    verify_inner(chain, start, records, head, Some(key))
}

fn verify_inner(
    chain: u16,
    start: (u64, [u8; 32]),
    records: impl IntoIterator<Item = AuditRecord>,
    head: Option<(u64, [u8; 32])>,
    key: Option<&super::AuditKey>,
) -> Result<u64, ChainBreak> {
    let (mut expected, mut last) = start;
    if let Some((head_seq, _)) = head
        && head_seq < start.0
    {
        return Err(ChainBreak::HeadBeforeStart {
            seq: start.0,
            head: head_seq,
        });
    }
    // The hash at the head's position, once reached.
    let mut at_head = head.filter(|&(s, _)| s == start.0).map(|_| start.1);
    let mut checked = 0u64;
    for r in records {
        let seq = expected;
        if r.chain != chain {
            return Err(ChainBreak::OtherChain {
                seq,
                expected: chain,
                found: r.chain,
            });
        }
        if r.seq > seq {
            return Err(ChainBreak::Missing { seq, found: r.seq });
        }
        if r.seq < seq {
            return Err(ChainBreak::OutOfOrder { seq, found: r.seq });
        }
        if r.compute_hash_with(key) != r.hash {
            return Err(ChainBreak::HashMismatch { seq });
        }
        if r.prev != last {
            return Err(ChainBreak::PrevMismatch { seq });
        }
        last = r.hash;
        expected = expected.wrapping_add(1);
        checked += 1;
        if head.is_some_and(|(s, _)| s == expected) {
            at_head = Some(last);
        }
    }
    if let Some((head_seq, head_hash)) = head {
        match at_head {
            None => {
                return Err(ChainBreak::Truncated {
                    seq: expected,
                    head: head_seq,
                });
            }
            Some(h) if h != head_hash => {
                return Err(ChainBreak::HeadMismatch {
                    seq: head_seq.saturating_sub(1),
                });
            }
            Some(_) => {}
        }
    }
    Ok(checked)
}
