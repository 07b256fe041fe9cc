//! Bad and hostile clients: oversized requests, slow clients, too many connections, and a
//! shutdown while requests are in flight.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{FakeEntra, TestConfig, TestRelay, json};

/// Sends raw bytes and returns the status line of the answer ("" if the server hung up).
async fn raw(relay: &TestRelay, request: &[u8]) -> String {
    let addr = relay.base_url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).lines().next().unwrap_or("").to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_heads_and_targets_are_refused() {
    let entra = FakeEntra::start().await;
    let relay = TestRelay::serve(&TestConfig::client_secret(&entra), &[]).await;
    let big_header =
        format!("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000));
    assert!(raw(&relay, big_header.as_bytes()).await.contains(" 431 "));

    let long = relay.imds(&format!("api-version=2018-02-01&resource={}", "a".repeat(9000))).await;
    assert_eq!(long.status(), 414);
    assert_eq!(json(long).await["error"], "invalid_request");
    assert_eq!(entra.requests(), 0);
    // The server is unharmed.
    assert_eq!(relay.get("/healthz", &[]).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn token_endpoints_answer_get_only_and_any_slash_variant() {
    let entra = FakeEntra::start().await;
    let relay = TestRelay::serve(&TestConfig::client_secret(&entra), &[]).await;
    let post = raw(
        &relay,
        b"POST /metadata/identity/oauth2/token?api-version=2018-02-01&resource=r HTTP/1.1\r\nHost: x\r\n\
          Metadata: true\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(post.contains(" 405 "), "{post}");
    // Leading and trailing slashes are the same endpoint; other paths are not.
    let query = "api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net";
    for path in ["//metadata/identity/oauth2/token", "/metadata/identity/oauth2/token/"] {
        let response = relay.get(&format!("{path}?{query}"), &[("Metadata", "true")]).await;
        assert_eq!(response.status(), 200, "{path}");
    }
    let near_miss = relay.get(&format!("/metadata/identity/oauth2/tokens?{query}"), &[("Metadata", "true")]).await;
    assert_eq!(near_miss.status(), 404);
    assert_eq!(entra.requests(), 1, "POST and the unknown path never reach the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let entra = FakeEntra::start().await;
    let relay =
        TestRelay::serve(&TestConfig::client_secret(&entra).set("server.header_read_timeout_secs", 1), &[]).await;
    let addr = relay.base_url.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the server closed the slow connection");
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_beyond_the_limit_take_an_unused_slot_or_wait_for_one() {
    let entra = FakeEntra::start().await;
    let relay = TestRelay::serve(
        &TestConfig::client_secret(&entra).set("server.max_connections", 2).set("server.header_read_timeout_secs", 30),
        &[],
    )
    .await;
    let addr = relay.base_url.trim_start_matches("http://").to_owned();
    let client =
        |timeout| reqwest::Client::builder().no_proxy().pool_max_idle_per_host(0).timeout(timeout).build().unwrap();
    let healthz = format!("{}/healthz", relay.base_url);

    // Two connections that have sent nothing hold both slots: once they have been silent for a
    // second, a newcomer takes the older one's.
    let mut first = TcpStream::connect(&addr).await.unwrap();
    let second = TcpStream::connect(&addr).await.unwrap();
    let response = client(Duration::from_secs(10)).get(&healthz).send().await.expect("served");
    assert_eq!(response.status(), 200);
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), first.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the oldest unused connection was closed to make room");
    drop(second);

    // Two requests being answered (waiting for a slow authority) are never cut off: a third
    // client waits for one of them to finish.
    entra.set_delay(Duration::from_millis(3000));
    let slow = client(Duration::from_secs(30));
    let url = format!(
        "{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net",
        relay.base_url
    );
    let in_flight: Vec<_> = (0..2)
        .map(|_| {
            let request = slow.get(&url).header("Metadata", "true").send();
            tokio::spawn(request)
        })
        .collect();
    entra.wait_for_requests(1).await;
    assert_eq!(entra.requests(), 1);
    let blocked = client(Duration::from_millis(500)).get(&healthz).send().await;
    assert!(blocked.is_err(), "a third connection is not served while two requests are answered");
    for request in in_flight {
        assert_eq!(request.await.unwrap().expect("answered").status(), 200);
    }
    crate::support::eventually("a slot frees up", async || {
        client(Duration::from_secs(2)).get(&healthz).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_requests_in_flight_finish() {
    let entra = FakeEntra::start().await;
    entra.set_delay(Duration::from_millis(1500));
    let mut relay = TestRelay::serve(&TestConfig::client_secret(&entra), &[]).await;
    let url = format!(
        "{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net",
        relay.base_url
    );
    let in_flight = tokio::spawn(async move {
        reqwest::Client::builder().no_proxy().build().unwrap().get(url).header("Metadata", "true").send().await
    });
    entra.wait_for_requests(1).await;
    assert_eq!(entra.requests(), 1);
    let status = relay.terminate().await;
    assert_eq!(status.code(), Some(0));
    let response = in_flight.await.unwrap().expect("the request in flight was answered");
    assert_eq!(response.status(), 200);
}
