//! Liveness, readiness and the development issuer's discovery documents.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::ApiError;
use super::state::AppState;

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

/// `GET /.well-known/openid-configuration` under `--dev`.
pub async fn openid_configuration(State(state): State<AppState>) -> Response {
    match &state.dev_issuer {
        Some(issuer) => Json(issuer.openid_configuration()).into_response(),
        None => ApiError::not_found().into_response(),
    }
}

/// `GET /.well-known/jwks.json` under `--dev`.
pub async fn jwks(State(state): State<AppState>) -> Response {
    match &state.dev_issuer {
        Some(issuer) => Json(issuer.jwks()).into_response(),
        None => ApiError::not_found().into_response(),
    }
}

/// Any other path.
pub async fn fallback() -> Response {
    ApiError::not_found().into_response()
}
