//! Inbound token validation: the user tokens an application forwards to `/Validate` and
//! `/AuthorizationHeader/{name}` (docs/on-behalf-of.md#validation).
//!
//! A token is accepted when, in this order: it is a compact JWS no longer than
//! [`MAX_TOKEN_BYTES`]; its header names `alg` RS256 (never `none`, an HMAC or any other
//! algorithm) and a `kid` the authority's key set holds, with no `crit`; the signature verifies
//! with that key; `exp` has not passed and `nbf` has, each within the identity's clock skew;
//! `aud` is one of the identity's audiences; `tid` is an accepted tenant and `iss` is that
//! tenant's issuer in the v1 (`https://sts.windows.net/{tid}/`) or v2
//! (`{authority}/{tid}/v2.0`) form; and, when the identity requires scopes or roles, `scp`
//! holds one of the scopes or `roles` one of the roles. The refusal names the first check
//! that failed.

pub mod keys;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use self::keys::{KeyCache, KeyError};
use crate::clock::Clock;
use crate::id::Id;

/// Longest token looked at; Entra's access tokens are 1 to 3 KiB, a few more with groups.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Tokens whose signature has been verified and is remembered: an application forwards the
/// same user token with every request of a session, and the RS256 verification is most of
/// a validation's cost. 32 bytes of digest each (about 100 bytes with the cache's own), so
/// at most a few MiB; only tokens the authority's keys signed get in.
const VERIFIED_TOKENS: u64 = 20_000;
/// How long a verified signature is remembered. The other checks (time, audience, issuer,
/// tenant, scopes) run on every request whatever this says; the limit only bounds how long a
/// signature stays trusted after its key left the authority's key set (Entra publishes a
/// retired key for weeks after it stops signing with it).
const VERIFIED_FOR: Duration = Duration::from_secs(3600);

/// Which tenants an identity accepts tokens from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tenants {
    /// Any tenant (a multi-tenant application); the issuer must still match the token's `tid`.
    Any,
    /// These tenant ids (compared without regard to case, as [`Id`] compares).
    List(Vec<Id>),
}

/// What one identity accepts.
#[derive(Clone, Debug)]
pub struct Policy {
    /// The identity's configuration name.
    pub identity: String,
    /// Accepted `aud` values, compared without regard to ASCII case: the default ones are
    /// the client id and `api://{client_id}`, and Entra treats application ids (as [`Id`]
    /// does) and application ID URIs case-insensitively.
    pub audiences: Vec<String>,
    /// Accepted tenants.
    pub tenants: Tenants,
    /// When not empty, the token's `scp` must hold one of these.
    pub scopes: Vec<String>,
    /// When not empty, the token's `roles` must hold one of these. With both lists set, either
    /// one matching is enough (a delegated or an application caller).
    pub roles: Vec<String>,
    /// Tolerated clock difference for `exp` and `nbf`, seconds.
    pub clock_skew_secs: u64,
}

impl Policy {
    /// Whether one of the token's `aud` values is an accepted audience.
    fn accepts_audience(&self, aud: &[&str]) -> bool {
        aud.iter().any(|a| self.audiences.iter().any(|accepted| accepted.eq_ignore_ascii_case(a)))
    }
}

/// Which issuer names tokens carry.
#[derive(Clone, Debug)]
pub enum Issuers {
    /// Entra: v1 `https://sts.windows.net/{tid}/` (`sts.chinacloudapi.cn` in that cloud) and
    /// v2 `{authority}/{tid}/v2.0`.
    Entra {
        /// The authority host without its trailing slash (`https://login.microsoftonline.com`).
        authority: String,
    },
    /// The development issuer: exactly this `iss`.
    Dev { issuer: String },
}

impl Issuers {
    fn accepts(&self, iss: &str, tid: &str) -> bool {
        match self {
            Self::Entra { authority } => {
                let v1_host = if authority.contains("chinacloudapi.cn") {
                    "https://sts.chinacloudapi.cn"
                } else {
                    "https://sts.windows.net"
                };
                let v1 =
                    iss.strip_prefix(v1_host).and_then(|rest| rest.strip_prefix('/')).and_then(|r| r.strip_suffix('/'));
                let v2 = iss
                    .strip_prefix(authority.as_str())
                    .and_then(|rest| rest.strip_prefix('/'))
                    .and_then(|r| r.strip_suffix("/v2.0"));
                [v1, v2].into_iter().flatten().any(|t| t.eq_ignore_ascii_case(tid))
            }
            Self::Dev { issuer } => iss == issuer,
        }
    }
}

/// How a token failed (RFC 6750 section 3.1): a token that is not valid, or one that lacks the
/// scope or role required.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// `invalid_token`: answered 401.
    InvalidToken,
    /// `insufficient_scope`: answered 403, as Microsoft.Identity.Web answers it.
    InsufficientScope,
    /// The authority's keys could never be fetched: answered 503.
    KeysUnavailable,
}

/// Why a token was refused; `description` names the check (never the token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub failure: Failure,
    pub description: String,
}

impl Refusal {
    fn invalid(description: impl Into<String>) -> Self {
        Self { failure: Failure::InvalidToken, description: description.into() }
    }
}

/// An accepted token.
#[derive(Debug)]
pub struct Validated {
    /// Index of the policy (identity) that accepted it.
    pub policy: usize,
    /// The token's claims, as it carried them.
    pub claims: Map<String, Value>,
    /// `exp`, epoch seconds.
    pub expires_on: u64,
}

/// The identities' policies and the authority's keys.
pub struct Validator {
    policies: Vec<Policy>,
    issuers: Issuers,
    keys: KeyCache,
    clock: Arc<dyn Clock>,
    /// SHA-256 digests of whole tokens whose signature verified. Invariant: a digest is
    /// inserted only after `RsaKey::verifies` accepted that exact token and every other check
    /// passed; any change to a token's bytes changes its digest, so a hit proves the
    /// signature as the check did.
    verified: moka::future::Cache<[u8; 32], ()>,
    /// RS256 verifications performed (a hit in `verified` performs none).
    signature_checks: AtomicU64,
}

impl Validator {
    /// Validates tokens for `policies`, signed with keys from `keys`, issued as `issuers` says.
    pub fn new(policies: Vec<Policy>, issuers: Issuers, keys: KeyCache, clock: Arc<dyn Clock>) -> Self {
        let verified = moka::future::Cache::builder().max_capacity(VERIFIED_TOKENS).time_to_live(VERIFIED_FOR).build();
        Self { policies, issuers, keys, clock, verified, signature_checks: AtomicU64::new(0) }
    }

    /// How many RS256 signatures have been verified; tokens seen before are not verified
    /// again.
    pub fn signature_checks(&self) -> u64 {
        self.signature_checks.load(Ordering::Relaxed)
    }

    /// The policies, in configuration order.
    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// The index of the policy of the identity named `identity`.
    pub fn policy_of(&self, identity: &str) -> Option<usize> {
        self.policies.iter().position(|p| p.identity == identity)
    }

    /// Validates `token` against `policy`, or, when `None`, against the policy whose
    /// audiences hold the token's `aud`.
    pub async fn validate(&self, token: &str, policy: Option<usize>) -> Result<Validated, Refusal> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Refusal::invalid(format!("the token is longer than {MAX_TOKEN_BYTES} bytes")));
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Refusal::invalid("the token is not a signed JWT (three base64url parts)"));
        };
        let header =
            decode_object(header).ok_or_else(|| Refusal::invalid("the token's header is not base64url JSON"))?;
        let claims =
            decode_object(payload).ok_or_else(|| Refusal::invalid("the token's claims are not base64url JSON"))?;
        let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
        if alg != "RS256" {
            return Err(Refusal::invalid(format!(
                "the token's algorithm {:?} is not accepted (RS256 only)",
                alg.chars().take(16).collect::<String>()
            )));
        }
        if header.contains_key("crit") {
            return Err(Refusal::invalid("the token's header has critical extensions (crit), which are not supported"));
        }
        let Some(kid) = header.get("kid").and_then(Value::as_str) else {
            return Err(Refusal::invalid("the token's header names no key (kid)"));
        };
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| Refusal::invalid("the token's signature is not base64url"))?;
        let aud = audience(&claims);
        let policy = match policy {
            Some(index) => index,
            None => self.policies.iter().position(|p| p.accepts_audience(&aud)).ok_or_else(|| {
                Refusal::invalid(format!("the audience {} is not accepted by any identity", shown(&aud)))
            })?,
        };
        let digest = token_digest(token);
        let remembered = self.verified.contains_key(&digest);
        if !remembered {
            let key = self.keys.key(kid).await.map_err(|error| match error {
                KeyError::UnknownKid => Refusal::invalid(format!(
                    "the signing key {:?} is not in the authority's key set",
                    kid.chars().take(64).collect::<String>()
                )),
                KeyError::Unavailable(reason) => Refusal {
                    failure: Failure::KeysUnavailable,
                    description: format!("the authority's signing keys could not be fetched: {reason}"),
                },
            })?;
            let signed = &token[..token.rfind('.').unwrap_or(0)];
            self.signature_checks.fetch_add(1, Ordering::Relaxed);
            if !key.verifies(signed.as_bytes(), &signature) {
                return Err(Refusal::invalid("the token's signature is invalid"));
            }
        }
        let policy_ref = &self.policies[policy];
        let expires_on = self.check_time(&claims, policy_ref.clock_skew_secs)?;
        if !policy_ref.accepts_audience(&aud) {
            return Err(Refusal::invalid(format!(
                "the audience {} is not accepted by identity {:?} (inbound.audiences)",
                shown(&aud),
                policy_ref.identity
            )));
        }
        check_issuer(&self.issuers, policy_ref, &claims)?;
        check_permissions(policy_ref, &claims)?;
        // Only tokens that pass every check for a configured identity are remembered, so a
        // caller cannot fill the cache with tokens the authority signed for someone else.
        if !remembered {
            self.verified.insert(digest, ()).await;
        }
        Ok(Validated { policy, claims, expires_on })
    }

    fn check_time(&self, claims: &Map<String, Value>, skew: u64) -> Result<u64, Refusal> {
        let now = self.clock.now();
        let exp = claims.get("exp").and_then(Value::as_u64).ok_or_else(|| Refusal::invalid("the token has no exp"))?;
        if now > exp.saturating_add(skew) {
            return Err(Refusal::invalid(format!("the token expired at {exp} (now {now}, clock skew {skew} s)")));
        }
        if let Some(nbf) = claims.get("nbf") {
            let nbf = nbf.as_u64().ok_or_else(|| Refusal::invalid("the token's nbf is not a number"))?;
            if nbf > now.saturating_add(skew) {
                return Err(Refusal::invalid(format!(
                    "the token is not valid before {nbf} (now {now}, clock skew {skew} s)"
                )));
            }
        }
        Ok(exp)
    }
}

/// SHA-256 of the whole token, the key of [`Validator::verified`].
fn token_digest(token: &str) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The tenant must be accepted and the issuer must be that tenant's.
fn check_issuer(issuers: &Issuers, policy: &Policy, claims: &Map<String, Value>) -> Result<(), Refusal> {
    let iss = claims.get("iss").and_then(Value::as_str).unwrap_or("");
    let Some(tid) = claims.get("tid").and_then(Value::as_str) else {
        return Err(Refusal::invalid("the token names no tenant (tid)"));
    };
    let tenant_ok = match &policy.tenants {
        Tenants::Any => true,
        Tenants::List(tenants) => tenants.iter().any(|t| t == tid),
    };
    if !tenant_ok {
        return Err(Refusal::invalid(format!(
            "the tenant {:?} is not accepted by identity {:?} (inbound.tenants)",
            tid.chars().take(64).collect::<String>(),
            policy.identity
        )));
    }
    if !issuers.accepts(iss, tid) {
        return Err(Refusal::invalid(format!(
            "the issuer {:?} is not the issuer of tenant {:?}",
            iss.chars().take(128).collect::<String>(),
            tid.chars().take(64).collect::<String>()
        )));
    }
    Ok(())
}

/// One of the required scopes (`scp`, space-separated) or roles (`roles`, an array).
fn check_permissions(policy: &Policy, claims: &Map<String, Value>) -> Result<(), Refusal> {
    if policy.scopes.is_empty() && policy.roles.is_empty() {
        return Ok(());
    }
    let scp = claims.get("scp").and_then(Value::as_str).unwrap_or("");
    let scoped = scp.split(' ').any(|s| policy.scopes.iter().any(|required| required == s));
    let roles = claims.get("roles").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let roled = roles.iter().filter_map(Value::as_str).any(|r| policy.roles.iter().any(|required| required == r));
    if scoped || roled {
        return Ok(());
    }
    let wanted = match (policy.scopes.is_empty(), policy.roles.is_empty()) {
        (false, true) => format!("none of the scopes {:?} (scp)", policy.scopes),
        (true, false) => format!("none of the roles {:?} (roles)", policy.roles),
        _ => format!("none of the scopes {:?} (scp) or roles {:?} (roles)", policy.scopes, policy.roles),
    };
    Err(Refusal { failure: Failure::InsufficientScope, description: format!("the token carries {wanted}") })
}

/// `aud` as a list (a string, or an array of strings).
fn audience(claims: &Map<String, Value>) -> Vec<&str> {
    match claims.get("aud") {
        Some(Value::String(aud)) => vec![aud.as_str()],
        Some(Value::Array(auds)) => auds.iter().filter_map(Value::as_str).take(8).collect(),
        _ => Vec::new(),
    }
}

/// An audience for an error message: bounded, never more than what the caller sent.
fn shown(aud: &[&str]) -> String {
    match aud {
        [] => "(none)".to_owned(),
        [one] => format!("{:?}", one.chars().take(128).collect::<String>()),
        many => format!("{:?}", many.iter().map(|a| a.chars().take(128).collect::<String>()).collect::<Vec<_>>()),
    }
}

/// A base64url JSON object.
fn decode_object(part: &str) -> Option<Map<String, Value>> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
