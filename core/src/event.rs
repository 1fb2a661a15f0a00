//! Events: every state change of a job or a worker, numbered per shard and persisted in the
//! same store batch as the change itself, so neither exists without the other.
//!
//! Each shard numbers its own events (`seq` 1, 2, ...). A reader resumes with a cursor that
//! holds the last `seq` it saw from every shard ([`Cursor`]), which is exact across shards.

use crate::ids::{Attempt, JobId, WorkerId};
use crate::state::{JobState, WorkerState};
use crate::time::Micros;

/// What an event is about.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Subject {
    /// A job.
    Job(JobId),
    /// A worker.
    Worker(WorkerId),
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum EventKind {
    /// A job changed state.
    Job {
        /// New state.
        state: JobState,
        /// Its attempt.
        attempt: Attempt,
        /// Its worker, when on one.
        worker: Option<WorkerId>,
    },
    /// A worker changed state.
    Worker {
        /// New state.
        state: WorkerState,
    },
    /// A report for an attempt that is no longer current arrived and was ignored.
    StaleReport {
        /// The stale attempt.
        attempt: Attempt,
        /// The worker that sent it.
        worker: WorkerId,
    },
}

/// One event.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Event {
    /// The shard that numbered it.
    pub shard: u8,
    /// Its number within that shard.
    pub seq: u64,
    /// When (server clock).
    pub at: Micros,
    /// About what.
    pub subject: Subject,
    /// The job's correlation id (empty for workers).
    pub correlation_id: String,
    /// What happened.
    pub kind: EventKind,
    /// Why, when there is a reason worth telling.
    pub reason: Option<String>,
}

/// Where a reader is: the last `seq` seen from each shard (missing shards: 0).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor(pub Vec<u64>);

impl Cursor {
    /// Last seq seen from `shard`.
    #[must_use]
    pub fn get(&self, shard: usize) -> u64 {
        self.0.get(shard).copied().unwrap_or(0)
    }

    /// Notes an event as seen.
    pub fn advance(&mut self, shard: usize, seq: u64) {
        if self.0.len() <= shard {
            self.0.resize(shard + 1, 0);
        }
        if let Some(s) = self.0.get_mut(shard) {
            *s = (*s).max(seq);
        }
    }

    /// Parses `0:15,1:22` (shard:seq pairs) or a bare number (the same seq for every shard).
    ///
    /// # Errors
    /// On malformed text.
    pub fn parse(s: &str) -> Result<Self, String> {
        let err = || {
            format!(
                "invalid cursor {s:?}: expected SEQ or SHARD:SEQ[,SHARD:SEQ...] as printed by `hodei events`"
            )
        };
        let mut c = Self::default();
        if let Ok(n) = s.trim().parse::<u64>() {
            c.0 = vec![n; 256];
            return Ok(c);
        }
        for part in s.split(',') {
            let (a, b) = part.trim().split_once(':').ok_or_else(err)?;
            let shard: u8 = a.parse().map_err(|_| err())?;
            let seq: u64 = b.parse().map_err(|_| err())?;
            c.advance(usize::from(shard), seq);
        }
        Ok(c)
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{i}:{s}"))
            .collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_parse_and_print() {
        let c = Cursor::parse("0:15,1:22").unwrap_or_default();
        assert_eq!(c.get(0), 15);
        assert_eq!(c.get(1), 22);
        assert_eq!(c.get(7), 0);
        assert_eq!(c.to_string(), "0:15,1:22");
        assert_eq!(Cursor::parse("5").unwrap_or_default().get(3), 5);
        assert!(Cursor::parse("x:1").is_err());
        assert!(Cursor::parse("1:").is_err());
    }
}
