//! `azure_pipelines`: workload identity federation from an Azure Pipelines job.
//!
//! Before every exchange (docs/protocols.md#azure-devops-oidc) tokenrelay asks Azure DevOps for a fresh OIDC
//! token: `POST {SYSTEM_OIDCREQUESTURI}?api-version=7.1&serviceConnectionId=<id>` with the
//! job's `System.AccessToken` as a bearer token, then presents the returned `oidcToken` as
//! the client assertion. The OIDC token is never reused: Azure DevOps tokens expire after
//! about ten minutes to an hour (AADSTS700024), and a fresh one costs one local round trip.
//! Failures name the `x-vss-e2eid` and `x-msedge-ref` response headers Azure DevOps support
//! asks for.
//!
//! The request has no body, and says so with `Content-Length: 0`: Azure DevOps sits behind
//! IIS and Azure Front Door, which answer a POST that has neither a length nor a chunked body
//! with `411 Length Required`, and an HTTP client sends no length for an absent body by
//! itself. The Azure SDKs send the same header (Rust explicitly; Python through `requests`).

use std::time::Duration;

use async_trait::async_trait;
use reqwest::{StatusCode, Url, header};
use serde::Deserialize;

use super::entra::{Application, ClientAuth, relayed};
use super::jwt::describe_federated_claims;
use super::{Credential, CredentialError, Grant, LinkStatus, OnBehalfOf};
use crate::aadsts;
use crate::config::CredentialKind;
use crate::config::PipelinesConfig;
use crate::secret::Secret;
use crate::token::AccessToken;

/// The OIDC API version the Azure SDKs use.
const OIDC_API_VERSION: &str = "7.1";
/// The most of an error body quoted in a message.
const MAX_QUOTED_BODY: usize = 300;

/// A pipeline job federated with an application through a service connection.
pub struct AzurePipelinesCredential {
    application: Application,
    http: reqwest::Client,
    config: PipelinesConfig,
}

impl AzurePipelinesCredential {
    /// A credential for `application`; `timeout` bounds the OIDC request.
    pub fn new(application: Application, config: PipelinesConfig, timeout: Duration) -> Result<Self, String> {
        let http = super::http_client(timeout, |builder| builder)?;
        Ok(Self { application, http, config })
    }

    /// A fresh OIDC token from Azure DevOps.
    async fn oidc_token(&self) -> Result<Secret, CredentialError> {
        let mut url = Url::parse(&self.config.oidc_request_uri)
            .map_err(|e| self.rejected(format!("the OIDC request URI is not a URL: {e}")))?;
        url.query_pairs_mut()
            .append_pair("api-version", OIDC_API_VERSION)
            .append_pair("serviceConnectionId", &self.config.service_connection_id);
        let response = self
            .http
            .post(url)
            .bearer_auth(self.config.system_access_token.expose())
            .header("X-TFS-FedAuthRedirect", "Suppress")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, "0")
            .header(header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| self.transient(format!("requesting an OIDC token from Azure DevOps failed: {e}")))?;
        let status = response.status();
        let ids = support_ids(response.headers());
        let body = response
            .bytes()
            .await
            .map_err(|e| self.transient(format!("reading Azure DevOps' OIDC response: {e}{ids}")))?;
        if !status.is_success() {
            return Err(self.refusal(status, &body, &ids));
        }
        let parsed: OidcResponse = serde_json::from_slice(&body).map_err(|_| {
            self.rejected(format!(
                "Azure DevOps answered {status} without an OIDC token (a sign-in page?); check SYSTEM_OIDCREQUESTURI \
                 and the System.AccessToken{ids}"
            ))
        })?;
        match parsed.oidc_token {
            Some(token) if !token.trim().is_empty() => Ok(Secret::new(token.trim())),
            _ => Err(self.transient(format!("Azure DevOps answered {status} with an empty oidcToken{ids}"))),
        }
    }

    /// The error for a non-success answer from the OIDC endpoint.
    fn refusal(&self, status: StatusCode, body: &[u8], ids: &str) -> CredentialError {
        let said = quote_body(body, self.config.system_access_token.expose());
        let connection = &self.config.service_connection_id;
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => self.rejected(format!(
                "Azure DevOps refused the System.AccessToken ({status}){said}; map it into the step \
                 (env: SYSTEM_ACCESSTOKEN: $(System.AccessToken)) and check that it has not expired{ids}"
            )),
            StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST => self.rejected(format!(
                "Azure DevOps has no usable service connection {connection} for this pipeline ({status}){said}; \
                 check service_connection_id and that the pipeline is authorised to use it{ids}"
            )),
            status if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS => {
                self.transient(format!("Azure DevOps answered {status} to the OIDC token request{said}{ids}"))
            }
            status => self.rejected(format!("Azure DevOps refused the OIDC token request ({status}){said}{ids}")),
        }
    }

    async fn obtain(&self, grant: Grant<'_>) -> Result<AccessToken, CredentialError> {
        let oidc_token = self.oidc_token().await?;
        let result = self.application.exchange(self.kind(), grant, ClientAuth::Assertion(&oidc_token)).await;
        result.map_err(|error| {
            error.with_detail(aadsts::NO_MATCHING_FEDERATION, || {
                format!(
                    "presented {} (service connection {}); compare them with the application's federated credential",
                    describe_federated_claims(&oidc_token),
                    self.config.service_connection_id
                )
            })
        })
    }

    fn rejected(&self, message: String) -> CredentialError {
        CredentialError::Rejected { credential: self.kind(), aadsts: None, message, correlation_id: None }
    }

    fn transient(&self, reason: String) -> CredentialError {
        CredentialError::Transient { credential: self.kind(), reason }
    }
}

#[async_trait]
impl Credential for AzurePipelinesCredential {
    fn kind(&self) -> CredentialKind {
        CredentialKind::AzurePipelines
    }

    async fn get_token(&self, resource: &str) -> Result<AccessToken, CredentialError> {
        self.obtain(Grant::App(resource)).await
    }

    async fn on_behalf_of(&self, request: OnBehalfOf<'_>) -> Result<AccessToken, CredentialError> {
        self.obtain(Grant::OnBehalfOf(request)).await
    }

    fn status(&self) -> LinkStatus {
        let host = Url::parse(&self.config.oidc_request_uri)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_else(|| "an unparsable URI".to_owned());
        LinkStatus::Usable(format!(
            "OIDC requests go to {host} for service connection {}",
            self.config.service_connection_id
        ))
    }
}

#[derive(Deserialize)]
struct OidcResponse {
    #[serde(rename = "oidcToken")]
    oidc_token: Option<String>,
}

/// `" (x-vss-e2eid …, x-msedge-ref …)"` for the headers present, or nothing.
fn support_ids(headers: &header::HeaderMap) -> String {
    let ids: Vec<String> = ["x-vss-e2eid", "x-msedge-ref"]
        .into_iter()
        .filter_map(|name| headers.get(name).and_then(|v| v.to_str().ok()).map(|v| format!("{name} {v}")))
        .collect();
    if ids.is_empty() { String::new() } else { format!(" ({})", ids.join(", ")) }
}

/// `": <message>"` from an Azure DevOps error body (JSON `message`, else the text), scrubbed of
/// the System.AccessToken the request carried (whatever `SYSTEM_OIDCREQUESTURI` points at
/// may echo it) and shortened.
fn quote_body(body: &[u8], access_token: &str) -> String {
    let text = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    let line = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    if line.is_empty() || line.starts_with('<') {
        return String::new();
    }
    let scrubbed = relayed::scrub(line, &[access_token]);
    let short: String = scrubbed.chars().take(MAX_QUOTED_BODY).collect();
    format!(": {short}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_support_headers_that_are_present() {
        let mut headers = header::HeaderMap::new();
        assert_eq!(support_ids(&headers), "");
        headers.insert("x-vss-e2eid", "e2e-1".parse().unwrap());
        assert_eq!(support_ids(&headers), " (x-vss-e2eid e2e-1)");
        headers.insert("x-msedge-ref", "Ref A: 1".parse().unwrap());
        assert_eq!(support_ids(&headers), " (x-vss-e2eid e2e-1, x-msedge-ref Ref A: 1)");
    }

    #[test]
    fn quotes_the_devops_message_but_not_html() {
        assert_eq!(
            quote_body(br#"{"$id":"1","message":"TF400813: not authorized.\nmore"}"#, "tok"),
            ": TF400813: not authorized."
        );
        assert_eq!(quote_body(b"<html><body>sign in</body></html>", "tok"), "");
        assert_eq!(quote_body(b"", "tok"), "");
    }

    #[test]
    fn an_echoed_access_token_is_scrubbed_from_the_quote() {
        let quoted = quote_body(br#"{"message":"bad token system-access-token"}"#, "system-access-token");
        assert_eq!(quoted, ": bad token <redacted>");
    }
}
