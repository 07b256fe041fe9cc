//! Logging: human-readable on a terminal, JSON otherwise; `RUST_LOG` overrides the level.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. Logs go to stderr; stdout carries only what a user
/// asked for (the `token` output, the `--dev` export line).
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.level));
    let terminal = std::io::stderr().is_terminal();
    let json = match config.format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !terminal,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only make sense on a terminal; in files and pipes they are noise.
        .with_ansi(terminal);
    // A second initialisation (tests) is harmless; ignore it.
    let _ = if json { builder.json().flatten_event(true).try_init() } else { builder.try_init() };
}
