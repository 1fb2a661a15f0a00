//! Shared by the agent's real-process tests: scratch directories and runner options.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hodei_agent::runner::{RunEvent, RunEventKind, RunnerOptions};
use hodei_core::job::Outcome;
use hodei_core::wire::{Chunk, Stream};
use tokio::sync::mpsc;

/// Generous bound for anything that should take milliseconds on an idle machine.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A fresh directory under the system temp dir, unique per test, removed when the test
/// passes (kept for a look when it fails).
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub fn scratch(name: &str) -> Scratch {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "hodei-agent-test-{}-{name}-{n}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

pub fn options(root: &Path) -> Arc<RunnerOptions> {
    Arc::new(RunnerOptions {
        work_root: root.join("work"),
        ..RunnerOptions::default()
    })
}

/// Receives every event of one attempt up to and including `Finished`.
pub async fn collect(rx: &mut mpsc::Receiver<RunEvent>) -> Vec<RunEventKind> {
    let mut kinds = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while let Some(ev) = rx.recv().await {
            let last = matches!(ev.kind, RunEventKind::Finished { .. });
            kinds.push(ev.kind);
            if last {
                break;
            }
        }
    })
    .await
    .expect("job did not finish in time");
    kinds
}

pub fn stream_bytes(chunks: &[Chunk], stream: Stream) -> String {
    let bytes: Vec<u8> = chunks
        .iter()
        .filter(|c| c.stream == stream)
        .flat_map(|c| c.data.clone())
        .collect();
    String::from_utf8(bytes).unwrap()
}

/// Checks the event sequence (Started, contiguous Outputs, Finished last) and returns the
/// outcome and the output. With `non_empty_batches`, no Output batch may be empty.
pub fn check_events(kinds: &[RunEventKind], non_empty_batches: bool) -> (Outcome, Vec<Chunk>) {
    assert!(
        matches!(kinds.first(), Some(RunEventKind::Started { .. })),
        "{kinds:?}"
    );
    let mut expected_offset = 0u64;
    let mut chunks = Vec::new();
    for kind in &kinds[1..kinds.len() - 1] {
        let RunEventKind::Output {
            offset,
            chunks: batch,
        } = kind
        else {
            panic!("unexpected event in the middle: {kind:?}");
        };
        assert_eq!(*offset, expected_offset, "offsets must be contiguous");
        assert!(!non_empty_batches || !batch.is_empty());
        for c in batch {
            assert!(!c.data.is_empty());
            expected_offset += c.data.len() as u64;
            chunks.push(c.clone());
        }
    }
    let Some(RunEventKind::Finished { outcome, .. }) = kinds.last() else {
        panic!("last event is not Finished: {kinds:?}");
    };
    (outcome.clone(), chunks)
}

/// The attempt ended before anything ran: its only event is `Finished` with `SpawnFailed`.
pub fn assert_spawn_failed(kinds: &[RunEventKind]) {
    assert!(
        matches!(
            kinds,
            [RunEventKind::Finished {
                outcome: Outcome::SpawnFailed(_),
                ..
            }]
        ),
        "{kinds:?}"
    );
}
