//! Wiring: turns a validated [`Config`] into credentials, a broker and a server, and runs
//! the subcommands. The only place that knows every layer.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use reqwest::Url;

use crate::broker::{Broker, CacheSettings, IdentitySpec, Policy, Selector};
use crate::cli::{Cli, Command};
use crate::clock::SystemClock;
use crate::config::{self, Config, CredentialConfig};
use crate::credential::client_secret::ClientSecretCredential;
use crate::credential::dev_issuer::{DevCredential, DevIssuer};
use crate::credential::entra::{EntraClient, EntraSettings};
use crate::credential::workload_identity::WorkloadIdentityCredential;
use crate::credential::{Chain, Credential};
use crate::secret::Secret;
use crate::server::wire::TokenBody;
use crate::server::{self, AppState, Limits, Server};

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
        Command::Token(args) => runtime.block_on(token(config, &args.resource, args.client_id)),
        Command::Check(_) => check(&config),
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
    let authority_host = Url::parse(&upstream.authority_host).map_err(|e| format!("authority host: {e}"))?;
    let entra = Arc::new(EntraClient::new(EntraSettings {
        authority_host,
        timeout: Duration::from_secs(upstream.timeout_secs),
        max_retries: upstream.max_retries,
        retry_base: Duration::from_millis(upstream.retry_base_ms),
        retry_max_delay: Duration::from_secs(upstream.retry_max_delay_secs),
        max_concurrent: upstream.max_concurrent,
    })?);
    let dev_issuer = match &config.dev {
        Some(dev) => {
            Some(Arc::new(DevIssuer::generate(base_url.to_owned(), dev.tenant_id.clone(), dev.token_lifetime_secs)?))
        }
        None => None,
    };

    let mut specs = Vec::new();
    for identity in &config.identities {
        let tenant = identity.tenant_id.clone().unwrap_or_default();
        let links: Vec<Box<dyn Credential>> = identity
            .credentials
            .iter()
            .map(|credential| -> Box<dyn Credential> {
                match credential {
                    CredentialConfig::ClientSecret { secret } => Box::new(ClientSecretCredential::new(
                        entra.clone(),
                        tenant.clone(),
                        identity.client_id.clone(),
                        secret.clone(),
                    )),
                    CredentialConfig::WorkloadIdentity { token_file } => Box::new(WorkloadIdentityCredential::new(
                        entra.clone(),
                        tenant.clone(),
                        identity.client_id.clone(),
                        token_file.clone(),
                    )),
                    CredentialConfig::Dev => Box::new(DevCredential::new(
                        dev_issuer.clone().expect("dev credentials exist only when the dev issuer does"),
                        identity.client_id.clone(),
                        identity.object_id.clone().unwrap_or_else(|| identity.client_id.clone()),
                    )),
                }
            })
            .collect();
        let chain = Chain::new(links);
        tracing::info!(
            identity = %identity.name,
            client_id = %identity.client_id,
            default = identity.default,
            credentials = ?chain.kinds(),
            "identity configured"
        );
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
    let router = server::router(state, &config.server);
    built.broker.start_prefetch();
    tracing::info!(%addr, identities = config.identities.len(), "serving");
    match server.run(router, server::shutdown_signal()).await {
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
    let result = match broker.resolve(&selector) {
        Ok(identity) => broker.token(identity, resource).await.map(|served| (identity.clone(), served)),
        Err(error) => Err(error),
    };
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

fn check(config: &Config) -> ExitCode {
    match toml::to_string_pretty(config) {
        Ok(text) => {
            println!("# effective configuration (secrets redacted)\n{text}");
            for identity in &config.identities {
                for credential in &identity.credentials {
                    if let CredentialConfig::WorkloadIdentity { token_file } = credential
                        && !token_file.is_file()
                    {
                        println!(
                            "# warning: identity {:?}: federated token file {} does not exist (yet)",
                            identity.name,
                            token_file.display()
                        );
                    }
                }
            }
            println!("# configuration is valid");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("tokenrelay: cannot print the configuration: {error}");
            ExitCode::FAILURE
        }
    }
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
