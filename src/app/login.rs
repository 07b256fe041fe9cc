//! `tokenrelay login --device-code` and `--browser`: signs a user in, keeps the refresh token
//! in the persistent cache and writes the AuthenticationRecord a `user` credential points at.
//! Both methods end the same way ([`keep`]), so the `user` credential cannot tell them apart.

use std::path::PathBuf;
use std::sync::Arc;

use super::AppError;
use crate::cli::LoginArgs;
use crate::clock::{Clock, SystemClock};
use crate::config::AuthenticationRecord;
use crate::config::Config;
use crate::credential::user::{DEFAULT_CLIENT_ID, DEFAULT_TENANT, UserGrants, UserTokens};
use crate::store::{self, PersistedAccount, Store};

/// What a sign-in consents to when `--scope` is not given.
const DEFAULT_SCOPE: &str = "https://management.azure.com/.default";

/// Signs the user in (device code flow or browser) and stores the result.
pub async fn login(config: &Config, args: LoginArgs) -> Result<(), AppError> {
    run(config, args).await.map_err(|error| AppError::Runtime(format!("login failed: {error}")))
}

async fn run(config: &Config, args: LoginArgs) -> Result<(), AppError> {
    let persistence = config.cache.persistence.as_ref().ok_or("the persistent cache is not configured")?;
    // Open the store first: a sign-in whose refresh token cannot be kept is wasted.
    let store: Arc<dyn Store> = store::open(persistence).map_err(|unavailable| {
        format!("the refresh token needs the persistent cache, which cannot be used here: {unavailable}")
    })?;
    // The same client, retries and concurrency cap as every other request to the authority.
    let grants = UserGrants::new(super::entra_client(&config.upstream)?);
    let tenant = args.tenant.as_deref().unwrap_or(DEFAULT_TENANT);
    let client_id = args.client_id.as_deref().unwrap_or(DEFAULT_CLIENT_ID);
    let scope = scope(args.scope.as_deref().unwrap_or(DEFAULT_SCOPE));

    let tokens = if args.browser {
        super::browser::sign_in(&grants, tenant, client_id, &scope, args.no_open, args.timeout).await?
    } else {
        let code = grants.start_device_code(tenant, client_id, &scope).await.map_err(|e| e.to_string())?;
        if code.message.is_empty() {
            eprintln!("To sign in, open {} and enter the code {}", code.verification_uri, code.user_code);
        } else {
            eprintln!("{}", code.message);
        }
        grants.complete_device_code(tenant, client_id, &code).await.map_err(|e| e.to_string())?
    };
    let path = args.record.unwrap_or_else(|| default_record_path(&persistence.path, &persistence.name));
    keep(&store, &grants, client_id, tokens, &path).await
}

/// Stores a sign-in's refresh token and writes its AuthenticationRecord to `path`.
async fn keep(
    store: &Arc<dyn Store>,
    grants: &UserGrants,
    client_id: &str,
    tokens: UserTokens,
    path: &std::path::Path,
) -> Result<(), AppError> {
    let account = tokens.account.ok_or(
        "the authority did not say which account signed in (neither client_info nor an ID token with oid and tid)",
    )?;
    let refresh_token =
        tokens.refresh_token.ok_or("the authority issued no refresh token (offline_access refused?)")?;

    let stored = PersistedAccount {
        home_account_id: account.home_account_id.clone(),
        client_id: client_id.to_owned(),
        tenant_id: account.tenant_id.clone(),
        refresh_token,
        updated_at: SystemClock.now(),
    };
    let saving = store.clone();
    tokio::task::spawn_blocking(move || saving.save_account(stored))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot store the refresh token: {e}"))?;

    let record = AuthenticationRecord {
        authority: grants.authority(),
        client_id: client_id.to_owned(),
        home_account_id: account.home_account_id,
        tenant_id: account.tenant_id,
        username: account.username,
        version: "1.0".to_owned(),
    };
    record.write(path)?;
    println!(
        "signed in as {}; refresh token stored in the {}; AuthenticationRecord written to {}",
        record.username,
        store.describe(),
        path.display()
    );
    println!("use it with: credentials = [{{ kind = \"user\", authentication_record = \"{}\" }}]", path.display());
    Ok(())
}

/// A resource given as `--scope` becomes its `/.default` scope.
fn scope(scope: &str) -> String {
    let scope = scope.trim();
    if scope.starts_with("http") && !scope.ends_with("/.default") && !scope.contains(' ') {
        format!("{}/.default", scope.trim_end_matches('/'))
    } else {
        scope.to_owned()
    }
}

/// `<name>.record.json` beside the cache file.
fn default_record_path(cache: &std::path::Path, name: &str) -> PathBuf {
    cache.with_file_name(format!("{name}.record.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_become_default_scopes() {
        assert_eq!(scope("https://vault.azure.net"), "https://vault.azure.net/.default");
        assert_eq!(scope("https://vault.azure.net/.default"), "https://vault.azure.net/.default");
        assert_eq!(scope("User.Read"), "User.Read");
        let path = default_record_path(std::path::Path::new("/c/tokenrelay/x.cache"), "x");
        assert_eq!(path, std::path::Path::new("/c/tokenrelay/x.record.json"));
    }
}
