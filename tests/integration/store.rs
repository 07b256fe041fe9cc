//! The persistent cache end to end: restarts during an outage, bad files, two processes on
//! one file, permissions, no token in the bytes, and `cache list` / `cache clear`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use tokenrelay::secret::Secret;
use tokenrelay::store::journal::journal_path;
use tokenrelay::store::{Cipher, PersistedToken, Protection, Snapshot, format};
use tokenrelay::token::AccessToken;

use crate::support::{
    CacheDir, FakeEntra, GRAPH, STORAGE, TestConfig, TestRelay, VAULT, command, eventually, fake_entra, json,
};

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

async fn run(args: &[&str]) -> std::process::Output {
    command().args(args).output().await.expect("tokenrelay runs")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_during_an_outage_serves_persisted_tokens_and_is_ready_at_once() {
    let entra = FakeEntra::start().await;
    let cache = CacheDir::new();
    let toml = cache.config(&entra).set("identities.0.prefetch", vec!["https://vault.azure.net"]);

    let mut first = TestRelay::serve(&toml, &[]).await;
    eventually("the prefetch lands", async || first.get("/readyz", &[]).await.status() == 200).await;
    let token = json(first.imds(VAULT).await).await["access_token"].as_str().unwrap().to_owned();
    let storage = json(first.imds(STORAGE).await).await;
    assert_eq!(first.terminate().await.code(), Some(0), "{}", first.logs());

    // The file and its journal: private, and neither token readable in their bytes.
    let mut bytes = std::fs::read(cache.file()).expect("the cache file was written");
    bytes.extend(std::fs::read(journal_path(&cache.file())).unwrap_or_default());
    assert!(!contains(&bytes, &token) && !contains(&bytes, storage["access_token"].as_str().unwrap()));
    assert!(!contains(&bytes, "fake-token") && !contains(&bytes, "vault.azure.net"));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&cache.file()), 0o600);
    assert_eq!(mode(cache.file().parent().unwrap()), 0o700);

    entra.set_down(true);
    let before = entra.requests();
    let second = TestRelay::serve(&toml, &[]).await;
    assert_eq!(second.get("/readyz", &[]).await.status(), 200, "the persisted prefetch counts:\n{}", second.logs());
    let served = json(second.imds(VAULT).await).await;
    assert_eq!(served["access_token"], token.as_str());
    let served = json(second.app_service("resource=https://storage.azure.com").await).await;
    assert_eq!(served["access_token"], storage["access_token"]);
    assert_eq!(entra.requests(), before, "persisted tokens need no upstream call");

    // Anything not persisted fails fast with a clear 503.
    let started = std::time::Instant::now();
    let missing = second.imds(GRAPH).await;
    assert_eq!(missing.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    let body = json(missing).await;
    assert_eq!(body["error"], "temporarily_unavailable");
    assert!(body["error_description"].as_str().unwrap().contains("503"), "{body}");
    let logs = second.logs();
    assert!(logs.contains("loaded the persistent token cache") && logs.contains("loaded=2"), "{logs}");
    assert!(!logs.contains(&token), "no token in the logs");
}

/// Tokens fetched after the first write are appended to the journal, fsynced: a relay killed
/// without its flush at exit (SIGKILL) loses none of them, and a restart during an outage
/// serves every one without the authority.
#[tokio::test(flavor = "multi_thread")]
async fn a_restart_after_a_crash_during_an_outage_serves_every_token_the_journal_kept() {
    let entra = FakeEntra::start().await;
    let cache = CacheDir::new();
    let toml = cache.config(&entra);
    let relay = TestRelay::serve(&toml, &[]).await;
    let resources = ["https://vault.azure.net", "https://storage.azure.com", "https://graph.microsoft.com"];
    let mut tokens = Vec::new();
    for (n, resource) in resources.iter().enumerate() {
        let served = json(relay.imds(&format!("api-version=2018-02-01&resource={resource}")).await).await;
        tokens.push(served["access_token"].as_str().unwrap().to_owned());
        eventually("the write", async || successful_writes(&relay).await > n as u64).await;
    }
    let journal = std::fs::read(journal_path(&cache.file())).expect("the later tokens went to the journal");
    assert!(tokens.iter().all(|t| !contains(&journal, t)), "the journal is encrypted");
    let mode = std::fs::metadata(journal_path(&cache.file())).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let killed = std::process::Command::new("kill").args(["-KILL", &relay.pid().to_string()]).status().unwrap();
    assert!(killed.success());
    drop(relay);
    entra.set_down(true);
    let before = entra.requests();
    let restarted = TestRelay::serve(&toml, &[]).await;
    for (resource, token) in resources.iter().zip(&tokens) {
        let served = json(restarted.imds(&format!("api-version=2018-02-01&resource={resource}")).await).await;
        assert_eq!(served["access_token"], token.as_str(), "{resource}:\n{}", restarted.logs());
    }
    assert_eq!(entra.requests(), before, "every token from the persisted cache");
    assert!(cache.set_aside().is_empty(), "nothing was damaged");
}

/// `tokenrelay_persistence_writes_total{result="success"}` on `/metrics` (0 before the first).
async fn successful_writes(relay: &TestRelay) -> u64 {
    let text = relay.get("/metrics", &[]).await.text().await.unwrap();
    let series = "tokenrelay_persistence_writes_total{result=\"success\"} ";
    text.lines().find_map(|line| line.strip_prefix(series)).map_or(0, |n| n.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn unreadable_cache_files_are_moved_aside_and_the_service_runs() {
    let entra = FakeEntra::start().await;
    let cache = CacheDir::new();
    let valid = |key: &[u8; 32]| {
        let token = PersistedToken {
            identity: "app".into(),
            client_id: fake_entra::CLIENT_ID.into(),
            resource: "https://vault.azure.net".into(),
            credential: "client_secret".into(),
            refresh_on: u64::MAX / 2,
            token: AccessToken {
                token: Secret::new("persisted-token"),
                expires_on: u64::MAX / 2,
                not_before: 0,
                ext_expires_on: u64::MAX / 2,
                refresh_on: None,
            },
            in_use: true,
            written_by: 0,
        };
        format::encode(
            &Snapshot { tokens: vec![token], ..Snapshot::default() },
            &Protection::Encrypted(Cipher::new(key)),
            0,
        )
    };
    let good = valid(&cache.key);
    let mut future = good.clone();
    future[8] = 9;
    let cases: [(&str, Vec<u8>, &str); 5] = [
        ("corrupt", b"\x00garbage that is not a cache file at all".to_vec(), "not a tokenrelay cache file"),
        ("truncated", good[..good.len() - 40].to_vec(), "truncated, damaged or tampered"),
        ("empty", Vec::new(), "truncated"),
        ("wrong key", valid(&[42; 32]), "different key"),
        ("future version", future, "format version 9 is unknown"),
    ];
    std::fs::create_dir_all(cache.file().parent().unwrap()).unwrap();
    let toml = cache.config(&entra);
    for (n, (case, bytes, reason)) in cases.into_iter().enumerate() {
        std::fs::write(cache.file(), &bytes).unwrap();
        let mut relay = TestRelay::serve(&toml, &[]).await;
        let served = json(relay.imds(VAULT).await).await;
        assert!(served["access_token"].as_str().unwrap().starts_with("fake-token-"), "{case}: fetched anew");
        let logs = relay.logs();
        assert!(logs.contains("moved it aside") && logs.contains(reason), "{case}:\n{logs}");
        assert_eq!(relay.terminate().await.code(), Some(0), "{case}");
        let aside = cache.set_aside();
        assert_eq!(aside.len(), n + 1, "{case}: one more file set aside");
        assert!(aside.iter().any(|p| std::fs::read(p).unwrap() == bytes), "{case}: the original bytes are kept");
        assert!(!logs.contains("panicked"));
    }
    // The file written after the last case is a good one again.
    let output = run(&["cache", "list", "--config", cache.config_file(&toml).to_str().unwrap()]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("https://vault.azure.net"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_valid_persisted_token_is_used_when_the_file_is_good() {
    let entra = FakeEntra::start().await;
    let cache = CacheDir::new();
    let toml = cache.config(&entra);
    let mut relay = TestRelay::serve(&toml, &[]).await;
    assert_eq!(relay.imds(VAULT).await.status(), 200);
    relay.terminate().await;
    let relay = TestRelay::serve(&toml, &[]).await;
    let served = json(relay.imds(VAULT).await).await;
    assert_eq!(served["access_token"], "fake-token-1-for-https://vault.azure.net");
    assert_eq!(entra.issued(), 1);
    assert!(cache.set_aside().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn two_processes_share_one_cache_file_without_losing_tokens() {
    let entra = FakeEntra::start().await;
    let cache = CacheDir::new();
    let toml = cache.config(&entra);
    let a = std::sync::Arc::new(TestRelay::serve(&toml, &[]).await);
    let b = std::sync::Arc::new(TestRelay::serve(&toml, &[]).await);
    let mut tasks = Vec::new();
    for i in 0..30 {
        let relay = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            relay.imds(&format!("api-version=2018-02-01&resource=https://r{i}.example")).await.status()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    let (Ok(mut a), Ok(mut b)) = (std::sync::Arc::try_unwrap(a), std::sync::Arc::try_unwrap(b)) else {
        panic!("the tasks are done")
    };
    let (status_a, status_b) = tokio::join!(a.terminate(), b.terminate());
    assert_eq!((status_a.code(), status_b.code()), (Some(0), Some(0)));

    let config = cache.config_file(&toml);
    let output = run(&["cache", "list", "--config", config.to_str().unwrap()]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let listing = String::from_utf8_lossy(&output.stdout);
    assert!(listing.contains(": 30 token(s)"), "both processes' tokens are in the file:\n{listing}");
    assert!(cache.set_aside().is_empty(), "nothing was corrupted");

    // Both can read it afterwards: a restarted relay serves all 30 without the authority.
    entra.set_down(true);
    let relay = TestRelay::serve(&toml, &[]).await;
    for i in [0, 1, 28, 29] {
        let response = relay.imds(&format!("api-version=2018-02-01&resource=https://r{i}.example")).await;
        assert_eq!(response.status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_list_never_prints_a_token_and_clear_empties_it() {
    let entra = FakeEntra::start().await;
    let cache = CacheDir::new();
    let toml = cache.config(&entra);
    let mut relay = TestRelay::serve(&toml, &[]).await;
    let token = json(relay.imds(VAULT).await).await["access_token"].as_str().unwrap().to_owned();
    relay.terminate().await;

    let config = cache.config_file(&toml);
    let config = config.to_str().unwrap();
    let output = run(&["cache", "list", "--config", config]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stdout.contains(&token) && !stderr.contains(&token), "{stdout}{stderr}");
    let fingerprint = Secret::new(token.clone()).fingerprint();
    assert!(stdout.contains("https://vault.azure.net") && stdout.contains(&fingerprint), "{stdout}");
    assert!(stdout.contains("app") && stdout.contains(fake_entra::CLIENT_ID), "{stdout}");

    let output = run(&["cache", "clear", "--identity", "someone-else", "--config", config]).await;
    assert!(String::from_utf8_lossy(&output.stdout).contains("removed 0 token(s)"));
    let output = run(&["cache", "clear", "--identity", "app", "--config", config]).await;
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("removed 1 token(s)"));
    let output = run(&["cache", "list", "--config", config]).await;
    assert!(String::from_utf8_lossy(&output.stdout).contains(": 0 token(s)"));

    // A damaged file is reported by `list`, and left where it is.
    std::fs::write(cache.file(), b"damaged").unwrap();
    let output = run(&["cache", "list", "--config", config]).await;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read the token cache"));
    assert_eq!(std::fs::read(cache.file()).unwrap(), b"damaged");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_key_can_come_from_an_environment_variable_and_flags() {
    let entra = FakeEntra::start().await;
    let cache = CacheDir::new();
    let key = std::fs::read_to_string(cache.dir.path().join("key")).unwrap();
    let config = cache.config_file(&TestConfig::client_secret(&entra));
    let path = cache.file();
    let output = command()
        .args(["token", "--resource", "https://vault.azure.net", "--config", config.to_str().unwrap()])
        .args(["--persist-path", path.to_str().unwrap()])
        .env("TOKENRELAY_CACHE__PERSISTENCE__KEY_ENV", "MY_CACHE_KEY")
        .env("MY_CACHE_KEY", &key)
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let token: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();

    // The same key from a file reads what the variable's key wrote.
    let key_file = cache.dir.path().join("key");
    let output = run(&[
        "cache",
        "list",
        "--config",
        config.to_str().unwrap(),
        "--persist-path",
        path.to_str().unwrap(),
        "--persist-key-file",
        key_file.to_str().unwrap(),
    ])
    .await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let fingerprint = Secret::new(token["access_token"].as_str().unwrap()).fingerprint();
    assert!(String::from_utf8_lossy(&output.stdout).contains(&fingerprint));

    // A key variable that is not set is a configuration error naming it.
    let output = command()
        .args(["serve", "--config", config.to_str().unwrap(), "--persist"])
        .env("TOKENRELAY_CACHE__PERSISTENCE__KEY_ENV", "MISSING_KEY")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("MISSING_KEY"));
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_key_tokens_are_in_plaintext_only_when_allowed() {
    let entra = FakeEntra::start().await;
    let cache = CacheDir::new();

    // No key, not allowed: persistence stays off (unless this machine's keyring works).
    let mut relay = TestRelay::serve(
        &cache.persisting(TestConfig::client_secret(&entra)).set("cache.persistence.backend", "file"),
        &[],
    )
    .await;
    let token = json(relay.imds(VAULT).await).await["access_token"].as_str().unwrap().to_owned();
    relay.terminate().await;
    let logs = relay.logs();
    if logs.contains("key in the kernel keyutils keyring") {
        let bytes = std::fs::read(cache.file()).unwrap();
        assert!(!contains(&bytes, &token), "encrypted with the keyring's key");
    } else {
        assert!(logs.contains("persistent token cache off") && logs.contains("key_file"), "{logs}");
        assert!(!cache.file().exists(), "nothing written");
    }

    // Allowed: plaintext (0600) with a loud warning, or the keyring's key where one works.
    std::fs::remove_dir_all(cache.file().parent().unwrap()).ok();
    let toml = cache
        .persisting(TestConfig::client_secret(&entra))
        .set("cache.persistence.backend", "file")
        .set("cache.persistence.allow_unencrypted_storage", true);
    let mut relay = TestRelay::serve(&toml, &[]).await;
    let token = json(relay.imds(VAULT).await).await["access_token"].as_str().unwrap().to_owned();
    relay.terminate().await;
    let logs = relay.logs();
    let bytes = std::fs::read(cache.file()).unwrap();
    assert_eq!(std::fs::metadata(cache.file()).unwrap().permissions().mode() & 0o777, 0o600);
    if logs.contains("UNENCRYPTED TOKEN CACHE") {
        assert!(contains(&bytes, &token), "plaintext was allowed and chosen");
    } else {
        assert!(logs.contains("key in the kernel keyutils keyring"), "{logs}");
        assert!(!contains(&bytes, &token));
    }
}

/// The keyring backend where the kernel keyring works. `keyctl session -` runs each process
/// in a fresh session keyring, as a container gets; the key is found again through the
/// user's persistent keyring.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs keyctl (Debian package keyutils) and a usable kernel keyring (docs/testing.md#privileges)"]
async fn the_keyring_keeps_the_key_across_restarts() {
    let entra = FakeEntra::start().await;
    let cache = CacheDir::new();
    let name = format!("test-{:08x}", fastrand::u32(..));
    let config = cache.config_file(
        &cache
            .persisting(TestConfig::client_secret(&entra))
            .set("cache.persistence.backend", "keyring")
            .set("cache.persistence.name", name.as_str()),
    );
    let in_fresh_session = |args: &[&str]| {
        let mut command = tokio::process::Command::new("keyctl");
        command.args(["session", "-", env!("CARGO_BIN_EXE_tokenrelay")]).args(args);
        command.args(["--config", config.to_str().unwrap()]);
        for (key, _) in std::env::vars() {
            if key.starts_with("AZURE_") || key.starts_with("TOKENRELAY_") || key == "RUST_LOG" {
                command.env_remove(key);
            }
        }
        command
    };
    let token = |output: &std::process::Output| -> serde_json::Value {
        let stdout = String::from_utf8_lossy(&output.stdout);
        let json = &stdout[stdout.find('{').unwrap_or(0)..];
        serde_json::from_str(json)
            .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&output.stderr)))
    };
    let first = in_fresh_session(&["token", "--resource", "https://vault.azure.net"]).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(!stderr.contains("keyring does not work here"), "the kernel keyring is not usable here:\n{stderr}");
    assert!(stderr.contains("generated the token cache's encryption key"), "{stderr}");
    let first = token(&first);

    entra.set_down(true);
    let second = in_fresh_session(&["token", "--resource", "https://vault.azure.net"]).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!stderr.contains("generated") && !stderr.contains("moved it aside"), "the same key was found:\n{stderr}");
    assert_eq!(token(&second)["access_token"], first["access_token"], "served from the persisted cache");
    let bytes = std::fs::read(cache.file()).unwrap();
    assert!(!contains(&bytes, first["access_token"].as_str().unwrap()));

    // Leave no key behind in the user's persistent keyring.
    let description = format!("keyring:{name}/cache-key@tokenrelay");
    let script = format!("p=$(keyctl get_persistent @s) && keyctl unlink $(keyctl search $p user '{description}') $p");
    let _ = tokio::process::Command::new("keyctl").args(["session", "-", "sh", "-c", &script]).output().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn persistence_writes_are_counted() {
    let entra = FakeEntra::start().await;
    let cache = CacheDir::new();
    let relay = TestRelay::serve(&cache.config(&entra), &[]).await;
    assert_eq!(relay.imds(VAULT).await.status(), 200);
    eventually("the write-through batch is counted", async || {
        let text = relay.metrics().await;
        text.lines().any(|l| l.starts_with("tokenrelay_persistence_writes_total{result=\"success\"}"))
    })
    .await;
}

/// Fields read from the file reach the operator's terminal escaped: a newline in a resource
/// cannot forge a row, an escape sequence cannot drive the terminal.
#[tokio::test(flavor = "multi_thread")]
async fn cache_list_escapes_control_characters_from_the_file() {
    let entra = FakeEntra::start().await;
    let cache = CacheDir::new();
    let expires_on = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600;
    let token = |identity: &str, resource: &str| PersistedToken {
        identity: identity.into(),
        client_id: fake_entra::CLIENT_ID.into(),
        resource: resource.into(),
        credential: "client_secret".into(),
        refresh_on: expires_on,
        token: AccessToken {
            token: Secret::new("persisted-token"),
            expires_on,
            not_before: 0,
            ext_expires_on: expires_on,
            refresh_on: None,
        },
        in_use: false,
        written_by: 0,
    };
    let tokens = vec![
        token("app\u{1b}]0;pwned\u{7}", "https://a.example\napp  forged-client  https://forged.example  row"),
        token("app", "https://b.example/\u{1b}[2J\u{9b}31m\u{202e}"),
    ];
    let bytes =
        format::encode(&Snapshot { tokens, ..Snapshot::default() }, &Protection::Encrypted(Cipher::new(&cache.key)), 0);
    std::fs::create_dir_all(cache.file().parent().unwrap()).unwrap();
    std::fs::write(cache.file(), bytes).unwrap();
    std::fs::set_permissions(cache.file(), std::fs::Permissions::from_mode(0o600)).unwrap();

    let config = cache.config_file(&cache.config(&entra));
    let output = run(&["cache", "list", "--config", config.to_str().unwrap()]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 4, "a summary, a header and two rows:\n{stdout}");
    assert!(!stdout.chars().any(|c| c.is_control() && c != '\n'), "{stdout:?}");
    assert!(!stdout.contains('\u{202e}'), "{stdout:?}");
    assert!(stdout.contains("https://a.example\\napp  forged-client"), "{stdout}");
    assert!(stdout.contains("app\\x1b]0;pwned\\x07"), "{stdout}");
    assert!(stdout.contains("https://b.example/\\x1b[2J\\u{9b}31m\\u{202e}"), "{stdout}");
}
