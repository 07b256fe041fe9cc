//! From configuration to credentials: the one `match` over every kind.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::azure_cli::AzureCliCredential;
use super::azure_developer_cli::AzureDeveloperCliCredential;
use super::azure_pipelines::AzurePipelinesCredential;
use super::azure_powershell::AzurePowershellCredential;
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
use crate::store::Store;
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
    /// The persistent store, where the `user` credential's refresh token is: the same one the
    /// broker persists its cache to, never a second handle on the file.
    pub store: Option<&'a Arc<dyn Store>>,
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
        CredentialConfig::AzureDeveloperCli(azd) => Box::new(AzureDeveloperCliCredential::new(
            context.tenant_id.map(str::to_owned),
            Duration::from_secs(azd.timeout_secs),
            azd.search_path.clone(),
        )),
        CredentialConfig::AzurePowershell(pwsh) => Box::new(AzurePowershellCredential::new(
            context.tenant_id.map(str::to_owned),
            Duration::from_secs(pwsh.timeout_secs),
            pwsh.search_path.clone(),
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
            let store = context.store.ok_or("user: the persistent cache, where the refresh token is, is not open")?;
            Box::new(UserCredential::new(UserGrants::new(context.entra.clone()), user.record.clone(), store.clone()))
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::config::{AuthenticationRecord, UserConfig};
    use crate::store::{Held, OnUnreadable, PersistedAccount, SaveReport, Snapshot, StoreError};

    /// An empty store that counts its loads.
    #[derive(Default)]
    struct Counting {
        loads: AtomicUsize,
    }

    impl Store for Counting {
        fn describe(&self) -> String {
            "counting".into()
        }
        fn load(&self, _: OnUnreadable) -> Result<Snapshot, StoreError> {
            self.loads.fetch_add(1, Ordering::SeqCst);
            Ok(Snapshot::default())
        }
        fn load_bounded(&self, _: usize, _: u64) -> Result<Snapshot, StoreError> {
            self.load(OnUnreadable::MoveAside)
        }
        fn save(&self, _: &Held, _: u64) -> Result<SaveReport, StoreError> {
            unreachable!("the user credential never saves tokens")
        }
        fn clear(&self, _: Option<&str>) -> Result<usize, StoreError> {
            unreachable!("the user credential never clears")
        }
        fn save_account(&self, _: PersistedAccount) -> Result<(), StoreError> {
            unreachable!("no refresh happens without a stored sign-in")
        }
    }

    fn user() -> CredentialConfig {
        let record = AuthenticationRecord {
            authority: "login.microsoftonline.com".into(),
            client_id: "04b07795-8ddb-461a-bbee-02f9e1bf7b46".into(),
            home_account_id: "oid.tid".into(),
            tenant_id: "tid".into(),
            username: "user@example.com".into(),
            version: "1.0".into(),
        };
        CredentialConfig::User(UserConfig { authentication_record: "record.json".into(), record })
    }

    fn context<'a>(entra: &'a Arc<EntraClient>, store: Option<&'a Arc<dyn Store>>) -> BuildContext<'a> {
        BuildContext {
            entra,
            dev_issuer: None,
            client_id: "client-1",
            object_id: None,
            tenant_id: Some("tid"),
            timeout: Duration::from_secs(1),
            store,
        }
    }

    /// The refresh token is read from the store the caller passes (the broker's), so one
    /// process never holds two handles on the cache file.
    #[tokio::test]
    async fn the_user_credential_reads_the_store_it_is_given() {
        let entra = Arc::new(
            EntraClient::new(super::super::entra::EntraSettings {
                authority_host: reqwest::Url::parse("http://127.0.0.1:1/").unwrap(),
                timeout: Duration::from_secs(1),
                max_retries: 0,
                retry_base: Duration::from_millis(1),
                retry_max_delay: Duration::from_secs(1),
                retry_budget: Duration::from_secs(1),
                max_concurrent: 1,
            })
            .unwrap(),
        );
        let counting = Arc::new(Counting::default());
        let store: Arc<dyn Store> = counting.clone();
        let credential = build(&user(), &context(&entra, Some(&store))).unwrap();
        let error = credential.get_token("https://vault.azure.net").await.unwrap_err();
        assert!(error.to_string().contains("no stored sign-in for user@example.com"), "{error}");
        assert_eq!(counting.loads.load(Ordering::SeqCst), 1);

        let Err(error) = build(&user(), &context(&entra, None)) else { panic!("built without a store") };
        assert!(error.starts_with("user: the persistent cache"), "{error}");
    }
}
