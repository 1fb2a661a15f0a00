//! The spool: every output byte of an attempt, appended to `<work_root>/spool/<job>-<attempt>.out`
//! before it is sent, so it can be sent again from any offset after a reconnect.
//!
//! Format: a sequence of records `stream: u8 (0 stdout, 1 stderr) | len: u32 LE | data`. The
//! logical offset of a byte is the number of data bytes before it, headers excluded. The file
//! is created with the first output, so a job that prints nothing costs no file.
//!
//! Writes use blocking `std::fs` calls on the runtime thread: an append of at most one batch
//! lands in the page cache in microseconds, less than a hop to tokio's blocking pool would
//! cost on a `current_thread` runtime. Nothing is fsynced: the spool covers lost connections,
//! not a lost machine.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::PathBuf;

use hodei_core::ids::{Attempt, JobId};
use hodei_core::wire::{Chunk, Stream};

use super::RunnerOptions;

const HEADER: usize = 5;
const STDOUT: u8 = 0;
const STDERR: u8 = 1;

/// Appends an attempt's output to its spool file.
pub(super) struct SpoolWriter {
    path: PathBuf,
    file: Option<File>,
    /// A write failed: later records would sit at the wrong offsets, so spooling stops.
    broken: bool,
}

impl SpoolWriter {
    pub(super) const fn new(path: PathBuf) -> Self {
        Self {
            path,
            file: None,
            broken: false,
        }
    }

    /// Appends one batch. A failure (disk full...) is logged and ends spooling for this
    /// attempt; the job and its live output carry on, only a resend would come up short.
    pub(super) fn append(&mut self, chunks: &[Chunk]) {
        if self.broken {
            return;
        }
        if let Err(e) = self.try_append(chunks) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot spool job output");
            self.broken = true;
        }
    }

    fn try_append(&mut self, chunks: &[Chunk]) -> io::Result<()> {
        let file = match &mut self.file {
            Some(file) => file,
            None => {
                if let Some(dir) = self.path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                // Truncate: offsets of this run start at 0 whatever an earlier run left.
                let file = File::create(&self.path)?;
                self.file.insert(file)
            }
        };
        // One write per batch: fewer syscalls, and a concurrent reader rarely sees half of it.
        let mut buf = Vec::with_capacity(chunks.iter().map(|c| c.data.len() + HEADER).sum());
        for chunk in chunks {
            let tag = match chunk.stream {
                Stream::Stdout => STDOUT,
                Stream::Stderr => STDERR,
            };
            // A record's length is a u32: split a (theoretical) larger chunk.
            for piece in chunk.data.chunks(u32::MAX as usize) {
                let len = u32::try_from(piece.len()).unwrap_or(u32::MAX);
                buf.push(tag);
                buf.extend_from_slice(&len.to_le_bytes());
                buf.extend_from_slice(piece);
            }
        }
        file.write_all(&buf)
    }
}

/// Reads back the spooled output of an attempt from logical offset `from` (which may fall in
/// the middle of a record), as chunks in order. It may be called while the job runs: it returns
/// what is spooled so far, which includes every `Output` event already sent (and possibly
/// bytes of one still waiting in the channel, so consumers dedup by offset).
///
/// # Errors
/// The spool cannot be read, holds an unknown stream tag, or holds fewer than `from` bytes.
/// A missing spool is an empty output when `from` is 0 (the job printed nothing).
pub fn read_spool(
    opts: &RunnerOptions,
    job: JobId,
    attempt: Attempt,
    from: u64,
) -> io::Result<Vec<Chunk>> {
    let path = opts.spool_path(job, attempt);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound && from == 0 => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    // Read no further than the length seen now: a record being appended meanwhile is cut
    // where the snapshot ends, never misread.
    let file_len = file.metadata()?.len();
    let mut reader = BufReader::new(file);
    let mut raw = 0u64; // file bytes consumed
    let mut pos = 0u64; // logical output offset
    let mut out: Vec<Chunk> = Vec::new();
    while raw + HEADER as u64 <= file_len {
        let mut header = [0u8; HEADER];
        reader.read_exact(&mut header)?;
        raw += HEADER as u64;
        let stream = match header[0] {
            STDOUT => Stream::Stdout,
            STDERR => Stream::Stderr,
            tag => {
                let msg = format!(
                    "{}: unknown stream tag {tag} at byte {}",
                    path.display(),
                    raw
                );
                return Err(io::Error::new(io::ErrorKind::InvalidData, msg));
            }
        };
        let len = u64::from(u32::from_le_bytes([
            header[1], header[2], header[3], header[4],
        ]));
        // A truncated last record (cut by the snapshot, or by a crash mid-write) still holds
        // real output: keep what is there.
        let avail = len.min(file_len - raw);
        let skip = from.saturating_sub(pos).min(avail);
        if skip > 0 {
            reader.seek_relative(i64::try_from(skip).map_err(io::Error::other)?)?;
        }
        let keep = avail - skip;
        if keep > 0 {
            let keep = usize::try_from(keep).map_err(io::Error::other)?;
            match out.last_mut() {
                Some(last) if last.stream == stream => {
                    let start = last.data.len();
                    last.data.resize(start + keep, 0);
                    reader.read_exact(&mut last.data[start..])?;
                }
                _ => {
                    let mut data = vec![0u8; keep];
                    reader.read_exact(&mut data)?;
                    out.push(Chunk { stream, data });
                }
            }
        }
        raw += avail;
        pos += avail;
        if avail < len {
            break;
        }
    }
    if from > pos {
        let msg = format!(
            "{}: offset {from} is past the {pos} bytes spooled",
            path.display()
        );
        return Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
    }
    Ok(out)
}
