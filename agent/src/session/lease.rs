//! Lease self-fencing. The server requeues a lost agent's jobs after its disconnect grace `G`
//! and grants the agent a lease `L` in its `Welcome` (`lease_ms`, half the grace). An agent
//! that has heard nothing from the server for longer than the lease SIGKILLs the process group
//! of every job it still runs and forgets it, so an attempt is dead before the server may
//! start it elsewhere.
//!
//! **The clock.** It counts from the last packet heard from the server, not from when the
//! connection is declared lost (the QUIC idle timeout, seconds later): [`watch`] looks at the
//! frames the connection has received (decrypted, not duplicates: a replayed datagram does
//! not count) at every tick `p` = L/16 (5 ms to 250 ms; before any `Welcome`, for
//! [`MIN_LEASE`]) and, when some arrived since its last look, moves the anchor `A` to the
//! time of that *previous* look. The anchor is never later
//! than the arrival of what moved it (minus the agent's own read latency), even when packets
//! waited in the socket while the agent was paused or busy. The lease ends at `A + L`, whether
//! the connection is still open (a half-open connection silent for longer than the lease
//! does not extend it; the watch races the whole session, so a write blocked on a silent
//! server does not delay it either) or gone. Only a welcomed connection moves the anchor; the
//! `Welcome` itself sets it, to the watch's last look before it was read. A connection that was redirected or refused, or whose `Welcome`
//! has not come yet, does not: the server may not know the agent is back. If the lease runs
//! out after the `Hello` listed the jobs but before the `Welcome`, the agent kills them and
//! reconnects, so the next `Hello` no longer lists them and the server requeues them at once.
//! The same holds for a welcomed connection the lease ran out on.
//!
//! **The kill.** At `A + L` (the watch and the offline loop sleep until exactly then) the
//! agent SIGKILLs each running job's group at once, synchronously ([`RunHandle::kill`]: no
//! SIGTERM, no grace; a drain keeps its graceful SIGTERM). It then waits a moment
//! ([`REPORT_WAIT`]) for the runners to report: a job whose main process had already ended
//! on its own (an exit code, or a signal other than this SIGKILL) keeps its result, which is
//! reported on reconnect like any finished result; the others are forgotten.
//!
//! **The guarantee.** Let `σ` be when the server sent the last packet the agent got, `d` the
//! delay from there to the agent's reading it (network, then the agent's runtime), `ε` the
//! lateness of the agent's timer, `k` the time SIGKILL takes to end the processes (a process
//! in uninterruptible sleep defers it). Then `A ≤ σ + d` and every job is dead by
//! `σ + d + L + ε + k`. The server requeues a lost worker's attempts at `t + G`, `t` being
//! when it decided the worker was disconnected (its heartbeat timeout or the connection's
//! end), and sends nothing on that connection after `t + c`, `c` being the time its close
//! takes to go out. So `σ ≤ t + c`, and jobs are dead before the server requeues them when
//!
//! ```text
//!     c + d + ε + k  ≤  G − L  (= G/2)
//! ```
//!
//! The heartbeat timeout does not appear: it only delays `t`. On loopback or a LAN
//! `c + d + ε + k` is a few ms; with the smallest grace the server accepts (1 s) the budget
//! is 500 ms. After a server restart, unclaimed jobs are requeued at `restart + R`
//! (`--reattach-grace`) and `σ` is before the old server died, so the same holds when
//! `d + L + ε + k ≤ R`, e.g. whenever `R ≥ G`. An agent that is itself stopped (SIGSTOP, a
//! frozen cgroup) cannot kill: its jobs run on if they were not stopped with it. A paused
//! host's jobs are paused with the agent; at the end of the pause the agent's deadline has
//! long passed, and the jobs run at most `ε + k` before they are killed.
//!
//! **Liveness.** A healthy server is heard often enough: once welcomed the agent heartbeats
//! at least every `h` = min(heartbeat, L/5) ([`beat`]), and each connection asks the server
//! to hold its ACKs at most `D` = min(1 s, L/5) ([`ack_delay`]; on a first connection, before
//! any lease is known, `D` is planned for [`MIN_LEASE`]). The server then answers at least
//! every `h + D + RTT` ≤ 2L/5 + RTT, or 4L/5 + RTT when one packet is lost, and the anchor
//! lags by at most `p` ≤ L/16: a working connection keeps its lease while the round trip and
//! its jitter stay under L/2 (L/8 when a packet is lost), 250 ms (62 ms) at the smallest
//! lease.
//!
//! Jobs that already finished are kept: their results are still reported on reconnect.

use std::cell::Cell;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::warn;

use super::{Agent, EVENTS, earliest, later};
use crate::runner::RunEvent;

/// The lease before the first `Welcome` (no job can run before it anyway).
pub(super) const DEFAULT: Duration = Duration::from_millis(5000);

/// The shortest lease the agent plans its connections for before a server told it its own:
/// half of the shortest disconnect grace a server accepts (1 s).
pub(super) const MIN_LEASE: Duration = Duration::from_millis(500);

/// How long lease-killed jobs get to report how they ended (they are SIGKILLed first).
const REPORT_WAIT: Duration = Duration::from_millis(500);

/// How often the watch looks at the connection's traffic: L/16, between 5 ms and 250 ms.
pub(super) fn tick(lease: Duration) -> Duration {
    (lease / 16).clamp(Duration::from_millis(5), Duration::from_millis(250))
}

/// The heartbeat interval once welcomed: the server's, or L/5 if that is shorter, so that the
/// server answers often enough; at least 50 ms.
pub(super) fn beat(heartbeat: Duration, lease: Duration) -> Duration {
    heartbeat.min(lease / 5).max(Duration::from_millis(50))
}

/// The ACK delay a connection asks of the server: L/5, between QUIC's default 25 ms and
/// [`hodei_transport::AGENT_PEER_ACK_DELAY`].
pub(super) fn ack_delay(lease: Duration) -> Duration {
    (lease / 5).clamp(
        Duration::from_millis(25),
        hodei_transport::AGENT_PEER_ACK_DELAY,
    )
}

/// When the lease runs out: `lease` after the server was last heard; never before the first
/// `Welcome`.
pub(super) fn lease_end(heard: Option<Instant>, lease: Duration) -> Option<Instant> {
    heard.map(|at| later(at, lease))
}

/// Whether an agent that last heard the server at `heard` must fence its jobs at `now`.
pub(super) fn expired(heard: Option<Instant>, lease: Duration, now: Instant) -> bool {
    lease_end(heard, lease).is_some_and(|end| now >= end)
}

/// The lease's clock, shared by the agent and the [`watch`] over its current connection (both
/// on the agent's one runtime thread).
#[derive(Debug)]
pub(super) struct Clock {
    lease: Cell<Duration>,
    /// The anchor: when the server was last heard on a welcomed connection (conservatively);
    /// `None` before the first `Welcome`.
    heard: Cell<Option<Instant>>,
    /// The current connection was welcomed: what it receives moves the anchor.
    live: Cell<bool>,
    /// The watch's last look at the current connection.
    looked: Cell<Option<Instant>>,
    /// Some job runs (as of the session's last look): only then does the lease matter.
    running: Cell<bool>,
}

impl Default for Clock {
    fn default() -> Self {
        Self {
            lease: Cell::new(DEFAULT),
            heard: Cell::new(None),
            live: Cell::new(false),
            looked: Cell::new(None),
            running: Cell::new(false),
        }
    }
}

impl Clock {
    pub(super) fn lease(&self) -> Duration {
        self.lease.get()
    }

    /// The lease connections are planned for: the server's once known, [`MIN_LEASE`] before.
    pub(super) fn planned(&self) -> Duration {
        if self.heard.get().is_some() {
            self.lease.get()
        } else {
            MIN_LEASE
        }
    }

    /// When the lease runs out (whether or not a job runs).
    pub(super) fn end(&self) -> Option<Instant> {
        lease_end(self.heard.get(), self.lease.get())
    }

    pub(super) fn expired(&self, now: Instant) -> bool {
        expired(self.heard.get(), self.lease.get(), now)
    }

    /// A `Welcome` read at `now`: the server knows the agent, with this lease. The anchor is
    /// the watch's last look, not `now`: the `Welcome` may have waited in the socket or the
    /// stream (a pause, a busy agent) since then.
    pub(super) fn welcomed(&self, now: Instant, lease: Duration) {
        self.lease.set(lease);
        self.live.set(true);
        let anchor = self.looked.get().map_or(now, |at| at.min(now));
        self.heard.set(Some(anchor));
    }

    /// The connection ended: nothing moves the anchor until the next `Welcome`.
    pub(super) fn connection_ended(&self) {
        self.live.set(false);
        self.looked.set(None);
    }

    /// The watch looked at the connection at `at`.
    fn looked_at(&self, at: Instant) {
        self.looked.set(Some(at));
    }

    /// The server was heard no earlier than `at`, on the current connection.
    pub(super) fn heard_at(&self, at: Instant) {
        if self.live.get() {
            let anchor = self.heard.get().map_or(at, |h| h.max(at));
            self.heard.set(Some(anchor));
        }
    }

    pub(super) fn set_running(&self, running: bool) {
        self.running.set(running);
    }
}

/// The frames a connection has received: only packets that decrypted and were not
/// duplicates are counted (unlike `udp_rx.datagrams`, which counts every datagram from the
/// server's address).
fn frames_received(conn: &quinn::Connection) -> u64 {
    let f = conn.stats().frame_rx;
    [
        f.acks,
        f.ack_frequency,
        f.crypto,
        f.connection_close,
        f.data_blocked,
        f.datagram,
        u64::from(f.handshake_done),
        f.immediate_ack,
        f.max_data,
        f.max_stream_data,
        f.max_streams_bidi,
        f.max_streams_uni,
        f.new_connection_id,
        f.new_token,
        f.path_challenge,
        f.path_response,
        f.ping,
        f.reset_stream,
        f.retire_connection_id,
        f.stop_sending,
        f.stream_data_blocked,
        f.streams_blocked_bidi,
        f.streams_blocked_uni,
        f.stream,
    ]
    .iter()
    .fold(0u64, |sum, n| sum.wrapping_add(*n))
}

/// What the watch knows of the connection's traffic between two looks.
#[derive(Debug, Clone, Copy)]
pub(super) struct Looks {
    /// Frames received at the last look.
    seen: u64,
    /// When that look was.
    at: Instant,
}

impl Looks {
    pub(super) fn new(seen: u64, at: Instant) -> Self {
        Self { seen, at }
    }

    /// A look at `now` that finds `count` frames received in all. If some arrived since the
    /// last look, the server was heard no earlier than that last look: returns its time.
    pub(super) fn look(&mut self, count: u64, now: Instant) -> Option<Instant> {
        let heard = (count != self.seen).then_some(self.at);
        self.seen = count;
        self.at = now;
        heard
    }
}

/// Watches `conn` for the whole session: moves the clock's anchor as frames arrive, and
/// returns once the lease has run out while some job runs. Raced against the session: the
/// session's own awaits (a write blocked on a silent server) cannot delay it.
pub(super) async fn watch(conn: &quinn::Connection, clock: &Clock) {
    let first = Instant::now();
    let mut looks = Looks::new(frames_received(conn), first);
    clock.looked_at(first);
    loop {
        let now = Instant::now();
        if let Some(at) = looks.look(frames_received(conn), now) {
            clock.heard_at(at);
        }
        clock.looked_at(now);
        let running = clock.running.get();
        if running && clock.expired(now) {
            return;
        }
        // Before a Welcome, as often as the shortest lease needs: the Welcome's anchor is
        // the last look.
        let next = later(now, tick(clock.planned()));
        let wake = if running {
            earliest(Some(next), clock.end()).unwrap_or(next)
        } else {
            next
        };
        tokio::time::sleep_until(wake).await;
    }
}

impl Agent {
    /// Tells the clock whether some job runs (the watch fires only then).
    pub(super) fn sync_lease(&self) {
        self.clock.set_running(self.running() > 0);
    }

    /// When to look at the lease next: only while some job runs.
    pub(super) fn lease_wake(&self) -> Option<Instant> {
        self.clock.end().filter(|_| self.running() > 0)
    }

    /// The lease ran out and some job still runs.
    pub(super) fn lease_expired(&self, now: Instant) -> bool {
        self.clock.expired(now) && self.running() > 0
    }

    /// SIGKILLs every job still running, then forgets it unless it turns out to have ended
    /// on its own. Events already queued are recorded first, so a job that ended in the
    /// meantime keeps its result; the killed ones get [`REPORT_WAIT`] to report theirs.
    pub(super) async fn expire_lease(&mut self, events_rx: &mut mpsc::Receiver<RunEvent>) {
        // Bounded: running jobs keep producing, and only what was queued matters here.
        for _ in 0..EVENTS {
            let Ok(ev) = events_rx.try_recv() else { break };
            let _ = self.record(ev);
        }
        let lease = self.clock.lease();
        let mut killed = Vec::new();
        for (job, h) in &self.jobs {
            if h.finished.is_some() {
                continue;
            }
            if let Some(handle) = &h.handle {
                // At once, before anything else: the server may requeue it right after.
                handle.kill();
            }
            warn!(
                job = %job,
                cid = %h.cid,
                ?lease,
                "nothing heard from the server for longer than the lease: job killed (SIGKILL to its process group)"
            );
            killed.push(*job);
        }
        let still_running = |a: &Agent| {
            killed
                .iter()
                .any(|j| a.jobs.get(j).is_some_and(|h| h.finished.is_none()))
        };
        let until = later(Instant::now(), REPORT_WAIT);
        while still_running(self) {
            match tokio::time::timeout_at(until, events_rx.recv()).await {
                Ok(Some(ev)) => {
                    let _ = self.record(ev);
                }
                Ok(None) | Err(_) => break,
            }
        }
        for job in killed {
            let ended_on_its_own = self.jobs.get(&job).is_some_and(|h| {
                h.finished
                    .as_ref()
                    .is_some_and(|(o, _)| *o != hodei_core::job::Outcome::Cancelled)
            });
            if ended_on_its_own {
                warn!(job = %job, "it had ended on its own before the kill: its result is kept");
                continue;
            }
            if let Some(h) = self.jobs.remove(&job) {
                self.drop_held(job, h);
            }
        }
        self.sync_lease();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(5);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn never_expires_before_the_first_welcome() {
        let now = Instant::now();
        assert!(!expired(None, LEASE, now));
        assert!(!expired(None, Duration::ZERO, now));
        assert_eq!(lease_end(None, LEASE), None);
        let clock = Clock::default();
        // A connection's frames before any Welcome move nothing.
        clock.heard_at(now);
        assert_eq!(clock.end(), None);
        assert_eq!(clock.planned(), MIN_LEASE);
    }

    #[test]
    fn expires_a_lease_after_the_last_packet() {
        let heard = Instant::now();
        assert!(!expired(Some(heard), LEASE, heard));
        assert!(!expired(Some(heard), LEASE, heard + ms(4_999)));
        assert!(expired(Some(heard), LEASE, heard + LEASE));
        assert!(expired(Some(heard), LEASE, heard + Duration::from_secs(60)));
        assert_eq!(lease_end(Some(heard), LEASE), Some(heard + LEASE));
    }

    #[test]
    fn a_zero_lease_fences_at_once_and_a_huge_one_never_panics() {
        let heard = Instant::now();
        assert!(expired(Some(heard), Duration::ZERO, heard));
        assert!(!expired(
            Some(heard),
            Duration::MAX,
            heard + Duration::from_secs(3600)
        ));
        assert!(tick(Duration::MAX) <= ms(250));
        assert!(beat(Duration::MAX, Duration::MAX) > Duration::ZERO);
        assert_eq!(
            ack_delay(Duration::MAX),
            hodei_transport::AGENT_PEER_ACK_DELAY
        );
        assert_eq!(tick(Duration::ZERO), ms(5));
        assert_eq!(beat(Duration::ZERO, Duration::ZERO), ms(50));
        assert_eq!(ack_delay(Duration::ZERO), ms(25));
    }

    #[test]
    fn a_welcome_counts_from_the_last_look_before_it_was_read() {
        let t0 = Instant::now();
        let clock = Clock::default();
        clock.looked_at(t0);
        // Read 20 s later (the agent was paused with the Welcome in its socket).
        clock.welcomed(t0 + Duration::from_secs(20), ms(1000));
        assert_eq!(clock.end(), Some(t0 + ms(1000)));
        assert!(clock.expired(t0 + Duration::from_secs(20)));
        // A new connection forgets the last connection's looks.
        clock.connection_ended();
        clock.welcomed(t0 + Duration::from_secs(30), ms(1000));
        assert_eq!(clock.end(), Some(t0 + Duration::from_secs(31)));
    }

    #[test]
    fn the_clock_runs_from_the_welcome_and_moves_only_while_welcomed() {
        let t0 = Instant::now();
        let clock = Clock::default();
        clock.welcomed(t0, ms(1000));
        assert_eq!(clock.end(), Some(t0 + ms(1000)));
        assert_eq!(clock.planned(), ms(1000));
        clock.heard_at(t0 + ms(300));
        assert_eq!(clock.end(), Some(t0 + ms(1300)));
        // An older look never moves the anchor back.
        clock.heard_at(t0 + ms(100));
        assert_eq!(clock.end(), Some(t0 + ms(1300)));
        // Gone: the next connection's packets do not count before its Welcome.
        clock.connection_ended();
        clock.heard_at(t0 + ms(900));
        assert_eq!(clock.end(), Some(t0 + ms(1300)));
        assert!(!clock.expired(t0 + ms(1299)));
        assert!(clock.expired(t0 + ms(1300)));
        // The next Welcome restarts it, with the new lease.
        clock.welcomed(t0 + ms(2000), ms(400));
        assert_eq!(clock.end(), Some(t0 + ms(2400)));
    }

    #[test]
    fn a_packet_counts_from_the_look_before_the_one_that_saw_it() {
        let t0 = Instant::now();
        let mut looks = Looks::new(10, t0);
        assert_eq!(looks.look(10, t0 + ms(60)), None);
        assert_eq!(looks.look(12, t0 + ms(120)), Some(t0 + ms(60)));
        assert_eq!(looks.look(12, t0 + ms(180)), None);
        // Paused for 20 s: what waited in the socket is read after the pause, but counts
        // from before it, so the lease is already over when the agent runs again.
        let resumed = t0 + Duration::from_secs(20);
        let heard = looks.look(15, resumed);
        assert_eq!(heard, Some(t0 + ms(180)));
        assert!(expired(heard, ms(1000), resumed));
        // The counter may wrap: any change counts.
        let mut looks = Looks::new(u64::MAX, t0);
        assert_eq!(looks.look(0, t0 + ms(1)), Some(t0));
    }

    /// The derived timings keep a working connection within its lease, with margins for the
    /// round trip (the module's "Liveness"), for every lease from the smallest planned for.
    #[test]
    fn a_healthy_server_is_heard_well_within_the_lease() {
        for lease_ms in [
            500, 501, 750, 1000, 1999, 2000, 5000, 10_000, 60_000, 3_600_000,
        ] {
            let lease = ms(lease_ms);
            for heartbeat_ms in [50, 100, 500, 1000, 3000, 60_000] {
                let h = beat(ms(heartbeat_ms), lease);
                assert!(h <= ms(heartbeat_ms).max(ms(50)), "{lease:?} {h:?}");
                let d = ack_delay(lease);
                let p = tick(lease);
                // Silence of a healthy connection, and with one lost packet, plus the lag
                // of the anchor, leave at least L/2 (resp. L/8) for the round trip.
                let quiet = h + d + p;
                assert!(quiet * 2 <= lease, "{lease:?}: {h:?} + {d:?} + {p:?}");
                assert!(((h + d) * 2 + p) * 8 <= lease * 7, "{lease:?}");
            }
            assert!(tick(lease) <= ms(250));
            // A first connection's ACK delay suits any lease from the smallest up.
            assert!(ack_delay(MIN_LEASE) <= ack_delay(lease));
        }
        // The defaults of a server (1 s heartbeat, 10 s grace) keep the agent's 1 s
        // heartbeat and ACK delay.
        assert_eq!(beat(ms(1000), ms(5000)), ms(1000));
        assert_eq!(ack_delay(ms(5000)), ms(1000));
    }

    /// The inequality of the module doc with the smallest grace a server should accept: the
    /// kill comes before the requeue with room for the close, delays and the kill itself.
    #[test]
    fn jobs_die_before_the_requeue_at_the_smallest_grace() {
        let grace = ms(1000);
        let lease = grace / 2;
        let heard = Instant::now();
        let kill_by = lease_end(Some(heard), lease).unwrap_or(heard);
        let requeue = heard + grace;
        assert!(kill_by + ms(500) <= requeue);
    }
}
