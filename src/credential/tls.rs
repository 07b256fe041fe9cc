//! The TLS configuration every upstream HTTP client shares, with the system's trust roots
//! loaded once per process and off the start-up path.
//!
//! reqwest's rustls backend, left to itself, builds a platform verifier for each client, and on
//! Linux that reads and parses every CA certificate the system has (the bundle and the
//! `/etc/ssl/certs` directory): a few milliseconds per client, several clients at start-up,
//! all before the server can bind. Here the roots are read the first time a handshake needs
//! them, and [`preload`] starts reading them on a thread of their own as the process starts,
//! so in a pod they are ready by the time the first connection to the authority is open.
//!
//! Invariant: the roots and the verification are exactly rustls-platform-verifier's, the same
//! as reqwest's default; only *when* they are loaded changes.

use std::sync::{Arc, LazyLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// The crypto provider reqwest uses with its `rustls` feature.
static PROVIDER: LazyLock<Arc<CryptoProvider>> =
    LazyLock::new(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));

/// The platform verifier, built (roots read) at first use. An error is kept, not retried:
/// the system's certificates do not appear while the process runs.
static VERIFIER: LazyLock<Result<rustls_platform_verifier::Verifier, rustls::Error>> = LazyLock::new(|| {
    rustls_platform_verifier::Verifier::new(PROVIDER.clone()).map_err(|error| {
        rustls::Error::General(format!(
            "no trusted CA certificates could be loaded from this system ({error}); install the \
                 ca-certificates package or set SSL_CERT_FILE"
        ))
    })
});

/// The client configuration, cheap to build (no roots are read): TLS 1.2 and 1.3, ALPN for
/// HTTP/2 and HTTP/1.1, as reqwest offers them itself.
static CONFIG: LazyLock<Result<rustls::ClientConfig, String>> = LazyLock::new(|| {
    let mut config = rustls::ClientConfig::builder_with_provider(PROVIDER.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("initialising TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SharedVerifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
});

/// The configuration for `reqwest::ClientBuilder::tls_backend_preconfigured`. Fails only if
/// the TLS stack cannot initialise.
pub(crate) fn client_config() -> Result<rustls::ClientConfig, String> {
    CONFIG.clone()
}

/// Starts reading the system's trust roots on a background thread, so the first handshake
/// does not wait for them. Idempotent; a failure shows at that handshake, not here.
pub fn preload() {
    // A failure to start a thread only means the first handshake reads the roots itself.
    let _ = std::thread::Builder::new().name("tls-roots".to_owned()).spawn(|| {
        LazyLock::force(&VERIFIER);
    });
}

/// Delegates to the one platform verifier, building it on first use.
#[derive(Debug)]
struct SharedVerifier;

impl ServerCertVerifier for SharedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &*VERIFIER {
            Ok(verifier) => verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now),
            Err(error) => Err(error.clone()),
        }
    }

    // The handshake signatures are checked with the provider's algorithms, as the platform
    // verifier checks them; they need no roots, so they never wait for the roots to load.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &PROVIDER.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &PROVIDER.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        PROVIDER.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_offers_http2_then_http11() {
        let config = client_config().unwrap();
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    }

    #[test]
    fn the_verifier_refuses_a_certificate_no_system_root_issued() {
        // A self-signed certificate: whatever roots this machine has, none issued it. With no
        // roots at all, the refusal is the clear "no trusted CA certificates" error instead.
        let key = rcgen::KeyPair::generate().unwrap();
        let cert =
            rcgen::CertificateParams::new(vec!["login.example.test".to_owned()]).unwrap().self_signed(&key).unwrap();
        let name = ServerName::try_from("login.example.test").unwrap();
        let refused = SharedVerifier.verify_server_cert(cert.der(), &[], &name, &[], UnixTime::now());
        assert!(refused.is_err());
    }
}
