//! The invariants: checked at every commit, after every event, periodically, and at the end
//! of a run. The oracle records what the agents' processes really did.

use std::collections::{HashMap, HashSet};

use hodei_core::event::{EventKind, Subject};
use hodei_core::ids::{Attempt, JobId, WorkerId};
use hodei_core::job::Outcome;
use hodei_core::spec::RetryOn;
use hodei_core::state::{JobState, WorkerState};
use hodei_core::time::{Micros, ms};
use hodei_shards::StoreOp;

use crate::runner::output;
use crate::world::Sim;

/// A pending job beside a matching free worker for this long is a work-conservation bug.
const STARVING: Micros = ms(3_000);

/// How many attempts of a job may end before they start without using a retry, in one
/// server life (the shard's `MAX_UNSTARTED`).
const MAX_UNSTARTED: u32 = 16;

#[derive(Default)]
pub struct Oracle {
    /// How each attempt's process ended.
    pub results: HashMap<(JobId, Attempt), Outcome>,
    /// Processes that completed with exit 0, per job.
    pub successes: HashMap<JobId, u32>,
    /// Jobs whose successful result died with its agent before it was acknowledged.
    pub lost_success: HashSet<JobId>,
    double_run: HashSet<JobId>,
    /// (pending job, free matching worker) → first seen.
    pub starving: HashMap<(JobId, WorkerId), Micros>,
    starving_reported: HashSet<JobId>,
    /// Jobs found queued beside a free fitting worker of their own shard (reported once).
    unconserved: HashSet<JobId>,
    over_attempts: HashSet<JobId>,
    /// Attempts that reached `Running` (stored events), per job: the ones that use retries.
    started: HashMap<JobId, HashSet<Attempt>>,
    overcommitted: HashSet<usize>,
}

impl Oracle {
    pub fn ran(&mut self, job: JobId, attempt: Attempt, outcome: &Outcome) {
        self.results.insert((job, attempt), outcome.clone());
        if *outcome == Outcome::Exited(0) {
            *self.successes.entry(job).or_insert(0) += 1;
        }
    }
}

fn fits(
    spec: &hodei_core::spec::JobSpec,
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

impl Sim {
    /// A turn's writes become durable: check each against what is stored, then store it.
    pub fn apply_commit(&mut self, shard: usize, ops: Vec<StoreOp>) {
        let mut changes: Vec<(JobId, Option<JobState>, JobState, Attempt)> = Vec::new();
        let mut events: HashMap<JobId, Vec<(JobState, Attempt)>> = HashMap::new();
        let mut last_seq = self.store.last_seq(shard);
        for op in ops {
            match op {
                StoreOp::PutJob(r) => {
                    if self.store.expired.contains_key(&r.id) {
                        let msg = format!("{}: stored as {} after it expired", r.id, r.state);
                        self.violation(msg);
                    }
                    let prev = self.store.jobs.get(&r.id);
                    let before = prev.map(|p| p.state);
                    if let Some(p) = prev {
                        if p.state.is_final() && *p != r {
                            let msg = format!(
                                "{}: final {} (attempt {}) rewritten as {} (attempt {})",
                                r.id, p.state, p.attempt, r.state, r.attempt
                            );
                            self.violation(msg);
                        } else if p.state != r.state && !p.state.can_transition_to(r.state) {
                            let msg = format!("{}: stored {} -> {}", r.id, p.state, r.state);
                            self.violation(msg);
                        }
                    }
                    if before != Some(r.state) {
                        changes.push((r.id, before, r.state, r.attempt));
                    }
                    let cap = r.spec.policy.retries as usize + 1;
                    let started = self.oracle.started.get(&r.id).map_or(0, HashSet::len);
                    if started > cap && self.oracle.over_attempts.insert(r.id) {
                        let msg = format!(
                            "{}: {started} attempts started (up to {}), exceeding retries {} + 1",
                            r.id, r.attempt, r.spec.policy.retries
                        );
                        self.violation(msg);
                    }
                    if r.state == JobState::Succeeded && before != Some(JobState::Succeeded) {
                        let result = self.oracle.results.get(&(r.id, r.attempt));
                        if result != Some(&Outcome::Exited(0)) {
                            let msg = format!(
                                "{} succeeded with attempt {} whose process ended {result:?}",
                                r.id, r.attempt
                            );
                            self.violation(msg);
                        }
                    }
                    if r.state.is_final() && self.clients.acked.contains(&r.id) {
                        self.clients.finals.insert(r.id);
                    }
                    if r.state.is_final() {
                        self.store.final_at.entry(r.id).or_insert(self.now);
                    }
                    self.store.jobs.insert(r.id, r);
                }
                StoreOp::PutOutput {
                    job,
                    attempt,
                    offset,
                    chunks,
                } => {
                    if self.store.expired.contains_key(&job) {
                        self.violation(format!("{job}: output stored after it expired"));
                    }
                    let len: u64 = chunks.iter().map(|c| c.data.len() as u64).sum();
                    if len > crate::runner::BATCH as u64 {
                        let msg = format!("{job}/{attempt}: {len} bytes of output in one write");
                        self.violation(msg);
                    }
                    let end = self.store.output.insert((job, attempt), offset + len);
                    let end = end.unwrap_or(0);
                    if offset != end {
                        let msg = format!("{job}/{attempt}: output stored at {offset}, end {end}");
                        self.violation(msg);
                    }
                }
                StoreOp::PutEvent(ev) => {
                    if usize::from(ev.shard) != shard || ev.seq != last_seq + 1 {
                        let msg = format!(
                            "shard {shard} stored event {}:{} after seq {last_seq}",
                            ev.shard, ev.seq
                        );
                        self.violation(msg);
                    }
                    last_seq = ev.seq;
                    if let Subject::Job(j) = ev.subject
                        && self.store.expired.contains_key(&j)
                    {
                        self.violation(format!("{j}: event {} stored after it expired", ev.seq));
                    }
                    if let (Subject::Job(j), EventKind::Job { state, attempt, .. }) =
                        (&ev.subject, &ev.kind)
                    {
                        events.entry(*j).or_default().push((*state, *attempt));
                        if *state == JobState::Running {
                            self.oracle.started.entry(*j).or_default().insert(*attempt);
                        }
                    }
                    self.store.events[shard].push(ev);
                }
                StoreOp::DeleteJob(id) => self.apply_delete(shard, id),
            }
        }
        for (job, from, to, attempt) in changes {
            let evs = events.entry(job).or_default();
            match evs.iter().position(|e| *e == (to, attempt)) {
                Some(i) => {
                    evs.remove(i);
                }
                None => {
                    let from = from.map_or("nothing".to_owned(), |s| s.to_string());
                    let msg = format!(
                        "{job}: {from} -> {to} (attempt {attempt}) stored without its event"
                    );
                    self.violation(msg);
                }
            }
        }
    }

    /// No job has two attempts running at once, anywhere, and no agent runs more attempts
    /// than it has slots (checked after every event).
    pub fn check_no_double_run(&mut self) {
        let mut seen: HashMap<JobId, (usize, Attempt)> = HashMap::new();
        let mut found = Vec::new();
        let mut overcommitted = Vec::new();
        let now = self.now;
        for (i, a) in self.agents.iter().enumerate() {
            for (job, attempt, until) in &a.orphans {
                if *until > now {
                    seen.insert(*job, (i, *attempt));
                }
            }
        }
        for (i, a) in self.agents.iter().enumerate() {
            if !a.alive {
                continue;
            }
            for (job, h) in &a.jobs {
                if h.finished.is_some() {
                    continue;
                }
                if let Some((other, att)) = seen.insert(*job, (i, h.attempt))
                    && !self.oracle.double_run.contains(job)
                {
                    found.push((*job, other, att, i, h.attempt));
                }
            }
        }
        for (i, a) in self.agents.iter().enumerate() {
            let running = a.jobs.values().filter(|h| h.finished.is_none()).count();
            if a.alive && running > a.slots as usize && self.oracle.overcommitted.insert(i) {
                overcommitted.push((i, running, a.slots));
            }
        }
        for (agent, running, slots) in overcommitted {
            let msg = format!("agent {agent} runs {running} attempts with {slots} slot(s)");
            self.violation(msg);
        }
        for (job, a1, att1, a2, att2) in found {
            self.oracle.double_run.insert(job);
            let msg = format!(
                "{job}: attempt {att1} on agent {a1} and attempt {att2} on agent {a2} run at once"
            );
            self.violation(msg);
        }
    }

    /// Work conservation within a shard, with any backlog: every shard call ends with its
    /// scheduling pass, so between calls no job queued on a shard (pending, not waiting for
    /// a retry) fits a free worker of that shard, whatever waits ahead of it.
    pub fn probe_local_conservation(&mut self) {
        let mut found = Vec::new();
        for (i, s) in self.server.shards.iter().enumerate() {
            let free: Vec<_> = s.free_workers().collect();
            if free.is_empty() {
                continue;
            }
            for j in s.jobs() {
                if j.state != JobState::Pending || j.not_before.is_some() {
                    continue;
                }
                let fitting = free.iter().find(|(_, slots, cpus, mem, labels)| {
                    fits(&j.spec, *slots, *cpus, *mem, labels)
                });
                if let Some((w, ..)) = fitting
                    && self.oracle.unconserved.insert(j.id)
                {
                    found.push((i, j.id, *w, s.pending()));
                }
            }
        }
        found.sort();
        for (shard, job, w, pending) in found {
            let msg = format!(
                "{job} queued on shard {shard} ({pending} queued) while its {w} is free and fits"
            );
            self.violation(msg);
        }
    }

    /// Work conservation across shards, while running: a pending job (not waiting for a
    /// retry) beside a matching free worker anywhere for `STARVING` (stealing takes a few
    /// messages).
    pub fn probe_conservation(&mut self) {
        self.probe_local_conservation();
        let now = self.now;
        let current = self.starving_pairs();
        let mut excess = Vec::new();
        for s in &self.server.shards {
            for (w, slots, ..) in s.free_workers() {
                if slots > self.opts.slots {
                    excess.push((w, slots));
                }
            }
        }
        for (w, slots) in excess {
            let msg = format!("{w} has {slots} free slots of {}", self.opts.slots);
            self.violation(msg);
        }
        self.oracle.starving.retain(|k, _| current.contains(k));
        let mut late = Vec::new();
        for k in current {
            let since = *self.oracle.starving.entry(k).or_insert(now);
            if now - since >= STARVING && !self.oracle.starving_reported.contains(&k.0) {
                late.push((k, since));
            }
        }
        late.sort();
        for ((job, w), since) in late {
            self.oracle.starving_reported.insert(job);
            let msg = format!(
                "{job} pending for {} ms while {w} is free and matches",
                (now - since) / 1_000
            );
            self.violation(msg);
        }
    }

    /// The end of a run: everything checked so far, and the final state of every job.
    pub fn check_end(&mut self) -> Vec<String> {
        let mut v = std::mem::take(&mut self.violations);
        let mut finals: HashMap<JobId, usize> = HashMap::new();
        for ev in self.store.events.iter().flatten() {
            if let (Subject::Job(j), EventKind::Job { state, .. }) = (&ev.subject, &ev.kind)
                && state.is_final()
            {
                *finals.entry(*j).or_default() += 1;
            }
        }
        let mut acked: Vec<JobId> = self.clients.acked.iter().copied().collect();
        acked.sort();
        for id in acked {
            let Some(r) = self.store.record(&id) else {
                v.push(format!("acknowledged {id} is not in the store"));
                continue;
            };
            if !r.state.is_final() {
                v.push(format!(
                    "{id} stuck in {} (attempt {}, worker {:?}, not before {:?})",
                    r.state, r.attempt, r.worker, r.not_before
                ));
                continue;
            }
            match finals.get(&id).copied().unwrap_or(0) {
                1 => {}
                n => v.push(format!("{id} ended {}, with {n} final events", r.state)),
            }
            let result = self.oracle.results.get(&(id, r.attempt));
            let p = &r.spec.policy;
            let retry_left = r.attempt.0 <= p.retries;
            let retries = |class: RetryOn| p.retry_on.contains(class) && retry_left;
            let cancelled = self.clients.cancelled.contains(&id);
            match r.state {
                JobState::Succeeded => {
                    let (a, b) = output(&r.spec, id, r.attempt);
                    let full = (a.len() + b.len()) as u64;
                    if self.store.output.get(&(id, r.attempt)).copied() != Some(full) {
                        v.push(format!("{id} succeeded with incomplete output"));
                    }
                    let runs = self.oracle.successes.get(&id).copied().unwrap_or(0);
                    if runs > 1
                        && self.opts.exactly_once()
                        && !self.oracle.lost_success.contains(&id)
                    {
                        v.push(format!(
                            "{id} succeeded, and its process succeeded {runs} times"
                        ));
                    }
                }
                JobState::Failed
                    if !self.oracle.started.contains_key(&id)
                        && !self.oracle.results.keys().any(|(j, _)| *j == id)
                        && r.attempt.0 <= MAX_UNSTARTED =>
                {
                    v.push(format!(
                        "{id} failed at attempt {} without ever starting: {:?}",
                        r.attempt, r.error
                    ));
                }
                JobState::Failed => match r.exit_code {
                    Some(c) => {
                        if result != Some(&Outcome::Exited(c)) {
                            v.push(format!(
                                "{id} failed with exit {c}, its process: {result:?}"
                            ));
                        } else if retries(RetryOn::EXIT) {
                            v.push(format!(
                                "{id} exited {c} at attempt {} but was not retried: {p:?}",
                                r.attempt
                            ));
                        }
                    }
                    None if retries(RetryOn::LOST) => {
                        v.push(format!(
                            "{id} failed ({:?}) at attempt {} but was not retried: {p:?}",
                            r.error, r.attempt
                        ));
                    }
                    None => {}
                },
                JobState::TimedOut if r.ran => {
                    if result != Some(&Outcome::TimedOut) {
                        v.push(format!("{id} timed out, its process: {result:?}"));
                    } else if retries(RetryOn::TIMEOUT) {
                        v.push(format!(
                            "{id} timed out at attempt {} but was not retried: {p:?}",
                            r.attempt
                        ));
                    }
                }
                JobState::TimedOut => {
                    if p.queue_timeout_ms.is_none() {
                        v.push(format!("{id} timed out without running or a queue timeout"));
                    }
                }
                JobState::Cancelled => {
                    let drained = result == Some(&Outcome::Drained);
                    if !cancelled && !drained {
                        v.push(format!(
                            "{id} cancelled, but nobody cancelled it: {result:?}"
                        ));
                    } else if !cancelled && retries(RetryOn::LOST) {
                        v.push(format!(
                            "{id} drained at attempt {} but was not retried",
                            r.attempt
                        ));
                    }
                }
                JobState::Pending | JobState::Assigned | JobState::Running => {}
            }
        }
        for (key, ids) in &self.clients.keys {
            if ids.len() > 1 {
                v.push(format!("idempotency key {key} answered with {ids:?}"));
            }
            let stored = self
                .store
                .jobs
                .values()
                .filter(|r| r.spec.policy.idempotency_key.as_ref() == Some(key))
                .count();
            if stored > 1 {
                v.push(format!("idempotency key {key}: {stored} jobs stored"));
            }
        }
        for w in &self.clients.waited {
            match self.store.record(&w.id) {
                Some(r)
                    if (r.state, r.attempt, r.exit_code) == (w.state, w.attempt, w.exit_code) => {}
                other => v.push(format!(
                    "wait for {} answered {} (attempt {}), stored: {:?}",
                    w.id,
                    w.state,
                    w.attempt,
                    other.map(|r| (r.state, r.attempt))
                )),
            }
        }
        v.extend(self.clients.open_submit_waits());
        v.extend(self.check_footprint_at_end());
        v.extend(self.check_worker_events());
        v.extend(self.check_conservation_at_end());
        v.extend(self.check_accepted_at_end());
        v.extend(self.check_retention_at_end());
        v
    }

    /// Every job is final at the end: no assign-timeout exemption may be left behind.
    fn check_accepted_at_end(&self) -> Vec<String> {
        let mut left: Vec<_> = self
            .server
            .shards
            .iter()
            .flat_map(|s| s.accepted())
            .collect();
        left.sort();
        left.into_iter()
            .map(|(j, a)| {
                format!("{j} attempt {a} still exempt from the assign timeout at the end")
            })
            .collect()
    }

    /// Stored worker events follow the worker state machine (Ready/Busy flips are not
    /// events; a registration starts afresh).
    fn check_worker_events(&self) -> Vec<String> {
        let mut v = Vec::new();
        let mut last: HashMap<WorkerId, WorkerState> = HashMap::new();
        for ev in self.store.events.iter().flatten() {
            let (Subject::Worker(w), EventKind::Worker { state }) = (&ev.subject, &ev.kind) else {
                continue;
            };
            // A registration, or a restart that lists a worker not back yet, starts afresh.
            let registered = matches!(
                ev.reason.as_deref(),
                Some("registered" | "not back since the server restarted")
            );
            if let (Some(prev), false) = (last.get(w), registered) {
                let from: &[WorkerState] = match prev {
                    WorkerState::Ready | WorkerState::Busy => {
                        &[WorkerState::Ready, WorkerState::Busy]
                    }
                    other => std::slice::from_ref(other),
                };
                if !from.iter().any(|f| f.can_transition_to(*state)) {
                    v.push(format!(
                        "worker {w}: event {prev} -> {state} ({:?})",
                        ev.reason
                    ));
                }
            }
            last.insert(*w, *state);
        }
        v
    }

    fn check_conservation_at_end(&self) -> Vec<String> {
        let pairs = self.starving_pairs();
        let mut pairs: Vec<_> = pairs.into_iter().collect();
        pairs.sort();
        pairs
            .into_iter()
            .map(|(j, w)| format!("{j} pending at the end while {w} is free"))
            .collect()
    }

    /// Pending jobs (not waiting for a retry) beside a free worker that fits them.
    fn starving_pairs(&self) -> HashSet<(JobId, WorkerId)> {
        let mut pairs = HashSet::new();
        for (i, s) in self.server.shards.iter().enumerate() {
            // A shard whose disk is full can make no assignment durable, so none leaves it
            // (its own queue is still checked at every call, `probe_local_conservation`).
            let full = self.server.full[i]
                .iter()
                .any(|(from, until)| *from <= self.now && self.now < *until);
            if full {
                continue;
            }
            for j in s.jobs() {
                if j.state != JobState::Pending || j.not_before.is_some_and(|t| t > self.now) {
                    continue;
                }
                for other in &self.server.shards {
                    for (w, slots, cpus, mem, labels) in other.free_workers() {
                        if fits(&j.spec, slots, cpus, mem, labels) {
                            pairs.insert((j.id, w));
                        }
                    }
                }
            }
        }
        pairs
    }
}

impl Sim {
    /// No message carries more output than a batch, far under a frame: what an agent sends,
    /// and what a turn releases (reports forwarded to a job's owner, logs to followers).
    pub fn check_sizes_from_agent(&mut self, msg: &hodei_core::wire::FromAgent) {
        if let hodei_core::wire::FromAgent::Output { job, chunks, .. } = msg {
            let len: usize = chunks.iter().map(|c| c.data.len()).sum();
            if len > crate::runner::BATCH {
                self.violation(format!("{job}: an Output of {len} bytes"));
            }
        }
    }

    pub fn check_sizes_of_turn(&mut self, turn: &hodei_shards::Effects) {
        use hodei_core::frame::MAX_FRAME;
        use hodei_core::wire::FromServer;
        use hodei_shards::{Reply, Report, ShardMsg};
        let mut over = Vec::new();
        for (_, m) in &turn.shard {
            if let ShardMsg::Report {
                job,
                report: Report::Output { chunks, .. },
                ..
            } = m
            {
                let len: usize = chunks.iter().map(|c| c.data.len()).sum();
                if len > MAX_FRAME {
                    over.push(format!("{job}: a report of {len} bytes of output"));
                }
            }
        }
        for (req, r, _) in &turn.reply {
            if let Reply::Msg(FromServer::Log(chunks)) = r {
                let len: usize = chunks.iter().map(|c| c.data.len()).sum();
                if len > MAX_FRAME {
                    over.push(format!("{req:?}: a log reply of {len} bytes"));
                }
            }
        }
        for v in over {
            self.violation(v);
        }
    }
}

impl Sim {
    /// Every job is final at the end: every request was answered or its client went away,
    /// so no shard holds anything for a client any more. (A client's shard may still list
    /// a request whose last answer is on its way when the run stops: `open_requests` is not
    /// checked.)
    fn check_footprint_at_end(&self) -> Vec<String> {
        let mut v = Vec::new();
        for s in &self.server.shards {
            let f = s.footprint();
            let held = [
                f.waiters,
                f.log_followers,
                f.event_followers,
                f.wait_groups,
                f.registered_requests,
                f.gathers,
            ];
            if held.iter().any(|n| *n > 0) {
                v.push(format!(
                    "shard {} holds client state at the end: {f:?}",
                    s.index()
                ));
            }
            if f.worker_timers > f.workers {
                v.push(format!(
                    "shard {}: more worker deadlines than workers: {f:?}",
                    s.index()
                ));
            }
        }
        v
    }
}
