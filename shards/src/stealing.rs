//! Work stealing between shards: what a shard knows of the others' queues ([`Stealing`]),
//! and the three steps of a steal.
//!
//! A shard whose queue holds jobs it cannot place tells the others
//! ([`ShardMsg::WorkAvailable`]), once per turn that queued something. A shard with free
//! capacity then offers it to one of them ([`ShardMsg::StealRequest`]), reserving it so it is
//! never offered twice, and the owner assigns queued jobs to the offered workers durably
//! before granting them ([`ShardMsg::StealReply`]). One request is out at a time; targets are
//! taken in turn.

use crate::comm::{Comm, Grant, Offer, ShardMsg};
use crate::queue::Pass;
use crate::sched::fits;
use crate::shard::Shard;

/// A shard's stealing state. The rule it keeps: a shard is asked again only when there is
/// reason to think the answer changed, that is when it says it queued new work or when our
/// capacity grew since its work did not fit.
#[derive(Debug)]
pub(crate) struct Stealing {
    /// Other shards that said they have queued work.
    remote_work: Vec<bool>,
    /// Shards whose queued work did not fit our free capacity at the last try; asked again
    /// when our capacity grows.
    unfit_at: Vec<bool>,
    /// Jobs were queued since we last told the other shards about our queue.
    queued_since_advert: bool,
    /// Outstanding steal request: target shard and the capacity reserved for it.
    outstanding: Option<(usize, Vec<Offer>)>,
    /// Where the search for the next target starts.
    cursor: usize,
    /// Capacity grew while a steal request was out: its empty answer is no reason to stop
    /// asking.
    grew_during_steal: bool,
}

impl Stealing {
    pub(crate) fn new(shards: usize) -> Self {
        Self {
            remote_work: vec![false; shards],
            unfit_at: vec![false; shards],
            queued_since_advert: false,
            outstanding: None,
            cursor: 0,
            grew_during_steal: false,
        }
    }

    /// A job was queued here.
    pub(crate) fn queued(&mut self) {
        self.queued_since_advert = true;
    }

    /// Should the other shards hear that we have work? Once after jobs were queued, while
    /// some are (`pending`). Answering yes counts as telling them.
    pub(crate) fn take_advert(&mut self, pending: usize) -> bool {
        let due = pending > 0 && self.queued_since_advert && self.remote_work.len() > 1;
        if due {
            self.queued_since_advert = false;
        }
        due
    }

    /// Shard `from` says it has queued work.
    pub(crate) fn work_at(&mut self, from: usize) {
        if let Some(flag) = self.remote_work.get_mut(from) {
            *flag = true;
        }
    }

    /// Our capacity grew: shards whose work did not fit before are worth asking again.
    pub(crate) fn capacity_grew(&mut self) {
        if self.outstanding.is_some() {
            self.grew_during_steal = true;
        }
        for (remote, unfit) in self.remote_work.iter_mut().zip(self.unfit_at.iter_mut()) {
            *remote |= std::mem::take(unfit);
        }
    }

    pub(crate) const fn is_outstanding(&self) -> bool {
        self.outstanding.is_some()
    }

    /// The next shard other than `me` that has work, in turn.
    pub(crate) fn next_target(&mut self, me: usize) -> Option<usize> {
        let n = self.remote_work.len();
        let target = (0..n)
            .map(|i| (self.cursor + i) % n)
            .find(|s| *s != me && self.remote_work[*s])?;
        self.cursor = (target + 1) % n;
        Some(target)
    }

    /// A request went out to `target` with these offers.
    pub(crate) fn sent(&mut self, target: usize, offers: Vec<Offer>) {
        self.outstanding = Some((target, offers));
    }

    /// Shard `from` answered: the offers to take back. With nothing (more) for our capacity
    /// there, stop asking it until it queues new work or our capacity grows.
    pub(crate) fn answered(&mut self, from: usize, granted: bool, more: bool) -> Vec<Offer> {
        let offers = self.outstanding.take().map(|(_, o)| o).unwrap_or_default();
        let grew = std::mem::take(&mut self.grew_during_steal);
        if !more || (!granted && !grew) {
            if let Some(flag) = self.remote_work.get_mut(from) {
                *flag = false;
            }
            if let Some(flag) = self.unfit_at.get_mut(from) {
                *flag = more;
            }
        }
        offers
    }
}

impl Shard {
    /// With free capacity and a shard that has work, offer the capacity to it.
    pub(crate) fn maybe_steal(&mut self, comm: &mut impl Comm) {
        if self.stealing.is_outstanding() || self.workers.free_is_empty() {
            return;
        }
        let Some(target) = self.stealing.next_target(self.cfg.index) else {
            return;
        };
        let offers = self.workers.offer_all();
        comm.send_shard(
            target,
            ShardMsg::StealRequest {
                from: self.cfg.index,
                offers: offers.clone(),
            },
        );
        self.stealing.sent(target, offers);
    }

    /// Owner side: assign queued jobs to offered capacity, in queue order, passing over
    /// the jobs no offer fits a requirement class at a time (see `queue.rs`).
    pub(crate) fn on_steal_request(
        &mut self,
        from: usize,
        mut offers: Vec<Offer>,
        comm: &mut impl Comm,
    ) {
        let mut grants = Vec::new();
        let mut pass = Pass::default();
        while offers.iter().any(|o| o.slots > 0) {
            let mut hit = None;
            let fitting = self.jobs.next_fitting(&mut pass, |spec| {
                hit = offers
                    .iter()
                    .position(|o| fits(spec, o.slots, o.cpus, o.memory, &o.labels));
                hit.is_some()
            });
            let (Some(id), Some(i)) = (fitting, hit) else {
                break;
            };
            let Some(offer) = offers.get_mut(i) else {
                break;
            };
            let Some(spec) = self.jobs.get(id).map(|j| &j.rec.spec) else {
                break;
            };
            offer.slots -= 1;
            offer.cpus -= spec.cpus;
            offer.memory -= spec.memory;
            let worker = offer.worker;
            if let Some(g) = self.assign(id, worker, comm) {
                grants.push(g);
            }
        }
        let more = self.jobs.pending() > 0;
        comm.send_shard(
            from,
            ShardMsg::StealReply {
                from: self.cfg.index,
                grants,
                more,
            },
        );
    }

    /// Stealer side: give back the reservation, start what was granted.
    pub(crate) fn on_steal_reply(
        &mut self,
        from: usize,
        grants: Vec<Grant>,
        more: bool,
        comm: &mut impl Comm,
    ) {
        let offers = self.stealing.answered(from, !grants.is_empty(), more);
        self.workers.take_back(offers);
        for g in grants {
            self.start_grant(g, comm);
        }
        self.want_schedule();
    }
}
