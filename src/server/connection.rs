//! Per-connection deadlines and slots: a response write that makes no progress, a request head
//! that arrives too slowly and a kept-alive connection that waits too long for its next
//! request each end the connection, and a full listener closes a connection that holds its
//! slot without using it to make room for a new one.
//!
//! hyper has no write deadline: a peer that pipelines requests and never reads the answers
//! fills the socket's send buffer, and hyper then waits on the write for as long as the peer
//! keeps the connection open, holding a connection slot and the connection's buffers. Enough
//! such peers take every slot of a listener. hyper's own header-read timer is not used: it
//! counts the idle time before a request as well as the request's head, and it allocates,
//! registers and cancels a timer for every request, which costs a cache hit more than the
//! token lookup does.
//!
//! [`Deadlines`] wraps the accepted socket. Its write side starts a timer when a write returns
//! `Pending` and fails the write with `TimedOut` when the timer fires before the write makes
//! progress. Its read side knows, from the [`Activity`] that the service wrapper [`Tracked`]
//! keeps, when a request has begun. Once a request is answered, each completed write of the
//! answer (or else a read that finds nothing while no request is in progress) starts the
//! keep-alive wait, bounded by the keep-alive timeout; bytes read then start the next head, which must be complete within the header read timeout of its first byte. A fresh
//! connection starts out reading a head, so a peer that connects and sends nothing gets the
//! header read timeout.
//!
//! Cost on the hot path: a successful read or write compares a counter or two; the keep-alive
//! wait after each response reads the clock once and polls the connection's read timer.
//! The timers (one each way per connection, allocated when first needed) are moved rather
//! than reallocated, and a deadline that only moves forward moves its timer about once per
//! timeout, not once per request.

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::{Instant, Sleep};

/// The deadlines of one connection.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Longest a write may stay pending without progress.
    pub write: Duration,
    /// Longest a connection may wait for its next request, from the last write of the
    /// previous answer (or, when nothing was written, from the first read that finds
    /// nothing while no request is in progress).
    pub keep_alive: Duration,
    /// Longest a request head may take from its first byte (or from the connection's start
    /// for the first request) until it is complete.
    pub header_read: Duration,
}

#[cfg(test)]
impl Timeouts {
    /// The listener's defaults (write 5 s, keep-alive 60 s, header read 10 s), for tests.
    pub const FOR_TESTS: Self = Self {
        write: Duration::from_secs(5),
        keep_alive: Duration::from_secs(60),
        header_read: Duration::from_secs(10),
    };
}

/// What one connection is doing, shared by [`Tracked`], [`Deadlines`] and the listener's
/// [`Connections`].
///
/// The first two live in the connection's task, so plain counters would do for them; atomics
/// make the state `Send` + `Sync` as the spawned task and the registry require, at the price of
/// uncontended increments.
#[derive(Debug)]
pub struct Activity {
    /// Requests handed to the service.
    started: AtomicU64,
    /// Of those, requests whose response future completed or was dropped.
    finished: AtomicU64,
    /// When the pending write began to wait, in milliseconds since `epoch` plus one; 0 while
    /// writes complete. Written only when a write starts or stops waiting.
    write_stalled: AtomicU64,
    /// The listener's reference instant, so that stall times compare across connections.
    epoch: Instant,
    /// When the connection was accepted.
    accepted: Instant,
    /// Set once the connection is chosen to make room.
    evicted: AtomicBool,
    /// Set once the listener shuts down: the connection finishes the request in progress,
    /// if any, and closes instead of waiting for another.
    closing: AtomicBool,
    /// The task to wake when `closing` is set, registered while it waits for a request.
    closing_waker: Mutex<Option<Waker>>,
    /// Ends the connection's task (closing the socket and freeing the slot); set once the
    /// task is spawned. Aborting costs the task nothing until it happens, unlike a signal
    /// the task would poll alongside the connection.
    task: OnceLock<AbortHandle>,
}

impl Activity {
    fn new(epoch: Instant) -> Self {
        Self {
            started: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            write_stalled: AtomicU64::new(0),
            epoch,
            accepted: Instant::now(),
            evicted: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            closing_waker: Mutex::new(None),
            task: OnceLock::new(),
        }
    }

    /// Counts a request as started; it counts as finished when the returned guard is dropped.
    /// The direct path's counterpart of [`Tracked`].
    pub fn request_started(&self) -> InFlight<'_> {
        self.started.fetch_add(1, Ordering::AcqRel);
        InFlight(self)
    }

    /// Whether the listener has asked the connection to close.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Ready once the listener has asked the connection to close; until then `cx` is woken
    /// when it does. Registered before the flag is read, so a request to close between the
    /// two is not missed.
    pub fn poll_closing(&self, cx: &mut Context<'_>) -> Poll<()> {
        {
            let mut waker = self.closing_waker.lock().expect("never poisoned");
            match &mut *waker {
                Some(registered) if registered.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
        }
        if self.is_closing() { Poll::Ready(()) } else { Poll::Pending }
    }

    fn close(&self) {
        self.closing.store(true, Ordering::Release);
        if let Some(waker) = self.closing_waker.lock().expect("never poisoned").take() {
            waker.wake();
        }
    }

    fn started(&self) -> u64 {
        self.started.load(Ordering::Acquire)
    }

    fn busy(&self) -> bool {
        self.finished.load(Ordering::Acquire) != self.started.load(Ordering::Acquire)
    }

    /// Records the task serving the connection, so that it can be ended to make room.
    pub fn set_task(&self, task: AbortHandle) {
        let task = self.task.get_or_init(|| task);
        // Chosen before its task was recorded: end it now.
        if self.evicted.load(Ordering::Acquire) {
            task.abort();
        }
    }

    fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        if let Some(task) = self.task.get() {
            task.abort();
        }
    }
}

#[cfg(test)]
impl Default for Activity {
    fn default() -> Self {
        Self::new(Instant::now())
    }
}

/// The live connections of one listener. When every slot is taken, one connection that holds
/// its slot without using it is closed to make room for the newcomer: a flood of peers that
/// stall, idle or dawdle over their heads then delays a new client by moments rather than by
/// the deadlines that would otherwise free a slot, which matters for the kubelet's probes.
pub struct Connections {
    epoch: Instant,
    /// By accept order, so that the oldest candidate is found first.
    live: Mutex<BTreeMap<u64, Arc<Activity>>>,
    next_id: AtomicU64,
    /// Notified when the last live connection ends.
    drained: Notify,
}

impl Connections {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            live: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(0),
            drained: Notify::new(),
        })
    }

    /// Asks every live connection to close once its request in progress, if any, is answered;
    /// an idle connection closes at once. The listener must have stopped accepting.
    pub fn close_all(&self) {
        for activity in self.live.lock().expect("never poisoned").values() {
            activity.close();
        }
    }

    /// Resolves once no connection is live.
    pub async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            // Registered before the check, so that the last connection ending in between
            // is not missed.
            notified.as_mut().enable();
            if self.live.lock().expect("never poisoned").is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// Records a new connection; it is forgotten when the returned registration is dropped.
    pub fn register(self: &Arc<Self>) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity::new(self.epoch));
        self.live.lock().expect("never poisoned").insert(id, Arc::clone(&activity));
        Registration { id, activity, connections: Arc::clone(self) }
    }

    /// Chooses one connection and ends its task, so that a new one can be served; `false`
    /// when every connection is in use. In order of preference:
    ///
    /// 1. the one whose response write has waited longest (its peer does not read);
    /// 2. one that has sent no complete request in the [`SILENT_GRACE`] since it was
    ///    accepted (silent, or sending its head slowly), the oldest first;
    /// 3. one with no request in progress after at least one, idle between requests or
    ///    sending its next head, the oldest first.
    ///
    /// A connection whose request is being answered, with its writes making progress, is
    /// never chosen, nor one accepted moments ago that has yet to send its request.
    pub fn evict_one(&self) -> bool {
        let now = Instant::now();
        let live = self.live.lock().expect("never poisoned");
        let candidates = || live.values().filter(|a| !a.evicted.load(Ordering::Acquire));
        let stalled = candidates()
            .filter_map(|a| match a.write_stalled.load(Ordering::Acquire) {
                0 => None,
                since => Some((since, a)),
            })
            .min_by_key(|(since, _)| *since)
            .map(|(_, a)| a);
        let unused = |a: &&Arc<Activity>| !a.busy() && a.write_stalled.load(Ordering::Acquire) == 0;
        let silent = |a: &&Arc<Activity>| a.started() == 0 && now.duration_since(a.accepted) >= SILENT_GRACE;
        let victim = stalled
            .or_else(|| candidates().filter(unused).find(silent))
            .or_else(|| candidates().filter(unused).find(|a| a.started() > 0));
        match victim {
            Some(activity) => {
                tracing::debug!(
                    stalled = activity.write_stalled.load(Ordering::Acquire) != 0,
                    requests = activity.started(),
                    "listener full: closing a connection that holds its slot without using it"
                );
                activity.evict();
                true
            }
            None => false,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.live.lock().expect("never poisoned").len()
    }
}

/// How long a new connection may take to send its first request before a full listener may
/// close it to make room: a client sends its request as soon as it has connected, so only a
/// peer that holds the connection without using it is still silent after this.
pub const SILENT_GRACE: Duration = Duration::from_secs(1);

/// A connection's entry in [`Connections`], removed when dropped (when its task ends).
pub struct Registration {
    id: u64,
    activity: Arc<Activity>,
    connections: Arc<Connections>,
}

impl Registration {
    pub fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut live = self.connections.live.lock().expect("never poisoned");
        live.remove(&self.id);
        if live.is_empty() {
            self.connections.drained.notify_waiters();
        }
    }
}

/// A request of the direct path in progress (see [`Activity::request_started`]).
pub struct InFlight<'a>(&'a Activity);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::AcqRel);
    }
}

/// Counts a request as finished when dropped: on completion, or when hyper drops the response
/// future because the connection ended.
struct Finished(Arc<Activity>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::AcqRel);
    }
}

/// A hyper service that records on [`Activity`] when requests start and finish.
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<S, R> hyper::service::Service<R> for Tracked<S>
where
    S: hyper::service::Service<R>,
    S::Future: Unpin,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, request: R) -> Self::Future {
        self.activity.started.fetch_add(1, Ordering::AcqRel);
        TrackedFuture { inner: self.inner.call(request), finished: Some(Finished(Arc::clone(&self.activity))) }
    }
}

/// The response future of [`Tracked`].
pub struct TrackedFuture<F> {
    inner: F,
    finished: Option<Finished>,
}

impl<F: Future + Unpin> Future for TrackedFuture<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let output = std::task::ready!(Pin::new(&mut self.inner).poll(cx));
        // The request is over for the read side as soon as its response exists: hyper writes
        // it next, and the write deadline covers that.
        self.finished = None;
        Poll::Ready(output)
    }
}

/// Where the read side of a connection is, as far as its deadline goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// A request has begun since the phase was last looked at: the connection is busy with
    /// it, or has just answered it.
    Answered,
    /// No request in progress and no byte of the next one yet: the keep-alive wait. `since`
    /// is set at the first read that finds nothing.
    Idle { since: Option<Instant> },
    /// A head is arriving (on a fresh connection: expected). `since` is set at the first read
    /// that finds nothing more, so a head that arrives whole never reads the clock.
    Head { since: Option<Instant> },
}

/// A socket with the deadlines of [`Timeouts`]; see the module documentation.
pub struct Deadlines<T> {
    io: T,
    timeouts: Timeouts,
    activity: Arc<Activity>,
    /// `Activity::started` when the phase was last updated.
    requests_seen: u64,
    phase: Phase,
    /// When the pending write started waiting; `None` while writes complete.
    write_pending_since: Option<Instant>,
    read_timer: Timer,
    write_timer: Timer,
}

impl<T> Deadlines<T> {
    pub fn new(io: T, timeouts: Timeouts, activity: Arc<Activity>) -> Self {
        Self {
            io,
            timeouts,
            activity,
            requests_seen: 0,
            phase: Phase::Head { since: None },
            write_pending_since: None,
            read_timer: Timer::default(),
            write_timer: Timer::default(),
        }
    }

    /// A write returned `Pending`: fails it once it has waited `timeouts.write` without
    /// progress.
    fn write_stalled<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let since = match self.write_pending_since {
            Some(since) => since,
            None => {
                let now = Instant::now();
                self.write_pending_since = Some(now);
                // Published for `Connections::evict_one`; plus one, as 0 means "not waiting".
                let millis = u64::try_from(now.duration_since(self.activity.epoch).as_millis()).unwrap_or(u64::MAX - 1);
                self.activity.write_stalled.store(millis + 1, Ordering::Release);
                now
            }
        };
        if self.write_timer.poll_expired(since + self.timeouts.write, cx) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer did not read the response within the write timeout",
            )));
        }
        Poll::Pending
    }

    /// A write or flush completed.
    fn write_progressed(&mut self) {
        if self.write_pending_since.take().is_some() {
            self.activity.write_stalled.store(0, Ordering::Release);
        }
    }

    /// Bytes were written. Once a request is answered, each write of the answer (re)starts the
    /// keep-alive wait and arms its timer with this task's waker: hyper need not read again
    /// before the peer sends something, so a wait that began only at the next read could begin
    /// never, and an answer that drains slowly must not use the wait up. A flush is no write:
    /// hyper flushes on every poll, and counting that would push the deadline back each time
    /// the timer wakes the task.
    fn bytes_written(&mut self, cx: &mut Context<'_>) {
        self.see_requests();
        if matches!(self.phase, Phase::Answered | Phase::Idle { .. }) && !self.activity.busy() {
            let since = Instant::now();
            self.phase = Phase::Idle { since: Some(since) };
            // Just set: it cannot have passed.
            let _ = self.read_timer.poll_expired(since + self.timeouts.keep_alive, cx);
        }
    }

    /// Moves to [`Phase::Answered`] when a request has begun since the phase was last updated.
    fn see_requests(&mut self) {
        let started = self.activity.started();
        if started != self.requests_seen {
            self.requests_seen = started;
            self.phase = Phase::Answered;
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Deadlines<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let result = Pin::new(&mut this.io).poll_read(cx, buf);
        this.see_requests();
        match result {
            // Bytes with no request in progress begin the next head (while busy they are the
            // current request's body, or a pipelined request that hyper parses later).
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                if matches!(this.phase, Phase::Answered | Phase::Idle { .. }) && !this.activity.busy() {
                    this.phase = Phase::Head { since: None };
                }
                Poll::Ready(Ok(()))
            }
            // While a request is answered, or a write waits (the write deadline then bounds the
            // connection), the read side has no deadline.
            Poll::Pending if this.write_pending_since.is_none() && !this.activity.busy() => {
                if this.phase == Phase::Answered {
                    this.phase = Phase::Idle { since: None };
                }
                let (since, timeout, message) = match &mut this.phase {
                    Phase::Idle { since } => {
                        (since, this.timeouts.keep_alive, "no request within the keep-alive timeout")
                    }
                    Phase::Head { since } => (
                        since,
                        this.timeouts.header_read,
                        "the request head did not arrive within the header read timeout",
                    ),
                    Phase::Answered => unreachable!("left above"),
                };
                let deadline = *since.get_or_insert_with(Instant::now) + timeout;
                if this.read_timer.poll_expired(deadline, cx) {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, message)));
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Deadlines<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write(cx, buf) {
            Poll::Ready(result) => {
                self.write_progressed();
                if matches!(result, Ok(n) if n > 0) {
                    self.bytes_written(cx);
                }
                Poll::Ready(result)
            }
            Poll::Pending => self.write_stalled(cx),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => {
                self.write_progressed();
                if matches!(result, Ok(n) if n > 0) {
                    self.bytes_written(cx);
                }
                Poll::Ready(result)
            }
            Poll::Pending => self.write_stalled(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Ready(result) => {
                self.write_progressed();
                Poll::Ready(result)
            }
            Poll::Pending => self.write_stalled(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A lazily allocated timer that is moved as rarely as possible.
#[derive(Default)]
struct Timer(Option<Pin<Box<Sleep>>>);

impl Timer {
    /// Whether `deadline` has passed; if not, `cx` is woken no later than `deadline`.
    ///
    /// A timer set for an earlier instant is left alone: when it fires, the task is woken,
    /// the caller asks again and the timer is moved to the deadline then. So a connection
    /// whose deadline moves forward with every request moves its timer about once per
    /// timeout, not once per request.
    fn poll_expired(&mut self, deadline: Instant, cx: &mut Context<'_>) -> bool {
        let sleep = self.0.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() > deadline {
            sleep.as_mut().reset(deadline);
        }
        loop {
            if sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            if sleep.deadline() >= deadline {
                return true;
            }
            // An earlier deadline fired; wait for this one.
            sleep.as_mut().reset(deadline);
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    const TIMEOUTS: Timeouts = Timeouts::FOR_TESTS;

    /// A connection over an in-memory pipe whose buffer holds `capacity` bytes each way, so
    /// that a peer that does not read makes writes pend as a full socket buffer does.
    fn connection(capacity: usize) -> (Deadlines<DuplexStream>, DuplexStream, Arc<Activity>) {
        let (server, peer) = tokio::io::duplex(capacity);
        let activity = Arc::new(Activity::default());
        (Deadlines::new(server, TIMEOUTS, Arc::clone(&activity)), peer, activity)
    }

    /// One request from the peer, read whole, answered and its answer written.
    async fn request_and_answer(
        server: &mut Deadlines<DuplexStream>,
        peer: &mut DuplexStream,
        activity: &Arc<Activity>,
    ) {
        peer.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut head = [0; 18];
        server.read_exact(&mut head).await.unwrap();
        answer(activity);
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
    }

    /// Marks one request as handed to the service and answered, as [`Tracked`] does.
    fn answer(activity: &Arc<Activity>) {
        activity.started.fetch_add(1, Ordering::AcqRel);
        drop(Finished(Arc::clone(activity)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_the_peer_does_not_read_fails_after_the_write_timeout() {
        let (mut server, _peer, _) = connection(16);
        server.write_all(&[0; 16]).await.unwrap();
        let start = Instant::now();
        let error = server.write_all(b"more").await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), TIMEOUTS.write);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_makes_progress_is_not_cut_off() {
        let (mut server, mut peer, _) = connection(16);
        // The peer reads 16 bytes every 4 seconds: each write waits less than the timeout,
        // though the whole response takes far longer.
        let reader = tokio::spawn(async move {
            let mut received = 0;
            let mut chunk = [0; 16];
            while received < 160 {
                tokio::time::sleep(Duration::from_secs(4)).await;
                received += peer.read(&mut chunk).await.unwrap();
            }
        });
        let start = Instant::now();
        server.write_all(&[1; 160]).await.unwrap();
        assert!(start.elapsed() > TIMEOUTS.write * 4);
        reader.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_kept_alive_connection_waits_at_most_the_keep_alive_timeout_for_its_next_request() {
        let (mut server, mut peer, activity) = connection(1024);
        let mut byte = [0; 1];
        // Each wait is most of the timeout and together they are far more: each request
        // starts the wait afresh.
        for _ in 0..3 {
            request_and_answer(&mut server, &mut peer, &activity).await;
            let idle =
                tokio::time::timeout(TIMEOUTS.keep_alive - Duration::from_secs(10), server.read(&mut byte)).await;
            assert!(idle.is_err(), "closed before the keep-alive timeout");
        }
        let start = Instant::now();
        let error = server.read(&mut byte).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn the_keep_alive_wait_starts_when_the_answer_is_written_even_if_nothing_reads() {
        let (mut server, mut peer, activity) = connection(1024);
        request_and_answer(&mut server, &mut peer, &activity).await;
        // Nothing reads for the whole timeout (hyper may not read until the peer sends).
        tokio::time::sleep(TIMEOUTS.keep_alive).await;
        let start = Instant::now();
        let mut byte = [0; 1];
        assert_eq!(server.read(&mut byte).await.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::ZERO, "the wait began at the write, not at this read");
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_that_drains_slowly_does_not_use_up_the_keep_alive_wait() {
        let (mut server, mut peer, activity) = connection(16);
        answer(&activity);
        // The peer reads 16 bytes every 4 seconds: the answer takes 80 s to drain, longer than
        // the keep-alive timeout, each write progressing within the write timeout.
        let reader = tokio::spawn(async move {
            let mut received = 0;
            let mut chunk = [0; 16];
            while received < 320 {
                tokio::time::sleep(Duration::from_secs(4)).await;
                received += peer.read(&mut chunk).await.unwrap();
            }
            peer
        });
        server.write_all(&[1; 320]).await.unwrap();
        let _peer = reader.await.unwrap();
        let mut byte = [0; 1];
        let waiting = tokio::time::timeout(TIMEOUTS.keep_alive / 2, server.read(&mut byte)).await;
        assert!(waiting.is_err(), "the connection was closed right after its answer");
    }

    #[tokio::test(start_paused = true)]
    async fn flushes_do_not_push_the_keep_alive_wait_back() {
        let (mut server, mut peer, activity) = connection(1024);
        request_and_answer(&mut server, &mut peer, &activity).await;
        let start = Instant::now();
        // hyper flushes on every poll of the connection, whatever woke it.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(10)).await;
            server.flush().await.unwrap();
        }
        let mut byte = [0; 1];
        assert_eq!(server.read(&mut byte).await.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), TIMEOUTS.keep_alive);
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_must_arrive_within_the_header_read_timeout_of_its_first_byte() {
        let (mut server, mut peer, activity) = connection(1024);
        answer(&activity);
        // Idle for half the keep-alive timeout, then part of a head.
        let mut byte = [0; 1];
        let idle = tokio::time::timeout(Duration::from_secs(30), server.read(&mut byte)).await;
        assert!(idle.is_err(), "still open after 30 s idle");
        peer.write_all(b"GE").await.unwrap();
        let mut two = [0; 2];
        server.read_exact(&mut two).await.unwrap();
        let start = Instant::now();
        let error = server.read(&mut byte).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), TIMEOUTS.header_read);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fresh_connection_gets_the_header_read_timeout() {
        let (mut server, _peer, _) = connection(1024);
        let start = Instant::now();
        let mut byte = [0; 1];
        assert_eq!(server.read(&mut byte).await.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), TIMEOUTS.header_read);
    }

    #[tokio::test(start_paused = true)]
    async fn no_read_deadline_runs_while_a_request_is_being_answered() {
        let (mut server, mut peer, activity) = connection(1024);
        // A request in progress (for instance waiting for the upstream) for longer than both
        // read timeouts.
        activity.started.fetch_add(1, Ordering::AcqRel);
        let mut byte = [0; 1];
        let busy = tokio::time::timeout(Duration::from_secs(120), server.read(&mut byte)).await;
        assert!(busy.is_err(), "the read still waits after 120 s");
        drop(Finished(Arc::clone(&activity)));
        peer.write_all(b"x").await.unwrap();
        assert_eq!(server.read(&mut byte).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_head_that_arrives_whole_never_arms_a_timer() {
        // Covers the invariant the hot path relies on: reading an available request does not
        // read the clock or touch a timer.
        let (mut server, mut peer, _) = connection(1024);
        peer.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut head = [0; 18];
        server.read_exact(&mut head).await.unwrap();
        assert!(server.read_timer.0.is_none() && server.write_timer.0.is_none());
        assert_eq!(server.phase, Phase::Head { since: None });
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_listener_closes_the_longest_stalled_then_a_silent_then_an_idle_connection() {
        let connections = Connections::new();
        let idle = connections.register();
        answer(idle.activity());
        let busy = connections.register();
        busy.activity().started.fetch_add(1, Ordering::AcqRel);
        let silent = connections.register();
        let stalled_later = connections.register();
        stalled_later.activity().write_stalled.store(20, Ordering::Release);
        let stalled_first = connections.register();
        stalled_first.activity().write_stalled.store(10, Ordering::Release);
        // A request in progress whose response write waits counts as stalled.
        stalled_first.activity().started.fetch_add(1, Ordering::AcqRel);
        tokio::time::advance(SILENT_GRACE).await;
        // Accepted just now: it has yet to send its request.
        let newcomer = connections.register();

        let named = [
            ("idle", &idle),
            ("busy", &busy),
            ("silent", &silent),
            ("stalled later", &stalled_later),
            ("stalled first", &stalled_first),
        ];
        let mut order = Vec::new();
        while connections.evict_one() {
            let newly = named
                .iter()
                .filter(|(name, r)| r.activity().evicted.load(Ordering::Acquire) && !order.contains(name))
                .map(|(name, _)| *name)
                .collect::<Vec<_>>();
            assert_eq!(newly.len(), 1, "one connection per call: {newly:?}");
            order.push(newly[0]);
        }
        assert_eq!(order, ["stalled first", "stalled later", "silent", "idle"]);
        assert!(!busy.activity().evicted.load(Ordering::Acquire), "a request in progress is never cut off");
        assert!(!newcomer.activity().evicted.load(Ordering::Acquire), "a newcomer gets time to send its request");
        assert_eq!(connections.len(), 6);
        drop(idle);
        assert_eq!(connections.len(), 5, "a connection is forgotten when its task ends");
    }

    #[tokio::test(start_paused = true)]
    async fn the_chosen_connection_s_task_is_ended() {
        let connections = Connections::new();
        let silent = connections.register();
        let task = tokio::spawn(std::future::pending::<()>());
        silent.activity().set_task(task.abort_handle());
        assert!(!connections.evict_one(), "not within its first second");
        tokio::time::advance(SILENT_GRACE).await;
        assert!(connections.evict_one());
        assert!(task.await.unwrap_err().is_cancelled());
        assert!(!connections.evict_one(), "a connection is chosen once");

        // Chosen before its task was recorded: the task is ended as soon as it is.
        let early = connections.register();
        tokio::time::advance(SILENT_GRACE).await;
        assert!(connections.evict_one());
        let task = tokio::spawn(std::future::pending::<()>());
        early.activity().set_task(task.abort_handle());
        assert!(task.await.unwrap_err().is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_write_is_visible_to_the_listener_until_it_progresses() {
        let (mut server, mut peer, activity) = connection(16);
        server.write_all(&[0; 16]).await.unwrap();
        assert_eq!(activity.write_stalled.load(Ordering::Acquire), 0);
        let write = tokio::spawn(async move {
            server.write_all(b"more").await.unwrap();
            server
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_ne!(activity.write_stalled.load(Ordering::Acquire), 0, "the pending write is published");
        let mut chunk = [0; 16];
        peer.read_exact(&mut chunk).await.unwrap();
        write.await.unwrap();
        assert_eq!(activity.write_stalled.load(Ordering::Acquire), 0, "cleared on progress");
    }

    /// A service whose answers never come.
    struct Unanswered;

    impl hyper::service::Service<()> for Unanswered {
        type Response = ();
        type Error = std::convert::Infallible;
        type Future = std::future::Pending<Result<(), Self::Error>>;

        fn call(&self, (): ()) -> Self::Future {
            std::future::pending()
        }
    }

    #[tokio::test]
    async fn tracked_requests_count_as_finished_when_their_future_is_dropped() {
        let activity = Arc::new(Activity::default());
        let service = Tracked::new(Unanswered, Arc::clone(&activity));
        let future = hyper::service::Service::call(&service, ());
        assert!(activity.busy());
        drop(future);
        assert!(!activity.busy());
    }
}
