//! The `dev` credential: one identity's tokens from the embedded development issuer
//! ([`crate::dev_issuer`]) behind `tokenrelay serve --dev`.

use std::sync::Arc;

use async_trait::async_trait;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use super::{Credential, CredentialError, OnBehalfOf};
use crate::aadsts;
use crate::clock::{Clock, SystemClock};
use crate::config::{CredentialKind, split_scope};
use crate::dev_issuer::{DevIssuer, DevUser};
use crate::token::AccessToken;

/// One identity's view of the development issuer.
pub struct DevCredential {
    issuer: Arc<DevIssuer>,
    client_id: String,
    object_id: String,
}

impl DevCredential {
    /// Tokens for `client_id`; `object_id` becomes `oid` and `sub`.
    pub fn new(issuer: Arc<DevIssuer>, client_id: String, object_id: String) -> Self {
        Self { issuer, client_id, object_id }
    }
}

#[async_trait]
impl Credential for DevCredential {
    fn kind(&self) -> CredentialKind {
        CredentialKind::Dev
    }

    async fn get_token(&self, resource: &str) -> Result<AccessToken, CredentialError> {
        self.issuer
            .issue(&self.client_id, &self.object_id, resource)
            .map_err(|reason| CredentialError::Transient { credential: self.kind(), reason })
    }

    /// A token for the same user as the assertion (already validated by the caller, so only
    /// read here), for the scopes' resource, as Entra's exchange would issue it.
    async fn on_behalf_of(&self, request: OnBehalfOf<'_>) -> Result<AccessToken, CredentialError> {
        let rejected = |message: &str| CredentialError::UserRefused {
            credential: CredentialKind::Dev,
            error: "invalid_grant".into(),
            aadsts: Some(aadsts::INVALID_ASSERTION),
            message: message.to_owned(),
            claims: None,
            correlation_id: None,
        };
        let claims = request
            .assertion
            .expose()
            .split('.')
            .nth(1)
            .and_then(|part| URL_SAFE_NO_PAD.decode(part).ok())
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
            .ok_or_else(|| rejected("the assertion is not a JWT"))?;
        let text = |name: &str| claims.get(name).and_then(Value::as_str).unwrap_or_default();
        let roles: Vec<String> = claims
            .get("roles")
            .and_then(Value::as_array)
            .map(|roles| roles.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default();
        let mut resource = None;
        let mut names = Vec::new();
        for scope in request.scopes.split(' ').filter(|s| !s.is_empty()) {
            let (scope_resource, name) = split_scope(scope);
            if resource.is_some_and(|r| r != scope_resource) {
                return Err(rejected("the scopes name more than one resource"));
            }
            resource = Some(scope_resource);
            if name != ".default" {
                names.push(name);
            }
        }
        let resource = resource.ok_or_else(|| rejected("no scope was asked for"))?;
        let name = if text("upn").is_empty() { text("sub") } else { text("upn") };
        let user = DevUser { name, object_id: text("oid"), client_app: &self.client_id, roles: &roles };
        let now = SystemClock.now();
        let (token, expires_on) = self
            .issuer
            .issue_user(&user, resource, &names.join(" "), None)
            .map_err(|reason| CredentialError::Transient { credential: self.kind(), reason })?;
        Ok(AccessToken { token, expires_on, not_before: now, ext_expires_on: expires_on, refresh_on: None })
    }
}
