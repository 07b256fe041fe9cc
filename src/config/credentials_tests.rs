//! Every credential kind from configuration, the default chain and clouds.

use std::collections::HashMap;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};

use super::super::{Config, ConfigError, CredentialConfig, RawConfig};
use super::*;

fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: HashMap<String, String> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let figment = Figment::from(Serialized::defaults(RawConfig::default())).merge(Toml::string(toml));
    Config::from_figment(&figment, &env)
}

/// One identity with the given `credentials = [...]` line (empty: the default chain).
fn identity(credentials: &str, tenant: Option<&str>) -> String {
    let tenant = tenant.map(|t| format!("tenant_id = \"{t}\"\n")).unwrap_or_default();
    format!(
        "[server]\napp_service = false\n[[identities]]\nname = \"app\"\nclient_id = \"11111111-1111-1111-1111-111111111111\"\n{tenant}{credentials}\n"
    )
}

fn credentials(toml: &str, env: &[(&str, &str)]) -> Vec<CredentialConfig> {
    load(toml, env).unwrap().identities.remove(0).credentials
}

const APP: &str = "11111111-1111-1111-1111-111111111111";

#[test]
fn client_certificate_defaults_to_ps256_and_reads_the_password_file() {
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "pfx-secret\n").unwrap();
    let toml = identity(
        &format!(
            "credentials = [{{ kind = \"client_certificate\", certificate_file = \"/c.pfx\", password_file = \"{}\" }}]",
            password.display()
        ),
        Some("t"),
    );
    let [CredentialConfig::ClientCertificate(certificate)] = &credentials(&toml, &[])[..] else {
        panic!("one certificate credential");
    };
    assert_eq!(certificate.algorithm, AssertionAlgorithm::Ps256);
    assert_eq!(certificate.password.as_ref().unwrap().expose(), "pfx-secret");
    assert!(!certificate.send_certificate_chain);

    let toml = identity(
        "credentials = [{ kind = \"client_certificate\", certificate_file = \"/c.pem\", algorithm = \"RS256\", send_certificate_chain = true }]",
        Some("t"),
    );
    let [CredentialConfig::ClientCertificate(certificate)] = &credentials(&toml, &[])[..] else { panic!() };
    assert_eq!((certificate.algorithm, certificate.send_certificate_chain), (AssertionAlgorithm::Rs256, true));

    let toml = identity(
        "credentials = [{ kind = \"client_certificate\", certificate_file = \"/c\", algorithm = \"ES256\" }]",
        Some("t"),
    );
    assert_eq!(load(&toml, &[]).unwrap_err().key, "identities.0.credentials.0.algorithm");
}

#[test]
fn a_certificate_needs_a_tenant_but_the_azure_cli_does_not() {
    let toml = identity("credentials = [{ kind = \"client_certificate\", certificate_file = \"/c.pem\" }]", None);
    let error = load(&toml, &[]).unwrap_err();
    assert_eq!(error.key, "identities.0.tenant_id");
    assert!(error.problem.contains("client_certificate"), "{error}");

    let toml = identity("credentials = [{ kind = \"azure_cli\" }]", None);
    let [CredentialConfig::AzureCli(cli)] = &credentials(&toml, &[("PATH", "/usr/bin")])[..] else { panic!() };
    assert_eq!((cli.timeout_secs, cli.search_path.as_deref()), (10, Some("/usr/bin")));
}

#[test]
fn client_assertion_reads_a_file_or_runs_a_command() {
    let toml = identity("credentials = [{ kind = \"client_assertion\", file = \"/var/run/token\" }]", Some("t"));
    assert!(matches!(
        &credentials(&toml, &[])[..],
        [CredentialConfig::ClientAssertion { source: AssertionSource::File { .. } }]
    ));
    let toml = identity(
        "credentials = [{ kind = \"client_assertion\", command = [\"get-token\", \"-a\"], timeout_secs = 3 }]",
        Some("t"),
    );
    assert!(matches!(&credentials(&toml, &[])[..],
        [CredentialConfig::ClientAssertion { source: AssertionSource::Command { command, timeout_secs: 3 } }] if command.len() == 2));
    for bad in [
        "{ kind = \"client_assertion\" }",
        "{ kind = \"client_assertion\", file = \"/f\", command = [\"x\"] }",
        "{ kind = \"client_assertion\", command = [] }",
    ] {
        assert!(load(&identity(&format!("credentials = [{bad}]"), Some("t")), &[]).is_err(), "{bad}");
    }
}

#[test]
fn azure_pipelines_takes_the_job_variables_and_is_skipped_outside_a_job() {
    let toml = identity("credentials = [{ kind = \"azure_pipelines\", service_connection_id = \"sc-1\" }]", Some("t"));
    let env =
        [("SYSTEM_OIDCREQUESTURI", "https://dev.azure.com/org/_apis/oidctoken"), ("SYSTEM_ACCESSTOKEN", "job-token")];
    let [CredentialConfig::AzurePipelines(pipelines)] = &credentials(&toml, &env)[..] else { panic!() };
    assert_eq!(pipelines.service_connection_id, "sc-1");
    assert_eq!(pipelines.system_access_token.expose(), "job-token");
    let config = load(&toml, &env).unwrap();
    assert!(!toml::to_string(&config).unwrap().contains("job-token"), "the access token is redacted");

    let outside = credentials(&toml, &[]);
    assert!(matches!(
        &outside[..],
        [CredentialConfig::NotConfigured { credential: CredentialKind::AzurePipelines, .. }]
    ));

    let without_id = identity("credentials = [{ kind = \"azure_pipelines\" }]", Some("t"));
    assert_eq!(load(&without_id, &env).unwrap_err().key, "identities.0.credentials.0.service_connection_id");
}

#[test]
fn managed_identity_from_configuration_or_environment() {
    let toml = identity(
        "credentials = [{ kind = \"managed_identity\", endpoint = \"http://10.0.0.1/msi/token\", identity_header = \"h\", client_id = \"ua\", gone_retry_secs = 3 }]",
        None,
    );
    let [CredentialConfig::ManagedIdentity(mi)] = &credentials(&toml, &[])[..] else { panic!() };
    assert_eq!(mi.flavour, ManagedIdentityFlavour::AppService);
    assert_eq!((mi.client_id.as_deref(), mi.gone_retry_secs, mi.max_retries), (Some("ua"), 3, 5));

    let toml = identity("credentials = [{ kind = \"managed_identity\" }]", None);
    let [CredentialConfig::ManagedIdentity(mi)] = &credentials(&toml, &[])[..] else { panic!() };
    assert_eq!((mi.endpoint.as_str(), mi.flavour), (IMDS_ENDPOINT, ManagedIdentityFlavour::Imds));
    assert_eq!(mi.gone_retry_secs, 70, "IMDS comes back within 70 s");
    let env = [("IDENTITY_ENDPOINT", "http://10.1.1.1:8081/msi/token"), ("IDENTITY_HEADER", "secret")];
    let [CredentialConfig::ManagedIdentity(mi)] = &credentials(&toml, &env)[..] else { panic!() };
    assert_eq!((mi.origin.as_str(), mi.flavour), ("IDENTITY_ENDPOINT", ManagedIdentityFlavour::AppService));

    let two = identity("credentials = [{ kind = \"managed_identity\", client_id = \"a\", object_id = \"b\" }]", None);
    assert!(load(&two, &[]).unwrap_err().problem.contains("at most one"));
}

#[test]
fn a_managed_identity_endpoint_that_is_tokenrelay_itself_is_refused() {
    let default_chain = identity("", Some("t"));
    let env = [("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://127.0.0.1:8080")];
    let chain = credentials(&default_chain, &env);
    assert!(
        matches!(&chain[2], CredentialConfig::NotConfigured { credential: CredentialKind::ManagedIdentity, reason } if reason.contains("itself")),
        "{chain:?}"
    );
    let explicit = identity(
        "credentials = [{ kind = \"managed_identity\", endpoint = \"http://localhost:8080/metadata/identity/oauth2/token\" }]",
        None,
    );
    assert!(load(&explicit, &[]).unwrap_err().problem.contains("itself"));
}

#[test]
fn every_spelling_of_the_own_listener_is_refused_as_a_managed_identity_endpoint() {
    // The listener is the default 127.0.0.1:8080.
    for host in ["0.0.0.0", "localhost.", "LocalHost", "[::ffff:127.0.0.1]", "127.1"] {
        let explicit = identity(
            &format!(
                "credentials = [{{ kind = \"managed_identity\", endpoint = \"http://{host}:8080/metadata/identity/oauth2/token\" }}]"
            ),
            None,
        );
        let error = load(&explicit, &[]).unwrap_err();
        assert!(error.problem.contains("own listener 127.0.0.1:8080"), "{host}: {error}");
    }
    let env = [("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://0.0.0.0:8080")];
    let chain = credentials(&identity("", Some("t")), &env);
    assert!(
        matches!(&chain[2], CredentialConfig::NotConfigured { credential: CredentialKind::ManagedIdentity, reason } if reason.contains("own listener")),
        "{chain:?}"
    );
    // Another loopback address is another socket: nothing listens there for this relay.
    let other = identity(
        "credentials = [{ kind = \"managed_identity\", endpoint = \"http://127.0.0.2:8080/metadata/identity/oauth2/token\" }]",
        None,
    );
    assert!(load(&other, &[]).is_ok());
}

#[test]
fn the_developer_tools_have_a_deadline_and_the_path() {
    for kind in ["azure_developer_cli", "azure_powershell"] {
        let toml = identity(&format!("credentials = [{{ kind = \"{kind}\", timeout_secs = 30 }}]"), None);
        let chain = credentials(&toml, &[("PATH", "/usr/local/bin")]);
        let (CredentialConfig::AzureDeveloperCli(tool) | CredentialConfig::AzurePowershell(tool)) = &chain[0] else {
            panic!("{kind} is a developer tool");
        };
        assert_eq!(chain[0].kind().as_str(), kind);
        assert_eq!((tool.timeout_secs, tool.search_path.as_deref()), (30, Some("/usr/local/bin")));
        assert!(!chain[0].needs_tenant(), "the tool's login decides the tenant");
        let zero = identity(&format!("credentials = [{{ kind = \"{kind}\", timeout_secs = 0 }}]"), None);
        assert!(load(&zero, &[]).unwrap_err().to_string().contains("timeout_secs"));
    }
}

#[test]
fn the_default_chain_follows_default_azure_credential() {
    let toml = identity("", Some("t"));
    let chain = credentials(&toml, &[]);
    let kinds: Vec<&str> = chain.iter().map(|c| c.kind().as_str()).collect();
    assert_eq!(
        kinds,
        [
            "environment",
            "workload_identity",
            "managed_identity",
            "azure_cli",
            "azure_powershell",
            "azure_developer_cli"
        ]
    );
    assert!(matches!(&chain[0], CredentialConfig::NotConfigured { .. }));
    assert!(matches!(&chain[1], CredentialConfig::NotConfigured { .. }));
    assert!(matches!(&chain[2], CredentialConfig::ManagedIdentity(mi) if mi.client_id.is_none()));

    // The environment's secret is used only for the application it belongs to.
    let env = [("AZURE_CLIENT_ID", APP), ("AZURE_CLIENT_SECRET", "s3cret")];
    let chain = credentials(&toml, &env);
    assert!(
        matches!(&chain[0], CredentialConfig::Environment { source: EnvironmentSource::ClientSecret { secret } } if secret.expose() == "s3cret")
    );
    assert!(matches!(&chain[2], CredentialConfig::ManagedIdentity(mi) if mi.client_id.as_deref() == Some(APP)));
    let other = [("AZURE_CLIENT_ID", "99999999-0000-0000-0000-000000000000"), ("AZURE_CLIENT_SECRET", "s3cret")];
    assert!(
        matches!(&credentials(&toml, &other)[0], CredentialConfig::NotConfigured { reason, .. } if reason.contains("another application"))
    );

    let certificate = [
        ("AZURE_CLIENT_ID", APP),
        ("AZURE_CLIENT_CERTIFICATE_PATH", "/certs/app.pfx"),
        ("AZURE_CLIENT_CERTIFICATE_PASSWORD", "pw"),
        ("AZURE_CLIENT_SEND_CERTIFICATE_CHAIN", "true"),
    ];
    let CredentialConfig::Environment { source: EnvironmentSource::ClientCertificate(c) } =
        &credentials(&toml, &certificate)[0]
    else {
        panic!("certificate from the environment");
    };
    assert_eq!(c.certificate_file.to_str(), Some("/certs/app.pfx"));
    assert_eq!(c.password.as_ref().map(Secret::expose), Some("pw"));
    assert!(c.send_certificate_chain);

    // Without a tenant the Entra links cannot run, but managed identity and the CLI can.
    let chain = credentials(&identity("", None), &env);
    assert!(matches!(&chain[0], CredentialConfig::NotConfigured { reason, .. } if reason.contains("tenant")));
    assert!(matches!(&chain[3], CredentialConfig::AzureCli(_)));
}

#[test]
fn clouds_have_names_or_an_authority_host() {
    let base = identity("credentials = [{ kind = \"azure_cli\" }]", None);
    for (cloud, host) in [
        ("usgovernment", "https://login.microsoftonline.us/"),
        ("china", "https://login.chinacloudapi.cn/"),
        ("public", "https://login.microsoftonline.com/"),
    ] {
        let config = load(&format!("[upstream]\ncloud = \"{cloud}\"\n{base}"), &[]).unwrap();
        assert_eq!(config.upstream.authority_host, host);
    }
    // An explicit cloud wins over AZURE_AUTHORITY_HOST.
    let config = load(
        &format!("[upstream]\ncloud = \"china\"\n{base}"),
        &[("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.us")],
    )
    .unwrap();
    assert_eq!(config.upstream.authority_host, "https://login.chinacloudapi.cn/");
    assert_eq!(load(&format!("[upstream]\ncloud = \"mars\"\n{base}"), &[]).unwrap_err().key, "upstream.cloud");
    let both = format!("[upstream]\ncloud = \"china\"\nauthority_host = \"https://login.example\"\n{base}");
    assert!(load(&both, &[]).unwrap_err().problem.contains("not both"));
}

#[test]
fn additionally_allowed_tenants_are_validated() {
    let toml = identity(
        "additionally_allowed_tenants = [\"fabrikam.onmicrosoft.com\", \"*\"]\ncredentials = [{ kind = \"azure_cli\" }]",
        None,
    );
    assert_eq!(load(&toml, &[]).unwrap().identities[0].additionally_allowed_tenants, ["fabrikam.onmicrosoft.com", "*"]);
    let bad = toml.replace("fabrikam.onmicrosoft.com", "fabrikam/../x");
    assert_eq!(load(&bad, &[]).unwrap_err().key, "identities.0.additionally_allowed_tenants");
}
