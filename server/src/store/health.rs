//! Whether the store can take writes, and why not. A full filesystem must not stop the
//! server: [`Health`] tells the shards to refuse new submits below the free-space watermark
//! (`hodei server --min-free-space`), so that what running jobs still report fits, and to
//! refuse every client write once the store is [full](State::Full): below the hard floor
//! (a quarter of the watermark) nothing is handed to fjall, because a write that fails
//! there poisons the whole database and costs a reopen. Writes start again by themselves
//! once a commit succeeds.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tracing::{info, warn};

/// The default of `hodei server --min-free-space`: room for the results and output of the
/// jobs already running, and for fjall to flush its memtables (16 MiB each).
pub const DEFAULT_MIN_FREE: u64 = 256 << 20;

/// A write refused because the store has no room: the message names the cause. The store
/// keeps what it was asked to write; nothing of it was acknowledged.
#[derive(Debug, thiserror::Error)]
#[error("store full: {0}")]
pub struct StoreFull(pub String);

/// Whether `e` (anywhere in its chain) is a [`StoreFull`]: the batch is to be held and
/// written again, not a reason to stop.
#[must_use]
pub fn is_full(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<StoreFull>().is_some())
}

/// The store's writability, shared by every shard, the control plane and commit threads.
#[derive(Debug)]
pub struct Health {
    /// Where the store lives: the filesystem whose free space counts.
    dir: PathBuf,
    /// Below this, new submits are refused.
    watermark: u64,
    /// Below this, nothing is written (a quarter of the watermark).
    floor: u64,
    /// Bytes free at the last reading.
    free: AtomicU64,
    /// A write failed for lack of room, or the database must be reopened first.
    full: AtomicBool,
    /// Why it is full, as the refusals say it.
    cause: Mutex<String>,
}

impl Health {
    /// Health of a store in `dir`, with the watermark `min_free` (0 turns the checks off;
    /// a failed write is still survived).
    #[must_use]
    pub fn new(dir: &Path, min_free: u64) -> Self {
        let h = Self {
            dir: dir.to_path_buf(),
            watermark: min_free,
            floor: min_free / 4,
            free: AtomicU64::new(u64::MAX),
            full: AtomicBool::new(false),
            cause: Mutex::new(String::new()),
        };
        h.read_free();
        h
    }

    /// Reads the free space now (`statvfs`: available to unprivileged users, as fjall's
    /// files are written by whoever runs the server).
    fn read_free(&self) -> u64 {
        let free = match nix::sys::statvfs::statvfs(&self.dir) {
            Ok(s) => s.blocks_available().saturating_mul(s.fragment_size()),
            // Unreadable: let the writes themselves tell.
            Err(_) => u64::MAX,
        };
        self.free.store(free, Ordering::Relaxed);
        free
    }

    /// Whether client writes are refused: a write failed for lack of room (or below the
    /// floor), and none has succeeded since.
    #[must_use]
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Acquire)
    }

    /// Why the store is full, as a refusal says it (`store full: ...`).
    #[must_use]
    pub fn refusal(&self) -> String {
        let cause = self.cause.lock().map(|c| c.clone()).unwrap_or_default();
        StoreFull(cause).to_string()
    }

    /// `Err(message)` if a new submit must be refused: the store is full, or free space is
    /// below the watermark (what is left is kept for the jobs already running).
    pub fn admit_submit(&self) -> Result<(), String> {
        if self.is_full() {
            return Err(self.refusal());
        }
        // Read now, not cached: a submit let in just before the disk filled would wait
        // (acknowledged only once written) until space is freed. It costs ~1 µs.
        let free = self.read_free();
        if free < self.watermark {
            return Err(StoreFull(format!(
                "{} free on {}, below the {} watermark (hodei server --min-free-space); new jobs are refused until space is freed",
                mib(free),
                self.dir.display(),
                mib(self.watermark)
            ))
            .to_string());
        }
        Ok(())
    }

    /// `Err(message)` if a client write other than a submit must be refused (store full).
    pub fn admit_write(&self) -> Result<(), String> {
        if self.is_full() {
            return Err(self.refusal());
        }
        Ok(())
    }

    /// Before a write is handed to fjall: refused below the hard floor, since a write that
    /// fails inside fjall poisons the database.
    pub fn before_write(&self) -> Result<(), StoreFull> {
        let free = self.read_free();
        if free < self.floor {
            let cause = format!(
                "{} free on {}, below the {} floor (a quarter of --min-free-space); writes wait until space is freed",
                mib(free),
                self.dir.display(),
                mib(self.floor)
            );
            self.set_full(&cause);
            return Err(StoreFull(cause));
        }
        Ok(())
    }

    /// Whether `bytes` more can be written (a compaction's copy of a keyspace) and leave
    /// the watermark free.
    #[must_use]
    pub fn has_room(&self, bytes: u64) -> bool {
        self.read_free() >= bytes.saturating_add(self.watermark)
    }

    /// A write failed for lack of room (or must wait for a reopen): client writes are
    /// refused with `cause` until one succeeds.
    pub fn set_full(&self, cause: &str) {
        let was = self.full.swap(true, Ordering::AcqRel);
        if let Ok(mut c) = self.cause.lock() {
            cause.clone_into(&mut c);
        }
        if !was {
            warn!(
                "store full: {cause}; client writes are refused, reads are served, and writing resumes by itself when space is freed"
            );
        }
    }

    /// A write succeeded: the store takes writes again.
    pub fn set_writable(&self) {
        if self.full.swap(false, Ordering::AcqRel) {
            info!(
                free = %mib(self.read_free()),
                "store writable again: held batches are written, client writes accepted"
            );
        }
    }
}

/// A byte count in MiB, for messages.
fn mib(bytes: u64) -> String {
    if bytes == u64::MAX {
        return "unknown space".to_owned();
    }
    format!("{} MiB", bytes >> 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A watermark above any disk refuses submits and names the cause; a failed write
    /// refuses every write until one succeeds.
    #[test]
    fn refusals_name_the_cause() {
        let dir = std::env::temp_dir();
        let h = Health::new(&dir, u64::MAX / 2);
        let why = h.admit_submit().err().unwrap_or_default();
        assert!(
            why.starts_with("store full: ") && why.contains("below the"),
            "{why}"
        );
        assert!(
            h.admit_write().is_ok(),
            "only submits wait for the watermark"
        );
        assert!(
            h.before_write().is_err(),
            "below the floor nothing is written"
        );
        assert!(h.admit_write().is_err());
        h.set_writable();
        let ok = Health::new(&dir, 0);
        assert!(ok.admit_submit().is_ok());
        ok.set_full("No space left on device");
        assert_eq!(
            ok.admit_write().err().as_deref(),
            Some("store full: No space left on device")
        );
        ok.set_writable();
        assert!(ok.admit_submit().is_ok());
    }
}
