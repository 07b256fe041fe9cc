//! `tokenrelay login --device-code` and the `user` credential against a fake authority: the
//! device code grant with its error states, the refresh-token grant with rotation across
//! processes, and the advice to sign in again when the refresh token is refused.

use std::path::{Path, PathBuf};

use base64::Engine;

use crate::support::fake_login::{DEVICE_CODE, FakeLogin, Outage, SignIn, USER_CODE, USER_OID, USER_TENANT, USERNAME};
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

// ---- login --browser ----

/// `login --browser --no-open` running, and the URL it printed for the browser.
struct BrowserLogin {
    child: tokio::process::Child,
    url: String,
    /// stderr up to the URL, and a task collecting the rest.
    stderr: Vec<String>,
    rest: tokio::task::JoinHandle<Vec<String>>,
}

impl BrowserLogin {
    async fn start(laptop: &Laptop, extra: &[&str]) -> Self {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let record = laptop.path("record.json");
        let mut child = command()
            .args(["login", "--browser", "--no-open", "--record", record.to_str().unwrap()])
            .args(extra)
            .args(["--config", laptop.config.to_str().unwrap()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut stderr = Vec::new();
        let url = loop {
            let line = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
                .await
                .expect("the sign-in URL is printed")
                .unwrap()
                .unwrap_or_else(|| panic!("login ended before printing a URL: {stderr:?}"));
            stderr.push(line.clone());
            if line.starts_with("http") {
                break line;
            }
        };
        let rest = tokio::spawn(async move {
            let mut rest = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                rest.push(line);
            }
            rest
        });
        Self { child, url, stderr, rest }
    }

    /// Waits for the login to end: its status, stdout and all of stderr.
    async fn finish(mut self) -> (std::process::ExitStatus, String, String) {
        use tokio::io::AsyncReadExt;
        let status = tokio::time::timeout(std::time::Duration::from_secs(30), self.child.wait())
            .await
            .expect("login ends")
            .unwrap();
        let mut stdout = String::new();
        self.child.stdout.take().unwrap().read_to_string(&mut stdout).await.unwrap();
        self.stderr.extend(self.rest.await.unwrap());
        (status, stdout, self.stderr.join("\n"))
    }
}

/// The browser: no cookies, no redirects followed on its own, so each hop is visible.
fn browser() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// Opens `url` at the authority and returns where it redirects the browser.
async fn authorize(url: &str) -> String {
    let response = browser().get(url).send().await.unwrap();
    assert_eq!(response.status(), 302, "{}", response.text().await.unwrap());
    response.headers()["location"].to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn browser_login_then_silent_tokens() {
    let authority = FakeLogin::start().await;
    let laptop = Laptop::new(&authority);
    let login = BrowserLogin::start(&laptop, &[]).await;
    assert!(
        login.url.starts_with(&format!("{}/organizations/oauth2/v2.0/authorize?", authority.url())),
        "{}",
        login.url
    );

    let location = authorize(&login.url).await;
    let redirect_uri = authority.authorize_requests()[0]["redirect_uri"].clone();
    assert!(location.starts_with(&format!("{redirect_uri}/?code=")), "{location}");
    let port: u16 = redirect_uri.strip_prefix("http://localhost:").unwrap().parse().unwrap();

    // Something else on this machine knocks first, without the state: ignored.
    let stray = browser().get(format!("http://127.0.0.1:{port}/?code=forged&state=guess")).send().await.unwrap();
    assert_eq!(stray.status(), 400);
    let favicon = browser().get(format!("http://127.0.0.1:{port}/favicon.ico")).send().await.unwrap();
    assert_eq!(favicon.status(), 404);

    // The browser follows the redirect to the loopback listener (localhost, as the browser resolves it).
    let page = browser().get(location.replace("http://localhost:", "http://127.0.0.1:")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("Sign-in complete"));

    let (status, stdout, stderr) = login.finish().await;
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains(USERNAME), "{stdout}");
    let grant = authority.seen().last().cloned().unwrap();
    assert_eq!(grant["grant_type"], "authorization_code");
    assert_eq!(grant["redirect_uri"], redirect_uri, "the same redirect URI, exactly");
    assert_eq!(grant["client_info"], "1");
    assert!(!stderr.contains("auth-code-secret") && !stdout.contains("auth-code-secret"), "the code is never printed");

    // Exactly what `login --device-code` leaves: the record, and the refresh token in the cache.
    let record = record(&laptop);
    assert_eq!(record["homeAccountId"], format!("{USER_OID}.{USER_TENANT}"));
    assert_eq!(record["clientId"], "04b07795-8ddb-461a-bbee-02f9e1bf7b46");
    let token = laptop.token("https://vault.azure.net").await;
    assert!(token.status.success(), "{}", text(&token.stderr));
    let last = authority.seen().last().cloned().unwrap();
    assert_eq!((last["grant_type"].as_str(), last["refresh_token"].as_str()), ("refresh_token", "refresh-token-1"));

    // The code was single-use: redeeming it again (as an attacker who saw it would) fails.
    let code = reqwest::Url::parse(&location).unwrap().query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned();
    let replay = browser()
        .post(format!("{}/organizations/oauth2/v2.0/token", authority.url()))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("client_id", "04b07795-8ddb-461a-bbee-02f9e1bf7b46"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 400);
    assert!(replay.text().await.unwrap().contains("AADSTS54005"));
}

#[tokio::test(flavor = "multi_thread")]
async fn browser_login_cancelled_needing_consent_or_timing_out_says_why() {
    for (answer, expected) in [
        (SignIn::Decline, "sign-in was cancelled"),
        (SignIn::NeedsConsent, "an administrator of the tenant must grant"),
    ] {
        let authority = FakeLogin::start().await;
        authority.sign_in(answer);
        let laptop = Laptop::new(&authority);
        let login = BrowserLogin::start(&laptop, &[]).await;
        let location = authorize(&login.url).await;
        let page = browser().get(location.replace("http://localhost:", "http://127.0.0.1:")).send().await.unwrap();
        assert_eq!(page.status(), 200);
        let (status, _, stderr) = login.finish().await;
        assert!(!status.success());
        assert!(stderr.contains(expected), "{answer:?}: {stderr}");
        assert!(!laptop.path("record.json").exists());
        assert!(authority.seen().is_empty(), "nothing is redeemed");
    }

    let authority = FakeLogin::start().await;
    let laptop = Laptop::new(&authority);
    let login = BrowserLogin::start(&laptop, &["--timeout", "1"]).await;
    let (status, _, stderr) = login.finish().await;
    assert!(!status.success());
    assert!(stderr.contains("no sign-in came back within 1 s"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_code_that_expired_is_explained_and_an_echo_never_relays_it() {
    let authority = FakeLogin::start().await;
    authority.code_lifetime(std::time::Duration::ZERO);
    let laptop = Laptop::new(&authority);
    let login = BrowserLogin::start(&laptop, &[]).await;
    let location = authorize(&login.url).await;
    browser().get(location.replace("http://localhost:", "http://127.0.0.1:")).send().await.unwrap();
    let (status, _, stderr) = login.finish().await;
    assert!(!status.success());
    assert!(stderr.contains("AADSTS70008") && stderr.contains("single-use and short-lived"), "{stderr}");

    let authority = FakeLogin::start().await;
    authority.echo_request_bodies();
    let laptop = Laptop::new(&authority);
    let login = BrowserLogin::start(&laptop, &[]).await;
    let location = authorize(&login.url).await;
    browser().get(location.replace("http://localhost:", "http://127.0.0.1:")).send().await.unwrap();
    let (status, _, stderr) = login.finish().await;
    assert!(!status.success());
    assert!(stderr.contains("code=<redacted>") && stderr.contains("code_verifier=<redacted>"), "{stderr}");
    assert!(!stderr.contains("auth-code-secret"), "{stderr}");
}

/// The fake authority holds a browser sign-in to what Entra checks, so the flow above passing
/// means tokenrelay sent what Entra needs: an unregistered redirect URI gets no redirect, and a
/// code is redeemed only with the same redirect URI and the verifier of the challenge.
#[tokio::test(flavor = "multi_thread")]
async fn the_fake_authority_checks_pkce_and_the_redirect_uri_as_entra_does() {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let authority = FakeLogin::start().await;
    let base = format!("{}/organizations/oauth2/v2.0", authority.url());
    let challenge = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"the-verifier"));
    let authorize_url = |redirect: &str| {
        let mut url = reqwest::Url::parse(&format!("{base}/authorize")).unwrap();
        url.query_pairs_mut()
            .append_pair("client_id", "app")
            .append_pair("response_type", "code")
            .append_pair("redirect_uri", redirect)
            .append_pair("scope", "openid offline_access")
            .append_pair("state", "s")
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        url.to_string()
    };
    let unregistered = browser().get(authorize_url("http://evil.example:5000")).send().await.unwrap();
    assert_eq!(unregistered.status(), 400, "no redirect to an unregistered URI");

    let redeem = async |code: &str, redirect: &str, verifier: &str| {
        let response = browser()
            .post(format!("{base}/token"))
            .form(&[
                ("grant_type", "authorization_code"),
                ("client_id", "app"),
                ("code", code),
                ("redirect_uri", redirect),
                ("code_verifier", verifier),
            ])
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    };
    let code_of = |location: String| {
        reqwest::Url::parse(&location).unwrap().query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned()
    };
    let code = code_of(authorize(&authorize_url("http://localhost:5000")).await);
    let (status, body) = redeem(&code, "http://localhost:5000", "another-verifier").await;
    assert_eq!(status, 400);
    assert!(body.contains("AADSTS501481"), "{body}");
    let code = code_of(authorize(&authorize_url("http://localhost:5000")).await);
    let (status, _) = redeem(&code, "http://localhost:5001", "the-verifier").await;
    assert_eq!(status, 400, "the redirect URI must be the same");
    let code = code_of(authorize(&authorize_url("http://localhost:5000")).await);
    let (status, body) = redeem(&code, "http://localhost:5000", "the-verifier").await;
    assert_eq!(status, 200, "{body}");
}
