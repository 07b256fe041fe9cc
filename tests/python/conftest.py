"""Fixtures for the real-client tests: a `tokenrelay serve --dev` process on loopback.

The binary comes from $TOKENRELAY_BIN (absolute, or relative to the repository root),
default target/debug/tokenrelay. Build it first (`cargo build`, or `bash scripts/test.sh`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import re
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# How long the server may take to print its export lines, and to exit after SIGTERM.
STARTUP_TIMEOUT_S = 30.0
SHUTDOWN_TIMEOUT_S = 10.0

# The client id of `serve --dev`'s default (system-assigned style) identity.
DEFAULT_CLIENT_ID = "d0000000-0000-0000-0000-000000000001"
# A user-assigned identity added with --dev-identity.
USER_ASSIGNED_CLIENT_ID = "7e57c11e-0000-4000-8000-00000000a551"

# Variables that steer azure-identity's (and MSAL's) choice of credential, or route
# HTTP through a proxy. Each test starts with none of them, then sets what it needs.
_STEERING_PREFIXES = ("AZURE_", "IDENTITY_", "MSI_", "IMDS_")
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")

_LISTEN_RE = re.compile(r"^tokenrelay \S+ listening on (?P<base>http://\S+)$")
_APP_SERVICE_RE = re.compile(
    r"^export IDENTITY_ENDPOINT=(?P<endpoint>\S+) IDENTITY_HEADER=(?P<header>[0-9a-f]{64})$"
)
_IMDS_RE = re.compile(r"^export AZURE_POD_IDENTITY_AUTHORITY_HOST=(?P<host>\S+)$")


@dataclasses.dataclass(frozen=True)
class Relay:
    base_url: str
    identity_endpoint: str
    identity_header: str
    pod_identity_authority_host: str
    default_client_id: str
    user_assigned_client_id: str
    stderr_path: Path

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")


def _binary() -> Path:
    raw = os.environ.get("TOKENRELAY_BIN", "target/debug/tokenrelay")
    path = Path(raw)
    if not path.is_absolute():
        path = REPO_ROOT / path
    return path


def _no_proxy_opener() -> urllib.request.OpenerDirector:
    # Loopback only: never let an environment proxy see these requests.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get_json(url: str, timeout: float = 10.0) -> dict:
    with _no_proxy_opener().open(url, timeout=timeout) as response:
        assert response.status == 200, f"GET {url} answered {response.status}"
        return json.loads(response.read().decode("utf-8"))


def _server_env() -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        # Configuration from the environment would change what `--dev` serves.
        if not k.startswith("TOKENRELAY_")
    }
    env.setdefault("RUST_BACKTRACE", "1")
    return env


@pytest.fixture(scope="session")
def relay():
    binary = _binary()
    if not binary.is_file() or not os.access(binary, os.X_OK):
        pytest.fail(
            f"tokenrelay binary not found at {binary}: run `cargo build` first "
            "or set TOKENRELAY_BIN",
            pytrace=False,
        )

    stderr_file = tempfile.NamedTemporaryFile(
        prefix="tokenrelay-", suffix=".stderr", delete=False
    )
    stderr_path = Path(stderr_file.name)
    argv = [
        str(binary),
        "serve",
        "--dev",
        "--listen",
        "127.0.0.1:0",
        "--dev-identity",
        USER_ASSIGNED_CLIENT_ID,
    ]
    proc = subprocess.Popen(
        argv,
        cwd=REPO_ROOT,
        env=_server_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr_file,
        text=True,
        bufsize=1,
    )
    stderr_file.close()

    # A reader thread keeps draining stdout for the whole session so the pipe
    # never fills, and lets the startup wait have a deadline.
    lines: "queue.Queue[str | None]" = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, name="tokenrelay-stdout", daemon=True).start()

    def fail_startup(reason: str, seen: list) -> None:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        pytest.fail(
            f"tokenrelay did not start: {reason}\n"
            f"command: {' '.join(argv)}\n"
            f"exit code: {proc.returncode}\n"
            "stdout so far:\n  " + "\n  ".join(seen) + "\n"
            f"stderr:\n{stderr_path.read_text(errors='replace')}",
            pytrace=False,
        )

    base_url = endpoint = header = pod_host = None
    seen: list = []
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while endpoint is None or pod_host is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            fail_startup(f"no export lines within {STARTUP_TIMEOUT_S:.0f} s", seen)
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        if line is None:
            fail_startup("the process closed its stdout (did it exit?)", seen)
        seen.append(line)
        if m := _LISTEN_RE.match(line):
            base_url = m["base"]
        elif m := _APP_SERVICE_RE.match(line):
            endpoint, header = m["endpoint"], m["header"]
        elif m := _IMDS_RE.match(line):
            pod_host = m["host"]

    if base_url is None:
        fail_startup("no 'listening on' line before the export lines", seen)
    assert base_url.startswith("http://127.0.0.1:"), base_url
    assert endpoint == base_url + "/msi/token", (endpoint, base_url)
    assert pod_host == base_url, (pod_host, base_url)

    yield Relay(
        base_url=base_url,
        identity_endpoint=endpoint,
        identity_header=header,
        pod_identity_authority_host=pod_host,
        default_client_id=DEFAULT_CLIENT_ID,
        user_assigned_client_id=USER_ASSIGNED_CLIENT_ID,
        stderr_path=stderr_path,
    )

    # Teardown: a clean SIGTERM shutdown must exit 0.
    if proc.poll() is not None:
        stderr = stderr_path.read_text(errors="replace")
        pytest.fail(
            f"tokenrelay exited early with code {proc.returncode}\nstderr:\n{stderr}",
            pytrace=False,
        )
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=SHUTDOWN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        stderr = stderr_path.read_text(errors="replace")
        pytest.fail(
            f"tokenrelay still running {SHUTDOWN_TIMEOUT_S:.0f} s after SIGTERM\n"
            f"stderr:\n{stderr}",
            pytrace=False,
        )
    elapsed = time.monotonic() - started
    stderr = stderr_path.read_text(errors="replace")
    assert code == 0, f"tokenrelay exited {code} after SIGTERM\nstderr:\n{stderr}"
    assert elapsed < SHUTDOWN_TIMEOUT_S
    stderr_path.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def discovery(relay: Relay) -> dict:
    return http_get_json(relay.base_url + "/.well-known/openid-configuration")


@pytest.fixture(scope="session")
def jwks(discovery: dict) -> dict:
    return http_get_json(discovery["jwks_uri"])


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Remove every variable that could steer credential detection or proxy loopback."""
    for name in list(os.environ):
        upper = name.upper()
        if upper.startswith(_STEERING_PREFIXES) or upper in _PROXY_VARS:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    return monkeypatch
