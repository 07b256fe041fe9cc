//! `environment`: the Azure SDKs' EnvironmentCredential.
//!
//! The detection itself happens in configuration (the only code that reads the process
//! environment): `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and `AZURE_CLIENT_SECRET` make a client
//! secret credential; failing that, `AZURE_CLIENT_CERTIFICATE_PATH` (with
//! `AZURE_CLIENT_CERTIFICATE_PASSWORD` and `AZURE_CLIENT_SEND_CERTIFICATE_CHAIN`) makes a
//! certificate credential. This type runs what was detected under the name `environment`, so
//! a chain and `tokenrelay check` say where the credential came from.

use async_trait::async_trait;

use super::{Credential, CredentialError, LinkStatus, OnBehalfOf};
use crate::config::CredentialKind;
use crate::token::AccessToken;

/// A client secret or certificate credential found in the `AZURE_*` variables.
pub struct EnvironmentCredential {
    inner: Box<dyn Credential>,
    variables: &'static str,
}

impl EnvironmentCredential {
    /// Wraps the credential built from the variables named in `variables`.
    pub fn new(inner: Box<dyn Credential>, variables: &'static str) -> Self {
        Self { inner, variables }
    }
}

#[async_trait]
impl Credential for EnvironmentCredential {
    fn kind(&self) -> CredentialKind {
        CredentialKind::Environment
    }

    async fn get_token(&self, resource: &str) -> Result<AccessToken, CredentialError> {
        self.inner.get_token(resource).await
    }

    async fn on_behalf_of(&self, request: OnBehalfOf<'_>) -> Result<AccessToken, CredentialError> {
        self.inner.on_behalf_of(request).await
    }

    fn status(&self) -> LinkStatus {
        match self.inner.status() {
            LinkStatus::Usable(why) => {
                LinkStatus::Usable(format!("{} is set ({}: {why})", self.variables, self.inner.kind()))
            }
            LinkStatus::NotUsable(why) => {
                LinkStatus::NotUsable(format!("{} is set, but {}: {why}", self.variables, self.inner.kind()))
            }
        }
    }
}
