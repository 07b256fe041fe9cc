//! The IMDS flavour: caller checks, probes, path variants and the wire body.

use crate::support::{FakeEntra, TestConfig, TestRelay, fake_entra, json};

const QUERY: &str = "api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net";

#[tokio::test(flavor = "multi_thread")]
async fn serves_the_wire_body_every_sdk_parses() {
    let entra = FakeEntra::start().await;
    let relay = TestRelay::serve(&TestConfig::client_secret(&entra), &[]).await;
    let response = relay.imds(QUERY).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body = json(response).await;
    assert_eq!(body["access_token"], "fake-token-1-for-https://vault.azure.net");
    assert_eq!(body["resource"], "https://vault.azure.net");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["client_id"], fake_entra::CLIENT_ID);
    for field in ["expires_in", "expires_on", "ext_expires_in", "not_before"] {
        let text = body[field].as_str().unwrap_or_else(|| panic!("{field} must be a JSON string: {body}"));
        text.parse::<u64>().unwrap_or_else(|_| panic!("{field} must hold an integer: {text}"));
    }
    let expires_in: u64 = body["expires_in"].as_str().unwrap().parse().unwrap();
    let expires_on: u64 = body["expires_on"].as_str().unwrap().parse().unwrap();
    let not_before: u64 = body["not_before"].as_str().unwrap().parse().unwrap();
    assert!((3590..=3599).contains(&expires_in), "{expires_in}");
    assert_eq!(expires_on - not_before, 3599);

    // The request Entra received: client credentials with the scope form of the resource.
    let seen = &entra.seen()[0];
    assert_eq!(seen.form["scope"], "https://vault.azure.net/.default");
    assert_eq!(seen.form["grant_type"], "client_credentials");
    assert_eq!(seen.tenant, fake_entra::TENANT);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_probe_gets_400_at_once_and_never_reaches_the_upstream() {
    let entra = FakeEntra::start().await;
    let relay = TestRelay::serve(&TestConfig::client_secret(&entra), &[]).await;
    // JS and Go probe with no query and no Metadata header; Python and .NET with a resource.
    for path in ["/metadata/identity/oauth2/token", &format!("/metadata/identity/oauth2/token?{QUERY}")] {
        let response = relay.get(path, &[]).await;
        assert_eq!(response.status(), 400, "{path}");
        let body = json(response).await;
        assert_eq!(body["error"], "invalid_request");
        assert_eq!(body["error_description"], "Required metadata header not specified");
    }
    let wrong_value = relay.get(&format!("/metadata/identity/oauth2/token?{QUERY}"), &[("Metadata", "false")]).await;
    assert_eq!(wrong_value.status(), 400);
    assert_eq!(entra.requests(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn compatible_probe_mode_serves_a_probe_that_names_a_resource() {
    let entra = FakeEntra::start().await;
    let toml = TestConfig::client_secret(&entra).set("server.imds_probe", "compatible");
    let relay = TestRelay::serve(&toml, &[]).await;
    let probe = relay.get(&format!("/metadata/identity/oauth2/token?{QUERY}"), &[]).await;
    assert_eq!(probe.status(), 200);
    let bare = relay.get("/metadata/identity/oauth2/token", &[]).await;
    assert_eq!(bare.status(), 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn path_variants_and_header_case_are_accepted() {
    let entra = FakeEntra::start().await;
    let relay = TestRelay::serve(&TestConfig::client_secret(&entra), &[]).await;
    for path in
        ["/metadata/identity/oauth2/token", "/metadata/identity/oauth2/token/", "//metadata/identity/oauth2/token"]
    {
        for header in ["Metadata", "metadata", "METADATA"] {
            let response = relay.get(&format!("{path}?{QUERY}"), &[(header, "true")]).await;
            assert_eq!(response.status(), 200, "{path} with {header}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn refuses_forwarded_requests_bad_versions_and_missing_resources() {
    let entra = FakeEntra::start().await;
    let relay = TestRelay::serve(&TestConfig::client_secret(&entra), &[]).await;
    let forwarded = relay
        .get(
            &format!("/metadata/identity/oauth2/token?{QUERY}"),
            &[("Metadata", "true"), ("X-Forwarded-For", "10.0.0.1")],
        )
        .await;
    assert_eq!(forwarded.status(), 400);

    for (query, fragment) in [
        ("resource=https://vault.azure.net", "api-version"),
        ("api-version=2017-08-01&resource=https://vault.azure.net", "not supported"),
        ("api-version=2018-02-01", "resource"),
        ("api-version=2018-02-01&resource=a&resource=b", "more than once"),
        ("api-version=2018-02-01&resource=a&client_id=x&msi_res_id=y", "at most one"),
    ] {
        let response = relay.imds(query).await;
        assert_eq!(response.status(), 400, "{query}");
        let body = json(response).await;
        assert!(body["error_description"].as_str().unwrap().contains(fragment), "{query}: {body}");
    }
    for version in ["2017-09-01", "2019-08-01", "2021-02-01", "2031-01-01"] {
        let response = relay.imds(&format!("api-version={version}&resource=https://vault.azure.net")).await;
        assert_eq!(response.status(), 200, "{version}");
    }
    assert_eq!(entra.requests(), 1, "only the valid requests reach the cache, which fetched once");
}

#[tokio::test(flavor = "multi_thread")]
async fn selectors_pick_configured_identities_and_unknown_ones_get_400() {
    let entra = FakeEntra::start().await;
    let relay = TestRelay::serve(&TestConfig::client_secret(&entra), &[]).await;
    let by_client_id = relay.imds(&format!("{QUERY}&client_id={}", fake_entra::CLIENT_ID.to_uppercase())).await;
    assert_eq!(by_client_id.status(), 200);
    assert_eq!(json(by_client_id).await["client_id"], fake_entra::CLIENT_ID);

    let unknown = relay.imds(&format!("{QUERY}&client_id=00000000-dead-beef-0000-000000000000")).await;
    assert_eq!(unknown.status(), 400);
    let body = json(unknown).await;
    let description = body["error_description"].as_str().unwrap();
    assert!(description.contains("client_id \"00000000-dead-beef-0000-000000000000\""), "{description}");

    let unknown_resource_id = relay.imds(&format!("{QUERY}&msi_res_id=%2Fsubscriptions%2Fx")).await;
    assert_eq!(unknown_resource_id.status(), 400);
    assert_eq!(entra.requests(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_paths_are_404_json() {
    let entra = FakeEntra::start().await;
    let relay = TestRelay::serve(&TestConfig::client_secret(&entra), &[]).await;
    let response = relay.get("/metadata/instance", &[("Metadata", "true")]).await;
    assert_eq!(response.status(), 404);
    assert_eq!(json(response).await["error"], "not_found");
}
