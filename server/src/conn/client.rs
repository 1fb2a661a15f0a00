//! A client's connection (CLI, API): one request per stream, authenticated by its token and
//! checked against the token's role; control requests are answered by the control plane,
//! job requests go to the shard's loop, and their replies are filtered, redacted and paged
//! into frames on the way out.

use std::sync::Arc;

use hodei_auth::redact::{RedactStream, Redactor};
use hodei_core::event::Event;
use hodei_core::frame::MAX_FRAME;
use hodei_core::ids::JobId;
use hodei_core::job::JobRecord;
use hodei_core::wire::{
    Chunk, ControlRequest, ErrorKind, FromServer, JobRequest, Request, Stream, ToServer,
};
use hodei_shards::{Reply, ReqId};
use hodei_transport::{FrameReader, FrameWriter};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, warn};

use super::next_id;
use super::pages::{flush_or_refuse, off_thread, push_paged, scan, send_paged};
use crate::control::{Caller, Control};
use crate::shard_thread::{
    ClientRequest, FootprintAsk, Input, REPLY_BUDGET, ShardFootprint, reply_queue,
};
use crate::stats::footprint_figures;
use crate::store::Store;

/// Serves one client connection: a task per request stream, a bounded number being read.
pub(super) async fn client_conn(
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
    let Request { token, body } = match first {
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
    if let Err(denied) = caller.require(body.permission()) {
        // Not the body: it may hold environment values and scripts.
        warn!(%remote, actor = %caller.name, needs = ?body.permission(), "request denied");
        let _ = w.send(&denied).await;
        let _ = w.finish();
        return;
    }
    let mut body = match body {
        ToServer::Job(body) => body,
        ToServer::Control(body) => {
            // `hodei stats` also tells what the shards hold now.
            let held = match body {
                ControlRequest::Stats { .. } => Some(footprints(&tx).await),
                _ => None,
            };
            let control = Arc::clone(&control);
            let mut replies = off_thread(move |emit| control.handle(&caller, body, emit));
            while let Some(mut reply) = replies.recv().await {
                if let (FromServer::Stats(figures), Some(parts)) = (&mut reply, &held) {
                    figures.extend(footprint_figures(parts));
                }
                if !send_paged(&mut w, reply).await {
                    return;
                }
            }
            let _ = w.finish();
            return;
        }
    };
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
    let (rtx, mut rrx) = reply_queue();
    let request = ClientRequest {
        req,
        body,
        actor: caller.name,
        reply: rtx,
    };
    if tx.send(Input::Client(request)).is_err() {
        let _ = w.send(&internal("the server is shutting down")).await;
        return;
    }
    // A reply taken from the channel while batching, to be handled next.
    let mut carried = None;
    // A client that goes away while its request waits (`wait`, `logs --follow`) is told to
    // the shard at once: what it registered would otherwise stay until its job ends.
    let closed = conn.closed();
    tokio::pin!(closed);
    loop {
        let next = match carried.take() {
            Some(r) => Some(r),
            None => tokio::select! {
                r = rrx.recv() => r,
                _ = &mut closed => {
                    let _ = tx.send(Input::ClientGone(req));
                    return;
                }
            },
        };
        let Some((reply, mut last)) = next else {
            let why = if rrx.overflowed() {
                format!(
                    "this client read its replies too slowly: more than {} MiB of them waited, so the request was dropped",
                    REPLY_BUDGET >> 20
                )
            } else {
                "the server is shutting down".to_owned()
            };
            let _ = w.send(&internal(&why)).await;
            break;
        };
        let ok = match reply {
            Reply::Msg(FromServer::Jobs(mut jobs)) => {
                if let Some(owner) = &only_owner {
                    jobs.retain(|j| j.spec.owner == *owner);
                }
                send_paged(&mut w, FromServer::Jobs(jobs)).await
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
                let mut pushed = push_paged(&mut w, m);
                while pushed.is_ok() && !last && w.has_room() {
                    match rrx.try_recv() {
                        Some((Reply::Msg(m), l)) if is_plain(&m) => {
                            pushed = push_paged(&mut w, m);
                            last = l;
                        }
                        Some(other) => {
                            carried = Some(other);
                            break;
                        }
                        None => break,
                    }
                }
                flush_or_refuse(&mut w, pushed).await
            }
            Reply::StoredEvents {
                shard,
                after,
                upto,
                job,
            } => {
                let store = store.clone();
                let mut pages = off_thread(move |emit| {
                    let blocks = store.event_blocks(shard, after, upto, job);
                    scan(emit, FromServer::Events, "events", blocks, event_size);
                });
                let mut ok = true;
                while ok && let Some(m) = pages.recv().await {
                    let failed = matches!(m, FromServer::Error { .. });
                    ok = send_paged(&mut w, m).await && !failed;
                }
                ok
            }
            Reply::StoredLogs { job, attempt, upto } => {
                let store = store.clone();
                let mut pages = off_thread(move |emit| {
                    let blocks = Ok(store.output_batches(job, attempt, upto));
                    scan(emit, FromServer::Log, "output", blocks, |c| c.data.len());
                });
                let mut ok = true;
                while ok && let Some(m) = pages.recv().await {
                    ok = match m {
                        FromServer::Log(chunks) => {
                            send_logs(&mut w, redact.apply(chunks, false)).await
                        }
                        // An error, the stream's last reply.
                        other => {
                            send_paged(&mut w, other).await;
                            false
                        }
                    };
                }
                ok
            }
        };
        if !ok || last {
            break;
        }
    }
    let _ = w.finish();
}

/// How long `hodei stats` waits for the shards to count what they hold.
const FOOTPRINT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// What every shard holds now, asked through this connection's shard (which asks the
/// others). A shard that has not answered within [`FOOTPRINT_WAIT`] is left out: the
/// figures say how many did.
async fn footprints(tx: &UnboundedSender<Input>) -> Vec<ShardFootprint> {
    let (reply, mut answers) = tokio::sync::mpsc::unbounded_channel();
    let ask = FootprintAsk {
        reply,
        fan_out: true,
    };
    if tx.send(Input::Footprint(ask)).is_err() {
        return Vec::new();
    }
    let deadline = tokio::time::Instant::now() + FOOTPRINT_WAIT;
    let mut parts: Vec<ShardFootprint> = Vec::new();
    while let Ok(Some(part)) = tokio::time::timeout_at(deadline, answers.recv()).await {
        let all = part.shards;
        if !parts.iter().any(|p| p.shard == part.shard) {
            parts.push(part);
        }
        if parts.len() >= all {
            break;
        }
    }
    parts
}

/// About the bytes an event takes in a reply.
fn event_size(ev: &Event) -> usize {
    std::mem::size_of::<Event>()
        + ev.correlation_id.len()
        + ev.reason.as_ref().map_or(0, String::len)
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
    body: &mut JobRequest,
    caller: &Caller,
    control: &Control,
    tx: &UnboundedSender<Input>,
) -> Result<Option<Redactor>, FromServer> {
    let sees_all = caller.role.sees_all_jobs();
    let is_logs = matches!(body, JobRequest::Logs { .. });
    match body {
        JobRequest::Submit { specs } | JobRequest::SubmitWait { specs } => {
            for spec in specs.iter_mut() {
                spec.owner.clone_from(&caller.name);
                // Stored with the spec, so retries and re-attached attempts keep it.
                spec.max_output.get_or_insert(control.max_output);
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
        JobRequest::Events { .. } if !sees_all => Err(FromServer::Error {
            kind: ErrorKind::Forbidden,
            message: format!(
                "permission denied: role {} sees only its own jobs, and the event stream is everyone's",
                caller.role
            ),
        }),
        _ => {
            let Some(job) = body.job() else {
                return Ok(None);
            };
            if sees_all && !is_logs {
                return Ok(None);
            }
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
    }
}

/// A job's record, asked of its shard like any client request.
async fn fetch_job(
    tx: &UnboundedSender<Input>,
    job: JobId,
    caller: &Caller,
) -> Result<JobRecord, FromServer> {
    let (rtx, mut rrx) = reply_queue();
    let req = ReqId(next_id());
    tx.send(Input::Client(ClientRequest {
        req,
        body: JobRequest::GetJob { job },
        actor: caller.name.clone(),
        reply: rtx,
    }))
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
