//! The development issuer's discovery documents, under `--dev`: what a client that validates
//! the development tokens fetches (the OpenID configuration and the signing keys).

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::state::AppState;

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
