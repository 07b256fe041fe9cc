//! Write-behind off the request path: the broker signals each change of its cache (a token
//! fetched or refreshed) without waiting; one background task gathers signals for a short
//! window, then reads what the broker holds and saves it on a blocking thread (the file keeps
//! what memory keeps, see [`Store::save`]). A save that fails (a read-only or full directory)
//! is tried again with the next signal or the flush at exit; as every save writes what changed
//! since the last save that succeeded (the store compares memory with what it last wrote), nothing
//! fetched meanwhile is missing once saves work again.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{HeldSource, Store};
use crate::clock::Clock;
use crate::telemetry::metrics;

/// How long the writer gathers changes before saving. Prefetches and a burst of first
/// requests after a start land in one write instead of dozens.
const BATCH_WINDOW: Duration = Duration::from_millis(500);
/// Signals waiting for the task. A full queue already holds a change that will cause a save
/// reading the cache after this one, so a signal that does not fit is not needed.
const QUEUE: usize = 64;

enum Message {
    Changed,
    Flush(oneshot::Sender<()>),
}

/// The handle the broker signals changes through.
pub struct Writer {
    queue: mpsc::Sender<Message>,
    description: String,
}

impl Writer {
    /// Starts the background task on the current tokio runtime. It holds `source` weakly:
    /// the broker owns the writer, not the other way round.
    pub fn start(store: Arc<dyn Store>, clock: Arc<dyn Clock>, source: Weak<dyn HeldSource>) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let description = store.describe();
        // Tells this process's tokens apart from those of other processes sharing the file,
        // and from its own earlier runs'; 0 is reserved for "unknown".
        let writer = fastrand::u64(1..);
        tokio::spawn(run(store, clock, source, writer, receiver));
        Self { queue, description }
    }

    /// Notes that the cache changed; a save follows within the batch window. Never waits.
    pub fn changed(&self) {
        let _ = self.queue.try_send(Message::Changed);
    }

    /// Saves if anything changed since the last save and waits for it (on shutdown).
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

async fn run(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    source: Weak<dyn HeldSource>,
    writer: u64,
    mut receiver: mpsc::Receiver<Message>,
) {
    fn take(message: Message, changed: &mut bool, waiters: &mut Vec<oneshot::Sender<()>>) {
        match message {
            Message::Changed => *changed = true,
            Message::Flush(done) => waiters.push(done),
        }
    }
    let mut changed = false;
    let mut waiters = Vec::new();
    while let Some(first) = receiver.recv().await {
        take(first, &mut changed, &mut waiters);
        let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
        loop {
            if !waiters.is_empty() {
                break;
            }
            tokio::select! {
                message = receiver.recv() => match message {
                    Some(message) => take(message, &mut changed, &mut waiters),
                    None => break,
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        if changed {
            // A failed save leaves `changed` set: the next signal or flush tries again.
            changed = !save(&store, &source, writer, clock.now()).await;
        }
        for done in waiters.drain(..) {
            let _ = done.send(());
        }
    }
    if changed {
        save(&store, &source, writer, clock.now()).await;
    }
}

/// Reads what the broker holds and writes it, logging and counting the result. True when
/// written (or when there is no broker left to read).
async fn save(store: &Arc<dyn Store>, source: &Weak<dyn HeldSource>, writer: u64, now: u64) -> bool {
    let Some(source) = source.upgrade() else { return true };
    let mut held = source.held().await;
    drop(source);
    held.writer = writer;
    let store = Arc::clone(store);
    match tokio::task::spawn_blocking(move || store.save(&held, now)).await {
        Ok(Ok(report)) => {
            metrics::persistence_write(true);
            if report.pruned + report.dropped > 0 {
                tracing::info!(
                    kept = report.kept,
                    expired = report.pruned,
                    dropped = report.dropped,
                    "persisted the token cache; dropped tokens no longer held in memory"
                );
            } else {
                tracing::debug!(kept = report.kept, "persisted the token cache");
            }
            true
        }
        Ok(Err(error)) => {
            metrics::persistence_write(false);
            tracing::warn!(%error, "cannot persist tokens; they stay in memory and are written with the next save");
            false
        }
        Err(error) => {
            metrics::persistence_write(false);
            tracing::warn!(%error, "the token cache writer failed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use async_trait::async_trait;
    use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

    use super::super::tests::token;
    use super::super::{Held, OnUnreadable, PersistedToken, SaveReport, Snapshot, StoreError};
    use super::*;
    use crate::clock::ManualClock;

    /// Records each save attempt (the resources held, the writer id) and fails while
    /// `failing`; tells the test through `done` when an attempt is over.
    struct Recording {
        attempts: Mutex<Vec<(Vec<String>, u64)>>,
        failing: AtomicBool,
        done: UnboundedSender<()>,
    }

    impl Recording {
        fn new() -> (Arc<Self>, UnboundedReceiver<()>) {
            let (done, receiver) = unbounded_channel();
            (Arc::new(Self { attempts: Mutex::default(), failing: AtomicBool::new(false), done }), receiver)
        }

        fn resources(&self) -> Vec<Vec<String>> {
            self.attempts.lock().unwrap().iter().map(|(resources, _)| resources.clone()).collect()
        }
    }

    impl Store for Recording {
        fn describe(&self) -> String {
            "memory".into()
        }
        fn load(&self, _: OnUnreadable) -> Result<Snapshot, StoreError> {
            Ok(Snapshot::default())
        }
        fn load_bounded(&self, _: usize, _: u64) -> Result<Snapshot, StoreError> {
            Ok(Snapshot::default())
        }
        fn save(&self, held: &Held, _: u64) -> Result<SaveReport, StoreError> {
            let resources = held.identities.iter().flat_map(|i| i.tokens.iter().map(|(r, ..)| r.to_string())).collect();
            self.attempts.lock().unwrap().push((resources, held.writer));
            let _ = self.done.send(());
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

    /// The broker's part: what is in memory.
    #[derive(Default)]
    struct Memory(Mutex<Vec<PersistedToken>>);

    impl Memory {
        fn hold(&self, resources: &[&str]) {
            *self.0.lock().unwrap() = resources.iter().map(|r| token("a", r, 5000, "t")).collect();
        }
    }

    #[async_trait]
    impl HeldSource for Memory {
        async fn held(&self) -> Held {
            Held::from_tokens(self.0.lock().unwrap().clone(), 0, 100)
        }
    }

    fn start(store: &Arc<Recording>, memory: &Arc<Memory>) -> Writer {
        let source: Weak<dyn HeldSource> = Arc::downgrade(memory) as Weak<dyn HeldSource>;
        Writer::start(store.clone(), Arc::new(ManualClock::new(100)), source)
    }

    #[tokio::test(start_paused = true)]
    async fn changes_within_the_window_make_one_save_of_what_memory_holds() {
        let (store, mut done) = Recording::new();
        let memory = Arc::new(Memory::default());
        let writer = start(&store, &memory);
        memory.hold(&["r0", "r1", "r2"]);
        for _ in 0..5 {
            writer.changed();
        }
        done.recv().await.unwrap();
        assert_eq!(store.resources(), [["r0", "r1", "r2"]], "one save for the burst, of the whole cache");

        memory.hold(&["r1", "r2", "r9"]);
        writer.changed();
        writer.flush().await;
        assert_eq!(store.resources()[1], ["r1", "r2", "r9"], "flush saves at once; r0 was evicted");
        writer.flush().await;
        assert_eq!(store.resources().len(), 2, "nothing changed: no save");
        let writers: Vec<u64> = store.attempts.lock().unwrap().iter().map(|(_, w)| *w).collect();
        assert!(writers[0] != 0 && writers[0] == writers[1], "one id per writer, never 0: {writers:?}");
    }

    #[tokio::test]
    async fn a_failed_save_is_tried_again_with_what_memory_holds_then() {
        let (store, _done) = Recording::new();
        store.failing.store(true, Ordering::SeqCst);
        let memory = Arc::new(Memory::default());
        let writer = start(&store, &memory);
        memory.hold(&["r1"]);
        writer.changed();
        writer.flush().await;

        store.failing.store(false, Ordering::SeqCst);
        memory.hold(&["r1", "r2"]);
        writer.flush().await;
        writer.flush().await;
        assert_eq!(
            store.resources(),
            [vec!["r1"], vec!["r1", "r2"]],
            "the failed save is repeated by the next flush, with the token fetched meanwhile, until it works"
        );
    }

    #[tokio::test]
    async fn without_a_broker_nothing_is_saved() {
        let (store, _done) = Recording::new();
        let memory = Arc::new(Memory::default());
        let writer = start(&store, &memory);
        drop(memory);
        writer.changed();
        writer.flush().await;
        assert!(store.resources().is_empty());
    }
}
