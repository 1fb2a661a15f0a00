//! The agent's identity for mTLS: its private key and the client certificate the server's CA
//! issued when it joined (`--join TOKEN`), kept in its work dir (`identity.key`, mode 0600;
//! `identity.pem`; `identity.json` with the identity name and the times). The agent renews
//! it on its own connection ([`Renewal`]): first at a random point between 55 % and 75 % of
//! its life, so that a fleet that joined together does not renew in the same second; a
//! `Renew` left unanswered (lost with its connection, or refused by a server that failed to
//! sign) is sent again at the next connection, and on a live one after a wait that doubles,
//! with jitter, within bounds scaled to the certificate's life. Every retry offers the same
//! new key, so whichever answer comes is for the key held. The current connection goes on,
//! the next ones present the new certificate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use hodei_core::time::wall_now;
use hodei_core::wire::{ALPN_CLIENT, ControlRequest, FromServer, Request};
use hodei_transport::{ClientIdentity, FrameReader, FrameWriter, TransportOptions};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tracing::info;

/// A joined agent's identity.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Name the server bound the certificate to.
    pub name: String,
    /// What the connection presents.
    pub tls: ClientIdentityParts,
    /// When it was issued and when it expires, ms since the epoch.
    pub issued_at_ms: u64,
    /// Expiry.
    pub expires_at_ms: u64,
}

/// Certificate and key PEM (the key never leaves this host).
#[derive(Clone)]
pub struct ClientIdentityParts {
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for ClientIdentityParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientIdentityParts(<certificate and key>)")
    }
}

#[derive(Serialize, Deserialize)]
struct Meta {
    identity: String,
    issued_at_ms: u64,
    expires_at_ms: u64,
}

pub(super) fn now_ms() -> u64 {
    wall_now() / 1000
}

impl Identity {
    /// For the TLS config.
    #[must_use]
    pub fn client_identity(&self) -> ClientIdentity {
        ClientIdentity {
            cert_pem: self.tls.cert_pem.clone(),
            key_pem: self.tls.key_pem.clone(),
        }
    }

    /// Its lifetime in ms.
    #[must_use]
    pub const fn life_ms(&self) -> u64 {
        self.expires_at_ms.saturating_sub(self.issued_at_ms)
    }

    /// A renewed certificate for `key_pem`.
    #[must_use]
    pub fn renewed(&self, key_pem: String, cert_pem: String, expires_at_ms: u64) -> Self {
        Self {
            name: self.name.clone(),
            tls: ClientIdentityParts { cert_pem, key_pem },
            issued_at_ms: now_ms(),
            expires_at_ms,
        }
    }
}

fn paths(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (
        dir.join("identity.key"),
        dir.join("identity.pem"),
        dir.join("identity.json"),
    )
}

/// The stored identity, if this agent joined before.
///
/// # Errors
/// If the files exist but cannot be read or parsed.
pub fn load(dir: &Path) -> Result<Option<Identity>> {
    let (key, cert, meta) = paths(dir);
    if !meta.exists() {
        return Ok(None);
    }
    let read = |p: &Path| {
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
    };
    let m: Meta = serde_json::from_str(&read(&meta)?)
        .with_context(|| format!("{} is corrupt", meta.display()))?;
    Ok(Some(Identity {
        name: m.identity,
        tls: ClientIdentityParts {
            cert_pem: read(&cert)?,
            key_pem: read(&key)?,
        },
        issued_at_ms: m.issued_at_ms,
        expires_at_ms: m.expires_at_ms,
    }))
}

/// Stores an identity (key first, mode 0600; the metadata last, so a crash in between
/// leaves the old identity or none, never a mix).
///
/// # Errors
/// If a file cannot be written.
pub fn save(dir: &Path, id: &Identity) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let (key, cert, meta) = paths(dir);
    let write = |p: &Path, bytes: &[u8], mode: u32| -> Result<()> {
        let tmp = p.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, p).with_context(|| format!("cannot write {}", p.display()))
    };
    write(&key, id.tls.key_pem.as_bytes(), 0o600)?;
    write(&cert, id.tls.cert_pem.as_bytes(), 0o644)?;
    let m = serde_json::to_vec(&Meta {
        identity: id.name.clone(),
        issued_at_ms: id.issued_at_ms,
        expires_at_ms: id.expires_at_ms,
    })?;
    write(&meta, &m, 0o644)
}

/// The identity to connect with: the stored one while valid, else a new one from joining
/// with `token`.
///
/// # Errors
/// If there is none and no token, or the join is refused (the server's reason is given).
pub async fn ensure(
    dir: &Path,
    server: SocketAddr,
    ca: &Path,
    token: Option<&str>,
) -> Result<Identity> {
    if let Some(id) = load(dir)?
        && id.expires_at_ms > now_ms()
    {
        return Ok(id);
    }
    let Some(token) = token else {
        bail!(
            "this agent has no valid certificate in {}: join with --join TOKEN (from `hodei token create --role agent`)",
            dir.display()
        );
    };
    let id = join(server, ca, token).await?;
    save(dir, &id)?;
    info!(identity = %id.name, "joined the server; certificate stored");
    Ok(id)
}

async fn join(server: SocketAddr, ca: &Path, token: &str) -> Result<Identity> {
    let (key_pem, public_key) = hodei_transport::new_agent_key()?;
    let opts = TransportOptions {
        idle_timeout: std::time::Duration::from_secs(5),
        ..TransportOptions::default()
    };
    let cfg = hodei_transport::client_config(ca, ALPN_CLIENT, &opts)
        .with_context(|| format!("cannot use CA file {}", ca.display()))?;
    let endpoint = hodei_transport::client_endpoint(server, cfg)?;
    let conn = hodei_transport::connect(&endpoint, server).await?;
    let (send, recv) = conn.open_bi().await.context("cannot open a stream")?;
    let mut w = FrameWriter::new(send);
    w.send(&Request {
        token: token.trim().to_owned(),
        body: ControlRequest::Join { public_key }.into(),
    })
    .await?;
    w.finish()?;
    let mut r = FrameReader::new(recv);
    let reply = r.next::<FromServer>().await?;
    conn.close(0u32.into(), b"joined");
    match reply {
        Some(FromServer::Joined {
            identity,
            cert_pem,
            expires_at_ms,
        }) => Ok(Identity {
            name: identity,
            tls: ClientIdentityParts { cert_pem, key_pem },
            issued_at_ms: now_ms(),
            expires_at_ms,
        }),
        Some(FromServer::Error { message, .. }) => bail!("the server refused the join: {message}"),
        _ => bail!("the server did not answer the join"),
    }
}

/// The schedule of one certificate's renewal.
#[derive(Debug)]
pub(super) struct Renewal {
    /// When to send the next `Renew`, ms since the epoch.
    next_at_ms: u64,
    /// The new key pair of the renewal under way (PEM, raw public key): kept for every retry
    /// until a certificate for it arrives.
    pending: Option<(String, Vec<u8>)>,
    /// Wait before the next retry of an unanswered `Renew`.
    retry_ms: u64,
    /// Bounds of that wait, from the certificate's life.
    retry_min_ms: u64,
    retry_max_ms: u64,
}

impl Renewal {
    /// The renewal of `id`: due at a random point between 55 % and 75 % of its life.
    pub(super) fn new(id: &Identity) -> Self {
        let life = id.life_ms();
        let share = rand::thread_rng().gen_range(0.55..0.75);
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )] // a share of a u64, below it
        let after = (life as f64 * share) as u64;
        let retry_min_ms = (life / 50).clamp(1_000, 30_000);
        Self {
            next_at_ms: id.issued_at_ms.saturating_add(after),
            pending: None,
            retry_ms: retry_min_ms,
            retry_min_ms,
            retry_max_ms: (life / 10).clamp(retry_min_ms, 600_000),
        }
    }

    /// When the next `Renew` goes out, ms since the epoch.
    pub(super) const fn next_at_ms(&self) -> u64 {
        self.next_at_ms
    }

    /// At a heartbeat: the `Renew` to send now, if one is due (the first, or a retry).
    fn due(&mut self, now_ms: u64) -> Option<Result<Vec<u8>, String>> {
        if now_ms < self.next_at_ms {
            return None;
        }
        if self.pending.is_none() {
            match hodei_transport::new_agent_key() {
                Ok(pair) => self.pending = Some(pair),
                Err(e) => {
                    self.schedule_retry(now_ms);
                    return Some(Err(e.to_string()));
                }
            }
        }
        self.schedule_retry(now_ms);
        self.pending.as_ref().map(|(_, public)| Ok(public.clone()))
    }

    /// The next retry after an attempt at `now_ms`: the wait doubles up to its bound, each
    /// ±25 % so that agents cut off together do not retry together.
    fn schedule_retry(&mut self, now_ms: u64) {
        let wait = self.retry_ms;
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )] // at most 1.25 × a bounded wait
        let jittered = (wait as f64 * rand::thread_rng().gen_range(0.75..1.25)) as u64;
        self.next_at_ms = now_ms.saturating_add(jittered);
        self.retry_ms = wait.saturating_mul(2).min(self.retry_max_ms);
    }

    /// A new connection: the answer to a `Renew` sent on the old one cannot come any more,
    /// so a renewal under way is sent again at once.
    pub(super) fn connected(&mut self, now_ms: u64) {
        if self.pending.is_some() {
            self.next_at_ms = self.next_at_ms.min(now_ms);
            self.retry_ms = self.retry_min_ms;
        }
    }
}

impl super::Agent {
    /// At a heartbeat: a `Renew` when the certificate is due, or a renewal under way is to be
    /// retried.
    pub(super) fn renewal_request(&mut self) -> Option<hodei_core::wire::FromAgent> {
        let first = self.renewal.pending.is_none();
        match self.renewal.due(now_ms())? {
            Ok(public_key) => {
                if first {
                    info!(identity = %self.identity.name, "renewing the agent certificate");
                } else {
                    info!(identity = %self.identity.name, "renewing the agent certificate again: no answer yet");
                }
                Some(hodei_core::wire::FromAgent::Renew { public_key })
            }
            Err(e) => {
                tracing::warn!("cannot generate a key to renew the certificate: {e}");
                None
            }
        }
    }

    /// The server's renewed certificate: stored, and presented from the next connection on.
    pub(super) fn renewed(&mut self, cert_pem: &str, expires_at_ms: u64) {
        let Some((key_pem, _)) = self.renewal.pending.take() else {
            tracing::warn!("a renewed certificate arrived that was not asked for; ignored");
            return;
        };
        let id = self
            .identity
            .renewed(key_pem, cert_pem.to_owned(), expires_at_ms);
        if let Err(e) = save(&self.identity_dir, &id) {
            tracing::warn!("cannot store the renewed certificate: {e:#}");
        }
        self.renewal = Renewal::new(&id);
        self.identity = id;
        self.identity_changed = true;
        let renew_at_ms = self.renewal.next_at_ms();
        info!(identity = %self.identity.name, expires_at_ms, renew_at_ms, "agent certificate renewed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(life_ms: u64) -> Identity {
        Identity {
            name: "a".into(),
            tls: ClientIdentityParts {
                cert_pem: String::new(),
                key_pem: String::new(),
            },
            issued_at_ms: 1_000_000,
            expires_at_ms: 1_000_000 + life_ms,
        }
    }

    #[test]
    fn renewals_are_spread_and_retried_with_the_same_key() {
        let id = identity(24 * 3600 * 1000);
        let dues: Vec<u64> = (0..50).map(|_| Renewal::new(&id).next_at_ms).collect();
        let (lo, hi) = (dues.iter().min().unwrap(), dues.iter().max().unwrap());
        assert!(*lo >= 1_000_000 + id.life_ms() / 100 * 55, "{lo}");
        assert!(*hi <= 1_000_000 + id.life_ms() / 100 * 75, "{hi}");
        assert!(
            hi - lo > 60_000,
            "fifty agents renew within a minute: {lo}..{hi}"
        );

        let mut r = Renewal::new(&id);
        let at = r.next_at_ms;
        assert!(r.due(at - 1).is_none());
        let first = r.due(at).unwrap().unwrap();
        // Unanswered: nothing until the retry wait, then the same key again, then later.
        assert!(r.due(at + 1).is_none());
        let retry = r.next_at_ms;
        assert!(retry > at && retry <= at + 30_000 * 5 / 4, "{retry}");
        assert_eq!(r.due(retry).unwrap().unwrap(), first);
        assert!(r.next_at_ms - retry > retry - at, "the wait grows");
        // A new connection sends it again at once.
        r.connected(retry + 1);
        assert_eq!(r.due(retry + 1).unwrap().unwrap(), first);
    }
}
