//! `[cache.shared]`: the optional second-level token cache on Valkey or Redis that the
//! replicas of a fleet share (docs/shared-cache.md).
//!
//! Off unless `url` is set. Everything secret is read here and handed on as values that
//! never print: the password (from a file, never from the URL) as a [`Secret`], the key as a
//! [`CacheKey`], read with the same rules as the persistent cache's key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::persistence::read_key_file;
use super::{CacheKey, ConfigError, Validator};
use crate::secret::Secret;

/// The serde mirror of `[cache.shared]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawShared {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    pub key_prefix: String,
    pub connect_timeout_ms: u64,
    pub timeout_ms: u64,
    pub lease_ms: u64,
    pub lease_wait_ms: u64,
}

impl Default for RawShared {
    fn default() -> Self {
        Self {
            url: None,
            username: None,
            password_file: None,
            key_file: None,
            key_env: None,
            ca_file: None,
            key_prefix: "tokenrelay:".into(),
            connect_timeout_ms: 1000,
            timeout_ms: 250,
            lease_ms: 10_000,
            lease_wait_ms: 3000,
        }
    }
}

/// Validated shared-cache settings; present only when `url` is set.
#[derive(Clone, Debug, Serialize)]
pub struct SharedConfig {
    /// `redis://host:port[/db]` or `rediss://…`, without user or password.
    pub url: String,
    /// Whether the URL asks for TLS (`rediss://`).
    pub tls: bool,
    /// The ACL user, if not the default one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The password (or the ACL user's), from `password_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// Where the password came from, for `check` and logs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// PEM certificates to trust for `rediss://` instead of the system's roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(skip)]
    pub ca_pem: Option<Vec<u8>>,
    /// The 256-bit key entry names and values are derived from (the same key on every replica).
    pub key: CacheKey,
    /// Prepended to every name tokenrelay creates in the server.
    pub key_prefix: String,
    #[serde(serialize_with = "millis")]
    pub connect_timeout: Duration,
    /// Longest wait for one command's answer.
    #[serde(serialize_with = "millis")]
    pub timeout: Duration,
    /// How long a replica's claim to fetch a key upstream lasts.
    #[serde(serialize_with = "millis")]
    pub lease: Duration,
    /// How long a replica waits for another's fetch before fetching itself.
    #[serde(serialize_with = "millis")]
    pub lease_wait: Duration,
}

fn millis<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format!("{} ms", duration.as_millis()))
}

/// The most a password file or CA file may hold.
const MAX_PASSWORD_FILE: usize = 4096;
const MAX_CA_FILE: u64 = 256 * 1024;
/// Longest key prefix: names stay short, and a prefix is a namespace, not data.
const MAX_PREFIX: usize = 64;

impl Validator<'_> {
    /// `[cache.shared]`; `persistence_key` is the persistent cache's key, used when the section
    /// names none of its own.
    pub(super) fn shared(
        &self,
        raw: RawShared,
        persistence_key: Option<&CacheKey>,
    ) -> Result<Option<SharedConfig>, ConfigError> {
        let Some(text) = raw.url.map(|u| u.trim().to_owned()).filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        let url = self.shared_url(&text)?;
        let tls = url.scheme() == "rediss";
        let username = raw.username.map(|u| u.trim().to_owned()).filter(|u| !u.is_empty());
        if username.as_deref().is_some_and(|u| u.chars().any(|c| c.is_control() || c.is_whitespace())) {
            return Err(self.error("cache.shared.username", "must not contain spaces or control characters"));
        }
        let password = match &raw.password_file {
            Some(file) => Some(self.shared_password(file)?),
            None => None,
        };
        if username.is_some() && password.is_none() {
            return Err(self.error(
                "cache.shared.password_file",
                "cache.shared.username is set: name the file holding that ACL user's password",
            ));
        }
        let ca_pem = match &raw.ca_file {
            Some(_) if !tls => {
                return Err(self.error("cache.shared.ca_file", "only for a rediss:// URL (TLS); this URL is redis://"));
            }
            Some(file) => Some(self.shared_ca(file)?),
            None => None,
        };
        let key = match (raw.key_file, raw.key_env.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())) {
            (Some(_), Some(_)) => return Err(self.error("cache.shared.key_file", "set key_file or key_env, not both")),
            (Some(file), None) => self.key_from_file("cache.shared.key_file", &file)?,
            (None, Some(variable)) => self.key_from_env("cache.shared.key_env", &variable)?,
            (None, None) => persistence_key.cloned().ok_or_else(|| {
                self.error(
                    "cache.shared.key_file",
                    "missing: the shared cache encrypts every entry, so set key_file (or key_env) to a 256-bit key \
                     that every replica shares (openssl rand -base64 32); without them the key of an enabled cache.persistence is used",
                )
            })?,
        };
        let prefix = raw.key_prefix;
        if prefix.len() > MAX_PREFIX || !prefix.chars().all(|c| c.is_ascii_graphic()) {
            return Err(self.error(
                "cache.shared.key_prefix",
                format!("at most {MAX_PREFIX} printable ASCII characters without spaces"),
            ));
        }
        let bounded = |key: &str, value: u64, min: u64, max: u64| {
            if (min..=max).contains(&value) {
                Ok(Duration::from_millis(value))
            } else {
                Err(self.error(key, format!("{value} is outside {min}..={max} milliseconds")))
            }
        };
        let connect_timeout = bounded("cache.shared.connect_timeout_ms", raw.connect_timeout_ms, 1, 60_000)?;
        let timeout = bounded("cache.shared.timeout_ms", raw.timeout_ms, 1, 60_000)?;
        let lease = bounded("cache.shared.lease_ms", raw.lease_ms, 100, 300_000)?;
        let lease_wait = bounded("cache.shared.lease_wait_ms", raw.lease_wait_ms, 0, 60_000)?;
        Ok(Some(SharedConfig {
            url: url.to_string(),
            tls,
            username,
            password,
            password_file: raw.password_file,
            ca_file: raw.ca_file,
            ca_pem,
            key,
            key_prefix: prefix,
            connect_timeout,
            timeout,
            lease,
            lease_wait,
        }))
    }

    /// A `redis://` or `rediss://` URL naming a host, with no credentials in it. A password in
    /// a URL ends up in process listings, manifests and `check` output; it belongs in a file.
    fn shared_url(&self, text: &str) -> Result<url::Url, ConfigError> {
        let key = "cache.shared.url";
        let url = url::Url::parse(text).map_err(|e| {
            self.error(key, format!("not a URL ({e}); expected redis://host:6379 or rediss://host:6380"))
        })?;
        if url.password().is_some() || !url.username().is_empty() {
            // The URL is not echoed: it holds a credential.
            return Err(self.error(
                key,
                "holds a user or password: put the ACL user in cache.shared.username and the password in a file \
                 named by cache.shared.password_file",
            ));
        }
        if !matches!(url.scheme(), "redis" | "rediss") {
            return Err(self.error(
                key,
                format!(
                    "{text:?}: the scheme must be redis:// (plain TCP) or rediss:// (TLS), not {}://",
                    url.scheme()
                ),
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(self.error(key, format!("{text:?} names no host")));
        }
        let path = url.path().trim_start_matches('/');
        if !path.is_empty() && path.parse::<u16>().is_err() {
            return Err(self.error(key, format!("{text:?}: the path may only be a database number such as /0")));
        }
        if url.fragment().is_some() || url.query().is_some() {
            // `#insecure` would turn certificate checks off; no option is taken from the URL.
            return Err(self.error(
                key,
                format!("{text:?}: no query or fragment is accepted (TLS verification cannot be turned off)"),
            ));
        }
        Ok(url)
    }

    fn shared_password(&self, file: &Path) -> Result<Secret, ConfigError> {
        let key = "cache.shared.password_file";
        let (mut bytes, _) = read_key_file(file).map_err(|problem| {
            self.error(key, format!("{}: {}", file.display(), problem.replace("key file", "file")))
        })?;
        let text = std::str::from_utf8(&bytes).ok().map(|t| t.trim().to_owned());
        bytes.fill(0);
        match text {
            Some(text) if !text.is_empty() && text.len() <= MAX_PASSWORD_FILE && !text.contains(['\r', '\n']) => {
                Ok(Secret::new(text))
            }
            _ => Err(self.error(key, format!("{}: must hold the password on one line of UTF-8 text", file.display()))),
        }
    }

    fn shared_ca(&self, file: &Path) -> Result<Vec<u8>, ConfigError> {
        use std::io::Read;
        let key = "cache.shared.ca_file";
        let mut bytes = Vec::new();
        std::fs::File::open(file)
            .and_then(|f| f.take(MAX_CA_FILE + 1).read_to_end(&mut bytes))
            .map_err(|e| self.error(key, format!("{}: cannot read it: {e}", file.display())))?;
        if bytes.len() as u64 > MAX_CA_FILE || !bytes.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
            return Err(self.error(
                key,
                format!(
                    "{}: must hold PEM certificates (-----BEGIN CERTIFICATE-----), at most 256 KiB",
                    file.display()
                ),
            ));
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use base64::Engine;
    use figment::Figment;

    use super::*;
    use crate::config::Config;

    fn load(shared: &str, env: &[(&str, &str)]) -> Result<Config, String> {
        use figment::providers::{Format, Serialized, Toml};
        let toml = format!(
            "[server]\nidentity_header = \"h-0123456789abcdef\"\n[[identities]]\nclient_id = \"c1\"\ntenant_id = \"t1\"\n\
             credentials = [{{ kind = \"client_secret\", secret = \"s\" }}]\n[cache.shared]\n{shared}\n"
        );
        let figment =
            Figment::from(Serialized::defaults(crate::config::RawConfig::default())).merge(Toml::string(&toml));
        let env: HashMap<String, String> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Config::from_figment(&figment, &env).map_err(|e| e.to_string())
    }

    const KEY: (&str, &str) = ("K", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=");

    #[test]
    fn off_by_default() {
        assert!(load("", &[]).unwrap().cache.shared.is_none());
    }

    #[test]
    fn a_url_and_a_key_are_enough_and_the_defaults_are_bounded() {
        let config = load("url = \"redis://127.0.0.1:6379\"\nkey_env = \"K\"", &[KEY]).unwrap();
        let shared = config.cache.shared.unwrap();
        assert_eq!(shared.url, "redis://127.0.0.1:6379");
        assert!(!shared.tls && shared.password.is_none());
        assert_eq!(shared.key_prefix, "tokenrelay:");
        assert_eq!((shared.timeout, shared.lease_wait), (Duration::from_millis(250), Duration::from_secs(3)));
        assert_eq!(shared.key.bytes()[1], 1);
    }

    #[test]
    fn each_problem_names_its_key_and_never_a_secret() {
        let error = |shared: &str| load(shared, &[KEY]).unwrap_err();
        let text = error("url = \"redis://user:hunter2@h:6379\"\nkey_env = \"K\"");
        assert!(text.contains("cache.shared.url") && text.contains("password_file"), "{text}");
        assert!(!text.contains("hunter2"), "the password in the URL leaked: {text}");
        assert!(error("url = \"http://h:6379\"\nkey_env = \"K\"").contains("redis:// (plain TCP) or rediss://"));
        assert!(error("url = \"rediss://h:6380#insecure\"\nkey_env = \"K\"").contains("fragment"));
        assert!(error("url = \"redis://h:6379/x\"\nkey_env = \"K\"").contains("database number"));
        assert!(error("url = \"redis://h\"").contains("cache.shared.key_file"));
        assert!(error("url = \"redis://h\"\nkey_env = \"K\"\nca_file = \"/x\"").contains("only for a rediss://"));
        assert!(error("url = \"redis://h\"\nkey_env = \"K\"\nusername = \"u\"").contains("password_file"));
        assert!(error("url = \"redis://h\"\nkey_env = \"K\"\ntimeout_ms = 0").contains("cache.shared.timeout_ms"));
        assert!(error("url = \"redis://h\"\nkey_env = \"K\"\nkey_prefix = \"a b\"").contains("key_prefix"));
        assert!(error("url = \"redis://h\"\nkey_env = \"K\"\nbogus = 1").contains("cache.shared.bogus"));
    }

    #[test]
    fn the_password_comes_from_a_file_and_never_prints() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "s3cr3t-pass\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let shared = format!("url = \"rediss://cache.example:6380\"\nkey_env = \"K\"\npassword_file = {file:?}");
        let config = load(&shared, &[KEY]).unwrap();
        let settings = config.cache.shared.as_ref().unwrap();
        assert!(settings.tls);
        assert_eq!(settings.password.as_ref().unwrap().expose(), "s3cr3t-pass");
        let shown = format!("{config:?} {}", toml::to_string(&config).unwrap());
        assert!(!shown.contains("s3cr3t") && !shown.contains("AAECAwQF"), "{shown}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        let text = load(&shared, &[KEY]).unwrap_err();
        assert!(text.contains("cache.shared.password_file") && text.contains("writable by other users"), "{text}");
    }

    #[test]
    fn the_persistent_cache_key_serves_when_the_section_names_none() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, base64::engine::general_purpose::STANDARD.encode([9u8; 32])).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let toml =
            format!("url = \"redis://h\"\n[cache.persistence]\nenabled = true\npath = \"/x/c\"\nkey_file = {file:?}");
        let config = load(&toml, &[]).unwrap();
        assert_eq!(config.cache.shared.unwrap().key.bytes(), &[9u8; 32]);
    }
}
