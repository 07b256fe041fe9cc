//! The App Service flavour: the header secret, selectors and the shared body.

use crate::support::{FakeEntra, STORAGE, TestConfig, TestRelay, fake_entra, json};

const QUERY: &str = "api-version=2019-08-01&resource=https://storage.azure.com";

#[tokio::test(flavor = "multi_thread")]
async fn the_right_secret_gets_the_same_body_as_imds() {
    let entra = FakeEntra::start().await;
    let relay = TestRelay::serve(&TestConfig::client_secret(&entra), &[]).await;
    let response = relay.app_service(QUERY).await;
    assert_eq!(response.status(), 200);
    let app_service = json(response).await;
    let imds = json(relay.imds(STORAGE).await).await;
    assert_eq!(app_service["access_token"], imds["access_token"]);
    assert_eq!(app_service["expires_on"], imds["expires_on"]);
    let mut keys: Vec<_> = app_service.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "access_token",
            "client_id",
            "expires_in",
            "expires_on",
            "ext_expires_in",
            "not_before",
            "resource",
            "token_type"
        ]
    );
    assert_eq!(entra.requests(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_or_wrong_secret_gets_401_and_no_upstream_call() {
    let entra = FakeEntra::start().await;
    let relay = TestRelay::serve(&TestConfig::client_secret(&entra), &[]).await;
    for headers in
        [vec![], vec![("X-IDENTITY-HEADER", "wrong")], vec![("x-identity-header", "test-identity-header-secre")]]
    {
        let response = relay.get(&format!("/msi/token?{QUERY}"), &headers).await;
        assert_eq!(response.status(), 401, "{headers:?}");
        let body = json(response).await;
        assert_eq!(body["error"], "unauthorized_client");
    }
    // Header names are case-insensitive; Metadata is not required.
    let lower =
        relay.get(&format!("/msi/token?{QUERY}"), &[("x-identity-header", crate::support::HEADER_SECRET)]).await;
    assert_eq!(lower.status(), 200);
    assert_eq!(entra.requests(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn echoes_the_selector_and_strips_default_scopes() {
    let entra = FakeEntra::start().await;
    let toml = TestConfig::client_secret(&entra).set("identities.0.object_id", "0b1ec7-1d").set(
        "identities.0.resource_id",
        "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/app",
    );
    let relay = TestRelay::serve(&toml, &[]).await;
    let by_object =
        json(relay.app_service("resource=https://storage.azure.com/.default&principal_id=0b1ec7-1d").await).await;
    assert_eq!(by_object["object_id"], "0b1ec7-1d");
    assert_eq!(by_object["resource"], "https://storage.azure.com");
    let by_resource_id = json(
        relay
            .app_service("resource=https://storage.azure.com&mi_res_id=%2Fsubscriptions%2Fs%2Fresourcegroups%2Frg%2Fproviders%2FMicrosoft.ManagedIdentity%2FuserAssignedIdentities%2Fapp")
            .await,
    )
    .await;
    assert_eq!(by_resource_id["client_id"], fake_entra::CLIENT_ID);
    assert!(by_resource_id["mi_res_id"].as_str().unwrap().ends_with("/app"));
    assert_eq!(entra.requests(), 1, "/.default and the bare resource are one cache key");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_custom_path_is_served() {
    let entra = FakeEntra::start().await;
    let toml = TestConfig::client_secret(&entra).set("server.app_service_path", "/custom/token");
    let relay = TestRelay::serve(&toml, &[]).await;
    let response =
        relay.get(&format!("/custom/token?{QUERY}"), &[("X-IDENTITY-HEADER", crate::support::HEADER_SECRET)]).await;
    assert_eq!(response.status(), 200);
    let old = relay.get(&format!("/msi/token?{QUERY}"), &[("X-IDENTITY-HEADER", crate::support::HEADER_SECRET)]).await;
    assert_eq!(old.status(), 404);
}
