//! An agent's connection: mTLS identity, its one stream of frames (registration, reports,
//! output) and its heartbeat datagrams into the shard's loop, and a writer task for what the
//! loop releases to it.

use std::sync::Arc;
use std::time::Duration;

use hodei_core::wire::{FromAgent, ToAgent};
use hodei_shards::ConnId;
use hodei_transport::{FrameReader, FrameWriter};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tracing::{debug, warn};

use super::next_id;
use crate::control::Control;
use crate::shard_thread::{AgentMsg, AgentOpen, AgentOut, Input};

/// How long a new connection may take to open its first stream.
const FIRST_STREAM: Duration = Duration::from_secs(10);

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
    tokio::task::spawn_local(agent_writer(
        FrameWriter::new(send),
        wrx,
        conn.clone(),
        Arc::clone(&control),
        identity.clone(),
    ));
    let datagrams = tokio::task::spawn_local(agent_datagrams(conn.clone(), id, tx.clone()));
    let mut reader = FrameReader::new(recv);
    loop {
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
) {
    while let Some(first) = rx.recv().await {
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
