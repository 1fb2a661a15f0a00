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
//! Kept directories (`jobs/<job>-<attempt>`, and the `left-...` of a crash) are removed once
//! nothing changed in them for `hodei agent --keep-workdirs` (default 1 day) ([`sweep_kept`],
//! at start and then periodically, off the runtime thread), so an agent's disk does not fill
//! with the leftovers of months of jobs. Their age is their last change of content or of name
//! (the later of mtime and ctime): the rename that keeps one counts as its start.
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

/// Removes the kept working directories in `jobs` that nothing changed for `keep` at `now`;
/// returns how many. Run directories of the pool (names starting with a dot) are never
/// touched. Errors are logged and the directory is tried again next time.
pub fn sweep_kept(jobs: &Path, keep: std::time::Duration, now: std::time::SystemTime) -> usize {
    use std::os::unix::fs::MetadataExt;
    let mut removed = 0;
    for e in std::fs::read_dir(jobs).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        // Not followed: a link the job left is removed as a link, never what it points to.
        let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        let changed = meta.mtime().max(meta.ctime());
        let at = std::time::UNIX_EPOCH
            .checked_add(std::time::Duration::from_secs(
                u64::try_from(changed).unwrap_or(0),
            ))
            .unwrap_or(std::time::UNIX_EPOCH);
        let age = now.duration_since(at).unwrap_or_default();
        if age < keep {
            continue;
        }
        let gone = if meta.is_dir() {
            std::fs::remove_dir_all(e.path())
        } else {
            std::fs::remove_file(e.path())
        };
        match gone {
            Ok(()) => removed += 1,
            Err(err) => {
                tracing::warn!(dir = %e.path().display(), error = %err, "cannot remove a kept working directory")
            }
        }
    }
    removed
}

fn run_dir(jobs: &Path, n: u32) -> PathBuf {
    jobs.join(format!("{RUN_PREFIX}{n}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    /// Kept directories older than the bound go, with their contents; younger ones and the
    /// pool's run directories stay.
    #[test]
    fn kept_directories_are_removed_after_the_bound() {
        let jobs = std::env::temp_dir().join(format!("hodei-sweep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&jobs);
        for d in ["j1-1", "left-5-run-2", ".run-1"] {
            std::fs::create_dir_all(jobs.join(d).join("sub")).unwrap();
            std::fs::write(jobs.join(d).join("sub/file"), b"x").unwrap();
        }
        let day = Duration::from_secs(24 * 3600);
        let now = SystemTime::now();
        assert_eq!(sweep_kept(&jobs, day, now), 0);
        assert!(jobs.join("j1-1/sub/file").exists());
        assert_eq!(
            sweep_kept(&jobs, day, now + day + Duration::from_secs(5)),
            2
        );
        assert!(!jobs.join("j1-1").exists() && !jobs.join("left-5-run-2").exists());
        assert!(jobs.join(".run-1/sub/file").exists());
        let _ = std::fs::remove_dir_all(&jobs);
    }
}
