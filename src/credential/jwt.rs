//! Reading the claims of a JWT someone else issued, without verifying it.
//!
//! Federated credentials (workload identity, client assertions, Azure Pipelines) present a
//! token that Entra matches against a federated identity credential by its issuer, subject
//! and audience. When Entra says nothing matched (AADSTS70021) the operator needs exactly
//! those three values; they are claims, not secrets, and the token itself is never shown.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::secret::Secret;

/// `issuer "…", subject "…", audience "…"` of a JWT, read without verifying it.
pub(crate) fn describe_federated_claims(assertion: &Secret) -> String {
    let claims = assertion
        .expose()
        .split('.')
        .nth(1)
        .and_then(|payload| URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok())
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok());
    let Some(claims) = claims else {
        return "a token that is not a readable JWT".to_owned();
    };
    let claim = |name: &str| match &claims[name] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(items) => items.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join(","),
        _ => "(none)".to_owned(),
    };
    format!("issuer \"{}\", subject \"{}\", audience \"{}\"", claim("iss"), claim("sub"), claim("aud"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_the_federated_claims_without_the_token() {
        let payload = URL_SAFE_NO_PAD.encode(
            r#"{"iss":"https://oidc.example","sub":"system:serviceaccount:ns:sa","aud":["api://AzureADTokenExchange"]}"#,
        );
        let jwt = Secret::new(format!("e30.{payload}.c2lnbmF0dXJl"));
        let text = describe_federated_claims(&jwt);
        assert_eq!(
            text,
            "issuer \"https://oidc.example\", subject \"system:serviceaccount:ns:sa\", audience \"api://AzureADTokenExchange\""
        );
        assert!(!text.contains("c2lnbmF0dXJl"));
        assert_eq!(describe_federated_claims(&Secret::new("garbage")), "a token that is not a readable JWT");
    }
}
