//! Framing: `version:u16 LE | len:u32 LE | rkyv payload`. A frame is validated (bytecheck)
//! before anything reads it, so random bytes produce an error, never a panic.

use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::job::JobRecord;
use crate::wire::{FromAgent, FromServer, PROTOCOL_VERSION, ToAgent, ToServer};

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 6;

/// Largest payload accepted (a batch of output is at most a few hundred KiB; specs are small).
pub const MAX_FRAME: usize = 8 << 20;

/// Why bytes could not be turned into a message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The peer speaks another protocol version.
    #[error("protocol version {got} is not supported (this build speaks {PROTOCOL_VERSION})")]
    Version {
        /// Version in the frame.
        got: u16,
    },
    /// The frame announces a payload larger than [`MAX_FRAME`].
    #[error("frame of {len} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge {
        /// Announced length.
        len: usize,
    },
    /// The payload is not a valid archive of the expected message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Encoding failed (should not happen for well-formed values).
    #[error("could not encode message: {0}")]
    Encode(String),
}

/// Parses a header, returning the payload length.
///
/// # Errors
/// On a foreign version or an oversized frame.
pub fn decode_header(header: [u8; HEADER_LEN]) -> Result<usize, FrameError> {
    let version = u16::from_le_bytes([header[0], header[1]]);
    if version != PROTOCOL_VERSION {
        return Err(FrameError::Version { got: version });
    }
    let len = u32::from_le_bytes([header[2], header[3], header[4], header[5]]) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge { len });
    }
    Ok(len)
}

/// Splits complete frames off the front of a byte buffer (for stream readers that receive
/// arbitrary chunks): returns the payload of the first frame and the bytes consumed.
///
/// # Errors
/// On a bad header.
pub fn split_frame(buf: &[u8]) -> Result<Option<(&[u8], usize)>, FrameError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let mut h = [0u8; HEADER_LEN];
    h.copy_from_slice(header);
    let len = decode_header(h)?;
    Ok(buf
        .get(HEADER_LEN..HEADER_LEN + len)
        .map(|p| (p, HEADER_LEN + len)))
}

/// A type that travels in frames.
pub trait Wire: Sized {
    /// Appends one complete frame (header and payload) to `out`.
    ///
    /// # Errors
    /// If the value cannot be archived or is larger than [`MAX_FRAME`].
    fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), FrameError>;

    /// Validates and deserializes a payload (without header).
    ///
    /// # Errors
    /// If the bytes are not a valid archive of `Self`.
    fn decode(payload: &[u8]) -> Result<Self, FrameError>;

    /// Encodes into a fresh frame.
    ///
    /// # Errors
    /// As [`Wire::encode_into`].
    fn to_frame(&self) -> Result<Vec<u8>, FrameError> {
        let mut v = Vec::new();
        self.encode_into(&mut v)?;
        Ok(v)
    }
}

/// rkyv needs its input aligned; network buffers are not, so copy when needed.
fn aligned(payload: &[u8]) -> AlignedVec {
    let mut v = AlignedVec::with_capacity(payload.len());
    v.extend_from_slice(payload);
    v
}

thread_local! {
    /// This thread's archive buffer, reused: a fresh one per frame cost several allocations
    /// (it grows by doubling) for every message and every store record.
    static SCRATCH: std::cell::Cell<AlignedVec> = std::cell::Cell::new(AlignedVec::new());
}

/// A scratch buffer grown past this (a large output batch) is dropped, not kept.
const SCRATCH_KEEP: usize = 256 << 10;

/// Appends the header and the archived bytes.
fn frame_into(bytes: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    if bytes.len() > MAX_FRAME {
        return Err(FrameError::TooLarge { len: bytes.len() });
    }
    out.reserve(HEADER_LEN + bytes.len());
    out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    #[allow(clippy::cast_possible_truncation)] // bounded by MAX_FRAME above
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

macro_rules! wire {
    ($($t:ty),*) => {$(
        impl Wire for $t {
            fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
                let mut buf = SCRATCH.take();
                buf.clear();
                let bytes = rkyv::api::high::to_bytes_in::<_, rancor::Error>(self, buf)
                    .map_err(|e| FrameError::Encode(e.to_string()))?;
                let framed = frame_into(&bytes, out);
                if bytes.capacity() <= SCRATCH_KEEP {
                    SCRATCH.set(bytes);
                }
                framed
            }

            fn decode(payload: &[u8]) -> Result<Self, FrameError> {
                let buf = aligned(payload);
                rkyv::from_bytes::<$t, rancor::Error>(&buf)
                    .map_err(|e| FrameError::Malformed(e.to_string()))
            }
        }
    )*};
}

wire!(
    FromAgent,
    ToAgent,
    ToServer,
    crate::wire::Request,
    FromServer,
    JobRecord,
    crate::event::Event
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Attempt, JobId, WorkerId};
    use crate::job::Outcome;
    use crate::spec::{Command, JobSpec};
    use crate::wire::{Chunk, HeldJob, Hello, Resources, Stream};
    use proptest::prelude::*;

    fn spec_strategy() -> impl Strategy<Value = JobSpec> {
        (
            ".{0,20}",
            prop_oneof![
                (".{1,10}", proptest::collection::vec(".{0,8}", 0..4))
                    .prop_map(|(program, args)| Command::Exec { program, args }),
                ".{1,40}".prop_map(|body| Command::Script { body }),
            ],
            any::<i32>(),
            any::<u32>(),
            any::<u64>(),
            proptest::option::of(any::<u64>()),
            proptest::collection::vec(("[a-z]{1,5}", ".{0,5}"), 0..3),
        )
            .prop_map(
                |(name, command, priority, cpus, memory, timeout_ms, env)| JobSpec {
                    name,
                    command,
                    env: env.clone(),
                    workdir: None,
                    priority,
                    cpus,
                    memory,
                    labels: env,
                    timeout_ms,
                    policy: crate::spec::Policy::default(),
                    secrets: vec!["db_pass".to_owned()],
                    secret_delivery: crate::spec::SecretDelivery::Stdin,
                    owner: "ci".to_owned(),
                    max_output: None,
                },
            )
    }

    fn from_agent_strategy() -> impl Strategy<Value = FromAgent> {
        let job = any::<u64>().prop_map(JobId);
        prop_oneof![
            (any::<u32>(), any::<u32>())
                .prop_map(|(running, load)| FromAgent::Heartbeat { running, load }),
            (
                job.clone(),
                any::<u32>(),
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..300)
            )
                .prop_map(|(job, a, offset, data)| FromAgent::Output {
                    job,
                    attempt: Attempt(a),
                    offset,
                    chunks: vec![Chunk {
                        stream: Stream::Stderr,
                        data
                    }],
                }),
            (job, any::<i32>()).prop_map(|(job, c)| FromAgent::Finished {
                job,
                attempt: Attempt(1),
                outcome: Outcome::Exited(c),
                at: 5,
            }),
            (
                proptest::option::of(any::<u64>().prop_map(WorkerId)),
                ".{0,10}"
            )
                .prop_map(|(worker, hostname)| {
                    FromAgent::Hello(Hello {
                        worker,
                        hostname,
                        resources: Resources {
                            slots: 2,
                            cpus: 4,
                            memory: 1 << 30,
                            labels: vec![("a".into(), "b".into())],
                        },
                        held: vec![HeldJob {
                            job: JobId(7),
                            attempt: Attempt(2),
                            cpus: 1,
                            memory: 0,
                        }],
                    })
                }),
        ]
    }

    proptest! {
        #[test]
        fn from_agent_round_trips(msg in from_agent_strategy()) {
            let frame = msg.to_frame().map_err(|e| TestCaseError::fail(e.to_string()))?;
            let (payload, used) = split_frame(&frame).ok().flatten().ok_or_else(|| TestCaseError::fail("no frame"))?;
            prop_assert_eq!(used, frame.len());
            prop_assert_eq!(FromAgent::decode(payload), Ok(msg));
        }

        #[test]
        fn submit_round_trips(specs in proptest::collection::vec(spec_strategy(), 0..5)) {
            let msg = ToServer::Job(crate::wire::JobRequest::Submit { specs });
            let frame = msg.to_frame().map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(ToServer::decode(&frame[HEADER_LEN..]), Ok(msg));
        }

        /// Random bytes are refused or decoded, never a panic, for every message type.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = FromAgent::decode(&bytes);
            let _ = ToAgent::decode(&bytes);
            let _ = ToServer::decode(&bytes);
            let _ = FromServer::decode(&bytes);
            let _ = JobRecord::decode(&bytes);
            let _ = split_frame(&bytes);
        }

        /// Flipping any byte of a valid frame never panics the decoder.
        #[test]
        fn corrupted_frames_never_panic(msg in from_agent_strategy(), idx: usize, byte: u8) {
            let mut frame = msg.to_frame().map_err(|e| TestCaseError::fail(e.to_string()))?;
            let i = idx % frame.len();
            frame[i] = byte;
            if let Ok(Some((payload, _))) = split_frame(&frame) {
                let _ = FromAgent::decode(payload);
            }
        }
    }

    #[test]
    fn refuses_other_versions_and_oversize() {
        let mut frame = FromAgent::Heartbeat {
            running: 1,
            load: 2,
        }
        .to_frame()
        .unwrap_or_default();
        frame[0] = 9;
        assert_eq!(split_frame(&frame), Err(FrameError::Version { got: 9 }));
        let mut h = [0u8; HEADER_LEN];
        h[..2].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        h[2..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode_header(h), Err(FrameError::TooLarge { .. })));
        assert_eq!(split_frame(&frame[..3]), Ok(None));
    }
}
