//! The serde mirror of the configuration file, with the built-in defaults.
//!
//! figment merges every layer into these structs; `super::Config::from_raw` turns them into
//! typed values. Unknown keys are errors, so a typo cannot silently fall back to a default.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Everything the file, `TOKENRELAY_*` variables and flags can say.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    pub server: RawServer,
    pub upstream: RawUpstream,
    pub cache: RawCache,
    pub dev: RawDev,
    pub log: RawLog,
    pub telemetry: RawTelemetry,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<RawIdentity>,
    /// The APIs `/AuthorizationHeader/{name}` obtains tokens for (docs/on-behalf-of.md).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub downstream_apis: Vec<RawDownstreamApi>,
}

/// One `[[downstream_apis]]` entry.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawDownstreamApi {
    pub name: String,
    /// A list, or one space-separated string (what Microsoft's sidecar reads from a variable).
    #[serde(deserialize_with = "list_or_spaces")]
    pub scopes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
}

/// An identity's `inbound` section: which user tokens it accepts.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawInbound {
    #[serde(deserialize_with = "list_or_commas", skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    #[serde(deserialize_with = "list_or_commas", skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<String>,
    #[serde(deserialize_with = "list_or_spaces", skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    #[serde(deserialize_with = "list_or_spaces", skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock_skew_secs: Option<u64>,
}

/// A list of strings, or one string of space-separated items.
fn list_or_spaces<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrSpaces {
        List(Vec<String>),
        Spaces(String),
    }
    Ok(match ListOrSpaces::deserialize(d)? {
        ListOrSpaces::List(items) => items,
        ListOrSpaces::Spaces(text) => text.split_whitespace().map(str::to_owned).collect(),
    })
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawServer {
    pub listen: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity_header: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity_header_file: Option<PathBuf>,
    pub app_service_path: String,
    pub imds: bool,
    pub app_service: bool,
    pub imds_probe: String,
    pub shutdown_grace_secs: u64,
    pub request_timeout_secs: u64,
    pub header_read_timeout_secs: u64,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_uri_bytes: usize,
    pub write_timeout_secs: u64,
    pub keep_alive_timeout_secs: u64,
    pub admin_max_connections: usize,
    /// Host names (and addresses) besides loopback that token requests may name in `Host`.
    /// A list, or one comma-separated string (what a `TOKENRELAY_SERVER__ALLOWED_HOSTS`
    /// variable holds).
    #[serde(deserialize_with = "list_or_commas", skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
    /// Whether `X-IDENTITY-HEADER` is "optional" (checked when sent) or "required" on the
    /// user-token endpoints (`/Validate`, `/AuthorizationHeader*`).
    pub user_endpoints_identity_header: String,
}

/// A list of strings, or one string of comma-separated items.
fn list_or_commas<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrCommas {
        List(Vec<String>),
        Commas(String),
    }
    Ok(match ListOrCommas::deserialize(d)? {
        ListOrCommas::List(items) => items,
        ListOrCommas::Commas(text) => {
            text.split(',').map(str::trim).filter(|item| !item.is_empty()).map(str::to_owned).collect()
        }
    })
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            admin_listen: None,
            identity_header: None,
            identity_header_file: None,
            app_service_path: "/msi/token".into(),
            imds: true,
            app_service: true,
            imds_probe: "strict".into(),
            shutdown_grace_secs: 10,
            request_timeout_secs: 60,
            header_read_timeout_secs: 10,
            max_connections: 1024,
            max_header_bytes: 16 * 1024,
            max_uri_bytes: 8 * 1024,
            allowed_hosts: Vec::new(),
            write_timeout_secs: 5,
            keep_alive_timeout_secs: 60,
            admin_max_connections: 64,
            user_endpoints_identity_header: "optional".into(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawUpstream {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority_host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud: Option<String>,
    pub timeout_secs: u64,
    pub max_retries: u32,
    pub retry_base_ms: u64,
    pub retry_max_delay_secs: u64,
    pub retry_budget_secs: u64,
    pub max_concurrent: usize,
}

impl Default for RawUpstream {
    fn default() -> Self {
        Self {
            authority_host: None,
            cloud: None,
            timeout_secs: 10,
            max_retries: 3,
            retry_base_ms: 500,
            retry_max_delay_secs: 5,
            retry_budget_secs: 15,
            max_concurrent: 16,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawCache {
    pub max_entries: u64,
    pub serve_margin_secs: u64,
    pub refresh_backoff_secs: u64,
    pub refresh_backoff_max_secs: u64,
    pub negative_ttl_secs: u64,
    pub new_keys_per_minute: u32,
    pub new_keys_burst: u32,
    pub persistence: super::persistence::RawPersistence,
    pub shared: super::shared::RawShared,
}

impl Default for RawCache {
    fn default() -> Self {
        Self {
            max_entries: 1000,
            serve_margin_secs: 60,
            refresh_backoff_secs: 30,
            refresh_backoff_max_secs: 300,
            negative_ttl_secs: 10,
            new_keys_per_minute: 60,
            new_keys_burst: 60,
            persistence: super::persistence::RawPersistence::default(),
            shared: super::shared::RawShared::default(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawDev {
    pub enabled: bool,
    pub client_id: String,
    pub tenant_id: String,
    pub identities: Vec<String>,
    pub token_lifetime_secs: u64,
}

impl Default for RawDev {
    fn default() -> Self {
        Self {
            enabled: false,
            client_id: super::DEV_CLIENT_ID.into(),
            tenant_id: super::DEV_TENANT_ID.into(),
            identities: Vec::new(),
            token_lifetime_secs: 3600,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawLog {
    pub format: String,
    pub level: String,
    /// Which token requests are logged: "all", "errors" or "none".
    pub requests: String,
}

impl Default for RawLog {
    fn default() -> Self {
        Self { format: "auto".into(), level: "info".into(), requests: "errors".into() }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawTelemetry {
    pub metrics: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    pub service_name: String,
}

impl Default for RawTelemetry {
    fn default() -> Self {
        Self { metrics: true, otlp_endpoint: None, service_name: "tokenrelay".into() }
    }
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawIdentity {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub client_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<String>,
    pub default: bool,
    pub prefetch: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub additionally_allowed_tenants: Vec<String>,
    pub credentials: Vec<RawCredential>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbound: Option<RawInbound>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RawCredential {
    ClientSecret {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret_file: Option<PathBuf>,
    },
    WorkloadIdentity {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_file: Option<PathBuf>,
    },
    ClientCertificate {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        certificate_file: Option<PathBuf>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        private_key_file: Option<PathBuf>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password_file: Option<PathBuf>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        algorithm: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        send_certificate_chain: Option<bool>,
    },
    ClientAssertion {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file: Option<PathBuf>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        command: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_secs: Option<u64>,
    },
    AzurePipelines {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service_connection_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        oidc_request_uri: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        system_access_token: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        system_access_token_file: Option<PathBuf>,
    },
    ManagedIdentity {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        identity_header: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        identity_header_file: Option<PathBuf>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        object_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resource_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gone_retry_secs: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_base_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_retries: Option<u32>,
    },
    AzureCli {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_secs: Option<u64>,
    },
    AzureDeveloperCli {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_secs: Option<u64>,
    },
    AzurePowershell {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_secs: Option<u64>,
    },
    Environment {},
    /// A signed-in user (`tokenrelay login`); see `super::persistence`.
    User {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        authentication_record: Option<PathBuf>,
    },
}
