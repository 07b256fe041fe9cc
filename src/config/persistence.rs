//! `[cache.persistence]`: whether and where tokens survive restarts, and with which key.
//!
//! The key is read here (from `key_file` or the variable `key_env` names) and handed on as a
//! [`CacheKey`] that never prints its bytes; the store module never reads the environment.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine;
use figment::Figment;
use serde::{Deserialize, Serialize, Serializer};

use super::AuthenticationRecord;
use super::{ConfigError, Validator};
use zeroize::Zeroize;

/// Default cache name: the file is `<name>.cache`, the keyring entry `<name>/cache-key`.
const DEFAULT_NAME: &str = "tokenrelay";

/// The serde mirror of `[cache.persistence]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawPersistence {
    pub enabled: bool,
    pub name: String,
    pub backend: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_env: Option<String>,
    pub allow_unencrypted_storage: bool,
    pub user_tokens: bool,
}

impl Default for RawPersistence {
    fn default() -> Self {
        Self {
            enabled: false,
            name: DEFAULT_NAME.into(),
            backend: "auto".into(),
            path: None,
            key_file: None,
            key_env: None,
            allow_unencrypted_storage: false,
            user_tokens: false,
        }
    }
}

/// Validated persistence settings; present only when persistence is enabled.
#[derive(Clone, Debug, Serialize)]
pub struct PersistenceConfig {
    /// Names the keyring entry and the default file.
    pub name: String,
    pub backend: PersistenceBackend,
    /// The cache file.
    pub path: PathBuf,
    /// The configured key, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<CacheKey>,
    pub allow_unencrypted_storage: bool,
    /// Whether users' tokens from the on-behalf-of exchange are persisted too (only ever into
    /// an encrypted file).
    pub user_tokens: bool,
}

/// Which protection the operator asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PersistenceBackend {
    /// A configured key, else the keyring, else plaintext if allowed, else off.
    Auto,
    /// The keyring keeps the file's key; nothing else.
    Keyring,
    /// An encrypted file with a configured key (or the keyring's), plaintext if allowed.
    File,
}

/// A 256-bit key and where it came from. Debug and Serialize show only the source.
#[derive(Clone)]
pub struct CacheKey {
    source: String,
    bytes: [u8; 32],
    /// Something the operator should fix about how the key is kept, for a warning at start.
    warning: Option<String>,
}

/// The key leaves memory with the configuration: zeroed on drop, as a `Secret` is.
impl Drop for CacheKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl CacheKey {
    /// `key_file /path` or `environment variable NAME`.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// A weakness in how the key is kept (a key file others can read), if any.
    pub fn warning(&self) -> Option<&str> {
        self.warning.as_deref()
    }

    /// The key material. Only the cipher calls this.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }
}

impl CacheKey {
    /// A key from its bytes, for tests elsewhere in the crate.
    #[cfg(test)]
    pub fn for_tests(bytes: [u8; 32]) -> Self {
        Self { source: "test".into(), bytes, warning: None }
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheKey").field("source", &self.source).field("bytes", &"<redacted>").finish()
    }
}

impl Serialize for CacheKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("<redacted> (from {})", self.source))
    }
}

/// The `user` credential: the account `tokenrelay login` signed in, and the store its
/// refresh token is in.
#[derive(Clone, Debug, Serialize)]
pub struct UserConfig {
    /// Where the AuthenticationRecord is.
    pub authentication_record: PathBuf,
    /// The account it names. Its refresh token is in the persistent cache
    /// (`cache.persistence`), which validation guarantees is on.
    #[serde(skip)]
    pub record: AuthenticationRecord,
}

/// The user's cache directory, from the variables `env` reads: on Windows `%LOCALAPPDATA%`
/// (per user, kept on this machine, and private to the user by its ACL, where MSAL keeps its
/// token cache too); elsewhere `$XDG_CACHE_HOME` when absolute, else `$HOME/.cache`. The error
/// says what is missing.
fn user_cache_dir<'e>(windows: bool, env: impl Fn(&str) -> Option<&'e str>) -> Result<PathBuf, &'static str> {
    if windows {
        return match env("LOCALAPPDATA") {
            Some(local) if Path::new(local).is_absolute() => Ok(PathBuf::from(local)),
            _ => Err("missing: LOCALAPPDATA is not set, so set the cache file's path"),
        };
    }
    match (env("XDG_CACHE_HOME"), env("HOME")) {
        (Some(cache), _) if Path::new(cache).is_absolute() => Ok(PathBuf::from(cache)),
        (_, Some(home)) => Ok(Path::new(home).join(".cache")),
        _ => Err("missing: neither HOME nor XDG_CACHE_HOME is set, so set the cache file's path"),
    }
}

/// The variables persistence may need, read from the process environment: where the user's
/// cache directory is, and the variable `cache.persistence.key_env` names.
pub fn environment(figment: &Figment) -> HashMap<String, String> {
    let mut names = vec!["HOME".to_owned(), "XDG_CACHE_HOME".to_owned(), "LOCALAPPDATA".to_owned()];
    if let Ok(Some(name)) = figment.extract_inner::<Option<String>>("cache.persistence.key_env") {
        names.push(name.trim().to_owned());
    }
    names.into_iter().filter_map(|name| std::env::var(&name).ok().map(|value| (name, value))).collect()
}

impl Validator<'_> {
    pub(super) fn persistence(&self, raw: RawPersistence) -> Result<Option<PersistenceConfig>, ConfigError> {
        if !raw.enabled {
            return Ok(None);
        }
        let name = raw.name.trim().to_owned();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
            return Err(self.error(
                "cache.persistence.name",
                format!("{name:?} must be non-empty letters, digits, '.', '_' or '-'"),
            ));
        }
        let backend = match raw.backend.trim() {
            "auto" => PersistenceBackend::Auto,
            "keyring" => PersistenceBackend::Keyring,
            "file" => PersistenceBackend::File,
            other => {
                return Err(self.error(
                    "cache.persistence.backend",
                    format!("{other:?} is not one of \"auto\", \"keyring\", \"file\""),
                ));
            }
        };
        let path = match raw.path.filter(|p| !p.as_os_str().is_empty()) {
            Some(path) => path,
            None => self.default_cache_path(&name)?,
        };
        if path.is_dir() {
            return Err(self.error(
                "cache.persistence.path",
                format!(
                    "{} is a directory; name the cache file, such as {}",
                    path.display(),
                    path.join("tokens.cache").display()
                ),
            ));
        }
        let key = match (raw.key_file, raw.key_env.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())) {
            (Some(_), Some(_)) => {
                return Err(self.error("cache.persistence.key_file", "set key_file or key_env, not both"));
            }
            (Some(file), None) => Some(self.key_from_file("cache.persistence.key_file", &file)?),
            (None, Some(variable)) => Some(self.key_from_env("cache.persistence.key_env", &variable)?),
            (None, None) => None,
        };
        if backend == PersistenceBackend::Keyring && key.is_some() {
            return Err(self.error(
                "cache.persistence.backend",
                "\"keyring\" keeps its own key in the keyring; remove key_file/key_env, or use backend = \"file\"",
            ));
        }
        Ok(Some(PersistenceConfig {
            name,
            backend,
            path,
            key,
            allow_unencrypted_storage: raw.allow_unencrypted_storage,
            user_tokens: raw.user_tokens,
        }))
    }

    /// A `user` credential: its record must exist (written by `tokenrelay login`) and the
    /// persistent cache, where the refresh token is, must be on.
    pub(super) fn user_credential(&self, key: &str, record: Option<PathBuf>) -> Result<UserConfig, ConfigError> {
        let record_key = format!("{key}.authentication_record");
        let path = record.ok_or_else(|| {
            self.error(&record_key, "user: set authentication_record to the file `tokenrelay login --record` wrote")
        })?;
        let raw: RawPersistence = self.figment.extract_inner("cache.persistence").unwrap_or_default();
        self.persistence(raw)?.ok_or_else(|| {
            self.error(
                "cache.persistence.enabled",
                "the user credential keeps its refresh token in the persistent cache: set enabled = true \
                 (with the key_file or backend that `tokenrelay login` used)",
            )
        })?;
        let record = AuthenticationRecord::read(&path).map_err(|problem| {
            self.error(
                &record_key,
                format!("{problem}; sign in first with `tokenrelay login --device-code --record {}`", path.display()),
            )
        })?;
        Ok(UserConfig { authentication_record: path, record })
    }

    /// `<user cache directory>/tokenrelay/<name>.cache` ([`user_cache_dir`]).
    fn default_cache_path(&self, name: &str) -> Result<PathBuf, ConfigError> {
        let base = user_cache_dir(cfg!(windows), |name| self.env(name))
            .map_err(|missing| self.error("cache.persistence.path", missing))?;
        Ok(base.join("tokenrelay").join(format!("{name}.cache")))
    }

    /// The key in `file`, which the configuration key `key` names (for its errors).
    pub(super) fn key_from_file(&self, key: &str, file: &Path) -> Result<CacheKey, ConfigError> {
        let (mut bytes, warning) =
            read_key_file(file).map_err(|problem| self.error(key, format!("{}: {problem}", file.display())))?;
        let decoded = decode_key(&bytes);
        bytes.zeroize();
        let decoded = decoded.ok_or_else(|| self.error(key, format!("{}: {KEY_FORMATS}", file.display())))?;
        Ok(CacheKey { source: format!("key_file {}", file.display()), bytes: decoded, warning })
    }

    /// The key in the environment variable `variable`, which the configuration key `key` names.
    pub(super) fn key_from_env(&self, key: &str, variable: &str) -> Result<CacheKey, ConfigError> {
        let value = self
            .env(variable)
            .ok_or_else(|| self.error(key, format!("the environment variable {variable} is not set or empty")))?;
        let decoded = decode_key(value.as_bytes())
            .ok_or_else(|| self.error(key, format!("the value of {variable}: {KEY_FORMATS}")))?;
        Ok(CacheKey { source: format!("environment variable {variable}"), bytes: decoded, warning: None })
    }
}

/// The largest key file read: a key in any accepted form, with whitespace, is under 100 bytes.
const MAX_KEY_FILE: u64 = 4096;

/// Reads a key file the running user or root owns and no one else can write: whoever can
/// write it chooses the key, and so can read the cache and forge tokens in it. Symbolic
/// links are followed (a Kubernetes Secret's file is one); the file finally opened is
/// checked. Returns its bytes and a warning when others can read it, which is not refused:
/// a Secret mounted for a non-root user is group-readable by design.
pub(super) fn read_key_file(path: &Path) -> Result<(Vec<u8>, Option<String>), String> {
    use std::io::Read;

    use crate::trust::{self, Opened, Owners};
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    let file = match trust::open_following(path, &mut options, Owners::RunningUserOrRoot) {
        Opened::Trusted(file) => file,
        Opened::Failed(error) => return Err(format!("cannot read it: {error}")),
        Opened::Refused { why, .. } => {
            return Err(format!(
                "refusing the key file: it {why}, so another user may have written it and would know the key. Use a \
                 key file owned by uid {} (or root) that no one else can write (mode 0600)",
                trust::euid()
            ));
        }
    };
    let warning = file.metadata().ok().and_then(|metadata| {
        let (uid, mode) = trust::readable_by_others(&metadata)?;
        (uid == trust::euid()).then(|| {
            format!(
                "the key file {} is readable by other users (mode {:04o}); anyone who can read it can decrypt the token \
                 cache. chmod 600 it",
                path.display(),
                mode & 0o7777
            )
        })
    });
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE + 1).read_to_end(&mut bytes).map_err(|e| format!("cannot read it: {e}"))?;
    if bytes.len() as u64 > MAX_KEY_FILE {
        bytes.zeroize();
        return Err(format!("larger than {MAX_KEY_FILE} bytes, so not a key file; {KEY_FORMATS}"));
    }
    Ok((bytes, warning))
}

/// What a key file or variable may hold (the message never shows what it did hold).
const KEY_FORMATS: &str = "must hold a 256-bit key: 32 raw bytes, 44 characters of base64 (such as the output of \
                           `openssl rand -base64 32`) or 64 hex digits";

/// Accepts 32 raw bytes, base64 (standard or URL-safe, padded or not) or hex, surrounding
/// whitespace ignored for the text forms.
fn decode_key(bytes: &[u8]) -> Option<[u8; 32]> {
    if let Ok(raw) = <[u8; 32]>::try_from(bytes) {
        // 32 bytes that are all hex or base64 characters are far likelier a typo than a key
        // whose every byte happens to be printable; refuse rather than guess.
        if !raw.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_')) {
            return Some(raw);
        }
    }
    let text = std::str::from_utf8(bytes).ok()?.trim();
    if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
        let mut key = [0u8; 32];
        for (i, pair) in text.as_bytes().chunks(2).enumerate() {
            key[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
        }
        return Some(key);
    }
    let engines = [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    engines.iter().find_map(|engine| engine.decode(text).ok().and_then(|v| <[u8; 32]>::try_from(v).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_each_key_form() {
        let key: [u8; 32] = std::array::from_fn(|i| (i * 7 + 200) as u8);
        assert_eq!(decode_key(&key), Some(key));
        let b64 = base64::engine::general_purpose::STANDARD.encode(key);
        assert_eq!(decode_key(format!("{b64}\n").as_bytes()), Some(key));
        assert_eq!(decode_key(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key).as_bytes()), Some(key));
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(decode_key(hex.as_bytes()), Some(key));
        assert_eq!(decode_key(b"too short"), None);
        assert_eq!(decode_key(&[b'a'; 32]), None, "32 printable characters are not taken as raw bytes");
        assert_eq!(decode_key(base64::engine::general_purpose::STANDARD.encode([1u8; 16]).as_bytes()), None);
    }

    fn load(persistence: &str, env: &[(&str, &str)]) -> Result<super::super::Config, ConfigError> {
        use figment::providers::{Format, Serialized, Toml};
        let toml = format!(
            "[server]\nidentity_header = \"h-0123456789abcdef\"\n[[identities]]\nclient_id = \"c1\"\ntenant_id = \"t1\"\n\
             credentials = [{{ kind = \"client_secret\", secret = \"s\" }}]\n[cache.persistence]\n{persistence}\n"
        );
        let figment =
            Figment::from(Serialized::defaults(super::super::RawConfig::default())).merge(Toml::string(&toml));
        let env: HashMap<String, String> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        super::super::Config::from_figment(&figment, &env)
    }

    #[test]
    fn off_by_default_and_defaults_under_the_user_cache_directory() {
        assert!(load("", &[("HOME", "/home/u")]).unwrap().cache.persistence.is_none());
        let config = load("enabled = true", &[("HOME", "/home/u")]).unwrap();
        let persistence = config.cache.persistence.unwrap();
        assert_eq!(persistence.path, Path::new("/home/u/.cache/tokenrelay/tokenrelay.cache"));
        assert_eq!(persistence.backend, PersistenceBackend::Auto);
        assert!(persistence.key.is_none() && !persistence.allow_unencrypted_storage);
        let config = load("enabled = true\nname = \"x\"", &[("HOME", "/h"), ("XDG_CACHE_HOME", "/c")]).unwrap();
        assert_eq!(config.cache.persistence.unwrap().path, Path::new("/c/tokenrelay/x.cache"));
    }

    #[test]
    fn windows_keeps_the_cache_under_local_app_data_and_nowhere_else() {
        // Unix paths stand in for Windows ones: only "absolute" differs, and on this host
        // `C:\Users` is not absolute.
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
        };
        let all = env(&[("LOCALAPPDATA", "/Users/u/AppData/Local"), ("HOME", "/h"), ("XDG_CACHE_HOME", "/c")]);
        assert_eq!(user_cache_dir(true, all), Ok(PathBuf::from("/Users/u/AppData/Local")));
        assert_eq!(user_cache_dir(false, all), Ok(PathBuf::from("/c")), "LOCALAPPDATA means nothing elsewhere");
        let unix_only = env(&[("HOME", "/h")]);
        assert!(user_cache_dir(true, unix_only).unwrap_err().contains("LOCALAPPDATA"), "HOME is not used on Windows");
        assert!(user_cache_dir(true, env(&[("LOCALAPPDATA", "relative")])).is_err());
        assert_eq!(user_cache_dir(false, unix_only), Ok(PathBuf::from("/h/.cache")));
    }

    #[test]
    fn errors_name_the_key_and_never_the_key_material() {
        let error = |persistence: &str, env: &[(&str, &str)]| load(persistence, env).unwrap_err().to_string();
        assert!(error("enabled = true\nbackend = \"vault\"", &[("HOME", "/h")]).contains("cache.persistence.backend"));
        assert!(error("enabled = true", &[]).contains("cache.persistence.path"));
        assert!(error("enabled = true\nname = \"a/b\"", &[("HOME", "/h")]).contains("cache.persistence.name"));
        let text = error("enabled = true\nkey_env = \"K\"\npath = \"/x/c\"", &[("K", "not-a-key-value")]);
        assert!(text.contains("cache.persistence.key_env") && text.contains("K") && !text.contains("not-a-key-value"));
        assert!(error("enabled = true\nkey_env = \"K\"\npath = \"/x/c\"", &[]).contains("not set"));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k");
        std::fs::write(&file, "short-secret").unwrap();
        let text = error(&format!("enabled = true\npath = \"/x/c\"\nkey_file = {file:?}"), &[]);
        assert!(text.contains("cache.persistence.key_file") && !text.contains("short-secret"), "{text}");
        std::fs::write(&file, base64::engine::general_purpose::STANDARD.encode([7u8; 32])).unwrap();
        let keyring = format!("enabled = true\npath = \"/x/c\"\nbackend = \"keyring\"\nkey_file = {file:?}");
        assert!(error(&keyring, &[]).contains("keyring"));
        let config = load(&format!("enabled = true\npath = \"/x/c\"\nkey_file = {file:?}"), &[]).unwrap();
        let key = config.cache.persistence.unwrap().key.unwrap();
        assert_eq!(key.bytes(), &[7u8; 32]);
        assert!(key.source().contains("key_file"));
    }

    #[test]
    fn a_key_file_another_user_owns_or_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k");
        std::fs::write(&file, base64::engine::general_purpose::STANDARD.encode([7u8; 32])).unwrap();
        let chmod = |mode| std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        let config = format!("enabled = true\npath = \"/x/c\"\nkey_file = {file:?}");

        chmod(0o600);
        let key = load(&config, &[]).unwrap().cache.persistence.unwrap().key.unwrap();
        assert_eq!((key.bytes(), key.warning()), (&[7u8; 32], None));

        // Readable by others: used, with a warning (a Secret mounted for a non-root user is).
        chmod(0o640);
        let key = load(&config, &[]).unwrap().cache.persistence.unwrap().key.unwrap();
        assert!(key.warning().unwrap().contains("readable by other users (mode 0640)"), "{:?}", key.warning());

        // Through a symbolic link, as a Kubernetes Secret's file is reached.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let linked = format!("enabled = true\npath = \"/x/c\"\nkey_file = {link:?}");
        assert_eq!(load(&linked, &[]).unwrap().cache.persistence.unwrap().key.unwrap().bytes(), &[7u8; 32]);

        chmod(0o666);
        let error = load(&config, &[]).unwrap_err().to_string();
        assert!(error.contains("cache.persistence.key_file") && error.contains("refusing the key file"), "{error}");
        assert!(error.contains("writable by other users") && error.contains("mode 0666"), "{error}");
    }

    #[test]
    #[ignore = "needs root: gives a file to another user (docs/testing.md#privileges)"]
    fn a_key_file_of_another_user_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k");
        std::fs::write(&file, base64::engine::general_purpose::STANDARD.encode([7u8; 32])).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        crate::trust::tests::give_away(&file);
        // Through a symbolic link, as a Kubernetes Secret's file is reached: judged by the file.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let error =
            load(&format!("enabled = true\npath = \"/x/c\"\nkey_file = {link:?}"), &[]).unwrap_err().to_string();
        assert!(error.contains("owned by uid 65534") && error.contains("mode 0600"), "{error}");
        assert!(!error.contains(&base64::engine::general_purpose::STANDARD.encode([7u8; 32])), "{error}");
    }

    #[test]
    fn a_key_file_is_read_with_a_bound() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k");
        std::fs::write(&file, vec![b'A'; 1 << 20]).unwrap();
        let error = load(&format!("enabled = true\npath = \"/x/c\"\nkey_file = {file:?}"), &[]).unwrap_err();
        assert!(error.to_string().contains("larger than 4096 bytes"), "{error}");
    }

    #[test]
    fn debug_and_serialize_hide_the_key() {
        let key = CacheKey { source: "key_file /k".into(), bytes: [0xAB; 32], warning: None };
        let debug = format!("{key:?}");
        assert!(!debug.contains("171") && !debug.to_lowercase().contains("abab"), "{debug}");
        assert_eq!(serde_json::to_string(&key).unwrap(), "\"<redacted> (from key_file /k)\"");
    }
}
