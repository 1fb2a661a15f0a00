//! The text parsers behind the CLI's flags and the agent's `--label`, on arbitrary strings:
//! `parse_size` (`--mem`), `parse_key_value` (`--env`, `--label`), `RetryOn::parse`
//! (`--retry-on`), `Cursor::parse` (`hodei events --since`), `JobId`/`WorkerId` `FromStr` (every
//! id argument), `JobState` `FromStr` (`--state`) and `check_secret_name` (the server's check
//! of every secret name a spec lists, which becomes a file name on the agent). Each success
//! must print back to text that parses to the same value.
#![no_main]

use hodei_core::event::Cursor;
use hodei_core::ids::{JobId, WorkerId};
use hodei_core::spec::{RetryOn, check_secret_name, parse_key_value, parse_size};
use hodei_core::state::JobState;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let s = s.as_ref();

    if let Ok(n) = parse_size(s) {
        assert_eq!(parse_size(&n.to_string()), Ok(n));
    }

    if let Ok((k, v)) = parse_key_value(s) {
        assert!(!k.is_empty() && !k.contains('='));
        assert_eq!(format!("{k}={v}"), s);
    }

    if let Ok(r) = RetryOn::parse(s) {
        assert_eq!(
            r.0 & !(RetryOn::EXIT.0 | RetryOn::LOST.0 | RetryOn::TIMEOUT.0),
            0
        );
        let names = r.names();
        let text = if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(",")
        };
        assert_eq!(RetryOn::parse(&text), Ok(r));
    }

    if let Ok(c) = Cursor::parse(s) {
        assert_eq!(Cursor::parse(&c.to_string()), Ok(c));
    }

    if let Ok(id) = s.parse::<JobId>() {
        assert_eq!(id.to_string().parse::<JobId>(), Ok(id));
    }
    if let Ok(id) = s.parse::<WorkerId>() {
        assert_eq!(id.to_string().parse::<WorkerId>(), Ok(id));
    }
    if let Ok(st) = s.parse::<JobState>() {
        assert_eq!(st.to_string(), s);
    }

    if check_secret_name(s).is_ok() {
        // It names a file in the job's secrets directory: no path tricks.
        assert!(!s.is_empty() && s.len() <= 64 && !s.starts_with('.'));
        assert!(!s.contains('/') && !s.contains('\0'));
    }
});
