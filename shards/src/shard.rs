//! The [`Shard`] struct: what one shard owns, and the entry points the driver calls.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
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
use hodei_core::wire::Resources;

use crate::comm::{ConnId, Offer, ReqId};

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
        }
    }
}

/// A job this shard owns, with the bookkeeping that is not stored.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) rec: JobRecord,
    /// After a restart: requeue if no agent claims it by then.
    pub(crate) claim_deadline: Option<Micros>,
    /// Clients waiting for the final state: (origin shard, request).
    pub(crate) waiters: Vec<(usize, ReqId)>,
    /// Clients following the output.
    pub(crate) followers: Vec<(usize, ReqId)>,
}

/// A worker this shard owns.
#[derive(Debug)]
pub(crate) struct Worker {
    pub(crate) id: WorkerId,
    pub(crate) conn: Option<ConnId>,
    pub(crate) state: WorkerState,
    pub(crate) hostname: String,
    pub(crate) res: Resources,
    pub(crate) free_slots: u32,
    pub(crate) free_cpus: u32,
    pub(crate) free_mem: u64,
    /// Attempts it holds, with what they reserved.
    pub(crate) held: crate::holdings::Holdings,
    pub(crate) last_seen: Micros,
    pub(crate) disconnected_at: Option<Micros>,
    /// When it was last given a job (a shard-local counter), to rotate among equals.
    pub(crate) last_assigned: u64,
    /// Its key in [`Shard::free`], while it is there.
    pub(crate) free_key: Option<FreeKey>,
    /// Capacity offered to an outstanding steal request (slots, CPUs, memory).
    pub(crate) offered: (u32, u32, u64),
}

/// Order of the free set: most free slots first, then idle longest, then id. The first
/// worker that fits a job is the least loaded one, found in O(log n) for a job without
/// special requirements.
pub(crate) type FreeKey = (Reverse<u32>, u64, WorkerId);

/// Timer kinds; each is checked against current state when it fires (lazy deletion).
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

/// One shard: its jobs, its queue, its workers. See the crate docs.
#[derive(Debug)]
pub struct Shard {
    pub(crate) cfg: ShardConfig,
    /// Boxed: a map stores its values inline in up to twice as many buckets as entries, and a
    /// job is a few hundred bytes (measured: 1M queued jobs took 1.29 GiB unboxed).
    pub(crate) jobs: HashMap<JobId, Box<Job>>,
    /// Pending jobs by (priority, submission order); entries whose job is no longer pending
    /// are skipped when popped.
    pub(crate) queue: BinaryHeap<(i32, Reverse<u64>, JobId)>,
    pub(crate) pending: usize,
    pub(crate) next_job_seq: u64,
    pub(crate) next_worker_seq: u64,
    pub(crate) workers: HashMap<WorkerId, Worker>,
    pub(crate) conns: HashMap<ConnId, WorkerId>,
    /// Ready workers with a free slot: the only candidates for scheduling.
    pub(crate) free: BTreeSet<FreeKey>,
    pub(crate) timers: BinaryHeap<Reverse<(Micros, Timer)>>,
    /// Other shards that said they have queued work.
    pub(crate) remote_work: Vec<bool>,
    /// Jobs were queued since we last told the other shards about our queue.
    pub(crate) queued_since_advert: bool,
    /// Shards whose queued work did not fit our free capacity at the last try; asked again
    /// when our capacity grows.
    pub(crate) unfit_at: Vec<bool>,
    /// Outstanding steal request: target shard and the capacity reserved for it.
    pub(crate) steal: Option<(usize, Vec<Offer>)>,
    pub(crate) steal_cursor: usize,
    /// Capacity grew while a steal request was out: its empty answer is no reason to stop
    /// asking.
    pub(crate) grew_during_steal: bool,
    /// Counts assignments, for [`Worker::last_assigned`].
    pub(crate) assign_seq: u64,
    /// Listing fan-outs waiting for parts: request → (parts missing, jobs, workers).
    pub(crate) gathers: HashMap<ReqId, Gather>,
    /// The time of the call being handled (set by every `handle_*`).
    pub(crate) now: Micros,
    /// Last event number of this shard.
    pub(crate) event_seq: u64,
    /// Clients following events: (origin shard, request, only this job).
    pub(crate) event_followers: Vec<(usize, ReqId, Option<JobId>)>,
    /// Event reads fanned out from here: shards that have not ended their part yet.
    pub(crate) event_streams: HashMap<ReqId, usize>,
    /// `SubmitWait` requests (client shard, request) still open: how many of their jobs are
    /// not final yet.
    pub(crate) wait_groups: HashMap<(usize, ReqId), usize>,
    /// Assignments their agent accepted into its prefetch queue: their `Ack` timer does not
    /// fail them. Each entry goes when its attempt starts or ends, or when that timer fires,
    /// whichever comes first.
    pub(crate) accepted: HashSet<(JobId, Attempt)>,
    /// Idempotency keys this shard owns (see `lifecycle::key_shard`).
    /// (A BTreeMap: the keys are user strings, which must not be able to choose hash collisions.)
    pub(crate) idem: std::collections::BTreeMap<String, JobId>,
}

#[derive(Debug, Default)]
pub(crate) struct Gather {
    pub(crate) missing: usize,
    pub(crate) jobs: Vec<JobRecord>,
    pub(crate) workers: Vec<hodei_core::job::WorkerInfo>,
    pub(crate) is_workers: bool,
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
            remote_work: vec![false; cfg.shards],
            unfit_at: vec![false; cfg.shards],
            cfg,
            jobs: HashMap::default(),
            queue: BinaryHeap::new(),
            pending: 0,
            next_job_seq: 0,
            next_worker_seq: 0,
            workers: HashMap::default(),
            conns: HashMap::default(),
            free: BTreeSet::new(),
            timers: BinaryHeap::new(),
            queued_since_advert: false,
            steal: None,
            steal_cursor: 0,
            grew_during_steal: false,
            assign_seq: 0,
            gathers: HashMap::default(),
            now,
            event_seq,
            event_followers: Vec::new(),
            event_streams: HashMap::default(),
            wait_groups: HashMap::default(),
            accepted: HashSet::default(),
            idem: std::collections::BTreeMap::new(),
        };
        let jobs = jobs.into_iter();
        // Reserve once: growing a map of a million jobs rehashes and moves them many times.
        shard.jobs.reserve(jobs.size_hint().0);
        shard.queue.reserve(jobs.size_hint().0);
        for rec in jobs {
            if let Some(key) = &rec.spec.policy.idempotency_key
                && crate::lifecycle::key_shard(key, shard.cfg.shards) == shard.cfg.index
            {
                shard.idem.insert(key.clone(), rec.id);
            }
            if rec.id.owner(shard.cfg.shards) != shard.cfg.index {
                continue;
            }
            let id = rec.id;
            let state = rec.state;
            let mut job = Job {
                rec,
                claim_deadline: None,
                waiters: Vec::new(),
                followers: Vec::new(),
            };
            if state.is_on_worker() {
                let deadline = now + shard.cfg.reattach_grace;
                job.claim_deadline = Some(deadline);
                shard.timers.push(Reverse((deadline, Timer::Claim(id))));
            }
            let prio = job.rec.spec.priority;
            let waiting = job.rec.not_before.is_some();
            shard.jobs.insert(id, Box::new(job));
            if state == hodei_core::state::JobState::Pending && !waiting {
                shard.enqueue(id, prio);
            }
            shard.arm_job_timers(id);
        }
        shard
    }

    /// Call once after [`Shard::new`]: schedules restored jobs and tells the other shards
    /// about the ones left queued.
    pub fn handle_start(&mut self, comm: &mut impl crate::comm::Comm) {
        self.schedule(comm);
    }

    /// This shard's index.
    #[must_use]
    pub const fn index(&self) -> usize {
        self.cfg.index
    }

    /// The earliest time [`Shard::handle_timeout`] has work to do.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Micros> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    /// Jobs this shard owns (for tests and invariant checks).
    pub fn jobs(&self) -> impl Iterator<Item = &JobRecord> {
        self.jobs.values().map(|j| &j.rec)
    }

    /// Jobs waiting in the queue.
    #[must_use]
    pub const fn pending(&self) -> usize {
        self.pending
    }

    /// Workers ready with a free slot.
    pub fn free_workers(
        &self,
    ) -> impl Iterator<Item = (WorkerId, u32, u32, u64, &[(String, String)])> {
        self.free.iter().filter_map(|(_, _, w)| {
            self.workers.get(w).map(|wk| {
                (
                    wk.id,
                    wk.free_slots,
                    wk.free_cpus,
                    wk.free_mem,
                    wk.res.labels.as_slice(),
                )
            })
        })
    }

    /// Assignments exempted from the assign timeout because their agent queued them (for
    /// invariant checks: each must still be `Assigned` in that attempt).
    pub fn accepted(&self) -> impl Iterator<Item = (JobId, Attempt)> + '_ {
        self.accepted.iter().copied()
    }

    /// Attempts each worker of this shard holds (for invariant checks).
    pub fn held(&self) -> impl Iterator<Item = (WorkerId, JobId, Attempt)> + '_ {
        self.workers
            .values()
            .flat_map(|w| w.held.values().map(move |h| (w.id, h.job, h.attempt)))
    }

    pub(crate) fn enqueue(&mut self, id: JobId, priority: i32) {
        self.queue.push((priority, Reverse(id.0), id));
        self.pending += 1;
        self.queued_since_advert = true;
    }

    pub(crate) fn mint_job(&mut self) -> JobId {
        loop {
            self.next_job_seq += 1;
            #[allow(clippy::cast_possible_truncation)]
            // shard counts are capped at 256 by the driver
            let id = JobId::new(self.cfg.index as u8, self.cfg.epoch, self.next_job_seq);
            // A restart within the same epoch (simulations) must not reuse an id.
            if !self.jobs.contains_key(&id) {
                return id;
            }
        }
    }

    pub(crate) fn mint_worker(&mut self) -> WorkerId {
        self.next_worker_seq += 1;
        #[allow(clippy::cast_possible_truncation)]
        WorkerId::new(self.cfg.index as u8, self.cfg.epoch, self.next_worker_seq)
    }
}

impl Shard {
    /// A message from another shard.
    pub fn handle_shard(
        &mut self,
        now: Micros,
        msg: crate::comm::ShardMsg,
        comm: &mut impl crate::comm::Comm,
    ) {
        use crate::comm::ShardMsg;
        match msg {
            ShardMsg::Request { origin, req, body } => {
                self.on_request(now, origin, req, body, comm)
            }
            ShardMsg::Reply { req, reply, last } => comm.reply(req, reply, last),
            ShardMsg::Part { req, jobs, workers } => {
                self.on_part(self.cfg.index, req, jobs, workers, comm)
            }
            ShardMsg::WorkAvailable { from } => {
                if let Some(flag) = self.remote_work.get_mut(from) {
                    *flag = true;
                }
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
            ShardMsg::ClientGone { origin, req } => {
                self.event_followers
                    .retain(|(o, r, _)| (*o, *r) != (origin, req));
            }
        }
    }
}
