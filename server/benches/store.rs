//! `cargo bench --bench store`: the server's store group commit on this machine's disk.
//!
//! For each group size (jobs per commit, each job written as its record plus one event, as a
//! submit is), commits batches for a fixed time and prints commit latency percentiles
//! (hdrhistogram), commits/s and jobs/s; then the same with two threads committing at once,
//! as two shards do (they share fjall's journal). It answers the tuning question "how big
//! must a group be before fdatasync stops being the limit?".

use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;
use hodei_core::event::{Event, EventKind, Subject};
use hodei_core::ids::{Attempt, JobId};
use hodei_core::job::JobRecord;
use hodei_core::spec::JobSpec;
use hodei_core::state::JobState;
use hodei_server::store;
use hodei_shards::StoreOp;

const PER_SIZE: Duration = Duration::from_secs(2);

fn ops(shard: u8, seq: &mut u64, n: usize) -> Vec<StoreOp> {
    let mut v = Vec::with_capacity(n * 2);
    for _ in 0..n {
        *seq += 1;
        let id = JobId::new(shard, 1, *seq);
        v.push(StoreOp::PutJob(JobRecord::new(
            id,
            JobSpec::exec("/bin/true", &[]),
            *seq,
        )));
        v.push(StoreOp::PutEvent(Event {
            shard,
            seq: *seq,
            at: *seq,
            subject: Subject::Job(id),
            correlation_id: format!("bench-{seq}"),
            kind: EventKind::Job {
                state: JobState::Pending,
                attempt: Attempt(0),
                worker: None,
            },
            reason: None,
        }));
    }
    v
}

/// Commits groups of `size` jobs for [`PER_SIZE`]; returns (latency histogram in µs, commits).
fn run(store: &store::Store, shard: u8, size: usize) -> Result<(Histogram<u64>, u64)> {
    let mut h = Histogram::<u64>::new(3)?;
    let mut seq = 0;
    let mut commits = 0;
    let t0 = Instant::now();
    while t0.elapsed() < PER_SIZE {
        let batch = ops(shard, &mut seq, size);
        let t = Instant::now();
        store.commit(&batch, &[])?;
        h.record(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX))?;
        commits += 1;
    }
    Ok((h, commits))
}

fn main() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("hodei-store-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    store::claim_data_dir(&dir)?;
    let store = store::Store::open(&dir)?;
    let secs = PER_SIZE.as_secs_f64();
    println!(
        "store group commit (fdatasync per commit), dir {}",
        dir.display()
    );
    println!(
        "{:>8} {:>8} {:>9} {:>9} {:>9} {:>10} {:>10}",
        "threads", "jobs", "p50 µs", "p99 µs", "max µs", "commits/s", "jobs/s"
    );
    for size in [1usize, 10, 100, 1000] {
        for threads in [1u8, 2] {
            let results: Vec<Result<(Histogram<u64>, u64)>> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..threads)
                    .map(|t| {
                        let store = store.clone();
                        // Each thread its own shard's key range, as the server's shards.
                        s.spawn(move || run(&store, t + 8 * u8::from(threads == 2), size))
                    })
                    .collect();
                hs.into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(anyhow::anyhow!("bench thread panicked")))
                    })
                    .collect()
            });
            let mut all = Histogram::<u64>::new(3)?;
            let mut commits = 0;
            for r in results {
                let (h, c) = r?;
                all.add(&h)?;
                commits += c;
            }
            #[allow(clippy::cast_precision_loss)]
            let cps = commits as f64 / secs;
            #[allow(clippy::cast_precision_loss)]
            let jps = cps * size as f64;
            println!(
                "{:>8} {:>8} {:>9} {:>9} {:>9} {:>10.0} {:>10.0}",
                threads,
                size,
                all.value_at_quantile(0.5),
                all.value_at_quantile(0.99),
                all.max(),
                cps,
                jps
            );
        }
    }
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
