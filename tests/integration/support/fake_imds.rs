//! A fake managed identity endpoint: IMDS (`GET /metadata/identity/oauth2/token`, requires
//! `Metadata: true`, refuses `X-Forwarded-For`) and App Service style (`GET /msi/token`,
//! requires `X-IDENTITY-HEADER`). Answers can be scripted (410 while "updating", 429 with
//! `Retry-After`, 500); every request is recorded with its headers.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::fake_server::FakeServer;

/// The App Service secret the fake expects.
pub const IDENTITY_HEADER: &str = "fake-imds-identity-header";

/// One request as the fake saw it.
#[derive(Clone, Debug)]
pub struct SeenImds {
    pub path: String,
    pub query: HashMap<String, String>,
    pub headers: HashMap<String, String>,
}

#[derive(Default)]
struct ImdsState {
    script: VecDeque<(u16, Option<u64>)>,
    seen: Vec<SeenImds>,
    issued: u64,
}

/// A running fake; stops when dropped.
pub struct FakeImds {
    server: FakeServer,
    state: Arc<Mutex<ImdsState>>,
}

impl FakeImds {
    /// Starts on an ephemeral loopback port.
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(ImdsState::default()));
        let app = Router::new()
            .route("/metadata/identity/oauth2/token", get(imds))
            .route("/msi/token", get(app_service))
            .with_state(state.clone());
        Self { server: FakeServer::serve(app).await, state }
    }

    /// `http://127.0.0.1:PORT` (what `AZURE_POD_IDENTITY_AUTHORITY_HOST` would hold).
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The IMDS token endpoint.
    pub fn imds_endpoint(&self) -> String {
        format!("{}/metadata/identity/oauth2/token", self.url())
    }

    /// The App Service style endpoint (`IDENTITY_ENDPOINT`).
    pub fn app_service_endpoint(&self) -> String {
        format!("{}/msi/token", self.url())
    }

    /// The next requests answer these statuses with an optional `Retry-After`, in order.
    pub fn script(&self, answers: impl IntoIterator<Item = (u16, Option<u64>)>) {
        self.state.lock().unwrap().script.extend(answers);
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<SeenImds> {
        self.state.lock().unwrap().seen.clone()
    }
}

fn error(status: u16, error: &str, description: &str) -> Response {
    (StatusCode::from_u16(status).unwrap(), Json(json!({ "error": error, "error_description": description })))
        .into_response()
}

fn record(
    state: &Mutex<ImdsState>,
    path: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Option<(u16, Option<u64>)> {
    let headers =
        headers.iter().map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned())).collect();
    let mut s = state.lock().unwrap();
    s.seen.push(SeenImds { path: path.to_owned(), query: query.clone(), headers });
    s.script.pop_front()
}

fn scripted((status, retry_after): (u16, Option<u64>)) -> Response {
    let mut response = error(status, "scripted", "scripted answer");
    if let Some(secs) = retry_after {
        response.headers_mut().insert("retry-after", HeaderValue::from(secs));
    }
    response
}

fn token(state: &Mutex<ImdsState>, query: &HashMap<String, String>) -> Response {
    let Some(resource) = query.get("resource") else {
        return error(400, "invalid_request", "Required query variable 'resource' is missing");
    };
    let mut s = state.lock().unwrap();
    s.issued += 1;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    Json(json!({
        "access_token": format!("imds-token-{}-for-{resource}", s.issued),
        "client_id": query.get("client_id").cloned().unwrap_or_else(|| "system-assigned".into()),
        "expires_in": "3599",
        "expires_on": (now + 3599).to_string(),
        "ext_expires_in": "3599",
        "not_before": now.to_string(),
        "resource": resource,
        "token_type": "Bearer",
    }))
    .into_response()
}

async fn imds(
    State(state): State<Arc<Mutex<ImdsState>>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let scripted_answer = record(&state, "/metadata/identity/oauth2/token", &query, &headers);
    if headers.get("metadata").and_then(|v| v.to_str().ok()) != Some("true") {
        return error(400, "bad_request_102", "Required metadata header not specified");
    }
    if headers.contains_key("x-forwarded-for") {
        return error(400, "bad_request", "X-Forwarded-For is not allowed");
    }
    if !query.contains_key("api-version") {
        return error(400, "bad_request", "Required query variable 'api-version' is missing");
    }
    if let Some(answer) = scripted_answer {
        return scripted(answer);
    }
    token(&state, &query)
}

async fn app_service(
    State(state): State<Arc<Mutex<ImdsState>>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let scripted_answer = record(&state, "/msi/token", &query, &headers);
    if headers.get("x-identity-header").and_then(|v| v.to_str().ok()) != Some(IDENTITY_HEADER) {
        return error(401, "unauthorized", "X-IDENTITY-HEADER is missing or wrong");
    }
    if let Some(answer) = scripted_answer {
        return scripted(answer);
    }
    token(&state, &query)
}
