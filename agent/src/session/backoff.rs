//! Reconnect pacing: exponential backoff with jitter, so a fleet of agents that lost the same
//! server does not come back in lockstep.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with jitter: 100 ms doubling to 5 s, each wait ±50 %.
pub(super) struct Backoff {
    next: Duration,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    pub(super) const fn new() -> Self {
        Self { next: Self::MIN }
    }

    /// A registration succeeded: the next loss starts from the shortest wait again.
    pub(super) fn reset(&mut self) {
        self.next = Self::MIN;
    }

    pub(super) fn next(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        base.mul_f64(rand::thread_rng().gen_range(0.5..1.5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let mut b = Backoff::new();
        let waits: Vec<Duration> = (0..10).map(|_| b.next()).collect();
        assert!(waits[0] <= Duration::from_millis(150));
        assert!(
            waits[9] >= Duration::from_millis(2_500) && waits[9] <= Duration::from_millis(7_500)
        );
        b.reset();
        assert!(b.next() <= Duration::from_millis(150));
    }
}
