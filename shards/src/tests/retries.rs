//! Only attempts that started use up retries: one lost before it started goes back to the
//! queue, within a bound.

use hodei_core::ids::{Attempt, JobId, WorkerId};
use hodei_core::job::JobRecord;
use hodei_core::spec::{JobSpec, RetryOn};
use hodei_core::state::JobState;
use hodei_core::time::{Micros, ms};
use hodei_core::wire::FromAgent;

use super::{agent, assigned, shard, submit};
use crate::comm::{ConnId, Effects, Offer, Report, ShardMsg};
use crate::lifecycle::MAX_UNSTARTED;
use crate::shard::Shard;

/// Retried only when its process exits non-zero, and then never.
fn no_retries() -> JobSpec {
    let mut spec = JobSpec::exec("/bin/true", &[]);
    spec.policy.retries = 0;
    spec.policy.retry_on = RetryOn::EXIT;
    spec
}

fn record(s: &Shard, id: JobId) -> JobRecord {
    s.jobs()
        .find(|r| r.id == id)
        .cloned()
        .unwrap_or_else(|| panic!("{id} is gone"))
}

/// Shard 1 steals the job for its worker, whose grant then finds no worker: reported lost.
fn steal_and_lose(owner: &mut Shard, id: JobId, now: Micros) -> Attempt {
    let worker = WorkerId::new(1, 1, 1);
    let offers = vec![Offer {
        worker,
        slots: 1,
        cpus: 4,
        memory: 1 << 30,
        labels: Vec::new(),
    }];
    let mut fx = Effects::default();
    owner.handle_shard(now, ShardMsg::StealRequest { from: 1, offers }, &mut fx);
    let attempt = record(owner, id).attempt;
    assert_eq!(record(owner, id).state, JobState::Assigned, "not granted");
    let report = ShardMsg::Report {
        worker,
        job: id,
        attempt,
        report: Report::Lost {
            reason: "worker no longer available for the grant".to_owned(),
        },
    };
    owner.handle_shard(now, report, &mut Effects::default());
    attempt
}

/// A job with no retries whose grant is lost before it starts is queued again, not failed;
/// it is stolen and lost again, up to the bound, and then fails saying why.
#[test]
fn a_lost_grant_uses_no_retry_up_to_the_bound() {
    let mut owner = shard(0, 2, ms(1_000));
    let (ids, _) = submit(&mut owner, ms(1_000), vec![no_retries()]);
    let [id] = ids[..] else {
        panic!("submitted {ids:?}");
    };
    for n in 1..=MAX_UNSTARTED {
        let attempt = steal_and_lose(&mut owner, id, ms(2_000));
        assert_eq!(attempt, Attempt(n));
        let r = record(&owner, id);
        assert_eq!(
            r.state,
            JobState::Pending,
            "after {n} lost grant(s): {:?}",
            r.error
        );
        assert_eq!(
            (r.not_before, owner.pending()),
            (None, 1),
            "not queued at once"
        );
    }
    steal_and_lose(&mut owner, id, ms(2_000));
    let r = record(&owner, id);
    assert_eq!(r.state, JobState::Failed);
    let error = r.error.unwrap_or_default();
    assert!(error.contains("never started"), "{error}");
}

/// An assignment its agent never acknowledges goes back to the queue once the agent's
/// lease is surely over, and runs on the next attempt; one that started and is then lost
/// uses the job's only run.
#[test]
fn an_unacknowledged_assignment_uses_no_retry_a_started_one_does() {
    let mut s = shard(0, 1, ms(1_000));
    let worker = agent(&mut s, ms(1_000), 1, 1, &[]);
    let (ids, fx) = submit(&mut s, ms(1_000), vec![no_retries()]);
    assert_eq!(assigned(&fx), ids);
    let id = ids[0];
    let late = ms(1_000) + s.cfg.assign_timeout;
    // The agent stays connected (heartbeats) but never starts it.
    let beat = FromAgent::Heartbeat {
        running: 0,
        load: 0,
    };
    s.handle_agent(late, ConnId(1), beat.clone(), &mut Effects::default());
    s.handle_timeout(late, &mut Effects::default());
    let r = record(&s, id);
    assert_eq!(r.state, JobState::Pending, "{:?}", r.error);
    let Some(due) = r.not_before else {
        panic!("requeued before the agent's lease is over");
    };
    assert!(due >= late + s.cfg.disconnect_grace);
    s.handle_agent(due, ConnId(1), beat, &mut Effects::default());
    let mut fx = Effects::default();
    s.handle_timeout(due, &mut fx);
    assert_eq!(assigned(&fx), ids, "not assigned again");
    let attempt = record(&s, id).attempt;
    assert_eq!(attempt, Attempt(2));
    let started = FromAgent::Started {
        job: id,
        attempt,
        at: due,
    };
    s.handle_agent(due, ConnId(1), started, &mut Effects::default());
    let lost = Report::Lost {
        reason: "test".to_owned(),
    };
    s.handle_shard(
        due,
        lost_report(worker, id, attempt, lost),
        &mut Effects::default(),
    );
    let r = record(&s, id);
    assert_eq!(r.state, JobState::Failed, "a started attempt did not count");
}

fn lost_report(worker: WorkerId, job: JobId, attempt: Attempt, report: Report) -> ShardMsg {
    ShardMsg::Report {
        worker,
        job,
        attempt,
        report,
    }
}
