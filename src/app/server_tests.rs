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
        identity_header: config.server.identity_header.as_ref().map(|secret| std::sync::Arc::new(secret.digest())),
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
