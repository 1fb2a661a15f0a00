//! Job requests: answered by the shards. Each one's permission, the shard that answers it
//! and the audit record of the call are stated here, beside its fields.

use super::Permission;
use crate::ids::{JobId, WorkerId};
use crate::spec::JobSpec;
use crate::state::JobState;

/// A request about jobs, workers or events.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum JobRequest {
    /// Submit jobs; answered once all are durable.
    Submit {
        /// The jobs.
        specs: Vec<JobSpec>,
    },
    /// Submit jobs and wait for them on the same stream: `Submitted` once all are durable,
    /// then one `Job` per job as it reaches a final state (in the order they end), the
    /// stream ending with the last. One request instead of one `Wait` per job.
    SubmitWait {
        /// The jobs.
        specs: Vec<JobSpec>,
    },
    /// One job.
    GetJob {
        /// Job.
        job: JobId,
    },
    /// Jobs, optionally of one state.
    ListJobs {
        /// Filter.
        state: Option<JobState>,
    },
    /// Cancel a job (idempotent).
    Cancel {
        /// Job.
        job: JobId,
    },
    /// A job's stored output; with `follow`, then live output until it ends.
    Logs {
        /// Job.
        job: JobId,
        /// Keep streaming.
        follow: bool,
    },
    /// Answer once the job is final.
    Wait {
        /// Job.
        job: JobId,
    },
    /// Workers.
    ListWorkers,
    /// Submit a finished job again, as a new job.
    Retry {
        /// The finished job.
        job: JobId,
    },
    /// Drain a worker (its agent finishes its jobs, then leaves).
    DrainWorker {
        /// Worker.
        worker: WorkerId,
        /// Grace for its running jobs.
        timeout_ms: u64,
    },
    /// Events after a cursor (last seq seen per shard, index = shard), optionally of one
    /// job; with `follow`, then live events until the client goes away.
    Events {
        /// Last seq seen per shard.
        since: Vec<u64>,
        /// Only this job's events.
        job: Option<JobId>,
        /// Keep streaming.
        follow: bool,
    },
}

/// Where a job request is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// By the shard the client is connected to.
    Here,
    /// By the shard that owns this job.
    Job(JobId),
    /// By the shard that owns this worker.
    Worker(WorkerId),
    /// By the shard that owns this idempotency key.
    Key(&'a str),
    /// By every shard, each answering for its own part.
    AllShards,
    /// Nowhere: the request is invalid, for this reason.
    Invalid(&'static str),
}

/// The audit record a call makes before its effects: what it was, what it names, and the
/// correlation id of the job it is about, when there is exactly one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditCall {
    /// `call.submit`, `call.cancel`, ...
    pub action: &'static str,
    /// The job or worker it names, or empty.
    pub subject: String,
    /// Anything else worth keeping (`3 job(s)`).
    pub detail: String,
    /// The correlation id of a single submitted job, or empty.
    pub correlation_id: String,
}

impl JobRequest {
    /// The permission the caller's role must grant.
    #[must_use]
    pub const fn permission(&self) -> Permission {
        match self {
            Self::Submit { .. } | Self::SubmitWait { .. } => Permission::Submit,
            Self::GetJob { .. }
            | Self::ListJobs { .. }
            | Self::Logs { .. }
            | Self::Wait { .. }
            | Self::ListWorkers
            | Self::Events { .. } => Permission::Read,
            Self::Cancel { .. } | Self::Retry { .. } => Permission::Cancel,
            Self::DrainWorker { .. } => Permission::ManageWorkers,
        }
    }

    /// Which shard answers it. A submit goes to the shard of its idempotency key when it has
    /// one (so that shard's index catches a repeat), and may carry a key only alone.
    #[must_use]
    pub fn route(&self) -> Route<'_> {
        match self {
            Self::Submit { specs } | Self::SubmitWait { specs } => {
                let mut keys = specs
                    .iter()
                    .filter_map(|s| s.policy.idempotency_key.as_deref());
                match (keys.next(), specs.len()) {
                    (None, _) => Route::Here,
                    (Some(k), 1) => Route::Key(k),
                    (Some(_), _) => Route::Invalid(
                        "an idempotency key can only be given on a single-job submit",
                    ),
                }
            }
            Self::ListJobs { .. } | Self::ListWorkers | Self::Events { .. } => Route::AllShards,
            Self::GetJob { job }
            | Self::Cancel { job }
            | Self::Logs { job, .. }
            | Self::Wait { job }
            | Self::Retry { job } => Route::Job(*job),
            Self::DrainWorker { worker, .. } => Route::Worker(*worker),
        }
    }

    /// The one job it is about, if any (a caller who sees only its own jobs is checked
    /// against that job's owner).
    #[must_use]
    pub const fn job(&self) -> Option<JobId> {
        match self {
            Self::GetJob { job }
            | Self::Cancel { job }
            | Self::Logs { job, .. }
            | Self::Wait { job }
            | Self::Retry { job } => Some(*job),
            _ => None,
        }
    }

    /// The audit record of the call, for the calls that change something.
    #[must_use]
    pub fn audit(&self) -> Option<AuditCall> {
        let call = |action, subject: String, detail: String| AuditCall {
            action,
            subject,
            detail,
            correlation_id: String::new(),
        };
        Some(match self {
            Self::Submit { specs } | Self::SubmitWait { specs } => AuditCall {
                correlation_id: match specs.as_slice() {
                    [one] => one.policy.correlation_id.clone(),
                    _ => String::new(),
                },
                ..call(
                    "call.submit",
                    String::new(),
                    format!("{} job(s)", specs.len()),
                )
            },
            Self::Cancel { job } => call("call.cancel", job.to_string(), String::new()),
            Self::Retry { job } => call("call.retry", job.to_string(), String::new()),
            Self::DrainWorker { worker, timeout_ms } => call(
                "call.drain",
                worker.to_string(),
                format!("timeout_ms={timeout_ms}"),
            ),
            Self::GetJob { .. }
            | Self::ListJobs { .. }
            | Self::Logs { .. }
            | Self::Wait { .. }
            | Self::ListWorkers
            | Self::Events { .. } => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed(key: &str) -> JobSpec {
        let mut s = JobSpec::exec("true", &[]);
        s.policy.idempotency_key = Some(key.to_owned());
        s
    }

    /// A submit with a key goes to the key's shard, and only alone; reads of one job go to
    /// its owner, listings everywhere.
    #[test]
    fn routes() {
        let plain = JobSpec::exec("true", &[]);
        let job = JobId::new(1, 1, 1);
        let submit = |specs| JobRequest::Submit { specs };
        assert_eq!(
            submit(vec![plain.clone(), plain.clone()]).route(),
            Route::Here
        );
        assert_eq!(submit(vec![keyed("k")]).route(), Route::Key("k"));
        assert!(matches!(
            submit(vec![keyed("k"), plain]).route(),
            Route::Invalid(_)
        ));
        assert_eq!(JobRequest::Wait { job }.route(), Route::Job(job));
        assert_eq!(JobRequest::ListWorkers.route(), Route::AllShards);
    }

    /// Only the calls that change something are audited, and a single job's submit carries
    /// its correlation id.
    #[test]
    fn audits_calls_that_change_something() {
        let mut spec = JobSpec::exec("true", &[]);
        spec.policy.correlation_id = "c1".to_owned();
        let one = JobRequest::Submit {
            specs: vec![spec.clone()],
        }
        .audit();
        assert_eq!(
            one.as_ref()
                .map(|a| (a.action, a.correlation_id.as_str(), a.detail.as_str())),
            Some(("call.submit", "c1", "1 job(s)"))
        );
        let two = JobRequest::SubmitWait {
            specs: vec![spec.clone(), spec],
        }
        .audit();
        assert_eq!(two.map(|a| a.correlation_id), Some(String::new()));
        assert_eq!(
            JobRequest::GetJob {
                job: JobId::new(0, 1, 1)
            }
            .audit(),
            None
        );
    }
}
