//! Faults with real processes: agents killed, frozen and drained; the server killed in a
//! loop. Every job must reach a correct final state, exactly once.

mod common;

use std::time::Duration;

use common::{Scratch, Server, wait_for};
use nix::sys::signal::Signal;

/// Short grace periods so the tests do not wait tens of seconds.
const FAST: &[&str] = &[
    "--heartbeat",
    "500ms",
    "--disconnect-grace",
    "2s",
    "--reattach-grace",
    "4s",
];

/// kill -9 of an agent mid-job: the job is retried on the other agent and succeeds.
#[test]
fn killed_agent_job_is_retried_elsewhere() {
    let scratch = Scratch::new("agentkill");
    let server = Server::start_with(&scratch, 2, FAST);
    let mut a = server.agent(&scratch, "a", 1, &[]);
    server.wait_workers(1);
    let wa = Server::worker_of(&scratch, "a");
    let id = server.submit(&[
        "--retries",
        "2",
        "--backoff",
        "100ms..1s",
        "--",
        "sh",
        "-c",
        "sleep 2; echo finished",
    ]);
    server.wait_job(&id, "the job to run on a", |j| j["state"] == "running");
    let _b = server.agent(&scratch, "b", 1, &[]);
    server.wait_workers(2);
    let wb = Server::worker_of(&scratch, "b");
    a.signal(Signal::SIGKILL);
    a.wait_exit(Duration::from_secs(10));
    let j = server.wait_job(&id, "the retry to succeed", |j| j["state"] == "succeeded");
    assert_eq!(j["attempts"], 2, "{j}");
    assert_eq!(j["worker"], wb.as_str(), "{j}");
    assert_ne!(wa, wb);
    assert_eq!(server.ok(&["job", "logs", &id]), "finished\n");
    let events = server.ok(&["events", "--job", &id]);
    assert!(events.contains("lost"), "{events}");
    let workers = server.json(&["worker", "list", "--json"]);
    let a_state = workers
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == wa.as_str())
        .unwrap()["state"]
        .clone();
    assert_eq!(a_state, "lost");
}

/// A frozen agent (SIGSTOP) past the grace: its job is requeued and runs elsewhere; when it
/// thaws, its late result for the old attempt is recorded and ignored.
#[test]
fn frozen_agent_late_result_is_ignored() {
    let scratch = Scratch::new("agentstop");
    let server = Server::start_with(&scratch, 2, FAST);
    let a = server.agent(&scratch, "a", 1, &[]);
    server.wait_workers(1);
    let id = server.submit(&[
        "--retries",
        "2",
        "--backoff",
        "100ms..1s",
        "--",
        "sh",
        "-c",
        "sleep 1; echo done",
    ]);
    server.wait_job(&id, "the job to run on a", |j| j["state"] == "running");
    let _b = server.agent(&scratch, "b", 1, &[]);
    server.wait_workers(2);
    let wb = Server::worker_of(&scratch, "b");
    a.signal(Signal::SIGSTOP);
    let j = server.wait_job(&id, "the requeued attempt to succeed", |j| {
        j["state"] == "succeeded"
    });
    assert_eq!(j["attempts"], 2, "{j}");
    assert_eq!(j["worker"], wb.as_str());
    // The frozen agent's child finished meanwhile; thawed, the agent reports attempt 1.
    a.signal(Signal::SIGCONT);
    let events = wait_for("the stale report", Duration::from_secs(30), || {
        let e = server.ok(&["events", "--job", &id]);
        e.contains("stale report of attempt 1").then_some(e)
    });
    assert!(events.contains("succeeded attempt=2"), "{events}");
    let after = server.job(&id);
    assert_eq!(after["state"], "succeeded");
    assert_eq!(after["attempts"], 2);
}

/// SIGTERM to an agent: no new jobs; a short job finishes; a long one is killed after the
/// drain timeout and retried elsewhere; the worker ends terminated, not lost.
#[test]
fn sigterm_drains_the_agent() {
    let scratch = Scratch::new("drain");
    let server = Server::start_with(&scratch, 2, FAST);
    let mut a = server.agent(&scratch, "a", 2, &["--drain-timeout", "3s"]);
    server.wait_workers(1);
    let wa = Server::worker_of(&scratch, "a");
    let short = server.submit(&["--", "sh", "-c", "sleep 1; echo short"]);
    let long = server.submit(&[
        "--backoff",
        "100ms..1s",
        "--",
        "sh",
        "-c",
        "sleep 60; echo long",
    ]);
    server.wait_job(&short, "short running", |j| j["state"] == "running");
    server.wait_job(&long, "long running", |j| j["state"] == "running");
    a.signal(Signal::SIGTERM);
    wait_for("worker draining", Duration::from_secs(10), || {
        let ws = server.json(&["worker", "list", "--json"]);
        ws.as_array()?
            .iter()
            .any(|w| w["id"] == wa.as_str() && w["state"] == "draining")
            .then_some(())
    });
    // Nothing new goes to a draining agent.
    let late = server.submit(&["--", "echo", "late"]);
    let status = a.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
    let s = server.job(&short);
    assert_eq!(s["state"], "succeeded", "{s}");
    assert_eq!(server.ok(&["job", "logs", &short]), "short\n");
    let l = server.job(&long);
    assert_eq!(
        l["state"], "pending",
        "killed by the drain, waiting for another agent: {l}"
    );
    assert!(l["error"].as_str().unwrap_or("").contains("drain"), "{l}");
    assert_eq!(server.job(&late)["state"], "pending");
    let ws = server.json(&["worker", "list", "--json"]);
    let st = ws
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == wa.as_str())
        .unwrap()["state"]
        .clone();
    assert_eq!(st, "terminated");
    // Another agent picks both up.
    let _b = server.agent(&scratch, "b", 2, &[]);
    server.ok(&["job", "wait", &late, "--timeout", "30s"]);
    server.wait_job(&long, "long restarted", |j| {
        j["state"] == "running" && j["attempts"] == 2
    });
    server.ok(&["job", "cancel", &long]);
}

/// `hodei worker drain ID`: the agent drains on the server's request and leaves; the
/// worker ends terminated and its finished job's result is kept.
#[test]
fn worker_drain_command_drains_the_agent() {
    let scratch = Scratch::new("draincmd");
    let server = Server::start_with(&scratch, 2, FAST);
    let mut a = server.agent(&scratch, "a", 1, &[]);
    server.wait_workers(1);
    let wa = Server::worker_of(&scratch, "a");
    let job = server.submit(&["--", "sh", "-c", "sleep 1; echo drained-ok"]);
    server.wait_job(&job, "running", |j| j["state"] == "running");
    let out = server.ok(&["worker", "drain", &wa, "--timeout", "20s"]);
    assert!(out.contains("draining"), "{out}");
    assert!(a.wait_exit(Duration::from_secs(30)).success());
    assert_eq!(server.job(&job)["state"], "succeeded");
    assert_eq!(server.ok(&["job", "logs", &job]), "drained-ok\n");
    let ws = server.json(&["worker", "list", "--json"]);
    let st = ws
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == wa.as_str())
        .unwrap()["state"]
        .clone();
    assert_eq!(st, "terminated");
    let missing = server.cli(&["worker", "drain", "w9.9.9"]);
    assert!(!missing.status.success());
}
