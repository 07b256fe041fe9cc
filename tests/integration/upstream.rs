//! Talking to the authority: credentials, retries, throttling and errors users can act on.

use std::time::{Duration, SystemTime};

use crate::support::{
    FakeEntra, ProjectedVolume, STORAGE, Scripted, TestConfig, TestRelay, VAULT, fake_entra, json,
    service_account_token, write,
};

#[tokio::test(flavor = "multi_thread")]
async fn workload_identity_presents_the_projected_token_and_follows_rotation() {
    let entra = FakeEntra::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("azure-identity-token");
    let first = service_account_token("system:serviceaccount:default:app");
    write(&token_file, &first);
    entra.accept_assertion(&first, 70021);
    let relay = TestRelay::serve(&TestConfig::workload_identity(&entra, &token_file), &[]).await;
    assert_eq!(relay.imds(VAULT).await.status(), 200);
    let seen = &entra.seen()[0];
    assert_eq!(seen.form["client_assertion"], first);
    assert_eq!(seen.form["client_assertion_type"], "urn:ietf:params:oauth:client-assertion-type:jwt-bearer");
    assert!(!seen.form.contains_key("client_secret"));

    // The kubelet rotates the file; the next exchange presents the new token.
    let second = service_account_token("system:serviceaccount:default:app-rotated");
    entra.accept_assertion(&second, 70021);
    write(&token_file, &second);
    let bumped = SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options().write(true).open(&token_file).unwrap().set_modified(bumped).unwrap();
    assert_eq!(relay.imds(STORAGE).await.status(), 200);
    assert_eq!(entra.seen().last().unwrap().form["client_assertion"], second);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_assertion_is_re_read_and_retried_once() {
    let entra = FakeEntra::start().await;
    let old = service_account_token("old");
    let mut volume = ProjectedVolume::new(&[("azure-identity-token", old.as_bytes())]);
    entra.accept_assertion(&old, 700024);
    let relay =
        TestRelay::serve(&TestConfig::workload_identity(&entra, &volume.path("azure-identity-token")), &[]).await;
    assert_eq!(relay.imds(VAULT).await.status(), 200);

    // The kubelet rotates the token while an exchange with the old one is in flight, so the
    // check before the exchange could not see it, and by then the authority finds the old one
    // expired: only the AADSTS700024 answer can make tokenrelay read the file again.
    let new = service_account_token("new");
    entra.hold();
    let (response, ()) = tokio::join!(relay.imds(STORAGE), async {
        entra.wait_for_requests(2).await;
        assert_eq!(entra.requests(), 2);
        entra.accept_assertion(&new, 700024);
        volume.update(&[("azure-identity-token", new.as_bytes())]);
        entra.release();
    });
    assert_eq!(response.status(), 200);
    let seen = entra.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[1].form["client_assertion"], old);
    assert_eq!(seen[2].form["client_assertion"], new);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_federation_mismatch_names_issuer_subject_and_audience() {
    let entra = FakeEntra::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    write(&token_file, &service_account_token("system:serviceaccount:wrong-ns:app"));
    entra.accept_assertion("something-else", 70021);
    let relay = TestRelay::serve(&TestConfig::workload_identity(&entra, &token_file), &[]).await;
    let response = relay.imds(VAULT).await;
    assert_eq!(response.status(), 400);
    let body = json(response).await;
    let description = body["error_description"].as_str().unwrap();
    for expected in [
        "AADSTS70021",
        "subject \"system:serviceaccount:wrong-ns:app\"",
        "issuer \"https://oidc.prod-aks.azure.com/tenant/issuer/\"",
        "audience \"api://AzureADTokenExchange\"",
    ] {
        assert!(description.contains(expected), "missing {expected:?} in {description}");
    }
    assert!(!description.contains("c2lnbmF0dXJl"), "the token itself never appears");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_token_file_is_a_clear_503() {
    let entra = FakeEntra::start().await;
    let relay =
        TestRelay::serve(&TestConfig::workload_identity(&entra, std::path::Path::new("/nonexistent/token")), &[]).await;
    let response = relay.imds(VAULT).await;
    assert_eq!(response.status(), 503);
    let body = json(response).await;
    assert!(body["error_description"].as_str().unwrap().contains("/nonexistent/token"), "{body}");
    assert_eq!(entra.requests(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_secret_is_a_400_that_says_what_to_check_and_is_not_hammered() {
    let entra = FakeEntra::start().await;
    let toml = TestConfig::client_secret(&entra).replace("identities.0.credentials.0.secret", "wrong-secret-value");
    let relay = TestRelay::serve(&toml, &[]).await;
    for _ in 0..5 {
        let response = relay.imds(VAULT).await;
        assert_eq!(response.status(), 400);
        let body = json(response).await;
        let description = body["error_description"].as_str().unwrap();
        assert!(description.contains("AADSTS7000215") && description.contains(fake_entra::CLIENT_ID), "{description}");
        assert!(description.contains("correlation id 11111111-1111-1111-1111-111111111111"), "{description}");
        assert!(!body.to_string().contains("wrong-secret-value"), "the secret never reaches an error body");
    }
    assert_eq!(entra.requests(), 1, "a permanent refusal is remembered briefly");
    let logs = relay.logs();
    assert!(!logs.contains("wrong-secret-value"), "the secret never reaches the logs");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_tenant_or_application_is_explained() {
    let entra = FakeEntra::start().await;
    let toml = TestConfig::client_secret(&entra).replace("identities.0.tenant_id", "contoso.onmicrosoft.com");
    let relay = TestRelay::serve(&toml, &[]).await;
    let body = json(relay.imds(VAULT).await).await;
    let description = body["error_description"].as_str().unwrap();
    assert!(description.contains("AADSTS90002") && description.contains("contoso.onmicrosoft.com"), "{description}");

    let toml =
        TestConfig::client_secret(&entra).replace("identities.0.client_id", "00000000-0000-0000-0000-00000000beef");
    let relay = TestRelay::serve(&toml, &[]).await;
    let body = json(relay.imds(VAULT).await).await;
    let description = body["error_description"].as_str().unwrap();
    assert!(
        description.contains("AADSTS700016") && description.contains("00000000-0000-0000-0000-00000000beef"),
        "{description}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn transient_failures_and_short_throttling_are_retried() {
    let entra = FakeEntra::start().await;
    entra.script([Scripted::ServerError(500), Scripted::Throttle { retry_after_secs: 0 }]);
    let relay = TestRelay::serve(&TestConfig::client_secret(&entra), &[]).await;
    assert_eq!(relay.imds(VAULT).await.status(), 200);
    assert_eq!(entra.requests(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn long_throttling_is_passed_on_with_a_short_retry_after() {
    let entra = FakeEntra::start().await;
    entra.script([Scripted::Throttle { retry_after_secs: 120 }]);
    let relay = TestRelay::serve(&TestConfig::client_secret(&entra), &[]).await;
    let response = relay.imds(VAULT).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "5", "never more than 5 s: MSAL replays it");
    assert_eq!(entra.requests(), 1, "a Retry-After beyond the limit ends the retries at once");
}

#[tokio::test(flavor = "multi_thread")]
async fn scripted_permanent_errors_are_not_retried() {
    let entra = FakeEntra::start().await;
    entra.script([Scripted::Error { status: 400, aadsts: 7000222, error: "invalid_client" }]);
    let relay = TestRelay::serve(&TestConfig::client_secret(&entra), &[]).await;
    let body = json(relay.imds(VAULT).await).await;
    assert!(body["error_description"].as_str().unwrap().contains("expired"), "{body}");
    assert_eq!(entra.requests(), 1);
}

/// `text` as a form field value travels in a request body.
fn form_encoded(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_authority_that_echoes_the_request_never_gets_the_secret_relayed() {
    // A mistyped or hostile authority_host may quote the request body in its error. The
    // secret is chosen so that form encoding changes it: the echo holds `s3cr%7Et%2Bvalue...`.
    let secret = "s3cr~t+value/with=chars";
    assert_ne!(form_encoded(secret), secret);
    let entra = FakeEntra::start().await;
    entra.script([Scripted::EchoBody]);
    let toml = TestConfig::client_secret(&entra).replace("identities.0.credentials.0.secret", secret);
    let relay = TestRelay::serve(&toml, &[]).await;
    let response = relay.imds(VAULT).await;
    assert_eq!(response.status(), 400);
    let body = json(response).await.to_string();
    assert!(body.contains("client_secret=<redacted>") && body.contains("AADSTS900144"), "{body}");
    let logs = relay.logs();
    for leaked in [secret.to_owned(), form_encoded(secret)] {
        assert!(!body.contains(&leaked), "{leaked} in the error body: {body}");
        assert!(!logs.contains(&leaked), "{leaked} in the logs");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_echoed_assertion_is_scrubbed_and_relayed_text_is_bounded() {
    let entra = FakeEntra::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    // A long subject makes the assertion, and so the echoed body, far longer than the bound.
    let assertion = service_account_token(&"system:serviceaccount:default:app".repeat(40));
    write(&token_file, &assertion);
    entra.script([Scripted::EchoBody]);
    let relay = TestRelay::serve(&TestConfig::workload_identity(&entra, &token_file), &[]).await;
    let response = relay.imds(VAULT).await;
    assert_eq!(response.status(), 400);
    let body = json(response).await;
    let description = body["error_description"].as_str().unwrap();
    assert!(description.contains("client_assertion=<redacted>"), "{description}");
    let claims = assertion.split('.').nth(1).unwrap();
    assert!(!description.contains(claims) && !relay.logs().contains(claims), "never the assertion");

    // However much the authority says, 512 characters of it are relayed; the rest of the
    // description is tokenrelay's own text.
    entra.script([Scripted::Verbose(20_000)]);
    let response = relay.imds(STORAGE).await;
    assert_eq!(response.status(), 400);
    let body = json(response).await;
    let description = body["error_description"].as_str().unwrap();
    assert!(description.contains("AADSTS900144: xxxx") && description.contains('…'), "{description}");
    assert!(description.chars().count() < 512 + 200, "{} characters: {description}", description.chars().count());
}

/// The authority is reached over TLS and its certificate is verified against the system's
/// trust roots (here `SSL_CERT_FILE`, the way an operator adds a proxy's CA): a certificate
/// from the trusted CA gets a token; the same authority with only an unrelated CA trusted
/// gets none, the caller a 5xx and the log the reason. The roots are read once per process,
/// on a background thread at start (src/credential/tls.rs); this proves they are the
/// system's and that verification happens.
#[tokio::test(flavor = "multi_thread")]
async fn the_authoritys_certificate_is_verified_against_the_systems_trust_roots() {
    use crate::support::certs::LoopbackTls;
    let tls = LoopbackTls::generate();
    let entra = FakeEntra::start_tls(&tls).await;
    let dir = tempfile::tempdir().unwrap();
    let (trusted, other) = (dir.path().join("trusted.pem"), dir.path().join("other.pem"));
    write(&trusted, &tls.ca_pem);
    write(&other, &LoopbackTls::generate().ca_pem);
    // No directory of roots, so the bundle named is all the process trusts.
    let no_dir = dir.path().join("no-certs");
    std::fs::create_dir(&no_dir).unwrap();
    let no_dir = no_dir.to_str().unwrap();

    let config = TestConfig::client_secret(&entra);
    let env = [("SSL_CERT_FILE", trusted.to_str().unwrap()), ("SSL_CERT_DIR", no_dir)];
    let relay = TestRelay::serve_with_env(&config, &[], &env).await;
    let response = relay.imds(VAULT).await;
    assert_eq!(response.status(), 200);
    assert!(json(response).await["access_token"].as_str().unwrap().starts_with("fake-"));
    assert_eq!(entra.issued(), 1);
    drop(relay);

    let env = [("SSL_CERT_FILE", other.to_str().unwrap()), ("SSL_CERT_DIR", no_dir)];
    let relay = TestRelay::serve_with_env(&config, &[], &env).await;
    let response = relay.imds(STORAGE).await;
    assert!(response.status().is_server_error(), "{}", response.status());
    assert_eq!(entra.issued(), 1, "no token without a verified certificate");
    let logs = relay.logs();
    assert!(logs.contains("certificate") || logs.contains("UnknownIssuer"), "{logs}");
}
