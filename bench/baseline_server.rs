//! The load benchmark's baseline: the least an HTTP/1.1 server on this stack can do, answering
//! every request with a precomputed JSON body of the given size. `bench/load.sh` measures
//! tokenrelay against it so its figures are ratios to this machine's limit, not raw numbers.
//!
//! Usage: `baseline_server ADDR BODY_BYTES`

use std::convert::Infallible;

use axum::body::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:18090".into());
    let size: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1500);
    // A JSON object of exactly `size` bytes: {"access_token":"aaaa…"}.
    let padding = size.saturating_sub(r#"{"access_token":""}"#.len());
    let body = Bytes::from(format!("{{\"access_token\":\"{}\"}}", "a".repeat(padding)));
    // Same runtime shape as tokenrelay: tokio's multi-threaded scheduler.
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
        println!("baseline listening on http://{}", listener.local_addr().unwrap());
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let body = body.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_request: Request<hyper::body::Incoming>| {
                    let body = body.clone();
                    async move {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(body))
                                .unwrap(),
                        )
                    }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
}
