//! Output redaction (`hodei_auth::redact`), a property target. From fuzz-chosen secret values
//! and an output built of raw bytes and (pieces of) those values, fed to a `RedactStream` in
//! fuzz-chosen chunks, it checks:
//!
//! 1. the stream's output (all `push` outputs, then `finish`) equals `redact_all` of the whole
//!    output, however it is chunked;
//! 2. after each `push` the stream holds back less than the longest pattern;
//! 3. no secret value of at least `MIN_RAW` (3) bytes survives in the redacted output outside
//!    the `[REDACTED:NAME]` labels.
//!
//! Secret names are fixed (`s0`..`s7`), so labels cannot contain or straddle a secret value in
//! a way that would make check 3 report a label as a leak.
#![no_main]

use arbitrary::Arbitrary;
use hodei_auth::redact::{MIN_RAW, Redactor};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Piece {
    Raw(Vec<u8>),
    /// Secret `i % secrets` whole.
    Secret(u8),
    /// Its first `n` bytes.
    Prefix(u8, u8),
    /// Its last `n` bytes.
    Suffix(u8, u8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    secrets: Vec<Vec<u8>>,
    pieces: Vec<Piece>,
    /// Chunk lengths, cycled (0 pushes an empty chunk, then a 1-byte one).
    chunks: Vec<u8>,
}

const MAX_SECRETS: usize = 8;
const MAX_SECRET_LEN: usize = 96;
const MAX_OUTPUT: usize = 8 << 10;

fuzz_target!(|input: Input| {
    let values: Vec<Vec<u8>> = input
        .secrets
        .into_iter()
        .take(MAX_SECRETS)
        .map(|mut v| {
            v.truncate(MAX_SECRET_LEN);
            v
        })
        .collect();
    let secrets: Vec<(String, Vec<u8>)> = values
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("s{i}"), v.clone()))
        .collect();

    let mut data = Vec::new();
    for piece in &input.pieces {
        let pick = |i: u8| values.get(usize::from(i) % values.len().max(1));
        match *piece {
            Piece::Raw(ref b) => data.extend_from_slice(b),
            Piece::Secret(i) => data.extend_from_slice(pick(i).map_or(&[][..], |v| v)),
            Piece::Prefix(i, n) => {
                if let Some(v) = pick(i) {
                    data.extend_from_slice(&v[..usize::from(n).min(v.len())]);
                }
            }
            Piece::Suffix(i, n) => {
                if let Some(v) = pick(i) {
                    data.extend_from_slice(&v[v.len() - usize::from(n).min(v.len())..]);
                }
            }
        }
        if data.len() > MAX_OUTPUT {
            data.truncate(MAX_OUTPUT);
            break;
        }
    }

    let r = Redactor::new(&secrets);
    let whole = r.redact_all(&data);

    // 1 and 2: any chunking gives the same bytes; the hold-back stays bounded.
    let mut st = r.stream();
    let mut streamed = Vec::new();
    let mut rest = &data[..];
    let mut sizes = input.chunks.iter().cycle();
    while !rest.is_empty() {
        let mut n = sizes.next().map_or(rest.len(), |&n| usize::from(n));
        if n == 0 {
            // An empty push, then one byte, so that the loop always advances.
            let mut out = Vec::new();
            st.push(&[], &mut out);
            streamed.extend_from_slice(&out);
            n = 1;
        }
        let (chunk, tail) = rest.split_at(n.min(rest.len()));
        let mut out = Vec::new();
        st.push(chunk, &mut out);
        streamed.extend_from_slice(&out);
        assert!(
            st.held() < r.max_pattern_len().max(1),
            "held {} bytes, longest pattern {}",
            st.held(),
            r.max_pattern_len()
        );
        rest = tail;
    }
    let mut out = Vec::new();
    st.finish(&mut out);
    streamed.extend_from_slice(&out);
    assert_eq!(st.held(), 0, "bytes held after finish");
    assert!(
        streamed == whole,
        "stream != redact_all\nstreamed: {:?}\nwhole:    {:?}",
        String::from_utf8_lossy(&streamed),
        String::from_utf8_lossy(&whole)
    );

    // 3: no raw secret value survives outside the labels.
    let labels: Vec<Vec<u8>> = secrets
        .iter()
        .map(|(name, _)| format!("[REDACTED:{name}]").into_bytes())
        .chain([b"[REDACTED]".to_vec()])
        .collect();
    let segments = split_on_labels(&whole, &labels);
    for (name, v) in &secrets {
        if v.len() < MIN_RAW {
            continue;
        }
        for seg in &segments {
            assert!(
                find(seg, v).is_none(),
                "secret {name} = {:?} survives in {:?}",
                String::from_utf8_lossy(v),
                String::from_utf8_lossy(&whole)
            );
        }
    }
});

/// The parts of `out` between occurrences of any label.
fn split_on_labels<'a>(out: &'a [u8], labels: &[Vec<u8>]) -> Vec<&'a [u8]> {
    let mut segments = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < out.len() {
        if let Some(l) = labels.iter().find(|l| out[i..].starts_with(l)) {
            segments.push(&out[start..i]);
            i += l.len();
            start = i;
        } else {
            i += 1;
        }
    }
    segments.push(&out[start..]);
    segments
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
