//! Fault injection: whatever the authority does, valid tokens keep being served, errors are
//! clear and bounded, and the service recovers without a restart.

use std::time::Duration;

use crate::support::{FakeEntra, Scripted, TestRelay, json, secret_config};

const VAULT: &str = "api-version=2018-02-01&resource=https://vault.azure.net";
const OTHER: &str = "api-version=2018-02-01&resource=https://storage.azure.com";

#[tokio::test(flavor = "multi_thread")]
async fn html_pages_and_malformed_answers_are_clear_errors_and_valid_tokens_keep_flowing() {
    let entra = FakeEntra::start().await;
    let relay = TestRelay::serve(&secret_config(&entra, ""), &[]).await;
    let cached = json(relay.imds(VAULT).await).await;

    // Three HTML error pages exhaust one request's attempts (one try and two retries).
    entra.script([Scripted::HtmlPage(502), Scripted::HtmlPage(502), Scripted::HtmlPage(502)]);
    let failed = relay.imds(OTHER).await;
    assert_eq!(failed.status(), 503);
    let body = json(failed).await;
    assert!(body["error_description"].as_str().unwrap().contains("502"), "{body}");
    assert_eq!(json(relay.imds(VAULT).await).await["access_token"], cached["access_token"]);

    // A 200 that is not a token response is not retried and not cached.
    entra.script([Scripted::Malformed]);
    let malformed = relay.imds(OTHER).await;
    assert_eq!(malformed.status(), 503);
    let body = json(malformed).await;
    assert!(body["error_description"].as_str().unwrap().contains("unreadable token response"), "{body}");

    // The next request recovers on its own.
    assert_eq!(relay.imds(OTHER).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_authority_is_cut_off_by_the_upstream_timeout() {
    let entra = FakeEntra::start().await;
    let toml = secret_config(&entra, "")
        .replace("timeout_secs = 5", "timeout_secs = 1")
        .replace("max_retries = 2", "max_retries = 0");
    let relay = TestRelay::serve(&toml, &[]).await;
    let cached = json(relay.imds(VAULT).await).await;
    entra.set_delay(Duration::from_secs(30));
    let response = relay.imds(OTHER).await;
    assert_eq!(response.status(), 503);
    let body = json(response).await;
    assert!(body["error_description"].as_str().unwrap().contains("timed out"), "{body}");
    assert_eq!(json(relay.imds(VAULT).await).await["access_token"], cached["access_token"]);
    entra.set_delay(Duration::ZERO);
    assert_eq!(relay.imds(OTHER).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_authority_that_goes_away_and_comes_back_needs_no_restart() {
    let entra = FakeEntra::start().await;
    let relay = TestRelay::serve(&secret_config(&entra, ""), &[]).await;
    entra.set_down(true);
    for _ in 0..3 {
        assert_eq!(relay.imds(VAULT).await.status(), 503);
    }
    entra.set_down(false);
    assert_eq!(relay.imds(VAULT).await.status(), 200);
    assert_eq!(relay.get("/healthz", &[]).await.status(), 200);
}
