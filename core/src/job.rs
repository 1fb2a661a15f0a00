//! The job record the server keeps in memory and in its store, the outcome an agent
//! reports, and the worker summary the CLI lists.

use crate::ids::{Attempt, JobId, WorkerId};
use crate::spec::JobSpec;
use crate::state::{JobState, WorkerState};
use crate::time::Micros;

/// How a job's process ended, as reported by the agent.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Outcome {
    /// The process exited with this code.
    Exited(i32),
    /// The process was killed by this signal (not by Hodei).
    Signaled(i32),
    /// Hodei killed its process group at the time limit.
    TimedOut,
    /// Hodei killed its process group on a cancel.
    Cancelled,
    /// The agent was drained and its grace period ran out: killed, retried like a lost
    /// attempt.
    Drained,
    /// It could not start (missing program, bad working directory...).
    SpawnFailed(String),
}

impl Outcome {
    /// The final job state this outcome leads to.
    #[must_use]
    pub const fn state(&self) -> JobState {
        match self {
            Self::Exited(0) => JobState::Succeeded,
            Self::Exited(_) | Self::Signaled(_) | Self::SpawnFailed(_) => JobState::Failed,
            Self::TimedOut => JobState::TimedOut,
            Self::Cancelled | Self::Drained => JobState::Cancelled,
        }
    }

    /// The retry class of an ending that is not a success.
    #[must_use]
    pub const fn retry_class(&self) -> Option<crate::spec::RetryOn> {
        match self {
            Self::Exited(0) | Self::Cancelled => None,
            Self::Exited(_) | Self::Signaled(_) | Self::SpawnFailed(_) => {
                Some(crate::spec::RetryOn::EXIT)
            }
            Self::TimedOut => Some(crate::spec::RetryOn::TIMEOUT),
            Self::Drained => Some(crate::spec::RetryOn::LOST),
        }
    }

    /// Exit code, if the process exited.
    #[must_use]
    pub const fn exit_code(&self) -> Option<i32> {
        match self {
            Self::Exited(c) => Some(*c),
            _ => None,
        }
    }

    /// A reason for anything but a clean exit, at most [`MAX_ERROR`] bytes (an agent's
    /// spawn error is its text, and whatever a job's record holds is stored with it).
    #[must_use]
    pub fn error(&self) -> Option<String> {
        let mut e = match self {
            Self::Exited(0) => None,
            Self::Exited(c) => Some(format!("exited with code {c}")),
            Self::Signaled(s) => Some(format!("killed by signal {s}")),
            Self::TimedOut => Some("timed out: process group killed".to_owned()),
            Self::Cancelled => Some("cancelled".to_owned()),
            Self::Drained => Some("killed when its agent was drained".to_owned()),
            Self::SpawnFailed(e) => Some(format!("could not start: {e}")),
        };
        if let Some(e) = e.as_mut() {
            truncate_error(e);
        }
        e
    }
}

/// Longest error text kept with a job.
pub const MAX_ERROR: usize = 4096;

/// Cuts `e` to at most [`MAX_ERROR`] bytes, at a character boundary, marking the cut.
pub fn truncate_error(e: &mut String) {
    const MARK: &str = " [...]";
    if e.len() <= MAX_ERROR {
        return;
    }
    let mut end = MAX_ERROR - MARK.len();
    while !e.is_char_boundary(end) {
        end -= 1;
    }
    e.truncate(end);
    e.push_str(MARK);
}

/// A job as the server knows it. Stored whole on every state change.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct JobRecord {
    /// Its id (carries the owning shard).
    pub id: JobId,
    /// What was submitted.
    pub spec: JobSpec,
    /// Current state.
    pub state: JobState,
    /// Current (or last) attempt; 0 before the first assignment.
    pub attempt: Attempt,
    /// Worker of the current attempt.
    pub worker: Option<WorkerId>,
    /// Exit code of the last attempt, if it exited.
    pub exit_code: Option<i32>,
    /// Why it did not succeed.
    pub error: Option<String>,
    /// Submission time.
    pub created_at: Micros,
    /// Start of the current attempt on its agent (agent clock).
    pub started_at: Option<Micros>,
    /// When it reached its final state.
    pub finished_at: Option<Micros>,
    /// Bytes of output stored for the current attempt (the agent's spool offset).
    pub output_end: u64,
    /// Pending for a retry: not eligible before this time.
    pub not_before: Option<Micros>,
    /// Some attempt reached `Running` (the queue timeout no longer applies).
    pub ran: bool,
    /// The job this one re-submits (`hodei job retry`).
    pub retry_of: Option<JobId>,
}

impl JobRecord {
    /// A new pending job.
    #[must_use]
    pub const fn new(id: JobId, spec: JobSpec, now: Micros) -> Self {
        Self {
            id,
            spec,
            state: JobState::Pending,
            attempt: Attempt(0),
            worker: None,
            exit_code: None,
            error: None,
            created_at: now,
            started_at: None,
            finished_at: None,
            output_end: 0,
            not_before: None,
            ran: false,
            retry_of: None,
        }
    }
}

/// A worker as listed by `hodei worker list`.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct WorkerInfo {
    /// Its id.
    pub id: WorkerId,
    /// Host name the agent reported.
    pub hostname: String,
    /// State.
    pub state: WorkerState,
    /// Slots in total.
    pub slots: u32,
    /// Jobs it runs now.
    pub running: u32,
    /// CPUs it offers.
    pub cpus: u32,
    /// Memory it offers, bytes.
    pub memory: u64,
    /// Its labels.
    pub labels: Vec<(String, String)>,
    /// Last message received.
    pub last_seen: Micros,
}
