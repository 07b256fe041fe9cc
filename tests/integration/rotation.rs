//! Rotated credentials without a restart: secrets, certificates and assertions in volumes that
//! are updated exactly as the kubelet updates a mounted Secret (a new timestamped directory,
//! `..data` swapped by a rename, the old directory removed), against a fake authority that
//! accepts only the current secret or certificate, so presenting the old one fails.

use crate::support::certs::TestCertificate;
use crate::support::{
    FakeEntra, MANAGEMENT, ProjectedVolume, STORAGE, TestConfig, TestRelay, VAULT, credential, fake_entra, json, utf8,
};

const NEW_SECRET: &str = "rotated-secret-value-0002";

fn secret_file_config(entra: &FakeEntra, volume: &ProjectedVolume) -> TestConfig {
    TestConfig::client_secret(entra)
        .credentials([credential("client_secret").with("secret_file", utf8(&volume.path("client-secret")))])
}

async fn error_code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    (status, json(response).await["error_description"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_client_secret_is_used_by_the_next_exchange_without_a_restart() {
    let entra = FakeEntra::start().await;
    let mut volume = ProjectedVolume::new(&[("client-secret", format!("{}\n", fake_entra::CLIENT_SECRET).as_bytes())]);
    let relay = TestRelay::serve(&secret_file_config(&entra, &volume), &[]).await;
    assert_eq!(relay.imds(VAULT).await.status(), 200, "{}", relay.logs());
    assert_eq!(entra.seen()[0].form["client_secret"], fake_entra::CLIENT_SECRET);

    // The application's secret is rotated in Entra; the volume still holds the old one, which
    // the authority now refuses. Nothing new on disk, so nothing is retried.
    entra.replace_client_secret(NEW_SECRET);
    let (status, description) = error_code(relay.imds(STORAGE).await).await;
    assert_eq!(status, 400);
    assert!(description.contains("AADSTS7000215"), "{description}");
    assert_eq!(entra.requests(), 2, "an unchanged file is not presented twice");

    // The kubelet swaps the Secret in: the next exchange presents the new value, first time.
    volume.update(&[("client-secret", format!("{NEW_SECRET}\n").as_bytes())]);
    let response = relay.imds(MANAGEMENT).await;
    assert_eq!(response.status(), 200, "{}", relay.logs());
    let seen = entra.seen();
    assert_eq!(seen.len(), 3, "no failed attempt with the old secret came first");
    assert_eq!(seen[2].form["client_secret"], NEW_SECRET);

    let logs = relay.logs();
    assert!(logs.contains("client secret file changed on disk; using the new one"), "{logs}");
    assert!(!logs.contains(NEW_SECRET) && !logs.contains(fake_entra::CLIENT_SECRET), "no secret reaches the logs");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_refused_mid_rotation_is_read_again_and_retried_once() {
    let entra = FakeEntra::start().await;
    let mut volume = ProjectedVolume::new(&[("client-secret", fake_entra::CLIENT_SECRET.as_bytes())]);
    let relay = TestRelay::serve(&secret_file_config(&entra, &volume), &[]).await;

    // The exchange leaves with the old secret; while it is in flight the secret is rotated in
    // Entra and on disk, so the check before the exchange could not have seen it.
    entra.hold();
    let (response, ()) = tokio::join!(relay.imds(VAULT), async {
        entra.wait_for_requests(1).await;
        assert_eq!(entra.requests(), 1);
        entra.replace_client_secret(NEW_SECRET);
        volume.update(&[("client-secret", NEW_SECRET.as_bytes())]);
        entra.release();
    });
    assert_eq!(response.status(), 200, "{}", relay.logs());
    let seen = entra.seen();
    assert_eq!(seen.len(), 2, "one refusal, one retry");
    assert_eq!(seen[0].form["client_secret"], fake_entra::CLIENT_SECRET);
    assert_eq!(seen[1].form["client_secret"], NEW_SECRET);
    let logs = relay.logs();
    assert!(logs.contains("refused with AADSTS7000215 and changed on disk since; retrying once"), "{logs}");
    assert!(!logs.contains(NEW_SECRET), "no secret reaches the logs");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_new_secret_file_keeps_the_previous_secret() {
    let entra = FakeEntra::start().await;
    let mut volume = ProjectedVolume::new(&[("client-secret", fake_entra::CLIENT_SECRET.as_bytes())]);
    let relay = TestRelay::serve(&secret_file_config(&entra, &volume), &[]).await;
    assert_eq!(relay.imds(VAULT).await.status(), 200);

    // An empty value (a Secret created before its value was filled in): still the old one.
    volume.update(&[("client-secret", &b"\n"[..])]);
    assert_eq!(relay.imds(STORAGE).await.status(), 200, "{}", relay.logs());
    assert_eq!(entra.seen()[1].form["client_secret"], fake_entra::CLIENT_SECRET);
    let logs = relay.logs();
    assert!(logs.contains("client secret file changed on disk but cannot be used; keeping the one read before"));
    assert!(logs.contains("is empty"), "{logs}");

    // A good value after it is taken up.
    entra.replace_client_secret(NEW_SECRET);
    volume.update(&[("client-secret", NEW_SECRET.as_bytes())]);
    assert_eq!(relay.imds(MANAGEMENT).await.status(), 200, "{}", relay.logs());
    assert_eq!(entra.seen()[2].form["client_secret"], NEW_SECRET);
}

fn tls_files(certificate: &TestCertificate) -> [(&'static str, Vec<u8>); 2] {
    [("tls.crt", certificate.cert_pem.clone().into_bytes()), ("tls.key", certificate.key_pem.clone().into_bytes())]
}

fn borrowed<'a, const N: usize>(files: &'a [(&'static str, Vec<u8>); N]) -> Vec<(&'static str, &'a [u8])> {
    files.iter().map(|(key, content)| (*key, content.as_slice())).collect()
}

fn tls_config(entra: &FakeEntra, volume: &ProjectedVolume) -> TestConfig {
    TestConfig::client_secret(entra).credentials([credential("client_certificate")
        .with("certificate_file", utf8(&volume.path("tls.crt")))
        .with("private_key_file", utf8(&volume.path("tls.key")))])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_certificate_and_key_are_used_without_a_restart() {
    let entra = FakeEntra::start().await;
    let old = TestCertificate::generate("before-rotation");
    entra.register_certificate(&old.der);
    let mut volume = ProjectedVolume::new(&borrowed(&tls_files(&old)));
    let relay = TestRelay::serve(&tls_config(&entra, &volume), &[]).await;
    assert_eq!(relay.imds(VAULT).await.status(), 200, "{}", relay.logs());
    assert_eq!(entra.seen()[0].assertion_header.as_ref().unwrap()["x5t#S256"], old.x5t_s256());

    // Renewed in Entra, the old one removed: the old certificate is refused.
    let new = TestCertificate::generate("after-rotation");
    entra.unregister_certificates();
    entra.register_certificate(&new.der);
    let (status, description) = error_code(relay.imds(STORAGE).await).await;
    assert_eq!(status, 400);
    assert!(description.contains("AADSTS700027"), "{description}");

    // cert-manager's update of the Secret: certificate and key change together.
    volume.update(&borrowed(&tls_files(&new)));
    assert_eq!(relay.imds(MANAGEMENT).await.status(), 200, "{}", relay.logs());
    let seen = entra.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[2].assertion_header.as_ref().unwrap()["x5t#S256"], new.x5t_s256());
    let logs = relay.logs();
    assert!(logs.contains("certificate changed on disk; using the new one"), "{logs}");
    assert!(logs.contains(&new.thumbprint()), "the log names the new thumbprint: {logs}");
    assert!(!logs.contains("PRIVATE KEY"), "key material never reaches the logs");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pfx_and_its_password_refused_mid_rotation_are_read_again_and_retried_once() {
    let entra = FakeEntra::start().await;
    let old = TestCertificate::generate("pfx-before");
    let new = TestCertificate::generate("pfx-after");
    entra.register_certificate(&old.der);
    let old_pfx = old.pfx("first-password");
    let mut volume = ProjectedVolume::new(&[("app.pfx", &old_pfx[..]), ("password", &b"first-password\n"[..])]);
    let toml = TestConfig::client_secret(&entra).credentials([credential("client_certificate")
        .with("certificate_file", utf8(&volume.path("app.pfx")))
        .with("password_file", utf8(&volume.path("password")))]);
    let relay = TestRelay::serve(&toml, &[]).await;

    // A Key Vault style renewal lands while the exchange signed with the old one is in flight:
    // the authority refuses it (AADSTS700027), the files are read again and the retry signs
    // with the new certificate, opened with the new password.
    entra.hold();
    let (response, ()) = tokio::join!(relay.imds(VAULT), async {
        entra.wait_for_requests(1).await;
        assert_eq!(entra.requests(), 1);
        entra.unregister_certificates();
        entra.register_certificate(&new.der);
        let new_pfx = new.pfx("second-password");
        volume.update(&[("app.pfx", &new_pfx[..]), ("password", &b"second-password\n"[..])]);
        entra.release();
    });
    assert_eq!(response.status(), 200, "{}", relay.logs());
    let seen = entra.seen();
    assert_eq!(seen.len(), 2, "one refusal, one retry");
    assert_eq!(seen[0].assertion_header.as_ref().unwrap()["x5t#S256"], old.x5t_s256());
    assert_eq!(seen[1].assertion_header.as_ref().unwrap()["x5t#S256"], new.x5t_s256());
    let logs = relay.logs();
    assert!(logs.contains("refused with AADSTS700027 and changed on disk since; retrying once"), "{logs}");
    assert!(!logs.contains("second-password") && !logs.contains("first-password"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_new_certificate_keeps_the_previous_one() {
    let entra = FakeEntra::start().await;
    let old = TestCertificate::generate("keeps-working");
    entra.register_certificate(&old.der);
    let mut volume = ProjectedVolume::new(&borrowed(&tls_files(&old)));
    let relay = TestRelay::serve(&tls_config(&entra, &volume), &[]).await;
    assert_eq!(relay.imds(VAULT).await.status(), 200, "{}", relay.logs());

    // Half a certificate, and a key of another certificate: neither is usable.
    let other = TestCertificate::generate("other");
    let half = &old.cert_pem[..old.cert_pem.len() / 2];
    volume.update(&[("tls.crt", half.as_bytes()), ("tls.key", old.key_pem.as_bytes())]);
    assert_eq!(relay.imds(STORAGE).await.status(), 200, "{}", relay.logs());
    volume.update(&[("tls.crt", old.cert_pem.as_bytes()), ("tls.key", other.key_pem.as_bytes())]);
    assert_eq!(relay.imds(MANAGEMENT).await.status(), 200, "{}", relay.logs());
    for seen in entra.seen() {
        assert_eq!(seen.assertion_header.unwrap()["x5t#S256"], old.x5t_s256());
    }
    let logs = relay.logs();
    assert_eq!(logs.matches("certificate changed on disk but cannot be used; keeping the one read before").count(), 2);
    assert!(logs.contains("do not match"), "the second warning says why: {logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_client_assertion_file_is_presented_next() {
    let entra = FakeEntra::start().await;
    let first = crate::support::service_account_token("system:serviceaccount:ci:first");
    let second = crate::support::service_account_token("system:serviceaccount:ci:second");
    entra.accept_assertion(&first, 70021);
    let mut volume = ProjectedVolume::new(&[("token", first.as_bytes())]);
    let toml = TestConfig::client_secret(&entra)
        .credentials([credential("client_assertion").with("file", utf8(&volume.path("token")))]);
    let relay = TestRelay::serve(&toml, &[]).await;
    assert_eq!(relay.imds(VAULT).await.status(), 200, "{}", relay.logs());

    // Only the new assertion is accepted now; the old one is refused until the file turns.
    entra.accept_assertion(&second, 70021);
    assert_eq!(relay.imds(STORAGE).await.status(), 400);
    volume.update(&[("token", second.as_bytes())]);
    assert_eq!(relay.imds(MANAGEMENT).await.status(), 200, "{}", relay.logs());
    let seen = entra.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[2].form["client_assertion"], second);
    assert!(!relay.logs().contains(&second), "the assertion never reaches the logs");
}
