//! One caller flooding the relay: with new resources (rate-limited per identity; the tokens in
//! use stay cached), through the persistent cache (the file holds what memory holds, and a
//! restart during an outage serves all of it), with query parameters, and with AADSTS codes
//! (metric labels stay bounded).

use std::collections::BTreeSet;

use tokenrelay::secret::Secret;
use tokenrelay::store::{Cipher, PersistedToken, Protection, Snapshot, format};
use tokenrelay::token::AccessToken;

use crate::support::{
    CacheDir, FakeEntra, HEADER_SECRET, Scripted, TestConfig, TestRelay, VAULT, command, eventually, fake_entra, json,
    sample, unix_now,
};

/// The resources the relay holds, from the per-token gauge.
async fn cached_resources(relay: &TestRelay) -> BTreeSet<String> {
    relay
        .metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("tokenrelay_token_expires_in_seconds{"))
        .filter_map(|l| l.split("resource=\"").nth(1)?.split('"').next().map(str::to_owned))
        .collect()
}

/// The resources `tokenrelay cache list` shows.
async fn listed_resources(config: &std::path::Path) -> BTreeSet<String> {
    let output = command().args(["cache", "list", "--config", config.to_str().unwrap()]).output().await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("IDENTITY"))
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_new_resources_is_refused_with_429_and_the_token_in_use_stays_a_hit() {
    let entra = FakeEntra::start().await;
    // 20 tokens (18 in use, 2 on probation); 40 new resources at once, then one a minute.
    let toml = TestConfig::client_secret(&entra)
        .set("cache.max_entries", 20)
        .set("cache.new_keys_per_minute", 1)
        .set("cache.new_keys_burst", 40);
    let relay = TestRelay::serve(&toml, &[]).await;
    let app = json(relay.imds(VAULT).await).await["access_token"].clone();
    for _ in 0..2 {
        assert_eq!(json(relay.imds(VAULT).await).await["access_token"], app);
    }

    let mut refused = 0;
    for i in 0..100 {
        let resource = format!("resource=https://flood-{i}.example");
        let response = if i % 2 == 0 {
            relay.imds(&format!("api-version=2018-02-01&{resource}")).await
        } else {
            relay.app_service(&format!("api-version=2019-08-01&{resource}")).await
        };
        if response.status() == 429 {
            refused += 1;
            let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=5).contains(&retry_after), "{retry_after}");
            let body = json(response).await;
            assert_eq!(body["error"], "throttled", "{body}");
            assert!(body["error_description"].as_str().unwrap().contains("cache.new_keys_per_minute"), "{body}");
            if i % 2 == 1 {
                // The App Service flavour's own members, which MSAL reports.
                assert_eq!(body["statusCode"], 429, "{body}");
                assert_eq!(body["message"], body["error_description"], "{body}");
            }
        } else {
            assert_eq!(response.status(), 200);
        }
    }
    assert_eq!(refused, 61, "the burst of 40 took the application's first token and 39 of the flood");

    let calls = entra.requests();
    let again = json(relay.imds(VAULT).await).await;
    assert_eq!(again["access_token"], app);
    assert_eq!(entra.requests(), calls, "the token in use is still a cache hit");
    let text = relay.metrics().await;
    assert_eq!(sample(&text, "tokenrelay_new_keys_limited_total", &["identity=\"app\""]), Some(61.0), "{text}");
    let evicted = sample(&text, "tokenrelay_cache_evictions_total", &["identity=\"app\"", "reason=\"size\""]);
    assert_eq!(evicted, Some(20.0), "the flood churned the 2 probation slots only: {text}");
    let logs = relay.logs();
    assert_eq!(logs.matches("exceed cache.new_keys_per_minute").count(), 1, "one warning for the episode:\n{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_file_keeps_what_memory_keeps_and_a_restart_during_an_outage_serves_all_of_it() {
    let entra = FakeEntra::start().await;
    let cache = CacheDir::new();
    let toml = cache.config(&entra).set("cache.max_entries", 10).set("cache.new_keys_burst", 100);
    let config = cache.config_file(&toml);
    let mut relay = TestRelay::serve(&toml, &[]).await;
    let mut tokens = std::collections::BTreeMap::new();
    for _ in 0..3 {
        tokens
            .insert("https://vault.azure.net".to_owned(), json(relay.imds(VAULT).await).await["access_token"].clone());
    }
    for i in 0..30 {
        let resource = format!("https://r{i:02}.example");
        let body = json(relay.imds(&format!("api-version=2018-02-01&resource={resource}")).await).await;
        tokens.insert(resource, body["access_token"].clone());
    }
    let held = cached_resources(&relay).await;
    assert!(held.len() <= 10 && held.contains("https://vault.azure.net"), "{held:?}");
    assert_eq!(relay.terminate().await.code(), Some(0), "{}", relay.logs());
    let logs = relay.logs();
    assert!(logs.contains("persisted the token cache") && logs.contains("kept=10"), "{logs}");

    let listed = listed_resources(&config).await;
    assert_eq!(listed, held, "the file holds exactly what memory held");

    entra.set_down(true);
    let requests = entra.requests();
    let restarted = TestRelay::serve(&toml, &[]).await;
    for resource in &listed {
        let response = restarted.imds(&format!("api-version=2018-02-01&resource={resource}")).await;
        assert_eq!(response.status(), 200, "{resource}:\n{}", restarted.logs());
        assert_eq!(json(response).await["access_token"], tokens[resource], "{resource}");
    }
    assert_eq!(entra.requests(), requests, "every kept token served without the authority");
    let gone = tokens.keys().find(|r| !listed.contains(*r)).unwrap();
    let response = restarted.imds(&format!("api-version=2018-02-01&resource={gone}")).await;
    assert_eq!(response.status(), 503, "a token that was not kept needs the authority");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_larger_than_the_cache_is_loaded_up_to_max_entries_and_pruned() {
    let entra = FakeEntra::start().await;
    let cache = CacheDir::new();
    // 50 tokens for the identity, as a release without the bound left them; the latest
    // expiries are the freshest, and r00 was in use.
    let now = unix_now();
    let tokens = (0..50u64)
        .map(|i| PersistedToken {
            identity: "app".into(),
            client_id: fake_entra::CLIENT_ID.into(),
            resource: format!("https://r{i:02}.example"),
            credential: "client_secret".into(),
            refresh_on: now + 1800,
            token: AccessToken {
                token: Secret::new(format!("persisted-{i:02}")),
                expires_on: now + 3000 + i,
                not_before: now,
                ext_expires_on: now + 3000 + i,
                refresh_on: None,
            },
            in_use: i == 0,
            written_by: 0,
        })
        .collect();
    let bytes = format::encode(
        &Snapshot { tokens, ..Snapshot::default() },
        &Protection::Encrypted(Cipher::new(&cache.key)),
        now,
    );
    std::fs::create_dir_all(cache.file().parent().unwrap()).unwrap();
    std::fs::write(cache.file(), &bytes).unwrap();
    let toml = cache.config(&entra).set("cache.max_entries", 10);
    let config = cache.config_file(&toml);

    entra.set_down(true);
    let relay = TestRelay::serve(&toml, &[]).await;
    let logs = relay.logs();
    assert!(logs.contains("loaded the persistent token cache") && logs.contains("loaded=10"), "{logs}");
    let expected: BTreeSet<String> =
        std::iter::once(0).chain(41..50).map(|i| format!("https://r{i:02}.example")).collect();
    assert_eq!(cached_resources(&relay).await, expected, "the token in use, then the 9 freshest");
    for resource in &expected {
        let body = json(relay.imds(&format!("api-version=2018-02-01&resource={resource}")).await).await;
        assert!(body["access_token"].as_str().unwrap().starts_with("persisted-"), "{body}");
    }
    assert_eq!(entra.requests(), 0);

    // The write that follows a load takes the rest out of the file, and says so.
    eventually("the file is pruned", async || relay.logs().contains("dropped=40")).await;
    assert!(relay.logs().contains("kept=10"), "{}", relay.logs());
    assert_eq!(listed_resources(&config).await, expected);
    assert!(std::fs::metadata(cache.file()).unwrap().len() < bytes.len() as u64 / 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn more_than_64_query_parameters_are_refused_in_each_flavours_format() {
    let entra = FakeEntra::start().await;
    let relay = TestRelay::serve(&TestConfig::client_secret(&entra), &[]).await;
    // As many distinct parameters as fit in the default 8 KiB request target.
    let padding: String = (0..1800).map(|i| format!("&{i:x}")).collect();
    let response = relay.imds(&format!("{VAULT}{padding}")).await;
    assert_eq!(response.status(), 400);
    let body = json(response).await;
    assert_eq!(body["error"], "invalid_request");
    assert!(body["error_description"].as_str().unwrap().contains("more than 64 query parameters"), "{body}");

    let response = relay
        .get(&format!("/msi/token?api-version=2019-08-01&resource=r{padding}"), &[("X-IDENTITY-HEADER", HEADER_SECRET)])
        .await;
    assert_eq!(response.status(), 400);
    let body = json(response).await;
    assert_eq!((body["statusCode"].as_u64(), body["error"].as_str()), (Some(400), Some("invalid_request")), "{body}");

    let few: String = (0..62).map(|i| format!("&p{i}=x")).collect();
    assert_eq!(relay.imds(&format!("{VAULT}{few}")).await.status(), 200, "64 parameters are served");
    assert_eq!(entra.requests(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn aadsts_codes_the_relay_does_not_know_share_one_label() {
    let entra = FakeEntra::start().await;
    let relay = TestRelay::serve(&TestConfig::client_secret(&entra), &[]).await;
    entra.script((0..20).map(|i| Scripted::Error { status: 400, aadsts: 9_100_000 + i, error: "invalid_request" }));
    for i in 0..20 {
        let response = relay.imds(&format!("api-version=2018-02-01&resource=https://r{i}.example")).await;
        assert_eq!(response.status(), 400);
        let body = json(response).await;
        let code = format!("AADSTS{}", 9_100_000 + i);
        assert!(body["error_description"].as_str().unwrap().contains(&code), "the error keeps the code: {body}");
    }
    entra.script([Scripted::Error { status: 401, aadsts: 7000215, error: "invalid_client" }]);
    assert_eq!(relay.imds("api-version=2018-02-01&resource=https://known.example").await.status(), 400);
    let text = relay.metrics().await;
    let series: Vec<&str> = text.lines().filter(|l| l.starts_with("tokenrelay_upstream_errors_total{")).collect();
    assert_eq!(series.len(), 2, "{series:?}");
    assert_eq!(sample(&text, "tokenrelay_upstream_errors_total", &["aadsts=\"other\""]), Some(20.0), "{text}");
    assert_eq!(sample(&text, "tokenrelay_upstream_errors_total", &["aadsts=\"7000215\""]), Some(1.0), "{text}");
}
