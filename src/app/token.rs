//! `tokenrelay token`: one token through the same identity, cache and credential code.

use super::{
    AppError, build, credential_chain, describe_failure, display_addr, entra_client, persist, store_for_credentials,
};
use crate::broker::{CachedToken, Selector};
use crate::clock::{Clock, SystemClock};
use crate::config::{self, Config};
use crate::server::wire::render_token_body;

pub(super) async fn token(config: Config, resource: &str, client_id: Option<String>) -> Result<(), AppError> {
    let base_url = format!("http://{}", display_addr(config.server.listen));
    let store = persist::open(&config);
    let built = build(&config, &base_url, &store)?;
    let resource = config::normalize_resource(resource.trim());
    let selector = client_id.map_or(Selector::Default, |id| Selector::ClientId(id.into()));
    let broker = &built.broker;
    persist::attach(&config, &store, broker).await;
    let result = match broker.resolve(&selector) {
        Ok(identity) => broker.token(identity, resource).await.map(|served| (identity.clone(), served)),
        Err(error) => Err(error),
    };
    persist::flush(broker).await;
    match result {
        Ok((identity, served)) => {
            print_body(&render_token_body(&served.entry, &identity.client_id, resource, broker.now(), None))
        }
        Err(error) => Err(AppError::Runtime(error.to_string())),
    }
}

/// `token --tenant`: one token for another tenant of an identity, straight from its chain.
///
/// The wire protocols have no tenant parameter, so only this command can ask for one. The
/// tenant must be the identity's own or listed in `additionally_allowed_tenants` (`*` allows
/// any), as the Azure SDKs require. The cache is bypassed: it is keyed by identity and
/// resource, and this process ends after one token anyway.
pub(super) async fn token_for_tenant(
    config: &Config,
    resource: &str,
    client_id: Option<String>,
    tenant: &str,
) -> Result<(), AppError> {
    let identity = match &client_id {
        Some(id) => config.identities.iter().find(|i| i.client_id == *id),
        None => config.identities.iter().find(|i| i.default),
    };
    let Some(identity) = identity else {
        let selector = client_id.map_or("the default identity".to_owned(), |id| format!("client_id {id:?}"));
        return Err(AppError::Runtime(format!("no identity with {selector} is configured here")));
    };
    let own = identity.tenant_id.as_ref().is_some_and(|t| *t == tenant);
    let allowed = identity.additionally_allowed_tenants.iter().any(|t| *t == "*" || *t == tenant);
    if !own && !allowed {
        return Err(AppError::Runtime(format!(
            "identity {:?} is not configured to acquire tokens for tenant {tenant}; add it to \
             additionally_allowed_tenants (or \"*\") of the identity",
            identity.name
        )));
    }
    let resource = config::normalize_resource(resource.trim());
    let chain = entra_client(&config.upstream).and_then(|entra| {
        credential_chain(identity, Some(tenant), &entra, None, &config.upstream, &store_for_credentials(config))
    })?;
    match chain.token_from(resource).await {
        Ok((credential, token)) => {
            let entry = CachedToken::new(token, 0, crate::broker::Origin::Fetched(credential));
            print_body(&render_token_body(&entry, &identity.client_id, resource, SystemClock.now(), None))
        }
        Err(error) => Err(AppError::Runtime(describe_failure(&identity.name, error))),
    }
}

/// Prints a token body as the endpoints serve it, pretty-printed for a terminal.
fn print_body(body: &[u8]) -> Result<(), AppError> {
    match serde_json::from_slice::<serde_json::Value>(body).and_then(|value| serde_json::to_string_pretty(&value)) {
        Ok(text) => {
            println!("{text}");
            Ok(())
        }
        Err(error) => Err(AppError::Runtime(error.to_string())),
    }
}
