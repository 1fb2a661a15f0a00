//! End to end with real processes: a server, two agents, the CLI, real child processes.

mod common;

use std::time::Duration;

use common::{Scratch, Server, pid_alive, read_pid, wait_for};

/// 200 jobs of mixed commands and scripts on two agents: every output and exit code right.
#[test]
fn two_hundred_mixed_jobs_run_with_the_right_output_and_exit_code() {
    let scratch = Scratch::new("mixed");
    let server = Server::start(&scratch, 2);
    let _a = server.agent(&scratch, "a1", 4, &[]);
    let _b = server.agent(&scratch, "a2", 4, &[]);
    server.wait_workers(2);
    let script = scratch.path("job.sh");
    std::fs::write(
        &script,
        "echo \"script $N\"\necho \"to stderr $N\" >&2\ntest $((N % 7)) -ne 0\necho \"after $N\"\n",
    )
    .unwrap();
    let mut expected = Vec::new();
    for i in 0..200 {
        let (id, out, code) = match i % 4 {
            0 => (
                server.submit(&["--", "echo", &format!("hello {i}")]),
                format!("hello {i}\n"),
                0,
            ),
            1 => (
                server.submit(&["--", "sh", "-c", &format!("echo out{i}; exit {}", i % 5)]),
                format!("out{i}\n"),
                i % 5,
            ),
            2 => {
                let n = i.to_string();
                let id = server.submit(&[
                    "--env",
                    &format!("N={n}"),
                    "--script",
                    script.to_str().unwrap(),
                ]);
                if i % 7 == 0 {
                    (id, format!("script {i}\n"), 1) // set -e stops at the failing test
                } else {
                    (id, format!("script {i}\nafter {i}\n"), 0)
                }
            }
            _ => (
                server.submit(&["--priority", "3", "--", "printf", "%s", &format!("p{i}")]),
                format!("p{i}"),
                0,
            ),
        };
        expected.push((id, out, code));
    }
    let mut wait = vec!["job", "wait", "--timeout", "120s"];
    wait.extend(expected.iter().map(|(id, _, _)| id.as_str()));
    let out = server.cli(&wait);
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "wait: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jobs = server.json(&["job", "list", "--json"]);
    let jobs = jobs.as_array().unwrap();
    assert_eq!(jobs.len(), 200);
    for (id, out, code) in &expected {
        let job = jobs.iter().find(|j| j["id"] == id.as_str()).unwrap();
        assert_eq!(job["exit_code"], *code, "{job}");
        assert_eq!(
            job["state"],
            if *code == 0 { "succeeded" } else { "failed" },
            "{job}"
        );
        assert_eq!(&server.ok(&["job", "logs", id]), out, "{id}");
    }
    let stderr = server.cli(&["job", "logs", &expected[2].0]).stderr;
    assert_eq!(String::from_utf8_lossy(&stderr), "to stderr 2\n");
    // Both agents took work.
    let workers: std::collections::HashSet<&str> =
        jobs.iter().filter_map(|j| j["worker"].as_str()).collect();
    assert_eq!(workers.len(), 2, "{workers:?}");
}

/// Timeout and cancel kill the whole process group: a child `sleep` dies too, and the job
/// ends `timed_out` or `cancelled`. Cancel answers with the job's state: `cancelled` for a
/// running or queued job (which then never runs), and a finished job's own final state.
#[test]
fn timeout_and_cancel_kill_the_process_group() {
    let scratch = Scratch::new("kill");
    let server = Server::start(&scratch, 1);
    let _a = server.agent(&scratch, "a1", 2, &[]);
    server.wait_workers(1);
    // The marker is written only if the `sleep` ends without its group being killed.
    let body =
        |f: &str, marker: &str| format!("sleep 300 &\necho $! > {f}\nwait\ntouch {marker}\n");
    let (t_pid, t_marker) = (scratch.path("t.pid"), scratch.path("t.after"));
    let (c_pid, c_marker) = (scratch.path("c.pid"), scratch.path("c.after"));
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    std::fs::write(scratch.path("t.sh"), body(&path(&t_pid), &path(&t_marker))).unwrap();
    std::fs::write(scratch.path("c.sh"), body(&path(&c_pid), &path(&c_marker))).unwrap();
    let timed = server.submit(&["--timeout", "1s", "--script", &path(&scratch.path("t.sh"))]);
    let cancelled = server.submit(&["--script", &path(&scratch.path("c.sh"))]);

    let cpid = wait_for("the cancel job's child", Duration::from_secs(30), || {
        read_pid(&c_pid)
    });
    assert!(pid_alive(cpid));
    assert_eq!(server.job(&cancelled)["state"], "running");
    let reply = server.ok(&["job", "cancel", &cancelled]);
    assert_eq!(reply.trim(), format!("{cancelled} cancelled"));
    // Idempotent: the same answer again.
    let reply = server.ok(&["job", "cancel", &cancelled]);
    assert_eq!(reply.trim(), format!("{cancelled} cancelled"));
    wait_for(
        "the cancelled job's sleep to die",
        Duration::from_secs(30),
        || (!pid_alive(cpid)).then_some(()),
    );

    let out = server.cli(&["job", "wait", &timed, "--timeout", "60s"]);
    assert_eq!(out.status.code(), Some(1));
    let tpid = read_pid(&t_pid).unwrap();
    wait_for(
        "the timed-out job's sleep to die",
        Duration::from_secs(30),
        || (!pid_alive(tpid)).then_some(()),
    );
    assert_eq!(server.job(&timed)["state"], "timed_out");
    let c = server.job(&cancelled);
    assert_eq!(c["state"], "cancelled", "{c}");
    assert_eq!(c["attempts"], 1, "{c}");
    // Both shells were killed with their `sleep`: neither went on past `wait`.
    assert!(!t_marker.exists() && !c_marker.exists());
    // Cancelling a finished job leaves it as it was, and says so.
    let reply = server.ok(&["job", "cancel", &timed]);
    assert_eq!(reply.trim(), format!("{timed} timed_out"));
    assert_eq!(server.job(&timed)["state"], "timed_out");

    // Cancelling a queued job (only a `gpu=yes` agent could run it, and there is none):
    // it ends cancelled and never runs, even once an agent that matches it joins.
    let never = scratch.path("never");
    let queued = server.submit(&["--label", "gpu=yes", "--", "touch", &path(&never)]);
    assert_eq!(server.job(&queued)["state"], "pending");
    let reply = server.ok(&["job", "cancel", &queued]);
    assert_eq!(reply.trim(), format!("{queued} cancelled"));
    // Behind it in the same queue: with one slot, the cancelled job would run first.
    let after = server.submit(&["--label", "gpu=yes", "--", "true"]);
    let _gpu = server.agent(&scratch, "gpu", 1, &["--label", "gpu=yes"]);
    let a = server.wait_job(&after, "the job behind it to succeed", |j| {
        j["state"] == "succeeded"
    });
    assert_eq!(a["attempts"], 1, "{a}");
    let q = server.job(&queued);
    assert_eq!(q["state"], "cancelled", "{q}");
    assert_eq!(q["attempts"], 0, "the cancelled job was assigned: {q}");
    assert!(!never.exists(), "the cancelled job ran");
}

/// Queued jobs wait for a matching agent (labels, memory), and run once it joins.
#[test]
fn jobs_go_only_to_matching_agents() {
    let scratch = Scratch::new("match");
    let server = Server::start(&scratch, 2);
    let _plain = server.agent(&scratch, "plain", 2, &[]);
    server.wait_workers(1);
    let gpu = server.submit(&["--label", "gpu=yes", "--", "echo", "gpu"]);
    let plain = server.submit(&["--", "echo", "plain"]);
    server.ok(&["job", "wait", &plain, "--timeout", "60s"]);
    assert_eq!(server.job(&gpu)["state"], "pending");
    let _gpu_agent = server.agent(&scratch, "gpu", 1, &["--label", "gpu=yes"]);
    server.ok(&["job", "wait", &gpu, "--timeout", "60s"]);
    assert_eq!(server.ok(&["job", "logs", &gpu]), "gpu\n");
    let huge = server.submit(&["--mem", "100T", "--", "true"]);
    let j = server.job(&huge);
    assert_eq!(j["state"], "pending", "{j}");
}

/// `job logs --follow` streams output while the job runs and ends with it.
#[test]
fn logs_follow_streams_until_the_job_ends() {
    let scratch = Scratch::new("follow");
    let server = Server::start(&scratch, 2);
    let _a = server.agent(&scratch, "a1", 1, &[]);
    server.wait_workers(1);
    let gate = scratch.path("gate");
    let id = server.submit(&[
        "--",
        "sh",
        "-c",
        &format!(
            "echo first; while [ ! -e {} ]; do sleep 0.05; done; echo second",
            gate.display()
        ),
    ]);
    let mut follow = std::process::Command::new(common::HODEI)
        .args(["job", "logs", "--follow", &id])
        .env("HODEI_SERVER", &server.addr)
        .env("HODEI_CA", server.ca())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the job to run", Duration::from_secs(30), || {
        (server.job(&id)["state"] == "running").then_some(())
    });
    std::fs::write(&gate, "").unwrap();
    let out = wait_for("follow to end", Duration::from_secs(30), || {
        follow.try_wait().ok().flatten()
    });
    assert!(out.success());
    let mut text = String::new();
    std::io::Read::read_to_string(follow.stdout.as_mut().unwrap(), &mut text).unwrap();
    assert_eq!(text, "first\nsecond\n");
}

/// `job submit --wait`: one request that ends with the job, the exit code telling how; a job
/// that cannot run yet keeps it open until an agent that matches joins.
#[test]
fn submit_wait_ends_with_the_job() {
    let scratch = Scratch::new("subwait");
    let server = Server::start(&scratch, 2);
    let _a = server.agent(&scratch, "a1", 2, &[]);
    server.wait_workers(1);

    let ok = server.cli(&["job", "submit", "--wait", "--", "echo", "waited"]);
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    let id = String::from_utf8_lossy(&ok.stdout).trim().to_owned();
    assert_eq!(server.job(&id)["state"], "succeeded");
    assert_eq!(server.ok(&["job", "logs", &id]), "waited\n");

    let failed = server.cli(&[
        "job", "submit", "--wait", "--json", "--", "sh", "-c", "exit 3",
    ]);
    assert_eq!(failed.status.code(), Some(1), "{failed:?}");
    let job: serde_json::Value = serde_json::from_slice(&failed.stdout).unwrap();
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["exit_code"], 3, "{job}");
    assert!(String::from_utf8_lossy(&failed.stderr).contains("failed"));

    // Only a `gpu=yes` agent can run it: the request stays open (the CLI with it) until
    // one joins, then ends with the job.
    let mut waiting = server.spawn_cli(&[
        "job", "submit", "--wait", "--label", "gpu=yes", "--", "true",
    ]);
    wait_for(
        "the waiting job to be queued",
        Duration::from_secs(30),
        || {
            server
                .ok(&["job", "list", "--state", "pending"])
                .lines()
                .nth(1)
                .map(|_| ())
        },
    );
    assert!(
        waiting.0.try_wait().unwrap().is_none(),
        "submit --wait ended before its job"
    );
    let _gpu = server.agent(&scratch, "gpu", 1, &["--label", "gpu=yes"]);
    let status = waiting.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0));
}

/// `hodei stats`: the server times a real agent's heartbeats (decoded → applied by its
/// shard) and its own store commits, and `--reset` starts the figures afresh.
#[test]
fn stats_time_real_heartbeats_and_store_commits() {
    let scratch = Scratch::new("stats");
    let server = Server::start_with(&scratch, 2, &["--heartbeat", "100ms"]);
    let _a = server.agent(&scratch, "a1", 1, &[]);
    server.wait_workers(1);
    let id = server.submit(&["--", "true"]);
    server.wait_job(&id, "the job to succeed", |j| j["state"] == "succeeded");
    let num = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k}: {v}"));
    // At 100 ms, 20 heartbeats take 2 s at least: a window that long before the reset.
    wait_for("20 timed heartbeats", Duration::from_secs(60), || {
        let s = server.json(&["stats", "--json"]);
        (num(&s, "heartbeats") >= 20).then_some(())
    });
    let first = server.json(&["stats", "--json", "--reset"]);
    assert!(num(&first, "heartbeats") >= 20, "{first}");
    assert!(num(&first, "store_commits") >= 1, "{first}");
    assert!(num(&first, "window_ms") >= 1_900, "{first}");
    for what in ["heartbeat", "store_commit"] {
        let p = |q: &str| num(&first, &format!("{what}_{q}_us"));
        assert!(p("p50") <= p("p90") && p("p90") <= p("p99"), "{first}");
        assert!(p("p99") <= p("p999") && p("p999") <= p("max"), "{first}");
    }
    let text = server.ok(&["stats"]);
    assert!(
        text.lines().any(|l| l.starts_with("heartbeat_p99_us")),
        "{text}"
    );
    // The window restarted at the reset, so it is shorter than the one before it.
    let second = server.json(&["stats", "--json"]);
    assert!(
        num(&second, "window_ms") < num(&first, "window_ms"),
        "{first}\n{second}"
    );
    assert!(
        num(&second, "heartbeats") < num(&first, "heartbeats"),
        "{first}\n{second}"
    );
}

/// Heartbeats in datagrams keep a worker alive: a raw agent that sends nothing else stays
/// connected and ready for six heartbeat timeouts (its state is read while they go on), and
/// once they stop the server closes its connection and the worker is disconnected.
#[test]
fn datagram_heartbeats_keep_a_worker_alive() {
    use hodei_core::wire::FromAgent;
    let scratch = Scratch::new("dgram-hb");
    let flags = ["--heartbeat", "100ms", "--heartbeat-timeout", "500ms"];
    let server = Server::start_with(&scratch, 2, &flags);
    let identity = server.join_identity();
    std::thread::scope(|scope| {
        common::block_on(async {
            let (_ep, conn, _w, _r, worker) = server.raw_agent(&identity).await;
            let beat = FromAgent::Heartbeat {
                running: 0,
                load: 0,
            };
            let until = std::time::Instant::now() + Duration::from_secs(3);
            let mut check = None;
            loop {
                assert!(hodei_transport::send_datagram(&conn, &beat).unwrap());
                tokio::time::sleep(Duration::from_millis(100)).await;
                if check.is_none() && std::time::Instant::now() >= until {
                    let (server, worker) = (&server, worker.clone());
                    check = Some(scope.spawn(move || server.worker_state(&worker)));
                }
                if check.as_ref().is_some_and(|c| c.is_finished()) {
                    break;
                }
            }
            let state = check.unwrap().join().unwrap();
            assert_eq!(state, "ready");
            assert!(conn.close_reason().is_none(), "{:?}", conn.close_reason());
            // Silence: the connection is closed and the worker is disconnected.
            common::closed(&conn).await;
            assert_eq!(server.worker_state(&worker), "disconnected");
        });
    });
}

/// An agent that ends its stream without closing the connection is closed by the server (the
/// connection's datagram task must not keep it open), and its worker is disconnected.
#[test]
fn an_ended_agent_stream_closes_its_connection() {
    let scratch = Scratch::new("stream-end");
    let server = Server::start(&scratch, 1);
    let identity = server.join_identity();
    common::block_on(async {
        let (_ep, conn, mut w, _r, worker) = server.raw_agent(&identity).await;
        w.finish().unwrap();
        common::closed(&conn).await;
        assert_eq!(server.worker_state(&worker), "disconnected");
    });
}

/// `hodei server --commit-interval`: a shard starts its store commits at least that far
/// apart, so sequential submits (each answered only once on disk) share fewer commits, and
/// every job still runs to the end. `hodei stats` counts the commits: n commit starts spaced
/// by the interval span (n - 1) intervals of the window, plus one that may have been in
/// flight at the reset. Without the interval, ten submits and their jobs take two or three
/// commits each, in far less than a second.
#[test]
fn commit_interval_spaces_the_commits() {
    let scratch = Scratch::new("commit-interval");
    let server = Server::start_with(&scratch, 1, &["--commit-interval", "100ms"]);
    let _a = server.agent(&scratch, "a1", 2, &[]);
    server.wait_workers(1);
    server.json(&["stats", "--json", "--reset"]);
    let ids: Vec<String> = (0..10).map(|_| server.submit(&["--", "true"])).collect();
    for id in &ids {
        let j = server.wait_job(id, "the job to end", |j| {
            j["state"] == "succeeded" || j["state"] == "failed"
        });
        assert_eq!(j["state"], "succeeded", "{j}");
    }
    let s = server.json(&["stats", "--json"]);
    let num = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("{k}: {s}"));
    let (commits, window) = (num("store_commits"), num("window_ms"));
    assert!(commits >= 1, "{s}");
    assert!(
        commits <= window / 100 + 2,
        "{commits} commits in {window} ms, at most one per 100 ms: {s}"
    );
}

/// A batch held back by `--commit-interval` is committed when the interval is over even if
/// nothing else arrives: with no agents (so no heartbeats) and nothing else connected, a
/// submit made just after another one is acknowledged once the interval has passed, instead
/// of waiting for an input that never comes.
#[test]
fn a_held_commit_does_not_wait_for_more_input() {
    let scratch = Scratch::new("commit-interval-idle");
    let server = Server::start_with(&scratch, 1, &["--commit-interval", "100ms"]);
    let first = server.submit(&["--", "true"]);
    assert!(first.starts_with('j'), "{first}");
    // Sent within the interval of the first submit's commit, so its commit is held.
    let mut second = server.spawn_cli(&["job", "submit", "--", "true"]);
    let status = second.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}");
}
