//! Retention: a job final for longer than the window leaves the table with its idempotency
//! key, and the store is told (`StoreOp::DeleteJob`); jobs that are not final, or final
//! within the window, stay; a pass deletes a bounded number; a deleted id is answered
//! "expired", an id never minted "does not exist".

use hodei_core::ids::{Attempt, JobId};
use hodei_core::job::{JobRecord, Outcome};
use hodei_core::spec::JobSpec;
use hodei_core::state::JobState;
use hodei_core::time::{Micros, ms};
use hodei_core::wire::{ErrorKind, FromAgent, FromServer, JobRequest};

use super::{agent, assigned, submit, unplaceable};
use crate::comm::{ConnId, Effects, Reply, ReqId, ShardMsg, StoreOp};
use crate::lifecycle::key_shard;
use crate::retention::{EXPIRE_PER_PASS, retention_interval};
use crate::shard::{Shard, ShardConfig};

const WINDOW: Micros = ms(10_000);

fn retaining(index: usize, shards: usize, jobs: Vec<JobRecord>, now: Micros) -> Shard {
    let mut cfg = ShardConfig::new(index, shards, 2);
    cfg.retain_finished = Some(WINDOW);
    // The test's agents send no heartbeats: they must not be lost meanwhile.
    cfg.heartbeat_timeout = ms(1_000_000_000);
    cfg.disconnect_grace = ms(1_000_000_000);
    let mut s = Shard::new(cfg, jobs, now, 0);
    s.handle_start(&mut Effects::default());
    s
}

fn deleted(fx: &Effects) -> Vec<JobId> {
    fx.persists
        .iter()
        .filter_map(|op| match op {
            StoreOp::DeleteJob(id) => Some(*id),
            _ => None,
        })
        .collect()
}

fn held(s: &Shard, id: JobId) -> bool {
    s.jobs().any(|r| r.id == id)
}

/// Every retention pass due by `until`, one call per due time (as the driver's loop does).
fn run_until(s: &mut Shard, until: Micros) -> Effects {
    let mut fx = Effects::default();
    while let Some(at) = s.poll_timeout().filter(|t| *t <= until) {
        s.handle_timeout(at, &mut fx);
    }
    fx
}

/// The error a request for `job` gets.
fn error_of(s: &mut Shard, now: Micros, body: JobRequest) -> Option<(ErrorKind, String)> {
    let mut fx = Effects::default();
    s.handle_client(now, ReqId(now + 7), body, &mut fx);
    fx.reply.into_iter().find_map(|(_, r, _)| match r {
        Reply::Msg(FromServer::Error { kind, message }) => Some((kind, message)),
        _ => None,
    })
}

/// Starts and ends job `id` (its one attempt) on `conn` at `at`.
fn run_job(s: &mut Shard, conn: u64, id: JobId, at: Micros) {
    let mut fx = Effects::default();
    let attempt = Attempt(1);
    s.handle_agent(
        at,
        ConnId(conn),
        FromAgent::Started {
            job: id,
            attempt,
            at,
        },
        &mut fx,
    );
    let outcome = Outcome::Exited(0);
    let done = FromAgent::Finished {
        job: id,
        attempt,
        outcome,
        at,
    };
    s.handle_agent(at, ConnId(conn), done, &mut fx);
}

/// A job that ended longer than the window ago goes, with its idempotency key (a repeat of
/// the key makes a new job), and asking for it says it expired; a job that ended within
/// the window, one running for longer than the window and one queued for longer stay.
#[test]
fn a_job_final_past_the_window_goes_and_nothing_else_does() {
    let t0 = ms(1_000);
    let mut s = retaining(0, 1, Vec::new(), t0);
    agent(&mut s, t0, 1, 2, &[]);
    let mut keyed = JobSpec::exec("/bin/true", &[]);
    keyed.policy.idempotency_key = Some("nightly".to_owned());
    let (mut old, fx) = submit(&mut s, t0, vec![keyed.clone()]);
    let (sleeper, fx2) = submit(&mut s, t0, vec![JobSpec::exec("sleep", &[])]);
    old.extend(sleeper);
    let mut both = assigned(&fx);
    both.extend(assigned(&fx2));
    assert_eq!(both, old, "both run");
    let (queued, _) = submit(&mut s, t0, vec![unplaceable()]);
    run_job(&mut s, 1, old[0], t0 + ms(500));
    let mut fx = Effects::default();
    s.handle_agent(
        t0 + ms(500),
        ConnId(1),
        FromAgent::Started {
            job: old[1],
            attempt: Attempt(1),
            at: t0 + ms(500),
        },
        &mut fx,
    );
    let (recent, fx) = submit(
        &mut s,
        t0 + ms(6_000),
        vec![JobSpec::exec("/bin/true", &[])],
    );
    assert_eq!(assigned(&fx), recent);
    run_job(&mut s, 1, recent[0], t0 + ms(6_000));
    // Just before the first job's window ends nothing goes; just after, only it does.
    let fx = run_until(&mut s, t0 + ms(10_400));
    assert_eq!(deleted(&fx), Vec::<JobId>::new());
    let fx = run_until(&mut s, t0 + ms(10_500) + retention_interval(WINDOW));
    assert_eq!(deleted(&fx), vec![old[0]]);
    assert!(!held(&s, old[0]));
    for id in [old[1], queued[0], recent[0]] {
        assert!(held(&s, id), "{id} went");
    }
    let now = t0 + ms(11_000);
    for body in [
        JobRequest::GetJob { job: old[0] },
        JobRequest::Logs {
            job: old[0],
            follow: false,
        },
        JobRequest::Wait { job: old[0] },
        JobRequest::Retry { job: old[0] },
    ] {
        let (kind, msg) = error_of(&mut s, now, body).unwrap_or_else(|| panic!("no error"));
        assert_eq!(kind, ErrorKind::NotFound);
        assert!(
            msg.contains("expired") && msg.contains("10s") && msg.contains("--retain-finished"),
            "{msg}"
        );
    }
    let (again, _) = submit(&mut s, now, vec![keyed]);
    assert_ne!(again, vec![old[0]], "the key still named the deleted job");
    // Much later, the running and the queued job are still there; the recent one went.
    let fx = run_until(&mut s, t0 + ms(60_000));
    assert_eq!(deleted(&fx), vec![recent[0]]);
    assert!(held(&s, old[1]) && held(&s, queued[0]));
    assert_eq!(s.footprint().retained_finished, 0);
}

/// Ids this shard never minted are "does not exist": a sequence not reached yet, another
/// shard's index in this epoch, epoch 0. Ids of an earlier epoch may have been deleted.
#[test]
fn an_id_never_minted_does_not_exist_and_an_earlier_one_expired() {
    let now = ms(1_000);
    let mut s = retaining(0, 2, Vec::new(), now);
    let (ids, _) = submit(&mut s, now, vec![unplaceable()]);
    let minted = ids[0];
    let ask = |s: &mut Shard, job| {
        error_of(s, now, JobRequest::GetJob { job }).map_or_else(String::new, |(_, m)| m)
    };
    assert_eq!(ask(&mut s, minted), "", "a held job is answered");
    for never in [
        JobId::new(0, 2, minted.seq() + 1),
        JobId::new(0, 2, 0),
        JobId::new(2, 2, 1),
        JobId::new(0, 0, 1),
        JobId::new(0, 3, 1),
    ] {
        let m = ask(&mut s, never);
        assert_eq!(m, format!("job {never} does not exist"));
    }
    let earlier = ask(&mut s, JobId::new(0, 1, 99));
    assert!(earlier.contains("expired"), "{earlier}");
}

/// A million-job expiry is not one turn: a pass deletes at most `EXPIRE_PER_PASS` jobs and
/// the next comes in the next turn, until none is due; then passes are a tenth of the
/// window apart.
#[test]
fn a_pass_deletes_a_bounded_number() {
    let t0 = ms(1_000);
    let mut s = retaining(0, 1, Vec::new(), t0);
    let n = EXPIRE_PER_PASS * 2 + 100;
    let (ids, _) = submit(&mut s, t0, (0..n).map(|_| unplaceable()).collect());
    for id in &ids {
        let mut fx = Effects::default();
        s.handle_client(t0, ReqId(1), JobRequest::Cancel { job: *id }, &mut fx);
    }
    assert_eq!(s.footprint().retained_finished, n);
    let first = t0 + WINDOW;
    let due = s.poll_timeout().map_or(first, |t| t);
    let mut at = first.max(due);
    let mut sizes = Vec::new();
    loop {
        let mut fx = Effects::default();
        s.handle_timeout(at, &mut fx);
        sizes.push(deleted(&fx).len());
        let next = s.poll_timeout().unwrap_or(Micros::MAX);
        if next > at + 1 {
            assert_eq!(
                next,
                at + retention_interval(WINDOW),
                "the usual pace again"
            );
            break;
        }
        at = next;
    }
    assert_eq!(sizes, vec![EXPIRE_PER_PASS, EXPIRE_PER_PASS, 100]);
    assert_eq!(s.footprint().jobs, 0);
}

/// After a restart, final jobs loaded from the store expire from their `finished_at`,
/// which is bounded by the start (a success carries the agent's clock, which may be ahead)
/// and by the job's creation.
#[test]
fn loaded_jobs_expire_from_when_they_ended() {
    let start = ms(100_000);
    let rec = |seq, finished_at: Micros| {
        let mut r = JobRecord::new(JobId::new(0, 1, seq), JobSpec::exec("true", &[]), ms(1_000));
        r.state = JobState::Succeeded;
        r.finished_at = Some(finished_at);
        r
    };
    let long_ago = rec(1, ms(2_000));
    let recently = rec(2, start - ms(4_000));
    let ahead = rec(3, start + ms(3_600_000));
    let before_created = rec(4, ms(10));
    let mut running = rec(5, 0);
    running.state = JobState::Running;
    running.finished_at = None;
    let jobs = vec![
        long_ago.clone(),
        recently.clone(),
        ahead.clone(),
        before_created.clone(),
        running.clone(),
    ];
    let mut s = retaining(0, 1, jobs, start);
    let mut fx = run_until(&mut s, start + retention_interval(WINDOW));
    let mut got = deleted(&fx);
    got.sort();
    assert_eq!(got, vec![long_ago.id, before_created.id]);
    fx = run_until(&mut s, start + ms(6_500));
    assert_eq!(deleted(&fx), vec![recently.id]);
    fx = run_until(&mut s, start + WINDOW + ms(500));
    assert_eq!(
        deleted(&fx),
        vec![ahead.id],
        "an agent's clock ahead is bounded by the start"
    );
    assert!(held(&s, running.id));
}

/// After the shard count changed, a job's idempotency key may belong to another shard:
/// that shard is told when the job is deleted, and forgets the key.
#[test]
fn a_key_owned_by_another_shard_is_forgotten_there() {
    let key = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| key_shard(k, 2) == 1)
        .unwrap_or_default();
    let mut r = JobRecord::new(JobId::new(0, 1, 1), JobSpec::exec("true", &[]), ms(1_000));
    r.spec.policy.idempotency_key = Some(key.clone());
    r.state = JobState::Cancelled;
    r.finished_at = Some(ms(1_000));
    let now = ms(20_000);
    let mut owner = retaining(0, 2, vec![r.clone()], now);
    let mut key_holder = retaining(1, 2, vec![r.clone()], now);
    let mut fx = run_until(&mut owner, now + retention_interval(WINDOW));
    assert_eq!(deleted(&fx), vec![r.id]);
    let msgs: Vec<_> = fx.shard.drain(..).collect();
    assert_eq!(
        msgs,
        vec![(
            1,
            ShardMsg::KeysExpired {
                keys: vec![(key.clone(), r.id)]
            }
        )]
    );
    for (_, m) in msgs {
        key_holder.handle_shard(now, m, &mut Effects::default());
    }
    let mut spec = unplaceable();
    spec.policy.idempotency_key = Some(key);
    let (ids, _) = submit(&mut key_holder, now, vec![spec]);
    assert_eq!(ids.len(), 1);
    assert_ne!(ids[0], r.id, "the key still named the deleted job");
}

/// With retention off nothing is indexed and no pass is armed.
#[test]
fn retention_off_keeps_everything() {
    let now = ms(1_000);
    let mut s = super::shard(0, 1, now);
    let (ids, _) = submit(&mut s, now, vec![unplaceable()]);
    let mut fx = Effects::default();
    s.handle_client(now, ReqId(1), JobRequest::Cancel { job: ids[0] }, &mut fx);
    assert_eq!(s.footprint().retained_finished, 0);
    assert_eq!(s.poll_timeout(), None);
    let fx = run_until(&mut s, ms(1_000_000_000));
    assert!(deleted(&fx).is_empty() && held(&s, ids[0]));
}
