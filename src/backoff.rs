//! [`Backoff`]: the exponential wait every retry loop of tokenrelay uses.

use std::time::Duration;

/// Waits that double from `base` with every attempt, never longer than `max`. The retry
/// loops differ only in what they count (a refresh's consecutive failures, an exchange's
/// retries) and whether they add jitter; the schedule is this one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The wait of attempt 0.
    pub base: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Backoff {
    /// The doubling stops at 2^16 times `base`, far past any `max` in use, so that the
    /// multiplication cannot overflow before the cap applies.
    const MAX_DOUBLINGS: u32 = 16;

    /// `base * 2^attempt`, at most `max`.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.base.saturating_mul(1 << attempt.min(Self::MAX_DOUBLINGS)).min(self.max)
    }

    /// [`delay`](Self::delay) spread over its upper half by `random` (in `[0, 1)`): between
    /// half of it and all of it, so that a fleet of sidecars failing together does not retry
    /// in lockstep, while a retry never comes sooner than half the schedule's wait.
    pub fn jittered(&self, attempt: u32, random: f64) -> Duration {
        let exponential = self.base.saturating_mul(1 << attempt.min(Self::MAX_DOUBLINGS));
        (exponential / 2 + exponential.mul_f64(random / 2.0)).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn doubles_from_the_base_up_to_the_cap() {
        let backoff = Backoff { base: SECOND, max: Duration::from_secs(32) };
        let waits: Vec<u64> = (0..8).map(|attempt| backoff.delay(attempt).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 32, 32]);
        assert_eq!(backoff.delay(u32::MAX), Duration::from_secs(32), "no overflow however many attempts");
    }

    #[test]
    fn a_huge_base_saturates_instead_of_overflowing() {
        let backoff = Backoff { base: Duration::MAX, max: Duration::from_secs(300) };
        assert_eq!(backoff.delay(16), Duration::from_secs(300));
        assert_eq!(backoff.jittered(16, 0.999), Duration::from_secs(300));
    }

    #[test]
    fn jitter_stays_within_the_upper_half() {
        let backoff = Backoff { base: Duration::from_millis(400), max: Duration::from_secs(60) };
        for attempt in 0..6 {
            let full = backoff.delay(attempt);
            assert_eq!(backoff.jittered(attempt, 0.0), full / 2);
            let high = backoff.jittered(attempt, 0.999_999);
            assert!(high <= full && high > full / 2, "attempt {attempt}: {high:?} of {full:?}");
        }
        assert_eq!(backoff.jittered(20, 0.5), Duration::from_secs(60), "capped like the plain schedule");
    }
}
