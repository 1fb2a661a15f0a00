//! Spawning an attempt's process group and supervising it: exit, cancel, time limit, and the
//! kill of the whole group. The spawn wires up the secrets' delivery ([`super::secrets`]):
//! `HODEI_SECRETS_DIR` for files, a stdin pipe for the JSON object; no value ever goes into
//! the environment or the script.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hodei_core::ids::{Attempt, JobId};
use hodei_core::job::Outcome;
use hodei_core::spec::{Command, JobSpec};
use hodei_core::time::{Micros, wall_now};
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::Child;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::guard::Guard;
use super::secrets::{Delivery, SECRETS_DIR_ENV};
use super::{CancelSignal, RunnerOptions};

/// First lines of every script: fail on the first error, unset variable or failed pipe stage.
const SCRIPT_HEADER: &str = "#!/usr/bin/env bash\nset -euo pipefail\n";

/// Prepares the attempt (working directory, script file) and spawns its process as the leader
/// of a new process group, with its secrets' directory or stdin pipe (`delivery`). The error is
/// a message for the user.
pub(super) fn spawn(
    spec: &JobSpec,
    opts: &RunnerOptions,
    job: JobId,
    attempt: Attempt,
    delivery: &Delivery,
) -> Result<Child, String> {
    let workdir = match &spec.workdir {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create working directory {}: {e}", dir.display()))?;
            dir
        }
        None => {
            let jobs = opts.jobs_dir();
            opts.workdirs.acquire(&jobs, job, attempt).map_err(|e| {
                format!(
                    "cannot create a working directory in {}: {e}",
                    jobs.display()
                )
            })?
        }
    };
    let (mut cmd, program) = match &spec.command {
        Command::Exec { program, args } => {
            let mut cmd = tokio::process::Command::new(program);
            cmd.args(args);
            (cmd, program.as_str())
        }
        Command::Script { body } => {
            let path = opts.script_path(job, attempt);
            write_script(&path, body)
                .map_err(|e| format!("cannot write script {}: {e}", path.display()))?;
            // `bash <path>` rather than executing the file: exec of a file just written races
            // with concurrent forks that still hold it open for writing (ETXTBSY).
            let mut cmd = tokio::process::Command::new("bash");
            cmd.arg(&path);
            (cmd, "bash")
        }
    };
    // Stdin carries the secrets' JSON when they are delivered that way; otherwise the job
    // reads nothing (a job waiting on an inherited terminal would hang).
    let stdin = if delivery.stdin.is_some() {
        Stdio::piped()
    } else {
        null_stdin()
    };
    cmd.envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    if let Some(dir) = &delivery.dir {
        // Set after the spec's env: a spec cannot point the job at another directory.
        cmd.env(SECRETS_DIR_ENV, dir.path());
    }
    cmd.current_dir(&workdir)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // The supervisor kills the whole group itself; dropping the handle must not kill only
        // the leader behind its back.
        .kill_on_drop(false)
        // Its own group, so one killpg reaches every process the job starts.
        .process_group(0);
    let child = cmd.spawn().map_err(|e| format!("{program}: {e}"))?;
    if let (Some(guard), Some(pid)) = (&opts.guard, child.id().and_then(|p| i32::try_from(p).ok()))
    {
        guard.spawned(pid);
    }
    Ok(child)
}

/// `/dev/null` for a job's stdin: a duplicate of one descriptor opened once, instead of a
/// path lookup per spawn.
fn null_stdin() -> Stdio {
    static NULL: OnceLock<Option<File>> = OnceLock::new();
    NULL.get_or_init(|| File::open("/dev/null").ok())
        .as_ref()
        .and_then(|f| f.try_clone().ok())
        .map_or_else(Stdio::null, Stdio::from)
}

/// Writes the script with its header, mode 0700, and closes it before anyone runs it.
fn write_script(path: &Path, body: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o700)
        .open(path)?;
    file.write_all(SCRIPT_HEADER.as_bytes())?;
    file.write_all(body.as_bytes())?;
    if !body.ends_with('\n') {
        file.write_all(b"\n")?;
    }
    Ok(())
}

/// The limits the supervisor enforces.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    /// Run-time limit from the spawn.
    pub timeout: Option<Duration>,
    /// SIGTERM → SIGKILL delay.
    pub kill_grace: Duration,
}

/// Waits for the main process to end, killing the group on a cancel or at the time limit, then
/// SIGKILLs whatever is left of the group and tells the pump (through `exited`) to drain.
/// Returns the outcome and the agent clock at the exit.
pub(super) async fn supervise(
    child: &mut Child,
    cancel: &CancelSignal,
    limits: Limits,
    guard: Option<&Guard>,
    exited: oneshot::Sender<()>,
) -> (Outcome, Micros) {
    // The group id is the leader's pid. It cannot be reused while the leader is unreaped,
    // and after the reap it stays taken as long as a member of the group lives.
    let group = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .map(Pid::from_raw);
    // From here on a `RunHandle::kill` signals the group itself, at once.
    if let Some(g) = group {
        cancel.group.store(g.as_raw(), Ordering::Release);
    }
    let deadline = limits.timeout.map(|t| Instant::now() + t);
    let mut killed_for: Option<Outcome> = None;
    let mut escalate_at: Option<Instant> = None;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            () = cancel.fired(), if killed_for.is_none() => {
                killed_for = Some(Outcome::Cancelled);
                if cancel.is_hard() {
                    signal_group(group, Signal::SIGKILL);
                } else {
                    signal_group(group, Signal::SIGTERM);
                    escalate_at = Some(Instant::now() + limits.kill_grace);
                }
            }
            () = sleep_until(deadline), if killed_for.is_none() && deadline.is_some() => {
                killed_for = Some(Outcome::TimedOut);
                signal_group(group, Signal::SIGTERM);
                escalate_at = Some(Instant::now() + limits.kill_grace);
            }
            () = sleep_until(escalate_at), if escalate_at.is_some() => {
                signal_group(group, Signal::SIGKILL);
                escalate_at = None;
            }
        }
    };
    let at = wall_now();
    // The leader is gone; anything it left in the group dies now, so the pipes reach EOF.
    signal_group(group, Signal::SIGKILL);
    // Reaped: the group id may be reused once its last member is gone. Cleared in the same
    // poll as the reap, so a kill from the agent's thread never reaches another group.
    cancel.group.store(0, Ordering::Release);
    if let (Some(guard), Some(group)) = (guard, group) {
        // Only now: until this kill the group may still hold members the guard must reach.
        guard.ended(group.as_raw());
    }
    // The pump may be gone already (both pipes closed early); nothing to tell it then.
    let _ = exited.send(());
    let outcome = match (killed_for, status) {
        // Killed at once (the lease): an exit code, or another signal than SIGKILL, means the
        // main process had ended on its own before the kill; that ending is its result.
        (Some(_), Ok(status))
            if cancel.is_hard() && status.signal() != Some(Signal::SIGKILL as i32) =>
        {
            ended_by(status)
        }
        // Whatever the process did with our SIGTERM, Hodei ended it.
        (Some(reason), _) => reason,
        (None, Ok(status)) => ended_by(status),
        (None, Err(e)) => {
            // Only possible if something else reaped our child; we cannot know how it ended.
            tracing::warn!(error = %e, "cannot wait for job process");
            Outcome::Exited(-1)
        }
    };
    (outcome, at)
}

/// How a process ended, from its wait status.
fn ended_by(status: std::process::ExitStatus) -> Outcome {
    match (status.code(), status.signal()) {
        (Some(code), _) => Outcome::Exited(code),
        (None, Some(sig)) => Outcome::Signaled(sig),
        // Neither code nor signal: not a state a reaped process can be in on Unix.
        (None, None) => Outcome::Exited(-1),
    }
}

/// SIGKILLs process group `pgid` now ([`super::RunHandle::kill`]).
pub(super) fn kill_group_now(pgid: i32) {
    signal_group(Some(Pid::from_raw(pgid)), Signal::SIGKILL);
}

/// Sends `sig` to the whole group; a group already gone (ESRCH) is the expected end state.
fn signal_group(group: Option<Pid>, sig: Signal) {
    let Some(group) = group else { return };
    match killpg(group, sig) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pgid = group.as_raw(), signal = ?sig, error = %e, "killpg failed"),
    }
}

/// Sleeps until `at`, or forever without one.
pub(super) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
