//! `client_secret`: the client-credentials grant with an application secret.

use std::sync::Arc;

use async_trait::async_trait;

use super::entra::{ClientAuth, EntraClient};
use super::{AccessToken, Credential, CredentialError, LinkStatus};
use crate::secret::Secret;

/// An application (service principal) authenticating with its secret.
pub struct ClientSecretCredential {
    entra: Arc<EntraClient>,
    tenant_id: String,
    client_id: String,
    secret: Secret,
}

impl ClientSecretCredential {
    /// A credential for `client_id` in `tenant_id`.
    pub fn new(entra: Arc<EntraClient>, tenant_id: String, client_id: String, secret: Secret) -> Self {
        Self { entra, tenant_id, client_id, secret }
    }
}

#[async_trait]
impl Credential for ClientSecretCredential {
    fn kind(&self) -> &'static str {
        "client_secret"
    }

    async fn get_token(&self, resource: &str) -> Result<AccessToken, CredentialError> {
        self.entra
            .client_credentials(
                self.kind(),
                &self.tenant_id,
                &self.client_id,
                resource,
                ClientAuth::Secret(&self.secret),
            )
            .await
    }

    fn status(&self) -> LinkStatus {
        LinkStatus::Usable(format!("client secret for application {} (validity is not checked)", self.client_id))
    }
}
