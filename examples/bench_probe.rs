//! Scenario benchmarks driven against the real binary, used by `bench/load.sh`:
//!
//! - `stampede BIN`: 1,000 concurrent requests over 100 new resources, with an authority that
//!   takes 200 ms per token; reports the upstream calls (must be exactly 100) and the p99.
//! - `memory BIN`: RSS idle, with 10,000 cached tokens (~1.2 KB each, from `--dev`), and the
//!   start-up time to the first answer.
//!
//! Loopback only; every loop is bounded.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let scenario = args.next().unwrap_or_default();
    let bin = args.next().unwrap_or_else(|| "target/release/tokenrelay".into());
    match scenario.as_str() {
        "stampede" => stampede(&bin).await,
        "memory" => memory(&bin).await,
        _ => eprintln!("usage: bench_probe stampede|memory PATH_TO_TOKENRELAY"),
    }
}

/// Starts tokenrelay with `args`, returning the child and its base URL.
async fn start(bin: &str, args: &[&str], env: &[(&str, &str)]) -> (Child, String, Duration) {
    let started = Instant::now();
    let mut child = Command::new(bin)
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("tokenrelay starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.unwrap().unwrap().unwrap();
    let url = first.split_whitespace().find(|w| w.starts_with("http://")).unwrap().to_owned();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url, started.elapsed())
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 * p / 100.0).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

async fn stampede(bin: &str) {
    // A stand-in authority: 200 ms per token, counting calls.
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let app = Router::new().route(
        "/{tenant}/oauth2/v2.0/token",
        post(move || {
            let counter = counter.clone();
            async move {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(200)).await;
                axum::Json(serde_json::json!({
                    "token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599,
                    "access_token": format!("{n:0>1400}"),
                }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let authority = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = std::env::temp_dir().join(format!("tokenrelay-stampede-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nidentity_header = \"x\"\n[upstream]\nauthority_host = \"{authority}\"\nmax_concurrent = 100\n\
             [[identities]]\nclient_id = \"c\"\ntenant_id = \"t\"\ncredentials = [{{ kind = \"client_secret\", secret = \"s\" }}]\n"
        ),
    )
    .unwrap();
    let (_child, url, _) =
        start(bin, &["serve", "--config", config.to_str().unwrap(), "--listen", "127.0.0.1:0"], &[]).await;
    let client = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(1000).build().unwrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let client = client.clone();
        let url = format!(
            "{url}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://r{}.example",
            i % 100
        );
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let status = client.get(url).header("Metadata", "true").send().await.map(|r| r.status().as_u16());
            (status, t.elapsed())
        }));
    }
    let mut latencies = Vec::new();
    let mut failures = 0;
    for task in tasks {
        let (status, elapsed) = task.await.unwrap();
        if !matches!(status, Ok(200)) {
            failures += 1;
        }
        latencies.push(elapsed);
    }
    latencies.sort();
    println!(
        "stampede: 1000 requests over 100 new resources, upstream 200 ms: {} upstream calls, {} failures, p50 {} ms, p99 {} ms, wall {} ms",
        calls.load(Ordering::SeqCst),
        failures,
        percentile(&latencies, 50.0).as_millis(),
        percentile(&latencies, 99.0).as_millis(),
        started.elapsed().as_millis()
    );
    let _ = std::fs::remove_dir_all(dir);
}

async fn memory(bin: &str) {
    let (child, url, ready) = start(bin, &["serve", "--dev", "--listen", "127.0.0.1:0"], &[]).await;
    let pid = child.id().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = rss_kib(pid);
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut token_bytes = 0;
    let batch = 50;
    for start in (0..10_000).step_by(batch) {
        let mut tasks = Vec::new();
        for i in start..start + batch {
            let client = client.clone();
            let url =
                format!("{url}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://r{i}.example");
            tasks.push(tokio::spawn(async move {
                let body: serde_json::Value =
                    client.get(url).header("Metadata", "true").send().await.unwrap().json().await.unwrap();
                body["access_token"].as_str().map_or(0, str::len)
            }));
        }
        for task in tasks {
            token_bytes = task.await.unwrap();
        }
    }
    let filled = rss_kib(pid);
    println!(
        "memory: start-up to listening {} ms; RSS idle {:.1} MiB; with 10,000 cached tokens ({} bytes each) {:.1} MiB",
        ready.as_millis(),
        idle as f64 / 1024.0,
        token_bytes,
        filled as f64 / 1024.0
    );
}
