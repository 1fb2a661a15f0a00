//! Retention's deletions in the store, each one bounded write, called by the background
//! sweeper ([`crate::retention`]), never by a shard thread:
//!
//! - [`Store::sweep_expired`]: the output of jobs the shards deleted (their `expired`
//!   marks, left by the same batch that deleted the record), then the marks.
//! - [`Store::trim_events`]: a shard's event blocks whose last event is older than the
//!   window. Events are numbered per shard, not per job, so they go by age: a job running
//!   longer than the window loses its oldest events while its record stays.
//! - [`Store::trim_audit`]: a chain's blocks whose last record is older than the window,
//!   after checking every record deleted, with a checkpoint in the same batch
//!   ([`super::checkpoint`]). A chain that does not verify is not trimmed: its break stays
//!   for `hodei audit verify` to report.
//!
//! Neither log ever loses its newest block: it is what a restart resumes numbering and
//! chaining from. Deletions are written without an fsync of their own (the next shard
//! commit flushes the journal): a deletion lost to a crash is done again.

use anyhow::{Context, Result, bail};
use fjall::PersistMode;
use hodei_auth::audit::{AuditKey, AuditRecord};
use hodei_core::time::Micros;

use super::Store;
use super::checkpoint::Checkpoint;
use super::keys::{audit_seq, hex};
use super::logs::{decode_audit_into, decode_events};

/// What one sweep of expired output did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Output keys deleted.
    pub output_keys: usize,
    /// Jobs whose output is all gone (marks deleted).
    pub jobs: usize,
    /// It stopped at its budget: call again.
    pub more: bool,
}

/// Most output bytes one sweep reads (fjall reads a value with its key): a job's output
/// can be a gigabyte.
const SWEEP_BYTES: usize = 64 << 20;

impl Store {
    fn deletion_batch(&self) -> super::WriteBatch {
        self.db.batch().durability(Some(PersistMode::Buffer))
    }

    /// Deletes the output of expired jobs, then their marks: at most `budget` keys and
    /// [`SWEEP_BYTES`] of output in one write.
    pub fn sweep_expired(&self, budget: usize) -> Result<Swept> {
        let mut batch = self.deletion_batch();
        let mut s = Swept::default();
        let mut bytes = 0usize;
        'jobs: for kv in self.expired.iter() {
            let (job, _) = kv.into_inner().context("cannot read the expired marks")?;
            for o in self.output.prefix(&job) {
                if s.output_keys + s.jobs >= budget || bytes >= SWEEP_BYTES {
                    s.more = true;
                    break 'jobs;
                }
                let (k, v) = o.into_inner().context("cannot read the output keyspace")?;
                bytes += v.len();
                batch.remove(&self.output, k);
                s.output_keys += 1;
            }
            if s.output_keys + s.jobs >= budget {
                s.more = true;
                break;
            }
            batch.remove(&self.expired, job);
            s.jobs += 1;
        }
        batch.commit().context("cannot delete expired output")?;
        Ok(s)
    }

    /// The shards that have events stored.
    pub fn event_shards(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut from = 0u16;
        while from <= u16::from(u8::MAX) {
            #[allow(clippy::cast_possible_truncation)] // bounded by the loop condition
            let start = [from as u8];
            let Some(kv) = self.events.range(start.to_vec()..).next() else {
                break;
            };
            let (k, _) = kv.into_inner().context("cannot read the events keyspace")?;
            let shard = *k.first().context("empty event key")?;
            out.push(shard);
            from = u16::from(shard) + 1;
        }
        Ok(out)
    }

    /// Deletes up to `budget` of `shard`'s oldest event blocks whose every event is older
    /// than `before`; never the newest block. How many went.
    pub fn trim_events(&self, shard: u8, before: Micros, budget: usize) -> Result<usize> {
        let Some(last) = self.events.prefix([shard]).next_back() else {
            return Ok(0);
        };
        let (last, _) = last
            .into_inner()
            .context("cannot read the events keyspace")?;
        let mut batch = self.deletion_batch();
        let mut n = 0;
        for kv in self.events.prefix([shard]) {
            let (k, v) = kv.into_inner().context("cannot read the events keyspace")?;
            if n >= budget || k >= last {
                break;
            }
            let events = decode_events(&k, &v, 0)
                .with_context(|| format!("corrupt store: event {}", hex(&k)))?;
            if events.last().is_none_or(|e| e.at >= before) {
                break;
            }
            batch.remove(&self.events, k);
            n += 1;
        }
        batch.commit().context("cannot delete old events")?;
        Ok(n)
    }

    /// Deletes up to `budget` of `chain`'s oldest blocks whose every record is older than
    /// `before_ms`, never the newest, once each of their records verifies under `key` from
    /// where the chain starts; a checkpoint after the last one deleted goes in the same
    /// write. How many blocks went. An error if the chain or its checkpoint does not
    /// verify: nothing is deleted then.
    pub fn trim_audit(
        &self,
        chain: u16,
        before_ms: u64,
        now_ms: u64,
        key: &AuditKey,
        budget: usize,
    ) -> Result<usize> {
        let start = match self.audit_checkpoint(chain)? {
            Some(cp) => {
                cp.check(key)
                    .with_context(|| format!("the checkpoint of audit chain {chain}"))?;
                (cp.seq, cp.prev)
            }
            None => (0, [0; 32]),
        };
        let prefix = chain.to_be_bytes();
        let Some(last) = self.audit.prefix(prefix).next_back() else {
            return Ok(0);
        };
        let (last, _) = last
            .into_inner()
            .context("cannot read the audit keyspace")?;
        let (mut next, mut prev) = start;
        let mut batch = self.deletion_batch();
        let mut n = 0;
        for kv in self.audit.prefix(prefix) {
            let (k, v) = kv.into_inner().context("cannot read the audit keyspace")?;
            if n >= budget || k >= last {
                break;
            }
            if audit_seq(&k)? != next {
                bail!("audit chain {chain}: record {next} is missing: not trimming it");
            }
            let mut records: Vec<Result<AuditRecord>> = Vec::new();
            let mut link = prev;
            decode_audit_into(chain, &k, &v, &mut link, &mut records)?;
            let records = records.into_iter().collect::<Result<Vec<_>>>()?;
            let Some(newest) = records.last() else {
                bail!("audit block {} holds no record", hex(&k));
            };
            if newest.at_ms >= before_ms {
                break;
            }
            // What is deleted must verify first: a record edited or a link broken here
            // would be covered by the checkpoint for good.
            for r in &records {
                if r.compute_hash_with(Some(key)) != r.hash {
                    bail!(
                        "audit chain {chain}: record {} does not verify: not trimming it",
                        r.seq
                    );
                }
            }
            next = newest.seq + 1;
            prev = newest.hash;
            batch.remove(&self.audit, k);
            n += 1;
        }
        if n > 0 {
            self.put_checkpoint(
                &mut batch,
                &Checkpoint::seal(chain, next, prev, now_ms, key),
            );
            batch.commit().context("cannot delete old audit records")?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use hodei_auth::audit::{AuditChain, AuditKey};
    use hodei_core::event::{Event, EventKind, Subject};
    use hodei_core::ids::{Attempt, JobId, WorkerId};
    use hodei_core::job::JobRecord;
    use hodei_core::spec::JobSpec;
    use hodei_core::state::WorkerState;
    use hodei_core::wire::{Chunk, Stream};
    use hodei_shards::StoreOp;

    use super::*;
    use crate::store::tests::fresh;

    fn key() -> AuditKey {
        AuditKey::from_bytes(&[5; 32])
    }

    fn out(job: JobId, offset: u64, n: usize) -> StoreOp {
        StoreOp::PutOutput {
            job,
            attempt: Attempt(1),
            offset,
            chunks: vec![Chunk {
                stream: Stream::Stdout,
                data: vec![b'x'; n],
            }],
        }
    }

    /// A deleted job's record goes with the batch and its output with the sweep, in
    /// bounded writes; another job's output stays; a reopen finds neither record nor mark.
    #[test]
    fn a_deleted_jobs_output_is_swept_in_bounded_writes() -> Result<()> {
        let (dir, store) = fresh("sweep")?;
        let (gone, kept) = (JobId::new(0, 1, 1), JobId::new(0, 1, 2));
        let spec = JobSpec::exec("true", &[]);
        let mut ops = vec![
            StoreOp::PutJob(JobRecord::new(gone, spec.clone(), 1)),
            StoreOp::PutJob(JobRecord::new(kept, spec, 1)),
        ];
        ops.extend((0..5).map(|i| out(gone, i * 10, 10)));
        ops.extend((0..2).map(|i| out(kept, i * 10, 10)));
        store.commit(&ops, &[])?;
        store.commit(&[StoreOp::DeleteJob(gone)], &[])?;
        let ids: Vec<_> = store.load_jobs()?.iter().map(|j| j.id).collect();
        assert_eq!(ids, vec![kept], "the record goes with the batch");
        assert_eq!(store.read_output(gone, Attempt(1), 50)?.len(), 5);
        let first = store.sweep_expired(3)?;
        assert_eq!(
            first,
            Swept {
                output_keys: 3,
                jobs: 0,
                more: true
            }
        );
        let second = store.sweep_expired(3)?;
        assert_eq!(
            (second.output_keys, second.jobs, second.more),
            (2, 1, false)
        );
        assert_eq!(store.sweep_expired(3)?, Swept::default());
        assert!(store.read_output(gone, Attempt(1), 50)?.is_empty());
        assert_eq!(store.read_output(kept, Attempt(1), 20)?.len(), 2);
        drop(store);
        let store = Store::open(&dir)?;
        assert_eq!(store.expired.iter().count(), 0);
        assert_eq!(store.load_jobs()?.len(), 1);
        Ok(())
    }

    fn ev(seq: u64, at: Micros) -> StoreOp {
        StoreOp::PutEvent(Event {
            shard: 0,
            seq,
            at,
            subject: Subject::Worker(WorkerId::new(0, 1, 1)),
            correlation_id: String::new(),
            kind: EventKind::Worker {
                state: WorkerState::Ready,
            },
            reason: None,
        })
    }

    /// Blocks whose events are all older than the cut go, oldest first and within the
    /// budget; a block with a newer event stays, and the newest block always does.
    #[test]
    fn old_event_blocks_go_and_the_newest_stays() -> Result<()> {
        let (_dir, store) = fresh("trim-events")?;
        store.commit(&[ev(1, 10), ev(2, 20)], &[])?;
        store.commit(&[ev(3, 30)], &[])?;
        store.commit(&[ev(4, 40), ev(5, 500)], &[])?;
        store.commit(&[ev(6, 60)], &[])?;
        assert_eq!(store.trim_events(0, 300, 1)?, 1);
        assert_eq!(
            store.read_events(0, 0, 6, None)?.first().map(|e| e.seq),
            Some(3)
        );
        assert_eq!(
            store.trim_events(0, 300, 10)?,
            1,
            "the block holding 500 stays"
        );
        assert_eq!(
            store.read_events(0, 0, 6, None)?.first().map(|e| e.seq),
            Some(4)
        );
        assert_eq!(store.trim_events(0, 10_000, 10)?, 1, "not the newest block");
        assert_eq!(store.last_event_seq(0)?, 6);
        assert_eq!(store.read_events(0, 0, 6, None)?.len(), 1);
        assert_eq!(store.event_shards()?, vec![0]);
        Ok(())
    }

    /// Old audit blocks go with a checkpoint, and the chain verifies from it; without the
    /// checkpoint (records deleted by hand) it does not; a chain with an edited record is
    /// not trimmed.
    #[test]
    fn audit_blocks_go_with_a_checkpoint() -> Result<()> {
        let (_dir, store) = fresh("trim-audit")?;
        let mut chain = AuditChain::new(0).keyed(key());
        for at in [10, 20, 30, 5_000] {
            let rs = vec![
                chain.append(at, "cli", "call.submit", "", "", ""),
                chain.append(at, "server", "job.pending", "j0.1.1", "", ""),
            ];
            store.commit(&[], &rs)?;
        }
        assert_eq!(store.trim_audit(0, 1_000, 7_000, &key(), 2)?, 2);
        let cp = store.audit_checkpoint(0)?.context("no checkpoint")?;
        assert_eq!((cp.seq, cp.at_ms()), (4, 7_000));
        cp.check(&key())?;
        let (records, chains) = crate::audit::verify_all(&store, &key())?;
        assert_eq!((records, chains), (4, 1));
        assert_eq!(store.trim_audit(0, 1_000, 8_000, &key(), 2)?, 1);
        assert_eq!(store.audit_checkpoint(0)?.map(|c| c.seq), Some(6));
        assert_eq!(crate::audit::verify_all(&store, &key())?, (2, 1));
        assert_eq!(
            store.trim_audit(0, 1_000_000, 9_000, &key(), 2)?,
            0,
            "the newest stays"
        );
        assert_eq!(store.last_audit(0)?, Some((7, chain.head().1)));
        // Records deleted without a checkpoint: verify names the first one missing.
        let mut b = store.db.batch();
        b.remove(&store.meta, super::super::checkpoint::checkpoint_key(0));
        b.commit()?;
        let err = crate::audit::verify_all(&store, &key())
            .err()
            .context("a chain without its first records verified")?;
        assert!(format!("{err:#}").contains("record 0: missing"), "{err:#}");
        Ok(())
    }

    /// A record edited among those to delete stops the trim: nothing goes, no checkpoint
    /// covers it, and verify still reports it.
    #[test]
    fn an_edited_chain_is_not_trimmed() -> Result<()> {
        let (_dir, store) = fresh("trim-edited")?;
        let mut chain = AuditChain::new(0).keyed(key());
        let mut first = chain.append(10, "cli", "call.submit", "", "", "");
        let second = chain.append(20, "cli", "call.cancel", "", "", "");
        first.detail = "edited".to_owned();
        store.commit(&[], &[first])?;
        store.commit(&[], &[second])?;
        store.commit(
            &[],
            &[chain.append(9_000, "cli", "call.cancel", "", "", "")],
        )?;
        assert!(store.trim_audit(0, 1_000, 9_000, &key(), 10).is_err());
        assert_eq!(store.audit_checkpoint(0)?, None);
        assert!(crate::audit::verify_all(&store, &key()).is_err());
        Ok(())
    }
}

#[cfg(test)]
mod race {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use hodei_auth::audit::{AuditChain, AuditKey};

    use super::*;
    use crate::store::tests::fresh;

    /// `hodei audit verify` while retention trims the same chain: the checkpoint and the
    /// records are read apart, so a trim between them must not be taken for deleted records.
    #[test]
    fn verify_while_the_chain_is_trimmed_passes() -> Result<()> {
        let (_dir, store) = fresh("trim-race")?;
        let key = AuditKey::from_bytes(&[5; 32]);
        let mut chain = AuditChain::new(0).keyed(key.clone());
        for i in 0..600 {
            let r = chain.append(i, "cli", "call.submit", "", "", "");
            store.commit(&[], &[r])?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let trimmer = {
            let (store, key, stop) = (store.clone(), key.clone(), Arc::clone(&stop));
            std::thread::spawn(move || -> Result<()> {
                while !stop.load(Ordering::Relaxed) {
                    if store.trim_audit(0, 10_000, 1, &key, 1)? == 0 {
                        break;
                    }
                }
                Ok(())
            })
        };
        let mut verified = 0;
        while !trimmer.is_finished() {
            crate::audit::verify_all(&store, &key)?;
            verified += 1;
        }
        stop.store(true, Ordering::Relaxed);
        trimmer
            .join()
            .map_err(|_| anyhow::anyhow!("the trimmer panicked"))??;
        assert!(verified > 0);
        assert_eq!(crate::audit::verify_all(&store, &key)?, (1, 1));
        Ok(())
    }
}
