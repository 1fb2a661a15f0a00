//! The owner's side of a job: client requests, reports from workers, final states.

use std::cmp::Reverse;

use hodei_core::ids::{Attempt, JobId, WorkerId};
use hodei_core::job::JobRecord;
use hodei_core::spec::{JobSpec, RetryOn};
use hodei_core::state::JobState;
use hodei_core::time::Micros;
use hodei_core::wire::{ErrorKind, FromServer, ToAgent, ToServer};

use crate::comm::{Comm, Reply, Report, ReqId, ShardMsg, StoreOp};
use crate::lifecycle::key_shard;
use crate::shard::{Gather, Job, Shard, Timer};

fn error(kind: ErrorKind, message: String) -> Reply {
    Reply::Msg(FromServer::Error { kind, message })
}

fn not_found(job: JobId) -> Reply {
    error(ErrorKind::NotFound, format!("job {job} does not exist"))
}

fn job_reply(rec: &JobRecord) -> Reply {
    Reply::Msg(FromServer::Job(Box::new(rec.clone())))
}

impl Shard {
    /// A request from a client connected to this shard.
    pub fn handle_client(&mut self, now: Micros, req: ReqId, body: ToServer, comm: &mut impl Comm) {
        self.now = now;
        let here = self.cfg.index;
        let owner = match &body {
            ToServer::Submit { specs } | ToServer::SubmitWait { specs } => {
                let keys: Vec<&String> = specs
                    .iter()
                    .filter_map(|s| s.policy.idempotency_key.as_ref())
                    .collect();
                match (keys.first(), specs.len()) {
                    (None, _) => here,
                    (Some(k), 1) => key_shard(k, self.cfg.shards),
                    (Some(_), _) => {
                        let msg = "an idempotency key can only be given on a single-job submit"
                            .to_owned();
                        comm.reply(req, error(ErrorKind::Invalid, msg), true);
                        return;
                    }
                }
            }
            ToServer::ListJobs { .. } | ToServer::ListWorkers | ToServer::Events { .. } => {
                self.fan_out(now, req, body, comm);
                return;
            }
            ToServer::GetJob { job }
            | ToServer::Cancel { job }
            | ToServer::Logs { job, .. }
            | ToServer::Wait { job }
            | ToServer::Retry { job } => job.owner(self.cfg.shards),
            ToServer::DrainWorker { worker, .. } => worker.owner(self.cfg.shards),
            // The server's control plane answers these; a shard never should.
            b if b.is_control() => {
                let msg = "not a shard request".to_owned();
                comm.reply(req, error(ErrorKind::Invalid, msg), true);
                return;
            }
            _ => here,
        };
        if owner == here {
            self.on_request(now, here, req, body, comm);
        } else {
            comm.send_shard(
                owner,
                ShardMsg::Request {
                    origin: here,
                    req,
                    body,
                },
            );
        }
    }

    /// The driver found a client's reply channel closed (it disconnected): forget its
    /// event subscriptions on every shard. (Log followers and waiters end with their job.)
    pub fn handle_client_gone(&mut self, req: ReqId, comm: &mut impl Comm) {
        if self.event_streams.remove(&req).is_none() {
            return;
        }
        let origin = self.cfg.index;
        self.event_followers
            .retain(|(o, r, _)| (*o, *r) != (origin, req));
        for s in (0..self.cfg.shards).filter(|s| *s != origin) {
            comm.send_shard(s, ShardMsg::ClientGone { origin, req });
        }
    }

    /// Requests every shard answers a part of.
    fn fan_out(&mut self, now: Micros, req: ReqId, body: ToServer, comm: &mut impl Comm) {
        match &body {
            ToServer::Events { .. } => {
                self.event_streams.insert(req, self.cfg.shards);
            }
            _ => {
                let is_workers = matches!(body, ToServer::ListWorkers);
                self.gathers.insert(
                    req,
                    Gather {
                        missing: self.cfg.shards,
                        is_workers,
                        ..Gather::default()
                    },
                );
            }
        }
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

    /// Creates the jobs; with `wait`, the request stays open until every one of them is final
    /// (a wait group: each job gets the request as a waiter, and `finished` ends the stream
    /// with the last of them).
    fn submit(
        &mut self,
        origin: usize,
        req: ReqId,
        specs: Vec<JobSpec>,
        wait: bool,
        comm: &mut impl Comm,
    ) {
        if let Some((i, e)) = specs
            .iter()
            .enumerate()
            .find_map(|(i, s)| s.validate().err().map(|e| (i, e)))
        {
            self.reply_to(
                origin,
                req,
                error(ErrorKind::Invalid, format!("job {i} refused: {e}")),
                true,
                comm,
            );
            return;
        }
        let mut ids = Vec::with_capacity(specs.len());
        for spec in specs {
            if let Some(existing) = spec
                .policy
                .idempotency_key
                .as_ref()
                .and_then(|k| self.idem.get(k))
            {
                ids.push(*existing);
                continue;
            }
            let id = self.create(spec, None, comm);
            ids.push(id);
        }
        let waiting = if wait { ids.clone() } else { Vec::new() };
        let open = !waiting.is_empty();
        self.reply_to(
            origin,
            req,
            Reply::Msg(FromServer::Submitted { ids }),
            !open,
            comm,
        );
        if open {
            // Counted before any answer: a job already final (an idempotent resubmit) is
            // answered at once and counts down like the others.
            self.wait_groups.insert((origin, req), waiting.len());
            for id in waiting {
                match self.jobs.get_mut(&id) {
                    Some(j) if !j.rec.state.is_final() => j.waiters.push((origin, req)),
                    Some(j) => {
                        let reply = job_reply(&j.rec);
                        self.answer_waiter(origin, req, reply, comm);
                    }
                    None => self.answer_waiter(origin, req, not_found(id), comm),
                }
            }
        }
        self.schedule(comm);
    }

    /// Mints, stores and queues a new job.
    fn create(
        &mut self,
        mut spec: JobSpec,
        retry_of: Option<JobId>,
        comm: &mut impl Comm,
    ) -> JobId {
        let id = self.mint_job();
        if spec.policy.correlation_id.is_empty() {
            spec.policy.correlation_id = format!("{:016x}", id.0 ^ self.now.rotate_left(17));
        }
        if let Some(k) = &spec.policy.idempotency_key {
            self.idem.insert(k.clone(), id);
        }
        let mut rec = JobRecord::new(id, spec, self.now);
        rec.retry_of = retry_of;
        comm.persist(StoreOp::PutJob(rec.clone()));
        let prio = rec.spec.priority;
        self.jobs.insert(
            id,
            Box::new(Job {
                rec,
                claim_deadline: None,
                waiters: Vec::new(),
                followers: Vec::new(),
            }),
        );
        self.enqueue(id, prio);
        self.arm_job_timers(id);
        self.job_event(id, retry_of.map(|j| format!("retry of {j}")), comm);
        id
    }

    /// Sends a reply towards the client's shard.
    pub(crate) fn reply_to(
        &mut self,
        origin: usize,
        req: ReqId,
        reply: Reply,
        last: bool,
        comm: &mut impl Comm,
    ) {
        if origin == self.cfg.index {
            self.forward_reply(req, reply, last, comm);
        } else {
            comm.send_shard(origin, ShardMsg::Reply { req, reply, last });
        }
    }

    /// At the client's shard: a fanned-out stream ends when every shard's part has.
    pub(crate) fn forward_reply(
        &mut self,
        req: ReqId,
        reply: Reply,
        last: bool,
        comm: &mut impl Comm,
    ) {
        let Some(left) = self.event_streams.get_mut(&req) else {
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
                comm.reply(req, Reply::Msg(FromServer::LogEnd), true);
            }
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
        self.now = now;
        match body {
            ToServer::Submit { specs } => self.submit(origin, req, specs, false, comm),
            ToServer::SubmitWait { specs } => self.submit(origin, req, specs, true, comm),
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
            ToServer::Events { since, job, follow } => {
                #[allow(clippy::cast_possible_truncation)]
                let shard = self.cfg.index as u8;
                let after = since.get(self.cfg.index).copied().unwrap_or(0);
                let stored = Reply::StoredEvents {
                    shard,
                    after,
                    upto: self.event_seq,
                    job,
                };
                self.reply_to(origin, req, stored, !follow, comm);
                if follow {
                    self.event_followers.push((origin, req, job));
                }
            }
            ToServer::GetJob { job } => {
                let reply = self
                    .jobs
                    .get(&job)
                    .map_or_else(|| not_found(job), |j| job_reply(&j.rec));
                self.reply_to(origin, req, reply, true, comm);
            }
            ToServer::Cancel { job } => self.cancel(origin, req, job, comm),
            ToServer::Retry { job } => {
                let Some(j) = self.jobs.get(&job) else {
                    self.reply_to(origin, req, not_found(job), true, comm);
                    return;
                };
                if !j.rec.state.is_final() {
                    let msg = format!(
                        "job {job} is {}; only a finished job can be retried",
                        j.rec.state
                    );
                    self.reply_to(origin, req, error(ErrorKind::Invalid, msg), true, comm);
                    return;
                }
                let mut spec = j.rec.spec.clone();
                spec.policy.idempotency_key = None;
                let id = self.create(spec, Some(job), comm);
                self.reply_to(
                    origin,
                    req,
                    Reply::Msg(FromServer::Submitted { ids: vec![id] }),
                    true,
                    comm,
                );
                self.schedule(comm);
            }
            ToServer::DrainWorker { worker, timeout_ms } => {
                let reply = self.drain_worker(worker, timeout_ms, comm);
                self.reply_to(origin, req, reply, true, comm);
            }
            ToServer::CreateToken { .. }
            | ToServer::ListTokens
            | ToServer::RevokeToken { .. }
            | ToServer::SetSecret { .. }
            | ToServer::ListSecrets
            | ToServer::RemoveSecret { .. }
            | ToServer::Audit { .. }
            | ToServer::AuditVerify
            | ToServer::Join { .. }
            | ToServer::RevokeWorker { .. }
            | ToServer::RotateServerCert
            | ToServer::Stats { .. } => {
                let msg = "not a shard request".to_owned();
                self.reply_to(origin, req, error(ErrorKind::Invalid, msg), true, comm);
            }
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
                    let reply = job_reply(&j.rec);
                    self.reply_to(origin, req, reply, true, comm);
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

    fn cancel(&mut self, origin: usize, req: ReqId, id: JobId, comm: &mut impl Comm) {
        let now = self.now;
        let Some(job) = self.jobs.get_mut(&id) else {
            self.reply_to(origin, req, not_found(id), true, comm);
            return;
        };
        let before = job.rec.state;
        if !before.is_final() && before.can_transition_to(JobState::Cancelled) {
            let waiting_retry = job.rec.not_before.take().is_some();
            job.rec.state = JobState::Cancelled;
            job.rec.finished_at = Some(now);
            job.rec.error = Some("cancelled by request".to_owned());
            job.claim_deadline = None;
            comm.persist(StoreOp::PutJob(job.rec.clone()));
            if before == JobState::Pending && !waiting_retry {
                self.pending = self.pending.saturating_sub(1);
            }
            if let (true, Some(w)) = (before.is_on_worker(), job.rec.worker) {
                let attempt = job.rec.attempt;
                self.send_worker(w, ToAgent::Cancel { job: id, attempt }, comm);
            }
            self.job_event(id, Some("cancelled by request".to_owned()), comm);
            self.finished(id, comm);
        }
        if let Some(j) = self.jobs.get(&id) {
            let reply = job_reply(&j.rec);
            self.reply_to(origin, req, reply, true, comm);
        }
    }

    /// Tells waiters and followers that a job reached its final state.
    pub(crate) fn finished(&mut self, id: JobId, comm: &mut impl Comm) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        let waiters = std::mem::take(&mut job.waiters);
        let followers = std::mem::take(&mut job.followers);
        let reply = job_reply(&job.rec);
        for (origin, req) in waiters {
            self.answer_waiter(origin, req, reply.clone(), comm);
        }
        for (origin, req) in followers {
            self.reply_to(origin, req, Reply::Msg(FromServer::LogEnd), true, comm);
        }
    }

    /// Answers one waiter: a `Wait` ends with its job; a wait group (`SubmitWait`) with the
    /// last of its jobs.
    fn answer_waiter(&mut self, origin: usize, req: ReqId, reply: Reply, comm: &mut impl Comm) {
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
        self.reply_to(origin, req, reply, last, comm);
    }

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
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        if !job.rec.state.can_transition_to(JobState::Running) {
            return;
        }
        // Started: an exemption from the assign timeout has no use any more.
        self.accepted.remove(&(id, job.rec.attempt));
        job.rec.state = JobState::Running;
        job.rec.started_at = Some(at);
        job.rec.ran = true;
        comm.persist(StoreOp::PutJob(job.rec.clone()));
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
        let Some(job) = self.jobs.get_mut(&id) else {
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
                    self.accepted.insert((id, attempt));
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
                let Some(job) = self.jobs.get_mut(&id) else {
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
                self.schedule(comm);
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
                    self.schedule(comm);
                }
            }
        }
    }

    /// Owner: arms the acknowledgement deadline of a fresh assignment.
    pub(crate) fn arm_ack(&mut self, id: JobId, attempt: Attempt) {
        let at = self.now + self.cfg.assign_timeout;
        self.timers.push(Reverse((at, Timer::Ack(id, attempt))));
    }
}
