//! Wall-clock time as the broker sees it.
//!
//! Token lifetimes are epoch seconds (`expires_on`), so freshness is decided against the wall
//! clock. The broker takes a `Clock` so unit tests can move time by hand; production uses
//! `SystemClock`. Waiting (backoff sleeps) uses tokio's timer, which tests pause instead.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of the current time in whole seconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    /// Seconds since 1970-01-01T00:00:00Z.
    fn now(&self) -> u64;
}

/// The system's real-time clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            // A clock before 1970 is a broken host; treating it as the epoch keeps every
            // token "expired", which fails safe (we fetch instead of serving stale tokens).
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to; for tests.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// Starts at `now` epoch seconds.
    pub fn new(now: u64) -> Self {
        Self(Arc::new(AtomicU64::new(now)))
    }

    /// Moves time forward.
    pub fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The proleptic Gregorian `(year, month, day)` of day `days` after 1970-01-01 (Howard
/// Hinnant's `civil_from_days`, for days on or after the epoch). For timestamps in logs and
/// `cache list`, without a date-time crate.
pub fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod civil_tests {
    use proptest::prelude::*;

    use super::civil_from_days;

    #[test]
    fn known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_786), (2026, 11, 29));
    }

    proptest! {
        #[test]
        fn the_inverse_gives_the_day_back(days in 0u64..200_000) {
            // days_from_civil, the same paper's inverse.
            let (year, month, day) = civil_from_days(days);
            let y = year - u64::from(month <= 2);
            let era = y / 400;
            let year_of_era = y - era * 400;
            let m = if month > 2 { month - 3 } else { month + 9 };
            let day_of_year = (153 * m + 2) / 5 + day - 1;
            let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
            prop_assert_eq!(era * 146_097 + day_of_era - 719_468, days);
            prop_assert!((1..=12).contains(&month) && (1..=31).contains(&day));
        }
    }
}
