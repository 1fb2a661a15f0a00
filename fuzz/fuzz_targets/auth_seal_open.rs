//! Sealed secrets (`hodei_auth::seal::SealKey::open`) under a fixed test key, as the server
//! opens what it reads from its secret store. Input: one byte of name length, the name, then
//! the sealed bytes. Opening arbitrary bytes must fail cleanly; the seeds are real seals under
//! the same key (see `examples/make-corpus.rs`), so mutations start from openable inputs.
//! Whatever opens must seal again and open to the same plaintext, and must not open under
//! another name.
#![no_main]

use hodei_auth::seal::{OVERHEAD, SealKey};
use libfuzzer_sys::fuzz_target;

/// The key the seed corpus was sealed with.
const KEY: [u8; 32] = hodei_fuzz::SEAL_TEST_KEY;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n).min(rest.len());
    let (name, sealed) = rest.split_at(n);
    let name = String::from_utf8_lossy(name);
    let key = SealKey::from_bytes(KEY);
    let Ok(plain) = key.open(&name, sealed) else {
        return;
    };
    assert_eq!(sealed.len(), OVERHEAD + plain.len());
    let other = format!("{name}.");
    assert!(
        key.open(&other, sealed).is_err(),
        "opened under another name"
    );
    let again = key.seal(&name, &plain).expect("sealing works");
    let back = key.open(&name, &again).expect("a fresh seal opens");
    assert_eq!(&back[..], &plain[..]);
});
