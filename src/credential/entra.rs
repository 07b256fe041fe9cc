//! The Entra ID client: the only code that speaks OAuth2 to the authority.
//!
//! Every request to the authority goes through [`EntraClient::post`]: the client-credentials
//! grant (`POST {authority}/{tenant}/oauth2/v2.0/token`, form-encoded; docs/protocols.md#entra-token-endpoint) and the
//! user sign-in grants (device code, refresh token) alike. So they all share hard timeouts,
//! bounded retries with exponential backoff and jitter on 429/5xx/network errors honouring
//! `Retry-After`, a global cap on concurrent requests that protects the authority when many
//! identities refresh at once, typed errors with AADSTS advice, and the scrubbing of the
//! authority's text ([`relayed`]). Credentials reach it through [`Application`], which pairs
//! the client with one tenant and client id, or through the user grants (`credential::user`).

mod application;
pub mod relayed;

use std::time::Duration;

use reqwest::{StatusCode, Url, header};
use serde::{Deserialize, Deserializer};
use tokio::sync::Semaphore;

use super::{CredentialError, Grant};
use crate::aadsts;
use crate::backoff::Backoff;
use crate::clock::{Clock, SystemClock};
use crate::config::CredentialKind;
use crate::secret::Secret;
use crate::token::AccessToken;

pub use application::Application;

/// `client_assertion_type` for every JWT assertion (certificate or federated).
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// `grant_type` of the on-behalf-of exchange (RFC 7523 section 2.1, as Entra uses it).
const OBO_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// OAuth error codes of an on-behalf-of refusal that concern the user or the user's token, not
/// the application's configuration: conditional access or MFA (`interaction_required`, with a
/// `claims` challenge), missing consent, an assertion Entra does not accept (`invalid_grant`:
/// AADSTS50013 bad signature or audience, AADSTS500133 expired).
const USER_ERRORS: [&str; 4] = ["interaction_required", "consent_required", "login_required", "invalid_grant"];

/// Longest claims challenge relayed to a caller. Entra's are a few hundred bytes; a longer one
/// is dropped rather than cut, since a cut JSON object is no challenge at all.
const MAX_CLAIMS_BYTES: usize = 4096;

/// Form fields whose values are credentials. Whatever the authority says back is scrubbed of
/// them before it is relayed: a misconfigured authority may echo the request body.
const SECRET_FIELDS: [&str; 7] =
    ["client_secret", "client_assertion", "refresh_token", "device_code", "assertion", "code", "code_verifier"];

/// How the upstream is reached and how hard we try.
#[derive(Clone, Debug)]
pub struct EntraSettings {
    /// Base URL of the authority, such as `https://login.microsoftonline.com`.
    pub authority_host: Url,
    /// Hard limit on one HTTP exchange, connect included.
    pub timeout: Duration,
    /// Retries after the first attempt for throttling, 5xx and network errors.
    pub max_retries: u32,
    /// First backoff delay; it doubles with every retry, plus jitter.
    pub retry_base: Duration,
    /// Longest single wait; a `Retry-After` beyond it ends the retries at once.
    pub retry_max_delay: Duration,
    /// No retry starts once this much time has gone into one request, so a silent network
    /// costs a caller about this plus one timeout, not every attempt's timeout.
    pub retry_budget: Duration,
    /// Upstream requests in flight at once, across all identities.
    pub max_concurrent: usize,
}

/// How the application proves itself to the authority.
pub enum ClientAuth<'a> {
    /// `client_secret`.
    Secret(&'a Secret),
    /// A signed JWT (`client_assertion`): a federated token or a certificate assertion.
    Assertion(&'a Secret),
}

/// Which of a tenant's OAuth endpoints a request goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `oauth2/v2.0/token`: every grant.
    Token,
    /// `oauth2/v2.0/devicecode`: the start of the device code flow (RFC 8628 section 3.1).
    DeviceCode,
}

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::DeviceCode => "devicecode",
        }
    }

    /// What a successful answer is, for the message when it cannot be read.
    fn answer(self) -> &'static str {
        match self {
            Self::Token => "token response",
            Self::DeviceCode => "device code response",
        }
    }
}

/// One form POST to the authority.
pub struct Request<'a> {
    /// The calling credential's kind, which every error names.
    pub credential: CredentialKind,
    /// The tenant whose endpoint is called.
    pub tenant: &'a str,
    /// The application (client) id, named by advice about the refusal.
    pub client_id: &'a str,
    /// The endpoint of `tenant` the form goes to.
    pub endpoint: Endpoint,
    /// The form; values of [`SECRET_FIELDS`] are scrubbed from whatever the authority says.
    pub form: &'a [(&'a str, &'a str)],
}

/// Why a request yielded nothing.
#[derive(Debug)]
pub enum Failure {
    /// The authority refused the request with an OAuth error: a 4xx other than 408 and 429,
    /// never retried. The caller decides what it means (RFC 8628 polling answers are refusals).
    Refused(Refusal),
    /// Anything else, after the retries: throttling, 5xx, network errors, an unreadable answer.
    Failed(CredentialError),
}

impl Failure {
    /// The typed error, with advice for a refusal's AADSTS code.
    pub fn into_error(self) -> CredentialError {
        match self {
            Self::Refused(refusal) => refusal.into_error(),
            Self::Failed(error) => error,
        }
    }
}

/// The authority's OAuth error answer, its text already scrubbed of the request's credentials.
#[derive(Debug)]
pub struct Refusal {
    status: StatusCode,
    body: ErrorResponse,
    credential: CredentialKind,
    tenant: String,
    client_id: String,
}

impl Refusal {
    /// The OAuth `error` code, such as `invalid_grant` or `authorization_pending`.
    pub fn error(&self) -> &str {
        first_line_of(&self.body.error)
    }

    /// `error: first line of the description`, safe to relay.
    pub fn detail(&self) -> String {
        self.body.first_line()
    }

    /// What to tell an operator: the advice for a known AADSTS code, with the authority's
    /// words, or the status and those words.
    pub fn message(&self) -> String {
        let advice = self.body.aadsts().and_then(|code| advice(code, &self.client_id, &self.tenant));
        let detail = self.detail();
        let status = self.status;
        match (advice, detail.is_empty()) {
            (Some(advice), true) => advice,
            (Some(advice), false) => format!("{advice} (authority said: {detail})"),
            (None, false) => format!("the authority refused the request ({status}): {detail}"),
            (None, true) => format!("the authority refused the request ({status})"),
        }
    }

    /// The rejection with `message` instead of [`Refusal::message`], keeping the AADSTS code
    /// and correlation id.
    pub fn reject(self, message: String) -> CredentialError {
        let aadsts = self.body.aadsts();
        CredentialError::Rejected {
            credential: self.credential,
            aadsts,
            message,
            correlation_id: self.body.correlation_id,
        }
    }

    /// The refusal of an on-behalf-of exchange for a reason only the user can cure, with the
    /// claims challenge, if any, intact.
    pub fn into_user_refusal(self) -> CredentialError {
        let error = self.error().to_owned();
        let aadsts = self.body.aadsts();
        let message = self.detail();
        CredentialError::UserRefused {
            credential: self.credential,
            error,
            aadsts,
            message,
            claims: self.body.claims,
            correlation_id: self.body.correlation_id,
        }
    }

    /// The rejection an operator reads: [`Refusal::message`].
    pub fn into_error(self) -> CredentialError {
        let message = self.message();
        self.reject(message)
    }
}

/// A client for one authority, shared by every credential that talks to it.
pub struct EntraClient {
    http: reqwest::Client,
    settings: EntraSettings,
    permits: Semaphore,
}

impl EntraClient {
    /// Builds the HTTP client. Fails only if the TLS stack cannot initialise.
    pub fn new(settings: EntraSettings) -> Result<Self, String> {
        let http = super::http_client(settings.timeout, |builder| builder)?;
        let permits = Semaphore::new(settings.max_concurrent.max(1));
        Ok(Self { http, settings, permits })
    }

    /// The authority host, as configured.
    pub fn authority_host(&self) -> &Url {
        &self.settings.authority_host
    }

    /// The token endpoint of `tenant`: also the `aud` of certificate assertions.
    pub fn token_endpoint(&self, tenant: &str) -> Url {
        self.endpoint(tenant, Endpoint::Token)
    }

    fn endpoint(&self, tenant: &str, endpoint: Endpoint) -> Url {
        let mut url = self.settings.authority_host.clone();
        let base = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{base}/{tenant}/oauth2/v2.0/{}", endpoint.path()));
        url
    }

    /// Runs `grant` (client credentials, or on-behalf-of), retrying transient failures.
    /// Private to this module: credentials go through [`Application::exchange`].
    async fn grant(
        &self,
        credential: CredentialKind,
        tenant: &str,
        client_id: &str,
        grant: Grant<'_>,
        auth: ClientAuth<'_>,
    ) -> Result<AccessToken, CredentialError> {
        let scope;
        let mut form: Vec<(&str, &str)> = match grant {
            Grant::App(resource) => {
                // Entra scopes are `<resource>/.default`; a resource ending in `/` keeps it,
                // giving the documented `https://management.core.windows.net//.default` form.
                scope = format!("{resource}/.default");
                vec![("grant_type", "client_credentials"), ("client_id", client_id), ("scope", &scope)]
            }
            Grant::OnBehalfOf(request) => vec![
                ("grant_type", OBO_GRANT),
                ("client_id", client_id),
                ("assertion", request.assertion.expose()),
                ("scope", request.scopes),
                ("requested_token_use", "on_behalf_of"),
            ],
        };
        match &auth {
            ClientAuth::Secret(secret) => form.push(("client_secret", secret.expose())),
            ClientAuth::Assertion(assertion) => {
                form.push(("client_assertion_type", JWT_BEARER));
                form.push(("client_assertion", assertion.expose()));
            }
        }
        let request = Request { credential, tenant, client_id, endpoint: Endpoint::Token, form: &form };
        match self.post(&request, parse_token_response).await {
            Ok(token) => Ok(token),
            Err(Failure::Refused(refusal))
                if matches!(grant, Grant::OnBehalfOf(_)) && USER_ERRORS.contains(&refusal.error()) =>
            {
                Err(refusal.into_user_refusal())
            }
            Err(failure) => Err(failure.into_error()),
        }
    }

    /// Posts `request` and reads a successful answer with `parse` (given the body and the
    /// request time in epoch seconds), retrying throttling, 5xx and network errors within the
    /// limits, under the concurrency cap. A refusal comes back as [`Failure::Refused`] for the
    /// caller to interpret.
    pub async fn post<T>(
        &self,
        request: &Request<'_>,
        parse: fn(&[u8], u64) -> Result<T, serde_json::Error>,
    ) -> Result<T, Failure> {
        let url = self.endpoint(request.tenant, request.endpoint);
        let mut attempt = 0;
        let started = tokio::time::Instant::now();
        loop {
            let error = match self.send_once(&url, request, parse).await {
                Ok(answer) => return Ok(answer),
                Err(error) => error,
            };
            let wait = match error {
                Attempt::Retry { error, retry_after } if attempt < self.settings.max_retries => {
                    match self.backoff(attempt, retry_after).filter(|wait| self.within_budget(started.elapsed(), *wait))
                    {
                        Some(wait) => {
                            tracing::debug!(%error, attempt, wait_ms = wait.as_millis() as u64, "retrying the authority");
                            wait
                        }
                        None => return Err(Failure::Failed(error)),
                    }
                }
                Attempt::Retry { error, .. } | Attempt::Fail(error) => return Err(Failure::Failed(error)),
                Attempt::Refused(refusal) => return Err(Failure::Refused(refusal)),
            };
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// Whether a retry after `wait` still fits the budget, `elapsed` into the request.
    fn within_budget(&self, elapsed: Duration, wait: Duration) -> bool {
        elapsed + wait <= self.settings.retry_budget
    }

    /// The wait before retry number `attempt + 1`, or `None` when the authority asked for
    /// longer than we are willing to hold a caller.
    fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Option<Duration> {
        let max = self.settings.retry_max_delay;
        if let Some(asked) = retry_after {
            return (asked <= max).then_some(asked);
        }
        Some(Backoff { base: self.settings.retry_base, max }.jittered(attempt, fastrand::f64()))
    }

    async fn send_once<T>(
        &self,
        url: &Url,
        request: &Request<'_>,
        parse: fn(&[u8], u64) -> Result<T, serde_json::Error>,
    ) -> Result<T, Attempt> {
        let credential = request.credential;
        let transient = |reason: String| CredentialError::Transient { credential, reason };
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| Attempt::Fail(transient("the upstream client is shutting down".into())))?;
        let issued_at = SystemClock.now();
        let response = self
            .http
            .post(url.clone())
            .header(header::ACCEPT, "application/json")
            .form(request.form)
            .send()
            .await
            .map_err(|e| Attempt::Retry { error: transient(describe_reqwest_error(&e, url)), retry_after: None })?;
        let status = response.status();
        let retry_after = parse_retry_after(response.headers());
        let body = response.bytes().await.map_err(|e| Attempt::Retry {
            error: transient(format!("reading the authority's response: {e}")),
            retry_after: None,
        })?;

        if status.is_success() {
            return parse(&body, issued_at).map_err(|e| {
                let what = request.endpoint.answer();
                Attempt::Fail(transient(format!("the authority sent an unreadable {what}: {e}")))
            });
        }

        let secrets: Vec<&str> =
            request.form.iter().filter(|(name, _)| SECRET_FIELDS.contains(name)).map(|(_, value)| *value).collect();
        let error_body = ErrorResponse::parse(&body).scrubbed(&secrets);
        if status == StatusCode::TOO_MANY_REQUESTS {
            let error =
                CredentialError::Throttled { credential, retry_after: retry_after.unwrap_or(Duration::from_secs(5)) };
            return Err(Attempt::Retry { error, retry_after });
        }
        if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
            let reason = format!("the authority answered {status}{}", error_body.summary_suffix());
            return Err(Attempt::Retry { error: transient(reason), retry_after });
        }
        Err(Attempt::Refused(Refusal {
            status,
            body: error_body,
            credential,
            tenant: request.tenant.to_owned(),
            client_id: request.client_id.to_owned(),
        }))
    }
}

/// The result of one attempt that did not yield an answer.
enum Attempt {
    /// Worth another try (throttling, 5xx, network).
    Retry { error: CredentialError, retry_after: Option<Duration> },
    /// Not worth another try.
    Fail(CredentialError),
    /// The authority's OAuth refusal: never retried here.
    Refused(Refusal),
}

/// What to tell an operator for the AADSTS codes that mean "fix your configuration".
fn advice(code: u32, client_id: &str, tenant: &str) -> Option<String> {
    let text = match code {
        aadsts::INVALID_CLIENT_SECRET => format!(
            "AADSTS7000215: the client secret is not valid for application {client_id}; \
             check that the secret value (not its id) belongs to this application"
        ),
        aadsts::CLIENT_SECRET_EXPIRED => format!(
            "AADSTS7000222: the client secret of application {client_id} has expired; \
             create a new secret and update the configuration"
        ),
        aadsts::APPLICATION_NOT_FOUND => format!(
            "AADSTS700016: application {client_id} was not found in tenant {tenant}; \
             check client_id and tenant_id"
        ),
        aadsts::TENANT_NOT_FOUND => {
            format!("AADSTS90002: tenant {tenant} was not found; check tenant_id and the authority host (cloud)")
        }
        aadsts::NO_MATCHING_FEDERATION => format!(
            "AADSTS70021: no federated identity credential of application {client_id} matches the \
             presented token; check the issuer, subject and audience configured on the application"
        ),
        aadsts::ASSERTION_EXPIRED => "AADSTS700024: the client assertion has expired or is not yet valid; \
                   check that the token file is refreshed (projected service account token)"
            .to_owned(),
        aadsts::INVALID_SIGNATURE => format!(
            "AADSTS700027: the client assertion signature is not valid for application {client_id}; \
             check that the certificate is registered on the application"
        ),
        aadsts::RESOURCE_NOT_FOUND => {
            "AADSTS500011: the resource was not found in the tenant; check the resource URI".to_owned()
        }
        aadsts::INVALID_SCOPE => "AADSTS70011: the requested scope is not valid; check the resource URI".to_owned(),
        _ => return None,
    };
    Some(text)
}

fn describe_reqwest_error(error: &reqwest::Error, url: &Url) -> String {
    // reqwest's Display includes the URL, which holds no secret (the form is in the body).
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let host = url.host_str().unwrap_or("authority");
    let mut text = format!("{what} reaching {host}");
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `Retry-After` in delay-seconds form (the only form Entra uses).
fn parse_retry_after(headers: &header::HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Parses the body of a successful token response, requested at `issued_at` (epoch seconds).
/// Public so the fuzz target `entra_response` runs exactly what `send_once` runs.
pub fn parse_token_response(body: &[u8], issued_at: u64) -> Result<AccessToken, serde_json::Error> {
    serde_json::from_slice::<TokenResponse>(body).map(|response| response.into_access_token(issued_at))
}

/// A successful answer to a user grant (device code, refresh token): the access token and what
/// comes with it for a person.
#[derive(Debug)]
pub struct UserTokenResponse {
    pub access: AccessToken,
    /// Sent only when the grant's scopes included `offline_access`.
    pub refresh_token: Option<Secret>,
    /// Sent only when the scopes included `openid`; its claims name the account.
    pub id_token: Option<Secret>,
    /// base64url `{"uid","utid"}`; sent only when the request asked with `client_info=1`.
    pub client_info: Option<String>,
}

/// Parses a successful user-grant token response, read exactly as [`parse_token_response`]
/// reads the access token. Public for the fuzz target `entra_response`.
pub fn parse_user_token_response(body: &[u8], issued_at: u64) -> Result<UserTokenResponse, serde_json::Error> {
    let mut response = serde_json::from_slice::<TokenResponse>(body)?;
    let (refresh_token, id_token, client_info) =
        (response.refresh_token.take(), response.id_token.take(), response.client_info.take());
    Ok(UserTokenResponse {
        access: response.into_access_token(issued_at),
        refresh_token: refresh_token.map(Secret::new),
        id_token: id_token.map(Secret::new),
        client_info,
    })
}

/// A successful token response (docs/protocols.md#entra-token-response). Lifetimes may arrive as numbers or
/// as numeric strings depending on the authority, so both are accepted. The last three
/// fields come only with user grants; any of them that is not a string reads as absent, so
/// they can never make a client-credentials answer unreadable.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(deserialize_with = "seconds")]
    expires_in: u64,
    #[serde(default, deserialize_with = "optional_seconds")]
    ext_expires_in: Option<u64>,
    #[serde(default, deserialize_with = "optional_seconds")]
    refresh_in: Option<u64>,
    #[serde(default, deserialize_with = "text")]
    refresh_token: Option<String>,
    #[serde(default, deserialize_with = "text")]
    id_token: Option<String>,
    #[serde(default, deserialize_with = "text")]
    client_info: Option<String>,
}

impl TokenResponse {
    fn into_access_token(self, issued_at: u64) -> AccessToken {
        // The seconds come off the network: an absurd lifetime saturates to "far future"
        // rather than panicking (debug builds) or wrapping to a time in the past (release).
        // The broker's refresh policy then treats it like any long-lived token.
        let after = |seconds: u64| issued_at.saturating_add(seconds);
        AccessToken {
            token: Secret::new(self.access_token),
            expires_on: after(self.expires_in),
            not_before: issued_at,
            ext_expires_on: after(self.ext_expires_in.unwrap_or(self.expires_in)),
            refresh_on: self.refresh_in.map(after),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrString {
    Number(u64),
    String(String),
}

fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match NumberOrString::deserialize(d)? {
        NumberOrString::Number(n) => Ok(n),
        NumberOrString::String(s) => s.trim().parse().map_err(serde::de::Error::custom),
    }
}

fn optional_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    seconds(d).map(Some)
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TextOrOther {
    Text(String),
    Other(serde::de::IgnoredAny),
}

/// A string, or `None` for any other JSON value.
fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match TextOrOther::deserialize(d)? {
        TextOrOther::Text(text) => Some(text),
        TextOrOther::Other(_) => None,
    })
}

/// An OAuth2 error response from Entra. Public (fields private) only for the fuzz target.
#[derive(Debug, Default, Deserialize)]
pub struct ErrorResponse {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
    #[serde(default)]
    error_codes: Vec<u32>,
    #[serde(default)]
    correlation_id: Option<String>,
    /// A claims challenge (conditional access, MFA): a JSON object as a string.
    #[serde(default, deserialize_with = "text")]
    claims: Option<String>,
}

impl ErrorResponse {
    /// Reads an error body; one that is not the JSON Entra sends reads as empty, so the
    /// status code alone describes the failure.
    pub fn parse(body: &[u8]) -> Self {
        serde_json::from_slice(body).unwrap_or_default()
    }

    /// The same answer with every value of `secrets` scrubbed from its text, and the
    /// correlation id cut to one bounded line: everything of it that may be relayed.
    /// Scrubbing the decoded JSON strings, not the raw body, catches a secret written with
    /// JSON escapes too.
    pub fn scrubbed(self, secrets: &[&str]) -> Self {
        let scrub = |text: String| relayed::scrub(&text, secrets);
        Self {
            error: scrub(self.error),
            error_description: scrub(self.error_description),
            error_codes: self.error_codes,
            correlation_id: self
                .correlation_id
                .map(|id| relayed::relayable(first_line_of(&id), secrets))
                .filter(|id| !id.is_empty()),
            // Relayed whole or not at all: one line of JSON, bounded, holding no secret.
            claims: self.claims.filter(|claims| {
                claims.len() <= MAX_CLAIMS_BYTES
                    && !claims.contains(['\r', '\n'])
                    && !secrets.iter().any(|secret| !secret.is_empty() && claims.contains(secret))
                    && serde_json::from_str::<serde_json::Value>(claims).is_ok_and(|v| v.is_object())
            }),
        }
    }

    /// The AADSTS number, from `error_codes` or else from the description's prefix.
    pub fn aadsts(&self) -> Option<u32> {
        self.error_codes.first().copied().or_else(|| {
            let rest = self.error_description.strip_prefix("AADSTS")?;
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
    }

    /// `error: first line of the description`, at most [`relayed::MAX_RELAYED_CHARS`]
    /// characters. Entra appends trace and correlation ids on later lines, which the typed
    /// fields carry instead. The code is cut to its first line too: it comes off the network
    /// and ends up in logs, where a line break would let a response forge log lines.
    pub fn first_line(&self) -> String {
        let (error, description) = (first_line_of(&self.error), first_line_of(&self.error_description));
        let line = match (error.is_empty(), description.is_empty()) {
            (true, true) => return String::new(),
            (false, true) => error.to_owned(),
            (true, false) => description.to_owned(),
            (false, false) => format!("{error}: {description}"),
        };
        relayed::bound(&line)
    }

    fn summary_suffix(&self) -> String {
        let line = self.first_line();
        if line.is_empty() { line } else { format!(": {line}") }
    }
}

/// The text before the first line break (CR or LF), trimmed.
fn first_line_of(text: &str) -> &str {
    text.split(['\r', '\n']).next().unwrap_or("").trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(max_delay: u64) -> EntraClient {
        EntraClient::new(EntraSettings {
            authority_host: Url::parse("http://127.0.0.1:1/base/").unwrap(),
            timeout: Duration::from_secs(1),
            max_retries: 3,
            retry_base: Duration::from_millis(400),
            retry_max_delay: Duration::from_secs(max_delay),
            retry_budget: Duration::from_secs(15),
            max_concurrent: 4,
        })
        .unwrap()
    }

    #[test]
    fn retries_stop_when_the_budget_is_spent() {
        let c = client(5);
        assert!(c.within_budget(Duration::from_secs(10), Duration::from_secs(5)));
        assert!(!c.within_budget(Duration::from_secs(11), Duration::from_secs(5)));
        assert!(!c.within_budget(Duration::from_secs(20), Duration::ZERO));
    }

    #[test]
    fn token_endpoint_keeps_a_base_path() {
        let url = client(5).token_endpoint("contoso.onmicrosoft.com");
        assert_eq!(url.as_str(), "http://127.0.0.1:1/base/contoso.onmicrosoft.com/oauth2/v2.0/token");
    }

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let c = client(5);
        for attempt in 0..6 {
            let wait = c.backoff(attempt, None).unwrap();
            let nominal = Duration::from_millis(400) * (1 << attempt);
            assert!(wait >= (nominal / 2).min(Duration::from_secs(5)), "{attempt}: {wait:?}");
            assert!(wait <= nominal.min(Duration::from_secs(5)), "{attempt}: {wait:?}");
        }
        assert_eq!(c.backoff(0, Some(Duration::from_secs(3))), Some(Duration::from_secs(3)));
        assert_eq!(c.backoff(0, Some(Duration::from_secs(30))), None);
    }

    #[test]
    fn parses_numbers_or_strings_and_refresh_in() {
        let r: TokenResponse = serde_json::from_str(
            r#"{"token_type":"Bearer","expires_in":"3599","ext_expires_in":7199,"refresh_in":1800,"access_token":"x"}"#,
        )
        .unwrap();
        let t = r.into_access_token(1000);
        assert_eq!((t.expires_on, t.ext_expires_on, t.refresh_on), (4599, 8199, Some(2800)));
    }

    #[test]
    fn parse_token_response_is_what_send_once_reads() {
        let t =
            parse_token_response(br#"{"token_type":"Bearer","expires_in":3599,"access_token":"tok"}"#, 1000).unwrap();
        assert_eq!(t.token.expose(), "tok");
        assert_eq!((t.expires_on, t.not_before, t.ext_expires_on, t.refresh_on), (4599, 1000, 4599, None));
        assert!(parse_token_response(br#"{"access_token":"tok"}"#, 1000).is_err(), "expires_in is required");
        assert!(parse_token_response(br#"{"access_token":"tok","expires_in":"soon"}"#, 1000).is_err());
        assert!(parse_token_response(b"<html>", 1000).is_err());
    }

    #[test]
    fn an_absurd_lifetime_saturates_instead_of_overflowing() {
        // Regression: `issued_at + expires_in` panicked in debug builds and wrapped to a
        // time in the past in release builds for lifetimes near u64::MAX.
        let body = br#"{"access_token":"t","expires_in":18446744073709551615,"refresh_in":"18446744073709551615"}"#;
        let t = parse_token_response(body, 1_795_910_400).unwrap();
        assert_eq!((t.expires_on, t.ext_expires_on, t.refresh_on), (u64::MAX, u64::MAX, Some(u64::MAX)));
        assert_eq!(t.not_before, 1_795_910_400);
    }

    #[test]
    fn first_line_is_one_line_even_when_the_code_is_not() {
        // Regression (found by the entra_response fuzz target): a line break in `error`
        // passed straight into the message.
        let body = ErrorResponse::parse(br#"{"error":"invalid\nforged","error_description":"AADSTS70021: x\r\ny"}"#);
        assert_eq!(body.first_line(), "invalid: AADSTS70021: x");
        assert_eq!(ErrorResponse::parse(br#"{"error":"\nonly"}"#).first_line(), "");
    }

    #[test]
    fn an_unreadable_error_body_reads_as_empty() {
        let body = ErrorResponse::parse(b"<html>Bad Gateway</html>");
        assert_eq!((body.aadsts(), body.first_line()), (None, String::new()));
        let body = ErrorResponse::parse(br#"{"error":"invalid_scope","error_codes":[70011]}"#);
        assert_eq!((body.aadsts(), body.first_line()), (Some(70011), "invalid_scope".to_owned()));
    }

    #[test]
    fn aadsts_comes_from_codes_or_description() {
        let body: ErrorResponse = serde_json::from_str(
            r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.\r\nTrace ID: x","error_codes":[7000215]}"#,
        )
        .unwrap();
        assert_eq!(body.aadsts(), Some(7000215));
        assert_eq!(body.first_line(), "invalid_client: AADSTS7000215: Invalid client secret provided.");
        let body: ErrorResponse = serde_json::from_str(
            r#"{"error":"invalid_request","error_description":"AADSTS90002: Tenant 'x' not found."}"#,
        )
        .unwrap();
        assert_eq!(body.aadsts(), Some(90002));
    }

    fn refusal(body: &str) -> Refusal {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            body: ErrorResponse::parse(body.as_bytes()),
            credential: CredentialKind::ClientSecret,
            tenant: "t1".into(),
            client_id: "c1".into(),
        }
    }

    #[test]
    fn rejection_names_what_to_check() {
        let refusal = refusal(r#"{"error":"unauthorized_client","error_codes":[700016],"correlation_id":"corr"}"#);
        assert_eq!(refusal.error(), "unauthorized_client");
        let error = refusal.into_error();
        let text = error.to_string();
        assert!(text.contains("c1") && text.contains("t1") && text.contains("AADSTS700016"), "{text}");
        assert!(error.is_permanent());
        let CredentialError::Rejected { aadsts, correlation_id, .. } = error else { unreachable!() };
        assert_eq!((aadsts, correlation_id.as_deref()), (Some(700016), Some("corr")));
    }

    #[test]
    fn a_refusal_rejected_in_other_words_keeps_its_code_and_correlation_id() {
        let refusal = refusal(r#"{"error":"invalid_grant\r\nforged","error_codes":[70008],"correlation_id":"corr"}"#);
        assert_eq!(refusal.error(), "invalid_grant", "one line, whatever the authority sent");
        let error = refusal.reject("sign in again".into());
        let CredentialError::Rejected { aadsts, message, correlation_id, .. } = error else { unreachable!() };
        assert_eq!((aadsts, message.as_str(), correlation_id.as_deref()), (Some(70008), "sign in again", Some("corr")));
    }

    #[test]
    fn an_echoed_request_is_scrubbed_of_what_it_carried() {
        // What a misconfigured authority_host might answer: the request body, form-encoded,
        // and the secret once more as a JSON-escaped string.
        let secret = "s3cr~t/value";
        let body = r#"{"error":"invalid_request s3cr~t/value","error_description":"got client_id=c&client_secret=s3cr%7Et%2Fvalue and s3cr~t\/value","correlation_id":"s3cr~t/value\nforged"}"#;
        let scrubbed = ErrorResponse::parse(body.as_bytes()).scrubbed(&[secret]);
        let line = scrubbed.first_line();
        assert_eq!(line, "invalid_request <redacted>: got client_id=c&client_secret=<redacted> and <redacted>");
        assert_eq!(scrubbed.correlation_id.as_deref(), Some("<redacted>"));
    }

    #[test]
    fn relayed_text_is_bounded() {
        let long = format!(r#"{{"error":"invalid_request","error_description":"{}"}}"#, "x".repeat(10_000));
        let line = ErrorResponse::parse(long.as_bytes()).first_line();
        assert_eq!(line.chars().count(), relayed::MAX_RELAYED_CHARS);
        let refusal = refusal(&long);
        assert!(refusal.into_error().to_string().chars().count() < relayed::MAX_RELAYED_CHARS + 100);
    }

    #[test]
    fn user_token_responses_carry_what_was_asked_for() {
        let body =
            br#"{"access_token":"a","expires_in":"3599","refresh_token":"r","id_token":"h.c.s","client_info":"ci"}"#;
        let response = parse_user_token_response(body, 1000).unwrap();
        assert_eq!((response.access.token.expose(), response.access.expires_on), ("a", 4599));
        assert_eq!(response.refresh_token.as_ref().map(Secret::expose), Some("r"));
        assert_eq!(response.id_token.as_ref().map(Secret::expose), Some("h.c.s"));
        assert_eq!(response.client_info.as_deref(), Some("ci"));
        let bare = parse_user_token_response(br#"{"access_token":"a","expires_in":1}"#, 0).unwrap();
        assert!(bare.refresh_token.is_none() && bare.id_token.is_none() && bare.client_info.is_none());
        // What only user grants read never makes a client-credentials answer unreadable.
        let odd = br#"{"access_token":"a","expires_in":1,"refresh_token":5,"id_token":{},"client_info":null}"#;
        assert!(parse_token_response(odd, 0).is_ok());
        let odd = parse_user_token_response(odd, 0).unwrap();
        assert!(odd.refresh_token.is_none() && odd.id_token.is_none() && odd.client_info.is_none());
        assert!(!format!("{response:?}").contains("\"r\""), "Debug never shows the refresh token");
    }
}
