//! The job and worker state machines. Every state change in Hodei goes through
//! `can_transition_to`; a refused transition is a bug or a stale message, never applied.

use std::fmt;
use std::str::FromStr;

/// Where a job is in its life.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq))]
pub enum JobState {
    /// Durable, queued, waiting for a worker.
    Pending,
    /// Sent to a worker, not yet reported started.
    Assigned,
    /// Its process runs on a worker.
    Running,
    /// Exited with code 0.
    Succeeded,
    /// Exited non-zero, was killed by a signal, or could not start.
    Failed,
    /// Cancelled by a user.
    Cancelled,
    /// Killed for exceeding its time limit.
    TimedOut,
}

impl JobState {
    /// All states, in lifecycle order.
    pub const ALL: [Self; 7] = [
        Self::Pending,
        Self::Assigned,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
        Self::TimedOut,
    ];

    /// True for states a job never leaves.
    #[must_use]
    pub const fn is_final(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Cancelled | Self::TimedOut
        )
    }

    /// True while a worker owns the job.
    #[must_use]
    pub const fn is_on_worker(self) -> bool {
        matches!(self, Self::Assigned | Self::Running)
    }

    /// The one transition rule for jobs.
    #[must_use]
    pub const fn can_transition_to(self, next: Self) -> bool {
        use JobState::{Assigned, Cancelled, Failed, Pending, Running, Succeeded, TimedOut};
        matches!(
            (self, next),
            (Pending, Assigned | Cancelled | Failed | TimedOut)
                // Requeue (worker lost, assignment refused) or a start that failed.
                | (Assigned, Running | Pending | Cancelled | Failed | TimedOut)
                | (Running, Succeeded | Failed | TimedOut | Cancelled | Pending)
        )
    }

    /// The lowercase name used by the CLI and JSON.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Assigned => "assigned",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::TimedOut => "timed_out",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|s| s.as_str()).collect();
                format!(
                    "unknown job state {s:?}; expected one of {}",
                    names.join(", ")
                )
            })
    }
}

impl serde::Serialize for JobState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Where a worker (an agent's registration) is in its life.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq))]
pub enum WorkerState {
    /// Connection open, registration not yet complete.
    Connecting,
    /// Registered with free slots.
    Ready,
    /// Registered, every slot in use.
    Busy,
    /// Takes no new jobs; finishing the ones it has.
    Draining,
    /// Connection lost; its jobs wait for it within the grace period.
    Disconnected,
    /// Did not come back in time; its jobs were requeued.
    Lost,
    /// Left cleanly; final.
    Terminated,
}

impl WorkerState {
    /// All states.
    pub const ALL: [Self; 7] = [
        Self::Connecting,
        Self::Ready,
        Self::Busy,
        Self::Draining,
        Self::Disconnected,
        Self::Lost,
        Self::Terminated,
    ];

    /// The one transition rule for workers.
    #[must_use]
    pub const fn can_transition_to(self, next: Self) -> bool {
        use WorkerState::{Busy, Connecting, Disconnected, Draining, Lost, Ready, Terminated};
        matches!(
            (self, next),
            (Connecting, Ready | Busy | Terminated | Disconnected)
                | (Ready, Busy | Draining | Disconnected | Terminated)
                | (Busy, Ready | Draining | Disconnected | Terminated)
                | (Draining, Terminated | Disconnected)
                | (Disconnected, Ready | Busy | Draining | Lost | Terminated)
                // A lost agent that comes back registers again; its old jobs were requeued.
                | (Lost, Ready | Busy | Terminated)
        )
    }

    /// True if the worker may receive new jobs.
    #[must_use]
    pub const fn accepts_jobs(self) -> bool {
        matches!(self, Self::Ready)
    }

    /// The lowercase name used by the CLI and JSON.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Ready => "ready",
            Self::Busy => "busy",
            Self::Draining => "draining",
            Self::Disconnected => "disconnected",
            Self::Lost => "lost",
            Self::Terminated => "terminated",
        }
    }
}

impl fmt::Display for WorkerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl serde::Serialize for WorkerState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn job_state() -> impl Strategy<Value = JobState> {
        proptest::sample::select(JobState::ALL.to_vec())
    }
    fn worker_state() -> impl Strategy<Value = WorkerState> {
        proptest::sample::select(WorkerState::ALL.to_vec())
    }

    proptest! {
        /// Final states are absorbing, nothing returns to a state by itself, and every
        /// random walk that follows the rule stays inside it.
        #[test]
        fn job_walks_respect_the_rule(steps in proptest::collection::vec(job_state(), 1..40)) {
            let mut s = JobState::Pending;
            for next in steps {
                prop_assert!(!s.can_transition_to(s), "self-loop on {s}");
                if s.is_final() {
                    prop_assert!(!s.can_transition_to(next));
                }
                if s.can_transition_to(next) {
                    s = next;
                }
            }
        }

        #[test]
        fn worker_walks_respect_the_rule(steps in proptest::collection::vec(worker_state(), 1..40)) {
            let mut s = WorkerState::Connecting;
            for next in steps {
                prop_assert!(!s.can_transition_to(s));
                if s == WorkerState::Terminated {
                    prop_assert!(!s.can_transition_to(next));
                }
                if s.can_transition_to(next) {
                    s = next;
                }
            }
        }

        #[test]
        fn names_round_trip(s in job_state()) {
            prop_assert_eq!(s.as_str().parse::<JobState>(), Ok(s));
        }
    }

    #[test]
    fn every_state_is_reachable_and_success_needs_running() {
        for target in JobState::ALL {
            let reachable = target == JobState::Pending
                || JobState::ALL.iter().any(|s| s.can_transition_to(target));
            assert!(reachable, "{target} unreachable");
        }
        assert!(!JobState::Pending.can_transition_to(JobState::Succeeded));
        assert!(!JobState::Assigned.can_transition_to(JobState::Succeeded));
        assert!(JobState::Running.can_transition_to(JobState::Succeeded));
        for target in WorkerState::ALL {
            let reachable = target == WorkerState::Connecting
                || WorkerState::ALL.iter().any(|s| s.can_transition_to(target));
            assert!(reachable, "{target} unreachable");
        }
    }
}
