//! Every process a scenario starts, so that none outlives the run.
//!
//! Each child is the leader of its own process group ([`Proc::spawn`]), so one `killpg` also
//! reaches whatever it started (`hodei-loadtest` starts its own `hodei server`). A global
//! registry holds the groups still alive and the temporary dirs in use: the supervisor thread
//! ([`crate::supervisor`]) kills and removes them when the run is interrupted or exceeds its
//! bound, even while the scenario's thread is blocked. On the normal path a [`Proc`] is
//! stopped or dropped by its owner, which reaps it and takes it out of the registry.
//!
//! Being in their own groups, children do not get the terminal's Ctrl-C: the supervisor does,
//! and kills them. A `kill -9` of `hodei-bench` itself cannot be handled (that would need
//! `PR_SET_PDEATHSIG`, which needs `unsafe`, denied in this workspace).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;

struct Registry {
    /// Process groups (= leader pids) not yet reaped.
    groups: Vec<i32>,
    /// Temporary dirs to remove if the run is cut short.
    dirs: Vec<PathBuf>,
    /// Set by [`kill_all`]: nothing may start after it.
    closed: bool,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    groups: Vec::new(),
    dirs: Vec::new(),
    closed: false,
});

fn registry() -> MutexGuard<'static, Registry> {
    // A panic while holding the lock leaves the lists consistent (each change is one push
    // or retain), so the data is still good.
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A child process, leader of its own process group. Dropping it kills the group.
pub struct Proc {
    child: Child,
    pgid: Pid,
    what: String,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Starts `cmd` in a new process group and registers it. `what` names it in errors.
    pub fn spawn(cmd: &mut Command, what: &str) -> Result<Self> {
        cmd.process_group(0);
        // Spawning under the lock means the supervisor either sees this group or has
        // already closed the registry: no child can slip past it.
        let mut reg = registry();
        if reg.closed {
            bail!("the run is stopping: not starting {what}");
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        let raw = i32::try_from(child.id()).context("a pid out of range")?;
        reg.groups.push(raw);
        Ok(Self {
            child,
            pgid: Pid::from_raw(raw),
            what: what.to_owned(),
            status: None,
        })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` to the whole group (nothing once it was reaped: its id may be reused).
    pub fn signal(&self, sig: Signal) {
        if self.status.is_none() {
            let _ = killpg(self.pgid, sig);
        }
    }

    /// Its exit status if the leader has exited; then the rest of its group is killed and
    /// the leader reaped.
    pub fn try_finish(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_some() {
            return Ok(self.status);
        }
        // WNOWAIT: look without reaping, so the group id stays reserved until the
        // stragglers are killed.
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        match waitid(Id::Pid(self.pgid), flags) {
            Ok(WaitStatus::StillAlive) => Ok(None),
            Ok(_) => Ok(Some(self.reap()?)),
            Err(e) => Err(e).with_context(|| format!("cannot wait for {}", self.what)),
        }
    }

    /// Waits (without blocking the runtime) until the leader exits; see [`Self::try_finish`].
    pub async fn wait(&mut self) -> Result<ExitStatus> {
        loop {
            if let Some(s) = self.try_finish()? {
                return Ok(s);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM to the group, up to `grace` for the leader to exit, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        self.signal(Signal::SIGTERM);
        self.wait_or_kill(grace);
    }

    /// Up to `grace` for the leader to exit (blocking), then SIGKILL.
    pub fn wait_or_kill(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            match self.try_finish() {
                Ok(Some(_)) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(_) => break,
            }
        }
        self.kill();
    }

    /// SIGKILL to the group, then reaps the leader.
    pub fn kill(&mut self) {
        if self.status.is_none() {
            let _ = killpg(self.pgid, Signal::SIGKILL);
            let _ = self.reap();
        }
    }

    fn reap(&mut self) -> Result<ExitStatus> {
        let mut reg = registry();
        // The leader is dead but unreaped, so its pid cannot have been reused: whatever is
        // still in the group is ours.
        let _ = killpg(self.pgid, Signal::SIGKILL);
        let status = self.child.wait();
        reg.groups.retain(|&g| g != self.pgid.as_raw());
        let status = status.with_context(|| format!("cannot reap {}", self.what))?;
        self.status = Some(status);
        Ok(status)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Creates an empty temporary dir named `hodei-bench-<name>-<pid>` and registers it.
pub fn temp_dir(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("hodei-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    registry().dirs.push(dir.clone());
    Ok(dir)
}

/// Removes a dir made by [`temp_dir`].
pub fn remove_dir(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    registry().dirs.retain(|d| d != dir);
}

/// A [`temp_dir`], removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Result<Self> {
        temp_dir(name).map(Self)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        remove_dir(&self.0);
    }
}

/// Registers a dir some child creates (and normally removes itself), to be removed if the
/// run is cut short.
pub fn register_dir(dir: PathBuf) {
    registry().dirs.push(dir);
}

/// Kills every registered process group, reaps the leaders, and removes the temporary dirs;
/// nothing can start afterwards. Returns how many groups it killed. For the exit paths only:
/// the [`Proc`]s of reaped leaders cannot be used afterwards.
pub fn kill_all() -> usize {
    let mut reg = registry();
    reg.closed = true;
    for &g in &reg.groups {
        let _ = killpg(Pid::from_raw(g), Signal::SIGKILL);
    }
    // Reaped here, as the process is about to exit: left to an init that does not reap (a
    // container's), they would stay as zombies. Bounded, in case one is stuck in the kernel.
    let deadline = Instant::now() + Duration::from_secs(2);
    for &g in &reg.groups {
        while Instant::now() < deadline {
            match nix::sys::wait::waitpid(Pid::from_raw(g), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(5)),
                _ => break,
            }
        }
    }
    // The processes may still be dying, but none can write into the dirs any more once
    // SIGKILL is delivered; a file still open is removed all the same.
    for d in &reg.dirs {
        let _ = std::fs::remove_dir_all(d);
    }
    reg.groups.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_kills_the_whole_group() {
        // A shell that starts a grandchild in the background, then waits.
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "sleep 30 & echo $! ; wait"])
            .stdout(std::process::Stdio::piped());
        let mut p = Proc::spawn(&mut cmd, "sh").unwrap();
        let mut line = String::new();
        let out = p.child.stdout.take().unwrap();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line).unwrap();
        let grandchild: i32 = line.trim().parse().unwrap();
        drop(p);
        // The grandchild is not our child: once killed it is a zombie until whoever
        // inherited it reaps it (maybe never, in a container), so "dead" is gone or 'Z'.
        let alive = |pid: i32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit_once(") ")
                    .is_some_and(|(_, rest)| !rest.starts_with('Z'))
            })
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(grandchild) {
            assert!(Instant::now() < deadline, "the grandchild survived");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_finished_leader_is_reaped_and_forgotten() {
        let mut p = Proc::spawn(&mut Command::new("/bin/true"), "true").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            if let Some(s) = p.try_finish().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(5));
        };
        assert!(status.success());
        assert!(!registry().groups.contains(&p.pgid.as_raw()));
    }
}
