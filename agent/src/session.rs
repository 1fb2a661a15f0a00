//! The agent's connection loop: connect (following redirects to the shard that owns this
//! worker), register, run what the server assigns, report, and when the connection goes
//! away keep the jobs running, reconnect with exponential backoff and jitter, and re-attach.
//!
//! What survives a disconnect: every attempt the agent holds, running or finished but not
//! yet acknowledged, with its output in the on-disk spool. On reconnect they are listed in
//! the Hello; the server answers `Resume { output_end }` (resend the spool from there, then
//! the result), `Abandon` (stale attempt: kill and forget) or `FinishedAck` (already final).

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hodei_core::ids::{Attempt, JobId, WorkerId};
use hodei_core::job::Outcome;
use hodei_core::time::Micros;
use hodei_core::wire::{ALPN_AGENT, Chunk, FromAgent, HeldJob, Hello, Resources, ToAgent};
use hodei_transport::{FrameReader, FrameWriter, TransportOptions};
use rand::Rng;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::AgentArgs;
use crate::runner::{self, RunEvent, RunEventKind, RunHandle, RunnerOptions};

/// An attempt this agent holds.
struct Held {
    attempt: Attempt,
    cpus: u32,
    memory: u64,
    handle: RunHandle,
    /// Output bytes the server has been sent on the current connection (or acknowledged).
    sent_end: u64,
    /// Output bytes produced so far (all in the spool).
    produced: u64,
    /// Set once the process ended; kept until the server acknowledges it.
    finished: Option<(Outcome, Micros)>,
    started_at: Option<Micros>,
    /// Held across a reconnect: live output waits for the server's `Resume`.
    resuming: bool,
}

struct Agent {
    opts: Arc<RunnerOptions>,
    resources: Resources,
    hostname: String,
    worker: Option<WorkerId>,
    jobs: HashMap<JobId, Held>,
    events_tx: mpsc::Sender<RunEvent>,
}

/// Why a session ended.
enum End {
    Lost(String),
    Redirect(u16),
    Shutdown,
}

pub async fn run(args: AgentArgs) -> Result<()> {
    let server: SocketAddr = args
        .server
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve server address {:?}", args.server))?
        .next()
        .with_context(|| format!("server address {:?} resolves to nothing", args.server))?;
    // Notice a dead server within about three heartbeats (keep-alives are acknowledged by a
    // live server), well inside the server's re-attach grace.
    let transport = TransportOptions {
        idle_timeout: Duration::from_secs(3),
        keep_alive: Duration::from_millis(500),
        ..TransportOptions::default()
    };
    let client_cfg = hodei_transport::client_config(&args.ca, ALPN_AGENT, &transport)
        .with_context(|| format!("cannot use CA file {}", args.ca.display()))?;
    let endpoint = hodei_transport::client_endpoint(server, client_cfg)?;
    std::fs::create_dir_all(&args.work_dir)
        .with_context(|| format!("cannot create work dir {}", args.work_dir.display()))?;
    let work_root = std::fs::canonicalize(&args.work_dir).unwrap_or_else(|_| args.work_dir.clone());
    let (cpus, memory) = crate::resources::detect();
    let slots = args.slots.unwrap_or(cpus).max(1);
    let opts = Arc::new(RunnerOptions {
        noop: args.noop,
        work_root,
        ..RunnerOptions::default()
    });
    // Bounded: when the server is slow, runners stop reading their pipes (backpressure).
    let (events_tx, mut events_rx) = mpsc::channel(256);
    let mut agent = Agent {
        opts,
        resources: Resources {
            slots,
            cpus,
            memory,
            labels: args.labels.clone(),
        },
        hostname: crate::resources::hostname(),
        worker: None,
        jobs: HashMap::new(),
        events_tx,
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut backoff = Backoff::new();
    let mut target = server;
    info!(%server, slots, cpus, "hodei agent starting");
    loop {
        let attempt = tokio::select! {
            r = hodei_transport::connect(&endpoint, target) => r,
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        let end = match attempt {
            Ok(conn) => {
                agent
                    .session(&conn, &mut events_rx, &mut term, &mut int, &mut backoff)
                    .await
            }
            Err(e) => End::Lost(e.to_string()),
        };
        match end {
            End::Shutdown => break,
            End::Redirect(port) => {
                target = SocketAddr::new(server.ip(), port);
                continue;
            }
            End::Lost(why) => {
                target = server;
                let wait = backoff.next();
                warn!(
                    "disconnected ({why}); {} job(s) kept; reconnecting in {wait:?}",
                    agent.jobs.len()
                );
                // Keep consuming runner events while waiting: output is spooled on disk.
                let sleep = tokio::time::sleep(wait);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        () = &mut sleep => break,
                        Some(ev) = events_rx.recv() => agent.record(ev),
                        _ = term.recv() => return agent.shutdown(&mut events_rx).await,
                        _ = int.recv() => return agent.shutdown(&mut events_rx).await,
                    }
                }
            }
        }
    }
    agent.shutdown(&mut events_rx).await
}

impl Agent {
    async fn session(
        &mut self,
        conn: &quinn::Connection,
        events_rx: &mut mpsc::Receiver<RunEvent>,
        term: &mut tokio::signal::unix::Signal,
        int: &mut tokio::signal::unix::Signal,
        backoff: &mut Backoff,
    ) -> End {
        let (send, recv) = match conn.open_bi().await {
            Ok(s) => s,
            Err(e) => return End::Lost(e.to_string()),
        };
        let mut w = FrameWriter::new(send);
        let mut r = FrameReader::new(recv);
        let held = self
            .jobs
            .iter()
            .map(|(job, h)| HeldJob {
                job: *job,
                attempt: h.attempt,
                cpus: h.cpus,
                memory: h.memory,
            })
            .collect();
        for h in self.jobs.values_mut() {
            h.resuming = true;
            h.sent_end = 0;
        }
        let hello = Hello {
            worker: self.worker,
            hostname: self.hostname.clone(),
            resources: self.resources.clone(),
            held,
        };
        if let Err(e) = w.send(&FromAgent::Hello(hello)).await {
            return End::Lost(e.to_string());
        }
        let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
        loop {
            let step = tokio::select! {
                msg = r.next::<ToAgent>() => match msg {
                    Ok(Some(m)) => self.on_server(m, &mut w, &mut heartbeat, backoff).await,
                    Ok(None) => Err(End::Lost("server closed the stream".into())),
                    Err(e) => Err(End::Lost(e.to_string())),
                },
                Some(ev) = events_rx.recv() => self.on_event(ev, &mut w).await,
                _ = heartbeat.tick() => {
                    #[allow(clippy::cast_possible_truncation)]
                    let running = self.jobs.values().filter(|h| h.finished.is_none()).count() as u32;
                    let load = crate::resources::load();
                    w.send(&FromAgent::Heartbeat { running, load }).await.map_err(|e| End::Lost(e.to_string()))
                }
                _ = term.recv() => Err(End::Shutdown),
                _ = int.recv() => Err(End::Shutdown),
            };
            if let Err(end) = step {
                if matches!(end, End::Shutdown) {
                    let _ = w.finish();
                    conn.close(0u32.into(), b"agent shutting down");
                }
                return end;
            }
        }
    }

    async fn on_server(
        &mut self,
        msg: ToAgent,
        w: &mut FrameWriter,
        heartbeat: &mut tokio::time::Interval,
        backoff: &mut Backoff,
    ) -> Result<(), End> {
        let lost = |e: hodei_transport::TransportError| End::Lost(e.to_string());
        match msg {
            ToAgent::Welcome {
                worker,
                heartbeat_ms,
            } => {
                if self.worker != Some(worker) {
                    info!(%worker, "registered");
                }
                self.worker = Some(worker);
                backoff.reset();
                *heartbeat = tokio::time::interval(Duration::from_millis(heartbeat_ms.max(50)));
            }
            ToAgent::Redirect { port } => return Err(End::Redirect(port)),
            ToAgent::Refused { reason } => {
                warn!("server refused registration: {reason}");
                // A stale id (e.g. the server's data dir was wiped): register afresh.
                self.worker = None;
                return Err(End::Lost(reason));
            }
            ToAgent::Assign { job, attempt, spec } => {
                if let Some(old) = self.jobs.get(&job) {
                    if old.attempt >= attempt {
                        return Ok(()); // duplicate
                    }
                    old.handle.cancel();
                }
                let (cpus, memory) = (spec.cpus, spec.memory);
                let handle = runner::spawn_job(
                    job,
                    attempt,
                    spec,
                    Arc::clone(&self.opts),
                    self.events_tx.clone(),
                );
                self.jobs.insert(
                    job,
                    Held {
                        attempt,
                        cpus,
                        memory,
                        handle,
                        sent_end: 0,
                        produced: 0,
                        finished: None,
                        started_at: None,
                        resuming: false,
                    },
                );
            }
            ToAgent::Cancel { job, attempt } => {
                if let Some(h) = self.jobs.get(&job).filter(|h| h.attempt == attempt) {
                    h.handle.cancel();
                }
            }
            ToAgent::Abandon { job, attempt } | ToAgent::FinishedAck { job, attempt } => {
                if self.jobs.get(&job).is_some_and(|h| h.attempt == attempt)
                    && let Some(h) = self.jobs.remove(&job)
                {
                    h.handle.cancel(); // no-op if it already ended
                    runner::forget(&self.opts, job, attempt);
                }
            }
            ToAgent::Resume {
                job,
                attempt,
                output_end,
            } => {
                let Some(h) = self.jobs.get_mut(&job).filter(|h| h.attempt == attempt) else {
                    return Ok(());
                };
                h.resuming = false;
                h.sent_end = output_end;
                if let Some(at) = h.started_at {
                    w.push(&FromAgent::Started { job, attempt, at })
                        .map_err(lost)?;
                }
                let chunks = match runner::read_spool(&self.opts, job, attempt, output_end) {
                    Ok(c) => c,
                    Err(e) => {
                        warn!(%job, "cannot read the spool to resume output: {e}");
                        Vec::new()
                    }
                };
                let Some(h) = self.jobs.get_mut(&job) else {
                    return Ok(());
                };
                let mut offset = output_end;
                for batch in split(chunks, self.opts.batch_bytes) {
                    let len: u64 = batch.iter().map(|c| c.data.len() as u64).sum();
                    w.push(&FromAgent::Output {
                        job,
                        attempt,
                        offset,
                        chunks: batch,
                    })
                    .map_err(lost)?;
                    offset += len;
                }
                h.sent_end = offset;
                if let Some((outcome, at)) = h.finished.clone() {
                    w.push(&FromAgent::Finished {
                        job,
                        attempt,
                        outcome,
                        at,
                    })
                    .map_err(lost)?;
                }
                w.flush().await.map_err(lost)?;
            }
            ToAgent::OutputAck { .. } => {}
        }
        Ok(())
    }

    /// Notes a runner event without sending it (while disconnected).
    fn record(&mut self, ev: RunEvent) {
        let Some(h) = self
            .jobs
            .get_mut(&ev.job)
            .filter(|h| h.attempt == ev.attempt)
        else {
            return;
        };
        match ev.kind {
            RunEventKind::Started { at } => h.started_at = Some(at),
            RunEventKind::Output { offset, chunks } => {
                h.produced = h
                    .produced
                    .max(offset + chunks.iter().map(|c| c.data.len() as u64).sum::<u64>());
            }
            RunEventKind::Finished { outcome, at } => h.finished = Some((outcome, at)),
        }
    }

    /// Records a runner event and forwards it, trimming output the server already has.
    async fn on_event(&mut self, ev: RunEvent, w: &mut FrameWriter) -> Result<(), End> {
        let (job, attempt) = (ev.job, ev.attempt);
        let msg = match &ev.kind {
            RunEventKind::Started { at } => Some(FromAgent::Started {
                job,
                attempt,
                at: *at,
            }),
            RunEventKind::Output { offset, chunks } => {
                let sent = self
                    .jobs
                    .get(&job)
                    .filter(|h| h.attempt == attempt)
                    .map(|h| (h.sent_end, h.resuming));
                match sent {
                    Some((sent_end, false)) => {
                        let trimmed = trim(chunks.clone(), *offset, sent_end);
                        let start = offset.max(&sent_end);
                        (!trimmed.is_empty()).then_some(FromAgent::Output {
                            job,
                            attempt,
                            offset: *start,
                            chunks: trimmed,
                        })
                    }
                    _ => None,
                }
            }
            RunEventKind::Finished { outcome, at } => Some(FromAgent::Finished {
                job,
                attempt,
                outcome: outcome.clone(),
                at: *at,
            }),
        };
        let resuming = self.jobs.get(&job).is_some_and(|h| h.resuming);
        self.record(ev);
        let Some(msg) = msg else { return Ok(()) };
        if resuming || self.jobs.get(&job).is_none_or(|h| h.attempt != attempt) {
            return Ok(());
        }
        if let FromAgent::Output { offset, chunks, .. } = &msg
            && let Some(h) = self.jobs.get_mut(&job)
        {
            h.sent_end = offset + chunks.iter().map(|c| c.data.len() as u64).sum::<u64>();
        }
        // Awaiting the write is the backpressure: a slow server stalls this loop, the bounded
        // event channel fills, and runners stop reading their pipes.
        w.send(&msg).await.map_err(|e| End::Lost(e.to_string()))
    }

    /// SIGTERM/SIGINT: kill running jobs (full drain semantics are a later issue), give
    /// their runners a moment to report, and exit.
    async fn shutdown(&mut self, events_rx: &mut mpsc::Receiver<RunEvent>) -> Result<()> {
        let running: Vec<_> = self
            .jobs
            .iter()
            .filter(|(_, h)| h.finished.is_none())
            .map(|(j, _)| *j)
            .collect();
        if !running.is_empty() {
            info!("stopping {} running job(s)", running.len());
        }
        for h in self.jobs.values() {
            h.handle.cancel();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.jobs.values().any(|h| h.finished.is_none()) {
            match tokio::time::timeout_at(deadline, events_rx.recv()).await {
                Ok(Some(ev)) => self.record(ev),
                _ => break,
            }
        }
        info!("agent stopped");
        Ok(())
    }
}

/// Drops the bytes of `chunks` (starting at `offset`) that lie before `from`.
fn trim(chunks: Vec<Chunk>, offset: u64, from: u64) -> Vec<Chunk> {
    let mut skip = from.saturating_sub(offset);
    let mut out = Vec::new();
    for mut c in chunks {
        let len = c.data.len() as u64;
        if skip >= len {
            skip -= len;
            continue;
        }
        if skip > 0 {
            #[allow(clippy::cast_possible_truncation)] // skip < len, a usize
            c.data.drain(..skip as usize);
            skip = 0;
        }
        out.push(c);
    }
    out
}

/// Splits chunks into batches of about `max` bytes.
fn split(chunks: Vec<Chunk>, max: usize) -> Vec<Vec<Chunk>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut size = 0;
    for c in chunks {
        size += c.data.len();
        cur.push(c);
        if size >= max {
            out.push(std::mem::take(&mut cur));
            size = 0;
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Exponential backoff with jitter: 100 ms doubling to 5 s, each wait ±50 %.
struct Backoff {
    next: Duration,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    const fn new() -> Self {
        Self { next: Self::MIN }
    }

    fn reset(&mut self) {
        self.next = Self::MIN;
    }

    fn next(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        base.mul_f64(rand::thread_rng().gen_range(0.5..1.5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hodei_core::wire::Stream;

    fn c(s: &str) -> Chunk {
        Chunk {
            stream: Stream::Stdout,
            data: s.as_bytes().to_vec(),
        }
    }

    #[test]
    fn trim_drops_what_the_server_has() {
        let out = trim(vec![c("abc"), c("def")], 10, 14);
        assert_eq!(out, vec![c("ef")]);
        assert_eq!(trim(vec![c("abc")], 10, 10), vec![c("abc")]);
        assert!(trim(vec![c("abc")], 10, 20).is_empty());
    }

    #[test]
    fn backoff_grows_and_caps() {
        let mut b = Backoff::new();
        let waits: Vec<Duration> = (0..10).map(|_| b.next()).collect();
        assert!(waits[0] <= Duration::from_millis(150));
        assert!(
            waits[9] >= Duration::from_millis(2_500) && waits[9] <= Duration::from_millis(7_500)
        );
    }
}
