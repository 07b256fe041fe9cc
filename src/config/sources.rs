//! Where configuration comes from, and how an error names its source.
//!
//! Layers, lowest first: built-in defaults < TOML file < `TOKENRELAY_*` environment
//! variables (nested keys joined with `__`) < command-line flags.
//!
//! Not every `TOKENRELAY_*` variable is configuration. The kubelet gives every container
//! variables for each Service of its namespace (unless the pod sets
//! `enableServiceLinks: false`), named after the Service: one called `tokenrelay` yields
//! `TOKENRELAY_SERVICE_HOST`, `TOKENRELAY_PORT=tcp://10.0.0.1:8081` and more, one called
//! `tokenrelay-metrics` yields `TOKENRELAY_METRICS_PORT`. Configuration variables are the
//! nested ones (`TOKENRELAY_SECTION__KEY`) and those naming a top-level key exactly
//! (`TOKENRELAY_IDENTITIES`, or a whole section as an inline table); every other name is
//! ignored and logged once (see [`log_ignored_variables`]), so a Service name can never stop
//! the process, while a misspelt nested key still does.

use std::path::Path;
use std::sync::OnceLock;

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
        // TOKENRELAY_CONFIG names the file (read by clap), it is not a key. The filter sees
        // the name without the prefix, before `split` turns `__` into dots.
        .merge(
            Env::prefixed(ENV_PREFIX)
                .ignore(&["CONFIG"])
                .filter(|rest| is_configuration(rest.as_str()))
                .split(ENV_SPLIT),
        )
        .merge(Serialized::defaults(flags))
}

/// Whether a variable named `TOKENRELAY_<rest>` is configuration: a nested key, or exactly a
/// top-level key of [`RawConfig`]. Case-insensitive, as figment's prefix match is.
fn is_configuration(rest: &str) -> bool {
    rest.contains(ENV_SPLIT) || top_level_keys().iter().any(|key| key.eq_ignore_ascii_case(rest))
}

/// The top-level keys of [`RawConfig`] (`server`, ..., `identities`), taken from serde itself
/// so that a key added there is recognised here without a second list to keep in step: a
/// struct with `deny_unknown_fields` names every field it expects when it refuses one.
fn top_level_keys() -> &'static [&'static str] {
    static KEYS: OnceLock<&'static [&'static str]> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut probe = figment::value::Dict::new();
        probe.insert("\u{0}".to_owned(), 0u8.into());
        let probe = figment::value::Value::from(probe);
        match probe.deserialize::<RawConfig>().map_err(|e| e.kind) {
            Err(figment::error::Kind::UnknownField(_, expected)) => expected,
            other => unreachable!("RawConfig denies unknown fields, got {other:?}"),
        }
    })
}

/// A `TOKENRELAY_*` variable that is not configuration.
#[derive(Debug, PartialEq, Eq)]
pub struct IgnoredVariable {
    /// The variable's name (never its value, which may be anything, a secret included).
    pub name: String,
    /// Whether the name has the shape of a Kubernetes service-link variable.
    pub service_link: bool,
}

/// The `TOKENRELAY_*` variables of this process that are not configuration, sorted by name.
pub fn ignored_variables() -> Vec<IgnoredVariable> {
    let mut names: Vec<String> =
        std::env::vars_os().filter_map(|(name, _)| name.into_string().ok()).filter(|name| is_ignored(name)).collect();
    names.sort();
    names.into_iter().map(|name| IgnoredVariable { service_link: looks_like_service_link(&name), name }).collect()
}

/// `TOKENRELAY_*` (any case, as figment matches it) but neither `TOKENRELAY_CONFIG` nor
/// configuration.
fn is_ignored(name: &str) -> bool {
    let name = name.trim();
    name.get(..ENV_PREFIX.len()).is_some_and(|prefix| prefix.eq_ignore_ascii_case(ENV_PREFIX))
        && !name[ENV_PREFIX.len()..].eq_ignore_ascii_case("CONFIG")
        && !is_configuration(&name[ENV_PREFIX.len()..])
}

/// Whether `name` is one the kubelet derives from a Service (`pkg/kubelet/envvars` in
/// Kubernetes): `<SVC>_SERVICE_HOST`, `<SVC>_SERVICE_PORT`, `<SVC>_SERVICE_PORT_<PORT NAME>`,
/// and the Docker-link style `<SVC>_PORT`, `<SVC>_PORT_<number>_<PROTOCOL>` and that with
/// `_PROTO`, `_PORT` or `_ADDR`, where `<SVC>` is the Service name upper-cased with `-` as `_`.
fn looks_like_service_link(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    let words: Vec<&str> = upper.split('_').collect();
    // The Service name is at least one word (TOKENRELAY itself); find where its suffix starts.
    (1..words.len()).any(|start| is_service_link_suffix(&words[start..]))
}

fn is_service_link_suffix(words: &[&str]) -> bool {
    let protocol = |word: &str| matches!(word, "TCP" | "UDP" | "SCTP");
    let number = |word: &str| !word.is_empty() && word.len() <= 5 && word.bytes().all(|b| b.is_ascii_digit());
    match words {
        ["SERVICE", "HOST"] | ["SERVICE", "PORT"] | ["PORT"] => true,
        // Port names are IANA service names: letters, digits and '-' (here '_').
        ["SERVICE", "PORT", name @ ..] => !name.is_empty() && name.iter().all(|w| !w.is_empty()),
        ["PORT", port, proto] => number(port) && protocol(proto),
        ["PORT", port, proto, "PROTO" | "PORT" | "ADDR"] => number(port) && protocol(proto),
        _ => false,
    }
}

/// Logs the ignored `TOKENRELAY_*` variables once, after logging is set up: service links at
/// debug (expected where a pod does not set `enableServiceLinks: false`), anything else at
/// warn, because it is most likely a configuration variable with a single `_` where `__`
/// belongs.
pub fn log_ignored_variables() {
    let ignored = ignored_variables();
    let (links, others): (Vec<_>, Vec<_>) = ignored.into_iter().partition(|v| v.service_link);
    if !links.is_empty() {
        let names: Vec<&str> = links.iter().map(|v| v.name.as_str()).collect();
        tracing::debug!(
            variables = %names.join(","),
            "ignoring {} Kubernetes service-link variables named like configuration (not configuration: \
             configuration variables join keys with `__`; `enableServiceLinks: false` in the pod spec removes them)",
            names.len()
        );
    }
    for variable in others {
        tracing::warn!(variable = %variable.name, "{}", not_configuration_hint(&variable.name));
    }
}

/// Why `name` is ignored, with the nested name it may have been meant as.
fn not_configuration_hint(name: &str) -> String {
    let rest = name.get(ENV_PREFIX.len()..).unwrap_or_default();
    let suggestion = top_level_keys().iter().find_map(|key| {
        let head = rest.get(..key.len())?;
        let tail = rest[key.len()..].strip_prefix('_')?;
        (head.eq_ignore_ascii_case(key) && !tail.is_empty())
            .then(|| format!(" (did you mean {ENV_PREFIX}{}{ENV_SPLIT}{tail}?)", key.to_ascii_uppercase()))
    });
    format!(
        "{name} is not a configuration variable and is ignored: configuration variables join nested keys with \
         `__`, such as {ENV_PREFIX}SERVER{ENV_SPLIT}LISTEN{}",
        suggestion.unwrap_or_default()
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The variables the kubelet gives a container for one Service (`pkg/kubelet/envvars` in
    /// Kubernetes, `FromServices`): the name upper-cased with `-` and `.` as `_`; HOST and
    /// PORT of the first port, PORT_<NAME> per named port, and the Docker-link variables.
    fn service_links(service: &str, ports: &[(&str, u16, &str)]) -> Vec<String> {
        let prefix = service.to_ascii_uppercase().replace(['-', '.'], "_");
        let mut names =
            vec![format!("{prefix}_SERVICE_HOST"), format!("{prefix}_SERVICE_PORT"), format!("{prefix}_PORT")];
        for (name, port, protocol) in ports {
            if !name.is_empty() {
                names.push(format!("{prefix}_SERVICE_PORT_{}", name.to_ascii_uppercase().replace('-', "_")));
            }
            let port_prefix = format!("{prefix}_PORT_{port}_{protocol}");
            names.extend(["", "_PROTO", "_PORT", "_ADDR"].map(|suffix| format!("{port_prefix}{suffix}")));
        }
        names
    }

    fn kubernetes_names() -> Vec<String> {
        let mut names = service_links("tokenrelay", &[("relay-admin", 8081, "TCP"), ("http", 80, "TCP")]);
        names.extend(service_links("tokenrelay-metrics", &[("", 8081, "TCP")]));
        names.extend(service_links("tokenrelay-app", &[("dns", 53, "UDP"), ("sctp-x", 9, "SCTP")]));
        names.extend(service_links("tokenrelay-server", &[("grpc", 9000, "TCP")]));
        names.extend(service_links("tokenrelay-identities", &[("", 1, "TCP")]));
        names
    }

    #[test]
    fn service_link_variables_are_not_configuration() {
        for name in kubernetes_names() {
            assert!(is_ignored(&name), "{name} would be read as configuration");
            assert!(looks_like_service_link(&name), "{name} is not recognised as a service link");
        }
        assert!(is_ignored("tokenrelay_metrics_port"), "figment matches the prefix in any case");
    }

    #[test]
    fn nested_names_and_top_level_keys_are_configuration() {
        for name in [
            "TOKENRELAY_SERVER__LISTEN",
            "TOKENRELAY_SERVER__LISTN",
            "TOKENRELAY_CACHE__PERSISTENCE__ENABLED",
            "TOKENRELAY_IDENTITIES",
            "TOKENRELAY_SERVER",
            "tokenrelay_log__level",
        ] {
            assert!(!is_ignored(name), "{name} must stay configuration");
        }
        assert!(!is_ignored("TOKENRELAY_CONFIG"), "the file's name, read by clap");
        assert!(!is_ignored("AZURE_CLIENT_ID") && !is_ignored("TOKENRELAY"));
    }

    #[test]
    fn the_top_level_keys_are_those_of_the_raw_configuration() {
        let defaults = figment::value::Value::serialize(RawConfig::default()).unwrap();
        let serialized: Vec<&String> = defaults.as_dict().unwrap().keys().collect();
        let keys = top_level_keys();
        for key in &serialized {
            assert!(keys.contains(&key.as_str()), "{key} missing from {keys:?}");
        }
        assert!(keys.contains(&"identities") && keys.contains(&"downstream_apis"), "{keys:?}");
        assert_eq!(keys.len(), serialized.len() + 2, "only the two lists are skipped when empty: {keys:?}");
    }

    #[test]
    fn other_ignored_names_are_told_apart_and_get_a_hint() {
        for name in ["TOKENRELAY_SERVER_LISTEN", "TOKENRELAY_BIN", "TOKENRELAY_PORTS", "TOKENRELAY_PORT_80_HTTP"] {
            assert!(is_ignored(name) && !looks_like_service_link(name), "{name}");
        }
        let hint = not_configuration_hint("TOKENRELAY_SERVER_LISTEN");
        assert!(hint.contains("did you mean TOKENRELAY_SERVER__LISTEN?"), "{hint}");
        let hint = not_configuration_hint("TOKENRELAY_LOG_LEVEL");
        assert!(hint.contains("did you mean TOKENRELAY_LOG__LEVEL?"), "{hint}");
        assert!(!not_configuration_hint("TOKENRELAY_BIN").contains("did you mean"));
    }
}
