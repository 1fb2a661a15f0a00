//! The seal key's file: created once, owner-only, and never half-written.
//!
//! Creation writes the key to a private temporary file in the same directory, fsyncs it,
//! hard-links it to the final name (which fails if the name exists, so two processes starting
//! at once agree on one key) and fsyncs the directory. A crash leaves either no key file or a
//! whole one, never a short file that would lock the secrets away.
//!
//! Loading refuses a file that group or others may read or write: a key anyone else can read
//! protects nothing, and a key others can replace lets them read secrets sealed afterwards.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom as _, SystemRandom};
use zeroize::Zeroizing;

use super::{SealError, SealKey};

impl SealKey {
    /// Reads the key at `path`, creating it (mode 0600) if there is none.
    pub fn load_or_create(path: &Path) -> Result<SealKey, SealError> {
        match File::open(path) {
            Ok(file) => read_key(path, file),
            Err(e) if e.kind() == io::ErrorKind::NotFound => match create(path)? {
                Some(key) => Ok(key),
                // Another process created it first: use theirs.
                None => read_key(path, File::open(path).map_err(io_err(path))?),
            },
            Err(e) => Err(io_err(path)(e)),
        }
    }
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> SealError + '_ {
    move |source| SealError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read_key(path: &Path, mut file: File) -> Result<SealKey, SealError> {
    // Checked on the open file, not the path, so a swap between check and read is harmless.
    let meta = file.metadata().map_err(io_err(path))?;
    if !meta.is_file() {
        return Err(SealError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SealError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    if meta.len() != 32 {
        return Err(SealError::WrongLength {
            path: path.to_path_buf(),
            len: meta.len(),
        });
    }
    let mut bytes = Zeroizing::new([0u8; 32]);
    file.read_exact(&mut bytes[..]).map_err(io_err(path))?;
    // The file may have grown since `metadata`: refuse rather than use a prefix.
    let mut extra = [0u8; 1];
    if file.read(&mut extra).map_err(io_err(path))? != 0 {
        return Err(SealError::WrongLength {
            path: path.to_path_buf(),
            len: 33,
        });
    }
    Ok(SealKey { bytes })
}

/// Creates the key file. `Ok(None)` if another process created it meanwhile.
fn create(path: &Path) -> Result<Option<SealKey>, SealError> {
    let key = SealKey::generate()?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = temp_path(path)?;
    let written = write_new(&tmp, &key.bytes[..]).and_then(|()| match fs::hard_link(&tmp, path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    });
    // The temporary name is never needed again, whatever happened.
    let _ = fs::remove_file(&tmp);
    if !written.map_err(io_err(path))? {
        return Ok(None);
    }
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(&dir))?;
    Ok(Some(key))
}

fn write_new(tmp: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// `.<name>.tmp-<random>` next to `path`, so the hard link stays on one filesystem.
fn temp_path(path: &Path) -> Result<PathBuf, SealError> {
    let name = path
        .file_name()
        .ok_or_else(|| io_err(path)(io::Error::new(io::ErrorKind::InvalidInput, "no file name")))?;
    let mut suffix = [0u8; 8];
    SystemRandom::new()
        .fill(&mut suffix)
        .map_err(|_| SealError::Rng)?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", crate::hex::encode(&suffix)));
    Ok(path.with_file_name(tmp_name))
}
