//! Running a helper program with a deadline: the developer tools (`azure_cli`,
//! `azure_developer_cli`, `azure_powershell`) and client-assertion commands
//! (`client_assertion`). No shell is involved; the program is found on `PATH`.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// The most of a failing program's stderr quoted in an error.
const MAX_QUOTED_STDERR: usize = 300;

/// What a program that ran to the end left behind.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Why a program gave no [`Output`]. Callers word the error for their credential.
#[derive(Debug)]
pub enum RunError {
    /// The program is not installed (or not on `PATH`).
    NotFound,
    /// It could not be started.
    Start(std::io::Error),
    /// Its stdout could not be read, or waiting for it failed.
    Wait(std::io::Error),
    /// It did not finish within the deadline and was killed.
    TimedOut,
}

/// Runs `program` with `args` and the extra environment `env`, stdin closed, and collects its
/// stdout and stderr. After `timeout` the child is killed (`kill_on_drop`: dropping the
/// unfinished wait drops the child).
pub async fn run(program: &str, args: &[&str], env: &[(&str, &str)], timeout: Duration) -> Result<Output, RunError> {
    let mut child = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => RunError::NotFound,
            _ => RunError::Start(e),
        })?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let work = async {
        let mut out = String::new();
        let mut err = String::new();
        // All three at once: a child blocked on a full stderr pipe would never exit.
        let (read_out, _read_err, status) =
            tokio::join!(stdout.read_to_string(&mut out), stderr.read_to_string(&mut err), child.wait());
        read_out.map_err(RunError::Wait)?;
        let status = status.map_err(RunError::Wait)?;
        Ok(Output { status, stdout: out, stderr: err })
    };
    tokio::time::timeout(timeout, work).await.unwrap_or(Err(RunError::TimedOut))
}

/// The first executable `program` on `search_path` (a `PATH` value), for `tokenrelay check`.
pub fn find_program(program: &str, search_path: Option<&str>) -> Option<PathBuf> {
    std::env::split_paths(search_path?).find_map(|dir| executable_in(&dir, program))
}

/// `dir/program`, if it is a file with an execute bit.
#[cfg(unix)]
fn executable_in(dir: &Path, program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let candidate = dir.join(program);
    std::fs::metadata(&candidate).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).then_some(candidate)
}

/// `dir/program`, with `.exe` appended to a name without an extension, as the spawn (std's
/// `Command`, like `CreateProcess`) resolves it. Windows has no execute bit to check.
#[cfg(not(unix))]
fn executable_in(dir: &Path, program: &str) -> Option<PathBuf> {
    let mut candidate = dir.join(program);
    if candidate.extension().is_none() {
        candidate.set_extension("exe");
    }
    candidate.is_file().then_some(candidate)
}

/// Whether `resource` is safe to hand to a developer tool as a resource or scope argument:
/// the characters of an App ID URI only (the Azure SDKs' `validate_scope` accepts the same
/// set), so a caller-chosen resource can neither start an option (`-x`), nor leave a quoted
/// PowerShell string, nor carry whitespace or control characters.
pub fn is_plain_resource(resource: &str) -> bool {
    !resource.is_empty()
        && !resource.starts_with('-')
        && resource.len() <= 512
        && resource.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/'))
}

/// `: first line of stderr`, shortened; empty when there is none.
pub fn quote_stderr(stderr: &str) -> String {
    let line = stderr.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    if line.is_empty() {
        return String::new();
    }
    let mut shortened: String = line.chars().take(MAX_QUOTED_STDERR).collect();
    if shortened.len() < line.len() {
        shortened.push('…');
    }
    format!(": {shortened}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_status_and_both_streams_are_collected() {
        let output =
            run("sh", &["-c", "echo out; echo err >&2; exit 3"], &[("X", "1")], Duration::from_secs(10)).await.unwrap();
        assert_eq!((output.status.code(), output.stdout.as_str(), output.stderr.as_str()), (Some(3), "out\n", "err\n"));
    }

    #[tokio::test]
    async fn the_extra_environment_reaches_the_child() {
        let output =
            run("sh", &["-c", "printf %s \"$TOKENRELAY_TEST\""], &[("TOKENRELAY_TEST", "v")], Duration::from_secs(10))
                .await
                .unwrap();
        assert_eq!(output.stdout, "v");
    }

    #[tokio::test]
    async fn a_missing_program_and_a_slow_one_are_told_apart() {
        assert!(matches!(
            run("tokenrelay-no-such-program", &[], &[], Duration::from_secs(10)).await,
            Err(RunError::NotFound)
        ));
        assert!(matches!(run("sleep", &["30"], &[], Duration::from_millis(100)).await, Err(RunError::TimedOut)));
    }

    #[test]
    fn finds_a_program_only_when_it_is_an_executable_on_the_path() {
        let dir = tempfile::tempdir().unwrap();
        assert!(find_program("az", Some(dir.path().to_str().unwrap())).is_none());
        let az = dir.path().join("az");
        std::fs::write(&az, "#!/bin/sh\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert!(find_program("az", Some(dir.path().to_str().unwrap())).is_none(), "not executable yet");
            std::fs::set_permissions(&az, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let path = format!("/nonexistent:{}", dir.path().display());
        assert_eq!(find_program("az", Some(&path)), Some(az));
        assert!(find_program("az", None).is_none());
    }

    #[test]
    fn only_app_id_uri_characters_reach_a_tool() {
        for plain in ["https://vault.azure.net", "api://0a1b-2c3d/", "https://management.core.windows.net/"] {
            assert!(is_plain_resource(plain), "{plain}");
        }
        for hostile in
            ["", "-x", "https://a' ; Remove-Item x", "https://a b", "https://a\nb", "https://a\"b", "https://a$b"]
        {
            assert!(!is_plain_resource(hostile), "{hostile:?}");
        }
    }

    #[test]
    fn stderr_is_quoted_by_its_first_line_and_shortened() {
        assert_eq!(quote_stderr(""), "");
        assert_eq!(quote_stderr("\n  first  \nsecond"), ": first");
        let long = "x".repeat(MAX_QUOTED_STDERR + 10);
        assert_eq!(quote_stderr(&long).chars().count(), 2 + MAX_QUOTED_STDERR + 1);
    }
}
