//! Deterministic simulation of a Hodei server: the real `hodei_shards::Shard`s, driven with
//! simulated agents, clients, network and store on a virtual clock. One seed decides the
//! schedule, so a failing one replays exactly (`same_seed_replays_the_same_schedule`).
//!
//! Injected (`sim/opts.rs`): random latency (FIFO per link, reordered across links), server
//! restarts (`kill -9`: uncommitted turns, inboxes, in-flight messages and connections are
//! lost), slow disks (a turn's group commit takes up to 50 ms; its messages leave only
//! after it), agent crashes, partitions of an agent (QUIC retransmits, so messages are
//! delayed, and lost with the connection once the server's heartbeat timeout or either
//! side's 3 s idle timeout closes it), message loss (a connection dropped with everything in
//! flight), agents that reconnect late, drains (SIGTERM or `hodei worker drain`), slow
//! process starts, backlogs of jobs no agent can run queued ahead of the rest
//! (`sim/backlog.rs`), random retry policies, failing and timing-out jobs, queue timeouts,
//! idempotent double submits, cancels, waits and `job retry`, clients that go away while
//! waiting on a job or following its output, crashes of agent and guard together that leave
//! the jobs' processes running until the agent's next start sweeps them, hosts paused for up
//! to 12 s (agent and jobs frozen, their results late, stale ones fenced), output larger than
//! a frame resent after outages in batches of at most 1 MiB (`runner::BATCH`), and disks that
//! fill for up to 20 s, holding a shard's commits (and everything they release) until space
//! returns (`sim/edges.rs`). The simulated agent keeps the lease: disconnected for longer
//! than `Welcome.lease_ms`, it kills its running attempts.
//!
//! Checked (`sim/invariants.rs`), after every event: no job has two attempts running at
//! once (an attempt runs from its `Assign` until it ends or is dropped; an orphaned process
//! until it ends or is swept), and no agent runs more attempts than it has slots. On every
//! message: no `Output` carries more than a batch, and nothing a turn releases or stores
//! carries more output than `MAX_FRAME`. At every commit:
//! every stored transition is legal, a final state is never rewritten, attempts that started
//! never exceed `retries + 1`, a success is the current attempt's own result, every job
//! state change has its event in the same commit, events are numbered without gaps, output
//! is contiguous. Every 500 ms: no job queued on a shard fits a free worker of that shard
//! (work conservation with any backlog: every call ends with a scheduling pass), no pending
//! job waits 3 s beside a free worker anywhere that fits it, and no worker has more free
//! slots than slots. At the end:
//! every acknowledged job is stored in exactly one final state (one final event), which
//! agrees with what its process did and with its retry policy (no job fails without ever
//! starting, short of the bound on attempts lost before they start); idempotent submits got
//! one id and made one job; `Wait` saw the stored final state; worker events follow the worker
//! state machine; no pending job is left beside a free worker; no shard holds waiters,
//! followers, wait groups or registrations of any request, nor more worker deadlines than
//! workers (`Shard::footprint`). A shard whose disk is full is exempt from the cross-shard
//! work-conservation probe while it is full (it can make no assignment durable).
//!
//! The seeds that found bugs are named tests in `sim/regressions.rs` (a bug not fixed yet
//! gets an `#[ignore]`d one there).
//!
//! CI runs a bounded number of seeds per scenario (about 3,200 schedules in all, 12 of them
//! with 10,000-job backlogs). More:
//!
//! ```text
//! HODEI_SIM_SEEDS=2000 cargo test -p hodei-shards --release --test sim
//! ```
//!
//! `HODEI_SIM_KEEP_GOING=1` lists every failing seed instead of stopping at the first;
//! `HODEI_SIM_STATS=1` prints what each run did (faults that bit, event reasons). One seed,
//! printing every event whose text contains PATTERN (e.g. a job id):
//!
//! ```text
//! HODEI_SIM_SEED=42 HODEI_SIM_TRACE=PATTERN cargo test -p hodei-shards --release \
//!     --test sim SCENARIO -- --nocapture
//! ```

mod agent;
mod backlog;
mod client;
mod edges;
mod invariants;
mod net;
mod opts;
mod regressions;
mod retention;
mod runner;
mod scenarios;
mod server;
mod store;
mod world;
