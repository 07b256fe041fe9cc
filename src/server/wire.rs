//! The wire format: query parameters in, the token body out (protocols.md section 0).
//!
//! Pure data and parsing, no I/O, so the rules that every Azure SDK depends on are tested
//! here exhaustively.

use std::borrow::Cow;

use serde::Serialize;

use crate::broker::{CachedToken, Selector};
use crate::config::normalize_resource;

/// The oldest `api-version` we accept; every SDK sends this or later.
const OLDEST_API_VERSION: &str = "2017-09-01";

/// A parsed token request.
#[derive(Debug, PartialEq, Eq)]
pub struct TokenQuery {
    /// The resource, `/.default` stripped; `None` when absent.
    pub resource: Option<String>,
    /// Which identity.
    pub selector: Selector,
    /// The selector parameter as the caller spelled it, echoed in the response.
    pub echo: Option<(&'static str, String)>,
    /// The `api-version`, if given.
    pub api_version: Option<String>,
}

/// What is wrong with a query; becomes a 400.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("query parameter {0:?} is given more than once")]
    Duplicate(String),
    #[error("give at most one of client_id, object_id, principal_id, msi_res_id, mi_res_id (got {0} and {1})")]
    ConflictingSelectors(&'static str, &'static str),
    #[error("query parameter {0:?} is empty")]
    Empty(&'static str),
}

impl TokenQuery {
    /// Parses a raw query string; values are percent-decoded (`+` is a space, as in forms).
    pub fn parse(query: Option<&str>) -> Result<Self, QueryError> {
        let mut resource = None;
        let mut api_version = None;
        let mut selector: Option<(&'static str, Selector, String)> = None;
        let mut seen: Vec<Cow<'_, str>> = Vec::new();
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            if seen.contains(&key) {
                return Err(QueryError::Duplicate(key.into_owned()));
            }
            let name: &'static str = match key.as_ref() {
                "resource" => "resource",
                "api-version" => "api-version",
                "client_id" => "client_id",
                "clientid" => "clientid",
                "object_id" => "object_id",
                "principal_id" => "principal_id",
                "msi_res_id" => "msi_res_id",
                "mi_res_id" => "mi_res_id",
                "msi-res-id" => "msi-res-id",
                _ => {
                    // Unknown parameters are ignored, as IMDS ignores them.
                    seen.push(key);
                    continue;
                }
            };
            seen.push(key);
            let value = value.trim();
            if value.is_empty() {
                return Err(QueryError::Empty(name));
            }
            let chosen = match name {
                "resource" => {
                    let normalized = normalize_resource(value);
                    if normalized.is_empty() {
                        return Err(QueryError::Empty(name));
                    }
                    resource = Some(normalized.to_owned());
                    continue;
                }
                "api-version" => {
                    api_version = Some(value.to_owned());
                    continue;
                }
                "client_id" | "clientid" => Selector::ClientId(value.to_owned()),
                "object_id" | "principal_id" => Selector::ObjectId(value.to_owned()),
                _ => Selector::ResourceId(value.to_owned()),
            };
            if let Some((previous, ..)) = &selector {
                return Err(QueryError::ConflictingSelectors(previous, name));
            }
            selector = Some((name, chosen, value.to_owned()));
        }
        let (selector, echo) = match selector {
            Some((name, selector, value)) => (selector, Some((name, value))),
            None => (Selector::Default, None),
        };
        Ok(Self { resource, selector, echo, api_version })
    }
}

/// Whether `version` (`YYYY-MM-DD`, optionally with a suffix such as `-preview`) is one we
/// serve: 2017-09-01 or later, later unknown versions included.
pub fn api_version_supported(version: &str) -> bool {
    let date = version.get(..10).unwrap_or("");
    let well_formed = date.len() == 10
        && date.bytes().enumerate().all(|(i, b)| if i == 4 || i == 7 { b == b'-' } else { b.is_ascii_digit() });
    well_formed && date >= OLDEST_API_VERSION && (version.len() == 10 || version.as_bytes()[10] == b'-')
}

/// The success body. Every number is a JSON string holding a decimal integer, because
/// Rust's and other SDKs' parsers accept nothing else for `expires_on`.
#[derive(Debug, Serialize)]
pub struct TokenBody<'a> {
    pub access_token: &'a str,
    pub client_id: &'a str,
    pub expires_in: String,
    pub expires_on: String,
    pub ext_expires_in: String,
    pub not_before: String,
    pub resource: &'a str,
    pub token_type: &'static str,
    /// The selector echoed back (MSAL fails closed on Arc without it; harmless elsewhere).
    #[serde(skip_serializing_if = "Option::is_none", rename = "object_id")]
    pub echo_object_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none", rename = "msi_res_id")]
    pub echo_msi_res_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none", rename = "mi_res_id")]
    pub echo_mi_res_id: Option<&'a str>,
}

impl<'a> TokenBody<'a> {
    /// The body for `entry`, served as `client_id` for `resource` at `now`, echoing the
    /// selector the caller used.
    pub fn new(
        entry: &'a CachedToken,
        client_id: &'a str,
        resource: &'a str,
        now: u64,
        echo: Option<&'a (&'static str, String)>,
    ) -> Self {
        let token = &entry.token;
        let echo = |names: &[&str]| echo.filter(|(n, _)| names.contains(n)).map(|(_, v)| v.as_str());
        Self {
            access_token: token.token.expose(),
            client_id,
            expires_in: token.expires_on.saturating_sub(now).to_string(),
            expires_on: token.expires_on.to_string(),
            ext_expires_in: token.ext_expires_on.saturating_sub(now).to_string(),
            not_before: token.not_before.to_string(),
            resource,
            token_type: "Bearer",
            echo_object_id: echo(&["object_id", "principal_id"]),
            echo_msi_res_id: echo(&["msi_res_id", "msi-res-id"]),
            echo_mi_res_id: echo(&["mi_res_id"]),
        }
    }
}

/// The JSON error body every failure uses.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    pub error: &'a str,
    pub error_description: &'a str,
    /// App Service flavour only (see `ApiError::into_app_service_response`).
    #[serde(rename = "statusCode", skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_resource_selectors_and_decodes() {
        let q = TokenQuery::parse(Some(
            "api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net%2F.default&client_id=abc",
        ))
        .unwrap();
        assert_eq!(q.resource.as_deref(), Some("https://vault.azure.net"));
        assert_eq!(q.selector, Selector::ClientId("abc".into()));
        assert_eq!(q.echo, Some(("client_id", "abc".into())));
        assert_eq!(q.api_version.as_deref(), Some("2018-02-01"));
    }

    #[test]
    fn every_selector_spelling_is_understood() {
        let cases = [
            ("client_id=x", Selector::ClientId("x".into())),
            ("clientid=x", Selector::ClientId("x".into())),
            ("object_id=x", Selector::ObjectId("x".into())),
            ("principal_id=x", Selector::ObjectId("x".into())),
            ("msi_res_id=%2Fsubscriptions%2Fs", Selector::ResourceId("/subscriptions/s".into())),
            ("mi_res_id=x", Selector::ResourceId("x".into())),
            ("msi-res-id=x", Selector::ResourceId("x".into())),
            ("", Selector::Default),
        ];
        for (query, expected) in cases {
            assert_eq!(TokenQuery::parse(Some(query)).unwrap().selector, expected, "{query}");
        }
        assert_eq!(TokenQuery::parse(None).unwrap().selector, Selector::Default);
    }

    #[test]
    fn rejects_duplicates_conflicts_and_empty_values() {
        assert_eq!(TokenQuery::parse(Some("resource=a&resource=b")), Err(QueryError::Duplicate("resource".into())));
        assert_eq!(
            TokenQuery::parse(Some("client_id=a&object_id=b")),
            Err(QueryError::ConflictingSelectors("client_id", "object_id"))
        );
        assert_eq!(TokenQuery::parse(Some("resource=")), Err(QueryError::Empty("resource")));
        // Unknown parameters are ignored.
        assert!(TokenQuery::parse(Some("resource=a&bypass_cache=true")).is_ok());
    }

    #[test]
    fn api_versions_from_2017_09_01_on() {
        for ok in
            ["2017-09-01", "2018-02-01", "2019-08-01", "2021-02-01", "2025-04-07", "2030-01-01", "2019-07-01-preview"]
        {
            assert!(api_version_supported(ok), "{ok}");
        }
        for bad in ["2017-08-01", "2017-03-01", "", "latest", "2018-2-1", "2018-02-01x", "abcd-ef-gh"] {
            assert!(!api_version_supported(bad), "{bad}");
        }
    }

    #[test]
    fn numbers_are_strings_on_the_wire() {
        let body = TokenBody {
            access_token: "tok",
            client_id: "cid",
            expires_in: 3599.to_string(),
            expires_on: 1760000000.to_string(),
            ext_expires_in: 3599.to_string(),
            not_before: 1759996400.to_string(),
            resource: "https://vault.azure.net",
            token_type: "Bearer",
            echo_object_id: None,
            echo_msi_res_id: None,
            echo_mi_res_id: None,
        };
        let json: serde_json::Value = serde_json::to_value(&body).unwrap();
        for field in ["expires_in", "expires_on", "ext_expires_in", "not_before"] {
            assert!(json[field].is_string(), "{field} must be a string");
            assert!(json[field].as_str().unwrap().parse::<u64>().is_ok());
        }
        assert_eq!(json["token_type"], "Bearer");
        assert!(json.get("object_id").is_none());
    }

    proptest! {
        #[test]
        fn parsing_never_panics(query in ".{0,200}") {
            let _ = TokenQuery::parse(Some(&query));
        }

        #[test]
        fn any_encoded_resource_round_trips(resource in "[a-zA-Z0-9:/._~ -]{1,60}") {
            let encoded: String = form_urlencoded::byte_serialize(resource.as_bytes()).collect();
            let expected = normalize_resource(resource.trim());
            prop_assume!(!expected.is_empty());
            let q = TokenQuery::parse(Some(&format!("resource={encoded}"))).unwrap();
            prop_assert_eq!(q.resource.as_deref(), Some(expected));
        }
    }
}
