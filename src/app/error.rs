//! [`AppError`]: why a subcommand failed, and the one place a failure becomes an exit status.

use std::fmt;
use std::process::ExitCode;

/// Exit status for a configuration or command line that cannot work (`EX_USAGE` of
/// sysexits.h): retrying the same invocation will fail the same way.
const EXIT_USAGE: u8 = 64;

/// Why a subcommand failed. The text is what the user reads on standard error after
/// `tokenrelay: `; it never contains a secret (secrets travel as `Secret`, which prints
/// `<redacted>`).
#[derive(Debug)]
pub enum AppError {
    /// The configuration or the command line cannot work: exit 64.
    Usage(String),
    /// Something failed while running (a port taken, an upstream refusal, a file that cannot
    /// be written): exit 1.
    Runtime(String),
    /// A failure the subcommand has already described on standard error (`check --fetch`
    /// reports each identity that failed): exit 1 without another line.
    Reported,
}

impl AppError {
    /// The exit status for `result`, after printing the failure's text.
    pub fn exit(result: Result<(), AppError>) -> ExitCode {
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                if !matches!(error, Self::Reported) {
                    eprintln!("tokenrelay: {error}");
                }
                error.code()
            }
        }
    }

    fn code(&self) -> ExitCode {
        match self {
            Self::Usage(_) => ExitCode::from(EXIT_USAGE),
            Self::Runtime(_) | Self::Reported => ExitCode::FAILURE,
        }
    }
}

impl fmt::Display for AppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(text) | Self::Runtime(text) => f.write_str(text),
            Self::Reported => f.write_str("failed (reported above)"),
        }
    }
}

/// The wiring's helpers fail with a sentence; failing while running is what they mean.
impl From<String> for AppError {
    fn from(text: String) -> Self {
        Self::Runtime(text)
    }
}

impl From<&str> for AppError {
    fn from(text: &str) -> Self {
        Self::Runtime(text.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_64_and_everything_else_1() {
        assert_eq!(AppError::exit(Ok(())), ExitCode::SUCCESS);
        assert_eq!(AppError::exit(Err(AppError::Usage("bad key".into()))), ExitCode::from(64));
        assert_eq!(AppError::exit(Err(AppError::Runtime("port taken".into()))), ExitCode::FAILURE);
        assert_eq!(AppError::exit(Err(AppError::Reported)), ExitCode::FAILURE);
        assert_eq!(AppError::from("text").to_string(), "text");
    }
}
