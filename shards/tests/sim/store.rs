//! The simulated store: what survives a restart. Written only by commits
//! (`invariants::apply_commit` checks each write first).

use std::collections::HashMap;

use hodei_core::event::Event;
use hodei_core::ids::{Attempt, JobId};
use hodei_core::job::JobRecord;

pub struct Store {
    pub jobs: HashMap<JobId, JobRecord>,
    /// Stored output end per attempt.
    pub output: HashMap<(JobId, Attempt), u64>,
    /// Events per shard, in order.
    pub events: Vec<Vec<Event>>,
}

impl Store {
    pub fn new(shards: usize) -> Self {
        Self {
            jobs: HashMap::new(),
            output: HashMap::new(),
            events: vec![Vec::new(); shards],
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

    pub fn last_seq(&self, shard: usize) -> u64 {
        self.events[shard].last().map_or(0, |e| e.seq)
    }
}
