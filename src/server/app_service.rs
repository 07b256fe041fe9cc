//! The App Service flavour: `GET $IDENTITY_ENDPOINT` with `X-IDENTITY-HEADER`
//! (docs/protocols.md#app-service-endpoint).
//! `Metadata` is not required: msal-node and MSAL Go do not send it.

use std::time::Instant;

use super::error::ApiError;
use super::head::RequestHead;
use super::host::AllowedHosts;
use super::state::AppState;
use super::token::{self, Call, Flavour, TokenAnswer};
use super::wire::{TokenQuery, api_version_supported};
use crate::telemetry::metrics;

/// Handles one App Service style request.
pub async fn handle(state: &AppState, hosts: &AllowedHosts, request: &impl RequestHead) -> TokenAnswer {
    match token::request_span(Flavour::AppService, request) {
        Some(span) => Box::pin(token::traced(span, checked(state, hosts, request))).await,
        None => checked(state, hosts, request).await,
    }
}

async fn checked(state: &AppState, hosts: &AllowedHosts, request: &impl RequestHead) -> TokenAnswer {
    let started = Instant::now();
    let reject =
        |error| token::reject(Call::new(Flavour::AppService, request.path(), started, state.log_requests), error);

    if let Err(error) = token::admit(hosts, request) {
        return reject(error);
    }
    let presented = request.header(&token::X_IDENTITY_HEADER);
    let Some(expected) = state.identity_header.as_deref() else {
        // The router only mounts this flavour with a secret configured.
        return reject(ApiError::unauthorized("the App Service endpoint is not configured"));
    };
    // Refusals are counted, not slowed: a wrong guess costs the guesser no more than a
    // right answer costs a client, and what keeps guessing hopeless is the secret's length
    // (`config::MIN_IDENTITY_HEADER_BYTES`). A delay here would hold a connection slot per
    // guess, which hurts the clients sharing the listener more than the guesser.
    match presented {
        None => {
            metrics::identity_header_refused(metrics::HeaderRefusal::Missing);
            return reject(ApiError::unauthorized("X-IDENTITY-HEADER is required"));
        }
        Some(value) if !expected.matches(value) => {
            metrics::identity_header_refused(metrics::HeaderRefusal::Mismatch);
            return reject(ApiError::unauthorized("X-IDENTITY-HEADER does not match IDENTITY_HEADER"));
        }
        Some(_) => {}
    }
    let query = match TokenQuery::parse(request.query()) {
        Ok(query) => query,
        Err(error) => return reject(ApiError::bad_request(error.to_string())),
    };
    if let Some(version) = query.api_version.as_deref()
        && !api_version_supported(version)
    {
        return reject(ApiError::bad_request(format!("api-version {version:?} is not supported; use 2019-08-01")));
    }
    token::serve(state, Call::new(Flavour::AppService, request.path(), started, state.log_requests), query).await
}
