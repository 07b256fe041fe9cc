//! The IMDS flavour: `GET /metadata/identity/oauth2/token` (docs/protocols.md#imds-token-endpoint
//! and docs/protocols.md#sdk-probes).

use std::time::Instant;

use super::error::ApiError;
use super::head::{RequestHead, header_text};
use super::host::AllowedHosts;
use super::state::AppState;
use super::token::{self, Call, Flavour, TokenAnswer};
use super::wire::{TokenQuery, api_version_supported};
use crate::config::ProbeMode;

/// Handles one IMDS-style request. Caller checks come first and never cause upstream I/O.
pub async fn handle(state: &AppState, hosts: &AllowedHosts, request: &impl RequestHead) -> TokenAnswer {
    match token::request_span(Flavour::Imds, request) {
        Some(span) => Box::pin(token::traced(span, checked(state, hosts, request))).await,
        None => checked(state, hosts, request).await,
    }
}

async fn checked(state: &AppState, hosts: &AllowedHosts, request: &impl RequestHead) -> TokenAnswer {
    let started = Instant::now();
    let reject = |error| token::reject(Call::new(Flavour::Imds, request.path(), started, state.log_requests), error);

    if let Err(error) = token::admit(hosts, request) {
        return reject(error);
    }
    // IMDS refuses anything that came through a proxy; so do we.
    if request.has_header(&token::X_FORWARDED_FOR) {
        return reject(ApiError::bad_request("Requests with an X-Forwarded-For header are not accepted"));
    }
    let query = match TokenQuery::parse(request.query()) {
        Ok(query) => query,
        Err(error) => return reject(ApiError::bad_request(error.to_string())),
    };
    let has_metadata =
        request.header(&token::METADATA).and_then(header_text).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    if !has_metadata {
        // SDK probes (JS and Go send no query at all) get real IMDS's answer at once.
        // `compatible` serves .NET's probe, which carries a resource (docs/protocols.md#sdk-probes).
        let serve_probe = state.probe_mode == ProbeMode::Compatible && query.resource.is_some();
        if !serve_probe {
            return reject(ApiError::missing_metadata_header());
        }
    }
    match query.api_version.as_deref() {
        Some(version) if api_version_supported(version) => {}
        Some(version) => {
            return reject(ApiError::bad_request(format!(
                "api-version {version:?} is not supported; use 2018-02-01 or later"
            )));
        }
        None => {
            return reject(ApiError::bad_request("Required query variable 'api-version' is missing; use 2018-02-01"));
        }
    }
    token::serve(state, Call::new(Flavour::Imds, request.path(), started, state.log_requests), query).await
}
