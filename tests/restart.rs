//! `kill -9` of the server while jobs are submitted and running: after a restart every
//! acknowledged job finishes exactly once, and no job ever runs twice at the same time.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Scratch, Server, wait_for};

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
