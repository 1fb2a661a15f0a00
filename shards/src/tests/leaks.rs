//! Nothing a client or agent leaves behind outlives it: registrations of a client that went
//! away, deadlines of an agent that reconnects again and again, workers that departed long
//! ago. Each test counts what the shard holds ([`Shard::footprint`]).

use hodei_core::ids::{JobId, WorkerId};
use hodei_core::spec::JobSpec;
use hodei_core::time::{Micros, ms};
use hodei_core::wire::{FromAgent, FromServer, Hello, JobRequest, Resources, ToAgent};

use super::{agent, shard, submit, unplaceable};
use crate::clients::Footprint;
use crate::comm::{ConnId, Effects, Reply, ReqId};
use crate::shard::Shard;
use crate::worker_table::MAX_DEPARTED;

/// Delivers the shards' messages to each other until none is left; the client replies each
/// shard sent meanwhile, as (shard, request, reply, last).
fn pump(
    shards: &mut [Shard],
    now: Micros,
    mut fx: Vec<Effects>,
) -> Vec<(usize, ReqId, Reply, bool)> {
    let mut replies = Vec::new();
    loop {
        let mut msgs = Vec::new();
        for (i, f) in fx.iter_mut().enumerate() {
            replies.extend(f.reply.drain(..).map(|(r, rep, last)| (i, r, rep, last)));
            msgs.append(&mut f.shard);
        }
        if msgs.is_empty() {
            return replies;
        }
        for (to, m) in msgs {
            shards[to].handle_shard(now, m, &mut fx[to]);
        }
    }
}

fn effects(n: usize) -> Vec<Effects> {
    (0..n).map(|_| Effects::default()).collect()
}

/// What a footprint holds for clients (jobs, workers and timers aside).
fn client_state(f: &Footprint) -> [usize; 8] {
    [
        f.waiters,
        f.log_followers,
        f.event_followers,
        f.wait_groups,
        f.registered_requests,
        f.open_requests,
        f.gathers,
        0,
    ]
}

/// Clients of shard 0 wait on jobs of both shards, follow their output and the event
/// stream, and submit-and-wait, then go away before any job ends: every registration goes,
/// on both shards. Without `handle_client_gone` forgetting waiters, followers and wait
/// groups (and telling the shard that holds them), they stay until the jobs end.
#[test]
fn a_client_gone_leaves_no_registration_on_any_shard() {
    let now = ms(1_000);
    let mut shards = vec![shard(0, 2, now), shard(1, 2, now)];
    let (ids0, _) = submit(&mut shards[0], now, vec![unplaceable(), unplaceable()]);
    let (ids1, _) = submit(&mut shards[1], now, vec![unplaceable(), unplaceable()]);
    let mut fx = effects(2);
    let mut req = 100;
    let mut reqs = Vec::new();
    for job in ids0.iter().chain(&ids1) {
        for body in [
            JobRequest::Wait { job: *job },
            JobRequest::Logs {
                job: *job,
                follow: true,
            },
        ] {
            req += 1;
            shards[0].handle_client(now, ReqId(req), body, &mut fx[0]);
            reqs.push(ReqId(req));
        }
    }
    for body in [
        JobRequest::Events {
            since: Vec::new(),
            job: None,
            follow: true,
        },
        JobRequest::Events {
            since: Vec::new(),
            job: Some(ids1[0]),
            follow: true,
        },
        JobRequest::SubmitWait {
            specs: vec![unplaceable(), unplaceable()],
        },
        JobRequest::ListJobs { state: None },
    ] {
        req += 1;
        shards[0].handle_client(now, ReqId(req), body, &mut fx[0]);
        reqs.push(ReqId(req));
    }
    pump(&mut shards, now, fx);
    let held = shards[1].footprint();
    assert_eq!(
        (held.waiters, held.log_followers, held.event_followers),
        (2, 2, 2)
    );
    let mut fx = effects(2);
    for r in &reqs {
        shards[0].handle_client_gone(*r, &mut fx[0]);
    }
    // Gone twice, or for a request that never existed: nothing to do.
    shards[0].handle_client_gone(reqs[0], &mut fx[0]);
    shards[0].handle_client_gone(ReqId(1), &mut fx[0]);
    pump(&mut shards, now, fx);
    for s in &shards {
        assert_eq!(
            client_state(&s.footprint()),
            [0; 8],
            "shard {}: {:?}",
            s.index(),
            s.footprint()
        );
    }
}

/// Requests answered to their end leave nothing either: the index of registrations is
/// emptied by the answers themselves, with no client gone.
#[test]
fn answered_requests_leave_no_registration() {
    let now = ms(1_000);
    let mut shards = vec![shard(0, 2, now), shard(1, 2, now)];
    let (ids1, _) = submit(&mut shards[1], now, vec![unplaceable(), unplaceable()]);
    let mut fx = effects(2);
    let mut req = 100;
    for job in &ids1 {
        for body in [
            JobRequest::Wait { job: *job },
            JobRequest::Logs {
                job: *job,
                follow: true,
            },
        ] {
            req += 1;
            shards[0].handle_client(now, ReqId(req), body, &mut fx[0]);
        }
    }
    req += 1;
    let waited = ReqId(req);
    let specs = vec![unplaceable(), unplaceable()];
    shards[0].handle_client(now, waited, JobRequest::SubmitWait { specs }, &mut fx[0]);
    pump(&mut shards, now, fx);
    let mine: Vec<JobId> = shards[0].jobs().map(|r| r.id).collect();
    let mut fx = effects(2);
    for job in ids1.iter().chain(&mine) {
        req += 1;
        shards[0].handle_client(
            now,
            ReqId(req),
            JobRequest::Cancel { job: *job },
            &mut fx[0],
        );
    }
    let replies = pump(&mut shards, now, fx);
    let ends = replies
        .iter()
        .filter(|(_, r, _, last)| *r == waited && *last)
        .count();
    assert_eq!(ends, 1, "the SubmitWait ends once");
    for s in &shards {
        assert_eq!(
            client_state(&s.footprint()),
            [0; 8],
            "shard {}: {:?}",
            s.index(),
            s.footprint()
        );
    }
}

/// An event read fanned out to two shards is one stream: both shards' parts, then one
/// `LogEnd` that ends it. (A reply from the other shard used to go straight to the client,
/// ending the stream with that shard's part and leaving the read open at its shard.)
#[test]
fn an_event_read_of_two_shards_ends_once_after_both_parts() {
    let now = ms(1_000);
    let mut shards = vec![shard(0, 2, now), shard(1, 2, now)];
    let mut fx = effects(2);
    let body = JobRequest::Events {
        since: Vec::new(),
        job: None,
        follow: false,
    };
    shards[0].handle_client(now, ReqId(7), body, &mut fx[0]);
    let replies = pump(&mut shards, now, fx);
    let seen: Vec<(bool, bool)> = replies
        .iter()
        .map(|(_, _, r, last)| (matches!(r, Reply::StoredEvents { .. }), *last))
        .collect();
    assert_eq!(
        seen,
        vec![(true, false), (true, false), (false, true)],
        "{replies:?}"
    );
    assert!(matches!(replies[2].2, Reply::Msg(FromServer::LogEnd)));
    assert_eq!(shards[0].footprint().gathers, 0);
}

fn hello(worker: Option<WorkerId>, held: Vec<hodei_core::wire::HeldJob>) -> FromAgent {
    FromAgent::Hello(Hello {
        worker,
        hostname: "h".to_owned(),
        resources: Resources {
            slots: 2,
            cpus: 4,
            memory: 1 << 30,
            labels: Vec::new(),
        },
        held,
    })
}

/// An agent that reconnects 500 times, with and without its old connection closing first,
/// heartbeating in between, keeps one deadline: the shard's timers do not grow with the
/// reconnects. (Each `Hello` used to arm a heartbeat timer that re-armed itself for as long as
/// the worker stayed connected.)
#[test]
fn a_reconnecting_agent_keeps_one_deadline() {
    let mut now = ms(1_000);
    let mut s = shard(0, 1, now);
    let id = agent(&mut s, now, 1, 2, &[]);
    for conn in 2..502 {
        now += ms(100);
        let mut fx = Effects::default();
        if conn % 2 == 0 {
            s.handle_agent_closed(now, ConnId(conn - 1), &mut fx);
        }
        s.handle_agent(now, ConnId(conn), hello(Some(id), Vec::new()), &mut fx);
        let beat = FromAgent::Heartbeat {
            running: 0,
            load: 0,
        };
        s.handle_agent(now + ms(50), ConnId(conn), beat, &mut fx);
        s.handle_timeout(now + ms(50), &mut fx);
    }
    // Heartbeats for a minute more, firing every deadline that comes due.
    let conn = ConnId(501);
    let end = now + ms(60_000);
    while now < end {
        now += ms(1_000);
        let mut fx = Effects::default();
        s.handle_agent(
            now,
            conn,
            FromAgent::Heartbeat {
                running: 0,
                load: 0,
            },
            &mut fx,
        );
        s.handle_timeout(now, &mut fx);
    }
    let f = s.footprint();
    assert_eq!(f.job_timers + f.worker_timers, 1, "{f:?}");
    assert_eq!(f.workers, 1);
}

/// 1,500 agents register and are lost, beside five that stay: the shard keeps the last
/// `MAX_DEPARTED` departed workers and every connected one, and no deadline of a forgotten
/// one. A lost worker that comes back is connected again and not counted as departed.
#[test]
fn departed_workers_are_kept_up_to_the_bound() {
    let mut now = ms(1_000);
    let mut s = shard(0, 1, now);
    let staying: Vec<WorkerId> = (0..5).map(|c| agent(&mut s, now, c, 1, &[])).collect();
    let mut lost = Vec::new();
    for c in 100..1_600 {
        lost.push(agent(&mut s, now, c, 1, &[]));
        s.handle_agent_closed(now, ConnId(c), &mut Effects::default());
    }
    // Past every grace, with the five heartbeating.
    let end = now + s.cfg.disconnect_grace + ms(5_000);
    while now < end {
        now += ms(1_000);
        let mut fx = Effects::default();
        for c in 0..5 {
            s.handle_agent(
                now,
                ConnId(c),
                FromAgent::Heartbeat {
                    running: 0,
                    load: 0,
                },
                &mut fx,
            );
        }
        s.handle_timeout(now, &mut fx);
    }
    let f = s.footprint();
    assert_eq!(
        (f.workers, f.departed_workers),
        (5 + MAX_DEPARTED, MAX_DEPARTED),
        "{f:?}"
    );
    assert_eq!(f.worker_timers, 5, "{f:?}");
    let mut fx = Effects::default();
    s.handle_client(now, ReqId(1), JobRequest::ListWorkers, &mut fx);
    let listed: Vec<WorkerId> = fx
        .reply
        .iter()
        .flat_map(|(_, r, _)| match r {
            Reply::Msg(FromServer::Workers(w)) => w.iter().map(|w| w.id).collect(),
            _ => Vec::new(),
        })
        .collect();
    assert!(staying.iter().all(|w| listed.contains(w)));
    assert!(
        lost[lost.len() - MAX_DEPARTED..]
            .iter()
            .all(|w| listed.contains(w))
    );
    assert!(
        !listed.contains(&lost[0]),
        "the oldest departure is forgotten"
    );
    let back = lost[lost.len() - 1];
    s.handle_agent(
        now,
        ConnId(5_000),
        hello(Some(back), Vec::new()),
        &mut Effects::default(),
    );
    let f = s.footprint();
    assert_eq!(
        (f.workers, f.departed_workers),
        (5 + MAX_DEPARTED, MAX_DEPARTED - 1)
    );
}

/// An output report whose offset plus length overflows is dropped, not stored (and does not
/// panic the shard): an agent chooses both numbers.
#[test]
fn an_output_report_past_the_end_of_u64_is_dropped() {
    let now = ms(1_000);
    let mut s = shard(0, 1, now);
    let w = agent(&mut s, now, 1, 1, &[]);
    let (ids, fx) = submit(&mut s, now, vec![JobSpec::exec("/bin/true", &[])]);
    let attempt = fx
        .agent
        .iter()
        .find_map(|(_, m)| match m {
            ToAgent::Assign { attempt, .. } => Some(*attempt),
            _ => None,
        })
        .unwrap_or_else(|| panic!("not assigned to {w}"));
    let job = ids[0];
    let mut fx = Effects::default();
    s.handle_agent(
        now,
        ConnId(1),
        FromAgent::Started {
            job,
            attempt,
            at: now,
        },
        &mut fx,
    );
    let chunks = vec![hodei_core::wire::Chunk {
        stream: hodei_core::wire::Stream::Stdout,
        data: b"12345".to_vec(),
    }];
    let out = FromAgent::Output {
        job,
        attempt,
        offset: u64::MAX - 1,
        chunks,
    };
    let mut fx = Effects::default();
    s.handle_agent(now, ConnId(1), out, &mut fx);
    assert!(fx.persists.is_empty(), "{:?}", fx.persists);
    assert_eq!(
        s.jobs().find(|r| r.id == job).map(|r| r.output_end),
        Some(0)
    );
}
