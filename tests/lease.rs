//! The agent's lease with real processes: it counts from the last packet heard from the
//! server, and its end SIGKILLs the job's whole process group at once, so a job is dead
//! before the server can requeue it, however short the grace (`agent/src/session/lease.rs`).

mod common;

use std::time::{Duration, Instant};

use common::{Scratch, Server, pid_alive, read_pid, wait_for};
use nix::sys::signal::Signal;

/// `--disconnect-grace 2s`: the agents' lease is 1 s.
const GRACE: Duration = Duration::from_secs(2);
const LEASE: Duration = Duration::from_secs(1);
/// The server's default heartbeat timeout (3 heartbeats of 1 s).
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);
/// What the kill may take beyond the lease on a loaded machine: the agent's timer, the
/// kernel's SIGKILL, this test's polling.
const MARGIN: Duration = Duration::from_millis(750);

/// A script whose first run records its shell's and its background `sleep`'s pids, ignores
/// SIGTERM (so does the `sleep`, which inherits it) and waits; a later run writes `double` if
/// a process of the first still lives, then ends at once.
fn script(dir: &std::path::Path) -> String {
    format!(
        "D={d}\n\
         if mkdir \"$D/first\" 2>/dev/null; then\n\
         trap '' TERM\n\
         echo $$ > \"$D/shell\"\n\
         sleep 300 &\n\
         echo $! > \"$D/child\"\n\
         wait\n\
         echo late >> \"$D/late\"\n\
         exit 1\n\
         fi\n\
         for p in $(cat \"$D/shell\" \"$D/child\"); do\n\
         if [ -e /proc/$p ] && ! grep -q ') Z' /proc/$p/stat; then echo $p >> \"$D/double\"; fi\n\
         done\n\
         echo retried\n",
        d = dir.display()
    )
}

/// The server stops (SIGSTOP) under a running job: the agent's connection is still open, only
/// silent (its idle timeout is 3 s, longer than the 1 s lease). The job's processes, which
/// ignore SIGTERM, must be dead within the lease of the last packet the server can have sent
/// (no later than the stop), well before the server could requeue the job (heartbeat timeout
/// plus grace, 5 s), and not after the 3 s idle timeout, a 1 s lease and a 2 s SIGTERM grace
/// (about 6 s), as before the lease counted from the last packet. Once the server runs
/// again, the job is retried, and its retry finds every process of the first run dead.
#[test]
fn a_silent_server_s_job_is_killed_a_lease_after_its_last_packet() {
    let scratch = Scratch::new("lease-silent");
    let dir = scratch.path("marks");
    std::fs::create_dir_all(&dir).unwrap();
    let server = Server::start_with(&scratch, 1, &["--disconnect-grace", "2s"]);
    let _agent = server.agent(&scratch, "a", 1, &[]);
    server.wait_workers(1);
    let file = scratch.path("job.sh");
    std::fs::write(&file, script(&dir)).unwrap();
    let id = server.submit(&[
        "--retries",
        "1",
        "--backoff",
        "100ms..200ms",
        "--script",
        file.to_str().unwrap(),
    ]);
    server.wait_job(&id, "the job to run", |j| j["state"] == "running");
    let pids: Vec<i32> = ["shell", "child"]
        .iter()
        .map(|k| {
            wait_for("the first run's pids", Duration::from_secs(30), || {
                read_pid(&dir.join(k))
            })
        })
        .collect();
    assert!(pids.iter().all(|p| pid_alive(*p)), "{pids:?}");

    let proc = server.proc.as_ref().unwrap();
    proc.signal(Signal::SIGSTOP);
    let stopped = Instant::now();
    wait_for(
        "the agent to kill the job's processes",
        Duration::from_secs(30),
        || pids.iter().all(|p| !pid_alive(*p)).then_some(()),
    );
    let dead_after = stopped.elapsed();
    eprintln!("the job's processes were dead {dead_after:?} after the server stopped");
    let requeue_after = HEARTBEAT_TIMEOUT + GRACE;
    assert!(
        dead_after <= LEASE + MARGIN,
        "the job's processes died {dead_after:?} after the server's last packet: more than \
         the lease ({LEASE:?}) and {MARGIN:?}; the server may requeue after {requeue_after:?}"
    );
    let log = std::fs::read_to_string(scratch.path("a.log")).unwrap();
    assert!(
        log.contains("longer than the lease"),
        "killed, but not by the lease"
    );
    proc.signal(Signal::SIGCONT);

    let j = server.wait_job(&id, "the retry to end", |j| {
        j["state"] == "succeeded" || j["state"] == "failed"
    });
    assert_eq!(j["state"], "succeeded", "{j}");
    assert_eq!(j["attempts"], 2, "{j}");
    let double = std::fs::read_to_string(dir.join("double")).unwrap_or_default();
    assert!(
        double.is_empty(),
        "the retry ran beside the first run: {double}"
    );
    assert!(
        !dir.join("late").exists(),
        "the first run went on to its end"
    );
}

/// The smallest grace a server should accept (1 s: a 500 ms lease) with the default 1 s
/// heartbeat: on a working connection the agent heartbeats and asks for ACKs often enough
/// that the server is always heard within the lease, so jobs running for several leases,
/// one of them on a new agent's first connection, are never killed.
#[test]
fn a_working_connection_keeps_its_lease_at_the_smallest_grace() {
    let scratch = Scratch::new("lease-healthy");
    let server = Server::start_with(&scratch, 1, &["--disconnect-grace", "1s"]);
    let _agent = server.agent(&scratch, "a", 2, &[]);
    server.wait_workers(1);
    let ids: Vec<String> = (0..2)
        .map(|_| server.submit(&["--retries", "0", "--", "sh", "-c", "sleep 4; echo ok"]))
        .collect();
    for id in &ids {
        let j = server.wait_job(id, "the job to end", |j| {
            j["state"] == "succeeded" || j["state"] == "failed"
        });
        assert_eq!(j["state"], "succeeded", "{j}");
        assert_eq!(j["attempts"], 1, "{j}");
    }
    let log = std::fs::read_to_string(scratch.path("a.log")).unwrap();
    assert!(
        !log.contains("longer than the lease"),
        "a job was killed on a working connection:\n{log}"
    );
}
