//! Upstream credentials in configuration: every `kind`, the `AZURE_*` detection behind the
//! default chain, and the typed values the credential modules are built from.
//!
//! An identity that names no `credentials` gets the default chain of the Azure SDKs'
//! DefaultAzureCredential: `environment`, `workload_identity`, `managed_identity`,
//! `azure_cli`, `azure_powershell`, `azure_developer_cli`. A link whose inputs are absent (no `AZURE_CLIENT_SECRET`,
//! no token file) becomes [`CredentialConfig::NotConfigured`], which the chain skips and
//! `tokenrelay check` explains.

use std::net::SocketAddr;
use std::path::PathBuf;

use reqwest::Url;
use serde::Serialize;

use super::{ConfigError, CredentialConfig, CredentialKind, Validator, raw};
use crate::id::Id;
use crate::secret::Secret;

/// The IMDS token endpoint on every Azure VM and node.
pub const IMDS_ENDPOINT: &str = "http://169.254.169.254/metadata/identity/oauth2/token";

/// The signature algorithm of a certificate assertion, and with it the thumbprint header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum AssertionAlgorithm {
    /// RSASSA-PSS with SHA-256 and the SHA-256 thumbprint `x5t#S256` (the default, as the
    /// current Entra documentation recommends).
    #[default]
    #[serde(rename = "PS256")]
    Ps256,
    /// RSASSA-PKCS1-v1_5 with SHA-256 and the SHA-1 thumbprint `x5t`, as older SDKs send.
    #[serde(rename = "RS256")]
    Rs256,
}

/// A certificate credential: where the certificate and key are and how to sign.
#[derive(Clone, Debug, Serialize)]
pub struct CertificateConfig {
    /// PEM (certificate and, unless `private_key_file` is set, the key) or PKCS#12/PFX.
    pub certificate_file: PathBuf,
    /// A separate PEM private key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_key_file: Option<PathBuf>,
    /// The PKCS#12 password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// Where the password came from, when a file: read again with the certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    pub algorithm: AssertionAlgorithm,
    /// Adds the `x5c` header (subject name / issuer authentication).
    pub send_certificate_chain: bool,
}

/// Where a `client_assertion` credential gets its JWT.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum AssertionSource {
    /// Read for every exchange.
    File { file: PathBuf },
    /// Run for every exchange (program and arguments, no shell); stdout is the assertion.
    Command { command: Vec<String>, timeout_secs: u64 },
}

/// An Azure Pipelines service connection (docs/protocols.md#azure-devops-oidc).
#[derive(Clone, Debug, Serialize)]
pub struct PipelinesConfig {
    pub service_connection_id: String,
    /// `SYSTEM_OIDCREQUESTURI` of the job.
    pub oidc_request_uri: String,
    /// The job's `System.AccessToken`.
    pub system_access_token: Secret,
}

/// Which protocol an upstream managed identity endpoint speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ManagedIdentityFlavour {
    /// IMDS: `Metadata: true`, api-version 2018-02-01.
    Imds,
    /// App Service: `X-IDENTITY-HEADER`, api-version 2019-08-01.
    AppService,
}

/// An upstream managed identity endpoint.
#[derive(Clone, Debug, Serialize)]
pub struct ManagedIdentityConfig {
    /// Where the endpoint came from (`IDENTITY_ENDPOINT`, `the IMDS address`, `configuration`).
    pub origin: String,
    pub endpoint: String,
    pub flavour: ManagedIdentityFlavour,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity_header: Option<Secret>,
    /// Selects a user-assigned identity upstream; none selects the system-assigned one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<String>,
    /// How long 410 ("IMDS is updating") is retried.
    pub gone_retry_secs: u64,
    /// First wait between retries; it doubles up to 10 s.
    pub retry_base_ms: u64,
    /// Retries on 404, 429, 5xx and network errors.
    pub max_retries: u32,
}

/// A developer tool run for every token: the Azure CLI (`azure_cli`), the Azure Developer CLI
/// (`azure_developer_cli`) or Azure PowerShell (`azure_powershell`).
#[derive(Clone, Debug, Serialize)]
pub struct AzureCliConfig {
    pub timeout_secs: u64,
    /// The `PATH` of this process, where `check` looks for `az`.
    #[serde(skip)]
    pub search_path: Option<String>,
}

/// What the Azure SDKs' EnvironmentCredential found.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EnvironmentSource {
    /// `AZURE_CLIENT_SECRET`.
    ClientSecret { secret: Secret },
    /// `AZURE_CLIENT_CERTIFICATE_PATH` and friends.
    ClientCertificate(CertificateConfig),
}

/// The Azure clouds that have names, and their authority hosts (docs/protocols.md#entra-token-endpoint).
const CLOUDS: [(&str, &str); 3] = [
    ("public", "https://login.microsoftonline.com"),
    ("usgovernment", "https://login.microsoftonline.us"),
    ("china", "https://login.chinacloudapi.cn"),
];

/// The authority host of a named cloud.
pub fn cloud_authority_host(name: &str) -> Option<&'static str> {
    let name = name.trim().to_ascii_lowercase();
    CLOUDS.iter().find(|(cloud, _)| *cloud == name).map(|(_, host)| *host)
}

impl Validator<'_> {
    /// One configured credential of an identity whose application is `client_id`.
    pub(super) fn credential(
        &self,
        key: &str,
        raw: raw::RawCredential,
        client_id: &str,
    ) -> Result<CredentialConfig, ConfigError> {
        match raw {
            raw::RawCredential::ClientSecret { secret, secret_file } => {
                let secret = match (secret, &secret_file) {
                    (Some(_), Some(_)) => {
                        return Err(self.error(key, "client_secret: set secret or secret_file, not both"));
                    }
                    (Some(value), None) => self.non_empty_secret(&format!("{key}.secret"), value)?,
                    (None, Some(path)) => self.secret_file(&format!("{key}.secret_file"), path)?,
                    (None, None) => match self.env("AZURE_CLIENT_SECRET") {
                        Some(value) => Secret::new(value),
                        None => {
                            return Err(
                                self.error(key, "client_secret: set secret_file (or secret, or AZURE_CLIENT_SECRET)")
                            );
                        }
                    },
                };
                Ok(CredentialConfig::ClientSecret { secret, secret_file })
            }
            raw::RawCredential::WorkloadIdentity { token_file } => {
                let token_file = match token_file {
                    Some(path) => path,
                    None => self.env("AZURE_FEDERATED_TOKEN_FILE").map(PathBuf::from).ok_or_else(|| {
                        self.error(key, "workload_identity: set token_file or AZURE_FEDERATED_TOKEN_FILE")
                    })?,
                };
                Ok(CredentialConfig::WorkloadIdentity { token_file })
            }
            raw::RawCredential::ClientCertificate {
                certificate_file,
                private_key_file,
                password,
                password_file,
                algorithm,
                send_certificate_chain,
            } => {
                let (certificate_file, from_env) = match certificate_file {
                    Some(path) => (path, false),
                    None => match self.env("AZURE_CLIENT_CERTIFICATE_PATH") {
                        Some(path) => (PathBuf::from(path), true),
                        None => {
                            return Err(self.error(
                                key,
                                "client_certificate: set certificate_file (or AZURE_CLIENT_CERTIFICATE_PATH)",
                            ));
                        }
                    },
                };
                let password = match (password, &password_file) {
                    (Some(_), Some(_)) => {
                        return Err(self.error(key, "client_certificate: set password or password_file, not both"));
                    }
                    (Some(value), None) => Some(Secret::new(value)),
                    (None, Some(path)) => Some(self.secret_file(&format!("{key}.password_file"), path)?),
                    (None, None) if from_env => self.env("AZURE_CLIENT_CERTIFICATE_PASSWORD").map(Secret::new),
                    (None, None) => None,
                };
                let algorithm = match algorithm.as_deref().map(str::trim) {
                    None => AssertionAlgorithm::Ps256,
                    Some(name) if name.eq_ignore_ascii_case("PS256") => AssertionAlgorithm::Ps256,
                    Some(name) if name.eq_ignore_ascii_case("RS256") => AssertionAlgorithm::Rs256,
                    Some(other) => {
                        return Err(self.error(
                            &format!("{key}.algorithm"),
                            format!("{other:?} is not \"PS256\" (x5t#S256, the default) or \"RS256\" (x5t)"),
                        ));
                    }
                };
                let send_certificate_chain = match send_certificate_chain {
                    Some(send) => send,
                    None if from_env => self.env_flag("AZURE_CLIENT_SEND_CERTIFICATE_CHAIN"),
                    None => false,
                };
                Ok(CredentialConfig::ClientCertificate(CertificateConfig {
                    certificate_file,
                    private_key_file,
                    password,
                    password_file,
                    algorithm,
                    send_certificate_chain,
                }))
            }
            raw::RawCredential::ClientAssertion { file, command, timeout_secs } => {
                let source = match (file, command) {
                    (Some(_), Some(_)) => {
                        return Err(self.error(key, "client_assertion: set file or command, not both"));
                    }
                    (Some(file), None) => AssertionSource::File { file },
                    (None, Some(command)) => {
                        if command.first().is_none_or(|program| program.trim().is_empty()) {
                            return Err(self.error(
                                &format!("{key}.command"),
                                "needs a program, such as [\"/usr/local/bin/get-token\", \"--audience\", \"api://AzureADTokenExchange\"]",
                            ));
                        }
                        let timeout_secs = timeout_secs.unwrap_or(10);
                        if timeout_secs == 0 {
                            return Err(self.error(&format!("{key}.timeout_secs"), "must be at least 1"));
                        }
                        AssertionSource::Command { command, timeout_secs }
                    }
                    (None, None) => {
                        return Err(self.error(key, "client_assertion: set file (read for every exchange) or command"));
                    }
                };
                Ok(CredentialConfig::ClientAssertion { source })
            }
            raw::RawCredential::AzurePipelines {
                service_connection_id,
                oidc_request_uri,
                system_access_token,
                system_access_token_file,
            } => {
                let service_connection_id =
                    service_connection_id.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).ok_or_else(|| {
                        self.error(
                            &format!("{key}.service_connection_id"),
                            "azure_pipelines: set the service connection id (the resourceId of the service \
                             connection's page)",
                        )
                    })?;
                let oidc_request_uri = match oidc_request_uri {
                    Some(uri) => Some(uri),
                    None => self.env("SYSTEM_OIDCREQUESTURI").map(str::to_owned),
                };
                let token = match (system_access_token, system_access_token_file) {
                    (Some(_), Some(_)) => {
                        return Err(self.error(
                            key,
                            "azure_pipelines: set system_access_token or system_access_token_file, not both",
                        ));
                    }
                    (Some(value), None) => Some(self.non_empty_secret(&format!("{key}.system_access_token"), value)?),
                    (None, Some(path)) => Some(self.secret_file(&format!("{key}.system_access_token_file"), &path)?),
                    (None, None) => self.env("SYSTEM_ACCESSTOKEN").map(Secret::new),
                };
                // Outside a pipeline job the link is skipped, so one configuration serves CI
                // and a laptop (`[azure_pipelines, azure_cli]`).
                let (Some(oidc_request_uri), Some(system_access_token)) = (oidc_request_uri, token) else {
                    return Ok(CredentialConfig::NotConfigured {
                        credential: CredentialKind::AzurePipelines,
                        reason: "not in an Azure Pipelines job: SYSTEM_OIDCREQUESTURI (or oidc_request_uri) and \
                                 SYSTEM_ACCESSTOKEN (or system_access_token_file; map it with \
                                 env: SYSTEM_ACCESSTOKEN: $(System.AccessToken)) are both needed"
                            .to_owned(),
                    });
                };
                let url = Url::parse(oidc_request_uri.trim()).map_err(|e| {
                    self.error(&format!("{key}.oidc_request_uri"), format!("{oidc_request_uri:?} is not a URL: {e}"))
                })?;
                if url.scheme() != "https" && !(url.scheme() == "http" && super::is_loopback_host(&url)) {
                    return Err(self.error(&format!("{key}.oidc_request_uri"), "must use https"));
                }
                Ok(CredentialConfig::AzurePipelines(PipelinesConfig {
                    service_connection_id,
                    oidc_request_uri: url.to_string(),
                    system_access_token,
                }))
            }
            raw::RawCredential::ManagedIdentity {
                endpoint,
                identity_header,
                identity_header_file,
                client_id,
                object_id,
                resource_id,
                gone_retry_secs,
                retry_base_ms,
                max_retries,
            } => {
                let selectors = [&client_id, &object_id, &resource_id].iter().filter(|s| s.is_some()).count();
                if selectors > 1 {
                    return Err(
                        self.error(key, "managed_identity: set at most one of client_id, object_id, resource_id")
                    );
                }
                let header = match (identity_header, identity_header_file) {
                    (Some(_), Some(_)) => {
                        return Err(
                            self.error(key, "managed_identity: set identity_header or identity_header_file, not both")
                        );
                    }
                    (Some(value), None) => Some(self.non_empty_secret(&format!("{key}.identity_header"), value)?),
                    (None, Some(path)) => Some(self.secret_file(&format!("{key}.identity_header_file"), &path)?),
                    (None, None) => None,
                };
                let mut config = match endpoint {
                    Some(endpoint) => {
                        let flavour = if header.is_some() {
                            ManagedIdentityFlavour::AppService
                        } else {
                            ManagedIdentityFlavour::Imds
                        };
                        let endpoint = self.endpoint(&format!("{key}.endpoint"), &endpoint)?;
                        self.managed_identity("configuration", endpoint, flavour, header)
                    }
                    None if header.is_some() => {
                        return Err(self.error(key, "managed_identity: identity_header needs an endpoint"));
                    }
                    None => match self.managed_identity_from_env(None) {
                        CredentialConfig::ManagedIdentity(config) => config,
                        not_configured => return Ok(not_configured),
                    },
                };
                if let Some(reason) = self.calls_itself(&config.endpoint) {
                    return Err(self.error(key, reason));
                }
                if selectors > 0 {
                    config.client_id = client_id;
                    config.object_id = object_id;
                    config.resource_id = resource_id;
                }
                config.gone_retry_secs = gone_retry_secs.unwrap_or(config.gone_retry_secs);
                config.retry_base_ms = retry_base_ms.unwrap_or(config.retry_base_ms);
                config.max_retries = max_retries.unwrap_or(config.max_retries);
                Ok(CredentialConfig::ManagedIdentity(config))
            }
            raw::RawCredential::AzureCli { timeout_secs } => {
                Ok(CredentialConfig::AzureCli(self.developer_tool(key, timeout_secs)?))
            }
            raw::RawCredential::AzureDeveloperCli { timeout_secs } => {
                Ok(CredentialConfig::AzureDeveloperCli(self.developer_tool(key, timeout_secs)?))
            }
            raw::RawCredential::AzurePowershell { timeout_secs } => {
                Ok(CredentialConfig::AzurePowershell(self.developer_tool(key, timeout_secs)?))
            }
            raw::RawCredential::Environment {} => Ok(self.environment(client_id)),
            raw::RawCredential::User { authentication_record } => {
                Ok(CredentialConfig::User(self.user_credential(key, authentication_record)?))
            }
        }
    }

    /// A developer tool's settings: its deadline (default 10 s, as the Azure SDKs' process
    /// timeout) and the `PATH` it is looked up on.
    fn developer_tool(&self, key: &str, timeout_secs: Option<u64>) -> Result<AzureCliConfig, ConfigError> {
        let timeout_secs = timeout_secs.unwrap_or(10);
        if timeout_secs == 0 {
            return Err(self.error(&format!("{key}.timeout_secs"), "must be at least 1"));
        }
        Ok(AzureCliConfig { timeout_secs, search_path: self.search_path() })
    }

    /// DefaultAzureCredential's chain for an identity without `credentials`: the service links,
    /// then the developer tools in the SDKs' order (Azure CLI, Azure PowerShell, Azure
    /// Developer CLI).
    pub(super) fn default_chain(&self, client_id: &str, tenant: Option<&str>) -> Vec<CredentialConfig> {
        let needs_tenant = |credential: CredentialKind| CredentialConfig::NotConfigured {
            credential,
            reason: "no tenant: set tenant_id on the identity or AZURE_TENANT_ID".to_owned(),
        };
        let environment =
            if tenant.is_some() { self.environment(client_id) } else { needs_tenant(CredentialKind::Environment) };
        let workload_identity = match (self.env("AZURE_FEDERATED_TOKEN_FILE"), tenant) {
            (Some(file), Some(_)) => CredentialConfig::WorkloadIdentity { token_file: PathBuf::from(file) },
            (Some(_), None) => needs_tenant(CredentialKind::WorkloadIdentity),
            (None, _) => CredentialConfig::NotConfigured {
                credential: CredentialKind::WorkloadIdentity,
                reason: "AZURE_FEDERATED_TOKEN_FILE is not set".to_owned(),
            },
        };
        // As DefaultAzureCredential does, AZURE_CLIENT_ID selects the upstream identity.
        let managed_identity = self.managed_identity_from_env(self.env("AZURE_CLIENT_ID").map(str::to_owned));
        let tool = || AzureCliConfig { timeout_secs: 10, search_path: self.search_path() };
        vec![
            environment,
            workload_identity,
            managed_identity,
            CredentialConfig::AzureCli(tool()),
            CredentialConfig::AzurePowershell(tool()),
            CredentialConfig::AzureDeveloperCli(tool()),
        ]
    }

    /// EnvironmentCredential's detection: a secret, else a certificate, for `AZURE_CLIENT_ID`.
    fn environment(&self, client_id: &str) -> CredentialConfig {
        let not_configured =
            |reason: String| CredentialConfig::NotConfigured { credential: CredentialKind::Environment, reason };
        let Some(env_client_id) = self.env("AZURE_CLIENT_ID") else {
            return not_configured("AZURE_CLIENT_ID is not set".to_owned());
        };
        // The secret or certificate belongs to AZURE_CLIENT_ID's application; presenting it
        // for another identity would only earn an AADSTS7000215 that stops the chain.
        if !env_client_id.eq_ignore_ascii_case(client_id) {
            return not_configured(format!(
                "AZURE_CLIENT_ID is {env_client_id}, another application than this identity's {client_id}"
            ));
        }
        if let Some(secret) = self.env("AZURE_CLIENT_SECRET") {
            return CredentialConfig::Environment {
                source: EnvironmentSource::ClientSecret { secret: Secret::new(secret) },
            };
        }
        if let Some(path) = self.env("AZURE_CLIENT_CERTIFICATE_PATH") {
            return CredentialConfig::Environment {
                source: EnvironmentSource::ClientCertificate(CertificateConfig {
                    certificate_file: PathBuf::from(path),
                    private_key_file: None,
                    password: self.env("AZURE_CLIENT_CERTIFICATE_PASSWORD").map(Secret::new),
                    password_file: None,
                    algorithm: AssertionAlgorithm::Ps256,
                    send_certificate_chain: self.env_flag("AZURE_CLIENT_SEND_CERTIFICATE_CHAIN"),
                }),
            };
        }
        not_configured("neither AZURE_CLIENT_SECRET nor AZURE_CLIENT_CERTIFICATE_PATH is set".to_owned())
    }

    /// The managed identity the Azure SDKs would use here: `IDENTITY_ENDPOINT` with
    /// `IDENTITY_HEADER` (App Service style), else IMDS (at `AZURE_POD_IDENTITY_AUTHORITY_HOST`
    /// when set). Other hosting environments (Arc, Service Fabric, Cloud Shell) are not
    /// supported and say so.
    fn managed_identity_from_env(&self, client_id: Option<String>) -> CredentialConfig {
        let not_configured =
            |reason: String| CredentialConfig::NotConfigured { credential: CredentialKind::ManagedIdentity, reason };
        let mut config = match (self.env("IDENTITY_ENDPOINT"), self.env("IDENTITY_HEADER")) {
            (Some(endpoint), Some(header)) => self.managed_identity(
                "IDENTITY_ENDPOINT",
                endpoint.trim().to_owned(),
                ManagedIdentityFlavour::AppService,
                Some(Secret::new(header.trim())),
            ),
            (Some(_), None) => {
                return not_configured(
                    "IDENTITY_ENDPOINT is set without IDENTITY_HEADER (Azure Arc and Service Fabric are not \
                     supported upstream)"
                        .to_owned(),
                );
            }
            (None, _) => match self.env("AZURE_POD_IDENTITY_AUTHORITY_HOST") {
                Some(host) => self.managed_identity(
                    "AZURE_POD_IDENTITY_AUTHORITY_HOST",
                    format!("{}/metadata/identity/oauth2/token", host.trim().trim_end_matches('/')),
                    ManagedIdentityFlavour::Imds,
                    None,
                ),
                None => self.managed_identity(
                    "the IMDS address",
                    IMDS_ENDPOINT.to_owned(),
                    ManagedIdentityFlavour::Imds,
                    None,
                ),
            },
        };
        if Url::parse(&config.endpoint).is_err() {
            return not_configured(format!("{} {:?} is not a URL", config.origin, config.endpoint));
        }
        if let Some(reason) = self.calls_itself(&config.endpoint) {
            return not_configured(format!("{} {reason}", config.origin));
        }
        config.client_id = client_id;
        CredentialConfig::ManagedIdentity(config)
    }

    fn managed_identity(
        &self,
        origin: &str,
        endpoint: String,
        flavour: ManagedIdentityFlavour,
        identity_header: Option<Secret>,
    ) -> ManagedIdentityConfig {
        ManagedIdentityConfig {
            origin: origin.to_owned(),
            endpoint,
            flavour,
            identity_header,
            client_id: None,
            object_id: None,
            resource_id: None,
            gone_retry_secs: 70,
            retry_base_ms: 1000,
            max_retries: 5,
        }
    }

    /// An http(s) URL without a fragment.
    fn endpoint(&self, key: &str, endpoint: &str) -> Result<String, ConfigError> {
        let url =
            Url::parse(endpoint.trim()).map_err(|e| self.error(key, format!("{endpoint:?} is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.fragment().is_some() {
            return Err(self.error(key, format!("{endpoint} must be an http or https URL without a fragment")));
        }
        Ok(url.to_string())
    }

    /// Why `endpoint` would reach this tokenrelay itself (its own listener, by any spelling
    /// of a local address or a name resolving to one; `super::self_call`), which would make
    /// every token request ask itself again.
    fn calls_itself(&self, endpoint: &str) -> Option<String> {
        let listen: SocketAddr = self.figment.extract_inner::<String>("server.listen").ok()?.trim().parse().ok()?;
        let url = Url::parse(endpoint).ok()?;
        super::self_call::reaches_listener(&url, listen)
            .then(|| format!("points at tokenrelay's own listener {listen}; it would ask itself for tokens (a loop)"))
    }

    /// Additional tenants an identity may get tokens for (`token --tenant`).
    pub(super) fn allowed_tenants(&self, key: &str, tenants: Vec<String>) -> Result<Vec<Id>, ConfigError> {
        tenants
            .into_iter()
            .map(|tenant| {
                let tenant = Id::from(tenant.trim());
                if tenant == "*" {
                    return Ok(tenant);
                }
                super::validate_tenant(&tenant).map(|()| tenant).map_err(|problem| self.error(key, problem))
            })
            .collect()
    }

    fn search_path(&self) -> Option<String> {
        self.azure_env.get("PATH").cloned()
    }

    /// A boolean variable as the Azure SDKs read it (`true` or `1`).
    fn env_flag(&self, name: &str) -> bool {
        self.env(name).is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
    }
}

#[cfg(test)]
#[path = "credentials_tests.rs"]
mod tests;
