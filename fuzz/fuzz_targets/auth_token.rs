//! API token text (`hodei_auth::token::parse`), as the server reads it from a request or a
//! token file: arbitrary bytes (invalid UTF-8 replaced, as a lossy reader would). A parsed
//! token must be in canonical form (its id prints back as the text's id, length exact), and its
//! `Debug` output must not contain the secret.
#![no_main]

use hodei_auth::token::{PREFIX, TOKEN_LEN, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(t) = parse(&text) else {
        return;
    };
    let trimmed = text.trim();
    assert_eq!(trimmed.len(), TOKEN_LEN);
    let head = format!("{PREFIX}{}_", t.id);
    assert!(
        trimmed.starts_with(&head),
        "{trimmed:?} parsed to id {}",
        t.id
    );
    let secret = &trimmed[head.len()..];
    assert!(!format!("{t:?}").contains(secret), "Debug shows the secret");
    let _ = t.hash();
});
