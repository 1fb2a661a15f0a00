//! What the simulated agents, probes and the submitter count. Each fleet thread has its own
//! [`ThreadStats`] (atomics nobody else writes, so no cache line bounces between threads);
//! the main thread reads and sums them while the run goes on.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use hdrhistogram::Histogram;

/// Counters of one fleet thread (or of the submitter).
#[derive(Default)]
pub struct Counters {
    /// Connection attempts (handshakes started), retries and redirects included.
    pub connect_attempts: AtomicU64,
    /// Attempts that failed before a `Welcome` (handshake, stream, registration).
    pub connect_failures: AtomicU64,
    /// Agents that got a `Welcome` at least once.
    pub connected: AtomicU64,
    /// Agents welcomed and connected right now.
    pub live: AtomicU64,
    /// `Redirect`s followed.
    pub redirects: AtomicU64,
    /// `Refused` registrations.
    pub refused: AtomicU64,
    /// Welcomed connections that were lost before the stop.
    pub disconnects: AtomicU64,
    /// Heartbeats written to the QUIC stream successfully.
    pub heartbeats: AtomicU64,
    /// `Assign`s received.
    pub assigns: AtomicU64,
    /// `Finished` reports sent.
    pub finished_sent: AtomicU64,
    /// `FinishedAck`s received for a reported job.
    pub finished_acked: AtomicU64,
    /// `Cancel`s that stopped a running (sleeping) job.
    pub cancels: AtomicU64,
    /// `Abandon`s received.
    pub abandons: AtomicU64,
    /// `Drain`s received.
    pub drains: AtomicU64,
    /// Agents that said `Goodbye` at the stop and saw the server take it.
    pub goodbyes: AtomicU64,
    /// Submit requests sent.
    pub submitted: AtomicU64,
    /// Submit requests acknowledged (the job is durable).
    pub acked: AtomicU64,
    /// Submit requests that failed.
    pub submit_errors: AtomicU64,
    /// Submit ticks skipped because too many requests were in flight.
    pub submit_skipped: AtomicU64,
    /// Probe round trips completed.
    pub probes: AtomicU64,
    /// Probes that failed or got an unexpected answer.
    pub probe_errors: AtomicU64,
    /// Microseconds from the fleet's start to the last first-`Welcome`.
    pub last_welcome_us: AtomicU64,
    /// QUIC packets sent by the agents' connections (at the stop).
    pub quic_sent_packets: AtomicU64,
    /// QUIC packets the agents' connections declared lost (at the stop).
    pub quic_lost_packets: AtomicU64,
    /// Heartbeat interval the server asked for in `Welcome` (ms).
    pub server_heartbeat_ms: AtomicU64,
}

/// A plain copy of [`Counters`], summed over threads.
#[derive(Clone, Copy, Debug, Default)]
pub struct Snapshot {
    pub connect_attempts: u64,
    pub connect_failures: u64,
    pub connected: u64,
    pub live: u64,
    pub redirects: u64,
    pub refused: u64,
    pub disconnects: u64,
    pub heartbeats: u64,
    pub assigns: u64,
    pub finished_sent: u64,
    pub finished_acked: u64,
    pub cancels: u64,
    pub abandons: u64,
    pub drains: u64,
    pub goodbyes: u64,
    pub submitted: u64,
    pub acked: u64,
    pub submit_errors: u64,
    pub submit_skipped: u64,
    pub probes: u64,
    pub probe_errors: u64,
    pub last_welcome_us: u64,
    pub quic_sent_packets: u64,
    pub quic_lost_packets: u64,
    pub server_heartbeat_ms: u64,
}

macro_rules! snapshot {
    ($c:expr, $s:expr, sum: [$($f:ident),*], max: [$($m:ident),*]) => {{
        $( $s.$f += $c.$f.load(Relaxed); )*
        $( $s.$m = $s.$m.max($c.$m.load(Relaxed)); )*
    }};
}

impl Counters {
    /// Adds this thread's counters into `s`.
    pub fn add_to(&self, s: &mut Snapshot) {
        snapshot!(self, s,
            sum: [connect_attempts, connect_failures, connected, live, redirects, refused,
                  disconnects, heartbeats, assigns, finished_sent, finished_acked, cancels,
                  abandons, drains, goodbyes, submitted, acked, submit_errors, submit_skipped,
                  probes, probe_errors, quic_sent_packets, quic_lost_packets],
            max: [last_welcome_us, server_heartbeat_ms]);
    }
}

/// Adds one to a counter.
pub fn bump(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

/// A job's assignment as a simulated agent saw it.
#[derive(Clone, Copy, Debug)]
pub struct Stamp {
    pub job: u64,
    pub attempt: u32,
    /// Wall clock (µs since the epoch) when the `Assign` was read.
    pub received_us: u64,
}

/// Everything one fleet thread records.
pub struct ThreadStats {
    pub counters: Counters,
    /// Assignments received, in order.
    pub stamps: Mutex<Vec<Stamp>>,
    /// Per agent: its first connection attempt → its first `Welcome` (µs).
    pub connect_us: Mutex<Histogram<u64>>,
    /// Probe round trips (µs), steady phase only.
    pub probe_us: Mutex<Histogram<u64>>,
    /// Agents per server shard (index = shard bits of the worker id).
    pub per_shard: Mutex<Vec<u64>>,
    /// First error of each kind, for the report.
    pub errors: Mutex<Vec<String>>,
}

/// Largest value a histogram holds (µs): one hour. Larger values are clamped to it.
const MAX_US: u64 = 3_600_000_000;

/// An hdrhistogram of µs values, 3 significant digits, 1 µs to one hour.
pub fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, MAX_US, 3)?)
}

impl ThreadStats {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            counters: Counters::default(),
            stamps: Mutex::new(Vec::new()),
            connect_us: Mutex::new(histogram()?),
            probe_us: Mutex::new(histogram()?),
            per_shard: Mutex::new(Vec::new()),
            errors: Mutex::new(Vec::new()),
        })
    }

    /// Records a value into one of the histograms (poisoned locks are ignored: a panicking
    /// thread already lost its figures).
    pub fn record(h: &Mutex<Histogram<u64>>, v: u64) {
        if let Ok(mut h) = h.lock() {
            h.saturating_record(v);
        }
    }

    /// Keeps the first few distinct error messages (by their text up to the first digit, so
    /// that addresses and counts do not make every message unique).
    pub fn error(&self, msg: String) {
        let Ok(mut errors) = self.errors.lock() else {
            return;
        };
        let key = |m: &str| {
            m.split(|c: char| c.is_ascii_digit())
                .next()
                .map(str::to_owned)
        };
        if errors.len() < 8 && !errors.iter().any(|e| key(e) == key(&msg)) {
            errors.push(msg);
        }
    }

    pub fn shard_seen(&self, shard: u8) {
        if let Ok(mut v) = self.per_shard.lock() {
            let i = usize::from(shard);
            if v.len() <= i {
                v.resize(i + 1, 0);
            }
            v[i] += 1;
        }
    }
}
