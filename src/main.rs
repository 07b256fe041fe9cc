//! The `tokenrelay` binary: parse the command line and hand over to [`tokenrelay::app`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    tokenrelay::app::run(tokenrelay::cli::Cli::parse())
}
