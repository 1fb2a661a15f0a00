//! [`WorkerTable`]: the workers a shard owns, their connections, and the free set the
//! scheduler picks from.
//!
//! The rules it keeps:
//! - A worker's free capacity is derived, never adjusted in place ([`Worker::recompute`]).
//! - The free set holds exactly the workers that take jobs (`Ready`, connected) with a free
//!   slot, each under the key in its `free_key`, ordered so that the first fitting worker is
//!   the least loaded one and, among equals, the one idle longest. The methods that change
//!   capacity here keep it in step; a handler that changes a worker's state or connection
//!   through [`WorkerTable::get_mut`] calls [`WorkerTable::refresh`] after.
//! - A connection maps to at most one worker, and a worker's `conn` is that connection.
//! - Departed workers (lost, or gone after a drain) are kept for `worker list`, but only the
//!   last [`MAX_DEPARTED`] of them: memory stays bounded however many agents come and go
//!   over months, and the most recent departures, the ones an operator asks about, stay
//!   visible. A count rather than a retention time, so the bound holds whatever the churn;
//!   the stored events keep the history of every worker.

use std::cmp::Reverse;
use std::collections::{BTreeSet, VecDeque};

use hodei_core::ids::{Attempt, JobId, WorkerId};
use hodei_core::job::WorkerInfo;
use hodei_core::spec::JobSpec;
use hodei_core::state::WorkerState;
use hodei_core::time::Micros;
use hodei_core::wire::{HeldJob, Resources};

use crate::comm::{ConnId, Grant, Offer};
use crate::holdings::Holdings;
use crate::sched::fits;
use crate::shard::HashMap;

/// How many departed workers a shard keeps (see the module docs). A departed worker is a few
/// hundred bytes, so this is well under a MiB per shard.
pub(crate) const MAX_DEPARTED: usize = 1_000;

/// A worker this shard owns.
#[derive(Debug)]
pub(crate) struct Worker {
    pub(crate) id: WorkerId,
    pub(crate) conn: Option<ConnId>,
    pub(crate) state: WorkerState,
    pub(crate) hostname: String,
    pub(crate) res: Resources,
    pub(crate) free_slots: u32,
    pub(crate) free_cpus: u32,
    pub(crate) free_mem: u64,
    /// Attempts it holds, with what they reserved.
    pub(crate) held: Holdings,
    pub(crate) last_seen: Micros,
    /// Without a connection: when it is lost unless it is back (the disconnect grace after
    /// the connection closed, or the re-attach grace after a restart).
    pub(crate) back_by: Option<Micros>,
    /// When it was last given a job (a shard-local counter), to rotate among equals.
    pub(crate) last_assigned: u64,
    /// Its key in the free set, while it is there.
    pub(crate) free_key: Option<FreeKey>,
    /// Capacity offered to an outstanding steal request (slots, CPUs, memory).
    pub(crate) offered: (u32, u32, u64),
    /// Its stamp in the departed queue, while it is departed.
    departed: Option<u64>,
    /// Known only from the jobs it held before a restart: not back since.
    pub(crate) restored: bool,
}

/// Order of the free set: most free slots first, then idle longest, then id. The first
/// worker that fits a job is the least loaded one, found in O(log n) for a job without
/// special requirements.
pub(crate) type FreeKey = (Reverse<u32>, u64, WorkerId);

impl Worker {
    /// A worker that just said Hello, holding nothing yet.
    pub(crate) fn new(
        id: WorkerId,
        conn: ConnId,
        hostname: String,
        res: Resources,
        now: Micros,
    ) -> Self {
        Self {
            id,
            conn: Some(conn),
            state: WorkerState::Connecting,
            hostname,
            free_slots: res.slots,
            free_cpus: res.cpus,
            free_mem: res.memory,
            res,
            held: Holdings::default(),
            last_seen: now,
            back_by: None,
            last_assigned: 0,
            free_key: None,
            offered: (0, 0, 0),
            departed: None,
            restored: false,
        }
    }

    /// A worker that held jobs before a restart and has not said Hello since: disconnected,
    /// with no capacity, lost at `back_by` unless its agent re-attaches.
    pub(crate) fn restored(id: WorkerId, now: Micros, back_by: Micros) -> Self {
        let none = Resources {
            slots: 0,
            cpus: 0,
            memory: 0,
            labels: Vec::new(),
        };
        let mut w = Self::new(id, ConnId(0), String::new(), none, now);
        w.conn = None;
        w.state = WorkerState::Disconnected;
        w.back_by = Some(back_by);
        w.restored = true;
        w
    }

    pub(crate) fn fits(&self, spec: &JobSpec) -> bool {
        fits(
            spec,
            self.free_slots,
            self.free_cpus,
            self.free_mem,
            &self.res.labels,
        )
    }

    pub(crate) fn reserve(&mut self, held: HeldJob) {
        self.held.insert(held);
        self.recompute();
    }

    /// Releases an attempt's reservation; false if it did not hold that attempt.
    pub(crate) fn release(&mut self, job: JobId, attempt: Attempt) -> bool {
        match self.held.get(&job) {
            Some(h) if h.attempt == attempt => {
                self.held.remove(&job);
                self.recompute();
                true
            }
            _ => false,
        }
    }

    /// Free capacity is derived, never adjusted in place: what the agent offers, minus the
    /// attempts it holds, minus what is offered to an outstanding steal. (Adding back what
    /// was taken double-counts after a re-registration with more held attempts than slots.)
    pub(crate) fn recompute(&mut self) {
        // Past what the types hold, a worker is full anyway.
        let held = u32::try_from(self.held.len()).unwrap_or(u32::MAX);
        let cpus = u32::try_from(self.held.cpus()).unwrap_or(u32::MAX);
        let mem = u64::try_from(self.held.memory()).unwrap_or(u64::MAX);
        let (os, oc, om) = self.offered;
        self.free_slots = self.res.slots.saturating_sub(held).saturating_sub(os);
        self.free_cpus = self.res.cpus.saturating_sub(cpus).saturating_sub(oc);
        self.free_mem = self.res.memory.saturating_sub(mem).saturating_sub(om);
    }

    fn info(&self) -> WorkerInfo {
        WorkerInfo {
            id: self.id,
            hostname: self.hostname.clone(),
            state: self.state,
            slots: self.res.slots,
            #[allow(clippy::cast_possible_truncation)]
            running: self.held.len() as u32,
            cpus: self.res.cpus,
            memory: self.res.memory,
            labels: self.res.labels.clone(),
            last_seen: self.last_seen,
        }
    }
}

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct WorkerTable {
    workers: HashMap<WorkerId, Worker>,
    conns: HashMap<ConnId, WorkerId>,
    /// Ready workers with a free slot: the only candidates for scheduling.
    free: BTreeSet<FreeKey>,
    next_seq: u64,
    /// Counts assignments, for [`Worker::last_assigned`].
    assign_seq: u64,
    /// Departures, oldest first, stamped: an entry whose worker came back since (and so no
    /// longer carries that stamp) is stale and only takes room until it is dropped.
    departures: VecDeque<(WorkerId, u64)>,
    departure_seq: u64,
    /// Workers departed now.
    departed: usize,
}

impl WorkerTable {
    /// A fresh id for a worker of shard `shard`, not used by any worker here.
    pub(crate) fn mint(&mut self, shard: u8, epoch: u32) -> WorkerId {
        loop {
            self.next_seq += 1;
            let id = WorkerId::new(shard, epoch, self.next_seq);
            if !self.workers.contains_key(&id) {
                return id;
            }
        }
    }

    pub(crate) fn get(&self, id: WorkerId) -> Option<&Worker> {
        self.workers.get(&id)
    }

    pub(crate) fn get_mut(&mut self, id: WorkerId) -> Option<&mut Worker> {
        self.workers.get_mut(&id)
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &Worker> {
        self.workers.values()
    }

    /// The worker registered on a connection.
    pub(crate) fn by_conn(&self, conn: ConnId) -> Option<WorkerId> {
        self.conns.get(&conn).copied()
    }

    /// Adds a worker (registered on its connection, if it has one), replacing any worker
    /// with its id.
    pub(crate) fn insert(&mut self, w: Worker) {
        let id = w.id;
        if let Some(conn) = w.conn {
            self.conns.insert(conn, id);
        }
        self.workers.insert(id, w);
    }

    /// Takes a worker out (a reconnect replaces it), and out of the free set.
    pub(crate) fn remove(&mut self, id: WorkerId) -> Option<Worker> {
        let mut w = self.workers.remove(&id)?;
        if let Some(key) = w.free_key.take() {
            self.free.remove(&key);
        }
        if w.departed.take().is_some() {
            self.departed = self.departed.saturating_sub(1);
        }
        Some(w)
    }

    /// A worker departed (lost, or gone with its connection closed): kept among the last
    /// [`MAX_DEPARTED`] departures. The workers forgotten to make room, for their timers to
    /// go too.
    pub(crate) fn depart(&mut self, id: WorkerId) -> Vec<WorkerId> {
        let Some(w) = self.workers.get_mut(&id) else {
            return Vec::new();
        };
        if w.departed.is_some() || w.conn.is_some() {
            return Vec::new();
        }
        self.departure_seq += 1;
        w.departed = Some(self.departure_seq);
        self.departed += 1;
        self.departures.push_back((id, self.departure_seq));
        let mut forgotten = Vec::new();
        while self.departures.len() > MAX_DEPARTED {
            let Some((old, stamp)) = self.departures.pop_front() else {
                break;
            };
            if self
                .workers
                .get(&old)
                .is_some_and(|w| w.departed == Some(stamp))
                && self.remove(old).is_some()
            {
                forgotten.push(old);
            }
        }
        forgotten
    }

    /// Workers in the table.
    pub(crate) fn len(&self) -> usize {
        self.workers.len()
    }

    /// Departed workers in the table.
    pub(crate) const fn departed_len(&self) -> usize {
        self.departed
    }

    /// Forgets a connection; the worker it belonged to, if any.
    pub(crate) fn unlink(&mut self, conn: ConnId) -> Option<WorkerId> {
        self.conns.remove(&conn)
    }

    /// Takes a worker's connection away from it (to close it); `None` if it had none.
    pub(crate) fn take_conn(&mut self, id: WorkerId) -> Option<ConnId> {
        let c = self.workers.get_mut(&id)?.conn.take()?;
        self.conns.remove(&c);
        Some(c)
    }

    /// Keeps the free set and Ready/Busy in step with a worker's state and capacity.
    pub(crate) fn refresh(&mut self, id: WorkerId) {
        if let Some(w) = self.workers.get_mut(&id) {
            Self::refresh_entry(&mut self.free, id, w);
        }
    }

    fn refresh_entry(free: &mut BTreeSet<FreeKey>, id: WorkerId, w: &mut Worker) {
        let target = match w.state {
            WorkerState::Ready | WorkerState::Busy if w.free_slots == 0 => WorkerState::Busy,
            WorkerState::Ready | WorkerState::Busy => WorkerState::Ready,
            other => other,
        };
        if target != w.state && w.state.can_transition_to(target) {
            w.state = target;
        }
        if let Some(old) = w.free_key.take() {
            free.remove(&old);
        }
        if w.state.accepts_jobs() && w.free_slots > 0 && w.conn.is_some() {
            let key = (Reverse(w.free_slots), w.last_assigned, id);
            w.free_key = Some(key);
            free.insert(key);
        }
    }

    /// Releases an attempt a worker held; false if it did not hold it.
    pub(crate) fn release(&mut self, id: WorkerId, job: JobId, attempt: Attempt) -> bool {
        let Some(w) = self.workers.get_mut(&id) else {
            return false;
        };
        if !w.release(job, attempt) {
            return false;
        }
        Self::refresh_entry(&mut self.free, id, w);
        true
    }

    /// Reserves a granted attempt on its worker, if that worker still takes it; the
    /// connection to send the assignment on.
    pub(crate) fn take_grant(&mut self, g: &Grant) -> Option<ConnId> {
        let w = self.workers.get_mut(&g.worker)?;
        let conn = w.conn?;
        if !w.state.accepts_jobs() || !w.fits(&g.spec) {
            return None;
        }
        self.assign_seq += 1;
        w.last_assigned = self.assign_seq;
        w.reserve(HeldJob {
            job: g.job,
            attempt: g.attempt,
            cpus: g.spec.cpus,
            memory: g.spec.memory,
        });
        Self::refresh_entry(&mut self.free, g.worker, w);
        Some(conn)
    }

    pub(crate) fn free_is_empty(&self) -> bool {
        self.free.is_empty()
    }

    /// The least loaded free worker that fits `spec`; among equals, the one idle longest.
    pub(crate) fn first_fit(&self, spec: &JobSpec) -> Option<WorkerId> {
        self.free
            .iter()
            .map(|(_, _, w)| *w)
            .find(|w| self.workers.get(w).is_some_and(|w| w.fits(spec)))
    }

    /// The free workers, in the free set's order.
    pub(crate) fn free(&self) -> impl Iterator<Item = &Worker> {
        self.free.iter().filter_map(|(_, _, w)| self.workers.get(w))
    }

    /// Empties the free set into offers for a steal request, reserving the capacity offered
    /// so that local scheduling does not use it meanwhile.
    pub(crate) fn offer_all(&mut self) -> Vec<Offer> {
        let mut offers = Vec::new();
        for (_, _, id) in std::mem::take(&mut self.free) {
            if let Some(w) = self.workers.get_mut(&id) {
                w.free_key = None;
                offers.push(Offer {
                    worker: id,
                    slots: w.free_slots,
                    cpus: w.free_cpus,
                    memory: w.free_mem,
                    labels: w.res.labels.clone(),
                });
                w.offered = (w.free_slots, w.free_cpus, w.free_mem);
                w.recompute();
            }
        }
        offers
    }

    /// The steal request was answered: the offered capacity is free again (what was granted
    /// is reserved by the grants themselves).
    pub(crate) fn take_back(&mut self, offers: Vec<Offer>) {
        for o in offers {
            if let Some(w) = self.workers.get_mut(&o.worker) {
                w.offered = (0, 0, 0);
                w.recompute();
                Self::refresh_entry(&mut self.free, o.worker, w);
            }
        }
    }

    /// What `ListWorkers` shows of every worker.
    pub(crate) fn infos(&self) -> Vec<WorkerInfo> {
        self.workers.values().map(Worker::info).collect()
    }

    /// What `ListWorkers` shows of one worker.
    pub(crate) fn info(&self, id: WorkerId) -> Vec<WorkerInfo> {
        self.workers
            .get(&id)
            .map(Worker::info)
            .into_iter()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use hodei_core::ids::{Attempt, JobId, WorkerId};
    use hodei_core::spec::JobSpec;
    use hodei_core::state::WorkerState;
    use hodei_core::wire::{HeldJob, Resources};

    use super::{ConnId, Grant, Worker, WorkerTable};

    fn ready(t: &mut WorkerTable, id: WorkerId, conn: ConnId) {
        let res = Resources {
            slots: 2,
            cpus: 4,
            memory: 1 << 30,
            labels: Vec::new(),
        };
        let mut w = Worker::new(id, conn, "h".to_owned(), res, 0);
        w.state = WorkerState::Ready;
        t.insert(w);
        t.refresh(id);
    }

    /// A worker replaced by its own reconnect takes its place in the free set with it: the
    /// set never lists a worker twice, nor keeps one that is gone.
    #[test]
    fn a_replaced_worker_leaves_the_free_set() {
        let mut t = WorkerTable::default();
        let id = t.mint(0, 1);
        ready(&mut t, id, ConnId(1));
        // A grant moves it in the free set (one slot fewer, assigned last).
        let g = Grant {
            job: JobId::new(0, 1, 1),
            attempt: Attempt(1),
            worker: id,
            spec: JobSpec::exec("/bin/true", &[]),
        };
        assert_eq!(t.take_grant(&g), Some(ConnId(1)));
        assert!(t.remove(id).is_some());
        ready(&mut t, id, ConnId(2));
        assert_eq!(t.free().count(), 1, "listed twice");
        assert_eq!(t.take_conn(id), Some(ConnId(2)));
        t.refresh(id);
        assert_eq!(t.free().count(), 0, "a disconnected worker is still free");
    }

    /// Free capacity is what the agent offers minus what its attempts hold, floored at zero:
    /// reservations an agent reports beyond its resources (or beyond what a `u32` sum holds)
    /// leave it full, never wrapped around to look free.
    #[test]
    fn huge_holdings_leave_a_worker_full_and_releases_restore_it() {
        let res = Resources {
            slots: 4,
            cpus: 8,
            memory: 1 << 30,
            labels: Vec::new(),
        };
        let mut w = Worker::new(WorkerId::new(0, 1, 1), ConnId(1), "h".to_owned(), res, 0);
        for job in 0..3 {
            w.reserve(HeldJob {
                job: JobId::new(0, 1, job),
                attempt: Attempt(1),
                cpus: u32::MAX,
                memory: u64::MAX,
            });
        }
        assert_eq!((w.free_slots, w.free_cpus, w.free_mem), (1, 0, 0));
        for job in 0..3 {
            assert!(w.release(JobId::new(0, 1, job), Attempt(1)));
        }
        assert!(
            !w.release(JobId::new(0, 1, 0), Attempt(1)),
            "released twice"
        );
        assert_eq!((w.free_slots, w.free_cpus, w.free_mem), (4, 8, 1 << 30));
    }
}
