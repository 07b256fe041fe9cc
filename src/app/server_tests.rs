//! Router-level properties, in process (no sockets): whatever a caller sends in the query and
//! headers, the answer is a token or a well-formed JSON error, never a panic or a 5xx.
//!
//! They live with the wiring because they serve real development tokens, which needs the
//! whole of [`super::build`]; the server itself never depends on `app`.

use std::collections::HashMap;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use http_body_util::BodyExt;
use proptest::prelude::*;
use tower::ServiceExt;

use crate::config::{Config, RawConfig};
use crate::server::{AppState, Endpoints, endpoints};

/// One router for every case: building one generates an RSA key, which is slow.
fn dev_router() -> &'static (Endpoints, tokio::runtime::Runtime) {
    static ROUTER: std::sync::OnceLock<(Endpoints, tokio::runtime::Runtime)> = std::sync::OnceLock::new();
    ROUTER.get_or_init(build_dev_router)
}

fn build_dev_router() -> (Endpoints, tokio::runtime::Runtime) {
    let figment = Figment::from(Serialized::defaults(RawConfig::default()))
        .merge(Toml::string("[dev]\nenabled = true\n[server]\nidentity_header = \"secret-0123456789abcdef\""));
    let config = Config::from_figment(&figment, &HashMap::new()).unwrap();
    let built = crate::app::build(&config, "http://127.0.0.1:8080", &Ok(None)).unwrap();
    let state = AppState {
        broker: built.broker,
        identity_header: config.server.identity_header.as_ref().map(|secret| secret.for_header().unwrap()),
        probe_mode: config.server.imds_probe,
        dev_issuer: built.dev_issuer,
        metrics: None,
        request_timeout: std::time::Duration::from_secs(60),
        log_requests: config.log.requests,
        user_endpoints: built.user_endpoints,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    (endpoints(state, &config.server), runtime)
}

/// Sends one request and checks the invariant: 200 with a token body, or a 4xx JSON error.
fn check(router: &Endpoints, runtime: &tokio::runtime::Runtime, request: Request<Body>) -> Result<(), TestCaseError> {
    let response = runtime.block_on(router.clone().oneshot(request)).unwrap();
    let status = response.status();
    let body = runtime.block_on(response.into_body().collect()).unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| TestCaseError::fail(format!("{status}: body is not JSON ({e}): {body:?}")))?;
    if status == StatusCode::OK {
        prop_assert!(json["access_token"].is_string() && json["expires_on"].is_string(), "{json}");
    } else {
        prop_assert!(status.is_client_error(), "{status}: {json}");
        prop_assert!(json["error"].is_string() && json["error_description"].is_string(), "{json}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn any_query_gets_a_token_or_a_json_error(query in "[a-z_=&%0-9A-F.:/-]{0,120}") {
        let (router, runtime) = dev_router();
        for path in ["/metadata/identity/oauth2/token", "/msi/token"] {
            let request = Request::get(format!("{path}?{query}"))
                .header("Metadata", "true")
                .header("X-IDENTITY-HEADER", "secret-0123456789abcdef")
                .body(Body::empty())
                .unwrap();
            check(router, runtime, request)?;
        }
    }

    #[test]
    fn any_header_value_gets_a_token_or_a_json_error(
        metadata in "[ -~]{0,40}",
        identity_header in "[ -~]{0,40}",
        forwarded in proptest::option::of("[ -~]{0,20}"),
    ) {
        let (router, runtime) = dev_router();
        for path in ["/metadata/identity/oauth2/token", "/msi/token"] {
            let mut request = Request::get(format!("{path}?api-version=2018-02-01&resource=https://vault.azure.net"))
                .header("Metadata", metadata.as_str())
                .header("X-IDENTITY-HEADER", identity_header.as_str());
            if let Some(forwarded) = &forwarded {
                request = request.header("X-Forwarded-For", forwarded.as_str());
            }
            check(router, runtime, request.body(Body::empty()).unwrap())?;
        }
    }
}

/// The raw bytes a peer gets for `request` (sent whole, then the write side closed) from a
/// connection served as the listener serves it (the direct path first), and from hyper alone
/// with the same service. The `date` header is left out of both, and a token body's relative
/// lifetimes, which move with the clock.
fn answers_both_ways(router: &Endpoints, runtime: &tokio::runtime::Runtime, request: &[u8]) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    async fn exchange(request: &[u8], serve: impl FnOnce(tokio::io::DuplexStream)) -> String {
        let (server, mut peer) = tokio::io::duplex(64 * 1024);
        serve(server);
        peer.write_all(request).await.unwrap();
        peer.shutdown().await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(10), peer.read_to_end(&mut answer))
            .await
            .expect("the connection ends once the peer has")
            .unwrap();
        normalise(&String::from_utf8_lossy(&answer))
    }
    let direct = runtime.block_on(exchange(request, |io| {
        tokio::spawn(crate::server::serve_connection(io, router.clone(), true));
    }));
    let hyper = runtime.block_on(exchange(request, |io| {
        tokio::spawn(crate::server::serve_connection(io, router.clone(), false));
    }));
    (direct, hyper)
}

/// An answer without what moves with the clock: `date` lines and the digits of the relative
/// lifetimes (`"expires_in":"3599"`).
fn normalise(answer: &str) -> String {
    let without_dates: Vec<&str> =
        answer.split("\r\n").filter(|line| !line.to_ascii_lowercase().starts_with("date:")).collect();
    let mut text = without_dates.join("\r\n");
    for member in ["\"expires_in\":\"", "\"ext_expires_in\":\""] {
        let mut from = 0;
        while let Some(at) = text[from..].find(member) {
            let start = from + at + member.len();
            let end = start + text[start..].find('"').unwrap_or(0);
            text.replace_range(start..end, "N");
            from = start;
        }
    }
    text
}

#[test]
fn the_direct_path_answers_sdk_requests_as_hyper_does() {
    let (router, runtime) = dev_router();
    let imds = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net";
    let app_service = "/msi/token?api-version=2019-08-01&resource=https://vault.azure.net";
    let cases = [
        // What the SDKs send, one request and two pipelined.
        format!(
            "GET {imds} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nMetadata: true\r\nUser-Agent: azsdk-python\r\nConnection: keep-alive\r\n\r\n"
        ),
        format!(
            "GET {app_service} HTTP/1.1\r\nHost: localhost:8080\r\nX-IDENTITY-HEADER: secret-0123456789abcdef\r\n\r\n"
        ),
        format!(
            "GET {imds} HTTP/1.1\r\nHost: localhost\r\nMetadata: true\r\n\r\nGET {app_service} HTTP/1.1\r\nX-IDENTITY-HEADER: secret-0123456789abcdef\r\n\r\n"
        ),
        // Refusals answered on the direct path.
        format!("GET {imds} HTTP/1.1\r\nHost: attacker.example\r\nMetadata: true\r\n\r\n"),
        format!("GET {imds} HTTP/1.1\r\nMetadata: false\r\n\r\n"),
        format!("GET {app_service} HTTP/1.1\r\nX-IDENTITY-HEADER: wrong\r\n\r\n"),
        format!("GET {imds}&resource=x HTTP/1.1\r\nMetadata: true\r\n\r\n"),
        "GET /metadata/identity/oauth2/token HTTP/1.1\r\nMetadata: true\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n"
            .to_owned(),
        // Handed to hyper at once, or after a direct answer.
        format!("GET {imds} HTTP/1.1\r\nMetadata: true\r\nConnection: close\r\n\r\n"),
        format!("GET {imds} HTTP/1.0\r\nMetadata: true\r\n\r\n"),
        format!("HEAD {imds} HTTP/1.1\r\nMetadata: true\r\n\r\n"),
        format!("POST {imds} HTTP/1.1\r\nMetadata: true\r\nContent-Length: 3\r\n\r\nabc"),
        format!("GET {imds} HTTP/1.1\r\nMetadata: true\r\nContent-Length: 0\r\n\r\n"),
        format!(
            "GET {imds} HTTP/1.1\r\nMetadata: true\r\n\r\nGET /healthz HTTP/1.1\r\n\r\nGET {imds} HTTP/1.1\r\nMetadata: true\r\n\r\n"
        ),
        format!("GET {imds}#fragment HTTP/1.1\r\nMetadata: true\r\n\r\n"),
        format!("GET http://127.0.0.1:8080{imds} HTTP/1.1\r\nMetadata: true\r\n\r\n"),
        format!("GET {imds} HTTP/1.1\r\nMetadata: true\r\nX-Folded: a\r\n b\r\n\r\n"),
        format!("GET {imds} HTTP/1.1\r\nMetadata: tr\x7fue\r\n\r\n"),
        format!("GET {imds} HTTP/1.1\r\nMetadata: true\r\n"),
        format!("GET /{} HTTP/1.1\r\nMetadata: true\r\n\r\n", "m".repeat(20_000)),
        "GET /healthz HTTP/1.1\r\n\r\n".to_owned(),
        "garbage\r\n\r\n".to_owned(),
    ];
    let served = |answer: &str| answer.matches("HTTP/1.1 200 OK").count();
    assert_eq!(served(&answers_both_ways(router, runtime, cases[0].as_bytes()).0), 1);
    assert_eq!(served(&answers_both_ways(router, runtime, cases[2].as_bytes()).0), 2, "pipelined");
    for case in &cases {
        let (direct, hyper) = answers_both_ways(router, runtime, case.as_bytes());
        assert_eq!(direct, hyper, "request: {case:?}");
        // Every case but the unfinished head gets an answer.
        assert!(direct.starts_with("HTTP/1.") || !case.ends_with("\r\n\r\n"), "request: {case:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever the target and headers, the connection's answer is hyper's.
    #[test]
    fn the_direct_path_answers_any_request_as_hyper_does(
        path in prop_oneof!["/metadata/identity/oauth2/token", "//metadata/identity/oauth2/token/", "/msi/token", "/healthz", "/other"],
        query in "[a-z_=&%0-9A-F.:/#?+ -]{0,60}",
        headers in proptest::collection::vec(
            (prop_oneof!["Metadata", "X-IDENTITY-HEADER", "Host", "Connection", "X-Forwarded-For", "Content-Length", "Traceparent", "X-Other"],
             "[ -~]{0,24}"),
            0..6,
        ),
    ) {
        let (router, runtime) = dev_router();
        let mut request = format!("GET {path}?{query} HTTP/1.1\r\n");
        for (name, value) in &headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let (direct, hyper) = answers_both_ways(router, runtime, request.as_bytes());
        prop_assert_eq!(direct, hyper, "request: {:?}", request);
    }
}
