//! The control plane's keyspaces: `tokens` (token id → JSON [`TokenRecord`], hashed secret
//! only), `secrets` (name → sealed value) and `agents` (certificate fingerprint → the
//! [`AgentCert`] it was issued as). Each write is durable on return and carries the audit
//! record of the call that made it. `workers` (worker id → the agent identity it was first
//! welcomed under) is written in the shard batch that welcomes it, so a restarted server
//! still refuses another certificate's claim to a worker and its running jobs.

use anyhow::{Context, Result};
use hodei_auth::audit::AuditRecord;
use hodei_auth::token::TokenRecord;
use hodei_core::ids::WorkerId;

use super::Store;
use super::keys::hex;

/// An agent certificate the server issued.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct AgentCert {
    /// The identity it is bound to.
    pub identity: String,
    /// Expiry, ms since the epoch.
    pub expires_at_ms: u64,
    /// Revoked (with every other certificate of its identity).
    pub revoked: bool,
}

impl Store {
    /// Every stored token.
    pub fn load_tokens(&self) -> Result<Vec<TokenRecord>> {
        let mut out = Vec::new();
        for kv in self.tokens.iter() {
            let (k, v) = kv.into_inner().context("cannot read the tokens keyspace")?;
            let rec: TokenRecord = serde_json::from_slice(&v)
                .with_context(|| format!("corrupt store: token {}", hex(&k)))?;
            out.push(rec);
        }
        Ok(out)
    }

    /// Stores a token (durably), with the audit record of the call.
    pub fn put_token(&self, rec: &TokenRecord, audit: &[AuditRecord]) -> Result<()> {
        let v = serde_json::to_vec(rec).context("cannot encode a token")?;
        let mut batch = self.audited_batch(audit);
        batch.insert(&self.tokens, rec.id.0.to_be_bytes().to_vec(), v);
        batch.commit().context("cannot store a token")
    }

    /// Every stored secret: name → sealed entry.
    pub fn load_secrets(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        for kv in self.secrets.iter() {
            let (k, v) = kv
                .into_inner()
                .context("cannot read the secrets keyspace")?;
            let name = String::from_utf8(k.to_vec())
                .map_err(|_| anyhow::anyhow!("corrupt store: a secret name is not UTF-8"))?;
            out.push((name, v.to_vec()));
        }
        Ok(out)
    }

    /// Sets (`Some`) or removes (`None`) a sealed secret, with the audit record of the call.
    pub fn put_secret(
        &self,
        name: &str,
        sealed: Option<&[u8]>,
        audit: &[AuditRecord],
    ) -> Result<()> {
        let mut batch = self.audited_batch(audit);
        match sealed {
            Some(v) => batch.insert(&self.secrets, name.as_bytes().to_vec(), v.to_vec()),
            None => batch.remove(&self.secrets, name.as_bytes().to_vec()),
        }
        batch.commit().context("cannot store a secret")
    }

    /// Every agent certificate issued: fingerprint → record.
    pub fn load_agent_certs(&self) -> Result<Vec<([u8; 32], AgentCert)>> {
        let mut out = Vec::new();
        for kv in self.agents.iter() {
            let (k, v) = kv.into_inner().context("cannot read the agents keyspace")?;
            let fp: [u8; 32] = k
                .as_ref()
                .try_into()
                .map_err(|_| anyhow::anyhow!("corrupt store: agent certificate key"))?;
            let c: AgentCert = serde_json::from_slice(&v)
                .with_context(|| format!("corrupt store: agent certificate {}", hex(&k)))?;
            out.push((fp, c));
        }
        Ok(out)
    }

    /// Stores agent certificate records (durably), with the audit record of the call.
    pub fn put_agent_certs(
        &self,
        certs: &[([u8; 32], AgentCert)],
        audit: &[AuditRecord],
    ) -> Result<()> {
        let mut batch = self.audited_batch(audit);
        for (fp, c) in certs {
            let v = serde_json::to_vec(c).context("cannot encode an agent certificate")?;
            batch.insert(&self.agents, fp.to_vec(), v);
        }
        batch.commit().context("cannot store agent certificates")
    }

    /// Which identity each worker id belongs to.
    pub fn load_worker_bindings(&self) -> Result<Vec<(WorkerId, String)>> {
        let mut out = Vec::new();
        for kv in self.workers.iter() {
            let (k, v) = kv
                .into_inner()
                .context("cannot read the workers keyspace")?;
            let id: [u8; 8] = k
                .as_ref()
                .try_into()
                .map_err(|_| anyhow::anyhow!("corrupt store: worker key {}", hex(&k)))?;
            let identity = String::from_utf8(v.to_vec())
                .map_err(|_| anyhow::anyhow!("corrupt store: worker {} identity", hex(&k)))?;
            out.push((WorkerId(u64::from_be_bytes(id)), identity));
        }
        Ok(out)
    }

    /// Adds worker bindings to a batch.
    pub(super) fn put_workers(
        &self,
        batch: &mut super::WriteBatch,
        workers: &[(WorkerId, String)],
    ) {
        for (w, identity) in workers {
            batch.insert(
                &self.workers,
                w.to_be_bytes().to_vec(),
                identity.as_bytes().to_vec(),
            );
        }
    }
}
