//! Prometheus metrics: names, help texts and the recording helpers the other layers call.
//!
//! Recording goes through the `metrics` facade, which is a no-op until [`install`] runs, so
//! unit tests and the `token` command pay nothing. Per-token gauges (seconds until expiry)
//! are rendered at scrape time from the cache itself, so evicted tokens leave no stale series.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Bytes;
use tokio::time::Instant;

use metrics::{Counter, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const REQUESTS: &str = "tokenrelay_requests_total";
pub const REQUEST_DURATION: &str = "tokenrelay_request_duration_seconds";
pub const CACHE_LOOKUPS: &str = "tokenrelay_cache_lookups_total";
pub const CACHE_ENTRIES: &str = "tokenrelay_cache_entries";
pub const UPSTREAM_REQUESTS: &str = "tokenrelay_upstream_requests_total";
pub const UPSTREAM_DURATION: &str = "tokenrelay_upstream_request_duration_seconds";
pub const UPSTREAM_ERRORS: &str = "tokenrelay_upstream_errors_total";
pub const REFRESHES: &str = "tokenrelay_background_refreshes_total";
pub const TOKEN_EXPIRY: &str = "tokenrelay_token_expires_in_seconds";
pub const BUILD_INFO: &str = "tokenrelay_build_info";
pub const PERSISTENCE_WRITES: &str = "tokenrelay_persistence_writes_total";
pub const IDENTITY_HEADER_REFUSED: &str = "tokenrelay_identity_header_refused_total";
pub const CACHE_EVICTIONS: &str = "tokenrelay_cache_evictions_total";
pub const NEW_KEYS_LIMITED: &str = "tokenrelay_new_keys_limited_total";
pub const SHARED_UP: &str = "tokenrelay_shared_cache_up";
pub const SHARED_LOOKUPS: &str = "tokenrelay_shared_cache_lookups_total";
pub const SHARED_WRITES: &str = "tokenrelay_shared_cache_writes_total";
pub const SHARED_LEASES: &str = "tokenrelay_shared_cache_leases_total";

/// Latency buckets: cache hits take microseconds, upstream calls up to the timeout.
const REQUEST_BUCKETS: &[f64] = &[0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Installs the global recorder and returns the handle `/metrics` renders.
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_duration_seconds".into()), REQUEST_BUCKETS)
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())?;
    describe_counter!(REQUESTS, "Token requests answered, by flavour and HTTP status.");
    describe_counter!(
        CACHE_LOOKUPS,
        "Cache lookups by outcome: hit, stale (served while refreshing), miss, coalesced (waited for another request's fetch)."
    );
    describe_counter!(UPSTREAM_REQUESTS, "Upstream token requests by credential kind and outcome.");
    describe_histogram!(
        UPSTREAM_DURATION,
        Unit::Seconds,
        "Upstream token request latency, retries included, by credential kind."
    );
    describe_counter!(
        UPSTREAM_ERRORS,
        "Upstream refusals by credential kind and AADSTS code (\"none\" when the authority sent none, \"other\" for a code tokenrelay does not know)."
    );
    describe_counter!(
        CACHE_EVICTIONS,
        "Tokens dropped from the cache by identity and reason: size (the cache was full) or expired."
    );
    describe_counter!(
        NEW_KEYS_LIMITED,
        "Requests for a resource not cached that were refused with 429 by cache.new_keys_per_minute, by identity."
    );
    describe_counter!(REFRESHES, "Background refreshes by result.");
    describe_gauge!(
        SHARED_UP,
        "Whether the shared token cache ([cache.shared]) answers: 1, or 0 while it is down and skipped."
    );
    describe_counter!(
        SHARED_LOOKUPS,
        "Shared token cache lookups after a local miss, by result: hit, miss, unreadable (wrong key or tampered), error, skipped (down)."
    );
    describe_counter!(
        SHARED_WRITES,
        "Tokens written to the shared token cache, by result: success, failure, skipped (down)."
    );
    describe_counter!(
        SHARED_LEASES,
        "Claims to fetch a key upstream for the fleet, by result: acquired, waited (another replica's token arrived), held (a refresh found another replica refreshing), skipped (down, failed, or the wait ran out)."
    );
    describe_gauge!(BUILD_INFO, "Always 1; the labels carry the version.");
    describe_counter!(PERSISTENCE_WRITES, "Batched writes of the persistent cache, by result.");
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    describe_counter!(
        IDENTITY_HEADER_REFUSED,
        "App Service requests refused for their X-IDENTITY-HEADER, by reason: missing, or mismatch (a wrong guess)."
    );
    // Present from the start at 0, so that an alert on its rate sees the first guess.
    for refusal in [HeaderRefusal::Missing, HeaderRefusal::Mismatch] {
        header_refusals()[refusal as usize].increment(0);
    }
    // Histogram samples pile up until upkeep drains them; `install_recorder` leaves upkeep
    // to us, and without it memory grows with every request between scrapes.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            interval.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// How often histogram samples are folded into their buckets.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// How long one rendering of `/metrics` is served. Rendering walks every series and the whole
/// token cache; without this, a client scraping in a loop (or many at once, on an admin
/// listener that faces the pod network) costs that work per request.
pub const RENDER_INTERVAL: Duration = Duration::from_secs(1);

/// What `/metrics` serves: the recorder's text plus the scrape-time gauges, rendered at most
/// once per [`RENDER_INTERVAL`] and shared by every scrape within it, on both listeners.
#[derive(Clone)]
pub struct Exposition(Arc<ExpositionInner>);

struct ExpositionInner {
    handle: PrometheusHandle,
    /// Held while rendering, so that concurrent scrapes wait for one rendering and share it.
    latest: tokio::sync::Mutex<Option<Rendering>>,
}

struct Rendering {
    /// When the rendering started: the text reflects the metrics as of then.
    at: Instant,
    text: Bytes,
}

impl Exposition {
    pub fn new(handle: PrometheusHandle) -> Self {
        Self(Arc::new(ExpositionInner { handle, latest: tokio::sync::Mutex::new(None) }))
    }

    /// The text to serve: the latest rendering while it is younger than [`RENDER_INTERVAL`],
    /// otherwise a new one, which `complete` renders from the recorder's handle (and appends
    /// the gauges computed from the cache to). `complete` chooses when the recorder renders,
    /// so that work done first (the caches' pending evictions) shows in the counters.
    pub async fn text<F, Fut>(&self, complete: F) -> Bytes
    where
        F: FnOnce(PrometheusHandle) -> Fut,
        Fut: Future<Output = String>,
    {
        let mut latest = self.0.latest.lock().await;
        if let Some(rendering) = latest.as_ref()
            && rendering.at.elapsed() < RENDER_INTERVAL
        {
            return rendering.text.clone();
        }
        let at = Instant::now();
        let text = Bytes::from(complete(self.0.handle.clone()).await);
        *latest = Some(Rendering { at, text: text.clone() });
        text
    }
}

/// Handles for the series every served request touches, registered once: building a
/// labelled key on each call allocates and hashes, which the cache-hit path should not pay.
struct HotPath {
    served: [Counter; 2],
    lookups: [Counter; 4],
}

static HOT_PATH: OnceLock<HotPath> = OnceLock::new();

fn hot_path() -> &'static HotPath {
    HOT_PATH.get_or_init(|| HotPath {
        served: FLAVOURS.map(|flavour| counter!(REQUESTS, "flavour" => flavour, "status" => "200")),
        lookups: OUTCOMES.map(|outcome| counter!(CACHE_LOOKUPS, "outcome" => outcome)),
    })
}

const FLAVOURS: [&str; 2] = ["imds", "app_service"];
const OUTCOMES: [&str; 4] = ["hit", "stale", "miss", "coalesced"];

/// A token request was answered.
pub fn request(flavour: &'static str, status: u16, elapsed: Duration) {
    let index = FLAVOURS.iter().position(|f| *f == flavour);
    if let Some(i) = index {
        REQUEST_DURATIONS[i].record(elapsed);
    }
    match index {
        Some(i) if status == 200 => hot_path().served[i].increment(1),
        _ => counter!(REQUESTS, "flavour" => flavour, "status" => status_label(status)).increment(1),
    }
}

/// The request-duration histogram of each flavour (indexed as [`FLAVOURS`]).
static REQUEST_DURATIONS: [FixedHistogram; 2] = [const { FixedHistogram::new() }; 2];

/// A Prometheus histogram over [`REQUEST_BUCKETS`] kept in atomics, for the one histogram
/// every request records. The `metrics` facade's histograms keep each sample until upkeep
/// folds them into buckets: at tens of thousands of requests a second that is megabytes of
/// samples between upkeeps, memory the allocator keeps after the load has gone, and an upkeep
/// pass that holds a worker thread while it sorts them in. Here recording is three relaxed
/// additions that allocate nothing, and the buckets are read at scrape time.
///
/// Invariant: `counts[i]` counts the observations in `(REQUEST_BUCKETS[i - 1], REQUEST_BUCKETS[i]]`
/// (the last one those above every bound); rendering accumulates them, and derives `_count`
/// from them so that it always equals the `+Inf` bucket.
struct FixedHistogram {
    counts: [AtomicU64; REQUEST_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl FixedHistogram {
    const fn new() -> Self {
        Self { counts: [const { AtomicU64::new(0) }; REQUEST_BUCKETS.len() + 1], sum_nanos: AtomicU64::new(0) }
    }

    fn record(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = REQUEST_BUCKETS.iter().position(|bound| seconds <= *bound).unwrap_or(REQUEST_BUCKETS.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        // Saturating: 584 years of summed request time fit in a u64 of nanoseconds.
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Appends the `_bucket`, `_sum` and `_count` series of `name{labels}`.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0u64;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let _ = match REQUEST_BUCKETS.get(i) {
                Some(bound) => writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}"),
                None => writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}"),
            };
        }
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

/// Appends the request-duration histograms (rendered here rather than by the recorder; see
/// [`FixedHistogram`]).
pub fn render_request_durations(out: &mut String) {
    let _ = writeln!(out, "# HELP {REQUEST_DURATION} Time to answer a token request, by flavour.");
    let _ = writeln!(out, "# TYPE {REQUEST_DURATION} histogram");
    for (flavour, histogram) in FLAVOURS.iter().zip(&REQUEST_DURATIONS) {
        histogram.render(out, REQUEST_DURATION, &format!("flavour=\"{flavour}\""));
    }
}

/// Why an App Service request's `X-IDENTITY-HEADER` was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderRefusal {
    /// No header: usually a misconfigured client.
    Missing = 0,
    /// A wrong value: a misconfigured client or a guess.
    Mismatch = 1,
}

/// The refusal counters, registered once: guesses arrive as fast as the listener answers,
/// and each should not build and hash a labelled key.
fn header_refusals() -> &'static [Counter; 2] {
    static COUNTERS: OnceLock<[Counter; 2]> = OnceLock::new();
    COUNTERS.get_or_init(|| ["missing", "mismatch"].map(|reason| counter!(IDENTITY_HEADER_REFUSED, "reason" => reason)))
}

/// An App Service request was refused for its `X-IDENTITY-HEADER`.
pub fn identity_header_refused(refusal: HeaderRefusal) {
    header_refusals()[refusal as usize].increment(1);
}

/// A cache lookup ended with `outcome` (hit, stale, miss, coalesced).
pub fn cache_lookup(outcome: &'static str) {
    match OUTCOMES.iter().position(|o| *o == outcome) {
        Some(i) => hot_path().lookups[i].increment(1),
        None => counter!(CACHE_LOOKUPS, "outcome" => outcome).increment(1),
    }
}

/// An upstream fetch finished. `outcome` is success, rejected, throttled, transient or unavailable.
pub fn upstream(credential: &'static str, outcome: &'static str, aadsts: Option<u32>, elapsed: Duration) {
    counter!(UPSTREAM_REQUESTS, "credential" => credential, "outcome" => outcome).increment(1);
    histogram!(UPSTREAM_DURATION, "credential" => credential).record(elapsed.as_secs_f64());
    if outcome == "rejected" {
        // Bounded: the authority can send any number, the label takes one of a fixed set.
        let code = crate::aadsts::label(aadsts);
        counter!(UPSTREAM_ERRORS, "credential" => credential, "aadsts" => code).increment(1);
    }
}

/// A token left `identity`'s cache for `reason` (size or expired).
pub fn cache_eviction(identity: &str, reason: &'static str) {
    counter!(CACHE_EVICTIONS, "identity" => identity.to_owned(), "reason" => reason).increment(1);
}

/// A request for a resource not cached was refused by `cache.new_keys_per_minute`.
pub fn new_key_limited(identity: &str) {
    counter!(NEW_KEYS_LIMITED, "identity" => identity.to_owned()).increment(1);
}

/// A batch was written to the persistent cache (or failed to be).
pub fn persistence_write(success: bool) {
    counter!(PERSISTENCE_WRITES, "result" => if success { "success" } else { "failure" }).increment(1);
}

/// A background refresh finished.
pub fn refresh(success: bool) {
    counter!(REFRESHES, "result" => if success { "success" } else { "failure" }).increment(1);
}

/// A due background refresh was put off because the most allowed were already running.
pub fn refresh_deferred() {
    counter!(REFRESHES, "result" => "deferred").increment(1);
}

/// Whether the shared token cache answers (state changes only).
pub fn shared_up(up: bool) {
    gauge!(SHARED_UP).set(if up { 1.0 } else { 0.0 });
}

/// A shared-cache lookup ended with `result` (hit, miss, unreadable, error, skipped).
pub fn shared_lookup(result: &'static str) {
    counter!(SHARED_LOOKUPS, "result" => result).increment(1);
}

/// A shared-cache write ended with `result` (success, failure, skipped).
pub fn shared_write(result: &'static str) {
    counter!(SHARED_WRITES, "result" => result).increment(1);
}

/// A claim to fetch a key for the fleet ended with `result` (acquired, waited, timed_out, skipped).
pub fn shared_lease(result: &'static str) {
    counter!(SHARED_LEASES, "result" => result).increment(1);
}

/// One cached token, for the scrape-time gauges.
pub struct CachedTokenSample<'a> {
    pub identity: &'a str,
    pub resource: &'a str,
    pub expires_in: u64,
}

/// Appends the gauges computed from the cache at scrape time.
pub fn render_cache(out: &mut String, entries_by_identity: &[(&str, u64)], tokens: &[CachedTokenSample<'_>]) {
    let _ = writeln!(out, "# HELP {CACHE_ENTRIES} Tokens held in the cache, by identity.");
    let _ = writeln!(out, "# TYPE {CACHE_ENTRIES} gauge");
    for (identity, count) in entries_by_identity {
        let _ = writeln!(out, "{CACHE_ENTRIES}{{identity=\"{}\"}} {count}", escape(identity));
    }
    let _ = writeln!(out, "# HELP {TOKEN_EXPIRY} Seconds until each cached token expires.");
    let _ = writeln!(out, "# TYPE {TOKEN_EXPIRY} gauge");
    for token in tokens {
        let _ = writeln!(
            out,
            "{TOKEN_EXPIRY}{{identity=\"{}\",resource=\"{}\"}} {}",
            escape(token.identity),
            escape(token.resource),
            token.expires_in
        );
    }
}

/// Label values escaped as the text exposition format requires.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Status codes as static label values (no allocation per request).
fn status_label(status: u16) -> &'static str {
    match status {
        200 => "200",
        400 => "400",
        401 => "401",
        404 => "404",
        408 => "408",
        429 => "429",
        500 => "500",
        503 => "503",
        508 => "508",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use metrics_exporter_prometheus::PrometheusRecorder;

    use super::*;

    #[test]
    fn request_durations_render_as_a_cumulative_histogram() {
        let histogram = FixedHistogram::new();
        for micros in [100, 500, 700, 3_000, 45_000_000] {
            histogram.record(Duration::from_micros(micros));
        }
        let mut out = String::new();
        histogram.render(&mut out, "d", "flavour=\"imds\"");
        let value = |series: &str| -> f64 {
            let line = out.lines().find(|l| l.starts_with(series)).unwrap_or_else(|| panic!("{series} in {out}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        // 100 µs and 500 µs are within the first bound (0.0005 s, inclusive), 700 µs within
        // the second, 3 ms within the third, 45 s above every bound.
        assert_eq!(value("d_bucket{flavour=\"imds\",le=\"0.0005\"}"), 2.0);
        assert_eq!(value("d_bucket{flavour=\"imds\",le=\"0.001\"}"), 3.0);
        assert_eq!(value("d_bucket{flavour=\"imds\",le=\"0.005\"}"), 4.0);
        assert_eq!(value("d_bucket{flavour=\"imds\",le=\"30\"}"), 4.0);
        assert_eq!(value("d_bucket{flavour=\"imds\",le=\"+Inf\"}"), 5.0);
        assert_eq!(value("d_count{flavour=\"imds\"}"), 5.0);
        assert!((value("d_sum{flavour=\"imds\"}") - 45.0043).abs() < 1e-9, "{out}");
        assert_eq!(out.lines().filter(|l| l.starts_with("d_bucket")).count(), REQUEST_BUCKETS.len() + 1);
    }

    /// An exposition over a recorder of its own (the global one is never installed in unit
    /// tests), and a counter of its renderings.
    fn exposition() -> (Exposition, PrometheusRecorder, Arc<AtomicUsize>) {
        let recorder = PrometheusBuilder::new().build_recorder();
        (Exposition::new(recorder.handle()), recorder, Arc::new(AtomicUsize::new(0)))
    }

    /// Renders with a pause, so that scrapes started together overlap.
    async fn scrape(exposition: &Exposition, renderings: &AtomicUsize) -> Bytes {
        exposition
            .text(|handle| async move {
                let text = handle.render();
                let n = renderings.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                format!("{text}rendering {n}\n")
            })
            .await
    }

    #[tokio::test(start_paused = true)]
    async fn scrapes_within_a_second_share_one_rendering() {
        let (exposition, _recorder, renderings) = exposition();
        let (first, second) = tokio::join!(scrape(&exposition, &renderings), scrape(&exposition, &renderings));
        assert_eq!(renderings.load(Ordering::SeqCst), 1, "concurrent scrapes wait for one rendering");
        assert_eq!(first, second);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(scrape(&exposition, &renderings).await, first, "still within the second");
        tokio::time::sleep(RENDER_INTERVAL).await;
        let later = scrape(&exposition, &renderings).await;
        assert_eq!(renderings.load(Ordering::SeqCst), 2);
        assert_ne!(later, first);
    }

    #[test]
    fn cache_gauges_are_valid_exposition_text() {
        let mut out = String::new();
        let tokens = [CachedTokenSample { identity: "app", resource: "https://vault.azure.net\"x", expires_in: 42 }];
        render_cache(&mut out, &[("app", 1)], &tokens);
        assert!(out.contains("tokenrelay_cache_entries{identity=\"app\"} 1"), "{out}");
        assert!(
            out.contains(
                "tokenrelay_token_expires_in_seconds{identity=\"app\",resource=\"https://vault.azure.net\\\"x\"} 42"
            ),
            "{out}"
        );
    }
}
