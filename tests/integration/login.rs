//! `tokenrelay login --device-code` and the `user` credential against a fake authority: the
//! device code grant with its error states, the refresh-token grant with rotation across
//! processes, and the advice to sign in again when the refresh token is refused.

use std::path::{Path, PathBuf};

use base64::Engine;

use crate::support::fake_login::{DEVICE_CODE, FakeLogin, Outage, USER_CODE, USER_OID, USER_TENANT, USERNAME};
use crate::support::{TestConfig, command, utf8};

/// A directory with a key, a configuration using a `user` credential, and helpers to run
/// the binary against it.
struct Laptop {
    dir: tempfile::TempDir,
    config: PathBuf,
    authority: String,
}

impl Laptop {
    fn new(authority: &FakeLogin) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key =
            base64::engine::general_purpose::STANDARD.encode(std::array::from_fn::<u8, 32, _>(|_| fastrand::u8(..)));
        std::fs::write(dir.path().join("key"), key).unwrap();
        let config = dir.path().join("tokenrelay.toml");
        let laptop = Self { dir, config, authority: authority.url() };
        laptop.configure(&laptop.config());
        laptop
    }

    /// Persistence encrypted with the directory's key, and one identity signed in as a user.
    fn config(&self) -> TestConfig {
        TestConfig::parse(&format!(
            r#"
[server]
identity_header = "h-0123456789abcdef"

[upstream]
authority_host = "{}"

[log]
format = "text"

[cache.persistence]
enabled = true
path = "{}"
key_file = "{}"

[[identities]]
name = "me"
client_id = "11111111-2222-4333-8444-555555555555"
credentials = [{{ kind = "user", authentication_record = "{}" }}]
"#,
            self.authority,
            utf8(&self.path("cache/tokens.cache")),
            utf8(&self.path("key")),
            utf8(&self.path("record.json")),
        ))
    }

    /// Writes `config` as the configuration file every command here uses.
    fn configure(&self, config: &TestConfig) {
        std::fs::write(&self.config, config.to_string()).unwrap();
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    async fn run(&self, args: &[&str]) -> std::process::Output {
        command().args(args).args(["--config", self.config.to_str().unwrap()]).output().await.unwrap()
    }

    async fn login(&self) -> std::process::Output {
        self.run(&["login", "--device-code", "--record", self.path("record.json").to_str().unwrap()]).await
    }

    async fn token(&self, resource: &str) -> std::process::Output {
        self.run(&["token", "--resource", resource]).await
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn contains(file: &Path, needle: &str) -> bool {
    std::fs::read(file).unwrap().windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread")]
async fn device_code_login_then_silent_tokens_across_restarts() {
    let authority = FakeLogin::start().await;
    let laptop = Laptop::new(&authority);

    // Before signing in, the user credential says what to do.
    let before = laptop.token("https://vault.azure.net").await;
    assert_eq!(before.status.code(), Some(64));
    assert!(text(&before.stderr).contains("tokenrelay login --device-code"), "{}", text(&before.stderr));

    authority.script_polls(&["authorization_pending"]);
    let login = laptop.login().await;
    assert!(login.status.success(), "{}", text(&login.stderr));
    assert!(text(&login.stderr).contains(USER_CODE), "the code is shown: {}", text(&login.stderr));
    assert!(text(&login.stdout).contains(USERNAME));
    let polls: Vec<_> = authority.seen().iter().map(|f| f["grant_type"].clone()).collect();
    assert_eq!(polls.len(), 2, "one pending answer, then success");
    // As MSAL asks: a refresh token, an ID token with the account's claims, and client_info.
    let scopes = authority.device_requests()[0]["scope"].clone();
    for scope in ["openid", "profile", "offline_access", "https://management.azure.com/.default"] {
        assert!(scopes.split(' ').any(|s| s == scope), "{scope} missing from {scopes:?}");
    }
    assert!(authority.seen().iter().all(|f| f.get("client_info").map(String::as_str) == Some("1")));

    // The record: the SDKs' field names, nothing secret.
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(laptop.path("record.json")).unwrap()).unwrap();
    assert_eq!(record["homeAccountId"], format!("{USER_OID}.{USER_TENANT}"));
    assert_eq!(record["tenantId"], USER_TENANT);
    assert_eq!(record["username"], USERNAME);
    assert_eq!(record["clientId"], "04b07795-8ddb-461a-bbee-02f9e1bf7b46");
    assert_eq!(record["version"], "1.0");
    let raw = std::fs::read_to_string(laptop.path("record.json")).unwrap();
    assert!(!raw.contains("refresh-token"));
    // The refresh token is in the cache file, encrypted.
    let cache = laptop.path("cache/tokens.cache");
    assert!(!contains(&cache, "refresh-token-1"));

    // A new process obtains a token silently with the stored refresh token ...
    let first = laptop.token("https://vault.azure.net").await;
    assert!(first.status.success(), "{}", text(&first.stderr));
    let body: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(body["access_token"], "user-token-2-for-https://vault.azure.net");
    let last = authority.seen().last().cloned().unwrap();
    assert_eq!((last["grant_type"].as_str(), last["refresh_token"].as_str()), ("refresh_token", "refresh-token-1"));
    assert!(last["scope"].split(' ').any(|s| s == "offline_access"), "else no rotated refresh token comes back");
    assert_eq!(last["client_info"], "1");

    // ... and the next one uses the rotated refresh token the first stored.
    let second = laptop.token("https://storage.azure.com").await;
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert_eq!(authority.seen().last().unwrap()["refresh_token"], "refresh-token-2");
    assert!(!contains(&cache, "refresh-token-3"));

    // `cache list` names the sign-in, never its refresh token.
    let listing = laptop.run(&["cache", "list"]).await;
    assert!(listing.status.success(), "{}", text(&listing.stderr));
    assert!(text(&listing.stdout).contains(&format!("sign-in {USER_OID}.{USER_TENANT}")), "{}", text(&listing.stdout));
    assert!(!text(&listing.stdout).contains("refresh-token-"));

    // Revoked: the error says to sign in again.
    authority.revoke();
    let refused = laptop.token("https://graph.microsoft.com").await;
    assert!(!refused.status.success());
    let stderr = text(&refused.stderr);
    assert!(stderr.contains("invalid_grant") && stderr.contains("tokenrelay login --device-code"), "{stderr}");
    assert!(!stderr.contains("refresh-token-"), "never the refresh token: {stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn device_code_errors_end_the_login_with_a_reason() {
    for (script, expected) in [
        (vec!["expired_token"], "expired"),
        (vec!["authorization_declined"], "declined"),
        (vec!["bad_verification_code"], "bad_verification_code"),
    ] {
        let authority = FakeLogin::start().await;
        let laptop = Laptop::new(&authority);
        authority.script_polls(&script);
        let login = laptop.login().await;
        assert!(!login.status.success());
        let stderr = text(&login.stderr);
        assert!(stderr.contains(expected), "{script:?}: {stderr}");
        assert!(!laptop.path("record.json").exists(), "no record without a sign-in");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_down_lengthens_the_polling_interval_and_the_login_succeeds() {
    let authority = FakeLogin::start().await;
    let laptop = Laptop::new(&authority);
    authority.script_polls(&["slow_down", "authorization_pending"]);
    let login = laptop.login().await;
    assert!(login.status.success(), "{}", text(&login.stderr));
    assert_eq!(authority.seen().len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn login_refuses_to_keep_a_refresh_token_without_protected_storage() {
    let authority = FakeLogin::start().await;
    let laptop = Laptop::new(&authority);
    laptop.configure(&laptop.config().remove("cache.persistence.key_file").set("cache.persistence.backend", "file"));
    let login = laptop.login().await;
    let stderr = text(&login.stderr);
    if stderr.contains("key in the kernel keyutils keyring") || login.status.success() {
        return; // this machine's keyring works, so the refresh token is encrypted with its key
    }
    assert!(!login.status.success());
    assert!(stderr.contains("persistent cache") && stderr.contains("key_file"), "{stderr}");
    assert!(authority.seen().is_empty(), "nothing was asked of the authority");
}

/// Reads the record a login wrote.
fn record(laptop: &Laptop) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(laptop.path("record.json")).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn without_client_info_the_account_is_named_by_the_id_token() {
    // An authority that never sends client_info (Entra sends it only when asked): the
    // account comes from the ID token's oid, tid and preferred_username.
    let authority = FakeLogin::start().await;
    authority.withhold_client_info();
    let laptop = Laptop::new(&authority);
    let login = laptop.login().await;
    assert!(login.status.success(), "{}", text(&login.stderr));
    let record = record(&laptop);
    assert_eq!(record["homeAccountId"], format!("{USER_OID}.{USER_TENANT}"));
    assert_eq!((record["tenantId"].as_str(), record["username"].as_str()), (Some(USER_TENANT), Some(USERNAME)));
    // The sign-in is usable: the user credential finds the refresh token under that account.
    let token = laptop.token("https://vault.azure.net").await;
    assert!(token.status.success(), "{}", text(&token.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_in_and_refresh_ride_out_throttling_and_outages() {
    // Every grant goes through the one Entra client: a 503 or a 429 with Retry-After is
    // retried rather than ending a sign-in the user has just completed.
    let authority = FakeLogin::start().await;
    let laptop = Laptop::new(&authority);
    authority.script_outages(&[Outage::ServerError(503), Outage::Throttle { retry_after_secs: 0 }]);
    let login = laptop.login().await;
    assert!(login.status.success(), "{}", text(&login.stderr));
    assert_eq!(authority.seen().len(), 3, "two failures retried, then the sign-in");

    authority.script_outages(&[Outage::Throttle { retry_after_secs: 0 }]);
    let token = laptop.token("https://vault.azure.net").await;
    assert!(token.status.success(), "{}", text(&token.stderr));
    assert_eq!(authority.seen().len(), 5);
    assert_eq!(authority.seen()[3]["refresh_token"], authority.seen()[4]["refresh_token"], "the same grant, retried");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_authority_echoing_requests_never_gets_the_device_code_or_refresh_token_relayed() {
    // The poll carries the device code: an echo of it is scrubbed, and the AADSTS code read.
    let authority = FakeLogin::start().await;
    let laptop = Laptop::new(&authority);
    authority.echo_request_bodies();
    let login = laptop.login().await;
    assert!(!login.status.success());
    let stderr = text(&login.stderr);
    assert!(stderr.contains("device_code=<redacted>") && stderr.contains("AADSTS900144"), "{stderr}");
    assert!(!stderr.contains(DEVICE_CODE), "{stderr}");

    // The refresh grant carries the refresh token from the store.
    let authority = FakeLogin::start().await;
    let laptop = Laptop::new(&authority);
    let login = laptop.login().await;
    assert!(login.status.success(), "{}", text(&login.stderr));
    authority.echo_request_bodies();
    let token = laptop.token("https://vault.azure.net").await;
    assert!(!token.status.success());
    let stderr = text(&token.stderr);
    assert!(stderr.contains("refresh_token=<redacted>"), "{stderr}");
    assert!(!stderr.contains("refresh-token-"), "{stderr}");
}
