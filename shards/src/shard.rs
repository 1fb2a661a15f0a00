//! The [`Shard`] struct: what one shard owns, and the entry points the driver calls.

use std::hash::{BuildHasherDefault, DefaultHasher};

/// A hash map with a fixed hasher: iteration order depends only on the inputs, so a
/// simulation seed replays exactly (std's default hasher is randomly keyed per process).
/// Keys come from the shard itself (ids it minted), not from peers choosing collisions.
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<DefaultHasher>>;
/// A hash set with the same fixed hasher.
pub(crate) type HashSet<K> = std::collections::HashSet<K, BuildHasherDefault<DefaultHasher>>;

use hodei_core::ids::{Attempt, JobId, WorkerId};
use hodei_core::job::JobRecord;
use hodei_core::state::WorkerState;
use hodei_core::time::{Micros, ms};

use crate::comm::{Comm, ShardMsg};
use crate::job_table::{Job, JobTable};
use crate::lifecycle::key_shard;
use crate::retention::Retention;
use crate::stealing::Stealing;
use crate::subscriptions::Subscriptions;
use crate::timers::{Timer, Timers};
use crate::worker_table::{Worker, WorkerTable};

/// Settings of a shard.
#[derive(Clone, Debug)]
pub struct ShardConfig {
    /// This shard's index.
    pub index: usize,
    /// Number of shards in the server.
    pub shards: usize,
    /// Server start count, minted into ids.
    pub epoch: u32,
    /// UDP port of each shard's private endpoint, for redirects (empty in simulations that
    /// never redirect).
    pub ports: Vec<u16>,
    /// Agents heartbeat this often.
    pub heartbeat: Micros,
    /// A connection silent this long is treated as dropped.
    pub heartbeat_timeout: Micros,
    /// A dropped worker that does not reconnect within this is lost; its jobs are requeued.
    pub disconnect_grace: Micros,
    /// After a restart, a job that was on a worker waits this long for its agent to claim it.
    pub reattach_grace: Micros,
    /// An assignment the agent has not acknowledged (started) within this goes back.
    pub assign_timeout: Micros,
    /// Jobs final for longer than this are deleted (`hodei server --retain-finished`);
    /// `None` keeps them forever.
    pub retain_finished: Option<Micros>,
}

impl ShardConfig {
    /// Defaults for shard `index` of `shards`.
    #[must_use]
    pub fn new(index: usize, shards: usize, epoch: u32) -> Self {
        Self {
            index,
            shards,
            epoch,
            ports: Vec::new(),
            heartbeat: ms(1_000),
            heartbeat_timeout: ms(3_000),
            disconnect_grace: ms(10_000),
            reattach_grace: ms(15_000),
            assign_timeout: ms(30_000),
            retain_finished: None,
        }
    }
}

/// One shard: its jobs, its queue, its workers. See the crate docs.
///
/// The state is split by the rules each part keeps: `JobTable`, `WorkerTable`, `Timers`,
/// `Stealing`, `Subscriptions` and `Retention`. The handlers (`jobs.rs`, `reports.rs`,
/// `workers.rs`, `lifecycle.rs`, `sched.rs`, `stealing.rs`) move jobs and workers through
/// their state machines across those parts.
///
/// Scheduling is asked for, not run, by whatever queues a job or frees capacity
/// (`Shard::want_schedule`); each `handle_*` call runs it once, after everything else it
/// did. So one pass places everything a call made placeable (all the timers due at once,
/// every attempt a reconnecting agent dropped), and the messages that free a slot always
/// leave before the `Assign` that reuses it.
#[derive(Debug)]
pub struct Shard {
    pub(crate) cfg: ShardConfig,
    /// The time of the call being handled (set by every `handle_*`).
    pub(crate) now: Micros,
    pub(crate) jobs: JobTable,
    pub(crate) workers: WorkerTable,
    pub(crate) timers: Timers,
    pub(crate) stealing: Stealing,
    pub(crate) subs: Subscriptions,
    /// Final jobs by when they ended, for retention.
    pub(crate) retention: Retention,
    /// Last event number of this shard.
    pub(crate) event_seq: u64,
    /// The call being handled asked for a scheduling pass.
    sched_wanted: bool,
}

impl Shard {
    /// A shard with the jobs it owned before a restart (`jobs` may hold other shards' jobs;
    /// they only feed the idempotency keys this shard owns). Jobs that were on a worker wait
    /// `reattach_grace` for their agent. `event_seq` is the last event number stored for this
    /// shard.
    pub fn new(
        cfg: ShardConfig,
        jobs: impl IntoIterator<Item = JobRecord>,
        now: Micros,
        event_seq: u64,
    ) -> Self {
        let mut shard = Self {
            stealing: Stealing::new(cfg.shards),
            retention: Retention::new(cfg.retain_finished),
            cfg,
            now,
            jobs: JobTable::default(),
            workers: WorkerTable::default(),
            timers: Timers::default(),
            subs: Subscriptions::default(),
            event_seq,
            sched_wanted: false,
        };
        let jobs = jobs.into_iter();
        shard.jobs.reserve(jobs.size_hint().0);
        for rec in jobs {
            if let Some(key) = &rec.spec.policy.idempotency_key
                && key_shard(key, shard.cfg.shards) == shard.cfg.index
            {
                shard.jobs.remember_key(key.clone(), rec.id);
            }
            if let Some(w) = rec.worker
                && rec.state.is_on_worker()
                && w.owner(shard.cfg.shards) == shard.cfg.index
                && shard.workers.get(w).is_none()
            {
                // Listed (disconnected) until its agent re-attaches or the grace ends.
                let back_by = now + shard.cfg.reattach_grace;
                shard.workers.insert(Worker::restored(w, now, back_by));
                shard.timers.arm(back_by, Timer::Worker(w));
            }
            if rec.id.owner(shard.cfg.shards) != shard.cfg.index {
                continue;
            }
            let id = rec.id;
            let state = rec.state;
            let queued = JobTable::is_queued(&rec);
            if state.is_final() {
                shard.retention.loaded(&rec, now);
            }
            let mut job = Job::new(rec);
            if state.is_on_worker() {
                let deadline = now + shard.cfg.reattach_grace;
                job.claim_deadline = Some(deadline);
                shard.timers.arm(deadline, Timer::Claim(id));
            }
            shard.jobs.insert(job);
            if queued {
                shard.enqueue(id);
            }
            shard.arm_job_timers(id);
        }
        shard.arm_retention();
        shard
    }

    /// Call once after [`Shard::new`]: schedules restored jobs and tells the other shards
    /// about the ones left queued.
    pub fn handle_start(&mut self, comm: &mut impl Comm) {
        self.begin_call();
        let restored: Vec<WorkerId> = self
            .workers
            .values()
            .filter(|w| w.restored)
            .map(|w| w.id)
            .collect();
        for id in restored {
            let reason = Some("not back since the server restarted".to_owned());
            self.worker_event(id, WorkerState::Disconnected, reason, comm);
        }
        self.want_schedule();
        self.end_call(comm);
    }

    /// Asks for a scheduling pass at the end of the call being handled: a job was queued or
    /// capacity freed.
    pub(crate) fn want_schedule(&mut self) {
        self.sched_wanted = true;
    }

    /// Every `handle_*` call that may ask for scheduling ends here: the pass it asked for
    /// runs now. A pass can ask again (a grant its worker no longer takes is reported lost),
    /// hence the loop; a pass that changes nothing asks for nothing.
    pub(crate) fn end_call(&mut self, comm: &mut impl Comm) {
        while std::mem::take(&mut self.sched_wanted) {
            self.schedule(comm);
        }
    }

    /// Every `handle_*` call starts here: a call that asked for scheduling and returned
    /// without running it would leave a job queued beside a free worker.
    pub(crate) fn begin_call(&self) {
        debug_assert!(
            !self.sched_wanted,
            "a handle_* call returned before end_call"
        );
    }

    /// This shard's index.
    #[must_use]
    pub const fn index(&self) -> usize {
        self.cfg.index
    }

    /// The earliest time [`Shard::handle_timeout`] has work to do.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Micros> {
        self.timers.next()
    }

    /// Jobs this shard owns (for tests and invariant checks).
    pub fn jobs(&self) -> impl Iterator<Item = &JobRecord> {
        self.jobs.values().map(|j| &j.rec)
    }

    /// Jobs waiting in the queue.
    #[must_use]
    pub const fn pending(&self) -> usize {
        self.jobs.pending()
    }

    /// Workers ready with a free slot.
    pub fn free_workers(
        &self,
    ) -> impl Iterator<Item = (WorkerId, u32, u32, u64, &[(String, String)])> {
        self.workers.free().map(|wk| {
            (
                wk.id,
                wk.free_slots,
                wk.free_cpus,
                wk.free_mem,
                wk.res.labels.as_slice(),
            )
        })
    }

    /// Assignments exempted from the assign timeout because their agent queued them (for
    /// invariant checks: each must still be `Assigned` in that attempt).
    pub fn accepted(&self) -> impl Iterator<Item = (JobId, Attempt)> + '_ {
        self.jobs.accepted()
    }

    /// Attempts each worker of this shard holds (for invariant checks).
    pub fn held(&self) -> impl Iterator<Item = (WorkerId, JobId, Attempt)> + '_ {
        self.workers
            .values()
            .flat_map(|w| w.held.values().map(move |h| (w.id, h.job, h.attempt)))
    }

    /// This shard's index as ids and events carry it.
    #[allow(clippy::cast_possible_truncation)] // shard counts are capped at 256 by the driver
    pub(crate) const fn index_u8(&self) -> u8 {
        self.cfg.index as u8
    }

    /// Queues a job that just became queued, to be placed here or stolen.
    pub(crate) fn enqueue(&mut self, id: JobId) {
        self.jobs.enqueue(id);
        self.stealing.queued();
    }

    /// A message from another shard.
    pub fn handle_shard(&mut self, now: Micros, msg: ShardMsg, comm: &mut impl Comm) {
        self.begin_call();
        // Reports, steal requests and replies arm deadlines and stamp events with it.
        self.now = now;
        match msg {
            ShardMsg::Request { origin, req, body } => {
                self.on_request(now, origin, req, body, comm)
            }
            // Through the client's shard's bookkeeping: the parts of an event read merge
            // there, and a request's last answer closes it.
            ShardMsg::Reply { req, reply, last } => self.subs.forward_reply(req, reply, last, comm),
            ShardMsg::Part { req, jobs, workers } => {
                self.on_part(self.cfg.index, req, jobs, workers, comm)
            }
            ShardMsg::WorkAvailable { from } => {
                self.stealing.work_at(from);
                self.maybe_steal(comm);
            }
            ShardMsg::StealRequest { from, offers } => self.on_steal_request(from, offers, comm),
            ShardMsg::StealReply { from, grants, more } => {
                self.on_steal_reply(from, grants, more, comm)
            }
            ShardMsg::Report {
                worker,
                job,
                attempt,
                report,
            } => self.on_report(worker, job, attempt, report, comm),
            ShardMsg::ToWorker { worker, msg } => self.deliver(worker, msg, comm),
            ShardMsg::ClientGone { origin, req } => self.forget_request(origin, req),
            ShardMsg::KeysExpired { keys } => self.on_keys_expired(keys),
        }
        self.end_call(comm);
    }
}
