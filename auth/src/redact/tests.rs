//! Unit tests of redaction: split secrets, encodings, overlaps, and the hold-back.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

use super::*;

fn redactor(secrets: &[(&str, &[u8])]) -> Redactor {
    let owned: Vec<(String, Vec<u8>)> = secrets
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_vec()))
        .collect();
    Redactor::new(&owned)
}

fn stream_chunks(r: &Redactor, chunks: &[&[u8]]) -> Vec<u8> {
    let mut s = r.stream();
    let mut out = Vec::new();
    for c in chunks {
        s.push(c, &mut out);
        assert!(
            s.held() < r.max_pattern_len().max(1),
            "held {} of max {}",
            s.held(),
            r.max_pattern_len()
        );
    }
    s.finish(&mut out);
    assert_eq!(s.held(), 0);
    out
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn masks_raw_value() {
    let r = redactor(&[("DB_PASS", b"hunter22")]);
    assert_eq!(
        text(&r.redact_all(b"pw=hunter22;")),
        "pw=[REDACTED:DB_PASS];"
    );
    assert_eq!(
        text(&r.redact_all(b"hunter22hunter22")),
        "[REDACTED:DB_PASS][REDACTED:DB_PASS]"
    );
    assert_eq!(text(&r.redact_all(b"hunter2")), "hunter2");
}

#[test]
fn secret_split_at_every_point_into_two_and_three_chunks() {
    let r = redactor(&[("K", b"s3cr3t-value")]);
    let data = b"start s3cr3t-value end";
    let want = b"start [REDACTED:K] end".to_vec();
    for i in 0..=data.len() {
        assert_eq!(
            stream_chunks(&r, &[&data[..i], &data[i..]]),
            want,
            "split {i}"
        );
        for j in i..=data.len() {
            assert_eq!(
                stream_chunks(&r, &[&data[..i], &data[i..j], &data[j..]]),
                want,
                "split {i},{j}"
            );
        }
    }
    let bytes: Vec<&[u8]> = data.chunks(1).collect();
    assert_eq!(stream_chunks(&r, &bytes), want);
}

#[test]
fn holds_back_only_a_possible_start() {
    let r = redactor(&[("W", b"world")]);
    let mut s = r.stream();
    let mut out = Vec::new();
    s.push(b"hello wor", &mut out);
    assert_eq!((text(&out).as_str(), s.held()), ("hello ", 3));
    s.push(b"m", &mut out);
    // "worm" cannot start "world": all of it goes out.
    assert_eq!((text(&out).as_str(), s.held()), ("hello worm", 0));
    s.push(b"s and w", &mut out);
    assert_eq!(s.held(), 1);
    s.push(b"orld!", &mut out);
    assert_eq!(text(&out), "hello worms and [REDACTED:W]!");
    assert_eq!(s.held(), 0);
    // Nothing that could start a secret: nothing is delayed.
    s.push(b"prompt> ", &mut out);
    assert_eq!(s.held(), 0);
    assert!(out.ends_with(b"prompt> "));
}

#[test]
fn a_complete_match_that_could_grow_is_held() {
    let r = redactor(&[("SHORT", b"token"), ("LONG", b"token-extended")]);
    let mut s = r.stream();
    let mut out = Vec::new();
    s.push(b"a token", &mut out);
    assert_eq!((text(&out).as_str(), s.held()), ("a ", 5));
    s.push(b"-extended", &mut out);
    s.finish(&mut out);
    assert_eq!(text(&out), "a [REDACTED:LONG]");
    assert_eq!(
        stream_chunks(&r, &[b"a token", b"-ext", b" b"]),
        b"a [REDACTED:SHORT]-ext b"
    );
}

#[test]
fn multi_line_secret_with_lf_and_crlf() {
    let key = b"-----BEGIN KEY-----\nMIIBOgIBAAJBAK\n-----END KEY-----";
    let r = redactor(&[("TLS_KEY", key)]);
    let lf = [&b"key:\n"[..], key, b"\ndone"].concat();
    assert_eq!(text(&r.redact_all(&lf)), "key:\n[REDACTED:TLS_KEY]\ndone");
    let crlf = [&b"key:\r\n"[..], &key.replace("\n", "\r\n"), b"\r\ndone"].concat();
    assert_eq!(
        text(&r.redact_all(&crlf)),
        "key:\r\n[REDACTED:TLS_KEY]\r\ndone"
    );
    let chunks: Vec<&[u8]> = crlf.chunks(7).collect();
    assert_eq!(stream_chunks(&r, &chunks), r.redact_all(&crlf));
}

trait Replace {
    fn replace(&self, from: &str, to: &str) -> Vec<u8>;
}

impl Replace for [u8] {
    fn replace(&self, from: &str, to: &str) -> Vec<u8> {
        text(self).replace(from, to).into_bytes()
    }
}

#[test]
fn base64_at_every_alignment_in_both_alphabets() {
    // Bytes chosen so the two alphabets differ (`+`/`/` versus `-`/`_`).
    let secret: &[u8] = b"\xfb\xff\xbfsecret-\xfe\xfa\xf0value\xff";
    let r = redactor(&[("API", secret)]);
    for prefix in ["", "u", "us", "usr", "user", "user:"] {
        for suffix in ["", "!", "!!", "!!!"] {
            let plain = [prefix.as_bytes(), secret, suffix.as_bytes()].concat();
            for encoded in [STANDARD.encode(&plain), URL_SAFE_NO_PAD.encode(&plain)] {
                let line = format!("Authorization: Basic {encoded}\n");
                let out = text(&r.redact_all(line.as_bytes()));
                assert!(
                    out.contains("[REDACTED:API]"),
                    "{prefix:?} {suffix:?}: {out}"
                );
                // At most two characters of the encoded secret survive on either side.
                let kept = out.len() - "[REDACTED:API]".len();
                assert!(kept + 4 + secret.len() * 4 / 3 >= line.len(), "{out}");
            }
        }
    }
}

#[test]
fn url_encoded_secret() {
    let r = redactor(&[("PW", b"p@ss word/1")]);
    for url in [
        "https://bob:p%40ss%20word%2F1@db/x",
        "https://bob:p%40ss%20word%2f1@db/x",
        "pw=p%40ss+word%2F1&x=1",
    ] {
        let out = text(&r.redact_all(url.as_bytes()));
        assert!(
            out.contains("[REDACTED:PW]") && !out.contains("word"),
            "{out}"
        );
    }
}

#[test]
fn overlapping_secrets() {
    // One inside the other: the longer, leftmost one wins.
    let r = redactor(&[("A", b"pass"), ("B", b"password123")]);
    assert_eq!(
        text(&r.redact_all(b"x password123 pass")),
        "x [REDACTED:B] [REDACTED:A]"
    );
    assert_eq!(text(&r.redact_all(b"password12")), "[REDACTED:A]word12");
    // Overlapping occurrences: the first is masked, the second from the first's end on is not
    // found (documented limitation).
    let r = redactor(&[("A", b"abcdef"), ("B", b"defghi")]);
    assert_eq!(
        text(&r.redact_all(b"abcdefghi defghi")),
        "[REDACTED:A]ghi [REDACTED:B]"
    );
    let data = b"abcdefghi";
    for i in 0..=data.len() {
        assert_eq!(
            stream_chunks(&r, &[&data[..i], &data[i..]]),
            r.redact_all(data)
        );
    }
}

#[test]
fn same_value_under_two_names() {
    let r = redactor(&[("FIRST", b"shared!"), ("SECOND", b"shared!")]);
    assert_eq!(text(&r.redact_all(b"shared!")), "[REDACTED:FIRST]");
}

#[test]
fn short_and_empty_values_are_not_masked() {
    let r = redactor(&[("E", b""), ("TWO", b"ab")]);
    assert!(r.is_empty());
    assert_eq!(r.max_pattern_len(), 0);
    assert_eq!(r.redact_all(b"ab ab"), b"ab ab");
    assert_eq!(stream_chunks(&r, &[b"a", b"b"]), b"ab");
    assert!(Redactor::new(&[]).is_empty());
    assert!(!redactor(&[("THREE", b"abc")]).is_empty());
}

#[test]
fn fail_closed_withholds_everything() {
    let r = Redactor {
        mode: Mode::FailClosed,
    };
    assert_eq!(r.redact_all(b""), b"");
    assert_eq!(r.redact_all(b"anything"), FAIL_CLOSED_NOTICE);
    assert_eq!(
        stream_chunks(&r, &[b"", b"any", b"thing"]),
        FAIL_CLOSED_NOTICE
    );
}

#[test]
fn debug_shows_no_secret() {
    let r = redactor(&[("K", b"topsecretvalue")]);
    let dbg = format!("{r:?} {:?}", r.stream());
    assert!(!dbg.contains("topsecret"), "{dbg}");
}

#[test]
fn binary_and_empty_chunks() {
    let r = redactor(&[("BIN", b"\0\xff\0\xff")]);
    let data = b"\0\0\xff\0\xff\xff\0";
    assert_eq!(r.redact_all(data), b"\0[REDACTED:BIN]\xff\0".to_vec());
    assert_eq!(
        stream_chunks(&r, &[b"", &data[..3], b"", &data[3..], b""]),
        r.redact_all(data)
    );
}
