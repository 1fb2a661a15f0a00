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

/// Resident memory of a process, in KiB.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
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
    let rss = rss_kib(agent.pid());
    assert!(rss < 64 << 10, "agent resident memory {rss} KiB");
    server.restart();
    server.wait_job(&id, "the job to succeed", |j| j["state"] == "succeeded");
    let logs = server.cli(&["job", "logs", &id]);
    assert!(logs.status.success());
    let expected: String = (1..=3_000_000).map(|n| format!("{n}\n")).collect();
    assert_eq!(logs.stdout.len(), expected.len(), "output length");
    assert!(logs.stdout == expected.as_bytes(), "output differs");
}
