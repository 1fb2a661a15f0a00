//! An attempt's secrets on the agent: the values, held in memory for the attempt's life only
//! and wiped when dropped; their delivery to the process; the [`Redactor`] that masks them in
//! its output; and the removal of secrets directories.
//!
//! Delivery follows `spec.secret_delivery`:
//!
//! - **Files**: a private directory per attempt, on tmpfs (`/dev/shm`) when it can be created
//!   there, else under `<work_root>/secrets`. Mode 0700, an unguessable name
//!   (`hodei-secrets-<agent tag>-<128 random bits>`), one file per secret named after it (mode
//!   0600, created exclusively). The process gets its path as `HODEI_SECRETS_DIR`. The files
//!   are overwritten with zeros and the directory removed when the attempt ends, whatever
//!   ended it ([`SecretsDir`]'s `Drop`); an agent that crashed leaves them behind, and
//!   [`clean_leftover_secrets`] removes them when it starts again.
//! - **Stdin**: one JSON object `{"NAME": "value", ...}` written to the process's stdin by a
//!   task (the process may never read it; the write must not block anyone), then stdin closed.
//!   Values must be UTF-8 to be JSON strings; a job with another value fails to start.
//!
//! Values never enter environment variables, script files, the spool or a log line; only
//! names do. A value in memory lives in a [`Secrets`], a `Zeroizing` buffer or the redactor's
//! patterns, all wiped on drop (copies the transport made while decoding the `Assign` are out
//! of reach here).

use std::fmt;
use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hodei_auth::Redactor;
use hodei_core::spec::{JobSpec, SecretDelivery, check_secret_name};
use hodei_core::wire::SecretValue;
use rand::RngCore;
use tokio::io::AsyncWriteExt;
use tokio::process::ChildStdin;
use tokio::task::JoinHandle;
use zeroize::{Zeroize, Zeroizing};

use super::RunnerOptions;

/// The environment variable that holds the path of the job's secrets directory.
pub const SECRETS_DIR_ENV: &str = "HODEI_SECRETS_DIR";

/// Every secrets directory's name starts with this, then the agent's tag.
const PREFIX: &str = "hodei-secrets-";

/// Preferred root: tmpfs, so secret files never reach a disk.
const SHM: &str = "/dev/shm";

/// A leftover file is wiped up to this many bytes before it is removed: enough for any real
/// secret, and a job that appended gigabytes to its file cannot make the agent write as much.
const WIPE_MAX: u64 = 16 << 20;

/// The secret values of one attempt, as the server sent them. Wiped when dropped; its Debug
/// shows names and lengths only.
#[derive(Default)]
pub struct Secrets {
    values: Vec<(String, Vec<u8>)>,
}

impl Secrets {
    /// Takes the values of an `Assign` (moved, not copied).
    #[must_use]
    pub fn new(values: Vec<SecretValue>) -> Self {
        Self {
            values: values.into_iter().map(|s| (s.name, s.value)).collect(),
        }
    }

    /// Whether there is no value at all.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The value named `name` (the first, should the server send a name twice).
    fn get(&self, name: &str) -> Option<&[u8]> {
        self.values
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The redactor for the attempt's output: every value received (delivered or not, since
    /// masking too much is harmless), and also each one as it appears inside a JSON string
    /// when that differs (a job that echoes its stdin, or prints JSON, shows that form).
    pub(super) fn redactor(&self) -> Redactor {
        if self.values.is_empty() {
            return Redactor::new(&[]);
        }
        // The escaped forms are secret material too: held in a `Secrets` so they are wiped.
        let mut forms = Secrets {
            values: Vec::with_capacity(self.values.len() * 2),
        };
        for (name, value) in &self.values {
            forms.values.push((name.clone(), value.clone()));
            if let Ok(text) = std::str::from_utf8(value) {
                let mut escaped = Vec::with_capacity(json_bound(text));
                json_chars(text, &mut escaped);
                if escaped[..] != value[..] {
                    forms.values.push((name.clone(), escaped));
                } else {
                    escaped.zeroize();
                }
            }
        }
        Redactor::new(&forms.values)
    }
}

impl From<Vec<SecretValue>> for Secrets {
    fn from(values: Vec<SecretValue>) -> Self {
        Self::new(values)
    }
}

impl Drop for Secrets {
    fn drop(&mut self) {
        for (_, value) in &mut self.values {
            value.zeroize();
        }
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for (name, value) in &self.values {
            list.entry(&format_args!("{name}: <{} bytes>", value.len()));
        }
        list.finish()
    }
}

/// How an attempt's process gets its secrets, ready before the spawn.
#[derive(Default)]
pub(super) struct Delivery {
    /// Files delivery: the directory, removed when this is dropped.
    pub dir: Option<SecretsDir>,
    /// Stdin delivery: the JSON object for the process's stdin.
    pub stdin: Option<Zeroizing<Vec<u8>>>,
}

/// Prepares the delivery of the secrets `spec` names. The error is a message for the user; it
/// names secrets, never shows a value.
pub(super) fn prepare(
    spec: &JobSpec,
    secrets: &Secrets,
    opts: &RunnerOptions,
) -> Result<Delivery, String> {
    let mut wanted: Vec<(&str, &[u8])> = Vec::with_capacity(spec.secrets.len());
    for name in &spec.secrets {
        // The server checked the spec, but a name becomes a file name here: check again
        // rather than trust it with a path.
        check_secret_name(name).map_err(|e| e.to_string())?;
        if wanted.iter().any(|(n, _)| *n == name.as_str()) {
            continue;
        }
        let value = secrets
            .get(name)
            .ok_or_else(|| format!("secret {name} was not sent with the assignment"))?;
        wanted.push((name, value));
    }
    if wanted.is_empty() {
        return Ok(Delivery::default());
    }
    match spec.secret_delivery {
        SecretDelivery::Files => Ok(Delivery {
            dir: Some(SecretsDir::create(opts, &wanted)?),
            stdin: None,
        }),
        SecretDelivery::Stdin => Ok(Delivery {
            dir: None,
            stdin: Some(stdin_json(&wanted)?),
        }),
    }
}

/// Writes the JSON object to the process's stdin, then closes it. A task of its own: the
/// process may never read its stdin, and a full pipe must not stall the runner. The caller
/// aborts it once the job has ended (a process that escaped the group could keep the pipe
/// open forever); the buffer is wiped either way.
pub(super) fn feed_stdin(mut stdin: ChildStdin, json: Zeroizing<Vec<u8>>) -> JoinHandle<()> {
    tokio::spawn(async move {
        // EPIPE means the process exited or closed stdin without reading: nothing to do.
        // (Rust ignores SIGPIPE in its binaries, so it is an error, not a signal.)
        let _ = stdin.write_all(&json).await;
        drop(stdin);
    })
}

/// A private directory holding an attempt's secret files; wiped and removed on drop.
pub(super) struct SecretsDir {
    path: PathBuf,
    /// The files written: name and length, which bounds the wipe.
    files: Vec<(String, usize)>,
}

impl SecretsDir {
    fn create(opts: &RunnerOptions, wanted: &[(&str, &[u8])]) -> Result<Self, String> {
        let mut random = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut random);
        let name = format!("{PREFIX}{}-{}", agent_tag(opts), hex(&random));
        let fallback = fallback_root(opts);
        let path = match make_private_dir(&Path::new(SHM).join(&name)) {
            Ok(path) => path,
            // No usable tmpfs (absent, read-only, not ours to write): the work dir will do.
            Err(_) => DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&fallback)
                .and_then(|()| make_private_dir(&fallback.join(&name)))
                .map_err(|e| {
                    format!(
                        "cannot create a secrets directory under {}: {e}",
                        fallback.display()
                    )
                })?,
        };
        // From here on, dropping `dir` removes whatever was written, on any error too.
        let mut dir = SecretsDir {
            path,
            files: Vec::with_capacity(wanted.len()),
        };
        for (name, value) in wanted {
            dir.write(name, value)
                .map_err(|e| format!("cannot write secret {name} to its file: {e}"))?;
        }
        Ok(dir)
    }

    /// The directory the process gets as `HODEI_SECRETS_DIR`.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    fn write(&mut self, name: &str, value: &[u8]) -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(self.path.join(name))?;
        self.files.push((name.to_owned(), value.len()));
        // The mode given at creation is filtered by the umask; set it exactly.
        file.set_permissions(Permissions::from_mode(0o600))?;
        file.write_all(value)
    }
}

impl Drop for SecretsDir {
    fn drop(&mut self) {
        for (name, len) in &self.files {
            let len = u64::try_from(*len).unwrap_or(WIPE_MAX);
            // The job may have removed or replaced its files: only what is there is wiped.
            let _ = wipe(&self.path.join(name), len);
        }
        remove_dir(&self.path);
    }
}

/// Removes the secrets directories this agent left behind when it last stopped without
/// cleaning up (a crash, `kill -9`): under `/dev/shm` and `<work_root>/secrets`, directories
/// named with this agent's tag (derived from its work root, so agents sharing a host leave
/// each other's alone) and owned by the agent's user. Call it at start, before any job runs.
/// Returns how many were removed.
pub fn clean_leftover_secrets(opts: &RunnerOptions) -> usize {
    let mine = format!("{PREFIX}{}-", agent_tag(opts));
    let uid = nix::unistd::geteuid().as_raw();
    let mut removed = 0;
    for root in [PathBuf::from(SHM), fallback_root(opts)] {
        let Ok(entries) = std::fs::read_dir(&root) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_name().as_bytes().starts_with(mine.as_bytes()) {
                continue;
            }
            // symlink_metadata: a symlink with our name is not followed, nor removed here.
            let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
                continue;
            };
            if !meta.is_dir() || meta.uid() != uid {
                continue;
            }
            let path = entry.path();
            if let Ok(files) = std::fs::read_dir(&path) {
                for file in files.flatten() {
                    let _ = wipe(&file.path(), WIPE_MAX);
                }
            }
            remove_dir(&path);
            removed += 1;
        }
    }
    removed
}

/// `<work_root>/secrets`: where secrets directories go when `/dev/shm` cannot hold them.
fn fallback_root(opts: &RunnerOptions) -> PathBuf {
    opts.work_root.join("secrets")
}

/// Identifies this agent's secrets directories among those of other agents on the host: a
/// hash of its work root (FNV-1a, stable across builds, so a new binary still finds the
/// leftovers of the old one).
fn agent_tag(opts: &RunnerOptions) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in opts.work_root.as_os_str().as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Creates `path` (not its parents) with mode exactly 0700. `mkdir` fails on anything already
/// there, a symlink planted under a guessed name included.
fn make_private_dir(path: &Path) -> io::Result<PathBuf> {
    DirBuilder::new().mode(0o700).create(path)?;
    // The umask may have removed bits the agent needs; it never adds any.
    std::fs::set_permissions(path, Permissions::from_mode(0o700))?;
    Ok(path.to_owned())
}

/// Overwrites the first `max` bytes of a regular file with zeros: unlinking a tmpfs file frees
/// its pages without clearing them. No symlink is followed, and O_NONBLOCK keeps a FIFO put in
/// its place from blocking the open.
fn wipe(path: &Path, max: u64) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(());
    }
    let mut left = meta.len().min(max);
    let zeros = [0u8; 4096];
    while left > 0 {
        let n = usize::try_from(left.min(zeros.len() as u64)).unwrap_or(zeros.len());
        file.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Removes a secrets directory and whatever the job put in it; already gone is fine.
fn remove_dir(path: &Path) {
    match std::fs::remove_dir_all(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a secrets directory");
        }
    }
}

/// `{"NAME":"value",...}`, in a buffer sized once so that no reallocation leaves a copy behind.
fn stdin_json(wanted: &[(&str, &[u8])]) -> Result<Zeroizing<Vec<u8>>, String> {
    let mut texts = Vec::with_capacity(wanted.len());
    for (name, value) in wanted {
        let text = std::str::from_utf8(value).map_err(|_| {
            format!(
                "secret {name} is not valid UTF-8, so it cannot be a JSON string on stdin; \
                 deliver it as a file instead"
            )
        })?;
        texts.push((*name, text));
    }
    let cap = 2 + texts
        .iter()
        .map(|(n, t)| json_bound(n) + json_bound(t) + 6)
        .sum::<usize>();
    let mut out = Zeroizing::new(Vec::with_capacity(cap));
    out.push(b'{');
    for (i, (name, text)) in texts.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        json_chars(name, &mut out);
        out.extend_from_slice(b"\":\"");
        json_chars(text, &mut out);
        out.push(b'"');
    }
    out.push(b'}');
    Ok(out)
}

/// The most bytes [`json_chars`] can write for `s` (`\u00XX` is the longest escape).
const fn json_bound(s: &str) -> usize {
    s.len() * 6
}

/// Appends `s` escaped as the inside of a JSON string, the way serde_json and most encoders do
/// it: `\"`, `\\`, the short forms of `\b \f \n \r \t`, `\u00XX` for other controls.
fn json_chars(s: &str, out: &mut Vec<u8>) {
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            0..0x20 => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
            _ => out.push(b),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escapes_like_serde_json() {
        let mut out = Vec::new();
        json_chars("a\"b\\c\nd\te\u{1}é", &mut out);
        assert_eq!(out, b"a\\\"b\\\\c\\nd\\te\\u0001\xc3\xa9");
        assert!(out.len() <= json_bound("a\"b\\c\nd\te\u{1}é"));
    }

    #[test]
    fn stdin_json_is_one_object_and_refuses_non_utf8() {
        let json = stdin_json(&[("A", b"x\"y"), ("B", b"z")]).unwrap_or_default();
        assert_eq!(&json[..], br#"{"A":"x\"y","B":"z"}"#);
        let err = stdin_json(&[("BIN", &[0xff, 0xfe][..])])
            .err()
            .unwrap_or_default();
        assert!(err.contains("BIN") && err.contains("UTF-8"), "{err}");
    }

    #[test]
    fn debug_shows_no_value() {
        let s = Secrets::new(vec![SecretValue {
            name: "TOKEN".into(),
            value: b"hunter2-hunter2".to_vec(),
        }]);
        let shown = format!("{s:?}");
        assert!(
            shown.contains("TOKEN") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
