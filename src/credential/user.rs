//! User sign-in for laptops: the device code flow (`tokenrelay login --device-code`), the
//! refresh-token grant that later obtains tokens silently, the non-secret
//! AuthenticationRecord that names the account (docs/protocols.md#authenticationrecord), and
//! the `user` credential.
//!
//! The refresh token lives only in the persistent store (encrypted unless the operator
//! allowed plaintext); the record is plain JSON. Entra rotates refresh tokens, so every
//! grant's new one replaces the old under the store's lock.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::Url;
use serde::{Deserialize, Serialize};

use super::{AccessToken, Credential, CredentialError, LinkStatus};
use crate::clock::{Clock, SystemClock};
use crate::secret::Secret;
use crate::store::{OnUnreadable, PersistedAccount, Store};

/// The public client azure-identity's DeviceCodeCredential uses when none is given (the Azure
/// CLI's application), so a login works without registering an application.
pub const DEFAULT_CLIENT_ID: &str = "04b07795-8ddb-461a-bbee-02f9e1bf7b46";
/// Work and school accounts of any tenant.
pub const DEFAULT_TENANT: &str = "organizations";
/// The only AuthenticationRecord version the Azure SDKs read.
const RECORD_VERSION: &str = "1.0";
const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
const CREDENTIAL: &str = "user";
/// What the error says when only a new sign-in helps.
const LOGIN_AGAIN: &str = "run `tokenrelay login --device-code` again";

/// Identifies a signed-in account; not secret (docs/protocols.md#authenticationrecord).
/// Serialised with the Azure SDKs' field names, so their `AuthenticationRecord.deserialize`
/// reads it too.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthenticationRecord {
    /// The authority host, such as `login.microsoftonline.com`.
    pub authority: String,
    /// The public client the user signed in to.
    pub client_id: String,
    /// `<object id>.<tenant id>`.
    pub home_account_id: String,
    /// The user's home tenant.
    pub tenant_id: String,
    /// The user principal name.
    pub username: String,
    /// Always `1.0`.
    pub version: String,
}

impl AuthenticationRecord {
    /// Reads a record written by `tokenrelay login` (or an Azure SDK).
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let record: Self = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not an AuthenticationRecord: {e}", path.display()))?;
        if record.version != RECORD_VERSION {
            return Err(format!("{}: AuthenticationRecord version {:?} is not 1.0", path.display(), record.version));
        }
        Ok(record)
    }

    /// Writes the record as JSON.
    pub fn write(&self, path: &Path) -> Result<(), String> {
        let text = serde_json::to_string_pretty(self).expect("a record of strings always serialises");
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        std::fs::write(path, text + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

/// The authority host an Entra client talks to (its token endpoint without the tenant path).
pub fn authority_host(entra: &super::entra::EntraClient) -> Url {
    const PLACEHOLDER: &str = "tokenrelay-tenant";
    let mut url = entra.token_endpoint(PLACEHOLDER);
    let path = url.path().to_owned();
    let base = path.split(&format!("/{PLACEHOLDER}/")).next().unwrap_or("");
    url.set_path(if base.is_empty() { "/" } else { base });
    url
}

/// What the user is asked to do.
#[derive(Debug)]
pub struct DeviceCode {
    device_code: Secret,
    /// The code to type in.
    pub user_code: String,
    /// Where to type it.
    pub verification_uri: String,
    /// The authority's own instructions.
    pub message: String,
    /// Seconds until the code expires.
    pub expires_in: u64,
    /// Seconds between polls.
    pub interval: u64,
}

/// A user grant's result.
#[derive(Debug)]
pub struct UserTokens {
    /// The access token.
    pub access: AccessToken,
    /// The (rotated) refresh token, when the authority sent one.
    pub refresh_token: Option<Secret>,
    /// The account, from `client_info` and the ID token, when the authority sent them.
    pub account: Option<Account>,
}

/// Who signed in.
#[derive(Clone, Debug)]
pub struct Account {
    pub home_account_id: String,
    pub tenant_id: String,
    pub username: String,
}

/// The authority's endpoints for user sign-in. Separate from [`super::entra::EntraClient`]
/// because these grants talk for a person and never retry a sign-in by themselves.
pub struct UserGrants {
    http: reqwest::Client,
    authority_host: Url,
}

impl UserGrants {
    /// A client for `authority_host` with a hard timeout per exchange.
    pub fn new(authority_host: Url, timeout: Duration) -> Result<Self, String> {
        let http = super::http_client(timeout, |builder| builder)?;
        Ok(Self { http, authority_host })
    }

    /// The host part for the AuthenticationRecord.
    pub fn authority(&self) -> String {
        self.authority_host.host_str().map_or_else(
            || self.authority_host.to_string(),
            |h| match self.authority_host.port() {
                Some(port) => format!("{h}:{port}"),
                None => h.to_owned(),
            },
        )
    }

    fn endpoint(&self, tenant: &str, name: &str) -> Url {
        let mut url = self.authority_host.clone();
        let base = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{base}/{tenant}/oauth2/v2.0/{name}"));
        url
    }

    /// Starts the device code flow for `scope` (space-separated; `offline_access` is added
    /// so the authority issues a refresh token).
    pub async fn start_device_code(
        &self,
        tenant: &str,
        client_id: &str,
        scope: &str,
    ) -> Result<DeviceCode, CredentialError> {
        let scope = format!("{scope} offline_access openid profile");
        let form = [("client_id", client_id), ("scope", scope.as_str())];
        let body = self.post(&self.endpoint(tenant, "devicecode"), &form).await?;
        let parsed: DeviceCodeResponse =
            serde_json::from_value(body).map_err(|e| transient(format!("unreadable device code response: {e}")))?;
        Ok(DeviceCode {
            device_code: Secret::new(parsed.device_code),
            user_code: parsed.user_code,
            verification_uri: parsed.verification_uri,
            message: parsed.message.unwrap_or_default(),
            expires_in: parsed.expires_in,
            interval: parsed.interval.unwrap_or(5).max(1),
        })
    }

    /// Polls until the user signs in, declines or the code expires, as RFC 8628 section 3.5
    /// prescribes: `authorization_pending` waits `interval`, `slow_down` adds 5 s to it,
    /// `expired_token` and a refusal end the flow.
    pub async fn complete_device_code(
        &self,
        tenant: &str,
        client_id: &str,
        code: &DeviceCode,
    ) -> Result<UserTokens, CredentialError> {
        let mut interval = code.interval;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(code.expires_in);
        loop {
            tokio::time::sleep(Duration::from_secs(interval)).await;
            let form = [
                ("grant_type", DEVICE_CODE_GRANT),
                ("client_id", client_id),
                ("device_code", code.device_code.expose()),
            ];
            match self.token(tenant, &form).await {
                Ok(tokens) => return Ok(tokens),
                Err(Grant::Oauth { error, description }) => match error.as_str() {
                    "authorization_pending" if tokio::time::Instant::now() < deadline => {}
                    "slow_down" if tokio::time::Instant::now() < deadline => interval += 5,
                    "authorization_pending" | "slow_down" | "expired_token" => {
                        return Err(rejected(format!("the code expired before sign-in completed; {LOGIN_AGAIN}")));
                    }
                    "authorization_declined" | "access_denied" => {
                        return Err(rejected("sign-in was declined".to_owned()));
                    }
                    _ => return Err(rejected(format!("sign-in failed: {error}: {description}"))),
                },
                Err(Grant::Failed(error)) => return Err(error),
            }
        }
    }

    /// The refresh-token grant: a new access token for `resource` and a rotated refresh token.
    pub async fn refresh(
        &self,
        tenant: &str,
        client_id: &str,
        refresh_token: &Secret,
        resource: &str,
    ) -> Result<UserTokens, CredentialError> {
        let scope = format!("{resource}/.default offline_access");
        let form = [
            ("grant_type", "refresh_token"),
            ("client_id", client_id),
            ("refresh_token", refresh_token.expose()),
            ("scope", scope.as_str()),
        ];
        match self.token(tenant, &form).await {
            Ok(tokens) => Ok(tokens),
            // invalid_grant: expired, revoked or inactive refresh token; interaction_required
            // and consent_required: MFA, a new consent or a changed policy. Only the user can
            // fix these, by signing in again.
            Err(Grant::Oauth { error, description })
                if matches!(error.as_str(), "invalid_grant" | "interaction_required" | "consent_required") =>
            {
                Err(rejected(format!(
                    "the sign-in can no longer be used silently ({error}: {description}); {LOGIN_AGAIN}"
                )))
            }
            Err(Grant::Oauth { error, description }) => Err(rejected(format!("{error}: {description}"))),
            Err(Grant::Failed(error)) => Err(error),
        }
    }

    async fn token(&self, tenant: &str, form: &[(&str, &str)]) -> Result<UserTokens, Grant> {
        let issued_at = SystemClock.now();
        let url = self.endpoint(tenant, "token");
        let response = self
            .http
            .post(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .form(form)
            .send()
            .await
            .map_err(|e| Grant::Failed(transient(format!("cannot reach the authority: {e}"))))?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.map_err(|e| {
            Grant::Failed(transient(format!("the authority answered {status} with an unreadable body: {e}")))
        })?;
        if !status.is_success() {
            let error = body["error"].as_str().unwrap_or_default().to_owned();
            if error.is_empty() || status.is_server_error() {
                return Err(Grant::Failed(transient(format!("the authority answered {status}"))));
            }
            let description =
                body["error_description"].as_str().unwrap_or_default().lines().next().unwrap_or("").to_owned();
            return Err(Grant::Oauth { error, description });
        }
        let parsed: UserTokenResponse = serde_json::from_value(body)
            .map_err(|e| Grant::Failed(transient(format!("unreadable token response: {e}"))))?;
        Ok(parsed.into_tokens(issued_at))
    }

    async fn post(&self, url: &Url, form: &[(&str, &str)]) -> Result<serde_json::Value, CredentialError> {
        let response = self
            .http
            .post(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .form(form)
            .send()
            .await
            .map_err(|e| transient(format!("cannot reach the authority: {e}")))?;
        let status = response.status();
        let body: serde_json::Value =
            response.json().await.map_err(|e| transient(format!("the authority answered {status}: {e}")))?;
        if !status.is_success() {
            let error = body["error"].as_str().unwrap_or("error");
            let description = body["error_description"].as_str().unwrap_or_default().lines().next().unwrap_or("");
            return Err(rejected(format!("{error}: {description}")));
        }
        Ok(body)
    }
}

/// A failed user grant: the authority's OAuth error, or something else.
enum Grant {
    Oauth { error: String, description: String },
    Failed(CredentialError),
}

fn transient(reason: String) -> CredentialError {
    CredentialError::Transient { credential: CREDENTIAL, reason }
}

fn rejected(message: String) -> CredentialError {
    CredentialError::Rejected { credential: CREDENTIAL, aadsts: None, message, correlation_id: None }
}

#[derive(Deserialize)]
struct DeviceCodeResponse {
    device_code: String,
    user_code: String,
    verification_uri: String,
    expires_in: u64,
    interval: Option<u64>,
    message: Option<String>,
}

#[derive(Deserialize)]
struct UserTokenResponse {
    access_token: String,
    expires_in: u64,
    #[serde(default)]
    ext_expires_in: Option<u64>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    id_token: Option<String>,
    #[serde(default)]
    client_info: Option<String>,
}

impl UserTokenResponse {
    fn into_tokens(self, issued_at: u64) -> UserTokens {
        let account = account(self.client_info.as_deref(), self.id_token.as_deref());
        UserTokens {
            access: AccessToken {
                token: Secret::new(self.access_token),
                expires_on: issued_at + self.expires_in,
                not_before: issued_at,
                ext_expires_on: issued_at + self.ext_expires_in.unwrap_or(self.expires_in),
                refresh_on: None,
            },
            refresh_token: self.refresh_token.map(Secret::new),
            account,
        }
    }
}

/// The account from `client_info` (`{"uid","utid"}`, base64url) and the ID token's
/// `preferred_username`, as MSAL derives it. Neither is verified: both came over TLS
/// straight from the authority, and they only label the account.
fn account(client_info: Option<&str>, id_token: Option<&str>) -> Option<Account> {
    let decode = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part.trim_end_matches('='))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
    };
    let info = decode(client_info?)?;
    let uid = info["uid"].as_str()?;
    let utid = info["utid"].as_str()?;
    let claims = id_token.and_then(|t| t.split('.').nth(1)).and_then(decode).unwrap_or_default();
    let username = claims["preferred_username"].as_str().or(claims["upn"].as_str()).unwrap_or_default();
    Some(Account {
        home_account_id: format!("{uid}.{utid}"),
        tenant_id: utid.to_owned(),
        username: username.to_owned(),
    })
}

/// Tokens for a signed-in user: the refresh-token grant with the refresh token from the
/// store, whose rotated successor is stored back.
pub struct UserCredential {
    grants: UserGrants,
    record: AuthenticationRecord,
    store: Arc<dyn Store>,
    /// Refresh tokens rotate: two concurrent grants with the same one would race.
    rotating: tokio::sync::Mutex<()>,
}

impl UserCredential {
    /// The credential for the account `record` names.
    pub fn new(grants: UserGrants, record: AuthenticationRecord, store: Arc<dyn Store>) -> Self {
        Self { grants, record, store, rotating: tokio::sync::Mutex::new(()) }
    }
}

#[async_trait]
impl Credential for UserCredential {
    fn kind(&self) -> &'static str {
        CREDENTIAL
    }

    async fn get_token(&self, resource: &str) -> Result<AccessToken, CredentialError> {
        let _rotating = self.rotating.lock().await;
        let store = Arc::clone(&self.store);
        let snapshot = tokio::task::spawn_blocking(move || store.load(OnUnreadable::MoveAside))
            .await
            .map_err(|e| transient(format!("reading the token cache: {e}")))?
            .map_err(|e| transient(format!("reading the token cache: {e}")))?;
        let record = &self.record;
        let Some(account) = snapshot.account(&record.home_account_id, &record.client_id) else {
            return Err(rejected(format!(
                "no stored sign-in for {} in the token cache; {LOGIN_AGAIN}",
                record.username
            )));
        };
        let tokens =
            self.grants.refresh(&record.tenant_id, &record.client_id, &account.refresh_token, resource).await?;
        if let Some(refresh_token) = tokens.refresh_token {
            let rotated = PersistedAccount {
                home_account_id: record.home_account_id.clone(),
                client_id: record.client_id.clone(),
                tenant_id: record.tenant_id.clone(),
                refresh_token,
                updated_at: SystemClock.now(),
            };
            let store = Arc::clone(&self.store);
            match tokio::task::spawn_blocking(move || store.save_account(rotated)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "cannot store the rotated refresh token"),
                Err(error) => tracing::warn!(%error, "cannot store the rotated refresh token"),
            }
        }
        Ok(tokens.access)
    }

    fn status(&self) -> LinkStatus {
        LinkStatus::Usable(format!("signed in as {} (tokenrelay login)", self.record.username))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_round_trips_with_the_sdks_field_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("record.json");
        let record = AuthenticationRecord {
            authority: "login.microsoftonline.com".into(),
            client_id: DEFAULT_CLIENT_ID.into(),
            home_account_id: "oid.tid".into(),
            tenant_id: "tid".into(),
            username: "ada@contoso.com".into(),
            version: "1.0".into(),
        };
        record.write(&path).unwrap();
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for field in ["authority", "clientId", "homeAccountId", "tenantId", "username", "version"] {
            assert!(json.get(field).is_some(), "{field}");
        }
        assert_eq!(AuthenticationRecord::read(&path).unwrap(), record);
        std::fs::write(&path, json.to_string().replace("\"1.0\"", "\"2.0\"")).unwrap();
        assert!(AuthenticationRecord::read(&path).unwrap_err().contains("version"));
    }

    #[test]
    fn the_account_comes_from_client_info_and_the_id_token() {
        let info = URL_SAFE_NO_PAD.encode(r#"{"uid":"oid","utid":"tid"}"#);
        let claims = URL_SAFE_NO_PAD.encode(r#"{"preferred_username":"ada@contoso.com"}"#);
        let account = account(Some(&info), Some(&format!("h.{claims}.s"))).unwrap();
        assert_eq!((account.home_account_id.as_str(), account.tenant_id.as_str()), ("oid.tid", "tid"));
        assert_eq!(account.username, "ada@contoso.com");
        assert!(super::account(None, None).is_none());
    }
}
