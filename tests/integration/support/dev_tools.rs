//! Stand-in `azd` and `pwsh` executables for the developer-tool credentials: shell scripts
//! placed first on the relay's `PATH`, answering as the real tools do.
//!
//! What they enforce and print, as the real tools do:
//! - `azd auth token --output json --scope S [--tenant-id T]` (Azure Developer CLI, the
//!   command line of the Azure SDKs' AzureDeveloperCliCredential): any other command line is
//!   refused on stderr with exit 1, as Cobra refuses an unknown flag. Logged in, it prints
//!   `{"token": …, "expiresOn": "<RFC 3339, UTC>"}` on stdout and exits 0. Not logged in, it
//!   prints on stderr the JSON console message `azd` writes under `--output json`
//!   (`{"type":"consoleMessage",…,"data":{"message":"\nERROR: not logged in, run `azd auth
//!   login` to login\n"}}`) and exits 1. An old `azd` without `--tenant-id` answers
//!   `Error: unknown flag: --tenant-id` and exits 1.
//! - `pwsh -NoProfile -NonInteractive -EncodedCommand <base64 of UTF-16LE>`: any other
//!   command line is refused (exit 64, as pwsh answers an unknown parameter). The script is
//!   decoded as PowerShell does and must call `Get-AzAccessToken` with a single-quoted
//!   `ResourceUrl`; the stand-in then prints what that script prints in each state of the
//!   machine: the marked token line (logged in), the no-module line with the installed
//!   version (Az.Accounts older than the script's minimum) or with none (not installed), or
//!   `Get-AzAccessToken`'s error on stderr and exit 1 when no account is connected
//!   ("Run Connect-AzAccount to login.").
//!
//! Both record what they were asked in `<tool>-args` beside themselves.

use std::path::{Path, PathBuf};

/// Writes an executable script.
pub fn executable(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// `dir` first on a `PATH`, then the system directories the scripts' own tools live in.
pub fn path_with(dir: &Path) -> String {
    format!("{}:/usr/bin:/bin", dir.display())
}

/// The state of the stand-in `azd`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Azd {
    LoggedIn,
    NotLoggedIn,
    /// Predates `--tenant-id`.
    Old,
}

/// A directory holding a stand-in `azd` in `state`.
pub fn azd(state: Azd) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_azd(dir.path(), state);
    dir
}

/// Writes a stand-in `azd` in `state` into `dir`.
pub fn write_azd(dir: &Path, state: Azd) {
    let answer = match state {
        // An old azd that is logged in answers like a new one when not asked for a tenant.
        Azd::LoggedIn | Azd::Old => {
            r#"exp=$(date -u -d "@$(( $(date +%s) + 3600 ))" +%Y-%m-%dT%H:%M:%SZ)
printf '{"token": "azd-token-for-%s", "expiresOn": "%s"}\n' "$scope" "$exp"
exit 0"#
        }
        Azd::NotLoggedIn => {
            r#"printf '%s\n' '{"type":"consoleMessage","timestamp":"2030-01-01T00:00:00.000000000Z","data":{"message":"\nERROR: not logged in, run `azd auth login` to login\n"}}' >&2
exit 1"#
        }
    };
    let old = if state == Azd::Old {
        r#"if [ -n "$tenant" ]; then echo "Error: unknown flag: --tenant-id" >&2; exit 1; fi"#
    } else {
        ""
    };
    let body = format!(
        r#"#!/bin/sh
echo "$@" >> "$(dirname "$0")/azd-args"
if [ "$1 $2 $3 $4 $5" != "auth token --output json --scope" ] || [ -z "$6" ]; then
  echo "Error: unknown command line: $*" >&2; exit 1
fi
scope="$6"
tenant=
if [ $# -eq 8 ] && [ "$7" = --tenant-id ]; then tenant="$8"; elif [ $# -ne 6 ]; then echo "Error: unknown flag: $7" >&2; exit 1; fi
{old}
{answer}
"#
    );
    executable(dir, "azd", &body);
}

/// The state of the stand-in PowerShell and its Az.Accounts module.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Pwsh {
    LoggedIn,
    NotLoggedIn,
    /// Az.Accounts 2.1.0 only.
    OldModule,
    /// No Az.Accounts at all.
    NoModule,
}

/// A directory holding a stand-in `pwsh` in `state`.
pub fn pwsh(state: Pwsh) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_pwsh(dir.path(), state);
    dir
}

/// Writes a stand-in `pwsh` in `state` into `dir`.
pub fn write_pwsh(dir: &Path, state: Pwsh) {
    let answer = match state {
        Pwsh::LoggedIn => {
            r#"printf '\ntokenrelay-token%%pwsh-token-for-%s%%%s\n\n' "$resource" "$(( $(date +%s) + 3600 ))""#
        }
        Pwsh::NotLoggedIn => "echo 'Get-AzAccessToken: Run Connect-AzAccount to login.' >&2; exit 1",
        Pwsh::OldModule => "printf 'tokenrelay-no-az-accounts%%2.1.0\\n'",
        Pwsh::NoModule => "printf 'tokenrelay-no-az-accounts%%\\n'",
    };
    let body = format!(
        r#"#!/bin/sh
if [ $# -ne 4 ] || [ "$1 $2 $3" != "-NoProfile -NonInteractive -EncodedCommand" ]; then
  echo "pwsh: unexpected arguments: $*" >&2; exit 64
fi
script=$(printf %s "$4" | base64 -d | tr -d '\000')
case "$script" in *Get-AzAccessToken*) ;; *) echo "not the token script" >&2; exit 1 ;; esac
resource=$(printf '%s\n' "$script" | sed -n "s/.*ResourceUrl = '\([^']*\)'.*/\1/p")
tenant=$(printf '%s\n' "$script" | sed -n "s/^\$tenant = '\([^']*\)'.*/\1/p")
echo "resource=$resource tenant=$tenant" >> "$(dirname "$0")/pwsh-args"
{answer}
"#
    );
    executable(dir, "pwsh", &body);
}
