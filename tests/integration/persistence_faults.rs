//! The persistence directory read-only or full: tokens keep being served (from memory and
//! from the authority), the failed write is logged and counted, the good file is left as it
//! was with nothing half-written beside it, and once the directory is usable again writes
//! resume and a restart during an outage serves what was persisted.
//!
//! Both faults are made on a small tmpfs in a private mount namespace (see
//! `support::private_mount` for why), which needs privileges: the tests are ignored by a
//! plain `cargo test` and run with `--ignored` where the privileges are there (CI runs them;
//! docs/testing.md says how).

use std::path::Path;

use crate::support::{CacheDir, FakeEntra, GRAPH, PrivateMount, STORAGE, TestRelay, VAULT, eventually, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// The file system is remounted read-only, as a kubelet does with a failing volume.
    ReadOnly,
    /// The file system is full.
    Full,
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a private mount namespace: root or CAP_SYS_ADMIN, and util-linux unshare and nsenter (docs/testing.md#privileges)"]
async fn a_read_only_cache_directory_loses_no_token_and_writes_resume_when_writable() {
    survive(Fault::ReadOnly, "Read-only file system").await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a private mount namespace: root or CAP_SYS_ADMIN, and util-linux unshare and nsenter (docs/testing.md#privileges)"]
async fn a_full_cache_directory_loses_no_token_and_writes_resume_when_space_returns() {
    survive(Fault::Full, "No space left on device").await;
}

/// Runs one fault from a good cache file to a restart after it has passed; `reason` is the
/// operating system's words for it, which the log must carry.
async fn survive(fault: Fault, reason: &str) {
    let entra = FakeEntra::start().await;
    let cache = CacheDir::new();
    let dir = cache.file().parent().unwrap().to_owned();
    std::fs::create_dir(&dir).unwrap();
    let mut mount = PrivateMount::new(&dir, "256k").await.unwrap_or_else(|why| panic!("{why}"));
    let toml = cache.config(&entra);
    let mut relay = TestRelay::serve_via(&mount.wrapper(), &toml, &[]).await;
    let file = mount.outside(&cache.file());

    // A good file to start from.
    let vault = token(&relay, VAULT).await;
    eventually("the first write", async || writes(&relay, "success").await >= 1).await;
    let good = store_bytes(&file);

    let filler = match fault {
        Fault::ReadOnly => {
            mount.set_read_only(true).await;
            None
        }
        Fault::Full => Some(mount.fill("filler")),
    };
    let storage = token(&relay, STORAGE).await;
    assert_eq!(token(&relay, VAULT).await, vault, "served from memory");
    eventually("the failed write is counted", async || writes(&relay, "failure").await >= 1).await;
    let logs = relay.logs();
    assert!(logs.contains("cannot persist tokens") && logs.contains(reason), "{logs}");
    assert_eq!(store_bytes(&file), good, "the good file and its journal are left as they were");
    assert_no_debris(&mount.outside(&dir));

    match filler {
        None => mount.set_read_only(false).await,
        Some(filler) => std::fs::remove_file(filler).unwrap(),
    }
    let successes = writes(&relay, "success").await;
    let graph = token(&relay, GRAPH).await;
    eventually("a later write succeeds", async || writes(&relay, "success").await > successes).await;
    assert_ne!(store_bytes(&file), good, "the store was written");
    assert_no_debris(&mount.outside(&dir));
    assert_eq!(relay.terminate().await.code(), Some(0), "{}", relay.logs());
    assert!(!relay.logs().contains("panicked"), "{}", relay.logs());

    // A restart during an outage serves every token, the one fetched during the fault too.
    entra.set_down(true);
    let requests = entra.requests();
    let restarted = TestRelay::serve_via(&mount.wrapper(), &toml, &[]).await;
    assert_eq!(token(&restarted, VAULT).await, vault, "{}", restarted.logs());
    assert_eq!(token(&restarted, STORAGE).await, storage, "{}", restarted.logs());
    assert_eq!(token(&restarted, GRAPH).await, graph, "{}", restarted.logs());
    assert_eq!(entra.requests(), requests, "all from the persisted cache");
}

/// A token for `query`, which must be served.
async fn token(relay: &TestRelay, query: &str) -> String {
    let response = relay.imds(query).await;
    assert_eq!(response.status(), 200, "{query}:\n{}", relay.logs());
    json(response).await["access_token"].as_str().unwrap().to_owned()
}

/// `tokenrelay_persistence_writes_total{result}` on `/metrics` (0 before the first).
async fn writes(relay: &TestRelay, result: &str) -> u64 {
    let text = relay.get("/metrics", &[]).await.text().await.unwrap();
    let series = format!("tokenrelay_persistence_writes_total{{result=\"{result}\"}} ");
    text.lines().find_map(|line| line.strip_prefix(&series)).map_or(0, |n| n.trim().parse().unwrap())
}

/// The cache file's bytes followed by its journal's (none before the first append).
fn store_bytes(file: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(file).expect("the cache file was written");
    bytes.extend(std::fs::read(tokenrelay::store::journal::journal_path(file)).unwrap_or_default());
    bytes
}

/// No temporary file or moved-aside copy beside the cache file.
fn assert_no_debris(dir: &Path) {
    let names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!names.iter().any(|n| n.contains(".tmp-") || n.contains(".unreadable-")), "{names:?}");
}
