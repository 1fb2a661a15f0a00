//! A killed agent takes its jobs' process trees with it: through its guard process, and when
//! the guard died too, through the next run of the agent on the same work dir.

mod common;

use std::time::Duration;

use common::{Proc, Scratch, Server, pid_alive, read_pid, wait_for};
use nix::sys::signal::Signal;

/// A job whose shell and a child of it each write their pid, then wait.
fn tree_job(
    server: &Server,
    scratch: &Scratch,
) -> (String, std::path::PathBuf, std::path::PathBuf) {
    let leader = scratch.path("leader.pid");
    let child = scratch.path("child.pid");
    let script = format!(
        "echo $$ > {l}; sleep 300 & echo $! > {c}; wait",
        l = leader.display(),
        c = child.display()
    );
    let id = server.submit(&["--", "sh", "-c", &script]);
    (id, leader, child)
}

/// Waits for both pid files; returns the pids.
fn pids(leader: &std::path::Path, child: &std::path::Path) -> (i32, i32) {
    wait_for("the job to write its pids", Duration::from_secs(30), || {
        Some((read_pid(leader)?, read_pid(child)?))
    })
}

/// The agent's guard: its child whose environment names the guard's journal.
fn guard_of(agent: &Proc) -> i32 {
    let parent = agent.pid();
    wait_for("the agent's guard", Duration::from_secs(10), || {
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let ppid: i32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            let is_guard = env
                .split(|b| *b == 0)
                .any(|kv| kv.starts_with(b"HODEI_AGENT_GUARD="));
            (ppid == parent && is_guard).then_some(pid)
        })
    })
}

fn kill9(p: &mut Proc) {
    p.signal(Signal::SIGKILL);
    p.wait_exit(Duration::from_secs(10));
}

fn kill9_pid(pid: i32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    wait_for("the process to die", Duration::from_secs(10), || {
        (!pid_alive(pid)).then_some(())
    });
}

/// kill -9 of an agent: the job's shell and its child die with it, long before the server's
/// disconnect grace would retry the job elsewhere.
#[test]
fn killed_agent_takes_its_job_tree_with_it() {
    let scratch = Scratch::new("agentcrash-tree");
    let server = Server::start(&scratch, 1);
    let mut agent = server.agent(&scratch, "a", 1, &[]);
    server.wait_workers(1);
    let (id, leader, child) = tree_job(&server, &scratch);
    let (lp, cp) = pids(&leader, &child);
    server.wait_job(&id, "the job to run", |j| j["state"] == "running");
    assert!(pid_alive(lp) && pid_alive(cp));
    kill9(&mut agent);
    wait_for(
        "the job's processes to die with the agent",
        Duration::from_secs(5),
        || (!pid_alive(lp) && !pid_alive(cp)).then_some(()),
    );
}

/// kill -9 of the agent and its guard together: the job tree survives them, and the next
/// run of the agent on that work dir kills it before it takes any job.
#[test]
fn restarted_agent_kills_what_a_crash_left() {
    let scratch = Scratch::new("agentcrash-sweep");
    let server = Server::start(&scratch, 1);
    let mut agent = server.agent(&scratch, "a", 1, &[]);
    server.wait_workers(1);
    let guard = guard_of(&agent);
    let (id, leader, child) = tree_job(&server, &scratch);
    let (lp, cp) = pids(&leader, &child);
    server.wait_job(&id, "the job to run", |j| j["state"] == "running");
    // The guard first, so it cannot act on the agent's death.
    kill9_pid(guard);
    kill9(&mut agent);
    assert!(
        pid_alive(lp) && pid_alive(cp),
        "nothing was left to find: the crash of both must leave the job running"
    );
    let _again = server.agent(&scratch, "a", 1, &[]);
    wait_for(
        "the restarted agent to kill the leftover job",
        Duration::from_secs(15),
        || (!pid_alive(lp) && !pid_alive(cp)).then_some(()),
    );
}
