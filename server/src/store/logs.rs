//! The append-only logs: `events` (each shard's numbered job and worker state changes) and
//! `audit` (one hash-chained log per writer). Both are stored in blocks ([`log_block`]): the
//! entries one commit appends to one log, as one value under the key of the first
//! ([`keys`](super::keys)). A read that starts inside a block skips the entries before its
//! start without decoding them.

use anyhow::{Context, Result};
use fjall::PersistMode;
use hodei_auth::audit::{self, AuditRecord};
use hodei_core::event::{Event, Subject};
use hodei_core::event_codec;
use hodei_core::ids::JobId;
use hodei_core::log_block;

use super::Store;
use super::keys::{audit_key, audit_seq, event_key, hex};

/// The events stored under one key, numbered `from` or later: a block of consecutive
/// compact events ([`event_codec`]), the first numbered by the key ([`log_block`]). Anything
/// else is refused. Events numbered below `from` are skipped without being decoded (a block's framing is still
/// checked whole): a reader starting after them neither pays for them nor fails on damage it
/// does not read.
pub(super) fn decode_events(key: &[u8], value: &[u8], from: u64) -> Result<Vec<Event>> {
    let (&shard, seq) = key.split_first().context("short event key")?;
    let seq: [u8; 8] = seq.try_into().context("event key of the wrong length")?;
    let seq = u64::from_be_bytes(seq);
    let mut out = Vec::new();
    for (i, e) in log_block::entries(value)?.into_iter().enumerate() {
        let seq = seq.checked_add(i as u64).context("event seq overflows")?;
        if seq >= from {
            out.push(event_codec::decode(shard, seq, e).with_context(|| format!("event {seq}"))?);
        }
    }
    Ok(out)
}

/// The audit records stored under one key: a block of consecutive records, the first
/// numbered by the key. Each is read with the hash of the one before it
/// (`prev`, updated), as it was chained. A record that cannot be decoded ends the list as an
/// error, after the good ones before it: a reader counting records names the right one.
pub(super) fn decode_audit(
    chain: u16,
    key: &[u8],
    value: &[u8],
    prev: &mut [u8; 32],
) -> Vec<Result<AuditRecord>> {
    let mut out = Vec::new();
    if let Err(e) = decode_audit_into(chain, key, value, prev, &mut out) {
        out.push(Err(e));
    }
    out
}

/// [`decode_audit`]'s work: the good records go to `out`, the first failure is returned.
pub(super) fn decode_audit_into(
    chain: u16,
    key: &[u8],
    value: &[u8],
    prev: &mut [u8; 32],
    out: &mut Vec<Result<AuditRecord>>,
) -> Result<()> {
    let first = audit_seq(key)?;
    let entries = log_block::entries(value).with_context(|| format!("audit block {}", hex(key)))?;
    for (i, e) in entries.into_iter().enumerate() {
        let seq = first.checked_add(i as u64).context("audit seq overflows")?;
        let at = audit::Position {
            chain,
            seq,
            prev: *prev,
        };
        let r = audit::decode(e, &at)
            .with_context(|| format!("audit record {seq} (key {}) cannot be decoded", hex(key)))?;
        *prev = r.hash;
        out.push(Ok(r));
    }
    Ok(())
}

/// Entries of append-only logs (a shard's events, an audit chain) gathered into blocks
/// ([`log_block`]): one store value per run of consecutive entries of one log.
pub(super) struct Blocks<L> {
    /// The log, first and next number of the block being built.
    open: Option<(L, u64, u64)>,
    builder: log_block::Builder,
    done: Vec<(L, u64, Vec<u8>)>,
}

impl<L: Copy + PartialEq> Blocks<L> {
    pub(super) fn new() -> Self {
        Self {
            open: None,
            builder: log_block::Builder::default(),
            done: Vec::new(),
        }
    }

    /// Adds entry `seq` of `log`; a new block starts unless it follows the last entry.
    pub(super) fn push(&mut self, log: L, seq: u64, encode: impl FnOnce(&mut Vec<u8>)) {
        if !matches!(self.open, Some((l, _, next)) if l == log && next == seq) {
            self.close();
            self.open = Some((log, seq, seq));
        }
        self.builder.push(encode);
        // Seqs only grow within a log (a shard numbers its events, a chain its records), so
        // blocks never overlap; the last possible seq ends its block.
        match (&mut self.open, seq.checked_add(1)) {
            (Some(open), Some(next)) => open.2 = next,
            _ => self.close(),
        }
    }

    fn close(&mut self) {
        if let Some((log, first, _)) = self.open.take() {
            self.done.push((log, first, self.builder.take()));
        }
    }

    /// The blocks: log, first number, bytes.
    pub(super) fn finish(mut self) -> Vec<(L, u64, Vec<u8>)> {
        self.close();
        self.done
    }
}

impl Store {
    /// Last event number stored by `shard`.
    pub fn last_event_seq(&self, shard: u8) -> Result<u64> {
        let Some(kv) = self.events.prefix([shard]).next_back() else {
            return Ok(0);
        };
        let (k, v) = kv.into_inner().context("cannot read the events keyspace")?;
        let events = decode_events(&k, &v, 0)
            .with_context(|| format!("corrupt store: event {}", hex(&k)))?;
        events
            .last()
            .map(|e| e.seq)
            .with_context(|| format!("corrupt store: event {} holds none", hex(&k)))
    }

    /// Events of `shard` with `after < seq <= upto`, optionally only one job's.
    pub fn read_events(
        &self,
        shard: u8,
        after: u64,
        upto: u64,
        job: Option<JobId>,
    ) -> Result<Vec<Event>> {
        let mut out = Vec::new();
        for block in self.event_blocks(shard, after, upto, job)? {
            out.extend(block?);
        }
        Ok(out)
    }

    /// The events of [`read_events`](Self::read_events), one stored block at a time, read
    /// lazily: a long range is streamed page by page, never held whole.
    pub fn event_blocks(
        &self,
        shard: u8,
        after: u64,
        upto: u64,
        job: Option<JobId>,
    ) -> Result<impl Iterator<Item = Result<Vec<Event>>> + '_> {
        // An empty range reads nothing (`upto` below `after + 1` would be an inverted range).
        let upto = upto.max(after);
        let first_seq = after.saturating_add(1);
        // The block that holds `after + 1` may start before it; what comes before `after + 1`
        // is skipped undecoded.
        let first = event_key(shard, first_seq).to_vec();
        let start = match self
            .events
            .range(event_key(shard, 0).to_vec()..=first.clone())
            .next_back()
        {
            Some(kv) => kv
                .into_inner()
                .context("cannot read the events keyspace")?
                .0
                .to_vec(),
            None => first,
        };
        let end = event_key(shard, upto).to_vec();
        let blocks = (after < upto)
            .then(|| self.events.range(start..=end))
            .into_iter()
            .flatten();
        Ok(blocks.map(move |kv| {
            let (k, v) = kv.into_inner().context("cannot read the events keyspace")?;
            let events = decode_events(&k, &v, first_seq)
                .with_context(|| format!("corrupt store: event {}", hex(&k)))?;
            Ok(events
                .into_iter()
                .filter(|ev| ev.seq <= upto && job.is_none_or(|j| ev.subject == Subject::Job(j)))
                .collect())
        }))
    }

    /// A durable batch (one fdatasync) that already holds `audit`: a change and the audit
    /// records of it are always written together.
    pub(super) fn audited_batch(&self, audit: &[AuditRecord]) -> super::WriteBatch {
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        let mut blocks = Blocks::new();
        for r in audit {
            blocks.push(r.chain, r.seq, |out| audit::encode_into(r, out));
        }
        for (chain, first, bytes) in blocks.finish() {
            batch.insert(&self.audit, &audit_key(chain, first)[..], bytes);
        }
        batch
    }

    /// The head of a chain, to resume it: the last record's seq and hash.
    pub fn last_audit(&self, chain: u16) -> Result<Option<(u64, [u8; 32])>> {
        let Some(kv) = self.audit.prefix(chain.to_be_bytes()).next_back() else {
            return Ok(None);
        };
        let (k, v) = kv.into_inner().context("cannot read the audit keyspace")?;
        // The head needs no predecessor: a stored record's hash is its own.
        let records = decode_audit(chain, &k, &v, &mut [0; 32])
            .into_iter()
            .collect::<Result<Vec<_>>>()
            .context("corrupt store")?;
        Ok(records.last().map(|r| (r.seq, r.hash)))
    }

    /// Every chain that has records.
    pub fn audit_chains(&self) -> Result<Vec<u16>> {
        let mut out = Vec::new();
        let mut from = 0u32;
        while from <= u32::from(u16::MAX) {
            #[allow(clippy::cast_possible_truncation)] // bounded by the loop condition
            let start = (from as u16).to_be_bytes();
            let Some(kv) = self.audit.range(start.to_vec()..).next() else {
                break;
            };
            let (k, _) = kv.into_inner().context("cannot read the audit keyspace")?;
            let chain: [u8; 2] = k
                .get(..2)
                .and_then(|s| s.try_into().ok())
                .context("corrupt audit key")?;
            let chain = u16::from_be_bytes(chain);
            out.push(chain);
            from = u32::from(chain) + 1;
        }
        Ok(out)
    }

    /// A chain's records in order, from its checkpoint if retention deleted the oldest ones;
    /// a record that cannot be decoded is an error naming its key (`hodei audit verify`
    /// reports it as tampering).
    pub fn read_audit(&self, chain: u16) -> impl Iterator<Item = Result<AuditRecord>> + '_ {
        // After retention the chain starts at its checkpoint (checked by `verify_all`, not
        // here: a damaged one only makes the first record's link fail there).
        let mut prev = match self.audit_checkpoint(chain) {
            Ok(Some(cp)) => cp.prev,
            _ => [0u8; 32],
        };
        self.audit
            .prefix(chain.to_be_bytes())
            .flat_map(
                move |kv| match kv.into_inner().context("cannot read the audit keyspace") {
                    Ok((k, v)) => decode_audit(chain, &k, &v, &mut prev),
                    Err(e) => vec![Err(e)],
                },
            )
            // The first error ends the chain: what follows would be read against the hash of
            // the last good record, not of the one it was chained to.
            .scan(false, |failed, r| {
                if *failed {
                    return None;
                }
                *failed = r.is_err();
                Some(r)
            })
    }
}

#[cfg(test)]
mod tests {
    use hodei_core::frame::Wire;
    use hodei_core::ids::Attempt;
    use hodei_shards::StoreOp;

    use super::*;
    use crate::store::tests::fresh;

    /// A chain written over several commits (a block per commit and chain) reads back as one
    /// chain that verifies, and resumes from its last record; a record stored alone, outside
    /// a block, is refused by name; a record taken out of a block or damaged in it breaks the
    /// chain exactly there.
    #[test]
    fn audit_chains_read_across_blocks() -> Result<()> {
        let (dir, store) = fresh("audit-blocks")?;
        let mut chain = hodei_auth::audit::AuditChain::new(0);
        let r0 = chain.append(1, "cli", "call.submit", "", "c1", "1 job(s)");
        let r1 = chain.append(2, "agent", "job.running", "j0.1.1", "c1", "attempt=1");
        store.commit(&[], &[r0.clone(), r1.clone()])?;
        let mut rs: Vec<AuditRecord> = (2..5)
            .map(|i| chain.append(i, "agent", "job.succeeded", "j0.1.1", "c1", ""))
            .collect();
        store.commit(&[], &rs)?;
        let last = chain.append(9, "cli", "call.cancel", "j0.1.1", "", "");
        let other =
            hodei_auth::audit::AuditChain::new(1).append(9, "cli", "token.create", "t", "", "");
        store.commit(&[], &[last.clone(), other.clone()])?;
        let raw = store
            .audit
            .get(audit_key(0, 2))?
            .context("block 0:2 is missing")?;
        assert_eq!(log_block::entries(&raw)?.len(), 3);
        drop(store);
        let store = Store::open(&dir)?;
        assert_eq!(store.last_audit(0)?, Some((5, last.hash)));
        assert_eq!(store.last_audit(1)?, Some((0, other.hash)));
        assert_eq!(store.audit_chains()?, vec![0, 1]);
        let read = store.read_audit(0).collect::<Result<Vec<_>>>()?;
        let mut want = vec![r0, r1];
        want.append(&mut rs);
        want.push(last.clone());
        let want_last = last;
        assert_eq!(read, want);
        let n = hodei_auth::audit::verify(0, read, Some(chain.head()))
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        assert_eq!(n, 6);
        // A record taken out of the middle of a block breaks the chain where it was.
        let entries = log_block::entries(&raw)?;
        let mut b = log_block::Builder::default();
        for e in [entries[0], entries[2]] {
            b.push(|out| out.extend_from_slice(e));
        }
        store.audit.insert(&audit_key(0, 2)[..], b.take())?;
        let read = store.read_audit(0).collect::<Result<Vec<_>>>()?;
        let err = hodei_auth::audit::verify(0, read, Some(chain.head()))
            .err()
            .context("a record removed from a block went unnoticed")?;
        assert_eq!(err.seq(), 3, "{err:?}");
        // A record that cannot be decoded in the middle of a block: the records before it
        // still read, and the error comes at its own place in the chain, naming its seq.
        let mut b = log_block::Builder::default();
        for e in [entries[0], b"not a record".as_slice(), entries[2]] {
            b.push(|out| out.extend_from_slice(e));
        }
        store.audit.insert(&audit_key(0, 2)[..], b.take())?;
        let read: Vec<Result<AuditRecord>> = store.read_audit(0).collect();
        let good = read.iter().take_while(|r| r.is_ok()).count();
        assert_eq!(good, 3, "r0, r1 and the block's first record");
        let err = read
            .get(3)
            .and_then(|r| r.as_ref().err())
            .context("the damaged record was not reported after the good ones")?;
        assert!(format!("{err:#}").contains("audit record 3 "), "{err:#}");
        assert_eq!(read.len(), 4, "nothing is read past the damaged record");
        // A record stored alone, not in a block, is not a form this store writes: refused,
        // naming its key, after the records before it.
        store.audit.insert(&audit_key(0, 2)[..], raw)?;
        store
            .audit
            .insert(&audit_key(0, 5)[..], audit::encode(&want_last))?;
        let read: Vec<Result<AuditRecord>> = store.read_audit(0).collect();
        assert_eq!(read.iter().take_while(|r| r.is_ok()).count(), 5);
        let err = read
            .get(5)
            .and_then(|r| r.as_ref().err())
            .context("a record outside a block was read")?;
        let err = format!("{err:#}");
        assert!(err.contains("audit block 00000000000000000005"), "{err}");
        assert!(err.contains("not a block"), "{err}");
        Ok(())
    }

    /// Events committed in blocks (one per commit) read back in one range, from any point
    /// inside a block; a single event or an rkyv frame stored outside a block, and a block cut
    /// short, are refused.
    #[test]
    fn events_read_across_blocks() -> Result<()> {
        use hodei_core::event::EventKind;
        use hodei_core::state::JobState;
        let (dir, store) = fresh("event-blocks")?;
        let ev = |seq: u64, job: u64| Event {
            shard: 0,
            seq,
            at: 1_000 + seq,
            subject: Subject::Job(JobId::new(0, 1, job)),
            correlation_id: "c1".to_owned(),
            kind: EventKind::Job {
                state: JobState::Running,
                attempt: Attempt(1),
                worker: None,
            },
            reason: None,
        };
        let all: Vec<Event> = (1..=7).map(|seq| ev(seq, seq % 2)).collect();
        let put = |evs: &[Event]| -> Vec<StoreOp> {
            evs.iter().cloned().map(StoreOp::PutEvent).collect()
        };
        store.commit(&put(&all[..2]), &[])?;
        store.commit(&put(&all[2..5]), &[])?;
        store.commit(&put(&all[5..]), &[])?;
        let raw = store
            .events
            .get(event_key(0, 3))?
            .context("the block of events 3-5 is missing")?;
        assert_eq!(log_block::entries(&raw)?.len(), 3);
        assert!(store.events.get(event_key(0, 4))?.is_none());
        drop(store);
        let store = Store::open(&dir)?;
        assert_eq!(store.last_event_seq(0)?, 7);
        assert_eq!(store.last_event_seq(1)?, 0);
        assert_eq!(store.read_events(0, 0, 7, None)?, all);
        assert_eq!(store.read_events(0, 3, 6, None)?, all[3..6].to_vec());
        assert_eq!(store.read_events(0, 4, 5, None)?, all[4..5].to_vec());
        assert_eq!(store.read_events(0, 7, 7, None)?, vec![]);
        let odd = Some(JobId::new(0, 1, 1));
        assert_eq!(
            store.read_events(0, 1, 7, odd)?,
            vec![all[2].clone(), all[4].clone(), all[6].clone()]
        );
        let read_err = |after, upto| {
            store
                .read_events(0, after, upto, None)
                .err()
                .map(|e| format!("{e:#}"))
        };
        // Only blocks are read: one compact event, or an event as an rkyv frame, stored
        // under its own key is refused, naming the key.
        let mut frame = Vec::new();
        ev(8, 0).encode_into(&mut frame)?;
        let mut compact = Vec::new();
        event_codec::encode(&ev(8, 0), &mut compact);
        for single in [frame, compact] {
            store.events.insert(&event_key(0, 8)[..], single)?;
            let err = read_err(7, 8);
            assert!(
                err.as_deref()
                    .is_some_and(|e| e.contains("corrupt store: event 0000000000000000")
                        && e.contains("not a block")),
                "{err:?}"
            );
        }
        let mut cut = raw.to_vec();
        cut.pop();
        store.events.insert(&event_key(0, 9)[..], cut)?;
        let err = read_err(8, 9);
        assert!(
            err.as_deref().is_some_and(|e| e.contains("corrupt store")),
            "{err:?}"
        );
        // Damage in a block before where a read starts is skipped, not decoded; a read that
        // covers it still fails, naming the event.
        let mut good = Vec::new();
        event_codec::encode(&ev(11, 1), &mut good);
        let mut b = log_block::Builder::default();
        for e in [b"not an event".as_slice(), &good] {
            b.push(|out| out.extend_from_slice(e));
        }
        store.events.insert(&event_key(0, 10)[..], b.take())?;
        assert_eq!(store.read_events(0, 10, 11, None)?, vec![ev(11, 1)]);
        let err = read_err(9, 11);
        assert!(
            err.as_deref().is_some_and(|e| e.contains("event 10")),
            "{err:?}"
        );
        Ok(())
    }
}
