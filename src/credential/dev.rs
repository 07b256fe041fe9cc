//! The `dev` credential: one identity's tokens from the embedded development issuer
//! ([`crate::dev_issuer`]) behind `tokenrelay serve --dev`.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Credential, CredentialError};
use crate::config::CredentialKind;
use crate::dev_issuer::DevIssuer;
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
}
