//! Secrets: sealed at rest with a key kept outside the store, held sealed in memory, opened
//! only for an assignment on its way to its agent or for the redactor of a job's output.
//!
//! A secret keeps the values it had before, sealed the same way as its current one: when
//! `hodei secret set` replaces a value or `hodei secret rm` removes the secret, output that
//! jobs wrote with the old value is still masked as it is read (the agent masks what a job
//! writes with the values it was given; this is the second line, for output that reached
//! the store unmasked, or a job that prints a value it read elsewhere). Retired values are
//! never handed to a job. The bound is a count, [`KEEP_RETIRED`] per secret, newest kept,
//! not an age: `--retain-finished` bounds how long output stays after its job ended, not how
//! long a job given a value runs, so a value retired longer ago than the window may still be
//! in output that is kept; a count bounds the entry (and the redactor built from it) however
//! often a secret is rotated. A removed secret stays as an entry with no current value:
//! unknown to submits and `secret list`, still masking.

use std::collections::BTreeMap;

use hodei_auth::redact::Redactor;
use hodei_core::spec::check_secret_name;
use hodei_core::wire::{ErrorKind, FromServer, SecretInfo, SecretValue};

use tracing::warn;

use super::{Caller, Control, err, internal, now_ms};

/// Largest secret value accepted.
pub(crate) use hodei_core::spec::limits::MAX_SECRET_BYTES as MAX_SECRET;

/// Values a secret keeps after they were replaced (or the secret removed), newest first:
/// output written with any of them is still masked.
pub(crate) const KEEP_RETIRED: usize = 16;

/// The first 8 bytes of an entry with history: the `updated_at_ms` that starts an entry of
/// the first form, which no clock reaches.
const HISTORY_MAGIC: [u8; 8] = u64::MAX.to_le_bytes();
/// The version after [`HISTORY_MAGIC`].
const HISTORY_VERSION: u8 = 2;

/// A value a secret had before, still sealed.
#[derive(Clone)]
#[cfg_attr(test, derive(Debug, PartialEq, Eq))]
struct Retired {
    /// When it was replaced or removed, ms since the epoch.
    at_ms: u64,
    bytes: Vec<u8>,
}

/// A secret as kept in memory: still sealed.
#[cfg_attr(test, derive(Debug, PartialEq, Eq))]
pub(super) struct Sealed {
    /// The value jobs get; `None` once the secret was removed.
    current: Option<Vec<u8>>,
    /// Earlier values, newest first, at most [`KEEP_RETIRED`].
    retired: Vec<Retired>,
    pub(super) updated_at_ms: u64,
    pub(super) updated_by: String,
}

/// Reads the encoding, never past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes32(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.u32()?).ok()?;
        self.take(n)
    }
}

fn put_bytes32(v: &mut Vec<u8>, b: &[u8]) {
    // Sealed values are at most MAX_SECRET plus the seal's overhead.
    let n = u32::try_from(b.len()).unwrap_or(u32::MAX);
    v.extend_from_slice(&n.to_le_bytes());
    v.extend_from_slice(b.get(..n as usize).unwrap_or(b));
}

impl Sealed {
    /// Whether jobs may name it (set, not removed).
    pub(super) const fn is_live(&self) -> bool {
        self.current.is_some()
    }

    /// Stored as `HISTORY_MAGIC | 2 | updated_at_ms: u64 | by_len: u16 | by | current_len:
    /// u32 | current sealed (empty: removed) | count: u16 | count × (retired_at_ms: u64 |
    /// len: u32 | sealed)`, little-endian. The first form, `updated_at_ms: u64 | by_len: u16
    /// | by | sealed`, written by earlier builds, is still read.
    pub(super) fn encode(&self) -> Vec<u8> {
        let by = self.updated_by.as_bytes();
        let by = &by[..by.len().min(usize::from(u16::MAX))];
        let mut v = Vec::with_capacity(
            32 + by.len()
                + self.current.as_ref().map_or(0, Vec::len)
                + self
                    .retired
                    .iter()
                    .map(|r| 12 + r.bytes.len())
                    .sum::<usize>(),
        );
        v.extend_from_slice(&HISTORY_MAGIC);
        v.push(HISTORY_VERSION);
        v.extend_from_slice(&self.updated_at_ms.to_le_bytes());
        #[allow(clippy::cast_possible_truncation)] // capped above
        v.extend_from_slice(&(by.len() as u16).to_le_bytes());
        v.extend_from_slice(by);
        put_bytes32(&mut v, self.current.as_deref().unwrap_or_default());
        let retired = &self.retired[..self.retired.len().min(usize::from(u16::MAX))];
        #[allow(clippy::cast_possible_truncation)] // capped above
        v.extend_from_slice(&(retired.len() as u16).to_le_bytes());
        for r in retired {
            v.extend_from_slice(&r.at_ms.to_le_bytes());
            put_bytes32(&mut v, &r.bytes);
        }
        v
    }

    pub(super) fn decode(v: &[u8]) -> Option<Self> {
        let mut r = Reader(v);
        if r.take(8)? != HISTORY_MAGIC {
            // The first form: one current value, no history.
            let mut r = Reader(v);
            let at = r.u64()?;
            let n = usize::from(r.u16()?);
            let by = String::from_utf8(r.take(n)?.to_vec()).ok()?;
            return Some(Self {
                current: Some(r.0.to_vec()),
                retired: Vec::new(),
                updated_at_ms: at,
                updated_by: by,
            });
        }
        if r.u8()? != HISTORY_VERSION {
            return None;
        }
        let at = r.u64()?;
        let n = usize::from(r.u16()?);
        let by = String::from_utf8(r.take(n)?.to_vec()).ok()?;
        let current = r.bytes32()?;
        let count = r.u16()?;
        let mut retired = Vec::with_capacity(usize::from(count).min(KEEP_RETIRED));
        for _ in 0..count {
            let at_ms = r.u64()?;
            let bytes = r.bytes32()?.to_vec();
            retired.push(Retired { at_ms, bytes });
        }
        if !r.0.is_empty() {
            return None;
        }
        Some(Self {
            current: (!current.is_empty()).then(|| current.to_vec()),
            retired,
            updated_at_ms: at,
            updated_by: by,
        })
    }

    /// The entry after `next` replaced (`Some`) or removed (`None`) the current value: the
    /// value replaced joins the retired ones, and a retired one equal to `next` (`is_next`
    /// says which, given a sealed value) leaves them, being current again.
    fn succeeded_by(
        &self,
        next: Option<Vec<u8>>,
        is_next: impl Fn(&[u8]) -> bool,
        at_ms: u64,
        by: &str,
    ) -> Self {
        let mut retired: Vec<Retired> = self
            .current
            .iter()
            .map(|bytes| Retired {
                at_ms,
                bytes: bytes.clone(),
            })
            .chain(self.retired.iter().cloned())
            .filter(|r| !is_next(&r.bytes))
            .collect();
        retired.truncate(KEEP_RETIRED);
        Self {
            current: next,
            retired,
            updated_at_ms: at_ms,
            updated_by: by.to_owned(),
        }
    }
}

impl Control {
    pub(super) fn read_secrets(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Sealed>> {
        self.secrets
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stores `entry` as `name` (durably, with the audit record of the call), then shows it.
    /// The caller holds `secret_writes`, so no other set or remove read the entry it replaces.
    fn store_secret(&self, caller: &Caller, action: &str, name: &str, entry: Sealed) -> FromServer {
        let stored = entry.encode();
        let r = self.audited(caller, action, name, "", |a| {
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
        let _writing = self
            .secret_writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let is_value = |b: &[u8]| self.key.open(name, b).is_ok_and(|v| v[..] == *value);
        let now = now_ms();
        let entry = match self.read_secrets().get(name) {
            Some(old) => old.succeeded_by(Some(sealed), is_value, now, &caller.name),
            None => Sealed {
                current: Some(sealed),
                retired: Vec::new(),
                updated_at_ms: now,
                updated_by: caller.name.clone(),
            },
        };
        self.store_secret(caller, "secret.set", name, entry)
    }

    /// `hodei secret rm`: jobs can no longer name it; its values still mask output.
    pub(super) fn remove_secret(&self, caller: &Caller, name: &str) -> FromServer {
        let _writing = self
            .secret_writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = match self.read_secrets().get(name) {
            Some(old) if old.is_live() => old.succeeded_by(None, |_| false, now_ms(), &caller.name),
            _ => return err(ErrorKind::NotFound, format!("no secret {name:?}")),
        };
        self.store_secret(caller, "secret.remove", name, entry)
    }

    /// `hodei secret list`: the secrets jobs may name.
    pub(super) fn list_secrets(&self) -> Vec<SecretInfo> {
        self.read_secrets()
            .iter()
            .filter(|(_, s)| s.is_live())
            .map(|(name, s)| SecretInfo {
                name: name.clone(),
                updated_at_ms: s.updated_at_ms,
                updated_by: s.updated_by.clone(),
            })
            .collect()
    }

    /// The first of `names` that is not a stored secret.
    pub fn missing_secret<'a>(&self, names: &'a [String]) -> Option<&'a String> {
        let secrets = self.read_secrets();
        names
            .iter()
            .find(|n| !secrets.get(*n).is_some_and(Sealed::is_live))
    }

    /// The current values of `names` (those that still exist; a removed one is logged).
    pub fn secret_values(&self, names: &[String]) -> Vec<SecretValue> {
        let secrets = self.read_secrets();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let Some(bytes) = secrets.get(name).and_then(|s| s.current.as_ref()) else {
                warn!(secret = %name, "a job needs a secret that no longer exists");
                continue;
            };
            match self.key.open(name, bytes) {
                Ok(v) => out.push(SecretValue {
                    name: name.clone(),
                    value: v.to_vec(),
                }),
                Err(e) => warn!(secret = %name, "cannot open a stored secret: {e}"),
            }
        }
        out
    }

    /// A redactor for a job's secrets (`None` if it has none): every value each of them has
    /// now or had before (up to [`KEEP_RETIRED`]), so that rotating or removing a secret
    /// does not unmask output written with an older value.
    pub fn redactor(&self, names: &[String]) -> Option<Redactor> {
        if names.is_empty() {
            return None;
        }
        let secrets = self.read_secrets();
        let mut pairs: Vec<(String, Vec<u8>)> = Vec::new();
        for name in names {
            let Some(s) = secrets.get(name) else { continue };
            let sealed = s.current.iter().chain(s.retired.iter().map(|r| &r.bytes));
            for bytes in sealed {
                match self.key.open(name, bytes) {
                    Ok(v) => pairs.push((name.clone(), v.to_vec())),
                    Err(e) => warn!(secret = %name, "cannot open a stored secret: {e}"),
                }
            }
        }
        drop(secrets);
        let redactor = Redactor::new(&pairs);
        for (_, v) in &mut pairs {
            // Opened plaintexts do not outlive the automaton built from them.
            v.fill(0);
        }
        Some(redactor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(current: Option<&[u8]>, retired: &[&[u8]]) -> Sealed {
        Sealed {
            current: current.map(<[u8]>::to_vec),
            retired: retired
                .iter()
                .enumerate()
                .map(|(i, b)| Retired {
                    at_ms: 1_000 + i as u64,
                    bytes: b.to_vec(),
                })
                .collect(),
            updated_at_ms: 42,
            updated_by: "admin".to_owned(),
        }
    }

    #[test]
    fn entries_round_trip_and_the_first_form_is_still_read() {
        for e in [
            entry(Some(b"\x01cur"), &[]),
            entry(Some(b"\x01cur"), &[b"\x01old", b"\x01older"]),
            entry(None, &[b"\x01gone"]),
        ] {
            assert_eq!(Sealed::decode(&e.encode()), Some(e));
        }
        // The first form: `at | by_len | by | sealed`.
        let mut first = 7u64.to_le_bytes().to_vec();
        first.extend_from_slice(&2u16.to_le_bytes());
        first.extend_from_slice(b"me\x01sealed");
        let e = Sealed::decode(&first);
        assert_eq!(e, Some(entry_first(b"\x01sealed")));
    }

    fn entry_first(sealed: &[u8]) -> Sealed {
        Sealed {
            current: Some(sealed.to_vec()),
            retired: Vec::new(),
            updated_at_ms: 7,
            updated_by: "me".to_owned(),
        }
    }

    /// Every cut of an encoding, and trailing bytes, is refused, never read past its end.
    #[test]
    fn damaged_entries_are_refused() {
        let v = entry(Some(b"\x01cur"), &[b"\x01old"]).encode();
        for n in 9..v.len() {
            assert_eq!(Sealed::decode(&v[..n]), None, "cut at {n}");
        }
        let mut long = v.clone();
        long.push(0);
        assert_eq!(Sealed::decode(&long), None);
        let mut count = v;
        // The retired count, after the current value: claims more entries than there are.
        let at = 8 + 1 + 8 + 2 + 5 + 4 + 4;
        count[at] = 0xff;
        assert_eq!(Sealed::decode(&count), None);
    }

    /// A replaced value is retired, newest first; a value set again leaves the retired
    /// ones; the history is bounded; a removal retires the current value.
    #[test]
    fn values_are_retired_newest_first_and_bounded() {
        let mut e = entry(Some(b"v0"), &[]);
        for i in 1..=(KEEP_RETIRED + 4) {
            let next = format!("v{i}").into_bytes();
            e = e.succeeded_by(Some(next), |_| false, 5, "admin");
        }
        assert_eq!(e.retired.len(), KEEP_RETIRED);
        let newest = format!("v{}", KEEP_RETIRED + 3).into_bytes();
        assert_eq!(e.retired.first().map(|r| &r.bytes), Some(&newest));
        let again = b"v20".to_vec();
        let e = e.succeeded_by(Some(again.clone()), |b| b == again, 6, "admin");
        assert!(e.retired.iter().all(|r| r.bytes != again));
        let e = e.succeeded_by(None, |_| false, 7, "admin");
        assert!(!e.is_live());
        assert_eq!(e.retired.first().map(|r| &r.bytes), Some(&again));
    }
}
