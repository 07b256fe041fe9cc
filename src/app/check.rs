//! `tokenrelay check`: the effective configuration, each chain link's status, and an optional fetch.

use std::sync::Arc;

use super::{AppError, credential_chain, describe_failure, display_addr, entra_client, store_for_credentials};
use crate::clock::{Clock, SystemClock};
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
        return Err(AppError::Reported);
    }
    println!("# configuration is valid");
    Ok(())
}
