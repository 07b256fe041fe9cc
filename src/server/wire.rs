//! The wire format: query parameters in, the token body out (docs/protocols.md#what-every-client-needs).
//!
//! Pure data and parsing, no I/O, so the rules that every Azure SDK depends on are tested
//! here exhaustively.

use std::borrow::Cow;
use std::sync::Arc;

use serde::Serialize;

use crate::broker::{CachedToken, Selector};
use crate::config::normalize_resource;

/// The oldest `api-version` we accept; every SDK sends this or later.
const OLDEST_API_VERSION: &str = "2017-09-01";

/// A parsed token request. The resource and `api-version` borrow from the query string
/// unless decoding changed them, so a typical request allocates only for its escapes.
#[derive(Debug, PartialEq, Eq)]
pub struct TokenQuery<'q> {
    /// The resource, `/.default` stripped; `None` when absent.
    pub resource: Option<Cow<'q, str>>,
    /// Which identity.
    pub selector: Selector,
    /// The selector parameter as the caller spelled it, echoed in the response.
    pub echo: Option<(&'static str, String)>,
    /// The `api-version`, if given.
    pub api_version: Option<Cow<'q, str>>,
}

/// The parameters the service understands, in the order of the bits that mark them seen.
const KNOWN_PARAMETERS: [&str; 9] = [
    "resource",
    "api-version",
    "client_id",
    "clientid",
    "object_id",
    "principal_id",
    "msi_res_id",
    "mi_res_id",
    "msi-res-id",
];

/// The most query parameters a token request may carry. SDKs send two to four; the bound
/// keeps the duplicate check (a scan of the names seen so far) from growing with the
/// square of an arbitrary count.
pub const MAX_PARAMETERS: usize = 64;

/// What is wrong with a query; becomes a 400.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("query parameter {0:?} is given more than once")]
    Duplicate(String),
    #[error("more than {MAX_PARAMETERS} query parameters")]
    TooMany,
    #[error("give at most one of client_id, object_id, principal_id, msi_res_id, mi_res_id (got {0} and {1})")]
    ConflictingSelectors(&'static str, &'static str),
    #[error("query parameter {0:?} is empty")]
    Empty(&'static str),
}

impl<'q> TokenQuery<'q> {
    /// Parses a raw query string; values are percent-decoded (`+` is a space, as in forms).
    pub fn parse(query: Option<&'q str>) -> Result<Self, QueryError> {
        let mut resource = None;
        let mut api_version = None;
        let mut selector: Option<(&'static str, Selector, String)> = None;
        // Known parameters are marked in a bit set; only unknown ones, which SDKs do not send,
        // are remembered by name to find their duplicates.
        let mut seen_known = 0u16;
        let mut seen_unknown: Vec<Cow<'q, str>> = Vec::new();
        for (count, (key, value)) in query_pairs(query.unwrap_or("")).enumerate() {
            if count == MAX_PARAMETERS {
                return Err(QueryError::TooMany);
            }
            let Some(index) = KNOWN_PARAMETERS.iter().position(|known| *known == key) else {
                // Unknown parameters are ignored, as IMDS ignores them, but not repeated.
                if seen_unknown.contains(&key) {
                    return Err(QueryError::Duplicate(key.into_owned()));
                }
                seen_unknown.push(key);
                continue;
            };
            let name = KNOWN_PARAMETERS[index];
            if seen_known & (1 << index) != 0 {
                return Err(QueryError::Duplicate(name.to_owned()));
            }
            seen_known |= 1 << index;
            let value = map_cow(value, str::trim);
            if value.is_empty() {
                return Err(QueryError::Empty(name));
            }
            let chosen = match name {
                "resource" => {
                    let normalized = map_cow(value, normalize_resource);
                    if normalized.is_empty() {
                        return Err(QueryError::Empty(name));
                    }
                    resource = Some(normalized);
                    continue;
                }
                "api-version" => {
                    api_version = Some(value);
                    continue;
                }
                "client_id" | "clientid" => Selector::ClientId(value.clone().into_owned().into()),
                "object_id" | "principal_id" => Selector::ObjectId(value.clone().into_owned().into()),
                _ => Selector::ResourceId(value.clone().into_owned().into()),
            };
            if let Some((previous, ..)) = &selector {
                return Err(QueryError::ConflictingSelectors(previous, name));
            }
            selector = Some((name, chosen, value.into_owned()));
        }
        let (selector, echo) = match selector {
            Some((name, selector, value)) => (selector, Some((name, value))),
            None => (Selector::Default, None),
        };
        Ok(Self { resource, selector, echo, api_version })
    }
}

/// The `name=value` pairs of a query string, decoded as `application/x-www-form-urlencoded`
/// (the WHATWG URL standard's parser, which form_urlencoded also follows): empty pairs are
/// skipped, `+` is a space, `%XX` a byte, any other `%` itself, and bytes that are not UTF-8
/// after decoding become U+FFFD. A part with nothing to decode is borrowed, not copied.
fn query_pairs(query: &str) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    query.split('&').filter(|pair| !pair.is_empty()).map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        (decode_component(name), decode_component(value))
    })
}

/// One decoded query component (see [`query_pairs`]).
fn decode_component(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let Some(first) = bytes.iter().position(|&b| b == b'%' || b == b'+') else {
        return Cow::Borrowed(text);
    };
    // Runs between escapes are copied whole.
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    let mut next = Some(first);
    while let Some(at) = next {
        decoded.extend_from_slice(&rest[..at]);
        let (byte, used) = match rest[at] {
            b'+' => (b' ', 1),
            _ => match (rest.get(at + 1).map(hex_value), rest.get(at + 2).map(hex_value)) {
                (Some(high), Some(low)) if high | low < 16 => (high << 4 | low, 3),
                _ => (b'%', 1),
            },
        };
        decoded.push(byte);
        rest = &rest[at + used..];
        next = rest.iter().position(|&b| b == b'%' || b == b'+');
    }
    decoded.extend_from_slice(rest);
    match String::from_utf8(decoded) {
        Ok(text) => Cow::Owned(text),
        Err(error) => Cow::Owned(String::from_utf8_lossy(error.as_bytes()).into_owned()),
    }
}

/// The value of one hexadecimal digit, either case; 16 or more for any other byte.
fn hex_value(digit: &u8) -> u8 {
    HEX[usize::from(*digit)]
}

/// [`hex_value`] as a table: it is asked for two bytes of every escape.
static HEX: [u8; 256] = {
    let mut table = [u8::MAX; 256];
    let mut digit = 0;
    while digit < 10 {
        table[b'0' as usize + digit] = digit as u8;
        digit += 1;
    }
    let mut letter = 0;
    while letter < 6 {
        table[b'a' as usize + letter] = 10 + letter as u8;
        table[b'A' as usize + letter] = 10 + letter as u8;
        letter += 1;
    }
    table
};

/// `f` applied to a decoded value, without copying a borrowed one; an owned one is copied
/// only when `f` changed it.
fn map_cow<'q>(value: Cow<'q, str>, f: impl Fn(&str) -> &str) -> Cow<'q, str> {
    match value {
        Cow::Borrowed(borrowed) => Cow::Borrowed(f(borrowed)),
        Cow::Owned(owned) => {
            let mapped = f(&owned);
            if mapped.len() == owned.len() { Cow::Owned(owned) } else { Cow::Owned(mapped.to_owned()) }
        }
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

/// The success body for `entry`, served as `client_id` for `resource` at `now`, echoing the
/// selector the caller used, in a vector of its own (see [`TokenBody`]).
pub fn render_token_body(
    entry: &CachedToken,
    client_id: &str,
    resource: &str,
    now: u64,
    echo: Option<&(&'static str, String)>,
) -> Vec<u8> {
    let fixed = fixed_members(entry, client_id, resource);
    let mut body = Vec::with_capacity(max_body_len(entry, fixed, echo));
    write_body(&mut body, entry, fixed, now, echo);
    body
}

/// A served token's body, ready to be written where its reader wants it: the direct path
/// writes it into the connection's answer buffer after the head, hyper's path into a vector
/// of its own. Every number is a JSON string holding a decimal integer, because Rust's and
/// other SDKs' parsers accept nothing else for `expires_on`.
///
/// This is the cache-hit path, so it does not serialise: the members that never change for
/// a token are rendered once and kept with it, and each write copies the token and them and
/// appends the two relative lifetimes and the echo. Member order carries no meaning in JSON,
/// and no SDK depends on it.
pub struct TokenBody {
    /// Invariant: `entry.rendered` is set.
    entry: Arc<CachedToken>,
    now: u64,
    echo: Option<(&'static str, String)>,
}

impl TokenBody {
    /// The body for `entry`, served as `client_id` for `resource` at `now`, echoing the
    /// selector the caller used.
    pub fn new(
        entry: Arc<CachedToken>,
        client_id: &str,
        resource: &str,
        now: u64,
        echo: Option<(&'static str, String)>,
    ) -> Self {
        fixed_members(&entry, client_id, resource);
        Self { entry, now, echo }
    }

    /// At most how many bytes [`write_to`](Self::write_to) appends.
    pub fn max_len(&self) -> usize {
        max_body_len(&self.entry, self.fixed(), self.echo.as_ref())
    }

    /// Appends the body to `out`, which must have room for [`max_len`](Self::max_len) more
    /// bytes: growing it would leave a copy of the token in freed memory.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let capacity = out.capacity();
        write_body(out, &self.entry, self.fixed(), self.now, self.echo.as_ref());
        debug_assert_eq!(out.capacity(), capacity, "sized before the token went in");
    }

    /// The body in a vector of its own.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.max_len());
        self.write_to(&mut body);
        body
    }

    fn fixed(&self) -> &[u8] {
        self.entry.rendered.get().expect("set by TokenBody::new; a OnceLock once set stays set")
    }
}

/// `entry`'s members that never change, rendered on first use.
fn fixed_members<'e>(entry: &'e CachedToken, client_id: &str, resource: &str) -> &'e [u8] {
    entry.rendered.get_or_init(|| render_fixed_members(entry, client_id, resource))
}

/// At most how many bytes [`write_body`] appends.
fn max_body_len(entry: &CachedToken, fixed: &[u8], echo: Option<&(&'static str, String)>) -> usize {
    // The lifetimes are two members of at most 42 bytes.
    let echo_room = echo.map_or(0, |(name, value)| {
        // serde_json writes at most six bytes for a byte it escapes (`\u00XX`).
        let value_bytes = if needs_no_escaping(value) { value.len() } else { 6 * value.len() };
        name.len() + value_bytes + 8
    });
    entry.token.token.expose().len() + fixed.len() + 96 + echo_room
}

/// Appends the body of `entry` (whose fixed members are `fixed`) at `now` to `body`.
fn write_body(body: &mut Vec<u8>, entry: &CachedToken, fixed: &[u8], now: u64, echo: Option<&(&'static str, String)>) {
    let token = &entry.token;
    if fixed.first() == Some(&b'{') {
        // A token that needed escaping was rendered into the opening (see below).
        body.extend_from_slice(fixed);
    } else {
        body.extend_from_slice(b"{\"access_token\":\"");
        body.extend_from_slice(token.token.expose().as_bytes());
        body.push(b'"');
        body.extend_from_slice(fixed);
    }
    push_seconds(body, "expires_in", token.expires_on.saturating_sub(now));
    push_seconds(body, "ext_expires_in", token.ext_expires_on.saturating_sub(now));
    if let Some((name, value)) = echo
        && let Some(field) = echo_field(name)
    {
        body.extend_from_slice(b",\"");
        body.extend_from_slice(field.as_bytes());
        body.extend_from_slice(b"\":");
        // The value is the caller's and may hold anything: let serde_json escape it.
        serde_json::to_writer(&mut *body, value.as_str()).expect("writing a string to a Vec cannot fail");
    }
    body.push(b'}');
}

/// Whether `s` goes into a JSON string as it is: no quote, backslash or control character.
/// A fold rather than `all` so the compiler can check many bytes at once.
fn needs_no_escaping(s: &str) -> bool {
    !s.bytes().fold(false, |escape, b| escape | (b < 0x20) | (b == b'"') | (b == b'\\'))
}

/// The members that never change for a cached token. For a token that goes into JSON as it
/// is (every JWT: base64url and dots) that is the members after `access_token`, as
/// `,"client_id":…,"token_type":"Bearer"`, and each request writes the token in front: with
/// ten thousand cached tokens a second copy of each would double the cache's memory. Any
/// other token is rendered escaped, once, with the opening: `{"access_token":"…",…`.
/// Either way the object is left open for the per-request members.
fn render_fixed_members(entry: &CachedToken, client_id: &str, resource: &str) -> Box<[u8]> {
    #[derive(Serialize)]
    struct Fixed<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        access_token: Option<&'a str>,
        client_id: &'a str,
        expires_on: String,
        not_before: String,
        resource: &'a str,
        token_type: &'static str,
    }
    let token = &entry.token;
    let secret = token.token.expose();
    let plain = needs_no_escaping(secret);
    let fixed = Fixed {
        access_token: (!plain).then_some(secret),
        client_id,
        expires_on: token.expires_on.to_string(),
        not_before: token.not_before.to_string(),
        resource,
        token_type: "Bearer",
    };
    let mut rendered = serde_json::to_vec(&fixed).expect("plain strings always serialise");
    rendered.pop(); // the closing brace: the per-request members follow
    if plain {
        rendered[0] = b','; // the opening brace: the token comes first
    }
    rendered.into_boxed_slice()
}

/// Appends `,"name":"seconds"`.
fn push_seconds(body: &mut Vec<u8>, name: &str, seconds: u64) {
    body.extend_from_slice(b",\"");
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(b"\":\"");
    body.extend_from_slice(itoa::Buffer::new().format(seconds).as_bytes());
    body.push(b'"');
}

/// The response member that echoes a selector spelled `name` (MSAL fails closed on Arc
/// without it; harmless elsewhere). `client_id` is always present, so it is not echoed.
fn echo_field(name: &str) -> Option<&'static str> {
    match name {
        "object_id" | "principal_id" => Some("object_id"),
        "msi_res_id" | "msi-res-id" => Some("msi_res_id"),
        "mi_res_id" => Some("mi_res_id"),
        _ => None,
    }
}

/// The OAuth `error` code of an error body. The codes of RFC 6749 section 5.2 where one fits
/// (`invalid_request`, `unauthorized_client`), the ones Azure's managed-identity endpoints
/// use (`invalid_resource`, `temporarily_unavailable`), and three of tokenrelay's own for
/// answers those do not cover. Clients branch on the status code; the code names the case
/// for people and logs, so an existing one never changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OAuthError {
    /// A request that is malformed or names nothing this server can serve.
    InvalidRequest,
    /// The caller, or the configured application upstream, is not allowed a token.
    UnauthorizedClient,
    /// The authority does not know the requested resource (AADSTS500011).
    InvalidResource,
    /// Upstream trouble that may pass, or a request that waited too long.
    TemporarilyUnavailable,
    /// The authority's throttling, or the identity's allowance of new resources.
    Throttled,
    /// A request from a tokenrelay's `managed_identity` link (508).
    LoopDetected,
    /// A path that serves nothing.
    NotFound,
    /// The authority refused a user's token in an on-behalf-of exchange.
    InvalidGrant,
}

impl OAuthError {
    /// The code as it appears in the body's `error` member.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::InvalidResource => "invalid_resource",
            Self::TemporarilyUnavailable => "temporarily_unavailable",
            Self::Throttled => "throttled",
            Self::LoopDetected => "loop_detected",
            Self::NotFound => "not_found",
            Self::InvalidGrant => "invalid_grant",
        }
    }
}

impl std::fmt::Display for OAuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for OAuthError {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// The JSON error body every failure uses.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    pub error: OAuthError,
    pub error_description: &'a str,
    /// App Service flavour only (see `ApiError::into_app_service_response`).
    #[serde(rename = "statusCode", skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_value_is_the_digit_value_of_every_hex_digit_and_16_or_more_for_any_other_byte() {
        for byte in 0..=255u8 {
            match (byte as char).to_digit(16) {
                Some(digit) => assert_eq!(u32::from(super::hex_value(&byte)), digit, "{byte:#04x}"),
                None => assert!(super::hex_value(&byte) >= 16, "{byte:#04x}"),
            }
        }
    }

    use super::*;
    use proptest::prelude::*;

    /// The `error` member is the code's text: clients and logs have seen these strings, and
    /// a variant renamed in code must not rename it on the wire.
    #[test]
    fn error_codes_serialise_as_their_oauth_text() {
        let codes = [
            (OAuthError::InvalidRequest, "invalid_request"),
            (OAuthError::UnauthorizedClient, "unauthorized_client"),
            (OAuthError::InvalidResource, "invalid_resource"),
            (OAuthError::TemporarilyUnavailable, "temporarily_unavailable"),
            (OAuthError::Throttled, "throttled"),
            (OAuthError::LoopDetected, "loop_detected"),
            (OAuthError::NotFound, "not_found"),
            (OAuthError::InvalidGrant, "invalid_grant"),
        ];
        for (code, text) in codes {
            let body = ErrorBody { error: code, error_description: "d", status_code: None, message: None };
            assert_eq!(serde_json::to_value(&body).unwrap()["error"], text);
            assert_eq!(code.to_string(), text);
        }
    }

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
    fn at_most_64_parameters_are_read() {
        let query = |n: usize| {
            let unknown = (1..n).map(|i| format!("&p{i}=x")).collect::<String>();
            format!("resource=a{unknown}")
        };
        assert!(TokenQuery::parse(Some(&query(MAX_PARAMETERS))).is_ok(), "64 parameters are fine");
        assert_eq!(TokenQuery::parse(Some(&query(MAX_PARAMETERS + 1))), Err(QueryError::TooMany));
        // Thousands of distinct unknown parameters, each costing a comparison against every
        // one before it, are refused after the 64th; empty pairs (`&&`) are skipped and do
        // not count.
        assert_eq!(TokenQuery::parse(Some(&query(2700))), Err(QueryError::TooMany));
        assert!(TokenQuery::parse(Some(&format!("{}{}", "&".repeat(5000), query(10)))).is_ok());
        // A duplicate within the first 64 is still named as one.
        let duplicate = format!("{}&p1=y", query(10));
        assert_eq!(TokenQuery::parse(Some(&duplicate)), Err(QueryError::Duplicate("p1".into())));
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

    fn cached(token: &str) -> CachedToken {
        let token = crate::token::AccessToken {
            token: crate::secret::Secret::new(token),
            expires_on: 1_760_003_600,
            not_before: 1_759_996_400,
            ext_expires_on: 1_760_007_200,
            refresh_on: None,
        };
        CachedToken::new(token, 0, crate::broker::Origin::Persisted)
    }

    fn body_json(entry: &CachedToken, echo: Option<&(&'static str, String)>) -> serde_json::Value {
        let body = render_token_body(entry, "cid", "https://vault.azure.net", 1_760_000_001, echo);
        serde_json::from_slice(&body).expect("the body is JSON")
    }

    /// `max_len` bounds what `write_to` appends in the worst case: 20-digit lifetimes, a token
    /// that needs escaping, and an echo made of bytes serde_json escapes as `\u00XX`.
    #[test]
    fn the_body_never_outgrows_its_bound() {
        let worst_echo = "\u{1}\"\\\u{1f}".repeat(40);
        for token in ["plain.jwt.token", "quote\"and\u{1}control"] {
            for echo in [None, Some(("object_id", worst_echo.clone())), Some(("mi_res_id", "/plain".to_owned()))] {
                let entry = CachedToken::new(
                    crate::token::AccessToken {
                        token: crate::secret::Secret::new(token),
                        expires_on: u64::MAX,
                        not_before: u64::MAX,
                        ext_expires_on: u64::MAX,
                        refresh_on: None,
                    },
                    0,
                    crate::broker::Origin::Persisted,
                );
                let body = TokenBody::new(Arc::new(entry), "cid", "r", 0, echo.clone());
                let written = body.to_vec();
                assert!(written.len() <= body.max_len(), "{token:?} {echo:?}");
                let json: serde_json::Value = serde_json::from_slice(&written).expect("the body is JSON");
                assert_eq!(json["access_token"], token);
                assert_eq!(json["expires_in"], u64::MAX.to_string());
                if let Some((name, value)) = &echo {
                    assert_eq!(json[echo_field(name).unwrap()], value.as_str());
                }
            }
        }
    }

    #[test]
    fn numbers_are_strings_on_the_wire() {
        let json = body_json(&cached("tok"), None);
        assert_eq!(
            json,
            serde_json::json!({
                "access_token": "tok",
                "client_id": "cid",
                "expires_in": "3599",
                "expires_on": "1760003600",
                "ext_expires_in": "7199",
                "not_before": "1759996400",
                "resource": "https://vault.azure.net",
                "token_type": "Bearer",
            })
        );
    }

    #[test]
    fn the_lifetimes_follow_the_clock_while_the_rest_is_rendered_once() {
        let entry = cached("tok");
        let first = render_token_body(&entry, "cid", "r", 1_760_000_000, None);
        let later = render_token_body(&entry, "cid", "r", 1_760_000_600, None);
        let later: serde_json::Value = serde_json::from_slice(&later).unwrap();
        assert_eq!(later["expires_in"], "3000");
        assert_eq!(later["expires_on"], "1760003600");
        assert!(entry.rendered.get().is_some());
        assert!(serde_json::from_slice::<serde_json::Value>(&first).is_ok());
        // Past expiry the relative lifetime is zero, never negative.
        let expired = render_token_body(&entry, "cid", "r", 1_760_009_999, None);
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&expired).unwrap()["expires_in"], "0");
    }

    #[test]
    fn selectors_are_echoed_under_their_response_names() {
        let entry = cached("tok");
        for (name, field) in [
            ("object_id", Some("object_id")),
            ("principal_id", Some("object_id")),
            ("msi_res_id", Some("msi_res_id")),
            ("msi-res-id", Some("msi_res_id")),
            ("mi_res_id", Some("mi_res_id")),
            ("client_id", None),
        ] {
            let json = body_json(&entry, Some(&(name, "v".to_owned())));
            let echoed: Vec<_> =
                ["object_id", "msi_res_id", "mi_res_id"].into_iter().filter(|f| json.get(f).is_some()).collect();
            assert_eq!(echoed, field.into_iter().collect::<Vec<_>>(), "{name}");
            if let Some(field) = field {
                assert_eq!(json[field], "v");
            }
        }
    }

    #[test]
    fn a_token_that_needs_escaping_is_escaped() {
        for token in ["a\"b", "back\\slash", "line\nbreak", "tab\there", "\u{7f}\u{e9}"] {
            let json = body_json(&cached(token), None);
            assert_eq!(json["access_token"], token, "{token:?}");
            assert_eq!(needs_no_escaping(token), token.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\'));
        }
    }

    proptest! {
        #[test]
        fn any_token_is_written_as_valid_json(token in any::<String>()) {
            let json = body_json(&cached(&token), Some(&("mi_res_id", "v".to_owned())));
            prop_assert_eq!(json["access_token"].as_str(), Some(token.as_str()));
            prop_assert_eq!(json["token_type"].as_str(), Some("Bearer"));
        }

        #[test]
        fn any_echoed_value_is_escaped_into_valid_json(value in any::<String>()) {
            let json = body_json(&cached("tok"), Some(&("mi_res_id", value.clone())));
            prop_assert_eq!(json["mi_res_id"].as_str(), Some(value.as_str()));
            prop_assert_eq!(json["access_token"].as_str(), Some("tok"));
        }

        #[test]
        fn decoding_agrees_with_form_urlencoded(query in "([a-z=&+%]|%[0-9a-fA-F]{2}|%[0-9a-fA-F]|%[cdefCDEF][0-9a-fA-F]|.){0,60}") {
            let ours: Vec<_> = query_pairs(&query).collect();
            let reference: Vec<_> = form_urlencoded::parse(query.as_bytes()).collect();
            prop_assert_eq!(ours, reference);
        }

        #[test]
        fn parsing_never_panics(query in ".{0,200}") {
            let _ = TokenQuery::parse(Some(&query));
        }

        #[test]
        fn any_encoded_resource_round_trips(resource in "[a-zA-Z0-9:/._~ -]{1,60}") {
            let encoded: String = form_urlencoded::byte_serialize(resource.as_bytes()).collect();
            let expected = normalize_resource(resource.trim());
            prop_assume!(!expected.is_empty());
            let query = format!("resource={encoded}");
            let q = TokenQuery::parse(Some(&query)).unwrap();
            prop_assert_eq!(q.resource.as_deref(), Some(expected));
        }
    }
}
