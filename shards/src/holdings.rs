//! The attempts a worker holds, with running totals of what they reserve, so that its free
//! capacity is found in O(1) on every assignment and report instead of by summing them all
//! (with `--prefetch 256` an agent holds hundreds).

use hodei_core::ids::JobId;
use hodei_core::wire::HeldJob;

use crate::shard::HashMap;

/// A worker's held attempts by job, and the CPUs and memory they reserve in all. The totals
/// are wider than any one reservation, so no number of attempts an agent could report (its
/// `Hello` lists them) overflows them.
#[derive(Debug, Default)]
pub(crate) struct Holdings {
    jobs: HashMap<JobId, HeldJob>,
    cpus: u64,
    memory: u128,
}

impl Holdings {
    /// Holds `h`, replacing what the worker held for the same job.
    pub(crate) fn insert(&mut self, h: HeldJob) {
        self.cpus = self.cpus.saturating_add(u64::from(h.cpus));
        self.memory = self.memory.saturating_add(u128::from(h.memory));
        if let Some(old) = self.jobs.insert(h.job, h) {
            self.release(&old);
        }
    }

    pub(crate) fn remove(&mut self, job: &JobId) -> Option<HeldJob> {
        let h = self.jobs.remove(job)?;
        self.release(&h);
        Some(h)
    }

    /// Everything held, leaving nothing.
    pub(crate) fn take_all(&mut self) -> Vec<HeldJob> {
        self.cpus = 0;
        self.memory = 0;
        self.jobs.drain().map(|(_, h)| h).collect()
    }

    pub(crate) fn into_values(self) -> impl Iterator<Item = HeldJob> {
        self.jobs.into_values()
    }

    pub(crate) fn get(&self, job: &JobId) -> Option<&HeldJob> {
        self.jobs.get(job)
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &HeldJob> {
        self.jobs.values()
    }

    pub(crate) fn len(&self) -> usize {
        self.jobs.len()
    }

    /// CPUs reserved in all.
    pub(crate) fn cpus(&self) -> u64 {
        self.cpus
    }

    /// Memory reserved in all.
    pub(crate) fn memory(&self) -> u128 {
        self.memory
    }

    /// Takes back what `h` added (exactly: it was added when it came in).
    fn release(&mut self, h: &HeldJob) {
        self.cpus = self.cpus.saturating_sub(u64::from(h.cpus));
        self.memory = self.memory.saturating_sub(u128::from(h.memory));
    }
}

#[cfg(test)]
mod tests {
    use hodei_core::ids::Attempt;

    use super::*;

    fn held(job: u64, attempt: u32, cpus: u32, memory: u64) -> HeldJob {
        HeldJob {
            job: JobId::new(0, 1, job),
            attempt: Attempt(attempt),
            cpus,
            memory,
        }
    }

    /// The totals always equal the sum over what is held: after a replacement of the same
    /// job, a removal, a removal of a job not held, and taking everything.
    #[test]
    fn totals_follow_every_change() {
        let mut h = Holdings::default();
        let sums = |h: &Holdings| {
            let cpus: u64 = h.values().map(|x| u64::from(x.cpus)).sum();
            let mem: u128 = h.values().map(|x| u128::from(x.memory)).sum();
            (cpus, mem)
        };
        h.insert(held(1, 1, 2, 100));
        h.insert(held(2, 1, 3, 50));
        assert_eq!((h.cpus(), h.memory()), (5, 150));
        h.insert(held(1, 2, 1, 10));
        assert_eq!((h.cpus(), h.memory()), (4, 60));
        assert_eq!((h.cpus(), h.memory()), sums(&h));
        assert_eq!(h.remove(&JobId::new(0, 1, 2)).map(|x| x.cpus), Some(3));
        assert!(h.remove(&JobId::new(0, 1, 9)).is_none());
        assert_eq!((h.cpus(), h.memory(), h.len()), (1, 10, 1));
        assert_eq!(h.take_all().len(), 1);
        assert_eq!((h.cpus(), h.memory(), h.len()), (0, 0, 0));
    }

    /// Reservations an agent reports can be as large as their types allow; their totals do
    /// not wrap around (which would make a full worker look free).
    #[test]
    fn huge_reservations_do_not_wrap() {
        let mut h = Holdings::default();
        for job in 0..3 {
            h.insert(held(job, 1, u32::MAX, u64::MAX));
        }
        assert_eq!(h.cpus(), 3 * u64::from(u32::MAX));
        assert_eq!(h.memory(), 3 * u128::from(u64::MAX));
    }
}
