//! The agent's identity for mTLS: its private key and the client certificate the server's CA
//! issued when it joined (`--join TOKEN`), kept in its work dir (`identity.key`, mode 0600;
//! `identity.pem`; `identity.json` with the identity name and the times). The agent renews
//! it on its own connection at two thirds of its life; the current connection goes on, the
//! next ones present the new certificate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use hodei_core::time::wall_now;
use hodei_core::wire::{ALPN_CLIENT, ControlRequest, FromServer, Request};
use hodei_transport::{ClientIdentity, FrameReader, FrameWriter, TransportOptions};
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

fn now_ms() -> u64 {
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

    /// Past two thirds of its life: time to renew.
    #[must_use]
    pub fn renew_due(&self, now_ms: u64) -> bool {
        let life = self.expires_at_ms.saturating_sub(self.issued_at_ms);
        now_ms >= self.issued_at_ms + life / 3 * 2
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

impl super::Agent {
    /// At a heartbeat: when the certificate is due, a new key pair and a `Renew` for it.
    pub(super) fn renewal_request(&mut self) -> Option<hodei_core::wire::FromAgent> {
        if self.pending_key.is_some() || !self.identity.renew_due(now_ms()) {
            return None;
        }
        match hodei_transport::new_agent_key() {
            Ok((key_pem, public_key)) => {
                self.pending_key = Some(key_pem);
                info!(identity = %self.identity.name, "renewing the agent certificate");
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
        let Some(key_pem) = self.pending_key.take() else {
            tracing::warn!("a renewed certificate arrived that was not asked for; ignored");
            return;
        };
        let id = self
            .identity
            .renewed(key_pem, cert_pem.to_owned(), expires_at_ms);
        if let Err(e) = save(&self.identity_dir, &id) {
            tracing::warn!("cannot store the renewed certificate: {e:#}");
        }
        self.identity = id;
        self.identity_changed = true;
        info!(identity = %self.identity.name, expires_at_ms, "agent certificate renewed");
    }
}
