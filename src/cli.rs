//! The command line. Each subcommand maps its flags onto configuration overrides, so a
//! flag, a `TOKENRELAY_*` variable and a file key are three spellings of one setting.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{CacheFlags, DevFlags, FlagOverrides, LoadOptions, PersistenceFlags, ServerFlags};

/// Serve Azure managed-identity tokens to the containers of a pod, or to your laptop.
///
/// Applications point IDENTITY_ENDPOINT (App Service style) or AZURE_POD_IDENTITY_AUTHORITY_HOST
/// (IMDS style) at tokenrelay and get Microsoft Entra ID tokens with their unmodified Azure
/// SDKs. tokenrelay obtains them upstream (workload identity, client secret or certificate,
/// Azure Pipelines, managed identity, Azure CLI), caches them, and refreshes them ahead of expiry.
#[derive(Debug, Parser)]
#[command(name = "tokenrelay", version, propagate_version = true)]
pub struct Cli {
    /// TOML configuration file (docs/configuration.md lists every key).
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
    /// Inspect or empty the persistent token cache ([cache.persistence]).
    ///
    /// Uses the same configuration as `serve`; persistence is treated as enabled.
    Cache(CacheArgs),
    /// Sign in as a user (device code flow, or a browser) for identities with a `user` credential.
    ///
    /// Stores the refresh token in the persistent cache ([cache.persistence]; encrypted unless
    /// allow_unencrypted_storage) and writes the AuthenticationRecord that names the account.
    Login(LoginArgs),
}

#[derive(Debug, Args)]
#[group(id = "method", required = true, multiple = false, args = ["device_code", "browser"])]
pub struct LoginArgs {
    /// Sign in with the device code flow: open the URL shown (on any device), enter the code.
    #[arg(long)]
    pub device_code: bool,

    /// Sign in in a browser on this machine: the authorization code flow with PKCE, redirected
    /// to a loopback port (http://localhost:<free port>).
    #[arg(long)]
    pub browser: bool,

    /// With --browser: print the sign-in URL instead of opening the system browser.
    #[arg(long, conflicts_with = "device_code")]
    pub no_open: bool,

    /// With --browser: how long to wait for the sign-in to come back, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 300, conflicts_with = "device_code")]
    pub timeout: u64,

    /// The tenant to sign in to; default `organizations` (any work or school account).
    #[arg(long, value_name = "TENANT")]
    pub tenant: Option<String>,

    /// The public client application; default the one the Azure SDKs' DeviceCodeCredential
    /// uses (04b07795-8ddb-461a-bbee-02f9e1bf7b46).
    #[arg(long, value_name = "ID")]
    pub client_id: Option<String>,

    /// What to consent to at sign-in; default https://management.azure.com/.default.
    #[arg(long, value_name = "SCOPE")]
    pub scope: Option<String>,

    /// Where to write the AuthenticationRecord; default `<name>.record.json` beside the cache
    /// file. Point the `user` credential's authentication_record at it.
    #[arg(long, value_name = "PATH")]
    pub record: Option<PathBuf>,

    #[command(flatten)]
    pub persist: PersistArgs,
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

    #[command(flatten)]
    pub persist: PersistArgs,
}

/// Flags of `[cache.persistence]`.
#[derive(Debug, Args)]
pub struct PersistArgs {
    /// Keep tokens across restarts in the persistent cache (cache.persistence.enabled).
    #[arg(long)]
    pub persist: bool,

    /// The cache file (cache.persistence.path); implies --persist.
    #[arg(long, value_name = "PATH")]
    pub persist_path: Option<PathBuf>,

    /// Where the cache's key comes from (cache.persistence.backend); implies --persist.
    #[arg(long, value_name = "BACKEND", value_parser = ["auto", "keyring", "file"])]
    pub persist_backend: Option<String>,

    /// A file holding the cache's 256-bit key (cache.persistence.key_file); implies --persist.
    #[arg(long, value_name = "PATH")]
    pub persist_key_file: Option<PathBuf>,

    /// Write tokens in plaintext when no key is available
    /// (cache.persistence.allow_unencrypted_storage). Anyone who can read the file can use them.
    #[arg(long)]
    pub allow_unencrypted_storage: bool,
}

impl PersistArgs {
    /// The overrides these flags make; `force` turns persistence on regardless.
    fn overrides(&self, force: bool) -> Option<CacheFlags> {
        let implied = self.persist_path.is_some() || self.persist_backend.is_some() || self.persist_key_file.is_some();
        let persistence = PersistenceFlags {
            enabled: (force || self.persist || implied).then_some(true),
            backend: self.persist_backend.clone(),
            path: self.persist_path.clone(),
            key_file: self.persist_key_file.clone(),
            allow_unencrypted_storage: self.allow_unencrypted_storage.then_some(true),
        };
        let any = persistence.enabled.is_some() || persistence.allow_unencrypted_storage.is_some();
        any.then_some(CacheFlags { persistence })
    }
}

#[derive(Debug, Args)]
pub struct CacheArgs {
    #[command(subcommand)]
    pub action: CacheAction,
}

#[derive(Debug, Subcommand)]
pub enum CacheAction {
    /// List the persisted tokens: identity, resource, expiry and a short fingerprint (never
    /// the token itself).
    List {
        #[command(flatten)]
        persist: PersistArgs,
    },
    /// Remove persisted tokens: all of them, or one identity's. A running `serve` keeps the
    /// tokens it holds in memory.
    Clear {
        /// Only this identity's tokens (its configuration name or client id).
        #[arg(long, value_name = "NAME")]
        identity: Option<String>,

        #[command(flatten)]
        persist: PersistArgs,
    },
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

    #[command(flatten)]
    pub persist: PersistArgs,
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

/// The development flags of commands that have none.
static NO_DEV: DevArgs = DevArgs { dev: false, dev_identities: Vec::new() };
/// `login` loads identities as development mode does (see `load_options`).
static LOGIN_DEV: DevArgs = DevArgs { dev: true, dev_identities: Vec::new() };

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
            // `cache` serves nothing either.
            Command::Cache(_) => (ServerFlags { app_service: Some(false), ..ServerFlags::default() }, &NO_DEV),
            // `login` runs before any identity can use its result (a `user` credential's record
            // does not exist yet), so it loads the configuration without validating identities,
            // as development mode does; it uses only the authority and [cache.persistence].
            Command::Login(_) => (ServerFlags { app_service: Some(false), ..ServerFlags::default() }, &LOGIN_DEV),
        };
        let cache = match &self.command {
            Command::Serve(args) => args.persist.overrides(false),
            Command::Token(args) => args.persist.overrides(false),
            Command::Cache(CacheArgs {
                action: CacheAction::List { persist } | CacheAction::Clear { persist, .. },
            }) => persist.overrides(true),
            Command::Login(args) => args.persist.overrides(true),
            Command::Check(_) => None,
        };
        let has_server = server.listen.is_some() || server.identity_header.is_some() || server.app_service.is_some();
        let dev = DevFlags {
            enabled: dev.dev.then_some(true),
            identities: (!dev.dev_identities.is_empty()).then(|| dev.dev_identities.clone()),
        };
        let has_dev = dev.enabled.is_some() || dev.identities.is_some();
        LoadOptions {
            file: self.config.clone(),
            flags: FlagOverrides { server: has_server.then_some(server), dev: has_dev.then_some(dev), cache },
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
    fn persistence_flags_become_overrides() {
        let flags = |args: &[&str]| serde_json::to_value(Cli::parse_from(args).load_options().flags).unwrap();
        let serve = flags(&["tokenrelay", "serve", "--persist-path", "/tmp/c"]);
        assert_eq!(serve["cache"]["persistence"]["enabled"], true, "a path implies --persist");
        assert_eq!(serve["cache"]["persistence"]["path"], "/tmp/c");
        assert!(flags(&["tokenrelay", "serve"]).get("cache").is_none(), "no flag, no override");
        let list = flags(&["tokenrelay", "cache", "list"]);
        assert_eq!(list["cache"]["persistence"]["enabled"], true, "cache commands force persistence on");
        let clear = flags(&["tokenrelay", "cache", "clear", "--identity", "app", "--allow-unencrypted-storage"]);
        assert_eq!(clear["cache"]["persistence"]["allow_unencrypted_storage"], true);
        assert_eq!(clear["server"]["app_service"], false);
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

    #[test]
    fn login_takes_exactly_one_method() {
        let parse = |args: &[&str]| Cli::try_parse_from(args);
        assert!(parse(&["tokenrelay", "login"]).is_err(), "a method is required");
        assert!(parse(&["tokenrelay", "login", "--device-code", "--browser"]).is_err());
        assert!(parse(&["tokenrelay", "login", "--device-code", "--no-open"]).is_err(), "--no-open is for --browser");
        let Ok(Cli { command: Command::Login(args), .. }) = parse(&["tokenrelay", "login", "--browser", "--no-open"])
        else {
            panic!("--browser --no-open parses");
        };
        assert!(args.browser && args.no_open && !args.device_code);
        assert_eq!(args.timeout, 300);
    }
}
