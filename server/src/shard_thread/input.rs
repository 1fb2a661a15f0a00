//! What a shard's loop is fed: [`Input`] from its connection tasks, the control plane and
//! the other shards, and [`AgentOut`] to an agent connection's writer.

use hodei_core::wire::{FromAgent, JobRequest, ToAgent};
use hodei_shards::{ConnId, Footprint, ReqId, ShardMsg};
use tokio::sync::mpsc::UnboundedSender;

/// Inputs of a shard's loop, from its own tasks and from other shards.
#[derive(Debug)]
pub enum Input {
    /// A new agent connection.
    AgentOpen(AgentOpen),
    /// A message from an agent.
    Agent(AgentMsg),
    /// An agent connection ended.
    AgentClosed(ConnId),
    /// A client request.
    Client(ClientRequest),
    /// A client went away before its request was done (a `wait` or `logs --follow` whose
    /// connection closed): everything registered for it goes now, not when its job ends.
    ClientGone(ReqId),
    /// Messages from another shard, in order.
    Shard(Vec<ShardMsg>),
    /// An agent identity was revoked: close its connections now.
    Revoke(String),
    /// `hodei stats` asks what the shard holds now.
    Footprint(FootprintAsk),
    /// Stop: close endpoints, flush, exit.
    Shutdown,
}

/// What an agent connection's writer task is told. The message is boxed: an unbounded
/// channel allocates its first block of 32 slots when created, and with the message inline
/// (360 bytes) that was 11.5 KiB held by every idle agent connection; boxed (8 bytes a
/// slot), it is about 300 bytes, for one small allocation per message sent.
#[derive(Debug)]
pub enum AgentOut {
    Msg(Box<ToAgent>),
    Close,
}

/// A new agent connection.
#[derive(Debug)]
pub struct AgentOpen {
    /// The connection.
    pub conn: ConnId,
    /// Who it is: the identity of its certificate, the actor in the audit log.
    pub actor: String,
    /// The channel to its writer task.
    pub writer: UnboundedSender<AgentOut>,
}

/// A message from an agent.
#[derive(Debug)]
pub struct AgentMsg {
    /// The connection it came on.
    pub conn: ConnId,
    /// The message.
    pub msg: FromAgent,
    /// When its connection's task decoded it (for `hodei stats`).
    pub decoded: std::time::Instant,
}

/// A client request, already authenticated and allowed.
#[derive(Debug)]
pub struct ClientRequest {
    /// Its number on this shard.
    pub req: ReqId,
    /// What it asks.
    pub body: JobRequest,
    /// Who made it (the token's name): the actor in the audit log.
    pub actor: String,
    /// Where its replies go, each with whether it is the last.
    pub reply: super::ReplySender,
}

/// `hodei stats` asks a shard what it holds ([`Input::Footprint`]).
#[derive(Debug)]
pub struct FootprintAsk {
    /// Where the answer goes.
    pub reply: UnboundedSender<ShardFootprint>,
    /// Also ask every other shard (the connection's own shard does; they do not again).
    pub fan_out: bool,
}

/// What one shard holds, for `hodei stats`.
#[derive(Debug)]
pub struct ShardFootprint {
    /// Which shard.
    pub shard: usize,
    /// How many shards answer in all.
    pub shards: usize,
    /// What the sans-IO shard holds.
    pub held: Footprint,
    /// Reply queues of client requests the loop still holds.
    pub reply_queues: usize,
    /// Agent connections the loop has a writer for.
    pub agent_connections: usize,
}
