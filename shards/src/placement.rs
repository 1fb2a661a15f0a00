//! Where a new agent registers. The kernel spreads connections over the shards' shared
//! sockets by a hash of their addresses, which with a handful of agents often puts them all
//! on one shard: that shard then does all the agent I/O and the others' jobs reach them only
//! by stealing. So a new agent (no worker id yet) that arrived on the shared port is sent to
//! the shard with the fewest connected workers when this one has clearly more; shards tell
//! each other their counts (`ShardMsg::Workers`). An agent that arrives on a private port
//! (after a redirect) always stays, so an agent is redirected at most once.

use crate::comm::{Comm, ConnId, ShardMsg};
use crate::shard::Shard;

impl Shard {
    /// A new agent connection, before its `Hello`; `shared` when it came in on the shared
    /// port (where placement applies), not on this shard's private one.
    pub fn handle_agent_open(&mut self, conn: ConnId, shared: bool) {
        if shared && self.cfg.shards > 1 {
            self.placing.insert(conn);
        }
    }

    /// The shard a new agent on connection `conn` should register with instead of this one,
    /// if any. Consumes the connection's placement (it is decided once).
    pub(crate) fn place_elsewhere(&mut self, conn: ConnId) -> Option<usize> {
        if !self.placing.remove(&conn) {
            return None;
        }
        let mine = self.connected_workers();
        let (target, least) = self
            .peer_workers
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != self.cfg.index)
            .min_by_key(|&(i, &n)| (n, i))
            .map(|(i, &n)| (i, n))?;
        let total: u64 = self.peer_workers.iter().map(|&n| u64::from(n)).sum::<u64>()
            - u64::from(self.peer_workers.get(self.cfg.index).copied().unwrap_or(0))
            + u64::from(mine);
        // Large fleets land evenly enough by themselves: only a clear imbalance (one worker
        // with a few agents, about 3 % with many) is worth a second handshake.
        let slack = 1 + total / 32;
        (u64::from(mine) >= u64::from(least) + slack).then_some(target)
    }

    /// Tells the other shards this shard's count of connected workers, when it changed.
    pub(crate) fn announce_workers(&mut self, comm: &mut impl Comm) {
        let now = self.connected_workers();
        if now == self.announced_workers || self.cfg.shards < 2 {
            return;
        }
        self.announced_workers = now;
        for shard in (0..self.cfg.shards).filter(|&s| s != self.cfg.index) {
            comm.send_shard(
                shard,
                ShardMsg::Workers {
                    from: self.cfg.index,
                    connected: now,
                },
            );
        }
    }

    /// Another shard's count of connected workers.
    pub(crate) fn on_peer_workers(&mut self, from: usize, connected: u32) {
        if let Some(n) = self.peer_workers.get_mut(from) {
            *n = connected;
        }
    }

    fn connected_workers(&self) -> u32 {
        u32::try_from(self.conns.len()).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use hodei_core::wire::{FromAgent, Hello, Resources, ToAgent};

    use crate::comm::{ConnId, Effects, ShardMsg};
    use crate::shard::{Shard, ShardConfig};

    const PORTS: [u16; 2] = [7001, 7002];

    fn shard(index: usize) -> Shard {
        let mut cfg = ShardConfig::new(index, 2, 1);
        cfg.ports = PORTS.to_vec();
        Shard::new(cfg, Vec::new(), 0, 0)
    }

    fn hello(worker: Option<hodei_core::ids::WorkerId>) -> FromAgent {
        FromAgent::Hello(Hello {
            worker,
            hostname: "h".to_owned(),
            resources: Resources {
                slots: 1,
                cpus: 1,
                memory: 1 << 30,
                labels: Vec::new(),
            },
            held: Vec::new(),
        })
    }

    /// Opens connection `conn` on `s` and says `Hello`: the shard's answer (`Welcome` or
    /// `Redirect`), with the counts it told the other shard delivered to `peer`.
    fn arrive(s: &mut Shard, peer: &mut Shard, conn: u64, shared: bool) -> ToAgent {
        let mut fx = Effects::default();
        s.handle_agent_open(ConnId(conn), shared);
        s.handle_agent(1, ConnId(conn), hello(None), &mut fx);
        for (_, msg) in fx.shard.drain(..) {
            peer.handle_shard(1, msg, &mut Effects::default());
        }
        let answer = fx.agent.into_iter().find(|(c, m)| {
            *c == ConnId(conn) && matches!(m, ToAgent::Welcome { .. } | ToAgent::Redirect { .. })
        });
        answer.map(|(_, m)| m).expect("a Welcome or a Redirect")
    }

    /// Two agents that both land on shard 1 end up one per shard: the second is sent to
    /// shard 0's private port, registers there without being placed again, and from then on
    /// the counts are even and new agents stay where they land.
    #[test]
    fn new_agents_that_land_on_one_shard_are_spread() {
        let (mut s0, mut s1) = (shard(0), shard(1));
        assert!(matches!(
            arrive(&mut s1, &mut s0, 1, true),
            ToAgent::Welcome { .. }
        ));
        assert_eq!(s0.peer_workers[1], 1, "shard 1 told shard 0 its count");
        assert!(matches!(
            arrive(&mut s1, &mut s0, 2, true),
            ToAgent::Redirect { port: 7001 }
        ));
        // The redirected agent, on shard 0's private port: it stays.
        assert!(matches!(
            arrive(&mut s0, &mut s1, 3, false),
            ToAgent::Welcome { .. }
        ));
        assert_eq!(s1.peer_workers[0], 1);
        assert!(matches!(
            arrive(&mut s1, &mut s0, 4, true),
            ToAgent::Welcome { .. }
        ));
        assert!(matches!(
            arrive(&mut s0, &mut s1, 5, true),
            ToAgent::Welcome { .. }
        ));
    }

    /// In a large fleet the kernel's spread is close to even: a shard a few agents ahead is
    /// not worth a second handshake for each newcomer. Only a clear lead (about 3 %) moves
    /// them.
    #[test]
    fn a_large_fleet_is_left_where_it_lands() {
        let (mut s0, mut s1) = (shard(0), shard(1));
        s1.on_peer_workers(0, 100);
        for conn in 0..107 {
            assert!(
                matches!(
                    arrive(&mut s1, &mut s0, conn, true),
                    ToAgent::Welcome { .. }
                ),
                "agent {conn} was moved"
            );
        }
        assert!(matches!(
            arrive(&mut s1, &mut s0, 200, true),
            ToAgent::Redirect { port: 7001 }
        ));
    }

    /// A reconnecting agent goes home to the shard that owns its worker id, however uneven
    /// the counts; and a disconnect is announced.
    #[test]
    fn a_reconnect_is_never_placed_and_a_disconnect_is_announced() {
        let (mut s0, mut s1) = (shard(0), shard(1));
        assert!(matches!(
            arrive(&mut s1, &mut s0, 1, true),
            ToAgent::Welcome { .. }
        ));
        let ToAgent::Welcome { worker, .. } = arrive(&mut s1, &mut s0, 2, false) else {
            panic!("a private-port arrival stays");
        };
        let mut fx = Effects::default();
        s1.handle_agent_closed(2, ConnId(2), &mut fx);
        assert!(
            fx.shard.iter().any(|(to, m)| *to == 0
                && matches!(
                    m,
                    ShardMsg::Workers {
                        from: 1,
                        connected: 1
                    }
                )),
            "{:?}",
            fx.shard
        );
        let mut fx = Effects::default();
        s1.handle_agent_open(ConnId(3), true);
        s1.handle_agent(3, ConnId(3), hello(Some(worker)), &mut fx);
        assert!(
            fx.agent
                .iter()
                .any(|(c, m)| *c == ConnId(3) && matches!(m, ToAgent::Welcome { .. })),
            "{:?}",
            fx.agent
        );
    }
}
