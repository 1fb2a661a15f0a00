//! The wire messages: one enum per direction, archived with rkyv, sent in frames
//! ([`crate::frame`]) stamped with [`PROTOCOL_VERSION`].
//!
//! - agent → server: [`FromAgent`]; server → agent: [`ToAgent`]. One bidirectional stream per
//!   agent connection, opened by the agent, so output and its job's result stay in order.
//! - client (CLI/API) → server: [`ToServer`]; server → client: [`FromServer`]. One stream per
//!   request.

pub use crate::request::{ControlRequest, JobRequest, Route, ToServer};

use crate::event::Event;
use crate::ids::{Attempt, JobId, WorkerId};
use crate::job::{JobRecord, Outcome, WorkerInfo};
use crate::spec::JobSpec;
use crate::time::Micros;

/// Bumped on any incompatible change of these enums; a frame of another version is refused.
pub const PROTOCOL_VERSION: u16 = 4;

/// ALPN protocol id of agent connections ([`FromAgent`]/[`ToAgent`]).
pub const ALPN_AGENT: &[u8] = b"hodei-agent/1";

/// ALPN protocol id of client connections ([`ToServer`]/[`FromServer`]).
pub const ALPN_CLIENT: &[u8] = b"hodei-client/1";

/// What an agent offers, sent in its [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Resources {
    /// Concurrent jobs it accepts.
    pub slots: u32,
    /// CPUs.
    pub cpus: u32,
    /// Memory in bytes.
    pub memory: u64,
    /// Labels (`key=value`).
    pub labels: Vec<(String, String)>,
}

/// A job an agent still runs (or finished without an acknowledged report) when it
/// (re)connects.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct HeldJob {
    /// The job.
    pub job: JobId,
    /// Its attempt.
    pub attempt: Attempt,
    /// CPUs it reserved.
    pub cpus: u32,
    /// Memory it reserved.
    pub memory: u64,
}

/// First message on an agent connection.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Hello {
    /// The id from an earlier registration, when reconnecting.
    pub worker: Option<WorkerId>,
    /// Host name, for listings.
    pub hostname: String,
    /// What it offers.
    pub resources: Resources,
    /// Jobs it holds from before the reconnect.
    pub held: Vec<HeldJob>,
}

/// Which output stream a chunk came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug, PartialEq, Eq))]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// A piece of a job's output.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Chunk {
    /// Which stream.
    pub stream: Stream,
    /// The bytes.
    pub data: Vec<u8>,
}

/// Agent → server.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum FromAgent {
    /// Registration (first message).
    Hello(Hello),
    /// Liveness and load.
    Heartbeat {
        /// Jobs running now.
        running: u32,
        /// 1-minute load average × 100.
        load: u32,
    },
    /// The job's process started.
    Started {
        /// Job.
        job: JobId,
        /// Attempt.
        attempt: Attempt,
        /// Agent clock at spawn.
        at: Micros,
    },
    /// A batch of output. `offset` is the position of its first byte in the attempt's
    /// output; a batch the server already has is recognised by it and not stored twice.
    Output {
        /// Job.
        job: JobId,
        /// Attempt.
        attempt: Attempt,
        /// Offset of the first byte.
        offset: u64,
        /// Chunks in order.
        chunks: Vec<Chunk>,
    },
    /// The agent is draining (SIGTERM): assign nothing new; running jobs get `timeout_ms`.
    Draining {
        /// Grace before the agent kills what still runs.
        timeout_ms: u64,
    },
    /// The agent drained and leaves: mark the worker terminated (not lost).
    Goodbye,
    /// A new certificate for this raw P-256 public key, for the same identity (the current
    /// one expires soon). Answered by the connection, never seen by a shard.
    Renew {
        /// The agent's new public key.
        public_key: Vec<u8>,
    },
    /// The job ended; sent after all of its output.
    Finished {
        /// Job.
        job: JobId,
        /// Attempt.
        attempt: Attempt,
        /// How it ended.
        outcome: Outcome,
        /// Agent clock at exit.
        at: Micros,
    },
    /// The assignment has waited on the agent for a slot for a while (`hodei agent
    /// --prefetch`): the server stops expecting `Started` within its assign timeout. (Last, so that the
    /// encoding of every earlier variant is unchanged.)
    Accepted {
        /// Job.
        job: JobId,
        /// Attempt.
        attempt: Attempt,
    },
}

/// Server → agent.
// Assign dominates the traffic that matters; boxing its spec would add an allocation to it.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum ToAgent {
    /// Registration accepted.
    Welcome {
        /// The agent's worker id (keep it for reconnects).
        worker: WorkerId,
        /// Send a heartbeat this often.
        heartbeat_ms: u64,
        /// Disconnected this long, the agent kills its jobs: the server requeues them only
        /// later (its disconnect grace), so an attempt never runs twice at once.
        lease_ms: u64,
    },
    /// Drain: take no new job, let running ones finish within `timeout_ms`, then leave.
    Drain {
        /// Grace for running jobs.
        timeout_ms: u64,
    },
    /// This shard does not own the worker id: reconnect to this UDP port on the same host.
    Redirect {
        /// Port of the owning shard.
        port: u16,
    },
    /// Registration refused; the agent should stop.
    Refused {
        /// Why.
        reason: String,
    },
    /// Run a job.
    Assign {
        /// Job.
        job: JobId,
        /// Attempt (fences every report).
        attempt: Attempt,
        /// What to run.
        spec: JobSpec,
        /// The values of `spec.secrets`, for this attempt only (filled in by the server as
        /// the message leaves; never stored).
        secrets: Vec<SecretValue>,
    },
    /// Kill a job's process group and report it cancelled.
    Cancel {
        /// Job.
        job: JobId,
        /// Attempt.
        attempt: Attempt,
    },
    /// This attempt is stale (the job moved on): kill it if running and forget it.
    Abandon {
        /// Job.
        job: JobId,
        /// Attempt.
        attempt: Attempt,
    },
    /// A held job was re-attached; resend output from `output_end`.
    Resume {
        /// Job.
        job: JobId,
        /// Attempt.
        attempt: Attempt,
        /// Bytes of output the server has stored.
        output_end: u64,
    },
    /// Output up to `output_end` is durable.
    OutputAck {
        /// Job.
        job: JobId,
        /// Attempt.
        attempt: Attempt,
        /// Durable bytes.
        output_end: u64,
    },
    /// The server holds a final result for this attempt (the agent's, or a cancel made while
    /// the agent was away): stop it if it still runs, and forget it.
    FinishedAck {
        /// Job.
        job: JobId,
        /// Attempt.
        attempt: Attempt,
    },
    /// The renewed certificate (for the next connections; this one goes on).
    Renewed {
        /// Certificate, PEM.
        cert_pem: String,
        /// Expiry, ms since the epoch.
        expires_at_ms: u64,
    },
}

/// A secret value in a request; its Debug never shows the bytes.
#[derive(Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct SecretBytes(pub Vec<u8>);

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

/// Server → client.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum FromServer {
    /// Ids of submitted jobs, in order; all are durable.
    Submitted {
        /// Ids.
        ids: Vec<JobId>,
    },
    /// One job.
    Job(Box<JobRecord>),
    /// Several jobs.
    Jobs(Vec<JobRecord>),
    /// Workers.
    Workers(Vec<WorkerInfo>),
    /// Output (more may follow).
    Log(Vec<Chunk>),
    /// End of a stream of [`FromServer::Log`].
    LogEnd,
    /// Events, in order per shard.
    Events(Vec<Event>),
    /// A new token: its id and its text (shown once, never stored).
    Token {
        /// Id.
        id: String,
        /// The token.
        token: String,
    },
    /// Tokens.
    Tokens(Vec<TokenInfo>),
    /// Secrets.
    Secrets(Vec<SecretInfo>),
    /// Audit records, one JSON object each.
    AuditRecords(Vec<String>),
    /// Every audit chain verified.
    AuditVerified {
        /// Records checked.
        records: u64,
        /// Chains checked.
        chains: u32,
    },
    /// Done (a request with nothing else to say).
    Done,
    /// A joined agent's identity and client certificate.
    Joined {
        /// The identity the certificate is bound to.
        identity: String,
        /// Its certificate, PEM.
        cert_pem: String,
        /// When it expires (ms since the epoch); renew before.
        expires_at_ms: u64,
    },
    /// The request failed.
    Error {
        /// What kind.
        kind: ErrorKind,
        /// For humans.
        message: String,
    },
    /// The server's own figures, in a fixed order; a name ends with its unit (`_us`, `_ms`)
    /// unless it is a count.
    Stats(Vec<Figure>),
}

/// One named figure of [`FromServer::Stats`].
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Figure {
    /// What it is, with its unit as the last word (`heartbeat_p99_us`) unless a count.
    pub name: String,
    /// Its value.
    pub value: u64,
}

/// Kinds of request failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum ErrorKind {
    /// The job or worker does not exist.
    NotFound,
    /// The request is invalid.
    Invalid,
    /// The server failed (store error, shutting down).
    Internal,
    /// No token, or a token the server does not accept.
    Unauthenticated,
    /// The token's role lacks the permission.
    Forbidden,
}

/// A secret's value on its way to the agent that runs a job needing it.
#[derive(Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct SecretValue {
    /// Its name.
    pub name: String,
    /// Its value.
    pub value: Vec<u8>,
}

impl std::fmt::Debug for SecretValue {
    // A secret's value must never reach a log line, even a debug one.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SecretValue({}: <{} bytes>)",
            self.name,
            self.value.len()
        )
    }
}

/// The first and only frame a client sends on a request stream: its token and its request.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Request {
    /// An API token (`hodei_...`).
    pub token: String,
    /// What it asks.
    pub body: ToServer,
}

/// An API token as listed (never its secret).
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct TokenInfo {
    /// Its id (16 hex digits).
    pub id: String,
    /// `admin`, `submitter`, `reader` or `agent`.
    pub role: String,
    /// Who it is for (the actor in the audit log).
    pub name: String,
    /// Creation, ms since the epoch.
    pub created_at_ms: u64,
    /// Expiry, ms since the epoch.
    pub expires_at_ms: Option<u64>,
    /// Uses left (join tokens).
    pub uses_left: Option<u32>,
    /// Revoked.
    pub revoked: bool,
}

/// A secret as listed (never its value).
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct SecretInfo {
    /// Its name.
    pub name: String,
    /// Last set, ms since the epoch.
    pub updated_at_ms: u64,
    /// Who set it.
    pub updated_by: String,
}
