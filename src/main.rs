//! `hodei`: the server, the agent and the CLI of Hodei, a low-latency job execution platform.
//!
//! This file only parses the command line and calls into the crate that does the work:
//!
//! - `hodei server`, `hodei up`: the `hodei-server` crate (`server/`).
//! - `hodei agent`: the `hodei-agent` crate (`agent/`).
//! - `hodei job ...`, `worker`, `events`, `token`, `secret`, `audit`, `stats`: the CLI
//!   ([`cli`]), a client of the server over QUIC.

mod cli;

/// jemalloc instead of glibc's malloc: a third less server CPU per no-op job, measured in
/// `tuning/README.md` (where mimalloc's cost in RSS is too).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "hodei",
    version,
    about = "Hodei: a low-latency job execution platform"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the server.
    Server(hodei_server::args::ServerArgs),
    /// Run an agent that executes jobs for a server.
    Agent(hodei_agent::AgentArgs),
    /// Start a server and two local agents in one process tree.
    Up(hodei_server::up::UpArgs),
    /// Submit, inspect, cancel and wait for jobs.
    Job {
        #[command(flatten)]
        target: cli::Target,
        #[command(subcommand)]
        cmd: cli::JobCmd,
    },
    /// The event log: every job and worker state change, numbered per shard.
    Events {
        #[command(flatten)]
        target: cli::Target,
        #[command(flatten)]
        args: cli::events::EventsArgs,
    },
    /// API and join tokens (admin).
    Token {
        #[command(flatten)]
        target: cli::Target,
        #[command(subcommand)]
        cmd: cli::admin::TokenCmd,
    },
    /// Secrets jobs can ask for (admin); values are sealed at rest and masked in output.
    Secret {
        #[command(flatten)]
        target: cli::Target,
        #[command(subcommand)]
        cmd: cli::admin::SecretCmd,
    },
    /// The tamper-evident audit log: query it, or `hodei audit verify`.
    Audit {
        #[command(flatten)]
        target: cli::Target,
        #[command(flatten)]
        args: cli::admin::AuditArgs,
    },
    /// Inspect and drain workers (connected agents).
    Worker {
        #[command(flatten)]
        target: cli::Target,
        #[command(subcommand)]
        cmd: cli::WorkerCmd,
    },
    /// The server's own figures since the last reset (heartbeat handling time, decoded →
    /// applied by its shard, and store commit time, as percentiles in µs), and what its
    /// shards hold now (jobs, workers, timers, clients' registrations and reply queues).
    Stats {
        #[command(flatten)]
        target: cli::Target,
        /// Start the figures afresh after printing them.
        #[arg(long)]
        reset: bool,
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    hodei_agent::init_logging();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("hodei: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<u8> {
    match cli.cmd {
        Cmd::Server(args) => {
            let opts = args.options().map_err(anyhow::Error::msg)?;
            hodei_server::run(&opts).map(|()| 0)
        }
        Cmd::Agent(args) => hodei_agent::run(args).map(|()| 0),
        Cmd::Up(args) => hodei_server::up::run(&args).map(|()| 0),
        Cmd::Job { target, cmd } => block_on(cli::job(cmd, &target)),
        Cmd::Worker { target, cmd } => block_on(cli::worker(cmd, &target)),
        Cmd::Stats {
            target,
            reset,
            json,
        } => block_on(cli::stats(reset, json, &target)),
        Cmd::Events { target, args } => block_on(cli::events::run(args, &target)),
        Cmd::Token { target, cmd } => block_on(cli::admin::token(cmd, &target)),
        Cmd::Secret { target, cmd } => block_on(cli::admin::secret(cmd, &target)),
        Cmd::Audit { target, args } => block_on(cli::admin::audit(args, &target)),
    }
}

fn block_on<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?
        .block_on(f)
}
