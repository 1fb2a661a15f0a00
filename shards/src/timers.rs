//! [`Timers`]: every deadline of a shard in one heap.
//!
//! Nothing ever cancels a timer. Each one names what it is about, and its handler checks that
//! against the current state when it fires (lazy deletion): a heartbeat deadline of a worker
//! that spoke since re-arms itself, an acknowledgement deadline of an attempt that started
//! does nothing. So arming is a push, and no state change has to find its timers.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use hodei_core::ids::{Attempt, JobId, WorkerId};
use hodei_core::time::Micros;

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
}

/// The shard's timers, earliest first (timers due at the same time fire in [`Timer`] order,
/// so a seed replays the same way).
#[derive(Debug, Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Micros, Timer)>>,
}

impl Timers {
    /// Arms `timer` to fire at `at`.
    pub(crate) fn arm(&mut self, at: Micros, timer: Timer) {
        self.heap.push(Reverse((at, timer)));
    }

    /// When the earliest timer is due.
    pub(crate) fn next(&self) -> Option<Micros> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Removes and returns the earliest timer if it is due at `now`. A timer armed while the
    /// due ones are handled fires in the same pass if it is due too.
    pub(crate) fn pop_due(&mut self, now: Micros) -> Option<Timer> {
        let Reverse((at, _)) = self.heap.peek()?;
        if *at > now {
            return None;
        }
        self.heap.pop().map(|Reverse((_, timer))| timer)
    }
}
