//! The Entra ID client: the only code that speaks OAuth2 to the authority.
//!
//! One operation, the client-credentials grant (`POST {authority}/{tenant}/oauth2/v2.0/token`,
//! form-encoded; docs/protocols.md#entra-token-endpoint), with hard timeouts, bounded
//! retries with exponential backoff and jitter on 429/5xx/network errors honouring
//! `Retry-After`, and a global cap on concurrent requests that protects the authority when
//! many identities refresh at once.
//! Credentials reach it through [`Application`], which pairs the client with one tenant and
//! client id.

mod application;

use std::time::Duration;

use reqwest::{StatusCode, Url, header};
use serde::{Deserialize, Deserializer};
use tokio::sync::Semaphore;

use super::{AccessToken, CredentialError};
use crate::clock::{Clock, SystemClock};
use crate::secret::Secret;

pub use application::Application;

/// `client_assertion_type` for every JWT assertion (certificate or federated).
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

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

    /// The token endpoint of `tenant`: also the `aud` of certificate assertions.
    pub fn token_endpoint(&self, tenant: &str) -> Url {
        let mut url = self.settings.authority_host.clone();
        let base = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{base}/{tenant}/oauth2/v2.0/token"));
        url
    }

    /// Runs the client-credentials grant for `resource`, retrying transient failures.
    /// Private to this module: credentials go through [`Application::exchange`].
    async fn client_credentials(
        &self,
        credential: &'static str,
        tenant: &str,
        client_id: &str,
        resource: &str,
        auth: ClientAuth<'_>,
    ) -> Result<AccessToken, CredentialError> {
        // Entra scopes are `<resource>/.default`; a resource ending in `/` keeps it, giving the
        // documented `https://management.core.windows.net//.default` form.
        let scope = format!("{resource}/.default");
        let mut form: Vec<(&str, &str)> =
            vec![("grant_type", "client_credentials"), ("client_id", client_id), ("scope", &scope)];
        match &auth {
            ClientAuth::Secret(secret) => form.push(("client_secret", secret.expose())),
            ClientAuth::Assertion(assertion) => {
                form.push(("client_assertion_type", JWT_BEARER));
                form.push(("client_assertion", assertion.expose()));
            }
        }
        let url = self.token_endpoint(tenant);
        let context = ErrorContext { credential, tenant, client_id };

        let mut attempt = 0;
        let started = tokio::time::Instant::now();
        loop {
            let outcome = self.send_once(&url, &form, &context).await;
            let error = match outcome {
                Ok(token) => return Ok(token),
                Err(error) => error,
            };
            let wait = match &error {
                Attempt::Retry { error, retry_after } if attempt < self.settings.max_retries => {
                    match self
                        .backoff(attempt, *retry_after)
                        .filter(|wait| self.within_budget(started.elapsed(), *wait))
                    {
                        Some(wait) => {
                            tracing::debug!(%error, attempt, wait_ms = wait.as_millis() as u64, "retrying the authority");
                            wait
                        }
                        None => return Err(error.clone()),
                    }
                }
                Attempt::Retry { error, .. } | Attempt::Fail(error) => return Err(error.clone()),
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
        let exponential = self.settings.retry_base.saturating_mul(1 << attempt.min(16));
        // Full jitter on the upper half keeps a fleet of sidecars from retrying in lockstep.
        let jittered = exponential / 2 + exponential.mul_f64(fastrand::f64() / 2.0);
        Some(jittered.min(max))
    }

    async fn send_once(
        &self,
        url: &Url,
        form: &[(&str, &str)],
        context: &ErrorContext<'_>,
    ) -> Result<AccessToken, Attempt> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| Attempt::Fail(context.transient("the upstream client is shutting down".into())))?;
        let issued_at = SystemClock.now();
        let response =
            self.http.post(url.clone()).header(header::ACCEPT, "application/json").form(form).send().await.map_err(
                |e| Attempt::Retry { error: context.transient(describe_reqwest_error(&e, url)), retry_after: None },
            )?;
        let status = response.status();
        let retry_after = parse_retry_after(response.headers());
        let body = response.bytes().await.map_err(|e| Attempt::Retry {
            error: context.transient(format!("reading the authority's response: {e}")),
            retry_after: None,
        })?;

        if status.is_success() {
            return parse_token_response(&body, issued_at).map_err(|e| {
                Attempt::Fail(context.transient(format!("the authority sent an unreadable token response: {e}")))
            });
        }

        let error_body = ErrorResponse::parse(&body);
        if status == StatusCode::TOO_MANY_REQUESTS {
            let error = CredentialError::Throttled {
                credential: context.credential,
                retry_after: retry_after.unwrap_or(Duration::from_secs(5)),
            };
            return Err(Attempt::Retry { error, retry_after });
        }
        if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
            let reason = format!("the authority answered {status}{}", error_body.summary_suffix());
            return Err(Attempt::Retry { error: context.transient(reason), retry_after });
        }
        Err(Attempt::Fail(context.rejected(status, error_body)))
    }
}

/// The result of one attempt that did not yield a token.
enum Attempt {
    /// Worth another try (throttling, 5xx, network).
    Retry { error: CredentialError, retry_after: Option<Duration> },
    /// Not worth another try.
    Fail(CredentialError),
}

/// What an error message needs to name.
struct ErrorContext<'a> {
    credential: &'static str,
    tenant: &'a str,
    client_id: &'a str,
}

impl ErrorContext<'_> {
    fn transient(&self, reason: String) -> CredentialError {
        CredentialError::Transient { credential: self.credential, reason }
    }

    fn rejected(&self, status: StatusCode, body: ErrorResponse) -> CredentialError {
        let aadsts = body.aadsts();
        let advice = aadsts.and_then(|code| advice(code, self.client_id, self.tenant));
        let detail = body.first_line();
        let message = match (advice, detail.is_empty()) {
            (Some(advice), true) => advice,
            (Some(advice), false) => format!("{advice} (authority said: {detail})"),
            (None, false) => format!("the authority refused the request ({status}): {detail}"),
            (None, true) => format!("the authority refused the request ({status})"),
        };
        CredentialError::Rejected { credential: self.credential, aadsts, message, correlation_id: body.correlation_id }
    }
}

/// What to tell an operator for the AADSTS codes that mean "fix your configuration".
fn advice(code: u32, client_id: &str, tenant: &str) -> Option<String> {
    let text = match code {
        7000215 => format!(
            "AADSTS7000215: the client secret is not valid for application {client_id}; \
             check that the secret value (not its id) belongs to this application"
        ),
        7000222 => format!(
            "AADSTS7000222: the client secret of application {client_id} has expired; \
             create a new secret and update the configuration"
        ),
        700016 => format!(
            "AADSTS700016: application {client_id} was not found in tenant {tenant}; \
             check client_id and tenant_id"
        ),
        90002 => format!("AADSTS90002: tenant {tenant} was not found; check tenant_id and the authority host (cloud)"),
        70021 => format!(
            "AADSTS70021: no federated identity credential of application {client_id} matches the \
             presented token; check the issuer, subject and audience configured on the application"
        ),
        700024 => "AADSTS700024: the client assertion has expired or is not yet valid; \
                   check that the token file is refreshed (projected service account token)"
            .to_owned(),
        700027 => format!(
            "AADSTS700027: the client assertion signature is not valid for application {client_id}; \
             check that the certificate is registered on the application"
        ),
        500011 => "AADSTS500011: the resource was not found in the tenant; check the resource URI".to_owned(),
        70011 => "AADSTS70011: the requested scope is not valid; check the resource URI".to_owned(),
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

/// A successful token response (docs/protocols.md#entra-token-response). Lifetimes may arrive
/// as numbers or as numeric strings depending on the authority, so both are accepted.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(deserialize_with = "seconds")]
    expires_in: u64,
    #[serde(default, deserialize_with = "optional_seconds")]
    ext_expires_in: Option<u64>,
    #[serde(default, deserialize_with = "optional_seconds")]
    refresh_in: Option<u64>,
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

/// An OAuth2 error response from Entra. Public (fields private) only for the fuzz target.
#[derive(Default, Deserialize)]
pub struct ErrorResponse {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
    #[serde(default)]
    error_codes: Vec<u32>,
    #[serde(default)]
    correlation_id: Option<String>,
}

impl ErrorResponse {
    /// Reads an error body; one that is not the JSON Entra sends reads as empty, so the
    /// status code alone describes the failure.
    pub fn parse(body: &[u8]) -> Self {
        serde_json::from_slice(body).unwrap_or_default()
    }

    /// The AADSTS number, from `error_codes` or else from the description's prefix.
    pub fn aadsts(&self) -> Option<u32> {
        self.error_codes.first().copied().or_else(|| {
            let rest = self.error_description.strip_prefix("AADSTS")?;
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
    }

    /// `error: first line of the description`; Entra appends trace and correlation ids
    /// on later lines, which the typed fields carry instead. The code is cut to its first
    /// line too: it comes off the network and ends up in logs, where a line break would let
    /// a response forge log lines.
    pub fn first_line(&self) -> String {
        let first = |text: &str| text.lines().next().unwrap_or("").trim().to_owned();
        let (error, description) = (first(&self.error), first(&self.error_description));
        match (error.is_empty(), description.is_empty()) {
            (true, true) => String::new(),
            (false, true) => error,
            (true, false) => description,
            (false, false) => format!("{error}: {description}"),
        }
    }

    fn summary_suffix(&self) -> String {
        let line = self.first_line();
        if line.is_empty() { line } else { format!(": {line}") }
    }
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

    #[test]
    fn rejection_names_what_to_check() {
        let context = ErrorContext { credential: "client_secret", tenant: "t1", client_id: "c1" };
        let body: ErrorResponse =
            serde_json::from_str(r#"{"error":"unauthorized_client","error_codes":[700016],"correlation_id":"corr"}"#)
                .unwrap();
        let error = context.rejected(StatusCode::BAD_REQUEST, body);
        let text = error.to_string();
        assert!(text.contains("c1") && text.contains("t1") && text.contains("AADSTS700016"), "{text}");
        assert!(error.is_permanent());
    }
}
