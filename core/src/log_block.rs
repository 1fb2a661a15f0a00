//! A block: consecutive entries of an append-only log (a shard's events, an audit chain)
//! stored as one store value under the key of its first entry.
//!
//! Why: every no-op job appends about four events and five audit records. Stored one per
//! key, each was a memtable insert, a journal entry, an index entry and a key compared in
//! every flush and compaction: with the same bytes stored per commit instead of per entry,
//! the server's CPU per no-op job fell by about a fifth (`tuning/README.md`). The entries of
//! one commit are consecutive, so one key (the first entry's number) places them all.
//!
//! Layout: [`TAG`], then for each entry (at least one) its length (LEB128) and its bytes.
//! Entry `i` has number `first + i`. What an entry holds is the log's business (a compact
//! event, an audit record). Bytes that do not start with [`TAG`] are not a block
//! ([`is_block`]) and are refused.

use crate::leb128;

/// First byte of a block. Distinct from a compact event's tag, from the first byte of an
/// rkyv frame (the protocol version, little-endian) and from the audit record versions, so a
/// value of any other kind is never mistaken for a block.
pub const TAG: u8 = 0xB1;

const _: () = assert!(TAG != crate::event_codec::TAG);
const _: () = assert!(crate::wire::PROTOCOL_VERSION.to_le_bytes()[0] != TAG);
const _: () = assert!(TAG > 2);

/// Why stored bytes are not a block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// It does not start with [`TAG`].
    #[error("not a block")]
    NotABlock,
    /// It holds no entry (no writer makes one).
    #[error("empty block")]
    Empty,
    /// An entry's length is cut off, too large, or points past the end.
    #[error("block truncated in entry {0}")]
    Truncated(usize),
}

/// Whether `bytes` are a block (else a single entry of the log).
#[must_use]
pub fn is_block(bytes: &[u8]) -> bool {
    bytes.first() == Some(&TAG)
}

/// Builds a block: each entry is encoded into a reused scratch buffer, then appended after
/// its length (which must come first), so building allocates nothing per entry.
#[derive(Debug)]
pub struct Builder {
    buf: Vec<u8>,
    scratch: Vec<u8>,
    entries: usize,
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            buf: vec![TAG],
            scratch: Vec::new(),
            entries: 0,
        }
    }
}

impl Builder {
    /// Appends one entry, written by `encode` into an empty buffer.
    pub fn push(&mut self, encode: impl FnOnce(&mut Vec<u8>)) {
        self.scratch.clear();
        encode(&mut self.scratch);
        leb128::put(&mut self.buf, self.scratch.len() as u64);
        self.buf.extend_from_slice(&self.scratch);
        self.entries += 1;
    }

    /// Entries so far.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Whether no entry was pushed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// The block's bytes; the builder is empty again.
    pub fn take(&mut self) -> Vec<u8> {
        self.entries = 0;
        std::mem::replace(&mut self.buf, vec![TAG])
    }
}

/// The entries of a block, in order. Never panics and never allocates more than the bytes
/// given call for: the bytes may come from a damaged disk.
pub fn entries(bytes: &[u8]) -> Result<Vec<&[u8]>, BlockError> {
    let Some((&TAG, mut rest)) = bytes.split_first() else {
        return Err(BlockError::NotABlock);
    };
    let mut out = Vec::new();
    while !rest.is_empty() {
        let i = out.len();
        let len = leb128::take(&mut rest).map_err(|_| BlockError::Truncated(i))?;
        let len = usize::try_from(len).map_err(|_| BlockError::Truncated(i))?;
        if len > rest.len() {
            return Err(BlockError::Truncated(i));
        }
        let (entry, tail) = rest.split_at(len);
        out.push(entry);
        rest = tail;
    }
    if out.is_empty() {
        return Err(BlockError::Empty);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn block(items: &[Vec<u8>]) -> Vec<u8> {
        let mut b = Builder::default();
        for it in items {
            b.push(|out| out.extend_from_slice(it));
        }
        b.take()
    }

    proptest! {
        #[test]
        fn entries_round_trip(items in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..300), 1..20)
        ) {
            let bytes = block(&items);
            prop_assert!(is_block(&bytes));
            let got = entries(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(got, items.iter().map(Vec::as_slice).collect::<Vec<_>>());
            // A block cut anywhere inside its last entry is refused, never read short.
            let last = items.last().map_or(0, Vec::len);
            for cut in bytes.len() - last..bytes.len() {
                prop_assert!(entries(&bytes[..cut]).is_err());
            }
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = entries(&bytes);
        }
    }

    #[test]
    fn damage_is_refused() {
        assert_eq!(entries(&[]), Err(BlockError::NotABlock));
        assert_eq!(entries(&[0xE2, 0]), Err(BlockError::NotABlock));
        assert_eq!(entries(&[TAG]), Err(BlockError::Empty));
        // Second entry claims 5 bytes, has 2.
        assert_eq!(
            entries(&[TAG, 1, 9, 5, 1, 2]),
            Err(BlockError::Truncated(1))
        );
        // A length that never ends.
        assert_eq!(entries(&[TAG, 0x80]), Err(BlockError::Truncated(0)));
        // A huge length is refused before any allocation.
        let mut huge = vec![TAG];
        leb128::put(&mut huge, u64::MAX);
        assert_eq!(entries(&huge), Err(BlockError::Truncated(0)));
    }

    #[test]
    fn builder_starts_over_after_take() {
        let mut b = Builder::default();
        assert!(b.is_empty());
        b.push(|o| o.push(7));
        b.push(|_| {});
        assert_eq!(b.len(), 2);
        assert_eq!(b.take(), vec![TAG, 1, 7, 0]);
        assert!(b.is_empty());
        b.push(|o| o.push(8));
        assert_eq!(entries(&b.take()), Ok(vec![&[8u8][..]]));
    }
}
