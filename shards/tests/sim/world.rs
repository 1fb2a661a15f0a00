//! The simulated world: one seed, a virtual clock, an event queue, and the dispatch of each
//! event to the server, the network, the agents or the clients.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use hodei_core::ids::{Attempt, JobId};
use hodei_core::spec::JobSpec;
use hodei_core::time::{Micros, ms};
use hodei_core::wire::{FromAgent, ToAgent};
use hodei_shards::ConnId;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::agent::Agent;
use crate::client::Clients;
use crate::invariants::Oracle;
use crate::net::Net;
pub use crate::opts::Opts;
use crate::server::{Input, Server, Turn};
use crate::store::Store;

/// Everything that happens, at a virtual time.
#[derive(Debug)]
pub enum Ev {
    // The server.
    /// Something arrives in a shard's inbox.
    Input {
        shard: usize,
        era: u64,
        input: Input,
    },
    /// The shard runs a loop turn over its inbox and timers.
    Turn {
        shard: usize,
        era: u64,
    },
    /// A shard timer is due.
    Timer {
        shard: usize,
        era: u64,
        at: Micros,
    },
    /// A turn's commit (fsync) is done: apply its writes, release its messages.
    Commit {
        shard: usize,
        era: u64,
        turn: Turn,
    },
    Restart,
    // The network.
    ToAgent {
        agent: usize,
        conn: ConnId,
        msg: ToAgent,
    },
    FromAgent {
        conn: ConnId,
        msg: FromAgent,
    },
    /// The agent learns its connection is gone; it waits `stall` more before reconnecting.
    AgentSawClose {
        agent: usize,
        conn: ConnId,
        stall: Micros,
    },
    /// The server's connection task ends (closed by either side, or QUIC idle timeout).
    ServerSawClose {
        conn: ConnId,
    },
    Partition {
        agent: usize,
        until: Micros,
    },
    /// The agent's QUIC idle timeout during a partition.
    AgentIdle {
        agent: usize,
        conn: ConnId,
    },
    ConnLoss {
        agent: usize,
    },
    // The agents (`life` fences events of a crashed or departed incarnation).
    AgentConnect {
        agent: usize,
        life: u64,
        shard: Option<usize>,
    },
    AgentBeat {
        agent: usize,
        conn: ConnId,
    },
    LeaseExpire {
        agent: usize,
        life: u64,
        since: Micros,
    },
    JobStart {
        agent: usize,
        life: u64,
        job: JobId,
        attempt: Attempt,
    },
    JobDone {
        agent: usize,
        life: u64,
        job: JobId,
        attempt: Attempt,
    },
    DrainStart {
        agent: usize,
        by_server: bool,
    },
    DrainDeadline {
        agent: usize,
        life: u64,
    },
    Leave {
        agent: usize,
        life: u64,
    },
    Crash {
        agent: usize,
    },
    /// The agent's host pauses until `until`.
    Pause {
        agent: usize,
        until: Micros,
    },
    /// A crash that leaves the jobs' processes running.
    CrashOrphaning {
        agent: usize,
    },
    Revive {
        agent: usize,
    },
    // The clients.
    Submit {
        shard: usize,
        specs: Vec<JobSpec>,
    },
    Cancel,
    Wait,
    Retry,
    // Checks.
    Probe,
}

pub struct Sim {
    pub rng: SmallRng,
    pub now: Micros,
    seq: u64,
    queue: BinaryHeap<Reverse<(Micros, u64)>>,
    payloads: HashMap<u64, Ev>,
    pub opts: Opts,
    pub net: Net,
    pub server: Server,
    pub store: Store,
    pub agents: Vec<Agent>,
    pub clients: Clients,
    pub oracle: Oracle,
    pub violations: Vec<String>,
    /// What happened how often (`HODEI_SIM_STATS=1`), to see that faults really bite.
    pub counts: std::collections::BTreeMap<&'static str, u64>,
    trace: Option<String>,
    /// A digest of every event dispatched, when asked for (`Sim::digest`).
    digest: Option<std::collections::hash_map::DefaultHasher>,
}

impl Sim {
    pub fn new(seed: u64, opts: Opts) -> Self {
        let mut sim = Self {
            rng: SmallRng::seed_from_u64(seed),
            now: 1_000_000,
            seq: 0,
            queue: BinaryHeap::new(),
            payloads: HashMap::new(),
            net: Net::new(opts.agents),
            server: Server::new(opts.shards),
            store: Store::new(opts.shards),
            agents: Vec::new(),
            clients: Clients::default(),
            oracle: Oracle::default(),
            violations: Vec::new(),
            counts: Default::default(),
            trace: std::env::var("HODEI_SIM_TRACE").ok(),
            digest: None,
            opts,
        };
        sim.boot();
        sim.spawn_agents();
        sim.schedule_workload();
        sim.schedule_faults();
        sim.at(ms(500), Ev::Probe);
        sim
    }

    pub fn at(&mut self, delay: Micros, ev: Ev) {
        self.at_abs(self.now + delay, ev);
    }

    pub fn at_abs(&mut self, t: Micros, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((t.max(self.now), self.seq)));
        self.payloads.insert(self.seq, ev);
    }

    pub fn count(&mut self, what: &'static str) {
        *self.counts.entry(what).or_default() += 1;
    }

    pub fn violation(&mut self, v: String) {
        self.trace_line(|| format!("VIOLATION {v}"));
        self.violations.push(v);
    }

    pub fn trace_line(&self, line: impl FnOnce() -> String) {
        if let Some(p) = &self.trace {
            let l = line();
            if l.contains(p.as_str()) {
                eprintln!("{:>12} {l}", self.now);
            }
        }
    }

    fn schedule_faults(&mut self) {
        let o = self.opts.clone();
        let span = ms(10)..ms(o.fault_ms.max(11));
        for _ in 0..o.restarts {
            let t = self.rng.gen_range(span.clone());
            self.at(t, Ev::Restart);
        }
        for _ in 0..o.crashes {
            let t = self.rng.gen_range(span.clone());
            let agent = self.rng.gen_range(0..o.agents);
            self.at(t, Ev::Crash { agent });
        }
        for _ in 0..o.orphaning_crashes {
            let t = self.rng.gen_range(span.clone());
            let agent = self.rng.gen_range(0..o.agents);
            self.at(t, Ev::CrashOrphaning { agent });
        }
        for _ in 0..o.pauses {
            let t = self.rng.gen_range(span.clone());
            let agent = self.rng.gen_range(0..o.agents);
            let until = self.now + t + ms(self.rng.gen_range(o.pause_ms.0..=o.pause_ms.1));
            self.at(t, Ev::Pause { agent, until });
        }
        for _ in 0..o.disk_full {
            let t = self.now + self.rng.gen_range(span.clone());
            let shard = self.rng.gen_range(0..o.shards);
            let until = t + ms(self.rng.gen_range(o.full_ms.0..=o.full_ms.1));
            self.server.full[shard].push((t, until));
        }
        for _ in 0..o.partitions {
            let t = self.now + self.rng.gen_range(span.clone());
            let agent = self.rng.gen_range(0..o.agents);
            let until = t + ms(self.rng.gen_range(o.partition_ms.0..=o.partition_ms.1));
            if self.net.add_partition(agent, t, until) {
                self.at_abs(t, Ev::Partition { agent, until });
            }
        }
        for _ in 0..o.conn_losses {
            let t = self.rng.gen_range(span.clone());
            let agent = self.rng.gen_range(0..o.agents);
            self.at(t, Ev::ConnLoss { agent });
        }
        for _ in 0..o.drains {
            let t = self.rng.gen_range(span.clone());
            let agent = self.rng.gen_range(0..o.agents);
            let by_server = self.rng.gen_bool(0.5);
            self.at(t, Ev::DrainStart { agent, by_server });
        }
    }

    /// Runs until every acknowledged job is final (if `stop_when_final`) or `limit` passes.
    pub fn run(&mut self, limit: Micros, stop_when_final: bool) {
        let end = self.now + limit;
        while let Some(Reverse((t, id))) = self.queue.pop() {
            if t > end {
                self.queue.push(Reverse((t, id)));
                self.now = end;
                break;
            }
            self.now = t;
            let Some(ev) = self.payloads.remove(&id) else {
                continue;
            };
            if self.trace.is_some() {
                self.trace_line(|| format!("{ev:?}"));
            }
            if let Some(d) = &mut self.digest {
                use std::hash::Hash;
                (t, format!("{ev:?}")).hash(d);
            }
            self.dispatch(ev);
            self.check_no_double_run();
            if stop_when_final && self.all_final() {
                break;
            }
        }
    }

    /// Starts digesting every event from now on; [`Sim::digest`] reads it.
    pub fn record_digest(&mut self) {
        self.digest = Some(std::collections::hash_map::DefaultHasher::new());
    }

    /// The digest of the events dispatched since [`Sim::record_digest`].
    pub fn digest(&self) -> Option<u64> {
        use std::hash::Hasher;
        self.digest.as_ref().map(Hasher::finish)
    }

    /// A one-line summary of a run (`HODEI_SIM_STATS=1`).
    pub fn stats(&self, name: &str, seed: u64) -> String {
        let mut by_state: std::collections::BTreeMap<String, usize> = Default::default();
        for r in self.store.jobs.values() {
            *by_state.entry(r.state.to_string()).or_default() += 1;
        }
        let attempts: u32 = self.store.jobs.values().map(|r| r.attempt.0).sum();
        let mut reasons: std::collections::BTreeMap<String, usize> = Default::default();
        for ev in self.store.events.iter().flatten() {
            let r = ev.reason.as_deref().unwrap_or("-");
            let key: String = r
                .split([',', ':', '('])
                .next()
                .unwrap_or(r)
                .chars()
                .filter(|c| !c.is_ascii_digit())
                .collect();
            *reasons.entry(key).or_default() += 1;
        }
        format!(
            "{name} seed {seed}: t={} ms, {} events, era {}, acked {}, stored {by_state:?}, \
             attempts {attempts}, processes {}, stored events {}\n  {:?}\n  {reasons:?}",
            (self.now - 1_000_000) / 1_000,
            self.seq,
            self.server.era,
            self.clients.acked.len(),
            self.oracle.results.len(),
            self.store.events.iter().map(Vec::len).sum::<usize>(),
            self.counts,
        )
    }

    pub fn all_final(&self) -> bool {
        let c = &self.clients;
        c.scheduled == 0 && c.submits_pending() == 0 && c.finals.len() == c.acked.len()
    }

    /// While an agent's host is paused nothing happens on it: its events wait for the end
    /// of the pause, in their order.
    fn paused_until(&self, ev: &Ev) -> Option<Micros> {
        let agent = match ev {
            Ev::ToAgent { agent, .. }
            | Ev::AgentSawClose { agent, .. }
            | Ev::AgentIdle { agent, .. }
            | Ev::AgentConnect { agent, .. }
            | Ev::AgentBeat { agent, .. }
            | Ev::LeaseExpire { agent, .. }
            | Ev::JobStart { agent, .. }
            | Ev::JobDone { agent, .. }
            | Ev::DrainDeadline { agent, .. }
            | Ev::Leave { agent, .. } => *agent,
            _ => return None,
        };
        self.agents[agent].paused_until.filter(|t| *t > self.now)
    }

    fn dispatch(&mut self, ev: Ev) {
        if let Some(until) = self.paused_until(&ev) {
            self.at_abs(until, ev);
            return;
        }
        let era = self.server.era;
        match ev {
            Ev::Input {
                shard,
                era: e,
                input,
            } if e == era => self.shard_input(shard, input),
            Ev::Turn { shard, era: e } if e == era => self.shard_turn(shard),
            Ev::Timer { shard, era: e, at } if e == era => self.shard_timer(shard, at),
            Ev::Commit {
                shard,
                era: e,
                turn,
            } if e == era => self.shard_commit(shard, turn),
            Ev::Commit { turn, .. } => {
                if !turn.persists.is_empty() {
                    self.count("commit lost to a restart");
                }
            }
            Ev::Input { .. } | Ev::Turn { .. } | Ev::Timer { .. } => {}
            Ev::Restart => self.restart(),
            Ev::ToAgent { agent, conn, msg } => self.deliver_to_agent(agent, conn, msg),
            Ev::FromAgent { conn, msg } => self.deliver_to_server(conn, msg),
            Ev::AgentSawClose { agent, conn, stall } => self.agent_saw_close(agent, conn, stall),
            Ev::ServerSawClose { conn } => self.server_saw_close(conn),
            Ev::Partition { agent, until } => self.partition(agent, until),
            Ev::AgentIdle { agent, conn } => self.agent_idle(agent, conn),
            Ev::ConnLoss { agent } => self.conn_loss(agent),
            Ev::AgentConnect { agent, life, shard } => self.agent_connect(agent, life, shard),
            Ev::AgentBeat { agent, conn } => self.agent_beat(agent, conn),
            Ev::LeaseExpire { agent, life, since } => self.lease_expire(agent, life, since),
            Ev::JobStart {
                agent,
                life,
                job,
                attempt,
            } => self.job_start(agent, life, job, attempt),
            Ev::JobDone {
                agent,
                life,
                job,
                attempt,
            } => self.job_done(agent, life, job, attempt),
            Ev::DrainStart { agent, by_server } => self.drain_start(agent, by_server),
            Ev::DrainDeadline { agent, life } => self.drain_deadline(agent, life),
            Ev::Leave { agent, life } => self.try_leave(agent, life),
            Ev::Crash { agent } => self.crash(agent),
            Ev::CrashOrphaning { agent } => self.crash_orphaning(agent),
            // One pause at a time: a pause is as long as `pause_ms` says.
            Ev::Pause { agent, until } => {
                if self.agents[agent]
                    .paused_until
                    .is_none_or(|t| t <= self.now)
                {
                    self.count("host paused");
                    self.agents[agent].paused_until = Some(until);
                }
            }
            Ev::Revive { agent } => self.revive(agent),
            Ev::Submit { shard, specs } => self.submit(shard, specs),
            Ev::Cancel => self.cancel_random(),
            Ev::Wait => self.wait_random(),
            Ev::Retry => self.retry_random(),
            Ev::Probe => {
                self.probe_conservation();
                self.at(ms(500), Ev::Probe);
            }
        }
    }
}

/// Seeds to run: `HODEI_SIM_SEED=s` runs only `s`; `HODEI_SIM_SEEDS=n` runs `0..n`.
pub fn seeds(default: u64) -> std::ops::Range<u64> {
    let var = |name: &str| std::env::var(name).ok().and_then(|s| s.parse::<u64>().ok());
    if let Some(s) = var("HODEI_SIM_SEED") {
        return s..s + 1;
    }
    0..var("HODEI_SIM_SEEDS").unwrap_or(default)
}

/// Runs one seed to completion and checks it; on failure, the seed and the first violations.
pub fn run_seed(name: &str, seed: u64, opts: Opts) -> Result<Sim, String> {
    let mut sim = Sim::new(seed, opts);
    sim.run(ms(900_000), true);
    // With retention, on past every job's window: what expires is checked at the end.
    let tail = sim.retention_tail();
    if tail > 0 {
        sim.run(tail, false);
    }
    let v = sim.check_end();
    if std::env::var("HODEI_SIM_STATS").is_ok() {
        eprintln!("{}", sim.stats(name, seed));
    }
    if v.is_empty() {
        return Ok(sim);
    }
    Err(format!(
        "scenario {name}, seed {seed}: {} violation(s); first: {:#?}\n\
         replay: HODEI_SIM_SEED={seed} HODEI_SIM_TRACE=<job id> cargo test -p hodei-shards \
         --release --test sim {name} -- --nocapture",
        v.len(),
        &v[..v.len().min(6)]
    ))
}

/// Runs a scenario over its seeds; panics at the first failing seed.
/// `HODEI_SIM_KEEP_GOING=1` runs every seed and lists all failures before panicking.
pub fn scenario(name: &str, default_seeds: u64, opts: impl Fn() -> Opts) -> usize {
    let keep_going = std::env::var("HODEI_SIM_KEEP_GOING").is_ok();
    let mut acked = 0;
    let mut failed = Vec::new();
    for seed in seeds(default_seeds) {
        match run_seed(name, seed, opts()) {
            Ok(sim) => acked += sim.clients.acked.len(),
            Err(e) if keep_going => {
                eprintln!("{}", e.lines().take(3).collect::<Vec<_>>().join(" "));
                failed.push(seed);
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        failed.is_empty(),
        "scenario {name}: seeds {failed:?} failed"
    );
    acked
}
