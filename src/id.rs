//! [`Id`]: an Azure identifier that compares without regard to ASCII case.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An application (client) id, object (principal) id, tenant id or Azure resource id. Entra
/// and Azure Resource Manager treat these case-insensitively (a GUID in upper case names the
/// same application), so equality and hashing ignore ASCII case, and an `Id` is equal to a
/// `str` that differs only in case. The text is kept as written, for echoes and logs.
///
/// `Debug` prints the text quoted and escaped, as a string's `Debug` does: a selector comes
/// from a caller's query, and escaping keeps a control character in it from forging a log
/// line. Ids are not secrets.
#[derive(Clone, Default)]
pub struct Id(String);

impl Id {
    /// The id as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as written, owned.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl Deref for Id {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Id {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<String> for Id {
    fn from(id: String) -> Self {
        Self(id)
    }
}

impl From<&str> for Id {
    fn from(id: &str) -> Self {
        Self(id.to_owned())
    }
}

impl PartialEq for Id {
    fn eq(&self, other: &Self) -> bool {
        self.0.eq_ignore_ascii_case(&other.0)
    }
}

impl Eq for Id {}

impl PartialEq<str> for Id {
    fn eq(&self, other: &str) -> bool {
        self.0.eq_ignore_ascii_case(other)
    }
}

impl PartialEq<&str> for Id {
    fn eq(&self, other: &&str) -> bool {
        self.0.eq_ignore_ascii_case(other)
    }
}

impl PartialEq<String> for Id {
    fn eq(&self, other: &String) -> bool {
        self.0.eq_ignore_ascii_case(other)
    }
}

/// Consistent with `eq`: ids that differ only in ASCII case hash alike.
impl Hash for Id {
    fn hash<H: Hasher>(&self, state: &mut H) {
        for byte in self.0.bytes() {
            state.write_u8(byte.to_ascii_lowercase());
        }
        state.write_u8(0xff);
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    use super::*;

    const LOWER: &str = "0a1b2c3d-0000-4000-8000-00000000abcd";
    const UPPER: &str = "0A1B2C3D-0000-4000-8000-00000000ABCD";

    #[test]
    fn ids_differing_in_case_are_equal_and_hash_alike() {
        let (lower, upper) = (Id::from(LOWER), Id::from(UPPER));
        assert_eq!(lower, upper);
        assert_eq!(lower, UPPER);
        assert_eq!(upper, *LOWER);
        assert_ne!(lower, Id::from("0a1b2c3d-0000-4000-8000-00000000abce"));
        let hasher = std::collections::hash_map::RandomState::new();
        assert_eq!(hasher.hash_one(&lower), hasher.hash_one(&upper));
        let set: HashSet<Id> = [lower, upper].into_iter().collect();
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn the_text_is_kept_as_written() {
        let id = Id::from(UPPER);
        assert_eq!(id.as_str(), UPPER);
        assert_eq!(id.to_string(), UPPER);
        assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{UPPER}\""));
        assert_eq!(serde_json::from_str::<Id>(&format!("\"{UPPER}\"")).unwrap().as_str(), UPPER);
    }

    /// Only ASCII case folds: Entra's ids are ASCII, and a non-ASCII look-alike is another id.
    #[test]
    fn only_ascii_case_is_ignored() {
        assert_ne!(Id::from("straße"), "STRASSE");
        assert_ne!(Id::from("é"), "É");
    }

    #[test]
    fn debug_quotes_and_escapes_like_a_string() {
        let id = Id::from("app\n{\"forged\":1}");
        assert_eq!(format!("{id:?}"), format!("{:?}", "app\n{\"forged\":1}"));
        assert!(!format!("{id:?}").contains('\n'));
    }
}
