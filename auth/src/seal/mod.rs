//! Secrets encrypted at rest with ChaCha20-Poly1305.
//!
//! Sealed form: `version (1 byte, = 1) || nonce (12 random bytes) || ciphertext || tag (16)`.
//! The secret's name is the associated data, so a ciphertext copied under another name fails to
//! open rather than handing one job another secret. Nonces are random: with 96 bits, collisions
//! stay negligible far beyond the number of secrets a server will ever seal with one key.
//!
//! The key is 32 random bytes in a file only its owner can read ([`SealKey::load_or_create`]).
//! Our copies of the key and of opened plaintexts are wiped on drop; ring's internal key
//! schedule, built per call, is not ours to wipe.

#[cfg(unix)]
mod keyfile;

use std::fmt;
use std::path::PathBuf;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom as _, SystemRandom};
use zeroize::Zeroizing;

const VERSION: u8 = 1;
const TAG_LEN: usize = 16;
/// The smallest sealed value: an empty plaintext.
pub const OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;

/// Why a key could not be loaded or a secret sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("seal key file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "seal key file {path} has mode {mode:04o}: it must not be accessible by group or others (chmod 600 {path})"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("seal key file {path} is {len} bytes long, expected 32")]
    WrongLength { path: PathBuf, len: u64 },
    #[error("seal key file {path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("system random number generator failed")]
    Rng,
    #[error("sealed secret is {len} bytes, shorter than the {OVERHEAD}-byte minimum")]
    Truncated { len: usize },
    #[error("sealed secret has unknown version {0}")]
    UnknownVersion(u8),
    #[error("sealed secret does not open: wrong key, wrong name, or corrupted")]
    Open,
    #[error("sealing failed")]
    Seal,
}

/// The 32-byte key that seals secrets. Wiped on drop; never printed.
pub struct SealKey {
    bytes: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealKey(<32 bytes>)")
    }
}

impl SealKey {
    /// A key from its bytes (tests, or a key kept elsewhere than a file).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        SealKey {
            bytes: Zeroizing::new(bytes),
        }
    }

    /// A new random key.
    pub fn generate() -> Result<Self, SealError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(&mut bytes[..])
            .map_err(|_| SealError::Rng)?;
        Ok(SealKey { bytes })
    }

    fn aead(&self) -> Result<LessSafeKey, SealError> {
        // Only fails on a wrong key length, which the type rules out.
        let key =
            UnboundKey::new(&CHACHA20_POLY1305, &self.bytes[..]).map_err(|_| SealError::Seal)?;
        Ok(LessSafeKey::new(key))
    }

    /// A separate 32-byte key for another purpose (e.g. the audit log's HMAC), derived as
    /// HMAC-SHA256(this key, `label`): one file to keep safe, keys that cannot be swapped.
    pub fn derive(&self, label: &str) -> Zeroizing<[u8; 32]> {
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.bytes[..]);
        let tag = ring::hmac::sign(&k, label.as_bytes());
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Encrypts `plaintext` as the secret called `name`.
    pub fn seal(&self, name: &str, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Rng)?;
        let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let body = out.get_mut(1 + NONCE_LEN..).ok_or(SealError::Seal)?;
        let tag = self
            .aead()?
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                body,
            )
            .map_err(|_| SealError::Seal)?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Decrypts what [`SealKey::seal`] produced for the same `name`. Any other input, however
    /// short or mangled, is an error.
    pub fn open(&self, name: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        if sealed.len() < OVERHEAD {
            return Err(SealError::Truncated { len: sealed.len() });
        }
        let (&version, rest) = sealed
            .split_first()
            .ok_or(SealError::Truncated { len: 0 })?;
        if version != VERSION {
            return Err(SealError::UnknownVersion(version));
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Open)?;
        let mut buf = Zeroizing::new(body.to_vec());
        let len = self
            .aead()?
            .open_in_place(nonce, Aad::from(name.as_bytes()), &mut buf[..])
            .map_err(|_| SealError::Open)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests;
