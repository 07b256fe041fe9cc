//! `POST /dev/user-token`, under `--dev` only: a user token signed by the development issuer,
//! as a front end signed in as that user would forward it, so the user-token endpoints can be
//! tried without an Azure account (docs/on-behalf-of.md#try-it-with---dev).

use axum::BoxError;
use axum::body::{Body, Bytes, HttpBody};
use axum::http::{HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::host::AllowedHosts;
use super::state::AppState;
use super::token;
use super::wire::OAuthError;
use crate::dev_issuer::{DevUser, dev_object_id};

/// Largest request body read.
const MAX_BODY_BYTES: usize = 16 * 1024;
/// Shortest and longest lifetime a caller may ask for.
const LIFETIME_SECS: std::ops::RangeInclusive<u64> = 60..=86_400;
/// The front end the token says the user signed in to (`azp`), unless the request names one.
const DEV_CLIENT_APP: &str = "d0000000-0000-0000-0000-00000000f00d";

/// Every member optional: an empty body gives `user@dev.example` a token for the default
/// identity's `api://{client_id}` with the scope `access_as_user`.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct UserTokenRequest {
    user: Option<String>,
    audience: Option<String>,
    /// Space-separated, or a list.
    scopes: Option<ScopeList>,
    roles: Vec<String>,
    client_app: Option<String>,
    lifetime_secs: Option<u64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ScopeList {
    Text(String),
    List(Vec<String>),
}

/// Handles the request; the caller has matched the path.
pub async fn handle<B>(state: &AppState, hosts: &AllowedHosts, request: Request<B>) -> Response
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let Some(issuer) = state.dev_issuer.as_deref() else {
        return ApiError::not_found().into_response();
    };
    if request.method() != Method::POST {
        let mut response = ApiError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            error: OAuthError::InvalidRequest,
            description: "POST a JSON body (every member optional)".into(),
            retry_after: None,
        }
        .into_response();
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    if let Err(error) = token::admit(hosts, &request) {
        return error.into_response();
    }
    let body = match axum::body::to_bytes(Body::new(request.into_body()), MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(_) => {
            return ApiError::bad_request(format!("the body is larger than {MAX_BODY_BYTES} bytes")).into_response();
        }
    };
    let asked: UserTokenRequest = if body.iter().all(u8::is_ascii_whitespace) {
        UserTokenRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(asked) => asked,
            Err(error) => {
                return ApiError::bad_request(format!("the body is not the JSON expected: {error}")).into_response();
            }
        }
    };
    let user = asked.user.unwrap_or_else(|| "user@dev.example".to_owned());
    let default_audience = state
        .broker
        .resolve(&crate::broker::Selector::Default)
        .map(|identity| format!("api://{}", identity.client_id))
        .unwrap_or_default();
    let audience = asked.audience.unwrap_or(default_audience);
    let scopes = match asked.scopes {
        None => "access_as_user".to_owned(),
        Some(ScopeList::Text(text)) => text.split_whitespace().collect::<Vec<_>>().join(" "),
        Some(ScopeList::List(list)) => list.join(" "),
    };
    let lifetime = asked.lifetime_secs.map(|secs| secs.clamp(*LIFETIME_SECS.start(), *LIFETIME_SECS.end()));
    let object_id = dev_object_id(&user);
    let client_app = asked.client_app.unwrap_or_else(|| DEV_CLIENT_APP.to_owned());
    let dev_user = DevUser { name: &user, object_id: &object_id, client_app: &client_app, roles: &asked.roles };
    match issuer.issue_user(&dev_user, &audience, &scopes, lifetime) {
        Ok((token, expires_on)) => {
            let expires_in = expires_on.saturating_sub(state.broker.now());
            let body = json!({
                "access_token": token.expose(),
                "token_type": "Bearer",
                "expires_in": expires_in,
                "expires_on": expires_on,
                "user": user,
                "oid": object_id,
                "audience": audience,
                "scopes": scopes,
            });
            let mut response = axum::Json(body).into_response();
            response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(reason) => ApiError::timed_out(reason).into_response(),
    }
}
