//! The broker: identities, the token cache, background refresh and prefetch.
//!
//! It knows nothing of HTTP. The server asks it for a token for (identity, resource); it
//! answers from memory when it can, and otherwise makes exactly one upstream call per key
//! however many callers are waiting (docs/caching.md#single-flight).

mod cache;
mod limit;
mod obo;
mod policy;
mod readiness;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use moka::future::Cache;
use tokio::sync::Semaphore;

pub use cache::{CachedToken, Origin, Segment, TokenCache};
pub use obo::{UserOutcome, UserToken};
pub use policy::Policy;
pub use readiness::Readiness;

use tracing::Instrument;

use crate::backoff::Backoff;
use crate::clock::Clock;
use crate::credential::{Credential, CredentialError, OnBehalfOf};
use crate::id::Id;
use crate::secret::Secret;
use crate::shared::{Claim, Found, Names, SharedCache, SharedToken};
use crate::store::{Held, HeldIdentity, HeldSource, HeldToken, PersistedToken, Store, Writer};
use crate::telemetry::{self, metrics};
use crate::token::AccessToken;

/// How a configured identity is described to the broker.
pub struct IdentitySpec {
    /// The configuration's name for it (`app`); used in logs.
    pub name: String,
    /// The application (client) id; what `client_id` selects and what responses echo.
    pub client_id: Id,
    /// The object (principal) id, if known; what `object_id` / `principal_id` select.
    pub object_id: Option<Id>,
    /// The Azure resource id of a user-assigned identity; what `msi_res_id` selects.
    pub resource_id: Option<Id>,
    /// Whether requests without a selector get this identity.
    pub is_default: bool,
    /// Resources fetched at start; readiness waits for them.
    pub prefetch: Vec<String>,
    /// Where its tokens come from.
    pub credential: Box<dyn Credential>,
}

/// Sizing of the cache.
#[derive(Clone, Copy, Debug)]
pub struct CacheSettings {
    /// Most tokens kept per identity.
    pub max_entries: u64,
    /// How long a permanent upstream refusal is remembered.
    pub negative_ttl: Duration,
    /// Refresh and serving policy.
    pub policy: Policy,
    /// Background refreshes running at once. Beyond it, stale hits keep being served and a
    /// later request tries again: refreshes that fall due together (a restart with a
    /// persisted cache, a fleet's tokens issued at once) trickle out instead of queueing a task
    /// each, and leave upstream capacity for first requests for new resources.
    pub max_background_refreshes: usize,
    /// New keys (fetches for a resource the identity holds no token for, prefetches
    /// excepted) each identity may make per minute, once `new_keys_burst` are spent.
    pub new_keys_per_minute: u32,
    /// New keys an identity may make at once (the bucket's size; it starts full).
    pub new_keys_burst: u32,
}

/// One identity with its own cache.
pub struct Identity {
    /// Configuration name.
    pub name: String,
    /// Application (client) id.
    pub client_id: Id,
    object_id: Option<Id>,
    resource_id: Option<Id>,
    prefetch: Vec<String>,
    credential: Box<dyn Credential>,
    tokens: TokenCache,
    refusals: Cache<String, BrokerError>,
    /// Permits for new keys (`cache.new_keys_per_minute`).
    new_keys: limit::TokenBucket,
    /// Whether the last new key was refused, so that the warning is logged once per episode
    /// rather than once per refused request.
    limited: AtomicBool,
    /// Users' tokens from on-behalf-of exchanges (`obo`), in memory only.
    user_tokens: obo::UserTokens,
    /// The broker-clock second its upstream went down (the first exchange that failed in a way
    /// a retry may fix), or 0 while it is up. Only exchanges touch it, never cache hits: it is
    /// what makes "upstream down" and "upstream up" one log line each, not one per failure.
    down_since: AtomicU64,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity").field("name", &self.name).field("client_id", &self.client_id).finish_non_exhaustive()
    }
}

/// How a request names the identity it wants (docs/protocols.md#identity-selectors).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// No selector: the default identity.
    Default,
    /// `client_id` (also `clientid`).
    ClientId(Id),
    /// `object_id` or `principal_id`.
    ObjectId(Id),
    /// `msi_res_id`, `mi_res_id` or `msi-res-id`.
    ResourceId(Id),
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("the default identity"),
            Self::ClientId(id) => write!(f, "client_id {id:?}"),
            Self::ObjectId(id) => write!(f, "object_id {id:?}"),
            Self::ResourceId(id) => write!(f, "msi_res_id {id:?}"),
        }
    }
}

/// Why the broker has no token for a request.
#[derive(Clone, Debug, thiserror::Error)]
pub enum BrokerError {
    /// The selector names no configured identity. Only configured identities are served.
    #[error("no identity with {0} is configured here")]
    UnknownIdentity(Selector),
    /// No selector was given and no identity is marked `default`.
    #[error("no default identity is configured; select one with client_id, object_id or msi_res_id")]
    NoDefaultIdentity,
    /// The upstream credential failed. `kind` classifies the failure for whoever answers
    /// the caller; `reason` is the credential error's text (never a secret).
    #[error("identity {identity:?}: {reason}")]
    Upstream { identity: String, kind: UpstreamKind, reason: Arc<str> },
    /// The identity asked for more resources it holds no token for than
    /// `cache.new_keys_per_minute` allows. Tokens already cached are still served.
    #[error(
        "identity {identity:?} may fetch tokens for at most {per_minute} new resources a minute after a burst of \
         {burst} (cache.new_keys_per_minute, cache.new_keys_burst); tokens it already holds are still served; \
         the next new resource is allowed in {retry_after_secs} s"
    )]
    NewKeysLimited { identity: String, per_minute: u32, burst: u32, retry_after_secs: u64 },
}

impl BrokerError {
    /// The error for `identity` whose credential chain failed with `error`, classified.
    pub fn upstream(identity: String, error: &CredentialError) -> Self {
        Self::Upstream { identity, kind: UpstreamKind::of(error), reason: error.to_string().into() }
    }
}

/// What an upstream failure means for the caller, decided here from the credential's error
/// so that the layer answering the caller needs to know only the broker's vocabulary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamKind {
    /// The authority refused for a reason retrying will not fix (a bad secret, an unknown
    /// resource). Such refusals are remembered for `cache.negative_ttl_secs`.
    Permanent {
        /// The AADSTS error number, when the authority sent one.
        aadsts: Option<u32>,
        /// The authority's correlation id, for a support request.
        correlation_id: Option<String>,
    },
    /// The authority is throttling; it asked for `retry_after`.
    Throttled { retry_after: Duration },
    /// A failure that may pass (timeout, refused connection, 5xx), or no credential of the
    /// chain could run here.
    Transient,
    /// The authority refused an on-behalf-of exchange for a reason only the user can cure.
    UserRefused {
        /// The OAuth `error` code (`interaction_required`, `invalid_grant`, ...).
        error: String,
        /// The AADSTS error number, when the authority sent one.
        aadsts: Option<u32>,
        /// The claims challenge to hand to the front end, when the authority sent one.
        claims: Option<String>,
        /// The authority's correlation id, for a support request.
        correlation_id: Option<String>,
    },
}

impl UpstreamKind {
    /// The classification of a credential's error.
    pub fn of(error: &CredentialError) -> Self {
        match error {
            CredentialError::Rejected { aadsts, correlation_id, .. } => {
                Self::Permanent { aadsts: *aadsts, correlation_id: correlation_id.clone() }
            }
            CredentialError::Throttled { retry_after, .. } => Self::Throttled { retry_after: *retry_after },
            CredentialError::Transient { .. } | CredentialError::Unavailable { .. } => Self::Transient,
            CredentialError::UserRefused { error, aadsts, claims, correlation_id, .. } => Self::UserRefused {
                error: error.clone(),
                aadsts: *aadsts,
                claims: claims.clone(),
                correlation_id: correlation_id.clone(),
            },
        }
    }
}

/// Where a served token came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Fresh from memory.
    Hit,
    /// From memory, past its refresh point; a background refresh was started or is running.
    Stale,
    /// Fetched upstream for this request.
    Miss,
    /// Fetched upstream by a concurrent request this one waited for.
    Coalesced,
    /// Not in memory; taken from the shared cache (`[cache.shared]`), another replica's fetch.
    Shared,
}

impl CacheOutcome {
    /// Lower-case name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Stale => "stale",
            Self::Miss => "miss",
            Self::Coalesced => "coalesced",
            Self::Shared => "shared",
        }
    }
}

/// Why the broker asks the upstream for a token: the `exchange` member of its log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exchange {
    /// Nothing servable was cached: a request (or a prefetch) waits for it.
    New,
    /// A cached token passed its refresh point: replaced in the background while it is served.
    Refresh,
}

impl Exchange {
    fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Refresh => "refresh",
        }
    }
}

/// A token handed to a caller.
#[derive(Clone, Debug)]
pub struct Served {
    /// The cache entry (shared; cloning it is a reference-count increment).
    pub entry: Arc<CachedToken>,
    /// How it was obtained.
    pub outcome: CacheOutcome,
}

/// Identities, their caches and readiness.
pub struct Broker {
    identities: Vec<Arc<Identity>>,
    default: Option<usize>,
    settings: CacheSettings,
    clock: Arc<dyn Clock>,
    readiness: Readiness,
    /// Where fetched tokens are persisted, when persistence is on.
    writer: OnceLock<Arc<Writer>>,
    /// One permit per background refresh allowed to run (`max_background_refreshes`).
    refresh_slots: Arc<Semaphore>,
    /// The fleet's shared cache, when `[cache.shared]` is configured.
    shared: OnceLock<Arc<SharedCache>>,
    /// Whether users' tokens are persisted too (`cache.persistence.user_tokens`, on an
    /// encrypted store); set before seeding, never cleared.
    persist_users: AtomicBool,
}

/// The waits between a prefetch's attempts: 2 s after the first failure, doubling to 32 s.
/// A prefetch retries until it succeeds, because readiness waits for it.
const PREFETCH_BACKOFF: Backoff = Backoff { base: Duration::from_secs(1), max: Duration::from_secs(32) };

/// What [`Broker::seed`] did with the persisted tokens it was given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeedReport {
    /// Put in the cache.
    pub loaded: usize,
    /// Too close to expiry to serve.
    pub expired: usize,
    /// For a client id that is not configured here (any more).
    pub unknown_identity: usize,
    /// Users' tokens put in their identity's user-token cache (only when they are persisted).
    pub users: usize,
    /// Beyond `max_entries` for their identity: those in use were kept first, then the
    /// freshest.
    pub over_limit: usize,
}

/// What became of one persisted user's token at start.
enum UserSeed {
    /// In its identity's user-token cache.
    Loaded,
    /// Too close to its end to serve.
    Expired,
    /// Not served here: users' tokens are not persisted in this configuration, the identity
    /// is not configured (any more), or the entry's name is not a user-token key.
    NotServed,
}

/// How long a replica that found another holding a key's refresh lease waits before it looks
/// again: by then the holder has usually written the refreshed token.
const REFRESH_HELD_RETRY_SECS: u64 = 2;

impl Broker {
    /// Builds the broker. Configuration validation guarantees at most one default.
    pub fn new(specs: Vec<IdentitySpec>, settings: CacheSettings, clock: Arc<dyn Clock>) -> Self {
        let default = specs.iter().position(|s| s.is_default);
        let prefetches = specs.iter().map(|s| s.prefetch.len()).sum();
        let started = tokio::time::Instant::now().into_std();
        let identities = specs
            .into_iter()
            .map(|spec| {
                let name = spec.name.clone();
                let tokens = TokenCache::new(
                    settings.max_entries,
                    settings.policy.serve_margin_secs,
                    &clock,
                    Arc::new(move |reason| metrics::cache_eviction(&name, reason)),
                );
                let refusals =
                    Cache::builder().max_capacity(settings.max_entries).time_to_live(settings.negative_ttl).build();
                Arc::new(Identity {
                    name: spec.name,
                    client_id: spec.client_id,
                    object_id: spec.object_id,
                    resource_id: spec.resource_id,
                    prefetch: spec.prefetch,
                    credential: spec.credential,
                    tokens,
                    user_tokens: obo::UserTokens::new(settings.max_entries, Arc::clone(&clock)),
                    refusals,
                    new_keys: limit::TokenBucket::new(settings.new_keys_per_minute, settings.new_keys_burst, started),
                    limited: AtomicBool::new(false),
                    down_since: AtomicU64::new(0),
                })
            })
            .collect();
        let refresh_slots = Arc::new(Semaphore::new(settings.max_background_refreshes.max(1)));
        Self {
            identities,
            default,
            settings,
            clock,
            readiness: Readiness::new(prefetches),
            writer: OnceLock::new(),
            persist_users: AtomicBool::new(false),
            refresh_slots,
            shared: OnceLock::new(),
        }
    }

    /// Shares tokens with the other replicas through `shared` from now on: asked on a local
    /// miss, written after every upstream exchange (docs/shared-cache.md). Only the first
    /// call has an effect.
    pub fn share_via(&self, shared: Arc<SharedCache>) {
        let _ = self.shared.set(shared);
    }

    /// Whether a token from the shared cache may be served: servable now, and (for a refresh)
    /// newer than what this replica holds and not itself due.
    fn accept_shared(&self, token: &SharedToken, replacing: Option<&AccessToken>) -> bool {
        let now = self.clock.now();
        self.settings.policy.servable(token.token.expires_on, now)
            && replacing.is_none_or(|held| {
                // Another token that lasts at least as long (a refresh in the same second as the
                // fetch it replaces has the same expiry), and not itself due.
                token.token.expires_on >= held.expires_on
                    && token.token.token.expose() != held.token.expose()
                    && now < token.refresh_on
            })
    }

    /// A shared-cache entry as a cache entry of this replica.
    fn taken_from_shared(&self, identity: &Identity, resource: &str, shared: SharedToken) -> Arc<CachedToken> {
        let entry = CachedToken::new(shared.token, shared.refresh_on, Origin::Shared);
        tracing::debug!(
            identity = %identity.name,
            resource,
            expires_in = entry.token.expires_on.saturating_sub(self.clock.now()),
            fingerprint = &*entry.fingerprint,
            "took a token from the shared cache"
        );
        Arc::new(entry)
    }

    /// A token for a key memory does not hold: from the shared cache if another replica
    /// fetched it, else upstream, with this replica holding the fleet's lease on the key
    /// while it fetches (or, when the lease holder takes longer than `lease_wait`, or the
    /// shared cache is down, without it).
    async fn obtain(&self, identity: &Identity, resource: &str) -> Result<Arc<CachedToken>, BrokerError> {
        let Some(shared) = self.shared.get() else {
            return self.fetch(identity, resource, Exchange::New).await;
        };
        let names = shared.names(&identity.client_id, resource);
        let accept = |token: &SharedToken| self.accept_shared(token, None);
        let lease = match shared.get(&names, self.clock.now(), &accept).await {
            Found::Token(token) => return Ok(self.taken_from_shared(identity, resource, token)),
            Found::Unreachable => None,
            Found::Miss => match shared.claim(&names, true, self.clock.now(), &accept).await {
                Claim::Token(token) => return Ok(self.taken_from_shared(identity, resource, token)),
                Claim::Fetch(lease) => Some(lease),
                Claim::Held | Claim::Alone => None,
            },
        };
        let fetched = self.fetch(identity, resource, Exchange::New).await;
        self.publish(shared, names, fetched.as_ref().ok(), lease);
        fetched
    }

    /// After an upstream exchange: writes the token for the other replicas, then gives up the
    /// lease, off the caller's path (both are bounded by `cache.shared.timeout_ms`).
    fn publish(
        &self,
        shared: &Arc<SharedCache>,
        names: Names,
        fetched: Option<&Arc<CachedToken>>,
        lease: Option<crate::shared::Lease>,
    ) {
        let shared = Arc::clone(shared);
        let fetched = fetched.cloned();
        let now = self.clock.now();
        tokio::spawn(async move {
            if let Some(entry) = &fetched {
                shared.put(&names, &entry.token, entry.refresh_on, now).await;
            }
            if let Some(lease) = lease {
                shared.release(&names, lease).await;
            }
        });
    }

    /// A background refresh of `entry`: a fresher token another replica wrote, else one
    /// upstream fetch under the key's lease. `None` when another replica holds the lease:
    /// its token will be in the shared cache shortly.
    async fn refresh(
        &self,
        identity: &Identity,
        resource: &str,
        entry: &CachedToken,
    ) -> Option<Result<Arc<CachedToken>, BrokerError>> {
        let Some(shared) = self.shared.get() else {
            return Some(self.fetch(identity, resource, Exchange::Refresh).await);
        };
        let names = shared.names(&identity.client_id, resource);
        let accept = |token: &SharedToken| self.accept_shared(token, Some(&entry.token));
        let lease = match shared.get(&names, self.clock.now(), &accept).await {
            Found::Token(token) => return Some(Ok(self.taken_from_shared(identity, resource, token))),
            Found::Unreachable => None,
            Found::Miss => match shared.claim(&names, false, self.clock.now(), &accept).await {
                Claim::Token(token) => return Some(Ok(self.taken_from_shared(identity, resource, token))),
                Claim::Held => return None,
                Claim::Fetch(lease) => Some(lease),
                Claim::Alone => None,
            },
        };
        let fetched = self.fetch(identity, resource, Exchange::Refresh).await;
        self.publish(shared, names, fetched.as_ref().ok(), lease);
        Some(fetched)
    }

    /// Persists the cache to `store` from now on: after every change (a token fetched or
    /// refreshed), batched and off the request path, the store is made to hold what memory
    /// holds (`Store::save`). With `write_now`, one save follows at once (after a load, to
    /// drop from the file what was not loaded). Only the first call has an effect.
    pub fn persist_to(self: &Arc<Self>, store: Arc<dyn Store>, write_now: bool) {
        let source: Weak<dyn HeldSource> = Arc::downgrade(self) as Weak<dyn HeldSource>;
        let writer = Writer::start(store, Arc::clone(&self.clock), source);
        if self.writer.set(Arc::new(writer)).is_ok() && write_now {
            self.persist_changed();
        }
    }

    /// Persists users' tokens too from now on, and lets [`Broker::seed`] load them: call before
    /// seeding (docs/on-behalf-of.md#the-cache).
    pub fn persist_user_tokens(&self) {
        self.persist_users.store(true, Ordering::Relaxed);
    }

    fn persists_users(&self) -> bool {
        self.persist_users.load(Ordering::Relaxed)
    }

    /// Tells the writer, if any, that the cache changed.
    fn persist_changed(&self) {
        if let Some(writer) = self.writer.get() {
            writer.changed();
        }
    }

    /// The persistence writer, if any (the caller flushes it on shutdown).
    pub fn writer(&self) -> Option<&Arc<Writer>> {
        self.writer.get()
    }

    /// Puts persisted tokens into the caches, before serving starts, so the first requests
    /// after a restart are hits and a prefetch already held counts as done. Tokens are
    /// matched to identities by client id; those too close to expiry are skipped, and of
    /// more than `max_entries` for one identity, those in use and then the freshest are kept.
    /// In that order they fill the main segment, and the rest go on probation.
    ///
    /// This runs before readiness with up to `max_entries` tokens per identity, so the work per
    /// token is kept to the cache entry itself: the store keeps tokens sorted by client id, so
    /// the identity is looked up once per run of equal client ids rather than per token, and
    /// the token and resource are moved into the cache, not cloned.
    pub async fn seed(&self, tokens: Vec<PersistedToken>) -> SeedReport {
        let now = self.clock.now();
        let mut report = SeedReport::default();
        let mut resolved: Option<(Id, Option<usize>)> = None;
        let mut per_identity: Vec<Vec<PersistedToken>> = self.identities.iter().map(|_| Vec::new()).collect();
        for persisted in tokens {
            if let Some(client_id) = persisted.client_id.strip_suffix(obo::PERSISTED_CLIENT_SUFFIX) {
                match self.seed_user_token(client_id, &persisted, now).await {
                    UserSeed::Loaded => report.users += 1,
                    UserSeed::Expired => report.expired += 1,
                    UserSeed::NotServed => report.unknown_identity += 1,
                }
                continue;
            }
            let identity = match &resolved {
                Some((client_id, identity)) if *client_id == persisted.client_id => *identity,
                _ => {
                    let identity = self.identities.iter().position(|i| i.client_id == persisted.client_id);
                    resolved = Some((Id::from(persisted.client_id.as_str()), identity));
                    identity
                }
            };
            let Some(identity) = identity else {
                report.unknown_identity += 1;
                continue;
            };
            if !self.settings.policy.servable(persisted.token.expires_on, now) {
                report.expired += 1;
                continue;
            }
            per_identity[identity].push(persisted);
        }
        let max = usize::try_from(self.settings.max_entries).unwrap_or(usize::MAX);
        let (main_capacity, _) = TokenCache::capacities(self.settings.max_entries);
        for (identity, mut tokens) in self.identities.iter().zip(per_identity) {
            if tokens.len() as u64 > main_capacity {
                tokens.sort_by_key(|t| std::cmp::Reverse((t.in_use, t.token.expires_on)));
                report.over_limit += tokens.len().saturating_sub(max);
                tokens.truncate(max);
            }
            for persisted in tokens {
                let entry = CachedToken::new(persisted.token, persisted.refresh_on, Origin::Persisted);
                identity.tokens.seed(persisted.resource, Arc::new(entry)).await;
                report.loaded += 1;
            }
        }
        report
    }

    /// Puts one persisted user's token into its identity's user-token cache, when users' tokens
    /// are persisted, the identity exists, the name is a key and the token is still servable.
    async fn seed_user_token(&self, client_id: &str, persisted: &PersistedToken, now: u64) -> UserSeed {
        if !self.persists_users() {
            return UserSeed::NotServed;
        }
        let client_id = Id::from(client_id);
        let Some(identity) = self.identities.iter().find(|i| i.client_id == client_id) else {
            return UserSeed::NotServed;
        };
        let Some(key) = obo::UserKey::from_persisted_name(&persisted.resource) else { return UserSeed::NotServed };
        let serve_until = persisted.token.expires_on.saturating_sub(self.settings.policy.serve_margin_secs);
        if serve_until <= now {
            return UserSeed::Expired;
        }
        let token = UserToken {
            token: persisted.token.clone(),
            serve_until,
            fingerprint: persisted.token.token.fingerprint().into_boxed_str(),
        };
        if identity.user_tokens.seed(key, Arc::new(token)).await { UserSeed::Loaded } else { UserSeed::Expired }
    }

    /// The identity a selector names. Ids compare case-insensitively, as Azure's do.
    pub fn resolve(&self, selector: &Selector) -> Result<&Arc<Identity>, BrokerError> {
        let found = match selector {
            Selector::Default => {
                return self.default.map(|i| &self.identities[i]).ok_or(BrokerError::NoDefaultIdentity);
            }
            Selector::ClientId(id) => self.identities.iter().find(|i| i.client_id == *id),
            Selector::ObjectId(id) => self.identities.iter().find(|i| i.object_id.as_ref() == Some(id)),
            Selector::ResourceId(id) => self.identities.iter().find(|i| i.resource_id.as_ref() == Some(id)),
        };
        found.ok_or_else(|| BrokerError::UnknownIdentity(selector.clone()))
    }

    /// Every configured identity.
    pub fn identities(&self) -> &[Arc<Identity>] {
        &self.identities
    }

    /// The identity configured under `name`.
    pub fn identity_named(&self, name: &str) -> Option<&Arc<Identity>> {
        self.identities.iter().find(|identity| identity.name == name)
    }

    /// A token for `scopes` as the user of `assertion` (an inbound token the caller has
    /// validated, valid until `assertion_expires_on`), from the identity's user-token cache or
    /// from one on-behalf-of exchange with the identity's credential, shared by every caller
    /// waiting on the same user and scopes (docs/on-behalf-of.md#the-cache).
    pub async fn on_behalf_of(
        &self,
        identity: &Identity,
        scopes: &str,
        assertion: &Secret,
        assertion_expires_on: u64,
    ) -> Result<(Arc<UserToken>, UserOutcome), BrokerError> {
        let key = obo::UserKey::new(scopes, assertion.expose());
        let exchange = Box::pin(self.exchange_for_user(identity, scopes, assertion, assertion_expires_on));
        let result = identity.user_tokens.get_or_exchange(key, exchange).await.map_err(|shared| (*shared).clone());
        if matches!(result, Ok((_, UserOutcome::Miss))) && self.persists_users() {
            self.persist_changed();
        }
        result
    }

    /// Users' tokens held for `identity` (for the memory figures of docs/benchmarks.md).
    pub async fn user_tokens_held(&self, identity: &Identity) -> u64 {
        identity.user_tokens.len().await
    }

    /// One on-behalf-of exchange, logged like a token exchange (the fingerprint, never the
    /// token) and counted in the upstream metrics.
    async fn exchange_for_user(
        &self,
        identity: &Identity,
        scopes: &str,
        assertion: &Secret,
        assertion_expires_on: u64,
    ) -> Result<Arc<UserToken>, BrokerError> {
        let kind = identity.credential.kind();
        let started = std::time::Instant::now();
        let result = identity.credential.on_behalf_of(OnBehalfOf { assertion, scopes }).await;
        let (outcome, aadsts) = match &result {
            Ok(_) => ("success", None),
            Err(CredentialError::Rejected { aadsts, .. }) => ("rejected", *aadsts),
            Err(CredentialError::UserRefused { aadsts, .. }) => ("user_refused", *aadsts),
            Err(CredentialError::Throttled { .. }) => ("throttled", None),
            Err(CredentialError::Transient { .. }) => ("transient", None),
            Err(CredentialError::Unavailable { .. }) => ("unavailable", None),
        };
        let elapsed = started.elapsed();
        metrics::upstream(kind.as_str(), outcome, aadsts, elapsed);
        let latency_us = elapsed.as_micros() as u64;
        let now = self.clock.now();
        match result {
            Ok(mut token) if token.expires_on > now => {
                let issued_expires_in = token.expires_on.saturating_sub(now);
                // The entry stands for the inbound token too: it ends with whichever ends first.
                token.expires_on = token.expires_on.min(assertion_expires_on);
                let serve_until = token.expires_on.saturating_sub(self.settings.policy.serve_margin_secs);
                let fingerprint = token.token.fingerprint().into_boxed_str();
                tracing::info!(
                    identity = %identity.name,
                    scopes,
                    credential = kind.as_str(),
                    exchange = "on_behalf_of",
                    expires_in = issued_expires_in,
                    ends_in = token.expires_on.saturating_sub(now),
                    cached_for = serve_until.saturating_sub(now),
                    fingerprint = &*fingerprint,
                    latency_us,
                    "fetched a user token upstream"
                );
                Ok(Arc::new(UserToken { token, serve_until, fingerprint }))
            }
            Ok(token) => Err(BrokerError::upstream(
                identity.name.clone(),
                &CredentialError::Transient {
                    credential: kind,
                    reason: format!(
                        "the exchange returned a token that expired at {} (now {now}); check the system clock",
                        token.expires_on
                    ),
                },
            )),
            Err(error) => {
                let error = BrokerError::upstream(identity.name.clone(), &error);
                tracing::warn!(
                    identity = %identity.name,
                    scopes,
                    credential = kind.as_str(),
                    exchange = "on_behalf_of",
                    outcome,
                    latency_us,
                    %error,
                    "on-behalf-of exchange failed"
                );
                Err(error)
            }
        }
    }

    /// Readiness of the prefetches.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// The broker's clock (the server computes `expires_in` against it).
    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    /// A token for `resource` (already normalised: no `/.default`) as `identity`.
    pub async fn token(self: &Arc<Self>, identity: &Arc<Identity>, resource: &str) -> Result<Served, BrokerError> {
        let span = telemetry::span(
            || tracing::info_span!("cache_lookup", identity = %identity.name, resource, outcome = tracing::field::Empty),
        );
        let result = if span.is_disabled() {
            self.lookup(identity, resource).await
        } else {
            self.lookup(identity, resource).instrument(span.clone()).await
        };
        if let Ok(served) = &result {
            metrics::cache_lookup(served.outcome.as_str());
            span.record("outcome", served.outcome.as_str());
        }
        result
    }

    async fn lookup(self: &Arc<Self>, identity: &Arc<Identity>, resource: &str) -> Result<Served, BrokerError> {
        let now = self.clock.now();
        let mut unservable = None;
        // A token in use is found without waiting; anything else asks moka, boxed so that a
        // hit's future stays small.
        let found = match identity.tokens.get_in_use(resource) {
            Some(entry) => Some((entry, Segment::Main)),
            None => Box::pin(identity.tokens.get(resource)).await,
        };
        if let Some((entry, segment)) = found {
            if self.settings.policy.servable(entry.token.expires_on, now) {
                // Asked for again: in use. Boxed, as below, to keep hits' futures small.
                if segment == Segment::Probation
                    && Box::pin(identity.tokens.promote(resource, Arc::clone(&entry))).await
                {
                    self.persist_changed();
                }
                let outcome = if now >= entry.refresh_on {
                    self.refresh_in_background(identity, resource, &entry, now);
                    CacheOutcome::Stale
                } else {
                    CacheOutcome::Hit
                };
                return Ok(Served { entry, outcome });
            }
            unservable = Some(segment);
        }
        // Boxed: the wait for the upstream is a large state machine, and inline it would make
        // every request's future, hits included, that large to create and move.
        Box::pin(self.lookup_upstream(identity, resource, unservable)).await
    }

    /// The rest of a lookup when memory had nothing servable: a remembered refusal, or one
    /// upstream fetch shared by every caller waiting for the same key. `unservable` says
    /// where a token too close to expiry was found.
    async fn lookup_upstream(
        self: &Arc<Self>,
        identity: &Arc<Identity>,
        resource: &str,
        unservable: Option<Segment>,
    ) -> Result<Served, BrokerError> {
        if let Some(segment) = unservable {
            // Too close to expiry to hand out: drop it and wait for a new one below.
            identity.tokens.invalidate(resource, segment).await;
        }
        if let Some(refusal) = identity.refusals.get(resource).await {
            return Err(refusal);
        }
        // A key held before (now unservable) or a prefetch is not new; anything else is, and
        // costs a permit of the identity's new-key budget.
        let new_key = unservable.is_none() && !identity.prefetch.iter().any(|p| p == resource);
        let fetched = identity
            .tokens
            .fetch_once(resource, unservable == Some(Segment::Main), async {
                if new_key {
                    self.take_new_key(identity)?;
                }
                self.obtain(identity, resource).await
            })
            .await;
        let (entry, fetched_here) = fetched.map_err(|shared: Arc<BrokerError>| (*shared).clone())?;
        let outcome = if fetched_here {
            self.persist_changed();
            if entry.origin == Origin::Shared { CacheOutcome::Shared } else { CacheOutcome::Miss }
        } else {
            CacheOutcome::Coalesced
        };
        Ok(Served { entry, outcome })
    }

    /// Takes a permit for a new key of `identity`, or refuses with the wait until one.
    fn take_new_key(&self, identity: &Identity) -> Result<(), BrokerError> {
        match identity.new_keys.try_take(tokio::time::Instant::now().into_std()) {
            Ok(()) => {
                identity.limited.store(false, Ordering::Relaxed);
                Ok(())
            }
            Err(wait) => {
                metrics::new_key_limited(&identity.name);
                if !identity.limited.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        identity = %identity.name,
                        per_minute = self.settings.new_keys_per_minute,
                        burst = self.settings.new_keys_burst,
                        "requests for new resources exceed cache.new_keys_per_minute; refusing them with 429 \
                         until the rate drops (cached tokens are still served)"
                    );
                }
                Err(BrokerError::NewKeysLimited {
                    identity: identity.name.clone(),
                    per_minute: self.settings.new_keys_per_minute,
                    burst: self.settings.new_keys_burst,
                    retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
                })
            }
        }
    }

    /// Calls the identity's credential once and wraps the result for the cache.
    ///
    /// Every exchange logs one line: the new token's fingerprint (never the token), or the
    /// error, with the exchange's latency (retries included). The first failure a retry may
    /// fix also logs "upstream down", and the next success "upstream up".
    async fn fetch(
        &self,
        identity: &Identity,
        resource: &str,
        exchange: Exchange,
    ) -> Result<Arc<CachedToken>, BrokerError> {
        let kind = identity.credential.kind();
        let span = telemetry::span(
            || tracing::info_span!("upstream_request", otel.kind = "client", identity = %identity.name, resource, credential = kind.as_str()),
        );
        let started = std::time::Instant::now();
        let result = identity.credential.get_token(resource).instrument(span).await.and_then(|token| {
            // A token that is already dead (a broken tool, a skewed clock) must not be served,
            // not even once.
            let now = self.clock.now();
            if token.expires_on <= now {
                return Err(CredentialError::Transient {
                    credential: kind,
                    reason: format!(
                        "the credential returned a token that expired at {} (now {now}); check the system clock",
                        token.expires_on
                    ),
                });
            }
            Ok(token)
        });
        let (outcome, aadsts) = match &result {
            Ok(_) => ("success", None),
            Err(CredentialError::Rejected { aadsts, .. }) => ("rejected", *aadsts),
            Err(CredentialError::Throttled { .. }) => ("throttled", None),
            Err(CredentialError::Transient { .. }) => ("transient", None),
            Err(CredentialError::Unavailable { .. }) => ("unavailable", None),
            Err(CredentialError::UserRefused { aadsts, .. }) => ("user_refused", *aadsts),
        };
        let elapsed = started.elapsed();
        metrics::upstream(kind.as_str(), outcome, aadsts, elapsed);
        let latency_us = elapsed.as_micros() as u64;
        match result {
            Ok(token) => {
                let now = self.clock.now();
                let refresh_on = self.settings.policy.refresh_on(&token, now, fastrand::f64());
                let entry = CachedToken::new(token, refresh_on, Origin::Fetched(kind));
                tracing::info!(
                    identity = %identity.name,
                    resource,
                    credential = kind.as_str(),
                    exchange = exchange.as_str(),
                    expires_in = entry.token.expires_on.saturating_sub(now),
                    fingerprint = &*entry.fingerprint,
                    latency_us,
                    "fetched a token upstream"
                );
                let down_since = identity.down_since.swap(0, Ordering::AcqRel);
                if down_since != 0 {
                    tracing::info!(
                        identity = %identity.name,
                        credential = kind.as_str(),
                        down_secs = now.saturating_sub(down_since),
                        "upstream up"
                    );
                }
                Ok(Arc::new(entry))
            }
            Err(error) => {
                let permanent = error.is_permanent();
                let error = BrokerError::upstream(identity.name.clone(), &error);
                tracing::warn!(
                    identity = %identity.name,
                    resource,
                    credential = kind.as_str(),
                    exchange = exchange.as_str(),
                    outcome,
                    latency_us,
                    %error,
                    "upstream token request failed"
                );
                // A refusal is an answer: the authority is reachable, the configuration is wrong,
                // and the line above says so. Anything else means no token can be had for now.
                let now = self.clock.now().max(1);
                if !permanent
                    && identity.down_since.compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire).is_ok()
                {
                    tracing::warn!(identity = %identity.name, credential = kind.as_str(), outcome, %error, "upstream down");
                }
                if permanent {
                    identity.refusals.insert(resource.to_owned(), error.clone()).await;
                }
                Err(error)
            }
        }
    }

    /// Starts one background refresh of `entry` unless one is running or backing off.
    fn refresh_in_background(
        self: &Arc<Self>,
        identity: &Arc<Identity>,
        resource: &str,
        entry: &Arc<CachedToken>,
        now: u64,
    ) {
        if !entry.try_begin_refresh(now) {
            return;
        }
        let Ok(slot) = Arc::clone(&self.refresh_slots).try_acquire_owned() else {
            // Every slot is busy: serve the stale token and let a later request try again.
            entry.abandon_refresh();
            metrics::refresh_deferred();
            return;
        };
        let broker = Arc::clone(self);
        let identity = Arc::clone(identity);
        let entry = Arc::clone(entry);
        let resource = resource.to_owned();
        tokio::spawn(async move {
            let _slot = slot;
            let span =
                telemetry::span(|| tracing::info_span!("background_refresh", identity = %identity.name, resource));
            let Some(result) = broker.refresh(&identity, &resource, &entry).instrument(span).await else {
                // Another replica is refreshing this key for the fleet: look again shortly.
                entry.postpone_refresh(broker.clock.now() + REFRESH_HELD_RETRY_SECS);
                return;
            };
            metrics::refresh(result.is_ok());
            match result {
                Ok(fresh) => {
                    identity.tokens.replace(resource, fresh).await;
                    broker.persist_changed();
                }
                Err(error) => {
                    let policy = broker.settings.policy;
                    let failures = entry.refresh_failed(broker.clock.now(), |f| policy.refresh_backoff(f));
                    tracing::warn!(
                        identity = %identity.name,
                        resource,
                        failures,
                        retry_in_secs = policy.refresh_backoff(failures),
                        expires_in = entry.token.expires_on.saturating_sub(broker.clock.now()),
                        %error,
                        "background refresh failed; still serving the cached token"
                    );
                }
            }
        });
    }

    /// The cache's contents for the metrics endpoint: per identity name, each cached
    /// resource with its seconds until expiry (never the token).
    pub async fn snapshot(&self) -> Vec<(&str, Vec<(Arc<String>, u64)>)> {
        let now = self.clock.now();
        let mut snapshot = Vec::with_capacity(self.identities.len());
        for identity in &self.identities {
            let tokens = identity
                .tokens
                .entries()
                .await
                .into_iter()
                .map(|(resource, entry, _)| (resource, entry.token.expires_on.saturating_sub(now)))
                .collect();
            snapshot.push((identity.name.as_str(), tokens));
        }
        snapshot
    }

    /// Marks one prefetch as done, and logs the moment the last one lands.
    fn prefetch_done(&self) {
        if self.readiness.complete_one() {
            tracing::info!(prefetched = self.identities.iter().map(|i| i.prefetch.len()).sum::<usize>(), "ready");
        }
    }

    /// Fetches every identity's prefetch resources, retrying each until it succeeds, and
    /// opens the readiness latch as they land. Logs "ready" once, when it opens (at once when
    /// nothing is to be prefetched).
    pub fn start_prefetch(self: &Arc<Self>) {
        if self.readiness.is_ready() {
            tracing::info!(prefetched = 0, "ready");
        }
        for identity in &self.identities {
            for resource in &identity.prefetch {
                if identity.tokens.contains(resource) {
                    // Loaded from the persistent cache: ready at once. One lookup still runs
                    // so a token past its refresh point starts its background refresh.
                    tracing::info!(identity = %identity.name, resource, "prefetch satisfied by the persistent cache");
                    self.prefetch_done();
                    let broker = Arc::clone(self);
                    let identity = Arc::clone(identity);
                    let resource = resource.clone();
                    tokio::spawn(async move {
                        let _ = broker.token(&identity, &resource).await;
                    });
                    continue;
                }
                let broker = Arc::clone(self);
                let identity = Arc::clone(identity);
                let resource = resource.clone();
                tokio::spawn(async move {
                    let mut failures = 0u32;
                    loop {
                        match broker.token(&identity, &resource).await {
                            Ok(_) => {
                                tracing::info!(identity = %identity.name, resource, "prefetched");
                                broker.prefetch_done();
                                return;
                            }
                            Err(error) => {
                                failures += 1;
                                let wait = PREFETCH_BACKOFF.delay(failures);
                                tracing::warn!(identity = %identity.name, resource, %error, retry_in_secs = wait.as_secs(), "prefetch failed");
                                tokio::time::sleep(wait).await;
                            }
                        }
                    }
                });
            }
        }
    }
}

/// What the persistence writer saves: every identity's cache as it is now.
#[async_trait]
impl HeldSource for Broker {
    async fn held(&self) -> Held {
        let mut identities = Vec::with_capacity(self.identities.len());
        for identity in &self.identities {
            let tokens = identity
                .tokens
                .entries()
                .await
                .into_iter()
                .map(|(resource, entry, segment)| (resource, entry as Arc<dyn HeldToken>, segment == Segment::Main))
                .collect();
            identities.push(HeldIdentity {
                name: identity.name.clone(),
                client_id: identity.client_id.to_string(),
                credential: identity.credential.kind().as_str().to_owned(),
                tokens,
            });
            if self.persists_users() {
                // Always listed, even empty, so the save drops what this process evicted.
                let tokens = identity
                    .user_tokens
                    .entries()
                    .into_iter()
                    .map(|(key, token)| (Arc::new(key.persisted_name()), token as Arc<dyn HeldToken>, false))
                    .collect();
                identities.push(HeldIdentity {
                    name: identity.name.clone(),
                    client_id: format!("{}{}", identity.client_id, obo::PERSISTED_CLIENT_SUFFIX),
                    credential: identity.credential.kind().as_str().to_owned(),
                    tokens,
                });
            }
        }
        let max_per_client = usize::try_from(self.settings.max_entries).unwrap_or(usize::MAX);
        Held { identities, writer: 0, max_per_client }
    }
}

#[cfg(test)]
mod tests;
