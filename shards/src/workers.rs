//! The worker's side: agent connections, registration and re-attachment, heartbeats,
//! disconnects and lost workers.

use hodei_core::ids::WorkerId;
use hodei_core::spec::RetryOn;
use hodei_core::state::{JobState, WorkerState};
use hodei_core::time::Micros;
use hodei_core::wire::{ErrorKind, FromAgent, FromServer, Hello, ToAgent};

use crate::comm::{Comm, ConnId, Reply, Report};
use crate::shard::Shard;
use crate::timers::Timer;
use crate::worker_table::Worker;

impl Shard {
    /// A message on an agent connection.
    pub fn handle_agent(
        &mut self,
        now: Micros,
        conn: ConnId,
        msg: FromAgent,
        comm: &mut impl Comm,
    ) {
        self.begin_call();
        self.now = now;
        if matches!(msg, FromAgent::Heartbeat { .. }) {
            self.on_heartbeat(now, conn, comm);
        } else {
            self.on_agent(now, conn, msg, comm);
        }
        self.end_call(comm);
    }

    /// Most of what agents send: it only stamps the worker. Kept apart from [`Self::on_agent`]
    /// so that the cost of that handler's size (every report handler it inlines) is not paid
    /// per heartbeat: with the retention index added to the final-state path, a heartbeat
    /// went from 42 to 59 ns in `cargo bench -p hodei-shards --bench shard`, and back to 42
    /// with this.
    fn on_heartbeat(&mut self, now: Micros, conn: ConnId, comm: &mut impl Comm) {
        let Some(wid) = self.workers.by_conn(conn) else {
            // Anything before a Hello is a protocol violation.
            comm.close_agent(conn);
            return;
        };
        if let Some(w) = self.workers.get_mut(wid) {
            w.last_seen = now;
        }
    }

    fn on_agent(&mut self, now: Micros, conn: ConnId, msg: FromAgent, comm: &mut impl Comm) {
        if let FromAgent::Hello(hello) = msg {
            self.on_hello(now, conn, hello, comm);
            return;
        }
        let Some(wid) = self.workers.by_conn(conn) else {
            // Anything before a Hello is a protocol violation.
            comm.close_agent(conn);
            return;
        };
        let Some(w) = self.workers.get_mut(wid) else {
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
                if self.workers.release(wid, job, attempt) {
                    self.stealing.capacity_grew();
                }
                self.report(wid, job, attempt, Report::Finished { outcome, at }, comm);
                self.want_schedule();
            }
        }
    }

    fn on_hello(&mut self, now: Micros, conn: ConnId, hello: Hello, comm: &mut impl Comm) {
        if self.workers.by_conn(conn).is_some() {
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
            None => self.workers.mint(self.index_u8(), self.cfg.epoch),
        };
        // A reconnect replaces the old connection, if the old one is still open.
        let previous = self.workers.remove(id);
        let mut w = Worker::new(id, conn, hello.hostname, hello.resources, now);
        let mut forgotten = Vec::new();
        if let Some(prev) = previous {
            if let Some(old) = prev.conn {
                self.workers.unlink(old);
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
        self.workers.insert(w);
        self.worker_event(id, state, Some("registered".to_owned()), comm);
        self.timers
            .arm(now + self.cfg.heartbeat_timeout, Timer::Worker(id));
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
        self.workers.refresh(id);
        self.stealing.capacity_grew();
        self.want_schedule();
    }

    /// An agent connection closed (or was closed).
    pub fn handle_agent_closed(&mut self, now: Micros, conn: ConnId, comm: &mut impl Comm) {
        self.begin_call();
        self.now = now;
        if let Some(id) = self.workers.unlink(conn) {
            self.disconnect(now, id, comm);
        }
        self.end_call(comm);
    }

    fn disconnect(&mut self, now: Micros, id: WorkerId, comm: &mut impl Comm) {
        if let Some(c) = self.workers.take_conn(id) {
            comm.close_agent(c);
        }
        let Some(w) = self.workers.get_mut(id) else {
            return;
        };
        if w.state.can_transition_to(WorkerState::Disconnected) {
            w.state = WorkerState::Disconnected;
            let back_by = now + self.cfg.disconnect_grace;
            w.back_by = Some(back_by);
            self.timers.arm(back_by, Timer::Worker(id));
            let reason = Some("connection lost or silent".to_owned());
            self.worker_event(id, WorkerState::Disconnected, reason, comm);
        } else if w.state == WorkerState::Terminated {
            // Drained and left, its connection now closed too: it is gone.
            self.depart(id);
        }
        self.workers.refresh(id);
    }

    /// A worker is gone for good (lost, or left): kept for `worker list` among the last
    /// departures; the oldest beyond those are forgotten with their deadlines.
    fn depart(&mut self, id: WorkerId) {
        self.timers.forget_worker(id);
        for old in self.workers.depart(id) {
            self.timers.forget_worker(old);
        }
    }

    /// A worker's grace ran out: requeue its attempts.
    fn lose(&mut self, id: WorkerId, comm: &mut impl Comm) {
        let Some(w) = self.workers.get_mut(id) else {
            return;
        };
        if !w.state.can_transition_to(WorkerState::Lost) {
            return;
        }
        w.state = WorkerState::Lost;
        let held = w.held.take_all();
        w.recompute();
        let reason = Some(if w.restored {
            "did not come back within the re-attach grace after a restart".to_owned()
        } else {
            "did not come back within the disconnect grace".to_owned()
        });
        self.worker_event(id, WorkerState::Lost, reason, comm);
        self.depart(id);
        for h in held {
            let reason = format!("worker {id} lost");
            self.report(id, h.job, h.attempt, Report::Lost { reason }, comm);
        }
    }

    /// Worker shard: pass a message from a job's owner to the agent.
    pub(crate) fn deliver(&mut self, worker: WorkerId, msg: ToAgent, comm: &mut impl Comm) {
        let Some(w) = self.workers.get(worker) else {
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
            && self.workers.release(worker, job, attempt)
        {
            self.stealing.capacity_grew();
            self.want_schedule();
        }
    }

    /// Fires due timers. Timers armed meanwhile that are due too fire in the same call.
    pub fn handle_timeout(&mut self, now: Micros, comm: &mut impl Comm) {
        self.begin_call();
        self.now = now;
        while let Some(timer) = self.timers.pop_due(now) {
            match timer {
                Timer::Worker(id) => self.check_worker(now, id, comm),
                Timer::Claim(job) => {
                    let expired = self
                        .jobs
                        .get(job)
                        .is_some_and(|j| j.claim_deadline.is_some_and(|d| d <= now));
                    if expired {
                        let reason =
                            "lost: no agent re-attached it after the server restarted".to_owned();
                        self.attempt_over(job, RetryOn::LOST, JobState::Failed, reason, comm);
                        self.want_schedule();
                    }
                }
                Timer::Retry(job) => self.on_retry_due(job),
                Timer::Ack(job, attempt) => self.on_ack_due(job, attempt, comm),
                Timer::Queue(job) => self.on_queue_due(job, comm),
                Timer::Retention => self.on_retention_due(comm),
            }
        }
        self.end_call(comm);
    }

    fn check_worker(&mut self, now: Micros, id: WorkerId, comm: &mut impl Comm) {
        let Some(w) = self.workers.get(id) else {
            return;
        };
        match (w.conn, w.back_by) {
            (Some(_), _) => {
                let due = w.last_seen + self.cfg.heartbeat_timeout;
                if due <= now {
                    self.disconnect(now, id, comm);
                } else {
                    self.timers.arm(due, Timer::Worker(id));
                }
            }
            (None, Some(due)) => {
                if due <= now {
                    self.lose(id, comm);
                } else if w.state == WorkerState::Disconnected {
                    self.timers.arm(due, Timer::Worker(id));
                }
            }
            (None, None) => {}
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
        let Some(w) = self.workers.get_mut(id) else {
            return;
        };
        if w.state == state || !w.state.can_transition_to(state) {
            return;
        }
        w.state = state;
        self.workers.refresh(id);
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
        let Some(w) = self.workers.get_mut(id) else {
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
        let Some(w) = self.workers.get(id) else {
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
        Reply::Msg(FromServer::Workers(self.workers.info(id)))
    }
}
