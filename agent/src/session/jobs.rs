//! Bookkeeping of the attempts the agent holds: starting one (its secrets go to its runner
//! only, never into this bookkeeping), recording what its runner reports (and turning it into
//! the message for the server), and letting one go.

use std::sync::Arc;

use hodei_core::ids::{Attempt, JobId};
use hodei_core::job::Outcome;
use hodei_core::spec::{Command, JobSpec};
use hodei_core::time::wall_now;
use hodei_core::wire::FromAgent;
use tracing::debug;

use super::chunks::{self, trim};
use super::{Agent, Held, drain};
use crate::runner::{self, AttemptFiles, RunEvent, RunEventKind, RunHandle, Secrets};

impl Held {
    fn new(attempt: Attempt, spec: &JobSpec, handle: Option<RunHandle>) -> Self {
        Self {
            attempt,
            cpus: spec.cpus,
            memory: spec.memory,
            cid: spec.policy.correlation_id.clone(),
            handle,
            sent_end: 0,
            produced: 0,
            finished: None,
            runner_done: false,
            started_at: None,
            resuming: false,
            cancel_requested: false,
            drained: false,
            script: matches!(spec.command, Command::Script { .. }),
        }
    }
}

impl Agent {
    /// Jobs whose end is not known yet.
    pub(super) fn running(&self) -> usize {
        self.jobs.values().filter(|h| h.finished.is_none()).count()
    }

    /// Starts an attempt; `secrets` go to its runner and die with it.
    pub(super) fn start(&mut self, job: JobId, attempt: Attempt, spec: JobSpec, secrets: Secrets) {
        debug!(job = %job, cid = %spec.policy.correlation_id, %attempt, "assigned");
        let held = Held::new(attempt, &spec, None);
        let handle = runner::spawn_job(
            job,
            attempt,
            spec,
            secrets,
            Arc::clone(&self.opts),
            self.events_tx.clone(),
        );
        self.jobs.insert(
            job,
            Held {
                handle: Some(handle),
                ..held
            },
        );
    }

    /// An assignment that arrived while draining: ended `Drained` without running. It is
    /// held like any result until the server acknowledges it. Returns the report to send.
    pub(super) fn refuse(&mut self, job: JobId, attempt: Attempt, spec: &JobSpec) -> FromAgent {
        debug!(job = %job, cid = %spec.policy.correlation_id, %attempt, "draining: assignment refused");
        let at = wall_now();
        let mut held = Held::new(attempt, spec, None);
        held.finished = Some((Outcome::Drained, at));
        self.jobs.insert(job, held);
        FromAgent::Finished {
            job,
            attempt,
            outcome: Outcome::Drained,
            at,
        }
    }

    /// Lets go of an attempt already removed from `jobs`: kills it if it still runs and
    /// deletes its files.
    pub(super) fn drop_held(&mut self, job: JobId, h: Held) {
        if let Some(handle) = &h.handle
            && !h.runner_done
        {
            // The server has moved on from this attempt (abandoned, replaced, or its lease
            // is over): it may already run elsewhere, so no SIGTERM grace. A no-op if it ended.
            handle.kill();
            // Nobody acknowledges its output any more: a pump held by its window would
            // never see the job's end.
            handle.release();
            self.fenced.insert((job, h.attempt));
            // It may still be writing its files: look for all of them now, and again when
            // it ends. Its directory stays its own until then.
            let files = AttemptFiles {
                workdir: false,
                ..AttemptFiles::ALL
            };
            return runner::forget(&self.opts, job, h.attempt, files);
        }
        let files = AttemptFiles {
            spool: h.produced > 0,
            script: h.script && h.handle.is_some(),
            workdir: true,
        };
        runner::forget(&self.opts, job, h.attempt, files);
    }

    /// Records a runner event; returns what to send the server about it on a live
    /// connection: nothing for a stale or forgotten attempt, for one waiting for its
    /// `Resume`, or for output the server already has.
    pub(super) fn record(&mut self, ev: RunEvent) -> Option<FromAgent> {
        let (job, attempt) = (ev.job, ev.attempt);
        let Some(h) = self.jobs.get_mut(&job).filter(|h| h.attempt == attempt) else {
            if matches!(ev.kind, RunEventKind::Finished { .. })
                && self.fenced.remove(&(job, attempt))
            {
                // Killed and forgotten earlier; it may have spooled while dying, and its
                // directory is free only now.
                runner::forget(&self.opts, job, attempt, AttemptFiles::ALL);
            }
            return None;
        };
        if h.finished.is_some() {
            // The drain gave up on it and reported it drained: its late events change nothing,
            // except that late output is in the spool, which the end must delete.
            match &ev.kind {
                RunEventKind::Finished { .. } => h.runner_done = true,
                RunEventKind::Output { offset, chunks } => {
                    h.produced = h.produced.max(offset + chunks::len(chunks));
                }
                RunEventKind::Queued | RunEventKind::Started { .. } => {}
            }
            return None;
        }
        match ev.kind {
            RunEventKind::Queued => {
                debug!(job = %job, cid = %h.cid, %attempt, "queued for a slot");
                (!h.resuming).then_some(FromAgent::Accepted { job, attempt })
            }
            RunEventKind::Started { at } => {
                debug!(job = %job, cid = %h.cid, %attempt, "started");
                h.started_at = Some(at);
                (!h.resuming).then_some(FromAgent::Started { job, attempt, at })
            }
            RunEventKind::Output { offset, chunks } => {
                let end = offset + chunks::len(&chunks);
                h.produced = h.produced.max(end);
                if h.resuming {
                    return None;
                }
                let start = offset.max(h.sent_end);
                let trimmed = trim(chunks, offset, h.sent_end);
                h.sent_end = h.sent_end.max(end);
                (!trimmed.is_empty()).then_some(FromAgent::Output {
                    job,
                    attempt,
                    offset: start,
                    chunks: trimmed,
                })
            }
            RunEventKind::Finished { outcome, at } => {
                let outcome = if h.drained {
                    drain::drained(outcome)
                } else {
                    outcome
                };
                debug!(job = %job, cid = %h.cid, %attempt, ?outcome, "finished");
                h.runner_done = true;
                h.finished = Some((outcome.clone(), at));
                (!h.resuming).then_some(FromAgent::Finished {
                    job,
                    attempt,
                    outcome,
                    at,
                })
            }
        }
    }
}
