//! Soak: months of uptime in minutes. A steady mixed load (short jobs, jobs with output,
//! failures) against a server with `--retain-finished 1m`, sampling the server's RSS
//! (`VmRSS`), its data dir's size (`du`) and its open files (`/proc/PID/fd`) every 30 s;
//! they must stay flat once retention runs. `#[ignore]`d: run it explicitly, for
//! `HODEI_SOAK_MINUTES` (default 30):
//!
//! ```text
//! HODEI_SOAK_MINUTES=30 cargo nextest run --release --test soak --run-ignored only \
//!     --no-capture
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Scratch, Server, wait_for};

/// The retention window of the run.
const WINDOW: Duration = Duration::from_secs(60);
/// How often a sample is taken.
const EVERY: Duration = Duration::from_secs(30);
/// Jobs submitted per second (each a CLI process: a QUIC handshake and a request).
const RATE: u32 = 10;

#[derive(Clone, Copy, Debug)]
struct Sample {
    at_s: u64,
    rss_kib: u64,
    data_kib: u64,
    fds: u64,
    jobs: u64,
    submitted: u64,
}

fn du_kib(dir: &std::path::Path) -> u64 {
    let out = std::process::Command::new("du")
        .arg("-sk")
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn fds(pid: i32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// The i-th job of the mix: mostly short ones, one in three with ~100 KiB of output, one
/// in six failing.
fn job(i: u64) -> Vec<String> {
    let script = match i % 6 {
        0 | 3 => "seq 1 20000",
        5 => "echo failing >&2; exit 3",
        _ => "true",
    };
    ["--retries", "0", "--", "sh", "-c", script]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}

/// One figure of a sample.
type Measure = fn(&Sample) -> u64;

/// The largest of `f` over `samples`.
fn max_of(samples: &[Sample], f: impl Fn(&Sample) -> u64) -> u64 {
    samples.iter().map(f).max().unwrap_or(0)
}

#[test]
#[ignore = "a soak of HODEI_SOAK_MINUTES (default 30) minutes; run it explicitly"]
fn a_steady_load_with_retention_stays_flat() {
    let minutes: u64 = std::env::var("HODEI_SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(30);
    let scratch = Scratch::new("soak");
    let s = Server::start_with(&scratch, 2, &["--retain-finished", "1m"]);
    let _a = s.agent(&scratch, "a", 4, &[]);
    let _b = s.agent(&scratch, "b", 4, &[]);
    s.wait_workers(2);
    let pid = s.proc.as_ref().unwrap().pid();
    let start = Instant::now();
    let end = start + Duration::from_secs(minutes * 60);
    let mut samples: Vec<Sample> = Vec::new();
    let mut submitted = 0u64;
    let mut next_sample = start;
    let pace = Duration::from_secs(1) / RATE;
    let mut next_submit = start;
    while Instant::now() < end {
        let now = Instant::now();
        if now >= next_sample {
            let jobs = s
                .json(&["job", "list", "--json"])
                .as_array()
                .map_or(0, Vec::len);
            let sample = Sample {
                at_s: now.duration_since(start).as_secs(),
                rss_kib: common::rss_kib(pid),
                data_kib: du_kib(&s.data),
                fds: fds(pid),
                jobs: jobs as u64,
                submitted,
            };
            eprintln!("soak sample: {sample:?}");
            samples.push(sample);
            next_sample += EVERY;
        }
        if now >= next_submit {
            let args = job(submitted);
            let mut a = vec!["job", "submit"];
            a.extend(args.iter().map(String::as_str));
            let out = s.cli(&a);
            assert!(
                out.status.success(),
                "submit refused: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            submitted += 1;
            next_submit += pace;
            // A slow submit does not make a burst afterwards.
            next_submit = next_submit.max(Instant::now() - pace);
        } else {
            std::thread::sleep(next_submit.min(next_sample).saturating_duration_since(now));
        }
    }
    // The load ends: the server still answers, and what is left runs to its end.
    wait_for("the last jobs to end", Duration::from_secs(60), || {
        let v = s.json(&["job", "list", "--json"]);
        v.as_array()?
            .iter()
            .all(|j| ["succeeded", "failed"].iter().any(|st| j["state"] == *st))
            .then_some(())
    });
    println!("t_s,rss_kib,data_kib,fds,jobs_held,submitted");
    for x in &samples {
        println!(
            "{},{},{},{},{},{}",
            x.at_s, x.rss_kib, x.data_kib, x.fds, x.jobs, x.submitted
        );
    }
    let log = s.log_text();
    println!(
        "retention passes that deleted: {}; keyspace compactions: {}",
        log.matches("retention pass").count(),
        log.matches("keyspace compacted").count()
    );
    assert!(s.ok(&["audit", "verify"]).contains("intact"));
    // Flat: once two windows and a sample have passed (retention has deleted for a whole
    // window), the last third of the run stays within 1.5 times the value then.
    let settled = WINDOW.as_secs() * 2 + EVERY.as_secs();
    let Some(base) = samples.iter().find(|x| x.at_s >= settled).copied() else {
        panic!("the run is too short to settle: {minutes} min");
    };
    let last = &samples[samples.len() * 2 / 3..];
    let checks: [(&str, Measure); 4] = [
        ("RSS (KiB)", |x| x.rss_kib),
        ("data dir (KiB)", |x| x.data_kib),
        ("open files", |x| x.fds),
        ("jobs held", |x| x.jobs),
    ];
    let mut grew = Vec::new();
    for (what, f) in checks {
        let (b, m) = (f(&base), max_of(last, f));
        if m * 2 > b * 3 {
            grew.push(format!(
                "{what}: {b} at {} s, up to {m} in the last third",
                base.at_s
            ));
        }
    }
    assert!(grew.is_empty(), "not flat: {grew:?}");
}
