//! Stored audit records (`hodei_auth::audit::decode`), as the server reads its audit log back.
//! Decoding accepts only the canonical encoding, so a decoded record must encode to exactly
//! the input bytes. The record is read as the first of chain 0 and then verified as a
//! one-record chain, with and without a head, which must succeed exactly when it is a valid
//! first record.
#![no_main]

use hodei_auth::audit::{Position, decode, encode, verify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let first = Position {
        chain: 0,
        seq: 0,
        prev: [0; 32],
    };
    let Ok(r) = decode(data, &first) else {
        return;
    };
    assert_eq!(encode(&r), data, "decode accepted a non-canonical encoding");
    let valid_first = r.seq == 0 && r.prev == [0; 32] && r.compute_hash() == r.hash;
    assert_eq!(
        verify(r.chain, [r.clone()], None).is_ok(),
        valid_first,
        "{r:?}"
    );
    let head = Some((r.seq.wrapping_add(1), r.hash));
    assert_eq!(verify(r.chain, [r.clone()], head).is_ok(), valid_first);
    let _ = verify(r.chain.wrapping_add(1), [r], None);
});
