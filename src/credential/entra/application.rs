//! One application registration (service principal) as the client-credentials credentials
//! see it: the shared [`EntraClient`], the tenant and the client id, so that each credential
//! only has to say how it proves itself.

use std::sync::Arc;

use reqwest::Url;

use super::{ClientAuth, EntraClient};
use crate::config::CredentialKind;
use crate::credential::{CredentialError, Grant};
use crate::token::AccessToken;

/// An application in one tenant, reached through the shared Entra client.
pub struct Application {
    client: Arc<EntraClient>,
    tenant_id: String,
    client_id: String,
}

impl Application {
    /// The application `client_id` in `tenant_id`.
    pub fn new(client: Arc<EntraClient>, tenant_id: String, client_id: String) -> Self {
        Self { client, tenant_id, client_id }
    }

    /// The application (client) id, for status lines and assertion claims.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The tenant's token endpoint: the `aud` of certificate assertions.
    pub fn token_endpoint(&self) -> Url {
        self.client.token_endpoint(&self.tenant_id)
    }

    /// Runs `grant` (client credentials for a resource, or on-behalf-of), proving the
    /// application with `auth`. `credential` is the calling credential's kind, which every
    /// error names.
    pub async fn exchange(
        &self,
        credential: CredentialKind,
        grant: Grant<'_>,
        auth: ClientAuth<'_>,
    ) -> Result<AccessToken, CredentialError> {
        self.client.grant(credential, &self.tenant_id, &self.client_id, grant, auth).await
    }
}

#[cfg(test)]
impl Application {
    /// `client-1` in `tenant-1` behind an authority that refuses connections, without
    /// retries: reaching it is a quick transient error, so tests can tell whether a credential
    /// sent anything.
    pub(crate) fn unreachable() -> Self {
        let client = EntraClient::new(super::EntraSettings {
            authority_host: Url::parse("http://127.0.0.1:1/").unwrap(),
            timeout: std::time::Duration::from_secs(1),
            max_retries: 0,
            retry_base: std::time::Duration::from_millis(1),
            retry_max_delay: std::time::Duration::from_secs(1),
            retry_budget: std::time::Duration::from_secs(1),
            max_concurrent: 1,
        })
        .unwrap();
        Self::new(Arc::new(client), "tenant-1".into(), "client-1".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    #[test]
    fn the_token_endpoint_is_the_tenants() {
        assert_eq!(
            Application::unreachable().token_endpoint().as_str(),
            "http://127.0.0.1:1/tenant-1/oauth2/v2.0/token"
        );
    }

    #[tokio::test]
    async fn errors_name_the_calling_credential() {
        let secret = Secret::new("s");
        let error = Application::unreachable()
            .exchange(CredentialKind::ClientSecret, Grant::App("https://vault.azure.net"), ClientAuth::Secret(&secret))
            .await;
        let Err(CredentialError::Transient { credential, .. }) = error else { panic!("{error:?}") };
        assert_eq!(credential, CredentialKind::ClientSecret);
    }
}
