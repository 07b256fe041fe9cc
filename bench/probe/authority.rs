//! A stand-in Entra authority on loopback: answers the client-credentials grant after a fixed
//! delay with a realistic token, and records what a probe needs to judge the relay: how many
//! calls, for which scopes, when, and how many were in flight at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::Form;
use axum::routing::post;

use crate::tokens;

/// One token request as the authority saw it.
#[derive(Clone, Debug)]
pub struct Call {
    pub scope: String,
    pub arrived: Instant,
    pub answered: Instant,
}

#[derive(Default)]
struct Stats {
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    calls: Mutex<Vec<Call>>,
}

/// Counts a request in flight for as long as it lives, so a request the client abandons
/// (its future dropped) is not counted for ever.
struct InFlight<'a>(&'a Stats);

impl<'a> InFlight<'a> {
    fn enter(stats: &'a Stats) -> Self {
        let now = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        stats.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(stats)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A running stand-in authority.
pub struct Authority {
    /// What the relay's `upstream.authority_host` is set to.
    pub url: String,
    stats: Arc<Stats>,
}

impl Authority {
    /// Starts answering on a free loopback port; every answer takes `delay`.
    pub async fn start(delay: Duration) -> Self {
        let stats = Arc::new(Stats::default());
        let state = stats.clone();
        let app = Router::new().route(
            "/{tenant}/oauth2/v2.0/token",
            post(move |Form(form): Form<HashMap<String, String>>| {
                let stats = state.clone();
                async move {
                    let arrived = Instant::now();
                    let _counted = InFlight::enter(&stats);
                    tokio::time::sleep(delay).await;
                    let scope = form.get("scope").cloned().unwrap_or_default();
                    let audience = scope.strip_suffix("/.default").unwrap_or(&scope);
                    let token = tokens::access_token(audience, epoch_now());
                    stats.calls.lock().unwrap().push(Call { scope, arrived, answered: Instant::now() });
                    axum::Json(serde_json::json!({
                        "token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token,
                    }))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, stats }
    }

    /// Token requests answered so far.
    pub fn calls(&self) -> usize {
        self.stats.calls.lock().unwrap().len()
    }

    /// Requests being answered right now.
    pub fn in_flight(&self) -> usize {
        self.stats.in_flight.load(Ordering::SeqCst)
    }

    /// The most requests ever in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.stats.max_in_flight.load(Ordering::SeqCst)
    }

    /// Every answered request, in the order they were answered.
    pub fn log(&self) -> Vec<Call> {
        self.stats.calls.lock().unwrap().clone()
    }
}

/// Seconds since the epoch, as the relay's clock counts.
pub fn epoch_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}
