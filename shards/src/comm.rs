//! The shard's only way out: the [`Comm`] trait, and the messages shards exchange.

use hodei_core::event::{Event, Subject};
use hodei_core::ids::{Attempt, JobId, WorkerId};
use hodei_core::job::{JobRecord, Outcome, WorkerInfo};
use hodei_core::spec::JobSpec;
use hodei_core::time::Micros;
use hodei_core::wire::{Chunk, FromServer, JobRequest, ToAgent};

/// An agent connection, numbered by the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// A client request, numbered by the driver of the shard that received it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReqId(pub u64);

/// A write to the store.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)] // lives for one loop turn; boxing costs an allocation per write
pub enum StoreOp {
    /// Replace a job's record.
    PutJob(JobRecord),
    /// Append a batch of a job attempt's output at `offset`.
    PutOutput {
        /// Job.
        job: JobId,
        /// Attempt.
        attempt: Attempt,
        /// Offset of its first byte.
        offset: u64,
        /// The bytes.
        chunks: Vec<Chunk>,
    },
    /// Append an event (in the same batch as the change it records).
    PutEvent(Event),
    /// A final job's retention is over: delete its record (its output and events go later,
    /// off the shard thread; see `retention.rs`).
    DeleteJob(JobId),
}

impl StoreOp {
    /// The job this write is about, if it is about one.
    #[must_use]
    pub fn job(&self) -> Option<JobId> {
        match self {
            StoreOp::PutJob(rec) => Some(rec.id),
            StoreOp::PutOutput { job, .. } | StoreOp::DeleteJob(job) => Some(*job),
            StoreOp::PutEvent(ev) => match ev.subject {
                Subject::Job(job) => Some(job),
                Subject::Worker(_) => None,
            },
        }
    }
}

/// What goes back to a client.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// A message for the client.
    Msg(FromServer),
    /// Read the stored output of `job` attempt `attempt` below offset `upto` and send it;
    /// anything beyond arrives as later [`Reply::Msg`] `Log`s. (The driver reads the store;
    /// the shard keeps no output in memory.)
    StoredLogs {
        /// Job.
        job: JobId,
        /// Attempt.
        attempt: Attempt,
        /// Durable bytes at the time of the request.
        upto: u64,
    },
    /// Read shard `shard`'s stored events with `after < seq <= upto` (optionally of one job)
    /// and send them; later events arrive as [`Reply::Msg`] `Events`.
    StoredEvents {
        /// Shard whose events.
        shard: u8,
        /// Last seq the client has.
        after: u64,
        /// Last seq stored now.
        upto: u64,
        /// Only this job's.
        job: Option<JobId>,
    },
}

/// Capacity of one worker that a stealing shard offers to the owner of queued jobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    /// The worker (owned by the stealing shard).
    pub worker: WorkerId,
    /// Free slots.
    pub slots: u32,
    /// Free CPUs.
    pub cpus: u32,
    /// Free memory.
    pub memory: u64,
    /// Its labels.
    pub labels: Vec<(String, String)>,
}

/// A job the owner assigned to an offered worker.
#[derive(Clone, Debug, PartialEq)]
pub struct Grant {
    /// Job.
    pub job: JobId,
    /// Its new attempt.
    pub attempt: Attempt,
    /// The worker it was assigned to.
    pub worker: WorkerId,
    /// What to run.
    pub spec: JobSpec,
}

/// What a worker's shard reports to a job's owner about an attempt.
#[derive(Clone, Debug, PartialEq)]
pub enum Report {
    /// The agent started the process.
    Started {
        /// Agent clock.
        at: Micros,
    },
    /// Output batch.
    Output {
        /// Offset.
        offset: u64,
        /// Bytes.
        chunks: Vec<Chunk>,
    },
    /// The process ended.
    Finished {
        /// How.
        outcome: Outcome,
        /// Agent clock.
        at: Micros,
    },
    /// The attempt waits on its agent for a slot (prefetch): no `Started` deadline.
    Accepted,
    /// The agent (re)connected holding this attempt.
    Claim,
    /// The worker lost the attempt (agent lost, restarted, or refused the grant).
    Lost {
        /// Why.
        reason: String,
    },
}

/// Shard-to-shard messages. The driver delivers them in order per pair of shards.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)] // sent in batches (a Vec per turn); boxing adds allocations
pub enum ShardMsg {
    /// A client request for a job this shard owns (or a fan-out part of a listing).
    Request {
        /// Shard that holds the client.
        origin: usize,
        /// Its request number there.
        req: ReqId,
        /// The request.
        body: JobRequest,
    },
    /// An answer to a forwarded request.
    Reply {
        /// Request number at the receiving shard.
        req: ReqId,
        /// Answer.
        reply: Reply,
        /// No more replies follow.
        last: bool,
    },
    /// One shard's part of a listing fan-out.
    Part {
        /// Request number at the receiving shard.
        req: ReqId,
        /// Jobs found.
        jobs: Vec<JobRecord>,
        /// Workers found.
        workers: Vec<WorkerInfo>,
    },
    /// The sender has queued jobs it cannot place on its own workers.
    WorkAvailable {
        /// Sender.
        from: usize,
    },
    /// The sender has idle capacity; assign queued jobs to it.
    StealRequest {
        /// Sender.
        from: usize,
        /// Capacity reserved for this request.
        offers: Vec<Offer>,
    },
    /// Answer to a steal request.
    StealReply {
        /// Sender.
        from: usize,
        /// Jobs assigned to the offered workers (durably).
        grants: Vec<Grant>,
        /// The sender still has queued jobs.
        more: bool,
    },
    /// From a worker's shard to a job's owner.
    Report {
        /// Worker.
        worker: WorkerId,
        /// Job (owned by the receiver).
        job: JobId,
        /// Attempt.
        attempt: Attempt,
        /// What happened.
        report: Report,
    },
    /// A client went away: drop what its request left on the receiver.
    ClientGone {
        /// Shard that held the client.
        origin: usize,
        /// Its request there.
        req: ReqId,
    },
    /// The sender deleted these jobs (retention); the receiver owns their idempotency keys
    /// (only after the shard count changed) and forgets them.
    KeysExpired {
        /// Key and the job it named.
        keys: Vec<(String, JobId)>,
    },
    /// From a job's owner to a worker's shard: forward this to the agent.
    ToWorker {
        /// Worker (owned by the receiver).
        worker: WorkerId,
        /// Message.
        msg: ToAgent,
    },
}

/// Every side effect of a shard goes through here, so a test can record exactly what left.
pub trait Comm {
    /// Make a record durable (before anything sent after it is released).
    fn persist(&mut self, op: StoreOp);
    /// Send to an agent connection.
    fn send_agent(&mut self, conn: ConnId, msg: ToAgent);
    /// Close an agent connection (after sending what was queued for it).
    fn close_agent(&mut self, conn: ConnId);
    /// Send to another shard.
    fn send_shard(&mut self, shard: usize, msg: ShardMsg);
    /// Answer a client request received by this shard; `last` ends the request's stream.
    fn reply(&mut self, req: ReqId, reply: Reply, last: bool);
}

/// A [`Comm`] that records every effect, in order per kind: the server's driver collects one
/// loop turn in it (to commit the writes before releasing the rest), and tests and the
/// simulation read exactly what a shard did.
#[derive(Debug, Default)]
pub struct Effects {
    /// Store writes.
    pub persists: Vec<StoreOp>,
    /// Messages to agent connections.
    pub agent: Vec<(ConnId, ToAgent)>,
    /// Connections to close.
    pub close: Vec<ConnId>,
    /// Messages to other shards.
    pub shard: Vec<(usize, ShardMsg)>,
    /// Client replies.
    pub reply: Vec<(ReqId, Reply, bool)>,
}

impl Effects {
    /// True if nothing was recorded.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.persists.is_empty()
            && self.agent.is_empty()
            && self.close.is_empty()
            && self.shard.is_empty()
            && self.reply.is_empty()
    }

    /// Moves everything `other` recorded to the end of this, keeping the order of each kind.
    pub fn append(&mut self, other: &mut Effects) {
        self.persists.append(&mut other.persists);
        self.agent.append(&mut other.agent);
        self.close.append(&mut other.close);
        self.shard.append(&mut other.shard);
        self.reply.append(&mut other.reply);
    }
}

impl Comm for Effects {
    fn persist(&mut self, op: StoreOp) {
        self.persists.push(op);
    }
    fn send_agent(&mut self, conn: ConnId, msg: ToAgent) {
        self.agent.push((conn, msg));
    }
    fn close_agent(&mut self, conn: ConnId) {
        self.close.push(conn);
    }
    fn send_shard(&mut self, shard: usize, msg: ShardMsg) {
        self.shard.push((shard, msg));
    }
    fn reply(&mut self, req: ReqId, reply: Reply, last: bool) {
        self.reply.push((req, reply, last));
    }
}
