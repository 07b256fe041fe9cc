//! The on-disk format of the persistent cache: a fixed header, then the payload, encrypted
//! with AES-256-GCM or (only when the operator allowed it) in plaintext.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "TOKENRLY"
//!      8     1  format version (1)
//!      9     1  protection: 0 plaintext, 1 AES-256-GCM
//!     10     8  key id: first 8 bytes of SHA-256("tokenrelay cache key" || key); zero in plaintext
//!     18    12  nonce, fresh and random for every write; zero in plaintext
//!     30     -  AES-256-GCM(payload) || 16-byte tag, with bytes 0..30 as associated data;
//!               or the payload itself in plaintext
//! ```
//!
//! The payload is JSON ([`Payload`]). The header is authenticated, so a file whose version or
//! key id was edited fails to decrypt. The key id lets a reader tell "encrypted with another
//! key" from "damaged" without trying to decrypt; it reveals nothing about a random key.
//! A later release that changes the layout bumps the version and keeps a reader for 1.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use super::{PersistedAccount, PersistedToken, Snapshot};
use crate::credential::AccessToken;
use crate::secret::Secret;

/// First bytes of every cache file.
const MAGIC: &[u8; 8] = b"TOKENRLY";
/// The version this build writes and the newest it reads.
pub const VERSION: u8 = 1;
const PLAINTEXT: u8 = 0;
const AES_256_GCM_ID: u8 = 1;
const KEY_ID_LEN: usize = 8;
/// Length of the header, which is also the associated data of the cipher.
pub const HEADER_LEN: usize = 8 + 1 + 1 + KEY_ID_LEN + NONCE_LEN;

/// How the payload is protected.
pub enum Protection {
    /// AES-256-GCM with this key.
    Encrypted(Cipher),
    /// No encryption: only with `allow_unencrypted_storage = true`.
    Plaintext,
}

/// An AES-256-GCM key and its id.
pub struct Cipher {
    key: LessSafeKey,
    key_id: [u8; KEY_ID_LEN],
}

impl Cipher {
    /// A cipher for a 32-byte key.
    pub fn new(key: &[u8; 32]) -> Self {
        let unbound = UnboundKey::new(&AES_256_GCM, key).expect("AES-256-GCM takes exactly the 32 bytes given");
        Self { key: LessSafeKey::new(unbound), key_id: key_id(key) }
    }
}

/// The id written into the header for `key`.
fn key_id(key: &[u8; 32]) -> [u8; KEY_ID_LEN] {
    let mut context = digest::Context::new(&digest::SHA256);
    context.update(b"tokenrelay cache key");
    context.update(key);
    let digest = context.finish();
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&digest.as_ref()[..KEY_ID_LEN]);
    id
}

/// Why a file could not be read. Each message says what was found, never file contents.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than the header (an interrupted copy, an empty file).
    #[error("truncated: {0} bytes, shorter than the {HEADER_LEN}-byte header")]
    Truncated(usize),
    /// Not a tokenrelay cache file at all.
    #[error("not a tokenrelay cache file (unknown magic bytes)")]
    NotACacheFile,
    /// Written by a newer release (or damaged in the version byte).
    #[error(
        "format version {0} is unknown to this release (it reads version {VERSION}); was it written by a newer tokenrelay?"
    )]
    UnknownVersion(u8),
    /// The protection byte is neither plaintext nor AES-256-GCM.
    #[error("unknown protection scheme {0}")]
    UnknownProtection(u8),
    /// Encrypted with a key other than the configured one.
    #[error("encrypted with a different key than the one configured")]
    WrongKey,
    /// Encrypted, but this process has no key (plaintext mode).
    #[error("encrypted, but no key is configured (plaintext mode)")]
    NoKey,
    /// Plaintext, but this process expects an encrypted file. Refused so nobody can slip
    /// tokens in by writing a plaintext file.
    #[error("unencrypted, but encryption is configured; an unencrypted file is not trusted")]
    UnexpectedPlaintext,
    /// The authentication tag does not match: the file was truncated, damaged or edited.
    #[error("does not decrypt: truncated, damaged or tampered with")]
    Tampered,
    /// Decrypted (or plaintext) but not a payload this release understands.
    #[error("the contents are damaged: {0}")]
    BadPayload(String),
}

/// Serialises and protects a snapshot.
pub fn encode(snapshot: &Snapshot, protection: &Protection, written_at: u64) -> Vec<u8> {
    let payload = Payload {
        written_at,
        writer: concat!("tokenrelay ", env!("CARGO_PKG_VERSION")).to_owned(),
        tokens: snapshot.tokens.iter().map(StoredToken::from_token).collect(),
        accounts: snapshot.accounts.iter().map(StoredAccount::from_account).collect(),
    };
    let mut body = serde_json::to_vec(&payload).expect("a payload of strings and integers always serialises");
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + AES_256_GCM.tag_len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    match protection {
        Protection::Plaintext => {
            out.push(PLAINTEXT);
            out.extend_from_slice(&[0u8; KEY_ID_LEN + NONCE_LEN]);
            out.append(&mut body);
        }
        Protection::Encrypted(cipher) => {
            let mut nonce = [0u8; NONCE_LEN];
            // A 96-bit random nonce per write; a cache file is rewritten at most a few times a
            // minute, far below the 2^32 messages per key where random nonces get risky.
            SystemRandom::new().fill(&mut nonce).expect("the system random source works");
            out.push(AES_256_GCM_ID);
            out.extend_from_slice(&cipher.key_id);
            out.extend_from_slice(&nonce);
            let aad = Aad::from(out[..HEADER_LEN].to_vec());
            cipher
                .key
                .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), aad, &mut body)
                .expect("AES-256-GCM sealing of an in-memory buffer cannot fail");
            out.append(&mut body);
        }
    }
    out
}

/// Checks, decrypts and parses a file's bytes.
pub fn decode(bytes: &[u8], protection: &Protection) -> Result<Snapshot, DecodeError> {
    if bytes.len() < MAGIC.len() {
        return Err(DecodeError::Truncated(bytes.len()));
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err(DecodeError::NotACacheFile);
    }
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::Truncated(bytes.len()));
    }
    let version = bytes[8];
    if version != VERSION {
        return Err(DecodeError::UnknownVersion(version));
    }
    let (header, body) = bytes.split_at(HEADER_LEN);
    let plaintext = match (header[9], protection) {
        (PLAINTEXT, Protection::Plaintext) => body.to_vec(),
        (PLAINTEXT, Protection::Encrypted(_)) => return Err(DecodeError::UnexpectedPlaintext),
        (AES_256_GCM_ID, Protection::Plaintext) => return Err(DecodeError::NoKey),
        (AES_256_GCM_ID, Protection::Encrypted(cipher)) => {
            if header[10..10 + KEY_ID_LEN] != cipher.key_id {
                return Err(DecodeError::WrongKey);
            }
            let mut nonce = [0u8; NONCE_LEN];
            nonce.copy_from_slice(&header[10 + KEY_ID_LEN..HEADER_LEN]);
            let mut sealed = body.to_vec();
            let opened = cipher
                .key
                .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(header), &mut sealed)
                .map_err(|_| DecodeError::Tampered)?;
            opened.to_vec()
        }
        (other, _) => return Err(DecodeError::UnknownProtection(other)),
    };
    // serde_json's messages name positions and expected types, never the input's text.
    let payload: Payload = serde_json::from_slice(&plaintext).map_err(|e| DecodeError::BadPayload(e.to_string()))?;
    Ok(Snapshot {
        tokens: payload.tokens.into_iter().map(StoredToken::into_token).collect(),
        accounts: payload.accounts.into_iter().map(StoredAccount::into_account).collect(),
    })
}

/// What the file holds once decrypted.
#[derive(Deserialize, Serialize)]
struct Payload {
    /// When it was written (epoch seconds), for operators.
    #[serde(default)]
    written_at: u64,
    /// Which release wrote it.
    #[serde(default)]
    writer: String,
    #[serde(default)]
    tokens: Vec<StoredToken>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    accounts: Vec<StoredAccount>,
}

/// A refresh token as serialised; like [`StoredToken`], the only place it is a plain string.
#[derive(Deserialize, Serialize)]
struct StoredAccount {
    home_account_id: String,
    client_id: String,
    tenant_id: String,
    refresh_token: String,
    updated_at: u64,
}

impl StoredAccount {
    fn from_account(account: &PersistedAccount) -> Self {
        Self {
            home_account_id: account.home_account_id.clone(),
            client_id: account.client_id.clone(),
            tenant_id: account.tenant_id.clone(),
            refresh_token: account.refresh_token.expose().to_owned(),
            updated_at: account.updated_at,
        }
    }

    fn into_account(self) -> PersistedAccount {
        PersistedAccount {
            home_account_id: self.home_account_id,
            client_id: self.client_id,
            tenant_id: self.tenant_id,
            refresh_token: Secret::new(self.refresh_token),
            updated_at: self.updated_at,
        }
    }
}

/// One token as serialised. Only this private type ever holds the plaintext token as a plain
/// `String`, and only between `encode`/`decode` and the cipher.
#[derive(Deserialize, Serialize)]
struct StoredToken {
    identity: String,
    client_id: String,
    resource: String,
    #[serde(default)]
    credential: String,
    access_token: String,
    expires_on: u64,
    #[serde(default)]
    not_before: u64,
    #[serde(default)]
    ext_expires_on: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    upstream_refresh_on: Option<u64>,
    #[serde(default)]
    refresh_on: u64,
}

impl StoredToken {
    fn from_token(token: &PersistedToken) -> Self {
        Self {
            identity: token.identity.clone(),
            client_id: token.client_id.clone(),
            resource: token.resource.clone(),
            credential: token.credential.clone(),
            access_token: token.token.token.expose().to_owned(),
            expires_on: token.token.expires_on,
            not_before: token.token.not_before,
            ext_expires_on: token.token.ext_expires_on,
            upstream_refresh_on: token.token.refresh_on,
            refresh_on: token.refresh_on,
        }
    }

    fn into_token(self) -> PersistedToken {
        PersistedToken {
            identity: self.identity,
            client_id: self.client_id,
            resource: self.resource,
            credential: self.credential,
            refresh_on: self.refresh_on,
            token: AccessToken {
                token: Secret::new(self.access_token),
                expires_on: self.expires_on,
                not_before: self.not_before,
                ext_expires_on: self.ext_expires_on,
                refresh_on: self.upstream_refresh_on,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        Snapshot {
            tokens: vec![super::super::tests::token("app", "https://vault.azure.net", 5000, "secret-token-abc")],
            accounts: vec![PersistedAccount {
                home_account_id: "oid.tid".into(),
                client_id: "c".into(),
                tenant_id: "tid".into(),
                refresh_token: Secret::new("refresh-token-xyz"),
                updated_at: 1,
            }],
        }
    }

    fn cipher(byte: u8) -> Protection {
        Protection::Encrypted(Cipher::new(&[byte; 32]))
    }

    #[test]
    fn round_trips_encrypted_and_hides_the_token() {
        let bytes = encode(&snapshot(), &cipher(7), 1);
        assert!(!bytes.windows(16).any(|w| w == b"secret-token-abc"), "the token is not readable in the bytes");
        assert!(!bytes.windows(17).any(|w| w == b"refresh-token-xyz"), "nor is the refresh token");
        assert!(!bytes.windows(5).any(|w| w == b"vault"), "nor is anything else of the payload");
        let back = decode(&bytes, &cipher(7)).unwrap();
        assert_eq!(back.tokens.len(), 1);
        assert_eq!(back.tokens[0].token.token.expose(), "secret-token-abc");
        assert_eq!(back.tokens[0].token.expires_on, 5000);
        assert_eq!(back.tokens[0].refresh_on, 4000);
        assert_eq!(back.account("OID.TID", "c").unwrap().refresh_token.expose(), "refresh-token-xyz");
    }

    #[test]
    fn every_write_uses_a_fresh_nonce() {
        let a = encode(&snapshot(), &cipher(7), 1);
        let b = encode(&snapshot(), &cipher(7), 1);
        assert_ne!(a[18..30], b[18..30]);
        assert_ne!(a[HEADER_LEN..], b[HEADER_LEN..]);
    }

    #[test]
    fn plaintext_round_trips_only_in_plaintext_mode() {
        let bytes = encode(&snapshot(), &Protection::Plaintext, 1);
        assert!(bytes.windows(16).any(|w| w == b"secret-token-abc"));
        assert_eq!(decode(&bytes, &Protection::Plaintext).unwrap().tokens.len(), 1);
        assert_eq!(decode(&bytes, &cipher(7)).err(), Some(DecodeError::UnexpectedPlaintext));
        assert_eq!(decode(&encode(&snapshot(), &cipher(7), 1), &Protection::Plaintext).err(), Some(DecodeError::NoKey));
    }

    #[test]
    fn names_each_kind_of_bad_file() {
        let good = encode(&snapshot(), &cipher(7), 1);
        assert_eq!(decode(&good, &cipher(8)).err(), Some(DecodeError::WrongKey));
        assert_eq!(decode(&good[..good.len() - 10], &cipher(7)).err(), Some(DecodeError::Tampered));
        assert_eq!(decode(&good[..20], &cipher(7)).err(), Some(DecodeError::Truncated(20)));
        assert_eq!(decode(b"", &cipher(7)).err(), Some(DecodeError::Truncated(0)));
        assert_eq!(decode(b"{\"tokens\":[]}", &cipher(7)).err(), Some(DecodeError::NotACacheFile));
        let mut future = good.clone();
        future[8] = 2;
        assert_eq!(decode(&future, &cipher(7)).err(), Some(DecodeError::UnknownVersion(2)));
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(decode(&flipped, &cipher(7)).err(), Some(DecodeError::Tampered));
        let mut plain = encode(&snapshot(), &Protection::Plaintext, 1);
        plain.truncate(plain.len() - 3);
        assert!(matches!(decode(&plain, &Protection::Plaintext), Err(DecodeError::BadPayload(_))));
    }

    #[test]
    fn error_messages_never_echo_contents() {
        let mut plain = encode(&snapshot(), &Protection::Plaintext, 1);
        plain.truncate(plain.len() - 3);
        let message = decode(&plain, &Protection::Plaintext).unwrap_err().to_string();
        assert!(!message.contains("secret-token-abc"), "{message}");
    }
}
