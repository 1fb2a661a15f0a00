//! The `jobs` keyspace (job id → framed [`JobRecord`]) and the `output` keyspace (job id |
//! attempt | offset → the chunks of one output batch). A job's record is not rewritten for
//! each output batch: its `output_end` is read back from the output keys when it loads.

use anyhow::{Context, Result, bail};
use hodei_core::frame::{Wire, split_frame};
use hodei_core::ids::{Attempt, JobId};
use hodei_core::job::JobRecord;
use hodei_core::wire::{Chunk, Stream};

use super::Store;
use super::keys::{hex, output_offset, output_prefix};

/// Output chunks as stored: `stream:u8 | len:u32 LE | bytes`, repeated.
pub(super) fn encode_chunks(chunks: &[Chunk]) -> Vec<u8> {
    let mut v = Vec::with_capacity(chunks.iter().map(|c| c.data.len() + 5).sum());
    for c in chunks {
        v.push(match c.stream {
            Stream::Stdout => 1,
            Stream::Stderr => 2,
        });
        #[allow(clippy::cast_possible_truncation)] // a batch is far below 4 GiB
        v.extend_from_slice(&(c.data.len() as u32).to_le_bytes());
        v.extend_from_slice(&c.data);
    }
    v
}

pub(super) fn decode_chunks(mut b: &[u8]) -> Result<Vec<Chunk>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let (&tag, rest) = b.split_first().context("corrupt output record")?;
        let stream = match tag {
            1 => Stream::Stdout,
            2 => Stream::Stderr,
            t => bail!("corrupt output record: stream tag {t}"),
        };
        let len_bytes: [u8; 4] = rest
            .get(..4)
            .and_then(|s| s.try_into().ok())
            .context("corrupt output record: short header")?;
        let len = u32::from_le_bytes(len_bytes) as usize;
        let data = rest
            .get(4..4 + len)
            .context("corrupt output record: short data")?;
        out.push(Chunk {
            stream,
            data: data.to_vec(),
        });
        b = &rest[4 + len..];
    }
    Ok(out)
}

pub(super) fn decode_record(v: &[u8]) -> Result<JobRecord> {
    let (payload, _) = split_frame(v)?.context("truncated record")?;
    Ok(JobRecord::decode(payload)?)
}

impl Store {
    /// Every stored job. Jobs that were on a worker get their `output_end` from the output
    /// keyspace (it is not rewritten on every output batch).
    pub fn load_jobs(&self) -> Result<Vec<JobRecord>> {
        let mut jobs = Vec::new();
        for kv in self.jobs.iter() {
            let (k, v) = kv.into_inner().context("cannot read the jobs keyspace")?;
            let mut rec = decode_record(&v)
                .with_context(|| format!("corrupt store: job record {}", hex(&k)))?;
            if rec.state.is_on_worker() {
                rec.output_end = self.output_end(rec.id, rec.attempt)?;
            }
            jobs.push(rec);
        }
        Ok(jobs)
    }

    fn output_end(&self, job: JobId, attempt: Attempt) -> Result<u64> {
        let Some(kv) = self.output.prefix(output_prefix(job, attempt)).next_back() else {
            return Ok(0);
        };
        let (k, v) = kv.into_inner().context("cannot read the output keyspace")?;
        // Offsets and lengths come from disk: a damaged record is an error, not an overflow.
        decode_chunks(&v)?
            .iter()
            .try_fold(output_offset(&k)?, |end, c| {
                end.checked_add(c.data.len() as u64)
            })
            .context("corrupt store: an output record ends past 2^64")
    }

    /// Stored output of an attempt below `upto`, in order.
    pub fn read_output(&self, job: JobId, attempt: Attempt, upto: u64) -> Result<Vec<Chunk>> {
        let mut out = Vec::new();
        for batch in self.output_batches(job, attempt, upto) {
            out.extend(batch?);
        }
        Ok(out)
    }

    /// The stored output batches of an attempt below offset `upto`, one per stored key, read
    /// lazily: a long output is streamed page by page, never held whole.
    pub fn output_batches(
        &self,
        job: JobId,
        attempt: Attempt,
        upto: u64,
    ) -> impl Iterator<Item = Result<Vec<Chunk>>> + '_ {
        self.output
            .prefix(output_prefix(job, attempt))
            .map(|kv| {
                let (k, v) = kv.into_inner().context("cannot read the output keyspace")?;
                Ok((output_offset(&k)?, v))
            })
            .take_while(move |r| r.as_ref().map_or(true, |(offset, _)| *offset < upto))
            .map(|r| r.and_then(|(_, v)| decode_chunks(&v)))
    }
}

#[cfg(test)]
mod tests {
    use hodei_shards::StoreOp;

    use super::*;
    use crate::store::tests::fresh;

    #[test]
    fn round_trip_and_output_end() -> Result<()> {
        let (dir, store) = fresh("rt")?;
        assert_eq!(store.next_epoch()?, 1);
        let mut rec = JobRecord::new(
            JobId::new(0, 1, 1),
            hodei_core::spec::JobSpec::exec("true", &[]),
            5,
        );
        rec.state = hodei_core::state::JobState::Running;
        rec.attempt = Attempt(1);
        let chunk = |s: &str| Chunk {
            stream: Stream::Stdout,
            data: s.as_bytes().to_vec(),
        };
        store.commit(
            &[
                StoreOp::PutJob(rec.clone()),
                StoreOp::PutOutput {
                    job: rec.id,
                    attempt: Attempt(1),
                    offset: 0,
                    chunks: vec![chunk("hello ")],
                },
                StoreOp::PutOutput {
                    job: rec.id,
                    attempt: Attempt(1),
                    offset: 6,
                    chunks: vec![chunk("world")],
                },
            ],
            &[],
        )?;
        drop(store);
        let store = Store::open(&dir)?;
        assert_eq!(store.next_epoch()?, 2);
        let jobs = store.load_jobs()?;
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].output_end, 11);
        let out: Vec<u8> = store
            .read_output(rec.id, Attempt(1), 11)?
            .into_iter()
            .flat_map(|c| c.data)
            .collect();
        assert_eq!(out, b"hello world");
        assert_eq!(store.read_output(rec.id, Attempt(1), 6)?.len(), 1);
        Ok(())
    }

    /// Only a job's last record of a batch is written, and it is the one that survives a
    /// reopen, whatever else the batch holds between its versions.
    #[test]
    fn a_batch_keeps_each_jobs_last_record() -> Result<()> {
        use hodei_core::state::JobState;
        let (dir, store) = fresh("last")?;
        let spec = hodei_core::spec::JobSpec::exec("true", &[]);
        let a = JobRecord::new(JobId::new(0, 1, 1), spec.clone(), 5);
        let b = JobRecord::new(JobId::new(0, 1, 2), spec, 5);
        let with = |r: &JobRecord, state, attempt| {
            let mut r = r.clone();
            r.state = state;
            r.attempt = Attempt(attempt);
            StoreOp::PutJob(r)
        };
        store.commit(
            &[
                with(&a, JobState::Pending, 0),
                with(&b, JobState::Pending, 0),
                with(&a, JobState::Assigned, 1),
                with(&b, JobState::Assigned, 1),
                with(&a, JobState::Succeeded, 1),
            ],
            &[],
        )?;
        drop(store);
        let store = Store::open(&dir)?;
        let mut jobs = store.load_jobs()?;
        jobs.sort_by_key(|j| j.id);
        let got: Vec<_> = jobs.iter().map(|j| (j.id, j.state, j.attempt)).collect();
        assert_eq!(
            got,
            vec![
                (a.id, JobState::Succeeded, Attempt(1)),
                (b.id, JobState::Assigned, Attempt(1)),
            ]
        );
        Ok(())
    }

    /// Output records that are cut short or carry an unknown stream are refused.
    #[test]
    fn corrupt_output_records_are_refused() {
        assert!(decode_chunks(&[1, 9, 0, 0, 0, 1]).is_err());
        assert!(decode_chunks(&[3, 0, 0, 0, 0]).is_err());
        assert!(decode_chunks(&[1, 0, 0]).is_err());
        let ok = encode_chunks(&[Chunk {
            stream: Stream::Stderr,
            data: b"x".to_vec(),
        }]);
        assert!(decode_chunks(&ok).is_ok_and(|c| c.len() == 1));
    }
}
