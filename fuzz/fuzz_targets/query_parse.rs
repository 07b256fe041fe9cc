//! `TokenQuery::parse` and `api_version_supported` on arbitrary query strings.
//!
//! The server hands `parse` the raw query of the request URI, a `&str`. Non-UTF-8 bytes are
//! converted lossily, so every input the fuzzer makes is used and the strings tried are a
//! superset of what hyper can deliver.
//!
//! Beyond "no panic", the result is checked against the decoded key/value pairs: every field
//! of a parsed query must be traceable to the input, and every error must name something
//! that is really wrong with it.

#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use tokenrelay::broker::Selector;
use tokenrelay::config::normalize_resource;
use tokenrelay::server::wire::{QueryError, TokenQuery, api_version_supported};

/// Every spelling of an identity selector the server accepts.
const SELECTORS: [&str; 7] =
    ["client_id", "clientid", "object_id", "principal_id", "msi_res_id", "mi_res_id", "msi-res-id"];

fuzz_target!(|data: &[u8]| {
    let query = String::from_utf8_lossy(data);
    let result = TokenQuery::parse(Some(&query));
    assert_eq!(result, TokenQuery::parse(Some(&query)), "parsing is deterministic");
    check_against_pairs(&query, &result);
    if let Ok(parsed) = &result
        && let Some(version) = &parsed.api_version
    {
        assert_eq!(api_version_supported(version), api_version_model(version), "{version:?}");
    }
    assert_eq!(api_version_supported(&query), api_version_model(&query), "{query:?}");
});

/// What the input says, decoded independently of the parser under test: for each key, how
/// often it occurs and its first value, trimmed as the parser trims.
struct Pairs {
    count: HashMap<String, usize>,
    first: HashMap<String, String>,
}

impl Pairs {
    fn new(query: &str) -> Self {
        let mut count = HashMap::new();
        let mut first = HashMap::new();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            *count.entry(key.to_string()).or_insert(0) += 1;
            first.entry(key.into_owned()).or_insert_with(|| value.trim().to_owned());
        }
        Self { count, first }
    }

    fn value(&self, key: &str) -> Option<&str> {
        self.first.get(key).map(String::as_str)
    }
}

fn check_against_pairs(query: &str, result: &Result<TokenQuery, QueryError>) {
    let pairs = Pairs::new(query);
    match result {
        Ok(parsed) => {
            assert!(pairs.count.values().all(|&n| n == 1), "accepted a repeated key: {query:?}");
            match pairs.value("resource") {
                None => assert_eq!(parsed.resource, None),
                Some(value) => {
                    let resource = parsed.resource.as_deref().expect("a given resource is reported");
                    assert!(!resource.is_empty());
                    assert_eq!(resource, normalize_resource(value));
                }
            }
            assert_eq!(parsed.api_version.as_deref(), pairs.value("api-version"));
            assert_ne!(parsed.api_version.as_deref(), Some(""));
            let given: Vec<&str> = SELECTORS.into_iter().filter(|s| pairs.count.contains_key(*s)).collect();
            assert!(given.len() <= 1, "accepted two selectors {given:?}: {query:?}");
            match (given.first(), &parsed.echo) {
                (None, None) => assert_eq!(parsed.selector, Selector::Default),
                (Some(&name), Some((echoed, value))) => {
                    assert_eq!(*echoed, name);
                    assert_eq!(Some(value.as_str()), pairs.value(name));
                    assert!(!value.is_empty());
                    let expected = match name {
                        "client_id" | "clientid" => Selector::ClientId(value.clone()),
                        "object_id" | "principal_id" => Selector::ObjectId(value.clone()),
                        _ => Selector::ResourceId(value.clone()),
                    };
                    assert_eq!(parsed.selector, expected);
                }
                (given, echo) => panic!("selector given {given:?} but echo {echo:?}: {query:?}"),
            }
        }
        Err(QueryError::Duplicate(key)) => {
            assert!(pairs.count.get(key).is_some_and(|&n| n >= 2), "{key:?} is not repeated in {query:?}");
        }
        Err(QueryError::ConflictingSelectors(a, b)) => {
            assert_ne!(a, b);
            for name in [a, b] {
                assert!(SELECTORS.contains(name) && pairs.count.contains_key(*name), "{name} not in {query:?}");
            }
        }
        Err(QueryError::Empty(name)) => {
            let value = pairs.value(name).expect("the empty parameter is in the query");
            assert!(value.is_empty() || (*name == "resource" && normalize_resource(value).is_empty()), "{name}");
        }
    }
}

/// An independent statement of the rule: `YYYY-MM-DD` on or after 2017-09-01, optionally
/// followed by a `-suffix`.
fn api_version_model(version: &str) -> bool {
    let bytes = version.as_bytes();
    if bytes.len() < 10 || (bytes.len() > 10 && bytes[10] != b'-') {
        return false;
    }
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        let digits = &bytes[range];
        digits.iter().all(u8::is_ascii_digit).then(|| std::str::from_utf8(digits).ok()?.parse().ok())?
    };
    match (number(0..4), bytes[4], number(5..7), bytes[7], number(8..10)) {
        (Some(year), b'-', Some(month), b'-', Some(day)) => (year, month, day) >= (2017, 9, 1),
        _ => false,
    }
}
