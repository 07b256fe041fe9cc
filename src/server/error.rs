//! `ApiError`: the one mapping from failures to HTTP responses.
//!
//! Status codes follow docs/protocols.md#status-codes-clients-act-on: 400 for anything retrying will not fix
//! (clients stop; most treat it as "unavailable"), 401 for a bad App Service secret, 429 and
//! 503 with a `Retry-After` of a few seconds for transient trouble, never 404 or 403 for an
//! identity problem.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::host::Refusal;
use super::wire::{ErrorBody, OAuthError};
use crate::broker::{BrokerError, UpstreamKind};

/// The longest `Retry-After` we send: MSAL Python replays an error for that long.
const MAX_RETRY_AFTER_SECS: u64 = 5;
/// `Retry-After` for transient upstream trouble.
const TRANSIENT_RETRY_AFTER_SECS: u64 = 2;

/// An HTTP error with the IMDS-style JSON body.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: OAuthError,
    pub description: String,
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// A 400 `invalid_request`.
    pub fn bad_request(description: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            error: OAuthError::InvalidRequest,
            description: description.into(),
            retry_after: None,
        }
    }

    /// The answer to a request without `Metadata: true`, worded as real IMDS words it.
    pub fn missing_metadata_header() -> Self {
        Self::bad_request("Required metadata header not specified")
    }

    /// A 401 for a missing or wrong `X-IDENTITY-HEADER`.
    pub fn unauthorized(description: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            error: OAuthError::UnauthorizedClient,
            description: description.into(),
            retry_after: None,
        }
    }

    /// A 400 for a token request whose `Host` is not admitted (the DNS rebinding guard).
    /// Names the setting that admits a host, since a legitimate client reaching the
    /// listener by a new name (a compose service, `host.docker.internal`) lands here.
    pub fn host_refused(refusal: Refusal<'_>) -> Self {
        let what = match refusal {
            Refusal::NotAllowed(host) => format!("Host {host:?} is not allowed"),
            Refusal::Malformed => "the Host header is not one plain ASCII host name".to_owned(),
        };
        Self::bad_request(format!(
            "{what}: tokens are served only to requests for a loopback address, localhost, 169.254.169.254, \
             the listen address or a name in server.allowed_hosts (so that a web page cannot reach them through \
             DNS rebinding); add the name this client uses to server.allowed_hosts"
        ))
    }

    /// A 508 for a request from a tokenrelay's `managed_identity` link, which a tokenrelay
    /// never serves, so that a loop fails at once (see `token::admit`). Only a tokenrelay
    /// sends the hop header, and its link treats 508 as final.
    pub fn loop_detected() -> Self {
        Self {
            status: StatusCode::LOOP_DETECTED,
            error: OAuthError::LoopDetected,
            description: "refused: the request comes from a tokenrelay's managed_identity link (it carries \
                          X-Tokenrelay-Hop), which a tokenrelay never serves, so that a link leading back to a \
                          tokenrelay fails at once as a loop"
                .to_owned(),
            retry_after: None,
        }
    }

    /// A 404 for paths that serve nothing (never used for identities).
    pub fn not_found() -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            error: OAuthError::NotFound,
            description: "no such endpoint".into(),
            retry_after: None,
        }
    }

    /// A 503 for a request that waited `server.request_timeout_secs` on the upstream.
    pub fn timed_out(description: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error: OAuthError::TemporarilyUnavailable,
            description: description.into(),
            retry_after: Some(TRANSIENT_RETRY_AFTER_SECS),
        }
    }

    /// The body text, for the request log.
    pub fn description(&self) -> &str {
        &self.description
    }
}

impl From<BrokerError> for ApiError {
    fn from(error: BrokerError) -> Self {
        let description = error.to_string();
        match &error {
            // "Identity not found" is the phrase .NET's probe looks for (docs/protocols.md#sdk-probes).
            BrokerError::UnknownIdentity(_) => Self::bad_request(format!("Identity not found: {description}")),
            BrokerError::NoDefaultIdentity => Self::bad_request(description),
            // The caller's own rate of new resources: 429, like the authority's throttling.
            BrokerError::NewKeysLimited { retry_after_secs, .. } => Self {
                status: StatusCode::TOO_MANY_REQUESTS,
                error: OAuthError::Throttled,
                description,
                retry_after: Some((*retry_after_secs).clamp(1, MAX_RETRY_AFTER_SECS)),
            },
            BrokerError::Upstream { kind, .. } => match kind {
                UpstreamKind::Permanent { aadsts, correlation_id } => {
                    let error = if *aadsts == Some(crate::aadsts::RESOURCE_NOT_FOUND) {
                        OAuthError::InvalidResource
                    } else {
                        OAuthError::UnauthorizedClient
                    };
                    let description = match correlation_id {
                        Some(id) => format!("{description} (correlation id {id})"),
                        None => description,
                    };
                    Self { status: StatusCode::BAD_REQUEST, error, description, retry_after: None }
                }
                UpstreamKind::Throttled { retry_after } => Self {
                    status: StatusCode::TOO_MANY_REQUESTS,
                    error: OAuthError::Throttled,
                    description,
                    retry_after: Some(retry_after.as_secs().clamp(1, MAX_RETRY_AFTER_SECS)),
                },
                // Only on-behalf-of exchanges are refused this way, and their endpoints map it
                // themselves (`server::sidecar`); a token endpoint never sees it.
                UpstreamKind::UserRefused { .. } => Self {
                    status: StatusCode::BAD_REQUEST,
                    error: OAuthError::InvalidGrant,
                    description,
                    retry_after: None,
                },
                UpstreamKind::Transient => Self {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    error: OAuthError::TemporarilyUnavailable,
                    description,
                    retry_after: Some(TRANSIENT_RETRY_AFTER_SECS),
                },
            },
        }
    }
}

impl ApiError {
    /// The App Service flavour's error: the OAuth fields plus App Service's own
    /// `statusCode` and `message`, which MSAL reads on that path (without them the caller
    /// sees "(invalid_scope) None" instead of the reason).
    pub fn into_app_service_response(self) -> Response {
        let body = ErrorBody {
            error: self.error,
            error_description: &self.description,
            status_code: Some(self.status.as_u16()),
            message: Some(&self.description),
        };
        finish(self.status, self.retry_after, body)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            ErrorBody { error: self.error, error_description: &self.description, status_code: None, message: None };
        finish(self.status, self.retry_after, body)
    }
}

fn finish(status: StatusCode, retry_after: Option<u64>, body: ErrorBody<'_>) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(secs) = retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::broker::Selector;

    /// The broker's error for a failed upstream; the broker's own tests check that it
    /// classifies each credential error this way.
    fn upstream(kind: UpstreamKind, reason: &str) -> ApiError {
        ApiError::from(BrokerError::Upstream { identity: "app".into(), kind, reason: reason.into() })
    }

    #[test]
    fn maps_each_failure_to_the_status_clients_expect() {
        let unknown = ApiError::from(BrokerError::UnknownIdentity(Selector::ClientId("x".into())));
        assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
        assert!(unknown.description.contains("Identity not found") && unknown.description.contains("client_id \"x\""));

        let rejected = upstream(
            UpstreamKind::Permanent { aadsts: Some(7000215), correlation_id: Some("c0rr".into()) },
            "client_secret: AADSTS7000215: bad secret",
        );
        assert_eq!(rejected.status, StatusCode::BAD_REQUEST);
        assert!(rejected.description.contains("AADSTS7000215") && rejected.description.contains("c0rr"));

        let throttled = upstream(UpstreamKind::Throttled { retry_after: Duration::from_secs(120) }, "x: throttled");
        assert_eq!((throttled.status, throttled.retry_after), (StatusCode::TOO_MANY_REQUESTS, Some(5)));

        let down = upstream(UpstreamKind::Transient, "x: refused");
        assert_eq!((down.status, down.retry_after), (StatusCode::SERVICE_UNAVAILABLE, Some(2)));

        let limited = |retry_after_secs| {
            ApiError::from(BrokerError::NewKeysLimited {
                identity: "app".into(),
                per_minute: 60,
                burst: 60,
                retry_after_secs,
            })
        };
        let flood = limited(1);
        assert_eq!(
            (flood.status, flood.error, flood.retry_after),
            (StatusCode::TOO_MANY_REQUESTS, OAuthError::Throttled, Some(1))
        );
        assert!(flood.description.contains("cache.new_keys_per_minute"), "{}", flood.description);
        assert_eq!(limited(60).retry_after, Some(5), "capped like the authority's");
    }

    #[test]
    fn never_answers_403_unreachable() {
        for error in [
            ApiError::missing_metadata_header(),
            ApiError::unauthorized("x"),
            upstream(UpstreamKind::Transient, "x: unavailable: network unreachable"),
        ] {
            assert_ne!(error.status, StatusCode::FORBIDDEN);
        }
    }
}
