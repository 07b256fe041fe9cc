//! From configuration to credentials: the one `match` over every kind.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::azure_cli::AzureCliCredential;
use super::azure_pipelines::AzurePipelinesCredential;
use super::certificate::CertificateCredential;
use super::client_assertion::ClientAssertionCredential;
use super::client_secret::ClientSecretCredential;
use super::dev::DevCredential;
use super::entra::{Application, EntraClient};
use super::environment::EnvironmentCredential;
use super::managed_identity::ManagedIdentityCredential;
use super::user::{UserCredential, UserGrants};
use super::workload_identity::WorkloadIdentityCredential;
use super::{Credential, CredentialError, LinkStatus};
use crate::config::CredentialKind;
use crate::config::{CredentialConfig, EnvironmentSource};
use crate::dev_issuer::DevIssuer;
use crate::token::AccessToken;

/// What every credential of one identity shares.
pub struct BuildContext<'a> {
    /// The Entra client (authority host, retries, concurrency limit).
    pub entra: &'a Arc<EntraClient>,
    /// The development issuer, under `--dev`.
    pub dev_issuer: Option<&'a Arc<DevIssuer>>,
    /// The identity's application (client) id.
    pub client_id: &'a str,
    /// The identity's object id, when configured (development tokens' `oid`).
    pub object_id: Option<&'a str>,
    /// The tenant to ask tokens of; configuration guarantees it for kinds that need one.
    pub tenant_id: Option<&'a str>,
    /// Hard limit on one upstream HTTP exchange.
    pub timeout: Duration,
}

/// Builds one credential. Fails only when an HTTP client cannot be created.
pub fn build(config: &CredentialConfig, context: &BuildContext<'_>) -> Result<Box<dyn Credential>, String> {
    let application = || {
        let tenant_id = context.tenant_id.unwrap_or_default().to_owned();
        Application::new(context.entra.clone(), tenant_id, context.client_id.to_owned())
    };
    let credential: Box<dyn Credential> = match config {
        CredentialConfig::ClientSecret { secret, secret_file } => match secret_file {
            Some(file) => Box::new(ClientSecretCredential::from_file(application(), file.clone())),
            None => Box::new(ClientSecretCredential::new(application(), secret.clone())),
        },
        CredentialConfig::WorkloadIdentity { token_file } => {
            Box::new(WorkloadIdentityCredential::new(application(), token_file.clone()))
        }
        CredentialConfig::ClientCertificate(certificate) => {
            Box::new(CertificateCredential::new(application(), certificate.clone()))
        }
        CredentialConfig::ClientAssertion { source } => {
            Box::new(ClientAssertionCredential::new(application(), source.clone()))
        }
        CredentialConfig::AzurePipelines(pipelines) => {
            Box::new(AzurePipelinesCredential::new(application(), pipelines.clone(), context.timeout)?)
        }
        CredentialConfig::ManagedIdentity(managed) => {
            Box::new(ManagedIdentityCredential::new(managed.clone(), context.timeout)?)
        }
        CredentialConfig::AzureCli(cli) => Box::new(AzureCliCredential::new(
            context.tenant_id.map(str::to_owned),
            Duration::from_secs(cli.timeout_secs),
            cli.search_path.clone(),
        )),
        CredentialConfig::Environment { source } => {
            let (inner, variables): (Box<dyn Credential>, _) = match source {
                EnvironmentSource::ClientSecret { secret } => {
                    (Box::new(ClientSecretCredential::new(application(), secret.clone())), "AZURE_CLIENT_SECRET")
                }
                EnvironmentSource::ClientCertificate(certificate) => (
                    Box::new(CertificateCredential::new(application(), certificate.clone())),
                    "AZURE_CLIENT_CERTIFICATE_PATH",
                ),
            };
            Box::new(EnvironmentCredential::new(inner, variables))
        }
        CredentialConfig::NotConfigured { credential, reason } => {
            Box::new(NotConfigured { credential: *credential, reason: reason.clone() })
        }
        CredentialConfig::User(user) => {
            let store = crate::store::open(&user.persistence).map_err(|problem| format!("user: {problem}"))?;
            Box::new(UserCredential::new(UserGrants::new(context.entra.clone()), user.record.clone(), store))
        }
        CredentialConfig::Dev => {
            let issuer = context.dev_issuer.ok_or("development credentials need the development issuer")?;
            Box::new(DevCredential::new(
                issuer.clone(),
                context.client_id.to_owned(),
                context.object_id.unwrap_or(context.client_id).to_owned(),
            ))
        }
    };
    Ok(credential)
}

/// A link whose inputs are absent here: always unavailable, with the reason.
pub struct NotConfigured {
    credential: CredentialKind,
    reason: String,
}

#[async_trait]
impl Credential for NotConfigured {
    fn kind(&self) -> CredentialKind {
        self.credential
    }

    async fn get_token(&self, _resource: &str) -> Result<AccessToken, CredentialError> {
        Err(CredentialError::Unavailable { credential: self.credential, reason: self.reason.clone() })
    }

    fn status(&self) -> LinkStatus {
        LinkStatus::NotUsable(self.reason.clone())
    }
}
