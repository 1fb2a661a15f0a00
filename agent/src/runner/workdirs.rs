//! Default working directories (`<work_root>/jobs/<job>-<attempt>`), recycled.
//!
//! A job without a `workdir` of its own gets a fresh, empty directory. Making one with
//! `mkdir` and removing it with `rmdir` for every attempt allocates and frees an inode and
//! a block each time; on ext4 that was a quarter of an agent's CPU with `/bin/true` jobs
//! (inode bitmap scans past recently deleted inodes, a discard of the freed block: `perf`,
//! `tuning/README.md`). So an emptied directory is renamed to a spare name instead of removed,
//! and the next attempt renames a spare into place: a rename in one directory touches no
//! inode or block allocation.
//!
//! Only a directory the job left empty is recycled; one holding files is kept, as before. A
//! process that escaped the job's process group could still hold a recycled directory as its
//! cwd; the agent tracks no such process anyway (it SIGKILLs the group at the end).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Spare directories kept at most (more than the slots any host runs is no gain).
const MAX_SPARES: usize = 256;

/// Name prefix of spares inside `<work_root>/jobs`; job directories never start with a dot.
const SPARE_PREFIX: &str = ".spare-";

/// The spares of one agent.
#[derive(Debug, Default)]
pub struct Workdirs {
    inner: Mutex<Spares>,
}

#[derive(Debug, Default)]
struct Spares {
    /// Empty directories ready to be renamed into place.
    free: Vec<PathBuf>,
    /// Numbers the next spare name.
    next: u64,
}

impl Workdirs {
    /// Makes `dir` (a default working directory) exist and be empty, from a spare if there is
    /// one. The caller reports the error.
    pub fn acquire(&self, dir: &Path) -> std::io::Result<()> {
        let spare = self.lock().free.pop();
        if let Some(spare) = spare {
            if std::fs::rename(&spare, dir).is_ok() {
                return Ok(());
            }
            // Gone or replaced behind our back (a cleanup of the work root): make one.
            let _ = std::fs::remove_dir(&spare);
        }
        std::fs::create_dir_all(dir)
    }

    /// After the attempt: an empty `dir` becomes a spare (or is removed when there are enough);
    /// a directory holding files, or none at all, is left alone.
    pub fn release(&self, dir: &Path) {
        let empty = match std::fs::read_dir(dir) {
            Ok(mut entries) => entries.next().is_none(),
            Err(_) => return,
        };
        if !empty {
            return;
        }
        let spare = {
            let mut s = self.lock();
            if s.free.len() >= MAX_SPARES {
                None
            } else {
                s.next += 1;
                dir.parent()
                    .map(|p| p.join(format!("{SPARE_PREFIX}{}", s.next)))
            }
        };
        // A leftover of an earlier run under the same name is an empty spare too: rename
        // replaces an empty directory, and fails on a non-empty one.
        match spare {
            Some(spare) if std::fs::rename(dir, &spare).is_ok() => self.lock().free.push(spare),
            _ => {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }

    /// Removes the spares an earlier run left in `jobs` (empty ones only).
    pub fn clean_leftovers(jobs: &Path) {
        for e in std::fs::read_dir(jobs).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(SPARE_PREFIX) {
                let _ = std::fs::remove_dir(e.path());
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Spares> {
        // The lists hold plain paths: a panic elsewhere cannot leave them inconsistent.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
