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
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use anyhow::{Context, Result, bail};
use hodei_auth::audit::{AuditChain, AuditKey, AuditRecord};
use hodei_auth::redact::Redactor;
use hodei_auth::role::{Permission, Role};
use hodei_auth::seal::SealKey;
use hodei_auth::token::{self, TokenId, TokenRecord};
use hodei_core::ids::WorkerId;
use hodei_core::spec::check_secret_name;
use hodei_core::wire::{ErrorKind, FromServer, SecretInfo, SecretValue, ToServer, TokenInfo};
use hodei_transport::{Authority, ServerCert};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{info, warn};

use super::shard_thread::Input;
use super::store::{AgentCert, Store};

/// The audit chain of control calls (shards use their index as their chain).
pub const CONTROL_CHAIN: u16 = u16::MAX;

/// Largest secret value accepted.
const MAX_SECRET: usize = 64 * 1024;

/// Who is calling, once their token checked out.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The token's name: the actor in the audit log and the owner of submitted jobs.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The token's id (0 for the server itself).
    pub token: u64,
}

impl Caller {
    /// The server itself (timers, restarts).
    #[must_use]
    pub fn server() -> Self {
        Self {
            name: "server".to_owned(),
            role: Role::Admin,
            token: 0,
        }
    }

    /// Refuses with the missing permission named.
    pub fn require(&self, p: Permission) -> Result<(), FromServer> {
        if self.role.allows(p) {
            return Ok(());
        }
        Err(FromServer::Error {
            kind: ErrorKind::Forbidden,
            message: format!(
                "permission denied: role {} lacks the {} permission",
                self.role,
                permission_name(p)
            ),
        })
    }
}

/// The permission a request needs.
#[must_use]
pub const fn permission_for(body: &ToServer) -> Permission {
    match body {
        ToServer::Submit { .. } | ToServer::SubmitWait { .. } => Permission::Submit,
        ToServer::GetJob { .. }
        | ToServer::ListJobs { .. }
        | ToServer::Logs { .. }
        | ToServer::Wait { .. }
        | ToServer::ListWorkers
        | ToServer::Events { .. }
        | ToServer::Stats { reset: false } => Permission::Read,
        // Restarting the figures spoils them for everyone else who reads them (a load test
        // resets at its steady phase): the fleet operator's call, not any reader's.
        ToServer::Stats { reset: true } => Permission::ManageWorkers,
        ToServer::Cancel { .. } | ToServer::Retry { .. } => Permission::Cancel,
        ToServer::DrainWorker { .. } | ToServer::RevokeWorker { .. } => Permission::ManageWorkers,
        ToServer::Join { .. } => Permission::Join,
        ToServer::RotateServerCert => Permission::ManageTokens,
        ToServer::CreateToken { .. } | ToServer::ListTokens | ToServer::RevokeToken { .. } => {
            Permission::ManageTokens
        }
        ToServer::SetSecret { .. } | ToServer::ListSecrets | ToServer::RemoveSecret { .. } => {
            Permission::ManageSecrets
        }
        ToServer::Audit { .. } | ToServer::AuditVerify => Permission::ReadAudit,
    }
}

const fn permission_name(p: Permission) -> &'static str {
    match p {
        Permission::Read => "read",
        Permission::Submit => "submit",
        Permission::Cancel => "cancel",
        Permission::ManageWorkers => "manage-workers",
        Permission::ManageSecrets => "manage-secrets",
        Permission::ManageTokens => "manage-tokens",
        Permission::ReadAudit => "read-audit",
        Permission::Join => "join",
    }
}

/// A secret as kept in memory: still sealed.
struct Sealed {
    bytes: Vec<u8>,
    updated_at_ms: u64,
    updated_by: String,
}

impl Sealed {
    /// Stored as `updated_at_ms: u64 LE | by_len: u16 LE | by | sealed bytes`.
    fn encode(&self) -> Vec<u8> {
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

    fn decode(v: &[u8]) -> Option<Self> {
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

/// Tokens, secrets and the control audit chain.
pub struct Control {
    store: Store,
    tokens: RwLock<HashMap<u64, TokenRecord>>,
    key: SealKey,
    secrets: RwLock<BTreeMap<String, Sealed>>,
    chain: Mutex<AuditChain>,
    audit_key: AuditKey,
    pki: Pki,
    /// The server's own figures (`hodei stats`), fed by the shard threads.
    pub stats: super::stats::Stats,
}

/// What the control plane knows of agents' certificates.
pub struct Pki {
    /// Signs agents' (and rotated server) certificates.
    pub authority: Authority,
    /// The certificate the endpoints present.
    pub server_cert: Arc<ServerCert>,
    /// Where `server.pem` lives.
    pub data_dir: PathBuf,
    /// Lifetime of an agent certificate.
    pub agent_ttl: std::time::Duration,
    /// Issued certificates by SHA-256 of their DER.
    certs: RwLock<HashMap<[u8; 32], AgentCert>>,
    /// The identity behind each worker that registered since the start (for revoke).
    workers: Mutex<HashMap<WorkerId, String>>,
    /// Each shard's input, to close a revoked agent's connections.
    shards: OnceLock<Vec<UnboundedSender<Input>>>,
}

impl Pki {
    /// Setup from the server's TLS material.
    pub fn new(
        authority: Authority,
        server_cert: Arc<ServerCert>,
        data_dir: &Path,
        agent_ttl: std::time::Duration,
    ) -> Self {
        Self {
            authority,
            server_cert,
            data_dir: data_dir.to_owned(),
            agent_ttl,
            certs: RwLock::new(HashMap::new()),
            workers: Mutex::new(HashMap::new()),
            shards: OnceLock::new(),
        }
    }
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
        }
        let control = Self {
            store,
            tokens: RwLock::new(tokens),
            key,
            secrets: RwLock::new(secrets),
            chain: Mutex::new(chain),
            audit_key,
            pki,
            stats: super::stats::Stats::new()?,
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

    fn read_secrets(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Sealed>> {
        self.secrets
            .read()
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

    /// Answers a control request (the caller's permission was checked by the connection).
    pub fn handle(&self, caller: &Caller, body: ToServer) -> Vec<FromServer> {
        match body {
            ToServer::CreateToken {
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
            ToServer::ListTokens => {
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
            ToServer::RevokeToken { id } => {
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
            ToServer::SetSecret { name, value } => vec![self.set_secret(caller, &name, &value.0)],
            ToServer::ListSecrets => vec![FromServer::Secrets(
                self.read_secrets()
                    .iter()
                    .map(|(name, s)| SecretInfo {
                        name: name.clone(),
                        updated_at_ms: s.updated_at_ms,
                        updated_by: s.updated_by.clone(),
                    })
                    .collect(),
            )],
            ToServer::RemoveSecret { name } => {
                if !self.read_secrets().contains_key(&name) {
                    return vec![err(ErrorKind::NotFound, format!("no secret {name:?}"))];
                }
                let r = self.audited(caller, "secret.remove", &name, "", |a| {
                    self.store.put_secret(&name, None, a)
                });
                match r {
                    Ok(()) => {
                        self.secrets
                            .write()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .remove(&name);
                        vec![FromServer::Done]
                    }
                    Err(e) => vec![internal(&e)],
                }
            }
            ToServer::Audit {
                job,
                actor,
                since_ms,
            } => match super::audit::query(&self.store, job, actor.as_deref(), since_ms) {
                Ok(records) => records
                    .chunks(1000)
                    .map(|c| FromServer::AuditRecords(c.to_vec()))
                    .chain(std::iter::once(FromServer::Done))
                    .collect(),
                Err(e) => vec![internal(&e)],
            },
            ToServer::AuditVerify => {
                vec![
                    match super::audit::verify_all(&self.store, &self.audit_key) {
                        Ok((records, chains)) => FromServer::AuditVerified { records, chains },
                        Err(e) => err(ErrorKind::Invalid, format!("{e:#}")),
                    },
                ]
            }
            ToServer::Join { public_key } => vec![self.join(caller, &public_key)],
            ToServer::RevokeWorker { worker } => vec![self.revoke_worker(caller, worker)],
            ToServer::RotateServerCert => vec![self.rotate(caller)],
            ToServer::Stats { reset } => vec![FromServer::Stats(self.stats.figures(reset))],
            _ => vec![err(ErrorKind::Invalid, "not a control request")],
        }
    }

    fn set_secret(&self, caller: &Caller, name: &str, value: &[u8]) -> FromServer {
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

fn fingerprint(der: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, der).as_ref());
    out
}

impl Control {
    fn issue(
        &self,
        caller: &Caller,
        action: &str,
        identity: &str,
        public_key: &[u8],
    ) -> Result<(String, u64)> {
        let (pem, der) =
            self.pki
                .authority
                .issue_agent(public_key, identity, self.pki.agent_ttl)?;
        let ttl_ms = u64::try_from(self.pki.agent_ttl.as_millis()).unwrap_or(u64::MAX);
        let cert = AgentCert {
            identity: identity.to_owned(),
            expires_at_ms: now_ms().saturating_add(ttl_ms),
            revoked: false,
        };
        let fp = fingerprint(&der);
        self.audited(caller, action, identity, "", |a| {
            self.store.put_agent_certs(&[(fp, cert.clone())], a)
        })?;
        let expires = cert.expires_at_ms;
        self.pki
            .certs
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(fp, cert);
        Ok((pem, expires))
    }

    /// A join token for `uses` local agents, valid for an hour (`hodei up`).
    pub fn join_token(&self, uses: usize) -> Result<String> {
        let uses = u32::try_from(uses).unwrap_or(u32::MAX);
        let (text, _) = self.create_token(
            &Caller::server(),
            Role::Agent,
            "local-agents",
            Some(3_600_000),
            Some(uses),
        )?;
        Ok(text)
    }

    /// A join: consumes one use of the token and issues a certificate for a new identity.
    fn join(&self, caller: &Caller, public_key: &[u8]) -> FromServer {
        if let Err(e) = hodei_transport::check_agent_key(public_key) {
            return err(ErrorKind::Invalid, e.to_string());
        }
        // Consume a use first: two agents racing for the last use cannot both join.
        let consumed = {
            let mut tokens = self.write_tokens();
            match tokens.get_mut(&caller.token) {
                Some(t) => match t.uses_left {
                    Some(0) => Err("token used up".to_owned()),
                    Some(n) => {
                        t.uses_left = Some(n - 1);
                        Ok(Some(t.clone()))
                    }
                    None => Ok(None),
                },
                None if caller.token == 0 => Ok(None),
                None => Err("unknown token".to_owned()),
            }
        };
        let updated = match consumed {
            Ok(u) => u,
            Err(why) => return err(ErrorKind::Unauthenticated, format!("refused: {why}")),
        };
        if let Some(t) = &updated
            && let Err(e) = self.store.put_token(t, &[])
        {
            return internal(&e);
        }
        let mut id = [0u8; 8];
        if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id).is_err() {
            return err(ErrorKind::Internal, "no system randomness");
        }
        let identity = format!("agent-{:016x}", u64::from_be_bytes(id));
        match self.issue(caller, "agent.join", &identity, public_key) {
            Ok((cert_pem, expires_at_ms)) => {
                info!(%identity, by = %caller.name, "agent joined");
                FromServer::Joined {
                    identity,
                    cert_pem,
                    expires_at_ms,
                }
            }
            Err(e) => internal(&e),
        }
    }

    /// A renewal on an agent's own (mTLS) connection: same identity, new key and expiry.
    pub fn renew(&self, identity: &str, public_key: &[u8]) -> Result<(String, u64)> {
        if self.identity_revoked(identity) {
            bail!("identity {identity} is revoked");
        }
        let who = Caller {
            name: identity.to_owned(),
            role: Role::Agent,
            token: 0,
        };
        self.issue(&who, "agent.renew", identity, public_key)
    }

    fn identity_revoked(&self, identity: &str) -> bool {
        self.pki
            .certs
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .any(|c| c.identity == identity && c.revoked)
    }

    /// The identity of an agent connection's client certificate, or why it is refused.
    pub fn identify(&self, cert_der: &[u8]) -> Result<String, String> {
        let certs = self
            .pki
            .certs
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let c = certs
            .get(&fingerprint(cert_der))
            .ok_or_else(|| "client certificate was not issued by this server".to_owned())?;
        if c.revoked {
            return Err(format!("certificate of {} is revoked", c.identity));
        }
        if c.expires_at_ms <= now_ms() {
            return Err(format!("certificate of {} expired", c.identity));
        }
        Ok(c.identity.clone())
    }

    /// Whether `identity` may register as `worker`: a worker id belongs to the identity it
    /// was first welcomed under (since this server started), so one agent's certificate
    /// cannot take over another agent's worker and its jobs.
    pub fn may_claim(&self, worker: WorkerId, identity: &str) -> Result<(), String> {
        match self
            .pki
            .workers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&worker)
        {
            Some(owner) if owner != identity => Err(format!(
                "{identity} tried to register as worker {worker}, which belongs to {owner}"
            )),
            _ => Ok(()),
        }
    }

    /// Notes which identity registered as `worker` (from the `Welcome` it was sent).
    pub fn bind_worker(&self, worker: WorkerId, identity: &str) {
        self.pki
            .workers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(worker, identity.to_owned());
    }

    /// Where revocations are announced (set once the shard threads exist).
    pub fn set_shards(&self, shards: Vec<UnboundedSender<Input>>) {
        let _ = self.pki.shards.set(shards);
    }

    fn revoke_worker(&self, caller: &Caller, worker: WorkerId) -> FromServer {
        let identity = self
            .pki
            .workers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&worker)
            .cloned();
        let Some(identity) = identity else {
            return err(
                ErrorKind::NotFound,
                format!("worker {worker} has not registered since the server started"),
            );
        };
        let revoked: Vec<([u8; 32], AgentCert)> = {
            let mut certs = self
                .pki
                .certs
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            certs
                .iter_mut()
                .filter(|(_, c)| c.identity == identity)
                .map(|(fp, c)| {
                    c.revoked = true;
                    (*fp, c.clone())
                })
                .collect()
        };
        let detail = format!("worker={worker}");
        if let Err(e) = self.audited(caller, "agent.revoke", &identity, &detail, |a| {
            self.store.put_agent_certs(&revoked, a)
        }) {
            return internal(&e);
        }
        for s in self.pki.shards.get().into_iter().flatten() {
            let _ = s.send(Input::Revoke(identity.clone()));
        }
        warn!(%worker, %identity, by = %caller.name, "agent revoked: its connections are closed");
        FromServer::Done
    }

    fn rotate(&self, caller: &Caller) -> FromServer {
        let r = (|| -> Result<()> {
            let issued = self.pki.authority.issue_server()?;
            hodei_transport::write_server_cert(&self.pki.data_dir, &issued)?;
            self.pki.server_cert.replace(issued.chain, &issued.key)?;
            self.audited(caller, "server.cert_rotate", "server", "", |a| {
                self.store.put_agent_certs(&[], a)
            })
        })();
        match r {
            Ok(()) => {
                info!(by = %caller.name, "server certificate rotated");
                FromServer::Done
            }
            Err(e) => internal(&e),
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
