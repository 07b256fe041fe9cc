//! What the token handlers read of a request: its target and a few headers. Both ways a
//! request arrives provide it: hyper's parsed request (`Parts`) and the direct path's head,
//! borrowed from the connection's read buffer (`super::direct`), so the checks are one code
//! for both and the direct path builds no `Uri` or `HeaderMap`.

use axum::http::request::Parts;
use axum::http::{HeaderName, Request};
use opentelemetry::propagation::Extractor;

/// A request's target and headers, as the token handlers read them.
pub trait RequestHead {
    /// The target's path.
    fn path(&self) -> &str;

    /// The target's query, without its `?`.
    fn query(&self) -> Option<&str>;

    /// The target's authority, when the request line has the absolute form
    /// (`GET http://host/path`); `None` for the usual origin form.
    fn authority(&self) -> Option<&str>;

    /// The values of the header `name`, in the order they came.
    fn header_values<'a>(&'a self, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> + use<'a, Self>;

    /// The first value of the header `name`.
    fn header(&self, name: &HeaderName) -> Option<&[u8]> {
        self.header_values(name).next()
    }

    /// Whether the request has the header `name`.
    fn has_header(&self, name: &HeaderName) -> bool {
        self.header(name).is_some()
    }

    /// The headers, for a W3C trace context (read only when traces are exported).
    fn trace_context(&self) -> impl Extractor + '_;
}

/// A header value as text, when it is visible ASCII, spaces and tabs only: what
/// `HeaderValue::to_str` accepts, so both kinds of head read a value alike.
pub fn header_text(value: &[u8]) -> Option<&str> {
    if value.iter().all(|&b| b == b'\t' || (b' '..=b'~').contains(&b)) { std::str::from_utf8(value).ok() } else { None }
}

impl RequestHead for Parts {
    fn path(&self) -> &str {
        self.uri.path()
    }

    fn query(&self) -> Option<&str> {
        self.uri.query()
    }

    fn authority(&self) -> Option<&str> {
        self.uri.authority().map(|authority| authority.as_str())
    }

    fn header_values<'a>(&'a self, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> + use<'a> {
        self.headers.get_all(name).iter().map(|value| value.as_bytes())
    }

    fn trace_context(&self) -> impl Extractor + '_ {
        opentelemetry_http::HeaderExtractor(&self.headers)
    }
}

impl<B> RequestHead for Request<B> {
    fn path(&self) -> &str {
        self.uri().path()
    }

    fn query(&self) -> Option<&str> {
        self.uri().query()
    }

    fn authority(&self) -> Option<&str> {
        self.uri().authority().map(|authority| authority.as_str())
    }

    fn header_values<'a>(&'a self, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> + use<'a, B> {
        self.headers().get_all(name).iter().map(|value| value.as_bytes())
    }

    fn trace_context(&self) -> impl Extractor + '_ {
        opentelemetry_http::HeaderExtractor(self.headers())
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn header_text_accepts_what_header_value_to_str_accepts() {
        for byte in 0..=255u8 {
            let raw = [b'a', byte, b'z'];
            let Ok(value) = HeaderValue::from_bytes(&raw) else {
                continue;
            };
            assert_eq!(header_text(&raw), value.to_str().ok(), "byte {byte:#04x}");
        }
    }
}
