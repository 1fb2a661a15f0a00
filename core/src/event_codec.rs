//! The compact form an event is stored in. On the wire an event is an rkyv archive; in the
//! store, where every job writes about four of them, that was ~110 bytes each, with the
//! shard and sequence number repeated from the key and rkyv's alignment padding. Here an
//! event takes ~30 bytes: its shard and seq are left to its place in the store (the key, and
//! its index in a block, `crate::log_block`), the time and lengths are LEB128, ids are 8
//! bytes, states one byte.
//!
//! Layout: `TAG`, `at` (LEB128), subject (0 job / 1 worker, then the id as 8 bytes LE), the
//! correlation id (LEB128 length, bytes), the kind (0 job: state, attempt LEB128, worker as
//! 0 or 1 + 8 bytes; 1 worker: state; 2 stale report: attempt LEB128, worker 8 bytes), the
//! reason (0 or 1 + LEB128 length + bytes). Nothing may follow. A state's code is its place
//! in `JobState::ALL` / `WorkerState::ALL`, so those lists only ever grow at their end.
//!
//! Events stored before this form are rkyv frames, which start with the protocol version
//! (little-endian, never `TAG`): [`is_compact`] tells them apart.

use crate::event::{Event, EventKind, Subject};
use crate::ids::{Attempt, JobId, WorkerId};
use crate::state::{JobState, WorkerState};

/// First byte of a compact event.
pub const TAG: u8 = 0xE2;

// An older event is a frame that starts with the protocol version, little-endian: it must
// never start with `TAG`.
const _: () = assert!(crate::wire::PROTOCOL_VERSION.to_le_bytes()[0] != TAG);

/// Why stored bytes are not a compact event.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventCodecError {
    /// The bytes end inside a field.
    #[error("stored event ends inside its {0}")]
    Truncated(&'static str),
    /// A field holds a value no encoder writes (unknown tag or state, a length past the end).
    #[error("stored event has a bad {0}")]
    Bad(&'static str),
    /// Bytes follow the last field.
    #[error("stored event has {0} bytes after its last field")]
    Trailing(usize),
}

/// Whether `bytes` are in the compact form (else: an rkyv frame of an older version).
#[must_use]
pub fn is_compact(bytes: &[u8]) -> bool {
    bytes.first() == Some(&TAG)
}

/// Appends `ev` in the compact form (its `shard` and `seq` are its place's in the store).
pub fn encode(ev: &Event, out: &mut Vec<u8>) {
    out.push(TAG);
    varint(out, ev.at);
    match ev.subject {
        Subject::Job(j) => {
            out.push(0);
            out.extend_from_slice(&j.0.to_le_bytes());
        }
        Subject::Worker(w) => {
            out.push(1);
            out.extend_from_slice(&w.0.to_le_bytes());
        }
    }
    bytes(out, ev.correlation_id.as_bytes());
    match &ev.kind {
        EventKind::Job {
            state,
            attempt,
            worker,
        } => {
            out.push(0);
            out.push(job_state_code(*state));
            varint(out, u64::from(attempt.0));
            match worker {
                Some(w) => {
                    out.push(1);
                    out.extend_from_slice(&w.0.to_le_bytes());
                }
                None => out.push(0),
            }
        }
        EventKind::Worker { state } => {
            out.push(1);
            out.push(worker_state_code(*state));
        }
        EventKind::StaleReport { attempt, worker } => {
            out.push(2);
            varint(out, u64::from(attempt.0));
            out.extend_from_slice(&worker.0.to_le_bytes());
        }
    }
    match &ev.reason {
        Some(r) => {
            out.push(1);
            bytes(out, r.as_bytes());
        }
        None => out.push(0),
    }
}

/// Decodes a compact event stored under (`shard`, `seq`).
///
/// # Errors
/// If the bytes are not exactly one compact event.
pub fn decode(shard: u8, seq: u64, bytes: &[u8]) -> Result<Event, EventCodecError> {
    let mut r = Reader(bytes);
    if r.byte("tag")? != TAG {
        return Err(EventCodecError::Bad("tag"));
    }
    let at = r.varint("time")?;
    let subject = match r.byte("subject")? {
        0 => Subject::Job(JobId(r.u64("subject")?)),
        1 => Subject::Worker(WorkerId(r.u64("subject")?)),
        _ => return Err(EventCodecError::Bad("subject")),
    };
    let correlation_id = r.string("correlation id")?;
    let kind = match r.byte("kind")? {
        0 => {
            let state = *JobState::ALL
                .get(usize::from(r.byte("state")?))
                .ok_or(EventCodecError::Bad("state"))?;
            let attempt = r.attempt()?;
            let worker = match r.byte("worker")? {
                0 => None,
                1 => Some(WorkerId(r.u64("worker")?)),
                _ => return Err(EventCodecError::Bad("worker")),
            };
            EventKind::Job {
                state,
                attempt,
                worker,
            }
        }
        1 => EventKind::Worker {
            state: *WorkerState::ALL
                .get(usize::from(r.byte("state")?))
                .ok_or(EventCodecError::Bad("state"))?,
        },
        2 => EventKind::StaleReport {
            attempt: r.attempt()?,
            worker: WorkerId(r.u64("worker")?),
        },
        _ => return Err(EventCodecError::Bad("kind")),
    };
    let reason = match r.byte("reason")? {
        0 => None,
        1 => Some(r.string("reason")?),
        _ => return Err(EventCodecError::Bad("reason")),
    };
    if !r.0.is_empty() {
        return Err(EventCodecError::Trailing(r.0.len()));
    }
    Ok(Event {
        shard,
        seq,
        at,
        subject,
        correlation_id,
        kind,
        reason,
    })
}

/// A job state's stored code: its place in `JobState::ALL` (a test checks they agree). A
/// match, so that a new state cannot be added without a code.
const fn job_state_code(s: JobState) -> u8 {
    match s {
        JobState::Pending => 0,
        JobState::Assigned => 1,
        JobState::Running => 2,
        JobState::Succeeded => 3,
        JobState::Failed => 4,
        JobState::Cancelled => 5,
        JobState::TimedOut => 6,
    }
}

/// A worker state's stored code: its place in `WorkerState::ALL`.
const fn worker_state_code(s: WorkerState) -> u8 {
    match s {
        WorkerState::Connecting => 0,
        WorkerState::Ready => 1,
        WorkerState::Busy => 2,
        WorkerState::Draining => 3,
        WorkerState::Disconnected => 4,
        WorkerState::Lost => 5,
        WorkerState::Terminated => 6,
    }
}

fn varint(out: &mut Vec<u8>, v: u64) {
    crate::leb128::put(out, v);
}

fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&[u8], EventCodecError> {
        if self.0.len() < n {
            return Err(EventCodecError::Truncated(field));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn byte(&mut self, field: &'static str) -> Result<u8, EventCodecError> {
        Ok(self.take(1, field)?[0])
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, EventCodecError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8, field)?);
        Ok(u64::from_le_bytes(a))
    }

    fn varint(&mut self, field: &'static str) -> Result<u64, EventCodecError> {
        crate::leb128::take(&mut self.0).map_err(|e| match e {
            crate::leb128::Leb128Error::Truncated => EventCodecError::Truncated(field),
            crate::leb128::Leb128Error::Overlong => EventCodecError::Bad(field),
        })
    }

    fn attempt(&mut self) -> Result<Attempt, EventCodecError> {
        let v = self.varint("attempt")?;
        Ok(Attempt(
            u32::try_from(v).map_err(|_| EventCodecError::Bad("attempt"))?,
        ))
    }

    fn string(&mut self, field: &'static str) -> Result<String, EventCodecError> {
        let len = usize::try_from(self.varint(field)?).map_err(|_| EventCodecError::Bad(field))?;
        if len > self.0.len() {
            return Err(EventCodecError::Bad(field));
        }
        String::from_utf8(self.take(len, field)?.to_vec()).map_err(|_| EventCodecError::Bad(field))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(kind: EventKind, reason: Option<&str>) -> Event {
        Event {
            shard: 1,
            seq: 42,
            at: 1_795_500_000_123_456,
            subject: Subject::Job(JobId::new(1, 7, 99)),
            correlation_id: "build-17".to_owned(),
            kind,
            reason: reason.map(str::to_owned),
        }
    }

    #[test]
    fn state_codes_are_places_in_all() {
        for (i, s) in JobState::ALL.into_iter().enumerate() {
            assert_eq!(usize::from(job_state_code(s)), i, "{s}");
        }
        for (i, s) in WorkerState::ALL.into_iter().enumerate() {
            assert_eq!(usize::from(worker_state_code(s)), i, "{s}");
        }
    }

    #[test]
    fn every_state_round_trips_in_about_thirty_bytes() {
        for state in JobState::ALL {
            let ev = sample(
                EventKind::Job {
                    state,
                    attempt: Attempt(2),
                    worker: Some(WorkerId::new(0, 7, 3)),
                },
                None,
            );
            let mut b = Vec::new();
            encode(&ev, &mut b);
            assert!(is_compact(&b));
            assert!(b.len() <= 40, "{} bytes", b.len());
            assert_eq!(decode(1, 42, &b), Ok(ev));
        }
        for state in WorkerState::ALL {
            let mut ev = sample(EventKind::Worker { state }, Some("heartbeats stopped"));
            ev.subject = Subject::Worker(WorkerId::new(1, 2, 3));
            ev.correlation_id.clear();
            let mut b = Vec::new();
            encode(&ev, &mut b);
            assert_eq!(decode(1, 42, &b), Ok(ev));
        }
    }

    #[test]
    fn an_older_rkyv_frame_is_not_taken_for_a_compact_event() -> Result<(), crate::frame::FrameError>
    {
        use crate::frame::Wire;
        let ev = sample(
            EventKind::StaleReport {
                attempt: Attempt(1),
                worker: WorkerId(5),
            },
            None,
        );
        let mut b = Vec::new();
        ev.encode_into(&mut b)?;
        assert!(!is_compact(&b));
        Ok(())
    }

    #[test]
    fn damaged_events_are_refused() {
        let ev = sample(
            EventKind::Job {
                state: JobState::Running,
                attempt: Attempt(1),
                worker: None,
            },
            Some("why"),
        );
        let mut b = Vec::new();
        encode(&ev, &mut b);
        for cut in 0..b.len() {
            assert!(decode(1, 42, &b[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = b.clone();
        longer.push(0);
        assert_eq!(decode(1, 42, &longer), Err(EventCodecError::Trailing(1)));
        let mut bad_state = b;
        // tag, 8-byte time, subject tag + id, corr id (len 1 + 8), kind tag: the state.
        let at_len = {
            let mut v = Vec::new();
            varint(&mut v, ev.at);
            v.len()
        };
        let state_at = 1 + at_len + 9 + 1 + ev.correlation_id.len() + 1;
        bad_state[state_at] = 200;
        assert_eq!(
            decode(1, 42, &bad_state),
            Err(EventCodecError::Bad("state"))
        );
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_fail_without_panicking(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut tagged = vec![TAG];
            tagged.extend_from_slice(&b);
            let _ = decode(0, 1, &tagged);
            let _ = decode(0, 1, &b);
        }

        #[test]
        fn any_event_round_trips(at in any::<u64>(), attempt in any::<u32>(), w in any::<u64>(),
                                 cid in ".{0,20}", reason in proptest::option::of(".{0,20}")) {
            let ev = Event {
                shard: 3,
                seq: 9,
                at,
                subject: Subject::Worker(WorkerId(w)),
                correlation_id: cid,
                kind: EventKind::StaleReport { attempt: Attempt(attempt), worker: WorkerId(w) },
                reason,
            };
            let mut b = Vec::new();
            encode(&ev, &mut b);
            prop_assert_eq!(decode(3, 9, &b), Ok(ev));
        }
    }
}
