//! A cached token and the state of its background refresh.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::Expiry;

use crate::clock::Clock;
use crate::credential::AccessToken;

/// A token in the cache, with the moment the broker plans to replace it.
pub struct CachedToken {
    /// The token as the upstream issued it.
    pub token: AccessToken,
    /// From this epoch second on, serving triggers a background refresh.
    pub refresh_on: u64,
    /// Which credential produced it (for logs).
    pub credential: &'static str,
    /// The token's fingerprint for log lines, computed once rather than hashed per request.
    pub fingerprint: Box<str>,
    /// The server's rendering of the response members that never change for this token
    /// (`server::wire::render_token_body`; the token itself only if it needed escaping), made
    /// on first use so that a cache hit copies bytes instead of serialising. Opaque to the
    /// broker.
    pub rendered: OnceLock<Box<[u8]>>,
    refreshing: AtomicBool,
    next_attempt: AtomicU64,
    failures: AtomicU32,
}

/// By hand: `AccessToken` redacts itself, and `rendered` is kept out so that no rendering of
/// the response, whatever it holds, can reach `Debug` output.
impl std::fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedToken")
            .field("token", &self.token)
            .field("refresh_on", &self.refresh_on)
            .field("credential", &self.credential)
            .field("fingerprint", &self.fingerprint)
            .field("refreshing", &self.refreshing)
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

impl CachedToken {
    /// Wraps a freshly fetched token.
    pub fn new(token: AccessToken, refresh_on: u64, credential: &'static str) -> Self {
        Self {
            fingerprint: token.token.fingerprint().into_boxed_str(),
            token,
            refresh_on,
            credential,
            rendered: OnceLock::new(),
            refreshing: AtomicBool::new(false),
            next_attempt: AtomicU64::new(0),
            failures: AtomicU32::new(0),
        }
    }

    /// Claims the right to refresh this entry at `now`: true for exactly one caller while no
    /// refresh is running and any backoff from an earlier failure has passed.
    pub fn try_begin_refresh(&self, now: u64) -> bool {
        if now < self.next_attempt.load(Ordering::Acquire) {
            return false;
        }
        self.refreshing.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// Gives up a claim from [`Self::try_begin_refresh`] without trying: the next caller may
    /// claim it at once. No failure is counted.
    pub fn abandon_refresh(&self) {
        self.refreshing.store(false, Ordering::Release);
    }

    /// Records a failed refresh: no new attempt before `now + backoff(failures)`.
    /// Returns the number of consecutive failures.
    pub fn refresh_failed(&self, now: u64, backoff: impl Fn(u32) -> u64) -> u32 {
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        self.next_attempt.store(now + backoff(failures), Ordering::Release);
        self.refreshing.store(false, Ordering::Release);
        failures
    }
}

/// Tells moka to drop an entry once it can no longer be served, so expired tokens do not
/// occupy the bounded cache. The broker checks freshness itself against its own clock;
/// this is only the backstop for memory.
pub struct ExpireWhenUnservable {
    /// Seconds of validity below which a token is never served.
    pub margin_secs: u64,
    /// The wall clock the expiry is measured against (the broker's).
    pub clock: std::sync::Arc<dyn Clock>,
}

impl Expiry<String, std::sync::Arc<CachedToken>> for ExpireWhenUnservable {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &std::sync::Arc<CachedToken>,
        _created_at: Instant,
    ) -> Option<Duration> {
        let remaining = value.token.expires_on.saturating_sub(self.clock.now()).saturating_sub(self.margin_secs);
        Some(Duration::from_secs(remaining))
    }

    fn expire_after_update(
        &self,
        key: &String,
        value: &std::sync::Arc<CachedToken>,
        updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, value, updated_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn entry() -> CachedToken {
        let token = AccessToken {
            token: Secret::new("t0k3n-in-clear"),
            expires_on: 5000,
            not_before: 0,
            ext_expires_on: 5000,
            refresh_on: None,
        };
        CachedToken::new(token, 4000, "test")
    }

    #[test]
    fn debug_output_never_shows_the_token_or_its_rendering() {
        let e = entry();
        let _ = e.rendered.set(b"{\"access_token\":\"t0k3n-in-clear\"".to_vec().into_boxed_slice());
        let shown = format!("{e:?}");
        assert!(!shown.contains("t0k3n"), "{shown}");
        assert!(!shown.contains("116, 48"), "the rendering's bytes leaked: {shown}");
    }

    #[test]
    fn one_refresh_at_a_time_and_backoff_after_failure() {
        let e = entry();
        assert!(e.try_begin_refresh(4000));
        assert!(!e.try_begin_refresh(4000), "a second caller must not start another refresh");
        assert_eq!(e.refresh_failed(4000, |f| 30 * u64::from(f)), 1);
        assert!(!e.try_begin_refresh(4029), "backing off");
        assert!(e.try_begin_refresh(4030));
        assert_eq!(e.refresh_failed(4030, |f| 30 * u64::from(f)), 2);
        assert!(!e.try_begin_refresh(4089));
        assert!(e.try_begin_refresh(4090));
    }
}
