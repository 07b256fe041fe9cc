//! `tokenrelay check`: the effective configuration, each chain link's status, and an optional fetch.

use std::sync::Arc;

use super::{AppError, credential_chain, describe_failure, display_addr, entra_client, store_for_credentials};
use crate::clock::{Clock, SystemClock};
use crate::config::CredentialKind;
use crate::config::{self, Config};
use crate::credential::LinkStatus;
use crate::dev_issuer::DevIssuer;

/// The resource `check --fetch` asks for when none is named.
const CHECK_RESOURCE: &str = "https://management.azure.com";

/// `check`: the effective configuration, every identity's chain and whether each link can
/// run here; with `fetch`, one token per identity through its chain.
pub(super) async fn check(config: &Config, fetch: bool, resource: Option<&str>) -> Result<(), AppError> {
    let text = toml::to_string_pretty(config)
        .map_err(|error| AppError::Runtime(format!("cannot print the configuration: {error}")))?;
    println!("# effective configuration (secrets redacted)\n{text}");
    let ignored = config::ignored_variables();
    if !ignored.is_empty() {
        let names: Vec<&str> = ignored.iter().map(|v| v.name.as_str()).collect();
        println!("# ignored, not configuration (configuration variables join keys with `__`): {}", names.join(", "));
    }
    let entra = entra_client(&config.upstream)?;
    let dev_issuer = match &config.dev {
        Some(dev) => {
            let base_url = format!("http://{}", display_addr(config.server.listen));
            match DevIssuer::generate(base_url, dev.tenant_id.clone(), dev.token_lifetime_secs) {
                Ok(issuer) => Some(Arc::new(issuer)),
                Err(error) => {
                    return Err(error.into());
                }
            }
        }
        None => None,
    };
    let store = store_for_credentials(config);
    let mut failed = false;
    // Each identity's links and whether they can run here, for the user-token section.
    let mut links: Vec<(&str, Vec<(CredentialKind, LinkStatus)>)> = Vec::new();
    println!(
        "# credential chains{}",
        if fetch { "" } else { " (nothing contacted; `tokenrelay check --fetch` obtains one token per identity)" }
    );
    for identity in &config.identities {
        let chain = credential_chain(
            identity,
            identity.tenant_id.as_deref(),
            &entra,
            dev_issuer.as_ref(),
            &config.upstream,
            &store,
        )?;
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
        links.push((&identity.name, chain.statuses()));
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
    if !user_endpoints(config, dev_issuer.as_ref(), &links, fetch).await? {
        failed = true;
    }
    if failed {
        return Err(AppError::Reported);
    }
    println!("# configuration is valid");
    Ok(())
}

/// The user-token endpoints (docs/on-behalf-of.md): which user tokens each identity accepts,
/// where their signing keys come from (fetched with `fetch`), and each downstream API with the
/// credential that would run its exchange. `Ok(false)` when something it checked failed.
async fn user_endpoints(
    config: &Config,
    dev_issuer: Option<&Arc<DevIssuer>>,
    links: &[(&str, Vec<(CredentialKind, LinkStatus)>)],
    fetch: bool,
) -> Result<bool, AppError> {
    let inbound: Vec<_> = config.identities.iter().filter_map(|i| i.inbound.as_ref().map(|b| (i, b))).collect();
    if inbound.is_empty() && config.downstream_apis.is_empty() {
        println!("# user-token endpoints: off (no identity has an `inbound` section, no `[[downstream_apis]]`)");
        return Ok(true);
    }
    let mut ok = true;
    println!(
        "# user-token endpoints (/Validate, /AuthorizationHeader/{{name}} on {}):",
        display_addr(config.server.listen)
    );
    let header = if config.server.user_endpoints_require_identity_header { "required" } else { "checked when sent" };
    println!("#   callers: the token listener's guards; X-IDENTITY-HEADER {header}");
    if inbound.is_empty() {
        println!("#   warning: no identity has an `inbound` section, so every user token is refused");
    }
    for (identity, accepts) in &inbound {
        println!("#   identity {:?} accepts user tokens:", identity.name);
        println!("#     audiences: {}", accepts.audiences.join(", "));
        let tenants = if accepts.tenants.is_empty() {
            "any (multi-tenant)".to_owned()
        } else {
            accepts.tenants.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")
        };
        println!("#     tenants: {tenants}");
        let required = match (accepts.scopes.is_empty(), accepts.roles.is_empty()) {
            (true, true) => "nothing beyond a valid token".to_owned(),
            (false, true) => format!("a scope (scp) of {}", accepts.scopes.join(", ")),
            (true, false) => format!("a role of {}", accepts.roles.join(", ")),
            (false, false) => {
                format!("a scope (scp) of {}, or a role of {}", accepts.scopes.join(", "), accepts.roles.join(", "))
            }
        };
        println!("#     requires: {required}; clock skew {} s", accepts.clock_skew_secs);
    }
    if !inbound.is_empty() {
        let keys = super::inbound_keys(config, dev_issuer).map_err(AppError::Runtime)?;
        match fetch {
            false => println!("#   signing keys from {} (`--fetch` fetches them)", keys.location),
            true => match keys.source.fetch().await {
                Ok(held) => println!("#   signing keys from {}: fetched {} key(s)", keys.location, held.len()),
                Err(error) => {
                    ok = false;
                    println!("#   signing keys from {}: fetching failed: {error}", keys.location);
                    eprintln!("tokenrelay: the signing keys of user tokens: {error}");
                }
            },
        }
    }
    for api in &config.downstream_apis {
        println!(
            "#   downstream API {:?}: scopes {}, exchanged on-behalf-of as identity {:?}",
            api.name,
            api.scopes.join(" "),
            api.identity
        );
        let statuses = links.iter().find(|(name, _)| *name == api.identity).map(|(_, s)| s.as_slice()).unwrap_or(&[]);
        let exchanging = statuses.iter().find(|(kind, status)| kind.acts_for_users() && status.is_usable());
        match exchanging {
            Some((kind, _)) => println!("#     the exchange runs with {kind}"),
            None => {
                let kinds: Vec<&str> = statuses.iter().map(|(kind, _)| kind.as_str()).collect();
                let able: Vec<&str> =
                    CredentialKind::CONFIGURABLE.iter().filter(|k| k.acts_for_users()).map(|k| k.as_str()).collect();
                println!(
                    "#     warning: no usable credential of identity {:?} can run the exchange ({}); it needs one of: {}",
                    api.identity,
                    kinds.join(", "),
                    able.join(", ")
                );
            }
        }
        if !config.identities.iter().any(|i| i.name == api.identity && i.inbound.is_some()) {
            println!(
                "#     warning: identity {:?} has no `inbound` section, so /AuthorizationHeader/{} refuses every user \
                 token",
                api.identity, api.name
            );
        }
        let (resource, _) = config::split_scope(api.scopes.first().map(String::as_str).unwrap_or_default());
        println!("#     /AuthorizationHeaderUnauthenticated/{}: the application's own token for {resource}", api.name);
    }
    Ok(ok)
}
