//! The AuthenticationRecord file (docs/protocols.md#authenticationrecord): the non-secret
//! JSON that names a signed-in account. `tokenrelay login` writes it; the `user` credential's
//! configuration reads it. Its format lives here, with the configuration that reads it, so
//! that configuration depends on no credential.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The only AuthenticationRecord version the Azure SDKs read.
const RECORD_VERSION: &str = "1.0";

/// Identifies a signed-in account; not secret (docs/protocols.md#authenticationrecord).
/// Serialised with the Azure SDKs' field names, so their `AuthenticationRecord.deserialize`
/// reads it too.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthenticationRecord {
    /// The authority host, such as `login.microsoftonline.com`.
    pub authority: String,
    /// The public client the user signed in to.
    pub client_id: String,
    /// `<object id>.<tenant id>`.
    pub home_account_id: String,
    /// The user's home tenant.
    pub tenant_id: String,
    /// The user principal name.
    pub username: String,
    /// Always `1.0`.
    pub version: String,
}

impl AuthenticationRecord {
    /// Reads a record written by `tokenrelay login` (or an Azure SDK).
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let record: Self = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not an AuthenticationRecord: {e}", path.display()))?;
        if record.version != RECORD_VERSION {
            return Err(format!("{}: AuthenticationRecord version {:?} is not 1.0", path.display(), record.version));
        }
        Ok(record)
    }

    /// Writes the record as JSON.
    pub fn write(&self, path: &Path) -> Result<(), String> {
        let text = serde_json::to_string_pretty(self).expect("a record of strings always serialises");
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        std::fs::write(path, text + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_round_trips_with_the_sdks_field_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("record.json");
        let record = AuthenticationRecord {
            authority: "login.microsoftonline.com".into(),
            client_id: "04b07795-8ddb-461a-bbee-02f9e1bf7b46".into(),
            home_account_id: "oid.tid".into(),
            tenant_id: "tid".into(),
            username: "ada@contoso.com".into(),
            version: "1.0".into(),
        };
        record.write(&path).unwrap();
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for field in ["authority", "clientId", "homeAccountId", "tenantId", "username", "version"] {
            assert!(json.get(field).is_some(), "{field}");
        }
        assert_eq!(AuthenticationRecord::read(&path).unwrap(), record);
        std::fs::write(&path, json.to_string().replace("\"1.0\"", "\"2.0\"")).unwrap();
        assert!(AuthenticationRecord::read(&path).unwrap_err().contains("version"));
    }
}
