//! Whether a `managed_identity` endpoint is this tokenrelay's own listener, which would make
//! every token request ask itself again and wait out the request timeout.
//!
//! The endpoint's host is normalised the way a connection would treat it (`0.0.0.0` and
//! `[::]` reach this machine, `[::ffff:127.0.0.1]` is `127.0.0.1`, `localhost.` is
//! `localhost`), names are resolved, and each address is compared with the listen address;
//! a listener on an unspecified address answers on every local address. This is the check
//! at start-up; the hop header (`credential::managed_identity::HOP_HEADER`) catches at run
//! time what it cannot see: a name that resolves differently later, a listen port chosen
//! by the system, or a loop through another tokenrelay.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::{Mutex, PoisonError, mpsc};
use std::time::Duration;

use reqwest::Url;

/// How long start-up waits for a name to resolve. A resolver that takes longer is left to
/// finish on its own thread; the loop is then caught at run time by the hop header.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether a connection to `url` would reach a listener bound to `listen`. `false` when
/// `listen` has no port yet (port 0: the system picks one at bind time).
pub(super) fn reaches_listener(url: &Url, listen: SocketAddr) -> bool {
    let Some(port) = url.port_or_known_default() else { return false };
    if listen.port() == 0 || port != listen.port() {
        return false;
    }
    addresses(url, port).into_iter().any(|target| reaches(target, listen.ip()))
}

/// The addresses a connection to `url` could go to, canonical; empty when a name does not
/// resolve (in time).
fn addresses(url: &Url, port: u16) -> Vec<IpAddr> {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => vec![IpAddr::V4(ip)],
        Some(url::Host::Ipv6(ip)) => vec![IpAddr::V6(ip).to_canonical()],
        Some(url::Host::Domain(domain)) => {
            let name = domain.strip_suffix('.').unwrap_or(domain).to_ascii_lowercase();
            // RFC 6761: these names are loopback whatever a resolver says, as the Azure
            // SDKs' HTTP stacks and browsers treat them.
            if name == "localhost" || name.ends_with(".localhost") {
                return vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)];
            }
            resolve(name, port)
        }
        None => Vec::new(),
    }
}

/// Resolves `name` with the system resolver, giving up after [`RESOLVE_TIMEOUT`]. Answers
/// (timeouts included) are remembered for the process: every identity's default chain
/// names the same endpoint, and a slow resolver should delay start-up once, not once per
/// identity.
fn resolve(name: String, port: u16) -> Vec<IpAddr> {
    /// Endpoints come from the configuration, a handful at most; past this many the
    /// oldest answer is forgotten.
    const REMEMBERED: usize = 16;
    static ANSWERS: Mutex<VecDeque<(String, u16, Vec<IpAddr>)>> = Mutex::new(VecDeque::new());
    let answers = || ANSWERS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((.., found)) = answers().iter().find(|(n, p, _)| *n == name && *p == port) {
        return found.clone();
    }
    let found = resolve_now(name.clone(), port);
    let mut remembered = answers();
    if remembered.len() == REMEMBERED {
        remembered.pop_front();
    }
    remembered.push_back((name, port, found.clone()));
    found
}

fn resolve_now(name: String, port: u16) -> Vec<IpAddr> {
    let (sender, receiver) = mpsc::channel();
    let spawned = std::thread::Builder::new().name("resolve-endpoint".into()).spawn(move || {
        let found = (name.as_str(), port).to_socket_addrs().map(|addrs| addrs.map(|a| a.ip()).collect::<Vec<_>>());
        let _ = sender.send(found.unwrap_or_default());
    });
    if spawned.is_err() {
        return Vec::new();
    }
    receiver.recv_timeout(RESOLVE_TIMEOUT).unwrap_or_default().into_iter().map(|ip| ip.to_canonical()).collect()
}

/// Whether a connection to `target` reaches a socket bound to `listen` (same port).
fn reaches(target: IpAddr, listen: IpAddr) -> bool {
    let target = match target.to_canonical() {
        // Connecting to an unspecified address connects to this machine over loopback.
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    match listen.to_canonical() {
        // `0.0.0.0` takes IPv4 connections to any local address; `[::]` takes IPv6 ones
        // and, dual-stack as Linux and Windows bind it by default, IPv4 ones too.
        IpAddr::V4(ip) if ip.is_unspecified() => target.is_ipv4() && is_local(target),
        IpAddr::V6(ip) if ip.is_unspecified() => is_local(target),
        listen => listen == target,
    }
}

/// Whether `ip` is an address of this machine: loopback, or one a socket can bind to (the
/// system refuses to bind an address no interface has).
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || UdpSocket::bind((ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    #[test]
    fn every_spelling_of_the_listeners_own_address_is_caught() {
        let listen: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        for endpoint in [
            "http://127.0.0.1:8080/metadata/identity/oauth2/token",
            "http://localhost:8080/metadata/identity/oauth2/token",
            "http://LOCALHOST.:8080/metadata/identity/oauth2/token",
            "http://relay.localhost:8080/",
            "http://0.0.0.0:8080/metadata/identity/oauth2/token",
            "http://[::ffff:127.0.0.1]:8080/metadata/identity/oauth2/token",
            "http://127.1:8080/",
            "http://0x7f.0.0.1:8080/",
        ] {
            assert!(reaches_listener(&url(endpoint), listen), "{endpoint}");
        }
    }

    #[test]
    fn other_ports_and_addresses_are_not_the_listener() {
        let listen: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        for endpoint in [
            "http://127.0.0.1:8081/",
            "http://127.0.0.2:8080/",
            "http://169.254.169.254/metadata/identity/oauth2/token",
            "http://[::1]:8080/",
            "https://localhost/",
        ] {
            assert!(!reaches_listener(&url(endpoint), listen), "{endpoint}");
        }
        let unbound: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert!(!reaches_listener(&url("http://127.0.0.1:0/"), unbound), "port 0 is chosen at bind time");
    }

    #[test]
    fn an_unspecified_listen_address_answers_on_every_local_address() {
        let any_v4: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        for endpoint in
            ["http://127.0.0.1:8080/", "http://127.0.0.53:8080/", "http://0.0.0.0:8080/", "http://localhost:8080/"]
        {
            assert!(reaches_listener(&url(endpoint), any_v4), "{endpoint}");
        }
        assert!(!reaches_listener(&url("http://[::1]:8080/"), any_v4), "an IPv4 listener takes no IPv6");
        // An address no interface has: IMDS's, on a machine that is not an Azure VM.
        assert!(!reaches_listener(&url("http://192.0.2.1:8080/"), any_v4), "TEST-NET-1 is nobody's");

        let any_v6: SocketAddr = "[::]:8080".parse().unwrap();
        for endpoint in ["http://[::1]:8080/", "http://127.0.0.1:8080/", "http://[::]:8080/"] {
            assert!(reaches_listener(&url(endpoint), any_v6), "{endpoint}");
        }
    }

    #[test]
    fn a_name_is_resolved() {
        // `localhost` without the RFC 6761 shortcut: the system resolver's answer.
        let addresses = resolve_now("localhost".to_owned(), 8080);
        assert!(addresses.iter().any(IpAddr::is_loopback), "{addresses:?}");
        assert!(resolve("name.invalid".to_owned(), 8080).is_empty(), ".invalid never resolves");
        assert!(resolve("name.invalid".to_owned(), 8080).is_empty(), "nor does it the second time");
    }
}
