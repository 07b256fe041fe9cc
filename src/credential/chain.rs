//! `Chain`: an identity's credentials tried in order.

use async_trait::async_trait;

use super::{Credential, CredentialError, LinkStatus, OnBehalfOf};
use crate::config::CredentialKind;
use crate::token::AccessToken;

/// Tries each credential in turn. An unavailable credential is skipped; any other error
/// stops the chain, because a bad secret should surface, not be masked by the next link.
/// When every link is unavailable, the error lists what each one said.
pub struct Chain {
    links: Vec<Box<dyn Credential>>,
}

impl Chain {
    /// A chain of at least one credential.
    pub fn new(links: Vec<Box<dyn Credential>>) -> Self {
        debug_assert!(!links.is_empty(), "configuration validation guarantees a credential");
        Self { links }
    }

    /// The kinds, in order, for logs and `tokenrelay check`.
    pub fn kinds(&self) -> Vec<CredentialKind> {
        self.links.iter().map(|c| c.kind()).collect()
    }

    /// Every link with whether it can run here, in order; nothing is contacted.
    pub fn statuses(&self) -> Vec<(CredentialKind, LinkStatus)> {
        self.links.iter().map(|c| (c.kind(), c.status())).collect()
    }

    /// The first link that can run here and why, or `None` when no link can.
    pub fn first_usable(&self) -> Option<(CredentialKind, String)> {
        self.links.iter().find_map(|c| match c.status() {
            LinkStatus::Usable(why) => Some((c.kind(), why)),
            LinkStatus::NotUsable(_) => None,
        })
    }

    /// Like `get_token`, also naming the link that produced the token.
    pub async fn token_from(&self, resource: &str) -> Result<(CredentialKind, AccessToken), CredentialError> {
        self.first_answer(|link| link.get_token(resource)).await
    }

    /// The first answer of a link that can run here, asked with `ask`, with the link's kind.
    async fn first_answer<'a, F>(
        &'a self,
        ask: impl Fn(&'a dyn Credential) -> F,
    ) -> Result<(CredentialKind, AccessToken), CredentialError>
    where
        F: std::future::Future<Output = Result<AccessToken, CredentialError>> + 'a,
    {
        let mut unavailable = Vec::new();
        for link in &self.links {
            match ask(link.as_ref()).await {
                Ok(token) => {
                    tracing::debug!(credential = link.kind().as_str(), "credential provided a token");
                    return Ok((link.kind(), token));
                }
                // A lone credential's error is the chain's error, unchanged.
                Err(error) if self.links.len() == 1 => return Err(error),
                Err(CredentialError::Unavailable { credential, reason }) => {
                    tracing::debug!(credential = credential.as_str(), %reason, "credential unavailable, trying the next");
                    unavailable.push(format!("{credential}: {reason}"));
                }
                Err(other) => return Err(other),
            }
        }
        let reason = format!("no credential of the chain could run: {}", unavailable.join("; "));
        Err(CredentialError::Unavailable { credential: self.kind(), reason })
    }
}

#[async_trait]
impl Credential for Chain {
    fn kind(&self) -> CredentialKind {
        match self.links.as_slice() {
            [only] => only.kind(),
            _ => CredentialKind::Chain,
        }
    }

    async fn get_token(&self, resource: &str) -> Result<AccessToken, CredentialError> {
        self.token_from(resource).await.map(|(_, token)| token)
    }

    /// The first link that can prove the application runs the exchange, as for a token.
    async fn on_behalf_of(&self, request: OnBehalfOf<'_>) -> Result<AccessToken, CredentialError> {
        self.first_answer(|link| link.on_behalf_of(request)).await.map(|(_, token)| token)
    }

    fn status(&self) -> LinkStatus {
        match self.first_usable() {
            Some((kind, why)) => LinkStatus::Usable(format!("{kind}: {why}")),
            None => LinkStatus::NotUsable("no credential of the chain can run here".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::secret::Secret;

    /// A link with a fixed answer that counts its calls.
    struct Fixed {
        kind: CredentialKind,
        answer: Result<AccessToken, CredentialError>,
        calls: Arc<AtomicUsize>,
    }

    #[async_trait]
    impl Credential for Fixed {
        fn kind(&self) -> CredentialKind {
            self.kind
        }
        async fn get_token(&self, _: &str) -> Result<AccessToken, CredentialError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.answer.clone()
        }
        fn status(&self) -> LinkStatus {
            match &self.answer {
                Err(CredentialError::Unavailable { reason, .. }) => LinkStatus::NotUsable(reason.clone()),
                _ => LinkStatus::Usable(format!("{} is set up", self.kind)),
            }
        }
    }

    fn link(
        kind: CredentialKind,
        answer: Result<AccessToken, CredentialError>,
    ) -> (Box<dyn Credential>, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        (Box::new(Fixed { kind, answer, calls: calls.clone() }), calls)
    }

    fn token(expires_on: u64) -> AccessToken {
        AccessToken { token: Secret::new("t"), expires_on, not_before: 0, ext_expires_on: expires_on, refresh_on: None }
    }

    fn unavailable(credential: CredentialKind, reason: &str) -> CredentialError {
        CredentialError::Unavailable { credential, reason: reason.into() }
    }

    #[tokio::test]
    async fn tries_links_in_order_skipping_unavailable_ones() {
        let (env, env_calls) =
            link(CredentialKind::Environment, Err(unavailable(CredentialKind::Environment, "no AZURE_CLIENT_SECRET")));
        let (wi, wi_calls) = link(CredentialKind::WorkloadIdentity, Ok(token(100)));
        let (cli, cli_calls) = link(CredentialKind::AzureCli, Ok(token(200)));
        let chain = Chain::new(vec![env, wi, cli]);
        let (from, token) = chain.token_from("r").await.unwrap();
        assert_eq!((from, token.expires_on), (CredentialKind::WorkloadIdentity, 100));
        assert_eq!(
            (env_calls.load(Ordering::SeqCst), wi_calls.load(Ordering::SeqCst), cli_calls.load(Ordering::SeqCst)),
            (1, 1, 0),
            "the link after the winner is never asked"
        );
        assert_eq!(chain.first_usable().unwrap().0, CredentialKind::WorkloadIdentity);
        assert_eq!(
            chain.kinds(),
            [CredentialKind::Environment, CredentialKind::WorkloadIdentity, CredentialKind::AzureCli]
        );
    }

    #[tokio::test]
    async fn the_aggregated_error_lists_every_link() {
        let (a, _) =
            link(CredentialKind::Environment, Err(unavailable(CredentialKind::Environment, "no AZURE_CLIENT_SECRET")));
        let (b, _) = link(CredentialKind::AzureCli, Err(unavailable(CredentialKind::AzureCli, "az is not on PATH")));
        let chain = Chain::new(vec![a, b]);
        let err = chain.get_token("r").await.unwrap_err();
        assert!(matches!(err, CredentialError::Unavailable { credential: CredentialKind::Chain, .. }));
        let text = err.to_string();
        assert!(
            text.contains("environment: no AZURE_CLIENT_SECRET") && text.contains("azure_cli: az is not on PATH"),
            "{text}"
        );
        assert!(chain.first_usable().is_none());
        assert!(!chain.status().is_usable());
    }

    #[tokio::test]
    async fn a_rejection_or_transient_failure_stops_the_chain() {
        let rejected = CredentialError::Rejected {
            credential: CredentialKind::ClientSecret,
            aadsts: Some(7000215),
            message: "bad secret".into(),
            correlation_id: None,
        };
        let (bad, _) = link(CredentialKind::ClientSecret, Err(rejected));
        let (good, good_calls) = link(CredentialKind::WorkloadIdentity, Ok(token(1)));
        let chain = Chain::new(vec![bad, good]);
        assert!(chain.get_token("r").await.unwrap_err().is_permanent());
        assert_eq!(good_calls.load(Ordering::SeqCst), 0);

        let down = CredentialError::Transient { credential: CredentialKind::ManagedIdentity, reason: "500".into() };
        let (down, _) = link(CredentialKind::ManagedIdentity, Err(down));
        let (good, good_calls) = link(CredentialKind::AzureCli, Ok(token(1)));
        let chain = Chain::new(vec![down, good]);
        assert!(matches!(chain.get_token("r").await, Err(CredentialError::Transient { .. })));
        assert_eq!(good_calls.load(Ordering::SeqCst), 0);
    }
}
