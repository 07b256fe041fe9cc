//! Shared test support: the fake authority and a handle on a running `tokenrelay` binary.

pub mod cache_dir;
pub mod certs;
pub mod compose;
pub mod config;
pub mod dev_tools;
pub mod fake_devops;
pub mod fake_entra;
pub mod fake_imds;
pub mod fake_login;
pub mod fake_server;
pub mod private_mount;
pub mod projected_volume;
pub mod redis;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub use cache_dir::CacheDir;
pub use config::{ConfigText, TestConfig, credential, table, utf8};
pub use fake_entra::{ConnectionFault, FakeEntra, Scripted};
pub use private_mount::PrivateMount;
pub use projected_volume::ProjectedVolume;

/// The App Service secret every test relay uses.
pub const HEADER_SECRET: &str = "test-identity-header-secret";

/// IMDS-flavour queries for the resources tests ask for.
pub const VAULT: &str = "api-version=2018-02-01&resource=https://vault.azure.net";
pub const STORAGE: &str = "api-version=2018-02-01&resource=https://storage.azure.com";
pub const GRAPH: &str = "api-version=2018-02-01&resource=https://graph.microsoft.com";
pub const MANAGEMENT: &str = "api-version=2018-02-01&resource=https://management.azure.com";

/// A JWT-shaped service-account token with the given subject (unsigned; Entra's fake does
/// not verify it, it compares it).
pub fn service_account_token(subject: &str) -> String {
    let encode = |value: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string());
    format!(
        "{}.{}.c2lnbmF0dXJl",
        encode(serde_json::json!({"alg": "RS256"})),
        encode(serde_json::json!({
            "iss": "https://oidc.prod-aks.azure.com/tenant/issuer/",
            "sub": subject,
            "aud": ["api://AzureADTokenExchange"],
        }))
    )
}

/// A `tokenrelay` process started for one test; killed when dropped.
pub struct TestRelay {
    child: Option<Child>,
    pub base_url: String,
    pub stdout_lines: Vec<String>,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl TestRelay {
    /// `tokenrelay serve --config <file with toml> --listen 127.0.0.1:0 <args>`.
    pub async fn serve(toml: &(impl ConfigText + ?Sized), args: &[&str]) -> Self {
        Self::serve_with_env(toml, args, &[]).await
    }

    /// Like `serve`, with extra environment variables for the child process only.
    pub async fn serve_with_env(toml: &(impl ConfigText + ?Sized), args: &[&str], env: &[(&str, &str)]) -> Self {
        let (dir, config) = config_dir(toml);
        Self::spawn_with_env(dir, &serve_args(&config, args), 1, env).await
    }

    /// Like [`TestRelay::serve`], with the binary started through `wrapper` (a program and its
    /// arguments that run the rest of the command line, such as `nsenter ... --`).
    pub async fn serve_via(wrapper: &[String], toml: &(impl ConfigText + ?Sized), args: &[&str]) -> Self {
        let (dir, config) = config_dir(toml);
        Self::start(dir, command_via(wrapper), &serve_args(&config, args), 1, &[]).await
    }

    /// Like [`TestRelay::serve`], waiting for `lines` lines of stdout (the admin listener
    /// prints a second one).
    pub async fn serve_lines(toml: &(impl ConfigText + ?Sized), args: &[&str], lines: usize) -> Self {
        let (dir, config) = config_dir(toml);
        Self::spawn(dir, &serve_args(&config, args), lines).await
    }

    /// `tokenrelay serve --dev --listen 127.0.0.1:0 <args>` with no configuration file.
    pub async fn serve_dev(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut full = vec!["serve", "--dev", "--listen", "127.0.0.1:0"];
        full.extend_from_slice(args);
        Self::spawn(dir, &full, 4).await
    }

    async fn spawn(dir: tempfile::TempDir, args: &[&str], header_lines: usize) -> Self {
        Self::spawn_with_env(dir, args, header_lines, &[]).await
    }

    async fn spawn_with_env(dir: tempfile::TempDir, args: &[&str], header_lines: usize, env: &[(&str, &str)]) -> Self {
        Self::start(dir, command(), args, header_lines, env).await
    }

    async fn start(
        dir: tempfile::TempDir,
        mut command: Command,
        args: &[&str],
        header_lines: usize,
        env: &[(&str, &str)],
    ) -> Self {
        let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let mut child = command
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("the tokenrelay binary starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut stdout_lines = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while stdout_lines.len() < header_lines {
            match tokio::time::timeout_at(deadline, lines.next_line()).await {
                Ok(Ok(Some(line))) => stdout_lines.push(line),
                other => panic!(
                    "tokenrelay did not start ({other:?}); stderr:\n{}",
                    std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default()
                ),
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let base_url = stdout_lines[0]
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .expect("the first line names the address")
            .to_owned();
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        Self { child: Some(child), base_url, stdout_lines, dir, http }
    }

    /// The process id of the running binary.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().and_then(Child::id).expect("still running")
    }

    /// A path inside the test's private directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Everything the process logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.path("stderr.log")).unwrap_or_default()
    }

    /// The `/metrics` text of the main listener.
    pub async fn metrics(&self) -> String {
        self.get("/metrics", &[]).await.text().await.unwrap()
    }

    /// An IMDS-style request with `Metadata: true`.
    pub async fn imds(&self, query: &str) -> reqwest::Response {
        self.get(&format!("/metadata/identity/oauth2/token?{query}"), &[("Metadata", "true")]).await
    }

    /// An App Service style request with the right secret.
    pub async fn app_service(&self, query: &str) -> reqwest::Response {
        self.get(&format!("/msi/token?{query}"), &[("X-IDENTITY-HEADER", HEADER_SECRET)]).await
    }

    /// A POST of `body` (JSON text).
    pub async fn post(&self, path: &str, body: &str) -> reqwest::Response {
        let request = self.http.post(format!("{}{path}", self.base_url)).header("content-type", "application/json");
        request.body(body.to_owned()).send().await.expect("tokenrelay answers")
    }

    /// Any GET with the given headers.
    pub async fn get(&self, path_and_query: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut request = self.http.get(format!("{}{path_and_query}", self.base_url));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("tokenrelay answers")
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("still running");
        let pid = child.id().expect("has a pid").to_string();
        let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success());
        tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .expect("tokenrelay exits after SIGTERM")
            .unwrap()
    }
}

/// A test's private directory holding `toml` as its configuration file, and that file's path.
fn config_dir(toml: &(impl ConfigText + ?Sized)) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tokenrelay.toml");
    std::fs::write(&config, toml.config_text()).unwrap();
    let config = config.to_str().unwrap().to_owned();
    (dir, config)
}

/// `serve --config <config> --listen 127.0.0.1:0 <args>`.
fn serve_args<'a>(config: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut full = vec!["serve", "--config", config, "--listen", "127.0.0.1:0"];
    full.extend_from_slice(args);
    full
}

/// The binary under test, with an environment free of the caller's Azure variables.
///
/// A default credential chain must never reach the real IMDS address from a test, so the
/// IMDS host is pointed at a loopback port nothing listens on (tests that want a managed
/// identity set `AZURE_POD_IDENTITY_AUTHORITY_HOST` or `IDENTITY_ENDPOINT` themselves).
pub fn command() -> Command {
    command_via(&[])
}

/// [`command`] run through `wrapper` (empty: directly). The wrapper must pass its environment
/// on, as `nsenter` does.
pub fn command_via(wrapper: &[String]) -> Command {
    let mut command = match wrapper {
        [] => Command::new(env!("CARGO_BIN_EXE_tokenrelay")),
        [program, args @ ..] => {
            let mut command = Command::new(program);
            command.args(args).arg(env!("CARGO_BIN_EXE_tokenrelay"));
            command
        }
    };
    for (key, _) in std::env::vars() {
        if key.starts_with("AZURE_")
            || key.starts_with("TOKENRELAY_")
            || key.starts_with("IDENTITY_")
            || key.starts_with("MSI_")
            || key.starts_with("SYSTEM_")
            || key == "IMDS_ENDPOINT"
            || key == "RUST_LOG"
        {
            command.env_remove(key);
        }
    }
    command.env("AZURE_POD_IDENTITY_AUTHORITY_HOST", UNREACHABLE_IMDS);
    command
}

/// Where tests point the default chain's IMDS: a loopback port that refuses connections.
pub const UNREACHABLE_IMDS: &str = "http://127.0.0.1:9";

/// The value of the first sample of `name` in the Prometheus text `text` whose line carries
/// every one of `labels` (such as `result="hit"`).
pub fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|line| line.starts_with(name) && !line.starts_with('#'))
        .find(|line| labels.iter().all(|label| line.contains(label)))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Reads a JSON body, failing with the raw text if it is not JSON.
pub async fn json(response: reqwest::Response) -> serde_json::Value {
    let text = response.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// How long a test waits for something before it fails instead of hanging. Generous, so a
/// loaded machine (CI shares two cores) never fails a correct test; a passing test never
/// waits for it.
pub const FAILURE_DEADLINE: Duration = Duration::from_secs(30);

/// Polls `condition` every 20 ms until it holds, failing after [`FAILURE_DEADLINE`].
///
/// For effects no fake can signal: what the relay writes to its log, its files and its
/// `/metrics` (which serves one rendering for up to a second, so a new count shows up only
/// after the next rendering), and its readiness. Effects on a fake are awaited through the
/// fake itself (`FakeEntra::wait_for_requests`).
pub async fn eventually(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + FAILURE_DEADLINE;
    while tokio::time::Instant::now() < deadline {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Writes a file (used for token files and secrets).
pub fn write(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap();
}
