//! The simulated store: what survives a restart. Written only by commits
//! (`invariants::apply_commit` checks each write first).

use std::collections::HashMap;

use hodei_core::event::Event;
use hodei_core::ids::{Attempt, JobId};
use hodei_core::job::JobRecord;
use hodei_core::time::Micros;

pub struct Store {
    pub jobs: HashMap<JobId, JobRecord>,
    /// Stored output end per attempt.
    pub output: HashMap<(JobId, Attempt), u64>,
    /// Events per shard, in order.
    pub events: Vec<Vec<Event>>,
    /// Jobs deleted by retention: their last record, and when it was deleted (the real
    /// store drops them; the checks still read them).
    pub expired: HashMap<JobId, (JobRecord, Micros)>,
    /// When each job's final record was stored (retention counts from the shard's own time
    /// of the end, which is no later).
    pub final_at: HashMap<JobId, Micros>,
}

impl Store {
    pub fn new(shards: usize) -> Self {
        Self {
            jobs: HashMap::new(),
            output: HashMap::new(),
            events: vec![Vec::new(); shards],
            expired: HashMap::new(),
            final_at: HashMap::new(),
        }
    }

    /// The records a restarted server loads, with the output end of their attempt (the real
    /// store derives it from the output table).
    pub fn load(&self) -> Vec<JobRecord> {
        let mut jobs: Vec<JobRecord> = self
            .jobs
            .values()
            .map(|r| {
                let mut r = r.clone();
                r.output_end = self.output.get(&(r.id, r.attempt)).copied().unwrap_or(0);
                r
            })
            .collect();
        jobs.sort_by_key(|r| r.id);
        jobs
    }

    /// A job's last record, stored or expired.
    pub fn record(&self, id: &JobId) -> Option<&JobRecord> {
        self.jobs
            .get(id)
            .or_else(|| self.expired.get(id).map(|(r, _)| r))
    }

    pub fn last_seq(&self, shard: usize) -> u64 {
        self.events[shard].last().map_or(0, |e| e.seq)
    }
}
