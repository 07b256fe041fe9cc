//! Certificate credentials end to end: PEM and PFX, PS256 and RS256, rotation on disk, and a
//! fake authority that verifies every assertion with the registered certificate's key.

use std::time::{Duration, SystemTime};

use base64::Engine;
use jsonwebtoken::{Algorithm, Header};

use crate::support::certs::TestCertificate;
use crate::support::{FakeEntra, STORAGE, TestConfig, TestRelay, VAULT, credential, fake_entra, json, unix_now, utf8};

fn touch_later(path: &std::path::Path, secs: u64) {
    let bumped = SystemTime::now() + Duration::from_secs(secs);
    std::fs::File::options().write(true).open(path).unwrap().set_modified(bumped).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pem_certificate_signs_ps256_assertions_the_authority_verifies() {
    let entra = FakeEntra::start().await;
    let certificate = TestCertificate::generate("tokenrelay-test-app");
    entra.register_certificate(&certificate.der);
    let dir = tempfile::tempdir().unwrap();
    let pem = certificate.write_pem(&dir.path().join("app.pem"));
    let toml = TestConfig::client_secret(&entra)
        .credentials([credential("client_certificate").with("certificate_file", utf8(&pem))]);
    let relay = TestRelay::serve(&toml, &[]).await;
    let response = relay.imds(VAULT).await;
    assert_eq!(response.status(), 200, "{}", relay.logs());
    let seen = &entra.seen()[0];
    let header = seen.assertion_header.as_ref().unwrap();
    assert_eq!(header["alg"], "PS256");
    assert_eq!(header["x5t#S256"], certificate.x5t_s256());
    assert!(header.get("x5t").is_none() && header.get("x5c").is_none(), "{header}");
    assert!(!seen.form.contains_key("client_secret"));
    assert!(!relay.logs().contains("PRIVATE KEY"), "key material never reaches the logs");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_password_protected_pfx_signs_rs256_with_x5t_and_sends_the_chain() {
    let entra = FakeEntra::start().await;
    let certificate = TestCertificate::generate("tokenrelay-pfx");
    entra.register_certificate(&certificate.der);
    let dir = tempfile::tempdir().unwrap();
    let pfx = dir.path().join("app.pfx");
    std::fs::write(&pfx, certificate.pfx("pfx-password-123")).unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "pfx-password-123\n").unwrap();
    let toml = TestConfig::client_secret(&entra).credentials([credential("client_certificate")
        .with("certificate_file", utf8(&pfx))
        .with("password_file", utf8(&password))
        .with("algorithm", "RS256")
        .with("send_certificate_chain", true)]);
    let relay = TestRelay::serve(&toml, &[]).await;
    assert_eq!(relay.imds(VAULT).await.status(), 200, "{}", relay.logs());
    let header = entra.seen()[0].assertion_header.clone().unwrap();
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["x5t"], certificate.x5t());
    assert!(header.get("x5t#S256").is_none());
    let x5c = header["x5c"].as_array().unwrap();
    assert_eq!(x5c[0].as_str().unwrap(), base64::engine::general_purpose::STANDARD.encode(&certificate.der));
    assert!(!relay.logs().contains("pfx-password-123"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_certificate_is_used_without_a_restart() {
    let entra = FakeEntra::start().await;
    let old = TestCertificate::generate("before-rotation");
    entra.register_certificate(&old.der);
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_file, &old.cert_pem).unwrap();
    std::fs::write(&key_file, &old.key_pem).unwrap();
    let toml = TestConfig::client_secret(&entra).credentials([credential("client_certificate")
        .with("certificate_file", utf8(&cert_file))
        .with("private_key_file", utf8(&key_file))]);
    let relay = TestRelay::serve(&toml, &[]).await;
    assert_eq!(relay.imds(VAULT).await.status(), 200, "{}", relay.logs());

    // The certificate is renewed on disk (as a Secret update does) and the old one revoked.
    let new = TestCertificate::generate("after-rotation");
    entra.unregister_certificates();
    entra.register_certificate(&new.der);
    std::fs::write(&cert_file, &new.cert_pem).unwrap();
    std::fs::write(&key_file, &new.key_pem).unwrap();
    touch_later(&cert_file, 5);
    touch_later(&key_file, 5);

    let response = relay.imds(STORAGE).await;
    assert_eq!(response.status(), 200, "{}", relay.logs());
    let header = entra.seen().last().unwrap().assertion_header.clone().unwrap();
    assert_eq!(header["x5t#S256"], new.x5t_s256());
    assert!(relay.logs().contains("certificate changed on disk"), "{}", relay.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unregistered_certificate_is_a_700027_naming_its_thumbprint() {
    let entra = FakeEntra::start().await;
    let certificate = TestCertificate::generate("not-uploaded");
    let dir = tempfile::tempdir().unwrap();
    let pem = certificate.write_pem(&dir.path().join("app.pem"));
    let toml = TestConfig::client_secret(&entra)
        .credentials([credential("client_certificate").with("certificate_file", utf8(&pem))]);
    let relay = TestRelay::serve(&toml, &[]).await;
    let response = relay.imds(VAULT).await;
    assert_eq!(response.status(), 400);
    let body = json(response).await;
    let description = body["error_description"].as_str().unwrap();
    for expected in ["AADSTS700027", &certificate.thumbprint(), "CN=not-uploaded", fake_entra::CLIENT_ID] {
        assert!(description.contains(expected), "missing {expected:?} in {description}");
    }
    assert!(relay.logs().contains(&certificate.thumbprint()), "the log carries the same text");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_certificate_file_is_explained() {
    let entra = FakeEntra::start().await;
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("app.pfx");
    std::fs::write(&garbage, b"\x30\x82\x01\x00 not really pkcs12").unwrap();
    let toml = TestConfig::client_secret(&entra)
        .credentials([credential("client_certificate").with("certificate_file", utf8(&garbage))]);
    let relay = TestRelay::serve(&toml, &[]).await;
    let response = relay.imds(VAULT).await;
    assert_eq!(response.status(), 400);
    let body = json(response).await;
    let description = body["error_description"].as_str().unwrap();
    assert!(description.contains("PKCS#12") && description.contains("app.pfx"), "{description}");
    assert_eq!(entra.requests(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_environment_credential_uses_a_certificate_from_azure_variables() {
    let entra = FakeEntra::start().await;
    let certificate = TestCertificate::generate("from-environment");
    entra.register_certificate(&certificate.der);
    let dir = tempfile::tempdir().unwrap();
    let pfx = dir.path().join("env.pfx");
    std::fs::write(&pfx, certificate.pfx("env-password")).unwrap();
    let output = crate::support::command()
        .args(["token", "--resource", "https://vault.azure.net"])
        .env("AZURE_CLIENT_ID", fake_entra::CLIENT_ID)
        .env("AZURE_TENANT_ID", fake_entra::TENANT)
        .env("AZURE_CLIENT_CERTIFICATE_PATH", &pfx)
        .env("AZURE_CLIENT_CERTIFICATE_PASSWORD", "env-password")
        .env("AZURE_CLIENT_SEND_CERTIFICATE_CHAIN", "true")
        .env("AZURE_AUTHORITY_HOST", entra.url())
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let header = entra.seen()[0].assertion_header.clone().unwrap();
    assert_eq!(header["x5t#S256"], certificate.x5t_s256());
    assert!(header.get("x5c").is_some(), "AZURE_CLIENT_SEND_CERTIFICATE_CHAIN adds x5c");
    assert!(String::from_utf8_lossy(&output.stderr).contains("environment will be tried first"));
}

/// Claims as tokenrelay sends them, for assertions crafted in the tests below.
fn claims(entra: &FakeEntra, nbf: u64, exp: u64) -> serde_json::Value {
    serde_json::json!({
        "aud": entra.token_endpoint(fake_entra::TENANT),
        "iss": fake_entra::CLIENT_ID,
        "sub": fake_entra::CLIENT_ID,
        "jti": "6f1c1d5e-0000-4000-8000-000000000001",
        "nbf": nbf,
        "exp": exp,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_fake_authority_rejects_expired_and_wrongly_signed_assertions() {
    let entra = FakeEntra::start().await;
    let registered = TestCertificate::generate("registered");
    let impostor = TestCertificate::generate("impostor");
    entra.register_certificate(&registered.der);

    let mut ps256 = Header::new(Algorithm::PS256);
    ps256.x5t_s256 = Some(registered.x5t_s256());
    let mut rs256 = Header::new(Algorithm::RS256);
    rs256.x5t = Some(registered.x5t());
    let sign = |header: &Header, claims: &serde_json::Value, key: &TestCertificate| {
        jsonwebtoken::encode(header, claims, &key.encoding_key()).unwrap()
    };
    let valid = claims(&entra, unix_now(), unix_now() + 600);

    // Correct assertions pass, in both algorithms: the fake is not simply refusing everything.
    assert_eq!(entra.post_assertion(&sign(&ps256, &valid, &registered)).await.0, 200);
    assert_eq!(entra.post_assertion(&sign(&rs256, &valid, &registered)).await.0, 200);

    // Signed by another key under the registered certificate's thumbprint.
    let (status, body) = entra.post_assertion(&sign(&ps256, &valid, &impostor)).await;
    assert_eq!((status, body["error_codes"][0].as_u64()), (401, Some(700027)), "{body}");
    let (status, body) = entra.post_assertion(&sign(&rs256, &valid, &impostor)).await;
    assert_eq!((status, body["error_codes"][0].as_u64()), (401, Some(700027)), "{body}");

    // Expired.
    let expired = claims(&entra, unix_now() - 1200, unix_now() - 600);
    let (_, body) = entra.post_assertion(&sign(&ps256, &expired, &registered)).await;
    assert_eq!(body["error_codes"][0].as_u64(), Some(700024), "{body}");

    // Addressed to another token endpoint, or issued for another application.
    let mut wrong_audience = valid.clone();
    wrong_audience["aud"] = "https://login.microsoftonline.com/other/oauth2/v2.0/token".into();
    let (_, body) = entra.post_assertion(&sign(&ps256, &wrong_audience, &registered)).await;
    assert_eq!(body["error_codes"][0].as_u64(), Some(700021), "{body}");
    let mut wrong_subject = valid.clone();
    wrong_subject["sub"] = "someone-else".into();
    let (_, body) = entra.post_assertion(&sign(&ps256, &wrong_subject, &registered)).await;
    assert_eq!(body["error_codes"][0].as_u64(), Some(700021), "{body}");

    // PS256 must carry x5t#S256, not only the SHA-1 thumbprint.
    let mut mismatched = Header::new(Algorithm::PS256);
    mismatched.x5t = Some(registered.x5t());
    let (_, body) = entra.post_assertion(&sign(&mismatched, &valid, &registered)).await;
    assert_eq!(body["error_codes"][0].as_u64(), Some(700027), "{body}");
}
