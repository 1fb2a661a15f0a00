//! Server → client answers (`hodei_core::wire::FromServer`) as the CLI receives them: one
//! frame, split and decoded. Job records and events inside are rendered as the CLI would.
//! A decoded answer must re-encode to a frame that decodes to the same value.
#![no_main]

use hodei_core::wire::FromServer;
use hodei_fuzz::{check_spec, decode_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match decode_frame::<FromServer>(data) {
        Some(FromServer::Job(r)) => {
            check_spec(&r.spec);
            let _ = format!("{} {} {}", r.id, r.attempt, r.state);
        }
        Some(FromServer::Jobs(rs)) => {
            for r in &rs {
                check_spec(&r.spec);
                let _ = format!("{} {} {}", r.id, r.attempt, r.state);
            }
        }
        Some(FromServer::Workers(ws)) => {
            for w in &ws {
                let _ = format!("{} {}", w.id, w.state);
            }
        }
        _ => {}
    }
});
