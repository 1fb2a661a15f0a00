//! `heartbeats`: a fleet of simulated agents against a throwaway server, through the fleet
//! simulator `hodei-loadtest` (crate `loadtest/`). It runs `hodei-loadtest --spawn-server
//! <hodei> --json` with the forwarded flags, in its own process group (so its server goes
//! with it on every exit path), and re-keys its figures. loadtest reports no time series, so
//! the plots are percentile bars.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::output::{Outcome, OutputArgs};
use crate::plot::{self, Bars};
use crate::procs::{self, Proc};

#[derive(clap::Args, Debug, Clone)]
pub struct HeartbeatsArgs {
    /// The fleet simulator (`cargo build --release -p hodei-loadtest`).
    #[arg(long, default_value = "target/release/hodei-loadtest")]
    pub loadtest: PathBuf,
    /// The `hodei` binary it starts as the server.
    #[arg(long, default_value = "target/release/hodei")]
    pub hodei: PathBuf,
    /// Simulated agents (one QUIC connection each).
    #[arg(long, default_value_t = 10_000)]
    pub agents: usize,
    /// Heartbeat interval of every agent.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,
    /// The whole loadtest run, connect phase included (loadtest's --duration).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Spread the agents' first connection attempts over this long.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub ramp: Duration,
    /// Longest connect phase (loadtest's default: half of --duration).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub connect_timeout: Option<Duration>,
    /// Handshakes in flight at once, whole fleet.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// What an agent does with an assignment: `noop` or `sleep:DUR`.
    #[arg(long, default_value = "noop")]
    pub job: String,
    /// Jobs per second submitted during the steady phase (0: none).
    #[arg(long, default_value_t = 0.0)]
    pub submit_rate: f64,
    /// Shard-loop probes per second (a round trip through the shard loop, beside the
    /// server's own heartbeat handling figure; 0: none).
    #[arg(long, default_value_t = 200.0)]
    pub probe_rate: f64,
    /// Fleet threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Server shards (default: the server's own, one per core).
    #[arg(long)]
    pub shards: Option<usize>,
    /// Extra argument for the server (repeatable), e.g. `--server-arg=--heartbeat=100ms`.
    #[arg(long, allow_hyphen_values = true)]
    pub server_arg: Vec<String>,
    /// Print loadtest's status line every second (on stderr).
    #[arg(long)]
    pub progress: bool,
    /// Hard bound on the whole run (default: --duration + 2m); past it the run is stopped
    /// and fails.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    #[command(flatten)]
    pub output: OutputArgs,
}

impl HeartbeatsArgs {
    pub fn timeout(&self) -> Duration {
        self.timeout
            .unwrap_or(self.duration + Duration::from_secs(120))
    }
}

/// (our key, loadtest's key, label). Ours follow the names; the rest are loadtest's.
const FIGURES: &[(&str, &str, &str)] = &[
    ("agents", "agents", "simulated agents"),
    (
        "connections",
        "connections",
        "agents welcomed at least once",
    ),
    (
        "connections_live_at_end",
        "connections_live_at_end",
        "agents connected at the end",
    ),
    (
        "connect_time_s",
        "connect_time_s",
        "start -> last agent's first Welcome (s)",
    ),
    (
        "connect_p50_ms",
        "connect_p50_ms",
        "connect, per agent, p50 (ms)",
    ),
    (
        "connect_p99_ms",
        "connect_p99_ms",
        "connect, per agent, p99 (ms)",
    ),
    (
        "connect_failures",
        "connect_failures",
        "connect attempts without a Welcome",
    ),
    (
        "disconnects",
        "disconnects",
        "connections lost before the stop",
    ),
    ("steady_s", "steady_s", "steady phase (s)"),
    (
        "heartbeats_per_s",
        "heartbeats_per_s",
        "heartbeats sent per second",
    ),
    (
        "heartbeats_expected_per_s",
        "heartbeats_expected_per_s",
        "live agents / interval",
    ),
    (
        "heartbeat_handling_p50_ms",
        "server_heartbeat_p50_ms",
        "heartbeat handling, decoded -> applied (server's own figure) p50 (ms)",
    ),
    (
        "heartbeat_handling_p90_ms",
        "server_heartbeat_p90_ms",
        "heartbeat handling, decoded -> applied (server's own figure) p90 (ms)",
    ),
    (
        "heartbeat_handling_p99_ms",
        "server_heartbeat_p99_ms",
        "heartbeat handling, decoded -> applied (server's own figure) p99 (ms)",
    ),
    (
        "heartbeat_handling_p999_ms",
        "server_heartbeat_p999_ms",
        "heartbeat handling, decoded -> applied (server's own figure) p99.9 (ms)",
    ),
    (
        "heartbeat_handling_max_ms",
        "server_heartbeat_max_ms",
        "heartbeat handling, decoded -> applied (server's own figure) max (ms)",
    ),
    (
        "probe_rtt_p50_ms",
        "probe_rtt_p50_ms",
        "shard-loop probe round trip p50 (ms)",
    ),
    (
        "probe_rtt_p90_ms",
        "probe_rtt_p90_ms",
        "shard-loop probe round trip p90 (ms)",
    ),
    (
        "probe_rtt_p99_ms",
        "probe_rtt_p99_ms",
        "shard-loop probe round trip p99 (ms)",
    ),
    (
        "probe_rtt_p999_ms",
        "probe_rtt_p999_ms",
        "shard-loop probe round trip p99.9 (ms)",
    ),
    (
        "probe_rtt_max_ms",
        "probe_rtt_max_ms",
        "shard-loop probe round trip max (ms)",
    ),
    (
        "store_commit_p99_ms",
        "server_store_commit_p99_ms",
        "store commit (write + fdatasync) p99 (ms)",
    ),
    ("probe_errors", "probe_errors", "probes failed or timed out"),
    (
        "jobs_per_s",
        "jobs_per_s",
        "jobs finished per second (with --submit-rate)",
    ),
    (
        "dispatch_p50_ms",
        "dispatch_p50_ms",
        "dispatch ack -> Assign p50 (ms)",
    ),
    (
        "dispatch_p99_ms",
        "dispatch_p99_ms",
        "dispatch ack -> Assign p99 (ms)",
    ),
    (
        "server_rss_mib",
        "server_rss_mib",
        "server RSS at the end (MiB)",
    ),
    (
        "server_rss_idle_mib",
        "server_rss_idle_mib",
        "server RSS, connected and idle (MiB)",
    ),
    (
        "server_rss_peak_mib",
        "server_rss_peak_mib",
        "server peak RSS (MiB)",
    ),
    (
        "server_rss_per_agent_kib",
        "server_rss_per_agent_kib",
        "server RSS per connection (KiB)",
    ),
    (
        "server_cpu_pct",
        "server_cpu_pct",
        "server CPU, steady phase (% of a core)",
    ),
    (
        "server_cpu_connect_pct",
        "server_cpu_connect_pct",
        "server CPU, connect phase (%)",
    ),
    (
        "server_udp_drops_steady",
        "server_udp_drops_steady",
        "server UDP drops, steady phase",
    ),
    (
        "loadgen_cpu_pct",
        "loadgen_cpu_pct",
        "load generator CPU (% of a core)",
    ),
];

pub async fn heartbeats(args: HeartbeatsArgs) -> Result<()> {
    let started = Instant::now();
    for (path, build) in [
        (&args.loadtest, "cargo build --release -p hodei-loadtest"),
        (&args.hodei, "cargo build --release --bin hodei"),
    ] {
        if !path.is_file() {
            bail!("{} not found: run `{build}` first", path.display());
        }
    }
    let lt = run_loadtest(&args).await?;
    let outcome = report(&args, &lt);
    crate::output::emit(outcome, &args.output, args.duration, started)
}

/// Runs loadtest and returns its JSON object.
async fn run_loadtest(args: &HeartbeatsArgs) -> Result<Value> {
    let dir = procs::TempDir::new("heartbeats")?;
    let out_path = dir.0.join("loadtest.json");
    let stdout = std::fs::File::create(&out_path)
        .with_context(|| format!("cannot create {}", out_path.display()))?;
    let mut cmd = Command::new(&args.loadtest);
    cmd.arg("--spawn-server")
        .arg(&args.hodei)
        .args(["--agents", &args.agents.to_string()])
        .args([
            "--heartbeat",
            &humantime::format_duration(args.heartbeat).to_string(),
        ])
        .args([
            "--duration",
            &humantime::format_duration(args.duration).to_string(),
        ])
        .args(["--ramp", &humantime::format_duration(args.ramp).to_string()])
        .args([
            "--connect-concurrency",
            &args.connect_concurrency.to_string(),
        ])
        .args(["--job", &args.job])
        .args(["--submit-rate", &args.submit_rate.to_string()])
        .args(["--probe-rate", &args.probe_rate.to_string()])
        .args(["--threads", &args.threads.to_string()])
        .arg("--json");
    if let Some(t) = args.connect_timeout {
        cmd.args([
            "--connect-timeout",
            &humantime::format_duration(t).to_string(),
        ]);
    }
    if let Some(n) = args.shards {
        cmd.args(["--shards", &n.to_string()]);
    }
    for a in &args.server_arg {
        cmd.arg(format!("--server-arg={a}"));
    }
    if args.progress {
        cmd.arg("--progress");
    }
    // Its stdout to a file: it writes the JSON only at the end, and we only poll its exit.
    cmd.stdin(Stdio::null()).stdout(stdout);
    if !args.output.json {
        eprintln!(
            "heartbeats: {} agents for {}…",
            args.agents,
            humantime::format_duration(args.duration)
        );
    }
    // Declared before `proc` so that it is dropped after it: the dir goes once loadtest is
    // dead.
    let server_dir;
    let mut proc = Proc::spawn(&mut cmd, "hodei-loadtest")?;
    // loadtest's server data dir (loadtest/src/spawn.rs): killed, loadtest cannot remove it.
    let path = std::env::temp_dir().join(format!("hodei-loadtest-{}", proc.id()));
    procs::register_dir(path.clone());
    server_dir = procs::TempDir(path);
    let status = proc.wait().await?;
    if !status.success() {
        bail!("hodei-loadtest failed ({status}); its error is above");
    }
    let text = std::fs::read_to_string(&out_path)
        .with_context(|| format!("cannot read {}", out_path.display()))?;
    drop(server_dir);
    serde_json::from_str(text.trim()).context("hodei-loadtest's output is not one JSON object")
}

fn report(args: &HeartbeatsArgs, lt: &Value) -> Outcome {
    let params = json!({
        "agents": args.agents, "heartbeat_ms": args.heartbeat.as_secs_f64() * 1000.0,
        "duration_s": args.duration.as_secs_f64(), "ramp_s": args.ramp.as_secs_f64(),
        "connect_timeout_s": args.connect_timeout.map(|d| d.as_secs_f64()),
        "connect_concurrency": args.connect_concurrency, "job": args.job,
        "submit_rate_per_s": args.submit_rate, "probe_rate_per_s": args.probe_rate,
        "threads": args.threads, "shards": args.shards, "server_args": args.server_arg,
        "loadtest_params": lt.get("params"),
    });
    let line = format!(
        "{} agents heartbeating every {} for {} (ramp {}, {} handshakes in flight), jobs {} at \
         {}/s, {} probes/s, {} fleet threads, shards {}, server args {:?}",
        args.agents,
        humantime::format_duration(args.heartbeat),
        humantime::format_duration(args.duration),
        humantime::format_duration(args.ramp),
        args.connect_concurrency,
        args.job,
        args.submit_rate,
        args.probe_rate,
        args.threads,
        args.shards
            .map_or_else(|| "server default".to_owned(), |n| n.to_string()),
        args.server_arg
    );
    let mut o = Outcome::new("heartbeats", params, line);
    for (ours, theirs, label) in FIGURES {
        o.shown(label, ours, lt.get(*theirs).cloned().unwrap_or(Value::Null));
    }
    // Everything loadtest measured, for whoever needs a figure not re-keyed above.
    o.figure("loadtest", lt.clone());
    let percentiles = |prefix: &str| -> Vec<f64> {
        ["p50", "p90", "p99", "p999", "max"]
            .iter()
            .map(|q| {
                lt.get(format!("{prefix}_{q}_ms"))
                    .and_then(Value::as_f64)
                    .unwrap_or(f64::NAN)
            })
            .collect()
    };
    let categories: Vec<String> = ["p50", "p90", "p99", "p99.9", "max"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let charts = [
        (
            "heartbeat_handling.svg",
            "heartbeat handling: decoded -> applied by its shard (server's figure)",
            "server_heartbeat",
            "handling",
        ),
        (
            "probe_rtt.svg",
            "shard-loop probe round trip (GetJob of an absent id)",
            "probe_rtt",
            "probe RTT",
        ),
        (
            "connect.svg",
            "connect: first attempt -> Welcome, per agent",
            "connect",
            "connect",
        ),
        (
            "dispatch.svg",
            "dispatch: submit acknowledged -> Assign read",
            "dispatch",
            "dispatch",
        ),
    ];
    for (file, title, prefix, name) in charts {
        let values = percentiles(prefix);
        // Dispatch only has samples with --submit-rate.
        if values.iter().all(|v| !v.is_finite()) {
            continue;
        }
        let bars = [Bars {
            name: name.to_owned(),
            values,
        }];
        o.plot(file, plot::bar_chart(title, "ms", &categories, &bars));
    }
    o
}
