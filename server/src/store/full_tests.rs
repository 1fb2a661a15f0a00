//! The store on a filesystem that fills up: a write that fails for lack of room poisons
//! fjall's database, and the store reopens it once space is back, losing nothing that was
//! acknowledged and taking the refused write again. Needs to mount a tmpfs (root); without
//! that the test says so and checks nothing.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use hodei_core::ids::JobId;
use hodei_core::job::JobRecord;
use hodei_core::spec::JobSpec;
use hodei_shards::StoreOp;

use super::tests::tempdir;
use super::{Store, claim_data_dir, is_full};

struct Mount(PathBuf);

impl Mount {
    fn tmpfs(dir: &Path, mib: u32) -> Option<Self> {
        std::fs::create_dir_all(dir).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self(dir.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A job record of about 256 KiB that does not compress.
fn big(seq: u64) -> StoreOp {
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let arg: String = (0..256 << 10)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + u8::try_from(x % 26).unwrap_or(0))
        })
        .collect();
    StoreOp::PutJob(JobRecord::new(
        JobId::new(0, 1, seq),
        JobSpec::exec("true", &[&arg]),
        seq,
    ))
}

fn ids(store: &Store) -> Result<Vec<u64>> {
    let mut v: Vec<u64> = store.load_jobs()?.iter().map(|j| j.id.seq()).collect();
    v.sort_unstable();
    Ok(v)
}

#[test]
fn a_full_disk_poisons_fjall_and_the_store_reopens_it() -> Result<()> {
    let root = tempdir("full-disk");
    let Some(_mount) = Mount::tmpfs(&root, 24) else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return Ok(());
    };
    let dir = root.join("data");
    claim_data_dir(&dir)?;
    // Room to give back once the disk is full.
    let filler = root.join("filler");
    std::fs::write(&filler, vec![1u8; 6 << 20])?;
    // No watermark: the write itself must hit the full disk (the case the floor avoids).
    let store = Store::open_with(&dir, 0)?;
    let mut acked = Vec::new();
    let mut refused = None;
    for seq in 1..200 {
        match store.commit(&[big(seq)], &[]) {
            Ok(()) => acked.push(seq),
            Err(e) => {
                assert!(is_full(&e), "not taken for a full disk: {e:#}");
                assert!(format!("{e:#}").contains("store full: "), "{e:#}");
                refused = Some(seq);
                break;
            }
        }
    }
    let Some(refused) = refused else {
        bail!("a 24 MiB filesystem took 50 MiB of jobs");
    };
    assert!(store.health().is_full());
    // fjall poisoned its database; reads are still served from it.
    assert_eq!(ids(&store)?, acked);
    std::fs::remove_file(&filler)?;
    // The same write again: the store reopens fjall, recovery drops the torn tail (not
    // taken for damage), and the write is taken.
    store.commit(&[big(refused)], &[])?;
    assert!(!store.health().is_full());
    assert_eq!(store.reopens(), 1);
    acked.push(refused);
    assert_eq!(ids(&store)?, acked, "a reopen lost acknowledged jobs");
    drop(store);
    // A restart finds every acknowledged write, and no journal copy was kept.
    let store = Store::open_with(&dir, 0)?;
    assert_eq!(ids(&store)?, acked);
    let kept: Vec<_> = std::fs::read_dir(dir.join("store"))?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".jnl."))
        .map(|e| e.file_name())
        .collect();
    assert!(kept.is_empty(), "{kept:?}");
    Ok(())
}
