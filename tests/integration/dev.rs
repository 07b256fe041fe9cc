//! `serve --dev`: the embedded issuer a newcomer runs first.

use crate::support::{TestRelay, VAULT, json};

#[tokio::test(flavor = "multi_thread")]
async fn serves_both_flavours_and_prints_how_to_use_them() {
    let relay = TestRelay::serve_dev(&["--dev-identity", "11111111-2222-3333-4444-555555555555"]).await;
    let lines = relay.stdout_lines.join("\n");
    assert!(lines.contains("DEVELOPMENT MODE"), "{lines}");
    let export = relay.stdout_lines.iter().find(|l| l.contains("IDENTITY_ENDPOINT=")).expect("an export line");
    let header = export.split("IDENTITY_HEADER=").nth(1).unwrap().trim();
    assert_eq!(header.len(), 64, "a generated secret");
    assert!(export.contains(&format!("IDENTITY_ENDPOINT={}/msi/token", relay.base_url)));

    let imds = json(relay.imds(VAULT).await).await;
    assert_eq!(imds["client_id"], "d0000000-0000-0000-0000-000000000001");
    let app = relay
        .get(
            "/msi/token?resource=https://vault.azure.net&client_id=11111111-2222-3333-4444-555555555555",
            &[("X-IDENTITY-HEADER", header)],
        )
        .await;
    assert_eq!(app.status(), 200);
    let app = json(app).await;
    assert_eq!(app["client_id"], "11111111-2222-3333-4444-555555555555");
    assert_ne!(app["access_token"], imds["access_token"]);

    let unknown = relay.imds("api-version=2018-02-01&resource=r&client_id=99999999-0000-0000-0000-000000000000").await;
    assert_eq!(unknown.status(), 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn publishes_discovery_documents_for_the_tokens_it_signs() {
    let relay = TestRelay::serve_dev(&[]).await;
    let discovery = json(relay.get("/.well-known/openid-configuration", &[]).await).await;
    assert_eq!(discovery["issuer"], relay.base_url);
    let jwks_uri = discovery["jwks_uri"].as_str().unwrap().to_owned();
    let jwks = json(relay.get(jwks_uri.trim_start_matches(&relay.base_url), &[]).await).await;
    let key = &jwks["keys"][0];
    assert_eq!(key["kty"], "RSA");
    assert_eq!(key["alg"], "RS256");

    let body = json(relay.imds("api-version=2018-02-01&resource=api://my-api").await).await;
    let token = body["access_token"].as_str().unwrap();
    let header: serde_json::Value = decode_segment(token.split('.').next().unwrap());
    let claims: serde_json::Value = decode_segment(token.split('.').nth(1).unwrap());
    assert_eq!(header["kid"], key["kid"]);
    assert_eq!(claims["aud"], "api://my-api");
    assert_eq!(claims["iss"], relay.base_url);
    assert_eq!(claims["exp"].as_u64().unwrap().to_string(), body["expires_on"].as_str().unwrap());
}

fn decode_segment(segment: &str) -> serde_json::Value {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(segment).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_given_identity_header_is_used_instead_of_a_generated_one() {
    let relay = TestRelay::serve_dev(&["--identity-header", "chosen-secret-0123456789"]).await;
    let ok = relay.get("/msi/token?resource=r", &[("X-IDENTITY-HEADER", "chosen-secret-0123456789")]).await;
    assert_eq!(ok.status(), 200);
    assert!(relay.stdout_lines.iter().any(|l| l.ends_with("IDENTITY_HEADER=chosen-secret-0123456789")));
}
