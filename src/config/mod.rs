//! Configuration: figment layering, Azure environment detection and validation into a
//! typed [`Config`]. All environment access of the program happens here.
//!
//! Parse, don't validate: after `load`, addresses are `SocketAddr`s, secrets are [`Secret`]s
//! read from their files, and every identity has a credential it can run. A bad value fails
//! with a [`ConfigError`] naming the key, the layer that set it and what is wrong; `load`
//! reports every such problem at once ([`ConfigErrors`], see `report`).

mod credentials;
mod kind;
mod persistence;
mod raw;
mod record;
mod report;
mod self_call;
mod shared;
mod sources;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use figment::Figment;
use reqwest::Url;
use serde::Serialize;

pub use credentials::{
    AssertionAlgorithm, AssertionSource, AzureCliConfig, CertificateConfig, EnvironmentSource, IMDS_ENDPOINT,
    ManagedIdentityConfig, ManagedIdentityFlavour, PipelinesConfig, cloud_authority_host,
};
pub use kind::{CredentialKind, UnknownKind};
pub use persistence::{CacheKey, PersistenceBackend, PersistenceConfig, RawPersistence, UserConfig};
pub use raw::RawConfig;
pub use record::AuthenticationRecord;
pub use report::ConfigErrors;
pub use shared::{RawShared, SharedConfig};
pub use sources::{
    CacheFlags, DevFlags, FlagOverrides, IgnoredVariable, PersistenceFlags, ServerFlags, ignored_variables,
    log_ignored_variables,
};

use crate::id::Id;
use crate::secret::{HeaderSecret, Secret};

/// Tenant id of the development issuer.
pub const DEV_TENANT_ID: &str = "00000000-0000-0000-0000-000000000000";
/// Client id of the development issuer's default identity.
pub const DEV_CLIENT_ID: &str = "d0000000-0000-0000-0000-000000000001";
/// The public cloud's authority.
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";
/// Path of the IMDS flavour (fixed: clients hard-code it).
pub const IMDS_PATH: &str = "/metadata/identity/oauth2/token";
/// Upper bound of the connection timeouts (`server.*_timeout_secs`).
const MAX_CONNECTION_TIMEOUT_SECS: u64 = 86_400;

/// A configuration problem: which key, set where, and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {key} (from {origin}): {problem}")]
pub struct ConfigError {
    /// Dotted key, such as `server.listen` or `identities[0].tenant_id`.
    pub key: String,
    /// The layer that set it (file, variable, flag) or `configuration` when unknown.
    pub origin: String,
    /// What is wrong and how to fix it. Never contains a secret value.
    pub problem: String,
}

/// The validated configuration.
#[derive(Debug, Serialize)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub cache: CacheConfig,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dev: Option<DevConfig>,
    pub log: LogConfig,
    pub telemetry: TelemetryConfig,
    /// Where the identities came from, for `check` and the start-up log.
    pub identity_source: IdentitySource,
    pub identities: Vec<IdentityConfig>,
    /// The APIs the user-token endpoints obtain tokens for.
    pub downstream_apis: Vec<DownstreamApiConfig>,
}

#[derive(Debug, Serialize)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// A second listener for `/healthz`, `/readyz` and `/metrics` only (probes, scrapes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<SocketAddr>,
    pub imds: bool,
    pub app_service: bool,
    pub app_service_path: String,
    /// `None` only when the App Service flavour is off, or under `--dev` (generated then).
    pub identity_header: Option<Secret>,
    pub imds_probe: ProbeMode,
    pub shutdown_grace_secs: u64,
    pub request_timeout_secs: u64,
    pub header_read_timeout_secs: u64,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_uri_bytes: usize,
    /// Names and addresses, besides the built-in ones, that a token request's `Host` may
    /// name (the DNS rebinding guard, `server::host`): names lowercase without a trailing
    /// dot, addresses in their canonical form (IPv4-mapped IPv6 as IPv4, IPv6 without
    /// brackets).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
    /// Longest a response write may wait without progress before the connection is closed.
    pub write_timeout_secs: u64,
    /// Longest a connection may wait for its next request (after the previous response, or
    /// after being accepted) before it is closed.
    pub keep_alive_timeout_secs: u64,
    /// Connections the admin listener serves at once, separately from `max_connections`.
    pub admin_max_connections: usize,
    /// Whether the user-token endpoints require `X-IDENTITY-HEADER` (otherwise it is checked
    /// only when sent).
    pub user_endpoints_require_identity_header: bool,
}

/// The shortest App Service header secret accepted. Anything that can reach the listener
/// may guess at it, as fast as the server answers (some 100,000 guesses a second on one
/// core): 16 random bytes put it out of reach, a word or a short string does not.
pub const MIN_IDENTITY_HEADER_BYTES: usize = 16;

/// How the IMDS flavour answers a request without `Metadata: true` (docs/protocols.md#sdk-probes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeMode {
    /// Answer 400 as real IMDS does, never touching the upstream.
    Strict,
    /// Serve a token when `resource` is present (what .NET's probe needs behind
    /// `AZURE_POD_IDENTITY_AUTHORITY_HOST`); weakens the SSRF guard of the header.
    Compatible,
}

#[derive(Debug, Serialize)]
pub struct UpstreamConfig {
    pub authority_host: String,
    pub timeout_secs: u64,
    pub max_retries: u32,
    pub retry_base_ms: u64,
    pub retry_max_delay_secs: u64,
    pub retry_budget_secs: u64,
    pub max_concurrent: usize,
}

#[derive(Debug, Serialize)]
pub struct CacheConfig {
    pub max_entries: u64,
    pub serve_margin_secs: u64,
    pub refresh_backoff_secs: u64,
    pub refresh_backoff_max_secs: u64,
    pub negative_ttl_secs: u64,
    /// Resources an identity may fetch for the first time (cache misses that create a new
    /// key) per minute, after a burst of `new_keys_burst`.
    pub new_keys_per_minute: u32,
    pub new_keys_burst: u32,
    /// `[cache.persistence]`; `None` when off (the default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistence: Option<PersistenceConfig>,
    /// `[cache.shared]`; `None` when off (the default: no `url`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared: Option<SharedConfig>,
}

#[derive(Debug, Serialize)]
pub struct DevConfig {
    pub tenant_id: String,
    pub token_lifetime_secs: u64,
}

#[derive(Debug, Serialize)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
    /// Which token requests get a log line of their own (`log.requests`).
    pub requests: RequestLog,
}

/// Which token requests are logged, one line each (`log.requests`). Upstream exchanges and
/// state changes are logged whatever this says; cache hits are always counted in metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestLog {
    /// Every request, served or refused: an access log.
    All,
    /// Refused requests only (4xx and 5xx, with the reason). A healthy pod whose SDKs cache
    /// their tokens then logs almost nothing per request.
    #[default]
    Errors,
    /// No request lines at all; metrics still count every request.
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Text on a terminal, JSON otherwise.
    Auto,
    Text,
    Json,
}

/// Metrics and traces.
#[derive(Debug, Serialize)]
pub struct TelemetryConfig {
    /// Serve `GET /metrics`.
    pub metrics: bool,
    /// Export traces over OTLP/HTTP; `None` exports nothing and creates no spans.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traces: Option<TraceExport>,
}

/// Where traces go.
#[derive(Debug, Serialize)]
pub struct TraceExport {
    /// A base URL (`/v1/traces` is appended) from `telemetry.otlp_endpoint`; `None` leaves the
    /// endpoint to the standard `OTEL_EXPORTER_OTLP_*` variables, which the exporter reads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    pub service_name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentitySource {
    /// `[[identities]]` in the file or environment.
    Configuration,
    /// Derived from `AZURE_CLIENT_ID`, `AZURE_TENANT_ID` and friends.
    AzureEnvironment,
    /// The development issuer's identities.
    Dev,
}

#[derive(Debug, Serialize)]
pub struct IdentityConfig {
    pub name: String,
    pub client_id: Id,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<Id>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_id: Option<Id>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<Id>,
    pub default: bool,
    pub prefetch: Vec<String>,
    /// Tenants besides `tenant_id` that `tokenrelay token --tenant` may ask for (`*`: any).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub additionally_allowed_tenants: Vec<Id>,
    /// Tried in order; the first that yields a token wins.
    pub credentials: Vec<CredentialConfig>,
    /// Which user tokens it accepts, when it accepts any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbound: Option<InboundConfig>,
}

/// An identity's `inbound` section, validated.
#[derive(Clone, Debug, Serialize)]
pub struct InboundConfig {
    /// Accepted `aud` values (default: the client id and `api://{client_id}`).
    pub audiences: Vec<String>,
    /// Accepted tenants; empty means any (`"*"`).
    pub tenants: Vec<Id>,
    /// One of these must be in `scp`, or one of `roles` in `roles`, when either is set.
    pub scopes: Vec<String>,
    pub roles: Vec<String>,
    pub clock_skew_secs: u64,
}

/// One `[[downstream_apis]]` entry, validated.
#[derive(Clone, Debug, Serialize)]
pub struct DownstreamApiConfig {
    pub name: String,
    pub scopes: Vec<String>,
    /// The identity whose credential authenticates the exchange.
    pub identity: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
}

/// Default and largest `inbound.clock_skew_secs`.
pub const DEFAULT_CLOCK_SKEW_SECS: u64 = 300;
pub const MAX_CLOCK_SKEW_SECS: u64 = 900;

#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CredentialConfig {
    ClientSecret {
        /// The secret as read while loading the configuration.
        secret: Secret,
        /// Where it came from, when a file: the credential reads it again when it changes.
        #[serde(skip_serializing_if = "Option::is_none")]
        secret_file: Option<PathBuf>,
    },
    WorkloadIdentity {
        token_file: PathBuf,
    },
    ClientCertificate(CertificateConfig),
    ClientAssertion {
        source: AssertionSource,
    },
    AzurePipelines(PipelinesConfig),
    ManagedIdentity(ManagedIdentityConfig),
    AzureCli(AzureCliConfig),
    /// The developer's Azure Developer CLI (`azd auth token`).
    AzureDeveloperCli(AzureCliConfig),
    /// The developer's Azure PowerShell (`Get-AzAccessToken`).
    AzurePowershell(AzureCliConfig),
    /// What the Azure SDKs' EnvironmentCredential found in the `AZURE_*` variables.
    Environment {
        source: EnvironmentSource,
    },
    /// A link whose inputs are absent here (a default-chain link without its variables, a
    /// pipelines link outside a job); the chain skips it and `check` shows the reason.
    NotConfigured {
        credential: CredentialKind,
        reason: String,
    },
    /// A user signed in with `tokenrelay login`: the refresh-token grant, with the refresh
    /// token from the persistent cache.
    User(UserConfig),
    /// Tokens signed by the embedded development issuer.
    Dev,
}

impl CredentialConfig {
    /// The `kind` name used in files and logs.
    pub fn kind(&self) -> CredentialKind {
        match self {
            Self::ClientSecret { .. } => CredentialKind::ClientSecret,
            Self::WorkloadIdentity { .. } => CredentialKind::WorkloadIdentity,
            Self::ClientCertificate(_) => CredentialKind::ClientCertificate,
            Self::ClientAssertion { .. } => CredentialKind::ClientAssertion,
            Self::AzurePipelines(_) => CredentialKind::AzurePipelines,
            Self::ManagedIdentity(_) => CredentialKind::ManagedIdentity,
            Self::AzureCli(_) => CredentialKind::AzureCli,
            Self::AzureDeveloperCli(_) => CredentialKind::AzureDeveloperCli,
            Self::AzurePowershell(_) => CredentialKind::AzurePowershell,
            Self::Environment { .. } => CredentialKind::Environment,
            Self::NotConfigured { credential, .. } => *credential,
            Self::User(_) => CredentialKind::User,
            Self::Dev => CredentialKind::Dev,
        }
    }

    /// Whether it talks to Entra as the identity's application, and so needs its tenant.
    pub fn needs_tenant(&self) -> bool {
        matches!(
            self,
            Self::ClientSecret { .. }
                | Self::WorkloadIdentity { .. }
                | Self::ClientCertificate(_)
                | Self::ClientAssertion { .. }
                | Self::AzurePipelines(_)
                | Self::Environment { .. }
        )
    }
}

/// Inputs to [`load`].
#[derive(Debug, Default)]
pub struct LoadOptions {
    /// `--config` or `TOKENRELAY_CONFIG`.
    pub file: Option<PathBuf>,
    /// Command-line values.
    pub flags: FlagOverrides,
}

/// Variables besides `AZURE_*` that credentials read: the App Service style managed identity
/// endpoint, the Azure Pipelines job's OIDC inputs, and `PATH` (where `check` looks for `az`).
const OTHER_VARIABLES: [&str; 5] =
    ["IDENTITY_ENDPOINT", "IDENTITY_HEADER", "SYSTEM_OIDCREQUESTURI", "SYSTEM_ACCESSTOKEN", "PATH"];

/// Loads the configuration the program runs with: the file, `TOKENRELAY_*` and the standard
/// `AZURE_*` variables of this process, and the flags. The error lists every problem found.
pub fn load(options: &LoadOptions) -> Result<Config, ConfigErrors> {
    if let Some(path) = &options.file
        && !path.is_file()
    {
        return Err(ConfigError {
            key: "--config".into(),
            origin: "command line or TOKENRELAY_CONFIG".into(),
            problem: format!("configuration file {} does not exist or is not a file", path.display()),
        }
        .into());
    }
    let figment = sources::figment(options.file.as_deref(), &options.flags);
    // The standard variables we interpret: the Azure SDKs' identity settings and the
    // OpenTelemetry switches that decide whether traces are exported at all.
    let mut azure_env: HashMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("AZURE_") || k.starts_with("OTEL_") || OTHER_VARIABLES.contains(&k.as_str()))
        .collect();
    azure_env.extend(persistence::environment(&figment));
    Config::from_figment_all(&figment, &azure_env)
}

impl Config {
    /// Extracts and validates a configuration from any figment; `azure_env` holds the
    /// standard `AZURE_*` variables. This is the seam tests use; the error is the first
    /// problem of [`Config::from_figment_all`].
    pub fn from_figment(figment: &Figment, azure_env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        Self::from_figment_all(figment, azure_env).map_err(ConfigErrors::into_first)
    }

    /// Like [`Config::from_figment`], reporting every problem: each unknown key and mistyped
    /// value, and the first failed check of each section and each identity.
    pub fn from_figment_all(figment: &Figment, azure_env: &HashMap<String, String>) -> Result<Self, ConfigErrors> {
        let extracted = report::extract(figment)?;
        let validated = Validator { figment, azure_env }.validate(extracted.raw, &extracted.disturbed);
        let mut problems = extracted.problems;
        match validated {
            Ok(config) if problems.is_empty() => Ok(config),
            Ok(_) => Err(ConfigErrors::new(problems)),
            Err(more) => {
                problems.extend(more);
                Err(ConfigErrors::new(problems))
            }
        }
    }

    /// Whether the embedded development issuer is on.
    pub fn is_dev(&self) -> bool {
        self.dev.is_some()
    }
}

/// Turns a [`RawConfig`] into a [`Config`], naming sources in its errors.
struct Validator<'a> {
    figment: &'a Figment,
    azure_env: &'a HashMap<String, String>,
}

impl Validator<'_> {
    fn error(&self, key: &str, problem: impl Into<String>) -> ConfigError {
        ConfigError { key: key.to_owned(), origin: sources::source_of(self.figment, key), problem: problem.into() }
    }

    fn env(&self, name: &str) -> Option<&str> {
        self.azure_env.get(name).map(String::as_str).filter(|v| !v.trim().is_empty())
    }

    /// Validates every section that `disturbed` does not exclude, each independently: the
    /// error lists the first problem of each section and of each identity.
    fn validate(&self, raw: RawConfig, disturbed: &report::Disturbed) -> Result<Config, Vec<ConfigError>> {
        /// The section's value, or `None` when it is skipped or its check failed (recorded).
        fn checked<T>(
            problems: &mut Vec<ConfigError>,
            skip: bool,
            check: impl FnOnce() -> Result<T, Vec<ConfigError>>,
        ) -> Option<T> {
            if skip {
                return None;
            }
            check().map_err(|mut more| problems.append(&mut more)).ok()
        }
        let one = |problem| vec![problem];
        let mut problems = Vec::new();
        let p = &mut problems;
        let dev = raw.dev.enabled;
        let identities = checked(p, disturbed.contains("identities"), || self.identities(raw.identities, &raw.dev));
        let server = checked(p, disturbed.contains("server"), || self.server(raw.server, dev).map_err(one));
        let upstream = checked(p, disturbed.contains("upstream"), || self.upstream(raw.upstream).map_err(one));
        let cache = checked(p, disturbed.contains("cache"), || self.cache(raw.cache).map_err(one));
        let log = checked(p, disturbed.contains("log"), || self.log(raw.log));
        let telemetry = checked(p, disturbed.contains("telemetry"), || self.telemetry(raw.telemetry).map_err(one));
        let downstream_apis = match &identities {
            Some((_, identities)) if !disturbed.contains("downstream_apis") => {
                checked(p, false, || self.downstream_apis(raw.downstream_apis, identities, dev).map_err(one))
            }
            _ => None,
        };
        let dev =
            dev.then_some(DevConfig { tenant_id: raw.dev.tenant_id, token_lifetime_secs: raw.dev.token_lifetime_secs });
        if !disturbed.contains("dev") && dev.as_ref().is_some_and(|dev| dev.token_lifetime_secs < 300) {
            problems.push(self.error("dev.token_lifetime_secs", "must be at least 300 seconds"));
        }
        match (server, upstream, cache, log, telemetry, identities) {
            (
                Some(server),
                Some(upstream),
                Some(cache),
                Some(log),
                Some(telemetry),
                Some((identity_source, identities)),
            ) if problems.is_empty() => Ok(Config {
                server,
                upstream,
                cache,
                dev,
                log,
                telemetry,
                identity_source,
                identities,
                downstream_apis: downstream_apis.unwrap_or_default(),
            }),
            _ => Err(problems),
        }
    }

    /// The identities: the first problem of each configured one, or of the whole list.
    fn identities(
        &self,
        raw: Vec<raw::RawIdentity>,
        dev: &raw::RawDev,
    ) -> Result<(IdentitySource, Vec<IdentityConfig>), Vec<ConfigError>> {
        let (source, identities) = if dev.enabled {
            (IdentitySource::Dev, self.dev_identities(raw, dev).map_err(|e| vec![e])?)
        } else if raw.is_empty() {
            (IdentitySource::AzureEnvironment, vec![self.identity_from_azure_env().map_err(|e| vec![e])?])
        } else {
            let (identities, problems): (Vec<_>, Vec<_>) =
                raw.into_iter().enumerate().map(|(i, identity)| self.identity(i, identity)).partition(Result::is_ok);
            if !problems.is_empty() {
                return Err(problems.into_iter().filter_map(Result::err).collect());
            }
            (IdentitySource::Configuration, identities.into_iter().filter_map(Result::ok).collect())
        };
        Ok((source, self.check_identities(identities).map_err(|e| vec![e])?))
    }

    fn server(&self, raw: raw::RawServer, dev: bool) -> Result<ServerConfig, ConfigError> {
        let listen: SocketAddr = raw.listen.trim().parse().map_err(|_| {
            self.error("server.listen", format!("{:?} is not an address:port such as 127.0.0.1:8080", raw.listen))
        })?;
        let admin_listen = match raw.admin_listen.as_deref().map(str::trim).filter(|a| !a.is_empty()) {
            Some(text) => {
                let admin: SocketAddr = text.parse().map_err(|_| {
                    self.error("server.admin_listen", format!("{text:?} is not an address:port such as 0.0.0.0:8081"))
                })?;
                if admin == listen && admin.port() != 0 {
                    return Err(self.error("server.admin_listen", "must differ from server.listen"));
                }
                Some(admin)
            }
            None => None,
        };
        let identity_header = match (raw.identity_header, raw.identity_header_file) {
            (Some(_), Some(_)) => {
                return Err(
                    self.error("server.identity_header", "set identity_header or identity_header_file, not both")
                );
            }
            (Some(value), None) => Some(self.long_identity_header(
                "server.identity_header",
                self.non_empty_secret("server.identity_header", value)?,
            )?),
            (None, Some(path)) => Some(self.long_identity_header(
                "server.identity_header_file",
                self.secret_file("server.identity_header_file", &path)?,
            )?),
            (None, None) => None,
        };
        if raw.app_service && identity_header.is_none() && !dev {
            return Err(self.error(
                "server.identity_header",
                "the App Service endpoint needs a secret for X-IDENTITY-HEADER: set server.identity_header_file \
                 (or identity_header, or --identity-header), or turn the flavour off with server.app_service = false",
            ));
        }
        let path = raw.app_service_path.trim().to_owned();
        if !path.starts_with('/') || path.len() < 2 || path.contains(['?', '#', ' ']) {
            return Err(
                self.error("server.app_service_path", format!("{path:?} must be an absolute path such as /msi/token"))
            );
        }
        let reserved = [
            IMDS_PATH,
            "/healthz",
            "/readyz",
            "/.well-known/openid-configuration",
            "/.well-known/jwks.json",
            "/metrics",
        ];
        if reserved.contains(&path.trim_end_matches('/')) {
            return Err(self.error("server.app_service_path", format!("{path} is already used by another endpoint")));
        }
        if !raw.imds && !raw.app_service {
            return Err(self.error(
                "server.imds",
                "both flavours are off (server.imds and server.app_service); nothing would be served",
            ));
        }
        let imds_probe = match raw.imds_probe.as_str() {
            "strict" => ProbeMode::Strict,
            "compatible" => ProbeMode::Compatible,
            other => {
                return Err(
                    self.error("server.imds_probe", format!("{other:?} is not one of \"strict\", \"compatible\""))
                );
            }
        };
        for (key, value) in [
            ("server.request_timeout_secs", raw.request_timeout_secs as usize),
            ("server.header_read_timeout_secs", raw.header_read_timeout_secs as usize),
            ("server.max_connections", raw.max_connections),
            ("server.write_timeout_secs", raw.write_timeout_secs as usize),
            ("server.keep_alive_timeout_secs", raw.keep_alive_timeout_secs as usize),
            ("server.admin_max_connections", raw.admin_max_connections),
        ] {
            if value == 0 {
                return Err(self.error(key, "must be at least 1"));
            }
        }
        // Connection deadlines are instants computed by adding these to the clock, which
        // overflows (and panics) for absurd values; a day is far beyond any useful setting.
        for (key, value) in [
            ("server.header_read_timeout_secs", raw.header_read_timeout_secs),
            ("server.write_timeout_secs", raw.write_timeout_secs),
            ("server.keep_alive_timeout_secs", raw.keep_alive_timeout_secs),
        ] {
            if value > MAX_CONNECTION_TIMEOUT_SECS {
                return Err(self.error(key, format!("must be at most {MAX_CONNECTION_TIMEOUT_SECS} seconds (a day)")));
            }
        }
        if raw.max_header_bytes < 8192 {
            return Err(self.error("server.max_header_bytes", "must be at least 8192 (the HTTP library's minimum)"));
        }
        if raw.max_uri_bytes < 1024 {
            return Err(self.error("server.max_uri_bytes", "must be at least 1024"));
        }
        let user_endpoints_require_identity_header = match raw.user_endpoints_identity_header.as_str() {
            "optional" => false,
            "required" if identity_header.is_some() || dev => true,
            "required" => {
                return Err(self.error(
                    "server.user_endpoints_identity_header",
                    "\"required\" needs the secret it compares with: set server.identity_header_file (or identity_header)",
                ));
            }
            other => {
                return Err(self.error(
                    "server.user_endpoints_identity_header",
                    format!("{other:?} is not one of \"optional\", \"required\""),
                ));
            }
        };
        Ok(ServerConfig {
            listen,
            admin_listen,
            imds: raw.imds,
            app_service: raw.app_service,
            app_service_path: path,
            identity_header,
            imds_probe,
            shutdown_grace_secs: raw.shutdown_grace_secs,
            request_timeout_secs: raw.request_timeout_secs,
            header_read_timeout_secs: raw.header_read_timeout_secs,
            max_connections: raw.max_connections,
            max_header_bytes: raw.max_header_bytes,
            max_uri_bytes: raw.max_uri_bytes,
            allowed_hosts: self.allowed_hosts(raw.allowed_hosts)?,
            write_timeout_secs: raw.write_timeout_secs,
            keep_alive_timeout_secs: raw.keep_alive_timeout_secs,
            admin_max_connections: raw.admin_max_connections,
            user_endpoints_require_identity_header,
        })
    }

    /// An identity's `inbound` section. `tenant_id` is the identity's tenant, the default.
    fn inbound(
        &self,
        key: &str,
        raw: raw::RawInbound,
        client_id: &str,
        tenant_id: Option<&str>,
    ) -> Result<InboundConfig, ConfigError> {
        let clean = |items: Vec<String>| -> Vec<String> {
            items.into_iter().map(|i| i.trim().to_owned()).filter(|i| !i.is_empty()).collect()
        };
        let mut audiences = clean(raw.audiences);
        if audiences.is_empty() {
            audiences = vec![client_id.to_owned(), format!("api://{client_id}")];
        }
        let tenants = clean(raw.tenants);
        let tenants = if tenants.iter().any(|t| t == "*") {
            if tenants.len() > 1 {
                return Err(self.error(&format!("{key}.tenants"), "\"*\" (any tenant) stands alone"));
            }
            Vec::new()
        } else if tenants.is_empty() {
            let Some(tenant) = tenant_id else {
                return Err(self.error(
                    &format!("{key}.tenants"),
                    "the identity has no tenant_id: list the tenants whose users are accepted, or \"*\" for any",
                ));
            };
            vec![Id::from(tenant)]
        } else {
            for tenant in &tenants {
                validate_tenant(tenant).map_err(|problem| self.error(&format!("{key}.tenants"), problem))?;
            }
            tenants.into_iter().map(Id::from).collect()
        };
        let clock_skew_secs = raw.clock_skew_secs.unwrap_or(DEFAULT_CLOCK_SKEW_SECS);
        if clock_skew_secs > MAX_CLOCK_SKEW_SECS {
            return Err(
                self.error(&format!("{key}.clock_skew_secs"), format!("must be at most {MAX_CLOCK_SKEW_SECS} seconds"))
            );
        }
        Ok(InboundConfig { audiences, tenants, scopes: clean(raw.scopes), roles: clean(raw.roles), clock_skew_secs })
    }

    /// `[[downstream_apis]]`: unique names, scopes, an identity that exists. Under `--dev`
    /// without any, one named `graph` for `User.Read`, so the quick start has an API to call.
    fn downstream_apis(
        &self,
        raw: Vec<raw::RawDownstreamApi>,
        identities: &[IdentityConfig],
        dev: bool,
    ) -> Result<Vec<DownstreamApiConfig>, ConfigError> {
        let default_identity = identities.iter().find(|i| i.default).map(|i| i.name.clone());
        if raw.is_empty() && dev {
            return Ok(default_identity
                .map(|identity| DownstreamApiConfig {
                    name: "graph".into(),
                    scopes: vec![format!("{GRAPH_RESOURCE}/User.Read")],
                    identity,
                    base_url: Some(format!("{GRAPH_RESOURCE}/v1.0")),
                })
                .into_iter()
                .collect());
        }
        let mut apis: Vec<DownstreamApiConfig> = Vec::new();
        for (index, api) in raw.into_iter().enumerate() {
            let key = |field: &str| format!("downstream_apis.{index}.{field}");
            let name = api.name.trim().to_owned();
            let valid = !name.is_empty()
                && name.len() <= 64
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !valid {
                return Err(self.error(
                    &key("name"),
                    format!(
                        "{name:?} is not a name of 1 to 64 letters, digits, '-', '_' or '.' (it is a path segment)"
                    ),
                ));
            }
            if apis.iter().any(|a| a.name.eq_ignore_ascii_case(&name)) {
                return Err(self.error(&key("name"), format!("two downstream APIs are named {name:?}")));
            }
            let scopes: Vec<String> =
                api.scopes.into_iter().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
            if scopes.is_empty() {
                return Err(self.error(&key("scopes"), "every downstream API needs at least one scope"));
            }
            let identity = match api.identity.map(|i| i.trim().to_owned()) {
                Some(name) if identities.iter().any(|i| i.name == name) => name,
                Some(name) => return Err(self.error(&key("identity"), format!("no identity is named {name:?}"))),
                None => default_identity.clone().ok_or_else(|| {
                    self.error(&key("identity"), "no default identity: name the identity whose credential is used")
                })?,
            };
            if let Some(base_url) = &api.base_url {
                Url::parse(base_url)
                    .map_err(|e| self.error(&key("base_url"), format!("{base_url:?} is not a URL: {e}")))?;
            }
            apis.push(DownstreamApiConfig { name, scopes, identity, base_url: api.base_url });
        }
        Ok(apis)
    }

    /// The App Service header secret, refused when short enough to guess or longer than the
    /// fixed-length check holds. The message gives the length, never the value.
    fn long_identity_header(&self, key: &str, secret: Secret) -> Result<Secret, ConfigError> {
        let length = secret.expose().len();
        if length < MIN_IDENTITY_HEADER_BYTES {
            return Err(self.error(
                key,
                format!(
                    "the secret is {length} bytes long; it must be at least {MIN_IDENTITY_HEADER_BYTES} bytes, as \
                     anything that reaches the listener can guess at it (generate one with `openssl rand -hex 32`)"
                ),
            ));
        }
        if length > HeaderSecret::MAX_BYTES {
            return Err(self.error(
                key,
                format!("the secret is {length} bytes long; it must be at most {} bytes", HeaderSecret::MAX_BYTES),
            ));
        }
        Ok(secret)
    }

    /// `server.allowed_hosts`, normalised for the per-request comparison: a name lowercase
    /// without its trailing dot, an address in canonical form. A port is refused rather
    /// than dropped, so that nobody expects it to be compared.
    fn allowed_hosts(&self, raw: Vec<String>) -> Result<Vec<String>, ConfigError> {
        let key = "server.allowed_hosts";
        let mut hosts = Vec::with_capacity(raw.len());
        for entry in raw {
            let text = entry.trim();
            let unbracketed = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(text);
            let normalised = if let Ok(ip) = unbracketed.parse::<IpAddr>() {
                ip.to_canonical().to_string()
            } else {
                let name = text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase();
                let valid = !name.is_empty()
                    && name.len() <= 253
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
                if !valid {
                    return Err(self.error(
                        key,
                        format!(
                            "{entry:?} is not a host name or IP address; give names such as host.docker.internal \
                             without a scheme or port (ports are not compared)"
                        ),
                    ));
                }
                name
            };
            if !hosts.contains(&normalised) {
                hosts.push(normalised);
            }
        }
        Ok(hosts)
    }

    fn upstream(&self, raw: raw::RawUpstream) -> Result<UpstreamConfig, ConfigError> {
        let (key, host) = match (raw.authority_host, raw.cloud, self.env("AZURE_AUTHORITY_HOST")) {
            (Some(_), Some(_), _) => {
                return Err(self.error("upstream.cloud", "set upstream.cloud or upstream.authority_host, not both"));
            }
            (Some(host), None, _) => ("upstream.authority_host", host),
            (None, Some(cloud), _) => match cloud_authority_host(&cloud) {
                Some(host) => ("upstream.cloud", host.to_owned()),
                None => {
                    return Err(self.error(
                        "upstream.cloud",
                        format!("{cloud:?} is not \"public\", \"usgovernment\" or \"china\"; for another cloud set upstream.authority_host"),
                    ));
                }
            },
            (None, None, Some(host)) => ("AZURE_AUTHORITY_HOST", host.to_owned()),
            (None, None, None) => ("upstream.authority_host", DEFAULT_AUTHORITY_HOST.to_owned()),
        };
        let error = |problem: String| {
            if key == "AZURE_AUTHORITY_HOST" {
                ConfigError { key: key.into(), origin: "environment variable AZURE_AUTHORITY_HOST".into(), problem }
            } else {
                self.error(key, problem)
            }
        };
        let url = Url::parse(host.trim()).map_err(|e| error(format!("{host:?} is not a URL: {e}")))?;
        match url.scheme() {
            "https" => {}
            "http" if is_loopback_host(&url) => {}
            "http" => {
                return Err(error(format!("{host} must use https (plain http is allowed only for loopback hosts)")));
            }
            other => {
                return Err(error(format!("{host}: unsupported scheme {other:?}; use https")));
            }
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(error(format!("{host} must not have a query or fragment")));
        }
        if raw.timeout_secs == 0 {
            return Err(self.error("upstream.timeout_secs", "must be at least 1"));
        }
        if raw.max_concurrent == 0 {
            return Err(self.error("upstream.max_concurrent", "must be at least 1"));
        }
        Ok(UpstreamConfig {
            authority_host: url.to_string(),
            timeout_secs: raw.timeout_secs,
            max_retries: raw.max_retries,
            retry_base_ms: raw.retry_base_ms,
            retry_max_delay_secs: raw.retry_max_delay_secs,
            retry_budget_secs: raw.retry_budget_secs,
            max_concurrent: raw.max_concurrent,
        })
    }

    fn cache(&self, raw: raw::RawCache) -> Result<CacheConfig, ConfigError> {
        if raw.max_entries == 0 {
            return Err(self.error("cache.max_entries", "must be at least 1"));
        }
        if raw.refresh_backoff_secs == 0 || raw.refresh_backoff_max_secs < raw.refresh_backoff_secs {
            return Err(self.error(
                "cache.refresh_backoff_secs",
                "must be at least 1 and no more than cache.refresh_backoff_max_secs",
            ));
        }
        if raw.new_keys_per_minute == 0 {
            return Err(self.error("cache.new_keys_per_minute", "must be at least 1"));
        }
        if raw.new_keys_burst == 0 {
            return Err(self.error("cache.new_keys_burst", "must be at least 1"));
        }
        let persistence = self.persistence(raw.persistence)?;
        let shared = self.shared(raw.shared, persistence.as_ref().and_then(|p| p.key.as_ref()))?;
        Ok(CacheConfig {
            max_entries: raw.max_entries,
            serve_margin_secs: raw.serve_margin_secs,
            refresh_backoff_secs: raw.refresh_backoff_secs,
            refresh_backoff_max_secs: raw.refresh_backoff_max_secs,
            negative_ttl_secs: raw.negative_ttl_secs,
            new_keys_per_minute: raw.new_keys_per_minute,
            new_keys_burst: raw.new_keys_burst,
            persistence,
            shared,
        })
    }

    /// The `[log]` section: every problem of its keys, since none depends on another.
    fn log(&self, raw: raw::RawLog) -> Result<LogConfig, Vec<ConfigError>> {
        let mut problems = Vec::new();
        let format = match raw.format.as_str() {
            "auto" => Some(LogFormat::Auto),
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            other => {
                let problem = format!("{other:?} is not one of \"auto\", \"text\", \"json\"");
                problems.push(self.error("log.format", problem));
                None
            }
        };
        if tracing_subscriber::EnvFilter::try_new(&raw.level).is_err() {
            problems
                .push(self.error("log.level", format!("{:?} is not a level or filter such as \"info\"", raw.level)));
        }
        let requests = match raw.requests.as_str() {
            "all" => Some(RequestLog::All),
            "errors" => Some(RequestLog::Errors),
            "none" => Some(RequestLog::None),
            other => {
                let problem = format!(
                    "{other:?} is not one of \"all\" (every request), \"errors\" (refused requests; the default), \"none\""
                );
                problems.push(self.error("log.requests", problem));
                None
            }
        };
        match (format, requests) {
            (Some(format), Some(requests)) if problems.is_empty() => {
                Ok(LogConfig { format, level: raw.level, requests })
            }
            _ => Err(problems),
        }
    }

    fn telemetry(&self, raw: raw::RawTelemetry) -> Result<TelemetryConfig, ConfigError> {
        let endpoint = match raw.otlp_endpoint.as_deref().map(str::trim).filter(|e| !e.is_empty()) {
            Some(endpoint) => {
                let url = Url::parse(endpoint)
                    .map_err(|e| self.error("telemetry.otlp_endpoint", format!("{endpoint:?} is not a URL: {e}")))?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(self.error("telemetry.otlp_endpoint", "must be an http or https URL"));
                }
                Some(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
            }
            None => None,
        };
        let from_env =
            ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"].iter().any(|v| self.env(v).is_some());
        let disabled = self.env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || self.env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
        let service_name = self.env("OTEL_SERVICE_NAME").map_or(raw.service_name, str::to_owned);
        let traces = ((endpoint.is_some() || from_env) && !disabled).then_some(TraceExport { endpoint, service_name });
        Ok(TelemetryConfig { metrics: raw.metrics, traces })
    }

    fn identity(&self, index: usize, raw: raw::RawIdentity) -> Result<IdentityConfig, ConfigError> {
        let key = |field: &str| format!("identities.{index}.{field}");
        let client_id = raw.client_id.trim().to_owned();
        if client_id.is_empty() {
            return Err(self.error(&key("client_id"), "every identity needs a client_id"));
        }
        let tenant_id = match raw.tenant_id.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
            Some(tenant) => Some(tenant.to_owned()),
            None => self.env("AZURE_TENANT_ID").map(str::to_owned),
        };
        if let Some(tenant) = &tenant_id {
            validate_tenant(tenant).map_err(|problem| self.error(&key("tenant_id"), problem))?;
        }
        let additionally_allowed_tenants =
            self.allowed_tenants(&key("additionally_allowed_tenants"), raw.additionally_allowed_tenants)?;
        let mut credentials = Vec::new();
        for (i, credential) in raw.credentials.into_iter().enumerate() {
            let ckey = format!("identities.{index}.credentials.{i}");
            credentials.push(self.credential(&ckey, credential, &client_id)?);
        }
        if credentials.is_empty() {
            credentials = self.default_chain(&client_id, tenant_id.as_deref());
        } else if tenant_id.is_none()
            && let Some(needy) = credentials.iter().find(|c| c.needs_tenant())
        {
            return Err(self.error(
                &key("tenant_id"),
                format!(
                    "missing: set tenant_id on the identity or AZURE_TENANT_ID (the {} credential needs it)",
                    needy.kind()
                ),
            ));
        }
        let inbound = match raw.inbound {
            Some(inbound) => Some(self.inbound(&key("inbound"), inbound, &client_id, tenant_id.as_deref())?),
            None => None,
        };
        Ok(IdentityConfig {
            name: raw.name.unwrap_or_else(|| format!("identity-{index}")),
            client_id: client_id.into(),
            tenant_id: tenant_id.map(Id::from),
            object_id: raw.object_id.map(Id::from),
            resource_id: raw.resource_id.map(Id::from),
            default: raw.default,
            prefetch: self.prefetch(&key("prefetch"), raw.prefetch)?,
            additionally_allowed_tenants,
            credentials,
            inbound,
        })
    }

    fn identity_from_azure_env(&self) -> Result<IdentityConfig, ConfigError> {
        let missing = |problem: &str| ConfigError {
            key: "identities".into(),
            origin: "configuration and AZURE_* environment".into(),
            problem: problem.into(),
        };
        let client_id = self.env("AZURE_CLIENT_ID").ok_or_else(|| {
            missing(
                "no identity configured: add [[identities]] to the configuration file (for a laptop: \
                 credentials = [{ kind = \"azure_cli\" }]), set AZURE_CLIENT_ID (with AZURE_TENANT_ID and \
                 AZURE_FEDERATED_TOKEN_FILE or AZURE_CLIENT_SECRET), or run with --dev",
            )
        })?;
        let tenant_id = self.env("AZURE_TENANT_ID");
        if let Some(tenant) = tenant_id {
            validate_tenant(tenant).map_err(|problem| ConfigError {
                key: "AZURE_TENANT_ID".into(),
                origin: "environment variable AZURE_TENANT_ID".into(),
                problem,
            })?;
        }
        Ok(IdentityConfig {
            name: "default".into(),
            client_id: client_id.into(),
            tenant_id: tenant_id.map(Id::from),
            object_id: None,
            resource_id: None,
            default: true,
            prefetch: Vec::new(),
            additionally_allowed_tenants: Vec::new(),
            credentials: self.default_chain(client_id, tenant_id),
            inbound: None,
        })
    }

    /// Under `--dev` every configured identity, the dev default and each `--dev-identity`
    /// is served by the development issuer; configured credentials are not used.
    fn dev_identities(
        &self,
        raw: Vec<raw::RawIdentity>,
        dev: &raw::RawDev,
    ) -> Result<Vec<IdentityConfig>, ConfigError> {
        let mut identities = Vec::new();
        for (index, identity) in raw.into_iter().enumerate() {
            if identity.client_id.trim().is_empty() {
                return Err(self.error(&format!("identities.{index}.client_id"), "every identity needs a client_id"));
            }
            // Every development identity accepts the development issuer's user tokens; its
            // audiences, scopes and roles are the configured ones, its tenant the issuer's.
            let client_id = identity.client_id.trim();
            let inbound = self.inbound(
                &format!("identities.{index}.inbound"),
                identity.inbound.map(|i| raw::RawInbound { tenants: Vec::new(), ..i }).unwrap_or_default(),
                client_id,
                Some(&dev.tenant_id),
            )?;
            identities.push(IdentityConfig {
                name: identity.name.unwrap_or_else(|| format!("identity-{index}")),
                client_id: identity.client_id.trim().into(),
                tenant_id: None,
                object_id: identity.object_id.map(Id::from),
                resource_id: identity.resource_id.map(Id::from),
                default: identity.default,
                prefetch: self.prefetch(&format!("identities.{index}.prefetch"), identity.prefetch)?,
                additionally_allowed_tenants: Vec::new(),
                credentials: vec![CredentialConfig::Dev],
                inbound: Some(inbound),
            });
        }
        if let [only] = identities.as_mut_slice() {
            only.default = true;
        }
        let has_default = identities.iter().any(|i| i.default);
        let dev_client_id = dev.client_id.trim();
        if !identities.iter().any(|i| i.client_id == dev_client_id) {
            identities.push(dev_identity("dev", dev_client_id, !has_default, &dev.tenant_id));
        }
        for (n, client_id) in dev.identities.iter().enumerate() {
            let client_id = client_id.trim();
            if client_id.is_empty() {
                return Err(self.error("dev.identities", "a --dev-identity client id is empty"));
            }
            if !identities.iter().any(|i| i.client_id == client_id) {
                identities.push(dev_identity(&format!("dev-{}", n + 1), client_id, false, &dev.tenant_id));
            }
        }
        Ok(identities)
    }

    fn prefetch(&self, key: &str, resources: Vec<String>) -> Result<Vec<String>, ConfigError> {
        resources
            .into_iter()
            .map(|r| {
                let resource = normalize_resource(r.trim()).to_owned();
                if resource.is_empty() { Err(self.error(key, "a prefetch resource is empty")) } else { Ok(resource) }
            })
            .collect()
    }

    /// Unique names and client ids, at most one default; a lone identity is the default.
    fn check_identities(&self, mut identities: Vec<IdentityConfig>) -> Result<Vec<IdentityConfig>, ConfigError> {
        let mut names = HashSet::new();
        let mut client_ids = HashSet::new();
        for identity in &identities {
            if !names.insert(identity.name.clone()) {
                return Err(self.error("identities", format!("two identities are named {:?}", identity.name)));
            }
            if !client_ids.insert(&identity.client_id) {
                return Err(self.error("identities", format!("two identities have client_id {}", identity.client_id)));
            }
        }
        match identities.iter().filter(|i| i.default).count() {
            0 if identities.len() == 1 => identities[0].default = true,
            0 | 1 => {}
            _ => return Err(self.error("identities", "more than one identity has default = true")),
        }
        Ok(identities)
    }

    fn non_empty_secret(&self, key: &str, value: String) -> Result<Secret, ConfigError> {
        let secret = Secret::new(value.trim());
        if secret.is_empty() {
            return Err(self.error(key, "is empty"));
        }
        Ok(secret)
    }

    /// Reads a secret from a file (how Kubernetes Secrets arrive); trailing newlines dropped.
    fn secret_file(&self, key: &str, path: &Path) -> Result<Secret, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| self.error(key, format!("cannot read {}: {e}", path.display())))?;
        let secret = Secret::new(text.trim());
        if secret.is_empty() {
            return Err(self.error(key, format!("{} is empty", path.display())));
        }
        Ok(secret)
    }
}

fn dev_identity(name: &str, client_id: &str, default: bool, tenant_id: &str) -> IdentityConfig {
    IdentityConfig {
        name: name.to_owned(),
        client_id: client_id.into(),
        tenant_id: None,
        object_id: None,
        resource_id: None,
        default,
        prefetch: Vec::new(),
        additionally_allowed_tenants: Vec::new(),
        credentials: vec![CredentialConfig::Dev],
        inbound: Some(InboundConfig {
            audiences: vec![client_id.to_owned(), format!("api://{client_id}")],
            tenants: vec![Id::from(tenant_id)],
            scopes: Vec::new(),
            roles: Vec::new(),
            clock_skew_secs: DEFAULT_CLOCK_SKEW_SECS,
        }),
    }
}

/// Microsoft Graph: the resource of a scope given without one (`User.Read`), as Entra reads it.
pub const GRAPH_RESOURCE: &str = "https://graph.microsoft.com";

/// A delegated scope split into its resource and its name: `api://x/access` gives
/// (`api://x`, `access`), `https://graph.microsoft.com/.default` gives
/// (`https://graph.microsoft.com`, `.default`), and a bare `User.Read` is Graph's.
pub fn split_scope(scope: &str) -> (&str, &str) {
    match scope.rfind('/') {
        Some(at) if scope.contains("://") && at > scope.find("://").unwrap_or(0) + 2 => {
            (&scope[..at], &scope[at + 1..])
        }
        _ => (GRAPH_RESOURCE, scope),
    }
}

/// A resource as the cache keys it: a scope's trailing `/.default` removed.
pub fn normalize_resource(resource: &str) -> &str {
    resource.strip_suffix("/.default").unwrap_or(resource)
}

/// Tenants are GUIDs or domain names: alphanumerics, `.` and `-` (as the Azure SDKs check).
fn validate_tenant(tenant: &str) -> Result<(), String> {
    if !tenant.is_empty() && tenant.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-') {
        Ok(())
    } else {
        Err(format!("{tenant:?} is not a tenant id (a GUID or a domain such as contoso.onmicrosoft.com)"))
    }
}

fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests;
