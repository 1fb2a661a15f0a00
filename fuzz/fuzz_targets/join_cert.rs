//! A certificate request as the server receives it: the raw public key of a `Join` request
//! (`hodei_core::wire::ControlRequest::Join`, whose framing the `request` target covers), through
//! `hodei_transport::check_agent_key` and, if the shape is accepted, the CA's real signing
//! (`Authority::issue_agent`), as `server/src/control/pki.rs` does for a valid join token.
//!
//! Checks: no panic; a key the check accepts is always signed, and the certificate carries
//! exactly that key; a key it refuses is refused by the signer too.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use hodei_transport::{Authority, check_agent_key};
use libfuzzer_sys::fuzz_target;

/// One CA for the whole run, generated in a private temporary directory.
fn authority() -> &'static Authority {
    static CA: OnceLock<Authority> = OnceLock::new();
    CA.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("hodei-fuzz-ca-{}", std::process::id()));
        hodei_transport::ensure_server_tls(&dir).expect("a CA can be generated");
        let ca = Authority::load(&dir).expect("the generated CA loads");
        let _ = std::fs::remove_dir_all(&dir);
        ca
    })
}

fuzz_target!(|data: &[u8]| {
    let ca = authority();
    let accepted = check_agent_key(data).is_ok();
    match ca.issue_agent(data, "agent-fuzz", Duration::from_secs(3600)) {
        Ok((pem, der)) => {
            assert!(accepted, "signed a key the shape check refuses");
            assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
            assert!(
                der.windows(data.len()).any(|w| w == data),
                "the certificate does not carry the agent's key"
            );
        }
        Err(_) => assert!(!accepted, "refused to sign a well-formed key"),
    }
});
