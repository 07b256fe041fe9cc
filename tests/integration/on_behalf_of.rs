//! The user-token endpoints (`/Validate`, `/AuthorizationHeader*`) against the fake authority,
//! which publishes rotating signing keys and runs the on-behalf-of grant as strictly as Entra.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::json;

use crate::support::certs::{LoopbackTls, TestCertificate};
use crate::support::config::{TestConfig, table};
use crate::support::fake_entra::{self, CLAIMS_CHALLENGE, CLIENT_ID, FakeEntra, TENANT, USER_OID};
use crate::support::{CacheDir, HEADER_SECRET, TestRelay, json};

/// The identity accepts users' tokens with `access_as_user`; `graph` and `mail` are APIs it
/// calls as them (`mail`'s scopes in the space-separated form).
fn config(entra: &FakeEntra) -> TestConfig {
    TestConfig::client_secret(entra).set("identities.0.inbound", table().with("scopes", vec!["access_as_user"])).set(
        "downstream_apis",
        vec![
            table().with("name", "graph").with("scopes", vec!["https://graph.microsoft.com/User.Read"]),
            table().with("name", "mail").with("scopes", "https://graph.microsoft.com/Mail.Read"),
        ],
    )
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

async fn with_bearer(relay: &TestRelay, path: &str, token: &str) -> reqwest::Response {
    relay.get(path, &[("Authorization", &format!("Bearer {token}"))]).await
}

fn challenge(response: &reqwest::Response) -> String {
    response.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn validates_a_user_and_exchanges_the_token_on_their_behalf() {
    let entra = FakeEntra::start().await;
    let relay = TestRelay::serve(&config(&entra), &[]).await;
    let user = entra.user_token(|_| {});

    let validated = with_bearer(&relay, "/Validate", &user).await;
    assert_eq!(validated.status(), 200);
    let validated = json(validated).await;
    assert_eq!(validated["protocol"], "Bearer");
    assert_eq!(validated["token"], user.as_str());
    assert_eq!(validated["claims"]["oid"], USER_OID);
    assert_eq!(validated["claims"]["scp"], "access_as_user");

    let header = with_bearer(&relay, "/AuthorizationHeader/graph", &user).await;
    assert_eq!(header.status(), 200);
    assert_eq!(header.headers()["cache-control"], "no-cache, no-store, must-revalidate");
    let header = json(header).await["authorizationHeader"].as_str().unwrap().to_owned();
    assert_eq!(header, format!("Bearer fake-obo-1-for-{USER_OID}-https://graph.microsoft.com/User.Read"));
    let seen = entra.seen();
    let exchange = &seen.last().unwrap().form;
    assert_eq!(exchange["grant_type"], "urn:ietf:params:oauth:grant-type:jwt-bearer");
    assert_eq!(exchange["requested_token_use"], "on_behalf_of");
    assert_eq!(exchange["assertion"], user);
    assert_eq!(exchange["client_secret"], fake_entra::CLIENT_SECRET);

    // The same user and API again: from the cache. The path is matched case-insensitively.
    let again = json(with_bearer(&relay, "/authorizationheader/graph", &user).await).await;
    assert_eq!(again["authorizationHeader"], header.as_str());
    assert_eq!(entra.obo_requests(), 1);

    // Another user: another exchange.
    let bob = entra.user_token(|c| c["oid"] = json!("b0b00000-0000-4000-8000-000000000b0b"));
    let other = json(with_bearer(&relay, "/AuthorizationHeader/graph", &bob).await).await;
    assert!(other["authorizationHeader"].as_str().unwrap().contains("b0b00000"));

    // The application's own token for the API's resource, with no user token.
    let app = relay.get("/AuthorizationHeaderUnauthenticated/graph", &[]).await;
    assert_eq!(app.status(), 200);
    assert_eq!(json(app).await["authorizationHeader"], "Bearer fake-token-3-for-https://graph.microsoft.com");
    // And through the override Microsoft's sidecar documents.
    let app = with_bearer(&relay, "/AuthorizationHeader/graph?optionsOverride.RequestAppToken=true", &user).await;
    assert_eq!(json(app).await["authorizationHeader"], "Bearer fake-token-3-for-https://graph.microsoft.com");

    let unknown = with_bearer(&relay, "/AuthorizationHeader/nope", &user).await;
    assert_eq!(unknown.status(), 400);
    assert_eq!(unknown.headers()["content-type"], "application/problem+json");
    assert_eq!(json(unknown).await["detail"], "Not able to resolve 'nope'.");
    assert!(!relay.logs().contains(&user), "the user's token never reaches the log");
    assert!(!relay.logs().contains("fake-obo-1"), "nor the issued one");
}

#[tokio::test(flavor = "multi_thread")]
async fn refuses_every_token_that_fails_a_check_and_names_the_check() {
    let entra = FakeEntra::start().await;
    let relay = TestRelay::serve(&config(&entra), &[]).await;
    let now = now();
    let other_tenant = "00000000-0000-4000-8000-000000000bad";
    let good = entra.user_token(|_| {});
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims_of_good = good.split('.').nth(1).unwrap();
    let header_of = |alg: &str| b64.encode(json!({"alg": alg, "kid": "k"}).to_string());
    let cases: Vec<(&str, String, &str)> = vec![
        ("expired", entra.user_token(|c| c["exp"] = json!(now - 600)), "expired"),
        ("not yet valid", entra.user_token(|c| c["nbf"] = json!(now + 600)), "not valid before"),
        ("wrong audience", entra.user_token(|c| c["aud"] = json!("api://someone-else")), "audience"),
        (
            "wrong tenant",
            entra.user_token(|c| {
                c["tid"] = json!(other_tenant);
                c["iss"] = json!(format!("{}/{other_tenant}/v2.0", entra.url()));
            }),
            "tenant",
        ),
        ("wrong issuer", entra.user_token(|c| c["iss"] = json!("https://evil.example/v2.0")), "issuer"),
        ("bad signature", format!("{}x", &good[..good.len() - 1]).replace(".x", ".y"), "signature"),
        ("alg none", format!("{}.{claims_of_good}.", header_of("none")), "algorithm none is not accepted"),
        ("HS256", format!("{}.{claims_of_good}.c2ln", header_of("HS256")), "algorithm HS256 is not accepted"),
    ];
    for (what, token, named) in cases {
        for path in ["/Validate", "/AuthorizationHeader/graph"] {
            let response = with_bearer(&relay, path, &token).await;
            assert_eq!(response.status(), 401, "{what} on {path}");
            let challenge = challenge(&response);
            assert!(
                challenge.starts_with("Bearer error=\"invalid_token\", error_description=\""),
                "{what}: {challenge}"
            );
            assert!(challenge.contains(named), "{what}: {challenge}");
            let body = json(response).await;
            assert_eq!(body["status"], 401);
        }
    }
    let unscoped = entra.user_token(|c| c["scp"] = json!("User.Read"));
    let response = with_bearer(&relay, "/Validate", &unscoped).await;
    assert_eq!(response.status(), 403, "a valid token without the scope");
    assert!(challenge(&response).starts_with("Bearer error=\"insufficient_scope\""));
    let missing = relay.get("/Validate", &[]).await;
    assert_eq!((missing.status().as_u16(), challenge(&missing)), (401, "Bearer".to_owned()));
    assert_eq!(entra.obo_requests(), 0, "no refused token reaches the authority");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_key_is_fetched_and_unknown_kids_refetch_at_most_once_a_minute() {
    let entra = FakeEntra::start().await;
    let relay = TestRelay::serve(&config(&entra), &[]).await;
    assert_eq!(with_bearer(&relay, "/Validate", &entra.user_token(|_| {})).await.status(), 200);
    assert_eq!(entra.jwks_requests(), 1);
    assert_eq!(with_bearer(&relay, "/Validate", &entra.user_token(|_| {})).await.status(), 200);
    assert_eq!(entra.jwks_requests(), 1, "served from the cached key set");

    entra.rotate_signing_key();
    let rotated = entra.user_token(|_| {});
    assert_eq!(with_bearer(&relay, "/Validate", &rotated).await.status(), 200, "the new key is fetched");
    assert_eq!(entra.jwks_requests(), 2);

    // A key the authority never published: one more fetch, then none within the minute.
    let (kid, key) = (
        String::from("made-up"),
        aws_lc_rs::signature::RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap(),
    );
    let claims = serde_json::json!({"aud": format!("api://{CLIENT_ID}"), "iss": entra.issuer(), "tid": TENANT, "scp": "access_as_user", "exp": now() + 3600});
    let forged = fake_entra::sign_rs256(&kid, &key, &claims);
    for _ in 0..3 {
        let response = with_bearer(&relay, "/Validate", &forged).await;
        assert_eq!(response.status(), 401);
        assert!(challenge(&response).contains("not in the authority's key set"));
    }
    assert_eq!(entra.jwks_requests(), 2, "the refetch after the rotation was less than a minute ago");
    // Through an outage of the authority, known keys keep validating: a token not seen
    // before (so its signature is verified, not remembered) signed with the held key.
    let fresh = entra.user_token(|c| c["uti"] = serde_json::json!("fresh"));
    entra.set_down(true);
    assert_eq!(with_bearer(&relay, "/Validate", &fresh).await.status(), 200);
    assert_eq!(entra.jwks_requests(), 2, "validated with the keys held, no fetch");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claims_challenge_goes_back_to_the_caller_intact() {
    let entra = FakeEntra::start().await;
    entra.require_claims_for("Mail.Read");
    let relay = TestRelay::serve(&config(&entra), &[]).await;
    let response = with_bearer(&relay, "/AuthorizationHeader/mail", &entra.user_token(|_| {})).await;
    assert_eq!(response.status(), 401);
    let challenge = challenge(&response);
    let encoded = base64::engine::general_purpose::STANDARD.encode(CLAIMS_CHALLENGE);
    assert!(challenge.starts_with("Bearer error=\"insufficient_claims\""), "{challenge}");
    assert!(challenge.ends_with(&format!("claims=\"{encoded}\"")), "{challenge}");
    let body = json(response).await;
    assert_eq!(body["claims"], CLAIMS_CHALLENGE);
    assert_eq!(body["error"], "interaction_required");
    assert_eq!(body["errorCodes"], json!([50079]));
    assert!(body["detail"].as_str().unwrap().contains("AADSTS50079"), "{body}");
    // The refusal is not cached: the user who steps up comes back with a new token anyway.
    let again = with_bearer(&relay, "/AuthorizationHeader/mail", &entra.user_token(|_| {})).await;
    assert_eq!(again.status(), 401);
    assert_eq!(entra.obo_requests(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_exchange_per_user_and_api_however_many_wait() {
    let entra = FakeEntra::start().await;
    let relay = std::sync::Arc::new(TestRelay::serve(&config(&entra), &[]).await);
    let alice = entra.user_token(|_| {});
    let bob = entra.user_token(|c| c["oid"] = json!("b0b00000-0000-4000-8000-000000000b0b"));
    entra.hold();
    let mut waiting = Vec::new();
    for i in 0..12 {
        let relay = relay.clone();
        let (token, api) =
            (if i % 2 == 0 { alice.clone() } else { bob.clone() }, if i % 3 == 0 { "mail" } else { "graph" });
        waiting.push(tokio::spawn(async move {
            let response = with_bearer(&relay, &format!("/AuthorizationHeader/{api}"), &token).await;
            (response.status().as_u16(), json(response).await["authorizationHeader"].clone())
        }));
    }
    crate::support::eventually("the first exchanges arrive", async || entra.obo_requests() >= 1).await;
    entra.release();
    for task in waiting {
        assert_eq!(task.await.unwrap().0, 200);
    }
    assert_eq!(entra.obo_requests(), 4, "one per (user, API): alice and bob, graph and mail");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cached_token_never_outlives_the_users_token() {
    let entra = FakeEntra::start().await;
    let relay = TestRelay::serve(&config(&entra), &[]).await;
    // Within the serve margin (60 s) of its end: every request exchanges again rather than
    // serve a downstream token past the user's own.
    let short = entra.user_token(|c| c["exp"] = json!(now() + 30));
    for _ in 0..2 {
        assert_eq!(with_bearer(&relay, "/AuthorizationHeader/graph", &short).await.status(), 200);
    }
    assert_eq!(entra.obo_requests(), 2);
    let long = entra.user_token(|_| {});
    for _ in 0..2 {
        assert_eq!(with_bearer(&relay, "/AuthorizationHeader/graph", &long).await.status(), 200);
    }
    assert_eq!(entra.obo_requests(), 3, "a user token with time left is served from the cache");
}

#[tokio::test(flavor = "multi_thread")]
async fn x_identity_header_is_checked_when_sent_and_can_be_required() {
    let entra = FakeEntra::start().await;
    let relay = TestRelay::serve(&config(&entra), &[]).await;
    let user = entra.user_token(|_| {});
    let bearer = format!("Bearer {user}");
    let with = |secret: &'static str| [("Authorization", bearer.clone()), ("X-IDENTITY-HEADER", secret.to_owned())];
    let wrong = with("not-the-secret");
    let wrong: Vec<(&str, &str)> = wrong.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(relay.get("/Validate", &wrong).await.status(), 401);
    let right = with(HEADER_SECRET);
    let right: Vec<(&str, &str)> = right.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(relay.get("/Validate", &right).await.status(), 200);
    assert_eq!(with_bearer(&relay, "/Validate", &user).await.status(), 200, "optional by default");
    let forwarded =
        relay.get("/Validate", &[("Authorization", bearer.as_str()), ("X-Forwarded-For", "10.0.0.1")]).await;
    assert_eq!(forwarded.status(), 400);
    let foreign_host = relay.get("/Validate", &[("Authorization", bearer.as_str()), ("Host", "evil.example")]).await;
    assert_eq!(foreign_host.status(), 400, "the DNS rebinding guard");

    let strict = TestRelay::serve(&config(&entra).set("server.user_endpoints_identity_header", "required"), &[]).await;
    assert_eq!(with_bearer(&strict, "/Validate", &user).await.status(), 401);
    assert_eq!(strict.get("/Validate", &right).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn under_dev_a_minted_user_token_validates_and_is_exchanged_for_the_same_user() {
    let relay = TestRelay::serve_dev(&[]).await;
    let minted = relay.post("/dev/user-token", r#"{"user": "alice@contoso.com", "scopes": "access_as_user"}"#).await;
    assert_eq!(minted.status(), 200);
    let minted = json(minted).await;
    let token = minted["access_token"].as_str().unwrap();
    let validated = json(with_bearer(&relay, "/Validate", token).await).await;
    assert_eq!(validated["claims"]["upn"], "alice@contoso.com");
    assert_eq!(validated["claims"]["aud"], "api://d0000000-0000-0000-0000-000000000001");
    let header = json(with_bearer(&relay, "/AuthorizationHeader/graph", token).await).await;
    let downstream = header["authorizationHeader"].as_str().unwrap().strip_prefix("Bearer ").unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(downstream.split('.').nth(1).unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(claims["upn"], "alice@contoso.com");
    assert_eq!(claims["oid"], validated["claims"]["oid"]);
    assert_eq!(claims["aud"], "https://graph.microsoft.com");
    assert_eq!(claims["scp"], "User.Read");
    let tampered = format!("{token}x");
    assert_eq!(with_bearer(&relay, "/Validate", &tampered).await.status(), 401);
}

/// The virtualenv's Python that `scripts/test.sh` prepares (with `msal` pinned in
/// tests/python/requirements.txt) before it runs `cargo test`. Without it the MSAL test is
/// skipped with a message, except under CI, where a missing virtualenv is a failure: the check
/// it makes would otherwise silently never run.
fn venv_python() -> Option<std::path::PathBuf> {
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    if python.exists() {
        return Some(python);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{} is missing: under CI `bash scripts/test.sh` creates it before `cargo test`",
        python.display()
    );
    eprintln!("skipped: {} is missing; `bash scripts/test.sh` creates it (tests/python)", python.display());
    None
}

/// Runs tests/python/msal_on_behalf_of.py with `spec` on its standard input and returns MSAL's
/// answers. Nothing of the environment reaches the child but the test CA: no proxy, no
/// `REQUESTS_CA_BUNDLE` of the machine, no `AZURE_*` or `MSAL_*` setting.
async fn run_msal(
    python: &std::path::Path,
    ca_bundle: &std::path::Path,
    spec: serde_json::Value,
) -> Vec<serde_json::Value> {
    use tokio::io::AsyncWriteExt;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/msal_on_behalf_of.py");
    let mut child = tokio::process::Command::new(python)
        .arg(script)
        .env_clear()
        .env("REQUESTS_CA_BUNDLE", ca_bundle)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(spec.to_string().as_bytes()).await.unwrap();
    drop(stdin);
    let output = tokio::time::timeout(crate::support::FAILURE_DEADLINE, child.wait_with_output())
        .await
        .expect("MSAL finished within the deadline")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "msal_on_behalf_of.py failed ({}):\n{stderr}", output.status);
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("not JSON ({e}); stderr:\n{stderr}"))
}

/// Microsoft's own confidential client, MSAL for Python, runs the on-behalf-of exchange against
/// the fake authority over TLS, authenticated first with the secret and then with a certificate:
/// it discovers the tenant, reads the answers and the refusals, and sends what the fake
/// enforces. What it sends is the real protocol; the fake accepting it (and refusing what Entra
/// refuses in the shape MSAL reports) is what makes the tests above evidence.
#[tokio::test(flavor = "multi_thread")]
async fn msal_exchanges_a_user_token_with_the_fake_authority() {
    let Some(python) = venv_python() else { return };
    let tls = LoopbackTls::generate();
    let entra = FakeEntra::start_tls(&tls).await;
    assert!(entra.url().starts_with("https://127.0.0.1:"));
    entra.require_claims_for("Mail.Read");
    let certificate = TestCertificate::generate("msal-client");
    entra.register_certificate(&certificate.der);
    let dir = tempfile::tempdir().unwrap();
    let ca_bundle = dir.path().join("ca.pem");
    std::fs::write(&ca_bundle, &tls.ca_pem).unwrap();

    let user = entra.user_token(|_| {});
    let expired = entra.user_token(|c| {
        c["iat"] = json!(now() - 7200);
        c["nbf"] = json!(now() - 7200);
        c["exp"] = json!(now() - 3600);
    });
    let graph = "https://graph.microsoft.com/User.Read";
    let spec = |credential: serde_json::Value, requests: serde_json::Value| {
        json!({
            "authority": format!("{}/{TENANT}", entra.url()),
            "client_id": CLIENT_ID,
            "ca_bundle": ca_bundle,
            "credential": credential,
            "requests": requests,
        })
    };
    let answers = run_msal(
        &python,
        &ca_bundle,
        spec(
            json!({"secret": fake_entra::CLIENT_SECRET}),
            json!([
                {"assertion": user, "scopes": [graph]},
                {"assertion": user, "scopes": ["https://graph.microsoft.com/Mail.Read"]},
                {"assertion": user, "scopes": [graph, "https://vault.azure.net/user_impersonation"]},
                {"assertion": expired, "scopes": [graph]},
            ]),
        ),
    )
    .await;

    let issued = &answers[0];
    assert_eq!(issued["access_token"], format!("fake-obo-1-for-{USER_OID}-{graph}"), "{issued}");
    assert_eq!(issued["token_type"], "Bearer");
    assert_eq!(issued["token_source"], "identity_provider");
    // MSAL read the ID token and the account the authority returned for its OpenID scopes.
    assert_eq!(issued["id_token_claims"]["oid"], USER_OID, "{issued}");
    assert_eq!(issued["id_token_claims"]["aud"], CLIENT_ID);
    let sent = entra.seen().into_iter().find(|r| r.form.get("assertion") == Some(&user)).unwrap().form;
    assert_eq!(sent["grant_type"], "urn:ietf:params:oauth:grant-type:jwt-bearer");
    assert_eq!(sent["requested_token_use"], "on_behalf_of");
    assert_eq!(sent["client_secret"], fake_entra::CLIENT_SECRET);
    assert_eq!(sent["client_info"], "1");
    let mut scopes: Vec<&str> = sent["scope"].split(' ').collect();
    scopes.sort_unstable();
    assert_eq!(scopes, [graph, "offline_access", "openid", "profile"]);

    // The claims challenge, a scope list spanning two resources and an expired user token: MSAL
    // hands each refusal to its caller as Entra's error, the challenge intact.
    let challenged = &answers[1];
    assert_eq!(challenged["error"], "interaction_required", "{challenged}");
    assert_eq!(challenged["error_codes"], json!([50079]));
    assert_eq!(challenged["claims"], CLAIMS_CHALLENGE);
    assert_eq!((&answers[2]["error"], &answers[2]["error_codes"]), (&json!("invalid_scope"), &json!([28000])));
    assert_eq!((&answers[3]["error"], &answers[3]["error_codes"]), (&json!("invalid_grant"), &json!([500133])));

    // With a certificate instead of the secret: MSAL's PS256 assertion names it by `x5t#S256`,
    // and the fake verifies it as Entra does.
    let answers = run_msal(
        &python,
        &ca_bundle,
        spec(
            json!({"private_key": certificate.key_pem, "public_certificate": certificate.cert_pem}),
            json!([{"assertion": user, "scopes": [graph]}]),
        ),
    )
    .await;
    assert!(answers[0]["access_token"].as_str().is_some_and(|t| t.starts_with("fake-obo-")), "{}", answers[0]);
    let sent = entra.seen().pop().unwrap();
    let header = sent.assertion_header.unwrap();
    assert_eq!(header["alg"], "PS256");
    // Base64url with `=` padding, as MSAL writes it; the fake accepts it as Entra does.
    assert_eq!(header["x5t#S256"].as_str().unwrap().trim_end_matches('='), certificate.x5t_s256());
    assert!(!sent.form.contains_key("client_secret"));
}

/// `tokenrelay check` describes what the user-token endpoints accept and serve; `--fetch`
/// fetches the signing keys (failing when it cannot), and an API whose identity has no
/// credential that can run the exchange is named.
#[tokio::test(flavor = "multi_thread")]
async fn check_reports_inbound_validation_and_the_downstream_apis() {
    let entra = FakeEntra::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    let managed = TestConfig::client_secret(&entra).replace(
        "identities",
        vec![
            table()
                .with("name", "api")
                .with("default", true)
                .with("client_id", CLIENT_ID)
                .with("tenant_id", TENANT)
                .with(
                    "credentials",
                    vec![table().with("kind", "client_secret").with("secret", fake_entra::CLIENT_SECRET)],
                )
                .with("inbound", table().with("scopes", vec!["access_as_user"]).with("roles", vec!["Tasks.Read"])),
            table()
                .with("name", "worker")
                .with("client_id", "7e57c11e-0000-4000-8000-00000000a551")
                .with("credentials", vec![table().with("kind", "managed_identity")]),
        ],
    );
    let managed = managed.set(
        "downstream_apis",
        vec![
            table()
                .with("name", "graph")
                .with("scopes", vec!["https://graph.microsoft.com/User.Read"])
                .with("identity", "api"),
            table()
                .with("name", "vault")
                .with("scopes", "https://vault.azure.net/user_impersonation")
                .with("identity", "worker"),
        ],
    );
    std::fs::write(&file, managed.to_string()).unwrap();
    let check = |fetch: bool| {
        let mut command = crate::support::command();
        command.args(["check", "--config", file.to_str().unwrap()]);
        if fetch {
            command.args(["--fetch", "--resource", "https://vault.azure.net"]);
        }
        command
    };

    let output = check(false).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let discovery = format!("{}/{TENANT}/v2.0/.well-known/openid-configuration", entra.url());
    for expected in [
        "#   identity \"api\" accepts user tokens:".to_owned(),
        format!("#     audiences: {CLIENT_ID}, api://{CLIENT_ID}"),
        format!("#     tenants: {TENANT}"),
        "#     requires: a scope (scp) of access_as_user, or a role of Tasks.Read; clock skew 300 s".to_owned(),
        format!("#   signing keys from {discovery} (`--fetch` fetches them)"),
        "#   downstream API \"graph\": scopes https://graph.microsoft.com/User.Read, exchanged on-behalf-of as identity \"api\"".to_owned(),
        "#     the exchange runs with client_secret".to_owned(),
        "#     /AuthorizationHeaderUnauthenticated/graph: the application's own token for https://graph.microsoft.com".to_owned(),
        "#     warning: no usable credential of identity \"worker\" can run the exchange (managed_identity)".to_owned(),
        "#     warning: identity \"worker\" has no `inbound` section".to_owned(),
    ] {
        assert!(stdout.contains(&expected), "missing {expected:?} in:\n{stdout}");
    }
    assert_eq!(entra.jwks_requests(), 0, "nothing fetched without --fetch");

    let output = check(true).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(&format!("#   signing keys from {discovery}: fetched 1 key(s)")), "{stdout}");
    assert_eq!(entra.jwks_requests(), 1);

    entra.set_down(true);
    let output = check(true).output().await.unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(&format!("#   signing keys from {discovery}: fetching failed:")), "{stdout}");
}

/// Users' tokens stay in memory unless `cache.persistence.user_tokens` opts them in: then a
/// restarted relay serves them from the encrypted file, under a key of the scopes and a digest
/// (the inbound token appears nowhere), and an entry ends with the user's token.
#[tokio::test(flavor = "multi_thread")]
async fn users_tokens_are_persisted_only_when_opted_in() {
    let entra = FakeEntra::start().await;
    let user = entra.user_token(|_| {});
    let header = async |relay: &TestRelay| {
        let response = with_bearer(relay, "/AuthorizationHeader/graph", &user).await;
        (response.status().as_u16(), json(response).await["authorizationHeader"].clone())
    };

    // Persistence on, users' tokens not opted in: a restart exchanges again.
    let keyed = |cache: &CacheDir| {
        cache.persisting(config(&entra)).set("cache.persistence.key_file", cache.key_file().to_str().unwrap())
    };
    let list = async |cache: &CacheDir, toml: &TestConfig| {
        let file = cache.config_file(toml);
        let output = crate::support::command().args(["cache", "list", "--config", file.to_str().unwrap()]).output();
        String::from_utf8_lossy(&output.await.unwrap().stdout).into_owned()
    };
    let cache = CacheDir::new();
    let toml = keyed(&cache);
    let mut relay = TestRelay::serve(&toml, &[]).await;
    assert_eq!(header(&relay).await.0, 200);
    assert_eq!(relay.terminate().await.code(), Some(0));
    let relay = TestRelay::serve(&toml, &[]).await;
    assert_eq!(header(&relay).await.0, 200);
    assert_eq!(entra.obo_requests(), 2, "memory only by default");
    drop(relay);

    // Opted in: the restarted relay serves the user's token through an outage.
    let cache = CacheDir::new();
    let toml = keyed(&cache).set("cache.persistence.user_tokens", true);
    let mut relay = TestRelay::serve(&toml, &[]).await;
    let (status, issued) = header(&relay).await;
    assert_eq!(status, 200);
    assert_eq!(relay.terminate().await.code(), Some(0), "{}", relay.logs());
    let mut bytes = std::fs::read(cache.file()).expect("the cache file was written");
    bytes.extend(std::fs::read(tokenrelay::store::journal::journal_path(&cache.file())).unwrap_or_default());
    let issued_token = issued.as_str().unwrap().strip_prefix("Bearer ").unwrap();
    for secret in [user.as_str(), issued_token, "graph.microsoft.com"] {
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "encrypted: {secret}");
    }
    let listed = list(&cache, &toml).await;
    assert!(listed.contains(&format!("{CLIENT_ID} on-behalf-of")), "{listed}");
    assert!(listed.contains("https://graph.microsoft.com/User.Read sha256:"), "{listed}");
    assert!(!listed.contains(&user) && !listed.contains(issued_token), "{listed}");

    // The signing keys are fetched anew after a restart (they are not persisted), the user's
    // token is served from the file.
    let before = entra.obo_requests();
    let relay = TestRelay::serve(&toml, &[]).await;
    assert_eq!(header(&relay).await, (200, issued.clone()), "{}", relay.logs());
    assert_eq!(entra.obo_requests(), before, "served from the persisted cache");
    assert!(relay.logs().contains("users=1"), "{}", relay.logs());
    // Another user's token is no key to it.
    let other = entra.user_token(|c| c["oid"] = json!("b0b00000-0000-4000-8000-000000000b0b"));
    let served = json(with_bearer(&relay, "/AuthorizationHeader/graph", &other).await).await;
    assert!(served["authorizationHeader"].as_str().unwrap().contains("b0b00000"), "{served}");
    assert_eq!(entra.obo_requests(), before + 1);
    drop(relay);

    // The persisted entry ends when the user's token does, before the issued token would.
    let cache = CacheDir::new();
    let toml = keyed(&cache).set("cache.persistence.user_tokens", true);
    let ends = now() + 600;
    let short = entra.user_token(|c| c["exp"] = json!(ends));
    let mut relay = TestRelay::serve(&toml, &[]).await;
    assert_eq!(with_bearer(&relay, "/AuthorizationHeader/graph", &short).await.status(), 200);
    assert_eq!(relay.terminate().await.code(), Some(0));
    let listed = list(&cache, &toml).await;
    let row = listed.lines().find(|l| l.contains("sha256:")).unwrap_or_else(|| panic!("{listed}"));
    assert!(row.contains(&tokenrelay::clock::rfc3339(ends)), "ends with the user's token: {row}");
}
