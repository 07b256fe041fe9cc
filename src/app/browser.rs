//! `tokenrelay login --browser`: the authorization code flow with PKCE on a loopback redirect,
//! as MSAL runs it for a public client (RFC 8252 section 7.3). A listener on a free loopback
//! port receives the browser's redirect; the system browser is opened on the authorize URL
//! (or the URL is printed, with `--no-open`); the code that comes back with this sign-in's
//! `state` is redeemed with the PKCE verifier.
//!
//! The listener is reachable by every local program and every web page the browser shows, so
//! it trusts nothing it receives: only a request carrying this sign-in's `state` counts, at
//! most [`MAX_CONNECTIONS`] connections are read at once, each for at most [`READ_TIMEOUT`]
//! and [`MAX_REQUEST_BYTES`], and the listener closes when the sign-in ends.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};

use super::AppError;
use crate::credential::auth_code::{self, Redirect};
use crate::credential::user::{CONSENT, UserGrants, UserTokens};
use crate::secret::Secret;

/// Connections read at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 16;
/// The longest one connection may take to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head read (the redirect's query is well under 4 KiB).
const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// The most of the authority's error description shown.
const MAX_DESCRIPTION_CHARS: usize = 300;

/// What a request to the listener ended with.
enum Outcome {
    Code(Secret),
    Refused { error: String, description: String },
}

/// Signs the user in through a browser and redeems the code. `timeout_secs` bounds the wait
/// for the browser to come back.
pub(super) async fn sign_in(
    grants: &UserGrants,
    tenant: &str,
    client_id: &str,
    scope: &str,
    no_open: bool,
    timeout_secs: u64,
) -> Result<UserTokens, AppError> {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .map_err(|e| format!("cannot listen on a loopback port for the browser's redirect: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    // `localhost` may resolve to ::1 first; the same port there too, when IPv6 is available.
    let listener6 = TcpListener::bind(SocketAddr::from((Ipv6Addr::LOCALHOST, port))).await.ok();
    // Entra accepts any port for a registered `http://localhost` redirect URI of a public client.
    let redirect_uri = format!("http://localhost:{port}");
    let request = auth_code::authorization_request(grants.authority_host(), tenant, client_id, scope, &redirect_uri)?;

    let url = request.url.as_str();
    if no_open {
        eprintln!("To sign in, open this URL in a browser on this machine:\n{url}");
    } else {
        match open_browser(url) {
            Ok(()) => eprintln!("Opening the browser to sign in. If it does not open, visit:\n{url}"),
            Err(error) => {
                eprintln!(
                    "Cannot open a browser ({error}). To sign in, open this URL in a browser on this machine:\n{url}"
                )
            }
        }
    }

    let (outcomes, mut received) = mpsc::channel(1);
    let state = Arc::new(request.state);
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut accepting = vec![tokio::spawn(accept(listener, state.clone(), permits.clone(), outcomes.clone()))];
    if let Some(listener6) = listener6 {
        accepting.push(tokio::spawn(accept(listener6, state.clone(), permits.clone(), outcomes.clone())));
    }
    drop(outcomes);
    let waited = tokio::time::timeout(Duration::from_secs(timeout_secs), received.recv()).await;
    for task in &accepting {
        task.abort();
    }
    let outcome = match waited {
        Ok(Some(outcome)) => outcome,
        Ok(None) => return Err("the loopback listener stopped before the sign-in came back".into()),
        Err(_) => {
            return Err(format!(
                "no sign-in came back within {timeout_secs} s (the browser page was not completed); run the command \
                 again (--timeout SECS waits longer), or use --device-code"
            )
            .into());
        }
    };
    let code = match outcome {
        Outcome::Code(code) => code,
        Outcome::Refused { error, description } => return Err(refusal(&error, &description).into()),
    };
    let tokens = grants
        .redeem_code(tenant, client_id, &code, &request.redirect_uri, &request.verifier, &request.scope)
        .await
        .map_err(|e| e.to_string())?;
    Ok(tokens)
}

/// What a refused sign-in says.
fn refusal(error: &str, description: &str) -> String {
    let said = printable(description);
    let said = if said.is_empty() { String::new() } else { format!(" ({said})") };
    match error {
        "access_denied" => format!("sign-in was cancelled: the user declined or closed the page (access_denied){said}"),
        "consent_required" | "interaction_required" => format!("{error}: {CONSENT}{said}"),
        _ => format!("the authority refused the sign-in: {}{said}", printable(error)),
    }
}

/// The authority's text for the terminal: its first line, without control characters, bounded.
fn printable(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    let mut plain: String = line.chars().filter(|c| !c.is_control()).take(MAX_DESCRIPTION_CHARS).collect();
    if line.chars().count() > MAX_DESCRIPTION_CHARS {
        plain.push('…');
    }
    plain
}

/// Accepts connections until aborted, reading each in its own task under the connection bound.
async fn accept(listener: TcpListener, state: Arc<Secret>, permits: Arc<Semaphore>, outcomes: mpsc::Sender<Outcome>) {
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        let Ok((stream, _)) = listener.accept().await else { continue };
        let state = state.clone();
        let outcomes = outcomes.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Ok(Some(outcome)) = tokio::time::timeout(READ_TIMEOUT, serve(stream, &state)).await {
                let _ = outcomes.send(outcome).await;
            }
        });
    }
}

/// Reads one request, answers the browser, and returns what it carried when it is this
/// sign-in's redirect.
async fn serve(mut stream: TcpStream, state: &Secret) -> Option<Outcome> {
    let head = read_head(&mut stream).await?;
    let line = head.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if method != "GET" || path != "/" {
        respond(&mut stream, "404 Not Found", "Not found", "This is tokenrelay's sign-in listener.").await;
        return None;
    }
    match auth_code::read_redirect(query, state) {
        Redirect::Code(code) => {
            let text = "Sign-in complete. You can close this window and return to tokenrelay.";
            respond(&mut stream, "200 OK", "Signed in", text).await;
            Some(Outcome::Code(code))
        }
        Redirect::Refused { error, description } => {
            respond(&mut stream, "200 OK", "Sign-in failed", &refusal(&error, &description)).await;
            Some(Outcome::Refused { error, description })
        }
        Redirect::NotOurs(why) => {
            let text = format!("This request is not the redirect of the sign-in in progress: {why}.");
            respond(&mut stream, "400 Bad Request", "Not this sign-in", &text).await;
            None
        }
    }
}

/// The request head, up to the blank line, at most [`MAX_REQUEST_BYTES`].
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::with_capacity(1024);
    let mut buffer = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = stream.read(&mut buffer).await.ok()?;
        if read == 0 || head.len() + read > MAX_REQUEST_BYTES {
            return None;
        }
        head.extend_from_slice(&buffer[..read]);
    }
    String::from_utf8(head).ok()
}

async fn respond(stream: &mut TcpStream, status: &str, title: &str, text: &str) {
    let body = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>tokenrelay: {title}</title></head><body><h1>{title}</h1><p>{}</p></body></html>",
        html_escape(text)
    );
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn html_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// Opens `url` in the system browser: `open` on macOS, `rundll32 url.dll,FileProtocolHandler`
/// on Windows (no `cmd start`, whose parser would split the URL at `&`), `xdg-open` elsewhere.
/// The opener is not waited for beyond its start.
fn open_browser(url: &str) -> std::io::Result<()> {
    #[cfg(target_os = "macos")]
    let mut command = tokio::process::Command::new("open");
    #[cfg(windows)]
    let mut command = {
        let mut command = tokio::process::Command::new("rundll32");
        command.arg("url.dll,FileProtocolHandler");
        command
    };
    #[cfg(not(any(target_os = "macos", windows)))]
    let mut command = tokio::process::Command::new("xdg-open");
    let mut child = command
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_read_as_what_to_do() {
        assert!(
            refusal("access_denied", "AADSTS65004: User declined to consent.").starts_with("sign-in was cancelled")
        );
        assert!(refusal("consent_required", "").contains("an administrator of the tenant must grant"));
        let other =
            refusal("invalid_request\u{1b}[2J", &format!("AADSTS900144: bad\r\nTrace ID: x{}", "y".repeat(500)));
        assert!(!other.contains('\u{1b}') && !other.contains("Trace ID"), "{other}");
    }

    #[test]
    fn the_page_escapes_the_authoritys_text() {
        assert_eq!(html_escape("<script>&\"'"), "&lt;script&gt;&amp;&quot;&#39;");
    }
}
