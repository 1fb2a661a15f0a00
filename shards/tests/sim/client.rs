//! Simulated clients: the workload (submits, idempotent double submits, cancels, waits,
//! drain requests) and what they were told.

use std::collections::{BTreeSet, HashMap, HashSet};

use hodei_core::ids::{JobId, WorkerId};
use hodei_core::job::JobRecord;
use hodei_core::spec::{JobSpec, RetryOn};
use hodei_core::time::ms;
use hodei_core::wire::{ErrorKind, FromServer, JobRequest};
use hodei_shards::{Reply, ReqId};
use rand::Rng;

use crate::server::Input;
use crate::world::{Ev, Sim};

#[derive(Debug)]
pub enum Req {
    /// `wait`: a `SubmitWait`, answered after `Submitted` with each job's final record
    /// (`answered` so far) and ended with the last.
    Submit {
        n: usize,
        key: Option<String>,
        wait: bool,
        answered: BTreeSet<JobId>,
        /// `hodei job retry` of this job.
        retry_of: Option<JobId>,
    },
    Cancel,
    Wait,
    Drain,
}

#[derive(Default)]
pub struct Clients {
    next_req: u64,
    pending: HashMap<ReqId, Req>,
    /// Submit events not yet fired.
    pub scheduled: usize,
    pub acked: HashSet<JobId>,
    /// Acknowledged and final in the store.
    pub finals: HashSet<JobId>,
    /// Ids returned per idempotency key.
    pub keys: HashMap<String, BTreeSet<JobId>>,
    pub cancelled: HashSet<JobId>,
    /// Final records returned by `Wait`.
    pub waited: Vec<JobRecord>,
}

impl Clients {
    pub fn submits_pending(&self) -> usize {
        self.pending
            .values()
            .filter(|r| matches!(r, Req::Submit { .. }))
            .count()
    }

    /// Requests in flight die with the server: the clients see errors.
    pub fn server_restarted(&mut self) {
        self.pending.clear();
    }

    /// `SubmitWait`s still open (at the end of a run, when every job is final, none may be).
    pub fn open_submit_waits(&self) -> Vec<String> {
        let mut open: Vec<String> = self
            .pending
            .iter()
            .filter_map(|(req, r)| match r {
                Req::Submit {
                    n,
                    wait: true,
                    answered,
                    ..
                } => Some(format!(
                    "submit-wait {req:?} of {n} jobs still open, {} answered",
                    answered.len()
                )),
                _ => None,
            })
            .collect();
        open.sort();
        open
    }
}

/// A job no simulated agent can run, ahead of every other job by priority; it ends at its
/// queue timeout, after the rest of the workload had to run behind it.
fn unplaceable(i: usize) -> JobSpec {
    let mut spec = JobSpec::exec("sim", &[]);
    spec.priority = 3;
    spec.policy.queue_timeout_ms = Some(8_000 + (i as u64 % 1_000));
    if i.is_multiple_of(2) {
        spec.labels.push(("gpu".to_owned(), "a100".to_owned()));
    } else {
        // Agents have 4 to 8 CPUs.
        spec.cpus = 64;
    }
    spec
}

impl Sim {
    pub fn schedule_workload(&mut self) {
        let o = self.opts.clone();
        let span = ms(o.submit_ms.max(1));
        // The backlog is queued before any other job is submitted.
        let start = if o.backlog > 0 { ms(5) } else { 0 };
        let mut queued = 0;
        while queued < o.backlog {
            let n = (o.backlog - queued).min(1_000);
            let specs = (queued..queued + n).map(unplaceable).collect();
            self.schedule_submit(0, specs);
            queued += n;
        }
        let mut left = o.jobs;
        while left > 0 {
            let n = self.rng.gen_range(1..=left.min(8));
            left -= n;
            let t = start + self.rng.gen_range(0..span);
            let specs = (0..n).map(|_| self.random_spec()).collect();
            self.schedule_submit(t, specs);
        }
        for k in 0..o.keyed {
            let mut spec = self.random_spec();
            spec.policy.idempotency_key = Some(format!("key-{k}"));
            let t = self.rng.gen_range(0..span);
            self.schedule_submit(t, vec![spec.clone()]);
            let again = t + self.rng.gen_range(0..ms(2_000));
            self.schedule_submit(again, vec![spec]);
        }
        let until = span + ms(2_000);
        for _ in 0..o.cancels {
            let t = self.rng.gen_range(0..until);
            self.at(t, Ev::Cancel);
        }
        for _ in 0..o.waits {
            let t = self.rng.gen_range(0..until);
            self.at(t, Ev::Wait);
        }
        for _ in 0..o.retries {
            let t = self.rng.gen_range(span..until + ms(3_000));
            self.clients.scheduled += 1;
            self.at(t, Ev::Retry);
        }
    }

    fn schedule_submit(&mut self, t: u64, specs: Vec<JobSpec>) {
        let shard = self
            .opts
            .submit_shard
            .unwrap_or_else(|| self.rng.gen_range(0..self.opts.shards));
        self.clients.scheduled += 1;
        self.at(t, Ev::Submit { shard, specs });
    }

    fn random_spec(&mut self) -> JobSpec {
        let mut spec = JobSpec::exec("sim", &[]);
        spec.priority = self.rng.gen_range(-2..3);
        let (lo, hi) = self.opts.job_ms;
        let mut run = self.rng.gen_range(lo..=hi);
        if self.opts.long_job_ms > hi && self.rng.gen_ratio(1, 8) {
            run = self.rng.gen_range(hi..=self.opts.long_job_ms);
        }
        spec.env.push(("SIM_MS".to_owned(), run.to_string()));
        if self.opts.big_output > 0 && self.rng.gen_ratio(1, 4) {
            let bytes = self.opts.big_output.to_string();
            spec.env.push(("SIM_OUT".to_owned(), bytes));
        }
        if self.rng.gen_ratio(1, 5) {
            spec.labels.push(("pool".to_owned(), "even".to_owned()));
        }
        if self.rng.gen_ratio(1, 4) {
            // Agents have 4 to 8 CPUs and 1 GiB.
            spec.cpus = self.rng.gen_range(1..=4);
            spec.memory = self.rng.gen_range(0..=768) << 20;
        }
        if !self.opts.policies {
            return spec;
        }
        let floor = self.opts.min_backoff_ms;
        let r = &mut self.rng;
        let p = &mut spec.policy;
        p.retries = r.gen_range(0..=3);
        p.retry_on = RetryOn(r.gen_range(0..8));
        p.backoff_min_ms = [0, 10, 100, 400][r.gen_range(0..4)].max(floor);
        p.backoff_max_ms = p.backoff_min_ms * [1, 4, 10][r.gen_range(0..3)];
        if r.gen_ratio(1, 6) {
            p.queue_timeout_ms = Some(r.gen_range(20..3_000));
        }
        if r.gen_ratio(1, 4) {
            let fails = r.gen_range(1..=3);
            spec.env.push(("SIM_FAILS".to_owned(), fails.to_string()));
        }
        if r.gen_ratio(1, 10) {
            spec.env.push(("SIM_EXIT".to_owned(), "2".to_owned()));
        }
        if r.gen_ratio(1, 8) {
            spec.timeout_ms = Some(r.gen_range(1..=run.max(2) + 20));
        }
        spec
    }

    fn request(&mut self, shard: usize, body: JobRequest, req: Req) {
        self.clients.next_req += 1;
        let id = ReqId(self.clients.next_req);
        self.clients.pending.insert(id, req);
        let lat = self.rng.gen_range(50..1_000);
        let era = self.server.era;
        self.at(
            lat,
            Ev::Input {
                shard,
                era,
                input: Input::Client(id, body),
            },
        );
    }

    pub fn submit(&mut self, shard: usize, specs: Vec<JobSpec>) {
        self.clients.scheduled -= 1;
        let key = specs.first().and_then(|s| s.policy.idempotency_key.clone());
        let n = specs.len();
        // A third of the submits wait for their jobs on the same request.
        let wait = self.rng.gen_ratio(1, 3);
        let body = if wait {
            JobRequest::SubmitWait { specs }
        } else {
            JobRequest::Submit { specs }
        };
        let answered = BTreeSet::new();
        self.request(
            shard,
            body,
            Req::Submit {
                n,
                key,
                wait,
                answered,
                retry_of: None,
            },
        );
    }

    fn random_acked(&mut self) -> Option<JobId> {
        let mut ids: Vec<JobId> = self.clients.acked.iter().copied().collect();
        if ids.is_empty() {
            return None;
        }
        ids.sort();
        Some(ids[self.rng.gen_range(0..ids.len())])
    }

    pub fn cancel_random(&mut self) {
        if let Some(job) = self.random_acked() {
            self.clients.cancelled.insert(job);
            let shard = self.rng.gen_range(0..self.opts.shards);
            self.request(shard, JobRequest::Cancel { job }, Req::Cancel);
        }
    }

    pub fn wait_random(&mut self) {
        if let Some(job) = self.random_acked() {
            let shard = self.rng.gen_range(0..self.opts.shards);
            self.request(shard, JobRequest::Wait { job }, Req::Wait);
            // And a client that waits too, or follows the output, but may go away first:
            // what it registered must go with it (checked at the end, `Shard::footprint`).
            let body = if self.rng.gen_bool(0.5) {
                JobRequest::Wait { job }
            } else {
                JobRequest::Logs { job, follow: true }
            };
            self.abandon(shard, body);
        }
    }

    /// A request whose client stops listening after a while, half the time (its answers
    /// are not checked).
    fn abandon(&mut self, shard: usize, body: JobRequest) {
        self.clients.next_req += 1;
        let id = ReqId(self.clients.next_req);
        let lat = self.rng.gen_range(50..1_000);
        let era = self.server.era;
        self.at(
            lat,
            Ev::Input {
                shard,
                era,
                input: Input::Client(id, body),
            },
        );
        if self.rng.gen_bool(0.5) {
            let gone = lat + self.rng.gen_range(0..ms(5_000));
            self.count("client went away");
            self.at(
                gone,
                Ev::Input {
                    shard,
                    era,
                    input: Input::Gone(id),
                },
            );
        }
    }

    /// `hodei job retry` of a final job: a new job.
    pub fn retry_random(&mut self) {
        self.clients.scheduled -= 1;
        let mut done: Vec<JobId> = self.clients.finals.iter().copied().collect();
        if done.is_empty() {
            return;
        }
        done.sort();
        let job = done[self.rng.gen_range(0..done.len())];
        let shard = self.rng.gen_range(0..self.opts.shards);
        self.request(
            shard,
            JobRequest::Retry { job },
            Req::Submit {
                n: 1,
                key: None,
                wait: false,
                answered: BTreeSet::new(),
                retry_of: Some(job),
            },
        );
    }

    /// `hodei worker drain`.
    pub fn drain_request(&mut self, worker: WorkerId, timeout_ms: u64) {
        let shard = self.rng.gen_range(0..self.opts.shards);
        let body = JobRequest::DrainWorker { worker, timeout_ms };
        self.request(shard, body, Req::Drain);
    }

    /// A reply leaves the server (after its turn's commit).
    pub fn client_reply(&mut self, req: ReqId, reply: Reply, last: bool) {
        let Some(mut r) = self.clients.pending.remove(&req) else {
            return;
        };
        match (&mut r, reply) {
            (
                Req::Submit {
                    wait: true,
                    n,
                    answered,
                    ..
                },
                Reply::Msg(FromServer::Job(rec)),
            ) => {
                if !rec.state.is_final() {
                    let msg = format!("submit-wait answered {} with {}", rec.id, rec.state);
                    self.violation(msg);
                }
                if !self.clients.acked.contains(&rec.id) || !answered.insert(rec.id) {
                    let msg = format!("submit-wait answered {} twice or unasked", rec.id);
                    self.violation(msg);
                }
                if last != (answered.len() == *n) {
                    let msg = format!(
                        "submit-wait of {n} jobs: last = {last} after {} answers",
                        answered.len()
                    );
                    self.violation(msg);
                }
                self.clients.waited.push(*rec);
            }
            (Req::Submit { n, key, wait, .. }, Reply::Msg(FromServer::Submitted { ids })) => {
                if *wait && last && *n > 0 {
                    self.violation(format!("submit-wait {req:?} ended at its acknowledgement"));
                }
                if ids.len() != *n {
                    let msg = format!("submit of {n} jobs answered with {} ids", ids.len());
                    self.violation(msg);
                }
                if let (Some(k), Some(id)) = (key.clone(), ids.first()) {
                    let known = self.clients.keys.entry(k).or_default();
                    // Retention deletes a key with its job: a job for the key after that is new.
                    known.retain(|j| !self.store.expired.contains_key(j));
                    known.insert(*id);
                }
                for id in ids {
                    self.clients.acked.insert(id);
                    if self.store.jobs.get(&id).is_some_and(|r| r.state.is_final()) {
                        self.clients.finals.insert(id);
                    }
                }
            }
            // A retry of a job that expired meanwhile: it is gone, and says so.
            (
                Req::Submit {
                    retry_of: Some(job),
                    ..
                },
                Reply::Msg(FromServer::Error { kind, message }),
            ) if self.store.expired.contains_key(job)
                && kind == ErrorKind::NotFound
                && message.contains("expired") => {}
            (Req::Submit { .. }, other) => {
                self.violation(format!("submit {req:?} answered {other:?}"));
            }
            (Req::Wait, Reply::Msg(FromServer::Job(rec))) => {
                if !rec.state.is_final() {
                    self.violation(format!("wait for {} answered with {}", rec.id, rec.state));
                }
                self.clients.waited.push(*rec);
            }
            _ => {}
        }
        if !last {
            self.clients.pending.insert(req, r);
        }
    }
}
