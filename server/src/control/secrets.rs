//! Secrets: sealed at rest with a key kept outside the store, held sealed in memory, opened
//! only for an assignment on its way to its agent or for the redactor of a job's output.

use std::collections::BTreeMap;

use hodei_auth::redact::Redactor;
use hodei_core::spec::check_secret_name;
use hodei_core::wire::{ErrorKind, FromServer, SecretValue};

use tracing::warn;

use super::{Caller, Control, err, internal, now_ms};

/// Largest secret value accepted.
pub(crate) use hodei_core::spec::limits::MAX_SECRET_BYTES as MAX_SECRET;

/// A secret as kept in memory: still sealed.
pub(super) struct Sealed {
    bytes: Vec<u8>,
    pub(super) updated_at_ms: u64,
    pub(super) updated_by: String,
}

impl Sealed {
    /// Stored as `updated_at_ms: u64 LE | by_len: u16 LE | by | sealed bytes`.
    pub(super) fn encode(&self) -> Vec<u8> {
        let by = self.updated_by.as_bytes();
        let by = &by[..by.len().min(usize::from(u16::MAX))];
        let mut v = Vec::with_capacity(10 + by.len() + self.bytes.len());
        v.extend_from_slice(&self.updated_at_ms.to_le_bytes());
        #[allow(clippy::cast_possible_truncation)] // capped above
        v.extend_from_slice(&(by.len() as u16).to_le_bytes());
        v.extend_from_slice(by);
        v.extend_from_slice(&self.bytes);
        v
    }

    pub(super) fn decode(v: &[u8]) -> Option<Self> {
        let at = u64::from_le_bytes(v.get(..8)?.try_into().ok()?);
        let n = usize::from(u16::from_le_bytes(v.get(8..10)?.try_into().ok()?));
        let by = String::from_utf8(v.get(10..10 + n)?.to_vec()).ok()?;
        Some(Self {
            bytes: v.get(10 + n..)?.to_vec(),
            updated_at_ms: at,
            updated_by: by,
        })
    }
}

impl Control {
    pub(super) fn read_secrets(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Sealed>> {
        self.secrets
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn set_secret(&self, caller: &Caller, name: &str, value: &[u8]) -> FromServer {
        if let Err(e) = check_secret_name(name) {
            return err(ErrorKind::Invalid, e.to_string());
        }
        if value.is_empty() || value.len() > MAX_SECRET {
            return err(
                ErrorKind::Invalid,
                format!("a secret value must be 1 to {MAX_SECRET} bytes"),
            );
        }
        let sealed = match self.key.seal(name, value) {
            Ok(s) => s,
            Err(e) => return err(ErrorKind::Internal, e.to_string()),
        };
        let entry = Sealed {
            bytes: sealed,
            updated_at_ms: now_ms(),
            updated_by: caller.name.clone(),
        };
        let stored = entry.encode();
        let r = self.audited(caller, "secret.set", name, "", |a| {
            self.store.put_secret(name, Some(&stored), a)
        });
        match r {
            Ok(()) => {
                self.secrets
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(name.to_owned(), entry);
                FromServer::Done
            }
            Err(e) => internal(&e),
        }
    }

    /// The first of `names` that is not a stored secret.
    pub fn missing_secret<'a>(&self, names: &'a [String]) -> Option<&'a String> {
        let secrets = self.read_secrets();
        names.iter().find(|n| !secrets.contains_key(*n))
    }

    /// The values of `names` (those that still exist; a removed one is logged).
    pub fn secret_values(&self, names: &[String]) -> Vec<SecretValue> {
        let secrets = self.read_secrets();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let Some(s) = secrets.get(name) else {
                warn!(secret = %name, "a job needs a secret that no longer exists");
                continue;
            };
            match self.key.open(name, &s.bytes) {
                Ok(v) => out.push(SecretValue {
                    name: name.clone(),
                    value: v.to_vec(),
                }),
                Err(e) => warn!(secret = %name, "cannot open a stored secret: {e}"),
            }
        }
        out
    }

    /// A redactor for a job's secrets (`None` if it has none).
    pub fn redactor(&self, names: &[String]) -> Option<Redactor> {
        if names.is_empty() {
            return None;
        }
        let pairs: Vec<(String, Vec<u8>)> = self
            .secret_values(names)
            .into_iter()
            .map(|s| (s.name, s.value))
            .collect();
        Some(Redactor::new(&pairs))
    }
}
