//! Draining, on SIGTERM/SIGINT (`--drain-timeout`) or the server's `Drain { timeout_ms }`:
//!
//! 1. Tell the server (`Draining { timeout_ms }`, again on every new connection) and take no
//!    new job: an `Assign` that still arrives is answered `Finished { Drained }` unspawned.
//! 2. Let running jobs finish, streaming and reporting as usual, until none runs or the
//!    timeout passes (a second signal ends the wait at once).
//! 3. Kill the rest; their runners report `Cancelled`, sent as `Drained` (retried by the
//!    server like a lost attempt). A runner that does not report within its kill grace plus
//!    [`REPORT_SLACK`] is reported `Drained` without it.
//! 4. Leave: wait up to [`LEAVE_GRACE`] for the acknowledgements, send `Goodbye`, close.
//!    Disconnected, try to reconnect for up to [`LEAVE_GRACE`] to report and say goodbye.
//!
//! [`Drain`] is the pure part (what to do at a given time); the `impl Agent` applies it,
//! online (`online.rs`) and offline (`session.rs`) alike.

use std::time::Duration;

use hodei_core::job::Outcome;
use hodei_core::time::wall_now;
use hodei_core::wire::FromAgent;
use tokio::time::Instant;
use tracing::{info, warn};

use super::{Agent, later};

/// Killed jobs get the runner's kill grace plus this to report their end.
const REPORT_SLACK: Duration = Duration::from_secs(3);

/// Once no job runs: the time to reconnect and, once connected, the time to wait for the
/// acknowledgements before saying goodbye.
pub(super) const LEAVE_GRACE: Duration = Duration::from_secs(5);

/// A drain in progress.
#[derive(Debug)]
pub(super) struct Drain {
    /// Jobs still running then are killed.
    deadline: Instant,
    /// How long killed jobs get to report.
    kill_wait: Duration,
    killed_at: Option<Instant>,
    /// When no job was left running.
    leaving_since: Option<Instant>,
    /// `Draining` was sent on the current connection with the current deadline.
    pub(super) announced: bool,
}

/// The drain's next move.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Jobs still run; look again then.
    Wait(Instant),
    /// The timeout passed: kill what runs.
    Kill,
    /// Killed jobs did not report in time: report them without their runner.
    GiveUp,
    /// Nothing runs: report, say goodbye, leave.
    Leave,
}

impl Drain {
    pub(super) fn new(now: Instant, timeout: Duration, kill_wait: Duration) -> Self {
        Self {
            deadline: later(now, timeout),
            kill_wait,
            killed_at: None,
            leaving_since: None,
            announced: false,
        }
    }

    /// A second drain request: the earlier deadline wins.
    pub(super) fn tighten(&mut self, now: Instant, timeout: Duration) {
        let deadline = later(now, timeout);
        if deadline < self.deadline {
            self.deadline = deadline;
            self.announced = false;
        }
    }

    /// Time left before the kill.
    pub(super) fn remaining(&self, now: Instant) -> Duration {
        self.deadline.saturating_duration_since(now)
    }

    pub(super) const fn leaving(&self) -> bool {
        self.leaving_since.is_some()
    }

    /// Until when the agent tries to reach the server to report and say goodbye.
    pub(super) fn leave_until(&self) -> Option<Instant> {
        self.leaving_since.map(|since| later(since, LEAVE_GRACE))
    }

    /// What to do at `now` with `running` jobs not yet ended. Returns `Kill` and `GiveUp`
    /// once each; the caller acts on them at once.
    pub(super) fn step(&mut self, now: Instant, running: usize) -> Step {
        if running == 0 {
            self.leaving_since.get_or_insert(now);
            return Step::Leave;
        }
        match self.killed_at {
            None if now >= self.deadline => {
                self.killed_at = Some(now);
                Step::Kill
            }
            None => Step::Wait(self.deadline),
            Some(at) => {
                let until = later(at, self.kill_wait);
                if now >= until {
                    Step::GiveUp
                } else {
                    Step::Wait(until)
                }
            }
        }
    }
}

/// The outcome to report for a job the drain killed: the runner says `Cancelled`, but this
/// kill was no user's cancel, and the server retries a `Drained` attempt. An attempt that
/// ended otherwise (it exited on its own meanwhile) keeps its outcome.
pub(super) fn drained(outcome: Outcome) -> Outcome {
    match outcome {
        Outcome::Cancelled => Outcome::Drained,
        other => other,
    }
}

impl Agent {
    /// SIGTERM/SIGINT: the first starts a drain, a later one kills what runs at once.
    pub(super) fn on_signal(&mut self, now: Instant) {
        let running = self.running();
        match &mut self.drain {
            None => self.start_drain(now, self.drain_timeout, "signal"),
            Some(d) => {
                warn!(running, "second signal: killing the running jobs now");
                d.tighten(now, Duration::ZERO);
            }
        }
    }

    /// Starts a drain, or brings its deadline forward.
    pub(super) fn start_drain(&mut self, now: Instant, timeout: Duration, why: &str) {
        let running = self.running();
        match &mut self.drain {
            Some(d) => d.tighten(now, timeout),
            None => {
                info!(
                    running,
                    ?timeout,
                    "draining ({why}): no new job; running jobs may finish"
                );
                let kill_wait = self.opts.kill_grace + REPORT_SLACK;
                self.drain = Some(Drain::new(now, timeout, kill_wait));
            }
        }
    }

    /// Applies the drain's due steps. Returns the made-up results to send (jobs whose runner
    /// did not report after the kill; for those not waiting for a `Resume`) and when to look
    /// again (`None` when no drain runs or it is leaving: the caller bounds that phase).
    pub(super) fn drain_tick(&mut self, now: Instant) -> (Vec<FromAgent>, Option<Instant>) {
        let mut reports = Vec::new();
        if self.drain.is_none() {
            return (reports, None); // the common case: skip counting the jobs
        }
        // Terminates: after Kill comes Wait or GiveUp, and GiveUp ends every job.
        loop {
            let running = self.running();
            let step = match &mut self.drain {
                Some(drain) => drain.step(now, running),
                None => return (reports, None),
            };
            match step {
                Step::Wait(at) => return (reports, Some(at)),
                Step::Leave => return (reports, None),
                Step::Kill => self.kill_for_drain(),
                Step::GiveUp => reports.extend(self.give_up()),
            }
        }
    }

    /// The drain timeout passed: kill every running job's process group.
    fn kill_for_drain(&mut self) {
        for (job, h) in &mut self.jobs {
            if h.finished.is_some() {
                continue;
            }
            let Some(handle) = &h.handle else { continue };
            warn!(job = %job, cid = %h.cid, "drain grace over: killing the job");
            handle.cancel();
            // A cancel the server asked for stays a cancel.
            h.drained = !h.cancel_requested;
        }
    }

    /// Killed jobs whose runner did not report in time (a descendant holding the pipes,
    /// say): end them as drained without it.
    fn give_up(&mut self) -> Vec<FromAgent> {
        let mut reports = Vec::new();
        for (job, h) in &mut self.jobs {
            if h.finished.is_some() {
                continue;
            }
            warn!(job = %job, cid = %h.cid, "killed job did not end in time: reporting it drained");
            let outcome = if h.cancel_requested {
                Outcome::Cancelled
            } else {
                Outcome::Drained
            };
            let at = wall_now();
            h.finished = Some((outcome.clone(), at));
            if !h.resuming {
                reports.push(FromAgent::Finished {
                    job: *job,
                    attempt: h.attempt,
                    outcome,
                    at,
                });
            }
        }
        reports
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn drain(now: Instant) -> Drain {
        Drain::new(now, 30 * S, 5 * S)
    }

    #[test]
    fn nothing_running_leaves_at_once() {
        let t = Instant::now();
        let mut d = drain(t);
        assert!(!d.leaving());
        assert_eq!(d.step(t, 0), Step::Leave);
        assert!(d.leaving());
        assert_eq!(d.leave_until(), Some(t + LEAVE_GRACE));
    }

    #[test]
    fn waits_for_running_jobs_then_kills_then_gives_up() {
        let t = Instant::now();
        let mut d = drain(t);
        assert_eq!(d.step(t, 2), Step::Wait(t + 30 * S));
        assert_eq!(d.remaining(t + 10 * S), 20 * S);
        assert_eq!(d.step(t + 30 * S, 2), Step::Kill);
        assert_eq!(d.remaining(t + 31 * S), Duration::ZERO);
        // The kill is sent once; then the killed jobs get kill_wait to report.
        assert_eq!(d.step(t + 31 * S, 2), Step::Wait(t + 35 * S));
        assert_eq!(d.step(t + 35 * S, 1), Step::GiveUp);
        assert_eq!(d.step(t + 35 * S, 0), Step::Leave);
        // Leaving starts when the last job ended, not at the deadline.
        assert_eq!(d.leave_until(), Some(t + 35 * S + LEAVE_GRACE));
    }

    #[test]
    fn jobs_finishing_in_time_leave_before_the_deadline() {
        let t = Instant::now();
        let mut d = drain(t);
        assert_eq!(d.step(t + S, 1), Step::Wait(t + 30 * S));
        assert_eq!(d.step(t + 2 * S, 0), Step::Leave);
        assert_eq!(d.leave_until(), Some(t + 2 * S + LEAVE_GRACE));
    }

    #[test]
    fn a_second_request_only_brings_the_deadline_forward() {
        let t = Instant::now();
        let mut d = drain(t);
        d.announced = true;
        d.tighten(t, 60 * S);
        assert_eq!(d.step(t, 1), Step::Wait(t + 30 * S));
        assert!(d.announced, "an unchanged deadline is not announced again");
        d.tighten(t + S, 10 * S);
        assert_eq!(d.step(t + S, 1), Step::Wait(t + 11 * S));
        assert!(!d.announced, "the server hears of the earlier deadline");
        // A second signal: kill now.
        d.tighten(t + 2 * S, Duration::ZERO);
        assert_eq!(d.step(t + 2 * S, 1), Step::Kill);
    }

    #[test]
    fn a_zero_or_huge_timeout_is_fine() {
        let t = Instant::now();
        assert_eq!(Drain::new(t, Duration::ZERO, S).step(t, 1), Step::Kill);
        let mut d = Drain::new(t, Duration::MAX, S);
        assert!(matches!(d.step(t + 3600 * S, 1), Step::Wait(_)));
    }

    #[test]
    fn a_drain_kill_is_reported_drained() {
        assert_eq!(drained(Outcome::Cancelled), Outcome::Drained);
        assert_eq!(drained(Outcome::Exited(0)), Outcome::Exited(0));
        assert_eq!(drained(Outcome::Signaled(9)), Outcome::Signaled(9));
        assert_eq!(drained(Outcome::TimedOut), Outcome::TimedOut);
    }
}
