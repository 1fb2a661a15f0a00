//! Seeds that found bugs in `hodei_shards`, kept as named tests. Each test replays the
//! schedules that failed (several per bug, so that a change of the shard's decisions
//! elsewhere does not make the test miss the path it guards).
//!
//! A seed replays the same schedule only with the same simulation code and scenario: the
//! scenarios are frozen here as they were when the bug was found. If the harness changes so
//! much that a test no longer reaches its path, find a failing seed again by reverting the
//! fix and running the scenario with `HODEI_SIM_KEEP_GOING=1 HODEI_SIM_SEEDS=2000`.
//!
//! A bug found and not fixed yet gets its test here, `#[ignore]`d, with what happens and
//! where, until the fix lands.

use hodei_core::time::ms;

use crate::scenarios::{chaos, partitions, policies, slow_disks, slow_starts, storm};
use crate::world::{Opts, Sim, run_seed};

/// A seed and the scenario it failed in.
type Run = (u64, fn() -> Opts);

/// Runs each seed; fails with every seed that shows a violation.
fn replay(name: &str, runs: &[Run]) {
    let failures: Vec<String> = runs
        .iter()
        .filter_map(|(seed, opts)| run_seed(name, *seed, opts()).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `storm` before it had slow starts.
fn storm_as_found() -> Opts {
    Opts {
        slow_spawns: false,
        assign_timeout_ms: None,
        min_backoff_ms: 10,
        ..storm()
    }
}

// Bug A (fixed in 90cf692). `sched.rs` `on_steal_reply`: after a steal reply with no grants
// but `more` set, the stealer stopped asking that owner until its capacity grew again. But
// capacity freed while the request was outstanding had already run `capacity_grew` (a no-op
// then) and was forgotten: the queued job that did not fit the offered worker but fit the
// freed one waited beside that idle worker until some unrelated event (30 s in one seed; in
// a quiet cluster, forever). Found as "pending for 3000 ms while ... is free and matches".
#[test]
fn steal_reply_forgets_capacity_freed_during_the_request() {
    replay(
        "steal_reply_forgets_capacity_freed_during_the_request",
        &[
            (1_022, storm_as_found),
            (1_735, storm_as_found),
            (572, chaos),
            (1_691, chaos),
        ],
    );
}

// Bug B (fixed in 90cf692). `lifecycle.rs` `on_ack_due`: an assignment not acknowledged in
// time was abandoned and requeued after the policy's backoff (0 ms possible), with nothing
// proving the agent had dropped it: a slow agent got the Abandon after the retry was
// assigned elsewhere, and an agent behind a partition or a dropped connection got it only
// when it reconnected, or never. Found as "attempt 3 on agent 1 and attempt 4 on agent 0
// run at once".
#[test]
fn ack_deadline_retry_runs_beside_the_slow_attempt() {
    let name = "ack_deadline_retry_runs_beside_the_slow_attempt";
    replay(
        name,
        &[(89, slow_starts), (106, slow_starts), (120, slow_starts)],
    );
}

// Bug C (fixed in 90cf692). `sched.rs` `Worker::reserve` saturated free capacity at 0 and
// `Worker::release` added back unconditionally; an agent re-registering with more attempts
// than slots (finished results not yet acknowledged count in `Hello.held`) gained phantom
// capacity with each FinishedAck, and `on_steal_reply` added offered capacity back to a
// worker that had re-registered meanwhile. Found as "agent 1 runs 3 attempts with 2
// slot(s)" and "w1.1.1 has 3 free slots of 2".
#[test]
fn reregistered_agent_gets_more_jobs_than_slots() {
    let name = "reregistered_agent_gets_more_jobs_than_slots";
    replay(name, &[(1, slow_disks), (12, slow_disks), (21, slow_disks)]);
}

// Bug D (fixed in 90cf692). `workers.rs` `deliver`: for `Abandon` and `FinishedAck` it
// released the slot and scheduled before sending the message itself, so the `Assign` that
// reused the slot went out ahead of the `Abandon` that freed it, and the agent ran one job
// more than its slots. Found as "agent 2 runs 3 attempts with 2 slot(s)".
#[test]
fn assign_overtakes_the_abandon_that_frees_its_slot() {
    let name = "assign_overtakes_the_abandon_that_frees_its_slot";
    replay(name, &[(199, policies), (221, policies), (298, policies)]);
}

// Bug E (fixed in fb3614f). The shard's output depended on `HashMap` iteration order, which
// std randomizes per map (`workers.rs` `lose` and `terminate` drained `Worker::held`,
// `on_hello` reported forgotten attempts in `into_values()` order), so a seed did not
// always replay the same schedule.
#[test]
fn same_seed_replays_the_same_schedule() {
    let digest = || {
        let mut sim = Sim::new(0, partitions());
        sim.record_digest();
        sim.run(ms(900_000), true);
        sim.digest()
    };
    let first = digest();
    for _ in 0..10 {
        assert_eq!(digest(), first, "seed 0 replayed differently");
    }
}
