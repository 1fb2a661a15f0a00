//! `memory` and `restart`: a server holding many queued jobs (no agents, so they all stay
//! pending). `memory` reports the server's RSS with N queued jobs; `restart` then kills it
//! with `kill -9` and times how long a new process takes to serve again.

use std::rc::Rc;
use std::time::Instant;

use anyhow::{Context, Result};
use hodei_core::spec::JobSpec;
use serde_json::json;

use crate::cluster::{Cluster, rss_mib};

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
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Queues `jobs` jobs and returns (cluster, seconds taken, RSS after).
async fn fill(args: &ScaleArgs) -> Result<(Cluster, f64, f64)> {
    let cluster = Cluster::start(&args.hodei, args.shards, 0, 1, true).await?;
    let client = Rc::new(cluster.client().await?);
    let t0 = Instant::now();
    let mut left = args.jobs;
    let mut inflight = Vec::new();
    while left > 0 || !inflight.is_empty() {
        while left > 0 && inflight.len() < args.inflight {
            let n = left.min(args.batch);
            left -= n;
            let c = Rc::clone(&client);
            inflight.push(tokio::task::spawn_local(async move {
                c.submit(vec![JobSpec::exec("/bin/true", &[]); n]).await
            }));
        }
        let first = inflight.remove(0);
        first.await??;
    }
    let secs = t0.elapsed().as_secs_f64();
    let pid = cluster.server_pid().context("no server pid")?;
    let rss = rss_mib(pid).context("cannot read the server's RSS")?;
    Ok((cluster, secs, rss))
}

pub async fn memory(args: ScaleArgs) -> Result<()> {
    let (cluster, secs, rss) = fill(&args).await?;
    cluster.stop();
    report(
        &args,
        &json!({ "queued_jobs": args.jobs, "fill_s": secs, "server_rss_mib": rss,
        "rss_bytes_per_job": rss * 1_048_576.0 / args.jobs.max(1) as f64 }),
    );
    Ok(())
}

pub async fn restart(args: ScaleArgs) -> Result<()> {
    let (mut cluster, secs, rss) = fill(&args).await?;
    let took = cluster.restart_server().await?;
    let pid = cluster.server_pid().context("no server pid")?;
    let rss_after = rss_mib(pid).unwrap_or(0.0);
    cluster.stop();
    report(
        &args,
        &json!({ "stored_jobs": args.jobs, "fill_s": secs, "server_rss_mib": rss,
        "restart_to_serving_s": took.as_secs_f64(), "server_rss_after_restart_mib": rss_after }),
    );
    Ok(())
}

fn report(args: &ScaleArgs, figures: &serde_json::Value) {
    let machine = crate::machine::describe();
    if args.json {
        let mut o = figures.clone();
        o["machine"] = machine;
        o["params"] = json!({"jobs": args.jobs, "batch": args.batch, "inflight": args.inflight, "shards": args.shards});
        println!("{o}");
        return;
    }
    println!("machine: {machine}");
    println!(
        "params: {} jobs, batches of {}, {} in flight, {} shards",
        args.jobs, args.batch, args.inflight, args.shards
    );
    if let Some(o) = figures.as_object() {
        for (k, v) in o {
            println!("{k:<32} {v}");
        }
    }
}
