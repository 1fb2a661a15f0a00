//! Agent → server messages (`hodei_core::wire::FromAgent`) as the server receives them: one
//! frame, split and decoded. A decoded message must re-encode to a frame that decodes to the
//! same value, and everything the server derives from a reported outcome must not panic.
#![no_main]

use hodei_core::wire::FromAgent;
use hodei_fuzz::{check_outcome, decode_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(FromAgent::Finished { outcome, .. }) = decode_frame::<FromAgent>(data) {
        check_outcome(&outcome);
    }
});
