//! `cargo bench -p hodei-shards`: the sans-IO shard's hot paths, in ns per operation
//! (hdrhistogram percentiles over batches): heartbeat handling with 10,000 workers
//! registered, and a scheduling decision (submit of one job → assignment) with 1,000 free
//! workers. `benches/backlog.rs` measures scheduling behind a million unplaceable jobs.

use std::hint::black_box;
use std::time::Instant;

use hdrhistogram::Histogram;
use hodei_core::spec::JobSpec;
use hodei_core::wire::{FromAgent, Hello, JobRequest, Resources, ToAgent};
use hodei_shards::{Comm, ConnId, Reply, ReqId, Shard, ShardConfig, ShardMsg, StoreOp};

/// Counts effects instead of keeping them, so the bench measures the shard.
#[derive(Default)]
struct Count(u64);

impl Comm for Count {
    fn persist(&mut self, _: StoreOp) {
        self.0 += 1;
    }
    fn send_agent(&mut self, _: ConnId, _: ToAgent) {
        self.0 += 1;
    }
    fn close_agent(&mut self, _: ConnId) {}
    fn send_shard(&mut self, _: usize, _: ShardMsg) {}
    fn reply(&mut self, _: ReqId, _: Reply, _: bool) {
        self.0 += 1;
    }
}

fn shard_with_workers(n: u64, slots: u32) -> (Shard, Count) {
    let mut s = Shard::new(ShardConfig::new(0, 1, 1), Vec::new(), 1_000, 0);
    let mut c = Count::default();
    for i in 0..n {
        let hello = Hello {
            worker: None,
            hostname: format!("h{i}"),
            resources: Resources {
                slots,
                cpus: 4,
                memory: 1 << 30,
                labels: Vec::new(),
            },
            held: Vec::new(),
        };
        s.handle_agent(1_000, ConnId(i), FromAgent::Hello(hello), &mut c);
    }
    (s, c)
}

fn report(name: &str, h: &Histogram<u64>) {
    println!(
        "{name:<40} p50 {:>7} ns  p99 {:>7} ns  max {:>7} ns",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.max()
    );
}

fn main() {
    let Ok(mut h) = Histogram::<u64>::new(3) else {
        return;
    };
    let (mut shard, mut c) = shard_with_workers(10_000, 1);
    let mut now = 2_000;
    for round in 0..200u64 {
        let t = Instant::now();
        for i in 0..1_000u64 {
            now += 1;
            let conn = ConnId((round * 1_000 + i) % 10_000);
            shard.handle_agent(
                now,
                conn,
                FromAgent::Heartbeat {
                    running: 0,
                    load: 0,
                },
                &mut c,
            );
        }
        let _ = h.record(u64::try_from(t.elapsed().as_nanos() / 1_000).unwrap_or(u64::MAX));
    }
    report("heartbeat (10,000 workers)", &h);

    h.reset();
    let (mut shard, mut c) = shard_with_workers(1_000, 1_000_000);
    for round in 0..200u64 {
        let t = Instant::now();
        for i in 0..100u64 {
            now += 1;
            let body = JobRequest::Submit {
                specs: vec![JobSpec::exec("/bin/true", &[])],
            };
            shard.handle_client(now, ReqId(round * 100 + i), black_box(body), &mut c);
        }
        let _ = h.record(u64::try_from(t.elapsed().as_nanos() / 100).unwrap_or(u64::MAX));
    }
    report("submit + schedule (1,000 free workers)", &h);
    black_box(c.0);
}
