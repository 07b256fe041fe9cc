//! Write-through off the request path: the broker hands every fetched token to a bounded
//! queue without waiting; one background task collects them for a short window and saves
//! each batch (merge, prune, atomic replace) on a blocking thread.

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
            save(&store, std::mem::take(&mut pending), clock.now()).await;
        }
        for done in waiters.drain(..) {
            let _ = done.send(());
        }
    }
    if !pending.is_empty() {
        save(&store, pending, clock.now()).await;
    }
}

async fn save(store: &Arc<dyn Store>, batch: Vec<PersistedToken>, now: u64) {
    let count = batch.len();
    let store = Arc::clone(store);
    match tokio::task::spawn_blocking(move || store.save(batch, now)).await {
        Ok(Ok(report)) => {
            metrics::persistence_write(true);
            tracing::debug!(written = count, kept = report.kept, pruned = report.pruned, "persisted tokens")
        }
        Ok(Err(error)) => {
            metrics::persistence_write(false);
            tracing::warn!(%error, tokens = count, "cannot persist tokens; they stay in memory")
        }
        Err(error) => {
            metrics::persistence_write(false);
            tracing::warn!(%error, "the token cache writer failed")
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
}
