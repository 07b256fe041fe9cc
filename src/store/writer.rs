//! Write-through off the request path: the broker hands every fetched token to a bounded
//! queue without waiting; one background task collects them for a short window and saves
//! each batch (merge, prune, atomic replace) on a blocking thread. A batch that cannot be
//! written (a read-only or full directory) is kept and written with the next one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{PersistedToken, Store};
use crate::clock::Clock;
use crate::telemetry::metrics;

/// How long the writer gathers tokens before writing them together. Prefetches and a burst
/// of first requests after a start land in one write instead of dozens.
const BATCH_WINDOW: Duration = Duration::from_millis(500);
/// Tokens waiting to be written; beyond it new ones are dropped (they stay in memory).
const QUEUE: usize = 1024;

enum Message {
    Token(Box<PersistedToken>),
    Flush(oneshot::Sender<()>),
}

/// The handle the broker records tokens through.
pub struct Writer {
    queue: mpsc::Sender<Message>,
    dropped: AtomicU64,
    description: String,
}

impl Writer {
    /// Starts the background task on the current tokio runtime.
    pub fn start(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let description = store.describe();
        tokio::spawn(run(store, clock, receiver));
        Self { queue, dropped: AtomicU64::new(0), description }
    }

    /// Queues a token for the next write; never waits.
    pub fn record(&self, token: PersistedToken) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.queue.try_send(Message::Token(Box::new(token))) {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(
                    dropped,
                    "the token cache writer is behind; tokens stay in memory but are not persisted"
                );
            }
        }
    }

    /// Writes everything queued so far and waits for the write (on shutdown).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.queue.send(Message::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Where the tokens go, for logs.
    pub fn description(&self) -> &str {
        &self.description
    }
}

async fn run(store: Arc<dyn Store>, clock: Arc<dyn Clock>, mut receiver: mpsc::Receiver<Message>) {
    let mut pending = Vec::new();
    let mut waiters = Vec::new();
    let take =
        |message: Message, pending: &mut Vec<PersistedToken>, waiters: &mut Vec<oneshot::Sender<()>>| match message {
            Message::Token(token) => pending.push(*token),
            Message::Flush(done) => waiters.push(done),
        };
    while let Some(first) = receiver.recv().await {
        take(first, &mut pending, &mut waiters);
        let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
        while waiters.is_empty() {
            tokio::select! {
                message = receiver.recv() => match message {
                    Some(message) => take(message, &mut pending, &mut waiters),
                    None => break,
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        if !pending.is_empty() {
            let now = clock.now();
            if let Err(failed) = save(&store, std::mem::take(&mut pending), now).await {
                pending = keep_for_retry(failed, now);
            }
        }
        for done in waiters.drain(..) {
            let _ = done.send(());
        }
    }
    if !pending.is_empty() {
        let _ = save(&store, pending, clock.now()).await;
    }
}

/// The tokens of a failed write, to go with the next one (a later token or the flush at
/// exit): without them, every token fetched while the directory was read-only or full would
/// be missing from the file for good, though writes resume. Merged, so a long failure keeps
/// one token per key, without expired ones, and at most a queue's worth.
fn keep_for_retry(failed: Vec<PersistedToken>, now: u64) -> Vec<PersistedToken> {
    let (mut kept, _) = super::merge(Vec::new(), failed, now);
    if kept.len() > QUEUE {
        kept.sort_by_key(|t| std::cmp::Reverse(t.token.expires_on));
        kept.truncate(QUEUE);
    }
    kept
}

/// Writes `batch`, logging and counting the result; on failure, hands the batch back.
async fn save(store: &Arc<dyn Store>, batch: Vec<PersistedToken>, now: u64) -> Result<(), Vec<PersistedToken>> {
    let count = batch.len();
    let store = Arc::clone(store);
    let written = batch.clone();
    match tokio::task::spawn_blocking(move || store.save(written, now)).await {
        Ok(Ok(report)) => {
            metrics::persistence_write(true);
            tracing::debug!(written = count, kept = report.kept, pruned = report.pruned, "persisted tokens");
            Ok(())
        }
        Ok(Err(error)) => {
            metrics::persistence_write(false);
            tracing::warn!(
                %error,
                tokens = count,
                "cannot persist tokens; they stay in memory and are retried with the next write"
            );
            Err(batch)
        }
        Err(error) => {
            metrics::persistence_write(false);
            tracing::warn!(%error, "the token cache writer failed");
            Err(batch)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::super::tests::token;
    use super::super::{OnUnreadable, SaveReport, Snapshot, StoreError};
    use super::*;
    use crate::clock::ManualClock;

    #[derive(Default)]
    struct Recording(Mutex<Vec<usize>>);

    impl Store for Recording {
        fn describe(&self) -> String {
            "memory".into()
        }
        fn load(&self, _: OnUnreadable) -> Result<Snapshot, StoreError> {
            Ok(Snapshot::default())
        }
        fn save(&self, tokens: Vec<PersistedToken>, _: u64) -> Result<SaveReport, StoreError> {
            self.0.lock().unwrap().push(tokens.len());
            Ok(SaveReport::default())
        }
        fn clear(&self, _: Option<&str>) -> Result<usize, StoreError> {
            Ok(0)
        }
        fn save_account(&self, _: super::super::PersistedAccount) -> Result<(), StoreError> {
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn batches_within_the_window_and_flushes_on_demand() {
        let store = Arc::new(Recording::default());
        let writer = Writer::start(store.clone(), Arc::new(ManualClock::new(100)));
        for i in 0..5 {
            writer.record(token("a", &format!("r{i}"), 5000, "t"));
        }
        tokio::time::sleep(BATCH_WINDOW * 2).await;
        // spawn_blocking runs on a real thread; give it a moment under paused time.
        for _ in 0..100 {
            if !store.0.lock().unwrap().is_empty() {
                break;
            }
            tokio::task::yield_now().await;
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(*store.0.lock().unwrap(), [5], "one write for the burst");

        writer.record(token("a", "r9", 5000, "t"));
        writer.flush().await;
        assert_eq!(*store.0.lock().unwrap(), [5, 1], "flush writes at once");
    }

    /// Fails every save while `failing`, recording the resources of each attempt.
    #[derive(Default)]
    struct Flaky {
        failing: std::sync::atomic::AtomicBool,
        attempts: Mutex<Vec<Vec<String>>>,
    }

    impl Store for Flaky {
        fn describe(&self) -> String {
            "flaky".into()
        }
        fn load(&self, _: OnUnreadable) -> Result<Snapshot, StoreError> {
            Ok(Snapshot::default())
        }
        fn save(&self, tokens: Vec<PersistedToken>, _: u64) -> Result<SaveReport, StoreError> {
            self.attempts.lock().unwrap().push(tokens.iter().map(|t| t.resource.clone()).collect());
            if self.failing.load(Ordering::SeqCst) {
                let error = std::io::Error::from(std::io::ErrorKind::ReadOnlyFilesystem);
                return Err(StoreError::io("write", std::path::Path::new("/cache"), error));
            }
            Ok(SaveReport::default())
        }
        fn clear(&self, _: Option<&str>) -> Result<usize, StoreError> {
            Ok(0)
        }
        fn save_account(&self, _: super::super::PersistedAccount) -> Result<(), StoreError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_failed_batch_is_written_with_the_next_one() {
        let store = Arc::new(Flaky::default());
        store.failing.store(true, Ordering::SeqCst);
        let writer = Writer::start(store.clone(), Arc::new(ManualClock::new(100)));
        writer.record(token("a", "r1", 5000, "t"));
        writer.record(token("a", "expired", 50, "t"));
        writer.flush().await;

        store.failing.store(false, Ordering::SeqCst);
        writer.record(token("a", "r2", 5000, "t"));
        writer.flush().await;
        writer.flush().await;
        assert_eq!(
            *store.attempts.lock().unwrap(),
            [vec!["r1", "expired"], vec!["r1", "r2"]],
            "the failed token is retried (the expired one is not), and only until it is written"
        );
    }
}
