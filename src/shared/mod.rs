//! The optional second-level token cache on Valkey or Redis that the replicas of a fleet
//! share (`[cache.shared]`, docs/shared-cache.md).
//!
//! Each replica keeps its own memory cache first; this one is asked on a local miss and
//! written after every upstream exchange, so a rollout asks the authority once per key for
//! the whole fleet, and a replica started during an outage serves what the others fetched.
//!
//! **Nothing readable in the server.** Entry names are an HMAC-SHA256 of the client id and
//! resource under a key derived from the cache key, so the server holds no client id or
//! resource in clear and no one without the key can even test whether a given resource is
//! cached. Values are sealed with the persistent cache's AEAD (`store::format::seal_record`,
//! AES-256-GCM) under a second derived key, bound to the entry's name, and expire in the
//! server when the token does (`PX`). A replica with another key derives other names and so
//! shares nothing with the rest; a value that does not open (another key's, tampered,
//! moved) is ignored, counted and logged once per change of kind.
//!
//! **One upstream call per key for the fleet.** A replica that misses takes a lease on the
//! key (`SET lease NX PX`); the others poll for the value for at most `lease_wait`, then
//! fetch themselves. Refresh-ahead takes the same lease.
//!
//! **Never a single point of failure.** Every command is bounded by `timeout`; a command that
//! fails to reach the server marks it down, and from then on it is skipped at once (no
//! request waits for it) while a background task reconnects with a backoff of 1 s doubling
//! to 30 s. Only the very first connection at start is waited for, bounded by
//! `connect_timeout`. `tokenrelay_shared_cache_up` and one log line per change say when it is
//! down and back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo, RedisError};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::config::SharedConfig;
use crate::secret::Secret;
use crate::store::format::{self, Cipher, DecodeError};
use crate::telemetry::metrics;
use crate::token::AccessToken;

/// The longest wait between two reconnection attempts while the server is down.
const MAX_RETRY: Duration = Duration::from_secs(30);
/// First and longest pause between two polls of a replica waiting for another's fetch.
const FIRST_POLL: Duration = Duration::from_millis(10);
const MAX_POLL: Duration = Duration::from_millis(100);
/// Largest value read back: a token with its timing is a few KiB; anything larger is not ours.
const MAX_VALUE: usize = 64 * 1024;
/// Releases the lease only when it still holds this replica's value: a lease that expired
/// and was taken by another replica is left alone.
const RELEASE: &str =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

/// A token as the shared cache hands it over, with the refresh point its writer chose.
#[derive(Debug)]
pub struct SharedToken {
    pub token: AccessToken,
    pub refresh_on: u64,
}

/// The names of one key in the server and the context its value is sealed to.
#[derive(Clone, Debug)]
pub struct Names {
    token: String,
    lease: String,
    context: [u8; 32],
}

/// A lookup's answer.
#[derive(Debug)]
pub enum Found {
    /// A token `accept` took.
    Token(SharedToken),
    /// No usable entry: none, one `accept` refused, or one that does not open.
    Miss,
    /// The server is down or did not answer in time; it was skipped.
    Unreachable,
}

/// This replica's claim on a key: the random value its lease holds.
#[derive(Debug)]
pub struct Lease(String);

/// What a replica that missed should do.
#[derive(Debug)]
pub enum Claim {
    /// It holds the lease: fetch upstream, then [`SharedCache::put`] and release.
    Fetch(Lease),
    /// Another replica's fetch landed while it waited.
    Token(SharedToken),
    /// Another replica holds the lease (a refresh does not wait: it serves its token meanwhile).
    Held,
    /// No answer in time, or the server is down: fetch upstream without a lease.
    Alone,
}

/// What one read found, before it is counted.
enum Read {
    Token(SharedToken),
    Miss,
    Unreadable,
    Failed,
    Skipped,
}

/// The link to the server.
enum Link {
    /// Before the first connection attempt has finished.
    Starting,
    /// Connected; `generation` tells this connection's failures from an older one's.
    Up { connection: MultiplexedConnection, generation: u64 },
    /// Skipped until `retry_at`, when a background task reconnects.
    Down { retry_at: Instant, failures: u32, reconnecting: bool },
}

/// The entry that could not be opened, kept so that a run of them logs one line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unreadable {
    None,
    WrongKey,
    Tampered,
    Damaged,
    Implausible,
}

/// The shared token cache of one process.
pub struct SharedCache {
    client: Client,
    connection_config: AsyncConnectionConfig,
    description: String,
    names_key: hmac::Key,
    cipher: Cipher,
    prefix: String,
    timeout: Duration,
    connect_timeout: Duration,
    lease: Duration,
    lease_wait: Duration,
    link: Mutex<Link>,
    first: OnceCell<()>,
    generation: AtomicU64,
    down_since: Mutex<Option<std::time::Instant>>,
    unreadable: Mutex<Unreadable>,
    /// Per operation (`write`, `lease`, `release`, `read`), the refusal last logged (a full
    /// server, a missing permission), cleared when that operation succeeds again: a full
    /// server refuses every write while reads succeed, and logs that once, not once per token.
    refused: Mutex<Vec<(&'static str, String)>>,
}

impl std::fmt::Debug for SharedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCache").field("server", &self.description).finish_non_exhaustive()
    }
}

/// `HMAC-SHA256(key, label)`: independent subkeys for names and values from one cache key.
fn derive(key: &[u8; 32], label: &str) -> [u8; 32] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), label.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// What a value holds once opened. Field names are short: every replica reads it on a miss.
#[derive(Deserialize, Serialize)]
struct Value<'a> {
    #[serde(borrow)]
    access_token: std::borrow::Cow<'a, str>,
    expires_on: u64,
    not_before: u64,
    ext_expires_on: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_hint: Option<u64>,
    refresh_on: u64,
}

impl SharedCache {
    /// A cache for `config`. Nothing is connected yet ([`Self::start`]).
    pub fn new(config: &SharedConfig) -> Result<Arc<Self>, String> {
        let mut info = config.url.as_str().into_connection_info().map_err(|e| format!("cache.shared.url: {e}"))?;
        let mut settings = info.redis_settings().clone();
        if let Some(user) = &config.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &config.password {
            settings = settings.set_password(password.expose());
        }
        info = info.set_redis_settings(settings);
        let client = match &config.ca_pem {
            Some(pem) => {
                Client::build_with_tls(info, redis::TlsCertificates { client_tls: None, root_cert: Some(pem.clone()) })
            }
            None => Client::open(info),
        }
        .map_err(|e| format!("cache.shared: {e}"))?;
        let connection_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.timeout));
        let key = config.key.bytes();
        Ok(Arc::new(Self {
            client,
            connection_config,
            description: format!(
                "{}{}",
                config.url,
                if config.tls { "" } else { " (no TLS: only on a network nothing else can reach)" }
            ),
            names_key: hmac::Key::new(hmac::HMAC_SHA256, &derive(key, "tokenrelay shared cache: entry names")),
            cipher: Cipher::new(&derive(key, "tokenrelay shared cache: values")),
            prefix: config.key_prefix.clone(),
            timeout: config.timeout,
            connect_timeout: config.connect_timeout,
            lease: config.lease,
            lease_wait: config.lease_wait,
            link: Mutex::new(Link::Starting),
            first: OnceCell::new(),
            generation: AtomicU64::new(0),
            down_since: Mutex::new(None),
            unreadable: Mutex::new(Unreadable::None),
            refused: Mutex::new(Vec::new()),
        }))
    }

    /// The server, for the start-up log (never a credential).
    pub fn describe(&self) -> &str {
        &self.description
    }

    /// Connects for the first time (at most `connect_timeout`). Lookups made meanwhile wait
    /// for this attempt; after it, no lookup ever waits for a connection.
    pub async fn start(self: &Arc<Self>) {
        self.first
            .get_or_init(|| async {
                let result = self.connect().await;
                self.settle(result, 0);
            })
            .await;
    }

    /// The server's names for (client id, resource): `<prefix>token:<hex>` and
    /// `<prefix>lease:<hex>`, the hex an HMAC of the lower-cased client id and the resource.
    pub fn names(&self, client_id: &str, resource: &str) -> Names {
        let mut context = hmac::Context::with_key(&self.names_key);
        context.update(client_id.to_ascii_lowercase().as_bytes());
        context.update(&[0]);
        context.update(resource.as_bytes());
        let tag = context.sign();
        let mut digest = [0u8; 32];
        digest.copy_from_slice(tag.as_ref());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        Names {
            token: format!("{}token:{hex}", self.prefix),
            lease: format!("{}lease:{hex}", self.prefix),
            context: digest,
        }
    }

    /// The entry for `names`, if there is one that opens and `accept` takes.
    /// `now` (epoch seconds) bounds how far ahead a token may expire and be believed.
    pub async fn get(
        self: &Arc<Self>,
        names: &Names,
        now: u64,
        accept: &(dyn Fn(&SharedToken) -> bool + Sync),
    ) -> Found {
        let (found, result) = match self.read(names, now, accept).await {
            Read::Token(token) => (Found::Token(token), "hit"),
            Read::Miss => (Found::Miss, "miss"),
            Read::Unreadable => (Found::Miss, "unreadable"),
            Read::Failed => (Found::Unreachable, "error"),
            Read::Skipped => (Found::Unreachable, "skipped"),
        };
        metrics::shared_lookup(result);
        found
    }

    /// Writes a token fetched upstream, to expire in the server when it does.
    pub async fn put(self: &Arc<Self>, names: &Names, token: &AccessToken, refresh_on: u64, now: u64) {
        let remaining = token.expires_on.saturating_sub(now);
        if remaining == 0 {
            return;
        }
        let value = Value {
            access_token: token.token.expose().into(),
            expires_on: token.expires_on,
            not_before: token.not_before,
            ext_expires_on: token.ext_expires_on,
            refresh_hint: token.refresh_on,
            refresh_on,
        };
        let mut plaintext = serde_json::to_vec(&value).expect("strings and integers always serialise");
        let sealed = format::seal_record(&self.cipher, &names.context, &plaintext);
        plaintext.fill(0);
        let mut command = redis::cmd("SET");
        command.arg(&names.token).arg(sealed).arg("PX").arg(remaining.saturating_mul(1000));
        let result = match self.run::<Option<String>>("write", &command).await {
            Some(Ok(_)) => "success",
            Some(Err(())) => "failure",
            None => "skipped",
        };
        metrics::shared_write(result);
    }

    /// Claims the fetch of a key after a miss. With `wait`, a replica that finds the lease
    /// taken polls for the holder's token for at most `lease_wait` (taking the lease over if
    /// it is released without a token) before fetching alone; without, it answers `Held`.
    pub async fn claim(
        self: &Arc<Self>,
        names: &Names,
        wait: bool,
        now: u64,
        accept: &(dyn Fn(&SharedToken) -> bool + Sync),
    ) -> Claim {
        let claim = self.claim_inner(names, wait, now, accept).await;
        metrics::shared_lease(match &claim {
            Claim::Fetch(_) => "acquired",
            Claim::Token(_) => "waited",
            Claim::Held => "held",
            Claim::Alone => "skipped",
        });
        claim
    }

    async fn claim_inner(
        self: &Arc<Self>,
        names: &Names,
        wait: bool,
        now: u64,
        accept: &(dyn Fn(&SharedToken) -> bool + Sync),
    ) -> Claim {
        let deadline = Instant::now() + self.lease_wait;
        let mut pause = FIRST_POLL;
        loop {
            match self.try_lease(names).await {
                None => return Claim::Alone,
                Some(Some(lease)) => {
                    // Another replica may have written its token and released its lease
                    // between this replica's miss and its claim: look once more.
                    return match self.read(names, now, accept).await {
                        Read::Token(token) => {
                            self.release(names, lease).await;
                            Claim::Token(token)
                        }
                        _ => Claim::Fetch(lease),
                    };
                }
                Some(None) if !wait => return Claim::Held,
                Some(None) => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Claim::Alone;
            }
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(MAX_POLL);
            match self.read(names, now, accept).await {
                Read::Token(token) => return Claim::Token(token),
                Read::Failed | Read::Skipped => return Claim::Alone,
                Read::Miss | Read::Unreadable => {}
            }
        }
    }

    /// Gives a lease up (after the token was written, or the fetch failed), if it is still ours.
    pub async fn release(self: &Arc<Self>, names: &Names, lease: Lease) {
        let mut command = redis::cmd("EVAL");
        command.arg(RELEASE).arg(1).arg(&names.lease).arg(lease.0);
        let _ = self.run::<i64>("release", &command).await;
    }

    /// `Some(Some(lease))` when this replica took the lease, `Some(None)` when another holds
    /// it, `None` when the server was skipped.
    async fn try_lease(self: &Arc<Self>, names: &Names) -> Option<Option<Lease>> {
        let mut bytes = [0u8; 16];
        SystemRandom::new().fill(&mut bytes).expect("the system random source works");
        let value: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut command = redis::cmd("SET");
        command.arg(&names.lease).arg(&value).arg("NX").arg("PX").arg(self.lease.as_millis() as u64);
        match self.run::<Option<String>>("lease", &command).await? {
            Ok(Some(_)) => Some(Some(Lease(value))),
            Ok(None) => Some(None),
            Err(()) => None,
        }
    }

    async fn read(self: &Arc<Self>, names: &Names, now: u64, accept: &(dyn Fn(&SharedToken) -> bool + Sync)) -> Read {
        let mut command = redis::cmd("GET");
        command.arg(&names.token);
        let bytes = match self.run::<Option<Vec<u8>>>("read", &command).await {
            None => return Read::Skipped,
            Some(Err(())) => return Read::Failed,
            Some(Ok(None)) => return Read::Miss,
            Some(Ok(Some(bytes))) => bytes,
        };
        match self.open(names, &bytes, now) {
            Ok(token) if accept(&token) => Read::Token(token),
            Ok(_) => Read::Miss,
            Err(kind) => {
                self.note_unreadable(kind);
                Read::Unreadable
            }
        }
    }

    fn open(&self, names: &Names, bytes: &[u8], now: u64) -> Result<SharedToken, Unreadable> {
        if bytes.len() > MAX_VALUE {
            return Err(Unreadable::Damaged);
        }
        let mut plaintext = format::open_record(&self.cipher, &names.context, bytes).map_err(|e| match e {
            DecodeError::WrongKey => Unreadable::WrongKey,
            DecodeError::Tampered => Unreadable::Tampered,
            _ => Unreadable::Damaged,
        })?;
        let parsed = serde_json::from_slice::<Value<'_>>(&plaintext).map(|v| SharedToken {
            token: AccessToken {
                token: Secret::new(v.access_token.into_owned()),
                expires_on: v.expires_on,
                not_before: v.not_before,
                ext_expires_on: v.ext_expires_on,
                refresh_on: v.refresh_hint,
            },
            refresh_on: v.refresh_on,
        });
        plaintext.fill(0);
        let token = parsed.map_err(|_| Unreadable::Damaged)?;
        // Only someone holding the key could have sealed it, but the same bound as the
        // persistent cache's keeps a token from a skewed writer's clock out.
        if crate::store::implausible(token.token.expires_on, now) {
            return Err(Unreadable::Implausible);
        }
        Ok(token)
    }

    /// Logs an entry that does not open, once per change of what is wrong.
    fn note_unreadable(&self, kind: Unreadable) {
        let mut last = self.unreadable.lock().unwrap_or_else(|e| e.into_inner());
        if *last == kind {
            return;
        }
        *last = kind;
        let why = match kind {
            Unreadable::WrongKey => "it was sealed with another key (cache.shared.key_file differs between replicas)",
            Unreadable::Tampered => {
                "it does not authenticate: changed or moved in the server by something without the key"
            }
            Unreadable::Damaged => "it is not a token entry of this release",
            Unreadable::Implausible => "its token expires more than 48 h ahead, further than Entra issues tokens for",
            Unreadable::None => return,
        };
        tracing::warn!(
            "ignored an entry of the shared token cache: {why}; the token is fetched upstream and the entry replaced \
             (further such entries are counted in tokenrelay_shared_cache_lookups_total{{result=\"unreadable\"}})"
        );
    }

    /// Runs one command under `timeout`: `None` when the server is skipped (down), `Some(Err)`
    /// when it failed (and was logged), else its answer.
    async fn run<T: redis::FromRedisValue>(
        self: &Arc<Self>,
        operation: &'static str,
        command: &redis::Cmd,
    ) -> Option<Result<T, ()>> {
        let (mut connection, generation) = self.connection().await?;
        let result = tokio::time::timeout(self.timeout, command.query_async::<T>(&mut connection)).await;
        match result {
            Ok(Ok(value)) => {
                self.refused.lock().unwrap_or_else(|e| e.into_inner()).retain(|(op, _)| *op != operation);
                Some(Ok(value))
            }
            Ok(Err(error)) if !reaches_nothing(&error) => {
                // The server answered with a refusal (full, read-only, no permission): it is
                // up, and this command failed.
                let code = error.code().unwrap_or("error").to_owned();
                let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
                if !refused.iter().any(|(op, logged)| *op == operation && *logged == code) {
                    tracing::warn!(
                        operation,
                        %error,
                        "the shared token cache refused a command; carrying on without it for that key"
                    );
                    refused.retain(|(op, _)| *op != operation);
                    refused.push((operation, code));
                }
                Some(Err(()))
            }
            Ok(Err(error)) => {
                self.went_down(generation, &error.to_string());
                Some(Err(()))
            }
            Err(_) => {
                self.went_down(generation, &format!("no answer within {} ms", self.timeout.as_millis()));
                Some(Err(()))
            }
        }
    }

    /// The connection, unless the server is down. Waits only for the first attempt at start.
    async fn connection(self: &Arc<Self>) -> Option<(MultiplexedConnection, u64)> {
        loop {
            {
                let mut link = self.link.lock().unwrap_or_else(|e| e.into_inner());
                match &mut *link {
                    Link::Up { connection, generation } => return Some((connection.clone(), *generation)),
                    Link::Down { retry_at, reconnecting, .. } => {
                        if !*reconnecting && Instant::now() >= *retry_at {
                            *reconnecting = true;
                            let this = Arc::clone(self);
                            tokio::spawn(async move { this.reconnect().await });
                        }
                        return None;
                    }
                    Link::Starting => {}
                }
            }
            if self.first.initialized() {
                return None;
            }
            self.start().await;
        }
    }

    async fn connect(&self) -> Result<MultiplexedConnection, String> {
        let attempt = self.client.get_multiplexed_async_connection_with_config(&self.connection_config);
        // The client bounds the connection with `connect_timeout`; this bounds the handshake
        // (TLS, AUTH) too.
        match tokio::time::timeout(self.connect_timeout + self.timeout, attempt).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no connection within {} ms", (self.connect_timeout + self.timeout).as_millis())),
        }
    }

    async fn reconnect(self: Arc<Self>) {
        let failures = match &*self.link.lock().unwrap_or_else(|e| e.into_inner()) {
            Link::Down { failures, .. } => *failures,
            _ => return,
        };
        let result = self.connect().await;
        self.settle(result, failures);
    }

    /// Records a connection attempt's outcome; `failures` attempts had failed before it.
    fn settle(&self, result: Result<MultiplexedConnection, String>, failures: u32) {
        let mut link = self.link.lock().unwrap_or_else(|e| e.into_inner());
        let first = matches!(*link, Link::Starting);
        match result {
            Ok(connection) => {
                let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
                *link = Link::Up { connection, generation };
                drop(link);
                metrics::shared_up(true);
                let down_since = self.down_since.lock().unwrap_or_else(|e| e.into_inner()).take();
                match down_since {
                    Some(since) => tracing::info!(
                        server = %self.description,
                        down_secs = since.elapsed().as_secs(),
                        "shared token cache up"
                    ),
                    None => tracing::info!(server = %self.description, "connected to the shared token cache"),
                }
            }
            Err(error) => {
                let failures = failures + 1;
                let wait = Duration::from_secs(1u64 << failures.saturating_sub(1).min(5)).min(MAX_RETRY);
                *link = Link::Down { retry_at: Instant::now() + wait, failures, reconnecting: false };
                drop(link);
                if first {
                    self.log_down(&error);
                }
            }
        }
    }

    /// A command on connection `generation` could not reach the server: skip it from now on.
    fn went_down(&self, generation: u64, error: &str) {
        let mut link = self.link.lock().unwrap_or_else(|e| e.into_inner());
        if !matches!(&*link, Link::Up { generation: current, .. } if *current == generation) {
            return;
        }
        *link = Link::Down { retry_at: Instant::now() + Duration::from_secs(1), failures: 1, reconnecting: false };
        drop(link);
        self.log_down(error);
    }

    fn log_down(&self, error: &str) {
        metrics::shared_up(false);
        *self.down_since.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
        tracing::warn!(
            server = %self.description,
            error,
            "shared token cache down; skipping it (tokens come from memory and the upstream, as without it) and \
             reconnecting in the background"
        );
    }
}

/// Whether an error means the server could not be reached (as opposed to its refusal).
fn reaches_nothing(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_unrecoverable_error()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CacheKey;

    fn cache(key: [u8; 32]) -> Arc<SharedCache> {
        let config = SharedConfig {
            url: "redis://127.0.0.1:1".into(),
            tls: false,
            username: None,
            password: None,
            password_file: None,
            ca_file: None,
            ca_pem: None,
            key: CacheKey::for_tests(key),
            key_prefix: "p:".into(),
            connect_timeout: Duration::from_millis(200),
            timeout: Duration::from_millis(200),
            lease: Duration::from_secs(5),
            lease_wait: Duration::from_secs(1),
        };
        SharedCache::new(&config).unwrap()
    }

    #[test]
    fn names_reveal_neither_client_id_nor_resource_and_depend_on_the_key() {
        let a = cache([1; 32]);
        let names = a.names("11111111-AAAA-4333-8444-555555555555", "https://vault.azure.net");
        for name in [&names.token, &names.lease] {
            assert!(!name.contains("vault") && !name.to_lowercase().contains("aaaa"), "{name}");
        }
        assert!(names.token.starts_with("p:token:") && names.lease.starts_with("p:lease:"));
        assert_eq!(names.token, a.names("11111111-aaaa-4333-8444-555555555555", "https://vault.azure.net").token);
        assert_ne!(names.token, a.names("11111111-aaaa-4333-8444-555555555555", "https://vault.azure.net/").token);
        assert_ne!(
            names.token,
            cache([2; 32]).names("11111111-aaaa-4333-8444-555555555555", "https://vault.azure.net").token
        );
    }

    #[test]
    fn a_value_opens_only_under_its_own_name_and_key() {
        let (a, b) = (cache([1; 32]), cache([2; 32]));
        let names = a.names("c", "r");
        let now = 1_000_000;
        let token = AccessToken {
            token: Secret::new("t0k3n-value"),
            expires_on: now + 3600,
            not_before: now,
            ext_expires_on: now + 7200,
            refresh_on: Some(now + 1800),
        };
        let value = Value {
            access_token: token.token.expose().into(),
            expires_on: token.expires_on,
            not_before: token.not_before,
            ext_expires_on: token.ext_expires_on,
            refresh_hint: token.refresh_on,
            refresh_on: now + 1700,
        };
        let sealed = format::seal_record(&a.cipher, &names.context, &serde_json::to_vec(&value).unwrap());
        let opened = a.open(&names, &sealed, now).unwrap();
        assert_eq!(opened.token.token.expose(), "t0k3n-value");
        assert_eq!((opened.refresh_on, opened.token.refresh_on), (now + 1700, Some(now + 1800)));
        assert!(a.open(&a.names("c", "r2"), &sealed, now).is_err_and(|k| k == Unreadable::Tampered));
        assert!(b.open(&names, &sealed, now).is_err_and(|k| k == Unreadable::WrongKey));
        let far = Value { expires_on: now + 3 * 86_400, ..value };
        let sealed = format::seal_record(&a.cipher, &names.context, &serde_json::to_vec(&far).unwrap());
        assert!(a.open(&names, &sealed, now).is_err_and(|k| k == Unreadable::Implausible));
    }

    /// Port 1 on loopback refuses connections: the first lookup tries once, and until the
    /// retry time (tokio's clock, paused here) every lookup and claim is skipped without
    /// another attempt.
    #[tokio::test(start_paused = true)]
    async fn an_unreachable_server_is_skipped_without_waiting_after_the_first_attempt() {
        let shared = cache([1; 32]);
        let names = shared.names("c", "r");
        assert!(matches!(shared.get(&names, 0, &|_| true).await, Found::Unreachable));
        for _ in 0..100 {
            assert!(matches!(shared.get(&names, 0, &|_| true).await, Found::Unreachable));
            assert!(matches!(shared.claim(&names, true, 0, &|_| true).await, Claim::Alone));
        }
        let link = shared.link.lock().unwrap();
        assert!(
            matches!(*link, Link::Down { failures: 1, reconnecting: false, .. }),
            "one attempt, no reconnection before the retry time"
        );
    }
}
