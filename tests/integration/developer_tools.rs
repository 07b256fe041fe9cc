//! The Azure Developer CLI and Azure PowerShell credentials end to end, with stand-in `azd`
//! and `pwsh` first on the relay's `PATH` (support/dev_tools.rs), and their place in the
//! default chain and in `tokenrelay check`.

use crate::support::dev_tools::{self, Azd, Pwsh, path_with};
use crate::support::{HEADER_SECRET, TestRelay, command, json};

const VAULT: &str = "api-version=2018-02-01&resource=https://vault.azure.net";

fn config(tenant: &str, credentials: &str) -> String {
    format!(
        "[server]\nidentity_header = \"{HEADER_SECRET}\"\n[log]\nformat = \"text\"\n[[identities]]\nname = \"laptop\"\nclient_id = \"me\"\n{tenant}{credentials}\n"
    )
}

async fn description(response: reqwest::Response) -> String {
    json(response).await["error_description"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_azure_developer_cli_provides_tokens_when_logged_in() {
    let azd = dev_tools::azd(Azd::LoggedIn);
    let toml =
        config("tenant_id = \"contoso.onmicrosoft.com\"\n", "credentials = [{ kind = \"azure_developer_cli\" }]");
    let relay = TestRelay::serve_with_env(&toml, &[], &[("PATH", &path_with(azd.path()))]).await;
    let response = relay.imds(VAULT).await;
    assert_eq!(response.status(), 200, "{}", relay.logs());
    let body = json(response).await;
    assert_eq!(body["access_token"], "azd-token-for-https://vault.azure.net/.default");
    let expires_in: u64 = body["expires_in"].as_str().unwrap().parse().unwrap();
    assert!((3500..=3600).contains(&expires_in), "expiresOn was read as UTC: {expires_in}");
    let args = std::fs::read_to_string(azd.path().join("azd-args")).unwrap();
    assert_eq!(
        args.trim(),
        "auth token --output json --scope https://vault.azure.net/.default --tenant-id contoso.onmicrosoft.com"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_azure_developer_cli_not_logged_in_missing_or_too_old_is_explained() {
    let tenant = "tenant_id = \"contoso.onmicrosoft.com\"\n";
    let cases: [(tempfile::TempDir, u16, &str); 3] = [
        (
            dev_tools::azd(Azd::NotLoggedIn),
            503,
            "not logged in; run `azd auth login --tenant-id contoso.onmicrosoft.com`",
        ),
        (tempfile::tempdir().unwrap(), 503, "(azd) is not on PATH"),
        (dev_tools::azd(Azd::Old), 400, "too old"),
    ];
    for (dir, status, expected) in cases {
        let path = if status == 503 && expected.contains("PATH") {
            dir.path().display().to_string()
        } else {
            path_with(dir.path())
        };
        let toml = config(tenant, "credentials = [{ kind = \"azure_developer_cli\" }]");
        let relay = TestRelay::serve_with_env(&toml, &[], &[("PATH", &path)]).await;
        let response = relay.imds(VAULT).await;
        assert_eq!(response.status(), status, "{expected}: {}", relay.logs());
        let text = description(response).await;
        assert!(text.contains(expected), "missing {expected:?} in {text}");
        assert!(!text.contains("consoleMessage"), "azd's JSON message is unwrapped: {text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn azure_powershell_provides_tokens_when_logged_in() {
    let pwsh = dev_tools::pwsh(Pwsh::LoggedIn);
    let toml = config("tenant_id = \"contoso.onmicrosoft.com\"\n", "credentials = [{ kind = \"azure_powershell\" }]");
    let relay = TestRelay::serve_with_env(&toml, &[], &[("PATH", &path_with(pwsh.path()))]).await;
    let response = relay.imds(VAULT).await;
    assert_eq!(response.status(), 200, "{}", relay.logs());
    assert_eq!(json(response).await["access_token"], "pwsh-token-for-https://vault.azure.net");
    let args = std::fs::read_to_string(pwsh.path().join("pwsh-args")).unwrap();
    assert_eq!(args.trim(), "resource=https://vault.azure.net tenant=contoso.onmicrosoft.com");
    assert!(!relay.logs().contains("pwsh-token-for"), "the token never reaches the logs");
}

#[tokio::test(flavor = "multi_thread")]
async fn azure_powershell_not_logged_in_missing_or_too_old_is_explained() {
    let cases: [(Option<Pwsh>, u16, &str); 4] = [
        (Some(Pwsh::NotLoggedIn), 503, "not logged in; run `Connect-AzAccount`"),
        (None, 503, "PowerShell (pwsh) is not on PATH"),
        (Some(Pwsh::OldModule), 400, "Az.Accounts 2.1.0 is too old"),
        (Some(Pwsh::NoModule), 503, "Install-Module Az.Accounts"),
    ];
    for (state, status, expected) in cases {
        let (dir, path) = match state {
            Some(state) => {
                let dir = dev_tools::pwsh(state);
                let path = path_with(dir.path());
                (dir, path)
            }
            None => {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().display().to_string();
                (dir, path)
            }
        };
        let toml = config("", "credentials = [{ kind = \"azure_powershell\" }]");
        let relay = TestRelay::serve_with_env(&toml, &[], &[("PATH", &path)]).await;
        let response = relay.imds(VAULT).await;
        assert_eq!(response.status(), status, "{expected}: {}", relay.logs());
        let text = description(response).await;
        assert!(text.contains(expected), "missing {expected:?} in {text}");
        drop(dir);
    }
}

/// The default chain on a laptop: the Azure CLI and Azure PowerShell are not logged in, and
/// azd, last, answers; `check` says which of them can run.
#[tokio::test(flavor = "multi_thread")]
async fn the_default_chain_tries_the_cli_then_powershell_then_azd() {
    let tools = dev_tools::azd(Azd::LoggedIn);
    dev_tools::executable(
        tools.path(),
        "az",
        "#!/bin/sh\necho \"ERROR: Please run 'az login' to setup account.\" >&2\nexit 1\n",
    );
    dev_tools::write_pwsh(tools.path(), Pwsh::NotLoggedIn);
    let path = path_with(tools.path());
    let toml = config("tenant_id = \"contoso.onmicrosoft.com\"\n", "");
    let relay = TestRelay::serve_with_env(&toml, &[], &[("PATH", &path)]).await;
    let response = relay.imds(VAULT).await;
    assert_eq!(response.status(), 200, "{}", relay.logs());
    assert_eq!(json(response).await["access_token"], "azd-token-for-https://vault.azure.net/.default");
    let asked = std::fs::read_to_string(tools.path().join("pwsh-args")).unwrap();
    assert_eq!(
        asked.trim(),
        "resource=https://vault.azure.net tenant=contoso.onmicrosoft.com",
        "PowerShell came before azd"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, &toml).unwrap();
    let output =
        command().args(["check", "--config", file.to_str().unwrap()]).env("PATH", &path).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    for expected in [
        "4. azure_cli: usable: az found at",
        &format!("5. azure_powershell: usable: {} found", tools.path().join("pwsh").display()),
        &format!("6. azure_developer_cli: usable: azd found at {}", tools.path().join("azd").display()),
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in\n{stdout}");
    }

    // Nothing on PATH: every developer tool says why it was skipped.
    let output = command()
        .args(["check", "--config", file.to_str().unwrap()])
        .env("PATH", "/nonexistent")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    for expected in [
        "5. azure_powershell: not usable: PowerShell (pwsh) is not on PATH",
        "6. azure_developer_cli: not usable: the Azure Developer CLI (azd) is not on PATH",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in\n{stdout}");
    }
}
