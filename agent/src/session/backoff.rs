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

    /// A connection that lasted this long after its `Welcome`, with every held job
    /// re-attached, counts as recovered: the next loss starts from the shortest wait again.
    pub(super) const STABLE: Duration = Duration::from_secs(5);

    /// A connection was lost, `welcomed_for` after its `Welcome` (`None`: it never came);
    /// `resumed`: the server had re-attached every job held. Returns the wait before the
    /// next attempt. A connection that fails soon after connecting, or before its resends
    /// are through, is no recovery: the waits keep growing, so such a loop backs off.
    pub(super) fn lost(&mut self, welcomed_for: Option<Duration>, resumed: bool) -> Duration {
        if resumed && welcomed_for.is_some_and(|d| d >= Self::STABLE) {
            self.next = Self::MIN;
        }
        self.next()
    }

    fn next(&mut self) -> Duration {
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
        let waits: Vec<Duration> = (0..10).map(|_| b.lost(None, true)).collect();
        assert!(waits[0] <= Duration::from_millis(150));
        assert!(
            waits[9] >= Duration::from_millis(2_500) && waits[9] <= Duration::from_millis(7_500)
        );
        let up = Some(Backoff::STABLE);
        assert!(b.lost(up, true) <= Duration::from_millis(150));
    }

    #[test]
    fn connections_that_fail_soon_after_the_welcome_back_off() {
        let mut b = Backoff::new();
        // Welcomed, then lost at once (a resend the server cannot take): growing waits.
        let brief = Some(Duration::from_millis(20));
        let waits: Vec<Duration> = (0..10).map(|_| b.lost(brief, true)).collect();
        assert!(waits[9] >= Duration::from_millis(2_500), "{waits:?}");
        // Up for long, but the held jobs never re-attached: still no recovery.
        assert!(b.lost(Some(Duration::from_secs(60)), false) >= Duration::from_millis(2_500));
    }
}
