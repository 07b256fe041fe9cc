//! The command line. Each subcommand maps its flags onto configuration overrides, so a
//! flag, a `TOKENRELAY_*` variable and a file key are three spellings of one setting.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{DevFlags, FlagOverrides, LoadOptions, ServerFlags};

/// Serve Azure managed-identity tokens to the containers of a pod, or to your laptop.
///
/// Applications point IDENTITY_ENDPOINT (App Service style) or AZURE_POD_IDENTITY_AUTHORITY_HOST
/// (IMDS style) at tokenrelay and get Microsoft Entra ID tokens with their unmodified Azure
/// SDKs. tokenrelay obtains them upstream (workload identity, client secret or certificate,
/// Azure Pipelines, managed identity, Azure CLI), caches them, and refreshes them ahead of expiry.
#[derive(Debug, Parser)]
#[command(name = "tokenrelay", version, propagate_version = true)]
pub struct Cli {
    /// TOML configuration file (see the README for every key).
    #[arg(long, global = true, env = "TOKENRELAY_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the token server (both managed-identity endpoints, /healthz, /readyz).
    ///
    /// Start with `tokenrelay serve --dev` for local tokens that need no Azure account.
    Serve(ServeArgs),
    /// Obtain one token through the configured identity and print the JSON body an SDK would
    /// receive.
    ///
    /// Uses the same configuration, cache and credential code as `serve`; useful in scripts
    /// and to debug a configuration without starting a server.
    Token(TokenArgs),
    /// Validate the configuration and print the effective settings with secrets redacted.
    ///
    /// Exits non-zero with a message naming the key and its source on any problem.
    Check(CheckArgs),
}

/// Flags shared by every subcommand that builds identities.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Use the embedded development issuer: real JWTs signed by an ephemeral key, accepted by
    /// no Azure service. Needs no Azure account and no configuration.
    #[arg(long)]
    pub dev: bool,

    /// Under --dev, also serve this client id (repeatable), to try user-assigned code paths.
    #[arg(long = "dev-identity", value_name = "CLIENT_ID", requires = "dev")]
    pub dev_identities: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. Anything but loopback exposes tokens to the network.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,

    /// Secret callers must send in X-IDENTITY-HEADER (App Service style). Prefer
    /// server.identity_header_file in production: flags are visible in the process list.
    #[arg(long, value_name = "SECRET")]
    pub identity_header: Option<String>,

    #[command(flatten)]
    pub dev: DevArgs,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The resource (App ID URI), such as https://vault.azure.net. A trailing /.default is removed.
    #[arg(long, value_name = "URI")]
    pub resource: String,

    /// The identity's client id; the default identity when absent.
    #[arg(long, value_name = "ID")]
    pub client_id: Option<String>,

    /// Ask for a token of this tenant instead of the identity's own; it must be listed in
    /// the identity's additionally_allowed_tenants. Bypasses the cache.
    #[arg(long, value_name = "TENANT")]
    pub tenant: Option<String>,

    #[command(flatten)]
    pub dev: DevArgs,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Also obtain one token per identity through its chain (contacts the upstream); exits
    /// non-zero when any identity fails.
    #[arg(long)]
    pub fetch: bool,

    /// The resource --fetch asks for; default: the identity's first prefetch, else
    /// https://management.azure.com.
    #[arg(long, value_name = "URI", requires = "fetch")]
    pub resource: Option<String>,

    #[command(flatten)]
    pub dev: DevArgs,
}

impl Cli {
    /// The configuration inputs this invocation names.
    pub fn load_options(&self) -> LoadOptions {
        let (server, dev) = match &self.command {
            Command::Serve(args) => (
                ServerFlags {
                    listen: args.listen.map(|a| a.to_string()),
                    identity_header: args.identity_header.clone(),
                    app_service: None,
                },
                &args.dev,
            ),
            // `token` serves nothing, so the App Service flavour's secret is not required.
            Command::Token(args) => (ServerFlags { app_service: Some(false), ..ServerFlags::default() }, &args.dev),
            Command::Check(args) => (ServerFlags::default(), &args.dev),
        };
        let has_server = server.listen.is_some() || server.identity_header.is_some() || server.app_service.is_some();
        let dev = DevFlags {
            enabled: dev.dev.then_some(true),
            identities: (!dev.dev_identities.is_empty()).then(|| dev.dev_identities.clone()),
        };
        let has_dev = dev.enabled.is_some() || dev.identities.is_some();
        LoadOptions {
            file: self.config.clone(),
            flags: FlagOverrides { server: has_server.then_some(server), dev: has_dev.then_some(dev) },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_become_overrides() {
        let cli = Cli::parse_from(["tokenrelay", "serve", "--listen", "127.0.0.1:0", "--dev", "--dev-identity", "abc"]);
        let options = cli.load_options();
        let flags = serde_json::to_value(&options.flags).unwrap();
        assert_eq!(flags["server"]["listen"], "127.0.0.1:0");
        assert_eq!(flags["dev"]["enabled"], true);
        assert_eq!(flags["dev"]["identities"][0], "abc");
        assert!(flags["server"].get("identity_header").is_none());
    }
}
