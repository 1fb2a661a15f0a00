//! A job's output at the edges: held back by the agent's output window while the server
//! cannot acknowledge it, and never lost on the way.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Scratch, Server, read_pid, wait_for};

/// Bytes in the spool files under an agent's work dir.
fn spooled(work_dir: &Path) -> u64 {
    std::fs::read_dir(work_dir.join("spool")).map_or(0, |dir| {
        dir.flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    })
}

/// Whether a process sleeps in a pipe write (a kernel that hides wait channels shows "0").
fn blocked_writing(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/wchan")) {
        Ok(wchan) if wchan.trim() == "0" => common::pid_alive(pid),
        Ok(wchan) => wchan.contains("pipe_write"),
        Err(_) => false,
    }
}

/// The server is killed while a job prints about 20 MiB. With `--output-window 2M` the agent
/// spools at most one window beyond what the server acknowledged and then stops reading: the
/// job blocks on its pipe, the spool and the agent's memory stay small. After the restart
/// the job goes on, and every byte arrives in order. (Without the window the job printed
/// everything into the spool during the outage.)
#[test]
fn output_waits_for_acknowledgements_and_arrives_whole() {
    let scratch = Scratch::new("output-window");
    // A long grace, so the outage stays well inside the agent's lease (half of it).
    let mut server = Server::start_with(&scratch, 1, &["--disconnect-grace", "60s"]);
    let agent = server.agent(&scratch, "a", 1, &["--output-window", "2M"]);
    server.wait_workers(1);
    let go = scratch.path("go");
    let pidfile = scratch.path("job.pid");
    let script = format!(
        "echo $$ > {pid}; while [ ! -e {go} ]; do sleep 0.05; done; exec seq 1 3000000",
        pid = pidfile.display(),
        go = go.display(),
    );
    let id = server.submit(&["--", "sh", "-c", &script]);
    server.wait_job(&id, "the job to run", |j| j["state"] == "running");
    let pid = wait_for("the job's pid", Duration::from_secs(10), || {
        read_pid(&pidfile)
    });
    server.kill9();
    std::fs::write(&go, b"").unwrap();
    let work_dir = scratch.path("a");
    let window = 2 << 20;
    wait_for(
        "the job to block on its output (or to print it all)",
        Duration::from_secs(30),
        || {
            let ended = !common::pid_alive(pid);
            let held = spooled(&work_dir) >= window && blocked_writing(pid);
            (ended || held).then_some(())
        },
    );
    assert!(
        common::pid_alive(pid),
        "the job printed everything while the server was down"
    );
    // One window, plus at most a batch in flight, a read and the records' headers.
    let spool = spooled(&work_dir);
    assert!(
        spool <= window + (256 << 10),
        "{spool} bytes spooled ahead of the server's acknowledgement"
    );
    let rss = common::rss_kib(agent.pid());
    assert!(rss < 64 << 10, "agent resident memory {rss} KiB");
    server.restart();
    server.wait_job(&id, "the job to succeed", |j| j["state"] == "succeeded");
    let logs = server.cli(&["job", "logs", &id]);
    assert!(logs.status.success());
    let expected: String = (1..=3_000_000).map(|n| format!("{n}\n")).collect();
    assert_eq!(logs.stdout.len(), expected.len(), "output length");
    assert!(logs.stdout == expected.as_bytes(), "output differs");
}

/// The agent's work dir is full, so it cannot spool a job's output: the job, which exits
/// 0, is reported failed with an error saying its output may be incomplete and why, not
/// succeeded with output that a reconnect would have lost. Needs to mount a tmpfs (root);
/// without that it says so and checks nothing.
#[test]
fn an_output_spool_that_cannot_be_written_fails_the_job_with_the_reason() {
    let scratch = Scratch::new("output-full");
    let work = scratch.path("a");
    let Some(_tmpfs) = common::tmpfs::Tmpfs::mount(&work, 4) else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let server = Server::start(&scratch, 1);
    let _agent = server.agent(&scratch, "a", 1, &[]);
    server.wait_workers(1);
    // A job first, so the agent's directories exist; then nothing more fits.
    let first = server.submit(&["--", "true"]);
    server.wait_job(&first, "a first job", |j| j["state"] == "succeeded");
    common::tmpfs::fill(&work.join("filler"));
    let dir = scratch.path("wd");
    std::fs::create_dir_all(&dir).unwrap();
    let id = server.submit(&[
        "--workdir",
        dir.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "echo hello",
    ]);
    let job = server.wait_job(&id, "the job to end", |j| {
        j["state"] == "succeeded" || j["state"] == "failed"
    });
    assert_eq!(job["state"], "failed", "{job}");
    let error = job["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("output may be incomplete")
            && error.contains("No space left on device")
            && error.contains("exited with code 0"),
        "{error}"
    );
}

/// `hodei job submit --max-output 1M` of a job printing 5 MiB and exiting 3: the job ends
/// by its own exit code, and `hodei job logs` holds the first 1 MiB and then one line (on
/// stderr) saying how much was cut. A limit of 0 is refused at submit.
#[test]
fn output_past_max_output_is_cut_with_a_final_line() {
    let scratch = Scratch::new("output-limit");
    let server = Server::start(&scratch, 1);
    let _agent = server.agent(&scratch, "a", 1, &[]);
    server.wait_workers(1);
    let id = server.submit(&[
        "--max-output",
        "1M",
        "--retries",
        "0",
        "--",
        "sh",
        "-c",
        "head -c 5242880 /dev/zero | tr '\\0' a; exit 3",
    ]);
    let job = server.wait_job(&id, "the job to end", |j| j["state"] == "failed");
    assert_eq!(job["exit_code"], 3, "{job}");
    let logs = server.cli(&["job", "logs", &id]);
    assert!(logs.status.success());
    let notice = "[hodei: output cut after 1048576 bytes; 4194304 bytes dropped]\n";
    // The job's stdout, then the notice, written to stderr as the job's stderr is.
    assert_eq!(logs.stdout.len(), 1 << 20, "output length");
    assert!(logs.stdout.iter().all(|b| *b == b'a'));
    assert!(
        logs.stderr == notice.as_bytes(),
        "{:?}",
        String::from_utf8_lossy(&logs.stderr)
    );
    let refused = server.cli(&["job", "submit", "--max-output", "0", "--", "true"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("output limit"),
        "{refused:?}"
    );
}

/// `hodei server --max-output 1M`: a job submitted without `--max-output` is cut at the
/// server's limit, with the same final line; a limit of 0 or above 1T is refused at start.
#[test]
fn the_servers_max_output_applies_to_jobs_that_set_none() {
    let scratch = Scratch::new("output-server-limit");
    let server = Server::start_with(&scratch, 1, &["--max-output", "1M"]);
    let _agent = server.agent(&scratch, "a", 1, &[]);
    server.wait_workers(1);
    let id = server.submit(&["--", "sh", "-c", "head -c 3145728 /dev/zero | tr '\\0' a"]);
    let job = server.wait_job(&id, "the job to end", |j| j["state"] == "succeeded");
    assert_eq!(job["exit_code"], 0, "{job}");
    let logs = server.cli(&["job", "logs", &id]);
    assert!(logs.status.success());
    assert_eq!(logs.stdout.len(), 1 << 20, "output length");
    let notice = "[hodei: output cut after 1048576 bytes; 2097152 bytes dropped]\n";
    assert!(
        logs.stderr == notice.as_bytes(),
        "{:?}",
        String::from_utf8_lossy(&logs.stderr)
    );
    for bad in ["0", "2T"] {
        common::assert_server_refuses(
            &scratch.path("other"),
            &["--max-output", bad],
            "--max-output",
        );
    }
}
