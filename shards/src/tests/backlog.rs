//! Jobs no worker can run never hold up the jobs behind them, neither in the owner's own
//! scheduling nor in what it grants a stealing shard.

use hodei_core::ids::WorkerId;
use hodei_core::spec::JobSpec;

use super::{agent, assigned, shard, submit, unplaceable};
use crate::comm::{Effects, Offer, ShardMsg};

/// More unplaceable jobs than any fixed look-ahead, ahead of the queue by priority.
fn backlog(n: usize) -> Vec<JobSpec> {
    (0..n)
        .map(|i| {
            let mut s = unplaceable();
            s.priority = 1;
            // Two requirement classes: a missing label, and more CPUs than any worker has.
            if i.is_multiple_of(2) {
                s.labels.clear();
                s.cpus = 64;
            }
            s
        })
        .collect()
}

/// A free worker runs the job behind 5,000 that it cannot run, at once; and when a worker
/// that can run the backlog registers, it gets it.
#[test]
fn a_placeable_job_behind_an_unplaceable_backlog_starts_at_once() {
    let mut s = shard(0, 1, 1_000);
    agent(&mut s, 1_000, 1, 4, &[]);
    let (_, fx) = submit(&mut s, 2_000, backlog(5_000));
    assert!(assigned(&fx).is_empty());
    let (ids, fx) = submit(&mut s, 3_000, vec![JobSpec::exec("/bin/true", &[])]);
    assert_eq!(
        assigned(&fx),
        ids,
        "the placeable job waits behind the backlog"
    );
    assert_eq!(s.pending(), 5_000);
    agent(&mut s, 4_000, 2, 2, &[("gpu", "a100")]);
    assert_eq!(
        s.pending(),
        4_998,
        "the labelled worker took two of its class"
    );
}

/// A steal request is granted the placeable jobs behind 5,000 unplaceable ones, in queue
/// order, up to the slots offered.
#[test]
fn a_steal_request_finds_placeable_work_behind_an_unplaceable_backlog() {
    let mut owner = shard(0, 2, 1_000);
    submit(&mut owner, 2_000, backlog(5_000));
    let plain = JobSpec::exec("/bin/true", &[]);
    let (ids, _) = submit(&mut owner, 3_000, vec![plain.clone(), plain.clone(), plain]);
    let offers = vec![Offer {
        worker: WorkerId::new(1, 1, 1),
        slots: 2,
        cpus: 4,
        memory: 1 << 30,
        labels: Vec::new(),
    }];
    let mut fx = Effects::default();
    owner.handle_shard(4_000, ShardMsg::StealRequest { from: 1, offers }, &mut fx);
    let granted: Vec<_> = fx
        .shard
        .iter()
        .filter_map(|(_, m)| match m {
            ShardMsg::StealReply { grants, more, .. } => Some((grants, *more)),
            _ => None,
        })
        .flat_map(|(g, more)| {
            assert!(more, "jobs are left");
            g.iter().map(|g| g.job)
        })
        .collect();
    assert_eq!(granted, ids[..2], "granted behind the backlog");
}
