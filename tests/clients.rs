//! Clients that go away: what a waiting or following CLI registered in the server (waiters,
//! log followers, wait groups, reply queues) is released when its process dies, while the
//! jobs it waited on go on running. `hodei stats` shows what the shards hold.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Proc, Scratch, Server, wait_for};

/// What clients leave in the server, as `hodei stats --json` counts it.
const REGISTRATIONS: [&str; 7] = [
    "waiters",
    "log_followers",
    "event_followers",
    "wait_groups",
    "registered_requests",
    "open_requests",
    "reply_queues",
];

fn held(s: &Server) -> Vec<(&'static str, u64)> {
    let v = s.json(&["stats", "--json"]);
    assert_eq!(
        v["footprint_shards"], s.shards as u64,
        "every shard answers: {v}"
    );
    REGISTRATIONS
        .iter()
        .map(|k| (*k, v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"))))
        .collect()
}

fn count(h: &[(&str, u64)], k: &str) -> u64 {
    h.iter().find(|(n, _)| *n == k).map_or(0, |(_, v)| *v)
}

/// `hodei job wait`, `hodei job logs --follow` and `hodei job submit --wait` of jobs that run
/// for ten minutes, and `hodei events --follow`: `hodei stats` shows their waiters, followers,
/// wait groups and reply queues.
/// Each CLI is killed with `kill -9` (no goodbye: the server learns it when the connection
/// times out), and what they held goes back to what it was before they came, while both
/// jobs still run. Two shards, so requests reach jobs of the other shard too.
#[test]
fn a_killed_clients_registrations_are_released() {
    let scratch = Scratch::new("clients-gone");
    let s = Server::start(&scratch, 2);
    let _a = s.agent(&scratch, "a", 4, &[]);
    s.wait_workers(1);
    let long = s.submit(&["--", "sleep", "600"]);
    s.wait_job(&long, "the long job to run", |j| j["state"] == "running");
    let baseline = held(&s);
    for (k, v) in &baseline {
        assert_eq!(*v, 0, "{k} before any client waits: {baseline:?}");
    }

    let mut clis: Vec<Proc> = Vec::new();
    // Several of each, as a new CLI process lands on either shard.
    for _ in 0..2 {
        clis.push(s.spawn_cli(&["job", "wait", &long]));
        clis.push(s.spawn_cli(&["job", "logs", "--follow", &long]));
        clis.push(s.spawn_cli(&["job", "submit", "--wait", "--", "sleep", "600"]));
    }
    // The event stream is followed on every shard.
    clis.push(s.spawn_cli(&["events", "--follow"]));
    let during = wait_for(
        "the clients' registrations in hodei stats",
        Duration::from_secs(30),
        || {
            let h = held(&s);
            // Two `wait`s and two `submit --wait`s wait; two follow the job's output and one
            // the events of both shards; two wait groups.
            (count(&h, "waiters") >= 4
                && count(&h, "log_followers") >= 2
                && count(&h, "event_followers") >= 2
                && count(&h, "wait_groups") >= 2
                && count(&h, "reply_queues") >= 7
                && count(&h, "registered_requests") >= 7)
                .then_some(h)
        },
    );
    let jobs = s.json(&["job", "list", "--json"]);
    let waited: Vec<String> = jobs
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|j| j["id"].as_str())
        .filter(|id| *id != long)
        .map(str::to_owned)
        .collect();
    assert_eq!(waited.len(), 2, "{jobs}");
    for id in &waited {
        s.wait_job(id, "a submit --wait job to run", |j| {
            j["state"] == "running"
        });
    }
    for c in &mut clis {
        c.signal(nix::sys::signal::Signal::SIGKILL);
        c.wait_exit(Duration::from_secs(10));
    }
    wait_for(
        &format!("the registrations of the killed clients to be released (they held {during:?})"),
        Duration::from_secs(60),
        || (held(&s) == baseline).then_some(()),
    );
    for id in waited.iter().chain([&long]) {
        assert_eq!(
            s.job(id)["state"],
            "running",
            "{id} stopped with its client"
        );
    }
}

/// The workers `hodei worker list` shows, id → state.
fn workers(s: &Server) -> Vec<(String, String)> {
    let v = s.json(&["worker", "list", "--json"]);
    v.as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["id"].as_str().unwrap().to_owned(),
                w["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// `hodei worker list` after a `kill -9` of the server: the agents reconnect with their
/// worker ids and are listed again (the one running a job busy with it, re-attached at its
/// first attempt), while a worker that had drained and left before the restart is not listed
/// any more (the server keeps departed workers in memory only; the event log keeps them).
#[test]
fn workers_that_come_back_after_a_restart_are_listed_again() {
    let scratch = Scratch::new("clients-workers-restart");
    let mut s = Server::start(&scratch, 2);
    let _a = s.agent(&scratch, "a", 1, &[]);
    let _b = s.agent(&scratch, "b", 1, &[]);
    let mut c = s.agent(&scratch, "c", 1, &[]);
    s.wait_workers(3);
    let (wa, wb, wc) = (
        Server::worker_of(&scratch, "a"),
        Server::worker_of(&scratch, "b"),
        Server::worker_of(&scratch, "c"),
    );
    c.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(c.wait_exit(Duration::from_secs(30)).success());
    wait_for("c to be terminated", Duration::from_secs(30), || {
        (s.worker_state(&wc) == "terminated").then_some(())
    });
    let job = s.submit(&["--", "sleep", "600"]);
    let running = s.wait_job(&job, "the job to run", |j| j["state"] == "running");
    let on = running["worker"].as_str().unwrap().to_owned();
    assert!(on == wa || on == wb, "{running}");

    s.kill9();
    s.restart();
    let listed = wait_for(
        "a and b to be listed again after the restart",
        Duration::from_secs(30),
        || {
            let ws = workers(&s);
            let state = |id: &str| ws.iter().find(|(w, _)| w == id).map(|(_, st)| st.clone());
            let busy = state(&on)? == "busy";
            let other = if on == wa { &wb } else { &wa };
            let ready = state(other)? == "ready";
            (busy && ready).then_some(ws)
        },
    );
    assert!(
        listed.iter().all(|(w, _)| *w != wc),
        "the worker that left before the restart is listed: {listed:?}"
    );
    let j = s.job(&job);
    assert_eq!(j["state"], "running", "{j}");
    assert_eq!(j["attempts"], 1, "{j}");
    assert_eq!(j["worker"], on.as_str(), "{j}");
}

/// A worker whose agent has not come back after a restart is listed `disconnected` from the
/// start (its job was on it), then `lost` once the re-attach grace is over, when its job is
/// retried elsewhere.
#[test]
fn a_worker_that_has_not_come_back_after_a_restart_is_listed_disconnected_then_lost() {
    let scratch = Scratch::new("clients-workers-away");
    let mut s = Server::start_with(&scratch, 2, &["--reattach-grace", "6s"]);
    let mut a = s.agent(&scratch, "a", 1, &[]);
    s.wait_workers(1);
    let wa = Server::worker_of(&scratch, "a");
    let job = s.submit(&["--", "sleep", "600"]);
    s.wait_job(&job, "the job to run on a", |j| {
        j["state"] == "running" && j["worker"] == wa.as_str()
    });
    let _b = s.agent(&scratch, "b", 1, &[]);
    s.wait_workers(2);
    s.kill9();
    a.signal(nix::sys::signal::Signal::SIGKILL);
    a.wait_exit(Duration::from_secs(10));
    s.restart();
    assert_eq!(
        s.worker_state(&wa),
        "disconnected",
        "right after the restart"
    );
    let retried = s.wait_job(&job, "the job to be retried on b", |j| {
        j["attempts"] == 2 && j["state"] == "running"
    });
    assert_ne!(retried["worker"], wa.as_str(), "{retried}");
    // The worker's shard may be another than the job's: its grace ends about as the retry.
    wait_for("the worker to be lost", Duration::from_secs(10), || {
        (s.worker_state(&wa) == "lost").then_some(())
    });
}
