//! The per-identity bound on new cache keys: a token bucket.
//!
//! A caller that asks for many resources nobody asked for before makes one upstream call per
//! resource and fills the cache with tokens only it wants. Each identity may therefore create
//! at most `new_keys_per_minute` keys a minute after a burst of `new_keys_burst`; hits, stale
//! hits, refreshes of keys already held and the configured prefetches do not count.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket that starts full. One permit per new key.
#[derive(Debug)]
pub struct TokenBucket {
    /// Permits added per second.
    rate: f64,
    /// Most permits held at once.
    burst: f64,
    /// Permits available at `updated`, and when that was.
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// A full bucket refilling at `per_minute` permits a minute up to `burst`. Both are at
    /// least 1 (configuration validation refuses 0); a 0 is treated as 1.
    pub fn new(per_minute: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self { rate: f64::from(per_minute.max(1)) / 60.0, burst, state: Mutex::new((burst, now)) }
    }

    /// Takes one permit at `now`, or says how long until one is available.
    pub fn try_take(&self, now: Instant) -> Result<(), Duration> {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (available, updated) = &mut *state;
        // An `Instant` never goes back, but one taken before the lock may be older than the
        // last update: that is no time passing, not negative time.
        let elapsed = now.saturating_duration_since(*updated).as_secs_f64();
        *available = (*available + elapsed * self.rate).min(self.burst);
        *updated = (*updated).max(now);
        if *available >= 1.0 {
            *available -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *available) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let start = Instant::now();
        let bucket = TokenBucket::new(60, 3, start);
        for _ in 0..3 {
            assert_eq!(bucket.try_take(start), Ok(()));
        }
        let wait = bucket.try_take(start).unwrap_err();
        assert_eq!(wait, Duration::from_secs(1), "one permit a second at 60 a minute");
        assert!(bucket.try_take(start + Duration::from_millis(999)).is_err());
        assert_eq!(bucket.try_take(start + Duration::from_secs(1)), Ok(()));
        assert!(bucket.try_take(start + Duration::from_secs(1)).is_err(), "one permit, taken");
    }

    #[test]
    fn refills_up_to_the_burst_only() {
        let start = Instant::now();
        let bucket = TokenBucket::new(6, 2, start);
        bucket.try_take(start).unwrap();
        bucket.try_take(start).unwrap();
        assert_eq!(bucket.try_take(start), Err(Duration::from_secs(10)), "6 a minute: one every 10 s");
        let later = start + Duration::from_secs(3600);
        assert_eq!(bucket.try_take(later), Ok(()));
        assert_eq!(bucket.try_take(later), Ok(()));
        assert!(bucket.try_take(later).is_err(), "an idle hour earns the burst, not 360 permits");
    }

    #[test]
    fn an_instant_older_than_the_last_update_adds_nothing() {
        let start = Instant::now();
        let bucket = TokenBucket::new(60, 1, start);
        bucket.try_take(start + Duration::from_secs(5)).unwrap();
        assert!(bucket.try_take(start).is_err());
    }
}
