//! Wiring of the persistent cache: open the store the configuration names, load it into the
//! broker before serving, attach the write-through writer, flush it at exit; and the
//! `cache list` / `cache clear` commands.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::broker::Broker;
use crate::cli::CacheAction;
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::store::{self, FileStore, OnUnreadable, Snapshot, Store, StoreError};

/// Longest wait for the last write at exit.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens the store (when `[cache.persistence]` is on), loads its unexpired tokens into the
/// broker (at most `cache.max_entries` per identity) and persists the cache from now on. Never fails the start: a store that
/// cannot work is logged and the service runs from memory.
pub async fn attach(config: &Config, broker: &Arc<Broker>) {
    attach_loaded(start_loading(config), broker).await;
}

/// A read of the persistent cache under way on a blocking thread ([`start_loading`]).
pub struct Loading {
    store: Arc<FileStore>,
    started: Instant,
    task: tokio::task::JoinHandle<Result<Snapshot, StoreError>>,
}

/// Opens the store and starts reading it on a blocking thread. Reading and decrypting a large
/// store is most of the time to readiness and needs nothing but the configuration, so
/// `serve` starts it first and binds its listeners and builds its credentials meanwhile.
pub fn start_loading(config: &Config) -> Option<Loading> {
    let store = open(config)?;
    let started = Instant::now();
    let loading = Arc::clone(&store);
    // Never more than the cache can hold: only those tokens are copied out of the file.
    let max_per_client = usize::try_from(config.cache.max_entries).unwrap_or(usize::MAX);
    let task = tokio::task::spawn_blocking(move || loading.load_bounded(max_per_client, SystemClock.now()));
    Some(Loading { store, started, task })
}

/// [`attach`] with the read already started.
pub async fn attach_loaded(loading: Option<Loading>, broker: &Arc<Broker>) {
    let Some(Loading { store, started, task }) = loading else { return };
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
    let report = broker.seed(snapshot.tokens).await;
    tracing::info!(
        store = %store.describe(),
        found,
        loaded = report.loaded,
        expired = report.expired,
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

/// Writes what is still queued; called once serving has stopped.
pub async fn flush(broker: &Broker) {
    let Some(writer) = broker.writer() else { return };
    if tokio::time::timeout(FLUSH_TIMEOUT, writer.flush()).await.is_err() {
        tracing::warn!(store = writer.description(), "the last tokens were not persisted in time");
    }
}

/// The store, or `None` (logged) when persistence is off or cannot work here.
fn open(config: &Config) -> Option<Arc<FileStore>> {
    let persistence = config.cache.persistence.as_ref()?;
    if config.is_dev() {
        // The development issuer's key dies with the process, so its tokens would not
        // verify after a restart; and real tokens must not be served in development mode.
        tracing::info!("persistent token cache not used under --dev");
        return None;
    }
    match store::open(persistence) {
        Ok(store) => {
            if let Some(warning) = store.directory_warning() {
                tracing::warn!("{warning}");
            }
            Some(store)
        }
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
pub async fn cache(config: &Config, action: CacheAction) -> ExitCode {
    let Some(persistence) = config.cache.persistence.as_ref() else {
        // The command line forces persistence on, so this only happens through a bug.
        eprintln!("tokenrelay: the persistent cache is not configured");
        return ExitCode::FAILURE;
    };
    let store = match store::open(persistence) {
        Ok(store) => store,
        Err(unavailable) => {
            eprintln!("tokenrelay: the persistent cache cannot be used: {unavailable}");
            return ExitCode::FAILURE;
        }
    };
    let result = tokio::task::spawn_blocking(move || run_cache(&*store, action)).await;
    match result {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(error)) => {
            eprintln!("tokenrelay: {error}");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("tokenrelay: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run_cache(store: &dyn Store, action: CacheAction) -> Result<(), String> {
    match action {
        CacheAction::List { .. } => {
            let snapshot = store.load(OnUnreadable::Report).map_err(|e| {
                format!(
                    "{e}; `tokenrelay serve` would move it aside and start empty, `tokenrelay cache clear` empties it"
                )
            })?;
            println!("# {}: {} token(s)", store.describe(), snapshot.tokens.len());
            print!("{}", table(&snapshot.tokens, SystemClock.now()));
            for account in &snapshot.accounts {
                println!(
                    "# sign-in {} (client {}, refresh token stored {}; `tokenrelay login`)",
                    account.home_account_id,
                    account.client_id,
                    store::utc(account.updated_at)
                );
            }
            Ok(())
        }
        CacheAction::Clear { identity, .. } => {
            let removed = store.clear(identity.as_deref()).map_err(|e| e.to_string())?;
            match identity {
                Some(identity) => {
                    println!("removed {removed} token(s) of identity {identity:?} from {}", store.describe())
                }
                None => println!("removed {removed} token(s) from {}", store.describe()),
            }
            Ok(())
        }
    }
}

/// The listing: one row per token with its fingerprint, never the token.
fn table(tokens: &[store::PersistedToken], now: u64) -> String {
    let header = ["IDENTITY", "CLIENT_ID", "RESOURCE", "EXPIRES_ON", "FINGERPRINT"].map(str::to_owned);
    let rows: Vec<[String; 5]> = tokens
        .iter()
        .map(|t| {
            let expires_on = t.token.expires_on;
            let left =
                if expires_on > now { format!("in {} min", (expires_on - now) / 60) } else { "expired".to_owned() };
            [
                t.identity.clone(),
                t.client_id.clone(),
                t.resource.clone(),
                format!("{} ({left})", store::utc(expires_on)),
                t.token.token.fingerprint(),
            ]
        })
        .collect();
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
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
    use crate::credential::AccessToken;
    use crate::secret::Secret;

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
}
