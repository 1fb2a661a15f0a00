//! The server's control plane, shared by every shard thread: who a token belongs to and
//! what its role allows, the secrets (sealed at rest with a key kept outside the store),
//! and the control chain of the audit log (token and secret calls). Job state lives in the
//! shards; nothing here touches it.
//!
//! Writes here are rare (an operator creating a token or setting a secret), so each one is
//! its own durable store batch, made on the calling connection's thread.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use anyhow::{Context, Result, bail};
use hodei_auth::audit::{AuditChain, AuditKey, AuditRecord};
use hodei_auth::role::Role;
use hodei_auth::seal::SealKey;
use hodei_auth::token::{self, TokenId, TokenRecord};
use hodei_core::wire::{ControlRequest, ErrorKind, FromServer, TokenInfo};
use tracing::info;

mod caller;
mod pki;
mod secrets;

pub use caller::Caller;
pub use pki::Pki;
use secrets::Sealed;

use super::conn::pages::Pager;
use super::store::Store;

/// The audit chain of control calls (shards use their index as their chain).
pub const CONTROL_CHAIN: u16 = u16::MAX;

/// Tokens, secrets and the control audit chain.
pub struct Control {
    store: Store,
    tokens: RwLock<HashMap<u64, TokenRecord>>,
    key: SealKey,
    secrets: RwLock<BTreeMap<String, Sealed>>,
    /// Held by a secret's set or remove from reading the entry it replaces to storing the
    /// new one (readers of `secrets` never wait for the store).
    secret_writes: Mutex<()>,
    chain: Mutex<AuditChain>,
    audit_key: AuditKey,
    pki: Pki,
    /// The server's own figures (`hodei stats`), fed by the shard threads.
    pub stats: super::stats::Stats,
    /// `hodei server --max-output`: stamped on specs that set none, at submit.
    pub max_output: u64,
}

fn now_ms() -> u64 {
    hodei_core::time::wall_now() / 1000
}

fn err(kind: ErrorKind, message: impl Into<String>) -> FromServer {
    FromServer::Error {
        kind,
        message: message.into(),
    }
}

fn internal(e: &anyhow::Error) -> FromServer {
    err(ErrorKind::Internal, format!("{e:#}"))
}

impl Control {
    /// Loads tokens, secrets and agent certificates. On a server with no admin token yet,
    /// creates one and writes it to `<data_dir>/admin.token` (mode 0600).
    pub fn open(data_dir: &Path, store: Store, pki: Pki) -> Result<Self> {
        let key = SealKey::load_or_create(&data_dir.join("secrets.key"))
            .context("cannot load the secrets key")?;
        let mut tokens = HashMap::new();
        for t in store.load_tokens()? {
            tokens.insert(t.id.0, t);
        }
        let mut secrets = BTreeMap::new();
        for (name, v) in store.load_secrets()? {
            let s =
                Sealed::decode(&v).with_context(|| format!("corrupt store: secret {name:?}"))?;
            secrets.insert(name, s);
        }
        // The audit chains are keyed with a key derived from the sealing key, which lives
        // outside the store: whoever can edit the store cannot recompute the chain.
        let audit_key = AuditKey::from_bytes(&key.derive("hodei-audit/v1"));
        let chain = match store.last_audit(CONTROL_CHAIN)? {
            Some((seq, hash)) => AuditChain::resume(CONTROL_CHAIN, seq + 1, hash),
            None => AuditChain::new(CONTROL_CHAIN),
        }
        .keyed(audit_key.clone());
        {
            let mut certs = pki
                .certs
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (fp, c) in store.load_agent_certs()? {
                certs.insert(fp, c);
            }
            pki.load_workers(store.load_worker_bindings()?);
        }
        let control = Self {
            store,
            tokens: RwLock::new(tokens),
            key,
            secrets: RwLock::new(secrets),
            secret_writes: Mutex::new(()),
            chain: Mutex::new(chain),
            audit_key,
            pki,
            stats: super::stats::Stats::new()?,
            max_output: hodei_core::spec::DEFAULT_MAX_OUTPUT,
        };
        let has_admin = control
            .read_tokens()
            .values()
            .any(|t| t.role == Role::Admin && !t.revoked);
        if !has_admin {
            let path = admin_token_path(data_dir);
            let (text, _) =
                control.create_token(&Caller::server(), Role::Admin, "admin", None, None)?;
            write_private(&path, format!("{text}\n").as_bytes())?;
            info!(path = %path.display(), "created the admin token");
        }
        Ok(control)
    }

    fn read_tokens(&self) -> std::sync::RwLockReadGuard<'_, HashMap<u64, TokenRecord>> {
        self.tokens
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_tokens(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<u64, TokenRecord>> {
        self.tokens
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Who holds this token, or why it is refused (for the log and the client).
    pub fn authenticate(&self, text: &str) -> Result<Caller, String> {
        let parsed = token::parse(text).map_err(|e| e.to_string())?;
        let tokens = self.read_tokens();
        let rec = tokens
            .get(&parsed.id.0)
            .ok_or_else(|| "unknown token".to_owned())?;
        rec.check(&parsed, now_ms()).map_err(|e| e.to_string())?;
        Ok(Caller {
            name: rec.name.clone(),
            role: rec.role,
            token: rec.id.0,
        })
    }

    /// The audit log's key (for the shards' chains).
    pub fn audit_key(&self) -> AuditKey {
        self.audit_key.clone()
    }

    /// One audit record on the control chain, written with `write` in one batch.
    fn audited(
        &self,
        caller: &Caller,
        action: &str,
        subject: &str,
        detail: &str,
        write: impl FnOnce(&[AuditRecord]) -> Result<()>,
    ) -> Result<()> {
        let mut chain = self
            .chain
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = chain.head();
        let rec = chain.append(now_ms(), caller.name.as_str(), action, subject, "", detail);
        if let Err(e) = write(std::slice::from_ref(&rec)) {
            // Not written: the chain goes on from where it was.
            *chain =
                AuditChain::resume(CONTROL_CHAIN, before.0, before.1).keyed(self.audit_key.clone());
            return Err(e);
        }
        Ok(())
    }

    fn create_token(
        &self,
        caller: &Caller,
        role: Role,
        name: &str,
        ttl_ms: Option<u64>,
        uses: Option<u32>,
    ) -> Result<(String, TokenId)> {
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            bail!("a token name must be 1 to 128 printable characters");
        }
        // Only a join spends a use: counting every request of a client token would be a
        // durable write per request.
        if uses.is_some() && role != Role::Agent {
            bail!("--uses applies to agent (join) tokens only; limit a {role} token with --ttl");
        }
        let (text, id, hash) = token::generate().context("cannot generate a token")?;
        let now = now_ms();
        let mut rec = TokenRecord::new(id, role, name, now, hash);
        rec.expires_at_ms = ttl_ms.map(|t| now.saturating_add(t));
        rec.uses_left = uses;
        let detail = format!("role={role} name={name}");
        self.audited(caller, "token.create", &id.to_string(), &detail, |a| {
            self.store.put_token(&rec, a)
        })?;
        self.write_tokens().insert(id.0, rec);
        Ok((text, id))
    }

    /// Answers a control request (the caller's permission was checked by the connection),
    /// handing the replies to `emit`. It may block (store writes with their fsync, scans,
    /// signing): call it off the shard threads.
    pub fn handle(
        &self,
        caller: &Caller,
        body: ControlRequest,
        emit: &mut dyn FnMut(FromServer) -> bool,
    ) {
        match body {
            ControlRequest::Audit {
                job,
                actor,
                since_ms,
            } => {
                let mut pages = Pager::new(FromServer::AuditRecords, emit);
                let r =
                    super::audit::query(&self.store, job, actor.as_deref(), since_ms, &mut |r| {
                        let size = r.len();
                        pages.push(r, size)
                    });
                let sent = pages.flush();
                if sent {
                    emit(match r {
                        Ok(()) => FromServer::Done,
                        Err(e) => internal(&e),
                    });
                }
            }
            other => {
                for reply in self.answer(caller, other) {
                    if !emit(reply) {
                        break;
                    }
                }
            }
        }
    }

    /// Answers a control request whose replies are few and small.
    fn answer(&self, caller: &Caller, body: ControlRequest) -> Vec<FromServer> {
        match body {
            ControlRequest::CreateToken {
                role,
                name,
                ttl_ms,
                uses,
            } => {
                let role: Role = match role.parse() {
                    Ok(r) => r,
                    Err(e) => return vec![err(ErrorKind::Invalid, e.to_string())],
                };
                match self.create_token(caller, role, &name, ttl_ms, uses) {
                    Ok((token, id)) => vec![FromServer::Token {
                        id: id.to_string(),
                        token,
                    }],
                    Err(e) => vec![err(ErrorKind::Invalid, format!("{e:#}"))],
                }
            }
            ControlRequest::ListTokens => {
                let mut v: Vec<TokenInfo> = self
                    .read_tokens()
                    .values()
                    .map(|t| TokenInfo {
                        id: t.id.to_string(),
                        role: t.role.to_string(),
                        name: t.name.clone(),
                        created_at_ms: t.created_at_ms,
                        expires_at_ms: t.expires_at_ms,
                        uses_left: t.uses_left,
                        revoked: t.revoked,
                    })
                    .collect();
                v.sort_by(|a, b| a.created_at_ms.cmp(&b.created_at_ms).then(a.id.cmp(&b.id)));
                vec![FromServer::Tokens(v)]
            }
            ControlRequest::RevokeToken { id } => {
                let Ok(n) = u64::from_str_radix(id.trim(), 16) else {
                    return vec![err(ErrorKind::Invalid, format!("bad token id {id:?}"))];
                };
                let Some(mut rec) = self.read_tokens().get(&n).cloned() else {
                    return vec![err(ErrorKind::NotFound, format!("no token {id}"))];
                };
                rec.revoked = true;
                let r = self.audited(caller, "token.revoke", &rec.id.to_string(), "", |a| {
                    self.store.put_token(&rec, a)
                });
                match r {
                    Ok(()) => {
                        self.write_tokens().insert(n, rec);
                        vec![FromServer::Done]
                    }
                    Err(e) => vec![internal(&e)],
                }
            }
            ControlRequest::SetSecret { name, value } => {
                vec![self.set_secret(caller, &name, &value.0)]
            }
            ControlRequest::ListSecrets => vec![FromServer::Secrets(self.list_secrets())],
            ControlRequest::RemoveSecret { name } => vec![self.remove_secret(caller, &name)],
            // Streamed by `handle`.
            ControlRequest::Audit { .. } => Vec::new(),
            ControlRequest::AuditVerify => {
                vec![
                    match super::audit::verify_all(&self.store, &self.audit_key) {
                        Ok((records, chains)) => FromServer::AuditVerified { records, chains },
                        Err(e) => err(ErrorKind::Invalid, format!("{e:#}")),
                    },
                ]
            }
            ControlRequest::Join { public_key } => vec![self.join(caller, &public_key)],
            ControlRequest::RevokeWorker { worker } => vec![self.revoke_worker(caller, worker)],
            ControlRequest::RotateServerCert => vec![self.rotate(caller)],
            ControlRequest::Stats { reset } => vec![FromServer::Stats(self.stats.figures(reset))],
        }
    }
}

/// Where a server keeps its admin token.
#[must_use]
pub fn admin_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.token")
}

/// Writes a file only its owner can read, replacing any old one.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}
