//! The `fleet` probe: 20 relays sharing one local Redis server (`[cache.shared]`,
//! docs/shared-cache.md). Upstream calls of a rollout, the latency of a shared-cache hit
//! against a local hit and an upstream call, and what callers see when the server is killed.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::authority::Authority;
use crate::relay::{self, Relay, Scratch, Settings};
use crate::{percentile, sorted_latencies, tokens};

const RELAYS: usize = 20;
const RESOURCES: usize = 5;
/// Requests per resource per relay in the rollout: several callers of each pod ask at once.
const CALLERS: usize = 4;
/// What the stand-in authority takes to answer in the rollout phases (Entra's token endpoint
/// answers in tens to hundreds of milliseconds).
const AUTHORITY_DELAY: Duration = Duration::from_millis(100);
/// Requests per latency figure.
const SAMPLES: usize = 200;

/// A `redis-server` on a free loopback port, persistence off; killed when dropped.
struct Server {
    child: Option<Child>,
    port: u16,
    _dir: Scratch,
}

impl Server {
    fn start() -> Self {
        let dir = Scratch::new("fleet-redis");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server)");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if ping(port) {
                break;
            }
            assert!(Instant::now() < deadline, "redis-server did not answer on port {port}");
            std::thread::sleep(Duration::from_millis(10));
        }
        Self { child: Some(child), port, _dir: dir }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `PING` in the inline protocol; true on `+PONG`.
fn ping(port: u16) -> bool {
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut answer = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut answer).is_ok() && &answer == b"+PONG\r\n"
}

/// The probe's configuration with a `[cache.shared]` table against `port`, if any.
fn config(dir: &Path, authority: &str, shared: Option<(u16, &Path)>) -> PathBuf {
    let path = Settings { authority, max_concurrent: 16, persistence: None, prefetch: None }.write(dir);
    if let Some((port, key)) = shared {
        let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        writeln!(file, "\n[cache.shared]\nurl = \"redis://127.0.0.1:{port}\"\nkey_file = \"{}\"", key.display())
            .unwrap();
    }
    path
}

/// Starts `count` relays on `config` and waits until each is ready.
async fn start_relays(bin: &str, config: &Path, count: usize, client: &reqwest::Client) -> Vec<Relay> {
    let relays: Vec<Relay> = (0..count).map(|_| Relay::spawn(bin, config, &[])).collect();
    for relay in &relays {
        relay.wait_ready(client).await;
    }
    relays
}

/// Every relay's callers ask for the same `RESOURCES` resources at once; returns the failures
/// and the wall time with the latency percentiles.
async fn rollout_requests(relays: &[Relay], client: &reqwest::Client, offset: usize) -> (usize, String) {
    let started = Instant::now();
    let mut requests = Vec::new();
    for relay in relays {
        for resource in 0..RESOURCES {
            for _ in 0..CALLERS {
                let (client, url) = (client.clone(), relay.url.clone());
                requests.push(tokio::spawn(async move {
                    relay::get_token(&client, &url, &tokens::resource(offset + resource)).await
                }));
            }
        }
    }
    let mut outcomes = Vec::new();
    for request in requests {
        outcomes.push(request.await.unwrap());
    }
    let wall = started.elapsed();
    let sorted = sorted_latencies(&outcomes);
    let summary = format!(
        "wall {} ms, latency p50 {} / p99 {} / max {} ms",
        wall.as_millis(),
        percentile(&sorted, 50.0).as_millis(),
        percentile(&sorted, 99.0).as_millis(),
        sorted.last().unwrap().as_millis()
    );
    (relay::failures(&outcomes), summary)
}

/// p50 / p99 in milliseconds of `resources` requested once each, one after another.
async fn latency(client: &reqwest::Client, url: &str, resources: impl Iterator<Item = String>) -> String {
    let mut outcomes = Vec::new();
    for resource in resources {
        outcomes.push(relay::get_token(client, url, &resource).await);
    }
    assert_eq!(relay::failures(&outcomes), 0, "every latency sample is served");
    let sorted = sorted_latencies(&outcomes);
    format!(
        "p50 {:.2} ms, p99 {:.2} ms",
        percentile(&sorted, 50.0).as_secs_f64() * 1000.0,
        percentile(&sorted, 99.0).as_secs_f64() * 1000.0
    )
}

pub async fn fleet(bin: &str) {
    let scratch = Scratch::new("fleet");
    let key = scratch.0.join("key");
    std::fs::write(&key, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let client = relay::client();

    // 1. Rollouts: without the shared cache, onto an empty server, and a restart of every relay
    //    while the server holds the tokens.
    let authority = Authority::start(AUTHORITY_DELAY).await;
    let alone = config(&scratch.0.join("alone").tap_dir(), &authority.url, None);
    let relays = start_relays(bin, &alone, RELAYS, &client).await;
    let (failures, wall) = rollout_requests(&relays, &client, 0).await;
    println!(
        "fleet: rollout of {RELAYS} relays x {RESOURCES} resources ({CALLERS} callers each, authority {} ms), no \
         shared cache: {} upstream calls, {failures} failures, {wall}",
        AUTHORITY_DELAY.as_millis(),
        authority.calls()
    );
    for relay in relays {
        relay.kill().await;
    }

    let mut server = Server::start();
    let authority = Authority::start(AUTHORITY_DELAY).await;
    let shared = config(&scratch.0.join("shared").tap_dir(), &authority.url, Some((server.port, &key)));
    let relays = start_relays(bin, &shared, RELAYS, &client).await;
    let (failures, wall) = rollout_requests(&relays, &client, 0).await;
    println!(
        "fleet: the same onto an empty shared cache: {} upstream calls (target {RESOURCES}), {failures} failures, \
         {wall}",
        authority.calls()
    );
    for relay in relays {
        relay.kill().await;
    }
    let before = authority.calls();
    let relays = start_relays(bin, &shared, RELAYS, &client).await;
    let (failures, wall) = rollout_requests(&relays, &client, 0).await;
    println!(
        "fleet: all {RELAYS} restarted, the shared cache holding the tokens: {} upstream calls, {failures} failures, \
         {wall}",
        authority.calls() - before
    );

    // 2. Latency, against an authority that answers at once (what is measured is tokenrelay and
    //    the server, not Entra): a local hit, a shared-cache hit (relay b takes what relay a
    //    fetched), an upstream call with the shared cache (miss, lease, fetch, write) and
    //    without it.
    let instant = Authority::start(Duration::ZERO).await;
    let quick_shared = config(&scratch.0.join("quick-shared").tap_dir(), &instant.url, Some((server.port, &key)));
    let quick_alone = config(&scratch.0.join("quick-alone").tap_dir(), &instant.url, None);
    let pair = start_relays(bin, &quick_shared, 2, &client).await;
    let single = start_relays(bin, &quick_alone, 1, &client).await;
    let base = 10_000;
    let upstream_shared = latency(&client, &pair[0].url, (base..base + SAMPLES).map(tokens::resource)).await;
    let shared_hit = latency(&client, &pair[1].url, (base..base + SAMPLES).map(tokens::resource)).await;
    let local_hit = latency(&client, &pair[1].url, (0..SAMPLES).map(|_| tokens::resource(base))).await;
    let upstream_alone =
        latency(&client, &single[0].url, (base + SAMPLES..base + 2 * SAMPLES).map(tokens::resource)).await;
    println!(
        "fleet: latency, {SAMPLES} sequential requests each, authority answering at once ({} upstream calls, \
         expected {}):",
        instant.calls(),
        2 * SAMPLES
    );
    println!("  local hit                           {local_hit}");
    println!("  shared-cache hit                    {shared_hit}");
    println!("  upstream call, shared cache on      {upstream_shared}");
    println!("  upstream call, no shared cache      {upstream_alone}");

    // 3. The server killed under the 20 relays: cached tokens and new ones are still served.
    server.kill();
    let before = authority.calls();
    let (failures, wall) = rollout_requests(&relays, &client, 0).await;
    println!(
        "fleet: server killed; the {RELAYS} relays asked for their {RESOURCES} cached resources again: {} upstream \
         calls, {failures} failures, {wall}",
        authority.calls() - before
    );
    let before = authority.calls();
    let (failures, wall) = rollout_requests(&relays, &client, 100).await;
    println!(
        "fleet: server killed; {RESOURCES} new resources on every relay: {} upstream calls (each relay alone), \
         {failures} failures, {wall}",
        authority.calls() - before
    );
    let down = relays.iter().filter(|r| r.log().iter().any(|l| l.contains("shared token cache down"))).count();
    println!("fleet: {down} of {RELAYS} relays logged \"shared token cache down\"");
    for relay in relays.into_iter().chain(pair).chain(single) {
        relay.kill().await;
    }
}

/// Creates a directory and returns it.
trait TapDir {
    fn tap_dir(self) -> Self;
}

impl TapDir for PathBuf {
    fn tap_dir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}
