//! The owner's side of a job: client requests (routed to the shard that owns what they are
//! about, or fanned out to every shard), and the answers its final state owes.

use hodei_core::ids::JobId;
use hodei_core::job::JobRecord;
use hodei_core::spec::JobSpec;
use hodei_core::state::JobState;
use hodei_core::time::Micros;
use hodei_core::wire::{ErrorKind, FromServer, JobRequest, Route, ToAgent};

use crate::clients::stays_open;
use crate::comm::{Comm, Reply, ReqId, ShardMsg, StoreOp};
use crate::job_table::{Job, JobTable};
use crate::lifecycle::key_shard;
use crate::shard::Shard;
use crate::subscriptions::{Open, Registration};

fn error(kind: ErrorKind, message: String) -> Reply {
    Reply::Msg(FromServer::Error { kind, message })
}

pub(crate) fn job_reply(rec: &JobRecord) -> Reply {
    Reply::Msg(FromServer::Job(Box::new(rec.clone())))
}

impl Shard {
    /// A request from a client connected to this shard.
    pub fn handle_client(
        &mut self,
        now: Micros,
        req: ReqId,
        body: JobRequest,
        comm: &mut impl Comm,
    ) {
        self.begin_call();
        self.now = now;
        let here = self.cfg.index;
        let owner = match body.route() {
            Route::Here => here,
            Route::Job(job) => job.owner(self.cfg.shards),
            Route::Worker(worker) => worker.owner(self.cfg.shards),
            Route::Key(key) => key_shard(key, self.cfg.shards),
            Route::AllShards => {
                self.fan_out(now, req, body, comm);
                return;
            }
            Route::Invalid(why) => {
                comm.reply(req, error(ErrorKind::Invalid, why.to_owned()), true);
                return;
            }
        };
        if stays_open(&body) {
            self.subs.opened(req, Open::At(owner));
        }
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
        // (The answers that return early above, refusals and fan-outs, schedule nothing.)
        self.end_call(comm);
    }

    /// Requests every shard answers a part of.
    fn fan_out(&mut self, now: Micros, req: ReqId, body: JobRequest, comm: &mut impl Comm) {
        match &body {
            JobRequest::Events { follow, .. } => {
                self.subs.open_event_stream(req, self.cfg.shards);
                if *follow {
                    self.subs.opened(req, Open::Everywhere);
                }
            }
            _ => {
                let is_workers = matches!(body, JobRequest::ListWorkers);
                self.subs.open_listing(req, self.cfg.shards, is_workers);
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
                .and_then(|k| self.jobs.by_key(k))
            {
                ids.push(existing);
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
            // The jobs it waits on are registered before any answer, so that the last one
            // unregisters the request.
            self.subs.open_wait_group(origin, req, waiting.len());
            let mut answers = Vec::new();
            let mut on_jobs = Vec::new();
            for id in waiting {
                match self.jobs.get_mut(id) {
                    Some(j) if !j.rec.state.is_final() => {
                        j.waiters.push((origin, req));
                        on_jobs.push(id);
                    }
                    Some(j) => answers.push(job_reply(&j.rec)),
                    None => answers.push(self.not_found(id)),
                }
            }
            if !on_jobs.is_empty() {
                self.subs
                    .register(origin, req, Registration::Waits(on_jobs));
            }
            for reply in answers {
                self.answer_waiter(origin, req, reply, comm);
            }
        }
        self.want_schedule();
    }

    /// Mints, stores and queues a new job.
    fn create(
        &mut self,
        mut spec: JobSpec,
        retry_of: Option<JobId>,
        comm: &mut impl Comm,
    ) -> JobId {
        let id = self.jobs.mint(self.index_u8(), self.cfg.epoch);
        if spec.policy.correlation_id.is_empty() {
            spec.policy.correlation_id = format!("{:016x}", id.0 ^ self.now.rotate_left(17));
        }
        if let Some(k) = &spec.policy.idempotency_key {
            self.jobs.remember_key(k.clone(), id);
        }
        let mut rec = JobRecord::new(id, spec, self.now);
        rec.retry_of = retry_of;
        comm.persist(StoreOp::PutJob(rec.clone()));
        self.jobs.insert(Job::new(rec));
        self.enqueue(id);
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
            self.subs.forward_reply(req, reply, last, comm);
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
        body: JobRequest,
        comm: &mut impl Comm,
    ) {
        self.now = now;
        match body {
            JobRequest::Submit { specs } => self.submit(origin, req, specs, false, comm),
            JobRequest::SubmitWait { specs } => self.submit(origin, req, specs, true, comm),
            JobRequest::ListJobs { state } => {
                let jobs = self
                    .jobs
                    .values()
                    .filter(|j| state.is_none_or(|s| j.rec.state == s))
                    .map(|j| j.rec.clone())
                    .collect();
                self.on_part(origin, req, jobs, Vec::new(), comm);
            }
            JobRequest::ListWorkers => {
                let workers = self.workers.infos();
                self.on_part(origin, req, Vec::new(), workers, comm);
            }
            JobRequest::Events { since, job, follow } => {
                let shard = self.index_u8();
                let after = since.get(self.cfg.index).copied().unwrap_or(0);
                let stored = Reply::StoredEvents {
                    shard,
                    after,
                    upto: self.event_seq,
                    job,
                };
                self.reply_to(origin, req, stored, !follow, comm);
                if follow {
                    self.subs.follow_events(origin, req, job);
                }
            }
            JobRequest::GetJob { job } => {
                let reply = self
                    .jobs
                    .get(job)
                    .map_or_else(|| self.not_found(job), |j| job_reply(&j.rec));
                self.reply_to(origin, req, reply, true, comm);
            }
            JobRequest::Cancel { job } => self.cancel(origin, req, job, comm),
            JobRequest::Retry { job } => {
                let Some(j) = self.jobs.get(job) else {
                    self.reply_to(origin, req, self.not_found(job), true, comm);
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
                self.want_schedule();
            }
            JobRequest::DrainWorker { worker, timeout_ms } => {
                let reply = self.drain_worker(worker, timeout_ms, comm);
                self.reply_to(origin, req, reply, true, comm);
            }
            JobRequest::Logs { job, follow } => {
                let Some(j) = self.jobs.get_mut(job) else {
                    self.reply_to(origin, req, self.not_found(job), true, comm);
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
                    self.subs.register(origin, req, Registration::Follows(job));
                }
                self.reply_to(origin, req, stored, false, comm);
                if done {
                    self.reply_to(origin, req, Reply::Msg(FromServer::LogEnd), true, comm);
                }
            }
            JobRequest::Wait { job } => match self.jobs.get_mut(job) {
                None => self.reply_to(origin, req, self.not_found(job), true, comm),
                Some(j) if j.rec.state.is_final() => {
                    let reply = job_reply(&j.rec);
                    self.reply_to(origin, req, reply, true, comm);
                }
                Some(j) => {
                    j.waiters.push((origin, req));
                    self.subs
                        .register(origin, req, Registration::Waits(vec![job]));
                }
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
        if let Some(msg) = self.subs.add_part(req, jobs, workers) {
            comm.reply(req, Reply::Msg(msg), true);
        }
    }

    fn cancel(&mut self, origin: usize, req: ReqId, id: JobId, comm: &mut impl Comm) {
        let now = self.now;
        let Some(job) = self.jobs.get_mut(id) else {
            self.reply_to(origin, req, self.not_found(id), true, comm);
            return;
        };
        let before = job.rec.state;
        if !before.is_final() && before.can_transition_to(JobState::Cancelled) {
            let queued = JobTable::is_queued(&job.rec);
            job.rec.not_before = None;
            job.rec.state = JobState::Cancelled;
            job.rec.finished_at = Some(now);
            job.rec.error = Some("cancelled by request".to_owned());
            job.claim_deadline = None;
            comm.persist(StoreOp::PutJob(job.rec.clone()));
            let (worker, attempt) = (job.rec.worker, job.rec.attempt);
            if queued {
                self.jobs.dequeued();
            }
            if let (true, Some(w)) = (before.is_on_worker(), worker) {
                self.send_worker(w, ToAgent::Cancel { job: id, attempt }, comm);
            }
            self.job_event(id, Some("cancelled by request".to_owned()), comm);
            self.finished(id, comm);
        }
        if let Some(j) = self.jobs.get(id) {
            let reply = job_reply(&j.rec);
            self.reply_to(origin, req, reply, true, comm);
        }
    }

    /// Tells waiters and followers that a job reached its final state.
    pub(crate) fn finished(&mut self, id: JobId, comm: &mut impl Comm) {
        let now = self.now;
        let Some(job) = self.jobs.get_mut(id) else {
            return;
        };
        self.retention.ended(now, id);
        let waiters = std::mem::take(&mut job.waiters);
        let followers = std::mem::take(&mut job.followers);
        let reply = job_reply(&job.rec);
        for (origin, req) in waiters {
            self.answer_waiter(origin, req, reply.clone(), comm);
        }
        for (origin, req) in followers {
            self.subs.unregister(origin, req);
            self.reply_to(origin, req, Reply::Msg(FromServer::LogEnd), true, comm);
        }
    }

    /// Answers one waiter: a `Wait` ends with its job; a wait group (`SubmitWait`) with the
    /// last of its jobs.
    fn answer_waiter(&mut self, origin: usize, req: ReqId, reply: Reply, comm: &mut impl Comm) {
        let last = self.subs.waiter_answered(origin, req);
        if last {
            self.subs.unregister(origin, req);
        }
        self.reply_to(origin, req, reply, last, comm);
    }
}
