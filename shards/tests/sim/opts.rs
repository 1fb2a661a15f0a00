//! What a run injects: [`Opts`].

/// What one run injects, and how big it is.
#[derive(Clone, Debug)]
pub struct Opts {
    pub shards: usize,
    pub agents: usize,
    pub slots: u32,
    pub jobs: usize,
    /// Submissions are spread over this span.
    pub submit_ms: u64,
    /// Jobs no agent can run (a label none has, or more CPUs than any has), submitted first
    /// at a higher priority than the rest, each ending at its queue timeout.
    pub backlog: usize,
    /// Run time of a job's process (uniform).
    pub job_ms: (u64, u64),
    /// Random retry policies, exit codes, run-time limits and queue timeouts.
    pub policies: bool,
    /// Floor of the random policies' first retry delay.
    pub min_backoff_ms: u64,
    /// `hodei job retry` requests for random final jobs.
    pub retries: usize,
    /// Single-job submits with an idempotency key, each sent twice.
    pub keyed: usize,
    /// Cancel requests for random acknowledged jobs.
    pub cancels: usize,
    /// Wait requests for random acknowledged jobs.
    pub waits: usize,
    /// Faults happen within [10 ms, fault_ms].
    pub fault_ms: u64,
    pub restarts: usize,
    /// Agent processes killed (their jobs die with them); they come back as new workers.
    pub crashes: usize,
    pub partitions: usize,
    pub partition_ms: (u64, u64),
    /// Connections dropped with everything in flight.
    pub conn_losses: usize,
    /// Agents drained (half by SIGTERM, half by `hodei worker drain`); they come back later.
    pub drains: usize,
    /// Longest commit (fsync) of a turn; 0 is a fast disk (0.2-0.3 ms).
    pub slow_disk_ms: u64,
    /// After a server restart, agents wait up to this long before reconnecting.
    pub late_reconnect_ms: u64,
    /// One job in eight runs up to this long instead (0: none).
    pub long_job_ms: u64,
    /// Some spawns take longer than the assignment acknowledgement deadline.
    pub slow_spawns: bool,
    pub assign_timeout_ms: Option<u64>,
    /// Agents first connect this long after the start (the shards sit idle meanwhile).
    pub agents_after_ms: u64,
    /// All agents connect to this shard (forces work stealing).
    pub agent_shard: Option<usize>,
    /// All submissions go to this shard.
    pub submit_shard: Option<usize>,
    /// Agent crashes that kill the guard too (`kill -9` of both, an OOM kill of the agent's
    /// group): the jobs' processes survive the agent until its next start sweeps them (the
    /// guard's journal), before its first `Hello`. The agent keeps its worker id.
    pub orphaning_crashes: usize,
    /// One job in four writes this many bytes (0: none), more than a frame holds: the agent
    /// sends it in batches of at most `runner::BATCH` bytes, after an outage too.
    pub big_output: u64,
    /// Episodes of a full disk: a shard's commits wait until space returns (the server holds
    /// the batch and commits it again), for a time within `full_ms`.
    pub disk_full: usize,
    pub full_ms: (u64, u64),
    /// Pauses of an agent's whole host (a VM suspended, a cgroup frozen): the agent and its
    /// jobs stop for a time within `pause_ms`, then go on where they were; results of jobs
    /// that ended before arrive late.
    pub pauses: usize,
    pub pause_ms: (u64, u64),
    /// `hodei server --retain-finished`: final jobs are deleted this long after they end
    /// (`None`: kept). A run then goes on past the window once every job is final, and
    /// checks what expired (`sim/retention.rs`).
    pub retain_ms: Option<u64>,
}

impl Opts {
    /// No faults, default policies.
    pub fn base(shards: usize, agents: usize, jobs: usize) -> Self {
        Self {
            shards,
            agents,
            slots: 2,
            jobs,
            submit_ms: 1_500,
            backlog: 0,
            job_ms: (1, 50),
            long_job_ms: 0,
            policies: false,
            min_backoff_ms: 0,
            retries: 0,
            keyed: 0,
            cancels: 0,
            waits: 0,
            fault_ms: 3_000,
            restarts: 0,
            crashes: 0,
            partitions: 0,
            partition_ms: (500, 20_000),
            conn_losses: 0,
            drains: 0,
            slow_disk_ms: 0,
            late_reconnect_ms: 0,
            slow_spawns: false,
            assign_timeout_ms: None,
            agents_after_ms: 0,
            agent_shard: None,
            submit_shard: None,
            orphaning_crashes: 0,
            big_output: 0,
            disk_full: 0,
            full_ms: (1_000, 20_000),
            pauses: 0,
            pause_ms: (500, 12_000),
            retain_ms: None,
        }
    }

    /// Can a process legitimately complete successfully twice? Only when a result is lost
    /// with its agent (tracked separately), or an agent stays away longer than the server
    /// waits for it while holding a finished result, or a slow start outlives the ack
    /// deadline (a paused host is away too), or a full disk on the agent's shard holds its `Welcome` (stored with the
    /// worker) until the job's owner stopped waiting for it to re-attach.
    pub fn exactly_once(&self) -> bool {
        (self.partitions == 0 || self.partition_ms.1 <= 5_000)
            && self.late_reconnect_ms == 0
            && !self.slow_spawns
            && (self.disk_full == 0 || self.full_ms.1 <= 5_000)
            && (self.pauses == 0 || self.pause_ms.1 <= 5_000)
    }
}
