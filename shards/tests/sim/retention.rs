//! Retention (`hodei server --retain-finished`): final jobs leave the shards and the store
//! once their window is over, and nothing else does.
//!
//! Checked at every commit that deletes a job: it was stored, final, and ended at least the
//! window before (by its stored `finished_at`, no later than the shard's own time of the
//! end); nothing of it is written afterwards (`invariants.rs`). At the end of a run, which
//! goes on past the window once every job is final: every job final for longer than the
//! window and a pass (plus commit time) is gone, and no shard indexes more final jobs than
//! it holds. The end checks of every acknowledged job read the last record of a deleted one.

use hodei_core::ids::JobId;
use hodei_core::time::{Micros, ms};
use hodei_shards::retention_interval;

use crate::scenarios::{chaos, policies};
use crate::world::{Opts, Sim, scenario};

impl Sim {
    /// A commit of shard `shard` deletes job `id`.
    pub fn apply_delete(&mut self, shard: usize, id: JobId) {
        let Some(window) = self.opts.retain_ms.map(ms) else {
            self.violation(format!("{id} deleted with retention off"));
            return;
        };
        if id.owner(self.opts.shards) != shard {
            self.violation(format!("{id} deleted by shard {shard}, not its owner"));
        }
        let Some(r) = self.store.jobs.remove(&id) else {
            let again = self.store.expired.contains_key(&id);
            self.violation(format!(
                "{id} deleted, not stored (deleted before: {again})"
            ));
            return;
        };
        if !r.state.is_final() {
            let msg = format!("{id} deleted while {} (attempt {})", r.state, r.attempt);
            self.violation(msg);
        }
        let ended = r.finished_at.unwrap_or(r.created_at);
        if self.now < ended.saturating_add(window) {
            let msg = format!(
                "{id} deleted {} ms after it ended, within the {} ms window",
                (self.now.saturating_sub(ended)) / 1_000,
                window / 1_000
            );
            self.violation(msg);
        }
        self.count("job expired");
        self.store.expired.insert(id, (r, self.now));
    }

    /// How long after its window a final job may still be stored: a retention pass, the
    /// commit (a full disk holds it), and the delivery of the result that ended it.
    fn retention_slack(&self) -> Micros {
        let window = self.opts.retain_ms.map_or(0, ms);
        let held = if self.opts.disk_full > 0 {
            ms(self.opts.full_ms.1)
        } else {
            0
        };
        retention_interval(window) + held + ms(2_000)
    }

    /// How long a run goes on once every job is final: past every window, plus the slack.
    pub fn retention_tail(&self) -> Micros {
        self.opts
            .retain_ms
            .map_or(0, |w| ms(w) + self.retention_slack() + ms(1_000))
    }

    /// At the end: every job final for longer than the window (and the slack) is gone, and
    /// no shard indexes more final jobs than it holds.
    pub fn check_retention_at_end(&self) -> Vec<String> {
        let mut v = Vec::new();
        for s in &self.server.shards {
            let f = s.footprint();
            if f.retained_finished > f.jobs {
                v.push(format!(
                    "shard {} indexes {} final jobs for retention, holding {} jobs",
                    s.index(),
                    f.retained_finished,
                    f.jobs
                ));
            }
        }
        let Some(window) = self.opts.retain_ms.map(ms) else {
            return v;
        };
        let late = window + self.retention_slack();
        let mut kept: Vec<_> = self
            .store
            .jobs
            .values()
            .filter(|r| r.state.is_final())
            .filter_map(|r| {
                let at = *self.store.final_at.get(&r.id)?;
                (self.now.saturating_sub(at) > late).then_some((r.id, at))
            })
            .collect();
        kept.sort();
        for (id, at) in kept {
            v.push(format!(
                "{id} final since {} ms, still stored with a {} ms window",
                (self.now - at) / 1_000,
                window / 1_000
            ));
        }
        v
    }
}

/// A 3 s window (longer than the gap between an idempotent submit and its repeat: a key
/// names one job while both may arrive), submissions over 6 s so that jobs expire while
/// others are submitted, run and retried, with restarts (jobs loaded from the store expire
/// too) and lost connections.
pub fn retention() -> Opts {
    Opts {
        retain_ms: Some(3_000),
        submit_ms: 6_000,
        restarts: 2,
        conn_losses: 4,
        fault_ms: 8_000,
        ..policies()
    }
}

/// Every fault at once, with a 3 s window.
pub fn retention_chaos() -> Opts {
    Opts {
        retain_ms: Some(3_000),
        disk_full: 2,
        full_ms: (500, 5_000),
        ..chaos()
    }
}

#[test]
fn finished_jobs_expire_and_nothing_else_does() {
    let name = "finished_jobs_expire_and_nothing_else_does";
    assert!(scenario(name, 160, retention) > 0);
}

#[test]
fn retention_under_every_fault() {
    scenario("retention_under_every_fault", 120, retention_chaos);
}
