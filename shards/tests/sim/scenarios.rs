//! The randomized scenarios: each runs its default number of seeds (`HODEI_SIM_SEEDS=N`
//! for N, `HODEI_SIM_SEED=s` for one) and fails with the seed and the first violations.
//! The seeds that found bugs are kept in `regressions.rs`.

use hodei_core::ids::Attempt;
use hodei_core::job::JobRecord;
use hodei_core::spec::JobSpec;
use hodei_core::state::JobState;
use hodei_core::time::ms;

use crate::world::{Ev, Opts, Sim, run_seed, scenario, seeds};

pub fn dispatch() -> Opts {
    Opts::base(2, 4, 200)
}

pub fn stealing() -> Opts {
    // Every agent on shard 2, every job submitted to shard 0: only stealing runs them.
    Opts {
        agent_shard: Some(2),
        submit_shard: Some(0),
        ..Opts::base(3, 3, 100)
    }
}

/// The fleet arrives 40 s after the jobs, longer than the assign timeout (30 s), all on
/// the shard that owns none of them: the owner, idle all that time, grants every job on a
/// steal request, and the grants' deadlines count from the request.
pub fn late_fleet() -> Opts {
    Opts {
        agents_after_ms: 40_000,
        ..stealing()
    }
}

pub fn restarts() -> Opts {
    Opts {
        restarts: 3,
        job_ms: (5, 400),
        ..Opts::base(2, 3, 150)
    }
}

/// Agents come back up to 40 s after a restart, long after the re-attach grace: their jobs
/// were requeued (the lease killed them first), and their late claims are fenced.
pub fn late_agents() -> Opts {
    Opts {
        restarts: 3,
        late_reconnect_ms: 40_000,
        job_ms: (5, 1_000),
        long_job_ms: 30_000,
        ..Opts::base(2, 3, 100)
    }
}

pub fn crashes() -> Opts {
    Opts {
        crashes: 3,
        restarts: 1,
        job_ms: (5, 800),
        long_job_ms: 20_000,
        ..Opts::base(3, 4, 150)
    }
}

/// Partitions from 0.5 s (the connection survives) to 25 s (the worker is lost), with jobs
/// long enough to outlive them.
pub fn partitions() -> Opts {
    Opts {
        partitions: 4,
        partition_ms: (500, 25_000),
        fault_ms: 8_000,
        submit_ms: 6_000,
        job_ms: (10, 3_000),
        long_job_ms: 30_000,
        ..Opts::base(2, 4, 80)
    }
}

pub fn lost_connections() -> Opts {
    Opts {
        conn_losses: 12,
        job_ms: (5, 800),
        long_job_ms: 10_000,
        ..Opts::base(3, 4, 150)
    }
}

pub fn slow_disks() -> Opts {
    Opts {
        slow_disk_ms: 50,
        restarts: 3,
        conn_losses: 3,
        job_ms: (5, 500),
        ..Opts::base(3, 4, 150)
    }
}

pub fn policies() -> Opts {
    Opts {
        policies: true,
        keyed: 10,
        cancels: 15,
        waits: 10,
        retries: 10,
        job_ms: (1, 300),
        ..Opts::base(3, 4, 150)
    }
}

pub fn drains() -> Opts {
    Opts {
        policies: true,
        drains: 4,
        job_ms: (5, 1_000),
        long_job_ms: 10_000,
        ..Opts::base(2, 4, 120)
    }
}

/// Some spawns outlast a 1 s assignment deadline, retries may be due at once, connections
/// drop: the abandoned attempt must never run beside its retry (bug B).
pub fn slow_starts() -> Opts {
    Opts {
        policies: true,
        slow_spawns: true,
        assign_timeout_ms: Some(1_000),
        conn_losses: 4,
        job_ms: (5, 500),
        ..Opts::base(2, 4, 120)
    }
}

/// Everything at once.
pub fn chaos() -> Opts {
    Opts {
        policies: true,
        keyed: 6,
        cancels: 8,
        waits: 6,
        retries: 4,
        restarts: 2,
        crashes: 2,
        partitions: 3,
        partition_ms: (500, 20_000),
        conn_losses: 4,
        drains: 2,
        slow_disk_ms: 50,
        fault_ms: 6_000,
        submit_ms: 4_000,
        job_ms: (5, 1_500),
        long_job_ms: 30_000,
        ..Opts::base(3, 5, 120)
    }
}

/// Four shards, single-slot agents, every fault more often, late agents, slow starts.
pub fn storm() -> Opts {
    Opts {
        shards: 4,
        agents: 6,
        slots: 1,
        jobs: 100,
        restarts: 4,
        crashes: 3,
        partitions: 6,
        conn_losses: 10,
        drains: 3,
        slow_spawns: true,
        assign_timeout_ms: Some(2_000),
        late_reconnect_ms: 8_000,
        fault_ms: 10_000,
        submit_ms: 6_000,
        ..chaos()
    }
}

#[test]
fn dispatch_runs_every_job_exactly_once() {
    let name = "dispatch_runs_every_job_exactly_once";
    for seed in seeds(120) {
        let sim = run_seed(name, seed, dispatch()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sim.clients.acked.len(), 200);
        for r in sim.store.jobs.values() {
            assert_eq!(r.state, JobState::Succeeded, "seed {seed}: {}", r.id);
            assert_eq!(sim.oracle.successes.get(&r.id), Some(&1), "seed {seed}");
        }
    }
}

#[test]
fn idle_shard_steals_from_a_busy_one() {
    assert!(scenario("idle_shard_steals_from_a_busy_one", 120, stealing) > 0);
}

#[test]
fn a_fleet_arriving_after_the_assign_timeout_runs_each_job_at_its_first_attempt() {
    let name = "a_fleet_arriving_after_the_assign_timeout_runs_each_job_at_its_first_attempt";
    for seed in seeds(40) {
        let sim = run_seed(name, seed, late_fleet()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sim.clients.acked.len(), 100);
        for r in sim.store.jobs.values() {
            let what = (r.state, r.attempt);
            assert_eq!(
                what,
                (JobState::Succeeded, Attempt(1)),
                "seed {seed}: {}",
                r.id
            );
        }
    }
}

#[test]
fn server_restarts_lose_no_job_and_run_none_twice() {
    scenario(
        "server_restarts_lose_no_job_and_run_none_twice",
        240,
        restarts,
    );
}

#[test]
fn agents_back_after_the_grace_are_fenced() {
    scenario("agents_back_after_the_grace_are_fenced", 240, late_agents);
}

#[test]
fn crashed_agents_jobs_are_requeued_and_finish_once() {
    scenario(
        "crashed_agents_jobs_are_requeued_and_finish_once",
        240,
        crashes,
    );
}

#[test]
fn partitioned_agents_are_lost_and_their_jobs_run_once_at_a_time() {
    let name = "partitioned_agents_are_lost_and_their_jobs_run_once_at_a_time";
    scenario(name, 240, partitions);
}

#[test]
fn lost_connections_lose_no_report() {
    scenario("lost_connections_lose_no_report", 240, lost_connections);
}

#[test]
fn slow_disks_and_restarts_during_commits() {
    scenario("slow_disks_and_restarts_during_commits", 240, slow_disks);
}

#[test]
fn retry_policies_timeouts_keys_and_cancels() {
    scenario("retry_policies_timeouts_keys_and_cancels", 240, policies);
}

#[test]
fn drained_agents_hand_back_their_jobs() {
    scenario("drained_agents_hand_back_their_jobs", 240, drains);
}

#[test]
fn slow_starts_hit_the_assignment_deadline() {
    scenario("slow_starts_hit_the_assignment_deadline", 240, slow_starts);
}

#[test]
fn chaos_of_every_fault() {
    scenario("chaos_of_every_fault", 400, chaos);
}

#[test]
fn storm_of_faults_on_four_shards() {
    scenario("storm_of_faults_on_four_shards", 400, storm);
}

#[test]
fn higher_priority_runs_first() {
    // One agent, one slot, on a single shard: the queue order is the priority order.
    let mut sim = Sim::new(
        7,
        Opts {
            slots: 1,
            ..Opts::base(1, 1, 0)
        },
    );
    sim.run(ms(100), false); // the agent registered, nothing to do
    let mut low = JobSpec::exec("work", &[]);
    low.env.push(("SIM_MS".to_owned(), "10".to_owned()));
    let mut high = low.clone();
    high.priority = 5;
    let specs = vec![
        low.clone(),
        low.clone(),
        low,
        high.clone(),
        high.clone(),
        high,
    ];
    sim.clients.scheduled += 1;
    sim.at(0, Ev::Submit { shard: 0, specs });
    sim.run(ms(10_000), true);
    assert_eq!(sim.check_end(), Vec::<String>::new());
    let mut recs: Vec<&JobRecord> = sim.store.jobs.values().collect();
    recs.sort_by_key(|r| r.started_at);
    let prios: Vec<i32> = recs.iter().map(|r| r.spec.priority).collect();
    // One submit is one event: all six are queued before the first assignment.
    assert_eq!(prios, vec![5, 5, 5, 0, 0, 0]);
}
