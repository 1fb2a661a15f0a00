//! `hodei-bench`: measures a real Hodei (server and agent processes on loopback, the
//! `hodei` binary) from a client on the same machine.
//!
//! `dispatch`: submit-acknowledged → job started on the agent, at a fixed rate, as
//! hdrhistogram percentiles (the agent stamps the start with the same wall clock). Then
//! jobs/s at saturation: a burst submitted in batches, timed until every job is final.
//! Both with real `/bin/true` jobs and with agents in `--noop` mode (dispatch overhead only).
//!
//! `memory`, `restart`: a server holding many jobs ([`store_scale`]). `compare`: the same
//! workloads on Hodei and on HyperQueue in one run ([`compare`]).

mod cluster;
mod compare;
mod machine;
mod store_scale;

use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use hodei_core::ids::JobId;
use hodei_core::spec::JobSpec;
use hodei_core::state::JobState;
use hodei_core::time::wall_now;
use serde_json::json;

use cluster::{Client, Cluster};

#[derive(Parser, Debug)]
#[command(name = "hodei-bench", about = "Hodei benchmarks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Dispatch latency at a fixed rate and throughput at saturation.
    Dispatch(DispatchArgs),
    /// Server RSS with N queued jobs (default 1,000,000).
    Memory(store_scale::ScaleArgs),
    /// kill -9 of a server holding N jobs (default 1,000,000) → serving again.
    Restart(store_scale::ScaleArgs),
    /// The same workloads on Hodei and on HyperQueue, side by side.
    Compare(compare::CompareArgs),
}

#[derive(clap::Args, Debug, Clone)]
struct DispatchArgs {
    /// The `hodei` binary (build it with `cargo build --release`).
    #[arg(long, default_value = "target/release/hodei")]
    hodei: std::path::PathBuf,
    /// Jobs in the fixed-rate phase.
    #[arg(long, default_value_t = 10_000)]
    jobs: usize,
    /// Submissions per second in the fixed-rate phase.
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    /// Jobs in the saturation phase.
    #[arg(long, default_value_t = 10_000)]
    burst: usize,
    /// Jobs per submit request in the saturation phase.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Agents.
    #[arg(long, default_value_t = 2)]
    agents: usize,
    /// Slots per agent.
    #[arg(long, default_value_t = 4)]
    slots: u32,
    /// Server shards.
    #[arg(long, default_value_t = 2)]
    shards: usize,
    /// Only this mode: `true` (real /bin/true jobs) or `noop`.
    #[arg(long)]
    mode: Option<String>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    match cli.cmd {
        Cmd::Dispatch(args) => local.block_on(&rt, dispatch(args)),
        Cmd::Memory(args) => local.block_on(&rt, store_scale::memory(args)),
        Cmd::Restart(args) => local.block_on(&rt, store_scale::restart(args)),
        Cmd::Compare(args) => local.block_on(&rt, compare::compare(args)),
    }
}

struct ModeResult {
    mode: &'static str,
    ack_to_start: Histogram<u64>,
    submit_to_start: Histogram<u64>,
    negative: u64,
    burst_jobs_per_s: f64,
    burst_secs: f64,
}

async fn dispatch(args: DispatchArgs) -> Result<()> {
    if !args.hodei.exists() {
        bail!(
            "{} not found: run `cargo build --release` first or pass --hodei",
            args.hodei.display()
        );
    }
    let modes: Vec<&'static str> = match args.mode.as_deref() {
        None => vec!["true", "noop"],
        Some("true") => vec!["true"],
        Some("noop") => vec!["noop"],
        Some(m) => bail!("unknown --mode {m:?}: use true or noop"),
    };
    let mut results = Vec::new();
    for mode in modes {
        let cluster = Cluster::start(
            &args.hodei,
            args.shards,
            args.agents,
            args.slots,
            mode == "noop",
        )
        .await?;
        let client = Rc::new(cluster.client().await?);
        let r = run_mode(mode, &client, &args).await;
        cluster.stop();
        results.push(r?);
    }
    // The machine's raw spawn rate, measured in the same run: as many spawners as slots,
    // each running /bin/true to completion, as fast as it can.
    let raw = raw_spawn_rate(args.agents * args.slots as usize, args.burst)?;
    report(&args, &results, raw)
}

/// `/bin/true` processes per second with `parallel` concurrent spawners, `total` in all.
fn raw_spawn_rate(parallel: usize, total: usize) -> Result<f64> {
    let t0 = Instant::now();
    let per = total.div_ceil(parallel.max(1));
    let threads: Vec<_> = (0..parallel.max(1))
        .map(|_| {
            std::thread::spawn(move || -> std::io::Result<()> {
                for _ in 0..per {
                    std::process::Command::new("/bin/true").status()?;
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("a spawner thread panicked"))??;
    }
    #[allow(clippy::cast_precision_loss)]
    let rate = (per * parallel.max(1)) as f64 / t0.elapsed().as_secs_f64();
    Ok(rate)
}

fn spec() -> JobSpec {
    JobSpec::exec("/bin/true", &[])
}

async fn run_mode(
    mode: &'static str,
    client: &Rc<Client>,
    args: &DispatchArgs,
) -> Result<ModeResult> {
    // Warm-up: connections, caches, agents' first spawns.
    let warm = client.submit(vec![spec(); 200]).await?;
    client.wait_all(&warm).await?;

    // Fixed rate: one job per request, each request on its own task, paced by the clock.
    let interval = Duration::from_nanos(1_000_000_000 / args.rate.max(1));
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(args.jobs);
    for i in 0..args.jobs {
        tokio::time::sleep_until(start + interval * u32::try_from(i).unwrap_or(u32::MAX)).await;
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

    // Saturation: the burst in batches, a few requests in flight, until all are final.
    let t0 = Instant::now();
    let mut submits = Vec::new();
    let mut left = args.burst;
    while left > 0 {
        let n = left.min(args.batch);
        left -= n;
        let c = Rc::clone(client);
        submits.push(tokio::task::spawn_local(async move {
            c.submit(vec![spec(); n]).await
        }));
    }
    let mut burst_ids = Vec::with_capacity(args.burst);
    for s in submits {
        burst_ids.extend(s.await??);
    }
    client.wait_all(&burst_ids).await?;
    let secs = t0.elapsed().as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let jps = args.burst as f64 / secs;
    Ok(ModeResult {
        mode,
        ack_to_start,
        submit_to_start,
        negative,
        burst_jobs_per_s: jps,
        burst_secs: secs,
    })
}

#[allow(clippy::cast_precision_loss)]
fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn report(args: &DispatchArgs, results: &[ModeResult], raw_spawn_per_s: f64) -> Result<()> {
    let machine = machine::describe();
    if args.json {
        let mut o = serde_json::Map::new();
        o.insert("machine".into(), machine.clone());
        o.insert("raw_spawn_per_s".into(), json!(raw_spawn_per_s));
        if let Some(t) = results.iter().find(|r| r.mode == "true") {
            o.insert(
                "true_vs_raw_spawn_pct".into(),
                json!(100.0 * t.burst_jobs_per_s / raw_spawn_per_s),
            );
        }
        o.insert(
            "params".into(),
            json!({"jobs": args.jobs, "rate_per_s": args.rate, "burst": args.burst, "batch": args.batch,
                   "agents": args.agents, "slots": args.slots, "shards": args.shards}),
        );
        for r in results {
            let p = if r.mode == "noop" { "noop" } else { "true" };
            o.insert(
                format!("{p}_dispatch_p50_ms"),
                json!(ms(&r.ack_to_start, 0.5)),
            );
            o.insert(
                format!("{p}_dispatch_p99_ms"),
                json!(ms(&r.ack_to_start, 0.99)),
            );
            o.insert(
                format!("{p}_dispatch_p999_ms"),
                json!(ms(&r.ack_to_start, 0.999)),
            );
            o.insert(
                format!("{p}_dispatch_max_ms"),
                json!(ms(&r.ack_to_start, 1.0)),
            );
            o.insert(
                format!("{p}_submit_to_start_p50_ms"),
                json!(ms(&r.submit_to_start, 0.5)),
            );
            o.insert(
                format!("{p}_submit_to_start_p99_ms"),
                json!(ms(&r.submit_to_start, 0.99)),
            );
            o.insert(format!("{p}_started_before_ack"), json!(r.negative));
            o.insert(format!("{p}_jobs_per_s"), json!(r.burst_jobs_per_s));
        }
        println!("{}", serde_json::Value::Object(o));
        return Ok(());
    }
    println!("machine: {}", machine);
    println!(
        "raw spawn rate of /bin/true here (same run, as many spawners as slots): {raw_spawn_per_s:.0}/s"
    );
    if let Some(t) = results.iter().find(|r| r.mode == "true") {
        println!(
            "/bin/true jobs at saturation: {:.1} % of it",
            100.0 * t.burst_jobs_per_s / raw_spawn_per_s
        );
    }
    println!(
        "params: {} jobs at {}/s, burst {} in batches of {}, {} agents x {} slots, {} shards",
        args.jobs, args.rate, args.burst, args.batch, args.agents, args.slots, args.shards
    );
    println!(
        "{:<6} {:>28} {:>28} {:>10}",
        "", "ack -> started (ms)", "submit -> started (ms)", "burst"
    );
    println!(
        "{:<6} {:>6} {:>6} {:>7} {:>7} {:>6} {:>6} {:>7} {:>7} {:>10}",
        "mode", "p50", "p99", "p99.9", "max", "p50", "p99", "p99.9", "max", "jobs/s"
    );
    for r in results {
        let a = &r.ack_to_start;
        let s = &r.submit_to_start;
        println!(
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
        );
        println!(
            "       ({} of {} started before their ack reached the client; burst took {:.2} s)",
            r.negative,
            a.len(),
            r.burst_secs
        );
    }
    Ok(())
}
