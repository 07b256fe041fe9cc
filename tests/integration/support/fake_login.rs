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
//! - `/authorize` (the authorization code flow, for a public client; the identity platform's
//!   auth code flow page, RFC 6749 section 4.1, RFC 7636): `client_id`, `response_type=code`
//!   and a `scope` are required, and the `redirect_uri` must be a registered one: for a public
//!   client `http://localhost` with any port and no path, as Entra matches loopback URIs;
//!   anything else gets an error page and no redirect (AADSTS50011), as Entra does. PKCE is
//!   required here with `code_challenge_method=S256` (Entra accepts `plain` and no PKCE for
//!   some clients; this fake is stricter). The browser is then redirected with `code`,
//!   `state` echoed verbatim and Entra's extra `session_state`; or, as scripted, with
//!   `error=access_denied` (the user declined, AADSTS65004) or `error=consent_required`
//!   (AADSTS65001), also echoing `state`.
//! - The `authorization_code` grant: the code must have been issued to the same `client_id`,
//!   is single-use (a second redemption is `invalid_grant`, AADSTS54005) and short-lived
//!   (after its lifetime, ten minutes unless a test shortens it, `invalid_grant` AADSTS70008);
//!   `redirect_uri` must equal the authorize request's exactly (`invalid_grant` otherwise),
//!   and `code_verifier` must hash (SHA-256, base64url) to the
//!   `code_challenge` (AADSTS501481 otherwise). The token answer follows the scopes of the
//!   authorize request, as for the device code.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
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

/// What the user does on the sign-in page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SignIn {
    /// Signs in and consents: redirected with a code.
    #[default]
    Approve,
    /// Declines: redirected with `error=access_denied`.
    Decline,
    /// The tenant requires an administrator's consent: `error=consent_required`.
    NeedsConsent,
}

/// A code issued by `/authorize`, with what its redemption must repeat.
struct IssuedCode {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    scopes: String,
    issued: Instant,
}

#[derive(Default)]
struct Behaviour {
    /// What the next `/authorize` visits do.
    sign_in: SignIn,
    /// Codes issued and not yet redeemed.
    codes: HashMap<String, IssuedCode>,
    /// Codes redeemed once already.
    redeemed: HashSet<String>,
    codes_issued: u32,
    /// How long a code stays redeemable; ten minutes when unset.
    code_lifetime: Option<Duration>,
    /// Every `/authorize` query, in order.
    authorize_requests: Vec<HashMap<String, String>>,
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
            .route("/{tenant}/oauth2/v2.0/authorize", get(authorize))
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

    /// What the user does at the next sign-ins.
    pub fn sign_in(&self, answer: SignIn) {
        self.state.lock().unwrap().sign_in = answer;
    }

    /// Codes stay redeemable for `lifetime`.
    pub fn code_lifetime(&self, lifetime: Duration) {
        self.state.lock().unwrap().code_lifetime = Some(lifetime);
    }

    /// Every `/authorize` query, in order.
    pub fn authorize_requests(&self) -> Vec<HashMap<String, String>> {
        self.state.lock().unwrap().authorize_requests.clone()
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

/// A page Entra shows instead of redirecting, for a request it cannot trust with a redirect.
fn error_page(aadsts: u32, text: &str) -> Response {
    (StatusCode::BAD_REQUEST, format!("<html><body>AADSTS{aadsts}: {text}</body></html>")).into_response()
}

/// Whether `uri` matches the registered `http://localhost` redirect URI of a public client:
/// any port, no path, query or fragment.
fn registered_loopback(uri: &str) -> bool {
    let Some(rest) = uri.strip_prefix("http://localhost") else { return false };
    match rest.strip_prefix(':') {
        None => rest.is_empty(),
        Some(port) => !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit()),
    }
}

async fn authorize(
    State(state): State<Arc<Mutex<Behaviour>>>,
    Path(_tenant): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mut s = state.lock().unwrap();
    s.authorize_requests.push(query.clone());
    let field = |name: &str| query.get(name).map(String::as_str).unwrap_or_default();
    if field("client_id").is_empty() {
        return error_page(900144, "The request body must contain the following parameter: 'client_id'.");
    }
    let redirect_uri = field("redirect_uri");
    if !registered_loopback(redirect_uri) {
        return error_page(
            50011,
            "The redirect URI specified in the request does not match the redirect URIs configured for the application.",
        );
    }
    let redirect = |pairs: &[(&str, &str)]| {
        let mut location = reqwest::Url::parse(redirect_uri).unwrap();
        {
            let mut query_pairs = location.query_pairs_mut();
            for (name, value) in pairs {
                query_pairs.append_pair(name, value);
            }
            if let Some(returned) = query.get("state") {
                query_pairs.append_pair("state", returned);
            }
        }
        (StatusCode::FOUND, [("location", location.to_string())]).into_response()
    };
    if field("response_type") != "code" || field("scope").trim().is_empty() {
        return redirect(&[
            ("error", "invalid_request"),
            ("error_description", "AADSTS900144: response_type=code and scope are required."),
        ]);
    }
    if field("code_challenge").is_empty() || field("code_challenge_method") != "S256" {
        return redirect(&[
            ("error", "invalid_request"),
            ("error_description", "AADSTS501491: PKCE with code_challenge_method S256 is required."),
        ]);
    }
    match s.sign_in {
        SignIn::Decline => {
            return redirect(&[
                ("error", "access_denied"),
                ("error_description", "AADSTS65004: User declined to consent to access the app."),
            ]);
        }
        SignIn::NeedsConsent => {
            return redirect(&[
                ("error", "consent_required"),
                (
                    "error_description",
                    "AADSTS65001: The user or administrator has not consented to use the application.",
                ),
            ]);
        }
        SignIn::Approve => {}
    }
    s.codes_issued += 1;
    let code = format!("auth-code-secret-{}", s.codes_issued);
    let issued = IssuedCode {
        client_id: field("client_id").to_owned(),
        redirect_uri: redirect_uri.to_owned(),
        challenge: field("code_challenge").to_owned(),
        scopes: field("scope").to_owned(),
        issued: Instant::now(),
    };
    s.codes.insert(code.clone(), issued);
    redirect(&[("code", &code), ("session_state", "00000000-0000-0000-0000-000000000000")])
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
        "authorization_code" => {
            let code = form.get("code").cloned().unwrap_or_default();
            if s.redeemed.contains(&code) {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    54005,
                    "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token.",
                );
            }
            let lifetime = s.code_lifetime.unwrap_or(Duration::from_secs(600));
            let Some(issued) = s.codes.remove(&code) else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    70000,
                    "The provided authorization code is not valid.",
                );
            };
            s.redeemed.insert(code);
            let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
            if issued.issued.elapsed() > lifetime {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    70008,
                    "The provided authorization code or refresh token has expired due to inactivity.",
                );
            }
            if field("client_id") != issued.client_id {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    70000,
                    "The code was issued to another application.",
                );
            }
            if field("redirect_uri") != issued.redirect_uri {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    50148,
                    "The redirect_uri does not match the one of the authorization request.",
                );
            }
            let hashed = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, field("code_verifier").as_bytes());
            if URL_SAFE_NO_PAD.encode(hashed) != issued.challenge {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    501481,
                    "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
                );
            }
            let resource = issued.scopes.split(' ').next().unwrap_or_default().trim_end_matches("/.default").to_owned();
            (resource, issued.scopes)
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
