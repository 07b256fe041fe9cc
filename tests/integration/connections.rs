//! Peers that hold connections: readers that stall, connections that sit idle, floods of the
//! admin listener, and scrapes in a loop. Each has a bound, and well-behaved clients and the
//! kubelet's probes are still served while it is reached.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;

use crate::support::{FakeEntra, TestConfig, TestRelay, VAULT, eventually};

/// [`TestConfig::client_secret`] logging warnings only: a flood's thousands of request lines
/// would slow the relay down, not the test's subject.
fn quiet(entra: &FakeEntra) -> TestConfig {
    TestConfig::client_secret(entra).replace("log.level", "warn")
}

fn addr(base_url: &str) -> SocketAddr {
    base_url.trim_start_matches("http://").parse().unwrap()
}

/// The admin listener's base URL (the second line the relay prints).
fn admin_url(relay: &TestRelay) -> String {
    relay.stdout_lines[1].split_whitespace().find(|w| w.starts_with("http://")).unwrap().to_owned()
}

/// A peer that pipelines `request` without end and never reads. Once the answers fill the
/// socket buffers the server's writes wait, and the peer's writes then wait on the server's
/// full receive buffer. Returns once connected (so peers connected in turn are accepted in
/// turn); the task resolves when the server ends the connection (the peer's write fails), with
/// the error.
async fn stalled_reader(addr: SocketAddr, request: &str) -> JoinHandle<io::Error> {
    let socket = TcpSocket::new_v4().unwrap();
    // A small receive window, so that fewer answers fill the buffers.
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let batch = request.repeat(32).into_bytes();
    tokio::spawn(async move {
        loop {
            if let Err(error) = stream.write_all(&batch).await {
                return error;
            }
        }
    })
}

/// `count` stalled readers of `path`, connected one after the other.
async fn stalled_readers(addr: SocketAddr, path: &str, count: usize) -> Vec<JoinHandle<io::Error>> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut readers = Vec::with_capacity(count);
    for _ in 0..count {
        readers.push(stalled_reader(addr, &request).await);
    }
    readers
}

/// Waits for every stalled reader to be disconnected by the server, for at most `within`.
async fn all_disconnected(readers: Vec<JoinHandle<io::Error>>, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    for reader in readers {
        let error = tokio::time::timeout_at(deadline, reader)
            .await
            .unwrap_or_else(|_| panic!("a stalled reader was still connected after {within:?}"))
            .unwrap();
        assert!(
            matches!(error.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe),
            "the server ended the connection: {error}"
        );
    }
}

/// One probe as the kubelet sends it: a fresh connection, a 2-second timeout.
async fn probe(url: &str) -> bool {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    client.get(url).send().await.is_ok_and(|r| r.status() == 200)
}

/// The process's resident set size, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS in /proc/PID/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_readers_are_disconnected_after_the_write_timeout() {
    let entra = FakeEntra::start().await;
    // Fewer stalled peers than slots: nothing needs their slots, only the write timeout ends
    // them.
    let relay =
        TestRelay::serve(&quiet(&entra).set("server.max_connections", 4).set("server.write_timeout_secs", 1), &[])
            .await;
    let start = Instant::now();
    let readers = stalled_readers(addr(&relay.base_url), "/metrics", 2).await;
    all_disconnected(readers, Duration::from_secs(20)).await;
    assert!(start.elapsed() >= Duration::from_secs(1), "not before the write timeout");
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_readers_are_disconnected_and_do_not_starve_other_clients() {
    let entra = FakeEntra::start().await;
    let toml = quiet(&entra)
        .set("server.max_connections", 4)
        .set("server.write_timeout_secs", 1)
        .set("server.admin_listen", "127.0.0.1:0");
    let relay = TestRelay::serve_lines(&toml, &[], 2).await;
    let token_url = format!("{}/metadata/identity/oauth2/token?{VAULT}", relay.base_url);
    // Each request on a connection of its own, so that no idle kept-alive connection holds a
    // slot.
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let response = client.get(&token_url).header("Metadata", "true").send().await.unwrap();
    assert_eq!(response.status(), 200, "the token is cached");
    // Scrapes fill the buffers fastest (their answer is the largest); twice as many stalled
    // peers as there are slots take every slot and wait for more.
    let readers = stalled_readers(addr(&relay.base_url), "/metrics", 8).await;

    // The admin listener has slots of its own.
    assert!(probe(&format!("{}/healthz", admin_url(&relay))).await, "the admin listener answers during the flood");
    // A well-behaved client gets its token once the write timeout has dropped the stalled
    // peers ahead of it (without it, never).
    let start = Instant::now();
    let response =
        client.get(&token_url).header("Metadata", "true").send().await.expect("a well-behaved client is served");
    assert_eq!(response.status(), 200);
    assert!(start.elapsed() < Duration::from_secs(10), "served after {:?}", start.elapsed());
    all_disconnected(readers, Duration::from_secs(20)).await;
    assert_eq!(entra.requests(), 1, "every answer came from the cache");
}

#[tokio::test(flavor = "multi_thread")]
async fn probes_recover_within_seconds_while_the_admin_listener_is_flooded() {
    let entra = FakeEntra::start().await;
    // The token listener's limit is as small as the admin one, so the test does not depend on
    // which limit applies to the admin listener: either way its slots are taken.
    let toml = quiet(&entra)
        .set("server.max_connections", 4)
        .set("server.admin_max_connections", 4)
        .set("server.write_timeout_secs", 1)
        .set("server.admin_listen", "127.0.0.1:0");
    let relay = TestRelay::serve_lines(&toml, &[], 2).await;
    let admin = admin_url(&relay);
    let healthz = format!("{admin}/healthz");
    assert!(probe(&healthz).await);
    let rss_before = rss_kib(relay.pid());

    // Scrapes of /metrics, the admin listener's largest answer, pipelined by twice as many
    // peers as it has slots.
    let readers = stalled_readers(addr(&admin), "/metrics", 8).await;
    let flood = Instant::now();
    let mut rss_peak = rss_before;
    let mut answered_after = None;
    while flood.elapsed() < Duration::from_secs(20) {
        rss_peak = rss_peak.max(rss_kib(relay.pid()));
        if probe(&healthz).await {
            answered_after = Some(flood.elapsed());
            break;
        }
    }
    let answered_after = answered_after.expect("a probe was answered while the admin listener was flooded");
    assert!(answered_after < Duration::from_secs(15), "the first probe answered after {answered_after:?}");
    all_disconnected(readers, Duration::from_secs(20)).await;
    rss_peak = rss_peak.max(rss_kib(relay.pid()));
    assert!(probe(&healthz).await);
    // Four connections' buffers at most; the stalled ones are gone, not accumulated.
    assert!(rss_peak < rss_before + 32 * 1024, "RSS went from {rss_before} KiB to {rss_peak} KiB");
}

/// Reads one response with a `Content-Length` body and returns its head.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut chunk = [0; 4096];
    loop {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the connection ended mid-response: {}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&received);
        if let Some(end) = text.find("\r\n\r\n") {
            let head = text[..end].to_ascii_lowercase();
            let length: usize =
                head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap());
            if received.len() >= end + 4 + length {
                return head;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_kept_alive_connections_are_closed_after_the_keep_alive_timeout() {
    let entra = FakeEntra::start().await;
    // The header read timeout is far longer, so it cannot be what closes the connection.
    let relay = TestRelay::serve(
        &quiet(&entra).set("server.keep_alive_timeout_secs", 1).set("server.header_read_timeout_secs", 30),
        &[],
    )
    .await;
    let mut stream = TcpStream::connect(addr(&relay.base_url)).await.unwrap();

    // A request that takes longer than the keep-alive timeout is not cut off: the connection
    // is busy, not idle.
    entra.set_delay(Duration::from_millis(2500));
    let request =
        format!("GET /metadata/identity/oauth2/token?{VAULT} HTTP/1.1\r\nHost: 127.0.0.1\r\nMetadata: true\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    assert!(read_response(&mut stream).await.starts_with("http/1.1 200"));
    // The connection stays open for more requests within the timeout.
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert!(read_response(&mut stream).await.starts_with("http/1.1 200"));

    let idle = Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
    assert!(
        closed.as_ref().is_ok_and(|r| r.is_ok()),
        "the server did not close the idle connection cleanly within 10 s: {closed:?} after {:?}",
        idle.elapsed()
    );
    assert!(rest.is_empty(), "nothing more was sent: {}", String::from_utf8_lossy(&rest));
    assert!(idle.elapsed() >= Duration::from_millis(900), "not before the timeout: {:?}", idle.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_rendered_at_most_once_a_second() {
    let entra = FakeEntra::start().await;
    let relay = TestRelay::serve(&TestConfig::client_secret(&entra), &[]).await;
    let refused = "tokenrelay_requests_total{flavour=\"app_service\",status=\"401\"}";
    let scrape = async || relay.metrics().await;
    let refuse = async || {
        let response = relay.get("/msi/token?resource=r", &[("X-IDENTITY-HEADER", "wrong")]).await;
        assert_eq!(response.status(), 401);
    };
    // Two scrapes with a counted request between them share a rendering when both fall within
    // a second of the first, which renders (nothing scraped before it). On a machine too slow
    // for that, wait out the rendering and try again.
    let (first, second) = loop {
        let start = Instant::now();
        let first = scrape().await;
        refuse().await;
        let second = scrape().await;
        if start.elapsed() < Duration::from_millis(900) {
            break (first, second);
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
    };
    assert_eq!(first, second, "the second scrape is served the first rendering");
    // A rendering lasts a second; a later one shows the request.
    let count =
        |text: &str| text.lines().find_map(|l| l.strip_prefix(refused)).map_or(0, |v| v.trim().parse::<u64>().unwrap());
    eventually("a rendering counting the refusal", async || count(&scrape().await) > count(&first)).await;
    let later = scrape().await;
    assert_eq!(count(&later), count(&first) + 1, "{later}");
}
