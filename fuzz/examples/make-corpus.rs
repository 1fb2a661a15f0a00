//! Writes the seed corpus under `fuzz/corpus/<target>/`: valid frames of representative
//! messages made with the real encoders, plus a few near misses, so each fuzzer starts from
//! inputs that reach deep into its decoder.
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example make-corpus
//! cargo run --manifest-path fuzz/Cargo.toml --example make-corpus --no-default-features  # no auth
//! ```
//!
//! Files are named `seed-<what>`; running it again overwrites them, except the sealed secrets
//! (their nonces are random, so an existing seal is kept). Other files are left alone.

use std::fs;
use std::path::{Path, PathBuf};

use hodei_core::frame::Wire;
use hodei_core::wire::PROTOCOL_VERSION;
use hodei_fuzz as samples;

fn dir(target: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    fs::create_dir_all(&d).expect("create corpus dir");
    d
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    assert!(bytes.len() < 64 << 10, "seed {target}/{name} is too large");
    fs::write(dir(target).join(format!("seed-{name}")), bytes).expect("write seed");
}

fn frame<T: Wire>(msg: &T) -> Vec<u8> {
    msg.to_frame().expect("sample encodes")
}

fn frames<T: Wire>(target: &str, list: &[(&str, T)]) -> Vec<Vec<u8>> {
    list.iter()
        .map(|(name, msg)| {
            let f = frame(msg);
            write(target, name, &f);
            f
        })
        .collect()
}

fn main() {
    let from_agent = frames("from_agent", &samples::from_agent_samples());
    let to_agent = frames("to_agent", &samples::to_agent_samples());
    let to_server = frames("to_server", &samples::to_server_samples());
    frames("request", &samples::request_samples());
    frames("from_server", &samples::from_server_samples());
    frames("job_record", &samples::job_record_samples());
    frames("event", &samples::event_samples());
    // The compact form the store writes now.
    for (name, ev) in samples::event_samples() {
        let mut b = Vec::new();
        hodei_core::event_codec::encode(&ev, &mut b);
        write("event", &format!("compact-{name}"), &b);
    }
    // And a block of them, as one commit stores them.
    let mut block = hodei_core::log_block::Builder::default();
    for (_, ev) in samples::event_samples() {
        block.push(|out| hodei_core::event_codec::encode(&ev, out));
    }
    write("event", "block", &block.take());

    // Streams of frames as a reader receives them: several frames back to back, one cut
    // short, foreign versions and oversized announcements.
    let mut stream = Vec::new();
    for f in from_agent.iter().take(4) {
        stream.extend_from_slice(f);
    }
    write("frame_split", "stream-agent", &stream);
    let mut stream = Vec::new();
    for f in to_agent.iter().take(3).chain(to_server.iter().take(2)) {
        stream.extend_from_slice(f);
    }
    write("frame_split", "stream-mixed", &stream);
    let cut = &from_agent[0][..from_agent[0].len() - 3];
    let mut stream = from_agent[2].clone();
    stream.extend_from_slice(cut);
    write("frame_split", "stream-truncated", &stream);
    write("frame_split", "header-only", &from_agent[2][..6]);
    let mut v = from_agent[2].clone();
    v[0] = 2;
    write("frame_split", "other-version", &v);
    let mut v = PROTOCOL_VERSION.to_le_bytes().to_vec();
    v.extend_from_slice(&u32::MAX.to_le_bytes());
    write("frame_split", "too-large", &v);
    let mut v = PROTOCOL_VERSION.to_le_bytes().to_vec();
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&from_agent[2]);
    write("frame_split", "empty-then-frame", &v);

    // CLI text.
    for (name, text) in [
        ("size-plain", "512"),
        ("size-m", "512M"),
        ("size-gib", "2GiB"),
        ("size-kb", " 64kB "),
        ("size-t", "1T"),
        ("size-overflow", "99999999999999999999T"),
        ("kv", "RUST_LOG=info"),
        ("kv-eq", "a=b=c"),
        ("kv-empty-key", "=x"),
        ("retry-on", "exit,lost"),
        ("retry-on-all", "exit, lost ,timeout"),
        ("retry-on-none", "none"),
        ("cursor-pairs", "0:15,1:22"),
        ("cursor-bare", "5"),
        ("job-id", "j0.1.42"),
        ("worker-id", "w3.2.1"),
        ("job-id-max", "j255.1048575.68719476735"),
        ("state", "running"),
        ("state-timed-out", "timed_out"),
        ("secret-name", "api-key.v2"),
        ("secret-name-dot", ".hidden"),
    ] {
        write("spec_text", name, text.as_bytes());
    }

    // Structured targets: arbitrary's decoding of raw bytes; a few shapes to start from.
    write("spec_backoff", "zeros", &[0; 48]);
    write("spec_backoff", "large", &[0x7f; 48]);
    let mut v = Vec::new();
    for x in [
        3u32.to_le_bytes().to_vec(),
        vec![1],
        1_000u64.to_le_bytes().to_vec(),
    ] {
        v.extend_from_slice(&x);
    }
    v.extend_from_slice(&60_000u64.to_le_bytes());
    v.extend_from_slice(&[1, 0x30, 0x75, 0, 0, 0, 0, 0, 0]);
    v.extend_from_slice(&[0; 9]);
    v.extend_from_slice(&5u32.to_le_bytes());
    v.extend_from_slice(&7u64.to_le_bytes());
    write("spec_backoff", "default-policy", &v);

    #[cfg(feature = "auth")]
    auth::seeds();
}

#[cfg(feature = "auth")]
mod auth {
    use hodei_auth::audit::{AuditChain, encode};
    use hodei_auth::seal::SealKey;

    use super::write;

    pub fn seeds() {
        // A fixed, obviously fake token (secret bytes 0..32), so that the committed seeds do
        // not change on every run and no secret scanner mistakes them for a leak.
        let token = hodei_fuzz::SAMPLE_TOKEN;
        assert!(hodei_auth::token::parse(token).is_ok());
        write("auth_token", "valid", token.as_bytes());
        write(
            "auth_token",
            "valid-padded",
            format!("  {token}\n").as_bytes(),
        );
        write(
            "auth_token",
            "uppercase-id",
            token.to_ascii_uppercase().as_bytes(),
        );
        write("auth_token", "short", &token.as_bytes()[..token.len() - 1]);
        write(
            "auth_token",
            "zeros",
            b"hodei_0000000000000000_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        );
        write(
            "auth_token",
            "bad-trailing-bits",
            b"hodei_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB",
        );

        let mut chain = AuditChain::new(2);
        let records = [
            chain.append(1_700_000_000_000, "admin", "token.create", "ci", "c-1", ""),
            chain.append(
                1_700_000_000_500,
                "ci",
                "job.submit",
                "j2.1.7",
                "c-2",
                "{\"n\":1}",
            ),
            chain.append(
                1_700_000_001_000,
                "system",
                "secret.read",
                "DB_PASS",
                "",
                "é ünï",
            ),
        ];
        for (i, r) in records.iter().enumerate() {
            write("auth_audit", &format!("record-{i}"), &encode(r));
        }
        // A version this build does not read.
        let mut bad = encode(&records[1]);
        bad[0] = 1;
        write("auth_audit", "other-version", &bad);

        let key = SealKey::from_bytes(hodei_fuzz::SEAL_TEST_KEY);
        for (name, plain) in [
            ("DB_PASS", &b"hunter2"[..]),
            ("EMPTY", &b""[..]),
            ("", &b"no name"[..]),
            ("BIN", &[0u8, 255, 10, 13, 0][..]),
        ] {
            let sealed = key.seal(name, plain).expect("seal");
            let mut v = vec![u8::try_from(name.len()).expect("short name")];
            v.extend_from_slice(name.as_bytes());
            v.extend_from_slice(&sealed);
            let label = if name.is_empty() { "noname" } else { name };
            // Seals use a random nonce: keep existing ones so the committed seeds stay put.
            let path = super::dir("auth_seal_open").join(format!("seed-sealed-{label}"));
            if !path.exists() {
                write("auth_seal_open", &format!("sealed-{label}"), &v);
            }
        }

        // Structured input (see the target): arbitrary's decoding of raw bytes.
        write("auth_redact", "zeros", &[0; 32]);
        write(
            "auth_redact",
            "text",
            b"\x02hunter2\x03password123\x01\x05prefix hunter2 suffix\x02\x00\x03\x01\x02\x07\x05",
        );
        write(
            "auth_redact",
            "newlines",
            b"\x01line one\nline two\n\x00\x02\x00\x01\x00\x03\x00\x04\x09\x01\x02",
        );
    }
}
