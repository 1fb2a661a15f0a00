//! One heartbeat clock per fleet thread. The thread's connections sit in buckets of the
//! period, by their phase, and one ticker sends each due bucket's heartbeats as datagrams. A
//! timer per agent cost the generator a timer-wheel entry, a task wake-up and a re-arm for
//! every heartbeat; this costs a walk over a short `Vec`. Each agent still sends its own
//! datagram on its own connection, once per period, at its own phase. A bucket is 1 ms wide
//! (wider for periods over [`MAX_BUCKETS`] ms), and the period is rounded down to a whole
//! number of buckets.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use hodei_core::wire::FromAgent;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::fleet::{Phase, stopped};
use crate::stats::{ThreadStats, bump};

/// One connection's heartbeats.
struct Beat {
    conn: quinn::Connection,
    /// Jobs running on it, for the heartbeat's `running`.
    running: Rc<Cell<u32>>,
    /// Gone once its session dropped the [`BeatGuard`].
    live: Weak<()>,
}

/// Ends a connection's heartbeats when dropped (the entry leaves at its bucket's next turn).
pub struct BeatGuard {
    _live: Rc<()>,
}

/// Bounds the memory of a long period: 10 s still gets 1 ms buckets.
const MAX_BUCKETS: u128 = 10_000;

/// The heartbeat clock of one fleet thread.
pub struct Beats {
    buckets: RefCell<Vec<Vec<Beat>>>,
    /// Width of one bucket, µs (at least 1,000).
    width_us: u128,
    stats: Arc<ThreadStats>,
    t0: Instant,
}

impl Beats {
    pub fn new(period: Duration, stats: Arc<ThreadStats>, t0: Instant) -> Self {
        let period_us = period.as_micros().max(1_000);
        let width_us = period_us.div_ceil(MAX_BUCKETS).max(1_000);
        let n = usize::try_from(period_us / width_us).unwrap_or(1).max(1);
        Self {
            buckets: RefCell::new((0..n).map(|_| Vec::new()).collect()),
            width_us,
            stats,
            t0,
        }
    }

    /// Buckets since the start, at `at`.
    fn turn(&self, at: Instant) -> usize {
        let us = at.saturating_duration_since(self.t0).as_micros();
        usize::try_from(us / self.width_us).unwrap_or(usize::MAX)
    }

    /// Heartbeats for `conn`, each period at the phase of `first` (the first within a
    /// period), until the guard is dropped or the connection is lost.
    pub fn add(
        &self,
        first: Instant,
        conn: quinn::Connection,
        running: Rc<Cell<u32>>,
    ) -> BeatGuard {
        let live = Rc::new(());
        let mut buckets = self.buckets.borrow_mut();
        let n = buckets.len();
        if let Some(b) = buckets.get_mut(self.turn(first) % n) {
            b.push(Beat {
                conn,
                running,
                live: Rc::downgrade(&live),
            });
        }
        BeatGuard { _live: live }
    }

    /// Sends the due buckets' heartbeats, one bucket width apart, until the stop. A late turn
    /// sends every bucket it missed, each at most once.
    pub async fn run(&self, mut phase: watch::Receiver<Phase>) {
        let width = Duration::from_micros(u64::try_from(self.width_us).unwrap_or(1_000));
        let mut tick = tokio::time::interval(width);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let n = self.buckets.borrow().len();
        let mut next = self.turn(Instant::now());
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stopped(&mut phase) => return,
            }
            let upto = self.turn(Instant::now()).saturating_add(1);
            for turn in next.max(upto.saturating_sub(n))..upto {
                self.fire(turn % n);
            }
            next = upto;
        }
    }

    /// One bucket's heartbeats; entries of ended sessions and lost connections leave.
    fn fire(&self, bucket: usize) {
        let mut buckets = self.buckets.borrow_mut();
        let Some(beats) = buckets.get_mut(bucket) else {
            return;
        };
        beats.retain(|b| {
            if b.live.strong_count() == 0 {
                return false;
            }
            let beat = FromAgent::Heartbeat {
                running: b.running.get(),
                load: 0,
            };
            match hodei_transport::send_datagram(&b.conn, &beat) {
                Ok(true) => {
                    bump(&self.stats.counters.heartbeats);
                    true
                }
                Ok(false) => {
                    self.stats
                        .error("the server takes no datagrams (try --stream-heartbeats)".into());
                    false
                }
                // The session sees the loss on its stream.
                Err(_) => false,
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_the_phase_and_the_period_rounds_down() {
        let t0 = Instant::now();
        let stats = || Arc::new(ThreadStats::new().unwrap());
        let b = Beats::new(Duration::from_micros(100_900), stats(), t0);
        assert_eq!(b.buckets.borrow().len(), 100);
        assert_eq!(b.turn(t0 + Duration::from_micros(7_999)) % 100, 7);
        assert_eq!(b.turn(t0 + Duration::from_millis(207)) % 100, 7);
        let tiny = Beats::new(Duration::from_micros(10), stats(), t0);
        assert_eq!(tiny.buckets.borrow().len(), 1);
        // A long period gets wider buckets, not millions of them.
        let long = Beats::new(Duration::from_secs(3600), stats(), t0);
        assert_eq!(long.buckets.borrow().len(), 10_000);
        assert_eq!(long.width_us, 360_000);
        let huge = Beats::new(Duration::MAX, stats(), t0);
        assert!(huge.buckets.borrow().len() <= 10_000);
    }
}
