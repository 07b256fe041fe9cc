//! The validator against tokens signed by a development issuer, one check at a time.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::keys::{DevKeys, KeyCache};
use super::*;
use crate::clock::ManualClock;
use crate::dev_issuer::DevIssuer;

const NOW: u64 = 1_800_000_000;
const TENANT: &str = "72f988bf-0000-4000-8000-00000000cafe";
const AUTHORITY: &str = "https://login.microsoftonline.com";

struct Fixture {
    issuer: Arc<DevIssuer>,
    validator: Validator,
}

fn fixture(scopes: &[&str], roles: &[&str], tenants: Tenants) -> Fixture {
    let issuer = Arc::new(DevIssuer::generate("http://127.0.0.1:9".into(), TENANT.into(), 3600).unwrap());
    let policy = Policy {
        identity: "api".into(),
        audiences: vec!["api://my-api".into(), "client-1".into()],
        tenants,
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        roles: roles.iter().map(|s| (*s).to_owned()).collect(),
        clock_skew_secs: 300,
    };
    let keys = KeyCache::new(Box::new(DevKeys(issuer.clone())), "test".into());
    let validator = Validator::new(
        vec![policy],
        Issuers::Entra { authority: AUTHORITY.into() },
        keys,
        Arc::new(ManualClock::new(NOW)),
    );
    Fixture { issuer, validator }
}

fn claims() -> Value {
    json!({
        "aud": "api://my-api",
        "iss": format!("{AUTHORITY}/{TENANT}/v2.0"),
        "tid": TENANT,
        "oid": "user-1",
        "scp": "access_as_user User.Read",
        "nbf": NOW - 10,
        "iat": NOW - 10,
        "exp": NOW + 3600,
    })
}

fn with(change: impl FnOnce(&mut Value)) -> Value {
    let mut claims = claims();
    change(&mut claims);
    claims
}

async fn refusal(fixture: &Fixture, token: &str) -> Refusal {
    fixture.validator.validate(token, None).await.expect_err("refused")
}

fn unsigned(header: Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

#[tokio::test]
async fn accepts_a_good_token_in_both_issuer_forms() {
    let f = fixture(&["access_as_user"], &[], Tenants::List(vec![TENANT.into()]));
    let token = f.issuer.sign(&claims()).unwrap();
    let validated = f.validator.validate(&token, None).await.unwrap();
    assert_eq!((validated.policy, validated.expires_on), (0, NOW + 3600));
    assert_eq!(validated.claims["oid"], "user-1");
    let v1 = f.issuer.sign(&with(|c| c["iss"] = json!(format!("https://sts.windows.net/{TENANT}/")))).unwrap();
    assert!(f.validator.validate(&v1, Some(0)).await.is_ok(), "the v1 issuer form");
    let by_client_id = f.issuer.sign(&with(|c| c["aud"] = json!("client-1"))).unwrap();
    assert!(f.validator.validate(&by_client_id, None).await.is_ok(), "the client id as audience");
}

/// Tenant ids and audiences are matched as Entra matches them, without regard to ASCII case:
/// a tenant configured in upper case accepts its tokens, whose `tid` Entra writes in lower
/// case, and an audience differing only in case is the same application.
#[tokio::test]
async fn tenants_and_audiences_match_without_regard_to_case() {
    let f = fixture(&[], &[], Tenants::List(vec![TENANT.to_ascii_uppercase().into()]));
    let token = f.issuer.sign(&claims()).unwrap();
    assert!(f.validator.validate(&token, None).await.is_ok(), "an upper-case tenant in the policy");
    let upper_aud = f.issuer.sign(&with(|c| c["aud"] = json!("API://MY-API"))).unwrap();
    assert!(f.validator.validate(&upper_aud, None).await.is_ok(), "an audience in another case");
    let upper_client = f.issuer.sign(&with(|c| c["aud"] = json!("CLIENT-1"))).unwrap();
    assert!(f.validator.validate(&upper_client, Some(0)).await.is_ok(), "the client id in another case");
    let prefix = f.issuer.sign(&with(|c| c["aud"] = json!("api://my-api2"))).unwrap();
    assert!(refusal(&f, &prefix).await.description.contains("audience"), "case folds, nothing else does");
}

#[tokio::test]
async fn refuses_expired_and_not_yet_valid_tokens_beyond_the_skew() {
    let f = fixture(&[], &[], Tenants::List(vec![TENANT.into()]));
    let within = f.issuer.sign(&with(|c| c["exp"] = json!(NOW - 299))).unwrap();
    assert!(f.validator.validate(&within, None).await.is_ok(), "within the skew");
    let expired = f.issuer.sign(&with(|c| c["exp"] = json!(NOW - 301))).unwrap();
    let refused = refusal(&f, &expired).await;
    assert_eq!(refused.failure, Failure::InvalidToken);
    assert!(refused.description.contains("expired"), "{}", refused.description);
    let early = f.issuer.sign(&with(|c| c["nbf"] = json!(NOW + 301))).unwrap();
    assert!(refusal(&f, &early).await.description.contains("not valid before"));
    let no_exp = f.issuer.sign(&with(|c| drop(c.as_object_mut().unwrap().remove("exp")))).unwrap();
    assert!(refusal(&f, &no_exp).await.description.contains("no exp"));
}

#[tokio::test]
async fn refuses_a_wrong_audience_tenant_or_issuer() {
    let f = fixture(&[], &[], Tenants::List(vec![TENANT.into()]));
    let other_aud = f.issuer.sign(&with(|c| c["aud"] = json!("api://someone-else"))).unwrap();
    assert!(refusal(&f, &other_aud).await.description.contains("audience"));
    let other = "00000000-0000-4000-8000-000000000bad";
    let other_tenant = f
        .issuer
        .sign(&with(|c| {
            c["tid"] = json!(other);
            c["iss"] = json!(format!("{AUTHORITY}/{other}/v2.0"));
        }))
        .unwrap();
    assert!(refusal(&f, &other_tenant).await.description.contains("tenant"));
    let foreign_issuer =
        f.issuer.sign(&with(|c| c["iss"] = json!(format!("https://evil.example/{TENANT}/v2.0")))).unwrap();
    assert!(refusal(&f, &foreign_issuer).await.description.contains("issuer"));
    let mismatched = f.issuer.sign(&with(|c| c["iss"] = json!(format!("{AUTHORITY}/{other}/v2.0")))).unwrap();
    assert!(refusal(&f, &mismatched).await.description.contains("issuer"), "iss must be the tid's");

    let any = fixture(&[], &[], Tenants::Any);
    let other_tenant = any
        .issuer
        .sign(&with(|c| {
            c["tid"] = json!(other);
            c["iss"] = json!(format!("{AUTHORITY}/{other}/v2.0"));
        }))
        .unwrap();
    assert!(any.validator.validate(&other_tenant, None).await.is_ok(), "any tenant, with its own issuer");
}

#[tokio::test]
async fn refuses_bad_signatures_and_algorithms_other_than_rs256() {
    let f = fixture(&[], &[], Tenants::List(vec![TENANT.into()]));
    let token = f.issuer.sign(&claims()).unwrap();
    let header = token.split('.').next().unwrap();
    let forged_claims = URL_SAFE_NO_PAD.encode(with(|c| c["oid"] = json!("admin")).to_string());
    let signature = token.rsplit('.').next().unwrap();
    let tampered = format!("{header}.{forged_claims}.{signature}");
    assert_eq!(refusal(&f, &tampered).await.description, "the token's signature is invalid");

    let kid = f.issuer.jwks()["keys"][0]["kid"].clone();
    let none = unsigned(json!({"alg": "none", "kid": kid}), &claims(), b"");
    assert!(refusal(&f, &none).await.description.contains("\"none\" is not accepted"));
    // HS256 with the public key as the HMAC secret: the classic confusion attack.
    let hs = unsigned(json!({"alg": "HS256", "kid": kid}), &claims(), b"mac");
    assert!(refusal(&f, &hs).await.description.contains("\"HS256\" is not accepted"));
    let unknown = unsigned(json!({"alg": "RS256", "kid": "not-a-key"}), &claims(), b"sig");
    assert!(refusal(&f, &unknown).await.description.contains("not in the authority's key set"));
    let crit = unsigned(json!({"alg": "RS256", "kid": kid, "crit": ["b64"]}), &claims(), b"sig");
    assert!(refusal(&f, &crit).await.description.contains("crit"));
    assert!(refusal(&f, "not.a-jwt").await.description.contains("three base64url parts"));
    let long = "a".repeat(MAX_TOKEN_BYTES + 1);
    assert!(refusal(&f, &long).await.description.contains("longer than"));
}

#[tokio::test]
async fn requires_one_of_the_scopes_or_roles() {
    let f = fixture(&["access_as_user"], &["Tasks.Read"], Tenants::List(vec![TENANT.into()]));
    let scoped = f.issuer.sign(&claims()).unwrap();
    assert!(f.validator.validate(&scoped, None).await.is_ok());
    let app = f.issuer.sign(&with(|c| {
        c.as_object_mut().unwrap().remove("scp");
        c["roles"] = json!(["Tasks.Read"]);
    }));
    assert!(f.validator.validate(&app.unwrap(), None).await.is_ok(), "an application with the role");
    let neither = f.issuer.sign(&with(|c| c["scp"] = json!("User.Read"))).unwrap();
    let refused = refusal(&f, &neither).await;
    assert_eq!(refused.failure, Failure::InsufficientScope);
    assert!(refused.description.contains("access_as_user") && refused.description.contains("Tasks.Read"));
}

#[tokio::test]
async fn the_dev_issuer_is_matched_exactly() {
    let issuer = Arc::new(DevIssuer::generate("http://127.0.0.1:9".into(), TENANT.into(), 3600).unwrap());
    let policy = Policy {
        identity: "dev".into(),
        audiences: vec!["api://dev".into()],
        tenants: Tenants::List(vec![TENANT.into()]),
        scopes: Vec::new(),
        roles: Vec::new(),
        clock_skew_secs: 300,
    };
    let validator = Validator::new(
        vec![policy],
        Issuers::Dev { issuer: issuer.issuer().to_owned() },
        KeyCache::new(Box::new(DevKeys(issuer.clone())), "dev".into()),
        Arc::new(crate::clock::SystemClock),
    );
    let user = crate::dev_issuer::DevUser { name: "alice@contoso.com", object_id: "o", client_app: "spa", roles: &[] };
    let (token, _) = issuer.issue_user(&user, "api://dev", "access_as_user", None).unwrap();
    let validated = validator.validate(token.expose(), None).await.unwrap();
    assert_eq!(validated.claims["upn"], "alice@contoso.com");
}

/// A token seen before is not verified again (its digest is remembered), yet every other
/// check still runs on it: the same token is refused once it has expired. A token differing
/// in one byte of its signature is verified, and refused.
#[tokio::test]
async fn a_verified_signature_is_remembered_but_every_other_check_runs_again() {
    let issuer = Arc::new(DevIssuer::generate("http://127.0.0.1:9".into(), TENANT.into(), 3600).unwrap());
    let clock = ManualClock::new(NOW);
    let policy = Policy {
        identity: "api".into(),
        audiences: vec!["api://my-api".into()],
        tenants: Tenants::List(vec![TENANT.into()]),
        scopes: vec![],
        roles: vec![],
        clock_skew_secs: 300,
    };
    let keys = KeyCache::new(Box::new(DevKeys(issuer.clone())), "test".into());
    let validator =
        Validator::new(vec![policy], Issuers::Entra { authority: AUTHORITY.into() }, keys, Arc::new(clock.clone()));
    let token = issuer.sign(&claims()).unwrap();
    for _ in 0..3 {
        assert!(validator.validate(&token, None).await.is_ok());
    }
    assert_eq!(validator.signature_checks(), 1, "verified once, remembered after");

    let (signed, signature) = token.rsplit_once('.').unwrap();
    let mut bytes = URL_SAFE_NO_PAD.decode(signature).unwrap();
    bytes[0] ^= 1;
    let tampered = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(bytes));
    let refused = validator.validate(&tampered, None).await.expect_err("refused");
    assert!(refused.description.contains("signature is invalid"), "{}", refused.description);
    assert_eq!(validator.signature_checks(), 2);

    clock.advance(3600 + 301);
    let refused = validator.validate(&token, None).await.expect_err("expired");
    assert!(refused.description.contains("expired"), "{}", refused.description);
}
