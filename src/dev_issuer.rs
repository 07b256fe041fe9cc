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

/// Who a development user token names.
pub struct DevUser<'a> {
    /// The sign-in name (`upn`, `preferred_username`, `name`).
    pub name: &'a str,
    /// `oid` and `sub`.
    pub object_id: &'a str,
    /// The front end the user signed in to (`azp`, `appid`).
    pub client_app: &'a str,
    /// Application roles (`roles`), if any.
    pub roles: &'a [String],
}

/// A stable object id for a development user name: a version-4-shaped UUID from the first
/// bytes of its SHA-256, so the same name always yields the same `oid`.
pub fn dev_object_id(name: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, name.as_bytes());
    let b = digest.as_ref();
    let hex = |range: std::ops::Range<usize>| b[range].iter().map(|x| format!("{x:02x}")).collect::<String>();
    format!("{}-{}-4{}-8{}-{}", hex(0..4), hex(4..6), &hex(6..8)[1..], &hex(8..10)[1..], hex(10..16))
}

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

    /// The tenant id every token carries (`tid`).
    pub fn tenant_id(&self) -> &str {
        &self.tenant_id
    }

    /// Signs `claims` (RS256, with this issuer's `kid`) into a compact JWT.
    pub fn sign(&self, claims: &Value) -> Result<String, String> {
        let header = json!({ "alg": "RS256", "typ": "JWT", "kid": self.kid });
        let signing_input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let mut signature_bytes = vec![0u8; self.key.public_modulus_len()];
        self.key
            .sign(&signature::RSA_PKCS1_SHA256, &SystemRandom::new(), signing_input.as_bytes(), &mut signature_bytes)
            .map_err(|_| "signing a development token failed")?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature_bytes)))
    }

    /// Signs a user's token (`idtyp` user) for `audience` with the delegated `scopes`, as a
    /// front end signed in as `user` would receive it: `oid` and `sub` derived from the user
    /// name, so the same user always gets the same ids. `lifetime_secs` of `None` uses the
    /// issuer's lifetime. Returns the token and its `exp`.
    pub fn issue_user(
        &self,
        user: &DevUser<'_>,
        audience: &str,
        scopes: &str,
        lifetime_secs: Option<u64>,
    ) -> Result<(Secret, u64), String> {
        let now = SystemClock.now();
        let expires_on = now + lifetime_secs.unwrap_or(self.lifetime_secs);
        let mut nonce = [0u8; 16];
        SystemRandom::new().fill(&mut nonce).map_err(|_| "no randomness for a token id")?;
        let mut claims = json!({
            "aud": audience,
            "iss": self.issuer,
            "sub": user.object_id,
            "oid": user.object_id,
            "tid": self.tenant_id,
            "upn": user.name,
            "preferred_username": user.name,
            "name": user.name,
            "azp": user.client_app,
            "appid": user.client_app,
            "scp": scopes,
            "idtyp": "user",
            "iat": now,
            "nbf": now,
            "exp": expires_on,
            "uti": URL_SAFE_NO_PAD.encode(nonce),
            "ver": "2.0",
        });
        if !user.roles.is_empty() {
            claims["roles"] = json!(user.roles);
        }
        Ok((Secret::new(self.sign(&claims)?), expires_on))
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
        Ok(AccessToken::with_lifetime(Secret::new(self.sign(&claims)?), now, expires_on))
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
