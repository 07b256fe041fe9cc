//! The `users` probe: the user-token endpoints (docs/on-behalf-of.md) under `--dev`, where the
//! development issuer mints the users' tokens and the on-behalf-of exchange runs in process, so
//! nothing but the relay's own work is measured. RSS idle, after minting, and holding 10,000
//! users' tokens; then the latency of `/Validate` (a warm key set) and of
//! `/AuthorizationHeader/graph` cache hits, checked to be hits by comparing each answer with
//! the one the exchange gave.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::relay::{self, Relay, Scratch};
use crate::{TOKENS, percentile};

/// Requests in flight at once during the sweeps.
const CONCURRENCY: usize = 32;

/// One request of a sweep: its status, its latency and what it answered.
struct Answer {
    status: u16,
    latency: Duration,
    body: serde_json::Value,
}

pub async fn users(bin: &str) {
    let scratch = Scratch::new("users");
    let config = scratch.0.join("config.toml");
    // The development issuer, with room for every user's token (the default max_entries,
    // 1,000, would evict most of them).
    std::fs::write(&config, format!("[dev]\nenabled = true\n[cache]\nmax_entries = {}\n", 2 * TOKENS)).unwrap();
    let relay = Relay::spawn(bin, &config, &[]);
    let client = relay::client();
    relay.wait_ready(&client).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = relay.memory();

    let minted = sweep(&client, &relay.url, TOKENS, |client, base, i| {
        client.post(format!("{base}/dev/user-token")).body(format!(r#"{{"user":"user{i}@bench.example"}}"#))
    })
    .await;
    let users: Arc<Vec<String>> =
        Arc::new(minted.iter().map(|a| a.body["access_token"].as_str().unwrap_or_default().to_owned()).collect());
    let user_bytes = users.iter().map(String::len).sum::<usize>() / users.len().max(1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_minting = relay.memory();

    let header = |path: &'static str| {
        let users = users.clone();
        move |client: &reqwest::Client, base: &str, i: usize| {
            client.get(format!("{base}{path}")).header("Authorization", format!("Bearer {}", users[i]))
        }
    };
    let started = Instant::now();
    let exchanged = sweep(&client, &relay.url, TOKENS, header("/AuthorizationHeader/graph")).await;
    let exchange_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let holding = relay.memory();
    let downstream_bytes =
        exchanged.iter().map(|a| a.body["authorizationHeader"].as_str().map_or(0, str::len)).sum::<usize>()
            / exchanged.len().max(1);

    let hits = sweep(&client, &relay.url, TOKENS, header("/AuthorizationHeader/graph")).await;
    let same = hits.iter().zip(&exchanged).filter(|(hit, first)| hit.status == 200 && hit.body == first.body).count();
    let validated = sweep(&client, &relay.url, TOKENS, header("/Validate")).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = relay.memory();

    println!(
        "users: {TOKENS} users under --dev, {CONCURRENCY} requests at a time; user tokens {user_bytes} B, \
         downstream headers {downstream_bytes} B"
    );
    println!("  RSS idle {idle} | after minting {after_minting} ({} failures)", failures(&minted));
    println!(
        "  exchanges: {} failures, {:.1} s | RSS holding {TOKENS} users' tokens {holding}",
        failures(&exchanged),
        exchange_secs
    );
    println!(
        "  /AuthorizationHeader/graph again: {same} of {TOKENS} the same token (cache hits), {} failures, {}",
        failures(&hits),
        latencies(&hits)
    );
    println!("  /Validate: {} failures, {}", failures(&validated), latencies(&validated));
    println!("  RSS after the sweeps {after}");
    relay.stop().await;
}

/// Sends `count` requests built by `request` (given the index), `CONCURRENCY` at a time; the
/// answers come back in index order.
async fn sweep<F>(client: &reqwest::Client, base: &str, count: usize, request: F) -> Vec<Answer>
where
    F: Fn(&reqwest::Client, &str, usize) -> reqwest::RequestBuilder + Clone + Send + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (client, base, next, request) = (client.clone(), base.to_owned(), next.clone(), request.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= count {
                        return answers;
                    }
                    let started = Instant::now();
                    let (status, body) = match request(&client, &base, index).send().await {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            (status, response.json().await.unwrap_or(serde_json::Value::Null))
                        }
                        Err(_) => (0, serde_json::Value::Null),
                    };
                    answers.push((index, Answer { status, latency: started.elapsed(), body }));
                }
            })
        })
        .collect();
    let mut answers = Vec::with_capacity(count);
    for worker in workers {
        answers.extend(worker.await.unwrap());
    }
    answers.sort_by_key(|(index, _)| *index);
    answers.into_iter().map(|(_, answer)| answer).collect()
}

fn failures(answers: &[Answer]) -> usize {
    answers.iter().filter(|a| a.status != 200).count()
}

/// `p50 … ms, p99 … ms` of the answers' latencies.
fn latencies(answers: &[Answer]) -> String {
    let mut sorted: Vec<Duration> = answers.iter().map(|a| a.latency).collect();
    sorted.sort();
    format!(
        "p50 {:.2} ms, p99 {:.2} ms",
        percentile(&sorted, 50.0).as_secs_f64() * 1000.0,
        percentile(&sorted, 99.0).as_secs_f64() * 1000.0
    )
}
