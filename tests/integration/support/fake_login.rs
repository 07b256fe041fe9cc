//! A fake authority for user sign-in: the device code endpoint, the device code grant and
//! the refresh-token grant (rotating refresh tokens), with scripted poll answers and
//! revocation.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::extract::{Form, Path, State};
use axum::http::StatusCode;
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
const DEVICE_CODE: &str = "device-code-secret-value";

#[derive(Default)]
struct Behaviour {
    /// OAuth errors answered to the next device code polls, in order; then success.
    polls: VecDeque<&'static str>,
    /// The refresh token currently accepted.
    valid_refresh: Option<String>,
    refresh_issued: u32,
    access_issued: u32,
    revoked: bool,
    seen: Vec<HashMap<String, String>>,
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

    /// Revokes the current refresh token (the user changed their password, say).
    pub fn revoke(&self) {
        self.state.lock().unwrap().revoked = true;
    }

    /// Every token request's form, in order.
    pub fn seen(&self) -> Vec<HashMap<String, String>> {
        self.state.lock().unwrap().seen.clone()
    }
}

fn oauth_error(error: &str, aadsts: u32, description: &str) -> Response {
    let body = json!({
        "error": error,
        "error_description": format!("AADSTS{aadsts}: {description}\r\nTrace ID: 0\r\nCorrelation ID: 1"),
        "error_codes": [aadsts],
    });
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

async fn device_code(Path(_tenant): Path<String>, Form(form): Form<HashMap<String, String>>) -> Response {
    let scope = form.get("scope").cloned().unwrap_or_default();
    if form.get("client_id").is_none_or(String::is_empty) || !scope.contains("offline_access") {
        return oauth_error("invalid_request", 900144, "client_id and a scope with offline_access are required.");
    }
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
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let mut s = state.lock().unwrap();
    s.seen.push(form.clone());
    let grant = form.get("grant_type").map(String::as_str).unwrap_or_default();
    let resource = match grant {
        "urn:ietf:params:oauth:grant-type:device_code" => {
            if form.get("device_code").map(String::as_str) != Some(DEVICE_CODE) {
                return oauth_error("invalid_grant", 70000, "The device code is not valid.");
            }
            if let Some(error) = s.polls.pop_front() {
                let code = match error {
                    "authorization_pending" => 70016,
                    "slow_down" => 70016,
                    "expired_token" => 70020,
                    _ => 70019,
                };
                return oauth_error(error, code, "Scripted device code answer.");
            }
            "https://management.azure.com".to_owned()
        }
        "refresh_token" => {
            let presented = form.get("refresh_token").cloned().unwrap_or_default();
            if s.revoked || s.valid_refresh.as_deref() != Some(presented.as_str()) {
                return oauth_error(
                    "invalid_grant",
                    70008,
                    "The provided authorization code or refresh token has expired due to inactivity.",
                );
            }
            let scope = form.get("scope").cloned().unwrap_or_default();
            scope.split(' ').next().unwrap_or_default().trim_end_matches("/.default").to_owned()
        }
        _ => return oauth_error("unsupported_grant_type", 70003, "The grant type is not supported."),
    };
    s.refresh_issued += 1;
    s.access_issued += 1;
    let refresh = format!("refresh-token-{}", s.refresh_issued);
    s.valid_refresh = Some(refresh.clone());
    let client_info = URL_SAFE_NO_PAD.encode(json!({ "uid": USER_OID, "utid": tenant_or(&tenant) }).to_string());
    let claims = URL_SAFE_NO_PAD.encode(json!({ "preferred_username": USERNAME, "tid": USER_TENANT }).to_string());
    Json(json!({
        "token_type": "Bearer",
        "expires_in": 3599,
        "ext_expires_in": 3599,
        "access_token": format!("user-token-{}-for-{resource}", s.access_issued),
        "refresh_token": refresh,
        "id_token": format!("e30.{claims}.sig"),
        "client_info": client_info,
    }))
    .into_response()
}

/// `organizations` and `common` sign users in to their home tenant.
fn tenant_or(tenant: &str) -> &str {
    if matches!(tenant, "organizations" | "common") { USER_TENANT } else { tenant }
}
