//! The persisted-store decoder (`store::format::decode`) on arbitrary files, under a fixed
//! AES-256-GCM key and in plaintext mode, plus the `encode` → `decode` round trip.
//!
//! The input is used twice: as the bytes of a cache file, and (through `arbitrary`) as the
//! description of a snapshot to write and read back. Seeds are real files written by
//! `encode` with `FUZZ_KEY` (see `examples/seeds.rs`), so the fuzzer starts from files the
//! encrypted path can open and mutates their header and, in plaintext, their JSON.

#![no_main]

use std::sync::LazyLock;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use tokenrelay::secret::Secret;
use tokenrelay::store::format::{HEADER_LEN, VERSION, decode, encode};
use tokenrelay::store::{Cipher, DecodeError, PersistedAccount, PersistedToken, Protection, Snapshot};
use tokenrelay::token::AccessToken;

/// The key the seed files were encrypted with. Must match `examples/seeds.rs`.
const FUZZ_KEY: [u8; 32] = [0x42; 32];

static ENCRYPTED: LazyLock<Protection> = LazyLock::new(|| Protection::Encrypted(Cipher::new(&FUZZ_KEY)));
static OTHER_KEY: LazyLock<Protection> = LazyLock::new(|| Protection::Encrypted(Cipher::new(&[0x17; 32])));
/// The key id `encode` writes for `FUZZ_KEY` (bytes 10..18 of the header).
static KEY_ID: LazyLock<Vec<u8>> = LazyLock::new(|| encode(&Snapshot::default(), &ENCRYPTED, 0)[10..18].to_vec());

fuzz_target!(|data: &[u8]| {
    for (protection, encrypted) in [(&*ENCRYPTED, true), (&Protection::Plaintext, false)] {
        let result = decode(data, protection);
        check_header_verdict(data, encrypted, &result);
        if let Ok(snapshot) = result {
            // Whatever decodes must survive being written again unchanged.
            let again = decode(&encode(&snapshot, protection, 1), protection).expect("a re-encoded snapshot decodes");
            assert_eq!(view(&again), view(&snapshot));
        }
    }
    if let Ok(input) = SnapshotInput::arbitrary(&mut Unstructured::new(data)) {
        round_trip(input);
    }
});

/// The verdict the header alone dictates, stated independently of `decode`: `None` when the
/// header is acceptable and only the body (tag, JSON) decides.
fn header_verdict(data: &[u8], encrypted: bool) -> Option<DecodeError> {
    if data.len() < 8 {
        return Some(DecodeError::Truncated(data.len()));
    }
    if &data[..8] != b"TOKENRLY" {
        return Some(DecodeError::NotACacheFile);
    }
    if data.len() < HEADER_LEN {
        return Some(DecodeError::Truncated(data.len()));
    }
    if data[8] != VERSION {
        return Some(DecodeError::UnknownVersion(data[8]));
    }
    match (data[9], encrypted) {
        (0, true) => Some(DecodeError::UnexpectedPlaintext),
        (0, false) => None,
        (1, false) => Some(DecodeError::NoKey),
        (1, true) if data[10..18] != KEY_ID[..] => Some(DecodeError::WrongKey),
        (1, true) => None,
        (other, _) => Some(DecodeError::UnknownProtection(other)),
    }
}

fn check_header_verdict(data: &[u8], encrypted: bool, result: &Result<Snapshot, DecodeError>) {
    match (header_verdict(data, encrypted), result) {
        (Some(expected), Err(actual)) => assert_eq!(&expected, actual),
        (Some(expected), Ok(_)) => panic!("decoded a file whose header says {expected:?}"),
        (None, Ok(_)) => {}
        // Past the header only the body can be wrong: a bad tag, or a bad payload.
        (None, Err(DecodeError::BadPayload(_))) => {}
        (None, Err(DecodeError::Tampered)) if encrypted => {}
        (None, Err(other)) => panic!("header is fine but decode said {other:?}"),
    }
}

/// A snapshot described by the fuzzer.
#[derive(Arbitrary, Debug)]
struct SnapshotInput {
    written_at: u64,
    tokens: Vec<TokenInput>,
    accounts: Vec<AccountInput>,
}

#[derive(Arbitrary, Debug)]
struct TokenInput {
    identity: String,
    client_id: String,
    resource: String,
    credential: String,
    refresh_on: u64,
    token: String,
    expires_on: u64,
    not_before: u64,
    ext_expires_on: u64,
    upstream_refresh_on: Option<u64>,
}

#[derive(Arbitrary, Debug)]
struct AccountInput {
    home_account_id: String,
    client_id: String,
    tenant_id: String,
    refresh_token: String,
    updated_at: u64,
}

fn round_trip(input: SnapshotInput) {
    let snapshot = Snapshot {
        tokens: input
            .tokens
            .into_iter()
            .map(|t| PersistedToken {
                identity: t.identity,
                client_id: t.client_id,
                resource: t.resource,
                credential: t.credential,
                refresh_on: t.refresh_on,
                token: AccessToken {
                    token: Secret::new(t.token),
                    expires_on: t.expires_on,
                    not_before: t.not_before,
                    ext_expires_on: t.ext_expires_on,
                    refresh_on: t.upstream_refresh_on,
                },
            })
            .collect(),
        accounts: input
            .accounts
            .into_iter()
            .map(|a| PersistedAccount {
                home_account_id: a.home_account_id,
                client_id: a.client_id,
                tenant_id: a.tenant_id,
                refresh_token: Secret::new(a.refresh_token),
                updated_at: a.updated_at,
            })
            .collect(),
    };

    let sealed = encode(&snapshot, &ENCRYPTED, input.written_at);
    assert_eq!(view(&decode(&sealed, &ENCRYPTED).expect("own encrypted file decodes")), view(&snapshot));
    assert_eq!(decode(&sealed, &OTHER_KEY).err(), Some(DecodeError::WrongKey));
    assert_eq!(decode(&sealed, &Protection::Plaintext).err(), Some(DecodeError::NoKey));
    // Secrets never show in an encrypted file. Short ones could match ciphertext by chance.
    let body = &sealed[HEADER_LEN..];
    let secrets = snapshot.tokens.iter().map(|t| t.token.token.expose());
    for secret in secrets.chain(snapshot.accounts.iter().map(|a| a.refresh_token.expose())) {
        if secret.len() >= 12 {
            assert!(!body.windows(secret.len()).any(|w| w == secret.as_bytes()), "a secret is readable");
        }
    }

    let plain = encode(&snapshot, &Protection::Plaintext, input.written_at);
    assert_eq!(view(&decode(&plain, &Protection::Plaintext).expect("own plaintext file decodes")), view(&snapshot));
    assert_eq!(decode(&plain, &ENCRYPTED).err(), Some(DecodeError::UnexpectedPlaintext));
}

/// Every field of a token, secrets included, for comparison (`Secret`'s `Debug` redacts).
type TokenView = (String, String, String, String, u64, String, u64, u64, u64, Option<u64>);
type AccountView = (String, String, String, String, u64);

fn view(snapshot: &Snapshot) -> (Vec<TokenView>, Vec<AccountView>) {
    let tokens = snapshot
        .tokens
        .iter()
        .map(|t| {
            (
                t.identity.clone(),
                t.client_id.clone(),
                t.resource.clone(),
                t.credential.clone(),
                t.refresh_on,
                t.token.token.expose().to_owned(),
                t.token.expires_on,
                t.token.not_before,
                t.token.ext_expires_on,
                t.token.refresh_on,
            )
        })
        .collect();
    let accounts = snapshot
        .accounts
        .iter()
        .map(|a| {
            (
                a.home_account_id.clone(),
                a.client_id.clone(),
                a.tenant_id.clone(),
                a.refresh_token.expose().to_owned(),
                a.updated_at,
            )
        })
        .collect();
    (tokens, accounts)
}
