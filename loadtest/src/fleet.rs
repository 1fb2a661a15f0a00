//! The fleet: `--threads` OS threads, each a tokio `current_thread` runtime with its own
//! client quinn endpoints (one UDP socket each, at most `--per-socket` agents on one) and
//! its share of the agents, plus one probe per endpoint. Agent `i` runs on thread
//! `i % threads`, on that thread's sockets in turn, and makes its first attempt at
//! `ramp * i / agents` after the start.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use crate::agent::Agent;
use crate::args::JobMode;
use crate::beats::Beats;
use crate::stats::ThreadStats;

/// Where the run is. The main thread moves it forward; everything else watches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Agents connect; nothing is measured but the connections.
    Connect,
    /// Every agent is connected (or the connect phase gave up): probes and submissions run.
    Steady,
    /// Submissions stop so that the last jobs can be dispatched before the stop.
    Winding,
    /// Everyone says goodbye and closes.
    Stop,
}

/// Returns once the phase is [`Phase::Stop`] (or the main thread is gone).
pub async fn stopped(phase: &mut watch::Receiver<Phase>) {
    reached(phase, Phase::Stop).await;
}

/// Returns once the phase is `at` or later (or the main thread is gone).
pub async fn reached(phase: &mut watch::Receiver<Phase>, at: Phase) {
    let _ = phase.wait_for(|p| *p as u8 >= at as u8).await;
}

/// What every thread of the fleet shares.
pub struct FleetConfig {
    pub server: SocketAddr,
    /// Client config with ALPN `hodei-agent/1`.
    pub agent_cfg: quinn::ClientConfig,
    /// Client config with ALPN `hodei-client/1`, for the probes.
    pub client_cfg: quinn::ClientConfig,
    pub agents: usize,
    pub threads: usize,
    pub per_socket: usize,
    pub heartbeat: Duration,
    /// Heartbeats on the stream instead of in datagrams.
    pub stream_heartbeats: bool,
    pub slots: u32,
    pub job: JobMode,
    pub ramp: Duration,
    pub connect_concurrency: usize,
    /// Probes per second, whole fleet.
    pub probe_rate: f64,
    /// Bound of one connection's handshake and registration.
    pub handshake_timeout: Duration,
}

/// Per-thread context of the agents and probes.
pub struct Ctx {
    pub cfg: Arc<FleetConfig>,
    pub stats: Arc<ThreadStats>,
    /// This thread's share of `--connect-concurrency`.
    pub handshakes: Semaphore,
    /// The fleet's start.
    pub t0: Instant,
    /// This thread's heartbeat clock (none with `--stream-heartbeats`).
    pub beats: Option<Beats>,
}

/// The running fleet.
pub struct Fleet {
    threads: Vec<JoinHandle<()>>,
    /// One per thread.
    pub stats: Vec<Arc<ThreadStats>>,
    /// Client UDP sockets in all.
    pub sockets: usize,
}

/// Agents of thread `t`.
fn share(agents: usize, threads: usize, t: usize) -> usize {
    agents / threads + usize::from(t < agents % threads)
}

impl Fleet {
    /// Starts the threads; their agents start connecting at once (per the ramp).
    pub fn start(
        cfg: Arc<FleetConfig>,
        phase: &watch::Receiver<Phase>,
        t0: std::time::Instant,
    ) -> Result<Self> {
        let sockets: usize = (0..cfg.threads)
            .map(|t| share(cfg.agents, cfg.threads, t).div_ceil(cfg.per_socket))
            .sum();
        let mut fleet = Self {
            threads: Vec::new(),
            stats: Vec::new(),
            sockets,
        };
        for t in 0..cfg.threads {
            let stats = Arc::new(ThreadStats::new()?);
            let (cfg, s, phase) = (Arc::clone(&cfg), Arc::clone(&stats), phase.clone());
            let handle = std::thread::Builder::new()
                .name(format!("loadtest-{t}"))
                .spawn(move || thread_main(t, sockets, cfg, s, phase, t0))
                .context("cannot start a fleet thread")?;
            fleet.threads.push(handle);
            fleet.stats.push(stats);
        }
        Ok(fleet)
    }

    /// Waits until every thread has ended, or `deadline`; returns how many are still
    /// running (they are left behind: the process exits soon anyway).
    pub fn join(self, deadline: std::time::Instant) -> usize {
        let mut left = self.threads;
        while !left.is_empty() && std::time::Instant::now() < deadline {
            let (done, rest): (Vec<_>, Vec<_>) = left.into_iter().partition(|h| h.is_finished());
            for h in done {
                let _ = h.join();
            }
            left = rest;
            std::thread::sleep(Duration::from_millis(20));
        }
        left.len()
    }
}

/// Receive and send buffer asked for on each client socket (the kernel caps it at
/// `net.core.rmem_max`/`wmem_max`). The default (~208 KiB) overflows when a few hundred
/// handshakes answer at once.
const SOCKET_BUFFER: usize = 4 << 20;

/// A client endpoint on its own UDP socket (ephemeral port) with [`SOCKET_BUFFER`].
fn client_endpoint(server: SocketAddr, cfg: quinn::ClientConfig) -> Result<quinn::Endpoint> {
    let bind = if server.is_ipv6() {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
    };
    let socket =
        std::net::UdpSocket::bind(bind).with_context(|| format!("cannot bind UDP {bind}"))?;
    // Best effort: a smaller buffer only means more drops, which the report shows.
    if let Ok(state) = quinn::udp::UdpSocketState::new((&socket).into()) {
        let _ = state.set_recv_buffer_size((&socket).into(), SOCKET_BUFFER);
        let _ = state.set_send_buffer_size((&socket).into(), SOCKET_BUFFER);
    }
    socket
        .set_nonblocking(true)
        .context("cannot make a UDP socket nonblocking")?;
    let mut ep = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .context("cannot open a QUIC endpoint")?;
    ep.set_default_client_config(cfg);
    Ok(ep)
}

fn thread_main(
    t: usize,
    sockets: usize,
    cfg: Arc<FleetConfig>,
    stats: Arc<ThreadStats>,
    phase: watch::Receiver<Phase>,
    t0: std::time::Instant,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            stats.error(format!("thread {t}: cannot build its runtime: {e}"));
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run_thread(t, sockets, cfg, stats, phase, t0));
}

async fn run_thread(
    t: usize,
    sockets: usize,
    cfg: Arc<FleetConfig>,
    stats: Arc<ThreadStats>,
    phase: watch::Receiver<Phase>,
    t0: std::time::Instant,
) {
    let mine = share(cfg.agents, cfg.threads, t);
    let permits = (cfg.connect_concurrency / cfg.threads).max(1);
    let ctx = Rc::new(Ctx {
        cfg: Arc::clone(&cfg),
        stats: Arc::clone(&stats),
        handshakes: Semaphore::new(permits),
        t0: Instant::from_std(t0),
        beats: (!cfg.stream_heartbeats)
            .then(|| Beats::new(cfg.heartbeat, Arc::clone(&stats), Instant::from_std(t0))),
    });
    let mut endpoints = Vec::new();
    for _ in 0..mine.div_ceil(cfg.per_socket) {
        match client_endpoint(cfg.server, cfg.agent_cfg.clone()) {
            Ok(ep) => endpoints.push((ep, Rc::new(Cell::new(None)))),
            Err(e) => {
                stats.error(format!("thread {t}: {e:#}"));
                return;
            }
        }
    }
    let mut tasks = Vec::with_capacity(mine + endpoints.len() + 1);
    if ctx.beats.is_some() {
        let (ctx, phase) = (Rc::clone(&ctx), phase.clone());
        tasks.push(tokio::task::spawn_local(async move {
            if let Some(beats) = &ctx.beats {
                beats.run(phase).await;
            }
        }));
    }
    let per_probe = if sockets == 0 {
        0.0
    } else {
        #[allow(clippy::cast_precision_loss)]
        let n = sockets as f64;
        cfg.probe_rate / n
    };
    for (k, i) in (t..cfg.agents).step_by(cfg.threads).enumerate() {
        // Consecutive agents on different sockets: the ones connecting at the same moment
        // spread over the server's shards.
        let Some((ep, shard)) = endpoints.get(k % endpoints.len().max(1)) else {
            break;
        };
        #[allow(clippy::cast_precision_loss)]
        let offset = cfg.ramp.mul_f64(i as f64 / cfg.agents as f64);
        let agent = Agent::new(
            i,
            Rc::clone(&ctx),
            ep.clone(),
            Rc::clone(shard),
            phase.clone(),
            ctx.t0 + offset,
        );
        tasks.push(tokio::task::spawn_local(agent.run()));
    }
    if per_probe > 0.0 {
        for (ep, shard) in &endpoints {
            let probe = crate::probe::Probe {
                ctx: Rc::clone(&ctx),
                ep: ep.clone(),
                shard: Rc::clone(shard),
                phase: phase.clone(),
                rate: per_probe,
            };
            tasks.push(tokio::task::spawn_local(probe.run()));
        }
    }
    for task in tasks {
        let _ = task.await;
    }
    // Let the closes reach the server, all sockets at once, for a bounded time.
    let idle = async {
        for (ep, _) in &endpoints {
            ep.wait_idle().await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), idle).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up() {
        for agents in [1, 2, 3, 999, 1000, 10_001] {
            for threads in 1..5 {
                let sum: usize = (0..threads).map(|t| share(agents, threads, t)).sum();
                assert_eq!(sum, agents);
                let on_t = |t: usize| (t..agents).step_by(threads).count();
                for t in 0..threads {
                    assert_eq!(share(agents, threads, t), on_t(t));
                }
            }
        }
    }
}
