//! Serving a token request once a flavour has checked its caller: shared by both flavours,
//! with the metrics and the trace span every request gets, and the log line `log.requests`
//! asks for.
//!
//! By default only refused requests are logged: SDKs cache their tokens, so a served request
//! is usually a cache hit that metrics count, and a line for each would be noise at low rates
//! and most of the cost of a hit at high ones. Upstream exchanges, which are what an operator
//! follows, are logged by the broker whatever `log.requests` says.

use std::future::Future;
use std::task::Poll;
use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use super::error::ApiError;
use super::head::RequestHead;
use super::host::AllowedHosts;
use super::state::AppState;
use super::wire::{TokenBody, TokenQuery};
use crate::config::RequestLog;
use crate::credential::managed_identity::HOP_HEADER;
use crate::telemetry::{self, metrics};

/// Request headers the token endpoints look at. As `HeaderName`s, a lookup hashes the name
/// at once instead of first parsing a string into one.
pub const METADATA: HeaderName = HeaderName::from_static("metadata");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_IDENTITY_HEADER: HeaderName = HeaderName::from_static("x-identity-header");
const HOP: HeaderName = HeaderName::from_static(HOP_HEADER);

/// A token request's answer: a served token's body, which the direct path (`super::direct`)
/// writes without building a `Response`, or any other response.
pub enum TokenAnswer {
    /// 200 with this JSON body, `Content-Type: application/json` and `Cache-Control: no-store`.
    Served(TokenBody),
    /// Anything else: a refusal.
    Other(Response),
}

impl TokenAnswer {
    /// The headers of a served token besides its length, in the order they are written.
    pub const SERVED_HEADERS: [(HeaderName, &'static str); 2] =
        [(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")];

    /// The status code.
    pub fn status(&self) -> u16 {
        match self {
            Self::Served(_) => 200,
            Self::Other(response) => response.status().as_u16(),
        }
    }
}

impl IntoResponse for TokenAnswer {
    fn into_response(self) -> Response {
        match self {
            Self::Served(body) => {
                let mut response = Response::new(Body::from(body.to_vec()));
                let headers = response.headers_mut();
                // A token must not be stored by any intermediary.
                for (name, value) in Self::SERVED_HEADERS {
                    headers.insert(name, HeaderValue::from_static(value));
                }
                response
            }
            Self::Other(response) => response,
        }
    }
}

impl From<Response> for TokenAnswer {
    fn from(response: Response) -> Self {
        Self::Other(response)
    }
}

/// Which endpoint a request came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// One request in progress: what the log line and metrics need.
pub struct Call<'a> {
    pub flavour: Flavour,
    pub path: &'a str,
    pub started: Instant,
    /// Which outcomes get a log line (`AppState::log_requests`).
    pub log: RequestLog,
}

impl<'a> Call<'a> {
    /// A request for `path` that arrived at `started`, logged as `log` says.
    pub fn new(flavour: Flavour, path: &'a str, started: Instant, log: RequestLog) -> Self {
        Self { flavour, path, started, log }
    }
}

/// The `token_request` span of a request, continuing the caller's W3C trace; `None` without
/// trace export.
pub fn request_span(flavour: Flavour, request: &impl RequestHead) -> Option<tracing::Span> {
    if !telemetry::tracing_enabled() {
        return None;
    }
    let span = tracing::info_span!(
        "token_request",
        otel.name = %format!("GET {}", request.path()),
        otel.kind = "server",
        flavour = flavour.as_str(),
        http.request.method = "GET",
        url.path = %request.path(),
        http.response.status_code = tracing::field::Empty,
    );
    telemetry::adopt_remote_parent(&span, &request.trace_context());
    Some(span)
}

/// Runs a handler inside its request's span and records the response status on it.
///
/// Callers box this future and await the handler directly when there is no span: a future
/// handed to an `async fn` is held in its state twice (the argument and the awaited value),
/// and every request's future would grow by that for tracing that is off.
pub async fn traced(span: tracing::Span, handler: impl Future<Output = TokenAnswer>) -> TokenAnswer {
    let answer = handler.instrument(span.clone()).await;
    span.record("http.response.status_code", answer.status());
    answer
}

/// The checks every token request passes before its flavour's own, in this order:
///
/// 1. It is not a tokenrelay's `managed_identity` link (it carries no [`HOP_HEADER`]). A
///    tokenrelay never serves one, so a link that leads back to its own tokenrelay, by any
///    name or through another tokenrelay, fails at once with an error naming the loop,
///    instead of waiting out the request timeout on itself.
/// 2. Its host is admitted (`server.allowed_hosts`; the DNS rebinding guard, see
///    [`super::host`]).
///
/// Neither allocates when the request passes.
pub fn admit(hosts: &AllowedHosts, request: &impl RequestHead) -> Result<(), ApiError> {
    if request.has_header(&HOP) {
        return Err(ApiError::loop_detected());
    }
    hosts.check(request).map_err(ApiError::host_refused)
}

/// Resolves the identity, gets the token from the broker and writes the wire body.
/// Logs the served request only under `log.requests = "all"` (never the token, only its
/// fingerprint); otherwise a served request costs no tracing call at all.
pub async fn serve(state: &AppState, call: Call<'_>, query: TokenQuery<'_>) -> TokenAnswer {
    let TokenQuery { resource, selector, echo, .. } = query;
    let Some(resource) = resource.as_deref() else {
        return reject(call, ApiError::bad_request("Required query variable 'resource' is missing"));
    };
    let identity = match state.broker.resolve(&selector) {
        Ok(identity) => identity,
        Err(error) => return reject(call, error.into()),
    };
    // Only a miss waits (for the upstream), so only a lookup that is not ready at its first
    // poll gets a timer: a cache hit creates none.
    let mut lookup = std::pin::pin!(state.broker.token(identity, resource));
    let lookup = match std::future::poll_fn(|cx| Poll::Ready(lookup.as_mut().poll(cx))).await {
        Poll::Ready(lookup) => lookup,
        // Boxed: the timer is the largest part of this future, and a hit never needs it.
        Poll::Pending => match Box::pin(tokio::time::timeout(state.request_timeout, lookup)).await {
            Ok(lookup) => lookup,
            Err(_) => {
                let waited = state.request_timeout.as_secs();
                return reject(call, ApiError::timed_out(format!("no token from the upstream within {waited} s")));
            }
        },
    };
    match lookup {
        Ok(served) => {
            let elapsed = call.started.elapsed();
            metrics::request(call.flavour.as_str(), 200, elapsed);
            if call.log == RequestLog::All {
                tracing::info!(
                    method = "GET",
                    path = call.path,
                    flavour = call.flavour.as_str(),
                    identity = identity.name.as_str(),
                    resource,
                    status = 200,
                    cache = served.outcome.as_str(),
                    fingerprint = &*served.entry.fingerprint,
                    latency_us = elapsed.as_micros() as u64,
                    "token request"
                );
            }
            // The entry moves into the body: no reference count taken and dropped per hit.
            let body = TokenBody::new(served.entry, &identity.client_id, resource, state.broker.now(), echo);
            TokenAnswer::Served(body)
        }
        Err(error) => reject(call, error.into()),
    }
}

/// Logs a refused request (unless `log.requests = "none"`) and turns it into its response.
/// 5xx (no token from the upstream) at WARN, 4xx (the caller's mistake) at INFO.
pub fn reject(call: Call<'_>, error: ApiError) -> TokenAnswer {
    let elapsed = call.started.elapsed();
    let status = error.status.as_u16();
    metrics::request(call.flavour.as_str(), status, elapsed);
    if call.log != RequestLog::None {
        log_refusal(&call, &error, elapsed);
    }
    TokenAnswer::Other(match call.flavour {
        Flavour::Imds => error.into_response(),
        Flavour::AppService => error.into_app_service_response(),
    })
}

/// The refused-request line. Out of line: refusals are the cold path.
#[cold]
#[inline(never)]
fn log_refusal(call: &Call<'_>, error: &ApiError, elapsed: std::time::Duration) {
    let status = error.status.as_u16();
    let latency_us = elapsed.as_micros() as u64;
    macro_rules! refused {
        ($level:ident) => {
            tracing::$level!(
                method = "GET",
                path = call.path,
                flavour = call.flavour.as_str(),
                status,
                error = error.error.as_str(),
                description = error.description(),
                latency_us,
                "token request refused"
            )
        };
    }
    if error.status.is_server_error() {
        refused!(warn);
    } else {
        refused!(info);
    }
}
