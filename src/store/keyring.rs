//! The cache file's key kept in the OS keyring, generated on first use.
//!
//! Built with the `keyring` cargo feature (on by default): keyring-core with the kernel
//! keyutils store on Linux (docs/protocols.md#kernel-keyring). keyutils keeps keys in memory only and
//! links them into the user's persistent keyring, so the key survives restarts of tokenrelay
//! but not a reboot; after one, the old file cannot be decrypted, is moved aside, and the
//! cache starts empty. A container's seccomp profile usually blocks keyutils; there the key
//! must come from `key_file`. Without the feature every call reports that no keyring exists.

/// What the keyring is called in logs.
pub const DESCRIPTION: &str = "kernel keyutils keyring";

/// The keyring service name of tokenrelay's entries.
#[cfg(all(feature = "keyring", target_os = "linux"))]
const SERVICE: &str = "tokenrelay";

/// The 32-byte key of the cache called `name`, created (random) when the keyring has none.
/// The error says why the keyring cannot be used; it never contains key material.
#[cfg(all(feature = "keyring", target_os = "linux"))]
pub fn cache_key(name: &str) -> Result<[u8; 32], String> {
    use aws_lc_rs::rand::{SecureRandom, SystemRandom};
    use keyring_core::{CredentialStore, Entry, Error};

    let store: std::sync::Arc<CredentialStore> =
        linux_keyutils_keyring_store::Store::new().map_err(|e| describe(&e))?;
    let entry = Entry::new_in_store(&store, SERVICE, &format!("{name}/cache-key")).map_err(|e| describe(&e))?;
    match entry.get_secret() {
        Ok(bytes) => return to_key(&bytes),
        Err(Error::NoEntry) => {}
        Err(error) => return Err(describe(&error)),
    }
    let mut key = [0u8; 32];
    SystemRandom::new().fill(&mut key).map_err(|_| "no randomness for a new key".to_owned())?;
    entry.set_secret(&key).map_err(|e| describe(&e))?;
    // Read it back: keyutils can add a key and then refuse to link it where a later process
    // would find it (docs/protocols.md#kernel-keyring), which would lose the key at exit.
    let stored = entry.get_secret().map_err(|e| describe(&e))?;
    if stored != key {
        return Err("the keyring did not keep the new key".to_owned());
    }
    tracing::info!(name, "generated the token cache's encryption key and stored it in the {DESCRIPTION}");
    Ok(key)
}

/// Without the `keyring` feature (or off Linux) there is no keyring.
#[cfg(not(all(feature = "keyring", target_os = "linux")))]
pub fn cache_key(_name: &str) -> Result<[u8; 32], String> {
    Err(if cfg!(feature = "keyring") {
        "no keyring store is wired up for this platform".to_owned()
    } else {
        "this build has no keyring support (built without the `keyring` feature)".to_owned()
    })
}

#[cfg(all(feature = "keyring", target_os = "linux"))]
fn to_key(bytes: &[u8]) -> Result<[u8; 32], String> {
    <[u8; 32]>::try_from(bytes).map_err(|_| {
        format!("the keyring entry holds {} bytes, not a 32-byte key; remove it to start afresh", bytes.len())
    })
}

/// A keyring error in words. Some variants carry the secret's bytes (`BadEncoding`,
/// `BadDataFormat`), so only the variants' meaning is printed, never their payload.
#[cfg(all(feature = "keyring", target_os = "linux"))]
fn describe(error: &keyring_core::Error) -> String {
    use keyring_core::Error;
    match error {
        Error::PlatformFailure(e) => format!("keyring failure: {e}"),
        Error::NoStorageAccess(e) => format!("no access to the keyring: {e}"),
        Error::NoEntry => "no such keyring entry".to_owned(),
        Error::BadEncoding(_) | Error::BadDataFormat(..) => {
            "the keyring entry is not in the expected format".to_owned()
        }
        Error::BadStoreFormat(e) => format!("the keyring is in an unexpected format: {e}"),
        Error::TooLong(what, limit) => format!("{what} is longer than the keyring allows ({limit})"),
        Error::Invalid(what, why) => format!("invalid {what}: {why}"),
        Error::Ambiguous(_) => "more than one keyring entry matches".to_owned(),
        Error::NoDefaultStore => "no keyring store is configured".to_owned(),
        Error::NotSupportedByStore(what) => format!("the keyring does not support {what}"),
        _ => "keyring error".to_owned(),
    }
}
