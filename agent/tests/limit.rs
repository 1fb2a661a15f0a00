//! The output limit: past `max_output` the runner drops what the job prints, keeps draining
//! its pipes (the job is not blocked), and ends the output with one line saying how much
//! was cut.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use hodei_agent::runner::{Secrets, spawn_job};
use hodei_core::ids::{Attempt, JobId};
use hodei_core::job::Outcome;
use hodei_core::spec::JobSpec;
use hodei_core::wire::Stream;
use tokio::sync::mpsc;

mod common;
use common::{check_events, collect, options, scratch, stream_bytes};

/// 5 MiB printed with a 1 MiB limit (and a window smaller than what is printed, which a
/// job past its limit must not wait for): exactly 1 MiB kept, then the notice on stderr,
/// and the job's own exit code.
#[tokio::test]
async fn output_past_the_limit_is_dropped_and_counted() {
    let root = scratch("limit");
    let opts = Arc::new(hodei_agent::runner::RunnerOptions {
        output_window: 2 << 20,
        ..(*options(&root)).clone()
    });
    let mut spec = JobSpec::exec(
        "sh",
        &["-c", "head -c 5242880 /dev/zero | tr '\\0' a; exit 3"],
    );
    spec.max_output = Some(1 << 20);
    let (tx, mut rx) = mpsc::channel(4096);
    let _handle = spawn_job(
        JobId::new(0, 1, 1),
        Attempt(1),
        spec,
        Secrets::default(),
        opts,
        tx,
    );
    let kinds = collect(&mut rx).await;
    let (outcome, chunks) = check_events(&kinds, true);
    assert_eq!(outcome, Outcome::Exited(3));
    let out = stream_bytes(&chunks, Stream::Stdout);
    assert_eq!(out.len(), 1 << 20, "stdout kept");
    assert!(out.bytes().all(|b| b == b'a'));
    assert_eq!(
        stream_bytes(&chunks, Stream::Stderr),
        "[hodei: output cut after 1048576 bytes; 4194304 bytes dropped]\n"
    );
}
