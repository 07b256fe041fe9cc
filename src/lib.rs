//! tokenrelay: a sidecar that serves Azure managed-identity token endpoints to the other
//! containers of a pod (or to a laptop), backed by a cached upstream credential chain.
//!
//! # Layout
//!
//! - [`cli`]: the command line (clap); [`app`] runs its subcommands.
//! - [`config`]: figment layering and validation into a typed [`config::Config`].
//! - [`server`]: the HTTP surface (both managed-identity flavours, health, dev discovery).
//! - [`broker`]: identities, the token cache, refresh and prefetch. Knows nothing of HTTP.
//! - [`credential`]: how tokens are obtained upstream. Knows nothing of caching.
//! - [`store`]: the optional persistent cache (encrypted file, key in a file or the keyring).
//! - [`secret`], [`clock`], [`telemetry`]: small shared pieces.

pub mod aadsts;
pub mod app;
pub mod broker;
pub mod cli;
pub mod clock;
pub mod config;
pub mod credential;
pub mod dev_issuer;
pub mod secret;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod token;
pub mod trust;
