//! The cache file's key kept in the OS keyring, generated on first use.
//!
//! Built with the `keyring` cargo feature (on by default), on keyring-core and the keyring
//! family's store of each OS (docs/persistent-cache.md#what-each-option-protects-against):
//!
//! - **Linux**: the kernel keyutils keyring (docs/protocols.md#kernel-keyring). keyutils keeps
//!   keys in memory only and links them into the user's persistent keyring, so the key
//!   survives restarts of tokenrelay but not a reboot; after one, the old file cannot be
//!   decrypted, is moved aside, and the cache starts empty. A container's seccomp profile
//!   usually blocks keyutils; there the key must come from `key_file`.
//! - **Windows**: a generic credential in the user's Windows Credential Manager
//!   (docs/protocols.md#windows-credential-manager), persisted on this machine only.
//! - **macOS**: a generic password in the user's login keychain; built, never run.
//!
//! Without the feature, or on another OS, every call reports that no keyring exists.

/// What the keyring is called in logs.
#[cfg(not(any(windows, target_os = "macos")))]
pub const DESCRIPTION: &str = "kernel keyutils keyring";
#[cfg(windows)]
pub const DESCRIPTION: &str = "Windows Credential Manager";
#[cfg(target_os = "macos")]
pub const DESCRIPTION: &str = "login keychain";

/// The keyring service name of tokenrelay's entries.
#[cfg(all(feature = "keyring", any(target_os = "linux", windows, target_os = "macos")))]
const SERVICE: &str = "tokenrelay";

/// The 32-byte key of the cache called `name`, created (random) when the keyring has none.
/// The error says why the keyring cannot be used; it never contains key material.
#[cfg(all(feature = "keyring", any(target_os = "linux", windows, target_os = "macos")))]
pub fn cache_key(name: &str) -> Result<[u8; 32], String> {
    key_in(&native::entry(name).map_err(|e| describe(&e))?, name)
}

/// Without the `keyring` feature (or on an OS without a store) there is no keyring.
#[cfg(not(all(feature = "keyring", any(target_os = "linux", windows, target_os = "macos"))))]
pub fn cache_key(_name: &str) -> Result<[u8; 32], String> {
    Err(if cfg!(feature = "keyring") {
        "no keyring store is wired up for this platform".to_owned()
    } else {
        "this build has no keyring support (built without the `keyring` feature)".to_owned()
    })
}

/// The entry `tokenrelay` / `<name>/cache-key` in the kernel keyutils keyring.
#[cfg(all(feature = "keyring", target_os = "linux"))]
mod native {
    pub fn entry(name: &str) -> keyring_core::Result<keyring_core::Entry> {
        let store: std::sync::Arc<keyring_core::CredentialStore> = linux_keyutils_keyring_store::Store::new()?;
        keyring_core::Entry::new_in_store(&store, super::SERVICE, &format!("{name}/cache-key"))
    }
}

/// The generic credential `tokenrelay/<name>/cache-key` in Windows Credential Manager.
#[cfg(all(feature = "keyring", windows))]
mod native {
    use std::collections::HashMap;

    pub fn entry(name: &str) -> keyring_core::Result<keyring_core::Entry> {
        let store: std::sync::Arc<keyring_core::CredentialStore> = windows_native_keyring_store::Store::new()?;
        // The target name Credential Manager and `cmdkey /list` show.
        let target = format!("{}/{name}/cache-key", super::SERVICE);
        // `Local` (CRED_PERSIST_LOCAL_MACHINE): the key stays on this machine, like the cache
        // file under %LOCALAPPDATA%. The store's default, `Enterprise`, would copy it to
        // every machine a roaming profile reaches, without the file it decrypts.
        let modifiers = HashMap::from([("target", target.as_str()), ("persistence", "Local")]);
        keyring_core::Entry::new_in_store_with_modifiers(
            &store,
            super::SERVICE,
            &format!("{name}/cache-key"),
            &modifiers,
        )
    }
}

/// The generic password of service `tokenrelay`, account `<name>/cache-key`, in the user's
/// login keychain (the store's default keychain).
#[cfg(all(feature = "keyring", target_os = "macos"))]
mod native {
    pub fn entry(name: &str) -> keyring_core::Result<keyring_core::Entry> {
        let store: std::sync::Arc<keyring_core::CredentialStore> = apple_native_keyring_store::keychain::Store::new()?;
        keyring_core::Entry::new_in_store(&store, super::SERVICE, &format!("{name}/cache-key"))
    }
}

/// The key `entry` holds, or a new random one stored in it. Callers hold the cache's file
/// lock, so two processes cannot both create a key.
#[cfg(all(feature = "keyring", any(test, target_os = "linux", windows, target_os = "macos")))]
fn key_in(entry: &keyring_core::Entry, name: &str) -> Result<[u8; 32], String> {
    use aws_lc_rs::rand::{SecureRandom, SystemRandom};
    use keyring_core::Error;
    use zeroize::Zeroize;

    match entry.get_secret() {
        Ok(mut bytes) => {
            let key = to_key(&bytes);
            bytes.zeroize();
            return key;
        }
        Err(Error::NoEntry) => {}
        Err(error) => return Err(describe(&error)),
    }
    let mut key = [0u8; 32];
    SystemRandom::new().fill(&mut key).map_err(|_| "no randomness for a new key".to_owned())?;
    entry.set_secret(&key).map_err(|e| describe(&e))?;
    // Read it back: keyutils can add a key and then refuse to link it where a later process
    // would find it (docs/protocols.md#kernel-keyring), which would lose the key at exit.
    let mut stored = entry.get_secret().map_err(|e| describe(&e))?;
    let kept = stored == key;
    stored.zeroize();
    if !kept {
        key.zeroize();
        return Err("the keyring did not keep the new key".to_owned());
    }
    tracing::info!(name, "generated the token cache's encryption key and stored it in the {DESCRIPTION}");
    Ok(key)
}

#[cfg(all(feature = "keyring", any(test, target_os = "linux", windows, target_os = "macos")))]
fn to_key(bytes: &[u8]) -> Result<[u8; 32], String> {
    <[u8; 32]>::try_from(bytes).map_err(|_| {
        format!("the keyring entry holds {} bytes, not a 32-byte key; remove it to start afresh", bytes.len())
    })
}

/// A keyring error in words. Some variants carry the secret's bytes (`BadEncoding`,
/// `BadDataFormat`), so only the variants' meaning is printed, never their payload.
#[cfg(all(feature = "keyring", any(test, target_os = "linux", windows, target_os = "macos")))]
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

/// The store-independent part, against keyring-core's in-memory mock store. The Linux store
/// itself is exercised end to end by `the_keyring_keeps_the_key_across_restarts`
/// (tests/integration); the Windows and macOS stores cannot run here.
#[cfg(all(test, feature = "keyring"))]
mod tests {
    use keyring_core::mock;
    use keyring_core::{CredentialStore, Entry, Error};

    use super::*;

    fn mock_entry() -> Entry {
        let store: std::sync::Arc<CredentialStore> = mock::Store::new().unwrap();
        Entry::new_in_store(&store, "tokenrelay", "tokens/cache-key").unwrap()
    }

    fn fail_next(entry: &Entry, error: Error) {
        entry.as_any().downcast_ref::<mock::Cred>().unwrap().set_error(error);
    }

    #[test]
    fn a_key_is_generated_once_and_then_read_back() {
        let entry = mock_entry();
        let first = key_in(&entry, "tokens").unwrap();
        assert_eq!(entry.get_secret().unwrap(), first, "the new key is what the keyring holds");
        assert_eq!(key_in(&entry, "tokens").unwrap(), first, "a second start reads the same key");
        assert_ne!(key_in(&mock_entry(), "tokens").unwrap(), first, "each new key is random");
    }

    #[test]
    fn an_entry_of_the_wrong_length_is_refused_without_showing_it() {
        let entry = mock_entry();
        entry.set_secret(b"a password, not a key").unwrap();
        let error = key_in(&entry, "tokens").unwrap_err();
        assert!(error.contains("holds 21 bytes, not a 32-byte key"), "{error}");
        assert!(!error.contains("password"), "{error}");
        assert_eq!(entry.get_secret().unwrap(), b"a password, not a key", "the entry is left alone");
    }

    #[test]
    fn a_keyring_that_refuses_access_is_reported_and_no_key_is_made() {
        let entry = mock_entry();
        fail_next(&entry, Error::NoStorageAccess("locked".into()));
        assert_eq!(key_in(&entry, "tokens").unwrap_err(), "no access to the keyring: locked");
        assert!(matches!(entry.get_secret(), Err(Error::NoEntry)), "nothing was stored");
    }

    #[test]
    fn errors_that_carry_the_secret_do_not_print_it() {
        let secret = b"0123456789abcdef0123456789abcdef".to_vec();
        let described = describe(&Error::BadEncoding(secret.clone()));
        assert_eq!(described, "the keyring entry is not in the expected format");
        let described = describe(&Error::BadDataFormat(secret, "not UTF-8".into()));
        assert!(!described.contains("0123456789"), "{described}");
    }
}
