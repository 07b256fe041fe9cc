//! Who may get tokens: the `Host` a token request names (the DNS rebinding guard), requests
//! from a tokenrelay's own `managed_identity` link (loops), the App Service header secret's
//! length and refusals, and the request head's limits.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Child;

use crate::support::fake_imds::FakeImds;
use crate::support::{
    FakeEntra, HEADER_SECRET, TestConfig, TestRelay, VAULT, command, credential, eventually, json, sample,
};

const IMDS_PATH: &str = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net";
const APP_SERVICE_PATH: &str = "/msi/token?api-version=2019-08-01&resource=https://vault.azure.net";

/// An answer read off the socket: status code and body.
struct Raw {
    status: u16,
    body: String,
}

impl Raw {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Sends `head` (request line and header lines, without the blank line) with
/// `Connection: close` and reads the whole answer. Raw, so that `Host` is exactly what the
/// test says (or absent).
async fn raw(base_url: &str, head: &str) -> Raw {
    let addr = base_url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(format!("{head}\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer);
    let status = answer.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body).to_owned();
    Raw { status, body }
}

/// An IMDS request for `Host: host`.
async fn imds_for_host(relay: &TestRelay, host: &str) -> Raw {
    raw(&relay.base_url, &format!("GET {IMDS_PATH} HTTP/1.1\r\nHost: {host}\r\nMetadata: true")).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_host_is_refused_on_both_flavours_with_the_setting_named() {
    let entra = FakeEntra::start().await;
    let relay = TestRelay::serve(&TestConfig::client_secret(&entra), &[]).await;

    let imds = imds_for_host(&relay, "rebound.attacker.example:8080").await;
    assert_eq!(imds.status, 400, "{}", imds.body);
    let body = imds.json();
    assert_eq!(body["error"], "invalid_request");
    let description = body["error_description"].as_str().unwrap();
    assert!(
        description.contains("\"rebound.attacker.example:8080\"") && description.contains("server.allowed_hosts"),
        "{description}"
    );

    // The App Service flavour refuses it too, even with the right secret, in its own format.
    let app_service = raw(
        &relay.base_url,
        &format!(
            "GET {APP_SERVICE_PATH} HTTP/1.1\r\nHost: rebound.attacker.example\r\nX-IDENTITY-HEADER: {HEADER_SECRET}"
        ),
    )
    .await;
    assert_eq!(app_service.status, 400, "{}", app_service.body);
    let body = app_service.json();
    assert_eq!(body["statusCode"], 400);
    assert!(body["message"].as_str().unwrap().contains("server.allowed_hosts"), "{body}");

    // Two Host headers, one of them local, are refused too.
    let two = raw(
        &relay.base_url,
        &format!("GET {IMDS_PATH} HTTP/1.1\r\nHost: localhost\r\nHost: attacker.example\r\nMetadata: true"),
    )
    .await;
    assert_eq!(two.status, 400, "{}", two.body);
    assert_eq!(entra.requests(), 0, "no refused request reaches the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn loopback_localhost_and_the_imds_address_are_served() {
    let entra = FakeEntra::start().await;
    let relay = TestRelay::serve(&TestConfig::client_secret(&entra), &[]).await;
    let port = relay.base_url.rsplit(':').next().unwrap().to_owned();
    for host in [
        format!("127.0.0.1:{port}"),
        "127.0.0.1".to_owned(),
        "127.9.9.9".to_owned(),
        format!("[::1]:{port}"),
        "[::ffff:127.0.0.1]".to_owned(),
        format!("localhost:{port}"),
        "LocalHost.".to_owned(),
        "169.254.169.254".to_owned(),
        "169.254.169.254:80".to_owned(),
    ] {
        let answer = imds_for_host(&relay, &host).await;
        assert_eq!(answer.status, 200, "{host}: {}", answer.body);
    }
    // Without Host (HTTP/1.0): no browser sends that, so it is served.
    let no_host = raw(&relay.base_url, &format!("GET {IMDS_PATH} HTTP/1.0\r\nMetadata: true")).await;
    assert_eq!(no_host.status, 200, "{}", no_host.body);
    // Only token endpoints are guarded: health answers any Host.
    let health = raw(&relay.base_url, "GET /healthz HTTP/1.1\r\nHost: attacker.example").await;
    assert_eq!(health.status, 200);
    assert_eq!(entra.requests(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn names_in_allowed_hosts_are_served_from_the_file_or_the_environment() {
    let entra = FakeEntra::start().await;
    let toml =
        TestConfig::client_secret(&entra).set("server.allowed_hosts", vec!["host.docker.internal", "tokenrelay"]);
    let relay = TestRelay::serve(&toml, &[]).await;
    for host in ["host.docker.internal:8080", "Host.Docker.Internal.", "tokenrelay:8080"] {
        let answer = imds_for_host(&relay, host).await;
        assert_eq!(answer.status, 200, "{host}: {}", answer.body);
    }
    assert_eq!(imds_for_host(&relay, "tokenrelay2:8080").await.status, 400);

    let relay = TestRelay::serve_with_env(
        &TestConfig::client_secret(&entra),
        &[],
        &[("TOKENRELAY_SERVER__ALLOWED_HOSTS", "host.docker.internal, relay")],
    )
    .await;
    assert_eq!(imds_for_host(&relay, "relay:8080").await.status, 200);
    assert_eq!(imds_for_host(&relay, "host.docker.internal").await.status, 200);
    assert_eq!(imds_for_host(&relay, "attacker.example").await.status, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_from_a_managed_identity_link_is_refused_as_a_loop() {
    let entra = FakeEntra::start().await;
    let relay = TestRelay::serve(&TestConfig::client_secret(&entra), &[]).await;
    for path in [IMDS_PATH, APP_SERVICE_PATH] {
        let response = relay
            .get(path, &[("Metadata", "true"), ("X-IDENTITY-HEADER", HEADER_SECRET), ("X-Tokenrelay-Hop", "1")])
            .await;
        assert_eq!(response.status(), 508, "{path}");
        let body = json(response).await;
        assert_eq!(body["error"], "loop_detected");
        assert!(body["error_description"].as_str().unwrap().contains("managed_identity"), "{body}");
    }
    assert_eq!(entra.requests(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn managed_identity_requests_carry_the_hop_header() {
    let entra = FakeEntra::start().await;
    let imds = FakeImds::start().await;
    let toml = TestConfig::client_secret(&entra)
        .credentials([credential("managed_identity").with("endpoint", imds.imds_endpoint())]);
    let relay = TestRelay::serve(&toml, &[]).await;
    assert_eq!(relay.imds(VAULT).await.status(), 200);
    assert_eq!(imds.seen()[0].headers["x-tokenrelay-hop"], "1");
}

/// Configuration for a relay whose only credential is a managed identity at `endpoint`.
fn managed_identity_config(endpoint: &str) -> String {
    format!(
        "[server]\nidentity_header = \"{HEADER_SECRET}\"\nrequest_timeout_secs = 60\n[upstream]\ntimeout_secs = 30\n\
         [log]\nformat = \"text\"\n[[identities]]\nname = \"app\"\nclient_id = \"mi-client\"\n\
         credentials = [{{ kind = \"managed_identity\", endpoint = \"{endpoint}/metadata/identity/oauth2/token\", \
         client_id = \"mi-client\", max_retries = 5 }}]\n"
    )
}

/// A free loopback port: bound, read and released (a relay binds it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `tokenrelay serve` on a given port (TestRelay always picks its own), running until dropped.
async fn serve_on(port: u16, toml: &str) -> (Child, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tokenrelay.toml");
    std::fs::write(&config, toml).unwrap();
    let mut child = command()
        .args(["serve", "--config", config.to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.unwrap().unwrap();
    assert!(first.is_some_and(|line| line.contains("listening on")), "the relay on port {port} started");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_relays_pointing_at_each_other_fail_at_once_naming_the_loop() {
    // A's link leads to B and B's to A: without the hop header, each request would wait on
    // the other's (coalesced) fetch until the 60 s request timeout.
    let port_a = free_port();
    let b = TestRelay::serve(&managed_identity_config(&format!("http://127.0.0.1:{port_a}")), &[]).await;
    let (_a, _dir) = serve_on(port_a, &managed_identity_config(&b.base_url)).await;
    let url_a = format!("http://127.0.0.1:{port_a}");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    for base in [url_a.as_str(), b.base_url.as_str()] {
        let started = Instant::now();
        let response = client.get(format!("{base}{IMDS_PATH}")).header("Metadata", "true").send().await.unwrap();
        let elapsed = started.elapsed();
        assert_eq!(response.status(), 400, "{base}");
        let description = json(response).await["error_description"].as_str().unwrap().to_owned();
        assert!(description.contains("loop") && description.contains("508"), "{base}: {description}");
        assert!(elapsed < Duration::from_secs(20), "{base} answered after {elapsed:?}");
    }
    assert!(b.logs().contains("loop_detected"), "the relay that refused logged why:\n{}", b.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_managed_identity_endpoint_spelling_the_own_listener_stops_start_up() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tokenrelay.toml");
    for host in ["0.0.0.0", "localhost.", "[::ffff:127.0.0.1]"] {
        std::fs::write(&config, managed_identity_config(&format!("http://{host}:{port}"))).unwrap();
        let output = command()
            .args(["serve", "--config", config.to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}")])
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{host}: {stderr}");
        assert!(stderr.contains("own listener") && stderr.contains("loop"), "{host}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_short_identity_header_stops_start_up_naming_its_length() {
    let output = command()
        .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--identity-header", "abc1"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("server.identity_header") && stderr.contains("4 bytes long"), "{stderr}");
    assert!(stderr.contains("at least 16"), "{stderr}");
    assert!(!stderr.contains("abc1"), "the value itself is never printed: {stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_header_secrets_are_counted() {
    let entra = FakeEntra::start().await;
    let relay = TestRelay::serve(&TestConfig::client_secret(&entra), &[]).await;
    let text = relay.get("/metrics", &[]).await.text().await.unwrap();
    let metric = "tokenrelay_identity_header_refused_total";
    assert_eq!(sample(&text, metric, &["reason=\"mismatch\""]), Some(0.0), "present before any guess:\n{text}");
    for guess in ["wrong", "test-identity-header-secreT", ""] {
        assert_eq!(relay.get(APP_SERVICE_PATH, &[("X-IDENTITY-HEADER", guess)]).await.status(), 401);
    }
    assert_eq!(relay.get(APP_SERVICE_PATH, &[]).await.status(), 401);
    assert_eq!(relay.app_service("resource=https://vault.azure.net").await.status(), 200);
    // /metrics serves one rendering for up to a second: scrape until a newer one is served.
    eventually("a rendering with the refusals", async || {
        sample(&relay.metrics().await, metric, &["reason=\"missing\""]) == Some(1.0)
    })
    .await;
    let text = relay.metrics().await;
    assert_eq!(sample(&text, metric, &["reason=\"mismatch\""]), Some(3.0), "{text}");
    assert_eq!(sample(&text, metric, &["reason=\"missing\""]), Some(1.0), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_head_of_more_than_100_fields_is_refused_with_431() {
    let entra = FakeEntra::start().await;
    let relay = TestRelay::serve(&TestConfig::client_secret(&entra), &[]).await;
    // `Connection: close` is added by `raw`: Host + Metadata + Connection + the rest.
    let head = |fields: usize| {
        let extra: String = (0..fields - 3).map(|i| format!("\r\nX-Field-{i}: {i}")).collect();
        format!("GET {IMDS_PATH} HTTP/1.1\r\nHost: localhost\r\nMetadata: true{extra}")
    };
    assert_eq!(raw(&relay.base_url, &head(100)).await.status, 200);
    assert_eq!(raw(&relay.base_url, &head(101)).await.status, 431);
}

#[tokio::test(flavor = "multi_thread")]
async fn x_forwarded_for_is_refused_on_the_imds_flavour_only() {
    let entra = FakeEntra::start().await;
    let relay = TestRelay::serve(&TestConfig::client_secret(&entra), &[]).await;
    let forwarded = [("X-Forwarded-For", "10.0.0.1")];
    let imds = relay.get(IMDS_PATH, &[("Metadata", "true"), forwarded[0]]).await;
    assert_eq!(imds.status(), 400);
    let app_service = relay.get(APP_SERVICE_PATH, &[("X-IDENTITY-HEADER", HEADER_SECRET), forwarded[0]]).await;
    assert_eq!(app_service.status(), 200);
}
