//! The open fjall database behind every [`Store`](super::Store) clone, and its reopening.
//!
//! After a failed journal write or persist fjall poisons the database: every later write
//! fails. A full disk must not stop the server, so the database is reopened once space
//! allows (fjall's recovery truncates the torn tail of the failed write). For that no handle
//! may outlive the reopen, so the rest of the store never holds a fjall `Database` or
//! `Keyspace`: it holds a [`Ks`] or [`Db`], which look up the database open now at each
//! call, and writes go through [`WriteBatch`], which classifies their failures (a full
//! disk is [`StoreFull`], to be retried; anything else is fatal).

use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::{Result, anyhow};
use fjall::{Database, Keyspace, PersistMode, UserKey, UserValue};
use tracing::{info, warn};

use super::health::{Health, StoreFull};

/// The keyspaces, in the order [`Handles::ks`] holds them.
pub(super) const KEYSPACES: [&str; 10] = [
    "jobs", "output", "meta", "events", "tokens", "secrets", "agents", "workers", "audit",
    "expired",
];

/// An open database and its keyspaces (by [`KEYSPACES`] index).
pub(super) struct Handles {
    pub(super) db: Database,
    pub(super) ks: Vec<Keyspace>,
}

/// What every clone of a store shares: the database open now, and its health.
pub(super) struct Shared {
    /// `<data-dir>/store`.
    path: PathBuf,
    pub(super) health: Health,
    /// `None` only while a reopen has dropped the old database and not opened the new one
    /// (or could not: then reads fail until a reopen succeeds).
    open: RwLock<Option<Handles>>,
    /// Opens the database again (journal checks included).
    opener: Opener,
    /// One reopen at a time.
    reopening: Mutex<()>,
    /// fjall refused a write and poisoned the database: reopen before the next write.
    needs_reopen: AtomicBool,
    /// A write failed for a reason other than space: a poisoned database is then fatal.
    fatal: AtomicBool,
    /// Bytes that failed writes may have left in the journal since it was opened: what
    /// recovery may drop at the reopen without it being damage.
    torn: AtomicU64,
    /// Reopens done since the store was opened.
    pub(super) reopens: AtomicU64,
}

/// Opens a database: `open` does the journal checks around fjall's recovery.
pub(super) type Opener = fn(&Path, u64) -> Result<Handles>;

impl Shared {
    pub(super) fn new(path: PathBuf, handles: Handles, health: Health, opener: Opener) -> Self {
        Self {
            path,
            health,
            opener,
            open: RwLock::new(Some(handles)),
            reopening: Mutex::new(()),
            needs_reopen: AtomicBool::new(false),
            fatal: AtomicBool::new(false),
            torn: AtomicU64::new(0),
            reopens: AtomicU64::new(0),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&Handles) -> T) -> Option<T> {
        let g = self.open.read().ok()?;
        g.as_ref().map(f)
    }

    /// Runs `f` on one consistent view of the database open now (a fjall snapshot; a write
    /// batch is in it whole or not at all), with the keyspaces by [`KEYSPACES`] index.
    /// `None` while the store is being reopened.
    pub(super) fn snapshot<T>(
        &self,
        f: impl FnOnce(&fjall::Snapshot, &[Keyspace]) -> T,
    ) -> Option<T> {
        self.with(|h| f(&h.db.snapshot(), &h.ks))
    }

    /// Writes `items` as one fjall batch: refused without calling fjall below the floor or
    /// while a reopen is due and cannot happen; reopens first when it can.
    fn commit(&self, items: &[Item], durability: Option<PersistMode>) -> Result<()> {
        self.health.before_write()?;
        self.reopen_if_due()?;
        // What the journal may hold of this batch if it fails half-written: each item's
        // bytes and fjall's framing (21 bytes an item, start and end markers).
        let bound = items.iter().fold(64u64, |n, i| {
            n.saturating_add(
                i.key.len() as u64 + i.value.as_ref().map_or(0, |v| v.len() as u64) + 32,
            )
        });
        let r = self
            .with(|h| {
                let mut b = h.db.batch().durability(durability);
                for i in items {
                    let Some(ks) = h.ks.get(i.ks) else {
                        return Err(fjall::Error::KeyspaceDeleted);
                    };
                    match &i.value {
                        Some(v) => b.insert(ks, i.key.clone(), v.clone()),
                        None => b.remove(ks, i.key.clone()),
                    }
                }
                b.commit()
            })
            .ok_or_else(|| StoreFull("the store is being reopened after a failed write".into()))?;
        match r {
            Ok(()) => {
                self.health.set_writable();
                Ok(())
            }
            Err(e) => Err(self.failed(e, bound)),
        }
    }

    /// Flushes the journal (shutdown); refused while a reopen is due.
    fn persist(&self, mode: PersistMode) -> Result<()> {
        if self.needs_reopen.load(Ordering::Acquire) {
            return Err(StoreFull(self.health.refusal()).into());
        }
        match self.with(|h| h.db.persist(mode)) {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(self.failed(e, 0)),
            None => Err(StoreFull("the store is being reopened".into()).into()),
        }
    }

    /// Classifies a write's failure: no room (or the poison of an earlier one) is
    /// [`StoreFull`] and a reopen is due; anything else is fatal.
    fn failed(&self, e: fjall::Error, bound: u64) -> anyhow::Error {
        let cause = match &e {
            fjall::Error::Poisoned if !self.fatal.load(Ordering::Acquire) => format!(
                "the store stopped taking writes after an earlier failure (fjall's log says which), {}",
                "and is reopened when space allows"
            ),
            e if is_space(e) => {
                self.torn.fetch_add(bound, Ordering::AcqRel);
                format!("{e} (writing {})", self.path.display())
            }
            _ => {
                self.fatal.store(true, Ordering::Release);
                return anyhow::Error::new(e);
            }
        };
        self.needs_reopen.store(true, Ordering::Release);
        self.health.set_full(&cause);
        StoreFull(cause).into()
    }

    /// Reopens the database if a failed write poisoned it. Every handle is dropped first
    /// (fjall holds a lock file until then); readers wait for the few milliseconds it takes.
    fn reopen_if_due(&self) -> Result<()> {
        if !self.needs_reopen.load(Ordering::Acquire) {
            return Ok(());
        }
        let _one = self
            .reopening
            .lock()
            .map_err(|_| anyhow!("store reopen lock poisoned"))?;
        if !self.needs_reopen.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut open = self
            .open
            .write()
            .map_err(|_| anyhow!("store lock poisoned"))?;
        // Stops fjall's worker and releases its lock file.
        drop(open.take());
        let torn = self.torn.load(Ordering::Acquire);
        match (self.opener)(&self.path, torn) {
            Ok(h) => {
                *open = Some(h);
                self.torn.store(0, Ordering::Release);
                self.needs_reopen.store(false, Ordering::Release);
                self.reopens.fetch_add(1, Ordering::Relaxed);
                info!(torn_bound = torn, "store reopened after a failed write");
                Ok(())
            }
            Err(e)
                if e.chain().any(|c| {
                    c.downcast_ref::<fjall::Error>().is_some_and(is_space)
                        || c.downcast_ref::<std::io::Error>().is_some_and(io_space)
                }) =>
            {
                let cause = format!("cannot reopen the store yet: {e:#}");
                warn!("{cause}");
                self.health.set_full(&cause);
                Err(StoreFull(cause).into())
            }
            Err(e) => {
                self.fatal.store(true, Ordering::Release);
                Err(e.context("cannot reopen the store after a failed write"))
            }
        }
    }
}

/// Whether a fjall error is a full filesystem (or quota).
fn is_space(e: &fjall::Error) -> bool {
    match e {
        fjall::Error::Io(io) | fjall::Error::Storage(fjall::LsmError::Io(io)) => io_space(io),
        _ => false,
    }
}

fn io_space(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
        || matches!(e.raw_os_error(), Some(c) if c == nix::libc::ENOSPC || c == nix::libc::EDQUOT)
}

fn unavailable() -> fjall::Error {
    fjall::Error::Io(std::io::Error::other(
        "the store is being reopened after a failed write",
    ))
}

/// One keyspace of the store, looked up in the database open now at each call (same
/// methods as fjall's `Keyspace`).
#[derive(Clone)]
pub struct Ks {
    pub(super) shared: Arc<Shared>,
    pub(super) index: usize,
}

impl Ks {
    fn scan(&self, f: impl FnOnce(&Keyspace) -> fjall::Iter) -> KsIter {
        self.shared
            .with(|h| h.ks.get(self.index).map(f))
            .flatten()
            .map_or(KsIter::Closed(false), KsIter::Open)
    }

    /// Every entry, in key order.
    pub fn iter(&self) -> KsIter {
        self.scan(Keyspace::iter)
    }

    /// Entries whose key starts with `prefix`.
    pub fn prefix<K: AsRef<[u8]>>(&self, prefix: K) -> KsIter {
        self.scan(|k| k.prefix(prefix))
    }

    /// Entries in `range`.
    pub fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> KsIter {
        self.scan(|k| k.range(range))
    }

    /// Puts one value (its own batch, flushed to the OS: what fjall's `insert` does).
    pub fn insert<K: Into<UserKey>, V: Into<UserValue>>(&self, key: K, value: V) -> Result<()> {
        let item = Item {
            ks: self.index,
            key: key.into(),
            value: Some(value.into()),
        };
        self.shared.commit(&[item], Some(PersistMode::Buffer))
    }

    /// Bytes this keyspace holds on disk (its tables); 0 while the store is reopened.
    pub fn disk_space(&self) -> u64 {
        self.shared
            .with(|h| h.ks.get(self.index).map(Keyspace::disk_space))
            .flatten()
            .unwrap_or(0)
    }

    /// Merges every table of this keyspace into its last level, dropping what tombstones
    /// cover (fjall's major compaction; blocks until done). The database stays open under
    /// it: a reopen after a failed write waits for it to end.
    pub fn major_compact(&self) -> Result<()> {
        match self
            .shared
            .with(|h| h.ks.get(self.index).map(Keyspace::major_compact))
            .flatten()
        {
            Some(r) => r.map_err(|e| anyhow!("compaction failed: {e}")),
            None => Ok(()),
        }
    }

    /// The value at `key`.
    pub fn get<K: AsRef<[u8]>>(&self, key: K) -> fjall::Result<Option<UserValue>> {
        self.shared
            .with(|h| h.ks.get(self.index).map(|k| k.get(key)))
            .flatten()
            .unwrap_or_else(|| Err(unavailable()))
    }
}

/// A scan of a [`Ks`]: fjall's iterator, or one error while the store is being reopened.
pub enum KsIter {
    Open(fjall::Iter),
    /// Whether its one error was handed out.
    Closed(bool),
}

/// One entry of a [`KsIter`] (fjall's `Guard`, or the reopen's error).
pub enum Kv {
    Open(fjall::Guard),
    Closed,
}

impl Kv {
    /// The key and value.
    pub fn into_inner(self) -> fjall::Result<(UserKey, UserValue)> {
        match self {
            Self::Open(g) => g.into_inner(),
            Self::Closed => Err(unavailable()),
        }
    }
}

impl Iterator for KsIter {
    type Item = Kv;
    fn next(&mut self) -> Option<Kv> {
        match self {
            Self::Open(i) => i.next().map(Kv::Open),
            Self::Closed(done) => (!std::mem::replace(done, true)).then_some(Kv::Closed),
        }
    }
}

impl DoubleEndedIterator for KsIter {
    fn next_back(&mut self) -> Option<Kv> {
        match self {
            Self::Open(i) => i.next_back().map(Kv::Open),
            Self::Closed(done) => (!std::mem::replace(done, true)).then_some(Kv::Closed),
        }
    }
}

/// The database of the store (same methods as fjall's `Database` that the store uses).
#[derive(Clone)]
pub struct Db {
    pub(super) shared: Arc<Shared>,
}

impl Db {
    /// A new write batch (durability: fjall's default until set).
    #[must_use]
    pub fn batch(&self) -> WriteBatch {
        WriteBatch {
            db: self.clone(),
            items: Vec::new(),
            durability: Some(PersistMode::Buffer),
        }
    }

    /// Flushes the journal with `mode`.
    pub fn persist(&self, mode: PersistMode) -> Result<()> {
        self.shared.persist(mode)
    }

    /// Bytes the database holds on disk (tables and journals); 0 while it is reopened.
    #[must_use]
    pub fn disk_space(&self) -> u64 {
        self.shared
            .with(|h| h.db.disk_space().unwrap_or(0))
            .unwrap_or(0)
    }
}

struct Item {
    ks: usize,
    key: UserKey,
    /// `None`: a removal.
    value: Option<UserValue>,
}

/// Writes to several keyspaces, committed atomically to the database open at commit.
pub struct WriteBatch {
    db: Db,
    items: Vec<Item>,
    durability: Option<PersistMode>,
}

impl WriteBatch {
    /// How the commit is flushed.
    #[must_use]
    pub fn durability(mut self, mode: Option<PersistMode>) -> Self {
        self.durability = mode;
        self
    }

    /// Puts `value` at `key`.
    pub fn insert<K: Into<UserKey>, V: Into<UserValue>>(&mut self, ks: &Ks, key: K, value: V) {
        self.items.push(Item {
            ks: ks.index,
            key: key.into(),
            value: Some(value.into()),
        });
    }

    /// Removes `key`.
    pub fn remove<K: Into<UserKey>>(&mut self, ks: &Ks, key: K) {
        self.items.push(Item {
            ks: ks.index,
            key: key.into(),
            value: None,
        });
    }

    /// Commits it; an error that is [`StoreFull`] means nothing is lost by retrying.
    pub fn commit(self) -> Result<()> {
        if self.items.is_empty() {
            return Ok(());
        }
        self.db.shared.commit(&self.items, self.durability)
    }
}
