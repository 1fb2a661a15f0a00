//! Replies larger than a frame arrive whole, in pages sized by bytes: a listing of large
//! jobs, the output of a job larger than a frame, and the audit log are all read back
//! complete, and a listing never ends early looking complete.

mod common;

use common::{Scratch, Server};
use hodei_core::frame::MAX_FRAME;

/// A listing of jobs whose records together exceed a frame many times over comes back
/// whole (it used to be one frame per 500 jobs: over the limit, it was dropped and `job
/// list` printed nothing and exited 0).
#[test]
fn a_listing_larger_than_a_frame_arrives_whole() {
    let scratch = Scratch::new("paging-list");
    let server = Server::start(&scratch, 1);
    // No agent: the jobs stay queued. Each script is 1 MiB, so 12 of them are 12 MiB.
    let script = scratch.path("big.sh");
    let body = format!("true\n#{}\n", "x".repeat((1 << 20) - 16));
    std::fs::write(&script, body).expect("write the script");
    let script = script.to_string_lossy().into_owned();
    let n = 12;
    assert!(n << 20 > MAX_FRAME);
    let mut ids: Vec<String> = (0..n)
        .map(|_| server.submit(&["--script", &script]))
        .collect();
    let listed = server.json(&["job", "list", "--json"]);
    let mut got: Vec<String> = listed
        .as_array()
        .expect("a JSON array")
        .iter()
        .filter_map(|j| j["id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    got.sort();
    assert_eq!(got, ids);
}

/// Output larger than a frame is read back whole and in order by `job logs`, streamed from
/// the store in pages.
#[test]
fn output_larger_than_a_frame_reads_back_whole() {
    let scratch = Scratch::new("paging-logs");
    let server = Server::start(&scratch, 1);
    let _agent = server.agent(&scratch, "a", 1, &[]);
    server.wait_workers(1);
    // 200,000 numbered lines of 64 bytes: 12.8 MB.
    let lines = 200_000;
    let id = server.submit(&[
        "--",
        "sh",
        "-c",
        &format!("i=0; while [ $i -lt {lines} ]; do printf '%063d\\n' $i; i=$((i+1)); done"),
    ]);
    server.wait_job(&id, "the job to succeed", |j| j["state"] == "succeeded");
    let out = server.ok(&["job", "logs", &id]);
    assert!(out.len() > MAX_FRAME, "{} bytes", out.len());
    let mut count = 0;
    for (i, line) in out.lines().enumerate() {
        assert_eq!(line, format!("{i:063}"), "line {i}");
        count += 1;
    }
    assert_eq!(count, lines);
}
