//! Running in Kubernetes: the kubelet's service-link variables share tokenrelay's prefix.

use crate::support::{FakeEntra, TestConfig, TestRelay, VAULT, command, json};

/// A Service as the kubelet sees it when it builds a container's environment.
struct Service {
    name: &'static str,
    cluster_ip: &'static str,
    /// (port name, port, protocol); only the first port may be unnamed.
    ports: &'static [(&'static str, u16, &'static str)],
}

/// The variables the kubelet gives every container of a pod for `service` unless the pod sets
/// `enableServiceLinks: false`, exactly as `pkg/kubelet/envvars` (`FromServices`,
/// `makeLinkVariables`) builds them: the Service name upper-cased with `-` and `.` as `_`;
/// `_SERVICE_HOST` (cluster IP) and `_SERVICE_PORT` (first port); `_SERVICE_PORT_<NAME>` for
/// each named port; the Docker-link `_PORT` (first port, `tcp://ip:port`) and, per port,
/// `_PORT_<port>_<PROTOCOL>` with `_PROTO`, `_PORT` and `_ADDR`. (Headless Services get none:
/// the kubelet skips Services without a cluster IP.)
fn service_links(service: &Service) -> Vec<(String, String)> {
    let prefix = service.name.to_ascii_uppercase().replace(['-', '.'], "_");
    let ip = service.cluster_ip;
    let (_, first, first_protocol) = service.ports[0];
    let mut vars =
        vec![(format!("{prefix}_SERVICE_HOST"), ip.to_owned()), (format!("{prefix}_SERVICE_PORT"), first.to_string())];
    for (name, port, _) in service.ports {
        if !name.is_empty() {
            vars.push((
                format!("{prefix}_SERVICE_PORT_{}", name.to_ascii_uppercase().replace('-', "_")),
                port.to_string(),
            ));
        }
    }
    vars.push((format!("{prefix}_PORT"), format!("{}://{ip}:{first}", first_protocol.to_ascii_lowercase())));
    for (_, port, protocol) in service.ports {
        let port_prefix = format!("{prefix}_PORT_{port}_{protocol}");
        let proto = protocol.to_ascii_lowercase();
        vars.push((port_prefix.clone(), format!("{proto}://{ip}:{port}")));
        vars.push((format!("{port_prefix}_PROTO"), proto));
        vars.push((format!("{port_prefix}_PORT"), port.to_string()));
        vars.push((format!("{port_prefix}_ADDR"), ip.to_owned()));
    }
    vars
}

/// A namespace with Services named after tokenrelay, as a chart or a team would name them.
fn namespace_links() -> Vec<(String, String)> {
    [
        Service {
            name: "tokenrelay",
            cluster_ip: "10.0.0.17",
            ports: &[("http", 8080, "TCP"), ("relay-admin", 8081, "TCP")],
        },
        Service { name: "tokenrelay-metrics", cluster_ip: "10.0.0.18", ports: &[("", 8081, "TCP")] },
        Service { name: "tokenrelay-app", cluster_ip: "10.0.0.19", ports: &[("web", 80, "TCP"), ("dns", 53, "UDP")] },
    ]
    .iter()
    .flat_map(service_links)
    .collect()
}

#[test]
fn the_kubelet_double_produces_the_documented_names() {
    let vars = namespace_links();
    let get = |name: &str| vars.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    assert_eq!(get("TOKENRELAY_SERVICE_HOST"), Some("10.0.0.17"));
    assert_eq!(get("TOKENRELAY_SERVICE_PORT"), Some("8080"));
    assert_eq!(get("TOKENRELAY_SERVICE_PORT_RELAY_ADMIN"), Some("8081"));
    assert_eq!(get("TOKENRELAY_PORT"), Some("tcp://10.0.0.17:8080"));
    assert_eq!(get("TOKENRELAY_PORT_8081_TCP_ADDR"), Some("10.0.0.17"));
    assert_eq!(get("TOKENRELAY_METRICS_PORT"), Some("tcp://10.0.0.18:8081"));
    assert_eq!(get("TOKENRELAY_APP_PORT_53_UDP_PROTO"), Some("udp"));
    // Per Service: HOST, PORT, PORT_<NAME> per named port, the link PORT, and 4 per port.
    assert_eq!(vars.len(), (2 + 2 + 1 + 8) + (2 + 1 + 4) + (2 + 2 + 1 + 8));
}

#[tokio::test(flavor = "multi_thread")]
async fn service_links_named_like_configuration_do_not_stop_it() {
    let entra = FakeEntra::start().await;
    let links = namespace_links();
    let env: Vec<(&str, &str)> = links.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let relay = TestRelay::serve_with_env(&TestConfig::client_secret(&entra), &[], &env).await;

    let token = json(relay.imds(VAULT).await).await;
    assert_eq!(token["access_token"], "fake-token-1-for-https://vault.azure.net");
    assert_eq!(relay.app_service("api-version=2019-08-01&resource=https://vault.azure.net").await.status(), 200);

    // Named once, at debug, and never with their values.
    let logs = relay.logs();
    let line = logs.lines().find(|l| l.contains("service-link")).unwrap_or_else(|| panic!("no log line:\n{logs}"));
    assert!(line.contains("DEBUG") && line.contains("TOKENRELAY_METRICS_PORT"), "{line}");
    assert!(line.contains("TOKENRELAY_APP_SERVICE_HOST") && line.contains("TOKENRELAY_PORT_8081_TCP_ADDR"), "{line}");
    assert!(!logs.contains("10.0.0.1"), "values are not logged:\n{logs}");
    assert!(!logs.contains("WARN"), "{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_mode_starts_beside_a_metrics_service() {
    // The first report of this failure: `TOKENRELAY_METRICS_PORT=tcp://10.0.0.1:8081
    // tokenrelay serve --dev` exited 64 (`metrics_port` is not a key).
    let output = command()
        .args(["check", "--dev"])
        .env("TOKENRELAY_METRICS_PORT", "tcp://10.0.0.1:8081")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("# ignored, not configuration") && stdout.contains("TOKENRELAY_METRICS_PORT"), "{stdout}");
    let relay = TestRelay::serve_with_env(
        "[dev]\nenabled = true\n",
        &[],
        &[("TOKENRELAY_METRICS_PORT", "tcp://10.0.0.1:8081")],
    )
    .await;
    assert_eq!(relay.imds(VAULT).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_misspelt_nested_key_still_stops_it() {
    let links = namespace_links();
    let output = command()
        .args(["serve", "--dev", "--listen", "127.0.0.1:0"])
        .envs(links.iter().map(|(n, v)| (n.as_str(), v.as_str())))
        .env("TOKENRELAY_SERVER__LISTN", "127.0.0.1:1")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("server.listn (from environment variable TOKENRELAY_SERVER__LISTN)"), "{stderr}");
    assert!(!stderr.contains("SERVICE"), "only the bad key is named: {stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn variables_naming_a_top_level_key_stay_configuration() {
    let output = command()
        .args(["check", "--dev"])
        .env("TOKENRELAY_IDENTITIES", r#"[{ client_id = "11111111-2222-3333-4444-555555555555", name = "batch" }]"#)
        .env("TOKENRELAY_LOG", r#"{ level = "warn" }"#)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("# identity \"batch\" (client_id 11111111-2222-3333-4444-555555555555)"), "{stdout}");
    assert!(stdout.contains("level = \"warn\""), "{stdout}");
    assert!(!stdout.contains("# ignored"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_single_underscore_is_a_warning_naming_the_nested_variable() {
    let output = command()
        .args(["check", "--dev"])
        .env("TOKENRELAY_LOG_LEVEL", "debug")
        .env("TOKENRELAY_LOG__FORMAT", "json")
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr.lines().find(|l| l.contains("TOKENRELAY_LOG_LEVEL")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(line.contains("WARN") && line.contains("did you mean TOKENRELAY_LOG__LEVEL?"), "{line}");
    assert!(!line.contains("debug\""), "the value is not logged: {line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_variable_and_key_is_reported_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[dev]\nenabled = true\n[upstream]\ntimout_secs = 5\n").unwrap();
    let output = command()
        .args(["serve", "--config", config.to_str().unwrap(), "--listen", "127.0.0.1:0", "--identity-header", " "])
        .env("TOKENRELAY_SERVER__LISTN", "127.0.0.1:1")
        .env("TOKENRELAY_UPSTREAM__MAX_RETRIES", "many")
        .env("TOKENRELAY_CACHE__MAX_ENTRIES", "0")
        .env("TOKENRELAY_LOG__FORMAT", "xml")
        .env("TOKENRELAY_TELEMETRY__OTLP_ENDPOINT", "ftp://collector")
        .env("TOKENRELAY_METRICS_PORT", "tcp://10.0.0.1:8081")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let file = config.display().to_string();
    let expected = [
        "invalid configuration (7 problems):".to_owned(),
        "server.listn (from environment variable TOKENRELAY_SERVER__LISTN): unknown key".to_owned(),
        "upstream.max_retries (from environment variable TOKENRELAY_UPSTREAM__MAX_RETRIES): invalid type".to_owned(),
        format!("upstream.timout_secs (from TOML file {file}): unknown key"),
        "server.identity_header (from command-line flags): is empty".to_owned(),
        "cache.max_entries (from environment variable TOKENRELAY_CACHE__MAX_ENTRIES): must be at least 1".to_owned(),
        "log.format (from environment variable TOKENRELAY_LOG__FORMAT)".to_owned(),
        "telemetry.otlp_endpoint (from environment variable TOKENRELAY_TELEMETRY__OTLP_ENDPOINT)".to_owned(),
    ];
    let mut rest = stderr.as_ref();
    for line in &expected {
        let at = rest.find(line.as_str()).unwrap_or_else(|| panic!("missing {line:?}, in this order, in:\n{stderr}"));
        rest = &rest[at + line.len()..];
    }
    assert!(!stderr.contains("METRICS_PORT"), "{stderr}");
}
