//! The network: shard-to-shard channels and agent connections.
//!
//! - Shard channels are in-process: never lost, FIFO per (from, to) pair, random latency, so
//!   deliveries on different links reorder. They die with the server (era).
//! - An agent connection is one QUIC stream each way: reliable and FIFO. During a partition
//!   of its agent nothing gets through, and QUIC retransmits afterwards, so a message is
//!   delayed until the partition ends, unless the connection dies first: each side's 3 s
//!   idle timeout closes it. Message loss is a dropped connection: everything in flight both
//!   ways is gone and both sides notice. A graceful close (`close_agent`, Goodbye, Redirect)
//!   delivers what was queued before it.

use std::collections::HashMap;

use hodei_core::time::{Micros, ms};
use hodei_core::wire::{FromAgent, ToAgent};
use hodei_shards::ConnId;
use rand::Rng;

use crate::server::Input;
use crate::world::{Ev, Sim};

/// A QUIC idle timeout (the agent's 3 s; the effective timeout is the smaller side's).
pub const IDLE: Micros = ms(3_000);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Link {
    Shards(usize, usize),
    Down(ConnId),
    Up(ConnId),
}

#[derive(Debug)]
pub struct Conn {
    pub agent: usize,
    pub shard: usize,
    pub era: u64,
    /// Dead: nothing more is delivered either way.
    pub broken: bool,
    /// The server closed it: what it queued before still reaches the agent.
    pub server_closed: bool,
    /// The agent closed it: what it queued before still reaches the server.
    pub agent_closed: bool,
}

pub struct Net {
    pub conns: HashMap<ConnId, Conn>,
    next_conn: u64,
    last: HashMap<Link, Micros>,
    /// Per agent, partitions as [start, end).
    partitions: Vec<Vec<(Micros, Micros)>>,
}

impl Net {
    pub fn new(agents: usize) -> Self {
        Self {
            conns: HashMap::new(),
            next_conn: 0,
            last: HashMap::new(),
            partitions: vec![Vec::new(); agents],
        }
    }

    /// Adds a partition unless it overlaps another of the same agent.
    pub fn add_partition(&mut self, agent: usize, from: Micros, until: Micros) -> bool {
        let p = &mut self.partitions[agent];
        if p.iter().any(|&(a, b)| from < b + IDLE && a < until + IDLE) {
            return false;
        }
        p.push((from, until));
        true
    }

    /// The first time at or after `t` when the agent's link is up.
    pub fn up_at(&self, agent: usize, t: Micros) -> Micros {
        self.partitions[agent]
            .iter()
            .find(|&&(a, b)| a <= t && t < b)
            .map_or(t, |&(_, b)| b)
    }

    pub fn partitioned(&self, agent: usize, t: Micros) -> bool {
        self.up_at(agent, t) != t
    }

    pub fn open(&mut self, agent: usize, shard: usize, era: u64) -> ConnId {
        self.next_conn += 1;
        let id = ConnId(self.next_conn);
        self.conns.insert(
            id,
            Conn {
                agent,
                shard,
                era,
                broken: false,
                server_closed: false,
                agent_closed: false,
            },
        );
        id
    }

    /// When a message sent at `now` with latency `lat` arrives, FIFO on `link`.
    fn arrival(&mut self, link: Link, now: Micros, lat: Micros, agent: Option<usize>) -> Micros {
        let mut at = now + lat;
        if let Some(a) = agent {
            at = self.up_at(a, now) + lat;
            loop {
                let up = self.up_at(a, at);
                if up == at {
                    break;
                }
                at = up + lat;
            }
        }
        let at = at.max(self.last.get(&link).copied().unwrap_or(0));
        self.last.insert(link, at);
        at
    }
}

impl Sim {
    fn agent_latency(&mut self) -> Micros {
        self.rng.gen_range(50..2_000)
    }

    /// In-process channel between shards: reliable, FIFO per pair.
    pub fn send_shard_msg(&mut self, from: usize, to: usize, input: Input) {
        let lat = self.rng.gen_range(5..300);
        let at = self
            .net
            .arrival(Link::Shards(from, to), self.now, lat, None);
        let era = self.server.era;
        self.at_abs(
            at,
            Ev::Input {
                shard: to,
                era,
                input,
            },
        );
    }

    pub fn send_to_agent(&mut self, conn: ConnId, msg: ToAgent) {
        let Some(c) = self.net.conns.get(&conn) else {
            return;
        };
        if c.broken || c.server_closed {
            return;
        }
        let agent = c.agent;
        let lat = self.agent_latency();
        let at = self
            .net
            .arrival(Link::Down(conn), self.now, lat, Some(agent));
        self.at_abs(at, Ev::ToAgent { agent, conn, msg });
    }

    pub fn send_to_server(&mut self, conn: ConnId, msg: FromAgent) {
        self.check_sizes_from_agent(&msg);
        let Some(c) = self.net.conns.get(&conn) else {
            return;
        };
        if c.broken || c.agent_closed {
            return;
        }
        let agent = c.agent;
        let lat = self.agent_latency();
        let at = self.net.arrival(Link::Up(conn), self.now, lat, Some(agent));
        self.at_abs(at, Ev::FromAgent { conn, msg });
    }

    pub fn deliver_to_agent(&mut self, agent: usize, conn: ConnId, msg: ToAgent) {
        if self.net.conns.get(&conn).is_some_and(|c| !c.broken) {
            self.on_agent_msg(agent, conn, msg);
        }
    }

    pub fn deliver_to_server(&mut self, conn: ConnId, msg: FromAgent) {
        let era = self.server.era;
        let Some(c) = self.net.conns.get(&conn) else {
            return;
        };
        if !c.broken && !c.server_closed && c.era == era {
            let shard = c.shard;
            self.shard_input(shard, Input::Agent(conn, msg));
        }
    }

    /// The server closes a connection (after what it queued on it).
    pub fn server_close(&mut self, conn: ConnId) {
        let Some(c) = self.net.conns.get_mut(&conn) else {
            return;
        };
        if c.broken || c.server_closed {
            return;
        }
        c.server_closed = true;
        let agent = c.agent;
        if self.net.partitioned(agent, self.now) {
            self.count("heartbeat timeout closed a partitioned connection");
        }
        let lat = self.agent_latency();
        let at = self
            .net
            .arrival(Link::Down(conn), self.now, lat, Some(agent));
        self.at_abs(
            at,
            Ev::AgentSawClose {
                agent,
                conn,
                stall: 0,
            },
        );
        self.at(100, Ev::ServerSawClose { conn });
    }

    /// The agent closes its connection: `graceful` delivers what it queued first (Goodbye,
    /// Redirect); otherwise (idle timeout, lease) the connection just dies.
    pub fn agent_close(&mut self, conn: ConnId, graceful: bool) {
        let Some(c) = self.net.conns.get_mut(&conn) else {
            return;
        };
        if c.broken {
            return;
        }
        if graceful {
            c.agent_closed = true;
        } else {
            c.broken = true;
        }
        let agent = c.agent;
        let lat = self.agent_latency();
        let at = self.net.arrival(Link::Up(conn), self.now, lat, Some(agent));
        self.at_abs(at, Ev::ServerSawClose { conn });
    }

    pub fn agent_saw_close(&mut self, agent: usize, conn: ConnId, stall: Micros) {
        if let Some(c) = self.net.conns.get_mut(&conn) {
            c.broken = true;
        }
        if self.agents[agent].conn == Some(conn) {
            self.agent_lost_conn(agent, stall);
        }
    }

    pub fn server_saw_close(&mut self, conn: ConnId) {
        let era = self.server.era;
        let Some(c) = self.net.conns.get_mut(&conn) else {
            return;
        };
        if c.era != era {
            return;
        }
        // After a graceful server close, what it queued still drains to the agent.
        let dies = !c.broken && !c.server_closed;
        if !c.server_closed {
            c.broken = true;
        }
        let (shard, agent) = (c.shard, c.agent);
        self.shard_input(shard, Input::Closed(conn));
        if dies && self.net.partitioned(agent, self.now) {
            self.count("server idle timeout during a partition");
        }
        if dies && self.agents[agent].conn == Some(conn) {
            // The server forgot the connection (its idle timeout): the agent's next
            // keep-alive once the link is up gets a stateless reset.
            let t = self.net.up_at(agent, self.now) + self.rng.gen_range(0..ms(500));
            self.at_abs(
                t,
                Ev::AgentSawClose {
                    agent,
                    conn,
                    stall: 0,
                },
            );
        }
    }

    /// A partition starts: if it outlasts the idle timeout, both sides drop the connection.
    pub fn partition(&mut self, agent: usize, until: Micros) {
        let Some(conn) = self.agents[agent].conn else {
            return;
        };
        // The idle timer runs from the last packet received: keep-alives every 500 ms.
        self.count("partition of a connected agent");
        let idle = self.now + IDLE - self.rng.gen_range(0..ms(500));
        if until > idle {
            self.at_abs(idle, Ev::AgentIdle { agent, conn });
        }
        let server_idle = self.now + IDLE - self.rng.gen_range(0..ms(500));
        if until > server_idle {
            self.at_abs(server_idle, Ev::ServerSawClose { conn });
        }
    }

    pub fn agent_idle(&mut self, agent: usize, conn: ConnId) {
        if self.agents[agent].alive && self.agents[agent].conn == Some(conn) {
            self.count("agent idle timeout");
            self.agent_close(conn, false);
            self.agent_lost_conn(agent, 0);
        }
    }

    /// Message loss: the connection drops with everything in flight; both sides notice.
    pub fn conn_loss(&mut self, agent: usize) {
        let Some(conn) = self.agents[agent].conn else {
            return;
        };
        let Some(c) = self.net.conns.get_mut(&conn) else {
            return;
        };
        if c.broken {
            return;
        }
        c.broken = true;
        self.count("connection lost");
        let up = self.net.up_at(agent, self.now);
        let (a, b) = (self.agent_latency(), self.agent_latency());
        self.at_abs(
            up + a,
            Ev::AgentSawClose {
                agent,
                conn,
                stall: 0,
            },
        );
        self.at_abs(up + b, Ev::ServerSawClose { conn });
    }

    /// The server process died: every connection is gone. Agents notice through a stateless
    /// reset at their next keep-alive once their link is up.
    pub fn drop_all_conns(&mut self, stall_ms: u64) {
        let mut notify = Vec::new();
        for (id, c) in &mut self.net.conns {
            if !c.broken {
                c.broken = true;
                notify.push((*id, c.agent));
            }
        }
        notify.sort();
        for (conn, agent) in notify {
            if self.agents[agent].conn != Some(conn) {
                continue;
            }
            let up = self.net.up_at(agent, self.now);
            let t = up + self.rng.gen_range(0..ms(500));
            let stall = if stall_ms > 0 {
                self.rng.gen_range(0..ms(stall_ms))
            } else {
                0
            };
            self.at_abs(t, Ev::AgentSawClose { agent, conn, stall });
        }
    }
}
