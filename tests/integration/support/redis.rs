//! A real Redis server (Debian's `redis-server`; Valkey's `valkey-server` speaks the same
//! protocol) on a free loopback port, with its own temporary directory, for the shared-cache
//! tests. It is the real service, not a fake: `SET … NX PX`, expiry, `EVAL`, `KEYS` and `DUMP`
//! behave as they do in production.
//!
//! The server must be installed: `.ci/run` installs it, and a machine without it fails these
//! tests loudly instead of skipping them (a skipped test would hide that the shared cache is
//! untested).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `redis-server`; killed when dropped.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

/// The server binary: `redis-server`, or `valkey-server` where only Valkey is installed.
fn binary() -> PathBuf {
    for name in ["redis-server", "valkey-server"] {
        for dir in std::env::var("PATH").unwrap_or_default().split(':').chain(["/usr/bin", "/usr/sbin"]) {
            let path = PathBuf::from(dir).join(name);
            if path.is_file() {
                return path;
            }
        }
    }
    panic!(
        "redis-server is not installed, and the shared-cache tests need a real server: \
         apt-get install redis-server (.ci/run installs it)"
    );
}

impl RedisServer {
    /// Starts a server on a free loopback port, with persistence off, and waits until it answers.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = Self { child: None, port, dir };
        server.restart().await;
        server
    }

    /// Starts the server again on the same port (after [`RedisServer::stop`]); it comes back empty.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::File::create(self.dir.path().join("redis.log")).unwrap();
        let child = Command::new(binary())
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string(), "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(client) = redis::Client::open(self.url())
                && let Ok(mut connection) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING").query_async::<String>(&mut connection).await.is_ok()
            {
                return;
            }
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || tokio::time::Instant::now() > deadline {
                panic!(
                    "redis-server did not start on port {} ({exited:?}):\n{}",
                    self.port,
                    std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (as a crash or a lost node would) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A connection for the test's own commands.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
    }

    /// Every key in the server (`KEYS *`, sorted).
    pub async fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> =
            redis::cmd("KEYS").arg("*").query_async(&mut self.connection().await).await.unwrap();
        keys.sort();
        keys
    }

    /// `DUMP key`: the server's serialisation of the value.
    pub async fn dump(&self, key: &str) -> Vec<u8> {
        redis::cmd("DUMP").arg(key).query_async(&mut self.connection().await).await.unwrap()
    }

    /// `GET key`.
    pub async fn get(&self, key: &str) -> Option<Vec<u8>> {
        redis::cmd("GET").arg(key).query_async(&mut self.connection().await).await.unwrap()
    }

    /// `SET key value KEEPTTL`: replaces a value, keeping its expiry.
    pub async fn set(&self, key: &str, value: &[u8]) {
        let () = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("KEEPTTL")
            .query_async(&mut self.connection().await)
            .await
            .unwrap();
    }

    /// `PTTL key`: milliseconds until the key expires (-1: no expiry, -2: no key).
    pub async fn pttl(&self, key: &str) -> i64 {
        redis::cmd("PTTL").arg(key).query_async(&mut self.connection().await).await.unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
