//! Retry policy arithmetic on fuzz-chosen policies: a spec whose policy passes
//! `JobSpec::validate` (as every submitted spec must) is then used by the shard to compute retry
//! delays with `Policy::backoff_ms(attempt + 1, seed)` (`shards/src/lifecycle.rs`). That must not
//! panic (overflow checks are on in fuzz builds) and must stay within the policy's bounds.
#![no_main]

use arbitrary::Arbitrary;
use hodei_core::spec::{JobSpec, Policy, RetryOn};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    retries: u32,
    retry_on: u8,
    backoff_min_ms: u64,
    backoff_max_ms: u64,
    queue_timeout_ms: Option<u64>,
    timeout_ms: Option<u64>,
    next: u32,
    seed: u64,
}

fuzz_target!(|input: Input| {
    let mut spec = JobSpec::exec("true", &[]);
    spec.timeout_ms = input.timeout_ms;
    spec.policy = Policy {
        retries: input.retries,
        retry_on: RetryOn(input.retry_on),
        backoff_min_ms: input.backoff_min_ms,
        backoff_max_ms: input.backoff_max_ms,
        queue_timeout_ms: input.queue_timeout_ms,
        ..Policy::default()
    };
    if spec.validate().is_err() {
        return;
    }
    let p = &spec.policy;
    let d = p.backoff_ms(input.next, input.seed);
    assert!(
        d <= p.backoff_max_ms,
        "delay {d} above the maximum {} ({p:?}, next {}, seed {})",
        p.backoff_max_ms,
        input.next,
        input.seed
    );
});
