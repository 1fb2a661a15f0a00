//! `throughput`: sustained end-to-end throughput. For `--duration`, `--inflight` submitters
//! each submit a batch and wait until all of its jobs are final, then submit the next: a
//! closed loop, so the backlog stays at most `--inflight` × `--batch` jobs and the run
//! measures what the cluster sustains, not how fast the queue grows. Afterwards the finish
//! times come from the job records, giving jobs/s overall and per interval. With real
//! `/bin/true` jobs the machine's raw spawn rate is measured in the same run, half before the
//! jobs and half after.

use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use hodei_core::ids::JobId;
use hodei_core::spec::JobSpec;
use hodei_core::time::wall_now;
use serde_json::json;

use crate::cluster::Cluster;
use crate::dispatch::finish_times;
use crate::output::{Outcome, OutputArgs, round3};
use crate::plot::{self, Line};
use crate::spawn_rate::{SpawnRate, raw_spawn_rate};
use crate::timeline;

#[derive(clap::Args, Debug, Clone)]
pub struct ThroughputArgs {
    /// The `hodei` binary (build it with `cargo build --release`).
    #[arg(long, default_value = "target/release/hodei")]
    pub hodei: PathBuf,
    /// Only this mode: `true` (real /bin/true jobs) or `noop` (agents in --noop mode).
    #[arg(long)]
    pub mode: Option<String>,
    /// How long to keep submitting, per mode (then the last batches finish).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Jobs per submit request.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Submitters, each with its own connection and one batch in flight.
    #[arg(long, default_value_t = 8)]
    pub inflight: usize,
    /// The cluster under test.
    #[command(flatten)]
    pub fleet: crate::cluster::FleetArgs,
    /// Jobs run before the clock starts.
    #[arg(long, default_value_t = 200)]
    pub warmup: usize,
    /// Interval of the throughput-over-time series (default: ~200 points, ≥ 100ms).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub interval: Option<Duration>,
    /// Hard bound on the whole run; past it the run is stopped and fails.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub output: OutputArgs,
}

struct ModeResult {
    mode: &'static str,
    jobs: usize,
    /// Jobs ÷ (first submit → last finish).
    jobs_per_s: f64,
    /// Jobs finished during the submitting window ÷ its length.
    steady_jobs_per_s: f64,
    /// End of submitting → last finish.
    drain_s: f64,
    /// First submit → last finish.
    span_s: f64,
    series: Vec<f64>,
    /// CPU time per job, µs, from the first submit to the last answer: the server's, the
    /// agents' own, and their jobs' (the agents' reaped children).
    server_cpu_us: f64,
    agents_cpu_us: f64,
    jobs_cpu_us: f64,
}

pub async fn throughput(args: ThroughputArgs) -> Result<()> {
    let started = Instant::now();
    if !args.hodei.exists() {
        bail!(
            "{} not found: run `cargo build --release --bin hodei` first or pass --hodei",
            args.hodei.display()
        );
    }
    if args.batch == 0 || args.inflight == 0 || args.duration.is_zero() {
        bail!("--batch, --inflight and --duration must be positive");
    }
    let modes: Vec<&'static str> = match args.mode.as_deref() {
        None => vec!["noop", "true"],
        Some("true") => vec!["true"],
        Some("noop") => vec!["noop"],
        Some(m) => bail!("unknown --mode {m:?}: use true or noop"),
    };
    let interval = args
        .interval
        .unwrap_or_else(|| timeline::auto_interval(args.duration));
    // The raw spawn rate is measured right before and right after the `/bin/true` jobs, half
    // the duration each, with as many spawners as slots, so that a drift of the machine's
    // speed during the run weighs on both sides alike.
    let spawners = args.fleet.total_slots();
    let mut raw = None;
    let mut results = Vec::new();
    for mode in &modes {
        let before = if *mode == "true" {
            Some(raw_spawn_rate(spawners, usize::MAX, args.duration / 2)?)
        } else {
            None
        };
        if !args.output.json {
            eprintln!("throughput: {mode} jobs for {:?}…", args.duration);
        }
        let cluster = Cluster::start(&args.hodei, &args.fleet, *mode == "noop").await?;
        let r = run_mode(mode, &cluster, &args, interval).await;
        cluster.stop();
        results.push(r?);
        if let Some(before) = before {
            let after = raw_spawn_rate(spawners, usize::MAX, args.duration / 2)?;
            raw = Some((before, after));
        }
    }
    let outcome = report(&args, &results, raw.as_ref(), interval);
    crate::output::emit(outcome, &args.output, args.duration, started)
}

fn spec() -> JobSpec {
    JobSpec::exec("/bin/true", &[])
}

async fn run_mode(
    mode: &'static str,
    cluster: &Cluster,
    args: &ThroughputArgs,
    interval: Duration,
) -> Result<ModeResult> {
    let client = Rc::new(cluster.client().await?);
    if args.warmup > 0 {
        let warm = client.submit(vec![spec(); args.warmup]).await?;
        client.wait_all(&warm).await?;
    }
    // One connection per submitter: its batch's Waits take up to --batch streams, and a
    // connection allows 100 at once, so sharing one would stall the other submitters.
    let mut conns = Vec::with_capacity(args.inflight);
    for _ in 0..args.inflight {
        conns.push(Rc::new(cluster.client().await?));
    }
    let t0 = Instant::now();
    let t0_wall = wall_now();
    let cpu0 = cluster.cpu();
    let deadline = t0 + args.duration;
    let batch = args.batch;
    let submitters: Vec<_> = conns
        .into_iter()
        .map(|c| {
            tokio::task::spawn_local(async move {
                let mut ids: Vec<JobId> = Vec::new();
                while Instant::now() < deadline {
                    ids.extend(c.submit_wait(vec![spec(); batch]).await?.ids);
                }
                Ok::<_, anyhow::Error>(ids)
            })
        })
        .collect();
    let mut ids = Vec::new();
    for s in submitters {
        ids.extend(s.await??);
    }
    let cpu1 = cluster.cpu();
    #[allow(clippy::cast_precision_loss)]
    let per_job = |secs: f64| 1e6 * secs / ids.len().max(1) as f64;
    let (server_cpu, agents_cpu) = (cpu1.0 - cpu0.0, cpu1.1 - cpu0.1);
    let finished = finish_times(&client, &ids).await?;
    let last = finished.iter().copied().max().unwrap_or(t0_wall);
    #[allow(clippy::cast_precision_loss)]
    let span_s = last.saturating_sub(t0_wall) as f64 / 1e6;
    let window_end = t0_wall + u64::try_from(args.duration.as_micros()).unwrap_or(u64::MAX);
    let in_window = finished.iter().filter(|&&f| f <= window_end).count();
    #[allow(clippy::cast_precision_loss)]
    let (jobs_per_s, steady) = (
        ids.len() as f64 / span_s.max(1e-6),
        in_window as f64 / args.duration.as_secs_f64(),
    );
    #[allow(clippy::cast_precision_loss)]
    let drain_s = last.saturating_sub(window_end) as f64 / 1e6;
    Ok(ModeResult {
        mode,
        jobs: ids.len(),
        jobs_per_s,
        steady_jobs_per_s: steady,
        drain_s,
        span_s,
        series: timeline::per_interval(&finished, t0_wall, interval),
        server_cpu_us: per_job(server_cpu.own),
        agents_cpu_us: per_job(agents_cpu.own),
        jobs_cpu_us: per_job(agents_cpu.children),
    })
}

fn report(
    args: &ThroughputArgs,
    results: &[ModeResult],
    raw: Option<&(SpawnRate, SpawnRate)>,
    interval: Duration,
) -> Outcome {
    let params = json!({
        "modes": results.iter().map(|r| r.mode).collect::<Vec<_>>(),
        "duration_s": args.duration.as_secs_f64(), "batch": args.batch,
        "inflight": args.inflight, "agents": args.fleet.agents, "slots": args.fleet.slots, "prefetch": args.fleet.prefetch,
        "commit_interval_ms": args.fleet.commit_interval.as_secs_f64() * 1000.0,
        "shards": args.fleet.shards, "warmup": args.warmup,
        "series_interval_ms": interval.as_secs_f64() * 1000.0,
    });
    let line = format!(
        "submitting for {} per mode, {} submitters x batches of {} (each waits for its batch), \
         {} agents x {} slots (+{} prefetch), {} shards (commit interval {}), {} warm-up jobs, \
         series every {}",
        humantime::format_duration(args.duration),
        args.inflight,
        args.batch,
        args.fleet.agents,
        args.fleet.slots,
        args.fleet.prefetch,
        args.fleet.shards,
        humantime::format_duration(args.fleet.commit_interval),
        args.warmup,
        humantime::format_duration(interval)
    );
    let mut o = Outcome::new("throughput", params, line);
    o.figure("series_interval_ms", interval.as_secs_f64() * 1000.0);
    o.table.push(format!(
        "{:<6} {:>9} {:>10} {:>14} {:>9} {:>9} {:>22}",
        "mode", "jobs", "jobs/s", "steady jobs/s", "drain s", "span s", "CPU µs/job srv/agt/job"
    ));
    for r in results {
        let m = r.mode;
        o.figure(format!("{m}_jobs"), r.jobs);
        o.figure(format!("{m}_jobs_per_s"), round3(r.jobs_per_s));
        o.figure(
            format!("{m}_steady_jobs_per_s"),
            round3(r.steady_jobs_per_s),
        );
        o.figure(format!("{m}_drain_s"), round3(r.drain_s));
        o.figure(format!("{m}_span_s"), round3(r.span_s));
        o.figure(format!("{m}_series_jobs_per_s"), r.series.clone());
        o.figure(
            format!("{m}_server_cpu_us_per_job"),
            round3(r.server_cpu_us),
        );
        o.figure(
            format!("{m}_agents_cpu_us_per_job"),
            round3(r.agents_cpu_us),
        );
        o.figure(format!("{m}_jobs_cpu_us_per_job"), round3(r.jobs_cpu_us));
        let cpu = format!(
            "{:.0} / {:.0} / {:.0}",
            r.server_cpu_us, r.agents_cpu_us, r.jobs_cpu_us
        );
        o.table.push(format!(
            "{m:<6} {:>9} {:>10.0} {:>14.0} {:>9.3} {:>9.3} {cpu:>22}",
            r.jobs, r.jobs_per_s, r.steady_jobs_per_s, r.drain_s, r.span_s
        ));
    }
    let mut lines: Vec<Line> = results
        .iter()
        .map(|r| timeline::line(&format!("{} jobs", r.mode), &r.series, interval))
        .collect();
    if let Some((before, after)) = raw {
        let raw = before.pooled(after);
        o.figure("raw_spawn_per_s", round3(raw.per_s()));
        o.figure("raw_spawn_before_per_s", round3(before.per_s()));
        o.figure("raw_spawn_after_per_s", round3(after.per_s()));
        o.figure("raw_spawn_s", round3(raw.secs));
        o.figure("raw_spawns", raw.spawned);
        o.table.push(format!(
            "raw /bin/true spawn rate here (same run, {} spawners, before and after the jobs): \
             {:.0}/s ({:.0} before, {:.0} after)",
            args.fleet.total_slots(),
            raw.per_s(),
            before.per_s(),
            after.per_s()
        ));
        if let Some(t) = results.iter().find(|r| r.mode == "true") {
            let pct = 100.0 * t.jobs_per_s / raw.per_s();
            o.figure("true_vs_raw_spawn_pct", round3(pct));
            o.table
                .push(format!("/bin/true jobs: {pct:.1} % of the raw spawn rate"));
        }
        let end = results.iter().map(|r| r.span_s).fold(0.0, f64::max);
        lines.push(Line {
            name: "raw /bin/true spawns".into(),
            points: vec![(0.0, raw.per_s()), (end, raw.per_s())],
        });
    }
    o.plot(
        "throughput.svg",
        plot::line_chart(
            "throughput: jobs finished over time",
            "seconds since the first submit",
            "jobs finished per second",
            &lines,
            &[],
        ),
    );
    o
}
