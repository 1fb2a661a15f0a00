//! The owner's side of a job: client requests, reports from workers, final states.

use hodei_core::ids::{Attempt, JobId, WorkerId};
use hodei_core::job::JobRecord;
use hodei_core::state::JobState;
use hodei_core::time::Micros;
use hodei_core::wire::{ErrorKind, FromServer, ToAgent, ToServer};

use crate::comm::{Comm, Reply, Report, ReqId, ShardMsg, StoreOp};
use crate::shard::{Gather, Job, Shard};

fn error(kind: ErrorKind, message: String) -> Reply {
    Reply::Msg(FromServer::Error { kind, message })
}

fn not_found(job: JobId) -> Reply {
    error(ErrorKind::NotFound, format!("job {job} does not exist"))
}

impl Shard {
    /// A request from a client connected to this shard.
    pub fn handle_client(&mut self, now: Micros, req: ReqId, body: ToServer, comm: &mut impl Comm) {
        match body {
            ToServer::Submit { specs } => self.submit(now, req, specs, comm),
            ToServer::ListJobs { .. } | ToServer::ListWorkers => {
                let is_workers = matches!(body, ToServer::ListWorkers);
                self.gathers.insert(
                    req,
                    Gather {
                        missing: self.cfg.shards,
                        is_workers,
                        ..Gather::default()
                    },
                );
                for s in (0..self.cfg.shards).filter(|s| *s != self.cfg.index) {
                    comm.send_shard(
                        s,
                        ShardMsg::Request {
                            origin: self.cfg.index,
                            req,
                            body: body.clone(),
                        },
                    );
                }
                self.on_request(now, self.cfg.index, req, body, comm);
            }
            ToServer::GetJob { job }
            | ToServer::Cancel { job }
            | ToServer::Logs { job, .. }
            | ToServer::Wait { job } => {
                let owner = job.owner(self.cfg.shards);
                if owner == self.cfg.index {
                    self.on_request(now, owner, req, body, comm);
                } else {
                    comm.send_shard(
                        owner,
                        ShardMsg::Request {
                            origin: self.cfg.index,
                            req,
                            body,
                        },
                    );
                }
            }
        }
    }

    fn submit(
        &mut self,
        now: Micros,
        req: ReqId,
        specs: Vec<hodei_core::spec::JobSpec>,
        comm: &mut impl Comm,
    ) {
        if let Some((i, e)) = specs
            .iter()
            .enumerate()
            .find_map(|(i, s)| s.validate().err().map(|e| (i, e)))
        {
            comm.reply(
                req,
                error(ErrorKind::Invalid, format!("job {i} refused: {e}")),
                true,
            );
            return;
        }
        let mut ids = Vec::with_capacity(specs.len());
        for spec in specs {
            let id = self.mint_job();
            let rec = JobRecord::new(id, spec, now);
            comm.persist(StoreOp::PutJob(rec.clone()));
            let prio = rec.spec.priority;
            self.jobs.insert(
                id,
                Job {
                    rec,
                    claim_deadline: None,
                    waiters: Vec::new(),
                    followers: Vec::new(),
                },
            );
            self.enqueue(id, prio);
            ids.push(id);
        }
        comm.reply(req, Reply::Msg(FromServer::Submitted { ids }), true);
        self.schedule(comm);
    }

    pub(crate) fn reply_to(
        &self,
        origin: usize,
        req: ReqId,
        reply: Reply,
        last: bool,
        comm: &mut impl Comm,
    ) {
        if origin == self.cfg.index {
            comm.reply(req, reply, last);
        } else {
            comm.send_shard(origin, ShardMsg::Reply { req, reply, last });
        }
    }

    /// A request for something this shard owns (possibly forwarded by `origin`).
    pub(crate) fn on_request(
        &mut self,
        now: Micros,
        origin: usize,
        req: ReqId,
        body: ToServer,
        comm: &mut impl Comm,
    ) {
        match body {
            ToServer::Submit { .. } => {
                self.reply_to(
                    origin,
                    req,
                    error(ErrorKind::Invalid, "submit is not routed".into()),
                    true,
                    comm,
                );
            }
            ToServer::ListJobs { state } => {
                let jobs = self
                    .jobs
                    .values()
                    .filter(|j| state.is_none_or(|s| j.rec.state == s))
                    .map(|j| j.rec.clone())
                    .collect();
                self.on_part(origin, req, jobs, Vec::new(), comm);
            }
            ToServer::ListWorkers => {
                let workers = self.worker_infos();
                self.on_part(origin, req, Vec::new(), workers, comm);
            }
            ToServer::GetJob { job } => {
                let reply = self.jobs.get(&job).map_or_else(
                    || not_found(job),
                    |j| Reply::Msg(FromServer::Job(Box::new(j.rec.clone()))),
                );
                self.reply_to(origin, req, reply, true, comm);
            }
            ToServer::Cancel { job } => self.cancel(now, origin, req, job, comm),
            ToServer::Logs { job, follow } => {
                let Some(j) = self.jobs.get_mut(&job) else {
                    self.reply_to(origin, req, not_found(job), true, comm);
                    return;
                };
                let stored = Reply::StoredLogs {
                    job,
                    attempt: j.rec.attempt,
                    upto: j.rec.output_end,
                };
                let done = !follow || j.rec.state.is_final();
                if !done {
                    j.followers.push((origin, req));
                }
                self.reply_to(origin, req, stored, false, comm);
                if done {
                    self.reply_to(origin, req, Reply::Msg(FromServer::LogEnd), true, comm);
                }
            }
            ToServer::Wait { job } => match self.jobs.get_mut(&job) {
                None => self.reply_to(origin, req, not_found(job), true, comm),
                Some(j) if j.rec.state.is_final() => {
                    let rec = j.rec.clone();
                    self.reply_to(
                        origin,
                        req,
                        Reply::Msg(FromServer::Job(Box::new(rec))),
                        true,
                        comm,
                    );
                }
                Some(j) => j.waiters.push((origin, req)),
            },
        }
    }

    /// A part of a listing; the origin answers once every shard's part is in.
    pub(crate) fn on_part(
        &mut self,
        origin: usize,
        req: ReqId,
        jobs: Vec<JobRecord>,
        workers: Vec<hodei_core::job::WorkerInfo>,
        comm: &mut impl Comm,
    ) {
        if origin != self.cfg.index {
            comm.send_shard(origin, ShardMsg::Part { req, jobs, workers });
            return;
        }
        let Some(g) = self.gathers.get_mut(&req) else {
            return;
        };
        g.missing = g.missing.saturating_sub(1);
        g.jobs.extend(jobs);
        g.workers.extend(workers);
        if g.missing > 0 {
            return;
        }
        let Some(mut g) = self.gathers.remove(&req) else {
            return;
        };
        let msg = if g.is_workers {
            g.workers.sort_by_key(|w| w.id);
            FromServer::Workers(g.workers)
        } else {
            g.jobs.sort_by_key(|j| (j.created_at, j.id));
            FromServer::Jobs(g.jobs)
        };
        comm.reply(req, Reply::Msg(msg), true);
    }

    fn cancel(&mut self, now: Micros, origin: usize, req: ReqId, id: JobId, comm: &mut impl Comm) {
        let Some(job) = self.jobs.get_mut(&id) else {
            self.reply_to(origin, req, not_found(id), true, comm);
            return;
        };
        let before = job.rec.state;
        if !before.is_final() && before.can_transition_to(JobState::Cancelled) {
            job.rec.state = JobState::Cancelled;
            job.rec.finished_at = Some(now);
            job.rec.error = Some("cancelled by request".to_owned());
            job.claim_deadline = None;
            comm.persist(StoreOp::PutJob(job.rec.clone()));
            if before == JobState::Pending {
                self.pending = self.pending.saturating_sub(1);
            }
            if let (true, Some(w)) = (before.is_on_worker(), job.rec.worker) {
                let attempt = job.rec.attempt;
                self.send_worker(w, ToAgent::Cancel { job: id, attempt }, comm);
            }
            self.finished(id, comm);
        }
        if let Some(j) = self.jobs.get(&id) {
            let rec = j.rec.clone();
            self.reply_to(
                origin,
                req,
                Reply::Msg(FromServer::Job(Box::new(rec))),
                true,
                comm,
            );
        }
    }

    /// Tells waiters and followers that a job reached its final state.
    fn finished(&mut self, id: JobId, comm: &mut impl Comm) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        let waiters = std::mem::take(&mut job.waiters);
        let followers = std::mem::take(&mut job.followers);
        let rec = job.rec.clone();
        for (origin, req) in waiters {
            self.reply_to(
                origin,
                req,
                Reply::Msg(FromServer::Job(Box::new(rec.clone()))),
                true,
                comm,
            );
        }
        for (origin, req) in followers {
            self.reply_to(origin, req, Reply::Msg(FromServer::LogEnd), true, comm);
        }
    }

    /// Sends to an agent through the shard that owns its worker.
    pub(crate) fn send_worker(&mut self, worker: WorkerId, msg: ToAgent, comm: &mut impl Comm) {
        if worker.owner(self.cfg.shards) == self.cfg.index {
            self.deliver(worker, msg, comm);
        } else {
            comm.send_shard(
                worker.owner(self.cfg.shards),
                ShardMsg::ToWorker { worker, msg },
            );
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

    /// Owner: apply what a worker says about an attempt, if it is the current one.
    pub(crate) fn on_report(
        &mut self,
        worker: WorkerId,
        id: JobId,
        attempt: Attempt,
        report: Report,
        comm: &mut impl Comm,
    ) {
        let Some(job) = self.jobs.get_mut(&id) else {
            // Unknown job (should not happen): make the agent drop it.
            self.send_worker(worker, ToAgent::Abandon { job: id, attempt }, comm);
            return;
        };
        let current = job.rec.attempt == attempt && job.rec.worker == Some(worker);
        if !current {
            // A stale attempt: fenced. Recorded in the log, never applied.
            if !matches!(report, Report::Lost { .. }) {
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
            Report::Started { at } => {
                if state.can_transition_to(JobState::Running) {
                    job.rec.state = JobState::Running;
                    job.rec.started_at = Some(at);
                    comm.persist(StoreOp::PutJob(job.rec.clone()));
                }
            }
            Report::Output { offset, chunks } => {
                let len: u64 = chunks.iter().map(|c| c.data.len() as u64).sum();
                let end = offset + len;
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
                let Some(job) = self.jobs.get(&id) else {
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
                if state == JobState::Assigned && outcome.state() != JobState::Failed {
                    // Its Started was lost with a connection: it did run.
                    job.rec.state = JobState::Running;
                    job.rec.started_at.get_or_insert(at);
                    comm.persist(StoreOp::PutJob(job.rec.clone()));
                }
                let next = outcome.state();
                if job.rec.state.can_transition_to(next) {
                    job.rec.state = next;
                    job.rec.exit_code = outcome.exit_code();
                    job.rec.error = outcome.error();
                    job.rec.finished_at = Some(at);
                    job.claim_deadline = None;
                    comm.persist(StoreOp::PutJob(job.rec.clone()));
                    self.send_worker(worker, ToAgent::FinishedAck { job: id, attempt }, comm);
                    self.finished(id, comm);
                }
            }
            Report::Lost { reason } => {
                if state.is_on_worker() {
                    self.requeue(id, &reason, comm);
                    self.schedule(comm);
                }
            }
        }
    }
}
