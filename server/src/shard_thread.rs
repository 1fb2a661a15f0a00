//! One shard's thread: a pinned OS thread running a tokio `current_thread` runtime with
//! its quinn endpoints (the shared SO_REUSEPORT port and its private redirect port), the
//! connection tasks, and the loop that feeds the sans-IO [`Shard`].
//!
//! Loop turn: wait for an input, the shard's next deadline or the end of the commit in
//! flight; drain what else is queued into the shard; then, if no commit is in flight, hand
//! everything written since the last one to a blocking thread as one batch with one
//! fdatasync (pipelined group commit). A batch's messages are released only when it is on
//! disk, and batches commit in order: nothing leaves before what it depends on is durable.

use std::collections::HashMap;
use std::net::UdpSocket;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hodei_core::event::{Event, EventKind, Subject};
use hodei_core::ids::JobId;
use hodei_core::time::wall_now;
use hodei_core::wire::{FromAgent, ToAgent, ToServer};
use hodei_shards::{ConnId, Effects, Reply, ReqId, Shard, ShardMsg, StoreOp};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tracing::{debug, error, info, warn};

use super::audit::ShardAudit;
use super::control::Control;
use super::store::Store;

/// A commit this slow is logged (with its size).
const SLOW_COMMIT: Duration = Duration::from_millis(50);

/// Inputs of a shard's loop, from its own tasks and from other shards.
#[derive(Debug)]
pub enum Input {
    /// A new agent connection, who it is (the actor in the audit log) and the channel to
    /// its writer.
    AgentOpen(ConnId, String, UnboundedSender<AgentOut>),
    /// A message from an agent, and when its connection's task decoded it.
    Agent(ConnId, FromAgent, std::time::Instant),
    /// An agent connection ended.
    AgentClosed(ConnId),
    /// A client request, who made it (the token's name), and where its replies go.
    Client(ReqId, ToServer, String, UnboundedSender<(Reply, bool)>),
    /// Messages from another shard, in order.
    Shard(Vec<ShardMsg>),
    /// An agent identity was revoked: close its connections now.
    Revoke(String),
    /// Stop: close endpoints, flush, exit.
    Shutdown,
}

/// What an agent connection's writer task is told. The message is boxed: an unbounded
/// channel allocates its first block of 32 slots when created, and with the message inline
/// (360 bytes) that was 11.5 KiB held by every idle agent connection; boxed (8 bytes a
/// slot), it is about 300 bytes, for one small allocation per message sent.
#[derive(Debug)]
pub enum AgentOut {
    Msg(Box<ToAgent>),
    Close,
}

/// A batch being committed, and the messages that wait for it.
struct InFlight {
    commit: tokio::task::JoinHandle<Result<()>>,
    /// Its writes (shared with the commit): read to tell whether a read depends on them.
    ops: Arc<Vec<StoreOp>>,
    msgs: Effects,
}

/// Everything a shard thread needs, built by the server before the threads start.
pub struct ShardSetup {
    pub shard: Shard,
    pub store: Store,
    pub control: Arc<Control>,
    pub audit: ShardAudit,
    pub limits: super::conn::Limits,
    pub shared_socket: UdpSocket,
    pub private_socket: UdpSocket,
    pub server_config: quinn::ServerConfig,
    pub reset_key: Vec<u8>,
    pub rx: UnboundedReceiver<Input>,
    pub tx: UnboundedSender<Input>,
    pub peers: Vec<UnboundedSender<Input>>,
    /// Least time between the starts of two commits (`hodei server --commit-interval`).
    pub commit_interval: Duration,
}

/// Runs a shard until shutdown. Called on its own thread.
pub fn run(setup: ShardSetup) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build the shard runtime")?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, drive(setup))
}

async fn drive(setup: ShardSetup) -> Result<()> {
    let ShardSetup {
        mut shard,
        store,
        control,
        mut audit,
        limits,
        shared_socket,
        private_socket,
        server_config,
        reset_key,
        mut rx,
        tx,
        peers,
        commit_interval,
    } = setup;
    let index = shard.index();
    let shared =
        hodei_transport::server_endpoint(shared_socket, server_config.clone(), &reset_key)?;
    let private = hodei_transport::server_endpoint(private_socket, server_config, &reset_key)?;
    for ep in [shared.clone(), private.clone()] {
        tokio::task::spawn_local(super::conn::accept_loop(
            ep,
            tx.clone(),
            store.clone(),
            Arc::clone(&control),
            limits,
        ));
    }

    let mut writers: HashMap<ConnId, UnboundedSender<AgentOut>> = HashMap::new();
    // Who each agent connection is, for the audit log: shared, so that naming the actor of
    // each message (heartbeats included) costs no allocation.
    let mut agents: HashMap<ConnId, Rc<str>> = HashMap::new();
    let server_actor: Rc<str> = Rc::from("server");
    let mut clients: HashMap<ReqId, UnboundedSender<(Reply, bool)>> = HashMap::new();
    let mut fx = Effects::default();
    let mut gone = Vec::new();
    // How long each heartbeat of this turn took from its decode to applied (`hodei stats`).
    let mut heartbeats: Vec<Duration> = Vec::new();
    let t = std::time::Instant::now();
    shard.handle_start(&mut fx);
    info!(
        shard = index,
        jobs = shard.jobs().count(),
        start_ms = t.elapsed().as_millis(),
        "shard ready"
    );
    // Pipelined group commit: while one batch is being written (on a blocking thread), the
    // shard goes on handling inputs into the next. A batch's messages wait for its commit,
    // and a batch is committed only after the one before it, so nothing leaves before what
    // it depends on is on disk, and under load batches grow instead of queueing fsyncs.
    let mut pending = Effects::default();
    let mut in_flight: Option<InFlight> = None;
    // With `--commit-interval`, a batch waits until then to start its commit, so that under
    // sustained load there are fewer, larger commits.
    let mut next_commit = tokio::time::Instant::now();
    let mut running = true;
    while running || in_flight.is_some() || !pending.is_empty() {
        let sleep_until = shard.poll_timeout().map(|t| {
            let delta = t.saturating_sub(wall_now());
            tokio::time::Instant::now() + Duration::from_micros(delta)
        });
        // A batch held back by the interval (below) is committed when it is over, even if
        // no input comes.
        let commit_at = (running && in_flight.is_none() && !pending.is_empty()).then(|| {
            if has_writes(&pending, &audit) {
                next_commit
            } else {
                tokio::time::Instant::now()
            }
        });
        let mut inputs: Vec<Input> = Vec::new();
        let mut committed = None;
        tokio::select! {
            i = rx.recv(), if running => inputs.extend(i),
            () = async {
                match sleep_until {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            }, if running => {}
            r = async {
                match in_flight.as_mut() {
                    Some(f) => (&mut f.commit).await,
                    None => std::future::pending().await,
                }
            } => committed = Some(r),
            // Shutting down with nothing in flight: commit what is left (below).
            () = std::future::ready(()), if !running && in_flight.is_none() => {}
            () = async {
                match commit_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
        if let Some(r) = committed {
            let Some(done) = in_flight.take() else {
                continue;
            };
            let ok = match r {
                Ok(Ok(())) => {
                    for op in done.ops.iter() {
                        if let StoreOp::PutEvent(e) = op {
                            log_event(e);
                        }
                    }
                    true
                }
                Ok(Err(e)) => {
                    error!(
                        shard = index,
                        "{e:#}; stopping the shard: nothing of this batch was acknowledged"
                    );
                    false
                }
                Err(e) => {
                    error!(
                        shard = index,
                        "store commit task failed: {e}; stopping the shard"
                    );
                    false
                }
            };
            if !ok {
                running = false;
                pending = Effects::default();
                continue;
            }
            release(
                done.msgs,
                &writers,
                &mut clients,
                &peers,
                &mut gone,
                &control,
            );
            // Clients whose stream ended: their subscriptions go with the next batch.
            for req in gone.drain(..) {
                clients.remove(&req);
                shard.handle_client_gone(req, &mut fx);
            }
        }
        let now = wall_now();
        if running {
            while inputs.len() < 4096 {
                match rx.try_recv() {
                    Ok(i) => inputs.push(i),
                    Err(_) => break,
                }
            }
        }
        // Whatever the shard did before these inputs (e.g. for a client that went away) is
        // the server's doing.
        note_events(&mut audit, &fx, 0, "server");
        for input in inputs {
            let mark = fx.persists.len();
            let actor = match &input {
                Input::AgentOpen(conn, who, w) => {
                    writers.insert(*conn, w.clone());
                    agents.insert(*conn, Rc::from(who.as_str()));
                    continue;
                }
                Input::Agent(conn, ..) | Input::AgentClosed(conn) => agents
                    .get(conn)
                    .map_or_else(|| Rc::from("agent"), Rc::clone),
                Input::Client(_, body, who, _) => {
                    audit.call(now / 1000, who, body);
                    Rc::from(who.as_str())
                }
                Input::Revoke(identity) => {
                    for (conn, who) in &agents {
                        if **who == **identity
                            && let Some(w) = writers.get(conn)
                        {
                            let _ = w.send(AgentOut::Close);
                        }
                    }
                    continue;
                }
                Input::Shard(_) | Input::Shutdown => Rc::clone(&server_actor),
            };
            match input {
                Input::AgentOpen(..) | Input::Revoke(_) => {}
                Input::Agent(conn, msg, decoded) => {
                    let heartbeat = matches!(msg, FromAgent::Heartbeat { .. });
                    shard.handle_agent(now, conn, msg, &mut fx);
                    if heartbeat {
                        heartbeats.push(decoded.elapsed());
                    }
                }
                Input::AgentClosed(conn) => {
                    writers.remove(&conn);
                    agents.remove(&conn);
                    shard.handle_agent_closed(now, conn, &mut fx);
                }
                Input::Client(req, body, _, reply) => {
                    clients.insert(req, reply);
                    let read = match &body {
                        ToServer::GetJob { job } => Some(*job),
                        _ => None,
                    };
                    let mark = fx.reply.len();
                    shard.handle_client(now, req, body, &mut fx);
                    // A read of a job with no write waiting for a commit shows only what
                    // is on disk already: it need not wait for (possibly two) fsyncs. (A
                    // job of another shard was forwarded: no answer here yet.)
                    if let Some(job) = read
                        && fx.reply.len() > mark
                    {
                        let unwritten = [&fx.persists, &pending.persists]
                            .into_iter()
                            .flat_map(|ops| ops.iter())
                            .chain(in_flight.iter().flat_map(|f| f.ops.iter()));
                        if !writes_to(unwritten, job) {
                            let now_fx = Effects {
                                reply: fx.reply.split_off(mark),
                                ..Effects::default()
                            };
                            release(now_fx, &writers, &mut clients, &peers, &mut gone, &control);
                        }
                    }
                }
                Input::Shard(msgs) => {
                    for m in msgs {
                        shard.handle_shard(now, m, &mut fx);
                    }
                }
                Input::Shutdown => running = false,
            }
            note_events(&mut audit, &fx, mark, &actor);
        }
        control.stats.heartbeats(&heartbeats);
        heartbeats.clear();
        if running {
            let mark = fx.persists.len();
            shard.handle_timeout(now, &mut fx);
            note_events(&mut audit, &fx, mark, "server");
        }
        pending.append(&mut fx);
        if in_flight.is_some() || pending.is_empty() {
            continue;
        }
        if !has_writes(&pending, &audit) {
            // Nothing to write and nothing in flight: all it depends on is already durable.
            let msgs = std::mem::take(&mut pending);
            release(msgs, &writers, &mut clients, &peers, &mut gone, &control);
            for req in gone.drain(..) {
                clients.remove(&req);
                shard.handle_client_gone(req, &mut pending);
            }
            continue;
        }
        let now = tokio::time::Instant::now();
        if running && now < next_commit {
            // Too soon after the last commit started: `commit_at` wakes the loop for it.
            continue;
        }
        next_commit = now + commit_interval;
        let mut msgs = std::mem::take(&mut pending);
        let ops = Arc::new(std::mem::take(&mut msgs.persists));
        let records = std::mem::take(&mut audit.pending);
        let store = store.clone();
        let control = Arc::clone(&control);
        in_flight = Some(InFlight {
            ops: Arc::clone(&ops),
            commit: tokio::task::spawn_blocking(move || {
                let t = std::time::Instant::now();
                let r = store.commit(&ops, &records);
                // Everything the batch answers waits for this: a slow disk shows here first.
                let took = t.elapsed();
                control.stats.commit(took);
                if took >= SLOW_COMMIT {
                    warn!(
                        shard = index,
                        ms = took.as_millis(),
                        ops = ops.len(),
                        audit = records.len(),
                        "slow store commit"
                    );
                }
                r
            }),
            msgs,
        });
    }
    info!(shard = index, "shard stopping: closing connections");
    for w in writers.values() {
        let _ = w.send(AgentOut::Close);
    }
    shared.close(0u32.into(), b"server shutting down");
    private.close(0u32.into(), b"server shutting down");
    let deadline = tokio::time::timeout(Duration::from_secs(2), async {
        shared.wait_idle().await;
        private.wait_idle().await;
    });
    if deadline.await.is_err() {
        warn!(shard = index, "connections did not close within 2 s");
    }
    Ok(())
}

fn release(
    turn: Effects,
    writers: &HashMap<ConnId, UnboundedSender<AgentOut>>,
    clients: &mut HashMap<ReqId, UnboundedSender<(Reply, bool)>>,
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
            && c.send((reply, last)).is_err()
        {
            gone.push(req);
        }
        if last {
            clients.remove(&req);
        }
    }
}

/// Whether a batch has anything to commit: store writes or audit records.
fn has_writes(pending: &Effects, audit: &ShardAudit) -> bool {
    !pending.persists.is_empty() || !audit.pending.is_empty()
}

/// Whether any of `ops` writes to `job` (its record, its output or its events). The early
/// answer to `GetJob` relies on every change the shard makes to a job's stored record
/// going out with a write of it; a field changed in memory alone (`not_before` cleared
/// when a retry's backoff ends) is one the shard rebuilds from the stored record anyway.
fn writes_to<'a>(mut ops: impl Iterator<Item = &'a StoreOp>, job: JobId) -> bool {
    ops.any(|op| op.job() == Some(job))
}

/// Audit records for the events the shard stored from `fx.persists[from..]`.
fn note_events(audit: &mut ShardAudit, fx: &Effects, from: usize, actor: &str) {
    for op in fx.persists.get(from..).unwrap_or_default() {
        if let StoreOp::PutEvent(e) = op {
            audit.event(actor, e);
        }
    }
}

/// One log line per durable event; a job's lines carry its correlation id.
fn log_event(e: &Event) {
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
