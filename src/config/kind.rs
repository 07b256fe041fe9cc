//! [`CredentialKind`]: the name of an upstream credential kind, as configuration files spell
//! it (`kind = "client_secret"`) and as logs, errors and metric labels show it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An upstream credential kind. [`as_str`](Self::as_str) is the `kind` of a configuration
/// file's credential table, and the same text names the kind in logs, error messages and the
/// `credential` label of the upstream metrics, so it never changes for an existing kind.
/// `Debug` prints the name quoted, as a string would, so debug output shows what files and
/// logs show.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CredentialKind {
    ClientSecret,
    WorkloadIdentity,
    ClientCertificate,
    ClientAssertion,
    AzurePipelines,
    ManagedIdentity,
    AzureCli,
    AzureDeveloperCli,
    AzurePowershell,
    Environment,
    User,
    Dev,
    /// Several credentials tried in order: the kind of an identity's chain of more than one
    /// link. Never written in configuration.
    Chain,
}

impl CredentialKind {
    /// Every kind configuration can produce: `dev` through `--dev`, the others as the `kind`
    /// of a credential table.
    pub const CONFIGURABLE: [Self; 12] = [
        Self::ClientSecret,
        Self::WorkloadIdentity,
        Self::ClientCertificate,
        Self::ClientAssertion,
        Self::AzurePipelines,
        Self::ManagedIdentity,
        Self::AzureCli,
        Self::AzureDeveloperCli,
        Self::AzurePowershell,
        Self::Environment,
        Self::User,
        Self::Dev,
    ];

    /// The name in configuration files, logs and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ClientSecret => "client_secret",
            Self::WorkloadIdentity => "workload_identity",
            Self::ClientCertificate => "client_certificate",
            Self::ClientAssertion => "client_assertion",
            Self::AzurePipelines => "azure_pipelines",
            Self::ManagedIdentity => "managed_identity",
            Self::AzureCli => "azure_cli",
            Self::AzureDeveloperCli => "azure_developer_cli",
            Self::AzurePowershell => "azure_powershell",
            Self::Environment => "environment",
            Self::User => "user",
            Self::Dev => "dev",
            Self::Chain => "chain",
        }
    }

    /// Whether a credential of this kind proves an application registration and so can run
    /// the on-behalf-of exchange: exactly the credentials that implement
    /// `Credential::on_behalf_of` (`environment` wraps a secret or a certificate). `check`
    /// reads it; the exchange itself asks each link and skips those that cannot.
    pub const fn acts_for_users(self) -> bool {
        match self {
            Self::ClientSecret
            | Self::WorkloadIdentity
            | Self::ClientCertificate
            | Self::ClientAssertion
            | Self::AzurePipelines
            | Self::Environment
            | Self::Dev => true,
            Self::ManagedIdentity
            | Self::AzureCli
            | Self::AzureDeveloperCli
            | Self::AzurePowershell
            | Self::User
            | Self::Chain => false,
        }
    }
}

impl fmt::Display for CredentialKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for CredentialKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// A name that is not the `kind` of any configurable credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown credential kind `{0}`")]
pub struct UnknownKind(pub String);

impl FromStr for CredentialKind {
    type Err = UnknownKind;

    /// Parses a kind configuration can produce; `chain` is not one.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::CONFIGURABLE.into_iter().find(|kind| kind.as_str() == name).ok_or_else(|| UnknownKind(name.to_owned()))
    }
}

impl Serialize for CredentialKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for CredentialKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::raw::RawCredential;

    #[test]
    fn names_round_trip_and_chain_is_not_configurable() {
        for kind in CredentialKind::CONFIGURABLE {
            assert_eq!(kind.as_str().parse::<CredentialKind>(), Ok(kind));
            assert_eq!(kind.to_string(), kind.as_str());
        }
        assert_eq!("chain".parse::<CredentialKind>(), Err(UnknownKind("chain".into())));
        assert_eq!("Client_Secret".parse::<CredentialKind>(), Err(UnknownKind("Client_Secret".into())));
        assert_eq!(CredentialKind::Chain.to_string(), "chain");
        let chain = [CredentialKind::Environment, CredentialKind::AzureCli];
        assert_eq!(format!("{chain:?}"), r#"["environment", "azure_cli"]"#, "Debug as the names");
    }

    #[test]
    fn serde_uses_the_configuration_name() {
        let json = serde_json::to_string(&CredentialKind::AzurePipelines).unwrap();
        assert_eq!(json, r#""azure_pipelines""#);
        assert_eq!(serde_json::from_str::<CredentialKind>(&json).unwrap(), CredentialKind::AzurePipelines);
        assert!(serde_json::from_str::<CredentialKind>(r#""nope""#).is_err());
    }

    /// Every `kind` a configuration file accepts parses into a `CredentialKind` with the same
    /// name, so the enum and the file format cannot drift apart. (`dev` is not a table kind:
    /// `--dev` selects it.)
    #[test]
    fn every_file_kind_is_a_credential_kind() {
        let tables = [
            "kind = \"client_secret\"",
            "kind = \"workload_identity\"",
            "kind = \"client_certificate\"",
            "kind = \"client_assertion\"",
            "kind = \"azure_pipelines\"",
            "kind = \"managed_identity\"",
            "kind = \"azure_cli\"",
            "kind = \"azure_developer_cli\"",
            "kind = \"azure_powershell\"",
            "kind = \"environment\"",
            "kind = \"user\"",
        ];
        for table in tables {
            let raw: RawCredential = toml::from_str(table).unwrap();
            let name = serde_json::to_value(&raw).unwrap()["kind"].as_str().unwrap().to_owned();
            let kind: CredentialKind = name.parse().unwrap();
            assert_eq!(format!("kind = \"{kind}\""), table);
        }
        let tables_named = tables.len();
        assert_eq!(tables_named + 1, CredentialKind::CONFIGURABLE.len(), "a new kind needs a table above");
    }
}
