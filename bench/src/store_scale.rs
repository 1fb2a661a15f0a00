//! `memory` and `restart`: a server holding many queued jobs (no agents, so they all stay
//! pending). `memory` reports the server's RSS with N queued jobs; `restart` then kills it
//! with `kill -9` and times how long a new process takes to serve again. Both sample the
//! server's RSS over the run for the plot. `--duration` bounds the whole run (enforced by
//! the supervisor, see main.rs).

use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hodei_core::spec::JobSpec;
use serde_json::json;

use crate::cluster::{Cluster, FleetArgs};
use crate::output::{Outcome, OutputArgs, round3};
use crate::plot::{self, Line, Mark};
use crate::rss::{RssSampler, rss_mib};

/// How often the server's RSS is sampled for the plot.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

#[derive(clap::Args, Debug, Clone)]
pub struct ScaleArgs {
    /// The `hodei` binary.
    #[arg(long, default_value = "target/release/hodei")]
    hodei: std::path::PathBuf,
    /// Jobs to queue.
    #[arg(long, default_value_t = 1_000_000)]
    jobs: usize,
    /// Jobs per submit request.
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// Submit requests in flight.
    #[arg(long, default_value_t = 8)]
    inflight: usize,
    /// Server shards.
    #[arg(long, default_value_t = 2)]
    shards: usize,
    /// Bound on the whole run; past it the run is stopped, its processes killed, and it fails.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    #[command(flatten)]
    output: OutputArgs,
}

/// Queues `jobs` jobs and returns (seconds taken, RSS after).
async fn fill(args: &ScaleArgs, cluster: &Cluster) -> Result<(f64, f64)> {
    let client = Rc::new(cluster.client().await?);
    let t0 = Instant::now();
    let mut left = args.jobs;
    let mut inflight = std::collections::VecDeque::new();
    while left > 0 || !inflight.is_empty() {
        while left > 0 && inflight.len() < args.inflight.max(1) {
            let n = left.min(args.batch.max(1));
            left -= n;
            let c = Rc::clone(&client);
            inflight.push_back(tokio::task::spawn_local(async move {
                c.submit(vec![JobSpec::exec("/bin/true", &[]); n]).await
            }));
        }
        if let Some(first) = inflight.pop_front() {
            first.await??;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let pid = cluster.server_pid().context("no server pid")?;
    let rss = rss_mib(pid).context("cannot read the server's RSS")?;
    Ok((secs, rss))
}

/// A server with no agents, and a sampler of its RSS.
async fn start(args: &ScaleArgs) -> Result<(Cluster, RssSampler)> {
    let fleet = FleetArgs::plain(0, 1, args.shards);
    let cluster = Cluster::start(&args.hodei, &fleet, true).await?;
    let pid = cluster.server_pid().context("no server pid")?;
    let sampler = RssSampler::start(pid, SAMPLE_EVERY)?;
    Ok((cluster, sampler))
}

pub async fn memory(args: ScaleArgs) -> Result<()> {
    let started = Instant::now();
    let (cluster, sampler) = start(&args).await?;
    let (secs, rss) = fill(&args, &cluster).await?;
    let samples = sampler.finish();
    cluster.stop();
    let mut o = outcome("memory", &args);
    o.shown("jobs queued", "queued_jobs", args.jobs);
    o.shown("time to queue them (s)", "fill_s", round3(secs));
    o.shown(
        "server RSS with them queued (MiB)",
        "server_rss_mib",
        round3(rss),
    );
    #[allow(clippy::cast_precision_loss)]
    let per_job = rss * 1_048_576.0 / args.jobs.max(1) as f64;
    o.shown(
        "RSS per queued job (bytes)",
        "rss_bytes_per_job",
        round3(per_job),
    );
    series(&mut o, &samples, "server RSS while queueing jobs", None);
    crate::output::emit(o, &args.output, args.duration, started)
}

pub async fn restart(args: ScaleArgs) -> Result<()> {
    let started = Instant::now();
    let (mut cluster, sampler) = start(&args).await?;
    let (secs, rss) = fill(&args, &cluster).await?;
    let kill_at = sampler.elapsed();
    // The sampler follows the new process from its first moment.
    let took = cluster.restart_server(|pid| sampler.set_pid(pid)).await?;
    let pid = cluster.server_pid().context("no server pid")?;
    let rss_after = rss_mib(pid).unwrap_or(0.0);
    // A little more of the new process, to show where its RSS settles.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let samples = sampler.finish();
    cluster.stop();
    let mut o = outcome("restart", &args);
    o.shown("jobs stored", "stored_jobs", args.jobs);
    o.shown("time to queue them (s)", "fill_s", round3(secs));
    o.shown(
        "server RSS before the kill (MiB)",
        "server_rss_mib",
        round3(rss),
    );
    o.shown(
        "kill -9 -> new server serving (s)",
        "restart_to_serving_s",
        took.as_secs_f64(),
    );
    o.shown(
        "new server's RSS when serving (MiB)",
        "server_rss_after_restart_mib",
        round3(rss_after),
    );
    series(
        &mut o,
        &samples,
        "server RSS: queueing jobs, kill -9, restart",
        Some(kill_at.as_secs_f64()),
    );
    crate::output::emit(o, &args.output, args.duration, started)
}

fn outcome(scenario: &'static str, args: &ScaleArgs) -> Outcome {
    let params = json!({"jobs": args.jobs, "batch": args.batch, "inflight": args.inflight,
                        "shards": args.shards, "duration_s": args.duration.as_secs_f64()});
    let line = format!(
        "{} jobs, batches of {}, {} in flight, {} shards, no agents, bound {}",
        args.jobs,
        args.batch,
        args.inflight,
        args.shards,
        humantime::format_duration(args.duration)
    );
    Outcome::new(scenario, params, line)
}

/// The RSS samples as JSON series and a plot; `kill_at`: when the server was killed
/// (seconds), marked on the plot.
fn series(o: &mut Outcome, samples: &[(f64, f64)], title: &str, kill_at: Option<f64>) {
    let t: Vec<f64> = samples.iter().map(|s| round3(s.0)).collect();
    let mib: Vec<Option<f64>> = samples
        .iter()
        .map(|s| s.1.is_finite().then(|| round3(s.1)))
        .collect();
    o.figure("series_t_s", t);
    o.figure("server_rss_series_mib", mib);
    let lines = [Line {
        name: "server RSS".into(),
        points: samples.to_vec(),
    }];
    let marks: Vec<Mark> = kill_at
        .map(|x| Mark {
            x,
            label: "kill -9".into(),
        })
        .into_iter()
        .collect();
    o.plot(
        "rss.svg",
        plot::line_chart(
            title,
            "seconds since the server started",
            "MiB",
            &lines,
            &marks,
        ),
    );
}
