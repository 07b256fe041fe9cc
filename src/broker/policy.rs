//! When a cached token should be refreshed and when it may still be served
//! (docs/caching.md#refresh-point, docs/protocols.md#client-refresh-rules).

use std::time::Duration;

use crate::backoff::Backoff;
use crate::token::AccessToken;

/// Lifetimes from this long upward are refreshed at half-life, as every MSAL does.
const HALF_LIFE_THRESHOLD: u64 = 2 * 3600;
/// Shorter tokens are refreshed this long before they expire.
const REFRESH_BEFORE_EXPIRY: u64 = 10 * 60;
/// Clients refresh when 5 minutes remain; we must have refreshed before that.
const CLIENT_REFRESH_WINDOW: u64 = 5 * 60;
/// Upper bound of the random jitter that spreads a fleet's refreshes.
const MAX_JITTER: u64 = 60;

/// Tunables of the serving policy.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// A token with less than this left is never served from the cache.
    pub serve_margin_secs: u64,
    /// First wait after a failed background refresh; it doubles with each failure.
    pub refresh_backoff_secs: u64,
    /// Longest wait between background refresh attempts.
    pub refresh_backoff_max_secs: u64,
}

impl Policy {
    /// When to start refreshing `token`, fetched at `now`. `jitter` is a fraction in [0, 1).
    pub fn refresh_on(&self, token: &AccessToken, now: u64, jitter: f64) -> u64 {
        let lifetime = token.expires_on.saturating_sub(now);
        let planned = match token.refresh_on {
            Some(upstream_hint) => upstream_hint,
            None if lifetime >= HALF_LIFE_THRESHOLD => now + lifetime / 2,
            None => token.expires_on.saturating_sub(REFRESH_BEFORE_EXPIRY),
        };
        let latest = token.expires_on.saturating_sub(CLIENT_REFRESH_WINDOW);
        // Jitter moves the refresh earlier, never later, and by at most 5 % of the lifetime.
        let jitter = ((MAX_JITTER.min(lifetime / 20)) as f64 * jitter.clamp(0.0, 1.0)) as u64;
        planned.min(latest).saturating_sub(jitter).max(now)
    }

    /// Whether a token expiring at `expires_on` may be handed out at `now`.
    pub fn servable(&self, expires_on: u64, now: u64) -> bool {
        expires_on >= now.saturating_add(self.serve_margin_secs)
    }

    /// The wait after the `failures`-th consecutive failed refresh (1-based).
    pub fn refresh_backoff(&self, failures: u32) -> u64 {
        let backoff = Backoff {
            base: Duration::from_secs(self.refresh_backoff_secs),
            max: Duration::from_secs(self.refresh_backoff_max_secs),
        };
        backoff.delay(failures.saturating_sub(1)).as_secs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    const NOW: u64 = 1_000_000;

    fn policy() -> Policy {
        Policy { serve_margin_secs: 60, refresh_backoff_secs: 30, refresh_backoff_max_secs: 300 }
    }

    fn token(lifetime: u64, refresh_in: Option<u64>) -> AccessToken {
        AccessToken {
            token: Secret::new("t"),
            expires_on: NOW + lifetime,
            not_before: NOW,
            ext_expires_on: NOW + lifetime,
            refresh_on: refresh_in.map(|r| NOW + r),
        }
    }

    #[test]
    fn refresh_point_follows_the_documented_rules() {
        let p = policy();
        // (lifetime, refresh_in, expected refresh_on offset without jitter)
        let cases = [
            (3599, None, 3599 - 600),       // short token: 10 minutes before expiry
            (7200, None, 3600),             // 2 h or more: half-life
            (86399, None, 43199),           // 24 h token: half-life
            (3599, Some(1200), 1200),       // upstream hint wins
            (3599, Some(3500), 3599 - 300), // ... but never inside the clients' window
            (120, None, 0),                 // very short: refresh at once
        ];
        for (lifetime, refresh_in, expected) in cases {
            let got = p.refresh_on(&token(lifetime, refresh_in), NOW, 0.0);
            assert_eq!(got, NOW + expected, "lifetime {lifetime}, refresh_in {refresh_in:?}");
        }
    }

    #[test]
    fn jitter_only_moves_earlier_and_is_bounded() {
        let p = policy();
        let t = token(3599, None);
        let base = p.refresh_on(&t, NOW, 0.0);
        let jittered = p.refresh_on(&t, NOW, 0.999);
        assert!(jittered <= base && base - jittered <= 60);
    }

    #[test]
    fn serving_stops_at_the_margin() {
        let p = policy();
        assert!(p.servable(NOW + 60, NOW));
        assert!(!p.servable(NOW + 59, NOW));
    }

    #[test]
    fn refresh_backoff_doubles_up_to_the_cap() {
        let p = policy();
        let waits: Vec<u64> = (1..=6).map(|f| p.refresh_backoff(f)).collect();
        assert_eq!(waits, [30, 60, 120, 240, 300, 300]);
    }
}
