//! Server → agent messages (`hodei_core::wire::ToAgent`) as an agent receives them: one frame,
//! split and decoded. The spec of an `Assign` is validated and rendered as the agent would, and
//! the message's `Debug` must not depend on the secret values it carries. A decoded message
//! must re-encode to a frame that decodes to the same value.
#![no_main]

use hodei_core::wire::ToAgent;
use hodei_fuzz::{check_to_agent, decode_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(msg) = decode_frame::<ToAgent>(data) {
        check_to_agent(&msg);
    }
});
