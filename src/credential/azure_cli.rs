//! `azure_cli`: tokens from the developer's Azure CLI login, for laptops.
//!
//! Runs `az account get-access-token --resource R [--tenant T] -o json` (docs/protocols.md#azure-cli)
//! with a timeout and reads `accessToken` and `expires_on` (epoch seconds, printed by CLI
//! 2.54.0 and later; the local-time `expiresOn` string is never parsed). A missing `az` or
//! a CLI that is not logged in is "unavailable", so a chain moves on.
//!
//! `az` is found through the process's `PATH` and inherits its environment, as when a
//! developer runs it: that is where its login lives.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use super::process::{self, Output, RunError, quote_stderr};
use super::{Credential, CredentialError, LinkStatus};
use crate::clock::{Clock, SystemClock};
use crate::config::CredentialKind;
use crate::secret::Secret;
use crate::token::AccessToken;

/// The program run. On Windows the CLI is a batch file, `az.cmd`, which a process can only be
/// started from by its full name (std runs it through `cmd.exe`, quoting the arguments for it;
/// the Azure SDKs run `cmd /c az …`).
#[cfg(not(windows))]
const PROGRAM: &str = "az";
#[cfg(windows)]
const PROGRAM: &str = "az.cmd";

/// The developer's Azure CLI.
pub struct AzureCliCredential {
    tenant_id: Option<String>,
    timeout: Duration,
    /// The `PATH` tokenrelay runs with, searched by `status` (the spawn searches it itself).
    search_path: Option<String>,
}

impl AzureCliCredential {
    /// A credential that asks the CLI for tokens of `tenant_id` (the CLI's default tenant when
    /// `None`), waiting at most `timeout` for it.
    pub fn new(tenant_id: Option<String>, timeout: Duration, search_path: Option<String>) -> Self {
        Self { tenant_id, timeout, search_path }
    }

    fn arguments<'a>(&'a self, resource: &'a str) -> Vec<&'a str> {
        let mut args = vec!["account", "get-access-token", "--resource", resource];
        if let Some(tenant) = &self.tenant_id {
            args.extend(["--tenant", tenant.as_str()]);
        }
        args.extend(["-o", "json"]);
        args
    }

    async fn run(&self, resource: &str) -> Result<Output, CredentialError> {
        let args = self.arguments(resource);
        process::run(PROGRAM, &args, &[("AZURE_CORE_NO_COLOR", "true")], self.timeout).await.map_err(|e| match e {
            RunError::NotFound => self.unavailable(
                "the Azure CLI (az) is not on PATH; install it, or remove azure_cli from the chain".to_owned(),
            ),
            RunError::Start(e) => self.transient(format!("cannot run az: {e}")),
            RunError::Wait(e) => self.transient(format!("waiting for az: {e}")),
            RunError::TimedOut => self.transient(format!(
                "az account get-access-token did not finish within {} s and was stopped",
                self.timeout.as_secs()
            )),
        })
    }

    fn unavailable(&self, reason: String) -> CredentialError {
        CredentialError::Unavailable { credential: self.kind(), reason }
    }

    fn transient(&self, reason: String) -> CredentialError {
        CredentialError::Transient { credential: self.kind(), reason }
    }

    fn rejected(&self, message: String) -> CredentialError {
        CredentialError::Rejected { credential: self.kind(), aadsts: None, message, correlation_id: None }
    }
}

#[async_trait]
impl Credential for AzureCliCredential {
    fn kind(&self) -> CredentialKind {
        CredentialKind::AzureCli
    }

    async fn get_token(&self, resource: &str) -> Result<AccessToken, CredentialError> {
        let issued_at = SystemClock.now();
        let Output { status, stdout, stderr } = self.run(resource).await?;
        if !status.success() {
            let said = quote_stderr(&stderr);
            if stderr.contains("az login") {
                let login = match &self.tenant_id {
                    Some(tenant) => format!("az login --tenant {tenant}"),
                    None => "az login".to_owned(),
                };
                return Err(self.unavailable(format!("the Azure CLI is not logged in; run `{login}`{said}")));
            }
            return Err(self.rejected(format!("az account get-access-token failed ({status}){said}")));
        }
        let parsed: CliToken = serde_json::from_str(&stdout)
            .map_err(|e| self.rejected(format!("az account get-access-token printed unreadable JSON: {e}")))?;
        let Some(expires_on) = parsed.expires_on else {
            return Err(self.rejected(
                "the Azure CLI is too old: it does not print expires_on; upgrade to Azure CLI 2.54.0 or newer"
                    .to_owned(),
            ));
        };
        let expires_on = expires_on.seconds().map_err(|e| self.rejected(format!("az printed expires_on {e}")))?;
        Ok(AccessToken::with_lifetime(Secret::new(parsed.access_token), issued_at, expires_on))
    }

    fn status(&self) -> LinkStatus {
        match process::find_program(PROGRAM, self.search_path.as_deref()) {
            Some(path) => LinkStatus::Usable(format!("az found at {} (login state is not checked)", path.display())),
            None => LinkStatus::NotUsable("the Azure CLI (az) is not on PATH".to_owned()),
        }
    }
}

/// What `az account get-access-token -o json` prints (other fields ignored).
#[derive(Deserialize)]
struct CliToken {
    #[serde(rename = "accessToken")]
    access_token: String,
    #[serde(default)]
    expires_on: Option<Epoch>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Epoch {
    Number(u64),
    String(String),
}

impl Epoch {
    fn seconds(&self) -> Result<u64, String> {
        match self {
            Self::Number(n) => Ok(*n),
            Self::String(s) => s.trim().parse().map_err(|_| format!("{s:?}, which is not epoch seconds")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_the_documented_command_line() {
        let cli = AzureCliCredential::new(Some("contoso.onmicrosoft.com".into()), Duration::from_secs(10), None);
        assert_eq!(
            cli.arguments("https://vault.azure.net").join(" "),
            "account get-access-token --resource https://vault.azure.net --tenant contoso.onmicrosoft.com -o json"
        );
        let cli = AzureCliCredential::new(None, Duration::from_secs(10), None);
        assert!(!cli.arguments("r").contains(&"--tenant"));
    }

    #[test]
    fn expires_on_is_a_number_or_a_numeric_string() {
        let token: CliToken = serde_json::from_str(
            r#"{"accessToken":"t","expiresOn":"2026-11-29 13:00:00.000000","expires_on":1795960209}"#,
        )
        .unwrap();
        assert_eq!(token.expires_on.unwrap().seconds().unwrap(), 1795960209);
        let old: CliToken = serde_json::from_str(r#"{"accessToken":"t","expiresOn":"2026-11-29 13:00:00"}"#).unwrap();
        assert!(old.expires_on.is_none());
    }
}
