//! Property tests of redaction: chunking never changes the result, no secret survives, and
//! every byte outside a match comes through in order.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hodei_auth::Redactor;
use proptest::prelude::*;

/// Secrets over `a..=f`, so they share bytes and overlap often, yet no label
/// (`[REDACTED:S0]`) and no base64 form of them (which always contains `Y` or `Z`) can be
/// made of those letters.
fn secrets() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(b'a'..=b'f', 3..10), 1..4)
}

fn named(values: &[Vec<u8>]) -> Vec<(String, Vec<u8>)> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("S{i}"), v.clone()))
        .collect()
}

/// Filler and secrets picked by index, concatenated with no guaranteed separation.
fn with_secrets(values: Vec<Vec<u8>>) -> impl Strategy<Value = (Vec<Vec<u8>>, Vec<u8>)> {
    let n = values.len();
    let filler = prop::collection::vec(prop::sample::select(b"abcdef \n!#:".to_vec()), 0..12);
    prop::collection::vec((filler, prop::option::of(0..n)), 0..12).prop_map(move |parts| {
        let mut d = Vec::new();
        for (f, s) in parts {
            d.extend(f);
            if let Some(i) = s {
                d.extend(&values[i]);
            }
        }
        (values.clone(), d)
    })
}

/// Leftmost-longest over the raw secret values, written out naively.
fn model(values: &[Vec<u8>], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < data.len() {
        // The longest secret at i; among equal values the first name.
        let best = values
            .iter()
            .enumerate()
            .filter(|(_, v)| data[i..].starts_with(v))
            .max_by_key(|&(j, v)| (v.len(), std::cmp::Reverse(j)));
        match best {
            Some((j, v)) => {
                out.extend(format!("[REDACTED:S{j}]").bytes());
                i += v.len();
            }
            None => {
                out.push(data[i]);
                i += 1;
            }
        }
    }
    out
}

/// Splits `data` at the given cut points (taken modulo its length).
fn chunked(data: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut prev = 0;
    for c in cuts {
        out.push(data[prev..c].to_vec());
        prev = c;
    }
    out.push(data[prev..].to_vec());
    out
}

fn run_stream(r: &Redactor, chunks: &[Vec<u8>]) -> Vec<u8> {
    let mut s = r.stream();
    let mut out = Vec::new();
    for c in chunks {
        s.push(c, &mut out);
        assert!(s.held() < r.max_pattern_len().max(1));
    }
    s.finish(&mut out);
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn stream_equals_whole_and_model(
        (values, data) in secrets().prop_flat_map(with_secrets),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let r = Redactor::new(&named(&values));
        let whole = r.redact_all(&data);
        // The model knows only the raw values: equality also shows that bytes outside a match
        // are kept, in order, and nothing else is touched.
        prop_assert_eq!(&whole, &model(&values, &data));
        prop_assert_eq!(&run_stream(&r, &chunked(&data, &cuts)), &whole);
        let bytewise: Vec<Vec<u8>> = data.iter().map(|&b| vec![b]).collect();
        prop_assert_eq!(&run_stream(&r, &bytewise), &whole);
        for v in &values {
            prop_assert!(!contains(&whole, v), "{:?} in {:?}", v, whole);
        }
    }

    #[test]
    fn holds_back_only_a_possible_start(
        (values, data) in secrets().prop_flat_map(with_secrets),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let r = Redactor::new(&named(&values));
        let mut s = r.stream();
        let mut out = Vec::new();
        let mut seen = Vec::new();
        for c in chunked(&data, &cuts) {
            s.push(&c, &mut out);
            seen.extend_from_slice(&c);
            let held = &seen[seen.len() - s.held()..];
            prop_assert!(
                held.is_empty() || values.iter().any(|v| v.len() > held.len() && v.starts_with(held)),
                "held {:?}", held
            );
        }
    }

    #[test]
    fn arbitrary_bytes_and_encodings(
        values in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..24), 1..4),
        parts in prop::collection::vec((prop::collection::vec(any::<u8>(), 0..6), 0..4usize, 0..8usize), 0..8),
        cuts in prop::collection::vec(any::<usize>(), 0..10),
    ) {
        let r = Redactor::new(&named(&values));
        let mut data = Vec::new();
        for (noise, which, form) in parts {
            data.extend(&noise);
            let v = &values[which % values.len()];
            let framed = [&noise[..], v, &noise[..]].concat();
            match form {
                0 => data.extend(STANDARD.encode(&framed).bytes()),
                1 => data.extend(URL_SAFE_NO_PAD.encode(&framed).bytes()),
                _ => data.extend(v),
            }
        }
        let whole = r.redact_all(&data);
        prop_assert_eq!(&run_stream(&r, &chunked(&data, &cuts)), &whole);
    }

    #[test]
    fn encoded_secrets_are_masked(
        secret in prop::collection::vec(any::<u8>(), 7..40),
        before in prop::collection::vec(any::<u8>(), 0..5),
        after in prop::collection::vec(any::<u8>(), 0..5),
        url_safe in any::<bool>(),
    ) {
        let r = Redactor::new(&[("K".to_string(), secret.clone())]);
        let framed = [&before[..], &secret, &after[..]].concat();
        let enc = if url_safe { URL_SAFE_NO_PAD.encode(&framed) } else { STANDARD.encode(&framed) };
        let line = format!("token: {enc}\n");
        let out = r.redact_all(line.as_bytes());
        prop_assert!(contains(&out, b"[REDACTED:K]"), "{}", String::from_utf8_lossy(&out));
    }
}
