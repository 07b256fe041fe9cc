//! The connection loop. A plain `GET` of a token endpoint, the request an SDK sends for every
//! token, is read, answered and written here directly; the first request that is anything else
//! hands the connection, with the bytes read so far, to hyper for the rest of its life.
//!
//! hyper's per-request machinery (its dispatcher and connection state machine, the service
//! call and its boxed future, the response encoder's buffers) cost a cache hit more
//! instructions than the baseline server's whole request (docs/benchmarks.md). The token
//! requests need little of it: no body, no upgrades, no `Expect`, no chunked encoding, one
//! answer of known length.
//!
//! What this path takes is deliberately narrow, and everything outside it goes to hyper,
//! which stays the judge of everything unusual: a head that is complete in the bytes at hand
//! and parses with hyper's own parser (httparse) under its defaults, HTTP/1.1, method `GET`, a
//! target that [`Endpoints::token_flavour`] names, header values `http` accepts, and none of
//! `Content-Length`, `Transfer-Encoding`, `Expect`, `Upgrade` or a `Connection` other than
//! `keep-alive`. Such a request is left where it was read and handed to the same handler
//! hyper's service calls, through [`RequestHead`]: its path is the target up to the first `?`
//! and its query the rest, as `http::Uri` splits a target of those characters, so the answer
//! is the same whichever path served it. The response is written as hyper writes it (status
//! line, the handler's headers, `content-length`, `date`).
//!
//! The deadlines, the connection slot and eviction are the connection's, not the path's: both
//! read and write through the same [`Deadlines`] and count requests on the same [`Activity`].

use std::cell::RefCell;
use std::fmt;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes, HttpBody};
use axum::http::{HeaderName, header};
use axum::response::Response;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use opentelemetry::propagation::Extractor;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use zeroize::Zeroize;

use super::connection::{Activity, Deadlines, Tracked};
use super::endpoints::Endpoints;
use super::head::{RequestHead, header_text};
use super::token::{Flavour, TokenAnswer};

/// The most headers a request on the direct path may have; one with more goes to hyper,
/// whose limit (100) then applies. SDKs send fewer than 15.
const MAX_HEADERS: usize = 32;

/// Read buffer per connection, as hyper's initial one. A head larger than what one read
/// brings is not on the direct path.
const READ_BUFFER: usize = 8 * 1024;

/// How a connection ended when it did not end cleanly.
#[derive(Debug)]
pub enum ConnectionError {
    /// Reading or writing on the direct path: a deadline or the peer.
    Io(std::io::Error),
    /// hyper, once it served the connection.
    Http(hyper::Error),
}

impl fmt::Display for ConnectionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(error) => write!(f, "{error}"),
            // hyper's own message is generic ("connection error"); the cause says which
            // deadline or peer error ended the connection.
            Self::Http(error) => match std::error::Error::source(error) {
                Some(cause) => write!(f, "{error}: {cause}"),
                None => write!(f, "{error}"),
            },
        }
    }
}

impl std::error::Error for ConnectionError {}

impl From<std::io::Error> for ConnectionError {
    fn from(error: std::io::Error) -> Self {
        Self::Io(error)
    }
}

/// Serves one accepted connection until the peer ends it, a deadline passes, or the listener
/// closes it (see [`Activity::poll_closing`]).
pub async fn serve<T>(
    mut io: Deadlines<T>,
    endpoints: Endpoints,
    activity: Arc<Activity>,
    http: Arc<http1::Builder>,
) -> Result<(), ConnectionError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut buffers = Buffers { read: Vec::with_capacity(READ_BUFFER), start: 0, answer: Vec::new(), head: Vec::new() };
    loop {
        if buffers.start == buffers.read.len() {
            // Reads into the same memory every time: the buffer keeps its capacity.
            buffers.read.clear();
            buffers.start = 0;
            let mut reading = std::pin::pin!(io.read_buf(&mut buffers.read));
            let read = std::future::poll_fn(|cx| match reading.as_mut().poll(cx) {
                Poll::Ready(read) => Poll::Ready(Some(read)),
                Poll::Pending => activity.poll_closing(cx).map(|()| None),
            })
            .await;
            match read {
                // The peer ended the connection, or the listener closes it between requests.
                Some(Ok(0)) | None => return Ok(()),
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error.into()),
            }
        }
        let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let Some(head) = RawHead::parse(&buffers.read[buffers.start..], &mut slots, &endpoints) else {
            let rest = Replayed { read: buffers.read[buffers.start..].to_vec(), at: 0, io };
            drop(buffers);
            return Box::pin(hand_over(rest, endpoints, activity, http)).await;
        };
        let answer = {
            let _in_flight = activity.request_started();
            endpoints.token(head.flavour, &head).await
        };
        buffers.start += head.length;
        // Closing: hyper's graceful shutdown would say so on an answer in progress; so does
        // this one, so that a pooled client sends no further request on the connection.
        let closing = activity.is_closing();
        let start = encode(answer, closing, &mut buffers.answer, &mut buffers.head).await?;
        io.write_all(&buffers.answer[start..]).await?;
        if closing || activity.is_closing() {
            return Ok(());
        }
    }
}

/// A connection's own buffers, overwritten with zeros when the connection ends
/// (docs/threat-model.md#memory): the requests read (an App Service request carries the
/// header secret) and the last answer written (a token).
struct Buffers {
    read: Vec<u8>,
    /// Where the next request starts in `read` (pipelined requests follow each other).
    start: usize,
    answer: Vec<u8>,
    /// A served token's status line and headers (no secret), built before they go into
    /// `answer` in front of the body.
    head: Vec<u8>,
}

impl Drop for Buffers {
    fn drop(&mut self) {
        self.read.zeroize();
        self.answer.zeroize();
    }
}

/// A request for the direct path, borrowed from the connection's read buffer.
struct RawHead<'b> {
    flavour: Flavour,
    path: &'b str,
    query: Option<&'b str>,
    headers: &'b [httparse::Header<'b>],
    /// Bytes of the head (the request has no body).
    length: usize,
}

impl<'b> RawHead<'b> {
    /// The request at the start of `bytes`, when it is one the direct path answers (see the
    /// module documentation); `None` leaves it, and the connection, to hyper.
    fn parse(
        bytes: &'b [u8],
        slots: &'b mut [MaybeUninit<httparse::Header<'b>>],
        endpoints: &Endpoints,
    ) -> Option<Self> {
        let mut parsed = httparse::Request::new(&mut []);
        let length = match parsed.parse_with_uninit_headers(bytes, slots) {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) | Err(_) => return None,
        };
        if parsed.method != Some("GET") || parsed.version != Some(1) {
            return None;
        }
        let target = parsed.path?;
        if !target.starts_with('/') || !target.bytes().all(plain_target_byte) {
            return None;
        }
        let (path, query) = match target.bytes().position(|b| b == b'?') {
            Some(at) => (&target[..at], Some(&target[at + 1..])),
            None => (target, None),
        };
        let flavour = endpoints.token_flavour(path, target.len())?;
        let headers = parsed.headers;
        if !headers.iter().all(plain_header) {
            return None;
        }
        Some(Self { flavour, path, query, headers, length })
    }
}

impl<'b> RequestHead for RawHead<'b> {
    fn path(&self) -> &str {
        self.path
    }

    fn query(&self) -> Option<&str> {
        self.query
    }

    fn authority(&self) -> Option<&str> {
        // Only the origin form is taken (see `plain_target_byte`).
        None
    }

    fn header_values<'a>(&'a self, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> + use<'a, 'b> {
        let name = name.clone();
        self.headers.iter().filter(move |field| field.name.eq_ignore_ascii_case(name.as_str())).map(|field| field.value)
    }

    fn trace_context(&self) -> impl Extractor + '_ {
        RawExtractor(self.headers)
    }
}

/// A raw head's headers as a trace context carrier.
struct RawExtractor<'a>(&'a [httparse::Header<'a>]);

impl Extractor for RawExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|field| field.name.eq_ignore_ascii_case(key)).and_then(|field| header_text(field.value))
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|field| field.name).collect()
    }
}

/// Whether a request target byte is one the direct path takes: RFC 3986's unreserved
/// characters, sub-delimiters, `:`, `@`, `/`, `?` and `%` (percent-encoding). `http::Uri`
/// accepts each of them and gives a target made of them the same path (up to the first `?`)
/// and query (after it); a target with anything else (`#`, spaces, quotes, non-ASCII) goes to
/// hyper, which decides.
fn plain_target_byte(byte: u8) -> bool {
    PLAIN_TARGET[usize::from(byte)]
}

/// [`plain_target_byte`] as a table: it is asked for every byte of every target.
static PLAIN_TARGET: [bool; 256] = {
    let mut table = [false; 256];
    let punctuation = b"-._~!$&'()*+,;=:@/?%";
    let mut i = 0;
    while i < punctuation.len() {
        table[punctuation[i] as usize] = true;
        i += 1;
    }
    let mut byte = 0;
    while byte < 256 {
        if (byte as u8).is_ascii_alphanumeric() {
            table[byte] = true;
        }
        byte += 1;
    }
    table
};

/// Whether a header leaves the request plain: no body, nothing to negotiate, the connection
/// kept alive, and a value `http::HeaderValue` accepts (httparse admits no byte it refuses
/// but DEL; checked all the same, as hyper's service would never see such a request).
fn plain_header(field: &httparse::Header<'_>) -> bool {
    let name = field.name;
    // By length first: most headers are none of these, and are passed by one comparison.
    let is = |refused: &str| name.len() == refused.len() && name.eq_ignore_ascii_case(refused);
    let plain = match name.len() {
        6 => !is("expect"),
        7 => !is("upgrade"),
        10 if is("connection") => header_text(field.value).is_some_and(|v| v.trim().eq_ignore_ascii_case("keep-alive")),
        14 => !is("content-length"),
        17 => !is("transfer-encoding"),
        _ => true,
    };
    plain && field.value.iter().all(|&b| HEADER_VALUE[usize::from(b)])
}

/// The bytes `http::HeaderValue` accepts: tab and everything from space up but DEL.
static HEADER_VALUE: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = byte == b'\t' as usize || (byte >= 0x20 && byte != 0x7f);
        byte += 1;
    }
    table
};

/// Writes `answer` into `out` as hyper writes a response to an HTTP/1.1 request: the status
/// line, the handler's headers, `content-length` and `date` unless the handler set them (and
/// `connection: close` when `closing`), then the body. Returns where in `out` the answer
/// starts.
///
/// A served token's body is written first, [`SERVED_HEAD_ROOM`] bytes in, straight from the
/// cache entry: its length is known once it is written, and then its head (built in `head`)
/// goes into the room just before it. So the token is copied once, into a buffer that is
/// zeroed when the connection ends.
async fn encode(
    answer: TokenAnswer,
    closing: bool,
    out: &mut Vec<u8>,
    head: &mut Vec<u8>,
) -> Result<usize, ConnectionError> {
    out.clear();
    let response = match answer {
        TokenAnswer::Served(body) => {
            // Grown here, not by the writes below: growing would copy the last token served
            // and free the old block without zeroing it.
            let needed = SERVED_HEAD_ROOM + body.max_len();
            if out.capacity() < needed {
                out.zeroize();
                *out = Vec::with_capacity(needed);
            }
            out.resize(SERVED_HEAD_ROOM, 0);
            body.write_to(out);
            served_head(head, out.len() - SERVED_HEAD_ROOM, closing);
            let start = SERVED_HEAD_ROOM - head.len();
            out[start..SERVED_HEAD_ROOM].copy_from_slice(head);
            return Ok(start);
        }
        TokenAnswer::Other(response) => response,
    };
    // A refusal holds no token: it is written into a vector of its own, which replaces the
    // buffer (zeroed first) when the buffer is too small, so the buffer never grows with a
    // token in it.
    let refusal = encode_response(response, closing).await?;
    if out.capacity() < refusal.len() {
        out.zeroize();
        *out = refusal;
    } else {
        out.extend_from_slice(&refusal);
    }
    Ok(0)
}

/// A served token's status line and [`TokenAnswer::SERVED_HEADERS`], as one piece (a test
/// compares the two).
const SERVED_HEAD_START: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: no-store\r\n";

/// The status line and headers of a served token whose body is `length` bytes long: at most
/// [`SERVED_HEAD_ROOM`] bytes (a test writes the longest).
fn served_head(head: &mut Vec<u8>, length: usize, closing: bool) {
    head.clear();
    head.extend_from_slice(SERVED_HEAD_START);
    if closing {
        push_header(head, "connection", b"close");
    }
    push_header(head, "content-length", itoa::Buffer::new().format(length).as_bytes());
    http_date(|date| push_header(head, "date", date.as_bytes()));
    head.extend_from_slice(b"\r\n");
}

/// `response` as hyper writes it (see [`encode`]).
async fn encode_response(response: Response, closing: bool) -> Result<Vec<u8>, ConnectionError> {
    let (parts, mut body) = response.into_parts();
    // The handlers' bodies are whole (`Full`): the first frame is the body, ready at once.
    let data = collect(&mut body).await?;
    let mut out = Vec::with_capacity(data.len() + 512);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("<none>").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        push_header(&mut out, name.as_str(), value.as_bytes());
    }
    if closing && !parts.headers.contains_key(header::CONNECTION) {
        push_header(&mut out, "connection", b"close");
    }
    if !parts.headers.contains_key(header::CONTENT_LENGTH) {
        push_header(&mut out, "content-length", itoa::Buffer::new().format(data.len()).as_bytes());
    }
    if !parts.headers.contains_key(header::DATE) {
        http_date(|date| push_header(&mut out, "date", date.as_bytes()));
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&data);
    Ok(out)
}

/// Room for a served token's status line and headers: 200 OK, the two fixed headers,
/// `connection: close`, a 20-digit `content-length` and `date` take 170 bytes.
const SERVED_HEAD_ROOM: usize = 256;

/// One `name: value` header line.
fn push_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A response body's data.
async fn collect(body: &mut Body) -> Result<Bytes, ConnectionError> {
    let mut data = Bytes::new();
    let mut more = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
        let frame = frame.map_err(|error| ConnectionError::Io(std::io::Error::other(error)))?;
        if let Ok(chunk) = frame.into_data() {
            if data.is_empty() {
                data = chunk;
            } else {
                more.push(chunk);
            }
        }
    }
    if more.is_empty() {
        return Ok(data);
    }
    let mut whole = Vec::with_capacity(data.len() + more.iter().map(Bytes::len).sum::<usize>());
    whole.extend_from_slice(&data);
    for chunk in &more {
        whole.extend_from_slice(chunk);
    }
    Ok(whole.into())
}

/// The current time as an HTTP date, rendered at most once a second per thread (as hyper
/// does), handed to `f`.
fn http_date(f: impl FnOnce(&str)) {
    thread_local! {
        static RENDERED: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
    RENDERED.with_borrow_mut(|(rendered_second, date)| {
        if *rendered_second != second {
            *rendered_second = second;
            *date = httpdate::fmt_http_date(now);
        }
        f(date);
    });
}

/// Serves the rest of the connection with hyper, the bytes read but not answered on the direct
/// path first. When the listener closes the connection, hyper finishes the request in
/// progress and closes it.
async fn hand_over<T>(
    io: Replayed<Deadlines<T>>,
    endpoints: Endpoints,
    activity: Arc<Activity>,
    http: Arc<http1::Builder>,
) -> Result<(), ConnectionError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Closing already: hyper answers the replayed request with `connection: close`, as the
    // direct path would, and closes (a close asked for later is handled below).
    let closing_builder;
    let http = if activity.is_closing() {
        let mut builder = http1::Builder::clone(&http);
        builder.keep_alive(false);
        closing_builder = builder;
        &closing_builder
    } else {
        &*http
    };
    let connection = http.serve_connection(TokioIo::new(io), Tracked::new(endpoints, Arc::clone(&activity)));
    let mut connection = std::pin::pin!(connection);
    let closing = std::future::poll_fn(|cx| activity.poll_closing(cx));
    tokio::select! {
        // The connection first: its first poll reads the replayed request, so a close asked
        // for already finishes that request instead of closing a connection hyper has read
        // nothing from (which would drop a request the direct path took off the socket).
        biased;
        result = connection.as_mut() => return result.map_err(ConnectionError::Http),
        () = closing => {}
    }
    connection.as_mut().graceful_shutdown();
    connection.await.map_err(ConnectionError::Http)
}

/// A connection whose first bytes were already read: reads return them first. They are
/// zeroed when dropped, as the direct path's buffers are.
struct Replayed<T> {
    read: Vec<u8>,
    /// How much of `read` has been returned.
    at: usize,
    io: T,
}

impl<T> Drop for Replayed<T> {
    fn drop(&mut self) {
        self.read.zeroize();
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Replayed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let rest = &this.read[this.at..];
        if rest.is_empty() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        this.at += n;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Replayed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::server::connection::{Connections, Timeouts};
    use crate::server::endpoints;

    /// Whether the direct path takes `request` (the whole of `request` being one head).
    fn taken(request: &str) -> bool {
        let endpoints = endpoints::for_tests(true, Some("/msi/token"), 300);
        let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        RawHead::parse(request.as_bytes(), &mut slots, &endpoints).is_some_and(|head| head.length == request.len())
    }

    const IMDS: &str = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net";

    /// The longest head of a served token (closing, the longest length) fits in the room
    /// `encode` leaves before the body, and its fixed start is the served headers.
    #[test]
    fn the_longest_served_head_fits_its_room() {
        let mut head = Vec::new();
        served_head(&mut head, usize::MAX, true);
        assert_eq!(head.len(), 170);
        assert!(head.len() <= SERVED_HEAD_ROOM);
        assert!(head.ends_with(b"\r\n\r\n"));
        let mut start = b"HTTP/1.1 200 OK\r\n".to_vec();
        for (name, value) in TokenAnswer::SERVED_HEADERS {
            push_header(&mut start, name.as_str(), value.as_bytes());
        }
        assert_eq!(SERVED_HEAD_START, start);
    }

    #[test]
    fn the_requests_sdks_send_take_the_direct_path() {
        for request in [
            format!("GET {IMDS} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nMetadata: true\r\n\r\n"),
            format!("GET /{IMDS} HTTP/1.1\r\nhost: localhost\r\nmetadata: True\r\nConnection: Keep-Alive\r\nAccept-Encoding: gzip, deflate\r\nUser-Agent: azsdk-python-identity/1.19.0 Python/3.12.3 (Linux-6.1.0)\r\nx-ms-client-request-id: 1b0c7a52-7d8b-11ef-9c1e-0242ac120002\r\nTraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n"),
            "GET /msi/token/?api-version=2019-08-01&resource=https://management.azure.com/&client_id=d0000000-0000-0000-0000-000000000001 HTTP/1.1\r\nX-IDENTITY-HEADER: s\r\n\r\n".to_owned(),
            "GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=api://x+y&msi_res_id=/subscriptions/1/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id HTTP/1.1\r\n\r\n".to_owned(),
        ] {
            assert!(taken(&request), "{request:?}");
        }
    }

    #[test]
    fn anything_unusual_is_left_to_hyper() {
        for request in [
            format!("GET {IMDS} HTTP/1.0\r\nMetadata: true\r\n\r\n"),
            format!("HEAD {IMDS} HTTP/1.1\r\nMetadata: true\r\n\r\n"),
            format!("POST {IMDS} HTTP/1.1\r\nMetadata: true\r\n\r\n"),
            format!("get {IMDS} HTTP/1.1\r\nMetadata: true\r\n\r\n"),
            format!("GET {IMDS} HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
            format!("GET {IMDS} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            format!("GET {IMDS} HTTP/1.1\r\nExpect: 100-continue\r\n\r\n"),
            format!("GET {IMDS} HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"),
            format!("GET {IMDS} HTTP/1.1\r\nConnection: close\r\n\r\n"),
            format!("GET {IMDS} HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\n\r\n"),
            format!("GET {IMDS} HTTP/1.1\r\nMetadata: true\r\n"),
            format!("GET {IMDS}#top HTTP/1.1\r\n\r\n"),
            format!("GET {IMDS}&x=\"y\" HTTP/1.1\r\n\r\n"),
            format!("GET http://localhost{IMDS} HTTP/1.1\r\n\r\n"),
            format!("GET {IMDS}&pad={} HTTP/1.1\r\n\r\n", "a".repeat(300)),
            format!("GET {IMDS} HTTP/1.1\r\n{}\r\n", "X-A: b\r\n".repeat(MAX_HEADERS + 1)),
            "GET /healthz HTTP/1.1\r\n\r\n".to_owned(),
            "GET /metadata/identity/oauth2/tokens HTTP/1.1\r\n\r\n".to_owned(),
            "GET * HTTP/1.1\r\n\r\n".to_owned(),
        ] {
            assert!(!taken(&request), "{request:?}");
        }
    }

    /// A connection over an in-memory pipe, served by [`serve`] until the peer ends it or the
    /// listener closes it.
    fn connection() -> (tokio::io::DuplexStream, Arc<Connections>, tokio::task::JoinHandle<Result<(), ConnectionError>>)
    {
        let (server, peer) = tokio::io::duplex(64 * 1024);
        let connections = Connections::new();
        let registration = connections.register();
        let activity = Arc::clone(registration.activity());
        let io = Deadlines::new(server, Timeouts::FOR_TESTS, Arc::clone(&activity));
        let endpoints = endpoints::for_tests(true, None, 300);
        let task = tokio::spawn(async move {
            let ended = serve(io, endpoints, activity, Arc::new(http1::Builder::new())).await;
            drop(registration);
            ended
        });
        (peer, connections, task)
    }

    /// The answer to one request: its head and body, read up to its length.
    async fn read_answer(peer: &mut tokio::io::DuplexStream) -> String {
        let mut answer = Vec::new();
        loop {
            let mut chunk = [0u8; 4096];
            let n = peer.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the connection ended before the answer: {answer:?}");
            answer.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&answer).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length: usize = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length: "))
                    .and_then(|length| length.parse().ok())
                    .expect("a length");
                if body.len() >= length {
                    return text;
                }
            }
        }
    }

    #[tokio::test]
    async fn closing_ends_an_idle_connection_at_once_and_a_busy_one_after_its_answer() {
        // Idle, after one answer.
        let (mut peer, connections, task) = connection();
        peer.write_all(format!("GET {IMDS} HTTP/1.1\r\n\r\n").as_bytes()).await.unwrap();
        assert!(read_answer(&mut peer).await.starts_with("HTTP/1.1 400 "));
        connections.close_all();
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("closed at once").unwrap().unwrap();
        tokio::time::timeout(Duration::from_secs(5), connections.drained()).await.expect("no connection left");
        let mut rest = Vec::new();
        assert_eq!(peer.read_to_end(&mut rest).await.unwrap(), 0);

        // Asked to close with a request sent but not yet read (the test's runtime has one
        // thread: the connection's task runs only once the test waits for the answer). The
        // request is answered, saying the connection closes, and the connection closes; the
        // same for a request handed to hyper.
        for (request, status) in
            [(format!("GET {IMDS} HTTP/1.1\r\n\r\n"), "400"), ("GET /healthz HTTP/1.1\r\n\r\n".to_owned(), "404")]
        {
            let (mut peer, connections, task) = connection();
            peer.write_all(request.as_bytes()).await.unwrap();
            connections.close_all();
            let mut answer = Vec::new();
            peer.read_to_end(&mut answer).await.unwrap();
            let answer = String::from_utf8(answer).unwrap();
            assert!(answer.starts_with(&format!("HTTP/1.1 {status} ")), "{request:?}: {answer:?}");
            assert!(answer.contains("\r\nconnection: close\r\n"), "{request:?}: {answer:?}");
            task.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn a_connection_handed_to_hyper_is_closed_after_its_answer_too() {
        let (mut peer, connections, task) = connection();
        peer.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").await.unwrap();
        let answer = read_answer(&mut peer).await;
        assert!(answer.starts_with("HTTP/1.1 "), "{answer:?}");
        connections.close_all();
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("closed at once").unwrap().unwrap();
    }
}
