//! The HTTP surface: both managed-identity flavours, health and readiness, and the
//! development issuer's discovery documents. Knows nothing of credentials.

mod admin;
mod app_service;
mod connection;
mod dev_user;
mod direct;
mod discovery;
mod endpoints;
mod error;
mod head;
mod host;
mod imds;
mod sidecar;
mod state;
mod token;
pub mod wire;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
pub use endpoints::Endpoints;
pub use error::ApiError;
use hyper::server::conn::http1;
pub use sidecar::{DownstreamApi, UserEndpoints};
pub use state::AppState;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use self::connection::{Connections, Deadlines, Timeouts};
use crate::config::ServerConfig;

/// The token listener's service: the token flavours the configuration enables, health and
/// readiness, metrics when on, and the development issuer's documents under `--dev`.
/// Paths are normalised, so `//metadata/identity/oauth2/token/` is the IMDS endpoint as
/// clients expect.
pub fn endpoints(state: AppState, server: &ServerConfig) -> Endpoints {
    let mut others = Router::new().route("/healthz", get(admin::healthz)).route("/readyz", get(admin::readyz));
    if state.metrics.is_some() {
        others = others.route("/metrics", get(admin::metrics));
    }
    if state.dev_issuer.is_some() {
        others = others
            .route("/.well-known/openid-configuration", get(discovery::openid_configuration))
            .route("/.well-known/jwks.json", get(discovery::jwks));
    }
    let others = others.fallback(admin::fallback).with_state(state.clone());
    let app_service_path = server.app_service.then_some(server.app_service_path.as_str());
    Endpoints::new(state, server.imds, app_service_path, server.max_uri_bytes, host::AllowedHosts::new(server), others)
        .with_user_endpoints()
}

/// The admin listener's service: health, readiness and metrics only, never a token endpoint,
/// so it may listen beyond loopback for the kubelet's probes and Prometheus.
pub fn admin_endpoints(state: AppState, server: &ServerConfig) -> Endpoints {
    let mut others = Router::new().route("/healthz", get(admin::healthz)).route("/readyz", get(admin::readyz));
    if state.metrics.is_some() {
        others = others.route("/metrics", get(admin::metrics));
    }
    let others = others.fallback(admin::fallback).with_state(state.clone());
    Endpoints::new(state, false, None, server.max_uri_bytes, host::AllowedHosts::default(), others)
}

/// Connection-level limits (docs/threat-model.md#defences-and-their-limits): they bound what a
/// misbehaving or hostile client can hold, before any request reaches the router.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once. A further one takes the slot of a connection that holds it
    /// without using it (stalled, idle or silent), or else waits in the kernel's accept queue.
    pub max_connections: usize,
    /// Largest request head (request line and headers); larger gets 431.
    pub max_header_bytes: usize,
    /// Longest request target (path and query); longer gets 414.
    pub max_uri_bytes: usize,
    /// Time a client has to send a request head, counted from its first byte (from the
    /// connection's start for the first request); slower clients are disconnected.
    pub header_read_timeout: Duration,
    /// Time a response write may wait without progress (a peer that does not read);
    /// the connection is then closed.
    pub write_timeout: Duration,
    /// Time a connection may wait for its next request (after the previous response, or for
    /// a new connection after it was accepted) before it is closed.
    pub keep_alive_timeout: Duration,
    /// How long requests in flight may finish after shutdown starts.
    pub grace: Duration,
}

/// A bound listener, ready to serve.
pub struct Server {
    listener: TcpListener,
    limits: Limits,
}

impl Server {
    /// Binds `addr` (port 0 picks a free port; see [`Server::local_addr`]).
    pub async fn bind(addr: SocketAddr, limits: Limits) -> io::Result<Self> {
        let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        // As `TcpListener::bind` does: a restarted relay can bind at once.
        socket.set_reuseaddr(true)?;
        // Accepted connections inherit these. Without them Linux grows a connection's send
        // buffer to 4 MiB when its peer does not read, and that kernel memory is charged to the
        // pod: 64 stalled admin connections would hold 256 MiB until the write timeout.
        socket.set_send_buffer_size(SOCKET_BUFFER_BYTES)?;
        socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES)?;
        socket.bind(addr)?;
        let listener = socket.listen(LISTEN_BACKLOG)?;
        Ok(Self { listener, limits })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `endpoints` until `shutdown` completes, then stops accepting and gives in-flight
    /// requests up to the grace period to finish.
    ///
    /// The accept loop is ours rather than `axum::serve`'s so that the connection limit, the
    /// head-size limit and the connection deadlines (`connection::Deadlines`) apply.
    pub async fn run(
        self,
        endpoints: Endpoints,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        let Self { listener, limits } = self;
        let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
        let timeouts = Timeouts {
            write: limits.write_timeout,
            keep_alive: limits.keep_alive_timeout,
            header_read: limits.header_read_timeout,
        };
        let http = Arc::new(http1_builder(limits.max_header_bytes));
        let connections = Connections::new();
        tokio::pin!(shutdown);
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _peer)) => stream,
                    Err(error) => {
                        // Running out of file descriptors is the usual cause; back off briefly
                        // instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let permit = match permits.clone().try_acquire_owned() {
                Ok(permit) => permit,
                // Every slot is taken: close a connection that holds one without using it,
                // or else wait (further connections wait in the kernel's accept queue).
                Err(_) => tokio::select! {
                    permit = make_room(&permits, &connections) => permit,
                    () = &mut shutdown => break,
                },
            };
            let registration = connections.register();
            let activity = Arc::clone(registration.activity());
            let io = Deadlines::new(stream, timeouts, Arc::clone(&activity));
            let connection = direct::serve(io, endpoints.clone(), Arc::clone(&activity), Arc::clone(&http));
            let task = tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "connection ended with an error");
                }
                // Dropped with the task also when it is aborted to make room: the slot is
                // freed either way.
                drop((registration, permit));
            });
            activity.set_task(task.abort_handle());
        }
        drop(listener);
        tracing::info!("shutting down: no new connections; finishing requests in flight");
        connections.close_all();
        tokio::select! {
            () = connections.drained() => {}
            () = tokio::time::sleep(limits.grace) => {
                tracing::warn!(grace_secs = limits.grace.as_secs(), "grace period over; closing remaining connections");
            }
        }
        Ok(())
    }
}

/// hyper's settings, for the connections the direct path hands over (`direct`).
///
/// No hyper timer: `Deadlines` bounds the wait for each request and the head itself, without a
/// timer per request. Half-closed connections are answered, as the direct path answers them: a
/// client may shut its side down once its request is sent and still read the answer.
fn http1_builder(max_header_bytes: usize) -> http1::Builder {
    let mut http = http1::Builder::new();
    http.header_read_timeout(None)
        .max_buf_size(max_header_bytes.max(MIN_HEAD_BUFFER))
        .keep_alive(true)
        .half_close(true);
    http
}

/// Serves one connection over `io` as the listener serves an accepted one (the direct path,
/// then hyper), with a 16 KiB head limit, until the peer ends it; with `direct` false, with
/// hyper alone, the same settings. For tests that compare the two.
#[cfg(test)]
pub(crate) async fn serve_connection<T>(io: T, endpoints: Endpoints, direct: bool)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let connections = Connections::new();
    let registration = connections.register();
    let activity = Arc::clone(registration.activity());
    let http = http1_builder(16 * 1024);
    let io = Deadlines::new(io, Timeouts::FOR_TESTS, Arc::clone(&activity));
    if direct {
        let _ = direct::serve(io, endpoints, activity, Arc::new(http)).await;
    } else {
        let service = connection::Tracked::new(endpoints, activity);
        let _ = http.serve_connection(hyper_util::rt::TokioIo::new(io), service).await;
    }
}

/// Waits for a free slot, closing a connection that holds one without using it (see
/// [`Connections::evict_one`]) if there is one. A connection can become such a one at any
/// moment (its peer stops reading), so the search is repeated while no slot frees up.
async fn make_room(permits: &Arc<Semaphore>, connections: &Connections) -> OwnedSemaphorePermit {
    loop {
        if connections.evict_one() {
            // The closed connection's task frees its slot as it ends.
            return permits.clone().acquire_owned().await.expect("the semaphore is never closed");
        }
        tokio::select! {
            permit = permits.clone().acquire_owned() => return permit.expect("the semaphore is never closed"),
            () = tokio::time::sleep(EVICTION_RETRY) => {}
        }
    }
}

/// How often a full listener looks again for a connection to close.
const EVICTION_RETRY: Duration = Duration::from_millis(100);

/// Socket buffer size asked for each connection, each way (Linux doubles it for its own
/// bookkeeping). Far above the largest answer on the hot path (a token, about 1.2 KiB); a larger
/// `/metrics` text takes a few round trips more, which on loopback or the pod network is
/// nothing.
const SOCKET_BUFFER_BYTES: u32 = 32 * 1024;

/// Connections the kernel completes and queues while every slot is taken (what
/// `TcpListener::bind` uses).
const LISTEN_BACKLOG: u32 = 128;

/// hyper refuses a read buffer smaller than this.
const MIN_HEAD_BUFFER: usize = 8192;

/// Resolves on SIGTERM (what Kubernetes sends) or SIGINT (Ctrl-C on a terminal); on Windows,
/// on Ctrl+C, Ctrl+Break or the console window closing.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    // Windows has no SIGTERM. A console program is asked to stop by Ctrl+Break, by its
    // console closing, by the user logging off or by the system shutting down (`taskkill`
    // without /F cannot stop it); after the last three Windows allows a few seconds before it
    // ends the process, enough to save the cache.
    #[cfg(windows)]
    let terminate = async {
        use tokio::signal::windows::{ctrl_break, ctrl_close, ctrl_logoff, ctrl_shutdown};
        match (ctrl_break(), ctrl_close(), ctrl_logoff(), ctrl_shutdown()) {
            (Ok(mut brk), Ok(mut close), Ok(mut logoff), Ok(mut shutdown)) => {
                tokio::select! {
                    _ = brk.recv() => {},
                    _ = close.recv() => {},
                    _ = logoff.recv() => {},
                    _ = shutdown.recv() => {},
                }
            }
            (Err(error), ..) | (_, Err(error), ..) | (_, _, Err(error), _) | (.., Err(error)) => {
                tracing::error!(%error, "cannot listen for Ctrl+Break, the console closing, logoff or shutdown");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(any(unix, windows)))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
}

#[cfg(test)]
mod tests {
    /// A peer that does not read holds at most the socket buffers the listener sets, not the
    /// megabytes Linux grows a send buffer to by default.
    #[tokio::test]
    async fn a_stalled_peer_holds_bounded_socket_buffers() {
        let limits = super::Limits {
            max_connections: 1,
            max_header_bytes: 16 * 1024,
            max_uri_bytes: 8 * 1024,
            header_read_timeout: std::time::Duration::from_secs(10),
            write_timeout: std::time::Duration::from_secs(5),
            keep_alive_timeout: std::time::Duration::from_secs(60),
            grace: std::time::Duration::from_secs(1),
        };
        let server = super::Server::bind("127.0.0.1:0".parse().unwrap(), limits).await.unwrap();
        let peer = tokio::net::TcpSocket::new_v4().unwrap();
        peer.set_recv_buffer_size(4096).unwrap();
        let _peer = peer.connect(server.local_addr().unwrap()).await.unwrap();
        let (accepted, _) = server.listener.accept().await.unwrap();
        // Write until the kernel takes no more for a while: the peer never reads.
        let chunk = [0u8; 16 * 1024];
        let mut written = 0;
        while tokio::time::timeout(std::time::Duration::from_millis(300), accepted.writable()).await.is_ok() {
            match accepted.try_write(&chunk) {
                Ok(n) => written += n,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(error) => panic!("{error}"),
            }
            assert!(written < 64 * 1024 * 1024, "the kernel kept taking data");
        }
        let socket = tokio::net::TcpSocket::from_std_stream(accepted.into_std().unwrap());
        let send_buffer = socket.send_buffer_size().unwrap();
        // Linux doubles the size asked for; by default it grows a stalled send buffer to 4 MiB.
        assert!(send_buffer <= 2 * super::SOCKET_BUFFER_BYTES, "send buffer {send_buffer} bytes");
        assert!(written <= 512 * 1024, "{written} bytes were buffered for a peer that does not read");
    }
}
