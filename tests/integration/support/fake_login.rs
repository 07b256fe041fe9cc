//! A fake authority for user sign-in: the device code endpoint, the device code grant and
//! the refresh-token grant (rotating refresh tokens), with scripted poll answers, scripted
//! throttling and outages, revocation, and an echoing mode.
//!
//! What it enforces, as Entra does (the identity platform's device code and auth code flow
//! pages; MSAL for `client_info`):
//! - `/devicecode` needs a `client_id` and a `scope`; the scopes are remembered with the code,
//!   because the device code grant carries none of its own.
//! - A token answer holds a `refresh_token` only if the scopes included `offline_access`, and
//!   an `id_token` only if they included `openid` ("Issued if the original scope parameter
//!   included ..."). The ID token has `tid` and `sub` always, but `oid` and
//!   `preferred_username` only with `profile` ("The profile scope is required to receive this
//!   claim").
//! - `client_info` (base64url `{"uid","utid"}`) is sent only when the token request asks with
//!   `client_info=1`, the parameter MSAL adds to every token request; the protocol pages do
//!   not mention it, and Entra leaves it out otherwise.
//! - The device code grant answers RFC 8628's errors with 400 and an AADSTS code; the refresh
//!   grant answers `invalid_grant` (AADSTS70008) for a refresh token that was revoked or
//!   rotated away.
//! - Throttling is 429 with `Retry-After`, an outage 503, both with Entra's JSON error body.
//! - Bodies must be form-encoded; anything else is refused with 415.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;

use super::fake_server::FakeServer;

pub const USER_CODE: &str = "ABCD-1234";
pub const USERNAME: &str = "ada@contoso.com";
pub const USER_OID: &str = "0b1c2d3e-0000-4000-8000-0000000000b1";
pub const USER_TENANT: &str = "72f988bf-0000-4000-8000-00000000cafe";
/// The device code the fake issues: a credential, which must never be relayed.
pub const DEVICE_CODE: &str = "device-code-secret-value";

/// A failure answered to the next token request, before normal processing.
#[derive(Clone, Copy, Debug)]
pub enum Outage {
    /// 429 with this `Retry-After`.
    Throttle { retry_after_secs: u64 },
    /// A 5xx with Entra's error body.
    ServerError(u16),
}

#[derive(Default)]
struct Behaviour {
    /// OAuth errors answered to the next device code polls, in order; then success.
    polls: VecDeque<&'static str>,
    /// Failures answered to the next token requests, in order.
    outages: VecDeque<Outage>,
    /// The scopes of the last device code issued.
    device_scopes: String,
    /// The refresh token currently accepted.
    valid_refresh: Option<String>,
    refresh_issued: u32,
    access_issued: u32,
    revoked: bool,
    /// Never sends `client_info`, even when asked (an authority other than Entra).
    withhold_client_info: bool,
    /// Answers every token request with 400 and the raw request body in the description.
    echo: bool,
    seen: Vec<HashMap<String, String>>,
    device_requests: Vec<HashMap<String, String>>,
}

/// A running fake; stops when dropped.
pub struct FakeLogin {
    server: FakeServer,
    state: Arc<Mutex<Behaviour>>,
}

impl FakeLogin {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(Behaviour::default()));
        let app = Router::new()
            .route("/{tenant}/oauth2/v2.0/devicecode", post(device_code))
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .with_state(state.clone());
        Self { server: FakeServer::serve(app).await, state }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The next device code polls get these OAuth errors, then the sign-in succeeds.
    pub fn script_polls(&self, errors: &[&'static str]) {
        self.state.lock().unwrap().polls.extend(errors);
    }

    /// The next token requests get these failures, in order.
    pub fn script_outages(&self, outages: &[Outage]) {
        self.state.lock().unwrap().outages.extend(outages);
    }

    /// Revokes the current refresh token (the user changed their password, say).
    pub fn revoke(&self) {
        self.state.lock().unwrap().revoked = true;
    }

    /// From now on, never sends `client_info`.
    pub fn withhold_client_info(&self) {
        self.state.lock().unwrap().withhold_client_info = true;
    }

    /// From now on, answers every token request with 400 `invalid_request` whose description
    /// quotes the raw request body, as a misbehaving authority might.
    pub fn echo_request_bodies(&self) {
        self.state.lock().unwrap().echo = true;
    }

    /// Every token request's form, in order.
    pub fn seen(&self) -> Vec<HashMap<String, String>> {
        self.state.lock().unwrap().seen.clone()
    }

    /// Every device code request's form, in order.
    pub fn device_requests(&self) -> Vec<HashMap<String, String>> {
        self.state.lock().unwrap().device_requests.clone()
    }
}

fn oauth_error(status: StatusCode, error: &str, aadsts: u32, description: &str) -> Response {
    let body = json!({
        "error": error,
        "error_description": format!("AADSTS{aadsts}: {description}\r\nTrace ID: 0\r\nCorrelation ID: 1"),
        "error_codes": [aadsts],
        "correlation_id": "1",
    });
    (status, Json(body)).into_response()
}

async fn device_code(
    State(state): State<Arc<Mutex<Behaviour>>>,
    Path(_tenant): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let mut s = state.lock().unwrap();
    s.device_requests.push(form.clone());
    let scope = form.get("scope").cloned().unwrap_or_default();
    if form.get("client_id").is_none_or(String::is_empty) || scope.trim().is_empty() {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", 900144, "client_id and scope are required.");
    }
    s.device_scopes = scope;
    Json(json!({
        "device_code": DEVICE_CODE,
        "user_code": USER_CODE,
        "verification_uri": "https://microsoft.com/devicelogin",
        "expires_in": 60,
        "interval": 1,
        "message": format!("To sign in, use a web browser to open the page https://microsoft.com/devicelogin and enter the code {USER_CODE} to authenticate."),
    }))
    .into_response()
}

async fn token(
    State(state): State<Arc<Mutex<Behaviour>>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // Read by hand rather than with `Form`, so the echoing mode has the raw body.
    let form_encoded = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !form_encoded {
        return StatusCode::UNSUPPORTED_MEDIA_TYPE.into_response();
    }
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let mut s = state.lock().unwrap();
    s.seen.push(form.clone());
    if s.echo {
        let echoed = String::from_utf8_lossy(&body);
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", 900144, &format!("Bad request body: {echoed}"));
    }
    match s.outages.pop_front() {
        Some(Outage::Throttle { retry_after_secs }) => {
            let mut response = oauth_error(
                StatusCode::TOO_MANY_REQUESTS,
                "temporarily_unavailable",
                50196,
                "The server is throttling.",
            );
            response.headers_mut().insert("retry-after", HeaderValue::from(retry_after_secs));
            return response;
        }
        Some(Outage::ServerError(status)) => {
            let status = StatusCode::from_u16(status).unwrap();
            return oauth_error(status, "temporarily_unavailable", 50001, "The service is temporarily unavailable.");
        }
        None => {}
    }
    let grant = form.get("grant_type").map(String::as_str).unwrap_or_default();
    let (resource, scopes) = match grant {
        "urn:ietf:params:oauth:grant-type:device_code" => {
            if form.get("device_code").map(String::as_str) != Some(DEVICE_CODE) {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", 70000, "The device code is not valid.");
            }
            if let Some(error) = s.polls.pop_front() {
                let code = match error {
                    "authorization_pending" => 70016,
                    "slow_down" => 70016,
                    "expired_token" => 70020,
                    _ => 70019,
                };
                return oauth_error(StatusCode::BAD_REQUEST, error, code, "Scripted device code answer.");
            }
            ("https://management.azure.com".to_owned(), s.device_scopes.clone())
        }
        "refresh_token" => {
            let presented = form.get("refresh_token").cloned().unwrap_or_default();
            if s.revoked || s.valid_refresh.as_deref() != Some(presented.as_str()) {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    70008,
                    "The provided authorization code or refresh token has expired due to inactivity.",
                );
            }
            let scope = form.get("scope").cloned().unwrap_or_default();
            let resource = scope.split(' ').next().unwrap_or_default().trim_end_matches("/.default").to_owned();
            (resource, scope)
        }
        _ => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                70003,
                "The grant type is not supported.",
            );
        }
    };
    let asked = |name: &str| scopes.split_whitespace().any(|scope| scope == name);
    s.access_issued += 1;
    let mut answer = json!({
        "token_type": "Bearer",
        "scope": scopes,
        "expires_in": 3599,
        "ext_expires_in": 3599,
        "access_token": format!("user-token-{}-for-{resource}", s.access_issued),
    });
    if asked("offline_access") {
        s.refresh_issued += 1;
        let refresh = format!("refresh-token-{}", s.refresh_issued);
        s.valid_refresh = Some(refresh.clone());
        answer["refresh_token"] = json!(refresh);
    }
    if asked("openid") {
        let mut claims = json!({ "tid": USER_TENANT, "sub": "pairwise-subject-of-ada", "ver": "2.0" });
        if asked("profile") {
            claims["oid"] = json!(USER_OID);
            claims["preferred_username"] = json!(USERNAME);
        }
        answer["id_token"] = json!(format!("e30.{}.sig", URL_SAFE_NO_PAD.encode(claims.to_string())));
    }
    if form.get("client_info").map(String::as_str) == Some("1") && !s.withhold_client_info {
        let info = json!({ "uid": USER_OID, "utid": tenant_or(&tenant) });
        answer["client_info"] = json!(URL_SAFE_NO_PAD.encode(info.to_string()));
    }
    Json(answer).into_response()
}

/// `organizations` and `common` sign users in to their home tenant.
fn tenant_or(tenant: &str) -> &str {
    if matches!(tenant, "organizations" | "common") { USER_TENANT } else { tenant }
}
