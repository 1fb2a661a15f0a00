//! The worker's side: agent connections, registration and re-attachment, heartbeats,
//! disconnects and lost workers.

use std::cmp::Reverse;

use hodei_core::ids::WorkerId;
use hodei_core::job::WorkerInfo;
use hodei_core::spec::RetryOn;
use hodei_core::state::{JobState, WorkerState};
use hodei_core::time::Micros;
use hodei_core::wire::{ErrorKind, FromAgent, FromServer, Hello, ToAgent};

use crate::comm::{Comm, ConnId, Reply, Report};
use crate::shard::{Shard, Timer, Worker};

impl Shard {
    /// A message on an agent connection.
    pub fn handle_agent(
        &mut self,
        now: Micros,
        conn: ConnId,
        msg: FromAgent,
        comm: &mut impl Comm,
    ) {
        self.now = now;
        if let FromAgent::Hello(hello) = msg {
            self.on_hello(now, conn, hello, comm);
            return;
        }
        let Some(&wid) = self.conns.get(&conn) else {
            // Anything before a Hello is a protocol violation.
            comm.close_agent(conn);
            return;
        };
        let Some(w) = self.workers.get_mut(&wid) else {
            return;
        };
        w.last_seen = now;
        match msg {
            // Renew is answered by the connection; it never reaches a shard.
            FromAgent::Hello(_) | FromAgent::Heartbeat { .. } | FromAgent::Renew { .. } => {}
            FromAgent::Draining { timeout_ms } => {
                let reason = format!("agent draining, {timeout_ms} ms grace");
                self.set_worker_state(wid, WorkerState::Draining, Some(reason), comm);
            }
            FromAgent::Goodbye => self.terminate(wid, comm),
            FromAgent::Started { job, attempt, at } => {
                self.report(wid, job, attempt, Report::Started { at }, comm)
            }
            FromAgent::Accepted { job, attempt } => {
                self.report(wid, job, attempt, Report::Accepted, comm)
            }
            FromAgent::Output {
                job,
                attempt,
                offset,
                chunks,
            } => {
                self.report(wid, job, attempt, Report::Output { offset, chunks }, comm);
            }
            FromAgent::Finished {
                job,
                attempt,
                outcome,
                at,
            } => {
                if w.release(job, attempt) {
                    self.refresh_worker(wid);
                    self.capacity_grew();
                }
                self.report(wid, job, attempt, Report::Finished { outcome, at }, comm);
                self.schedule(comm);
            }
        }
    }

    fn on_hello(&mut self, now: Micros, conn: ConnId, hello: Hello, comm: &mut impl Comm) {
        if self.conns.contains_key(&conn) {
            comm.close_agent(conn); // a second Hello on one connection
            return;
        }
        if let Some(id) = hello.worker {
            let owner = id.owner(self.cfg.shards);
            if owner != self.cfg.index {
                match self.cfg.ports.get(owner) {
                    Some(&port) => comm.send_agent(conn, ToAgent::Redirect { port }),
                    None => comm.send_agent(
                        conn,
                        ToAgent::Refused {
                            reason: format!("no route to shard {owner}"),
                        },
                    ),
                }
                comm.close_agent(conn);
                return;
            }
        }
        let id = match hello.worker {
            Some(id) => id,
            None => loop {
                let id = self.mint_worker();
                if !self.workers.contains_key(&id) {
                    break id;
                }
            },
        };
        // A reconnect replaces the old connection, if the old one is still open.
        let previous = self.workers.remove(&id);
        let mut w = Worker {
            id,
            conn: Some(conn),
            state: WorkerState::Connecting,
            hostname: hello.hostname,
            free_slots: hello.resources.slots,
            free_cpus: hello.resources.cpus,
            free_mem: hello.resources.memory,
            res: hello.resources,
            held: crate::holdings::Holdings::default(),
            last_seen: now,
            disconnected_at: None,
            last_assigned: 0,
            free_key: None,
            offered: (0, 0, 0),
        };
        let mut forgotten = Vec::new();
        if let Some(prev) = previous {
            if let Some(old) = prev.conn {
                self.conns.remove(&old);
                comm.close_agent(old);
            }
            // Attempts we assigned that the agent no longer holds never ran or were lost.
            forgotten = prev
                .held
                .into_values()
                .filter(|h| {
                    !hello
                        .held
                        .iter()
                        .any(|x| x.job == h.job && x.attempt == h.attempt)
                })
                .collect();
        }
        for h in &hello.held {
            w.reserve(h.clone());
        }
        w.state = if w.free_slots > 0 {
            WorkerState::Ready
        } else {
            WorkerState::Busy
        };
        let state = w.state;
        self.workers.insert(id, w);
        self.conns.insert(conn, id);
        self.worker_event(id, state, Some("registered".to_owned()), comm);
        self.timers.push(Reverse((
            now + self.cfg.heartbeat_timeout,
            Timer::Worker(id),
        )));
        comm.send_agent(
            conn,
            ToAgent::Welcome {
                worker: id,
                heartbeat_ms: self.cfg.heartbeat / 1_000,
                lease_ms: self.cfg.disconnect_grace / 2_000,
            },
        );
        for h in forgotten {
            let reason = "the agent reconnected without it".to_owned();
            self.report(id, h.job, h.attempt, Report::Lost { reason }, comm);
        }
        for h in hello.held {
            self.report(id, h.job, h.attempt, Report::Claim, comm);
        }
        self.refresh_worker(id);
        self.capacity_grew();
        self.schedule(comm);
    }

    /// An agent connection closed (or was closed).
    pub fn handle_agent_closed(&mut self, now: Micros, conn: ConnId, comm: &mut impl Comm) {
        self.now = now;
        let Some(id) = self.conns.remove(&conn) else {
            return;
        };
        self.disconnect(now, id, comm);
    }

    fn disconnect(&mut self, now: Micros, id: WorkerId, comm: &mut impl Comm) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        if let Some(c) = w.conn.take() {
            self.conns.remove(&c);
            comm.close_agent(c);
        }
        if w.state.can_transition_to(WorkerState::Disconnected) {
            w.state = WorkerState::Disconnected;
            w.disconnected_at = Some(now);
            self.timers.push(Reverse((
                now + self.cfg.disconnect_grace,
                Timer::Worker(id),
            )));
            let reason = Some("connection lost or silent".to_owned());
            self.worker_event(id, WorkerState::Disconnected, reason, comm);
        }
        self.refresh_worker(id);
    }

    /// A worker's grace ran out: requeue its attempts.
    fn lose(&mut self, id: WorkerId, comm: &mut impl Comm) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        if !w.state.can_transition_to(WorkerState::Lost) {
            return;
        }
        w.state = WorkerState::Lost;
        let held = w.held.take_all();
        w.recompute();
        let reason = Some("did not come back within the disconnect grace".to_owned());
        self.worker_event(id, WorkerState::Lost, reason, comm);
        for h in held {
            let reason = format!("worker {id} lost");
            self.report(id, h.job, h.attempt, Report::Lost { reason }, comm);
        }
    }

    /// Worker shard: pass a message from a job's owner to the agent.
    pub(crate) fn deliver(&mut self, worker: WorkerId, msg: ToAgent, comm: &mut impl Comm) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        // Both end the agent's hold on the attempt without a further report.
        let ends = match &msg {
            ToAgent::Abandon { job, attempt } | ToAgent::FinishedAck { job, attempt } => {
                Some((*job, *attempt))
            }
            _ => None,
        };
        // The message goes out first: an Assign that reuses the freed slot must not overtake
        // the Abandon that frees it on the agent's stream.
        if let Some(conn) = w.conn {
            comm.send_agent(conn, msg);
        }
        if let Some((job, attempt)) = ends
            && w.release(job, attempt)
        {
            self.refresh_worker(worker);
            self.capacity_grew();
            self.schedule(comm);
        }
    }

    pub(crate) fn worker_infos(&self) -> Vec<WorkerInfo> {
        self.workers
            .values()
            .map(|w| WorkerInfo {
                id: w.id,
                hostname: w.hostname.clone(),
                state: w.state,
                slots: w.res.slots,
                #[allow(clippy::cast_possible_truncation)]
                running: w.held.len() as u32,
                cpus: w.res.cpus,
                memory: w.res.memory,
                labels: w.res.labels.clone(),
                last_seen: w.last_seen,
            })
            .collect()
    }

    /// Fires due timers.
    pub fn handle_timeout(&mut self, now: Micros, comm: &mut impl Comm) {
        self.now = now;
        while let Some(Reverse((at, timer))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            match timer {
                Timer::Worker(id) => self.check_worker(now, id, comm),
                Timer::Claim(job) => {
                    let expired = self
                        .jobs
                        .get(&job)
                        .is_some_and(|j| j.claim_deadline.is_some_and(|d| d <= now));
                    if expired {
                        let reason =
                            "lost: no agent re-attached it after the server restarted".to_owned();
                        self.attempt_over(job, RetryOn::LOST, JobState::Failed, reason, comm);
                        self.schedule(comm);
                    }
                }
                Timer::Retry(job) => self.on_retry_due(job, comm),
                Timer::Ack(job, attempt) => self.on_ack_due(job, attempt, comm),
                Timer::Queue(job) => self.on_queue_due(job, comm),
            }
        }
    }

    fn check_worker(&mut self, now: Micros, id: WorkerId, comm: &mut impl Comm) {
        let Some(w) = self.workers.get(&id) else {
            return;
        };
        match (w.conn, w.disconnected_at) {
            (Some(_), _) => {
                let due = w.last_seen + self.cfg.heartbeat_timeout;
                if due <= now {
                    self.disconnect(now, id, comm);
                } else {
                    self.timers.push(Reverse((due, Timer::Worker(id))));
                }
            }
            (None, Some(since)) if since + self.cfg.disconnect_grace <= now => self.lose(id, comm),
            _ => {}
        }
    }
}

impl Shard {
    /// Moves a worker to a lifecycle state, recording it as an event (Ready/Busy flips are
    /// capacity, not lifecycle, and are not events).
    pub(crate) fn set_worker_state(
        &mut self,
        id: WorkerId,
        state: WorkerState,
        reason: Option<String>,
        comm: &mut impl Comm,
    ) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        if w.state == state || !w.state.can_transition_to(state) {
            return;
        }
        w.state = state;
        self.refresh_worker(id);
        self.worker_event(id, state, reason, comm);
    }

    /// The agent drained and said goodbye: terminated, not lost. Anything it still held is
    /// handed back to the owners as lost.
    fn terminate(&mut self, id: WorkerId, comm: &mut impl Comm) {
        self.set_worker_state(
            id,
            WorkerState::Terminated,
            Some("agent drained and left".to_owned()),
            comm,
        );
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        let held = w.held.take_all();
        for h in held {
            let reason = format!("worker {id} left while holding it");
            self.report(id, h.job, h.attempt, Report::Lost { reason }, comm);
        }
    }

    /// `hodei worker drain`: ask the agent to drain.
    pub(crate) fn drain_worker(
        &mut self,
        id: WorkerId,
        timeout_ms: u64,
        comm: &mut impl Comm,
    ) -> Reply {
        let Some(w) = self.workers.get(&id) else {
            return Reply::Msg(FromServer::Error {
                kind: ErrorKind::NotFound,
                message: format!("worker {id} does not exist"),
            });
        };
        let Some(conn) = w.conn else {
            let msg = format!("worker {id} is {} and cannot be drained", w.state);
            return Reply::Msg(FromServer::Error {
                kind: ErrorKind::Invalid,
                message: msg,
            });
        };
        comm.send_agent(conn, ToAgent::Drain { timeout_ms });
        let reason = format!("drain requested, {timeout_ms} ms grace");
        self.set_worker_state(id, WorkerState::Draining, Some(reason), comm);
        Reply::Msg(FromServer::Workers(
            self.worker_infos()
                .into_iter()
                .filter(|w| w.id == id)
                .collect(),
        ))
    }
}
