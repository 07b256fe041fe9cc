//! A persistent cache in a directory other local users can write to, such as a sticky
//! `/tmp`: files they plant there (a cache file with forged tokens, a symbolic link, a lock
//! file they hold) are refused, never served, followed or waited on.
//!
//! The tests run as root, so "another user" is uid 65534 (files are given to it with
//! `chown`), and an unprivileged tokenrelay runs as uid 65533 through `setpriv` (util-linux).
//! Those tests need root and are ignored by a plain `cargo test`; they run with `--ignored`
//! (CI runs them; docs/testing.md says how). The others need no privilege.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokenrelay::secret::Secret;
use tokenrelay::store::{PersistedToken, Protection, Snapshot, format};
use tokenrelay::token::AccessToken;

use crate::support::{CacheDir, FakeEntra, TestConfig, TestRelay, VAULT, fake_entra, json, unix_now};
/// The user the planted files belong to (`nobody` on Debian).
const OTHER_UID: u32 = 65534;
/// The user an unprivileged tokenrelay runs as.
const RELAY_UID: u32 = 65533;

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Gives `path` to `uid` (root only).
fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid))
        .unwrap_or_else(|error| panic!("cannot chown {} to uid {uid} (this test needs root): {error}", path.display()));
}

/// The cache's directory made shared the way `/tmp` is: world-writable and sticky.
fn shared_directory(cache: &CacheDir) -> PathBuf {
    let dir = cache.file().parent().unwrap().to_owned();
    std::fs::create_dir_all(&dir).unwrap();
    chmod(&dir, 0o1777);
    dir
}

/// A plaintext cache file holding a token for the test identity's vault resource.
fn plaintext_cache(value: &str, expires_on: u64) -> Vec<u8> {
    let token = PersistedToken {
        identity: "app".into(),
        client_id: fake_entra::CLIENT_ID.into(),
        resource: "https://vault.azure.net".into(),
        credential: "client_secret".into(),
        refresh_on: expires_on,
        token: AccessToken {
            token: Secret::new(value),
            expires_on,
            not_before: 0,
            ext_expires_on: expires_on,
            refresh_on: None,
        },
        in_use: false,
        written_by: 0,
    };
    format::encode(&Snapshot { tokens: vec![token], ..Snapshot::default() }, &Protection::Plaintext, unix_now())
}

/// The configuration that stores tokens in plaintext (where no keyring works).
fn plaintext_config(cache: &CacheDir, entra: &FakeEntra) -> TestConfig {
    cache
        .persisting(TestConfig::client_secret(entra))
        .set("cache.persistence.backend", "file")
        .set("cache.persistence.allow_unencrypted_storage", true)
}

/// Whether the relay chose plaintext; false (with a note) where this machine's keyring
/// supplied a key instead, so a plaintext file is merely unreadable to it.
fn chose_plaintext(relay: &TestRelay) -> bool {
    let logs = relay.logs();
    let plaintext = logs.contains("UNENCRYPTED TOKEN CACHE");
    if !plaintext {
        assert!(logs.contains("key in the kernel keyutils keyring"), "{logs}");
        eprintln!("note: the keyring works here, so the cache is encrypted and a plaintext plant is only unreadable");
    }
    plaintext
}

async fn served_token(relay: &TestRelay) -> serde_json::Value {
    let response = relay.imds(VAULT).await;
    assert_eq!(response.status(), 200, "{}", relay.logs());
    json(response).await
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// The token of a plaintext file the running user owns, but expiring 2.3 billion seconds
/// ahead, as a forged file would: not served, the authority is asked, and the next write
/// drops it from the file.
#[tokio::test(flavor = "multi_thread")]
async fn a_plaintext_token_expiring_implausibly_far_ahead_is_not_served() {
    let entra = FakeEntra::start().await;
    let cache = CacheDir::new();
    std::fs::create_dir_all(cache.file().parent().unwrap()).unwrap();
    std::fs::write(cache.file(), plaintext_cache("FORGED-token", unix_now() + 2_300_000_000)).unwrap();
    chmod(&cache.file(), 0o600);

    let mut relay = TestRelay::serve(&plaintext_config(&cache, &entra), &[]).await;
    let served = served_token(&relay).await;
    assert!(served["access_token"].as_str().unwrap().starts_with("fake-token-"), "{served}");
    assert!(served["expires_in"].as_str().unwrap().parse::<u64>().unwrap() <= 86_400, "{served}");
    assert_eq!(entra.issued(), 1, "the authority was asked");
    assert_eq!(relay.terminate().await.code(), Some(0));
    let logs = relay.logs();
    if !chose_plaintext(&relay) {
        return;
    }
    assert!(logs.contains("ignored 1 persisted token(s) that expire more than 48 h ahead"), "{logs}");
    assert!(logs.contains("implausible=1") && !logs.contains("FORGED-token"), "{logs}");
    // The cache file and its journal, plaintext records: the forged token is gone.
    let mut bytes = std::fs::read(cache.file()).unwrap();
    bytes.extend(std::fs::read(tokenrelay::store::journal::journal_path(&cache.file())).unwrap_or_default());
    let bytes = String::from_utf8_lossy(&bytes);
    assert!(!bytes.contains("FORGED") && bytes.contains("fake-token-"), "the write replaced it:\n{bytes}");
}

/// Another user's plaintext cache file in a shared directory, even with a believable expiry:
/// refused, moved aside, and the authority asked; the operator is warned about the directory.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: gives files to another user (chown to uid 65534) (docs/testing.md#privileges)"]
async fn a_cache_file_planted_by_another_user_is_moved_aside_never_served() {
    let entra = FakeEntra::start().await;
    let cache = CacheDir::new();
    let dir = shared_directory(&cache);
    let planted = plaintext_cache("FORGED-token", unix_now() + 3600);
    std::fs::write(cache.file(), &planted).unwrap();
    chmod(&cache.file(), 0o644);
    chown(&cache.file(), OTHER_UID);

    let mut relay = TestRelay::serve(&plaintext_config(&cache, &entra), &[]).await;
    let served = served_token(&relay).await;
    assert!(served["access_token"].as_str().unwrap().starts_with("fake-token-"), "{served}");
    assert_eq!(entra.issued(), 1);
    assert_eq!(relay.terminate().await.code(), Some(0));
    let logs = relay.logs();
    assert!(logs.contains("shared with other users (mode 1777, sticky)"), "{logs}");
    assert!(logs.contains("refused the token cache: it is owned by uid 65534"), "{logs}");
    assert!(logs.contains("mode 0644") && logs.contains("moved it aside"), "{logs}");
    let aside: Vec<_> = names(&dir).into_iter().filter(|n| n.starts_with("tokens.cache.refused-")).collect();
    assert_eq!(aside.len(), 1, "{:?}", names(&dir));
    assert_eq!(std::fs::read(dir.join(&aside[0])).unwrap(), planted, "kept as it was, for inspection");
}

/// A lock file that is a symbolic link is not followed: it is moved aside and the file it
/// points at is left as it was.
#[tokio::test(flavor = "multi_thread")]
async fn a_symlinked_lock_file_is_refused_and_its_target_left_alone() {
    let entra = FakeEntra::start().await;
    let cache = CacheDir::new();
    let dir = shared_directory(&cache);
    let victim = cache.dir.path().join("victim");
    std::fs::write(&victim, "keep me").unwrap();
    chmod(&victim, 0o644);
    let lock = dir.join("tokens.cache.lock");
    std::os::unix::fs::symlink(&victim, &lock).unwrap();

    let toml = cache.config(&entra);
    let mut relay = TestRelay::serve(&toml, &[]).await;
    let token = served_token(&relay).await["access_token"].clone();
    assert_eq!(relay.terminate().await.code(), Some(0));
    let logs = relay.logs();
    assert!(logs.contains("refused the token cache's lock file: it is a symbolic link"), "{logs}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    assert_eq!(std::fs::metadata(&victim).unwrap().permissions().mode() & 0o777, 0o644);
    assert!(std::fs::symlink_metadata(&lock).unwrap().file_type().is_file(), "a fresh lock file");

    // Persistence kept working: a restart during an outage serves the token.
    entra.set_down(true);
    let relay = TestRelay::serve(&toml, &[]).await;
    assert_eq!(served_token(&relay).await["access_token"], token, "{}", relay.logs());
}

/// Another user's lock file, held open, would make every start wait 10 s for the lock and
/// then run without persistence. It is refused before locking: root moves it aside and
/// carries on with a fresh one, at once.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: gives files to another user (chown to uid 65534) (docs/testing.md#privileges)"]
async fn a_held_lock_planted_by_another_user_does_not_stall_start_up() {
    let entra = FakeEntra::start().await;
    let cache = CacheDir::new();
    let dir = shared_directory(&cache);
    let lock = dir.join("tokens.cache.lock");
    let held = std::fs::File::create(&lock).unwrap();
    chmod(&lock, 0o666);
    chown(&lock, OTHER_UID);
    held.lock().unwrap();

    let started = Instant::now();
    let mut relay = TestRelay::serve(&cache.config(&entra), &[]).await;
    served_token(&relay).await;
    let elapsed = started.elapsed();
    assert_eq!(relay.terminate().await.code(), Some(0));
    let logs = relay.logs();
    assert!(logs.contains("refused the token cache's lock file: it is owned by uid 65534"), "{logs}");
    assert!(!logs.contains("held the lock"), "{logs}");
    assert!(elapsed < Duration::from_secs(8), "the first token took {elapsed:?}:\n{logs}");
    assert!(logs.contains("loaded the persistent token cache"), "{logs}");
    assert!(std::fs::read(cache.file()).is_ok(), "the token was persisted");
    drop(held);
}

/// The same held lock against an unprivileged tokenrelay, which may not rename another
/// user's file in a sticky directory: persistence is off for the run, at once, and the error
/// names the file, its owner and mode, and what to do.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root and util-linux setpriv: gives files to another user and runs tokenrelay as uid 65533 (docs/testing.md#privileges)"]
async fn an_unprivileged_relay_runs_without_persistence_when_it_cannot_move_a_planted_lock() {
    let entra = FakeEntra::start().await;
    let cache = CacheDir::new();
    // The relay's user must reach the key file (root's, which a key file may be).
    chmod(cache.dir.path(), 0o755);
    let dir = shared_directory(&cache);
    let lock = dir.join("tokens.cache.lock");
    let held = std::fs::File::create(&lock).unwrap();
    chmod(&lock, 0o666);
    chown(&lock, OTHER_UID);
    held.lock().unwrap();

    // `sh` (as root) opens the relay's own configuration directory to its user, then
    // `setpriv` drops to that user and execs the relay: $1 is the binary, $4 the
    // configuration file (`<binary> serve --config <file> ...`).
    let script = format!(
        "chmod 755 \"$(dirname \"$4\")\" && chmod 644 \"$4\" && \
         exec setpriv --reuid={RELAY_UID} --regid={RELAY_UID} --clear-groups \"$@\""
    );
    let wrapper = ["sh", "-c", &script, "sh"].map(String::from);
    let started = Instant::now();
    let relay = TestRelay::serve_via(&wrapper, &cache.config(&entra), &[]).await;
    served_token(&relay).await;
    let elapsed = started.elapsed();
    let logs = relay.logs();
    assert!(logs.contains("persistent token cache unusable; tokens stay in memory for this run"), "{logs}");
    let lock_name = lock.display().to_string();
    for expected in [
        "refusing the token cache's lock file",
        lock_name.as_str(),
        "owned by uid 65534, not by uid 65533",
        "mode 0666",
        "could not be moved aside",
        "Remove it",
    ] {
        assert!(logs.contains(expected), "{expected:?} missing:\n{logs}");
    }
    assert!(!logs.contains("held the lock"), "{logs}");
    assert!(elapsed < Duration::from_secs(8), "the first token took {elapsed:?}:\n{logs}");
    assert_eq!(names(&dir), ["tokens.cache.lock"], "nothing written, nothing moved");
    drop(held);
}
