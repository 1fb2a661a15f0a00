//! A process's resident set size, once ([`rss_mib`]) or sampled over time ([`RssSampler`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;

/// Resident set size of a process, in MiB (from /proc).
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Samples a process's RSS on its own thread, so that the samples keep their spacing
/// however busy the scenario's thread is. The pid can change (a restarted server).
pub struct RssSampler {
    pid: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    t0: Instant,
    thread: Option<std::thread::JoinHandle<Vec<(f64, f64)>>>,
}

impl RssSampler {
    pub fn start(pid: u32, every: Duration) -> Result<Self> {
        let pid = Arc::new(AtomicU32::new(pid));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (Arc::clone(&pid), Arc::clone(&stop));
        let t0 = Instant::now();
        let thread = std::thread::Builder::new()
            .name("rss-sampler".into())
            .spawn(move || {
                let mut out = Vec::new();
                // NaN while the process is gone (between a kill and its restart): a gap.
                let sample = || {
                    let mib = rss_mib(p.load(Ordering::Relaxed)).unwrap_or(f64::NAN);
                    (t0.elapsed().as_secs_f64(), mib)
                };
                while !s.load(Ordering::Relaxed) {
                    out.push(sample());
                    std::thread::sleep(every);
                }
                // One at the stop, so the series ends where the scenario's figures are read.
                out.push(sample());
                out
            })?;
        Ok(Self {
            pid,
            stop,
            t0,
            thread: Some(thread),
        })
    }

    /// Time since the first sample, on the samples' clock.
    pub fn elapsed(&self) -> Duration {
        self.t0.elapsed()
    }

    pub fn set_pid(&self, pid: u32) {
        self.pid.store(pid, Ordering::Relaxed);
    }

    /// (seconds since the start, MiB or NaN) samples.
    pub fn finish(mut self) -> Vec<(f64, f64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        // Unfinished (an error path): let the thread end by itself.
        self.stop.store(true, Ordering::Relaxed);
    }
}
