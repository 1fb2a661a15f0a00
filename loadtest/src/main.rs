//! `hodei-loadtest`: a fleet simulator for Hodei. It opens thousands of real QUIC agent
//! connections from one process (spread over its own threads and UDP sockets) to a server
//! on this machine — a running one (`--server`, loopback only) or a throwaway one it starts
//! (`--spawn-server`) — registers them, heartbeats, runs no-op or sleep jobs submitted at a
//! fixed rate, and reports connections, heartbeats/s, dispatch latency, job throughput, a
//! shard-loop probe latency (hdrhistogram percentiles) and the server's RSS and CPU from
//! /proc. It stops by itself after `--duration`.
//!
//! Files: [`args`] flags; [`spawn`] the throwaway server; [`fleet`] threads, endpoints and
//! phases; [`agent`] one simulated agent; [`probe`] the shard-loop probe; [`submit`] the
//! job submitter; [`stats`] counters; [`procstat`] /proc readings; [`run`] the timeline;
//! [`report`] the table or JSON. See README.md for what each figure measures.

mod agent;
mod args;
mod beats;
mod fleet;
mod probe;
mod procstat;
mod report;
mod run;
mod server_stats;
mod spawn;
mod stats;
mod submit;
mod token;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use hodei_core::wire::{ALPN_AGENT, ALPN_CLIENT};
use hodei_transport::TransportOptions;

use args::Args;
use fleet::FleetConfig;
use spawn::SpawnedServer;

fn main() -> ExitCode {
    let args = Args::parse();
    match main_with(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hodei-loadtest: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main_with(args: &Args) -> Result<()> {
    args.check()?;
    // One socket per --per-socket agents, plus a little: the default limit is plenty unless
    // --per-socket is small, but raising the soft limit costs nothing.
    let nofile = procstat::raise_nofile().unwrap_or(0);
    let sockets = args.agents.div_ceil(args.per_socket) + args.threads;
    if nofile != 0 && u64::try_from(sockets + 64).unwrap_or(u64::MAX) > nofile {
        anyhow::bail!(
            "{sockets} client sockets need more open files than RLIMIT_NOFILE allows ({nofile}); \
             raise --per-socket"
        );
    }
    let mut spawned = match &args.spawn_server {
        Some(hodei) => Some(SpawnedServer::start(hodei, args.shards, &args.server_arg)?),
        None => None,
    };
    let (server, ca, pid) = match &spawned {
        Some(s) => (s.addr, s.ca.clone(), s.pid()),
        None => {
            let text = args.server.as_deref().unwrap_or_default();
            let ca = args.ca.clone().context("--server needs --ca")?;
            (args::loopback_server(text)?, ca, args.server_pid)
        }
    };
    token::load(&ca)?;
    let result = measure(args, server, &ca, pid, spawned.as_mut());
    let end = spawned.map(SpawnedServer::stop);
    let data = result?;
    report::print(args, &server.to_string(), &data, end.as_ref());
    Ok(())
}

fn measure(
    args: &Args,
    server: std::net::SocketAddr,
    ca: &std::path::Path,
    pid: Option<i32>,
    spawned: Option<&mut SpawnedServer>,
) -> Result<run::RunData> {
    let agent_opts = TransportOptions {
        keep_alive: args.keep_alive,
        idle_timeout: args.idle_timeout,
        peer_ack_delay: (!args.peer_ack_delay.is_zero()).then_some(args.peer_ack_delay),
        ..TransportOptions::default()
    };
    let identity = token::join(server, ca)?;
    let agent_cfg =
        hodei_transport::client_config_with(ca, ALPN_AGENT, &agent_opts, Some(&identity))
            .with_context(|| format!("cannot use CA file {}", ca.display()))?;
    let client_cfg = hodei_transport::client_config(ca, ALPN_CLIENT, &TransportOptions::default())
        .with_context(|| format!("cannot use CA file {}", ca.display()))?;
    let cfg = Arc::new(FleetConfig {
        server,
        agent_cfg,
        client_cfg: client_cfg.clone(),
        agents: args.agents,
        threads: args.threads,
        per_socket: args.per_socket,
        heartbeat: args.heartbeat,
        stream_heartbeats: args.stream_heartbeats,
        slots: args.slots,
        job: args.job,
        ramp: args.ramp,
        connect_concurrency: args.connect_concurrency,
        probe_rate: args.probe_rate,
        handshake_timeout: args.idle_timeout + Duration::from_secs(2),
    });
    let submit = (args.submit_rate > 0.0).then_some((client_cfg, args.submit_rate, args.job));
    let mut target = run::Target { pid, spawned };
    let plan = run::Plan {
        duration: args.duration,
        connect_timeout: args.connect_timeout(),
        progress: args.progress,
        submit,
    };
    let data = run::run(cfg, plan, &mut target)?;
    if data.at_end.server_heartbeat_ms > 0
        && args.heartbeat.as_millis() > u128::from(data.at_end.server_heartbeat_ms) * 3
    {
        eprintln!(
            "warning: --heartbeat {} is longer than 3 x the server's interval ({} ms): the \
             server drops such agents as silent",
            humantime::format_duration(args.heartbeat),
            data.at_end.server_heartbeat_ms
        );
    }
    Ok(data)
}
