//! Connection tasks of a shard: accept, tell agents from clients by ALPN, read frames into
//! the shard's loop, write what the loop releases. A peer that sends garbage, a message of
//! another version or anything out of protocol gets its connection closed and a log line.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use hodei_auth::redact::{RedactStream, Redactor};
use hodei_core::frame::MAX_FRAME;
use hodei_core::ids::JobId;
use hodei_core::job::JobRecord;
use hodei_core::wire::{
    ALPN_AGENT, ALPN_CLIENT, Chunk, ErrorKind, FromAgent, FromServer, Request, Stream, ToAgent,
    ToServer,
};
use hodei_shards::{ConnId, Reply, ReqId};
use hodei_transport::{FrameReader, FrameWriter};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tracing::{debug, warn};

use super::control::{Caller, Control, permission_for};
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

/// What one source address may hold on one shard (the kernel spreads a source's
/// connections over the shards, so the server-wide bound is this times the shard count).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Established connections per source IP.
    pub conns_per_ip: u32,
    /// Handshakes in progress per source IP (a handshake flood is refused before it costs
    /// crypto work).
    pub handshakes_per_ip: u32,
}

/// Per source IP: handshakes in progress, established connections, refusals so far.
#[derive(Default)]
struct Source {
    handshaking: u32,
    established: u32,
    refused: u64,
}

type Sources = Rc<RefCell<HashMap<IpAddr, Source>>>;

/// Counts a connection of `ip` in one state for as long as it lives.
struct Slot {
    sources: Sources,
    ip: IpAddr,
    established: bool,
}

impl Slot {
    fn establish(&mut self) {
        let mut map = self.sources.borrow_mut();
        if let Some(s) = map.get_mut(&self.ip) {
            s.handshaking = s.handshaking.saturating_sub(1);
            s.established += 1;
        }
        self.established = true;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self.sources.borrow_mut();
        if let Some(s) = map.get_mut(&self.ip) {
            if self.established {
                s.established = s.established.saturating_sub(1);
            } else {
                s.handshaking = s.handshaking.saturating_sub(1);
            }
            if s.established == 0 && s.handshaking == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Admits a new connection from `ip`, or says why not.
fn admit(sources: &Sources, ip: IpAddr, limits: Limits) -> Result<Slot, String> {
    let mut map = sources.borrow_mut();
    let s = map.entry(ip).or_default();
    let why = if s.handshaking >= limits.handshakes_per_ip {
        Some(format!("{} handshakes in progress", s.handshaking))
    } else if s.established >= limits.conns_per_ip {
        Some(format!("{} connections open", s.established))
    } else {
        None
    };
    if let Some(why) = why {
        s.refused += 1;
        // The first refusal and every 1000th: a flood must not flood the log too.
        let n = s.refused;
        return Err(if n == 1 || n.is_multiple_of(1000) {
            format!("{why} (refusal {n} for this source)")
        } else {
            String::new()
        });
    }
    s.handshaking += 1;
    drop(map);
    Ok(Slot {
        sources: Rc::clone(sources),
        ip,
        established: false,
    })
}

pub async fn accept_loop(
    endpoint: quinn::Endpoint,
    tx: UnboundedSender<Input>,
    store: Store,
    control: Arc<Control>,
    limits: Limits,
) {
    let sources: Sources = Rc::default();
    while let Some(incoming) = endpoint.accept().await {
        let remote = incoming.remote_address();
        let mut slot = match admit(&sources, remote.ip(), limits) {
            Ok(s) => s,
            Err(why) => {
                if !why.is_empty() {
                    warn!(%remote, "refusing connections from this source: {why}");
                }
                incoming.refuse();
                continue;
            }
        };
        let tx = tx.clone();
        let store = store.clone();
        let control = Arc::clone(&control);
        tokio::task::spawn_local(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    warn!(%remote, "handshake failed: {e}");
                    return;
                }
            };
            slot.establish();
            let alpn = conn
                .handshake_data()
                .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                .and_then(|h| h.protocol);
            match alpn.as_deref() {
                Some(p) if p == ALPN_AGENT => agent_conn(conn, tx, control).await,
                Some(p) if p == ALPN_CLIENT => client_conn(conn, tx, store, control).await,
                _ => {
                    warn!(%remote, "unknown application protocol; closing");
                    conn.close(2u32.into(), b"unknown protocol");
                }
            }
            drop(slot);
        });
    }
}

async fn agent_conn(conn: quinn::Connection, tx: UnboundedSender<Input>, control: Arc<Control>) {
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
        .send(Input::AgentOpen(id, identity.clone(), wtx.clone()))
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
                if tx
                    .send(Input::Agent(id, msg, std::time::Instant::now()))
                    .is_err()
                {
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

/// An agent's heartbeats sent as datagrams (`hodei_transport::datagram`), until the
/// connection ends. Their own task, so that a heartbeat does not poll the stream's reader.
/// Anything but a heartbeat in a datagram is a protocol error and closes the connection. The
/// stream's task aborts this one when the stream ends.
async fn agent_datagrams(conn: quinn::Connection, id: ConnId, tx: UnboundedSender<Input>) {
    while let Ok(datagram) = conn.read_datagram().await {
        let why = match hodei_transport::decode_datagram::<FromAgent>(&datagram) {
            Ok(msg @ FromAgent::Heartbeat { .. }) => {
                if tx
                    .send(Input::Agent(id, msg, std::time::Instant::now()))
                    .is_err()
                {
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

async fn client_conn(
    conn: quinn::Connection,
    tx: UnboundedSender<Input>,
    store: Store,
    control: Arc<Control>,
) {
    // Requests being read at once on this connection: each may buffer up to a frame, so
    // this bounds what one connection can make the server hold (more streams wait).
    let reading = Arc::new(tokio::sync::Semaphore::new(READING_PER_CONN));
    loop {
        let Ok(permit) = Arc::clone(&reading).acquire_owned().await else {
            return;
        };
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                tokio::task::spawn_local(client_stream(
                    FrameWriter::new(send),
                    FrameReader::new(recv),
                    conn.clone(),
                    tx.clone(),
                    store.clone(),
                    Arc::clone(&control),
                    permit,
                ));
            }
            Err(e) => {
                debug!(remote = %conn.remote_address(), "client connection ended: {e}");
                return;
            }
        }
    }
}

/// Client requests read at once per connection.
const READING_PER_CONN: usize = 8;

/// Jobs per `Jobs` frame, so a long listing never exceeds the frame limit.
const JOBS_PER_FRAME: usize = 500;

async fn client_stream(
    mut w: FrameWriter,
    mut r: FrameReader,
    conn: quinn::Connection,
    tx: UnboundedSender<Input>,
    store: Store,
    control: Arc<Control>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let remote = conn.remote_address();
    let first = r.next::<Request>().await;
    drop(permit);
    let Request { token, mut body } = match first {
        Ok(Some(b)) => b,
        Ok(None) => return,
        Err(e) => {
            warn!(%remote, "closing client connection: {e}");
            conn.close(1u32.into(), b"protocol error");
            return;
        }
    };
    let caller = match control.authenticate(&token) {
        Ok(c) => c,
        Err(why) => {
            warn!(%remote, "refused a client request: {why}");
            let _ = w
                .send(&FromServer::Error {
                    kind: ErrorKind::Unauthenticated,
                    message: format!("refused: {why} (pass --token or set HODEI_TOKEN)"),
                })
                .await;
            let _ = w.finish();
            return;
        }
    };
    if let Err(denied) = caller.require(permission_for(&body)) {
        warn!(%remote, actor = %caller.name, "denied: {body:?}");
        let _ = w.send(&denied).await;
        let _ = w.finish();
        return;
    }
    if body.is_control() {
        let mut ok = true;
        for reply in control.handle(&caller, body) {
            ok &= w.push(&reply).is_ok();
        }
        if ok {
            let _ = w.flush().await;
        }
        let _ = w.finish();
        return;
    }
    let redactor = match gate(&mut body, &caller, &control, &tx).await {
        Ok(r) => r,
        Err(reply) => {
            let _ = w.send(&reply).await;
            let _ = w.finish();
            return;
        }
    };
    // A submitter sees its own jobs only.
    let only_owner = (!caller.role.sees_all_jobs()).then(|| caller.name.clone());
    let mut redact = LogRedaction::new(redactor);
    let req = ReqId(next_id());
    let (rtx, mut rrx) = unbounded_channel();
    if tx.send(Input::Client(req, body, caller.name, rtx)).is_err() {
        let _ = w.send(&internal("the server is shutting down")).await;
        return;
    }
    // A reply taken from the channel while batching, to be handled next.
    let mut carried = None;
    loop {
        let next = match carried.take() {
            Some(r) => Some(r),
            None => rrx.recv().await,
        };
        let Some((reply, mut last)) = next else {
            let _ = w.send(&internal("the server is shutting down")).await;
            break;
        };
        let ok = match reply {
            Reply::Msg(FromServer::Jobs(mut jobs)) => {
                if let Some(owner) = &only_owner {
                    jobs.retain(|j| j.spec.owner == *owner);
                }
                let mut ok = true;
                for part in jobs.chunks(JOBS_PER_FRAME) {
                    ok &= w.push(&FromServer::Jobs(part.to_vec())).is_ok();
                }
                if jobs.is_empty() {
                    ok &= w.push(&FromServer::Jobs(Vec::new())).is_ok();
                }
                ok && w.flush().await.is_ok()
            }
            Reply::Msg(FromServer::Log(chunks)) => {
                send_logs(&mut w, redact.apply(chunks, false)).await
            }
            Reply::Msg(FromServer::LogEnd) => {
                let tail = redact.apply(Vec::new(), true);
                send_logs(&mut w, tail).await && w.send(&FromServer::LogEnd).await.is_ok()
            }
            Reply::Msg(m) => {
                // Plain answers already queued (a `SubmitWait`'s jobs ending together) go out
                // in one write.
                let mut ok = w.push(&m).is_ok();
                while ok && !last && w.has_room() {
                    match rrx.try_recv() {
                        Ok((Reply::Msg(m), l)) if is_plain(&m) => {
                            ok = w.push(&m).is_ok();
                            last = l;
                        }
                        Ok(other) => {
                            carried = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                ok && w.flush().await.is_ok()
            }
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
                Ok(chunks) => send_logs(&mut w, redact.apply(chunks, false)).await,
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

/// An answer sent as it is (no filtering, redaction or store read on the way).
const fn is_plain(m: &FromServer) -> bool {
    !matches!(
        m,
        FromServer::Jobs(_) | FromServer::Log(_) | FromServer::LogEnd
    )
}

/// Checks a request against its caller before it reaches a shard: a submitter may only
/// touch its own jobs and not read the event stream of everyone's; a submit names secrets
/// that exist and is stamped with its owner. For `logs`, returns the job's redactor.
async fn gate(
    body: &mut ToServer,
    caller: &Caller,
    control: &Control,
    tx: &UnboundedSender<Input>,
) -> Result<Option<Redactor>, FromServer> {
    let sees_all = caller.role.sees_all_jobs();
    let is_logs = matches!(body, ToServer::Logs { .. });
    match body {
        ToServer::Submit { specs } | ToServer::SubmitWait { specs } => {
            for spec in specs.iter_mut() {
                spec.owner.clone_from(&caller.name);
                if let Some(name) = control.missing_secret(&spec.secrets) {
                    return Err(FromServer::Error {
                        kind: ErrorKind::Invalid,
                        message: format!(
                            "unknown secret {name:?} (create it with `hodei secret set {name}`)"
                        ),
                    });
                }
            }
            Ok(None)
        }
        ToServer::Events { .. } if !sees_all => Err(FromServer::Error {
            kind: ErrorKind::Forbidden,
            message: format!(
                "permission denied: role {} sees only its own jobs, and the event stream is everyone's",
                caller.role
            ),
        }),
        ToServer::GetJob { job }
        | ToServer::Cancel { job }
        | ToServer::Logs { job, .. }
        | ToServer::Wait { job }
        | ToServer::Retry { job } => {
            if sees_all && !is_logs {
                return Ok(None);
            }
            let job = *job;
            // Someone else's job is "not found": its existence is not theirs to know.
            let rec = fetch_job(tx, job, caller).await?;
            if !sees_all && rec.spec.owner != caller.name {
                return Err(FromServer::Error {
                    kind: ErrorKind::NotFound,
                    message: format!("no job {job}"),
                });
            }
            Ok(if is_logs {
                control.redactor(&rec.spec.secrets)
            } else {
                None
            })
        }
        _ => Ok(None),
    }
}

/// A job's record, asked of its shard like any client request.
async fn fetch_job(
    tx: &UnboundedSender<Input>,
    job: JobId,
    caller: &Caller,
) -> Result<JobRecord, FromServer> {
    let (rtx, mut rrx) = unbounded_channel();
    let req = ReqId(next_id());
    tx.send(Input::Client(
        req,
        ToServer::GetJob { job },
        caller.name.clone(),
        rtx,
    ))
    .map_err(|_| internal("the server is shutting down"))?;
    match rrx.recv().await {
        Some((Reply::Msg(FromServer::Job(rec)), _)) => Ok(*rec),
        Some((Reply::Msg(e @ FromServer::Error { .. }), _)) => Err(e),
        _ => Err(internal("cannot read the job")),
    }
}

/// Server-side redaction of a job's output as it is read: one stream per output stream,
/// so a value split across stored chunks is still caught. (The agent already redacted it;
/// this is the second line.)
struct LogRedaction {
    redactor: Option<Redactor>,
    out: Option<RedactStream>,
    err: Option<RedactStream>,
}

impl LogRedaction {
    fn new(redactor: Option<Redactor>) -> Self {
        Self {
            out: redactor.as_ref().map(Redactor::stream),
            err: redactor.as_ref().map(Redactor::stream),
            redactor,
        }
    }

    fn apply(&mut self, chunks: Vec<Chunk>, end: bool) -> Vec<Chunk> {
        if self.redactor.is_none() {
            return chunks;
        }
        let mut res = Vec::with_capacity(chunks.len() + 2);
        for c in chunks {
            let s = match c.stream {
                Stream::Stdout => self.out.as_mut(),
                Stream::Stderr => self.err.as_mut(),
            };
            let Some(s) = s else { continue };
            let mut data = Vec::with_capacity(c.data.len());
            s.push(&c.data, &mut data);
            if !data.is_empty() {
                res.push(Chunk {
                    stream: c.stream,
                    data,
                });
            }
        }
        if end {
            for (stream, s) in [
                (Stream::Stdout, &mut self.out),
                (Stream::Stderr, &mut self.err),
            ] {
                if let Some(s) = s.as_mut() {
                    let mut data = Vec::new();
                    s.finish(&mut data);
                    if !data.is_empty() {
                        res.push(Chunk { stream, data });
                    }
                }
            }
        }
        res
    }
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
