//! Agents' certificates: joining with a join token, renewal, identification of a connecting
//! agent, the worker ids an identity may claim, revocation, and rotation of the server's own
//! certificate. The certificate authority's key never leaves this process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use anyhow::{Result, bail};
use hodei_auth::role::Role;
use hodei_core::ids::WorkerId;
use hodei_core::wire::{ErrorKind, FromServer};
use hodei_transport::{Authority, ServerCert};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{info, warn};

use super::{Caller, Control, err, internal, now_ms};
use crate::shard_thread::Input;
use crate::store::AgentCert;

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
    pub(super) certs: RwLock<HashMap<[u8; 32], AgentCert>>,
    /// The identity behind each worker that ever registered (stored with the batch that
    /// welcomed it; read back at start): whose its jobs are, and whom a revoke cuts off.
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

    /// The stored bindings of worker ids to identities.
    pub(super) fn load_workers(&self, bindings: Vec<(WorkerId, String)>) {
        self.workers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(bindings);
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
    pub(super) fn join(&self, caller: &Caller, public_key: &[u8]) -> FromServer {
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
    /// was first welcomed under (also before a restart), so one agent's certificate
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

    pub(super) fn revoke_worker(&self, caller: &Caller, worker: WorkerId) -> FromServer {
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

    pub(super) fn rotate(&self, caller: &Caller) -> FromServer {
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
