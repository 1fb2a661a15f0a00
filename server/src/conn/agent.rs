//! An agent's connection: mTLS identity, its one stream of frames (registration, reports,
//! output) and its heartbeat datagrams into the shard's loop, and a writer task for what the
//! loop releases to it.
//!
//! What a peer can make this server hold is bounded per connection:
//!
//! - **Unacknowledged output** ([`Unacked`]): output forwarded to the loop but not yet
//!   acknowledged (`OutputAck`) waits in the shard's next batch or the commit in flight. Past
//!   [`MAX_UNACKED`] the stream's reader stops reading until acknowledgements go out, so QUIC
//!   flow control holds the agent back, whatever the disk does. Agents keep their own, smaller
//!   window per job (`hodei agent --output-window`); this bound holds against any peer.
//! - **Messages to the agent**: the writer accounts every acknowledgement as it receives it,
//!   even while a write waits for the peer, so a stalled write never holds the reader back;
//!   what arrives meanwhile waits in a stash of at most [`MAX_STASHED`] messages. A peer that
//!   lets it fill does not read its stream, and its connection is closed.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use hodei_core::ids::{Attempt, JobId};
use hodei_core::wire::{FromAgent, ToAgent};
use hodei_shards::ConnId;
use hodei_transport::{FrameReader, FrameWriter};
use tokio::sync::Notify;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tracing::{debug, warn};

use super::next_id;
use crate::control::Control;
use crate::shard_thread::{AgentMsg, AgentOpen, AgentOut, Input};

/// How long a new connection may take to open its first stream.
const FIRST_STREAM: Duration = Duration::from_secs(10);

/// Output bytes of one connection forwarded and not yet acknowledged, past which its reader
/// waits: the most output one agent can make the shard hold unwritten.
const MAX_UNACKED: u64 = 16 << 20;

/// Messages for the agent that may wait while a write to it is stalled; more means the peer
/// does not read its stream.
const MAX_STASHED: usize = 16 * 1024;

/// Output of one connection forwarded to the loop and not yet acknowledged, per attempt.
#[derive(Debug, Default)]
struct Unacked {
    /// Per job: its attempt, the end acknowledged, the end forwarded.
    jobs: HashMap<JobId, (Attempt, u64, u64)>,
    /// Sum over the jobs of forwarded minus acknowledged bytes.
    total: u64,
}

impl Unacked {
    /// Bytes of `job` forwarded and not acknowledged.
    fn of(entry: (Attempt, u64, u64)) -> u64 {
        entry.2.saturating_sub(entry.1)
    }

    /// Replaces (or removes) a job's entry, keeping the total.
    fn set(&mut self, job: JobId, entry: Option<(Attempt, u64, u64)>) {
        let before = self.jobs.get(&job).copied().map_or(0, Self::of);
        let after = entry.map_or(0, Self::of);
        self.total = self.total.saturating_sub(before).saturating_add(after);
        match entry {
            Some(e) => self.jobs.insert(job, e),
            None => self.jobs.remove(&job),
        };
    }

    /// Output of an attempt up to `end` was forwarded (a batch from `offset`).
    fn sent(&mut self, job: JobId, attempt: Attempt, offset: u64, end: u64) {
        let entry = match self.jobs.get(&job).copied() {
            Some((a, acked, sent)) if a == attempt => (a, acked, sent.max(end)),
            // A new attempt, or the first batch seen: what came before it is not ours.
            _ => (attempt, offset, end),
        };
        self.set(job, Some(entry));
    }

    /// What the writer sends the agent: an acknowledgement moves the job's entry; the end of
    /// the attempt (`FinishedAck`, `Abandon`) drops it, since nothing of it will be acked.
    /// True when the total fell.
    fn on_out(&mut self, msg: &ToAgent) -> bool {
        let before = self.total;
        match *msg {
            ToAgent::OutputAck {
                job,
                attempt,
                output_end,
            } => {
                if let Some((a, acked, sent)) = self.jobs.get(&job).copied()
                    && a == attempt
                {
                    self.set(job, Some((a, acked.max(output_end), sent)));
                }
            }
            ToAgent::FinishedAck { job, attempt } | ToAgent::Abandon { job, attempt }
                if self.jobs.get(&job).is_some_and(|e| e.0 == attempt) =>
            {
                self.set(job, None);
            }
            _ => {}
        }
        self.total < before
    }
}

/// The shared state of one connection's reader and writer (one thread: `Rc`).
#[derive(Debug, Default)]
struct Window {
    unacked: RefCell<Unacked>,
    /// Woken when `unacked` falls.
    fell: Notify,
}

impl Window {
    /// Waits while this connection holds too much unacknowledged output.
    async fn room(&self) {
        while self.unacked.borrow().total > MAX_UNACKED {
            self.fell.notified().await;
        }
    }

    fn on_out(&self, msg: &ToAgent) {
        if self.unacked.borrow_mut().on_out(msg) {
            // A stored permit if the reader is not waiting yet: no wake-up is lost.
            self.fell.notify_one();
        }
    }
}

/// Serves one agent connection until it ends.
pub(super) async fn agent_conn(
    conn: quinn::Connection,
    tx: UnboundedSender<Input>,
    control: Arc<Control>,
) {
    let remote = conn.remote_address();
    // Agents connect with mTLS only: a certificate this server issued, not revoked.
    let identity = match hodei_transport::peer_cert(&conn) {
        None => Err("no client certificate (join with `hodei agent --join TOKEN`)".to_owned()),
        Some(der) => control.identify(&der),
    };
    let identity = match identity {
        Ok(i) => i,
        Err(why) => {
            warn!(%remote, "refused an agent connection: {why}");
            conn.close(4u32.into(), b"client certificate refused");
            return;
        }
    };
    let (send, recv) = match tokio::time::timeout(FIRST_STREAM, conn.accept_bi()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(%remote, "agent connection ended before its stream: {e}");
            return;
        }
        Err(_) => {
            warn!(%remote, "agent opened no stream within {FIRST_STREAM:?}; closing");
            conn.close(3u32.into(), b"no stream");
            return;
        }
    };
    let id = ConnId(next_id());
    let (wtx, wrx) = unbounded_channel();
    if tx
        .send(Input::AgentOpen(AgentOpen {
            conn: id,
            actor: identity.clone(),
            writer: wtx.clone(),
        }))
        .is_err()
    {
        return;
    }
    let window = Rc::new(Window::default());
    tokio::task::spawn_local(agent_writer(
        FrameWriter::new(send),
        wrx,
        conn.clone(),
        Arc::clone(&control),
        identity.clone(),
        Rc::clone(&window),
    ));
    let datagrams = tokio::task::spawn_local(agent_datagrams(conn.clone(), id, tx.clone()));
    let mut reader = FrameReader::new(recv);
    loop {
        // Not a frame more while the shard holds too much of this agent's output unwritten.
        tokio::select! {
            () = window.room() => {}
            _ = conn.closed() => break,
        }
        match reader.next::<FromAgent>().await {
            Ok(Some(FromAgent::Hello(hello)))
                if hello
                    .worker
                    .is_some_and(|w| control.may_claim(w, &identity).is_err()) =>
            {
                if let Some(w) = hello.worker
                    && let Err(why) = control.may_claim(w, &identity)
                {
                    warn!(%remote, "refused an agent registration: {why}");
                }
                conn.close(5u32.into(), b"worker belongs to another agent");
                break;
            }
            Ok(Some(FromAgent::Renew { public_key })) => {
                // Answered here: certificates are the connection layer's, not a shard's.
                match control.renew(&identity, &public_key) {
                    Ok((cert_pem, expires_at_ms)) => {
                        debug!(%identity, "agent certificate renewed");
                        let _ = wtx.send(AgentOut::Msg(Box::new(ToAgent::Renewed {
                            cert_pem,
                            expires_at_ms,
                        })));
                    }
                    Err(e) => warn!(%identity, "cannot renew an agent certificate: {e:#}"),
                }
            }
            Ok(Some(msg)) => {
                if let FromAgent::Output {
                    job,
                    attempt,
                    offset,
                    chunks,
                } = &msg
                {
                    let len = chunks
                        .iter()
                        .fold(0u64, |n, c| n.saturating_add(c.data.len() as u64));
                    let end = offset.saturating_add(len);
                    window
                        .unacked
                        .borrow_mut()
                        .sent(*job, *attempt, *offset, end);
                }
                if !forward(&tx, id, msg) {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                if conn.close_reason().is_some() {
                    debug!(%remote, "agent connection closed: {e}");
                } else {
                    warn!(%remote, "closing agent connection: {e}");
                    conn.close(1u32.into(), b"protocol error");
                }
                break;
            }
        }
    }
    // Before `AgentClosed`, so no heartbeat follows it; and the task's handle on the
    // connection goes with it, so a connection whose stream ended closes as before.
    datagrams.abort();
    let _ = tx.send(Input::AgentClosed(id));
}

/// Hands a decoded message to the shard's loop, stamped with when it was decoded; false once
/// the loop is gone.
fn forward(tx: &UnboundedSender<Input>, conn: ConnId, msg: FromAgent) -> bool {
    let decoded = std::time::Instant::now();
    tx.send(Input::Agent(AgentMsg { conn, msg, decoded }))
        .is_ok()
}

/// An agent's heartbeats sent as datagrams (`hodei_transport::datagram`), until the
/// connection ends. Their own task, so that a heartbeat does not poll the stream's reader.
/// Anything but a heartbeat in a datagram is a protocol error and closes the connection. The
/// stream's task aborts this one when the stream ends.
async fn agent_datagrams(conn: quinn::Connection, id: ConnId, tx: UnboundedSender<Input>) {
    while let Ok(datagram) = conn.read_datagram().await {
        let why = match hodei_transport::decode_datagram::<FromAgent>(&datagram) {
            Ok(msg @ FromAgent::Heartbeat { .. }) => {
                if !forward(&tx, id, msg) {
                    return;
                }
                continue;
            }
            Ok(_) => "a datagram holds a message other than a heartbeat".to_owned(),
            Err(e) => e.to_string(),
        };
        warn!(remote = %conn.remote_address(), "closing agent connection: {why}");
        conn.close(1u32.into(), b"protocol error");
        return;
    }
}

async fn agent_writer(
    mut w: FrameWriter,
    mut rx: UnboundedReceiver<AgentOut>,
    conn: quinn::Connection,
    control: Arc<Control>,
    identity: String,
    window: Rc<Window>,
) {
    // Messages received while a write waited for the peer, in order.
    let mut stash: std::collections::VecDeque<AgentOut> = std::collections::VecDeque::new();
    loop {
        let first = match stash.pop_front() {
            Some(out) => out,
            None => match rx.recv().await {
                Some(out) => {
                    account(&window, &out);
                    out
                }
                None => return,
            },
        };
        let mut close = false;
        let mut next = Some(first);
        // Everything already queued goes out in one write.
        while let Some(out) = next {
            match out {
                AgentOut::Msg(m) => {
                    if let ToAgent::Welcome { worker, .. } = &*m {
                        control.bind_worker(*worker, &identity);
                    }
                    if let Err(e) = w.push(&*m) {
                        warn!("dropping an unencodable message: {e}");
                    }
                }
                AgentOut::Close => close = true,
            }
            next = stash.pop_front().or_else(|| {
                let out = rx.try_recv().ok()?;
                account(&window, &out);
                Some(out)
            });
        }
        // While the write waits for the peer, acknowledgements are still accounted as they
        // arrive: the reader's window must not depend on this peer reading.
        let flushed = {
            let flush = w.flush();
            tokio::pin!(flush);
            loop {
                tokio::select! {
                    r = &mut flush => break r.is_ok(),
                    out = rx.recv(), if stash.len() < MAX_STASHED => match out {
                        Some(out) => {
                            account(&window, &out);
                            stash.push_back(out);
                        }
                        None => break (&mut flush).await.is_ok(),
                    },
                    () = std::future::ready(()), if stash.len() >= MAX_STASHED => {
                        warn!(
                            remote = %conn.remote_address(),
                            "closing agent connection: it does not read its stream"
                        );
                        conn.close(6u32.into(), b"not reading");
                        return;
                    }
                }
            }
        };
        if !flushed {
            return;
        }
        if close {
            let _ = w.finish();
            // Let the peer read what was sent (e.g. a redirect) before the close.
            let _ = tokio::time::timeout(Duration::from_millis(500), conn.closed()).await;
            conn.close(0u32.into(), b"closed by server");
            return;
        }
    }
}

/// Accounts a message for the agent in the connection's output window.
fn account(window: &Window, out: &AgentOut) {
    if let AgentOut::Msg(m) = out {
        window.on_out(m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Acknowledgements and the ends of attempts release what was forwarded; a new attempt
    /// starts afresh; nothing goes below zero.
    #[test]
    fn unacknowledged_output_is_counted_per_attempt() {
        let mut u = Unacked::default();
        let (a, b) = (JobId::new(0, 1, 1), JobId::new(0, 1, 2));
        u.sent(a, Attempt(1), 0, 10 << 20);
        u.sent(b, Attempt(1), 5, 105);
        assert_eq!(u.total, (10 << 20) + 100);
        let ack = |job, attempt, output_end| ToAgent::OutputAck {
            job,
            attempt,
            output_end,
        };
        assert!(u.on_out(&ack(a, Attempt(1), 4 << 20)));
        assert_eq!(u.total, (6 << 20) + 100);
        // An acknowledgement of another attempt changes nothing.
        assert!(!u.on_out(&ack(a, Attempt(2), 10 << 20)));
        assert!(u.on_out(&ToAgent::FinishedAck {
            job: b,
            attempt: Attempt(1),
        }));
        assert_eq!(u.total, 6 << 20);
        // An acknowledgement past what was forwarded clears the job, no more.
        assert!(u.on_out(&ack(a, Attempt(1), 20 << 20)));
        assert_eq!(u.total, 0);
        u.sent(a, Attempt(2), 0, 7);
        assert_eq!(u.total, 7);
        assert!(u.on_out(&ToAgent::Abandon {
            job: a,
            attempt: Attempt(2),
        }));
        assert_eq!(u.total, 0);
    }
}
