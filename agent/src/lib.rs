//! Hodei's agent: connects to a Hodei server over QUIC, registers its resources and labels,
//! heartbeats, runs each assigned job as its own process group ([`runner`]), streams the
//! output back in batches with backpressure, and survives server restarts and network loss
//! by reconnecting with backoff and jitter and re-attaching the jobs it still holds. It kills
//! its jobs itself when it has been cut off from the server for longer than its lease, and
//! drains (finishes its jobs, reports, says goodbye) on SIGTERM/SIGINT or when told to.
//!
//! - [`runner`]: one job attempt as a process group: spawn, timeout, cancel, output batches
//!   and the on-disk spool that outlives a disconnect; and the guard, a process of its own
//!   that kills every job's group when the agent dies, and whose journal lets the next run
//!   kill what a crash of both left (`runner/guard.rs`).
//! - [`session`]: the connection loop and the protocol with the server.
//! - [`resources`]: what this host offers.
//!
//! Both `hodei agent` and the lean `hodei-agent` binary call [`run`].

pub mod resources;
pub mod runner;
pub mod session;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

/// `hodei agent` / `hodei-agent` flags.
#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// Server address (host:port).
    #[arg(long, env = "HODEI_SERVER", default_value = "127.0.0.1:7700")]
    pub server: String,
    /// Join token (from `hodei token create --role agent`), used once when this agent has
    /// no valid certificate yet; afterwards it connects with its certificate (mTLS).
    #[arg(long, env = "HODEI_JOIN_TOKEN", hide_env_values = true)]
    pub join: Option<String>,
    /// CA certificate that signed the server's certificate.
    #[arg(long, env = "HODEI_CA", default_value = ".hodei/ca.pem")]
    pub ca: PathBuf,
    /// Concurrent jobs (default: one per CPU).
    #[arg(long)]
    pub slots: Option<u32>,
    /// Assignments taken beyond `--slots`, queued here until a slot frees: the next job
    /// starts without waiting for the server's round trip. For many short jobs; a job
    /// queued behind a long one waits for it, while another agent might be idle. A job
    /// still queued after 300 ms tells the server, whose `--assign-timeout` must be longer.
    #[arg(long, default_value_t = 0)]
    pub prefetch: u32,
    /// Label offered to jobs, `key=value` (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Directory for job working dirs, scripts and output spools.
    #[arg(long, default_value = ".hodei-agent")]
    pub work_dir: PathBuf,
    /// Report every job succeeded without spawning anything (measures dispatch overhead).
    #[arg(long)]
    pub noop: bool,
    /// On SIGTERM/SIGINT: how long running jobs may go on before they are killed (and
    /// reported drained, so the server retries them). A second signal kills them at once.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// An output batch is sent once it holds this many bytes (1 to 1048576: a batch is one
    /// message, which must stay far under the frame limit)...
    #[arg(long, default_value_t = 64 * 1024, value_parser = parse_batch_bytes)]
    pub output_batch_bytes: usize,
    /// ...or once this long has passed since its first byte (latency of `logs --follow`
    /// against messages per second; see tuning/README.md).
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    pub output_batch_interval: Duration,
    /// Output a job may spool beyond what the server acknowledged as durable (e.g. 32M);
    /// past it the agent stops reading the job's pipes and the job blocks on write until the
    /// server catches up or comes back. Bounds the spool on disk and the server's unwritten
    /// output per job.
    #[arg(long, default_value = "32M", value_parser = parse_window)]
    pub output_window: u64,
    /// A working directory kept because its job left files in it (`<work-dir>/jobs/<job>-
    /// <attempt>`) is removed once nothing changed in it for this long.
    #[arg(long, default_value = "1d", value_parser = humantime::parse_duration)]
    pub keep_workdirs: Duration,
}

fn parse_batch_bytes(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("invalid byte count {s:?}"))?;
    if n == 0 || n > runner::MAX_BATCH_BYTES {
        return Err(format!(
            "{n} is out of range: an output batch is 1 to {} bytes (it is sent as one message)",
            runner::MAX_BATCH_BYTES
        ));
    }
    Ok(n)
}

fn parse_window(s: &str) -> Result<u64, String> {
    let n = hodei_core::spec::parse_size(s)?;
    if n < MIN_OUTPUT_WINDOW {
        return Err(format!(
            "the output window must be at least {MIN_OUTPUT_WINDOW} bytes (64K): a smaller one \
             makes a job wait for the server after every few KiB of output"
        ));
    }
    Ok(n)
}

/// The smallest `--output-window`: one pipe's worth.
const MIN_OUTPUT_WINDOW: u64 = 64 << 10;

fn parse_label(s: &str) -> Result<(String, String), String> {
    hodei_core::spec::parse_key_value(s)
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`). Shared by `hodei` and
/// `hodei-agent`.
pub fn init_logging() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Runs the agent until it has drained (after SIGINT/SIGTERM or the server's `Drain`).
///
/// # Errors
/// Bad flags (unreadable CA, unresolvable server address) and fatal registration refusals.
pub fn run(args: AgentArgs) -> Result<()> {
    if let Some(journal) = std::env::var_os(runner::GUARD_ENV) {
        // Started by an agent as its guard (`runner::Guard`): this process runs no job.
        return runner::serve_guard(std::path::Path::new(&journal)).context("the job guard failed");
    }
    std::fs::create_dir_all(&args.work_dir)
        .with_context(|| format!("cannot create work dir {}", args.work_dir.display()))?;
    // Before the runtime and its threads exist, and before any job: it also kills what an
    // earlier run of this agent left running.
    let guard = if args.noop {
        None
    } else {
        let dir = std::fs::canonicalize(&args.work_dir).unwrap_or_else(|_| args.work_dir.clone());
        match runner::Guard::start(&dir) {
            Ok(g) => Some(std::sync::Arc::new(g)),
            Err(e) => {
                tracing::warn!(
                    "cannot start the job guard; jobs will outlive a crash of this agent: {e}"
                );
                None
            }
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the agent runtime")?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, session::run(args, guard))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use super::AgentArgs;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: AgentArgs,
    }

    #[test]
    fn drain_timeout_defaults_to_30s_and_takes_human_durations() {
        let cli = Cli::try_parse_from(["agent"]).unwrap();
        assert_eq!(cli.args.drain_timeout, Duration::from_secs(30));
        let cli = Cli::try_parse_from(["agent", "--drain-timeout", "1m 30s"]).unwrap();
        assert_eq!(cli.args.drain_timeout, Duration::from_secs(90));
        let cli = Cli::try_parse_from(["agent", "--drain-timeout", "250ms"]).unwrap();
        assert_eq!(cli.args.drain_timeout, Duration::from_millis(250));
        assert!(Cli::try_parse_from(["agent", "--drain-timeout", "soon"]).is_err());
    }

    #[test]
    fn output_batch_bytes_is_bounded_by_one_message() {
        let parse = |v: &str| Cli::try_parse_from(["agent", "--output-batch-bytes", v]);
        assert_eq!(parse("1048576").unwrap().args.output_batch_bytes, 1 << 20);
        assert_eq!(parse("1").unwrap().args.output_batch_bytes, 1);
        for bad in ["1048577", "0", "100000000000"] {
            let err = parse(bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains("out of range"), "{bad}: {err}");
        }
    }

    #[test]
    fn output_window_takes_sizes_with_a_floor() {
        let parse = |v: &str| Cli::try_parse_from(["agent", "--output-window", v]);
        assert_eq!(
            Cli::try_parse_from(["agent"]).unwrap().args.output_window,
            32 << 20
        );
        assert_eq!(parse("2M").unwrap().args.output_window, 2 << 20);
        assert!(parse("4K").is_err());
    }
}
