//! Request-target length limit: a long URL is refused with 414 before any parsing.
//!
//! hyper enforces the head size (431) and the header read timeout; the URI limit is ours
//! because hyper's own is 64 KiB, far beyond any token request.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// Refuses requests whose path and query exceed `max` bytes.
pub async fn reject_long_uris(State(max): State<usize>, request: Request, next: Next) -> Response {
    let length = request.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if length > max {
        let error = ApiError {
            status: StatusCode::URI_TOO_LONG,
            error: "invalid_request",
            description: format!("the request target is {length} bytes; the limit is {max}"),
            retry_after: None,
        };
        return error.into_response();
    }
    next.run(request).await
}
