//! `hodei server --retain-finished`: jobs finished longer ago than the window are deleted
//! with their output, events and audit records; jobs finished within it, running or queued
//! stay; `hodei job get` and `job logs` of a deleted job say it expired; `hodei audit
//! verify` passes after audit records were cut, because a checkpoint was kept, and fails
//! once that checkpoint is gone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::str::FromStr;
use std::time::Duration;

use common::{Scratch, Server, wait_for};
use hodei_core::ids::JobId;
use hodei_core::time::wall_now;

/// The window the tests run with: long enough to tell "within" from "past" by seconds.
const WINDOW_S: u64 = 4;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The job's `finished_at` (µs since the epoch).
fn finished_at(s: &Server, id: &str) -> u64 {
    s.job(id)["finished_at_us"].as_u64().unwrap()
}

/// Submits `script` and waits until it succeeded; its id.
fn run_to_success(s: &Server, script: &str) -> String {
    let id = s.submit(&["--", "sh", "-c", script]);
    s.wait_job(&id, "the job to succeed", |j| j["state"] == "succeeded");
    id
}

/// The store's keys of one keyspace (the server must be stopped).
fn keys(data: &std::path::Path, keyspace: &str) -> Vec<Vec<u8>> {
    let db = fjall::Database::builder(data.join("store")).open().unwrap();
    let ks = db
        .keyspace(keyspace, fjall::KeyspaceCreateOptions::default)
        .unwrap();
    ks.iter()
        .map(|kv| kv.into_inner().unwrap().0.to_vec())
        .collect()
}

/// Every output key belongs to a stored job, or to a deleted one still marked for the
/// sweeper (the server must be stopped).
fn assert_no_orphan_output(data: &std::path::Path) {
    let jobs = keys(data, "jobs");
    let marked = keys(data, "expired");
    for o in keys(data, "output") {
        let job = &o[..8];
        assert!(
            jobs.iter().chain(&marked).any(|k| k == job),
            "output key {o:?} belongs to no stored or marked job"
        );
    }
}

fn stop(s: &mut Server) {
    let mut p = s.proc.take().unwrap();
    p.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(p.wait_exit(Duration::from_secs(20)).success());
}

/// One shard (so a job's events and audit records are never its log's newest block once a
/// later job ran), a 4 s window. Job A ends; B ends 2 s later. When A is gone, B is still
/// there (it ended within the window), with a job running and one queued since before A
/// ran; later B goes too and those two still never do. A's output, events and audit
/// records go with it; the audit log verifies after records were cut. After a clean stop
/// the store holds neither record nor output of A or B; after a restart their ids still
/// say "expired" and a never minted one "does not exist"; with the audit checkpoint
/// deleted, `hodei audit verify` fails at the first record missing.
#[test]
fn finished_jobs_expire_with_their_output_and_nothing_else_does() {
    let scratch = Scratch::new("retention");
    let window = format!("{WINDOW_S}s");
    let mut s = Server::start_with(&scratch, 1, &["--retain-finished", &window]);
    let _agent = s.agent(&scratch, "a", 4, &[]);
    s.wait_workers(1);
    let running = s.submit(&["--", "sleep", "300"]);
    let queued = s.submit(&["--label", "gpu=yes", "--", "true"]);
    s.wait_job(&running, "the long job to run", |j| j["state"] == "running");
    let a = run_to_success(&s, "echo output-of-a; echo err-of-a >&2");
    assert!(s.ok(&["job", "logs", &a]).contains("output-of-a"));
    let a_end = finished_at(&s, &a);
    wait_for("2 s after A ended", Duration::from_secs(10), || {
        (wall_now() >= a_end + 2_000_000).then_some(())
    });
    let b = run_to_success(&s, "echo output-of-b");
    let b_end = finished_at(&s, &b);
    assert!(!s.ok(&["audit", "--job", &a, "--json"]).is_empty());

    let expired = wait_for("A to expire", Duration::from_secs(30), || {
        let out = s.cli(&["job", "get", &a]);
        (!out.status.success()).then(|| stderr(&out))
    });
    let seen_at = wall_now();
    assert!(
        expired.contains(&format!("job {a} expired")) && expired.contains("--retain-finished"),
        "{expired}"
    );
    assert!(
        seen_at < b_end + WINDOW_S * 1_000_000,
        "B's window was over when A's expiry was seen: the test checks nothing about B"
    );
    assert_eq!(s.job(&b)["state"], "succeeded", "B went within its window");
    assert!(s.ok(&["job", "logs", &b]).contains("output-of-b"));
    let logs = s.cli(&["job", "logs", &a]);
    assert!(
        !logs.status.success() && stderr(&logs).contains("expired"),
        "{}",
        stderr(&logs)
    );
    // Its events and audit records go with the sweeper's next pass (the shard's and the
    // sweeper's passes are not in step).
    wait_for(
        "A's events and audit records to go",
        Duration::from_secs(10),
        || {
            let events = s.ok(&["events", "--job", &a]);
            let audit = s.ok(&["audit", "--job", &a, "--json"]);
            (events.trim().is_empty() && audit.trim().is_empty()).then_some(())
        },
    );
    assert!(!s.ok(&["events", "--job", &b]).trim().is_empty());
    assert!(!s.ok(&["audit", "--job", &b, "--json"]).trim().is_empty());
    let listed = s.ok(&["job", "list"]);
    assert!(!listed.contains(&a) && listed.contains(&b), "{listed}");

    wait_for("B to expire", Duration::from_secs(30), || {
        (!s.cli(&["job", "get", &b]).status.success()).then_some(())
    });
    assert_eq!(s.job(&running)["state"], "running");
    assert_eq!(s.job(&queued)["state"], "pending");
    // The audit log lost its oldest records and still verifies.
    let first_seq = s.ok(&["audit", "--json"]).lines().next().map(|l| {
        serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
            .as_u64()
            .unwrap()
    });
    assert!(
        first_seq.is_some_and(|q| q > 0),
        "no audit record was cut: {first_seq:?}"
    );
    let verified = s.ok(&["audit", "verify"]);
    assert!(verified.contains("intact"), "{verified}");

    // After a clean stop: neither record is stored, and A's output is gone (A went more
    // than 2 s, five sweeper passes, ago). B's may wait for the sweeper's next pass, which
    // comes after the restart: then it is still marked for it. No output is left that
    // belongs to neither a stored job nor a mark.
    stop(&mut s);
    let id_bytes = |id: &str| JobId::from_str(id).unwrap().to_be_bytes().to_vec();
    let jobs = keys(&s.data, "jobs");
    for gone in [&a, &b] {
        assert!(!jobs.contains(&id_bytes(gone)), "{gone}'s record is stored");
    }
    assert!(jobs.contains(&id_bytes(&running)) && jobs.contains(&id_bytes(&queued)));
    assert_no_orphan_output(&s.data);
    let output = keys(&s.data, "output");
    let a_key = id_bytes(&a);
    assert!(
        !output.iter().any(|o| o.starts_with(&a_key)),
        "{a}'s output is stored"
    );
    assert!(!keys(&s.data, "expired").contains(&a_key));

    // After a restart (a new epoch) A is still known to have existed.
    s.restart();
    let again = stderr(&s.cli(&["job", "get", &a]));
    assert!(again.contains("expired"), "{again}");
    // Epoch 2 is this start's: its sequence has not reached this.
    let never = stderr(&s.cli(&["job", "get", "j0.2.999999"]));
    assert!(never.contains("does not exist"), "{never}");
    assert!(s.ok(&["audit", "verify"]).contains("intact"));

    // Without its checkpoint the cut chain no longer verifies.
    stop(&mut s);
    assert_no_orphan_output(&s.data);
    {
        let db = fjall::Database::builder(s.data.join("store"))
            .open()
            .unwrap();
        let meta = db
            .keyspace("meta", fjall::KeyspaceCreateOptions::default)
            .unwrap();
        let cps: Vec<_> = meta
            .prefix("audit-checkpoint:")
            .map(|kv| kv.into_inner().unwrap().0)
            .collect();
        assert!(!cps.is_empty(), "no checkpoint was written");
        for k in cps {
            meta.remove(k).unwrap();
        }
        db.persist(fjall::PersistMode::SyncAll).unwrap();
    }
    s.restart();
    let out = s.cli(&["audit", "verify"]);
    assert!(
        !out.status.success(),
        "a cut chain without its checkpoint verified"
    );
    assert!(
        stderr(&out).contains("record 0: missing"),
        "{}",
        stderr(&out)
    );
}

/// With `--retain-finished off` nothing is deleted: a job finished for longer than a short
/// window is still there (the server's interval would have been 100 ms).
#[test]
fn retention_off_keeps_finished_jobs() {
    let scratch = Scratch::new("retention-off");
    let s = Server::start_with(&scratch, 1, &["--retain-finished", "off"]);
    let _agent = s.agent(&scratch, "a", 1, &[]);
    s.wait_workers(1);
    let a = run_to_success(&s, "echo kept");
    let end = finished_at(&s, &a);
    wait_for("3 s after the job ended", Duration::from_secs(10), || {
        (wall_now() >= end + 3_000_000).then_some(())
    });
    assert_eq!(s.job(&a)["state"], "succeeded");
    assert!(s.ok(&["job", "logs", &a]).contains("kept"));
}

/// The flag refuses a window under a second (a server that starts instead is killed).
#[test]
fn a_window_under_a_second_is_refused() {
    let scratch = Scratch::new("retention-refused");
    let port = common::free_port().to_string();
    let child = std::process::Command::new(common::HODEI)
        .args(["server", "--retain-finished", "500ms", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(scratch.path("data"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut p = common::Proc(child);
    let status = p.wait_exit(Duration::from_secs(10));
    assert!(!status.success());
    let mut err = String::new();
    if let Some(mut e) = p.0.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut err).unwrap();
    }
    assert!(err.contains("at least 1s"), "{err}");
}
