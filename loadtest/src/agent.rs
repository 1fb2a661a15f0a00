//! One simulated agent: the real agent's protocol (`agent/src/session/online.rs`) without
//! processes. Connect (ALPN `hodei-agent/1`), open one bidi stream, `Hello` with no held
//! jobs, read `Welcome` (follow a `Redirect` to the same IP), then heartbeat at the fleet's
//! interval and answer `Assign` per `--job`. `Cancel` ends a sleeping job `Cancelled`,
//! `Abandon` forgets it, `Drain` refuses new work, lets sleeping jobs finish within the
//! grace, and says `Goodbye`. A lost connection is re-established with backoff under the
//! same worker id (its jobs are forgotten, as after a lease expiry). At the stop the agent
//! reports what still runs as `Drained`, says `Goodbye` and closes.

use std::cell::Cell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use hodei_core::ids::{Attempt, JobId, WorkerId};
use hodei_core::job::Outcome;
use hodei_core::time::wall_now;
use hodei_core::wire::{FromAgent, Hello, Resources, ToAgent};
use hodei_transport::{FrameReader, FrameWriter};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::args::JobMode;
use crate::fleet::{Ctx, Phase, stopped};
use crate::stats::{Stamp, ThreadStats, bump};

/// How long the `Goodbye` gets to reach the server at the stop.
const GOODBYE_WAIT: Duration = Duration::from_secs(1);

/// Why a connection ended.
enum End {
    /// The run is over (or the phase channel is gone).
    Stopped,
    /// The server drained this agent and it said goodbye: it leaves for good.
    Drained,
    /// Reconnect to this port on the server's IP, at once.
    Redirect(u16),
    /// Reconnect after a backoff.
    Lost(String),
}

/// A simulated agent and its place in the fleet.
pub struct Agent {
    pub idx: usize,
    pub ctx: Rc<Ctx>,
    pub ep: quinn::Endpoint,
    /// The shard this endpoint's socket lands on, learnt from the first `Welcome`.
    pub shard: Rc<Cell<Option<u8>>>,
    pub phase: watch::Receiver<Phase>,
    /// When its first connection attempt is due (ramp).
    pub start_at: Instant,
    worker: Option<WorkerId>,
    /// Counted as connected (first `Welcome` seen).
    counted: bool,
}

/// Jobs of one connection.
#[derive(Default)]
struct Jobs {
    /// Sleeping jobs: when they finish.
    running: Vec<(Instant, JobId, Attempt)>,
    /// Reported `Finished`, waiting for `FinishedAck`.
    reported: HashMap<JobId, Attempt>,
    /// The server asked for a drain: the deadline of the running jobs.
    drain_until: Option<Instant>,
}

impl Agent {
    pub fn new(
        idx: usize,
        ctx: Rc<Ctx>,
        ep: quinn::Endpoint,
        shard: Rc<Cell<Option<u8>>>,
        phase: watch::Receiver<Phase>,
        start_at: Instant,
    ) -> Self {
        Self {
            idx,
            ctx,
            ep,
            shard,
            phase,
            start_at,
            worker: None,
            counted: false,
        }
    }

    fn stats(&self) -> &ThreadStats {
        &self.ctx.stats
    }

    /// Sleeps until `at`; false if the run stopped first.
    async fn sleep_until(&mut self, at: Instant) -> bool {
        tokio::select! {
            () = tokio::time::sleep_until(at) => true,
            () = stopped(&mut self.phase) => false,
        }
    }

    /// The agent's whole life: connect, serve, reconnect, until the stop.
    pub async fn run(mut self) {
        if !self.sleep_until(self.start_at).await {
            return;
        }
        let server = self.ctx.cfg.server;
        let mut target = server;
        let mut failures = 0u32;
        loop {
            match self.connection(target).await {
                End::Stopped | End::Drained => return,
                End::Redirect(port) => {
                    bump(&self.stats().counters.redirects);
                    target = SocketAddr::new(server.ip(), port);
                }
                End::Lost(why) => {
                    self.stats().error(why);
                    failures = failures.saturating_add(1);
                    target = server;
                    let pause = backoff(failures, self.idx);
                    if !self.sleep_until(Instant::now() + pause).await {
                        return;
                    }
                }
            }
        }
    }

    /// One connection: handshake and registration (bounded by the fleet's handshake
    /// concurrency), then the session.
    async fn connection(&mut self, target: SocketAddr) -> End {
        let ctx = Rc::clone(&self.ctx);
        let c = &ctx.stats.counters;
        let mut phase = self.phase.clone();
        let permit = tokio::select! {
            p = ctx.handshakes.acquire() => p,
            () = stopped(&mut phase) => return End::Stopped,
        };
        let Ok(permit) = permit else {
            return End::Stopped;
        };
        bump(&c.connect_attempts);
        let registered = tokio::select! {
            r = tokio::time::timeout(ctx.cfg.handshake_timeout, self.register(target)) => r,
            () = stopped(&mut phase) => return End::Stopped,
        };
        drop(permit);
        let (conn, w, r) = match registered {
            Ok(Ok(Ok(parts))) => parts,
            Ok(Ok(Err(end))) => return end,
            Ok(Err(why)) => {
                bump(&c.connect_failures);
                return End::Lost(why);
            }
            Err(_) => {
                bump(&c.connect_failures);
                return End::Lost(format!(
                    "no Welcome within {:?} (handshake + registration)",
                    ctx.cfg.handshake_timeout
                ));
            }
        };
        bump(&c.live);
        let end = self.session(&conn, w, r).await;
        c.live.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if matches!(end, End::Lost(_)) {
            bump(&c.disconnects);
        }
        end
    }

    /// Connects and registers. `Err(why)`: a failed attempt; `Ok(Err(end))`: a redirect or
    /// refusal; `Ok(Ok(..))`: welcomed.
    #[allow(clippy::type_complexity)]
    async fn register(
        &mut self,
        target: SocketAddr,
    ) -> Result<Result<(quinn::Connection, FrameWriter, FrameReader), End>, String> {
        let conn = hodei_transport::connect(&self.ep, target)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| format!("open stream: {e}"))?;
        let mut w = FrameWriter::new(send);
        let mut r = FrameReader::new(recv);
        let slots = self.ctx.cfg.slots;
        let hello = Hello {
            worker: self.worker,
            hostname: format!("loadtest-{}", self.idx),
            resources: Resources {
                slots,
                cpus: slots,
                memory: u64::from(slots) << 30,
                labels: Vec::new(),
            },
            held: Vec::new(),
        };
        w.send(&FromAgent::Hello(hello))
            .await
            .map_err(|e| format!("send Hello: {e}"))?;
        match r.next::<ToAgent>().await {
            Ok(Some(ToAgent::Welcome {
                worker,
                heartbeat_ms,
                ..
            })) => {
                self.welcomed(worker, heartbeat_ms);
                Ok(Ok((conn, w, r)))
            }
            Ok(Some(ToAgent::Redirect { port })) => {
                conn.close(0u32.into(), b"redirected");
                Ok(Err(End::Redirect(port)))
            }
            Ok(Some(ToAgent::Refused { reason })) => {
                bump(&self.stats().counters.refused);
                // A stale id: register afresh next time, like the real agent.
                self.worker = None;
                conn.close(0u32.into(), b"refused");
                Ok(Err(End::Lost(format!("registration refused: {reason}"))))
            }
            Ok(Some(other)) => Err(format!("expected Welcome, got {}", kind(&other))),
            Ok(None) => Err("server closed the stream before Welcome".to_owned()),
            Err(e) => Err(format!("reading Welcome: {e}")),
        }
    }

    fn welcomed(&mut self, worker: WorkerId, heartbeat_ms: u64) {
        let st = std::sync::Arc::clone(&self.ctx.stats);
        let c = &st.counters;
        c.server_heartbeat_ms
            .fetch_max(heartbeat_ms, std::sync::atomic::Ordering::Relaxed);
        if !self.counted {
            self.counted = true;
            let now = Instant::now();
            bump(&c.connected);
            let since_t0 = now.saturating_duration_since(self.ctx.t0);
            c.last_welcome_us
                .fetch_max(micros(since_t0), std::sync::atomic::Ordering::Relaxed);
            let took = now.saturating_duration_since(self.start_at);
            ThreadStats::record(&st.connect_us, micros(took));
            st.shard_seen(worker.shard());
            if self.shard.get().is_none() {
                self.shard.set(Some(worker.shard()));
            }
        }
        self.worker = Some(worker);
    }

    /// Heartbeats and jobs until the stop, a drain's goodbye, a redirect or a loss.
    async fn session(
        &mut self,
        conn: &quinn::Connection,
        mut w: FrameWriter,
        mut r: FrameReader,
    ) -> End {
        let period = self.ctx.cfg.heartbeat;
        let first = Instant::now() + jitter(period, self.idx);
        let running = Rc::new(Cell::new(0u32));
        // Datagram heartbeats come from the thread's clock (`beats.rs`): a heartbeat then
        // wakes neither this loop nor its stream reader. On the stream, this loop sends them.
        let (mut hb, _beats) = match &self.ctx.beats {
            Some(beats) => {
                let guard = beats.add(first, conn.clone(), Rc::clone(&running));
                (None, Some(guard))
            }
            None => {
                let mut hb = tokio::time::interval_at(first, period);
                hb.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                (Some(hb), None)
            }
        };
        let mut jobs = Jobs::default();
        // One stop future for the whole session: re-creating it on every turn would
        // re-register with the phase channel each time (10,000 agents share it).
        let stop = stopped_owned(self.phase.clone());
        tokio::pin!(stop);
        loop {
            let due = jobs.running.iter().map(|j| j.0).min();
            let wake = match (due, jobs.drain_until) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let step = tokio::select! {
                () = &mut stop => {
                    return self.goodbye(conn, &mut w, &mut jobs, true).await;
                }
                msg = r.next::<ToAgent>() => match msg {
                    Ok(Some(m)) => self.on_server(m, &mut w, &mut jobs).await,
                    Ok(None) => Err(End::Lost("server closed the stream".into())),
                    Err(e) => Err(End::Lost(format!("reading from the server: {e}"))),
                },
                () = tick(&mut hb) => {
                    let running = u32::try_from(jobs.running.len()).unwrap_or(u32::MAX);
                    match w.send(&FromAgent::Heartbeat { running, load: 0 }).await {
                        Ok(()) => {
                            bump(&self.stats().counters.heartbeats);
                            Ok(())
                        }
                        Err(e) => Err(End::Lost(format!("sending a heartbeat: {e}"))),
                    }
                }
                () = sleep_until(wake) => self.on_timer(&mut w, &mut jobs).await,
            };
            if let Err(end) = step {
                return end;
            }
            running.set(u32::try_from(jobs.running.len()).unwrap_or(u32::MAX));
            if jobs.drain_until.is_some() && jobs.running.is_empty() {
                return self.goodbye(conn, &mut w, &mut jobs, false).await;
            }
        }
    }

    async fn on_server(
        &mut self,
        msg: ToAgent,
        w: &mut FrameWriter,
        jobs: &mut Jobs,
    ) -> Result<(), End> {
        let c = &self.ctx.stats.counters;
        match msg {
            // Simulated agents live shorter than their certificate; they never renew.
            ToAgent::Renewed { .. } => {}
            ToAgent::Assign { job, attempt, .. } => {
                let received_us = wall_now();
                bump(&c.assigns);
                if let Ok(mut s) = self.ctx.stats.stamps.lock() {
                    s.push(Stamp {
                        job: job.0,
                        attempt: attempt.0,
                        received_us,
                    });
                }
                if jobs.drain_until.is_some() {
                    return self.finish(w, jobs, job, attempt, Outcome::Drained).await;
                }
                w.push(&FromAgent::Started {
                    job,
                    attempt,
                    at: received_us,
                })
                .map_err(lost)?;
                match self.ctx.cfg.job {
                    JobMode::Noop => {
                        return self.finish(w, jobs, job, attempt, Outcome::Exited(0)).await;
                    }
                    JobMode::Sleep(d) => jobs.running.push((Instant::now() + d, job, attempt)),
                }
            }
            ToAgent::Cancel { job, attempt } => {
                let before = jobs.running.len();
                jobs.running.retain(|j| (j.1, j.2) != (job, attempt));
                if jobs.running.len() < before {
                    bump(&c.cancels);
                    return self.finish(w, jobs, job, attempt, Outcome::Cancelled).await;
                }
            }
            ToAgent::Abandon { job, attempt } => {
                bump(&c.abandons);
                jobs.running.retain(|j| (j.1, j.2) != (job, attempt));
                jobs.reported.remove(&job);
            }
            ToAgent::FinishedAck { job, attempt } => {
                if jobs.reported.get(&job) == Some(&attempt) {
                    jobs.reported.remove(&job);
                    bump(&c.finished_acked);
                }
            }
            ToAgent::Drain { timeout_ms } => {
                bump(&c.drains);
                jobs.drain_until = Some(Instant::now() + Duration::from_millis(timeout_ms));
                w.push(&FromAgent::Draining { timeout_ms }).map_err(lost)?;
            }
            ToAgent::Redirect { port } => return Err(End::Redirect(port)),
            ToAgent::Refused { reason } => {
                bump(&c.refused);
                self.worker = None;
                return Err(End::Lost(format!("registration refused: {reason}")));
            }
            // Nothing is held across reconnects, so there is nothing to resume.
            ToAgent::Welcome { .. } | ToAgent::Resume { .. } | ToAgent::OutputAck { .. } => {}
        }
        if w.has_pending() {
            w.flush().await.map_err(lost)?;
        }
        Ok(())
    }

    /// Sleeping jobs that are due finish; past a drain's deadline the rest are `Drained`.
    async fn on_timer(&mut self, w: &mut FrameWriter, jobs: &mut Jobs) -> Result<(), End> {
        let now = Instant::now();
        let drain_over = jobs.drain_until.is_some_and(|d| now >= d);
        let mut i = 0;
        while let Some(&(at, job, attempt)) = jobs.running.get(i) {
            if at <= now || drain_over {
                jobs.running.swap_remove(i);
                let outcome = if at <= now {
                    Outcome::Exited(0)
                } else {
                    Outcome::Drained
                };
                self.report(w, jobs, job, attempt, outcome)?;
            } else {
                i += 1;
            }
        }
        w.flush().await.map_err(lost)
    }

    fn report(
        &self,
        w: &mut FrameWriter,
        jobs: &mut Jobs,
        job: JobId,
        attempt: Attempt,
        outcome: Outcome,
    ) -> Result<(), End> {
        w.push(&FromAgent::Finished {
            job,
            attempt,
            outcome,
            at: wall_now(),
        })
        .map_err(lost)?;
        bump(&self.ctx.stats.counters.finished_sent);
        jobs.reported.insert(job, attempt);
        Ok(())
    }

    async fn finish(
        &self,
        w: &mut FrameWriter,
        jobs: &mut Jobs,
        job: JobId,
        attempt: Attempt,
        outcome: Outcome,
    ) -> Result<(), End> {
        self.report(w, jobs, job, attempt, outcome)?;
        w.flush().await.map_err(lost)
    }

    /// Reports what still runs as `Drained`, says `Goodbye`, waits (bounded) until the server
    /// has read it, and closes. At the stop it also records the connection's QUIC figures.
    async fn goodbye(
        &mut self,
        conn: &quinn::Connection,
        w: &mut FrameWriter,
        jobs: &mut Jobs,
        at_stop: bool,
    ) -> End {
        let st = std::sync::Arc::clone(&self.ctx.stats);
        if at_stop {
            let s = conn.stats();
            let c = &st.counters;
            c.quic_sent_packets
                .fetch_add(s.path.sent_packets, std::sync::atomic::Ordering::Relaxed);
            c.quic_lost_packets
                .fetch_add(s.path.lost_packets, std::sync::atomic::Ordering::Relaxed);
        }
        for (_, job, attempt) in std::mem::take(&mut jobs.running) {
            let _ = self.report(w, jobs, job, attempt, Outcome::Drained);
        }
        let say = async {
            w.push(&FromAgent::Goodbye)?;
            w.flush().await?;
            w.finish()?;
            let _ = w.get_mut().stopped().await;
            Ok::<(), hodei_transport::TransportError>(())
        };
        if let Ok(Ok(())) = tokio::time::timeout(GOODBYE_WAIT, say).await {
            bump(&st.counters.goodbyes);
        }
        conn.close(0u32.into(), b"loadtest done");
        if at_stop { End::Stopped } else { End::Drained }
    }
}

fn lost(e: hodei_transport::TransportError) -> End {
    End::Lost(format!("writing to the server: {e}"))
}

fn kind(m: &ToAgent) -> &'static str {
    match m {
        ToAgent::Welcome { .. } => "Welcome",
        ToAgent::Drain { .. } => "Drain",
        ToAgent::Redirect { .. } => "Redirect",
        ToAgent::Refused { .. } => "Refused",
        ToAgent::Assign { .. } => "Assign",
        ToAgent::Cancel { .. } => "Cancel",
        ToAgent::Abandon { .. } => "Abandon",
        ToAgent::Resume { .. } => "Resume",
        ToAgent::OutputAck { .. } => "OutputAck",
        ToAgent::FinishedAck { .. } => "FinishedAck",
        ToAgent::Renewed { .. } => "Renewed",
    }
}

async fn stopped_owned(mut phase: watch::Receiver<Phase>) {
    stopped(&mut phase).await;
}

/// The interval's next tick, or never.
async fn tick(hb: &mut Option<tokio::time::Interval>) {
    match hb {
        Some(hb) => {
            hb.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A fixed, well-spread fraction of `period` for agent `idx` (golden-ratio sequence), so the
/// fleet's heartbeats are evenly spread without a random number generator.
fn jitter(period: Duration, idx: usize) -> Duration {
    #[allow(clippy::cast_precision_loss)]
    let frac = (idx as f64 * 0.618_033_988_749_895).fract();
    period.mul_f64(frac)
}

/// Reconnect delay: 200 ms doubling to 5 s, with ±25 % jitter from the agent's index.
fn backoff(failures: u32, idx: usize) -> Duration {
    let base = Duration::from_millis(200).saturating_mul(1 << failures.min(5).saturating_sub(1));
    let base = base.min(Duration::from_secs(5));
    #[allow(clippy::cast_precision_loss)]
    let frac = ((idx as f64 + f64::from(failures)) * 0.618_033_988_749_895).fract();
    base.mul_f64(0.75 + frac / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_inside_the_period() {
        let p = Duration::from_millis(100);
        for i in 0..10_000 {
            assert!(jitter(p, i) < p);
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1, 0) <= Duration::from_millis(250));
        assert!(backoff(3, 0) > backoff(1, 0));
        for f in 0..100 {
            assert!(backoff(f, 7) <= Duration::from_millis(6250));
        }
    }
}
