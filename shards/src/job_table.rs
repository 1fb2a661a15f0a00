//! [`JobTable`]: the jobs a shard owns, its queue, its idempotency keys, and the assignments
//! agents took into their prefetch queues.
//!
//! The rules it keeps:
//! - A job is *queued* while it is `Pending` and not waiting out a retry's backoff; exactly
//!   the queued jobs are counted in [`JobTable::pending`] and have a live entry in the heap.
//!   A job that leaves that state ([`JobTable::dequeued`]) leaves its entry behind, and
//!   [`JobTable::pop_pending`] skips it (lazy deletion: no search of the heap).
//! - The queue pops by priority, then submission order (the sequence in the job id).
//! - An accepted assignment (exempt from its acknowledgement deadline) is forgotten when its
//!   attempt starts or ends, so no exemption outlives its attempt.
//! - Minted ids are never reused, not even across a restart within one epoch.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use hodei_core::ids::{Attempt, JobId};
use hodei_core::job::JobRecord;
use hodei_core::state::JobState;
use hodei_core::time::Micros;

use crate::comm::ReqId;
use crate::shard::{HashMap, HashSet};

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

impl Job {
    /// A job with no deadline and nobody waiting on it yet.
    pub(crate) fn new(rec: JobRecord) -> Self {
        Self {
            rec,
            claim_deadline: None,
            waiters: Vec::new(),
            followers: Vec::new(),
        }
    }
}

/// A heap entry: priority, then submission order (lower sequence first), then the job.
pub(crate) type QueueKey = (i32, Reverse<u64>, JobId);

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct JobTable {
    /// Boxed: a map stores its values inline in up to twice as many buckets as entries, and a
    /// job is a few hundred bytes (measured: 1M queued jobs took 1.29 GiB unboxed).
    jobs: HashMap<JobId, Box<Job>>,
    /// Queued jobs, plus entries of jobs that left the queue since (skipped when popped).
    queue: BinaryHeap<QueueKey>,
    /// Queued jobs.
    pending: usize,
    next_seq: u64,
    /// Idempotency keys this shard owns (see `lifecycle::key_shard`). A BTreeMap: the keys
    /// are user strings, which must not be able to choose hash collisions.
    idem: BTreeMap<String, JobId>,
    /// Assignments their agent accepted into its prefetch queue: their `Ack` timer does not
    /// fail them.
    accepted: HashSet<(JobId, Attempt)>,
}

impl JobTable {
    /// Room for `n` more jobs, in the map and in the queue (growing a map of a million jobs
    /// rehashes and moves them many times).
    pub(crate) fn reserve(&mut self, n: usize) {
        self.jobs.reserve(n);
        self.queue.reserve(n);
    }

    /// A fresh id for a job of shard `shard`.
    pub(crate) fn mint(&mut self, shard: u8, epoch: u32) -> JobId {
        loop {
            self.next_seq += 1;
            let id = JobId::new(shard, epoch, self.next_seq);
            // A restart within the same epoch (simulations) must not reuse an id.
            if !self.jobs.contains_key(&id) {
                return id;
            }
        }
    }

    /// Adds a job (not queued: see [`JobTable::enqueue`]).
    pub(crate) fn insert(&mut self, job: Job) {
        self.jobs.insert(job.rec.id, Box::new(job));
    }

    pub(crate) fn get(&self, id: JobId) -> Option<&Job> {
        self.jobs.get(&id).map(Box::as_ref)
    }

    pub(crate) fn get_mut(&mut self, id: JobId) -> Option<&mut Job> {
        self.jobs.get_mut(&id).map(Box::as_mut)
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values().map(Box::as_ref)
    }

    /// Is this job queued (see the module docs)? Asked before the state change that takes a
    /// job out of the queue, to know whether [`JobTable::dequeued`] applies.
    pub(crate) fn is_queued(rec: &JobRecord) -> bool {
        rec.state == JobState::Pending && rec.not_before.is_none()
    }

    /// Queues a job that just became queued.
    pub(crate) fn enqueue(&mut self, id: JobId, priority: i32) {
        self.queue.push((priority, Reverse(id.0), id));
        self.pending += 1;
    }

    /// A queued job stopped being queued (assigned, cancelled, timed out in the queue); its
    /// heap entry stays behind.
    pub(crate) fn dequeued(&mut self) {
        self.pending = self.pending.saturating_sub(1);
    }

    /// Queued jobs.
    pub(crate) const fn pending(&self) -> usize {
        self.pending
    }

    /// Takes the first queued job off the heap, skipping entries of jobs that left the queue.
    /// The job is still counted as queued: it is either [`JobTable::dequeued`] (placed) or
    /// put back with [`JobTable::put_back`] (skipped).
    pub(crate) fn pop_pending(&mut self) -> Option<(QueueKey, &Job)> {
        while let Some(key) = self.queue.pop() {
            match self.jobs.get(&key.2) {
                Some(job) if job.rec.state == JobState::Pending => return Some((key, job)),
                _ => {} // lazily deleted (cancelled or already assigned)
            }
        }
        None
    }

    /// Puts popped jobs that fit nowhere back on the heap.
    pub(crate) fn put_back(&mut self, skipped: Vec<QueueKey>) {
        self.queue.extend(skipped);
    }

    /// The job that owns an idempotency key, if one does.
    pub(crate) fn by_key(&self, key: &str) -> Option<JobId> {
        self.idem.get(key).copied()
    }

    /// Records that `id` owns `key`.
    pub(crate) fn remember_key(&mut self, key: String, id: JobId) {
        self.idem.insert(key, id);
    }

    /// The agent queued an assignment for a free slot: its `Ack` deadline no longer fails it.
    pub(crate) fn accept(&mut self, id: JobId, attempt: Attempt) {
        self.accepted.insert((id, attempt));
    }

    /// Forgets an exemption (its `Ack` timer fired); true if there was one.
    pub(crate) fn forget_accepted(&mut self, id: JobId, attempt: Attempt) -> bool {
        self.accepted.remove(&(id, attempt))
    }

    pub(crate) fn accepted(&self) -> impl Iterator<Item = (JobId, Attempt)> + '_ {
        self.accepted.iter().copied()
    }

    /// Moves a job to `Running` (its agent started it at `at`), dropping its attempt's
    /// exemption, which has no use any more. `None` if the job cannot run now.
    pub(crate) fn mark_running(&mut self, id: JobId, at: Micros) -> Option<&JobRecord> {
        let job = self.jobs.get_mut(&id)?;
        if !job.rec.state.can_transition_to(JobState::Running) {
            return None;
        }
        self.accepted.remove(&(id, job.rec.attempt));
        job.rec.state = JobState::Running;
        job.rec.started_at = Some(at);
        job.rec.ran = true;
        Some(&job.rec)
    }

    /// A job whose current attempt is over, for its next state to be set: the attempt's
    /// exemption goes now (its `Ack` timer may have fired already).
    pub(crate) fn end_attempt(&mut self, id: JobId) -> Option<&mut Job> {
        let job = self.jobs.get_mut(&id)?;
        self.accepted.remove(&(id, job.rec.attempt));
        Some(job)
    }
}
