//! The simulated runner, the part of an agent that runs jobs (`agent/src/runner/`): start,
//! output, result, kill, and the replay a `Resume` asks for.
//!
//! A job's behaviour comes from its spec: `SIM_MS` (run time), `SIM_FAILS` (the first
//! attempts exit 1), `SIM_EXIT` (exit code after that); a run-time limit below `SIM_MS`
//! times out.

use hodei_core::ids::{Attempt, JobId};
use hodei_core::job::Outcome;
use hodei_core::spec::JobSpec;
use hodei_core::time::{Micros, ms};
use hodei_core::wire::{Chunk, FromAgent, Stream};
use rand::Rng;

use crate::world::{Ev, Sim};

/// An attempt an agent holds, from `Assign` until `FinishedAck` or `Abandon` (or the lease).
pub struct Held {
    pub attempt: Attempt,
    pub spec: JobSpec,
    pub started: Option<Micros>,
    pub produced: u64,
    pub finished: Option<(Outcome, Micros)>,
    /// Claimed in a Hello: its events are recorded, not sent, until `Resume` replays them.
    pub resuming: bool,
}

/// What a job does: run time, then outcome of attempt `attempt`.
pub fn behaviour(spec: &JobSpec, attempt: Attempt) -> (Micros, Outcome) {
    let var = |k: &str| {
        spec.env
            .iter()
            .find(|(n, _)| n == k)
            .and_then(|(_, v)| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let run = var("SIM_MS").max(1);
    match spec.timeout_ms {
        Some(limit) if limit < run => (ms(limit), Outcome::TimedOut),
        _ if u64::from(attempt.0) <= var("SIM_FAILS") => (ms(run), Outcome::Exited(1)),
        _ => (
            ms(run),
            Outcome::Exited(i32::try_from(var("SIM_EXIT")).unwrap_or(1)),
        ),
    }
}

/// The most output bytes one `Output` message carries, as the agent's spool reader bounds
/// its batches (`agent/src/runner/spool.rs`), far under a frame.
pub const BATCH: usize = 1 << 20;

/// The output of an attempt: a part when it starts, the rest when it completes (`SIM_OUT`
/// bytes more for a chatty job: more than a frame, so it must travel in batches).
pub fn output(spec: &JobSpec, job: JobId, attempt: Attempt) -> (Vec<u8>, Vec<u8>) {
    let big = spec
        .env
        .iter()
        .find(|(n, _)| n == "SIM_OUT")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut rest: Vec<u8> = (0..big).map(|i| b'a' + (i % 26) as u8).collect();
    rest.extend_from_slice(b"completed\n");
    (format!("{job}/{attempt} started|").into_bytes(), rest)
}

impl Sim {
    /// Sends an event of a job, unless the job waits for its `Resume`.
    fn job_send(&mut self, a: usize, job: JobId, msg: FromAgent) {
        if self.agents[a].jobs.get(&job).is_some_and(|h| !h.resuming) {
            self.agent_send(a, msg);
        }
    }

    pub fn assign(&mut self, a: usize, job: JobId, attempt: Attempt, spec: JobSpec) {
        let ag = &mut self.agents[a];
        if ag.jobs.get(&job).is_some_and(|h| h.attempt >= attempt) {
            return; // a duplicate
        }
        // A newer attempt replaces (kills) an older one of the same job.
        ag.jobs.insert(
            job,
            Held {
                attempt,
                spec,
                started: None,
                produced: 0,
                finished: None,
                resuming: false,
            },
        );
        let life = ag.life;
        let past_drain = ag.drain.is_some_and(|d| d <= self.now);
        let slow = self.opts.slow_spawns && self.rng.gen_ratio(1, 20);
        let spawn = if slow {
            let limit = ms(self.opts.assign_timeout_ms.unwrap_or(30_000));
            self.rng.gen_range(limit / 2..limit * 2)
        } else {
            self.rng.gen_range(100..1_000)
        };
        // A slow start is half the time a prefetched job waiting for a slot on its agent,
        // which says so: the server must then wait for its Started past the assign timeout.
        if slow && !past_drain && self.rng.gen_ratio(1, 2) {
            self.count("accepted");
            self.job_send(a, job, FromAgent::Accepted { job, attempt });
        }
        self.at(
            if past_drain { 0 } else { spawn },
            Ev::JobStart {
                agent: a,
                life,
                job,
                attempt,
            },
        );
    }

    pub fn job_start(&mut self, a: usize, life: u64, job: JobId, attempt: Attempt) {
        let now = self.now;
        let ag = &mut self.agents[a];
        if !ag.alive || ag.life != life {
            return;
        }
        let Some(h) = ag.jobs.get_mut(&job) else {
            return;
        };
        if h.attempt != attempt || h.started.is_some() || h.finished.is_some() {
            return;
        }
        h.started = Some(now);
        let (first, _) = output(&h.spec, job, attempt);
        h.produced = first.len() as u64;
        let (run, _) = behaviour(&h.spec, attempt);
        let past_drain = ag.drain.is_some_and(|d| d <= now);
        self.job_send(
            a,
            job,
            FromAgent::Started {
                job,
                attempt,
                at: now,
            },
        );
        let chunks = vec![Chunk {
            stream: Stream::Stdout,
            data: first,
        }];
        self.job_send(
            a,
            job,
            FromAgent::Output {
                job,
                attempt,
                offset: 0,
                chunks,
            },
        );
        if past_drain {
            self.kill(a, job, attempt, Outcome::Drained);
        } else {
            self.at(
                run,
                Ev::JobDone {
                    agent: a,
                    life,
                    job,
                    attempt,
                },
            );
        }
    }

    pub fn job_done(&mut self, a: usize, life: u64, job: JobId, attempt: Attempt) {
        let now = self.now;
        let ag = &mut self.agents[a];
        if !ag.alive || ag.life != life {
            return;
        }
        let Some(h) = ag.jobs.get_mut(&job) else {
            return;
        };
        if h.attempt != attempt || h.finished.is_some() {
            return;
        }
        let (_, outcome) = behaviour(&h.spec, attempt);
        let (first, rest) = output(&h.spec, job, attempt);
        let offset = h.produced;
        let completed = matches!(outcome, Outcome::Exited(_));
        if completed {
            h.produced += rest.len() as u64;
        }
        h.finished = Some((outcome.clone(), now));
        self.oracle.ran(job, attempt, &outcome);
        if completed {
            debug_assert_eq!(offset, first.len() as u64);
            for (offset, chunks) in batches(offset, &rest) {
                let msg = FromAgent::Output {
                    job,
                    attempt,
                    offset,
                    chunks,
                };
                self.job_send(a, job, msg);
            }
        }
        self.job_send(
            a,
            job,
            FromAgent::Finished {
                job,
                attempt,
                outcome,
                at: now,
            },
        );
    }

    /// Kills a running attempt, which then reports `outcome`.
    pub fn kill(&mut self, a: usize, job: JobId, attempt: Attempt, outcome: Outcome) {
        let now = self.now;
        let Some(h) = self.agents[a].jobs.get_mut(&job) else {
            return;
        };
        if h.attempt != attempt || h.finished.is_some() {
            return;
        }
        h.finished = Some((outcome.clone(), now));
        self.oracle.ran(job, attempt, &outcome);
        self.job_send(
            a,
            job,
            FromAgent::Finished {
                job,
                attempt,
                outcome,
                at: now,
            },
        );
    }

    /// Replays what the server may have missed: Started, output beyond `output_end`, the
    /// result.
    pub fn resume(&mut self, a: usize, job: JobId, attempt: Attempt, output_end: u64) {
        let Some(h) = self.agents[a].jobs.get_mut(&job) else {
            return;
        };
        if h.attempt != attempt {
            return;
        }
        h.resuming = false;
        let (started, produced, finished) = (h.started, h.produced, h.finished.clone());
        let spec = h.spec.clone();
        if let Some(at) = started {
            self.agent_send(a, FromAgent::Started { job, attempt, at });
        }
        if produced > output_end {
            let (mut all, rest) = output(&spec, job, attempt);
            all.extend(rest);
            let from = usize::try_from(output_end)
                .unwrap_or(usize::MAX)
                .min(all.len());
            let to = usize::try_from(produced)
                .unwrap_or(usize::MAX)
                .min(all.len());
            // What was spooled over the outage goes in bounded batches, in order.
            let spooled = all.get(from..to).unwrap_or_default();
            if spooled.len() > BATCH {
                self.count("spooled output resent in batches");
            }
            for (offset, chunks) in batches(output_end, spooled) {
                let msg = FromAgent::Output {
                    job,
                    attempt,
                    offset,
                    chunks,
                };
                self.agent_send(a, msg);
            }
        }
        if let Some((outcome, at)) = finished {
            self.agent_send(
                a,
                FromAgent::Finished {
                    job,
                    attempt,
                    outcome,
                    at,
                },
            );
        }
    }
}

/// `data` from `offset` on, cut in `Output` batches of at most [`BATCH`] bytes.
fn batches(offset: u64, data: &[u8]) -> Vec<(u64, Vec<Chunk>)> {
    let mut at = offset;
    data.chunks(BATCH)
        .map(|part| {
            let chunk = Chunk {
                stream: Stream::Stdout,
                data: part.to_vec(),
            };
            let batch = (at, vec![chunk]);
            at += part.len() as u64;
            batch
        })
        .collect()
}
