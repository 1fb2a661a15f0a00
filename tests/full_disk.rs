//! A full disk under a running server: the server stays up, refuses writes naming the
//! cause, answers reads, lets the running job go on (its output waits in the agent's
//! spool), and resumes by itself when space is freed, losing nothing acknowledged. Needs to
//! mount a tmpfs (root); without that the test says so and checks nothing.

mod common;

use std::time::Duration;

use common::{Scratch, Server, pid_alive, read_pid, wait_for};

/// Runs the CLI against `server`, failing the test if it does not answer within 20 s (a
/// request left waiting behind the full store is exactly the failure looked for).
fn cli(server: &Server, args: &[&str]) -> std::process::Output {
    let mut child = std::process::Command::new(common::HODEI)
        .args(args)
        .env("HODEI_SERVER", &server.addr)
        .env("HODEI_CA", server.ca())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().ok().flatten().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("hodei {args:?} got no answer within 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap_or_else(|e| panic!("{e}"))
}

fn json(server: &Server, args: &[&str]) -> serde_json::Value {
    let out = cli(server, args);
    assert!(out.status.success(), "hodei {args:?}: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}"))
}

/// The `tick N` lines of a job's output are 1..=last with none missing, then `done`.
fn check_ticks(out: &str) -> i32 {
    let mut n = 0;
    for line in out.lines() {
        if line == "done" {
            return n;
        }
        n += 1;
        assert_eq!(line, format!("tick {n}"), "output has a gap or a repeat");
    }
    panic!("the output does not end with `done`: {out:?}");
}

#[test]
fn a_full_disk_refuses_writes_serves_reads_and_resumes_by_itself() {
    let scratch = Scratch::new("full-disk");
    let data = scratch.path("data");
    let Some(_tmpfs) = common::tmpfs::Tmpfs::mount(&data, 112) else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let mut server = Server::start_with(&scratch, 2, &["--min-free-space", "16M"]);
    let _agent = server.agent(&scratch, "a", 2, &[]);
    server.wait_workers(1);
    // A job that prints a line every 50 ms until told to stop, and keeps its count in a
    // file off the full filesystem.
    let (pid, gate, count) = (
        scratch.path("job.pid"),
        scratch.path("gate"),
        scratch.path("count"),
    );
    let script = format!(
        "echo $$ > {pid}; i=0; while [ ! -e {gate} ]; do i=$((i+1)); echo tick $i; echo $i > {count}; sleep 0.05; done; echo done",
        pid = pid.display(),
        gate = gate.display(),
        count = count.display()
    );
    let printed = || read_pid(&count).unwrap_or(0);
    let running = server.submit(&["--", "sh", "-c", &script]);
    server.wait_job(&running, "the job to run", |j| j["state"] == "running");
    let job_pid = wait_for("the job's pid", Duration::from_secs(10), || read_pid(&pid));
    let before = server.submit(&["--", "true"]);
    server.wait_job(&before, "a job before the disk fills", |j| {
        j["state"] == "succeeded"
    });

    let filler = data.join("filler");
    common::tmpfs::fill(&filler);
    // A submit is refused, naming the cause: no room on the data dir's filesystem.
    let refusal = wait_for(
        "a submit refused for a full store",
        Duration::from_secs(30),
        || {
            let out = cli(&server, &["job", "submit", "--", "true"]);
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            (!out.status.success() && err.contains("store full: ")).then_some(err)
        },
    );
    assert!(
        refusal.contains("free on") || refusal.contains("No space left on device"),
        "the refusal does not say why: {refusal}"
    );
    // The job goes on printing while nothing can be stored.
    let at_full = printed();
    wait_for(
        "the job to print 40 lines while the disk is full",
        Duration::from_secs(30),
        || (printed() >= at_full + 40).then_some(()),
    );
    // Reads are answered: the running job, the listing, its logs so far.
    for _ in 0..3 {
        let job = json(&server, &["job", "get", &running, "--json"]);
        assert_eq!(job["state"], "running");
        let list = json(&server, &["job", "list", "--json"]);
        assert!(list.as_array().is_some_and(|l| l.len() >= 2), "{list}");
        assert!(cli(&server, &["job", "logs", &running]).status.success());
    }
    // Still refused, the job still runs, the server is still up.
    let again = cli(&server, &["job", "submit", "--", "true"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("store full: "));
    assert!(pid_alive(job_pid), "the running job was stopped");
    let proc = server.proc.as_mut().unwrap();
    assert!(
        proc.0.try_wait().ok().flatten().is_none(),
        "the server exited"
    );

    // Space comes back: the server takes writes again by itself, no restart.
    std::fs::remove_file(&filler).unwrap();
    let after = wait_for(
        "a submit accepted once space is back",
        Duration::from_secs(30),
        || {
            let out = cli(&server, &["job", "submit", "--", "true"]);
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        },
    );
    server.wait_job(&after, "the job submitted after", |j| {
        j["state"] == "succeeded"
    });
    std::fs::write(&gate, b"").unwrap();
    server.wait_job(&running, "the running job to succeed", |j| {
        j["state"] == "succeeded"
    });
    let logs = server.ok(&["job", "logs", &running]);
    let ticks = check_ticks(&logs);
    assert!(
        ticks >= at_full + 40,
        "{ticks} lines: what the job printed while the disk was full is missing"
    );

    // A restart finds everything acknowledged, and the same output.
    server.kill9();
    server.restart();
    for id in [&before, &after, &running] {
        assert_eq!(server.job(id)["state"], "succeeded", "{id}");
    }
    assert_eq!(server.ok(&["job", "logs", &running]), logs);
}
