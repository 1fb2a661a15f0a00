//! [`Timers`]: every deadline of a shard.
//!
//! Job timers are never cancelled: each names what it is about, and its handler checks that
//! against the current state when it fires (lazy deletion), so an acknowledgement deadline of
//! an attempt that started does nothing, and no state change has to find its timers. They
//! live in one heap, and arming one is a push.
//!
//! A worker has exactly one deadline, whatever happened to it: the next time its heartbeat or
//! its disconnect grace must be looked at. Arming it replaces the one it had, and
//! [`Timers::forget_worker`] drops it with the worker. Lazy deletion would not do for
//! workers: an agent that reconnects a thousand times would leave a thousand deadlines that
//! each re-arm themselves while it stays connected. The worker deadlines are kept ordered
//! beside the heap (a `BTreeSet` keyed by time, with each worker's entry found through a
//! map), so replacing one is O(log n) and the two are merged when timers are popped.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

use hodei_core::ids::{Attempt, JobId, WorkerId};
use hodei_core::time::Micros;

use crate::shard::HashMap;

/// What a timer is for; each is checked against current state when it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    /// Check a worker's heartbeat or disconnect grace.
    Worker(WorkerId),
    /// Check a job's claim deadline.
    Claim(JobId),
    /// A retry's backoff ends.
    Retry(JobId),
    /// An assignment must have been acknowledged by now.
    Ack(JobId, Attempt),
    /// A job's queue timeout.
    Queue(JobId),
    /// Look for jobs whose retention is over (one such timer is armed at a time).
    Retention,
}

/// The shard's timers, earliest first (timers due at the same time fire in [`Timer`] order,
/// so a seed replays the same way).
#[derive(Debug, Default)]
pub(crate) struct Timers {
    /// Job timers.
    heap: BinaryHeap<Reverse<(Micros, Timer)>>,
    /// Each worker's one deadline, in time order.
    workers: BTreeSet<(Micros, WorkerId)>,
    /// Each worker's deadline, to find its entry in `workers`.
    worker_due: HashMap<WorkerId, Micros>,
}

impl Timers {
    /// Arms `timer` to fire at `at`. For a worker, this replaces its deadline.
    pub(crate) fn arm(&mut self, at: Micros, timer: Timer) {
        match timer {
            Timer::Worker(id) => self.arm_worker(id, at),
            _ => self.heap.push(Reverse((at, timer))),
        }
    }

    /// Sets worker `id`'s one deadline to `at`, replacing the one it had.
    fn arm_worker(&mut self, id: WorkerId, at: Micros) {
        if let Some(old) = self.worker_due.insert(id, at) {
            self.workers.remove(&(old, id));
        }
        self.workers.insert((at, id));
    }

    /// Drops a worker's deadline (the worker is forgotten).
    pub(crate) fn forget_worker(&mut self, id: WorkerId) {
        if let Some(at) = self.worker_due.remove(&id) {
            self.workers.remove(&(at, id));
        }
    }

    /// When the earliest timer is due.
    pub(crate) fn next(&self) -> Option<Micros> {
        let job = self.heap.peek().map(|Reverse((at, _))| *at);
        let worker = self.workers.first().map(|(at, _)| *at);
        match (job, worker) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Removes and returns the earliest timer if it is due at `now`. A timer armed while the
    /// due ones are handled fires in the same pass if it is due too.
    pub(crate) fn pop_due(&mut self, now: Micros) -> Option<Timer> {
        let job = self.heap.peek().map(|Reverse(t)| *t);
        let worker = self
            .workers
            .first()
            .map(|(at, id)| (*at, Timer::Worker(*id)));
        let (at, timer) = match (job, worker) {
            (Some(j), Some(w)) => j.min(w),
            (Some(t), None) | (None, Some(t)) => t,
            (None, None) => return None,
        };
        if at > now {
            return None;
        }
        match timer {
            Timer::Worker(id) => {
                self.workers.pop_first();
                self.worker_due.remove(&id);
            }
            _ => {
                self.heap.pop();
            }
        }
        Some(timer)
    }

    /// Job timers armed and not fired yet (stale ones included).
    pub(crate) fn jobs_len(&self) -> usize {
        self.heap.len()
    }

    /// Worker deadlines: one per worker that has one.
    pub(crate) fn workers_len(&self) -> usize {
        self.workers.len()
    }
}

#[cfg(test)]
mod tests {
    use hodei_core::ids::{JobId, WorkerId};

    use super::{Timer, Timers};

    /// Arming a worker's deadline again replaces it, so a worker never has two.
    #[test]
    fn a_worker_has_one_deadline() {
        let mut t = Timers::default();
        let w = WorkerId::new(0, 1, 1);
        for at in [50, 10, 30] {
            t.arm(at, Timer::Worker(w));
        }
        t.arm(20, Timer::Retry(JobId::new(0, 1, 1)));
        assert_eq!(t.workers_len(), 1);
        assert_eq!(t.next(), Some(20));
        assert_eq!(t.pop_due(25), Some(Timer::Retry(JobId::new(0, 1, 1))));
        assert_eq!(t.pop_due(25), None, "the worker's deadline is 30 now");
        assert_eq!(t.pop_due(30), Some(Timer::Worker(w)));
        assert_eq!((t.workers_len(), t.next()), (0, None));
        t.arm(5, Timer::Worker(w));
        t.forget_worker(w);
        assert_eq!(t.pop_due(100), None);
    }

    /// Timers due at the same time fire in `Timer` order, worker deadlines first.
    #[test]
    fn ties_fire_in_timer_order() {
        let mut t = Timers::default();
        let job = JobId::new(0, 1, 1);
        t.arm(10, Timer::Queue(job));
        t.arm(10, Timer::Worker(WorkerId::new(0, 1, 2)));
        t.arm(10, Timer::Claim(job));
        let order: Vec<_> = std::iter::from_fn(|| t.pop_due(10)).collect();
        assert_eq!(
            order,
            vec![
                Timer::Worker(WorkerId::new(0, 1, 2)),
                Timer::Claim(job),
                Timer::Queue(job)
            ]
        );
    }
}
