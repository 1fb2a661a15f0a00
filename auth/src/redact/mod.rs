//! Masking secrets in job output, as it streams.
//!
//! The agent knows the values of the secrets a job was given; everything the job writes passes
//! through a [`RedactStream`] before it leaves the host, and every occurrence of a secret (raw,
//! base64- or percent-encoded, or with CRLF line endings: see [`patterns`] for the exact rules)
//! becomes `[REDACTED:NAME]`.
//!
//! Matching is one Aho-Corasick automaton over all patterns with leftmost-longest semantics:
//! scanning left to right, the earliest-starting occurrence wins, and among those the longest.
//! A stream gives exactly the bytes [`Redactor::redact_all`] gives for the concatenation of its
//! chunks, however they are split.
//!
//! Limitation: when occurrences of two *different* secrets overlap in the output (`abcdef` and
//! `defghi` printed as `abcdefghi`), the first is masked and the second is not found, leaving
//! the part of it past the first's end (`ghi`) visible.

mod patterns;
mod prefix;
mod stream;

pub use patterns::{MIN_DERIVED, MIN_RAW};
pub use stream::RedactStream;

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};

use prefix::PrefixIndex;

/// What a stream writes instead of its output when redaction could not be set up.
pub const FAIL_CLOSED_NOTICE: &[u8] =
    b"[REDACTED:ALL: output withheld, secrets could not be indexed]";

/// Why [`Redactor::try_new`] failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the redaction automaton: {0}")]
pub struct RedactError(#[from] aho_corasick::BuildError);

/// The compiled patterns of a set of secrets. Cheap to clone; share one per job.
#[derive(Clone)]
pub struct Redactor {
    mode: Mode,
}

#[derive(Clone)]
enum Mode {
    /// No secret long enough to mask: output passes through untouched.
    Empty,
    Active(Arc<Inner>),
    /// The automaton could not be built: withhold all output rather than leak.
    FailClosed,
}

struct Inner {
    ac: AhoCorasick,
    /// `[REDACTED:NAME]`, one per secret.
    labels: Vec<Vec<u8>>,
    /// For each pattern id, the index of its label.
    label_of: Vec<usize>,
    prefixes: PrefixIndex,
    max_len: usize,
}

impl Inner {
    fn label(&self, pattern: aho_corasick::PatternID) -> &[u8] {
        self.label_of
            .get(pattern.as_usize())
            .and_then(|&i| self.labels.get(i))
            .map_or(b"[REDACTED]", Vec::as_slice)
    }
}

impl Redactor {
    /// Compiles `secrets` (name, value). Never fails: if the automaton cannot be built (beyond
    /// aho-corasick's size limits, gigabytes of patterns) the redactor withholds all output,
    /// writing [`FAIL_CLOSED_NOTICE`] once instead.
    pub fn new(secrets: &[(String, Vec<u8>)]) -> Redactor {
        Redactor::try_new(secrets).unwrap_or(Redactor {
            mode: Mode::FailClosed,
        })
    }

    /// Like [`Redactor::new`], reporting a build failure instead of failing closed.
    pub fn try_new(secrets: &[(String, Vec<u8>)]) -> Result<Redactor, RedactError> {
        let mut labels = Vec::with_capacity(secrets.len());
        let mut found: Vec<(patterns::Pattern, usize)> = Vec::new();
        for (name, value) in secrets {
            found.extend(
                patterns::patterns(value)
                    .into_iter()
                    .map(|p| (p, labels.len())),
            );
            labels.push(format!("[REDACTED:{name}]").into_bytes());
        }
        // The same bytes under two names: the first secret names them. A set keeps this
        // linear in the number of patterns, however many secrets a job has.
        let keep: Vec<bool> = {
            let mut seen = HashSet::with_capacity(found.len());
            found.iter().map(|(p, _)| seen.insert(&p[..])).collect()
        };
        let (all, label_of): (Vec<patterns::Pattern>, Vec<usize>) = found
            .into_iter()
            .zip(keep)
            .filter_map(|(f, k)| k.then_some(f))
            .unzip();
        if all.is_empty() {
            return Ok(Redactor { mode: Mode::Empty });
        }
        // A contiguous NFA builds in linear time; the DFA aho-corasick picks for few patterns
        // took seconds for one 8 KiB secret (quadratic), stalling the job's start.
        let ac = AhoCorasick::builder()
            .kind(Some(aho_corasick::AhoCorasickKind::ContiguousNFA))
            .match_kind(MatchKind::LeftmostLongest)
            .build(all.iter().map(|p| &p[..]))?;
        let inner = Inner {
            prefixes: PrefixIndex::new(all.iter().map(|p| &p[..])),
            max_len: all.iter().map(|p| p.len()).max().unwrap_or(0),
            ac,
            labels,
            label_of,
        };
        Ok(Redactor {
            mode: Mode::Active(Arc::new(inner)),
        })
    }

    /// Whether there is nothing to mask (no secret, or only ones too short to mask).
    pub fn is_empty(&self) -> bool {
        matches!(self.mode, Mode::Empty)
    }

    /// The longest pattern; a stream holds back at most one byte less than this.
    pub fn max_pattern_len(&self) -> usize {
        match &self.mode {
            Mode::Active(inner) => inner.max_len,
            Mode::Empty | Mode::FailClosed => 0,
        }
    }

    /// A stream for one output (say, a job's stdout).
    pub fn stream(&self) -> RedactStream {
        RedactStream::new(self.clone())
    }

    /// Redacts a whole buffer at once.
    pub fn redact_all(&self, data: &[u8]) -> Vec<u8> {
        match &self.mode {
            Mode::Empty => data.to_vec(),
            Mode::FailClosed if data.is_empty() => Vec::new(),
            Mode::FailClosed => FAIL_CLOSED_NOTICE.to_vec(),
            Mode::Active(inner) => {
                let mut out = Vec::with_capacity(data.len());
                let end = replace_matches(inner, data, |_| usize::MAX, &mut out);
                out.extend_from_slice(data.get(end..).unwrap_or_default());
                out
            }
        }
    }
}

/// Writes `data` with each match replaced by its label, and returns the position up to which
/// `data` was consumed. It stops before the first match that starts at or after
/// `hold_from(pos)`, where `pos` is the end of the last match written: the stream's
/// hold-back, from which a match may still depend on bytes not yet seen.
fn replace_matches(
    inner: &Inner,
    data: &[u8],
    mut hold_from: impl FnMut(usize) -> usize,
    out: &mut Vec<u8>,
) -> usize {
    let mut pos = 0;
    for m in inner.ac.find_iter(data) {
        if m.start() >= hold_from(pos) {
            break;
        }
        out.extend_from_slice(data.get(pos..m.start()).unwrap_or_default());
        out.extend_from_slice(inner.label(m.pattern()));
        pos = m.end();
    }
    pos
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Patterns are secret material: show only their number.
        match &self.mode {
            Mode::Empty => f.write_str("Redactor(empty)"),
            Mode::FailClosed => f.write_str("Redactor(fail-closed)"),
            Mode::Active(inner) => write!(f, "Redactor({} patterns)", inner.label_of.len()),
        }
    }
}

#[cfg(test)]
mod tests;
