//! What ends an attempt and what follows it: the retry policy with backoff, the deadlines of
//! every intermediate state (assignment not acknowledged, queue timeout, retry wait), and
//! the events every job and worker state change produces.

use hodei_core::event::{Event, EventKind, Subject};
use hodei_core::ids::{Attempt, JobId, WorkerId};
use hodei_core::spec::RetryOn;
use hodei_core::state::{JobState, WorkerState};
use hodei_core::wire::{FromServer, ToAgent};

use crate::comm::{Comm, Reply, StoreOp};
use crate::job_table::JobTable;
use crate::shard::Shard;
use crate::timers::Timer;

/// How many attempts of a job may end before they start without using a retry. Past it,
/// such an attempt counts like any other: a job that no agent ever starts (one whose grants
/// keep being lost, or whose agents keep vanishing before they start it) cannot bounce
/// between the queue and agents forever, and its failure says why.
pub(crate) const MAX_UNSTARTED: u32 = 16;

/// The shard that owns an idempotency key (of `shards`): every submit with that key is routed there, so
/// deduplication needs no shared map.
#[must_use]
pub fn key_shard(key: &str, shards: usize) -> usize {
    // FNV-1a: stable across builds and restarts (std's hasher is randomly seeded).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    #[allow(clippy::cast_possible_truncation)]
    let s = (h % shards.max(1) as u64) as usize;
    s
}

impl Shard {
    /// Records a job's current state as an event (persisted in this turn's batch).
    pub(crate) fn job_event(&mut self, id: JobId, reason: Option<String>, comm: &mut impl Comm) {
        let Some(job) = self.jobs.get(id) else {
            return;
        };
        let kind = EventKind::Job {
            state: job.rec.state,
            attempt: job.rec.attempt,
            worker: job.rec.worker,
        };
        let cid = job.rec.spec.policy.correlation_id.clone();
        self.emit(Subject::Job(id), cid, kind, reason, comm);
    }

    /// Records a worker's state change as an event.
    pub(crate) fn worker_event(
        &mut self,
        id: WorkerId,
        state: WorkerState,
        reason: Option<String>,
        comm: &mut impl Comm,
    ) {
        self.emit(
            Subject::Worker(id),
            String::new(),
            EventKind::Worker { state },
            reason,
            comm,
        );
    }

    /// A report for a stale attempt: recorded, never applied.
    pub(crate) fn stale_event(
        &mut self,
        id: JobId,
        attempt: Attempt,
        worker: WorkerId,
        comm: &mut impl Comm,
    ) {
        let cid = self
            .jobs
            .get(id)
            .map(|j| j.rec.spec.policy.correlation_id.clone())
            .unwrap_or_default();
        let reason = Some(format!(
            "report for attempt {attempt} from {worker} ignored"
        ));
        self.emit(
            Subject::Job(id),
            cid,
            EventKind::StaleReport { attempt, worker },
            reason,
            comm,
        );
    }

    fn emit(
        &mut self,
        subject: Subject,
        correlation_id: String,
        kind: EventKind,
        reason: Option<String>,
        comm: &mut impl Comm,
    ) {
        self.event_seq += 1;
        let ev = Event {
            shard: self.index_u8(),
            seq: self.event_seq,
            at: self.now,
            subject,
            correlation_id,
            kind,
            reason,
        };
        let followers: Vec<_> = self.subs.followers_of(&ev).collect();
        for (origin, req) in followers {
            self.reply_to(
                origin,
                req,
                Reply::Msg(FromServer::Events(vec![ev.clone()])),
                false,
                comm,
            );
        }
        comm.persist(StoreOp::PutEvent(ev));
    }

    /// An attempt ended without success (`class`), or was lost: retry it after a backoff if
    /// the policy allows, else end the job in `final_state`.
    pub(crate) fn attempt_over(
        &mut self,
        id: JobId,
        class: RetryOn,
        final_state: JobState,
        reason: String,
        comm: &mut impl Comm,
    ) {
        self.attempt_over_after(id, class, final_state, reason, 0, comm);
    }

    /// As [`Shard::attempt_over`], but a retry waits at least `min_wait` (an attempt whose
    /// agent may still run it must not be retried before the agent's lease is over).
    ///
    /// Only attempts that started use up retries. An attempt lost while still `Assigned`
    /// (its grant found no worker, its worker was lost or left, its agent was drained before
    /// starting it, it was never acknowledged, or nobody re-attached it after a restart)
    /// goes back to the queue as it is, up to [`MAX_UNSTARTED`] times: the job did
    /// not run, whatever its retry policy. As far as this shard can know: an agent that
    /// started it and lost its `Started` with its connection has had it killed by its lease
    /// before the job is assigned again, so the two never run at once, but such a job may
    /// have run partly once more than its policy says.
    pub(crate) fn attempt_over_after(
        &mut self,
        id: JobId,
        class: RetryOn,
        final_state: JobState,
        reason: String,
        min_wait: u64,
        comm: &mut impl Comm,
    ) {
        let now = self.now;
        let Some(job) = self.jobs.end_attempt(id) else {
            return;
        };
        let never_started = class == RetryOn::LOST && job.rec.state == JobState::Assigned;
        if never_started
            && job.unstarted < MAX_UNSTARTED
            && job.rec.state.can_transition_to(JobState::Pending)
        {
            job.unstarted += 1;
            job.rec.state = JobState::Pending;
            job.rec.worker = None;
            job.rec.error = Some(format!(
                "attempt {} {reason} before it started; queued again, no retry used",
                job.rec.attempt
            ));
            job.claim_deadline = None;
            let at = (min_wait > 0).then(|| now.saturating_add(min_wait));
            job.rec.not_before = at;
            comm.persist(StoreOp::PutJob(job.rec.clone()));
            match at {
                Some(at) => self.timers.arm(at, Timer::Retry(id)),
                None => self.enqueue(id),
            }
            self.job_event(id, Some(reason), comm);
            return;
        }
        // Attempts that used a retry (or the first run): the ones that started, and those
        // past the bound above.
        let counted = job.rec.attempt.0.saturating_sub(job.unstarted);
        let policy = &job.rec.spec.policy;
        let retry = policy.retry_on.contains(class) && counted <= policy.retries;
        if retry && job.rec.state.can_transition_to(JobState::Pending) {
            let delay = policy.backoff_ms(counted + 1, id.0 ^ u64::from(job.rec.attempt.0));
            let at = now.saturating_add(delay.saturating_mul(1_000).max(min_wait));
            job.rec.state = JobState::Pending;
            job.rec.worker = None;
            job.rec.not_before = Some(at);
            job.rec.error = Some(format!(
                "attempt {} {reason}; retry {counted} of {} in {delay} ms",
                job.rec.attempt, policy.retries
            ));
            job.claim_deadline = None;
            comm.persist(StoreOp::PutJob(job.rec.clone()));
            self.timers.arm(at, Timer::Retry(id));
            self.job_event(id, Some(reason), comm);
        } else if job.rec.state.can_transition_to(final_state) {
            let attempt = job.rec.attempt;
            let unstarted = if never_started {
                format!(" ({} attempts never started)", job.unstarted + 1)
            } else {
                String::new()
            };
            job.rec.state = final_state;
            job.rec.finished_at = Some(now);
            job.rec.error = Some(
                if class == RetryOn::LOST || !policy.retry_on.contains(class) {
                    format!(
                        "attempt {attempt} {reason}{unstarted}; no retry ({counted} attempt(s), \
                         retry on: {})",
                        retry_on_names(policy.retry_on)
                    )
                } else {
                    format!("attempt {attempt} {reason}; retries exhausted ({counted} attempts)")
                },
            );
            job.claim_deadline = None;
            comm.persist(StoreOp::PutJob(job.rec.clone()));
            self.job_event(id, Some(reason), comm);
            self.finished(id, comm);
        }
    }

    /// Timer: a retry's backoff is over.
    pub(crate) fn on_retry_due(&mut self, id: JobId) {
        let now = self.now;
        let Some(job) = self.jobs.get_mut(id) else {
            return;
        };
        if job.rec.state != JobState::Pending || job.rec.not_before.is_none_or(|t| t > now) {
            return;
        }
        job.rec.not_before = None;
        self.enqueue(id);
        self.want_schedule();
    }

    /// Timer: the agent did not acknowledge (start) an assignment in time.
    pub(crate) fn on_ack_due(&mut self, id: JobId, attempt: Attempt, comm: &mut impl Comm) {
        // Accepted into the agent's prefetch queue: it starts when a slot there frees, and
        // the worker's heartbeats and disconnect timers cover the agent meanwhile.
        let accepted = self.jobs.forget_accepted(id, attempt);
        let Some(job) = self.jobs.get(id) else {
            return;
        };
        if accepted || job.rec.state != JobState::Assigned || job.rec.attempt != attempt {
            return;
        }
        if let Some(w) = job.rec.worker {
            self.send_worker(w, ToAgent::Abandon { job: id, attempt }, comm);
        }
        let secs = self.cfg.assign_timeout / 1_000_000;
        // The agent may be alive but slow, or cut off with the Assign on its way: the
        // Abandon reaches it, or its lease kills the attempt, within the disconnect grace.
        let wait = self.cfg.disconnect_grace;
        self.attempt_over_after(
            id,
            RetryOn::LOST,
            JobState::Failed,
            format!("was not acknowledged by its agent within {secs} s"),
            wait,
            comm,
        );
        self.want_schedule();
    }

    /// Timer: a job that never started reached its queue timeout.
    pub(crate) fn on_queue_due(&mut self, id: JobId, comm: &mut impl Comm) {
        let now = self.now;
        let Some(job) = self.jobs.get_mut(id) else {
            return;
        };
        let Some(limit) = job.rec.spec.policy.queue_timeout_ms else {
            return;
        };
        let state = job.rec.state;
        if job.rec.ran
            || !matches!(state, JobState::Pending | JobState::Assigned)
            || job.rec.created_at + limit * 1_000 > now
        {
            return;
        }
        let (attempt, worker) = (job.rec.attempt, job.rec.worker);
        let queued = JobTable::is_queued(&job.rec);
        job.rec.state = JobState::TimedOut;
        job.rec.finished_at = Some(now);
        job.rec.worker = None;
        let reason = format!(
            "queue timeout: not started within {} ms of submission",
            limit
        );
        job.rec.error = Some(reason.clone());
        comm.persist(StoreOp::PutJob(job.rec.clone()));
        if queued {
            self.jobs.dequeued();
        }
        if let (JobState::Assigned, Some(w)) = (state, worker) {
            self.send_worker(w, ToAgent::Abandon { job: id, attempt }, comm);
        }
        self.job_event(id, Some(reason), comm);
        self.finished(id, comm);
    }

    /// Arms the deadlines a new or restored job needs.
    pub(crate) fn arm_job_timers(&mut self, id: JobId) {
        let Some(job) = self.jobs.get(id) else {
            return;
        };
        if let (Some(limit), false, false) = (
            job.rec.spec.policy.queue_timeout_ms,
            job.rec.ran,
            job.rec.state.is_final(),
        ) {
            self.timers
                .arm(job.rec.created_at + limit * 1_000, Timer::Queue(id));
        }
        if let (JobState::Pending, Some(at)) = (job.rec.state, job.rec.not_before) {
            self.timers.arm(at, Timer::Retry(id));
        }
    }
}

fn retry_on_names(r: RetryOn) -> String {
    let n = r.names();
    if n.is_empty() {
        "none".to_owned()
    } else {
        n.join(",")
    }
}
