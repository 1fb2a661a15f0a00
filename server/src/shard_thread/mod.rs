//! One shard's thread: a pinned OS thread running a tokio `current_thread` runtime with
//! its quinn endpoints (the shared SO_REUSEPORT port and its private redirect port), the
//! connection tasks, and the loop that feeds the sans-IO [`Shard`].
//!
//! Loop turn: wait for an input, the shard's next deadline or the end of the commit in
//! flight; drain what else is queued into the shard; then, if no commit is in flight, hand
//! everything written since the last one to a blocking thread as one batch with one
//! fdatasync (pipelined group commit). A batch's messages are released only when it is on
//! disk, and batches commit in order: nothing leaves before what it depends on is durable.
//! A batch the store could not take (a full disk) is held and written again; meanwhile
//! client writes are refused and reads answered ([`full`]).

use std::collections::{HashMap, HashSet};
use std::net::UdpSocket;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hodei_core::ids::WorkerId;
use hodei_core::time::wall_now;
use hodei_core::wire::{FromAgent, JobRequest};
use hodei_shards::ShardMsg;
use hodei_shards::{ConnId, Effects, ReqId, Shard, StoreOp};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tracing::{error, info, warn};

mod full;
mod input;
mod release;

mod replies;

pub use input::{
    AgentMsg, AgentOpen, AgentOut, ClientRequest, FootprintAsk, Input, ShardFootprint,
};
use release::{has_writes, log_event, note_events, note_welcomes, release, writes_to};
pub use replies::{BUDGET as REPLY_BUDGET, ReplySender, reply_queue};

use super::audit::ShardAudit;
use super::control::Control;
use super::store::{Batch, Committer, Outcome, Store};

/// A commit this slow is logged (with its size).
const SLOW_COMMIT: Duration = Duration::from_millis(50);

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
    let mut clients: HashMap<ReqId, ReplySender> = HashMap::new();
    let mut fx = Effects::default();
    let mut gone = Vec::new();
    // How long each heartbeat of this turn took from its decode to applied (`hodei stats`).
    let mut heartbeats: Vec<Duration> = Vec::new();
    // Workers welcomed since the last commit started, with the identity each belongs to:
    // stored with the batch that welcomes them, so a restart does not forget who owns them.
    let mut welcomed: Vec<(WorkerId, String)> = Vec::new();
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
    // With `--commit-interval`, a batch waits until then to start its commit, so that under
    // sustained load there are fewer, larger commits.
    let stored = store.clone();
    let health = stored.health();
    let mut committer: Committer<Effects> = Committer::new(store, commit_interval);
    // While a batch is held (the store was full): why, and when it is written again.
    let mut held_why: Option<String> = None;
    let mut retry_at = tokio::time::Instant::now();
    // Reads in progress here (this shard's clients', and other shards' forwarded to it):
    // while a batch is held their answers leave at once.
    let mut reads: HashSet<ReqId> = HashSet::new();
    // Held batches written again since shutdown began: once is enough to try.
    let mut shutdown_tries = 0u32;
    let mut running = true;
    // Why the shard stopped by itself, if it did.
    let mut failure: Option<anyhow::Error> = None;
    while running || committer.busy() || !pending.is_empty() {
        if !running && committer.held() && !committer.busy() {
            if shutdown_tries > 0 {
                error!(
                    shard = index,
                    "stopping with writes the full store could not take (none was acknowledged)"
                );
                break;
            }
            shutdown_tries += 1;
            committer.retry();
        }
        let sleep_until = shard.poll_timeout().map(|t| {
            let delta = t.saturating_sub(wall_now());
            tokio::time::Instant::now() + Duration::from_micros(delta)
        });
        // A batch held back by the interval (below) is committed when it is over, even if
        // no input comes.
        let commit_at = (running && !committer.busy() && !committer.held() && !pending.is_empty())
            .then(|| {
                if has_writes(&pending, &audit, &welcomed) {
                    committer.next_start()
                } else {
                    tokio::time::Instant::now()
                }
            });
        let mut inputs: Vec<Input> = Vec::new();
        let mut committed = None;
        let mut retry = false;
        tokio::select! {
            i = rx.recv(), if running => inputs.extend(i),
            () = async {
                match sleep_until {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            }, if running => {}
            r = committer.finished() => committed = Some(r),
            // A held batch is written again now and then, until the store takes it.
            () = tokio::time::sleep_until(retry_at), if running && committer.held() && !committer.busy() => {
                retry = true;
            }
            // Shutting down with nothing in flight: commit what is left (below).
            () = std::future::ready(()), if !running && !committer.busy() => {}
            () = async {
                match commit_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
        if retry {
            committer.retry();
        }
        if let Some(r) = committed {
            let done = match r {
                Ok(Outcome::Committed(done)) => Some(done),
                Ok(Outcome::Held(why)) => {
                    if held_why.is_none() {
                        warn!(
                            shard = index,
                            "{why}: this shard's batch is held and written again every {} ms",
                            full::RETRY.as_millis()
                        );
                    }
                    held_why = Some(why);
                    retry_at = tokio::time::Instant::now() + full::RETRY;
                    None
                }
                Err(e) => {
                    error!(
                        shard = index,
                        "{e:#}; stopping the shard: nothing of this batch was acknowledged"
                    );
                    running = false;
                    pending = Effects::default();
                    // The thread's result says so: the server then exits non-zero and does
                    // not mark the store as cleanly stopped.
                    failure.get_or_insert(e.context(format!("shard {index} stopped")));
                    continue;
                }
            };
            if let Some(done) = done {
                if held_why.take().is_some() {
                    info!(shard = index, "the held batch is on disk: writes go on");
                }
                // Everything the batch answers waited for this: a slow disk shows here first.
                control.stats.commit(done.took);
                if done.took >= SLOW_COMMIT {
                    warn!(
                        shard = index,
                        ms = done.took.as_millis(),
                        ops = done.batch.ops.len(),
                        audit = done.batch.audit.len(),
                        "slow store commit"
                    );
                }
                for op in &done.batch.ops {
                    if let StoreOp::PutEvent(e) = op {
                        log_event(e);
                    }
                }
                full::forget_answered(&mut reads, &done.msgs);
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
                    reads.remove(&req);
                    shard.handle_client_gone(req, &mut fx);
                }
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
                Input::AgentOpen(open) => {
                    writers.insert(open.conn, open.writer.clone());
                    agents.insert(open.conn, Rc::from(open.actor.as_str()));
                    continue;
                }
                Input::Agent(AgentMsg { conn, .. }) | Input::AgentClosed(conn) => agents
                    .get(conn)
                    .map_or_else(|| Rc::from("agent"), Rc::clone),
                Input::Client(c) => {
                    // A write the store cannot take now is refused at once, naming why,
                    // rather than left waiting behind a held batch.
                    if let Some(no) = full::refusal(&c.body, health, held_why.as_deref()) {
                        let _ = c.reply.send(no, true);
                        continue;
                    }
                    if full::is_read(&c.body) {
                        reads.insert(c.req);
                    }
                    audit.call(now / 1000, &c.actor, &c.body);
                    Rc::from(c.actor.as_str())
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
                Input::Footprint(ask) => {
                    // Visits every job (waiters and followers): only when `hodei stats` asks.
                    let _ = ask.reply.send(ShardFootprint {
                        shard: index,
                        shards: peers.len(),
                        held: shard.footprint(),
                        reply_queues: clients.len(),
                        agent_connections: writers.len(),
                    });
                    if ask.fan_out {
                        for (i, p) in peers.iter().enumerate().filter(|(i, _)| *i != index) {
                            let ask = FootprintAsk {
                                reply: ask.reply.clone(),
                                fan_out: false,
                            };
                            if p.send(Input::Footprint(ask)).is_err() {
                                warn!(shard = index, peer = i, "a shard is gone: no footprint");
                            }
                        }
                    }
                    continue;
                }
                Input::Shard(_) | Input::ClientGone(_) | Input::Shutdown => {
                    Rc::clone(&server_actor)
                }
            };
            match input {
                Input::AgentOpen(..) | Input::Revoke(_) | Input::Footprint(_) => {}
                Input::Agent(AgentMsg { conn, msg, decoded }) => {
                    let heartbeat = matches!(msg, FromAgent::Heartbeat { .. });
                    let sent = fx.agent.len();
                    shard.handle_agent(now, conn, msg, &mut fx);
                    if heartbeat {
                        heartbeats.push(decoded.elapsed());
                    } else {
                        note_welcomes(&fx, sent, &agents, &mut welcomed);
                    }
                }
                Input::AgentClosed(conn) => {
                    writers.remove(&conn);
                    agents.remove(&conn);
                    shard.handle_agent_closed(now, conn, &mut fx);
                }
                Input::Client(ClientRequest {
                    req, body, reply, ..
                }) => {
                    clients.insert(req, reply);
                    let read = match &body {
                        JobRequest::GetJob { job } => Some(*job),
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
                            .chain(committer.unwritten());
                        if !writes_to(unwritten, job) {
                            let now_fx = Effects {
                                reply: fx.reply.split_off(mark),
                                ..Effects::default()
                            };
                            full::forget_answered(&mut reads, &now_fx);
                            release(now_fx, &writers, &mut clients, &peers, &mut gone, &control);
                        }
                    }
                }
                Input::Shard(msgs) => {
                    for m in msgs {
                        if let ShardMsg::Request { req, body, .. } = &m
                            && full::is_read(body)
                        {
                            reads.insert(*req);
                        }
                        shard.handle_shard(now, m, &mut fx);
                    }
                }
                Input::ClientGone(req) => {
                    clients.remove(&req);
                    shard.handle_client_gone(req, &mut fx);
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
        if held_why.is_some() {
            // Answers to reads leave now: the oldest (in the held batch) first.
            let mut early = committer
                .waiting_msgs()
                .map(|m| full::take_reads(m, &reads))
                .unwrap_or_default();
            early.append(&mut full::take_reads(&mut pending, &reads));
            full::forget_answered(&mut reads, &early);
            release(early, &writers, &mut clients, &peers, &mut gone, &control);
        }
        // Nothing starts while a batch is in flight or held (batches commit in order).
        if committer.busy() || committer.held() || pending.is_empty() {
            continue;
        }
        if !has_writes(&pending, &audit, &welcomed) {
            // Nothing to write and nothing in flight: all it depends on is already durable.
            let msgs = std::mem::take(&mut pending);
            full::forget_answered(&mut reads, &msgs);
            release(msgs, &writers, &mut clients, &peers, &mut gone, &control);
            for req in gone.drain(..) {
                clients.remove(&req);
                reads.remove(&req);
                shard.handle_client_gone(req, &mut pending);
            }
            continue;
        }
        if running && tokio::time::Instant::now() < committer.next_start() {
            // Too soon after the last commit started: `commit_at` wakes the loop for it.
            continue;
        }
        let mut msgs = std::mem::take(&mut pending);
        let batch = Batch {
            ops: std::mem::take(&mut msgs.persists),
            audit: std::mem::take(&mut audit.pending),
            workers: std::mem::take(&mut welcomed),
        };
        if let Err((batch, msgs)) = committer.start(batch, msgs) {
            // Not reached (checked above); were it, the batch goes back to wait its turn
            // rather than be lost.
            error!(
                shard = index,
                "a batch was started while another was in flight"
            );
            let mut msgs = msgs;
            msgs.persists = batch.ops;
            msgs.append(&mut pending);
            pending = msgs;
            audit.pending.splice(0..0, batch.audit);
            welcomed.splice(0..0, batch.workers);
        }
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
    failure.map_or(Ok(()), Err)
}
