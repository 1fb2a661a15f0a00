//! Hodei's agent: connects to a Hodei server over QUIC, registers its resources and labels,
//! heartbeats, runs each assigned job as its own process group ([`runner`]), streams the
//! output back in batches with backpressure, and survives server restarts and network loss
//! by reconnecting with backoff and jitter and re-attaching the jobs it still holds.
//!
//! - [`runner`]: one job attempt as a process group: spawn, timeout, cancel, output batches
//!   and the on-disk spool that outlives a disconnect.
//! - [`session`]: the connection loop and the protocol with the server.
//! - [`resources`]: what this host offers.
//!
//! Both `hodei agent` and the lean `hodei-agent` binary call [`run`].

pub mod resources;
pub mod runner;
pub mod session;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

/// `hodei agent` / `hodei-agent` flags.
#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// Server address (host:port).
    #[arg(long, env = "HODEI_SERVER", default_value = "127.0.0.1:7700")]
    pub server: String,
    /// CA certificate that signed the server's certificate.
    #[arg(long, env = "HODEI_CA", default_value = ".hodei/ca.pem")]
    pub ca: PathBuf,
    /// Concurrent jobs (default: one per CPU).
    #[arg(long)]
    pub slots: Option<u32>,
    /// Label offered to jobs, `key=value` (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Directory for job working dirs, scripts and output spools.
    #[arg(long, default_value = ".hodei-agent")]
    pub work_dir: PathBuf,
    /// Report every job succeeded without spawning anything (measures dispatch overhead).
    #[arg(long)]
    pub noop: bool,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    hodei_core::spec::parse_key_value(s)
}

/// Runs the agent until SIGINT/SIGTERM.
///
/// # Errors
/// Bad flags (unreadable CA, unresolvable server address) and fatal registration refusals.
pub fn run(args: AgentArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the agent runtime")?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, session::run(args))
}
