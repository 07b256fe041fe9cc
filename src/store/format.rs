//! Format version 1 of the persistent cache, one sealed document: a fixed header, then the
//! payload, encrypted with AES-256-GCM or (only when the operator allowed it) in plaintext.
//! Releases since the journal ([`super::journal`]) write version 2 (the record layout of
//! `src/store/records.rs`) and read version 1 to migrate it; [`encode`] still writes version 1,
//! for tools and tests that plant a file of an earlier release.
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
//! Version 2 keeps the magic, version, protection and key id bytes where version 1 has them.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

use super::{HeldIdentity, HeldToken, PersistedAccount, PersistedToken, Snapshot};
use crate::secret::Secret;
use crate::token::AccessToken;
use zeroize::Zeroize;

/// First bytes of every cache file.
pub(super) const MAGIC: &[u8; 8] = b"TOKENRLY";
/// The version of the one-document layout ([`encode`], [`decode`]).
pub const VERSION: u8 = 1;
pub(super) const PLAINTEXT: u8 = 0;
pub(super) const AES_256_GCM_ID: u8 = 1;
pub(super) const KEY_ID_LEN: usize = 8;
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
    /// The key itself, from which each version-2 file's own key is derived.
    secret: [u8; 32],
}

impl Cipher {
    /// A cipher for a 32-byte key.
    pub fn new(key: &[u8; 32]) -> Self {
        let unbound = UnboundKey::new(&AES_256_GCM, key).expect("AES-256-GCM takes exactly the 32 bytes given");
        Self { key: LessSafeKey::new(unbound), key_id: key_id(key), secret: *key }
    }

    /// The id written into headers.
    pub(super) fn key_id(&self) -> &[u8; KEY_ID_LEN] {
        &self.key_id
    }

    /// The key, for deriving a file's own key.
    pub(super) fn secret(&self) -> &[u8; 32] {
        &self.secret
    }
}

impl Drop for Cipher {
    fn drop(&mut self) {
        self.secret.fill(0);
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
        "format version {0} is unknown to this release (it reads versions 1 and 2); was it written by a newer tokenrelay?"
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
        writer: Cow::Borrowed(WRITER),
        tokens: snapshot.tokens.iter().map(StoredToken::from_token).collect(),
        accounts: snapshot.accounts.iter().map(StoredAccount::from_account).collect(),
    };
    let mut out = Vec::new();
    seal(&payload, protection, &mut out);
    out
}

/// The release that writes a file, recorded in it for operators.
const WRITER: &str = concat!("tokenrelay ", env!("CARGO_PKG_VERSION"));

/// Serialises and protects a payload into `out` (cleared first; its allocation is reused):
/// the header, then the JSON written straight from the borrowed strings, sealed in place,
/// then the tag. The writer rewrites the whole store every batch, and a store holds every
/// token in full, so every extra copy (owned clones of every token, a
/// separate JSON buffer, a second buffer for header + ciphertext) would allocate and free the
/// store's size again per write.
fn seal(payload: &Payload<'_>, protection: &Protection, out: &mut Vec<u8>) {
    out.clear();
    out.reserve(HEADER_LEN + estimated_len(payload) + AES_256_GCM.tag_len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    let mut nonce = [0u8; NONCE_LEN];
    match protection {
        Protection::Plaintext => {
            out.push(PLAINTEXT);
            out.extend_from_slice(&[0u8; KEY_ID_LEN + NONCE_LEN]);
        }
        Protection::Encrypted(cipher) => {
            // A 96-bit random nonce per write; a cache file is rewritten at most a few times a
            // minute, far below the 2^32 messages per key where random nonces get risky.
            SystemRandom::new().fill(&mut nonce).expect("the system random source works");
            out.push(AES_256_GCM_ID);
            out.extend_from_slice(&cipher.key_id);
            out.extend_from_slice(&nonce);
        }
    }
    serde_json::to_writer(&mut *out, payload).expect("a payload of strings and integers always serialises");
    if let Protection::Encrypted(cipher) = protection {
        let (header, body) = out.split_at_mut(HEADER_LEN);
        let tag = cipher
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&*header), body)
            .expect("AES-256-GCM sealing of an in-memory buffer cannot fail");
        out.extend_from_slice(tag.as_ref());
    }
}

/// A slight overestimate of the JSON's length, so that the buffer is allocated once instead
/// of doubling (and copying) its way up to the store's size. Besides its strings, a token's JSON is
/// about 200 bytes of member names, punctuation and numbers; strings needing escapes (none in
/// practice) only make the buffer grow once more.
fn estimated_len(payload: &Payload<'_>) -> usize {
    let tokens: usize = payload
        .tokens
        .iter()
        .map(|t| {
            256 + t.identity.len() + t.client_id.len() + t.resource.len() + t.credential.len() + t.access_token.len()
        })
        .sum();
    let accounts: usize = payload
        .accounts
        .iter()
        .map(|a| 256 + a.home_account_id.len() + a.client_id.len() + a.tenant_id.len() + a.refresh_token.len())
        .sum();
    256 + payload.writer.len() + tokens + accounts
}

/// Checks, decrypts and parses a file's bytes. Copies them once to decrypt; a caller that owns
/// the bytes uses [`decode_in_place`].
pub fn decode(bytes: &[u8], protection: &Protection) -> Result<Snapshot, DecodeError> {
    let mut copy = bytes.to_vec();
    let decoded = decode_in_place(&mut copy, protection);
    // Decrypted, the copy holds every token in plaintext, as `FileStore`'s buffers do.
    copy.zeroize();
    decoded
}

/// Checks, decrypts and parses a file's bytes without copying them: the ciphertext is
/// decrypted where it lies and the JSON parsed from that slice, so loading a store allocates
/// the file's bytes once rather than once for the ciphertext, once for the plaintext and
/// once for the JSON. Afterwards `bytes` holds the
/// plaintext (or, if the tag did not match, unspecified bytes); the caller drops it.
pub fn decode_in_place(bytes: &mut [u8], protection: &Protection) -> Result<Snapshot, DecodeError> {
    Ok(Contents::open(bytes, protection)?.into_snapshot())
}

/// A decrypted version-1 file whose strings still lie in its buffer.
pub struct Contents<'a>(Payload<'a>);

impl<'a> Contents<'a> {
    /// Checks and decrypts `bytes` in place and parses the JSON, borrowing its strings.
    pub fn open(bytes: &'a mut [u8], protection: &Protection) -> Result<Self, DecodeError> {
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
        let (header, body) = bytes.split_at_mut(HEADER_LEN);
        let plaintext: &'a [u8] = match (header[9], protection) {
            (PLAINTEXT, Protection::Plaintext) => body,
            (PLAINTEXT, Protection::Encrypted(_)) => return Err(DecodeError::UnexpectedPlaintext),
            (AES_256_GCM_ID, Protection::Plaintext) => return Err(DecodeError::NoKey),
            (AES_256_GCM_ID, Protection::Encrypted(cipher)) => {
                if header[10..10 + KEY_ID_LEN] != cipher.key_id {
                    return Err(DecodeError::WrongKey);
                }
                let mut nonce = [0u8; NONCE_LEN];
                nonce.copy_from_slice(&header[10 + KEY_ID_LEN..HEADER_LEN]);
                cipher
                    .key
                    .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(&*header), body)
                    .map_err(|_| DecodeError::Tampered)?
            }
            (other, _) => return Err(DecodeError::UnknownProtection(other)),
        };
        // serde_json's messages name positions and expected types, never the input's text.
        serde_json::from_slice(plaintext).map(Self).map_err(|e| DecodeError::BadPayload(e.to_string()))
    }

    /// The tokens as owned values.
    fn into_snapshot(self) -> Snapshot {
        Snapshot {
            tokens: self.0.tokens.into_iter().map(StoredToken::into_token).collect(),
            accounts: self.0.accounts.into_iter().map(StoredAccount::into_account).collect(),
        }
    }
}

/// First bytes of one sealed record ([`seal_record`]): a value of the shared token cache.
const RECORD_MAGIC: &[u8; 4] = b"TRR1";
/// Length of a record's header: magic, key id, nonce.
const RECORD_HEADER_LEN: usize = RECORD_MAGIC.len() + KEY_ID_LEN + NONCE_LEN;

/// Seals one small value with the cache's AEAD, the same AES-256-GCM as the file:
///
/// ```text
/// offset  size  field
///      0     4  magic "TRR1" (record format 1)
///      4     8  key id of the cipher's key (as in the file header)
///     12    12  nonce, fresh and random for every record
///     24     -  AES-256-GCM(plaintext) || 16-byte tag, with `context` || bytes 0..24 as
///               associated data
/// ```
///
/// `context` binds the record to where it is kept (the shared cache passes the entry's name),
/// so a record copied under another name fails to open. Random 96-bit nonces stay far below
/// the 2^32 records per key where they get risky: a fleet writes one record per token fetched.
pub fn seal_record(cipher: &Cipher, context: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new().fill(&mut nonce).expect("the system random source works");
    let mut out = Vec::with_capacity(RECORD_HEADER_LEN + plaintext.len() + AES_256_GCM.tag_len());
    out.extend_from_slice(RECORD_MAGIC);
    out.extend_from_slice(&cipher.key_id);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let aad = [context, &out[..RECORD_HEADER_LEN]].concat();
    let (_, body) = out.split_at_mut(RECORD_HEADER_LEN);
    let tag = cipher
        .key
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&aad[..]), body)
        .expect("AES-256-GCM sealing of an in-memory buffer cannot fail");
    out.extend_from_slice(tag.as_ref());
    out
}

/// Opens a record [`seal_record`] made with the same key and `context`: its plaintext, or
/// why not (`WrongKey` for another key's id, `Tampered` for a record that does not
/// authenticate, including one moved to another context). The plaintext is returned in a
/// buffer the caller clears after use.
pub fn open_record(cipher: &Cipher, context: &[u8], record: &[u8]) -> Result<Vec<u8>, DecodeError> {
    if record.len() < RECORD_HEADER_LEN + AES_256_GCM.tag_len() {
        return Err(DecodeError::Truncated(record.len()));
    }
    if &record[..RECORD_MAGIC.len()] != RECORD_MAGIC {
        return Err(DecodeError::NotACacheFile);
    }
    if record[RECORD_MAGIC.len()..RECORD_MAGIC.len() + KEY_ID_LEN] != cipher.key_id {
        return Err(DecodeError::WrongKey);
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&record[RECORD_MAGIC.len() + KEY_ID_LEN..RECORD_HEADER_LEN]);
    let aad = [context, &record[..RECORD_HEADER_LEN]].concat();
    let mut body = record[RECORD_HEADER_LEN..].to_vec();
    match cipher.key.open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(&aad[..]), &mut body) {
        Ok(plaintext) => {
            let len = plaintext.len();
            body.truncate(len);
            Ok(body)
        }
        Err(_) => {
            body.fill(0);
            Err(DecodeError::Tampered)
        }
    }
}

/// What the file holds once decrypted. Strings borrow from the decrypted buffer when read
/// (JSON strings without escapes, which is all of them in practice) and from the snapshot
/// when written, so neither direction clones a token's strings in between.
#[derive(Deserialize, Serialize)]
struct Payload<'a> {
    /// When it was written (epoch seconds), for operators.
    #[serde(default)]
    written_at: u64,
    /// Which release wrote it.
    #[serde(default, borrow)]
    writer: Cow<'a, str>,
    #[serde(default, borrow)]
    tokens: Vec<StoredToken<'a>>,
    #[serde(default, borrow, skip_serializing_if = "Vec::is_empty")]
    accounts: Vec<StoredAccount<'a>>,
}

/// A refresh token as serialised; like [`StoredToken`], the only place it is a plain string.
#[derive(Deserialize, Serialize)]
pub(super) struct StoredAccount<'a> {
    #[serde(borrow)]
    pub(super) home_account_id: Cow<'a, str>,
    #[serde(borrow)]
    pub(super) client_id: Cow<'a, str>,
    #[serde(borrow)]
    pub(super) tenant_id: Cow<'a, str>,
    #[serde(borrow)]
    pub(super) refresh_token: Cow<'a, str>,
    pub(super) updated_at: u64,
}

impl<'a> StoredAccount<'a> {
    pub(super) fn from_account(account: &'a PersistedAccount) -> Self {
        Self {
            home_account_id: Cow::Borrowed(&account.home_account_id),
            client_id: Cow::Borrowed(&account.client_id),
            tenant_id: Cow::Borrowed(&account.tenant_id),
            refresh_token: Cow::Borrowed(account.refresh_token.expose()),
            updated_at: account.updated_at,
        }
    }

    pub(super) fn into_account(self) -> PersistedAccount {
        PersistedAccount {
            home_account_id: self.home_account_id.into_owned(),
            client_id: self.client_id.into_owned(),
            tenant_id: self.tenant_id.into_owned(),
            refresh_token: Secret::new(self.refresh_token.into_owned()),
            updated_at: self.updated_at,
        }
    }
}

/// One token as serialised. Only this private type ever holds the plaintext token as a plain
/// string, and only between the cipher's buffer and a [`Secret`].
#[derive(Deserialize, Serialize)]
pub(super) struct StoredToken<'a> {
    #[serde(borrow)]
    pub(super) identity: Cow<'a, str>,
    #[serde(borrow)]
    pub(super) client_id: Cow<'a, str>,
    #[serde(borrow)]
    pub(super) resource: Cow<'a, str>,
    #[serde(default, borrow)]
    pub(super) credential: Cow<'a, str>,
    #[serde(borrow)]
    pub(super) access_token: Cow<'a, str>,
    pub(super) expires_on: u64,
    #[serde(default)]
    pub(super) not_before: u64,
    #[serde(default)]
    pub(super) ext_expires_on: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) upstream_refresh_on: Option<u64>,
    #[serde(default)]
    pub(super) refresh_on: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) in_use: bool,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(super) written_by: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

impl<'a> StoredToken<'a> {
    pub(super) fn from_token(token: &'a PersistedToken) -> Self {
        Self {
            identity: Cow::Borrowed(&token.identity),
            client_id: Cow::Borrowed(&token.client_id),
            resource: Cow::Borrowed(&token.resource),
            credential: Cow::Borrowed(&token.credential),
            access_token: Cow::Borrowed(token.token.token.expose()),
            expires_on: token.token.expires_on,
            not_before: token.token.not_before,
            ext_expires_on: token.token.ext_expires_on,
            upstream_refresh_on: token.token.refresh_on,
            refresh_on: token.refresh_on,
            in_use: token.in_use,
            written_by: token.written_by,
        }
    }

    /// A token held in memory by `identity`, borrowed.
    pub(super) fn from_held(
        identity: &'a HeldIdentity,
        resource: &'a str,
        token: &'a dyn HeldToken,
        in_use: bool,
    ) -> Self {
        let access = token.access_token();
        Self {
            identity: Cow::Borrowed(&identity.name),
            client_id: Cow::Borrowed(&identity.client_id),
            resource: Cow::Borrowed(resource),
            credential: Cow::Borrowed(&identity.credential),
            access_token: Cow::Borrowed(access.token.expose()),
            expires_on: access.expires_on,
            not_before: access.not_before,
            ext_expires_on: access.ext_expires_on,
            upstream_refresh_on: access.refresh_on,
            refresh_on: token.refresh_on(),
            in_use,
            written_by: 0,
        }
    }

    /// One allocation per string, from the buffer into the token (serde_json made the same
    /// one when it parsed into `String`s).
    pub(super) fn into_token(self) -> PersistedToken {
        PersistedToken {
            identity: self.identity.into_owned(),
            client_id: self.client_id.into_owned(),
            resource: self.resource.into_owned(),
            credential: self.credential.into_owned(),
            refresh_on: self.refresh_on,
            in_use: self.in_use,
            written_by: self.written_by,
            token: AccessToken {
                token: Secret::new(self.access_token.into_owned()),
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

    /// Files written before the write path borrowed instead of cloning must read the same, and
    /// files written now must read in older releases: member names, order and omissions.
    #[test]
    fn the_json_layout_is_stable() {
        let bytes = encode(&snapshot(), &Protection::Plaintext, 1);
        let expected = concat!(
            r#"{"written_at":1,"writer":"tokenrelay "#,
            env!("CARGO_PKG_VERSION"),
            r#"","tokens":[{"identity":"app","client_id":"app","resource":"https://vault.azure.net","#,
            r#""credential":"client_secret","access_token":"secret-token-abc","expires_on":5000,"not_before":0,"#,
            r#""ext_expires_on":5000,"refresh_on":4000}],"accounts":[{"home_account_id":"oid.tid","client_id":"c","#,
            r#""tenant_id":"tid","refresh_token":"refresh-token-xyz","updated_at":1}]}"#
        );
        assert_eq!(std::str::from_utf8(&bytes[HEADER_LEN..]).unwrap(), expected);
        let mut no_accounts = snapshot();
        no_accounts.accounts.clear();
        no_accounts.tokens[0].token.refresh_on = Some(4500);
        let text = String::from_utf8(encode(&no_accounts, &Protection::Plaintext, 1)[HEADER_LEN..].to_vec()).unwrap();
        assert!(text.contains(r#""ext_expires_on":5000,"upstream_refresh_on":4500,"refresh_on":4000}]}"#), "{text}");
        assert!(!text.contains("accounts"), "{text}");
    }

    #[test]
    fn the_buffer_is_allocated_once_for_realistic_tokens() {
        let value = "t".repeat(1500);
        let tokens =
            (0..100).map(|i| super::super::tests::token("app", &format!("https://r{i}.example"), 5000, &value));
        let snapshot = Snapshot { tokens: tokens.collect(), accounts: Vec::new() };
        let bytes = encode(&snapshot, &cipher(7), 1);
        let payload = Payload {
            written_at: 1,
            writer: Cow::Borrowed(WRITER),
            tokens: snapshot.tokens.iter().map(StoredToken::from_token).collect(),
            accounts: Vec::new(),
        };
        let estimate = HEADER_LEN + estimated_len(&payload) + AES_256_GCM.tag_len();
        assert!(bytes.len() <= estimate, "{} > {estimate}: the estimate is low, the buffer grew", bytes.len());
        assert!(bytes.capacity() <= estimate, "the buffer was reallocated");
        assert_eq!(decode(&bytes, &cipher(7)).unwrap().tokens.len(), 100);
    }

    #[test]
    fn decodes_in_place_and_leaves_no_ciphertext_to_reuse() {
        let mut bytes = encode(&snapshot(), &cipher(7), 1);
        let back = decode_in_place(&mut bytes, &cipher(7)).unwrap();
        assert_eq!(back.tokens[0].token.token.expose(), "secret-token-abc");
        // The buffer now holds the plaintext the caller must drop, not a file to decode again.
        assert_eq!(decode_in_place(&mut bytes, &cipher(7)).err(), Some(DecodeError::Tampered));
        let mut plain = encode(&snapshot(), &Protection::Plaintext, 1);
        assert_eq!(decode_in_place(&mut plain, &Protection::Plaintext).unwrap().accounts.len(), 1);
    }

    #[test]
    fn a_record_opens_only_with_its_key_and_context_and_hides_its_plaintext() {
        let (key, other) = (Cipher::new(&[1u8; 32]), Cipher::new(&[2u8; 32]));
        let sealed = seal_record(&key, b"name-a", b"secret-token-value");
        assert!(!sealed.windows(6).any(|w| w == b"secret"), "the plaintext shows through");
        assert_ne!(sealed, seal_record(&key, b"name-a", b"secret-token-value"), "a fresh nonce per record");
        assert_eq!(open_record(&key, b"name-a", &sealed).unwrap(), b"secret-token-value");
        assert_eq!(open_record(&other, b"name-a", &sealed), Err(DecodeError::WrongKey));
        assert_eq!(open_record(&key, b"name-b", &sealed), Err(DecodeError::Tampered), "moved to another name");
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(open_record(&key, b"name-a", &flipped), Err(DecodeError::Tampered));
        assert_eq!(open_record(&key, b"name-a", &sealed[..20]), Err(DecodeError::Truncated(20)));
        assert_eq!(open_record(&key, b"name-a", &[0u8; 64]), Err(DecodeError::NotACacheFile));
    }

    #[test]
    fn error_messages_never_echo_contents() {
        let mut plain = encode(&snapshot(), &Protection::Plaintext, 1);
        plain.truncate(plain.len() - 3);
        let message = decode(&plain, &Protection::Plaintext).unwrap_err().to_string();
        assert!(!message.contains("secret-token-abc"), "{message}");
    }
}
