//! Serving a token request once a flavour has checked its caller: shared by both flavours.

use std::time::Instant;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::state::AppState;
use super::wire::{TokenBody, TokenQuery};

/// Which endpoint a request came through, for logs.
#[derive(Clone, Copy, Debug)]
pub enum Flavour {
    Imds,
    AppService,
}

impl Flavour {
    fn as_str(self) -> &'static str {
        match self {
            Self::Imds => "imds",
            Self::AppService => "app_service",
        }
    }
}

/// Resolves the identity, gets the token from the broker and writes the wire body.
/// Logs one line per request: never the token, only its fingerprint.
pub async fn serve(state: &AppState, flavour: Flavour, query: TokenQuery, started: Instant) -> Response {
    let Some(resource) = query.resource.as_deref() else {
        return reject(flavour, ApiError::bad_request("Required query variable 'resource' is missing"), started);
    };
    let identity = match state.broker.resolve(&query.selector) {
        Ok(identity) => identity,
        Err(error) => return reject(flavour, error.into(), started),
    };
    match state.broker.token(identity, resource).await {
        Ok(served) => {
            let token = &served.entry.token;
            let body =
                TokenBody::new(&served.entry, &identity.client_id, resource, state.broker.now(), query.echo.as_ref());
            tracing::info!(
                flavour = flavour.as_str(),
                identity = %identity.name,
                resource,
                status = 200,
                cache = served.outcome.as_str(),
                fingerprint = %token.token.fingerprint(),
                latency_us = started.elapsed().as_micros() as u64,
                "token request"
            );
            let mut response = axum::Json(body).into_response();
            // A token must not be stored by any intermediary.
            response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(error) => reject(flavour, error.into(), started),
    }
}

/// Logs a refused request and turns it into its response.
pub fn reject(flavour: Flavour, error: ApiError, started: Instant) -> Response {
    tracing::info!(
        flavour = flavour.as_str(),
        status = error.status.as_u16(),
        error = error.error,
        description = error.description(),
        latency_us = started.elapsed().as_micros() as u64,
        "token request refused"
    );
    error.into_response()
}
