//! Fault injection: whatever the authority does, valid tokens keep being served, errors are
//! clear and bounded, and the service recovers without a restart.

use std::time::Duration;

use crate::support::{
    ConnectionFault, FakeEntra, GRAPH, MANAGEMENT, STORAGE, Scripted, TestConfig, TestRelay, VAULT, json,
    service_account_token, write,
};

/// What `TestConfig::client_secret` allows: one try and `max_retries = 2`.
const ATTEMPTS: usize = 3;

/// Far longer than one failing request may take (three attempts, millisecond backoffs), so a
/// hang fails the test instead of stalling it.
const NO_HANG: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread")]
async fn html_pages_and_malformed_answers_are_clear_errors_and_valid_tokens_keep_flowing() {
    let entra = FakeEntra::start().await;
    let relay = TestRelay::serve(&TestConfig::client_secret(&entra), &[]).await;
    let cached = json(relay.imds(VAULT).await).await;

    // Three HTML error pages exhaust one request's attempts (one try and two retries).
    entra.script([Scripted::HtmlPage(502), Scripted::HtmlPage(502), Scripted::HtmlPage(502)]);
    let failed = relay.imds(STORAGE).await;
    assert_eq!(failed.status(), 503);
    let body = json(failed).await;
    assert!(body["error_description"].as_str().unwrap().contains("502"), "{body}");
    assert_eq!(json(relay.imds(VAULT).await).await["access_token"], cached["access_token"]);

    // A 200 that is not a token response is not retried and not cached.
    entra.script([Scripted::Malformed]);
    let malformed = relay.imds(STORAGE).await;
    assert_eq!(malformed.status(), 503);
    let body = json(malformed).await;
    assert!(body["error_description"].as_str().unwrap().contains("unreadable token response"), "{body}");

    // The next request recovers on its own.
    assert_eq!(relay.imds(STORAGE).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_authority_is_cut_off_by_the_upstream_timeout() {
    let entra = FakeEntra::start().await;
    let toml = TestConfig::client_secret(&entra).replace("upstream.timeout_secs", 1).replace("upstream.max_retries", 0);
    let relay = TestRelay::serve(&toml, &[]).await;
    let cached = json(relay.imds(VAULT).await).await;
    entra.set_delay(Duration::from_secs(30));
    let response = relay.imds(STORAGE).await;
    assert_eq!(response.status(), 503);
    let body = json(response).await;
    assert!(body["error_description"].as_str().unwrap().contains("timed out"), "{body}");
    assert_eq!(json(relay.imds(VAULT).await).await["access_token"], cached["access_token"]);
    entra.set_delay(Duration::ZERO);
    assert_eq!(relay.imds(STORAGE).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_authority_that_goes_away_and_comes_back_needs_no_restart() {
    let entra = FakeEntra::start().await;
    let relay = TestRelay::serve(&TestConfig::client_secret(&entra), &[]).await;
    entra.set_down(true);
    for _ in 0..3 {
        assert_eq!(relay.imds(VAULT).await.status(), 503);
    }
    entra.set_down(false);
    assert_eq!(relay.imds(VAULT).await.status(), 200);
    assert_eq!(relay.get("/healthz", &[]).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_unanswered_or_cut_short_connections_are_retried_within_the_limit_and_recovered_from() {
    let entra = FakeEntra::start().await;
    let relay = TestRelay::serve(&TestConfig::client_secret(&entra), &[]).await;
    let cached = json(relay.imds(VAULT).await).await;

    for (fault, words, resource) in [
        (ConnectionFault::Reset, "reset", STORAGE),
        (ConnectionFault::CloseWithoutResponse, "closed", GRAPH),
        (ConnectionFault::ResetMidBody, "body", MANAGEMENT),
    ] {
        entra.set_connection_fault(Some(fault));
        let before = entra.faulted();
        let failed = tokio::time::timeout(NO_HANG, relay.imds(resource)).await.expect("no hang");
        assert_eq!(failed.status(), 503, "{fault:?}");
        let body = json(failed).await;
        assert_eq!(body["error"], "temporarily_unavailable", "{fault:?}: {body}");
        let description = body["error_description"].as_str().unwrap();
        assert!(description.contains("127.0.0.1") && description.contains(words), "{fault:?}: {description}");
        assert_eq!(entra.faulted() - before, ATTEMPTS, "{fault:?}: every attempt, and no more");
        assert_eq!(json(relay.imds(VAULT).await).await["access_token"], cached["access_token"], "{fault:?}");

        // Back to normal: the same resource succeeds, on a new connection, without a restart.
        entra.set_connection_fault(None);
        assert_eq!(relay.imds(resource).await.status(), 200, "{fault:?}");
    }
    assert_eq!(relay.get("/healthz", &[]).await.status(), 200);
    assert!(!relay.logs().contains("panicked"), "{}", relay.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_or_unreadable_federated_token_file_keeps_the_token_read_before_until_it_is_written_back() {
    let entra = FakeEntra::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("azure-identity-token");
    let token = service_account_token("system:serviceaccount:default:app");
    write(&token_file, &token);
    entra.accept_assertion(&token, 70021);
    let relay = TestRelay::serve(&TestConfig::workload_identity(&entra, &token_file), &[]).await;
    assert_eq!(relay.imds(VAULT).await.status(), 200);
    let path = token_file.display().to_string();

    // Truncated to nothing, as a writer caught half-way might leave it: the token read before
    // is still presented (it is valid for a while yet), and the log says why the file was not
    // taken. Its modification time is set ahead so the change is seen even on a coarse clock.
    write(&token_file, "");
    let later = std::time::SystemTime::now() + Duration::from_secs(60);
    std::fs::File::options().write(true).open(&token_file).unwrap().set_modified(later).unwrap();
    assert_eq!(relay.imds(STORAGE).await.status(), 200, "{}", relay.logs());
    let logs = relay.logs();
    let warning = "federated token file changed on disk but cannot be used; keeping the one read before";
    assert!(logs.contains(warning) && logs.contains("is empty") && logs.contains(&path), "{logs}");

    // Unreadable. The tests run as root, whom `chmod 000` does not stop reading, so the path
    // is replaced with a directory instead: it still exists, but cannot be read as a token.
    std::fs::remove_file(&token_file).unwrap();
    std::fs::create_dir(&token_file).unwrap();
    assert_eq!(relay.imds(GRAPH).await.status(), 200, "{}", relay.logs());
    assert!(relay.logs().contains("not a regular file"), "{}", relay.logs());
    let presented = entra.seen().iter().map(|r| r.form["client_assertion"].clone()).collect::<Vec<_>>();
    assert_eq!(presented, [token.clone(), token.clone(), token.clone()], "never an empty or missing assertion");

    // Written back with a newer token: the next exchange presents it, without a restart.
    let newer = service_account_token("system:serviceaccount:default:app-rotated");
    entra.accept_assertion(&newer, 70021);
    std::fs::remove_dir(&token_file).unwrap();
    write(&token_file, &newer);
    assert_eq!(relay.imds(MANAGEMENT).await.status(), 200, "{}", relay.logs());
    assert_eq!(entra.seen().last().unwrap().form["client_assertion"], newer);
    assert!(!relay.logs().contains(&token), "the token never reaches the logs");
}
