//! Broker behaviour against a scripted credential and a hand-moved clock.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;

use async_trait::async_trait;
use tokio::sync::Notify;

use super::*;
use crate::clock::ManualClock;
use crate::config::CredentialKind;
use crate::secret::Secret;
use crate::token::AccessToken;

const START: u64 = 1_700_000_000;

/// A credential that answers from a script, counts its calls and can be held at a gate.
#[derive(Default)]
struct Scripted {
    calls: AtomicUsize,
    script: Mutex<VecDeque<Result<u64, CredentialError>>>,
    gate: Option<Arc<Notify>>,
    clock: Option<ManualClock>,
    finished: Arc<Notify>,
}

impl Scripted {
    fn lifetimes(clock: &ManualClock, script: Vec<Result<u64, CredentialError>>) -> Self {
        Self { script: Mutex::new(script.into()), clock: Some(clock.clone()), ..Self::default() }
    }
}

#[async_trait]
impl Credential for Arc<Scripted> {
    fn kind(&self) -> CredentialKind {
        CredentialKind::ClientSecret
    }

    async fn get_token(&self, _resource: &str) -> Result<AccessToken, CredentialError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(gate) = &self.gate {
            gate.notified().await;
        }
        let next = self.script.lock().unwrap().pop_front().unwrap_or(Ok(3600));
        let now = self.clock.as_ref().map_or(START, Clock::now);
        let result = next.map(|lifetime| AccessToken {
            token: Secret::new(format!("token-{n}")),
            expires_on: now + lifetime,
            not_before: now,
            ext_expires_on: now + lifetime,
            refresh_on: None,
        });
        self.finished.notify_waiters();
        result
    }
}

fn transient() -> CredentialError {
    CredentialError::Transient { credential: CredentialKind::ClientSecret, reason: "authority down".into() }
}

fn broker(clock: &ManualClock, credential: Arc<Scripted>) -> Arc<Broker> {
    let spec = IdentitySpec {
        name: "app".into(),
        client_id: "Client-A".into(),
        object_id: Some("obj-a".into()),
        resource_id: Some("/subscriptions/s/rg/identity-a".into()),
        is_default: true,
        prefetch: vec![],
        credential: Box::new(credential),
    };
    let settings = CacheSettings {
        max_entries: 100,
        negative_ttl: Duration::from_secs(10),
        policy: Policy { serve_margin_secs: 60, refresh_backoff_secs: 30, refresh_backoff_max_secs: 300 },
        max_background_refreshes: 1,
        new_keys_per_minute: 1000,
        new_keys_burst: 1000,
    };
    Arc::new(Broker::new(vec![spec], settings, Arc::new(clock.clone())))
}

/// [`broker`] with other cache settings and prefetches.
fn broker_with(
    clock: &ManualClock,
    credential: Arc<Scripted>,
    prefetch: &[&str],
    tune: impl FnOnce(&mut CacheSettings),
) -> Arc<Broker> {
    let spec = IdentitySpec {
        name: "app".into(),
        client_id: "Client-A".into(),
        object_id: None,
        resource_id: None,
        is_default: true,
        prefetch: prefetch.iter().map(|p| (*p).to_owned()).collect(),
        credential: Box::new(credential),
    };
    let mut settings = broker(clock, Arc::new(Scripted::default())).settings;
    tune(&mut settings);
    Arc::new(Broker::new(vec![spec], settings, Arc::new(clock.clone())))
}

fn token_text(served: &Served) -> &str {
    served.entry.token.token.expose()
}

#[tokio::test]
async fn resolves_every_selector_case_insensitively_and_refuses_others() {
    let clock = ManualClock::new(START);
    let b = broker(&clock, Arc::new(Scripted::default()));
    assert_eq!(b.resolve(&Selector::Default).unwrap().name, "app");
    assert_eq!(b.resolve(&Selector::ClientId("client-a".into())).unwrap().name, "app");
    assert_eq!(b.resolve(&Selector::ObjectId("OBJ-A".into())).unwrap().name, "app");
    assert_eq!(b.resolve(&Selector::ResourceId("/subscriptions/s/rg/identity-a".into())).unwrap().name, "app");
    let err = b.resolve(&Selector::ClientId("other".into())).unwrap_err();
    assert!(matches!(err, BrokerError::UnknownIdentity(_)));
    assert!(err.to_string().contains("client_id \"other\""), "{err}");
}

#[tokio::test]
async fn a_fresh_hit_makes_no_upstream_call() {
    let clock = ManualClock::new(START);
    let cred = Arc::new(Scripted::lifetimes(&clock, vec![]));
    let b = broker(&clock, cred.clone());
    let id = b.resolve(&Selector::Default).unwrap().clone();
    let first = b.token(&id, "https://vault.azure.net").await.unwrap();
    assert_eq!(first.outcome, CacheOutcome::Miss);
    clock.advance(60);
    let second = b.token(&id, "https://vault.azure.net").await.unwrap();
    assert_eq!(second.outcome, CacheOutcome::Hit);
    assert_eq!(token_text(&second), token_text(&first));
    assert_eq!(cred.calls.load(Ordering::SeqCst), 1);
    // Another resource is another key.
    b.token(&id, "https://storage.azure.com").await.unwrap();
    assert_eq!(cred.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn concurrent_misses_share_one_upstream_call() {
    let clock = ManualClock::new(START);
    let gate = Arc::new(Notify::new());
    let cred = Arc::new(Scripted { gate: Some(gate.clone()), clock: Some(clock.clone()), ..Scripted::default() });
    let b = broker(&clock, cred.clone());
    let id = b.resolve(&Selector::Default).unwrap().clone();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (b, id) = (b.clone(), id.clone());
        tasks.push(tokio::spawn(async move { b.token(&id, "r").await }));
    }
    while cred.calls.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    gate.notify_waiters();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap().unwrap().outcome);
    }
    assert_eq!(cred.calls.load(Ordering::SeqCst), 1);
    assert_eq!(outcomes.iter().filter(|o| **o == CacheOutcome::Miss).count(), 1);
}

#[tokio::test]
async fn errors_reach_every_waiter_and_are_not_cached() {
    let clock = ManualClock::new(START);
    let cred = Arc::new(Scripted::lifetimes(&clock, vec![Err(transient())]));
    let b = broker(&clock, cred.clone());
    let id = b.resolve(&Selector::Default).unwrap().clone();
    let err = b.token(&id, "r").await.unwrap_err();
    assert!(err.to_string().contains("authority down"), "{err}");
    // The next request tries again and succeeds.
    assert_eq!(b.token(&id, "r").await.unwrap().outcome, CacheOutcome::Miss);
    assert_eq!(cred.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn permanent_refusals_are_remembered_briefly() {
    let clock = ManualClock::new(START);
    let refused = CredentialError::Rejected {
        credential: CredentialKind::ClientSecret,
        aadsts: Some(7000215),
        message: "bad secret".into(),
        correlation_id: None,
    };
    let cred = Arc::new(Scripted::lifetimes(&clock, vec![Err(refused)]));
    let b = broker(&clock, cred.clone());
    let id = b.resolve(&Selector::Default).unwrap().clone();
    for _ in 0..5 {
        assert!(b.token(&id, "r").await.unwrap_err().to_string().contains("bad secret"));
    }
    assert_eq!(cred.calls.load(Ordering::SeqCst), 1, "a misconfigured identity must not hammer Entra");
}

#[tokio::test]
async fn a_stale_token_is_served_and_refreshed_once_in_the_background() {
    let clock = ManualClock::new(START);
    let cred = Arc::new(Scripted::lifetimes(&clock, vec![Ok(3600), Ok(3600)]));
    let b = broker(&clock, cred.clone());
    let id = b.resolve(&Selector::Default).unwrap().clone();
    let first = b.token(&id, "r").await.unwrap();
    let refresh_on = first.entry.refresh_on;
    assert!((START + 2940..=START + 3000).contains(&refresh_on), "{refresh_on}");

    clock.advance(refresh_on - START);
    let finished = cred.finished.clone();
    let waiting = finished.notified();
    let stale = b.token(&id, "r").await.unwrap();
    assert_eq!(stale.outcome, CacheOutcome::Stale);
    assert_eq!(token_text(&stale), "token-0", "the old token is served while refreshing");
    // More stale requests do not start more refreshes.
    b.token(&id, "r").await.unwrap();
    waiting.await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let fresh = b.token(&id, "r").await.unwrap();
    assert_eq!(fresh.outcome, CacheOutcome::Hit);
    assert_eq!(token_text(&fresh), "token-1");
    assert_eq!(cred.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_outage_keeps_serving_until_the_margin_then_fails() {
    let clock = ManualClock::new(START);
    let cred =
        Arc::new(Scripted::lifetimes(&clock, vec![Ok(3600), Err(transient()), Err(transient()), Err(transient())]));
    let b = broker(&clock, cred.clone());
    let id = b.resolve(&Selector::Default).unwrap().clone();
    b.token(&id, "r").await.unwrap();

    clock.advance(3000); // past refresh_on
    let finished = cred.finished.clone();
    let waiting = finished.notified();
    assert_eq!(b.token(&id, "r").await.unwrap().outcome, CacheOutcome::Stale);
    waiting.await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    // The refresh failed: within the 30 s backoff no new attempt is made.
    clock.advance(10);
    assert_eq!(token_text(&b.token(&id, "r").await.unwrap()), "token-0");
    assert_eq!(cred.calls.load(Ordering::SeqCst), 2);

    // With less than the margin left, the token is no longer served.
    clock.advance(3600 - 3010 - 59);
    let err = b.token(&id, "r").await.unwrap_err();
    assert!(err.to_string().contains("authority down"), "{err}");
}

#[tokio::test]
async fn an_already_expired_token_is_never_served() {
    let clock = ManualClock::new(START);
    let cred = Arc::new(Scripted::lifetimes(&clock, vec![Ok(0), Ok(3600)]));
    let b = broker(&clock, cred.clone());
    let id = b.resolve(&Selector::Default).unwrap().clone();
    let err = b.token(&id, "r").await.unwrap_err();
    assert!(err.to_string().contains("expired at"), "{err}");
    assert_eq!(b.token(&id, "r").await.unwrap().outcome, CacheOutcome::Miss);
}

#[tokio::test]
async fn refreshes_beyond_the_limit_are_deferred_and_the_stale_token_served() {
    let clock = ManualClock::new(START);
    let gate = Arc::new(Notify::new());
    let cred = Arc::new(Scripted { gate: Some(gate.clone()), clock: Some(clock.clone()), ..Scripted::default() });
    let b = broker(&clock, cred.clone());
    let id = b.resolve(&Selector::Default).unwrap().clone();
    for resource in ["r1", "r2"] {
        gate.notify_one();
        b.token(&id, resource).await.unwrap();
    }
    clock.advance(3000);
    // r1's refresh takes the only slot (max_background_refreshes = 1) and waits at the gate.
    assert_eq!(b.token(&id, "r1").await.unwrap().outcome, CacheOutcome::Stale);
    // r2 is stale too: served as it is, and no second refresh starts.
    let r2 = b.token(&id, "r2").await.unwrap();
    assert_eq!((r2.outcome, token_text(&r2)), (CacheOutcome::Stale, "token-1"));
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(cred.calls.load(Ordering::SeqCst), 3, "one refresh at a time");

    // Once r1's refresh is done, the next stale hit on r2 refreshes it.
    let finished = cred.finished.clone();
    let done = finished.notified();
    gate.notify_one();
    done.await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(b.token(&id, "r1").await.unwrap().outcome, CacheOutcome::Hit);
    let done = finished.notified();
    assert_eq!(b.token(&id, "r2").await.unwrap().outcome, CacheOutcome::Stale);
    gate.notify_one();
    done.await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let fresh = b.token(&id, "r2").await.unwrap();
    assert_eq!((fresh.outcome, token_text(&fresh)), (CacheOutcome::Hit, "token-3"));
    assert_eq!(cred.calls.load(Ordering::SeqCst), 4);
}

fn persisted(client_id: &str, resource: &str, expires_on: u64, value: &str) -> PersistedToken {
    PersistedToken {
        identity: "app".into(),
        client_id: client_id.into(),
        resource: resource.into(),
        credential: "client_secret".into(),
        refresh_on: expires_on - 600,
        token: AccessToken::with_lifetime(Secret::new(value), START - 600, expires_on),
        in_use: false,
        written_by: 0,
    }
}

#[tokio::test]
async fn seeding_serves_persisted_tokens_and_counts_what_it_skips() {
    let clock = ManualClock::new(START);
    let cred = Arc::new(Scripted::default());
    let b = broker(&clock, cred.clone());
    // Runs of one client id alternate with unknown ones, as in a store shared with a process
    // configured differently; the identity must be looked up again after each switch.
    let tokens = vec![
        persisted("client-a", "r1", START + 3600, "persisted-1"),
        persisted("CLIENT-A", "r2", START + 30, "within-the-margin"),
        persisted("gone", "r3", START + 3600, "unknown-1"),
        persisted("gone", "r4", START + 3600, "unknown-2"),
        persisted("Client-A", "r5", START + 3600, "persisted-5"),
        persisted("other", "r6", START + 3600, "unknown-3"),
    ];
    let report = b.seed(tokens).await;
    assert_eq!(report, SeedReport { loaded: 2, expired: 1, unknown_identity: 3, over_limit: 0, users: 0 });
    let id = b.resolve(&Selector::Default).unwrap().clone();
    for (resource, value) in [("r1", "persisted-1"), ("r5", "persisted-5")] {
        let served = b.token(&id, resource).await.unwrap();
        assert_eq!((served.outcome, token_text(&served)), (CacheOutcome::Hit, value));
        assert_eq!(served.entry.origin, Origin::Persisted, "loaded from the persistent cache");
    }
    assert_eq!(cred.calls.load(Ordering::SeqCst), 0, "persisted tokens need no upstream call");
    let fetched = b.token(&id, "r2").await.unwrap();
    assert_eq!(fetched.outcome, CacheOutcome::Miss, "a token within the serving margin is not seeded");
}

/// Prints how long loading a store of 10,000 realistic tokens (1.5 kB each) takes, split into
/// reading and decoding the file and seeding the broker: the part of start-up before readiness.
#[tokio::test]
#[ignore = "a measurement: cargo test --release --lib -- --ignored --nocapture startup_load_time"]
async fn startup_load_time() {
    use crate::store::{Cipher, FileStore, OnUnreadable, Protection, Store};
    let dir = tempfile::tempdir().unwrap();
    let store =
        FileStore::new(&dir.path().join("t.cache"), Protection::Encrypted(Cipher::new(&[3; 32])), String::new());
    let tokens: Vec<_> = (0..10_000)
        .map(|i| {
            let value: String = (0..1500).map(|_| fastrand::alphanumeric()).collect();
            persisted("client-a", &format!("https://r{i}.example"), START + 3000, &value)
        })
        .collect();
    store.save(&crate::store::Held::from_tokens(tokens, 0, usize::MAX), START).unwrap();
    for _ in 0..3 {
        let clock = ManualClock::new(START);
        let mut b = broker(&clock, Arc::new(Scripted::default()));
        let settings = CacheSettings { max_entries: 20_000, ..b.settings };
        let spec = |credential| IdentitySpec {
            name: "app".into(),
            client_id: "Client-A".into(),
            object_id: None,
            resource_id: None,
            is_default: true,
            prefetch: vec![],
            credential,
        };
        b = Arc::new(Broker::new(vec![spec(Box::new(Arc::new(Scripted::default())))], settings, Arc::new(clock)));
        let started = std::time::Instant::now();
        let snapshot = store.load(OnUnreadable::Report).unwrap();
        let loaded = started.elapsed();
        let started = std::time::Instant::now();
        let report = b.seed(snapshot.tokens).await;
        let seeded = started.elapsed();
        assert_eq!(report.loaded, 10_000);
        let started = std::time::Instant::now();
        drop(b);
        println!("10000 tokens: load {loaded:?}, seed {seeded:?}, drop {:?}", started.elapsed());
    }
}

/// The end-to-end case of a flood: a token the application used three times, then 5,000 new
/// resources asked for once each. moka alone evicted the token (its frequency sketch starts
/// counting at half capacity, so the early uses were forgotten); the probation segment keeps
/// the flood out of the tokens in use.
#[tokio::test]
async fn a_flood_of_one_off_resources_does_not_evict_a_token_in_use() {
    let clock = ManualClock::new(START);
    let cred = Arc::new(Scripted::lifetimes(&clock, vec![]));
    let b = broker_with(&clock, cred.clone(), &[], |s| {
        s.max_entries = 100;
        s.new_keys_burst = 10_000;
    });
    let id = b.resolve(&Selector::Default).unwrap().clone();
    let app = b.token(&id, "https://vault.azure.net").await.unwrap();
    for _ in 0..2 {
        b.token(&id, "https://vault.azure.net").await.unwrap();
    }
    for i in 0..5000 {
        b.token(&id, &format!("https://flood-{i}.example")).await.unwrap();
    }
    let calls = cred.calls.load(Ordering::SeqCst);
    let again = b.token(&id, "https://vault.azure.net").await.unwrap();
    assert_eq!((again.outcome, token_text(&again)), (CacheOutcome::Hit, token_text(&app)));
    assert_eq!(cred.calls.load(Ordering::SeqCst), calls, "no upstream call for the token in use");
    let held = b.held().await;
    assert!(held.identities[0].tokens.len() <= 100, "still bounded: {}", held.identities[0].tokens.len());
}

#[tokio::test]
async fn a_resource_asked_for_again_moves_from_probation_into_a_free_slot_only() {
    let clock = ManualClock::new(START);
    let cred = Arc::new(Scripted::lifetimes(&clock, vec![]));
    // 20 entries: 18 in use, 2 on probation.
    let b = broker_with(&clock, cred.clone(), &[], |s| s.max_entries = 20);
    let id = b.resolve(&Selector::Default).unwrap().clone();
    for i in 0..18 {
        b.token(&id, &format!("filler-{i:02}")).await.unwrap();
    }
    let in_use = async |name: &str| {
        let held = b.held().await;
        held.identities[0].tokens.iter().find(|(r, ..)| r.as_str() == name).map(|t| t.2)
    };
    assert_eq!(b.token(&id, "second-use").await.unwrap().outcome, CacheOutcome::Miss);
    assert_eq!(b.token(&id, "second-use").await.unwrap().outcome, CacheOutcome::Hit, "served from probation");
    assert_eq!(in_use("second-use").await, Some(false), "no free slot: it stays on probation");
    assert_eq!(in_use("filler-00").await, Some(true), "a token in use is never displaced");

    id.tokens.invalidate("filler-00", Segment::Main).await;
    assert_eq!(in_use("filler-00").await, None, "a slot is free");
    assert_eq!(b.token(&id, "second-use").await.unwrap().outcome, CacheOutcome::Hit);
    assert_eq!(in_use("second-use").await, Some(true), "asked for again: into the free slot");
    for i in 0..50 {
        b.token(&id, &format!("flood-{i}")).await.unwrap();
    }
    assert_eq!(b.token(&id, "second-use").await.unwrap().outcome, CacheOutcome::Hit, "the flood passed it by");
    let held = b.held().await;
    assert_eq!(held.identities[0].tokens.len(), 20);
    let in_main = held.identities[0].tokens.iter().filter(|t| t.2).count();
    assert_eq!(in_main, 18);
}

#[tokio::test(start_paused = true)]
async fn new_resources_beyond_the_rate_are_refused_and_held_ones_still_served() {
    let clock = ManualClock::new(START);
    let cred = Arc::new(Scripted::lifetimes(&clock, vec![]));
    let b = broker_with(&clock, cred.clone(), &["prefetched"], |s| {
        s.new_keys_per_minute = 6;
        s.new_keys_burst = 2;
    });
    let id = b.resolve(&Selector::Default).unwrap().clone();
    b.token(&id, "held").await.unwrap();
    b.token(&id, "second").await.unwrap();
    let refused = b.token(&id, "third").await.unwrap_err();
    let BrokerError::NewKeysLimited { retry_after_secs, per_minute, burst, .. } = &refused else {
        panic!("{refused:?}")
    };
    assert_eq!((*retry_after_secs, *per_minute, *burst), (10, 6, 2), "one new key every 10 s");
    assert!(refused.to_string().contains("cache.new_keys_per_minute"), "{refused}");
    assert_eq!(cred.calls.load(Ordering::SeqCst), 2, "a refused key makes no upstream call");

    assert_eq!(b.token(&id, "held").await.unwrap().outcome, CacheOutcome::Hit, "held tokens are served");
    assert_eq!(b.token(&id, "prefetched").await.unwrap().outcome, CacheOutcome::Miss, "prefetches are exempt");

    tokio::time::advance(Duration::from_secs(9)).await;
    assert!(matches!(b.token(&id, "third").await, Err(BrokerError::NewKeysLimited { .. })));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(b.token(&id, "third").await.unwrap().outcome, CacheOutcome::Miss, "a permit after 10 s");
    assert!(matches!(b.token(&id, "fourth").await, Err(BrokerError::NewKeysLimited { .. })));
}

#[tokio::test]
async fn refetching_a_held_token_that_became_unservable_needs_no_permit() {
    let clock = ManualClock::new(START);
    let cred = Arc::new(Scripted::lifetimes(&clock, vec![]));
    let b = broker_with(&clock, cred.clone(), &[], |s| s.new_keys_burst = 1);
    let id = b.resolve(&Selector::Default).unwrap().clone();
    b.token(&id, "r").await.unwrap();
    // Inside the serving margin by the broker's clock, still held by moka's.
    clock.advance(3600 - 59);
    let again = b.token(&id, "r").await.unwrap();
    assert_eq!(again.outcome, CacheOutcome::Miss, "fetched anew, though the only permit is spent");
    assert!(matches!(b.token(&id, "new").await, Err(BrokerError::NewKeysLimited { .. })));
}

#[tokio::test]
async fn callers_waiting_for_one_new_resource_share_one_permit() {
    let clock = ManualClock::new(START);
    let gate = Arc::new(Notify::new());
    let cred = Arc::new(Scripted { gate: Some(gate.clone()), clock: Some(clock.clone()), ..Scripted::default() });
    let b = broker_with(&clock, cred.clone(), &[], |s| s.new_keys_burst = 1);
    let id = b.resolve(&Selector::Default).unwrap().clone();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (b, id) = (b.clone(), id.clone());
        tasks.push(tokio::spawn(async move { b.token(&id, "r").await }));
    }
    while cred.calls.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    gate.notify_waiters();
    for t in tasks {
        t.await.unwrap().expect("every waiter gets the one token");
    }
}

#[tokio::test]
async fn seeding_keeps_at_most_max_entries_tokens_in_use_first_then_the_freshest() {
    let clock = ManualClock::new(START);
    let cred = Arc::new(Scripted::default());
    let b = broker_with(&clock, cred.clone(), &[], |s| s.max_entries = 10);
    let mut tokens: Vec<PersistedToken> =
        (0..30).map(|i| persisted("client-a", &format!("r{i:02}"), START + 3600 + i, &format!("v{i}"))).collect();
    tokens[0].in_use = true;
    let report = b.seed(tokens).await;
    assert_eq!(report, SeedReport { loaded: 10, expired: 0, unknown_identity: 0, over_limit: 20, users: 0 });
    let held = b.held().await;
    let mut kept: Vec<(String, bool)> =
        held.identities[0].tokens.iter().map(|(r, _, in_use)| (r.to_string(), *in_use)).collect();
    kept.sort();
    let expected: Vec<(String, bool)> =
        std::iter::once(("r00".to_owned(), true)).chain((21..30).map(|i| (format!("r{i}"), i != 21))).collect();
    assert_eq!(kept, expected, "r00 was in use; then the 9 latest expiries, the oldest of them on probation");
    let id = b.resolve(&Selector::Default).unwrap().clone();
    assert_eq!(b.token(&id, "r00").await.unwrap().outcome, CacheOutcome::Hit);
    assert_eq!(cred.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_writer_is_told_after_a_fetch_and_a_refresh_and_reads_the_cache() {
    use crate::store::{OnUnreadable, SaveReport, Snapshot, Store, StoreError};

    /// Keeps the resources of the last save.
    #[derive(Default)]
    struct Last(Mutex<Vec<String>>, Notify);
    impl Store for Last {
        fn describe(&self) -> String {
            "test".into()
        }
        fn load(&self, _: OnUnreadable) -> Result<Snapshot, StoreError> {
            Ok(Snapshot::default())
        }
        fn load_bounded(&self, _: usize, _: u64) -> Result<Snapshot, StoreError> {
            Ok(Snapshot::default())
        }
        fn save(&self, held: &Held, _: u64) -> Result<SaveReport, StoreError> {
            let mut resources: Vec<String> =
                held.identities.iter().flat_map(|i| i.tokens.iter().map(|(r, ..)| r.to_string())).collect();
            resources.sort();
            *self.0.lock().unwrap() = resources;
            self.1.notify_one();
            Ok(SaveReport::default())
        }
        fn clear(&self, _: Option<&str>) -> Result<usize, StoreError> {
            Ok(0)
        }
        fn save_account(&self, _: crate::store::PersistedAccount) -> Result<(), StoreError> {
            Ok(())
        }
    }

    let clock = ManualClock::new(START);
    let cred = Arc::new(Scripted::lifetimes(&clock, vec![]));
    let b = broker(&clock, cred.clone());
    let store = Arc::new(Last::default());
    b.persist_to(store.clone(), false);
    let id = b.resolve(&Selector::Default).unwrap().clone();
    b.token(&id, "r1").await.unwrap();
    b.token(&id, "r2").await.unwrap();
    b.writer().unwrap().flush().await;
    assert_eq!(*store.0.lock().unwrap(), ["r1", "r2"]);
    b.token(&id, "r1").await.unwrap();
    b.writer().unwrap().flush().await;
    assert_eq!(*store.0.lock().unwrap(), ["r1", "r2"], "a hit changes nothing");
}

/// The server answers callers from this classification alone, so each credential error must
/// land in the class whose HTTP answer fits it, and the text must stay the credential's own.
#[test]
fn upstream_errors_are_classified_from_the_credential_error() {
    let rejected = CredentialError::Rejected {
        credential: CredentialKind::ClientSecret,
        aadsts: Some(7000215),
        message: "AADSTS7000215: bad secret".into(),
        correlation_id: Some("c0rr".into()),
    };
    let error = BrokerError::upstream("app".into(), &rejected);
    assert_eq!(error.to_string(), "identity \"app\": client_secret: AADSTS7000215: bad secret");
    let BrokerError::Upstream { kind, .. } = error else { panic!("{error:?}") };
    assert_eq!(kind, UpstreamKind::Permanent { aadsts: Some(7000215), correlation_id: Some("c0rr".into()) });

    let throttled =
        CredentialError::Throttled { credential: CredentialKind::AzureCli, retry_after: Duration::from_secs(120) };
    assert_eq!(UpstreamKind::of(&throttled), UpstreamKind::Throttled { retry_after: Duration::from_secs(120) });
    let transient = CredentialError::Transient { credential: CredentialKind::AzureCli, reason: "refused".into() };
    assert_eq!(UpstreamKind::of(&transient), UpstreamKind::Transient);
    let unavailable = CredentialError::Unavailable { credential: CredentialKind::AzureCli, reason: "no file".into() };
    assert_eq!(UpstreamKind::of(&unavailable), UpstreamKind::Transient);
}
