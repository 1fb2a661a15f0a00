//! Journal damage detection. fjall recovers a journal by truncating it at the first batch it
//! cannot read: right for the torn tail of a crash (a commit never acknowledged), silent loss
//! of acknowledged jobs if the damage is in the middle. So [`Store::open`](super::Store::open)
//! copies each journal first ([`snapshot_journals`]) and, after fjall's recovery, compares
//! ([`check_journals`]): lost bytes after a clean shutdown are damage and the server refuses to
//! start (journals put back as they were); after a crash they are logged loudly and kept.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Written on a clean shutdown, removed at start: tells whether a torn journal tail is
/// expected (after a crash) or means damage (after a clean stop).
pub(super) const CLEAN: &str = "clean-shutdown";

/// A journal's bytes up to its last non-zero byte (journals are preallocated with zeros).
pub(super) struct JournalCopy {
    pub(super) path: PathBuf,
    bytes: Vec<u8>,
    /// File length (zeros after `bytes`).
    len: u64,
}

impl JournalCopy {
    /// Puts the journal back exactly as it was.
    pub(super) fn restore(&self) -> std::io::Result<()> {
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
pub(super) fn snapshot_journals(store: &Path) -> Result<Vec<JournalCopy>> {
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
/// is most likely the torn tail of an unacknowledged commit, logged loudly. At a reopen
/// after failed writes (`torn` > 0: the most those writes can have left in the journal),
/// up to `torn` bytes lost is their torn tail: nothing of them was acknowledged, and the
/// store keeps them to write again. More than that is damage.
pub(super) fn check_journals(copies: &[JournalCopy], was_clean: bool, torn: u64) -> Result<()> {
    let dropped: u64 = copies
        .iter()
        .map(|c| {
            let now = std::fs::metadata(&c.path).map_or(u64::MAX, |m| m.len());
            (c.bytes.len() as u64).saturating_sub(now)
        })
        .sum();
    if torn > 0 && dropped <= torn {
        // No copy is saved: the disk was just full, and these bytes are written again.
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "store reopened: recovery dropped the torn tail of the failed write"
            );
        }
        return Ok(());
    }
    if torn > 0 {
        bail!(
            "store journal recovery dropped {dropped} bytes at a reopen, more than the {torn} the failed writes can have left: damage, not a torn write"
        );
    }
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

/// Refuses to open a store whose journal an earlier start found damaged and kept aside.
pub(super) fn refuse_kept_damage(store: &Path) -> Result<()> {
    for e in std::fs::read_dir(store).into_iter().flatten().flatten() {
        if e.path().to_string_lossy().ends_with(".jnl.damaged") {
            bail!(
                "{} exists: a damaged journal from an earlier start; restore the store from a backup, or remove that file to accept the loss",
                e.path().display()
            );
        }
    }
    Ok(())
}
