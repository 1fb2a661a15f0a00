//! Hodei's core: the vocabulary every other crate speaks, with no runtime, socket or QUIC
//! dependency.
//!
//! - [`ids`]: job, worker and attempt newtypes; job and worker ids carry the shard that minted
//!   them, so any component routes a message by reading the id.
//! - [`spec`]: what a user submits ([`spec::JobSpec`]) and its validation.
//! - [`state`]: the job and worker state machines; every transition goes through one
//!   `can_transition_to`.
//! - [`job`]: the job record the server keeps and stores, and its outcome.
//! - [`event`]: numbered, persisted events of every job and worker state change.
//! - [`wire`]: the versioned rkyv messages, one enum per direction; [`request`]: the client
//!   requests, split into job and control requests, each with its permission and routing.
//! - [`frame`]: length framing of those messages, validated before use.
//! - [`log_block`]: consecutive log entries (events, audit records) stored as one value;
//!   [`leb128`] is the integer form of compact events and blocks.
//! - [`time`]: the clock type shared by the sans-IO shard and its drivers.

pub mod event;
pub mod event_codec;
pub mod frame;
pub mod ids;
pub mod job;
pub mod leb128;
pub mod log_block;
pub mod request;
pub mod spec;
pub mod state;
pub mod time;
pub mod wire;
