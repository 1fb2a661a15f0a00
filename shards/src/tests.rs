//! Unit tests of the shard's handlers, one concern per file, driven through the public
//! `handle_*` entry points and read back through what the shard recorded in [`Effects`].

mod backlog;
mod clock;
mod leaks;
mod retention;
mod retries;

use hodei_core::ids::{JobId, WorkerId};
use hodei_core::spec::JobSpec;
use hodei_core::time::Micros;
use hodei_core::wire::{FromAgent, FromServer, Hello, JobRequest, Resources, ToAgent};

use crate::comm::{ConnId, Effects, Reply, ReqId};
use crate::shard::{Shard, ShardConfig};

/// Shard `index` of `shards`, with no jobs, started at `now`.
pub(super) fn shard(index: usize, shards: usize, now: Micros) -> Shard {
    let mut s = Shard::new(ShardConfig::new(index, shards, 1), Vec::new(), now, 0);
    s.handle_start(&mut Effects::default());
    s
}

/// Registers an agent on `conn` with these resources; its worker id.
pub(super) fn agent(
    s: &mut Shard,
    now: Micros,
    conn: u64,
    slots: u32,
    labels: &[(&str, &str)],
) -> WorkerId {
    let hello = Hello {
        worker: None,
        hostname: format!("h{conn}"),
        resources: Resources {
            slots,
            cpus: 4,
            memory: 1 << 30,
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        },
        held: Vec::new(),
    };
    let mut fx = Effects::default();
    s.handle_agent(now, ConnId(conn), FromAgent::Hello(hello), &mut fx);
    fx.agent
        .iter()
        .find_map(|(_, m)| match m {
            ToAgent::Welcome { worker, .. } => Some(*worker),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no Welcome for conn {conn}"))
}

/// Submits `specs` at `now`; their ids and what the call did.
pub(super) fn submit(s: &mut Shard, now: Micros, specs: Vec<JobSpec>) -> (Vec<JobId>, Effects) {
    let mut fx = Effects::default();
    s.handle_client(now, ReqId(now), JobRequest::Submit { specs }, &mut fx);
    let ids = fx
        .reply
        .iter()
        .find_map(|(_, r, _)| match r {
            Reply::Msg(FromServer::Submitted { ids }) => Some(ids.clone()),
            _ => None,
        })
        .unwrap_or_default();
    (ids, fx)
}

/// A job that needs a label no agent has.
pub(super) fn unplaceable() -> JobSpec {
    let mut spec = JobSpec::exec("/bin/true", &[]);
    spec.labels.push(("gpu".to_owned(), "a100".to_owned()));
    spec
}

/// The jobs assigned in these effects.
pub(super) fn assigned(fx: &Effects) -> Vec<JobId> {
    fx.agent
        .iter()
        .filter_map(|(_, m)| match m {
            ToAgent::Assign { job, .. } => Some(*job),
            _ => None,
        })
        .collect()
}
