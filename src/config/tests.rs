//! Configuration layering and validation: every error names its key and source.

use std::collections::HashMap;
use std::io::Write;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};

use super::*;

fn figment(toml: &str) -> Figment {
    Figment::from(Serialized::defaults(RawConfig::default())).merge(Toml::string(toml))
}

fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: HashMap<String, String> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    Config::from_figment(&figment(toml), &env)
}

const SECRET_IDENTITY: &str = r#"
[server]
identity_header = "hdr-0123456789abcdef"

[[identities]]
name = "app"
client_id = "11111111-1111-1111-1111-111111111111"
tenant_id = "contoso.onmicrosoft.com"
prefetch = ["https://vault.azure.net/.default"]
credentials = [{ kind = "client_secret", secret = "s3cret" }]
"#;

#[test]
fn a_complete_file_loads_with_defaults_filled_in() {
    let config = load(SECRET_IDENTITY, &[]).unwrap();
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.server.app_service_path, "/msi/token");
    assert_eq!(config.upstream.authority_host, "https://login.microsoftonline.com/");
    assert_eq!(config.identity_source, IdentitySource::Configuration);
    let identity = &config.identities[0];
    assert!(identity.default, "a lone identity is the default");
    assert_eq!(identity.prefetch, ["https://vault.azure.net"]);
    assert!(
        matches!(&identity.credentials[0], CredentialConfig::ClientSecret { secret, secret_file: None } if secret.expose() == "s3cret")
    );
}

#[test]
fn check_output_redacts_every_secret() {
    let config = load(SECRET_IDENTITY, &[]).unwrap();
    let printed = toml::to_string_pretty(&config).unwrap();
    assert!(!printed.contains("s3cret") && !printed.contains("hdr-0123456789abcdef"), "{printed}");
    assert!(printed.contains("<redacted>"));
    assert!(!format!("{config:?}").contains("s3cret"));
}

#[test]
fn the_identity_comes_from_the_azure_environment_when_none_is_configured() {
    let env = [
        ("AZURE_CLIENT_ID", "22222222-2222-2222-2222-222222222222"),
        ("AZURE_TENANT_ID", "33333333-3333-3333-3333-333333333333"),
        ("AZURE_FEDERATED_TOKEN_FILE", "/var/run/secrets/azure/tokens/azure-identity-token"),
        ("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.us/"),
    ];
    let config = load("[server]\nidentity_header = \"h-0123456789abcdef\"", &env).unwrap();
    assert_eq!(config.identity_source, IdentitySource::AzureEnvironment);
    assert_eq!(config.upstream.authority_host, "https://login.microsoftonline.us/");
    let identity = &config.identities[0];
    assert_eq!(identity.client_id, "22222222-2222-2222-2222-222222222222");
    let kinds: Vec<&str> = identity.credentials.iter().map(|c| c.kind().as_str()).collect();
    assert_eq!(
        kinds,
        [
            "environment",
            "workload_identity",
            "managed_identity",
            "azure_cli",
            "azure_powershell",
            "azure_developer_cli"
        ],
        "the default chain"
    );
    assert!(matches!(&identity.credentials[0], CredentialConfig::NotConfigured { reason, .. }
        if reason.contains("AZURE_CLIENT_SECRET")));
    assert!(matches!(&identity.credentials[1], CredentialConfig::WorkloadIdentity { token_file }
        if token_file.ends_with("azure-identity-token")));
}

#[test]
fn nothing_configured_says_what_to_do() {
    let error = load("", &[]).unwrap_err().to_string();
    assert!(error.contains("no identity configured") && error.contains("--dev"), "{error}");
}

#[test]
fn errors_name_the_key_and_the_file() {
    let mut file = tempfile("[server]\nlisten = \"not an address\"\nidentity_header = \"h-0123456789abcdef\"\n");
    file.flush().unwrap();
    let path = file.path.clone();
    let figment = Figment::from(Serialized::defaults(RawConfig::default())).merge(Toml::file(&path));
    let env = HashMap::from([
        ("AZURE_CLIENT_ID".to_owned(), "c".to_owned()),
        ("AZURE_TENANT_ID".to_owned(), "t".to_owned()),
        ("AZURE_CLIENT_SECRET".to_owned(), "s".to_owned()),
    ]);
    let error = Config::from_figment(&figment, &env).unwrap_err();
    assert_eq!(error.key, "server.listen");
    assert!(error.origin.contains(&path.display().to_string()), "{}", error.origin);
    assert!(error.problem.contains("not an address"), "{}", error.problem);
}

#[test]
fn type_errors_and_unknown_keys_are_reported_without_a_serde_dump() {
    let error = load("[server]\nshutdown_grace_secs = \"ten\"", &[]).unwrap_err();
    assert_eq!(error.key, "server.shutdown_grace_secs");
    let error = load("[server]\nlisten_addr = \"127.0.0.1:1\"", &[]).unwrap_err();
    assert!(error.to_string().contains("listen_addr"), "{error}");
}

#[test]
fn invalid_values_are_refused() {
    let base = SECRET_IDENTITY;
    let cases: &[(&str, &str)] = &[
        ("[upstream]\nauthority_host = \"http://login.example.com\"", "upstream.authority_host"),
        ("[upstream]\nauthority_host = \"ftp://x\"", "upstream.authority_host"),
        ("[server]\nimds_probe = \"lenient\"", "server.imds_probe"),
        ("[server]\napp_service_path = \"msi\"", "server.app_service_path"),
        ("[server]\napp_service_path = \"/healthz\"", "server.app_service_path"),
        ("[log]\nformat = \"xml\"", "log.format"),
        ("[log]\nrequests = \"verbose\"", "log.requests"),
        ("[cache]\nmax_entries = 0", "cache.max_entries"),
        ("[cache]\nnew_keys_per_minute = 0", "cache.new_keys_per_minute"),
        ("[cache]\nnew_keys_burst = 0", "cache.new_keys_burst"),
    ];
    for (extra, key) in cases {
        // Later tables of the same name are not valid TOML, so build each case on its own.
        let toml = format!("{extra}\n{}", base.replace("[server]\nidentity_header = \"hdr-0123456789abcdef\"\n", ""));
        let toml = if extra.starts_with("[server]") {
            toml.replacen("[server]\n", "[server]\nidentity_header = \"hdr-0123456789abcdef\"\n", 1)
        } else {
            format!("[server]\nidentity_header = \"hdr-0123456789abcdef\"\n{toml}")
        };
        let error = load(&toml, &[]).unwrap_err();
        assert_eq!(&error.key, key, "{toml}\n=> {error}");
    }
}

#[test]
fn request_logging_defaults_to_refusals_and_takes_three_values() {
    assert_eq!(load(SECRET_IDENTITY, &[]).unwrap().log.requests, RequestLog::Errors);
    for (value, expected) in [("all", RequestLog::All), ("errors", RequestLog::Errors), ("none", RequestLog::None)] {
        let toml = format!("[log]\nrequests = \"{value}\"\n{SECRET_IDENTITY}");
        assert_eq!(load(&toml, &[]).unwrap().log.requests, expected, "{value}");
    }
    let error = load(&format!("[log]\nrequests = \"All\"\n{SECRET_IDENTITY}"), &[]).unwrap_err();
    assert_eq!(error.key, "log.requests");
    assert!(error.problem.contains("\"all\"") && error.problem.contains("\"none\""), "{}", error.problem);
}

#[test]
fn connection_deadlines_and_the_admin_limit_have_defaults_and_bounds() {
    let config = load(SECRET_IDENTITY, &[]).unwrap();
    assert_eq!(config.server.write_timeout_secs, 5);
    assert_eq!(config.server.keep_alive_timeout_secs, 60);
    assert_eq!(config.server.admin_max_connections, 64);
    let set = |line: &str| SECRET_IDENTITY.replacen("[server]\n", &format!("[server]\n{line}\n"), 1);
    let config =
        load(&set("write_timeout_secs = 2\nkeep_alive_timeout_secs = 3\nadmin_max_connections = 4"), &[]).unwrap();
    assert_eq!(
        (config.server.write_timeout_secs, config.server.keep_alive_timeout_secs, config.server.admin_max_connections),
        (2, 3, 4)
    );
    for (line, key) in [
        ("write_timeout_secs = 0", "server.write_timeout_secs"),
        ("keep_alive_timeout_secs = 0", "server.keep_alive_timeout_secs"),
        ("admin_max_connections = 0", "server.admin_max_connections"),
        ("write_timeout_secs = 86401", "server.write_timeout_secs"),
        ("keep_alive_timeout_secs = 9223372036854775807", "server.keep_alive_timeout_secs"),
        ("header_read_timeout_secs = 86401", "server.header_read_timeout_secs"),
    ] {
        let error = load(&set(line), &[]).unwrap_err();
        assert_eq!(error.key, key, "{line} => {error}");
    }
}

#[test]
fn loopback_http_authorities_are_allowed_for_tests() {
    for host in ["http://127.0.0.1:9999", "http://localhost:1", "http://[::1]:2"] {
        let toml = format!("[upstream]\nauthority_host = \"{host}\"\n{SECRET_IDENTITY}");
        assert!(load(&toml, &[]).is_ok(), "{host}");
    }
}

#[test]
fn the_app_service_flavour_needs_a_secret_except_in_dev() {
    let without_header = SECRET_IDENTITY.replace("[server]\nidentity_header = \"hdr-0123456789abcdef\"\n", "");
    let error = load(&without_header, &[]).unwrap_err();
    assert_eq!(error.key, "server.identity_header");
    assert!(load(&format!("[server]\napp_service = false\n{without_header}"), &[]).is_ok());
    assert!(load("[dev]\nenabled = true", &[]).is_ok());
}

#[test]
fn secrets_come_from_files_and_empty_files_are_refused() {
    let file = tempfile("  from-file-0123456789\n");
    let toml = format!(
        "[server]\nidentity_header_file = \"{}\"\n[[identities]]\nclient_id = \"c\"\ntenant_id = \"t\"\ncredentials = [{{ kind = \"client_secret\", secret_file = \"{}\" }}]",
        file.path.display(),
        file.path.display()
    );
    let config = load(&toml, &[]).unwrap();
    assert_eq!(config.server.identity_header.as_ref().unwrap().expose(), "from-file-0123456789");

    let empty = tempfile("\n");
    let toml = toml.replacen(&file.path.display().to_string(), &empty.path.display().to_string(), 1);
    let error = load(&toml, &[]).unwrap_err();
    assert_eq!(error.key, "server.identity_header_file");
    assert!(error.problem.contains("is empty"));

    let toml = "[server]\nidentity_header_file = \"/nonexistent/tokenrelay\"\n[dev]\nenabled = true";
    let error = load(toml, &[]).unwrap_err();
    assert!(error.problem.contains("/nonexistent/tokenrelay"), "{error}");
}

#[test]
fn a_short_or_overlong_identity_header_is_refused_with_its_length_and_not_its_value() {
    let short = SECRET_IDENTITY.replace("hdr-0123456789abcdef", "x");
    let error = load(&short, &[]).unwrap_err();
    assert_eq!(error.key, "server.identity_header");
    assert!(error.problem.contains("1 bytes long") && error.problem.contains("at least 16"), "{error}");
    assert!(!error.to_string().contains("\"x\""), "{error}");
    let fifteen = SECRET_IDENTITY.replace("hdr-0123456789abcdef", "0123456789abcde");
    assert!(load(&fifteen, &[]).unwrap_err().problem.contains("15 bytes long"));
    let sixteen = SECRET_IDENTITY.replace("hdr-0123456789abcdef", "0123456789abcdef");
    assert!(load(&sixteen, &[]).is_ok());
    // Surrounding blanks are trimmed before counting, as before use.
    let padded = SECRET_IDENTITY.replace("hdr-0123456789abcdef", "   0123456789abcde   ");
    assert!(load(&padded, &[]).is_err());
    // The constant-time check holds at most 256 bytes.
    let longest = SECRET_IDENTITY.replace("hdr-0123456789abcdef", &"k".repeat(256));
    assert!(load(&longest, &[]).is_ok());
    let longer = SECRET_IDENTITY.replace("hdr-0123456789abcdef", &"k".repeat(257));
    let error = load(&longer, &[]).unwrap_err();
    assert!(error.problem.contains("257 bytes long") && error.problem.contains("at most 256"), "{error}");

    let file = tempfile("short\n");
    let toml = SECRET_IDENTITY.replace(
        "identity_header = \"hdr-0123456789abcdef\"",
        &format!("identity_header_file = \"{}\"", file.path.display()),
    );
    let error = load(&toml, &[]).unwrap_err();
    assert_eq!(error.key, "server.identity_header_file");
    assert!(error.problem.contains("5 bytes long"), "{error}");
}

#[test]
fn allowed_hosts_are_normalised_and_checked() {
    let with = |hosts: &str| {
        load(&SECRET_IDENTITY.replacen("[server]\n", &format!("[server]\nallowed_hosts = {hosts}\n"), 1), &[])
    };
    let config =
        with(r#"["Host.Docker.Internal.", "tokenrelay_1", "[::ffff:10.0.0.5]", "FD00::1", "tokenrelay_1"]"#).unwrap();
    assert_eq!(config.server.allowed_hosts, ["host.docker.internal", "tokenrelay_1", "10.0.0.5", "fd00::1"]);
    // One string of comma-separated names: what an environment variable holds.
    let config = with(r#""host.docker.internal, relay""#).unwrap();
    assert_eq!(config.server.allowed_hosts, ["host.docker.internal", "relay"]);
    for bad in [r#"["relay:8080"]"#, r#"["http://relay"]"#, r#"[""]"#, r#"["*.example"]"#, r#"["a b"]"#] {
        let error = with(bad).unwrap_err();
        assert_eq!(error.key, "server.allowed_hosts", "{bad}");
        assert!(error.problem.contains("without a scheme or port"), "{bad}: {error}");
    }
}

#[test]
fn identities_must_be_unambiguous() {
    let two = |default_a: bool, default_b: bool, id_b: &str| {
        format!(
            "[server]\nidentity_header = \"h-0123456789abcdef\"\n\
             [[identities]]\nname = \"a\"\nclient_id = \"A\"\ntenant_id = \"t\"\ndefault = {default_a}\ncredentials = [{{ kind = \"client_secret\", secret = \"s\" }}]\n\
             [[identities]]\nname = \"b\"\nclient_id = \"{id_b}\"\ntenant_id = \"t\"\ndefault = {default_b}\ncredentials = [{{ kind = \"client_secret\", secret = \"s\" }}]\n"
        )
    };
    assert!(load(&two(true, false, "B"), &[]).is_ok());
    assert!(load(&two(false, false, "B"), &[]).is_ok(), "no default is allowed; selectors are then required");
    assert!(load(&two(true, true, "B"), &[]).unwrap_err().problem.contains("more than one"));
    assert!(load(&two(true, false, "a"), &[]).unwrap_err().problem.contains("client_id"));
}

#[test]
fn tenant_ids_are_validated() {
    let toml = SECRET_IDENTITY.replace("contoso.onmicrosoft.com", "contoso/../evil");
    assert_eq!(load(&toml, &[]).unwrap_err().key, "identities.0.tenant_id");
}

#[test]
fn dev_mode_serves_configured_identities_the_default_and_extra_ids() {
    let toml = "[dev]\nenabled = true\nidentities = [\"user-assigned-1\"]\n\
                [[identities]]\nname = \"app\"\nclient_id = \"app-id\"\ncredentials = [{ kind = \"client_secret\", secret_file = \"/missing\" }]";
    let config = load(toml, &[]).unwrap();
    let ids: Vec<&str> = config.identities.iter().map(|i| i.client_id.as_str()).collect();
    assert_eq!(ids, ["app-id", DEV_CLIENT_ID, "user-assigned-1"]);
    assert!(config.identities[0].default, "the lone configured identity stays the default");
    assert!(config.identities.iter().all(|i| matches!(i.credentials[..], [CredentialConfig::Dev])));
}

/// A file that is removed when dropped.
struct TempFile {
    path: std::path::PathBuf,
    file: std::fs::File,
}

impl TempFile {
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn tempfile(contents: &str) -> TempFile {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let path = std::env::temp_dir().join(format!("tokenrelay-config-test-{}-{n}", std::process::id()));
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(contents.as_bytes()).unwrap();
    TempFile { path, file }
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        /// Arbitrary values for every kind of key: validation never panics, and a refusal
        /// always names a key and says what is wrong.
        #[test]
        fn any_value_is_accepted_or_refused_with_a_named_key(
            key in prop::sample::select(vec![
                "server.listen", "server.admin_listen", "server.app_service_path", "server.imds_probe",
                "server.max_header_bytes", "server.write_timeout_secs", "server.keep_alive_timeout_secs",
                "server.admin_max_connections", "upstream.authority_host", "upstream.timeout_secs",
                "cache.max_entries", "cache.new_keys_per_minute", "cache.new_keys_burst", "log.format", "log.level", "log.requests", "telemetry.otlp_endpoint",
            ]),
            value in prop_oneof![
                "[ -~]{0,30}".prop_map(|s| format!("{s:?}")),
                any::<i64>().prop_map(|n| n.to_string()),
                any::<bool>().prop_map(|b| b.to_string()),
            ],
        ) {
            let (section, name) = key.split_once('.').unwrap();
            let toml = format!("[dev]\nenabled = true\n[{section}]\n{name} = {value}\n");
            if let Err(error) = load(&toml, &[]) {
                prop_assert!(!error.key.is_empty() && !error.problem.is_empty(), "{error}");
            }
        }
    }
}
