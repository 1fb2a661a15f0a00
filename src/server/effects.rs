//! The driver's [`Comm`]: collects one loop turn's effects so they can be released only
//! after the turn's store writes are durable (group commit).

use hodei_core::wire::ToAgent;
use hodei_shards::{Comm, ConnId, Reply, ReqId, ShardMsg, StoreOp};

/// Effects of one loop turn.
#[derive(Debug, Default)]
pub struct Effects {
    pub persists: Vec<StoreOp>,
    pub agent: Vec<(ConnId, ToAgent)>,
    pub close: Vec<ConnId>,
    pub shard: Vec<(usize, ShardMsg)>,
    pub reply: Vec<(ReqId, Reply, bool)>,
}

impl Effects {
    pub fn is_empty(&self) -> bool {
        self.persists.is_empty()
            && self.agent.is_empty()
            && self.close.is_empty()
            && self.shard.is_empty()
            && self.reply.is_empty()
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
