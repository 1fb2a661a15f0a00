//! Retention: finished jobs leave the shard once they have been finished for longer than
//! `ShardConfig::retain_finished` (`hodei server --retain-finished`).
//!
//! The rules it keeps:
//! - Only a job in a final state is ever deleted, and only once the shard has known it
//!   final for the whole window: [`Retention`] indexes final jobs by the shard's own time
//!   of their end (`finished_at` read back for jobs loaded at a restart, bounded by the
//!   job's creation and the start, since a success carries the agent's clock), and the
//!   timer takes them from the oldest end on.
//! - A pass deletes at most [`EXPIRE_PER_PASS`] jobs, so a million jobs expiring at once
//!   never make one long turn; with more due, the next pass comes a millisecond later.
//! - A deleted job leaves the job table and its idempotency key (the key's shard is told
//!   when it is another one), and the store gets `StoreOp::DeleteJob` in the same batch as
//!   everything else of the turn: the store drops its record there and its output later,
//!   off the shard thread.
//! - A request for an id this shard minted (an earlier epoch, or this epoch below the next
//!   sequence) that it no longer holds is answered "expired", not "does not exist".
//!
//! With retention off (`None`) nothing is indexed and no timer is armed.

use std::collections::{BTreeMap, BTreeSet};

use hodei_core::ids::JobId;
use hodei_core::job::JobRecord;
use hodei_core::time::{Micros, ms};
use hodei_core::wire::{ErrorKind, FromServer};

use crate::comm::{Comm, Reply, ShardMsg, StoreOp};
use crate::lifecycle::key_shard;
use crate::shard::Shard;
use crate::timers::Timer;

/// Most jobs one retention pass deletes: bounds the turn it runs in (and its commit).
pub const EXPIRE_PER_PASS: usize = 1024;

/// How often a shard looks for expired jobs with a retention window of `window`: a tenth
/// of it, from 100 ms to 1 min. A job is deleted at most this long after its window ends.
/// The store's background sweep uses the same period.
#[must_use]
pub fn retention_interval(window: Micros) -> Micros {
    (window / 10).clamp(ms(100), ms(60_000))
}

/// Final jobs by the time they ended, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Retention {
    /// `None`: retention is off and nothing is indexed.
    window: Option<Micros>,
    ended: BTreeSet<(Micros, JobId)>,
}

impl Retention {
    pub(crate) fn new(window: Option<Micros>) -> Self {
        Self {
            window,
            ended: BTreeSet::new(),
        }
    }

    pub(crate) const fn window(&self) -> Option<Micros> {
        self.window
    }

    /// Job `id` became final at `at` (shard time).
    pub(crate) fn ended(&mut self, at: Micros, id: JobId) {
        if self.window.is_some() {
            self.ended.insert((at, id));
        }
    }

    /// A final job loaded at a restart: indexed at its `finished_at`, which for a success is
    /// the agent's clock, so bounded by its creation (shard time) and `now`.
    pub(crate) fn loaded(&mut self, rec: &JobRecord, now: Micros) {
        let at = rec
            .finished_at
            .unwrap_or(rec.created_at)
            .max(rec.created_at)
            .min(now);
        self.ended(at, rec.id);
    }

    /// Takes up to `max` jobs that ended at or before `cutoff`, oldest first.
    fn take_due(&mut self, cutoff: Micros, max: usize) -> Vec<JobId> {
        let mut out = Vec::new();
        while out.len() < max {
            match self.ended.first() {
                Some(&(at, id)) if at <= cutoff => {
                    self.ended.pop_first();
                    out.push(id);
                }
                _ => break,
            }
        }
        out
    }

    /// Whether a job ended at or before `cutoff` is still indexed.
    fn more_due(&self, cutoff: Micros) -> bool {
        self.ended.first().is_some_and(|(at, _)| *at <= cutoff)
    }

    /// Final jobs indexed (for the footprint).
    pub(crate) fn len(&self) -> usize {
        self.ended.len()
    }
}

impl Shard {
    /// Arms the first retention pass (at start).
    pub(crate) fn arm_retention(&mut self) {
        if let Some(window) = self.retention.window() {
            let at = self.now.saturating_add(retention_interval(window));
            self.timers.arm(at, Timer::Retention);
        }
    }

    /// Timer: deletes the jobs that have been final longer than the window, at most
    /// [`EXPIRE_PER_PASS`] of them, and arms the next pass.
    pub(crate) fn on_retention_due(&mut self, comm: &mut impl Comm) {
        let Some(window) = self.retention.window() else {
            return;
        };
        let now = self.now;
        let cutoff = now.saturating_sub(window);
        let mut foreign: BTreeMap<usize, Vec<(String, JobId)>> = BTreeMap::new();
        for id in self.retention.take_due(cutoff, EXPIRE_PER_PASS) {
            // A job is indexed once it is final and final states are terminal, so this only
            // guards against a job indexed twice (it is gone already).
            if !self.jobs.get(id).is_some_and(|j| j.rec.state.is_final()) {
                continue;
            }
            let Some(job) = self.jobs.remove(id) else {
                continue;
            };
            if let Some(key) = job.rec.spec.policy.idempotency_key.clone() {
                let owner = key_shard(&key, self.cfg.shards);
                if owner == self.cfg.index {
                    self.jobs.forget_key(&key, id);
                } else {
                    foreign.entry(owner).or_default().push((key, id));
                }
            }
            comm.persist(StoreOp::DeleteJob(id));
        }
        for (shard, keys) in foreign {
            comm.send_shard(shard, ShardMsg::KeysExpired { keys });
        }
        // With more due, the next pass is in the next turn (a timer armed at `now` would
        // fire again in this one).
        let next = if self.retention.more_due(cutoff) {
            now.saturating_add(1)
        } else {
            now.saturating_add(retention_interval(window))
        };
        self.timers.arm(next, Timer::Retention);
    }

    /// Another shard deleted the jobs these idempotency keys (owned here) named.
    pub(crate) fn on_keys_expired(&mut self, keys: Vec<(String, JobId)>) {
        for (key, id) in keys {
            self.jobs.forget_key(&key, id);
        }
    }

    /// The answer for a job this shard does not hold: "expired" if it minted the id (so the
    /// job existed and was deleted), "does not exist" otherwise.
    pub(crate) fn not_found(&self, job: JobId) -> Reply {
        let message = if self.jobs.minted(job, self.index_u8(), self.cfg.epoch) {
            match self.retention.window() {
                Some(w) => format!(
                    "job {job} expired: finished jobs are deleted {} after they end \
                     (hodei server --retain-finished)",
                    span(w)
                ),
                None => format!(
                    "job {job} expired: finished jobs are deleted after \
                     hodei server --retain-finished"
                ),
            }
        } else {
            format!("job {job} does not exist")
        };
        Reply::Msg(FromServer::Error {
            kind: ErrorKind::NotFound,
            message,
        })
    }
}

/// A window as people write it: `7d`, `90m`, `30s`, `1500ms`.
fn span(us: Micros) -> String {
    let s = us / 1_000_000;
    if !us.is_multiple_of(1_000_000) {
        format!("{}ms", us / 1_000)
    } else if s > 0 && s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s > 0 && s.is_multiple_of(3_600) {
        format!("{}h", s / 3_600)
    } else if s > 0 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_as_written() {
        assert_eq!(span(ms(7 * 86_400_000)), "7d");
        assert_eq!(span(ms(5_400_000)), "90m");
        assert_eq!(span(ms(7_200_000)), "2h");
        assert_eq!(span(ms(30_000)), "30s");
        assert_eq!(span(ms(1_500)), "1500ms");
    }

    #[test]
    fn the_interval_is_a_tenth_of_the_window_within_bounds() {
        assert_eq!(retention_interval(ms(1_000)), ms(100));
        assert_eq!(retention_interval(ms(100)), ms(100));
        assert_eq!(retention_interval(ms(300_000)), ms(30_000));
        assert_eq!(retention_interval(ms(7 * 86_400_000)), ms(60_000));
    }
}
