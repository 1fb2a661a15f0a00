//! Unit tests of sealing and of the key file.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p = std::env::temp_dir().join(format!(
            "hodei-auth-test-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn key() -> SealKey {
    SealKey::generate().unwrap()
}

#[test]
fn roundtrip() {
    let k = key();
    for pt in [&b""[..], b"x", b"hunter2", &[0u8; 4096]] {
        let sealed = k.seal("db/password", pt).unwrap();
        assert_eq!(sealed.len(), OVERHEAD + pt.len());
        assert_eq!(sealed[0], 1);
        assert_eq!(&k.open("db/password", &sealed).unwrap()[..], pt);
    }
}

#[test]
fn nonces_are_fresh() {
    let k = key();
    assert_ne!(k.seal("a", b"same").unwrap(), k.seal("a", b"same").unwrap());
}

#[test]
fn wrong_name_or_key_fails() {
    let k = key();
    let sealed = k.seal("prod/token", b"s3cret").unwrap();
    assert!(matches!(k.open("dev/token", &sealed), Err(SealError::Open)));
    assert!(matches!(
        key().open("prod/token", &sealed),
        Err(SealError::Open)
    ));
}

#[test]
fn every_flipped_bit_fails() {
    let k = key();
    let sealed = k.seal("n", b"abc").unwrap();
    for i in 0..sealed.len() * 8 {
        let mut bad = sealed.clone();
        bad[i / 8] ^= 1 << (i % 8);
        assert!(k.open("n", &bad).is_err(), "bit {i}");
    }
}

#[test]
fn truncated_and_garbage_fail() {
    let k = key();
    let sealed = k.seal("n", b"abcdef").unwrap();
    for n in 0..sealed.len() {
        assert!(k.open("n", &sealed[..n]).is_err(), "prefix {n}");
    }
    assert!(matches!(
        k.open("n", &[]),
        Err(SealError::Truncated { len: 0 })
    ));
    assert!(matches!(
        k.open("n", &[2; 40]),
        Err(SealError::UnknownVersion(2))
    ));
    assert!(matches!(k.open("n", &[1; 40]), Err(SealError::Open)));
}

#[test]
fn key_never_printed() {
    let k = SealKey::from_bytes([0xab; 32]);
    let dbg = format!("{k:?}");
    assert!(!dbg.contains("ab") && !dbg.contains("171"), "{dbg}");
}

#[test]
fn key_file_created_0600_and_reloaded() {
    let dir = TempDir::new();
    let path = dir.0.join("seal.key");
    let k1 = SealKey::load_or_create(&path).unwrap();
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), 32);
    let k2 = SealKey::load_or_create(&path).unwrap();
    let sealed = k1.seal("x", b"y").unwrap();
    assert_eq!(&k2.open("x", &sealed).unwrap()[..], b"y");
    // Nothing but the key is left in the directory.
    assert_eq!(fs::read_dir(&dir.0).unwrap().count(), 1);
}

#[test]
fn concurrent_creators_agree_on_one_key() {
    let dir = TempDir::new();
    let path = dir.0.join("seal.key");
    let keys: Vec<SealKey> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| SealKey::load_or_create(&path).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let sealed = keys[0].seal("x", b"y").unwrap();
    for k in &keys {
        assert_eq!(&k.open("x", &sealed).unwrap()[..], b"y");
    }
    assert_eq!(fs::read_dir(&dir.0).unwrap().count(), 1);
}

#[test]
fn key_file_readable_by_others_is_refused() {
    let dir = TempDir::new();
    let path = dir.0.join("seal.key");
    drop(SealKey::load_or_create(&path).unwrap());
    for mode in [0o640, 0o604, 0o620, 0o602, 0o644] {
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        let err = SealKey::load_or_create(&path).unwrap_err();
        assert!(
            matches!(err, SealError::Permissions { mode: m, .. } if m == mode),
            "{err}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains(&format!("{mode:04o}")), "{msg}");
    }
    fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
    assert!(SealKey::load_or_create(&path).is_ok());
}

#[test]
fn key_file_of_wrong_length_is_refused() {
    let dir = TempDir::new();
    for len in [0usize, 31, 33, 64] {
        let path = dir.0.join(format!("k{len}"));
        fs::write(&path, vec![7u8; len]).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = SealKey::load_or_create(&path).unwrap_err();
        assert!(
            matches!(err, SealError::WrongLength { len: l, .. } if l == len as u64),
            "{err}"
        );
        // Never silently replaced: the secrets sealed with it would be lost.
        assert_eq!(fs::read(&path).unwrap().len(), len);
    }
}

#[test]
fn key_path_that_is_a_directory_is_refused() {
    let dir = TempDir::new();
    fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o700)).unwrap();
    assert!(matches!(
        SealKey::load_or_create(&dir.0),
        Err(SealError::NotAFile { .. })
    ));
}

#[test]
fn missing_directory_is_an_io_error_naming_the_path() {
    let dir = TempDir::new();
    let path = dir.0.join("no/such/dir/seal.key");
    let err = SealKey::load_or_create(&path).unwrap_err();
    assert!(matches!(err, SealError::Io { .. }));
    assert!(err.to_string().contains("seal.key"), "{err}");
}
