//! `client_secret`: the client-credentials grant with an application secret.

use async_trait::async_trait;

use super::entra::{Application, ClientAuth};
use super::{AccessToken, Credential, CredentialError, LinkStatus};
use crate::secret::Secret;

/// An application (service principal) authenticating with its secret.
pub struct ClientSecretCredential {
    application: Application,
    secret: Secret,
}

impl ClientSecretCredential {
    /// A credential for `application` that presents `secret`.
    pub fn new(application: Application, secret: Secret) -> Self {
        Self { application, secret }
    }
}

#[async_trait]
impl Credential for ClientSecretCredential {
    fn kind(&self) -> &'static str {
        "client_secret"
    }

    async fn get_token(&self, resource: &str) -> Result<AccessToken, CredentialError> {
        self.application.exchange(self.kind(), resource, ClientAuth::Secret(&self.secret)).await
    }

    fn status(&self) -> LinkStatus {
        LinkStatus::Usable(format!(
            "client secret for application {} (validity is not checked)",
            self.application.client_id()
        ))
    }
}
