//! Hodei's shard core, sans-IO.
//!
//! A [`Shard`] owns a disjoint set of jobs (those whose id it minted) and workers (the agents
//! that registered with it). It is a plain struct: the driver feeds it `handle_*(now, ..)`
//! calls and it answers through one narrow trait, [`Comm`]: records to persist, messages to
//! agents, to clients and to other shards. It never reads a clock and never does I/O, so the
//! real server (`hodei server`) and the deterministic simulation (`tests/sim/`) run the same
//! code.
//!
//! The contract with the driver: everything a handler passes to [`Comm::persist`] must be
//! durable before anything it sent after it leaves the process. The server batches all
//! effects of one loop turn, commits the batch with one fsync (group commit), then releases
//! the messages.

mod clients;
mod comm;
mod holdings;
mod job_table;
mod jobs;
mod lifecycle;
mod queue;
mod reports;
mod retention;
mod sched;
mod shard;
mod stealing;
mod subscriptions;
#[cfg(test)]
mod tests;
mod timers;
mod worker_table;
mod workers;

pub use clients::Footprint;
pub use comm::{Comm, ConnId, Effects, Grant, Offer, Reply, Report, ReqId, ShardMsg, StoreOp};
pub use lifecycle::key_shard;
pub use retention::{EXPIRE_PER_PASS, retention_interval};
pub use shard::{Shard, ShardConfig};
