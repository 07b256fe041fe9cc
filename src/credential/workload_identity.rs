//! `workload_identity`: Kubernetes workload identity federation.
//!
//! The projected service-account token in `token_file` is the client assertion. The kubelet
//! rotates that file (typically hourly, by the same `..data` symlink swap as a Secret), so it
//! is read again whenever it changes, at least every five minutes, and unconditionally after
//! an AADSTS700024 ("assertion expired") or AADSTS700027 (signature not accepted) refusal,
//! followed by a single retry when that read found a new token. [`WatchedFiles`] does all
//! three (docs/protocols.md#projected-service-account-token).

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;

use super::entra::{Application, ClientAuth};
use super::jwt::describe_federated_claims;
use super::watched::{LoadError, WatchedFiles, non_empty_text};
use super::{Credential, CredentialError, Grant, LinkStatus, OnBehalfOf};
use crate::aadsts;
use crate::config::CredentialKind;
use crate::secret::Secret;
use crate::token::AccessToken;

/// Longest time a token file's contents are trusted without reading it again.
const MAX_FILE_AGE: Duration = Duration::from_secs(300);

/// An application federated with the cluster's service-account issuer.
pub struct WorkloadIdentityCredential {
    application: Application,
    token_file: PathBuf,
    assertion: WatchedFiles<Secret>,
}

impl WorkloadIdentityCredential {
    /// A credential for `application` that presents the token in `token_file`.
    pub fn new(application: Application, token_file: PathBuf) -> Self {
        let assertion =
            WatchedFiles::new("federated token file", vec![token_file.clone()], Some(MAX_FILE_AGE), |contents| {
                non_empty_text(&contents[0]).map(Secret::new)
            });
        Self { application, token_file, assertion }
    }

    async fn obtain(&self, grant: Grant<'_>) -> Result<AccessToken, CredentialError> {
        let exchange = |assertion: Secret| async move {
            self.application.exchange(self.kind(), grant, ClientAuth::Assertion(&assertion)).await
        };
        let (result, assertion) =
            self.assertion.exchange(&aadsts::STALE_ASSERTION, exchange).await.map_err(|e| self.unavailable(e))?;
        // Name what was presented: the three values Entra matched against the federated
        // identity credential.
        result.map_err(|error| {
            error.with_detail(aadsts::NO_MATCHING_FEDERATION, || {
                format!("presented {}", describe_federated_claims(&assertion))
            })
        })
    }

    fn unavailable(&self, error: LoadError) -> CredentialError {
        let reason = match error {
            LoadError::Read { path, reason } => {
                format!("cannot read federated token file {}: {reason}", path.display())
            }
            LoadError::Invalid(problem) => format!("federated token file {} {problem}", self.token_file.display()),
        };
        CredentialError::Unavailable { credential: self.kind(), reason }
    }
}

#[async_trait]
impl Credential for WorkloadIdentityCredential {
    fn kind(&self) -> CredentialKind {
        CredentialKind::WorkloadIdentity
    }

    async fn get_token(&self, resource: &str) -> Result<AccessToken, CredentialError> {
        self.obtain(Grant::App(resource)).await
    }

    async fn on_behalf_of(&self, request: OnBehalfOf<'_>) -> Result<AccessToken, CredentialError> {
        self.obtain(Grant::OnBehalfOf(request)).await
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
