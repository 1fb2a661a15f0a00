//! API tokens: their text form, how they are minted and parsed, and the record the server
//! keeps for each.
//!
//! A token reads `hodei_<id>_<secret>`: `id` is 16 lowercase hex digits (a random `u64` the
//! server looks the record up by) and `secret` is 32 random bytes in unpadded URL-safe base64
//! (43 characters). The server stores only the SHA-256 of the secret, so a leaked token store
//! cannot be replayed. The fixed prefix lets secret scanners recognise a leaked token.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom as _, SystemRandom};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;
use zeroize::Zeroize as _;

use crate::role::Role;

/// What every token text starts with.
pub const PREFIX: &str = "hodei_";
const ID_LEN: usize = 16;
const SECRET_LEN: usize = 43;
/// `hodei_` + id + `_` + secret.
pub const TOKEN_LEN: usize = PREFIX.len() + ID_LEN + 1 + SECRET_LEN;

/// The public half of a token: names its record, grants nothing by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TokenId(pub u64);

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Why a token was refused. Messages never contain the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The server has no record with this id.
    #[error("unknown token")]
    Unknown,
    /// A record exists but the secret is not its secret.
    #[error("token secret does not match")]
    Mismatch,
    #[error("token expired")]
    Expired,
    #[error("token revoked")]
    Revoked,
    #[error("token has no uses left")]
    UsedUp,
    #[error("system random number generator failed")]
    Rng,
}

/// A syntactically valid token. The secret is wiped when this is dropped.
pub struct ParsedToken {
    pub id: TokenId,
    secret: [u8; 32],
}

impl ParsedToken {
    /// SHA-256 of the secret: what a [`TokenRecord`] stores.
    pub fn hash(&self) -> [u8; 32] {
        sha256(&self.secret)
    }
}

impl Drop for ParsedToken {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

impl fmt::Debug for ParsedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedToken")
            .field("id", &self.id)
            .field("secret", &"<secret>")
            .finish()
    }
}

/// Mints a token: its text (shown to the user once), its id, and the hash to store.
pub fn generate() -> Result<(String, TokenId, [u8; 32]), TokenError> {
    let rng = SystemRandom::new();
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    rng.fill(&mut id).map_err(|_| TokenError::Rng)?;
    rng.fill(&mut secret).map_err(|_| TokenError::Rng)?;
    let id = TokenId(u64::from_be_bytes(id));
    let text = format!("{PREFIX}{id}_{}", URL_SAFE_NO_PAD.encode(secret));
    let hash = sha256(&secret);
    secret.zeroize();
    Ok((text, id, hash))
}

/// Parses a token's text, forgiving surrounding whitespace (tokens are read from files).
///
/// Only the canonical form is accepted: lowercase hex id, and base64 whose unused trailing
/// bits are zero, so one secret has exactly one spelling.
pub fn parse(text: &str) -> Result<ParsedToken, TokenError> {
    // Work on bytes: slicing a `str` at a non-character boundary would panic.
    let b = text.trim().as_bytes();
    let rest = b
        .strip_prefix(PREFIX.as_bytes())
        .ok_or(TokenError::Malformed(
            "expected it to start with \"hodei_\"",
        ))?;
    if b.len() != TOKEN_LEN {
        return Err(TokenError::Malformed("wrong length"));
    }
    let (id_hex, rest) = rest.split_at(ID_LEN);
    let secret_b64 = rest.strip_prefix(b"_").ok_or(TokenError::Malformed(
        "expected \"_\" after the 16-digit id",
    ))?;
    let id = parse_id(id_hex).ok_or(TokenError::Malformed("id is not 16 lowercase hex digits"))?;
    let mut secret = [0u8; 32];
    match URL_SAFE_NO_PAD.decode_slice(secret_b64, &mut secret) {
        Ok(32) => Ok(ParsedToken { id, secret }),
        _ => {
            secret.zeroize();
            Err(TokenError::Malformed(
                "secret is not 43 characters of base64url",
            ))
        }
    }
}

fn parse_id(hex: &[u8]) -> Option<TokenId> {
    // Checked by hand rather than `u64::from_str_radix`, which would also accept a `+` sign
    // and uppercase digits.
    hex.iter()
        .try_fold(0u64, |acc, &c| {
            let d = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                _ => return None,
            };
            Some((acc << 4) | u64::from(d))
        })
        .map(TokenId)
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, data).as_ref());
    out
}

/// What the server stores per token. `hash` is written as hex in JSON.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: TokenId,
    pub role: Role,
    /// Who or what the token is for, e.g. `ci-deploy`; shown in listings and the audit log.
    pub name: String,
    pub created_at_ms: u64,
    /// Refused at and after this instant.
    pub expires_at_ms: Option<u64>,
    /// `None` for unlimited; the server decrements it on each use.
    pub uses_left: Option<u32>,
    pub revoked: bool,
    /// SHA-256 of the secret.
    #[serde(with = "crate::hex::array32")]
    pub hash: [u8; 32],
}

impl TokenRecord {
    /// A live, unlimited, never-expiring record for a freshly generated token.
    pub fn new(
        id: TokenId,
        role: Role,
        name: impl Into<String>,
        created_at_ms: u64,
        hash: [u8; 32],
    ) -> Self {
        TokenRecord {
            id,
            role,
            name: name.into(),
            created_at_ms,
            expires_at_ms: None,
            uses_left: None,
            revoked: false,
            hash,
        }
    }

    /// Whether `t` is this record's token and still usable at `now_ms`.
    ///
    /// The secret is checked first, in constant time, so that whoever lacks it learns nothing
    /// about the record's state. Consuming a use is the caller's job (it owns the store);
    /// this only refuses a record with no uses left.
    pub fn check(&self, t: &ParsedToken, now_ms: u64) -> Result<(), TokenError> {
        let same_hash: bool = self.hash.ct_eq(&t.hash()).into();
        if t.id != self.id || !same_hash {
            return Err(TokenError::Mismatch);
        }
        if self.revoked {
            return Err(TokenError::Revoked);
        }
        if self.expires_at_ms.is_some_and(|at| now_ms >= at) {
            return Err(TokenError::Expired);
        }
        if self.uses_left == Some(0) {
            return Err(TokenError::UsedUp);
        }
        Ok(())
    }
}

impl fmt::Debug for TokenRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The hash is not the secret, but it is offline-guessable material: keep it out of logs.
        f.debug_struct("TokenRecord")
            .field("id", &self.id)
            .field("role", &self.role)
            .field("name", &self.name)
            .field("created_at_ms", &self.created_at_ms)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("uses_left", &self.uses_left)
            .field("revoked", &self.revoked)
            .field("hash", &"<hash>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> (String, ParsedToken, TokenRecord) {
        let (text, id, hash) = generate().unwrap();
        let parsed = parse(&text).unwrap();
        let rec = TokenRecord::new(id, Role::Submitter, "ci", 1_000, hash);
        (text, parsed, rec)
    }

    #[test]
    fn generated_tokens_parse_and_check() {
        let (text, parsed, rec) = fresh();
        assert_eq!(text.len(), TOKEN_LEN);
        assert!(text.starts_with("hodei_"));
        assert_eq!(&text[6..22], rec.id.to_string());
        assert_eq!(parsed.id, rec.id);
        assert_eq!(parsed.hash(), rec.hash);
        assert_eq!(rec.check(&parsed, 2_000), Ok(()));
        // Tokens are read from files: a trailing newline and indentation are fine.
        let from_file = parse(&format!("  {text}\r\n")).unwrap();
        assert_eq!(rec.check(&from_file, 2_000), Ok(()));
    }

    #[test]
    fn two_tokens_differ() {
        let (a, ..) = fresh();
        let (b, ..) = fresh();
        assert_ne!(a, b);
    }

    #[test]
    fn id_displays_as_16_hex() {
        assert_eq!(TokenId(0xab).to_string(), "00000000000000ab");
        assert_eq!(TokenId(u64::MAX).to_string(), "ffffffffffffffff");
    }

    #[test]
    fn check_refusals() {
        let (_, parsed, rec) = fresh();
        let (_, other, _) = fresh();
        assert_eq!(rec.check(&other, 0), Err(TokenError::Mismatch));

        // Same id, wrong secret.
        let forged = ParsedToken {
            id: rec.id,
            secret: [7; 32],
        };
        assert_eq!(rec.check(&forged, 0), Err(TokenError::Mismatch));

        let mut r = rec.clone();
        r.revoked = true;
        assert_eq!(r.check(&parsed, 0), Err(TokenError::Revoked));
        // A wrong secret learns nothing about revocation.
        assert_eq!(r.check(&forged, 0), Err(TokenError::Mismatch));

        let mut r = rec.clone();
        r.expires_at_ms = Some(5_000);
        assert_eq!(r.check(&parsed, 4_999), Ok(()));
        assert_eq!(r.check(&parsed, 5_000), Err(TokenError::Expired));

        let mut r = rec.clone();
        r.uses_left = Some(1);
        assert_eq!(r.check(&parsed, 0), Ok(()));
        r.uses_left = Some(0);
        assert_eq!(r.check(&parsed, 0), Err(TokenError::UsedUp));
    }

    #[test]
    fn malformed_inputs() {
        let (text, ..) = fresh();
        let bad = [
            String::new(),
            "hodei_".into(),
            text.replacen("hodei_", "hodel_", 1),
            text[..TOKEN_LEN - 1].into(),
            format!("{text}A"),
            text.replacen('_', "-", 2),
            // Uppercase id: not canonical.
            format!(
                "hodei_{}{}",
                text[6..22]
                    .to_uppercase()
                    .replace(|c: char| c.is_ascii_digit(), "A"),
                &text[22..]
            ),
            format!("hodei_+{}", &text[7..]),
            format!("{}{}", &text[..TOKEN_LEN - 1], '='),
            format!("{}{}", &text[..TOKEN_LEN - 1], 'é'),
            format!("{}é{}", &text[..30], &text[32..]),
            "hodei_0123456789abcdef_ééééééééééééééééééééé".into(),
        ];
        for b in bad {
            assert!(matches!(parse(&b), Err(TokenError::Malformed(_))), "{b:?}");
        }
    }

    #[test]
    fn non_canonical_base64_is_refused() {
        // 43 base64 characters carry 258 bits; the last 2 must be zero.
        let (text, ..) = fresh();
        let last = text.as_bytes()[TOKEN_LEN - 1];
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let pos = alphabet.iter().position(|&c| c == last).unwrap();
        let twisted = alphabet[pos ^ 1] as char;
        assert!(parse(&format!("{}{twisted}", &text[..TOKEN_LEN - 1])).is_err());
    }

    #[test]
    fn secrets_stay_out_of_debug_and_json() {
        let (text, parsed, rec) = fresh();
        let secret = &text[23..];
        assert!(!format!("{parsed:?}").contains(secret));
        let dbg = format!("{rec:?}");
        assert!(dbg.contains("<hash>"));
        assert!(!dbg.contains(&crate::hex::encode(&rec.hash)));
        let json = serde_json::to_string(&rec).unwrap();
        assert!(json.contains(&crate::hex::encode(&rec.hash)));
        assert!(!json.contains(secret));
        let back: TokenRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, rec);
    }

    #[test]
    fn error_messages() {
        assert!(
            TokenError::Malformed("x")
                .to_string()
                .starts_with("malformed token: ")
        );
        assert_eq!(TokenError::Unknown.to_string(), "unknown token");
        assert_eq!(TokenError::Expired.to_string(), "token expired");
    }
}
