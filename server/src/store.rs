//! The server's durable state: a fjall database in `<data-dir>/store`.
//!
//! Keyspaces: `jobs` (job id → framed [`JobRecord`]), `output` (job id | attempt | offset →
//! encoded chunks), `meta` (`epoch`). Every shard commits its writes of one loop turn as one
//! batch with one `fdatasync` (group commit): a job is acknowledged only after that returns.
//! Records are framed like wire messages, so a store written by another format version is
//! refused with a clear error instead of misread.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use fjall::config::FilterPolicy;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use hodei_auth::audit::{self, AuditRecord};
use hodei_auth::token::TokenRecord;
use hodei_core::event::{Event, Subject};
use hodei_core::event_codec;
use hodei_core::frame::{Wire, split_frame};
use hodei_core::ids::{Attempt, JobId};
use hodei_core::job::JobRecord;
use hodei_core::log_block;
use hodei_core::wire::{Chunk, Stream};
use hodei_shards::StoreOp;

/// An agent certificate the server issued.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct AgentCert {
    /// The identity it is bound to.
    pub identity: String,
    /// Expiry, ms since the epoch.
    pub expires_at_ms: u64,
    /// Revoked (with every other certificate of its identity).
    pub revoked: bool,
}

/// Marker file that identifies a Hodei data directory.
const MARKER: &str = "hodei.format";
const MARKER_TEXT: &str = "hodei-data v1\n";

/// The store, shared by all shard threads (fjall is thread-safe).
#[derive(Clone)]
pub struct Store {
    db: Database,
    jobs: Keyspace,
    output: Keyspace,
    meta: Keyspace,
    events: Keyspace,
    tokens: Keyspace,
    secrets: Keyspace,
    agents: Keyspace,
    audit: Keyspace,
    clean: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

/// Checks (or claims) a data directory: refuses one that holds something else.
pub fn claim_data_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data dir {}", dir.display()))?;
    let marker = dir.join(MARKER);
    match std::fs::read_to_string(&marker) {
        Ok(text) if text == MARKER_TEXT => Ok(()),
        Ok(text) => bail!(
            "data dir {} has format {:?}, this build reads {:?}; refusing to touch it",
            dir.display(),
            text.trim(),
            MARKER_TEXT.trim()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut entries = std::fs::read_dir(dir)
                .with_context(|| format!("cannot read data dir {}", dir.display()))?;
            if entries.next().is_some() {
                bail!(
                    "{} is not a Hodei data dir (it is not empty and has no {MARKER}); refusing to use it",
                    dir.display()
                );
            }
            std::fs::write(&marker, MARKER_TEXT)
                .with_context(|| format!("cannot write {}", marker.display()))?;
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", marker.display())),
    }
}

fn output_key(job: JobId, attempt: Attempt, offset: u64) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..8].copy_from_slice(&job.to_be_bytes());
    k[8..12].copy_from_slice(&attempt.0.to_be_bytes());
    k[12..].copy_from_slice(&offset.to_be_bytes());
    k
}

fn event_key(shard: u8, seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = shard;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The events stored under one key, numbered `from` or later: a block of consecutive
/// compact events, the first numbered by the key ([`log_block`]); one compact event; or an
/// rkyv frame written before either, which must name the same shard and seq as its key.
/// Events numbered below `from` are skipped without being decoded (a block's framing is still
/// checked whole): a reader starting after them neither pays for them nor fails on damage it
/// does not read.
fn decode_events(key: &[u8], value: &[u8], from: u64) -> Result<Vec<Event>> {
    let (&shard, seq) = key.split_first().context("short event key")?;
    let seq: [u8; 8] = seq.try_into().context("event key of the wrong length")?;
    let seq = u64::from_be_bytes(seq);
    if log_block::is_block(value) {
        let mut out = Vec::new();
        for (i, e) in log_block::entries(value)?.into_iter().enumerate() {
            let seq = seq.checked_add(i as u64).context("event seq overflows")?;
            if seq >= from {
                out.push(
                    event_codec::decode(shard, seq, e).with_context(|| format!("event {seq}"))?,
                );
            }
        }
        return Ok(out);
    }
    if seq < from {
        return Ok(Vec::new());
    }
    if event_codec::is_compact(value) {
        return Ok(vec![event_codec::decode(shard, seq, value)?]);
    }
    let (payload, _) = split_frame(value)?.context("truncated event frame")?;
    let ev = Event::decode(payload)?;
    if (ev.shard, ev.seq) != (shard, seq) {
        bail!("the event says it is {}:{}", ev.shard, ev.seq);
    }
    Ok(vec![ev])
}

/// The audit records stored under one key: a block of consecutive records, the first
/// numbered by the key, or one record. Each is read with the hash of the one before it
/// (`prev`, updated), as it was chained. A record that cannot be decoded ends the list as an
/// error, after the good ones before it: a reader counting records names the right one.
fn decode_audit(
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
fn decode_audit_into(
    chain: u16,
    key: &[u8],
    value: &[u8],
    prev: &mut [u8; 32],
    out: &mut Vec<Result<AuditRecord>>,
) -> Result<()> {
    let first = audit_seq(key)?;
    let entries = if log_block::is_block(value) {
        log_block::entries(value).with_context(|| format!("audit block {}", hex(key)))?
    } else {
        vec![value]
    };
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
struct Blocks<L> {
    /// The log, first and next number of the block being built.
    open: Option<(L, u64, u64)>,
    builder: log_block::Builder,
    done: Vec<(L, u64, Vec<u8>)>,
}

impl<L: Copy + PartialEq> Blocks<L> {
    fn new() -> Self {
        Self {
            open: None,
            builder: log_block::Builder::default(),
            done: Vec::new(),
        }
    }

    /// Adds entry `seq` of `log`; a new block starts unless it follows the last entry.
    fn push(&mut self, log: L, seq: u64, encode: impl FnOnce(&mut Vec<u8>)) {
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
    fn finish(mut self) -> Vec<(L, u64, Vec<u8>)> {
        self.close();
        self.done
    }
}

fn audit_key(chain: u16, seq: u64) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[..2].copy_from_slice(&chain.to_be_bytes());
    k[2..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The seq in an audit key (chain:u16 | seq:u64, nothing else).
fn audit_seq(k: &[u8]) -> Result<u64> {
    let seq: [u8; 8] = k
        .get(2..)
        .and_then(|s| s.try_into().ok())
        .with_context(|| format!("corrupt audit key {}", hex(k)))?;
    Ok(u64::from_be_bytes(seq))
}

fn output_prefix(job: JobId, attempt: Attempt) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&job.to_be_bytes());
    k[8..].copy_from_slice(&attempt.0.to_be_bytes());
    k
}

/// Output chunks as stored: `stream:u8 | len:u32 LE | bytes`, repeated.
fn encode_chunks(chunks: &[Chunk]) -> Vec<u8> {
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

fn decode_chunks(mut b: &[u8]) -> Result<Vec<Chunk>> {
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

/// Written on a clean shutdown, removed at start: tells whether a torn journal tail is
/// expected (after a crash) or means damage (after a clean stop).
const CLEAN: &str = "clean-shutdown";

/// Memtable bound per keyspace (fjall's default is 64 MiB each; with jobs, events, audit
/// and output written together that was RSS held by write buffers, measured with
/// `hodei-bench memory`).
const MEMTABLE_BYTES: u64 = 16 << 20;

/// Journal bound (fjall's minimum is 64 MiB).
const JOURNAL_BYTES: u64 = 64 << 20;

/// Tables in level 0 before fjall merges them into level 1 (its default is 4). Every job
/// writes to the jobs, events and audit keyspaces, and both shards' keys land in every
/// flushed table, so each merge into level 1 rewrites most of it: with 4, fjall's flush and
/// compaction thread was ~40 % of the server's CPU in a no-op run. With 16, server CPU per
/// no-op job fell from ~38 to ~32 µs and a restart with 1M jobs from 3.6 to 2.8 s (reads
/// are scans, so more level-0 tables cost little); RSS is unchanged. It must stay well
/// below 20: at 20 level-0 runs fjall slows writes down and at 30 it stops them until a
/// compaction is done, so at 32 a keyspace stops for good (seen: a no-op run that hung).
/// Applies to keyspaces created from now on: fjall keeps a keyspace's strategy from its
/// creation.
const L0_TABLES: u8 = 16;

/// fjall's background threads (flush and compaction). Its default is one per core, up to
/// 4; with more than one, worker 0 hands every compaction to the others by re-queueing the
/// message and taking the next one, so while worker 1 compacts, worker 0 spins on the same
/// message (fjall 3.1 `worker_pool.rs`; measured under `perf` at a quarter of a core).
const FJALL_WORKERS: usize = 1;

/// A journal's bytes up to its last non-zero byte (journals are preallocated with zeros).
struct JournalCopy {
    path: PathBuf,
    bytes: Vec<u8>,
    /// File length (zeros after `bytes`).
    len: u64,
}

impl JournalCopy {
    /// Puts the journal back exactly as it was.
    fn restore(&self) -> std::io::Result<()> {
        std::fs::write(&self.path, &self.bytes)?;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)?
            .set_len(self.len)
    }
}

/// fjall recovers a journal by truncating it at the first batch it cannot read. That is
/// right for the torn tail of a crash (an unacknowledged commit), but damage in the middle
/// would silently drop acknowledged jobs. So: copy each journal before opening, and compare.
fn snapshot_journals(store: &Path) -> Result<Vec<JournalCopy>> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(store) else {
        return Ok(out);
    };
    for e in entries {
        let path = e.context("cannot list the store directory")?.path();
        if path.extension().is_some_and(|x| x == "jnl") {
            let mut bytes =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let len = bytes.len() as u64;
            let used = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
            bytes.truncate(used);
            out.push(JournalCopy { path, bytes, len });
        }
    }
    Ok(out)
}

/// After fjall's recovery: journals that lost non-zero bytes are kept as `<name>.damaged`.
/// After a clean shutdown that is damage, and the server refuses to start; after a crash it
/// is most likely the torn tail of an unacknowledged commit, logged loudly.
fn check_journals(copies: &[JournalCopy], was_clean: bool) -> Result<()> {
    for c in copies {
        let now = std::fs::metadata(&c.path).map_or(u64::MAX, |m| m.len());
        let used = c.bytes.len() as u64;
        if now >= used {
            continue;
        }
        // After a crash the copy is kept under a name that does not block later starts.
        let saved = if was_clean {
            c.path.with_extension("jnl.damaged")
        } else {
            c.path
                .with_extension(format!("jnl.dropped-{}", hodei_core::time::wall_now()))
        };
        std::fs::write(&saved, &c.bytes)
            .with_context(|| format!("cannot save {}", saved.display()))?;
        let msg = format!(
            "store journal {} could not be read past byte {now}: recovery dropped {} bytes; the original is saved as {}",
            c.path.display(),
            used - now,
            saved.display()
        );
        if was_clean {
            bail!(
                "{msg}. The server stopped cleanly last time, so this is damage, not a torn write: restore the store from a backup, or remove {} to accept the loss",
                saved.display()
            );
        }
        tracing::error!(
            "{msg} (after a crash this is usually the torn tail of an unacknowledged commit)"
        );
    }
    Ok(())
}

impl Store {
    /// Opens (or creates) the store under a claimed data dir.
    pub fn open(data_dir: &Path) -> Result<Self> {
        let path: PathBuf = data_dir.join("store");
        for e in std::fs::read_dir(&path).into_iter().flatten().flatten() {
            if e.path().to_string_lossy().ends_with(".jnl.damaged") {
                bail!(
                    "{} exists: a damaged journal from an earlier start; restore the store from a backup, or remove that file to accept the loss",
                    e.path().display()
                );
            }
        }
        let clean = data_dir.join(CLEAN);
        let was_clean = clean.exists();
        let copies = snapshot_journals(&path)?;
        // A smaller journal bound (fjall's default is 512 MiB) makes fjall flush memtables
        // sooner, so a restart after a crash replays less: measured with 1M jobs.
        let db = Database::builder(&path)
            .max_journaling_size(JOURNAL_BYTES)
            .worker_threads(FJALL_WORKERS)
            .open()
            .with_context(|| {
                format!(
                    "cannot open the store at {} (is another server using it, or is it corrupt?)",
                    path.display()
                )
            })?;
        if let Err(e) = check_journals(&copies, was_clean) {
            // Put the journals back as they were, so that nothing is lost by refusing.
            drop(db);
            for c in &copies {
                if let Err(err) = c.restore() {
                    tracing::error!("cannot restore {}: {err}", c.path.display());
                }
            }
            return Err(e);
        }
        let _ = std::fs::remove_file(&clean);
        // No bloom filters: every keyspace is read by scans (jobs at start, events, audit,
        // output), except `meta` with its one key. Building them cost flush CPU for nothing.
        let ks = |name: &str| {
            db.keyspace(name, || {
                KeyspaceCreateOptions::default()
                    .max_memtable_size(MEMTABLE_BYTES)
                    .filter_policy(FilterPolicy::disabled())
                    .compaction_strategy(std::sync::Arc::new(
                        fjall::compaction::Leveled::default().with_l0_threshold(L0_TABLES),
                    ))
            })
            .with_context(|| format!("cannot open keyspace {name}"))
        };
        Ok(Self {
            jobs: ks("jobs")?,
            output: ks("output")?,
            meta: ks("meta")?,
            events: ks("events")?,
            tokens: ks("tokens")?,
            agents: ks("agents")?,
            secrets: ks("secrets")?,
            audit: ks("audit")?,
            db,
            clean,
        })
    }

    /// Records a clean shutdown (after the final flush).
    pub fn mark_clean(&self) -> Result<()> {
        std::fs::write(&self.clean, b"")
            .with_context(|| format!("cannot write {}", self.clean.display()))
    }

    /// Increments and returns the start count (minted into ids).
    pub fn next_epoch(&self) -> Result<u32> {
        let prev = match self.meta.get("epoch").context("cannot read the epoch")? {
            Some(v) => {
                let b: [u8; 4] = v
                    .as_ref()
                    .try_into()
                    .map_err(|_| anyhow::anyhow!("corrupt store: epoch record"))?;
                u32::from_be_bytes(b)
            }
            None => 0,
        };
        let epoch = prev + 1;
        if epoch >= 1 << 20 {
            bail!("the store has been started {prev} times; ids would overflow");
        }
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncAll));
        batch.insert(&self.meta, "epoch", epoch.to_be_bytes().to_vec());
        batch.commit().context("cannot write the epoch")?;
        Ok(epoch)
    }

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
        let off: [u8; 8] = k
            .get(12..20)
            .and_then(|s| s.try_into().ok())
            .context("corrupt output key")?;
        let len: u64 = decode_chunks(&v)?.iter().map(|c| c.data.len() as u64).sum();
        Ok(u64::from_be_bytes(off) + len)
    }

    /// Writes a batch durably (one fdatasync), with the audit records of its changes.
    pub fn commit(&self, ops: &[StoreOp], audit: &[AuditRecord]) -> Result<()> {
        if ops.is_empty() && audit.is_empty() {
            return Ok(());
        }
        let mut batch = self.audited_batch(audit);
        // A job changed several times in one batch (submitted and assigned in one turn;
        // started and finished under load) needs only its last record: the batch is atomic,
        // so the earlier ones would be overwritten before anyone could read them. Skipping
        // them saves an encoding of the whole spec and a memtable insert each.
        let mut last_put: HashMap<JobId, usize> = HashMap::new();
        for (i, op) in ops.iter().enumerate() {
            if let StoreOp::PutJob(rec) = op {
                last_put.insert(rec.id, i);
            }
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

    /// Stored output of an attempt below `upto`, in order.
    pub fn read_output(&self, job: JobId, attempt: Attempt, upto: u64) -> Result<Vec<Chunk>> {
        let mut out = Vec::new();
        for kv in self.output.prefix(output_prefix(job, attempt)) {
            let (k, v) = kv.into_inner().context("cannot read the output keyspace")?;
            let off: [u8; 8] = k
                .get(12..20)
                .and_then(|s| s.try_into().ok())
                .context("corrupt output key")?;
            if u64::from_be_bytes(off) >= upto {
                break;
            }
            out.extend(decode_chunks(&v)?);
        }
        Ok(out)
    }

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
        if after >= upto {
            return Ok(out);
        }
        // The block that holds `after + 1` may start before it; what comes before `after + 1`
        // is skipped undecoded.
        let first = event_key(shard, after + 1).to_vec();
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
        for kv in self.events.range(start..=event_key(shard, upto).to_vec()) {
            let (k, v) = kv.into_inner().context("cannot read the events keyspace")?;
            let events = decode_events(&k, &v, after + 1)
                .with_context(|| format!("corrupt store: event {}", hex(&k)))?;
            out.extend(
                events.into_iter().filter(|ev| {
                    ev.seq <= upto && job.is_none_or(|j| ev.subject == Subject::Job(j))
                }),
            );
        }
        Ok(out)
    }

    /// A durable batch (one fdatasync) that already holds `audit`: a change and the audit
    /// records of it are always written together.
    fn audited_batch(&self, audit: &[AuditRecord]) -> fjall::OwnedWriteBatch {
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

    /// Every stored token.
    pub fn load_tokens(&self) -> Result<Vec<TokenRecord>> {
        let mut out = Vec::new();
        for kv in self.tokens.iter() {
            let (k, v) = kv.into_inner().context("cannot read the tokens keyspace")?;
            let rec: TokenRecord = serde_json::from_slice(&v)
                .with_context(|| format!("corrupt store: token {}", hex(&k)))?;
            out.push(rec);
        }
        Ok(out)
    }

    /// Stores a token (durably), with the audit record of the call.
    pub fn put_token(&self, rec: &TokenRecord, audit: &[AuditRecord]) -> Result<()> {
        let v = serde_json::to_vec(rec).context("cannot encode a token")?;
        let mut batch = self.audited_batch(audit);
        batch.insert(&self.tokens, rec.id.0.to_be_bytes().to_vec(), v);
        batch.commit().context("cannot store a token")
    }

    /// Every stored secret: name → sealed entry.
    pub fn load_secrets(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        for kv in self.secrets.iter() {
            let (k, v) = kv
                .into_inner()
                .context("cannot read the secrets keyspace")?;
            let name = String::from_utf8(k.to_vec())
                .map_err(|_| anyhow::anyhow!("corrupt store: a secret name is not UTF-8"))?;
            out.push((name, v.to_vec()));
        }
        Ok(out)
    }

    /// Sets (`Some`) or removes (`None`) a sealed secret, with the audit record of the call.
    pub fn put_secret(
        &self,
        name: &str,
        sealed: Option<&[u8]>,
        audit: &[AuditRecord],
    ) -> Result<()> {
        let mut batch = self.audited_batch(audit);
        match sealed {
            Some(v) => batch.insert(&self.secrets, name.as_bytes().to_vec(), v.to_vec()),
            None => batch.remove(&self.secrets, name.as_bytes().to_vec()),
        }
        batch.commit().context("cannot store a secret")
    }

    /// Every agent certificate issued: fingerprint → record.
    pub fn load_agent_certs(&self) -> Result<Vec<([u8; 32], AgentCert)>> {
        let mut out = Vec::new();
        for kv in self.agents.iter() {
            let (k, v) = kv.into_inner().context("cannot read the agents keyspace")?;
            let fp: [u8; 32] = k
                .as_ref()
                .try_into()
                .map_err(|_| anyhow::anyhow!("corrupt store: agent certificate key"))?;
            let c: AgentCert = serde_json::from_slice(&v)
                .with_context(|| format!("corrupt store: agent certificate {}", hex(&k)))?;
            out.push((fp, c));
        }
        Ok(out)
    }

    /// Stores agent certificate records (durably), with the audit record of the call.
    pub fn put_agent_certs(
        &self,
        certs: &[([u8; 32], AgentCert)],
        audit: &[AuditRecord],
    ) -> Result<()> {
        let mut batch = self.audited_batch(audit);
        for (fp, c) in certs {
            let v = serde_json::to_vec(c).context("cannot encode an agent certificate")?;
            batch.insert(&self.agents, fp.to_vec(), v);
        }
        batch.commit().context("cannot store agent certificates")
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

    /// A chain's records in order; a record that cannot be decoded is an error naming its
    /// key (`hodei audit verify` reports it as tampering).
    pub fn read_audit(&self, chain: u16) -> impl Iterator<Item = Result<AuditRecord>> + '_ {
        let mut prev = [0u8; 32];
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

    /// Flushes everything (shutdown).
    pub fn persist(&self) -> Result<()> {
        self.db
            .persist(PersistMode::SyncAll)
            .context("cannot flush the store")
    }
}

fn decode_record(v: &[u8]) -> Result<JobRecord> {
    let (payload, _) = split_frame(v)?.context("truncated record")?;
    Ok(JobRecord::decode(payload)?)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hodei-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// A new store in a claimed, empty data dir.
    fn fresh(name: &str) -> Result<(PathBuf, Store)> {
        let dir = tempdir(name);
        claim_data_dir(&dir)?;
        let store = Store::open(&dir)?;
        Ok((dir, store))
    }

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

    /// A chain begun by an earlier build (version 1 records, every field stored) and continued
    /// by this one (version 2, the place left to the key and the chain) reads back as one
    /// chain that verifies, and resumes from its last record.
    #[test]
    fn audit_chains_span_record_versions() -> Result<()> {
        let (dir, store) = fresh("audit-versions")?;
        let mut chain = hodei_auth::audit::AuditChain::new(0);
        let r0 = chain.append(1, "cli", "call.submit", "", "c1", "1 job(s)");
        // Version 1, as earlier builds wrote it: prev, chain, seq, at_ms, then each string
        // with a u64 length, then the hash.
        let mut v1 = vec![1u8];
        v1.extend(r0.prev);
        v1.extend(r0.chain.to_le_bytes());
        v1.extend(r0.seq.to_le_bytes());
        v1.extend(r0.at_ms.to_le_bytes());
        for f in [
            &r0.actor,
            &r0.action,
            &r0.subject,
            &r0.correlation_id,
            &r0.detail,
        ] {
            v1.extend((f.len() as u64).to_le_bytes());
            v1.extend(f.as_bytes());
        }
        v1.extend(r0.hash);
        store.audit.insert(&audit_key(0, 0)[..], v1)?;
        // Version 2, one record per key, as builds before blocks wrote it.
        let r1 = chain.append(2, "agent", "job.running", "j0.1.1", "c1", "attempt=1");
        store
            .audit
            .insert(&audit_key(0, 1)[..], audit::encode(&r1))?;
        // This build: a block per commit and chain.
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
        want.push(last);
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
        Ok(())
    }

    /// Events written by earlier builds (an rkyv frame, a single compact event) and by this
    /// one (blocks of consecutive events, one per commit) read back in one range, from any
    /// point inside a block; an old frame stored under another event's key, and a block cut
    /// short, are refused.
    #[test]
    fn events_span_encodings() -> Result<()> {
        use hodei_core::event::EventKind;
        use hodei_core::state::JobState;
        let (dir, store) = fresh("event-versions")?;
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
        let mut frame = Vec::new();
        all[0].encode_into(&mut frame)?;
        let mut compact = Vec::new();
        event_codec::encode(&all[1], &mut compact);
        store.events.insert(&event_key(0, 1)[..], frame.clone())?;
        store.events.insert(&event_key(0, 2)[..], compact)?;
        let put = |evs: &[Event]| -> Vec<StoreOp> {
            evs.iter().cloned().map(StoreOp::PutEvent).collect()
        };
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
        store.events.insert(&event_key(0, 8)[..], frame)?;
        let err = read_err(7, 8);
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("corrupt store") && e.contains("0:1")),
            "{err:?}"
        );
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

    #[test]
    fn refuses_foreign_dirs() -> Result<()> {
        let dir = tempdir("foreign");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("something.txt"), "not hodei")?;
        let err = claim_data_dir(&dir)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("not a Hodei data dir"), "{err}");
        std::fs::write(dir.join(MARKER), "other v9\n")?;
        assert!(claim_data_dir(&dir).is_err());
        assert!(decode_chunks(&[1, 9, 0, 0, 0, 1]).is_err());
        Ok(())
    }
}
