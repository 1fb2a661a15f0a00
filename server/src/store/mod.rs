//! The server's durable state: a fjall database in `<data-dir>/store`, shared by every shard
//! thread and the control plane (fjall is thread-safe).
//!
//! - [`data_dir`]: the data directory's format marker, claimed before anything is written.
//! - [`journal`]: damage detection around fjall's journal recovery.
//! - [`keys`]: the key formats of every keyspace.
//! - [`handle`]: the open database behind every clone, reopened after a failed write.
//! - [`health`]: whether the store takes writes (free-space watermark, a full disk).
//! - [`commit`]: one shard batch as one durable write (group commit), and the [`Committer`]
//!   that pipelines a shard's batches and holds one the store could not take.
//! - [`jobs`]: the `jobs` and `output` keyspaces.
//! - [`logs`]: the append-only logs, `events` and `audit`, stored in blocks.
//! - [`control`]: `tokens`, `secrets` and `agents` (certificates), written by the control plane,
//!   and `workers` (which agent identity each worker id belongs to), written with shard batches.
//! - [`retention`]: what retention deletes (expired jobs' output, old events and audit
//!   records), in bounded writes off the shard threads; [`checkpoint`]: where an audit chain
//!   starts once its oldest records are gone.
//!
//! Every write that changes state carries the audit records of that change in the same
//! batch. Records are framed or tagged, so bytes of another format are refused with a clear
//! error instead of misread.

mod checkpoint;
pub mod commit;
mod compaction;
pub mod control;
mod data_dir;
#[cfg(test)]
mod full_tests;
mod handle;
pub mod health;
mod jobs;
mod journal;
mod keys;
mod logs;
mod retention;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use fjall::config::FilterPolicy;
use fjall::{Database, KeyspaceCreateOptions, PersistMode};

pub use checkpoint::Checkpoint;
pub use commit::{Batch, Committer, Outcome};
pub use compaction::{Compacted, Compaction};
pub use control::AgentCert;
pub use data_dir::claim_data_dir;
pub use handle::{Db, Ks, KsIter, Kv, WriteBatch};
pub use health::{DEFAULT_MIN_FREE, Health, StoreFull, is_full};
pub use retention::Swept;

use handle::{Handles, KEYSPACES, Shared};

/// The store, shared by all shard threads (fjall is thread-safe). Its fields look up the
/// database open now at each call, so that every clone follows a reopen ([`handle`]).
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    db: Db,
    jobs: Ks,
    output: Ks,
    meta: Ks,
    events: Ks,
    tokens: Ks,
    secrets: Ks,
    agents: Ks,
    workers: Ks,
    audit: Ks,
    /// Jobs deleted by retention whose output is still to delete.
    expired: Ks,
    clean: PathBuf,
}
impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

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

impl Store {
    /// Opens (or creates) the store under a claimed data dir, with the default free-space
    /// watermark.
    pub fn open(data_dir: &Path) -> Result<Self> {
        Self::open_with(data_dir, DEFAULT_MIN_FREE)
    }

    /// Opens (or creates) the store under a claimed data dir; below `min_free` bytes free
    /// new submits are refused, below a quarter of it nothing is written ([`Health`]).
    pub fn open_with(data_dir: &Path, min_free: u64) -> Result<Self> {
        let path: PathBuf = data_dir.join("store");
        let clean = data_dir.join(journal::CLEAN);
        let was_clean = clean.exists();
        let handles = open_handles(&path, was_clean, 0)?;
        let _ = std::fs::remove_file(&clean);
        let health = Health::new(data_dir, min_free);
        let shared = Arc::new(Shared::new(path, handles, health, reopen_handles));
        let ks = |name: &str| Ks {
            shared: Arc::clone(&shared),
            index: KEYSPACES
                .iter()
                .position(|k| *k == name)
                .unwrap_or(usize::MAX),
        };
        Ok(Self {
            jobs: ks("jobs"),
            output: ks("output"),
            meta: ks("meta"),
            events: ks("events"),
            tokens: ks("tokens"),
            agents: ks("agents"),
            workers: ks("workers"),
            secrets: ks("secrets"),
            audit: ks("audit"),
            expired: ks("expired"),
            db: Db {
                shared: Arc::clone(&shared),
            },
            shared,
            clean,
        })
    }

    /// Whether the store takes writes, shared with every clone.
    #[must_use]
    pub fn health(&self) -> &Health {
        &self.shared.health
    }

    /// How often the database was reopened after a failed write since the store opened.
    #[must_use]
    pub fn reopens(&self) -> u64 {
        self.shared
            .reopens
            .load(std::sync::atomic::Ordering::Relaxed)
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

    /// Bytes the store holds on disk (fjall's tables and journals).
    #[must_use]
    pub fn disk_space(&self) -> u64 {
        self.db.disk_space()
    }

    /// Flushes everything (shutdown).
    pub fn persist(&self) -> Result<()> {
        self.db
            .persist(PersistMode::SyncAll)
            .context("cannot flush the store")
    }
}

/// Opens the database at `path`, with the journal checks around fjall's recovery: after
/// a clean stop lost journal bytes are damage; after a crash they are logged; at a reopen
/// after a failed write up to `torn` of them are that write's torn tail.
fn open_handles(path: &Path, was_clean: bool, torn: u64) -> Result<Handles> {
    journal::refuse_kept_damage(path)?;
    let copies = journal::snapshot_journals(path)?;
    // A smaller journal bound (fjall's default is 512 MiB) makes fjall flush memtables
    // sooner, so a restart after a crash replays less: measured with 1M jobs.
    let db = Database::builder(path)
        .max_journaling_size(JOURNAL_BYTES)
        .worker_threads(FJALL_WORKERS)
        .open()
        .with_context(|| {
            format!(
                "cannot open the store at {} (is another server using it, or is it corrupt?)",
                path.display()
            )
        })?;
    if let Err(e) = journal::check_journals(&copies, was_clean, torn) {
        // Put the journals back as they were, so that nothing is lost by refusing.
        drop(db);
        for c in &copies {
            if let Err(err) = c.restore() {
                tracing::error!("cannot restore {}: {err}", c.path.display());
            }
        }
        return Err(e);
    }
    // No bloom filters: every keyspace is read by scans (jobs at start, events, audit,
    // output), except `meta` with its one key. Building them cost flush CPU for nothing.
    let ks = KEYSPACES
        .iter()
        .map(|name| {
            db.keyspace(name, || {
                KeyspaceCreateOptions::default()
                    .max_memtable_size(MEMTABLE_BYTES)
                    .filter_policy(FilterPolicy::disabled())
                    .compaction_strategy(std::sync::Arc::new(
                        fjall::compaction::Leveled::default().with_l0_threshold(L0_TABLES),
                    ))
            })
            .with_context(|| format!("cannot open keyspace {name}"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Handles { db, ks })
}

/// Opens the database again after a failed write (the server did not stop cleanly).
fn reopen_handles(path: &Path, torn: u64) -> Result<Handles> {
    // A store directory that went away would be created empty by fjall: refuse instead.
    if !path.join("keyspaces").is_dir() {
        bail!("{} is gone or damaged: not reopening it", path.display());
    }
    open_handles(path, false, torn)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fresh directory under the system's temp dir, unique to this process and `name`.
    pub(crate) fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hodei-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// A new store in a claimed, empty data dir.
    pub(crate) fn fresh(name: &str) -> Result<(PathBuf, Store)> {
        let dir = tempdir(name);
        claim_data_dir(&dir)?;
        let store = Store::open(&dir)?;
        Ok((dir, store))
    }
}
