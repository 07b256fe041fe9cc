//! Wiring of the persistent cache: open the store the configuration names, load it into the
//! broker before serving, attach the write-through writer, flush it at exit; and the
//! `cache list` / `cache clear` commands.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::AppError;
use crate::broker::Broker;
use crate::cli::CacheAction;
use crate::clock::{self, Clock, SystemClock};
use crate::config::Config;
use crate::store::{self, FileStore, OnUnreadable, Snapshot, Store, StoreError};

/// Longest wait for the last write at exit.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The persistent store of this run, opened once by [`open`]: the broker's cache and the
/// `user` credential's refresh token live in the same file, and one `FileStore` per file
/// keeps one process from locking and rewriting it through two handles. `Ok(None)`:
/// persistence is off (not configured, or `--dev`); `Err`: configured but unusable here.
pub type Opened = Result<Option<Arc<FileStore>>, store::Unavailable>;

/// Loads the store's unexpired tokens into the broker (at most `cache.max_entries` per
/// identity) and persists the cache from now on. Never fails the start: a store that cannot
/// work is logged and the service runs from memory.
pub async fn attach(config: &Config, opened: &Opened, broker: &Arc<Broker>) {
    attach_loaded(start_loading(config, opened), broker).await;
}

/// A read of the persistent cache under way on a blocking thread ([`start_loading`]).
pub struct Loading {
    store: Arc<FileStore>,
    /// Whether users' tokens are persisted (and loaded) too.
    user_tokens: bool,
    started: Instant,
    task: tokio::task::JoinHandle<Result<Snapshot, StoreError>>,
}

/// Starts reading the store on a blocking thread (logging why not when it is unusable).
/// Reading and decrypting a large store is most of the time to readiness and needs nothing
/// but the configuration, so `serve` starts it first and binds its listeners and builds its
/// credentials meanwhile.
pub fn start_loading(config: &Config, opened: &Opened) -> Option<Loading> {
    let store = for_cache(opened)?;
    let started = Instant::now();
    let loading = Arc::clone(&store);
    // Never more than the cache can hold: only those tokens are copied out of the file.
    let max_per_client = usize::try_from(config.cache.max_entries).unwrap_or(usize::MAX);
    let task = tokio::task::spawn_blocking(move || loading.load_bounded(max_per_client, SystemClock.now()));
    let user_tokens = config.cache.persistence.as_ref().is_some_and(|p| p.user_tokens);
    // Users' tokens only ever go into an encrypted file, whatever else plaintext is allowed for.
    if user_tokens && store.is_plaintext() {
        tracing::warn!(
            store = %store.describe(),
            "cache.persistence.user_tokens is set, but the cache file is not encrypted: users' tokens stay in memory"
        );
    }
    let user_tokens = user_tokens && !store.is_plaintext();
    Some(Loading { store, user_tokens, started, task })
}

/// [`attach`] with the read already started.
pub async fn attach_loaded(loading: Option<Loading>, broker: &Arc<Broker>) {
    let Some(Loading { store, user_tokens, started, task }) = loading else { return };
    if user_tokens {
        broker.persist_user_tokens();
    }
    let snapshot = match task.await {
        Ok(Ok(snapshot)) => snapshot,
        Ok(Err(error)) => {
            tracing::error!(%error, "persistent token cache unusable; tokens stay in memory for this run");
            return;
        }
        Err(error) => {
            tracing::error!(%error, "loading the persistent token cache failed; tokens stay in memory for this run");
            return;
        }
    };
    let read_ms = started.elapsed().as_millis() as u64;
    let found = snapshot.tokens.len();
    let mut tokens = snapshot.tokens;
    let implausible = drop_implausible(&mut tokens, broker.now());
    if implausible > 0 {
        tracing::warn!(
            store = %store.describe(),
            implausible,
            "ignored {implausible} persisted token(s) that expire more than {} h ahead, further than Entra issues \
             tokens for: a forged cache file, or one written while the clock was wrong. They are fetched anew",
            store::MAX_PLAUSIBLE_LIFETIME / 3600
        );
    }
    let report = broker.seed(tokens).await;
    tracing::info!(
        store = %store.describe(),
        found,
        loaded = report.loaded,
        users = report.users,
        expired = report.expired,
        implausible,
        unknown_identity = report.unknown_identity,
        over_limit = report.over_limit,
        read_ms,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "loaded the persistent token cache"
    );
    // A file with tokens is written once at once: what was not loaded (over the limit,
    // expired) leaves it, and the loaded tokens are marked as this run's.
    broker.persist_to(store, found > 0);
}

/// Removes the tokens that expire implausibly far after `now` ([`store::implausible`]);
/// returns how many.
fn drop_implausible(tokens: &mut Vec<store::PersistedToken>, now: u64) -> usize {
    let before = tokens.len();
    tokens.retain(|t| !store::implausible(t.token.expires_on, now));
    before - tokens.len()
}

/// Writes what is still queued; called once serving has stopped.
pub async fn flush(broker: &Broker) {
    let Some(writer) = broker.writer() else { return };
    if tokio::time::timeout(FLUSH_TIMEOUT, writer.flush()).await.is_err() {
        tracing::warn!(store = writer.description(), "the last tokens were not persisted in time");
    }
}

/// Opens the store the configuration names, once per run ([`Opened`]).
pub fn open(config: &Config) -> Opened {
    let Some(persistence) = config.cache.persistence.as_ref() else { return Ok(None) };
    if config.is_dev() {
        // The development issuer's key dies with the process, so its tokens would not
        // verify after a restart; and real tokens must not be served in development mode.
        tracing::info!("persistent token cache not used under --dev");
        return Ok(None);
    }
    if let Some(warning) = persistence.key.as_ref().and_then(|key| key.warning()) {
        tracing::warn!("{warning}");
    }
    let store = store::open(persistence)?;
    if let Some(warning) = store.directory_warning() {
        tracing::warn!("{warning}");
    }
    Ok(Some(store))
}

/// The store for the token cache, or `None` (logged) when persistence is off or cannot work
/// here.
fn for_cache(opened: &Opened) -> Option<Arc<FileStore>> {
    match opened {
        Ok(store) => store.clone(),
        Err(unavailable) if unavailable.explicit => {
            tracing::error!(reason = %unavailable, "persistent token cache off: the configured backend cannot work here");
            None
        }
        Err(unavailable) => {
            tracing::warn!(reason = %unavailable, "persistent token cache off: no protected storage is available");
            None
        }
    }
}

/// `tokenrelay cache list` and `tokenrelay cache clear`.
pub async fn cache(config: &Config, action: CacheAction) -> Result<(), AppError> {
    let Some(persistence) = config.cache.persistence.as_ref() else {
        // The command line forces persistence on, so this only happens through a bug.
        return Err(AppError::Runtime("the persistent cache is not configured".to_owned()));
    };
    let store = store::open(persistence)
        .map_err(|unavailable| AppError::Runtime(format!("the persistent cache cannot be used: {unavailable}")))?;
    let result = tokio::task::spawn_blocking(move || run_cache(&*store, action)).await;
    result.map_err(|error| AppError::Runtime(error.to_string()))?.map_err(AppError::Runtime)
}

fn run_cache(store: &dyn Store, action: CacheAction) -> Result<(), String> {
    match action {
        CacheAction::List { .. } => {
            let snapshot = store.load(OnUnreadable::Report).map_err(|e| match e {
                StoreError::Unreadable { .. } => format!(
                    "{e}; `tokenrelay serve` would move it aside and start empty, `tokenrelay cache clear` empties it"
                ),
                e => e.to_string(),
            })?;
            println!("# {}: {} token(s)", printable(&store.describe()), snapshot.tokens.len());
            print!("{}", table(&snapshot.tokens, SystemClock.now()));
            for account in &snapshot.accounts {
                println!("{}", sign_in(account));
            }
            Ok(())
        }
        CacheAction::Clear { identity, .. } => {
            let removed = store.clear(identity.as_deref()).map_err(|e| e.to_string())?;
            match identity {
                Some(identity) => println!(
                    "removed {removed} token(s) of identity {} from {}",
                    printable(&identity),
                    printable(&store.describe())
                ),
                None => println!("removed {removed} token(s) from {}", printable(&store.describe())),
            }
            Ok(())
        }
    }
}

/// The line for a stored sign-in.
fn sign_in(account: &store::PersistedAccount) -> String {
    format!(
        "# sign-in {} (client {}, refresh token stored {}; `tokenrelay login`)",
        printable(&account.home_account_id),
        printable(&account.client_id),
        clock::rfc3339(account.updated_at)
    )
}

/// `text` safe to print to a terminal: whatever is in the file, a field stays on its line
/// and sends the terminal nothing but text. Control characters become escapes (`\n`, `\t`,
/// `\x1b`, `\u{9b}`), as do the invisible characters that reorder or hide text (bidi
/// controls such as `\u{202e}`, zero-width characters, line separators); a backslash is
/// doubled so that no escape is ambiguous.
fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    fn hidden(c: char) -> bool {
        c.is_control()
            || matches!(
                c,
                '\u{ad}' | '\u{61c}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}'
            )
    }
    if !text.chars().any(|c| c == '\\' || hidden(c)) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && hidden(c) => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if hidden(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The listing: one row per token with its fingerprint, never the token. Every field read
/// from the file is [`printable`].
fn table(tokens: &[store::PersistedToken], now: u64) -> String {
    let header = ["IDENTITY", "CLIENT_ID", "RESOURCE", "EXPIRES_ON", "FINGERPRINT"].map(str::to_owned);
    let rows: Vec<[String; 5]> = tokens
        .iter()
        .map(|t| {
            let expires_on = t.token.expires_on;
            let left = if store::implausible(expires_on, now) {
                format!("implausible: more than {} h ahead, never served", store::MAX_PLAUSIBLE_LIFETIME / 3600)
            } else if expires_on > now {
                format!("in {} min", (expires_on - now) / 60)
            } else {
                "expired".to_owned()
            };
            [
                printable(&t.identity).into_owned(),
                printable(&t.client_id).into_owned(),
                printable(&t.resource).into_owned(),
                format!("{} ({left})", clock::rfc3339(expires_on)),
                t.token.token.fingerprint(),
            ]
        })
        .collect();
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row.iter().zip(widths).map(|(cell, width)| format!("{cell:width$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use crate::token::AccessToken;

    #[test]
    fn the_listing_shows_a_fingerprint_never_the_token() {
        let token = store::PersistedToken {
            identity: "app".into(),
            client_id: "c1".into(),
            resource: "https://vault.azure.net".into(),
            credential: "client_secret".into(),
            refresh_on: 0,
            token: AccessToken {
                token: Secret::new("eyJ0eXAiOiJKV1QiLCJhbGciOi.secret"),
                expires_on: 7200,
                not_before: 0,
                ext_expires_on: 7200,
                refresh_on: None,
            },
            in_use: true,
            written_by: 0,
        };
        let text = table(std::slice::from_ref(&token), 3600);
        assert!(!text.contains("eyJ0eXAi"), "{text}");
        assert!(text.contains(&token.token.token.fingerprint()) && text.contains("1970-01-01T02:00:00Z (in 60 min)"));
    }

    fn token(identity: &str, client_id: &str, resource: &str, expires_on: u64) -> store::PersistedToken {
        store::PersistedToken {
            identity: identity.into(),
            client_id: client_id.into(),
            resource: resource.into(),
            credential: "client_secret".into(),
            refresh_on: 0,
            token: AccessToken::with_lifetime(Secret::new("t"), 0, expires_on),
            in_use: false,
            written_by: 0,
        }
    }

    #[test]
    fn printable_escapes_controls_and_invisible_characters() {
        assert!(matches!(printable("https://vault.azure.net/é"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(printable("a\nb\r\tc"), "a\\nb\\r\\tc");
        assert_eq!(printable("\u{1b}[2J\u{7}\u{7f}"), "\\x1b[2J\\x07\\x7f");
        assert_eq!(printable("\u{9b}31m"), "\\u{9b}31m", "the 8-bit CSI");
        assert_eq!(printable("x\u{202e}y\u{200b}\u{2028}\u{feff}"), "x\\u{202e}y\\u{200b}\\u{2028}\\u{feff}");
        assert_eq!(printable("C:\\n"), "C:\\\\n", "a backslash is doubled, so no escape is ambiguous");
    }

    #[test]
    fn the_listing_escapes_every_field_read_from_the_file() {
        let forged = token(
            "app\u{1b}]0;owned\u{7}",
            "c1\u{202e}",
            "https://r.example\napp  c1  https://vault.azure.net  2099-01-01T00:00:00Z  forged-row",
            7200,
        );
        let text = table(&[forged], 3600);
        assert_eq!(text.lines().count(), 2, "one header and one row:\n{text}");
        assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "{text:?}");
        assert!(!text.contains('\u{202e}'), "{text:?}");
        assert!(text.contains("app\\x1b]0;owned\\x07") && text.contains("c1\\u{202e}"), "{text}");
        assert!(text.contains("https://r.example\\napp  c1"), "{text}");

        let account = store::PersistedAccount {
            home_account_id: "oid.tid\n# sign-in forged".into(),
            client_id: "\u{1b}[31mred".into(),
            tenant_id: "tid".into(),
            refresh_token: Secret::new("refresh-token-value"),
            updated_at: 0,
        };
        let line = sign_in(&account);
        assert!(!line.contains('\n') && !line.contains('\u{1b}') && !line.contains("refresh-token-value"), "{line:?}");
        assert!(line.contains("oid.tid\\n# sign-in forged") && line.contains("\\x1b[31mred"), "{line}");
    }

    #[test]
    fn the_listing_marks_implausible_expiries_and_they_are_not_loaded() {
        let now = 1_000_000;
        let far = now + store::MAX_PLAUSIBLE_LIFETIME + 1;
        let text = table(&[token("app", "c1", "r", far)], now);
        assert!(text.contains("implausible: more than 48 h ahead, never served"), "{text}");

        let mut tokens = vec![token("app", "c1", "r1", far), token("app", "c1", "r2", now + 3600)];
        assert_eq!(drop_implausible(&mut tokens, now), 1);
        assert_eq!(tokens.len(), 1);
        assert_eq!(tokens[0].resource, "r2");
    }
}
