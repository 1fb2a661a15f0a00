//! Clients that go away, and what a shard holds for its clients.
//!
//! A client request that stays open after its first answer (`Wait`, `SubmitWait`,
//! `Logs --follow`, `Events --follow`) leaves registrations on the shards that answer it:
//! waiters and log followers on jobs, wait groups, event followers. They end with their
//! last answer; a client that goes away first must not leave them until its jobs end (a
//! follower of the event stream would stay forever). So the driver calls
//! [`Shard::handle_client_gone`] when a client's stream closes, for any request, answered
//! or not: its shard forgets what it gathers for the request and sends `ClientGone` to the
//! one shard (or every shard, for an event stream) the request went to, only if the request
//! is still open. Each shard then drops what `Subscriptions` lists under the request: the
//! cost is the number of its registrations (each removal from a job's list of waiters is a
//! scan of that one job's list), never a scan of all jobs or subscriptions.

use hodei_core::wire::JobRequest;

use crate::comm::{Comm, ReqId, ShardMsg};
use crate::shard::Shard;
use crate::subscriptions::{Open, Registration};

/// Whether a request may stay open after its first answer (and so leave registrations).
pub(crate) const fn stays_open(body: &JobRequest) -> bool {
    matches!(
        body,
        JobRequest::Wait { .. }
            | JobRequest::SubmitWait { .. }
            | JobRequest::Logs { follow: true, .. }
            | JobRequest::Events { follow: true, .. }
    )
}

/// How much a shard holds, for tests, checks and metrics. Counting the waiters and log
/// followers visits every job: not for the hot path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Jobs in the table.
    pub jobs: usize,
    /// Workers in the table (departed ones included, up to `MAX_DEPARTED`).
    pub workers: usize,
    /// Workers that are lost or gone, kept for `worker list`.
    pub departed_workers: usize,
    /// Job timers armed (stale ones included: they are dropped when they fire).
    pub job_timers: usize,
    /// Worker deadlines: at most one per worker.
    pub worker_timers: usize,
    /// Clients waiting on jobs (`Wait`, `SubmitWait`), summed over the jobs.
    pub waiters: usize,
    /// Clients following a job's output, summed over the jobs.
    pub log_followers: usize,
    /// Clients following this shard's events.
    pub event_followers: usize,
    /// `SubmitWait`s with jobs still to answer.
    pub wait_groups: usize,
    /// Requests with registrations here.
    pub registered_requests: usize,
    /// Requests of this shard's clients that may still be open elsewhere.
    pub open_requests: usize,
    /// Listings and event reads gathered here.
    pub gathers: usize,
    /// Final jobs indexed for retention (at most one per final job held; none with
    /// retention off).
    pub retained_finished: usize,
}

impl Shard {
    /// The driver found a client's stream closed (it disconnected or stopped reading), for
    /// request `req` of this shard, whether or not it was still open: forget every
    /// registration it left here and on other shards. Costs nothing for a request that is
    /// not open any more.
    pub fn handle_client_gone(&mut self, req: ReqId, comm: &mut impl Comm) {
        self.begin_call();
        let here = self.cfg.index;
        match self.subs.client_gone(req) {
            None => {}
            Some(Open::At(owner)) if owner == here => self.forget_request(here, req),
            Some(Open::At(owner)) => {
                comm.send_shard(owner, ShardMsg::ClientGone { origin: here, req });
            }
            Some(Open::Everywhere) => {
                self.forget_request(here, req);
                for s in (0..self.cfg.shards).filter(|s| *s != here) {
                    comm.send_shard(s, ShardMsg::ClientGone { origin: here, req });
                }
            }
        }
    }

    /// Drops what request `req` of shard `origin` left here. (The request reached this shard
    /// before the `ClientGone` that follows it on the same link.)
    pub(crate) fn forget_request(&mut self, origin: usize, req: ReqId) {
        let who = (origin, req);
        match self.subs.forget(origin, req) {
            Some(Registration::Waits(jobs)) => {
                for id in jobs {
                    if let Some(j) = self.jobs.get_mut(id) {
                        j.waiters.retain(|w| *w != who);
                    }
                }
            }
            Some(Registration::Follows(id)) => {
                if let Some(j) = self.jobs.get_mut(id) {
                    j.followers.retain(|w| *w != who);
                }
            }
            Some(Registration::Events(_)) | None => {}
        }
    }

    /// What this shard holds now (see [`Footprint`]).
    #[must_use]
    pub fn footprint(&self) -> Footprint {
        let subs = self.subs.counts();
        let (waiters, log_followers) = self.jobs.values().fold((0, 0), |(w, f), j| {
            (w + j.waiters.len(), f + j.followers.len())
        });
        Footprint {
            jobs: self.jobs.values().count(),
            workers: self.workers.len(),
            departed_workers: self.workers.departed_len(),
            job_timers: self.timers.jobs_len(),
            worker_timers: self.timers.workers_len(),
            waiters,
            log_followers,
            event_followers: subs.event_followers,
            wait_groups: subs.wait_groups,
            registered_requests: subs.registered,
            open_requests: subs.open,
            gathers: subs.listings + subs.event_streams,
            retained_finished: self.retention.len(),
        }
    }
}
