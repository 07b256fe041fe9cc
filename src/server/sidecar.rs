//! The user-token endpoints, in the HTTP shapes of Microsoft's identity sidecar ("Microsoft
//! Entra SDK for AgentID"): `GET /Validate`, `GET /AuthorizationHeader/{name}` and
//! `GET /AuthorizationHeaderUnauthenticated/{name}` (docs/http-api.md#user-token-endpoints).
//!
//! Like the token endpoints they skip the router, are served on the token listener only, and
//! pass the same caller checks first: no `X-Tokenrelay-Hop`, an admitted `Host`, no
//! `X-Forwarded-For`. An application written for Microsoft's sidecar sends no secret header,
//! so `X-IDENTITY-HEADER` is checked only when sent (refused with 401 when wrong), unless
//! `server.user_endpoints_identity_header = "required"`.
//!
//! Answers: the sidecar's JSON bodies on success; errors as RFC 9457 problem details
//! (`application/problem+json`, `type`, `title`, `status`, `detail`), as ASP.NET answers for
//! the sidecar, with `WWW-Authenticate` (RFC 6750) on 401 and 403.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use base64::Engine;
use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::host::AllowedHosts;
use super::state::AppState;
use super::token;
use crate::broker::{BrokerError, Identity, UpstreamKind};
use crate::config::{RequestLog, normalize_resource, split_scope};
use crate::inbound::{Failure, Refusal, Validator};
use crate::secret::Secret;
use crate::telemetry::metrics;

/// Most scopes one request may name through `optionsOverride.Scopes`.
const MAX_OVERRIDE_SCOPES: usize = 16;
/// Most query parameters read.
const MAX_QUERY_PARAMETERS: usize = 64;
/// `Retry-After` for transient trouble, seconds (as the token endpoints).
const TRANSIENT_RETRY_AFTER_SECS: u64 = 2;

/// One `[[downstream_apis]]` entry, resolved.
pub struct DownstreamApi {
    /// The `{name}` of the path.
    pub name: String,
    /// The configured scopes, space-separated as the exchange sends them.
    pub scopes: String,
    /// The identity whose credential authenticates the exchange.
    pub identity: Arc<Identity>,
}

/// What the user-token endpoints need, built once at start.
pub struct UserEndpoints {
    /// The identities' inbound policies and the authority's keys.
    pub validator: Validator,
    /// The downstream APIs by name.
    pub apis: Vec<DownstreamApi>,
    /// `server.user_endpoints_identity_header = "required"`.
    pub require_identity_header: bool,
}

/// Which endpoint a path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route<'a> {
    Validate,
    AuthorizationHeader(&'a str),
    AuthorizationHeaderUnauthenticated(&'a str),
}

impl Route<'_> {
    fn flavour(self) -> &'static str {
        match self {
            Self::Validate => "validate",
            Self::AuthorizationHeader(_) => "authorization_header",
            Self::AuthorizationHeaderUnauthenticated(_) => "authorization_header_unauthenticated",
        }
    }
}

/// The route `path` names, compared case-insensitively as ASP.NET routes are; leading and
/// trailing slashes ignored.
pub fn route(path: &str) -> Option<Route<'_>> {
    let path = path.trim_matches('/');
    let (first, rest) = match path.split_once('/') {
        Some((first, rest)) => (first, Some(rest)),
        None => (path, None),
    };
    match (first.to_ascii_lowercase().as_str(), rest) {
        ("validate", None) => Some(Route::Validate),
        ("authorizationheader", Some(name)) if !name.contains('/') => Some(Route::AuthorizationHeader(name)),
        ("authorizationheaderunauthenticated", Some(name)) if !name.contains('/') => {
            Some(Route::AuthorizationHeaderUnauthenticated(name))
        }
        _ => None,
    }
}

/// A refusal in the problem-details shape.
#[derive(Debug)]
struct Problem {
    status: StatusCode,
    detail: String,
    /// `WWW-Authenticate`, for 401 and 403.
    challenge: Option<String>,
    retry_after: Option<u64>,
    /// Members beyond the standard ones (`error`, `claims`, ...).
    extensions: Map<String, Value>,
}

impl Problem {
    fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self { status, detail: detail.into(), challenge: None, retry_after: None, extensions: Map::new() }
    }

    /// 401 with an RFC 6750 `invalid_token` challenge naming the failed check.
    fn invalid_token(detail: impl Into<String>) -> Self {
        let detail = detail.into();
        let challenge = format!("Bearer error=\"invalid_token\", error_description=\"{}\"", quoted(&detail));
        Self { challenge: Some(challenge), ..Self::new(StatusCode::UNAUTHORIZED, detail) }
    }

    fn from_refusal(refusal: Refusal) -> Self {
        match refusal.failure {
            Failure::InvalidToken => Self::invalid_token(refusal.description),
            Failure::InsufficientScope => {
                let challenge = format!(
                    "Bearer error=\"insufficient_scope\", error_description=\"{}\"",
                    quoted(&refusal.description)
                );
                Self { challenge: Some(challenge), ..Self::new(StatusCode::FORBIDDEN, refusal.description) }
            }
            Failure::KeysUnavailable => Self {
                retry_after: Some(TRANSIENT_RETRY_AFTER_SECS),
                ..Self::new(StatusCode::SERVICE_UNAVAILABLE, refusal.description)
            },
        }
    }

    /// From one of the token endpoints' errors (the caller checks).
    fn from_api_error(error: ApiError) -> Self {
        Self { retry_after: error.retry_after, ..Self::new(error.status, error.description) }
    }

    /// A failed exchange or app token: the user's refusals go back as 401 with the challenge
    /// intact; the application's own (a bad secret) are a 500, since no request can fix them.
    fn from_broker(error: BrokerError) -> Self {
        let description = error.to_string();
        match error {
            BrokerError::Upstream {
                kind: UpstreamKind::UserRefused { error, aadsts, claims, correlation_id }, ..
            } => {
                let mut challenge = format!(
                    "Bearer error=\"{}\"",
                    if claims.is_some() { "insufficient_claims" } else { "invalid_token" }
                );
                challenge.push_str(&format!(", error_description=\"{}\"", quoted(&description)));
                let mut problem = Self::new(StatusCode::UNAUTHORIZED, description);
                problem.extensions.insert("error".into(), json!(error));
                if let Some(code) = aadsts {
                    problem.extensions.insert("errorCodes".into(), json!([code]));
                }
                if let Some(claims) = claims {
                    // RFC 6750 values are quoted strings; the claims JSON goes base64-encoded,
                    // as Entra's own challenges carry it. The body has it as Entra sent it.
                    let encoded = base64::engine::general_purpose::STANDARD.encode(&claims);
                    challenge.push_str(&format!(", claims=\"{encoded}\""));
                    problem.extensions.insert("claims".into(), json!(claims));
                }
                if let Some(id) = correlation_id {
                    problem.extensions.insert("correlationId".into(), json!(id));
                }
                problem.challenge = Some(challenge);
                problem
            }
            other => {
                let api = ApiError::from(other);
                let status =
                    if api.status == StatusCode::BAD_REQUEST { StatusCode::INTERNAL_SERVER_ERROR } else { api.status };
                Self { retry_after: api.retry_after, ..Self::new(status, api.description) }
            }
        }
    }

    fn into_response(self) -> Response {
        let mut body = Map::new();
        body.insert("type".into(), json!(type_of(self.status)));
        body.insert("title".into(), json!(self.status.canonical_reason().unwrap_or("Error")));
        body.insert("status".into(), json!(self.status.as_u16()));
        body.insert("detail".into(), json!(self.detail));
        body.extend(self.extensions);
        let mut response = Response::new(Body::from(Value::Object(body).to_string()));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(challenge) = self.challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            headers.insert(header::WWW_AUTHENTICATE, challenge);
        }
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// The problem `type` ASP.NET gives each status (RFC 9110 sections).
fn type_of(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "https://tools.ietf.org/html/rfc9110#section-15.5.1",
        401 => "https://tools.ietf.org/html/rfc9110#section-15.5.2",
        403 => "https://tools.ietf.org/html/rfc9110#section-15.5.4",
        404 => "https://tools.ietf.org/html/rfc9110#section-15.5.5",
        405 => "https://tools.ietf.org/html/rfc9110#section-15.5.6",
        429 => "https://tools.ietf.org/html/rfc6585#section-4",
        500 => "https://tools.ietf.org/html/rfc9110#section-15.6.1",
        503 => "https://tools.ietf.org/html/rfc9110#section-15.6.4",
        _ => "about:blank",
    }
}

/// Text for inside an RFC 6750 quoted string: printable ASCII without `"` and `\`.
fn quoted(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' })
        .filter(|c| *c != '"' && *c != '\\')
        .take(400)
        .collect()
}

/// A success body with the no-caching headers Microsoft's sidecar sends.
fn ok(body: Value) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, no-store, must-revalidate"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers.insert(header::EXPIRES, HeaderValue::from_static("0"));
    response
}

/// Handles one request to a user-token endpoint.
pub async fn handle(state: &AppState, hosts: &AllowedHosts, request: &Parts, route: Route<'_>) -> Response {
    let started = Instant::now();
    let flavour = route.flavour();
    let answer = match answer(state, hosts, request, route).await {
        Ok(response) => response,
        Err(problem) => {
            if state.log_requests != RequestLog::None {
                tracing::info!(
                    method = %request.method,
                    path = request.uri.path(),
                    flavour,
                    status = problem.status.as_u16(),
                    description = %problem.detail,
                    "user-token request refused"
                );
            }
            problem.into_response()
        }
    };
    metrics::request(flavour, answer.status().as_u16(), started.elapsed());
    answer
}

async fn answer(
    state: &AppState,
    hosts: &AllowedHosts,
    request: &Parts,
    route: Route<'_>,
) -> Result<Response, Problem> {
    let Some(user) = state.user_endpoints.as_deref() else {
        return Err(Problem::new(StatusCode::NOT_FOUND, "no such endpoint"));
    };
    if request.method != Method::GET && request.method != Method::HEAD {
        let mut problem = Problem::new(StatusCode::METHOD_NOT_ALLOWED, "this endpoint answers GET only");
        problem.extensions.insert("allow".into(), json!("GET, HEAD"));
        return Err(problem);
    }
    let headers = &request.headers;
    token::admit(hosts, request).map_err(Problem::from_api_error)?;
    if headers.contains_key(token::X_FORWARDED_FOR) {
        return Err(Problem::new(StatusCode::BAD_REQUEST, "Requests with an X-Forwarded-For header are not accepted"));
    }
    check_identity_header(state, user, headers)?;
    let query = Overrides::parse(request.uri.query())?;
    match route {
        Route::Validate => {
            let (token, _) = bearer(headers)?;
            let validated = user.validator.validate(token, None).await.map_err(Problem::from_refusal)?;
            Ok(ok(json!({ "protocol": "Bearer", "token": token, "claims": Value::Object(validated.claims) })))
        }
        Route::AuthorizationHeader(name) => {
            let api = find_api(user, name)?;
            let (token, _) = bearer(headers)?;
            let policy = user.validator.policy_of(&api.identity.name).ok_or_else(|| {
                Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!(
                        "identity {:?} of downstream API {:?} has no inbound section, so it accepts no user token",
                        api.identity.name, api.name
                    ),
                )
            })?;
            let validated = user.validator.validate(token, Some(policy)).await.map_err(Problem::from_refusal)?;
            let scopes = query.scopes.as_deref().unwrap_or(&api.scopes);
            if query.request_app_token {
                return app_token(state, api, scopes).await;
            }
            let assertion = Secret::new(token);
            let exchange = state.broker.on_behalf_of(&api.identity, scopes, &assertion, validated.expires_on);
            let (entry, _) = tokio::time::timeout(state.request_timeout, exchange)
                .await
                .map_err(|_| timed_out(state))?
                .map_err(Problem::from_broker)?;
            Ok(ok(json!({ "authorizationHeader": format!("Bearer {}", entry.token.token.expose()) })))
        }
        Route::AuthorizationHeaderUnauthenticated(name) => {
            // As Microsoft's sidecar by default: overrides are ignored on this route.
            let api = find_api(user, name)?;
            app_token(state, api, &api.scopes).await
        }
    }
}

/// The application's own token for the resource of `scopes`, from the token cache.
async fn app_token(state: &AppState, api: &DownstreamApi, scopes: &str) -> Result<Response, Problem> {
    let mut resource: Option<&str> = None;
    for scope in scopes.split(' ').filter(|s| !s.is_empty()) {
        let (scope_resource, _) = split_scope(scope);
        if resource.is_some_and(|r| r != scope_resource) {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "an application token is for one resource; the scopes name more than one",
            ));
        }
        resource = Some(scope_resource);
    }
    let resource = normalize_resource(resource.unwrap_or_default());
    let lookup = state.broker.token(&api.identity, resource);
    let served = tokio::time::timeout(state.request_timeout, lookup)
        .await
        .map_err(|_| timed_out(state))?
        .map_err(Problem::from_broker)?;
    Ok(ok(json!({ "authorizationHeader": format!("Bearer {}", served.entry.token.token.expose()) })))
}

fn timed_out(state: &AppState) -> Problem {
    Problem {
        retry_after: Some(TRANSIENT_RETRY_AFTER_SECS),
        ..Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no token from the upstream within {} s", state.request_timeout.as_secs()),
        )
    }
}

fn find_api<'a>(user: &'a UserEndpoints, name: &str) -> Result<&'a DownstreamApi, Problem> {
    user.apis.iter().find(|api| api.name.eq_ignore_ascii_case(name)).ok_or_else(|| {
        let shown: String = name.chars().take(64).collect();
        // Microsoft's sidecar words it so.
        Problem::new(StatusCode::BAD_REQUEST, format!("Not able to resolve '{shown}'."))
    })
}

/// `X-IDENTITY-HEADER`: checked when sent (constant time), required when configured so.
fn check_identity_header(state: &AppState, user: &UserEndpoints, headers: &HeaderMap) -> Result<(), Problem> {
    let presented = headers.get(token::X_IDENTITY_HEADER).map(HeaderValue::as_bytes);
    let unauthorized = |detail: &str| {
        let challenge = "Bearer error=\"invalid_request\"".to_owned();
        Problem { challenge: Some(challenge), ..Problem::new(StatusCode::UNAUTHORIZED, detail) }
    };
    match (presented, state.identity_header.as_deref()) {
        (None, _) if !user.require_identity_header => Ok(()),
        (None, _) => {
            metrics::identity_header_refused(metrics::HeaderRefusal::Missing);
            Err(unauthorized("X-IDENTITY-HEADER is required (server.user_endpoints_identity_header)"))
        }
        (Some(value), Some(expected)) if expected.matches(value) => Ok(()),
        (Some(_), _) => {
            metrics::identity_header_refused(metrics::HeaderRefusal::Mismatch);
            Err(unauthorized("X-IDENTITY-HEADER does not match IDENTITY_HEADER"))
        }
    }
}

/// The bearer token of `Authorization`, and the scheme as sent.
fn bearer(headers: &HeaderMap) -> Result<(&str, &str), Problem> {
    let missing = || {
        // RFC 6750 section 3.1: no error code when the request carried no credentials.
        let mut problem = Problem::new(StatusCode::UNAUTHORIZED, "No token found: send Authorization: Bearer <token>");
        problem.challenge = Some("Bearer".to_owned());
        problem
    };
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or_else(missing)?;
    if values.next().is_some() {
        return Err(Problem::invalid_token("more than one Authorization header"));
    }
    let value = value.to_str().map_err(|_| Problem::invalid_token("the Authorization header is not ASCII"))?;
    let (scheme, token) = value.trim().split_once(' ').ok_or_else(missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(missing());
    }
    Ok((token.trim(), scheme))
}

/// The `optionsOverride.*` query parameters tokenrelay honours on `/AuthorizationHeader`.
#[derive(Debug, Default)]
struct Overrides {
    /// `optionsOverride.Scopes` (repeatable): replaces the API's scopes.
    scopes: Option<String>,
    /// `optionsOverride.RequestAppToken=true`: the application's own token instead.
    request_app_token: bool,
}

impl Overrides {
    fn parse(query: Option<&str>) -> Result<Self, Problem> {
        let mut overrides = Self::default();
        let mut scopes: Vec<String> = Vec::new();
        for (count, (key, value)) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()).enumerate() {
            if count >= MAX_QUERY_PARAMETERS {
                return Err(Problem::new(
                    StatusCode::BAD_REQUEST,
                    format!("more than {MAX_QUERY_PARAMETERS} query parameters"),
                ));
            }
            let key = key.to_ascii_lowercase();
            match key.as_str() {
                "optionsoverride.scopes" => {
                    for scope in value.split_whitespace() {
                        if scopes.len() == MAX_OVERRIDE_SCOPES || scope.len() > 512 {
                            return Err(Problem::new(
                                StatusCode::BAD_REQUEST,
                                format!("at most {MAX_OVERRIDE_SCOPES} scopes of at most 512 bytes each"),
                            ));
                        }
                        scopes.push(scope.to_owned());
                    }
                }
                "optionsoverride.requestapptoken" => overrides.request_app_token = value.eq_ignore_ascii_case("true"),
                // What shapes a downstream call, not a header, or what Microsoft's sidecar
                // itself always ignores (BaseUrl): nothing to do.
                "optionsoverride.baseurl"
                | "optionsoverride.relativepath"
                | "optionsoverride.httpmethod"
                | "optionsoverride.acceptheader"
                | "optionsoverride.contenttype" => {}
                other if other.starts_with("optionsoverride.") || other.starts_with("agent") => {
                    let shown: String = other.chars().take(64).collect();
                    return Err(Problem::new(
                        StatusCode::BAD_REQUEST,
                        format!("{shown} is not supported by tokenrelay (docs/http-api.md#user-token-endpoints)"),
                    ));
                }
                _ => {}
            }
        }
        if !scopes.is_empty() {
            overrides.scopes = Some(scopes.join(" "));
        }
        Ok(overrides)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_matched_like_asp_net_routes() {
        assert_eq!(route("/Validate"), Some(Route::Validate));
        assert_eq!(route("/validate/"), Some(Route::Validate));
        assert_eq!(route("/AuthorizationHeader/graph"), Some(Route::AuthorizationHeader("graph")));
        assert_eq!(route("/authorizationheader/graph/"), Some(Route::AuthorizationHeader("graph")));
        assert_eq!(
            route("/AuthorizationHeaderUnauthenticated/graph"),
            Some(Route::AuthorizationHeaderUnauthenticated("graph"))
        );
        for path in ["/", "/Validate/x", "/AuthorizationHeader", "/AuthorizationHeader/a/b", "/Validated"] {
            assert_eq!(route(path), None, "{path}");
        }
    }

    #[test]
    fn overrides_are_read_and_unsupported_ones_refused() {
        let parsed = Overrides::parse(Some(
            "optionsOverride.Scopes=User.Read&optionsOverride.Scopes=Mail.Read&optionsOverride.BaseUrl=https://evil",
        ))
        .unwrap();
        assert_eq!(parsed.scopes.as_deref(), Some("User.Read Mail.Read"));
        assert!(!parsed.request_app_token);
        assert!(Overrides::parse(Some("optionsOverride.RequestAppToken=true")).unwrap().request_app_token);
        let refused = Overrides::parse(Some("optionsOverride.AcquireTokenOptions.Tenant=x")).err().unwrap();
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        assert!(Overrides::parse(Some("AgentIdentity=x")).is_err());
        let many = (0..20).map(|i| format!("optionsOverride.Scopes=s{i}")).collect::<Vec<_>>().join("&");
        assert!(Overrides::parse(Some(&many)).is_err());
    }

    #[test]
    fn challenges_hold_only_quotable_text() {
        assert_eq!(quoted("a \"b\" \\c\nd"), "a b c?d");
        let problem = Problem::invalid_token("the token expired at 5");
        let response = problem.into_response();
        assert_eq!(
            response.headers()[header::WWW_AUTHENTICATE],
            "Bearer error=\"invalid_token\", error_description=\"the token expired at 5\""
        );
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/problem+json");
    }
}
