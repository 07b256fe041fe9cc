//! Every problem of a configuration in one report.
//!
//! serde stops at the first unknown key or mistyped value, so an operator with six bad
//! variables would restart six times. [`extract`] instead deserializes a copy of the merged
//! values repeatedly, each time recording the problem serde stopped at and removing the value
//! it names, until the rest deserializes (built-in defaults fill the gaps). The checks that
//! relate values ([`super::Validator`]) then run on that remainder, except for the sections
//! whose values a removal changed ([`Disturbed`]): their verdicts would be about defaults the
//! operator never wrote.

use std::collections::{HashMap, HashSet};
use std::fmt;

use figment::Figment;
use figment::error::Kind;
use figment::value::Value;

use super::raw::RawConfig;
use super::{ConfigError, sources};

/// At most this many problems are listed; a file this broken is better fixed from the top.
const MAX_PROBLEMS: usize = 64;

/// One or more configuration problems, in the order they were found.
#[derive(Debug)]
pub struct ConfigErrors {
    problems: Vec<ConfigError>,
    /// Whether more problems exist than are listed.
    truncated: bool,
}

impl ConfigErrors {
    pub(super) fn new(problems: Vec<ConfigError>) -> Self {
        assert!(!problems.is_empty(), "a configuration error has at least one problem");
        Self { problems, truncated: false }
    }

    /// Every problem found.
    pub fn problems(&self) -> &[ConfigError] {
        &self.problems
    }

    /// The first problem (what a caller that handles one at a time looks at).
    pub fn into_first(self) -> ConfigError {
        self.problems.into_iter().next().expect("at least one problem")
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        Self::new(vec![error])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problems.as_slice() {
            [only] if !self.truncated => only.fmt(f),
            problems => {
                let more = if self.truncated { " or more" } else { "" };
                write!(f, "invalid configuration ({}{more} problems):", problems.len())?;
                for p in problems {
                    write!(f, "\n  - {} (from {}): {}", p.key, p.origin, p.problem)?;
                }
                if self.truncated {
                    write!(f, "\n  - (only the first {MAX_PROBLEMS} are listed)")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigErrors {}

/// Sections whose values the extraction replaced by defaults (or whose checks read values
/// that it did), and whose checks are therefore skipped.
///
/// The checks of a section read only that section's values, with two exceptions this type
/// encodes: `dev.enabled` changes what every section requires, and a `user` credential reads
/// `cache.persistence` from the figment itself (where a removed value is still present).
#[derive(Debug, Default)]
pub(super) struct Disturbed {
    all: bool,
    sections: HashSet<String>,
}

impl Disturbed {
    pub(super) fn contains(&self, section: &str) -> bool {
        self.all || self.sections.contains(section)
    }

    /// Records a problem at `path` (original indices); `replaced`: its value was removed and
    /// a default took its place (a mistyped value), rather than an unknown key dropped.
    fn record(&mut self, path: &[String], replaced: bool) {
        let section = path.first().map(String::as_str);
        if path.starts_with(&["cache".to_owned(), "persistence".to_owned()]) {
            self.sections.insert("identities".to_owned());
        }
        if replaced {
            match section {
                None | Some("dev") => self.all = true,
                Some(section) => {
                    self.sections.insert(section.to_owned());
                }
            }
        }
    }
}

/// The configuration with every value that deserializes, and the problems of the others.
pub(super) struct Extracted {
    pub raw: RawConfig,
    pub problems: Vec<ConfigError>,
    pub disturbed: Disturbed,
}

/// Deserializes `figment`, collecting every unknown key and mistyped value. `Err` when the
/// remainder cannot be deserialized at all (a file that is not TOML, a problem at the root).
pub(super) fn extract(figment: &Figment) -> Result<Extracted, ConfigErrors> {
    let first = match figment.extract::<RawConfig>() {
        Ok(raw) => return Ok(Extracted { raw, problems: Vec::new(), disturbed: Disturbed::default() }),
        Err(error) => error,
    };
    // A provider that failed as a whole (a TOML file that does not parse) leaves no values to
    // walk; figment's own error says what and where.
    let Ok(mut value) = figment.find_value("") else {
        return Err(from_figment_error(figment, first));
    };
    let mut problems = Vec::new();
    let mut disturbed = Disturbed::default();
    // Per array (by its original path): how many elements were removed. serde visits array
    // elements in order and stops at the first bad one, so every removed element of an array
    // precedes every later problem in it, and an index the walk reports is the original index
    // minus that count.
    let mut removed: HashMap<String, usize> = HashMap::new();
    // The path (in the walked copy) of the last removal.
    let mut last_removed: Vec<String> = Vec::new();
    loop {
        let error = match value.deserialize::<RawConfig>() {
            Ok(raw) if !problems.is_empty() => return Ok(Extracted { raw, problems, disturbed }),
            // The copy deserializes where figment did not: report figment's verdict as is.
            Ok(_) => return Err(from_figment_error(figment, first)),
            Err(error) => error,
        };
        if problems.len() == MAX_PROBLEMS {
            return Err(ConfigErrors { problems, truncated: true });
        }
        let Some(error) = error.into_iter().next() else {
            return Err(ConfigErrors::new(problems));
        };
        let replaced = !matches!(error.kind, Kind::UnknownField(..));
        let Some(location) = locate(&value, &error, &removed) else {
            problems.push(problem(figment, &error.path, &error.kind));
            return Err(ConfigErrors::new(problems));
        };
        // A table whose tag (a credential's `kind`) was just removed as unknown then misses
        // it: that is the same problem, not a second one.
        let consequence = matches!(error.kind, Kind::MissingField(_))
            && last_removed.split_last().is_some_and(|(_, parent)| parent == location.walked.as_slice());
        if !consequence {
            problems.push(problem(figment, &location.original, &error.kind));
        }
        disturbed.record(&location.original, replaced);
        last_removed.clone_from(&location.walked);
        if !remove(&mut value, &location.walked) {
            return Err(ConfigErrors::new(problems));
        }
        if let Some(array) = location.array {
            *removed.entry(array).or_default() += 1;
        }
    }
}

/// The figment error of a failed `extract`, one problem per error it chains.
fn from_figment_error(figment: &Figment, error: figment::Error) -> ConfigErrors {
    let problems: Vec<ConfigError> = error
        .into_iter()
        .take(MAX_PROBLEMS)
        .map(|e| {
            let key = if e.path.is_empty() { "configuration".to_owned() } else { e.path.join(".") };
            let origin = match &e.metadata {
                Some(_) => sources::describe_metadata(e.metadata.as_ref(), &e.path),
                None => sources::source_of(figment, &key),
            };
            ConfigError { key, origin, problem: e.kind.to_string() }
        })
        .collect();
    if problems.is_empty() {
        ConfigErrors::new(vec![ConfigError {
            key: "configuration".into(),
            origin: "configuration".into(),
            problem: "cannot be read".into(),
        }])
    } else {
        ConfigErrors::new(problems)
    }
}

fn problem(figment: &Figment, path: &[String], kind: &Kind) -> ConfigError {
    let key = if path.is_empty() { "configuration".to_owned() } else { path.join(".") };
    let problem = match kind {
        Kind::UnknownField(_, []) => "unknown key: this table has no keys".to_owned(),
        Kind::UnknownField(_, expected) => format!("unknown key; the keys here are {}", expected.join(", ")),
        Kind::UnknownVariant(found, expected) => format!("{found:?} is not one of {}", expected.join(", ")),
        other => other.to_string(),
    };
    ConfigError { origin: sources::source_of(figment, &key), key, problem }
}

/// Where a deserialization error is, in the value being walked and in the original.
struct Location {
    /// Path in the walked copy (indices shifted by earlier removals).
    walked: Vec<String>,
    /// The same path with original indices: the key reported.
    original: Vec<String>,
    /// The original path of the array the value is an element of, if it is one.
    array: Option<String>,
}

fn locate(value: &Value, error: &figment::Error, removed: &HashMap<String, usize>) -> Option<Location> {
    let mut walked = error.path.clone();
    // An unknown key inside an internally tagged enum (a credential table) is reported at the
    // table, because serde buffers the table first; the key itself is one level down.
    if let Kind::UnknownField(field, _) = &error.kind
        && walked.last() != Some(field)
        && matches!(value_at(value, &walked), Some(Value::Dict(_, dict)) if dict.contains_key(field))
    {
        walked.push(field.clone());
    }
    if walked.is_empty() {
        return None;
    }
    let mut original = Vec::with_capacity(walked.len());
    let mut array = None;
    let mut node = value;
    for segment in &walked {
        array = None;
        node = match node {
            Value::Dict(_, dict) => {
                original.push(segment.clone());
                dict.get(segment)?
            }
            Value::Array(_, items) => {
                let index: usize = segment.parse().ok()?;
                let parent = original.join(".");
                original.push((index + removed.get(&parent).copied().unwrap_or(0)).to_string());
                array = Some(parent);
                items.get(index)?
            }
            _ => return None,
        };
    }
    Some(Location { walked, original, array })
}

fn value_at<'v>(value: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(value, |node, segment| match node {
        Value::Dict(_, dict) => dict.get(segment),
        Value::Array(_, items) => items.get(segment.parse::<usize>().ok()?),
        _ => None,
    })
}

/// Removes the value at `path`; false when there is none (nothing would change).
fn remove(value: &mut Value, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else { return false };
    let mut node = value;
    for segment in parents {
        node = match node {
            Value::Dict(_, dict) => match dict.get_mut(segment) {
                Some(child) => child,
                None => return false,
            },
            Value::Array(_, items) => match segment.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                Some(child) => child,
                None => return false,
            },
            _ => return false,
        };
    }
    match node {
        Value::Dict(_, dict) => dict.remove(last).is_some(),
        Value::Array(_, items) => match last.parse::<usize>() {
            Ok(index) if index < items.len() => {
                items.remove(index);
                true
            }
            _ => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::Write;

    use figment::Figment;
    use figment::providers::{Format, Serialized, Toml};

    use super::super::{Config, FlagOverrides, RawConfig, ServerFlags};
    use super::*;

    /// A TOML file (so problems name it) under the built-in defaults, and optional flags.
    struct Case {
        file: tempfile::NamedTempFile,
        flags: FlagOverrides,
    }

    impl Case {
        fn new(toml: &str) -> Self {
            let mut file = tempfile::NamedTempFile::new().unwrap();
            file.write_all(toml.as_bytes()).unwrap();
            Self { file, flags: FlagOverrides::default() }
        }

        fn problems(&self) -> ConfigErrors {
            let figment = Figment::from(Serialized::defaults(RawConfig::default()))
                .merge(Toml::file(self.file.path()))
                .merge(Serialized::defaults(&self.flags));
            Config::from_figment_all(&figment, &HashMap::new()).unwrap_err()
        }

        fn keys(&self) -> Vec<String> {
            self.problems().problems().iter().map(|p| p.key.clone()).collect()
        }
    }

    const VALID: &str = "[dev]\nenabled = true\n";

    #[test]
    fn every_unknown_key_and_mistyped_value_is_reported_with_its_source() {
        let case = Case::new(&format!(
            "{VALID}[server]\nlistn = \"x\"\nmax_connections = \"many\"\n[upstream]\ntimeout = 5\n\
             [cache.persistence]\nenabld = true\n[log]\nlevel = 3\n"
        ));
        let errors = case.problems();
        let keys: Vec<&str> = errors.problems().iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["cache.persistence.enabld", "log.level", "server.listn", "server.max_connections", "upstream.timeout"]
        );
        let file = case.file.path().display().to_string();
        for problem in errors.problems() {
            assert_eq!(problem.origin, format!("TOML file {file}"), "{problem}");
        }
        let text = errors.to_string();
        assert!(text.starts_with("invalid configuration (5 problems):\n  - "), "{text}");
        assert!(text.contains("unknown key; the keys here are listen, admin_listen"), "{text}");
        assert!(text.contains("expected usize"), "{text}");
    }

    #[test]
    fn failed_checks_of_other_sections_are_listed_with_the_unknown_keys() {
        let mut case = Case::new(&format!(
            "{VALID}[server]\nlistn = \"x\"\n[upstream]\ncloud = \"mars\"\n[log]\nformat = \"xml\"\n"
        ));
        case.flags.server = Some(ServerFlags { listen: Some("nowhere".into()), ..ServerFlags::default() });
        let errors = case.problems();
        let found: Vec<(&str, &str)> = errors.problems().iter().map(|p| (p.key.as_str(), p.origin.as_str())).collect();
        let file = format!("TOML file {}", case.file.path().display());
        assert_eq!(
            found,
            [
                ("server.listn", file.as_str()),
                ("server.listen", "command-line flags"),
                ("upstream.cloud", file.as_str()),
                ("log.format", file.as_str()),
            ]
        );
    }

    #[test]
    fn every_bad_value_of_the_log_section_is_listed() {
        let keys =
            Case::new(&format!("{VALID}[log]\nformat = \"xml\"\nlevel = \"tokenrelay=loud\"\nrequests = \"some\"\n"))
                .keys();
        assert_eq!(keys, ["log.format", "log.level", "log.requests"]);
    }

    #[test]
    fn a_section_with_a_mistyped_value_is_not_checked_further() {
        // server.listen is wrong too, but server.max_connections took its default: the
        // section's checks would judge values the operator did not write.
        let keys = Case::new(&format!(
            "{VALID}[server]\nlisten = \"nowhere\"\nmax_connections = \"many\"\n[log]\nformat = \"xml\"\n"
        ))
        .keys();
        assert_eq!(keys, ["server.max_connections", "log.format"]);
        // A mistyped dev switch changes what every section needs: nothing else is checked.
        let keys = Case::new("[dev]\nenabled = \"yes\"\n[log]\nformat = \"xml\"\n").keys();
        assert_eq!(keys, ["dev.enabled"]);
    }

    #[test]
    fn array_elements_keep_their_original_indices() {
        let keys = Case::new(
            "[server]\napp_service = false\n[[identities]]\nclient_id = \"a\"\ncredentials = [{ kind = \"nope\" }, { kind = \"azure_cli\", \
             timeout_secs = \"x\" }, { kind = \"client_secret\", secrt = \"s\" }]\n\
             [[identities]]\nclient_id = 5\n",
        )
        .keys();
        assert_eq!(
            keys,
            [
                "identities.0.credentials.0.kind",
                "identities.0.credentials.1",
                "identities.0.credentials.2.secrt",
                "identities.1.client_id",
            ]
        );
    }

    #[test]
    fn each_identity_reports_its_own_first_problem() {
        let keys = Case::new(
            "[server]\napp_service = false\n\
             [[identities]]\nclient_id = \"a\"\ntenant_id = \"not a tenant\"\ncredentials = [{ kind = \"azure_cli\" }]\n\
             [[identities]]\nclient_id = \" \"\n",
        )
        .keys();
        assert_eq!(keys, ["identities.0.tenant_id", "identities.1.client_id"]);
    }

    #[test]
    fn one_problem_reads_as_before_and_the_first_is_the_test_seam() {
        let case = Case::new(&format!("{VALID}[server]\nlisten = \"nowhere\"\n"));
        let errors = case.problems();
        assert_eq!(errors.problems().len(), 1);
        let text = errors.to_string();
        assert_eq!(text, errors.into_first().to_string());
        assert!(text.starts_with("invalid configuration: server.listen (from TOML file "), "{text}");
    }

    #[test]
    fn a_file_that_is_not_toml_is_one_problem() {
        let errors = Case::new("[server\nlisten = 1").problems();
        assert_eq!(errors.problems().len(), 1, "{errors}");
        assert!(errors.to_string().contains("TOML"), "{errors}");
    }

    #[test]
    fn disturbed_sections_follow_the_dependencies_between_checks() {
        let path = |p: &str| p.split('.').map(str::to_owned).collect::<Vec<_>>();
        let mut disturbed = Disturbed::default();
        disturbed.record(&path("server.listn"), false);
        assert!(!disturbed.contains("server"), "an unknown key changes no value");
        disturbed.record(&path("cache.persistence.enabld"), false);
        assert!(disturbed.contains("identities") && !disturbed.contains("cache"), "user credentials read it");
        disturbed.record(&path("log.level"), true);
        assert!(disturbed.contains("log") && !disturbed.contains("server"));
        disturbed.record(&path("dev.enabled"), true);
        assert!(disturbed.contains("server") && disturbed.contains("upstream"));
    }

    #[test]
    fn the_list_is_bounded() {
        let toml: String = (0..MAX_PROBLEMS + 10).map(|i| format!("unknown_{i:03} = 1\n")).collect();
        let errors = Case::new(&toml).problems();
        assert_eq!(errors.problems().len(), MAX_PROBLEMS);
        let text = errors.to_string();
        assert!(text.starts_with(&format!("invalid configuration ({MAX_PROBLEMS} or more problems)")), "{text}");
        assert!(text.ends_with(&format!("(only the first {MAX_PROBLEMS} are listed)")), "{text}");
    }
}
