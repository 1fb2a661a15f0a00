//! Stored job records (`hodei_core::job::JobRecord`) as the server reads them back from its
//! store at start-up (`split_frame` then `JobRecord::decode`, as in `server/src/store/jobs.rs`).
//! The stored spec is validated and rendered. A decoded record must re-encode to a frame that
//! decodes to the same value.
#![no_main]

use hodei_core::job::JobRecord;
use hodei_fuzz::{check_spec, decode_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(r) = decode_frame::<JobRecord>(data) {
        check_spec(&r.spec);
        let _ = format!("{} {} {} {:?}", r.id, r.attempt, r.state, r.worker);
        let _ = r.id.owner(7);
    }
});
