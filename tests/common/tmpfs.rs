//! A small tmpfs for tests that fill a filesystem (a full data dir, a full agent work dir).
//! Mounting needs root; without it a test says so and checks nothing.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A mounted tmpfs, unmounted when dropped.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB at `dir` (created if missing); `None` where this
    /// process may not mount.
    pub fn mount(dir: &Path, mib: u32) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success())
            .then(|| Self(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Fills the filesystem holding `file` by writing `file` until a write fails for lack of
/// room: large blocks first, then small ones for what a partial last block left.
pub fn fill(file: &Path) {
    let mut f = std::fs::File::create(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let block = vec![0x5a_u8; 256 << 10];
    while f.write_all(&block).is_ok() {}
    while f.write_all(&[0x5a_u8; 512]).is_ok() {}
    let _ = f.sync_data();
}
