//! The admin endpoints: liveness, readiness, metrics, and the answer to any other path. The
//! admin listener serves these alone (never tokens); the token listener serves them too.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::ApiError;
use super::state::AppState;
use crate::telemetry::metrics::{self as telemetry_metrics, CachedTokenSample};

/// `GET /healthz`: the process is up and serving HTTP.
pub async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// `GET /readyz`: 200 once every configured prefetch is in the cache; stays 200 after that.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let readiness = state.broker.readiness();
    if readiness.is_ready() {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        let body = json!({ "status": "waiting", "pending_prefetches": readiness.pending() });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

/// `GET /metrics`: Prometheus text format, rendered at most once a second; scrapes within
/// the second get the same text.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let Some(exposition) = &state.metrics else {
        return ApiError::not_found().into_response();
    };
    // The snapshot before the recorder's text: taking it makes the caches apply pending
    // evictions, which the counters rendered next then include.
    let text = exposition
        .text(|handle| async move {
            let snapshot = state.broker.snapshot().await;
            let mut text = handle.render();
            let entries: Vec<(&str, u64)> =
                snapshot.iter().map(|(name, tokens)| (*name, tokens.len() as u64)).collect();
            let samples: Vec<CachedTokenSample<'_>> = snapshot
                .iter()
                .flat_map(|(name, tokens)| {
                    tokens.iter().map(|(resource, expires_in)| CachedTokenSample {
                        identity: name,
                        resource: resource.as_str(),
                        expires_in: *expires_in,
                    })
                })
                .collect();
            telemetry_metrics::render_request_durations(&mut text);
            telemetry_metrics::render_cache(&mut text, &entries, &samples);
            crate::telemetry::render_log_lines_dropped(&mut text);
            text
        })
        .await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// Any other path.
pub async fn fallback() -> Response {
    ApiError::not_found().into_response()
}
