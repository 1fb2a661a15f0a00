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

/// SIGTERM to an agent: a draining agent is given no new job, though it has free slots and
/// the other agent has one busy slot; its short job finishes normally there; its long one is
/// killed after the drain timeout and retried on the other agent; the worker ends
/// terminated, not lost.
#[test]
fn sigterm_drains_the_agent() {
    let scratch = Scratch::new("drain");
    let server = Server::start_with(&scratch, 2, FAST);
    // Four slots: two stay free while it drains.
    let mut a = server.agent(&scratch, "a", 4, &["--drain-timeout", "20s"]);
    server.wait_workers(1);
    let wa = Server::worker_of(&scratch, "a");
    // The short job ends when the test says so, after the new jobs ran.
    let gate = scratch.path("gate");
    let short = server.submit(&[
        "--",
        "sh",
        "-c",
        &format!(
            "while [ ! -e {} ]; do sleep 0.05; done; echo short",
            gate.display()
        ),
    ]);
    let long_pid = scratch.path("long.pid");
    let long = server.submit(&[
        "--backoff",
        "100ms..1s",
        "--",
        "sh",
        "-c",
        &format!("echo $$ > {}; sleep 60; echo long", long_pid.display()),
    ]);
    server.wait_job(&short, "short running", |j| j["state"] == "running");
    server.wait_job(&long, "long running", |j| j["state"] == "running");
    let pid = wait_for("the long job's pid", Duration::from_secs(30), || {
        common::read_pid(&long_pid)
    });
    let _b = server.agent(&scratch, "b", 1, &[]);
    server.wait_workers(2);
    let wb = Server::worker_of(&scratch, "b");
    a.signal(Signal::SIGTERM);
    wait_for("worker draining", Duration::from_secs(10), || {
        (server.worker_state(&wa) == "draining").then_some(())
    });
    // Nothing new goes to a draining agent: six jobs submitted while it drains all run on
    // b, one at a time, each at its first attempt (an assignment to a and back would be a
    // second one).
    let late: Vec<String> = (0..6)
        .map(|i| server.submit(&["--", "echo", &format!("late {i}")]))
        .collect();
    for (i, id) in late.iter().enumerate() {
        let j = server.wait_job(id, "a late job to end", |j| {
            j["state"] == "succeeded" || j["state"] == "failed"
        });
        assert_eq!(j["state"], "succeeded", "{j}");
        assert_eq!(
            j["worker"],
            wb.as_str(),
            "a job went to the draining agent: {j}"
        );
        assert_eq!(j["attempts"], 1, "{j}");
        assert_eq!(server.ok(&["job", "logs", id]), format!("late {i}\n"));
    }
    // a was draining all that time, with its two jobs.
    assert_eq!(server.worker_state(&wa), "draining");
    assert!(
        a.0.try_wait().unwrap().is_none(),
        "a left before the late jobs ran"
    );
    // The short job finishes normally on the draining agent.
    std::fs::write(&gate, "").unwrap();
    let s = server.wait_job(&short, "short to succeed", |j| {
        j["state"] == "succeeded" || j["state"] == "failed"
    });
    assert_eq!(s["state"], "succeeded", "{s}");
    assert_eq!(s["worker"], wa.as_str(), "{s}");
    assert_eq!(s["attempts"], 1, "{s}");
    assert_eq!(server.ok(&["job", "logs", &short]), "short\n");
    // The long one is killed at the drain timeout, and the agent leaves.
    let status = a.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status:?}");
    assert!(!common::pid_alive(pid), "the drained job still runs");
    let ws = server.json(&["worker", "list", "--json"]);
    let st = ws
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == wa.as_str())
        .unwrap()["state"]
        .clone();
    assert_eq!(st, "terminated");
    // Retried on b.
    let l = server.wait_job(&long, "long restarted on b", |j| {
        j["state"] == "running" && j["attempts"] == 2
    });
    assert_eq!(l["worker"], wb.as_str(), "{l}");
    let events = server.ok(&["events", "--job", &long]);
    assert!(events.contains("drain"), "{events}");
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
