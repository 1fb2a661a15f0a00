//! Every entry point runs at the time it is given: deadlines armed by a call count from it.

use hodei_core::spec::JobSpec;
use hodei_core::state::JobState;
use hodei_core::time::ms;

use super::{shard, submit};
use crate::comm::{Effects, Offer, ShardMsg};
use hodei_core::ids::WorkerId;

/// An owner idle for longer than the assign timeout gets a steal request: the grant's
/// acknowledgement deadline counts from the request, so the attempt is not failed at once.
#[test]
fn a_steal_request_after_a_long_idle_arms_the_ack_deadline_from_now() {
    let mut owner = shard(0, 2, ms(1_000));
    let mut spec = JobSpec::exec("/bin/true", &[]);
    spec.policy.retries = 0;
    let (ids, _) = submit(&mut owner, ms(1_000), vec![spec]);
    let [id] = ids[..] else {
        panic!("submitted {ids:?}");
    };
    let now = ms(100_000);
    let offer = Offer {
        worker: WorkerId::new(1, 1, 1),
        slots: 1,
        cpus: 4,
        memory: 1 << 30,
        labels: Vec::new(),
    };
    let msg = ShardMsg::StealRequest {
        from: 1,
        offers: vec![offer],
    };
    let mut fx = Effects::default();
    owner.handle_shard(now, msg, &mut fx);
    let granted = fx.shard.iter().any(|(_, m)| {
        matches!(m, ShardMsg::StealReply { grants, .. } if grants.iter().any(|g| g.job == id))
    });
    assert!(granted, "the job was not granted: {:?}", fx.shard);
    let due = owner.poll_timeout();
    assert!(
        due.is_some_and(|t| t >= now + owner.cfg.assign_timeout),
        "ack deadline at {due:?}, the request came at {now}"
    );
    owner.handle_timeout(now, &mut Effects::default());
    let state = owner.jobs().find(|r| r.id == id).map(|r| r.state);
    assert_eq!(state, Some(JobState::Assigned));
}
