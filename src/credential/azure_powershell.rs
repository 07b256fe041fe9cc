//! `azure_powershell`: tokens from the developer's Azure PowerShell (`Connect-AzAccount`) login.
//!
//! Runs `pwsh -NoProfile -NonInteractive -EncodedCommand <script>` (on Windows, Windows
//! PowerShell's `powershell` when `pwsh` is not installed) with a deadline. The script does
//! what the Azure SDKs' AzurePowerShellCredential's does (docs/protocols.md#azure-powershell):
//! imports Az.Accounts 2.2.0 or newer, calls `Get-AzAccessToken -ResourceUrl R [-TenantId T]`,
//! asks for the token as a SecureString on the Az.Accounts versions that would otherwise
//! warn (2.17 up to 5.0; from 5.0 on it always is one), turns a SecureString back into text,
//! and prints one marked line: `tokenrelay-token%<token>%<expiry, epoch seconds>`.
//!
//! A missing PowerShell, a missing Az.Accounts, or an account that is not logged in is
//! "unavailable", so a chain moves on; an Az.Accounts older than 2.2.0 is refused with the
//! advice to update it.

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;

use super::process::{self, Output, RunError, quote_stderr};
use super::{Credential, CredentialError, LinkStatus};
use crate::clock::{Clock, SystemClock};
use crate::config::CredentialKind;
use crate::secret::Secret;
use crate::token::AccessToken;

/// The programs tried, in order: PowerShell 7 everywhere, then Windows PowerShell 5.1.
#[cfg(windows)]
const PROGRAMS: [&str; 2] = ["pwsh", "powershell"];
#[cfg(not(windows))]
const PROGRAMS: [&str; 1] = ["pwsh"];

/// The oldest Az.Accounts with `Get-AzAccessToken -ResourceUrl` that the SDKs accept.
const MINIMUM_AZ_ACCOUNTS: &str = "2.2.0";
/// What the script prints before the token (never logged or quoted).
const TOKEN_MARK: &str = "tokenrelay-token%";
/// What the script prints when no usable Az.Accounts is installed, followed by the newest
/// installed version (empty when there is none).
const NO_MODULE_MARK: &str = "tokenrelay-no-az-accounts%";
/// What `Get-AzAccessToken` says when no account is logged in.
const NOT_LOGGED_IN: &str = "Connect-AzAccount";
/// What PowerShell says when the execution policy forbids running the script.
const BLOCKED: &str = "AuthorizationManager check failed";

/// The script, with `{resource}` and `{tenant}` filled in as single-quoted PowerShell strings.
const SCRIPT: &str = r#"$ErrorActionPreference = 'Stop'
$module = Import-Module Az.Accounts -MinimumVersion '{minimum}' -PassThru -ErrorAction SilentlyContinue
if (-not $module) {
    $installed = Get-Module Az.Accounts -ListAvailable | Sort-Object Version -Descending | Select-Object -First 1
    Write-Output "{no_module}$($installed.Version)"
    exit
}
$arguments = @{ ResourceUrl = '{resource}'; WarningAction = 'Ignore' }
$tenant = '{tenant}'
if ($tenant.Length -gt 0) { $arguments['TenantId'] = $tenant }
if ($module.Version -ge [version]'2.17.0' -and $module.Version -lt [version]'5.0.0') { $arguments['AsSecureString'] = $true }
$result = Get-AzAccessToken @arguments
$value = $result.Token
if ($value -is [System.Security.SecureString]) {
    if ($PSVersionTable.PSVersion.Major -lt 7) {
        $pointer = [System.Runtime.InteropServices.Marshal]::SecureStringToBSTR($value)
        try { $value = [System.Runtime.InteropServices.Marshal]::PtrToStringBSTR($pointer) }
        finally { [System.Runtime.InteropServices.Marshal]::ZeroFreeBSTR($pointer) }
    } else {
        $value = ConvertFrom-SecureString $value -AsPlainText
    }
}
Write-Output "`n{token_mark}$value%$($result.ExpiresOn.ToUnixTimeSeconds())`n"
"#;

/// The developer's Azure PowerShell.
pub struct AzurePowershellCredential {
    tenant_id: Option<String>,
    timeout: Duration,
    /// The `PATH` tokenrelay runs with, searched by `status` (the spawn searches it itself).
    search_path: Option<String>,
}

impl AzurePowershellCredential {
    /// A credential that asks Azure PowerShell for tokens of `tenant_id` (the signed-in
    /// context's tenant when `None`), waiting at most `timeout` for it.
    pub fn new(tenant_id: Option<String>, timeout: Duration, search_path: Option<String>) -> Self {
        Self { tenant_id, timeout, search_path }
    }

    /// The script for `resource` (already checked to hold App ID URI characters only).
    fn script(&self, resource: &str) -> String {
        SCRIPT
            .replace("{minimum}", MINIMUM_AZ_ACCOUNTS)
            .replace("{no_module}", NO_MODULE_MARK)
            .replace("{token_mark}", TOKEN_MARK)
            .replace("{resource}", &quoted(resource))
            .replace("{tenant}", &quoted(self.tenant_id.as_deref().unwrap_or_default()))
    }

    /// PowerShell's `-EncodedCommand` argument: base64 of the script in UTF-16LE.
    fn encoded(&self, resource: &str) -> String {
        let utf16: Vec<u8> = self.script(resource).encode_utf16().flat_map(u16::to_le_bytes).collect();
        base64::engine::general_purpose::STANDARD.encode(utf16)
    }

    fn login_command(&self) -> String {
        match &self.tenant_id {
            Some(tenant) => format!("Connect-AzAccount -Tenant {tenant}"),
            None => "Connect-AzAccount".to_owned(),
        }
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

    /// Runs the first PowerShell that is installed.
    async fn run(&self, encoded: &str) -> Result<(&'static str, Output), CredentialError> {
        let args = ["-NoProfile", "-NonInteractive", "-EncodedCommand", encoded];
        for program in PROGRAMS {
            match process::run(program, &args, &[], self.timeout).await {
                Ok(output) => return Ok((program, output)),
                Err(RunError::NotFound) => continue,
                Err(RunError::Start(e)) => return Err(self.transient(format!("cannot run {program}: {e}"))),
                Err(RunError::Wait(e)) => return Err(self.transient(format!("waiting for {program}: {e}"))),
                Err(RunError::TimedOut) => {
                    return Err(self.transient(format!(
                        "{program} (Get-AzAccessToken) did not finish within {} s and was stopped",
                        self.timeout.as_secs()
                    )));
                }
            }
        }
        Err(self.unavailable(format!(
            "PowerShell ({}) is not on PATH; install PowerShell 7 and Az.Accounts, or remove azure_powershell from \
             the chain",
            PROGRAMS.join(" or ")
        )))
    }
}

#[async_trait]
impl Credential for AzurePowershellCredential {
    fn kind(&self) -> CredentialKind {
        CredentialKind::AzurePowershell
    }

    async fn get_token(&self, resource: &str) -> Result<AccessToken, CredentialError> {
        if !process::is_plain_resource(resource) {
            return Err(self.rejected(format!("{resource:?} is not a resource Azure PowerShell can be asked for")));
        }
        let issued_at = SystemClock.now();
        let (program, Output { status, stdout, stderr }) = self.run(&self.encoded(resource)).await?;
        if !status.success() {
            let said = quote_stderr(&stderr);
            if stderr.contains(NOT_LOGGED_IN) {
                return Err(self
                    .unavailable(format!("Azure PowerShell is not logged in; run `{}`{said}", self.login_command())));
            }
            if stderr.contains(BLOCKED) {
                return Err(self.unavailable(format!(
                    "the PowerShell execution policy prevented running Get-AzAccessToken{said}"
                )));
            }
            return Err(self.rejected(format!("{program} (Get-AzAccessToken) failed ({status}){said}")));
        }
        if let Some(version) = stdout.lines().find_map(|line| line.trim().strip_prefix(NO_MODULE_MARK)) {
            let version = version.trim();
            if version.is_empty() {
                return Err(self.unavailable(format!(
                    "the Az.Accounts module is not installed for {program}; run `Install-Module Az.Accounts`, then \
                     `{}`",
                    self.login_command()
                )));
            }
            return Err(self.rejected(format!(
                "Az.Accounts {version} is too old (Get-AzAccessToken -ResourceUrl needs {MINIMUM_AZ_ACCOUNTS} or \
                 newer); run `Update-Module Az.Accounts`"
            )));
        }
        // Errors never quote stdout: the marked line holds the token.
        let Some(line) = stdout.lines().find_map(|line| line.trim().strip_prefix(TOKEN_MARK)) else {
            return Err(self.rejected(format!("{program} printed no token line (Get-AzAccessToken gave no token)")));
        };
        let Some((token, expires_on)) = line.rsplit_once('%') else {
            return Err(self.rejected(format!("{program} printed a token line without an expiry")));
        };
        let expires_on: u64 = expires_on
            .trim()
            .parse()
            .map_err(|_| self.rejected(format!("{program} printed an expiry that is not epoch seconds")))?;
        if token.is_empty() {
            return Err(self.rejected(format!("{program} printed an empty token")));
        }
        Ok(AccessToken::with_lifetime(Secret::new(token), issued_at, expires_on))
    }

    fn status(&self) -> LinkStatus {
        match PROGRAMS.iter().find_map(|program| process::find_program(program, self.search_path.as_deref())) {
            Some(path) => LinkStatus::Usable(format!(
                "{} found (Az.Accounts and the login state are not checked)",
                path.display()
            )),
            None => LinkStatus::NotUsable(format!("PowerShell ({}) is not on PATH", PROGRAMS.join(" or "))),
        }
    }
}

/// `text` as the inside of a single-quoted PowerShell string: a quote is doubled.
fn quoted(text: &str) -> String {
    text.replace('\'', "''")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(encoded: &str) -> String {
        let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).unwrap();
        let units: Vec<u16> = bytes.chunks(2).map(|pair| u16::from_le_bytes([pair[0], pair[1]])).collect();
        String::from_utf16(&units).unwrap()
    }

    #[test]
    fn the_script_asks_for_the_resource_and_tenant_and_is_utf16_base64() {
        let credential =
            AzurePowershellCredential::new(Some("contoso.onmicrosoft.com".into()), Duration::from_secs(10), None);
        let script = decode(&credential.encoded("https://vault.azure.net"));
        assert!(script.contains("$arguments = @{ ResourceUrl = 'https://vault.azure.net'; WarningAction = 'Ignore' }"));
        assert!(script.contains("$tenant = 'contoso.onmicrosoft.com'"));
        assert!(script.contains("-MinimumVersion '2.2.0'"));
        assert!(script.contains("Write-Output \"`ntokenrelay-token%$value%"));
        for placeholder in ["{minimum}", "{no_module}", "{token_mark}", "{resource}", "{tenant}"] {
            assert!(!script.contains(placeholder), "{placeholder} is filled");
        }
        let credential = AzurePowershellCredential::new(None, Duration::from_secs(10), None);
        assert!(decode(&credential.encoded("r")).contains("$tenant = ''"));
    }

    #[test]
    fn a_quote_cannot_leave_the_string() {
        assert_eq!(quoted("it's"), "it''s");
    }

    #[tokio::test]
    async fn a_resource_that_is_not_an_app_id_uri_never_reaches_powershell() {
        let credential = AzurePowershellCredential::new(None, Duration::from_secs(1), Some("/nonexistent".into()));
        let error = credential.get_token("https://x'; Remove-Item -Recurse ~; '").await.unwrap_err();
        assert!(error.is_permanent() && error.to_string().contains("not a resource"), "{error}");
    }
}
