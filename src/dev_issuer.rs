//! The embedded development issuer behind `tokenrelay serve --dev`.
//!
//! It signs real JWTs (RS256) with an RSA key generated at start and never written anywhere,
//! and publishes the matching OpenID configuration and JWKS so an application under test can
//! validate what it receives. Nothing it issues is accepted by any Azure service.
//!
//! It stands below both its users: the `dev` credential (`credential::dev`) signs tokens with
//! it and the server publishes its discovery documents, so neither reaches into the other.

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, KeyPair, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::clock::{Clock, SystemClock};
use crate::secret::Secret;
use crate::token::AccessToken;

/// Signs development tokens. One per process; its key dies with it.
pub struct DevIssuer {
    key: RsaKeyPair,
    kid: String,
    jwk: Value,
    issuer: String,
    tenant_id: String,
    lifetime_secs: u64,
}

impl DevIssuer {
    /// Generates a fresh 2048-bit key. `issuer` is the base URL the listener serves
    /// (`http://127.0.0.1:8080`); discovery lives under it.
    pub fn generate(issuer: String, tenant_id: String, lifetime_secs: u64) -> Result<Self, String> {
        let key =
            RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| "generating the development signing key failed")?;
        let public = key.public_key();
        let n = URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero());
        let e = URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero());
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, n.as_bytes());
        let kid = URL_SAFE_NO_PAD.encode(&digest.as_ref()[..12]);
        let jwk = json!({ "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": n, "e": e });
        let issuer = issuer.trim_end_matches('/').to_owned();
        Ok(Self { key, kid, jwk, issuer, tenant_id, lifetime_secs })
    }

    /// The `iss` claim of every token.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The OpenID Connect discovery document.
    pub fn openid_configuration(&self) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}/.well-known/jwks.json", self.issuer),
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
            "tenant_id": self.tenant_id,
        })
    }

    /// The public key set.
    pub fn jwks(&self) -> Value {
        json!({ "keys": [self.jwk] })
    }

    /// Signs a token for `client_id` (whose object id is `object_id`) and `resource`.
    pub fn issue(&self, client_id: &str, object_id: &str, resource: &str) -> Result<AccessToken, String> {
        let now = SystemClock.now();
        let expires_on = now + self.lifetime_secs;
        let mut nonce = [0u8; 16];
        SystemRandom::new().fill(&mut nonce).map_err(|_| "no randomness for a token id")?;
        let header = json!({ "alg": "RS256", "typ": "JWT", "kid": self.kid });
        let claims = json!({
            "aud": resource,
            "iss": self.issuer,
            "sub": object_id,
            "oid": object_id,
            "appid": client_id,
            "azp": client_id,
            "tid": self.tenant_id,
            "idtyp": "app",
            "iat": now,
            "nbf": now,
            "exp": expires_on,
            "uti": URL_SAFE_NO_PAD.encode(nonce),
            "ver": "2.0",
        });
        let signing_input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let mut signature_bytes = vec![0u8; self.key.public_modulus_len()];
        self.key
            .sign(&signature::RSA_PKCS1_SHA256, &SystemRandom::new(), signing_input.as_bytes(), &mut signature_bytes)
            .map_err(|_| "signing a development token failed")?;
        let jwt = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature_bytes));
        Ok(AccessToken {
            token: Secret::new(jwt),
            expires_on,
            not_before: now,
            ext_expires_on: expires_on,
            refresh_on: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::RsaPublicKeyComponents;

    #[test]
    fn tokens_verify_against_the_published_key() {
        let issuer = DevIssuer::generate("http://127.0.0.1:9/".into(), "tenant".into(), 3600).unwrap();
        let token = issuer.issue("client", "object", "https://vault.azure.net").unwrap();
        let jwt = token.token.expose();
        let (signing_input, signature_b64) = jwt.rsplit_once('.').unwrap();

        let jwk = &issuer.jwks()["keys"][0];
        let n = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
        let e = URL_SAFE_NO_PAD.decode(jwk["e"].as_str().unwrap()).unwrap();
        let signature_bytes = URL_SAFE_NO_PAD.decode(signature_b64).unwrap();
        RsaPublicKeyComponents { n: &n, e: &e }
            .verify(&signature::RSA_PKCS1_2048_8192_SHA256, signing_input.as_bytes(), &signature_bytes)
            .expect("signature verifies with the JWKS key");

        let payload = signing_input.split('.').nth(1).unwrap();
        let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(claims["aud"], "https://vault.azure.net");
        assert_eq!(claims["iss"], "http://127.0.0.1:9");
        assert_eq!(claims["oid"], "object");
        assert_eq!(claims["appid"], "client");
        assert_eq!(claims["exp"].as_u64().unwrap(), token.expires_on);
        assert_eq!(issuer.openid_configuration()["jwks_uri"], "http://127.0.0.1:9/.well-known/jwks.json");
    }
}
