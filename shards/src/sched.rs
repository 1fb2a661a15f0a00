//! Local scheduling: placing pending jobs on this shard's free workers.
//!
//! Dispatch is event-driven: [`Shard::schedule`] runs at the end of every call that queued a
//! job or freed capacity (see [`Shard::want_schedule`]), never by polling. What it cannot
//! place here is offered to the other shards (see `stealing.rs`).

use hodei_core::ids::{JobId, WorkerId};
use hodei_core::spec::JobSpec;
use hodei_core::state::JobState;
use hodei_core::wire::ToAgent;

use crate::comm::{Comm, Grant, Report, ShardMsg, StoreOp};
use crate::queue::Pass;
use crate::shard::Shard;

/// Does a job fit this much free capacity?
#[must_use]
pub(crate) fn fits(
    spec: &JobSpec,
    slots: u32,
    cpus: u32,
    mem: u64,
    labels: &[(String, String)],
) -> bool {
    slots >= 1
        && spec.cpus <= cpus
        && spec.memory <= mem
        && spec.labels.iter().all(|l| labels.contains(l))
}

impl Shard {
    /// Moves a job of this shard to `Assigned` on `worker` with a new attempt, durably.
    pub(crate) fn assign(
        &mut self,
        id: JobId,
        worker: WorkerId,
        comm: &mut impl Comm,
    ) -> Option<Grant> {
        let job = self.jobs.get_mut(id)?;
        if !job.rec.state.can_transition_to(JobState::Assigned) {
            return None;
        }
        job.rec.state = JobState::Assigned;
        job.rec.attempt = job.rec.attempt.next();
        job.rec.worker = Some(worker);
        job.rec.output_end = 0;
        job.rec.started_at = None;
        job.rec.exit_code = None;
        job.rec.error = None;
        job.rec.not_before = None;
        comm.persist(StoreOp::PutJob(job.rec.clone()));
        let grant = Grant {
            job: id,
            attempt: job.rec.attempt,
            worker,
            spec: job.rec.spec.clone(),
        };
        self.jobs.dequeued();
        self.job_event(id, None, comm);
        self.arm_ack(id, grant.attempt);
        Some(grant)
    }

    /// Hands a granted attempt to a worker of this shard, or reports it lost to its owner.
    pub(crate) fn start_grant(&mut self, g: Grant, comm: &mut impl Comm) {
        match self.workers.take_grant(&g) {
            Some(conn) => comm.send_agent(
                conn,
                ToAgent::Assign {
                    job: g.job,
                    attempt: g.attempt,
                    spec: g.spec,
                    // Filled in by the server as the message leaves: values never enter the
                    // shard.
                    secrets: Vec::new(),
                },
            ),
            None => {
                let reason = "worker no longer available for the grant".to_owned();
                self.report(g.worker, g.job, g.attempt, Report::Lost { reason }, comm);
            }
        }
    }

    /// Places pending jobs on this shard's free workers, then looks for work elsewhere or
    /// tells the others about work left here. One pass over the queue (see `queue.rs`): jobs
    /// no free worker fits are passed over a requirement class at a time, so the jobs behind
    /// them are found whatever their number.
    pub(crate) fn schedule(&mut self, comm: &mut impl Comm) {
        let mut pass = Pass::default();
        while !self.workers.free_is_empty() {
            let workers = &self.workers;
            let mut worker = None;
            // The least loaded fitting worker; among equals, the one idle longest (the free
            // set's order).
            let fitting = self.jobs.next_fitting(&mut pass, |spec| {
                worker = workers.first_fit(spec);
                worker.is_some()
            });
            let (Some(id), Some(worker)) = (fitting, worker) else {
                break;
            };
            if let Some(g) = self.assign(id, worker, comm) {
                self.start_grant(g, comm);
            }
        }
        self.after_schedule(comm);
    }

    fn after_schedule(&mut self, comm: &mut impl Comm) {
        // Told once per turn that queued something, so other shards learn of new work
        // (perhaps for labels they now have) without a message per job.
        if self.stealing.take_advert(self.jobs.pending()) {
            for s in (0..self.cfg.shards).filter(|s| *s != self.cfg.index) {
                comm.send_shard(
                    s,
                    ShardMsg::WorkAvailable {
                        from: self.cfg.index,
                    },
                );
            }
        }
        self.maybe_steal(comm);
    }
}
