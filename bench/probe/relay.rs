//! Running the real tokenrelay binary for a probe: its configuration, the process, its
//! memory, and requests against it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::tokens;

/// A scratch directory for one probe, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(probe: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tokenrelay-{probe}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a probe's configuration varies; everything else is fixed: one client-secret identity
/// ([`tokens::CLIENT_ID`]) against the stand-in authority, room for 20,000 cached tokens
/// (the default `max_entries` is 1,000, which would evict most of a 10,000-token set), and no
/// practical limit on new resources a minute (the default, 60, would refuse most of the
/// probes' first requests with 429).
pub struct Settings<'a> {
    /// `upstream.authority_host`.
    pub authority: &'a str,
    /// `upstream.max_concurrent` (written even when it is the default, 16, so the probe
    /// states the limit it checks).
    pub max_concurrent: usize,
    /// A `[cache.persistence]` table ([`tokens::StoreFile::config`]), if any.
    pub persistence: Option<String>,
    /// A resource the identity prefetches; readiness waits for it.
    pub prefetch: Option<String>,
}

impl Settings<'_> {
    /// Writes `dir/config.toml`.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("config.toml");
        let prefetch = self.prefetch.as_ref().map(|r| format!("prefetch = [\"{r}\"]\n")).unwrap_or_default();
        let text = format!(
            "[server]\nidentity_header = \"bench-probe-0123456789\"\n[upstream]\nauthority_host = \"{}\"\nmax_concurrent = {}\n\
             [cache]\nmax_entries = 20000\nnew_keys_per_minute = 1000000\nnew_keys_burst = 1000000\n{}\n[[identities]]\nname = \"app\"\nclient_id = \"{}\"\n\
             tenant_id = \"{}\"\ndefault = true\n{prefetch}credentials = [{{ kind = \"client_secret\", secret = \"s\" }}]\n",
            self.authority,
            self.max_concurrent,
            self.persistence.as_deref().unwrap_or_default(),
            tokens::CLIENT_ID,
            tokens::TENANT_ID,
        );
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// A running tokenrelay.
pub struct Relay {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// When the process was spawned.
    pub spawned: Instant,
    log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Relay {
    /// Spawns `bin serve --config CONFIG` on a free loopback port and returns at once, before
    /// it listens; `env` is added to the inherited environment (`RUST_LOG` is `warn` unless
    /// `env` says otherwise).
    pub fn spawn(bin: &str, config: &Path, env: &[(&str, &str)]) -> Self {
        // A port that was free a moment ago; the relay binds it a few milliseconds later.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let listen = format!("127.0.0.1:{port}");
        let spawned = Instant::now();
        let mut child = Command::new(bin)
            .args(["serve", "--config", config.to_str().unwrap(), "--listen", &listen])
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("tokenrelay starts");
        // Logs go to stderr; at `warn` every line is worth reporting, and draining the pipe
        // keeps a chatty relay from blocking on it.
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let collected = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                collected.lock().unwrap().push(line);
            }
        });
        Self { child, url: format!("http://{listen}"), spawned, log }
    }

    /// What the relay logged so far (at `warn` and above unless `env` set `RUST_LOG`).
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Polls `/readyz` every millisecond until it answers 200; returns the time since spawn.
    /// Before the relay binds, connecting fails at once; after, a request waits in the listen
    /// queue until the relay serves, so the first 200 is seen within about a millisecond.
    pub async fn wait_ready(&self, client: &reqwest::Client) -> Duration {
        let deadline = self.spawned + Duration::from_secs(30);
        loop {
            let ready = client.get(format!("{}/readyz", self.url)).send().await.map(|r| r.status().as_u16());
            if matches!(ready, Ok(200)) {
                return self.spawned.elapsed();
            }
            assert!(Instant::now() < deadline, "tokenrelay not ready within 30 s: {ready:?}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("tokenrelay is running")
    }

    /// Resident set size in MiB.
    pub fn rss_mib(&self) -> f64 {
        rss_mib(self.pid())
    }

    /// The most resident memory the process has had (`VmHWM`), in MiB.
    pub fn peak_mib(&self) -> f64 {
        status_mib(self.pid(), "VmHWM:")
    }

    /// Resident set size and its anonymous part, in MiB, as `"12.0 MiB (anonymous 1.9)"`.
    pub fn memory(&self) -> String {
        format!("{:.1} MiB (anonymous {:.1})", rss_mib(self.pid()), anon_mib(self.pid()))
    }

    /// Tokens held in the cache, from `/metrics` (which also runs the cache's pending
    /// evictions).
    pub async fn cached_tokens(&self, client: &reqwest::Client) -> u64 {
        let text = client.get(format!("{}/metrics", self.url)).send().await.unwrap().text().await.unwrap();
        text.lines()
            .filter(|l| l.starts_with("tokenrelay_cache_entries{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// Ends the process at once (SIGKILL), without flushing anything.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM, then waits for the exit: the relay flushes its store on the way out.
    pub async fn stop(mut self) {
        let status = std::process::Command::new("kill").args(["-TERM", &self.pid().to_string()]).status().unwrap();
        assert!(status.success(), "kill -TERM failed");
        let exit = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
        assert!(matches!(exit, Ok(Ok(_))), "tokenrelay did not stop within 30 s: {exit:?}");
    }
}

/// Resident set size of process `pid` in MiB (0 once it is gone).
pub fn rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmRSS:")
}

/// The anonymous part of the resident set in MiB: the heap, stacks and other private
/// memory, without the pages of the binary and libraries mapped from the page cache.
pub fn anon_mib(pid: u32) -> f64 {
    status_mib(pid, "RssAnon:")
}

/// A `kB` line of `/proc/{pid}/status` in MiB.
fn status_mib(pid: u32, key: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    kib as f64 / 1024.0
}

/// A client that never uses a proxy and keeps enough idle connections for any probe.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().pool_max_idle_per_host(1024).build().unwrap()
}

/// One IMDS token request and how it went.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The HTTP status, or `None` when no answer came.
    pub status: Option<u16>,
    /// When the answer was complete.
    pub finished: Instant,
    pub latency: Duration,
    /// The access token served, if any.
    pub token: Option<String>,
}

/// Requests a token for `resource`.
pub async fn get_token(client: &reqwest::Client, base: &str, resource: &str) -> Outcome {
    let url = format!("{base}/metadata/identity/oauth2/token?api-version=2018-02-01&resource={resource}");
    let started = Instant::now();
    let response = client.get(url).header("Metadata", "true").send().await;
    let (status, token) = match response {
        Ok(response) => {
            let status = response.status().as_u16();
            let body: Option<serde_json::Value> = response.json().await.ok();
            (Some(status), body.and_then(|b| b["access_token"].as_str().map(str::to_owned)))
        }
        Err(_) => (None, None),
    };
    Outcome { status, finished: Instant::now(), latency: started.elapsed(), token }
}

/// Requests [`tokens::resource`] `0..count` once each, `concurrency` at a time.
pub async fn sweep(client: &reqwest::Client, base: &str, count: usize, concurrency: usize) -> Vec<Outcome> {
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, base, next) = (client.clone(), base.to_owned(), next.clone());
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= count {
                        return outcomes;
                    }
                    outcomes.push(get_token(&client, &base, &tokens::resource(index)).await);
                }
            })
        })
        .collect();
    let mut outcomes = Vec::with_capacity(count);
    for worker in workers {
        outcomes.extend(worker.await.unwrap());
    }
    outcomes
}

/// Requests that did not get a 200 with a token.
pub fn failures(outcomes: &[Outcome]) -> usize {
    outcomes.iter().filter(|o| o.status != Some(200) || o.token.is_none()).count()
}
