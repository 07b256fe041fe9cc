//! `client_secret`: the client-credentials grant with an application secret.
//!
//! A secret from `secret_file` is read again when the file changes (a Kubernetes Secret
//! update, a secret manager's agent rewriting it), checked before every exchange, and once
//! more, unconditionally, after AADSTS7000215 (not a valid secret of the application) or
//! AADSTS7000222 (expired): the refusal may mean the secret was rotated while the exchange was
//! under way, and when the file now holds another secret the exchange is retried once with it.
//! An inline secret or `AZURE_CLIENT_SECRET` is fixed for the process lifetime.

use std::path::PathBuf;

use async_trait::async_trait;

use super::entra::{Application, ClientAuth};
use super::watched::{LoadError, WatchedFiles, non_empty_text};
use super::{Credential, CredentialError, Grant, LinkStatus, OnBehalfOf};
use crate::aadsts;
use crate::config::CredentialKind;
use crate::secret::Secret;
use crate::token::AccessToken;

/// An application (service principal) authenticating with its secret.
pub struct ClientSecretCredential {
    application: Application,
    secret: Source,
}

enum Source {
    /// Inline in the configuration or from the environment.
    Fixed(Secret),
    /// `secret_file`, trimmed.
    File(Box<WatchedFiles<Secret>>),
}

impl ClientSecretCredential {
    /// A credential for `application` that presents `secret`.
    pub fn new(application: Application, secret: Secret) -> Self {
        Self { application, secret: Source::Fixed(secret) }
    }

    /// A credential for `application` that presents the secret in `file`, read again whenever
    /// the file changes.
    pub fn from_file(application: Application, file: PathBuf) -> Self {
        let watched = WatchedFiles::new("client secret file", vec![file], None, |contents| {
            non_empty_text(&contents[0]).map(Secret::new)
        });
        Self { application, secret: Source::File(Box::new(watched)) }
    }

    async fn obtain(&self, grant: Grant<'_>) -> Result<AccessToken, CredentialError> {
        match &self.secret {
            Source::Fixed(secret) => self.application.exchange(self.kind(), grant, ClientAuth::Secret(secret)).await,
            Source::File(file) => {
                let exchange = |secret: Secret| async move {
                    self.application.exchange(self.kind(), grant, ClientAuth::Secret(&secret)).await
                };
                let (result, _) =
                    file.exchange(&aadsts::STALE_SECRET, exchange).await.map_err(|e| self.unavailable(e))?;
                result
            }
        }
    }

    fn unavailable(&self, error: LoadError) -> CredentialError {
        let reason = match (error, &self.secret) {
            (LoadError::Read { path, reason }, _) => {
                format!("cannot read client secret file {}: {reason}", path.display())
            }
            (LoadError::Invalid(problem), Source::File(file)) => {
                format!("client secret file {} {problem}", file.paths()[0].display())
            }
            (LoadError::Invalid(problem), Source::Fixed(_)) => problem,
        };
        CredentialError::Unavailable { credential: self.kind(), reason }
    }
}

#[async_trait]
impl Credential for ClientSecretCredential {
    fn kind(&self) -> CredentialKind {
        CredentialKind::ClientSecret
    }

    async fn get_token(&self, resource: &str) -> Result<AccessToken, CredentialError> {
        self.obtain(Grant::App(resource)).await
    }

    async fn on_behalf_of(&self, request: OnBehalfOf<'_>) -> Result<AccessToken, CredentialError> {
        self.obtain(Grant::OnBehalfOf(request)).await
    }

    fn status(&self) -> LinkStatus {
        let source = match &self.secret {
            Source::Fixed(_) => String::new(),
            Source::File(file) => format!(" from {}, read again when it changes", file.paths()[0].display()),
        };
        LinkStatus::Usable(format!(
            "client secret for application {}{source} (validity is not checked)",
            self.application.client_id()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreadable_or_empty_secret_file_is_unavailable_and_never_sent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client-secret");
        let credential = ClientSecretCredential::from_file(Application::unreachable(), path.clone());
        let error = credential.get_token("https://vault.azure.net").await.unwrap_err();
        let CredentialError::Unavailable { reason, .. } = error else { panic!("{error}") };
        assert!(reason.starts_with("cannot read client secret file") && reason.contains("client-secret"), "{reason}");

        std::fs::write(&path, "\n").unwrap();
        let error = credential.get_token("https://vault.azure.net").await.unwrap_err();
        let CredentialError::Unavailable { reason, .. } = error else { panic!("{error}") };
        assert!(reason.ends_with("client-secret is empty"), "{reason}");

        // Readable now: it is sent, which against an unreachable authority is transient.
        std::fs::write(&path, "s3cret\n").unwrap();
        let error = credential.get_token("https://vault.azure.net").await.unwrap_err();
        assert!(matches!(error, CredentialError::Transient { .. }), "{error}");
        assert!(credential.status().reason().contains("read again when it changes"));
    }
}
