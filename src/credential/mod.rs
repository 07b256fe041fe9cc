//! Upstream credentials: how tokenrelay itself obtains tokens.
//!
//! Each kind lives in its own file behind the [`Credential`] trait; [`Chain`] tries an
//! identity's credentials in order; [`entra`] is the only code that speaks OAuth2 to the
//! authority. Nothing here caches: the broker decides when to call a credential.

pub mod auth_code;
pub mod azure_cli;
pub mod azure_developer_cli;
pub mod azure_pipelines;
pub mod azure_powershell;
mod build;
pub mod certificate;
mod chain;
pub mod client_assertion;
pub mod client_secret;
pub mod dev;
pub mod entra;
pub mod environment;
mod jwt;
pub mod managed_identity;
mod process;
pub mod tls;
pub mod user;
mod watched;
pub mod workload_identity;

use std::time::Duration;

use async_trait::async_trait;

pub use build::{BuildContext, NotConfigured, build};
pub use chain::Chain;

use crate::config::CredentialKind;
use crate::secret::Secret;
use crate::token::AccessToken;

/// Why a credential produced no token. Every variant names the credential and carries a
/// message an operator can act on; none ever contains a secret.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CredentialError {
    /// The credential cannot run here (not configured, a file is missing); a chain moves
    /// on to its next credential.
    #[error("{credential}: unavailable: {reason}")]
    Unavailable { credential: CredentialKind, reason: String },

    /// The authority refused the request for a reason that retrying will not fix (a bad
    /// secret, an unknown application, a federation mismatch). Fix the configuration.
    #[error("{credential}: {message}")]
    Rejected {
        credential: CredentialKind,
        /// The AADSTS error number, when the authority sent one.
        aadsts: Option<u32>,
        /// What went wrong and what to check.
        message: String,
        /// The authority's correlation id, for a support request.
        correlation_id: Option<String>,
    },

    /// The authority is throttling us; try again after `retry_after`.
    #[error("{credential}: the authority is throttling requests (retry after {}s)", retry_after.as_secs())]
    Throttled { credential: CredentialKind, retry_after: Duration },

    /// A failure that may pass: timeout, connection refused, a 5xx from the authority.
    #[error("{credential}: {reason}")]
    Transient { credential: CredentialKind, reason: String },

    /// The authority refused an on-behalf-of exchange because of the user or the user's token
    /// (multi-factor authentication or conditional access asking for more claims, consent
    /// missing, an assertion it does not accept): only the user, stepping up or signing in
    /// again, can cure it, so it goes back to the caller with the challenge intact.
    #[error("{credential}: the authority refused the exchange for this user: {message}")]
    UserRefused {
        credential: CredentialKind,
        /// The OAuth `error` code (`interaction_required`, `invalid_grant`, ...), one line.
        error: String,
        /// The AADSTS error number, when the authority sent one.
        aadsts: Option<u32>,
        /// The authority's first line, scrubbed of what the request carried and bounded.
        message: String,
        /// The claims challenge (a JSON object as text) the front end must request, when
        /// the authority sent one.
        claims: Option<String>,
        /// The authority's correlation id, for a support request.
        correlation_id: Option<String>,
    },
}

impl CredentialError {
    /// Whether the same request can never succeed without a configuration change. The
    /// broker briefly remembers such errors so a misconfigured pod cannot hammer Entra.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Rejected { .. } | Self::UserRefused { .. })
    }

    /// Appends `detail` to the message of a rejection with AADSTS code `code`; any other
    /// error is returned unchanged. Credentials use it to name what they presented (the
    /// federated token's claims, the certificate's thumbprint), which the authority's own
    /// message does not.
    pub fn with_detail(self, code: u32, detail: impl FnOnce() -> String) -> Self {
        match self {
            Self::Rejected { credential, aadsts: Some(found), message, correlation_id } if found == code => {
                Self::Rejected {
                    credential,
                    aadsts: Some(found),
                    message: format!("{message}; {}", detail()),
                    correlation_id,
                }
            }
            other => other,
        }
    }
}

/// Whether a credential can run here, judged from configuration and the local machine only
/// (files exist, a program is on `PATH`), never by contacting anything. `tokenrelay check`
/// prints it and the start-up log names the first usable link of every chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkStatus {
    /// It will be tried; the text says why (`AZURE_CLIENT_SECRET is set`).
    Usable(String),
    /// It will be skipped; the text says what is missing.
    NotUsable(String),
}

impl LinkStatus {
    /// Whether the link will be tried.
    pub fn is_usable(&self) -> bool {
        matches!(self, Self::Usable(_))
    }

    /// The explanation, usable or not.
    pub fn reason(&self) -> &str {
        match self {
            Self::Usable(reason) | Self::NotUsable(reason) => reason,
        }
    }
}

/// An on-behalf-of exchange: the user's token (`assertion`) for a token to `scopes` as the
/// same user, the application proving itself with its credential
/// (docs/protocols.md#on-behalf-of-grant).
#[derive(Clone, Copy)]
pub struct OnBehalfOf<'a> {
    /// The inbound user token, already validated by tokenrelay.
    pub assertion: &'a Secret,
    /// The downstream scopes, space-separated (`https://graph.microsoft.com/User.Read`).
    pub scopes: &'a str,
}

/// Which grant an application credential runs with its proof.
#[derive(Clone, Copy)]
pub enum Grant<'a> {
    /// Client credentials: the application's own token for a resource (never a scope).
    App(&'a str),
    /// On-behalf-of: a user's token for a user's token.
    OnBehalfOf(OnBehalfOf<'a>),
}

/// Something that can obtain an access token for a resource.
#[async_trait]
pub trait Credential: Send + Sync {
    /// A short name for logs and errors, such as `client_secret`.
    fn kind(&self) -> CredentialKind;

    /// Obtains a new token for `resource` (an App ID URI such as `https://vault.azure.net`,
    /// never a scope). Implementations do not cache.
    async fn get_token(&self, resource: &str) -> Result<AccessToken, CredentialError>;

    /// Runs the on-behalf-of exchange of `request`, proving the application with this
    /// credential. Only credentials that prove an application registration can (a secret,
    /// a certificate, a federated assertion); the others are unavailable for it.
    async fn on_behalf_of(&self, request: OnBehalfOf<'_>) -> Result<AccessToken, CredentialError> {
        let _ = request;
        Err(CredentialError::Unavailable {
            credential: self.kind(),
            reason: "cannot prove an application in an on-behalf-of exchange; use client_secret, \
                     client_certificate, client_assertion or workload_identity"
                .to_owned(),
        })
    }

    /// Whether this credential can run here, without contacting anything.
    fn status(&self) -> LinkStatus {
        LinkStatus::Usable("configured".to_owned())
    }
}

/// The HTTP client every upstream call uses: `timeout` bounds each exchange and its connect,
/// and requests name tokenrelay and its version. `adjust` adds what one caller needs beyond
/// that (managed identity: no proxy, a shorter connect timeout). Every client shares one TLS
/// configuration whose trust roots are read once per process ([`tls`]). Fails only if the TLS
/// stack cannot initialise.
pub(crate) fn http_client(
    timeout: Duration,
    adjust: impl FnOnce(reqwest::ClientBuilder) -> reqwest::ClientBuilder,
) -> Result<reqwest::Client, String> {
    let builder = reqwest::Client::builder()
        .tls_backend_preconfigured(tls::client_config()?)
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("tokenrelay/", env!("CARGO_PKG_VERSION")));
    adjust(builder).build().map_err(|e| format!("building the HTTP client: {e}"))
}
