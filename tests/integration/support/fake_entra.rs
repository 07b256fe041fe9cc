//! A fake Microsoft Entra ID authority: `POST /{tenant}/oauth2/v2.0/token`.
//!
//! It behaves like the real one where tokenrelay can tell: it validates the form (grant type,
//! client id, scope, secret or assertion), answers with Entra's JSON shapes and AADSTS codes,
//! and can be scripted to be slow, fail, throttle with `Retry-After`, or go down.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;
use tokio::task::JoinHandle;

pub const TENANT: &str = "72f988bf-0000-4000-8000-00000000cafe";
pub const CLIENT_ID: &str = "5e29463d-0000-4000-8000-0000000000a1";
pub const CLIENT_SECRET: &str = "correct-horse-battery-staple";

/// What the fake does with the next request, before normal processing.
#[derive(Clone, Debug)]
pub enum Scripted {
    /// An Entra error: status, AADSTS code, OAuth error name.
    Error { status: u16, aadsts: u32, error: &'static str },
    /// 429 with this `Retry-After`.
    Throttle { retry_after_secs: u64 },
    /// A 5xx without a useful body.
    ServerError(u16),
}

/// One request as the fake saw it.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    pub tenant: String,
    pub form: HashMap<String, String>,
}

#[derive(Debug)]
struct Behaviour {
    lifetime_secs: u64,
    refresh_in_secs: Option<u64>,
    delay: Duration,
    down: bool,
    /// The assertion accepted for federated credentials; `None` accepts the client secret only.
    accepted_assertion: Option<String>,
    /// AADSTS code answered for any other assertion (70021 mismatch, 700024 expired).
    wrong_assertion_code: u32,
    script: VecDeque<Scripted>,
    seen: Vec<SeenRequest>,
    issued: u64,
}

/// A running fake authority; stops when dropped.
pub struct FakeEntra {
    addr: SocketAddr,
    state: Arc<Mutex<Behaviour>>,
    task: JoinHandle<()>,
}

impl FakeEntra {
    /// Starts on an ephemeral loopback port.
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(Behaviour {
            lifetime_secs: 3599,
            refresh_in_secs: None,
            delay: Duration::ZERO,
            down: false,
            accepted_assertion: None,
            wrong_assertion_code: 70021,
            script: VecDeque::new(),
            seen: Vec::new(),
            issued: 0,
        }));
        let app = Router::new().route("/{tenant}/oauth2/v2.0/token", post(token)).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, state, task }
    }

    /// The authority host to configure (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Lifetime (`expires_in`) of tokens issued from now on.
    pub fn set_lifetime(&self, secs: u64) {
        self.state.lock().unwrap().lifetime_secs = secs;
    }

    /// Sends `refresh_in` with every token from now on.
    pub fn set_refresh_in(&self, secs: Option<u64>) {
        self.state.lock().unwrap().refresh_in_secs = secs;
    }

    /// Delays every answer.
    pub fn set_delay(&self, delay: Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    /// While down, every request gets 503 (after being counted).
    pub fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }

    /// Accepts this federated token as `client_assertion`; any other gets `wrong_code`.
    pub fn accept_assertion(&self, assertion: &str, wrong_code: u32) {
        let mut state = self.state.lock().unwrap();
        state.accepted_assertion = Some(assertion.to_owned());
        state.wrong_assertion_code = wrong_code;
    }

    /// Queues behaviour for the next requests, in order.
    pub fn script(&self, steps: impl IntoIterator<Item = Scripted>) {
        self.state.lock().unwrap().script.extend(steps);
    }

    /// How many token requests arrived.
    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().seen.len()
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.state.lock().unwrap().seen.clone()
    }

    /// How many tokens were issued.
    pub fn issued(&self) -> u64 {
        self.state.lock().unwrap().issued
    }
}

impl Drop for FakeEntra {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn entra_error(status: u16, error: &str, aadsts: u32, description: &str) -> Response {
    let body = json!({
        "error": error,
        "error_description": format!("AADSTS{aadsts}: {description}\r\nTrace ID: 00000000-0000-0000-0000-000000000000\r\nCorrelation ID: 11111111-1111-1111-1111-111111111111\r\nTimestamp: 2026-11-29 12:00:00Z"),
        "error_codes": [aadsts],
        "timestamp": "2026-11-29 12:00:00Z",
        "trace_id": "00000000-0000-0000-0000-000000000000",
        "correlation_id": "11111111-1111-1111-1111-111111111111",
    });
    (StatusCode::from_u16(status).unwrap(), Json(body)).into_response()
}

async fn token(
    State(state): State<Arc<Mutex<Behaviour>>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let (delay, scripted, down) = {
        let mut s = state.lock().unwrap();
        s.seen.push(SeenRequest { tenant: tenant.clone(), form: form.clone() });
        (s.delay, s.script.pop_front(), s.down)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if down {
        return (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable").into_response();
    }
    match scripted {
        Some(Scripted::Error { status, aadsts, error }) => {
            return entra_error(status, error, aadsts, "scripted failure.");
        }
        Some(Scripted::Throttle { retry_after_secs }) => {
            let mut response = entra_error(429, "temporarily_unavailable", 50196, "The server is throttling.");
            response.headers_mut().insert("retry-after", HeaderValue::from(retry_after_secs));
            return response;
        }
        Some(Scripted::ServerError(status)) => {
            return (StatusCode::from_u16(status).unwrap(), "upstream trouble").into_response();
        }
        None => {}
    }

    // Validate the request as Entra would.
    if !headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
    {
        return entra_error(400, "invalid_request", 900144, "The request body must be form-encoded.");
    }
    if tenant != TENANT {
        return entra_error(400, "invalid_tenant", 90002, &format!("Tenant '{tenant}' not found."));
    }
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return entra_error(400, "unsupported_grant_type", 70003, "The grant type is not supported.");
    }
    if form.get("client_id").map(String::as_str) != Some(CLIENT_ID) {
        return entra_error(400, "unauthorized_client", 700016, "Application not found in the directory.");
    }
    let Some(scope) = form.get("scope").filter(|s| s.ends_with("/.default")) else {
        return entra_error(
            400,
            "invalid_scope",
            70011,
            "The provided value for the input parameter 'scope' is not valid.",
        );
    };
    let (accepted_assertion, wrong_code, lifetime, refresh_in) = {
        let s = state.lock().unwrap();
        (s.accepted_assertion.clone(), s.wrong_assertion_code, s.lifetime_secs, s.refresh_in_secs)
    };
    match (form.get("client_secret"), form.get("client_assertion"), form.get("client_assertion_type")) {
        (Some(secret), None, None) => {
            if secret != CLIENT_SECRET {
                return entra_error(401, "invalid_client", 7000215, "Invalid client secret provided.");
            }
        }
        (None, Some(assertion), Some(kind)) if kind == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" => {
            if accepted_assertion.as_deref() != Some(assertion.as_str()) {
                return entra_error(400, "invalid_client", wrong_code, "The client assertion was not accepted.");
            }
        }
        _ => return entra_error(400, "invalid_request", 900144, "No client credential was presented."),
    }

    let resource = scope.trim_end_matches("/.default");
    let n = {
        let mut s = state.lock().unwrap();
        s.issued += 1;
        s.issued
    };
    let mut body = json!({
        "token_type": "Bearer",
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": format!("fake-token-{n}-for-{resource}"),
    });
    if let Some(refresh_in) = refresh_in {
        body["refresh_in"] = json!(refresh_in);
    }
    Json(body).into_response()
}
