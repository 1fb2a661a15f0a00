//! Connection tasks of a shard: accept, tell agents from clients by ALPN, read frames into
//! the shard's loop, write what the loop releases. A peer that sends garbage, a message of
//! another version or anything out of protocol gets its connection closed and a log line.

use std::cell::Cell;
use std::time::Duration;

use hodei_core::frame::MAX_FRAME;
use hodei_core::wire::{ALPN_AGENT, ALPN_CLIENT, ErrorKind, FromAgent, FromServer, ToServer};
use hodei_shards::{ConnId, Reply, ReqId};
use hodei_transport::{FrameReader, FrameWriter};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tracing::{debug, warn};

use super::shard_thread::{AgentOut, Input};
use super::store::Store;

thread_local! {
    // Connection and request numbers are per shard thread: no shared counter on the hot path.
    static NEXT_ID: Cell<u64> = const { Cell::new(0) };
}

fn next_id() -> u64 {
    NEXT_ID.with(|c| {
        c.set(c.get() + 1);
        c.get()
    })
}

/// How long a new connection may take to open its first stream.
const FIRST_STREAM: Duration = Duration::from_secs(10);

pub async fn accept_loop(endpoint: quinn::Endpoint, tx: UnboundedSender<Input>, store: Store) {
    while let Some(incoming) = endpoint.accept().await {
        let tx = tx.clone();
        let store = store.clone();
        tokio::task::spawn_local(async move {
            let remote = incoming.remote_address();
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    warn!(%remote, "handshake failed: {e}");
                    return;
                }
            };
            let alpn = conn
                .handshake_data()
                .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                .and_then(|h| h.protocol);
            match alpn.as_deref() {
                Some(p) if p == ALPN_AGENT => agent_conn(conn, tx).await,
                Some(p) if p == ALPN_CLIENT => client_conn(conn, tx, store).await,
                _ => {
                    warn!(%remote, "unknown application protocol; closing");
                    conn.close(2u32.into(), b"unknown protocol");
                }
            }
        });
    }
}

async fn agent_conn(conn: quinn::Connection, tx: UnboundedSender<Input>) {
    let remote = conn.remote_address();
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
    if tx.send(Input::AgentOpen(id, wtx)).is_err() {
        return;
    }
    tokio::task::spawn_local(agent_writer(FrameWriter::new(send), wrx, conn.clone()));
    let mut reader = FrameReader::new(recv);
    loop {
        match reader.next::<FromAgent>().await {
            Ok(Some(msg)) => {
                if tx.send(Input::Agent(id, msg)).is_err() {
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
    let _ = tx.send(Input::AgentClosed(id));
}

async fn agent_writer(
    mut w: FrameWriter,
    mut rx: UnboundedReceiver<AgentOut>,
    conn: quinn::Connection,
) {
    while let Some(first) = rx.recv().await {
        let mut close = false;
        let mut next = Some(first);
        // Everything already queued goes out in one write.
        while let Some(out) = next {
            match out {
                AgentOut::Msg(m) => {
                    if let Err(e) = w.push(&m) {
                        warn!("dropping an unencodable message: {e}");
                    }
                }
                AgentOut::Close => close = true,
            }
            next = rx.try_recv().ok();
        }
        if w.flush().await.is_err() {
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

async fn client_conn(conn: quinn::Connection, tx: UnboundedSender<Input>, store: Store) {
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                tokio::task::spawn_local(client_stream(
                    FrameWriter::new(send),
                    FrameReader::new(recv),
                    conn.clone(),
                    tx.clone(),
                    store.clone(),
                ));
            }
            Err(e) => {
                debug!(remote = %conn.remote_address(), "client connection ended: {e}");
                return;
            }
        }
    }
}

/// Jobs per `Jobs` frame, so a long listing never exceeds the frame limit.
const JOBS_PER_FRAME: usize = 500;

async fn client_stream(
    mut w: FrameWriter,
    mut r: FrameReader,
    conn: quinn::Connection,
    tx: UnboundedSender<Input>,
    store: Store,
) {
    let body = match r.next::<ToServer>().await {
        Ok(Some(b)) => b,
        Ok(None) => return,
        Err(e) => {
            warn!(remote = %conn.remote_address(), "closing client connection: {e}");
            conn.close(1u32.into(), b"protocol error");
            return;
        }
    };
    let req = ReqId(next_id());
    let (rtx, mut rrx) = unbounded_channel();
    if tx.send(Input::Client(req, body, rtx)).is_err() {
        let _ = w.send(&internal("the server is shutting down")).await;
        return;
    }
    loop {
        let Some((reply, last)) = rrx.recv().await else {
            let _ = w.send(&internal("the server is shutting down")).await;
            break;
        };
        let ok = match reply {
            Reply::Msg(FromServer::Jobs(jobs)) if jobs.len() > JOBS_PER_FRAME => {
                let mut ok = true;
                for part in jobs.chunks(JOBS_PER_FRAME) {
                    ok &= w.push(&FromServer::Jobs(part.to_vec())).is_ok();
                }
                ok && w.flush().await.is_ok()
            }
            Reply::Msg(m) => w.send(&m).await.is_ok(),
            Reply::StoredEvents {
                shard,
                after,
                upto,
                job,
            } => match store.read_events(shard, after, upto, job) {
                Ok(events) => {
                    let mut ok = true;
                    for part in events.chunks(JOBS_PER_FRAME) {
                        ok &= w.push(&FromServer::Events(part.to_vec())).is_ok();
                    }
                    ok && w.flush().await.is_ok()
                }
                Err(e) => {
                    let _ = w
                        .send(&internal(&format!("cannot read events: {e:#}")))
                        .await;
                    false
                }
            },
            Reply::StoredLogs { job, attempt, upto } => match store.read_output(job, attempt, upto)
            {
                Ok(chunks) => send_logs(&mut w, chunks).await,
                Err(e) => {
                    // The stream ends here either way: the error is its last frame.
                    let _ = w
                        .send(&internal(&format!("cannot read output: {e:#}")))
                        .await;
                    false
                }
            },
        };
        if !ok || last {
            break;
        }
    }
    let _ = w.finish();
}

async fn send_logs(w: &mut FrameWriter, chunks: Vec<hodei_core::wire::Chunk>) -> bool {
    let budget = MAX_FRAME / 4;
    let mut batch = Vec::new();
    let mut size = 0;
    for c in chunks {
        size += c.data.len();
        batch.push(c);
        if size >= budget {
            if w.send(&FromServer::Log(std::mem::take(&mut batch)))
                .await
                .is_err()
            {
                return false;
            }
            size = 0;
        }
    }
    batch.is_empty() || w.send(&FromServer::Log(batch)).await.is_ok()
}

fn internal(msg: &str) -> FromServer {
    FromServer::Error {
        kind: ErrorKind::Internal,
        message: msg.to_owned(),
    }
}
