//! The agent's connection loop: connect (following redirects to the shard that owns this
//! worker), register, run what the server assigns, report, and when the connection goes
//! away keep the jobs running, reconnect with exponential backoff and jitter, and re-attach.
//!
//! What survives a disconnect: every attempt the agent holds, running or finished but not
//! yet acknowledged, with its output in the on-disk spool. On reconnect they are listed in
//! the Hello; the server answers `Resume { output_end }` (resend the spool from there, then
//! the result), `Abandon` (stale attempt: kill and forget) or `FinishedAck` (already final).
//!
//! Two rules bound how long that lasts:
//!
//! - **Lease** ([`lease`]): cut off from the server for longer than the lease it granted in
//!   its `Welcome`, the agent kills and forgets every job still running, because the server
//!   is about to run them elsewhere. Finished results are kept and reported on reconnect.
//! - **Drain** ([`drain`]): on SIGTERM/SIGINT or the server's `Drain`, the agent takes no new
//!   job, lets running ones finish within the drain timeout, kills and reports the rest as
//!   `Drained`, waits briefly for the acknowledgements, says `Goodbye` and exits.
//!
//! At start, the secrets directories a crashed run left behind are removed
//! ([`crate::runner::clean_leftover_secrets`]).
//!
//! Files: [`online`] is the life of one connection, [`jobs`] the bookkeeping of the attempts
//! held, [`backoff`] and [`chunks`] small helpers.

mod backoff;
mod chunks;
mod drain;
pub mod identity;
mod jobs;
mod lease;
mod online;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hodei_core::ids::{Attempt, JobId, WorkerId};
use hodei_core::job::Outcome;
use hodei_core::time::Micros;
use hodei_core::wire::{ALPN_AGENT, Resources};
use hodei_transport::TransportOptions;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::AgentArgs;
use crate::runner::{RunEvent, RunHandle, RunnerOptions};
use backoff::Backoff;
use drain::Drain;

/// Capacity of the runner → session event channel. Bounded: when the server is slow, runners
/// stop reading their pipes (backpressure).
const EVENTS: usize = 256;

/// While leaving after a drain, retry a lost connection at least this often: the time left
/// to report is short ([`drain::LEAVE_GRACE`]).
const LEAVE_RETRY: Duration = Duration::from_millis(500);

/// An attempt this agent holds.
struct Held {
    attempt: Attempt,
    cpus: u32,
    memory: u64,
    /// The job's correlation id, carried in every log line about it.
    cid: String,
    /// `None` for an assignment refused while draining: nothing was spawned.
    handle: Option<RunHandle>,
    /// Output bytes the server has been sent on the current connection (or acknowledged).
    sent_end: u64,
    /// Output bytes produced so far (all in the spool).
    produced: u64,
    /// Set once the attempt ended; kept until the server acknowledges it.
    finished: Option<(Outcome, Micros)>,
    /// The runner sent its `Finished` (unlike a result the drain had to make up).
    runner_done: bool,
    started_at: Option<Micros>,
    /// Held across a reconnect: live output waits for the server's `Resume`.
    resuming: bool,
    /// The server asked to cancel it: a kill ends it `Cancelled` even during a drain.
    cancel_requested: bool,
    /// The drain killed it: the runner's `Cancelled` is reported as `Drained`.
    drained: bool,
    /// A script job: its runner writes a script file.
    script: bool,
}

struct Agent {
    opts: Arc<RunnerOptions>,
    resources: Resources,
    hostname: String,
    worker: Option<WorkerId>,
    jobs: HashMap<JobId, Held>,
    events_tx: mpsc::Sender<RunEvent>,
    /// Attempts killed and forgotten whose runner has not ended yet. A dying job may still
    /// print, and its spool would come back; it is removed again when the runner ends.
    fenced: HashSet<(JobId, Attempt)>,
    /// The server's `Welcome` arrived on the current connection.
    welcomed: bool,
    /// When it arrived (for the backoff: how long the connection stayed up).
    welcomed_at: Option<Instant>,
    /// The lease and when the server was last heard ([`lease`]); shared with the watch over
    /// the current connection.
    clock: Rc<lease::Clock>,
    /// `--drain-timeout`, for a drain started by a signal.
    drain_timeout: Duration,
    drain: Option<Drain>,
    /// The certificate connections present.
    identity: identity::Identity,
    /// Where it is stored.
    identity_dir: std::path::PathBuf,
    /// The certificate's renewal: when, and the key of one under way.
    renewal: identity::Renewal,
    /// Renewed: the next connection needs a new TLS config.
    identity_changed: bool,
}

/// Why a session ended.
enum End {
    Lost(String),
    Redirect(u16),
    /// Drained and said goodbye.
    Left,
    /// Drained, but the time to report and say goodbye ran out.
    GaveUp,
}

/// SIGTERM and SIGINT, which both mean "drain".
struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn new() -> Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
        })
    }

    /// Waits for either signal.
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

pub async fn run(args: AgentArgs, guard: Option<Arc<crate::runner::Guard>>) -> Result<()> {
    let server: SocketAddr = args
        .server
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve server address {:?}", args.server))?
        .next()
        .with_context(|| format!("server address {:?} resolves to nothing", args.server))?;
    // Notice a dead server within about three heartbeats (keep-alives are acknowledged by a
    // live server), well inside the server's re-attach grace. The lease does not wait for
    // this: it counts from the last packet heard (`lease.rs`).
    let transport = |ack_delay: Duration| TransportOptions {
        idle_timeout: Duration::from_secs(3),
        // Heartbeats (1 s) already keep the connection busy; a shorter keep-alive would add a
        // PING and its ACK between every two heartbeats (measured: twice the packets).
        keep_alive: Duration::from_secs(2),
        // The server need not ACK each heartbeat at once (messages are not delayed), but
        // must answer often enough for the lease (`lease::ack_delay`).
        peer_ack_delay: Some(ack_delay),
        ..TransportOptions::default()
    };
    std::fs::create_dir_all(&args.work_dir)
        .with_context(|| format!("cannot create work dir {}", args.work_dir.display()))?;
    // mTLS only: the certificate from an earlier join, or a join now with --join.
    let identity = identity::ensure(&args.work_dir, server, &args.ca, args.join.as_deref()).await?;
    let agent_cfg = |id: &identity::Identity, ack_delay: Duration| {
        hodei_transport::client_config_with(
            &args.ca,
            ALPN_AGENT,
            &transport(ack_delay),
            Some(&id.client_identity()),
        )
        .with_context(|| {
            format!(
                "cannot use CA file {} or the agent identity",
                args.ca.display()
            )
        })
    };
    // Planned for the shortest lease until a server grants one.
    let mut ack_delay = lease::ack_delay(lease::MIN_LEASE);
    let mut endpoint = hodei_transport::client_endpoint(server, agent_cfg(&identity, ack_delay)?)?;
    let work_root = std::fs::canonicalize(&args.work_dir).unwrap_or_else(|_| args.work_dir.clone());
    let (cpus, memory) = crate::resources::detect();
    let slots = args.slots.unwrap_or(cpus).max(1);
    let opts = Arc::new(RunnerOptions {
        // With prefetch the server may assign more than `slots`: the extra ones wait here.
        slots: (args.prefetch > 0).then(|| Arc::new(Semaphore::new(slots as usize))),
        noop: args.noop,
        work_root,
        batch_bytes: args.output_batch_bytes,
        batch_interval: args.output_batch_interval,
        output_window: args.output_window,
        guard,
        ..RunnerOptions::default()
    });
    // A crashed agent left its jobs' secrets directories and run directories behind; no job
    // of ours runs yet.
    opts.workdirs.clean_leftovers(&opts.work_root.join("jobs"));
    tokio::task::spawn_local(sweep_workdirs(
        opts.work_root.join("jobs"),
        args.keep_workdirs,
    ));
    let stale = crate::runner::clean_leftover_secrets(&opts);
    if stale > 0 {
        info!(stale, "removed secrets directories left by an earlier run");
    }
    let (events_tx, mut events_rx) = mpsc::channel(EVENTS);
    let renewal = identity::Renewal::new(&identity);
    info!(
        expires_at_ms = identity.expires_at_ms,
        renew_at_ms = renewal.next_at_ms(),
        "agent certificate loaded"
    );
    let mut agent = Agent {
        opts,
        resources: Resources {
            slots: slots.saturating_add(args.prefetch),
            cpus,
            memory,
            labels: args.labels.clone(),
        },
        hostname: crate::resources::hostname(),
        worker: None,
        jobs: HashMap::new(),
        events_tx,
        fenced: HashSet::new(),
        welcomed: false,
        welcomed_at: None,
        clock: Rc::new(lease::Clock::default()),
        drain_timeout: args.drain_timeout,
        drain: None,
        identity,
        identity_dir: args.work_dir.clone(),
        renewal,
        identity_changed: false,
    };
    let mut signals = Signals::new()?;
    let mut backoff = Backoff::new();
    let mut target = server;
    let mut wait = Duration::ZERO;
    info!(%server, slots, prefetch = args.prefetch, cpus, "hodei agent starting");
    // Every way out of this loop is the end of a drain, when no job runs any more.
    loop {
        let pause = if agent.leaving() {
            wait.min(LEAVE_RETRY)
        } else {
            wait
        };
        let io = (&mut events_rx, &mut signals);
        if agent.offline(tokio::time::sleep(pause), io).await.is_none() {
            break;
        }
        let wanted = lease::ack_delay(agent.clock.planned());
        if agent.identity_changed || wanted != ack_delay {
            endpoint.set_default_client_config(agent_cfg(&agent.identity, wanted)?);
            agent.identity_changed = false;
            ack_delay = wanted;
        }
        let io = (&mut events_rx, &mut signals);
        let Some(connected) = agent
            .offline(hodei_transport::connect(&endpoint, target), io)
            .await
        else {
            break;
        };
        let end = match connected {
            Ok(conn) => {
                // The watch races the whole session: no await of the session can delay it.
                let clock = Rc::clone(&agent.clock);
                let ended = tokio::select! {
                    end = agent.session(&conn, &mut events_rx, &mut signals) => Some(end),
                    () = lease::watch(&conn, &clock) => None,
                };
                match ended {
                    Some(end) => end,
                    None => {
                        agent.expire_lease(&mut events_rx).await;
                        conn.close(0u32.into(), b"lease expired");
                        End::Lost(format!(
                            "nothing heard from the server for longer than the lease ({:?})",
                            agent.clock.lease()
                        ))
                    }
                }
            }
            Err(e) => End::Lost(e.to_string()),
        };
        let welcomed_for = agent
            .welcomed_at
            .map(|t| Instant::now().saturating_duration_since(t));
        let resumed = !agent.jobs.values().any(|h| h.resuming);
        agent.connection_ended();
        match end {
            End::Left | End::GaveUp => break,
            End::Redirect(port) => {
                target = SocketAddr::new(server.ip(), port);
                wait = Duration::ZERO;
            }
            End::Lost(why) => {
                target = server;
                wait = backoff.lost(welcomed_for, resumed);
                warn!(
                    "disconnected ({why}); {} job(s) kept; reconnecting in {wait:?}",
                    agent.jobs.len()
                );
            }
        }
    }
    for (job, h) in &agent.jobs {
        warn!(job = %job, cid = %h.cid, "leaving without the server's acknowledgement of this job's result");
    }
    // Give the connection's close a moment to reach the server (it may be gone: bounded).
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    info!("agent stopped");
    Ok(())
}

impl Agent {
    /// Runs `fut` (a backoff pause, a connection attempt) while disconnected: keeps recording
    /// runner events (output is spooled on disk), enforces the lease and the drain, and
    /// answers signals. `None`: the agent is done (a drain ended and the time to report ran
    /// out, or there is nobody to report to).
    async fn offline<F: Future>(
        &mut self,
        fut: F,
        (events_rx, signals): (&mut mpsc::Receiver<RunEvent>, &mut Signals),
    ) -> Option<F::Output> {
        tokio::pin!(fut);
        loop {
            let now = Instant::now();
            if self.lease_expired(now) {
                self.expire_lease(events_rx).await;
            }
            self.sync_lease();
            // Offline, made-up results cannot be sent: they go out after the next Resume.
            let (_, drain_wake) = self.drain_tick(now);
            let leave_until = self.drain.as_ref().and_then(Drain::leave_until);
            if let Some(until) = leave_until {
                // Not registered and nothing held: nobody to report to or say goodbye to.
                if (self.worker.is_none() && self.jobs.is_empty()) || now >= until {
                    if !self.jobs.is_empty() || self.worker.is_some() {
                        warn!("drained, but the server could not be reached in time");
                    }
                    return None;
                }
            }
            let wake = earliest(earliest(drain_wake, leave_until), self.lease_wake());
            tokio::select! {
                out = &mut fut => return Some(out),
                Some(ev) = events_rx.recv() => {
                    let _ = self.record(ev);
                }
                () = signals.recv() => self.on_signal(Instant::now()),
                () = sleep_until(wake) => {}
            }
        }
    }

    /// A connection ended (or failed before its `Welcome`): the lease runs on from the last
    /// packet the server was heard on a welcomed connection.
    fn connection_ended(&mut self) {
        self.welcomed = false;
        self.welcomed_at = None;
        self.clock.connection_ended();
    }

    /// A drain is on and no job runs any more: only reporting and leaving remain.
    fn leaving(&self) -> bool {
        self.drain.as_ref().is_some_and(Drain::leaving)
    }
}

/// Removes kept working directories older than `keep`, now and then every quarter of it
/// (between 100 ms and an hour), on the blocking pool: a large tree takes a while to delete.
async fn sweep_workdirs(jobs: std::path::PathBuf, keep: Duration) {
    let every = (keep / 4).clamp(Duration::from_millis(100), Duration::from_secs(3600));
    loop {
        let dir = jobs.clone();
        let swept = tokio::task::spawn_blocking(move || {
            crate::runner::sweep_kept(&dir, keep, std::time::SystemTime::now())
        })
        .await;
        if let Ok(n) = swept
            && n > 0
        {
            info!(removed = n, ?keep, "removed kept working directories");
        }
        tokio::time::sleep(every).await;
    }
}

/// The earlier of two optional instants.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `d` in whole milliseconds, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `now + d`, or a year from now when that overflows (`--drain-timeout 1000years`).
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_ignores_none() {
        let t = Instant::now();
        let u = t + Duration::from_secs(1);
        assert_eq!(earliest(None, None), None);
        assert_eq!(earliest(Some(u), None), Some(u));
        assert_eq!(earliest(None, Some(t)), Some(t));
        assert_eq!(earliest(Some(u), Some(t)), Some(t));
    }

    #[test]
    fn huge_durations_do_not_overflow() {
        let now = Instant::now();
        assert!(later(now, Duration::MAX) > now);
        assert_eq!(millis(Duration::MAX), u64::MAX);
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
    }
}
