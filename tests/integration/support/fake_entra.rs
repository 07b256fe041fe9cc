//! A fake Microsoft Entra ID authority: `POST /{tenant}/oauth2/v2.0/token`.
//!
//! It behaves like the real one where tokenrelay can tell: it validates the form (grant type,
//! client id, scope, secret or assertion), answers with Entra's JSON shapes and AADSTS codes,
//! and can be scripted to be slow, fail, throttle with `Retry-After`, go down, or echo the
//! request body back in its error (as a misconfigured authority might). Like Entra, it answers
//! the client-credentials grant with no `refresh_token`, `id_token` or `client_info`.
//!
//! Client secrets: Entra accepts any unexpired secret registered on the application and
//! answers anything else with 401 `invalid_client` AADSTS7000215 ("Invalid client secret
//! provided. Ensure the secret being sent in the request is the client secret value, not the
//! client secret ID"). The fake holds the application's current secrets (`CLIENT_SECRET` at
//! first); `replace_client_secret` models the end of a rotation, when the old secret has been
//! removed, so a relay still presenting the old value is refused as Entra would refuse it.
//! Certificates likewise: only those registered now are accepted (`unregister_certificates`).
//!
//! Certificate assertions are verified as Entra does: the `x5t#S256` (PS256) or `x5t` (RS256)
//! header must name a certificate registered with `register_certificate`, the signature must
//! verify with that certificate's public key, `aud` must be this token endpoint, `iss` and
//! `sub` the client id, and the time window must hold. Federated assertions match either an
//! exact token (`accept_assertion`) or a federated identity credential (`federate`: issuer
//! and subject, audience `api://AzureADTokenExchange`).
//!
//! The on-behalf-of grant (`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`,
//! `requested_token_use=on_behalf_of`, `assertion`, `scope`) is judged as Entra documents it
//! (learn.microsoft.com, "Microsoft identity platform and OAuth 2.0 On-Behalf-Of flow"): the
//! client authenticates exactly as for client credentials (same secret and assertion checks);
//! the assertion must be an RS256 token signed with one of the keys this authority publishes
//! now, issued for this tenant, whose `aud` is the calling application (its client id or
//! `api://` URI), within its `nbf`/`exp` window; otherwise 400 `invalid_grant` with AADSTS50013
//! (signature, audience, issuer) or AADSTS500133 (time). A scope listed with
//! `require_claims_for` is answered as conditional access answers it: 400
//! `interaction_required`, AADSTS50079, and a `claims` challenge. The issued token names the
//! user (`oid`) and scopes. The scopes other than the OpenID Connect ones must be of one
//! resource (else `invalid_scope` AADSTS28000); for `offline_access`, `openid` and
//! `client_info=1`, which MSAL always sends, the answer carries a refresh token, an ID token and
//! `client_info`, as Entra's does (docs/protocols.md#on-behalf-of-grant).
//!
//! `start_tls` serves the same over TLS with a certificate from a generated test CA, for MSAL,
//! which refuses an `http` authority.
//!
//! Signing keys: `GET /{tenant}/v2.0/.well-known/openid-configuration` names
//! `/{tenant}/discovery/v2.0/keys`, which publishes every current key (RSA, `kid`); user tokens
//! are signed with the newest. `rotate_signing_key` publishes a new key and signs with it from
//! then on, retiring the oldest beyond two, as Entra rolls its keys.
//!
//! Below HTTP, [`ConnectionFault`] makes it read a request and then reset or close the
//! connection without answering. That needs the socket, so connections are served by a small
//! accept loop of our own (HTTP/1.1, as reqwest speaks to a plain `http://` authority)
//! instead of `axum::serve`.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::ServiceExt;

use super::certs::LoopbackTls;
use super::fake_server::FakeServer;

pub const TENANT: &str = "72f988bf-0000-4000-8000-00000000cafe";
pub const CLIENT_ID: &str = "5e29463d-0000-4000-8000-0000000000a1";
pub const CLIENT_SECRET: &str = "correct-horse-battery-staple";

/// What the fake does with the next request, before normal processing.
#[derive(Clone, Debug)]
pub enum Scripted {
    /// An Entra error: status, AADSTS code, OAuth error name.
    Error { status: u16, aadsts: u32, error: &'static str },
    /// 429 with this `Retry-After`.
    Throttle { retry_after_secs: u64 },
    /// A 5xx without a useful body.
    ServerError(u16),
    /// An HTML error page, as a load balancer in front of the authority sends.
    HtmlPage(u16),
    /// 200 with a body that is not a token response.
    Malformed,
    /// 400 `invalid_request` whose description quotes the raw request body: not something
    /// Entra does, but what a mistyped or hostile `authority_host` may answer.
    EchoBody,
    /// 400 `invalid_request` with a description this many characters long.
    Verbose(usize),
}

/// What the fake does with a connection instead of answering, while set. It applies to every
/// request from then on, on new connections and on kept-alive ones alike, so the count of
/// faulted requests is exactly the number of attempts the client made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionFault {
    /// Reads the request, then resets the connection (zero linger, then close: a TCP RST).
    Reset,
    /// Reads the request, then closes the connection cleanly (FIN) without a response.
    CloseWithoutResponse,
    /// Answers 200 with the status line, the headers and the first bytes of a token body,
    /// then resets the connection: the body ends short of its `Content-Length`.
    ResetMidBody,
}

/// What [`ConnectionFault::ResetMidBody`] sends of the body before the reset.
const PARTIAL_BODY: &[u8] =
    br#"{"token_type":"Bearer","expires_in":3599,"access_token":"eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9."#;

/// One request as the fake saw it.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    pub tenant: String,
    pub form: HashMap<String, String>,
    /// The JOSE header of `client_assertion`, when it is a JWT.
    pub assertion_header: Option<serde_json::Value>,
}

/// The audience federated identity credentials require.
pub const FEDERATION_AUDIENCE: &str = "api://AzureADTokenExchange";

#[derive(Debug)]
struct Behaviour {
    lifetime_secs: u64,
    refresh_in_secs: Option<u64>,
    delay: Duration,
    down: bool,
    connection_fault: Option<ConnectionFault>,
    /// Requests answered with a connection fault instead of a response.
    faulted: usize,
    /// The application's client secrets; any of them is accepted.
    client_secrets: Vec<String>,
    /// While true, requests wait (counted, not yet judged) until it turns false.
    held: watch::Sender<bool>,
    /// The assertion accepted for federated credentials; `None` accepts the client secret only.
    accepted_assertion: Option<String>,
    /// AADSTS code answered for any other assertion (70021 mismatch, 700024 expired).
    wrong_assertion_code: u32,
    script: VecDeque<Scripted>,
    seen: Vec<SeenRequest>,
    issued: u64,
    /// `seen.len()` and `issued`, published after each change for tests to wait on.
    progress: watch::Sender<Progress>,
    /// DER certificates registered on the application.
    certificates: Vec<Vec<u8>>,
    /// Federated identity credentials: (issuer, subject).
    federations: Vec<(String, String)>,
    /// `http://127.0.0.1:PORT`, for the expected `aud` of certificate assertions.
    base_url: String,
    /// Published signing keys, newest last: (kid, key).
    signing_keys: Vec<(String, Arc<aws_lc_rs::signature::RsaKeyPair>)>,
    /// Key set (JWKS) requests served.
    jwks_requests: usize,
    /// Scopes whose on-behalf-of exchange asks for more claims.
    claims_required: Vec<String>,
}

/// `client_assertion_type` and the on-behalf-of `grant_type`.
const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const OBO_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The OpenID Connect scopes, which a client may add to any other resource's scopes.
const OIDC_SCOPES: [&str; 4] = ["openid", "profile", "email", "offline_access"];
/// The object id of the user in [`FakeEntra::user_token`].
pub const USER_OID: &str = "a1b2c3d4-0000-4000-8000-0000000000e5";
/// The claims challenge conditional access sends (Entra's documented shape).
pub const CLAIMS_CHALLENGE: &str =
    r#"{"access_token":{"polids":{"essential":true,"values":["9ab03e19-ed42-4168-b6b7-7001fb3e933a"]}}}"#;

fn new_signing_key() -> (String, Arc<aws_lc_rs::signature::RsaKeyPair>) {
    use aws_lc_rs::signature::KeyPair;
    use base64::Engine;
    let key = aws_lc_rs::signature::RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let n = key.public_key().modulus().big_endian_without_leading_zero().to_vec();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &n);
    (base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest.as_ref()[..9]), Arc::new(key))
}

/// Signs `claims` with `key` under `kid` (RS256).
pub fn sign_rs256(kid: &str, key: &aws_lc_rs::signature::RsaKeyPair, claims: &serde_json::Value) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = json!({"typ": "JWT", "alg": "RS256", "kid": kid});
    let input = format!("{}.{}", b64.encode(header.to_string()), b64.encode(claims.to_string()));
    let mut signature = vec![0u8; key.public_modulus_len()];
    key.sign(
        &aws_lc_rs::signature::RSA_PKCS1_SHA256,
        &aws_lc_rs::rand::SystemRandom::new(),
        input.as_bytes(),
        &mut signature,
    )
    .unwrap();
    format!("{input}.{}", b64.encode(signature))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// A running fake authority; stops when dropped.
pub struct FakeEntra {
    /// Held for its drop, which stops the fake; the address clients use is in `base_url`.
    _server: FakeServer,
    state: Arc<Mutex<Behaviour>>,
}

impl FakeEntra {
    /// Starts on an ephemeral loopback port, over plain HTTP.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Starts on an ephemeral loopback port over TLS with `tls`'s server certificate, for
    /// clients that require an `https` authority (MSAL does). [`ConnectionFault`]s do not
    /// apply to these connections.
    pub async fn start_tls(tls: &LoopbackTls) -> Self {
        Self::start_with(Some(tokio_rustls::TlsAcceptor::from(tls.server_config()))).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let state = Arc::new(Mutex::new(Behaviour {
            lifetime_secs: 3599,
            refresh_in_secs: None,
            delay: Duration::ZERO,
            down: false,
            connection_fault: None,
            faulted: 0,
            client_secrets: vec![CLIENT_SECRET.to_owned()],
            held: watch::Sender::new(false),
            accepted_assertion: None,
            wrong_assertion_code: 70021,
            script: VecDeque::new(),
            seen: Vec::new(),
            issued: 0,
            progress: watch::Sender::new(Progress::default()),
            certificates: Vec::new(),
            federations: Vec::new(),
            base_url: String::new(),
            signing_keys: vec![new_signing_key()],
            jwks_requests: 0,
            claims_required: Vec::new(),
        }));
        let app = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .route("/{tenant}/v2.0/.well-known/openid-configuration", axum::routing::get(discovery))
            .route("/{tenant}/discovery/v2.0/keys", axum::routing::get(jwks))
            .with_state(state.clone());
        let https = tls.is_some();
        let server = match tls {
            None => FakeServer::start(|listener| accept(listener, app, state.clone())).await,
            Some(acceptor) => FakeServer::start(|listener| accept_tls(listener, app, acceptor)).await,
        };
        // Set before any test learns the address, so every request sees it.
        let url = server.url();
        state.lock().unwrap().base_url = if https { url.replacen("http://", "https://", 1) } else { url };
        Self { _server: server, state }
    }

    /// The authority host to configure (`http://127.0.0.1:PORT`, or `https://` over TLS).
    pub fn url(&self) -> String {
        self.state.lock().unwrap().base_url.clone()
    }

    /// Lifetime (`expires_in`) of tokens issued from now on.
    pub fn set_lifetime(&self, secs: u64) {
        self.state.lock().unwrap().lifetime_secs = secs;
    }

    /// Sends `refresh_in` with every token from now on.
    pub fn set_refresh_in(&self, secs: Option<u64>) {
        self.state.lock().unwrap().refresh_in_secs = secs;
    }

    /// Delays every answer.
    pub fn set_delay(&self, delay: Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    /// While down, every request gets 503 (token requests after being counted), the discovery
    /// document and the key set too.
    pub fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }

    /// From now on, every request gets `fault` instead of an answer (`None`: back to normal).
    pub fn set_connection_fault(&self, fault: Option<ConnectionFault>) {
        self.state.lock().unwrap().connection_fault = fault;
    }

    /// How many requests got a connection fault: one per attempt of the client.
    pub fn faulted(&self) -> usize {
        self.state.lock().unwrap().faulted
    }

    /// Removes every client secret of the application and adds `secret`: the old value is
    /// refused with AADSTS7000215 from now on.
    pub fn replace_client_secret(&self, secret: &str) {
        self.state.lock().unwrap().client_secrets = vec![secret.to_owned()];
    }

    /// Holds every request from now on, after it is counted in [`FakeEntra::requests`] and
    /// before it is judged, until [`FakeEntra::release`]: a test can change what the authority
    /// accepts (and what is on disk) while an exchange is in flight.
    pub fn hold(&self) {
        self.state.lock().unwrap().held.send_replace(true);
    }

    /// Lets held requests (and every later one) proceed.
    pub fn release(&self) {
        self.state.lock().unwrap().held.send_replace(false);
    }

    /// Accepts this federated token as `client_assertion`; any other gets `wrong_code`.
    pub fn accept_assertion(&self, assertion: &str, wrong_code: u32) {
        let mut state = self.state.lock().unwrap();
        state.accepted_assertion = Some(assertion.to_owned());
        state.wrong_assertion_code = wrong_code;
    }

    /// Registers a certificate (DER) on the application, as uploading it to the portal does.
    pub fn register_certificate(&self, der: &[u8]) {
        self.state.lock().unwrap().certificates.push(der.to_vec());
    }

    /// Removes every registered certificate.
    pub fn unregister_certificates(&self) {
        self.state.lock().unwrap().certificates.clear();
    }

    /// Adds a federated identity credential: JWTs with this issuer and subject and the
    /// audience `api://AzureADTokenExchange` are accepted as assertions.
    pub fn federate(&self, issuer: &str, subject: &str) {
        self.state.lock().unwrap().federations.push((issuer.to_owned(), subject.to_owned()));
    }

    /// The token endpoint of `tenant`: the `aud` of certificate assertions.
    pub fn token_endpoint(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/token", self.url())
    }

    /// Posts a client-credentials request with `assertion` directly (to test the fake itself).
    pub async fn post_assertion(&self, assertion: &str) -> (u16, serde_json::Value) {
        let response = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(self.token_endpoint(TENANT))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", CLIENT_ID),
                ("scope", "https://vault.azure.net/.default"),
                ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
                ("client_assertion", assertion),
            ])
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// Queues behaviour for the next requests, in order.
    pub fn script(&self, steps: impl IntoIterator<Item = Scripted>) {
        self.state.lock().unwrap().script.extend(steps);
    }

    /// How many token requests arrived.
    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().seen.len()
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.state.lock().unwrap().seen.clone()
    }

    /// How many tokens were issued.
    pub fn issued(&self) -> u64 {
        self.state.lock().unwrap().issued
    }

    /// Returns once `count` token requests have arrived (each is counted before it is judged,
    /// and before a held or delayed request waits).
    pub async fn wait_for_requests(&self, count: usize) {
        self.wait_for(&format!("{count} token requests"), |p| p.requests >= count).await;
    }

    /// Returns once `count` tokens have been issued (counted before the answer is sent).
    pub async fn wait_for_issued(&self, count: u64) {
        self.wait_for(&format!("{count} issued tokens"), |p| p.issued >= count).await;
    }

    async fn wait_for(&self, what: &str, done: impl FnMut(&Progress) -> bool) {
        let mut progress = self.state.lock().unwrap().progress.subscribe();
        // The deadline only ends a test that would otherwise hang; passing never waits for it.
        let reached =
            tokio::time::timeout(super::FAILURE_DEADLINE, async { progress.wait_for(done).await.is_ok() }).await;
        assert!(reached == Ok(true), "the fake authority never saw {what}: {:?}", *progress.borrow());
    }

    /// The v2 issuer of this authority's tokens for [`TENANT`].
    pub fn issuer(&self) -> String {
        format!("{}/{TENANT}/v2.0", self.url())
    }

    /// A user's access token for this application (`aud` `api://CLIENT_ID`, scope
    /// `access_as_user`, valid for an hour), signed with the newest key, after `change` has
    /// edited its claims.
    pub fn user_token(&self, change: impl FnOnce(&mut serde_json::Value)) -> String {
        let now = now_secs();
        let mut claims = json!({
            "aud": format!("api://{CLIENT_ID}"),
            "iss": self.issuer(),
            "tid": TENANT,
            "oid": USER_OID,
            "sub": "user-subject",
            "preferred_username": "alice@contoso.example",
            "azp": "c0ffee00-0000-4000-8000-0000000000f1",
            "scp": "access_as_user",
            "ver": "2.0",
            "iat": now - 5,
            "nbf": now - 5,
            "exp": now + 3600,
        });
        change(&mut claims);
        let (kid, key) = self.state.lock().unwrap().signing_keys.last().cloned().unwrap();
        sign_rs256(&kid, &key, &claims)
    }

    /// Publishes a new signing key and signs user tokens with it from now on; of the older
    /// keys only the previous one stays published.
    pub fn rotate_signing_key(&self) {
        let mut state = self.state.lock().unwrap();
        state.signing_keys.push(new_signing_key());
        let excess = state.signing_keys.len().saturating_sub(2);
        state.signing_keys.drain(..excess);
    }

    /// How many times the key set was fetched.
    pub fn jwks_requests(&self) -> usize {
        self.state.lock().unwrap().jwks_requests
    }

    /// On-behalf-of exchanges for a scope containing `scope` get a claims challenge.
    pub fn require_claims_for(&self, scope: &str) {
        self.state.lock().unwrap().claims_required.push(scope.to_owned());
    }

    /// On-behalf-of requests seen.
    pub fn obo_requests(&self) -> usize {
        self.state
            .lock()
            .unwrap()
            .seen
            .iter()
            .filter(|r| r.form.get("grant_type").map(String::as_str) == Some(OBO_GRANT))
            .count()
    }
}

/// The tenant's OpenID Connect discovery document, with the members Entra's has that clients
/// read: MSAL requires `authorization_endpoint` and `token_endpoint` (and fails without them),
/// tokenrelay reads `jwks_uri`. Like Entra, an unknown tenant is 400 `invalid_tenant`
/// (AADSTS90002), which MSAL reports as a failed discovery; the multi-tenant aliases `common`
/// and `organizations` are served, with the `{tenantid}` placeholder in `issuer` as Entra's.
async fn discovery(State(state): State<Arc<Mutex<Behaviour>>>, Path(tenant): Path<String>) -> Response {
    if !known_tenant(&tenant) {
        return entra_error(400, "invalid_tenant", 90002, &format!("Tenant '{tenant}' not found."));
    }
    let (base, down) = {
        let s = state.lock().unwrap();
        (s.base_url.clone(), s.down)
    };
    if down {
        return (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable").into_response();
    }
    let issuer_tenant = if tenant == TENANT { tenant.as_str() } else { "{tenantid}" };
    Json(json!({
        "token_endpoint": format!("{base}/{tenant}/oauth2/v2.0/token"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": format!("{base}/{tenant}/discovery/v2.0/keys"),
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": format!("{base}/{issuer_tenant}/v2.0"),
        "request_uri_parameter_supported": false,
        "authorization_endpoint": format!("{base}/{tenant}/oauth2/v2.0/authorize"),
        "device_authorization_endpoint": format!("{base}/{tenant}/oauth2/v2.0/devicecode"),
        "end_session_endpoint": format!("{base}/{tenant}/oauth2/v2.0/logout"),
        "tenant_region_scope": "EU",
    }))
    .into_response()
}

/// The tenant, or an alias Entra serves discovery documents and keys under.
fn known_tenant(tenant: &str) -> bool {
    tenant == TENANT || tenant == "common" || tenant == "organizations"
}

async fn jwks(State(state): State<Arc<Mutex<Behaviour>>>, Path(tenant): Path<String>) -> Response {
    use aws_lc_rs::signature::KeyPair;
    use base64::Engine;
    if !known_tenant(&tenant) {
        return entra_error(400, "invalid_tenant", 90002, &format!("Tenant '{tenant}' not found."));
    }
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut s = state.lock().unwrap();
    if s.down {
        return (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable").into_response();
    }
    s.jwks_requests += 1;
    let keys: Vec<serde_json::Value> = s
        .signing_keys
        .iter()
        .map(|(kid, key)| {
            let public = key.public_key();
            json!({
                "kty": "RSA", "use": "sig", "kid": kid,
                "n": b64.encode(public.modulus().big_endian_without_leading_zero()),
                "e": b64.encode(public.exponent().big_endian_without_leading_zero()),
            })
        })
        .collect();
    Json(json!({ "keys": keys })).into_response()
}

/// Judges an on-behalf-of assertion as Entra does; the error is (AADSTS code, description).
fn verify_user_assertion(
    assertion: &str,
    keys: &[(String, Arc<aws_lc_rs::signature::RsaKeyPair>)],
    issuer: &str,
) -> Result<serde_json::Value, (u32, String)> {
    use aws_lc_rs::signature::KeyPair;
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let invalid = |reason: &str| (50013, format!("Assertion failed signature validation. [Reason - {reason}]"));
    let header = jwt_part(assertion, 0).ok_or_else(|| invalid("not a JWT"))?;
    let claims = jwt_part(assertion, 1).ok_or_else(|| invalid("not a JWT"))?;
    if header["alg"] != "RS256" {
        return Err(invalid("algorithm"));
    }
    let kid = header["kid"].as_str().unwrap_or_default();
    let (_, key) = keys.iter().find(|(k, _)| k == kid).ok_or_else(|| invalid("The key was not found."))?;
    let (input, signature) = assertion.rsplit_once('.').unwrap();
    let signature = b64.decode(signature).map_err(|_| invalid("signature encoding"))?;
    let public = key.public_key();
    aws_lc_rs::signature::RsaPublicKeyComponents {
        n: public.modulus().big_endian_without_leading_zero(),
        e: public.exponent().big_endian_without_leading_zero(),
    }
    .verify(&aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256, input.as_bytes(), &signature)
    .map_err(|_| invalid("signature"))?;
    let audiences = [CLIENT_ID.to_owned(), format!("api://{CLIENT_ID}")];
    if !claims["aud"].as_str().is_some_and(|aud| audiences.iter().any(|a| a == aud)) {
        return Err((50013, "Assertion audience does not match the Client app presenting the assertion.".into()));
    }
    if claims["iss"] != issuer || claims["tid"] != TENANT {
        return Err((50013, "Assertion issuer is not this tenant.".into()));
    }
    let now = now_secs();
    let exp = claims["exp"].as_u64().unwrap_or(0);
    let nbf = claims["nbf"].as_u64().unwrap_or(0);
    if now >= exp || now + 300 < nbf {
        return Err((500133, "Assertion is not within its valid time range.".into()));
    }
    Ok(claims)
}

/// What a test waits on: counts that only grow.
#[derive(Clone, Copy, Debug, Default)]
struct Progress {
    requests: usize,
    issued: u64,
}

/// Serves connections until the fake is dropped, each through [`serve_connection`].
async fn accept(listener: TcpListener, app: Router, state: Arc<Mutex<Behaviour>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        tokio::spawn(serve_connection(stream, app.clone(), state.clone()));
    }
}

/// Serves TLS connections until the fake is dropped: each is handshaken, then its HTTP/1.1
/// requests go to `app`.
async fn accept_tls(listener: TcpListener, app: Router, acceptor: tokio_rustls::TlsAcceptor) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (app, acceptor) = (app.clone(), acceptor.clone());
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(stream).await else { return };
            let io = hyper_util::rt::TokioIo::new(stream);
            let service = hyper::service::service_fn(move |request: axum::http::Request<hyper::body::Incoming>| {
                let app = app.clone();
                async move { app.oneshot(request).await }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
        });
    }
}

/// HTTP/1.1 on one connection: requests go to `app`, unless a [`ConnectionFault`] is set.
/// Then the request is read and the service fails, which makes hyper drop the connection
/// without writing a response; for a reset, the socket's linger is set to zero first.
async fn serve_connection(stream: TcpStream, app: Router, state: Arc<Mutex<Behaviour>>) {
    let reset = Arc::new(AtomicBool::new(false));
    let io = hyper_util::rt::TokioIo::new(FaultableStream { stream, reset: reset.clone() });
    let service = hyper::service::service_fn(move |request: axum::http::Request<hyper::body::Incoming>| {
        let (app, state, reset) = (app.clone(), state.clone(), reset.clone());
        async move {
            let fault = {
                let mut s = state.lock().unwrap();
                s.faulted += usize::from(s.connection_fault.is_some());
                s.connection_fault
            };
            let Some(fault) = fault else {
                return Ok(app.oneshot(request).await.unwrap_or_else(|never| match never {}));
            };
            // The whole request is in, so the client has sent it and waits for an answer.
            let _ = request.into_body().collect().await;
            reset.store(fault != ConnectionFault::CloseWithoutResponse, Ordering::SeqCst);
            if fault == ConnectionFault::ResetMidBody {
                let body = axum::body::Body::new(PartialThenFail::new());
                let mut response = axum::http::Response::new(body);
                let length = axum::http::HeaderValue::from(PARTIAL_BODY.len() + 1000);
                response.headers_mut().insert(axum::http::header::CONTENT_LENGTH, length);
                response
                    .headers_mut()
                    .insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/json"));
                return Ok(response);
            }
            Err(std::io::Error::other(format!("injected {fault:?}")))
        }
    });
    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
}

/// A response body that yields [`PARTIAL_BODY`], waits, and then fails, so hyper, having sent
/// the head and that much, abandons the connection (reset, as the fault sets `reset`). The
/// wait lets the client read the head first: a reset that arrives with unread data in the
/// client's receive buffer discards it, and the client would see a reset before any answer.
struct PartialThenFail {
    sent: bool,
    pause: Pin<Box<tokio::time::Sleep>>,
}

impl PartialThenFail {
    fn new() -> Self {
        Self { sent: false, pause: Box::pin(tokio::time::sleep(Duration::from_millis(200))) }
    }
}

impl hyper::body::Body for PartialThenFail {
    type Data = axum::body::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        if !self.sent {
            self.sent = true;
            return Poll::Ready(Some(Ok(hyper::body::Frame::data(axum::body::Bytes::from_static(PARTIAL_BODY)))));
        }
        match self.pause.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => Poll::Ready(Some(Err(std::io::Error::other("injected ResetMidBody")))),
        }
    }
}

/// The accepted socket; when `reset` is set, dropping it aborts the connection with a RST
/// instead of closing it with a FIN.
struct FaultableStream {
    stream: TcpStream,
    reset: Arc<AtomicBool>,
}

impl Drop for FaultableStream {
    fn drop(&mut self) {
        if self.reset.load(Ordering::SeqCst) {
            let _ = self.stream.set_zero_linger();
        }
    }
}

impl AsyncRead for FaultableStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for FaultableStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

fn entra_error(status: u16, error: &str, aadsts: u32, description: &str) -> Response {
    let body = json!({
        "error": error,
        "error_description": format!("AADSTS{aadsts}: {description}\r\nTrace ID: 00000000-0000-0000-0000-000000000000\r\nCorrelation ID: 11111111-1111-1111-1111-111111111111\r\nTimestamp: 2026-11-29 12:00:00Z"),
        "error_codes": [aadsts],
        "timestamp": "2026-11-29 12:00:00Z",
        "trace_id": "00000000-0000-0000-0000-000000000000",
        "correlation_id": "11111111-1111-1111-1111-111111111111",
    });
    (StatusCode::from_u16(status).unwrap(), Json(body)).into_response()
}

async fn token(
    State(state): State<Arc<Mutex<Behaviour>>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    // Read by hand rather than with `Form`, so `EchoBody` has the raw body; the content type
    // is checked below, as Entra checks it.
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let mut held = {
        let mut s = state.lock().unwrap();
        let assertion_header = form.get("client_assertion").and_then(|a| jwt_part(a, 0));
        s.seen.push(SeenRequest { tenant: tenant.clone(), form: form.clone(), assertion_header });
        let requests = s.seen.len();
        s.progress.send_modify(|p| p.requests = requests);
        s.held.subscribe()
    };
    let _ = held.wait_for(|held| !*held).await;
    let (delay, scripted, down) = {
        let mut s = state.lock().unwrap();
        (s.delay, s.script.pop_front(), s.down)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if down {
        return (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable").into_response();
    }
    match scripted {
        Some(Scripted::Error { status, aadsts, error }) => {
            return entra_error(status, error, aadsts, "scripted failure.");
        }
        Some(Scripted::Throttle { retry_after_secs }) => {
            let mut response = entra_error(429, "temporarily_unavailable", 50196, "The server is throttling.");
            response.headers_mut().insert("retry-after", HeaderValue::from(retry_after_secs));
            return response;
        }
        Some(Scripted::ServerError(status)) => {
            return (StatusCode::from_u16(status).unwrap(), "upstream trouble").into_response();
        }
        Some(Scripted::HtmlPage(status)) => {
            let page = "<html><body><h1>502 Bad Gateway</h1></body></html>";
            return (StatusCode::from_u16(status).unwrap(), [("content-type", "text/html")], page).into_response();
        }
        Some(Scripted::EchoBody) => {
            let echoed = String::from_utf8_lossy(&body);
            return entra_error(400, "invalid_request", 900144, &format!("Bad request body: {echoed}"));
        }
        Some(Scripted::Verbose(length)) => {
            return entra_error(400, "invalid_request", 900144, &"x".repeat(length));
        }
        Some(Scripted::Malformed) => {
            return (StatusCode::OK, [("content-type", "application/json")], "{\"token_type\":\"Bearer\",")
                .into_response();
        }
        None => {}
    }

    // Validate the request as Entra would.
    if !headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
    {
        return entra_error(400, "invalid_request", 900144, "The request body must be form-encoded.");
    }
    if tenant != TENANT {
        return entra_error(400, "invalid_tenant", 90002, &format!("Tenant '{tenant}' not found."));
    }
    let obo = form.get("grant_type").map(String::as_str) == Some(OBO_GRANT)
        && form.get("requested_token_use").map(String::as_str) == Some("on_behalf_of");
    if !obo && form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return entra_error(400, "unsupported_grant_type", 70003, "The grant type is not supported.");
    }
    if form.get("client_id").map(String::as_str) != Some(CLIENT_ID) {
        return entra_error(400, "unauthorized_client", 700016, "Application not found in the directory.");
    }
    let Some(scope) = form.get("scope").filter(|s| if obo { !s.trim().is_empty() } else { s.ends_with("/.default") })
    else {
        return entra_error(
            400,
            "invalid_scope",
            70011,
            "The provided value for the input parameter 'scope' is not valid.",
        );
    };
    let (secrets, accepted_assertion, wrong_code, lifetime, refresh_in, certificates, federations, base_url) = {
        let s = state.lock().unwrap();
        (
            s.client_secrets.clone(),
            s.accepted_assertion.clone(),
            s.wrong_assertion_code,
            s.lifetime_secs,
            s.refresh_in_secs,
            s.certificates.clone(),
            s.federations.clone(),
            s.base_url.clone(),
        )
    };
    match (form.get("client_secret"), form.get("client_assertion"), form.get("client_assertion_type")) {
        (Some(secret), None, None) => {
            if !secrets.contains(secret) {
                return entra_error(
                    401,
                    "invalid_client",
                    7000215,
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client \
                     secret value, not the client secret ID.",
                );
            }
        }
        (None, Some(assertion), Some(kind)) if kind == JWT_BEARER_ASSERTION => {
            let header = jwt_part(assertion, 0).unwrap_or_default();
            if header.get("x5t").is_some() || header.get("x5t#S256").is_some() {
                let audience = format!("{base_url}/{tenant}/oauth2/v2.0/token");
                if let Err((code, description)) = verify_certificate_assertion(assertion, &certificates, &audience) {
                    return entra_error(401, "invalid_client", code, &description);
                }
            } else if accepted_assertion.as_deref() != Some(assertion.as_str())
                && !matches_federation(assertion, &federations)
            {
                return entra_error(400, "invalid_client", wrong_code, "The client assertion was not accepted.");
            }
        }
        _ => return entra_error(400, "invalid_request", 900144, "No client credential was presented."),
    }

    if obo {
        let (keys, issuer, claims_required) = {
            let s = state.lock().unwrap();
            (s.signing_keys.clone(), format!("{}/{TENANT}/v2.0", s.base_url), s.claims_required.clone())
        };
        let Some(assertion) = form.get("assertion") else {
            return entra_error(
                400,
                "invalid_request",
                900144,
                "The request body must contain the parameter 'assertion'.",
            );
        };
        // A client may add the OpenID Connect scopes (MSAL always sends `openid profile
        // offline_access`); the others must all be of one resource, as Entra issues a token
        // for one resource only (AADSTS28000 otherwise). A scope with no resource in front
        // (`User.Read`) is Microsoft Graph's, as Entra reads it.
        let (oidc, resource_scopes): (Vec<&str>, Vec<&str>) =
            scope.split_whitespace().partition(|s| OIDC_SCOPES.contains(s));
        let resource_of = |s: &str| s.rsplit_once('/').map_or("https://graph.microsoft.com", |(r, _)| r).to_owned();
        let Some(resource) = resource_scopes.first().map(|s| resource_of(s)) else {
            return entra_error(
                400,
                "invalid_scope",
                70011,
                "The provided value for the input parameter 'scope' is not valid.",
            );
        };
        if resource_scopes.iter().any(|s| resource_of(s) != resource) {
            return entra_error(
                400,
                "invalid_scope",
                28000,
                "Provided value for the input parameter scope is not valid because it contains more than one resource.",
            );
        }
        let user = match verify_user_assertion(assertion, &keys, &issuer) {
            Ok(claims) => claims,
            Err((code, description)) => return entra_error(400, "invalid_grant", code, &description),
        };
        if claims_required.iter().any(|required| scope.contains(required.as_str())) {
            let body = json!({
                "error": "interaction_required",
                "error_description": "AADSTS50079: Due to a configuration change made by your administrator, or because you moved to a new location, you must enroll in multi-factor authentication.\r\nTrace ID: 0\r\nCorrelation ID: 11111111-1111-1111-1111-111111111111",
                "error_codes": [50079],
                "correlation_id": "11111111-1111-1111-1111-111111111111",
                "suberror": "basic_action",
                "claims": CLAIMS_CHALLENGE,
            });
            return (StatusCode::BAD_REQUEST, Json(body)).into_response();
        }
        let (n, newest_key) = {
            let mut s = state.lock().unwrap();
            s.issued += 1;
            let issued = s.issued;
            s.progress.send_modify(|p| p.issued = issued);
            (issued, s.signing_keys.last().cloned().unwrap())
        };
        let oid = user["oid"].as_str().unwrap_or_default();
        let resource_scope = resource_scopes.join(" ");
        let mut body = json!({
            "token_type": "Bearer",
            "scope": resource_scope,
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": format!("fake-obo-{n}-for-{oid}-{}", resource_scopes.join("+")),
        });
        // What Entra adds for the OpenID Connect scopes and `client_info=1` (which MSAL always
        // sends): a refresh token for `offline_access`, an ID token for the calling
        // application for `openid`, and the account's ids.
        if oidc.contains(&"offline_access") {
            body["refresh_token"] = json!(format!("fake-refresh-{n}"));
        }
        if oidc.contains(&"openid") {
            let now = now_secs();
            let mut id = json!({
                "aud": CLIENT_ID, "iss": issuer, "tid": TENANT, "oid": oid, "sub": user["sub"],
                "iat": now, "nbf": now, "exp": now + 3600, "ver": "2.0",
            });
            if oidc.contains(&"profile") {
                id["preferred_username"] = user["preferred_username"].clone();
                id["name"] = user["preferred_username"].clone();
            }
            body["id_token"] = json!(sign_rs256(&newest_key.0, &newest_key.1, &id));
        }
        if form.get("client_info").map(String::as_str) == Some("1") {
            use base64::Engine;
            let info = json!({"uid": oid, "utid": TENANT}).to_string();
            body["client_info"] = json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(info));
        }
        return Json(body).into_response();
    }
    let resource = scope.trim_end_matches("/.default");
    let n = {
        let mut s = state.lock().unwrap();
        s.issued += 1;
        let issued = s.issued;
        s.progress.send_modify(|p| p.issued = issued);
        issued
    };
    let mut body = json!({
        "token_type": "Bearer",
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": format!("fake-token-{n}-for-{resource}"),
    });
    if let Some(refresh_in) = refresh_in {
        body["refresh_in"] = json!(refresh_in);
    }
    Json(body).into_response()
}

/// Part `index` (0 header, 1 claims) of a JWT, decoded without verification.
fn jwt_part(jwt: &str, index: usize) -> Option<serde_json::Value> {
    use base64::Engine;
    let part = jwt.split('.').nth(index)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Whether a federated JWT matches a federated identity credential (issuer, subject and the
/// exchange audience). Like Entra, only the claims are compared here; a real authority also
/// checks the signature against the issuer's published keys.
fn matches_federation(assertion: &str, federations: &[(String, String)]) -> bool {
    let Some(claims) = jwt_part(assertion, 1) else {
        return false;
    };
    let audience_ok = match &claims["aud"] {
        serde_json::Value::String(aud) => aud == FEDERATION_AUDIENCE,
        serde_json::Value::Array(auds) => auds.iter().any(|a| a == FEDERATION_AUDIENCE),
        _ => false,
    };
    audience_ok && federations.iter().any(|(iss, sub)| claims["iss"] == iss.as_str() && claims["sub"] == sub.as_str())
}

/// The time claims of a certificate assertion. Times are JSON numbers that may have a fraction
/// (RFC 7519's NumericDate; MSAL Python sends `time.time()` as is), and `nbf` may be absent
/// (MSAL sends `exp`, `iat` and `jti` only): Entra accepts both.
#[derive(serde::Deserialize)]
struct AssertionClaims {
    jti: String,
    exp: f64,
    nbf: Option<f64>,
    iat: Option<f64>,
}

/// Verifies a certificate assertion as Entra does; the error is (AADSTS code, description).
fn verify_certificate_assertion(
    assertion: &str,
    certificates: &[Vec<u8>],
    audience: &str,
) -> Result<(), (u32, String)> {
    use base64::Engine;
    use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};

    let invalid = |reason: &str| (700027, format!("Client assertion failed signature validation. [Reason - {reason}]"));
    let header = jsonwebtoken::decode_header(assertion).map_err(|e| invalid(&format!("not a JWT: {e}")))?;
    let digest = |der: &Vec<u8>| {
        let algorithm = match header.alg {
            Algorithm::PS256 => &aws_lc_rs::digest::SHA256,
            _ => &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        };
        aws_lc_rs::digest::digest(algorithm, der).as_ref().to_vec()
    };
    let thumbprint = match header.alg {
        Algorithm::PS256 => header.x5t_s256.clone().ok_or_else(|| invalid("PS256 needs x5t#S256"))?,
        Algorithm::RS256 => header.x5t.clone().ok_or_else(|| invalid("RS256 needs x5t"))?,
        other => return Err(invalid(&format!("algorithm {other:?} is not accepted"))),
    };
    // Compared by the bytes it names: MSAL Python pads its base64url with `=`, and Entra
    // accepts that as it accepts the unpadded form (docs/protocols.md#certificate-assertions).
    let padding_indifferent = base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let named = padding_indifferent.decode(&thumbprint).ok();
    let certificate = certificates
        .iter()
        .find(|der| named.as_deref() == Some(digest(der).as_slice()))
        .ok_or_else(|| invalid(&format!("The key was not found., Thumbprint of key used by client: '{thumbprint}'")))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate).unwrap();
    let key = DecodingKey::from_rsa_der(parsed.public_key().subject_public_key.data.as_ref());
    let mut validation = Validation::new(header.alg);
    // The time window is checked below, on fractional times jsonwebtoken does not read.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.set_audience(&[audience]);
    validation.set_issuer(&[CLIENT_ID]);
    validation.sub = Some(CLIENT_ID.to_owned());
    validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    let claims = jsonwebtoken::decode::<AssertionClaims>(assertion, &key, &validation).map_err(|e| match e.kind() {
        ErrorKind::InvalidAudience => (700021, format!("Client assertion audience claim does not match {audience}.")),
        ErrorKind::InvalidIssuer | ErrorKind::InvalidSubject => {
            (700021, "Client assertion application identifier doesn't match 'client_id' parameter.".to_owned())
        }
        other => invalid(&format!("{other:?}")),
    })?;
    let AssertionClaims { jti, exp, nbf, iat } = claims.claims;
    let now = now_secs() as f64;
    if now >= exp || nbf.is_some_and(|nbf| nbf > now) {
        return Err((700024, "Client assertion is not within its valid time range.".to_owned()));
    }
    if jti.is_empty() || exp - nbf.or(iat).unwrap_or(now) > 3600.0 {
        return Err(invalid("jti missing or lifetime too long"));
    }
    Ok(())
}
