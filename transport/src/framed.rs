//! Framed message streams over QUIC streams.
//!
//! A frame is `version:u16 LE | len:u32 LE | rkyv payload` ([`hodei_core::frame`]). The reader
//! checks each header as soon as its six bytes arrive, so a peer speaking another version or
//! announcing an oversized frame is refused before any payload is buffered, and validates
//! every payload (bytecheck) before handing out a message: no byte sequence can panic it.
//! The writer batches messages into one buffer so a burst costs one stream write.

use hodei_core::frame::{HEADER_LEN, Wire, decode_header, split_frame};

use crate::error::TransportError;

/// At most this many bytes of queued messages are gathered into one write.
const BATCH_BYTES: usize = 256 * 1024;

/// Bytes requested per read when no large frame is pending: enough to take many small
/// messages (heartbeats, acks) per call.
const READ_CHUNK: usize = 64 * 1024;

/// Above this, an emptied buffer gives its memory back, so one large frame does not pin
/// megabytes on each of thousands of idle connections.
const KEEP_CAPACITY: usize = 256 * 1024;

/// Reads messages from a [`quinn::RecvStream`].
pub struct FrameReader {
    recv: quinn::RecvStream,
    /// Received bytes; `buf[pos..]` is not consumed yet.
    buf: Vec<u8>,
    pos: usize,
    /// The peer finished the stream.
    ended: bool,
}

impl FrameReader {
    /// Wraps a receive stream.
    #[must_use]
    pub fn new(recv: quinn::RecvStream) -> Self {
        Self {
            recv,
            buf: Vec::new(),
            pos: 0,
            ended: false,
        }
    }

    /// The next message, or `Ok(None)` once the peer finished the stream at a frame boundary.
    ///
    /// Cancel-safe (usable in `tokio::select!`): its only await is a cancel-safe
    /// `read_chunk`, and received bytes are kept in `self` before it returns.
    ///
    /// The buffer never holds more than one maximal frame plus one read chunk.
    ///
    /// # Errors
    /// - [`TransportError::Frame`] on a bad header (other version, too large): the stream is
    ///   unusable, since frame boundaries are lost; on a malformed payload: that frame is
    ///   skipped and the next call reads the following one.
    /// - [`TransportError::Truncated`] if the stream ended inside a frame.
    /// - [`TransportError::Read`] if the stream was reset or the connection lost.
    pub async fn next<T: Wire>(&mut self) -> Result<Option<T>, TransportError> {
        loop {
            let pending = self.buf.get(self.pos..).unwrap_or_default();
            if let Some((payload, used)) = split_frame(pending)? {
                let msg = T::decode(payload);
                self.consume(used);
                return Ok(Some(msg?));
            }
            if self.ended {
                return if pending.is_empty() {
                    Ok(None)
                } else {
                    Err(TransportError::Truncated {
                        buffered: pending.len(),
                    })
                };
            }
            // Ask for the rest of a large frame in one go, but never for more than the frame
            // needs beyond one chunk, which bounds the buffer.
            let want = match pending.first_chunk::<HEADER_LEN>() {
                Some(header) => {
                    let need = HEADER_LEN + decode_header(*header)?;
                    need.saturating_sub(pending.len()).max(READ_CHUNK)
                }
                None => READ_CHUNK,
            };
            // Move the incomplete frame to the front so the buffer does not creep.
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            match self.recv.read_chunk(want, true).await? {
                Some(chunk) => self.buf.extend_from_slice(&chunk.bytes),
                None => self.ended = true,
            }
        }
    }

    fn consume(&mut self, used: usize) {
        self.pos += used;
        if self.pos >= self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            if self.buf.capacity() > KEEP_CAPACITY {
                self.buf = Vec::new();
            }
        }
    }

    /// The underlying stream (e.g. to `stop` it).
    pub fn get_mut(&mut self) -> &mut quinn::RecvStream {
        &mut self.recv
    }
}

/// Writes messages to a [`quinn::SendStream`], batching those pushed between flushes.
pub struct FrameWriter {
    send: quinn::SendStream,
    /// Encoded frames; `buf[written..]` is not on the stream yet.
    buf: Vec<u8>,
    written: usize,
}

impl FrameWriter {
    /// Wraps a send stream.
    #[must_use]
    pub fn new(send: quinn::SendStream) -> Self {
        Self {
            send,
            buf: Vec::new(),
            written: 0,
        }
    }

    /// Encodes `msg` into the buffer; nothing is sent until [`FrameWriter::flush`].
    ///
    /// # Errors
    /// If the message cannot be encoded or exceeds the frame limit (the buffer is unchanged).
    pub fn push<T: Wire>(&mut self, msg: &T) -> Result<(), TransportError> {
        msg.encode_into(&mut self.buf)?;
        Ok(())
    }

    /// Whether pushed bytes are waiting for a flush.
    #[must_use]
    pub fn has_pending(&self) -> bool {
        self.written < self.buf.len()
    }

    /// Bytes waiting for a flush (for backpressure decisions).
    #[must_use]
    pub fn pending_bytes(&self) -> usize {
        self.buf.len() - self.written.min(self.buf.len())
    }

    /// Whether another already-queued message may join this write: pushes gathered into one
    /// flush mean fewer stream writes and packets, up to [`BATCH_BYTES`].
    #[must_use]
    pub fn has_room(&self) -> bool {
        self.pending_bytes() < BATCH_BYTES
    }

    /// Writes everything pushed so far to the stream, waiting for flow control as needed.
    ///
    /// Cancel-safe: progress is recorded after each cancel-safe `write`, so a cancelled flush
    /// resumes where it stopped and never sends a byte twice.
    ///
    /// # Errors
    /// If the peer stopped the stream or the connection was lost.
    pub async fn flush(&mut self) -> Result<(), TransportError> {
        while let Some(rest) = self.buf.get(self.written..).filter(|r| !r.is_empty()) {
            self.written += self.send.write(rest).await?;
        }
        self.buf.clear();
        self.written = 0;
        if self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::new();
        }
        Ok(())
    }

    /// Pushes `msg` and flushes.
    ///
    /// # Errors
    /// As [`FrameWriter::push`] and [`FrameWriter::flush`].
    pub async fn send<T: Wire>(&mut self, msg: &T) -> Result<(), TransportError> {
        self.push(msg)?;
        self.flush().await
    }

    /// Finishes the stream: the peer's reader sees a clean end after the last frame.
    ///
    /// # Errors
    /// [`TransportError::Unflushed`] if pushed bytes were not flushed (they would be lost;
    /// nothing is finished), [`TransportError::Closed`] if the stream was already finished or
    /// reset.
    pub fn finish(&mut self) -> Result<(), TransportError> {
        if self.has_pending() {
            return Err(TransportError::Unflushed(self.pending_bytes()));
        }
        self.send.finish()?;
        Ok(())
    }

    /// The underlying stream (e.g. to set its priority or reset it).
    pub fn get_mut(&mut self) -> &mut quinn::SendStream {
        &mut self.send
    }
}
