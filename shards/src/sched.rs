//! Scheduling: placing pending jobs on free workers, locally and by work stealing.
//!
//! Dispatch is event-driven: [`Shard::schedule`] runs after every event that adds a job or
//! frees capacity, never on a timer. A shard whose queue holds jobs it cannot place tells the
//! others ([`ShardMsg::WorkAvailable`]); a shard with free capacity then offers it
//! ([`ShardMsg::StealRequest`]), reserving it so it is never offered twice, and the owner
//! assigns jobs to the offered workers durably before granting them.

use hodei_core::ids::{Attempt, JobId, WorkerId};
use hodei_core::spec::JobSpec;
use hodei_core::state::{JobState, WorkerState};
use hodei_core::wire::{HeldJob, ToAgent};

use crate::comm::{Comm, Grant, Offer, Report, ShardMsg, StoreOp};
use crate::shard::{Shard, Worker};

/// How many queued jobs that fit no free worker one scheduling pass looks past, so a huge
/// queue of unplaceable jobs does not make every event O(queue).
const MAX_SKIPS: usize = 256;

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

impl Worker {
    pub(crate) fn fits(&self, spec: &JobSpec) -> bool {
        fits(
            spec,
            self.free_slots,
            self.free_cpus,
            self.free_mem,
            &self.res.labels,
        )
    }

    pub(crate) fn reserve(&mut self, held: HeldJob) {
        self.held.insert(held);
        self.recompute();
    }

    /// Releases an attempt's reservation; false if it did not hold that attempt.
    pub(crate) fn release(&mut self, job: JobId, attempt: Attempt) -> bool {
        match self.held.get(&job) {
            Some(h) if h.attempt == attempt => {
                self.held.remove(&job);
                self.recompute();
                true
            }
            _ => false,
        }
    }

    /// Free capacity is derived, never adjusted in place: what the agent offers, minus the
    /// attempts it holds, minus what is offered to an outstanding steal. (Adding back what
    /// was taken double-counted after a re-registration with more held attempts than slots.)
    pub(crate) fn recompute(&mut self) {
        // Past what the types hold, a worker is full anyway.
        let held = u32::try_from(self.held.len()).unwrap_or(u32::MAX);
        let cpus = u32::try_from(self.held.cpus()).unwrap_or(u32::MAX);
        let mem = u64::try_from(self.held.memory()).unwrap_or(u64::MAX);
        let (os, oc, om) = self.offered;
        self.free_slots = self.res.slots.saturating_sub(held).saturating_sub(os);
        self.free_cpus = self.res.cpus.saturating_sub(cpus).saturating_sub(oc);
        self.free_mem = self.res.memory.saturating_sub(mem).saturating_sub(om);
    }
}

impl Shard {
    /// Our capacity grew: shards whose work did not fit before are worth asking again.
    pub(crate) fn capacity_grew(&mut self) {
        if self.steal.is_some() {
            self.grew_during_steal = true;
        }
        for (remote, unfit) in self.remote_work.iter_mut().zip(self.unfit_at.iter_mut()) {
            *remote |= std::mem::take(unfit);
        }
    }

    /// Keeps the free set and Ready/Busy in step with a worker's capacity.
    pub(crate) fn refresh_worker(&mut self, id: WorkerId) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        let target = match w.state {
            WorkerState::Ready | WorkerState::Busy if w.free_slots == 0 => WorkerState::Busy,
            WorkerState::Ready | WorkerState::Busy => WorkerState::Ready,
            other => other,
        };
        if target != w.state && w.state.can_transition_to(target) {
            w.state = target;
        }
        if let Some(old) = w.free_key.take() {
            self.free.remove(&old);
        }
        if w.state.accepts_jobs() && w.free_slots > 0 && w.conn.is_some() {
            let key = (std::cmp::Reverse(w.free_slots), w.last_assigned, id);
            w.free_key = Some(key);
            self.free.insert(key);
        }
    }

    /// Moves a job of this shard to `Assigned` on `worker` with a new attempt, durably.
    fn assign(&mut self, id: JobId, worker: WorkerId, comm: &mut impl Comm) -> Option<Grant> {
        let job = self.jobs.get_mut(&id)?;
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
        self.pending = self.pending.saturating_sub(1);
        let grant = Grant {
            job: id,
            attempt: job.rec.attempt,
            worker,
            spec: job.rec.spec.clone(),
        };
        self.job_event(id, None, comm);
        self.arm_ack(id, grant.attempt);
        Some(grant)
    }

    /// Hands a granted attempt to a worker of this shard, or reports it lost to its owner.
    pub(crate) fn start_grant(&mut self, g: Grant, comm: &mut impl Comm) {
        let accepted = match self.workers.get_mut(&g.worker) {
            Some(w) if w.state.accepts_jobs() && w.conn.is_some() && w.fits(&g.spec) => {
                self.assign_seq += 1;
                w.last_assigned = self.assign_seq;
                w.reserve(HeldJob {
                    job: g.job,
                    attempt: g.attempt,
                    cpus: g.spec.cpus,
                    memory: g.spec.memory,
                });
                w.conn.map(|c| (c, w.id))
            }
            _ => None,
        };
        match accepted {
            Some((conn, wid)) => {
                comm.send_agent(
                    conn,
                    ToAgent::Assign {
                        job: g.job,
                        attempt: g.attempt,
                        spec: g.spec,
                        // Filled in by the server as the message leaves: values never
                        // enter the shard.
                        secrets: Vec::new(),
                    },
                );
                self.refresh_worker(wid);
            }
            None => {
                let reason = "worker no longer available for the grant".to_owned();
                self.report(g.worker, g.job, g.attempt, Report::Lost { reason }, comm);
            }
        }
    }

    /// Places pending jobs on this shard's free workers, then looks for work elsewhere or
    /// tells the others about work left here.
    pub(crate) fn schedule(&mut self, comm: &mut impl Comm) {
        let mut skipped = Vec::new();
        while !self.free.is_empty() && skipped.len() < MAX_SKIPS {
            let Some((prio, seq, id)) = self.queue.pop() else {
                break;
            };
            let Some(job) = self.jobs.get(&id) else {
                continue;
            };
            if job.rec.state != JobState::Pending {
                continue; // lazily deleted (cancelled or already assigned)
            }
            let spec = &job.rec.spec;
            // The least loaded fitting worker; among equals, the one idle longest (the free
            // set's order).
            let target = self
                .free
                .iter()
                .map(|(_, _, w)| *w)
                .find(|w| self.workers.get(w).is_some_and(|w| w.fits(spec)));
            match target {
                Some(worker) => {
                    if let Some(g) = self.assign(id, worker, comm) {
                        self.start_grant(g, comm);
                    }
                }
                None => skipped.push((prio, seq, id)),
            }
        }
        self.queue.extend(skipped);
        self.after_schedule(comm);
    }

    fn after_schedule(&mut self, comm: &mut impl Comm) {
        // Told once per turn that queued something, so other shards learn of new work
        // (perhaps for labels they now have) without a message per job.
        if self.pending > 0 && self.queued_since_advert && self.cfg.shards > 1 {
            self.queued_since_advert = false;
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

    /// With free capacity and a shard that has work, offer the capacity to it.
    pub(crate) fn maybe_steal(&mut self, comm: &mut impl Comm) {
        if self.steal.is_some() || self.free.is_empty() {
            return;
        }
        let n = self.cfg.shards;
        let Some(target) = (0..n)
            .map(|i| (self.steal_cursor + i) % n)
            .find(|s| *s != self.cfg.index && self.remote_work[*s])
        else {
            return;
        };
        self.steal_cursor = (target + 1) % n;
        let mut offers = Vec::new();
        for (_, _, id) in std::mem::take(&mut self.free) {
            if let Some(w) = self.workers.get_mut(&id) {
                w.free_key = None;
                offers.push(Offer {
                    worker: id,
                    slots: w.free_slots,
                    cpus: w.free_cpus,
                    memory: w.free_mem,
                    labels: w.res.labels.clone(),
                });
                // Reserved for the request: local scheduling must not use it meanwhile.
                w.offered = (w.free_slots, w.free_cpus, w.free_mem);
                w.recompute();
            }
        }
        comm.send_shard(
            target,
            ShardMsg::StealRequest {
                from: self.cfg.index,
                offers: offers.clone(),
            },
        );
        self.steal = Some((target, offers));
    }

    /// Owner side: assign queued jobs to offered capacity.
    pub(crate) fn on_steal_request(
        &mut self,
        from: usize,
        mut offers: Vec<Offer>,
        comm: &mut impl Comm,
    ) {
        let mut grants = Vec::new();
        let mut skipped = Vec::new();
        while skipped.len() < MAX_SKIPS && offers.iter().any(|o| o.slots > 0) {
            let Some((prio, seq, id)) = self.queue.pop() else {
                break;
            };
            let Some(job) = self.jobs.get(&id) else {
                continue;
            };
            if job.rec.state != JobState::Pending {
                continue;
            }
            let spec = &job.rec.spec;
            let Some(offer) = offers
                .iter_mut()
                .find(|o| fits(spec, o.slots, o.cpus, o.memory, &o.labels))
            else {
                skipped.push((prio, seq, id));
                continue;
            };
            offer.slots -= 1;
            offer.cpus -= spec.cpus;
            offer.memory -= spec.memory;
            let worker = offer.worker;
            if let Some(g) = self.assign(id, worker, comm) {
                grants.push(g);
            }
        }
        self.queue.extend(skipped);
        let more = self.pending > 0;
        comm.send_shard(
            from,
            ShardMsg::StealReply {
                from: self.cfg.index,
                grants,
                more,
            },
        );
    }

    /// Stealer side: give back the reservation, start what was granted.
    pub(crate) fn on_steal_reply(
        &mut self,
        from: usize,
        grants: Vec<Grant>,
        more: bool,
        comm: &mut impl Comm,
    ) {
        if let Some((_, offers)) = self.steal.take() {
            for o in offers {
                if let Some(w) = self.workers.get_mut(&o.worker) {
                    w.offered = (0, 0, 0);
                    w.recompute();
                }
                self.refresh_worker(o.worker);
            }
        }
        let grew = std::mem::take(&mut self.grew_during_steal);
        if !more || (grants.is_empty() && !grew) {
            // Nothing (more) for our capacity there: stop asking until it queues new work
            // or our capacity grows.
            self.remote_work[from] = false;
            self.unfit_at[from] = more;
        }
        for g in grants {
            self.start_grant(g, comm);
        }
        self.schedule(comm);
    }
}

#[cfg(test)]
mod tests {
    use hodei_core::ids::{Attempt, JobId, WorkerId};
    use hodei_core::state::WorkerState;
    use hodei_core::wire::{HeldJob, Resources};

    use crate::shard::Worker;

    /// Free capacity is what the agent offers minus what its attempts hold, floored at zero:
    /// reservations an agent reports beyond its resources (or beyond what a `u32` sum holds)
    /// leave it full, never wrapped around to look free.
    #[test]
    fn huge_holdings_leave_a_worker_full_and_releases_restore_it() {
        let mut w = Worker {
            id: WorkerId::new(0, 1, 1),
            conn: None,
            state: WorkerState::Ready,
            hostname: "h".to_owned(),
            res: Resources {
                slots: 4,
                cpus: 8,
                memory: 1 << 30,
                labels: Vec::new(),
            },
            free_slots: 4,
            free_cpus: 8,
            free_mem: 1 << 30,
            held: crate::holdings::Holdings::default(),
            last_seen: 0,
            disconnected_at: None,
            last_assigned: 0,
            free_key: None,
            offered: (0, 0, 0),
        };
        for job in 0..3 {
            w.reserve(HeldJob {
                job: JobId::new(0, 1, job),
                attempt: Attempt(1),
                cpus: u32::MAX,
                memory: u64::MAX,
            });
        }
        assert_eq!((w.free_slots, w.free_cpus, w.free_mem), (1, 0, 0));
        for job in 0..3 {
            assert!(w.release(JobId::new(0, 1, job), Attempt(1)));
        }
        assert!(
            !w.release(JobId::new(0, 1, 0), Attempt(1)),
            "released twice"
        );
        assert_eq!((w.free_slots, w.free_cpus, w.free_mem), (4, 8, 1 << 30));
    }
}
