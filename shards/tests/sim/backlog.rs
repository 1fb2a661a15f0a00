//! Backlogs of jobs no agent can run, queued ahead of the rest of the workload: the jobs
//! behind them must start while a matching slot is free, on the owner's own agents and by
//! stealing (checked at every probe by `Sim::probe_local_conservation`, and across shards
//! by `Sim::probe_conservation`). The unplaceable jobs end at their queue timeouts.
//!
//! The default runs a few seeds of 10,000-job backlogs; a 100,000-job backlog is
//! `#[ignore]`d:
//!
//! ```text
//! cargo test -p hodei-shards --release --test sim backlog -- --ignored
//! ```

use crate::world::{Opts, scenario};

/// Agents on every shard, submissions to every shard.
pub fn backlog(n: usize) -> Opts {
    Opts {
        backlog: n,
        job_ms: (5, 300),
        ..Opts::base(2, 3, 150)
    }
}

/// Every agent on shard 1, every job (the backlog too) submitted to shard 0: only steal
/// requests run anything, and each must find the placeable jobs behind the backlog.
pub fn stolen_backlog(n: usize) -> Opts {
    Opts {
        agent_shard: Some(1),
        submit_shard: Some(0),
        ..backlog(n)
    }
}

/// Faults on top: restarts reload the backlog, lost connections requeue attempts.
pub fn faulty_backlog(n: usize) -> Opts {
    Opts {
        restarts: 1,
        conn_losses: 4,
        policies: true,
        ..backlog(n)
    }
}

/// The backlog while disks fill and empty and agents crash leaving their processes
/// running: every runnable job still starts while a matching slot is free.
pub fn backlog_at_the_edges(n: usize) -> Opts {
    Opts {
        disk_full: 2,
        full_ms: (1_000, 10_000),
        orphaning_crashes: 2,
        ..backlog(n)
    }
}

#[test]
fn a_backlog_while_disks_fill_and_agents_crash_leaving_processes() {
    let name = "a_backlog_while_disks_fill_and_agents_crash_leaving_processes";
    scenario(name, 2, || backlog_at_the_edges(10_000));
}

#[test]
fn jobs_behind_an_unplaceable_backlog_start_on_free_agents() {
    let name = "jobs_behind_an_unplaceable_backlog_start_on_free_agents";
    scenario(name, 4, || backlog(10_000));
}

#[test]
fn steal_requests_find_jobs_behind_an_unplaceable_backlog() {
    let name = "steal_requests_find_jobs_behind_an_unplaceable_backlog";
    scenario(name, 4, || stolen_backlog(10_000));
}

#[test]
fn an_unplaceable_backlog_under_faults() {
    scenario("an_unplaceable_backlog_under_faults", 4, || {
        faulty_backlog(10_000)
    });
}

#[test]
#[ignore = "heavy: 100,000-job backlogs; run with --release --ignored"]
fn a_hundred_thousand_job_backlog() {
    let name = "a_hundred_thousand_job_backlog";
    scenario(name, 2, || backlog(100_000));
    scenario(name, 2, || stolen_backlog(100_000));
    scenario(name, 2, || backlog_at_the_edges(100_000));
}
