//! `kill -9` of the server while jobs are submitted and running: after a restart every
//! acknowledged job finishes exactly once, and no job ever runs twice at the same time.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Scratch, Server, pid_alive, read_pid, wait_for};

#[test]
fn kill_9_of_the_server_loses_no_acknowledged_job_and_runs_none_twice() {
    kill_loop("kill9", 100, 3, 1);
}

/// The loop: the server killed again and again while 1,000 jobs are submitted and run.
#[test]
fn kill_9_in_a_loop_with_a_thousand_jobs() {
    kill_loop("kill9loop", 1_000, 6, 4);
}

fn kill_loop(name: &str, jobs: usize, kills: usize, submitters: usize) {
    let scratch = Scratch::new(name);
    let locks = scratch.path("locks");
    std::fs::create_dir_all(&locks).unwrap();
    let mut server = Server::start(&scratch, 2);
    let _a = server.agent(&scratch, "a1", 4, &[]);
    let _b = server.agent(&scratch, "a2", 4, &[]);
    server.wait_workers(2);

    // Each job takes a lock directory for its token while it runs: a second concurrent run
    // of the same job fails mkdir and records DOUBLE. Every run appends its token to `runs`.
    let script = scratch.path("job.sh");
    std::fs::write(
        &script,
        format!(
            "L={l}\nif ! mkdir \"$L/$T.lock\" 2>/dev/null; then echo \"$T\" >> \"$L/double\"; fi\nsleep 0.3\necho \"$T\" >> \"$L/runs\"\nrmdir \"$L/$T.lock\"\necho done $T\n",
            l = locks.display()
        ),
    )
    .unwrap();

    let acked: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let threads: Vec<_> = (0..submitters)
        .map(|_| {
            let (acked, stop, next) = (Arc::clone(&acked), Arc::clone(&stop), Arc::clone(&next));
            let (addr, ca, script) = (server.addr.clone(), server.ca(), script.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= jobs * 2 {
                        break;
                    }
                    let token = format!("t{n}");
                    let out = std::process::Command::new(common::HODEI)
                        .args([
                            "job",
                            "submit",
                            "--env",
                            &format!("T={token}"),
                            "--script",
                            script.to_str().unwrap(),
                        ])
                        .env("HODEI_SERVER", &addr)
                        .env("HODEI_CA", &ca)
                        .output()
                        .unwrap();
                    if out.status.success() {
                        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                        acked.lock().unwrap().insert(token, id);
                    }
                }
            })
        })
        .collect();

    for round in 0..kills {
        let target = (round + 1) * jobs / (kills + 1);
        wait_for("submissions", Duration::from_secs(120), || {
            (acked.lock().unwrap().len() >= target).then_some(())
        });
        server.kill9();
        std::thread::sleep(Duration::from_millis(300)); // a real outage, not a blip
        server.restart();
    }
    wait_for("more submissions", Duration::from_secs(120), || {
        (acked.lock().unwrap().len() >= jobs).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }

    let acked = acked.lock().unwrap().clone();
    let mut wait = vec!["job", "wait", "--timeout", "180s"];
    wait.extend(acked.values().map(String::as_str));
    let out = server.cli(&wait);
    assert!(
        out.status.success(),
        "not all acknowledged jobs succeeded: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let runs = std::fs::read_to_string(locks.join("runs")).unwrap_or_default();
    let mut count: HashMap<&str, usize> = HashMap::new();
    for t in runs.lines() {
        *count.entry(t).or_default() += 1;
    }
    for (token, id) in &acked {
        assert_eq!(
            count.get(token.as_str()).copied(),
            Some(1),
            "job {id} ({token}) ran {:?} times",
            count.get(token.as_str())
        );
        assert_eq!(server.ok(&["job", "logs", id]), format!("done {token}\n"));
    }
    assert!(
        count.values().all(|c| *c == 1),
        "some unacknowledged job ran twice: {count:?}"
    );
    let double = std::fs::read_to_string(locks.join("double")).unwrap_or_default();
    assert!(
        double.is_empty(),
        "jobs ran twice at the same time: {double}"
    );
}

/// A server outage longer than the agents' lease (`--disconnect-grace 2s`: a 1 s lease). An
/// agent cannot tell the dead server from a network cut, so it kills what it still runs once
/// the lease is over: when the server comes back, those attempts are dead (their process
/// groups gone, none of them went on to the end), and the server retries each job once,
/// since no agent re-attached it. A job that finished during the outage is reported on the
/// reconnect and not run again.
#[test]
fn an_outage_longer_than_the_lease_fences_running_attempts_and_retries_them() {
    let scratch = Scratch::new("lease-outage");
    let dir = scratch.path("marks");
    std::fs::create_dir_all(&dir).unwrap();
    let flags = [
        "--heartbeat",
        "500ms",
        "--disconnect-grace",
        "2s",
        "--reattach-grace",
        "3s",
    ];
    let mut server = Server::start_with(&scratch, 2, &flags);
    let _a = server.agent(&scratch, "a1", 2, &[]);
    let _b = server.agent(&scratch, "a2", 2, &[]);
    server.wait_workers(2);

    // A first run records its shell's and its `sleep`'s pids and waits; it would write `late`
    // if its `sleep` ended. Any later run finishes at once and appends its token to `runs`.
    let script = scratch.path("job.sh");
    std::fs::write(
        &script,
        format!(
            "D={d}\nif mkdir \"$D/$T.first\" 2>/dev/null; then\n  echo $$ > \"$D/$T.shell\"\n  sleep 300 &\n  echo $! > \"$D/$T.child\"\n  wait\n  echo \"$T\" >> \"$D/late\"\n  exit 1\nfi\necho \"$T\" >> \"$D/runs\"\necho \"done $T\"\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let tokens = ["l1", "l2", "l3"];
    let long: Vec<String> = tokens
        .iter()
        .map(|t| {
            server.submit(&[
                "--env",
                &format!("T={t}"),
                "--retries",
                "1",
                "--backoff",
                "100ms..200ms",
                "--script",
                script.to_str().unwrap(),
            ])
        })
        .collect();
    let gate = scratch.path("gate");
    let short_done = scratch.path("short.done");
    let short = server.submit(&[
        "--retries",
        "0",
        "--",
        "sh",
        "-c",
        &format!(
            "while [ ! -e {g} ]; do sleep 0.05; done; echo short; touch {s}",
            g = gate.display(),
            s = short_done.display()
        ),
    ]);
    for id in long.iter().chain([&short]) {
        server.wait_job(id, "every job to run", |j| j["state"] == "running");
    }
    let pids: Vec<i32> = tokens
        .iter()
        .flat_map(|t| ["shell", "child"].map(|k| dir.join(format!("{t}.{k}"))))
        .map(|p| {
            wait_for("a first run's pid", Duration::from_secs(30), || {
                read_pid(&p)
            })
        })
        .collect();

    server.kill9();
    // The short job ends while the server is down; its agent keeps the result.
    std::fs::write(&gate, "").unwrap();
    wait_for("the short job to end", Duration::from_secs(30), || {
        short_done.exists().then_some(())
    });
    // The outage lasts until the agents' leases ran out: every first run is killed, whole.
    wait_for(
        "the agents to kill their running jobs at the end of the lease",
        Duration::from_secs(30),
        || pids.iter().all(|p| !pid_alive(*p)).then_some(()),
    );
    let agent_logs = ["a1", "a2"]
        .map(|a| std::fs::read_to_string(scratch.path(&format!("{a}.log"))).unwrap())
        .concat();
    assert!(
        agent_logs.contains("longer than the lease"),
        "the jobs died, but not by the lease"
    );
    assert!(!dir.join("late").exists(), "a first run went on to its end");
    server.restart();

    for (t, id) in tokens.iter().zip(&long) {
        let j = server.wait_job(id, "the retried job to end", |j| {
            j["state"] == "succeeded" || j["state"] == "failed"
        });
        assert_eq!(j["state"], "succeeded", "{j}");
        assert_eq!(j["attempts"], 2, "{j}");
        assert_eq!(server.ok(&["job", "logs", id]), format!("done {t}\n"));
        let events = server.ok(&["events", "--job", id]);
        assert!(events.contains("no agent re-attached it"), "{events}");
    }
    let s = server.wait_job(&short, "the short job's result", |j| {
        j["state"] == "succeeded" || j["state"] == "failed"
    });
    assert_eq!(s["state"], "succeeded", "{s}");
    assert_eq!(s["attempts"], 1, "run again: {s}");
    assert_eq!(server.ok(&["job", "logs", &short]), "short\n");
    // Each retried job ran to its end once, and no first run did.
    let runs = std::fs::read_to_string(dir.join("runs")).unwrap();
    let mut ran: Vec<&str> = runs.lines().collect();
    ran.sort_unstable();
    assert_eq!(ran, tokens, "{runs}");
    assert!(!dir.join("late").exists(), "a first run went on to its end");
}
