//! The cache seen from outside: hits, single flight, refresh ahead, outages, readiness.

use std::time::Duration;

use crate::support::{FakeEntra, TestConfig, TestRelay, VAULT, eventually, json};

#[tokio::test(flavor = "multi_thread")]
async fn a_cache_hit_makes_no_upstream_call() {
    let entra = FakeEntra::start().await;
    let relay = TestRelay::serve(&TestConfig::client_secret(&entra), &[]).await;
    let first = json(relay.imds(VAULT).await).await;
    for _ in 0..20 {
        let again = json(relay.imds(VAULT).await).await;
        assert_eq!(again["access_token"], first["access_token"]);
    }
    let via_app_service = json(relay.app_service("resource=https://vault.azure.net").await).await;
    assert_eq!(via_app_service["access_token"], first["access_token"]);
    assert_eq!(entra.requests(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_concurrent_requests_make_one_upstream_call() {
    let entra = FakeEntra::start().await;
    // A slow authority keeps the first fetch in flight while the others arrive.
    entra.set_delay(Duration::from_millis(500));
    // The access log (not on by default) names each request's cache outcome.
    let toml = TestConfig::client_secret(&entra).set("log.requests", "all");
    let relay = std::sync::Arc::new(TestRelay::serve(&toml, &[]).await);
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let relay = relay.clone();
        tasks.push(tokio::spawn(async move {
            json(relay.imds("api-version=2018-02-01&resource=https://new.example").await).await
        }));
    }
    let mut tokens = std::collections::HashSet::new();
    for task in tasks {
        let body = task.await.unwrap();
        tokens.insert(body["access_token"].as_str().unwrap().to_owned());
    }
    assert_eq!(tokens.len(), 1, "every caller got the same token");
    assert_eq!(entra.requests(), 1);
    let logs = relay.logs();
    assert!(logs.contains("cache=\"coalesced\""), "waiters are logged as coalesced:\n{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_past_refresh_on_is_served_and_refreshed_in_the_background() {
    let entra = FakeEntra::start().await;
    // refresh_in = 0: every token is due for refresh as soon as it is cached.
    entra.set_refresh_in(Some(0));
    let relay = TestRelay::serve(&TestConfig::client_secret(&entra), &[]).await;
    let first = json(relay.imds(VAULT).await).await;
    assert_eq!(first["access_token"], "fake-token-1-for-https://vault.azure.net");

    // Make the refresh slow so the stale answer cannot be the refreshed token.
    entra.set_delay(Duration::from_millis(300));
    let stale = json(relay.imds(VAULT).await).await;
    assert_eq!(stale["access_token"], first["access_token"], "served at once from the cache");

    entra.wait_for_issued(2).await;
    entra.set_refresh_in(None);
    eventually("the refreshed token is served", async || {
        json(relay.imds(VAULT).await).await["access_token"] == "fake-token-2-for-https://vault.azure.net"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn during_an_outage_valid_tokens_are_served_and_expired_ones_fail_with_503() {
    let entra = FakeEntra::start().await;
    let relay = TestRelay::serve(&TestConfig::client_secret(&entra), &[]).await;
    let valid = json(relay.imds(VAULT).await).await;
    // A token with less than the serving margin (60 s) left is as good as expired.
    entra.set_lifetime(30);
    let short = relay.imds("api-version=2018-02-01&resource=https://short.example").await;
    assert_eq!(short.status(), 200, "a fresh token is handed out once, however short");

    entra.set_down(true);
    let before = entra.requests();
    let during = json(relay.imds(VAULT).await).await;
    assert_eq!(during["access_token"], valid["access_token"]);
    assert_eq!(entra.requests(), before, "a valid cached token needs no upstream call");

    let expired = relay.imds("api-version=2018-02-01&resource=https://short.example").await;
    assert_eq!(expired.status(), 503);
    let retry_after: u64 = expired.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=5).contains(&retry_after));
    let body = json(expired).await;
    assert_eq!(body["error"], "temporarily_unavailable");
    assert_eq!(entra.requests(), before + 3, "one attempt and two retries");

    entra.set_down(false);
    let recovered = relay.imds("api-version=2018-02-01&resource=https://short.example").await;
    assert_eq!(recovered.status(), 200, "errors are not cached");
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_waits_for_prefetch_and_then_stays_ready() {
    let entra = FakeEntra::start().await;
    entra.set_down(true);
    let toml = TestConfig::client_secret(&entra).set("identities.0.prefetch", vec!["https://vault.azure.net"]);
    let relay = TestRelay::serve(&toml, &[]).await;
    assert_eq!(relay.get("/healthz", &[]).await.status(), 200);
    let waiting = relay.get("/readyz", &[]).await;
    assert_eq!(waiting.status(), 503);
    assert_eq!(json(waiting).await["pending_prefetches"], 1);

    entra.set_down(false);
    eventually("readiness after the prefetch lands", async || relay.get("/readyz", &[]).await.status() == 200).await;
    let issued = entra.issued();
    assert_eq!(relay.imds(VAULT).await.status(), 200);
    assert_eq!(entra.issued(), issued, "the prefetched token is a cache hit");

    entra.set_down(true);
    assert_eq!(relay.get("/readyz", &[]).await.status(), 200, "an outage after start does not pull the pod");
}
