//! What every handler shares.

use std::sync::Arc;
use std::time::Duration;

use super::sidecar::UserEndpoints;
use crate::broker::Broker;
use crate::config::{ProbeMode, RequestLog};
use crate::dev_issuer::DevIssuer;
use crate::secret::HeaderSecret;
use crate::telemetry::metrics::Exposition;

/// Cheap to clone: every field is shared.
#[derive(Clone)]
pub struct AppState {
    pub broker: Arc<Broker>,
    /// The App Service flavour's `X-IDENTITY-HEADER` secret, in the form requests are
    /// checked against.
    pub identity_header: Option<Arc<HeaderSecret>>,
    pub probe_mode: ProbeMode,
    /// Present under `--dev`: serves discovery documents.
    pub dev_issuer: Option<Arc<DevIssuer>>,
    /// Present when metrics are on: renders `/metrics` (at most once a second).
    pub metrics: Option<Exposition>,
    /// Longest a token request may wait for the upstream before it gets a 503.
    pub request_timeout: Duration,
    /// Which token requests get a log line (`log.requests`), read once at start.
    pub log_requests: RequestLog,
    /// The user-token endpoints (`/Validate`, `/AuthorizationHeader*`), when any identity
    /// accepts user tokens or a downstream API is configured.
    pub user_endpoints: Option<Arc<UserEndpoints>>,
}
