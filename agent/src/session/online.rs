//! The life of one connection: `Hello` (listing the jobs held), then the server's messages,
//! the runners' events, heartbeats and signals on one loop, until the connection is lost,
//! redirected, or the agent has drained and says `Goodbye`. An `Assign`'s secret values are
//! wrapped in a [`runner::Secrets`] as soon as it arrives, so they are wiped whether the job
//! runs, is refused (draining) or is a duplicate.

use std::time::Duration;

use hodei_core::wire::{FromAgent, HeldJob, Hello, ToAgent};
use hodei_transport::{FrameReader, FrameWriter, TransportError};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::drain::LEAVE_GRACE;
use super::{Agent, End, Signals, later, millis, sleep_until};
use crate::runner::{self, RunEvent};

/// How long the last messages and the `Goodbye` get to reach the server before the close.
const GOODBYE_WAIT: Duration = Duration::from_secs(2);

fn lost(e: TransportError) -> End {
    End::Lost(e.to_string())
}

impl Agent {
    pub(super) async fn session(
        &mut self,
        conn: &quinn::Connection,
        events_rx: &mut mpsc::Receiver<RunEvent>,
        signals: &mut Signals,
    ) -> End {
        let (send, recv) = match conn.open_bi().await {
            Ok(s) => s,
            Err(e) => return End::Lost(e.to_string()),
        };
        let mut w = FrameWriter::new(send);
        let mut r = FrameReader::new(recv);
        // The lease may have run out while connecting: such jobs must not be offered.
        if self.lease_expired(Instant::now()) {
            self.expire_lease(events_rx).await;
        }
        let held = self
            .jobs
            .iter()
            .map(|(job, h)| HeldJob {
                job: *job,
                attempt: h.attempt,
                cpus: h.cpus,
                memory: h.memory,
            })
            .collect();
        for h in self.jobs.values_mut() {
            h.resuming = true;
            h.sent_end = 0;
        }
        if let Some(d) = &mut self.drain {
            d.announced = false;
        }
        self.renewal.connected(super::identity::now_ms());
        let hello = Hello {
            worker: self.worker,
            hostname: self.hostname.clone(),
            resources: self.resources.clone(),
            held,
        };
        if let Err(e) = w.send(&FromAgent::Hello(hello)).await {
            return lost(e);
        }
        let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
        // While leaving a drain: how long to wait for acknowledgements on this connection.
        let mut acks_until = None;
        loop {
            let now = Instant::now();
            // The lease itself is kept by `lease::watch`, raced against this session: if it
            // runs out, even before the Welcome (the Hello listed jobs now killed), the
            // session ends and the next Hello does not list them.
            self.sync_lease();
            let wake = match self.drain_online(now, &mut acks_until, conn, &mut w).await {
                Ok(wake) => wake,
                Err(end) => return end,
            };
            let step = tokio::select! {
                msg = r.next::<ToAgent>() => match msg {
                    Ok(Some(m)) => self.on_server(m, &mut w, &mut heartbeat).await,
                    Ok(None) => Err(End::Lost("server closed the stream".into())),
                    Err(e) => Err(lost(e)),
                },
                Some(ev) = events_rx.recv() => {
                    // What the runners already reported goes out in one write (while the
                    // writer has room): fewer stream writes and packets when jobs are short.
                    // Awaiting the write is the backpressure: a slow server stalls this
                    // loop, the bounded event channel fills, and runners stop reading their
                    // pipes.
                    let mut next = Some(ev);
                    let mut pushed = Ok(());
                    while let Some(ev) = next {
                        if let Some(msg) = self.record(ev) {
                            pushed = w.push(&msg).map_err(lost);
                            if pushed.is_err() {
                                break;
                            }
                        }
                        next = if w.has_room() {
                            events_rx.try_recv().ok()
                        } else {
                            None
                        };
                    }
                    match pushed {
                        Ok(()) => w.flush().await.map_err(lost),
                        Err(e) => Err(e),
                    }
                }
                _ = heartbeat.tick() => {
                    let running = u32::try_from(self.running()).unwrap_or(u32::MAX);
                    let load = crate::resources::load();
                    let renew = self.renewal_request();
                    let beat = FromAgent::Heartbeat { running, load };
                    // Once welcomed, as a datagram: never resent, never queued behind
                    // output (`hodei_transport::datagram`). Before `Welcome` a datagram
                    // could overtake the Hello, so the stream; and a server that takes no
                    // datagrams gets the stream too.
                    let sent = if self.welcomed {
                        hodei_transport::send_datagram(conn, &beat).map_err(lost)
                    } else {
                        Ok(false)
                    };
                    let mut r = match sent {
                        Ok(true) => Ok(()),
                        Ok(false) => w.push(&beat).map_err(lost),
                        Err(e) => Err(e),
                    };
                    if let (Ok(()), Some(m)) = (&r, renew) {
                        r = w.push(&m).map_err(lost);
                    }
                    match r {
                        Ok(()) if w.has_pending() => w.flush().await.map_err(lost),
                        other => other,
                    }
                }
                () = signals.recv() => {
                    self.on_signal(Instant::now());
                    Ok(())
                }
                () = sleep_until(wake) => Ok(()),
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// The drain's share of a connection: its due steps, `Draining` once welcomed, and once
    /// nothing runs, the wait for acknowledgements and the goodbye. `Ok(when to look
    /// again)`, or `Err` when the session is over.
    async fn drain_online(
        &mut self,
        now: Instant,
        acks_until: &mut Option<Instant>,
        conn: &quinn::Connection,
        w: &mut FrameWriter,
    ) -> Result<Option<Instant>, End> {
        let (reports, wake) = self.drain_tick(now);
        let welcomed = self.welcomed;
        let Some(drain) = &mut self.drain else {
            return Ok(None);
        };
        for msg in &reports {
            w.push(msg).map_err(lost)?;
        }
        if welcomed && !drain.announced {
            drain.announced = true;
            let timeout_ms = millis(drain.remaining(now));
            w.push(&FromAgent::Draining { timeout_ms }).map_err(lost)?;
        }
        let leave_until = drain.leave_until();
        if w.has_pending() {
            w.flush().await.map_err(lost)?;
        }
        let Some(leave_until) = leave_until else {
            return Ok(wake);
        };
        if !welcomed {
            if now >= leave_until {
                warn!("drained, but the server did not register this agent in time");
                return Err(End::GaveUp);
            }
            return Ok(Some(leave_until));
        }
        let until = *acks_until.get_or_insert_with(|| later(now, LEAVE_GRACE));
        if self.jobs.is_empty() || now >= until {
            return Err(self.goodbye(conn, w).await);
        }
        Ok(Some(until))
    }

    /// Says `Goodbye` after everything else, finishes the stream, waits (bounded) until the
    /// server has it all, and closes. The server then holds every result it will get.
    async fn goodbye(&mut self, conn: &quinn::Connection, w: &mut FrameWriter) -> End {
        let say = async {
            w.send(&FromAgent::Goodbye).await?;
            w.finish()?;
            // Closing at once could drop the stream's tail: wait for the server to have it.
            let _ = w.get_mut().stopped().await;
            Ok::<(), TransportError>(())
        };
        match tokio::time::timeout(GOODBYE_WAIT, say).await {
            Ok(Ok(())) => info!("drained; said goodbye to the server"),
            Ok(Err(e)) => warn!("drained; the goodbye may not have reached the server: {e}"),
            Err(_) => warn!("drained; the server did not confirm the goodbye in time"),
        }
        conn.close(0u32.into(), b"agent drained");
        // What is still held was reported before the goodbye; nobody will ask again.
        for (job, h) in std::mem::take(&mut self.jobs) {
            warn!(job = %job, cid = %h.cid, "result not acknowledged before the goodbye");
            self.drop_held(job, h);
        }
        End::Left
    }

    async fn on_server(
        &mut self,
        msg: ToAgent,
        w: &mut FrameWriter,
        heartbeat: &mut tokio::time::Interval,
    ) -> Result<(), End> {
        match msg {
            ToAgent::Renewed {
                cert_pem,
                expires_at_ms,
            } => self.renewed(&cert_pem, expires_at_ms),
            ToAgent::Welcome {
                worker,
                heartbeat_ms,
                lease_ms,
            } => {
                if self.worker != Some(worker) {
                    info!(%worker, lease_ms, "registered");
                }
                let lease = Duration::from_millis(lease_ms);
                if lease < super::lease::MIN_LEASE && lease != self.clock.lease() {
                    warn!(
                        ?lease,
                        "the server's lease is shorter than {:?} (its disconnect grace is under 1s): jobs may be killed on a working connection",
                        super::lease::MIN_LEASE
                    );
                }
                let now = Instant::now();
                self.worker = Some(worker);
                self.welcomed = true;
                self.welcomed_at = Some(now);
                self.clock.welcomed(now, lease);
                // Often enough that the server's answers keep the lease (`lease::beat`).
                let every = super::lease::beat(Duration::from_millis(heartbeat_ms), lease);
                *heartbeat = tokio::time::interval(every);
            }
            ToAgent::Drain { timeout_ms } => {
                let timeout = Duration::from_millis(timeout_ms);
                self.start_drain(Instant::now(), timeout, "the server asked");
            }
            ToAgent::Redirect { port } => return Err(End::Redirect(port)),
            ToAgent::Refused { reason } => {
                warn!("server refused registration: {reason}");
                // A stale id (e.g. the server's data dir was wiped): register afresh.
                self.worker = None;
                return Err(End::Lost(reason));
            }
            ToAgent::Assign {
                job,
                attempt,
                spec,
                secrets,
            } => {
                // Wrapped at once, so the values are wiped on every way out of here.
                let secrets = runner::Secrets::new(secrets);
                if let Some(old) = self.jobs.get(&job) {
                    if old.attempt >= attempt {
                        return Ok(()); // duplicate
                    }
                    if let Some(old) = self.jobs.remove(&job) {
                        self.drop_held(job, old);
                    }
                }
                if self.drain.is_some() {
                    let report = self.refuse(job, attempt, &spec);
                    return w.send(&report).await.map_err(lost);
                }
                self.start(job, attempt, spec, secrets);
            }
            ToAgent::Cancel { job, attempt } => {
                if let Some(h) = self.jobs.get_mut(&job).filter(|h| h.attempt == attempt) {
                    debug!(job = %job, cid = %h.cid, %attempt, "cancel requested by the server");
                    h.cancel_requested = true;
                    if let Some(handle) = &h.handle {
                        handle.cancel();
                    }
                }
            }
            ToAgent::Abandon { job, attempt } | ToAgent::FinishedAck { job, attempt } => {
                if self.jobs.get(&job).is_some_and(|h| h.attempt == attempt)
                    && let Some(h) = self.jobs.remove(&job)
                {
                    if h.finished.is_none() {
                        warn!(job = %job, cid = %h.cid, %attempt, "the server has moved on from this attempt: killing the job");
                    } else {
                        debug!(job = %job, cid = %h.cid, %attempt, "result acknowledged");
                    }
                    self.drop_held(job, h);
                }
            }
            ToAgent::Resume {
                job,
                attempt,
                output_end,
            } => self.resume(job, attempt, output_end, w).await?,
            ToAgent::OutputAck {
                job,
                attempt,
                output_end,
            } => {
                // Durable on the server: the job's output window moves on.
                if let Some(handle) = self
                    .jobs
                    .get(&job)
                    .filter(|h| h.attempt == attempt)
                    .and_then(|h| h.handle.as_ref())
                {
                    handle.acked(output_end);
                }
            }
        }
        Ok(())
    }

    /// A held job was re-attached: resend its start, its output from `output_end` (from the
    /// spool) and its result, and go live again.
    async fn resume(
        &mut self,
        job: hodei_core::ids::JobId,
        attempt: hodei_core::ids::Attempt,
        output_end: u64,
        w: &mut FrameWriter,
    ) -> Result<(), End> {
        let Some(h) = self.jobs.get_mut(&job).filter(|h| h.attempt == attempt) else {
            return Ok(());
        };
        debug!(job = %job, cid = %h.cid, %attempt, output_end, "resumed");
        h.resuming = false;
        if let Some(handle) = &h.handle {
            handle.acked(output_end);
        }
        if let Some(at) = h.started_at {
            w.push(&FromAgent::Started { job, attempt, at })
                .map_err(lost)?;
        }
        // In bounded batches straight from the spool: output of any size, spooled over any
        // outage, goes out in messages well under the frame limit, and never whole in memory.
        let mut offset = output_end;
        match runner::SpoolReader::open(&self.opts, job, attempt, output_end) {
            Ok(mut spool) => loop {
                let batch = match spool.next_batch(self.opts.batch_limit()) {
                    Ok(b) if b.is_empty() => break,
                    Ok(b) => b,
                    Err(e) => {
                        warn!(job = %job, cid = %h.cid, "cannot read the spool to resume output: {e}");
                        break;
                    }
                };
                w.push(&FromAgent::Output {
                    job,
                    attempt,
                    offset,
                    chunks: batch,
                })
                .map_err(lost)?;
                offset = spool.offset();
                if !w.has_room() {
                    w.flush().await.map_err(lost)?;
                }
            },
            Err(e) => {
                warn!(job = %job, cid = %h.cid, "cannot read the spool to resume output: {e}");
            }
        }
        h.sent_end = offset;
        if let Some((outcome, at)) = h.finished.clone() {
            w.push(&FromAgent::Finished {
                job,
                attempt,
                outcome,
                at,
            })
            .map_err(lost)?;
        }
        w.flush().await.map_err(lost)
    }
}
