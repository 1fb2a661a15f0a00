//! The server's own figures, answered to `hodei stats` (`ToServer::Stats`): how long a
//! heartbeat waits and takes to be handled, and how long a store commit takes. The shard
//! threads feed them; a reader takes a snapshot and may start them afresh.
//!
//! Beside them, what the shards hold now ([`footprint_figures`]), summed over the shards:
//! jobs, workers (departed ones included), timers, final jobs indexed for retention, and
//! what clients leave while they wait or follow (waiters, log followers, wait groups, event
//! followers, the requests with registrations, the reply queues of open requests). Each
//! shard counts its own when `hodei stats` asks (`Input::Footprint`, fanned out by the
//! connection's shard): counting waiters visits every job, too dear for every loop turn. A
//! client that went away leaves none of it behind.
//!
//! Heartbeat handling is timed from the moment the agent connection's task has decoded the
//! heartbeat to the moment the shard core has applied it: the wait in the shard's input
//! queue, the part of the loop's turn ahead of it (other inputs, a finished commit's
//! answers), and its own handling. Time spent before the decode (the kernel's socket
//! buffer, quinn's endpoint and the connection task waiting for its turn on the shard
//! thread) is not in it; the load generator's probe (`hodei-loadtest`) times a whole round
//! trip and bounds it from above.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use hodei_core::wire::Figure;

use super::micros;
use super::shard_thread::ShardFootprint;

/// Shared by the shard threads and the control plane.
pub struct Stats {
    inner: Mutex<Inner>,
}

struct Inner {
    since: Instant,
    /// Decode → applied, µs.
    heartbeats: Histogram<u64>,
    /// One batch's write and `fdatasync`, µs.
    commits: Histogram<u64>,
}

fn histogram() -> Result<Histogram<u64>> {
    // 1 µs to an hour, 3 significant digits: about 25 KiB each.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).context("cannot build a histogram")
}

impl Stats {
    pub fn new() -> Result<Self> {
        Ok(Self {
            inner: Mutex::new(Inner {
                since: Instant::now(),
                heartbeats: histogram()?,
                commits: histogram()?,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Heartbeats a shard handled in one turn, each with how long it took from its decode
    /// to applied. Taken once per turn, so the lock is rare next to the heartbeats.
    pub fn heartbeats(&self, took: &[Duration]) {
        if took.is_empty() {
            return;
        }
        let mut i = self.lock();
        for t in took {
            i.heartbeats.saturating_record(micros(*t));
        }
    }

    /// One store commit's duration.
    pub fn commit(&self, took: Duration) {
        self.lock().commits.saturating_record(micros(took));
    }

    /// The figures since the last reset; with `reset`, starts them afresh. The histograms
    /// are copied under the lock and read outside it, so shards wait only for the copy.
    pub fn figures(&self, reset: bool) -> Vec<Figure> {
        let (window, heartbeats, commits) = {
            let mut i = self.lock();
            let copy = (i.since.elapsed(), i.heartbeats.clone(), i.commits.clone());
            if reset {
                i.heartbeats.reset();
                i.commits.reset();
                i.since = Instant::now();
            }
            copy
        };
        let mut out = vec![fig(
            "window_ms",
            u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
        )];
        for (what, h) in [("heartbeat", &heartbeats), ("store_commit", &commits)] {
            out.push(fig(&format!("{what}s"), h.len()));
            for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)] {
                out.push(fig(&format!("{what}_{name}_us"), h.value_at_quantile(q)));
            }
            out.push(fig(&format!("{what}_max_us"), h.max()));
        }
        out
    }
}

/// What the shards that answered hold now, summed: `footprint_shards` (how many answered)
/// first, then one figure per count.
pub fn footprint_figures(parts: &[ShardFootprint]) -> Vec<Figure> {
    type Count = fn(&ShardFootprint) -> usize;
    let sum = |f: Count| u64::try_from(parts.iter().map(f).sum::<usize>()).unwrap_or(u64::MAX);
    let counts: [(&str, Count); 15] = [
        ("jobs", |p| p.held.jobs),
        ("workers", |p| p.held.workers),
        ("departed_workers", |p| p.held.departed_workers),
        ("agent_connections", |p| p.agent_connections),
        ("job_timers", |p| p.held.job_timers),
        ("worker_timers", |p| p.held.worker_timers),
        ("waiters", |p| p.held.waiters),
        ("log_followers", |p| p.held.log_followers),
        ("event_followers", |p| p.held.event_followers),
        ("wait_groups", |p| p.held.wait_groups),
        ("registered_requests", |p| p.held.registered_requests),
        ("open_requests", |p| p.held.open_requests),
        ("gathers", |p| p.held.gathers),
        ("reply_queues", |p| p.reply_queues),
        ("retained_finished", |p| p.held.retained_finished),
    ];
    let mut out = Vec::with_capacity(counts.len() + 1);
    out.push(fig(
        "footprint_shards",
        u64::try_from(parts.len()).unwrap_or(u64::MAX),
    ));
    out.extend(counts.iter().map(|&(name, f)| fig(name, sum(f))));
    out
}

fn fig(name: &str, value: u64) -> Figure {
    Figure {
        name: name.to_owned(),
        value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(figs: &[Figure], name: &str) -> Option<u64> {
        figs.iter().find(|f| f.name == name).map(|f| f.value)
    }

    #[test]
    fn heartbeats_are_timed_from_their_decode_and_reset_on_request() -> Result<()> {
        let s = Stats::new()?;
        // Waits of 2,000 µs down to 1,010 µs.
        let took: Vec<Duration> = (0..100u64)
            .map(|i| Duration::from_micros(2_000 - i * 10))
            .collect();
        s.heartbeats(&took);
        s.commit(Duration::from_micros(300));
        let figs = s.figures(true);
        assert_eq!(value(&figs, "heartbeats"), Some(100));
        let p50 = value(&figs, "heartbeat_p50_us").unwrap_or(0);
        assert!((1_490..=1_520).contains(&p50), "p50 {p50}");
        let max = value(&figs, "heartbeat_max_us").unwrap_or(0);
        assert!((1_998..=2_002).contains(&max), "max {max}");
        assert_eq!(value(&figs, "store_commits"), Some(1));
        let after = s.figures(false);
        assert_eq!(value(&after, "heartbeats"), Some(0));
        assert_eq!(value(&after, "store_commits"), Some(0));
        Ok(())
    }

    #[test]
    fn footprints_are_summed_over_the_shards_that_answered() {
        let part = |shard, waiters, reply_queues| ShardFootprint {
            shard,
            shards: 2,
            held: hodei_shards::Footprint {
                waiters,
                log_followers: 1,
                ..hodei_shards::Footprint::default()
            },
            reply_queues,
            agent_connections: 0,
        };
        let figs = footprint_figures(&[part(0, 2, 3), part(1, 5, 0)]);
        assert_eq!(value(&figs, "footprint_shards"), Some(2));
        assert_eq!(value(&figs, "waiters"), Some(7));
        assert_eq!(value(&figs, "log_followers"), Some(2));
        assert_eq!(value(&figs, "reply_queues"), Some(3));
        assert_eq!(value(&figs, "wait_groups"), Some(0));
    }
}
