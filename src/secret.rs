//! `Secret`: a string that cannot leak through `Debug`, `Display` or serialisation.
//!
//! Client secrets, the App Service header secret, federated tokens and access tokens all
//! travel in this type. Reading the value is an explicit call (`expose`), so every place
//! that handles the plaintext is easy to find with a search.

use std::fmt;
use std::sync::Arc;

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
    /// position of the first differing byte shows. For values checked now and then (an
    /// authorization code's `state`); a secret checked on every request goes through
    /// [`for_header`](Self::for_header).
    pub fn matches(&self, presented: &[u8]) -> bool {
        let own = digest::digest(&digest::SHA256, self.0.as_bytes());
        let presented = digest::digest(&digest::SHA256, presented);
        own.as_ref().ct_eq(presented.as_ref()).into()
    }

    /// The form [`HeaderSecret::matches`] checks presented values against, built once for a
    /// secret checked on every request; `None` when the secret is longer than
    /// [`HeaderSecret::MAX_BYTES`].
    pub fn for_header(&self) -> Option<Arc<HeaderSecret>> {
        HeaderSecret::new(self.0.as_bytes())
    }

    /// Whether the value is empty (an empty secret file is a configuration error).
    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }
}

/// A [`Secret`] that callers present on every request (the App Service header secret), kept
/// zero-padded to a fixed length so that checking a presented value costs a few hundred
/// instructions instead of a SHA-256 per request.
///
/// Invariant: `words` holds the secret's bytes followed by zeros, `len` is its length, and
/// `len <= MAX_BYTES`.
pub struct HeaderSecret {
    words: [u64; WORDS],
    len: u64,
}

const WORDS: usize = HeaderSecret::MAX_BYTES / 8;

impl HeaderSecret {
    /// The longest secret this holds (configuration refuses longer ones: `openssl rand -hex 32`
    /// makes 64 bytes).
    pub const MAX_BYTES: usize = 256;

    /// `secret` padded, built where it stays: a value moved into the `Arc` would leave a copy
    /// of the padded secret on the stack.
    fn new(secret: &[u8]) -> Option<Arc<Self>> {
        if secret.len() > Self::MAX_BYTES {
            return None;
        }
        let mut held = Arc::new(Self { words: [0; WORDS], len: 0 });
        let this = Arc::get_mut(&mut held).expect("no other reference yet");
        for (own, word) in this.words.iter_mut().zip(words(secret)) {
            *own = word;
        }
        this.len = secret.len() as u64;
        Some(held)
    }

    /// Whether `presented` is the secret, in time that depends on neither the secret nor the
    /// presented bytes: every word of the zero-padded forms is compared, whatever the lengths
    /// and wherever they first differ, and the lengths are compared alongside. Only a value
    /// longer than [`MAX_BYTES`](Self::MAX_BYTES) returns early, which tells the caller
    /// nothing but that public bound; the time depends on the presented length, which the
    /// caller knows. (`benches/hot_path.rs` times matching and differing values.)
    pub fn matches(&self, presented: &[u8]) -> bool {
        if presented.len() > Self::MAX_BYTES {
            return false;
        }
        // An OR of XORs over every word, with no branch on the data; `black_box` on the running
        // value keeps the optimiser from stopping once it is non-zero, and `subtle` makes the
        // final test.
        let mut difference = self.len ^ presented.len() as u64;
        for (own, word) in self.words.iter().zip(words(presented)) {
            difference = std::hint::black_box(difference | (own ^ word));
        }
        difference.ct_eq(&0).into()
    }
}

/// `bytes` as native-endian words, the last one zero-padded, then zeros without end.
fn words(bytes: &[u8]) -> impl Iterator<Item = u64> + '_ {
    let whole = bytes.chunks_exact(8);
    let mut last = [0u8; 8];
    last[..whole.remainder().len()].copy_from_slice(whole.remainder());
    whole
        .map(|chunk| u64::from_ne_bytes(chunk.try_into().expect("chunks of eight bytes")))
        .chain(std::iter::once(u64::from_ne_bytes(last)))
        .chain(std::iter::repeat(0))
}

impl Drop for HeaderSecret {
    fn drop(&mut self) {
        self.words.zeroize();
        self.len.zeroize();
    }
}

impl fmt::Debug for HeaderSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HeaderSecret(<redacted>)")
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
    }

    #[test]
    fn header_secret_matches_only_the_whole_value() {
        let header = Secret::new("s3cret").for_header().unwrap();
        assert!(header.matches(b"s3cret"));
        for wrong in [&b"s3cre"[..], b"s3cret ", b"s3cret\0", b"\0s3cret", b"S3cret", b"", b"s3crex"] {
            assert!(!header.matches(wrong), "{wrong:?}");
        }
        assert_eq!(format!("{header:?}"), "HeaderSecret(<redacted>)");
        // The longest secret it holds, and a value one byte longer.
        let longest = "k".repeat(HeaderSecret::MAX_BYTES);
        let header = Secret::new(longest.clone()).for_header().unwrap();
        assert!(header.matches(longest.as_bytes()));
        assert!(!header.matches(format!("{longest}k").as_bytes()));
        assert!(!header.matches(&longest.as_bytes()[1..]));
        assert!(Secret::new(format!("{longest}k")).for_header().is_none());
    }

    proptest::proptest! {
        /// Equal to comparing the bytes, for any secret and presented value.
        #[test]
        fn header_secret_matches_as_equality(
            secret in proptest::collection::vec(proptest::num::u8::ANY, 0..=HeaderSecret::MAX_BYTES),
            presented in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
        ) {
            let header = HeaderSecret::new(&secret).unwrap();
            proptest::prop_assert_eq!(header.matches(&presented), presented == secret);
            proptest::prop_assert!(header.matches(&secret));
        }

        /// Near misses: the secret one byte shorter or longer (a NUL included), or with one
        /// byte changed.
        #[test]
        fn header_secret_refuses_near_misses(
            secret in proptest::collection::vec(proptest::num::u8::ANY, 1..=HeaderSecret::MAX_BYTES),
            at in proptest::num::usize::ANY,
            extra in proptest::num::u8::ANY,
            flip in 1u8..,
        ) {
            let header = HeaderSecret::new(&secret).unwrap();
            let at = at % secret.len();
            let mut changed = secret.clone();
            changed[at] ^= flip;
            let mut longer = secret.clone();
            longer.push(extra);
            for near in [&secret[..secret.len() - 1], &changed[..], &longer[..]] {
                proptest::prop_assert!(!header.matches(near));
            }
        }
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
