//! The output window: an attempt spools at most `output_window` bytes beyond what the server
//! acknowledged; past it the runner stops reading the job's pipes, so the job blocks on write
//! (its output is never dropped) until acknowledgements move the window.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use hodei_agent::runner::{RunEventKind, RunnerOptions, Secrets, read_spool, spawn_job};
use hodei_core::ids::{Attempt, JobId};
use hodei_core::job::Outcome;
use hodei_core::spec::{Command, JobSpec};
use hodei_core::wire::Chunk;
use tokio::sync::mpsc;

mod common;
use common::{DEADLINE, options, scratch};

const WINDOW: u64 = 1 << 20;
const BATCH: usize = 64 * 1024;

/// Whether a process sleeps in a pipe write (a kernel that hides wait channels shows "0").
fn blocked_writing(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/wchan")) {
        Ok(wchan) if wchan.trim() == "0" => std::path::Path::new(&format!("/proc/{pid}")).exists(),
        Ok(wchan) => wchan.contains("pipe_write"),
        Err(_) => false,
    }
}

/// What arrived so far: output bytes in order, and the outcome once finished.
#[derive(Default)]
struct Seen {
    bytes: Vec<u8>,
    finished: Option<Outcome>,
}

impl Seen {
    /// Takes every event already queued.
    fn take(&mut self, rx: &mut mpsc::Receiver<hodei_agent::runner::RunEvent>) {
        while let Ok(ev) = rx.try_recv() {
            match ev.kind {
                RunEventKind::Output { offset, chunks } => {
                    assert_eq!(offset, self.bytes.len() as u64, "offsets are contiguous");
                    for Chunk { data, .. } in chunks {
                        self.bytes.extend(data);
                    }
                }
                RunEventKind::Finished { outcome, .. } => self.finished = Some(outcome),
                RunEventKind::Started { .. } | RunEventKind::Queued => {}
            }
        }
    }
}

/// A job printing about 6.9 MB with nothing acknowledged stops after one window (plus at
/// most a batch and a read): blocked on its pipe, alive, its spool no longer. Acknowledging
/// what arrived lets it go on, and every byte arrives in order. (Without the window the job
/// prints everything and ends at once.)
#[tokio::test]
async fn unacknowledged_output_blocks_the_job_and_none_is_lost() {
    let root = scratch("window");
    let opts = Arc::new(RunnerOptions {
        batch_bytes: BATCH,
        output_window: WINDOW,
        ..(*options(&root)).clone()
    });
    let pidfile = root.join("job.pid");
    let mut spec = JobSpec::exec("unused", &[]);
    spec.command = Command::Script {
        body: format!("echo $$ > '{}'\nexec seq 1 1000000\n", pidfile.display()),
    };
    let expected: String = (1..=1_000_000).map(|i| format!("{i}\n")).collect();
    let (id, attempt) = (JobId::new(0, 1, 1), Attempt(1));
    // Room for every event: only the window may stop the runner.
    let (tx, mut rx) = mpsc::channel(4096);
    let handle = spawn_job(id, attempt, spec, Secrets::default(), Arc::clone(&opts), tx);
    let end = Instant::now() + DEADLINE;
    let mut seen = Seen::default();
    let mut pid = None;
    // Until the job is held by the window (or ends, which it must not).
    loop {
        assert!(Instant::now() < end, "the job neither ended nor blocked");
        seen.take(&mut rx);
        pid = pid.or_else(|| {
            std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
        });
        if seen.finished.is_some() {
            break;
        }
        if seen.bytes.len() as u64 >= WINDOW && pid.is_some_and(blocked_writing) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        seen.finished.is_none(),
        "the job ended with nothing acknowledged: {} bytes read",
        seen.bytes.len()
    );
    let bound = WINDOW + (BATCH + 16 * 1024) as u64;
    seen.take(&mut rx);
    assert!(
        seen.bytes.len() as u64 <= bound,
        "{} bytes read past a window of {WINDOW}",
        seen.bytes.len()
    );
    let spooled: u64 = read_spool(&opts, id, attempt, 0)
        .unwrap()
        .iter()
        .map(|c| c.data.len() as u64)
        .sum();
    assert!(spooled <= bound, "{spooled} bytes spooled past the window");
    // Acknowledge whatever arrived, as a server would once it is durable.
    while seen.finished.is_none() {
        assert!(Instant::now() < end, "the acknowledged job did not finish");
        handle.acked(seen.bytes.len() as u64);
        tokio::time::sleep(Duration::from_millis(2)).await;
        seen.take(&mut rx);
    }
    assert_eq!(seen.finished, Some(Outcome::Exited(0)));
    assert_eq!(seen.bytes.len(), expected.len(), "output length");
    assert!(seen.bytes == expected.as_bytes(), "output differs");
}

/// A job let go (`release`, as when its lease ran out) is no longer held by its window:
/// it reads on and ends.
#[tokio::test]
async fn a_released_job_is_not_held_by_its_window() {
    let root = scratch("window-release");
    let opts = Arc::new(RunnerOptions {
        output_window: 64 * 1024,
        ..(*options(&root)).clone()
    });
    let spec = JobSpec::exec("seq", &["1", "300000"]);
    let (tx, mut rx) = mpsc::channel(4096);
    let handle = spawn_job(
        JobId::new(0, 1, 2),
        Attempt(1),
        spec,
        Secrets::default(),
        opts,
        tx,
    );
    let end = Instant::now() + DEADLINE;
    let mut seen = Seen::default();
    while seen.bytes.len() < 64 * 1024 {
        assert!(Instant::now() < end, "no output");
        tokio::time::sleep(Duration::from_millis(5)).await;
        seen.take(&mut rx);
    }
    handle.release();
    while seen.finished.is_none() {
        assert!(Instant::now() < end, "the released job did not finish");
        tokio::time::sleep(Duration::from_millis(5)).await;
        seen.take(&mut rx);
    }
    assert_eq!(seen.finished, Some(Outcome::Exited(0)));
}
