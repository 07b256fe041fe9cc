//! Per-connection deadlines: a response write that makes no progress, a kept-alive connection
//! that sits idle, and a request head that arrives too slowly each end the connection.
//!
//! hyper has no write deadline: a peer that pipelines requests and never reads the answers
//! fills the socket's send buffer, and hyper then waits on the write for as long as the peer
//! keeps the connection open, holding a connection slot and the connection's buffers. Enough
//! such peers take every slot of a listener. And hyper's header-read timer starts when it
//! begins waiting for a head, so it counts a kept-alive connection's idle time as part of the
//! next head's and the two cannot be set apart.
//!
//! [`Deadlines`] wraps the accepted socket. Its write side starts a timer when a write returns
//! `Pending` and fails the write with `TimedOut` when the timer fires before the write makes
//! progress. Its read side tells the phases of an HTTP/1.1 connection apart with the help of
//! [`Activity`], which the service wrapper [`Tracked`] keeps: while the service answers a
//! request the connection is busy (the handler's own timeout bounds that); after the response
//! it is idle until the first byte of the next request; from that byte until the service sees
//! the complete head it is reading a head. A fresh connection starts out reading a head, so a
//! peer that connects and sends nothing gets the head timeout.
//!
//! Cost on the hot path: a successful read or write only compares counters; the clock is
//! read once per idle period (when the first read after a response returns `Pending`), and a
//! timer exists per connection (allocated on its first `Pending`) and is moved only when it
//! fires early or must fire earlier, never on each request.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The deadlines of one connection.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Longest a write may stay pending without progress.
    pub write: Duration,
    /// Longest the connection may wait, after a response, for the next request to begin.
    pub keep_alive: Duration,
    /// Longest a request head may take from its first byte (or from the connection's start
    /// for the first request) until it is complete.
    pub header_read: Duration,
}

/// What the service has done on one connection, shared by [`Tracked`] and [`Deadlines`].
///
/// Both live in the connection's task, so plain counters would do; atomics make the pair
/// `Send` + `Sync` as the spawned task requires, at the price of uncontended increments.
#[derive(Debug, Default)]
pub struct Activity {
    /// Requests handed to the service.
    started: AtomicU64,
    /// Of those, requests whose response future completed or was dropped.
    finished: AtomicU64,
}

impl Activity {
    fn started(&self) -> u64 {
        self.started.load(Ordering::Acquire)
    }

    fn busy(&self) -> bool {
        self.finished.load(Ordering::Acquire) != self.started.load(Ordering::Acquire)
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

/// Where the read side of a connection is, as far as its deadlines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// A request was handed to the service since the phase was last looked at (or a write
    /// made progress after the connection went idle); the idle time starts at the next read
    /// that finds nothing.
    Answered,
    /// Nothing has arrived since the last response; `since` is when that was noticed.
    Idle { since: Instant },
    /// Part of a request head has arrived; `since` is set at the first read that then finds
    /// nothing more, so a head that arrives whole never reads the clock.
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
        let since = *self.write_pending_since.get_or_insert_with(Instant::now);
        if self.write_timer.poll_expired(since + self.timeouts.write, cx) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer did not read the response within the write timeout",
            )));
        }
        Poll::Pending
    }

    /// A write or flush completed; `wrote` says whether it wrote anything (hyper flushes on
    /// every turn of its loop, with or without data).
    fn write_progressed(&mut self, wrote: bool) {
        self.write_pending_since = None;
        // Idle time counts from the end of the last response, not from a read that happened
        // while that response was still being written.
        if wrote && let Phase::Idle { .. } = self.phase {
            self.phase = Phase::Answered;
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Deadlines<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let result = Pin::new(&mut this.io).poll_read(cx, buf);
        let started = this.activity.started();
        if started != this.requests_seen {
            this.requests_seen = started;
            this.phase = Phase::Answered;
        }
        let busy = this.activity.busy();
        match result {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                // Bytes between requests begin the next request's head (while busy they are
                // the current request's body, or a pipelined request hyper reads later).
                if !busy && !matches!(this.phase, Phase::Head { .. }) {
                    this.phase = Phase::Head { since: None };
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if !busy && this.write_pending_since.is_none() => {
                let (deadline, idle) = match this.phase {
                    Phase::Answered => {
                        let now = Instant::now();
                        this.phase = Phase::Idle { since: now };
                        (now + this.timeouts.keep_alive, true)
                    }
                    Phase::Idle { since } => (since + this.timeouts.keep_alive, true),
                    Phase::Head { since: None } => {
                        let now = Instant::now();
                        this.phase = Phase::Head { since: Some(now) };
                        (now + this.timeouts.header_read, false)
                    }
                    Phase::Head { since: Some(since) } => (since + this.timeouts.header_read, false),
                };
                if !this.read_timer.poll_expired(deadline, cx) {
                    return Poll::Pending;
                }
                if idle {
                    // End of stream: hyper closes an idle connection quietly.
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the request head did not arrive within the header read timeout",
                    )))
                }
            }
            // Busy: the handler's timeout bounds the wait. Writing: the write deadline does.
            other => other,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Deadlines<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write(cx, buf) {
            Poll::Ready(result) => {
                self.write_progressed(matches!(result, Ok(n) if n > 0));
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
                self.write_progressed(matches!(result, Ok(n) if n > 0));
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
                self.write_progressed(false);
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

    const TIMEOUTS: Timeouts = Timeouts {
        write: Duration::from_secs(5),
        keep_alive: Duration::from_secs(60),
        header_read: Duration::from_secs(10),
    };

    /// A connection over an in-memory pipe whose buffer holds `capacity` bytes each way, so
    /// that a peer that does not read makes writes pend as a full socket buffer does.
    fn connection(capacity: usize) -> (Deadlines<DuplexStream>, DuplexStream, Arc<Activity>) {
        let (server, peer) = tokio::io::duplex(capacity);
        let activity = Arc::new(Activity::default());
        (Deadlines::new(server, TIMEOUTS, Arc::clone(&activity)), peer, activity)
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
    async fn an_idle_connection_ends_after_the_keep_alive_timeout() {
        let (mut server, mut peer, activity) = connection(1024);
        peer.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut head = [0; 18];
        server.read_exact(&mut head).await.unwrap();
        answer(&activity);
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        let start = Instant::now();
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.expect("the idle connection reads as ended");
        assert!(rest.is_empty());
        assert_eq!(start.elapsed(), TIMEOUTS.keep_alive);
    }

    #[tokio::test(start_paused = true)]
    async fn flushes_without_data_do_not_restart_the_idle_time() {
        let (mut server, _peer, activity) = connection(1024);
        answer(&activity);
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        let start = Instant::now();
        let mut byte = [0; 1];
        for _ in 0..20 {
            match tokio::time::timeout(Duration::from_secs(7), server.read(&mut byte)).await {
                Ok(read) => {
                    assert_eq!(read.unwrap(), 0, "end of stream");
                    assert_eq!(start.elapsed(), TIMEOUTS.keep_alive);
                    return;
                }
                // hyper flushes on every turn of its loop, whether or not it wrote.
                Err(_) => server.flush().await.unwrap(),
            }
        }
        panic!("the idle connection was not ended");
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

    #[tokio::test(start_paused = true)]
    async fn requests_keep_a_connection_open_past_the_keep_alive_timeout() {
        let (mut server, mut peer, activity) = connection(1024);
        let mut buf = [0; 4];
        answer(&activity);
        // A request every 40 s, for 200 s: each idle gap is shorter than the timeout.
        for _ in 0..5 {
            let gap = tokio::time::timeout(Duration::from_secs(40), server.read(&mut buf)).await;
            assert!(gap.is_err());
            peer.write_all(b"GET ").await.unwrap();
            server.read_exact(&mut buf).await.unwrap();
            answer(&activity);
            server.write_all(b"ok").await.unwrap();
        }
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
