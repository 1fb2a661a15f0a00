//! Hodei's security pieces, shared by the server and the agent.
//!
//! - [`role`]: the four roles a token can carry and what each may do.
//! - [`token`]: API tokens (`hodei_<id>_<secret>`): minting, parsing, and the stored record
//!   that holds only the secret's hash.
//! - [`audit`]: the tamper-evident audit log, a hash chain per shard that reports where it was
//!   edited, cut or reordered.
//! - [`seal`]: secrets encrypted at rest with ChaCha20-Poly1305 under a key kept in an
//!   owner-only file.
//! - [`redact`]: streaming masking of secret values (raw, base64, URL-encoded) in job output.
//!
//! The server uses tokens, roles, the audit log and sealing; the agent uses redaction. Both
//! link this one crate so the two sides cannot drift apart. Everything here is sans-IO (no
//! clock, no sockets, no files) except [`seal::SealKey::load_or_create`], and nothing panics on
//! any input: parsers and decoders of untrusted bytes return errors.

pub mod audit;
mod hex;
pub mod redact;
pub mod role;
pub mod seal;
pub mod token;

pub use audit::{AuditChain, AuditError, AuditRecord, ChainBreak};
pub use redact::{RedactStream, Redactor};
pub use role::{Permission, Role, UnknownRole};
pub use seal::{SealError, SealKey};
pub use token::{ParsedToken, TokenError, TokenId, TokenRecord};
