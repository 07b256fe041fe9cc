//! Wiring: turns a validated [`Config`] into credentials, a broker and a server, and runs
//! the subcommands. The only place that knows every layer.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;

use crate::broker::{Broker, BrokerError, CacheSettings, IdentitySpec, Policy};
use crate::cli::{Cli, Command};
use crate::clock::SystemClock;
use crate::config::{self, Config, IdentityConfig};
use crate::credential::entra::{EntraClient, EntraSettings};
use crate::credential::{self, BuildContext, Chain, CredentialError};
use crate::dev_issuer::DevIssuer;
use crate::id::Id;
use crate::inbound::keys::{DevKeys, DiscoveryKeys, KeyCache, KeySource};
use crate::inbound::{self, Issuers, Tenants, Validator};
use crate::server::{DownstreamApi, UserEndpoints};
use crate::store::Store;
pub use error::AppError;

mod browser;
mod check;
mod error;
mod login;
mod persist;
mod serve;
#[cfg(test)]
mod server_tests;
mod token;

/// Runs the parsed command line; every failure becomes its exit status in
/// [`AppError::exit`]: 64 for a configuration that cannot work, 1 for anything else.
pub fn run(cli: Cli) -> ExitCode {
    AppError::exit(run_command(cli))
}

fn run_command(cli: Cli) -> Result<(), AppError> {
    let config = config::load(&cli.load_options()).map_err(|error| AppError::Usage(error.to_string()))?;
    // Reading the system's CA certificates takes milliseconds; it overlaps with the start-up
    // from here on instead of delaying the first handshake with the authority.
    credential::tls::preload();
    let _telemetry = crate::telemetry::init(&config.log, config.telemetry.traces.as_ref());
    // Once per process, now that there is a log: TOKENRELAY_* variables that are not
    // configuration (Kubernetes service links, or a single `_` where `__` belongs).
    config::log_ignored_variables();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| AppError::Runtime(format!("cannot start the async runtime: {error}")))?;
    match cli.command {
        Command::Serve(_) => runtime.block_on(serve::serve(config)),
        Command::Token(args) => match args.tenant {
            Some(tenant) => runtime.block_on(token::token_for_tenant(&config, &args.resource, args.client_id, &tenant)),
            None => runtime.block_on(token::token(config, &args.resource, args.client_id)),
        },
        Command::Check(args) => runtime.block_on(check::check(&config, args.fetch, args.resource.as_deref())),
        Command::Cache(args) => runtime.block_on(persist::cache(&config, args.action)),
        Command::Login(args) => runtime.block_on(login::login(&config, args)),
    }
}

/// What the wiring produced.
pub struct Built {
    pub broker: Arc<Broker>,
    pub dev_issuer: Option<Arc<DevIssuer>>,
    /// The user-token endpoints, when an identity accepts user tokens or an API is configured.
    pub user_endpoints: Option<Arc<UserEndpoints>>,
}

/// Builds the credentials of every identity and the broker. `base_url` is where the server
/// is reachable (the development issuer's `iss`); `store` is the run's persistent store,
/// which `user` credentials share with the cache.
pub fn build(config: &Config, base_url: &str, store: &persist::Opened) -> Result<Built, AppError> {
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
        let chain =
            credential_chain(identity, identity.tenant_id.as_deref(), &entra, dev_issuer.as_ref(), upstream, store)?;
        // Once per identity at start: which credential will be tried first, and why.
        match chain.first_usable() {
            Some((first, why)) => tracing::info!(
                identity = %identity.name,
                client_id = %identity.client_id,
                default = identity.default,
                credentials = ?chain.kinds(),
                first = first.as_str(),
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
        // Half the upstream limit: the other half stays free for requests that wait.
        max_background_refreshes: (config.upstream.max_concurrent / 2).max(1),
        new_keys_per_minute: cache.new_keys_per_minute,
        new_keys_burst: cache.new_keys_burst,
    };
    let broker = Arc::new(Broker::new(specs, settings, Arc::new(SystemClock)));
    let user_endpoints = user_endpoints(config, &broker, dev_issuer.as_ref())?;
    Ok(Built { broker, dev_issuer, user_endpoints })
}

/// The validator of every identity's `inbound` section and the downstream APIs, or `None`
/// when neither is configured.
fn user_endpoints(
    config: &Config,
    broker: &Arc<Broker>,
    dev_issuer: Option<&Arc<DevIssuer>>,
) -> Result<Option<Arc<UserEndpoints>>, String> {
    let inbound: Vec<(&IdentityConfig, &config::InboundConfig)> =
        config.identities.iter().filter_map(|i| i.inbound.as_ref().map(|inbound| (i, inbound))).collect();
    if inbound.is_empty() && config.downstream_apis.is_empty() {
        return Ok(None);
    }
    let policies = inbound
        .iter()
        .map(|(identity, inbound)| inbound::Policy {
            identity: identity.name.clone(),
            audiences: inbound.audiences.clone(),
            tenants: if inbound.tenants.is_empty() { Tenants::Any } else { Tenants::List(inbound.tenants.clone()) },
            scopes: inbound.scopes.clone(),
            roles: inbound.roles.clone(),
            clock_skew_secs: inbound.clock_skew_secs,
        })
        .collect();
    let InboundKeys { issuers, source, name, .. } = inbound_keys(config, dev_issuer)?;
    let validator = Validator::new(policies, issuers, KeyCache::new(source, name), Arc::new(SystemClock));
    let apis = config
        .downstream_apis
        .iter()
        .map(|api| {
            let identity = broker
                .identity_named(&api.identity)
                .cloned()
                .ok_or_else(|| format!("downstream API {:?}: no identity is named {:?}", api.name, api.identity))?;
            Ok(DownstreamApi { name: api.name.clone(), scopes: api.scopes.join(" "), identity })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Some(Arc::new(UserEndpoints {
        validator,
        apis,
        require_identity_header: config.server.user_endpoints_require_identity_header,
    })))
}

/// Where the signing keys of inbound user tokens come from, and which issuers they carry.
struct InboundKeys {
    issuers: Issuers,
    source: Box<dyn KeySource>,
    /// What logs call the key source (the authority host, or the development issuer).
    name: String,
    /// Where the keys are read: the discovery document's URL, for `check`.
    location: String,
}

/// The key source of the `inbound` sections: under `--dev` the development issuer, otherwise
/// the authority's discovery document of the accepted tenant.
fn inbound_keys(config: &Config, dev_issuer: Option<&Arc<DevIssuer>>) -> Result<InboundKeys, String> {
    if let Some(issuer) = dev_issuer {
        return Ok(InboundKeys {
            issuers: Issuers::Dev { issuer: issuer.issuer().to_owned() },
            source: Box::new(DevKeys(Arc::clone(issuer))),
            name: "development issuer".to_owned(),
            location: "the development issuer".to_owned(),
        });
    }
    let inbound: Vec<&config::InboundConfig> = config.identities.iter().filter_map(|i| i.inbound.as_ref()).collect();
    let authority = config.upstream.authority_host.trim_end_matches('/').to_owned();
    // Entra signs every tenant's tokens with the same keys; a single configured tenant is
    // asked directly, several (or any) through `common`.
    let mut tenants: Vec<&Id> = inbound.iter().flat_map(|i| i.tenants.iter()).collect();
    tenants.sort_unstable_by_key(|t| t.to_ascii_lowercase());
    tenants.dedup();
    let any = inbound.iter().any(|i| i.tenants.is_empty());
    let tenant = match tenants.as_slice() {
        [only] if !any => only.as_str(),
        _ => "common",
    };
    let discovery = Url::parse(&format!("{authority}/{tenant}/v2.0/.well-known/openid-configuration"))
        .map_err(|e| format!("the discovery document's URL: {e}"))?;
    let http = credential::http_client(Duration::from_secs(config.upstream.timeout_secs), |b| b)?;
    Ok(InboundKeys {
        issuers: Issuers::Entra { authority: authority.clone() },
        location: discovery.to_string(),
        source: Box::new(DiscoveryKeys::new(http, discovery)),
        name: authority,
    })
}

/// The Entra client every credential of this configuration shares.
fn entra_client(upstream: &config::UpstreamConfig) -> Result<Arc<EntraClient>, AppError> {
    let authority_host = Url::parse(&upstream.authority_host).map_err(|e| format!("authority host: {e}"))?;
    Ok(Arc::new(EntraClient::new(EntraSettings {
        authority_host,
        timeout: Duration::from_secs(upstream.timeout_secs),
        max_retries: upstream.max_retries,
        retry_base: Duration::from_millis(upstream.retry_base_ms),
        retry_max_delay: Duration::from_secs(upstream.retry_max_delay_secs),
        retry_budget: Duration::from_secs(upstream.retry_budget_secs),
        max_concurrent: upstream.max_concurrent,
    })?))
}

/// The credential chain of one identity, asking tokens of `tenant_id`. A `user` credential
/// needs `store`: when it could not be opened, the chain cannot be built and the error says
/// why.
fn credential_chain(
    identity: &IdentityConfig,
    tenant_id: Option<&str>,
    entra: &Arc<EntraClient>,
    dev_issuer: Option<&Arc<DevIssuer>>,
    upstream: &config::UpstreamConfig,
    store: &persist::Opened,
) -> Result<Chain, AppError> {
    let store: Option<Arc<dyn Store>> = match store {
        Ok(store) => store.clone().map(|store| store as Arc<dyn Store>),
        Err(problem) if has_user_credential(identity) => {
            return Err(AppError::Runtime(format!("identity {:?}: user: {problem}", identity.name)));
        }
        Err(_) => None,
    };
    let context = BuildContext {
        entra,
        dev_issuer,
        client_id: &identity.client_id,
        object_id: identity.object_id.as_deref(),
        tenant_id,
        timeout: Duration::from_secs(upstream.timeout_secs),
        store: store.as_ref(),
    };
    let links = identity
        .credentials
        .iter()
        .map(|credential| credential::build(credential, &context))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("identity {:?}: {e}", identity.name))?;
    Ok(Chain::new(links))
}

fn has_user_credential(identity: &IdentityConfig) -> bool {
    identity.credentials.iter().any(|credential| matches!(credential, config::CredentialConfig::User(_)))
}

/// The store for commands that do not persist the token cache (`check`, `token --tenant`):
/// opened only when a `user` credential needs its refresh token, since opening may create
/// the cache's directory, lock file and keyring entry.
fn store_for_credentials(config: &Config) -> persist::Opened {
    if config.identities.iter().any(has_user_credential) { persist::open(config) } else { Ok(None) }
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

/// A chain's failure worded as the HTTP error description words it (the same text reaches
/// the log, `check` and the caller), with Entra's correlation id when there is one.
fn describe_failure(identity: &str, error: CredentialError) -> String {
    let correlation = match &error {
        CredentialError::Rejected { correlation_id: Some(id), .. } => format!(" (correlation id {id})"),
        _ => String::new(),
    };
    let error = BrokerError::upstream(identity.to_owned(), &error);
    format!("{error}{correlation}")
}
