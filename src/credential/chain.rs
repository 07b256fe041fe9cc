//! `Chain`: an identity's credentials tried in order.

use async_trait::async_trait;

use super::{AccessToken, Credential, CredentialError};

/// Tries each credential in turn. An unavailable credential is skipped; any other error
/// stops the chain, because a bad secret should surface, not be masked by the next link.
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
    pub fn kinds(&self) -> Vec<&'static str> {
        self.links.iter().map(|c| c.kind()).collect()
    }
}

#[async_trait]
impl Credential for Chain {
    fn kind(&self) -> &'static str {
        match self.links.as_slice() {
            [only] => only.kind(),
            _ => "chain",
        }
    }

    async fn get_token(&self, resource: &str) -> Result<AccessToken, CredentialError> {
        let mut unavailable = Vec::new();
        for link in &self.links {
            match link.get_token(resource).await {
                Ok(token) => return Ok(token),
                Err(CredentialError::Unavailable { credential, reason }) => {
                    tracing::debug!(credential, %reason, "credential unavailable, trying the next");
                    unavailable.push(format!("{credential}: {reason}"));
                }
                Err(other) => return Err(other),
            }
        }
        Err(CredentialError::Unavailable { credential: self.kind(), reason: unavailable.join("; ") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    struct Fixed(Result<AccessToken, CredentialError>);

    #[async_trait]
    impl Credential for Fixed {
        fn kind(&self) -> &'static str {
            "fixed"
        }
        async fn get_token(&self, _: &str) -> Result<AccessToken, CredentialError> {
            self.0.clone()
        }
    }

    fn token() -> AccessToken {
        AccessToken { token: Secret::new("t"), expires_on: 100, not_before: 0, ext_expires_on: 100, refresh_on: None }
    }

    fn unavailable(reason: &str) -> CredentialError {
        CredentialError::Unavailable { credential: "fixed", reason: reason.into() }
    }

    #[tokio::test]
    async fn skips_unavailable_links_and_reports_all_of_them() {
        let chain =
            Chain::new(vec![Box::new(Fixed(Err(unavailable("no file")))), Box::new(Fixed(Err(unavailable("no env"))))]);
        let err = chain.get_token("r").await.unwrap_err().to_string();
        assert!(err.contains("no file") && err.contains("no env"), "{err}");

        let chain = Chain::new(vec![Box::new(Fixed(Err(unavailable("no file")))), Box::new(Fixed(Ok(token())))]);
        assert_eq!(chain.get_token("r").await.unwrap().expires_on, 100);
    }

    #[tokio::test]
    async fn a_rejection_stops_the_chain() {
        let rejected = CredentialError::Rejected {
            credential: "fixed",
            aadsts: Some(7000215),
            message: "bad secret".into(),
            correlation_id: None,
        };
        let chain = Chain::new(vec![Box::new(Fixed(Err(rejected))), Box::new(Fixed(Ok(token())))]);
        assert!(chain.get_token("r").await.unwrap_err().is_permanent());
    }
}
