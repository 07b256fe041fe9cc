"""The official Azure SDK for Python (azure-identity, unmodified) against `tokenrelay serve --dev`.

Each test points the SDK at tokenrelay only through the environment variables a
real hosting environment would set, then checks the token it hands back: RS256
signature against the server's published JWKS, audience, issuer, identity claims,
and the expiry the SDK reports.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from urllib.parse import urlsplit

import jwt
import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import (
    DefaultAzureCredential,
    ManagedIdentityCredential,
)

from conftest import Relay

VAULT_SCOPE = "https://vault.azure.net/.default"
VAULT_AUDIENCE = "https://vault.azure.net"
TENANT_ID = "00000000-0000-0000-0000-000000000000"
TOKEN_LIFETIME_S = 3600
# Slack for clock reads on either side of a request, and for integer rounding.
SLACK_S = 5

# The path each flavour's requests must reach.
FLAVOUR_PATHS = {
    "app_service": "/msi/token",
    "imds": "/metadata/identity/oauth2/token",
}
FLAVOURS = sorted(FLAVOUR_PATHS)

# azure-core's HttpLoggingPolicy logs every request URL here at INFO.
HTTP_LOGGER = "azure.core.pipeline.policies.http_logging_policy"


def use_flavour(monkeypatch: pytest.MonkeyPatch, relay: Relay, flavour: str) -> None:
    """Set exactly the variables that select one managed-identity flavour."""
    if flavour == "app_service":
        monkeypatch.setenv("IDENTITY_ENDPOINT", relay.identity_endpoint)
        monkeypatch.setenv("IDENTITY_HEADER", relay.identity_header)
    elif flavour == "imds":
        monkeypatch.setenv(
            "AZURE_POD_IDENTITY_AUTHORITY_HOST", relay.pod_identity_authority_host
        )
    else:  # pragma: no cover
        raise AssertionError(flavour)


def requested_paths(caplog: pytest.LogCaptureFixture) -> list[str]:
    paths = []
    for record in caplog.records:
        if record.name != HTTP_LOGGER:
            continue
        for line in record.getMessage().splitlines():
            line = line.strip()
            if line.startswith("Request URL:"):
                url = line.split(":", 1)[1].strip().strip("'\"")
                paths.append(urlsplit(url).path)
    return paths


def assert_reached(caplog: pytest.LogCaptureFixture, flavour: str) -> None:
    paths = requested_paths(caplog)
    assert paths, "azure-core logged no request: did the SDK call tokenrelay at all?"
    assert FLAVOUR_PATHS[flavour] in paths, (
        f"expected a request to {FLAVOUR_PATHS[flavour]} ({flavour}), saw {paths}"
    )
    other = {p for f, p in FLAVOUR_PATHS.items() if f != flavour}
    assert not other.intersection(paths), f"the SDK used the wrong flavour: {paths}"


def verify_token(
    token: AccessToken,
    *,
    relay: Relay,
    jwks: dict,
    client_id: str,
    requested_at: float,
    received_at: float,
    audience: str = VAULT_AUDIENCE,
) -> dict:
    """Verify a token as a resource server would, and check what the SDK reports."""
    assert isinstance(token, AccessToken)
    assert isinstance(token.token, str) and token.token.count(".") == 2

    header = jwt.get_unverified_header(token.token)
    assert header["alg"] == "RS256", header
    keys = jwt.PyJWKSet.from_dict(jwks)
    kid = header.get("kid")
    if kid is not None:
        key = keys[kid]
    else:
        assert len(keys.keys) == 1, "token has no kid and the JWKS has several keys"
        key = keys.keys[0]

    claims = jwt.decode(
        token.token,
        key=key,
        algorithms=["RS256"],
        audience=audience,
        issuer=relay.base_url,
        options={"require": ["aud", "iss", "exp", "iat", "nbf", "sub"]},
        leeway=SLACK_S,
    )

    assert claims["oid"] == client_id
    assert claims["sub"] == client_id
    assert claims["appid"] == client_id
    assert claims["azp"] == client_id
    assert claims["tid"] == TENANT_ID

    assert requested_at - SLACK_S <= claims["iat"] <= received_at + SLACK_S
    assert claims["nbf"] <= claims["iat"] + SLACK_S
    assert claims["exp"] - claims["iat"] == TOKEN_LIFETIME_S

    # What the SDK reports must match the token itself.
    assert type(token.expires_on) is int, type(token.expires_on)
    assert abs(token.expires_on - claims["exp"]) <= SLACK_S, (token.expires_on, claims)
    assert (
        requested_at + TOKEN_LIFETIME_S - SLACK_S
        <= token.expires_on
        <= received_at + TOKEN_LIFETIME_S + SLACK_S
    ), (token.expires_on, requested_at)
    return claims


def get_token(credential, scope: str = VAULT_SCOPE) -> tuple[AccessToken, float, float]:
    requested_at = time.time()
    token = credential.get_token(scope)
    received_at = time.time()
    return token, requested_at, received_at


def test_discovery_document(relay: Relay, discovery: dict, jwks: dict) -> None:
    assert discovery["issuer"] == relay.base_url
    assert discovery["jwks_uri"].startswith(relay.base_url + "/")
    assert jwks["keys"], jwks
    for key in jwks["keys"]:
        assert key["kty"] == "RSA"
        assert "d" not in key, "the JWKS publishes a private key"


@pytest.mark.parametrize("identity", ["default", "user_assigned"])
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_managed_identity_credential(
    relay: Relay,
    jwks: dict,
    clean_env: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    flavour: str,
    identity: str,
) -> None:
    caplog.set_level(logging.INFO, logger=HTTP_LOGGER)
    use_flavour(clean_env, relay, flavour)
    if identity == "default":
        credential = ManagedIdentityCredential()
        expected_client_id = relay.default_client_id
    else:
        credential = ManagedIdentityCredential(client_id=relay.user_assigned_client_id)
        expected_client_id = relay.user_assigned_client_id

    with credential:
        token, requested_at, received_at = get_token(credential)

    verify_token(
        token,
        relay=relay,
        jwks=jwks,
        client_id=expected_client_id,
        requested_at=requested_at,
        received_at=received_at,
    )
    assert_reached(caplog, flavour)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_audience_follows_the_requested_resource(
    relay: Relay, jwks: dict, clean_env: pytest.MonkeyPatch, flavour: str
) -> None:
    use_flavour(clean_env, relay, flavour)
    with ManagedIdentityCredential() as credential:
        token, requested_at, received_at = get_token(
            credential, "https://storage.azure.com/.default"
        )
    verify_token(
        token,
        relay=relay,
        jwks=jwks,
        client_id=relay.default_client_id,
        requested_at=requested_at,
        received_at=received_at,
        audience="https://storage.azure.com",
    )


def test_tampered_token_fails_verification(
    relay: Relay, jwks: dict, clean_env: pytest.MonkeyPatch
) -> None:
    """Guards the checks above against passing vacuously."""
    use_flavour(clean_env, relay, "app_service")
    with ManagedIdentityCredential() as credential:
        token = credential.get_token(VAULT_SCOPE).token
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["oid"] = relay.user_assigned_client_id
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    key = jwt.PyJWKSet.from_dict(jwks).keys[0]
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(
            f"{header}.{forged}.{signature}",
            key=key,
            algorithms=["RS256"],
            audience=VAULT_AUDIENCE,
            issuer=relay.base_url,
        )


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_unknown_client_id_is_refused(
    relay: Relay, clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, flavour: str
) -> None:
    caplog.set_level(logging.INFO, logger=HTTP_LOGGER)
    use_flavour(clean_env, relay, flavour)
    started = time.monotonic()
    with ManagedIdentityCredential(
        client_id="unknown0-0000-0000-0000-000000000000"
    ) as credential:
        # CredentialUnavailableError is a subclass of ClientAuthenticationError.
        with pytest.raises(ClientAuthenticationError):
            credential.get_token(VAULT_SCOPE)
    elapsed = time.monotonic() - started
    # A 400 must not be retried with back-off: the refusal has to come back at once.
    assert elapsed < 5, f"refusal took {elapsed:.1f} s"
    assert_reached(caplog, flavour)


def test_missing_identity_header_is_refused(
    relay: Relay, clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("IDENTITY_ENDPOINT", relay.identity_endpoint)
    clean_env.setenv("IDENTITY_HEADER", "0" * 64)
    with ManagedIdentityCredential() as credential:
        with pytest.raises(ClientAuthenticationError):
            credential.get_token(VAULT_SCOPE)


@pytest.mark.parametrize("identity", ["default", "user_assigned"])
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_default_azure_credential(
    relay: Relay,
    jwks: dict,
    clean_env: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    flavour: str,
    identity: str,
) -> None:
    caplog.set_level(logging.INFO, logger=HTTP_LOGGER)
    use_flavour(clean_env, relay, flavour)
    if identity == "default":
        credential = DefaultAzureCredential()
        expected_client_id = relay.default_client_id
    else:
        credential = DefaultAzureCredential(
            managed_identity_client_id=relay.user_assigned_client_id
        )
        expected_client_id = relay.user_assigned_client_id

    started = time.monotonic()
    with credential:
        token, requested_at, received_at = get_token(credential)
    assert time.monotonic() - started < 10

    verify_token(
        token,
        relay=relay,
        jwks=jwks,
        client_id=expected_client_id,
        requested_at=requested_at,
        received_at=received_at,
    )
    assert_reached(caplog, flavour)
