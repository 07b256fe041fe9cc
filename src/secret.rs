//! `Secret`: a string that cannot leak through `Debug`, `Display` or serialisation.
//!
//! Client secrets, the App Service header secret, federated tokens and access tokens all
//! travel in this type. Reading the value is an explicit call (`expose`), so every place
//! that handles the plaintext is easy to find with a search.

use std::fmt;

use aws_lc_rs::digest;
use serde::{Serialize, Serializer};
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

/// Text that must never reach logs, errors, metrics or `Debug` output.
///
/// No `PartialEq`: the only comparison is [`matches`](Self::matches), whose time does not
/// depend on the values. Dropping a `Secret` overwrites its buffer with zeros (`zeroize`, which
/// the optimiser cannot remove); copies made from [`expose`](Self::expose) are the caller's
/// (docs/threat-model.md#memory).
#[derive(Clone)]
pub struct Secret(String);

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The plaintext. Call this only where the value leaves the process on purpose
    /// (an HTTP request to the authority, a response body to a caller).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A short, non-reversible fingerprint (first 8 hex digits of SHA-256) that lets an
    /// operator correlate log lines about the same token without seeing it.
    pub fn fingerprint(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let digest = digest::digest(&digest::SHA256, self.0.as_bytes());
        // Made for every token the broker caches, 10,000 of them before readiness after a
        // start with a full store: one allocation, no formatter call per byte.
        let mut hex = String::with_capacity(8);
        for byte in &digest.as_ref()[..4] {
            hex.push(char::from(HEX[usize::from(byte >> 4)]));
            hex.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
        hex
    }

    /// Whether `presented` is this secret, in time that depends on neither: both are hashed
    /// with SHA-256 and the digests compared with `subtle`, so neither the length nor the
    /// position of the first differing byte shows. For the App Service header secret, which
    /// any caller can guess at. (`benches/hot_path.rs` times matching and differing values.)
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.digest().matches(presented)
    }

    /// What [`matches`](Self::matches) compares against, computed once for a secret checked
    /// on every request.
    pub fn digest(&self) -> SecretDigest {
        let digest = digest::digest(&digest::SHA256, self.0.as_bytes());
        SecretDigest(digest.as_ref().try_into().expect("SHA-256 digests are 32 bytes"))
    }

    /// Whether the value is empty (an empty secret file is a configuration error).
    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }
}

/// The SHA-256 digest of a [`Secret`] that callers present (the App Service header secret):
/// checking a presented value hashes only that value.
pub struct SecretDigest([u8; 32]);

impl SecretDigest {
    /// Whether `presented` is the secret, in time that depends on neither (see
    /// [`Secret::matches`]).
    pub fn matches(&self, presented: &[u8]) -> bool {
        let presented = digest::digest(&digest::SHA256, presented);
        self.0.ct_eq(presented.as_ref()).into()
    }
}

impl Drop for SecretDigest {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for SecretDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretDigest(<redacted>)")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Serialises as the literal `"<redacted>"`: `tokenrelay check` prints the effective
/// configuration through serde and must show that a secret is set without showing it.
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_the_value() {
        let secret = Secret::new("hunter2-very-secret");
        assert!(!format!("{secret:?}").contains("hunter2"));
        assert!(!format!("{secret}").contains("hunter2"));
        let json = serde_json::to_string(&secret).unwrap();
        assert_eq!(json, "\"<redacted>\"");
        assert_eq!(secret.expose(), "hunter2-very-secret");
    }

    #[test]
    fn matches_only_the_whole_value() {
        let secret = Secret::new("s3cret");
        assert!(secret.matches(b"s3cret"));
        assert!(!secret.matches(b"s3cre"));
        assert!(!secret.matches(b"s3cret "));
        assert!(!secret.matches(b"S3cret"));
        assert!(!secret.matches(b""));
        let digest = secret.digest();
        assert!(digest.matches(b"s3cret"));
        assert!(!digest.matches(b"s3cret "));
        assert_eq!(format!("{digest:?}"), "SecretDigest(<redacted>)");
    }

    /// `Secret` has no `==`, whose time would depend on the values: comparing goes through
    /// `matches`. (An inherent method whose impl needs `PartialEq` is chosen over the trait's
    /// fallback only when the type has it.)
    #[test]
    fn has_no_equality_operator() {
        struct Probe<T>(std::marker::PhantomData<T>);
        trait Fallback {
            fn has_eq(&self) -> bool {
                false
            }
        }
        impl<T> Fallback for Probe<T> {}
        impl<T: PartialEq> Probe<T> {
            fn has_eq(&self) -> bool {
                true
            }
        }
        assert!(Probe::<String>(std::marker::PhantomData).has_eq(), "the probe sees PartialEq");
        assert!(!Probe::<Secret>(std::marker::PhantomData).has_eq());
    }

    #[test]
    fn fingerprint_is_short_and_stable() {
        let a = Secret::new("token-a");
        assert_eq!(a.fingerprint().len(), 8);
        assert_eq!(a.fingerprint(), Secret::new("token-a").fingerprint());
        assert_ne!(a.fingerprint(), Secret::new("token-b").fingerprint());
        // The first four bytes of SHA-256("abc"), in lower-case hex.
        assert_eq!(Secret::new("abc").fingerprint(), "ba7816bf");
    }
}
