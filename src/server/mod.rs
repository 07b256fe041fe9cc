//! The HTTP surface: both managed-identity flavours, health and readiness, and the
//! development issuer's discovery documents. Knows nothing of credentials.

mod app_service;
mod error;
mod health;
mod imds;
mod state;
mod token;
pub mod wire;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::routing::get;
use tokio::net::TcpListener;
use tower::Layer;
use tower_http::normalize_path::NormalizePathLayer;
use tower_http::timeout::TimeoutLayer;

pub use error::ApiError;
pub use state::AppState;

use crate::config::{IMDS_PATH, ServerConfig};

/// Builds the router for `state`. Paths are normalised before routing, so
/// `//metadata/identity/oauth2/token/` reaches the IMDS handler as clients expect.
pub fn router(state: AppState, server: &ServerConfig) -> Router {
    let mut router = Router::new().route("/healthz", get(health::healthz)).route("/readyz", get(health::readyz));
    if server.imds {
        router = router.route(IMDS_PATH, get(imds::handle));
    }
    if server.app_service {
        let path = server.app_service_path.trim_end_matches('/');
        router = router.route(path, get(app_service::handle));
    }
    if state.metrics.is_some() {
        router = router.route("/metrics", get(health::metrics));
    }
    if state.dev_issuer.is_some() {
        router = router
            .route("/.well-known/openid-configuration", get(health::openid_configuration))
            .route("/.well-known/jwks.json", get(health::jwks));
    }
    router
        .fallback(health::fallback)
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(server.request_timeout_secs),
        ))
        .with_state(state)
}

/// A bound listener, ready to serve.
pub struct Server {
    listener: TcpListener,
    grace: Duration,
}

impl Server {
    /// Binds `addr` (port 0 picks a free port; see [`Server::local_addr`]).
    pub async fn bind(addr: SocketAddr, grace: Duration) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self { listener, grace })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `router` until `shutdown` completes, then stops accepting and gives in-flight
    /// requests up to the grace period to finish.
    pub async fn run(self, router: Router, shutdown: impl Future<Output = ()> + Send + 'static) -> io::Result<()> {
        let service = NormalizePathLayer::trim_trailing_slash().layer(router);
        let (stopping_tx, mut stopping_rx) = tokio::sync::watch::channel(false);
        let serve = axum::serve(self.listener, axum::ServiceExt::<Request>::into_make_service(service))
            .with_graceful_shutdown(async move {
                shutdown.await;
                tracing::info!("shutting down: no new connections; finishing requests in flight");
                let _ = stopping_tx.send(true);
            });
        let grace = self.grace;
        let deadline = async move {
            let _ = stopping_rx.wait_for(|stopping| *stopping).await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            result = serve.into_future() => result,
            () = deadline => {
                tracing::warn!(grace_secs = grace.as_secs(), "grace period over; closing remaining connections");
                Ok(())
            }
        }
    }
}

/// Resolves on SIGTERM (what Kubernetes sends) or SIGINT (Ctrl-C on a terminal).
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
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
}
