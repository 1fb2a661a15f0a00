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
    /// Why a write failed: later records would sit at the wrong offsets, so spooling
    /// stops, and the attempt's output can no longer be guaranteed whole.
    broken: Option<String>,
}

impl SpoolWriter {
    pub(super) const fn new(path: PathBuf) -> Self {
        Self {
            path,
            file: None,
            broken: None,
        }
    }

    /// Why spooling stopped, if it did.
    pub(super) fn failure(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// Appends one batch. A failure (disk full...) is logged and ends spooling for this
    /// attempt; the job and its live output carry on, but a resend after a reconnect would
    /// come up short, so the attempt's result says so ([`SpoolWriter::failure`]).
    pub(super) fn append(&mut self, chunks: &[Chunk]) {
        if self.broken.is_some() {
            return;
        }
        if let Err(e) = self.try_append(chunks) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot spool job output");
            self.broken = Some(format!("{}: {e}", self.path.display()));
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
/// the middle of a record), as chunks in order, consecutive bytes of one stream merged into
/// one chunk. It may be called while the job runs: it returns what is spooled so far, which
/// includes every `Output` event already sent (and possibly bytes of one still waiting in the
/// channel, so consumers dedup by offset). It holds the whole tail in memory: a resend reads
/// it in bounded batches with [`SpoolReader`] instead.
///
/// # Errors
/// As [`SpoolReader::open`] and [`SpoolReader::next_batch`].
pub fn read_spool(
    opts: &RunnerOptions,
    job: JobId,
    attempt: Attempt,
    from: u64,
) -> io::Result<Vec<Chunk>> {
    let mut reader = SpoolReader::open(opts, job, attempt, from)?;
    let mut out: Vec<Chunk> = Vec::new();
    loop {
        let batch = reader.next_batch(usize::MAX)?;
        if batch.is_empty() {
            return Ok(out);
        }
        for chunk in batch {
            match out.last_mut() {
                Some(last) if last.stream == chunk.stream => last.data.extend(chunk.data),
                _ => out.push(chunk),
            }
        }
    }
}

/// Reads an attempt's spool from an offset in batches of bounded size, so that output of any
/// size goes out in bounded messages and never sits in memory whole. It reads no further
/// than the file's length when it was opened: a record being appended meanwhile is cut where
/// that snapshot ends, never misread, and what comes later is the live output's to send.
pub struct SpoolReader {
    /// `None` for a spool that does not exist (a job that printed nothing).
    reader: Option<BufReader<File>>,
    path: PathBuf,
    /// File length at open.
    file_len: u64,
    /// File bytes consumed.
    raw: u64,
    /// Logical offset of the next byte returned.
    pos: u64,
    /// The record being read: its stream and the data bytes of it not yet consumed.
    record: Option<(Stream, u64)>,
}

impl SpoolReader {
    /// Opens the spool and skips to logical offset `from`.
    ///
    /// # Errors
    /// The spool cannot be read, holds an unknown stream tag, or holds fewer than `from`
    /// bytes. A missing spool is an empty output when `from` is 0 (the job printed nothing).
    pub fn open(opts: &RunnerOptions, job: JobId, attempt: Attempt, from: u64) -> io::Result<Self> {
        let path = opts.spool_path(job, attempt);
        let (reader, file_len) = match File::open(&path) {
            Ok(file) => {
                let len = file.metadata()?.len();
                (Some(BufReader::new(file)), len)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && from == 0 => (None, 0),
            Err(e) => return Err(e),
        };
        let mut me = Self {
            reader,
            path,
            file_len,
            raw: 0,
            pos: 0,
            record: None,
        };
        while me.pos < from {
            let Some((stream, left)) = me.current()? else {
                let msg = format!(
                    "{}: offset {from} is past the {} bytes spooled",
                    me.path.display(),
                    me.pos
                );
                return Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
            };
            let skip = left.min(from - me.pos);
            if let Some(r) = &mut me.reader {
                r.seek_relative(i64::try_from(skip).map_err(io::Error::other)?)?;
            }
            me.consumed(stream, left, skip);
        }
        Ok(me)
    }

    /// Logical offset of the next byte [`SpoolReader::next_batch`] returns.
    #[must_use]
    pub const fn offset(&self) -> u64 {
        self.pos
    }

    /// The next at most `max` bytes (at least 1), as chunks in order; empty at the end.
    ///
    /// # Errors
    /// The spool cannot be read or holds an unknown stream tag.
    pub fn next_batch(&mut self, max: usize) -> io::Result<Vec<Chunk>> {
        let max = max.max(1);
        let mut out: Vec<Chunk> = Vec::new();
        let mut room = max;
        while room > 0 {
            let Some((stream, left)) = self.current()? else {
                break;
            };
            let take = usize::try_from(left).unwrap_or(usize::MAX).min(room);
            let Some(reader) = &mut self.reader else {
                break;
            };
            let chunk = match out.last_mut() {
                Some(last) if last.stream == stream => last,
                _ => {
                    out.push(Chunk {
                        stream,
                        data: Vec::new(),
                    });
                    let Some(last) = out.last_mut() else { break };
                    last
                }
            };
            let start = chunk.data.len();
            chunk.data.resize(start + take, 0);
            reader.read_exact(&mut chunk.data[start..])?;
            room -= take;
            self.consumed(stream, left, take as u64);
        }
        Ok(out)
    }

    /// The record the next byte is in, and its data bytes left; reads the next header when
    /// the current record is done. `None` at the end of the snapshot.
    fn current(&mut self) -> io::Result<Option<(Stream, u64)>> {
        if let Some(rec) = self.record.filter(|(_, left)| *left > 0) {
            return Ok(Some(rec));
        }
        let Some(reader) = &mut self.reader else {
            return Ok(None);
        };
        loop {
            if self.raw + HEADER as u64 > self.file_len {
                return Ok(None);
            }
            let mut header = [0u8; HEADER];
            reader.read_exact(&mut header)?;
            self.raw += HEADER as u64;
            let stream = match header[0] {
                STDOUT => Stream::Stdout,
                STDERR => Stream::Stderr,
                tag => {
                    let msg = format!(
                        "{}: unknown stream tag {tag} at byte {}",
                        self.path.display(),
                        self.raw
                    );
                    return Err(io::Error::new(io::ErrorKind::InvalidData, msg));
                }
            };
            let len = u64::from(u32::from_le_bytes([
                header[1], header[2], header[3], header[4],
            ]));
            // A truncated last record (cut by the snapshot, or by a crash mid-write) still
            // holds real output: keep what is there.
            let avail = len.min(self.file_len - self.raw);
            if avail > 0 {
                self.record = Some((stream, avail));
                return Ok(self.record);
            }
        }
    }

    /// `n` bytes of the current record (of `stream`, `left` bytes left) were read or skipped.
    fn consumed(&mut self, stream: Stream, left: u64, n: u64) {
        self.raw += n;
        self.pos += n;
        self.record = Some((stream, left - n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_bounded_and_replay_everything_from_any_offset() {
        let root = std::env::temp_dir().join(format!("hodei-spool-{}", std::process::id()));
        let opts = RunnerOptions {
            work_root: root.clone(),
            ..RunnerOptions::default()
        };
        let (job, attempt) = (JobId::new(0, 1, 7), Attempt(1));
        let mut w = SpoolWriter::new(opts.spool_path(job, attempt));
        // One record larger than a frame, then both streams mixed.
        let big: Vec<u8> = (0..9 << 20).map(|i| (i % 251) as u8).collect();
        let chunk = |stream, data: &[u8]| Chunk {
            stream,
            data: data.to_vec(),
        };
        w.append(&[chunk(Stream::Stdout, &big)]);
        w.append(&[chunk(Stream::Stderr, b"err"), chunk(Stream::Stdout, b"out")]);
        let total = big.len() + 6;
        for from in [0, 5, 1 << 20, big.len() - 1, big.len() + 2, total] {
            let mut r = SpoolReader::open(&opts, job, attempt, from as u64).unwrap();
            let mut got: Vec<(Stream, u8)> = Vec::new();
            loop {
                let batch = r.next_batch(MAX_BATCH).unwrap();
                if batch.is_empty() {
                    break;
                }
                let len: usize = batch.iter().map(|c| c.data.len()).sum();
                assert!(len <= MAX_BATCH, "a batch of {len} bytes");
                got.extend(
                    batch
                        .iter()
                        .flat_map(|c| c.data.iter().map(|b| (c.stream, *b))),
                );
            }
            assert_eq!(r.offset(), total as u64);
            let mut want: Vec<(Stream, u8)> = big.iter().map(|b| (Stream::Stdout, *b)).collect();
            want.extend(b"err".iter().map(|b| (Stream::Stderr, *b)));
            want.extend(b"out".iter().map(|b| (Stream::Stdout, *b)));
            assert!(got == want[from..], "replay from {from} differs");
        }
        assert!(SpoolReader::open(&opts, job, attempt, total as u64 + 1).is_err());
        let _ = std::fs::remove_dir_all(&root);
    }

    const MAX_BATCH: usize = 1 << 20;
}
