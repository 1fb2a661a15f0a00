//! Real-process tests of the job runner: real children, real process groups, real pipes.
//! Every wait is bounded by a deadline; nothing sleeps and hopes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hodei_agent::runner::{
    AttemptFiles, RunEventKind, RunnerOptions, Secrets, forget, read_spool, spawn_job,
};
use hodei_core::ids::{Attempt, JobId};
use hodei_core::job::Outcome;
use hodei_core::spec::{Command, JobSpec};
use hodei_core::wire::{Chunk, Stream};
use tokio::sync::mpsc;

mod common;
use common::{
    DEADLINE, assert_spawn_failed, check_events, collect, options, scratch, stream_bytes,
};

fn check(kinds: &[RunEventKind]) -> (Outcome, Vec<Chunk>) {
    check_events(kinds, true)
}

fn script(body: &str) -> JobSpec {
    let mut spec = JobSpec::exec("unused", &[]);
    spec.command = Command::Script {
        body: body.to_owned(),
    };
    spec
}

fn job(seq: u64) -> JobId {
    JobId::new(0, 1, seq)
}

/// Runs a spec to completion and returns its events.
async fn run(opts: &Arc<RunnerOptions>, id: JobId, spec: JobSpec) -> Vec<RunEventKind> {
    let (tx, mut rx) = mpsc::channel(16);
    let _handle = spawn_job(
        id,
        Attempt(1),
        spec,
        Secrets::default(),
        Arc::clone(opts),
        tx,
    );
    collect(&mut rx).await
}

/// Flattens chunks to one (stream, byte) per output byte.
fn tagged(chunks: &[Chunk]) -> Vec<(Stream, u8)> {
    chunks
        .iter()
        .flat_map(|c| c.data.iter().map(move |b| (c.stream, *b)))
        .collect()
}

/// Polls `cond` until it holds, failing at the deadline.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits for a pid written by a job to a file.
async fn read_pid(path: &Path) -> i32 {
    let mut pid = None;
    until("the pid file", || {
        pid = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        pid.is_some()
    })
    .await;
    pid.unwrap()
}

/// Whether a process still runs: present in /proc and not a zombie (a killed orphan may sit
/// as a zombie until init reaps it; it runs nothing).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            !matches!(state, Some('Z' | 'X'))
        }
        Err(_) => false,
    }
}

/// Whether a process sleeps in a pipe write (the kernel calls the wait channel `pipe_write`
/// or `anon_pipe_write`). A kernel that hides wait channels shows "0": then only liveness can
/// be checked.
fn blocked_writing(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/wchan")) {
        Ok(wchan) if wchan.trim() == "0" => alive(pid),
        Ok(wchan) => wchan.contains("pipe_write"),
        Err(_) => false,
    }
}

#[tokio::test]
async fn captures_stdout_and_stderr_exactly() {
    let root = scratch("streams");
    let opts = options(&root);
    let spec = JobSpec::exec(
        "sh",
        &[
            "-c",
            "echo out1; echo err1 >&2; printf 'out2'; printf 'err2\\n' >&2",
        ],
    );
    let (outcome, chunks) = check(&run(&opts, job(1), spec).await);
    assert_eq!(outcome, Outcome::Exited(0));
    assert_eq!(stream_bytes(&chunks, Stream::Stdout), "out1\nout2");
    assert_eq!(stream_bytes(&chunks, Stream::Stderr), "err1\nerr2\n");
}

#[tokio::test]
async fn script_stops_at_first_failure() {
    let root = scratch("set-e");
    let opts = options(&root);
    let spec = script("echo before\nfalse\necho after\n");
    let (outcome, chunks) = check(&run(&opts, job(2), spec).await);
    assert_eq!(outcome, Outcome::Exited(1));
    assert_eq!(stream_bytes(&chunks, Stream::Stdout), "before\n");
    assert_eq!(stream_bytes(&chunks, Stream::Stderr), "");
}

#[tokio::test]
async fn env_and_missing_workdir_are_seen_by_the_process() {
    let root = scratch("env");
    let opts = options(&root);
    let dir = root.join("a/b/c");
    let mut spec = script("echo \"$HODEI_TEST_VAR\"\npwd -P");
    spec.env
        .push(("HODEI_TEST_VAR".into(), "hello world".into()));
    spec.workdir = Some(dir.to_str().unwrap().to_owned());
    let (outcome, chunks) = check(&run(&opts, job(3), spec).await);
    assert_eq!(outcome, Outcome::Exited(0));
    let canonical = dir.canonicalize().unwrap();
    assert_eq!(
        stream_bytes(&chunks, Stream::Stdout),
        format!("hello world\n{}\n", canonical.display())
    );
}

#[tokio::test]
async fn default_workdir_is_created_and_forgotten() {
    let root = scratch("default-workdir");
    let opts = options(&root);
    let (outcome, chunks) = check(&run(&opts, job(4), JobSpec::exec("pwd", &["-P"])).await);
    assert_eq!(outcome, Outcome::Exited(0));
    let jobs_dir = opts.work_root.join("jobs").canonicalize().unwrap();
    let ran_in = jobs_dir.join(".run-1");
    assert_eq!(
        stream_bytes(&chunks, Stream::Stdout),
        format!("{}\n", ran_in.display())
    );
    let spool = opts
        .work_root
        .join("spool")
        .join(format!("{}-1.out", job(4)));
    assert!(spool.exists());
    forget(&opts, job(4), Attempt(1), AttemptFiles::ALL);
    assert!(!spool.exists());
    assert_eq!(
        names(&jobs_dir),
        [".run-1"],
        "an empty default workdir goes back to the pool, not kept under the job's name"
    );
}

/// Names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A default workdir the job left empty goes back to the pool and is given, still empty, to
/// the next attempt, in place; one the job left files in is kept under the job's name and
/// never given out again; leftovers of a crashed agent are cleared at start.
#[tokio::test]
async fn default_workdirs_are_pooled_empty_and_kept_when_used() {
    let root = scratch("pooled-workdir");
    let opts = options(&root);
    let jobs_dir = opts.work_root.join("jobs");
    // The first attempt leaves its directory empty: it stays in the pool.
    let (outcome, _) = check(&run(&opts, job(40), JobSpec::exec("true", &[])).await);
    assert_eq!(outcome, Outcome::Exited(0));
    forget(&opts, job(40), Attempt(1), AttemptFiles::ALL);
    assert_eq!(
        names(&jobs_dir),
        [".run-1"],
        "the emptied directory is pooled"
    );
    // The next attempt gets it, empty, and leaves a file in it.
    let (outcome, chunks) = check(
        &run(
            &opts,
            job(41),
            script("pwd -P; ls -A | wc -l; echo kept > mine.txt"),
        )
        .await,
    );
    assert_eq!(outcome, Outcome::Exited(0));
    let pooled = jobs_dir.join(".run-1").canonicalize().unwrap();
    assert_eq!(
        stream_bytes(&chunks, Stream::Stdout),
        format!("{}\n0\n", pooled.display())
    );
    forget(&opts, job(41), Attempt(1), AttemptFiles::ALL);
    let kept = jobs_dir.join(format!("{}-1", job(41)));
    assert_eq!(
        std::fs::read_to_string(kept.join("mine.txt")).unwrap(),
        "kept\n",
        "a workdir holding files is kept under the job's name"
    );
    assert_eq!(names(&jobs_dir), [format!("{}-1", job(41))]);
    // The pool makes the directory again for the next attempt, empty.
    let (outcome, chunks) = check(&run(&opts, job(42), script("ls -A | wc -l")).await);
    assert_eq!(outcome, Outcome::Exited(0));
    assert_eq!(stream_bytes(&chunks, Stream::Stdout), "0\n");
    forget(&opts, job(42), Attempt(1), AttemptFiles::ALL);
    // A job that turns its directory into something the agent cannot list: kept, never
    // pooled; the next attempt gets a fresh directory.
    let spoil = script(r#"d=$(pwd); cd ..; rmdir "$d"; echo spoiled > "$d""#);
    let (outcome, _) = check(&run(&opts, job(43), spoil).await);
    assert_eq!(outcome, Outcome::Exited(0));
    forget(&opts, job(43), Attempt(1), AttemptFiles::ALL);
    assert_eq!(
        std::fs::read_to_string(jobs_dir.join(format!("{}-1", job(43)))).unwrap(),
        "spoiled\n"
    );
    let (outcome, chunks) = check(&run(&opts, job(44), script("ls -A | wc -l")).await);
    assert_eq!(outcome, Outcome::Exited(0));
    assert_eq!(stream_bytes(&chunks, Stream::Stdout), "0\n");
    // At start: an empty leftover is removed, one holding files is set aside, never pooled.
    std::fs::create_dir_all(jobs_dir.join(".run-7")).unwrap();
    std::fs::write(jobs_dir.join(".run-1").join("stray"), "x").unwrap();
    opts.workdirs.clean_leftovers(&jobs_dir);
    let left = names(&jobs_dir);
    assert_eq!(left.len(), 3, "{left:?}");
    assert_eq!(left[0], format!("{}-1", job(41)));
    assert_eq!(left[1], format!("{}-1", job(43)));
    assert!(
        left[2].starts_with("left-") && left[2].ends_with("-run-1"),
        "{left:?}"
    );
}

#[tokio::test]
async fn timeout_kills_the_whole_group() {
    let root = scratch("timeout");
    let opts = options(&root);
    let pidfile = root.join("sleep.pid");
    let mut spec = script(&format!(
        "sleep 300 &\necho $! > '{}'\nwait\n",
        pidfile.display()
    ));
    spec.timeout_ms = Some(300);
    let (outcome, _) = check(&run(&opts, job(5), spec).await);
    assert_eq!(outcome, Outcome::TimedOut);
    let pid = read_pid(&pidfile).await;
    until("the background sleep to die", || !alive(pid)).await;
}

#[tokio::test]
async fn timeout_escalates_to_sigkill_after_the_grace() {
    let root = scratch("grace");
    let opts = Arc::new(RunnerOptions {
        kill_grace: Duration::from_millis(200),
        ..(*options(&root)).clone()
    });
    let pidfile = root.join("sleep.pid");
    // SIGTERM is ignored by the script and, inherited, by the sleep: only SIGKILL ends them.
    let mut spec = script(&format!(
        "trap '' TERM\nsleep 300 &\necho $! > '{}'\nwait\n",
        pidfile.display()
    ));
    spec.timeout_ms = Some(200);
    let (outcome, _) = check(&run(&opts, job(6), spec).await);
    assert_eq!(outcome, Outcome::TimedOut);
    let pid = read_pid(&pidfile).await;
    until("the background sleep to die", || !alive(pid)).await;
}

#[tokio::test]
async fn cancel_kills_the_whole_group() {
    let root = scratch("cancel");
    let opts = options(&root);
    let pidfile = root.join("sleep.pid");
    let spec = script(&format!(
        "sleep 300 &\necho $! > '{}'\nwait\n",
        pidfile.display()
    ));
    let (tx, mut rx) = mpsc::channel(16);
    let handle = spawn_job(
        job(7),
        Attempt(1),
        spec,
        Secrets::default(),
        Arc::clone(&opts),
        tx,
    );
    let pid = read_pid(&pidfile).await;
    assert!(alive(pid));
    handle.cancel();
    handle.clone().cancel(); // idempotent
    let (outcome, _) = check(&collect(&mut rx).await);
    assert_eq!(outcome, Outcome::Cancelled);
    until("the background sleep to die", || !alive(pid)).await;
}

#[tokio::test]
async fn exit_code_and_signal_are_reported() {
    let root = scratch("exit");
    let opts = options(&root);
    let (outcome, _) = check(&run(&opts, job(8), JobSpec::exec("sh", &["-c", "exit 3"])).await);
    assert_eq!(outcome, Outcome::Exited(3));
    let (outcome, _) =
        check(&run(&opts, job(9), JobSpec::exec("sh", &["-c", "kill -KILL $$"])).await);
    assert_eq!(outcome, Outcome::Signaled(9));
}

#[tokio::test]
async fn missing_program_fails_to_spawn_without_started() {
    let root = scratch("missing");
    let opts = options(&root);
    let kinds = run(
        &opts,
        job(10),
        JobSpec::exec("hodei-no-such-program-xyz", &[]),
    )
    .await;
    assert_eq!(kinds.len(), 1, "{kinds:?}");
    let RunEventKind::Finished {
        outcome: Outcome::SpawnFailed(msg),
        ..
    } = &kinds[0]
    else {
        panic!("expected SpawnFailed, got {kinds:?}");
    };
    assert!(msg.contains("hodei-no-such-program-xyz"), "{msg}");
}

#[tokio::test]
async fn uncreatable_workdir_fails_to_spawn() {
    let root = scratch("bad-workdir");
    let opts = options(&root);
    let file = root.join("a-file");
    std::fs::write(&file, b"").unwrap();
    let mut spec = JobSpec::exec("true", &[]);
    spec.workdir = Some(file.join("sub").to_str().unwrap().to_owned());
    let kinds = run(&opts, job(11), spec).await;
    assert_spawn_failed(&kinds);
}

#[tokio::test]
async fn backpressure_delivers_every_byte_in_order() {
    let root = scratch("backpressure");
    let opts = Arc::new(RunnerOptions {
        batch_bytes: 8 * 1024,
        ..(*options(&root)).clone()
    });
    let pidfile = root.join("job.pid");
    // ~4.3 MiB of numbered lines: far more than the pipes, one batch and one channel slot
    // hold. `exec` makes the writer the process whose pid we know.
    let spec = script(&format!(
        "echo $$ > '{}'\nexec seq 1 600000\n",
        pidfile.display()
    ));
    let expected: String = (1..=600_000).map(|i| format!("{i}\n")).collect();
    let (tx, mut rx) = mpsc::channel(1);
    let _handle = spawn_job(
        job(12),
        Attempt(1),
        spec,
        Secrets::default(),
        Arc::clone(&opts),
        tx,
    );
    let pid = read_pid(&pidfile).await;
    // Nobody reads events yet: the writer must end up blocked on its full pipe, alive.
    until("the job to block writing its output", || {
        blocked_writing(pid)
    })
    .await;
    assert!(
        alive(pid),
        "the job finished although nobody consumed its output"
    );
    let spooled: usize = read_spool(&opts, job(12), Attempt(1), 0)
        .unwrap()
        .iter()
        .map(|c| c.data.len())
        .sum();
    assert!(
        spooled < expected.len() / 10,
        "the runner kept reading: {spooled} bytes spooled"
    );
    let kinds = collect(&mut rx).await;
    let (outcome, chunks) = check(&kinds);
    assert_eq!(outcome, Outcome::Exited(0));
    for kind in &kinds {
        if let RunEventKind::Output { chunks, .. } = kind {
            let len: usize = chunks.iter().map(|c| c.data.len()).sum();
            assert!(len <= 8 * 1024, "batch of {len} bytes exceeds batch_bytes");
        }
    }
    assert_eq!(stream_bytes(&chunks, Stream::Stderr), "");
    let out = stream_bytes(&chunks, Stream::Stdout);
    assert_eq!(out.len(), expected.len());
    assert!(out == expected, "output differs from what the job wrote");
}

#[tokio::test]
async fn read_spool_replays_from_any_offset() {
    let root = scratch("spool");
    let opts = Arc::new(RunnerOptions {
        batch_bytes: 7,
        ..(*options(&root)).clone()
    });
    let spec =
        script("printf 'hello '\nprintf 'brave new' >&2\nprintf ' world!\\n'\nprintf 'bye' >&2\n");
    let (outcome, chunks) = check(&run(&opts, job(13), spec).await);
    assert_eq!(outcome, Outcome::Exited(0));
    let all = tagged(&chunks);
    assert_eq!(all.len(), "hello brave new world!\nbye".len());
    for from in 0..=all.len() {
        let tail = read_spool(&opts, job(13), Attempt(1), from as u64).unwrap();
        assert_eq!(tagged(&tail), all[from..], "replay from offset {from}");
    }
    assert!(read_spool(&opts, job(13), Attempt(1), all.len() as u64 + 1).is_err());
    forget(&opts, job(13), Attempt(1), AttemptFiles::ALL);
    assert!(
        read_spool(&opts, job(13), Attempt(1), 0)
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn escaped_daemon_does_not_hang_the_job() {
    let root = scratch("escaped");
    let opts = options(&root);
    let pidfile = root.join("daemon.pid");
    // setsid leaves the job's group but keeps the job's stdout open.
    let spec = script(&format!(
        "setsid sleep 300 &\necho $! > '{}'\necho done\n",
        pidfile.display()
    ));
    let kinds = run(&opts, job(14), spec).await;
    let pid = read_pid(&pidfile).await;
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
    let (outcome, chunks) = check(&kinds);
    assert_eq!(outcome, Outcome::Exited(0));
    assert_eq!(stream_bytes(&chunks, Stream::Stdout), "done\n");
}

#[tokio::test]
async fn keeps_running_when_the_receiver_is_gone() {
    let root = scratch("receiver-gone");
    let opts = options(&root);
    let donefile = root.join("done");
    let spec = script(&format!(
        "seq 1 20000\necho ok > '{}'\n",
        donefile.display()
    ));
    let (tx, rx) = mpsc::channel(1);
    drop(rx);
    let _handle = spawn_job(
        job(15),
        Attempt(1),
        spec,
        Secrets::default(),
        Arc::clone(&opts),
        tx,
    );
    until("the job to complete", || donefile.exists()).await;
    let expected: String = (1..=20_000).map(|i| format!("{i}\n")).collect();
    let mut spooled = Vec::new();
    until("the spool to hold all output", || {
        spooled = read_spool(&opts, job(15), Attempt(1), 0).unwrap();
        spooled.iter().map(|c| c.data.len()).sum::<usize>() == expected.len()
    })
    .await;
    assert_eq!(stream_bytes(&spooled, Stream::Stdout), expected);
}

#[tokio::test]
async fn noop_mode_spawns_nothing() {
    let root = scratch("noop");
    let opts = Arc::new(RunnerOptions {
        noop: true,
        ..(*options(&root)).clone()
    });
    let kinds = run(
        &opts,
        job(16),
        JobSpec::exec("hodei-no-such-program-xyz", &[]),
    )
    .await;
    assert!(
        matches!(
            kinds.as_slice(),
            [
                RunEventKind::Started { .. },
                RunEventKind::Finished {
                    outcome: Outcome::Exited(0),
                    ..
                }
            ]
        ),
        "{kinds:?}"
    );
    assert!(!opts.work_root.exists(), "noop mode must not create files");
}

/// With a slot gate (prefetch), an attempt that finds the only slot taken waits for it,
/// says so once it has waited a while (`Queued`), and starts only after the running one
/// ended; one cancelled while it waits ends `Cancelled` without ever starting.
#[tokio::test]
async fn a_gated_attempt_waits_for_the_slot_and_can_be_cancelled_while_queued() {
    let root = scratch("slot-gate");
    let opts = Arc::new(RunnerOptions {
        slots: Some(Arc::new(tokio::sync::Semaphore::new(1))),
        ..(*options(&root)).clone()
    });
    let start = |id: JobId, spec: JobSpec| {
        let (tx, rx) = mpsc::channel(16);
        let h = spawn_job(
            id,
            Attempt(1),
            spec,
            Secrets::default(),
            Arc::clone(&opts),
            tx,
        );
        (h, rx)
    };
    let (_busy, mut busy_rx) = start(job(50), JobSpec::exec("sleep", &["0.8"]));
    let (_next, mut next_rx) = start(job(51), JobSpec::exec("true", &[]));
    let (queued, mut cancelled_rx) = start(job(52), JobSpec::exec("true", &[]));
    // The third waits behind the second: cancel it once it has said it is queued.
    let first = tokio::time::timeout(DEADLINE, cancelled_rx.recv())
        .await
        .unwrap();
    assert_eq!(first.map(|e| e.kind), Some(RunEventKind::Queued));
    queued.cancel();
    let rest = collect(&mut cancelled_rx).await;
    assert!(
        matches!(
            rest.as_slice(),
            [RunEventKind::Finished {
                outcome: Outcome::Cancelled,
                ..
            }]
        ),
        "{rest:?}"
    );
    let busy = collect(&mut busy_rx).await;
    let Some(RunEventKind::Finished { at: busy_end, .. }) = busy.last() else {
        panic!("{busy:?}")
    };
    let next = collect(&mut next_rx).await;
    assert_eq!(next.first(), Some(&RunEventKind::Queued), "{next:?}");
    let (outcome, _) = check(&next[1..]);
    assert_eq!(outcome, Outcome::Exited(0));
    let Some(RunEventKind::Started { at: next_start }) = next.get(1) else {
        panic!("{next:?}")
    };
    assert!(
        next_start >= busy_end,
        "one slot: started before the first ended"
    );
}

/// `kill` (the lease's) SIGKILLs the whole group at once: a job that ignores SIGTERM, and
/// its background child, die within a second, though the SIGTERM grace is a minute; the
/// attempt ends `Cancelled`.
#[tokio::test]
async fn kill_sigkills_the_whole_group_at_once() {
    let root = scratch("kill-now");
    let opts = Arc::new(RunnerOptions {
        kill_grace: Duration::from_secs(60),
        ..(*options(&root)).clone()
    });
    let pidfile = root.join("sleep.pid");
    let spec = script(&format!(
        "trap '' TERM\nsleep 300 &\necho $! > '{}'\nwait\n",
        pidfile.display()
    ));
    let (tx, mut rx) = mpsc::channel(16);
    let handle = spawn_job(
        job(60),
        Attempt(1),
        spec,
        Secrets::default(),
        Arc::clone(&opts),
        tx,
    );
    let pid = read_pid(&pidfile).await;
    assert!(alive(pid));
    let killed = Instant::now();
    handle.kill();
    handle.clone().kill(); // idempotent
    let end = killed + Duration::from_secs(1);
    while alive(pid) {
        assert!(
            Instant::now() < end,
            "the group outlived its SIGKILL by a second"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (outcome, _) = check(&collect(&mut rx).await);
    assert_eq!(outcome, Outcome::Cancelled);
}

/// A job whose main process ended on its own just before `kill` keeps its own result: the
/// agent keeps the results of jobs that were over before the lease ran out. The test holds
/// the runtime's only thread while the process exits, so the kill lands before the reap.
#[tokio::test]
async fn kill_after_an_unreaped_exit_keeps_the_exit_code() {
    let root = scratch("kill-late");
    let opts = options(&root);
    let pidfile = root.join("leader.pid");
    let go = root.join("go");
    let spec = script(&format!(
        "echo $$ > '{}'\nwhile [ ! -e '{}' ]; do sleep 0.01; done\nexit 7\n",
        pidfile.display(),
        go.display()
    ));
    let (tx, mut rx) = mpsc::channel(16);
    let handle = spawn_job(
        job(61),
        Attempt(1),
        spec,
        Secrets::default(),
        Arc::clone(&opts),
        tx,
    );
    let pid = read_pid(&pidfile).await;
    std::fs::write(&go, "").unwrap();
    // Synchronously, so the supervisor cannot reap it meanwhile: wait for the zombie.
    let end = Instant::now() + DEADLINE;
    while alive(pid) {
        assert!(Instant::now() < end, "the job did not exit");
        std::thread::sleep(Duration::from_millis(5));
    }
    handle.kill();
    let (outcome, _) = check(&collect(&mut rx).await);
    assert_eq!(outcome, Outcome::Exited(7));
}
