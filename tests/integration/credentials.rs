//! The other upstream credentials end to end (client assertion, Azure Pipelines, managed
//! identity, Azure CLI), chains, `check` and `token --tenant`. Every upstream is a local
//! fake on loopback; the fake `az` is a script placed first on the child's `PATH`.

use std::path::{Path, PathBuf};

use base64::Engine;

use crate::support::fake_devops::{self, FakeDevOps};
use crate::support::fake_imds::{self, FakeImds};
use crate::support::{
    FakeEntra, STORAGE, TestConfig, TestRelay, VAULT, command, credential, fake_entra, json, table, utf8, write,
};

/// A JWT-shaped federated token (unsigned: the fake matches claims, as a federated identity
/// credential does).
fn federated_token(issuer: &str, subject: &str) -> String {
    let encode = |value: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string());
    format!(
        "{}.{}.c2lnbmF0dXJl",
        encode(serde_json::json!({"alg": "RS256"})),
        encode(serde_json::json!({"iss": issuer, "sub": subject, "aud": "api://AzureADTokenExchange"}))
    )
}

async fn description(response: reqwest::Response) -> String {
    json(response).await["error_description"].as_str().unwrap().to_owned()
}

// ---- client_assertion ----

#[tokio::test(flavor = "multi_thread")]
async fn a_client_assertion_file_is_read_again_when_replaced() {
    let entra = FakeEntra::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("assertion.jwt");
    let first = federated_token("https://token.actions.githubusercontent.com", "repo:contoso/app:ref:refs/heads/main");
    write(&file, &first);
    entra.accept_assertion(&first, 70021);
    let toml =
        TestConfig::client_secret(&entra).credentials([credential("client_assertion").with("file", utf8(&file))]);
    let relay = TestRelay::serve(&toml, &[]).await;
    assert_eq!(relay.imds(VAULT).await.status(), 200, "{}", relay.logs());

    // Replaced with the same modification time: still the new one is presented.
    let modified = std::fs::metadata(&file).unwrap().modified().unwrap();
    let second = federated_token("https://token.actions.githubusercontent.com", "repo:contoso/app:environment:prod");
    write(&file, &second);
    std::fs::File::options().write(true).open(&file).unwrap().set_modified(modified).unwrap();
    entra.accept_assertion(&second, 70021);
    assert_eq!(relay.imds(STORAGE).await.status(), 200);
    assert_eq!(entra.seen().last().unwrap().form["client_assertion"], second);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_assertion_command_prints_the_token_and_failures_are_explained() {
    let entra = FakeEntra::start().await;
    entra.federate("https://spiffe.example", "spiffe://example.org/app");
    let dir = tempfile::tempdir().unwrap();
    let script = executable(
        dir.path(),
        "get-token",
        &format!("#!/bin/sh\necho '{}'\n", federated_token("https://spiffe.example", "spiffe://example.org/app")),
    );
    let toml = TestConfig::client_secret(&entra)
        .credentials([credential("client_assertion").with("command", vec![utf8(&script)])]);
    let relay = TestRelay::serve(&toml, &[]).await;
    assert_eq!(relay.imds(VAULT).await.status(), 200, "{}", relay.logs());

    let failing = executable(dir.path(), "broken", "#!/bin/sh\necho 'agent socket not found' >&2\nexit 7\n");
    let toml = TestConfig::client_secret(&entra)
        .credentials([credential("client_assertion").with("command", vec![utf8(&failing)])]);
    let relay = TestRelay::serve(&toml, &[]).await;
    let response = relay.imds(VAULT).await;
    assert_eq!(response.status(), 503);
    let text = description(response).await;
    assert!(text.contains("agent socket not found") && text.contains("broken"), "{text}");

    // A token nobody federated: Entra's 70021 names what was presented.
    let stranger = executable(
        dir.path(),
        "stranger",
        &format!("#!/bin/sh\necho '{}'\n", federated_token("https://spiffe.example", "spiffe://example.org/other")),
    );
    let toml = TestConfig::client_secret(&entra)
        .credentials([credential("client_assertion").with("command", vec![utf8(&stranger)])]);
    let relay = TestRelay::serve(&toml, &[]).await;
    let response = relay.imds(VAULT).await;
    assert_eq!(response.status(), 400);
    let text = description(response).await;
    for expected in [
        "AADSTS70021",
        "issuer \"https://spiffe.example\"",
        "subject \"spiffe://example.org/other\"",
        "audience \"api://AzureADTokenExchange\"",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in {text}");
    }
}

// ---- azure_pipelines ----

fn pipelines_config(entra: &FakeEntra, connection: &str) -> TestConfig {
    TestConfig::client_secret(entra)
        .credentials([credential("azure_pipelines").with("service_connection_id", connection)])
}

#[tokio::test(flavor = "multi_thread")]
async fn azure_pipelines_requests_a_fresh_oidc_token_for_every_exchange() {
    let entra = FakeEntra::start().await;
    entra.federate(fake_devops::ISSUER, fake_devops::SUBJECT);
    let devops = FakeDevOps::start().await;
    let uri = devops.oidc_request_uri();
    let env = [("SYSTEM_OIDCREQUESTURI", uri.as_str()), ("SYSTEM_ACCESSTOKEN", fake_devops::SYSTEM_ACCESS_TOKEN)];
    let relay =
        TestRelay::serve_with_env(&pipelines_config(&entra, fake_devops::SERVICE_CONNECTION_ID), &[], &env).await;
    assert_eq!(relay.imds(VAULT).await.status(), 200, "{}", relay.logs());
    assert_eq!(relay.imds(STORAGE).await.status(), 200);
    assert_eq!(devops.requests(), 2, "one OIDC request per exchange");
    let issued = devops.issued();
    let presented: Vec<String> = entra.seen().iter().map(|s| s.form["client_assertion"].clone()).collect();
    assert_eq!(presented, issued, "each exchange presents its own fresh token");
    assert_ne!(issued[0], issued[1]);
    assert!(!relay.logs().contains(fake_devops::SYSTEM_ACCESS_TOKEN));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_fake_azure_devops_refuses_a_post_without_a_length_as_its_front_door_does() {
    // Regression: tokenrelay posted with no body and no Content-Length, which IIS and Azure
    // Front Door answer with 411 before Azure DevOps sees the request. The fake must refuse it
    // too, or the end-to-end test above proves nothing.
    let devops = FakeDevOps::start().await;
    let url = format!(
        "{}?api-version=7.1&serviceConnectionId={}",
        devops.oidc_request_uri(),
        fake_devops::SERVICE_CONNECTION_ID
    );
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let post =
        || http.post(&url).bearer_auth(fake_devops::SYSTEM_ACCESS_TOKEN).header("X-TFS-FedAuthRedirect", "Suppress");
    let without_length = post().send().await.unwrap();
    assert_eq!(without_length.status(), 411);
    assert!(without_length.text().await.unwrap().contains("HTTP Error 411"));
    assert_eq!(post().header("content-length", "0").send().await.unwrap().status(), 200);
    assert_eq!(post().body("{}").send().await.unwrap().status(), 200);
    assert_eq!(devops.issued().len(), 2, "only the requests with a length got a token");
}

#[tokio::test(flavor = "multi_thread")]
async fn azure_pipelines_errors_name_the_support_headers() {
    let entra = FakeEntra::start().await;
    let devops = FakeDevOps::start().await;
    let uri = devops.oidc_request_uri();

    // An unknown service connection.
    let env = [("SYSTEM_OIDCREQUESTURI", uri.as_str()), ("SYSTEM_ACCESSTOKEN", fake_devops::SYSTEM_ACCESS_TOKEN)];
    let relay = TestRelay::serve_with_env(&pipelines_config(&entra, "no-such-connection"), &[], &env).await;
    let response = relay.imds(VAULT).await;
    assert_eq!(response.status(), 400);
    let text = description(response).await;
    for expected in ["no-such-connection", fake_devops::E2E_ID, fake_devops::EDGE_REF] {
        assert!(text.contains(expected), "missing {expected:?} in {text}");
    }

    // A System.AccessToken Azure DevOps refuses.
    let env = [("SYSTEM_OIDCREQUESTURI", uri.as_str()), ("SYSTEM_ACCESSTOKEN", "expired-job-token")];
    let relay =
        TestRelay::serve_with_env(&pipelines_config(&entra, fake_devops::SERVICE_CONNECTION_ID), &[], &env).await;
    let text = description(relay.imds(VAULT).await).await;
    assert!(
        text.contains("System.AccessToken") && text.contains("TF400813") && text.contains(fake_devops::E2E_ID),
        "{text}"
    );
    assert!(!text.contains("expired-job-token"));

    // Azure DevOps in trouble: transient, and the identity's federation is not to blame.
    devops.script([503]);
    let env = [("SYSTEM_OIDCREQUESTURI", uri.as_str()), ("SYSTEM_ACCESSTOKEN", fake_devops::SYSTEM_ACCESS_TOKEN)];
    let relay =
        TestRelay::serve_with_env(&pipelines_config(&entra, fake_devops::SERVICE_CONNECTION_ID), &[], &env).await;
    let response = relay.imds(VAULT).await;
    assert_eq!(response.status(), 503);
    assert!(description(response).await.contains(fake_devops::EDGE_REF));

    // The OIDC token comes back but no federated credential matches it.
    let response = relay.imds(STORAGE).await;
    assert_eq!(response.status(), 400);
    let text = description(response).await;
    assert!(
        text.contains("AADSTS70021") && text.contains(fake_devops::SUBJECT) && text.contains(fake_devops::ISSUER),
        "{text}"
    );
    assert_eq!(entra.requests(), 1, "only the last exchange reached Entra");
}

#[tokio::test(flavor = "multi_thread")]
async fn azure_pipelines_outside_a_job_is_skipped_by_the_chain() {
    let entra = FakeEntra::start().await;
    let toml = TestConfig::client_secret(&entra).credentials([
        credential("azure_pipelines").with("service_connection_id", "x"),
        credential("client_secret").with("secret", fake_entra::CLIENT_SECRET),
    ]);
    let relay = TestRelay::serve(&toml, &[]).await;
    assert_eq!(relay.imds(VAULT).await.status(), 200, "{}", relay.logs());
    assert!(relay.logs().contains("client_secret will be tried first"), "{}", relay.logs());
}

// ---- managed_identity ----

/// A managed identity at `imds` as the only credential, retrying quickly; `gone_retry_secs`
/// bounds how long 410 answers are waited out.
fn imds_config(entra: &FakeEntra, imds: &FakeImds, gone_retry_secs: Option<i64>) -> TestConfig {
    let mut link = credential("managed_identity")
        .with("endpoint", imds.imds_endpoint())
        .with("client_id", "mi-client")
        .with("retry_base_ms", 10);
    if let Some(secs) = gone_retry_secs {
        link = link.with("gone_retry_secs", secs);
    }
    TestConfig::client_secret(entra).credentials([link])
}

#[tokio::test(flavor = "multi_thread")]
async fn imds_answering_410_for_a_while_is_waited_out() {
    let entra = FakeEntra::start().await;
    let imds = FakeImds::start().await;
    imds.script([(410, None), (410, None), (410, None)]);
    // A bogus proxy in the environment must not be used for IMDS.
    let relay = TestRelay::serve_with_env(
        &imds_config(&entra, &imds, Some(30)),
        &[],
        &[("HTTP_PROXY", "http://127.0.0.1:9"), ("http_proxy", "http://127.0.0.1:9")],
    )
    .await;
    let response = relay.imds(VAULT).await;
    assert_eq!(response.status(), 200, "{}", relay.logs());
    assert_eq!(json(response).await["access_token"], "imds-token-1-for-https://vault.azure.net");
    let seen = imds.seen();
    assert_eq!(seen.len(), 4);
    let last = &seen[3];
    assert_eq!(last.headers["metadata"], "true");
    assert!(!last.headers.contains_key("x-forwarded-for"));
    assert_eq!(last.query["api-version"], "2018-02-01");
    assert_eq!(
        (last.query["client_id"].as_str(), last.query["resource"].as_str()),
        ("mi-client", "https://vault.azure.net")
    );
    assert_eq!(entra.requests(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn imds_that_stays_gone_past_the_budget_is_a_503_and_throttling_is_backed_off() {
    let entra = FakeEntra::start().await;
    let imds = FakeImds::start().await;
    imds.script(std::iter::repeat_n((410, None), 1000));
    let relay = TestRelay::serve(&imds_config(&entra, &imds, Some(1)), &[]).await;
    let response = relay.imds(VAULT).await;
    assert_eq!(response.status(), 503);
    let text = description(response).await;
    assert!(text.contains("410") && text.contains("updating"), "{text}");
    assert!(imds.seen().len() >= 3, "retried while the budget lasted");

    let imds = FakeImds::start().await;
    imds.script([(429, Some(0)), (500, None)]);
    let relay = TestRelay::serve(&imds_config(&entra, &imds, None), &[]).await;
    assert_eq!(relay.imds(VAULT).await.status(), 200, "{}", relay.logs());
    assert_eq!(imds.seen().len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_default_chain_uses_an_app_service_style_endpoint_from_the_environment() {
    let imds = FakeImds::start().await;
    let endpoint = imds.app_service_endpoint();
    let output = command()
        .args(["token", "--resource", "https://vault.azure.net"])
        .env("AZURE_CLIENT_ID", "00000000-0000-4000-8000-0000000000aa")
        .env("IDENTITY_ENDPOINT", &endpoint)
        .env("IDENTITY_HEADER", fake_imds::IDENTITY_HEADER)
        .env("PATH", "/nonexistent")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let body: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(body["access_token"], "imds-token-1-for-https://vault.azure.net");
    let seen = &imds.seen()[0];
    assert_eq!(seen.path, "/msi/token");
    assert_eq!(seen.headers["x-identity-header"], fake_imds::IDENTITY_HEADER);
    assert_eq!(seen.query["api-version"], "2019-08-01");
    assert_eq!(seen.query["client_id"], "00000000-0000-4000-8000-0000000000aa", "AZURE_CLIENT_ID selects it");
    assert!(stderr.contains("managed_identity will be tried first: IDENTITY_ENDPOINT"), "{stderr}");
    assert!(!stderr.contains(fake_imds::IDENTITY_HEADER));
}

// ---- azure_cli ----

/// Writes an executable script.
fn executable(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A directory with a fake `az` printing what a logged-in CLI 2.54+ prints (or, with
/// `expires_on = false`, what an older one prints); it records its arguments in `az-args`.
fn fake_az(expires_on: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let field = if expires_on { ",\"expires_on\":%s" } else { "%.0s" };
    executable(
        dir.path(),
        "az",
        &format!(
            "#!/bin/sh\necho \"$@\" >> \"$(dirname \"$0\")/az-args\"\nresource=\nwhile [ $# -gt 0 ]; do\n  if [ \"$1\" = --resource ]; then resource=\"$2\"; fi\n  shift\ndone\nexp=$(( $(date +%s) + 3600 ))\nprintf '{{\"accessToken\":\"az-token-for-%s\",\"expiresOn\":\"2030-01-01 00:00:00.000000\"{field},\"subscription\":\"s\",\"tenant\":\"t\",\"tokenType\":\"Bearer\"}}\\n' \"$resource\" \"$exp\"\n"
        ),
    );
    dir
}

fn not_logged_in_az() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    executable(dir.path(), "az", "#!/bin/sh\necho \"ERROR: Please run 'az login' to setup account.\" >&2\nexit 1\n");
    dir
}

fn cli_config(tenant: &str) -> String {
    format!(
        "[server]\nidentity_header = \"{}\"\n[log]\nformat = \"text\"\n[[identities]]\nname = \"laptop\"\nclient_id = \"me\"\n{tenant}credentials = [{{ kind = \"azure_cli\" }}]\n",
        crate::support::HEADER_SECRET
    )
}

fn path_with(dir: &Path) -> String {
    // The fake first, so a real az on this machine is never run; the system directories for
    // the script's own tools (date, dirname).
    format!("{}:/usr/bin:/bin", dir.display())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_azure_cli_provides_tokens_when_logged_in() {
    let az = fake_az(true);
    let path = path_with(az.path());
    let relay =
        TestRelay::serve_with_env(&cli_config("tenant_id = \"contoso.onmicrosoft.com\"\n"), &[], &[("PATH", &path)])
            .await;
    let response = relay.imds(VAULT).await;
    assert_eq!(response.status(), 200, "{}", relay.logs());
    assert_eq!(json(response).await["access_token"], "az-token-for-https://vault.azure.net");
    let args = std::fs::read_to_string(az.path().join("az-args")).unwrap();
    assert_eq!(
        args.trim(),
        "account get-access-token --resource https://vault.azure.net --tenant contoso.onmicrosoft.com -o json"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_azure_cli_not_logged_in_missing_or_too_old_is_explained() {
    let cases: [(tempfile::TempDir, u16, &str); 3] = [
        (not_logged_in_az(), 503, "az login"),
        (tempfile::tempdir().unwrap(), 503, "not on PATH"), // (PATH below is this empty directory)
        (fake_az(false), 400, "2.54.0"),
    ];
    for (dir, status, expected) in cases {
        let path = if expected == "not on PATH" { dir.path().display().to_string() } else { path_with(dir.path()) };
        let relay = TestRelay::serve_with_env(&cli_config(""), &[], &[("PATH", &path)]).await;
        let response = relay.imds(VAULT).await;
        assert_eq!(response.status(), status, "{expected}: {}", relay.logs());
        let text = description(response).await;
        assert!(text.contains(expected), "missing {expected:?} in {text}");
    }
}

// ---- chains ----

#[tokio::test(flavor = "multi_thread")]
async fn the_default_chain_on_a_laptop_falls_through_to_the_azure_cli() {
    let az = fake_az(true);
    let path = path_with(az.path());
    let toml = format!(
        "[server]\nidentity_header = \"{}\"\n[log]\nformat = \"text\"\n[[identities]]\nname = \"laptop\"\nclient_id = \"me\"\ntenant_id = \"contoso.onmicrosoft.com\"\n",
        crate::support::HEADER_SECRET
    );
    let relay = TestRelay::serve_with_env(&toml, &[], &[("PATH", &path)]).await;
    let response = relay.imds(VAULT).await;
    assert_eq!(response.status(), 200, "{}", relay.logs());
    assert_eq!(json(response).await["access_token"], "az-token-for-https://vault.azure.net");
    // IMDS (pointed at a closed loopback port by the test support) was tried and skipped.
    assert!(relay.logs().contains("managed_identity will be tried first"), "{}", relay.logs());

    // With no az either, the error lists what every link said.
    let relay = TestRelay::serve_with_env(&toml, &[], &[("PATH", "/nonexistent")]).await;
    let response = relay.imds(VAULT).await;
    assert_eq!(response.status(), 503);
    let text = description(response).await;
    for expected in [
        "environment: AZURE_CLIENT_ID is not set",
        "workload_identity: AZURE_FEDERATED_TOKEN_FILE is not set",
        "managed_identity: no managed identity endpoint at 127.0.0.1",
        "azure_cli: the Azure CLI (az) is not on PATH",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in {text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_permanent_failure_stops_the_chain_and_unavailable_links_are_skipped() {
    let entra = FakeEntra::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    let token = federated_token("https://oidc.example", "system:serviceaccount:default:app");
    write(&token_file, &token);
    entra.accept_assertion(&token, 70021);

    // A bad secret first: the workload identity after it is never tried.
    let toml = TestConfig::client_secret(&entra).credentials([
        credential("client_secret").with("secret", "wrong"),
        credential("workload_identity").with("token_file", utf8(&token_file)),
    ]);
    let relay = TestRelay::serve(&toml, &[]).await;
    let response = relay.imds(VAULT).await;
    assert_eq!(response.status(), 400);
    assert!(description(response).await.contains("AADSTS7000215"));
    assert_eq!(entra.requests(), 1);

    // A missing assertion file first: skipped, and the workload identity answers.
    let toml = TestConfig::client_secret(&entra).credentials([
        credential("client_assertion").with("file", "/nonexistent/assertion"),
        credential("workload_identity").with("token_file", utf8(&token_file)),
    ]);
    let relay = TestRelay::serve(&toml, &[]).await;
    assert_eq!(relay.imds(VAULT).await.status(), 200, "{}", relay.logs());
    assert!(relay.logs().contains("workload_identity will be tried first"), "{}", relay.logs());
}

// ---- check and token --tenant ----

async fn run_with(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    command().args(args).envs(env.iter().copied()).output().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn check_shows_every_chain_and_fetches_only_when_asked() {
    let entra = FakeEntra::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    let toml = TestConfig::client_secret(&entra)
        .credentials([
            credential("client_assertion").with("file", "/nonexistent/jwt"),
            credential("client_secret").with("secret", fake_entra::CLIENT_SECRET),
        ])
        .push(
            "identities",
            table().with("name", "defaults").with("client_id", "second-app").with("tenant_id", fake_entra::TENANT),
        );
    std::fs::write(&config, toml.to_string()).unwrap();
    let config = config.to_str().unwrap();
    let env = [("PATH", "/nonexistent")];

    let output = run_with(&["check", "--config", config], &env).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    for expected in [
        "1. client_assertion: not usable: client assertion file /nonexistent/jwt does not exist",
        "2. client_secret: usable",
        "tries client_secret first",
        "# identity \"defaults\"",
        "1. environment: not usable: AZURE_CLIENT_ID is not set",
        "3. managed_identity: usable: AZURE_POD_IDENTITY_AUTHORITY_HOST",
        "4. azure_cli: not usable: the Azure CLI (az) is not on PATH",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in\n{stdout}");
    }
    assert_eq!(entra.requests(), 0, "check contacts nothing without --fetch");

    // --fetch: the first identity gets a token, the second cannot; exit status says so, and
    // the failure reads as the HTTP error description would.
    let output =
        run_with(&["check", "--config", config, "--fetch", "--resource", "https://vault.azure.net"], &env).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("fetched a token for https://vault.azure.net from client_secret"), "{stdout}");
    assert!(stdout.contains("fetching a token for https://vault.azure.net failed: identity \"defaults\""), "{stdout}");
    assert!(!stdout.contains("fake-token-1"), "tokens are never printed, only fingerprints");
    assert_eq!(entra.requests(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn check_fetch_reports_an_authority_refusal_with_its_advice() {
    let entra = FakeEntra::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        TestConfig::client_secret(&entra)
            .replace("identities.0.client_id", "00000000-0000-0000-0000-00000000beef")
            .to_string(),
    )
    .unwrap();
    let output = run_with(&["check", "--config", config.to_str().unwrap(), "--fetch"], &[]).await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("AADSTS700016")
            && stderr.contains("00000000-0000-0000-0000-00000000beef")
            && stderr.contains(fake_entra::TENANT)
            && stderr.contains("correlation id 11111111-1111-1111-1111-111111111111"),
        "{stderr}"
    );
    assert_eq!(entra.seen()[0].form["scope"], "https://management.azure.com/.default", "the default check resource");
}

#[tokio::test(flavor = "multi_thread")]
async fn token_for_another_tenant_needs_it_to_be_allowed() {
    let entra = FakeEntra::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    let toml = TestConfig::client_secret(&entra)
        .replace("identities.0.tenant_id", "contoso.onmicrosoft.com")
        .set("identities.0.additionally_allowed_tenants", vec![fake_entra::TENANT]);
    std::fs::write(&config, toml.to_string()).unwrap();
    let config = config.to_str().unwrap();

    let refused = run_with(
        &["token", "--config", config, "--resource", "https://vault.azure.net", "--tenant", "fabrikam.com"],
        &[],
    )
    .await;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("additionally_allowed_tenants"));
    assert_eq!(entra.requests(), 0);

    let allowed = run_with(
        &["token", "--config", config, "--resource", "https://vault.azure.net", "--tenant", fake_entra::TENANT],
        &[],
    )
    .await;
    assert!(allowed.status.success(), "{}", String::from_utf8_lossy(&allowed.stderr));
    assert_eq!(entra.seen()[0].tenant, fake_entra::TENANT);
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_with_only_azure_variables_uses_the_environment_link_of_the_default_chain() {
    let entra = FakeEntra::start().await;
    let toml = format!(
        "[server]\nidentity_header = \"{}\"\n[upstream]\nauthority_host = \"{}\"\n[log]\nformat = \"text\"\n",
        crate::support::HEADER_SECRET,
        entra.url()
    );
    let env = [
        ("AZURE_CLIENT_ID", fake_entra::CLIENT_ID),
        ("AZURE_TENANT_ID", fake_entra::TENANT),
        ("AZURE_CLIENT_SECRET", fake_entra::CLIENT_SECRET),
        ("PATH", "/nonexistent"),
    ];
    let relay = TestRelay::serve_with_env(&toml, &[], &env).await;
    let response = relay.app_service("api-version=2019-08-01&resource=https://vault.azure.net").await;
    assert_eq!(response.status(), 200, "{}", relay.logs());
    assert_eq!(entra.seen()[0].form["client_secret"], fake_entra::CLIENT_SECRET);
    let logs = relay.logs();
    assert!(logs.contains("environment will be tried first: AZURE_CLIENT_SECRET is set"), "{logs}");
    assert!(!logs.contains(fake_entra::CLIENT_SECRET), "the secret never reaches the logs");
}
