//! The server driver, as `server/src/shard_thread/` runs it: each shard takes what is in
//! its inbox, handles it and its due timers in one loop turn, commits the turn's writes
//! (group commit; a slow disk takes up to `slow_disk_ms`), and only then releases the turn's
//! messages. The shard is blocked while it commits. A restart (`kill -9`) loses inboxes,
//! commits in progress and connections, and rebuilds the shards from the store.

use std::collections::VecDeque;

use hodei_core::time::{Micros, ms};
use hodei_core::wire::{FromAgent, JobRequest};
use hodei_shards::{ConnId, ReqId, Shard, ShardConfig, ShardMsg};
use rand::Rng;

use crate::world::{Ev, Sim};

/// Something waiting in a shard's inbox.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // a test inbox: one value per message, size does not matter
pub enum Input {
    Agent(ConnId, FromAgent),
    Closed(ConnId),
    Shard(ShardMsg),
    Client(ReqId, JobRequest),
    /// The client's stream of a request closed.
    Gone(ReqId),
}

/// The effects of one loop turn (the driver's `Comm`).
pub type Turn = hodei_shards::Effects;

pub struct Server {
    pub shards: Vec<Shard>,
    /// Counts server starts; events of an earlier era are void.
    pub era: u64,
    epoch: u32,
    inbox: Vec<VecDeque<Input>>,
    /// A turn's commit is in progress.
    busy: Vec<bool>,
    turn_queued: Vec<bool>,
    timer_at: Vec<Option<Micros>>,
    /// Per shard, when its disk is full: a commit that would finish within one of these
    /// finishes when it ends (the batch is held, then committed again).
    pub full: Vec<Vec<(Micros, Micros)>>,
}

impl Server {
    pub fn new(n: usize) -> Self {
        Self {
            shards: Vec::new(),
            era: 0,
            epoch: 0,
            inbox: (0..n).map(|_| VecDeque::new()).collect(),
            busy: vec![false; n],
            turn_queued: vec![false; n],
            timer_at: vec![None; n],
            full: vec![Vec::new(); n],
        }
    }
}

impl Sim {
    /// (Re)starts the server from the store.
    pub fn boot(&mut self) {
        let n = self.opts.shards;
        self.server.era += 1;
        self.server.epoch += 1;
        let jobs = self.store.load();
        let mut shards = Vec::with_capacity(n);
        for i in 0..n {
            let mut cfg = ShardConfig::new(i, n, self.server.epoch);
            cfg.ports = (0..n).map(|p| u16::try_from(p).unwrap_or(0)).collect();
            if let Some(t) = self.opts.assign_timeout_ms {
                cfg.assign_timeout = ms(t);
            }
            cfg.retain_finished = self.opts.retain_ms.map(ms);
            shards.push(Shard::new(
                cfg,
                jobs.clone(),
                self.now,
                self.store.last_seq(i),
            ));
        }
        self.server.shards = shards;
        for i in 0..n {
            self.server.inbox[i].clear();
            self.server.busy[i] = false;
            self.server.turn_queued[i] = false;
            self.server.timer_at[i] = None;
        }
        for i in 0..n {
            let mut turn = Turn::default();
            self.server.shards[i].handle_start(&mut turn);
            self.finish_turn(i, turn);
        }
    }

    /// `kill -9` and start again.
    pub fn restart(&mut self) {
        self.clients.server_restarted();
        self.oracle.starving.clear();
        self.drop_all_conns(self.opts.late_reconnect_ms);
        self.boot();
    }

    pub fn shard_input(&mut self, shard: usize, input: Input) {
        self.server.inbox[shard].push_back(input);
        self.kick(shard);
    }

    fn kick(&mut self, shard: usize) {
        if !self.server.busy[shard] && !self.server.turn_queued[shard] {
            self.server.turn_queued[shard] = true;
            let era = self.server.era;
            self.at(0, Ev::Turn { shard, era });
        }
    }

    pub fn shard_timer(&mut self, shard: usize, at: Micros) {
        if self.server.timer_at[shard] == Some(at) {
            self.server.timer_at[shard] = None;
            self.kick(shard);
        }
    }

    /// One loop turn: the inbox (up to 4096 inputs), then due timers.
    pub fn shard_turn(&mut self, s: usize) {
        self.server.turn_queued[s] = false;
        if self.server.busy[s] {
            return;
        }
        let take = self.server.inbox[s].len().min(4096);
        let inputs: Vec<Input> = self.server.inbox[s].drain(..take).collect();
        let now = self.now;
        let mut turn = Turn::default();
        let shard = &mut self.server.shards[s];
        for input in inputs {
            match input {
                Input::Agent(conn, msg) => shard.handle_agent(now, conn, msg, &mut turn),
                Input::Closed(conn) => shard.handle_agent_closed(now, conn, &mut turn),
                Input::Shard(msg) => shard.handle_shard(now, msg, &mut turn),
                Input::Client(req, body) => shard.handle_client(now, req, body, &mut turn),
                Input::Gone(req) => shard.handle_client_gone(req, &mut turn),
            }
        }
        shard.handle_timeout(now, &mut turn);
        self.finish_turn(s, turn);
    }

    /// Commits the turn (after the disk's delay), or goes on if it has no effects.
    fn finish_turn(&mut self, s: usize, turn: Turn) {
        if turn.is_empty() {
            self.arm_timer(s);
            if !self.server.inbox[s].is_empty() {
                self.kick(s);
            }
            return;
        }
        let delay = match (turn.persists.is_empty(), self.opts.slow_disk_ms) {
            (true, _) => 0,
            (false, 0) => self.rng.gen_range(200..300),
            (false, max) => self.rng.gen_range(0..=ms(max)),
        };
        let done = self.now + delay;
        let held = self.server.full[s]
            .iter()
            .filter(|(from, until)| *from <= done && *until > self.now)
            .map(|(_, until)| *until)
            .max();
        let delay = match held {
            Some(until) if !turn.persists.is_empty() => {
                self.count("commit held by a full disk");
                until.max(done) - self.now
            }
            _ => delay,
        };
        self.server.busy[s] = true;
        let era = self.server.era;
        self.at(
            delay,
            Ev::Commit {
                shard: s,
                era,
                turn,
            },
        );
    }

    /// The turn is durable: apply it to the store, then release its messages.
    pub fn shard_commit(&mut self, s: usize, turn: Turn) {
        self.server.busy[s] = false;
        self.check_sizes_of_turn(&turn);
        self.apply_commit(s, turn.persists);
        for (conn, msg) in turn.agent {
            self.send_to_agent(conn, msg);
        }
        for conn in turn.close {
            self.server_close(conn);
        }
        for (to, msg) in turn.shard {
            self.send_shard_msg(s, to, Input::Shard(msg));
        }
        for (req, reply, last) in turn.reply {
            self.client_reply(req, reply, last);
        }
        self.arm_timer(s);
        if !self.server.inbox[s].is_empty() {
            self.kick(s);
        }
    }

    fn arm_timer(&mut self, s: usize) {
        let Some(t) = self.server.shards[s].poll_timeout() else {
            return;
        };
        let t = t.max(self.now);
        if self.server.timer_at[s].is_none_or(|a| t < a) {
            self.server.timer_at[s] = Some(t);
            let era = self.server.era;
            self.at_abs(
                t,
                Ev::Timer {
                    shard: s,
                    era,
                    at: t,
                },
            );
        }
    }
}
