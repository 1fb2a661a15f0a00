//! Redacting output that arrives in chunks.
//!
//! A secret may be split across chunks, so a stream holds back the tail of what it has seen
//! when that tail could be the beginning of a pattern, and only that: output that cannot start
//! a secret is passed on at once, so interactive programs are not delayed.
//!
//! Why the result equals [`Redactor::redact_all`] of the concatenation: let `h` be the first
//! position (after the last match written) whose suffix is a proper prefix of some pattern.
//! A match starting before `h` cannot involve later bytes, nor could a longer match at the same
//! start (it would make that start such a position), nor an earlier-starting match (likewise).
//! So everything before `h` is final, no match crosses `h` unless it is final too, and scanning
//! the held bytes again from `h` with the next chunk finds what one scan of the whole would.

use zeroize::Zeroize as _;

use super::{FAIL_CLOSED_NOTICE, Mode, Redactor, replace_matches};

/// One output's redaction state. The held bytes are wiped on drop.
pub struct RedactStream {
    redactor: Redactor,
    /// Bytes seen but not yet emitted (at most the longest pattern minus one after `push`).
    buf: Vec<u8>,
    /// Scratch for the hold-back candidates, kept to avoid an allocation per chunk.
    candidates: Vec<usize>,
    /// Fail-closed mode: whether the notice was written.
    noticed: bool,
}

impl RedactStream {
    pub(super) fn new(redactor: Redactor) -> Self {
        RedactStream {
            redactor,
            buf: Vec::new(),
            candidates: Vec::new(),
            noticed: false,
        }
    }

    /// Feeds `chunk` and appends to `out` every redacted byte that is now final.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        match &self.redactor.mode {
            Mode::Empty => out.extend_from_slice(chunk),
            Mode::FailClosed => {
                if !chunk.is_empty() && !self.noticed {
                    out.extend_from_slice(FAIL_CLOSED_NOTICE);
                    self.noticed = true;
                }
            }
            Mode::Active(_) => {
                self.buf.extend_from_slice(chunk);
                self.emit(out, false);
            }
        }
    }

    /// Appends the rest: the output ended, so nothing more can complete a match.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.emit(out, true);
    }

    /// How many bytes are held back, waiting for the next chunk.
    pub fn held(&self) -> usize {
        self.buf.len()
    }

    fn emit(&mut self, out: &mut Vec<u8>, end_of_output: bool) {
        let Mode::Active(inner) = &self.redactor.mode else {
            return;
        };
        let buf = &self.buf;
        let candidates = &mut self.candidates;
        candidates.clear();
        if !end_of_output {
            inner.prefixes.candidates(buf, candidates);
        }
        // Candidates ascend and so does `pos`: one cursor walks them once.
        let mut next = 0;
        let mut hold_from = |pos: usize| {
            while candidates.get(next).is_some_and(|&c| c < pos) {
                next += 1;
            }
            candidates.get(next).copied().unwrap_or(buf.len())
        };
        let pos = replace_matches(inner, buf, &mut hold_from, out);
        let held = hold_from(pos).max(pos);
        out.extend_from_slice(buf.get(pos..held).unwrap_or_default());
        // Keep the held tail at the front, and wipe the bytes it leaves behind so that no
        // emitted secret lingers in the buffer's spare capacity.
        let keep = self.buf.len().saturating_sub(held);
        self.buf.copy_within(held.., 0);
        if let Some(stale) = self.buf.get_mut(keep..) {
            stale.zeroize();
        }
        self.buf.truncate(keep);
    }
}

impl Drop for RedactStream {
    fn drop(&mut self) {
        self.buf.zeroize();
    }
}

impl std::fmt::Debug for RedactStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedactStream")
            .field("redactor", &self.redactor)
            .field("held", &self.buf.len())
            .finish()
    }
}
