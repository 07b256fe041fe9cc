//! A stalled-reader flood against a running tokenrelay, and what it does to other clients:
//! CONNECTIONS peers pipeline `GET PATH` without end and never read, while a probe (a fresh
//! connection every 2 seconds with a 2-second timeout, as the kubelet probes) asks PROBE_URL
//! (with `Metadata: true`, so that it may be a token request) from the flood's start. Prints
//! each probe, how many stalled peers the server disconnected and when, and the server's
//! resident memory (VmRSS of PID) before, at peak and at the end.
//!
//! Usage: `stalled_readers ADDR PATH CONNECTIONS SECONDS PROBE_URL [PID] [--reconnect]`, for
//! instance `stalled_readers 127.0.0.1:8081 /metrics 1024 60 http://127.0.0.1:8081/healthz 4242`.
//! With `--reconnect` each peer connects again when the server drops it, so the flood is
//! sustained. Loopback only; the file-descriptor limit must exceed CONNECTIONS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let reconnect = args.iter().any(|a| a == "--reconnect");
    args.retain(|a| a != "--reconnect");
    let [addr, path, connections, seconds, probe_url, rest @ ..] = args.as_slice() else {
        eprintln!("usage: stalled_readers ADDR PATH CONNECTIONS SECONDS PROBE_URL [PID] [--reconnect]");
        std::process::exit(2);
    };
    let flood = Flood {
        addr: addr.parse().expect("ADDR is an address:port"),
        request: format!("GET {path} HTTP/1.1\r\nHost: x\r\nMetadata: true\r\n\r\n").repeat(32).into_bytes().into(),
        connections: connections.parse().expect("CONNECTIONS is a number"),
        reconnect,
        started: Instant::now(),
        disconnected: Arc::default(),
    };
    let duration = Duration::from_secs(seconds.parse().expect("SECONDS is a number"));
    let pid: Option<u32> = rest.first().map(|p| p.parse().expect("PID is a number"));
    println!("{} stalled readers of {path}{}", flood.connections, if reconnect { ", reconnecting" } else { "" });
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(run(flood, duration, probe_url, pid));
}

struct Flood {
    addr: SocketAddr,
    request: Arc<[u8]>,
    connections: usize,
    reconnect: bool,
    started: Instant,
    /// Peers the server disconnected (their write failed).
    disconnected: Arc<AtomicUsize>,
}

impl Flood {
    /// Connects the peers one after the other (in a task, so that probing starts at once);
    /// prints when all are connected.
    fn start(&self) {
        let (addr, request, connections, reconnect, started, disconnected) = (
            self.addr,
            Arc::clone(&self.request),
            self.connections,
            self.reconnect,
            self.started,
            Arc::clone(&self.disconnected),
        );
        tokio::spawn(async move {
            for _ in 0..connections {
                let stream = connect(addr).await;
                let (request, disconnected) = (Arc::clone(&request), Arc::clone(&disconnected));
                tokio::spawn(async move {
                    let mut stream = stream;
                    loop {
                        while stream.write_all(&request).await.is_ok() {}
                        disconnected.fetch_add(1, Ordering::Relaxed);
                        if !reconnect {
                            return;
                        }
                        stream = connect(addr).await;
                    }
                });
            }
            println!("t={:5.1} s  all {connections} connected", started.elapsed().as_secs_f64());
        });
    }
}

async fn connect(addr: SocketAddr) -> tokio::net::TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    // A small receive window, so that fewer answers fill the buffers.
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(addr).await.expect("connect")
}

async fn run(flood: Flood, duration: Duration, probe_url: &str, pid: Option<u32>) {
    let rss_before = pid.map(rss_kib);
    let mut rss_peak = rss_before.unwrap_or(0);
    flood.start();
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let (mut answered, mut missed, mut missed_in_a_row, mut longest_miss_run) = (0, 0, 0, 0);
    while flood.started.elapsed() < duration {
        let sent = Instant::now();
        let outcome = client.get(probe_url).header("Metadata", "true").send().await;
        let at = flood.started.elapsed().as_secs_f64();
        let dropped = flood.disconnected.load(Ordering::Relaxed);
        match outcome {
            Ok(response) if response.status().is_success() => {
                answered += 1;
                missed_in_a_row = 0;
                println!(
                    "t={at:5.1} s  probe answered in {} ms ({dropped} peers dropped so far)",
                    sent.elapsed().as_millis()
                );
            }
            other => {
                missed += 1;
                missed_in_a_row += 1;
                longest_miss_run = longest_miss_run.max(missed_in_a_row);
                let why = match other {
                    Ok(response) => response.status().to_string(),
                    Err(error) if error.is_timeout() => "timed out".to_owned(),
                    Err(error) => {
                        std::error::Error::source(&error).map_or_else(|| error.to_string(), ToString::to_string)
                    }
                };
                println!("t={at:5.1} s  probe missed ({why}; {dropped} peers dropped so far)");
            }
        }
        if let Some(pid) = pid {
            rss_peak = rss_peak.max(rss_kib(pid));
        }
        tokio::time::sleep(Duration::from_secs(2).saturating_sub(sent.elapsed())).await;
    }
    println!("probes: {answered} answered, {missed} missed, at most {longest_miss_run} missed in a row");
    println!("peers disconnected by the server: {}", flood.disconnected.load(Ordering::Relaxed));
    if let (Some(pid), Some(before)) = (pid, rss_before) {
        let end = rss_kib(pid);
        println!(
            "server VmRSS: {} MiB before, {} MiB at peak, {} MiB at the end",
            before / 1024,
            rss_peak.max(end) / 1024,
            end / 1024
        );
    }
}

/// VmRSS of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the server process exists");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS in /proc/PID/status");
    line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).expect("VmRSS in KiB")
}
