//! Replies on their way to a client: paged into frames by size, and long reads run off the
//! shard thread.
//!
//! - [`send_paged`] and [`push_paged`]: a list reply too large for one frame is split until each part fits;
//!   a single record that cannot fit on its own becomes an error the client sees, never a
//!   stream that ends early and looks complete.
//! - [`off_thread`]: a store scan or a control-plane write (fsync, signing) runs on the
//!   runtime's blocking pool, never on the shard thread, and hands its replies back through
//!   a small bounded channel, so a long read streams page by page and holds at most
//!   [`PAGES_IN_FLIGHT`] pages whatever its length.

use hodei_core::frame::{FrameError, MAX_FRAME};
use hodei_core::wire::{ErrorKind, FromServer};
use hodei_transport::{FrameWriter, TransportError};
use tokio::sync::mpsc;

/// Bytes of records gathered into one page by a scan (well inside a frame, so a page is
/// split only when its records are unusually large).
pub(crate) const PAGE_BYTES: usize = 1 << 20;

/// Pages a scan may have read ahead of the client.
const PAGES_IN_FLIGHT: usize = 4;

/// Sends `m`, split into as many frames as it needs, and flushes. False when the stream is
/// over: the client went away, or the reply could not be sent (then the client was told
/// why, in an error frame).
pub(super) async fn send_paged(w: &mut FrameWriter, m: FromServer) -> bool {
    let pushed = push_paged(w, m);
    flush_or_refuse(w, pushed).await
}

/// Flushes what was pushed; if a push failed (`pushed` says why), the client is told in an
/// error frame after what was pushed before it, and the stream is over (false).
pub(super) async fn flush_or_refuse(w: &mut FrameWriter, pushed: Result<(), String>) -> bool {
    match pushed {
        Ok(()) => w.flush().await.is_ok(),
        Err(why) => {
            tracing::warn!("reply refused: {why}");
            let error = FromServer::Error {
                kind: ErrorKind::Internal,
                message: why,
            };
            let _ = w.push(&error);
            let _ = w.flush().await;
            false
        }
    }
}

/// Pushes `m` without flushing, halving a list that does not fit in a frame.
pub(super) fn push_paged(w: &mut FrameWriter, m: FromServer) -> Result<(), String> {
    match w.push(&m) {
        Ok(()) => Ok(()),
        Err(TransportError::Frame(FrameError::TooLarge { len })) => match halves(m) {
            Some((a, b)) => {
                push_paged(w, a)?;
                push_paged(w, b)
            }
            None => Err(format!(
                "a reply record of {len} bytes is larger than a frame ({MAX_FRAME} bytes)"
            )),
        },
        Err(e) => Err(format!("cannot encode a reply: {e}")),
    }
}

/// A list reply of two or more records, in two halves of the same kind.
fn halves(m: FromServer) -> Option<(FromServer, FromServer)> {
    macro_rules! split {
        ($($kind:ident),*) => {
            match m {
                $(FromServer::$kind(mut v) if v.len() > 1 => {
                    let b = v.split_off(v.len() / 2);
                    Some((FromServer::$kind(v), FromServer::$kind(b)))
                })*
                _ => None,
            }
        };
    }
    split!(
        Jobs,
        Workers,
        Log,
        Events,
        Tokens,
        Secrets,
        AuditRecords,
        Stats
    )
}

/// Runs `read` on the blocking pool; what it emits arrives on the receiver, which ends when
/// `read` returns. `read`'s emitter returns false once the receiver is gone: the scan
/// should stop.
pub(super) fn off_thread<F>(read: F) -> mpsc::Receiver<FromServer>
where
    F: FnOnce(&mut dyn FnMut(FromServer) -> bool) + Send + 'static,
{
    let (tx, rx) = mpsc::channel(PAGES_IN_FLIGHT);
    tokio::task::spawn_blocking(move || {
        let mut emit = |m: FromServer| tx.blocking_send(m).is_ok();
        read(&mut emit);
    });
    rx
}

/// Gathers records into pages of about [`PAGE_BYTES`] and emits each as `wrap(page)`.
pub(crate) struct Pager<'a, T> {
    page: Vec<T>,
    bytes: usize,
    wrap: fn(Vec<T>) -> FromServer,
    emit: &'a mut dyn FnMut(FromServer) -> bool,
}

impl<'a, T> Pager<'a, T> {
    pub(crate) fn new(
        wrap: fn(Vec<T>) -> FromServer,
        emit: &'a mut dyn FnMut(FromServer) -> bool,
    ) -> Self {
        Self {
            page: Vec::new(),
            bytes: 0,
            wrap,
            emit,
        }
    }

    /// Adds a record of about `size` bytes; false once the receiver is gone.
    pub(crate) fn push(&mut self, record: T, size: usize) -> bool {
        self.page.push(record);
        self.bytes = self.bytes.saturating_add(size);
        self.bytes < PAGE_BYTES || self.flush()
    }

    /// Emits the page gathered so far (if any); false once the receiver is gone.
    pub(crate) fn flush(&mut self) -> bool {
        if self.page.is_empty() {
            return true;
        }
        self.bytes = 0;
        (self.emit)((self.wrap)(std::mem::take(&mut self.page)))
    }
}

/// Streams the records of a store scan (`blocks`, as stored) in pages of `wrap`; a read
/// error ends the stream with an error reply naming `what`. Stops when the client is gone.
pub(super) fn scan<T, I>(
    emit: &mut dyn FnMut(FromServer) -> bool,
    wrap: fn(Vec<T>) -> FromServer,
    what: &str,
    blocks: anyhow::Result<I>,
    size: fn(&T) -> usize,
) where
    I: Iterator<Item = anyhow::Result<Vec<T>>>,
{
    let failed = |e: anyhow::Error| FromServer::Error {
        kind: ErrorKind::Internal,
        message: format!("cannot read {what}: {e:#}"),
    };
    let mut pager = Pager::new(wrap, emit);
    let blocks = match blocks {
        Ok(b) => b,
        Err(e) => {
            (pager.emit)(failed(e));
            return;
        }
    };
    for block in blocks {
        match block {
            Ok(records) => {
                for r in records {
                    let n = size(&r);
                    if !pager.push(r, n) {
                        return;
                    }
                }
            }
            Err(e) => {
                // What was read before the damage is sent first; the error is the last reply.
                if pager.flush() {
                    (pager.emit)(failed(e));
                }
                return;
            }
        }
    }
    pager.flush();
}
