//! The audit log: hash-chained records (`hodei-auth`'s [`AuditChain`]) in the store's
//! `audit` keyspace. Each shard keeps its own chain (chain id = shard index): every
//! mutating call it serves and every job and worker state change, each with who caused it
//! (the token's name, the agent, or `server` for timers), written in the same store batch
//! as the change. Token and secret calls go to the control chain
//! ([`super::control::CONTROL_CHAIN`]). One chain per writer keeps appends lock-free on the
//! hot path; `hodei audit verify` checks every chain. Chains are keyed (HMAC-SHA256 with a
//! key derived from `secrets.key`, outside the store), so an edit cannot be covered up by
//! recomputing the hashes that follow it.

use anyhow::{Context, Result};
use hodei_auth::audit::{self, AuditChain, AuditKey, AuditRecord};
use hodei_core::event::{Event, EventKind, Subject};
use hodei_core::ids::JobId;
use hodei_core::wire::JobRequest;

use super::store::Store;

/// A shard's end of its chain: the records of the batch being built.
pub struct ShardAudit {
    chain: AuditChain,
    /// Records not yet handed to a commit, in order.
    pub pending: Vec<AuditRecord>,
}

impl ShardAudit {
    /// Resumes the shard's chain from its last stored record.
    pub fn resume(store: &Store, shard: u16, key: AuditKey) -> Result<Self> {
        let chain = match store.last_audit(shard)? {
            Some((seq, hash)) => AuditChain::resume(shard, seq + 1, hash),
            None => AuditChain::new(shard),
        }
        .keyed(key);
        Ok(Self {
            chain,
            pending: Vec::new(),
        })
    }

    /// A mutating client call, before its effects (the record is the request's own,
    /// [`JobRequest::audit`]).
    pub fn call(&mut self, at_ms: u64, actor: &str, body: &JobRequest) {
        let Some(call) = body.audit() else {
            return;
        };
        let r = self.chain.append(
            at_ms,
            actor,
            call.action,
            call.subject,
            call.correlation_id,
            call.detail,
        );
        self.pending.push(r);
    }

    /// A state change the shard made, caused by `actor`.
    pub fn event(&mut self, actor: &str, e: &Event) {
        let subject = match e.subject {
            Subject::Job(j) => j.to_string(),
            Subject::Worker(w) => w.to_string(),
        };
        let (action, mut detail) = match &e.kind {
            EventKind::Job {
                state,
                attempt,
                worker,
            } => (
                format!("job.{state}"),
                match worker {
                    Some(w) => format!("attempt={} worker={w}", attempt.0),
                    None => format!("attempt={}", attempt.0),
                },
            ),
            EventKind::Worker { state } => (format!("worker.{state}"), String::new()),
            EventKind::StaleReport { attempt, worker } => (
                "job.stale_report".to_owned(),
                format!("attempt={} worker={worker}", attempt.0),
            ),
        };
        if let Some(r) = &e.reason {
            if !detail.is_empty() {
                detail.push(' ');
            }
            detail.push_str("reason=");
            detail.push_str(r);
        }
        let r = self.chain.append(
            e.at / 1000,
            actor,
            action,
            subject,
            e.correlation_id.as_str(),
            detail,
        );
        self.pending.push(r);
    }
}

/// Records matching the filters, as JSON objects, chain by chain in order, handed to
/// `emit` one at a time (a long audit log is streamed, never held whole); stops early when
/// `emit` returns false.
pub fn query(
    store: &Store,
    job: Option<JobId>,
    actor: Option<&str>,
    since_ms: Option<u64>,
    emit: &mut dyn FnMut(String) -> bool,
) -> Result<()> {
    let job = job.map(|j| j.to_string());
    for chain in store.audit_chains()? {
        for r in store.read_audit(chain) {
            let r = r?;
            if job.as_ref().is_some_and(|j| *j != r.subject)
                || actor.is_some_and(|a| a != r.actor)
                || since_ms.is_some_and(|s| r.at_ms < s)
            {
                continue;
            }
            if !emit(serde_json::to_string(&r).context("cannot encode an audit record")?) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Checks every chain, each from its start: record 0, or the checkpoint retention left
/// when it deleted the oldest records, which must carry this key's seal
/// (`store::Checkpoint`). A chain missing records without a checkpoint that covers them
/// fails at the first one missing. The error names the chain and the first bad record;
/// the count is of the records kept (those deleted were checked before they went).
pub fn verify_all(store: &Store, key: &AuditKey) -> Result<(u64, u32)> {
    let mut records = 0;
    let mut chains = 0;
    let mut all = store.audit_chains()?;
    // A chain whose every record went (retention never deletes the newest) is found by its
    // checkpoint, and fails for want of records.
    all.extend(store.checkpointed_chains()?);
    all.sort_unstable();
    all.dedup();
    for chain in all {
        records += verify_chain(store, chain, key)?;
        chains += 1;
    }
    Ok((records, chains))
}

/// Verifies one chain from its checkpoint (or record 0): how many records it holds. The
/// checkpoint and the records are read in one snapshot: retention trimming the chain
/// meanwhile is seen whole or not at all.
fn verify_chain(store: &Store, chain: u16, key: &AuditKey) -> Result<u64> {
    let name = chain_name(chain);
    let (cp, read) = store.audit_view(chain)?;
    let start = match cp {
        Some(cp) => {
            cp.check(key)
                .with_context(|| format!("audit chain {name}: its checkpoint"))?;
            (cp.seq, cp.prev)
        }
        None => (0, [0; 32]),
    };
    let mut decoded = Vec::new();
    for (i, r) in read.into_iter().enumerate() {
        let r = r.with_context(|| {
            format!(
                "audit chain {name} is damaged at record {}",
                start.0.saturating_add(i as u64)
            )
        })?;
        decoded.push(r);
    }
    if decoded.is_empty() {
        anyhow::bail!(
            "audit chain {name}: every record from {} is missing",
            start.0
        );
    }
    audit::verify_keyed_from(chain, start, decoded, None, key)
        .map_err(|e| anyhow::anyhow!("audit chain {name}: {e}"))
}

fn chain_name(chain: u16) -> String {
    if chain == super::control::CONTROL_CHAIN {
        "control".to_owned()
    } else {
        format!("shard-{chain}")
    }
}
