//! Test certificates, generated at run time with rcgen: no key material in the repository.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A self-signed RSA certificate with its private key.
pub struct TestCertificate {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl TestCertificate {
    /// A fresh 2048-bit RSA certificate for `name`, valid from 2020 to 2100.
    pub fn generate(name: &str) -> Self {
        Self::generate_valid(name, 2020, 2100)
    }

    /// A certificate valid from January 1st of `from` to January 1st of `until`.
    pub fn generate_valid(name: &str, from: i32, until: i32) -> Self {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.not_before = rcgen::date_time_ymd(from, 1, 1);
        params.not_after = rcgen::date_time_ymd(until, 1, 1);
        let certificate = params.self_signed(&key).unwrap();
        Self { cert_pem: certificate.pem(), key_pem: key.serialize_pem(), der: certificate.der().to_vec() }
    }

    /// Base64url SHA-256 of the DER: the `x5t#S256` header value.
    pub fn x5t_s256(&self) -> String {
        URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &self.der))
    }

    /// Base64url SHA-1 of the DER: the `x5t` header value.
    pub fn x5t(&self) -> String {
        URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &self.der))
    }

    /// The SHA-1 thumbprint in upper-case hex, as the Azure portal shows it.
    pub fn thumbprint(&self) -> String {
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &self.der)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect()
    }

    /// Writes certificate and key into one PEM file.
    pub fn write_pem(&self, path: &Path) -> PathBuf {
        std::fs::write(path, format!("{}{}", self.cert_pem, self.key_pem)).unwrap();
        path.to_owned()
    }

    /// A PKCS#12 (PFX) file with the key and certificate, protected by `password`.
    pub fn pfx(&self, password: &str) -> Vec<u8> {
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap();
        let cert = CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).unwrap();
        let chain = p12_keystore::PrivateKeyChain::new(
            b"tokenrelay-test".to_vec(),
            p12_keystore::PrivateKey::from_der(key.secret_der()).unwrap(),
            [p12_keystore::Certificate::from_der(cert.as_ref()).unwrap()],
        );
        let mut store = p12_keystore::KeyStore::new();
        store.add_entry("tokenrelay-test", p12_keystore::KeyStoreEntry::PrivateKeyChain(chain));
        store.writer(password).write().unwrap()
    }

    /// An `EncodingKey` for crafting assertions in tests (the fake verifies them).
    pub fn encoding_key(&self) -> jsonwebtoken::EncodingKey {
        jsonwebtoken::EncodingKey::from_rsa_pem(self.key_pem.as_bytes()).unwrap()
    }
}

/// A test certificate authority and a server certificate it issued for `127.0.0.1`, for fakes
/// served over TLS to clients that insist on `https` (MSAL refuses an `http://` authority).
/// The client trusts [`LoopbackTls::ca_pem`] only; nothing is added to any system store.
pub struct LoopbackTls {
    /// The authority's certificate, for the client's trust store (`REQUESTS_CA_BUNDLE`).
    pub ca_pem: String,
    /// The server's certificate, issued by the authority: an IP SAN `127.0.0.1`, server auth.
    pub server_cert: CertificateDer<'static>,
    /// The server certificate's key (PKCS#8).
    pub server_key: PrivateKeyDer<'static>,
}

impl LoopbackTls {
    /// A fresh authority (ECDSA P-256, valid 2020 to 2100) and a server certificate it signed.
    pub fn generate() -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "tokenrelay test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        ca.not_before = rcgen::date_time_ymd(2020, 1, 1);
        ca.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();

        let key = KeyPair::generate().unwrap();
        let mut server = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        server.distinguished_name.push(DnType::CommonName, "127.0.0.1");
        server.use_authority_key_identifier_extension = true;
        server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        server.not_before = rcgen::date_time_ymd(2020, 1, 1);
        server.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let server_cert = server.signed_by(&key, &ca).unwrap();
        Self {
            ca_pem: ca.pem(),
            server_cert: server_cert.der().clone(),
            server_key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        }
    }

    /// A rustls server configuration presenting the server certificate (HTTP/1.1 only, as the
    /// fakes speak it).
    pub fn server_config(&self) -> std::sync::Arc<tokio_rustls::rustls::ServerConfig> {
        use tokio_rustls::rustls;
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![self.server_cert.clone()], self.server_key.clone_key())
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        std::sync::Arc::new(config)
    }
}
