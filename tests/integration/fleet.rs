//! A fleet of relays sharing one real Redis server (`[cache.shared]`, docs/shared-cache.md):
//! one upstream call per key for the fleet, a replica started during an outage serving what
//! the others fetched, a server lost mid-run changing nothing for callers, entries that do
//! not open ignored, and nothing readable in the server.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;

use crate::support::redis::RedisServer;
use crate::support::{FakeEntra, TestConfig, TestRelay, eventually, fake_entra, json, table, utf8};

const VAULT: &str = "https://vault.azure.net";
const STORAGE: &str = "https://storage.azure.com";

/// A 256-bit key in a 0600 file, as a mounted Secret would hold it.
fn key_file(dir: &Path, name: &str, byte: u8) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, base64::engine::general_purpose::STANDARD.encode([byte; 32])).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// A relay configuration against `entra` sharing tokens through `redis` with the key in
/// `key`. Generous command timeouts: on a loaded test machine a slow answer must not be taken
/// for an outage (the default is 250 ms).
fn fleet_config(entra: &FakeEntra, redis: &RedisServer, key: &Path) -> TestConfig {
    TestConfig::client_secret(entra).set(
        "cache.shared",
        table()
            .with("url", redis.url())
            .with("key_file", utf8(key))
            .with("timeout_ms", 2000)
            .with("lease_wait_ms", 10000),
    )
}

async fn token_of(relay: &TestRelay, resource: &str) -> String {
    let response = relay.imds(&format!("api-version=2018-02-01&resource={resource}")).await;
    assert_eq!(response.status(), 200, "{resource}: {}", relay.logs());
    json(response).await["access_token"].as_str().unwrap().to_owned()
}

/// The token entries (not the leases) in the server.
async fn token_entries(redis: &RedisServer) -> Vec<String> {
    redis.keys().await.into_iter().filter(|k| k.starts_with("tokenrelay:token:")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_relays_make_one_upstream_call_for_200_concurrent_requests() {
    let entra = FakeEntra::start().await;
    // Slow enough that both relays miss at once and one of them must wait for the other.
    entra.set_delay(Duration::from_millis(300));
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = fleet_config(&entra, &redis, &key_file(dir.path(), "key", 7));
    let a = std::sync::Arc::new(TestRelay::serve(&toml, &[]).await);
    let b = std::sync::Arc::new(TestRelay::serve(&toml, &[]).await);

    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let relay = std::sync::Arc::clone(if i % 2 == 0 { &a } else { &b });
            tokio::spawn(async move { token_of(&relay, VAULT).await })
        })
        .collect();
    let mut tokens = Vec::new();
    for task in tasks {
        tokens.push(task.await.unwrap());
    }
    assert!(tokens.iter().all(|t| *t == tokens[0]), "every caller of both relays got the same token");
    assert_eq!(entra.requests(), 1, "one upstream call for the fleet");

    // One relay took the lease; the other waited for its token.
    let mut metrics = a.get("/metrics", &[]).await.text().await.unwrap();
    metrics.push_str(&b.get("/metrics", &[]).await.text().await.unwrap());
    assert_eq!(metrics.matches("\ntokenrelay_shared_cache_up 1\n").count(), 2, "{metrics}");
    assert!(metrics.contains("tokenrelay_shared_cache_leases_total{result=\"acquired\"} 1"), "{metrics}");
    assert!(metrics.contains("tokenrelay_shared_cache_leases_total{result=\"waited\"} 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_holds_no_token_client_id_or_resource_in_clear() {
    let entra = FakeEntra::start().await;
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::serve(&fleet_config(&entra, &redis, &key_file(dir.path(), "key", 7)), &[]).await;
    let tokens = [token_of(&relay, VAULT).await, token_of(&relay, STORAGE).await];
    eventually("both tokens written", async || token_entries(&redis).await.len() == 2).await;

    let forbidden: Vec<String> = [
        tokens[0].clone(),
        tokens[1].clone(),
        "fake-token".into(),
        fake_entra::CLIENT_ID.into(),
        fake_entra::CLIENT_ID.to_uppercase(),
        fake_entra::TENANT.into(),
        "vault".into(),
        "storage".into(),
        "azure".into(),
    ]
    .into();
    for key in redis.keys().await {
        let dump = redis.dump(&key).await;
        for word in &forbidden {
            assert!(!key.contains(word.as_str()), "the name {key} shows {word}");
            assert!(!dump.windows(word.len()).any(|w| w == word.as_bytes()), "DUMP {key} shows {word}");
        }
    }
    // Each entry expires when its token does (the fake issues tokens for 3599 s).
    for key in token_entries(&redis).await {
        let ttl = redis.pttl(&key).await;
        assert!((3_500_000..=3_600_000).contains(&ttl), "{key} expires in {ttl} ms");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relay_started_during_an_outage_serves_the_fleets_token_and_becomes_ready() {
    let entra = FakeEntra::start().await;
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "key", 7);
    let first = TestRelay::serve(&fleet_config(&entra, &redis, &key), &[]).await;
    let token = token_of(&first, VAULT).await;
    eventually("the token written", async || token_entries(&redis).await.len() == 1).await;

    entra.set_down(true);
    let asked = entra.requests();
    let toml = fleet_config(&entra, &redis, &key).set("identities.0.prefetch", vec![VAULT]);
    let late = TestRelay::serve(&toml, &[]).await;
    eventually("ready from the shared cache", async || late.get("/readyz", &[]).await.status() == 200).await;
    assert_eq!(token_of(&late, VAULT).await, token);
    assert_eq!(entra.requests(), asked, "the late relay never asked the authority that is down");
}

#[tokio::test(flavor = "multi_thread")]
async fn losing_the_server_mid_run_changes_nothing_for_callers() {
    let entra = FakeEntra::start().await;
    let mut redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = fleet_config(&entra, &redis, &key_file(dir.path(), "key", 7));
    let (a, b) = (TestRelay::serve(&toml, &[]).await, TestRelay::serve(&toml, &[]).await);
    let vault = token_of(&a, VAULT).await;
    eventually("the token written", async || token_entries(&redis).await.len() == 1).await;
    assert_eq!(token_of(&b, VAULT).await, vault, "b took a's token from the shared cache");
    assert_eq!(entra.requests(), 1);

    redis.stop();
    // Cached tokens are served from memory; new ones come from the authority, as without a
    // shared cache.
    for relay in [&a, &b] {
        assert_eq!(token_of(relay, VAULT).await, vault);
        token_of(relay, STORAGE).await;
    }
    assert_eq!(entra.requests(), 3, "one call per relay for the new resource: nothing shared while down");
    for relay in [&a, &b] {
        eventually("the outage logged", async || relay.logs().contains("shared token cache down")).await;
        let metrics = relay.get("/metrics", &[]).await.text().await.unwrap();
        assert!(metrics.contains("\ntokenrelay_shared_cache_up 0\n"), "{metrics}");
        assert_eq!(relay.logs().matches("shared token cache down").count(), 1, "one line per state change");
    }

    // Back: the relays reconnect in the background, while lookups skip the server.
    redis.restart().await;
    let mut n = 0;
    eventually("a reconnected", async || {
        n += 1;
        token_of(&a, &format!("api://resource-{n}")).await;
        a.logs().contains("shared token cache up")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn entries_sealed_with_another_key_or_tampered_with_are_ignored() {
    let entra = FakeEntra::start().await;
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = (key_file(dir.path(), "ours", 7), key_file(dir.path(), "theirs", 8));
    let toml = fleet_config(&entra, &redis, &ours);

    let first = TestRelay::serve(&toml, &[]).await;
    token_of(&first, VAULT).await;
    eventually("our entry written", async || token_entries(&redis).await.len() == 1).await;
    let name = token_entries(&redis).await.remove(0);

    // A relay with another key derives other names: it shares nothing with ours.
    let other = TestRelay::serve(&fleet_config(&entra, &redis, &theirs), &[]).await;
    token_of(&other, VAULT).await;
    assert_eq!(entra.requests(), 2);
    eventually("their entry written", async || token_entries(&redis).await.len() == 2).await;
    let their_name = token_entries(&redis).await.into_iter().find(|k| *k != name).unwrap();

    // Their value under our name: sealed with another key.
    redis.set(&name, &redis.get(&their_name).await.unwrap()).await;
    let second = TestRelay::serve(&toml, &[]).await;
    token_of(&second, VAULT).await;
    assert_eq!(entra.requests(), 3, "the entry was ignored and the token fetched");
    assert!(second.logs().contains("sealed with another key"), "{}", second.logs());
    eventually("the entry replaced", async || redis.get(&name).await != redis.get(&their_name).await).await;

    // Our own value, one bit flipped.
    let mut value = redis.get(&name).await.unwrap();
    *value.last_mut().unwrap() ^= 1;
    redis.set(&name, &value).await;
    let third = TestRelay::serve(&toml, &[]).await;
    token_of(&third, VAULT).await;
    assert_eq!(entra.requests(), 4, "the tampered entry was ignored");
    assert!(third.logs().contains("does not authenticate"), "{}", third.logs());
    let metrics = third.get("/metrics", &[]).await.text().await.unwrap();
    assert!(metrics.contains("tokenrelay_shared_cache_lookups_total{result=\"unreadable\"} 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_relay_refreshes_ahead_for_the_fleet() {
    let entra = FakeEntra::start().await;
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = fleet_config(&entra, &redis, &key_file(dir.path(), "key", 7));
    let (a, b) = (TestRelay::serve(&toml, &[]).await, TestRelay::serve(&toml, &[]).await);
    // The first token is due for refresh after a second; its successor only 10 min before expiry.
    entra.set_refresh_in(Some(1));
    let first = token_of(&a, VAULT).await;
    entra.set_refresh_in(None);
    eventually("the token written", async || token_entries(&redis).await.len() == 1).await;
    assert_eq!(token_of(&b, VAULT).await, first);

    // Both relays now serve a stale token and try to refresh it; the lease lets one of them
    // ask the authority, and the other takes its token from the shared cache.
    eventually("both relays serve the refreshed token", async || {
        let (x, y) = (token_of(&a, VAULT).await, token_of(&b, VAULT).await);
        x != first && y != first
    })
    .await;
    assert_eq!(token_of(&a, VAULT).await, token_of(&b, VAULT).await);
    assert_eq!(entra.requests(), 2, "one fetch and one refresh for the fleet");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_server_refuses_writes_and_callers_never_notice() {
    let entra = FakeEntra::start().await;
    let redis = RedisServer::start().await;
    let mut connection = redis.connection().await;
    // As a server at its memory bound without eviction answers every write: -OOM.
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("noeviction")
        .query_async(&mut connection)
        .await
        .unwrap();
    let () = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg("1").query_async(&mut connection).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::serve(&fleet_config(&entra, &redis, &key_file(dir.path(), "key", 7)), &[]).await;
    for n in 0..5 {
        token_of(&relay, &format!("api://resource-{n}")).await;
    }
    assert_eq!(entra.requests(), 5);
    assert!(redis.keys().await.is_empty(), "nothing was written");
    let metrics = relay.get("/metrics", &[]).await.text().await.unwrap();
    assert!(metrics.contains("\ntokenrelay_shared_cache_up 1\n"), "refusals are not an outage: {metrics}");
    let logs = relay.logs();
    assert!(logs.contains("OOM"), "{logs}");
    // One line per kind of operation refused (the lease and the write), not one per token.
    let refusals = logs.matches("refused a command").count();
    assert!((1..=2).contains(&refusals), "{refusals} refusal lines:\n{logs}");
}
