//! Group commit. [`Store::commit`] writes one shard batch (job records, output, events and the
//! audit records of them) as one durable write with one `fdatasync`. A [`Committer`] runs a
//! shard's batches one at a time on a blocking thread, so the shard goes on handling inputs
//! into the next batch while one is being written: under load batches grow instead of
//! fsyncs queueing. Whoever holds the messages of a batch releases them only when
//! [`Committer::finished`] returns it: nothing leaves before what it depends on is on disk.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hodei_auth::audit::AuditRecord;
use hodei_core::event_codec;
use hodei_core::frame::Wire;
use hodei_core::ids::{JobId, WorkerId};
use hodei_shards::StoreOp;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Store;
use super::jobs::encode_chunks;
use super::keys::{event_key, output_key};
use super::logs::Blocks;

/// What one commit of a shard writes.
#[derive(Debug, Default)]
pub struct Batch {
    /// The shard's writes.
    pub ops: Vec<StoreOp>,
    /// The audit records of its changes.
    pub audit: Vec<AuditRecord>,
    /// Workers welcomed in it, with the identity each belongs to.
    pub workers: Vec<(WorkerId, String)>,
}

impl Batch {
    /// Whether it writes nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.audit.is_empty() && self.workers.is_empty()
    }
}

impl Store {
    /// Writes a batch durably (one fdatasync), with the audit records of its changes.
    pub fn commit(&self, ops: &[StoreOp], audit: &[AuditRecord]) -> Result<()> {
        self.write(ops, audit, &[])
    }

    /// Writes all of `b` durably, as one batch.
    pub fn commit_batch(&self, b: &Batch) -> Result<()> {
        self.write(&b.ops, &b.audit, &b.workers)
    }

    fn write(
        &self,
        ops: &[StoreOp],
        audit: &[AuditRecord],
        workers: &[(WorkerId, String)],
    ) -> Result<()> {
        if ops.is_empty() && audit.is_empty() && workers.is_empty() {
            return Ok(());
        }
        let mut batch = self.audited_batch(audit);
        self.put_workers(&mut batch, workers);
        // A job changed several times in one batch (submitted and assigned in one turn;
        // started and finished under load) needs only its last record: the batch is atomic,
        // so the earlier ones would be overwritten before anyone could read them. Skipping
        // them saves an encoding of the whole spec and a memtable insert each. A deletion
        // counts as a write of the record: whichever comes last stands.
        let mut last_put: HashMap<JobId, usize> = HashMap::new();
        for (i, op) in ops.iter().enumerate() {
            match op {
                StoreOp::PutJob(rec) => last_put.insert(rec.id, i),
                StoreOp::DeleteJob(id) => last_put.insert(*id, i),
                _ => None,
            };
        }
        // One encoding buffer for the batch: fjall copies each value into its own buffer.
        let mut buf = Vec::new();
        let mut events = Blocks::new();
        for (i, op) in ops.iter().enumerate() {
            match op {
                StoreOp::PutJob(rec) => {
                    if last_put.get(&rec.id) != Some(&i) {
                        continue;
                    }
                    buf.clear();
                    rec.encode_into(&mut buf)
                        .context("cannot encode a job record")?;
                    batch.insert(&self.jobs, &rec.id.to_be_bytes()[..], &buf[..]);
                }
                StoreOp::PutEvent(ev) => {
                    events.push(ev.shard, ev.seq, |out| event_codec::encode(ev, out));
                }
                StoreOp::DeleteJob(id) => {
                    if last_put.get(id) != Some(&i) {
                        continue;
                    }
                    // The record goes with the batch; its output is deleted later, off the
                    // shard thread, from the `expired` mark (`retention.rs`), which the
                    // same atomic write leaves so that a crash cannot orphan it.
                    let key = id.to_be_bytes();
                    batch.remove(&self.jobs, &key[..]);
                    batch.insert(&self.expired, &key[..], &[][..]);
                }
                StoreOp::PutOutput {
                    job,
                    attempt,
                    offset,
                    chunks,
                } => {
                    batch.insert(
                        &self.output,
                        &output_key(*job, *attempt, *offset)[..],
                        encode_chunks(chunks),
                    );
                }
            }
        }
        for (shard, first, bytes) in events.finish() {
            batch.insert(&self.events, &event_key(shard, first)[..], bytes);
        }
        batch.commit().context("store commit failed")
    }
}

/// A shard's commit pipeline: at most one batch in flight, batches in the order started,
/// and (with an interval) starts at least that far apart, so that under sustained load
/// there are fewer, larger commits. `M` is what waits for a batch: the messages it releases.
///
/// A batch the store could not take for lack of room ([`StoreFull`](super::StoreFull)) is
/// not dropped: the shard already applied its changes in memory, so it is *held* and
/// written again ([`retry`](Self::retry)) before any later batch, and its messages leave
/// only once it is on disk.
pub struct Committer<M> {
    store: Store,
    interval: Duration,
    next_start: Instant,
    in_flight: Option<InFlight<M>>,
    held: Option<Held<M>>,
}

/// A batch being written, and what waits for it.
struct InFlight<M> {
    task: JoinHandle<Result<Duration>>,
    /// Its writes (shared with the task): read to tell whether a read depends on them.
    batch: Arc<Batch>,
    msgs: M,
}

/// A batch the store refused for lack of room, and what waits for it.
struct Held<M> {
    batch: Arc<Batch>,
    msgs: M,
}

/// A batch that is on disk.
#[derive(Debug)]
pub struct Committed<M> {
    /// What it wrote.
    pub batch: Arc<Batch>,
    /// What waited for it, to be released now.
    pub msgs: M,
    /// How long the write took (everything the batch answers waited that long).
    pub took: Duration,
}

/// How the batch in flight ended, short of a fatal error.
#[derive(Debug)]
pub enum Outcome<M> {
    /// On disk: release what waited for it.
    Committed(Committed<M>),
    /// The store is full: the batch is held, to be written again; why, as refusals say it.
    Held(String),
}

impl<M> Committer<M> {
    /// A pipeline writing to `store`, starting batches at least `interval` apart.
    #[must_use]
    pub fn new(store: Store, interval: Duration) -> Self {
        Self {
            store,
            interval,
            next_start: Instant::now(),
            in_flight: None,
            held: None,
        }
    }

    /// Whether a batch is being written.
    #[must_use]
    pub fn busy(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Whether a batch waits to be written again (the store was full): no later batch
    /// may start, and nothing that waits for a commit may leave, until it is on disk.
    #[must_use]
    pub fn held(&self) -> bool {
        self.held.is_some()
    }

    /// The messages of the batch held or being written (a read's answer may leave before
    /// them while the store is full).
    pub fn waiting_msgs(&mut self) -> Option<&mut M> {
        match (&mut self.held, &mut self.in_flight) {
            (Some(h), _) => Some(&mut h.msgs),
            (None, Some(f)) => Some(&mut f.msgs),
            (None, None) => None,
        }
    }

    /// The earliest time the next batch may start: `interval` after the last one started.
    #[must_use]
    pub fn next_start(&self) -> Instant {
        self.next_start
    }

    /// Starts writing a batch on a blocking thread; call only when neither
    /// [`busy`](Self::busy) nor [`held`](Self::held). A batch started then would break the
    /// order, so it is refused by handing all of it back.
    pub fn start(&mut self, batch: Batch, msgs: M) -> Result<(), (Batch, M)> {
        if self.in_flight.is_some() || self.held.is_some() {
            return Err((batch, msgs));
        }
        self.spawn(Arc::new(batch), msgs);
        Ok(())
    }

    /// Writes the held batch again; false if there is none, or one is in flight.
    pub fn retry(&mut self) -> bool {
        if self.in_flight.is_some() {
            return false;
        }
        let Some(Held { batch, msgs }) = self.held.take() else {
            return false;
        };
        self.spawn(batch, msgs);
        true
    }

    fn spawn(&mut self, batch: Arc<Batch>, msgs: M) {
        self.next_start = Instant::now() + self.interval;
        let store = self.store.clone();
        let written = Arc::clone(&batch);
        let task = tokio::task::spawn_blocking(move || {
            let t = std::time::Instant::now();
            store.commit_batch(&written)?;
            Ok(t.elapsed())
        });
        self.in_flight = Some(InFlight { task, batch, msgs });
    }

    /// Waits for the batch in flight to end and says how; never returns while none is in
    /// flight. Cancel-safe: dropped before it returns, the batch stays in flight. An error
    /// is fatal: nothing of the batch may be released.
    pub async fn finished(&mut self) -> Result<Outcome<M>> {
        let Some(f) = self.in_flight.as_mut() else {
            return std::future::pending().await;
        };
        let r = (&mut f.task).await;
        let f = self
            .in_flight
            .take()
            .context("the batch in flight went missing")?;
        match r {
            Ok(Ok(took)) => Ok(Outcome::Committed(Committed {
                batch: f.batch,
                msgs: f.msgs,
                took,
            })),
            Ok(Err(e)) if super::is_full(&e) => {
                let why = self.store.health().refusal();
                tracing::debug!("batch held: {e:#}");
                self.held = Some(Held {
                    batch: f.batch,
                    msgs: f.msgs,
                });
                Ok(Outcome::Held(why))
            }
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow::anyhow!("store commit task failed: {e}")),
        }
    }

    /// The writes of the batch in flight or held: not on disk yet.
    pub fn unwritten(&self) -> impl Iterator<Item = &StoreOp> {
        let flying = self.in_flight.iter().flat_map(|f| f.batch.ops.iter());
        flying.chain(self.held.iter().flat_map(|h| h.batch.ops.iter()))
    }
}

#[cfg(test)]
mod tests {
    use std::task::{Context as TaskContext, Waker};

    use hodei_core::job::JobRecord;
    use hodei_core::spec::JobSpec;

    use super::*;
    use crate::store::tests::fresh;

    fn runtime() -> Result<tokio::runtime::Runtime> {
        Ok(tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?)
    }

    fn ops(ops: Vec<StoreOp>) -> Batch {
        Batch {
            ops,
            ..Batch::default()
        }
    }

    fn put(seq: u64) -> StoreOp {
        StoreOp::PutJob(JobRecord::new(
            JobId::new(0, 1, seq),
            JobSpec::exec("true", &[]),
            seq,
        ))
    }

    /// A batch's writes count as unwritten until `finished` hands its messages back, and
    /// then they are on disk: a reopened store has them.
    #[test]
    fn a_batch_is_released_only_once_durable() -> Result<()> {
        let (dir, store) = fresh("committer")?;
        let mut c = Committer::new(store, Duration::ZERO);
        runtime()?.block_on(async {
            assert!(c.start(ops(vec![put(1), put(2)]), "msgs").is_ok());
            assert!(c.busy());
            assert_eq!(c.unwritten().count(), 2);
            // A second batch while one is in flight is handed back whole, not started.
            let Err((back, msgs)) = c.start(ops(vec![put(3)]), "second") else {
                panic!("a second batch started while one was in flight");
            };
            assert_eq!((back.ops.len(), msgs), (1, "second"));
            let Outcome::Committed(done) = c.finished().await? else {
                panic!("a batch on a roomy disk was held");
            };
            assert_eq!((done.msgs, done.batch.ops.len()), ("msgs", 2));
            assert!(!c.busy());
            assert_eq!(c.unwritten().count(), 0);
            Ok::<_, anyhow::Error>(())
        })?;
        drop(c);
        let store = Store::open(&dir)?;
        let mut ids: Vec<_> = store.load_jobs()?.iter().map(|j| j.id).collect();
        ids.sort();
        assert_eq!(ids, vec![JobId::new(0, 1, 1), JobId::new(0, 1, 2)]);
        Ok(())
    }

    /// With an interval, the next batch may start no sooner than that after the last one
    /// started; without one, at once.
    #[test]
    fn the_interval_spaces_starts() -> Result<()> {
        let (_dir, store) = fresh("committer-interval")?;
        runtime()?.block_on(async {
            let mut spaced = Committer::new(store.clone(), Duration::from_millis(40));
            let before = Instant::now();
            assert!(
                spaced.next_start() <= before,
                "the first batch waits for nothing"
            );
            assert!(spaced.start(ops(vec![put(1)]), ()).is_ok());
            assert!(spaced.next_start() >= before + Duration::from_millis(40));
            spaced.finished().await?;
            let mut eager = Committer::new(store, Duration::ZERO);
            assert!(eager.start(ops(vec![put(2)]), ()).is_ok());
            assert!(eager.next_start() <= Instant::now());
            eager.finished().await?;
            Ok(())
        })
    }

    /// With nothing in flight, `finished` never returns (a shard's loop selects on it).
    #[test]
    fn finished_waits_while_idle() -> Result<()> {
        let (_dir, store) = fresh("committer-idle")?;
        let mut c: Committer<()> = Committer::new(store, Duration::ZERO);
        let rt = runtime()?;
        let _guard = rt.enter();
        let mut f = std::pin::pin!(c.finished());
        let mut cx = TaskContext::from_waker(Waker::noop());
        for _ in 0..3 {
            assert!(f.as_mut().poll(&mut cx).is_pending());
        }
        Ok(())
    }
}
