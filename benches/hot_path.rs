//! The cache-hit path, piece by piece and whole: parsing the query, the broker lookup, the
//! wire body, and one request through the router (no sockets). Run: `cargo bench --bench hot_path`.

use std::collections::HashMap;
use std::hint::black_box;

use axum::body::Body;
use axum::http::Request;
use criterion::{Criterion, criterion_group, criterion_main};
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use tokenrelay::broker::Selector;
use tokenrelay::config::{Config, RawConfig};
use tokenrelay::server::wire::{TokenQuery, render_token_body};
use tokenrelay::server::{self, AppState};
use tower::ServiceExt;

const QUERY: &str =
    "api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net&client_id=d0000000-0000-0000-0000-000000000001";

fn dev_config() -> Config {
    let figment = Figment::from(Serialized::defaults(RawConfig::default()))
        .merge(Toml::string("[dev]\nenabled = true\n[server]\nidentity_header = \"bench-0123456789abcdef\""));
    Config::from_figment(&figment, &HashMap::new()).expect("the bench configuration is valid")
}

fn hot_path(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let config = dev_config();
    let built = tokenrelay::app::build(&config, "http://127.0.0.1:8080", &Ok(None)).unwrap();
    let broker = built.broker.clone();
    let identity = broker.resolve(&Selector::Default).unwrap().clone();
    // Warm the cache: every measured lookup below is a hit.
    let served = runtime.block_on(broker.token(&identity, "https://vault.azure.net")).unwrap();

    c.bench_function("parse_query", |b| b.iter(|| TokenQuery::parse(black_box(Some(QUERY))).unwrap()));

    c.bench_function("cache_hit", |b| {
        b.to_async(&runtime)
            .iter(|| async { broker.token(&identity, black_box("https://vault.azure.net")).await.unwrap() })
    });

    c.bench_function("wire_body", |b| {
        b.iter(|| {
            render_token_body(
                black_box(&served.entry),
                &identity.client_id,
                "https://vault.azure.net",
                broker.now(),
                None,
            )
        })
    });

    let state = AppState {
        broker: broker.clone(),
        identity_header: None,
        probe_mode: config.server.imds_probe,
        dev_issuer: built.dev_issuer.clone(),
        metrics: None,
        request_timeout: std::time::Duration::from_secs(60),
        log_requests: config.log.requests,
        user_endpoints: None,
    };
    let endpoints = server::endpoints(state, &config.server);
    let uri = format!("/metadata/identity/oauth2/token?{QUERY}");
    c.bench_function("imds_request_in_process", |b| {
        b.to_async(&runtime).iter(|| {
            let request = Request::get(&uri).header("Metadata", "true").body(Body::empty()).unwrap();
            let endpoints = endpoints.clone();
            async move {
                let response = endpoints.oneshot(request).await.unwrap();
                assert_eq!(response.status(), 200);
                response
            }
        })
    });

    // The same request with the `Host` a local client sends: against the one above (no
    // `Host`, so nothing to check), the cost of the DNS rebinding guard.
    let mut group = c.benchmark_group("imds_request_with_host");
    for host in ["127.0.0.1:8080", "localhost:8080"] {
        group.bench_function(host, |b| {
            b.to_async(&runtime).iter(|| {
                let request =
                    Request::get(&uri).header("Host", host).header("Metadata", "true").body(Body::empty()).unwrap();
                let endpoints = endpoints.clone();
                async move {
                    let response = endpoints.oneshot(request).await.unwrap();
                    assert_eq!(response.status(), 200);
                    response
                }
            })
        });
    }
    group.finish();
}

/// The App Service header secret's comparison, with the right value and with wrong ones of the
/// same length that differ at the first or the last byte: if the comparison leaked where a
/// guess goes wrong, their times would differ. A shorter and a longer value show that the time
/// follows the presented length (which the caller knows) and nothing else.
fn header_secret(c: &mut Criterion) {
    let secret = tokenrelay::secret::Secret::new("x".repeat(32)).for_header().expect("32 bytes fit");
    let mut group = c.benchmark_group("header_secret");
    let last = format!("{}y", "x".repeat(31));
    let first = format!("y{}", "x".repeat(31));
    let shorter = "x".repeat(8);
    for (name, presented) in [
        ("equal", "x".repeat(32)),
        ("differs_at_first_byte", first),
        ("differs_at_last_byte", last),
        ("shorter", shorter),
        ("longer", "x".repeat(64)),
    ] {
        group.bench_function(name, |b| b.iter(|| secret.matches(black_box(presented.as_bytes()))));
    }
    group.finish();
}

criterion_group!(benches, hot_path, header_secret);
criterion_main!(benches);
