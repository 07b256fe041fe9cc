//! The App Service flavour: `GET $IDENTITY_ENDPOINT` with `X-IDENTITY-HEADER`
//! (docs/protocols.md#app-service-endpoint).
//! `Metadata` is not required: msal-node and MSAL Go do not send it.

use std::time::Instant;

use axum::http::request::Parts;
use axum::http::{HeaderMap, Uri};
use axum::response::Response;

use super::error::ApiError;
use super::state::AppState;
use super::token::{self, Call, Flavour};
use super::wire::{TokenQuery, api_version_supported};

/// Handles one App Service style request.
pub async fn handle(state: &AppState, request: &Parts) -> Response {
    token::traced(Flavour::AppService, &request.headers, &request.uri, checked(state, &request.headers, &request.uri))
        .await
}

async fn checked(state: &AppState, headers: &HeaderMap, uri: &Uri) -> Response {
    let started = Instant::now();
    let reject = |error| token::reject(Call::new(Flavour::AppService, uri, started), error);

    let presented = headers.get("x-identity-header").map(|v| v.as_bytes());
    let Some(expected) = state.identity_header.as_deref() else {
        // The router only mounts this flavour with a secret configured.
        return reject(ApiError::unauthorized("the App Service endpoint is not configured"));
    };
    match presented {
        None => return reject(ApiError::unauthorized("X-IDENTITY-HEADER is required")),
        Some(value) if !expected.matches(value) => {
            return reject(ApiError::unauthorized("X-IDENTITY-HEADER does not match IDENTITY_HEADER"));
        }
        Some(_) => {}
    }
    let query = match TokenQuery::parse(uri.query()) {
        Ok(query) => query,
        Err(error) => return reject(ApiError::bad_request(error.to_string())),
    };
    if let Some(version) = query.api_version.as_deref()
        && !api_version_supported(version)
    {
        return reject(ApiError::bad_request(format!("api-version {version:?} is not supported; use 2019-08-01")));
    }
    token::serve(state, Call::new(Flavour::AppService, uri, started), query).await
}
