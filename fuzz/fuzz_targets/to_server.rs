//! Client → server request bodies (`hodei_core::wire::ToServer`) framed on their own: one
//! frame, split and decoded (the server reads them inside a `Request`, see the `request`
//! target; this one keeps `ToServer`'s own `Wire` impl covered and its crash reports apart).
//! Every spec of a `Submit` goes through `JobSpec::validate` (the server's gate for untrusted
//! specs) and the renderings used in listings; a `SetSecret`'s `Debug` must not depend on the
//! value. A decoded request must re-encode to a frame that decodes to the same value.
#![no_main]

use hodei_core::wire::ToServer;
use hodei_fuzz::{check_to_server, decode_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(body) = decode_frame::<ToServer>(data) {
        check_to_server(&body);
    }
});
