//! `examples/docker-compose.yml` without Docker: its tokenrelay service runs as the compose
//! file configures it (the same configuration, environment and command line, its volume a
//! directory), signed in with `login --device-code` against the fake authority, and a client
//! with the app container's environment gets a token through both flavours, naming the host
//! the container would name. The host-relay profile's container is served the same way by a
//! tokenrelay configured as the example's comments say, with the Azure Developer CLI.

use std::collections::HashMap;

use base64::Engine;

use crate::support::compose::{self, Node};
use crate::support::dev_tools::{self, Azd, path_with};
use crate::support::fake_login::{FakeLogin, USERNAME};
use crate::support::{TestRelay, command, json};

fn example() -> Node {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/docker-compose.yml");
    compose::parse(&std::fs::read_to_string(path).unwrap())
}

/// The variables the example asks the developer to export.
fn variables() -> HashMap<&'static str, String> {
    let key = base64::engine::general_purpose::STANDARD.encode(std::array::from_fn::<u8, 32, _>(|_| fastrand::u8(..)));
    let header: String = (0..32).map(|_| format!("{:02x}", fastrand::u8(..))).collect();
    HashMap::from([("TOKENRELAY_IDENTITY_HEADER", header), ("TOKENRELAY_CACHE_KEY", key)])
}

/// A GET of `url` (as the container's environment names it) sent to `relay`, with the `Host`
/// the container would send: compose's DNS, stood in for.
async fn get(relay: &TestRelay, url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let url = reqwest::Url::parse(url).unwrap();
    let host = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap());
    let target = format!("{}{}?{}", relay.base_url, url.path(), url.query().unwrap_or_default());
    let mut request = reqwest::Client::builder().no_proxy().build().unwrap().get(target).header("host", host);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

/// Both flavours from the container's variables: App Service through `IDENTITY_ENDPOINT` with
/// `IDENTITY_HEADER`, IMDS under `AZURE_POD_IDENTITY_AUTHORITY_HOST`.
async fn token_from_container(relay: &TestRelay, app: &HashMap<String, String>) -> (String, String) {
    let app_service = format!("{}?api-version=2019-08-01&resource=https://vault.azure.net", app["IDENTITY_ENDPOINT"]);
    let response = get(relay, &app_service, &[("X-IDENTITY-HEADER", &app["IDENTITY_HEADER"])]).await;
    assert_eq!(response.status(), 200, "{}", relay.logs());
    let first = json(response).await["access_token"].as_str().unwrap().to_owned();
    let imds = format!(
        "{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://storage.azure.com",
        app["AZURE_POD_IDENTITY_AUTHORITY_HOST"]
    );
    let response = get(relay, &imds, &[("Metadata", "true")]).await;
    assert_eq!(response.status(), 200, "{}", relay.logs());
    let second = json(response).await["access_token"].as_str().unwrap().to_owned();
    (first, second)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_compose_example_serves_its_app_from_a_persisted_device_code_sign_in() {
    let compose = example();
    let variables = variables();
    let authority = FakeLogin::start().await;
    let volume = tempfile::tempdir().unwrap();
    let home = volume.path().to_str().unwrap();

    let service = compose.at(&["services", "tokenrelay"]);
    let mounted = service.at(&["configs"]);
    let Node::List(mounts) = mounted else { panic!("configs is a list") };
    let target = match &mounts[0] {
        Node::Map(_) => mounts[0].at(&["target"]).scalar().to_owned(),
        other => panic!("{other:?}"),
    };
    let args = service.at(&["command"]).scalars();
    assert_eq!(args, ["serve", "--config", target.as_str()], "serve with the mounted configuration");
    assert_eq!(service.at(&["volumes"]).scalars(), ["sign-in:/home/nonroot"]);
    // The volume is this directory; the configuration is the compose file's, unchanged otherwise.
    let toml = compose.at(&["configs", "tokenrelay.toml", "content"]).scalar().replace("/home/nonroot", home);
    let mut environment: Vec<(String, String)> = service.at(&["environment"]).environment(&variables);
    // The one difference: the authority is the fake, not Entra.
    environment.push(("TOKENRELAY_UPSTREAM__AUTHORITY_HOST".into(), authority.url()));
    let env: Vec<(&str, &str)> = environment.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();

    // `docker compose run --rm tokenrelay login --device-code …`, as the file's comment says.
    let config = volume.path().join("tokenrelay.toml");
    std::fs::write(&config, &toml).unwrap();
    let record = volume.path().join("tokenrelay/record.json");
    let login = command()
        .args(["login", "--device-code", "--config", config.to_str().unwrap(), "--record", record.to_str().unwrap()])
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap();
    assert!(login.status.success(), "{}", String::from_utf8_lossy(&login.stderr));
    assert!(String::from_utf8_lossy(&login.stdout).contains(USERNAME));

    // `docker compose up`: the service starts from the volume's sign-in, twice (a restart).
    let app: HashMap<String, String> =
        compose.at(&["services", "app", "environment"]).environment(&variables).into_iter().collect();
    for _restart in 0..2 {
        let relay = TestRelay::serve_with_env(&toml, &[], &env).await;
        let (first, second) = token_from_container(&relay, &app).await;
        assert!(first.starts_with("user-token-") && first.ends_with("for-https://vault.azure.net"), "{first}");
        assert!(second.ends_with("for-https://storage.azure.com"), "{second}");
        // A name the file does not list is refused, as from any other container or page.
        let other = app["IDENTITY_ENDPOINT"].replace("tokenrelay:", "elsewhere:");
        let refused = get(
            &relay,
            &format!("{other}?api-version=2019-08-01&resource=https://vault.azure.net"),
            &[("X-IDENTITY-HEADER", &app["IDENTITY_HEADER"])],
        )
        .await;
        assert_eq!(refused.status(), 400);
        assert!(!relay.logs().contains(&variables["TOKENRELAY_CACHE_KEY"]), "the key never reaches the logs");
    }
    assert!(authority.seen().iter().any(|form| form["grant_type"] == "refresh_token"), "tokens came from the sign-in");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_host_relay_profile_is_served_by_tokenrelay_on_the_host() {
    let compose = example();
    let variables = variables();
    let azd = dev_tools::azd(Azd::LoggedIn);
    // As the file's comment starts it, with the Azure Developer CLI as the host's upstream.
    let toml = "[log]\nformat = \"text\"\n[[identities]]\nname = \"me\"\nclient_id = \"laptop\"\ncredentials = [{ kind = \"azure_developer_cli\" }]\n";
    let path = path_with(azd.path());
    let env = [
        ("TOKENRELAY_SERVER__ALLOWED_HOSTS", "host.docker.internal"),
        ("TOKENRELAY_SERVER__IDENTITY_HEADER", variables["TOKENRELAY_IDENTITY_HEADER"].as_str()),
        ("PATH", path.as_str()),
    ];
    let relay = TestRelay::serve_with_env(toml, &[], &env).await;
    let service = compose.at(&["services", "app-with-host-relay"]);
    assert_eq!(service.at(&["extra_hosts"]).scalars(), ["host.docker.internal:host-gateway"]);
    assert_eq!(service.at(&["profiles"]).scalars(), ["host-relay"]);
    let app: HashMap<String, String> = service.at(&["environment"]).environment(&variables).into_iter().collect();
    let (first, second) = token_from_container(&relay, &app).await;
    assert_eq!(first, "azd-token-for-https://vault.azure.net/.default");
    assert_eq!(second, "azd-token-for-https://storage.azure.com/.default");
}
