//! The data directory: claimed by a format marker before anything is written, so a server
//! never writes into a directory that holds something else, or a store of a format this
//! build does not read.

use std::path::Path;

use anyhow::{Context, Result, bail};

/// Marker file that identifies a Hodei data directory.
const MARKER: &str = "hodei.format";
/// The store's format. Records are framed with the wire protocol's version (a job record
/// is its spec), so a change of a stored type bumps both: a data dir of an older format is
/// refused by name instead of read as corrupt. v2: `JobSpec.max_output` (protocol 4).
const MARKER_TEXT: &str = "hodei-data v2\n";

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::tempdir;

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
        Ok(())
    }
}
