//! Simulated agents, following `agent/src/session.rs`: register with `Hello` (holding what
//! they still run), heartbeat, run jobs, replay on `Resume`, reconnect with backoff and
//! jitter, and keep the lease: disconnected (as far as the agent knows) for longer than
//! `Welcome.lease_ms`, they kill their running attempts and forget them, keeping finished
//! results. They also crash (`kill -9`: their jobs die with them) and drain. Running the
//! jobs themselves is `runner.rs`.

use std::collections::BTreeMap;

use hodei_core::ids::{Attempt, JobId, WorkerId};
use hodei_core::job::Outcome;
use hodei_core::time::{Micros, ms};
use hodei_core::wire::{FromAgent, HeldJob, Hello, Resources, ToAgent};
use hodei_shards::ConnId;
use rand::Rng;

use crate::runner::Held;
use crate::world::{Ev, Sim};

/// How long a draining agent waits for its results to be acknowledged before leaving.
const LEAVE_WAIT: Micros = ms(2_000);

pub struct Agent {
    /// The process runs (false after a crash or a departure, until it comes back).
    pub alive: bool,
    /// Incarnation, bumped at every crash or departure.
    pub life: u64,
    pub worker: Option<WorkerId>,
    pub conn: Option<ConnId>,
    /// Welcome received on `conn`.
    pub welcomed: bool,
    pub lease: Option<Micros>,
    /// Since when the agent knows it is disconnected.
    pub down_since: Option<Micros>,
    backoff: u32,
    heartbeat: Micros,
    pub slots: u32,
    cpus: u32,
    labels: Vec<(String, String)>,
    pub jobs: BTreeMap<JobId, Held>,
    /// Draining: the deadline after which running jobs are killed.
    pub drain: Option<Micros>,
    home: Option<usize>,
    /// Processes of jobs that survived a crash of agent and guard, and when each would end
    /// by itself; the next start of the agent kills them before it connects.
    pub orphans: Vec<(JobId, Attempt, Micros)>,
    /// The host is paused until then.
    pub paused_until: Option<Micros>,
}

impl Sim {
    pub fn spawn_agents(&mut self) {
        for a in 0..self.opts.agents {
            let labels = if a % 2 == 0 {
                vec![("pool".to_owned(), "even".to_owned())]
            } else {
                Vec::new()
            };
            self.agents.push(Agent {
                alive: true,
                life: 0,
                worker: None,
                conn: None,
                welcomed: false,
                lease: None,
                down_since: None,
                backoff: 0,
                heartbeat: ms(1_000),
                slots: self.opts.slots,
                cpus: 4 + 2 * (a as u32 % 3),
                labels,
                jobs: BTreeMap::new(),
                drain: None,
                home: self.opts.agent_shard,
                orphans: Vec::new(),
                paused_until: None,
            });
            let at = ms(self.opts.agents_after_ms) + self.rng.gen_range(0..ms(50));
            let shard = self.opts.agent_shard;
            self.at(
                at,
                Ev::AgentConnect {
                    agent: a,
                    life: 0,
                    shard,
                },
            );
        }
    }

    /// Sends on the agent's session, once registered (before, events are only recorded and
    /// replayed on `Resume`).
    pub fn agent_send(&mut self, a: usize, msg: FromAgent) {
        if let (true, Some(conn)) = (self.agents[a].welcomed, self.agents[a].conn) {
            self.send_to_server(conn, msg);
        }
    }

    /// 100 ms doubling to 5 s, each ±50 % (`agent/src/session.rs` `Backoff`).
    fn backoff(&mut self, a: usize) -> Micros {
        let k = self.agents[a].backoff.min(6);
        self.agents[a].backoff += 1;
        let base = (ms(100) << k).min(ms(5_000));
        self.rng.gen_range(base / 2..=base + base / 2)
    }

    pub fn agent_connect(&mut self, a: usize, life: u64, shard: Option<usize>) {
        let ag = &self.agents[a];
        if !ag.alive || ag.life != life || ag.conn.is_some() {
            return;
        }
        if self.net.partitioned(a, self.now) {
            let wait = self.backoff(a);
            self.at(
                wait,
                Ev::AgentConnect {
                    agent: a,
                    life,
                    shard,
                },
            );
            return;
        }
        // The kernel spreads new connections over the shards' sockets.
        let shard = shard.unwrap_or_else(|| self.rng.gen_range(0..self.opts.shards));
        let conn = self.net.open(a, shard, self.server.era);
        let ag = &mut self.agents[a];
        ag.conn = Some(conn);
        ag.welcomed = false;
        for h in ag.jobs.values_mut() {
            h.resuming = true;
        }
        let held = ag
            .jobs
            .iter()
            .map(|(job, h)| HeldJob {
                job: *job,
                attempt: h.attempt,
                cpus: h.spec.cpus,
                memory: h.spec.memory,
            })
            .collect();
        let hello = Hello {
            worker: ag.worker,
            hostname: format!("agent{a}"),
            resources: Resources {
                slots: ag.slots,
                cpus: ag.cpus,
                memory: 1 << 30,
                labels: ag.labels.clone(),
            },
            held,
        };
        self.send_to_server(conn, FromAgent::Hello(hello));
    }

    /// The agent learns its connection is gone: the lease starts, and it reconnects.
    pub fn agent_lost_conn(&mut self, a: usize, stall: Micros) {
        let now = self.now;
        let ag = &mut self.agents[a];
        if !ag.alive {
            return;
        }
        ag.conn = None;
        ag.welcomed = false;
        if ag.down_since.is_none() {
            ag.down_since = Some(now);
            if let Some(lease) = ag.lease {
                let life = ag.life;
                self.at(
                    lease + 1,
                    Ev::LeaseExpire {
                        agent: a,
                        life,
                        since: now,
                    },
                );
            }
        }
        let wait = self.backoff(a) + stall;
        let (life, shard) = (self.agents[a].life, self.agents[a].home);
        self.at(
            wait,
            Ev::AgentConnect {
                agent: a,
                life,
                shard,
            },
        );
    }

    /// Disconnected longer than the lease: kill what runs, keep finished results. A
    /// connection whose Hello claimed a killed attempt is dropped and made again.
    pub fn lease_expire(&mut self, a: usize, life: u64, since: Micros) {
        let ag = &mut self.agents[a];
        if !ag.alive || ag.life != life || ag.down_since != Some(since) {
            return;
        }
        let before = ag.jobs.len();
        ag.jobs.retain(|_, h| h.finished.is_some());
        let killed = before != ag.jobs.len();
        let conn = ag.conn;
        if killed {
            self.count("lease killed jobs");
        }
        if let (true, Some(conn)) = (killed, conn) {
            self.agent_close(conn, false);
            self.agent_lost_conn(a, 0);
        }
    }

    pub fn agent_beat(&mut self, a: usize, conn: ConnId) {
        let ag = &self.agents[a];
        if !ag.alive || ag.conn != Some(conn) || !ag.welcomed {
            return;
        }
        let running = u32::try_from(ag.jobs.len()).unwrap_or(u32::MAX);
        let every = ag.heartbeat;
        self.agent_send(a, FromAgent::Heartbeat { running, load: 0 });
        self.at(every, Ev::AgentBeat { agent: a, conn });
    }

    pub fn on_agent_msg(&mut self, a: usize, conn: ConnId, msg: ToAgent) {
        if !self.agents[a].alive || self.agents[a].conn != Some(conn) {
            return;
        }
        match msg {
            // Certificates are the server's connection layer, not the shard's.
            ToAgent::Renewed { .. } => {}
            ToAgent::Welcome {
                worker,
                heartbeat_ms,
                lease_ms,
            } => {
                let ag = &mut self.agents[a];
                ag.worker = Some(worker);
                ag.welcomed = true;
                ag.lease = Some(ms(lease_ms));
                ag.down_since = None;
                ag.backoff = 0;
                ag.heartbeat = ms(heartbeat_ms.max(50));
                let every = ag.heartbeat;
                let drain = ag.drain;
                self.at(every, Ev::AgentBeat { agent: a, conn });
                if let Some(deadline) = drain {
                    self.count("draining agent registered again");
                    // A new registration is Ready again: say it once more.
                    let timeout_ms = deadline.saturating_sub(self.now) / 1_000;
                    self.agent_send(a, FromAgent::Draining { timeout_ms });
                }
            }
            ToAgent::Redirect { port } => {
                self.count("redirect");
                self.agent_close(conn, true);
                let ag = &mut self.agents[a];
                ag.conn = None;
                let life = ag.life;
                self.at(
                    ms(1),
                    Ev::AgentConnect {
                        agent: a,
                        life,
                        shard: Some(usize::from(port)),
                    },
                );
            }
            ToAgent::Refused { reason } => {
                self.violation(format!("agent {a} refused: {reason}"));
            }
            ToAgent::Assign {
                job, attempt, spec, ..
            } => self.assign(a, job, attempt, spec),
            ToAgent::Cancel { job, attempt } => {
                self.kill(a, job, attempt, Outcome::Cancelled);
            }
            ToAgent::Abandon { job, attempt } | ToAgent::FinishedAck { job, attempt } => {
                let ag = &mut self.agents[a];
                if ag.jobs.get(&job).is_some_and(|h| h.attempt == attempt) {
                    ag.jobs.remove(&job);
                }
            }
            ToAgent::Resume {
                job,
                attempt,
                output_end,
            } => self.resume(a, job, attempt, output_end),
            ToAgent::OutputAck { .. } => {}
            ToAgent::Drain { timeout_ms } => self.begin_drain(a, timeout_ms),
        }
    }

    pub fn drain_start(&mut self, a: usize, by_server: bool) {
        let grace = self.rng.gen_range(0..3_000);
        if !self.agents[a].alive {
            return;
        }
        if by_server {
            if let Some(worker) = self.agents[a].worker {
                self.drain_request(worker, grace);
            }
        } else {
            self.begin_drain(a, grace);
        }
    }

    /// SIGTERM or `Drain`: no new work, running jobs get `grace_ms`.
    pub fn begin_drain(&mut self, a: usize, grace_ms: u64) {
        let ag = &mut self.agents[a];
        if ag.drain.is_some() {
            return;
        }
        ag.drain = Some(self.now + ms(grace_ms));
        let life = ag.life;
        self.count("drain");
        self.agent_send(
            a,
            FromAgent::Draining {
                timeout_ms: grace_ms,
            },
        );
        self.at(ms(grace_ms), Ev::DrainDeadline { agent: a, life });
    }

    pub fn drain_deadline(&mut self, a: usize, life: u64) {
        if !self.agents[a].alive || self.agents[a].life != life {
            return;
        }
        let running: Vec<(JobId, Attempt)> = self.agents[a]
            .jobs
            .iter()
            .filter(|(_, h)| h.finished.is_none())
            .map(|(j, h)| (*j, h.attempt))
            .collect();
        for (job, attempt) in running {
            self.kill(a, job, attempt, Outcome::Drained);
        }
        self.try_leave(a, life);
    }

    /// Leaves once every result is acknowledged, or after `LEAVE_WAIT`.
    pub fn try_leave(&mut self, a: usize, life: u64) {
        let ag = &self.agents[a];
        if !ag.alive || ag.life != life {
            return;
        }
        let Some(deadline) = ag.drain else {
            return;
        };
        if !ag.jobs.is_empty() && self.now < deadline + LEAVE_WAIT {
            self.at(ms(100), Ev::Leave { agent: a, life });
            return;
        }
        self.count("agent left after draining");
        self.agent_send(a, FromAgent::Goodbye);
        if let Some(conn) = self.agents[a].conn {
            self.agent_close(conn, true);
        }
        self.agent_gone(a);
    }

    /// The agent process is gone (crash or departure): results not acknowledged die with it.
    fn agent_gone(&mut self, a: usize) {
        let ag = &mut self.agents[a];
        for (job, h) in &ag.jobs {
            if matches!(h.finished, Some((Outcome::Exited(0), _))) {
                self.oracle.lost_success.insert(*job);
            }
        }
        ag.jobs.clear();
        ag.alive = false;
        ag.life += 1;
        ag.worker = None;
        ag.conn = None;
        ag.welcomed = false;
        ag.lease = None;
        ag.down_since = None;
        ag.drain = None;
        ag.backoff = 0;
        let back = self.rng.gen_range(ms(100)..ms(8_000));
        self.at(back, Ev::Revive { agent: a });
    }

    /// `kill -9` of the agent: its connection dies; the server learns at once (a reset) or
    /// after its idle timeout.
    pub fn crash(&mut self, a: usize) {
        if !self.agents[a].alive {
            return;
        }
        self.count("agent crash");
        if let Some(conn) = self.agents[a].conn
            && let Some(c) = self.net.conns.get_mut(&conn)
        {
            c.broken = true;
            let notice = if self.rng.gen_bool(0.5) {
                self.rng.gen_range(50..2_000)
            } else {
                crate::net::IDLE
            };
            let t = self.net.up_at(a, self.now + notice);
            self.at_abs(t, Ev::ServerSawClose { conn });
        }
        self.agent_gone(a);
    }

    /// `kill -9` of agent and guard together: the jobs' processes run on, unsupervised (their
    /// results reach nobody), until the agent starts again. Its worker id is on disk.
    pub fn crash_orphaning(&mut self, a: usize) {
        if !self.agents[a].alive {
            return;
        }
        let now = self.now;
        let worker = self.agents[a].worker;
        let mut orphans = Vec::new();
        for (job, h) in &self.agents[a].jobs {
            if let (Some(started), None) = (h.started, &h.finished) {
                let (run, _) = crate::runner::behaviour(&h.spec, h.attempt);
                orphans.push((*job, h.attempt, (started + run).max(now)));
            }
        }
        for (job, ..) in &orphans {
            // Whatever the orphan does is never reported: a success of it is lost too.
            self.oracle.lost_success.insert(*job);
        }
        if !orphans.is_empty() {
            self.count("crash left processes running");
        }
        self.crash(a);
        let ag = &mut self.agents[a];
        ag.orphans.extend(orphans);
        ag.worker = worker;
    }

    pub fn revive(&mut self, a: usize) {
        let ag = &mut self.agents[a];
        if ag.alive {
            return;
        }
        // The start sweeps what an earlier run left (`agent/src/runner/guard.rs`), before
        // anything else.
        let now = self.now;
        ag.orphans.retain(|(.., until)| *until > now);
        if !ag.orphans.is_empty() {
            ag.orphans.clear();
            self.count("restart swept orphaned processes");
        }
        let ag = &mut self.agents[a];
        ag.alive = true;
        let (life, shard) = (ag.life, ag.home);
        self.at(
            0,
            Ev::AgentConnect {
                agent: a,
                life,
                shard,
            },
        );
    }
}
