//! Observability: metrics move with requests, logs never carry tokens or secrets, and traces
//! reach an OTLP/HTTP receiver with the caller's trace id.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;

use crate::support::fake_server::FakeServer;
use crate::support::{FakeEntra, HEADER_SECRET, TestRelay, fake_entra, json, secret_config};

const VAULT: &str = "api-version=2018-02-01&resource=https://vault.azure.net";

/// The value of the first sample of `name` whose labels contain every `label`.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|line| line.starts_with(name) && !line.starts_with('#'))
        .find(|line| labels.iter().all(|label| line.contains(label)))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_move_the_right_counters() {
    let entra = FakeEntra::start().await;
    let relay = TestRelay::serve(&secret_config(&entra, ""), &[]).await;
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
    let expires_in = sample(&text, "tokenrelay_token_expires_in_seconds", &["resource=\"https://vault.azure.net\""])
        .expect("a gauge per cached token");
    assert!((3500.0..=3599.0).contains(&expires_in), "{expires_in}");
    assert!(!text.contains("fake-token-"), "metrics never carry a token");
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_refusals_are_counted_by_aadsts_code() {
    let entra = FakeEntra::start().await;
    let toml = secret_config(&entra, "").replace(fake_entra::CLIENT_SECRET, "not-the-secret");
    let relay = TestRelay::serve(&toml, &[]).await;
    assert_eq!(relay.imds(VAULT).await.status(), 400);
    let text = relay.get("/metrics", &[]).await.text().await.unwrap();
    assert_eq!(sample(&text, "tokenrelay_upstream_errors_total", &["aadsts=\"7000215\""]), Some(1.0), "{text}");
    assert_eq!(sample(&text, "tokenrelay_upstream_requests_total", &["outcome=\"rejected\""]), Some(1.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn no_token_or_secret_reaches_the_logs_at_any_level() {
    let entra = FakeEntra::start().await;
    let toml = secret_config(&entra, "").replace("level = \"info,tokenrelay=debug\"", "level = \"trace\"");
    let relay = TestRelay::serve(&toml, &[]).await;
    let body = json(relay.imds(VAULT).await).await;
    let token = body["access_token"].as_str().unwrap().to_owned();
    relay.app_service("resource=https://vault.azure.net").await;
    relay.get("/msi/token?resource=r", &[("X-IDENTITY-HEADER", "wrong-header-value")]).await;
    let logs = relay.logs();
    assert!(logs.contains("token request"), "the request log is there: {logs}");
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
    let toml = format!("{}\n[telemetry]\notlp_endpoint = \"{}\"\n", secret_config(&entra, ""), receiver.url());
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
    let toml = format!("{}\n[telemetry]\nmetrics = false\n", secret_config(&entra, ""));
    let relay = TestRelay::serve(&toml, &[]).await;
    assert_eq!(relay.get("/metrics", &[]).await.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_listener_serves_probes_and_metrics_but_never_tokens() {
    let entra = FakeEntra::start().await;
    let toml = secret_config(&entra, "").replacen("[server]\n", "[server]\nadmin_listen = \"127.0.0.1:0\"\n", 1);
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
