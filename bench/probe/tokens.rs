//! Tokens of realistic size and the encrypted store file the relay loads at start.
//!
//! Entra access tokens are RS256 JWTs of 1.3 to 2 KB; the development issuer's are ~950 bytes,
//! which would flatter the memory figures, so every probe uses tokens of [`TOKEN_BYTES`] made
//! of the same parts: a header, a claim set and a 2048-bit signature, base64url-encoded, with
//! random content so no two tokens share bytes.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tokenrelay::secret::Secret;
use tokenrelay::store::format;
use tokenrelay::store::{Cipher, FileStore, Held, OnUnreadable, PersistedToken, Protection, Snapshot, Store};
use tokenrelay::token::AccessToken;

/// Length of every token the probes hand out or persist.
pub const TOKEN_BYTES: usize = 1500;
/// The identity every probe configures, and the one persisted tokens belong to (persisted
/// tokens are matched to identities by client id).
pub const CLIENT_ID: &str = "3f1b2c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d";
pub const TENANT_ID: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

/// The resource of the `index`-th distinct token.
pub fn resource(index: usize) -> String {
    format!("https://r{index}.example")
}

/// A JWT-shaped token for `audience` of exactly [`TOKEN_BYTES`] bytes.
pub fn access_token(audience: &str, issued_at: u64) -> String {
    let kid = random_b64(20);
    let header = encode(format!(r#"{{"typ":"JWT","alg":"RS256","x5t":"{kid}","kid":"{kid}"}}"#).as_bytes());
    let signature = random_b64(256);
    let claims = |filler: &str| {
        format!(
            r#"{{"aud":"{audience}","iss":"https://sts.windows.net/{TENANT_ID}/","iat":{issued_at},"nbf":{issued_at},"exp":{exp},"aio":"{aio}","appid":"{CLIENT_ID}","appidacr":"1","idp":"https://sts.windows.net/{TENANT_ID}/","idtyp":"app","oid":"{oid}","rh":"{rh}","sub":"{oid}","tid":"{TENANT_ID}","uti":"{uti}","ver":"1.0","xms_ftd":"{filler}"}}"#,
            exp = issued_at + 3599,
            aio = random_b64(90),
            oid = uuid(),
            rh = random_b64(45),
            uti = random_b64(16),
        )
    };
    // Size the filler claim so the whole token lands on TOKEN_BYTES (base64 of n bytes is
    // ceil(4n/3) characters without padding).
    let payload_chars = TOKEN_BYTES - header.len() - signature.len() - 2;
    let without_filler = claims("").len();
    let mut filler_len = (payload_chars * 3 / 4).saturating_sub(without_filler);
    let mut payload = encode(claims(&random_text(filler_len)).as_bytes());
    while header.len() + payload.len() + signature.len() + 2 < TOKEN_BYTES {
        filler_len += 1;
        payload = encode(claims(&random_text(filler_len)).as_bytes());
    }
    let mut token = format!("{header}.{payload}.{signature}");
    // At most one character over: the signature loses it (nothing verifies these tokens).
    token.truncate(TOKEN_BYTES);
    token
}

/// `count` persisted tokens for [`CLIENT_ID`], one per [`resource`], all with the same
/// `refresh_on` and `expires_on`.
pub fn persisted(count: usize, issued_at: u64, refresh_on: u64, expires_on: u64) -> Vec<PersistedToken> {
    (0..count)
        .map(|i| {
            let resource = resource(i);
            PersistedToken {
                identity: "app".into(),
                client_id: CLIENT_ID.into(),
                token: AccessToken {
                    token: Secret::new(access_token(&resource, issued_at)),
                    expires_on,
                    not_before: issued_at,
                    ext_expires_on: expires_on,
                    refresh_on: None,
                },
                resource,
                credential: "client_secret".into(),
                refresh_on,
                in_use: true,
                written_by: 0,
            }
        })
        .collect()
}

/// An encrypted store file and its key file, in `dir`, written with the relay's own store
/// code: the cache file a relay of this build leaves (format version 2), or with
/// `BENCH_STORE_V1=1` a version-1 file as earlier releases wrote it (which this build migrates
/// at its first save, and which a build from before the journal can read).
pub struct StoreFile {
    pub path: PathBuf,
    pub key_file: PathBuf,
    key: [u8; 32],
}

impl StoreFile {
    /// Writes `tokens` to `dir/tokens.cache`, encrypted with a fresh key kept in `dir/key`
    /// (hex, one of the forms `key_file` accepts).
    pub fn write(dir: &Path, tokens: Vec<PersistedToken>, now: u64) -> Self {
        let key: [u8; 32] = std::array::from_fn(|_| fastrand::u8(..));
        let key_file = dir.join("key");
        std::fs::write(&key_file, key.iter().map(|b| format!("{b:02x}")).collect::<String>()).unwrap();
        let path = dir.join("tokens.cache");
        if std::env::var_os("BENCH_STORE_V1").is_some() {
            let bytes = format::encode(&Snapshot { tokens, accounts: Vec::new() }, &Self::protection(&key), now);
            std::fs::write(&path, bytes).unwrap();
        } else {
            let store = FileStore::new(&path, Self::protection(&key), String::new());
            store.save(&Held::from_tokens(tokens, 0, usize::MAX), now).expect("the store is written");
        }
        Self { path, key_file, key }
    }

    /// What the store holds now (after the relay wrote to it, say): the file and its
    /// journal, read as the relay reads them.
    pub fn read(&self) -> Vec<PersistedToken> {
        let store = FileStore::new(&self.path, Self::protection(&self.key), String::new());
        store.load(OnUnreadable::Report).expect("the store reads with its key").tokens
    }

    /// The cache file and its journal as they are now: their size in bytes together, and the
    /// latest time either was modified.
    pub fn on_disk(&self) -> (u64, Option<std::time::SystemTime>) {
        let journal = PathBuf::from(format!("{}.journal", self.path.display()));
        let files: Vec<_> = [&self.path, &journal].into_iter().filter_map(|p| std::fs::metadata(p).ok()).collect();
        (files.iter().map(|m| m.len()).sum(), files.iter().filter_map(|m| m.modified().ok()).max())
    }

    /// The `[cache.persistence]` table that makes the relay load this file.
    pub fn config(&self) -> String {
        format!(
            "[cache.persistence]\nenabled = true\nbackend = \"file\"\npath = \"{}\"\nkey_file = \"{}\"\n",
            self.path.display(),
            self.key_file.display()
        )
    }

    fn protection(key: &[u8; 32]) -> Protection {
        Protection::Encrypted(Cipher::new(key))
    }
}

fn encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn random_b64(bytes: usize) -> String {
    encode(&(0..bytes).map(|_| fastrand::u8(..)).collect::<Vec<_>>())
}

fn random_text(len: usize) -> String {
    (0..len).map(|_| fastrand::alphanumeric()).collect()
}

fn uuid() -> String {
    let hex: String = (0..32).map(|_| char::from_digit(fastrand::u32(..16), 16).unwrap()).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}
