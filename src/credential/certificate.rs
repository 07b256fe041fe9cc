//! `client_certificate`: the client-credentials grant with a certificate assertion.
//!
//! The application proves itself with a JWT signed by the certificate's private key
//! (docs/protocols.md#certificate-assertions): header `alg` PS256 with `x5t#S256` (what
//! Entra's current documentation recommends) or RS256 with the SHA-1 `x5t` (what older SDKs
//! send), optionally `x5c` with the chain; claims `aud` = the token endpoint, `iss` = `sub` =
//! the client id, a fresh `jti`, `nbf`/`iat` = now and `exp` ten minutes later. A new
//! assertion is signed for every exchange.
//!
//! The certificate comes from PEM (certificate and key in one file, or two) or PKCS#12/PFX
//! with an optional password. The files (and `password_file`) are read again whenever they
//! change, so a rotated certificate (a Kubernetes Secret update, cert-manager or the Secrets
//! Store CSI driver renewing it) is used without a restart; a new set that does not parse
//! (half written, a key that does not match) keeps the previous certificate. A refusal with
//! AADSTS700027 reads them once more and, if they changed, retries once. RSA keys only;
//! signing uses aws-lc-rs, never OpenSSL.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{self, KeyPair, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::entra::{Application, ClientAuth};
use super::watched::{FileContent, LoadError, WatchedFiles, non_empty_text};
use super::{Credential, CredentialError, Grant, LinkStatus, OnBehalfOf};
use crate::aadsts;
use crate::clock::{Clock, SystemClock};
use crate::config::CredentialKind;
use crate::config::{AssertionAlgorithm, CertificateConfig};
use crate::secret::Secret;
use crate::token::AccessToken;

/// How long an assertion is valid; Entra's documentation suggests 5 to 10 minutes.
const ASSERTION_LIFETIME_SECS: u64 = 600;

/// An application authenticating with a certificate.
pub struct CertificateCredential {
    application: Application,
    files: CertificateConfig,
    material: WatchedFiles<Arc<Material>>,
}

impl FileContent for Arc<Material> {
    fn describe(&self) -> Option<String> {
        Some(self.summary())
    }
}

impl CertificateCredential {
    /// A credential for `application` that signs with the certificate in `files`.
    pub fn new(application: Application, files: CertificateConfig) -> Self {
        // The contents arrive in this order: certificate, then the key, then the password.
        let mut paths = vec![files.certificate_file.clone()];
        paths.extend(files.private_key_file.clone());
        paths.extend(files.password_file.clone());
        let has_key = files.private_key_file.is_some();
        let password_file = files.password_file.clone();
        let fixed_password = files.password.clone();
        let material = WatchedFiles::new("certificate", paths, None, move |contents| {
            let key = has_key.then(|| contents[1].as_slice());
            let from_file = match &password_file {
                Some(path) => Some(
                    non_empty_text(&contents[contents.len() - 1])
                        .map_err(|problem| format!("password file {} {problem}", path.display()))?,
                ),
                None => None,
            };
            let password = from_file.as_deref().or(fixed_password.as_ref().map(Secret::expose));
            Material::parse(&contents[0], key, password).map(Arc::new)
        });
        Self { application, files, material }
    }

    async fn exchange(&self, grant: Grant<'_>, material: &Material) -> Result<AccessToken, CredentialError> {
        let audience = self.application.token_endpoint();
        let assertion = material
            .assertion(
                self.files.algorithm,
                self.files.send_certificate_chain,
                audience.as_str(),
                self.application.client_id(),
                SystemClock.now(),
            )
            .map_err(|problem| self.rejected(problem))?;
        self.application.exchange(self.kind(), grant, ClientAuth::Assertion(&assertion)).await
    }

    async fn obtain(&self, grant: Grant<'_>) -> Result<AccessToken, CredentialError> {
        let exchange = |material: Arc<Material>| async move { self.exchange(grant, &material).await };
        let (result, material) =
            self.material.exchange(&[aadsts::INVALID_SIGNATURE], exchange).await.map_err(|e| self.unreadable(e))?;
        result.map_err(|error| {
            error
                .with_detail(aadsts::INVALID_SIGNATURE, || material.describe_for_support(self.files.algorithm))
                .with_detail(aadsts::ASSERTION_EXPIRED, || {
                    "the assertion was signed just now with a 10-minute lifetime; check this machine's clock".to_owned()
                })
        })
    }

    fn unreadable(&self, error: LoadError) -> CredentialError {
        match error {
            LoadError::Read { path, reason } => CredentialError::Unavailable {
                credential: self.kind(),
                reason: format!("cannot read certificate file {}: {reason}", path.display()),
            },
            LoadError::Invalid(problem) => {
                self.rejected(format!("{}: {problem}", self.files.certificate_file.display()))
            }
        }
    }

    fn rejected(&self, message: String) -> CredentialError {
        CredentialError::Rejected { credential: self.kind(), aadsts: None, message, correlation_id: None }
    }
}

#[async_trait]
impl Credential for CertificateCredential {
    fn kind(&self) -> CredentialKind {
        CredentialKind::ClientCertificate
    }

    async fn get_token(&self, resource: &str) -> Result<AccessToken, CredentialError> {
        self.obtain(Grant::App(resource)).await
    }

    async fn on_behalf_of(&self, request: OnBehalfOf<'_>) -> Result<AccessToken, CredentialError> {
        self.obtain(Grant::OnBehalfOf(request)).await
    }

    fn status(&self) -> LinkStatus {
        let read = |path: &Path| std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()));
        let outcome = read(&self.files.certificate_file).and_then(|certificate| {
            let key = self.files.private_key_file.as_deref().map(read).transpose()?;
            let password = self.files.password.as_ref().map(Secret::expose);
            Material::parse(&certificate, key.as_deref(), password)
                .map_err(|problem| format!("{}: {problem}", self.files.certificate_file.display()))
        });
        match outcome {
            Ok(material) => match material.expired_at(SystemClock.now()) {
                Some(when) => LinkStatus::NotUsable(format!("certificate {} expired on {when}", material.summary())),
                None => LinkStatus::Usable(format!("certificate {}", material.summary())),
            },
            Err(problem) => LinkStatus::NotUsable(problem),
        }
    }
}

/// A parsed certificate with its private key: everything needed to sign assertions.
pub struct Material {
    key: RsaKeyPair,
    /// DER certificates, the one matching the key first.
    chain: Vec<Vec<u8>>,
    sha1: Vec<u8>,
    sha256: Vec<u8>,
    subject: String,
    not_after: String,
    not_after_epoch: i64,
}

impl Material {
    /// Parses PEM (when the bytes hold a PEM header) or else PKCS#12. `key` is a separate PEM
    /// key file; `password` opens a PKCS#12 file. Errors say what is wrong, never a secret.
    pub fn parse(certificate: &[u8], key: Option<&[u8]>, password: Option<&str>) -> Result<Self, String> {
        let (certificates, keys) = if is_pem(certificate) {
            let certificates: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(certificate)
                .map(|c| c.map(|c| c.as_ref().to_vec()))
                .collect::<Result<_, _>>()
                .map_err(|e| format!("not a readable PEM file: {e}"))?;
            let key_pem = key.unwrap_or(certificate);
            if contains(key_pem, b"ENCRYPTED PRIVATE KEY") {
                return Err("the private key is encrypted; tokenrelay reads unencrypted PEM keys or a \
                            password-protected PKCS#12 (PFX) file"
                    .to_owned());
            }
            let keys = match PrivateKeyDer::from_pem_slice(key_pem) {
                Ok(key) => vec![key.clone_key()],
                Err(_) if key.is_some() => return Err("the private key file holds no PEM private key".to_owned()),
                Err(_) => {
                    return Err("no private key: put it in the same PEM file or set private_key_file".to_owned());
                }
            };
            (certificates, keys)
        } else {
            if key.is_some() {
                return Err("private_key_file is only for PEM certificates; a PKCS#12 file holds its key".to_owned());
            }
            let archive = p12_keystore::Pkcs12Archive::from_pkcs12(certificate, password.unwrap_or(""))
                .map_err(|e| format!("not a PEM file, and not a PKCS#12 file this password opens ({e})"))?;
            let certificates = archive.certs.iter().map(|bag| bag.cert.as_der().to_vec()).collect();
            let keys = archive.keys.iter().map(|bag| PrivateKeyDer::Pkcs8(bag.key.as_der().to_vec().into())).collect();
            (certificates, keys)
        };
        if certificates.is_empty() {
            return Err("holds no certificate".to_owned());
        }
        let Some(key) = keys.first() else {
            return Err("holds no private key".to_owned());
        };
        let key = match key {
            PrivateKeyDer::Pkcs8(der) => RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(der) => RsaKeyPair::from_der(der.secret_pkcs1_der()),
            _ => return Err("the private key is not an RSA key; Entra certificate credentials use RSA".to_owned()),
        }
        .map_err(|e| format!("the private key is not a usable RSA key ({e})"))?;

        // The certificate to name in the assertion is the one whose public key is ours.
        let public = key.public_key().as_ref().to_vec();
        let mut leaf = None;
        for (index, der) in certificates.iter().enumerate() {
            let (_, parsed) = x509_parser::parse_x509_certificate(der)
                .map_err(|e| format!("certificate {} is not valid X.509: {e}", index + 1))?;
            if parsed.public_key().subject_public_key.data.as_ref() == public.as_slice() {
                leaf = Some((
                    index,
                    parsed.subject().to_string(),
                    parsed.validity().not_after.to_string(),
                    parsed.validity().not_after.timestamp(),
                ));
                break;
            }
        }
        let Some((index, subject, not_after, not_after_epoch)) = leaf else {
            return Err(format!(
                "none of its {} certificate(s) belongs to the private key (the key and certificate do not match)",
                certificates.len()
            ));
        };
        let mut chain = certificates;
        let leaf_der = chain.remove(index);
        chain.insert(0, leaf_der);
        let sha1 = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, &chain[0]).as_ref().to_vec();
        let sha256 = digest::digest(&digest::SHA256, &chain[0]).as_ref().to_vec();
        Ok(Self { key, chain, sha1, sha256, subject, not_after, not_after_epoch })
    }

    /// Signs a client assertion for `client_id` addressed to the token endpoint `audience`.
    pub fn assertion(
        &self,
        algorithm: AssertionAlgorithm,
        send_chain: bool,
        audience: &str,
        client_id: &str,
        now: u64,
    ) -> Result<Secret, String> {
        let mut header = serde_json::json!({ "typ": "JWT" });
        let encoding: &'static dyn signature::RsaEncoding = match algorithm {
            AssertionAlgorithm::Ps256 => {
                header["alg"] = "PS256".into();
                header["x5t#S256"] = URL_SAFE_NO_PAD.encode(&self.sha256).into();
                &signature::RSA_PSS_SHA256
            }
            AssertionAlgorithm::Rs256 => {
                header["alg"] = "RS256".into();
                header["x5t"] = URL_SAFE_NO_PAD.encode(&self.sha1).into();
                &signature::RSA_PKCS1_SHA256
            }
        };
        if send_chain {
            // RFC 7515 4.1.6: standard base64 (not base64url) DER, the key's certificate first.
            header["x5c"] = self.chain.iter().map(|der| STANDARD.encode(der)).collect::<Vec<_>>().into();
        }
        let claims = serde_json::json!({
            "aud": audience,
            "iss": client_id,
            "sub": client_id,
            "jti": random_uuid()?,
            "nbf": now,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECS,
        });
        let signing_input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let mut signature = vec![0; self.key.public_modulus_len()];
        self.key
            .sign(encoding, &SystemRandom::new(), signing_input.as_bytes(), &mut signature)
            .map_err(|_| "signing the client assertion failed".to_owned())?;
        Ok(Secret::new(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))))
    }

    /// The SHA-1 thumbprint in upper-case hex, as the Azure portal shows it.
    pub fn sha1_hex(&self) -> String {
        hex(&self.sha1)
    }

    /// The SHA-256 thumbprint in upper-case hex.
    pub fn sha256_hex(&self) -> String {
        hex(&self.sha256)
    }

    /// `"CN=app" (thumbprint SHA-1 …, valid until …)` for logs and `check`.
    pub fn summary(&self) -> String {
        format!("{:?} (thumbprint SHA-1 {}, valid until {})", self.subject, self.sha1_hex(), self.not_after)
    }

    /// When the certificate expired, if it has by `now`.
    pub fn expired_at(&self, now: u64) -> Option<&str> {
        (i64::try_from(now).unwrap_or(i64::MAX) > self.not_after_epoch).then_some(self.not_after.as_str())
    }

    /// What an operator compares with the certificates registered on the application.
    fn describe_for_support(&self, algorithm: AssertionAlgorithm) -> String {
        let header = match algorithm {
            AssertionAlgorithm::Ps256 => "x5t#S256",
            AssertionAlgorithm::Rs256 => "x5t",
        };
        let mut text = format!(
            "the assertion was signed with certificate {:?}, thumbprint SHA-1 {} (SHA-256 {}, sent as {header}); \
             compare it with the certificates uploaded to the application",
            self.subject,
            self.sha1_hex(),
            self.sha256_hex()
        );
        if let Some(when) = self.expired_at(SystemClock.now()) {
            text.push_str(&format!("; this certificate expired on {when}"));
        }
        text
    }
}

fn is_pem(bytes: &[u8]) -> bool {
    contains(bytes, b"-----BEGIN ")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// A random (version 4) UUID for `jti`.
fn random_uuid() -> Result<String, String> {
    let mut bytes = [0u8; 16];
    SystemRandom::new().fill(&mut bytes).map_err(|_| "no randomness for the assertion id".to_owned())?;
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let h: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed RSA certificate and its PKCS#8 key, generated for the test.
    fn generate(name: &str) -> (String, String, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let certificate = params.self_signed(&key).unwrap();
        (certificate.pem(), key.serialize_pem(), key)
    }

    fn decode(part: &str) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn signs_ps256_with_the_sha256_thumbprint_and_the_documented_claims() {
        let (cert, key, key_pair) = generate("app.example");
        let material = Material::parse(format!("{cert}{key}").as_bytes(), None, None).unwrap();
        let jwt = material
            .assertion(AssertionAlgorithm::Ps256, false, "https://login.example/t/oauth2/v2.0/token", "cid", 1000)
            .unwrap();
        let parts: Vec<&str> = jwt.expose().split('.').collect();
        let header = decode(parts[0]);
        assert_eq!(header["alg"], "PS256");
        assert_eq!(header["x5t#S256"], URL_SAFE_NO_PAD.encode(&material.sha256));
        assert!(header.get("x5t").is_none() && header.get("x5c").is_none());
        let claims = decode(parts[1]);
        assert_eq!(claims["aud"], "https://login.example/t/oauth2/v2.0/token");
        assert_eq!((claims["iss"].as_str(), claims["sub"].as_str()), (Some("cid"), Some("cid")));
        assert_eq!((claims["nbf"].as_u64(), claims["exp"].as_u64()), (Some(1000), Some(1600)));
        assert_eq!(claims["jti"].as_str().unwrap().len(), 36);

        // The signature verifies with the certificate's public key.
        let public = signature::UnparsedPublicKey::new(&signature::RSA_PSS_2048_8192_SHA256, key_pair.public_key_raw());
        let signed = format!("{}.{}", parts[0], parts[1]);
        public.verify(signed.as_bytes(), &URL_SAFE_NO_PAD.decode(parts[2]).unwrap()).unwrap();
    }

    #[test]
    fn signs_rs256_with_the_sha1_thumbprint_and_sends_the_chain_on_request() {
        let (cert, key, key_pair) = generate("app.example");
        let (other_cert, _, _) = generate("ca.example");
        // Key first, an unrelated certificate before the right one: order does not matter.
        let pem = format!("{key}{other_cert}{cert}");
        let material = Material::parse(pem.as_bytes(), None, None).unwrap();
        let jwt = material.assertion(AssertionAlgorithm::Rs256, true, "aud", "cid", 1000).unwrap();
        let parts: Vec<&str> = jwt.expose().split('.').collect();
        let header = decode(parts[0]);
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["x5t"], URL_SAFE_NO_PAD.encode(&material.sha1));
        let x5c = header["x5c"].as_array().unwrap();
        assert_eq!(x5c.len(), 2);
        let leaf = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        assert_eq!(x5c[0].as_str().unwrap(), STANDARD.encode(leaf.as_ref()), "the key's certificate comes first");
        let public =
            signature::UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, key_pair.public_key_raw());
        let signed = format!("{}.{}", parts[0], parts[1]);
        public.verify(signed.as_bytes(), &URL_SAFE_NO_PAD.decode(parts[2]).unwrap()).unwrap();
    }

    #[test]
    fn reads_a_key_from_a_second_file_and_pkcs12_with_a_password() {
        let (cert, key, _) = generate("two-files");
        let from_two = Material::parse(cert.as_bytes(), Some(key.as_bytes()), None).unwrap();
        assert!(from_two.summary().contains("two-files"), "{}", from_two.summary());

        let key_der = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let cert_der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        let chain = p12_keystore::PrivateKeyChain::new(
            vec![1u8; 20],
            p12_keystore::PrivateKey::from_der(key_der.secret_der()).unwrap(),
            [p12_keystore::Certificate::from_der(cert_der.as_ref()).unwrap()],
        );
        let mut store = p12_keystore::KeyStore::new();
        store.add_entry("app", p12_keystore::KeyStoreEntry::PrivateKeyChain(chain));
        let pfx = store.writer("pfx-password").write().unwrap();
        let from_pfx = Material::parse(&pfx, None, Some("pfx-password")).unwrap();
        assert_eq!(from_pfx.sha1_hex(), from_two.sha1_hex());

        let wrong = Material::parse(&pfx, None, Some("nope")).err().unwrap();
        assert!(wrong.contains("PKCS#12"), "{wrong}");
        assert!(!wrong.contains("pfx-password"));
    }

    #[test]
    fn explains_mismatched_missing_and_encrypted_keys() {
        let (cert, _, _) = generate("a");
        let (_, other_key, _) = generate("b");
        let mismatch = Material::parse(cert.as_bytes(), Some(other_key.as_bytes()), None).err().unwrap();
        assert!(mismatch.contains("do not match"), "{mismatch}");
        let missing = Material::parse(cert.as_bytes(), None, None).err().unwrap();
        assert!(missing.contains("private_key_file"), "{missing}");
        let encrypted = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let encrypted = Material::parse(cert.as_bytes(), Some(encrypted.as_bytes()), None).err().unwrap();
        assert!(encrypted.contains("encrypted"), "{encrypted}");
        let garbage = Material::parse(b"\x30\x03\x02\x01\x00", None, None).err().unwrap();
        assert!(garbage.contains("PKCS#12"), "{garbage}");
    }

    #[test]
    fn a_uuid_has_the_version_4_shape() {
        let id = random_uuid().unwrap();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_ne!(id, random_uuid().unwrap());
    }
}
