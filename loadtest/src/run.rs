//! The run's timeline, driven from the main thread: start the fleet, wait for the connect
//! phase to end (every agent welcomed, no progress for a while, or the deadline), let the
//! server settle, measure the steady phase (probes and submissions run), wind submissions
//! down, stop everyone, and gather what the threads recorded.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;
use tokio::sync::watch;

use crate::fleet::{Fleet, FleetConfig, Phase};
use crate::procstat::{self, ProcSample, UdpErrors};
use crate::spawn::SpawnedServer;
use crate::stats::{Snapshot, ThreadStats, histogram};
use crate::submit::Submitter;

/// A connect phase without a new agent for this long (after the ramp) gives up waiting.
const STALL: Duration = Duration::from_secs(5);
/// Pause between the connect phase and the steady phase (registrations settle).
const SETTLE: Duration = Duration::from_secs(1);
/// How long the threads get to say goodbye and close after the stop.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Polling period of the main thread.
const TICK: Duration = Duration::from_millis(20);

/// Where the server is and how to watch it.
pub struct Target<'a> {
    pub pid: Option<i32>,
    pub spawned: Option<&'a mut SpawnedServer>,
}

impl Target<'_> {
    fn died(&mut self) -> bool {
        self.spawned.as_mut().is_some_and(|s| s.exited().is_some())
    }

    fn sample(&self) -> Option<ProcSample> {
        self.pid.and_then(|p| procstat::sample(Some(p)))
    }
}

/// Server readings at the phase boundaries.
#[derive(Default)]
pub struct ServerReadings {
    pub start: Option<ProcSample>,
    pub connected: Option<ProcSample>,
    /// After the settle pause: the start of the steady phase.
    pub idle: Option<ProcSample>,
    pub end: Option<ProcSample>,
    /// Largest RSS seen while polling.
    pub max_rss_mib: f64,
}

/// Everything the report needs.
pub struct RunData {
    pub connect_phase: &'static str,
    /// Fleet start → end of the connect phase.
    pub connect_wall: Duration,
    pub steady: Duration,
    /// Steady phase while submissions ran.
    pub submit_window: Duration,
    pub at_steady: Snapshot,
    pub at_wind: Snapshot,
    pub at_end: Snapshot,
    pub last: Snapshot,
    pub server: ServerReadings,
    pub me_steady: (Option<ProcSample>, Option<ProcSample>),
    pub udp: UdpErrors,
    pub connect_us: Histogram<u64>,
    pub probe_us: Histogram<u64>,
    /// The server's own figures over the steady phase (`hodei stats`), if it answered.
    pub server_stats: Vec<hodei_core::wire::Figure>,
    pub dispatch: Dispatch,
    pub per_shard: Vec<u64>,
    pub errors: Vec<String>,
    pub sockets: usize,
    pub threads_left: usize,
    pub server_died: bool,
    pub server_pid: Option<i32>,
    /// Receive-buffer drops on the server's UDP sockets at the start of the steady phase
    /// and at its end, and on this process's sockets at its end.
    pub drops: (Option<u64>, Option<u64>, Option<u64>),
}

/// Dispatch latency, from the submitter's records and the agents' stamps.
pub struct Dispatch {
    /// Acknowledgement read by the submitter → `Assign` read by an agent.
    pub ack_to_assign: Histogram<u64>,
    /// Request sent → `Assign` read.
    pub submit_to_assign: Histogram<u64>,
    /// Assigns read before their job's acknowledgement (counted as 0 above).
    pub before_ack: u64,
    /// Acknowledged jobs no agent of this fleet received before the stop.
    pub unseen: u64,
}

fn snapshot(fleet: &[Arc<ThreadStats>], submitter: Option<&Submitter>) -> Snapshot {
    let mut s = Snapshot::default();
    for t in fleet {
        t.counters.add_to(&mut s);
    }
    if let Some(sub) = submitter {
        sub.stats.counters.add_to(&mut s);
    }
    s
}

/// What the main thread watches while it waits: the server (alive, RSS) and, with
/// `--progress`, a status line on stderr every second.
struct Watcher<'a, 'b> {
    target: &'a mut Target<'b>,
    server: ServerReadings,
    fleet: &'a [Arc<ThreadStats>],
    submitter: Option<&'a Submitter>,
    t0: Instant,
    progress: Option<Progress>,
}

/// The previous status line's figures.
struct Progress {
    next: Instant,
    at: Instant,
    snap: Snapshot,
    server: Option<ProcSample>,
    me: Option<ProcSample>,
    drops: Option<u64>,
}

impl Watcher<'_, '_> {
    fn snap(&self) -> Snapshot {
        snapshot(self.fleet, self.submitter)
    }

    /// Sleeps until `until` while watching the server; false if it died.
    fn until(&mut self, until: Instant) -> bool {
        loop {
            if self.target.died() {
                return false;
            }
            let sample = self.target.sample();
            if let Some(s) = sample {
                self.server.max_rss_mib = self.server.max_rss_mib.max(s.rss_mib);
            }
            self.status(sample);
            let now = Instant::now();
            if now >= until {
                return true;
            }
            std::thread::sleep(TICK.min(until - now));
        }
    }

    fn status(&mut self, server: Option<ProcSample>) {
        let now = Instant::now();
        let snap = self.snap();
        let Some(p) = self.progress.as_mut().filter(|p| now >= p.next) else {
            return;
        };
        let me = procstat::sample(None);
        let drops = self.target.pid.and_then(|p| procstat::udp_drops(Some(p)));
        let secs = now.saturating_duration_since(p.at).as_secs_f64().max(1e-3);
        #[allow(clippy::cast_precision_loss)]
        let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
        let cpu = |a: Option<ProcSample>, b: Option<ProcSample>| {
            a.zip(b)
                .and_then(|(a, b)| procstat::cpu_pct(&a, &b))
                .map_or_else(|| "n/a".to_owned(), |c| format!("{c:.0}%"))
        };
        eprintln!(
            "[{:6.1}s] live {} (welcomed {}, failed attempts {}, lost {}) | hb/s {:.0} | \
             jobs acked/s {:.0} finished/s {:.0} | server cpu {} rss {} udp drops/s {} | \
             loadgen cpu {}",
            now.saturating_duration_since(self.t0).as_secs_f64(),
            snap.live,
            snap.connected,
            snap.connect_failures,
            snap.disconnects,
            rate(p.snap.heartbeats, snap.heartbeats),
            rate(p.snap.acked, snap.acked),
            rate(p.snap.finished_acked, snap.finished_acked),
            cpu(p.server, server),
            server.map_or_else(|| "n/a".to_owned(), |s| format!("{:.0} MiB", s.rss_mib)),
            p.drops
                .zip(drops)
                .map_or_else(|| "n/a".to_owned(), |(a, b)| format!("{:.0}", rate(a, b))),
            cpu(p.me, me),
        );
        *p = Progress {
            next: p.next + Duration::from_secs(1),
            at: now,
            snap,
            server,
            me,
            drops,
        };
    }
}

pub struct Plan {
    pub duration: Duration,
    pub connect_timeout: Duration,
    /// A status line on stderr every second.
    pub progress: bool,
    /// Client config, rate and job mode of the submitter, if any.
    pub submit: Option<(quinn::ClientConfig, f64, crate::args::JobMode)>,
}

#[allow(clippy::too_many_lines)]
pub fn run(cfg: Arc<FleetConfig>, plan: Plan, target: &mut Target) -> Result<RunData> {
    let udp0 = UdpErrors::read();
    let server = ServerReadings {
        start: target.sample(),
        ..ServerReadings::default()
    };
    let (phase_tx, phase_rx) = watch::channel(Phase::Connect);
    let t0 = Instant::now();
    let deadline = t0 + plan.duration;
    let fleet = Fleet::start(Arc::clone(&cfg), &phase_rx, t0)?;
    let submitter = match plan.submit {
        Some((client_cfg, rate, mode)) => Some(Submitter::start(
            cfg.server,
            client_cfg,
            rate,
            mode,
            phase_rx.clone(),
        )?),
        None => None,
    };
    let mut w = Watcher {
        server,
        fleet: &fleet.stats,
        submitter: submitter.as_ref(),
        t0,
        progress: plan.progress.then(|| Progress {
            next: t0 + Duration::from_secs(1),
            at: t0,
            snap: Snapshot::default(),
            server: target.sample(),
            me: procstat::sample(None),
            drops: target.pid.and_then(|p| procstat::udp_drops(Some(p))),
        }),
        target,
    };

    // Connect phase.
    let mut progress = (0, Instant::now());
    let agents = u64::try_from(cfg.agents).unwrap_or(u64::MAX);
    let mut alive;
    let connect_phase = loop {
        alive = w.until(Instant::now() + TICK);
        let now = Instant::now();
        let s = w.snap();
        if !alive {
            break "the server exited";
        }
        if s.connected >= agents {
            break "complete";
        }
        if now >= t0 + plan.connect_timeout {
            break "timed out (--connect-timeout)";
        }
        if s.connected != progress.0 {
            progress = (s.connected, now);
        } else if now > t0 + cfg.ramp + STALL && now - progress.1 > STALL {
            break "stalled (no new connection for 5 s)";
        }
    };
    let tc = Instant::now();
    w.server.connected = w.target.sample();

    // Settle, then the steady phase.
    let settle_end = (tc + SETTLE).min(deadline);
    alive = alive && w.until(settle_end);
    // The server's own figures start afresh here (a handshake: before the phase's clock).
    let mut stats_errors = Vec::new();
    let mut server_stats = |reset| {
        crate::server_stats::read(cfg.server, &cfg.client_cfg, reset)
            .map_err(|e| stats_errors.push(format!("server stats: {e:#}")))
            .ok()
    };
    let stats_reset = server_stats(true).is_some();
    let ts = Instant::now();
    w.server.idle = w.target.sample();
    let pid = w.target.pid;
    let server_drops_idle = pid.and_then(|p| procstat::udp_drops(Some(p)));
    let me_start = procstat::sample(None);
    let at_steady = w.snap();
    let _ = phase_tx.send(Phase::Steady);
    let wind = if w.submitter.is_some() {
        (deadline.saturating_duration_since(ts) / 10).min(Duration::from_secs(1))
    } else {
        Duration::ZERO
    };
    let tw = deadline.checked_sub(wind).unwrap_or(deadline).max(ts);
    alive = alive && w.until(tw);
    let at_wind = w.snap();
    let submit_window = Instant::now().saturating_duration_since(ts);
    let _ = phase_tx.send(Phase::Winding);
    alive = alive && w.until(deadline);
    let te = Instant::now();
    let at_end = w.snap();
    // Without the reset, the figures would cover the whole run: none rather than those.
    let server_stats = if stats_reset {
        server_stats(false).unwrap_or_default()
    } else {
        Vec::new()
    };
    w.server.end = w.target.sample();
    let me_end = procstat::sample(None);
    let drops = (
        server_drops_idle,
        pid.and_then(|p| procstat::udp_drops(Some(p))),
        procstat::udp_drops(None),
    );
    let server = w.server;
    let _ = phase_tx.send(Phase::Stop);

    let sockets = fleet.sockets;
    let stats = fleet.stats.clone();
    let threads_left = fleet.join(Instant::now() + CLOSE_GRACE);
    if let Some(s) = &submitter {
        let until = Instant::now() + CLOSE_GRACE;
        while !s.is_finished() && Instant::now() < until {
            std::thread::sleep(TICK);
        }
    }
    let last = snapshot(&stats, submitter.as_ref());
    let mut data = RunData {
        connect_phase,
        connect_wall: tc - t0,
        steady: te.saturating_duration_since(ts),
        submit_window,
        at_steady,
        at_wind,
        at_end,
        last,
        server,
        me_steady: (me_start, me_end),
        udp: UdpErrors::read().since(udp0),
        connect_us: histogram()?,
        probe_us: histogram()?,
        server_stats,
        dispatch: dispatch(&stats, submitter.as_ref())?,
        per_shard: Vec::new(),
        errors: stats_errors,
        sockets,
        threads_left,
        server_died: !alive,
        server_pid: pid,
        drops,
    };
    for t in stats
        .iter()
        .map(AsRef::as_ref)
        .chain(submitter.as_ref().map(|s| &*s.stats))
    {
        for (h, from) in [
            (&mut data.connect_us, &t.connect_us),
            (&mut data.probe_us, &t.probe_us),
        ] {
            if let Ok(from) = from.lock() {
                let _ = h.add(&*from);
            }
        }
        if let Ok(v) = t.per_shard.lock() {
            if data.per_shard.len() < v.len() {
                data.per_shard.resize(v.len(), 0);
            }
            for (sum, n) in data.per_shard.iter_mut().zip(v.iter()) {
                *sum += n;
            }
        }
        if let Ok(e) = t.errors.lock() {
            for m in e.iter() {
                if data.errors.len() < 12 && !data.errors.contains(m) {
                    data.errors.push(m.clone());
                }
            }
        }
    }
    Ok(data)
}

fn dispatch(fleet: &[Arc<ThreadStats>], submitter: Option<&Submitter>) -> Result<Dispatch> {
    let mut d = Dispatch {
        ack_to_assign: histogram()?,
        submit_to_assign: histogram()?,
        before_ack: 0,
        unseen: 0,
    };
    let Some(sub) = submitter else {
        return Ok(d);
    };
    // The first attempt an agent received, per job.
    let mut first: HashMap<u64, (u32, u64)> = HashMap::new();
    for t in fleet {
        if let Ok(stamps) = t.stamps.lock() {
            for s in stamps.iter() {
                let e = first.entry(s.job).or_insert((s.attempt, s.received_us));
                if s.attempt < e.0 {
                    *e = (s.attempt, s.received_us);
                }
            }
        }
    }
    if let Ok(records) = sub.records.lock() {
        for r in records.iter() {
            let Some(&(_, received)) = first.get(&r.job) else {
                d.unseen += 1;
                continue;
            };
            if received < r.acked_us {
                d.before_ack += 1;
            }
            d.ack_to_assign
                .saturating_record(received.saturating_sub(r.acked_us));
            d.submit_to_assign
                .saturating_record(received.saturating_sub(r.sent_us));
        }
    }
    Ok(d)
}
