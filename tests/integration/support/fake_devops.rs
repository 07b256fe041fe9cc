//! A fake Azure DevOps OIDC endpoint: what `SYSTEM_OIDCREQUESTURI` points at in a pipeline job.
//!
//! `POST /oidctoken?api-version=7.1&serviceConnectionId=<id>` with `Authorization: Bearer
//! <System.AccessToken>` and `X-TFS-FedAuthRedirect: Suppress` answers `{"oidcToken": "<jwt>"}`
//! with a new token every time. Wrong inputs get Azure DevOps' error shapes, and failures
//! carry the `x-vss-e2eid` and `x-msedge-ref` headers; failures can also be scripted.
//!
//! What it enforces, and why (the "Oidctoken - Create" REST reference, and the Azure SDKs'
//! `AzurePipelinesCredential`, which are what the service is known to accept):
//! - The method is POST, the documented one; any other gets 405 from the router.
//! - The request states its length. Azure DevOps is served through IIS and Azure Front Door,
//!   which answer a POST with neither `Content-Length` nor `Transfer-Encoding: chunked` with
//!   `411 Length Required` and IIS's HTML page ("HTTP Error 411. The request must be chunked
//!   or have a content length."), before the service sees it. The SDKs send
//!   `Content-Length: 0`.
//! - `X-TFS-FedAuthRedirect: Suppress`. Without it Azure DevOps answers a request it cannot
//!   authenticate with a redirect to an interactive sign-in page (200, HTML) instead of 401;
//!   the fake answers the page whenever the header is missing, which is stricter.
//! - `Authorization: Bearer <System.AccessToken>`, as the SDKs send it; anything else is 401
//!   with TF400813.
//! - `api-version=7.1` (the SDKs' value; the reference names `7.1-preview.1`, which the fake
//!   refuses as stricter), else 400.
//! - A known `serviceConnectionId`, else 404.
//! - Not enforced: `Content-Type`. The request has no body; the Python and JavaScript SDKs send
//!   `application/json` and the Rust SDK sends none, and both are accepted.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use serde_json::json;

use super::fake_server::FakeServer;

/// The job's System.AccessToken the fake accepts.
pub const SYSTEM_ACCESS_TOKEN: &str = "system-access-token-of-the-job";
/// The service connection the fake knows.
pub const SERVICE_CONNECTION_ID: &str = "6e2a6f3b-0000-4000-8000-00000000c0de";
/// `iss` of the OIDC tokens.
pub const ISSUER: &str = "https://vstoken.dev.azure.com/00000000-0000-4000-8000-0000000000dd";
/// `sub` of the OIDC tokens.
pub const SUBJECT: &str = "sc://contoso/tokenrelay/tokenrelay-connection";
/// The `x-vss-e2eid` of every failure.
pub const E2E_ID: &str = "e2e-7f1d2c3b";
/// The `x-msedge-ref` of every failure.
pub const EDGE_REF: &str = "Ref A: 0123456789ABCDEF";

#[derive(Default)]
struct DevOpsState {
    script: VecDeque<u16>,
    requests: usize,
    issued: Vec<String>,
}

/// A running fake; stops when dropped.
pub struct FakeDevOps {
    server: FakeServer,
    state: Arc<Mutex<DevOpsState>>,
}

impl FakeDevOps {
    /// Starts on an ephemeral loopback port.
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(DevOpsState::default()));
        let app = Router::new().route("/oidctoken", post(oidc_token)).with_state(state.clone());
        Self { server: FakeServer::serve(app).await, state }
    }

    /// The value of `SYSTEM_OIDCREQUESTURI`.
    pub fn oidc_request_uri(&self) -> String {
        format!("{}/oidctoken", self.server.url())
    }

    /// The next requests answer these statuses (with an error body), in order.
    pub fn script(&self, statuses: impl IntoIterator<Item = u16>) {
        self.state.lock().unwrap().script.extend(statuses);
    }

    /// How many OIDC requests arrived.
    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().requests
    }

    /// Every OIDC token issued, in order.
    pub fn issued(&self) -> Vec<String> {
        self.state.lock().unwrap().issued.clone()
    }
}

fn failure(status: u16, message: &str) -> Response {
    let mut response =
        (StatusCode::from_u16(status).unwrap(), Json(json!({ "$id": "1", "message": message }))).into_response();
    response.headers_mut().insert("x-vss-e2eid", E2E_ID.parse().unwrap());
    response.headers_mut().insert("x-msedge-ref", EDGE_REF.parse().unwrap());
    response
}

/// IIS's answer to a POST without a length, as Azure Front Door relays it.
fn length_required() -> Response {
    let page = "<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 4.01//EN\"\"http://www.w3.org/TR/html4/strict.dtd\">\r\n\
                <HTML><HEAD><TITLE>Length Required</TITLE>\r\n\
                <META HTTP-EQUIV=\"Content-Type\" Content=\"text/html; charset=us-ascii\"></HEAD>\r\n\
                <BODY><h2>Length Required</h2>\r\n<hr><p>HTTP Error 411. The request must be chunked or have a content length.</p>\r\n\
                </BODY></HTML>\r\n";
    let mut response =
        (StatusCode::LENGTH_REQUIRED, [("content-type", "text/html; charset=us-ascii")], page).into_response();
    response.headers_mut().insert("x-msedge-ref", EDGE_REF.parse().unwrap());
    response
}

async fn oidc_token(
    State(state): State<Arc<Mutex<DevOpsState>>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let mut s = state.lock().unwrap();
    s.requests += 1;
    // The front door refuses before the service (and its scripted failures) sees anything.
    if !headers.contains_key("content-length") && !headers.contains_key("transfer-encoding") {
        return length_required();
    }
    let scripted = s.script.pop_front();
    drop(s);
    if let Some(status) = scripted {
        return failure(status, "scripted failure");
    }
    if headers.get("x-tfs-fedauthredirect").and_then(|v| v.to_str().ok()) != Some("Suppress") {
        // Without the header Azure DevOps redirects to an interactive sign-in page.
        return (StatusCode::OK, "<html><body>Sign in</body></html>").into_response();
    }
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {SYSTEM_ACCESS_TOKEN}")) {
        return failure(401, "TF400813: The user '' is not authorized to access this resource.");
    }
    if query.get("api-version").map(String::as_str) != Some("7.1") {
        return failure(400, "The requested REST API version is not supported.");
    }
    if query.get("serviceConnectionId").map(String::as_str) != Some(SERVICE_CONNECTION_ID) {
        return failure(404, "Service connection not found.");
    }
    let encode = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let mut s = state.lock().unwrap();
    let n = s.issued.len() + 1;
    let token = format!(
        "{}.{}.c2lnbmF0dXJl",
        encode(json!({ "alg": "RS256", "typ": "JWT" })),
        encode(
            json!({ "iss": ISSUER, "sub": SUBJECT, "aud": "api://AzureADTokenExchange", "jti": format!("oidc-{n}") })
        )
    );
    s.issued.push(token.clone());
    Json(json!({ "oidcToken": token })).into_response()
}
