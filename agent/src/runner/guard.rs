//! The guard: a small process that kills the jobs' process groups when the agent dies.
//!
//! A job runs as its own process group ([`super::process`]), which the agent's supervisor
//! kills when the job ends, is cancelled or times out. Killed itself (`kill -9`, the OOM
//! killer, a crash), the agent can do nothing, and the server retries its jobs elsewhere after
//! the disconnect grace: both copies would run. So at start the agent re-executes its own
//! binary in guard mode (the hidden `HODEI_AGENT_GUARD` setting), in a process group of its
//! own (a terminal's Ctrl-C or a `killpg` of the agent's group does not reach it), with a pipe
//! as its stdin. The agent writes one record per spawn (`S` + the group id) and one when the
//! group has been killed at the end of the job (`E` + the group id). The guard keeps the set
//! of live groups; when its stdin reaches EOF the agent is gone, however it ended (the kernel
//! closes the write end), and the guard SIGKILLs every group left and exits.
//!
//! Why a guard process and not `PR_SET_PDEATHSIG` on each job: the death signal reaches only
//! the process it was set on, never its children, and setting it needs a `pre_exec` hook,
//! which turns the spawn from `posix_spawn` (vfork) into a full `fork` of the agent. With the
//! guard, spawning is unchanged: the agent's share is two 5-byte pipe writes per job, and the
//! guard's a read of the leader's `/proc/<pid>/stat` and two journal lines. The guard polls
//! its pipe ([`POLL`]) rather than sleeping in `read`: with a blocked reader, each write paid
//! for its wake-up, about 25 µs of the agent's CPU per `/bin/true` job on the 2-vCPU test
//! machine (`hodei-bench throughput --mode true`).
//!
//! The guard also keeps a journal of the live groups, `<work_dir>/groups` (`+pgid starttime`
//! and `-pgid` lines, rewritten when it grows), for the case where the guard died with the
//! agent (a `kill -9` of both). The next agent started on that work dir reads it before it
//! runs anything ([`sweep`]) and kills the groups still alive. The leader's start time (from
//! `/proc`) tells a group of ours from a later one that reused the number; it is 0 when the
//! leader had exited before the guard looked, and a process whose pid is that group id is
//! then someone else's.
//!
//! A process that leaves the job's group (`setsid`, `setpgid`) escapes the guard as it
//! escapes the supervisor's kill. A kill of the agent in the microseconds between a spawn and
//! its record leaves that one job to the server's fencing.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// The environment variable that starts the agent binary in guard mode: the journal's path.
pub const GUARD_ENV: &str = "HODEI_AGENT_GUARD";

/// Name of the journal in the agent's work dir.
const JOURNAL: &str = "groups";

/// One record on the pipe: a tag and a group id (i32 LE). Smaller than `PIPE_BUF`, so each
/// write is atomic.
const RECORD: usize = 5;
const SPAWNED: u8 = b'S';
const ENDED: u8 = b'E';

/// How often the guard looks at its pipe. It never blocks in `read`: a writer to a pipe with
/// a sleeping reader pays for that reader's wake-up in its `write` (an IPI across cores), on
/// the agent's thread, twice per job; a pipe nobody waits on costs the writer only the copy.
/// The agent's death is then noticed within this much.
const POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// The journal is rewritten from the live set once it holds this many more lines than that.
const REWRITE_AFTER: usize = 4096;

/// The agent's end of the guard: tells it about each job's process group.
#[derive(Debug)]
pub struct Guard {
    pipe: ChildStdin,
    /// A write failed (the guard is gone): warned once, nothing more is written.
    broken: AtomicBool,
    /// Kept so the handle lives as long as the agent; the guard is never waited for.
    _child: std::process::Child,
}

impl Guard {
    /// Kills what an earlier run left (its journal), then starts the guard for `work_dir`.
    ///
    /// # Errors
    /// The agent's binary cannot be found or started again.
    pub fn start(work_dir: &Path) -> io::Result<Self> {
        let journal = work_dir.join(JOURNAL);
        let killed = sweep(&journal);
        if killed > 0 {
            tracing::warn!(
                killed,
                "killed the process groups of jobs an earlier run of this agent left running"
            );
        }
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env(GUARD_ENV, &journal)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()?;
        let pipe = child
            .stdin
            .take()
            .ok_or_else(|| io::Error::other("the guard's stdin is not a pipe"))?;
        Ok(Self {
            pipe,
            broken: AtomicBool::new(false),
            _child: child,
        })
    }

    /// A job's group was spawned: the guard kills it if the agent dies.
    pub(super) fn spawned(&self, pgid: i32) {
        self.write(SPAWNED, pgid);
    }

    /// A job's group has been killed at the end of the job: the guard forgets it.
    pub(super) fn ended(&self, pgid: i32) {
        self.write(ENDED, pgid);
    }

    fn write(&self, tag: u8, pgid: i32) {
        if self.broken.load(Ordering::Relaxed) {
            return;
        }
        let mut rec = [0u8; RECORD];
        rec[0] = tag;
        rec[1..].copy_from_slice(&pgid.to_le_bytes());
        if let Err(e) = (&self.pipe).write_all(&rec) {
            self.broken.store(true, Ordering::Relaxed);
            tracing::warn!(error = %e, "the job guard is gone: jobs will outlive a crash of this agent");
        }
    }
}

/// Guard mode: reads records from stdin until EOF, keeping the journal at `journal`, then
/// SIGKILLs every group still live. Runs in a process of its own.
///
/// # Errors
/// Stdin cannot be read.
pub fn serve(journal: &Path) -> io::Result<()> {
    ignore_stop_signals();
    let mut log = Journal::create(journal.to_path_buf());
    let mut live: HashMap<i32, u64> = HashMap::new();
    let mut stdin = io::stdin().lock();
    nix::fcntl::fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&stdin),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    let mut buf = [0u8; RECORD * 512];
    let mut have = 0;
    loop {
        let n = match stdin.read(&mut buf[have..]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(POLL);
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "the job guard cannot read from the agent");
                break;
            }
        };
        have += n;
        let whole = have - have % RECORD;
        for rec in buf[..whole].chunks_exact(RECORD) {
            let pgid = i32::from_le_bytes([rec[1], rec[2], rec[3], rec[4]]);
            match rec[0] {
                SPAWNED => {
                    let start = proc_stat(pgid).map_or(0, |s| s.start);
                    live.insert(pgid, start);
                    log.add(pgid, start, &live);
                }
                ENDED => {
                    live.remove(&pgid);
                    log.remove(pgid, &live);
                }
                _ => {}
            }
        }
        buf.copy_within(whole..have, 0);
        have -= whole;
    }
    for &pgid in live.keys() {
        kill_group(pgid);
    }
    if !live.is_empty() {
        tracing::warn!(
            groups = live.len(),
            "the agent is gone: killed its jobs' process groups"
        );
    }
    log.clear();
    Ok(())
}

/// The guard outlives the agent's drain: SIGTERM, SIGINT and SIGHUP are the agent's to act on.
fn ignore_stop_signals() {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    else {
        return;
    };
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        // Once installed, tokio's handler stays for the life of the process; the signals are
        // recorded and never looked at.
        for kind in [
            SignalKind::terminate(),
            SignalKind::interrupt(),
            SignalKind::hangup(),
        ] {
            let _ = signal(kind);
        }
    });
}

/// The journal of live groups, written by the guard.
struct Journal {
    path: PathBuf,
    file: Option<File>,
    lines: usize,
}

impl Journal {
    /// A fresh journal: the previous run's was swept before the guard started.
    fn create(path: PathBuf) -> Self {
        let file = File::create(&path)
            .inspect_err(|e| tracing::warn!(path = %path.display(), error = %e, "cannot write the job guard's journal"))
            .ok();
        Self {
            path,
            file,
            lines: 0,
        }
    }

    fn add(&mut self, pgid: i32, start: u64, live: &HashMap<i32, u64>) {
        self.append(&format!("+{pgid} {start}\n"), live);
    }

    fn remove(&mut self, pgid: i32, live: &HashMap<i32, u64>) {
        self.append(&format!("-{pgid}\n"), live);
    }

    fn append(&mut self, line: &str, live: &HashMap<i32, u64>) {
        let Some(file) = &mut self.file else { return };
        if file.write_all(line.as_bytes()).is_err() {
            self.file = None;
            return;
        }
        self.lines += 1;
        if self.lines > live.len().saturating_add(REWRITE_AFTER) {
            self.rewrite(live);
        }
    }

    /// Replaces the journal by the live set (a rename: a crash leaves the old or the new one).
    fn rewrite(&mut self, live: &HashMap<i32, u64>) {
        let tmp = self.path.with_extension("tmp");
        let text: String = live
            .iter()
            .map(|(pgid, start)| format!("+{pgid} {start}\n"))
            .collect();
        let done = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &self.path));
        self.file = done
            .and_then(|()| std::fs::OpenOptions::new().append(true).open(&self.path))
            .ok();
        self.lines = live.len();
    }

    fn clear(&mut self) {
        self.file = None;
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Kills the groups a journal lists as live and that are still ours; returns how many.
/// Removes the journal. A missing or unreadable journal means nothing was left.
pub fn sweep(journal: &Path) -> usize {
    let Ok(file) = File::open(journal) else {
        return 0;
    };
    let mut live: HashMap<i32, u64> = HashMap::new();
    for line in io::BufReader::new(file).lines().map_while(Result::ok) {
        if let Some(rest) = line.strip_prefix('+') {
            let mut parts = rest.split_whitespace();
            let pgid = parts.next().and_then(|p| p.parse::<i32>().ok());
            let start = parts.next().and_then(|s| s.parse::<u64>().ok());
            if let (Some(pgid), Some(start)) = (pgid, start)
                && pgid > 1
            {
                live.insert(pgid, start);
            }
        } else if let Some(pgid) = line.strip_prefix('-').and_then(|p| p.parse::<i32>().ok()) {
            live.remove(&pgid);
        }
    }
    let mut killed = 0;
    for (pgid, start) in live {
        if still_ours(pgid, start) {
            kill_group(pgid);
            killed += 1;
        }
    }
    let _ = std::fs::remove_file(journal);
    killed
}

/// Whether group `pgid`, whose leader started at `start` (0: unknown, it had exited), still
/// has members that belong to it.
fn still_ours(pgid: i32, start: u64) -> bool {
    match proc_stat(pgid) {
        // The leader lives: the same process if it leads that group and started then.
        Some(leader) => start != 0 && leader.start == start && leader.pgrp == pgid,
        // The leader is gone; the group id stays taken while a member lives, so members in
        // that group are the job's.
        None => group_has_members(pgid),
    }
}

fn group_has_members(pgid: i32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|e| {
        e.file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
            .and_then(proc_stat)
            .is_some_and(|s| s.pgrp == pgid)
    })
}

/// What `/proc/<pid>/stat` says about a live (not zombie) process.
struct ProcStat {
    pgrp: i32,
    /// Clock ticks after boot.
    start: u64,
}

fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Fields after the command name (which may hold spaces and parentheses, hence the last `)`):
/// state is field 3, pgrp 5, starttime 22.
fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = text.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first().is_none_or(|s| *s == "Z" || *s == "X") {
        return None;
    }
    Some(ProcStat {
        pgrp: fields.get(2)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

fn kill_group(pgid: i32) {
    if pgid <= 1 {
        return;
    }
    match killpg(Pid::from_raw(pgid), Signal::SIGKILL) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pgid, error = %e, "cannot kill a job's process group"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_found_after_the_command_name() {
        let line =
            "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1 2";
        let s = parse_stat(line).unwrap();
        assert_eq!((s.pgrp, s.start), (4242, 987_654));
        assert!(parse_stat("1 (x) Z 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 1 2").is_none());
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn a_journal_of_ended_groups_kills_nothing() {
        let dir = std::env::temp_dir().join(format!("hodei-guard-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let journal = dir.join(JOURNAL);
        // This process, recorded with a start time that is not its own: a reused number,
        // never killed.
        let me = i32::try_from(std::process::id()).unwrap();
        std::fs::write(&journal, format!("+{me} 1\n+77 5\n-77\nnonsense\n")).unwrap();
        assert_eq!(sweep(&journal), 0);
        assert!(!journal.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
