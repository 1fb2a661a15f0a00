//! [`JobTable`]: the jobs a shard owns, its queue, its idempotency keys, and the assignments
//! agents took into their prefetch queues.
//!
//! The rules it keeps:
//! - A job is *queued* while it is `Pending` and not waiting out a retry's backoff; exactly
//!   the queued jobs are counted in [`JobTable::pending`] and have a live entry in the queue.
//!   A job that leaves that state ([`JobTable::dequeued`]) leaves its entry behind, and
//!   [`JobTable::next_fitting`] drops it when it comes up (lazy deletion: no search).
//! - The queue is indexed by what jobs need (`queue.rs`): a scheduling pass takes the best
//!   job that the capacity at hand can run, by priority, then submission order (the sequence
//!   in the job id), in time independent of how many jobs it cannot run wait ahead of it.
//! - An accepted assignment (exempt from its acknowledgement deadline) is forgotten when its
//!   attempt starts or ends, so no exemption outlives its attempt.
//! - Minted ids are never reused, not even across a restart within one epoch, nor once
//!   their job was deleted (retention): the server's epoch grows at every start.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use hodei_core::ids::{Attempt, JobId};
use hodei_core::job::JobRecord;
use hodei_core::spec::JobSpec;
use hodei_core::state::JobState;
use hodei_core::time::Micros;

use crate::comm::ReqId;
use crate::queue::{Pass, Queue};
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
    /// Attempts that ended before they started and were requeued without using a retry
    /// (see `Shard::attempt_over_after`). Not stored: a restart counts them as retries
    /// again, which never runs a job more often than its policy allows.
    pub(crate) unstarted: u32,
}

impl Job {
    /// A job with no deadline and nobody waiting on it yet.
    pub(crate) fn new(rec: JobRecord) -> Self {
        Self {
            rec,
            claim_deadline: None,
            waiters: Vec::new(),
            followers: Vec::new(),
            unstarted: 0,
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
    /// Queued jobs, plus entries of jobs that left the queue since (dropped when met).
    queue: Queue,
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
    /// Room for `n` more jobs (growing a map of a million jobs rehashes and moves them many
    /// times).
    pub(crate) fn reserve(&mut self, n: usize) {
        self.jobs.reserve(n);
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

    /// Takes a job out of the table (retention deletes final jobs only: they are not
    /// queued, and their attempt's exemption, if any, goes with them).
    pub(crate) fn remove(&mut self, id: JobId) -> Option<Box<Job>> {
        let job = self.jobs.remove(&id)?;
        self.accepted.remove(&(id, job.rec.attempt));
        Some(job)
    }

    /// Whether this table minted `id` (for shard `shard` in `epoch`) or an earlier server
    /// start did: ids are never reused, so such a job existed, whether or not it is here.
    /// Ids of earlier epochs cannot be told apart from ones never minted in them (their
    /// last sequence is not kept), so any of them counts.
    pub(crate) fn minted(&self, id: JobId, shard: u8, epoch: u32) -> bool {
        let e = id.epoch();
        (e > 0 && e < epoch)
            || (e == epoch && id.shard() == shard && (1..=self.next_seq).contains(&id.seq()))
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

    /// Queues a job of this table that just became queued.
    pub(crate) fn enqueue(&mut self, id: JobId) {
        let Some(job) = self.jobs.get(&id) else {
            return;
        };
        let spec = &job.rec.spec;
        self.queue.push((spec.priority, Reverse(id.0), id), spec);
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

    /// The best queued job whose requirements `fits` accepts, in queue order; a pass
    /// (`pass`, see `queue.rs`) passes over every job of a requirement class that `fits`
    /// refused, so call it again with the same pass only while capacity has not grown. The
    /// job's entry leaves the queue; it is still counted as queued until it is
    /// [`JobTable::dequeued`] (assigned).
    pub(crate) fn next_fitting(
        &mut self,
        pass: &mut Pass,
        mut fits: impl FnMut(&JobSpec) -> bool,
    ) -> Option<JobId> {
        while let Some(head) = self.queue.peek(pass) {
            let id = head.0.2;
            match self.jobs.get(&id) {
                Some(job) if Self::is_queued(&job.rec) => {
                    if fits(&job.rec.spec) {
                        self.queue.pop(head);
                        return Some(id);
                    }
                    Queue::pass_over(pass, head);
                }
                _ => self.queue.pop(head), // lazily deleted (cancelled or timed out)
            }
        }
        None
    }

    /// The job that owns an idempotency key, if one does.
    pub(crate) fn by_key(&self, key: &str) -> Option<JobId> {
        self.idem.get(key).copied()
    }

    /// Records that `id` owns `key`.
    pub(crate) fn remember_key(&mut self, key: String, id: JobId) {
        self.idem.insert(key, id);
    }

    /// Forgets `key` if it still names `id` (the job was deleted; a key submitted again
    /// since names a newer job).
    pub(crate) fn forget_key(&mut self, key: &str, id: JobId) {
        if self.idem.get(key) == Some(&id) {
            self.idem.remove(key);
        }
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
