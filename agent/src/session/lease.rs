//! Lease self-fencing. The server requeues a lost agent's jobs after its disconnect grace and
//! grants the agent a shorter lease in its `Welcome` (half the grace). An agent cut off from
//! the server for longer than the lease kills and forgets every job it still runs, so an
//! attempt never keeps running once the server may have started it elsewhere.
//!
//! The clock starts when a welcomed connection ends and stops at the next `Welcome`. A
//! connection that was redirected or refused, or whose `Welcome` has not come yet, does not
//! stop it: the server may not know the agent is back. If the lease runs out after the
//! `Hello` listed the jobs but before the `Welcome`, the agent kills them and reconnects, so
//! the next `Hello` no longer lists them and the server requeues them at once.
//!
//! Jobs that already finished are kept: their results are still reported on reconnect.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::warn;

use super::{Agent, EVENTS, later};
use crate::runner::RunEvent;

/// The lease before the first `Welcome` (no job can run before it anyway).
pub(super) const DEFAULT: Duration = Duration::from_millis(5000);

/// When the lease runs out: `lease` after the connection was lost; never while connected.
pub(super) fn lease_end(disconnected_since: Option<Instant>, lease: Duration) -> Option<Instant> {
    disconnected_since.map(|since| later(since, lease))
}

/// Whether an agent disconnected since `disconnected_since` must fence its jobs at `now`.
pub(super) fn expired(disconnected_since: Option<Instant>, lease: Duration, now: Instant) -> bool {
    lease_end(disconnected_since, lease).is_some_and(|end| now >= end)
}

impl Agent {
    /// When to look at the lease next: only while some job runs.
    pub(super) fn lease_wake(&self) -> Option<Instant> {
        lease_end(self.disconnected_since, self.lease).filter(|_| self.running() > 0)
    }

    /// The lease ran out and some job still runs.
    pub(super) fn lease_expired(&self, now: Instant) -> bool {
        expired(self.disconnected_since, self.lease, now) && self.running() > 0
    }

    /// Kills every job still running and forgets it. Events already queued are recorded
    /// first, so a job that ended on its own in the meantime keeps its result.
    pub(super) fn expire_lease(&mut self, events_rx: &mut mpsc::Receiver<RunEvent>) {
        // Bounded: running jobs keep producing, and only what was queued matters here.
        for _ in 0..EVENTS {
            let Ok(ev) = events_rx.try_recv() else { break };
            let _ = self.record(ev);
        }
        let lease = self.lease;
        let running: Vec<_> = self
            .jobs
            .iter()
            .filter(|(_, h)| h.finished.is_none())
            .map(|(job, _)| *job)
            .collect();
        for job in running {
            if let Some(h) = self.jobs.remove(&job) {
                warn!(
                    job = %job,
                    cid = %h.cid,
                    ?lease,
                    "no connection to the server for longer than the lease: killing the job and forgetting it"
                );
                self.drop_held(job, h);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(5);

    #[test]
    fn never_expires_while_connected() {
        let now = Instant::now();
        assert!(!expired(None, LEASE, now));
        assert!(!expired(None, Duration::ZERO, now));
        assert_eq!(lease_end(None, LEASE), None);
    }

    #[test]
    fn expires_a_lease_after_the_loss() {
        let lost = Instant::now();
        assert!(!expired(Some(lost), LEASE, lost));
        assert!(!expired(
            Some(lost),
            LEASE,
            lost + Duration::from_millis(4_999)
        ));
        assert!(expired(Some(lost), LEASE, lost + LEASE));
        assert!(expired(Some(lost), LEASE, lost + Duration::from_secs(60)));
        assert_eq!(lease_end(Some(lost), LEASE), Some(lost + LEASE));
    }

    #[test]
    fn a_zero_lease_fences_at_once_and_a_huge_one_never_panics() {
        let lost = Instant::now();
        assert!(expired(Some(lost), Duration::ZERO, lost));
        assert!(!expired(
            Some(lost),
            Duration::MAX,
            lost + Duration::from_secs(3600)
        ));
    }
}
