//! One heartbeat clock per fleet thread. The thread's connections sit in 1 ms buckets of the
//! period, by their phase, and one 1 ms ticker sends each due bucket's heartbeats as
//! datagrams. A timer per agent cost the generator a timer-wheel entry, a task wake-up and a
//! re-arm for every heartbeat; this costs a walk over a short `Vec`. Each agent still sends
//! its own datagram on its own connection, once per period, at its own phase. The period is
//! rounded to whole milliseconds (at least one).

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

/// The heartbeat clock of one fleet thread.
pub struct Beats {
    buckets: RefCell<Vec<Vec<Beat>>>,
    stats: Arc<ThreadStats>,
    t0: Instant,
}

impl Beats {
    pub fn new(period: Duration, stats: Arc<ThreadStats>, t0: Instant) -> Self {
        let n = usize::try_from(period.as_millis()).unwrap_or(usize::MAX).max(1);
        Self {
            buckets: RefCell::new((0..n).map(|_| Vec::new()).collect()),
            stats,
            t0,
        }
    }

    fn bucket(&self, at: Instant, n: usize) -> usize {
        let ms = at.saturating_duration_since(self.t0).as_millis();
        usize::try_from(ms % n as u128).unwrap_or(0)
    }

    /// Heartbeats for `conn`, each period at the phase of `first` (the first within a
    /// period), until the guard is dropped or the connection is lost.
    pub fn add(&self, first: Instant, conn: quinn::Connection, running: Rc<Cell<u32>>) -> BeatGuard {
        let live = Rc::new(());
        let mut buckets = self.buckets.borrow_mut();
        let n = buckets.len();
        if let Some(b) = buckets.get_mut(self.bucket(first, n)) {
            b.push(Beat {
                conn,
                running,
                live: Rc::downgrade(&live),
            });
        }
        BeatGuard { _live: live }
    }

    /// Sends the due buckets' heartbeats every millisecond until the stop. A late turn sends
    /// every bucket it missed, each at most once.
    pub async fn run(&self, mut phase: watch::Receiver<Phase>) {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let n = self.buckets.borrow().len();
        let mut next = self.ms(Instant::now());
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stopped(&mut phase) => return,
            }
            let upto = self.ms(Instant::now()) + 1;
            for ms in next.max(upto.saturating_sub(n))..upto {
                self.fire(ms % n);
            }
            next = upto;
        }
    }

    fn ms(&self, at: Instant) -> usize {
        usize::try_from(at.saturating_duration_since(self.t0).as_millis()).unwrap_or(usize::MAX)
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
    fn buckets_follow_the_phase_and_the_period_rounds_to_ms() {
        let t0 = Instant::now();
        let stats = Arc::new(ThreadStats::new().unwrap());
        let b = Beats::new(Duration::from_micros(100_400), stats, t0);
        assert_eq!(b.buckets.borrow().len(), 100);
        assert_eq!(b.bucket(t0 + Duration::from_millis(7), 100), 7);
        assert_eq!(b.bucket(t0 + Duration::from_millis(207), 100), 7);
        let tiny = Beats::new(Duration::from_micros(10), Arc::new(ThreadStats::new().unwrap()), t0);
        assert_eq!(tiny.buckets.borrow().len(), 1);
    }
}
