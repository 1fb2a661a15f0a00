//! Unit tests of the shard's handlers, one concern per file, driven through the public
//! `handle_*` entry points and read back through what the shard recorded in [`Effects`].

mod clock;

use hodei_core::ids::JobId;
use hodei_core::spec::JobSpec;
use hodei_core::time::Micros;
use hodei_core::wire::{FromServer, JobRequest};

use crate::comm::{Effects, Reply, ReqId};
use crate::shard::{Shard, ShardConfig};

/// Shard `index` of `shards`, with no jobs, started at `now`.
pub(super) fn shard(index: usize, shards: usize, now: Micros) -> Shard {
    let mut s = Shard::new(ShardConfig::new(index, shards, 1), Vec::new(), now, 0);
    s.handle_start(&mut Effects::default());
    s
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
