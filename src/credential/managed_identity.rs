//! `managed_identity`: tokens from an upstream managed identity endpoint.
//!
//! Either real IMDS (`GET http://169.254.169.254/metadata/identity/oauth2/token` with
//! `Metadata: true`, api-version 2018-02-01) on a VM or node, or an App Service style endpoint
//! (`IDENTITY_ENDPOINT` with `X-IDENTITY-HEADER`, api-version 2019-08-01). This lets
//! tokenrelay put its cache in front of a node's identity.
//!
//! IMDS rules (docs/protocols.md#imds-token-endpoint): never through a proxy (the client is built with
//! `no_proxy`), never with `X-Forwarded-For` (nothing here adds it), 410 means "updating,
//! back within 70 seconds" so it is retried for at least that long, 404/429/5xx and timeouts
//! are retried with exponential backoff honouring `Retry-After`. An endpoint that refuses
//! connections is remembered for a minute, so a default chain on a laptop does not wait for
//! it on every miss.
//!
//! Every request carries [`HOP_HEADER`], which IMDS and App Service ignore (as they ignore
//! the `x-ms-client-request-id` the Azure SDKs send) and a tokenrelay refuses with 508 Loop
//! Detected: a link that leads back to a tokenrelay (its own, by a
//! name the configuration check cannot see through, or another whose link leads back)
//! fails at once with an error naming the loop, where it would otherwise wait on itself
//! until the request timeout.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::{StatusCode, Url, header};
use serde::{Deserialize, Deserializer};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::{Credential, CredentialError, LinkStatus};
use crate::backoff::Backoff;
use crate::clock::{Clock, SystemClock};
use crate::config::CredentialKind;
use crate::config::{ManagedIdentityConfig, ManagedIdentityFlavour};
use crate::secret::Secret;
use crate::token::AccessToken;

/// How long an endpoint that refused a connection is considered absent.
const UNREACHABLE_MEMORY: Duration = Duration::from_secs(60);
/// The longest single wait between attempts.
const MAX_DELAY: Duration = Duration::from_secs(10);
/// Connecting to IMDS takes milliseconds where it exists; the Azure SDKs give it 1 to 2 s.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The most of an error body quoted in a message.
const MAX_QUOTED_BODY: usize = 300;

/// The header that marks a request from a tokenrelay's `managed_identity` link; a tokenrelay
/// answers one with 508 and never serves it (`server::token::admit`).
pub const HOP_HEADER: &str = "x-tokenrelay-hop";

/// A managed identity reached over HTTP.
pub struct ManagedIdentityCredential {
    http: reqwest::Client,
    config: ManagedIdentityConfig,
    policy: RetryPolicy,
    unreachable_since: Mutex<Option<Instant>>,
}

impl ManagedIdentityCredential {
    /// A credential for the endpoint in `config`; `timeout` bounds one HTTP exchange.
    pub fn new(config: ManagedIdentityConfig, timeout: Duration) -> Result<Self, String> {
        let http = super::http_client(timeout, |builder| {
            // IMDS is not meant to be reached through a proxy, and HTTP(S)_PROXY would send
            // link-local traffic to it.
            builder.no_proxy().connect_timeout(CONNECT_TIMEOUT.min(timeout))
        })?;
        let policy = RetryPolicy {
            base: Duration::from_millis(config.retry_base_ms),
            max_delay: MAX_DELAY,
            max_retries: config.max_retries,
            gone_budget: Duration::from_secs(config.gone_retry_secs),
        };
        Ok(Self { http, config, policy, unreachable_since: Mutex::new(None) })
    }

    fn request_url(&self, resource: &str) -> Result<Url, CredentialError> {
        let mut url = Url::parse(&self.config.endpoint)
            .map_err(|e| self.rejected(format!("endpoint {:?} is not a URL: {e}", self.config.endpoint)))?;
        let imds = self.config.flavour == ManagedIdentityFlavour::Imds;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("api-version", if imds { "2018-02-01" } else { "2019-08-01" });
            query.append_pair("resource", resource);
            if let Some(id) = &self.config.client_id {
                query.append_pair("client_id", id);
            }
            if let Some(id) = &self.config.object_id {
                query.append_pair(if imds { "object_id" } else { "principal_id" }, id);
            }
            if let Some(id) = &self.config.resource_id {
                query.append_pair(if imds { "msi_res_id" } else { "mi_res_id" }, id);
            }
        }
        Ok(url)
    }

    /// Which identity is asked for, for messages.
    fn selected(&self) -> String {
        match (&self.config.client_id, &self.config.object_id, &self.config.resource_id) {
            (Some(id), _, _) => format!("the user-assigned identity with client_id {id}"),
            (_, Some(id), _) => format!("the user-assigned identity with object_id {id}"),
            (_, _, Some(id)) => format!("the user-assigned identity {id}"),
            _ => "the system-assigned identity".to_owned(),
        }
    }

    fn host(&self) -> String {
        Url::parse(&self.config.endpoint)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_else(|| self.config.endpoint.clone())
    }

    async fn send(&self, url: &Url) -> Result<reqwest::Response, reqwest::Error> {
        let mut request = self.http.get(url.clone()).header("Metadata", "true").header(HOP_HEADER, "1");
        if let Some(secret) = &self.config.identity_header {
            request = request.header("X-IDENTITY-HEADER", secret.expose());
        }
        request.send().await
    }

    fn rejected(&self, message: String) -> CredentialError {
        CredentialError::Rejected { credential: self.kind(), aadsts: None, message, correlation_id: None }
    }

    fn unavailable(&self, reason: String) -> CredentialError {
        CredentialError::Unavailable { credential: self.kind(), reason }
    }

    fn transient(&self, reason: String) -> CredentialError {
        CredentialError::Transient { credential: self.kind(), reason }
    }
}

#[async_trait]
impl Credential for ManagedIdentityCredential {
    fn kind(&self) -> CredentialKind {
        CredentialKind::ManagedIdentity
    }

    async fn get_token(&self, resource: &str) -> Result<AccessToken, CredentialError> {
        if let Some(since) = *self.unreachable_since.lock().await
            && since.elapsed() < UNREACHABLE_MEMORY
        {
            return Err(self
                .unavailable(format!("no managed identity endpoint answered at {} in the last minute", self.host())));
        }
        let url = self.request_url(resource)?;
        let mut retries = 0;
        let mut gone: Option<(Instant, u32)> = None;
        loop {
            let issued_at = SystemClock.now();
            let mut was_gone = false;
            let (wait, error) = match self.send(&url).await {
                Err(error) if error.is_connect() && retries == 0 && gone.is_none() => {
                    *self.unreachable_since.lock().await = Some(Instant::now());
                    return Err(self.unavailable(format!(
                        "no managed identity endpoint at {} ({})",
                        self.host(),
                        root_cause(&error)
                    )));
                }
                Err(error) => {
                    let error = self.transient(format!(
                        "the managed identity endpoint at {} failed: {}",
                        self.host(),
                        root_cause(&error)
                    ));
                    (self.policy.after_failure(retries, None), error)
                }
                Ok(response) => {
                    let status = response.status();
                    let retry_after = parse_retry_after(response.headers());
                    let body = response.bytes().await.unwrap_or_default();
                    if status.is_success() {
                        *self.unreachable_since.lock().await = None;
                        return parse_token(&body, issued_at).map_err(|problem| {
                            self.transient(format!("the managed identity endpoint sent {problem}"))
                        });
                    }
                    let said = quote_body(&body);
                    match status {
                        StatusCode::GONE => {
                            let (first, count) = *gone.get_or_insert((Instant::now(), 0));
                            gone = Some((first, count + 1));
                            was_gone = true;
                            let error = self.transient(format!(
                                "IMDS at {} is updating (410) and did not come back within {} s{said}",
                                self.host(),
                                self.policy.gone_budget.as_secs()
                            ));
                            (self.policy.after_gone(count, first.elapsed()), error)
                        }
                        StatusCode::LOOP_DETECTED => {
                            // Only a tokenrelay answers the hop header so; retrying cannot help.
                            return Err(self.rejected(format!(
                                "the managed identity endpoint at {} answered 508 Loop Detected: it is a \
                                 tokenrelay, and a managed_identity link must lead to IMDS or an App Service \
                                 endpoint, never to a tokenrelay (this one or another), which would loop",
                                self.host()
                            )));
                        }
                        StatusCode::TOO_MANY_REQUESTS => {
                            let error = CredentialError::Throttled {
                                credential: self.kind(),
                                retry_after: retry_after.unwrap_or(Duration::from_secs(5)),
                            };
                            (self.policy.after_failure(retries, retry_after), error)
                        }
                        StatusCode::NOT_FOUND | StatusCode::REQUEST_TIMEOUT => {
                            let error = self.transient(format!(
                                "the managed identity endpoint at {} answered {status}{said}",
                                self.host()
                            ));
                            (self.policy.after_failure(retries, retry_after), error)
                        }
                        status if status.is_server_error() => {
                            let error = self.transient(format!(
                                "the managed identity endpoint at {} answered {status}{said}",
                                self.host()
                            ));
                            (self.policy.after_failure(retries, retry_after), error)
                        }
                        StatusCode::BAD_REQUEST
                            if self.config.client_id.is_none()
                                && self.config.object_id.is_none()
                                && self.config.resource_id.is_none() =>
                        {
                            // What the Azure SDKs conclude too: no system-assigned identity here.
                            return Err(self.unavailable(format!(
                                "{} has no system-assigned identity ({status}){said}",
                                self.host()
                            )));
                        }
                        status => {
                            return Err(self.rejected(format!(
                                "the managed identity endpoint at {} refused {} ({status}){said}; check that the \
                                 identity is assigned to this machine",
                                self.host(),
                                self.selected()
                            )));
                        }
                    }
                }
            };
            let Some(wait) = wait else {
                return Err(error);
            };
            tracing::debug!(%error, wait_ms = wait.as_millis() as u64, "retrying the managed identity endpoint");
            tokio::time::sleep(wait).await;
            if !was_gone {
                retries += 1;
            }
        }
    }

    fn status(&self) -> LinkStatus {
        LinkStatus::Usable(format!(
            "{} at {} for {} (reachability is not checked)",
            self.config.origin,
            self.config.endpoint,
            self.selected()
        ))
    }
}

/// When to try again. Pure, so the schedule is tested without a server or a clock.
#[derive(Clone, Copy, Debug)]
struct RetryPolicy {
    /// The first wait; it doubles with every retry.
    base: Duration,
    /// The longest single wait.
    max_delay: Duration,
    /// Retries after 404, 429, 5xx and network errors.
    max_retries: u32,
    /// How long 410 answers are retried, counted from the first one.
    gone_budget: Duration,
}

impl RetryPolicy {
    fn delay(&self, attempt: u32) -> Duration {
        Backoff { base: self.base, max: self.max_delay }.delay(attempt)
    }

    /// The wait after the `count`-th consecutive 410 (from 0), `since_first` after the first,
    /// or `None` once the budget is spent.
    fn after_gone(&self, count: u32, since_first: Duration) -> Option<Duration> {
        (since_first < self.gone_budget).then(|| self.delay(count))
    }

    /// The wait after a retryable failure, or `None` when the retries are used up. A
    /// `Retry-After` is honoured up to the longest single wait.
    fn after_failure(&self, retries: u32, retry_after: Option<Duration>) -> Option<Duration> {
        if retries >= self.max_retries {
            return None;
        }
        Some(retry_after.map_or_else(|| self.delay(retries), |asked| asked.min(self.max_delay)))
    }
}

/// A token response from IMDS or App Service (docs/protocols.md#token-response-body): numbers may be strings.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default, deserialize_with = "optional_seconds")]
    expires_on: Option<u64>,
    #[serde(default, deserialize_with = "optional_seconds")]
    expires_in: Option<u64>,
    #[serde(default, deserialize_with = "optional_seconds")]
    not_before: Option<u64>,
    #[serde(default, deserialize_with = "optional_seconds")]
    ext_expires_in: Option<u64>,
    #[serde(default, deserialize_with = "optional_seconds")]
    refresh_in: Option<u64>,
}

fn parse_token(body: &[u8], issued_at: u64) -> Result<AccessToken, String> {
    let parsed: TokenResponse =
        serde_json::from_slice(body).map_err(|e| format!("an unreadable token response: {e}"))?;
    let expires_on = match (parsed.expires_on, parsed.expires_in) {
        (Some(on), _) => on,
        (None, Some(seconds)) => issued_at + seconds,
        (None, None) => return Err("a token without expires_on or expires_in".to_owned()),
    };
    Ok(AccessToken {
        token: Secret::new(parsed.access_token),
        expires_on,
        not_before: parsed.not_before.unwrap_or(issued_at),
        ext_expires_on: parsed.ext_expires_in.map_or(expires_on, |ext| issued_at + ext).max(expires_on),
        refresh_on: parsed.refresh_in.map(|r| issued_at + r),
    })
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrString {
    Number(u64),
    String(String),
}

fn optional_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Option::<NumberOrString>::deserialize(d)? {
        None => Ok(None),
        Some(NumberOrString::Number(n)) => Ok(Some(n)),
        Some(NumberOrString::String(s)) => s.trim().parse().map(Some).map_err(serde::de::Error::custom),
    }
}

fn parse_retry_after(headers: &header::HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// `": error: description"` from an IMDS-style error body, shortened; nothing for no body.
fn quote_body(body: &[u8]) -> String {
    let value = serde_json::from_slice::<serde_json::Value>(body).ok();
    let text = match value {
        Some(v) => {
            let error = v.get("error").and_then(|e| e.as_str()).unwrap_or("");
            let description = v.get("error_description").and_then(|e| e.as_str()).unwrap_or("");
            [error, description].iter().filter(|s| !s.is_empty()).copied().collect::<Vec<_>>().join(": ")
        }
        None => String::from_utf8_lossy(body).lines().next().unwrap_or("").trim().to_owned(),
    };
    if text.is_empty() {
        return String::new();
    }
    format!(": {}", text.chars().take(MAX_QUOTED_BODY).collect::<String>())
}

fn root_cause(error: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    if error.is_timeout() { "timed out".to_owned() } else { cause.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_secs(1),
            max_delay: MAX_DELAY,
            max_retries: 5,
            gone_budget: Duration::from_secs(70),
        }
    }

    #[test]
    fn gone_is_retried_for_at_least_the_budget() {
        // Simulate the schedule: every attempt answers 410 at once.
        let p = policy();
        let mut elapsed = Duration::ZERO;
        let mut count = 0;
        while let Some(wait) = p.after_gone(count, elapsed) {
            assert!(wait <= MAX_DELAY);
            elapsed += wait;
            count += 1;
        }
        assert!(elapsed >= Duration::from_secs(70), "gave up after {elapsed:?}");
        assert!(elapsed < Duration::from_secs(70) + MAX_DELAY, "kept going for {elapsed:?}");
    }

    #[test]
    fn other_failures_back_off_exponentially_and_honour_retry_after() {
        let p = policy();
        let waits: Vec<u64> = (0..5).map(|n| p.after_failure(n, None).unwrap().as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 10]);
        assert_eq!(p.after_failure(5, None), None);
        assert_eq!(p.after_failure(0, Some(Duration::from_secs(3))), Some(Duration::from_secs(3)));
        assert_eq!(p.after_failure(0, Some(Duration::from_secs(300))), Some(MAX_DELAY), "capped");
    }

    #[test]
    fn parses_imds_and_app_service_bodies() {
        let imds = br#"{"access_token":"t","expires_in":"3599","expires_on":"5000","not_before":"1400","resource":"r","token_type":"Bearer","ext_expires_in":86399}"#;
        let token = parse_token(imds, 1401).unwrap();
        assert_eq!((token.expires_on, token.not_before, token.ext_expires_on), (5000, 1400, 1401 + 86399));
        let app_service = br#"{"access_token":"t","expires_on":"5000","resource":"r","token_type":"Bearer"}"#;
        let token = parse_token(app_service, 1000).unwrap();
        assert_eq!((token.expires_on, token.not_before), (5000, 1000));
        let relative = br#"{"access_token":"t","expires_in":600}"#;
        assert_eq!(parse_token(relative, 1000).unwrap().expires_on, 1600);
        assert!(parse_token(br#"{"access_token":"t"}"#, 0).unwrap_err().contains("expires_on"));
    }

    #[test]
    fn quotes_imds_errors() {
        assert_eq!(
            quote_body(br#"{"error":"invalid_request","error_description":"Identity not found"}"#),
            ": invalid_request: Identity not found"
        );
        assert_eq!(quote_body(b""), "");
    }
}
