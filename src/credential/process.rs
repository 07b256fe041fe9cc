//! Running a helper program with a deadline: the Azure CLI (`azure_cli`) and client-assertion
//! commands (`client_assertion`). No shell is involved; the program is found on `PATH`.

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
    fn stderr_is_quoted_by_its_first_line_and_shortened() {
        assert_eq!(quote_stderr(""), "");
        assert_eq!(quote_stderr("\n  first  \nsecond"), ": first");
        let long = "x".repeat(MAX_QUOTED_STDERR + 10);
        assert_eq!(quote_stderr(&long).chars().count(), 2 + MAX_QUOTED_STDERR + 1);
    }
}
