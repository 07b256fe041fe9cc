//! `workload_identity`: Kubernetes workload identity federation.
//!
//! The projected service-account token in `token_file` is the client assertion. The kubelet
//! rotates that file (typically hourly), so it is re-read whenever its modification time
//! changes, at least every five minutes, and always before the retry that follows an
//! AADSTS700024 ("assertion expired"); docs/protocols.md#projected-service-account-token.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::sync::Mutex;

use super::entra::{Application, ClientAuth};
use super::jwt::{NO_MATCHING_FEDERATION, describe_federated_claims};
use super::{AccessToken, Credential, CredentialError, LinkStatus};
use crate::secret::Secret;

/// Longest time a token file's contents are trusted without reading it again.
const MAX_FILE_AGE: Duration = Duration::from_secs(300);
/// AADSTS code for an expired or not-yet-valid assertion.
const ASSERTION_EXPIRED: u32 = 700024;

/// An application federated with the cluster's service-account issuer.
pub struct WorkloadIdentityCredential {
    application: Application,
    token_file: PathBuf,
    cached: Mutex<Option<CachedAssertion>>,
}

struct CachedAssertion {
    assertion: Secret,
    modified: Option<SystemTime>,
    read_at: tokio::time::Instant,
}

impl WorkloadIdentityCredential {
    /// A credential for `application` that presents the token in `token_file`.
    pub fn new(application: Application, token_file: PathBuf) -> Self {
        Self { application, token_file, cached: Mutex::new(None) }
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
        self.application.exchange(self.kind(), resource, ClientAuth::Assertion(assertion)).await
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
        let mut assertion = self.assertion(false).await?;
        let mut result = self.exchange(resource, &assertion).await;
        if let Err(CredentialError::Rejected { aadsts: Some(ASSERTION_EXPIRED), .. }) = &result {
            tracing::info!(file = %self.token_file.display(), "federated token expired; re-reading the file and retrying once");
            assertion = self.assertion(true).await?;
            result = self.exchange(resource, &assertion).await;
        }
        // Name what was presented: the three values Entra matched against the federated
        // identity credential.
        result.map_err(|error| {
            error.with_detail(NO_MATCHING_FEDERATION, || format!("presented {}", describe_federated_claims(&assertion)))
        })
    }

    fn status(&self) -> LinkStatus {
        if self.token_file.is_file() {
            LinkStatus::Usable(format!("federated token file {} exists", self.token_file.display()))
        } else {
            LinkStatus::NotUsable(format!("federated token file {} does not exist (yet)", self.token_file.display()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A credential whose authority refuses connections: reaching it would be a transient
    /// error, so an `Unavailable` proves the file was refused before anything was sent.
    fn credential(token_file: PathBuf) -> WorkloadIdentityCredential {
        WorkloadIdentityCredential::new(Application::unreachable(), token_file)
    }

    #[tokio::test]
    async fn an_empty_or_unreadable_file_is_unavailable_and_never_sent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, " \n").unwrap();
        let error = credential(path.clone()).get_token("https://vault.azure.net").await.unwrap_err();
        let CredentialError::Unavailable { reason, .. } = error else { panic!("{error}") };
        assert!(reason.contains(&path.display().to_string()) && reason.contains("is empty"), "{reason}");

        // A directory where the file should be: it exists, but reading fails.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        let error = credential(path.clone()).get_token("https://vault.azure.net").await.unwrap_err();
        let CredentialError::Unavailable { reason, .. } = error else { panic!("{error}") };
        assert!(reason.contains("cannot read federated token file"), "{reason}");
    }
}
