//! `TestConfig`: a relay's configuration as a TOML table that tests edit key by key.
//!
//! Editing a parsed table rather than the generated text means an edit can never silently do
//! nothing: every edit names the key it touches, [`TestConfig::set`] refuses a key the base
//! already has and [`TestConfig::replace`] and [`TestConfig::remove`] refuse one it lacks, so
//! a change to the base configuration fails the tests that relied on it, loudly, at the edit.
//!
//! Keys are dotted paths from the top of the file; a numeric segment indexes an array, so
//! `identities.0.credentials.0.secret` is the first identity's first credential's secret.

use std::fmt;
use std::path::Path;

use toml::{Table, Value};

use super::{FakeEntra, HEADER_SECRET, fake_entra};

/// A configuration file for `tokenrelay serve --config`, built from a base and edits.
#[derive(Clone, Debug)]
pub struct TestConfig(Table);

impl TestConfig {
    /// One client-secret identity named `app` against `entra`, tuned so retries are quick,
    /// with text logs at `info,tokenrelay=debug` and the App Service header secret set.
    pub fn client_secret(entra: &FakeEntra) -> Self {
        Self::parse(&format!(
            r#"
[server]
identity_header = "{HEADER_SECRET}"
shutdown_grace_secs = 5

[upstream]
authority_host = "{authority}"
max_retries = 2
retry_base_ms = 10
retry_max_delay_secs = 5
timeout_secs = 5

[log]
format = "text"
level = "info,tokenrelay=debug"

[[identities]]
name = "app"
client_id = "{client_id}"
tenant_id = "{tenant}"
credentials = [{{ kind = "client_secret", secret = "{secret}" }}]
"#,
            authority = entra.url(),
            client_id = fake_entra::CLIENT_ID,
            tenant = fake_entra::TENANT,
            secret = fake_entra::CLIENT_SECRET,
        ))
    }

    /// [`TestConfig::client_secret`] with a workload identity presenting `token_file` as its
    /// only credential.
    pub fn workload_identity(entra: &FakeEntra, token_file: &Path) -> Self {
        Self::client_secret(entra).credentials([credential("workload_identity").with("token_file", utf8(token_file))])
    }

    /// A configuration given as TOML text; panics when it does not parse.
    pub fn parse(text: &str) -> Self {
        Self(text.parse().unwrap_or_else(|e| panic!("test configuration is not TOML ({e}):\n{text}")))
    }

    /// Adds `key`, creating the tables on its path as needed. Panics when the key is already
    /// there: changing a value of the base is [`TestConfig::replace`].
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        let (table, last) = self.parent(key, true);
        assert!(!table.contains_key(last), "{key} is already set to {}; use replace", table[last]);
        table.insert(last.to_owned(), value.into());
        self
    }

    /// Changes the value of `key`, which must be there.
    pub fn replace(mut self, key: &str, value: impl Into<Value>) -> Self {
        let (table, last) = self.parent(key, false);
        let slot = table.get_mut(last).unwrap_or_else(|| panic!("{key} is not set, so it cannot be replaced; use set"));
        *slot = value.into();
        self
    }

    /// Removes `key`, which must be there.
    pub fn remove(mut self, key: &str) -> Self {
        let (table, last) = self.parent(key, false);
        assert!(table.remove(last).is_some(), "{key} is not set, so it cannot be removed");
        self
    }

    /// Appends `value` to the array at `key`, which must be there.
    pub fn push(mut self, key: &str, value: impl Into<Value>) -> Self {
        let (table, last) = self.parent(key, false);
        match table.get_mut(last) {
            Some(Value::Array(array)) => array.push(value.into()),
            other => panic!("{key} is not an array: {other:?}"),
        }
        self
    }

    /// The first identity's credential chain replaced by `chain`.
    pub fn credentials(self, chain: impl IntoIterator<Item = Inline>) -> Self {
        let chain: Vec<Value> = chain.into_iter().map(Value::from).collect();
        self.replace("identities.0.credentials", chain)
    }

    /// The table that holds the last segment of `key`, and that segment. With `create`,
    /// missing tables on the way are created; otherwise a missing one panics.
    fn parent<'k>(&mut self, key: &'k str, create: bool) -> (&mut Table, &'k str) {
        let segments: Vec<&'k str> = key.split('.').collect();
        descend(&mut self.0, key, &segments, create)
    }
}

/// `TestConfig::parent` from `table` down `segments` (the last one is the key itself).
fn descend<'t, 'k>(table: &'t mut Table, key: &str, segments: &[&'k str], create: bool) -> (&'t mut Table, &'k str) {
    let [segment, rest @ ..] = segments else { panic!("an empty key") };
    if rest.is_empty() {
        return (table, segment);
    }
    let value = if create {
        table.entry(*segment).or_insert_with(|| Value::Table(Table::new()))
    } else {
        table.get_mut(*segment).unwrap_or_else(|| panic!("{key}: there is no {segment:?}"))
    };
    match value {
        Value::Table(next) => descend(next, key, rest, create),
        Value::Array(array) => {
            let [index, rest @ ..] = rest else { unreachable!("rest is not empty") };
            assert!(!rest.is_empty(), "{key}: an array element is edited through its array (push)");
            let index: usize = index.parse().unwrap_or_else(|_| panic!("{key}: {segment:?} is an array; index it"));
            match array.get_mut(index) {
                Some(Value::Table(next)) => descend(next, key, rest, create),
                Some(other) => panic!("{key}: {segment}.{index} is {other}, not a table"),
                None => panic!("{key}: {segment:?} has no element {index}"),
            }
        }
        other => panic!("{key}: {segment:?} is {other}, not a table"),
    }
}

impl fmt::Display for TestConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&toml::to_string(&self.0).expect("a table always serialises"))
    }
}

/// An inline TOML table built key by key, such as one credential of a chain.
#[derive(Clone, Debug, Default)]
pub struct Inline(Table);

impl Inline {
    /// Adds `key`; panics when it is already there.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        assert!(self.0.insert(key.to_owned(), value.into()).is_none(), "{key} given twice");
        self
    }
}

impl From<Inline> for Value {
    fn from(inline: Inline) -> Self {
        Value::Table(inline.0)
    }
}

/// A credential of `kind` (further keys with [`Inline::with`]).
pub fn credential(kind: &str) -> Inline {
    Inline::default().with("kind", kind)
}

/// An empty inline table (keys with [`Inline::with`]).
pub fn table() -> Inline {
    Inline::default()
}

/// A configuration as `TestRelay` takes it: a [`TestConfig`] or literal TOML text (for the
/// tests about configuration files themselves).
pub trait ConfigText {
    fn config_text(&self) -> String;
}

impl ConfigText for TestConfig {
    fn config_text(&self) -> String {
        self.to_string()
    }
}

impl ConfigText for str {
    fn config_text(&self) -> String {
        self.to_owned()
    }
}

impl ConfigText for String {
    fn config_text(&self) -> String {
        self.clone()
    }
}

/// A path as a TOML string (test paths are temporary directories, always UTF-8).
pub fn utf8(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> TestConfig {
        TestConfig::parse(
            "[server]\nidentity_header = \"h\"\n[[identities]]\nname = \"app\"\ncredentials = [{ kind = \"a\" }]\n",
        )
    }

    fn reparsed(config: &TestConfig) -> Table {
        config.to_string().parse().unwrap()
    }

    #[test]
    fn set_creates_the_tables_on_its_path() {
        let config = base().set("cache.persistence.enabled", true).set("identities.0.prefetch", vec!["r"]);
        let table = reparsed(&config);
        assert_eq!(table["cache"]["persistence"]["enabled"], Value::Boolean(true));
        assert_eq!(table["identities"][0]["prefetch"][0], Value::from("r"));
    }

    #[test]
    #[should_panic(expected = "server.identity_header is already set")]
    fn set_refuses_a_key_the_base_has() {
        let _ = base().set("server.identity_header", "other");
    }

    #[test]
    fn replace_and_remove_change_what_is_there() {
        let config = base().replace("identities.0.name", "other").remove("server.identity_header");
        let table = reparsed(&config);
        assert_eq!(table["identities"][0]["name"], Value::from("other"));
        assert!(!table["server"].as_table().unwrap().contains_key("identity_header"));
    }

    #[test]
    #[should_panic(expected = "server.allowed_hosts is not set")]
    fn replace_refuses_a_key_the_base_lacks() {
        let _ = base().replace("server.allowed_hosts", vec!["x"]);
    }

    #[test]
    #[should_panic(expected = "upstream.timeout_secs: there is no \"upstream\"")]
    fn replace_refuses_a_table_the_base_lacks() {
        let _ = base().replace("upstream.timeout_secs", 1);
    }

    #[test]
    #[should_panic(expected = "log.level is not set")]
    fn remove_refuses_a_key_the_base_lacks() {
        let _ = base().set("log.format", "json").remove("log.level");
    }

    #[test]
    #[should_panic(expected = "has no element 1")]
    fn an_index_past_the_end_panics() {
        let _ = base().replace("identities.1.name", "x");
    }

    #[test]
    fn credentials_and_push_build_chains_and_identities() {
        let config = base()
            .credentials([credential("client_secret").with("secret", "s"), credential("azure_cli")])
            .push("identities", table().with("name", "second"));
        let table = reparsed(&config);
        assert_eq!(table["identities"][0]["credentials"][1]["kind"], Value::from("azure_cli"));
        assert_eq!(table["identities"][1]["name"], Value::from("second"));
    }
}
