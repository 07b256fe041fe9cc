//! `client_assertion`: the client-credentials grant with a JWT from somewhere else.
//!
//! For any identity provider Entra trusts through a federated identity credential (GitHub
//! Actions, GitLab, SPIFFE, another cloud): the assertion is read from a file, or printed on
//! stdout by a command run with a timeout for every exchange.
//!
//! A file is read again whenever it changes (a sidecar or agent keeps it fresh; a replaced
//! file is never presented again), at least every five minutes, and once more before the
//! single retry after AADSTS700024 (expired) or AADSTS700027 (signature not accepted), as
//! workload identity does. A new file that is empty keeps the previous assertion.

use std::time::Duration;

use async_trait::async_trait;

use super::entra::{Application, ClientAuth};
use super::jwt::describe_federated_claims;
use super::process::{self, RunError, quote_stderr};
use super::watched::{LoadError, WatchedFiles, non_empty_text};
use super::{Credential, CredentialError, Grant, LinkStatus, OnBehalfOf};
use crate::aadsts;
use crate::config::AssertionSource;
use crate::config::CredentialKind;
use crate::secret::Secret;
use crate::token::AccessToken;

/// Longest time a file's contents are trusted without reading it again.
const MAX_FILE_AGE: Duration = Duration::from_secs(300);

/// An application presenting an externally issued JWT.
pub struct ClientAssertionCredential {
    application: Application,
    source: Source,
}

enum Source {
    File(Box<WatchedFiles<Secret>>),
    Command { command: Vec<String>, timeout: Duration },
}

impl ClientAssertionCredential {
    /// A credential for `application` presenting what `source` yields.
    pub fn new(application: Application, source: AssertionSource) -> Self {
        let source = match source {
            AssertionSource::File { file } => Source::File(Box::new(WatchedFiles::new(
                "client assertion file",
                vec![file],
                Some(MAX_FILE_AGE),
                |contents| non_empty_text(&contents[0]).map(Secret::new),
            ))),
            AssertionSource::Command { command, timeout_secs } => {
                Source::Command { command, timeout: Duration::from_secs(timeout_secs) }
            }
        };
        Self { application, source }
    }

    /// Runs the command and presents what it printed.
    async fn run_command(
        &self,
        command: &[String],
        timeout: Duration,
        grant: Grant<'_>,
    ) -> Result<(Result<AccessToken, CredentialError>, Secret), CredentialError> {
        let text = run(command, timeout).await.map_err(|failure| match failure {
            Failure::NotFound(reason) => self.unavailable(reason),
            Failure::Failed(reason) => CredentialError::Transient { credential: self.kind(), reason },
        })?;
        let assertion = Secret::new(text.trim());
        if assertion.is_empty() {
            return Err(self.unavailable(format!("{} produced an empty assertion", self.source_name())));
        }
        Ok((self.exchange(grant, &assertion).await, assertion))
    }

    async fn exchange(&self, grant: Grant<'_>, assertion: &Secret) -> Result<AccessToken, CredentialError> {
        self.application.exchange(self.kind(), grant, ClientAuth::Assertion(assertion)).await
    }

    async fn obtain(&self, grant: Grant<'_>) -> Result<AccessToken, CredentialError> {
        let (result, assertion) = match &self.source {
            Source::File(file) => {
                let exchange = |assertion: Secret| async move { self.exchange(grant, &assertion).await };
                file.exchange(&aadsts::STALE_ASSERTION, exchange).await.map_err(|e| self.unreadable(e))?
            }
            Source::Command { command, timeout } => self.run_command(command, *timeout, grant).await?,
        };
        result.map_err(|error| {
            error
                .with_detail(aadsts::NO_MATCHING_FEDERATION, || {
                    format!("presented {}", describe_federated_claims(&assertion))
                })
                .with_detail(aadsts::ASSERTION_EXPIRED, || {
                    format!("the {} yielded an expired assertion; make sure it is refreshed", self.source_name())
                })
        })
    }

    fn source_name(&self) -> String {
        match &self.source {
            Source::File(file) => format!("client assertion file {}", file.paths()[0].display()),
            Source::Command { command, .. } => format!("assertion command {:?}", command[0]),
        }
    }

    fn unavailable(&self, reason: String) -> CredentialError {
        CredentialError::Unavailable { credential: self.kind(), reason }
    }

    fn unreadable(&self, error: LoadError) -> CredentialError {
        self.unavailable(match error {
            LoadError::Read { path, reason } => {
                format!("cannot read the client assertion file {}: {reason}", path.display())
            }
            LoadError::Invalid(problem) => format!("{} {problem}", self.source_name()),
        })
    }
}

#[async_trait]
impl Credential for ClientAssertionCredential {
    fn kind(&self) -> CredentialKind {
        CredentialKind::ClientAssertion
    }

    async fn get_token(&self, resource: &str) -> Result<AccessToken, CredentialError> {
        self.obtain(Grant::App(resource)).await
    }

    async fn on_behalf_of(&self, request: OnBehalfOf<'_>) -> Result<AccessToken, CredentialError> {
        self.obtain(Grant::OnBehalfOf(request)).await
    }

    fn status(&self) -> LinkStatus {
        match &self.source {
            Source::File(file) if file.paths()[0].is_file() => {
                LinkStatus::Usable(format!("client assertion file {} exists", file.paths()[0].display()))
            }
            Source::File(file) => LinkStatus::NotUsable(format!(
                "client assertion file {} does not exist (yet)",
                file.paths()[0].display()
            )),
            Source::Command { command, .. } => {
                LinkStatus::Usable(format!("runs {:?} for every exchange (not run by check)", command[0]))
            }
        }
    }
}

/// Why a command yielded no assertion.
enum Failure {
    /// The program does not exist: the credential cannot run here.
    NotFound(String),
    /// It ran and failed, or took too long.
    Failed(String),
}

/// Runs `command` (program and arguments, no shell) and returns its stdout.
async fn run(command: &[String], timeout: Duration) -> Result<String, Failure> {
    let program = command[0].as_str();
    let args: Vec<&str> = command[1..].iter().map(String::as_str).collect();
    let output = process::run(program, &args, &[], timeout).await.map_err(|e| match e {
        RunError::NotFound => Failure::NotFound(format!("assertion command {program:?} not found")),
        RunError::Start(e) => Failure::Failed(format!("cannot run assertion command {program:?}: {e}")),
        RunError::Wait(e) => Failure::Failed(format!("waiting for assertion command {program:?}: {e}")),
        RunError::TimedOut => Failure::Failed(format!(
            "assertion command {program:?} did not finish within {} s and was stopped",
            timeout.as_secs()
        )),
    })?;
    if !output.status.success() {
        return Err(Failure::Failed(format!(
            "assertion command {program:?} failed ({}){}",
            output.status,
            quote_stderr(&output.stderr)
        )));
    }
    Ok(output.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[tokio::test]
    async fn a_command_prints_the_assertion() {
        let out = run(&argv(&["sh", "-c", "echo header.payload.sig"]), Duration::from_secs(10)).await;
        assert_eq!(out.ok().unwrap().trim(), "header.payload.sig");
    }

    #[tokio::test]
    async fn a_failing_command_quotes_its_stderr() {
        let Err(Failure::Failed(reason)) =
            run(&argv(&["sh", "-c", "echo 'not signed in' >&2; exit 3"]), Duration::from_secs(10)).await
        else {
            panic!("expected a failure");
        };
        assert!(reason.contains("not signed in") && reason.contains('3'), "{reason}");
    }

    #[tokio::test]
    async fn a_missing_program_is_unavailable_and_a_slow_one_is_stopped() {
        assert!(matches!(
            run(&argv(&["/nonexistent/tokenrelay-helper"]), Duration::from_secs(1)).await,
            Err(Failure::NotFound(_))
        ));
        let Err(Failure::Failed(reason)) = run(&argv(&["sleep", "30"]), Duration::from_millis(200)).await else {
            panic!("expected a timeout");
        };
        assert!(reason.contains("did not finish"), "{reason}");
    }

    #[test]
    fn stderr_is_quoted_briefly() {
        assert_eq!(quote_stderr(""), "");
        assert_eq!(quote_stderr("\n  oops \nmore"), ": oops");
        assert!(quote_stderr(&"x".repeat(1000)).len() < 400);
    }
}
