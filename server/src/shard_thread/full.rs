//! The shard loop while the store is full. A batch the store could not take is held and
//! written again (every [`RETRY`]); until then nothing that waits for a commit leaves, so
//! client writes are refused at once ([`refusal`]) instead of waiting behind it, and the
//! answers to reads leave without waiting ([`take_reads`]): they show the shard's memory,
//! which the held batch will make durable. Agents are not acknowledged their output, so
//! they keep it in their spools and stop sending; what still arrives (heartbeats,
//! results) is small.

use std::collections::HashSet;
use std::time::Duration;

use hodei_core::wire::{ErrorKind, FromServer, JobRequest};
use hodei_shards::{Effects, Reply, ReqId, ShardMsg};

use crate::store::Health;

/// How often a held batch is written again while the store is full.
pub(super) const RETRY: Duration = Duration::from_millis(500);

/// Requests answered from memory alone and only once (not followed): their answers may
/// leave before a held batch.
pub(super) fn is_read(body: &JobRequest) -> bool {
    matches!(
        body,
        JobRequest::GetJob { .. }
            | JobRequest::ListJobs { .. }
            | JobRequest::ListWorkers
            | JobRequest::Logs { follow: false, .. }
            | JobRequest::Events { follow: false, .. }
    )
}

/// The answer refusing a client write while the store cannot take it, if it must be
/// refused: new jobs (submits, retries) below the free-space watermark, and any write
/// once the store is full or this shard holds a batch it could not write (`held`, why).
pub(super) fn refusal(body: &JobRequest, health: &Health, held: Option<&str>) -> Option<Reply> {
    let refused = match body {
        JobRequest::Submit { .. } | JobRequest::SubmitWait { .. } | JobRequest::Retry { .. } => {
            health.admit_submit().err()
        }
        JobRequest::Cancel { .. } | JobRequest::DrainWorker { .. } => health.admit_write().err(),
        _ => return None,
    };
    let message = refused.or_else(|| held.map(str::to_owned))?;
    Some(Reply::Msg(FromServer::Error {
        kind: ErrorKind::Internal,
        message,
    }))
}

/// Takes out of `fx` what answers reads: replies to `reads`, and the messages to other
/// shards that carry a read, a listing's part or the answer to a read. Each kind keeps
/// its order.
pub(super) fn take_reads(fx: &mut Effects, reads: &HashSet<ReqId>) -> Effects {
    let (early, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut fx.reply)
        .into_iter()
        .partition(|(req, _, _)| reads.contains(req));
    fx.reply = kept;
    let (shard, kept): (Vec<_>, Vec<_>) =
        std::mem::take(&mut fx.shard)
            .into_iter()
            .partition(|(_, m)| match m {
                ShardMsg::Request { body, .. } => is_read(body),
                ShardMsg::Part { .. } => true,
                ShardMsg::Reply { req, .. } => reads.contains(req),
                _ => false,
            });
    fx.shard = kept;
    Effects {
        reply: early,
        shard,
        ..Effects::default()
    }
}

/// Forgets the reads that `fx`, about to leave, answers for the last time.
pub(super) fn forget_answered(reads: &mut HashSet<ReqId>, fx: &Effects) {
    if reads.is_empty() {
        return;
    }
    for (req, _, last) in &fx.reply {
        if *last {
            reads.remove(req);
        }
    }
    for (_, m) in &fx.shard {
        match m {
            ShardMsg::Reply {
                req, last: true, ..
            }
            | ShardMsg::Part { req, .. } => {
                reads.remove(req);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use hodei_core::ids::JobId;

    use super::*;

    /// Only reads leave early; a write's reply and other shard traffic wait for the batch.
    #[test]
    fn only_reads_leave_early() {
        let job = JobId::new(0, 1, 1);
        let (read, write) = (ReqId(1), ReqId(2));
        let reads: HashSet<ReqId> = [read].into();
        let msg = |m: &str| {
            Reply::Msg(FromServer::Error {
                kind: ErrorKind::Internal,
                message: m.to_owned(),
            })
        };
        let mut fx = Effects::default();
        fx.reply.push((write, msg("w"), true));
        fx.reply.push((read, msg("r"), true));
        fx.shard.push((
            1,
            ShardMsg::Request {
                origin: 0,
                req: read,
                body: JobRequest::GetJob { job },
            },
        ));
        fx.shard.push((
            1,
            ShardMsg::Request {
                origin: 0,
                req: write,
                body: JobRequest::Cancel { job },
            },
        ));
        let early = take_reads(&mut fx, &reads);
        assert_eq!(early.reply.len(), 1);
        assert_eq!(early.reply.first().map(|r| r.0), Some(read));
        assert_eq!(early.shard.len(), 1);
        assert_eq!((fx.reply.len(), fx.shard.len()), (1, 1));
        let mut reads = reads;
        forget_answered(&mut reads, &early);
        assert!(reads.is_empty());
    }

    /// Below the watermark new jobs are refused, a cancel is not; a held batch refuses both.
    #[test]
    fn writes_are_refused_with_the_cause() {
        let health = Health::new(&std::env::temp_dir(), u64::MAX / 2);
        let submit = JobRequest::Submit { specs: Vec::new() };
        let cancel = JobRequest::Cancel {
            job: JobId::new(0, 1, 1),
        };
        let text = |r: Option<Reply>| match r {
            Some(Reply::Msg(FromServer::Error { message, .. })) => message,
            _ => String::new(),
        };
        assert!(text(refusal(&submit, &health, None)).starts_with("store full: "));
        assert!(refusal(&cancel, &health, None).is_none());
        assert_eq!(
            text(refusal(&cancel, &health, Some("store full: held"))),
            "store full: held"
        );
        assert!(refusal(&JobRequest::ListWorkers, &health, Some("x")).is_none());
    }
}
