//! `tokenrelay serve`: bind, wire the server to the broker, run until a signal.

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};

use super::{AppError, build, display_addr, persist};
use crate::config::{self, Config};
use crate::secret::Secret;
use crate::server::{self, AppState, Limits, Server};
use crate::shared::SharedCache;

pub(super) async fn serve(config: Config) -> Result<(), AppError> {
    // First, so that reading a large persistent cache overlaps binding and building; the
    // tokens go into the broker below, before anything is served.
    let store = persist::open(&config);
    let loading = persist::start_loading(&config, &store);
    let server = Server::bind(config.server.listen, limits(&config.server))
        .await
        .map_err(|error| AppError::Runtime(format!("cannot listen on {}: {error}", config.server.listen)))?;
    let addr =
        server.local_addr().map_err(|error| AppError::Runtime(format!("cannot read the bound address: {error}")))?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "listening beyond loopback: anything that can reach this address can obtain tokens");
    }
    let base_url = format!("http://{}", display_addr(addr));
    let built = build(&config, &base_url, &store)?;
    let identity_header = match (&config.server.identity_header, config.is_dev()) {
        (Some(secret), _) => Some(secret.clone()),
        (None, true) if config.server.app_service => Some(generate_secret()?),
        (None, _) => None,
    };

    println!("tokenrelay {} listening on {base_url}", env!("CARGO_PKG_VERSION"));
    // Probes and scrapes come from the kubelet and Prometheus over the pod IP, which a
    // loopback-only listener cannot answer: the admin listener serves health, readiness and
    // metrics (never tokens) on an address of its own.
    let admin = match config.server.admin_listen {
        Some(admin_addr) => match Server::bind(admin_addr, admin_limits(&config.server)).await {
            Ok(admin) => {
                let bound = admin.local_addr().map_or_else(|_| admin_addr.to_string(), |a| a.to_string());
                println!("admin (health, readiness, metrics) listening on http://{bound}");
                Some(admin)
            }
            Err(error) => {
                return Err(AppError::Runtime(format!("cannot listen on {admin_addr} (server.admin_listen): {error}")));
            }
        },
        None => None,
    };
    if config.is_dev() {
        tracing::warn!(
            "development mode: tokens are signed by an ephemeral local key and no Azure service accepts them"
        );
        println!(
            "DEVELOPMENT MODE: tokens come from an embedded test issuer ({base_url}); no Azure service accepts them."
        );
        if let (true, Some(secret)) = (config.server.app_service, &identity_header) {
            println!(
                "export IDENTITY_ENDPOINT={base_url}{} IDENTITY_HEADER={}",
                config.server.app_service_path,
                secret.expose()
            );
        }
        if config.server.imds {
            println!("export AZURE_POD_IDENTITY_AUTHORITY_HOST={base_url}");
        }
    }

    let metrics = if config.telemetry.metrics {
        match crate::telemetry::metrics::install() {
            Ok(handle) => Some(crate::telemetry::metrics::Exposition::new(handle)),
            Err(error) => {
                tracing::warn!(%error, "metrics disabled: cannot install the recorder");
                None
            }
        }
    } else {
        None
    };
    share(&config, &built.broker).map_err(AppError::Runtime)?;
    let state = AppState {
        broker: built.broker.clone(),
        identity_header: match &identity_header {
            // Configuration refuses longer secrets and the generated one is 64 bytes.
            Some(secret) => Some(secret.for_header().ok_or("the identity header secret is too long")?),
            None => None,
        },
        probe_mode: config.server.imds_probe,
        dev_issuer: built.dev_issuer,
        metrics,
        request_timeout: Duration::from_secs(config.server.request_timeout_secs),
        log_requests: config.log.requests,
        user_endpoints: built.user_endpoints,
    };
    let admin_endpoints = server::admin_endpoints(state.clone(), &config.server);
    let endpoints = server::endpoints(state, &config.server);
    // Before serving: the first requests after a restart are hits, and persisted prefetches
    // count as done.
    persist::attach_loaded(loading, &built.broker).await;
    built.broker.start_prefetch();
    tracing::info!(%addr, identities = config.identities.len(), "serving");
    // One signal stops both listeners.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        server::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stopping| *stopping).await;
    };
    let admin_task = admin.map(|admin| tokio::spawn(admin.run(admin_endpoints, stopped(stop_rx.clone()))));
    let served = server.run(endpoints, stopped(stop_rx)).await;
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    persist::flush(&built.broker).await;
    served.map_err(|error| AppError::Runtime(format!("server error: {error}")))?;
    tracing::info!("stopped");
    Ok(())
}

/// Connects the broker to the fleet's shared cache, if `[cache.shared]` is configured. The
/// first connection is attempted in the background at once; lookups made before it finishes
/// wait for it (at most `cache.shared.connect_timeout_ms`), and none waits after it.
fn share(config: &Config, broker: &Arc<crate::broker::Broker>) -> Result<(), String> {
    let Some(settings) = &config.cache.shared else {
        return Ok(());
    };
    if config.is_dev() {
        tracing::warn!(
            "cache.shared is ignored with --dev: development tokens are signed by this process's own key, which no \
             other replica shares"
        );
        return Ok(());
    }
    let shared = SharedCache::new(settings)?;
    if let Some(warning) = settings.key.warning() {
        tracing::warn!("{warning}");
    }
    tracing::info!(
        server = shared.describe(),
        key = settings.key.source(),
        prefix = %settings.key_prefix,
        "sharing tokens with the other replicas through the shared cache"
    );
    broker.share_via(Arc::clone(&shared));
    tokio::spawn(async move { shared.start().await });
    Ok(())
}

/// The connection-level limits of `server`.
fn limits(server: &config::ServerConfig) -> Limits {
    Limits {
        max_connections: server.max_connections,
        max_header_bytes: server.max_header_bytes,
        max_uri_bytes: server.max_uri_bytes,
        header_read_timeout: Duration::from_secs(server.header_read_timeout_secs),
        write_timeout: Duration::from_secs(server.write_timeout_secs),
        keep_alive_timeout: Duration::from_secs(server.keep_alive_timeout_secs),
        grace: Duration::from_secs(server.shutdown_grace_secs),
    }
}

/// The admin listener's limits: a connection limit of its own, small, because that listener
/// faces the pod network and each connection it holds costs memory. Each listener has its own
/// slots, so a flood of one never takes the other's.
fn admin_limits(server: &config::ServerConfig) -> Limits {
    Limits { max_connections: server.admin_max_connections, ..limits(server) }
}

/// A random 32-byte hex secret for the App Service flavour under `--dev`.
fn generate_secret() -> Result<Secret, AppError> {
    let mut bytes = [0u8; 32];
    SystemRandom::new().fill(&mut bytes).map_err(|_| "no randomness for the identity header secret")?;
    Ok(Secret::new(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()))
}
