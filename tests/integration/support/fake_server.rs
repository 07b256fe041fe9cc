//! What every fake upstream shares: a loopback listener on an ephemeral port, a task that
//! serves it, the base URL to configure, and stopping when the fake is dropped so a test
//! never leaves a server behind for the next one.

use std::net::SocketAddr;

use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A server on `127.0.0.1:<ephemeral port>`; stops when dropped.
pub struct FakeServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl FakeServer {
    /// Serves `app` with `axum::serve`.
    pub async fn serve(app: Router) -> Self {
        Self::start(|listener| async move { axum::serve(listener, app).await.unwrap() }).await
    }

    /// Binds the listener and spawns `serve` on it, for fakes that accept connections
    /// themselves (to misbehave below HTTP).
    pub async fn start<F>(serve: impl FnOnce(TcpListener) -> F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(serve(listener));
        Self { addr, task }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
