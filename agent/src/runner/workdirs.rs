//! Default working directories: a pool of run directories `<work_root>/jobs/.run-N`.
//!
//! A job without a `workdir` of its own runs in an empty directory of the pool. When the
//! server has acknowledged its result and its process has ended, a directory the job left
//! empty goes back to the pool as it is; one holding files (or one the agent cannot read) is
//! renamed to `jobs/<job>-<attempt>` and kept, as before.
//!
//! Why a pool and not a directory per attempt: `mkdir` plus `rmdir` for every attempt
//! allocates and frees an inode and a block each time, a quarter of an agent's CPU with
//! `/bin/true` jobs on ext4 (inode bitmap scans, a discard per freed block); renaming a spare
//! into place and back still cost a tenth of it (two renames per job, each looking its path
//! up through a directory that grows with every job name ever used). An empty run directory
//! is reused in place: the only syscalls per attempt are a `mkdir` that finds it there and
//! the emptiness check (open, read the entries, close; `tuning/README.md`).
//!
//! A process that escaped the job's process group could still hold a pooled directory as its
//! cwd and write into it later; the agent tracks no such process anyway (it SIGKILLs the
//! group at the end).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hodei_core::ids::{Attempt, JobId};

/// Empty run directories kept at most (more than the slots any host runs is no gain).
const MAX_FREE: usize = 256;

/// Name prefix of run directories inside `<work_root>/jobs`; job directories never start
/// with a dot.
const RUN_PREFIX: &str = ".run-";

/// Name prefix of the spares an older agent kept (removed at start when empty).
const OLD_SPARE_PREFIX: &str = ".spare-";

/// The run directories of one agent.
#[derive(Debug, Default)]
pub struct Workdirs {
    inner: Mutex<Pool>,
}

#[derive(Debug, Default)]
struct Pool {
    /// Numbers whose directory is free: empty, or absent (made again on use).
    free: Vec<u32>,
    /// Numbers the next new directory.
    next: u32,
    /// The directory each attempt runs in.
    busy: HashMap<(JobId, Attempt), u32>,
}

impl Workdirs {
    /// An existing, empty directory under `jobs` for the attempt; the caller reports the error.
    pub fn acquire(&self, jobs: &Path, job: JobId, attempt: Attempt) -> std::io::Result<PathBuf> {
        let n = {
            let mut p = self.lock();
            let n = p.free.pop().unwrap_or_else(|| {
                p.next += 1;
                p.next
            });
            let earlier = p.busy.insert((job, attempt), n);
            // An attempt is spawned once: a second acquire would leak the first number.
            debug_assert!(earlier.is_none(), "{job}-{attempt} acquired twice");
            n
        };
        let dir = run_dir(jobs, n);
        // Makes it again if the job before removed it (or a cleanup did); an existing one was
        // found empty when it was released.
        match std::fs::create_dir(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&dir)?;
                Ok(dir)
            }
            Err(e) => {
                // Not this attempt's any more: the next acquire may try the number again.
                let mut p = self.lock();
                p.busy.remove(&(job, attempt));
                p.free.push(n);
                Err(e)
            }
        }
    }

    /// After the attempt's result is acknowledged: its directory goes back to the pool if the
    /// job left it empty, and is renamed to `jobs/<job>-<attempt>` (kept) otherwise. An
    /// attempt that ran in a directory of its spec's own has nothing here.
    pub fn release(&self, jobs: &Path, job: JobId, attempt: Attempt) {
        let Some(n) = self.lock().busy.remove(&(job, attempt)) else {
            return;
        };
        let dir = run_dir(jobs, n);
        let keep = match std::fs::read_dir(&dir) {
            Ok(mut entries) => entries.next().is_some(),
            // Removed by the job itself: the number is free, the next acquire makes it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            // Unreadable (the job took its permissions away) or not a directory any more:
            // never hand it to another job.
            Err(_) => true,
        };
        if keep {
            let named = jobs.join(format!("{job}-{attempt}"));
            if let Err(e) = std::fs::rename(&dir, &named) {
                // Never reuse a directory holding a job's files: this number is retired.
                tracing::warn!(dir = %dir.display(), error = %e, "cannot keep a job's working directory");
                return;
            }
        }
        let mut p = self.lock();
        if p.free.len() < MAX_FREE {
            p.free.push(n);
        } else {
            drop(p);
            let _ = std::fs::remove_dir(&dir);
        }
    }

    /// At start, before any job runs: removes the empty run directories an earlier run left in
    /// `jobs`, and renames those holding files (a crash before their results were
    /// acknowledged) to `left-<unix ms>-run-N` so that no job is given them. A leftover that
    /// cannot be moved keeps its number out of the pool.
    pub fn clean_leftovers(&self, jobs: &Path) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let mut taken = 0;
        for e in std::fs::read_dir(jobs).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix(RUN_PREFIX) {
                if std::fs::remove_dir(e.path()).is_ok() {
                    continue;
                }
                let aside = jobs.join(format!("left-{now}-run-{rest}"));
                if let Err(err) = std::fs::rename(e.path(), &aside) {
                    tracing::warn!(dir = %e.path().display(), error = %err, "cannot set aside a leftover working directory");
                    taken = taken.max(rest.parse::<u32>().unwrap_or(0));
                }
            } else if name.starts_with(OLD_SPARE_PREFIX) {
                let _ = std::fs::remove_dir(e.path());
            }
        }
        let mut p = self.lock();
        p.next = p.next.max(taken);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        // The pool holds plain numbers: a panic elsewhere cannot leave it inconsistent.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn run_dir(jobs: &Path, n: u32) -> PathBuf {
    jobs.join(format!("{RUN_PREFIX}{n}"))
}
