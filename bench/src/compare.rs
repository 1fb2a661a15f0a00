//! `compare`: the same workloads on Hodei and on HyperQueue, one after the other in the same
//! run, on the same cores, with the same number of workers and slots; printed side by side.
//!
//! - Throughput: N `/bin/true` jobs submitted as one batch, timed from the first submit until
//!   the client has seen every job finish. Hodei: `SubmitWait` requests of `--batch` specs,
//!   all in flight at once, each answered as its jobs end. HyperQueue: one job of N tasks (the Python
//!   API builds a task-graph job; it has no job arrays), its status polled every `--hq-poll`.
//! - Latency: `--latency-jobs` single `/bin/true` jobs one after the other, each timed from
//!   submit until the client sees it finished. Hodei: one `SubmitWait` (answered when the
//!   job is final). HyperQueue: a one-task job, its status polled every `--hq-latency-poll`.
//!
//! Hodei runs as real `hodei server` and `hodei agent` processes ([`Cluster`]). HyperQueue
//! runs through `bench/hq/hq_bench.py` (embedded in this binary): `hyperqueue.LocalCluster`
//! starts a real HQ server and workers as threads of a Python process, which first moves into
//! a private loopback-only network namespace because the HQ server binds 0.0.0.0. If
//! HyperQueue cannot run, the command fails; it never reports HQ figures it did not measure.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use hodei_core::ids::JobId;
use hodei_core::spec::JobSpec;
use hodei_core::state::JobState;
use serde_json::{Value, json};

use crate::cluster::{Client, Cluster, FleetArgs};
use crate::output::{Outcome, OutputArgs};
use crate::plot::{self, Bars};
use crate::procs::{Proc, TempDir};

/// The HyperQueue driver, written to a temporary file at run time.
const HQ_DRIVER: &str = include_str!("../hq/hq_bench.py");

#[derive(clap::Args, Debug, Clone)]
pub struct CompareArgs {
    /// The `hodei` binary (build it with `cargo build --release`).
    #[arg(long, default_value = "target/release/hodei")]
    hodei: PathBuf,
    /// The Python interpreter that has `hyperqueue` (0.27.0) installed.
    #[arg(long, default_value = "python3")]
    python: PathBuf,
    /// `/bin/true` jobs in the throughput workload.
    #[arg(long, default_value_t = 10_000)]
    jobs: usize,
    /// Sequential single jobs in the latency workload.
    #[arg(long, default_value_t = 50)]
    latency_jobs: usize,
    /// Workers: Hodei agents, HyperQueue workers.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Slots per worker: Hodei `--slots`, HyperQueue worker cpus (each task takes 1 cpu).
    #[arg(long, default_value_t = 4)]
    slots: u32,
    /// Hodei server shards.
    #[arg(long, default_value_t = 2)]
    shards: usize,
    /// Hodei: jobs per submit request in the throughput workload.
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// Warm-up jobs run on each system before measuring.
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    /// HyperQueue: status polling interval in the throughput workload.
    #[arg(long, default_value = "5ms", value_parser = humantime::parse_duration)]
    hq_poll: Duration,
    /// HyperQueue: status polling interval in the latency workload.
    #[arg(long, default_value = "1ms", value_parser = humantime::parse_duration)]
    hq_latency_poll: Duration,
    /// Bound on the whole run (both systems); past it the run fails.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    #[command(flatten)]
    output: OutputArgs,
}

/// What one system measured.
struct Side {
    /// Seconds from the first submit until every job was seen finished.
    throughput_s: f64,
    /// Seconds from the first submit until the whole batch was acknowledged.
    submit_acked_s: f64,
    /// Submit → seen finished, µs.
    latency: Histogram<u64>,
}

impl Side {
    #[allow(clippy::cast_precision_loss)]
    fn jobs_per_s(&self, jobs: usize) -> f64 {
        jobs as f64 / self.throughput_s
    }
}

pub async fn compare(args: CompareArgs) -> Result<()> {
    let started = Instant::now();
    if args.jobs == 0 || args.latency_jobs == 0 || args.workers == 0 || args.slots == 0 {
        bail!("--jobs, --latency-jobs, --workers and --slots must be at least 1");
    }
    if !args.hodei.exists() {
        bail!(
            "{} not found: run `cargo build --release -p hodei` first or pass --hodei",
            args.hodei.display()
        );
    }
    let deadline = started + args.duration;
    let load = load_1m();
    let tmp = TempDir::new("compare")?;
    let driver = tmp.0.join("hq_bench.py");
    std::fs::write(&driver, HQ_DRIVER)
        .with_context(|| format!("cannot write {}", driver.display()))?;

    // Fail early, before minutes of Hodei work, if HyperQueue cannot run here.
    let check = run_driver(&args, &driver, &tmp.0, true, deadline).await?;
    let hq_version = check
        .get("hq_version")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_owned();
    if !args.output.json {
        eprintln!("HyperQueue {hq_version} runs here; measuring Hodei…");
    }

    let hodei = run_hodei(&args, deadline).await?;
    if !args.output.json {
        eprintln!("measuring HyperQueue…");
    }
    let hq_out = run_driver(&args, &driver, &tmp.0, false, deadline).await?;
    let hq = hq_side(&hq_out)?;
    let outcome = report(&args, &hodei, &hq, &hq_version, load);
    crate::output::emit(outcome, &args.output, args.duration, started)
}

fn remaining(deadline: Instant) -> Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        bail!("the --duration bound passed");
    }
    Ok(left)
}

// --- Hodei -------------------------------------------------------------------------------

async fn run_hodei(args: &CompareArgs, deadline: Instant) -> Result<Side> {
    let fleet = FleetArgs::plain(args.workers, args.slots, args.shards);
    let cluster = Cluster::start(&args.hodei, &fleet, false)
        .await
        .context("cannot start the Hodei cluster")?;
    let result = match cluster.client().await {
        Ok(client) => {
            let client = Rc::new(client);
            match tokio::time::timeout(remaining(deadline)?, hodei_workloads(&client, args)).await {
                Ok(r) => r,
                Err(_) => Err(anyhow::anyhow!(
                    "Hodei did not finish within --duration {}",
                    humantime::format_duration(args.duration)
                )),
            }
        }
        Err(e) => Err(e),
    };
    cluster.stop();
    result
}

fn true_spec() -> JobSpec {
    JobSpec::exec("/bin/true", &[])
}

async fn hodei_workloads(client: &Rc<Client>, args: &CompareArgs) -> Result<Side> {
    if args.warmup > 0 {
        let warm = client.submit(vec![true_spec(); args.warmup]).await?;
        client.wait_all(&warm).await?;
    }

    // Throughput: every batch in flight at once, then wait for all.
    let t0 = Instant::now();
    let mut submits = Vec::new();
    let mut left = args.jobs;
    while left > 0 {
        let n = left.min(args.batch.max(1));
        left -= n;
        let c = Rc::clone(client);
        submits.push(tokio::task::spawn_local(async move {
            c.submit_wait(vec![true_spec(); n]).await
        }));
    }
    let mut ids = Vec::with_capacity(args.jobs);
    let mut last_ack = t0;
    for s in submits {
        let w = s.await??;
        last_ack = last_ack.max(w.acked);
        ids.extend(w.ids);
    }
    let throughput_s = t0.elapsed().as_secs_f64();
    let submit_acked_s = last_ack.duration_since(t0).as_secs_f64();
    check_succeeded(client, &ids).await?;

    // Latency: one job at a time, submitted and waited for in one request.
    let mut latency = Histogram::<u64>::new(3)?;
    for i in 0..args.latency_jobs {
        let t = Instant::now();
        let w = client.submit_wait(vec![true_spec()]).await?;
        let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
        let job = w.jobs.first().context("the server answered no job")?;
        if job.state != JobState::Succeeded {
            bail!("Hodei latency job {i} ({}) ended {}", job.id, job.state);
        }
        latency.record(us)?;
    }
    Ok(Side {
        throughput_s,
        submit_acked_s,
        latency,
    })
}

async fn check_succeeded(client: &Client, ids: &[JobId]) -> Result<()> {
    let want: HashSet<JobId> = ids.iter().copied().collect();
    let mut ok = 0usize;
    for job in client.jobs().await? {
        if want.contains(&job.id) {
            if job.state != JobState::Succeeded {
                bail!("Hodei job {} ended {}", job.id, job.state);
            }
            ok += 1;
        }
    }
    if ok != want.len() {
        bail!("the server listed {ok} of the {} Hodei jobs", want.len());
    }
    Ok(())
}

// --- HyperQueue ----------------------------------------------------------------------------

/// Runs the Python driver (`check`: only whether HQ can run) and returns its JSON result.
async fn run_driver(
    args: &CompareArgs,
    driver: &Path,
    dir: &Path,
    check: bool,
    deadline: Instant,
) -> Result<Value> {
    let left = remaining(deadline)?;
    let out = dir.join(if check { "check.json" } else { "hq.json" });
    let log = dir.join(if check { "check.log" } else { "hq.log" });
    let _ = std::fs::remove_file(&out);
    let stdout = std::fs::File::create(dir.join("hq-stdout.log"))?;
    let stderr = std::fs::File::create(&log)?;
    let mut cmd = std::process::Command::new(&args.python);
    cmd.arg(driver)
        .arg("--out")
        .arg(&out)
        .args(["--workers", &args.workers.to_string()])
        .args(["--slots", &args.slots.to_string()])
        .args(["--jobs", &args.jobs.to_string()])
        .args(["--latency-jobs", &args.latency_jobs.to_string()])
        .args(["--warmup", &args.warmup.to_string()])
        .args(["--poll-ms", &ms_arg(args.hq_poll)])
        .args(["--latency-poll-ms", &ms_arg(args.hq_latency_poll)])
        .args(["--deadline-s", &format!("{:.3}", left.as_secs_f64())])
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    if check {
        cmd.arg("--check");
    }
    let what = format!(
        "the HyperQueue driver: {} (pass --python)",
        args.python.display()
    );
    // Its own process group, killed when `proc` is dropped: on every error path below.
    let mut proc = Proc::spawn(&mut cmd, &what).context("HyperQueue cannot run")?;
    // The driver stops itself at the deadline; this is the backstop.
    let status = match tokio::time::timeout(left + Duration::from_secs(5), proc.wait()).await {
        Ok(s) => s?,
        Err(_) => {
            proc.kill();
            bail!(
                "HyperQueue did not finish within --duration {}",
                humantime::format_duration(args.duration)
            );
        }
    };
    if !status.success() {
        let tail = tail(&std::fs::read_to_string(&log).unwrap_or_default(), 15);
        match status.code() {
            Some(3) => bail!("HyperQueue cannot run here: {tail}"),
            Some(4) => bail!("HyperQueue did not finish within --duration: {tail}"),
            _ => bail!("the HyperQueue run failed ({status}):\n{tail}"),
        }
    }
    let text = std::fs::read_to_string(&out)
        .with_context(|| format!("the HyperQueue driver wrote no result to {}", out.display()))?;
    serde_json::from_str(&text).context("the HyperQueue driver's result is not JSON")
}

fn ms_arg(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.trim_end().lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn hq_side(v: &Value) -> Result<Side> {
    let num = |k: &str| {
        v.get(k)
            .and_then(Value::as_f64)
            .with_context(|| format!("the HyperQueue result lacks {k}"))
    };
    let mut latency = Histogram::<u64>::new(3)?;
    for x in v
        .get("latency_us")
        .and_then(Value::as_array)
        .context("the HyperQueue result lacks latency_us")?
    {
        let us = x.as_f64().context("a latency that is not a number")?;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        latency.record(us.max(0.0).round() as u64)?;
    }
    if latency.is_empty() {
        bail!("the HyperQueue result has no latencies");
    }
    Ok(Side {
        throughput_s: num("throughput_s")?,
        submit_acked_s: num("throughput_submit_s")?,
        latency,
    })
}

// --- Report --------------------------------------------------------------------------------

fn load_1m() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[allow(clippy::cast_precision_loss)]
fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// (key, label, Hodei, HyperQueue): ratios are Hodei ÷ HyperQueue.
fn figures(args: &CompareArgs, h: &Side, q: &Side) -> Vec<(&'static str, &'static str, f64, f64)> {
    vec![
        (
            "jobs_per_s",
            "throughput (jobs/s)",
            h.jobs_per_s(args.jobs),
            q.jobs_per_s(args.jobs),
        ),
        (
            "throughput_s",
            "throughput run (s)",
            h.throughput_s,
            q.throughput_s,
        ),
        (
            "submit_acked_s",
            "batch acknowledged (s)",
            h.submit_acked_s,
            q.submit_acked_s,
        ),
        (
            "latency_p50_ms",
            "latency p50 (ms)",
            ms(&h.latency, 0.5),
            ms(&q.latency, 0.5),
        ),
        (
            "latency_p90_ms",
            "latency p90 (ms)",
            ms(&h.latency, 0.9),
            ms(&q.latency, 0.9),
        ),
        (
            "latency_max_ms",
            "latency max (ms)",
            ms(&h.latency, 1.0),
            ms(&q.latency, 1.0),
        ),
    ]
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite() && b.is_finite()).then(|| a / b)
}

fn report(
    args: &CompareArgs,
    hodei: &Side,
    hq: &Side,
    hq_version: &str,
    load: Option<f64>,
) -> Outcome {
    let params = json!({
        "jobs": args.jobs, "latency_jobs": args.latency_jobs, "workers": args.workers,
        "slots": args.slots, "hodei_shards": args.shards, "hodei_batch": args.batch,
        "warmup": args.warmup, "hq_poll_ms": args.hq_poll.as_secs_f64() * 1000.0,
        "hq_latency_poll_ms": args.hq_latency_poll.as_secs_f64() * 1000.0,
        "hq_version": hq_version, "load_1m_at_start": load,
        "duration_s": args.duration.as_secs_f64(),
    });
    let line = format!(
        "{} x /bin/true (throughput), {} sequential (latency), {} workers x {} slots, \
         Hodei {} shards and batches of {}, HyperQueue {hq_version} polled every {:?} / {:?}, \
         {} warm-up jobs, load {} at start, bound {}",
        args.jobs,
        args.latency_jobs,
        args.workers,
        args.slots,
        args.shards,
        args.batch,
        args.hq_poll,
        args.hq_latency_poll,
        args.warmup,
        load.map_or_else(|| "?".to_owned(), |l| format!("{l:.2}")),
        humantime::format_duration(args.duration),
    );
    let mut o = Outcome::new("compare", params, line);
    let rows = figures(args, hodei, hq);
    o.figure("ratio", "hodei / hq");
    o.table.push(format!(
        "{:<24} {:>12} {:>12} {:>10}",
        "figure", "Hodei", "HyperQueue", "Hodei/HQ"
    ));
    for (key, label, h, q) in &rows {
        o.figure(format!("hodei_{key}"), *h);
        o.figure(format!("hq_{key}"), *q);
        o.figure(format!("{key}_ratio"), ratio(*h, *q));
        let r = ratio(*h, *q).map_or_else(|| "-".to_owned(), |r| format!("{r:.2}"));
        o.table
            .push(format!("{label:<24} {h:>12.3} {q:>12.3} {r:>10}"));
    }
    let pick = |keys: &[&str]| -> (Vec<String>, Vec<Bars>) {
        let chosen: Vec<_> = rows.iter().filter(|r| keys.contains(&r.0)).collect();
        let categories = chosen.iter().map(|r| r.1.to_owned()).collect();
        let bars = vec![
            Bars {
                name: "Hodei".into(),
                values: chosen.iter().map(|r| r.2).collect(),
            },
            Bars {
                name: format!("HyperQueue {hq_version}"),
                values: chosen.iter().map(|r| r.3).collect(),
            },
        ];
        (categories, bars)
    };
    let (c, b) = pick(&["jobs_per_s"]);
    o.plot(
        "compare_throughput.svg",
        plot::bar_chart("throughput: /bin/true jobs", "jobs/s", &c, &b),
    );
    let (c, b) = pick(&["latency_p50_ms", "latency_p90_ms", "latency_max_ms"]);
    o.plot(
        "compare_latency.svg",
        plot::bar_chart("latency: submit -> seen finished", "ms", &c, &b),
    );
    o
}
