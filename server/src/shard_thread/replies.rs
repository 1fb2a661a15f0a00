//! The queue of one client request's replies, from the shard loop to the request's
//! connection task, bounded by bytes.
//!
//! A client that stops reading (a stalled `logs --follow` of a chatty job) leaves its
//! replies queued behind QUIC flow control. The shard never waits for a client, so the
//! queue refuses a reply once [`BUDGET`] bytes wait: the request is then dropped like a
//! client that went away, and its task tells the client why. Bytes rather than messages:
//! ten thousand small results of one `submit --wait` ending in one turn are fine, a
//! gigabyte of unread output is not.
//!
//! A request's last reply is always queued: it ends the request, so it is one message the
//! size of what the shard holds (a listing of every job), queued once, and never followed
//! by more. Only a stream's replies can grow without end, and they are what the budget
//! bounds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use hodei_core::wire::FromServer;
use hodei_shards::Reply;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

/// Reply bytes that may wait for one request's client.
pub const BUDGET: usize = 64 << 20;

#[derive(Debug, Default)]
struct Shared {
    queued: AtomicUsize,
    overflowed: AtomicBool,
}

/// The shard's end.
#[derive(Debug, Clone)]
pub struct ReplySender {
    tx: UnboundedSender<(Reply, bool, usize)>,
    shared: Arc<Shared>,
}

/// The connection task's end.
#[derive(Debug)]
pub struct ReplyReceiver {
    rx: UnboundedReceiver<(Reply, bool, usize)>,
    shared: Arc<Shared>,
}

/// A new reply queue.
#[must_use]
pub fn reply_queue() -> (ReplySender, ReplyReceiver) {
    let (tx, rx) = unbounded_channel();
    let shared = Arc::new(Shared::default());
    (
        ReplySender {
            tx,
            shared: Arc::clone(&shared),
        },
        ReplyReceiver { rx, shared },
    )
}

impl ReplySender {
    /// Queues a reply (`last`: the request is done). An error means the client is gone, or
    /// is too far behind and has been cut off: drop the request.
    pub fn send(&self, reply: Reply, last: bool) -> Result<(), ()> {
        let size = size_of(&reply);
        let before = self.shared.queued.fetch_add(size, Ordering::Relaxed);
        if !last && before.saturating_add(size) > BUDGET {
            if !self.shared.overflowed.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "client cut off: more than {} MiB of its replies waited for it to read them",
                    BUDGET >> 20
                );
            }
            return Err(());
        }
        self.tx.send((reply, last, size)).map_err(|_| ())
    }
}

impl ReplyReceiver {
    /// The next reply and whether it is the last; `None` when the shard dropped the request.
    pub async fn recv(&mut self) -> Option<(Reply, bool)> {
        let (reply, last, size) = self.rx.recv().await?;
        self.shared.queued.fetch_sub(size, Ordering::Relaxed);
        Some((reply, last))
    }

    /// A reply already queued, without waiting.
    pub fn try_recv(&mut self) -> Option<(Reply, bool)> {
        let (reply, last, size) = self.rx.try_recv().ok()?;
        self.shared.queued.fetch_sub(size, Ordering::Relaxed);
        Some((reply, last))
    }

    /// Whether the request was cut off for reading too slowly (else the server stopped).
    #[must_use]
    pub fn overflowed(&self) -> bool {
        self.shared.overflowed.load(Ordering::Relaxed)
    }
}

/// About the bytes a reply holds: its output, or a fixed guess per record.
fn size_of(reply: &Reply) -> usize {
    const RECORD: usize = 512;
    match reply {
        Reply::Msg(FromServer::Log(chunks)) => chunks
            .iter()
            .fold(RECORD, |n, c| n.saturating_add(c.data.len())),
        Reply::Msg(FromServer::Jobs(v)) => RECORD.saturating_mul(v.len().max(1)),
        Reply::Msg(FromServer::Events(v)) => RECORD.saturating_mul(v.len().max(1)),
        Reply::Msg(FromServer::Workers(v)) => RECORD.saturating_mul(v.len().max(1)),
        _ => RECORD,
    }
}

#[cfg(test)]
mod tests {
    use hodei_core::wire::{Chunk, Stream};

    use super::*;

    fn log(bytes: usize) -> Reply {
        Reply::Msg(FromServer::Log(vec![Chunk {
            stream: Stream::Stdout,
            data: vec![b'x'; bytes],
        }]))
    }

    /// A client that does not read is cut off at the budget, and its end says why; one that
    /// reads is never cut off, whatever it is sent in all.
    #[test]
    fn a_client_that_does_not_read_is_cut_off_at_the_budget() {
        let (tx, rx) = reply_queue();
        let mut sent = 0usize;
        while tx.send(log(1 << 20), false).is_ok() {
            sent += 1;
            assert!(sent <= BUDGET >> 20, "{sent} MiB queued");
        }
        assert!(sent >= (BUDGET >> 20) - 1, "{sent}");
        assert!(rx.overflowed());

        let (tx, mut rx) = reply_queue();
        for _ in 0..4 * (BUDGET >> 20) {
            assert!(tx.send(log(1 << 20), false).is_ok());
            assert!(rx.try_recv().is_some());
        }
        assert!(!rx.overflowed());
    }

    /// A listing larger than the budget is one last reply: it is queued whole, even behind
    /// other replies.
    #[test]
    fn a_last_reply_over_the_budget_is_queued() {
        let (tx, _rx) = reply_queue();
        assert!(
            tx.send(log(2 * BUDGET), false).is_err(),
            "a stream's reply is bounded"
        );

        let (tx, mut rx) = reply_queue();
        assert!(tx.send(log(BUDGET / 2), false).is_ok());
        assert!(tx.send(log(2 * BUDGET), true).is_ok());
        assert!(!rx.overflowed());
        assert!(rx.try_recv().is_some_and(|(_, last)| !last));
        assert!(rx.try_recv().is_some_and(|(_, last)| last));
    }
}
