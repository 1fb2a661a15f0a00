//! `hodei-bench`: measures a real Hodei (server and agent processes on loopback, the
//! `hodei` binary) from a client on the same machine. One subcommand per scenario:
//!
//! - [`dispatch`]: dispatch latency at a fixed rate, then jobs/s of a burst;
//! - [`throughput`]: sustained jobs/s over `--duration`, and over time;
//! - [`heartbeats`]: a fleet of simulated agents, through `hodei-loadtest`;
//! - `memory`, `restart` ([`store_scale`]): a server holding many jobs;
//! - [`compare`]: the same workloads on Hodei and on HyperQueue in one run.
//!
//! Each ends the same way ([`output`]): a table (or `--json`), `result.json` and SVG plots
//! ([`plot`]) in an output dir. Every child process is in the registry of [`procs`], and the
//! [`supervisor`] kills them all on Ctrl-C or when the run exceeds its bound.

mod cluster;
mod compare;
mod cpu;
mod dispatch;
mod heartbeats;
mod machine;
mod output;
mod plot;
mod procs;
mod rss;
mod spawn_rate;
mod store_scale;
mod supervisor;
mod throughput;
mod timeline;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

use supervisor::Bound;

#[derive(Parser, Debug)]
#[command(name = "hodei-bench", about = "Hodei benchmarks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Dispatch latency at a fixed rate and throughput at saturation.
    Dispatch(dispatch::DispatchArgs),
    /// Sustained end-to-end jobs/s over --duration, and over time.
    Throughput(throughput::ThroughputArgs),
    /// A fleet of simulated agents heartbeating (runs hodei-loadtest).
    Heartbeats(heartbeats::HeartbeatsArgs),
    /// Server RSS with N queued jobs (default 1,000,000).
    Memory(store_scale::ScaleArgs),
    /// kill -9 of a server holding N jobs (default 1,000,000) → serving again.
    Restart(store_scale::ScaleArgs),
    /// The same workloads on Hodei and on HyperQueue, side by side.
    Compare(compare::CompareArgs),
}

impl Cmd {
    fn name(&self) -> &'static str {
        match self {
            Self::Dispatch(_) => "dispatch",
            Self::Throughput(_) => "throughput",
            Self::Heartbeats(_) => "heartbeats",
            Self::Memory(_) => "memory",
            Self::Restart(_) => "restart",
            Self::Compare(_) => "compare",
        }
    }

    /// The bound the supervisor enforces on the whole run.
    fn bound(&self) -> Bound {
        match self {
            Self::Dispatch(a) => Bound {
                after: a.timeout,
                flag: "--timeout",
            },
            Self::Throughput(a) => Bound {
                after: a.timeout,
                flag: "--timeout",
            },
            Self::Heartbeats(a) => Bound {
                after: a.timeout(),
                flag: "--timeout",
            },
            Self::Memory(a) | Self::Restart(a) => Bound {
                after: a.duration,
                flag: "--duration",
            },
            // compare enforces --duration itself, with messages that say which system was
            // running; this is the backstop.
            Self::Compare(a) => Bound {
                after: a.duration + Duration::from_secs(10),
                flag: "--duration (+10s grace)",
            },
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let name = cli.cmd.name();
    match run(cli.cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The scenario's processes were dropped (killed) on the way out; this catches
            // anything an error path left behind.
            procs::kill_all();
            eprintln!("hodei-bench {name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd) -> Result<()> {
    supervisor::start(cmd.name(), cmd.bound())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    match cmd {
        Cmd::Dispatch(args) => local.block_on(&rt, dispatch::dispatch(args)),
        Cmd::Throughput(args) => local.block_on(&rt, throughput::throughput(args)),
        Cmd::Heartbeats(args) => local.block_on(&rt, heartbeats::heartbeats(args)),
        Cmd::Memory(args) => local.block_on(&rt, store_scale::memory(args)),
        Cmd::Restart(args) => local.block_on(&rt, store_scale::restart(args)),
        Cmd::Compare(args) => local.block_on(&rt, compare::compare(args)),
    }
}
