//! User sign-in for laptops: the device code flow (`tokenrelay login --device-code`), the
//! refresh-token grant that later obtains tokens silently, the non-secret
//! AuthenticationRecord that names the account (docs/protocols.md#authenticationrecord), and
//! the `user` credential.
//!
//! The refresh token lives only in the persistent store (encrypted unless the operator
//! allowed plaintext); the record is plain JSON. Entra rotates refresh tokens, so every
//! grant's new one replaces the old under the store's lock.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use super::entra::{Endpoint, EntraClient, Failure, Request, parse_user_token_response, relayed};
use super::{Credential, CredentialError, LinkStatus};
use crate::clock::{Clock, SystemClock};
use crate::config::AuthenticationRecord;
use crate::config::CredentialKind;
use crate::secret::Secret;
use crate::store::{OnUnreadable, PersistedAccount, Store};
use crate::token::AccessToken;

/// The public client azure-identity's DeviceCodeCredential uses when none is given (the Azure
/// CLI's application), so a login works without registering an application.
pub const DEFAULT_CLIENT_ID: &str = "04b07795-8ddb-461a-bbee-02f9e1bf7b46";
/// Work and school accounts of any tenant.
pub const DEFAULT_TENANT: &str = "organizations";
const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
const CREDENTIAL: CredentialKind = CredentialKind::User;
/// What the error says when only a new sign-in helps.
const LOGIN_AGAIN: &str = "run `tokenrelay login --device-code` (or `--browser`) again";
/// What a sign-in refused for want of consent says to do.
pub const CONSENT: &str = "consent is required: an administrator of the tenant must grant the application the permissions \
                           asked for (or sign in to a tenant where it has them, with --tenant), or use --client-id with \
                           an application consented there";
/// The longest a device code is polled for, whatever the authority says (Entra: 15 minutes).
pub const MAX_DEVICE_CODE_SECS: u64 = 3600;

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
    /// Seconds until the code expires, at most [`MAX_DEVICE_CODE_SECS`].
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
    /// The account, from `client_info` or the ID token, when the authority sent them.
    pub account: Option<Account>,
}

/// Who signed in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub home_account_id: String,
    pub tenant_id: String,
    pub username: String,
}

/// The user sign-in grants: the device code flow and the refresh-token grant, posted through
/// the shared [`EntraClient`], so they share its timeouts, retries of throttling and 5xx,
/// concurrency cap, typed errors and scrubbing of the authority's text. What is particular to
/// them is how a refusal reads: RFC 8628's polling answers, and the refusals only a new
/// sign-in can fix.
pub struct UserGrants {
    entra: Arc<EntraClient>,
}

impl UserGrants {
    /// The grants of the authority `entra` talks to.
    pub fn new(entra: Arc<EntraClient>) -> Self {
        Self { entra }
    }

    /// The authority's base URL (`https://login.microsoftonline.com/`), for the authorize URL.
    pub fn authority_host(&self) -> &reqwest::Url {
        self.entra.authority_host()
    }

    /// The host part for the AuthenticationRecord.
    pub fn authority(&self) -> String {
        let host = self.entra.authority_host();
        host.host_str().map_or_else(
            || host.to_string(),
            |h| match host.port() {
                Some(port) => format!("{h}:{port}"),
                None => h.to_owned(),
            },
        )
    }

    /// Starts the device code flow for `scope` (space-separated). `openid profile
    /// offline_access` are added, as MSAL adds them: `offline_access` makes the authority
    /// issue a refresh token, `openid` an ID token, and `profile` puts the `oid` and
    /// `preferred_username` claims in it, which name the account when `client_info` is absent.
    pub async fn start_device_code(
        &self,
        tenant: &str,
        client_id: &str,
        scope: &str,
    ) -> Result<DeviceCode, CredentialError> {
        let scope = with_oidc_scopes(scope);
        let form = [("client_id", client_id), ("scope", scope.as_str())];
        let request =
            Request { credential: CREDENTIAL, tenant, client_id, endpoint: Endpoint::DeviceCode, form: &form };
        let parse = |body: &[u8], _| serde_json::from_slice::<DeviceCodeResponse>(body);
        let parsed = self.entra.post(&request, parse).await.map_err(Failure::into_error)?;
        Ok(DeviceCode {
            device_code: Secret::new(parsed.device_code),
            user_code: printable(&parsed.user_code),
            verification_uri: printable(&parsed.verification_uri),
            message: printable(parsed.message.as_deref().unwrap_or_default()),
            expires_in: parsed.expires_in.min(MAX_DEVICE_CODE_SECS),
            interval: parsed.interval.unwrap_or(5).max(1),
        })
    }

    /// Polls until the user signs in, declines or the code expires, as RFC 8628 section 3.5
    /// prescribes: `authorization_pending` waits `interval`, `slow_down` adds 5 s to it for
    /// this and every later poll, `expired_token` and a refusal end the flow. No wait runs past
    /// the code's expiry, however long an interval the authority names.
    pub async fn complete_device_code(
        &self,
        tenant: &str,
        client_id: &str,
        code: &DeviceCode,
    ) -> Result<UserTokens, CredentialError> {
        let mut interval = code.interval;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(code.expires_in);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            tokio::time::sleep(Duration::from_secs(interval).min(left)).await;
            let form = [
                ("grant_type", DEVICE_CODE_GRANT),
                ("client_id", client_id),
                ("device_code", code.device_code.expose()),
                ("client_info", "1"),
            ];
            let refusal = match self.token(tenant, client_id, &form).await {
                Ok(tokens) => return Ok(tokens),
                Err(Failure::Refused(refusal)) => refusal,
                Err(Failure::Failed(error)) => return Err(error),
            };
            let expired = tokio::time::Instant::now() >= deadline;
            match refusal.error() {
                "authorization_pending" if !expired => {}
                "slow_down" if !expired => interval = interval.saturating_add(5),
                "authorization_pending" | "slow_down" | "expired_token" => {
                    return Err(refusal.reject(format!("the code expired before sign-in completed; {LOGIN_AGAIN}")));
                }
                "authorization_declined" | "access_denied" => {
                    return Err(refusal.reject("sign-in was declined".to_owned()));
                }
                _ => {
                    let message = format!("sign-in failed: {}", refusal.message());
                    return Err(refusal.reject(message));
                }
            }
        }
    }

    /// The authorization code grant with PKCE (RFC 6749 section 4.1.3, RFC 7636 section 4.5):
    /// redeems the code a browser sign-in brought back to `redirect_uri`, proving with
    /// `verifier` that this is the program that asked for it. `scope` is the authorize
    /// request's.
    pub async fn redeem_code(
        &self,
        tenant: &str,
        client_id: &str,
        code: &Secret,
        redirect_uri: &str,
        verifier: &Secret,
        scope: &str,
    ) -> Result<UserTokens, CredentialError> {
        let form = [
            ("grant_type", "authorization_code"),
            ("client_id", client_id),
            ("code", code.expose()),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier.expose()),
            ("scope", scope),
            ("client_info", "1"),
        ];
        match self.token(tenant, client_id, &form).await {
            Ok(tokens) => Ok(tokens),
            Err(Failure::Refused(refusal))
                if matches!(refusal.error(), "consent_required" | "interaction_required") =>
            {
                let message = format!("{}; {CONSENT}", refusal.detail());
                Err(refusal.reject(message))
            }
            Err(Failure::Refused(refusal)) if refusal.error() == "invalid_grant" => {
                let message = format!(
                    "the authorization code was not accepted ({}); it is single-use and short-lived: {LOGIN_AGAIN}",
                    refusal.detail()
                );
                Err(refusal.reject(message))
            }
            Err(failure) => Err(failure.into_error()),
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
        let scope = with_oidc_scopes(&format!("{resource}/.default"));
        let form = [
            ("grant_type", "refresh_token"),
            ("client_id", client_id),
            ("refresh_token", refresh_token.expose()),
            ("scope", scope.as_str()),
            ("client_info", "1"),
        ];
        match self.token(tenant, client_id, &form).await {
            Ok(tokens) => Ok(tokens),
            // invalid_grant: expired, revoked or inactive refresh token; interaction_required
            // and consent_required: MFA, a new consent or a changed policy. Only the user can
            // fix these, by signing in again.
            Err(Failure::Refused(refusal))
                if matches!(refusal.error(), "invalid_grant" | "interaction_required" | "consent_required") =>
            {
                let message =
                    format!("the sign-in can no longer be used silently ({}); {LOGIN_AGAIN}", refusal.detail());
                Err(refusal.reject(message))
            }
            Err(failure) => Err(failure.into_error()),
        }
    }

    async fn token(&self, tenant: &str, client_id: &str, form: &[(&str, &str)]) -> Result<UserTokens, Failure> {
        let request = Request { credential: CREDENTIAL, tenant, client_id, endpoint: Endpoint::Token, form };
        let response = self.entra.post(&request, parse_user_token_response).await?;
        let id_token = response.id_token.as_ref().map(Secret::expose);
        Ok(UserTokens {
            account: account(response.client_info.as_deref(), id_token),
            access: response.access,
            refresh_token: response.refresh_token,
        })
    }
}

/// The scopes MSAL adds to every user sign-in.
const OIDC_SCOPES: [&str; 3] = ["openid", "profile", "offline_access"];

/// `scope` with whichever of [`OIDC_SCOPES`] it lacks.
pub(super) fn with_oidc_scopes(scope: &str) -> String {
    let mut scopes: Vec<&str> = scope.split_whitespace().collect();
    for oidc in OIDC_SCOPES {
        if !scopes.contains(&oidc) {
            scopes.push(oidc);
        }
    }
    scopes.join(" ")
}

/// Text from the authority for the user's terminal: without control characters (no escape
/// sequence of the authority's choosing reaches the terminal) and bounded.
fn printable(text: &str) -> String {
    let plain: String = text.chars().filter(|c| !c.is_control()).collect();
    relayed::bound(&plain)
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

/// The account that signed in, named as MSAL names it. From `client_info` (`{"uid","utid"}`,
/// base64url) when the authority sent it: `<uid>.<utid>`, the home tenant `utid`. Otherwise
/// from the ID token's claims: `<oid>.<tid>`, the tenant `tid` (for a user signed in to their
/// home tenant, as `organizations` does, the same values). The username is the ID token's
/// `preferred_username` (or `upn`). None of it is verified: it came over TLS straight from the
/// authority in answer to our own request, and it only labels the account. Public for the fuzz
/// target `entra_response`.
pub fn account(client_info: Option<&str>, id_token: Option<&str>) -> Option<Account> {
    let decode = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part.trim_end_matches('='))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
    };
    let text =
        |value: &serde_json::Value, name: &str| value[name].as_str().filter(|s| !s.is_empty()).map(str::to_owned);
    let claims = id_token.and_then(|t| t.split('.').nth(1)).and_then(decode).unwrap_or_default();
    let from_client_info =
        client_info.and_then(decode).and_then(|info| Some((text(&info, "uid")?, text(&info, "utid")?)));
    let (object, tenant) = from_client_info.or_else(|| Some((text(&claims, "oid")?, text(&claims, "tid")?)))?;
    let username = text(&claims, "preferred_username").or_else(|| text(&claims, "upn")).unwrap_or_default();
    Some(Account { home_account_id: format!("{object}.{tenant}"), tenant_id: tenant, username })
}

fn transient(reason: String) -> CredentialError {
    CredentialError::Transient { credential: CREDENTIAL, reason }
}

fn rejected(message: String) -> CredentialError {
    CredentialError::Rejected { credential: CREDENTIAL, aadsts: None, message, correlation_id: None }
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
    fn kind(&self) -> CredentialKind {
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
    fn the_account_comes_from_client_info_and_the_id_token() {
        let info = URL_SAFE_NO_PAD.encode(r#"{"uid":"oid","utid":"tid"}"#);
        let claims = URL_SAFE_NO_PAD.encode(r#"{"preferred_username":"ada@contoso.com"}"#);
        let account = account(Some(&info), Some(&format!("h.{claims}.s"))).unwrap();
        assert_eq!((account.home_account_id.as_str(), account.tenant_id.as_str()), ("oid.tid", "tid"));
        assert_eq!(account.username, "ada@contoso.com");
        assert!(super::account(None, None).is_none());
    }

    #[test]
    fn without_client_info_the_account_comes_from_the_id_token_claims() {
        // Regression: a token response without client_info (sent only on `client_info=1`)
        // named no account, and the sign-in was thrown away.
        let claims = URL_SAFE_NO_PAD.encode(r#"{"oid":"o1","tid":"t1","preferred_username":"ada@contoso.com"}"#);
        let id_token = format!("h.{claims}.s");
        let expected =
            Account { home_account_id: "o1.t1".into(), tenant_id: "t1".into(), username: "ada@contoso.com".into() };
        assert_eq!(account(None, Some(&id_token)), Some(expected.clone()));
        // client_info that does not decode is as good as absent.
        assert_eq!(account(Some("%%%"), Some(&id_token)), Some(expected));
        // client_info wins when both are there: it names the home tenant.
        let info = URL_SAFE_NO_PAD.encode(r#"{"uid":"u2","utid":"home"}"#);
        assert_eq!(account(Some(&info), Some(&id_token)).unwrap().home_account_id, "u2.home");
        // Without `profile` the ID token carries no oid, and nothing names the account.
        let bare = format!("h.{}.s", URL_SAFE_NO_PAD.encode(r#"{"tid":"t1","sub":"pairwise"}"#));
        assert_eq!(account(None, Some(&bare)), None);
    }

    #[test]
    fn sign_ins_ask_for_the_oidc_scopes_once() {
        assert_eq!(
            with_oidc_scopes("https://management.azure.com/.default"),
            "https://management.azure.com/.default openid profile offline_access"
        );
        assert_eq!(with_oidc_scopes("User.Read offline_access openid"), "User.Read offline_access openid profile");
    }

    #[test]
    fn the_authoritys_text_reaches_the_terminal_without_control_characters() {
        assert_eq!(printable("enter \u{1b}[31mCODE\u{7}\r\n now"), "enter [31mCODE now");
        assert_eq!(printable(&"x".repeat(5000)).chars().count(), relayed::MAX_RELAYED_CHARS);
    }
}
