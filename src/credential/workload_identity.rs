//! `workload_identity`: Kubernetes workload identity federation.
//!
//! The projected service-account token in `token_file` is the client assertion. The kubelet
//! rotates that file (typically hourly), so it is re-read whenever its modification time
//! changes, at least every five minutes, and always before the retry that follows an
//! AADSTS700024 ("assertion expired"); protocols.md section 4, pitfall 5.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use base64::Engine;
use tokio::sync::Mutex;

use super::entra::{ClientAuth, EntraClient};
use super::{AccessToken, Credential, CredentialError};
use crate::secret::Secret;

/// Longest time a token file's contents are trusted without reading it again.
const MAX_FILE_AGE: Duration = Duration::from_secs(300);
/// AADSTS code for an expired or not-yet-valid assertion.
const ASSERTION_EXPIRED: u32 = 700024;
/// AADSTS code for a federated token that matches no federated identity credential.
const NO_MATCHING_FEDERATION: u32 = 70021;

/// An application federated with the cluster's service-account issuer.
pub struct WorkloadIdentityCredential {
    entra: Arc<EntraClient>,
    tenant_id: String,
    client_id: String,
    token_file: PathBuf,
    cached: Mutex<Option<CachedAssertion>>,
}

struct CachedAssertion {
    assertion: Secret,
    modified: Option<SystemTime>,
    read_at: tokio::time::Instant,
}

impl WorkloadIdentityCredential {
    /// A credential that presents the token in `token_file`.
    pub fn new(entra: Arc<EntraClient>, tenant_id: String, client_id: String, token_file: PathBuf) -> Self {
        Self { entra, tenant_id, client_id, token_file, cached: Mutex::new(None) }
    }

    /// The current assertion, read from disk when it may have changed (or when `force`).
    async fn assertion(&self, force: bool) -> Result<Secret, CredentialError> {
        let modified = tokio::fs::metadata(&self.token_file).await.and_then(|m| m.modified()).map_err(|e| {
            self.unavailable(format!("cannot read federated token file {}: {e}", self.token_file.display()))
        })?;
        let mut cached = self.cached.lock().await;
        if let Some(current) = cached.as_ref() {
            let unchanged = current.modified == Some(modified);
            if !force && unchanged && current.read_at.elapsed() < MAX_FILE_AGE {
                return Ok(current.assertion.clone());
            }
        }
        let text = tokio::fs::read_to_string(&self.token_file).await.map_err(|e| {
            self.unavailable(format!("cannot read federated token file {}: {e}", self.token_file.display()))
        })?;
        let assertion = Secret::new(text.trim());
        if assertion.is_empty() {
            return Err(self.unavailable(format!("federated token file {} is empty", self.token_file.display())));
        }
        *cached = Some(CachedAssertion {
            assertion: assertion.clone(),
            modified: Some(modified),
            read_at: tokio::time::Instant::now(),
        });
        Ok(assertion)
    }

    async fn exchange(&self, resource: &str, assertion: &Secret) -> Result<AccessToken, CredentialError> {
        self.entra
            .client_credentials(
                self.kind(),
                &self.tenant_id,
                &self.client_id,
                resource,
                ClientAuth::Assertion(assertion),
            )
            .await
    }

    fn unavailable(&self, reason: String) -> CredentialError {
        CredentialError::Unavailable { credential: self.kind(), reason }
    }
}

#[async_trait]
impl Credential for WorkloadIdentityCredential {
    fn kind(&self) -> &'static str {
        "workload_identity"
    }

    async fn get_token(&self, resource: &str) -> Result<AccessToken, CredentialError> {
        let assertion = self.assertion(false).await?;
        let result = match self.exchange(resource, &assertion).await {
            Err(CredentialError::Rejected { aadsts: Some(ASSERTION_EXPIRED), .. }) => {
                tracing::info!(file = %self.token_file.display(), "federated token expired; re-reading the file and retrying once");
                let fresh = self.assertion(true).await?;
                self.exchange(resource, &fresh).await
            }
            other => other,
        };
        result.map_err(|error| match error {
            // Name what was presented: the three values Entra matched against the federated
            // identity credential. They are claims, not secrets; the token itself is never shown.
            CredentialError::Rejected { credential, aadsts: Some(NO_MATCHING_FEDERATION), message, correlation_id } => {
                CredentialError::Rejected {
                    credential,
                    aadsts: Some(NO_MATCHING_FEDERATION),
                    message: format!("{message}; presented {}", describe_assertion(&assertion)),
                    correlation_id,
                }
            }
            other => other,
        })
    }
}

/// `issuer "…", subject "…", audience "…"` of a JWT, read without verifying it.
fn describe_assertion(assertion: &Secret) -> String {
    let claims = assertion
        .expose()
        .split('.')
        .nth(1)
        .and_then(|payload| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok())
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok());
    let Some(claims) = claims else {
        return "a token that is not a readable JWT".to_owned();
    };
    let claim = |name: &str| match &claims[name] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(items) => items.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join(","),
        _ => "(none)".to_owned(),
    };
    format!("issuer \"{}\", subject \"{}\", audience \"{}\"", claim("iss"), claim("sub"), claim("aud"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_the_federated_claims_without_the_token() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(r#"{"iss":"https://oidc.example","sub":"system:serviceaccount:ns:sa","aud":["api://AzureADTokenExchange"]}"#);
        let jwt = Secret::new(format!("e30.{payload}.c2lnbmF0dXJl"));
        let text = describe_assertion(&jwt);
        assert_eq!(
            text,
            "issuer \"https://oidc.example\", subject \"system:serviceaccount:ns:sa\", audience \"api://AzureADTokenExchange\""
        );
        assert!(!text.contains("c2lnbmF0dXJl"));
        assert_eq!(describe_assertion(&Secret::new("garbage")), "a token that is not a readable JWT");
    }
}
