//! Where configuration comes from, and how an error names its source.
//!
//! Layers, lowest first: built-in defaults < TOML file < `TOKENRELAY_*` environment
//! variables (nested keys joined with `__`) < command-line flags.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::Serialize;

use super::raw::RawConfig;

/// Prefix of the configuration's environment variables.
const ENV_PREFIX: &str = "TOKENRELAY_";
/// Separator of nested keys in variable names: `TOKENRELAY_SERVER__LISTEN`.
const ENV_SPLIT: &str = "__";

/// Values given on the command line; `None` leaves the lower layers alone.
#[derive(Debug, Default, Serialize)]
pub struct FlagOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerFlags>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dev: Option<DevFlags>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheFlags>,
}

#[derive(Debug, Default, Serialize)]
pub struct CacheFlags {
    pub persistence: PersistenceFlags,
}

/// `[cache.persistence]` from the command line.
#[derive(Debug, Default, Serialize)]
pub struct PersistenceFlags {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<std::path::PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<std::path::PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_unencrypted_storage: Option<bool>,
}

#[derive(Debug, Default, Serialize)]
pub struct ServerFlags {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity_header: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_service: Option<bool>,
}

#[derive(Debug, Default, Serialize)]
pub struct DevFlags {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identities: Option<Vec<String>>,
}

/// The production stack of providers.
pub fn figment(file: Option<&Path>, flags: &FlagOverrides) -> Figment {
    let mut figment = Figment::from(Serialized::defaults(RawConfig::default()));
    if let Some(path) = file {
        // `Toml::file` treats a missing file as empty; a named file that is absent is an
        // error we report ourselves before loading (see `super::load`).
        figment = figment.merge(Toml::file(path));
    }
    figment
        // TOKENRELAY_CONFIG names the file (read by clap), it is not a key.
        .merge(Env::prefixed(ENV_PREFIX).ignore(&["CONFIG"]).split(ENV_SPLIT))
        .merge(Serialized::defaults(flags))
}

/// A readable name for the layer that set `key` (dotted path): `TOML file /etc/x.toml`,
/// `environment variable TOKENRELAY_SERVER__LISTEN`, `command-line flags` or `defaults`.
pub fn source_of(figment: &Figment, key: &str) -> String {
    let mut path: Vec<&str> = key.split('.').collect();
    while !path.is_empty() {
        let joined = path.join(".");
        if let Some(metadata) = figment.find_metadata(&joined) {
            return describe(metadata, &path);
        }
        path.pop();
    }
    "configuration".to_owned()
}

/// Describes one figment error's origin the same way.
pub fn describe_metadata(metadata: Option<&figment::Metadata>, path: &[String]) -> String {
    let keys: Vec<&str> = path.iter().map(String::as_str).collect();
    metadata.map_or_else(|| "configuration".to_owned(), |m| describe(m, &keys))
}

fn describe(metadata: &figment::Metadata, keys: &[&str]) -> String {
    match &metadata.source {
        Some(figment::Source::File(path)) => format!("TOML file {}", path.display()),
        _ if metadata.name.contains("environment") => {
            let variable: Vec<String> = keys.iter().map(|k| k.to_ascii_uppercase()).collect();
            format!("environment variable {ENV_PREFIX}{}", variable.join(ENV_SPLIT))
        }
        _ if metadata.name.contains("FlagOverrides") => "command-line flags".to_owned(),
        _ if metadata.name.contains("RawConfig") => "built-in defaults".to_owned(),
        _ => metadata.name.to_string(),
    }
}
