//! `dispatch`: submit-acknowledged → job started on the agent, at a fixed rate, as
//! hdrhistogram percentiles (the agent stamps the start with the same wall clock). Then
//! jobs/s at saturation: a burst submitted in batches, timed until every job is final, with
//! its completions over time. Both with real `/bin/true` jobs and with agents in `--noop`
//! mode (dispatch overhead only). `--duration` bounds both phases.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use hodei_core::ids::JobId;
use hodei_core::spec::JobSpec;
use hodei_core::state::JobState;
use hodei_core::time::wall_now;
use serde_json::json;

use crate::cluster::{Client, Cluster};
use crate::output::{Outcome, OutputArgs, round3};
use crate::plot::{self, Bars};
use crate::spawn_rate::raw_spawn_rate;
use crate::timeline;

#[derive(clap::Args, Debug, Clone)]
pub struct DispatchArgs {
    /// The `hodei` binary (build it with `cargo build --release`).
    #[arg(long, default_value = "target/release/hodei")]
    pub hodei: PathBuf,
    /// Jobs in the fixed-rate phase (at most --rate × --duration).
    #[arg(long, default_value_t = 10_000)]
    pub jobs: usize,
    /// Submissions per second in the fixed-rate phase.
    #[arg(long, default_value_t = 1_000)]
    pub rate: u64,
    /// Jobs in the saturation phase (fewer if submitting them takes longer than --duration).
    #[arg(long, default_value_t = 10_000)]
    pub burst: usize,
    /// Jobs per submit request in the saturation phase.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Submit requests in flight in the saturation phase.
    #[arg(long, default_value_t = 8)]
    pub inflight: usize,
    /// The cluster under test.
    #[command(flatten)]
    pub fleet: crate::cluster::FleetArgs,
    /// Only this mode: `true` (real /bin/true jobs) or `noop`.
    #[arg(long)]
    pub mode: Option<String>,
    /// Bounds the fixed-rate phase (jobs = min(--jobs, --rate × this)) and the submitting
    /// of the burst, per mode.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Hard bound on the whole run; past it the run is stopped and fails.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Interval of the burst's completions-over-time series (default: ~200 points, ≥ 100ms).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub interval: Option<Duration>,
    #[command(flatten)]
    pub output: OutputArgs,
}

struct ModeResult {
    mode: &'static str,
    ack_to_start: Histogram<u64>,
    submit_to_start: Histogram<u64>,
    negative: u64,
    burst_jobs: usize,
    burst_jobs_per_s: f64,
    burst_secs: f64,
    /// Burst completions per second, per interval from the burst's first submit.
    burst_series: Vec<f64>,
}

pub async fn dispatch(args: DispatchArgs) -> Result<()> {
    let started = Instant::now();
    if !args.hodei.exists() {
        bail!(
            "{} not found: run `cargo build --release` first or pass --hodei",
            args.hodei.display()
        );
    }
    if args.jobs == 0 || args.rate == 0 || args.batch == 0 || args.inflight == 0 {
        bail!("--jobs, --rate, --batch and --inflight must be at least 1");
    }
    let modes: Vec<&'static str> = match args.mode.as_deref() {
        None => vec!["true", "noop"],
        Some("true") => vec!["true"],
        Some("noop") => vec!["noop"],
        Some(m) => bail!("unknown --mode {m:?}: use true or noop"),
    };
    let interval = args.interval.unwrap_or_else(|| {
        // The burst lasts about as long as its submitting, bounded by --duration.
        timeline::auto_interval(args.duration)
    });
    let mut results = Vec::new();
    for mode in modes {
        let cluster = Cluster::start(&args.hodei, &args.fleet, mode == "noop").await?;
        let client = Rc::new(cluster.client().await?);
        let r = run_mode(mode, &client, &args, interval).await;
        cluster.stop();
        results.push(r?);
    }
    // The machine's raw spawn rate, measured in the same run: as many spawners as slots,
    // each running /bin/true to completion, as fast as it can.
    let raw = raw_spawn_rate(args.fleet.total_slots(), args.burst, args.duration)?;
    let outcome = report(&args, &results, raw.per_s(), interval);
    crate::output::emit(outcome, &args.output, args.duration, started)
}

fn spec() -> JobSpec {
    JobSpec::exec("/bin/true", &[])
}

/// Fixed-rate jobs: --jobs, but no more than --rate × --duration.
fn fixed_rate_jobs(args: &DispatchArgs) -> usize {
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let by_time = (args.rate as f64 * args.duration.as_secs_f64()).floor() as usize;
    args.jobs.min(by_time).max(1)
}

async fn run_mode(
    mode: &'static str,
    client: &Rc<Client>,
    args: &DispatchArgs,
    interval: Duration,
) -> Result<ModeResult> {
    // Warm-up: connections, caches, agents' first spawns.
    let warm = client.submit(vec![spec(); 200]).await?;
    client.wait_all(&warm).await?;

    // Fixed rate: one job per request, each request on its own task, paced by the clock.
    let jobs = fixed_rate_jobs(args);
    let step = Duration::from_nanos(1_000_000_000 / args.rate.max(1));
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(jobs);
    for i in 0..jobs {
        tokio::time::sleep_until(start + step * u32::try_from(i).unwrap_or(u32::MAX)).await;
        let c = Rc::clone(client);
        tasks.push(tokio::task::spawn_local(async move {
            let sent = wall_now();
            let ids = c.submit(vec![spec()]).await?;
            let acked = wall_now();
            let id = *ids.first().context("no id")?;
            Ok::<_, anyhow::Error>((id, sent, acked))
        }));
    }
    let mut sent_at = HashMap::new();
    for t in tasks {
        let (id, sent, acked) = t.await??;
        sent_at.insert(id, (sent, acked));
    }
    let ids: Vec<JobId> = sent_at.keys().copied().collect();
    client.wait_all(&ids).await?;
    let mut ack_to_start = Histogram::<u64>::new(3)?;
    let mut submit_to_start = Histogram::<u64>::new(3)?;
    let mut negative = 0;
    for job in client.jobs().await? {
        let Some(&(sent, acked)) = sent_at.get(&job.id) else {
            continue;
        };
        let started = job
            .started_at
            .context("a finished job without a start time")?;
        if job.state != JobState::Succeeded {
            bail!("job {} ended {}", job.id, job.state);
        }
        // The submit's group commit also covers the assignment, so the agent may start the
        // job before the client has read its acknowledgement: that counts as 0.
        if started < acked {
            negative += 1;
        }
        ack_to_start.record(started.saturating_sub(acked))?;
        submit_to_start.record(started.saturating_sub(sent))?;
    }

    // Saturation: the burst in batches, --inflight requests at a time, submitted until the
    // burst is out or --duration passed, then timed until every job is final.
    let t0 = Instant::now();
    let t0_wall = wall_now();
    let deadline = t0 + args.duration;
    let mut left = args.burst;
    let mut inflight = VecDeque::new();
    let mut burst_ids = Vec::with_capacity(args.burst);
    while (left > 0 && Instant::now() < deadline) || !inflight.is_empty() {
        while left > 0 && inflight.len() < args.inflight && Instant::now() < deadline {
            let n = left.min(args.batch);
            left -= n;
            let c = Rc::clone(client);
            inflight.push_back(tokio::task::spawn_local(async move {
                c.submit(vec![spec(); n]).await
            }));
        }
        if let Some(first) = inflight.pop_front() {
            burst_ids.extend(first.await??);
        }
    }
    client.wait_all(&burst_ids).await?;
    let secs = t0.elapsed().as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let jps = burst_ids.len() as f64 / secs;
    let finished = finish_times(client, &burst_ids).await?;
    Ok(ModeResult {
        mode,
        ack_to_start,
        submit_to_start,
        negative,
        burst_jobs: burst_ids.len(),
        burst_jobs_per_s: jps,
        burst_secs: secs,
        burst_series: timeline::per_interval(&finished, t0_wall, interval),
    })
}

/// The finish times (wall µs) of `ids`, which must all have succeeded.
pub async fn finish_times(client: &Client, ids: &[JobId]) -> Result<Vec<u64>> {
    let want: HashSet<JobId> = ids.iter().copied().collect();
    let mut out = Vec::with_capacity(ids.len());
    for job in client.jobs().await? {
        if !want.contains(&job.id) {
            continue;
        }
        if job.state != JobState::Succeeded {
            bail!("job {} ended {}", job.id, job.state);
        }
        out.push(
            job.finished_at
                .context("a finished job without a finish time")?,
        );
    }
    if out.len() != want.len() {
        bail!("the server listed {} of the {} jobs", out.len(), want.len());
    }
    Ok(out)
}

#[allow(clippy::cast_precision_loss)]
fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

const QUANTILES: [(f64, &str, &str); 5] = [
    (0.5, "p50", "p50"),
    (0.9, "p90", "p90"),
    (0.99, "p99", "p99"),
    (0.999, "p999", "p99.9"),
    (1.0, "max", "max"),
];

fn report(
    args: &DispatchArgs,
    results: &[ModeResult],
    raw_spawn_per_s: f64,
    interval: Duration,
) -> Outcome {
    let fixed = fixed_rate_jobs(args);
    let params = json!({
        "jobs": fixed, "jobs_asked": args.jobs, "rate_per_s": args.rate, "burst": args.burst,
        "batch": args.batch, "inflight": args.inflight, "agents": args.fleet.agents,
        "slots": args.fleet.slots, "prefetch": args.fleet.prefetch, "commit_interval_ms": args.fleet.commit_interval.as_secs_f64() * 1000.0, "shards": args.fleet.shards, "duration_s": args.duration.as_secs_f64(),
        "modes": results.iter().map(|r| r.mode).collect::<Vec<_>>(),
        "series_interval_ms": interval.as_secs_f64() * 1000.0,
    });
    let line = format!(
        "{fixed} jobs at {}/s, burst of up to {} in batches of {} ({} in flight), \
         {} agents x {} slots (+{} prefetch), {} shards (commit interval {}), --duration {}",
        args.rate,
        args.burst,
        args.batch,
        args.inflight,
        args.fleet.agents,
        args.fleet.slots,
        args.fleet.prefetch,
        args.fleet.shards,
        humantime::format_duration(args.fleet.commit_interval),
        humantime::format_duration(args.duration)
    );
    let mut o = Outcome::new("dispatch", params, line);
    o.figure("raw_spawn_per_s", raw_spawn_per_s);
    let true_pct = results
        .iter()
        .find(|r| r.mode == "true")
        .map(|t| 100.0 * t.burst_jobs_per_s / raw_spawn_per_s);
    if let Some(p) = true_pct {
        o.figure("true_vs_raw_spawn_pct", p);
    }
    o.figure("series_interval_ms", interval.as_secs_f64() * 1000.0);
    for r in results {
        let p = r.mode;
        for (q, key, _) in QUANTILES {
            o.figure(format!("{p}_dispatch_{key}_ms"), ms(&r.ack_to_start, q));
            o.figure(
                format!("{p}_submit_to_start_{key}_ms"),
                ms(&r.submit_to_start, q),
            );
        }
        o.figure(format!("{p}_started_before_ack"), r.negative);
        o.figure(format!("{p}_fixed_rate_jobs"), r.ack_to_start.len());
        o.figure(format!("{p}_jobs_per_s"), r.burst_jobs_per_s);
        o.figure(format!("{p}_burst_jobs"), r.burst_jobs);
        o.figure(format!("{p}_burst_s"), round3(r.burst_secs));
        o.figure(
            format!("{p}_burst_series_jobs_per_s"),
            r.burst_series.clone(),
        );
    }
    o.table = table(results, raw_spawn_per_s, true_pct);
    o.plot("dispatch_latency.svg", latency_plot(results));
    let lines: Vec<_> = results
        .iter()
        .map(|r| timeline::line(&format!("{} jobs", r.mode), &r.burst_series, interval))
        .collect();
    o.plot(
        "burst_completions.svg",
        plot::line_chart(
            "burst: jobs finished over time",
            "seconds since the burst's first submit",
            "jobs finished per second",
            &lines,
            &[],
        ),
    );
    o
}

fn latency_plot(results: &[ModeResult]) -> String {
    let categories: Vec<String> = QUANTILES.iter().map(|q| q.2.to_owned()).collect();
    let bars: Vec<Bars> = results
        .iter()
        .map(|r| Bars {
            name: format!("{} jobs", r.mode),
            values: QUANTILES.iter().map(|q| ms(&r.ack_to_start, q.0)).collect(),
        })
        .collect();
    plot::bar_chart(
        "dispatch latency: submit acknowledged -> job started",
        "ms",
        &categories,
        &bars,
    )
}

fn table(results: &[ModeResult], raw_spawn_per_s: f64, true_pct: Option<f64>) -> Vec<String> {
    let mut t = vec![format!(
        "raw spawn rate of /bin/true here (same run, as many spawners as slots): \
         {raw_spawn_per_s:.0}/s"
    )];
    if let Some(p) = true_pct {
        t.push(format!("/bin/true jobs at saturation: {p:.1} % of it"));
    }
    t.push(format!(
        "{:<6} {:>28} {:>28} {:>10}",
        "", "ack -> started (ms)", "submit -> started (ms)", "burst"
    ));
    t.push(format!(
        "{:<6} {:>6} {:>6} {:>7} {:>7} {:>6} {:>6} {:>7} {:>7} {:>10}",
        "mode", "p50", "p99", "p99.9", "max", "p50", "p99", "p99.9", "max", "jobs/s"
    ));
    for r in results {
        let a = &r.ack_to_start;
        let s = &r.submit_to_start;
        t.push(format!(
            "{:<6} {:>6.3} {:>6.3} {:>7.3} {:>7.3} {:>6.3} {:>6.3} {:>7.3} {:>7.3} {:>10.0}",
            r.mode,
            ms(a, 0.5),
            ms(a, 0.99),
            ms(a, 0.999),
            ms(a, 1.0),
            ms(s, 0.5),
            ms(s, 0.99),
            ms(s, 0.999),
            ms(s, 1.0),
            r.burst_jobs_per_s
        ));
        t.push(format!(
            "       ({} of {} started before their ack reached the client; burst of {} took \
             {:.2} s)",
            r.negative,
            a.len(),
            r.burst_jobs,
            r.burst_secs
        ));
    }
    t
}
