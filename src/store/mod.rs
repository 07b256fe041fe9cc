//! The persistent token cache: tokens kept across restarts, so a restarted tokenrelay serves
//! at once and keeps serving through an Entra outage (docs/persistent-cache.md).
//!
//! One [`Store`] trait with one real backend, a file ([`file::FileStore`]) and its journal
//! ([`journal`]: a save appends what changed, a compaction rewrites the file atomically), under
//! an advisory lock, in the record layout of `records.rs` (older files in that of [`format`]):
//! AES-256-GCM with a key from
//! `key_file`, an environment variable or the OS keyring ([`keyring`]), or plaintext when the
//! operator explicitly allowed it. [`open`] picks the protection from the configuration;
//! [`writer::Writer`] persists fetched tokens off the request path, in batches.
//!
//! Why the keyring holds only the key: the kernel keyutils keyring lets a non-root user keep
//! 20 000 bytes in total (`/proc/sys/kernel/keys/maxbytes`), about ten tokens, and Windows'
//! Credential Manager 2 560 bytes per entry; a token set does not fit. Azure's Go SDK stores
//! its Linux cache the same way (an encrypted file, its key in the kernel keyring).
//!
//! Nothing here crashes the service: a store that cannot be read is moved aside and the
//! service starts empty; one that cannot be written is logged and the tokens stay in memory.

pub mod file;
pub mod format;
pub mod journal;
pub mod keyring;
mod records;
pub mod writer;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;

use crate::config::{PersistenceBackend, PersistenceConfig};
use crate::secret::Secret;
use crate::token::AccessToken;

pub use file::FileStore;
pub use format::{Cipher, DecodeError, Protection};
pub use writer::Writer;

/// One cached token as persisted: whose it is, for what, and when to refresh it.
#[derive(Clone, Debug)]
pub struct PersistedToken {
    /// The identity's configuration name when the token was written (for display).
    pub identity: String,
    /// The identity's client id: what a restarted broker matches on.
    pub client_id: String,
    /// The normalised resource.
    pub resource: String,
    /// The credential kind that produced it (for logs).
    pub credential: String,
    /// When the broker planned to refresh it (epoch seconds).
    pub refresh_on: u64,
    /// The token with its timing.
    pub token: AccessToken,
    /// Whether the writer held it among its tokens in use (the main segment of
    /// `broker::TokenCache`) rather than on probation; a start keeps these first.
    pub in_use: bool,
    /// The process that last wrote it from its memory ([`Held::writer`]); 0 when unknown.
    pub written_by: u64,
}

/// A token a process holds in memory, as a save reads it: borrowed, never copied.
pub trait HeldToken: Send + Sync {
    /// The token with its timing.
    fn access_token(&self) -> &AccessToken;
    /// When the broker plans to refresh it (epoch seconds).
    fn refresh_on(&self) -> u64;
}

impl HeldToken for PersistedToken {
    fn access_token(&self) -> &AccessToken {
        &self.token
    }
    fn refresh_on(&self) -> u64 {
        self.refresh_on
    }
}

/// One identity's tokens in memory when a save starts.
pub struct HeldIdentity {
    /// The identity's configuration name.
    pub name: String,
    /// Its client id: what the file's tokens are matched on.
    pub client_id: String,
    /// Its credential kind (for `cache list` and logs).
    pub credential: String,
    /// Each cached resource, its token, and whether the token is in use (not on probation).
    pub tokens: Vec<(Arc<String>, Arc<dyn HeldToken>, bool)>,
}

/// What a save writes: a process's memory cache, which is what the file keeps of its
/// identities (design in [`Store::save`]).
pub struct Held {
    /// Every identity the process serves, with the tokens it holds.
    pub identities: Vec<HeldIdentity>,
    /// A random id of the writing process, drawn at each start, recorded with every token it
    /// writes. 0 claims nothing: such a save only merges.
    pub writer: u64,
    /// Most tokens kept in the file per client id (`cache.max_entries`).
    pub max_per_client: usize,
}

impl Held {
    /// Persisted tokens as held ones, grouped by client id (tools and tests).
    pub fn from_tokens(tokens: Vec<PersistedToken>, writer: u64, max_per_client: usize) -> Self {
        let mut identities: Vec<HeldIdentity> = Vec::new();
        for token in tokens {
            let resource = Arc::new(token.resource.clone());
            let in_use = token.in_use;
            let index = match identities.iter().position(|i| i.client_id.eq_ignore_ascii_case(&token.client_id)) {
                Some(index) => index,
                None => {
                    identities.push(HeldIdentity {
                        name: token.identity.clone(),
                        client_id: token.client_id.clone(),
                        credential: token.credential.clone(),
                        tokens: Vec::new(),
                    });
                    identities.len() - 1
                }
            };
            identities[index].tokens.push((resource, Arc::new(token), in_use));
        }
        Self { identities, writer, max_per_client }
    }

    /// Whether this save speaks for `client_id`: one of the identities it holds.
    pub(crate) fn serves(&self, client_id: &str) -> Option<&HeldIdentity> {
        self.identities.iter().find(|i| i.client_id.eq_ignore_ascii_case(client_id))
    }
}

/// Where the [`Writer`] reads what to persist: the broker's memory cache.
#[async_trait]
pub trait HeldSource: Send + Sync {
    /// The tokens held now ([`Held::writer`] is filled in by the writer).
    async fn held(&self) -> Held;
}

/// The order of tokens in a store, which is also what makes two tokens the same key: client
/// ids compare case-insensitively, as Azure's do, then resources exactly. Byte-wise, so it
/// is the order of `(client_id.to_ascii_lowercase(), resource)` without allocating either.
pub(crate) fn key_order(a: (&str, &str), b: (&str, &str)) -> std::cmp::Ordering {
    a.0.bytes()
        .map(|b| b.to_ascii_lowercase())
        .cmp(b.0.bytes().map(|b| b.to_ascii_lowercase()))
        .then_with(|| a.1.cmp(b.1))
}

/// A signed-in user's refresh token (`tokenrelay login`), keyed by the account and the
/// public client it was issued to. The refresh token is the most sensitive thing stored: it
/// yields new access tokens for weeks.
#[derive(Clone, Debug)]
pub struct PersistedAccount {
    /// `<object id>.<tenant id>`, as in the AuthenticationRecord.
    pub home_account_id: String,
    /// The public client application the refresh token belongs to.
    pub client_id: String,
    /// The tenant the user signed in to.
    pub tenant_id: String,
    /// The refresh token.
    pub refresh_token: Secret,
    /// When it was stored (epoch seconds); the newest wins a merge.
    pub updated_at: u64,
}

impl PersistedAccount {
    fn key(&self) -> (String, String) {
        (self.home_account_id.to_ascii_lowercase(), self.client_id.to_ascii_lowercase())
    }
}

/// Everything a store holds.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Tokens, at most one per (client id, resource).
    pub tokens: Vec<PersistedToken>,
    /// Signed-in users' refresh tokens, at most one per (account, client id).
    pub accounts: Vec<PersistedAccount>,
}

impl Snapshot {
    /// The refresh token stored for an account and client, if any.
    pub fn account(&self, home_account_id: &str, client_id: &str) -> Option<&PersistedAccount> {
        self.accounts.iter().find(|a| {
            a.home_account_id.eq_ignore_ascii_case(home_account_id) && a.client_id.eq_ignore_ascii_case(client_id)
        })
    }
}

/// What a store does when the file it finds cannot be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnUnreadable {
    /// Rename it aside with a timestamp, log why, and carry on empty (`serve`).
    MoveAside,
    /// Leave it where it is and return [`StoreError::Unreadable`] (`cache list`).
    Report,
}

/// Why a store operation failed. Messages name the file and the cause, never contents.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file system operation failed (permissions, a full disk, a missing directory).
    #[error("{action} {path}: {source}")]
    Io { action: &'static str, path: String, source: std::io::Error },
    /// The file exists but cannot be used; with [`OnUnreadable::Report`] it is left alone.
    #[error("cannot read the token cache {path}: {reason}")]
    Unreadable { path: String, reason: String },
    /// A file that could not be read could not be moved aside either; it is left untouched
    /// and nothing is written over it.
    #[error("cannot move the unreadable token cache {path} aside ({reason}): {source}")]
    CannotMoveAside { path: String, reason: String, source: std::io::Error },
    /// A file another user could have planted ([`crate::trust`]) that is left where it is; nothing
    /// is read from it, locked on it or written over it.
    #[error("refusing the {what} {path}: {reason}")]
    Refused { what: &'static str, path: String, reason: String },
}

impl StoreError {
    /// An I/O error on `path`.
    pub fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io { action, path: path.display().to_string(), source }
    }
}

/// What a save did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SaveReport {
    /// Tokens in the file afterwards.
    pub kept: usize,
    /// Expired tokens dropped (and any expiring [implausibly](implausible) far ahead).
    pub pruned: usize,
    /// Unexpired tokens dropped: this writer's that it no longer holds, and any beyond
    /// `max_per_client` for a client id.
    pub dropped: usize,
    /// Whether the save rewrote the file (a compaction) rather than appending to the
    /// journal. After an append, `kept` counts the tokens as this process's own changes left
    /// the file, and `pruned` is 0: expired tokens are dropped by the next compaction.
    pub compacted: bool,
}

/// A place tokens survive restarts in. Calls block on file I/O: async callers use
/// `spawn_blocking` (the [`Writer`] does).
pub trait Store: Send + Sync {
    /// Where and how tokens are kept, for logs (`encrypted file /x (key from key_file /k)`).
    fn describe(&self) -> String;

    /// Everything in the store. A missing file is an empty store.
    fn load(&self, on_unreadable: OnUnreadable) -> Result<Snapshot, StoreError>;

    /// What a start loads: at most `max_per_client` unexpired tokens per client id, those in
    /// use first and then the freshest (latest `expires_on`). Only the tokens kept are
    /// copied out of the file's buffer, so a file larger than the bound (from a release
    /// without it, or a larger `max_entries`) costs its bytes, not a token set that size.
    /// A file that cannot be read is moved aside ([`OnUnreadable::MoveAside`]).
    fn load_bounded(&self, max_per_client: usize, now: u64) -> Result<Snapshot, StoreError>;

    /// Writes what `held` holds and prunes the rest, under the store's lock. Afterwards the
    /// store holds every token in `held`. Of the tokens it held before, those this writer
    /// wrote and no longer holds (evicted or expired from its memory) are dropped; those
    /// another process sharing the file wrote, and those of client ids `held` does not serve,
    /// stay. Per key the token that expires last wins. A compaction also drops expired tokens
    /// and keeps no more than `max_per_client` per client id (held ones first, then those in
    /// use, then the freshest); the file backend compacts at a writer's first save and often
    /// enough after ([`journal`]). So the file holds what memory holds, and never more than
    /// `max_per_client` tokens per client id once compacted.
    fn save(&self, held: &Held, now: u64) -> Result<SaveReport, StoreError>;

    /// Removes every token, or those of one identity (its name or client id). Returns how
    /// many were removed. Clearing everything also removes the stored sign-ins.
    fn clear(&self, identity: Option<&str>) -> Result<usize, StoreError>;

    /// Stores (or replaces) a signed-in user's refresh token, under the lock.
    fn save_account(&self, account: PersistedAccount) -> Result<(), StoreError>;
}

/// Puts `account` into `accounts`, replacing an older one for the same account and client.
pub fn merge_account(accounts: &mut Vec<PersistedAccount>, account: PersistedAccount) {
    match accounts.iter_mut().find(|a| a.key() == account.key()) {
        Some(existing) if existing.updated_at <= account.updated_at => *existing = account,
        Some(_) => {}
        None => accounts.push(account),
    }
}

/// How far ahead a persisted token may expire and still be believed: two days. Entra issues
/// access tokens for at most 28 hours (continuous access evaluation; a managed identity's
/// last 24). A token that expires later was not issued that way: a forged file, or one
/// written under a clock that was far wrong. It is not served, and a save drops it, since a
/// merge would otherwise keep it over every genuine token for its key.
pub const MAX_PLAUSIBLE_LIFETIME: u64 = 2 * 86_400;

/// Whether a token expiring at `expires_on` is further ahead of `now` than any Entra issues.
pub fn implausible(expires_on: u64, now: u64) -> bool {
    expires_on > now.saturating_add(MAX_PLAUSIBLE_LIFETIME)
}

/// Merges two token sets: per (client id, resource) the one that expires last; tokens that
/// expired by `now`, or that expire implausibly far after it, are dropped. Returns the merged
/// set (sorted, for stable files) and how many were pruned.
pub fn merge(existing: Vec<PersistedToken>, incoming: Vec<PersistedToken>, now: u64) -> (Vec<PersistedToken>, usize) {
    merge_by(
        existing.into_iter().chain(incoming),
        now,
        |t| t.token.expires_on,
        |a, b| key_order((&a.client_id, &a.resource), (&b.client_id, &b.resource)),
    )
}

/// [`merge`] for any representation of a token (the file format merges tokens whose strings
/// still lie in the decrypted file): `tokens` in arrival order, existing before incoming;
/// per key under `order`, the one that expires last wins, a later arrival on a tie.
pub(crate) fn merge_by<T>(
    tokens: impl IntoIterator<Item = T>,
    now: u64,
    expires_on: impl Fn(&T) -> u64,
    order: impl Fn(&T, &T) -> std::cmp::Ordering,
) -> (Vec<T>, usize) {
    let mut live = Vec::new();
    let mut pruned = 0;
    for token in tokens {
        if expires_on(&token) <= now || implausible(expires_on(&token), now) {
            pruned += 1;
        } else {
            live.push(token);
        }
    }
    // Stable, so tokens of one key stay in arrival order for the fold below.
    live.sort_by(&order);
    let mut merged: Vec<T> = Vec::with_capacity(live.len());
    for token in live {
        match merged.last_mut() {
            Some(last) if order(last, &token).is_eq() => {
                if expires_on(&token) >= expires_on(last) {
                    *last = token;
                }
            }
            _ => merged.push(token),
        }
    }
    (merged, pruned)
}

/// Drops, from `tokens` sorted by [`key_order`], those beyond `cap` per client id
/// (case-insensitive): within a client id, the ones with the greatest `priority` stay. The
/// order of what stays is kept. Returns how many were dropped.
pub(crate) fn cap_per_client<T, P: Ord>(
    tokens: &mut Vec<T>,
    cap: usize,
    client_id: impl Fn(&T) -> &str,
    priority: impl Fn(&T) -> P,
) -> usize {
    let mut keep = vec![true; tokens.len()];
    let mut dropped = 0;
    let mut start = 0;
    while start < tokens.len() {
        let mut end = start + 1;
        while end < tokens.len() && client_id(&tokens[end]).eq_ignore_ascii_case(client_id(&tokens[start])) {
            end += 1;
        }
        if end - start > cap {
            let mut ranked: Vec<usize> = (start..end).collect();
            ranked.sort_by_cached_key(|&i| std::cmp::Reverse(priority(&tokens[i])));
            for &i in &ranked[cap..] {
                keep[i] = false;
                dropped += 1;
            }
        }
        start = end;
    }
    if dropped > 0 {
        let mut flags = keep.into_iter();
        tokens.retain(|_| flags.next().unwrap_or(true));
    }
    dropped
}

/// Why persistence is off for this run.
#[derive(Debug)]
pub struct Unavailable {
    /// What is missing and how to fix it.
    pub reason: String,
    /// Whether the operator asked for this backend by name (an error) rather than `auto`
    /// finding nothing usable (a warning).
    pub explicit: bool,
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Opens the store the configuration describes (docs/persistent-cache.md):
///
/// - `file`: the configured key (`key_file` or `key_env`); else a key kept in the OS keyring;
///   else plaintext if `allow_unencrypted_storage`; else off.
/// - `keyring`: a key kept in the OS keyring, else off (never plaintext).
/// - `auto`: like `file`: a configured key, the keyring, plaintext only if allowed, else off.
///
/// Plaintext logs a loud warning every time it is chosen. Never fails the start: a backend
/// that cannot work here is returned as [`Unavailable`] for the caller to log.
pub fn open(config: &PersistenceConfig) -> Result<Arc<FileStore>, Unavailable> {
    let explicit = config.backend != PersistenceBackend::Auto;
    if let Some(key) = &config.key {
        let description = format!("encrypted file {} (key from {})", config.path.display(), key.source());
        return Ok(Arc::new(FileStore::new(
            &config.path,
            Protection::Encrypted(Cipher::new(key.bytes())),
            description,
        )));
    }
    let keyring = file::with_lock(&config.path, || Ok(keyring::cache_key(&config.name)));
    let keyring_problem = match keyring {
        Ok(Ok(key)) => {
            let description = format!("encrypted file {} (key in the {})", config.path.display(), keyring::DESCRIPTION);
            return Ok(Arc::new(FileStore::new(&config.path, Protection::Encrypted(Cipher::new(&key)), description)));
        }
        Ok(Err(problem)) => problem,
        Err(error) => {
            return Err(Unavailable { reason: format!("cannot prepare the cache file: {error}"), explicit });
        }
    };
    if config.backend == PersistenceBackend::Keyring {
        return Err(Unavailable {
            reason: format!(
                "cache.persistence.backend = \"keyring\", but the keyring does not work here: {keyring_problem}"
            ),
            explicit,
        });
    }
    if config.allow_unencrypted_storage {
        tracing::warn!(
            path = %config.path.display(),
            "UNENCRYPTED TOKEN CACHE: access tokens are written in plaintext to {} because \
             cache.persistence.allow_unencrypted_storage = true and no key is available (no key_file or key_env, \
             and the keyring does not work here: {keyring_problem}). Anyone who can read that file can use the \
             tokens until they expire; configure a key_file to encrypt it",
            config.path.display()
        );
        let description = format!("UNENCRYPTED file {}", config.path.display());
        return Ok(Arc::new(FileStore::new(&config.path, Protection::Plaintext, description)));
    }
    Err(Unavailable {
        reason: format!(
            "no encryption key: set cache.persistence.key_file (or key_env) to a 32-byte key, or run where the \
             keyring works ({keyring_problem}); cache.persistence.allow_unencrypted_storage = true would store tokens \
             in plaintext instead"
        ),
        explicit,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A persisted token for client id `client_id`; refresh_on is `expires_on - 1000`.
    pub fn token(client_id: &str, resource: &str, expires_on: u64, value: &str) -> PersistedToken {
        PersistedToken {
            identity: "app".into(),
            client_id: client_id.into(),
            resource: resource.into(),
            credential: "client_secret".into(),
            refresh_on: expires_on.saturating_sub(1000),
            token: AccessToken::with_lifetime(Secret::new(value), 0, expires_on),
            in_use: false,
            written_by: 0,
        }
    }

    #[test]
    fn the_cap_keeps_the_highest_priority_per_client_id_in_order() {
        let mut tokens = vec![
            token("a", "r1", 1000, "a1"),
            token("A", "r2", 3000, "a2"),
            token("a", "r3", 2000, "a3"),
            token("b", "r1", 1000, "b1"),
        ];
        let dropped = cap_per_client(&mut tokens, 2, |t| &t.client_id, |t| t.token.expires_on);
        assert_eq!(dropped, 1);
        let left: Vec<&str> = tokens.iter().map(|t| t.token.token.expose()).collect();
        assert_eq!(left, ["a2", "a3", "b1"], "the least fresh of client a went; order kept");
        assert_eq!(cap_per_client(&mut tokens, 2, |t| &t.client_id, |t| t.token.expires_on), 0);
    }

    #[test]
    fn merge_keeps_the_newest_per_key_and_prunes_expired() {
        let existing =
            vec![token("A", "r1", 5000, "old"), token("b", "r2", 3000, "expired"), token("a", "r3", 9000, "x")];
        let incoming = vec![token("a", "r1", 6000, "new"), token("a", "r3", 8000, "older")];
        let (merged, pruned) = merge(existing, incoming, 4000);
        assert_eq!(pruned, 1);
        let values: Vec<_> = merged.iter().map(|t| (t.resource.as_str(), t.token.token.expose())).collect();
        assert_eq!(values, [("r1", "new"), ("r3", "x")]);
    }

    #[test]
    fn merge_drops_tokens_that_expire_implausibly_far_ahead() {
        let now = 1_000_000;
        let forged = token("a", "r1", now + MAX_PLAUSIBLE_LIFETIME + 1, "forged");
        let genuine = token("a", "r1", now + 3600, "genuine");
        let longest = token("a", "r2", now + MAX_PLAUSIBLE_LIFETIME, "two-days");
        let (merged, pruned) = merge(vec![forged, longest], vec![genuine], now);
        let values: Vec<_> = merged.iter().map(|t| t.token.token.expose()).collect();
        assert_eq!(values, ["genuine", "two-days"], "the forged expiry does not win the merge");
        assert_eq!(pruned, 1);
        assert!(!implausible(u64::MAX, u64::MAX), "no overflow");
    }

    proptest::proptest! {
        /// The sort-based merge keeps exactly what a map keyed by lower-cased client id and
        /// resource keeps, in the same order: per key, the token that expires last (the
        /// later one on a tie), without the expired.
        #[test]
        fn merge_matches_a_map_keyed_by_the_lower_cased_client_id(
            existing in proptest::collection::vec((0usize..4, 0usize..3, 0u64..8), 0..12),
            incoming in proptest::collection::vec((0usize..4, 0usize..3, 0u64..8), 0..12),
        ) {
            let clients = ["a", "A", "b", "ab"];
            let resources = ["r1", "R1", "r2"];
            let make = |offset: usize, list: &[(usize, usize, u64)]| -> Vec<PersistedToken> {
                list.iter()
                    .enumerate()
                    .map(|(n, &(c, r, e))| token(clients[c], resources[r], e, &format!("v{}", offset + n)))
                    .collect()
            };
            let (existing, incoming) = (make(0, &existing), make(100, &incoming));
            let mut map = std::collections::BTreeMap::new();
            let mut expected_pruned = 0;
            for t in existing.iter().chain(&incoming) {
                if t.token.expires_on <= 3 {
                    expected_pruned += 1;
                    continue;
                }
                let key = (t.client_id.to_ascii_lowercase(), t.resource.clone());
                let replace = map.get(&key).is_none_or(|kept: &&PersistedToken| t.token.expires_on >= kept.token.expires_on);
                if replace {
                    map.insert(key, t);
                }
            }
            let expected: Vec<&str> = map.values().map(|t| t.token.token.expose()).collect();
            let (merged, pruned) = merge(existing.clone(), incoming.clone(), 3);
            let got: Vec<&str> = merged.iter().map(|t| t.token.token.expose()).collect();
            proptest::prop_assert_eq!(got, expected);
            proptest::prop_assert_eq!(pruned, expected_pruned);
        }
    }

    #[test]
    fn debug_never_shows_the_token() {
        let text = format!("{:?}", token("a", "r", 5000, "very-secret-token"));
        assert!(!text.contains("very-secret-token"), "{text}");
    }
}
