//! `cargo bench -p hodei-shards --bench backlog`: scheduling with 1,000,000 jobs that no
//! worker can run queued ahead of (at a higher priority than) jobs that every worker can.
//! A placeable job must be found in time independent of the backlog, both by the owner's
//! own scheduling pass and by a steal request from another shard. Each figure is ns per
//! placeable job (hdrhistogram over batches), with how many of them were placed: a
//! scheduler that walks the queue job by job places none of them here.

use std::hint::black_box;
use std::time::Instant;

use hdrhistogram::Histogram;
use hodei_core::ids::WorkerId;
use hodei_core::spec::JobSpec;
use hodei_core::wire::{FromAgent, Hello, JobRequest, Resources, ToAgent};
use hodei_shards::{Comm, ConnId, Offer, Reply, ReqId, Shard, ShardConfig, ShardMsg, StoreOp};

const BACKLOG: usize = 1_000_000;

/// Counts what was assigned, locally (`Assign`) or to a stealer (grants), and drops the rest.
#[derive(Default)]
struct Count {
    assigned: u64,
    granted: u64,
}

impl Comm for Count {
    fn persist(&mut self, _: StoreOp) {}
    fn send_agent(&mut self, _: ConnId, msg: ToAgent) {
        if matches!(msg, ToAgent::Assign { .. }) {
            self.assigned += 1;
        }
    }
    fn close_agent(&mut self, _: ConnId) {}
    fn send_shard(&mut self, _: usize, msg: ShardMsg) {
        if let ShardMsg::StealReply { grants, .. } = msg {
            self.granted += grants.len() as u64;
        }
    }
    fn reply(&mut self, _: ReqId, _: Reply, _: bool) {}
}

/// Needs a label no worker has; ahead of every placeable job by priority.
fn unplaceable(i: usize) -> JobSpec {
    let mut spec = JobSpec::exec("/bin/true", &[]);
    spec.priority = 1;
    spec.labels.push(("gpu".to_owned(), "a100".to_owned()));
    // Some need more CPUs than any worker instead: two requirement classes.
    if i.is_multiple_of(2) {
        spec.labels.clear();
        spec.cpus = 64;
    }
    spec
}

/// Shard 0 of 2 with `workers` agents of 4 CPUs and many slots, and the backlog queued.
fn owner(workers: u64, c: &mut Count) -> Shard {
    let mut s = Shard::new(ShardConfig::new(0, 2, 1), Vec::new(), 1_000, 0);
    for i in 0..workers {
        let hello = Hello {
            worker: None,
            hostname: format!("h{i}"),
            resources: Resources {
                slots: 1_000_000,
                cpus: 4,
                memory: 1 << 30,
                labels: Vec::new(),
            },
            held: Vec::new(),
        };
        s.handle_agent(1_000, ConnId(i), FromAgent::Hello(hello), c);
    }
    let mut done = 0;
    while done < BACKLOG {
        let n = (BACKLOG - done).min(10_000);
        let specs = (done..done + n).map(unplaceable).collect();
        s.handle_client(2_000, ReqId(done as u64), JobRequest::Submit { specs }, c);
        done += n;
    }
    assert_eq!(s.pending(), BACKLOG, "the backlog was placed");
    s
}

fn report(name: &str, h: &Histogram<u64>, placed: u64, of: u64) {
    println!(
        "{name:<52} p50 {:>8} ns  p99 {:>8} ns  max {:>9} ns  placed {placed} of {of}",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.max()
    );
}

fn main() {
    let Ok(mut h) = Histogram::<u64>::new(3) else {
        return;
    };
    println!(
        "machine: {} cores; backlog {BACKLOG} unplaceable jobs in 2 classes",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    let mut c = Count::default();
    let mut shard = owner(100, &mut c);
    let mut now = 3_000;
    let rounds = 200u64;
    for round in 0..rounds {
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
    report(
        "submit + schedule behind the backlog (100 workers)",
        &h,
        c.assigned,
        rounds * 100,
    );
    drop(shard);

    // No workers of its own: only a steal request from shard 1 can run anything.
    h.reset();
    let mut c = Count::default();
    let mut shard = owner(0, &mut c);
    for round in 0..rounds {
        let specs = (0..100).map(|_| JobSpec::exec("/bin/true", &[])).collect();
        now += 1;
        shard.handle_client(now, ReqId(round), JobRequest::Submit { specs }, &mut c);
        let offers = vec![Offer {
            worker: WorkerId::new(1, 1, round + 1),
            slots: 100,
            cpus: 4,
            memory: 1 << 30,
            labels: Vec::new(),
        }];
        let t = Instant::now();
        shard.handle_shard(now, ShardMsg::StealRequest { from: 1, offers }, &mut c);
        let _ = h.record(u64::try_from(t.elapsed().as_nanos() / 100).unwrap_or(u64::MAX));
    }
    report(
        "steal request behind the backlog (100 slots offered)",
        &h,
        c.granted,
        rounds * 100,
    );
    black_box(c.granted);
}
