//! The DNS rebinding guard: which `Host` a token request may name.
//!
//! After DNS rebinding, a web page's own host name resolves to this machine, and the
//! browser sends the page's requests, custom headers (`Metadata: true`) included, to the
//! listener as same-origin requests. What it cannot change is `Host`: it names the page's
//! host. So token requests are served only when `Host` names this machine the way a local
//! client does: a loopback address, `localhost`, `169.254.169.254` (where an iptables
//! redirect sends IMDS traffic), the listen address, or a name the operator listed in
//! `server.allowed_hosts` (`host.docker.internal`, a compose service name).
//!
//! An IP address in `Host` can never be the product of rebinding (the browser puts the
//! name it resolved there), so when the listener is bound to an unspecified address, whose
//! local addresses are not enumerated on the hot path, any address is admitted. A request
//! without `Host` (HTTP/1.0) is admitted too: browsers always send one.
//!
//! The check runs on every token request, so it only slices and compares the header's
//! bytes: no allocation; the listen address or `localhost` with the listen port is found by
//! one comparison, any other address by one parse.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::http::header;

use super::head::{RequestHead, header_text};
use crate::config::ServerConfig;

/// Where an iptables rule sends IMDS traffic: clients keep naming it in `Host`.
const IMDS_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254));

/// The longest `Host` quoted in an error: a DNS name is at most 253 bytes.
const MAX_QUOTED_HOST: usize = 253;

/// Which hosts a token request may name. The `Default` has no listen address and so admits
/// any address (and of names only `localhost`): for a listener without token endpoints.
#[derive(Debug, Default)]
pub struct AllowedHosts {
    /// The listen address, canonical; `None` when it is unspecified (any address admitted).
    listen: Option<IpAddr>,
    /// `server.allowed_hosts` names: lowercase, without a trailing dot.
    names: Box<[Box<str>]>,
    /// `server.allowed_hosts` addresses, canonical.
    addresses: Box<[IpAddr]>,
    /// `Host` values admitted by a plain comparison, before any parsing: the listen address
    /// as `ip:port` and `localhost:port`, which is what local clients send. Every one of
    /// them is also admitted by the full check.
    usual: Box<[Box<str>]>,
}

/// Why a request's host was refused, for its error message.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal<'a> {
    /// A host not in the list (quoted, shortened).
    NotAllowed(&'a str),
    /// A `Host` that is not visible ASCII, or more than one `Host`.
    Malformed,
}

impl AllowedHosts {
    /// The policy of a listener configured by `server`.
    pub fn new(server: &ServerConfig) -> Self {
        Self::for_listener(server.listen, &server.allowed_hosts)
    }

    /// The policy of a listener on `listen` with `allowed` (`server.allowed_hosts`).
    fn for_listener(listen: SocketAddr, allowed: &[String]) -> Self {
        let mut usual = vec![format!("localhost:{}", listen.port()).into_boxed_str()];
        // An address with a zone (`[fe80::1%2]:8080`) is no `Host` the full check admits.
        if !matches!(listen, SocketAddr::V6(v6) if v6.scope_id() != 0) {
            usual.push(listen.to_string().into_boxed_str());
        }
        let usual = usual.into_boxed_slice();
        let listen = listen.ip().to_canonical();
        let (addresses, names): (Vec<&String>, Vec<&String>) =
            allowed.iter().partition(|entry| entry.parse::<IpAddr>().is_ok());
        Self {
            usual,
            listen: (!listen.is_unspecified()).then_some(listen),
            names: names.into_iter().map(|name| name.as_str().into()).collect(),
            addresses: addresses.into_iter().filter_map(|a| a.parse::<IpAddr>().ok()).collect(),
        }
    }

    /// Whether the request names an admitted host: the target's authority when the request
    /// line carries one (absolute form, which takes precedence over `Host`), else `Host`.
    pub fn check<'a>(&self, request: &'a impl RequestHead) -> Result<(), Refusal<'a>> {
        let authority = match request.authority() {
            // `user@` is no part of the host.
            Some(authority) => authority.rsplit_once('@').map_or(authority, |(_, host)| host),
            None => {
                let mut values = request.header_values(&header::HOST);
                let Some(value) = values.next() else { return Ok(()) };
                if values.next().is_some() {
                    return Err(Refusal::Malformed);
                }
                header_text(value).ok_or(Refusal::Malformed)?
            }
        };
        if authority.is_empty() || self.admits(authority) {
            Ok(())
        } else {
            Err(Refusal::NotAllowed(shorten(authority)))
        }
    }

    /// Whether `authority` (`host`, `host:port`, `[v6]`, `[v6]:port`) is admitted.
    fn admits(&self, authority: &str) -> bool {
        self.usual.iter().any(|usual| **usual == *authority) || self.admits_parsed(authority)
    }

    /// [`Self::admits`] without the comparison with the usual values.
    fn admits_parsed(&self, authority: &str) -> bool {
        let Some((host, bracketed)) = split_port(authority) else { return false };
        if bracketed {
            return host.parse::<IpAddr>().is_ok_and(|ip| self.admits_address(ip));
        }
        // A name never parses as an IPv4 address, and the parse gives up at its first letter.
        if let Ok(ip) = host.parse::<Ipv4Addr>() {
            return self.admits_address(IpAddr::V4(ip));
        }
        let name = host.strip_suffix('.').unwrap_or(host);
        name.eq_ignore_ascii_case("localhost") || self.names.iter().any(|allowed| name.eq_ignore_ascii_case(allowed))
    }

    fn admits_address(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_loopback()
            || ip.is_unspecified()
            || ip == IMDS_ADDRESS
            || self.listen.is_none_or(|listen| listen == ip)
            || self.addresses.contains(&ip)
    }
}

/// The host of an authority and whether it was bracketed (an IPv6 address), or `None` when
/// what follows the host is not an optional `:digits` port.
fn split_port(authority: &str) -> Option<(&str, bool)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        return is_port_suffix(after).then_some((inside, true));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => {
            (!host.contains(':') && port.bytes().all(|b| b.is_ascii_digit())).then_some((host, false))
        }
        None => Some((authority, false)),
    }
}

fn is_port_suffix(text: &str) -> bool {
    text.is_empty() || text.strip_prefix(':').is_some_and(|port| port.bytes().all(|b| b.is_ascii_digit()))
}

/// At most [`MAX_QUOTED_HOST`] bytes of `host` (it is visible ASCII, so any cut is a
/// character boundary).
fn shorten(host: &str) -> &str {
    &host[..host.len().min(MAX_QUOTED_HOST)]
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue, Request, Uri};

    use super::*;

    fn hosts(listen: &str, allowed: &[&str]) -> AllowedHosts {
        let listen = SocketAddr::new(listen.parse().unwrap(), 8080);
        AllowedHosts::for_listener(listen, &allowed.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn the_usual_hosts_admitted_by_comparison_are_admitted_by_the_full_check_too() {
        for listen in ["127.0.0.1", "::1", "0.0.0.0", "::", "10.1.2.3", "fd00::1"] {
            let policy = hosts(listen, &[]);
            assert_eq!(policy.usual.len(), 2);
            for usual in &policy.usual {
                assert!(policy.admits_parsed(usual), "{usual} on {listen}");
            }
        }
        let zoned = AllowedHosts::for_listener("[fe80::1%2]:8080".parse().unwrap(), &[]);
        for usual in &zoned.usual {
            assert!(zoned.admits_parsed(usual), "{usual}");
        }
        assert!(!zoned.admits("[fe80::1%2]:8080"));
    }

    /// The check of a request with `uri` and `headers` (leaked, so that a refusal can borrow
    /// from it for the rest of the test).
    fn check(policy: &AllowedHosts, uri: &Uri, headers: &HeaderMap) -> Result<(), Refusal<'static>> {
        let (mut request, ()) = Request::new(()).into_parts();
        request.uri = uri.clone();
        request.headers = headers.clone();
        policy.check(Box::leak(Box::new(request)))
    }

    fn host_header(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn loopback_localhost_and_the_imds_address_are_admitted() {
        let policy = hosts("127.0.0.1", &[]);
        for host in [
            "127.0.0.1",
            "127.0.0.1:8080",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:8080",
            "[::ffff:127.0.0.1]:8080",
            "localhost",
            "localhost:8080",
            "LOCALHOST:8080",
            "localhost.",
            "localhost.:8080",
            "169.254.169.254",
            "169.254.169.254:80",
            "0.0.0.0:8080",
            "[::]:8080",
            "localhost:",
        ] {
            assert!(policy.admits(host), "{host}");
        }
    }

    #[test]
    fn other_names_and_addresses_are_refused() {
        let policy = hosts("127.0.0.1", &[]);
        for host in [
            "attacker.example",
            "attacker.example:8080",
            "localhost.attacker.example",
            "127.0.0.1.nip.io",
            "localhost..",
            "localhostx",
            "10.0.0.5:8080",
            "169.254.169.253",
            "[::2]:8080",
            "::1",
            "127.0.0.1:80x",
            "[::1]x",
            "[::1",
            "localhost:8080:80",
        ] {
            assert!(!policy.admits(host), "{host}");
        }
    }

    #[test]
    fn the_listen_address_and_allowed_hosts_are_admitted() {
        let policy = hosts("10.0.0.5", &["host.docker.internal", "tokenrelay", "192.168.1.9", "fd00::1"]);
        for host in [
            "10.0.0.5:8080",
            "host.docker.internal",
            "HOST.Docker.Internal:8080",
            "host.docker.internal.",
            "tokenrelay:8080",
            "192.168.1.9:8080",
            "[fd00::1]:8080",
        ] {
            assert!(policy.admits(host), "{host}");
        }
        for host in ["10.0.0.6", "docker.internal", "tokenrelay2", "sub.tokenrelay"] {
            assert!(!policy.admits(host), "{host}");
        }
    }

    #[test]
    fn an_unspecified_listen_address_admits_every_address_but_not_every_name() {
        let policy = hosts("0.0.0.0", &[]);
        assert!(policy.admits("10.0.0.5:8080"));
        assert!(policy.admits("[fd00::1]:8080"));
        assert!(!policy.admits("attacker.example:8080"));
    }

    #[test]
    fn the_target_authority_goes_before_host_and_a_missing_host_is_admitted() {
        let policy = hosts("127.0.0.1", &[]);
        let origin_form: Uri = "/metadata/identity/oauth2/token".parse().unwrap();
        assert_eq!(check(&policy, &origin_form, &HeaderMap::new()), Ok(()));
        assert_eq!(check(&policy, &origin_form, &host_header("")), Ok(()));
        assert_eq!(check(&policy, &origin_form, &host_header("localhost:8080")), Ok(()));
        assert_eq!(
            check(&policy, &origin_form, &host_header("attacker.example:8080")),
            Err(Refusal::NotAllowed("attacker.example:8080"))
        );

        let absolute: Uri = "http://attacker.example/metadata/identity/oauth2/token".parse().unwrap();
        assert_eq!(check(&policy, &absolute, &host_header("localhost")), Err(Refusal::NotAllowed("attacker.example")));
        let absolute: Uri = "http://user@localhost:8080/metadata/identity/oauth2/token".parse().unwrap();
        assert_eq!(check(&policy, &absolute, &host_header("attacker.example")), Ok(()));

        let mut two = host_header("localhost");
        two.append(header::HOST, HeaderValue::from_static("attacker.example"));
        assert_eq!(check(&policy, &origin_form, &two), Err(Refusal::Malformed));
        let mut opaque = HeaderMap::new();
        opaque.insert(header::HOST, HeaderValue::from_bytes(b"h\xe9te").unwrap());
        assert_eq!(check(&policy, &origin_form, &opaque), Err(Refusal::Malformed));

        let long = format!("{}.example", "a".repeat(400));
        let long = host_header(&long);
        let Err(Refusal::NotAllowed(quoted)) = check(&policy, &origin_form, &long) else { panic!() };
        assert_eq!(quoted.len(), MAX_QUOTED_HOST);
    }
}
