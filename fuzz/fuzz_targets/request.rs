//! The first frame of every client stream (`hodei_core::wire::Request`: a token and a
//! `ToServer` body), as the server reads it (`server/src/conn/client.rs`): split and decoded; the body
//! gets the `to_server` checks (spec validation, secret-free `Debug`) and, with the `auth`
//! feature, the token goes through `hodei_auth::token::parse` as authentication does. A decoded
//! request must re-encode to a frame that decodes to the same value.
#![no_main]

use hodei_core::wire::Request;
use hodei_fuzz::{check_to_server, decode_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(req) = decode_frame::<Request>(data) {
        check_to_server(&req.body);
        #[cfg(feature = "auth")]
        let _ = hodei_auth::token::parse(&req.token);
    }
});
