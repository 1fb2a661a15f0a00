//! [`Subscriptions`]: client requests that stay open on a shard after their first answer.
//! A job's waiters and log followers live in its [`Job`](crate::job_table::Job) and end
//! with it; this keeps everything else, and an index of those.
//!
//! The rules it keeps:
//! - Every registration a request leaves on a shard (waiters on jobs, a log follower, a
//!   wait group, an event follower) is listed under the request in `registered`, and leaves
//!   that list when the request gets its last answer from the shard. So when its client goes
//!   away, all of them are found and dropped in time proportional to their number
//!   (`clients.rs`), and nothing is left once every request is answered or gone.
//! - The client's own shard remembers where each request that may stay open went (`open`),
//!   until its last answer passes through it, so a client that goes away is forgotten on
//!   exactly the shards that hold something of it.
//! - A listing fanned out to every shard is answered once, when the last part is in, sorted
//!   so the answer does not depend on the order the parts came in.
//! - An event read fanned out to every shard is one stream to the client: each shard's end
//!   of its part is swallowed, and the stream ends when the last shard's part has.
//! - A wait group (`SubmitWait`) ends with the answer for the last of its jobs.

use std::collections::BTreeMap;

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

/// What a request left on a shard, to find when its client goes away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Registration {
    /// Waiters on these jobs (a `Wait`, or a `SubmitWait`'s jobs not final when submitted).
    Waits(Vec<JobId>),
    /// A log follower of this job.
    Follows(JobId),
    /// An event follower, under this key of `event_followers`.
    Events(u64),
}

/// Where a request that may stay open went, seen from its client's shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Open {
    /// To the shard that owns what it is about (maybe this one).
    At(usize),
    /// To every shard.
    Everywhere,
}

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Subscriptions {
    /// Listing fan-outs from here waiting for parts.
    gathers: HashMap<ReqId, Gather>,
    /// Clients following this shard's events, in the order they subscribed: (origin shard,
    /// request, only this job).
    event_followers: BTreeMap<u64, (usize, ReqId, Option<JobId>)>,
    /// The key of the next event follower.
    next_follower: u64,
    /// What each request (origin shard, request) left here.
    registered: HashMap<(usize, ReqId), Registration>,
    /// Requests of this shard's clients that may stay open, and where they went.
    open: HashMap<ReqId, Open>,
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

    /// A client follows this shard's events (of one job only, with `job`).
    pub(crate) fn follow_events(&mut self, origin: usize, req: ReqId, job: Option<JobId>) {
        let key = self.next_follower;
        self.next_follower += 1;
        self.event_followers.insert(key, (origin, req, job));
        self.register(origin, req, Registration::Events(key));
    }

    /// Lists what request `req` of shard `origin` left here.
    pub(crate) fn register(&mut self, origin: usize, req: ReqId, reg: Registration) {
        self.registered.insert((origin, req), reg);
    }

    /// The request got its last answer from this shard: nothing of it is left here.
    pub(crate) fn unregister(&mut self, origin: usize, req: ReqId) {
        self.registered.remove(&(origin, req));
    }

    /// The client of request `req` of shard `origin` went away: drops its event follower
    /// and wait group, and hands back what it left on jobs (for the shard to drop there).
    pub(crate) fn forget(&mut self, origin: usize, req: ReqId) -> Option<Registration> {
        let reg = self.registered.remove(&(origin, req))?;
        match &reg {
            Registration::Events(key) => {
                self.event_followers.remove(key);
            }
            Registration::Waits(_) => {
                self.wait_groups.remove(&(origin, req));
            }
            Registration::Follows(_) => {}
        }
        Some(reg)
    }

    /// A request of this shard's client that may stay open went `to`.
    pub(crate) fn opened(&mut self, req: ReqId, to: Open) {
        self.open.insert(req, to);
    }

    /// The client of request `req` of this shard went away: forgets the request's listing
    /// and event read gathered here; where else it went, if it may still be open there.
    pub(crate) fn client_gone(&mut self, req: ReqId) -> Option<Open> {
        self.gathers.remove(&req);
        self.event_streams.remove(&req);
        self.open.remove(&req)
    }

    /// The clients following events that `ev` is for, in the order they subscribed.
    pub(crate) fn followers_of<'a>(
        &'a self,
        ev: &'a Event,
    ) -> impl Iterator<Item = (usize, ReqId)> + 'a {
        self.event_followers
            .values()
            .filter(|(_, _, job)| job.is_none_or(|j| ev.subject == Subject::Job(j)))
            .map(|(o, r, _)| (*o, *r))
    }

    /// At the client's shard: passes a reply on (this shard's own, or one from the shard
    /// that answered), merging the parts of a fanned-out event read into one stream. A
    /// request's last reply closes it here.
    pub(crate) fn forward_reply(
        &mut self,
        req: ReqId,
        reply: Reply,
        last: bool,
        comm: &mut impl Comm,
    ) {
        let Some(left) = self.event_streams.get_mut(&req) else {
            if last {
                self.open.remove(&req);
            }
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
                self.open.remove(&req);
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

/// How much a shard's subscriptions hold (see `Shard::footprint`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SubsCounts {
    pub(crate) listings: usize,
    pub(crate) event_followers: usize,
    pub(crate) event_streams: usize,
    pub(crate) wait_groups: usize,
    pub(crate) registered: usize,
    pub(crate) open: usize,
}

impl Subscriptions {
    pub(crate) fn counts(&self) -> SubsCounts {
        SubsCounts {
            listings: self.gathers.len(),
            event_followers: self.event_followers.len(),
            event_streams: self.event_streams.len(),
            wait_groups: self.wait_groups.len(),
            registered: self.registered.len(),
            open: self.open.len(),
        }
    }
}
