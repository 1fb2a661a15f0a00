//! At a job's owner: what workers report about its attempts (started, output, finished,
//! lost, claimed after a reconnect), fenced by attempt, and the messages back to them.

use hodei_core::ids::{Attempt, JobId, WorkerId};
use hodei_core::spec::RetryOn;
use hodei_core::state::JobState;
use hodei_core::time::Micros;
use hodei_core::wire::{FromServer, ToAgent};

use crate::comm::{Comm, Reply, Report, ShardMsg, StoreOp};
use crate::shard::Shard;
use crate::timers::Timer;

impl Shard {
    /// Sends to an agent through the shard that owns its worker.
    pub(crate) fn send_worker(&mut self, worker: WorkerId, msg: ToAgent, comm: &mut impl Comm) {
        let owner = worker.owner(self.cfg.shards);
        if owner == self.cfg.index {
            self.deliver(worker, msg, comm);
        } else {
            comm.send_shard(owner, ShardMsg::ToWorker { worker, msg });
        }
    }

    /// Routes a report about an attempt to the job's owner.
    pub(crate) fn report(
        &mut self,
        worker: WorkerId,
        job: JobId,
        attempt: Attempt,
        report: Report,
        comm: &mut impl Comm,
    ) {
        let owner = job.owner(self.cfg.shards);
        if owner == self.cfg.index {
            self.on_report(worker, job, attempt, report, comm);
        } else {
            comm.send_shard(
                owner,
                ShardMsg::Report {
                    worker,
                    job,
                    attempt,
                    report,
                },
            );
        }
    }

    /// Moves a job to `Running` (its agent started it).
    fn mark_running(&mut self, id: JobId, at: Micros, comm: &mut impl Comm) {
        let Some(rec) = self.jobs.mark_running(id, at) else {
            return;
        };
        comm.persist(StoreOp::PutJob(rec.clone()));
        self.job_event(id, None, comm);
    }

    /// Owner: apply what a worker says about an attempt, if it is the current one.
    pub(crate) fn on_report(
        &mut self,
        worker: WorkerId,
        id: JobId,
        attempt: Attempt,
        report: Report,
        comm: &mut impl Comm,
    ) {
        let Some(job) = self.jobs.get_mut(id) else {
            // Unknown job (should not happen): make the agent drop it.
            self.send_worker(worker, ToAgent::Abandon { job: id, attempt }, comm);
            return;
        };
        let current = job.rec.attempt == attempt && job.rec.worker == Some(worker);
        if !current {
            // A stale attempt: fenced. Recorded as an event, never applied.
            if !matches!(report, Report::Lost { .. }) {
                self.stale_event(id, attempt, worker, comm);
                self.send_worker(worker, ToAgent::Abandon { job: id, attempt }, comm);
            }
            return;
        }
        let state = job.rec.state;
        match report {
            Report::Claim => {
                if state.is_on_worker() {
                    job.claim_deadline = None;
                    let output_end = job.rec.output_end;
                    self.send_worker(
                        worker,
                        ToAgent::Resume {
                            job: id,
                            attempt,
                            output_end,
                        },
                        comm,
                    );
                } else if state.is_final() {
                    // Its result is already durable (or it was cancelled meanwhile): the
                    // agent stops it if still running and forgets it.
                    self.send_worker(worker, ToAgent::FinishedAck { job: id, attempt }, comm);
                } else {
                    self.send_worker(worker, ToAgent::Abandon { job: id, attempt }, comm);
                }
            }
            Report::Started { at } => self.mark_running(id, at, comm),
            Report::Accepted => {
                if state == JobState::Assigned {
                    self.jobs.accept(id, attempt);
                }
            }
            Report::Output { offset, chunks } => {
                // Both numbers come from the agent: a batch whose end does not fit a u64
                // cannot be stored anywhere, and is dropped unanswered.
                let end = chunks
                    .iter()
                    .try_fold(offset, |end, c| end.checked_add(c.data.len() as u64));
                let Some(end) = end else {
                    return;
                };
                let len = end - offset;
                // Only contiguous output is stored; a batch already stored is acknowledged
                // again, a gap waits for the agent to resend from `output_end`.
                if offset == job.rec.output_end && len > 0 {
                    job.rec.output_end = end;
                    comm.persist(StoreOp::PutOutput {
                        job: id,
                        attempt,
                        offset,
                        chunks: chunks.clone(),
                    });
                    let followers = job.followers.clone();
                    for (origin, req) in followers {
                        self.reply_to(
                            origin,
                            req,
                            Reply::Msg(FromServer::Log(chunks.clone())),
                            false,
                            comm,
                        );
                    }
                }
                let Some(job) = self.jobs.get(id) else {
                    return;
                };
                let output_end = job.rec.output_end;
                if end <= output_end {
                    self.send_worker(
                        worker,
                        ToAgent::OutputAck {
                            job: id,
                            attempt,
                            output_end,
                        },
                        comm,
                    );
                }
            }
            Report::Finished { outcome, at } => {
                if state.is_final() {
                    self.send_worker(worker, ToAgent::FinishedAck { job: id, attempt }, comm);
                    return;
                }
                if state == JobState::Assigned
                    && !matches!(
                        outcome,
                        hodei_core::job::Outcome::SpawnFailed(_)
                            | hodei_core::job::Outcome::Drained
                    )
                {
                    // Its Started was lost with a connection: it did run.
                    self.mark_running(id, at, comm);
                }
                let Some(job) = self.jobs.get_mut(id) else {
                    return;
                };
                job.rec.exit_code = outcome.exit_code();
                job.claim_deadline = None;
                let next = outcome.state();
                match outcome.retry_class() {
                    Some(class) => {
                        let reason = outcome.error().unwrap_or_default();
                        self.attempt_over(id, class, next, reason, comm);
                    }
                    None if job.rec.state.can_transition_to(next) => {
                        job.rec.state = next;
                        job.rec.error = outcome.error();
                        job.rec.finished_at = Some(at);
                        comm.persist(StoreOp::PutJob(job.rec.clone()));
                        self.job_event(id, outcome.error(), comm);
                        self.finished(id, comm);
                    }
                    None => {}
                }
                self.send_worker(worker, ToAgent::FinishedAck { job: id, attempt }, comm);
                self.want_schedule();
            }
            Report::Lost { reason } => {
                if state.is_on_worker() {
                    self.attempt_over(
                        id,
                        RetryOn::LOST,
                        JobState::Failed,
                        format!("lost: {reason}"),
                        comm,
                    );
                    self.want_schedule();
                }
            }
        }
    }

    /// Owner: arms the acknowledgement deadline of a fresh assignment.
    pub(crate) fn arm_ack(&mut self, id: JobId, attempt: Attempt) {
        let at = self.now + self.cfg.assign_timeout;
        self.timers.arm(at, Timer::Ack(id, attempt));
    }
}
