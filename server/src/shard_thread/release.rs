//! What leaves a shard's loop once a batch is on disk, and the checks that decide what must
//! wait for a commit: [`release`] hands each message to its agent writer, client or peer
//! shard; [`writes_to`] tells whether a read depends on writes not yet on disk.

use std::collections::HashMap;

use hodei_core::event::{Event, EventKind, Subject};
use hodei_core::ids::{JobId, WorkerId};
use hodei_core::wire::ToAgent;
use hodei_shards::{ConnId, Effects, ReqId, ShardMsg, StoreOp};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, info};

use super::{AgentOut, Input};
use crate::audit::ShardAudit;
use crate::control::Control;

/// Sends what a turn (or a committed batch) released: agent messages (with the secret values
/// an assignment needs, joined only here), closes, one channel message per peer shard, and
/// client replies; clients whose channel is closed go to `gone`.
pub(super) fn release(
    turn: Effects,
    writers: &HashMap<ConnId, UnboundedSender<AgentOut>>,
    clients: &mut HashMap<ReqId, super::ReplySender>,
    peers: &[UnboundedSender<Input>],
    gone: &mut Vec<ReqId>,
    control: &Control,
) {
    for (conn, mut msg) in turn.agent {
        if let Some(w) = writers.get(&conn) {
            // Secret values join an assignment only here, as it leaves for its agent.
            if let ToAgent::Assign { spec, secrets, .. } = &mut msg
                && !spec.secrets.is_empty()
            {
                *secrets = control.secret_values(&spec.secrets);
            }
            let _ = w.send(AgentOut::Msg(Box::new(msg)));
        }
    }
    for conn in turn.close {
        if let Some(w) = writers.get(&conn) {
            let _ = w.send(AgentOut::Close);
        }
    }
    // One channel message per destination shard per turn: cross-core wake-ups are costly.
    let mut per_shard: HashMap<usize, Vec<ShardMsg>> = HashMap::new();
    for (to, msg) in turn.shard {
        per_shard.entry(to).or_default().push(msg);
    }
    for (to, msgs) in per_shard {
        if let Some(p) = peers.get(to) {
            let _ = p.send(Input::Shard(msgs));
        }
    }
    for (req, reply, last) in turn.reply {
        if let Some(c) = clients.get(&req)
            && c.send(reply, last).is_err()
        {
            gone.push(req);
        }
        if last {
            clients.remove(&req);
        }
    }
}

/// Whether a batch has anything to commit: store writes, audit records or worker bindings.
pub(super) fn has_writes(
    pending: &Effects,
    audit: &ShardAudit,
    welcomed: &[(WorkerId, String)],
) -> bool {
    !pending.persists.is_empty() || !audit.pending.is_empty() || !welcomed.is_empty()
}

/// The workers the shard welcomed in `fx.agent[from..]`, with their connection's identity.
pub(super) fn note_welcomes(
    fx: &Effects,
    from: usize,
    agents: &HashMap<ConnId, std::rc::Rc<str>>,
    welcomed: &mut Vec<(WorkerId, String)>,
) {
    for (conn, msg) in fx.agent.get(from..).unwrap_or_default() {
        if let (ToAgent::Welcome { worker, .. }, Some(who)) = (msg, agents.get(conn)) {
            welcomed.push((*worker, who.to_string()));
        }
    }
}

/// Whether any of `ops` writes to `job` (its record, its output or its events). The early
/// answer to `GetJob` relies on every change the shard makes to a job's stored record
/// going out with a write of it; a field changed in memory alone (`not_before` cleared
/// when a retry's backoff ends) is one the shard rebuilds from the stored record anyway.
pub(super) fn writes_to<'a>(mut ops: impl Iterator<Item = &'a StoreOp>, job: JobId) -> bool {
    ops.any(|op| op.job() == Some(job))
}

/// Audit records for the events the shard stored from `fx.persists[from..]`.
pub(super) fn note_events(audit: &mut ShardAudit, fx: &Effects, from: usize, actor: &str) {
    for op in fx.persists.get(from..).unwrap_or_default() {
        if let StoreOp::PutEvent(e) = op {
            audit.event(actor, e);
        }
    }
}

/// One log line per durable event; a job's lines carry its correlation id.
pub(super) fn log_event(e: &Event) {
    let reason = e.reason.as_deref().unwrap_or("");
    match (&e.subject, &e.kind) {
        (
            Subject::Job(job),
            EventKind::Job {
                state,
                attempt,
                worker,
            },
        ) => {
            let worker = worker.map(|w| w.to_string()).unwrap_or_default();
            debug!(%job, cid = %e.correlation_id, %state, attempt = attempt.0, %worker, reason, "job state");
        }
        (Subject::Job(job), EventKind::StaleReport { attempt, worker }) => {
            info!(%job, cid = %e.correlation_id, attempt = attempt.0, %worker, "stale report ignored (fenced)");
        }
        (Subject::Worker(worker), EventKind::Worker { state }) => {
            info!(%worker, %state, reason, "worker state")
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use hodei_core::ids::{Attempt, WorkerId};
    use hodei_core::job::JobRecord;
    use hodei_core::spec::JobSpec;
    use hodei_core::state::{JobState, WorkerState};

    use super::*;

    fn event(subject: Subject, kind: EventKind) -> StoreOp {
        StoreOp::PutEvent(Event {
            shard: 0,
            seq: 1,
            at: 0,
            subject,
            correlation_id: String::new(),
            kind,
            reason: None,
        })
    }

    /// A read waits for the commit exactly when one of the job's own writes (record, output
    /// or event) is not on disk yet; other jobs' and workers' writes do not hold it.
    #[test]
    fn a_read_waits_only_for_writes_to_its_job() {
        let job = JobId::new(0, 1, 7);
        let other = JobId::new(0, 1, 8);
        let worker = WorkerId::new(0, 1, 1);
        let unrelated = [
            StoreOp::PutJob(JobRecord::new(other, JobSpec::exec("true", &[]), 0)),
            event(
                Subject::Worker(worker),
                EventKind::Worker {
                    state: WorkerState::Ready,
                },
            ),
            StoreOp::PutOutput {
                job: other,
                attempt: Attempt(1),
                offset: 0,
                chunks: Vec::new(),
            },
        ];
        assert!(!writes_to(unrelated.iter(), job));
        let own = [
            StoreOp::PutJob(JobRecord::new(job, JobSpec::exec("true", &[]), 0)),
            StoreOp::PutOutput {
                job,
                attempt: Attempt(1),
                offset: 0,
                chunks: Vec::new(),
            },
            event(
                Subject::Job(job),
                EventKind::Job {
                    state: JobState::Running,
                    attempt: Attempt(1),
                    worker: Some(worker),
                },
            ),
        ];
        for op in &own {
            assert!(writes_to(unrelated.iter().chain([op]), job), "{op:?}");
        }
    }
}
