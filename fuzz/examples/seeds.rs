//! Writes the seed corpora: realistic inputs for each fuzz target, so the fuzzers start from
//! what Azure SDKs, Entra and `encode` really produce rather than from nothing.
//!
//! Run from `fuzz/`: `cargo run --example seeds` (no sanitizer or nightly flags needed).
//! The files are committed; rerun only when the formats change.

use std::fs;
use std::path::Path;

use tokenrelay::secret::Secret;
use tokenrelay::store::format::encode;
use tokenrelay::store::{Cipher, PersistedAccount, PersistedToken, Protection, Snapshot};
use tokenrelay::token::AccessToken;

/// Must match `FUZZ_KEY` in `fuzz_targets/store_decode.rs`.
const FUZZ_KEY: [u8; 32] = [0x42; 32];

const QUERIES: &[(&str, &str)] = &[
    // IMDS, as azure-identity (Python, JS, .NET, Java) sends it.
    (
        "imds-client-id",
        "api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net&client_id=0f1c2d3e-4a5b-6c7d-8e9f-a0b1c2d3e4f5",
    ),
    (
        "imds-object-id",
        "api-version=2018-02-01&resource=https://management.azure.com/&object_id=11111111-2222-3333-4444-555555555555",
    ),
    (
        "imds-mi-res-id",
        "api-version=2018-02-01&resource=https%3A%2F%2Fstorage.azure.com&mi_res_id=%2Fsubscriptions%2F00000000-0000-0000-0000-000000000000%2FresourceGroups%2Frg%2Fproviders%2FMicrosoft.ManagedIdentity%2FuserAssignedIdentities%2Fid1",
    ),
    (
        "imds-msi-res-id",
        "api-version=2018-02-01&resource=https%3A%2F%2Fdatabase.windows.net%2F&msi_res_id=%2Fsubscriptions%2Fs%2FresourceGroups%2Frg%2Fproviders%2FMicrosoft.ManagedIdentity%2FuserAssignedIdentities%2Fid2",
    ),
    ("imds-default", "api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F.default"),
    // App Service / Functions (IDENTITY_ENDPOINT), as the SDKs send it.
    (
        "appservice-client-id",
        "api-version=2019-08-01&resource=https%3A%2F%2Fvault.azure.net&client_id=0f1c2d3e-4a5b-6c7d-8e9f-a0b1c2d3e4f5",
    ),
    (
        "appservice-principal-id",
        "api-version=2019-08-01&resource=https%3A%2F%2Fvault.azure.net&principal_id=11111111-2222-3333-4444-555555555555",
    ),
    (
        "appservice-msi-res-id-dash",
        "api-version=2019-08-01&resource=https%3A%2F%2Fvault.azure.net&msi-res-id=%2Fsubscriptions%2Fs",
    ),
    // Older and odd spellings.
    ("legacy-clientid", "api-version=2017-09-01&resource=https://vault.azure.net&clientid=abc"),
    ("preview-version", "resource=https%3A%2F%2Fgraph.microsoft.com&api-version=2019-07-01-preview"),
    ("plus-and-unknown", "resource=a+b&bypass_cache=true&api-version=2021-02-01"),
    // Error cases the server must refuse cleanly.
    ("duplicate", "resource=a&resource=b&api-version=2018-02-01"),
    ("conflict", "client_id=a&object_id=b&resource=x"),
    ("empty-resource", "resource=%20&api-version=2018-02-01"),
    ("only-default", "resource=/.default"),
    ("old-version", "api-version=2017-08-01&resource=x"),
];

const ENTRA: &[(&str, &str)] = &[
    (
        "success-numbers",
        r#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL3ZhdWx0LmF6dXJlLm5ldCJ9.c2ln"}"#,
    ),
    (
        "success-strings",
        r#"{"token_type":"Bearer","expires_in":"3599","ext_expires_in":"7199","expires_on":"1795914000","not_before":"1795910100","resource":"https://vault.azure.net","access_token":"eyJ0eXAi.eyJhdWQi.c2ln"}"#,
    ),
    (
        "success-refresh-in",
        r#"{"token_type":"Bearer","expires_in":86399,"ext_expires_in":86399,"refresh_in":43199,"access_token":"tok"}"#,
    ),
    ("success-padded-string", r#"{"access_token":"t","expires_in":" 60 ","refresh_in":"30"}"#),
    // Overflowed issued_at + expires_in before the times saturated.
    ("success-huge", r#"{"access_token":"t","expires_in":18446744073709551615,"refresh_in":"18446744073709551615"}"#),
    (
        "error-invalid-client",
        "{\"error\":\"invalid_client\",\"error_description\":\"AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '0f1c2d3e-4a5b-6c7d-8e9f-a0b1c2d3e4f5'.\\r\\nTrace ID: 5e1f0c9a-0000-4000-8000-000000000000\\r\\nCorrelation ID: 9a8b7c6d-0000-4000-8000-000000000000\\r\\nTimestamp: 2026-11-29 12:00:00Z\",\"error_codes\":[7000215],\"timestamp\":\"2026-11-29 12:00:00Z\",\"trace_id\":\"5e1f0c9a-0000-4000-8000-000000000000\",\"correlation_id\":\"9a8b7c6d-0000-4000-8000-000000000000\",\"error_uri\":\"https://login.microsoftonline.com/error?code=7000215\"}",
    ),
    (
        "error-app-not-found",
        "{\"error\":\"unauthorized_client\",\"error_description\":\"AADSTS700016: Application with identifier 'c1' was not found in the directory 'contoso'.\\r\\nTrace ID: x\",\"error_codes\":[700016],\"correlation_id\":\"corr\"}",
    ),
    (
        "error-description-only",
        r#"{"error":"invalid_request","error_description":"AADSTS90002: Tenant 'x' not found."}"#,
    ),
    (
        "error-federated",
        r#"{"error":"invalid_client","error_description":"AADSTS70021: No matching federated identity record found for presented assertion.","error_codes":[70021,50000]}"#,
    ),
    (
        "error-throttled",
        r#"{"error":"temporarily_unavailable","error_description":"AADSTS50196: The server terminated an operation because it encountered a client request loop.","error_codes":[]}"#,
    ),
    ("error-html", "<html><body>502 Bad Gateway</body></html>"),
    // User grants (device code, refresh token): client_info and the ID token name the account.
    (
        "success-user-client-info",
        "{\"token_type\":\"Bearer\",\"scope\":\"https://management.azure.com/user_impersonation\",\"expires_in\":4737,\"ext_expires_in\":4737,\"access_token\":\"eyJ0eXAi.eyJhdWQi.c2ln\",\"refresh_token\":\"1.AXEAv4j5cvGGr0GRqy180BHbRw\",\"id_token\":\"eyJ0eXAiOiJKV1QifQ.eyJvaWQiOiIwYjFjMmQzZS0wMDAwLTQwMDAtODAwMC0wMDAwMDAwMDAwYjEiLCJ0aWQiOiI3MmY5ODhiZi0wMDAwLTQwMDAtODAwMC0wMDAwMDAwMGNhZmUiLCJwcmVmZXJyZWRfdXNlcm5hbWUiOiJhZGFAY29udG9zby5jb20ifQ.c2ln\",\"client_info\":\"eyJ1aWQiOiIwYjFjMmQzZS0wMDAwLTQwMDAtODAwMC0wMDAwMDAwMDAwYjEiLCJ1dGlkIjoiNzJmOTg4YmYtMDAwMC00MDAwLTgwMDAtMDAwMDAwMDBjYWZlIn0\"}",
    ),
    (
        "success-user-id-token-only",
        "{\"token_type\":\"Bearer\",\"expires_in\":\"3599\",\"access_token\":\"tok\",\"refresh_token\":\"r\",\"id_token\":\"eyJ0eXAiOiJKV1QifQ.eyJvaWQiOiIwYjFjMmQzZS0wMDAwLTQwMDAtODAwMC0wMDAwMDAwMDAwYjEiLCJ0aWQiOiI3MmY5ODhiZi0wMDAwLTQwMDAtODAwMC0wMDAwMDAwMGNhZmUiLCJwcmVmZXJyZWRfdXNlcm5hbWUiOiJhZGFAY29udG9zby5jb20ifQ.c2ln\"}",
    ),
    // A misconfigured authority quoting the request body, with its secret form-encoded.
    (
        "error-echoed-request",
        "{\"error\":\"invalid_request\",\"error_description\":\"AADSTS900144: Bad request body: grant_type=refresh_token&client_id=c&refresh_token=fuzz-secret%7Evalue&client_info=1 fuzz-secret~value\\r\\nTrace ID: 0\",\"error_codes\":[900144],\"correlation_id\":\"fuzz-secret~value\"}",
    ),
];

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (name, query) in QUERIES {
        write(&root.join("query_parse"), name, query.as_bytes());
    }
    for (name, body) in ENTRA {
        write(&root.join("entra_response"), name, body.as_bytes());
    }
    let encrypted = Protection::Encrypted(Cipher::new(&FUZZ_KEY));
    let dir = root.join("store_decode");
    write(&dir, "encrypted", &encode(&snapshot(), &encrypted, 1_795_910_400));
    write(&dir, "plaintext", &encode(&snapshot(), &Protection::Plaintext, 1_795_910_400));
    write(&dir, "encrypted-empty", &encode(&Snapshot::default(), &encrypted, 0));
    write(&dir, "plaintext-empty", &encode(&Snapshot::default(), &Protection::Plaintext, 0));
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::create_dir_all(dir).expect("create the corpus directory");
    fs::write(dir.join(format!("seed-{name}")), bytes).expect("write a seed");
}

/// A snapshot like a real one: two tokens (one with an upstream refresh hint) and a user.
fn snapshot() -> Snapshot {
    let token = |identity: &str, resource: &str, refresh_on: Option<u64>| PersistedToken {
        identity: identity.into(),
        client_id: "0f1c2d3e-4a5b-6c7d-8e9f-a0b1c2d3e4f5".into(),
        resource: resource.into(),
        credential: "workload_identity".into(),
        refresh_on: 1_795_912_200,
        token: AccessToken {
            token: Secret::new(
                "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL3ZhdWx0LmF6dXJlLm5ldCJ9.c2ln",
            ),
            expires_on: 1_795_914_000,
            not_before: 1_795_910_400,
            ext_expires_on: 1_795_917_600,
            refresh_on,
        },
    };
    Snapshot {
        tokens: vec![
            token("app", "https://vault.azure.net", None),
            token("app", "https://management.azure.com/", Some(1_795_912_200)),
        ],
        accounts: vec![PersistedAccount {
            home_account_id: "11111111-2222-3333-4444-555555555555.72f988bf-86f1-41af-91ab-2d7cd011db47".into(),
            client_id: "04b07795-8ddb-461a-bbee-02f9e1bf7b46".into(),
            tenant_id: "72f988bf-86f1-41af-91ab-2d7cd011db47".into(),
            refresh_token: Secret::new("0.AXoAv4j5cvGGr0GRqy180BHbR-refresh"),
            updated_at: 1_795_910_400,
        }],
    }
}
