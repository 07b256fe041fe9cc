//! `azure_developer_cli`: tokens from the developer's Azure Developer CLI (`azd`) login.
//!
//! Runs `azd auth token --output json --scope <resource>/.default [--tenant-id T]`, the command
//! line of the Azure SDKs' AzureDeveloperCliCredential (docs/protocols.md#azure-developer-cli),
//! with a deadline, and reads `token` and `expiresOn` (RFC 3339) from what it prints. A missing
//! `azd`, or one that is not logged in, is "unavailable", so a chain moves on; an `azd` that
//! does not know the command or its flags is too old, which only an upgrade fixes.
//!
//! `azd` is found through the process's `PATH` and inherits its environment, as when a
//! developer runs it: that is where its login lives. `NO_COLOR` keeps escape sequences out of
//! its messages.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use super::process::{self, Output, RunError, quote_stderr};
use super::{Credential, CredentialError, LinkStatus};
use crate::clock::{Clock, SystemClock, parse_rfc3339};
use crate::config::CredentialKind;
use crate::secret::Secret;
use crate::token::AccessToken;

/// The program run.
const PROGRAM: &str = "azd";
/// What `azd` says on stderr when no one is logged in (inside a JSON console message with
/// `--output json`); the SDKs look for the same words.
const NOT_LOGGED_IN: &str = "azd auth login";
/// What a Cobra command line (which `azd` is) says about a command or flag it does not know.
const UNKNOWN: [&str; 3] = ["unknown flag", "unknown command", "unknown shorthand flag"];

/// The developer's Azure Developer CLI.
pub struct AzureDeveloperCliCredential {
    tenant_id: Option<String>,
    timeout: Duration,
    /// The `PATH` tokenrelay runs with, searched by `status` (the spawn searches it itself).
    search_path: Option<String>,
}

impl AzureDeveloperCliCredential {
    /// A credential that asks `azd` for tokens of `tenant_id` (azd's own default tenant when
    /// `None`), waiting at most `timeout` for it.
    pub fn new(tenant_id: Option<String>, timeout: Duration, search_path: Option<String>) -> Self {
        Self { tenant_id, timeout, search_path }
    }

    fn arguments<'a>(&'a self, scope: &'a str) -> Vec<&'a str> {
        let mut args = vec!["auth", "token", "--output", "json", "--scope", scope];
        if let Some(tenant) = &self.tenant_id {
            args.extend(["--tenant-id", tenant.as_str()]);
        }
        args
    }

    fn login_command(&self) -> String {
        match &self.tenant_id {
            Some(tenant) => format!("azd auth login --tenant-id {tenant}"),
            None => "azd auth login".to_owned(),
        }
    }

    fn unavailable(&self, reason: String) -> CredentialError {
        CredentialError::Unavailable { credential: self.kind(), reason }
    }

    fn rejected(&self, message: String) -> CredentialError {
        CredentialError::Rejected { credential: self.kind(), aadsts: None, message, correlation_id: None }
    }
}

#[async_trait]
impl Credential for AzureDeveloperCliCredential {
    fn kind(&self) -> CredentialKind {
        CredentialKind::AzureDeveloperCli
    }

    async fn get_token(&self, resource: &str) -> Result<AccessToken, CredentialError> {
        if !process::is_plain_resource(resource) {
            return Err(self.rejected(format!("{resource:?} is not a resource azd can be asked for")));
        }
        let scope = format!("{resource}/.default");
        let issued_at = SystemClock.now();
        let run = process::run(PROGRAM, &self.arguments(&scope), &[("NO_COLOR", "true")], self.timeout).await;
        let Output { status, stdout, stderr } = run.map_err(|e| match e {
            RunError::NotFound => self.unavailable(
                "the Azure Developer CLI (azd) is not on PATH; install it (https://aka.ms/azure-dev/install), or \
                 remove azure_developer_cli from the chain"
                    .to_owned(),
            ),
            RunError::Start(e) => {
                CredentialError::Transient { credential: self.kind(), reason: format!("cannot run azd: {e}") }
            }
            RunError::Wait(e) => {
                CredentialError::Transient { credential: self.kind(), reason: format!("waiting for azd: {e}") }
            }
            RunError::TimedOut => CredentialError::Transient {
                credential: self.kind(),
                reason: format!("azd auth token did not finish within {} s and was stopped", self.timeout.as_secs()),
            },
        })?;
        if !status.success() {
            let said = console_message(&stderr);
            let quoted = quote_stderr(&said);
            if said.contains(NOT_LOGGED_IN) {
                return Err(self.unavailable(format!(
                    "the Azure Developer CLI is not logged in; run `{}`{quoted}",
                    self.login_command()
                )));
            }
            if UNKNOWN.iter().any(|words| said.contains(words)) {
                return Err(self.rejected(format!(
                    "the Azure Developer CLI is too old for `azd auth token --output json --scope … --tenant-id …`; \
                     upgrade azd (https://aka.ms/azure-dev/install){quoted}"
                )));
            }
            return Err(self.rejected(format!("azd auth token failed ({status}){quoted}")));
        }
        // The error never quotes stdout: it may hold the token.
        let parsed: AzdToken = serde_json::from_str(stdout.trim())
            .map_err(|e| self.rejected(format!("azd auth token printed unreadable JSON ({})", e.classify_text())))?;
        let expires_on = parse_rfc3339(&parsed.expires_on).ok_or_else(|| {
            self.rejected(format!("azd printed expiresOn {:?}, which is not an RFC 3339 time", parsed.expires_on))
        })?;
        Ok(AccessToken::with_lifetime(Secret::new(parsed.token), issued_at, expires_on))
    }

    fn status(&self) -> LinkStatus {
        match process::find_program(PROGRAM, self.search_path.as_deref()) {
            Some(path) => LinkStatus::Usable(format!("azd found at {} (login state is not checked)", path.display())),
            None => LinkStatus::NotUsable("the Azure Developer CLI (azd) is not on PATH".to_owned()),
        }
    }
}

/// What `azd auth token --output json` prints (other fields ignored).
#[derive(Deserialize)]
struct AzdToken {
    token: String,
    #[serde(rename = "expiresOn")]
    expires_on: String,
}

/// With `--output json`, azd writes its messages to stderr as JSON lines
/// (`{"type":"consoleMessage","data":{"message":"\nERROR: …\n"}}`); this is their text, each
/// message's lines in order, and any line that is not such a message as it is.
fn console_message(stderr: &str) -> String {
    let mut text = String::new();
    for line in stderr.lines() {
        let message = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|value| value.pointer("/data/message").and_then(|m| m.as_str()).map(str::to_owned));
        text.push_str(message.as_deref().unwrap_or(line));
        text.push('\n');
    }
    text
}

/// A serde error's category only: its text could quote the token's characters.
trait Classify {
    fn classify_text(&self) -> &'static str;
}

impl Classify for serde_json::Error {
    fn classify_text(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "read error",
            serde_json::error::Category::Syntax => "not JSON",
            serde_json::error::Category::Data => "no token or expiresOn",
            serde_json::error::Category::Eof => "cut short",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_the_command_line_of_the_sdks() {
        let azd =
            AzureDeveloperCliCredential::new(Some("contoso.onmicrosoft.com".into()), Duration::from_secs(10), None);
        assert_eq!(
            azd.arguments("https://vault.azure.net/.default").join(" "),
            "auth token --output json --scope https://vault.azure.net/.default --tenant-id contoso.onmicrosoft.com"
        );
        let azd = AzureDeveloperCliCredential::new(None, Duration::from_secs(10), None);
        assert!(!azd.arguments("s").contains(&"--tenant-id"));
        assert_eq!(azd.login_command(), "azd auth login");
    }

    #[test]
    fn console_messages_are_unwrapped() {
        let stderr = r#"{"type":"consoleMessage","timestamp":"2038-01-18T00:00:00Z","data":{"message":"\nERROR: not logged in, run `azd auth login` to login\n"}}"#;
        let text = console_message(stderr);
        assert!(text.contains("ERROR: not logged in, run `azd auth login` to login"), "{text}");
        assert_eq!(quote_stderr(&text), ": ERROR: not logged in, run `azd auth login` to login");
        assert_eq!(console_message("Error: unknown flag: --tenant-id\n"), "Error: unknown flag: --tenant-id\n");
    }

    #[tokio::test]
    async fn a_resource_that_is_not_an_app_id_uri_never_reaches_azd() {
        let azd = AzureDeveloperCliCredential::new(None, Duration::from_secs(1), Some("/nonexistent".into()));
        let error = azd.get_token("--help").await.unwrap_err();
        assert!(error.is_permanent() && error.to_string().contains("not a resource"), "{error}");
    }

    #[test]
    fn unreadable_output_is_described_without_its_content() {
        let Err(error) = serde_json::from_str::<AzdToken>(r#"{"token":"secret-token-value"}"#) else {
            panic!("expiresOn is required");
        };
        assert_eq!(error.classify_text(), "no token or expiresOn");
        assert!(!error.classify_text().contains("secret"));
    }
}
