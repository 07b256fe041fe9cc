//! The Entra token-endpoint response parsers, exactly as `EntraClient::send_once` calls them:
//! `parse_token_response` (client credentials) and `parse_user_token_response` (device code and
//! refresh token, followed by `user::account`, which names the signed-in account from
//! `client_info` or the ID token) for a 2xx body, and `ErrorResponse::parse` (with `aadsts`,
//! `scrubbed` and `first_line`) for any other.
//!
//! The input is the raw response body. Results are checked against the same body read as a
//! plain `serde_json::Value`, so a parsed token must be what the JSON says, never garbage.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tokenrelay::credential::entra::relayed::MAX_RELAYED_CHARS;
use tokenrelay::credential::entra::{ErrorResponse, parse_token_response, parse_user_token_response};
use tokenrelay::credential::user::account;

/// A realistic request time (2026-11-29), where an absurd `expires_in` can overflow.
const ISSUED_AT: u64 = 1_795_910_400;

fuzz_target!(|body: &[u8]| {
    // serde_json skips the strings of unknown fields without checking their UTF-8, so the
    // product may accept a body that `Value` (which keeps everything) refuses. Such bytes can
    // only sit inside strings, where a lossy conversion keeps the structure and known fields.
    let json: Option<Value> = serde_json::from_str(&String::from_utf8_lossy(body)).ok();
    for issued_at in [ISSUED_AT, 0] {
        check_token_response(body, issued_at, json.as_ref());
        check_user_token_response(body, issued_at, json.as_ref());
    }
    check_error_response(body, json.as_ref());
});

/// Seconds as Entra sends them: a number, or a string holding one (whitespace allowed).
fn seconds(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn check_token_response(body: &[u8], issued_at: u64, json: Option<&Value>) {
    let Ok(token) = parse_token_response(body, issued_at) else { return };
    // serde's derive also reads a struct from a JSON array, its fields in declaration order.
    let json = json.expect("an accepted body is JSON");
    let field = |name: &str, position: usize| match json {
        Value::Array(items) => items.get(position),
        _ => json.get(name),
    };
    assert_eq!(Some(token.token.expose()), field("access_token", 0).and_then(Value::as_str));
    let expires_in = field("expires_in", 1).and_then(seconds).expect("an accepted expires_in is a number of seconds");
    assert_eq!(token.not_before, issued_at);
    assert_eq!(token.expires_on, issued_at.saturating_add(expires_in));
    let ext_expires_in = field("ext_expires_in", 2).map(|v| seconds(v).expect("readable ext_expires_in"));
    assert_eq!(token.ext_expires_on, issued_at.saturating_add(ext_expires_in.unwrap_or(expires_in)));
    let refresh_in = field("refresh_in", 3).map(|v| seconds(v).expect("readable refresh_in"));
    assert_eq!(token.refresh_on, refresh_in.map(|r| issued_at.saturating_add(r)));
    // A token is never reported as expiring before it was issued.
    assert!(token.expires_on >= token.not_before && token.ext_expires_on >= token.not_before);
}

fn check_user_token_response(body: &[u8], issued_at: u64, json: Option<&Value>) {
    let plain = parse_token_response(body, issued_at);
    let Ok(user) = parse_user_token_response(body, issued_at) else {
        assert!(plain.is_err(), "what the client-credentials grant reads, a user grant reads too");
        return;
    };
    // The access token and its times are read exactly as the client-credentials grant reads them.
    let plain = plain.expect("a user token response is a token response");
    assert_eq!(user.access.token.expose(), plain.token.expose());
    assert_eq!(
        (user.access.expires_on, user.access.not_before, user.access.ext_expires_on, user.access.refresh_on),
        (plain.expires_on, plain.not_before, plain.ext_expires_on, plain.refresh_on)
    );
    let json = json.expect("an accepted body is JSON");
    let field = |name: &str, position: usize| match json {
        Value::Array(items) => items.get(position),
        _ => json.get(name),
    };
    assert_eq!(user.refresh_token.as_ref().map(|t| t.expose()), field("refresh_token", 4).and_then(Value::as_str));
    assert_eq!(user.id_token.as_ref().map(|t| t.expose()), field("id_token", 5).and_then(Value::as_str));
    assert_eq!(user.client_info.as_deref(), field("client_info", 6).and_then(Value::as_str));
    // Naming the account never panics, and a named account is `<object id>.<its tenant>`.
    if let Some(account) = account(user.client_info.as_deref(), user.id_token.as_ref().map(|t| t.expose())) {
        assert!(!account.tenant_id.is_empty(), "{account:?}");
        let object = account.home_account_id.strip_suffix(&format!(".{}", account.tenant_id));
        assert!(object.is_some_and(|o| !o.is_empty()), "{account:?}");
    }
}

fn check_error_response(body: &[u8], json: Option<&Value>) {
    let parsed = ErrorResponse::parse(body);
    let line = parsed.first_line();
    assert!(!line.contains(['\n', '\r']), "first_line is one line: {line:?}");
    assert!(line.chars().count() <= MAX_RELAYED_CHARS, "first_line is bounded: {} characters", line.chars().count());
    // Scrubbing a value out leaves no trace of it in the relayed line, whatever the body.
    let secret = "fuzz-secret~value";
    let scrubbed = ErrorResponse::parse(body).scrubbed(&[secret]).first_line();
    assert!(!scrubbed.contains(secret) && !scrubbed.contains("fuzz-secret%7Evalue"), "{scrubbed:?}");
    let Some(code) = parsed.aadsts() else { return };
    // A code comes from the body: from error_codes, or from the description's prefix.
    let json = json.expect("a body with a code is JSON");
    let field = |name: &str, position: usize| match json {
        Value::Array(items) => items.get(position),
        _ => json.get(name),
    };
    let first_code = field("error_codes", 2).and_then(Value::as_array).and_then(|codes| codes.first());
    match first_code {
        Some(first) => assert_eq!(first.as_u64(), Some(u64::from(code))),
        None => {
            let description = field("error_description", 1).and_then(Value::as_str).unwrap_or("");
            let digits: String =
                description.strip_prefix("AADSTS").unwrap_or("").chars().take_while(char::is_ascii_digit).collect();
            assert_eq!(digits.parse::<u32>().ok(), Some(code), "{description:?}");
        }
    }
}
