//! Scenario probes against the real tokenrelay binary, each with a stand-in Entra authority
//! on loopback that counts what reaches it. Every token is a 1.5 KB JWT-shaped string
//! ([`tokens`]). Loopback only; every loop is bounded. How to run each probe and the latest
//! figures: docs/benchmarks.md.
//!
//! ```text
//! bash bench/build.sh
//! target/release/bench_probe PROBE [PATH_TO_TOKENRELAY]
//! ```

mod authority;
mod fleet;
mod relay;
mod tokens;
mod users;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use authority::{Authority, epoch_now};
use relay::{Relay, Scratch, Settings};
use tokens::{StoreFile, TOKEN_BYTES};

const USAGE: &str = "usage: bench_probe PROBE [PATH_TO_TOKENRELAY]   (default target/release/tokenrelay)

probes (each but soak takes under about two minutes):
  stampede       1,000 concurrent requests over 100 new resources, authority answering in 200 ms:
                 upstream calls (must be 100) and latency
  memory         RSS idle, holding 10,000 tokens, and after a load run (5 x 10,000 cache hits,
                 256 at a time); 3 fresh processes. The relay inherits the environment, so
                 MALLOC_ARENA_MAX=2 bench_probe memory ... measures that allocator setting
  startup        spawn to the first /readyz 200 and to the first served token, with 10,000
                 persisted tokens (encrypted store) and without; 10 runs each; RSS when ready
  coldstart      spawn to the first /readyz 200 with one prefetched resource against an
                 authority answering in 100 ms; 20 runs: the total and tokenrelay's own share
                 (the total minus the authority's 100 ms)
  refresh-storm  10,000 persisted tokens sharing one refresh point, swept by 32 clients while
                 an authority answering in 50 ms counts calls, concurrency and arrival times;
                 then the refresh points written back to the store
  flood          one caller asks for 20,000 distinct resources with persistence on and the
                 default max_entries (1,000), the new-key limit lifted: RSS and the cache file's
                 size, then a restart: RSS when ready, its peak, and after the next save.
                 BENCH_OLD_CONFIG=1 leaves out the settings a build before the new-key limit
                 refuses
  soak           SOAK_SECS (default 300) of wrk, 64 connections, on the application's token
                 while a flood client asks for distinct new resources over 4 connections, the
                 cache at its defaults (new-key limit on): errors, RSS 30 s after against
                 before, and whether the application's token is still a cache hit. Needs wrk
  users          the user-token endpoints under --dev: RSS idle, after minting and holding 10,000
                 users' tokens (one on-behalf-of exchange each), then latency of
                 /AuthorizationHeader cache hits (checked to be the same tokens) and of /Validate
  fleet          20 relays sharing one local redis-server ([cache.shared]): upstream calls of a
                 rollout (20 relays x 5 resources) without it, onto an empty server and after
                 restarting all 20; latency of a local hit, a shared-cache hit and an upstream
                 call; then the server killed. Needs redis-server

Persisted stores are written as this build writes them (format version 2); BENCH_STORE_V1=1
writes format version 1 instead, as releases before the journal did and can read";

/// How far above its level before the load the soak allows the relay's RSS to stay, 30 s after
/// it: the flood's tokens under the default new-key limit (a few hundred of 1.5 KB) and what
/// the allocator keeps of 64 connections' buffers fit well within it; a leak per request over
/// millions of requests does not.
const SOAK_RSS_SLACK_MIB: f64 = 8.0;

/// Distinct tokens held by the memory, startup and refresh-storm probes.
const TOKENS: usize = 10_000;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let probe = args.next().unwrap_or_default();
    let bin = args.next().unwrap_or_else(|| "target/release/tokenrelay".into());
    match probe.as_str() {
        "stampede" => stampede(&bin).await,
        "memory" => memory(&bin).await,
        "startup" => startup(&bin).await,
        "coldstart" => coldstart(&bin).await,
        "refresh-storm" => refresh_storm(&bin).await,
        "flood" => flood(&bin).await,
        "soak" => soak(&bin).await,
        "fleet" => fleet::fleet(&bin).await,
        "users" => users::users(&bin).await,
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
}

/// Many callers, few keys, a slow authority: exactly one upstream call per key.
async fn stampede(bin: &str) {
    let authority = Authority::start(Duration::from_millis(200)).await;
    let scratch = Scratch::new("stampede");
    let settings = Settings { authority: &authority.url, max_concurrent: 100, persistence: None, prefetch: None };
    let relay = Relay::spawn(bin, &settings.write(&scratch.0), &[]);
    let client = relay::client();
    relay.wait_ready(&client).await;
    let started = Instant::now();
    let requests: Vec<_> = (0..1000)
        .map(|i| {
            let (client, url) = (client.clone(), relay.url.clone());
            tokio::spawn(async move { relay::get_token(&client, &url, &tokens::resource(i % 100)).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for request in requests {
        outcomes.push(request.await.unwrap());
    }
    let latencies = sorted_latencies(&outcomes);
    println!(
        "stampede: 1,000 requests over 100 new resources, upstream 200 ms: {} upstream calls, {} failures, \
         p50 {} ms, p99 {} ms, wall {} ms",
        authority.calls(),
        relay::failures(&outcomes),
        percentile(&latencies, 50.0).as_millis(),
        percentile(&latencies, 99.0).as_millis(),
        started.elapsed().as_millis()
    );
    relay.kill().await;
}

/// RSS idle, holding 10,000 tokens, and after a load run, in three fresh processes.
async fn memory(bin: &str) {
    const RUNS: usize = 3;
    const LOAD_SWEEPS: usize = 5;
    let authority = Authority::start(Duration::ZERO).await;
    let arenas = std::env::var("MALLOC_ARENA_MAX").unwrap_or_else(|_| "unset (glibc default)".into());
    println!("memory: {TOKENS} tokens of {TOKEN_BYTES} bytes; MALLOC_ARENA_MAX {arenas}");
    for run in 1..=RUNS {
        let scratch = Scratch::new("memory");
        let settings = Settings { authority: &authority.url, max_concurrent: 16, persistence: None, prefetch: None };
        let relay = Relay::spawn(bin, &settings.write(&scratch.0), &[]);
        let client = relay::client();
        relay.wait_ready(&client).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let idle = relay.memory();

        let calls_before = authority.calls();
        let filled = relay::sweep(&client, &relay.url, TOKENS, 50).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let holding = relay.memory();
        let fill_calls = authority.calls() - calls_before;
        let held = relay.cached_tokens(&client).await;

        let mut load_failures = 0;
        for _ in 0..LOAD_SWEEPS {
            load_failures += relay::failures(&relay::sweep(&client, &relay.url, TOKENS, 256).await);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after_load = relay.memory();
        let load_calls = authority.calls() - calls_before - fill_calls;
        println!(
            "  run {run}: idle {idle} | holding {held} tokens ({fill_calls} upstream calls, {} failures) \
             {holding} | after {} cache-hit requests, 256 at a time ({load_calls} upstream calls, \
             {load_failures} failures) {after_load}",
            relay::failures(&filled),
            LOAD_SWEEPS * TOKENS,
        );
        // SIGTERM rather than SIGKILL, so a heap profiler wrapped around the relay writes its report.
        relay.stop().await;
    }
}

/// One caller, 20,000 distinct resources, persistence on, default `max_entries`: what the
/// process and the file hold, and what the next start costs.
async fn flood(bin: &str) {
    const FLOOD: usize = 20_000;
    let authority = Authority::start(Duration::ZERO).await;
    let scratch = Scratch::new("flood");
    let store = StoreFile::write(&scratch.0, Vec::new(), epoch_now());
    let limit = if std::env::var_os("BENCH_OLD_CONFIG").is_some() {
        ""
    } else {
        "new_keys_per_minute = 100000000\nnew_keys_burst = 100000000\n"
    };
    let config = scratch.0.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nidentity_header = \"bench-probe-0123456789\"\n[upstream]\nauthority_host = \"{}\"\n[cache]\n{limit}{}\n\
             [[identities]]\nname = \"app\"\nclient_id = \"{}\"\ntenant_id = \"{}\"\ndefault = true\n\
             credentials = [{{ kind = \"client_secret\", secret = \"s\" }}]\n",
            authority.url,
            store.config(),
            tokens::CLIENT_ID,
            tokens::TENANT_ID,
        ),
    )
    .unwrap();
    // The cache file and its journal together.
    let file_mib = || store.on_disk().0 as f64 / 1024.0 / 1024.0;
    let client = relay::client();

    let relay = Relay::spawn(bin, &config, &[]);
    relay.wait_ready(&client).await;
    let idle = relay.memory();
    let outcomes = relay::sweep(&client, &relay.url, FLOOD, 32).await;
    // Past the writer's 0.5 s batch window, so the file is what the flood left.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = relay.cached_tokens(&client).await;
    println!(
        "flood: {FLOOD} distinct resources ({} failures, {} upstream calls): idle {idle}, after {} (peak {:.1} MiB); \
         holding {held} tokens; file {:.1} MiB",
        relay::failures(&outcomes),
        authority.calls(),
        relay.memory(),
        relay.peak_mib(),
        file_mib(),
    );
    relay.stop().await;
    println!("  after SIGTERM: file {:.1} MiB, {} tokens", file_mib(), store.read().len());

    let restarted = Relay::spawn(bin, &config, &[]);
    let ready = restarted.wait_ready(&client).await;
    let held = restarted.cached_tokens(&client).await;
    println!(
        "  restart: ready in {} ms holding {held} tokens: {} (peak {:.1} MiB)",
        ready.as_millis(),
        restarted.memory(),
        restarted.peak_mib()
    );
    let written = store.on_disk().1;
    let outcome = relay::get_token(&client, &restarted.url, &tokens::resource(FLOOD)).await;
    assert_eq!(outcome.status, Some(200));
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.on_disk().1 == written {
        assert!(Instant::now() < deadline, "no write within 10 s of a new token");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    println!(
        "  after the next save: {} (peak {:.1} MiB); file {:.1} MiB",
        restarted.memory(),
        restarted.peak_mib(),
        file_mib()
    );
    restarted.stop().await;
}

/// The acceptance soak: sustained cache hits on the application's token with a concurrent
/// flood of new resources, the cache at its default settings. Passes when the application's
/// requests saw no error, RSS 30 s after the load is within [`SOAK_RSS_SLACK_MIB`] of its level
/// before, and the application's token is still served from the cache.
async fn soak(bin: &str) {
    const CONNECTIONS: usize = 64;
    const FLOOD_CONNECTIONS: usize = 4;
    const SETTLE: Duration = Duration::from_secs(30);
    const APP: &str = "https://app.example";
    let secs: u64 = std::env::var("SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
    let authority = Authority::start(Duration::ZERO).await;
    let scratch = Scratch::new("soak");
    // No [cache] table: max_entries, new_keys_per_minute and new_keys_burst at their defaults,
    // which is what the soak is about.
    let config = scratch.0.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nidentity_header = \"bench-probe-0123456789\"\n[upstream]\nauthority_host = \"{}\"\n\
             [[identities]]\nname = \"app\"\nclient_id = \"{}\"\ntenant_id = \"{}\"\ndefault = true\n\
             credentials = [{{ kind = \"client_secret\", secret = \"s\" }}]\n",
            authority.url,
            tokens::CLIENT_ID,
            tokens::TENANT_ID,
        ),
    )
    .unwrap();
    let script = scratch.0.join("latency.lua");
    std::fs::write(&script, include_str!("../latency.lua")).unwrap();
    let app_calls = || authority.log().iter().filter(|c| c.scope == format!("{APP}/.default")).count();

    let relay = Relay::spawn(bin, &config, &[]);
    let client = relay::client();
    relay.wait_ready(&client).await;
    let mut app_token = None;
    for _ in 0..5 {
        let outcome = relay::get_token(&client, &relay.url, APP).await;
        assert_eq!(outcome.status, Some(200), "{:?}", relay.log());
        assert!(app_token.is_none() || app_token == outcome.token, "the application's token changed");
        app_token = outcome.token;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = relay.pid();
    let (rss_before, anon_before) = (relay::rss_mib(pid), relay::anon_mib(pid));
    let app_calls_before = app_calls();
    println!(
        "soak: {secs} s, wrk {CONNECTIONS} connections on the application's token (IMDS) and a flood of new resources \
         over {FLOOD_CONNECTIONS} connections; cache at its defaults; load average before {}",
        load_average()
    );
    println!(
        "  before: RSS {rss_before:.1} MiB (anonymous {anon_before:.1}); upstream calls for the application's token \
         {app_calls_before}"
    );

    let url = format!("{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource={APP}", relay.url);
    let wrk = tokio::process::Command::new("wrk")
        .args(["-t2", &format!("-c{CONNECTIONS}"), &format!("-d{secs}s"), "-H", "Metadata: true", "-s"])
        .arg(&script)
        .arg(&url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("wrk runs (apt-get install wrk)");
    let deadline = Instant::now() + Duration::from_secs(secs);
    let next = Arc::new(AtomicUsize::new(0));
    let flood: Vec<_> = (0..FLOOD_CONNECTIONS)
        .map(|_| {
            let (client, base, next) = (client.clone(), relay.url.clone(), next.clone());
            tokio::spawn(async move {
                // [200, 429, any other status, no answer]
                let mut counts = [0u64; 4];
                while Instant::now() < deadline {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let url = format!(
                        "{base}/metadata/identity/oauth2/token?api-version=2018-02-01&resource={}",
                        tokens::resource(index)
                    );
                    let answer = client.get(url).header("Metadata", "true").send().await;
                    let slot = match answer {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            match response.bytes().await {
                                Err(_) => 3,
                                Ok(_) if status == 200 => 0,
                                Ok(_) if status == 429 => 1,
                                Ok(_) => 2,
                            }
                        }
                        Err(_) => 3,
                    };
                    counts[slot] += 1;
                }
                counts
            })
        })
        .collect();
    // RSS once a second during the load.
    let sampler = tokio::spawn(async move {
        let mut peak: f64 = 0.0;
        while Instant::now() < deadline {
            peak = peak.max(relay::rss_mib(pid));
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        peak
    });
    let wrk = tokio::time::timeout(Duration::from_secs(secs + 60), wrk.wait_with_output())
        .await
        .expect("wrk ends")
        .expect("wrk's output");
    let mut flood_counts = [0u64; 4];
    for worker in flood {
        for (total, count) in flood_counts.iter_mut().zip(worker.await.unwrap()) {
            *total += count;
        }
    }
    let peak_sampled = sampler.await.unwrap();
    let load_after = load_average();
    let wrk_out = String::from_utf8_lossy(&wrk.stdout);
    let result = wrk_out.lines().find(|l| l.starts_with("RESULT")).unwrap_or_default().to_owned();
    let field = |name: &str| -> Option<f64> {
        result.split_whitespace().find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
    };
    let wrk_errors = field("errors");
    let socket_errors = wrk_out.lines().find(|l| l.contains("Socket errors")).map(str::trim).unwrap_or("none");
    let non_2xx = wrk_out.lines().find(|l| l.contains("Non-2xx")).map(str::trim).unwrap_or("none");
    println!(
        "  application (wrk): {} requests, {:.0} req/s, p50 {} µs, p99 {} µs, p99.9 {} µs; errors {} \
         (socket errors: {socket_errors}; non-2xx: {non_2xx}); wrk exit {}",
        field("requests").unwrap_or(0.0),
        field("rps").unwrap_or(0.0),
        field("p50_us").unwrap_or(0.0),
        field("p99_us").unwrap_or(0.0),
        field("p999_us").unwrap_or(0.0),
        wrk_errors.map_or("unknown".into(), |e| e.to_string()),
        wrk.status
    );
    let [flood_ok, flood_429, flood_other, flood_failed] = flood_counts;
    println!(
        "  flood: {} requests for distinct new resources: {flood_ok} served (200), {flood_429} refused by the \
         new-key limit (429), {flood_other} other statuses, {flood_failed} without an answer",
        flood_counts.iter().sum::<u64>()
    );
    println!(
        "  during: RSS peak {:.1} MiB (sampled each second {peak_sampled:.1}); load average at the end {load_after}",
        relay.peak_mib()
    );

    tokio::time::sleep(SETTLE).await;
    let (rss_after, anon_after) = (relay::rss_mib(pid), relay::anon_mib(pid));
    let held = relay.cached_tokens(&client).await;
    // `/metrics` serves one rendering for up to a second: each scrape below waits out the
    // rendering before it, so the two counts bracket exactly the one request.
    const RENDERING: Duration = Duration::from_millis(1_100);
    tokio::time::sleep(RENDERING).await;
    let hits_before = cache_lookups(&client, &relay.url).await;
    let outcome = relay::get_token(&client, &relay.url, APP).await;
    tokio::time::sleep(RENDERING).await;
    let hits_after = cache_lookups(&client, &relay.url).await;
    let same_token = outcome.status == Some(200) && outcome.token.is_some() && outcome.token == app_token;
    let app_calls_after = app_calls();
    println!(
        "  {} s after: RSS {rss_after:.1} MiB (anonymous {anon_after:.1}): {:+.1} MiB ({:+.1} anonymous) against \
         before; holding {held} tokens; {} upstream calls in all",
        SETTLE.as_secs(),
        rss_after - rss_before,
        anon_after - anon_before,
        authority.calls()
    );
    println!(
        "  the application's token afterwards: status {:?}, the same token as before {same_token}; upstream calls for \
         it {app_calls_before} -> {app_calls_after}; cache lookups for that request: hit +{}, miss +{}, stale +{}",
        outcome.status,
        hits_after.0 - hits_before.0,
        hits_after.1 - hits_before.1,
        hits_after.2 - hits_before.2
    );
    relay_log_summary(&relay.log());

    let no_error = wrk_errors == Some(0.0) && wrk.status.success() && flood_other == 0 && flood_failed == 0;
    let rss_back = rss_after - rss_before <= SOAK_RSS_SLACK_MIB;
    let still_hit = same_token && app_calls_after == app_calls_before && hits_after.0 - hits_before.0 == 1;
    let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
    println!("  {} no error on the application's requests (and none but 429 in the flood)", verdict(no_error));
    println!("  {} RSS within {SOAK_RSS_SLACK_MIB} MiB of its level before the flood", verdict(rss_back));
    println!("  {} the application's token still a cache hit", verdict(still_hit));
    relay.stop().await;
    if !(no_error && rss_back && still_hit) {
        std::process::exit(1);
    }
}

/// The relay's cache lookups so far, summed over identities: (hit, miss, stale).
async fn cache_lookups(client: &reqwest::Client, base: &str) -> (u64, u64, u64) {
    let text = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    let sum = |outcome: &str| -> u64 {
        text.lines()
            .filter(|l| {
                l.starts_with("tokenrelay_cache_lookups_total{") && l.contains(&format!("outcome=\"{outcome}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    (sum("hit"), sum("miss"), sum("stale"))
}

/// The 1, 5 and 15 minute load averages.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// Spawn to ready and to the first token, with 10,000 persisted tokens and without.
async fn startup(bin: &str) {
    const RUNS: usize = 10;
    let authority = Authority::start(Duration::ZERO).await;
    let scratch = Scratch::new("startup");
    let now = epoch_now();
    // Fetched ten minutes ago, an hour's lifetime: valid, not yet due for refresh.
    let persisted = tokens::persisted(TOKENS, now - 600, now + 2400, now + 2999);
    let expected: Vec<String> = persisted.iter().map(|t| t.token.token.expose().to_owned()).collect();
    let store = StoreFile::write(&scratch.0, persisted, now);
    let store_bytes = std::fs::metadata(&store.path).unwrap().len();
    let decode = (0..3)
        .map(|_| {
            let started = Instant::now();
            assert_eq!(store.read().len(), TOKENS);
            started.elapsed()
        })
        .min()
        .unwrap();
    println!(
        "startup: store of {TOKENS} tokens, {:.1} MB encrypted; decoding it in this process takes {} ms",
        store_bytes as f64 / 1e6,
        decode.as_millis()
    );

    for with_store in [true, false] {
        let calls_before = authority.calls();
        let settings = Settings {
            authority: &authority.url,
            max_concurrent: 16,
            persistence: with_store.then(|| store.config()),
            prefetch: Some(tokens::resource(0)),
        };
        let config = settings.write(&scratch.0);
        let (mut ready, mut first_token, mut rss, mut load) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..RUNS {
            let client = relay::client();
            // At info the relay logs how long loading the store took (one line; no request logs
            // before the first token).
            let relay = Relay::spawn(bin, &config, &[("RUST_LOG", "info")]);
            ready.push(relay.wait_ready(&client).await);
            let index = fastrand::usize(..TOKENS);
            let outcome = relay::get_token(&client, &relay.url, &tokens::resource(index)).await;
            first_token.push(relay.spawned.elapsed());
            assert_eq!(outcome.status, Some(200), "{:?}", relay.log());
            if with_store {
                assert_eq!(outcome.token.as_ref(), Some(&expected[index]), "served from the persisted set");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            rss.push(relay.rss_mib());
            load.extend(relay.log().iter().filter(|l| l.contains("loaded the persistent token cache")).find_map(|l| {
                let digits = l.split("elapsed_ms").nth(1)?.trim_start_matches(|c: char| !c.is_ascii_digit());
                digits.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok().map(Duration::from_millis)
            }));
            relay.kill().await;
        }
        let label = if with_store { "with 10,000 persisted tokens" } else { "without a store (baseline)" };
        println!(
            "  {label}, {RUNS} runs: spawn to /readyz 200 {}; to the first token {}; upstream calls {}; \
             RSS when ready {}",
            spread_ms(&mut ready),
            spread_ms(&mut first_token),
            authority.calls() - calls_before,
            spread_mib(&mut rss)
        );
        if !load.is_empty() {
            println!("    of which loading and seeding the store, as the relay logs it: {}", spread_ms(&mut load));
        }
    }
}

/// A pod's critical path: spawn to ready with one prefetched resource, against an authority
/// that takes a fixed 100 ms, so that what is left over is tokenrelay's own share (process
/// start, configuration, binding, the upstream request's own work, readiness).
async fn coldstart(bin: &str) {
    const RUNS: usize = 20;
    const AUTHORITY_DELAY: Duration = Duration::from_millis(100);
    let authority = Authority::start(AUTHORITY_DELAY).await;
    let scratch = Scratch::new("coldstart");
    let settings = Settings {
        authority: &authority.url,
        max_concurrent: 16,
        persistence: None,
        prefetch: Some(tokens::resource(0)),
    };
    let config = settings.write(&scratch.0);
    let client = relay::client();
    let (mut ready, mut share) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let calls_before = authority.calls();
        let relay = Relay::spawn(bin, &config, &[]);
        let elapsed = relay.wait_ready(&client).await;
        assert_eq!(authority.calls(), calls_before + 1, "one upstream call for the prefetched resource");
        ready.push(elapsed);
        share.push(elapsed.saturating_sub(AUTHORITY_DELAY));
        relay.kill().await;
    }
    println!(
        "coldstart: {RUNS} runs, one prefetched resource, authority {} ms: spawn to /readyz 200 {}; tokenrelay's \
         share (minus the authority's delay) {}; load average {}",
        AUTHORITY_DELAY.as_millis(),
        spread_ms(&mut ready),
        spread_ms(&mut share),
        load_average()
    );
}

/// 10,000 persisted tokens whose refresh points coincide: one refresh per key, never more than
/// the upstream limit at once, stale tokens served meanwhile, and new refresh points spread.
async fn refresh_storm(bin: &str) {
    const LIMIT: usize = 16;
    const CLIENTS: usize = 32;
    const LEAD_SECS: u64 = 8;
    const GIVE_UP: Duration = Duration::from_secs(150);
    const COLD: usize = 5;
    let delay = Duration::from_millis(50);
    let authority = Authority::start(delay).await;
    let scratch = Scratch::new("refresh-storm");
    let now = epoch_now();
    let due = now + LEAD_SECS;
    let persisted = tokens::persisted(TOKENS, now - 60, due, now + 3600);
    let stale: HashSet<String> = persisted.iter().map(|t| t.token.token.expose().to_owned()).collect();
    let store = StoreFile::write(&scratch.0, persisted, now);
    let settings = Settings {
        authority: &authority.url,
        max_concurrent: LIMIT,
        persistence: Some(store.config()),
        prefetch: None,
    };
    let relay = Relay::spawn(bin, &settings.write(&scratch.0), &[]);
    let client = relay::client();
    relay.wait_ready(&client).await;
    let due_at = instant_of(due);

    // RSS every 100 ms: what 10,000 queued refreshes and the store rewrites cost.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (pid, sampling) = (relay.pid(), sampling.clone());
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while sampling.load(Ordering::Relaxed) {
                samples.push((Instant::now(), relay::rss_mib(pid)));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            samples
        })
    };

    // A second into the storm, a few first requests for resources nobody holds: they need
    // an upstream call too, and share the upstream limit with the queued refreshes.
    let cold = {
        let (client, url) = (client.clone(), relay.url.clone());
        tokio::spawn(async move {
            tokio::time::sleep_until((due_at + Duration::from_secs(1)).into()).await;
            let requests: Vec<_> = (0..COLD)
                .map(|k| {
                    let (client, url) = (client.clone(), url.clone());
                    tokio::spawn(
                        async move { relay::get_token(&client, &url, &format!("https://cold{k}.example")).await },
                    )
                })
                .collect();
            let mut outcomes = Vec::new();
            for request in requests {
                outcomes.push(request.await.unwrap());
            }
            outcomes
        })
    };

    // Sweep every resource, again and again, until every key was refreshed.
    let give_up = Instant::now() + GIVE_UP;
    let mut requests = Vec::new();
    let mut sweeps = 0;
    loop {
        let batch = relay::sweep(&client, &relay.url, TOKENS, CLIENTS).await;
        requests.extend(batch.into_iter().map(|o| Request::of(o, &stale)));
        sweeps += 1;
        let settled = Instant::now() > due_at && authority.calls() >= TOKENS + COLD && authority.in_flight() == 0;
        if settled || Instant::now() > give_up {
            break;
        }
    }
    let last_sweep: Vec<_> =
        relay::sweep(&client, &relay.url, TOKENS, CLIENTS).await.into_iter().map(|o| Request::of(o, &stale)).collect();
    sampling.store(false, Ordering::Relaxed);
    let rss = sampler.await.unwrap();

    let cold = cold.await.unwrap();
    let calls: Vec<_> = authority.log().into_iter().filter(|c| !c.scope.starts_with("https://cold")).collect();
    let distinct: HashSet<&str> = calls.iter().map(|c| c.scope.as_str()).collect();
    let first_call = calls.iter().map(|c| c.arrived).min();
    let last_answer = calls.iter().map(|c| c.answered).max();
    println!(
        "refresh-storm: {TOKENS} persisted tokens, one refresh point {LEAD_SECS} s after start, authority {} ms per \
         call, upstream.max_concurrent {LIMIT}, {CLIENTS} clients, {sweeps} sweeps",
        delay.as_millis()
    );
    println!(
        "  upstream calls for the persisted resources {} for {} distinct resources; most in flight at once {} \
         (limit {LIMIT})",
        calls.len(),
        distinct.len(),
        authority.max_in_flight()
    );
    if let (Some(first), Some(last)) = (first_call, last_answer) {
        println!(
            "  storm: first call {} ms after the refresh point, last answer {} ms after it: {:.1} s for {} calls \
             ({:.0} calls/s; {LIMIT} x 1 s / {} ms = {:.0}/s at most)",
            signed_ms(first, due_at),
            signed_ms(last, due_at),
            (last - first).as_secs_f64(),
            calls.len(),
            calls.len() as f64 / (last - first).as_secs_f64(),
            delay.as_millis(),
            LIMIT as f64 / delay.as_secs_f64()
        );
        let during: Vec<&Request> = requests.iter().filter(|r| r.finished >= first && r.finished <= last).collect();
        let before: Vec<&Request> = requests.iter().filter(|r| r.finished < first).collect();
        println!("  client requests before the storm: {}", Request::summary(&before));
        println!("  client requests during the storm: {}", Request::summary(&during));
    }
    let cold_latencies = sorted_latencies(&cold);
    println!(
        "  {COLD} first requests for new resources, 1 s into the storm: {} failures, latency min {:.0} / max {:.0} ms",
        relay::failures(&cold),
        ms(cold_latencies[0]),
        ms(cold_latencies[cold_latencies.len() - 1])
    );
    let last_refs: Vec<&Request> = last_sweep.iter().collect();
    println!("  one sweep after it: {}", Request::summary(&last_refs));
    let rss_at = |at: Instant| rss.iter().rev().find(|(t, _)| *t <= at).map_or(0.0, |(_, mib)| *mib);
    let peak = rss.iter().map(|(_, mib)| *mib).fold(0.0, f64::max);
    println!(
        "  relay RSS: 1 s before the refresh point {:.1} MiB, 2 s after {:.1} MiB, peak {peak:.1} MiB, at the end {:.1} MiB",
        rss_at(due_at - Duration::from_secs(1)),
        rss_at(due_at + Duration::from_secs(2)),
        rss.last().map_or(0.0, |(_, mib)| *mib)
    );

    relay_log_summary(&relay.log());
    relay.stop().await;
    refresh_points(&store, due);
}

/// The refresh points the relay wrote back on its way out: spread, not coinciding.
fn refresh_points(store: &StoreFile, old_due: u64) {
    let tokens: Vec<_> = store.read().into_iter().filter(|t| !t.resource.starts_with("https://cold")).collect();
    let refreshed: Vec<_> = tokens.iter().filter(|t| t.refresh_on > old_due).collect();
    let mut per_second: BTreeMap<u64, usize> = BTreeMap::new();
    for token in &refreshed {
        *per_second.entry(token.refresh_on).or_default() += 1;
    }
    // For a 1-hour token the relay plans the refresh 10 minutes before expiry and moves it
    // earlier by a random jitter of up to 60 s (src/broker/policy.rs).
    let mut jitter: Vec<u64> =
        refreshed.iter().map(|t| t.token.expires_on.saturating_sub(600).saturating_sub(t.refresh_on)).collect();
    jitter.sort_unstable();
    let (Some(first), Some(last)) = (per_second.keys().next(), per_second.keys().last()) else {
        println!("  store after SIGTERM: {} tokens, none refreshed", tokens.len());
        return;
    };
    println!(
        "  store after SIGTERM: {} tokens, {} with a new refresh point; before: all {TOKENS} at one second; after: \
         over {} s ({} distinct seconds, at most {} in one second); jitter (expires_on - 10 min - refresh_on) \
         min {} / median {} / max {} s",
        tokens.len(),
        refreshed.len(),
        last - first + 1,
        per_second.len(),
        per_second.values().max().unwrap(),
        jitter[0],
        jitter[jitter.len() / 2],
        jitter[jitter.len() - 1]
    );
}

/// A storm request, without the token text (10,000 of them per sweep add up).
struct Request {
    finished: Instant,
    latency: Duration,
    ok: bool,
    stale: bool,
}

impl Request {
    fn of(outcome: relay::Outcome, stale: &HashSet<String>) -> Self {
        let ok = outcome.status == Some(200) && outcome.token.is_some();
        let is_stale = outcome.token.as_ref().is_some_and(|t| stale.contains(t));
        Self { finished: outcome.finished, latency: outcome.latency, ok, stale: is_stale }
    }

    fn summary(requests: &[&Request]) -> String {
        let mut latencies: Vec<Duration> = requests.iter().map(|r| r.latency).collect();
        latencies.sort();
        if latencies.is_empty() {
            return "none".into();
        }
        format!(
            "{} requests, {} failures, {} served the persisted (stale) token, p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
            requests.len(),
            requests.iter().filter(|r| !r.ok).count(),
            requests.iter().filter(|r| r.stale).count(),
            ms(percentile(&latencies, 50.0)),
            ms(percentile(&latencies, 99.0)),
            ms(latencies[latencies.len() - 1])
        )
    }
}

/// Prints how much the relay logged at warn or above, and the first line.
fn relay_log_summary(log: &[String]) {
    match log.first() {
        None => println!("  relay log at warn: nothing"),
        Some(first) => println!("  relay log at warn: {} lines, the first: {first}", log.len()),
    }
}

/// The monotonic instant at which the wall clock reaches epoch second `epoch`.
fn instant_of(epoch: u64) -> Instant {
    let target = UNIX_EPOCH + Duration::from_secs(epoch);
    let now = SystemTime::now();
    match target.duration_since(now) {
        Ok(ahead) => Instant::now() + ahead,
        Err(behind) => Instant::now() - behind.duration(),
    }
}

fn signed_ms(at: Instant, reference: Instant) -> i128 {
    match at.checked_duration_since(reference) {
        Some(after) => after.as_millis() as i128,
        None => -((reference - at).as_millis() as i128),
    }
}

fn sorted_latencies(outcomes: &[relay::Outcome]) -> Vec<Duration> {
    let mut latencies: Vec<Duration> = outcomes.iter().map(|o| o.latency).collect();
    latencies.sort();
    latencies
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 * p / 100.0).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `min a / median b / max c ms`.
fn spread_ms(values: &mut [Duration]) -> String {
    values.sort();
    let median = values[values.len() / 2];
    format!("min {:.1} / median {:.1} / max {:.1} ms", ms(values[0]), ms(median), ms(values[values.len() - 1]))
}

/// `min a / median b / max c MiB`.
fn spread_mib(values: &mut [f64]) -> String {
    values.sort_by(f64::total_cmp);
    format!("min {:.1} / median {:.1} / max {:.1} MiB", values[0], values[values.len() / 2], values[values.len() - 1])
}
