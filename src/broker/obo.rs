//! Users' tokens: what the on-behalf-of exchange returns, cached per identity.
//!
//! An entry is keyed by the downstream scopes and a SHA-256 digest of the user's inbound token,
//! never the token itself, so memory holds no copy of what the caller presented. Invariants:
//!
//! - An entry is never served past the inbound token's `exp` nor past the issued token's
//!   `expires_on` (less `cache.serve_margin_secs`): the cached token stands for the inbound one,
//!   and a caller whose user token has expired must be refused by validation before it gets
//!   here, and must never find a downstream token that outlives it.
//! - One exchange per key at a time: concurrent requests for the same user and scopes wait for
//!   the one in flight (moka's `entry().or_try_insert_with`).
//! - At most `cache.max_entries` entries per identity (least recently used evicted first).
//! - Refusals are not cached: each is specific to one user token, and a user who steps up
//!   arrives with a new token, hence a new key.
//! - `token.expires_on` is already the earlier of the issued token's end and the inbound
//!   token's `exp`, so a copy in the persistent cache (`cache.persistence.user_tokens`) expires
//!   from the file with the first of the two, as it does from memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;

use crate::clock::Clock;
use crate::store::HeldToken;
use crate::token::AccessToken;

/// What follows an identity's client id in the persistent cache for its users' tokens. They
/// are stored under a client id of their own, which no identity has: a stored user token can
/// never be served as an application token (a release that predates them leaves such entries
/// alone, as it does those of any client id it does not serve), and the file's bound of
/// `cache.max_entries` per client id applies to users' tokens apart from the application's.
pub const PERSISTED_CLIENT_SUFFIX: &str = " on-behalf-of";

/// What separates the scopes from the digest in a stored user token's `resource`.
const PERSISTED_DIGEST: &str = " sha256:";

/// A user's downstream token and how long it may be served.
pub struct UserToken {
    /// The token the exchange returned, its `expires_on` brought forward to the inbound
    /// token's `exp` when that comes first.
    pub token: AccessToken,
    /// The epoch second it stops being served: the earlier of the inbound token's `exp` and
    /// the issued token's `expires_on`, less the serve margin.
    pub serve_until: u64,
    /// A short, non-reversible digest of the token for logs (never the token).
    pub fingerprint: Box<str>,
}

/// The cache key: which scopes, for which inbound token.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UserKey {
    scopes: Arc<str>,
    inbound: [u8; 32],
}

impl UserKey {
    /// The key of `scopes` for the inbound token `assertion` (hashed here, not kept).
    pub fn new(scopes: &str, assertion: &str) -> Self {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, assertion.as_bytes());
        let mut inbound = [0u8; 32];
        inbound.copy_from_slice(digest.as_ref());
        Self { scopes: scopes.into(), inbound }
    }

    /// The key as the persistent cache names it (a stored token's `resource`): the scopes,
    /// then the digest in hex. Never the inbound token.
    pub fn persisted_name(&self) -> String {
        use std::fmt::Write;
        let mut name = String::with_capacity(self.scopes.len() + PERSISTED_DIGEST.len() + 64);
        name.push_str(&self.scopes);
        name.push_str(PERSISTED_DIGEST);
        for byte in self.inbound {
            let _ = write!(name, "{byte:02x}");
        }
        name
    }

    /// The key a stored name ([`UserKey::persisted_name`]) stands for; `None` for anything else.
    pub fn from_persisted_name(name: &str) -> Option<Self> {
        let (scopes, hex) = name.rsplit_once(PERSISTED_DIGEST)?;
        if scopes.is_empty() || hex.len() != 64 {
            return None;
        }
        let mut inbound = [0u8; 32];
        for (byte, pair) in inbound.iter_mut().zip(hex.as_bytes().chunks(2)) {
            *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
        }
        Some(Self { scopes: scopes.into(), inbound })
    }
}

/// What the persistent cache writes of a user's token: the token (whose `expires_on` is the
/// entry's end) and, as its refresh point, the end of serving: users' tokens are never
/// refreshed, a user comes back with a new token.
impl HeldToken for UserToken {
    fn access_token(&self) -> &AccessToken {
        &self.token
    }
    fn refresh_on(&self) -> u64 {
        self.serve_until
    }
}

/// One identity's users' tokens.
pub struct UserTokens {
    cache: Cache<UserKey, Arc<UserToken>>,
    clock: Arc<dyn Clock>,
}

/// Expires an entry at its `serve_until`, read from the broker's clock.
struct ExpireAtServeUntil {
    clock: Arc<dyn Clock>,
}

impl Expiry<UserKey, Arc<UserToken>> for ExpireAtServeUntil {
    fn expire_after_create(&self, _key: &UserKey, value: &Arc<UserToken>, _created_at: Instant) -> Option<Duration> {
        Some(Duration::from_secs(value.serve_until.saturating_sub(self.clock.now())))
    }
}

/// Whether a token came from memory or from an exchange made for this request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserOutcome {
    /// From memory.
    Hit,
    /// Exchanged for this request.
    Miss,
    /// Exchanged for a concurrent request this one waited for.
    Coalesced,
}

impl UserOutcome {
    /// Lower-case name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Coalesced => "coalesced",
        }
    }
}

impl UserTokens {
    /// An empty cache of at most `max_entries` tokens.
    pub fn new(max_entries: u64, clock: Arc<dyn Clock>) -> Self {
        let cache = Cache::builder()
            .max_capacity(max_entries)
            .expire_after(ExpireAtServeUntil { clock: Arc::clone(&clock) })
            .build();
        Self { cache, clock }
    }

    /// The token for `key`: from memory while servable, else from `exchange`, run once for
    /// every caller waiting on the same key. `exchange` yields the token and the epoch second
    /// the entry must stop being served.
    pub async fn get_or_exchange<E>(
        &self,
        key: UserKey,
        exchange: impl Future<Output = Result<Arc<UserToken>, E>>,
    ) -> Result<(Arc<UserToken>, UserOutcome), Arc<E>>
    where
        E: Send + Sync + 'static,
    {
        let now = self.clock.now();
        if let Some(entry) = self.cache.get(&key).await {
            // moka expires by its own timer; the broker's clock decides (a test's clock may
            // have moved past `serve_until` while moka's has not).
            if now < entry.serve_until {
                return Ok((entry, UserOutcome::Hit));
            }
            self.cache.invalidate(&key).await;
        }
        let ran_here = std::sync::atomic::AtomicBool::new(false);
        let entry = self
            .cache
            .entry(key)
            .or_try_insert_with(async {
                ran_here.store(true, std::sync::atomic::Ordering::Relaxed);
                exchange.await
            })
            .await?;
        let outcome = if ran_here.load(std::sync::atomic::Ordering::Relaxed) {
            UserOutcome::Miss
        } else if entry.is_fresh() {
            UserOutcome::Coalesced
        } else {
            UserOutcome::Hit
        };
        Ok((entry.into_value(), outcome))
    }

    /// Every entry held (for the persistent cache's writer).
    pub fn entries(&self) -> Vec<(UserKey, Arc<UserToken>)> {
        self.cache.iter().map(|(key, token)| (UserKey::clone(&key), token)).collect()
    }

    /// Puts a token read from the persistent cache in, unless it is no longer servable.
    pub async fn seed(&self, key: UserKey, token: Arc<UserToken>) -> bool {
        if self.clock.now() >= token.serve_until {
            return false;
        }
        self.cache.insert(key, token).await;
        true
    }

    /// How many tokens are held (after pending evictions are applied).
    pub async fn len(&self) -> u64 {
        self.cache.run_pending_tasks().await;
        self.cache.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::clock::ManualClock;
    use crate::secret::Secret;

    fn token(serve_until: u64) -> Arc<UserToken> {
        Arc::new(UserToken {
            token: AccessToken {
                token: Secret::new("downstream"),
                expires_on: serve_until + 60,
                not_before: 0,
                ext_expires_on: serve_until + 60,
                refresh_on: None,
            },
            serve_until,
            fingerprint: "f".into(),
        })
    }

    #[test]
    fn the_key_never_holds_the_inbound_token() {
        let key = UserKey::new("User.Read", "eyJ.secret.token");
        assert!(!format!("{key:?}").contains("secret"));
        assert_eq!(key, UserKey::new("User.Read", "eyJ.secret.token"));
        assert_ne!(key, UserKey::new("User.Read", "eyJ.secret.token2"));
        assert_ne!(key, UserKey::new("Mail.Read", "eyJ.secret.token"));
    }

    #[test]
    fn the_persisted_name_round_trips_and_holds_only_the_digest() {
        let key = UserKey::new("https://graph.microsoft.com/User.Read Mail.Read", "eyJ.secret.token");
        let name = key.persisted_name();
        assert!(name.starts_with("https://graph.microsoft.com/User.Read Mail.Read sha256:"), "{name}");
        assert!(!name.contains("secret"));
        assert_eq!(UserKey::from_persisted_name(&name), Some(key));
        for bad in
            ["", "https://vault.azure.net", "s sha256:abc", " sha256:", &name.replace("sha256:", "sha256:zz")[..]]
        {
            assert_eq!(UserKey::from_persisted_name(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn one_exchange_for_concurrent_callers_of_one_key() {
        let clock = Arc::new(ManualClock::new(1000));
        let tokens = Arc::new(UserTokens::new(10, clock.clone()));
        let calls = Arc::new(AtomicUsize::new(0));
        let (release, gate) = tokio::sync::watch::channel(false);
        let mut waiters = Vec::new();
        for _ in 0..8 {
            let (tokens, calls, mut gate) = (tokens.clone(), calls.clone(), gate.clone());
            waiters.push(tokio::spawn(async move {
                tokens
                    .get_or_exchange(UserKey::new("s", "user-a"), async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        let _ = gate.wait_for(|open| *open).await;
                        Ok::<_, ()>(token(2000))
                    })
                    .await
                    .map(|(_, outcome)| outcome)
            }));
        }
        // Let every waiter reach the cache before the one exchange finishes.
        while tokens.cache.entry_count() == 0 && calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        release.send_replace(true);
        let mut outcomes = Vec::new();
        for waiter in waiters {
            outcomes.push(waiter.await.unwrap().unwrap());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one exchange for one user and scopes");
        assert_eq!(outcomes.iter().filter(|o| **o == UserOutcome::Miss).count(), 1);
    }

    #[tokio::test]
    async fn an_entry_is_never_served_past_serve_until() {
        let clock = Arc::new(ManualClock::new(1000));
        let tokens = UserTokens::new(10, clock.clone());
        let key = UserKey::new("s", "user-a");
        let (_, first) = tokens.get_or_exchange(key.clone(), async { Ok::<_, ()>(token(1100)) }).await.unwrap();
        assert_eq!(first, UserOutcome::Miss);
        let (_, second) = tokens.get_or_exchange(key.clone(), async { Ok::<_, ()>(token(1100)) }).await.unwrap();
        assert_eq!(second, UserOutcome::Hit);
        clock.advance(100);
        let (fresh, third) = tokens.get_or_exchange(key, async { Ok::<_, ()>(token(1200)) }).await.unwrap();
        assert_eq!((third, fresh.serve_until), (UserOutcome::Miss, 1200));
    }

    #[tokio::test]
    async fn refusals_are_not_cached_and_the_size_is_bounded() {
        let clock = Arc::new(ManualClock::new(1000));
        let tokens = UserTokens::new(3, clock.clone());
        let key = UserKey::new("s", "user-a");
        assert!(tokens.get_or_exchange(key.clone(), async { Err::<Arc<UserToken>, _>("refused") }).await.is_err());
        let (_, outcome) = tokens.get_or_exchange(key, async { Ok::<_, &str>(token(2000)) }).await.unwrap();
        assert_eq!(outcome, UserOutcome::Miss, "the refusal was not remembered");
        for user in 0..20 {
            let key = UserKey::new("s", &format!("user-{user}"));
            tokens.get_or_exchange(key, async { Ok::<_, ()>(token(2000)) }).await.unwrap();
        }
        assert!(tokens.len().await <= 3);
    }
}
