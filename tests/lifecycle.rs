//! Job lifecycle with real processes: retry policy, queue timeout, idempotent submit,
//! `job retry`, cancel in every state, events with resumable cursors, correlation ids.

mod common;

use std::time::Duration;

use common::{Scratch, Server, wait_for};

#[test]
fn exit_failures_are_retried_per_policy_and_the_reason_is_shown() {
    let scratch = Scratch::new("retry");
    let server = Server::start(&scratch, 2);
    let _a = server.agent(&scratch, "a", 2, &[]);
    server.wait_workers(1);
    let counter = scratch.path("count");
    // Fails twice, then succeeds.
    let script = format!(
        "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; test $n -ge 3",
        c = counter.display()
    );
    let flaky = server.submit(&[
        "--retries",
        "3",
        "--retry-on",
        "exit",
        "--backoff",
        "50ms..200ms",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let j = server.wait_job(&flaky, "flaky to succeed", |j| j["state"] == "succeeded");
    assert_eq!(j["attempts"], 3, "{j}");
    // Always fails: ends failed after 1 + 2 attempts, and says why.
    let bad = server.submit(&[
        "--retries",
        "2",
        "--retry-on",
        "exit",
        "--backoff",
        "50ms..100ms",
        "--",
        "sh",
        "-c",
        "exit 7",
    ]);
    let out = server.cli(&["job", "wait", &bad, "--timeout", "60s"]);
    assert_eq!(out.status.code(), Some(1));
    let failed = server.json(&["job", "list", "--state", "failed", "--json"]);
    let f = failed
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == bad.as_str())
        .unwrap()
        .clone();
    assert_eq!(f["attempts"], 3, "{f}");
    assert_eq!(f["exit_code"], 7);
    let err = f["error"].as_str().unwrap();
    assert!(
        err.contains("exited with code 7") && err.contains("retries exhausted"),
        "{err}"
    );
    // Not retried on exit by default (retry-on lost only).
    let once = server.submit(&["--", "sh", "-c", "exit 1"]);
    let _ = server.cli(&["job", "wait", &once, "--timeout", "60s"]);
    assert_eq!(server.job(&once)["attempts"], 1);
    // `job retry` resubmits a finished job as a new one.
    let again = server.ok(&["job", "retry", &once]).trim().to_owned();
    assert_ne!(again, once);
    let r = server.wait_job(&again, "the retry to finish", |j| j["state"] == "failed");
    assert_eq!(r["retry_of"], once.as_str());
    let running = server.submit(&["--", "sleep", "30"]);
    let refused = server.cli(&["job", "retry", &running]);
    assert!(!refused.status.success());
    server.ok(&["job", "cancel", &running]);
}

#[test]
fn queue_timeout_ends_a_job_that_never_started() {
    let scratch = Scratch::new("qtimeout");
    let server = Server::start(&scratch, 2);
    // No agent carries this label.
    let id = server.submit(&[
        "--queue-timeout",
        "500ms",
        "--label",
        "gpu=yes",
        "--",
        "true",
    ]);
    let j = server.wait_job(&id, "the queue timeout", |j| j["state"] == "timed_out");
    assert!(
        j["error"].as_str().unwrap().contains("queue timeout"),
        "{j}"
    );
    assert!(j["started_at"].is_null());
}

#[test]
fn idempotent_submit_survives_a_restart() {
    let scratch = Scratch::new("idem");
    let mut server = Server::start(&scratch, 2);
    let a = server.submit(&["--idempotency-key", "order-42", "--", "echo", "one"]);
    let b = server.submit(&["--idempotency-key", "order-42", "--", "echo", "two"]);
    assert_eq!(a, b);
    server.kill9();
    server.restart();
    let c = server.submit(&["--idempotency-key", "order-42", "--", "echo", "three"]);
    assert_eq!(a, c);
    let d = server.submit(&["--idempotency-key", "order-43", "--", "echo", "four"]);
    assert_ne!(a, d);
    let all = server.json(&["job", "list", "--json"]);
    assert_eq!(all.as_array().unwrap().len(), 2);
}

#[test]
fn cancel_works_in_every_state_and_is_idempotent() {
    let scratch = Scratch::new("cancel");
    let server = Server::start(&scratch, 2);
    // Pending (no agent yet).
    let pending = server.submit(&["--", "sleep", "30"]);
    assert!(
        server
            .ok(&["job", "cancel", &pending])
            .contains("cancelled")
    );
    assert!(
        server
            .ok(&["job", "cancel", &pending])
            .contains("cancelled")
    );
    let _a = server.agent(&scratch, "a", 2, &[]);
    server.wait_workers(1);
    // Running.
    let running = server.submit(&["--", "sleep", "30"]);
    server.wait_job(&running, "running", |j| j["state"] == "running");
    assert!(
        server
            .ok(&["job", "cancel", &running])
            .contains("cancelled")
    );
    // Final: cancelling a finished job leaves it as it was.
    let done = server.submit(&["--", "true"]);
    server.ok(&["job", "wait", &done]);
    assert!(server.ok(&["job", "cancel", &done]).contains("succeeded"));
    // Waiting for a retry (pending with a backoff).
    let retrying = server.submit(&[
        "--retries",
        "3",
        "--retry-on",
        "exit",
        "--backoff",
        "20s..30s",
        "--",
        "false",
    ]);
    server.wait_job(&retrying, "retry wait", |j| {
        j["state"] == "pending" && j["attempts"] == 1
    });
    assert!(
        server
            .ok(&["job", "cancel", &retrying])
            .contains("cancelled")
    );
    assert_eq!(server.job(&pending)["state"], "cancelled");
    assert_eq!(server.job(&retrying)["state"], "cancelled");
}

/// The shard a job id names (`j<shard>.<epoch>.<seq>`).
fn shard_of(id: &str) -> Option<u64> {
    id.strip_prefix('j')?.split('.').next()?.parse().ok()
}

/// Submits `true` until every one of `shards` shards owns one of the jobs (a client lands on
/// a shard by its address, so each new CLI process may land on either); returns one job per
/// shard.
fn on_every_shard(server: &Server, shards: u64) -> anyhow::Result<Vec<String>> {
    let mut found = std::collections::BTreeMap::new();
    for _ in 0..200 {
        let id = server.submit(&["--", "true"]);
        let shard = shard_of(&id).ok_or_else(|| anyhow::anyhow!("not a job id: {id}"))?;
        found.entry(shard).or_insert(id);
        if found.len() as u64 == shards {
            return Ok(found.into_values().collect());
        }
    }
    anyhow::bail!("200 submits did not reach every shard: {found:?}")
}

/// The highest event number of each shard, from the whole event log.
fn last_seq_per_shard(server: &Server) -> anyhow::Result<std::collections::HashMap<u64, u64>> {
    let mut last = std::collections::HashMap::new();
    for l in server.ok(&["events", "--json"]).lines() {
        let e: serde_json::Value = serde_json::from_str(l)?;
        let num = |k: &str| e[k].as_u64().ok_or_else(|| anyhow::anyhow!("no {k}: {e}"));
        let (shard, seq) = (num("shard")?, num("seq")?);
        let m = last.entry(shard).or_insert(seq);
        *m = (*m).max(seq);
    }
    Ok(last)
}

#[test]
fn events_are_numbered_persisted_and_resumable() {
    let scratch = Scratch::new("events");
    let mut server = Server::start(&scratch, 2);
    let _a = server.agent(&scratch, "a", 2, &[]);
    server.wait_workers(1);
    let id = server.submit(&["--correlation-id", "trace-abc", "--", "echo", "hi"]);
    server.ok(&["job", "wait", &id]);
    let lines = server.ok(&["events", "--job", &id]);
    let states: Vec<&str> = lines
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .collect();
    assert_eq!(
        states,
        ["pending", "assigned", "running", "succeeded"],
        "{lines}"
    );
    assert!(
        lines.lines().all(|l| l.contains("cid=trace-abc")),
        "{lines}"
    );
    // JSON, and resuming from the cursor of the second event gives the last two.
    let json: Vec<serde_json::Value> = server
        .ok(&["events", "--job", &id, "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let cursor = json[1]["cursor"].as_str().unwrap().to_owned();
    let shard = json[1]["shard"].as_u64().unwrap();
    let since = format!("{shard}:{}", json[1]["seq"]);
    assert_eq!(cursor, since);
    let rest = server.ok(&["events", "--job", &id, "--since", &since]);
    assert_eq!(rest.lines().count(), 2, "{rest}");
    // Events survive a restart, and every shard's numbering continues. Jobs on both shards
    // first, so both have numbers to continue from.
    let before = on_every_shard(&server, 2).unwrap();
    for id in &before {
        server.ok(&["job", "wait", id]);
    }
    let last_before = last_seq_per_shard(&server).unwrap();
    assert_eq!(last_before.len(), 2, "{last_before:?}");
    server.kill9();
    server.restart();
    let after = server.ok(&["events", "--job", &id]);
    assert_eq!(after, lines);
    for id2 in on_every_shard(&server, 2).unwrap() {
        let ev2: Vec<serde_json::Value> = server
            .ok(&["events", "--job", &id2, "--json"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let shard = ev2[0]["shard"].as_u64().unwrap();
        assert_eq!(Some(shard), shard_of(&id2), "{ev2:?}");
        let first = ev2[0]["seq"].as_u64().unwrap();
        assert!(
            first > last_before[&shard],
            "shard {shard} numbered {id2}'s first event {first}, not after {} from before the \
             restart",
            last_before[&shard]
        );
    }
    // The correlation id is in the server's log lines about the job (debug level).
    let log = server.log_text();
    let about: Vec<&str> = log.lines().filter(|l| l.contains(&id)).collect();
    assert!(!about.is_empty());
    assert!(about.iter().all(|l| l.contains("trace-abc")), "{about:?}");
}

#[test]
fn events_follow_streams_live_and_resumes_after_a_server_restart() {
    let scratch = Scratch::new("evfollow");
    let mut server = Server::start(&scratch, 2);
    let out = scratch.path("follow.out");
    let file = std::fs::File::create(&out).unwrap();
    let mut follow = common::Proc(
        std::process::Command::new(common::HODEI)
            .args(["events", "--follow", "--json"])
            .env("HODEI_SERVER", &server.addr)
            .env("HODEI_CA", server.ca())
            .stdout(file)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let first = server.submit(&["--", "true"]);
    wait_for("the first event", Duration::from_secs(30), || {
        std::fs::read_to_string(&out)
            .ok()?
            .contains(&first)
            .then_some(())
    });
    server.kill9();
    server.restart();
    let second = server.submit(&["--", "true"]);
    let text = wait_for(
        "the event after the restart",
        Duration::from_secs(60),
        || {
            let t = std::fs::read_to_string(&out).ok()?;
            t.contains(&second).then_some(t)
        },
    );
    // Each event exactly once.
    let cursors: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["cursor"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let unique: std::collections::HashSet<&String> = cursors.iter().collect();
    assert_eq!(unique.len(), cursors.len(), "{text}");
    assert!(follow.0.try_wait().unwrap().is_none(), "follow exited");
}

/// `hodei agent --prefetch`: the agent takes an assignment beyond its slots and queues it.
/// The queued job starts only when the running one has ended (the slot is honoured), and it
/// is not failed for missing the server's assign timeout while it waits: the agent told the
/// server it accepted it.
#[test]
fn prefetched_jobs_wait_on_the_agent_past_the_assign_timeout() {
    let scratch = Scratch::new("prefetch");
    let server = Server::start_with(&scratch, 1, &["--assign-timeout", "1s"]);
    let _a = server.agent(&scratch, "a", 1, &["--prefetch", "1"]);
    server.wait_workers(1);
    let long = server.submit(&["--", "sleep", "2.5"]);
    server.wait_job(&long, "the long job to run", |j| j["state"] == "running");
    let queued = server.submit(&["--", "true"]);
    // Assigned at once (prefetch), then waits on the agent well past the 1 s assign timeout.
    let q = server.wait_job(&queued, "the second job to end", |j| {
        j["state"] != "pending" && j["state"] != "assigned" && j["state"] != "running"
    });
    assert_eq!(q["state"], "succeeded", "{q}");
    assert_eq!(q["attempts"], 1, "no second attempt: {q}");
    let l = server.job(&long);
    assert_eq!(l["state"], "succeeded", "{l}");
    // Both times are the agent's clock: the long job's exit, and the queued job's spawn.
    // (Not "2.5 s after the long one started": its start is stamped after its spawn
    // returns, which can be a little after `sleep` began counting.)
    let long_end = l["finished_at_us"].as_u64().unwrap();
    let queued_start = q["started_at_us"].as_u64().unwrap();
    assert!(
        queued_start >= long_end,
        "one slot: the queued job started {} µs before the long one ended",
        long_end.saturating_sub(queued_start)
    );
}
