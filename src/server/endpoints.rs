//! The listener's front door. Token requests, the hot path, are recognised with two string
//! comparisons and go straight to their flavour's handler; everything else (health,
//! readiness, metrics, discovery, unknown paths) goes through the axum router.
//!
//! Routing, path normalisation, the URI limit and the request timeout as four tower layers
//! around the router would cost more per cache hit than the token lookup itself
//! (docs/architecture.md#the-request-path), so the token path does the same work inline, once.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{BoxError, Router};
use tower::{Layer, ServiceExt};
use tower_http::normalize_path::{NormalizePath, NormalizePathLayer};

use super::error::ApiError;
use super::head::RequestHead;
use super::host::AllowedHosts;
use super::state::AppState;
use super::token::{Flavour, TokenAnswer};
use super::wire::OAuthError;
use super::{app_service, dev_user, imds, sidecar};
use crate::config::IMDS_PATH;

/// A cheap-to-clone tower service answering one listener's requests.
#[derive(Clone)]
pub struct Endpoints(Arc<Inner>);

struct Inner {
    state: AppState,
    /// The IMDS path without its slashes, when that flavour is served.
    imds_path: Option<&'static str>,
    /// The App Service path without its slashes, when that flavour is served.
    app_service_path: Option<Box<str>>,
    /// Longest request target (path and query) accepted; longer gets 414.
    max_uri_bytes: usize,
    /// The hosts a token request may name (the DNS rebinding guard).
    hosts: AllowedHosts,
    /// Whether this listener serves the user-token endpoints and `/dev/user-token` (the token
    /// listener, never the admin one).
    user_endpoints: bool,
    /// Everything that is not a token request.
    others: NormalizePath<Router>,
}

impl Endpoints {
    /// Serves the token flavours the configuration enables, plus `others`.
    pub(super) fn new(
        state: AppState,
        imds: bool,
        app_service_path: Option<&str>,
        max_uri_bytes: usize,
        hosts: AllowedHosts,
        others: Router,
    ) -> Self {
        Self(Arc::new(Inner {
            state,
            imds_path: imds.then(|| IMDS_PATH.trim_matches('/')),
            app_service_path: app_service_path.map(|p| p.trim_matches('/').into()),
            max_uri_bytes,
            hosts,
            user_endpoints: false,
            others: NormalizePathLayer::trim_trailing_slash().layer(others),
        }))
    }

    /// Serves the user-token endpoints too, when the state has them (and `/dev/user-token`
    /// under `--dev`).
    pub(super) fn with_user_endpoints(self) -> Self {
        let mut inner = Arc::try_unwrap(self.0).unwrap_or_else(|_| unreachable!("not shared before serving"));
        inner.user_endpoints = true;
        Self(Arc::new(inner))
    }
}

impl Inner {
    /// Which token endpoint `path` names. Leading and trailing slashes are ignored, as the
    /// SDKs send `//metadata/...` and `.../token/` (docs/protocols.md#paths-the-sdks-send).
    fn flavour(&self, path: &str) -> Option<Flavour> {
        // `trim_matches` by byte: a `char` pattern decodes UTF-8 on every request.
        let start = path.bytes().position(|b| b != b'/').unwrap_or(path.len());
        let end = path.bytes().rposition(|b| b != b'/').map_or(start, |last| last + 1);
        let path = &path[start..end.max(start)];
        if self.imds_path == Some(path) {
            Some(Flavour::Imds)
        } else if self.app_service_path.as_deref() == Some(path) {
            Some(Flavour::AppService)
        } else {
            None
        }
    }

    /// The response future for `request`. Each kind of request gets a box of its own size:
    /// the token path's holds only the request's head and its handler, so that a cache hit
    /// neither allocates nor copies the state of the rarer paths, nor the request twice (an
    /// argument moved into an `async fn` is held in its state beside what it became).
    fn answer<B>(self: Arc<Self>, request: Request<B>) -> Answer
    where
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let length = request.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
        if length > self.max_uri_bytes {
            return ready(uri_too_long(length, self.max_uri_bytes));
        }
        if let Some(flavour) = self.flavour(request.uri().path()) {
            if request.method() != Method::GET && request.method() != Method::HEAD {
                return ready(method_not_allowed());
            }
            // The body of a GET is never read.
            let (parts, _body) = request.into_parts();
            return Box::pin(token_request(self, flavour, parts));
        }
        if self.user_endpoints {
            let path = request.uri().path();
            if self.state.user_endpoints.is_some() && sidecar::route(path).is_some() {
                let (parts, _body) = request.into_parts();
                return Box::pin(async move {
                    let route = sidecar::route(parts.uri.path()).expect("matched above");
                    Ok(sidecar::handle(&self.state, &self.hosts, &parts, route).await)
                });
            }
            if self.state.dev_issuer.is_some() && path.trim_matches('/').eq_ignore_ascii_case("dev/user-token") {
                return Box::pin(async move { Ok(dev_user::handle(&self.state, &self.hosts, request).await) });
            }
        }
        let others = self.others.clone();
        Box::pin(others.oneshot(request.map(Body::new)))
    }
}

/// The future a listener's service returns.
type Answer = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

/// An answer known at once.
fn ready(response: Response) -> Answer {
    Box::pin(std::future::ready(Ok(response)))
}

/// A token request, once its path and method are known.
async fn token_request(inner: Arc<Inner>, flavour: Flavour, parts: Parts) -> Result<Response, Infallible> {
    Ok(inner.token(flavour, &parts).await.into_response())
}

impl Inner {
    /// The answer to a token request of `flavour`: what both the direct path and hyper's
    /// service call, so that a request gets the same answer whichever served it.
    async fn token(&self, flavour: Flavour, request: &impl RequestHead) -> TokenAnswer {
        match flavour {
            Flavour::Imds => imds::handle(&self.state, &self.hosts, request).await,
            Flavour::AppService => app_service::handle(&self.state, &self.hosts, request).await,
        }
    }
}

impl Endpoints {
    /// Which token endpoint a `GET` of `path` asks, when it is one and the target (`target_bytes`
    /// long) is within the URI limit: the requests the direct path (`super::direct`) answers.
    /// Anything else (a longer target, another path) is left to the full service, which gives
    /// the refusals.
    pub(super) fn token_flavour(&self, path: &str, target_bytes: usize) -> Option<Flavour> {
        if target_bytes > self.0.max_uri_bytes {
            return None;
        }
        self.0.flavour(path)
    }

    /// The answer to a `GET` that [`Endpoints::token_flavour`] found to be a token request.
    pub(super) async fn token(&self, flavour: Flavour, request: &impl RequestHead) -> TokenAnswer {
        self.0.token(flavour, request).await
    }
}

impl<B> tower::Service<Request<B>> for Endpoints
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Answer;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        hyper::service::Service::call(self, request)
    }
}

/// What the listener serves: hyper calls the service directly, without tower's adapter and its
/// per-request readiness state machine (the service is always ready).
impl<B> hyper::service::Service<Request<B>> for Endpoints
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, request: Request<B>) -> Self::Future {
        Arc::clone(&self.0).answer(request)
    }
}

/// 414: hyper's own limit is 64 KiB, far beyond any token request, so the limit is ours.
fn uri_too_long(length: usize, max: usize) -> Response {
    ApiError {
        status: StatusCode::URI_TOO_LONG,
        error: OAuthError::InvalidRequest,
        description: format!("the request target is {length} bytes; the limit is {max}"),
        retry_after: None,
    }
    .into_response()
}

/// 405 for anything but `GET` (and `HEAD`) on a token endpoint.
fn method_not_allowed() -> Response {
    let mut response = ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        error: OAuthError::InvalidRequest,
        description: "token endpoints answer GET only".to_owned(),
        retry_after: None,
    }
    .into_response();
    response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET,HEAD"));
    response
}

/// Endpoints over a broker without identities, for tests that look at routing and at the
/// request's handling, never at a token (no credential is needed).
#[cfg(test)]
pub(super) fn for_tests(imds: bool, app_service: Option<&str>, max_uri_bytes: usize) -> Endpoints {
    use crate::broker::{Broker, CacheSettings, Policy};
    let settings = CacheSettings {
        max_entries: 100,
        negative_ttl: std::time::Duration::from_secs(30),
        policy: Policy { serve_margin_secs: 300, refresh_backoff_secs: 5, refresh_backoff_max_secs: 300 },
        max_background_refreshes: 1,
        new_keys_per_minute: 60,
        new_keys_burst: 60,
    };
    let broker = Arc::new(Broker::new(Vec::new(), settings, Arc::new(crate::clock::SystemClock)));
    let state = AppState {
        broker,
        identity_header: None,
        probe_mode: crate::config::ProbeMode::Strict,
        dev_issuer: None,
        metrics: None,
        request_timeout: std::time::Duration::from_secs(1),
        log_requests: crate::config::RequestLog::default(),
        user_endpoints: None,
    };
    Endpoints::new(state, imds, app_service, max_uri_bytes, AllowedHosts::default(), Router::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inner(imds: bool, app_service: Option<&str>) -> Arc<Inner> {
        for_tests(imds, app_service, 100).0
    }

    #[test]
    fn a_token_request_future_stays_small() {
        // Each request's future is moved into a box; the upstream wait, its timer and the
        // router are boxed separately so that a cache hit does not create and copy kilobytes
        // of state. The bound holds in the test (debug) build, where futures are largest;
        // inlining the upstream wait, the timer or the router would break it.
        let inner = inner(true, None);
        let (parts, _body) = Request::get("/metadata/identity/oauth2/token").body(()).unwrap().into_parts();
        let size = std::mem::size_of_val(&token_request(inner, Flavour::Imds, parts));
        assert!(size <= 4 * 1024, "the request future is {size} bytes");
    }

    #[test]
    fn token_paths_are_found_with_any_leading_or_trailing_slashes() {
        let both = inner(true, Some("/msi/token/"));
        for path in [
            "/metadata/identity/oauth2/token",
            "//metadata/identity/oauth2/token/",
            "/metadata/identity/oauth2/token//",
        ] {
            assert_eq!(both.flavour(path), Some(Flavour::Imds), "{path}");
        }
        for path in ["/msi/token", "/msi/token/", "//msi/token"] {
            assert_eq!(both.flavour(path), Some(Flavour::AppService), "{path}");
        }
        for path in ["/", "/healthz", "/metadata/identity/oauth2", "/metadata//identity/oauth2/token", "/msi/tokens"] {
            assert_eq!(both.flavour(path), None, "{path}");
        }
        let neither = inner(false, None);
        assert_eq!(neither.flavour("/metadata/identity/oauth2/token"), None);
        assert_eq!(neither.flavour("/msi/token"), None);
    }
}
