//! The signing keys inbound tokens are verified with: fetched from the authority's OpenID
//! discovery document (or the development issuer), and cached.
//!
//! Invariants of [`KeyCache`]:
//!
//! - A key is looked up by `kid`. A `kid` missing from the cached set makes the set be fetched
//!   again (the authority publishes a new key before it signs with it, so a new `kid` is the
//!   sign of a rotation), but at most once per [`UNKNOWN_KID_REFETCH`]: a caller presenting
//!   made-up `kid`s cannot make tokenrelay hammer the authority.
//! - A set older than [`MAX_KEY_SET_AGE`] is fetched again on its next use, so a key the
//!   authority withdrew stops being trusted within a day.
//! - A failed fetch keeps the set already held: validation goes on through an outage of the
//!   authority with the keys it had. Before any set was fetched, failed fetches are retried at
//!   most once per [`FIRST_FETCH_RETRY`].
//! - One fetch at a time; callers that wait for it use its result.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use aws_lc_rs::signature::{self, RsaPublicKeyComponents};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::Url;
use serde_json::Value;
use tokio::time::Instant;

use crate::dev_issuer::DevIssuer;

/// Shortest time between two fetches caused by an unknown `kid`.
pub const UNKNOWN_KID_REFETCH: Duration = Duration::from_secs(60);
/// Age after which a key set is fetched again when next used.
pub const MAX_KEY_SET_AGE: Duration = Duration::from_secs(24 * 3600);
/// Shortest time between two failed attempts while no key set was ever fetched.
pub const FIRST_FETCH_RETRY: Duration = Duration::from_secs(5);
/// Most keys kept from one key set (Entra publishes a handful).
const MAX_KEYS: usize = 64;
/// Largest discovery document or key set read (Entra's are a few KiB).
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// An RSA public key from a JWK.
pub struct RsaKey {
    n: Vec<u8>,
    e: Vec<u8>,
}

impl RsaKey {
    /// Whether `signature` is this key's RS256 (PKCS#1 v1.5, SHA-256) signature of `message`.
    /// Keys shorter than 2048 bits are refused by the algorithm itself.
    pub fn verifies(&self, message: &[u8], signature_bytes: &[u8]) -> bool {
        RsaPublicKeyComponents { n: &self.n, e: &self.e }
            .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, signature_bytes)
            .is_ok()
    }
}

/// Where a key set comes from.
#[async_trait]
pub trait KeySource: Send + Sync {
    /// The current key set, as `kid` and key.
    async fn fetch(&self) -> Result<Vec<(String, RsaKey)>, String>;
}

/// Reads a JWKS document: the RSA signing keys with a `kid`, at most [`MAX_KEYS`]. Keys for
/// another use (`use` other than `sig`) or another algorithm (`alg` other than RS256) are left
/// out, as are keys whose numbers do not decode.
pub fn parse_jwks(document: &Value) -> Result<Vec<(String, RsaKey)>, String> {
    let keys = document.get("keys").and_then(Value::as_array).ok_or("the key set has no \"keys\" array")?;
    let text = |key: &Value, name: &str| key.get(name).and_then(Value::as_str).map(str::to_owned);
    let keys: Vec<(String, RsaKey)> = keys
        .iter()
        .filter(|key| text(key, "kty").as_deref() == Some("RSA"))
        .filter(|key| text(key, "use").is_none_or(|u| u == "sig"))
        .filter(|key| text(key, "alg").is_none_or(|a| a == "RS256"))
        .filter_map(|key| {
            let kid = text(key, "kid")?;
            let n = URL_SAFE_NO_PAD.decode(text(key, "n")?).ok()?;
            let e = URL_SAFE_NO_PAD.decode(text(key, "e")?).ok()?;
            Some((kid, RsaKey { n, e }))
        })
        .take(MAX_KEYS)
        .collect();
    if keys.is_empty() {
        return Err("the key set holds no RSA signing key".to_owned());
    }
    Ok(keys)
}

/// The authority's keys: its discovery document names the key set (`jwks_uri`).
pub struct DiscoveryKeys {
    http: reqwest::Client,
    discovery: Url,
}

impl DiscoveryKeys {
    /// Keys of the discovery document at `discovery`, fetched with `http`.
    pub fn new(http: reqwest::Client, discovery: Url) -> Self {
        Self { http, discovery }
    }

    async fn get_json(&self, url: &Url) -> Result<Value, String> {
        let host = url.host_str().unwrap_or("the authority").to_owned();
        let mut response = self
            .http
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("reaching {host}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("{host} answered {} for {}", response.status(), url.path()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| format!("reading from {host}: {e}"))? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(format!("{host} sent more than {MAX_DOCUMENT_BYTES} bytes for {}", url.path()));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| format!("{host} sent unreadable JSON for {}: {e}", url.path()))
    }
}

#[async_trait]
impl KeySource for DiscoveryKeys {
    async fn fetch(&self) -> Result<Vec<(String, RsaKey)>, String> {
        let discovery = self.get_json(&self.discovery).await?;
        let jwks_uri =
            discovery.get("jwks_uri").and_then(Value::as_str).ok_or("the discovery document names no jwks_uri")?;
        let jwks_uri = Url::parse(jwks_uri).map_err(|e| format!("the discovery document's jwks_uri: {e}"))?;
        // Keys only over https, or from the same origin as the discovery document (a loopback
        // authority in tests), never from a plain-http host the document names.
        let same_origin = jwks_uri.origin() == self.discovery.origin();
        if jwks_uri.scheme() != "https" && !same_origin {
            return Err(format!("the discovery document's jwks_uri {jwks_uri} is not https"));
        }
        parse_jwks(&self.get_json(&jwks_uri).await?)
    }
}

/// The development issuer's key, under `--dev`.
pub struct DevKeys(pub Arc<DevIssuer>);

#[async_trait]
impl KeySource for DevKeys {
    async fn fetch(&self) -> Result<Vec<(String, RsaKey)>, String> {
        parse_jwks(&self.0.jwks())
    }
}

/// Why no key verifies a token.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyError {
    /// The `kid` is not in the key set, even after fetching it again (or a fetch was not due).
    UnknownKid,
    /// No key set could ever be fetched.
    Unavailable(String),
}

struct Fetches {
    /// When the held set was fetched; `None` before the first success.
    fetched_at: Option<Instant>,
    /// The last fetch caused by an unknown `kid`.
    last_unknown_kid: Option<Instant>,
    /// The last failed attempt while no set was held.
    last_failure: Option<Instant>,
    /// The last failure's text, for callers while no set is held.
    last_error: String,
}

/// The cached key set of one authority (module documentation: the invariants).
pub struct KeyCache {
    source: Box<dyn KeySource>,
    keys: RwLock<Arc<HashMap<String, Arc<RsaKey>>>>,
    fetches: tokio::sync::Mutex<Fetches>,
    /// What the log calls this authority.
    name: String,
}

impl KeyCache {
    /// An empty cache over `source`; nothing is fetched until a token needs a key.
    pub fn new(source: Box<dyn KeySource>, name: String) -> Self {
        Self {
            source,
            keys: RwLock::new(Arc::new(HashMap::new())),
            fetches: tokio::sync::Mutex::new(Fetches {
                fetched_at: None,
                last_unknown_kid: None,
                last_failure: None,
                last_error: String::new(),
            }),
            name,
        }
    }

    fn held(&self, kid: &str) -> Option<Arc<RsaKey>> {
        self.keys.read().unwrap_or_else(|poisoned| poisoned.into_inner()).get(kid).cloned()
    }

    /// The key `kid` names, fetching the set when the rules allow.
    pub async fn key(&self, kid: &str) -> Result<Arc<RsaKey>, KeyError> {
        let held = self.held(kid);
        let mut fetches = self.fetches.lock().await;
        let now = Instant::now();
        let fresh = fetches.fetched_at.is_some_and(|at| now.duration_since(at) < MAX_KEY_SET_AGE);
        if let Some(key) = held.or_else(|| self.held(kid)).filter(|_| fresh) {
            return Ok(key);
        }
        let due = match fetches.fetched_at {
            None => fetches.last_failure.is_none_or(|at| now.duration_since(at) >= FIRST_FETCH_RETRY),
            // Old set: fetch again, whatever `kid` was asked for.
            Some(_) if !fresh => true,
            Some(_) => fetches.last_unknown_kid.is_none_or(|at| now.duration_since(at) >= UNKNOWN_KID_REFETCH),
        };
        if due {
            if fetches.fetched_at.is_some() && fresh {
                fetches.last_unknown_kid = Some(now);
            }
            match self.source.fetch().await {
                Ok(keys) => {
                    let count = keys.len();
                    let keys = keys.into_iter().map(|(kid, key)| (kid, Arc::new(key))).collect();
                    *self.keys.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(keys);
                    fetches.fetched_at = Some(now);
                    fetches.last_failure = None;
                    tracing::info!(authority = %self.name, keys = count, "fetched the signing keys for inbound tokens");
                }
                Err(error) => {
                    tracing::warn!(
                        authority = %self.name,
                        %error,
                        held = fetches.fetched_at.is_some(),
                        "cannot fetch the signing keys for inbound tokens; validating with the keys held"
                    );
                    if fetches.fetched_at.is_none() {
                        fetches.last_failure = Some(now);
                        fetches.last_error = error;
                    }
                }
            }
        }
        match self.held(kid) {
            Some(key) => Ok(key),
            None if fetches.fetched_at.is_none() => Err(KeyError::Unavailable(fetches.last_error.clone())),
            None => Err(KeyError::UnknownKid),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Serves the key ids in `kids` (scripted per fetch), counting fetches.
    struct Scripted {
        kids: Mutex<Result<Vec<&'static str>, String>>,
        fetches: Arc<AtomicUsize>,
    }

    #[async_trait]
    impl KeySource for Scripted {
        async fn fetch(&self) -> Result<Vec<(String, RsaKey)>, String> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            let kids = self.kids.lock().unwrap().clone()?;
            Ok(kids.into_iter().map(|kid| (kid.to_owned(), RsaKey { n: vec![1], e: vec![3] })).collect())
        }
    }

    fn cache(kids: Result<Vec<&'static str>, String>) -> (Arc<KeyCache>, Arc<AtomicUsize>, Arc<Scripted>) {
        let fetches = Arc::new(AtomicUsize::new(0));
        let source = Arc::new(Scripted { kids: Mutex::new(kids), fetches: fetches.clone() });
        struct Shared(Arc<Scripted>);
        #[async_trait]
        impl KeySource for Shared {
            async fn fetch(&self) -> Result<Vec<(String, RsaKey)>, String> {
                self.0.fetch().await
            }
        }
        (Arc::new(KeyCache::new(Box::new(Shared(source.clone())), "test".into())), fetches, source)
    }

    #[tokio::test(start_paused = true)]
    async fn an_unknown_kid_refetches_at_most_once_a_minute() {
        let (keys, fetches, source) = cache(Ok(vec!["a"]));
        assert!(keys.key("a").await.is_ok());
        assert!(keys.key("a").await.is_ok());
        assert_eq!(fetches.load(Ordering::SeqCst), 1, "a known kid is served from the cache");

        assert_eq!(keys.key("b").await.err(), Some(KeyError::UnknownKid));
        assert_eq!(fetches.load(Ordering::SeqCst), 2, "an unknown kid fetches the set again");
        *source.kids.lock().unwrap() = Ok(vec!["a", "b"]);
        for _ in 0..5 {
            assert_eq!(keys.key("b").await.err(), Some(KeyError::UnknownKid));
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 2, "not again within the minute");
        tokio::time::advance(UNKNOWN_KID_REFETCH).await;
        assert!(keys.key("b").await.is_ok(), "the rotated key, once the minute has passed");
        assert_eq!(fetches.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_keeps_the_keys_held_and_a_day_old_set_is_fetched_again() {
        let (keys, fetches, source) = cache(Ok(vec!["a"]));
        assert!(keys.key("a").await.is_ok());
        *source.kids.lock().unwrap() = Err("down".into());
        tokio::time::advance(MAX_KEY_SET_AGE).await;
        assert!(keys.key("a").await.is_ok(), "served from the cache through the outage");
        assert_eq!(fetches.load(Ordering::SeqCst), 2, "the day-old set was fetched again");
        *source.kids.lock().unwrap() = Ok(vec!["c"]);
        tokio::time::advance(UNKNOWN_KID_REFETCH).await;
        assert_eq!(keys.key("a").await.err(), Some(KeyError::UnknownKid), "a withdrawn key is no longer trusted");
    }

    #[tokio::test(start_paused = true)]
    async fn before_any_set_failures_are_retried_at_a_bounded_rate() {
        let (keys, fetches, source) = cache(Err("down".into()));
        assert_eq!(keys.key("a").await.err(), Some(KeyError::Unavailable("down".into())));
        assert_eq!(keys.key("a").await.err(), Some(KeyError::Unavailable("down".into())));
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        *source.kids.lock().unwrap() = Ok(vec!["a"]);
        tokio::time::advance(FIRST_FETCH_RETRY).await;
        assert!(keys.key("a").await.is_ok());
    }

    #[test]
    fn only_rsa_signing_keys_with_a_kid_are_read() {
        let document = serde_json::json!({"keys": [
            {"kty": "RSA", "use": "sig", "kid": "good", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "use": "enc", "kid": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "kid": "ec", "x": "AQAB", "y": "AQAB"},
            {"kty": "RSA", "alg": "RS512", "kid": "rs512", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
        ]});
        let kids: Vec<String> = parse_jwks(&document).unwrap().into_iter().map(|(kid, _)| kid).collect();
        assert_eq!(kids, ["good"]);
        assert!(parse_jwks(&serde_json::json!({"keys": []})).is_err());
    }
}
