//! The authorization code flow with PKCE for a public client on a loopback redirect (RFC 6749
//! section 4.1, RFC 7636 with `S256`, RFC 8252 section 7.3), as MSAL runs it for a user signing
//! in in a browser: the authorize URL, and reading the redirect that comes back to the
//! loopback listener. The code is redeemed by [`super::user::UserGrants::redeem_code`]; the
//! listener and the browser are `tokenrelay login --browser`'s (`app`).

use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::Url;

use super::user::with_oidc_scopes;
use crate::secret::Secret;

/// One sign-in's authorize request and what must come back with it.
#[derive(Debug)]
pub struct AuthorizationRequest {
    /// The URL the browser opens.
    pub url: Url,
    /// The value the redirect must carry back (RFC 6749 section 10.12, against a forged redirect).
    pub state: Secret,
    /// The PKCE verifier: only its SHA-256 leaves before the code comes back, so a code
    /// intercepted on the way is useless without it.
    pub verifier: Secret,
    /// Where the authority sends the browser back, exactly as the token request repeats it.
    pub redirect_uri: String,
    /// The scopes asked for, with the OpenID Connect scopes MSAL adds.
    pub scope: String,
}

/// The authorize request for `client_id` in `tenant` asking for `scope`, redirecting to
/// `redirect_uri` (`http://localhost:<port>`). Fails only without randomness.
pub fn authorization_request(
    authority_host: &Url,
    tenant: &str,
    client_id: &str,
    scope: &str,
    redirect_uri: &str,
) -> Result<AuthorizationRequest, String> {
    let verifier = random_text()?;
    let state = random_text()?;
    let challenge = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, verifier.as_bytes()));
    let scope = with_oidc_scopes(scope);
    let mut url = authority_host
        .join(&format!("{tenant}/oauth2/v2.0/authorize"))
        .map_err(|e| format!("the authorize URL for tenant {tenant:?}: {e}"))?;
    url.query_pairs_mut()
        .append_pair("client_id", client_id)
        .append_pair("response_type", "code")
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("response_mode", "query")
        .append_pair("scope", &scope)
        .append_pair("state", &state)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256")
        // As the Azure SDKs' InteractiveBrowserCredential: the user picks the account.
        .append_pair("prompt", "select_account")
        .append_pair("client_info", "1");
    Ok(AuthorizationRequest {
        url,
        state: Secret::new(state),
        verifier: Secret::new(verifier),
        redirect_uri: redirect_uri.to_owned(),
        scope,
    })
}

/// 32 random bytes as base64url: 43 characters, within RFC 7636's 43 to 128 for a verifier.
fn random_text() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    SystemRandom::new().fill(&mut bytes).map_err(|_| "no randomness for the sign-in".to_owned())?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// What a request to the loopback listener carried.
#[derive(Debug)]
pub enum Redirect {
    /// The authorization code, to redeem.
    Code(Secret),
    /// The authority (or the user) refused: RFC 6749 section 4.1.2.1's `error` and
    /// `error_description`.
    Refused { error: String, description: String },
    /// Not the redirect of this sign-in: no or another `state` (a stale tab, another program),
    /// or neither a code nor an error. The listener keeps waiting.
    NotOurs(&'static str),
}

/// Reads the query of a request to the redirect URI. Only a request carrying this sign-in's
/// `state` counts, so a page that makes the browser hit the loopback port can neither end the
/// sign-in nor inject its own code.
pub fn read_redirect(query: &str, state: &Secret) -> Redirect {
    let mut code = None;
    let mut error = None;
    let mut description = String::new();
    let mut returned_state = None;
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match name.as_ref() {
            "code" => code = Some(Secret::new(value.as_ref())),
            "error" => error = Some(value.into_owned()),
            "error_description" => description = value.into_owned(),
            "state" => returned_state = Some(Secret::new(value.as_ref())),
            _ => {}
        }
    }
    match returned_state {
        Some(returned) if state.matches(returned.expose().as_bytes()) => {}
        Some(_) => return Redirect::NotOurs("its state is not this sign-in's"),
        None => return Redirect::NotOurs("it carries no state"),
    }
    match (code, error) {
        (_, Some(error)) => Redirect::Refused { error, description },
        (Some(code), None) if !code.expose().is_empty() => Redirect::Code(code),
        _ => Redirect::NotOurs("it carries neither a code nor an error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> AuthorizationRequest {
        let host = Url::parse("https://login.microsoftonline.com/").unwrap();
        authorization_request(
            &host,
            "organizations",
            "app-id",
            "https://vault.azure.net/.default",
            "http://localhost:5123",
        )
        .unwrap()
    }

    #[test]
    fn the_authorize_url_carries_the_s256_challenge_of_the_verifier() {
        let request = request();
        let query: std::collections::HashMap<_, _> = request.url.query_pairs().into_owned().collect();
        assert_eq!(request.url.path(), "/organizations/oauth2/v2.0/authorize");
        assert_eq!(query["code_challenge_method"], "S256");
        let expected = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, request.verifier.expose().as_bytes()));
        assert_eq!(query["code_challenge"], expected);
        assert_eq!(request.verifier.expose().len(), 43);
        assert!(!request.url.as_str().contains(request.verifier.expose()), "the verifier never leaves early");
        assert_eq!(query["state"], request.state.expose());
        assert_eq!(query["redirect_uri"], "http://localhost:5123");
        assert_eq!(query["response_type"], "code");
        assert_eq!(query["scope"], "https://vault.azure.net/.default openid profile offline_access");
        assert_ne!(request.state.expose(), self::request().state.expose(), "a new state per sign-in");
    }

    #[test]
    fn only_a_redirect_with_this_state_counts() {
        let state = Secret::new("s1");
        assert!(
            matches!(read_redirect("code=c&state=s1&session_state=x", &state), Redirect::Code(c) if c.expose() == "c")
        );
        assert!(matches!(read_redirect("code=c&state=s2", &state), Redirect::NotOurs(_)));
        assert!(matches!(read_redirect("code=c", &state), Redirect::NotOurs(_)));
        assert!(matches!(read_redirect("state=s1", &state), Redirect::NotOurs(_)));
        assert!(matches!(read_redirect("", &state), Redirect::NotOurs(_)));
        let refused = read_redirect("error=access_denied&error_description=AADSTS65004%3A+declined&state=s1", &state);
        assert!(
            matches!(refused, Redirect::Refused { ref error, ref description } if error == "access_denied" && description == "AADSTS65004: declined")
        );
        assert!(matches!(read_redirect("error=access_denied&state=bad", &state), Redirect::NotOurs(_)));
    }
}
