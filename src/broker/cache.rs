//! An identity's token cache, a cached token and the state of its background refresh.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;
use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;

use crate::clock::Clock;
use crate::config::CredentialKind;
use crate::token::AccessToken;
use zeroize::Zeroize;

/// Where a cached token came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Fetched by this process through a credential of this kind.
    Fetched(CredentialKind),
    /// Loaded from the persistent cache.
    Persisted,
    /// Taken from the fleet's shared cache.
    Shared,
}

/// A token in the cache, with the moment the broker plans to replace it.
pub struct CachedToken {
    /// The token as the upstream issued it.
    pub token: AccessToken,
    /// From this epoch second on, serving triggers a background refresh.
    pub refresh_on: u64,
    /// Where it came from.
    pub origin: Origin,
    /// The token's fingerprint for log lines, computed once rather than hashed per request.
    pub fingerprint: Box<str>,
    /// The server's rendering of the response members that never change for this token
    /// (`server::wire::TokenBody`; the token itself only if it needed escaping), made
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
            .field("origin", &self.origin)
            .field("fingerprint", &self.fingerprint)
            .field("refreshing", &self.refreshing)
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

/// The rendering may hold the token itself (when it needed escaping): zeroed with the entry.
/// The token is a `Secret`, which zeroes itself.
impl Drop for CachedToken {
    fn drop(&mut self) {
        if let Some(rendered) = self.rendered.get_mut() {
            rendered.zeroize();
        }
    }
}

impl CachedToken {
    /// Wraps a freshly fetched token.
    pub fn new(token: AccessToken, refresh_on: u64, origin: Origin) -> Self {
        Self {
            fingerprint: token.token.fingerprint().into_boxed_str(),
            token,
            refresh_on,
            origin,
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

    /// Gives up a claim without trying and without counting a failure, and allows the next
    /// claim only from `until` on (another replica is refreshing this key).
    pub fn postpone_refresh(&self, until: u64) {
        self.next_attempt.store(until, Ordering::Release);
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

/// The persistence writer reads cached tokens where they lie.
impl crate::store::HeldToken for CachedToken {
    fn access_token(&self) -> &AccessToken {
        &self.token
    }
    fn refresh_on(&self) -> u64 {
        self.refresh_on
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

/// Which part of an identity's cache holds a token ([`TokenCache`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    /// Tokens in use: asked for twice, prefetched, persisted by an earlier run, or cached
    /// while there was room.
    Main,
    /// Tokens asked for once while the main segment was full.
    Probation,
}

/// Why an entry left the cache, for `tokenrelay_cache_evictions_total`; `None` for removals
/// that are not evictions (a promotion, a replacement, an unservable token dropped on use).
pub fn eviction_reason(cause: RemovalCause) -> Option<&'static str> {
    match cause {
        RemovalCause::Size => Some("size"),
        RemovalCause::Expired => Some("expired"),
        RemovalCause::Explicit | RemovalCause::Replaced => None,
    }
}

/// The map of tokens in use. Hashed with foldhash rather than SipHash, which costs a cache
/// hit about as much as the rest of the lookup. foldhash claims no resistance to a caller who
/// chooses keys to collide, and callers do choose resources (any spelling the upstream
/// accepts, any string under `--dev`). What bounds the harm: a key enters only with a token
/// the upstream issued, at most `cache.new_keys_per_minute` new ones a minute; the map holds at
/// most the main segment (nine tenths of `cache.max_entries` per identity); and the seed, which
/// differs per map and process, is needed to compute collisions. The worst case is a hit
/// comparing its key with every key of the main segment: slower, never wrong.
type InUse = HashMap<String, Arc<CachedToken>, foldhash::fast::RandomState>;

/// One identity's tokens, in two segments that together hold at most `max_entries`.
///
/// moka's default TinyLFU admission does not protect a token in use from a flood of one-off
/// keys: its frequency sketch starts counting only once the cache is half full, so the uses
/// of a token cached early are forgotten, and the least recently used entry (that token,
/// once the flood has passed it) loses to a candidate seen once or twice. 5,000 distinct
/// resources evicted a token used three times.
///
/// So the main segment never makes room: a token enters it only into a free slot (a slot is
/// reserved before the insert, see `main_len`), and leaves it only by expiring (a token in
/// use is refreshed before that) or being replaced. A new key goes into the main segment
/// while it has room, and otherwise into a small probation segment (a tenth of
/// `max_entries`, least recently used out first), from which it moves to the main segment
/// when it is asked for again and a slot is free. A flood of new keys therefore churns only
/// the probation segment, never a token in use; and the tokens a restart loads into the main
/// segment all stay servable through an outage.
///
/// Hits on the main segment are served from `in_use`, a plain map beside moka, without moka's
/// per-read bookkeeping (the hash and epoch of its concurrent table, a clock read for expiry,
/// a read record queued for its policy, and now and then a housekeeping pass on the caller's
/// thread): that bookkeeping serves a size policy the main segment never applies, since it
/// never evicts by size. moka stays the store: every write to the main segment goes through
/// this type, which mirrors it into `in_use`, and moka's eviction listener removes what moka
/// expires. Invariant: a token in `in_use` is the one moka's main segment holds for its key,
/// or one that two writers replaced at once (each a fresh token for the key, and the next
/// refresh replaces both); the broker checks that a token is servable whichever it gets.
pub struct TokenCache {
    main: Cache<String, Arc<CachedToken>>,
    /// The main segment's tokens, for hits (see above).
    in_use: Arc<RwLock<InUse>>,
    probation: Cache<String, Arc<CachedToken>>,
    /// Slots of `main` taken. Incremented before every insert into `main` and decremented
    /// for every removal moka reports (replacements included), so it is never below the
    /// number of entries: a new key that reserves a slot never makes moka evict one.
    main_len: Arc<AtomicU64>,
    main_capacity: u64,
    /// What `ExpireWhenUnservable` measures against, for tokens about to be mirrored.
    clock: Arc<dyn Clock>,
    margin_secs: u64,
}

impl TokenCache {
    /// An empty cache of at most `max_entries` tokens (`max_entries` ≥ 1); `on_eviction`
    /// hears each eviction's reason.
    pub fn new(
        max_entries: u64,
        margin_secs: u64,
        clock: &Arc<dyn Clock>,
        on_eviction: Arc<dyn Fn(&'static str) + Send + Sync>,
    ) -> Self {
        let (main_capacity, probation_capacity) = Self::capacities(max_entries);
        let main_len = Arc::new(AtomicU64::new(0));
        let in_use: Arc<RwLock<InUse>> = Arc::default();
        let expiry = || ExpireWhenUnservable { margin_secs, clock: Arc::clone(clock) };
        let listener = {
            let main_len = Arc::clone(&main_len);
            let in_use = Arc::clone(&in_use);
            let on_eviction = Arc::clone(&on_eviction);
            move |resource: Arc<String>, gone: Arc<CachedToken>, cause: RemovalCause| {
                let _ = main_len.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
                // Only this token: a replacement may already be mirrored under the key.
                let mut in_use = in_use.write().expect("never poisoned");
                if in_use.get(resource.as_str()).is_some_and(|held| Arc::ptr_eq(held, &gone)) {
                    in_use.remove(resource.as_str());
                }
                drop(in_use);
                if let Some(reason) = eviction_reason(cause) {
                    on_eviction(reason);
                }
            }
        };
        // LRU rather than TinyLFU: the main segment is never full when a token enters it, so
        // a policy only matters for probation, where admission by a frequency sketch would
        // make keeping the newest one-off key depend on hash collisions.
        let main = Cache::builder()
            .max_capacity(main_capacity)
            .eviction_policy(EvictionPolicy::lru())
            .expire_after(expiry())
            .eviction_listener(listener)
            .build();
        let probation = Cache::builder()
            .max_capacity(probation_capacity)
            .eviction_policy(EvictionPolicy::lru())
            .expire_after(expiry())
            .eviction_listener(move |_, _, cause| {
                if let Some(reason) = eviction_reason(cause) {
                    on_eviction(reason);
                }
            })
            .build();
        Self { main, in_use, probation, main_len, main_capacity, clock: Arc::clone(clock), margin_secs }
    }

    /// `(main, probation)` for `max_entries`: a tenth on probation, at least one once there
    /// are two entries; with one entry, none (a key that finds the main segment full is
    /// served but not kept).
    pub fn capacities(max_entries: u64) -> (u64, u64) {
        let probation = if max_entries >= 2 { (max_entries / 10).max(1) } else { 0 };
        (max_entries - probation, probation)
    }

    /// The main segment's token for `resource`, servable or not, without waiting or touching
    /// moka: the cache-hit path.
    pub fn get_in_use(&self, resource: &str) -> Option<Arc<CachedToken>> {
        self.in_use.read().expect("never poisoned").get(resource).cloned()
    }

    /// The token held for `resource` and where, servable or not.
    pub async fn get(&self, resource: &str) -> Option<(Arc<CachedToken>, Segment)> {
        if let Some(entry) = self.get_in_use(resource) {
            return Some((entry, Segment::Main));
        }
        if let Some(entry) = self.main.get(resource).await {
            return Some((entry, Segment::Main));
        }
        self.probation.get(resource).await.map(|entry| (entry, Segment::Probation))
    }

    /// Puts `entry` into the main segment (a slot must be reserved) and its mirror.
    ///
    /// Mirrored only once moka holds it: a caller dropped while moka's insert waits (a request
    /// cancelled by its client) leaves no token in `in_use` that moka does not hold. Between the
    /// two, hits ask moka, which has the token (moka's listener has already removed the token
    /// this one replaces).
    async fn insert_main(&self, resource: String, entry: Arc<CachedToken>) {
        let key = resource.clone();
        self.main.insert(resource, Arc::clone(&entry)).await;
        self.mirror(key, entry);
    }

    /// Records in `in_use` a token the main segment holds for `resource`.
    fn mirror(&self, resource: String, entry: Arc<CachedToken>) {
        self.in_use.write().expect("never poisoned").insert(resource, entry);
    }

    /// Moves a token from probation to the main segment, if a slot is free: it has been
    /// asked for again. True when it moved.
    pub async fn promote(&self, resource: &str, entry: Arc<CachedToken>) -> bool {
        if !self.reserve_main_slot() {
            return false;
        }
        self.insert_main(resource.to_owned(), entry).await;
        self.probation.invalidate(resource).await;
        true
    }

    /// Drops the token of `resource` from `segment`.
    pub async fn invalidate(&self, resource: &str, segment: Segment) {
        match segment {
            Segment::Main => {
                self.in_use.write().expect("never poisoned").remove(resource);
                self.main.invalidate(resource).await;
            }
            Segment::Probation => self.probation.invalidate(resource).await,
        }
    }

    /// Whether a token for `resource` is held (and not expired).
    pub fn contains(&self, resource: &str) -> bool {
        self.main.contains_key(resource) || self.probation.contains_key(resource)
    }

    /// The token for a key not held servable, fetched once however many callers wait for it
    /// (true with it when this call ran `fetch`). It goes into the main segment when
    /// `was_main` (it replaces an unservable token just dropped from there, so the segment
    /// does not grow) or a slot is free, else into probation. Two callers that see a slot free
    /// up between them may each fetch once.
    pub async fn fetch_once<E: Send + Sync + 'static>(
        &self,
        resource: &str,
        was_main: bool,
        fetch: impl Future<Output = Result<Arc<CachedToken>, E>>,
    ) -> Result<(Arc<CachedToken>, bool), Arc<E>> {
        let to_main = if was_main {
            self.main_len.fetch_add(1, Ordering::AcqRel);
            true
        } else {
            self.reserve_main_slot()
        };
        let cache = if to_main { &self.main } else { &self.probation };
        let fetched_here = AtomicBool::new(false);
        let result = cache
            .try_get_with(resource.to_owned(), async {
                fetched_here.store(true, Ordering::Relaxed);
                fetch.await
            })
            .await;
        let inserted_here = fetched_here.load(Ordering::Relaxed) && result.is_ok();
        // Mirrored by the caller that inserted it, unless the key has been written since (a
        // replacement is newer) or moka already considers it unservable (it may have expired
        // it, and its listener would then have nothing to remove).
        if to_main
            && inserted_here
            && let Ok(entry) = &result
            && entry.token.expires_on > self.clock.now().saturating_add(self.margin_secs)
        {
            self.in_use
                .write()
                .expect("never poisoned")
                .entry(resource.to_owned())
                .or_insert_with(|| Arc::clone(entry));
        }
        if to_main && !inserted_here {
            // The slot was for an insert that another caller made, or that failed.
            self.main_len.fetch_sub(1, Ordering::AcqRel);
        }
        result.map(|entry| (entry, inserted_here))
    }

    /// Puts a refreshed token where its key is: the main segment if it is there, else
    /// probation (a key evicted while its refresh ran is not put back among the tokens in use).
    pub async fn replace(&self, resource: String, fresh: Arc<CachedToken>) {
        // A token in use may have passed moka's expiry while its refresh ran (moka then no
        // longer reports it, though it holds it until its listener runs): its replacement
        // belongs in the main segment too.
        let in_use = self.in_use.read().expect("never poisoned").contains_key(&resource);
        if in_use || self.main.contains_key(&resource) {
            self.main_len.fetch_add(1, Ordering::AcqRel);
            self.insert_main(resource, fresh).await;
        } else {
            self.probation.insert(resource, fresh).await;
        }
    }

    /// Puts a persisted token into the main segment while it has room, else on probation
    /// (before serving starts). Returns where it went.
    pub async fn seed(&self, resource: String, entry: Arc<CachedToken>) -> Segment {
        if self.reserve_main_slot() {
            self.insert_main(resource, entry).await;
            Segment::Main
        } else {
            self.probation.insert(resource, entry).await;
            Segment::Probation
        }
    }

    /// Every token held, once per key, after moka has applied its pending evictions (so
    /// never more than `max_entries`).
    pub async fn entries(&self) -> Vec<(Arc<String>, Arc<CachedToken>, Segment)> {
        self.main.run_pending_tasks().await;
        self.probation.run_pending_tasks().await;
        let mut entries: Vec<_> = self.main.iter().map(|(resource, entry)| (resource, entry, Segment::Main)).collect();
        // A key is in both only between a promotion's insert and its invalidation.
        let in_main: std::collections::HashSet<Arc<String>> = entries.iter().map(|(r, ..)| Arc::clone(r)).collect();
        entries.extend(
            self.probation
                .iter()
                .filter(|(resource, _)| !in_main.contains(resource))
                .map(|(resource, entry)| (resource, entry, Segment::Probation)),
        );
        entries
    }

    /// Claims a slot in the main segment if one is free.
    fn reserve_main_slot(&self) -> bool {
        let capacity = self.main_capacity;
        self.main_len.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < capacity).then_some(n + 1)).is_ok()
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
        CachedToken::new(token, 4000, Origin::Fetched(CredentialKind::Dev))
    }

    #[test]
    fn debug_output_never_shows_the_token_or_its_rendering() {
        let e = entry();
        let _ = e.rendered.set(b"{\"access_token\":\"t0k3n-in-clear\"".to_vec().into_boxed_slice());
        let shown = format!("{e:?}");
        assert!(!shown.contains("t0k3n"), "{shown}");
        assert!(!shown.contains("116, 48"), "the rendering's bytes leaked: {shown}");
    }

    #[tokio::test]
    async fn hits_see_every_write_to_the_main_segment_and_nothing_else() {
        let clock: Arc<dyn Clock> = Arc::new(crate::clock::ManualClock::new(1000));
        let cache = TokenCache::new(20, 300, &clock, Arc::new(|_| {}));
        let seeded = Arc::new(entry());
        assert_eq!(cache.seed("seeded".into(), Arc::clone(&seeded)).await, Segment::Main);
        assert!(Arc::ptr_eq(&cache.get_in_use("seeded").unwrap(), &seeded));

        let fresh = Arc::new(entry());
        cache.replace("seeded".into(), Arc::clone(&fresh)).await;
        // moka reports the replaced token to its listener, which must leave the new one.
        cache.main.run_pending_tasks().await;
        assert!(Arc::ptr_eq(&cache.get_in_use("seeded").unwrap(), &fresh));

        let fetched = Arc::new(entry());
        let (got, _) = cache.fetch_once("fetched", false, async { Ok::<_, ()>(Arc::clone(&fetched)) }).await.unwrap();
        assert!(Arc::ptr_eq(&got, &fetched));
        assert!(Arc::ptr_eq(&cache.get_in_use("fetched").unwrap(), &fetched), "a free slot: the main segment");

        cache.invalidate("seeded", Segment::Main).await;
        assert!(cache.get_in_use("seeded").is_none());
        assert!(cache.get("seeded").await.is_none());

        // A probation token is not in use until it is promoted.
        let full = TokenCache::new(2, 300, &clock, Arc::new(|_| {}));
        let _ = full.fetch_once("first", false, async { Ok::<_, ()>(Arc::new(entry())) }).await.unwrap();
        let trial = Arc::new(entry());
        let _ = full.fetch_once("trial", false, async { Ok::<_, ()>(Arc::clone(&trial)) }).await.unwrap();
        assert!(full.get_in_use("trial").is_none());
        assert_eq!(full.get("trial").await.map(|(_, segment)| segment), Some(Segment::Probation));
        full.invalidate("first", Segment::Main).await;
        full.main.run_pending_tasks().await;
        assert!(full.promote("trial", Arc::clone(&trial)).await);
        assert!(Arc::ptr_eq(&full.get_in_use("trial").unwrap(), &trial));
    }

    #[test]
    fn a_postponed_refresh_waits_without_counting_a_failure() {
        let e = entry();
        assert!(e.try_begin_refresh(4000));
        e.postpone_refresh(4002);
        assert!(!e.try_begin_refresh(4001), "another replica is refreshing: not before 4002");
        assert!(e.try_begin_refresh(4002));
        assert_eq!(e.refresh_failed(4002, |f| 30 * u64::from(f)), 1, "the postponement was no failure");
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
