//! Observability: metrics move with requests, logs never carry tokens or secrets, the log has
//! one line per upstream exchange, refusal and state change (and per request only when asked),
//! and traces reach an OTLP/HTTP receiver with the caller's trace id.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use serde_json::Value;
use tokenrelay::secret::Secret;

use crate::support::fake_server::FakeServer;
use crate::support::{FakeEntra, HEADER_SECRET, TestConfig, TestRelay, VAULT, eventually, fake_entra, json, sample};

#[tokio::test(flavor = "multi_thread")]
async fn requests_move_the_right_counters() {
    let entra = FakeEntra::start().await;
    let relay = TestRelay::serve(&TestConfig::client_secret(&entra), &[]).await;
    for _ in 0..3 {
        assert_eq!(relay.imds(VAULT).await.status(), 200);
    }
    assert_eq!(relay.app_service("resource=https://vault.azure.net").await.status(), 200);
    assert_eq!(relay.get("/msi/token?resource=r", &[("X-IDENTITY-HEADER", "wrong")]).await.status(), 401);

    let response = relay.get("/metrics", &[]).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = response.text().await.unwrap();
    let expect = |name: &str, labels: &[&str], value: f64| {
        assert_eq!(sample(&text, name, labels), Some(value), "{name}{labels:?} in:\n{text}");
    };
    expect("tokenrelay_requests_total", &["flavour=\"imds\"", "status=\"200\""], 3.0);
    expect("tokenrelay_requests_total", &["flavour=\"app_service\"", "status=\"200\""], 1.0);
    expect("tokenrelay_requests_total", &["flavour=\"app_service\"", "status=\"401\""], 1.0);
    expect("tokenrelay_cache_lookups_total", &["outcome=\"miss\""], 1.0);
    expect("tokenrelay_cache_lookups_total", &["outcome=\"hit\""], 3.0);
    expect("tokenrelay_upstream_requests_total", &["credential=\"client_secret\"", "outcome=\"success\""], 1.0);
    expect("tokenrelay_upstream_request_duration_seconds_count", &["credential=\"client_secret\""], 1.0);
    expect("tokenrelay_cache_entries", &["identity=\"app\""], 1.0);
    expect("tokenrelay_build_info", &["version="], 1.0);
    expect("tokenrelay_log_lines_dropped_total", &[], 0.0);
    let expires_in = sample(&text, "tokenrelay_token_expires_in_seconds", &["resource=\"https://vault.azure.net\""])
        .expect("a gauge per cached token");
    assert!((3500.0..=3599.0).contains(&expires_in), "{expires_in}");
    assert!(!text.contains("fake-token-"), "metrics never carry a token");
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_refusals_are_counted_by_aadsts_code() {
    let entra = FakeEntra::start().await;
    let toml = TestConfig::client_secret(&entra).replace("identities.0.credentials.0.secret", "not-the-secret");
    let relay = TestRelay::serve(&toml, &[]).await;
    assert_eq!(relay.imds(VAULT).await.status(), 400);
    let text = relay.metrics().await;
    assert_eq!(sample(&text, "tokenrelay_upstream_errors_total", &["aadsts=\"7000215\""]), Some(1.0), "{text}");
    assert_eq!(sample(&text, "tokenrelay_upstream_requests_total", &["outcome=\"rejected\""]), Some(1.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn no_token_or_secret_reaches_the_logs_at_any_level() {
    let entra = FakeEntra::start().await;
    // Every request logged, so that the served-request lines are checked too.
    let toml = TestConfig::client_secret(&entra).set("log.requests", "all").replace("log.level", "trace");
    let relay = TestRelay::serve(&toml, &[]).await;
    let body = json(relay.imds(VAULT).await).await;
    let token = body["access_token"].as_str().unwrap().to_owned();
    relay.app_service("resource=https://vault.azure.net").await;
    relay.get("/msi/token?resource=r", &[("X-IDENTITY-HEADER", "wrong-header-value")]).await;
    let logs = relay.logs();
    assert!(
        logs.contains("token request") && logs.contains("token request refused"),
        "the request log is there: {logs}"
    );
    for secret in [token.as_str(), fake_entra::CLIENT_SECRET, HEADER_SECRET, "wrong-header-value"] {
        assert!(!logs.contains(secret), "{secret:?} leaked into the logs");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn traces_reach_an_otlp_receiver_and_continue_the_callers_trace() {
    // A stub OTLP/HTTP receiver: keeps every export body.
    let received: Arc<Mutex<Vec<Bytes>>> = Arc::default();
    let sink = received.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(body);
                "{}"
            }
        }),
    );
    let receiver = FakeServer::serve(app).await;

    let entra = FakeEntra::start().await;
    let toml = TestConfig::client_secret(&entra).set("telemetry.otlp_endpoint", receiver.url());
    let mut relay = TestRelay::serve(&toml, &[]).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let response = relay
        .get(
            &format!("/metadata/identity/oauth2/token?{VAULT}"),
            &[("Metadata", "true"), ("traceparent", &traceparent)],
        )
        .await;
    assert_eq!(response.status(), 200);
    // Shutting down flushes the batch exporter.
    assert_eq!(relay.terminate().await.code(), Some(0), "{}", relay.logs());

    let bodies = received.lock().unwrap().clone();
    let all: Vec<u8> = bodies.iter().flat_map(|b| b.iter().copied()).collect();
    let contains = |needle: &[u8]| all.windows(needle.len()).any(|w| w == needle);
    // The request span is named after its route (`otel.name`), the others after their step.
    for span in ["GET /metadata/identity/oauth2/token", "cache_lookup", "upstream_request"] {
        assert!(contains(span.as_bytes()), "span {span} was exported ({} bodies)", bodies.len());
    }
    let trace_id_bytes: Vec<u8> =
        (0..16).map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).unwrap()).collect();
    assert!(contains(&trace_id_bytes), "the caller's trace id is kept");
    assert!(!contains(b"fake-token-"), "spans never carry a token");
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_can_be_turned_off() {
    let entra = FakeEntra::start().await;
    let toml = TestConfig::client_secret(&entra).set("telemetry.metrics", false);
    let relay = TestRelay::serve(&toml, &[]).await;
    assert_eq!(relay.get("/metrics", &[]).await.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_listener_serves_probes_and_metrics_but_never_tokens() {
    let entra = FakeEntra::start().await;
    let toml = TestConfig::client_secret(&entra).set("server.admin_listen", "127.0.0.1:0");
    let relay = TestRelay::serve_lines(&toml, &[], 2).await;
    let admin = relay.stdout_lines[1].split_whitespace().find(|w| w.starts_with("http://")).unwrap().to_owned();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    assert_eq!(client.get(format!("{admin}/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(client.get(format!("{admin}/readyz")).send().await.unwrap().status(), 200);
    assert!(
        client
            .get(format!("{admin}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .contains("tokenrelay_build_info")
    );
    let token = client
        .get(format!("{admin}/metadata/identity/oauth2/token?{VAULT}"))
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(token.status(), 404, "no token endpoint on the admin listener");
    let app_service = client
        .get(format!("{admin}/msi/token?resource=r"))
        .header("X-IDENTITY-HEADER", HEADER_SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(app_service.status(), 404);
    assert_eq!(entra.requests(), 0);
}

/// `config` logging JSON lines (the format a pod writes, through the non-blocking writer) at
/// `info`, so that no debug line falls between the lines a test counts.
fn json_logs(config: TestConfig) -> TestConfig {
    config.replace("log.format", "json").replace("log.level", "info")
}

/// Every complete JSON log line written so far (the writer thread may be half-way through a
/// batch; non-JSON lines, such as start-up messages, are skipped).
fn log_lines(relay: &TestRelay) -> Vec<Value> {
    relay
        .logs()
        .split_inclusive('\n')
        .filter(|line| line.starts_with('{') && line.ends_with('\n'))
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

fn with_message<'a>(lines: &'a [Value], message: &str) -> Vec<&'a Value> {
    lines.iter().filter(|line| line["message"] == message).collect()
}

fn position(lines: &[Value], message: &str) -> usize {
    lines.iter().position(|line| line["message"] == message).unwrap_or_else(|| panic!("no {message:?} in {lines:#?}"))
}

/// Waits until `count` lines with `message` are logged, then returns every line so far. Lines
/// reach the log in the order they were emitted, so a line logged before these is there too.
async fn lines_through(relay: &TestRelay, message: &str, count: usize) -> Vec<Value> {
    eventually(&format!("{count} {message:?} log lines"), async || {
        with_message(&log_lines(relay), message).len() >= count
    })
    .await;
    log_lines(relay)
}

#[tokio::test(flavor = "multi_thread")]
async fn by_default_upstream_exchanges_and_refusals_are_logged_but_cache_hits_are_not() {
    let entra = FakeEntra::start().await;
    let relay = TestRelay::serve(&json_logs(TestConfig::client_secret(&entra)), &[]).await;
    let token = json(relay.imds(VAULT).await).await["access_token"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        assert_eq!(relay.imds(VAULT).await.status(), 200);
    }
    assert_eq!(relay.app_service("resource=https://vault.azure.net").await.status(), 200);
    assert_eq!(relay.get("/msi/token?resource=r", &[("X-IDENTITY-HEADER", "wrong")]).await.status(), 401);

    let lines = lines_through(&relay, "token request refused", 1).await;
    assert_eq!(with_message(&lines, "fetched a token upstream").len(), 1, "{lines:#?}");
    let fetched = position(&lines, "fetched a token upstream");
    let exchange = &lines[fetched];
    assert_eq!(exchange["fingerprint"], Secret::new(token.as_str()).fingerprint(), "{exchange}");
    assert_eq!(exchange["exchange"], "new");
    assert_eq!(exchange["identity"], "app");
    assert_eq!(exchange["resource"], "https://vault.azure.net");
    assert_eq!(exchange["credential"], "client_secret");
    assert!(exchange["latency_us"].as_u64().is_some_and(|us| us > 0), "{exchange}");

    // Four cache hits between the exchange and the refusal: not a line among them.
    let refused = position(&lines, "token request refused");
    assert_eq!(refused, fetched + 1, "cache hits are not logged: {:#?}", &lines[fetched..=refused]);
    assert!(with_message(&lines, "token request").is_empty(), "{lines:#?}");
    let refusal = &lines[refused];
    assert_eq!(refusal["level"], "INFO", "the caller's mistake, not the service's");
    assert_eq!(refusal["status"], 401);
    assert_eq!(refusal["flavour"], "app_service");
    assert_eq!(refusal["error"], "unauthorized_client");
    assert!(refusal["description"].as_str().unwrap().contains("X-IDENTITY-HEADER"), "{refusal}");
    assert!(!relay.logs().contains(&token), "no token in the logs");

    // The hits are in the metrics, and the writer dropped nothing.
    let text = relay.metrics().await;
    assert_eq!(sample(&text, "tokenrelay_cache_lookups_total", &["outcome=\"hit\""]), Some(4.0), "{text}");
    assert_eq!(sample(&text, "tokenrelay_log_lines_dropped_total", &[]), Some(0.0), "{text}");
    assert!(text.contains("# TYPE tokenrelay_log_lines_dropped_total counter\n"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_requests_all_every_request_is_logged() {
    let entra = FakeEntra::start().await;
    let relay = TestRelay::serve(&json_logs(TestConfig::client_secret(&entra).set("log.requests", "all")), &[]).await;
    let token = json(relay.imds(VAULT).await).await["access_token"].as_str().unwrap().to_owned();
    assert_eq!(relay.imds(VAULT).await.status(), 200);
    assert_eq!(relay.app_service("resource=https://vault.azure.net").await.status(), 200);
    assert_eq!(relay.get("/msi/token?resource=r", &[("X-IDENTITY-HEADER", "wrong")]).await.status(), 401);

    let lines = lines_through(&relay, "token request refused", 1).await;
    let served = with_message(&lines, "token request");
    let outcomes: Vec<(&str, &str)> =
        served.iter().map(|line| (line["flavour"].as_str().unwrap(), line["cache"].as_str().unwrap())).collect();
    assert_eq!(outcomes, [("imds", "miss"), ("imds", "hit"), ("app_service", "hit")], "{lines:#?}");
    let fingerprint = Secret::new(token.as_str()).fingerprint();
    for line in &served {
        assert_eq!(line["status"], 200);
        assert_eq!(line["fingerprint"], fingerprint.as_str());
        assert!(line["latency_us"].is_u64(), "{line}");
    }
    assert_eq!(with_message(&lines, "fetched a token upstream").len(), 1);
    assert_eq!(with_message(&lines, "token request refused").len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_requests_none_refusals_are_not_logged_either() {
    let entra = FakeEntra::start().await;
    let relay = TestRelay::serve(&json_logs(TestConfig::client_secret(&entra).set("log.requests", "none")), &[]).await;
    assert_eq!(relay.get("/msi/token?resource=r", &[("X-IDENTITY-HEADER", "wrong")]).await.status(), 401);
    assert_eq!(relay.get(&format!("/metadata/identity/oauth2/token?{VAULT}"), &[]).await.status(), 400);
    // An upstream exchange after the refusals: once its line is there, theirs would be too.
    assert_eq!(relay.imds(VAULT).await.status(), 200);

    let lines = lines_through(&relay, "fetched a token upstream", 1).await;
    assert!(with_message(&lines, "token request refused").is_empty(), "{lines:#?}");
    assert!(with_message(&lines, "token request").is_empty(), "{lines:#?}");
    let text = relay.metrics().await;
    let refused = ["flavour=\"app_service\"", "status=\"401\""];
    assert_eq!(sample(&text, "tokenrelay_requests_total", &refused), Some(1.0), "still counted: {text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_and_an_upstream_outage_are_logged_once_each() {
    let entra = FakeEntra::start().await;
    let toml =
        json_logs(TestConfig::client_secret(&entra).set("identities.0.prefetch", vec!["https://vault.azure.net"]));
    let relay = TestRelay::serve(&toml, &[]).await;
    let lines = lines_through(&relay, "ready", 1).await;
    assert!(position(&lines, "prefetched") < position(&lines, "ready"), "{lines:#?}");
    assert_eq!(lines[position(&lines, "ready")]["prefetched"], 1);

    // Two requests during an outage: a failed exchange and a refusal each, "upstream down" once.
    entra.set_down(true);
    for resource in ["https://a.example", "https://b.example"] {
        assert_eq!(relay.imds(&format!("api-version=2018-02-01&resource={resource}")).await.status(), 503);
    }
    let lines = lines_through(&relay, "token request refused", 2).await;
    let failed = with_message(&lines, "upstream token request failed");
    assert_eq!(failed.len(), 2, "{lines:#?}");
    assert!(failed.iter().all(|line| line["exchange"] == "new" && line["latency_us"].is_u64()), "{failed:#?}");
    let down = with_message(&lines, "upstream down");
    assert_eq!(down.len(), 1, "{lines:#?}");
    assert_eq!(down[0]["level"], "WARN");
    assert_eq!(down[0]["identity"], "app");
    assert!(position(&lines, "upstream token request failed") < position(&lines, "upstream down"));
    let refusals = with_message(&lines, "token request refused");
    assert!(refusals.iter().all(|line| line["status"] == 503 && line["level"] == "WARN"), "{refusals:#?}");

    // Back: "upstream up" with the first success, and only then.
    entra.set_down(false);
    for resource in ["https://a.example", "https://c.example"] {
        assert_eq!(relay.imds(&format!("api-version=2018-02-01&resource={resource}")).await.status(), 200);
    }
    let lines = lines_through(&relay, "fetched a token upstream", 3).await;
    let up = with_message(&lines, "upstream up");
    assert_eq!(up.len(), 1, "{lines:#?}");
    assert!(up[0]["down_secs"].is_u64(), "{}", up[0]);
    assert_eq!(with_message(&lines, "upstream down").len(), 1);
    assert_eq!(with_message(&lines, "ready").len(), 1, "readiness never changes again");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_background_refresh_logs_its_exchange() {
    let entra = FakeEntra::start().await;
    // refresh_in = 0: every token is due for refresh as soon as it is cached.
    entra.set_refresh_in(Some(0));
    let relay = TestRelay::serve(&json_logs(TestConfig::client_secret(&entra)), &[]).await;
    let first = json(relay.imds(VAULT).await).await["access_token"].as_str().unwrap().to_owned();
    assert_eq!(json(relay.imds(VAULT).await).await["access_token"], first.as_str(), "served while refreshing");

    let lines = lines_through(&relay, "fetched a token upstream", 2).await;
    let exchanges = with_message(&lines, "fetched a token upstream");
    assert_eq!(exchanges[0]["exchange"], "new");
    assert_eq!(exchanges[0]["fingerprint"], Secret::new(first.as_str()).fingerprint());
    assert_eq!(exchanges[1]["exchange"], "refresh");
    assert_ne!(exchanges[1]["fingerprint"], exchanges[0]["fingerprint"], "a new token");
    assert!(exchanges[1]["latency_us"].is_u64());
}
