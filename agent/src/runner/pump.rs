//! The output pump: reads an attempt's stdout and stderr concurrently, masks the job's secrets
//! in each, batches what arrives, spools each batch, then sends it as one event.
//!
//! Backpressure is structural: the pump awaits the bounded events channel between reads, so a
//! slow consumer stops the reading, the pipes fill, and the job blocks in `write`. The same
//! happens when the attempt has spooled its output window ([`Window`]) beyond what the server
//! acknowledged as durable: the pump sends what it batched, then reads nothing until an
//! acknowledgement moves the window. So a server whose store is slower than the job's output
//! (or a server that is down) slows the job instead of growing the spool, the agent's memory
//! or the server's unwritten batch.
//!
//! Redaction comes first, before anything is batched, spooled or sent: each stream has its own
//! [`RedactStream`] (a secret split across reads of one stream is still found; the two streams
//! never mix). A stream holds back only a tail that could be the start of a secret, so output
//! is as prompt as before unless it ends in such a prefix; at EOF (or when the pump gives up on
//! a pipe) the held tail is released. Batches, offsets and the spool are therefore all in
//! redacted bytes. A job without secrets skips this step altogether.
//!
//! Past the job's output limit (`JobSpec::output_limit`, in redacted bytes) the pump keeps
//! reading the pipes, so the job is never blocked by it, but drops what it reads; once the
//! pipes close, one last stderr line says how much was cut
//! (`[hodei: output cut after N bytes; M bytes dropped]`).

use std::io;
use std::time::Duration;

use hodei_auth::{RedactStream, Redactor};
use hodei_core::time::Micros;
use hodei_core::wire::{Chunk, Stream};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{ChildStderr, ChildStdout};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use zeroize::Zeroize;

use super::process::sleep_until;
use super::spool::SpoolWriter;
use super::{RunEventKind, RunnerOptions, Sink};

/// Bytes read from a pipe at once (per stream). A pipe holds 64 KiB; smaller reads keep the
/// per-job memory small and cost only a few more syscalls per batch.
const READ_BUF: usize = 16 * 1024;

/// Once the main process has exited and its group is killed, how long the pump keeps waiting
/// for pipe data. Only a process that escaped the group (e.g. `setsid`) can still hold a pipe
/// open by then; it must not hang the job. Time spent blocked on the events channel does not
/// count, so a slow consumer never cuts off output that is already in the pipes.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// Batching state of one attempt.
pub(super) struct Pump {
    /// Batch size bound ([`RunnerOptions::batch_limit`]).
    max: usize,
    /// Batch age bound, from its first byte.
    interval: Duration,
    spool: SpoolWriter,
    /// Bytes emitted before the current batch.
    offset: u64,
    batch: Vec<Chunk>,
    batch_len: usize,
    /// Arrival of the current batch's first byte.
    batch_since: Option<Instant>,
    /// Masking of the job's secrets; `None` when there is nothing to mask.
    redact: Option<Redaction>,
    /// The job has secrets: its read buffers are wiped after use.
    secrets: bool,
    window: Window,
    /// Output bytes kept; what comes after is dropped.
    limit: u64,
    /// Bytes dropped past `limit`.
    dropped: u64,
}

/// How far an attempt's output may run ahead of the server's acknowledgement.
pub(super) struct Window {
    /// Output bytes the server holds durably, from the attempt's [`super::RunHandle`];
    /// `u64::MAX` once it was let go.
    acked: watch::Receiver<u64>,
    /// Bytes allowed beyond it.
    size: u64,
    /// The handle is gone: nobody acknowledges any more, the window no longer applies.
    released: bool,
}

impl Window {
    pub(super) fn new(acked: watch::Receiver<u64>, size: u64) -> Self {
        Self {
            acked,
            size: size.max(1),
            released: false,
        }
    }

    /// Whether output up to `end` fills the window: nothing more may be read.
    fn full(&self, end: u64) -> bool {
        !self.released && end.saturating_sub(*self.acked.borrow()) >= self.size
    }

    /// Waits until the acknowledgement moves (or the handle is gone); forever once released.
    async fn moved(&mut self) {
        if self.released {
            return std::future::pending().await;
        }
        if self.acked.changed().await.is_err() {
            self.released = true;
        }
    }
}

/// Redaction state of one attempt: one stream state per output, and a reused output buffer.
struct Redaction {
    stdout: RedactStream,
    stderr: RedactStream,
    /// Redacted bytes on their way to the batch (never holds a secret).
    out: Vec<u8>,
}

/// What woke the pump up.
enum Step {
    Read(Stream, io::Result<usize>),
    Flush,
    Exited,
    DrainOver,
    /// The acknowledgement moved: the window may have room again.
    Acked,
}

impl Pump {
    /// `secrets`: the job was given secret values (its raw output may hold them).
    pub(super) fn new(
        opts: &RunnerOptions,
        spool: SpoolWriter,
        redactor: &Redactor,
        secrets: bool,
        window: Window,
        limit: u64,
    ) -> Self {
        let redact = (!redactor.is_empty()).then(|| Redaction {
            stdout: redactor.stream(),
            stderr: redactor.stream(),
            out: Vec::new(),
        });
        Self {
            max: opts.batch_limit(),
            interval: opts.batch_interval,
            spool,
            offset: 0,
            batch: Vec::new(),
            batch_len: 0,
            batch_since: None,
            redact,
            secrets,
            window,
            limit,
            dropped: 0,
        }
    }

    /// Sends `Started`, then pumps until both pipes are closed (or the drain after the exit
    /// runs out) and every byte read has been spooled and sent. Returns why spooling failed,
    /// if it did: the output may then not arrive whole.
    pub(super) async fn run(
        mut self,
        sink: &mut Sink,
        started_at: Micros,
        mut stdout: Option<ChildStdout>,
        mut stderr: Option<ChildStderr>,
        mut exited: oneshot::Receiver<()>,
    ) -> Option<String> {
        sink.send(RunEventKind::Started { at: started_at }).await;
        // Raw output, secrets unmasked: wiped when the pump ends if the job has secrets.
        let mut out_buf = PipeBuf::take(self.secrets);
        let mut err_buf = PipeBuf::take(self.secrets);
        let mut exit_seen = false;
        // Drain time left once the process has exited.
        let mut drain: Option<Duration> = None;
        while stdout.is_some() || stderr.is_some() {
            if self.batch_len >= self.max {
                self.flush(sink).await;
                continue;
            }
            let full = self.window.full(self.offset + self.batch_len as u64);
            if full && self.batch_len > 0 {
                // What is batched goes out now: only its acknowledgement can open the window.
                self.flush(sink).await;
                continue;
            }
            // Never read past the batch bound, so no batch exceeds batch_bytes.
            let room = (self.max - self.batch_len).min(READ_BUF);
            let due = self.batch_since.map(|t| t + self.interval);
            let waiting = Instant::now();
            let step = tokio::select! {
                r = read(&mut stdout, &mut out_buf.buf[..room]), if !full => {
                    Step::Read(Stream::Stdout, r)
                }
                r = read(&mut stderr, &mut err_buf.buf[..room]), if !full => {
                    Step::Read(Stream::Stderr, r)
                }
                () = sleep_until(due) => Step::Flush,
                _ = &mut exited, if !exit_seen => Step::Exited,
                () = self.window.moved(), if full => Step::Acked,
                // Waiting for acknowledgements is not time the pipes were idle: the drain
                // grace runs only while the pump reads.
                () = tokio::time::sleep(drain.unwrap_or_default()), if drain.is_some() && !full => {
                    Step::DrainOver
                }
            };
            if let Some(left) = drain.as_mut()
                && !full
            {
                *left = left.saturating_sub(waiting.elapsed());
            }
            match step {
                Step::Read(Stream::Stdout, Ok(0)) => {
                    stdout = None;
                    self.end(sink, Stream::Stdout).await;
                }
                Step::Read(Stream::Stderr, Ok(0)) => {
                    stderr = None;
                    self.end(sink, Stream::Stderr).await;
                }
                Step::Read(Stream::Stdout, Ok(n)) => {
                    self.take(sink, Stream::Stdout, &out_buf.buf[..n]).await;
                }
                Step::Read(Stream::Stderr, Ok(n)) => {
                    self.take(sink, Stream::Stderr, &err_buf.buf[..n]).await;
                }
                Step::Read(_, Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Step::Read(stream, Err(e)) => {
                    // A pipe read error is not recoverable; treat the stream as ended.
                    tracing::warn!(job = %sink.job, ?stream, error = %e, "cannot read job output");
                    match stream {
                        Stream::Stdout => stdout = None,
                        Stream::Stderr => stderr = None,
                    }
                    self.end(sink, stream).await;
                }
                Step::Flush => self.flush(sink).await,
                Step::Acked => {}
                Step::Exited => {
                    exit_seen = true;
                    drain = Some(DRAIN_GRACE);
                }
                Step::DrainOver => {
                    tracing::warn!(
                        job = %sink.job,
                        "a process outside the job's group still holds its output open; \
                         no longer reading it"
                    );
                    if stdout.is_some() {
                        self.end(sink, Stream::Stdout).await;
                    }
                    if stderr.is_some() {
                        self.end(sink, Stream::Stderr).await;
                    }
                    break;
                }
            }
        }
        if self.dropped > 0 {
            let line = format!(
                "[hodei: output cut after {} bytes; {} bytes dropped]\n",
                self.limit, self.dropped
            );
            self.batch_up(sink, Stream::Stderr, line.as_bytes()).await;
        }
        self.flush(sink).await;
        self.spool.failure().map(str::to_owned)
    }

    /// Takes bytes just read from `stream`: masked first when the job has secrets, then
    /// batched.
    async fn take(&mut self, sink: &mut Sink, stream: Stream, data: &[u8]) {
        let Some(r) = &mut self.redact else {
            self.add(sink, stream, data).await;
            return;
        };
        let mut out = std::mem::take(&mut r.out);
        out.clear();
        r.stream(stream).push(data, &mut out);
        self.add(sink, stream, &out).await;
        if let Some(r) = &mut self.redact {
            r.out = out;
        }
    }

    /// `stream` ended (or the pump gives up on it): what its redaction held back is final now.
    async fn end(&mut self, sink: &mut Sink, stream: Stream) {
        let Some(r) = &mut self.redact else { return };
        let mut out = std::mem::take(&mut r.out);
        out.clear();
        r.stream(stream).finish(&mut out);
        self.add(sink, stream, &out).await;
        if let Some(r) = &mut self.redact {
            r.out = out;
        }
    }

    /// Adds bytes to the batch up to the output limit, and counts the rest as dropped.
    async fn add(&mut self, sink: &mut Sink, stream: Stream, data: &[u8]) {
        let kept = self.offset.saturating_add(self.batch_len as u64);
        let room = usize::try_from(self.limit.saturating_sub(kept)).unwrap_or(usize::MAX);
        let (keep, cut) = data.split_at(room.min(data.len()));
        self.dropped = self.dropped.saturating_add(cut.len() as u64);
        if !keep.is_empty() {
            self.batch_up(sink, stream, keep).await;
        }
    }

    /// Adds bytes to the batch, flushing each time it is full. Reads never exceed the room
    /// left, but masking can hand over more than was read (labels are longer than short
    /// secrets, held-back bytes come out later), and no batch may exceed `batch_bytes`.
    async fn batch_up(&mut self, sink: &mut Sink, stream: Stream, mut data: &[u8]) {
        while !data.is_empty() {
            if self.batch_len >= self.max {
                self.flush(sink).await;
            }
            let (now, rest) = data.split_at((self.max - self.batch_len).min(data.len()));
            self.push(stream, now);
            data = rest;
        }
    }

    /// Adds bytes to the batch, merging with the last chunk when it is of the same stream.
    fn push(&mut self, stream: Stream, data: &[u8]) {
        if self.batch_since.is_none() {
            self.batch_since = Some(Instant::now());
        }
        match self.batch.last_mut() {
            Some(last) if last.stream == stream => last.data.extend_from_slice(data),
            _ => self.batch.push(Chunk {
                stream,
                data: data.to_vec(),
            }),
        }
        self.batch_len += data.len();
    }

    /// Spools the batch, then sends it (blocking while the channel is full).
    async fn flush(&mut self, sink: &mut Sink) {
        if self.batch.is_empty() {
            return;
        }
        let chunks = std::mem::take(&mut self.batch);
        let len = self.batch_len as u64;
        self.batch_len = 0;
        self.batch_since = None;
        // Spool first: whatever the server may have been sent must be replayable.
        self.spool.append(&chunks);
        sink.send(RunEventKind::Output {
            offset: self.offset,
            chunks,
        })
        .await;
        self.offset += len;
    }
}

impl Redaction {
    fn stream(&mut self, stream: Stream) -> &mut RedactStream {
        match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        }
    }
}

/// Read buffers kept for reuse per thread: a fresh zeroed 16 KiB buffer per pipe and attempt
/// (a memset, and page faults on new heap pages) was a visible share of a short job's cost.
const POOLED_BUFS: usize = 64;

thread_local! {
    static BUFS: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A pipe's read buffer (`READ_BUF` bytes) from the thread's pool; back to it on drop,
/// wiped first if it may have held a secret value.
struct PipeBuf {
    buf: Vec<u8>,
    wipe: bool,
}

impl PipeBuf {
    fn take(wipe: bool) -> Self {
        let buf = BUFS
            .try_with(|b| b.borrow_mut().pop())
            .ok()
            .flatten()
            .unwrap_or_else(|| vec![0u8; READ_BUF]);
        Self { buf, wipe }
    }
}

impl Drop for PipeBuf {
    fn drop(&mut self) {
        if self.wipe {
            self.buf.as_mut_slice().zeroize();
        }
        let buf = std::mem::take(&mut self.buf);
        // At thread exit the pool may be gone already: the buffer is then just freed.
        let _ = BUFS.try_with(|b| {
            let mut b = b.borrow_mut();
            if b.len() < POOLED_BUFS {
                b.push(buf);
            }
        });
    }
}

/// Reads from a pipe, or waits forever once it is closed.
async fn read<R: AsyncRead + Unpin>(pipe: &mut Option<R>, buf: &mut [u8]) -> io::Result<usize> {
    match pipe {
        Some(pipe) => pipe.read(buf).await,
        None => std::future::pending().await,
    }
}
