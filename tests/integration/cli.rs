//! The command line: `token`, `check`, start-up failures and shutdown.

use crate::support::{FakeEntra, TestConfig, TestRelay, VAULT, command, fake_entra};

async fn run(args: &[&str]) -> std::process::Output {
    command().args(args).output().await.expect("tokenrelay runs")
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_exits_cleanly() {
    let entra = FakeEntra::start().await;
    let mut relay = TestRelay::serve(&TestConfig::client_secret(&entra), &[]).await;
    assert_eq!(relay.imds(VAULT).await.status(), 200);
    let status = relay.terminate().await;
    assert_eq!(status.code(), Some(0), "logs:\n{}", relay.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn token_prints_the_wire_body_through_the_same_code() {
    let entra = FakeEntra::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, TestConfig::client_secret(&entra).to_string()).unwrap();
    let output =
        run(&["token", "--config", config.to_str().unwrap(), "--resource", "https://vault.azure.net/.default"]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let body: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(body["resource"], "https://vault.azure.net");
    assert_eq!(body["access_token"], "fake-token-1-for-https://vault.azure.net");
    assert!(body["expires_on"].is_string());

    let unknown = run(&["token", "--config", config.to_str().unwrap(), "--resource", "r", "--client-id", "nope"]).await;
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("client_id \"nope\""));
}

#[tokio::test(flavor = "multi_thread")]
async fn token_works_in_dev_mode_without_configuration() {
    let output = run(&["token", "--dev", "--resource", "https://vault.azure.net"]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let body: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(body["client_id"], "d0000000-0000-0000-0000-000000000001");
    assert_eq!(body["access_token"].as_str().unwrap().split('.').count(), 3, "a JWT");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_prints_the_effective_configuration_without_secrets() {
    let entra = FakeEntra::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, TestConfig::client_secret(&entra).to_string()).unwrap();
    let output = run(&["check", "--config", config.to_str().unwrap()]).await;
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains(fake_entra::CLIENT_ID) && text.contains("<redacted>"), "{text}");
    assert!(!text.contains(fake_entra::CLIENT_SECRET) && !text.contains(crate::support::HEADER_SECRET), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_configuration_fails_with_the_key_and_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[server]\nlisten = \"nowhere\"\n[dev]\nenabled = true\n").unwrap();
    let output = run(&["check", "--config", config.to_str().unwrap()]).await;
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("server.listen") && stderr.contains(config.to_str().unwrap()), "{stderr}");
    assert!(!stderr.contains("panicked"));

    // The same key from the environment names the variable.
    let output = command().args(["check", "--dev"]).env("TOKENRELAY_SERVER__LISTEN", "nowhere").output().await.unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("TOKENRELAY_SERVER__LISTEN"), "{stderr}");

    let output = run(&["serve"]).await;
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--dev"));

    let output = run(&["serve", "--config", "/nonexistent.toml"]).await;
    assert_eq!(output.status.code(), Some(64));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_request_log_setting_stops_the_start() {
    let entra = FakeEntra::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, TestConfig::client_secret(&entra).set("log.requests", "verbose").to_string()).unwrap();
    let output = run(&["serve", "--config", config.to_str().unwrap(), "--listen", "127.0.0.1:0"]).await;
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("log.requests") && stderr.contains(config.to_str().unwrap()), "{stderr}");
    assert!(stderr.contains("\"verbose\" is not one of \"all\""), "{stderr}");

    // From the environment, the problem names the variable.
    let output = command().args(["check", "--dev"]).env("TOKENRELAY_LOG__REQUESTS", "loud").output().await.unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("log.requests") && stderr.contains("TOKENRELAY_LOG__REQUESTS"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_app_service_flavour_refuses_to_start_without_a_secret() {
    let entra = FakeEntra::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, TestConfig::client_secret(&entra).remove("server.identity_header").to_string()).unwrap();
    let output = run(&["serve", "--config", config.to_str().unwrap(), "--listen", "127.0.0.1:0"]).await;
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("identity_header"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_azure_environment_configures_the_default_identity() {
    let entra = FakeEntra::start().await;
    let output = command()
        .args(["token", "--resource", "https://vault.azure.net"])
        .env("AZURE_CLIENT_ID", fake_entra::CLIENT_ID)
        .env("AZURE_TENANT_ID", fake_entra::TENANT)
        .env("AZURE_CLIENT_SECRET", fake_entra::CLIENT_SECRET)
        .env("AZURE_AUTHORITY_HOST", entra.url())
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(entra.requests(), 1);
}
