//! Wiring: turns a validated [`Config`] into credentials, a broker and a server, and runs
//! the subcommands. The only place that knows every layer.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use reqwest::Url;

use crate::broker::{Broker, BrokerError, CacheSettings, CachedToken, IdentitySpec, Policy, Selector};
use crate::cli::{Cli, Command};
use crate::clock::{Clock, SystemClock};
use crate::config::{self, Config, IdentityConfig};
use crate::credential::dev_issuer::DevIssuer;
use crate::credential::entra::{EntraClient, EntraSettings};
use crate::credential::{self, BuildContext, Chain, CredentialError, LinkStatus};
use crate::secret::Secret;
use crate::server::wire::TokenBody;
use crate::server::{self, AppState, Limits, Server};

mod login;
mod persist;

/// Exit status for an invalid configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

/// Runs the parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    let config = match config::load(&cli.load_options()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("tokenrelay: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let _telemetry = crate::telemetry::init(&config.log, config.telemetry.traces.as_ref());
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tokenrelay: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve(_) => runtime.block_on(serve(config)),
        Command::Token(args) => match args.tenant {
            Some(tenant) => runtime.block_on(token_for_tenant(&config, &args.resource, args.client_id, &tenant)),
            None => runtime.block_on(token(config, &args.resource, args.client_id)),
        },
        Command::Check(args) => runtime.block_on(check(&config, args.fetch, args.resource.as_deref())),
        Command::Cache(args) => runtime.block_on(persist::cache(&config, args.action)),
        Command::Login(args) => runtime.block_on(login::login(&config, args)),
    }
}

/// What the wiring produced.
pub struct Built {
    pub broker: Arc<Broker>,
    pub dev_issuer: Option<Arc<DevIssuer>>,
}

/// Builds the credentials of every identity and the broker. `base_url` is where the server
/// is reachable (the development issuer's `iss`).
pub fn build(config: &Config, base_url: &str) -> Result<Built, String> {
    let upstream = &config.upstream;
    let entra = entra_client(upstream)?;
    let dev_issuer = match &config.dev {
        Some(dev) => {
            Some(Arc::new(DevIssuer::generate(base_url.to_owned(), dev.tenant_id.clone(), dev.token_lifetime_secs)?))
        }
        None => None,
    };

    let mut specs = Vec::new();
    for identity in &config.identities {
        let chain = credential_chain(identity, identity.tenant_id.as_deref(), &entra, dev_issuer.as_ref(), upstream)?;
        // Once per identity at start: which credential will be tried first, and why.
        match chain.first_usable() {
            Some((first, why)) => tracing::info!(
                identity = %identity.name,
                client_id = %identity.client_id,
                default = identity.default,
                credentials = ?chain.kinds(),
                first = first,
                "identity configured; {first} will be tried first: {why}"
            ),
            None => tracing::warn!(
                identity = %identity.name,
                client_id = %identity.client_id,
                credentials = ?chain.kinds(),
                "identity configured, but none of its credentials can run here; `tokenrelay check` says why"
            ),
        }
        specs.push(IdentitySpec {
            name: identity.name.clone(),
            client_id: identity.client_id.clone(),
            object_id: identity.object_id.clone(),
            resource_id: identity.resource_id.clone(),
            is_default: identity.default,
            prefetch: identity.prefetch.clone(),
            credential: Box::new(chain),
        });
    }
    let cache = &config.cache;
    let settings = CacheSettings {
        max_entries: cache.max_entries,
        negative_ttl: Duration::from_secs(cache.negative_ttl_secs),
        policy: Policy {
            serve_margin_secs: cache.serve_margin_secs,
            refresh_backoff_secs: cache.refresh_backoff_secs,
            refresh_backoff_max_secs: cache.refresh_backoff_max_secs,
        },
    };
    let broker = Arc::new(Broker::new(specs, settings, Arc::new(SystemClock)));
    Ok(Built { broker, dev_issuer })
}

/// The Entra client every credential of this configuration shares.
fn entra_client(upstream: &config::UpstreamConfig) -> Result<Arc<EntraClient>, String> {
    let authority_host = Url::parse(&upstream.authority_host).map_err(|e| format!("authority host: {e}"))?;
    Ok(Arc::new(EntraClient::new(EntraSettings {
        authority_host,
        timeout: Duration::from_secs(upstream.timeout_secs),
        max_retries: upstream.max_retries,
        retry_base: Duration::from_millis(upstream.retry_base_ms),
        retry_max_delay: Duration::from_secs(upstream.retry_max_delay_secs),
        max_concurrent: upstream.max_concurrent,
    })?))
}

/// The credential chain of one identity, asking tokens of `tenant_id`.
fn credential_chain(
    identity: &IdentityConfig,
    tenant_id: Option<&str>,
    entra: &Arc<EntraClient>,
    dev_issuer: Option<&Arc<DevIssuer>>,
    upstream: &config::UpstreamConfig,
) -> Result<Chain, String> {
    let context = BuildContext {
        entra,
        dev_issuer,
        client_id: &identity.client_id,
        object_id: identity.object_id.as_deref(),
        tenant_id,
        timeout: Duration::from_secs(upstream.timeout_secs),
    };
    let links = identity
        .credentials
        .iter()
        .map(|credential| credential::build(credential, &context))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("identity {:?}: {e}", identity.name))?;
    Ok(Chain::new(links))
}

async fn serve(config: Config) -> ExitCode {
    let server = match Server::bind(config.server.listen, limits(&config.server)).await {
        Ok(server) => server,
        Err(error) => {
            eprintln!("tokenrelay: cannot listen on {}: {error}", config.server.listen);
            return ExitCode::FAILURE;
        }
    };
    let addr = match server.local_addr() {
        Ok(addr) => addr,
        Err(error) => {
            eprintln!("tokenrelay: cannot read the bound address: {error}");
            return ExitCode::FAILURE;
        }
    };
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "listening beyond loopback: anything that can reach this address can obtain tokens");
    }
    let base_url = format!("http://{}", display_addr(addr));
    let built = match build(&config, &base_url) {
        Ok(built) => built,
        Err(error) => {
            eprintln!("tokenrelay: {error}");
            return ExitCode::FAILURE;
        }
    };
    let identity_header = match (&config.server.identity_header, config.is_dev()) {
        (Some(secret), _) => Some(secret.clone()),
        (None, true) if config.server.app_service => match generate_secret() {
            Ok(secret) => Some(secret),
            Err(error) => {
                eprintln!("tokenrelay: {error}");
                return ExitCode::FAILURE;
            }
        },
        (None, _) => None,
    };

    println!("tokenrelay {} listening on {base_url}", env!("CARGO_PKG_VERSION"));
    // Probes and scrapes come from the kubelet and Prometheus over the pod IP, which a
    // loopback-only listener cannot answer: the admin listener serves health, readiness and
    // metrics (never tokens) on an address of its own.
    let admin = match config.server.admin_listen {
        Some(admin_addr) => match Server::bind(admin_addr, limits(&config.server)).await {
            Ok(admin) => {
                let bound = admin.local_addr().map_or_else(|_| admin_addr.to_string(), display_addr);
                println!("admin (health, readiness, metrics) listening on http://{bound}");
                Some(admin)
            }
            Err(error) => {
                eprintln!("tokenrelay: cannot listen on {admin_addr} (server.admin_listen): {error}");
                return ExitCode::FAILURE;
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
            Ok(handle) => Some(handle),
            Err(error) => {
                tracing::warn!(%error, "metrics disabled: cannot install the recorder");
                None
            }
        }
    } else {
        None
    };
    let state = AppState {
        broker: built.broker.clone(),
        identity_header: identity_header.map(Arc::new),
        probe_mode: config.server.imds_probe,
        dev_issuer: built.dev_issuer,
        metrics,
    };
    let admin_router = server::admin_router(state.clone());
    let router = server::router(state, &config.server);
    // Before serving: the first requests after a restart are hits, and persisted prefetches
    // count as done.
    persist::attach(&config, &built.broker).await;
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
    let admin_task = admin.map(|admin| tokio::spawn(admin.run(admin_router, stopped(stop_rx.clone()))));
    let served = server.run(router, stopped(stop_rx)).await;
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    persist::flush(&built.broker).await;
    match served {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("tokenrelay: server error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn token(config: Config, resource: &str, client_id: Option<String>) -> ExitCode {
    let base_url = format!("http://{}", display_addr(config.server.listen));
    let built = match build(&config, &base_url) {
        Ok(built) => built,
        Err(error) => {
            eprintln!("tokenrelay: {error}");
            return ExitCode::FAILURE;
        }
    };
    let resource = config::normalize_resource(resource.trim());
    let selector = client_id.map_or(Selector::Default, Selector::ClientId);
    let broker = &built.broker;
    persist::attach(&config, broker).await;
    let result = match broker.resolve(&selector) {
        Ok(identity) => broker.token(identity, resource).await.map(|served| (identity.clone(), served)),
        Err(error) => Err(error),
    };
    persist::flush(broker).await;
    match result {
        Ok((identity, served)) => {
            let echo = None;
            let body = TokenBody::new(&served.entry, &identity.client_id, resource, broker.now(), echo);
            match serde_json::to_string_pretty(&body) {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("tokenrelay: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(error) => {
            eprintln!("tokenrelay: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `token --tenant`: one token for another tenant of an identity, straight from its chain.
///
/// The wire protocols have no tenant parameter, so only this command can ask for one. The
/// tenant must be the identity's own or listed in `additionally_allowed_tenants` (`*` allows
/// any), as the Azure SDKs require. The cache is bypassed: it is keyed by identity and
/// resource, and this process ends after one token anyway.
async fn token_for_tenant(config: &Config, resource: &str, client_id: Option<String>, tenant: &str) -> ExitCode {
    let identity = match &client_id {
        Some(id) => config.identities.iter().find(|i| i.client_id.eq_ignore_ascii_case(id)),
        None => config.identities.iter().find(|i| i.default),
    };
    let Some(identity) = identity else {
        let selector = client_id.map_or("the default identity".to_owned(), |id| format!("client_id {id:?}"));
        eprintln!("tokenrelay: no identity with {selector} is configured here");
        return ExitCode::FAILURE;
    };
    let own = identity.tenant_id.as_deref().is_some_and(|t| t.eq_ignore_ascii_case(tenant));
    let allowed = identity.additionally_allowed_tenants.iter().any(|t| t == "*" || t.eq_ignore_ascii_case(tenant));
    if !own && !allowed {
        eprintln!(
            "tokenrelay: identity {:?} is not configured to acquire tokens for tenant {tenant}; add it to \
             additionally_allowed_tenants (or \"*\") of the identity",
            identity.name
        );
        return ExitCode::FAILURE;
    }
    let resource = config::normalize_resource(resource.trim());
    let chain = match entra_client(&config.upstream)
        .and_then(|entra| credential_chain(identity, Some(tenant), &entra, None, &config.upstream))
    {
        Ok(chain) => chain,
        Err(error) => {
            eprintln!("tokenrelay: {error}");
            return ExitCode::FAILURE;
        }
    };
    match chain.token_from(resource).await {
        Ok((credential, token)) => {
            let entry = CachedToken::new(token, 0, credential);
            let body = TokenBody::new(&entry, &identity.client_id, resource, SystemClock.now(), None);
            match serde_json::to_string_pretty(&body) {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("tokenrelay: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(error) => {
            eprintln!("tokenrelay: {}", describe_failure(&identity.name, error));
            ExitCode::FAILURE
        }
    }
}

/// The resource `check --fetch` asks for when none is named.
const CHECK_RESOURCE: &str = "https://management.azure.com";

/// `check`: the effective configuration, every identity's chain and whether each link can
/// run here; with `fetch`, one token per identity through its chain.
async fn check(config: &Config, fetch: bool, resource: Option<&str>) -> ExitCode {
    let text = match toml::to_string_pretty(config) {
        Ok(text) => text,
        Err(error) => {
            eprintln!("tokenrelay: cannot print the configuration: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!("# effective configuration (secrets redacted)\n{text}");
    let entra = match entra_client(&config.upstream) {
        Ok(entra) => entra,
        Err(error) => {
            eprintln!("tokenrelay: {error}");
            return ExitCode::FAILURE;
        }
    };
    let dev_issuer = match &config.dev {
        Some(dev) => {
            let base_url = format!("http://{}", display_addr(config.server.listen));
            match DevIssuer::generate(base_url, dev.tenant_id.clone(), dev.token_lifetime_secs) {
                Ok(issuer) => Some(Arc::new(issuer)),
                Err(error) => {
                    eprintln!("tokenrelay: {error}");
                    return ExitCode::FAILURE;
                }
            }
        }
        None => None,
    };
    let mut failed = false;
    println!(
        "# credential chains{}",
        if fetch { "" } else { " (nothing contacted; `tokenrelay check --fetch` obtains one token per identity)" }
    );
    for identity in &config.identities {
        let chain = match credential_chain(
            identity,
            identity.tenant_id.as_deref(),
            &entra,
            dev_issuer.as_ref(),
            &config.upstream,
        ) {
            Ok(chain) => chain,
            Err(error) => {
                eprintln!("tokenrelay: {error}");
                return ExitCode::FAILURE;
            }
        };
        println!("# identity {:?} (client_id {}):", identity.name, identity.client_id);
        for (n, (kind, status)) in chain.statuses().iter().enumerate() {
            let verdict = match status {
                LinkStatus::Usable(_) => "usable",
                LinkStatus::NotUsable(_) => "not usable",
            };
            println!("#   {}. {kind}: {verdict}: {}", n + 1, status.reason());
        }
        match chain.first_usable() {
            Some((first, _)) => println!("#   tries {first} first"),
            None => println!("#   warning: no credential of this identity can run here"),
        }
        if fetch {
            let resource = resource
                .map(|r| config::normalize_resource(r.trim()).to_owned())
                .or_else(|| identity.prefetch.first().cloned())
                .unwrap_or_else(|| CHECK_RESOURCE.to_owned());
            match chain.token_from(&resource).await {
                Ok((credential, token)) => println!(
                    "#   fetched a token for {resource} from {credential} (valid for {} s more, fingerprint {})",
                    token.expires_on.saturating_sub(SystemClock.now()),
                    token.token.fingerprint()
                ),
                Err(error) => {
                    failed = true;
                    let text = describe_failure(&identity.name, error);
                    println!("#   fetching a token for {resource} failed: {text}");
                    eprintln!("tokenrelay: {text}");
                }
            }
        }
    }
    if failed {
        return ExitCode::FAILURE;
    }
    println!("# configuration is valid");
    ExitCode::SUCCESS
}

/// A chain's failure worded as the HTTP error description words it (the same text reaches
/// the log, `check` and the caller), with Entra's correlation id when there is one.
fn describe_failure(identity: &str, error: CredentialError) -> String {
    let correlation = match &error {
        CredentialError::Rejected { correlation_id: Some(id), .. } => format!(" (correlation id {id})"),
        _ => String::new(),
    };
    let error = BrokerError::Upstream { identity: identity.to_owned(), source: Arc::new(error) };
    format!("{error}{correlation}")
}

/// The connection-level limits of `server`.
fn limits(server: &config::ServerConfig) -> Limits {
    Limits {
        max_connections: server.max_connections,
        max_header_bytes: server.max_header_bytes,
        max_uri_bytes: server.max_uri_bytes,
        header_read_timeout: Duration::from_secs(server.header_read_timeout_secs),
        grace: Duration::from_secs(server.shutdown_grace_secs),
    }
}

/// A random 32-byte hex secret for the App Service flavour under `--dev`.
fn generate_secret() -> Result<Secret, String> {
    let mut bytes = [0u8; 32];
    SystemRandom::new().fill(&mut bytes).map_err(|_| "no randomness for the identity header secret")?;
    Ok(Secret::new(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

/// `127.0.0.1:8080`, or `localhost`-free `[::1]:8080` for IPv6; unspecified addresses are
/// shown as loopback because that is where a local client reaches them.
fn display_addr(addr: SocketAddr) -> String {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
    }
    addr.to_string()
}
