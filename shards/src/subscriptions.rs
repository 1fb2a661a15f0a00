//! [`Subscriptions`]: client requests that stay open on a shard after their first answer,
//! other than those tied to one job (a job's waiters and log followers live in its
//! [`Job`](crate::job_table::Job) and end with it).
//!
//! The rules it keeps:
//! - A listing fanned out to every shard is answered once, when the last part is in, sorted
//!   so the answer does not depend on the order the parts came in.
//! - An event read fanned out to every shard is one stream to the client: each shard's end
//!   of its part is swallowed, and the stream ends when the last shard's part has.
//! - A wait group (`SubmitWait`) ends with the answer for the last of its jobs.

use hodei_core::event::{Event, Subject};
use hodei_core::ids::JobId;
use hodei_core::job::{JobRecord, WorkerInfo};
use hodei_core::wire::FromServer;

use crate::comm::{Comm, Reply, ReqId};
use crate::shard::HashMap;

/// A listing waiting for the parts of the other shards.
#[derive(Debug, Default)]
struct Gather {
    missing: usize,
    jobs: Vec<JobRecord>,
    workers: Vec<WorkerInfo>,
    is_workers: bool,
}

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Subscriptions {
    /// Listing fan-outs from here waiting for parts.
    gathers: HashMap<ReqId, Gather>,
    /// Clients following this shard's events: (origin shard, request, only this job).
    event_followers: Vec<(usize, ReqId, Option<JobId>)>,
    /// Event reads fanned out from here: shards that have not ended their part yet.
    event_streams: HashMap<ReqId, usize>,
    /// `SubmitWait` requests (client shard, request) still open: how many of their jobs are
    /// not final yet.
    wait_groups: HashMap<(usize, ReqId), usize>,
}

impl Subscriptions {
    /// A listing of jobs (or workers) goes out to `shards` shards, this one included.
    pub(crate) fn open_listing(&mut self, req: ReqId, shards: usize, is_workers: bool) {
        let gather = Gather {
            missing: shards,
            is_workers,
            ..Gather::default()
        };
        self.gathers.insert(req, gather);
    }

    /// One shard's part of a listing from here; the whole answer once it is the last.
    pub(crate) fn add_part(
        &mut self,
        req: ReqId,
        jobs: Vec<JobRecord>,
        workers: Vec<WorkerInfo>,
    ) -> Option<FromServer> {
        let g = self.gathers.get_mut(&req)?;
        g.missing = g.missing.saturating_sub(1);
        g.jobs.extend(jobs);
        g.workers.extend(workers);
        if g.missing > 0 {
            return None;
        }
        let mut g = self.gathers.remove(&req)?;
        Some(if g.is_workers {
            g.workers.sort_by_key(|w| w.id);
            FromServer::Workers(g.workers)
        } else {
            g.jobs.sort_by_key(|j| (j.created_at, j.id));
            FromServer::Jobs(g.jobs)
        })
    }

    /// An event read goes out to `shards` shards, this one included.
    pub(crate) fn open_event_stream(&mut self, req: ReqId, shards: usize) {
        self.event_streams.insert(req, shards);
    }

    /// Ends an event read from here (its client went away); false if there was none.
    pub(crate) fn close_event_stream(&mut self, req: ReqId) -> bool {
        self.event_streams.remove(&req).is_some()
    }

    /// A client follows this shard's events (of one job only, with `job`).
    pub(crate) fn follow_events(&mut self, origin: usize, req: ReqId, job: Option<JobId>) {
        self.event_followers.push((origin, req, job));
    }

    /// A client of shard `origin` stopped following events.
    pub(crate) fn unfollow_events(&mut self, origin: usize, req: ReqId) {
        self.event_followers
            .retain(|(o, r, _)| (*o, *r) != (origin, req));
    }

    /// The clients following events that `ev` is for, in the order they subscribed.
    pub(crate) fn followers_of<'a>(
        &'a self,
        ev: &'a Event,
    ) -> impl Iterator<Item = (usize, ReqId)> + 'a {
        self.event_followers
            .iter()
            .filter(|(_, _, job)| job.is_none_or(|j| ev.subject == Subject::Job(j)))
            .map(|(o, r, _)| (*o, *r))
    }

    /// At the client's shard: passes a reply on, merging the parts of a fanned-out event
    /// read into one stream.
    pub(crate) fn forward_reply(
        &mut self,
        req: ReqId,
        reply: Reply,
        last: bool,
        comm: &mut impl Comm,
    ) {
        let Some(left) = self.event_streams.get_mut(&req) else {
            comm.reply(req, reply, last);
            return;
        };
        let is_end = matches!(reply, Reply::Msg(FromServer::LogEnd));
        if !is_end {
            comm.reply(req, reply, false);
        }
        if last {
            *left = left.saturating_sub(1);
            if *left == 0 {
                self.event_streams.remove(&req);
                comm.reply(req, Reply::Msg(FromServer::LogEnd), true);
            }
        }
    }

    /// A `SubmitWait` of shard `origin` waits for `jobs` jobs.
    pub(crate) fn open_wait_group(&mut self, origin: usize, req: ReqId, jobs: usize) {
        self.wait_groups.insert((origin, req), jobs);
    }

    /// One waiter of `req` is answered: is it the last answer? (A plain `Wait` is its own
    /// group of one.)
    pub(crate) fn waiter_answered(&mut self, origin: usize, req: ReqId) -> bool {
        let last = match self.wait_groups.get_mut(&(origin, req)) {
            None => true,
            Some(left) => {
                *left = left.saturating_sub(1);
                *left == 0
            }
        };
        if last {
            self.wait_groups.remove(&(origin, req));
        }
        last
    }
}
